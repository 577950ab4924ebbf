//! The server-name readers allocate nothing: a counting global allocator around reading the
//! real clients' bytes (a post-quantum ClientHello in two segments, QUIC Initials of v1, v2
//! and Chromium, an HTTP request). Buffers and fixtures are made before counting starts.

#![allow(unsafe_code, reason = "a counting global allocator that only forwards to System")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use labelwall::names::fuzzing::client_capture;
use labelwall::names::{QuicInitials, Reading, TcpReassembly, read_stream};

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
