//! The real binary on loopback: a GWLB peer on 127.0.0.2 sends GWLB GENEVE from several
//! source ports and checks every reply byte for byte, including the outer IPv4 + UDP header
//! seen by a raw socket.

mod common;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use socket2::{Domain, Protocol, Socket, Type};

/// Sees every UDP packet on this host with its IPv4 header (root only).
struct OuterCapture {
    socket: Socket,
}

impl OuterCapture {
    fn open() -> OuterCapture {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP)).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        OuterCapture { socket }
    }

    /// Every captured IPv4 packet whose UDP destination port is `port`, for `wait`.
    fn collect(&self, port: u16, wait: Duration) -> Vec<Vec<u8>> {
        let mut packets = Vec::new();
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            let Ok(len) = (&self.socket).read(&mut buf) else { continue };
            let bytes = buf[..len].to_vec();
            let ihl = usize::from(bytes[0] & 0x0f) * 4;
            if bytes.len() >= ihl + 4
                && u16::from_be_bytes([bytes[ihl + 2], bytes[ihl + 3]]) == port
            {
                packets.push(bytes);
            }
        }
        packets
    }
}

#[test]
fn every_packet_kind_comes_back_byte_exact_from_every_source_port() {
    let peer = GwlbPeer::new(4);
    let appliance = Appliance::start(peer.reply_port(), 2, "", &[]);
    let capture = OuterCapture::open();
    let (first_fragment, later_fragment) = ipv4_udp_fragments([10, 0, 1, 10], [10, 20, 0, 5]);
    let inner_packets: Vec<(&str, Vec<u8>)> = vec![
        ("ipv4 tcp syn", ipv4_tcp([10, 0, 1, 10], [10, 20, 0, 5], 40000, 3306, true, false, 0)),
        ("ipv4 tcp data", ipv4_tcp([10, 20, 0, 5], [10, 0, 1, 10], 3306, 40000, false, true, 500)),
        ("ipv4 udp", ipv4_udp([10, 0, 1, 11], [10, 0, 2, 2], 5353, 53, 100)),
        ("ipv6 ext tcp", ipv6_ext_tcp(41000, 443)),
        ("first fragment", first_fragment),
        ("later fragment", later_fragment),
        ("8500-byte", ipv4_tcp([10, 0, 1, 10], [10, 20, 0, 5], 40001, 3306, false, true, 8460)),
    ];
    let mut sent = Vec::new();
    for (i, (name, inner)) in inner_packets.iter().enumerate() {
        for sender in 0..peer.senders.len() {
            let cookie = 0x1000_0000 + (i * 16 + sender) as u32;
            let datagram = gwlb_datagram(cookie, inner);
            let reply = peer.round_trip(sender, appliance.listen, &datagram);
            assert_eq!(reply, datagram, "{name} from sender {sender} came back changed");
            sent.push((peer.source_port(sender), datagram));
        }
    }
    assert_eq!(sent.iter().filter(|(_, d)| d.len() == 40 + 8500).count(), 4);

    // The outer headers of the replies, as they were on the wire.
    let outer = capture.collect(peer.reply_port(), Duration::from_millis(300));
    assert_eq!(outer.len(), sent.len(), "every reply seen by the raw capture");
    for packet in &outer {
        let (ip, rest) = etherparse::Ipv4Header::from_slice(packet).unwrap();
        assert_eq!(ip.source, [127, 0, 0, 1], "from the address GWLB sent to");
        assert_eq!(ip.destination, [127, 0, 0, 2], "to the GWLB node that sent");
        assert_eq!(ip.protocol, etherparse::IpNumber::UDP);
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
        assert!(ip.dont_fragment, "DF set: GWLB does not fragment");
        assert_eq!(ip.time_to_live, 64);
        let (udp, payload) = etherparse::UdpHeader::from_slice(rest).unwrap();
        assert_eq!(udp.destination_port, peer.reply_port());
        assert_eq!(usize::from(udp.length), 8 + payload.len());
        assert!(
            sent.iter().any(|(port, d)| *port == udp.source_port && d == payload),
            "reply with source port {} matches a datagram sent from that port",
            udp.source_port
        );
    }
    let metrics = appliance.metrics();
    assert_eq!(metric(&metrics, r#"labelwall_packets_total{verdict="allow"}"#), sent.len() as u64);
}

#[test]
fn listening_on_every_address_answers_from_the_address_gwlb_sent_to() {
    let peer = GwlbPeer::new(2);
    let appliance = Appliance::start_listening_on(Ipv4Addr::UNSPECIFIED, peer.reply_port());
    let capture = OuterCapture::open();
    let datagram = gwlb_datagram(9, &ipv4_udp([10, 0, 1, 11], [10, 0, 2, 2], 5353, 53, 100));
    // Two appliance addresses, twice each, alternating: one send socket per source address.
    let targets = [[127, 0, 0, 1], [127, 0, 0, 3], [127, 0, 0, 1], [127, 0, 0, 3]];
    for (i, target) in targets.iter().enumerate() {
        let to = SocketAddr::from((*target, appliance.listen.port()));
        peer.send(i % 2, to, &datagram);
        let (from, reply) = peer.receive().expect("a reply from the appliance");
        assert_eq!(from, SocketAddr::from((*target, peer.source_port(i % 2))), "reply {i}");
        assert_eq!(reply, datagram);
    }
    let outer = capture.collect(peer.reply_port(), Duration::from_millis(300));
    let sources: Vec<[u8; 4]> =
        outer.iter().map(|p| etherparse::Ipv4Header::from_slice(p).unwrap().0.source).collect();
    assert_eq!(sources, targets);
}

#[test]
fn malformed_datagrams_get_no_reply_and_are_counted_by_reason() {
    let peer = GwlbPeer::new(1);
    let appliance = Appliance::start(peer.reply_port(), 1, "", &[]);
    let valid = gwlb_datagram(7, &ipv4_udp([10, 0, 0, 1], [10, 0, 0, 2], 1000, 2000, 10));
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut d = valid.clone();
        f(&mut d);
        d
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("geneve_truncated", valid[..6].to_vec()),
        ("geneve_truncated", valid[..30].to_vec()),
        ("geneve_version", with(&|d| d[0] |= 0x40)),
        ("geneve_option_overrun", with(&|d| d[35] = 0x1f)),
        ("geneve_critical_option", {
            let mut d = valid.clone();
            d[0] += 1; // one more option word
            d.splice(40..40, [0x01, 0x02, 0x80, 0x00]);
            d
        }),
        ("geneve_control", with(&|d| d[1] = 0x80)),
        ("geneve_protocol", with(&|d| d[2..4].copy_from_slice(&[0x65, 0x58]))),
        ("gwlb_option_length", with(&|d| d[35] = 0x00)),
        ("gwlb_cookie_missing", with(&|d| d[34] = 0x09)),
        ("inner_truncated", valid[..valid.len() - 3].to_vec()),
        ("inner_length_mismatch", with(&|d| d.push(0))),
        ("inner_version_mismatch", with(&|d| d[2..4].copy_from_slice(&[0x86, 0xdd]))),
        ("inner_header_invalid", with(&|d| d[40] = 0x44)),
        ("oversize", vec![0u8; 9001 - 28 + 1]),
    ];
    for (reason, datagram) in &cases {
        peer.send(0, appliance.listen, datagram);
        // Valid traffic in between keeps flowing.
        let reply = peer.round_trip(0, appliance.listen, &valid);
        assert_eq!(reply, valid, "valid packet after a {reason} datagram");
    }
    assert!(peer.receive().is_none(), "no malformed datagram was answered");
    let metrics = appliance.metrics();
    for (reason, _) in &cases {
        let expected = cases.iter().filter(|(r, _)| r == reason).count() as u64;
        let class = match *reason {
            "oversize" => "oversize",
            r if r.starts_with("inner") => "malformed_inner",
            _ => "malformed_geneve",
        };
        let sample = format!(r#"labelwall_drops_total{{class="{class}",reason="{reason}"}}"#);
        assert_eq!(metric(&metrics, &sample), expected, "{sample}\n{metrics}");
    }
    assert_eq!(metric(&metrics, r#"labelwall_packets_total{verdict="allow"}"#), cases.len() as u64);
}

#[test]
fn admin_serves_many_concurrent_probes() {
    let peer = GwlbPeer::new(1);
    let appliance = Appliance::start(peer.reply_port(), 1, "", &[]);
    let admin = appliance.admin;
    let probes: Vec<_> = (0..32)
        .map(|i| {
            std::thread::spawn(move || {
                let path = ["/readyz", "/healthz", "/metrics"][i % 3];
                http_get(admin, path).map(|(status, _)| status)
            })
        })
        .collect();
    for probe in probes {
        assert_eq!(probe.join().unwrap(), Some(200));
    }
    assert_eq!(http_get(admin, "/nope").map(|(s, _)| s), Some(404));
}

#[test]
fn sigterm_stops_the_appliance_with_exit_code_zero() {
    let peer = GwlbPeer::new(1);
    let mut appliance = Appliance::start(peer.reply_port(), 2, "", &[]);
    let datagram = gwlb_datagram(1, &ipv4_udp([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, 3));
    assert_eq!(peer.round_trip(0, appliance.listen, &datagram), datagram);
    let status = appliance.terminate();
    assert!(status.success(), "exit status {status}\n{}", appliance.log());
    let log = appliance.log();
    assert!(log.contains("labelwall stopped"));
    // stderr is a file here, as it is a pipe under systemd: journald would store colour
    // escapes verbatim.
    assert!(log.contains("INFO") && !log.contains('\x1b'), "no ANSI escapes: {log:?}");
}

#[test]
fn reflect_mode_sends_back_even_what_inspection_would_drop() {
    let peer = GwlbPeer::new(1);
    let appliance = Appliance::start(peer.reply_port(), 1, "", &["--reflect"]);
    let garbage = vec![0xffu8; 100];
    assert_eq!(peer.round_trip(0, appliance.listen, &garbage), garbage);
}

#[test]
fn reply_goes_to_the_node_that_sent_the_packet() {
    // With cross-zone load balancing several GWLB nodes send to one appliance.
    let peer_a = GwlbPeer::new(1);
    let other_node = Ipv4Addr::new(127, 0, 0, 3);
    let reply_b = std::net::UdpSocket::bind((other_node, peer_a.reply_port())).unwrap();
    reply_b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let sender_b = std::net::UdpSocket::bind((other_node, 0)).unwrap();
    let appliance = Appliance::start(peer_a.reply_port(), 1, "", &[]);
    let datagram = gwlb_datagram(9, &ipv4_udp([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, 3));
    sender_b.send_to(&datagram, appliance.listen).unwrap();
    let mut buf = [0u8; 2048];
    let (len, from) = reply_b.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..len], &datagram[..]);
    assert_eq!(from, SocketAddr::from((APPLIANCE_IP, sender_b.local_addr().unwrap().port())));
    assert!(peer_a.receive().is_none(), "node A got nothing");
}

/// The `labelwall_send_*` samples a test looks at: (gso packets, gso calls, raw packets).
fn send_paths(metrics: &str) -> (u64, u64, u64) {
    (
        metric(metrics, r#"labelwall_send_packets_total{path="gso"}"#),
        metric(metrics, r#"labelwall_send_calls_total{path="gso"}"#),
        metric(metrics, r#"labelwall_send_packets_total{path="raw"}"#),
    )
}

/// Receives `count` replies and checks each is `expected[i]` byte for byte, from `port`.
fn expect_replies(peer: &GwlbPeer, port: u16, expected: &[&Vec<u8>]) {
    for (i, want) in expected.iter().enumerate() {
        let (from, reply) = peer.receive().unwrap_or_else(|| panic!("reply {i} missing"));
        assert_eq!(from, SocketAddr::from((APPLIANCE_IP, port)), "reply {i} from GWLB's port");
        assert!(reply == **want, "reply {i} differs from what was sent ({} bytes)", reply.len());
    }
    assert!(peer.receive().is_none(), "nothing more came back");
}

/// 1,500-byte inner TCP packets of one flow (distinct sequence numbers), the last shorter.
fn train(count: usize, dport_of: impl Fn(usize) -> u16) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let payload = if i + 1 == count { 600 } else { 1460 };
            gwlb_datagram(0x77, &ipv4_tcp_seq(dport_of(i), 1000 + 1460 * i as u32, payload))
        })
        .collect()
}

#[test]
fn a_gro_train_comes_back_byte_exact_as_one_segmented_send() {
    let peer = GwlbPeer::new(1);
    let appliance = Appliance::start(peer.reply_port(), 1, "", &[]);
    let capture = OuterCapture::open();
    let datagrams = train(40, |_| 3306);
    assert_eq!(datagrams[0].len(), 1540);
    peer.send_train(0, appliance.listen, &datagrams);
    expect_replies(&peer, peer.source_port(0), &datagrams.iter().collect::<Vec<_>>());
    let metrics = appliance.metrics();
    assert_eq!(metric(&metrics, "labelwall_worker_receive_batches_total{worker=\"0\"}"), 1);
    assert_eq!(send_paths(&metrics), (40, 1, 0), "one segmented send, nothing raw\n{metrics}");
    assert_eq!(metric(&metrics, r#"labelwall_send_socket_events_total{event="opened"}"#), 1);
    assert_eq!(metric(&metrics, "labelwall_send_sockets"), 1);

    // On the wire: from the address GWLB sent to and GWLB's source port, to reply_port.
    let outer = capture.collect(peer.reply_port(), Duration::from_millis(300));
    assert!(!outer.is_empty());
    for packet in &outer {
        let (ip, rest) = etherparse::Ipv4Header::from_slice(packet).unwrap();
        assert_eq!((ip.source, ip.destination), ([127, 0, 0, 1], [127, 0, 0, 2]));
        let (udp, _) = etherparse::UdpHeader::from_slice(rest).unwrap();
        assert_eq!(udp.source_port, peer.source_port(0));
        assert_eq!(udp.destination_port, peer.reply_port());
    }

    // The reflector uses the same path.
    drop(appliance);
    let reflector = Appliance::start(peer.reply_port(), 1, "", &["--reflect"]);
    peer.send_train(0, reflector.listen, &datagrams);
    expect_replies(&peer, peer.source_port(0), &datagrams.iter().collect::<Vec<_>>());
    assert_eq!(send_paths(&reflector.metrics()), (40, 1, 0));
}

#[test]
fn a_denied_datagram_splits_the_train_and_only_permitted_ones_come_back() {
    let policy = "default_action: deny\nrules:\n  - name: db\n    from: [any]\n    to: [any]\n    \
                  ports: [tcp/3306]\n    action: allow\n";
    let peer = GwlbPeer::new(1);
    let appliance = Appliance::start_with(peer.reply_port(), 1, policy, None, "", &[]);
    // Datagrams 4 and 12 go to port 22: denied.
    let datagrams = train(20, |i| if i == 4 || i == 12 { 22 } else { 3306 });
    peer.send_train(0, appliance.listen, &datagrams);
    let permitted: Vec<_> =
        datagrams.iter().enumerate().filter(|(i, _)| *i != 4 && *i != 12).map(|(_, d)| d).collect();
    expect_replies(&peer, peer.source_port(0), &permitted);
    let metrics = appliance.metrics();
    assert_eq!(metric(&metrics, r#"labelwall_packets_total{verdict="deny"}"#), 2);
    // Runs 0-3, 5-11, 13-19: three segmented sends.
    assert_eq!(send_paths(&metrics), (18, 3, 0), "{metrics}");
}

#[test]
fn on_loopback_single_packets_stay_on_the_raw_socket() {
    // The packet socket needs an Ethernet next hop; loopback has none, and the resolver says
    // so once it has asked the kernel. Replies go raw before and after.
    let peer = GwlbPeer::new(1);
    let appliance = Appliance::start(peer.reply_port(), 1, "", &[]);
    let datagram = gwlb_datagram(7, &ipv4_udp([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, 3));
    assert_eq!(peer.round_trip(0, appliance.listen, &datagram), datagram);
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&appliance.metrics(), r#"labelwall_next_hops{path="raw"}"#) != 1 {
        assert!(Instant::now() < deadline, "no next-hop answer:\n{}", appliance.metrics());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(peer.round_trip(0, appliance.listen, &datagram), datagram);
    // The worker publishes its counters just after the reply goes out: wait for them.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut metrics = appliance.metrics();
    while metric(&metrics, r#"labelwall_packets_total{verdict="allow"}"#) < 2 {
        assert!(Instant::now() < deadline, "the second reply is not counted:\n{metrics}");
        std::thread::sleep(Duration::from_millis(20));
        metrics = appliance.metrics();
    }
    assert_eq!(metric(&metrics, r#"labelwall_next_hops{path="packet"}"#), 0, "{metrics}");
    assert_eq!(metric(&metrics, r#"labelwall_send_packets_total{path="packet"}"#), 0);
    assert_eq!(metric(&metrics, r#"labelwall_send_packets_total{path="raw"}"#), 2, "{metrics}");
}

#[test]
fn a_port_the_appliance_cannot_bind_falls_back_to_the_raw_socket() {
    let peer = GwlbPeer::new(1);
    let appliance = Appliance::start(peer.reply_port(), 1, "", &[]);
    // Something on this host already holds (appliance IP, GWLB's source port).
    let holder = std::net::UdpSocket::bind((APPLIANCE_IP, peer.source_port(0))).unwrap();
    let datagrams = train(10, |_| 3306);
    peer.send_train(0, appliance.listen, &datagrams);
    expect_replies(&peer, peer.source_port(0), &datagrams.iter().collect::<Vec<_>>());
    let metrics = appliance.metrics();
    assert_eq!(send_paths(&metrics), (0, 0, 10), "{metrics}");
    assert_eq!(metric(&metrics, r#"labelwall_send_fallbacks_total{reason="no_socket"}"#), 10);
    assert_eq!(metric(&metrics, r#"labelwall_send_socket_events_total{event="open_failed"}"#), 1);
    let mut buf = [0u8; 64];
    holder.set_nonblocking(true).unwrap();
    assert!(holder.recv(&mut buf).is_err(), "the holder's socket got nothing");
}

#[test]
fn a_gwlb_source_port_equal_to_the_listen_port_never_joins_the_listen_sockets() {
    let mut peer = GwlbPeer::new(0);
    let appliance = Appliance::start(peer.reply_port(), 2, "", &[]);
    // GWLB sends from the port the appliance listens on: binding (appliance IP, that port)
    // must fail (the listen sockets hold it) rather than join their SO_REUSEPORT group.
    let port = appliance.listen.port();
    peer.senders.push(std::net::UdpSocket::bind((GWLB_IP, port)).unwrap());
    let datagrams = train(8, |_| 3306);
    for round in 0..3 {
        peer.send_train(0, appliance.listen, &datagrams);
        expect_replies(&peer, port, &datagrams.iter().collect::<Vec<_>>());
        let metrics = appliance.metrics();
        assert_eq!(send_paths(&metrics), (0, 0, 8 * (round + 1)), "{metrics}");
    }
    let metrics = appliance.metrics();
    assert_eq!(metric(&metrics, r#"labelwall_send_fallbacks_total{reason="no_socket"}"#), 24);
    assert_eq!(metric(&metrics, "labelwall_send_sockets"), 0);
}

#[test]
fn a_reject_inside_a_train_comes_back_in_its_place() {
    let policy = "default_action: deny\nrules:\n  - name: db\n    from: [any]\n    to: [any]\n    \
                  ports: [tcp/3306]\n    action: allow\n  - name: no-ssh\n    from: [any]\n    \
                  to: [any]\n    ports: [tcp/22]\n    action: reject\n";
    let peer = GwlbPeer::new(1);
    let appliance = Appliance::start_with(peer.reply_port(), 1, policy, None, "", &[]);
    let datagrams = train(12, |i| if i == 5 { 22 } else { 3306 });
    peer.send_train(0, appliance.listen, &datagrams);
    let port = peer.source_port(0);
    for (i, sent) in datagrams.iter().enumerate() {
        let (from, reply) = peer.receive().unwrap_or_else(|| panic!("reply {i} missing"));
        assert_eq!(from, SocketAddr::from((APPLIANCE_IP, port)));
        if i == 5 {
            // The RST, in the triggering packet's GENEVE header, between the two runs.
            assert!(reply != *sent, "datagram 5 was rejected, not sent back");
            assert_eq!(reply[..40], sent[..40], "same GENEVE header and cookie");
            let inner = etherparse::SlicedPacket::from_ip(&reply[40..]).unwrap();
            match inner.transport {
                Some(etherparse::TransportSlice::Tcp(tcp)) => assert!(tcp.rst()),
                other => panic!("{other:?}"),
            }
        } else {
            assert!(reply == *sent, "reply {i} differs");
        }
    }
    assert!(peer.receive().is_none());
    let metrics = appliance.metrics();
    // Runs 0-4 and 6-11 segmented; the RST raw.
    assert_eq!(send_paths(&metrics), (11, 2, 1), "{metrics}");
}
