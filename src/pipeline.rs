//! The sans-IO core of the data plane: one GENEVE datagram in, one decision out.
//!
//! `Pipeline::process` never touches a socket, allocates nothing and logs nothing; the
//! caller (a data-plane worker, `labelwall replay`, a bench or the fuzz target) owns the
//! buffers and carries out the decision. This is the place policy plugs into.
//!
//! Must not depend on: sockets, async, logging.

use crate::packet::InnerPacket;
use crate::wire::geneve::{PROTOCOL_IPV4, PROTOCOL_IPV6};
use crate::wire::outer::OUTER_HEADER_LEN;
use crate::wire::{DropReason, GenevePacket, GwlbOptions};

/// The largest outer packet GWLB sends is 9,001 bytes (jumbo MTU); this is its UDP payload.
pub const MAX_GENEVE_DATAGRAM: usize = 9001 - OUTER_HEADER_LEN;

/// What policy decided for a packet. `Allow` and `Audit` packets go back to GWLB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allow,
    Deny,
    Reject,
    Audit,
}

impl Verdict {
    pub const ALL: [Verdict; 4] = [Verdict::Allow, Verdict::Deny, Verdict::Reject, Verdict::Audit];
    pub const COUNT: usize = Self::ALL.len();

    pub const fn index(self) -> usize {
        self as usize
    }

    /// The `verdict` label of `labelwall_packets_total`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Reject => "reject",
            Verdict::Audit => "audit",
        }
    }
}

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

/// What the caller must do with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Send the datagram back to GWLB unchanged (the verdict is `Allow` or `Audit`).
    SendBack(Verdict),
    /// Policy said no: send nothing (the verdict is `Deny` or `Reject`).
    Withhold(Verdict),
    /// Malformed or unusable: count under the reason, send nothing.
    Drop(DropReason),
}

/// Whether packets are inspected or only reflected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Parse and judge every packet.
    Inspect,
    /// The benchmark baseline: every datagram goes straight back, nothing is parsed.
    Reflect,
}

/// Per-worker decision state. Until policy is loaded, every valid packet is allowed.
#[derive(Debug)]
pub struct Pipeline {
    mode: Mode,
}

impl Pipeline {
    pub fn new(mode: Mode) -> Self {
        Pipeline { mode }
    }

    /// Decides one datagram.
    pub fn process(&mut self, datagram: &[u8]) -> Outcome {
        if self.mode == Mode::Reflect {
            return Outcome::SendBack(Verdict::Allow);
        }
        match decode(datagram) {
            Ok(_packet) => Outcome::SendBack(Verdict::Allow),
            Err(reason) => Outcome::Drop(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::fixtures::IPV4_TCP_SYN;

    const GWLB_HEADER: [u8; 40] = [
        0x08, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x01, 0x02, 0, 0, 0, 0, 0, 0,
        0, 1, 0x01, 0x08, 0x02, 0x02, 0, 0, 0, 0, 0, 0, 0, 2, 0x01, 0x08, 0x03, 0x01, 0, 0, 0, 3,
    ];

    fn datagram(header: &[u8], inner: &[u8]) -> Vec<u8> {
        [header, inner].concat()
    }

    #[test]
    fn valid_packet_is_sent_back_allowed() {
        let d = datagram(&GWLB_HEADER, &IPV4_TCP_SYN);
        let decoded = decode(&d).unwrap();
        assert_eq!(decoded.geneve_header_len, 40);
        assert_eq!(decoded.gwlb.flow_cookie, 3);
        assert_eq!(Pipeline::new(Mode::Inspect).process(&d), Outcome::SendBack(Verdict::Allow));
    }

    #[test]
    fn control_packets_are_dropped() {
        let mut header = GWLB_HEADER;
        header[1] = 0x80;
        let d = datagram(&header, &IPV4_TCP_SYN);
        assert_eq!(decode(&d), Err(DropReason::GeneveControl));
    }

    #[test]
    fn ethernet_payload_is_an_unsupported_protocol() {
        let mut header = GWLB_HEADER;
        header[2..4].copy_from_slice(&0x6558u16.to_be_bytes()); // transparent Ethernet bridging
        assert_eq!(decode(&datagram(&header, &IPV4_TCP_SYN)), Err(DropReason::GeneveProtocol));
    }

    #[test]
    fn oversize_datagram_is_dropped_before_parsing() {
        let d = vec![0u8; MAX_GENEVE_DATAGRAM + 1];
        assert_eq!(Pipeline::new(Mode::Inspect).process(&d), Outcome::Drop(DropReason::Oversize));
    }

    #[test]
    fn reflect_mode_sends_back_even_garbage() {
        assert_eq!(
            Pipeline::new(Mode::Reflect).process(&[1, 2, 3]),
            Outcome::SendBack(Verdict::Allow)
        );
    }

    #[test]
    fn malformed_inner_packet_is_dropped_with_its_reason() {
        let d = datagram(&GWLB_HEADER, &IPV4_TCP_SYN[..30]);
        assert_eq!(
            Pipeline::new(Mode::Inspect).process(&d),
            Outcome::Drop(DropReason::InnerTruncated)
        );
    }
}
