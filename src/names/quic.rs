//! The QUIC reader: a client's Initial packets (QUIC v1, RFC 9000/9001; v2, RFC 9369) to the
//! ClientHello their CRYPTO frames carry, and its server name.
//! Must not depend on: anything but `names` and ring.
//!
//! Per flow: the first datagram must begin with an Initial packet of v1 or v2; its destination
//! connection id gives the client's Initial keys (HKDF with the version's salt and labels),
//! kept for the flow's later datagrams (after a server's answer the client changes its DCID
//! but not its Initial keys). Each Initial packet of a datagram (coalesced packets are walked
//! by their Length fields; Handshake and 0-RTT packets are skipped, a short header ends the
//! datagram) is copied into the caller's scratch buffer, its header protection removed and its
//! payload opened there; a packet that does not open (another key, a bad tag, a corrupted
//! copy) is ignored, and a first datagram none of whose packets opens is not QUIC. The frames
//! an Initial may carry are walked (PADDING, PING, ACK, CRYPTO, CONNECTION_CLOSE); CRYPTO
//! data goes into the flow's `Reassembly` at its offset, so frames split, reordered and spread
//! over several packets and datagrams (Chrome's "chaos protection") join up, and the
//! ClientHello is read from the contiguous stream once it grows.
//!
//! Not read: a connection that the server sent a Retry (its next Initials use keys from the
//! Retry's connection id, which the client chose not; it shows no name here), and versions
//! other than v1 and v2 (no name).

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf::{self, HKDF_SHA256, KeyType, Prk, Salt};

use super::reassembly::Reassembly;
use super::{Reading, tls};

const VERSION_1: u32 = 0x0000_0001;
const VERSION_2: u32 = 0x6b33_43cf;
/// RFC 9001 5.2.
const SALT_V1: [u8; 20] = [
    0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad,
    0xcc, 0xbb, 0x7f, 0x0a,
];
/// RFC 9369 3.3.1.
const SALT_V2: [u8; 20] = [
    0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb,
    0xf9, 0xbd, 0x2e, 0xd9,
];
/// A client's first DCID is at least 8 bytes (RFC 9000 7.2); no connection id exceeds 20.
const MIN_FIRST_DCID: usize = 8;
const MAX_CID: usize = 20;
const SAMPLE_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// Header bits of a long header; the reserved bits must be zero once unprotected.
const LONG_HEADER: u8 = 0x80;
const RESERVED_BITS: u8 = 0x0c;

/// The QUIC versions whose Initials are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuicVersion {
    V1,
    V2,
}

impl QuicVersion {
    fn from_wire(version: u32) -> Option<QuicVersion> {
        match version {
            VERSION_1 => Some(QuicVersion::V1),
            VERSION_2 => Some(QuicVersion::V2),
            _ => None,
        }
    }

    fn wire(self) -> u32 {
        match self {
            QuicVersion::V1 => VERSION_1,
            QuicVersion::V2 => VERSION_2,
        }
    }

    /// The long-header packet type bits of an Initial (RFC 9369 3.2 swaps them).
    fn initial_type(self) -> u8 {
        match self {
            QuicVersion::V1 => 0,
            QuicVersion::V2 => 1,
        }
    }

    fn retry_type(self) -> u8 {
        match self {
            QuicVersion::V1 => 3,
            QuicVersion::V2 => 0,
        }
    }

    fn salt(self) -> &'static [u8; 20] {
        match self {
            QuicVersion::V1 => &SALT_V1,
            QuicVersion::V2 => &SALT_V2,
        }
    }

    /// Labels of the key, IV and header-protection key.
    fn labels(self) -> [&'static [u8]; 3] {
        match self {
            QuicVersion::V1 => [b"quic key", b"quic iv", b"quic hp"],
            QuicVersion::V2 => [b"quicv2 key", b"quicv2 iv", b"quicv2 hp"],
        }
    }
}

/// The client's Initial packet protection keys.
struct InitialKeys {
    key: LessSafeKey,
    iv: [u8; 12],
    hp: aead::quic::HeaderProtectionKey,
}

/// The raw bytes of the client's Initial keys (RFC 9001 5.2, RFC 9369 3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitialSecrets {
    pub key: [u8; 16],
    pub iv: [u8; 12],
    pub hp: [u8; 16],
}

impl InitialSecrets {
    pub fn derive(version: QuicVersion, dcid: &[u8]) -> InitialSecrets {
        let initial = Salt::new(HKDF_SHA256, version.salt()).extract(dcid);
        let client: Prk = expand_label(&initial, b"client in", HKDF_SHA256, |okm| Prk::from(okm));
        let [key_label, iv_label, hp_label] = version.labels();
        let mut secrets = InitialSecrets { key: [0; 16], iv: [0; 12], hp: [0; 16] };
        for (label, out) in [
            (key_label, &mut secrets.key[..]),
            (iv_label, &mut secrets.iv[..]),
            (hp_label, &mut secrets.hp[..]),
        ] {
            // 12 or 16 bytes, well within what HKDF-SHA256 gives (255 * 32): cannot fail.
            expand_label(&client, label, Bytes(out.len()), |okm| okm.fill(out)).unwrap_or_default();
        }
        secrets
    }
}

impl InitialKeys {
    fn derive(version: QuicVersion, dcid: &[u8]) -> InitialKeys {
        let secrets = InitialSecrets::derive(version, dcid);
        // Both take a 16-byte AES-128 key, which is what `secrets` holds: cannot fail.
        let key = UnboundKey::new(&aead::AES_128_GCM, &secrets.key).expect("an AES-128 key");
        let hp = aead::quic::HeaderProtectionKey::new(&aead::quic::AES_128, &secrets.hp)
            .expect("an AES-128 key");
        InitialKeys { key: LessSafeKey::new(key), iv: secrets.iv, hp }
    }
}

/// HKDF-Expand-Label (RFC 8446 7.1) with an empty context; `take` uses the output while
/// ring's `Okm` still borrows the label.
fn expand_label<L: KeyType, T>(
    secret: &Prk,
    label: &[u8],
    len: L,
    take: impl FnOnce(hkdf::Okm<'_, L>) -> T,
) -> T {
    let length = (len.len() as u16).to_be_bytes();
    let label_len = [6 + label.len() as u8];
    let info: [&[u8]; 5] = [&length, &label_len, b"tls13 ", label, &[0]];
    // Expand fails only for outputs over 255 hash lengths; these are 12 to 32 bytes.
    take(secret.expand(&info, len).expect("HKDF output of at most 32 bytes"))
}

/// An output length for HKDF.
struct Bytes(usize);

impl KeyType for Bytes {
    fn len(&self) -> usize {
        self.0
    }
}

/// One flow's Initial-packet reading: its keys (from its first datagram), the CRYPTO stream's
/// reassembly state (the bytes are in the caller's buffer) and the answer once it is final.
pub struct QuicInitials {
    keys: Option<(QuicVersion, InitialKeys)>,
    /// The largest packet number opened so far, for decoding truncated ones.
    largest_pn: Option<u64>,
    crypto: Reassembly,
    /// `Found`, `NoName` or `TooLong` once reached: later datagrams change nothing.
    settled: Option<Reading>,
}

impl std::fmt::Debug for QuicInitials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicInitials")
            .field("version", &self.keys.as_ref().map(|(v, _)| v))
            .field("largest_pn", &self.largest_pn)
            .field("crypto", &self.crypto)
            .field("settled", &self.settled)
            .finish()
    }
}

impl Default for QuicInitials {
    fn default() -> QuicInitials {
        QuicInitials::new()
    }
}

/// A long header, read up to the packet number.
struct LongHeader<'a> {
    first: u8,
    version: u32,
    dcid: &'a [u8],
    /// Where the (protected) packet number starts.
    pn_offset: usize,
    /// Where the packet ends (its Length field), within the datagram.
    end: usize,
}

/// Why a datagram stopped being walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frames {
    /// The frames were fine (CRYPTO data stored).
    Read,
    /// A frame an Initial must not carry, a malformed one, or CONNECTION_CLOSE: the connection
    /// ends without showing a name.
    Fatal,
}

impl QuicInitials {
    pub const fn new() -> QuicInitials {
        QuicInitials { keys: None, largest_pn: None, crypto: Reassembly::new(), settled: None }
    }

    /// The version of the flow's Initials, once its first datagram was one.
    pub fn version(&self) -> Option<QuicVersion> {
        self.keys.as_ref().map(|&(version, _)| version)
    }

    /// Reads one datagram the client sent. `crypto` is the flow's CRYPTO-stream buffer (its
    /// length is the byte budget, `names.max_bytes`; the same buffer every time), `scratch`
    /// a buffer for decrypting one packet at a time (packets longer than it are skipped: give
    /// it 1,500 bytes or more; its contents do not matter between calls).
    pub fn datagram(&mut self, crypto: &mut [u8], scratch: &mut [u8], datagram: &[u8]) -> Reading {
        if let Some(settled) = self.settled {
            return settled;
        }
        let first_datagram = self.keys.is_none();
        if first_datagram {
            let header = long_header(datagram);
            let version = header.as_ref().and_then(|h| QuicVersion::from_wire(h.version));
            match (header, version) {
                (Some(h), Some(v))
                    if packet_type(h.first) == v.initial_type()
                        && h.dcid.len() >= MIN_FIRST_DCID =>
                {
                    self.keys = Some((v, InitialKeys::derive(v, h.dcid)));
                }
                _ => return self.settle(Reading::NoName),
            }
        }
        let mut opened = false;
        let mut rest = datagram;
        // Each round consumes a whole packet (at least its header) or stops.
        while let Some(header) = long_header(rest) {
            let Some((version, keys)) = &self.keys else { break };
            if header.version != version.wire() || packet_type(header.first) == version.retry_type()
            {
                break;
            }
            if packet_type(header.first) == version.initial_type() {
                let packet = &rest[..header.end];
                if let Some((pn, payload)) = open(keys, self.largest_pn, scratch, packet, &header) {
                    opened = true;
                    self.largest_pn = Some(self.largest_pn.map_or(pn, |l| l.max(pn)));
                    if walk_frames(&mut self.crypto, crypto, payload) == Frames::Fatal {
                        return self.settle(Reading::NoName);
                    }
                }
            }
            rest = &rest[header.end..];
        }
        if first_datagram && !opened {
            return self.settle(Reading::NoName);
        }
        match tls::read_handshake(self.crypto.bytes(crypto), crypto.len()) {
            // The buffer full, the ClientHello still not whole. (Bytes past the buffer alone
            // say nothing: the ClientHello may yet end within it.)
            Reading::NeedMore if self.crypto.contiguous() == crypto.len() => {
                self.settle(Reading::TooLong)
            }
            Reading::NeedMore => Reading::NeedMore,
            done => self.settle(done),
        }
    }

    fn settle(&mut self, reading: Reading) -> Reading {
        self.settled = Some(reading);
        reading
    }
}

/// The long-header packet type bits.
fn packet_type(first: u8) -> u8 {
    (first >> 4) & 0x03
}

/// Reads a long header of a version with RFC 8999's invariants plus v1/v2's Initial, 0-RTT
/// and Handshake layout (token only in Initials; Retry has no Length: its `end` is the
/// datagram's). `None` for a short header or a malformed one.
fn long_header(datagram: &[u8]) -> Option<LongHeader<'_>> {
    let mut at = 0;
    let first = *datagram.first()?;
    if first & LONG_HEADER == 0 {
        return None;
    }
    let version = u32::from_be_bytes(datagram.get(1..5)?.try_into().ok()?);
    at += 5;
    let dcid_len = usize::from(*datagram.get(at)?);
    let dcid = datagram.get(at + 1..at + 1 + dcid_len)?;
    at += 1 + dcid_len;
    let scid_len = usize::from(*datagram.get(at)?);
    at += 1 + scid_len;
    if dcid_len > MAX_CID || scid_len > MAX_CID {
        return None;
    }
    let kind = QuicVersion::from_wire(version).map(|v| {
        let t = packet_type(first);
        (t == v.initial_type(), t == v.retry_type())
    });
    let (initial, retry) = kind?;
    if retry {
        return Some(LongHeader { first, version, dcid, pn_offset: at, end: datagram.len() });
    }
    if initial {
        let token = varint(datagram, &mut at)?;
        at = at.checked_add(usize::try_from(token).ok()?)?;
    }
    let length = usize::try_from(varint(datagram, &mut at)?).ok()?;
    let end = at.checked_add(length).filter(|&end| end <= datagram.len())?;
    Some(LongHeader { first, version, dcid, pn_offset: at, end })
}

/// Removes header protection and opens an Initial packet in `scratch`; returns its packet
/// number and plaintext payload. `None` when it does not fit, is too short to sample, or does
/// not authenticate.
fn open<'s>(
    keys: &InitialKeys,
    largest_pn: Option<u64>,
    scratch: &'s mut [u8],
    packet: &[u8],
    header: &LongHeader<'_>,
) -> Option<(u64, &'s [u8])> {
    let pn_offset = header.pn_offset;
    let sample = packet.get(pn_offset + 4..pn_offset + 4 + SAMPLE_LEN)?;
    let buf = scratch.get_mut(..packet.len())?;
    buf.copy_from_slice(packet);
    let mask = keys.hp.new_mask(sample).ok()?;
    buf[0] ^= mask[0] & 0x0f;
    let pn_len = usize::from(buf[0] & 0x03) + 1;
    let mut truncated = 0u64;
    for (byte, m) in buf[pn_offset..pn_offset + pn_len].iter_mut().zip(&mask[1..]) {
        *byte ^= m;
        truncated = truncated << 8 | u64::from(*byte);
    }
    let pn = decode_packet_number(largest_pn, truncated, pn_len * 8);
    let (head, body) = buf.split_at_mut(pn_offset + pn_len);
    if body.len() < TAG_LEN {
        return None;
    }
    let mut nonce = keys.iv;
    for (n, p) in nonce[4..].iter_mut().zip(pn.to_be_bytes()) {
        *n ^= p;
    }
    let nonce = Nonce::assume_unique_for_key(nonce);
    let plain = keys.key.open_in_place(nonce, Aad::from(&*head), body).ok()?;
    // Reserved bits set in an authenticated packet: PROTOCOL_VIOLATION; nothing to read.
    (head[0] & RESERVED_BITS == 0).then_some((pn, &*plain))
}

/// RFC 9000 A.3: the full packet number closest to the next expected one.
pub(super) fn decode_packet_number(largest: Option<u64>, truncated: u64, bits: usize) -> u64 {
    let expected = largest.map_or(0, |l| l + 1);
    let window = 1u64 << bits;
    let (half, mask) = (window / 2, window - 1);
    let candidate = (expected & !mask) | truncated;
    if candidate + half <= expected && candidate < (1 << 62) - window {
        candidate + window
    } else if candidate > expected + half && candidate >= window {
        candidate - window
    } else {
        candidate
    }
}

/// Frame types an Initial may carry (RFC 9000 12.4, Table 3).
const PADDING: u8 = 0x00;
const PING: u8 = 0x01;
const ACK: u8 = 0x02;
const ACK_ECN: u8 = 0x03;
const CRYPTO: u8 = 0x06;
const CONNECTION_CLOSE: u8 = 0x1c;
/// The largest stream offset plus one (RFC 9000 19.6: offset + length < 2^62).
const MAX_STREAM_END: u64 = 1 << 62;

/// Walks an Initial's frames, storing CRYPTO data.
fn walk_frames(stream: &mut Reassembly, crypto: &mut [u8], payload: &[u8]) -> Frames {
    let mut at = 0;
    while let Some(&kind) = payload.get(at) {
        at += 1;
        let ok = match kind {
            // Clients pad Initials to 1,200 bytes: skip a run of PADDING at once.
            PADDING => {
                at +=
                    payload[at..].iter().position(|&b| b != PADDING).unwrap_or(payload.len() - at);
                Some(())
            }
            PING => Some(()),
            ACK | ACK_ECN => ack_frame(payload, &mut at, kind == ACK_ECN),
            // A piece refused for want of a gap slot is as if its packet was lost: the
            // client sends its CRYPTO data again until the server acknowledges it.
            CRYPTO => crypto_frame(payload, &mut at).map(|(offset, data)| {
                stream.insert(crypto, offset, data);
            }),
            // The client gives up: the connection shows no name.
            CONNECTION_CLOSE => None,
            // Any other frame is a protocol violation in an Initial.
            _ => None,
        };
        if ok.is_none() {
            return Frames::Fatal;
        }
    }
    Frames::Read
}

/// Steps over an ACK frame's fields (RFC 9000 19.3).
fn ack_frame(payload: &[u8], at: &mut usize, ecn: bool) -> Option<()> {
    let skip =
        |count: usize, at: &mut usize| (0..count).try_for_each(|_| varint(payload, at).map(drop));
    // Largest acknowledged, ACK delay; then the range count, the first range.
    skip(2, at)?;
    let ranges = varint(payload, at)?;
    skip(1, at)?;
    // Each further range is two varints of at least a byte each, so the loop ends with the
    // payload whatever the count says.
    for _ in 0..ranges {
        skip(2, at)?;
    }
    skip(if ecn { 3 } else { 0 }, at)
}

/// A CRYPTO frame's offset and data (RFC 9000 19.6).
fn crypto_frame<'p>(payload: &'p [u8], at: &mut usize) -> Option<(u64, &'p [u8])> {
    let offset = varint(payload, at)?;
    let length = usize::try_from(varint(payload, at)?).ok()?;
    let data = payload.get(*at..at.checked_add(length)?)?;
    *at += length;
    ((offset + length as u64) < MAX_STREAM_END).then_some((offset, data))
}

/// A variable-length integer (RFC 9000 16) at `at`, which moves past it.
fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let first = *bytes.get(*at)?;
    let len = 1usize << (first >> 6);
    let raw = bytes.get(*at..*at + len)?;
    let value = raw[1..].iter().fold(u64::from(first & 0x3f), |v, &b| v << 8 | u64::from(b));
    *at += len;
    Some(value)
}

/// Builds a client Initial packet carrying `frames` (the inverse of `open`), for tests, the
/// fuzz target and benchmarks: long header without token, a 2-byte Length, the packet number
/// in `pn_len` bytes; frames shorter than the sample needs are padded with PADDING.
#[doc(hidden)]
pub fn seal_initial(
    version: QuicVersion,
    dcid: &[u8],
    scid: &[u8],
    pn: u64,
    pn_len: usize,
    frames: &[u8],
) -> Vec<u8> {
    seal_initial_with((version, dcid), version, dcid, scid, pn, pn_len, frames)
}

/// `seal_initial` with keys of another version or connection id than the header shows (the
/// mistakes a reader must not accept).
#[doc(hidden)]
pub fn seal_initial_with(
    keys_of: (QuicVersion, &[u8]),
    version: QuicVersion,
    dcid: &[u8],
    scid: &[u8],
    pn: u64,
    pn_len: usize,
    frames: &[u8],
) -> Vec<u8> {
    let secrets = InitialSecrets::derive(keys_of.0, keys_of.1);
    let keys = InitialKeys::derive(keys_of.0, keys_of.1);
    let pn_len = pn_len.clamp(1, 4);
    let mut payload = frames.to_vec();
    payload.resize(payload.len().max(4), PADDING);
    let mut packet = vec![LONG_HEADER | 0x40 | version.initial_type() << 4 | (pn_len as u8 - 1)];
    packet.extend_from_slice(&version.wire().to_be_bytes());
    for cid in [dcid, scid] {
        packet.push(cid.len() as u8);
        packet.extend_from_slice(cid);
    }
    packet.push(0); // token length
    let length = (pn_len + payload.len() + TAG_LEN) as u16;
    packet.extend_from_slice(&(0x4000 | length).to_be_bytes());
    let pn_offset = packet.len();
    packet.extend_from_slice(&pn.to_be_bytes()[8 - pn_len..]);
    let mut nonce = secrets.iv;
    for (n, p) in nonce[4..].iter_mut().zip(pn.to_be_bytes()) {
        *n ^= p;
    }
    let tag = keys
        .key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&packet[..]),
            &mut payload,
        )
        .expect("a payload within AES-GCM's limits");
    packet.extend_from_slice(&payload);
    packet.extend_from_slice(tag.as_ref());
    let sample = &packet[pn_offset + 4..pn_offset + 4 + SAMPLE_LEN];
    let mask = keys.hp.new_mask(sample).expect("a 16-byte sample");
    packet[0] ^= mask[0] & 0x0f;
    for (byte, m) in packet[pn_offset..pn_offset + pn_len].iter_mut().zip(&mask[1..]) {
        *byte ^= m;
    }
    packet
}
