//! The sans-IO core of the data plane: one GENEVE datagram in, one decision out.
//!
//! [`Pipeline::process`] checks the datagram, finds or creates the inner flow, judges it
//! against the current [`Snapshot`] and says what the caller must do: send it back, withhold
//! it, send a reject in its place, or drop it as malformed. It never touches a socket,
//! allocates nothing on the per-packet path (the flow table is allocated up front) and logs
//! nothing; the caller (a data-plane worker, `labelwall replay`, a bench or the fuzz target)
//! owns the buffers and carries out the decision.
//!
//! Must not depend on: sockets, async, logging.

use std::net::IpAddr;
use std::sync::Arc;

use crate::conntrack::{Flow, FlowEnd, FlowKey, FlowTable, TcpState, Timeouts, has_ports};
use crate::flowlog::{FlowEvent, FlowLogSender, FlowRecord};
use crate::packet::{InnerPacket, Transport, ip_proto, tcp_flags};
use crate::policy::Action;
use crate::snapshot::{Decision, Snapshot, SnapshotCell};
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

/// What the caller must do with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Send the datagram back to GWLB unchanged (`Allow` or `Audit`).
    SendBack(Action),
    /// Send nothing (`Deny`, or `Reject` of a packet that must not be answered).
    Withhold(Action),
    /// Send the first `len` bytes of the inject buffer instead: a TCP RST or ICMP error in
    /// the flow's GENEVE header.
    Reject { len: usize },
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

/// Settings of the stateful part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowSettings {
    /// Flows one worker tracks at most.
    pub max_flows: usize,
    pub timeouts: Timeouts,
}

impl Default for FlowSettings {
    fn default() -> Self {
        FlowSettings { max_flows: 262_144, timeouts: Timeouts::default() }
    }
}

/// Non-first fragments remembered per worker (their verdict follows the first fragment).
const MAX_FRAGMENTS: usize = 4096;
/// How long a fragment series is remembered.
const FRAGMENT_TIMEOUT_MS: u64 = 30_000;

type FragmentKey = (IpAddr, IpAddr, u8, u32);

/// Flow counts of one pipeline, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowCounts {
    pub active: u64,
    pub created: u64,
    pub evicted: u64,
}

/// Per-worker decision state.
#[derive(Debug)]
pub struct Pipeline {
    mode: Mode,
    worker: usize,
    cell: Option<Arc<SnapshotCell>>,
    snapshot: Option<Arc<Snapshot>>,
    flows: FlowTable,
    fragments: std::collections::HashMap<FragmentKey, (Decision, u64), ahash::RandomState>,
    flow_log: Option<FlowLogSender>,
    now_ms: u64,
    created: u64,
}

impl Pipeline {
    /// A pipeline that judges by the snapshots published in `cell`.
    pub fn new(
        mode: Mode,
        worker: usize,
        cell: Option<Arc<SnapshotCell>>,
        flows: FlowSettings,
        flow_log: Option<FlowLogSender>,
    ) -> Self {
        let snapshot = cell.as_ref().map(|c| c.load_full());
        let table_size = if mode == Mode::Reflect { 1 } else { flows.max_flows };
        Pipeline {
            mode,
            worker,
            cell,
            snapshot,
            flows: FlowTable::new(table_size, flows.timeouts),
            fragments: std::collections::HashMap::with_capacity_and_hasher(
                MAX_FRAGMENTS,
                ahash::RandomState::new(),
            ),
            flow_log,
            now_ms: 0,
            created: 0,
        }
    }

    /// Called once per receive batch: picks up the newest snapshot and lets idle flows go.
    pub fn begin_batch(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        if let Some(cell) = &self.cell {
            let current = cell.load();
            if self.snapshot.as_ref().is_none_or(|s| !Arc::ptr_eq(s, &current)) {
                self.snapshot = Some(arc_swap::Guard::into_inner(current));
            }
        }
        if self.mode == Mode::Inspect {
            let (flows, log, snapshot) = (&mut self.flows, &self.flow_log, &self.snapshot);
            flows.sweep(now_ms, &mut |flow, end| log_end(log, snapshot, flow, end));
        }
    }

    /// Ends every flow (writing end records); for shutdown.
    pub fn finish(&mut self) {
        let (flows, log, snapshot) = (&mut self.flows, &self.flow_log, &self.snapshot);
        flows.drain(&mut |flow, end| log_end(log, snapshot, flow, end));
    }

    pub fn flow_counts(&self) -> FlowCounts {
        FlowCounts {
            active: self.flows.len() as u64,
            created: self.created,
            evicted: self.flows.evictions(),
        }
    }

    /// Decides one datagram. `inject` receives a reject packet when the outcome says so.
    pub fn process(&mut self, datagram: &[u8], inject: &mut [u8]) -> Outcome {
        if self.mode == Mode::Reflect {
            return Outcome::SendBack(Action::Allow);
        }
        let packet = match decode(datagram) {
            Ok(packet) => packet,
            Err(reason) => return Outcome::Drop(reason),
        };
        let Some(snapshot) = self.snapshot.clone() else {
            // No policy has been published yet: nothing may pass.
            return Outcome::Withhold(Action::Deny);
        };
        let decision = self.judge(&snapshot, &packet, datagram.len());
        snapshot.rule_hits.add(self.worker, decision.rule);
        match decision.action {
            Action::Allow | Action::Audit => Outcome::SendBack(decision.action),
            Action::Deny => Outcome::Withhold(Action::Deny),
            Action::Reject => {
                match crate::reject::build(
                    datagram,
                    packet.geneve_header_len,
                    &packet.inner,
                    inject,
                ) {
                    Some(len) => Outcome::Reject { len },
                    None => Outcome::Withhold(Action::Reject),
                }
            }
        }
    }

    fn judge(&mut self, snapshot: &Arc<Snapshot>, packet: &DecodedPacket, len: usize) -> Decision {
        let inner = &packet.inner;
        let (sport, dport, flags) = match inner.transport {
            Transport::Tcp { src_port, dst_port, flags, .. } => (src_port, dst_port, flags),
            Transport::Udp { src_port, dst_port } => (src_port, dst_port, 0),
            Transport::Icmp { icmp_type, ident, .. } if is_echo(inner.protocol, icmp_type) => {
                (ident, ident, 0)
            }
            Transport::Icmp { .. } | Transport::Other => (0, 0, 0),
            Transport::Fragment => return self.judge_later_fragment(snapshot, inner),
        };
        let decision = self.judge_flow(snapshot, packet, len, sport, dport, flags);
        if let Some(fragment) = inner.fragment {
            self.remember_fragment(inner, fragment.id, decision);
        }
        decision
    }

    fn judge_flow(
        &mut self,
        snapshot: &Arc<Snapshot>,
        packet: &DecodedPacket,
        len: usize,
        sport: u16,
        dport: u16,
        flags: u8,
    ) -> Decision {
        let inner = &packet.inner;
        let now = self.now_ms;
        let (key, sender) = FlowKey::of_packet(inner.src, sport, inner.dst, dport, inner.protocol);
        let is_tcp = inner.protocol == ip_proto::TCP;
        let pure_syn = is_tcp && flags & tcp_flags::SYN != 0 && flags & tcp_flags::ACK == 0;
        let (flows, log) = (&mut self.flows, &self.flow_log);
        let current = Some(Arc::clone(snapshot));
        let mut ended = |flow: Flow, end: FlowEnd| log_end(log, &current, flow, end);

        if let Some(flow) = flows.lookup(&key, now, &mut ended) {
            // Judged afresh instead: a SYN reusing a finished 5-tuple (GWLB gives it a new
            // cookie), and any packet from the responder side of a flow that was refused,
            // which must not poison the 5-tuple for the legitimate direction.
            let fresh = (pure_syn && flow.tcp == TcpState::Closed)
                || (!flow.decision.action.passes() && sender != flow.initiator);
            if !fresh {
                if flow.generation != snapshot.generation {
                    // Policy or labels changed: judge the flow again, as its initiator started it.
                    let (from, _) = key.endpoint(flow.initiator);
                    let (to, to_port) = key.endpoint(flow.initiator.other());
                    flow.decision = snapshot.decide(
                        from,
                        to,
                        key.protocol,
                        service_port(key.protocol, to_port),
                    );
                    flow.generation = snapshot.generation;
                }
                flow.last_seen_ms = now;
                flow.packets += 1;
                flow.bytes += len as u64;
                flow.tcp = flow.tcp.advance(flags);
                flow.cookie = packet.gwlb.flow_cookie;
                return flow.decision;
            }
            if let Some(old) = flows.remove(&key) {
                ended(old, FlowEnd::Replaced);
            }
        }

        // A flow never seen: judge it as started by the sender; if that is not allowed and
        // the packet could be a reply (anything but a TCP SYN without ACK), judge it the
        // other way round too.
        let forward = snapshot.decide(
            inner.src,
            inner.dst,
            inner.protocol,
            service_port(inner.protocol, dport),
        );
        let (initiator, decision) = if forward.action.passes() || pure_syn {
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
        if wants_log(&flow.decision)
            && let Some(log) = log
        {
            log.send(FlowRecord {
                event: FlowEvent::Start,
                flow: flow.clone(),
                snapshot: Arc::clone(snapshot),
            });
        }
        decision
    }

    fn remember_fragment(&mut self, inner: &InnerPacket, id: u32, decision: Decision) {
        let now = self.now_ms;
        if self.fragments.len() >= MAX_FRAGMENTS {
            self.fragments.retain(|_, (_, expires)| *expires > now);
        }
        if self.fragments.len() < MAX_FRAGMENTS {
            let key = (inner.src, inner.dst, inner.protocol, id);
            self.fragments.insert(key, (decision, now + FRAGMENT_TIMEOUT_MS));
        }
    }

    /// A non-first fragment follows its first fragment's verdict; if that was not seen, it is
    /// judged without ports (only rules that admit the whole protocol can match).
    fn judge_later_fragment(&mut self, snapshot: &Snapshot, inner: &InnerPacket) -> Decision {
        let id = inner.fragment.map_or(0, |f| f.id);
        let key = (inner.src, inner.dst, inner.protocol, id);
        if let Some((decision, expires)) = self.fragments.get(&key)
            && *expires > self.now_ms
        {
            return *decision;
        }
        let forward = snapshot.decide(inner.src, inner.dst, inner.protocol, None);
        if forward.action.passes() {
            return forward;
        }
        let reverse = snapshot.decide(inner.dst, inner.src, inner.protocol, None);
        if reverse.action.passes() { reverse } else { forward }
    }
}

fn is_echo(protocol: u8, icmp_type: u8) -> bool {
    match protocol {
        ip_proto::ICMP => matches!(icmp_type, 0 | 8),
        ip_proto::ICMPV6 => matches!(icmp_type, 128 | 129),
        _ => false,
    }
}

/// The port a rule's `ports` is matched against: the responder's, for TCP and UDP.
fn service_port(protocol: u8, port: u16) -> Option<u16> {
    has_ports(protocol).then_some(port)
}

fn wants_log(decision: &Decision) -> bool {
    decision.log || decision.action == Action::Audit
}

fn log_end(
    log: &Option<FlowLogSender>,
    snapshot: &Option<Arc<Snapshot>>,
    flow: Flow,
    end: FlowEnd,
) {
    if let (Some(log), Some(snapshot)) = (log, snapshot)
        && wants_log(&flow.decision)
    {
        log.send(FlowRecord { event: FlowEvent::End(end), flow, snapshot: Arc::clone(snapshot) });
    }
}
