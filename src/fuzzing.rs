//! The receive path as one function over arbitrary bytes, shared by the cargo-fuzz target
//! (tests/fuzz) and the stable test that replays its seed corpus, so both exercise exactly
//! the code a worker runs on a datagram.
//! Must not depend on: sockets, tokio, logging.

use std::net::Ipv4Addr;
use std::sync::{Arc, OnceLock};

use crate::labels::LabelTable;
use crate::policy::CompiledPolicy;
use crate::snapshot::{RuleHits, Snapshot, SnapshotCell};

use crate::pipeline::{self, FlowSettings, Mode, Outcome, Pipeline};
use crate::reject::MAX_REJECT_LEN;
use crate::wire::outer::{self, OUTER_HEADER_LEN, OuterAddressing};

/// Runs `data` through the worker's per-datagram steps and checks the invariants that must
/// hold for any input; panics (which the fuzzer reports) when one does not.
pub fn receive_path(data: &[u8]) {
    // The first byte picks a GRO stride so that trains of segments are covered too.
    let (stride, train) = match data.split_first() {
        Some((&s, rest)) if s & 0x80 != 0 => (usize::from(s & 0x7f).max(1) * 8, rest),
        _ => (data.len().max(1), data),
    };
    // A small flow table: allocating the default one would dominate every execution.
    let flows = FlowSettings { max_flows: 64, ..FlowSettings::default() };
    let (cell, reference_cell) = (fuzz_snapshot(), fuzz_snapshot());
    let mut inspect = Pipeline::new(Mode::Inspect, 0, Some(Arc::clone(&cell)), flows, false);
    inspect.begin_batch(0);
    // Judges every datagram in full: what the train shortcuts must agree with.
    let mut reference =
        Pipeline::new(Mode::Inspect, 0, Some(Arc::clone(&reference_cell)), flows, false);
    reference.begin_batch(0);
    let mut inject = [0u8; MAX_REJECT_LEN];
    let mut reference_inject = [0u8; MAX_REJECT_LEN];
    let addressing = OuterAddressing {
        src: Ipv4Addr::new(10, 0, 0, 1),
        dst: Ipv4Addr::new(10, 0, 0, 2),
        src_port: 50000,
        dst_port: 6081,
    };
    // As a worker does: each datagram of a train after the first is decoded by comparison
    // with the one before when it can be, which must agree with the full decode.
    let mut previous: Option<&[u8]> = None;
    for datagram in train.chunks(stride) {
        let decoded = pipeline::decode(datagram);
        if let Some(before) = previous
            && let Ok(before_decoded) = pipeline::decode(before)
            && let Some(shortcut) = pipeline::decode_after(before, &before_decoded, datagram)
        {
            assert_eq!(Ok(shortcut), decoded, "the train shortcut agrees with decode");
        }
        let outcome = inspect.process_after(previous, datagram, &mut inject);
        let judged_alone = reference.process(datagram, &mut reference_inject);
        assert_eq!(outcome, judged_alone, "a datagram of a train is judged as on its own");
        if let Outcome::Reject { len } = outcome {
            assert_eq!(inject[..len], reference_inject[..len]);
        }
        previous = Some(datagram);
        match outcome {
            Outcome::SendBack(_) => {
                let packet = decoded.expect("only decodable datagrams are sent back");
                assert_eq!(
                    packet.geneve_header_len + packet.inner.len,
                    datagram.len(),
                    "the inner packet fills the datagram exactly"
                );
                let mut header = [0u8; OUTER_HEADER_LEN];
                outer::emit(&mut header, &addressing, datagram.len()).expect("fits in IPv4");
            }
            Outcome::Drop(reason) => assert_eq!(decoded.err(), Some(reason)),
            Outcome::Withhold(_) => assert!(decoded.is_ok()),
            Outcome::Reject { len } => {
                let packet = decoded.expect("only decodable datagrams are rejected");
                let reply = &inject[..len];
                assert_eq!(
                    &reply[..packet.geneve_header_len],
                    &datagram[..packet.geneve_header_len]
                );
                // What we inject must itself be a valid GWLB datagram.
                pipeline::decode(reply).expect("a reject decodes");
            }
        }
    }
    assert_eq!(flow_states(&mut inspect), flow_states(&mut reference), "same flows, same counts");
    let (hits, reference_hits) = (&cell.load().rule_hits, &reference_cell.load().rule_hits);
    for rule in (0..3).map(Some).chain([None]) {
        assert_eq!(hits.count(0, rule), reference_hits.count(0, rule), "rule {rule:?} counts");
    }
}

/// Every flow of `pipeline` (key, TCP state, decision, packets, bytes), sorted: comparable
/// between two pipelines fed the same datagrams.
pub fn flow_states(pipeline: &mut Pipeline) -> Vec<String> {
    let mut flows: Vec<String> = pipeline
        .flows()
        .map(|f| format!("{:?} {:?} {:?} {} {}", f.key, f.tcp, f.decision, f.packets, f.bytes))
        .collect();
    flows.sort();
    flows
}

/// A policy that exercises every action: allow TCP to 10.20.0.0/24:3306, reject other TCP and
/// UDP to it, audit 10.30/16, deny the rest. Each call gets its own rule counters.
fn fuzz_snapshot() -> Arc<SnapshotCell> {
    static POLICY: OnceLock<Arc<CompiledPolicy>> = OnceLock::new();
    let policy = Arc::clone(POLICY.get_or_init(|| {
        const POLICY: &str = "default_action: deny\ngroups:\n  db: {cidrs: [10.20.0.0/24, \"fd00:20::/64\"]}\n\
            \x20 audited: {cidrs: [10.30.0.0/16]}\nrules:\n\
            \x20 - {name: db, from: [any], to: [db], ports: [tcp/3306], action: allow}\n\
            \x20 - {name: no-db, from: [any], to: [db], action: reject}\n\
            \x20 - {name: audit, from: [any], to: [audited], action: audit}\n";
        let policy = CompiledPolicy::parse(std::path::Path::new("fuzz.yaml"), POLICY)
            .expect("the fuzz policy compiles");
        Arc::new(policy)
    }));
    static LABELS: OnceLock<Arc<LabelTable>> = OnceLock::new();
    let labels = Arc::clone(LABELS.get_or_init(|| Arc::new(LabelTable::default())));
    let hits = Arc::new(RuleHits::new(1, policy.rules.len()));
    let snapshot = Snapshot::new(1, labels, policy, hits);
    Arc::new(arc_swap::ArcSwap::from_pointee(snapshot))
}
