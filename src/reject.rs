//! What `reject` sends: a TCP RST for TCP (RFC 9293 section 3.10.7.1), else an ICMP or
//! ICMPv6 "administratively prohibited" destination-unreachable, built in the reverse inner
//! direction and wrapped in the GENEVE header of the packet that triggered it (same options,
//! same flow cookie), so that GWLB delivers it inside the existing flow.
//! Must not depend on: sockets, flow state, policy.
//!
//! Never answers a RST, an ICMP error or a non-first fragment (RFC 1122 / RFC 4443 rules).
//! Writes into a caller-owned buffer; allocates nothing.

use std::net::IpAddr;

use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder, icmpv4, icmpv6};

use crate::packet::{InnerPacket, Transport, tcp_flags};

/// Enough for the largest reply: GENEVE header (up to 260 bytes) + an ICMPv6 error of at
/// most the IPv6 minimum MTU.
pub const MAX_REJECT_LEN: usize = 260 + 1280;
/// Bytes of the offending packet quoted in an ICMP error: IPv4 header + 64 bits (RFC 792);
/// for ICMPv6 as much as fits in 1280 bytes (RFC 4443).
const ICMPV6_MAX_QUOTE: usize = 1280 - 40 - 8;
const TTL: u8 = 64;

/// Writes the reply to the packet in `datagram` (GENEVE header of `geneve_header_len` bytes,
/// then the inner packet described by `inner`) into `out`; returns its length, or `None`
/// when the packet must not be answered.
pub fn build(
    datagram: &[u8],
    geneve_header_len: usize,
    inner: &InnerPacket,
    out: &mut [u8],
) -> Option<usize> {
    if inner.fragment.is_some_and(|f| !f.is_first()) {
        return None;
    }
    let (header, original) = datagram.split_at(geneve_header_len);
    let (head, body) = out.split_at_mut_checked(geneve_header_len)?;
    head.copy_from_slice(header);
    let capacity = body.len();
    let mut writer: &mut [u8] = body;
    match inner.transport {
        Transport::Tcp { src_port, dst_port, flags, seq, ack, payload_len } => {
            if flags & tcp_flags::RST != 0 {
                return None;
            }
            // RFC 9293: if the segment carried ACK, RST with seq = its ack; otherwise
            // RST+ACK with ack = its seq + its length (SYN and FIN count one each).
            let has_ack = flags & tcp_flags::ACK != 0;
            let reply_seq = if has_ack { ack } else { 0 };
            let tcp = ip_builder(inner.dst, inner.src)?.tcp(dst_port, src_port, reply_seq, 0).rst();
            let tcp = if has_ack {
                tcp
            } else {
                let consumed = payload_len
                    + u32::from(flags & tcp_flags::SYN != 0)
                    + u32::from(flags & tcp_flags::FIN != 0);
                tcp.ack(seq.wrapping_add(consumed))
            };
            tcp.write(&mut writer, &[]).ok()?;
        }
        Transport::Icmp { .. } if inner.is_icmp_error() => return None,
        _ => match (inner.dst, inner.src) {
            (IpAddr::V4(from), IpAddr::V4(to)) => {
                let ihl = usize::from(original[0] & 0x0f) * 4;
                let quote = &original[..original.len().min(ihl + 8)];
                PacketBuilder::ipv4(from.octets(), to.octets(), TTL)
                    .icmpv4(Icmpv4Type::DestinationUnreachable(
                        icmpv4::DestUnreachableHeader::FilterProhibited,
                    ))
                    .write(&mut writer, quote)
                    .ok()?;
            }
            (IpAddr::V6(from), IpAddr::V6(to)) => {
                let quote = &original[..original.len().min(ICMPV6_MAX_QUOTE)];
                PacketBuilder::ipv6(from.octets(), to.octets(), TTL)
                    .icmpv6(Icmpv6Type::DestinationUnreachable(
                        icmpv6::DestUnreachableCode::Prohibited,
                    ))
                    .write(&mut writer, quote)
                    .ok()?;
            }
            _ => return None,
        },
    }
    let written = capacity - writer.len();
    Some(geneve_header_len + written)
}

fn ip_builder(
    from: IpAddr,
    to: IpAddr,
) -> Option<etherparse::PacketBuilderStep<etherparse::IpHeaders>> {
    match (from, to) {
        (IpAddr::V4(f), IpAddr::V4(t)) => Some(PacketBuilder::ipv4(f.octets(), t.octets(), TTL)),
        (IpAddr::V6(f), IpAddr::V6(t)) => Some(PacketBuilder::ipv6(f.octets(), t.octets(), TTL)),
        _ => None,
    }
}
