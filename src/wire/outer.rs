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
