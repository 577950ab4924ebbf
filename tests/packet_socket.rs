//! The packet socket across a real link: replies leave as Ethernet frames once the kernel
//! knows the GWLB node's hardware address, carry the same outer headers the raw socket would
//! (checked by tshark on the receiving side), and follow the kernel when its neighbour table
//! changes: a flushed entry, and a peer that changed its hardware address.
//!
//! ```text
//!  peer 10.77.0.2/24 (labelwall loadgen) --veth-- app 10.77.0.1/24 (labelwall run --reflect)
//! ```
//!
//! Needs root, `ip` (iproute2), tcpdump and tshark: tests/run.sh installs them.

mod common;
#[path = "common/netns.rs"]
mod netns;

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::metric;
use netns::{Capture, Netns, run_checked, veth};

const APP_IP: &str = "10.77.0.1";
const PEER_IP: &str = "10.77.0.2";
const GENEVE_PORT: u16 = 6081;
const ADMIN_PORT: u16 = 8080;
const RATE: &str = "20000";

/// The tests measure loss: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

struct Link {
    app: Netns,
    peer: Netns,
    appliance: Child,
    dir: tempfile::TempDir,
}

impl Link {
    /// Receiving on UDP sockets (`replies_to_what_packet_rings_received_...` takes the rings).
    fn start() -> Link {
        Link::start_with("  io: sockets\n")
    }

    /// As [`Link::start`], with `dataplane` (lines of the `dataplane:` section) added.
    fn start_with(dataplane: &str) -> Link {
        netns::require_tools(&[("ip", "-V"), ("tcpdump", "--version"), ("tshark", "--version")]);
        let (app, peer) = (Netns::new("app"), Netns::new("peer"));
        veth(&app, "eth0", &peer, "eth0", 1500);
        app.address("eth0", &format!("{APP_IP}/24"));
        peer.address("eth0", &format!("{PEER_IP}/24"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.yaml"), "default_action: allow\n").unwrap();
        let config = format!(
            "dataplane:\n  listen: {APP_IP}:{GENEVE_PORT}\n  workers: 1\n  reply_port: \
             {GENEVE_PORT}\n{dataplane}admin:\n  listen: 127.0.0.1:{ADMIN_PORT}\npolicy: policy.yaml\n\
             log:\n  level: info\n"
        );
        std::fs::write(dir.path().join("labelwall.yaml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("labelwall.log")).unwrap();
        let appliance = app
            .exec(env!("CARGO_BIN_EXE_labelwall"))
            .arg("run")
            .arg("-c")
            .arg(dir.path().join("labelwall.yaml"))
            .arg("--reflect")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let link = Link { app, peer, appliance, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !link.app.http_get(ADMIN_PORT, "/readyz").starts_with("HTTP/1.1 200") {
            assert!(Instant::now() < deadline, "labelwall not ready:\n{}", link.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        link
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("labelwall.log")).unwrap_or_default()
    }

    /// Sends `secs` seconds of GENEVE at [`RATE`] from the peer; returns (sent, received).
    fn load(&self, secs: u32) -> (u64, u64) {
        let report = netns::loadgen(
            &self.peer,
            &format!("{APP_IP}:{GENEVE_PORT}"),
            &format!("{PEER_IP}:{GENEVE_PORT}"),
            secs,
            &["--rate", RATE, "--flows", "16"],
        );
        (report["sent"].as_u64().unwrap(), report["received"].as_u64().unwrap())
    }

    /// Packets sent back so far through the packet socket and through the raw socket.
    fn paths(&self) -> (u64, u64) {
        let metrics = self.app.http_get(ADMIN_PORT, "/metrics");
        let sample = |path: &str| {
            metric(&metrics, &format!("labelwall_send_packets_total{{path=\"{path}\"}}"))
        };
        (sample("packet"), sample("raw"))
    }

    /// A permanent neighbour entry for the appliance on the peer.
    fn pin_app_on_peer(&self) {
        let app_mac = Link::mac(&self.app);
        self.peer.ip(&[
            "neigh",
            "replace",
            APP_IP,
            "lladdr",
            &app_mac,
            "nud",
            "permanent",
            "dev",
            "eth0",
        ]);
    }

    fn mac(netns: &Netns) -> String {
        let text = netns.ip(&["-o", "link", "show", "eth0"]);
        let after = text.split("link/ether ").nth(1).expect("an Ethernet address");
        after.split_whitespace().next().unwrap().to_string()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = self.appliance.kill();
        let _ = self.appliance.wait();
    }
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn replies_leave_as_frames_with_the_headers_the_raw_socket_would_write() {
    let _serial = serial();
    frames_carry_the_raw_sockets_headers(Link::start());
}

#[test]
fn replies_to_what_packet_rings_received_carry_the_same_headers() {
    let _serial = serial();
    let link = Link::start_with("  io: packet_ring\n");
    assert!(link.log().contains("receiving on packet rings"), "{}", link.log());
    frames_carry_the_raw_sockets_headers(link);
}

/// Replies leave as frames once the next hop is known, and tshark on the peer finds the
/// outer headers the raw socket would have written.
fn frames_carry_the_raw_sockets_headers(link: Link) {
    let capture = link.dir.path().join("peer.pcap");
    let tcpdump = Capture::start(
        &link.peer,
        &["-i", "eth0", "-n", "-U", "-s", "128"],
        &capture,
        &["udp", "and", "src", "host", APP_IP],
    );
    let (sent, received) = link.load(1);
    let (packet, raw) = link.paths();
    tcpdump.stop();

    assert!(received * 100 >= sent * 99, "{received} of {sent} came back\n{}", link.log());
    // The first replies went raw while the resolver asked the kernel; the rest as frames.
    assert!(packet > 0 && packet > 10 * raw, "packet {packet}, raw {raw}\n{}", link.log());
    assert!(link.log().contains("replies leave through the packet socket"), "{}", link.log());
    let metrics = link.app.http_get(ADMIN_PORT, "/metrics");
    assert_eq!(metric(&metrics, r#"labelwall_next_hops{path="packet"}"#), 1, "{metrics}");
    assert_eq!(metric(&metrics, r#"labelwall_next_hops{path="raw"}"#), 0, "{metrics}");

    // tshark, an independent decoder, on what the peer's interface saw.
    let output = run_checked(
        Command::new("tshark").arg("-r").arg(&capture).args([
            "-o",
            "ip.check_checksum:TRUE",
            "-T",
            "fields",
            "-E",
            "separator=,",
            "-E",
            "occurrence=f", // the outer header, not the inner packet's
            "-e",
            "eth.src",
            "-e",
            "eth.dst",
            "-e",
            "ip.flags.df",
            "-e",
            "ip.ttl",
            "-e",
            "ip.checksum.status",
            "-e",
            "udp.dstport",
            "-e",
            "geneve.option.class",
        ]),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().collect();
    // tcpdump may miss a few under load; what it caught must all be right.
    assert!(lines.len() as u64 >= received * 9 / 10, "{} lines for {received}", lines.len());
    let (app_mac, peer_mac) = (Link::mac(&link.app), Link::mac(&link.peer));
    for line in &lines {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields[0], app_mac, "{line}");
        assert_eq!(fields[1], peer_mac, "{line}");
        assert!(matches!(fields[2], "1" | "True"), "DF not set: {line}");
        assert_eq!(fields[3], "64", "{line}");
        assert_eq!(fields[4], "1", "IPv4 checksum not good: {line}");
        assert_eq!(fields[5], GENEVE_PORT.to_string(), "{line}");
        assert!(
            fields[6].contains("0x0108") || fields[6].contains("264"),
            "no GWLB option: {line}"
        );
    }
}

#[test]
fn replies_follow_the_kernel_when_the_neighbour_is_flushed_or_changes_its_address() {
    let _serial = serial();
    let link = Link::start();
    // Let the kernel re-verify neighbours in about a second instead of 15-45 s (the defaults).
    for (key, value) in [
        ("base_reachable_time_ms", "500"),
        ("delay_first_probe_time", "1"),
        ("retrans_time_ms", "100"),
    ] {
        link.app.sysctl(&format!("net.ipv4.neigh.eth0.{key}"), value);
    }
    // The peer never asks for the appliance's address (its entry is permanent), so that what
    // the appliance's kernel knows of the peer comes from its own checks alone.
    link.pin_app_on_peer();
    let (sent, received) = link.load(1);
    assert!(received * 100 >= sent * 99, "{received} of {sent}\n{}", link.log());
    let (packet_before, raw_before) = link.paths();
    assert!(packet_before > 0, "{}", link.log());

    // The entry is gone: replies go raw until the kernel has learned the address again, then
    // as frames again; nothing is lost on the way.
    link.app.ip(&["neigh", "flush", "dev", "eth0"]);
    let (sent, received) = link.load(3);
    assert!(received * 100 >= sent * 99, "after the flush {received} of {sent}\n{}", link.log());
    let (packet, raw) = link.paths();
    assert!(raw > raw_before, "no raw sends after the flush\n{}", link.log());
    assert!(packet > packet_before, "no frames after the flush\n{}", link.log());

    // The peer takes a new hardware address. Frames to the old one are lost until the kernel,
    // no longer vouching for the entry, checks it again: then replies reach the new address.
    // The kernel's entry is stale (as it becomes when nothing of the kernel's own used it for
    // a while): the kernel vouches for nothing, and only its own check finds the new address.
    let peer_mac = Link::mac(&link.peer);
    link.app.ip(&["neigh", "replace", PEER_IP, "lladdr", &peer_mac, "nud", "stale", "dev", "eth0"]);
    link.peer.ip(&["link", "set", "eth0", "address", "02:00:5e:10:77:02"]);
    // (A new address flushes the interface's neighbours, permanent ones too.)
    link.pin_app_on_peer();
    let mut recovered = None;
    for round in 1..=10 {
        let (sent, received) = link.load(1);
        if received * 100 >= sent * 99 {
            recovered = Some(round);
            break;
        }
    }
    let round = recovered.unwrap_or_else(|| {
        panic!(
            "replies never reached the new address:\n{}\n{}",
            link.app.ip(&["neigh", "show", "dev", "eth0"]),
            link.log()
        )
    });
    let (packet_after, _) = link.paths();
    let (sent, received) = link.load(1);
    let (packet_last, _) = link.paths();
    assert!(received * 100 >= sent * 99, "{received} of {sent}\n{}", link.log());
    assert!(packet_last - packet_after > sent / 2, "frames again after round {round}");
    assert!(link.log().contains("02:00:5e:10:77:02"), "{}", link.log());
}
