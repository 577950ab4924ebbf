//! Judging: the stateful decision on a decoded packet. A known flow keeps its decision until
//! the snapshot changes; an unknown one is judged as started by its sender, or, for a TCP
//! segment with ACK that the sender may not start, the other way round (mid-flow pickup);
//! later fragments are packets of their first fragment's flow, judged as it was.
//!
//! Must not depend on: sockets, the flow log (records go to the pipeline's queue).

use std::sync::Arc;

use super::decode::DecodedPacket;
use super::pending::{Fed, HoldPool, NameCounts, NameResult};
use super::records::FlowRecords;
use super::{FlowEvent, HeldVerdicts, Outcome, Pipeline, RejectBudget};
use crate::conntrack::{Flow, FlowEnd, FlowKey, Side, TcpState, has_ports};
use crate::names::{NameTable, Reading, ServerName, read_stream};
use crate::packet::{InnerPacket, Transport, ip_proto, is_pure_syn, tcp_flags};
use crate::policy::{Action, Decision, Judgement, NameState};
use crate::reject::{MAX_REJECT_LEN, Rst};
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
        let (flows, records, names) = (&mut self.flows, &mut self.records, &mut self.name_table);
        let found = flows.lookup(&key, now, &mut |flow, end| {
            records.ended(flow, end, snapshot, names);
        });
        if let Some(flow) = found {
            let from_responder = sender != flow.initiator;
            let refused = !flow.decision.action.passes();
            // One branch for flows of policies without `domains` groups: `pending` is never
            // set for them.
            if flow.pending.is_none() && !judged_afresh(flow, sender, pure_syn, later_fragment) {
                rejudge_if_stale(flow, snapshot, names);
                flow.last_seen_ms = now;
                flow.packets += 1;
                flow.bytes += len as u64;
                flow.tcp = flow.tcp.advance(flags);
                flow.cookie = packet.gwlb.flow_cookie;
                return (flow.decision, repeatable(flow, sender, flags, pure_syn));
            }
            // A SYN from the responder is a connection of its own, judged below as always.
            // Handled by the caller, which has the datagram ([`Pipeline::pending_packet`]).
            if let Some(slot) = flow.pending
                && !(pure_syn && from_responder)
            {
                self.pending_hit = Some(PendingHit { slot, sender, flags, counted: false });
                return (flow.decision, false);
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
                records.ended(old, FlowEnd::Replaced, snapshot, names);
            }
        }

        // A flow never seen: judge it as started by the sender. Only a TCP segment with ACK
        // can be a reply of a flow started before we saw it (GWLB rebalanced it, or this
        // appliance restarted: mid-flow pickup), so only then, when the sender may not start
        // it, is it judged the other way round too. UDP, ICMP and the rest need the flow to
        // exist: `client -> dns udp/53` must not let dns send to client ports unasked.
        // The sender's first packet (a SYN, or any other protocol's) may wait for the name;
        // a TCP flow picked up mid-flow is judged with none (its first bytes are gone).
        let port = service_port(inner.protocol, dport);
        let mut pending_rule = None;
        let forward = if pure_syn || !is_tcp {
            match snapshot.judge(inner.src, inner.dst, inner.protocol, port, NameState::Unknown) {
                Judgement::Decided(decision) => decision,
                Judgement::NeedsName { rule } => {
                    pending_rule = Some(rule);
                    snapshot.decide(inner.src, inner.dst, inner.protocol, port)
                }
            }
        } else {
            if snapshot.policy.uses_names()
                && snapshot.judge(inner.src, inner.dst, inner.protocol, port, NameState::Unknown)
                    != Judgement::Decided(snapshot.decide(
                        inner.src,
                        inner.dst,
                        inner.protocol,
                        port,
                    ))
            {
                self.server_names.add(NameResult::PickedUpMidFlow);
            }
            snapshot.decide(inner.src, inner.dst, inner.protocol, port)
        };
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
        let pending = match pending_rule {
            Some(_) => {
                let slot = self.pool.open(key, is_tcp, now);
                if slot.is_none() {
                    self.server_names.add(NameResult::PendingFull);
                }
                slot
            }
            None => None,
        };
        let decision = match (pending, pending_rule) {
            // Waiting: what passes meanwhile (the handshake, the server's packets) passes as
            // the flow's; nothing is logged or counted under a rule until the verdict.
            (Some(_), Some(rule)) => {
                Decision { action: Action::Allow, rule: Some(rule), log: false }
            }
            _ => decision,
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
            server_name: None,
            pending,
        };
        self.created += 1;
        let flow = flows.insert(flow, &mut |flow, end| records.ended(flow, end, snapshot, names));
        if let Some(slot) = pending {
            self.pending_hit = Some(PendingHit { slot, sender, flags, counted: true });
            return (flow.decision, false);
        }
        let repeatable = repeatable(flow, sender, flags, pure_syn);
        if records.wanted(flow) {
            records.push(FlowEvent::Start, flow.clone(), snapshot, names);
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
        let (flows, records, names) = (&mut self.flows, &mut self.records, &mut self.name_table);
        let flow = flows.lookup(&key, self.now_ms, &mut |flow, end| {
            records.ended(flow, end, snapshot, names);
        })?;
        rejudge_if_stale(flow, snapshot, names);
        flow.packets += 1;
        flow.bytes += len as u64;
        Some(flow.decision)
    }
}

impl Pipeline {
    /// The outcome of a packet of a pending flow that judging just found (or created) and
    /// left in `pending_hit`. Out of line and cold, with the datagram passed only here: as
    /// part of judging, it cost every established packet ~15 instructions.
    #[cold]
    #[inline(never)]
    pub(super) fn pending_packet(
        &mut self,
        hit: PendingHit,
        snapshot: &Arc<Snapshot>,
        packet: &DecodedPacket,
        datagram: &[u8],
    ) -> Outcome {
        // Judging found or inserted it last.
        let Some(flow) = self.flows.recent_mut().filter(|f| f.pending == Some(hit.slot)) else {
            return Outcome::Withhold(Action::Deny);
        };
        if !hit.counted {
            flow.last_seen_ms = self.now_ms;
            flow.packets += 1;
            flow.bytes += datagram.len() as u64;
            flow.tcp = flow.tcp.advance(hit.flags);
            flow.cookie = packet.gwlb.flow_cookie;
        }
        let mut parts = PendingParts {
            pool: &mut self.pool,
            rejects: &mut self.rejects,
            counts: &mut self.server_names,
            names: &mut self.name_table,
            records: &mut self.records,
            held_verdicts: &mut self.held_verdicts,
            now_ms: self.now_ms,
            origin: self.origin,
            worker: self.worker,
        };
        parts.packet(snapshot, flow, hit.slot, packet, datagram, hit.sender)
    }

    /// Judges the pending flows that waited longer than `names.timeout` (a few slots per
    /// batch, like the flow table's sweep) with no name; frees the slots of flows that left
    /// the table meanwhile.
    pub(super) fn sweep_pending(&mut self) {
        const NONE: Option<(u32, FlowKey)> = None;
        let mut due = [NONE; 64];
        let mut count = 0;
        self.pool.sweep(self.now_ms, &mut |slot, key| {
            if let Some(entry) = due.get_mut(count) {
                *entry = Some((slot, key));
                count += 1;
            }
        });
        let Some(snapshot) = self.snapshot.take() else { return };
        for (slot, key) in due.iter().flatten() {
            let (flows, records, names) =
                (&mut self.flows, &mut self.records, &mut self.name_table);
            let now = self.now_ms;
            let flow = flows.lookup(key, now, &mut |flow, end| {
                records.ended(flow, end, &snapshot, names);
            });
            match flow {
                Some(flow) if flow.pending == Some(*slot) => {
                    let mut parts = PendingParts {
                        pool: &mut self.pool,
                        rejects: &mut self.rejects,
                        counts: &mut self.server_names,
                        names,
                        records,
                        held_verdicts: &mut self.held_verdicts,
                        now_ms: now,
                        origin: self.origin,
                        worker: self.worker,
                    };
                    parts.settle(&snapshot, flow, *slot, None, NameResult::Timeout);
                }
                _ => {
                    // Its flow left the table: what it held is dropped.
                    self.held_verdicts.add(Action::Deny, self.pool.take_counts(*slot));
                    self.pool.close(*slot);
                }
            }
        }
        self.snapshot = Some(snapshot);
    }
}

/// A packet of a pending flow, found by judging: its slot, sender and TCP flags, and whether
/// it was counted already (a new flow's first packet is).
#[derive(Debug, Clone, Copy)]
pub(super) struct PendingHit {
    slot: u32,
    sender: Side,
    flags: u8,
    counted: bool,
}

/// What judging a pending flow's packet works with: disjoint parts of the pipeline, so that
/// the flow (borrowed from the table) can be changed at the same time.
struct PendingParts<'p> {
    pool: &'p mut HoldPool,
    rejects: &'p mut RejectBudget,
    counts: &'p mut NameCounts,
    names: &'p mut NameTable,
    records: &'p mut FlowRecords,
    held_verdicts: &'p mut HeldVerdicts,
    now_ms: u64,
    origin: u128,
    worker: usize,
}

impl PendingParts<'_> {
    /// A packet of the pending flow `flow` (slot `slot`) from `sender`: the server's pass
    /// (handshake replies; a server that speaks first cannot be named, and its flow is judged
    /// at the timeout), the client's handshake passes, the client's bytes are held and read.
    fn packet(
        &mut self,
        snapshot: &Arc<Snapshot>,
        flow: &mut Flow,
        slot: u32,
        packet: &DecodedPacket,
        datagram: &[u8],
        sender: Side,
    ) -> Outcome {
        if self.pool.timed_out(slot, self.now_ms) {
            let decision = self.settle(snapshot, flow, slot, None, NameResult::Timeout);
            return after_verdict(decision);
        }
        if flow.generation != snapshot.generation {
            // Policy or labels changed while it waited: judged again as it started; a policy
            // that no longer needs the name decides now (no name was read: not counted).
            flow.generation = snapshot.generation;
            let key = flow.key;
            let (from, _) = key.endpoint(flow.initiator);
            let (to, to_port) = key.endpoint(flow.initiator.other());
            let port = service_port(key.protocol, to_port);
            match snapshot.judge(from, to, key.protocol, port, NameState::Unknown) {
                Judgement::Decided(decision) => {
                    self.conclude(snapshot, flow, slot, decision);
                    // This packet goes after what was held (the caller takes releases first).
                    return after_verdict(decision);
                }
                Judgement::NeedsName { rule } => flow.decision.rule = Some(rule),
            }
        }
        if sender != flow.initiator {
            return Outcome::SendBack(Action::Allow);
        }
        let inner = &packet.inner;
        self.pool.client_seen(slot, &datagram[..packet.geneve_header_len], self.origin);
        let fed = match inner.transport {
            Transport::Tcp { flags, seq, ack, payload_len, .. } if inner.fragment.is_none() => {
                let ack = (flags & tcp_flags::ACK != 0).then_some(ack);
                let syn = flags & tcp_flags::SYN != 0;
                if flags & tcp_flags::RST != 0 {
                    // The client gave up: what it sent never reaches the server.
                    self.held_verdicts.add(Action::Deny, self.pool.take_counts(slot));
                    self.pool.close(slot);
                    flow.pending = None;
                    self.counts.add(NameResult::None);
                    flow.decision = decide_with_name(snapshot, flow, self.names);
                    flow.generation = snapshot.generation;
                    // Its packets so far, this RST too, under the rule that decides it now.
                    snapshot.rule_hits.add_many(self.worker, flow.decision.rule, flow.packets);
                    return Outcome::SendBack(Action::Allow);
                }
                let payload = &datagram[datagram.len() - payload_len as usize..];
                if syn && payload_len > 0 {
                    return self.syn_with_data(snapshot, flow, slot, seq, ack, payload);
                }
                if payload_len == 0 {
                    // The handshake passes.
                    self.pool.client_control(slot, seq, ack, syn);
                    return Outcome::SendBack(Action::Allow);
                }
                self.pool.feed(slot, datagram, payload, Some((seq, ack, false)))
            }
            Transport::Udp { .. } => {
                let payload = udp_payload(&datagram[packet.geneve_header_len..]);
                self.pool.feed(slot, datagram, payload, None)
            }
            // A fragment of the client's while the name is read: dropped (it is sent again).
            _ => return Outcome::Withhold(Action::Deny),
        };
        match fed {
            Fed::Held | Fed::Duplicate | Fed::HeldAndRead(Reading::NeedMore) => Outcome::Held,
            Fed::HeldAndRead(reading) => {
                let (name, result) = match reading {
                    Reading::Found(name) => (Some(name), NameResult::Found),
                    Reading::TooLong => (None, NameResult::TooLong),
                    Reading::NoName | Reading::NeedMore => (None, NameResult::None),
                };
                self.settle(snapshot, flow, slot, name, result);
                Outcome::Held
            }
            Fed::NoRoom(reading) => {
                // Judged now, with what was read; this datagram goes after the held ones (the
                // caller takes releases before it acts on the outcome).
                let (name, result) = match reading {
                    Reading::Found(name) => (Some(name), NameResult::Found),
                    Reading::NoName => (None, NameResult::None),
                    Reading::NeedMore | Reading::TooLong => (None, NameResult::TooLong),
                };
                let decision = self.settle(snapshot, flow, slot, name, result);
                after_verdict(decision)
            }
        }
    }

    /// A client SYN that carries data (TCP Fast Open) on a pending flow: its data must not
    /// reach the server before the verdict, and the SYN cannot wait (the handshake needs it).
    /// When the SYN's data alone settles the name (a whole ClientHello or request head, as a
    /// Fast Open client sends), the verdict is given now and the SYN goes or not with it.
    /// Otherwise the SYN is dropped, unread: the client sends its SYN again without data
    /// (Linux keeps the data apart for retransmission) and the data after the handshake,
    /// where it is held and read as any.
    fn syn_with_data(
        &mut self,
        snapshot: &Arc<Snapshot>,
        flow: &mut Flow,
        slot: u32,
        seq: u32,
        ack: Option<u32>,
        payload: &[u8],
    ) -> Outcome {
        let (name, result) = match read_stream(payload, payload.len()) {
            Reading::Found(name) => (Some(name), NameResult::Found),
            Reading::NoName => (None, NameResult::None),
            // Counted as a dropped packet (`verdict="deny"`); the flow waits on.
            Reading::NeedMore | Reading::TooLong => return Outcome::Withhold(Action::Deny),
        };
        self.pool.client_control(slot, seq, ack, true);
        after_verdict(self.settle(snapshot, flow, slot, name, result))
    }

    /// The verdict on a pending flow, with its name or none: held datagrams released in
    /// order (allow, audit), dropped (deny), or replaced by a RST to each end (reject: for
    /// UDP an ICMP error to the client).
    fn settle(
        &mut self,
        snapshot: &Arc<Snapshot>,
        flow: &mut Flow,
        slot: u32,
        name: Option<ServerName>,
        result: NameResult,
    ) -> Decision {
        self.counts.add(result);
        // A pending flow has shown no name yet; interning fails only past one name per flow.
        debug_assert!(flow.server_name.is_none());
        flow.server_name = name.and_then(|name| self.names.intern(&name));
        let decision = decide_with_name(snapshot, flow, self.names);
        self.conclude(snapshot, flow, slot, decision)
    }

    /// Carries out `decision` on the pending flow `flow`: it stops waiting.
    fn conclude(
        &mut self,
        snapshot: &Arc<Snapshot>,
        flow: &mut Flow,
        slot: u32,
        decision: Decision,
    ) -> Decision {
        flow.pending = None;
        flow.decision = decision;
        // What it held is counted as judged now (sent on, dropped, or answered), and every
        // packet it had so far (its handshake too) under the rule that decided it, as if that
        // rule had decided at once: no rule counted them while it waited.
        self.held_verdicts.add(decision.action, self.pool.take_counts(slot));
        snapshot.rule_hits.add_many(self.worker, decision.rule, flow.packets);
        flow.generation = snapshot.generation;
        flow.rule_name = logged_rule_name(snapshot, &decision);
        match decision.action {
            Action::Allow | Action::Audit => self.pool.release(slot),
            Action::Deny => self.pool.close(slot),
            Action::Reject => {
                if self.rejects.take(self.now_ms) {
                    self.reject(flow, slot);
                    self.pool.release(slot);
                } else {
                    self.pool.close(slot);
                }
            }
        }
        if self.records.wanted(flow) {
            self.records.push(FlowEvent::Start, flow.clone(), snapshot, self.names);
        }
        decision
    }

    /// Replaces what `slot` holds by the reject's packets.
    fn reject(&mut self, flow: &Flow, slot: u32) {
        let (client, client_port) = flow.key.endpoint(flow.initiator);
        let (server, server_port) = flow.key.endpoint(flow.initiator.other());
        let mut to_client = [0u8; MAX_REJECT_LEN];
        let mut to_server = [0u8; MAX_REJECT_LEN];
        if flow.key.protocol != ip_proto::TCP {
            let len = self.pool.first_held(slot).and_then(|held| {
                let decoded = super::decode(held).ok()?;
                crate::reject::build(
                    held,
                    decoded.geneve_header_len,
                    &decoded.inner,
                    &mut to_client,
                )
            });
            match len {
                Some(len) => self.pool.replace_held(slot, &[&to_client[..len]]),
                None => self.pool.replace_held(slot, &[]),
            }
            return;
        }
        let (next_seq, client_ack) = self.pool.reject_sequence(slot);
        let Some(header) = self.pool.header(slot) else {
            self.pool.replace_held(slot, &[]);
            return;
        };
        // To the client, as the server: in sequence with what the client acknowledged, or
        // (before its ACK) acknowledging its SYN (RFC 9293 3.10.7.1).
        let client_rst =
            Rst { from: server, to: client, src_port: server_port, dst_port: client_port };
        let client_len = match (client_ack, next_seq) {
            (Some(ack), _) => {
                crate::reject::build_rst(header, client_rst, ack, None, &mut to_client)
            }
            (None, Some(next)) => {
                crate::reject::build_rst(header, client_rst, 0, Some(next), &mut to_client)
            }
            (None, None) => None,
        };
        // To the server, as the client: at the first byte it expects, since none of the
        // client's bytes reached it.
        let server_rst =
            Rst { from: client, to: server, src_port: client_port, dst_port: server_port };
        let server_len = next_seq.and_then(|next| {
            crate::reject::build_rst(header, server_rst, next, None, &mut to_server)
        });
        let packets = [client_len.map(|l| &to_client[..l]), server_len.map(|l| &to_server[..l])];
        let mut kept: [&[u8]; 2] = [&[], &[]];
        let mut n = 0;
        for packet in packets.into_iter().flatten() {
            kept[n] = packet;
            n += 1;
        }
        self.pool.replace_held(slot, &kept[..n]);
    }
}

/// What happens to a packet that arrives as its pending flow's verdict is made (and is not
/// held): what the verdict says; a reject's RSTs are already queued.
fn after_verdict(decision: Decision) -> Outcome {
    match decision.action {
        Action::Allow | Action::Audit => Outcome::SendBack(decision.action),
        action => Outcome::Withhold(action),
    }
}

/// The payload of the UDP datagram in `ip` (an unfragmented IP packet that decoded).
fn udp_payload(ip: &[u8]) -> &[u8] {
    match etherparse::IpSlice::from_slice(ip) {
        Ok(slice) => slice.payload().payload.get(8..).unwrap_or_default(),
        Err(_) => &[],
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
fn rejudge_if_stale(flow: &mut Flow, snapshot: &Snapshot, names: &NameTable) {
    if flow.generation == snapshot.generation {
        return;
    }
    flow.decision = decide_with_name(snapshot, flow, names);
    flow.generation = snapshot.generation;
}

/// `flow`'s decision under `snapshot` with the name it showed (or none, in `names`), as its
/// initiator started it.
fn decide_with_name(snapshot: &Snapshot, flow: &Flow, names: &NameTable) -> Decision {
    let key = flow.key;
    let (from, _) = key.endpoint(flow.initiator);
    let (to, to_port) = key.endpoint(flow.initiator.other());
    let port = service_port(key.protocol, to_port);
    let name = match flow.server_name {
        Some(id) => NameState::Name(names.get(id).as_str()),
        None => NameState::Absent,
    };
    // With the name known (or known to be absent) no rule waits: always a decision.
    match snapshot.judge(from, to, key.protocol, port, name) {
        Judgement::Decided(decision) => decision,
        Judgement::NeedsName { .. } => snapshot.decide(from, to, key.protocol, port),
    }
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
