//! Reading server names and judging flows that wait for theirs allocate nothing per packet:
//! a counting global allocator around reading the real clients' bytes (a post-quantum
//! ClientHello in two segments, QUIC Initials of v1, v2 and Chromium, an HTTP request) and
//! around a pipeline whose flows wait for their name (a real ClientHello in two segments,
//! held and then released, denied or rejected). Everything is made before counting starts.

#![allow(unsafe_code, reason = "a counting global allocator that only forwards to System")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::sync::Arc;

use etherparse::PacketBuilder;
use labelwall::labels::LabelTable;
use labelwall::names::fuzzing::client_capture;
use labelwall::names::{QuicInitials, Reading, TcpReassembly, read_stream};
use labelwall::pipeline::{FlowSettings, MAX_GENEVE_DATAGRAM, Mode, NameResult, Outcome, Pipeline};
use labelwall::policy::CompiledPolicy;
use labelwall::reject::MAX_REJECT_LEN;
use labelwall::snapshot::{RuleHits, Snapshot};
use labelwall::wire::GwlbOptions;
use labelwall::wire::geneve::encapsulate;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn reading_server_names_allocates_nothing() {
    const BUDGET: usize = 16_384;
    let tls = client_capture("chromium_tls");
    let http = client_capture("curl_host");
    let quic = ["aioquic_v1", "aioquic_v2", "chromium_quic"].map(client_capture);
    let (mut buf, mut crypto, mut scratch) =
        (vec![0u8; BUDGET], vec![0u8; BUDGET], vec![0u8; 2048]);

    let before = allocations();
    let mut found = 0;
    for capture in [&tls, &http] {
        let mut stream = TcpReassembly::new();
        for s in &capture.segments {
            stream.segment(&mut buf, s.seq, s.syn, &s.payload);
        }
        found += usize::from(matches!(read_stream(stream.bytes(&buf), BUDGET), Reading::Found(_)));
    }
    for capture in &quic {
        let mut flow = QuicInitials::new();
        let mut reading = Reading::NeedMore;
        for datagram in &capture.datagrams {
            reading = flow.datagram(&mut crypto, &mut scratch, datagram);
        }
        found += usize::from(matches!(reading, Reading::Found(_)));
    }
    let during = allocations() - before;
    assert_eq!(found, 5, "every fixture shows its name");
    assert_eq!(during, 0, "{during} allocations while reading");
}

/// www.example.com is allowed, *.example.org denied, other names rejected (tcp/443).
const POLICY: &str = "default_action: deny\ngroups:\n  clients: {cidrs: [10.0.1.0/24]}\n\
    \x20 allowed: {domains: [www.example.com]}\n  blocked: {domains: [\"*.example.org\"]}\nrules:\n\
    \x20 - {name: allowed, from: [clients], to: [allowed], ports: [tcp/443], action: allow}\n\
    \x20 - {name: blocked, from: [clients], to: [blocked], ports: [tcp/443], action: deny}\n\
    \x20 - {name: others, from: [clients], to: [any], ports: [tcp/443], action: reject}\n";

const CLIENT: [u8; 4] = [10, 0, 1, 5];
const SERVER: [u8; 4] = [203, 0, 113, 7];

fn segment(port: u16, to_server: bool, flags: (bool, bool), seq: u32, payload: &[u8]) -> Vec<u8> {
    let (syn, ack) = flags;
    let (from, to, sport, dport) =
        if to_server { (CLIENT, SERVER, port, 443) } else { (SERVER, CLIENT, 443, port) };
    let mut step = PacketBuilder::ipv4(from, to, 64).tcp(sport, dport, seq, 1000);
    if syn {
        step = step.syn();
    }
    if ack {
        step = step.ack(if to_server { 5001 } else { 1001 });
    }
    let mut inner = Vec::new();
    step.write(&mut inner, payload).unwrap();
    encapsulate(
        &inner,
        &GwlbOptions { endpoint_id: Some(1), attachment_id: Some(2), flow_cookie: 7 },
    )
}

/// One connection from `port` with `hello` as the client's first bytes, in two segments.
fn connection(port: u16, hello: &[u8]) -> Vec<Vec<u8>> {
    let cut = hello.len() / 2;
    vec![
        segment(port, true, (true, false), 1000, &[]),
        segment(port, false, (true, true), 5000, &[]),
        segment(port, true, (false, true), 1001, &[]),
        segment(port, true, (false, true), 1001, &hello[..cut]),
        segment(port, true, (false, true), 1001 + cut as u32, &hello[cut..]),
    ]
}

fn hello(capture: &str) -> Vec<u8> {
    client_capture(capture).segments.iter().flat_map(|s| s.payload.clone()).collect()
}

#[test]
fn pending_flows_allocate_nothing_per_packet() {
    let policy = CompiledPolicy::parse(Path::new("p.yaml"), POLICY).unwrap();
    let hits = Arc::new(RuleHits::new(1, policy.rules.len()));
    let snapshot =
        Arc::new(Snapshot::new(1, Arc::new(LabelTable::default()), Arc::new(policy), hits));
    let cell = Arc::new(arc_swap::ArcSwap::new(snapshot));
    let mut pipeline = Pipeline::new(Mode::Inspect, 0, Some(cell), FlowSettings::default(), false);
    pipeline.begin_batch(1);
    let flows: Vec<Vec<Vec<u8>>> = [
        (40_000, "openssl_tls13_sni"), // allowed
        (40_001, "openssl_tls12_sni"), // denied
        (40_002, "openssl_records"),   // rejected
    ]
    .iter()
    .map(|&(port, capture)| connection(port, &hello(capture)))
    .collect();
    let (mut inject, mut out) = (vec![0u8; MAX_REJECT_LEN], vec![0u8; MAX_GENEVE_DATAGRAM]);

    let before = allocations();
    let (mut held, mut released) = (0, 0);
    for datagram in flows.iter().flatten() {
        held += usize::from(pipeline.process(datagram, &mut inject) == Outcome::Held);
        while pipeline.pop_release(&mut out).is_some() {
            released += 1;
        }
    }
    pipeline.begin_batch(2);
    let during = allocations() - before;
    assert_eq!(held, 6, "every client segment with data was held");
    assert_eq!(released, 2 + 2, "the allowed flow's two segments, the rejected flow's two RSTs");
    assert_eq!(pipeline.flow_counts().server_names.get(NameResult::Found), 3);
    assert_eq!(during, 0, "{during} allocations while judging pending flows");
}
