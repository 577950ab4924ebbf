//! The server-name readers on real clients' bytes (tests/fixtures/names):
//! `cargo bench --bench names`.
//!
//! - `tls_pq_client_hello_two_segments`: Chromium's post-quantum ClientHello (about 2 KB, in
//!   the two TCP segments it was captured in) through `TcpReassembly` into a 16 KiB buffer,
//!   then `read_stream` (what a pending flow costs from its SYN to its name);
//! - `quic_initial_v1` / `quic_initial_v2`: one aioquic Initial datagram (1,200 bytes): keys
//!   derived from its DCID, header protection removed, payload decrypted, frames walked,
//!   ClientHello read;
//! - `quic_chromium_two_initials`: Chromium's first two Initials, CRYPTO frames split and
//!   reordered, the ClientHello spanning both;
//! - `http_host`: curl's request head with `Host`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use labelwall::names::fuzzing::client_capture;
use labelwall::names::{QuicInitials, Reading, TcpReassembly, read_stream};

const BUDGET: usize = 16_384;

fn tcp(c: &mut Criterion) {
    let mut group = c.benchmark_group("names");
    let segments = client_capture("chromium_tls").segments;
    // The SYN and the two data segments of the first connection (ACKs carry nothing).
    let segments: Vec<_> =
        segments.into_iter().filter(|s| s.syn || !s.payload.is_empty()).take(3).collect();
    assert_eq!(segments.iter().filter(|s| !s.payload.is_empty()).count(), 2);
    let bytes: usize = segments.iter().map(|s| s.payload.len()).sum();
    let mut buf = vec![0u8; BUDGET];
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("tls_pq_client_hello_two_segments", |b| {
        b.iter(|| {
            let mut stream = TcpReassembly::new();
            let mut reading = Reading::NeedMore;
            for s in &segments {
                stream.segment(&mut buf, s.seq, s.syn, &s.payload);
                reading = read_stream(stream.bytes(&buf), BUDGET);
            }
            assert!(matches!(reading, Reading::Found(_)));
            black_box(reading)
        })
    });
    let segments = client_capture("curl_host").segments;
    let request = segments.into_iter().map(|s| s.payload).find(|p| !p.is_empty()).unwrap();
    group.throughput(Throughput::Bytes(request.len() as u64));
    group.bench_function("http_host", |b| {
        b.iter(|| black_box(read_stream(black_box(&request), BUDGET)))
    });
    group.finish();
}

fn quic(c: &mut Criterion) {
    let mut group = c.benchmark_group("names");
    let (mut crypto, mut scratch) = (vec![0u8; BUDGET], vec![0u8; 2048]);
    let mut read = |datagrams: &[Vec<u8>]| {
        let mut flow = QuicInitials::new();
        let mut reading = Reading::NeedMore;
        for datagram in datagrams {
            reading = flow.datagram(&mut crypto, &mut scratch, datagram);
        }
        assert!(matches!(reading, Reading::Found(_)));
        reading
    };
    for (bench, fixture, count) in [
        ("quic_initial_v1", "aioquic_v1", 1),
        ("quic_initial_v2", "aioquic_v2", 1),
        ("quic_chromium_two_initials", "chromium_quic", 2),
    ] {
        let datagrams = client_capture(fixture).datagrams;
        let datagrams = &datagrams[..count];
        group.throughput(Throughput::Bytes(datagrams.iter().map(|d| d.len() as u64).sum()));
        group.bench_function(bench, |b| b.iter(|| black_box(read(black_box(datagrams)))));
    }
    group.finish();
}

criterion_group!(benches, tcp, quic);
criterion_main!(benches);
