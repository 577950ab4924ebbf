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

/// Decodes `datagram` by comparing it with the datagram before it in the same GRO train,
/// `previous`, which decoded to `decoded`: when the two have the same length, the same GENEVE
/// header and options, and the same inner headers apart from the fields that change from one
/// segment of a flow to the next (IPv4 identification and checksum; TCP sequence and
/// acknowledgment numbers, flags, window, checksum, urgent pointer), every check of [`decode`]
/// has the same outcome for both, and only those fields need reading. `None` when that does
/// not hold (then [`decode`] decides); never a result [`decode`] would not give.
pub fn decode_after(
    previous: &[u8],
    decoded: &DecodedPacket,
    datagram: &[u8],
) -> Option<DecodedPacket> {
    let transport = segment_after(previous, decoded, datagram)?;
    Some(DecodedPacket { inner: InnerPacket { transport, ..decoded.inner }, ..*decoded })
}

/// The comparisons of [`decode_after`]: the transport header of `datagram` when it is a
/// segment of the same flow as `previous` in the sense given there.
fn segment_after(previous: &[u8], decoded: &DecodedPacket, datagram: &[u8]) -> Option<Transport> {
    let inner = &decoded.inner;
    let g = decoded.geneve_header_len;
    if datagram.len() != previous.len() || inner.fragment.is_some() {
        return None;
    }
    // GENEVE base header and every option, byte for byte.
    if datagram.get(..g)? != previous.get(..g)? {
        return None;
    }
    let (ip, previous_ip) = (&datagram[g..], &previous[g..]);
    // The inner IP header up to the transport header, minus the per-segment fields.
    let transport_at = match inner.src {
        std::net::IpAddr::V4(_) => {
            let header_len = usize::from(previous_ip.first()? & 0x0f) * 4;
            let same = ip.get(..4)? == previous_ip.get(..4)?
                && ip.get(6..10)? == previous_ip.get(6..10)?
                && ip.get(12..header_len)? == previous_ip.get(12..header_len)?;
            same.then_some(header_len)?
        }
        // Only without extension headers: the next header must be the transport itself.
        std::net::IpAddr::V6(_) => {
            let same = ip.get(..40)? == previous_ip.get(..40)?;
            (same && previous_ip[6] == inner.protocol).then_some(40)?
        }
    };
    let (l4, previous_l4) = (ip.get(transport_at..)?, previous_ip.get(transport_at..)?);
    let transport = match inner.transport {
        Transport::Tcp { payload_len, .. } => {
            // Ports, and the data offset (so the header length and the payload are the same).
            if l4.get(..4)? != previous_l4.get(..4)? || l4.get(12)? >> 4 != previous_l4[12] >> 4 {
                return None;
            }
            let be32 = |at: usize| u32::from_be_bytes([l4[at], l4[at + 1], l4[at + 2], l4[at + 3]]);
            Transport::Tcp {
                src_port: u16::from_be_bytes([l4[0], l4[1]]),
                dst_port: u16::from_be_bytes([l4[2], l4[3]]),
                flags: l4[13],
                seq: be32(4),
                ack: be32(8),
                payload_len,
            }
        }
        // Ports and length.
        Transport::Udp { .. } if l4.get(..6)? == previous_l4.get(..6)? => inner.transport,
        _ => return None,
    };
    Some(transport)
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
    /// First fragments' decisions: (decision, expiry, snapshot generation).
    fragments: std::collections::HashMap<FragmentKey, (Decision, u64, u64), ahash::RandomState>,
    flow_log: Option<FlowLogSender>,
    now_ms: u64,
    created: u64,
    /// What the last datagram decoded to, for [`Pipeline::process_after`].
    last_decoded: Option<DecodedPacket>,
    /// The last judged datagram's outcome, for copies of it later in its train.
    repeat: Option<Repeat>,
}

/// What the datagram judged last in a train decided, for the datagrams after it that are
/// copies of it but for the per-segment fields ([`segment_after`]) and carry the same TCP
/// flags, which leave the flow's TCP state as it is. Judging such a copy changes nothing but
/// the counters (same flow, same snapshot, same batch clock, same cookie), so a copy takes the
/// outcome as it is and its counts are added to the flow and the rule once, when the run of
/// copies ends ([`Pipeline::settle_repeats`]).
#[derive(Debug, Clone, Copy)]
struct Repeat {
    outcome: Outcome,
    rule: Option<usize>,
    flags: u8,
    /// Copies since the judged datagram, not yet counted.
    packets: u64,
    bytes: u64,
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
            last_decoded: None,
            repeat: None,
        }
    }

    /// Called once per receive batch: picks up the newest snapshot and lets idle flows go.
    pub fn begin_batch(&mut self, now_ms: u64) {
        // Under the batch's clock and snapshot that judged them.
        self.settle_repeats();
        self.now_ms = now_ms;
        if let Some(cell) = &self.cell {
            let current = cell.load();
            if self.snapshot.as_ref().is_none_or(|s| !Arc::ptr_eq(s, &current)) {
                self.snapshot = Some(arc_swap::Guard::into_inner(current));
            }
        }
        if self.mode == Mode::Inspect {
            let (flows, log, snapshot) = (&mut self.flows, &self.flow_log, &self.snapshot);
            flows.sweep(now_ms, &mut |flow, end| log_end(log, snapshot.as_ref(), flow, end));
        }
    }

    /// Ends every flow (writing end records); for shutdown.
    pub fn finish(&mut self) {
        self.settle_repeats();
        let (flows, log, snapshot) = (&mut self.flows, &self.flow_log, &self.snapshot);
        flows.drain(&mut |flow, end| log_end(log, snapshot.as_ref(), flow, end));
    }

    /// Every tracked flow with everything counted so far (for tests and the fuzz target).
    pub fn flows(&mut self) -> impl Iterator<Item = &Flow> {
        self.settle_repeats();
        self.flows.iter()
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
        self.process_after(None, datagram, inject)
    }

    /// As [`Pipeline::process`], for the datagram that follows `previous` in a GRO train
    /// (`previous` must be the datagram of the call before this one): decoded by comparison
    /// with it when they are segments of one flow ([`decode_after`]).
    pub fn process_after(
        &mut self,
        previous: Option<&[u8]>,
        datagram: &[u8],
        inject: &mut [u8],
    ) -> Outcome {
        if self.mode == Mode::Reflect {
            return Outcome::SendBack(Action::Allow);
        }
        if let (Some(previous), Some(decoded), Some(repeat)) =
            (previous, &self.last_decoded, self.repeat.as_mut())
            && let Some(transport) = segment_after(previous, decoded, datagram)
            && transport.tcp_flags() == repeat.flags
        {
            repeat.packets += 1;
            repeat.bytes += datagram.len() as u64;
            return repeat.outcome;
        }
        if self.repeat.is_some_and(|repeat| repeat.packets > 0) {
            self.settle_repeats();
        }
        self.judge_datagram(previous, datagram, inject)
    }

    /// The full path of [`Pipeline::process_after`]: decode, judge, and remember the outcome
    /// for copies. Kept out of line so that the copy path stays small.
    #[inline(never)]
    fn judge_datagram(
        &mut self,
        previous: Option<&[u8]>,
        datagram: &[u8],
        inject: &mut [u8],
    ) -> Outcome {
        if self.repeat.is_some() {
            self.repeat = None;
        }
        let shortcut = match (previous, &self.last_decoded) {
            (Some(previous), Some(decoded)) => decode_after(previous, decoded, datagram),
            _ => None,
        };
        let decoded = match shortcut {
            Some(packet) => Ok(packet),
            None => decode(datagram),
        };
        self.last_decoded = decoded.ok();
        let packet = match decoded {
            Ok(packet) => packet,
            Err(reason) => return Outcome::Drop(reason),
        };
        // Taken out and put back rather than cloned: an `Arc` clone per packet would be an
        // atomic operation on a counter every worker shares.
        let Some(snapshot) = self.snapshot.take() else {
            // No policy has been published yet: nothing may pass.
            return Outcome::Withhold(Action::Deny);
        };
        let decision = self.judge(&snapshot, &packet, datagram.len());
        snapshot.rule_hits.add(self.worker, decision.rule);
        self.snapshot = Some(snapshot);
        // A datagram that is no fragment was judged by its flow, which is now the flow table's
        // most recent one.
        let judged = match packet.inner.fragment {
            None => self.flows.recent_mut().map(|flow| flow.tcp),
            Some(_) => None,
        };
        let outcome = match decision.action {
            Action::Allow | Action::Audit => Outcome::SendBack(decision.action),
            Action::Deny => Outcome::Withhold(Action::Deny),
            // Each reject is built from its own trigger: never repeated.
            Action::Reject => return self.reject(datagram, &packet, inject),
        };
        let flags = packet.inner.transport.tcp_flags();
        if judged.is_some_and(|tcp| tcp.advance(flags) == tcp) {
            let rule = decision.rule;
            self.repeat = Some(Repeat { outcome, rule, flags, packets: 0, bytes: 0 });
        }
        outcome
    }

    fn reject(&mut self, datagram: &[u8], packet: &DecodedPacket, inject: &mut [u8]) -> Outcome {
        match crate::reject::build(datagram, packet.geneve_header_len, &packet.inner, inject) {
            Some(len) => Outcome::Reject { len },
            None => Outcome::Withhold(Action::Reject),
        }
    }

    /// Counts the copies the last [`Repeat`] stood for into its flow and rule.
    #[inline(never)]
    fn settle_repeats(&mut self) {
        let Some(repeat) = self.repeat.take() else { return };
        if repeat.packets == 0 {
            return;
        }
        if let Some(snapshot) = &self.snapshot {
            snapshot.rule_hits.add_many(self.worker, repeat.rule, repeat.packets);
        }
        // The judged datagram's flow: nothing touched the table since.
        if let Some(flow) = self.flows.recent_mut() {
            flow.packets += repeat.packets;
            flow.bytes += repeat.bytes;
        }
    }

    fn judge(&mut self, snapshot: &Arc<Snapshot>, packet: &DecodedPacket, len: usize) -> Decision {
        let inner = &packet.inner;
        if inner.transport == Transport::Fragment {
            return self.judge_later_fragment(snapshot, inner);
        }
        let decision = self.judge_flow(snapshot, packet, len);
        if let Some(fragment) = inner.fragment {
            self.remember_fragment(inner, fragment.id, decision, snapshot.generation);
        }
        decision
    }

    fn judge_flow(
        &mut self,
        snapshot: &Arc<Snapshot>,
        packet: &DecodedPacket,
        len: usize,
    ) -> Decision {
        let inner = &packet.inner;
        let now = self.now_ms;
        let (sport, dport) = inner.transport.flow_ports();
        let flags = inner.transport.tcp_flags();
        let (key, sender) = FlowKey::of(inner);
        let is_tcp = inner.protocol == ip_proto::TCP;
        let pure_syn = is_tcp && flags & tcp_flags::SYN != 0 && flags & tcp_flags::ACK == 0;
        let (flows, log) = (&mut self.flows, &self.flow_log);
        let mut ended = |flow: Flow, end: FlowEnd| log_end(log, Some(snapshot), flow, end);

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

    fn remember_fragment(
        &mut self,
        inner: &InnerPacket,
        id: u32,
        decision: Decision,
        generation: u64,
    ) {
        let now = self.now_ms;
        if self.fragments.len() >= MAX_FRAGMENTS {
            self.fragments.retain(|_, (_, expires, _)| *expires > now);
        }
        if self.fragments.len() < MAX_FRAGMENTS {
            let key = (inner.src, inner.dst, inner.protocol, id);
            self.fragments.insert(key, (decision, now + FRAGMENT_TIMEOUT_MS, generation));
        }
    }

    /// A non-first fragment follows its first fragment's verdict; if that was not seen, it is
    /// judged without ports (only rules that admit the whole protocol can match).
    fn judge_later_fragment(&mut self, snapshot: &Snapshot, inner: &InnerPacket) -> Decision {
        let id = inner.fragment.map_or(0, |f| f.id);
        let key = (inner.src, inner.dst, inner.protocol, id);
        if let Some((decision, expires, generation)) = self.fragments.get(&key)
            && *expires > self.now_ms
            && *generation == snapshot.generation
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

/// The port a rule's `ports` is matched against: the responder's, for TCP and UDP.
fn service_port(protocol: u8, port: u16) -> Option<u16> {
    has_ports(protocol).then_some(port)
}

/// The rule name a logged flow keeps (an `Arc` clone only for flows the flow log records).
fn logged_rule_name(snapshot: &Snapshot, decision: &Decision) -> Option<Arc<str>> {
    let rule = decision.rule.filter(|_| wants_log(decision))?;
    snapshot.policy.rules.get(rule).map(|r| Arc::clone(&r.name))
}

fn wants_log(decision: &Decision) -> bool {
    decision.log || decision.action == Action::Audit
}

/// Hands an ended flow to the flow log if it is logged; the snapshot is cloned only then.
fn log_end(
    log: &Option<FlowLogSender>,
    snapshot: Option<&Arc<Snapshot>>,
    flow: Flow,
    end: FlowEnd,
) {
    if let (Some(log), Some(snapshot)) = (log, snapshot)
        && wants_log(&flow.decision)
    {
        log.send(FlowRecord { event: FlowEvent::End(end), flow, snapshot: Arc::clone(snapshot) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::flow_states;
    use crate::labels::LabelTable;
    use crate::policy::CompiledPolicy;
    use crate::reject::MAX_REJECT_LEN;
    use crate::snapshot::RuleHits;
    use crate::wire::{GWLB_HEADER_LEN, emit_gwlb_header};
    use etherparse::PacketBuilder;
    use std::path::Path;

    const POLICY: &str = "default_action: deny\ngroups:\n  db: {cidrs: [10.20.0.0/24]}\n\
        \x20 clients: {cidrs: [10.0.1.0/24]}\nrules:\n\
        \x20 - {name: to-db, from: [clients], to: [db], ports: [tcp/3306, udp/53], action: allow}\n\
        \x20 - {name: no-db, from: [any], to: [db], action: reject}\n";
    const CLIENT: [u8; 4] = [10, 0, 1, 5];
    const DB: [u8; 4] = [10, 20, 0, 5];
    const STRANGER: [u8; 4] = [192, 0, 2, 9];

    fn snapshot(generation: u64, policy: &str) -> Arc<Snapshot> {
        let policy = CompiledPolicy::parse(Path::new("p.yaml"), policy).unwrap();
        let hits = Arc::new(RuleHits::new(1, policy.rules.len()));
        Arc::new(Snapshot::new(generation, Arc::new(LabelTable::default()), Arc::new(policy), hits))
    }

    fn pipeline() -> (Pipeline, Arc<SnapshotCell>) {
        let cell = Arc::new(arc_swap::ArcSwap::new(snapshot(1, POLICY)));
        let mut p =
            Pipeline::new(Mode::Inspect, 0, Some(Arc::clone(&cell)), FlowSettings::default(), None);
        p.begin_batch(1);
        (p, cell)
    }

    fn geneve(inner: Vec<u8>) -> Vec<u8> {
        let mut header = [0u8; GWLB_HEADER_LEN];
        let gwlb = GwlbOptions { endpoint_id: Some(1), attachment_id: Some(2), flow_cookie: 77 };
        emit_gwlb_header(&mut header, PROTOCOL_IPV4, &gwlb);
        [&header[..], &inner].concat()
    }

    fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut step = PacketBuilder::ipv4(src, dst, 64).tcp(sport, dport, 10, 1000);
        if flags & tcp_flags::SYN != 0 {
            step = step.syn();
        }
        if flags & tcp_flags::ACK != 0 {
            step = step.ack(20);
        }
        if flags & tcp_flags::RST != 0 {
            step = step.rst();
        }
        let mut out = Vec::new();
        step.write(&mut out, &[]).unwrap();
        geneve(out)
    }

    fn run(p: &mut Pipeline, datagram: &[u8]) -> Outcome {
        let mut inject = [0u8; MAX_REJECT_LEN];
        p.process(datagram, &mut inject)
    }

    const SYN: u8 = tcp_flags::SYN;
    const SYN_ACK: u8 = tcp_flags::SYN | tcp_flags::ACK;
    const ACK: u8 = tcp_flags::ACK;

    /// Segments of one flow as a train carries them: a TCP/IPv4 flow with IP options, UDP/IPv4,
    /// TCP/IPv6 and UDP/IPv6, each with 100 payload bytes.
    fn train_heads() -> Vec<Vec<u8>> {
        let payload = [7u8; 100];
        let mut out = Vec::new();
        let mut v4 = etherparse::Ipv4Header::new(
            0,
            64,
            etherparse::IpNumber::TCP,
            [10, 0, 1, 15],
            [10, 20, 0, 5],
        )
        .unwrap();
        v4.options = [1, 1, 1, 1][..].try_into().unwrap(); // four NOPs
        let tcp = etherparse::TcpHeader::new(40_000, 3306, 1000, 65_000);
        let mut bytes = Vec::new();
        PacketBuilder::ip(etherparse::IpHeaders::Ipv4(v4, Default::default()))
            .tcp_header(tcp)
            .write(&mut bytes, &payload)
            .unwrap();
        out.push(geneve(bytes));
        let mut bytes = Vec::new();
        PacketBuilder::ipv4([10, 0, 1, 15], [10, 20, 0, 5], 64)
            .udp(5000, 53)
            .write(&mut bytes, &payload)
            .unwrap();
        out.push(geneve(bytes));
        let (a, b) = (
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        );
        let mut bytes = Vec::new();
        PacketBuilder::ipv6(a, b, 64)
            .tcp(40_000, 443, 5, 1000)
            .ack(9)
            .write(&mut bytes, &payload)
            .unwrap();
        let mut ipv6 = geneve(bytes);
        let protocol = crate::wire::geneve::PROTOCOL_IPV6.to_be_bytes();
        ipv6[2..4].copy_from_slice(&protocol);
        out.push(ipv6);
        let mut bytes = Vec::new();
        PacketBuilder::ipv6(a, b, 64).udp(5000, 53).write(&mut bytes, &payload).unwrap();
        let mut udp6 = geneve(bytes);
        udp6[2..4].copy_from_slice(&protocol);
        out.push(udp6);
        for datagram in &out {
            decode(datagram).expect("a valid train head");
        }
        out
    }

    /// The next segment of a flow: what changes between segments (IPv4 id and checksum, TCP
    /// sequence, acknowledgment, flags, window, checksum) changed.
    fn next_segment(head: &[u8], n: u8) -> Vec<u8> {
        let decoded = decode(head).unwrap();
        let mut next = head.to_vec();
        let ip = decoded.geneve_header_len;
        let l4 = match decoded.inner.src {
            IpAddr::V4(_) => {
                next[ip + 4] ^= n; // identification
                next[ip + 10] ^= n.rotate_left(3); // checksum (not checked by decode)
                ip + usize::from(head[ip] & 0x0f) * 4
            }
            IpAddr::V6(_) => ip + 40,
        };
        if decoded.inner.protocol == ip_proto::TCP {
            for at in [4, 5, 8, 11, 13, 14, 16, 17, 18] {
                next[l4 + at] ^= n.wrapping_mul(at as u8 + 1);
            }
        }
        next
    }

    #[test]
    fn the_segments_of_a_train_decode_by_comparison_as_decode_would() {
        for head in train_heads() {
            let decoded = decode(&head).unwrap();
            for n in 1..=40u8 {
                let next = next_segment(&head, n);
                let shortcut = decode_after(&head, &decoded, &next);
                assert!(shortcut.is_some(), "a segment of the same flow takes the shortcut");
                assert_eq!(shortcut, decode(&next).ok(), "segment {n}");
            }
        }
    }

    #[test]
    fn whatever_a_segment_differs_in_the_shortcut_never_disagrees_with_decode() {
        // Every single-byte change, and random multi-byte ones, of a following segment: the
        // shortcut either declines or gives exactly what the full decode gives (including
        // for segments the full decode drops).
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut taken = 0;
        for head in train_heads() {
            let decoded = decode(&head).unwrap();
            let next = next_segment(&head, 3);
            for at in 0..next.len().min(140) {
                for value in [0u8, 1, 0x45, 0x60, 0x80, 0xff, next[at] ^ 0x10] {
                    let mut changed = next.clone();
                    changed[at] = value;
                    if let Some(shortcut) = decode_after(&head, &decoded, &changed) {
                        taken += 1;
                        assert_eq!(Ok(shortcut), decode(&changed), "byte {at} = {value:#x}");
                    }
                }
            }
            for _ in 0..3000 {
                let mut changed = next.clone();
                for _ in 0..1 + random(4) {
                    let at = random(changed.len().min(140));
                    changed[at] = random(256) as u8;
                }
                if let Some(shortcut) = decode_after(&head, &decoded, &changed) {
                    taken += 1;
                    assert_eq!(Ok(shortcut), decode(&changed));
                }
            }
            // A different length, a fragment, or another protocol: the full decode decides.
            assert_eq!(decode_after(&head, &decoded, &next[..next.len() - 1]), None);
        }
        assert!(taken > 1000, "the shortcut was taken {taken} times");
    }

    /// `next_segment` with the TCP flags set to `flags` (TCP only).
    fn segment_with_flags(head: &[u8], n: u8, flags: u8) -> Vec<u8> {
        let mut next = next_segment(head, n);
        let decoded = decode(head).unwrap();
        if decoded.inner.protocol == ip_proto::TCP {
            let ip = decoded.geneve_header_len;
            let l4 = match decoded.inner.src {
                IpAddr::V4(_) => ip + usize::from(head[ip] & 0x0f) * 4,
                IpAddr::V6(_) => ip + 40,
            };
            next[l4 + 13] = flags;
        }
        next
    }

    #[test]
    fn copies_in_a_train_take_the_judged_outcome_and_count_as_judging_each_would() {
        const PSH_ACK: u8 = tcp_flags::PSH | tcp_flags::ACK;
        const FIN_ACK: u8 = tcp_flags::FIN | tcp_flags::ACK;
        const RST: u8 = tcp_flags::RST;
        let flag_runs: [&[u8]; 5] = [
            &[ACK, ACK, ACK, PSH_ACK, PSH_ACK, ACK],
            // Two FINs: the second closes what the first half-closed (not steady).
            &[ACK, ACK, FIN_ACK, FIN_ACK, ACK, ACK],
            &[ACK, FIN_ACK, FIN_ACK, FIN_ACK, ACK],
            &[SYN, SYN, SYN_ACK, ACK, ACK, RST, RST, ACK, SYN, SYN],
            &[PSH_ACK; 12],
        ];
        let mut heads = train_heads();
        // Refused by a reject rule: every reject is built from its own trigger.
        let mut rejected = heads[0].clone();
        let at = decode(&rejected).unwrap().geneve_header_len + 24 + 2;
        rejected[at..at + 2].copy_from_slice(&3307u16.to_be_bytes());
        heads.push(rejected);
        let (mut by_repeats, cell_a) = pipeline();
        let (mut one_by_one, cell_b) = pipeline();
        let (mut inject_a, mut inject_b) = ([0u8; MAX_REJECT_LEN], [0u8; MAX_REJECT_LEN]);
        let mut taken = 0;
        for (batch, flags) in flag_runs.iter().enumerate() {
            for head in &heads {
                let train: Vec<Vec<u8>> = flags
                    .iter()
                    .enumerate()
                    .map(|(n, &f)| segment_with_flags(head, n as u8 + 1, f))
                    .collect();
                let mut previous: Option<&[u8]> = None;
                for (n, datagram) in train.iter().enumerate() {
                    let before = by_repeats.repeat.map_or(0, |r| r.packets);
                    let a = by_repeats.process_after(previous, datagram, &mut inject_a);
                    let b = one_by_one.process(datagram, &mut inject_b);
                    assert_eq!(a, b, "batch {batch}, segment {n}");
                    if let Outcome::Reject { len } = a {
                        assert_eq!(inject_a[..len], inject_b[..len]);
                    }
                    taken += usize::from(by_repeats.repeat.is_some_and(|r| r.packets > before));
                    previous = Some(datagram);
                }
            }
            assert_eq!(flow_states(&mut by_repeats), flow_states(&mut one_by_one), "batch {batch}");
            by_repeats.begin_batch(2 + batch as u64);
            one_by_one.begin_batch(2 + batch as u64);
        }
        assert!(taken > 40, "copies were taken {taken} times");
        let (hits_a, hits_b) = (&cell_a.load().rule_hits, &cell_b.load().rule_hits);
        for rule in [Some(0), Some(1), None] {
            assert_eq!(hits_a.count(0, rule), hits_b.count(0, rule), "rule {rule:?}");
        }
        assert_eq!(flow_states(&mut by_repeats), flow_states(&mut one_by_one));
    }

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
        assert_eq!(p.flow_counts(), FlowCounts { active: 1, created: 1, evicted: 0 });
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
    fn rejected_syn_yields_a_reject_that_is_itself_a_valid_gwlb_datagram() {
        let (mut p, _) = pipeline();
        let syn = tcp(STRANGER, DB, 5000, 3306, SYN);
        let mut inject = [0u8; MAX_REJECT_LEN];
        let Outcome::Reject { len } = p.process(&syn, &mut inject) else {
            panic!("reject expected")
        };
        let reply = decode(&inject[..len]).unwrap();
        assert_eq!(&inject[..GWLB_HEADER_LEN], &syn[..GWLB_HEADER_LEN]);
        assert_eq!(reply.inner.src, IpAddr::from(DB));
        assert_eq!(reply.inner.dst, IpAddr::from(STRANGER));
        match reply.inner.transport {
            Transport::Tcp { src_port: 3306, dst_port: 5000, flags, seq: 0, ack: 11, .. } => {
                assert_eq!(flags, tcp_flags::RST | tcp_flags::ACK)
            }
            other => panic!("unexpected {other:?}"),
        }
        // A RST is never answered.
        assert_eq!(
            run(&mut p, &tcp(STRANGER, DB, 5001, 3306, tcp_flags::RST)),
            Outcome::Withhold(Action::Reject)
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
    fn later_fragments_follow_their_first_fragment() {
        let (mut p, _) = pipeline();
        let fragment = |src: [u8; 4], offset: u16, more: bool, data: &[u8]| {
            let mut h = etherparse::Ipv4Header::new(
                data.len() as u16,
                64,
                etherparse::IpNumber::UDP,
                src,
                DB,
            )
            .unwrap();
            h.identification = 99;
            h.more_fragments = more;
            h.fragment_offset = etherparse::IpFragOffset::try_new(offset).unwrap();
            geneve([&h.to_bytes()[..], data].concat())
        };
        // UDP to db:53 from a client: allowed; from a stranger: rejected (ICMP).
        let first = [&[0x0f, 0xa0, 0x00, 0x35, 0x00, 0x30, 0, 0][..], &[1u8; 16]].concat();
        assert_eq!(
            run(&mut p, &fragment(CLIENT, 0, true, &first)),
            Outcome::SendBack(Action::Allow)
        );
        assert_eq!(
            run(&mut p, &fragment(CLIENT, 3, false, &[2u8; 24])),
            Outcome::SendBack(Action::Allow)
        );
        assert!(matches!(
            run(&mut p, &fragment(STRANGER, 0, true, &first)),
            Outcome::Reject { .. }
        ));
        assert_eq!(
            run(&mut p, &fragment(STRANGER, 3, false, &[2u8; 24])),
            Outcome::Withhold(Action::Reject),
            "no ICMP for a non-first fragment"
        );
        // A later fragment whose first was never seen: only port-less rules can match.
        assert!(matches!(
            run(&mut p, &fragment([10, 0, 1, 6], 3, false, &[2u8; 24])),
            Outcome::Withhold(Action::Reject)
        ));
    }

    #[test]
    fn without_a_snapshot_nothing_passes() {
        let mut p = Pipeline::new(Mode::Inspect, 0, None, FlowSettings::default(), None);
        p.begin_batch(0);
        assert_eq!(run(&mut p, &tcp(CLIENT, DB, 1, 3306, SYN)), Outcome::Withhold(Action::Deny));
    }

    #[test]
    fn malformed_packets_are_dropped_with_their_reason_before_any_state() {
        let (mut p, _) = pipeline();
        let mut bad = tcp(CLIENT, DB, 4000, 3306, SYN);
        bad[0] |= 0x40; // version 1
        assert_eq!(run(&mut p, &bad), Outcome::Drop(DropReason::GeneveVersion));
        assert_eq!(p.flow_counts().created, 0);
    }

    #[test]
    fn reflect_mode_sends_back_even_garbage() {
        let mut p = Pipeline::new(Mode::Reflect, 0, None, FlowSettings::default(), None);
        assert_eq!(run(&mut p, &[1, 2, 3]), Outcome::SendBack(Action::Allow));
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
}
