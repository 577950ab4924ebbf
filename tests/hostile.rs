//! What an attacker inside an allowed group can try, through the real binary on loopback:
//! each test sends the GWLB GENEVE that got past the policy before it was closed, and checks
//! that nothing of it comes back (the legitimate traffic around it still does).

mod common;

use common::*;

const CLIENT: [u8; 4] = [10, 0, 1, 10];
const DB: [u8; 4] = [10, 20, 0, 5];
const DNS: [u8; 4] = [10, 30, 0, 53];

const POLICY: &str = "\
default_action: deny
groups:
  client: {cidrs: [10.0.1.0/24]}
  db: {cidrs: [10.20.0.0/24]}
  dns: {cidrs: [10.30.0.53/32]}
rules:
  - {name: client-db, from: [client], to: [db], ports: [tcp/5432], action: allow}
  - {name: client-dns, from: [client], to: [dns], ports: [udp/53], action: allow}
  - {name: no-ssh, from: [any], to: [db], ports: [tcp/22], action: reject}
";

fn appliance(peer: &GwlbPeer, extra: &str) -> Appliance {
    Appliance::start_with(peer.reply_port(), 1, POLICY, None, extra, &[])
}

/// Sends one datagram and says whether it came back unchanged (anything else is a failure).
fn passes(peer: &GwlbPeer, appliance: &Appliance, datagram: &[u8]) -> bool {
    peer.send(0, appliance.listen, datagram);
    match peer.receive() {
        Some((_, reply)) => {
            assert_eq!(reply, datagram, "a reply is the packet itself or nothing");
            true
        }
        None => false,
    }
}

#[test]
fn a_server_cannot_open_a_connection_to_its_client() {
    let peer = GwlbPeer::new(1);
    let appliance = appliance(&peer, "");
    // db answers from 5432 with an ACK: taken for a reply of client -> db:5432 (mid-flow).
    let ack = gwlb_datagram(1, &ipv4_tcp(DB, CLIENT, 5432, 40_000, false, true, 10));
    assert!(passes(&peer, &appliance, &ack));
    // Then a SYN on the same 5-tuple: db connecting to the client's port.
    let syn = gwlb_datagram(1, &ipv4_tcp(DB, CLIENT, 5432, 40_000, true, false, 0));
    assert!(!passes(&peer, &appliance, &syn), "db's SYN to a client port got through");
    // The flow it tried to turn around still works.
    let data = gwlb_datagram(1, &ipv4_tcp(CLIENT, DB, 40_000, 5432, false, true, 10));
    assert!(passes(&peer, &appliance, &data));
}

#[test]
fn udp_from_a_service_port_needs_the_query_first() {
    let peer = GwlbPeer::new(1);
    let appliance = appliance(&peer, "");
    let unasked = gwlb_datagram(2, &ipv4_udp(DNS, CLIENT, 53, 41_000, 20));
    assert!(!passes(&peer, &appliance, &unasked), "dns sent to a client port unasked");
    let query = gwlb_datagram(3, &ipv4_udp(CLIENT, DNS, 41_001, 53, 20));
    let answer = gwlb_datagram(3, &ipv4_udp(DNS, CLIENT, 53, 41_001, 60));
    assert!(passes(&peer, &appliance, &query));
    assert!(passes(&peer, &appliance, &answer));
}

/// `tcp_bytes` of a TCP segment's header (and what follows) as an IPv4 fragment at `offset`
/// (8-byte units) of datagram 0x7777.
fn tcp_fragment(
    segment: &[u8],
    offset: u16,
    more: bool,
    tcp_bytes: std::ops::Range<usize>,
) -> Vec<u8> {
    let data = &segment[20 + tcp_bytes.start..20 + tcp_bytes.end];
    let mut header = etherparse::Ipv4Header::new(
        data.len() as u16,
        64,
        etherparse::IpNumber::TCP,
        segment[12..16].try_into().unwrap(),
        segment[16..20].try_into().unwrap(),
    )
    .unwrap();
    header.identification = 0x7777;
    header.more_fragments = more;
    header.fragment_offset = etherparse::IpFragOffset::try_new(offset).unwrap();
    header.header_checksum = header.calc_header_checksum();
    [&header.to_bytes()[..], data].concat()
}

fn drops(appliance: &Appliance, reason: &str) -> u64 {
    let metrics = appliance.metrics();
    let label = format!("reason=\"{reason}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("labelwall_drops_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn tcp_fragments_that_hide_their_header_are_dropped() {
    let peer = GwlbPeer::new(1);
    let appliance = appliance(&peer, "");
    // From db's 5432 to a client: 8 bytes of TCP in the first fragment (no flags to see), the
    // rest, SYN included, in a fragment at offset 8 bytes (RFC 1858, RFC 3128).
    let syn = ipv4_tcp(DB, CLIENT, 5432, 40_100, true, false, 16);
    let first = gwlb_datagram(4, &tcp_fragment(&syn, 0, true, 0..8));
    let rest = gwlb_datagram(4, &tcp_fragment(&syn, 1, false, 8..36));
    assert!(!passes(&peer, &appliance, &first), "a first fragment without TCP flags passed");
    assert!(!passes(&peer, &appliance, &rest), "the fragment at offset 8 passed");
    assert_eq!(drops(&appliance, "tiny_fragment"), 2);
    // A client's fragmented segment that holds its whole header in the first fragment passes.
    let data = ipv4_tcp(CLIENT, DB, 40_101, 5432, false, true, 40);
    let first = gwlb_datagram(5, &tcp_fragment(&data, 0, true, 0..24));
    let rest = gwlb_datagram(5, &tcp_fragment(&data, 3, false, 24..60));
    assert!(passes(&peer, &appliance, &first));
    assert!(passes(&peer, &appliance, &rest));
}

fn single(appliance: &Appliance, name: &str) -> u64 {
    metric(&appliance.metrics(), name)
}

#[test]
fn rejects_never_answer_group_or_forged_sources_and_stop_at_the_limit() {
    let peer = GwlbPeer::new(1);
    let appliance = appliance(&peer, "dataplane.reject_limit: 5\n");
    // A SYN "from" a multicast, broadcast, unspecified or loopback address gets no RST.
    for (n, src) in
        [[224, 0, 0, 9], [255, 255, 255, 255], [0, 0, 0, 0], [127, 0, 0, 1]].into_iter().enumerate()
    {
        let syn = gwlb_datagram(10 + n as u32, &ipv4_tcp(src, DB, 40_200, 22, true, false, 0));
        peer.send(0, appliance.listen, &syn);
        assert!(peer.receive().is_none(), "a RST toward {src:?}");
    }
    assert_eq!(single(&appliance, "labelwall_rejects_suppressed_total"), 0);
    // A flood of rejected SYNs: 5 RSTs (one second's worth), the rest withheld and counted.
    for n in 0..20u16 {
        let syn = gwlb_datagram(
            100 + u32::from(n),
            &ipv4_tcp(CLIENT, DB, 41_000 + n, 22, true, false, 0),
        );
        peer.send(0, appliance.listen, &syn);
    }
    let mut rsts = 0;
    while peer.receive().is_some() {
        rsts += 1;
    }
    assert!((5..=6).contains(&rsts), "{rsts} RSTs for 20 rejected SYNs with reject_limit 5");
    assert_eq!(single(&appliance, "labelwall_rejects_suppressed_total"), 20 - rsts);
}

#[test]
fn geneve_from_outside_the_allowed_peers_is_dropped_and_counted() {
    let peer = GwlbPeer::new(1);
    // The peer sends from 127.0.0.2: outside 10.99.0.0/24.
    let appliance = appliance(&peer, "dataplane.allowed_peers: [10.99.0.0/24]\n");
    let query = gwlb_datagram(20, &ipv4_udp(CLIENT, DNS, 42_000, 53, 20));
    assert!(!passes(&peer, &appliance, &query), "GENEVE from a stranger was answered");
    assert_eq!(drops(&appliance, "peer_not_allowed"), 1);
    let allowed = Appliance::start_with(
        peer.reply_port(),
        1,
        POLICY,
        None,
        "dataplane.allowed_peers: [127.0.0.0/30]\n",
        &[],
    );
    assert!(passes(&peer, &allowed, &query));
}

/// A worker that panics takes the process down with a non-zero status (systemd restarts it)
/// instead of leaving an appliance that answers /readyz but forwards nothing.
#[cfg(feature = "test-hooks")]
#[test]
fn a_panicking_worker_ends_the_process_with_a_failure_status() {
    let peer = GwlbPeer::new(1);
    let mut appliance = Appliance::start_wrapped(
        APPLIANCE_IP,
        peer.reply_port(),
        2,
        POLICY,
        None,
        "",
        &[],
        &[],
        &[("LABELWALL_TEST_PANIC_AFTER", "1")],
    );
    let query = gwlb_datagram(30, &ipv4_udp(CLIENT, DNS, 43_000, 53, 20));
    // Sent again until the process ends: one datagram on a loopback that other tests flood
    // may be lost before a worker sees it.
    let mut status = None;
    for _ in 0..50 {
        peer.send(0, appliance.listen, &query);
        status = appliance.wait_exit(std::time::Duration::from_millis(200));
        if status.is_some() {
            break;
        }
    }
    let log = appliance.log();
    assert_eq!(status.and_then(|s| s.code()), Some(labelwall::cli::PANIC_EXIT_STATUS), "{log}");
    assert!(
        log.contains("test hook: a worker panics") && log.contains("stopping the appliance"),
        "{log}"
    );
}

/// An ICMPv4 "fragmentation needed" from `router` to `to`, quoting the first 28 bytes of
/// `segment` (an IPv4 packet).
fn frag_needed(router: [u8; 4], to: [u8; 4], segment: &[u8]) -> Vec<u8> {
    let mut error = Vec::new();
    etherparse::PacketBuilder::ipv4(router, to, 64)
        .icmpv4_raw(3, 4, [0, 0, 0x05, 0x78])
        .write(&mut error, &segment[..28])
        .unwrap();
    error
}

#[test]
fn icmp_errors_of_an_allowed_flow_pass_without_an_icmp_rule() {
    let peer = GwlbPeer::new(1);
    let appliance = appliance(&peer, "");
    const ROUTER: [u8; 4] = [10, 99, 0, 1];
    let segment = ipv4_tcp(CLIENT, DB, 40_300, 5432, false, true, 1400);
    assert!(passes(&peer, &appliance, &gwlb_datagram(40, &segment)));
    // Path-MTU discovery: a router tells the client its segment was too big.
    let error = gwlb_datagram(40, &frag_needed(ROUTER, CLIENT, &segment));
    assert!(passes(&peer, &appliance, &error), "the flow's ICMP error was dropped");
    // The same error about a flow never seen, or sent to the other end, is judged by policy.
    let unknown = ipv4_tcp(CLIENT, DB, 40_301, 5432, false, true, 1400);
    assert!(!passes(&peer, &appliance, &gwlb_datagram(41, &frag_needed(ROUTER, CLIENT, &unknown))));
    assert!(!passes(&peer, &appliance, &gwlb_datagram(40, &frag_needed(ROUTER, DB, &segment))));
}

/// TCP Fast Open: a client puts its first bytes in the SYN, which must pass for the handshake
/// and must not carry those bytes to a server before the flow's name is judged (SPEC.md:
/// nothing the client sends reaches the server before the verdict).
#[test]
fn data_in_a_syn_never_reaches_the_server_before_its_name_is_judged() {
    const NAMED: &str = "\
default_action: deny
groups:
  client: {cidrs: [10.0.1.0/24]}
  allowed: {domains: [www.example.com]}
  internet: {cidrs: [203.0.113.0/24]}
rules:
  - {name: allowed, from: [client], to: [allowed], ports: [tcp/443], action: allow}
  - {name: others, from: [client], to: [internet], ports: [tcp/443], action: reject}
";
    let hello = |capture: &str| -> Vec<u8> {
        let capture = labelwall::names::fuzzing::client_capture(capture);
        capture.segments.iter().flat_map(|s| s.payload.clone()).collect()
    };
    let syn_with = |sport: u16, payload: &[u8]| {
        let builder = etherparse::PacketBuilder::ipv4(CLIENT, [203, 0, 113, 7], 64)
            .tcp(sport, 443, 1000, 65535)
            .syn();
        let mut inner = Vec::new();
        builder.write(&mut inner, payload).unwrap();
        gwlb_datagram(u32::from(sport), &inner)
    };
    let peer = GwlbPeer::new(1);
    let appliance = Appliance::start_with(peer.reply_port(), 1, NAMED, None, "", &[]);
    let www = hello("openssl_tls13_sni"); // www.example.com
    let other = hello("openssl_records"); // records.example.net

    // The whole ClientHello of an allowed name: the SYN goes on with it.
    let allowed = syn_with(41_000, &www);
    assert!(passes(&peer, &appliance, &allowed), "{}", appliance.log());

    // A refused name: the SYN is answered by RSTs and never sent on.
    let refused = syn_with(41_001, &other);
    peer.send(0, appliance.listen, &refused);
    let mut rsts = 0;
    while let Some((_, reply)) = peer.receive() {
        assert_ne!(reply, refused, "the SYN with a refused name's ClientHello went on");
        let inner = labelwall::pipeline::decode(&reply).unwrap().inner;
        assert!(inner.transport.tcp_flags() & labelwall::packet::tcp_flags::RST != 0);
        rsts += 1;
    }
    assert!(rsts >= 1, "the client is told at once");

    // Half a ClientHello: the name cannot be read yet, so the SYN (and its bytes) stop here.
    let half = syn_with(41_002, &www[..www.len() / 2]);
    assert!(!passes(&peer, &appliance, &half), "a SYN with unjudged data went on");
    // The client's retry without data passes: the flow waits for its name as any other.
    assert!(passes(&peer, &appliance, &syn_with(41_002, &[])), "{}", appliance.log());
}
