//! Decoding: a GENEVE datagram from GWLB checked all the way down to the inner transport
//! header, or found to be malformed with one [`DropReason`].
//!
//! Must not depend on: flow state, policy, sockets.

use crate::packet::InnerPacket;
use crate::wire::geneve::{PROTOCOL_IPV4, PROTOCOL_IPV6};
use crate::wire::outer::OUTER_HEADER_LEN;
use crate::wire::{DropReason, GenevePacket, GwlbOptions};

/// The largest outer packet GWLB sends is 9,001 bytes (jumbo MTU); this is its UDP payload.
pub const MAX_GENEVE_DATAGRAM: usize = 9001 - OUTER_HEADER_LEN;

/// A datagram that passed every check: what GWLB said about it and what it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedPacket {
    pub gwlb: GwlbOptions,
    /// Bytes of GENEVE header (base + options) in front of the inner packet.
    pub geneve_header_len: usize,
    pub inner: InnerPacket,
}

/// Checks a GENEVE datagram from GWLB all the way down to the inner transport header.
pub fn decode(datagram: &[u8]) -> Result<DecodedPacket, DropReason> {
    if datagram.len() > MAX_GENEVE_DATAGRAM {
        return Err(DropReason::Oversize);
    }
    let geneve = GenevePacket::new_checked(datagram)?;
    if geneve.is_control() {
        return Err(DropReason::GeneveControl);
    }
    let gwlb = GwlbOptions::parse(geneve.options())?;
    let protocol_type = geneve.protocol_type();
    if protocol_type != PROTOCOL_IPV4 && protocol_type != PROTOCOL_IPV6 {
        return Err(DropReason::GeneveProtocol);
    }
    let inner = InnerPacket::parse(protocol_type, geneve.payload())?;
    Ok(DecodedPacket { gwlb, geneve_header_len: geneve.header_len(), inner })
}
