//! `labelwall replay` against what the real appliance did with the same packets: captures the
//! tests record themselves on loopback (tcpdump as pcap, tshark as pcapng) while a GWLB peer and
//! loadgen send a known mix, a live check that replays such a capture into a running appliance
//! with tcpreplay, and hand-built capture files for link types, skips and broken files.
//! Root only (packet capture, loadgen's raw socket, a loopback sysctl); tests/run.sh installs
//! tcpdump, tshark and tcpreplay.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::*;
use labelwall::tools::loadgen::{LoadgenArgs, generate};
use labelwall::wire::DropReason;
use serde_json::Value;

/// One recording at a time: captures and loadgen share loopback.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOAD: Mutex<()> = Mutex::new(());
    LOAD.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn require(tool: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(found, "{tool} is not installed: run tests/run.sh, which installs it");
}

fn labelwall(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_labelwall")).args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `labelwall replay --json` that must succeed.
fn replay_json(config: &Path, capture: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["replay", "-c", config.to_str().unwrap(), capture.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push("--json");
    let (code, stdout, stderr) = labelwall(&args);
    assert_eq!(code, 0, "replay failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn count(report: &Value, pointer: &str) -> u64 {
    report.pointer(pointer).and_then(Value::as_u64).unwrap_or_else(|| panic!("{pointer}: {report}"))
}

// ---- recording a capture on loopback ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recorder {
    /// tcpdump, pcap (Ethernet on lo).
    Tcpdump,
    /// tshark, pcapng.
    Tshark,
}

/// A packet capture on lo that stops by itself after `count` packets.
struct LiveCapture {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    count: usize,
}

impl LiveCapture {
    fn start(recorder: Recorder, filter: &str, count: usize, path: &Path) -> LiveCapture {
        let count_text = count.to_string();
        let mut command = match recorder {
            Recorder::Tcpdump => {
                let mut c = Command::new("tcpdump");
                // Immediate mode: packets reach the file as they arrive, not a buffer later.
                // It gives every packet a ring slot of the snap length: keep that small (GWLB's
                // largest packet) and the ring large, or bursts overflow it.
                c.args(["-i", "lo", "--immediate-mode", "-U", "-n", "-s", "9100", "-B", "32768"]);
                c.args(["-c", &count_text, "-w"]);
                c.arg(path).arg(filter);
                c
            }
            Recorder::Tshark => {
                let mut c = Command::new("tshark");
                c.args(["-i", "lo", "-q", "-F", "pcapng", "-B", "32", "-a", "duration:60"]);
                c.args(["-c", &count_text]);
                c.arg("-f").arg(filter).arg("-w").arg(path);
                c
            }
        };
        let mut child =
            command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("capture starts");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let lines = BufReader::new(child.stderr.take().unwrap());
        let seen = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                // tcpdump says "listening on" once the capture is live; tshark says
                // "Capturing on" a little before it is, and "Capture started" where it does.
                let settle = if line.contains("listening on") || line.contains("Capture started") {
                    Some(Duration::from_millis(200))
                } else if line.contains("Capturing on") {
                    Some(Duration::from_secs(1))
                } else {
                    None
                };
                if let Some(settle) = settle {
                    let _ = ready_tx.send(settle);
                }
                seen.lock().unwrap().push(line);
            }
        });
        let settle = ready_rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("the capture did not start: {:?}", stderr.lock().unwrap()));
        std::thread::sleep(settle);
        LiveCapture { child, stderr, count }
    }

    /// Waits for the capture to have its packets and exit.
    fn finish(mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "capture failed: {:?}", self.stderr.lock().unwrap());
                return;
            }
            if Instant::now() > deadline {
                // SIGINT: the capture tool prints how many packets it saw and dropped.
                let pid = self.child.id().to_string();
                let _ = Command::new("kill").args(["-INT", &pid]).status();
                std::thread::sleep(Duration::from_secs(2));
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the capture did not see its {} packets within 20 s: {:?}",
                    self.count,
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LiveCapture {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

const RATINGS: [u8; 4] = [10, 0, 1, 15];
const REVIEWS: [u8; 4] = [10, 0, 1, 12];
const OTHER: [u8; 4] = [10, 0, 1, 20];
const DATABASE: [u8; 4] = [10, 20, 0, 5];
const INTERNET: [u8; 4] = [203, 0, 113, 10];

/// What the bookinfo policy does with one datagram of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Sent back unchanged (allow or audit).
    Back,
    /// A reject comes back in its place.
    Rejected,
    /// Nothing comes back (deny, a reject that must not be answered, malformed).
    Nothing,
}

/// The hand-made part of the mix: (datagram, expectation), one GWLB source port each.
fn mix() -> Vec<(Vec<u8>, Expect)> {
    let syn = ipv4_tcp(RATINGS, DATABASE, 41001, 3306, true, false, 0);
    let mut rst = ipv4_tcp(OTHER, DATABASE, 41010, 3306, false, false, 0);
    rst[33] = 0x04; // flags: RST only (the TCP checksum does not matter to the appliance)
    let mut version_1 = gwlb_datagram(0x1007, &syn);
    version_1[0] |= 0x40;
    let mut inner_cut = gwlb_datagram(0x1009, &syn);
    inner_cut.truncate(inner_cut.len() - 30);
    let v6_syn = {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ipv6(
            [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10],
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10],
            64,
        )
        .tcp(41006, 443, 7, 65535)
        .syn()
        .write(&mut out, &[])
        .unwrap();
        out
    };
    vec![
        // ratings -> database: allowed, its reply and data too (ratings-to-db).
        (gwlb_datagram(0x1001, &syn), Expect::Back),
        (
            gwlb_datagram(0x1001, &ipv4_tcp(DATABASE, RATINGS, 3306, 41001, true, true, 0)),
            Expect::Back,
        ),
        (
            gwlb_datagram(0x1001, &ipv4_tcp(RATINGS, DATABASE, 41001, 3306, false, true, 100)),
            Expect::Back,
        ),
        // other -> database: rejected with a RST (TCP) and an ICMP error (UDP).
        (
            gwlb_datagram(0x1002, &ipv4_tcp(OTHER, DATABASE, 41002, 3306, true, false, 0)),
            Expect::Rejected,
        ),
        (gwlb_datagram(0x1003, &ipv4_udp(OTHER, DATABASE, 41003, 3306, 64)), Expect::Rejected),
        // other -> the internet: denied by default.
        (
            gwlb_datagram(0x1004, &ipv4_tcp(OTHER, INTERNET, 41004, 443, true, false, 0)),
            Expect::Nothing,
        ),
        // reviews -> ratings: audited, sent back.
        (
            gwlb_datagram(0x1005, &ipv4_tcp(REVIEWS, RATINGS, 41005, 9080, true, false, 0)),
            Expect::Back,
        ),
        // productpage -> the internet over IPv6: allowed.
        (gwlb_datagram(0x1006, &v6_syn), Expect::Back),
        // Malformed: GENEVE version 1, a cut GENEVE header, a cut inner packet.
        (version_1, Expect::Nothing),
        (vec![0, 0, 0x65, 0x58, 0, 0], Expect::Nothing),
        (inner_cut, Expect::Nothing),
        // A RST to the database from other: rejected, and a RST is never answered.
        (gwlb_datagram(0x1010, &rst), Expect::Nothing),
    ]
}

const LOADGEN_ALLOWED: u64 = 400;
const LOADGEN_REJECTED: u64 = 200;

/// A capture recorded on lo while the live appliance (bookinfo policy) handled a known mix.
struct Recording {
    appliance: Appliance,
    _dir: tempfile::TempDir,
    capture: PathBuf,
    /// GENEVE datagrams sent to the appliance.
    inbound: u64,
    /// Packets the appliance sent back (also in the capture).
    replies: u64,
}

fn record(recorder: Recorder) -> Recording {
    require("tcpdump");
    require("tshark");
    let dir = tempfile::tempdir().unwrap();
    let capture =
        dir.path().join(if recorder == Recorder::Tcpdump { "gwlb.pcap" } else { "gwlb.pcapng" });
    let mix = mix();
    let peer = GwlbPeer::new(mix.len());
    let reply_port = peer.reply_port();
    let appliance = Appliance::start_with(
        reply_port,
        1,
        labelwall::tools::demo::POLICY,
        Some(labelwall::tools::demo::INVENTORY),
        "",
        &[],
    );
    let inbound = mix.len() as u64 + LOADGEN_ALLOWED + LOADGEN_REJECTED;
    let replies = mix.iter().filter(|(_, e)| *e != Expect::Nothing).count() as u64
        + LOADGEN_ALLOWED
        + LOADGEN_REJECTED;
    // Both directions, as on an appliance's interface: replay must skip the replies.
    let filter = format!(
        "udp and ((dst host {APPLIANCE_IP} and dst port {}) or \
         (dst host {GWLB_IP} and dst port {reply_port}))",
        appliance.listen.port()
    );
    let live = LiveCapture::start(recorder, &filter, (inbound + replies) as usize, &capture);

    for (sender, (datagram, expect)) in mix.iter().enumerate() {
        peer.send(sender, appliance.listen, datagram);
        if *expect != Expect::Nothing {
            let (from, _) = peer.receive().expect("a reply from the appliance");
            assert_eq!(from, SocketAddr::from((APPLIANCE_IP, peer.source_port(sender))));
        }
    }
    drop(peer); // loadgen listens on the reply port now
    let listen = SocketAddr::from((GWLB_IP, reply_port)).to_string();
    let target = appliance.listen.to_string();
    for (count, src, proto) in
        [(LOADGEN_ALLOWED, "10.0.1.15/32", "tcp"), (LOADGEN_REJECTED, "10.0.1.20/32", "udp")]
    {
        let count = count.to_string();
        let args = LoadgenArgs::parse_flags(&[
            "--target",
            &target,
            "--listen",
            &listen,
            "--flows",
            "8",
            "--count",
            &count,
            "--rate",
            "10000",
            "--duration",
            "5",
            "--src",
            src,
            "--dst",
            "10.20.0.5/32",
            "--proto",
            proto,
            "--dport",
            "3306",
        ])
        .unwrap();
        let report = generate(&args).unwrap();
        assert_eq!(report.sent.to_string(), count, "{report:?}");
    }
    let received = r#"labelwall_worker_received_packets_total{worker="0"}"#;
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&appliance.metrics(), received) < inbound {
        assert!(Instant::now() < deadline, "the appliance did not receive every packet");
        std::thread::sleep(Duration::from_millis(20));
    }
    live.finish();
    Recording { appliance, _dir: dir, capture, inbound, replies }
}

/// The appliance's verdict, drop and rule counters equal the replay's.
fn assert_counters_match(metrics: &str, report: &Value) {
    for verdict in ["allow", "deny", "reject", "audit"] {
        let live = metric(metrics, &format!("labelwall_packets_total{{verdict=\"{verdict}\"}}"));
        assert_eq!(count(report, &format!("/verdicts/{verdict}")), live, "{verdict}: {report}");
    }
    for reason in DropReason::ALL {
        let sample = format!(
            "labelwall_drops_total{{class=\"{}\",reason=\"{}\"}}",
            reason.class(),
            reason.as_str()
        );
        let replayed = count(report, &format!("/drops/{}", reason.as_str()));
        assert_eq!(replayed, metric(metrics, &sample), "{sample}");
    }
    for hit in report["rule_hits"].as_array().unwrap() {
        let rule = hit["rule"].as_str().unwrap();
        let live = metric(metrics, &format!("labelwall_rule_hits_total{{rule=\"{rule}\"}}"));
        assert_eq!(hit["packets"].as_u64(), Some(live), "rule {rule}");
    }
}

/// (outer source, outer destination, source port, destination port, UDP payload) of every UDP
/// packet to `port` in a capture, as tshark reads it, sorted.
fn udp_packets(capture: &Path, port: u16) -> Vec<String> {
    let output = Command::new("tshark")
        .arg("-r")
        .arg(capture)
        .args(["-o", "udp.check_checksum:FALSE", "-Y"])
        .arg(format!("udp.dstport == {port}"))
        .args(["-T", "fields", "-E", "occurrence=f"])
        .args(["-e", "ip.src", "-e", "ip.dst", "-e", "udp.srcport", "-e", "udp.dstport"])
        .args(["-e", "udp.payload"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mut rows: Vec<String> =
        String::from_utf8(output.stdout).unwrap().lines().map(str::to_string).collect();
    rows.sort();
    rows
}

fn replay_matches_the_live_appliance(recorder: Recorder) {
    let _load = one_at_a_time();
    let recording = record(recorder);
    let appliance = &recording.appliance;
    let out_name = if recorder == Recorder::Tcpdump { "sent.pcap" } else { "sent.pcapng" };
    let out = recording.capture.with_file_name(out_name);
    let report = replay_json(
        &appliance.config_path(),
        &recording.capture,
        &["--out", out.to_str().unwrap()],
    );

    assert_counters_match(&appliance.metrics(), &report);
    let records = recording.inbound + recording.replies;
    assert_eq!(count(&report, "/records"), records, "{report}");
    assert_eq!(count(&report, "/geneve"), recording.inbound);
    assert_eq!(count(&report, "/skipped/not_geneve"), recording.replies, "the replies");
    assert_eq!(count(&report, "/skipped/total"), recording.replies);
    assert_eq!(count(&report, "/written"), recording.replies);
    assert_eq!(count(&report, "/rejects_sent"), 2 + LOADGEN_REJECTED);
    assert_eq!(report["capture_truncated"], Value::Bool(false));
    assert_eq!(count(&report, "/verdicts/allow"), 4 + LOADGEN_ALLOWED, "{report}");
    assert_eq!(count(&report, "/verdicts/reject"), 3 + LOADGEN_REJECTED);
    assert_eq!(count(&report, "/verdicts/deny"), 1);
    assert_eq!(count(&report, "/verdicts/audit"), 1);
    assert_eq!(count(&report, "/drops/geneve_version"), 1);
    assert_eq!(count(&report, "/drops/geneve_truncated"), 1);
    assert_eq!(count(&report, "/drops/inner_truncated"), 1);

    // --out holds exactly what the appliance sent back: the same GENEVE payloads, byte for
    // byte, between the same addresses and ports.
    let sent = udp_packets(&recording.capture, appliance.reply_port);
    assert_eq!(sent.len() as u64, recording.replies);
    let written = udp_packets(&out, appliance.reply_port);
    assert_eq!(written, sent);

    // tshark reads it as GWLB GENEVE without complaint.
    let decoded = Command::new("tshark")
        .arg("-r")
        .arg(&out)
        .arg("-d")
        .arg(format!("udp.port=={},geneve", appliance.reply_port))
        // Only GENEVE and what is under it: loadgen's payloads to 3306 are not MySQL.
        .args(["--disable-protocol", "mysql"])
        .args(["-T", "fields", "-e", "geneve.option.class", "-e", "_ws.malformed"])
        .output()
        .unwrap();
    assert!(decoded.status.success(), "{}", String::from_utf8_lossy(&decoded.stderr));
    let text = String::from_utf8(decoded.stdout).unwrap();
    assert_eq!(text.lines().count() as u64, recording.replies);
    for line in text.lines() {
        assert_eq!(line, "0x0108,0x0108,0x0108\t", "GWLB options, nothing malformed");
    }
}

#[test]
fn replay_of_a_tcpdump_pcap_counts_what_the_live_appliance_counted_and_writes_what_it_sent() {
    replay_matches_the_live_appliance(Recorder::Tcpdump);
}

#[test]
fn replay_of_a_tshark_pcapng_counts_what_the_live_appliance_counted_and_writes_what_it_sent() {
    replay_matches_the_live_appliance(Recorder::Tshark);
}

/// Sets `net.ipv4.conf.lo.route_localnet` for as long as it lives. Packets that tcpreplay
/// injects on lo have no route attached (the kernel's own loopback packets do), and the
/// kernel refuses to route 127.0.0.0/8 destinations for them unless this is 1.
struct RouteLocalnet {
    previous: String,
}

const ROUTE_LOCALNET: &str = "/proc/sys/net/ipv4/conf/lo/route_localnet";

impl RouteLocalnet {
    fn enable() -> RouteLocalnet {
        let previous = std::fs::read_to_string(ROUTE_LOCALNET).unwrap();
        std::fs::write(ROUTE_LOCALNET, "1").expect("setting route_localnet on lo (needs root)");
        RouteLocalnet { previous }
    }
}

impl Drop for RouteLocalnet {
    fn drop(&mut self) {
        let _ = std::fs::write(ROUTE_LOCALNET, self.previous.trim());
    }
}

#[test]
fn tcpreplay_of_a_recorded_capture_raises_a_fresh_appliances_counters_by_the_replayed_verdicts() {
    require("tcpreplay");
    require("tcprewrite");
    let _load = one_at_a_time();
    let recording = record(Recorder::Tcpdump);
    let expected = replay_json(&recording.appliance.config_path(), &recording.capture, &[]);
    let old_port = recording.appliance.listen.port();
    drop(recording.appliance);

    let gwlb = UdpSocket::bind((GWLB_IP, 0)).unwrap();
    gwlb.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let fresh = Appliance::start_with(
        gwlb.local_addr().unwrap().port(),
        1,
        labelwall::tools::demo::POLICY,
        Some(labelwall::tools::demo::INVENTORY),
        "",
        &[],
    );
    // To the fresh appliance's port, with the UDP checksums that loopback's offload left
    // unfinished in the capture filled in (the kernel checks them on injected packets).
    let rewritten = recording.capture.with_file_name("to-fresh.pcap");
    let status = Command::new("tcprewrite")
        .arg(format!("--portmap={old_port}:{}", fresh.listen.port()))
        .arg("--fixcsum")
        .arg("--infile")
        .arg(&recording.capture)
        .arg("--outfile")
        .arg(&rewritten)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    // Count what the fresh appliance sends back while tcpreplay plays (the socket's buffer
    // would not hold it all).
    let counter = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let mut replies = 0u64;
        while gwlb.recv(&mut buf).is_ok() {
            replies += 1;
        }
        replies
    });
    let before = fresh.metrics();
    let _localnet = RouteLocalnet::enable();
    let output = Command::new("tcpreplay").args(["--intf1=lo", "-q"]).arg(&rewritten).output();
    let output = output.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let received = r#"labelwall_worker_received_packets_total{worker="0"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&fresh.metrics(), received) < recording.inbound {
        assert!(
            Instant::now() < deadline,
            "the appliance received {} of {} packets",
            metric(&fresh.metrics(), received),
            recording.inbound
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = fresh.metrics();
    for verdict in ["allow", "deny", "reject", "audit"] {
        let sample = format!("labelwall_packets_total{{verdict=\"{verdict}\"}}");
        let increase = metric(&after, &sample) - metric(&before, &sample);
        assert_eq!(increase, count(&expected, &format!("/verdicts/{verdict}")), "{verdict}");
    }
    assert_counters_match(&after, &expected);
    // And it sent back as many packets as replay wrote (the counter stops after 2 s of quiet).
    assert_eq!(counter.join().unwrap(), count(&expected, "/written"));
}

// ---- hand-built capture files ----

/// A config whose policy allows UDP to 10.20.0.0/24 port 53 from 10.0.1.0/24 and rejects
/// the rest to it; GENEVE on port 6081, replies to 6081.
fn fixture_config(dir: &Path) -> PathBuf {
    fixture_config_listening(dir, "0.0.0.0")
}

fn fixture_config_listening(dir: &Path, listen_ip: &str) -> PathBuf {
    std::fs::write(
        dir.join("policy.yaml"),
        "default_action: deny\ngroups:\n  db: {cidrs: [10.20.0.0/24]}\n  \
         clients: {cidrs: [10.0.1.0/24]}\nrules:\n  \
         - {name: dns, from: [clients], to: [db], ports: [udp/53], action: allow}\n  \
         - {name: no-db, from: [any], to: [db], action: reject}\n",
    )
    .unwrap();
    let config = dir.join("labelwall.yaml");
    std::fs::write(
        &config,
        format!(
            "dataplane:\n  listen: {listen_ip}:6081\n  reply_port: 6081\npolicy: policy.yaml\n"
        ),
    )
    .unwrap();
    config
}

/// Outer IPv4 + UDP from GWLB 10.9.0.1:`sport` to the appliance 10.9.0.2:6081.
fn outer(sport: u16, datagram: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ipv4([10, 9, 0, 1], [10, 9, 0, 2], 64)
        .udp(sport, 6081)
        .write(&mut out, datagram)
        .unwrap();
    out
}

fn allowed_dns(sport: u16) -> Vec<u8> {
    gwlb_datagram(0x77, &ipv4_udp([10, 0, 1, 5], [10, 20, 0, 5], sport, 53, 20))
}

/// A pcap file (little endian, microseconds): (seconds, captured bytes, original length).
fn pcap(link_type: u32, records: &[(u32, Vec<u8>, usize)]) -> Vec<u8> {
    let mut file = Vec::new();
    for field in [0xa1b2_c3d4u32.to_le_bytes().as_slice(), &2u16.to_le_bytes(), &4u16.to_le_bytes()]
    {
        file.extend_from_slice(field);
    }
    file.extend_from_slice(&[0; 8]); // thiszone, sigfigs
    file.extend_from_slice(&65535u32.to_le_bytes());
    file.extend_from_slice(&link_type.to_le_bytes());
    for (seconds, data, original) in records {
        file.extend_from_slice(&seconds.to_le_bytes());
        file.extend_from_slice(&0u32.to_le_bytes());
        file.extend_from_slice(&(data.len() as u32).to_le_bytes());
        file.extend_from_slice(&(*original as u32).to_le_bytes());
        file.extend_from_slice(data);
    }
    file
}

fn pcapng_block(kind: u32, body: &[u8]) -> Vec<u8> {
    let mut padded = body.to_vec();
    padded.resize(body.len().next_multiple_of(4), 0);
    let len = (padded.len() + 12) as u32;
    [&kind.to_le_bytes()[..], &len.to_le_bytes(), &padded, &len.to_le_bytes()].concat()
}

/// A pcapng file with one interface of `link_type` (nanosecond timestamps) and enhanced
/// packet blocks: (nanoseconds, data, outbound).
fn pcapng(link_type: u16, packets: &[(u64, Vec<u8>, bool)]) -> Vec<u8> {
    let mut section = 0x1a2b_3c4du32.to_le_bytes().to_vec();
    section.extend_from_slice(&[1, 0, 0, 0]); // version 1.0
    section.extend_from_slice(&u64::MAX.to_le_bytes()); // section length unknown
    let mut interface = link_type.to_le_bytes().to_vec();
    interface.extend_from_slice(&[0, 0]);
    interface.extend_from_slice(&65535u32.to_le_bytes());
    interface.extend_from_slice(&[9, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0]); // if_tsresol 9, end
    let mut file = [pcapng_block(0x0a0d_0d0a, &section), pcapng_block(1, &interface)].concat();
    for (ns, data, outbound) in packets {
        let mut body = 0u32.to_le_bytes().to_vec();
        body.extend_from_slice(&((ns >> 32) as u32).to_le_bytes());
        body.extend_from_slice(&(*ns as u32).to_le_bytes());
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
        body.resize(body.len().next_multiple_of(4), 0);
        let flags: u32 = if *outbound { 2 } else { 1 };
        body.extend_from_slice(&[2, 0, 4, 0]); // epb_flags
        body.extend_from_slice(&flags.to_le_bytes());
        body.extend_from_slice(&[0, 0, 0, 0]); // end of options
        file.extend_from_slice(&pcapng_block(6, &body));
    }
    file
}

fn sll(packet_type: u16, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = packet_type.to_be_bytes().to_vec();
    frame.extend_from_slice(&[0, 1, 0, 6, 2, 0, 0, 0, 0, 9, 0, 0]);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn ethernet(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 8, 0];
    frame.extend_from_slice(payload);
    frame
}

#[test]
fn linux_cooked_pcap_skips_what_the_appliance_never_received_and_judges_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let config = fixture_config(dir.path());
    let arrived = outer(40001, &allowed_dns(5353));
    let rejected =
        outer(40002, &gwlb_datagram(0x78, &ipv4_udp([10, 0, 9, 9], [10, 20, 0, 5], 1, 80, 8)));
    let arp = vec![0u8; 28];
    let mut fragment = outer(40003, &allowed_dns(5354));
    fragment[6] = 0x20; // more fragments
    let cut = sll(0, 0x0800, &arrived)[..40].to_vec();
    let capture = dir.path().join("any.pcap");
    std::fs::write(
        &capture,
        pcap(
            113,
            &[
                (1000, sll(0, 0x0800, &arrived), 16 + arrived.len()),
                (1000, sll(4, 0x0800, &arrived), 16 + arrived.len()), // sent by this host
                (1001, sll(0, 0x0806, &arp), 44),
                (1001, sll(0, 0x0800, &fragment), 16 + fragment.len()),
                (1002, cut, 16 + arrived.len()), // cut by the snap length
                (1003, sll(0, 0x0800, &rejected), 16 + rejected.len()),
            ],
        ),
    )
    .unwrap();
    let out = dir.path().join("sent.pcap");
    let report = replay_json(&config, &capture, &["--out", out.to_str().unwrap()]);
    assert_eq!(report["format"], "pcap");
    assert_eq!(report["link_types"], serde_json::json!(["linux_sll"]));
    assert_eq!(count(&report, "/records"), 6);
    assert_eq!(count(&report, "/geneve"), 2);
    assert_eq!(count(&report, "/skipped/outgoing"), 1);
    assert_eq!(count(&report, "/skipped/not_geneve"), 1);
    assert_eq!(count(&report, "/skipped/outer_fragment"), 1);
    assert_eq!(count(&report, "/skipped/truncated"), 1);
    assert_eq!(count(&report, "/skipped/total"), 4);
    assert_eq!(count(&report, "/verdicts/allow"), 1);
    assert_eq!(count(&report, "/verdicts/reject"), 1);
    assert_eq!((count(&report, "/sent_back"), count(&report, "/rejects_sent")), (1, 1));
    assert_eq!(
        report["rule_hits"],
        serde_json::json!([
            {"rule": "dns", "packets": 1}, {"rule": "no-db", "packets": 1}, {"rule": "default", "packets": 0}
        ])
    );
    assert_eq!(report["capture_seconds"].as_f64(), Some(3.0));

    // The written file: Ethernet with synthetic addresses, outer addresses swapped, GWLB's
    // source port kept, destination the reply port; the allowed datagram unchanged.
    let written = std::fs::read(&out).unwrap();
    assert_eq!(&written[..4], &0xa1b2_3c4du32.to_le_bytes(), "pcap, nanoseconds");
    assert_eq!(&written[20..24], &1u32.to_le_bytes(), "LINKTYPE_ETHERNET");
    let first = &written[24 + 16..];
    assert_eq!(&written[24..28], &1000u32.to_le_bytes(), "the capture's time");
    let (eth, rest) = etherparse::Ethernet2Header::from_slice(first).unwrap();
    assert_eq!(eth.ether_type, etherparse::EtherType::IPV4);
    let (ip, rest) = etherparse::Ipv4Header::from_slice(rest).unwrap();
    assert_eq!((ip.source, ip.destination), ([10, 9, 0, 2], [10, 9, 0, 1]));
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    let (udp, payload) = etherparse::UdpHeader::from_slice(rest).unwrap();
    assert_eq!((udp.source_port, udp.destination_port), (40001, 6081));
    assert_eq!(&payload[..udp.length as usize - 8], &allowed_dns(5353)[..]);
}

#[test]
fn pcapng_with_raw_ip_frames_skips_outbound_packets_and_keeps_the_capture_clock() {
    let dir = tempfile::tempdir().unwrap();
    let config = fixture_config(dir.path());
    let second = 1_000_000_000u64;
    let start = 1_700_000_000 * second;
    let packet = outer(40001, &allowed_dns(5353));
    let capture = dir.path().join("raw.pcapng");
    std::fs::write(
        &capture,
        pcapng(
            101,
            &[
                (start, packet.clone(), false),
                (start + second, packet.clone(), true), // the appliance's own reply
                (start + 10 * second, packet.clone(), false), // same flow, 10 s later
                (start + 200 * second, packet.clone(), false), // idle past UDP's 120 s: a new flow
            ],
        ),
    )
    .unwrap();
    let report = replay_json(&config, &capture, &[]);
    assert_eq!(report["format"], "pcapng");
    assert_eq!(report["link_types"], serde_json::json!(["raw_ip"]));
    assert_eq!(count(&report, "/skipped/outgoing"), 1);
    assert_eq!(count(&report, "/verdicts/allow"), 3);
    assert_eq!(count(&report, "/flows/created"), 2, "the capture's clock expired the flow");
    assert_eq!(count(&report, "/flows/open_at_end"), 1);
    assert_eq!(report["capture_seconds"].as_f64(), Some(200.0));
    assert_eq!(report["out"], Value::Null);
    assert_eq!(count(&report, "/written"), 3, "what would have been sent back");
}

#[test]
fn a_capture_cut_in_the_middle_of_a_record_is_replayed_up_to_the_cut_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let config = fixture_config(dir.path());
    let frame = ethernet(&outer(40001, &allowed_dns(5353)));
    let mut file = pcap(1, &[(1, frame.clone(), frame.len()), (2, frame.clone(), frame.len())]);
    file.truncate(file.len() - 20);
    let capture = dir.path().join("cut.pcap");
    std::fs::write(&capture, file).unwrap();
    let report = replay_json(&config, &capture, &[]);
    assert_eq!(report["capture_truncated"], Value::Bool(true));
    assert_eq!(count(&report, "/records"), 1);
    assert_eq!(count(&report, "/verdicts/allow"), 1);
    let (code, stdout, stderr) =
        labelwall(&["replay", "-c", config.to_str().unwrap(), capture.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(stdout.contains("verdicts    allow 1  deny 0  reject 0  audit 0"), "{stdout}");
    assert!(stderr.contains("warning:") && stderr.contains("middle of a record"), "{stderr}");
}

#[test]
fn text_output_names_verdicts_drops_skips_and_rule_hits() {
    let dir = tempfile::tempdir().unwrap();
    let config = fixture_config(dir.path());
    let mut bad = allowed_dns(1);
    bad[0] |= 0x40;
    let records: Vec<_> = [outer(1, &allowed_dns(9)), outer(2, &bad), vec![0x45, 0, 0]]
        .into_iter()
        .map(|ip| (1, ip.clone(), ip.len()))
        .collect();
    let capture = dir.path().join("mixed.pcap");
    std::fs::write(&capture, pcap(228, &records)).unwrap();
    let out = dir.path().join("sent.pcapng");
    let (code, stdout, stderr) = labelwall(&[
        "replay",
        "-c",
        config.to_str().unwrap(),
        capture.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    for expected in [
        "3 records (pcap, raw_ipv4)",
        "geneve      2",
        "skipped     1 (not_geneve 0, outer_fragment 0, outer_malformed 0, truncated 1",
        "verdicts    allow 1  deny 0  reject 0  audit 0",
        "drops       1 (geneve_version 1)",
        "sent back   1 packets written to",
        "  dns      1",
        "  default  0",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in:\n{stdout}");
    }
    assert_eq!(&std::fs::read(&out).unwrap()[..4], &[0x0a, 0x0d, 0x0d, 0x0a], "pcapng");
}

#[test]
fn unreadable_captures_fail_with_one_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let config = fixture_config(dir.path());
    let config = config.to_str().unwrap();
    let wifi = dir.path().join("wifi.pcap");
    std::fs::write(&wifi, pcap(105, &[])).unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a capture\n").unwrap();
    let empty = dir.path().join("empty.pcap");
    std::fs::write(&empty, "").unwrap();
    let missing = dir.path().join("missing.pcap");
    for (path, says) in [
        (&wifi, "link type"),
        (&text, "neither a pcap nor a pcapng file"),
        (&empty, "is empty"),
        (&missing, "cannot read the capture"),
    ] {
        let (code, stdout, stderr) = labelwall(&["replay", "-c", config, path.to_str().unwrap()]);
        assert_eq!(code, 1, "{path:?}");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(stderr.starts_with("error: ") && stderr.contains(says), "{says}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one sentence: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn with_a_specific_listen_address_the_appliances_own_replies_to_port_6081_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let config = fixture_config_listening(dir.path(), "10.9.0.2");
    let arrived = outer(40001, &allowed_dns(5353));
    // What the appliance sent back: 10.9.0.2:40001 -> GWLB 10.9.0.1:6081, the same datagram.
    let mut reply = Vec::new();
    etherparse::PacketBuilder::ipv4([10, 9, 0, 2], [10, 9, 0, 1], 64)
        .udp(40001, 6081)
        .write(&mut reply, &allowed_dns(5353))
        .unwrap();
    let records =
        [(1, ethernet(&arrived), arrived.len() + 14), (1, ethernet(&reply), reply.len() + 14)];
    let capture = dir.path().join("both-ways.pcap");
    std::fs::write(&capture, pcap(1, &records)).unwrap();
    let report = replay_json(&config, &capture, &[]);
    assert_eq!(count(&report, "/geneve"), 1);
    assert_eq!(count(&report, "/skipped/other_address"), 1);
    assert_eq!(count(&report, "/verdicts/allow"), 1);
    // Only the replies: nothing to replay, and a warning says why.
    std::fs::write(&capture, pcap(1, &records[1..])).unwrap();
    let mut args = vec!["replay", "-c", config.to_str().unwrap(), capture.to_str().unwrap()];
    let (code, _, stderr) = labelwall(&args);
    assert_eq!(code, 0);
    assert!(
        stderr.contains("warning: every GENEVE packet") && stderr.contains("10.9.0.2"),
        "{stderr}"
    );
    // --out must not overwrite the capture.
    args.extend(["--out", capture.to_str().unwrap()]);
    let before = std::fs::read(&capture).unwrap();
    let (code, _, stderr) = labelwall(&args);
    assert_eq!(code, 1);
    assert!(stderr.contains("is the capture itself"), "{stderr}");
    assert_eq!(std::fs::read(&capture).unwrap(), before);
}

#[test]
fn geneve_on_another_port_is_found_with_port() {
    let dir = tempfile::tempdir().unwrap();
    let config = fixture_config(dir.path());
    let mut ip = Vec::new();
    etherparse::PacketBuilder::ipv4([10, 9, 0, 1], [10, 9, 0, 2], 64)
        .udp(40001, 7000)
        .write(&mut ip, &allowed_dns(5353))
        .unwrap();
    let capture = dir.path().join("port.pcap");
    std::fs::write(&capture, pcap(101, &[(1, ip.clone(), ip.len())])).unwrap();
    let default_port = replay_json(&config, &capture, &[]);
    assert_eq!(count(&default_port, "/skipped/not_geneve"), 1);
    let other_port = replay_json(&config, &capture, &["--port", "7000"]);
    assert_eq!(count(&other_port, "/verdicts/allow"), 1);
}

#[test]
fn the_flow_log_records_the_replayed_flows() {
    let dir = tempfile::tempdir().unwrap();
    let config = fixture_config(dir.path());
    // Log every rule's flows.
    let policy = std::fs::read_to_string(dir.path().join("policy.yaml")).unwrap();
    std::fs::write(
        dir.path().join("policy.yaml"),
        policy.replace("action: allow}", "action: allow, log: true}"),
    )
    .unwrap();
    let packet = outer(40001, &allowed_dns(5353));
    let capture = dir.path().join("one.pcap");
    std::fs::write(&capture, pcap(101, &[(5, packet.clone(), packet.len())])).unwrap();
    let log = dir.path().join("flows.jsonl");
    let report = replay_json(&config, &capture, &["--flow-log", log.to_str().unwrap()]);
    assert_eq!(report["flow_log"], serde_json::json!({"written": 2, "dropped": 0}));
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "start and end");
    assert_eq!(lines[0]["event"], "start");
    assert_eq!(lines[0]["rule"], "dns");
    assert_eq!(lines[0]["flow_cookie"], "00000077");
    assert_eq!(lines[1]["event"], "end");
    assert_eq!(lines[1]["packets"], 1);
}
