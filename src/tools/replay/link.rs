//! The outer layers of a captured frame, read as the appliance's kernel would have read them
//! before its socket got the GENEVE datagram: the link types replay reads ([`LinkType`]), the
//! Ethernet (VLAN), Linux cooked and raw-IP framings, and the outer IPv4 + UDP headers
//! ([`classify`]), or why a record is skipped ([`Skip`]). It must not depend on the capture
//! file format, the pipeline, the control plane or the output.
//!
//! etherparse reads every header but the Linux cooked ones (see [`classify`]), one layer at a
//! time: its whole-packet slicers (`SlicedPacket`, `LaxSlicedPacket`) stop at the first error
//! they meet, in their own order, while the reason a record is skipped depends on the order of
//! the kernel's checks (a record cut inside the UDP payload is truncated if it is to the
//! GENEVE port, and not GENEVE if it is to another).

use std::net::Ipv4Addr;

use etherparse::err::ipv4;
use etherparse::{
    EtherPayloadSlice, EtherType, Ethernet2Slice, IpNumber, Ipv4Header, LaxIpv4Slice,
    LinuxSllHeader, LinuxSllPacketType, SingleVlanSlice, UdpHeader, UdpHeaderSlice, UdpSlice,
};

/// Why a record was not run through the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Skip {
    NotGeneve,
    OuterFragment,
    OuterMalformed,
    Truncated,
    Outgoing,
    OtherAddress,
}

impl Skip {
    pub(super) const COUNT: usize = 6;

    pub(super) const fn index(self) -> usize {
        self as usize
    }
}

/// Frame formats replay reads, by the link type of the capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LinkType {
    /// LINKTYPE_ETHERNET (1): Ethernet II, with up to two VLAN tags.
    Ethernet,
    /// LINKTYPE_LINUX_SLL (113): `tcpdump -i any` before libpcap 1.10.
    LinuxSll,
    /// LINKTYPE_LINUX_SLL2 (276): `tcpdump -i any` since libpcap 1.10.
    LinuxSll2,
    /// LINKTYPE_RAW (101): the IP header first.
    RawIp,
    /// LINKTYPE_IPV4 (228): the IPv4 header first.
    RawIpv4,
}

impl LinkType {
    /// The link type of a LINKTYPE_ number, if replay reads it.
    pub(super) fn from_number(number: u32) -> Option<LinkType> {
        match number {
            1 => Some(LinkType::Ethernet),
            113 => Some(LinkType::LinuxSll),
            276 => Some(LinkType::LinuxSll2),
            101 => Some(LinkType::RawIp),
            228 => Some(LinkType::RawIpv4),
            _ => None,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            LinkType::Ethernet => "ethernet",
            LinkType::LinuxSll => "linux_sll",
            LinkType::LinuxSll2 => "linux_sll2",
            LinkType::RawIp => "raw_ip",
            LinkType::RawIpv4 => "raw_ipv4",
        }
    }
}

/// An outer IPv4 + UDP packet to the GENEVE port, as the appliance's socket would receive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct OuterPacket<'a> {
    /// The GWLB node that sent it.
    pub(super) src: Ipv4Addr,
    /// The appliance's address.
    pub(super) dst: Ipv4Addr,
    pub(super) src_port: u16,
    pub(super) dst_port: u16,
    /// Ethernet addresses, when the capture has them.
    pub(super) macs: Option<Macs>,
    /// The UDP payload: the GENEVE datagram.
    pub(super) datagram: &'a [u8],
}

/// The source and destination addresses of an Ethernet frame.
type Macs = ([u8; 6], [u8; 6]);

/// The VLAN tags read in front of the IP header: 802.1Q, and the outer tag of QinQ (802.1ad
/// or the older 0x9100).
const VLAN_ETHER_TYPES: [EtherType; 3] = [
    EtherType::VLAN_TAGGED_FRAME,
    EtherType::PROVIDER_BRIDGING,
    EtherType::VLAN_DOUBLE_TAGGED_FRAME,
];
/// At most this many: one, or two for QinQ.
const MAX_VLAN_TAGS: usize = 2;
/// The Linux cooked header v2 (SLL2), which etherparse does not read.
const SLL2_HEADER_LEN: usize = 20;

/// Finds the GENEVE datagram in one captured frame, or says why there is none.
///
/// The Linux cooked headers are read here, two fields at fixed offsets: etherparse has no SLL2,
/// and its `LinuxSllSlice` refuses hardware types other than Ethernet, netlink, IPGRE,
/// radiotap and FRAD (among them the loopback, 772, and TUN, 65534, interfaces that
/// `tcpdump -i any` captures) and packet types past 7, all of which replay reads.
pub(super) fn classify(
    link: LinkType,
    frame: &[u8],
    geneve_port: u16,
) -> Result<OuterPacket<'_>, Skip> {
    let (ethertype, ip, macs) = match link {
        LinkType::Ethernet => {
            let (payload, macs) = ethernet(frame)?;
            (Some(payload.ether_type), payload.payload, Some(macs))
        }
        LinkType::LinuxSll => {
            let (header, payload) =
                frame.split_first_chunk::<{ LinuxSllHeader::LEN }>().ok_or(Skip::Truncated)?;
            // The packet type (2 bytes) first, the protocol last.
            let packet_type = u16::from_be_bytes([header[0], header[1]]);
            if packet_type == u16::from(LinuxSllPacketType::OUTGOING) {
                return Err(Skip::Outgoing);
            }
            (Some(EtherType(u16::from_be_bytes([header[14], header[15]]))), payload, None)
        }
        LinkType::LinuxSll2 => {
            let (header, payload) =
                frame.split_first_chunk::<SLL2_HEADER_LEN>().ok_or(Skip::Truncated)?;
            // The protocol first, the packet type (1 byte) at 10.
            if u16::from(header[10]) == u16::from(LinuxSllPacketType::OUTGOING) {
                return Err(Skip::Outgoing);
            }
            (Some(EtherType(u16::from_be_bytes([header[0], header[1]]))), payload, None)
        }
        LinkType::RawIp | LinkType::RawIpv4 => (None, frame, None),
    };
    if ethertype.is_some_and(|t| t != EtherType::IPV4) {
        return Err(Skip::NotGeneve);
    }
    let mut packet = classify_ipv4(ip, geneve_port)?;
    packet.macs = macs;
    Ok(packet)
}

/// An Ethernet II frame: what follows its header and its VLAN tags, and its (source,
/// destination) addresses.
///
/// etherparse's whole-packet slicers read a third tag, and through MACsec: replay takes at most
/// [`MAX_VLAN_TAGS`] tags, one by one, and what is behind a third or behind MACsec is not
/// GENEVE, as the ether type that `classify` then finds says.
fn ethernet(frame: &[u8]) -> Result<(EtherPayloadSlice<'_>, Macs), Skip> {
    let ethernet = Ethernet2Slice::from_slice_without_fcs(frame).map_err(|_| Skip::Truncated)?;
    let mut payload = ethernet.payload();
    for _ in 0..MAX_VLAN_TAGS {
        if !VLAN_ETHER_TYPES.contains(&payload.ether_type) {
            break;
        }
        let tag = SingleVlanSlice::from_slice(payload.payload).map_err(|_| Skip::Truncated)?;
        payload = tag.payload();
    }
    Ok((payload, (ethernet.source(), ethernet.destination())))
}

/// The outer IPv4 + UDP layers: what the kernel checks before the socket gets the datagram,
/// and in which order, so that each record is skipped for the first reason it meets.
///
/// etherparse reads the headers; where it is laxer or stricter than the kernel, a check here
/// keeps replay to what the kernel does, each saying so.
fn classify_ipv4(ip: &[u8], geneve_port: u16) -> Result<OuterPacket<'_>, Skip> {
    // etherparse wants 20 bytes before it reads the version and the header length: a short
    // record of IPv6 (never GWLB's outer header) would be truncated rather than not GENEVE, and
    // a header length under 20 bytes truncated rather than malformed.
    let Some(&first) = ip.first() else { return Err(Skip::Truncated) };
    if first >> 4 != 4 {
        return Err(Skip::NotGeneve);
    }
    if usize::from(first & 0x0f) * 4 < Ipv4Header::MIN_LEN {
        return Err(Skip::OuterMalformed);
    }
    // A Len error: the record ends inside the header or its options.
    let (ipv4, _) = LaxIpv4Slice::from_slice(ip).map_err(|error| match error {
        ipv4::HeaderSliceError::Len(_) => Skip::Truncated,
        ipv4::HeaderSliceError::Content(_) => Skip::OuterMalformed,
    })?;
    let header = ipv4.header();
    let header_len = header.slice().len();
    let total_len = usize::from(header.total_len());
    // etherparse's lax slice takes a total length shorter than the header as "up to the end of
    // the record" (its strict one calls it truncated): the kernel drops the packet.
    if total_len < header_len {
        return Err(Skip::OuterMalformed);
    }
    // The header's own protocol: etherparse looks through an authentication header (AH) to the
    // protocol behind it, which the appliance's UDP socket would not have been given.
    if header.protocol() != IpNumber::UDP {
        return Err(Skip::NotGeneve);
    }
    if header.is_fragmenting_payload() {
        return Err(Skip::OuterFragment);
    }
    if total_len < header_len + UdpHeader::LEN {
        return Err(Skip::OuterMalformed);
    }
    // Up to the total length (not the Ethernet padding after it), or to the end of the record.
    let payload = ipv4.payload();
    let udp = UdpHeaderSlice::from_slice(payload.payload).map_err(|_| Skip::Truncated)?;
    if udp.destination_port() != geneve_port {
        return Err(Skip::NotGeneve);
    }
    // The record ends before the total length: cut by the snap length.
    if payload.incomplete {
        return Err(Skip::Truncated);
    }
    // etherparse takes a UDP length of 0 as "up to the end of the IP payload" (as for IPv6
    // jumbograms): on IPv4, the kernel drops it, as any length under the header's or past the
    // IP payload.
    if usize::from(udp.length()) < UdpHeader::LEN {
        return Err(Skip::OuterMalformed);
    }
    let udp = UdpSlice::from_slice(payload.payload).map_err(|_| Skip::OuterMalformed)?;
    Ok(OuterPacket {
        src: header.source_addr(),
        dst: header.destination_addr(),
        src_port: udp.source_port(),
        dst_port: udp.destination_port(),
        macs: None,
        datagram: udp.payload(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORT: u16 = 6081;

    /// IPv4 (no options) + UDP from 10.0.0.9:40000 to 10.0.1.5:`dport` around `payload`.
    fn ipv4_udp(dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut packet = Vec::new();
        let builder =
            etherparse::PacketBuilder::ipv4([10, 0, 0, 9], [10, 0, 1, 5], 64).udp(40000, dport);
        builder.write(&mut packet, payload).unwrap();
        packet
    }

    fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame =
            vec![0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb];
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    fn sll(packet_type: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = packet_type.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0, 1, 0, 6, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0, 0]);
        frame.extend_from_slice(&0x0800u16.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    fn sll2(packet_type: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = 0x0800u16.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1, packet_type, 6]);
        frame.extend_from_slice(&[0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0, 0]);
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn every_link_type_yields_the_same_datagram_and_addressing() {
        let datagram = [7u8; 60];
        let ip = ipv4_udp(PORT, &datagram);
        let frames = [
            (LinkType::Ethernet, ethernet(0x0800, &ip)),
            (LinkType::LinuxSll, sll(0, &ip)),
            // `-i any` on lo: hardware type 772 (loopback), as on any other interface.
            (LinkType::LinuxSll, [&[0, 0, 3, 4], &sll(0, &ip)[4..]].concat()),
            (LinkType::LinuxSll2, sll2(0, &ip)),
            (LinkType::RawIp, ip.clone()),
            (LinkType::RawIpv4, ip.clone()),
        ];
        for (link, frame) in &frames {
            let packet = classify(*link, frame, PORT).unwrap_or_else(|e| panic!("{link:?}: {e:?}"));
            assert_eq!(packet.datagram, &datagram[..], "{link:?}");
            assert_eq!(packet.src, Ipv4Addr::new(10, 0, 0, 9));
            assert_eq!(packet.dst, Ipv4Addr::new(10, 0, 1, 5));
            assert_eq!((packet.src_port, packet.dst_port), (40000, PORT));
            assert_eq!(packet.macs.is_some(), *link == LinkType::Ethernet);
        }
        let ethernet = classify(LinkType::Ethernet, &frames[0].1, PORT).unwrap();
        assert_eq!(ethernet.macs, Some(([0xbb; 6], [0xaa; 6])), "(source, destination)");
    }

    #[test]
    fn vlan_tagged_ethernet_frames_are_read_through_both_tags() {
        let ip = ipv4_udp(PORT, &[1, 2, 3, 4]);
        let mut tagged = vec![0x00, 0x64, 0x81, 0x00, 0x00, 0xc8, 0x08, 0x00];
        tagged.extend_from_slice(&ip);
        let frame = ethernet(0x88a8, &tagged);
        assert_eq!(classify(LinkType::Ethernet, &frame, PORT).unwrap().datagram, &[1, 2, 3, 4]);
        // Not through a third.
        let mut three_tags =
            vec![0x00, 0x64, 0x81, 0x00, 0x00, 0xc8, 0x81, 0x00, 0x01, 0x2c, 0x08, 0x00];
        three_tags.extend_from_slice(&ip);
        let frame = ethernet(0x88a8, &three_tags);
        assert_eq!(classify(LinkType::Ethernet, &frame, PORT), Err(Skip::NotGeneve));
    }

    #[test]
    fn ethernet_padding_after_the_ip_packet_is_not_part_of_the_datagram() {
        let mut frame = ethernet(0x0800, &ipv4_udp(PORT, &[9; 3]));
        frame.extend_from_slice(&[0; 20]);
        assert_eq!(classify(LinkType::Ethernet, &frame, PORT).unwrap().datagram, &[9; 3]);
    }

    #[test]
    fn other_traffic_is_skipped_as_not_geneve() {
        let cases = [
            ethernet(0x0806, &[0; 28]),                // ARP
            ethernet(0x86dd, &[0x60; 48]),             // IPv6
            ethernet(0x0800, &ipv4_udp(53, &[0; 12])), // UDP to another port
            {
                let mut tcp = Vec::new();
                etherparse::PacketBuilder::ipv4([1, 1, 1, 1], [2, 2, 2, 2], 64)
                    .tcp(1, PORT, 0, 100)
                    .write(&mut tcp, &[])
                    .unwrap();
                ethernet(0x0800, &tcp) // TCP to the GENEVE port
            },
            {
                // UDP to the GENEVE port behind an IPsec authentication header (AH).
                let mut ah = ipv4_udp(PORT, &[0; 8]);
                ah.splice(20..20, [17, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]);
                ah[9] = 51;
                let total_len = ah.len() as u16;
                ah[2..4].copy_from_slice(&total_len.to_be_bytes());
                ethernet(0x0800, &ah)
            },
            // MACsec (integrity only, no SCI) around IPv4 + UDP to the GENEVE port.
            ethernet(
                0x88e5,
                &[&[0, 0, 0, 0, 0, 1, 0x08, 0x00], &ipv4_udp(PORT, &[0; 8])[..]].concat(),
            ),
        ];
        for frame in &cases {
            assert_eq!(classify(LinkType::Ethernet, frame, PORT), Err(Skip::NotGeneve));
        }
        assert_eq!(classify(LinkType::RawIp, &[0x60; 60], PORT), Err(Skip::NotGeneve));
        // Only the version is needed to tell.
        assert_eq!(classify(LinkType::RawIp, &[0x60; 8], PORT), Err(Skip::NotGeneve));
    }

    #[test]
    fn outer_fragments_are_skipped_as_fragments() {
        for (flags, offset) in [(0x2000u16, 0u16), (0, 185), (0x2000, 8)] {
            let mut ip = ipv4_udp(PORT, &[0; 40]);
            ip[6..8].copy_from_slice(&(flags | offset).to_be_bytes());
            assert_eq!(classify(LinkType::RawIp, &ip, PORT), Err(Skip::OuterFragment));
        }
        // Don't-fragment alone is no fragment.
        let mut ip = ipv4_udp(PORT, &[0; 40]);
        ip[6] = 0x40;
        assert!(classify(LinkType::RawIp, &ip, PORT).is_ok());
    }

    #[test]
    fn records_cut_short_anywhere_are_skipped_as_truncated() {
        let frame = ethernet(0x0800, &ipv4_udp(PORT, &[5; 100]));
        // Cut inside the Ethernet header, the IPv4 header, the UDP header and the payload.
        for len in [0, 10, 14, 20, 34, 38, 60, frame.len() - 1] {
            assert_eq!(
                classify(LinkType::Ethernet, &frame[..len], PORT),
                Err(Skip::Truncated),
                "cut at {len}"
            );
        }
        assert_eq!(classify(LinkType::LinuxSll, &[0; 15], PORT), Err(Skip::Truncated));
        assert_eq!(classify(LinkType::LinuxSll2, &[0; 19], PORT), Err(Skip::Truncated));
        let ip = ipv4_udp(PORT, &[5; 100]);
        assert_eq!(classify(LinkType::RawIp, &ip[..ip.len() - 50], PORT), Err(Skip::Truncated));
    }

    #[test]
    fn outer_headers_the_kernel_would_refuse_are_skipped_as_malformed() {
        let good = ipv4_udp(PORT, &[0; 16]);
        let mut short_ihl = good.clone();
        short_ihl[0] = 0x44;
        let mut short_total = good.clone();
        short_total[2..4].copy_from_slice(&24u16.to_be_bytes());
        let mut long_udp = good.clone();
        long_udp[24..26].copy_from_slice(&200u16.to_be_bytes());
        let mut total_under_header = good.clone();
        total_under_header[2..4].copy_from_slice(&16u16.to_be_bytes());
        let mut tiny_udp = good.clone();
        tiny_udp[24..26].copy_from_slice(&4u16.to_be_bytes());
        let mut zero_udp = good;
        zero_udp[24..26].copy_from_slice(&0u16.to_be_bytes());
        // A header length under 20 bytes is malformed however short the record.
        let short_ihl_cut = short_ihl[..8].to_vec();
        for ip in [
            short_ihl,
            short_total,
            long_udp,
            total_under_header,
            tiny_udp,
            zero_udp,
            short_ihl_cut,
        ] {
            assert_eq!(
                classify(LinkType::RawIp, &ip, PORT),
                Err(Skip::OuterMalformed),
                "{ip:02x?}"
            );
        }
    }

    #[test]
    fn packets_the_host_sent_are_skipped_on_linux_cooked_captures() {
        let ip = ipv4_udp(PORT, &[0; 8]);
        assert_eq!(classify(LinkType::LinuxSll, &sll(4, &ip), PORT), Err(Skip::Outgoing));
        assert_eq!(classify(LinkType::LinuxSll2, &sll2(4, &ip), PORT), Err(Skip::Outgoing));
        // 0 = to us, 1 = broadcast, 3 = to another host: all arrived.
        for packet_type in [0u8, 1, 3] {
            assert!(classify(LinkType::LinuxSll, &sll(packet_type.into(), &ip), PORT).is_ok());
            assert!(classify(LinkType::LinuxSll2, &sll2(packet_type, &ip), PORT).is_ok());
        }
    }

    #[test]
    fn link_type_numbers_map_to_what_replay_reads_and_nothing_else() {
        assert_eq!(LinkType::from_number(1), Some(LinkType::Ethernet));
        assert_eq!(LinkType::from_number(113), Some(LinkType::LinuxSll));
        assert_eq!(LinkType::from_number(276), Some(LinkType::LinuxSll2));
        assert_eq!(LinkType::from_number(101), Some(LinkType::RawIp));
        assert_eq!(LinkType::from_number(228), Some(LinkType::RawIpv4));
        for other in [0, 105, 127, 229, 147] {
            assert_eq!(LinkType::from_number(other), None, "{other}");
        }
    }
}
