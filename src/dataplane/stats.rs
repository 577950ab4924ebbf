//! Per-worker counters.
//! Must not depend on: sockets, tokio, the control plane.
//!
//! A worker counts into a plain [`Counters`] it owns (no atomics, no sharing on the per-packet
//! path) and publishes it once per batch into its [`SharedCounters`], which the admin server
//! reads. Each shared value has exactly one writer, so a relaxed store is enough.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::pipeline::NameResult;
use crate::policy::Action;
use crate::wire::DropReason;

const RX_DATAGRAMS: usize = 0;
const RX_BYTES: usize = 1;
const TX_PACKETS: usize = 2;
const TX_BYTES: usize = 3;
const RX_BATCHES: usize = 4;
const RX_ERRORS: usize = 5;
const FLOWS_ACTIVE: usize = 6;
const FLOWS_CREATED: usize = 7;
const FLOWS_EVICTED: usize = 8;
const SOCKETS_OPEN: usize = 9;
const FRAGMENTS_ACTIVE: usize = 10;
const FRAGMENTS_REFUSED: usize = 11;
const REJECTS_SUPPRESSED: usize = 12;
/// Packets, then system calls, per [`SendPath`].
const TX_PATH_PACKETS: usize = 13;
const TX_PATH_CALLS: usize = TX_PATH_PACKETS + SendPath::COUNT;
const SOCKET_EVENTS: usize = TX_PATH_CALLS + SendPath::COUNT;
const FALLBACKS: usize = SOCKET_EVENTS + SocketEvent::COUNT;
const VERDICT_PACKETS: usize = FALLBACKS + Fallback::COUNT;
const VERDICT_BYTES: usize = VERDICT_PACKETS + Action::COUNT;
const DROPS: usize = VERDICT_BYTES + Action::COUNT;
const FLOWS_PENDING: usize = DROPS + DropReason::COUNT;
/// Server-name readings, per [`NameResult`].
const SERVER_NAMES: usize = FLOWS_PENDING + 1;
const LEN: usize = SERVER_NAMES + NameResult::ALL.len();

/// The ways a packet goes back to GWLB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendPath {
    /// A train as one segmented UDP send from a per-port socket.
    Gso,
    /// The raw IPv4 socket, one packet per message.
    Raw,
    /// The packet socket: a whole Ethernet frame per message, to a next hop the kernel's
    /// neighbour table knows.
    Packet,
}

impl SendPath {
    pub const COUNT: usize = 3;
    pub const ALL: [SendPath; Self::COUNT] = [SendPath::Gso, SendPath::Raw, SendPath::Packet];
    pub fn as_str(self) -> &'static str {
        match self {
            SendPath::Gso => "gso",
            SendPath::Raw => "raw",
            SendPath::Packet => "packet",
        }
    }
}

/// What happened to a per-port send socket (segmentation-offload path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketEvent {
    Opened,
    /// Closed to make room for another port (the cache is full).
    Evicted,
    /// Could not be opened or bound (the address is in use, no file descriptors left, ...).
    OpenFailed,
}

impl SocketEvent {
    pub const COUNT: usize = 3;
    pub const ALL: [SocketEvent; Self::COUNT] =
        [SocketEvent::Opened, SocketEvent::Evicted, SocketEvent::OpenFailed];
    pub fn as_str(self) -> &'static str {
        match self {
            SocketEvent::Opened => "opened",
            SocketEvent::Evicted => "evicted",
            SocketEvent::OpenFailed => "open_failed",
        }
    }
}

/// Why datagrams of a train went out through the raw socket one by one instead of as one
/// segmented send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// No per-port socket: it could not be bound (e.g. the port is in use here) or the
    /// cache is off (`dataplane.send_sockets: 0`).
    NoSocket,
    /// The kernel has no UDP segmentation offload, or refused it on this route (EIO).
    GsoUnsupported,
    /// The segmented send failed otherwise (the datagrams were sent raw instead).
    SendError,
}

impl Fallback {
    pub const COUNT: usize = 3;
    pub const ALL: [Fallback; Self::COUNT] =
        [Fallback::NoSocket, Fallback::GsoUnsupported, Fallback::SendError];
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::NoSocket => "no_socket",
            Fallback::GsoUnsupported => "gso_unsupported",
            Fallback::SendError => "send_error",
        }
    }
}

/// Counters owned by one worker thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    values: [u64; LEN],
}

impl Default for Counters {
    fn default() -> Self {
        Counters { values: [0; LEN] }
    }
}

impl Counters {
    /// One datagram (GRO segment) received.
    pub fn received(&mut self, bytes: usize) {
        self.values[RX_DATAGRAMS] += 1;
        self.values[RX_BYTES] += bytes as u64;
    }

    /// One receive system call that returned data.
    pub fn batch(&mut self) {
        self.values[RX_BATCHES] += 1;
    }

    /// A receive system call failed with something other than "would block".
    pub fn receive_error(&mut self) {
        self.values[RX_ERRORS] += 1;
    }

    /// A packet judged by policy (inner bytes counted as GENEVE datagram bytes).
    pub fn verdict(&mut self, verdict: Action, bytes: usize) {
        self.values[VERDICT_PACKETS + verdict.index()] += 1;
        self.values[VERDICT_BYTES + verdict.index()] += bytes as u64;
    }

    /// Pending flows' held datagrams, counted under the verdict that settled them.
    pub fn held_verdicts(&mut self, held: crate::pipeline::HeldVerdicts) {
        for verdict in Action::ALL {
            let (packets, bytes) = held.0[verdict.index()];
            self.values[VERDICT_PACKETS + verdict.index()] += packets;
            self.values[VERDICT_BYTES + verdict.index()] += bytes;
        }
    }

    pub fn drop(&mut self, reason: DropReason) {
        self.drop_many(reason, 1);
    }

    pub fn drop_many(&mut self, reason: DropReason, count: u64) {
        self.values[DROPS + reason.index()] += count;
    }

    /// Packets the kernel accepted for sending back to GWLB.
    pub fn sent(&mut self, packets: u64, bytes: u64) {
        self.values[TX_PACKETS] += packets;
        self.values[TX_BYTES] += bytes;
    }

    /// `calls` send system calls of one path that carried `packets`.
    pub fn send_path(&mut self, path: SendPath, packets: u64, calls: u64) {
        self.values[TX_PATH_PACKETS + path as usize] += packets;
        self.values[TX_PATH_CALLS + path as usize] += calls;
    }

    pub fn socket_event(&mut self, event: SocketEvent) {
        self.values[SOCKET_EVENTS + event as usize] += 1;
    }

    /// `packets` datagrams of a train sent raw instead of segmented.
    pub fn fallback(&mut self, reason: Fallback, packets: u64) {
        self.values[FALLBACKS + reason as usize] += packets;
    }

    pub fn set_sockets_open(&mut self, open: usize) {
        self.values[SOCKETS_OPEN] = open as u64;
    }

    /// Packets and system calls of one send path.
    pub fn path_packets(&self, path: SendPath) -> u64 {
        self.values[TX_PATH_PACKETS + path as usize]
    }
    pub fn path_calls(&self, path: SendPath) -> u64 {
        self.values[TX_PATH_CALLS + path as usize]
    }
    pub fn socket_events(&self, event: SocketEvent) -> u64 {
        self.values[SOCKET_EVENTS + event as usize]
    }
    pub fn fallbacks(&self, reason: Fallback) -> u64 {
        self.values[FALLBACKS + reason as usize]
    }
    pub fn sockets_open(&self) -> u64 {
        self.values[SOCKETS_OPEN]
    }

    /// The pipeline's flow counts (gauges and running totals, set as they are).
    pub fn set_flows(&mut self, flows: crate::pipeline::FlowCounts) {
        self.values[FLOWS_ACTIVE] = flows.active;
        self.values[FLOWS_CREATED] = flows.created;
        self.values[FLOWS_EVICTED] = flows.evicted;
        self.values[FRAGMENTS_ACTIVE] = flows.fragments;
        self.values[FRAGMENTS_REFUSED] = flows.fragments_refused;
        self.values[REJECTS_SUPPRESSED] = flows.rejects_suppressed;
        self.values[FLOWS_PENDING] = flows.pending;
        for result in NameResult::ALL {
            self.values[SERVER_NAMES + result as usize] = flows.server_names.get(result);
        }
    }

    /// Flows waiting for their server name now.
    pub fn flows_pending(&self) -> u64 {
        self.values[FLOWS_PENDING]
    }
    /// Server-name readings that ended with `result`.
    pub fn server_names(&self, result: NameResult) -> u64 {
        self.values[SERVER_NAMES + result as usize]
    }

    pub fn fragments_active(&self) -> u64 {
        self.values[FRAGMENTS_ACTIVE]
    }
    pub fn fragments_refused(&self) -> u64 {
        self.values[FRAGMENTS_REFUSED]
    }
    pub fn rejects_suppressed(&self) -> u64 {
        self.values[REJECTS_SUPPRESSED]
    }

    pub fn flows_active(&self) -> u64 {
        self.values[FLOWS_ACTIVE]
    }
    pub fn flows_created(&self) -> u64 {
        self.values[FLOWS_CREATED]
    }
    pub fn flows_evicted(&self) -> u64 {
        self.values[FLOWS_EVICTED]
    }
    pub fn rx_datagrams(&self) -> u64 {
        self.values[RX_DATAGRAMS]
    }
    pub fn rx_bytes(&self) -> u64 {
        self.values[RX_BYTES]
    }
    pub fn tx_packets(&self) -> u64 {
        self.values[TX_PACKETS]
    }
    pub fn tx_bytes(&self) -> u64 {
        self.values[TX_BYTES]
    }
    pub fn rx_batches(&self) -> u64 {
        self.values[RX_BATCHES]
    }
    pub fn rx_errors(&self) -> u64 {
        self.values[RX_ERRORS]
    }
    pub fn verdict_packets(&self, verdict: Action) -> u64 {
        self.values[VERDICT_PACKETS + verdict.index()]
    }
    pub fn verdict_bytes(&self, verdict: Action) -> u64 {
        self.values[VERDICT_BYTES + verdict.index()]
    }
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.values[DROPS + reason.index()]
    }
    pub fn total_drops(&self) -> u64 {
        self.values[DROPS..].iter().sum()
    }

    /// Adds another worker's counters (for totals across workers).
    pub fn accumulate(&mut self, other: &Counters) {
        for (mine, theirs) in self.values.iter_mut().zip(other.values.iter()) {
            *mine += theirs;
        }
    }
}

/// The published copy of one worker's counters.
#[derive(Debug)]
pub struct SharedCounters {
    values: [AtomicU64; LEN],
}

impl Default for SharedCounters {
    fn default() -> Self {
        SharedCounters { values: std::array::from_fn(|_| AtomicU64::new(0)) }
    }
}

impl SharedCounters {
    /// Called by the owning worker only.
    pub fn publish(&self, counters: &Counters) {
        for (shared, value) in self.values.iter().zip(counters.values.iter()) {
            shared.store(*value, Ordering::Relaxed);
        }
    }

    pub fn load(&self) -> Counters {
        Counters { values: std::array::from_fn(|i| self.values[i].load(Ordering::Relaxed)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_counters_read_back_exactly() {
        let mut c = Counters::default();
        c.received(100);
        c.received(50);
        c.batch();
        c.verdict(Action::Allow, 100);
        c.verdict(Action::Audit, 7);
        c.drop(DropReason::GeneveVersion);
        c.drop(DropReason::GeneveVersion);
        c.drop(DropReason::SendFailed);
        c.sent(1, 128);
        let shared = SharedCounters::default();
        shared.publish(&c);
        let read = shared.load();
        assert_eq!(read, c);
        assert_eq!(read.rx_datagrams(), 2);
        assert_eq!(read.rx_bytes(), 150);
        assert_eq!(read.verdict_packets(Action::Allow), 1);
        assert_eq!(read.verdict_bytes(Action::Audit), 7);
        assert_eq!(read.verdict_packets(Action::Deny), 0);
        assert_eq!(read.drops(DropReason::GeneveVersion), 2);
        assert_eq!(read.total_drops(), 3);
        assert_eq!((read.tx_packets(), read.tx_bytes()), (1, 128));
    }

    #[test]
    fn accumulate_sums_every_counter() {
        let mut a = Counters::default();
        a.received(10);
        a.drop(DropReason::Oversize);
        let mut total = Counters::default();
        total.accumulate(&a);
        total.accumulate(&a);
        assert_eq!(total.rx_bytes(), 20);
        assert_eq!(total.drops(DropReason::Oversize), 2);
    }
}
