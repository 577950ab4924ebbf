//! The sans-IO core of the data plane: one GENEVE datagram in, one decision out.
//!
//! [`Pipeline::process`] checks the datagram, finds or creates the inner flow, judges it
//! against the current [`Snapshot`] and says what the caller must do: send it back, withhold
//! it, send a reject in its place, or drop it as malformed. It never touches a socket,
//! allocates nothing on the per-packet path (the flow table is allocated up front) and logs
//! nothing; the caller (a data-plane worker, `labelwall replay`, a bench or the fuzz target)
//! owns the buffers and carries out the decision. The starts and ends of logged flows are
//! queued as [`FlowRecord`]s for the caller to take ([`Pipeline::poll_flow_record`]) and hand
//! to the flow log, as quinn-proto hands out its events.
//!
//! Parts: [`decode`] (a datagram checked down to the inner transport header), `train` (the
//! GRO-train shortcut), `judge` (the stateful decision), `fragments` (later fragments follow
//! their first), `records` (the queue of flow records).
//!
//! Must not depend on: sockets, async, logging, the flow log's writer.

mod decode;
mod fragments;
mod judge;
mod pending;
mod records;
#[cfg(test)]
mod testing;
mod train;

use std::sync::Arc;

pub use decode::{DecodedPacket, MAX_GENEVE_DATAGRAM, decode};
use fragments::FragmentTable;
use pending::HoldPool;
pub use pending::{HELD_OVERHEAD, MAX_HELD, NameCounts, NameLimits, NameResult};
use records::FlowRecords;
pub use records::{FlowEvent, FlowRecord, MAX_QUEUED_FLOW_RECORDS};
pub use train::decode_after;
use train::{Repeat, segment_after};

use crate::conntrack::{Flow, FlowTable, Timeouts};
use crate::names::{NameTable, ServerName};
use crate::policy::Action;
use crate::snapshot::{Snapshot, SnapshotCell};
use crate::wire::DropReason;

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
    /// A client datagram of a flow waiting for its server name: kept (a copy) or dropped in
    /// favour of what the verdict queued. Send nothing now; what a verdict lets go is taken
    /// with [`Pipeline::pop_release`].
    Held,
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
    /// Rejects (TCP RSTs, ICMP errors) generated per second at most; the rest are withheld
    /// and counted.
    pub reject_limit: u32,
    /// Reading server names (`names.*`): the hold pool's size.
    pub names: NameLimits,
}

impl Default for FlowSettings {
    fn default() -> Self {
        FlowSettings {
            max_flows: 262_144,
            timeouts: Timeouts::default(),
            reject_limit: 1000,
            names: NameLimits::default(),
        }
    }
}

/// Flow counts of one pipeline, for metrics: gauges and running totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowCounts {
    pub active: u64,
    pub created: u64,
    pub evicted: u64,
    /// Fragmented datagrams whose first fragment is remembered.
    pub fragments: u64,
    /// First fragments not remembered because their source held its share of the table.
    pub fragments_refused: u64,
    /// Rejects withheld because the reject limit was reached.
    pub rejects_suppressed: u64,
    /// Flows waiting for their server name now.
    pub pending: u64,
    /// Server-name readings by how they ended (running totals).
    pub server_names: NameCounts,
}

/// Packets and bytes of pending flows' held datagrams by the verdict that settled them, for
/// the caller's per-verdict counters (it counts `Outcome::Held` under none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeldVerdicts(pub [(u64, u64); Action::COUNT]);

impl HeldVerdicts {
    fn add(&mut self, action: Action, (packets, bytes): (u64, u64)) {
        let entry = &mut self.0[action.index()];
        entry.0 += packets;
        entry.1 += bytes;
    }
}

/// A token bucket of rejects: `limit` a second, at most a second's worth at once.
#[derive(Debug)]
struct RejectBudget {
    limit: u64,
    /// Thousandths of a reject, so that every millisecond adds `limit` of them.
    milli_tokens: u64,
    last_ms: u64,
    suppressed: u64,
}

impl RejectBudget {
    fn new(limit: u32) -> RejectBudget {
        let limit = u64::from(limit);
        RejectBudget { limit, milli_tokens: limit * 1000, last_ms: 0, suppressed: 0 }
    }

    /// Takes one reject's token at `now_ms`; false (and counted) when there is none.
    fn take(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        let refill = elapsed.saturating_mul(self.limit);
        self.milli_tokens = self.milli_tokens.saturating_add(refill).min(self.limit * 1000);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// Per-worker decision state.
#[derive(Debug)]
pub struct Pipeline {
    mode: Mode,
    worker: usize,
    cell: Option<Arc<SnapshotCell>>,
    snapshot: Option<Arc<Snapshot>>,
    flows: FlowTable,
    fragments: FragmentTable,
    /// Logged flows' starts and ends, until the caller takes them.
    records: FlowRecords,
    rejects: RejectBudget,
    now_ms: u64,
    created: u64,
    /// What the last datagram decoded to, for [`Pipeline::process_after`].
    last_decoded: Option<DecodedPacket>,
    /// The last judged datagram's outcome, for copies of it later in its train.
    repeat: Option<Repeat>,
    /// A copy of the last judged datagram would change nothing but its flow's counters (set
    /// by judging, which has the flow at hand: see [`Pipeline::judge`]).
    repeatable: bool,
    /// Flows waiting for their server name, and their held datagrams.
    pool: HoldPool,
    server_names: NameCounts,
    /// The names flows showed, each kept once ([`Flow::server_name`] refers to them).
    name_table: NameTable,
    /// Set by judging a packet of a pending flow: what [`Pipeline::pending_packet`] needs.
    pending_hit: Option<judge::PendingHit>,
    /// Where the datagrams being processed came from ([`Pipeline::set_origin`]).
    origin: u128,
    held_verdicts: HeldVerdicts,
}

impl Pipeline {
    /// A pipeline that judges by the snapshots published in `cell`. `log_flows`: queue a
    /// [`FlowRecord`] for the start and the end of every flow whose rule logs (the caller runs
    /// a flow log and takes them with [`Pipeline::poll_flow_record`]).
    pub fn new(
        mode: Mode,
        worker: usize,
        cell: Option<Arc<SnapshotCell>>,
        flows: FlowSettings,
        log_flows: bool,
    ) -> Self {
        let snapshot = cell.as_ref().map(|c| c.load_full());
        let table_size = if mode == Mode::Reflect { 1 } else { flows.max_flows };
        let names = match mode {
            Mode::Reflect => NameLimits { max_pending: 1, ..flows.names },
            Mode::Inspect => flows.names,
        };
        Pipeline {
            mode,
            worker,
            cell,
            snapshot,
            flows: FlowTable::new(table_size, flows.timeouts),
            fragments: FragmentTable::new(),
            records: FlowRecords::new(log_flows && mode == Mode::Inspect),
            rejects: RejectBudget::new(flows.reject_limit),
            now_ms: 0,
            created: 0,
            last_decoded: None,
            repeat: None,
            repeatable: false,
            pool: HoldPool::new(names),
            server_names: NameCounts::default(),
            name_table: NameTable::new(table_size),
            pending_hit: None,
            origin: 0,
            held_verdicts: HeldVerdicts::default(),
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
        if self.mode == Mode::Inspect
            && let Some(snapshot) = &self.snapshot
        {
            let (flows, records, names) =
                (&mut self.flows, &mut self.records, &mut self.name_table);
            flows.sweep(now_ms, &mut |flow, end| records.ended(flow, end, snapshot, names));
            self.sweep_pending();
        }
    }

    /// The next datagram a verdict on a pending flow lets go (held client datagrams in
    /// order, or a reject's RSTs), copied into `out` (room for
    /// [`MAX_GENEVE_DATAGRAM`] bytes); its length and origin ([`Pipeline::set_origin`]).
    /// The caller takes them all after every
    /// [`Pipeline::process`] and [`Pipeline::begin_batch`], before it sends what the
    /// outcome says, so that they go out first.
    pub fn pop_release(&mut self, out: &mut [u8]) -> Option<(usize, u128)> {
        self.pool.pop_release(out)
    }

    /// Held datagrams judged since the last call, by verdict (packets, bytes): the caller adds
    /// them to its per-verdict counters, as it does for every other outcome.
    pub fn take_held_verdicts(&mut self) -> HeldVerdicts {
        std::mem::take(&mut self.held_verdicts)
    }

    /// Tells where the next datagrams come from, in the caller's terms (the worker packs
    /// the outer addresses and ports it would answer with): opaque here, kept with a pending
    /// flow's held datagrams and handed back with them by [`Pipeline::pop_release`].
    pub fn set_origin(&mut self, origin: u128) {
        self.origin = origin;
    }

    /// Ends every flow, for shutdown: the end record of each logged flow goes straight to
    /// `on_record` (a whole table would not fit the queue), after what was queued before.
    pub fn finish(&mut self, mut on_record: impl FnMut(FlowRecord)) {
        self.settle_repeats();
        while let Some(record) = self.poll_flow_record() {
            on_record(record);
        }
        let (flows, records, snapshot) = (&mut self.flows, &self.records, &self.snapshot);
        let names = &mut self.name_table;
        flows.drain(&mut |flow, end| {
            let name = flow.server_name;
            if let Some(snapshot) = snapshot
                && records.wanted(&flow)
            {
                on_record(FlowRecord::new(FlowEvent::End(end), flow, snapshot, names));
            }
            if let Some(id) = name {
                names.release(id);
            }
        });
    }

    /// The oldest queued flow record; the caller takes them all after each batch.
    pub fn poll_flow_record(&mut self) -> Option<FlowRecord> {
        self.records.pop()
    }

    /// Flow records not queued since the last call because the queue was full.
    pub fn take_lost_flow_records(&mut self) -> u64 {
        self.records.take_lost()
    }

    /// Every tracked flow with everything counted so far (for tests and the fuzz target).
    pub fn flows(&mut self) -> impl Iterator<Item = &Flow> {
        self.settle_repeats();
        self.flows.iter()
    }

    /// The tracked flows that showed a server name, with it.
    pub fn named_flows(&mut self) -> impl Iterator<Item = (&Flow, &ServerName)> {
        self.settle_repeats();
        let names = &self.name_table;
        self.flows.iter().filter_map(move |flow| Some((flow, names.get(flow.server_name?))))
    }

    /// Distinct server names the tracked flows hold.
    pub fn distinct_server_names(&self) -> usize {
        self.name_table.len()
    }

    pub fn flow_counts(&self) -> FlowCounts {
        FlowCounts {
            active: self.flows.len() as u64,
            created: self.created,
            evicted: self.flows.evictions(),
            fragments: self.fragments.len() as u64,
            fragments_refused: self.fragments.refused(),
            rejects_suppressed: self.rejects.suppressed,
            pending: self.pool.pending() as u64,
            server_names: self.server_names,
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
        let decision = self.judge(&snapshot, &packet, datagram);
        if let Some(hit) = self.pending_hit.take() {
            // A pending flow's packet: no rule decided it (yet).
            let outcome = self.pending_packet(hit, &snapshot, &packet, datagram);
            self.snapshot = Some(snapshot);
            return outcome;
        }
        snapshot.rule_hits.add(self.worker, decision.rule);
        self.snapshot = Some(snapshot);
        let flags = packet.inner.transport.tcp_flags();
        let copies_change_nothing = self.repeatable;
        let outcome = match decision.action {
            Action::Allow | Action::Audit => Outcome::SendBack(decision.action),
            Action::Deny => Outcome::Withhold(Action::Deny),
            // Each reject is built from its own trigger: never repeated.
            Action::Reject => return self.reject(datagram, &packet, inject),
        };
        if copies_change_nothing {
            let rule = decision.rule;
            self.repeat = Some(Repeat { outcome, rule, flags, packets: 0, bytes: 0 });
        }
        outcome
    }

    fn reject(&mut self, datagram: &[u8], packet: &DecodedPacket, inject: &mut [u8]) -> Outcome {
        match crate::reject::build(datagram, packet.geneve_header_len, &packet.inner, inject) {
            Some(len) if self.rejects.take(self.now_ms) => Outcome::Reject { len },
            _ => Outcome::Withhold(Action::Reject),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::packet::{Transport, tcp_flags};
    use crate::reject::MAX_REJECT_LEN;
    use crate::wire::GWLB_HEADER_LEN;
    use std::net::IpAddr;

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
    fn without_a_snapshot_nothing_passes() {
        let mut p = Pipeline::new(Mode::Inspect, 0, None, FlowSettings::default(), false);
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
        let mut p = Pipeline::new(Mode::Reflect, 0, None, FlowSettings::default(), false);
        assert_eq!(run(&mut p, &[1, 2, 3]), Outcome::SendBack(Action::Allow));
    }

    #[test]
    fn rejects_beyond_the_limit_are_withheld_and_counted() {
        let cell = Arc::new(arc_swap::ArcSwap::new(snapshot(1, POLICY)));
        let settings = FlowSettings { reject_limit: 3, ..FlowSettings::default() };
        let mut p = Pipeline::new(Mode::Inspect, 0, Some(cell), settings, false);
        p.begin_batch(10_000);
        let outcomes: Vec<_> =
            (0..5).map(|port| run(&mut p, &tcp(STRANGER, DB, 5000 + port, 3306, SYN))).collect();
        assert!(outcomes[..3].iter().all(|o| matches!(o, Outcome::Reject { .. })), "{outcomes:?}");
        assert_eq!(outcomes[3..], [Outcome::Withhold(Action::Reject); 2]);
        assert_eq!(p.flow_counts().rejects_suppressed, 2);
        // A third of a second later, one more token.
        p.begin_batch(10_334);
        assert!(matches!(run(&mut p, &tcp(STRANGER, DB, 5100, 3306, SYN)), Outcome::Reject { .. }));
        assert_eq!(
            run(&mut p, &tcp(STRANGER, DB, 5101, 3306, SYN)),
            Outcome::Withhold(Action::Reject)
        );
        // A long pause fills the bucket to one second's worth, no more.
        p.begin_batch(100_000);
        let sent = (0..10)
            .filter(|n| {
                matches!(
                    run(&mut p, &tcp(STRANGER, DB, 5200 + n, 3306, SYN)),
                    Outcome::Reject { .. }
                )
            })
            .count();
        assert_eq!(sent, 3);
        assert_eq!(p.flow_counts().rejects_suppressed, 2 + 1 + 7);
    }
}
