//! `dataplane.io: packet_ring` through the real binary across a veth link: GENEVE from a peer
//! namespace is read from the workers' rings and answered byte for byte as the sockets path
//! answers it, while the kernel's UDP stack never sees it (the tc rule); the rule exists only
//! while the appliance runs; broken outer headers are counted and dropped; the fanout spreads
//! flows over the workers; `packet_ring` refuses to start where it cannot work and `auto`
//! falls back to sockets.
//!
//! ```text
//!  peer 10.76.0.2/24 (loadgen, tcpdump, python3 for raw frames) --veth-- app 10.76.0.1/24
//! ```
//!
//! Needs root, `ip`, `tc` (iproute2), tcpdump, python3 and setpriv: tests/run.sh installs them.

mod common;
#[path = "common/netns.rs"]
mod netns;

use std::collections::HashMap;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::metric;
use labelwall::wire::outer::{self, OuterAddressing};
use netns::{Capture, Netns, run_bounded, run_checked, veth, wait_bounded};

const APP_IP: &str = "10.76.0.1";
const PEER_IP: &str = "10.76.0.2";
const GENEVE_PORT: u16 = 6081;
const ADMIN_PORT: u16 = 8080;
/// Runs the appliance without CAP_NET_ADMIN (it keeps CAP_NET_RAW, as the unit gives it).
const NO_ADMIN: [&str; 3] = ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin"];

/// The tests count packets on their own links, but share the CPU: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Link {
    app: Netns,
    peer: Netns,
    appliance: Option<Child>,
    dir: tempfile::TempDir,
}

impl Link {
    fn new() -> Link {
        netns::require_tools(&[
            ("ip", "-V"),
            ("tc", "-V"),
            ("tcpdump", "--version"),
            ("python3", "--version"),
            ("setpriv", "--version"),
            ("tshark", "--version"),
        ]);
        let (app, peer) = (Netns::new("app"), Netns::new("peer"));
        veth(&app, "eth0", &peer, "eth0", 9000);
        app.address("eth0", &format!("{APP_IP}/24"));
        peer.address("eth0", &format!("{PEER_IP}/24"));
        Link { app, peer, appliance: None, dir: tempfile::tempdir().unwrap() }
    }

    /// Writes labelwall.yaml: listening on `listen`, `extra` in `dataplane:`.
    fn write_config(&self, listen: &str, extra: &str) {
        let dir = self.dir.path();
        std::fs::write(dir.join("policy.yaml"), "default_action: allow\n").unwrap();
        let config = format!(
            "dataplane:\n  listen: {listen}:{GENEVE_PORT}\n  reply_port: {GENEVE_PORT}\n{extra}\
             admin:\n  listen: 127.0.0.1:{ADMIN_PORT}\npolicy: policy.yaml\nlog:\n  level: info\n"
        );
        std::fs::write(dir.join("labelwall.yaml"), config).unwrap();
    }

    /// Starts `labelwall run --reflect` listening on `listen` with `extra` in `dataplane:`,
    /// the binary run through `wrapper` (a program and its arguments) if given.
    fn spawn(&mut self, listen: &str, extra: &str, wrapper: &[&str]) {
        self.write_config(listen, extra);
        self.spawn_as_configured(wrapper);
    }

    fn spawn_as_configured(&mut self, wrapper: &[&str]) {
        self.spawn_mode(wrapper, true);
    }

    /// Starts the appliance on the link judging (the allow-all policy), not reflecting, and
    /// waits until it is ready.
    fn start_inspecting(&mut self, extra: &str) {
        self.write_config(APP_IP, extra);
        self.spawn_mode(&[], false);
        self.wait_ready();
    }

    fn spawn_mode(&mut self, wrapper: &[&str], reflect: bool) {
        let dir = self.dir.path();
        let log = std::fs::File::create(dir.join("labelwall.log")).unwrap();
        let program = wrapper.first().copied().unwrap_or(env!("CARGO_BIN_EXE_labelwall"));
        let mut command = self.app.exec(program);
        if !wrapper.is_empty() {
            command.args(&wrapper[1..]).arg(env!("CARGO_BIN_EXE_labelwall"));
        }
        let child = command
            .arg("run")
            .arg("-c")
            .arg(dir.join("labelwall.yaml"))
            .args(reflect.then_some("--reflect"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.appliance = Some(child);
    }

    /// Starts the appliance on the link and waits until it is ready.
    fn start(&mut self, extra: &str) {
        self.spawn(APP_IP, extra, &[]);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.app.http_get(ADMIN_PORT, "/readyz").starts_with("HTTP/1.1 200") {
            if let Some(status) = self.appliance.as_mut().unwrap().try_wait().unwrap() {
                panic!("labelwall exited ({status}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "labelwall not ready:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, and the exit status.
    fn stop(&mut self) -> ExitStatus {
        let mut child = self.appliance.take().expect("running");
        run_bounded(
            Command::new("kill").args(["-TERM", &child.id().to_string()]),
            netns::COMMAND_LIMIT,
        );
        wait_bounded(&mut child, Duration::from_secs(20)).expect("labelwall stops on SIGTERM")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("labelwall.log")).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        self.app.http_get(ADMIN_PORT, "/metrics")
    }

    /// `secs` seconds of GENEVE from the peer at `rate` over `flows` flows of `size`-byte
    /// inner packets; (sent, received).
    fn load(&self, secs: u32, rate: u32, flows: u32, size: u32) -> (u64, u64) {
        let (rate, flows, size) = (rate.to_string(), flows.to_string(), size.to_string());
        let report = self.loadgen(secs, &["--rate", &rate, "--flows", &flows, "--size", &size]);
        (report["sent"].as_u64().unwrap(), report["received"].as_u64().unwrap())
    }

    /// `secs` seconds of loadgen from the peer with `args`: its report.
    fn loadgen(&self, secs: u32, args: &[&str]) -> serde_json::Value {
        let (target, listen) =
            (format!("{APP_IP}:{GENEVE_PORT}"), format!("{PEER_IP}:{GENEVE_PORT}"));
        netns::loadgen(&self.peer, &target, &listen, secs, args)
    }

    /// `labelwall ingress-rule ACTION -c labelwall.yaml` in the app namespace, as root (the
    /// unit's ExecStartPre=+ and ExecStopPost=+): what it said.
    fn ingress_rule(&self, action: &str) -> String {
        let output = run_checked(
            self.app
                .exec(env!("CARGO_BIN_EXE_labelwall"))
                .args(["ingress-rule", action, "-c"])
                .arg(self.dir.path().join("labelwall.yaml")),
            netns::COMMAND_LIMIT,
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Starts the appliance as [`Link::spawn`] does and expects it to refuse to start: its log.
    fn refused(&mut self, listen: &str, extra: &str, wrapper: &[&str]) -> String {
        self.spawn(listen, extra, wrapper);
        let status = wait_bounded(self.appliance.as_mut().unwrap(), Duration::from_secs(15))
            .expect("labelwall exits");
        self.appliance = None;
        assert!(!status.success(), "{}", self.log());
        self.log()
    }

    /// Whether the appliance's tc ingress rule is on the app's eth0.
    fn rule_present(&self) -> bool {
        let text = self.app_tc(&["filter", "show", "dev", "eth0", "ingress"]);
        text.contains("bpf") && text.contains(&format!("pref {GENEVE_PORT}"))
    }

    fn app_tc(&self, args: &[&str]) -> String {
        let output = run_checked(self.app.exec("tc").args(args), netns::COMMAND_LIMIT);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The app namespace's UDP counters from /proc/net/snmp: (InDatagrams, NoPorts).
    fn app_udp_counters(&self) -> (u64, u64) {
        let output = run_checked(self.app.exec("cat").arg("/proc/net/snmp"), netns::COMMAND_LIMIT);
        let text = String::from_utf8_lossy(&output.stdout);
        let mut udp = text.lines().filter(|line| line.starts_with("Udp: "));
        let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
        let field = |name: &str| {
            let at = names.split_whitespace().position(|n| n == name).unwrap();
            values.split_whitespace().nth(at).unwrap().parse::<u64>().unwrap()
        };
        (field("InDatagrams"), field("NoPorts"))
    }

    fn mac(netns: &Netns) -> [u8; 6] {
        let text = netns.ip(&["-o", "link", "show", "eth0"]);
        let after = text.split("link/ether ").nth(1).expect("an Ethernet address");
        let mut mac = [0u8; 6];
        for (byte, hex) in mac.iter_mut().zip(after.split_whitespace().next().unwrap().split(':')) {
            *byte = u8::from_str_radix(hex, 16).unwrap();
        }
        mac
    }

    /// Sends whole Ethernet frames from the peer's eth0 (python3, AF_PACKET).
    fn send_frames(&self, frames: &[Vec<u8>]) {
        let script = "import socket, sys, binascii\n\
                      s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
                      s.bind(('eth0', 0))\n\
                      for h in sys.argv[1:]:\n    s.send(binascii.unhexlify(h))\n";
        let hex: Vec<String> =
            frames.iter().map(|f| f.iter().map(|b| format!("{b:02x}")).collect()).collect();
        run_checked(
            self.peer.exec("python3").arg("-c").arg(script).args(&hex),
            netns::COMMAND_LIMIT,
        );
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(mut child) = self.appliance.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a capture on the peer saw: (source IP, source port, destination port, UDP payload) of
/// each UDP packet, requests and replies.
fn read_capture(path: &std::path::Path) -> Vec<([u8; 4], u16, u16, Vec<u8>)> {
    let file = std::fs::File::open(path).unwrap();
    let mut reader = pcap_file::pcap::PcapReader::new(file).unwrap();
    let mut packets = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let data = packet.unwrap().data;
        let ip = &data[14..];
        let ihl = usize::from(ip[0] & 0xf) * 4;
        let udp = &ip[ihl..];
        let be = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
        let len = usize::from(be(udp, 4));
        packets.push((
            ip[12..16].try_into().unwrap(),
            be(udp, 0),
            be(udp, 2),
            udp[8..len].to_vec(),
        ));
    }
    packets
}

/// Runs loadgen under tcpdump on the peer and checks that every reply is its request's
/// GENEVE datagram byte for byte, from the port GWLB sent from to the reply port; returns
/// (sent, replies matched).
fn byte_exact_round(link: &Link) -> (u64, u64) {
    let capture = link.dir.path().join("peer.pcap");
    let port = GENEVE_PORT.to_string();
    let tcpdump = Capture::start(
        &link.peer,
        &["-i", "eth0", "-n", "-U", "-B", "16384", "-s", "0"],
        &capture,
        &["udp", "port", &port],
    );
    let (sent, received) = link.load(1, 3000, 16, 300);
    tcpdump.stop();
    assert!(received * 100 >= sent * 99, "{received} of {sent} came back\n{}", link.log());

    let packets = read_capture(&capture);
    let peer: [u8; 4] = PEER_IP.parse::<std::net::Ipv4Addr>().unwrap().octets();
    let requests: HashMap<&[u8], u16> = packets
        .iter()
        .filter(|p| p.0 == peer)
        .map(|(_, sport, _, payload)| (payload.as_slice(), *sport))
        .collect();
    let mut matched = 0;
    for (src, sport, dport, payload) in packets.iter().filter(|p| p.0 != peer) {
        let request_port = requests.get(payload.as_slice());
        assert!(request_port.is_some(), "a reply from {src:?} that is no request's datagram");
        assert_eq!(Some(sport), request_port, "the reply leaves from the port GWLB sent from");
        assert_eq!(*dport, GENEVE_PORT);
        matched += 1;
    }
    assert!(matched * 10 >= received * 9, "{matched} replies captured of {received}");
    tshark_checks_the_replies(&capture);
    (sent, matched)
}

/// tshark, an independent decoder, reads the captured replies (the frames the appliance
/// built, whichever path sent them) with checksum validation on: good outer IPv4 and UDP
/// checksums (or no UDP checksum), GENEVE with AWS's three options, nothing malformed.
fn tshark_checks_the_replies(capture: &std::path::Path) {
    let fields =
        ["ip.checksum.status", "udp.checksum.status", "geneve.option.class", "_ws.malformed"];
    let mut command = Command::new("tshark");
    command
        .arg("-r")
        .arg(capture)
        .args(["-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE", "-d"])
        .arg(format!("udp.port=={GENEVE_PORT},geneve"))
        .arg("-Y")
        .arg(format!("ip.src=={APP_IP}"))
        .args(["-T", "fields", "-E", "separator=|", "-E", "occurrence=f"]);
    for field in fields {
        command.args(["-e", field]);
    }
    let output = run_checked(&mut command, netns::COMMAND_LIMIT);
    let text = String::from_utf8_lossy(&output.stdout);
    let rows: Vec<Vec<&str>> = text.lines().map(|line| line.split('|').collect()).collect();
    assert!(!rows.is_empty(), "tshark found no replies");
    for row in &rows {
        // Wireshark's checksum status: 0 bad, 1 good, 2 unverified, 3 not present (a UDP
        // checksum of zero, which IPv4 allows), 4 illegal.
        assert_eq!(row[0], "1", "outer IPv4 checksum: {row:?}");
        assert!(row[1] == "1" || row[1] == "3", "outer UDP checksum: {row:?}");
        assert_eq!(row[2], "0x0108", "GENEVE with AWS's option class: {row:?}");
        assert_eq!(row[3], "", "tshark calls it malformed: {row:?}");
    }
}

#[test]
fn ring_replies_are_the_requests_byte_for_byte_and_the_kernel_udp_stack_sees_none() {
    let _serial = serial();
    // "": no `io` key, the default (auto), which takes the rings on a link.
    for io in ["sockets", "packet_ring", ""] {
        let mut link = Link::new();
        let key = if io.is_empty() { String::new() } else { format!("  io: {io}\n") };
        link.start(&format!("{key}  workers: 1\n"));
        let (in_before, noports_before) = link.app_udp_counters();
        let (sent, _) = byte_exact_round(&link);
        let (in_after, noports_after) = link.app_udp_counters();
        let configured = if io.is_empty() { "auto" } else { io };
        let (taken, interface) = if io == "sockets" { (io, "") } else { ("packet_ring", "eth0") };
        let info = format!(
            "labelwall_dataplane_io_info{{configured=\"{configured}\",io=\"{taken}\",\
             interface=\"{interface}\"}} 1\n"
        );
        assert!(link.metrics().contains(&info), "{info} in\n{}", link.metrics());
        if io != "sockets" {
            assert!(link.log().contains("receiving on packet rings"), "{}", link.log());
            assert_eq!(in_after, in_before, "the kernel's UDP stack received GENEVE");
            assert_eq!(noports_after, noports_before, "the kernel answered GENEVE");
            let metrics = link.metrics();
            assert!(metric(&metrics, r#"labelwall_send_packets_total{path="packet"}"#) > sent / 2);
        } else {
            // The counter the ring case relies on does count GENEVE on the sockets path.
            assert!(in_after - in_before >= sent, "{in_before} -> {in_after} for {sent}");
        }
        assert!(link.stop().success(), "{}", link.log());
    }
}

/// `dataplane.listen: 0.0.0.0` (SPEC.md's default): the rings tap the link with the default
/// route, for every address on it; with several links and no default route they cannot
/// choose (a clear refusal; `auto` falls back to the sockets).
#[test]
fn listening_on_every_address_taps_the_default_route_s_link() {
    let _serial = serial();
    let mut link = Link::new();
    // A second link in the appliance's namespace, and no default route yet.
    link.app.ip(&["link", "add", "side0", "type", "veth", "peer", "name", "side1"]);
    link.app.address("side0", "192.168.77.1/24");
    link.app.ip(&["link", "set", "side0", "up"]);
    let log = link.refused("0.0.0.0", "  io: packet_ring\n  workers: 1\n", &[]);
    assert!(log.contains("several links have IPv4 addresses (eth0, side0)"), "{log}");
    assert!(log.contains("listen on the address GWLB sends to"), "{log}");
    link.spawn("0.0.0.0", "  io: auto\n  workers: 1\n", &[]);
    link.wait_ready();
    assert!(link.log().contains("dataplane.io auto: receiving on UDP sockets"), "{}", link.log());
    assert!(link.stop().success());

    // The default route says which link GWLB's GENEVE comes in on.
    link.app.ip(&["route", "add", "default", "via", PEER_IP, "dev", "eth0"]);
    link.app.address("eth0", "10.99.0.7/32");
    link.spawn("0.0.0.0", "  io: packet_ring\n  workers: 1\n", &[]);
    link.wait_ready();
    assert!(link.log().contains("receiving on packet rings"), "{}", link.log());
    assert!(link.log().contains(r#"interface="eth0""#), "{}", link.log());
    assert!(link.rule_present());
    let rule = link.app_tc(&["filter", "show", "dev", "eth0", "ingress"]);
    assert!(!link.app_tc(&["filter", "show", "dev", "side0", "ingress"]).contains("bpf"));
    let (in_before, _) = link.app_udp_counters();
    let (sent, _) = byte_exact_round(&link);
    // The link's other address is tapped too.
    link.peer.ip(&["route", "add", "10.99.0.7/32", "via", APP_IP]);
    let listen = format!("{PEER_IP}:{GENEVE_PORT}");
    let args = ["--rate", "2000", "--flows", "8", "--size", "200"];
    let report = netns::loadgen(&link.peer, "10.99.0.7:6081", &listen, 1, &args);
    let (sent_second, received_second) =
        (report["sent"].as_u64().unwrap(), report["received"].as_u64().unwrap());
    assert!(received_second * 100 >= sent_second * 99, "{report}\n{}", link.log());
    let (in_after, _) = link.app_udp_counters();
    assert_eq!(in_after, in_before, "GENEVE to eth0's addresses reached the UDP stack: {rule}");
    // GENEVE to the other link's address, arriving on eth0 (the host takes it, any
    // interface): not the rings', and the tc rule must leave it to the sockets, answered.
    link.peer.ip(&["route", "add", "192.168.77.1/32", "via", APP_IP]);
    let report = netns::loadgen(&link.peer, "192.168.77.1:6081", &listen, 1, &args);
    let (sent_other, received_other) =
        (report["sent"].as_u64().unwrap(), report["received"].as_u64().unwrap());
    assert!(received_other * 100 >= sent_other * 99, "{report}\n{}", link.log());
    let (in_other, _) = link.app_udp_counters();
    assert!(in_other - in_after >= sent_other, "it took the UDP sockets: {in_after} -> {in_other}");
    let metrics = link.metrics();
    assert!(metric(&metrics, r#"labelwall_send_packets_total{path="packet"}"#) > sent / 2);
    assert!(link.stop().success(), "{}", link.log());
    assert!(!link.rule_present());
}

#[test]
fn the_tc_rule_exists_while_the_appliance_runs_and_is_gone_after_sigterm() {
    let _serial = serial();
    let mut link = Link::new();
    assert!(!link.rule_present());
    link.start("  io: packet_ring\n  workers: 2\n");
    assert!(link.rule_present(), "{}", link.log());
    assert!(link.log().contains("rule_installed_here=true"), "{}", link.log());
    let (sent, received) = link.load(1, 5000, 8, 128);
    assert!(received * 100 >= sent * 99, "{received} of {sent}\n{}", link.log());
    let status = link.stop();
    assert!(status.success(), "{status}\n{}", link.log());
    assert!(!link.rule_present(), "the rule outlived the appliance");
    let qdiscs = link.app_tc(&["qdisc", "show", "dev", "eth0"]);
    assert!(!qdiscs.contains("clsact"), "the qdisc it added stayed: {qdiscs}");

    // Without the rule GENEVE reaches the kernel's UDP stack again (nothing listens: it
    // answers with port unreachable), which is what the rule kept from happening.
    let (_, noports_before) = link.app_udp_counters();
    link.send_frames(&[frame(&link, |_| {})]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(link.app_udp_counters().1, noports_before + 1);
}

#[test]
fn trains_and_jumbo_packets_pass_the_ring_to_the_sockets_and_meet_their_flows_on_one_worker() {
    let _serial = serial();
    let mut link = Link::new();
    link.start_inspecting("  io: packet_ring\n  workers: 2\n");
    let (in_before, noports_before) = link.app_udp_counters();
    // 16 flows as trains (loadgen's segmented sends: one GSO packet each on veth), then the
    // same 16 flows (same outer source ports) as single packets.
    let trains =
        link.loadgen(1, &["--flows", "16", "--train", "16", "--size", "1000", "--rate", "20000"]);
    let (sent, received) = (trains["sent"].as_u64().unwrap(), trains["received"].as_u64().unwrap());
    assert!(
        sent > 1000 && received * 100 >= sent * 99,
        "trains: {received} of {sent}\n{}",
        link.log()
    );
    let (in_trains, _) = link.app_udp_counters();
    assert!(in_trains > in_before, "trains went to the UDP sockets, not the ring");
    let singles = link.load(1, 2000, 16, 300);
    assert!(singles.1 * 100 >= singles.0 * 99, "singles: {singles:?}\n{}", link.log());
    let (in_after, noports_after) = link.app_udp_counters();
    assert!(in_after - in_trains < singles.0 / 10, "single packets stay on the ring");
    // Jumbo single packets (longer than a ring frame) of the same flows take the sockets,
    // like trains, and are answered.
    let jumbo = link.load(1, 1000, 16, 8000);
    assert!(jumbo.1 * 100 >= jumbo.0 * 99, "jumbo: {jumbo:?}\n{}", link.log());
    let (in_jumbo, noports_after_jumbo) = link.app_udp_counters();
    assert!(in_jumbo - in_after >= jumbo.0, "jumbo packets went to the UDP sockets");
    assert_eq!(noports_after, noports_before, "nothing reached the kernel unanswered");
    assert_eq!(noports_after_jumbo, noports_before, "nothing reached the kernel unanswered");
    let metrics = link.metrics();
    // A flow split between the workers would be created on each.
    assert_eq!(metric(&metrics, "labelwall_flows_created_total"), 16, "{metrics}");
    let per_worker: Vec<u64> = (0..2)
        .map(|w| {
            metric(&metrics, &format!("labelwall_worker_received_packets_total{{worker=\"{w}\"}}"))
        })
        .collect();
    assert!(per_worker.iter().all(|&n| n > 0), "both workers had flows: {per_worker:?}");
    assert!(link.stop().success(), "{}", link.log());
}

/// A GENEVE frame from the peer to the appliance, with `change` applied to the whole frame
/// (Ethernet header first).
fn frame(link: &Link, change: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let inner = common::ipv4_udp([10, 1, 0, 1], [10, 2, 0, 1], 5353, 53, 20);
    let datagram = common::gwlb_datagram(0x1234_5678, &inner);
    let addressing = OuterAddressing {
        src: PEER_IP.parse().unwrap(),
        dst: APP_IP.parse().unwrap(),
        src_port: 40_001,
        dst_port: GENEVE_PORT,
    };
    let mut header = [0u8; outer::OUTER_HEADER_LEN];
    outer::emit(&mut header, &addressing, datagram.len()).unwrap();
    let mut bytes = Link::mac(&link.app).to_vec();
    bytes.extend_from_slice(&Link::mac(&link.peer));
    bytes.extend_from_slice(&[0x08, 0x00]);
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&datagram);
    change(&mut bytes);
    bytes
}

/// Rewrites the IPv4 header checksum of a frame after a change.
fn fix_ip_checksum(frame: &mut [u8]) {
    frame[24..26].copy_from_slice(&[0, 0]);
    let sum: u32 =
        frame[14..34].chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let checksum = !(((folded & 0xffff) + (folded >> 16)) as u16);
    frame[24..26].copy_from_slice(&checksum.to_be_bytes());
}

#[test]
fn broken_outer_headers_are_counted_by_reason_and_never_answered() {
    let _serial = serial();
    let mut link = Link::new();
    link.start("  io: packet_ring\n  workers: 1\n");
    let frames = [
        frame(&link, |_| {}),        // good: answered
        frame(&link, |f| f[22] = 7), // TTL changed, checksum not
        frame(&link, |f| {
            f[20] |= 0x20; // more fragments
            fix_ip_checksum(f);
        }),
        frame(&link, |f| {
            f[38..40].copy_from_slice(&4000u16.to_be_bytes()); // UDP length past the packet
        }),
        frame(&link, |f| {
            f[16..18].copy_from_slice(&25u16.to_be_bytes()); // IPv4 length cuts the UDP header
            fix_ip_checksum(f);
        }),
    ];
    link.send_frames(&frames);
    let sample = |name: &str| {
        metric(
            &link.metrics(),
            &format!("labelwall_drops_total{{class=\"malformed_outer\",reason=\"{name}\"}}"),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while sample("outer_malformed") < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sample("outer_checksum"), 1, "{}", link.metrics());
    assert_eq!(sample("outer_fragment"), 1);
    assert_eq!(sample("outer_malformed"), 2);
    let metrics = link.metrics();
    assert_eq!(metric(&metrics, r#"labelwall_packets_total{verdict="allow"}"#), 1, "{metrics}");
    assert_eq!(
        metric(&metrics, r#"labelwall_worker_sent_packets_total{worker="0"}"#),
        1,
        "{metrics}"
    );
    assert!(link.stop().success());
}

#[test]
fn the_fanout_spreads_flows_over_the_workers() {
    let _serial = serial();
    let mut link = Link::new();
    link.start("  io: packet_ring\n  workers: 2\n");
    let (sent, received) = link.load(2, 10_000, 64, 128);
    assert!(received * 100 >= sent * 99, "{received} of {sent}\n{}", link.log());
    let metrics = link.metrics();
    let per_worker: Vec<u64> = (0..2)
        .map(|w| {
            metric(&metrics, &format!("labelwall_worker_received_packets_total{{worker=\"{w}\"}}"))
        })
        .collect();
    assert_eq!(per_worker.iter().sum::<u64>(), sent, "{metrics}");
    for count in &per_worker {
        assert!(*count * 5 >= sent, "one worker got {count} of {sent}: {per_worker:?}");
    }
    assert!(link.stop().success());
}

#[test]
fn packet_ring_refuses_to_start_where_it_cannot_work_and_auto_falls_back_to_sockets() {
    let _serial = serial();
    // Without CAP_NET_ADMIN the tc rule cannot be installed (and nobody installed it).
    let mut link = Link::new();
    let log = link.refused(APP_IP, "  io: packet_ring\n  workers: 1\n", &NO_ADMIN);
    assert!(
        log.contains("dataplane.io is packet_ring, but cannot install the tc ingress rule"),
        "{log}"
    );
    assert!(log.contains("CAP_NET_ADMIN"), "{log}");
    assert!(!link.rule_present());

    link.spawn(APP_IP, "  io: auto\n  workers: 1\n", &NO_ADMIN);
    link.wait_ready();
    assert!(link.log().contains("dataplane.io auto: receiving on UDP sockets"), "{}", link.log());
    let info = r#"labelwall_dataplane_io_info{configured="auto",io="sockets",interface=""} 1"#;
    assert!(link.metrics().contains(info), "{}", link.metrics());
    let (sent, received) = link.load(1, 5000, 8, 128);
    assert!(received * 100 >= sent * 99, "{received} of {sent}\n{}", link.log());
    assert!(link.stop().success());

    // A loopback address has no link to tap.
    let log = link.refused("127.0.0.1", "  io: packet_ring\n  workers: 1\n", &[]);
    assert!(log.contains("a loopback interface"), "{log}");
}

#[test]
fn an_unprivileged_appliance_uses_a_rule_installed_for_it_and_leaves_its_removal_to_the_installer()
{
    let _serial = serial();
    let mut link = Link::new();
    link.write_config(APP_IP, "  io: packet_ring\n  workers: 1\n");
    // What the systemd unit's ExecStartPre=+ does before the unprivileged appliance starts.
    let said = link.ingress_rule("install");
    assert!(said.contains("is on eth0"), "{said}");
    assert!(link.rule_present());
    link.spawn_as_configured(&NO_ADMIN);
    link.wait_ready();
    assert!(link.log().contains("rule_installed_here=false"), "{}", link.log());
    let (sent, received) = link.load(1, 5000, 8, 128);
    assert!(received * 100 >= sent * 99, "{received} of {sent}\n{}", link.log());
    assert!(link.stop().success());
    assert!(link.rule_present(), "not the appliance's to remove");
    // ExecStopPost=+.
    let said = link.ingress_rule("remove");
    assert!(said.contains("removed"), "{said}");
    assert!(!link.rule_present());
    assert!(!link.app_tc(&["qdisc", "show", "dev", "eth0"]).contains("clsact"));
}

/// Packets the kernel dropped between devices and protocols on every CPU
/// (/proc/net/softnet_stat, second column: a full backlog queue).
fn softnet_dropped() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap()
        .lines()
        .map(|line| u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap())
        .sum()
}

#[test]
fn a_full_ring_drops_are_counted_not_silent() {
    let _serial = serial();
    let mut link = Link::new();
    // The smallest ring (64 frames) and loadgen as fast as it can: the ring overflows.
    link.start("  io: packet_ring\n  workers: 1\n  receive_buffer: 65536\n");
    let dropped_before = softnet_dropped();
    let report = link.loadgen(1, &["--flows", "64"]);
    let sent = report["sent"].as_u64().unwrap();
    // The ring's drop count is read once a second.
    std::thread::sleep(Duration::from_millis(1500));
    let kernel_dropped = softnet_dropped() - dropped_before;
    let metrics = link.metrics();
    let received = metric(&metrics, r#"labelwall_worker_received_packets_total{worker="0"}"#);
    let ring_full =
        metric(&metrics, r#"labelwall_drops_total{class="overload",reason="ring_full"}"#);
    assert!(ring_full > 0, "the ring never filled: {sent} sent, {received} received");
    // Every packet sent was received or counted: by the appliance, or (before the tap) by
    // the kernel's backlog statistics.
    let accounted = received + ring_full + kernel_dropped;
    assert!(
        accounted >= sent && accounted <= sent + sent / 100,
        "sent {sent}: received {received} + ring_full {ring_full} + backlog {kernel_dropped}"
    );
    assert!(link.stop().success());
}

/// A rule left behind (a crash, or a switch from `packet_ring`) would drop all GENEVE the UDP
/// sockets should get: the unit's ExecStartPre takes it off with `dataplane.io: sockets`, an
/// appliance on sockets removes it itself when it may, and otherwise refuses to start saying
/// how to remove it.
#[test]
fn a_rule_left_behind_never_silently_drops_what_the_sockets_should_get() {
    let _serial = serial();
    let mut link = Link::new();
    let leave_rule = |link: &Link| {
        link.write_config(APP_IP, "  io: packet_ring\n");
        link.ingress_rule("install");
        assert!(link.rule_present());
    };

    // Unprivileged on sockets: refuses to start, and says how to remove the rule.
    leave_rule(&link);
    let log = link.refused(APP_IP, "  io: sockets\n  workers: 1\n", &NO_ADMIN);
    assert!(
        log.contains(&format!("a tc ingress rule for port {GENEVE_PORT} is installed on eth0")),
        "{log}"
    );
    assert!(log.contains("labelwall ingress-rule remove -c"), "{log}");
    assert!(log.contains(&format!("tc filter del dev eth0 ingress pref {GENEVE_PORT}")), "{log}");
    assert!(link.rule_present());

    // With CAP_NET_ADMIN (root) on sockets, and with auto falling back to sockets (listening
    // on 0.0.0.0 with two links and no default route, where the rings cannot choose):
    // removes it, says so, and GENEVE is answered.
    link.app.ip(&["link", "add", "side0", "type", "veth", "peer", "name", "side1"]);
    link.app.address("side0", "192.168.77.1/24");
    link.app.ip(&["link", "set", "side0", "up"]);
    for (listen, io) in [(APP_IP, "sockets"), ("0.0.0.0", "auto")] {
        leave_rule(&link);
        link.spawn(listen, &format!("  io: {io}\n  workers: 1\n"), &[]);
        link.wait_ready();
        assert!(link.log().contains("removed a tc ingress rule left by dataplane.io packet_ring"));
        if io == "auto" {
            assert!(link.log().contains("auto: receiving on UDP sockets"), "{}", link.log());
        }
        assert!(!link.rule_present(), "{io}");
        let (sent, received) = link.load(1, 5000, 8, 128);
        assert!(received * 100 >= sent * 99, "{io}: {received} of {sent}\n{}", link.log());
        assert!(link.stop().success());
    }

    // The unit's ExecStartPre with sockets, also when listening on 0.0.0.0: takes it off.
    for listen in [APP_IP, "0.0.0.0"] {
        leave_rule(&link);
        link.write_config(listen, "  io: sockets\n");
        let said = link.ingress_rule("install");
        assert!(said.contains("removed the tc ingress rule for port 6081 from eth0"), "{said}");
        assert!(!link.rule_present(), "{listen}");
        assert!(!link.app_tc(&["qdisc", "show", "dev", "eth0"]).contains("clsact"));
    }
}

/// How often the appliance's worker threads have gone to sleep so far (their voluntary
/// context switches, from /proc).
fn worker_sleeps(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.starts_with("lw-worker") {
            continue;
        }
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        let line = status.lines().find(|l| l.starts_with("voluntary_ctxt_switches:")).unwrap();
        total += line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap();
    }
    total
}

/// An idle worker with nothing to expire (reflect mode keeps no flows) sleeps until a packet
/// comes, without a timeout, and still stops at once on SIGTERM.
#[test]
fn idle_workers_sleep_until_a_packet_comes_and_stop_at_once() {
    let _serial = serial();
    for io in ["sockets", "packet_ring"] {
        let mut link = Link::new();
        link.start(&format!("  io: {io}\n  workers: 2\n"));
        let (sent, received) = link.load(1, 1000, 8, 128);
        assert!(received * 100 >= sent * 99, "{io}: {received} of {sent}\n{}", link.log());
        // A ring worker reads its drop count once a second after packets came, then sleeps.
        std::thread::sleep(Duration::from_millis(1500));
        let pid = link.appliance.as_ref().unwrap().id();
        let before = worker_sleeps(pid);
        std::thread::sleep(Duration::from_secs(2));
        let woke = worker_sleeps(pid) - before;
        // A 100 ms timeout would wake two workers 40 times.
        assert!(woke <= 2, "{io}: idle workers woke {woke} times in 2 s");
        // Still woken by packets.
        let (sent, received) = link.load(1, 200, 4, 128);
        assert!(received * 100 >= sent * 99, "{io}: {received} of {sent}\n{}", link.log());
        let stopping = Instant::now();
        assert!(link.stop().success(), "{}", link.log());
        assert!(stopping.elapsed() < Duration::from_secs(2), "{io}: {:?}", stopping.elapsed());
    }
}
