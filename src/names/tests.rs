//! Tests of the server-name readers: real clients' bytes (tests/fixtures/names, captured by
//! its capture.sh), hand-made malformed messages, and every split and order of the fixtures.

use super::fuzzing::{Capture, Segment, seal_initial, seal_initial_with};
use super::quic::{InitialSecrets, decode_packet_number};
use super::*;

// ---------------------------------------------------------------------------------------
// Fixtures: pcaps of real clients, read back into the client's segments or datagrams.

fn fixture(name: &str) -> Capture {
    fuzzing::client_capture(name)
}

/// Feeds segments in the given order; returns the reading after each one that advanced
/// the stream, and the stream.
fn reassemble(segments: &[Segment], max_bytes: usize) -> (Reading, Vec<u8>) {
    let mut buf = vec![0; max_bytes];
    let mut tcp = TcpReassembly::new();
    let mut reading = Reading::NeedMore;
    for s in segments {
        if tcp.segment(&mut buf, s.seq, s.syn, &s.payload) == Insert::Advanced {
            reading = read_stream(tcp.bytes(&buf), max_bytes);
        }
    }
    (reading, tcp.bytes(&buf).to_vec())
}

fn found(name: &str) -> Reading {
    Reading::Found(ServerName::parse(name.as_bytes()).unwrap())
}

/// Small deterministic generator for orders and cuts.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

const BUDGET: usize = 16_384;

// ---------------------------------------------------------------------------------------
// ServerName

#[test]
fn names_are_lowercased_and_lose_one_trailing_dot() {
    assert_eq!(ServerName::parse(b"WWW.Example.COM.").unwrap().as_str(), "www.example.com");
    assert_eq!("api.stripe.com".parse::<ServerName>().unwrap().to_string(), "api.stripe.com");
    assert_eq!(
        ServerName::parse(b"_dmarc.xn--bcher-kva.example").unwrap().as_str(),
        "_dmarc.xn--bcher-kva.example"
    );
    assert_eq!(ServerName::parse(b"localhost").unwrap().as_str(), "localhost");
}

#[test]
fn names_at_the_length_limits_are_accepted_and_one_more_is_not() {
    let label = "a".repeat(63);
    assert!(ServerName::parse(format!("{label}.com").as_bytes()).is_ok());
    assert_eq!(ServerName::parse(format!("a{label}.com").as_bytes()), Err(NameError::LabelTooLong));
    // 4 labels of 63 and the dots: 255; trimmed to exactly 253 and 254.
    let long = [label.as_str(); 4].join(".");
    assert_eq!(ServerName::parse(&long.as_bytes()[..253]).unwrap().as_str().len(), 253);
    assert_eq!(
        ServerName::parse(format!("{}.", &long[..253]).as_bytes()).unwrap().as_str().len(),
        253
    );
    assert_eq!(ServerName::parse(&long.as_bytes()[..254]), Err(NameError::TooLong));
}

#[test]
fn ip_literals_and_invalid_hosts_are_not_names() {
    let cases: [(&[u8], NameError); 14] = [
        (b"", NameError::Empty),
        (b".", NameError::Empty),
        (b"a..b", NameError::EmptyLabel),
        (b".a", NameError::EmptyLabel),
        (b"a.b..", NameError::EmptyLabel),
        (b"10.0.0.1", NameError::IpLiteral),
        (b"10.0.0.1.", NameError::IpLiteral),
        (b"0x7f.1", NameError::IpLiteral),
        (b"example.0x1F", NameError::IpLiteral),
        (b"2130706433", NameError::IpLiteral),
        (b"::1", NameError::BadCharacter(b':')),
        (b"[::1]", NameError::BadCharacter(b'[')),
        (b"host:443", NameError::BadCharacter(b':')),
        (b"caf\xc3\xa9.example", NameError::BadCharacter(0xc3)),
    ];
    for (raw, error) in cases {
        assert_eq!(ServerName::parse(raw), Err(error), "{:?}", String::from_utf8_lossy(raw));
    }
    assert_eq!(ServerName::parse(b"a b.com"), Err(NameError::BadCharacter(b' ')));
    // Digits are fine anywhere but in a whole last label.
    assert!(ServerName::parse(b"1.2.3.example").is_ok());
    assert!(ServerName::parse(b"3com.com").is_ok());
}

#[test]
fn per_flow_reading_state_is_small_and_fixed() {
    // What a pending flow keeps besides its byte buffer (docs/performance.md quotes these).
    println!(
        "TcpReassembly {} B, QuicInitials {} B",
        std::mem::size_of::<TcpReassembly>(),
        std::mem::size_of::<QuicInitials>()
    );
    assert!(std::mem::size_of::<TcpReassembly>() <= 160);
    // Most of it is ring's AES-GCM key (round keys and the GHASH table), derived once.
    assert!(std::mem::size_of::<QuicInitials>() <= 1_536);
}

#[test]
fn a_server_name_is_small_and_copy() {
    // Kept in each flow of a fixed-size table: no heap, bounded size.
    assert!(std::mem::size_of::<ServerName>() <= 256);
    assert!(std::mem::size_of::<Reading>() <= 256);
    let a = ServerName::parse(b"a.example").unwrap();
    let b = a;
    assert_eq!(a, b);
}

// ---------------------------------------------------------------------------------------
// TLS over TCP, real clients

#[test]
fn openssl_client_hellos_show_their_server_names() {
    let cases = [
        ("openssl_tls13_sni", found("www.example.com")),
        ("openssl_tls12_sni", found("mixed.example.org")),
        ("openssl_records", found("records.example.net")),
        ("openssl_no_sni", Reading::NoName),
    ];
    for (name, expected) in cases {
        let capture = fixture(name);
        assert!(capture.segments[0].syn, "{name} starts with its SYN");
        let (reading, stream) = reassemble(&capture.segments, BUDGET);
        assert_eq!(stream[0], TLS_HANDSHAKE, "{name}");
        assert_eq!(reading, expected, "{name}");
        assert_eq!(read_stream(&stream, BUDGET), expected, "{name}");
    }
}

#[test]
fn openssl_client_hello_split_over_records_is_joined() {
    let (_, stream) = reassemble(&fixture("openssl_records").segments, BUDGET);
    // The capture holds a ClientHello in more than one record: the second record header
    // follows the first record (capture.sh asks openssl for 256-byte fragments).
    let first_len = usize::from(u16::from_be_bytes([stream[3], stream[4]]));
    assert!(stream.len() > 5 + first_len + 5, "only one record in the fixture");
    assert_eq!(stream[5 + first_len], TLS_HANDSHAKE);
    assert_eq!(read_stream(&stream, BUDGET), found("records.example.net"));
}

#[test]
fn chromium_post_quantum_client_hello_in_two_segments_shows_its_name() {
    let capture = fixture("chromium_tls");
    let data: Vec<&Segment> = capture.segments.iter().filter(|s| !s.payload.is_empty()).collect();
    assert!(data.len() >= 2, "the ClientHello came in {} segments", data.len());
    let (reading, stream) = reassemble(&capture.segments, BUDGET);
    assert!(
        stream.len() > 1_700,
        "a post-quantum ClientHello is about 1.8 KB, got {}",
        stream.len()
    );
    assert_eq!(reading, found("www.example.org"));
    // X25519MLKEM768 (0x11ec) is offered: this is the big kind of ClientHello.
    assert!(stream.windows(2).any(|w| w == [0x11, 0xec]));
    // The first segment alone is not enough.
    assert_eq!(read_stream(&data[0].payload, BUDGET), Reading::NeedMore);
}

#[test]
fn every_prefix_of_a_client_hello_waits_and_the_whole_one_is_read() {
    for name in ["openssl_tls13_sni", "openssl_records", "chromium_tls"] {
        let (_, stream) = reassemble(&fixture(name).segments, BUDGET);
        let expected = read_stream(&stream, BUDGET);
        // The first prefix that shows the name, and all before it wait.
        let end =
            (0..=stream.len()).find(|&k| read_stream(&stream[..k], BUDGET) != Reading::NeedMore);
        let end = end.unwrap();
        assert_eq!(read_stream(&stream[..end], BUDGET), expected, "{name}");
        // The whole ClientHello is needed (these streams hold nothing else).
        assert_eq!(end, stream.len(), "{name}");
        for k in end..=stream.len() {
            assert_eq!(read_stream(&stream[..k], BUDGET), expected, "{name} at {k}");
        }
    }
}

#[test]
fn a_client_hello_bigger_than_the_budget_is_too_long() {
    let (_, stream) = reassemble(&fixture("chromium_tls").segments, BUDGET);
    let needed =
        (0..=stream.len()).find(|&k| read_stream(&stream[..k], BUDGET) != Reading::NeedMore);
    let needed = needed.unwrap();
    assert_eq!(read_stream(&stream, needed), found("www.example.org"));
    // One byte less: known from the handshake header already, before the bytes arrive.
    assert_eq!(read_stream(&stream[..10], needed - 1), Reading::TooLong);
    assert_eq!(read_stream(&stream, 1_000), Reading::TooLong);
}

#[test]
fn every_split_and_order_of_a_client_hello_or_request_gives_the_same_name() {
    for name in ["chromium_tls", "openssl_records", "openssl_tls12_sni", "curl_host", "curl_proxy"]
    {
        let capture = fixture(name);
        let (expected, stream) = reassemble(&capture.segments, BUDGET);
        assert!(matches!(expected, Reading::Found(_)));
        let syn = capture.segments[0].clone();
        let start = syn.seq.wrapping_add(1);
        let piece = |from: usize, to: usize| Segment {
            seq: start.wrapping_add(from as u32),
            syn: false,
            payload: stream[from..to].to_vec(),
        };
        // Every cut into two, in both orders.
        for cut in 1..stream.len() {
            for order in [[0, 1], [1, 0]] {
                let halves = [piece(0, cut), piece(cut, stream.len())];
                let mut segments = vec![syn.clone()];
                segments.extend(order.iter().map(|&i| halves[i].clone()));
                assert_eq!(reassemble(&segments, BUDGET).0, expected, "{name} cut at {cut}");
            }
        }
        // Many cuts, shuffled, with overlapping retransmissions whose bytes differ: the first
        // copy wins, so the name does not change.
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200 {
            let mut cuts: Vec<usize> =
                (0..1 + rng.below(12)).map(|_| rng.below(stream.len())).collect();
            cuts.extend([0, stream.len()]);
            cuts.sort_unstable();
            let mut pieces: Vec<Segment> = cuts.windows(2).map(|w| piece(w[0], w[1])).collect();
            for i in (1..pieces.len()).rev() {
                pieces.swap(i, rng.below(i + 1));
            }
            let mut segments = vec![syn.clone()];
            for p in pieces {
                segments.push(p.clone());
                if rng.below(3) == 0 {
                    let mut liar = p;
                    liar.payload.iter_mut().for_each(|b| *b = b'x');
                    segments.push(liar);
                }
            }
            assert_eq!(reassemble(&segments, BUDGET).0, expected, "{name}: {cuts:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// TLS, hand-made and malformed

/// Extensions of a ClientHello: (type, data).
type Extensions = Vec<(u16, Vec<u8>)>;

/// A ClientHello handshake message with the given extensions (type, data).
fn client_hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend([0x11; 32]); // random
    body.push(32);
    body.extend([0x22; 32]); // session id
    body.extend([0x00, 0x04, 0x13, 0x01, 0x13, 0x02]); // two cipher suites
    body.extend([0x01, 0x00]); // null compression
    let mut exts = Vec::new();
    for (kind, data) in extensions {
        exts.extend(kind.to_be_bytes());
        exts.extend((data.len() as u16).to_be_bytes());
        exts.extend(data);
    }
    body.extend((exts.len() as u16).to_be_bytes());
    body.extend(exts);
    let mut message = vec![0x01];
    message.extend(&(body.len() as u32).to_be_bytes()[1..]);
    message.extend(body);
    message
}

/// The `server_name` extension's data for one host name.
fn sni(name: &[u8]) -> Vec<u8> {
    let mut entry = vec![0x00];
    entry.extend((name.len() as u16).to_be_bytes());
    entry.extend(name);
    let mut data = (entry.len() as u16).to_be_bytes().to_vec();
    data.extend(entry);
    data
}

/// Handshake bytes in records of at most `size` bytes.
fn records(message: &[u8], size: usize) -> Vec<u8> {
    message
        .chunks(size)
        .flat_map(|chunk| {
            let mut record = vec![TLS_HANDSHAKE, 0x03, 0x01];
            record.extend((chunk.len() as u16).to_be_bytes());
            record.extend(chunk);
            record
        })
        .collect()
}

fn typical(name: &[u8]) -> Vec<u8> {
    client_hello(&[(0x000a, vec![0, 2, 0, 0x1d]), (0, sni(name)), (0x002b, vec![2, 3, 4])])
}

#[test]
fn hand_made_client_hellos_in_any_record_size_show_their_name() {
    let message = typical(b"Pay.Example.com");
    for size in [1, 2, 3, 7, 64, 16_384] {
        assert_eq!(
            read_stream(&records(&message, size), BUDGET),
            found("pay.example.com"),
            "{size}"
        );
    }
    // The name itself split between two records.
    let at = message.windows(3).position(|w| w == b"Pay").unwrap() + 2;
    let mut split = records(&message[..at], 16_384);
    split.extend(records(&message[at..], 16_384));
    assert_eq!(read_stream(&split, BUDGET), found("pay.example.com"));
}

#[test]
fn truncated_records_wait_and_then_are_too_long() {
    let stream = records(&typical(b"a.example"), 40);
    for k in 1..stream.len() {
        assert_eq!(read_stream(&stream[..k], BUDGET), Reading::NeedMore, "at {k}");
        // The budget reached without a whole ClientHello.
        assert_eq!(read_stream(&stream[..k], k), Reading::TooLong, "at {k}");
    }
    assert_eq!(read_stream(&stream, stream.len()), found("a.example"));
}

#[test]
fn bad_record_framing_shows_no_name() {
    let message = typical(b"a.example");
    let good = records(&message, 50);
    let mut empty_record = vec![TLS_HANDSHAKE, 3, 1, 0, 0];
    empty_record.extend(&good);
    assert_eq!(read_stream(&empty_record, BUDGET), Reading::NoName, "an empty handshake record");
    let mut oversize = good.clone();
    oversize[3..5].copy_from_slice(&16_385u16.to_be_bytes());
    assert_eq!(read_stream(&oversize, BUDGET), Reading::NoName, "a record over 2^14");
    // The record type changes mid-message: application data, alert, change_cipher_spec.
    for kind in [23, 21, 20] {
        let mut changed = good.clone();
        changed[55] = kind;
        assert_eq!(read_stream(&changed, BUDGET), Reading::NoName, "type {kind}");
        // Seen even when only the first byte of that header has arrived.
        assert_eq!(read_stream(&changed[..56], BUDGET), Reading::NoName, "type {kind}");
    }
    let mut version = good.clone();
    version[56] = 2;
    assert_eq!(read_stream(&version, BUDGET), Reading::NoName, "record major version 2");
    // Not a ClientHello: a ServerHello.
    let mut server_hello = message.clone();
    server_hello[0] = 2;
    assert_eq!(read_stream(&records(&server_hello, 100), BUDGET), Reading::NoName);
    // Not TLS at all: an SSLv2-style hello, and a record whose major version is not 3.
    assert_eq!(read_stream(&[0x80, 0x2e, 0x01, 0x00, 0x02], BUDGET), Reading::NoName);
    assert_eq!(read_stream(&[TLS_HANDSHAKE, 2, 0, 0, 5, 1], BUDGET), Reading::NoName);
}

#[test]
fn server_name_extensions_that_lie_show_no_name() {
    let name = b"a.example";
    let mut list_too_long = sni(name);
    list_too_long[1] += 1;
    let mut list_too_short = sni(name);
    list_too_short[1] -= 1;
    let mut name_too_long = sni(name);
    name_too_long[4] += 1;
    let mut two_names = sni(name);
    two_names.extend(&sni(b"b.example")[2..]);
    let two_len = (two_names.len() - 2) as u16;
    two_names[..2].copy_from_slice(&two_len.to_be_bytes());
    let cases: Vec<(&str, Extensions)> = vec![
        ("list longer than extension", vec![(0, list_too_long)]),
        ("list shorter than extension", vec![(0, list_too_short)]),
        ("name longer than list", vec![(0, name_too_long)]),
        ("two host names", vec![(0, two_names)]),
        ("two server_name extensions", vec![(0, sni(name)), (0, sni(b"b.example"))]),
        ("empty extension", vec![(0, vec![])]),
        ("empty list", vec![(0, vec![0, 0])]),
        ("empty name", vec![(0, sni(b""))]),
        ("IP literal", vec![(0, sni(b"192.0.2.1"))]),
        ("bad character", vec![(0, sni(b"a/b.example"))]),
        ("name over 253", vec![(0, sni("a.".repeat(130).as_bytes()))]),
        ("no server_name", vec![(0x000a, vec![0, 2, 0, 0x1d])]),
    ];
    for (what, extensions) in cases {
        let stream = records(&client_hello(&extensions), 16_384);
        assert_eq!(read_stream(&stream, BUDGET), Reading::NoName, "{what}");
    }
    // An unknown name type beside the host name is skipped (RFC 6066 leaves room for them).
    let mut other_type = vec![0x00, 0x00, 0x07, 0x00, 0x02, b'x', b'y'];
    other_type.extend(&sni(name)[2..]);
    let list_len = (other_type.len() - 2) as u16;
    other_type[..2].copy_from_slice(&list_len.to_be_bytes());
    let stream = records(&client_hello(&[(0, other_type)]), 16_384);
    assert_eq!(read_stream(&stream, BUDGET), found("a.example"));
}

#[test]
fn client_hello_fields_with_bad_lengths_show_no_name() {
    let message = typical(b"a.example");
    let patch = |at: usize, value: &[u8]| {
        let mut m = message.clone();
        m[at..at + value.len()].copy_from_slice(value);
        records(&m, 16_384)
    };
    // Offsets in the message: 4 header, 2 version, 32 random, then the session id length.
    assert_eq!(read_stream(&patch(38, &[33]), BUDGET), Reading::NoName, "session id over 32");
    assert_eq!(read_stream(&patch(71, &[0, 3]), BUDGET), Reading::NoName, "odd cipher suites");
    assert_eq!(read_stream(&patch(71, &[0, 0]), BUDGET), Reading::NoName, "no cipher suites");
    assert_eq!(read_stream(&patch(77, &[0]), BUDGET), Reading::NoName, "no compression");
    let ext_len = u16::from_be_bytes([message[79], message[80]]);
    assert_eq!(read_stream(&patch(79, &(ext_len + 1).to_be_bytes()), BUDGET), Reading::NoName);
    assert_eq!(read_stream(&patch(79, &(ext_len - 1).to_be_bytes()), BUDGET), Reading::NoName);
    // The handshake length shorter than the fields: they overrun the message.
    assert_eq!(read_stream(&patch(1, &[0, 0, 60]), BUDGET), Reading::NoName);
    // No extensions at all (a ClientHello that ends after compression).
    let mut bare = message[..79].to_vec();
    bare[1..4].copy_from_slice(&(75u32.to_be_bytes()[1..]));
    assert_eq!(read_stream(&records(&bare, 16_384), BUDGET), Reading::NoName);
}

#[test]
fn with_encrypted_client_hello_the_outer_name_counts() {
    let ech = (
        0xfe0d,
        vec![0x00, 0x00, 0x01, 0x00, 0x01, 0x2a, 0x00, 0x20]
            .into_iter()
            .chain([0x55; 32])
            .collect(),
    );
    let stream = records(&client_hello(&[(0, sni(b"public.example")), ech]), 16_384);
    assert_eq!(read_stream(&stream, BUDGET), found("public.example"));
}

// ---------------------------------------------------------------------------------------
// HTTP/1.x

#[test]
fn curl_requests_show_their_host() {
    let (reading, stream) = reassemble(&fixture("curl_host").segments, BUDGET);
    assert!(stream.starts_with(b"GET /index.html HTTP/1.1\r\n"));
    assert_eq!(reading, found("www.example.com"));
    // Through a proxy: absolute-form target; curl's Host says the same with the port.
    let (reading, stream) = reassemble(&fixture("curl_proxy").segments, BUDGET);
    assert!(stream.starts_with(b"GET http://api.example.net:8443/v1/items HTTP/1.1\r\n"));
    assert_eq!(reading, found("api.example.net"));
}

#[test]
fn http_hosts_are_read_from_host_or_an_absolute_target() {
    let cases: [(&[u8], Reading); 16] = [
        (b"GET / HTTP/1.1\r\nHost: Shop.Example.com\r\n\r\n", found("shop.example.com")),
        (b"GET / HTTP/1.1\r\nhost: a.example:8080\r\n\r\n", found("a.example")),
        (b"GET / HTTP/1.1\r\nHOST:   a.example.  \r\n\r\n", found("a.example")),
        (b"POST /x HTTP/1.0\r\nContent-Length: 0\r\nHost: a.example\r\n\r\n", found("a.example")),
        (b"GET http://b.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n", found("b.example")),
        (b"GET HTTPS://B.example:443?q HTTP/1.1\r\n\r\n", found("b.example")),
        (b"OPTIONS * HTTP/1.1\r\nHost: c.example\r\n\r\n", found("c.example")),
        (b"\r\nGET / HTTP/1.1\r\nHost: d.example\r\n\r\n", found("d.example")),
        (b"GET / HTTP/1.1\r\n\r\n", Reading::NoName),
        (b"GET / HTTP/1.0\r\n\r\n", Reading::NoName),
        (b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", Reading::NoName),
        (b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n", Reading::NoName),
        (b"GET / HTTP/1.1\r\nHost: 192.0.2.1\r\n\r\n", Reading::NoName),
        (b"GET http://user@evil.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n", Reading::NoName),
        (b"GET / HTTP/1.1\r\nHost: a.example:https\r\n\r\n", Reading::NoName),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Reading::NoName),
    ];
    for (request, expected) in cases {
        assert_eq!(
            read_stream(request, BUDGET),
            expected,
            "{:?}",
            String::from_utf8_lossy(request)
        );
    }
}

#[test]
fn http_requests_wait_for_the_whole_head() {
    let request = b"GET / HTTP/1.1\r\nUser-Agent: x\r\nHost: a.example\r\nAccept: */*\r\n\r\n";
    for k in 1..request.len() {
        assert_eq!(read_stream(&request[..k], BUDGET), Reading::NeedMore, "at {k}");
    }
    assert_eq!(read_stream(request, BUDGET), found("a.example"));
    // Body bytes after the head change nothing.
    let mut with_body = request.to_vec();
    with_body.extend(b"\x00\x01 anything");
    assert_eq!(read_stream(&with_body, BUDGET), found("a.example"));
    // A head that does not end within the budget.
    assert_eq!(read_stream(&request[..40], 40), Reading::TooLong);
}

#[test]
fn http_that_is_not_a_request_shows_no_name() {
    let cases: [&[u8]; 6] = [
        b"GET / HTTP/1.1\r\nHost:\r\n a.example\r\n\r\n", // an obsolete folded line
        b"GET / HTTP/1.1\r\nHost : a.example\r\n\r\n",    // space before the colon
        b"HTTP/1.1 200 OK\r\n\r\n",                       // a response
        b"\x00\x01\x02\x03",
        b"SSH-2.0-OpenSSH_9.2p1\r\n",
        b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
    ];
    for bytes in cases {
        assert_eq!(
            read_stream(bytes, BUDGET),
            Reading::NoName,
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    // Too many header fields to look at.
    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..200 {
        many.extend(format!("X-{i}: y\r\n").as_bytes());
    }
    many.extend(b"Host: a.example\r\n\r\n");
    assert_eq!(read_stream(&many, BUDGET), Reading::NoName);
}

// ---------------------------------------------------------------------------------------
// Reassembly

#[test]
fn segments_in_order_and_retransmitted_are_joined_once() {
    let mut buf = [0u8; 16];
    let mut tcp = TcpReassembly::new();
    assert_eq!(tcp.segment(&mut buf, 1000, true, b""), Insert::Nothing);
    assert!(tcp.started());
    assert_eq!(tcp.segment(&mut buf, 1001, false, b"abc"), Insert::Advanced);
    assert_eq!(tcp.segment(&mut buf, 1001, false, b"abc"), Insert::Nothing);
    assert_eq!(tcp.segment(&mut buf, 1004, false, b"def"), Insert::Advanced);
    assert_eq!(tcp.bytes(&buf), b"abcdef");
    assert!(!tcp.stream().conflicting());
}

#[test]
fn the_first_copy_of_a_byte_wins() {
    let mut buf = [0u8; 16];
    let mut tcp = TcpReassembly::new();
    tcp.segment(&mut buf, 0, true, b"");
    tcp.segment(&mut buf, 3, false, b"cd"); // out of order, behind a gap
    // A later copy overlapping both stored ranges with different bytes fills only the gaps.
    assert_eq!(tcp.segment(&mut buf, 1, false, b"XXXXXX"), Insert::Advanced);
    assert_eq!(tcp.bytes(&buf), b"XXcdXX");
    assert!(tcp.stream().conflicting());
    assert_eq!(tcp.segment(&mut buf, 1, false, b"ZZZZZZZ"), Insert::Advanced);
    assert_eq!(tcp.bytes(&buf), b"XXcdXXZ");
}

#[test]
fn out_of_order_segments_wait_behind_their_gap() {
    let mut buf = [0u8; 32];
    let mut tcp = TcpReassembly::new();
    tcp.segment(&mut buf, 7, true, b"");
    assert_eq!(tcp.segment(&mut buf, 14, false, b"ghi"), Insert::Buffered);
    assert_eq!(tcp.segment(&mut buf, 11, false, b"def"), Insert::Buffered);
    assert_eq!(tcp.bytes(&buf), b"");
    assert_eq!(tcp.segment(&mut buf, 8, false, b"abc"), Insert::Advanced);
    assert_eq!(tcp.bytes(&buf), b"abcdefghi");
}

#[test]
fn data_in_the_syn_counts_and_sequence_numbers_wrap() {
    let mut buf = [0u8; 32];
    let mut tcp = TcpReassembly::new();
    let isn = u32::MAX - 2;
    assert_eq!(tcp.segment(&mut buf, isn, true, b"ab"), Insert::Advanced);
    // The SYN's data sits at isn + 1 and isn + 2; the next byte at isn + 3 = 0.
    assert_eq!(tcp.segment(&mut buf, 0, false, b"cd"), Insert::Advanced);
    assert_eq!(tcp.segment(&mut buf, 3, false, b"f"), Insert::Buffered);
    assert_eq!(tcp.segment(&mut buf, 2, false, b"e"), Insert::Advanced);
    assert_eq!(tcp.bytes(&buf), b"abcdef");
    // A retransmitted SYN is a copy; a SYN with another ISN is not this stream.
    assert_eq!(tcp.segment(&mut buf, isn, true, b"ab"), Insert::Nothing);
    assert_eq!(tcp.segment(&mut buf, 5, true, b"zz"), Insert::Nothing);
    assert_eq!(tcp.bytes(&buf), b"abcdef");
}

#[test]
fn bytes_before_the_start_or_before_the_syn_are_not_stored() {
    let mut buf = [0u8; 8];
    let mut tcp = TcpReassembly::new();
    assert_eq!(tcp.segment(&mut buf, 101, false, b"early"), Insert::Nothing);
    assert!(!tcp.started());
    tcp.segment(&mut buf, 100, true, b"");
    // A keep-alive style segment one byte before the start, and one reaching into it.
    assert_eq!(tcp.segment(&mut buf, 100, false, b"x"), Insert::Nothing);
    assert_eq!(tcp.segment(&mut buf, 99, false, b"xyab"), Insert::Advanced);
    assert_eq!(tcp.bytes(&buf), b"ab");
    // Far behind (more than 2^31 away) is also before the start.
    assert_eq!(tcp.segment(&mut buf, 101u32.wrapping_add(1 << 31), false, b"q"), Insert::Nothing);
}

#[test]
fn bytes_past_the_capacity_are_dropped_and_remembered() {
    let mut buf = [0u8; 4];
    let mut stream = Reassembly::new();
    assert_eq!(stream.insert(&mut buf, 2, b"cdef"), Insert::Buffered);
    assert!(stream.beyond_capacity());
    assert_eq!(stream.insert(&mut buf, 10, b"zz"), Insert::Nothing);
    assert_eq!(stream.insert(&mut buf, u64::MAX - 1, b"zz"), Insert::Nothing);
    assert_eq!(stream.insert(&mut buf, 0, b"ab"), Insert::Advanced);
    assert_eq!(stream.bytes(&buf), b"abcd");
}

#[test]
fn too_many_gaps_refuse_a_new_range_until_one_closes() {
    let mut buf = [0u8; 256];
    let mut stream = Reassembly::new();
    for i in 0..MAX_RANGES as u64 {
        assert_eq!(stream.insert(&mut buf, 2 + 4 * i, b"xx"), Insert::Buffered, "range {i}");
    }
    let beyond = 2 + 4 * MAX_RANGES as u64 + 10;
    assert_eq!(stream.insert(&mut buf, beyond, b"yy"), Insert::Refused);
    // Growing an existing range is still fine, and so is the contiguous start.
    assert_eq!(stream.insert(&mut buf, 4, b"x"), Insert::Buffered);
    assert_eq!(stream.insert(&mut buf, 0, b"xx"), Insert::Advanced);
    assert_eq!(stream.contiguous(), 5);
    assert_eq!(stream.insert(&mut buf, beyond, b"yy"), Insert::Buffered);
    // One piece covering every gap joins everything.
    let all = vec![b'x'; beyond as usize + 2];
    assert_eq!(stream.insert(&mut buf, 0, &all), Insert::Advanced);
    assert_eq!(stream.contiguous(), beyond as usize + 2);
    assert!(stream.conflicting(), "the last two bytes differ from the stored 'yy'");
}

// ---------------------------------------------------------------------------------------
// QUIC

#[test]
fn initial_keys_match_the_rfc_test_vectors() {
    let dcid = [0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];
    let hex = |s: &str| -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    };
    // RFC 9001 A.1 and RFC 9369 A.1 (also what aioquic derives).
    let v1 = InitialSecrets::derive(QuicVersion::V1, &dcid);
    assert_eq!(v1.key.to_vec(), hex("1f369613dd76d5467730efcbe3b1a22d"));
    assert_eq!(v1.iv.to_vec(), hex("fa044b2f42a3fd3b46fb255c"));
    assert_eq!(v1.hp.to_vec(), hex("9f50449e04a0e810283a1e9933adedd2"));
    let v2 = InitialSecrets::derive(QuicVersion::V2, &dcid);
    assert_eq!(v2.key.to_vec(), hex("8b1a0bc121284290a29e0971b5cd045d"));
    assert_eq!(v2.iv.to_vec(), hex("91f73e2351d8fa91660e909f"));
    assert_eq!(v2.hp.to_vec(), hex("45b95e15235d6f45a6b19cbcb0294ba9"));
}

#[test]
fn packet_numbers_decode_as_rfc_9000_shows() {
    // RFC 9000 A.3's example.
    assert_eq!(decode_packet_number(Some(0xa82f30ea), 0x9b32, 16), 0xa82f9b32);
    assert_eq!(decode_packet_number(None, 0, 8), 0);
    assert_eq!(decode_packet_number(Some(0xff), 0x01, 8), 0x101);
}

/// Feeds datagrams; returns the reading after the last.
fn read_quic(datagrams: &[&[u8]], budget: usize) -> (Reading, QuicInitials) {
    let (mut crypto, mut scratch) = (vec![0; budget], vec![0; 2048]);
    let mut flow = QuicInitials::new();
    let mut reading = Reading::NeedMore;
    for datagram in datagrams {
        reading = flow.datagram(&mut crypto, &mut scratch, datagram);
    }
    (reading, flow)
}

#[test]
fn aioquic_initials_show_their_names_in_v1_and_v2() {
    for (name, version, expected) in [
        ("aioquic_v1", QuicVersion::V1, found("quic.example.com")),
        ("aioquic_v2", QuicVersion::V2, found("v2.example.com")),
    ] {
        let capture = fixture(name);
        let datagrams: Vec<&[u8]> = capture.datagrams.iter().map(Vec::as_slice).collect();
        let (reading, flow) = read_quic(&datagrams, BUDGET);
        assert_eq!(reading, expected, "{name}");
        assert_eq!(flow.version(), Some(version));
    }
}

#[test]
fn a_client_hello_over_two_initials_is_read_in_either_order() {
    let capture = fixture("aioquic_v1_two_initials");
    assert_eq!(capture.datagrams.len(), 2);
    let (first, second) = (&capture.datagrams[0][..], &capture.datagrams[1][..]);
    assert_eq!(read_quic(&[first], BUDGET).0, Reading::NeedMore);
    assert_eq!(read_quic(&[second], BUDGET).0, Reading::NeedMore);
    assert_eq!(read_quic(&[first, second], BUDGET).0, found("big.example.com"));
    assert_eq!(read_quic(&[second, first], BUDGET).0, found("big.example.com"));
    // A budget smaller than the ClientHello: known from the first bytes of the stream.
    assert_eq!(read_quic(&[first], 1_000).0, Reading::TooLong);
}

#[test]
fn chromium_split_and_reordered_crypto_frames_are_joined_in_every_datagram_order() {
    let capture = fixture("chromium_quic");
    let datagrams: Vec<&[u8]> = capture.datagrams.iter().map(Vec::as_slice).collect();
    // Chromium's Initials (the ClientHello's CRYPTO frames split into pieces and shuffled,
    // then retransmitted), and last its CONNECTION_CLOSE when capture.sh's server never
    // answered.
    let (close, initials) = datagrams.split_last().unwrap();
    assert!(initials.len() >= 2);
    assert_eq!(read_quic(&datagrams, BUDGET).0, found("www.example.org"));
    // Every permutation of the Initials (retransmissions included).
    let mut order: Vec<usize> = (0..initials.len()).collect();
    let mut count = 0;
    permutations(&mut order, 0, &mut |order| {
        let shuffled: Vec<&[u8]> = order.iter().map(|&i| initials[i]).collect();
        assert_eq!(read_quic(&shuffled, BUDGET).0, found("www.example.org"), "{order:?}");
        count += 1;
    });
    assert!(count >= 2);
    // A client that closes before its ClientHello is whole shows no name.
    assert_eq!(read_quic(&[initials[0], close], BUDGET).0, Reading::NoName);
}

fn permutations(items: &mut [usize], k: usize, visit: &mut impl FnMut(&[usize])) {
    if k == items.len() {
        return visit(items);
    }
    for i in k..items.len() {
        items.swap(k, i);
        permutations(items, k + 1, visit);
        items.swap(k, i);
    }
}

const DCID: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

/// A CRYPTO frame at `offset`.
fn crypto_frame(offset: u64, data: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x06];
    frame.extend((0x8000_0000 | offset as u32).to_be_bytes());
    frame.extend((0x4000 | data.len() as u16).to_be_bytes());
    frame.extend(data);
    frame
}

#[test]
fn hand_made_initials_with_frames_an_initial_may_carry_are_read() {
    let hello = typical(b"h.example");
    let (a, b) = hello.split_at(50);
    // PING, an ACK with two ranges and ECN counts, PADDING, the CRYPTO data in reverse.
    let mut frames = vec![0x01, 0x03, 0x0a, 0x00, 0x01, 0x02, 0x01, 0x01, 0x05, 0x00, 0x00, 0x00];
    frames.extend(crypto_frame(50, b));
    frames.extend([0; 20]);
    frames.extend(crypto_frame(0, a));
    for version in [QuicVersion::V1, QuicVersion::V2] {
        let packet = seal_initial(version, &DCID, &[9; 5], 0, 2, &frames);
        assert_eq!(read_quic(&[&packet], BUDGET).0, found("h.example"), "{version:?}");
    }
}

#[test]
fn coalesced_packets_and_trailing_bytes_are_walked() {
    let hello = typical(b"c.example");
    let (a, b) = hello.split_at(30);
    let mut datagram = seal_initial(QuicVersion::V1, &DCID, &[], 0, 1, &crypto_frame(30, b));
    // A Handshake packet (type 2) in between: skipped by its Length.
    datagram.extend([0xe0, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0x40, 0x05, 1, 2, 3, 4, 5]);
    datagram.extend(seal_initial(QuicVersion::V1, &DCID, &[], 1, 4, &crypto_frame(0, a)));
    datagram.extend([0; 30]); // padding after the packets
    assert_eq!(read_quic(&[&datagram], BUDGET).0, found("c.example"));
}

#[test]
fn initials_protected_with_the_wrong_keys_show_no_name() {
    let frames = crypto_frame(0, &typical(b"k.example"));
    let other = [9u8; 8];
    let wrong_dcid =
        seal_initial_with((QuicVersion::V1, &other), QuicVersion::V1, &DCID, &[], 0, 2, &frames);
    assert_eq!(read_quic(&[&wrong_dcid], BUDGET).0, Reading::NoName);
    // v2 header with v1 keys, and the other way round.
    let v2_with_v1_salt =
        seal_initial_with((QuicVersion::V1, &DCID), QuicVersion::V2, &DCID, &[], 0, 2, &frames);
    assert_eq!(read_quic(&[&v2_with_v1_salt], BUDGET).0, Reading::NoName);
    let v1_with_v2_salt =
        seal_initial_with((QuicVersion::V2, &DCID), QuicVersion::V1, &DCID, &[], 0, 2, &frames);
    assert_eq!(read_quic(&[&v1_with_v2_salt], BUDGET).0, Reading::NoName);
    // A bad tag (any changed byte of the protected payload or of the header).
    let good = seal_initial(QuicVersion::V1, &DCID, &[], 0, 2, &frames);
    for at in [good.len() - 1, good.len() - 40, 6] {
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        assert_eq!(read_quic(&[&bad], BUDGET).0, Reading::NoName, "byte {at} changed");
    }
    assert_eq!(read_quic(&[&good], BUDGET).0, found("k.example"));
}

#[test]
fn later_packets_that_do_not_open_are_ignored() {
    let hello = typical(b"l.example");
    let (a, b) = hello.split_at(40);
    let first = seal_initial(QuicVersion::V1, &DCID, &[], 0, 2, &crypto_frame(0, a));
    let mut corrupted = seal_initial(QuicVersion::V1, &DCID, &[], 1, 2, &crypto_frame(40, b"junk"));
    let last = corrupted.len() - 1;
    corrupted[last] ^= 1;
    // Keys stay those of the first DCID, whatever DCID later packets carry.
    let other = [7u8; 12];
    let rest = seal_initial_with(
        (QuicVersion::V1, &DCID),
        QuicVersion::V1,
        &other,
        &[],
        2,
        2,
        &crypto_frame(40, b),
    );
    let forged = seal_initial(QuicVersion::V1, &other, &[], 3, 2, &crypto_frame(40, b"forged"));
    let (reading, _) = read_quic(&[&first, &corrupted, &forged], BUDGET);
    assert_eq!(reading, Reading::NeedMore);
    assert_eq!(read_quic(&[&first, &corrupted, &forged, &rest], BUDGET).0, found("l.example"));
}

#[test]
fn crypto_frames_beyond_the_budget_are_not_stored() {
    let hello = typical(b"o.example");
    let far = seal_initial(QuicVersion::V1, &DCID, &[], 0, 2, &crypto_frame(5_000, b"far away"));
    let near = seal_initial(QuicVersion::V1, &DCID, &[], 1, 2, &crypto_frame(0, &hello));
    let (reading, _) = read_quic(&[&far], 4_096);
    assert_eq!(reading, Reading::NeedMore);
    assert_eq!(read_quic(&[&far, &near], 4_096).0, found("o.example"));
    // A ClientHello longer than the budget.
    assert_eq!(read_quic(&[&near], hello.len() - 1).0, Reading::TooLong);
    // A handshake header announcing more than the budget.
    let mut endless = hello.clone();
    endless[1..4].copy_from_slice(&[0, 0x40, 0]);
    let endless = seal_initial(QuicVersion::V1, &DCID, &[], 0, 2, &crypto_frame(0, &endless));
    assert_eq!(read_quic(&[&endless], 4_096).0, Reading::TooLong);
    // A budget filled before even the handshake header is whole.
    assert_eq!(read_quic(&[&near], 3).0, Reading::TooLong);
}

#[test]
fn initials_with_forbidden_or_malformed_frames_show_no_name() {
    let hello = typical(b"f.example");
    let mut huge_offset = vec![0x06];
    huge_offset.extend((0xffff_ffff_ffff_fff0u64).to_be_bytes()); // 2^62 - 16
    huge_offset.extend([0x40, 0x20]);
    huge_offset.extend([0; 32]);
    let cases: [(&str, Vec<u8>); 6] = [
        ("STREAM", [vec![0x08, 0x00], hello.clone()].concat()),
        ("CONNECTION_CLOSE", vec![0x1c, 0x0a, 0x00, 0x00]),
        ("truncated CRYPTO", vec![0x06, 0x00, 0x44, 0x00, 1, 2, 3]),
        ("CRYPTO past 2^62", huge_offset),
        ("truncated ACK", vec![0x02, 0x00, 0x00, 0x7f]),
        ("two-byte frame type", vec![0x40, 0x06, 0x00, 0x01, 0x01]),
    ];
    for (what, mut frames) in cases {
        frames.extend(crypto_frame(0, &hello));
        let packet = seal_initial(QuicVersion::V1, &DCID, &[], 0, 2, &frames);
        assert_eq!(read_quic(&[&packet], BUDGET).0, Reading::NoName, "{what}");
    }
}

#[test]
fn datagrams_that_are_not_client_initials_show_no_name() {
    let hello = crypto_frame(0, &typical(b"n.example"));
    let good = seal_initial(QuicVersion::V1, &DCID, &[], 0, 2, &hello);
    let short_dcid = seal_initial(QuicVersion::V1, &DCID[..7], &[], 0, 2, &hello);
    let mut unknown_version = good.clone();
    unknown_version[1..5].copy_from_slice(&0xff00_001du32.to_be_bytes());
    let mut handshake_type = good.clone();
    handshake_type[0] ^= 0x20; // Initial -> Handshake in v1
    let mut short_header = good.clone();
    short_header[0] &= 0x7f;
    let cases: [(&str, &[u8]); 7] = [
        ("empty", &[]),
        ("DNS-like", &[0x12, 0x34, 0x01, 0x00, 0x00, 0x01]),
        ("DCID under 8 bytes", &short_dcid),
        ("unknown version", &unknown_version),
        ("Handshake first", &handshake_type),
        ("short header", &short_header),
        ("cut off", &good[..good.len() - 1]),
    ];
    for (what, datagram) in cases {
        assert_eq!(read_quic(&[datagram], BUDGET).0, Reading::NoName, "{what}");
    }
    // A scratch buffer too small to open the packet in: skipped, so no name here.
    let (mut crypto, mut scratch) = (vec![0; BUDGET], vec![0; 64]);
    assert_eq!(QuicInitials::new().datagram(&mut crypto, &mut scratch, &good), Reading::NoName);
}

#[test]
fn a_settled_quic_reading_does_not_change() {
    let hello = typical(b"s.example");
    let good = seal_initial(QuicVersion::V1, &DCID, &[], 0, 2, &crypto_frame(0, &hello));
    let (mut crypto, mut scratch) = (vec![0; BUDGET], vec![0; 2048]);
    let mut flow = QuicInitials::new();
    assert_eq!(flow.datagram(&mut crypto, &mut scratch, &[0x40, 1, 2]), Reading::NoName);
    assert_eq!(flow.datagram(&mut crypto, &mut scratch, &good), Reading::NoName);
    let mut flow = QuicInitials::new();
    assert_eq!(flow.datagram(&mut crypto, &mut scratch, &good), found("s.example"));
    let close = seal_initial(QuicVersion::V1, &DCID, &[], 1, 2, &[0x1c, 0, 0, 0]);
    assert_eq!(flow.datagram(&mut crypto, &mut scratch, &close), found("s.example"));
}

// ---------------------------------------------------------------------------------------
// The fuzz function over the fixtures (the corpus replay in tests/fuzz_corpus.rs does more).

#[test]
fn the_fuzz_invariants_hold_for_the_fixtures() {
    let (_, stream) = reassemble(&fixture("chromium_tls").segments, BUDGET);
    for mode in 0u8..3 {
        for seed in 0u8..8 {
            let mut input = vec![mode, 0x40, 0x00, seed, 1, 2, 3, 4, 5, 6, 7];
            if mode == 2 {
                // A CRYPTO stream: the handshake message without its record header.
                input.extend(&stream[5..]);
            } else if mode == 1 {
                input.extend(fixture("aioquic_v1").datagrams.concat());
            } else {
                input.extend(&stream);
            }
            fuzzing::server_names(&input);
        }
    }
}
