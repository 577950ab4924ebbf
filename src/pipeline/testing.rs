//! What the pipeline's tests share: a small policy, a pipeline judging by it, and GENEVE
//! datagrams of TCP packets between its groups.

use std::path::Path;
use std::sync::Arc;

use etherparse::PacketBuilder;

use super::{FlowSettings, Mode, Outcome, Pipeline};
use crate::labels::LabelTable;
use crate::packet::tcp_flags;
use crate::policy::CompiledPolicy;
use crate::reject::MAX_REJECT_LEN;
use crate::snapshot::{RuleHits, Snapshot, SnapshotCell};
use crate::wire::geneve::PROTOCOL_IPV4;
use crate::wire::{GWLB_HEADER_LEN, GwlbOptions, emit_gwlb_header};

pub(super) const POLICY: &str = "default_action: deny\ngroups:\n  db: {cidrs: [10.20.0.0/24]}\n\
    \x20 clients: {cidrs: [10.0.1.0/24]}\nrules:\n\
    \x20 - {name: to-db, from: [clients], to: [db], ports: [tcp/3306, udp/53], action: allow}\n\
    \x20 - {name: no-db, from: [any], to: [db], action: reject}\n";

pub(super) const CLIENT: [u8; 4] = [10, 0, 1, 5];

pub(super) const DB: [u8; 4] = [10, 20, 0, 5];

pub(super) const STRANGER: [u8; 4] = [192, 0, 2, 9];

pub(super) fn snapshot(generation: u64, policy: &str) -> Arc<Snapshot> {
    let policy = CompiledPolicy::parse(Path::new("p.yaml"), policy).unwrap();
    let hits = Arc::new(RuleHits::new(1, policy.rules.len()));
    Arc::new(Snapshot::new(generation, Arc::new(LabelTable::default()), Arc::new(policy), hits))
}

pub(super) fn pipeline() -> (Pipeline, Arc<SnapshotCell>) {
    let cell = Arc::new(arc_swap::ArcSwap::new(snapshot(1, POLICY)));
    let mut p =
        Pipeline::new(Mode::Inspect, 0, Some(Arc::clone(&cell)), FlowSettings::default(), false);
    p.begin_batch(1);
    (p, cell)
}

pub(super) fn geneve(inner: Vec<u8>) -> Vec<u8> {
    let mut header = [0u8; GWLB_HEADER_LEN];
    let gwlb = GwlbOptions { endpoint_id: Some(1), attachment_id: Some(2), flow_cookie: 77 };
    emit_gwlb_header(&mut header, PROTOCOL_IPV4, &gwlb);
    [&header[..], &inner].concat()
}

pub(super) fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
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

pub(super) fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(src, dst, 64).udp(sport, dport).write(&mut out, b"query").unwrap();
    geneve(out)
}

pub(super) fn run(p: &mut Pipeline, datagram: &[u8]) -> Outcome {
    let mut inject = [0u8; MAX_REJECT_LEN];
    p.process(datagram, &mut inject)
}

pub(super) const SYN: u8 = tcp_flags::SYN;

pub(super) const SYN_ACK: u8 = tcp_flags::SYN | tcp_flags::ACK;

pub(super) const ACK: u8 = tcp_flags::ACK;

/// A GENEVE datagram of one IPv4 fragment from `src` to `dst`: `data` at `offset` (8-byte
/// units) of datagram `id`.
pub(super) fn ipv4_fragment(
    (src, dst): ([u8; 4], [u8; 4]),
    protocol: etherparse::IpNumber,
    id: u16,
    offset: u16,
    more: bool,
    data: &[u8],
) -> Vec<u8> {
    let mut header =
        etherparse::Ipv4Header::new(data.len() as u16, 64, protocol, src, dst).unwrap();
    header.identification = id;
    header.more_fragments = more;
    header.fragment_offset = etherparse::IpFragOffset::try_new(offset).unwrap();
    geneve([&header.to_bytes()[..], data].concat())
}
