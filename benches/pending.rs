//! What judging by server name costs a worker: `cargo bench --bench pending`.
//!
//! - `new_tls_flow/by_address` and `new_tls_flow/by_name`: one new TLS connection through one
//!   worker's pipeline, every datagram GWLB would send for it: SYN, SYN-ACK, ACK and Chromium's
//!   post-quantum ClientHello (about 2 KB, in the two segments it was captured in). Under
//!   `by_address` a rule allows tcp/443 to the internet and the ClientHello passes at once;
//!   under `by_name` a `domains` rule allows the ClientHello's name (any other name on tcp/443
//!   is rejected), so the flow waits, its ClientHello is held, reassembled, read, matched and
//!   released. Each iteration is a connection never seen before (a new client port); one
//!   flow per iteration, so 1 / time is new TLS flows per second per worker (without the
//!   system calls, which are the same datagrams in both).
//! - `established_tls_flow/by_address` and `/by_name`: a 1,200-byte data segment of a
//!   connection judged already under each policy (the established path; A/B for issue 14).
//! - Before criterion: the resident memory of one worker's hold pool filled to
//!   `names.max_pending` (the default, 16,384) with flows that wait, (a) each holding the first
//!   segment of that ClientHello (the second never comes), (b) each holding 15 KiB of an HTTP
//!   request head that never ends (just under the default `names.max_bytes`: the worst case).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use etherparse::PacketBuilder;
use labelwall::labels::LabelTable;
use labelwall::names::fuzzing::client_capture;
use labelwall::names::{Reading, TcpReassembly, read_stream};
use labelwall::pipeline::{FlowSettings, MAX_GENEVE_DATAGRAM, Mode, NameLimits, Outcome, Pipeline};
use labelwall::policy::CompiledPolicy;
use labelwall::reject::MAX_REJECT_LEN;
use labelwall::snapshot::{RuleHits, Snapshot};
use labelwall::wire::GwlbOptions;

mod support;
use support::resident_mib;

const SERVER: [u8; 4] = [203, 0, 113, 7];
const SERVER_ISN: u32 = 7_000;

const BY_ADDRESS: &str = "default_action: deny\ngroups:\n  clients: {cidrs: [10.0.0.0/8]}\n\
    \x20 internet: {cidrs: [0.0.0.0/0], except: [10.0.0.0/8]}\nrules:\n\
    \x20 - {name: egress, from: [clients], to: [internet], ports: [tcp/443], action: allow}\n";

/// As [`BY_ADDRESS`], with the name of the ClientHello allowed and every other name refused.
fn by_name(name: &str) -> String {
    format!(
        "default_action: deny\ngroups:\n  clients: {{cidrs: [10.0.0.0/8]}}\n\
         \x20 internet: {{cidrs: [0.0.0.0/0], except: [10.0.0.0/8]}}\n\
         \x20 allowed: {{domains: [{name}, \"*.stripe.com\"]}}\nrules:\n\
         \x20 - {{name: named, from: [clients], to: [allowed], ports: [tcp/443], action: allow}}\n\
         \x20 - {{name: others, from: [clients], to: [internet], ports: [tcp/443], action: reject}}\n"
    )
}

fn pipeline(policy: &str, limits: NameLimits) -> Pipeline {
    let policy = CompiledPolicy::parse(Path::new("bench.yaml"), policy).unwrap();
    let hits = Arc::new(RuleHits::new(1, policy.rules.len()));
    let snapshot = Snapshot::new(1, Arc::new(LabelTable::default()), Arc::new(policy), hits);
    let cell = Arc::new(arc_swap::ArcSwap::new(Arc::new(snapshot)));
    let settings = FlowSettings { max_flows: 1 << 20, names: limits, ..FlowSettings::default() };
    let mut p = Pipeline::new(Mode::Inspect, 0, Some(cell), settings, false);
    p.begin_batch(1);
    p
}

/// A TCP segment in GWLB GENEVE.
fn segment(
    from: ([u8; 4], u16),
    to: ([u8; 4], u16),
    syn: bool,
    seq_ack: (u32, u32),
    payload: &[u8],
) -> Vec<u8> {
    let mut step = PacketBuilder::ipv4(from.0, to.0, 64).tcp(from.1, to.1, seq_ack.0, 64_240);
    step = if syn { step.syn() } else { step };
    if seq_ack.1 != 0 {
        step = step.ack(seq_ack.1);
    }
    let mut inner = Vec::new();
    step.write(&mut inner, payload).unwrap();
    let gwlb = GwlbOptions { endpoint_id: Some(1), attachment_id: Some(2), flow_cookie: 3 };
    labelwall::wire::geneve::encapsulate(&inner, &gwlb)
}

/// Every datagram of a connection from `client:port` to the server's 443: the client's
/// segments of the capture (its SYN, its data), the server's SYN-ACK, the client's ACK.
fn connection(client: [u8; 4], port: u16, capture: &[(u32, bool, Vec<u8>)]) -> Vec<Vec<u8>> {
    let (c, s) = ((client, port), (SERVER, 443));
    let isn = capture[0].0;
    let mut out = vec![
        segment(c, s, true, (isn, 0), &[]),
        segment(s, c, true, (SERVER_ISN, isn + 1), &[]),
        segment(c, s, false, (isn + 1, SERVER_ISN + 1), &[]),
    ];
    for (seq, _, payload) in capture.iter().filter(|(_, syn, p)| !syn && !p.is_empty()) {
        out.push(segment(c, s, false, (*seq, SERVER_ISN + 1), payload));
    }
    out
}

/// The client's SYN and data segments of Chromium's TLS capture, and the name it asks for.
fn chromium_hello() -> (Vec<(u32, bool, Vec<u8>)>, String) {
    let segments: Vec<(u32, bool, Vec<u8>)> = client_capture("chromium_tls")
        .segments
        .into_iter()
        .filter(|s| s.syn || !s.payload.is_empty())
        .take(3)
        .map(|s| (s.seq, s.syn, s.payload))
        .collect();
    assert!(segments[0].1 && segments.len() == 3, "SYN and two data segments");
    let mut buf = vec![0u8; 16 * 1024];
    let mut stream = TcpReassembly::new();
    let mut reading = Reading::NeedMore;
    for (seq, syn, payload) in &segments {
        stream.segment(&mut buf, *seq, *syn, payload);
        reading = read_stream(stream.bytes(&buf), buf.len());
    }
    let Reading::Found(name) = reading else { panic!("no name in the capture: {reading:?}") };
    (segments, name.to_string())
}

/// Feeds one datagram as the worker would, taking what a verdict lets go; how many datagrams
/// went back to GWLB.
fn feed(p: &mut Pipeline, datagram: &[u8], inject: &mut [u8], release: &mut [u8]) -> usize {
    let outcome = p.process(datagram, inject);
    let mut back = 0;
    while p.pop_release(release).is_some() {
        back += 1;
    }
    back + usize::from(matches!(outcome, Outcome::SendBack(_) | Outcome::Reject { .. }))
}

/// `cargo bench` passes `--bench`; `cargo test --all-targets` runs the bench once as a smoke
/// test, with a small pool.
fn full_scale() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Resident memory of a pool full of waiting flows, each fed `datagrams(port)` (all held).
fn pool_memory(what: &str, policy: &str, datagrams: impl Fn(u16) -> Vec<Vec<u8>>) {
    let max_pending = if full_scale() { NameLimits::default().max_pending } else { 64 };
    let limits = NameLimits { timeout_ms: 3_600_000, max_pending, ..NameLimits::default() };
    let before = resident_mib();
    let mut p = pipeline(policy, limits);
    let empty = resident_mib();
    let (mut inject, mut release) = (vec![0u8; MAX_REJECT_LEN], vec![0u8; MAX_GENEVE_DATAGRAM]);
    for n in 0..limits.max_pending {
        let port = 10_000 + n as u16;
        for datagram in datagrams(port) {
            feed(&mut p, &datagram, &mut inject, &mut release);
        }
    }
    let full = resident_mib();
    assert_eq!(p.flow_counts().pending as usize, limits.max_pending, "every flow waits");
    println!(
        "hold pool, {} flows waiting, {what}: pipeline at start {:.1} MiB, full {:.1} MiB \
         more ({:.1} KiB per waiting flow)",
        limits.max_pending,
        empty - before,
        full - empty,
        (full - empty) * 1024.0 / limits.max_pending as f64,
    );
    drop(black_box(p));
}

fn memory() {
    let (hello, name) = chromium_hello();
    let policy = by_name(&name);
    pool_memory("each holding the first segment of a 2 KB ClientHello", &policy, |port| {
        let mut datagrams = connection([10, 1, 0, 1], port, &hello);
        datagrams.pop(); // the second segment never comes
        datagrams
    });
    let head = format!("GET / HTTP/1.1\r\nX-Pad: {}", "a".repeat(15 * 1024));
    let http_policy = policy.replace("tcp/443", "tcp/80");
    pool_memory("each holding 15 KiB of an endless HTTP head", &http_policy, |port| {
        let (c, s) = (([10, 1, 0, 1], port), (SERVER, 80));
        let mut datagrams = vec![
            segment(c, s, true, (100, 0), &[]),
            segment(s, c, true, (SERVER_ISN, 101), &[]),
            segment(c, s, false, (101, SERVER_ISN + 1), &[]),
        ];
        for (k, piece) in head.as_bytes().chunks(1024).enumerate() {
            let seq = 101 + (k * 1024) as u32;
            datagrams.push(segment(c, s, false, (seq, SERVER_ISN + 1), piece));
        }
        datagrams
    });
}

fn new_tls_flows(c: &mut Criterion) {
    let (hello, name) = chromium_hello();
    let mut group = c.benchmark_group("new_tls_flow");
    let template = connection([10, 1, 0, 1], 1, &hello);
    for (bench, policy) in [("by_address", BY_ADDRESS.to_string()), ("by_name", by_name(&name))] {
        group.bench_function(bench, |b| {
            b.iter_custom(|iters| {
                // A new pipeline per sample, so that every connection is new to it.
                let mut p = pipeline(&policy, NameLimits::default());
                let mut datagrams = template.clone();
                let (mut inject, mut release) =
                    (vec![0u8; MAX_REJECT_LEN], vec![0u8; MAX_GENEVE_DATAGRAM]);
                let mut elapsed = Duration::ZERO;
                for i in 0..iters {
                    // Client address and port from the iteration: 10.1.x.y, ports 1024 up.
                    let (host, port) = ((i / 60_000) as u32, 1024 + (i % 60_000) as u16);
                    let client = (0x0a01_0000 + host).to_be_bytes();
                    for (k, datagram) in datagrams.iter_mut().enumerate() {
                        set_client(datagram, client, port, k == 1);
                    }
                    let started = Instant::now();
                    let mut back = 0;
                    for datagram in &datagrams {
                        back += feed(&mut p, datagram, &mut inject, &mut release);
                    }
                    elapsed += started.elapsed();
                    assert_eq!(back, datagrams.len(), "every datagram went back");
                }
                assert_eq!(p.flow_counts().pending, 0);
                elapsed
            })
        });
    }
    group.finish();
}

/// The established path: a data segment of a connection whose ClientHello was judged (by its
/// address, or by its name), so that the A/B shows what a policy that reads names costs the
/// packets of flows judged already.
fn established(c: &mut Criterion) {
    let (hello, name) = chromium_hello();
    let mut group = c.benchmark_group("established_tls_flow");
    for (bench, policy) in [("by_address", BY_ADDRESS.to_string()), ("by_name", by_name(&name))] {
        let mut p = pipeline(&policy, NameLimits::default());
        let (mut inject, mut release) = (vec![0u8; MAX_REJECT_LEN], vec![0u8; MAX_GENEVE_DATAGRAM]);
        let setup = connection([10, 1, 0, 1], 40_000, &hello);
        let back: usize = setup.iter().map(|d| feed(&mut p, d, &mut inject, &mut release)).sum();
        assert_eq!((back, p.flow_counts().pending), (setup.len(), 0));
        let (c, s) = (([10, 1, 0, 1], 40_000), (SERVER, 443));
        let next =
            hello.iter().map(|(_, _, payload)| payload.len() as u32).sum::<u32>() + hello[0].0 + 1;
        let data = segment(c, s, false, (next, SERVER_ISN + 1), &[0x17; 1200]);
        group.bench_function(bench, |b| {
            b.iter(|| {
                let outcome = p.process(black_box(&data), &mut inject);
                assert!(matches!(outcome, Outcome::SendBack(_)));
                black_box(outcome)
            })
        });
    }
    group.finish();
}

/// Rewrites the client's address and port of a GENEVE datagram made by [`segment`] (the
/// server's datagrams, `to_client`, have them as destination). Checksums are not checked on
/// the way through, so they are left as they are.
fn set_client(datagram: &mut [u8], client: [u8; 4], port: u16, to_client: bool) {
    let inner = labelwall::pipeline::decode(datagram).unwrap().geneve_header_len;
    let (address_at, port_at) = if to_client { (16, 22) } else { (12, 20) };
    datagram[inner + address_at..inner + address_at + 4].copy_from_slice(&client);
    datagram[inner + port_at..inner + port_at + 2].copy_from_slice(&port.to_be_bytes());
    // The IPv4 header checksum is checked: recompute it.
    let header = &mut datagram[inner..inner + 20];
    header[10..12].fill(0);
    let sum = header.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    header[10..12].copy_from_slice(&(!(folded as u16)).to_be_bytes());
}

fn benches(c: &mut Criterion) {
    new_tls_flows(c);
    established(c);
}

criterion_group! {
    name = group;
    config = Criterion::default();
    targets = benches
}

fn main() {
    // Not when profiling (`--profile-time`, e.g. under callgrind): only the benchmarks then.
    if !std::env::args().any(|a| a == "--profile-time") {
        memory();
    }
    group();
    Criterion::default().configure_from_args().final_summary();
}
