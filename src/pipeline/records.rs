//! The queue of flow records: the start and the end of every flow whose rule logs, with the
//! snapshot that judged it, held until the pipeline's caller takes them for the flow log.
//!
//! Bounded and allocated up front: nothing on the per-packet path allocates. A record that
//! does not fit is counted as lost, as the flow log counts what its own queue cannot take.
//!
//! Must not depend on: the flow log's writer, sockets.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::conntrack::{Flow, FlowEnd};
use crate::labels::Who;
use crate::names::{NameTable, ServerName};
use crate::snapshot::Snapshot;

/// Records a pipeline holds until its caller takes them. A receive batch makes at most two
/// per datagram (a start, and the end of the flow it replaced or evicted) plus one per flow a
/// sweep ends: 32 slots of up to 64 datagrams make 4,096, and twice that leaves room for a
/// caller that takes them only every other batch.
pub const MAX_QUEUED_FLOW_RECORDS: usize = 8192;

/// Start or end of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowEvent {
    Start,
    End(FlowEnd),
}

/// A logged flow's start or end: plain data and who both ends were when it was recorded,
/// everything the flow log prints (and not the snapshot: a queue of records must not keep
/// old snapshots, each a whole label table, alive).
#[derive(Debug)]
pub struct FlowRecord {
    pub event: FlowEvent,
    pub flow: Flow,
    /// Who the initiator and the responder are; `None` for an address no source knows.
    pub src: Option<Who>,
    pub dst: Option<Who>,
    /// The name of the rule that decided the flow; `None` for the default action.
    pub rule: Option<Arc<str>>,
    /// The server name the flow showed (`flow.server_name` refers into the worker's table,
    /// which the record outlives).
    pub server_name: Option<ServerName>,
    /// The snapshot generation the record was made under.
    pub generation: u64,
}

impl FlowRecord {
    /// The record of `event` of `flow`, with who its ends are in `snapshot` and its server
    /// name from `names`.
    pub fn new(event: FlowEvent, flow: Flow, snapshot: &Snapshot, names: &NameTable) -> FlowRecord {
        let (src, _) = flow.key.endpoint(flow.initiator);
        let (dst, _) = flow.key.endpoint(flow.initiator.other());
        // Shared, not copied: the records of a flood of new flows allocate nothing.
        let rule = flow.rule_name.clone().or_else(|| {
            let rule = snapshot.policy.rules.get(flow.decision.rule?)?;
            Some(Arc::clone(&rule.name))
        });
        FlowRecord {
            event,
            src: snapshot.labels.who(src),
            dst: snapshot.labels.who(dst),
            rule,
            server_name: flow.server_name.map(|id| *names.get(id)),
            generation: snapshot.generation,
            flow,
        }
    }
}

#[derive(Debug)]
pub(super) struct FlowRecords {
    enabled: bool,
    queue: VecDeque<FlowRecord>,
    lost: u64,
}

impl FlowRecords {
    pub(super) fn new(enabled: bool) -> FlowRecords {
        let capacity = if enabled { MAX_QUEUED_FLOW_RECORDS } else { 0 };
        FlowRecords { enabled, queue: VecDeque::with_capacity(capacity), lost: 0 }
    }

    /// Whether `flow`'s starts and ends are recorded: its rule logs, or audits.
    pub(super) fn wanted(&self, flow: &Flow) -> bool {
        self.enabled && flow.decision.logged()
    }

    /// Queues a record of `flow` if it is wanted.
    pub(super) fn push(
        &mut self,
        event: FlowEvent,
        flow: Flow,
        snapshot: &Snapshot,
        names: &NameTable,
    ) {
        if !self.wanted(&flow) {
            return;
        }
        if self.queue.len() >= MAX_QUEUED_FLOW_RECORDS {
            self.lost += 1;
            return;
        }
        self.queue.push_back(FlowRecord::new(event, flow, snapshot, names));
    }

    /// A flow that left the table (`end`): its end record, if wanted, and its reference to
    /// its server name given up. Every flow that leaves the table goes through here.
    pub(super) fn ended(
        &mut self,
        flow: Flow,
        end: FlowEnd,
        snapshot: &Snapshot,
        names: &mut NameTable,
    ) {
        let name = flow.server_name;
        self.push(FlowEvent::End(end), flow, snapshot, names);
        if let Some(id) = name {
            names.release(id);
        }
    }

    pub(super) fn pop(&mut self) -> Option<FlowRecord> {
        self.queue.pop_front()
    }

    pub(super) fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{FlowSettings, Mode, Pipeline};
    use super::*;

    const LOGGED: &str = "default_action: deny\ngroups:\n  db: {cidrs: [10.20.0.0/24]}\n\
        rules:\n  - {name: to-db, from: [any], to: [db], ports: [tcp/3306], action: allow, \
        log: true}\n  - {name: quiet, from: [any], to: [db], ports: [tcp/22], action: allow}\n";

    fn logging_pipeline(log_flows: bool) -> Pipeline {
        let cell = Arc::new(arc_swap::ArcSwap::new(snapshot(1, LOGGED)));
        let mut p = Pipeline::new(Mode::Inspect, 0, Some(cell), FlowSettings::default(), log_flows);
        p.begin_batch(1);
        p
    }

    fn events(p: &mut Pipeline) -> Vec<(FlowEvent, u16)> {
        std::iter::from_fn(|| p.poll_flow_record())
            .map(|r| (r.event, r.flow.key.a_port.max(r.flow.key.b_port)))
            .collect()
    }

    #[test]
    fn logged_flows_are_recorded_at_start_and_end_for_the_caller_to_take() {
        let mut p = logging_pipeline(true);
        run(&mut p, &tcp(CLIENT, DB, 40_000, 3306, SYN));
        run(&mut p, &tcp(DB, CLIENT, 3306, 40_000, SYN_ACK));
        run(&mut p, &tcp(CLIENT, DB, 40_001, 22, SYN)); // its rule does not log
        assert_eq!(events(&mut p), [(FlowEvent::Start, 40_000)]);
        assert_eq!(events(&mut p), [], "taken once");
        // Idle past the TCP handshake timeout: the sweep ends both, only one is recorded.
        p.begin_batch(1 + 3_600_000);
        assert_eq!(events(&mut p), [(FlowEvent::End(FlowEnd::Expired), 40_000)]);
        assert_eq!(p.take_lost_flow_records(), 0);
    }

    #[test]
    fn shutdown_hands_every_end_to_the_caller_after_what_was_queued() {
        let mut p = logging_pipeline(true);
        for port in 0..3 {
            run(&mut p, &tcp(CLIENT, DB, 40_000 + port, 3306, SYN));
        }
        let mut seen = Vec::new();
        p.finish(|r| seen.push(r.event));
        let ends = vec![FlowEvent::End(FlowEnd::Expired); 3];
        assert_eq!(seen, [vec![FlowEvent::Start; 3], ends].concat());
    }

    #[test]
    fn a_full_queue_counts_what_it_cannot_hold() {
        let mut p = logging_pipeline(true);
        let flows = MAX_QUEUED_FLOW_RECORDS + 5;
        for n in 0..flows {
            let client = [10, 0, (n >> 8) as u8, n as u8];
            run(&mut p, &tcp(client, DB, 40_000, 3306, SYN));
        }
        assert_eq!(events(&mut p).len(), MAX_QUEUED_FLOW_RECORDS);
        assert_eq!(p.take_lost_flow_records(), 5);
        assert_eq!(p.take_lost_flow_records(), 0, "taken once");
    }

    #[test]
    fn nothing_is_recorded_when_the_caller_keeps_no_flow_log() {
        let mut p = logging_pipeline(false);
        run(&mut p, &tcp(CLIENT, DB, 40_000, 3306, SYN));
        p.begin_batch(1 + 3_600_000);
        assert_eq!(events(&mut p), []);
        let mut seen = 0;
        p.finish(|_| seen += 1);
        assert_eq!(seen, 0);
    }

    #[test]
    fn a_record_carries_what_the_flow_log_prints_not_the_snapshot() {
        let mut p = logging_pipeline(true);
        run(&mut p, &tcp(CLIENT, DB, 40_000, 3306, SYN));
        let record = p.poll_flow_record().unwrap();
        assert_eq!(record.rule.as_deref(), Some("to-db"));
        assert_eq!(record.generation, 1);
        // No source knows these addresses in the test snapshot.
        assert_eq!((record.src, record.dst), (None, None));
        // The default action's flows are named `default`.
        let cell = Arc::new(arc_swap::ArcSwap::new(snapshot(1, "default_action: audit\n")));
        let mut p = Pipeline::new(Mode::Inspect, 0, Some(cell), FlowSettings::default(), true);
        p.begin_batch(1);
        run(&mut p, &tcp(CLIENT, DB, 40_001, 22, SYN));
        assert_eq!(p.poll_flow_record().unwrap().rule, None, "the default action");
    }
}
