//! The segmentation-offload side of the send path: cutting a GRO train's permitted datagrams
//! into runs that can go out as one `UDP_SEGMENT` send, and the bounded per-worker cache of
//! per-port UDP sockets they go out through.
//! Must not depend on: the pipeline, policy, tokio.
//!
//! Why per-port sockets: GWLB wants the reply from its own source port, and only a UDP socket
//! can use UDP segmentation offload; a socket bound to (appliance IP, GWLB's source port) sends
//! from exactly that port. GWLB gives each flow its own source port, so a worker keeps a small
//! cache of such sockets (clock eviction, counted) and falls back to the raw socket for
//! single datagrams, for ports it cannot bind, and when segmentation is not available.

use std::net::SocketAddrV4;

use rustc_hash::FxHashMap;

use super::stats::{Counters, SocketEvent};
use crate::net::sys::{GsoSocket, MAX_GSO_BYTES, MAX_GSO_SEGMENTS};

/// How long a port that could not be bound is left to the raw path before trying again.
const RETRY_AFTER_MS: u64 = 5_000;

/// Consecutive permitted datagrams, contiguous in the receive buffer, that one segmented send
/// can carry: `count` datagrams of `segment` bytes, the last possibly shorter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    pub offset: usize,
    pub len: usize,
    pub segment: usize,
    pub count: usize,
}

/// Builds [`Run`]s from the permitted datagrams of one receive slot, in order.
#[derive(Debug, Default)]
pub(super) struct RunBuilder {
    current: Option<Run>,
}

impl RunBuilder {
    /// Adds a permitted datagram at `offset`; returns the run it closed, if it did not fit the
    /// current one (not adjacent, longer than the segment, after a short last datagram, or
    /// over the kernel's limits of one send).
    pub fn push(&mut self, offset: usize, len: usize) -> Option<Run> {
        if let Some(run) = &mut self.current
            && run.len == run.count * run.segment
            && offset == run.offset + run.len
            && len <= run.segment
            && run.count < MAX_GSO_SEGMENTS
            && run.len + len <= MAX_GSO_BYTES
        {
            run.len += len;
            run.count += 1;
            return None;
        }
        self.current.replace(Run { offset, len, segment: len, count: 1 })
    }

    /// Ends the current run (a datagram that is not sent back splits a train).
    pub fn finish(&mut self) -> Option<Run> {
        self.current.take()
    }
}

#[derive(Debug)]
struct Entry {
    local: SocketAddrV4,
    /// `None`: the bind failed; the raw path serves this port until `retry_at_ms`.
    socket: Option<GsoSocket>,
    retry_at_ms: u64,
    referenced: bool,
}

/// A worker's per-port send sockets, at most `capacity`, keyed by the local address they are
/// bound to. Lookups of cached ports cost a hash probe; a miss opens a socket (a few system
/// calls), evicting by clock (second chance) when full. Nothing here allocates after `new`.
#[derive(Debug)]
pub(super) struct SendSockets {
    entries: Vec<Entry>,
    index: FxHashMap<SocketAddrV4, usize>,
    capacity: usize,
    hand: usize,
    open: usize,
}

impl SendSockets {
    pub fn new(capacity: usize) -> Self {
        let mut index = FxHashMap::default();
        index.reserve(capacity);
        SendSockets { entries: Vec::with_capacity(capacity), index, capacity, hand: 0, open: 0 }
    }

    /// Sockets open now.
    pub fn open(&self) -> usize {
        self.open
    }

    /// The socket bound to `local`, opened if needed; `None` when there is none to use (the
    /// cache is off, or the port cannot be bound here: the raw path must serve it).
    pub fn get(
        &mut self,
        local: SocketAddrV4,
        now_ms: u64,
        counters: &mut Counters,
    ) -> Option<&GsoSocket> {
        if self.capacity == 0 {
            return None;
        }
        let at = match self.index.get(&local) {
            Some(&at) => {
                let entry = &mut self.entries[at];
                entry.referenced = true;
                if entry.socket.is_none() && now_ms >= entry.retry_at_ms {
                    entry.socket = open(local, counters);
                    entry.retry_at_ms = now_ms + RETRY_AFTER_MS;
                    self.open += usize::from(entry.socket.is_some());
                }
                at
            }
            None => {
                let socket = open(local, counters);
                self.open += usize::from(socket.is_some());
                let entry =
                    Entry { local, socket, retry_at_ms: now_ms + RETRY_AFTER_MS, referenced: true };
                let at = if self.entries.len() < self.capacity {
                    self.entries.push(entry);
                    self.entries.len() - 1
                } else {
                    let victim = self.victim();
                    let old = std::mem::replace(&mut self.entries[victim], entry);
                    self.index.remove(&old.local);
                    if old.socket.is_some() {
                        self.open -= 1;
                        counters.socket_event(SocketEvent::Evicted);
                    }
                    victim
                };
                self.index.insert(local, at);
                at
            }
        };
        self.entries[at].socket.as_ref()
    }

    /// Clock: the first entry after the hand not referenced since the hand last passed it.
    fn victim(&mut self) -> usize {
        loop {
            let at = self.hand;
            self.hand = (self.hand + 1) % self.entries.len();
            let entry = &mut self.entries[at];
            if !std::mem::take(&mut entry.referenced) {
                return at;
            }
        }
    }
}

fn open(local: SocketAddrV4, counters: &mut Counters) -> Option<GsoSocket> {
    match GsoSocket::open(local) {
        Ok(socket) => {
            counters.socket_event(SocketEvent::Opened);
            Some(socket)
        }
        Err(_) => {
            counters.socket_event(SocketEvent::OpenFailed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, UdpSocket};

    fn runs(datagrams: &[(usize, usize)], breaks: &[usize]) -> Vec<Run> {
        let mut builder = RunBuilder::default();
        let mut out = Vec::new();
        for (i, &(offset, len)) in datagrams.iter().enumerate() {
            if breaks.contains(&i) {
                out.extend(builder.finish());
            }
            out.extend(builder.push(offset, len));
        }
        out.extend(builder.finish());
        out
    }

    fn train(count: usize, size: usize, last: usize) -> Vec<(usize, usize)> {
        (0..count).map(|i| (i * size, if i + 1 == count { last } else { size })).collect()
    }

    #[test]
    fn a_whole_train_is_one_run_with_a_shorter_last_datagram() {
        assert_eq!(
            runs(&train(10, 1540, 700), &[]),
            [Run { offset: 0, len: 9 * 1540 + 700, segment: 1540, count: 10 }]
        );
        assert_eq!(runs(&[(100, 64)], &[]), [Run { offset: 100, len: 64, segment: 64, count: 1 }]);
    }

    #[test]
    fn a_datagram_not_sent_back_splits_the_run() {
        // Datagram 3 of 6 withheld: [0,1,2] and [4,5].
        let mut datagrams = train(6, 1000, 1000);
        datagrams.remove(3);
        assert_eq!(
            runs(&datagrams, &[3]),
            [
                Run { offset: 0, len: 3000, segment: 1000, count: 3 },
                Run { offset: 4000, len: 2000, segment: 1000, count: 2 },
            ]
        );
        // A gap in offsets also splits, even without an explicit break.
        assert_eq!(runs(&datagrams, &[]).len(), 2);
    }

    #[test]
    fn a_longer_datagram_or_one_after_a_short_one_starts_a_new_run() {
        let got = runs(&[(0, 100), (100, 100), (200, 50), (250, 50), (300, 200)], &[]);
        assert_eq!(
            got,
            [
                Run { offset: 0, len: 250, segment: 100, count: 3 },
                Run { offset: 250, len: 50, segment: 50, count: 1 },
                Run { offset: 300, len: 200, segment: 200, count: 1 },
            ]
        );
    }

    #[test]
    fn runs_respect_the_kernels_limits_of_one_send() {
        // 64 segments at most.
        let got = runs(&train(100, 200, 200), &[]);
        assert_eq!(got.iter().map(|r| r.count).collect::<Vec<_>>(), [64, 36]);
        // 65,507 bytes at most: 7 datagrams of 9,000 fit, the 8th starts a new run.
        let got = runs(&train(8, 9000, 9000), &[]);
        assert_eq!(got.iter().map(|r| r.count).collect::<Vec<_>>(), [7, 1]);
        assert!(got.iter().all(|r| r.len <= MAX_GSO_BYTES));
    }

    #[test]
    fn the_cache_evicts_by_clock_and_counts() {
        let ip = Ipv4Addr::LOCALHOST;
        // Ports the OS just handed out are free; rebinding them exactly is what we test.
        let ports: Vec<u16> = (0..4)
            .map(|_| UdpSocket::bind((ip, 0)).unwrap().local_addr().unwrap().port())
            .collect();
        let mut counters = Counters::default();
        let mut cache = SendSockets::new(2);
        let at = |p: u16| SocketAddrV4::new(ip, p);
        assert!(cache.get(at(ports[0]), 0, &mut counters).is_some());
        assert!(cache.get(at(ports[1]), 0, &mut counters).is_some());
        assert!(cache.get(at(ports[0]), 0, &mut counters).is_some()); // hit
        assert_eq!(counters.socket_events(SocketEvent::Opened), 2);
        assert!(cache.get(at(ports[2]), 0, &mut counters).is_some()); // evicts one
        assert_eq!(counters.socket_events(SocketEvent::Evicted), 1);
        assert_eq!(cache.open(), 2);
        assert_eq!(cache.index.len(), 2);
        // The evicted port was closed: it can be bound again.
        let evicted = ports[..2].iter().find(|p| !cache.index.contains_key(&at(**p))).unwrap();
        drop(UdpSocket::bind((ip, *evicted)).unwrap());
    }

    #[test]
    fn a_port_in_use_is_left_to_the_raw_path_and_retried_later() {
        let ip = Ipv4Addr::LOCALHOST;
        let holder = UdpSocket::bind((ip, 0)).unwrap();
        let local = match holder.local_addr().unwrap() {
            std::net::SocketAddr::V4(v4) => v4,
            other => panic!("{other}"),
        };
        let mut counters = Counters::default();
        let mut cache = SendSockets::new(4);
        assert!(cache.get(local, 0, &mut counters).is_none());
        assert!(cache.get(local, 10, &mut counters).is_none());
        assert_eq!(counters.socket_events(SocketEvent::OpenFailed), 1, "not retried at once");
        drop(holder);
        assert!(cache.get(local, 10 + RETRY_AFTER_MS, &mut counters).is_some());
        assert_eq!(cache.open(), 1);
        assert!(SendSockets::new(0).get(local, 0, &mut counters).is_none(), "cache off");
    }
}
