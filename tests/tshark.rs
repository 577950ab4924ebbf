//! An independent decoder agrees with ours: tshark captures what the appliance sends back on
//! loopback and decodes it as GENEVE with option class 0x0108 and the inner packet intact.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn tshark_available() -> bool {
    Command::new("tshark").arg("--version").stdout(Stdio::null()).status().is_ok()
}

#[test]
fn tshark_decodes_replies_as_gwlb_geneve_with_the_inner_packet_intact() {
    assert!(
        tshark_available(),
        "tshark is not installed: run the README's test command (scripts/test.sh), which installs it"
    );
    let peer = GwlbPeer::new(2);
    let appliance = Appliance::start(peer.reply_port(), 1, "", &[]);
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("replies.pcap");
    let mut capture = Command::new("tshark")
        .args(["-i", "lo", "-q", "-a", "duration:20", "-c", "2", "-f"])
        .arg(format!("udp and dst host 127.0.0.2 and dst port {}", peer.reply_port()))
        .arg("-w")
        .arg(&pcap)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until tshark says it is capturing: "Capture started" where this tshark prints it,
    // else a second after "Capturing on" (which is printed before the capture is live).
    let stderr = capture.stderr.take().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("Capture started") {
                let _ = ready_tx.send(Duration::ZERO);
            } else if line.contains("Capturing on") {
                let _ = ready_tx.send(Duration::from_secs(1));
            }
        }
    });
    let mut settle = ready_rx.recv_timeout(Duration::from_secs(20)).expect("tshark started");
    if let Ok(started) = ready_rx.recv_timeout(Duration::from_secs(2)) {
        settle = settle.min(started);
    }
    std::thread::sleep(settle);

    let tcp = ipv4_tcp([10, 0, 1, 10], [10, 20, 0, 5], 40000, 3306, true, false, 0);
    let tcp_datagram = gwlb_datagram(0xcafe_f00d, &tcp);
    assert_eq!(peer.round_trip(0, appliance.listen, &tcp_datagram), tcp_datagram);
    let v6 = ipv6_ext_tcp(41000, 443);
    let v6_datagram = gwlb_datagram(0x0bad_cafe, &v6);
    assert_eq!(peer.round_trip(1, appliance.listen, &v6_datagram), v6_datagram);

    let deadline = Instant::now() + Duration::from_secs(25);
    while capture.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "tshark did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }

    let fields = [
        "ip.src",
        "ip.dst",
        "udp.srcport",
        "udp.dstport",
        "geneve.version",
        "geneve.proto_type",
        "geneve.vni",
        "geneve.option.class",
        "geneve.option.type",
        "geneve.option.length",
        "geneve.option.unknown.data",
        "ipv6.src",
        "ipv6.dst",
        "tcp.srcport",
        "tcp.dstport",
        "tcp.flags.syn",
        "tcp.seq_raw",
        "_ws.malformed",
    ];
    let mut decode = Command::new("tshark");
    decode
        .arg("-r")
        .arg(&pcap)
        .arg("-d")
        .arg(format!("udp.port=={},geneve", peer.reply_port()))
        .args(["-T", "fields", "-E", "separator=|", "-E", "occurrence=a", "-E", "aggregator=,"]);
    for field in fields {
        decode.args(["-e", field]);
    }
    let output = decode.output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(rows.len(), 2, "two replies captured:\n{text}");
    let field = |row: &Vec<&str>, name: &str| {
        row[fields.iter().position(|f| *f == name).unwrap()].to_string()
    };

    let v4 = &rows[0];
    assert_eq!(field(v4, "ip.src"), "127.0.0.1,10.0.1.10");
    assert_eq!(field(v4, "ip.dst"), "127.0.0.2,10.20.0.5");
    assert_eq!(field(v4, "udp.srcport"), peer.source_port(0).to_string());
    assert_eq!(field(v4, "udp.dstport"), peer.reply_port().to_string());
    assert_eq!(field(v4, "geneve.version"), "0");
    assert_eq!(field(v4, "geneve.proto_type"), "0x0800");
    assert_eq!(field(v4, "geneve.vni"), "0x000000");
    assert_eq!(field(v4, "geneve.option.class"), "0x0108,0x0108,0x0108");
    assert_eq!(field(v4, "geneve.option.type"), "0x01,0x02,0x03");
    // The header's options length (32 bytes), then each option's length with its header.
    assert_eq!(field(v4, "geneve.option.length"), "32,12,12,8");
    assert_eq!(
        field(v4, "geneve.option.unknown.data"),
        "0a1b2c3d4e5f6071,1020304050607080,cafef00d",
        "endpoint id, attachment id and flow cookie"
    );
    assert_eq!(field(v4, "tcp.srcport"), "40000");
    assert_eq!(field(v4, "tcp.dstport"), "3306");
    assert_eq!(field(v4, "tcp.flags.syn"), "1");
    assert_eq!(field(v4, "tcp.seq_raw"), "1000");
    assert_eq!(field(v4, "_ws.malformed"), "");

    let v6 = &rows[1];
    assert_eq!(field(v6, "geneve.proto_type"), "0x86dd");
    assert_eq!(field(v6, "ipv6.src"), "fd00::a");
    assert_eq!(field(v6, "ipv6.dst"), "fd00::b");
    assert_eq!(field(v6, "tcp.dstport"), "443");
    assert_eq!(field(v6, "geneve.option.unknown.data").split(',').next_back(), Some("0badcafe"));
    assert_eq!(field(v6, "_ws.malformed"), "");
}
