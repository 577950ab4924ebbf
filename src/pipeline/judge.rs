//! Judging: the stateful decision on a decoded packet. A known flow keeps its decision until
//! the snapshot changes; an unknown one is judged as started by its sender, or, for a TCP
//! segment with ACK that the sender may not start, the other way round (mid-flow pickup);
//! later fragments are packets of their first fragment's flow, judged as it was.
//!
//! Must not depend on: sockets, the flow log (records go to the pipeline's queue).

use std::sync::Arc;

use super::decode::DecodedPacket;
use super::{FlowEvent, Pipeline};
use crate::conntrack::{Flow, FlowEnd, FlowKey, Side, TcpState, has_ports};
use crate::packet::{InnerPacket, Transport, ip_proto, is_pure_syn, tcp_flags};
use crate::policy::Decision;
use crate::snapshot::Snapshot;

impl Pipeline {
    pub(super) fn judge(
        &mut self,
        snapshot: &Arc<Snapshot>,
        packet: &DecodedPacket,
        datagram: &[u8],
    ) -> Decision {
        let inner = &packet.inner;
        let now = self.now_ms;
        let len = datagram.len();
        self.repeatable = false;
        if inner.is_icmp_error()
            && let Some(decision) =
                self.judge_flow_error(snapshot, inner, &datagram[packet.geneve_header_len..], len)
        {
            return decision;
        }
        if inner.transport == Transport::Fragment {
            // A later fragment is a packet of its first fragment's flow, with its ports, and
            // judged as it was: the rest of a SYN that the responder of a known flow sends is
            // its own connection, refused as its first fragment was, never part of the flow.
            return match self.fragments.first_of(inner, now) {
                Some(first) => self.judge_flow(snapshot, packet, len, first.ports, first.flags).0,
                None => judge_unmatched_fragment(snapshot, inner),
            };
        }
        if let Some(fragment) = inner.fragment {
            self.fragments.remember(inner, fragment.id, now);
        }
        let ports = inner.transport.flow_ports();
        let (decision, repeatable) =
            self.judge_flow(snapshot, packet, len, ports, inner.transport.tcp_flags());
        // A copy of a datagram that is no fragment changes nothing but the counters when its
        // flags leave the flow's TCP state as it is and it would not be judged afresh (a SYN
        // on a closed flow, or from the responder side, starts a flow of its own).
        self.repeatable = repeatable && inner.fragment.is_none();
        decision
    }

    /// Judges a packet of the flow `ports` names (its own, or its first fragment's), with TCP
    /// flags `flags`; returns the decision, and whether a copy of the packet would change
    /// nothing but the flow's counters.
    /// Inlined: it is the whole of an established flow's judging, and as a call of its own
    /// (which the compiler chose once the fragment path called it too) it cost every packet
    /// ~10 % more instructions (docs/performance.md, hostile-traffic A/B).
    #[inline(always)]
    fn judge_flow(
        &mut self,
        snapshot: &Arc<Snapshot>,
        packet: &DecodedPacket,
        len: usize,
        (sport, dport): (u16, u16),
        flags: u8,
    ) -> (Decision, bool) {
        let inner = &packet.inner;
        let now = self.now_ms;
        let (key, sender) = FlowKey::of_packet(inner.src, sport, inner.dst, dport, inner.protocol);
        let is_tcp = inner.protocol == ip_proto::TCP;
        let pure_syn = is_pure_syn(inner.protocol, flags);
        let later_fragment = inner.transport == Transport::Fragment;
        let (flows, records) = (&mut self.flows, &mut self.records);
        let mut ended =
            |flow: Flow, end: FlowEnd| records.push(FlowEvent::End(end), flow, snapshot);

        if let Some(flow) = flows.lookup(&key, now, &mut ended) {
            let from_responder = sender != flow.initiator;
            let refused = !flow.decision.action.passes();
            if !judged_afresh(flow, sender, pure_syn, later_fragment) {
                rejudge_if_stale(flow, snapshot);
                flow.last_seen_ms = now;
                flow.packets += 1;
                flow.bytes += len as u64;
                flow.tcp = flow.tcp.advance(flags);
                flow.cookie = packet.gwlb.flow_cookie;
                return (flow.decision, repeatable(flow, sender, flags, pure_syn));
            }
            if pure_syn && from_responder && !refused && flow.tcp != TcpState::Closed {
                // The responder's own connection: unless policy lets it open one, it is
                // refused and the flow it would have turned around stays as it is.
                let own = snapshot.decide(
                    inner.src,
                    inner.dst,
                    inner.protocol,
                    service_port(inner.protocol, dport),
                );
                if !own.action.passes() {
                    return (own, false);
                }
            }
            if let Some(old) = flows.remove(&key) {
                ended(old, FlowEnd::Replaced);
            }
        }

        // A flow never seen: judge it as started by the sender. Only a TCP segment with ACK
        // can be a reply of a flow started before we saw it (GWLB rebalanced it, or this
        // appliance restarted: mid-flow pickup), so only then, when the sender may not start
        // it, is it judged the other way round too. UDP, ICMP and the rest need the flow to
        // exist: `client -> dns udp/53` must not let dns send to client ports unasked.
        let forward = snapshot.decide(
            inner.src,
            inner.dst,
            inner.protocol,
            service_port(inner.protocol, dport),
        );
        let may_be_reply = is_tcp && flags & tcp_flags::ACK != 0;
        let (initiator, decision) = if forward.action.passes() || !may_be_reply {
            (sender, forward)
        } else {
            let reverse = snapshot.decide(
                inner.dst,
                inner.src,
                inner.protocol,
                service_port(inner.protocol, sport),
            );
            if reverse.action.passes() { (sender.other(), reverse) } else { (sender, forward) }
        };
        let tcp = match (is_tcp, pure_syn) {
            (false, _) => TcpState::NotTcp,
            (true, true) => TcpState::SynSent,
            (true, false) => TcpState::Established.advance(flags),
        };
        let flow = Flow {
            key,
            initiator,
            generation: snapshot.generation,
            decision,
            rule_name: logged_rule_name(snapshot, &decision),
            tcp,
            started_ms: now,
            last_seen_ms: now,
            packets: 1,
            bytes: len as u64,
            cookie: packet.gwlb.flow_cookie,
            endpoint_id: packet.gwlb.endpoint_id,
            attachment_id: packet.gwlb.attachment_id,
        };
        self.created += 1;
        let flow = flows.insert(flow, &mut ended);
        let repeatable = repeatable(flow, sender, flags, pure_syn);
        if records.wanted(flow) {
            records.push(FlowEvent::Start, flow.clone(), snapshot);
        }
        (decision, repeatable)
    }

    /// An ICMP error (destination unreachable, packet too big, time exceeded, parameter
    /// problem) that quotes a packet of a known flow and goes to that packet's source belongs
    /// to the flow, whoever sent it (a router on the path): it gets the flow's decision and is
    /// counted with it, without keeping the flow alive. `None` when it belongs to no flow (it
    /// is then judged by policy as ICMP between its own addresses).
    fn judge_flow_error(
        &mut self,
        snapshot: &Arc<Snapshot>,
        error: &InnerPacket,
        bytes: &[u8],
        len: usize,
    ) -> Option<Decision> {
        let quoted = error.quoted(bytes)?;
        if quoted.src != error.dst || quoted.transport == Transport::Fragment {
            return None;
        }
        let (key, _) = FlowKey::of(&quoted);
        let (flows, records) = (&mut self.flows, &mut self.records);
        let flow = flows.lookup(&key, self.now_ms, &mut |flow: Flow, end: FlowEnd| {
            records.push(FlowEvent::End(end), flow, snapshot)
        })?;
        rejudge_if_stale(flow, snapshot);
        flow.packets += 1;
        flow.bytes += len as u64;
        Some(flow.decision)
    }
}

/// A later fragment whose first fragment was not seen (or is forgotten): judged as started by
/// its sender without ports, so only rules that admit the whole protocol can match.
fn judge_unmatched_fragment(snapshot: &Snapshot, inner: &InnerPacket) -> Decision {
    snapshot.decide(inner.src, inner.dst, inner.protocol, None)
}

/// Whether a packet that `sender` sends on the known flow `flow` is judged afresh, as a flow
/// of its sender, instead of as a packet of `flow`: a SYN reusing a finished 5-tuple (GWLB
/// gives it a new cookie); a SYN from the responder side, which opens a connection of its own
/// and is never a reply (else a server allowed to answer could turn the flow around and
/// connect to its client's port); and any packet from the responder side of a flow that was
/// refused, which must not poison the 5-tuple for the legitimate direction. A later fragment
/// (`later_fragment`) is judged as its first fragment was: afresh only as a SYN (whose flags
/// it carries), never for the verdict of the flow, which its first fragment may have changed
/// (a responder's packet on a flow that a new policy refuses is judged as a packet of the
/// flow, and refused; the rest of it must not then pass as a connection of its own).
pub(super) fn judged_afresh(
    flow: &Flow,
    sender: Side,
    pure_syn: bool,
    later_fragment: bool,
) -> bool {
    let from_responder = sender != flow.initiator;
    let refused = !flow.decision.action.passes();
    (pure_syn && (flow.tcp == TcpState::Closed || from_responder))
        || (refused && from_responder && !later_fragment)
}

/// Whether a copy of the packet just judged on `flow` (from `sender`, with `flags`) would change
/// nothing but the flow's counters: its flags leave the TCP state as it is, and it would not
/// be judged afresh.
fn repeatable(flow: &Flow, sender: Side, flags: u8, pure_syn: bool) -> bool {
    flow.tcp.advance(flags) == flow.tcp && !judged_afresh(flow, sender, pure_syn, false)
}

/// Policy or labels changed since `flow` was judged: judge it again, as its initiator started it.
fn rejudge_if_stale(flow: &mut Flow, snapshot: &Snapshot) {
    if flow.generation == snapshot.generation {
        return;
    }
    let key = flow.key;
    let (from, _) = key.endpoint(flow.initiator);
    let (to, to_port) = key.endpoint(flow.initiator.other());
    flow.decision = snapshot.decide(from, to, key.protocol, service_port(key.protocol, to_port));
    flow.generation = snapshot.generation;
}

/// The port a rule's `ports` is matched against: the responder's, for TCP and UDP.
fn service_port(protocol: u8, port: u16) -> Option<u16> {
    has_ports(protocol).then_some(port)
}

/// The rule name a logged flow keeps (an `Arc` clone only for flows the flow log records).
fn logged_rule_name(snapshot: &Snapshot, decision: &Decision) -> Option<Arc<str>> {
    let rule = decision.rule.filter(|_| decision.logged())?;
    snapshot.policy.rules.get(rule).map(|r| Arc::clone(&r.name))
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{FlowCounts, Outcome};
    use crate::packet::tcp_flags;
    use crate::policy::Action;

    #[test]
    fn return_traffic_of_an_allowed_flow_is_allowed() {
        let (mut p, _) = pipeline();
        assert_eq!(
            run(&mut p, &tcp(CLIENT, DB, 4000, 3306, SYN)),
            Outcome::SendBack(Action::Allow)
        );
        assert_eq!(
            run(&mut p, &tcp(DB, CLIENT, 3306, 4000, SYN_ACK)),
            Outcome::SendBack(Action::Allow)
        );
        assert_eq!(p.flow_counts(), FlowCounts { active: 1, created: 1, ..FlowCounts::default() });
    }

    #[test]
    fn a_pure_syn_is_never_taken_for_a_reply() {
        let (mut p, _) = pipeline();
        // From db:3306 to a client: only a reply of client -> db:3306 could allow it.
        assert!(matches!(
            run(&mut p, &tcp(DB, CLIENT, 3306, 4001, SYN)),
            Outcome::Withhold(Action::Deny)
        ));
        assert_eq!(
            run(&mut p, &tcp(DB, CLIENT, 3306, 4002, SYN_ACK)),
            Outcome::SendBack(Action::Allow)
        );
        assert_eq!(
            run(&mut p, &tcp(DB, CLIENT, 3306, 4003, ACK)),
            Outcome::SendBack(Action::Allow)
        );
    }

    #[test]
    fn a_new_snapshot_rejudges_established_flows_on_their_next_packet() {
        let (mut p, cell) = pipeline();
        assert_eq!(
            run(&mut p, &tcp(CLIENT, DB, 4000, 3306, SYN)),
            Outcome::SendBack(Action::Allow)
        );
        cell.store(snapshot(2, &POLICY.replace("tcp/3306, ", "")));
        assert_eq!(
            run(&mut p, &tcp(CLIENT, DB, 4000, 3306, ACK)),
            Outcome::SendBack(Action::Allow),
            "same batch: old snapshot"
        );
        p.begin_batch(2);
        assert!(matches!(run(&mut p, &tcp(DB, CLIENT, 3306, 4000, ACK)), Outcome::Reject { .. }));
        assert_eq!(p.flow_counts().created, 1, "judged again, not created again");
    }

    #[test]
    fn a_syn_on_a_closed_five_tuple_starts_a_new_flow() {
        let (mut p, _) = pipeline();
        run(&mut p, &tcp(CLIENT, DB, 4000, 3306, SYN));
        run(&mut p, &tcp(DB, CLIENT, 3306, 4000, tcp_flags::RST | ACK));
        run(&mut p, &tcp(CLIENT, DB, 4000, 3306, SYN));
        assert_eq!(p.flow_counts().created, 2);
    }

    #[test]
    fn rule_hits_count_every_packet_under_its_rule() {
        let (mut p, cell) = pipeline();
        run(&mut p, &tcp(CLIENT, DB, 4000, 3306, SYN));
        run(&mut p, &tcp(DB, CLIENT, 3306, 4000, SYN_ACK));
        run(&mut p, &tcp(STRANGER, DB, 1, 22, SYN));
        run(&mut p, &tcp(STRANGER, CLIENT, 1, 22, SYN));
        let s = cell.load();
        assert_eq!(s.rule_hits.total(Some(0)), 2);
        assert_eq!(s.rule_hits.total(Some(1)), 1);
        assert_eq!(s.rule_hits.total(None), 1);
    }

    #[test]
    fn a_syn_from_the_responder_of_a_known_flow_is_a_connection_of_its_own() {
        let (mut p, _) = pipeline();
        // db's ACK from 3306 is taken for a reply of client -> db:3306 (mid-flow pickup)...
        assert_eq!(
            run(&mut p, &tcp(DB, CLIENT, 3306, 4000, ACK)),
            Outcome::SendBack(Action::Allow)
        );
        // ...but a SYN on the same 5-tuple is db connecting to the client: not allowed.
        assert_eq!(run(&mut p, &tcp(DB, CLIENT, 3306, 4000, SYN)), Outcome::Withhold(Action::Deny));
        // The flow it tried to turn around is untouched.
        assert_eq!(
            run(&mut p, &tcp(CLIENT, DB, 4000, 3306, ACK)),
            Outcome::SendBack(Action::Allow)
        );
        assert_eq!(p.flow_counts().created, 1);
        // Also on a flow the client started with a SYN.
        run(&mut p, &tcp(CLIENT, DB, 4001, 3306, SYN));
        assert_eq!(run(&mut p, &tcp(DB, CLIENT, 3306, 4001, SYN)), Outcome::Withhold(Action::Deny));
        assert_eq!(
            run(&mut p, &tcp(DB, CLIENT, 3306, 4001, SYN_ACK)),
            Outcome::SendBack(Action::Allow)
        );
    }

    #[test]
    fn udp_is_never_judged_in_reverse() {
        let (mut p, _) = pipeline();
        // From db's port 53 to a client port no query went out from.
        assert_eq!(run(&mut p, &udp(DB, CLIENT, 53, 5000)), Outcome::Withhold(Action::Deny));
        // A query first: its answer belongs to the flow.
        assert_eq!(run(&mut p, &udp(CLIENT, DB, 5001, 53)), Outcome::SendBack(Action::Allow));
        assert_eq!(run(&mut p, &udp(DB, CLIENT, 53, 5001)), Outcome::SendBack(Action::Allow));
    }

    #[test]
    fn only_a_tcp_segment_with_ack_is_taken_for_a_reply_of_an_unknown_flow() {
        let (mut p, _) = pipeline();
        let fin = tcp_flags::FIN;
        for (flags, passes) in [(fin, false), (tcp_flags::RST, false), (0, false), (ACK, true)] {
            let port = 4100 + u16::from(flags);
            let outcome = run(&mut p, &tcp(DB, CLIENT, 3306, port, flags));
            assert_eq!(outcome == Outcome::SendBack(Action::Allow), passes, "flags {flags:#x}");
        }
    }

    /// An ICMPv4 error of `icmp_type`/`code` from `from` to `to`, quoting the first 28 bytes
    /// of the TCP segment `quoted_src:sport -> quoted_dst:dport`.
    fn icmp_error(from: [u8; 4], to: [u8; 4], quoted: ([u8; 4], [u8; 4], u16, u16)) -> Vec<u8> {
        let (src, dst, sport, dport) = quoted;
        let mut segment = Vec::new();
        etherparse::PacketBuilder::ipv4(src, dst, 64)
            .tcp(sport, dport, 10, 1000)
            .ack(20)
            .write(&mut segment, &[0u8; 1400])
            .unwrap();
        let mut error = Vec::new();
        etherparse::PacketBuilder::ipv4(from, to, 64)
            .icmpv4_raw(3, 4, [0, 0, 0x05, 0x78]) // fragmentation needed, MTU 1400
            .write(&mut error, &segment[..28])
            .unwrap();
        geneve(error)
    }

    #[test]
    fn icmp_errors_of_a_flow_pass_with_it_whoever_sends_them() {
        let (mut p, _) = pipeline();
        const ROUTER: [u8; 4] = [10, 99, 0, 1];
        let allow = Outcome::SendBack(Action::Allow);
        assert_eq!(run(&mut p, &tcp(CLIENT, DB, 4000, 3306, SYN)), allow);
        // A router on the path tells the client its segment was too big: part of the flow.
        assert_eq!(run(&mut p, &icmp_error(ROUTER, CLIENT, (CLIENT, DB, 4000, 3306))), allow);
        // Counted with the flow, not a flow of its own.
        assert_eq!(p.flow_counts().created, 1);
        assert_eq!(p.flows().map(|f| f.packets).sum::<u64>(), 2);
        // The same error sent to the other end is no reply to anything the client sent.
        assert!(!run(&mut p, &icmp_error(ROUTER, DB, (CLIENT, DB, 4000, 3306))).eq(&allow));
        // An error quoting a flow never seen is judged by policy (ICMP router -> client: deny).
        assert_eq!(
            run(&mut p, &icmp_error(ROUTER, CLIENT, (CLIENT, DB, 4999, 3306))),
            Outcome::Withhold(Action::Deny)
        );
        // An error of a refused flow gets its verdict, and no answer.
        assert!(matches!(run(&mut p, &tcp(STRANGER, DB, 5000, 3306, SYN)), Outcome::Reject { .. }));
        assert_eq!(
            run(&mut p, &icmp_error(ROUTER, STRANGER, (STRANGER, DB, 5000, 3306))),
            Outcome::Withhold(Action::Reject)
        );
    }
}
