//! The outer IPv4 + UDP header of a packet sent back to GWLB.
//! Must not depend on: anything but std.
//!
//! The data plane receives GENEVE on a UDP socket, so the kernel has already stripped and
//! checked the outer headers. To send back with GWLB's ports preserved (source = the port GWLB
//! sent from, destination = `reply_port`), it writes the UDP header itself in front of the
//! unchanged GENEVE datagram ([`emit_udp`]) and sends through a raw UDP socket, whose kernel
//! adds the IPv4 header (DF, TTL 64). [`emit`] writes all 28 bytes the same way, for what
//! `labelwall replay` writes to its capture and for the packet socket, which sends whole
//! Ethernet frames ([`emit_ipv4`] is its IPv4 part).

use std::net::Ipv4Addr;

use super::DropReason;

/// IPv4 header (no options) + UDP header.
pub const OUTER_HEADER_LEN: usize = 28;
pub const IPV4_HEADER_LEN: usize = 20;
/// The UDP header alone: what the data plane writes (the kernel adds the IPv4 header).
pub const UDP_HEADER_LEN: usize = 8;
/// The IPv4 TTL of what is sent back.
pub const TTL: u8 = 64;
const PROTOCOL_UDP: u8 = 17;
/// Largest UDP payload an IPv4 packet can carry.
pub const MAX_UDP_PAYLOAD: usize = u16::MAX as usize - OUTER_HEADER_LEN;

/// Addressing of one packet sent back to GWLB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OuterAddressing {
    /// The appliance's address (where GWLB sent the packet to).
    pub src: Ipv4Addr,
    /// The GWLB node that sent the packet.
    pub dst: Ipv4Addr,
    /// GWLB's source port, kept as it came.
    pub src_port: u16,
    /// The GENEVE port on GWLB (6081), `dataplane.reply_port`.
    pub dst_port: u16,
}

impl OuterAddressing {
    /// Packed into the pipeline's opaque origin of a datagram (`Pipeline::set_origin`), so
    /// that what a pending flow's verdict releases goes back the way its datagrams came.
    pub fn to_origin(&self) -> u128 {
        (u128::from(u32::from(self.src)) << 64)
            | (u128::from(u32::from(self.dst)) << 32)
            | (u128::from(self.src_port) << 16)
            | u128::from(self.dst_port)
    }

    /// The addressing [`OuterAddressing::to_origin`] packed.
    pub fn from_origin(origin: u128) -> OuterAddressing {
        OuterAddressing {
            src: Ipv4Addr::from((origin >> 64) as u32),
            dst: Ipv4Addr::from((origin >> 32) as u32),
            src_port: (origin >> 16) as u16,
            dst_port: origin as u16,
        }
    }
}

/// Writes the outer IPv4 + UDP header for a UDP payload of `payload_len` bytes.
///
/// DF is set (GWLB does not fragment), the IPv4 checksum is computed, the UDP checksum is 0
/// (allowed for IPv4 and accepted by GWLB). Returns `None` if the payload cannot fit in one
/// IPv4 packet.
pub fn emit(
    header: &mut [u8; OUTER_HEADER_LEN],
    addressing: &OuterAddressing,
    payload_len: usize,
) -> Option<()> {
    let (ip, udp) = header.split_at_mut(IPV4_HEADER_LEN);
    emit_udp(udp.try_into().expect("UDP_HEADER_LEN bytes"), addressing, payload_len)?;
    emit_ipv4(
        ip.try_into().expect("IPV4_HEADER_LEN bytes"),
        addressing.src,
        addressing.dst,
        payload_len,
    );
    Some(())
}

/// Writes the outer IPv4 header (DF, TTL 64, checksum) for a UDP payload of `payload_len`
/// bytes, which must fit ([`MAX_UDP_PAYLOAD`]).
pub fn emit_ipv4(ip: &mut [u8; IPV4_HEADER_LEN], src: Ipv4Addr, dst: Ipv4Addr, payload_len: usize) {
    debug_assert!(payload_len <= MAX_UDP_PAYLOAD);
    let total_len = (OUTER_HEADER_LEN + payload_len) as u16;
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&total_len.to_be_bytes());
    ip[4..6].copy_from_slice(&[0, 0]); // identification: unused with DF (RFC 6864)
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    ip[8] = TTL;
    ip[9] = PROTOCOL_UDP;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let checksum = ipv4_header_checksum(ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
}

/// Writes the outer UDP header alone for a payload of `payload_len` bytes (checksum 0), as
/// the send path hands it to the kernel; `None` if the payload cannot fit in one IPv4 packet.
pub fn emit_udp(
    udp: &mut [u8; UDP_HEADER_LEN],
    addressing: &OuterAddressing,
    payload_len: usize,
) -> Option<()> {
    if payload_len > MAX_UDP_PAYLOAD {
        return None;
    }
    let udp_len = (UDP_HEADER_LEN + payload_len) as u16;
    udp[0..2].copy_from_slice(&addressing.src_port.to_be_bytes());
    udp[2..4].copy_from_slice(&addressing.dst_port.to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    Some(())
}

pub const ETHERNET_HEADER_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;

/// The outer headers of a GENEVE packet read from an Ethernet frame (the `packet_ring` path,
/// where the kernel's IP and UDP layers never see it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivedOuter {
    /// GWLB's address and source port, the appliance's address and port.
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    /// Where the UDP payload (the GENEVE datagram, or a train of them) starts in the frame,
    /// and its length.
    pub payload_offset: usize,
    pub payload_len: usize,
}

/// Reads Ethernet, IPv4 and UDP as the kernel's `ip_rcv` and `udp_rcv` would: version, header
/// length, total length within the frame (Ethernet padding after it ignored), header
/// checksum, no fragment, UDP, UDP length within the IPv4 payload (bytes after it ignored),
/// and the UDP checksum unless it is 0 or `udp_checksum_known` (the kernel or the NIC
/// verified it, or the sender is local and left it to offload).
pub fn parse_frame(frame: &[u8], udp_checksum_known: bool) -> Result<ReceivedOuter, DropReason> {
    use DropReason::{OuterChecksum, OuterFragment, OuterMalformed};
    let be16 = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    if frame.len() < ETHERNET_HEADER_LEN + OUTER_HEADER_LEN || be16(12) != ETHERTYPE_IPV4 {
        return Err(OuterMalformed);
    }
    let ip_at = ETHERNET_HEADER_LEN;
    let ihl = usize::from(frame[ip_at] & 0x0f) * 4;
    let total = usize::from(be16(ip_at + 2));
    if frame[ip_at] >> 4 != 4
        || ihl < IPV4_HEADER_LEN
        || total < ihl + UDP_HEADER_LEN
        || ip_at + total > frame.len()
    {
        return Err(OuterMalformed);
    }
    if ones_complement_sum(&frame[ip_at..ip_at + ihl], 0) != 0xffff {
        return Err(OuterChecksum);
    }
    if be16(ip_at + 6) & 0x3fff != 0 {
        return Err(OuterFragment); // MF set or a fragment offset
    }
    if frame[ip_at + 9] != PROTOCOL_UDP {
        return Err(OuterMalformed);
    }
    let udp_at = ip_at + ihl;
    let udp_len = usize::from(be16(udp_at + 4));
    if udp_len < UDP_HEADER_LEN || udp_len > total - ihl {
        return Err(OuterMalformed);
    }
    let src =
        Ipv4Addr::new(frame[ip_at + 12], frame[ip_at + 13], frame[ip_at + 14], frame[ip_at + 15]);
    let dst =
        Ipv4Addr::new(frame[ip_at + 16], frame[ip_at + 17], frame[ip_at + 18], frame[ip_at + 19]);
    if !udp_checksum_known && be16(udp_at + 6) != 0 {
        // Pseudo header: addresses, protocol, UDP length.
        let mut pseudo = [0u8; 12];
        pseudo[..4].copy_from_slice(&src.octets());
        pseudo[4..8].copy_from_slice(&dst.octets());
        pseudo[9] = PROTOCOL_UDP;
        pseudo[10..].copy_from_slice(&(udp_len as u16).to_be_bytes());
        let sum =
            ones_complement_sum(&frame[udp_at..udp_at + udp_len], ones_complement_sum(&pseudo, 0));
        if sum != 0xffff {
            return Err(OuterChecksum);
        }
    }
    Ok(ReceivedOuter {
        src,
        dst,
        src_port: be16(udp_at),
        dst_port: be16(udp_at + 2),
        payload_offset: udp_at + UDP_HEADER_LEN,
        payload_len: udp_len - UDP_HEADER_LEN,
    })
}

/// The folded RFC 1071 sum of `bytes` (odd length padded with a zero byte) added to
/// `initial`; 0xffff over data that includes its correct checksum.
fn ones_complement_sum(bytes: &[u8], initial: u16) -> u16 {
    let mut sum = u64::from(initial);
    let mut words = bytes.chunks_exact(4);
    for word in &mut words {
        sum += u64::from(u32::from_be_bytes([word[0], word[1], word[2], word[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    sum += u64::from(u32::from_be_bytes(tail));
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// RFC 1071 checksum over a header whose checksum field is zero.
fn ipv4_header_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 =
        header.chunks_exact(2).map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emitted_header_matches_fixture() {
        let mut header = [0u8; OUTER_HEADER_LEN];
        let addressing = OuterAddressing {
            src: Ipv4Addr::new(10, 0, 1, 5),
            dst: Ipv4Addr::new(10, 0, 0, 9),
            src_port: 40000,
            dst_port: 6081,
        };
        emit(&mut header, &addressing, 100).unwrap();
        let expected: [u8; OUTER_HEADER_LEN] = [
            0x45, 0x00, 0x00, 0x80, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x25, 0x60, 10, 0, 1, 5,
            10, 0, 0, 9, // IPv4, total length 128, DF, TTL 64, UDP
            0x9c, 0x40, 0x17, 0xc1, 0x00, 0x6c, 0x00, 0x00, // UDP 40000 -> 6081, len 108
        ];
        assert_eq!(header, expected);
    }

    #[test]
    fn emitted_header_is_accepted_by_an_independent_parser() {
        let mut header = [0u8; OUTER_HEADER_LEN];
        let addressing = OuterAddressing {
            src: Ipv4Addr::new(192, 0, 2, 1),
            dst: Ipv4Addr::new(198, 51, 100, 7),
            src_port: 55555,
            dst_port: 6081,
        };
        let payload = [7u8; 333];
        emit(&mut header, &addressing, payload.len()).unwrap();
        let packet = [&header[..], &payload[..]].concat();
        let (ip, rest) = etherparse::Ipv4Header::from_slice(&packet).unwrap();
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
        assert_eq!(ip.source, addressing.src.octets());
        assert_eq!(ip.destination, addressing.dst.octets());
        assert!(ip.dont_fragment);
        let (udp, data) = etherparse::UdpHeader::from_slice(rest).unwrap();
        assert_eq!((udp.source_port, udp.destination_port), (55555, 6081));
        assert_eq!(usize::from(udp.length), 8 + payload.len());
        assert_eq!(data, &payload[..]);
    }

    #[test]
    fn udp_header_alone_is_the_full_headers_tail() {
        let addressing = OuterAddressing {
            src: Ipv4Addr::new(10, 0, 1, 5),
            dst: Ipv4Addr::new(10, 0, 0, 9),
            src_port: 40000,
            dst_port: 6081,
        };
        let (mut full, mut udp) = ([0u8; OUTER_HEADER_LEN], [0u8; UDP_HEADER_LEN]);
        emit(&mut full, &addressing, 100).unwrap();
        emit_udp(&mut udp, &addressing, 100).unwrap();
        assert_eq!(udp, full[IPV4_HEADER_LEN..]);
        assert!(emit_udp(&mut udp, &addressing, MAX_UDP_PAYLOAD + 1).is_none());
    }

    /// An Ethernet frame around `payload` with the headers `emit` writes, and a UDP checksum.
    fn frame(payload: &[u8]) -> Vec<u8> {
        let addressing = OuterAddressing {
            src: Ipv4Addr::new(10, 0, 0, 9),
            dst: Ipv4Addr::new(10, 0, 1, 5),
            src_port: 40000,
            dst_port: 6081,
        };
        let mut header = [0u8; OUTER_HEADER_LEN];
        emit(&mut header, &addressing, payload.len()).unwrap();
        let mut frame = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        frame.extend_from_slice(&header);
        frame.extend_from_slice(payload);
        let udp = etherparse::UdpHeader::with_ipv4_checksum(
            40000,
            6081,
            &etherparse::Ipv4Header::from_slice(&frame[14..]).unwrap().0,
            payload,
        )
        .unwrap();
        frame[14 + 26..14 + 28].copy_from_slice(&udp.checksum.to_be_bytes());
        frame
    }

    #[test]
    fn a_frame_parses_to_its_addresses_and_payload() {
        let payload: Vec<u8> = (0..101u8).collect();
        let mut bytes = frame(&payload);
        bytes.extend_from_slice(&[0; 7]); // Ethernet padding is not payload
        let outer = parse_frame(&bytes, false).unwrap();
        assert_eq!(
            (outer.src, outer.dst),
            (Ipv4Addr::new(10, 0, 0, 9), Ipv4Addr::new(10, 0, 1, 5))
        );
        assert_eq!((outer.src_port, outer.dst_port), (40000, 6081));
        assert_eq!(&bytes[outer.payload_offset..][..outer.payload_len], &payload[..]);
    }

    #[test]
    fn broken_outer_headers_are_dropped_with_their_reason() {
        let good = frame(&[7u8; 64]);
        let broken = |at: usize, value: u8| {
            let mut bytes = good.clone();
            bytes[at] = value;
            bytes
        };
        use DropReason::*;
        let cases: [(Vec<u8>, DropReason); 9] = [
            (good[..40].to_vec(), OuterMalformed), // shorter than the headers
            (broken(12, 0x86), OuterMalformed),    // not IPv4
            (broken(14, 0x65), OuterMalformed),    // IP version 6 in an IPv4 frame
            (broken(14, 0x44), OuterMalformed),    // header length 16
            (broken(17, 0xff), OuterMalformed),    // total length past the frame
            (broken(22, 0x41), OuterChecksum),     // TTL changed, checksum not
            (broken(14 + 26, good[40] ^ 1), OuterChecksum), // UDP checksum wrong
            (broken(14 + 25, 4), OuterMalformed),  // UDP length below its header
            (good[..good.len() - 1].to_vec(), OuterMalformed), // cut short
        ];
        for (i, (bytes, reason)) in cases.iter().enumerate() {
            assert_eq!(parse_frame(bytes, false), Err(*reason), "case {i}");
        }
        // A UDP checksum the kernel vouched for is not computed again; 0 means none.
        assert!(parse_frame(&broken(14 + 26, good[40] ^ 1), true).is_ok());
        let mut zero = good.clone();
        zero[14 + 26..14 + 28].copy_from_slice(&[0, 0]);
        assert!(parse_frame(&zero, false).is_ok());
        // A fragment (MF set; the header checksum fixed up).
        let mut fragment = good.clone();
        fragment[20] |= 0x20;
        fragment[24..26].copy_from_slice(&[0, 0]);
        let sum = !ones_complement_sum(&fragment[14..34], 0);
        fragment[24..26].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(parse_frame(&fragment, false), Err(OuterFragment));
        // No slice, however short or mangled, panics.
        for len in 0..good.len() {
            let _ = parse_frame(&good[..len], false);
            for byte in 0..good.len().min(50) {
                let mut bytes = good.clone();
                bytes[byte] = bytes[byte].wrapping_add(len as u8);
                let _ = parse_frame(&bytes[..len.max(byte + 1)], false);
            }
        }
    }

    #[test]
    fn payload_too_large_for_ipv4_is_refused() {
        let mut header = [0u8; OUTER_HEADER_LEN];
        let addressing = OuterAddressing {
            src: Ipv4Addr::LOCALHOST,
            dst: Ipv4Addr::LOCALHOST,
            src_port: 1,
            dst_port: 2,
        };
        assert!(emit(&mut header, &addressing, MAX_UDP_PAYLOAD).is_some());
        assert!(emit(&mut header, &addressing, MAX_UDP_PAYLOAD + 1).is_none());
    }
}
