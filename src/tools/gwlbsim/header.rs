//! The GENEVE header of the simulator's flows: the one a flow's packets are sent with, and how
//! the header of a returned datagram compares with it. What goes in the header is decided
//! here; where it goes is wire's alone ([`emit_gwlb_header`], [`GWLB_COOKIE`]), so no offset
//! is written twice. Must not depend on the flow table or any I/O: bytes in, bytes out.

use crate::wire::geneve::{PROTOCOL_IPV4, PROTOCOL_IPV6};
use crate::wire::{GWLB_COOKIE, GWLB_HEADER_LEN, GwlbOptions, emit_gwlb_header};

/// The header a flow's packets are sent with, exactly as GWLB writes it: the configured ids,
/// the flow's cookie and the protocol type of its inner packets.
pub(super) fn flow_header(
    endpoint_id: u64,
    attachment_id: u64,
    cookie: u32,
    ipv6: bool,
) -> [u8; GWLB_HEADER_LEN] {
    let gwlb = GwlbOptions {
        endpoint_id: Some(endpoint_id),
        attachment_id: Some(attachment_id),
        flow_cookie: cookie,
    };
    let mut header = [0u8; GWLB_HEADER_LEN];
    emit_gwlb_header(&mut header, if ipv6 { PROTOCOL_IPV6 } else { PROTOCOL_IPV4 }, &gwlb);
    header
}

/// Whether `returned`, the GENEVE header of a datagram that came back, is `sent` but for the
/// cookie (its flow's earlier cookie, or one it never had).
pub(super) fn same_but_cookie(returned: &[u8], sent: &[u8; GWLB_HEADER_LEN]) -> bool {
    returned.len() == GWLB_HEADER_LEN
        && returned[..GWLB_COOKIE.start] == sent[..GWLB_COOKIE.start]
        && returned[GWLB_COOKIE.end..] == sent[GWLB_COOKIE.end..]
}
