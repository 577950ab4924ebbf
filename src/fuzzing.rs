//! The receive path as one function over arbitrary bytes, shared by the cargo-fuzz target
//! (tests/fuzz) and the stable test that replays its seed corpus, so both exercise exactly
//! the code a worker runs on a datagram.

use std::net::Ipv4Addr;

use crate::pipeline::{self, Mode, Outcome, Pipeline};
use crate::wire::outer::{self, OUTER_HEADER_LEN, OuterAddressing};

/// Runs `data` through the worker's per-datagram steps and checks the invariants that must
/// hold for any input; panics (which the fuzzer reports) when one does not.
pub fn receive_path(data: &[u8]) {
    // The first byte picks a GRO stride so that trains of segments are covered too.
    let (stride, train) = match data.split_first() {
        Some((&s, rest)) if s & 0x80 != 0 => (usize::from(s & 0x7f).max(1) * 8, rest),
        _ => (data.len().max(1), data),
    };
    let mut inspect = Pipeline::new(Mode::Inspect);
    let addressing = OuterAddressing {
        src: Ipv4Addr::new(10, 0, 0, 1),
        dst: Ipv4Addr::new(10, 0, 0, 2),
        src_port: 50000,
        dst_port: 6081,
    };
    for datagram in train.chunks(stride) {
        let decoded = pipeline::decode(datagram);
        match inspect.process(datagram) {
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
            Outcome::Withhold(_) => {}
        }
    }
}
