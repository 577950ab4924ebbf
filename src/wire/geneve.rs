//! GENEVE (RFC 8926) base header and options, and the three options GWLB adds (class 0x0108).
//! Must not depend on: anything but std.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! |Ver|  Opt Len  |O|C|    Rsvd.  |          Protocol Type        |
//! |        Virtual Network Identifier (VNI)       |    Reserved   |
//! |                    Variable-Length Options                    |
//!
//! option: | Option Class (16) | C| Type (7) | R R R| Length (5) | data (Length * 4 bytes) |
//! ```
//!
//! GWLB always sends three options of class 0x0108, usually in this order: type 1 the GWLB
//! endpoint ENI id (8 bytes), type 2 the attachment id (8 bytes), type 3 the flow cookie
//! (4 bytes). Parsing accepts them in any order; only the cookie is required, because nothing
//! can be sent back without it.
//!
//! Every byte position is named once, in `field` (base header), `option_field` (an option's
//! header) and `gwlb_field` (where [`emit_gwlb_header`] puts GWLB's options); the parser and
//! the emitter both go through those names, and tools that keep an emitted header take the
//! cookie's place from [`GWLB_COOKIE`] instead of counting bytes.

use super::DropReason;

/// GENEVE option class that AWS registered for GWLB.
pub const GWLB_OPTION_CLASS: u16 = 0x0108;
/// GWLB option type: the GWLB endpoint's ENI id.
pub const GWLB_TYPE_ENDPOINT_ID: u8 = 1;
/// GWLB option type: the attachment id.
pub const GWLB_TYPE_ATTACHMENT_ID: u8 = 2;
/// GWLB option type: the flow cookie.
pub const GWLB_TYPE_FLOW_COOKIE: u8 = 3;

/// Protocol type of an inner IPv4 packet (an EtherType).
pub const PROTOCOL_IPV4: u16 = 0x0800;
/// Protocol type of an inner IPv6 packet.
pub const PROTOCOL_IPV6: u16 = 0x86DD;

/// Length of the fixed part of the GENEVE header.
pub const BASE_HEADER_LEN: usize = 8;

/// The base header, byte by byte (the diagram above).
mod field {
    use core::ops::Range;

    /// Version (top 2 bits) and the options length in 4-byte words (low 6 bits).
    pub const VER_OPTLEN: usize = 0;
    /// The O and C bits, then reserved bits.
    pub const FLAGS: usize = 1;
    pub const PROTOCOL: Range<usize> = 2..4;
    pub const VNI: Range<usize> = 4..7;
    /// The reserved byte after the VNI.
    pub const RESERVED: usize = 7;
}

/// Length of an option's header; its data follows.
const OPTION_HEADER_LEN: usize = 4;

/// An option's header, relative to the option's first byte.
mod option_field {
    use core::ops::Range;

    pub const CLASS: Range<usize> = 0..2;
    /// The critical bit (top) and the 7-bit type.
    pub const TYPE: usize = 2;
    /// Three reserved bits and the data length in 4-byte words (low 5 bits).
    pub const LENGTH: usize = 3;
}

/// A checked view of a GENEVE packet: the base header and the whole options area are present.
#[derive(Debug, Clone, Copy)]
pub struct GenevePacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> GenevePacket<T> {
    /// Checks that the base header and the announced options area fit in `buffer`, and that
    /// the version is 0. Options themselves are checked by [`GwlbOptions::parse`].
    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        let bytes = buffer.as_ref();
        if bytes.len() < BASE_HEADER_LEN {
            return Err(DropReason::GeneveTruncated);
        }
        if bytes[field::VER_OPTLEN] >> 6 != 0 {
            return Err(DropReason::GeneveVersion);
        }
        let packet = GenevePacket { buffer };
        if packet.buffer.as_ref().len() < packet.header_len() {
            return Err(DropReason::GeneveTruncated);
        }
        Ok(packet)
    }

    fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// The version field (always 0 once checked).
    pub fn version(&self) -> u8 {
        self.bytes()[field::VER_OPTLEN] >> 6
    }

    /// Length of the options area in bytes.
    pub fn options_len(&self) -> usize {
        usize::from(self.bytes()[field::VER_OPTLEN] & 0x3f) * 4
    }

    /// Base header plus options: where the inner packet starts.
    pub fn header_len(&self) -> usize {
        BASE_HEADER_LEN + self.options_len()
    }

    /// The O bit: a control (OAM) packet.
    pub fn is_control(&self) -> bool {
        self.bytes()[field::FLAGS] & 0x80 != 0
    }

    /// The C bit: at least one option has its critical bit set.
    pub fn has_critical_options(&self) -> bool {
        self.bytes()[field::FLAGS] & 0x40 != 0
    }

    /// The protocol type of the payload (an EtherType).
    pub fn protocol_type(&self) -> u16 {
        let b = &self.bytes()[field::PROTOCOL];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The 24-bit virtual network identifier (0 from GWLB).
    pub fn vni(&self) -> u32 {
        let b = &self.bytes()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The raw options area.
    pub fn options(&self) -> &[u8] {
        &self.bytes()[BASE_HEADER_LEN..self.header_len()]
    }

    /// The encapsulated packet (for GWLB: an IP packet without an Ethernet header).
    pub fn payload(&self) -> &[u8] {
        &self.bytes()[self.header_len()..]
    }
}

/// One option from the options area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneveOption<'a> {
    pub class: u16,
    /// The type byte, critical bit included.
    pub type_byte: u8,
    pub data: &'a [u8],
}

impl GeneveOption<'_> {
    /// The type without the critical bit.
    pub fn option_type(&self) -> u8 {
        self.type_byte & 0x7f
    }

    /// The critical bit: a receiver that does not understand the option must drop the packet.
    pub fn is_critical(&self) -> bool {
        self.type_byte & 0x80 != 0
    }
}

/// Iterates the options area; yields one error and then stops if an option overruns it.
#[derive(Debug, Clone)]
pub struct GeneveOptions<'a> {
    rest: &'a [u8],
}

impl<'a> GeneveOptions<'a> {
    pub fn new(options: &'a [u8]) -> Self {
        GeneveOptions { rest: options }
    }
}

impl<'a> Iterator for GeneveOptions<'a> {
    type Item = Result<GeneveOption<'a>, DropReason>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let overrun = || Some(Err(DropReason::GeneveOptionOverrun));
        let Some((head, after)) = self.rest.split_first_chunk::<OPTION_HEADER_LEN>() else {
            self.rest = &[];
            return overrun();
        };
        let data_len = usize::from(head[option_field::LENGTH] & 0x1f) * 4;
        if after.len() < data_len {
            self.rest = &[];
            return overrun();
        }
        let (data, rest) = after.split_at(data_len);
        self.rest = rest;
        let class = &head[option_field::CLASS];
        Some(Ok(GeneveOption {
            class: u16::from_be_bytes([class[0], class[1]]),
            type_byte: head[option_field::TYPE],
            data,
        }))
    }
}

/// The GWLB options of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GwlbOptions {
    /// GWLB endpoint ENI id (type 1), if present.
    pub endpoint_id: Option<u64>,
    /// Attachment id (type 2), if present.
    pub attachment_id: Option<u64>,
    /// Flow cookie (type 3): GWLB's name for the flow; replies must carry the current one.
    pub flow_cookie: u32,
}

impl GwlbOptions {
    /// Walks the options area once: rejects overruns and unknown critical options, checks the
    /// lengths of the GWLB options and requires the flow cookie.
    pub fn parse(options: &[u8]) -> Result<GwlbOptions, DropReason> {
        let mut endpoint_id = None;
        let mut attachment_id = None;
        let mut flow_cookie = None;
        for option in GeneveOptions::new(options) {
            let option = option?;
            if option.class != GWLB_OPTION_CLASS {
                if option.is_critical() {
                    return Err(DropReason::GeneveCriticalOption);
                }
                continue;
            }
            match option.type_byte {
                GWLB_TYPE_ENDPOINT_ID => endpoint_id = Some(be_u64(option.data)?),
                GWLB_TYPE_ATTACHMENT_ID => attachment_id = Some(be_u64(option.data)?),
                GWLB_TYPE_FLOW_COOKIE => {
                    let bytes: [u8; 4] =
                        option.data.try_into().map_err(|_| DropReason::GwlbOptionLength)?;
                    flow_cookie = Some(u32::from_be_bytes(bytes));
                }
                _ if option.is_critical() => return Err(DropReason::GeneveCriticalOption),
                _ => {}
            }
        }
        Ok(GwlbOptions {
            endpoint_id,
            attachment_id,
            flow_cookie: flow_cookie.ok_or(DropReason::GwlbCookieMissing)?,
        })
    }
}

/// Where [`emit_gwlb_header`] puts each option, header and data: the header GWLB sends has
/// them in this order at these places, which lets tools keep it as one fixed-size array.
mod gwlb_field {
    use super::{BASE_HEADER_LEN, OPTION_HEADER_LEN};
    use core::ops::Range;

    /// The endpoint ENI id: a u64.
    pub const ENDPOINT_ID: Range<usize> =
        BASE_HEADER_LEN..BASE_HEADER_LEN + OPTION_HEADER_LEN + size_of::<u64>();
    /// The attachment id: a u64.
    pub const ATTACHMENT_ID: Range<usize> =
        ENDPOINT_ID.end..ENDPOINT_ID.end + OPTION_HEADER_LEN + size_of::<u64>();
    /// The flow cookie: a u32, last.
    pub const FLOW_COOKIE: Range<usize> =
        ATTACHMENT_ID.end..ATTACHMENT_ID.end + OPTION_HEADER_LEN + size_of::<u32>();
}

/// Length of the GENEVE header GWLB sends: base header and its three options.
pub const GWLB_HEADER_LEN: usize = gwlb_field::FLOW_COOKIE.end;

/// The flow cookie's 4 bytes (big-endian) in the header [`emit_gwlb_header`] writes, for tools
/// that keep that header and compare it without the cookie.
pub const GWLB_COOKIE: core::ops::Range<usize> =
    gwlb_field::FLOW_COOKIE.start + OPTION_HEADER_LEN..gwlb_field::FLOW_COOKIE.end;

/// The flow cookie of a header [`emit_gwlb_header`] wrote.
pub fn gwlb_header_cookie(header: &[u8; GWLB_HEADER_LEN]) -> u32 {
    let b = &header[GWLB_COOKIE];
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Writes the GENEVE header exactly as GWLB sends it (opt len 8, VNI 0, options in the order
/// endpoint id, attachment id, flow cookie); absent ids are written as 0. Used by the load
/// generator, the GWLB simulator and the demo.
pub fn emit_gwlb_header(
    header: &mut [u8; GWLB_HEADER_LEN],
    protocol_type: u16,
    gwlb: &GwlbOptions,
) {
    // Version 0 in the top bits, the options length in 4-byte words below.
    header[field::VER_OPTLEN] = ((GWLB_HEADER_LEN - BASE_HEADER_LEN) / 4) as u8;
    header[field::FLAGS] = 0;
    header[field::PROTOCOL].copy_from_slice(&protocol_type.to_be_bytes());
    header[field::VNI].fill(0);
    header[field::RESERVED] = 0;
    emit_gwlb_option(
        &mut header[gwlb_field::ENDPOINT_ID],
        GWLB_TYPE_ENDPOINT_ID,
        &gwlb.endpoint_id.unwrap_or(0).to_be_bytes(),
    );
    emit_gwlb_option(
        &mut header[gwlb_field::ATTACHMENT_ID],
        GWLB_TYPE_ATTACHMENT_ID,
        &gwlb.attachment_id.unwrap_or(0).to_be_bytes(),
    );
    emit_gwlb_option(
        &mut header[gwlb_field::FLOW_COOKIE],
        GWLB_TYPE_FLOW_COOKIE,
        &gwlb.flow_cookie.to_be_bytes(),
    );
}

/// Writes one non-critical GWLB option into `out`, which is exactly its header and `data` long
/// (`data` a whole number of 4-byte words, as every GWLB option's is).
fn emit_gwlb_option(out: &mut [u8], option_type: u8, data: &[u8]) {
    let (head, rest) = out.split_at_mut(OPTION_HEADER_LEN);
    head[option_field::CLASS].copy_from_slice(&GWLB_OPTION_CLASS.to_be_bytes());
    head[option_field::TYPE] = option_type;
    head[option_field::LENGTH] = (data.len() / 4) as u8;
    rest.copy_from_slice(data);
}

/// A whole GWLB datagram around `inner` (protocol type from the IP version nibble), for tools
/// and tests that build packets once; the per-packet paths use [`emit_gwlb_header`] in place.
pub fn encapsulate(inner: &[u8], gwlb: &GwlbOptions) -> Vec<u8> {
    let mut header = [0u8; GWLB_HEADER_LEN];
    emit_gwlb_header(&mut header, protocol_type_of(inner), gwlb);
    [&header[..], inner].concat()
}

/// The protocol type to send an inner IP packet with, from its version nibble: IPv6 for 6,
/// IPv4 for anything else (a packet that is not IPv4 either is the receiver's to refuse).
pub fn protocol_type_of(inner: &[u8]) -> u16 {
    if inner.first().is_some_and(|b| b >> 4 == 6) { PROTOCOL_IPV6 } else { PROTOCOL_IPV4 }
}

fn be_u64(data: &[u8]) -> Result<u64, DropReason> {
    let bytes: [u8; 8] = data.try_into().map_err(|_| DropReason::GwlbOptionLength)?;
    Ok(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GENEVE header exactly as GWLB sends it: opt len 8, protocol IPv4, VNI 0, then
    /// endpoint id 0x0123456789abcdef, attachment id 0x1122334455667788, cookie 0xdeadbeef.
    const GWLB_HEADER: [u8; 40] = [
        0x08, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, // base
        0x01, 0x08, 0x01, 0x02, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, // endpoint
        0x01, 0x08, 0x02, 0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, // attachment
        0x01, 0x08, 0x03, 0x01, 0xde, 0xad, 0xbe, 0xef, // cookie
    ];

    fn with_payload(header: &[u8], payload: &[u8]) -> Vec<u8> {
        [header, payload].concat()
    }

    #[test]
    fn emitted_gwlb_header_matches_the_fixture() {
        let mut header = [0u8; GWLB_HEADER_LEN];
        let gwlb = GwlbOptions {
            endpoint_id: Some(0x0123_4567_89ab_cdef),
            attachment_id: Some(0x1122_3344_5566_7788),
            flow_cookie: 0xdead_beef,
        };
        emit_gwlb_header(&mut header, PROTOCOL_IPV4, &gwlb);
        assert_eq!(header, GWLB_HEADER);
    }

    #[test]
    fn emitted_headers_parse_back_to_what_was_written() {
        let cases = [
            (
                PROTOCOL_IPV4,
                GwlbOptions { endpoint_id: Some(1), attachment_id: Some(2), flow_cookie: 3 },
            ),
            (
                PROTOCOL_IPV6,
                GwlbOptions {
                    endpoint_id: Some(u64::MAX),
                    attachment_id: Some(0x8000_0000_0000_0001),
                    flow_cookie: u32::MAX,
                },
            ),
            // Absent ids are written as 0, so they come back as Some(0).
            (PROTOCOL_IPV4, GwlbOptions { endpoint_id: None, attachment_id: None, flow_cookie: 0 }),
        ];
        for (protocol, gwlb) in cases {
            let mut header = [0xffu8; GWLB_HEADER_LEN];
            emit_gwlb_header(&mut header, protocol, &gwlb);
            let packet = GenevePacket::new_checked(&header[..]).unwrap();
            assert_eq!(packet.header_len(), GWLB_HEADER_LEN);
            assert_eq!(packet.protocol_type(), protocol);
            assert_eq!(packet.vni(), 0);
            assert!(!packet.is_control() && !packet.has_critical_options());
            assert_eq!(header[field::RESERVED], 0);
            let options: Vec<_> =
                GeneveOptions::new(packet.options()).map(Result::unwrap).collect();
            let types: Vec<_> = options.iter().map(|o| (o.class, o.type_byte)).collect();
            assert_eq!(
                types,
                [GWLB_TYPE_ENDPOINT_ID, GWLB_TYPE_ATTACHMENT_ID, GWLB_TYPE_FLOW_COOKIE]
                    .map(|t| (GWLB_OPTION_CLASS, t))
            );
            let parsed = GwlbOptions::parse(packet.options()).unwrap();
            let written = GwlbOptions {
                endpoint_id: Some(gwlb.endpoint_id.unwrap_or(0)),
                attachment_id: Some(gwlb.attachment_id.unwrap_or(0)),
                ..gwlb
            };
            assert_eq!(parsed, written);
            assert_eq!(gwlb_header_cookie(&header), gwlb.flow_cookie);
        }
    }

    #[test]
    fn gwlb_header_parses_all_fields() {
        let bytes = with_payload(&GWLB_HEADER, &[0x45, 0, 0, 20]);
        let packet = GenevePacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.version(), 0);
        assert_eq!(packet.options_len(), 32);
        assert_eq!(packet.header_len(), 40);
        assert!(!packet.is_control());
        assert!(!packet.has_critical_options());
        assert_eq!(packet.protocol_type(), PROTOCOL_IPV4);
        assert_eq!(packet.vni(), 0);
        assert_eq!(packet.payload(), &[0x45, 0, 0, 20]);
        let gwlb = GwlbOptions::parse(packet.options()).unwrap();
        assert_eq!(gwlb.endpoint_id, Some(0x0123_4567_89ab_cdef));
        assert_eq!(gwlb.attachment_id, Some(0x1122_3344_5566_7788));
        assert_eq!(gwlb.flow_cookie, 0xdead_beef);
    }

    #[test]
    fn options_in_any_order_are_accepted() {
        let mut header = GWLB_HEADER;
        // cookie first, then endpoint, then attachment
        header[8..16].copy_from_slice(&GWLB_HEADER[32..40]);
        header[16..28].copy_from_slice(&GWLB_HEADER[8..20]);
        header[28..40].copy_from_slice(&GWLB_HEADER[20..32]);
        let gwlb = GwlbOptions::parse(&header[8..]).unwrap();
        assert_eq!(gwlb.flow_cookie, 0xdead_beef);
        assert_eq!(gwlb.endpoint_id, Some(0x0123_4567_89ab_cdef));
        assert_eq!(gwlb.attachment_id, Some(0x1122_3344_5566_7788));
    }

    #[test]
    fn vni_and_ipv6_protocol_are_read() {
        let mut header = GWLB_HEADER;
        header[2..4].copy_from_slice(&PROTOCOL_IPV6.to_be_bytes());
        header[4..7].copy_from_slice(&[0xab, 0xcd, 0xef]);
        let packet = GenevePacket::new_checked(&header[..]).unwrap();
        assert_eq!(packet.protocol_type(), PROTOCOL_IPV6);
        assert_eq!(packet.vni(), 0xabcdef);
        assert!(packet.payload().is_empty());
    }

    #[test]
    fn shorter_than_base_header_is_truncated() {
        for len in 0..BASE_HEADER_LEN {
            let err = GenevePacket::new_checked(&GWLB_HEADER[..len]).unwrap_err();
            assert_eq!(err, DropReason::GeneveTruncated, "len {len}");
        }
    }

    #[test]
    fn options_area_past_end_is_truncated() {
        let err = GenevePacket::new_checked(&GWLB_HEADER[..39]).unwrap_err();
        assert_eq!(err, DropReason::GeneveTruncated);
    }

    #[test]
    fn version_other_than_zero_is_rejected() {
        for version in 1..4u8 {
            let mut header = GWLB_HEADER;
            header[0] |= version << 6;
            let err = GenevePacket::new_checked(&header[..]).unwrap_err();
            assert_eq!(err, DropReason::GeneveVersion);
        }
    }

    #[test]
    fn control_and_critical_flags_are_read() {
        let mut header = GWLB_HEADER;
        header[1] = 0xc0;
        let packet = GenevePacket::new_checked(&header[..]).unwrap();
        assert!(packet.is_control());
        assert!(packet.has_critical_options());
    }

    #[test]
    fn option_length_past_end_is_an_overrun() {
        let mut header = GWLB_HEADER;
        header[35] = 0x02; // cookie claims 8 data bytes, only 4 remain
        let err = GwlbOptions::parse(&header[8..]).unwrap_err();
        assert_eq!(err, DropReason::GeneveOptionOverrun);
    }

    #[test]
    fn partial_option_header_is_an_overrun() {
        let err = GwlbOptions::parse(&GWLB_HEADER[8..34]).unwrap_err();
        assert_eq!(err, DropReason::GeneveOptionOverrun);
    }

    #[test]
    fn iterator_stops_after_first_error() {
        let mut options = GeneveOptions::new(&GWLB_HEADER[8..34]);
        assert!(options.next().unwrap().is_ok());
        assert!(options.next().unwrap().is_ok());
        assert_eq!(options.next(), Some(Err(DropReason::GeneveOptionOverrun)));
        assert_eq!(options.next(), None);
    }

    #[test]
    fn unknown_critical_option_is_rejected() {
        let extra = [0x01, 0x02, 0x85, 0x00]; // class 0x0102, critical type 5, no data
        let options = [&GWLB_HEADER[8..], &extra[..]].concat();
        assert_eq!(GwlbOptions::parse(&options).unwrap_err(), DropReason::GeneveCriticalOption);
        let gwlb_critical = [0x01, 0x08, 0x87, 0x00]; // GWLB class, unknown critical type 7
        let options = [&GWLB_HEADER[8..], &gwlb_critical[..]].concat();
        assert_eq!(GwlbOptions::parse(&options).unwrap_err(), DropReason::GeneveCriticalOption);
    }

    #[test]
    fn unknown_non_critical_options_are_skipped() {
        let extra = [0x01, 0x02, 0x05, 0x01, 1, 2, 3, 4];
        let options = [&extra[..], &GWLB_HEADER[8..]].concat();
        let gwlb = GwlbOptions::parse(&options).unwrap();
        assert_eq!(gwlb.flow_cookie, 0xdead_beef);
    }

    #[test]
    fn missing_cookie_is_rejected() {
        let err = GwlbOptions::parse(&GWLB_HEADER[8..32]).unwrap_err();
        assert_eq!(err, DropReason::GwlbCookieMissing);
        assert_eq!(GwlbOptions::parse(&[]).unwrap_err(), DropReason::GwlbCookieMissing);
    }

    #[test]
    fn endpoint_and_attachment_are_optional() {
        let gwlb = GwlbOptions::parse(&GWLB_HEADER[32..40]).unwrap();
        assert_eq!(
            gwlb,
            GwlbOptions { endpoint_id: None, attachment_id: None, flow_cookie: 0xdead_beef }
        );
    }

    #[test]
    fn gwlb_option_with_wrong_length_is_rejected() {
        // endpoint id with 4 data bytes instead of 8
        let bad_endpoint = [0x01, 0x08, 0x01, 0x01, 1, 2, 3, 4];
        let options = [&bad_endpoint[..], &GWLB_HEADER[32..40]].concat();
        assert_eq!(GwlbOptions::parse(&options).unwrap_err(), DropReason::GwlbOptionLength);
        // cookie with 8 data bytes instead of 4
        let bad_cookie = [0x01, 0x08, 0x03, 0x02, 1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(GwlbOptions::parse(&bad_cookie).unwrap_err(), DropReason::GwlbOptionLength);
    }
}
