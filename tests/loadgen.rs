//! `labelwall loadgen` against the real appliance on loopback: loadgen listens on the GWLB
//! side (127.0.0.2), sends through its raw socket and counts what comes back (root only).

mod common;

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::*;
use labelwall::tools::loadgen::{LoadgenArgs, LoadgenReport, generate};

/// One load at a time: an unpaced run would fill loopback's shared backlog queue and make the
/// lossless checks of the others flaky.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOAD: Mutex<()> = Mutex::new(());
    LOAD.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An appliance that sends replies to a free port on 127.0.0.2, and loadgen's flags for it.
fn appliance(args: &[&str]) -> (Appliance, Vec<String>) {
    let listen = SocketAddrV4::new(GWLB_IP, free_udp_port(GWLB_IP));
    let appliance = Appliance::start(listen.port(), 1, "", args);
    let flags = vec![
        "--target".to_string(),
        appliance.listen.to_string(),
        "--listen".to_string(),
        listen.to_string(),
    ];
    (appliance, flags)
}

fn run(base: &[String], flags: &[&str]) -> LoadgenReport {
    let all: Vec<&str> = base.iter().map(String::as_str).chain(flags.iter().copied()).collect();
    let args = LoadgenArgs::parse_flags(&all).unwrap();
    let started = Instant::now();
    let report = generate(&args).unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "loadgen stops by itself");
    report
}

/// Every packet of a counted, paced run comes back: nothing lost, nothing foreign.
fn assert_all_back(report: &LoadgenReport, count: u64) {
    assert_eq!(report.sent, count, "{report:?}");
    assert_eq!(report.received, count, "{report:?}");
    assert_eq!((report.lost, report.send_errors, report.unexpected), (0, 0, 0), "{report:?}");
    let latency = report.latency_us;
    assert!(latency.p50 > 0.0 && latency.p50 <= latency.p99 && latency.p99 <= latency.max);
    assert!(report.pps > 0.0 && report.gbps > 0.0, "{report:?}");
}

/// The appliance's `allow` counter once it reaches `expected` (workers publish per batch).
fn allowed(appliance: &Appliance, expected: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let value = metric(&appliance.metrics(), r#"labelwall_packets_total{verdict="allow"}"#);
        if value >= expected || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn counted_udp_run_comes_back_whole_and_the_appliance_allows_every_packet() {
    let _load = one_at_a_time();
    let (appliance, base) = appliance(&[]);
    let report = run(&base, &["--count", "2000", "--rate", "20000", "--duration", "5"]);
    assert_all_back(&report, 2000);
    assert!(report.duration_s < 1.0, "2000 packets at 20k pps take ~0.1 s: {report:?}");
    assert!(report.sent_pps < 30_000.0, "the rate is kept: {report:?}");
    assert_eq!(allowed(&appliance, 2000), 2000);
    let metrics = appliance.metrics();
    assert!(!metrics.lines().any(|l| l.starts_with("labelwall_drops_total") && !l.ends_with(" 0")));
}

#[test]
fn ipv6_tcp_trains_of_large_packets_come_back_whole() {
    let _load = one_at_a_time();
    let (appliance, base) = appliance(&[]);
    let flags = [
        "--src",
        "fd00:1::/64",
        "--dst",
        "fd00:20::/64",
        "--proto",
        "tcp",
        "--size",
        "1500",
        "--train",
        "8",
        "--flows",
        "16",
        "--count",
        "1600",
        "--rate",
        "20000",
    ];
    let report = run(&base, &flags);
    assert_eq!((report.family, report.size), ("ipv6", 1500));
    assert_all_back(&report, 1600);
    assert_eq!(allowed(&appliance, 1600), 1600);
}

#[test]
fn ipv4_tcp_jumbo_packets_come_back_whole() {
    let _load = one_at_a_time();
    let (appliance, base) = appliance(&[]);
    let report =
        run(&base, &["--proto", "tcp", "--size", "8500", "--count", "500", "--rate", "10000"]);
    assert_all_back(&report, 500);
    let expected_gbps = 500.0 * 8540.0 * 8.0 / report.duration_s / 1e9;
    assert!((report.gbps - expected_gbps).abs() < 1e-9, "gbps counts GENEVE datagrams");
    assert_eq!(allowed(&appliance, 500), 500);
}

#[test]
fn unpaced_run_stops_at_its_duration() {
    let _load = one_at_a_time();
    let (_appliance, base) = appliance(&["--reflect"]);
    let report = run(&base, &["--duration", "0.5", "--flows", "128"]);
    assert!(report.duration_s >= 0.5 && report.duration_s < 1.0, "{report:?}");
    assert!(report.sent > 1000 && report.received > 0, "{report:?}");
    assert_eq!(report.lost, report.sent - report.received.min(report.sent));
    assert_eq!(report.unexpected, 0, "{report:?}");
}

#[test]
fn nothing_back_is_reported_as_lost() {
    let _load = one_at_a_time();
    // Nobody listens on the target: every packet is lost, and loadgen still ends on time.
    let listen = SocketAddrV4::new(GWLB_IP, free_udp_port(GWLB_IP));
    let target = SocketAddr::from((APPLIANCE_IP, free_udp_port(APPLIANCE_IP)));
    let base = ["--target".into(), target.to_string(), "--listen".into(), listen.to_string()];
    let report = run(&base, &["--count", "100", "--rate", "10000"]);
    assert_eq!((report.sent, report.received, report.lost), (100, 0, 100));
    assert_eq!(report.latency_us.p99, 0.0);
}

#[test]
fn listen_address_in_use_is_one_clear_error() {
    let _load = one_at_a_time();
    let taken = UdpSocket::bind((GWLB_IP, 0)).unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let args =
        LoadgenArgs::parse_flags(&["--target", "127.0.0.1:6081", "--listen", &listen]).unwrap();
    let error = generate(&args).unwrap_err().to_string();
    assert!(error.contains(&listen) && error.contains("in use"), "{error}");
}
