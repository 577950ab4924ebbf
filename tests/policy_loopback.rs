//! The bookinfo scenario (the demo's inventory and policy) through the real binary and data
//! plane on loopback: verdicts on the wire, rejects an independent parser accepts, stateful
//! behaviour, IP reuse, reloads, the flow log.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::*;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};

const RATINGS: [u8; 4] = [10, 0, 1, 15];
const OTHER: [u8; 4] = [10, 0, 1, 20];
const DB: [u8; 4] = [10, 20, 0, 5];
const INTERNET: [u8; 4] = [203, 0, 113, 10];

fn tcp(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    seq: u32,
    ack: Option<u32>,
    syn: bool,
) -> Vec<u8> {
    let mut step = etherparse::PacketBuilder::ipv4(src, dst, 64).tcp(sport, dport, seq, 64_000);
    if syn {
        step = step.syn();
    }
    if let Some(ack) = ack {
        step = step.ack(ack);
    }
    let payload: &[u8] = if syn { b"" } else { b"payload" };
    let mut out = Vec::new();
    step.write(&mut out, payload).unwrap();
    out
}

fn bookinfo(peer: &GwlbPeer, extra: &str) -> Appliance {
    Appliance::start_with(
        peer.reply_port(),
        1,
        labelwall::tools::demo::POLICY,
        Some(labelwall::tools::demo::INVENTORY),
        extra,
        &[],
    )
}

/// Sends and expects the same datagram back.
fn passes(peer: &GwlbPeer, appliance: &Appliance, sender: usize, datagram: &[u8]) -> bool {
    peer.send(sender, appliance.listen, datagram);
    match peer.receive() {
        Some((_, reply)) => {
            assert_eq!(reply, datagram, "a reply is either the packet itself or nothing here");
            true
        }
        None => false,
    }
}

/// Polls `/metrics` until `sample` reaches `value`.
fn wait_for_metric(appliance: &Appliance, sample: &str, value: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&appliance.metrics(), sample) < value {
        assert!(Instant::now() < deadline, "{sample} never reached {value}\n{}", appliance.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn allowed_flow_comes_back_byte_exact_in_both_directions() {
    let peer = GwlbPeer::new(1);
    let appliance = bookinfo(&peer, "");
    let syn = gwlb_datagram(11, &tcp(RATINGS, DB, 40001, 3306, 100, None, true));
    let syn_ack = gwlb_datagram(11, &tcp(DB, RATINGS, 3306, 40001, 900, Some(101), true));
    let ack = gwlb_datagram(11, &tcp(RATINGS, DB, 40001, 3306, 101, Some(901), false));
    let data_back = gwlb_datagram(11, &tcp(DB, RATINGS, 3306, 40001, 901, Some(108), false));
    for datagram in [&syn, &syn_ack, &ack, &data_back] {
        assert_eq!(&peer.round_trip(0, appliance.listen, datagram), datagram);
    }
    let m = appliance.metrics();
    assert_eq!(metric(&m, r#"labelwall_rule_hits_total{rule="ratings-to-db"}"#), 4);
    assert_eq!(metric(&m, "labelwall_flows_active"), 1);
    // Rules never hit are there at 0, so that dashboards and alerts see every rule.
    for rule in ["others-to-db", "productpage-to-payments", "reviews-to-ratings-audit", "default"] {
        let sample = format!("labelwall_rule_hits_total{{rule=\"{rule}\"}} 0");
        assert!(m.lines().any(|line| line == sample), "{sample} missing:\n{m}");
    }
}

#[test]
fn denied_syn_gets_nothing_back() {
    let peer = GwlbPeer::new(1);
    let appliance = bookinfo(&peer, "");
    let syn = gwlb_datagram(12, &tcp(OTHER, INTERNET, 40002, 443, 1, None, true));
    assert!(!passes(&peer, &appliance, 0, &syn));
    let m = appliance.metrics();
    assert_eq!(metric(&m, r#"labelwall_packets_total{verdict="deny"}"#), 1);
    assert_eq!(metric(&m, r#"labelwall_rule_hits_total{rule="default"}"#), 1);
}

#[test]
fn rejected_syn_gets_a_valid_rst_inside_the_flows_geneve_header() {
    let peer = GwlbPeer::new(1);
    let appliance = bookinfo(&peer, "");
    let syn = gwlb_datagram(0xabcd_0013, &tcp(OTHER, DB, 40003, 3306, 7000, None, true));
    peer.send(0, appliance.listen, &syn);
    let (from, reply) = peer.receive().expect("a reject comes back");
    assert_eq!(from.port(), peer.source_port(0), "inside the same GWLB flow (source port kept)");
    assert_eq!(&reply[..40], &syn[..40], "same GENEVE header and options, same cookie");
    let inner = SlicedPacket::from_ip(&reply[40..]).expect("an independent parser reads it");
    let Some(NetSlice::Ipv4(ip)) = &inner.net else { panic!("IPv4 expected") };
    assert_eq!(ip.header().source(), DB, "from the server the client wanted");
    assert_eq!(ip.header().destination(), OTHER);
    let ip_header = ip.header().to_header();
    assert_eq!(ip_header.header_checksum, ip_header.calc_header_checksum());
    let Some(TransportSlice::Tcp(rst)) = &inner.transport else { panic!("TCP expected") };
    assert!(rst.rst() && rst.ack() && !rst.syn());
    assert_eq!((rst.source_port(), rst.destination_port()), (3306, 40003));
    assert_eq!(rst.sequence_number(), 0);
    assert_eq!(rst.acknowledgment_number(), 7001, "RFC 9293: SEG.SEQ + SEG.LEN, SYN counts one");
    let checksum = rst.to_header().calc_checksum_ipv4(&ip_header, &[]).unwrap();
    assert_eq!(rst.checksum(), checksum);
    assert!(peer.receive().is_none(), "the SYN itself never goes on");
}

#[test]
fn rejected_mid_flow_packet_gets_rst_with_its_ack_as_sequence() {
    let peer = GwlbPeer::new(1);
    let appliance = bookinfo(&peer, "");
    let data = gwlb_datagram(14, &tcp(OTHER, DB, 40004, 3306, 5000, Some(777_777), false));
    peer.send(0, appliance.listen, &data);
    let (_, reply) = peer.receive().expect("a reject comes back");
    let inner = SlicedPacket::from_ip(&reply[40..]).unwrap();
    let Some(TransportSlice::Tcp(rst)) = &inner.transport else { panic!("TCP expected") };
    assert!(rst.rst() && !rst.ack());
    assert_eq!(rst.sequence_number(), 777_777);
}

#[test]
fn rejected_udp_gets_icmp_administratively_prohibited() {
    let peer = GwlbPeer::new(1);
    let appliance = bookinfo(&peer, "");
    let query = ipv4_udp(OTHER, DB, 5000, 3306, 20);
    let datagram = gwlb_datagram(15, &query);
    peer.send(0, appliance.listen, &datagram);
    let (_, reply) = peer.receive().expect("a reject comes back");
    let inner = SlicedPacket::from_ip(&reply[40..]).unwrap();
    let Some(TransportSlice::Icmpv4(icmp)) = &inner.transport else { panic!("ICMP expected") };
    assert_eq!((icmp.type_u8(), icmp.code_u8()), (3, 13));
    assert_eq!(&icmp.payload()[..28], &query[..28], "quotes the IP header and 8 bytes");
}

#[test]
fn flow_picked_up_mid_stream_is_judged_both_ways() {
    let peer = GwlbPeer::new(1);
    let appliance = bookinfo(&peer, "");
    // First packet seen is the database's answer: allowed as a reply of ratings -> db:3306.
    let answer = gwlb_datagram(16, &tcp(DB, RATINGS, 3306, 40005, 900, Some(101), false));
    assert!(passes(&peer, &appliance, 0, &answer));
    let request = gwlb_datagram(16, &tcp(RATINGS, DB, 40005, 3306, 101, Some(908), false));
    assert!(passes(&peer, &appliance, 0, &request));
}

#[test]
fn syn_is_never_taken_for_a_reply_and_does_not_poison_the_five_tuple() {
    let peer = GwlbPeer::new(1);
    let appliance = bookinfo(&peer, "");
    // A SYN from db:3306 would be a reply of ratings -> db:3306 if SYNs could be replies.
    let syn_from_db = gwlb_datagram(17, &tcp(DB, RATINGS, 3306, 40006, 1, None, true));
    assert!(!passes(&peer, &appliance, 0, &syn_from_db));
    // The legitimate direction on the same 5-tuple still works.
    let syn = gwlb_datagram(18, &tcp(RATINGS, DB, 40006, 3306, 100, None, true));
    assert!(passes(&peer, &appliance, 0, &syn));
}

#[test]
fn ip_reused_by_another_pod_is_judged_by_the_new_owner_on_the_next_packet() {
    let peer = GwlbPeer::new(1);
    let appliance = bookinfo(&peer, "");
    let ack = gwlb_datagram(19, &tcp(RATINGS, DB, 40007, 3306, 101, Some(901), false));
    assert!(passes(&peer, &appliance, 0, &ack), "ratings may reach the database");
    // The ratings pod goes away; an `other` pod gets 10.0.1.15.
    let inventory = labelwall::tools::demo::INVENTORY.replace(
        "{ip: 10.0.1.15, cluster: demo, namespace: bookinfo, name: ratings-v1-85c74b6cb4-4d8wx, kind: pod, labels: {app: ratings, version: v1}}",
        "{ip: 10.0.1.15, cluster: demo, namespace: bookinfo, name: other-7c4d9f8b5-r8h2n, kind: pod, labels: {app: other}}",
    );
    assert_ne!(inventory, labelwall::tools::demo::INVENTORY);
    std::fs::write(appliance.dir.path().join("inventory.yaml"), inventory).unwrap();
    wait_for_metric(&appliance, "labelwall_policy_generation", 2);
    peer.send(0, appliance.listen, &ack);
    let (_, reply) = peer.receive().expect("a reject for the new owner");
    assert_ne!(reply, ack, "the established flow is cut on its next packet");
    let inner = SlicedPacket::from_ip(&reply[40..]).unwrap();
    assert!(matches!(&inner.transport, Some(TransportSlice::Tcp(t)) if t.rst()));
}

#[test]
fn policy_reload_that_tightens_a_rule_cuts_an_established_flow() {
    let peer = GwlbPeer::new(1);
    let appliance = bookinfo(&peer, "");
    let ack = gwlb_datagram(
        20,
        &tcp(Ipv4Addr::new(10, 0, 1, 16).octets(), DB, 40008, 3306, 1, Some(1), false),
    );
    assert!(passes(&peer, &appliance, 0, &ack));
    let tightened = labelwall::tools::demo::POLICY
        .replace("selector: \"app=ratings\"", "selector: \"app=ratings,version=v2\"");
    assert_ne!(tightened, labelwall::tools::demo::POLICY);
    std::fs::write(appliance.policy_path(), tightened).unwrap();
    appliance.signal("HUP");
    wait_for_metric(&appliance, r#"labelwall_policy_reloads_total{result="ok"}"#, 1);
    peer.send(0, appliance.listen, &ack);
    let (_, reply) = peer.receive().expect("a reject now");
    assert_ne!(reply, ack);
}

#[test]
fn broken_policy_reload_keeps_the_running_policy() {
    let peer = GwlbPeer::new(1);
    let appliance = bookinfo(&peer, "");
    let syn = gwlb_datagram(21, &tcp(RATINGS, DB, 40009, 3306, 100, None, true));
    assert!(passes(&peer, &appliance, 0, &syn));
    let broken = labelwall::tools::demo::POLICY.replace("to: [rating-database]", "to: [rating-db]");
    std::fs::write(appliance.policy_path(), broken).unwrap();
    appliance.signal("HUP");
    wait_for_metric(&appliance, r#"labelwall_policy_reloads_total{result="error"}"#, 1);
    let m = appliance.metrics();
    assert_eq!(metric(&m, r#"labelwall_policy_reloads_total{result="ok"}"#), 0);
    assert_eq!(metric(&m, "labelwall_policy_generation"), 1);
    assert!(appliance.log().contains("unknown group `rating-db`"), "{}", appliance.log());
    let syn2 = gwlb_datagram(22, &tcp(RATINGS, DB, 40010, 3306, 100, None, true));
    assert!(passes(&peer, &appliance, 0, &syn2), "the old policy still decides");
    let other = gwlb_datagram(23, &tcp(OTHER, INTERNET, 40011, 443, 1, None, true));
    assert!(!passes(&peer, &appliance, 0, &other));
}

#[test]
fn flow_log_records_logged_flows_with_both_identities() {
    let peer = GwlbPeer::new(1);
    let appliance = bookinfo(&peer, "flow_log: {path: flows.jsonl}\n");
    let syn = gwlb_datagram(0x00c0_ffee, &tcp(RATINGS, DB, 40012, 3306, 100, None, true));
    assert!(passes(&peer, &appliance, 0, &syn));
    let path = appliance.dir.path().join("flows.jsonl");
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "no flow-log line");
        std::thread::sleep(Duration::from_millis(50));
    };
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["event"], "start");
    assert_eq!(record["verdict"], "allow");
    assert_eq!(record["rule"], "ratings-to-db");
    assert_eq!(record["src"], "10.0.1.15");
    assert_eq!(record["dst"], "10.20.0.5");
    assert_eq!(record["proto"], "tcp");
    assert_eq!((record["sport"].as_u64(), record["dport"].as_u64()), (Some(40012), Some(3306)));
    assert_eq!(record["flow_cookie"], "00c0ffee");
    assert_eq!(record["gwlb_endpoint_id"], "0a1b2c3d4e5f6071");
    assert_eq!(record["src_identity"]["labels"]["app"], "ratings");
    assert_eq!(record["src_identity"]["namespace"], "bookinfo");
    assert_eq!(record["src_identity"]["name"], "ratings-v1-85c74b6cb4-4d8wx");
    assert_eq!(record["dst_identity"]["kind"], "external");
    assert!(record["time"].as_str().unwrap().ends_with('Z'));
}

/// The first lines of `path` once there are at least `count` of them.
fn wait_for_lines(path: &std::path::Path, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(String::from).collect();
        if lines.len() >= count {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {} lines, not {count}",
            path.display(),
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigusr1_reopens_the_flow_log_after_logrotate_moved_it() {
    let peer = GwlbPeer::new(1);
    let appliance = bookinfo(&peer, "flow_log: {path: flows.jsonl}\n");
    let path = appliance.dir.path().join("flows.jsonl");
    let rotated = appliance.dir.path().join("flows.jsonl.1");
    let syn = |port| {
        gwlb_datagram(0x0100 + u32::from(port), &tcp(RATINGS, DB, port, 3306, 1, None, true))
    };
    assert!(passes(&peer, &appliance, 0, &syn(40_020)));
    wait_for_lines(&path, 1);
    // As logrotate does: rename, then postrotate sends SIGUSR1.
    std::fs::rename(&path, &rotated).unwrap();
    appliance.signal("USR1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !path.exists() {
        assert!(Instant::now() < deadline, "the flow log was not reopened:\n{}", appliance.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(passes(&peer, &appliance, 0, &syn(40_021)), "the appliance still forwards");
    let new = wait_for_lines(&path, 1);
    assert!(new[0].contains("\"sport\":40021"), "{new:?}");
    assert_eq!(std::fs::read_to_string(&rotated).unwrap().lines().count(), 1);
    assert!(appliance.log().contains("flow log reopened"));
}

/// The shipped logrotate file, run by the real logrotate against a running appliance: only
/// the log directory, the user and the way the signal reaches the process (no systemd here)
/// are changed.
#[test]
fn the_shipped_logrotate_file_rotates_the_flow_log_without_losing_records() {
    let peer = GwlbPeer::new(1);
    let appliance = bookinfo(&peer, "flow_log: {path: flows.jsonl}\n");
    let dir = appliance.dir.path();
    let syn = |port| {
        gwlb_datagram(0x0200 + u32::from(port), &tcp(RATINGS, DB, port, 3306, 1, None, true))
    };
    for port in 40_030..40_033 {
        assert!(passes(&peer, &appliance, 0, &syn(port)));
    }
    wait_for_lines(&dir.join("flows.jsonl"), 3);
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/appliance/logrotate/labelwall"
    ))
    .unwrap();
    assert!(shipped.contains("systemctl kill --signal=USR1"));
    assert!(!shipped.lines().any(|line| line.trim() == "copytruncate"), "records would be lost");
    let pid = appliance.pid();
    let config = shipped
        .replace("/var/log/labelwall/", &format!("{}/", dir.display()))
        .replace("su labelwall labelwall", "su root root")
        .replace(
            "systemctl kill --signal=USR1 --kill-whom=main labelwall.service",
            &format!("kill -USR1 {pid}"),
        );
    std::fs::write(dir.join("logrotate.conf"), config).unwrap();
    let status = std::process::Command::new("logrotate")
        .arg("--force")
        .arg("--state")
        .arg(dir.join("logrotate.state"))
        .arg(dir.join("logrotate.conf"))
        .status()
        .expect("logrotate (tests/run.sh installs it)");
    assert!(status.success());
    // The next record goes to a new file at the path; the rotated one holds the first three.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !appliance.log().contains("flow log reopened") {
        assert!(Instant::now() < deadline, "no reopen:\n{}", appliance.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(passes(&peer, &appliance, 0, &syn(40_033)));
    let new = wait_for_lines(&dir.join("flows.jsonl"), 1);
    assert!(new[0].contains("\"sport\":40033"), "{new:?}");
    assert_eq!(std::fs::read_to_string(dir.join("flows.jsonl.1")).unwrap().lines().count(), 3);
}

#[test]
fn the_flow_log_writes_at_most_max_rate_records_a_second_and_counts_the_rest() {
    let peer = GwlbPeer::new(1);
    let appliance = bookinfo(&peer, "flow_log: {path: flows.jsonl, max_rate: 5}\n");
    // 30 new flows of a logged rule within a fraction of a second: 30 start records.
    for port in 41_000..41_030u16 {
        let syn =
            gwlb_datagram(0x0300 + u32::from(port), &tcp(RATINGS, DB, port, 3306, 1, None, true));
        assert!(passes(&peer, &appliance, 0, &syn));
    }
    let sample = r#"labelwall_flow_log_dropped_total{reason="rate_limited"}"#;
    let path = appliance.dir.path().join("flows.jsonl");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (lines, limited) = loop {
        let lines = std::fs::read_to_string(&path).unwrap_or_default().lines().count() as u64;
        let limited = metric(&appliance.metrics(), sample);
        if lines + limited == 30 {
            break (lines, limited);
        }
        assert!(Instant::now() < deadline, "{lines} written, {limited} rate-limited, of 30");
        std::thread::sleep(Duration::from_millis(50));
    };
    // A second's worth at once, then 5 a second: far fewer than 30 however slow the sends.
    assert!(lines >= 5 && limited >= 10, "{lines} written, {limited} rate-limited");
}
