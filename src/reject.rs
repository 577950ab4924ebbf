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
    // RFC 1122 3.2.2 and 4.2.3.10, RFC 4443 2.4 (e): never toward an address that is not one
    // host (a reply to a forged multicast or broadcast source would go to many), nor for a
    // packet sent to a group.
    if !is_one_host(inner.src) || is_group(inner.dst) {
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
            let consumed = payload_len
                + u32::from(flags & tcp_flags::SYN != 0)
                + u32::from(flags & tcp_flags::FIN != 0);
            let (reply_seq, reply_ack) =
                if has_ack { (ack, None) } else { (0, Some(seq.wrapping_add(consumed))) };
            let rst =
                Rst { from: inner.dst, to: inner.src, src_port: dst_port, dst_port: src_port };
            write_rst(&mut writer, rst, reply_seq, reply_ack)?;
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

/// The ends of a TCP RST: from `from:src_port` to `to:dst_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rst {
    pub from: IpAddr,
    pub to: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
}

/// Writes a RST with `seq` (and ACK `ack`, when given) after the GENEVE header `header`
/// into `out`; its length, or `None` when it must not be sent (toward an address that is
/// not one host's) or does not fit. For rejects that no single trigger describes: a pending
/// flow's, which resets both ends.
pub fn build_rst(
    header: &[u8],
    rst: Rst,
    seq: u32,
    ack: Option<u32>,
    out: &mut [u8],
) -> Option<usize> {
    if !is_one_host(rst.to) || is_group(rst.from) {
        return None;
    }
    let (head, body) = out.split_at_mut_checked(header.len())?;
    head.copy_from_slice(header);
    let capacity = body.len();
    let mut writer: &mut [u8] = body;
    write_rst(&mut writer, rst, seq, ack)?;
    Some(header.len() + capacity - writer.len())
}

fn write_rst(writer: &mut &mut [u8], rst: Rst, seq: u32, ack: Option<u32>) -> Option<()> {
    let tcp = ip_builder(rst.from, rst.to)?.tcp(rst.src_port, rst.dst_port, seq, 0).rst();
    let tcp = match ack {
        Some(ack) => tcp.ack(ack),
        None => tcp,
    };
    tcp.write(writer, &[]).ok()
}

/// Whether `address` can be one host's: not unspecified, loopback, multicast, limited
/// broadcast or IPv4's reserved 240/4.
fn is_one_host(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified() || v4.is_loopback() || v4.is_multicast() || v4.octets()[0] >= 240)
        }
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_loopback() || v6.is_multicast()),
    }
}

/// Whether `address` names a group of hosts (multicast, limited broadcast).
fn is_group(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_multicast(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::decode;
    use crate::wire::GwlbOptions;
    use crate::wire::geneve::encapsulate;

    fn syn(src: IpAddr, dst: IpAddr) -> Vec<u8> {
        let step = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
            _ => unreachable!(),
        };
        let mut inner = Vec::new();
        step.tcp(40_000, 22, 1, 1000).syn().write(&mut inner, &[]).unwrap();
        let gwlb = GwlbOptions { endpoint_id: None, attachment_id: None, flow_cookie: 9 };
        encapsulate(&inner, &gwlb)
    }

    fn answered(src: &str, dst: &str) -> bool {
        let datagram = syn(src.parse().unwrap(), dst.parse().unwrap());
        let packet = decode(&datagram).unwrap();
        let mut out = [0u8; MAX_REJECT_LEN];
        build(&datagram, packet.geneve_header_len, &packet.inner, &mut out).is_some()
    }

    #[test]
    fn rejects_go_only_to_one_host_for_packets_sent_to_one_host() {
        assert!(answered("10.0.1.10", "10.20.0.5"));
        assert!(answered("fd00::1", "fd00::2"));
        for src in
            ["224.0.0.9", "239.1.2.3", "255.255.255.255", "0.0.0.0", "127.0.0.1", "240.0.0.1"]
        {
            assert!(!answered(src, "10.20.0.5"), "a reject toward {src}");
        }
        for src in ["ff02::1", "::", "::1"] {
            assert!(!answered(src, "fd00::2"), "a reject toward {src}");
        }
        for dst in ["224.0.0.1", "255.255.255.255"] {
            assert!(!answered("10.0.1.10", dst), "a reject for a packet to {dst}");
        }
        assert!(!answered("fd00::1", "ff02::1"));
    }
}
