//! The simulator's flow bookkeeping, by GWLB's rules (see GWLB.md): which flow an inner
//! packet belongs to (a direction-independent 5-tuple; fragments: the address pair and
//! protocol; ICMP errors: the flow of the packet they quote), the outer source port and flow
//! cookie a flow keeps for its life, when a 5-tuple becomes a new flow (a finished TCP 5-tuple
//! restarted with a SYN, or one idle past GWLB's timeout), what counts as a refusal (a TCP RST
//! or an ICMP destination unreachable, the appliance's own when the flow never sent one), and
//! the verdict on each datagram that comes back. Must not depend on sockets, the TUN device,
//! threads or a clock (time comes in as milliseconds): every rule here is tested on plain
//! byte slices.

use std::collections::HashMap;

use super::{PortRange, header};
use crate::conntrack::FlowKey;
use crate::packet::{
    InnerPacket, Transport, ip_proto, is_icmp_unreachable, is_pure_syn, tcp_flags,
};
use crate::pipeline::decode;
use crate::wire::geneve::protocol_type_of;
use crate::wire::{DropReason, GWLB_HEADER_LEN};

/// What the flow bookkeeping needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SimSettings {
    pub(super) endpoint_id: u64,
    pub(super) attachment_id: u64,
    pub(super) source_ports: PortRange,
    pub(super) tcp_idle_ms: u64,
    pub(super) other_idle_ms: u64,
    pub(super) max_flows: usize,
    /// Start of the cookie sequence, so that two runs do not hand out the same cookies.
    pub(super) cookie_seed: u32,
}

impl SimSettings {
    /// GWLB's idle timeout for flows of `protocol`: TCP's, or the one for everything else.
    fn idle_ms(&self, protocol: u8) -> u64 {
        if protocol == ip_proto::TCP { self.tcp_idle_ms } else { self.other_idle_ms }
    }
}

/// How to wrap one inner packet: from which outer source port, with which GENEVE header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Wrap {
    pub(super) port: u16,
    pub(super) header: [u8; GWLB_HEADER_LEN],
    pub(super) start: FlowStart,
}

impl Wrap {
    /// The flow cookie in [`Wrap::header`].
    #[cfg(test)]
    pub(super) fn cookie(&self) -> u32 {
        crate::wire::gwlb_header_cookie(&self.header)
    }
}

/// Whether a packet found its flow or started one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FlowStart {
    /// The flow exists: its port and cookie.
    Existing,
    /// A 5-tuple not seen before.
    New,
    /// A known 5-tuple that had finished or gone idle starts again: a new cookie.
    Renewed,
}

/// Why an inner packet from the TUN device is not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SendRefusal {
    /// Not a well-formed IPv4 or IPv6 packet.
    Unparsable(DropReason),
    /// A new flow while `max_flows` flows are tracked and none is idle.
    TableFull,
}

/// The verdict on one datagram that came back from the appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReplyCheck {
    /// Write `datagram[inner_offset..]` to the TUN device. `reject`: a TCP RST or an ICMP
    /// destination unreachable that was never sent for this flow: the appliance's reject.
    Deliver { inner_offset: usize, reject: bool },
    /// Not well-formed GWLB GENEVE around a well-formed inner packet.
    Malformed(DropReason),
    /// No flow has this inner 5-tuple.
    UnknownFlow,
    /// From another UDP source port than the flow's.
    WrongPort,
    /// The flow's header, but with a cookie the flow no longer has (or never had).
    StaleCookie,
    /// Another GENEVE header than the one sent (options, lengths, protocol type, flags).
    WrongHeader,
}

/// TCP progress, enough to tell when a 5-tuple is finished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct TcpEnds {
    /// FIN seen from side A / side B of the [`FlowKey`].
    fin_a: bool,
    fin_b: bool,
    reset: bool,
}

impl TcpEnds {
    fn finished(&self) -> bool {
        self.reset || (self.fin_a && self.fin_b)
    }

    fn advance(&mut self, flags: u8, from_a: bool) {
        if flags & tcp_flags::RST != 0 {
            self.reset = true;
        }
        if flags & tcp_flags::FIN != 0 {
            if from_a {
                self.fin_a = true;
            } else {
                self.fin_b = true;
            }
        }
    }
}

#[derive(Debug, Clone)]
struct SimFlow {
    header: [u8; GWLB_HEADER_LEN],
    port: u16,
    last_seen_ms: u64,
    tcp: TcpEnds,
    /// A RST or destination-unreachable of this flow went out through the simulator, so one
    /// coming back is not the appliance's own.
    sent_refusal: bool,
}

/// Facts about an inner packet the bookkeeping uses.
#[derive(Debug, Clone, Copy)]
struct PacketFacts {
    key: FlowKey,
    /// The packet was sent by side A of `key`.
    from_a: bool,
    /// TCP flags, 0 when not TCP.
    tcp_flags: u8,
    /// A TCP RST or an ICMP / ICMPv6 destination unreachable.
    refusal: bool,
    ipv6: bool,
}

impl PacketFacts {
    fn of(bytes: &[u8], packet: &InnerPacket) -> PacketFacts {
        let (own, side) = flow_of(packet);
        // An ICMP error is part of the flow of the packet it quotes.
        let key = packet.quoted(bytes).map_or(own, |quoted| flow_of(&quoted).0);
        let tcp_flags = if packet.fragment.is_some() { 0 } else { packet.transport.tcp_flags() };
        let refusal = match packet.transport {
            _ if packet.fragment.is_some() => false,
            Transport::Icmp { icmp_type, .. } => is_icmp_unreachable(packet.protocol, icmp_type),
            _ => tcp_flags & tcp_flags::RST != 0,
        };
        PacketFacts {
            key,
            from_a: side == crate::conntrack::Side::A,
            tcp_flags,
            refusal,
            ipv6: packet.src.is_ipv6(),
        }
    }

    fn starts_connection(&self) -> bool {
        is_pure_syn(self.key.protocol, self.tcp_flags)
    }
}

/// The simulator's flow of a packet: as the appliance keys it, but every fragment of an
/// address pair and protocol is one flow (later fragments carry no ports to tell them apart).
fn flow_of(packet: &InnerPacket) -> (FlowKey, crate::conntrack::Side) {
    if packet.fragment.is_some() {
        FlowKey::of_packet(packet.src, 0, packet.dst, 0, packet.protocol)
    } else {
        FlowKey::of(packet)
    }
}

/// A bijection on u32 (murmur3's finaliser): consecutive inputs give unrelated outputs.
fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^ (x >> 16)
}

/// The simulator's flow table: which port and cookie each inner flow has, and whether a
/// returned datagram carries exactly what was sent for its flow.
#[derive(Debug)]
pub(super) struct SimFlows {
    settings: SimSettings,
    flows: HashMap<FlowKey, SimFlow, ahash::RandomState>,
    /// Cookies handed out so far; cookie n is `mix32(seed + n)`, so none repeats for 2^32 flows.
    issued: u32,
    created: u64,
    renewed: u64,
}

impl SimFlows {
    pub(super) fn new(settings: SimSettings) -> SimFlows {
        SimFlows {
            settings,
            flows: HashMap::with_capacity_and_hasher(
                settings.max_flows.min(1 << 16),
                ahash::RandomState::new(),
            ),
            issued: 0,
            created: 0,
            renewed: 0,
        }
    }

    /// Flows tracked now.
    pub(super) fn len(&self) -> usize {
        self.flows.len()
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Flows started so far (new 5-tuples and renewed ones).
    pub(super) fn created(&self) -> u64 {
        self.created
    }

    /// Flows that got a new cookie because their 5-tuple was reused after finishing or idling.
    pub(super) fn renewed(&self) -> u64 {
        self.renewed
    }

    /// Takes one inner packet read from the TUN device: finds or starts its flow and says how
    /// to wrap it.
    pub(super) fn outbound(&mut self, inner: &[u8], now_ms: u64) -> Result<Wrap, SendRefusal> {
        let packet =
            InnerPacket::parse(protocol_type_of(inner), inner).map_err(SendRefusal::Unparsable)?;
        let facts = PacketFacts::of(inner, &packet);
        let idle_ms = self.settings.idle_ms(facts.key.protocol);
        let start = match self.flows.get(&facts.key) {
            None => FlowStart::New,
            Some(flow) if now_ms.saturating_sub(flow.last_seen_ms) >= idle_ms => FlowStart::Renewed,
            Some(flow) if flow.tcp.finished() && facts.starts_connection() => FlowStart::Renewed,
            Some(_) => FlowStart::Existing,
        };
        if start == FlowStart::New && self.flows.len() >= self.settings.max_flows {
            self.expire(now_ms);
            if self.flows.len() >= self.settings.max_flows {
                return Err(SendRefusal::TableFull);
            }
        }
        if start != FlowStart::Existing {
            let flow = self.start_flow(facts.ipv6, now_ms);
            self.flows.insert(facts.key, flow);
            self.created += 1;
            self.renewed += u64::from(start == FlowStart::Renewed);
        }
        let flow = self.flows.get_mut(&facts.key).expect("inserted above");
        flow.last_seen_ms = now_ms;
        flow.tcp.advance(facts.tcp_flags, facts.from_a);
        flow.sent_refusal |= facts.refusal;
        Ok(Wrap { port: flow.port, header: flow.header, start })
    }

    fn start_flow(&mut self, ipv6: bool, now_ms: u64) -> SimFlow {
        self.issued = self.issued.wrapping_add(1);
        let cookie = mix32(self.settings.cookie_seed.wrapping_add(self.issued));
        SimFlow {
            header: header::flow_header(
                self.settings.endpoint_id,
                self.settings.attachment_id,
                cookie,
                ipv6,
            ),
            port: self.settings.source_ports.nth(mix32(cookie ^ 0x9e37_79b9)),
            last_seen_ms: now_ms,
            tcp: TcpEnds::default(),
            sent_refusal: false,
        }
    }

    /// Checks one datagram that came back from the appliance's `from_port` (the outer UDP
    /// source port, which must be the flow's).
    pub(super) fn inbound(&mut self, datagram: &[u8], from_port: u16, now_ms: u64) -> ReplyCheck {
        let decoded = match decode(datagram) {
            Ok(decoded) => decoded,
            Err(reason) => return ReplyCheck::Malformed(reason),
        };
        let inner_offset = decoded.geneve_header_len;
        let facts = PacketFacts::of(&datagram[inner_offset..], &decoded.inner);
        let Some(flow) = self.flows.get_mut(&facts.key) else {
            return ReplyCheck::UnknownFlow;
        };
        if from_port != flow.port {
            return ReplyCheck::WrongPort;
        }
        let returned = &datagram[..inner_offset];
        if returned != flow.header {
            return if header::same_but_cookie(returned, &flow.header) {
                ReplyCheck::StaleCookie
            } else {
                ReplyCheck::WrongHeader
            };
        }
        flow.last_seen_ms = now_ms;
        flow.tcp.advance(facts.tcp_flags, facts.from_a);
        ReplyCheck::Deliver { inner_offset, reject: facts.refusal && !flow.sent_refusal }
    }

    /// Forgets flows idle past their timeout; returns how many.
    pub(super) fn expire(&mut self, now_ms: u64) -> usize {
        let before = self.flows.len();
        let settings = self.settings;
        self.flows.retain(|key, flow| {
            now_ms.saturating_sub(flow.last_seen_ms) < settings.idle_ms(key.protocol)
        });
        before - self.flows.len()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::wire::geneve::PROTOCOL_IPV6;
    use etherparse::PacketBuilder;

    const A: [u8; 4] = [10, 0, 1, 15];
    const B: [u8; 4] = [10, 20, 0, 5];

    pub(in crate::tools::gwlbsim) fn settings() -> SimSettings {
        SimSettings {
            endpoint_id: 0x0a1b_2c3d_4e5f_6071,
            attachment_id: 0x1020_3040_5060_7080,
            source_ports: PortRange { first: 20000, last: 20999 },
            tcp_idle_ms: 350_000,
            other_idle_ms: 120_000,
            max_flows: 16,
            cookie_seed: 7,
        }
    }

    #[derive(Clone, Copy)]
    enum Flags {
        Syn,
        SynAck,
        Ack,
        Fin,
        Rst,
    }

    fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: Flags) -> Vec<u8> {
        let mut step = PacketBuilder::ipv4(src, dst, 64).tcp(sport, dport, 100, 64_000);
        step = match flags {
            Flags::Syn => step.syn(),
            Flags::SynAck => step.syn().ack(1),
            Flags::Ack => step.ack(1),
            Flags::Fin => step.fin().ack(1),
            Flags::Rst => step.rst().ack(1),
        };
        let mut out = Vec::new();
        step.write(&mut out, &[]).unwrap();
        out
    }

    fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4(src, dst, 64).udp(sport, dport).write(&mut out, b"query").unwrap();
        out
    }

    /// What the appliance sends back for `wrap`: the header it got, then `inner`.
    fn reply(wrap: &Wrap, inner: &[u8]) -> Vec<u8> {
        [&wrap.header[..], inner].concat()
    }

    #[test]
    fn both_directions_of_a_flow_share_one_port_and_cookie() {
        let mut flows = SimFlows::new(settings());
        let syn = flows.outbound(&tcp(A, B, 40000, 3306, Flags::Syn), 0).unwrap();
        let syn_ack = flows.outbound(&tcp(B, A, 3306, 40000, Flags::SynAck), 1).unwrap();
        let other = flows.outbound(&tcp(A, B, 40001, 3306, Flags::Syn), 2).unwrap();
        assert_eq!(syn.start, FlowStart::New);
        assert_eq!(syn_ack.start, FlowStart::Existing);
        assert_eq!((syn_ack.port, syn_ack.header), (syn.port, syn.header));
        assert_eq!(other.start, FlowStart::New);
        assert_ne!(other.cookie(), syn.cookie());
        assert!((20000..=20999).contains(&syn.port));
        assert_eq!(flows.len(), 2);
    }

    #[test]
    fn the_header_sent_is_gwlbs_with_the_configured_ids() {
        let mut flows = SimFlows::new(settings());
        let wrap = flows.outbound(&udp(A, B, 5000, 53), 0).unwrap();
        let datagram = reply(&wrap, &udp(A, B, 5000, 53));
        let decoded = decode(&datagram).unwrap();
        assert_eq!(decoded.geneve_header_len, GWLB_HEADER_LEN);
        assert_eq!(decoded.gwlb.endpoint_id, Some(0x0a1b_2c3d_4e5f_6071));
        assert_eq!(decoded.gwlb.attachment_id, Some(0x1020_3040_5060_7080));
        assert_eq!(decoded.gwlb.flow_cookie, wrap.cookie());
    }

    #[test]
    fn a_finished_5_tuple_reused_with_a_syn_gets_a_new_cookie() {
        let mut flows = SimFlows::new(settings());
        let first = flows.outbound(&tcp(A, B, 40000, 3306, Flags::Syn), 0).unwrap();
        flows.outbound(&tcp(A, B, 40000, 3306, Flags::Fin), 1).unwrap();
        // One FIN is not the end: a SYN now is a retransmission's business, same flow.
        let half = flows.outbound(&tcp(B, A, 3306, 40000, Flags::Ack), 2).unwrap();
        assert_eq!(half.cookie(), first.cookie());
        flows.outbound(&tcp(B, A, 3306, 40000, Flags::Fin), 3).unwrap();
        // The last ACK after both FINs still belongs to the old flow.
        let last_ack = flows.outbound(&tcp(A, B, 40000, 3306, Flags::Ack), 4).unwrap();
        assert_eq!((last_ack.start, last_ack.cookie()), (FlowStart::Existing, first.cookie()));
        let again = flows.outbound(&tcp(A, B, 40000, 3306, Flags::Syn), 5).unwrap();
        assert_eq!(again.start, FlowStart::Renewed);
        assert_ne!(again.cookie(), first.cookie());
        assert_eq!(flows.renewed(), 1);
        assert_eq!(flows.created(), 2);
    }

    #[test]
    fn a_reset_5_tuple_reused_gets_a_new_cookie_but_retransmissions_do_not() {
        let mut flows = SimFlows::new(settings());
        let first = flows.outbound(&tcp(A, B, 40000, 3306, Flags::Syn), 0).unwrap();
        let again = flows.outbound(&tcp(A, B, 40000, 3306, Flags::Syn), 1).unwrap();
        assert_eq!(again.cookie(), first.cookie(), "a SYN retransmission is the same flow");
        flows.outbound(&tcp(B, A, 3306, 40000, Flags::Rst), 2).unwrap();
        let reused = flows.outbound(&tcp(A, B, 40000, 3306, Flags::Syn), 3).unwrap();
        assert_eq!(reused.start, FlowStart::Renewed);
        assert_ne!(reused.cookie(), first.cookie());
    }

    #[test]
    fn an_idle_flow_gets_a_new_cookie_after_gwlbs_timeout() {
        let mut flows = SimFlows::new(settings());
        let first = flows.outbound(&udp(A, B, 5000, 53), 0).unwrap();
        let before = flows.outbound(&udp(B, A, 53, 5000), 119_999).unwrap();
        assert_eq!(before.cookie(), first.cookie());
        let after = flows.outbound(&udp(A, B, 5000, 53), 119_999 + 120_000).unwrap();
        assert_eq!(after.start, FlowStart::Renewed);
        assert_ne!(after.cookie(), first.cookie());
        // TCP waits longer.
        let tcp_first = flows.outbound(&tcp(A, B, 40000, 3306, Flags::Ack), 0).unwrap();
        let tcp_later = flows.outbound(&tcp(A, B, 40000, 3306, Flags::Ack), 300_000).unwrap();
        assert_eq!(tcp_later.cookie(), tcp_first.cookie());
        assert_eq!(flows.expire(300_000 + 350_000), 2);
        assert!(flows.is_empty());
    }

    #[test]
    fn the_table_refuses_new_flows_when_full_but_not_known_ones() {
        let mut flows = SimFlows::new(SimSettings { max_flows: 2, ..settings() });
        flows.outbound(&udp(A, B, 1, 53), 0).unwrap();
        flows.outbound(&udp(A, B, 2, 53), 0).unwrap();
        assert_eq!(flows.outbound(&udp(A, B, 3, 53), 1), Err(SendRefusal::TableFull));
        assert!(flows.outbound(&udp(B, A, 53, 1), 1).is_ok());
        // Once the others have idled out, there is room again.
        assert!(flows.outbound(&udp(A, B, 3, 53), 200_000).is_ok());
    }

    #[test]
    fn unparsable_packets_from_the_tun_device_are_refused() {
        let mut flows = SimFlows::new(settings());
        let mut truncated = udp(A, B, 5000, 53);
        truncated.truncate(24);
        assert!(matches!(flows.outbound(&truncated, 0), Err(SendRefusal::Unparsable(_))));
        assert!(matches!(flows.outbound(&[], 0), Err(SendRefusal::Unparsable(_))));
        assert!(flows.is_empty());
    }

    #[test]
    fn a_reply_with_exactly_the_header_sent_is_delivered() {
        let mut flows = SimFlows::new(settings());
        let inner = tcp(A, B, 40000, 3306, Flags::Syn);
        let wrap = flows.outbound(&inner, 0).unwrap();
        let check = flows.inbound(&reply(&wrap, &inner), wrap.port, 1);
        assert_eq!(check, ReplyCheck::Deliver { inner_offset: GWLB_HEADER_LEN, reject: false });
    }

    #[test]
    fn a_reply_from_another_port_is_a_mismatch() {
        let mut flows = SimFlows::new(settings());
        let inner = udp(A, B, 5000, 53);
        let wrap = flows.outbound(&inner, 0).unwrap();
        let check = flows.inbound(&reply(&wrap, &inner), wrap.port.wrapping_add(1), 1);
        assert_eq!(check, ReplyCheck::WrongPort);
    }

    #[test]
    fn a_reply_with_the_cookie_of_a_finished_flow_is_stale() {
        let mut flows = SimFlows::new(settings());
        let syn = tcp(A, B, 40000, 3306, Flags::Syn);
        let old = flows.outbound(&syn, 0).unwrap();
        flows.outbound(&tcp(A, B, 40000, 3306, Flags::Rst), 1).unwrap();
        let new = flows.outbound(&syn, 2).unwrap();
        // The new flow may have another source port; answer from it with the old header.
        let check = flows.inbound(&reply(&old, &syn), new.port, 3);
        assert_eq!(check, ReplyCheck::StaleCookie);
        let check = flows.inbound(&reply(&new, &syn), new.port, 3);
        assert!(matches!(check, ReplyCheck::Deliver { .. }));
    }

    #[test]
    fn a_reply_with_changed_options_is_a_mismatch() {
        let mut flows = SimFlows::new(settings());
        let inner = udp(A, B, 5000, 53);
        let wrap = flows.outbound(&inner, 0).unwrap();
        let mut datagram = reply(&wrap, &inner);
        datagram[19] ^= 1; // last byte of the endpoint id
        assert_eq!(flows.inbound(&datagram, wrap.port, 1), ReplyCheck::WrongHeader);
        // Options reordered (cookie first) parse fine but are not what was sent.
        let sent = reply(&wrap, &inner);
        let mut reordered = sent.clone();
        reordered[8..40].copy_from_slice(&[&sent[32..40], &sent[8..32]].concat());
        assert!(decode(&reordered).is_ok());
        assert_eq!(flows.inbound(&reordered, wrap.port, 1), ReplyCheck::WrongHeader);
    }

    #[test]
    fn replies_of_unknown_flows_and_malformed_replies_are_dropped() {
        let mut flows = SimFlows::new(settings());
        let inner = udp(A, B, 5000, 53);
        let wrap = flows.outbound(&inner, 0).unwrap();
        let stranger = udp(A, B, 5001, 53);
        assert_eq!(flows.inbound(&reply(&wrap, &stranger), wrap.port, 1), ReplyCheck::UnknownFlow);
        let mut cut = reply(&wrap, &inner);
        cut.truncate(GWLB_HEADER_LEN + 10);
        assert!(matches!(flows.inbound(&cut, wrap.port, 1), ReplyCheck::Malformed(_)));
        assert!(matches!(flows.inbound(&[0xff; 3], wrap.port, 1), ReplyCheck::Malformed(_)));
    }

    #[test]
    fn a_rst_the_appliance_made_counts_as_a_reject_and_finishes_the_flow() {
        let mut flows = SimFlows::new(settings());
        let syn = tcp(B, A, 55000, 3306, Flags::Syn);
        let wrap = flows.outbound(&syn, 0).unwrap();
        let rst = tcp(A, B, 3306, 55000, Flags::Rst);
        let check = flows.inbound(&reply(&wrap, &rst), wrap.port, 1);
        assert_eq!(check, ReplyCheck::Deliver { inner_offset: GWLB_HEADER_LEN, reject: true });
        let retry = flows.outbound(&syn, 2).unwrap();
        assert_eq!(retry.start, FlowStart::Renewed);
        // A RST that an endpoint sent through the simulator is no reject when it comes back.
        let wrap = flows.outbound(&rst, 3).unwrap();
        let check = flows.inbound(&reply(&wrap, &rst), wrap.port, 4);
        assert_eq!(check, ReplyCheck::Deliver { inner_offset: GWLB_HEADER_LEN, reject: false });
    }

    #[test]
    fn an_icmp_unreachable_is_matched_to_the_flow_it_quotes() {
        let mut flows = SimFlows::new(settings());
        let query = udp(A, B, 5000, 53);
        let wrap = flows.outbound(&query, 0).unwrap();
        let mut unreachable = Vec::new();
        PacketBuilder::ipv4(B, A, 64)
            .icmpv4_raw(3, 13, [0; 4])
            .write(&mut unreachable, &query[..28])
            .unwrap();
        let check = flows.inbound(&reply(&wrap, &unreachable), wrap.port, 1);
        assert_eq!(check, ReplyCheck::Deliver { inner_offset: GWLB_HEADER_LEN, reject: true });
        // Plain pings are flows of their own, keyed by the echo identifier.
        let mut ping = Vec::new();
        PacketBuilder::ipv4(A, B, 64).icmpv4_echo_request(77, 1).write(&mut ping, b"hi").unwrap();
        let echo = flows.outbound(&ping, 2).unwrap();
        assert_eq!(echo.start, FlowStart::New);
        let mut pong = Vec::new();
        PacketBuilder::ipv4(B, A, 64).icmpv4_echo_reply(77, 1).write(&mut pong, b"hi").unwrap();
        assert_eq!(flows.outbound(&pong, 3).unwrap().header, echo.header);
    }

    #[test]
    fn ipv6_flows_get_the_ipv6_protocol_type() {
        let mut flows = SimFlows::new(settings());
        let mut inner = Vec::new();
        PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64)
            .udp(5000, 53)
            .write(&mut inner, b"query")
            .unwrap();
        let wrap = flows.outbound(&inner, 0).unwrap();
        assert_eq!(u16::from_be_bytes([wrap.header[2], wrap.header[3]]), PROTOCOL_IPV6);
        let check = flows.inbound(&reply(&wrap, &inner), wrap.port, 1);
        assert!(matches!(check, ReplyCheck::Deliver { .. }));
    }

    #[test]
    fn cookies_do_not_repeat_across_many_flows() {
        let mut flows = SimFlows::new(SimSettings { max_flows: 5000, ..settings() });
        let mut cookies = std::collections::HashSet::new();
        for port in 1..=5000u16 {
            let wrap = flows.outbound(&udp(A, B, port, 53), 0).unwrap();
            assert!(cookies.insert(wrap.cookie()), "cookie repeated at flow {port}");
        }
    }
}
