//! Facts about the inner packet that the rest of the data plane decides on: addresses,
//! protocol, ports or ICMP type, TCP flags and sequence numbers, and fragment position.
//!
//! The IP layer (IPv4 with options, IPv6 with its extension-header chain) is sliced by
//! etherparse; the few transport fields needed are read here. Parsing is strict: the inner
//! packet must fill the GENEVE payload exactly, because GWLB never pads, and a length field
//! that disagrees with the bytes is a sign of a broken or hostile sender.
//!
//! Must not depend on: sockets, async, logging, allocation.

use std::net::IpAddr;

use etherparse::err::{LenError, ip::SliceError};
use etherparse::{IpSlice, Ipv6ExtensionSlice, Ipv6ExtensionsSlice, LaxIpSlice, LenSource};

use crate::wire::DropReason;
use crate::wire::geneve::{PROTOCOL_IPV4, PROTOCOL_IPV6};

/// IANA protocol numbers used here.
pub mod ip_proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;

    /// The name policy files, the flow log and `explain` use for a protocol.
    pub fn name(protocol: u8) -> &'static str {
        match protocol {
            TCP => "tcp",
            UDP => "udp",
            ICMP => "icmp",
            ICMPV6 => "icmpv6",
            _ => "other",
        }
    }
}

/// TCP header flag bits (byte 13).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// The transport-layer facts of an inner packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        src_port: u16,
        dst_port: u16,
        /// Flag bits of byte 13; 0 when a first fragment is too short to carry them.
        flags: u8,
        seq: u32,
        ack: u32,
        /// TCP payload bytes in this packet (0 for a first fragment, whose rest is elsewhere).
        payload_len: u32,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    /// ICMP or ICMPv6 (told apart by [`InnerPacket::protocol`]).
    Icmp {
        icmp_type: u8,
        code: u8,
        /// Echo identifier for echo request/reply, else 0.
        ident: u16,
    },
    /// A protocol without ports that we do not look into.
    Other,
    /// A non-first fragment: its transport header is in the first fragment.
    Fragment,
}

impl Transport {
    /// The two numbers a flow is told apart by besides its addresses and protocol: the TCP or
    /// UDP ports, the echo identifier twice for ICMP echo (a ping and its reply are one flow),
    /// 0 for everything else.
    pub fn flow_ports(&self) -> (u16, u16) {
        match *self {
            Transport::Tcp { src_port, dst_port, .. } | Transport::Udp { src_port, dst_port } => {
                (src_port, dst_port)
            }
            Transport::Icmp { ident, .. } => (ident, ident),
            Transport::Other | Transport::Fragment => (0, 0),
        }
    }

    /// The TCP flags (0 for anything but TCP).
    pub fn tcp_flags(&self) -> u8 {
        match self {
            Transport::Tcp { flags, .. } => *flags,
            _ => 0,
        }
    }
}

/// Whether an ICMP (`protocol` 1) or ICMPv6 (58) type is an error message, which quotes the
/// packet that caused it and must never be answered by another error (RFC 1122 3.2.2, RFC 4443
/// 2.4): for ICMPv4 destination unreachable, source quench, redirect, time exceeded and
/// parameter problem; for ICMPv6 every type below 128 (RFC 4443 2.1).
pub fn is_icmp_error(protocol: u8, icmp_type: u8) -> bool {
    match protocol {
        ip_proto::ICMP => matches!(icmp_type, 3 | 4 | 5 | 11 | 12),
        ip_proto::ICMPV6 => icmp_type < 128,
        _ => false,
    }
}

/// Whether TCP `flags` of a packet of `protocol` open a connection: SYN without ACK, which is
/// never a reply.
pub fn is_pure_syn(protocol: u8, flags: u8) -> bool {
    protocol == ip_proto::TCP && flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
}

/// Whether an ICMP or ICMPv6 type is a destination unreachable error.
pub fn is_icmp_unreachable(protocol: u8, icmp_type: u8) -> bool {
    matches!((protocol, icmp_type), (ip_proto::ICMP, 3) | (ip_proto::ICMPV6, 1))
}

/// Whether an ICMP or ICMPv6 type is an echo request or reply (which carry an identifier).
pub fn is_icmp_echo(protocol: u8, icmp_type: u8) -> bool {
    matches!((protocol, icmp_type), (ip_proto::ICMP, 0 | 8) | (ip_proto::ICMPV6, 128 | 129))
}

/// Position of a fragment in its datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// IPv4 identification (16 bits) or IPv6 fragment identification.
    pub id: u32,
    /// Offset in 8-byte units; 0 for the first fragment.
    pub offset: u16,
    pub more: bool,
}

impl Fragment {
    pub fn is_first(&self) -> bool {
        self.offset == 0
    }
}

/// What the data plane knows about an inner packet after one pass over its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerPacket {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Upper-layer protocol number after any IPv6 extension headers.
    pub protocol: u8,
    pub transport: Transport,
    /// Set when the packet is a fragment (first or later).
    pub fragment: Option<Fragment>,
    /// Length of the whole inner IP packet.
    pub len: usize,
}

impl InnerPacket {
    /// Parses the inner IP packet of a GENEVE payload with the given protocol type.
    pub fn parse(protocol_type: u16, bytes: &[u8]) -> Result<InnerPacket, DropReason> {
        let version = bytes.first().ok_or(DropReason::InnerTruncated)? >> 4;
        let expected_version = match protocol_type {
            PROTOCOL_IPV4 => 4,
            PROTOCOL_IPV6 => 6,
            _ => return Err(DropReason::GeneveProtocol),
        };
        if version != expected_version {
            return Err(DropReason::InnerVersionMismatch);
        }
        let ip = IpSlice::from_slice(bytes).map_err(slice_error_reason)?;
        let (announced_len, fragment) = match &ip {
            IpSlice::Ipv4(v4) => {
                let header = v4.header();
                let fragment = header.is_fragmenting_payload().then(|| Fragment {
                    id: u32::from(header.identification()),
                    offset: header.fragments_offset().value(),
                    more: header.more_fragments(),
                });
                (usize::from(header.total_len()), fragment)
            }
            IpSlice::Ipv6(v6) => {
                let fragment = ipv6_fragment(v6.extensions());
                (40 + usize::from(v6.header().payload_length()), fragment)
            }
        };
        if announced_len != bytes.len() {
            return Err(DropReason::InnerLengthMismatch);
        }
        let payload = ip.payload();
        let protocol = payload.ip_number.0;
        let transport = match fragment {
            // RFC 3128: a TCP fragment at offset 8 bytes can overwrite the flags and ports
            // of a first fragment that was judged already.
            Some(f) if protocol == ip_proto::TCP && f.offset == 1 => {
                return Err(DropReason::TinyFragment);
            }
            Some(f) if !f.is_first() => Transport::Fragment,
            _ => {
                let extent = if fragment.is_some() { Extent::FirstFragment } else { Extent::Whole };
                parse_transport(protocol, payload.payload, extent)?
            }
        };
        Ok(InnerPacket {
            src: ip.source_addr(),
            dst: ip.destination_addr(),
            protocol,
            transport,
            fragment,
            len: bytes.len(),
        })
    }

    /// Whether this is an ICMP or ICMPv6 error message (see [`is_icmp_error`]).
    pub fn is_icmp_error(&self) -> bool {
        matches!(self.transport, Transport::Icmp { icmp_type, .. }
            if is_icmp_error(self.protocol, icmp_type))
    }

    /// The packet an ICMP or ICMPv6 error quotes, from `bytes`, the error packet this
    /// `InnerPacket` was parsed from. A quote holds the offending packet's IP header and at
    /// least the first 8 bytes of what followed (RFC 792; ICMPv6 as much as fits in 1,280
    /// bytes), so its length fields overstate what is there: it is read as a first fragment
    /// is, leading transport fields only, and `len` is what the quote holds. `None` when this
    /// is no ICMP error or the quote is too short to name a flow.
    pub fn quoted(&self, bytes: &[u8]) -> Option<InnerPacket> {
        if !self.is_icmp_error() || self.fragment.is_some() {
            return None;
        }
        let error = IpSlice::from_slice(bytes).ok()?;
        // After the ICMP header: type, code, checksum and 4 bytes of type-specific data.
        let quote = error.payload().payload.get(8..)?;
        let (ip, _) = LaxIpSlice::from_slice(quote).ok()?;
        let fragment = match &ip {
            LaxIpSlice::Ipv4(v4) => {
                let header = v4.header();
                header.is_fragmenting_payload().then(|| Fragment {
                    id: u32::from(header.identification()),
                    offset: header.fragments_offset().value(),
                    more: header.more_fragments(),
                })
            }
            LaxIpSlice::Ipv6(v6) => ipv6_fragment(v6.extensions()),
        };
        let payload = ip.payload();
        let protocol = payload.ip_number.0;
        let transport = match fragment {
            Some(f) if !f.is_first() => Transport::Fragment,
            _ => parse_transport(protocol, payload.payload, Extent::Quote).ok()?,
        };
        Some(InnerPacket {
            src: ip.source_addr(),
            dst: ip.destination_addr(),
            protocol,
            transport,
            fragment,
            len: quote.len(),
        })
    }

    /// Source and destination ports for TCP and UDP, `None` otherwise.
    pub fn ports(&self) -> Option<(u16, u16)> {
        match self.transport {
            Transport::Tcp { src_port, dst_port, .. } | Transport::Udp { src_port, dst_port } => {
                Some((src_port, dst_port))
            }
            _ => None,
        }
    }
}

/// The fragment header of an IPv6 extension chain, if it fragments the payload.
fn ipv6_fragment(extensions: &Ipv6ExtensionsSlice<'_>) -> Option<Fragment> {
    extensions.clone().into_iter().find_map(|ext| match ext {
        Ipv6ExtensionSlice::Fragment(f) if f.is_fragmenting_payload() => Some(Fragment {
            id: f.identification(),
            offset: f.fragment_offset().value(),
            more: f.more_fragments(),
        }),
        _ => None,
    })
}

fn slice_error_reason(error: SliceError) -> DropReason {
    match error {
        SliceError::Len(LenError { len_source: LenSource::Slice, .. }) => {
            DropReason::InnerTruncated
        }
        // A length field (IPv4 total length, IPv6 payload length, extension header length)
        // that contradicts the headers it covers.
        SliceError::Len(_) => DropReason::InnerHeaderInvalid,
        SliceError::IpHeaders(_) => DropReason::InnerHeaderInvalid,
    }
}

/// The big-endian u16 at `at`. Inlined always: as a call it costs more than the read (the
/// decoder's instruction count went up by a third when the compiler stopped inlining it).
#[inline(always)]
fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// The big-endian u32 at `at` (inlined always, as [`be16`]).
#[inline(always)]
fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// How much of a transport header's datagram the bytes hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extent {
    /// The whole datagram: every length field is checked.
    Whole,
    /// The first fragment: the rest of the datagram is elsewhere, so lengths cannot be
    /// checked, but a TCP header must be whole (RFC 1858: else the policy cannot see its
    /// flags, and a later fragment may carry them).
    FirstFragment,
    /// The start of a packet quoted by an ICMP error (at least 8 bytes of it): only the
    /// leading fields are read.
    Quote,
}

/// Reads the transport header of `l4`, which holds `extent` of its datagram.
fn parse_transport(protocol: u8, l4: &[u8], extent: Extent) -> Result<Transport, DropReason> {
    let first_fragment = extent != Extent::Whole;
    match protocol {
        ip_proto::TCP => {
            if extent == Extent::FirstFragment
                && (l4.len() < 20 || l4.len() < usize::from(l4[12] >> 4) * 4)
            {
                return Err(DropReason::TinyFragment);
            }
            if extent == Extent::Quote {
                if l4.len() < 4 {
                    return Err(DropReason::InnerTruncated);
                }
                let full = l4.len() >= 14;
                return Ok(Transport::Tcp {
                    src_port: be16(l4, 0),
                    dst_port: be16(l4, 2),
                    flags: if full { l4[13] } else { 0 },
                    seq: if full { be32(l4, 4) } else { 0 },
                    ack: if full { be32(l4, 8) } else { 0 },
                    payload_len: 0,
                });
            }
            if l4.len() < 20 {
                return Err(DropReason::InnerTruncated);
            }
            let header_len = usize::from(l4[12] >> 4) * 4;
            if header_len < 20 {
                return Err(DropReason::InnerHeaderInvalid);
            }
            if header_len > l4.len() {
                return Err(DropReason::InnerTruncated);
            }
            Ok(Transport::Tcp {
                src_port: be16(l4, 0),
                dst_port: be16(l4, 2),
                flags: l4[13],
                seq: be32(l4, 4),
                ack: be32(l4, 8),
                payload_len: (l4.len() - header_len) as u32,
            })
        }
        ip_proto::UDP => {
            if l4.len() < 8 {
                return Err(DropReason::InnerTruncated);
            }
            if !first_fragment {
                let udp_len = usize::from(be16(l4, 4));
                if udp_len < 8 {
                    return Err(DropReason::InnerHeaderInvalid);
                }
                if udp_len > l4.len() {
                    return Err(DropReason::InnerTruncated);
                }
                if udp_len < l4.len() {
                    return Err(DropReason::InnerLengthMismatch);
                }
            }
            Ok(Transport::Udp { src_port: be16(l4, 0), dst_port: be16(l4, 2) })
        }
        ip_proto::ICMP | ip_proto::ICMPV6 => {
            if l4.len() < 4 {
                return Err(DropReason::InnerTruncated);
            }
            let (icmp_type, code) = (l4[0], l4[1]);
            let ident = if is_icmp_echo(protocol, icmp_type) {
                if l4.len() < 8 {
                    return Err(DropReason::InnerTruncated);
                }
                be16(l4, 4)
            } else {
                0
            };
            Ok(Transport::Icmp { icmp_type, code, ident })
        }
        _ => Ok(Transport::Other),
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Byte fixtures of inner packets, written out by hand so that a parser bug cannot hide
    //! behind a builder that shares it.

    /// IPv4 TCP SYN 10.0.1.10:40000 -> 10.20.0.5:3306, seq 1000, no payload.
    pub const IPV4_TCP_SYN: [u8; 40] = [
        0x45, 0x00, 0x00, 0x28, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 10, 0, 1, 10, 10,
        20, 0, 5, // IPv4
        0x9c, 0x40, 0x0c, 0xea, 0x00, 0x00, 0x03, 0xe8, 0x00, 0x00, 0x00, 0x00, 0x50, 0x02, 0xff,
        0xff, 0x00, 0x00, 0x00, 0x00, // TCP
    ];

    /// IPv4 with 4 bytes of options (NOP NOP NOP EOL), UDP 10.0.1.11:5353 -> 10.0.2.2:53,
    /// 4 bytes of payload.
    pub const IPV4_OPTIONS_UDP: [u8; 36] = [
        0x46, 0x00, 0x00, 0x24, 0x00, 0x01, 0x00, 0x00, 0x40, 0x11, 0x00, 0x00, 10, 0, 1, 11, 10,
        0, 2, 2, 0x01, 0x01, 0x01, 0x00, // IPv4 + options
        0x14, 0xe9, 0x00, 0x35, 0x00, 0x0c, 0x00, 0x00, 0xde, 0xad, 0xbe, 0xef, // UDP
    ];

    /// IPv6 fd00::1 -> fd00::2 with a hop-by-hop header (PadN), then TCP 443 -> 50000 SYN-ACK.
    pub const IPV6_HOPBYHOP_TCP: [u8; 68] = [
        0x60, 0x00, 0x00, 0x00, 0x00, 0x1c, 0x00, 0x40, // IPv6: payload 28, next HBH, hop 64
        0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, // src
        0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, // dst
        0x06, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, // HBH: next TCP, len 0, PadN(4)
        0x01, 0xbb, 0xc3, 0x50, 0x00, 0x00, 0x00, 0x64, 0x00, 0x00, 0x03, 0xe9, 0x50, 0x12, 0xff,
        0xff, 0x00, 0x00, 0x00, 0x00, // TCP
    ];

    /// IPv4 ICMP echo request 10.0.1.10 -> 10.20.0.5, id 0x0101, seq 1.
    pub const IPV4_ICMP_ECHO: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, 0x00, 0x02, 0x00, 0x00, 0x40, 0x01, 0x00, 0x00, 10, 0, 1, 10, 10,
        20, 0, 5, // IPv4
        0x08, 0x00, 0x00, 0x00, 0x01, 0x01, 0x00, 0x01, // ICMP echo
    ];

    /// First fragment of a UDP datagram (MF set, offset 0), 16 bytes of its payload.
    pub const IPV4_UDP_FIRST_FRAGMENT: [u8; 36] = [
        0x45, 0x00, 0x00, 0x24, 0xab, 0xcd, 0x20, 0x00, 0x40, 0x11, 0x00, 0x00, 10, 0, 1, 10, 10,
        20, 0, 5, // IPv4: id 0xabcd, MF
        0x30, 0x39, 0x00, 0x35, 0x04, 0x00, 0x00, 0x00, 1, 2, 3, 4, 5, 6, 7,
        8, // UDP len 1024
    ];

    /// A later fragment (offset 2 = 16 bytes) of the same datagram.
    pub const IPV4_LATER_FRAGMENT: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, 0xab, 0xcd, 0x20, 0x02, 0x40, 0x11, 0x00, 0x00, 10, 0, 1, 10, 10,
        20, 0, 5, // IPv4: id 0xabcd, MF, offset 2
        9, 10, 11, 12, 13, 14, 15, 16,
    ];

    /// ICMP destination unreachable (filter prohibited) 10.20.0.1 -> 10.0.1.10 quoting the
    /// first 28 bytes of [`IPV4_TCP_SYN`] (IPv4 header + 8 bytes, RFC 792), whose total length
    /// still says 40.
    pub const IPV4_UNREACHABLE_QUOTING_SYN: [u8; 56] = [
        0x45, 0x00, 0x00, 0x38, 0x00, 0x03, 0x00, 0x00, 0x40, 0x01, 0x00, 0x00, 10, 20, 0, 1, 10,
        0, 1, 10, // IPv4: total 56, ICMP
        0x03, 0x0d, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // ICMP type 3 code 13, unused
        0x45, 0x00, 0x00, 0x28, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 10, 0, 1, 10, 10,
        20, 0, 5, // quoted IPv4
        0x9c, 0x40, 0x0c, 0xea, 0x00, 0x00, 0x03, 0xe8, // quoted TCP: ports and seq only
    ];

    /// ICMPv6 packet too big (MTU 1280) fd00::2 -> fd00::1 quoting the first 48 bytes of a UDP
    /// datagram fd00::1:5353 -> fd00::2:53 that announced 1,400 payload bytes.
    pub const IPV6_TOO_BIG_QUOTING_UDP: [u8; 96] = [
        0x60, 0x00, 0x00, 0x00, 0x00, 0x38, 0x3a, 0x40, // IPv6: payload 56, ICMPv6
        0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, // src
        0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, // dst
        0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, // ICMPv6 type 2, MTU 1280
        0x60, 0x00, 0x00, 0x00, 0x05, 0x78, 0x11, 0x40, // quoted IPv6: payload 1400, UDP
        0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, // src
        0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, // dst
        0x14, 0xe9, 0x00, 0x35, 0x05, 0x78, 0x00, 0x00, // quoted UDP 5353 -> 53
    ];

    /// IPv6 later fragment: fragment header with offset 1, id 0x11223344, UDP inside.
    pub const IPV6_LATER_FRAGMENT: [u8; 56] = [
        0x60, 0x00, 0x00, 0x00, 0x00, 0x10, 0x2c, 0x40, // IPv6: payload 16, next Fragment
        0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, // src
        0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, // dst
        0x11, 0x00, 0x00, 0x08, 0x11, 0x22, 0x33, 0x44, // frag: next UDP, offset 1, no MF
        1, 2, 3, 4, 5, 6, 7, 8,
    ];
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn icmp_errors_and_echoes_are_told_by_type() {
        for t in [3, 4, 5, 11, 12] {
            assert!(is_icmp_error(ip_proto::ICMP, t), "ICMP type {t}");
        }
        for t in [0, 8, 9, 10, 13, 14, 255] {
            assert!(!is_icmp_error(ip_proto::ICMP, t), "ICMP type {t}");
        }
        // RFC 4443: the whole range below 128 is the error class.
        for t in [0, 1, 2, 3, 4, 100, 127] {
            assert!(is_icmp_error(ip_proto::ICMPV6, t), "ICMPv6 type {t}");
        }
        for t in [128, 129, 133, 135, 255] {
            assert!(!is_icmp_error(ip_proto::ICMPV6, t), "ICMPv6 type {t}");
        }
        assert!(!is_icmp_error(ip_proto::TCP, 3));
        assert!(is_icmp_echo(ip_proto::ICMP, 0) && is_icmp_echo(ip_proto::ICMP, 8));
        assert!(is_icmp_echo(ip_proto::ICMPV6, 128) && is_icmp_echo(ip_proto::ICMPV6, 129));
        assert!(!is_icmp_echo(ip_proto::ICMP, 128) && !is_icmp_echo(ip_proto::ICMPV6, 8));
        assert!(is_icmp_unreachable(ip_proto::ICMP, 3) && is_icmp_unreachable(ip_proto::ICMPV6, 1));
        assert!(
            !is_icmp_unreachable(ip_proto::ICMP, 1) && !is_icmp_unreachable(ip_proto::ICMPV6, 3)
        );
    }

    #[test]
    fn flow_ports_are_ports_or_the_echo_identifier() {
        let syn = InnerPacket::parse(PROTOCOL_IPV4, &IPV4_TCP_SYN).unwrap();
        assert_eq!(syn.transport.flow_ports(), (40000, 3306));
        assert_eq!(syn.transport.tcp_flags(), tcp_flags::SYN);
        let echo = InnerPacket::parse(PROTOCOL_IPV4, &IPV4_ICMP_ECHO).unwrap();
        assert_eq!(echo.transport.flow_ports(), (0x0101, 0x0101));
        assert_eq!(echo.transport.tcp_flags(), 0);
        let later = InnerPacket::parse(PROTOCOL_IPV4, &IPV4_LATER_FRAGMENT).unwrap();
        assert_eq!(later.transport.flow_ports(), (0, 0));
        let error = InnerPacket::parse(PROTOCOL_IPV4, &IPV4_UNREACHABLE_QUOTING_SYN).unwrap();
        assert_eq!(error.transport.flow_ports(), (0, 0));
    }

    #[test]
    fn an_icmp_error_quotes_the_packet_that_caused_it() {
        let error = InnerPacket::parse(PROTOCOL_IPV4, &IPV4_UNREACHABLE_QUOTING_SYN).unwrap();
        assert!(error.is_icmp_error());
        let quoted = error.quoted(&IPV4_UNREACHABLE_QUOTING_SYN).unwrap();
        assert_eq!(quoted.src, IpAddr::V4(Ipv4Addr::new(10, 0, 1, 10)));
        assert_eq!(quoted.dst, IpAddr::V4(Ipv4Addr::new(10, 20, 0, 5)));
        assert_eq!(quoted.protocol, ip_proto::TCP);
        assert_eq!(quoted.transport.flow_ports(), (40000, 3306));
        assert_eq!(quoted.len, 28);

        let error = InnerPacket::parse(PROTOCOL_IPV6, &IPV6_TOO_BIG_QUOTING_UDP).unwrap();
        assert!(error.is_icmp_error());
        let quoted = error.quoted(&IPV6_TOO_BIG_QUOTING_UDP).unwrap();
        assert_eq!(quoted.src, IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)));
        assert_eq!(quoted.protocol, ip_proto::UDP);
        assert_eq!(quoted.transport, Transport::Udp { src_port: 5353, dst_port: 53 });
    }

    #[test]
    fn what_quotes_nothing_usable_has_no_quoted_packet() {
        // Not an error.
        let echo = InnerPacket::parse(PROTOCOL_IPV4, &IPV4_ICMP_ECHO).unwrap();
        assert_eq!(echo.quoted(&IPV4_ICMP_ECHO), None);
        // A quote cut inside the IP header or before the ports.
        for cut in [28, 30, 47, 51] {
            let mut bytes = IPV4_UNREACHABLE_QUOTING_SYN[..cut].to_vec();
            bytes[3] = cut as u8;
            let error = InnerPacket::parse(PROTOCOL_IPV4, &bytes).unwrap();
            assert_eq!(error.quoted(&bytes), None, "cut at {cut}");
        }
    }

    #[test]
    fn ipv4_tcp_syn_is_parsed() {
        let p = InnerPacket::parse(PROTOCOL_IPV4, &IPV4_TCP_SYN).unwrap();
        assert_eq!(p.src, IpAddr::V4(Ipv4Addr::new(10, 0, 1, 10)));
        assert_eq!(p.dst, IpAddr::V4(Ipv4Addr::new(10, 20, 0, 5)));
        assert_eq!(p.protocol, ip_proto::TCP);
        assert_eq!(
            p.transport,
            Transport::Tcp {
                src_port: 40000,
                dst_port: 3306,
                flags: tcp_flags::SYN,
                seq: 1000,
                ack: 0,
                payload_len: 0
            }
        );
        assert_eq!(p.fragment, None);
        assert_eq!(p.len, 40);
        assert_eq!(p.ports(), Some((40000, 3306)));
    }

    #[test]
    fn ipv4_with_options_and_udp_is_parsed() {
        let p = InnerPacket::parse(PROTOCOL_IPV4, &IPV4_OPTIONS_UDP).unwrap();
        assert_eq!(p.transport, Transport::Udp { src_port: 5353, dst_port: 53 });
        assert_eq!(p.dst, IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2)));
    }

    #[test]
    fn ipv6_extension_headers_are_walked() {
        let p = InnerPacket::parse(PROTOCOL_IPV6, &IPV6_HOPBYHOP_TCP).unwrap();
        assert_eq!(p.src, IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)));
        assert_eq!(p.protocol, ip_proto::TCP);
        match p.transport {
            Transport::Tcp {
                src_port: 443, dst_port: 50000, flags, seq: 100, ack: 1001, ..
            } => {
                assert_eq!(flags, tcp_flags::SYN | tcp_flags::ACK)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn icmp_echo_identifier_is_read() {
        let p = InnerPacket::parse(PROTOCOL_IPV4, &IPV4_ICMP_ECHO).unwrap();
        assert_eq!(p.transport, Transport::Icmp { icmp_type: 8, code: 0, ident: 0x0101 });
        assert_eq!(p.ports(), None);
    }

    #[test]
    fn first_fragment_has_ports_later_fragment_has_none() {
        let first = InnerPacket::parse(PROTOCOL_IPV4, &IPV4_UDP_FIRST_FRAGMENT).unwrap();
        assert_eq!(first.transport, Transport::Udp { src_port: 12345, dst_port: 53 });
        assert_eq!(first.fragment, Some(Fragment { id: 0xabcd, offset: 0, more: true }));
        let later = InnerPacket::parse(PROTOCOL_IPV4, &IPV4_LATER_FRAGMENT).unwrap();
        assert_eq!(later.transport, Transport::Fragment);
        assert_eq!(later.fragment, Some(Fragment { id: 0xabcd, offset: 2, more: true }));
        assert_eq!(later.protocol, ip_proto::UDP);
    }

    /// [`IPV4_TCP_SYN`] cut into fragments: `tcp` bytes of its TCP header at fragment offset
    /// `offset` (8-byte units), the IPv4 total length fitted.
    fn tcp_fragment(offset: u16, more: bool, tcp: std::ops::Range<usize>) -> Vec<u8> {
        let mut bytes = [&IPV4_TCP_SYN[..20], &IPV4_TCP_SYN[20 + tcp.start..20 + tcp.end]].concat();
        let total = bytes.len() as u16;
        bytes[2..4].copy_from_slice(&total.to_be_bytes());
        let flags_offset = offset | if more { 0x2000 } else { 0 };
        bytes[6..8].copy_from_slice(&flags_offset.to_be_bytes());
        bytes
    }

    #[test]
    fn tcp_fragments_that_could_hide_the_header_are_tiny() {
        // RFC 1858: a first fragment with 8 bytes of TCP (ports and sequence, no flags).
        let tiny = tcp_fragment(0, true, 0..8);
        assert_eq!(InnerPacket::parse(PROTOCOL_IPV4, &tiny), Err(DropReason::TinyFragment));
        // A first fragment with 19 bytes of a 20-byte header, and one whose data offset says
        // 32 bytes but that holds 20.
        let short = tcp_fragment(0, true, 0..19);
        assert_eq!(InnerPacket::parse(PROTOCOL_IPV4, &short), Err(DropReason::TinyFragment));
        let mut options_cut = tcp_fragment(0, true, 0..20);
        options_cut[20 + 12] = 0x80;
        assert_eq!(InnerPacket::parse(PROTOCOL_IPV4, &options_cut), Err(DropReason::TinyFragment));
        // RFC 3128: a fragment at offset 8 bytes, which would overwrite the flags.
        let overlap = tcp_fragment(1, false, 8..16);
        assert_eq!(InnerPacket::parse(PROTOCOL_IPV4, &overlap), Err(DropReason::TinyFragment));
        // A first fragment holding the whole header, and later fragments further on, are fine.
        let whole = InnerPacket::parse(PROTOCOL_IPV4, &tcp_fragment(0, true, 0..20)).unwrap();
        assert_eq!(whole.transport.tcp_flags(), tcp_flags::SYN);
        let later = InnerPacket::parse(PROTOCOL_IPV4, &tcp_fragment(3, false, 0..8)).unwrap();
        assert_eq!(later.transport, Transport::Fragment);
        // Offset 8 bytes is only suspicious for TCP.
        let mut udp = IPV4_LATER_FRAGMENT;
        udp[7] = 1;
        assert!(InnerPacket::parse(PROTOCOL_IPV4, &udp).is_ok());
    }

    #[test]
    fn ipv6_fragment_header_is_found() {
        let p = InnerPacket::parse(PROTOCOL_IPV6, &IPV6_LATER_FRAGMENT).unwrap();
        assert_eq!(p.fragment, Some(Fragment { id: 0x1122_3344, offset: 1, more: false }));
        assert_eq!(p.transport, Transport::Fragment);
        assert_eq!(p.protocol, ip_proto::UDP);
    }

    #[test]
    fn empty_inner_packet_is_truncated() {
        assert_eq!(InnerPacket::parse(PROTOCOL_IPV4, &[]), Err(DropReason::InnerTruncated));
    }

    #[test]
    fn version_must_match_protocol_type() {
        assert_eq!(
            InnerPacket::parse(PROTOCOL_IPV6, &IPV4_TCP_SYN),
            Err(DropReason::InnerVersionMismatch)
        );
        assert_eq!(
            InnerPacket::parse(PROTOCOL_IPV4, &IPV6_HOPBYHOP_TCP),
            Err(DropReason::InnerVersionMismatch)
        );
    }

    #[test]
    fn unknown_protocol_type_is_a_geneve_error() {
        assert_eq!(InnerPacket::parse(0x6558, &IPV4_TCP_SYN), Err(DropReason::GeneveProtocol));
    }

    #[test]
    fn cut_packets_are_truncated() {
        for len in 1..IPV4_TCP_SYN.len() {
            let err = InnerPacket::parse(PROTOCOL_IPV4, &IPV4_TCP_SYN[..len]).unwrap_err();
            assert_eq!(err, DropReason::InnerTruncated, "len {len}");
        }
        for len in 1..IPV6_HOPBYHOP_TCP.len() {
            let err = InnerPacket::parse(PROTOCOL_IPV6, &IPV6_HOPBYHOP_TCP[..len]).unwrap_err();
            assert_eq!(err, DropReason::InnerTruncated, "len {len}");
        }
    }

    #[test]
    fn trailing_bytes_are_a_length_mismatch() {
        let long = [&IPV4_TCP_SYN[..], &[0, 0]].concat();
        assert_eq!(InnerPacket::parse(PROTOCOL_IPV4, &long), Err(DropReason::InnerLengthMismatch));
        let long6 = [&IPV6_HOPBYHOP_TCP[..], &[0]].concat();
        assert_eq!(InnerPacket::parse(PROTOCOL_IPV6, &long6), Err(DropReason::InnerLengthMismatch));
    }

    #[test]
    fn invalid_header_fields_are_rejected() {
        let mut ihl = IPV4_TCP_SYN;
        ihl[0] = 0x44; // IHL 4 < 5
        assert_eq!(InnerPacket::parse(PROTOCOL_IPV4, &ihl), Err(DropReason::InnerHeaderInvalid));
        let mut total = IPV4_TCP_SYN;
        total[3] = 16; // total length smaller than the header
        assert_eq!(InnerPacket::parse(PROTOCOL_IPV4, &total), Err(DropReason::InnerHeaderInvalid));
        let mut offset = IPV4_TCP_SYN;
        offset[32] = 0x40; // TCP data offset 4 < 5
        assert_eq!(InnerPacket::parse(PROTOCOL_IPV4, &offset), Err(DropReason::InnerHeaderInvalid));
        let mut offset_past_end = IPV4_TCP_SYN;
        offset_past_end[32] = 0x60; // data offset 6: 24 bytes, only 20 present
        assert_eq!(
            InnerPacket::parse(PROTOCOL_IPV4, &offset_past_end),
            Err(DropReason::InnerTruncated)
        );
    }

    #[test]
    fn udp_length_field_must_match() {
        let mut short = IPV4_OPTIONS_UDP;
        short[29] = 0x0a; // UDP length 10 < 12 bytes present
        assert_eq!(InnerPacket::parse(PROTOCOL_IPV4, &short), Err(DropReason::InnerLengthMismatch));
        let mut long = IPV4_OPTIONS_UDP;
        long[29] = 0x10; // 16 > 12
        assert_eq!(InnerPacket::parse(PROTOCOL_IPV4, &long), Err(DropReason::InnerTruncated));
        let mut tiny = IPV4_OPTIONS_UDP;
        tiny[29] = 0x04;
        assert_eq!(InnerPacket::parse(PROTOCOL_IPV4, &tiny), Err(DropReason::InnerHeaderInvalid));
    }

    #[test]
    fn hop_by_hop_not_first_is_invalid() {
        // IPv6 whose first header is TCP-less: next header HBH after a destination-options header
        let mut p = IPV6_HOPBYHOP_TCP;
        p[6] = 60; // destination options
        p[40] = 0; // its next header: hop-by-hop (must only come first)
        let err = InnerPacket::parse(PROTOCOL_IPV6, &p).unwrap_err();
        assert_eq!(err, DropReason::InnerHeaderInvalid);
    }
}
