//! Wire formats of what GWLB sends: the GENEVE header with its options, AWS's GWLB options,
//! and the outer IPv4 + UDP header the appliance writes for packets it sends back.
//!
//! Everything here is a zero-copy view over `&[u8]`, checked once by `new_checked` and then
//! read through accessors that cannot panic. This module owns the drop reasons of the data
//! plane ([`DropReason`]): a small `Copy` enum with a stable name for metrics.
//!
//! Must not depend on: sockets, async, logging, allocation. Invariant: no input slice, however
//! malformed, can make a function here panic (the fuzz target under `tests/fuzz` holds us to it).

pub mod geneve;
pub mod outer;

pub use geneve::{
    GWLB_COOKIE, GWLB_HEADER_LEN, GWLB_OPTION_CLASS, GeneveOption, GenevePacket, GwlbOptions,
    emit_gwlb_header, gwlb_header_cookie,
};

/// Why a datagram was dropped without a reply. One variant per cause, so that an operator can
/// tell from `labelwall_drops_total{reason}` exactly what arrived broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The datagram is larger than the largest packet GWLB sends (9,001 bytes outer).
    Oversize,
    /// Shorter than the 8-byte GENEVE base header, or than the option length it announces.
    GeneveTruncated,
    /// GENEVE version other than 0.
    GeneveVersion,
    /// An option's length runs past the end of the options area.
    GeneveOptionOverrun,
    /// An option we do not understand has the critical bit set (RFC 8926 section 3.5).
    GeneveCriticalOption,
    /// The O bit is set: a control (OAM) packet, which GWLB never sends and we never forward.
    GeneveControl,
    /// Protocol type other than IPv4 (0x0800) or IPv6 (0x86DD).
    GeneveProtocol,
    /// A GWLB option (class 0x0108) of a known type with the wrong length.
    GwlbOptionLength,
    /// No GWLB flow cookie: nothing can be sent back for this packet.
    GwlbCookieMissing,
    /// The inner packet is shorter than its headers or its length fields say.
    InnerTruncated,
    /// The inner packet is longer than its length fields say (trailing bytes).
    InnerLengthMismatch,
    /// The inner IP version does not match the GENEVE protocol type.
    InnerVersionMismatch,
    /// An inner header field is invalid (IPv4 IHL < 5, TCP data offset < 5, bad extension chain).
    InnerHeaderInvalid,
    /// A TCP fragment that could hide its header from the policy: a first fragment that does
    /// not hold the whole TCP header (RFC 1858), or a fragment at offset 8 bytes (RFC 3128).
    TinyFragment,
    /// GENEVE from an address outside `dataplane.allowed_peers`.
    PeerNotAllowed,
    /// The kernel refused to send the reply (counted after the fact, by the sender).
    SendFailed,
    /// `packet_ring` only (the kernel checks these on the sockets path): the outer Ethernet,
    /// IPv4 or UDP header is broken (version, header or UDP length, not UDP).
    OuterMalformed,
    /// `packet_ring` only: the outer IPv4 header checksum, or a UDP checksum the kernel did
    /// not vouch for, is wrong.
    OuterChecksum,
    /// `packet_ring` only: a fragmented outer packet (GWLB never fragments; the ring gets no
    /// reassembly).
    OuterFragment,
    /// `packet_ring` only: the kernel dropped packets because the worker's ring was full
    /// (PACKET_STATISTICS), or a packet larger than a ring frame could not be read whole.
    RingFull,
}

impl DropReason {
    /// Every reason, in a stable order (metrics index arrays by [`DropReason::index`]).
    pub const ALL: [DropReason; 20] = [
        DropReason::Oversize,
        DropReason::GeneveTruncated,
        DropReason::GeneveVersion,
        DropReason::GeneveOptionOverrun,
        DropReason::GeneveCriticalOption,
        DropReason::GeneveControl,
        DropReason::GeneveProtocol,
        DropReason::GwlbOptionLength,
        DropReason::GwlbCookieMissing,
        DropReason::InnerTruncated,
        DropReason::InnerLengthMismatch,
        DropReason::InnerVersionMismatch,
        DropReason::InnerHeaderInvalid,
        DropReason::TinyFragment,
        DropReason::PeerNotAllowed,
        DropReason::SendFailed,
        DropReason::OuterMalformed,
        DropReason::OuterChecksum,
        DropReason::OuterFragment,
        DropReason::RingFull,
    ];
    pub const COUNT: usize = Self::ALL.len();

    /// Position in [`DropReason::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The `reason` label of `labelwall_drops_total`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Oversize => "oversize",
            DropReason::GeneveTruncated => "geneve_truncated",
            DropReason::GeneveVersion => "geneve_version",
            DropReason::GeneveOptionOverrun => "geneve_option_overrun",
            DropReason::GeneveCriticalOption => "geneve_critical_option",
            DropReason::GeneveControl => "geneve_control",
            DropReason::GeneveProtocol => "geneve_protocol",
            DropReason::GwlbOptionLength => "gwlb_option_length",
            DropReason::GwlbCookieMissing => "gwlb_cookie_missing",
            DropReason::InnerTruncated => "inner_truncated",
            DropReason::InnerLengthMismatch => "inner_length_mismatch",
            DropReason::InnerVersionMismatch => "inner_version_mismatch",
            DropReason::InnerHeaderInvalid => "inner_header_invalid",
            DropReason::TinyFragment => "tiny_fragment",
            DropReason::PeerNotAllowed => "peer_not_allowed",
            DropReason::SendFailed => "send_failed",
            DropReason::OuterMalformed => "outer_malformed",
            DropReason::OuterChecksum => "outer_checksum",
            DropReason::OuterFragment => "outer_fragment",
            DropReason::RingFull => "ring_full",
        }
    }

    /// The `class` label: which layer was at fault (`malformed_geneve`, `malformed_inner`,
    /// `oversize`, `refused`: well-formed but not let in, `send`, and on the ring path
    /// `malformed_outer` and `overload`), for dashboards that only
    /// want the big picture.
    pub const fn class(self) -> &'static str {
        match self {
            DropReason::Oversize => "oversize",
            DropReason::GeneveTruncated
            | DropReason::GeneveVersion
            | DropReason::GeneveOptionOverrun
            | DropReason::GeneveCriticalOption
            | DropReason::GeneveControl
            | DropReason::GeneveProtocol
            | DropReason::GwlbOptionLength
            | DropReason::GwlbCookieMissing => "malformed_geneve",
            DropReason::InnerTruncated
            | DropReason::InnerLengthMismatch
            | DropReason::InnerVersionMismatch
            | DropReason::InnerHeaderInvalid => "malformed_inner",
            DropReason::TinyFragment | DropReason::PeerNotAllowed => "refused",
            DropReason::SendFailed => "send",
            DropReason::OuterMalformed | DropReason::OuterChecksum | DropReason::OuterFragment => {
                "malformed_outer"
            }
            DropReason::RingFull => "overload",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reason_index_matches_position_in_all() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
    }

    #[test]
    fn drop_reason_names_are_unique_metric_labels() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
        assert!(names.iter().all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    }
}
