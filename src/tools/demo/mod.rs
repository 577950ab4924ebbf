//! `labelwall demo`: the bookinfo scenario end to end on loopback. An appliance (the real
//! control plane and data plane, one worker) runs on 127.0.0.1 with the embedded inventory and
//! policy; a simulated GWLB on 127.0.0.2 plays each flow as real GWLB GENEVE, handshake
//! packets both ways, from its own source port with its own flow cookie, and records what
//! comes back. Named egress flows then send a real TLS ClientHello (made by rustls for the
//! flow's server name), which the appliance holds, reads and judges by name. Prints a table
//! and the key counters; fails unless every flow got the verdict it should.
//! Without CAP_NET_RAW it runs in a user and network namespace of its own (`net/namespace.rs`).
//! Must not depend on: anything private of the product (it uses the control plane, data plane
//! and pipeline as `labelwall run` does); nothing of the product depends on it.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use etherparse::PacketBuilder;

use crate::config::Config;
use crate::control::ControlPlane;
use crate::dataplane::{ControlLinks, Dataplane, DataplaneSettings};
use crate::explain::{FlowQuestion, explain_with_name};
use crate::packet::{Transport, ip_proto, tcp_flags};
use crate::pipeline::{Mode, NameResult, decode};
use crate::policy::Action;
use crate::wire::GwlbOptions;

/// The embedded label source.
pub const INVENTORY: &str = include_str!("inventory.yaml");
/// The embedded policy.
pub const POLICY: &str = include_str!("policy.yaml");

const APPLIANCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const GWLB: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const REPLY_WAIT: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp,
    Udp,
}

/// One flow of the scenario.
struct DemoFlow {
    label: &'static str,
    client: &'static str,
    server: &'static str,
    kind: Kind,
    port: u16,
    expected: Action,
    /// Play from the server's side first: a flow picked up mid-stream (no SYN seen).
    mid_flow: bool,
    /// After the handshake, the client sends a TLS ClientHello asking for this name.
    server_name: Option<&'static str>,
}

const FLOWS: &[DemoFlow] = &[
    DemoFlow {
        label: "ratings -> rating-database",
        client: "10.0.1.15",
        server: "10.20.0.5",
        kind: Kind::Tcp,
        port: 3306,
        expected: Action::Allow,
        mid_flow: false,
        server_name: None,
    },
    DemoFlow {
        label: "ratings (2nd pod) -> rating-database",
        client: "10.0.1.16",
        server: "10.20.0.5",
        kind: Kind::Tcp,
        port: 3306,
        expected: Action::Allow,
        mid_flow: false,
        server_name: None,
    },
    DemoFlow {
        label: "other -> rating-database",
        client: "10.0.1.20",
        server: "10.20.0.5",
        kind: Kind::Tcp,
        port: 3306,
        expected: Action::Reject,
        mid_flow: false,
        server_name: None,
    },
    DemoFlow {
        label: "other -> rating-database (udp)",
        client: "10.0.1.20",
        server: "10.20.0.5",
        kind: Kind::Udp,
        port: 3306,
        expected: Action::Reject,
        mid_flow: false,
        server_name: None,
    },
    DemoFlow {
        label: "details -> rating-database",
        client: "10.0.1.11",
        server: "10.20.0.5",
        kind: Kind::Tcp,
        port: 3306,
        expected: Action::Reject,
        mid_flow: false,
        server_name: None,
    },
    DemoFlow {
        label: "ratings -> rating-database ssh",
        client: "10.0.1.15",
        server: "10.20.0.5",
        kind: Kind::Tcp,
        port: 22,
        expected: Action::Reject,
        mid_flow: false,
        server_name: None,
    },
    DemoFlow {
        label: "productpage -> details",
        client: "10.0.1.10",
        server: "10.0.1.11",
        kind: Kind::Tcp,
        port: 9080,
        expected: Action::Allow,
        mid_flow: false,
        server_name: None,
    },
    DemoFlow {
        label: "reviews-v2 -> ratings",
        client: "10.0.1.13",
        server: "10.0.1.15",
        kind: Kind::Tcp,
        port: 9080,
        expected: Action::Audit,
        mid_flow: false,
        server_name: None,
    },
    DemoFlow {
        label: "productpage -> api.stripe.com",
        client: "10.0.1.10",
        server: "203.0.113.10",
        kind: Kind::Tcp,
        port: 443,
        expected: Action::Allow,
        mid_flow: false,
        server_name: Some("api.stripe.com"),
    },
    DemoFlow {
        label: "productpage -> api.stripe.com (IPv6)",
        client: "fd00:1::10",
        server: "2001:db8::10",
        kind: Kind::Tcp,
        port: 443,
        expected: Action::Allow,
        mid_flow: false,
        server_name: Some("api.stripe.com"),
    },
    DemoFlow {
        label: "productpage -> www.example.com (same address)",
        client: "10.0.1.10",
        server: "203.0.113.10",
        kind: Kind::Tcp,
        port: 443,
        expected: Action::Reject,
        mid_flow: false,
        server_name: Some("www.example.com"),
    },
    DemoFlow {
        label: "other -> internet",
        client: "10.0.1.20",
        server: "203.0.113.10",
        kind: Kind::Tcp,
        port: 443,
        expected: Action::Deny,
        mid_flow: false,
        server_name: None,
    },
    DemoFlow {
        label: "ratings -> rating-database (mid-flow)",
        client: "10.0.1.15",
        server: "10.20.0.5",
        kind: Kind::Tcp,
        port: 3306,
        expected: Action::Allow,
        mid_flow: true,
        server_name: None,
    },
];

/// What GWLB got back for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Same,
    Rejected,
    Nothing,
    Other,
}

struct FlowResult {
    verdict: &'static str,
    rule: String,
    src: String,
    dst: String,
    sent: usize,
    back: usize,
    rejects: usize,
    ok: bool,
}

/// Runs the demo; `Err` when a flow got another verdict than expected.
pub fn run() -> anyhow::Result<()> {
    if crate::net::namespace::raw_sockets_or_private_namespaces()? {
        println!(
            "labelwall demo: no CAP_NET_RAW here, so running in a user and network namespace \
             of its own (loopback only; nothing outside changes)"
        );
    }
    let dir = std::env::temp_dir().join(format!("labelwall-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = run_in(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::write(dir.join("inventory.yaml"), INVENTORY)?;
    std::fs::write(dir.join("policy.yaml"), POLICY)?;
    let reply =
        UdpSocket::bind((GWLB, 0)).context("cannot bind the simulated GWLB on 127.0.0.2")?;
    reply.set_read_timeout(Some(REPLY_WAIT))?;
    let listen_port = UdpSocket::bind((APPLIANCE, 0))?.local_addr()?.port();
    let config_path = dir.join("labelwall.yaml");
    let config_text = format!(
        "dataplane:\n  listen: {APPLIANCE}:{listen_port}\n  workers: 1\n  reply_port: {}\n\
         policy: policy.yaml\nlabels:\n  inventory: [inventory.yaml]\n",
        reply.local_addr()?.port()
    );
    let config = Config::parse(&config_path, &config_text)?;
    let control = ControlPlane::start(&config, 1, None)?;
    let state = control.state();
    let settings = DataplaneSettings::new(&config, 1, Mode::Inspect);
    let links = ControlLinks { snapshots: Some(Arc::clone(&state.snapshots)), flow_log: None };
    let dataplane = Dataplane::start(&settings, &links)?;
    while !dataplane.status().iter().all(|w| w.is_running()) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let target = SocketAddr::from((APPLIANCE, listen_port));

    println!("labelwall demo: bookinfo on loopback (appliance {target}, simulated GWLB {GWLB})\n");
    let mut results = Vec::with_capacity(FLOWS.len());
    for (i, flow) in FLOWS.iter().enumerate() {
        results.push(play(flow, 0x5eed_0000 + i as u32, target, &reply, &state.snapshot())?);
    }
    let totals = dataplane.shutdown();
    let snapshot = state.snapshot();

    let mut rows = vec![
        ["FLOW", "SOURCE", "DESTINATION", "VERDICT", "RULE", "BACK", "RESULT"].map(String::from),
    ];
    for (flow, r) in FLOWS.iter().zip(&results) {
        let proto = if flow.kind == Kind::Tcp { "tcp" } else { "udp" };
        let back = if r.rejects > 0 {
            let what = if flow.kind == Kind::Tcp { "rst" } else { "icmp" };
            format!("{}/{} +{} {what}", r.back, r.sent, r.rejects)
        } else {
            format!("{}/{}", r.back, r.sent)
        };
        rows.push([
            format!("{} {proto}/{}", flow.label, flow.port),
            r.src.clone(),
            r.dst.clone(),
            r.verdict.to_string(),
            r.rule.clone(),
            back,
            if r.ok { "ok".to_string() } else { format!("EXPECTED {}", flow.expected.as_str()) },
        ]);
    }
    let table = aligned(&rows, BACK_COLUMN);
    print!("{table}");
    println!("\ncounters:");
    for action in Action::ALL {
        println!(
            "  labelwall_packets_total{{verdict=\"{}\"}} {}",
            action.as_str(),
            totals.verdict_packets(action)
        );
    }
    println!("  labelwall_drops_total {}", totals.total_drops());
    println!("  labelwall_flows_created_total {}", totals.flows_created());
    for result in [NameResult::Found, NameResult::None] {
        println!(
            "  labelwall_server_names_total{{result=\"{}\"}} {}",
            result.label(),
            totals.server_names(result)
        );
    }
    for (i, rule) in snapshot.policy.rules.iter().enumerate() {
        println!(
            "  labelwall_rule_hits_total{{rule=\"{}\"}} {}",
            rule.name,
            snapshot.rule_hits.total(Some(i))
        );
    }
    println!("  labelwall_rule_hits_total{{rule=\"default\"}} {}", snapshot.rule_hits.total(None));
    let failed = results.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        bail!("{failed} of {} flows did not get the expected verdict", results.len());
    }
    println!("\nall {} flows got the expected verdict", results.len());
    Ok(())
}

/// The column of the demo's table that is right-aligned (counts).
const BACK_COLUMN: usize = 5;

/// The rows as a table whose columns are as wide as their widest cell (so that long flow or
/// pod names never push a row out of line), one space apart, `right` aligned to the right,
/// the last column unpadded.
fn aligned<const N: usize>(rows: &[[String; N]], right: usize) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut table = String::new();
    for row in rows {
        let mut line = String::new();
        for (column, (cell, width)) in row.iter().zip(widths).enumerate() {
            let pad = width - cell.chars().count();
            match column {
                c if c + 1 == N => line.push_str(cell),
                c if c == right => {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                    line.push_str("  ");
                }
                _ => {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad + 1));
                }
            }
        }
        let _ = writeln!(table, "{}", line.trim_end());
    }
    table
}

/// Plays one flow: client first packet, then (if it came back) the server's answer and the
/// client's ACK; stops as soon as a packet is not sent back, as a real peer would never see it.
fn play(
    flow: &DemoFlow,
    cookie: u32,
    target: SocketAddr,
    reply: &UdpSocket,
    snapshot: &crate::snapshot::Snapshot,
) -> anyhow::Result<FlowResult> {
    let client: IpAddr = flow.client.parse()?;
    let server: IpAddr = flow.server.parse()?;
    let client_port = 40_000 + (cookie & 0xfff) as u16;
    let sender = UdpSocket::bind((GWLB, 0))?;
    let (ack, push_ack) = (tcp_flags::ACK, tcp_flags::PSH | tcp_flags::ACK);
    let to_server = |seq, ack, flags, payload: &[u8]| {
        tcp(client, server, client_port, flow.port, (seq, ack), flags, payload)
    };
    let to_client = |seq, ack, flags, payload: &[u8]| {
        tcp(server, client, flow.port, client_port, (seq, ack), flags, payload)
    };
    let mut packets: Vec<Vec<u8>> = match (flow.kind, flow.mid_flow) {
        (Kind::Tcp, false) => vec![
            to_server(1000, 0, tcp_flags::SYN, b""),
            to_client(5000, 1001, tcp_flags::SYN | ack, b""),
            to_server(1001, 5001, ack, b""),
        ],
        (Kind::Tcp, true) => {
            vec![to_client(5000, 1001, push_ack, b"SELECT 1"), to_server(1001, 5010, ack, b"")]
        }
        (Kind::Udp, _) => vec![
            udp(client, server, client_port, flow.port),
            udp(server, client, flow.port, client_port),
        ],
    };
    if let Some(name) = flow.server_name {
        packets.push(to_server(1001, 5001, push_ack, &client_hello(name)?));
    }
    let question = FlowQuestion {
        src: client,
        dst: server,
        protocol: if flow.kind == Kind::Tcp { ip_proto::TCP } else { ip_proto::UDP },
        sport: client_port,
        dport: flow.port,
    };
    let answer = explain_with_name(snapshot, &question, flow.server_name, None);
    let (mut sent, mut back, mut rejects, mut other) = (0, 0, 0, 0);
    for inner in packets.drain(..) {
        let datagram = gwlb_datagram(cookie, &inner);
        sender.send_to(&datagram, target)?;
        sent += 1;
        match receive(reply, &datagram) {
            Reply::Same => back += 1,
            Reply::Rejected => {
                // A flow refused once its name is read gets a RST each way: take them all.
                rejects += 1;
                while receive(reply, &datagram) == Reply::Rejected {
                    rejects += 1;
                }
                break;
            }
            Reply::Nothing => break,
            Reply::Other => {
                other += 1;
                break;
            }
        }
    }
    // A reject answers the packet that was refused (the first, or the ClientHello of a flow
    // judged by name: then the server gets a RST too) and nothing of it comes back.
    let expected_rejects = if flow.server_name.is_some() { 2 } else { 1 };
    let wire_ok = match flow.expected {
        Action::Allow | Action::Audit => back == sent && rejects == 0,
        Action::Reject => rejects == expected_rejects && back + 1 == sent,
        Action::Deny => back == 0 && rejects == 0,
    };
    let ok = wire_ok && other == 0 && answer.verdict == flow.expected.as_str();
    let who = |e: &crate::explain::EndpointReport| match &e.identity {
        Some(i) if i.namespace.is_empty() => format!("{} {}", i.kind, i.name),
        Some(i) => format!("{} {}/{}", i.kind, i.namespace, i.name),
        None => format!("{} (unknown)", e.ip),
    };
    Ok(FlowResult {
        verdict: answer.verdict,
        rule: answer.rule.clone(),
        src: who(&answer.src),
        dst: who(&answer.dst),
        sent,
        back,
        rejects,
        ok,
    })
}

fn receive(reply: &UdpSocket, sent: &[u8]) -> Reply {
    let mut buf = [0u8; 2048];
    let Ok((len, _)) = reply.recv_from(&mut buf) else { return Reply::Nothing };
    let got = &buf[..len];
    if got == sent {
        return Reply::Same;
    }
    let Ok(packet) = decode(got) else { return Reply::Other };
    match packet.inner.transport {
        Transport::Tcp { flags, .. } if flags & tcp_flags::RST != 0 => Reply::Rejected,
        Transport::Icmp { icmp_type: 3, code: 13, .. }
        | Transport::Icmp { icmp_type: 1, code: 1, .. } => Reply::Rejected,
        _ => Reply::Other,
    }
}

fn gwlb_datagram(cookie: u32, inner: &[u8]) -> Vec<u8> {
    let gwlb = GwlbOptions {
        endpoint_id: Some(0x0d3e_0000_0000_0001),
        attachment_id: Some(0x0a77_0000_0000_0001),
        flow_cookie: cookie,
    };
    crate::wire::geneve::encapsulate(inner, &gwlb)
}

fn ip_step(src: IpAddr, dst: IpAddr) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        _ => unreachable!("demo flows never mix families"),
    }
}

fn tcp(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    (seq, ack): (u32, u32),
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut step = ip_step(src, dst).tcp(sport, dport, seq, 64_240);
    if flags & tcp_flags::SYN != 0 {
        step = step.syn();
    }
    if flags & tcp_flags::ACK != 0 {
        step = step.ack(ack);
    }
    if flags & tcp_flags::PSH != 0 {
        step = step.psh();
    }
    let mut out = Vec::with_capacity(step.size(payload.len()));
    step.write(&mut out, payload).expect("writing to a Vec");
    out
}

/// The first flight of a real TLS client (rustls) connecting to `name`: its ClientHello.
fn client_hello(name: &'static str) -> anyhow::Result<Vec<u8>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let server = rustls::pki_types::ServerName::try_from(name)?;
    let mut client = rustls::ClientConnection::new(Arc::new(config), server)?;
    let mut hello = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut hello)?;
    }
    Ok(hello)
}

fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    let step = ip_step(src, dst).udp(sport, dport);
    let payload = b"labelwall demo";
    let mut out = Vec::with_capacity(step.size(payload.len()));
    step.write(&mut out, payload).expect("writing to a Vec");
    out
}

/// Where the embedded files would go with `--write-config`.
pub fn write_config(dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let files = [("inventory.yaml", INVENTORY), ("policy.yaml", POLICY)];
    let mut written = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_column_starts_at_the_same_place_whatever_the_names() {
        let row = |cells: [&str; 4]| cells.map(String::from);
        let rows = [
            row(["FLOW", "SOURCE", "BACK", "RESULT"]),
            row(["productpage -> a-rather-long-external-service-name tcp/443", "x", "3/3", "ok"]),
            row(["r", "a-very-long-pod-name-7d9f8b6c4d-x2x9z (prod/default)", "12/12", "ok"]),
        ];
        let table = aligned(&rows, 2);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        // SOURCE, the right-aligned BACK's end, and RESULT line up on every line.
        let source_at = lines[0].find("SOURCE").unwrap();
        assert_eq!(lines[1].find(" x ").unwrap() + 1, source_at);
        assert_eq!(lines[2].find("a-very").unwrap(), source_at);
        let result_at = lines[0].find("RESULT").unwrap();
        for line in &lines[1..] {
            assert_eq!(line.rfind("ok").unwrap(), result_at, "{table}");
            assert_eq!(&line[result_at - 2..result_at], "  ");
        }
        assert_eq!(lines[1][..result_at - 2].trim_end().len(), result_at - 2, "BACK ends flush");
        assert!(lines[2][..result_at].trim_end().ends_with("12/12"));
    }
}
