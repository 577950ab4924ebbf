//! The server-name readers as one function over arbitrary bytes, shared by the cargo-fuzz
//! target `server_names` (tests/fuzz) and the stable test that replays its seed corpus.
//! Also the test support the unit tests and benchmarks share: the real clients' captures
//! (`client_capture`) and an Initial packet builder (`seal_initial`).
//! Must not depend on: sockets, logging, anything outside `names`.
//!
//! The first byte picks a mode (its value modulo 3), the next two the byte budget, the next
//! eight seed the choices (cuts, order, copies); the rest is the payload:
//! - 0, a TCP stream: `read_stream` on the payload, and on the payload cut into segments fed
//!   to `TcpReassembly` in a shuffled order with retransmissions, overlaps and conflicting
//!   later copies. Checks: the reassembled bytes are always the payload's prefix (the first
//!   copy wins); a final reading (`Found`, `NoName`, `TooLong`) of a prefix stays the reading of
//!   every longer prefix; once every segment is in, the reading is the whole payload's;
//! - 1, QUIC datagrams: the payload cut into datagrams fed to `QuicInitials` as they are
//!   (seed with real Initials to reach the decryption). Checks: no panic, a settled reading
//!   stays;
//! - 2, a QUIC CRYPTO stream: the payload is the stream; it is cut into CRYPTO frames spread
//!   over Initial packets (with PING, PADDING and ACK frames) and datagrams (coalesced), in a
//!   shuffled order with duplicates. Checks: the reading is the ClientHello reader's on the
//!   contiguous stream.
//!
//! Every `Found` name must be normalized (parsing its text gives it back).

pub use super::quic::{seal_initial, seal_initial_with};

use super::quic::QuicVersion;
use super::{QuicInitials, Reading, ServerName, TcpReassembly, read_stream, tls};

/// Runs the readers over `data`; panics when an invariant does not hold.
pub fn server_names(data: &[u8]) {
    let Some((header, payload)) = data.split_at_checked(11) else { return };
    let budget = usize::from(u16::from_be_bytes([header[1], header[2]])) % 20_000 + 1;
    let mut rng = Rng(u64::from_be_bytes(header[3..11].try_into().unwrap()) | 1);
    match header[0] % 3 {
        0 => tcp_stream(payload, budget, &mut rng),
        1 => quic_datagrams(payload, budget, &mut rng),
        _ => quic_crypto_stream(payload, budget, &mut rng),
    }
}

/// A client's TCP segment: sequence number, SYN flag, payload.
#[derive(Debug, Clone)]
pub struct Segment {
    pub seq: u32,
    pub syn: bool,
    pub payload: Vec<u8>,
}

/// What the first client in a capture sent: for TCP, the segments of its first connection
/// (identified by its first SYN); for UDP, the datagrams from the first datagram's source.
#[derive(Debug, Default)]
pub struct Capture {
    pub segments: Vec<Segment>,
    pub datagrams: Vec<Vec<u8>>,
}

/// Reads tests/fixtures/names/`name`.pcap (Ethernet frames, as tcpdump writes loopback
/// captures) for the unit tests and benchmarks; panics on a missing or broken file.
pub fn client_capture(name: &str) -> Capture {
    use etherparse::{SlicedPacket, TransportSlice};
    let path = format!("{}/tests/fixtures/names/{name}.pcap", env!("CARGO_MANIFEST_DIR"));
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut reader = pcap_file::pcap::PcapReader::new(file).unwrap();
    let mut capture = Capture::default();
    let mut client_port = None;
    while let Some(packet) = reader.next_packet() {
        let packet = packet.unwrap();
        match SlicedPacket::from_ethernet(&packet.data).unwrap().transport {
            Some(TransportSlice::Tcp(tcp)) => {
                if client_port.is_none() && tcp.syn() && !tcp.ack() {
                    client_port = Some(tcp.source_port());
                }
                if client_port == Some(tcp.source_port()) {
                    let (seq, syn, payload) = (tcp.sequence_number(), tcp.syn(), tcp.payload());
                    capture.segments.push(Segment { seq, syn, payload: payload.to_vec() });
                }
            }
            Some(TransportSlice::Udp(udp))
                if *client_port.get_or_insert(udp.source_port()) == udp.source_port() =>
            {
                capture.datagrams.push(udp.payload().to_vec());
            }
            _ => {}
        }
    }
    capture
}

/// A found name must be what `ServerName::parse` makes of its own text.
pub fn check_normalized(reading: Reading) {
    if let Reading::Found(name) = reading {
        let text = name.as_str();
        assert_eq!(ServerName::parse(text.as_bytes()), Ok(name), "{text:?} is not normalized");
        assert!(!text.ends_with('.') && !text.bytes().any(|b| b.is_ascii_uppercase()), "{text:?}");
    }
}

fn is_final(reading: Reading) -> bool {
    reading != Reading::NeedMore
}

fn tcp_stream(payload: &[u8], budget: usize, rng: &mut Rng) {
    let whole = read_stream(payload, budget);
    check_normalized(whole);
    let isn = rng.next() as u32; // any ISN, so sequence wrap is covered too
    let max_len = 1 + rng.below(300);
    let segments = cut(payload, rng, 1, max_len);
    let mut order: Vec<usize> = (0..segments.len()).collect();
    rng.shuffle(&mut order);
    let mut buf = vec![0; budget];
    let mut tcp = TcpReassembly::new();
    let syn_data = rng.below(4) == 0;
    let (mut refused, mut settled) = (false, None);
    // The SYN, with the first segment's bytes in it or none.
    let syn_bytes = if syn_data { segments.first().map_or(&[][..], |s| s.1) } else { &[] };
    tcp.segment(&mut buf, isn, true, syn_bytes);
    let mut fed = Vec::new();
    for &i in &order {
        let (offset, bytes) = segments[i];
        let seq = isn.wrapping_add(1).wrapping_add(offset as u32);
        let result = tcp.segment(&mut buf, seq, false, bytes);
        refused |= result == super::Insert::Refused;
        if result != super::Insert::Refused {
            fed.push(i);
        }
        // Now and then a retransmission of an earlier piece, or a different later copy.
        if let Some(&j) = fed.get(rng.below(fed.len().max(1) * 2)) {
            let (offset, bytes) = segments[j];
            let seq = isn.wrapping_add(1).wrapping_add(offset as u32);
            let changed: Vec<u8> = bytes.iter().map(|b| b ^ (rng.next() as u8 | 1)).collect();
            let copy = if rng.below(2) == 0 { bytes } else { &changed[..] };
            tcp.segment(&mut buf, seq, false, copy);
        }
        let got = tcp.bytes(&buf);
        assert_eq!(got, &payload[..got.len()], "reassembled bytes differ from the stream");
        let reading = read_stream(got, budget);
        check_normalized(reading);
        match settled {
            Some(before) => assert_eq!(reading, before, "a final reading changed"),
            None if is_final(reading) => settled = Some(reading),
            None => {}
        }
    }
    if !refused {
        assert_eq!(tcp.bytes(&buf).len(), payload.len().min(budget));
        assert_eq!(read_stream(tcp.bytes(&buf), budget), whole);
    }
}

fn quic_datagrams(payload: &[u8], budget: usize, rng: &mut Rng) {
    let (mut crypto, mut scratch) = (vec![0; budget], vec![0; 2048]);
    let mut flow = QuicInitials::new();
    let mut settled = None;
    // Datagrams of 1..=1500 bytes, as the fuzzer cut them.
    for (_, datagram) in cut(payload, rng, 1, 1500) {
        let reading = flow.datagram(&mut crypto, &mut scratch, datagram);
        check_normalized(reading);
        match settled {
            Some(before) => assert_eq!(reading, before, "a settled QUIC reading changed"),
            None if is_final(reading) => settled = Some(reading),
            None => {}
        }
    }
}

fn quic_crypto_stream(stream: &[u8], budget: usize, rng: &mut Rng) {
    let version = if rng.below(2) == 0 { QuicVersion::V1 } else { QuicVersion::V2 };
    let dcid: Vec<u8> = (0..8 + rng.below(13)).map(|_| rng.next() as u8).collect();
    // At most 16 pieces: the reassembly keeps 16 ranges behind a gap, so none is refused.
    let shortest = stream.len().div_ceil(16).max(1);
    let longest = shortest + rng.below(600);
    let pieces = cut(stream, rng, shortest, longest);
    let mut frames: Vec<Vec<u8>> = pieces
        .iter()
        .map(|&(offset, data)| {
            let mut frame = vec![0x06];
            put_varint(&mut frame, offset as u64);
            put_varint(&mut frame, data.len() as u64);
            frame.extend_from_slice(data);
            frame
        })
        .collect();
    if let Some(again) = frames.get(rng.below(frames.len() * 2)).cloned() {
        frames.push(again);
    }
    frames.push(vec![0x01]); // PING
    frames.push(vec![0x02, 0x00, 0x00, 0x00, 0x00]); // ACK of packet 0
    rng.shuffle(&mut frames);
    let mut packets = Vec::new();
    let mut pn = 0;
    while !frames.is_empty() {
        let take = (1 + rng.below(3)).min(frames.len());
        let mut plain: Vec<u8> = frames.drain(..take).flatten().collect();
        plain.resize(plain.len() + rng.below(40), 0); // PADDING
        packets.push(seal_initial(version, &dcid, &[7; 4], pn, 1 + rng.below(4), &plain));
        pn += 1;
    }
    let mut datagrams: Vec<Vec<u8>> = Vec::new();
    while !packets.is_empty() {
        let take = (1 + rng.below(2)).min(packets.len());
        datagrams.push(packets.drain(..take).flatten().collect());
    }
    rng.shuffle(&mut datagrams);
    let (mut crypto, mut scratch) = (vec![0; budget], vec![0; 65_536]);
    let mut flow = QuicInitials::new();
    let mut reading = Reading::NeedMore;
    for datagram in &datagrams {
        reading = flow.datagram(&mut crypto, &mut scratch, datagram);
    }
    check_normalized(reading);
    let visible = &stream[..stream.len().min(budget)];
    let expected = match tls::read_handshake(visible, budget) {
        Reading::NeedMore if visible.len() == budget => Reading::TooLong,
        other => other,
    };
    assert_eq!(reading, expected, "QUIC reading differs from the CRYPTO stream's");
}

/// Cuts `bytes` into pieces of `min_len..=max_len` bytes (the last may be shorter) at
/// fuzz-chosen places, each with its offset; pieces overlap their neighbour now and then.
fn cut<'b>(
    bytes: &'b [u8],
    rng: &mut Rng,
    min_len: usize,
    max_len: usize,
) -> Vec<(usize, &'b [u8])> {
    let mut pieces = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = (min_len + rng.below(max_len.saturating_sub(min_len) + 1)).min(bytes.len() - at);
        let back = if at > 0 && rng.below(4) == 0 { rng.below(at.min(8)) } else { 0 };
        pieces.push((at - back, &bytes[at - back..at + len]));
        at += len;
    }
    pieces
}

fn put_varint(out: &mut Vec<u8>, value: u64) {
    match value {
        0..0x40 => out.push(value as u8),
        0x40..0x4000 => out.extend_from_slice(&(0x4000 | value as u16).to_be_bytes()),
        _ => out.extend_from_slice(&(0x8000_0000 | value as u32).to_be_bytes()),
    }
}

/// xorshift64: the fuzz input's choices, reproducible from its seed bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}
