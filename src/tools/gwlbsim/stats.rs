//! The simulator's counters, shared by its two threads, and the one line of `key=value`
//! pairs they are reported as, periodically and on the way out (`tests/e2e_iperf.rs` reads
//! that line, so its keys are an interface). Must not depend on sockets or the TUN device; of
//! the flow table it reads only the sizes.

use std::sync::atomic::{AtomicU64, Ordering};

use super::flows::{ReplyCheck, SimFlows};

/// Counters of one run, shared by both directions.
#[derive(Debug, Default)]
pub(super) struct SimStats {
    /// Inner packets wrapped and sent to the appliance, and their inner bytes.
    pub(super) out_packets: AtomicU64,
    pub(super) out_bytes: AtomicU64,
    /// Of those, sent as Ethernet frames through the packet socket (the rest: raw socket).
    pub(super) out_frames: AtomicU64,
    /// Inner packets of good replies written back to the TUN device, and their bytes.
    pub(super) back_packets: AtomicU64,
    pub(super) back_bytes: AtomicU64,
    /// Good replies that were the appliance's rejects (RST / ICMP unreachable it made).
    pub(super) rejects: AtomicU64,
    pub(super) malformed: AtomicU64,
    pub(super) unknown_flow: AtomicU64,
    pub(super) wrong_port: AtomicU64,
    pub(super) stale_cookie: AtomicU64,
    pub(super) wrong_header: AtomicU64,
    /// Datagrams on the reply port from another address than the appliance's.
    pub(super) foreign: AtomicU64,
    /// Packets read from the TUN device that are not well-formed IP.
    pub(super) unparsable: AtomicU64,
    pub(super) table_full: AtomicU64,
    pub(super) send_failed: AtomicU64,
    pub(super) tun_write_failed: AtomicU64,
}

impl SimStats {
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Every returned datagram that was not delivered because it did not match.
    fn mismatches(&self) -> u64 {
        [
            &self.malformed,
            &self.unknown_flow,
            &self.wrong_port,
            &self.stale_cookie,
            &self.wrong_header,
            &self.foreign,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }

    pub(super) fn count_reply(&self, check: ReplyCheck) {
        let counter = match check {
            ReplyCheck::Deliver { .. } => return,
            ReplyCheck::Malformed(_) => &self.malformed,
            ReplyCheck::UnknownFlow => &self.unknown_flow,
            ReplyCheck::WrongPort => &self.wrong_port,
            ReplyCheck::StaleCookie => &self.stale_cookie,
            ReplyCheck::WrongHeader => &self.wrong_header,
        };
        Self::add(counter, 1);
    }

    /// One line of `key=value` pairs, for people and for tests.
    pub(super) fn line(&self, flows: &SimFlows) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "out={} out_bytes={} out_frames={} back={} back_bytes={} rejects={} mismatches={} \
             (malformed={} unknown_flow={} wrong_port={} stale_cookie={} wrong_header={} \
             foreign={}) flows={} flows_created={} flows_renewed={} unparsable={} \
             table_full={} send_failed={} tun_write_failed={}",
            get(&self.out_packets),
            get(&self.out_bytes),
            get(&self.out_frames),
            get(&self.back_packets),
            get(&self.back_bytes),
            get(&self.rejects),
            self.mismatches(),
            get(&self.malformed),
            get(&self.unknown_flow),
            get(&self.wrong_port),
            get(&self.stale_cookie),
            get(&self.wrong_header),
            get(&self.foreign),
            flows.len(),
            flows.created(),
            flows.renewed(),
            get(&self.unparsable),
            get(&self.table_full),
            get(&self.send_failed),
            get(&self.tun_write_failed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::gwlbsim::flows::tests::settings;
    use crate::wire::{DropReason, GWLB_HEADER_LEN};

    #[test]
    fn the_counters_line_sums_every_kind_of_mismatch() {
        let stats = SimStats::default();
        for check in [
            ReplyCheck::Malformed(DropReason::GeneveTruncated),
            ReplyCheck::UnknownFlow,
            ReplyCheck::WrongPort,
            ReplyCheck::StaleCookie,
            ReplyCheck::WrongHeader,
            ReplyCheck::Deliver { inner_offset: GWLB_HEADER_LEN, reject: false },
        ] {
            stats.count_reply(check);
        }
        SimStats::add(&stats.foreign, 2);
        assert_eq!(stats.mismatches(), 7);
        let line = stats.line(&SimFlows::new(settings()));
        assert!(line.contains(" mismatches=7 (malformed=1 unknown_flow=1 wrong_port=1 "), "{line}");
        assert!(line.contains("stale_cookie=1 wrong_header=1 foreign=2)"), "{line}");
    }
}
