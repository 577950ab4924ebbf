//! Flow state: which flows exist, who started them, what policy said, and TCP progress.
//! Must not depend on: sockets, snapshots, logging.
//!
//! One [`FlowTable`] per data-plane worker, so the per-packet path takes no lock. Correctness
//! does not depend on both directions of a flow reaching the same worker (or this appliance
//! at all): a packet of an unknown flow is judged at first sight, both ways, so a table is a
//! cache of decisions plus TCP progress and per-flow totals, never a requirement.
//!
//! Bounded: entries live in a slab allocated once at startup; a hash index maps keys to slots.
//! The index holds only slot numbers (4 bytes each; the key's hash is kept in the slot): at
//! 1M flows its 2M buckets take about 10 MB, where (key, slot) entries of 44 bytes took about
//! 95 MB.
//! Idle flows expire like GWLB's (TCP 350 s by default, others 120 s); a clock hand sweeps a
//! few slots per batch; when the table is full the entry under the hand is evicted (counted),
//! which is safe because an evicted flow is simply judged again on its next packet.

use std::net::IpAddr;

use hashbrown::HashTable;

use crate::names::NameId;
use crate::packet::{InnerPacket, ip_proto, tcp_flags};
use crate::policy::Decision;

/// Direction-independent 5-tuple: the endpoint with the smaller (address, port) is `a`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub a: IpAddr,
    pub b: IpAddr,
    pub a_port: u16,
    pub b_port: u16,
    pub protocol: u8,
}

/// Which endpoint of a [`FlowKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

impl FlowKey {
    /// The key of a packet from `src:sport` to `dst:dport`, and which side sent it.
    pub fn of_packet(
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
        protocol: u8,
    ) -> (FlowKey, Side) {
        if (src, sport) <= (dst, dport) {
            (FlowKey { a: src, b: dst, a_port: sport, b_port: dport, protocol }, Side::A)
        } else {
            (FlowKey { a: dst, b: src, a_port: dport, b_port: sport, protocol }, Side::B)
        }
    }

    /// The key of an inner packet's flow ([`Transport::flow_ports`]), and which side sent it.
    pub fn of(packet: &InnerPacket) -> (FlowKey, Side) {
        let (sport, dport) = packet.transport.flow_ports();
        FlowKey::of_packet(packet.src, sport, packet.dst, dport, packet.protocol)
    }

    /// Address and port of one side.
    pub fn endpoint(&self, side: Side) -> (IpAddr, u16) {
        match side {
            Side::A => (self.a, self.a_port),
            Side::B => (self.b, self.b_port),
        }
    }
}

/// How far a TCP connection got, as seen by us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    /// A SYN from the initiator, nothing back yet.
    SynSent,
    /// Traffic both ways (or picked up mid-flow).
    Established,
    /// One side sent FIN.
    Closing,
    /// Both sides sent FIN, or a RST was seen: the flow is over.
    Closed,
    /// Not TCP.
    NotTcp,
}

impl TcpState {
    /// The state after a packet with `flags`.
    pub fn advance(self, flags: u8) -> TcpState {
        if self == TcpState::NotTcp {
            return self;
        }
        if flags & tcp_flags::RST != 0 {
            return TcpState::Closed;
        }
        if flags & tcp_flags::FIN != 0 {
            // A retransmitted FIN of the same side also closes: harmless, the flow is then
            // only kept for the closed timeout and judged again if it goes on.
            return if self == TcpState::Closing { TcpState::Closed } else { TcpState::Closing };
        }
        match self {
            TcpState::SynSent if flags & tcp_flags::ACK != 0 => TcpState::Established,
            other => other,
        }
    }
}

/// One tracked flow.
#[derive(Debug, Clone)]
pub struct Flow {
    pub key: FlowKey,
    /// The side whose packet started the flow (policy's `from`).
    pub initiator: Side,
    /// Snapshot generation the decision was made under.
    pub generation: u64,
    pub decision: Decision,
    /// Name of the deciding rule, kept for flows the flow log records (their end record may be
    /// written after a reload renumbered the rules); `None` for the default or unlogged flows.
    pub rule_name: Option<std::sync::Arc<str>>,
    pub tcp: TcpState,
    /// Milliseconds on the worker's clock.
    pub started_ms: u64,
    pub last_seen_ms: u64,
    pub packets: u64,
    pub bytes: u64,
    /// The latest GWLB flow cookie, endpoint and attachment seen (for the flow log).
    pub cookie: u32,
    pub endpoint_id: Option<u64>,
    pub attachment_id: Option<u64>,
    /// The server name the flow showed (TLS SNI, HTTP Host, QUIC SNI), kept so that a policy
    /// or label change re-judges it with the name: a reference into the worker's
    /// [`NameTable`](crate::names::NameTable), which the table's owner releases when the flow
    /// leaves.
    pub server_name: Option<NameId>,
    /// While the flow waits for its name: its slot in the pipeline's hold pool.
    pub pending: Option<u32>,
}

/// Idle timeouts, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_ms: u64,
    pub other_ms: u64,
    /// After RST or both FINs: long enough for stragglers and retransmitted FINs.
    pub tcp_closed_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { tcp_ms: 350_000, other_ms: 120_000, tcp_closed_ms: 10_000 }
    }
}

impl Timeouts {
    fn of(&self, flow: &Flow) -> u64 {
        match flow.tcp {
            TcpState::NotTcp => self.other_ms,
            TcpState::Closed => self.tcp_closed_ms,
            _ => self.tcp_ms,
        }
    }
}

/// Why a flow left the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowEnd {
    Expired,
    Evicted,
    /// A new SYN reused the 5-tuple of a finished flow.
    Replaced,
}

/// A flow and the hash of its key (to find its index entry without hashing again).
#[derive(Debug)]
struct Slot {
    hash: u64,
    flow: Flow,
}

/// A bounded flow table owned by one worker.
#[derive(Debug)]
pub struct FlowTable {
    /// Grows up to `capacity` (reserved up front, so it never reallocates) and never shrinks.
    slots: Vec<Option<Slot>>,
    capacity: usize,
    free: Vec<u32>,
    /// Slot numbers by the hash of their flow's key.
    index: HashTable<u32>,
    hasher: ahash::RandomState,
    hand: usize,
    /// The slot of the flow looked up or inserted last: the datagrams of a GRO train are one
    /// flow, so all but the first find it without hashing.
    recent: Option<(FlowKey, u32)>,
    timeouts: Timeouts,
    evictions: u64,
}

/// Slots the clock hand checks per [`FlowTable::sweep`].
pub const SWEEP_BUDGET: usize = 64;

impl FlowTable {
    /// A table for at most `capacity` flows (at least 1). Its memory is reserved now (no
    /// reallocation on the packet path) and touched only as flows arrive.
    pub fn new(capacity: usize, timeouts: Timeouts) -> FlowTable {
        let capacity = capacity.max(1);
        FlowTable {
            slots: Vec::with_capacity(capacity),
            capacity,
            free: Vec::with_capacity(capacity),
            index: HashTable::with_capacity(capacity),
            hasher: ahash::RandomState::new(),
            hand: 0,
            recent: None,
            timeouts,
            evictions: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Flows evicted because the table was full, since it was created.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// The live flow for `key`; a flow idle past its timeout is removed and handed to
    /// `ended` instead.
    /// Inlined: it is most of an established packet's judging, and as a call of its own it
    /// cost each packet ~50 more instructions (docs/performance.md, hostile-traffic A/B).
    #[inline(always)]
    pub fn lookup(
        &mut self,
        key: &FlowKey,
        now_ms: u64,
        ended: &mut impl FnMut(Flow, FlowEnd),
    ) -> Option<&mut Flow> {
        let slot = match self.recent {
            Some((recent, slot)) if recent == *key => slot as usize,
            _ => {
                let slot = self.find(key)?;
                self.recent = Some((*key, slot as u32));
                slot
            }
        };
        let expired = self.slots[slot].as_ref().is_some_and(|s| {
            now_ms.saturating_sub(s.flow.last_seen_ms) > self.timeouts.of(&s.flow)
        });
        if expired {
            let flow = self.remove_slot(slot);
            ended(flow, FlowEnd::Expired);
            return None;
        }
        self.slots[slot].as_mut().map(|s| &mut s.flow)
    }

    /// Every tracked flow, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Flow> {
        self.slots.iter().flatten().map(|slot| &slot.flow)
    }

    /// The flow most recently found or inserted, while it is in the table.
    pub fn recent_mut(&mut self) -> Option<&mut Flow> {
        let (_, slot) = self.recent?;
        self.slots[slot as usize].as_mut().map(|s| &mut s.flow)
    }

    /// Removes the flow for `key`, if any.
    pub fn remove(&mut self, key: &FlowKey) -> Option<Flow> {
        let slot = self.find(key)?;
        Some(self.remove_slot(slot))
    }

    /// The slot of the flow for `key`.
    #[inline]
    fn find(&self, key: &FlowKey) -> Option<usize> {
        let hash = self.hasher.hash_one(key);
        let slots = &self.slots;
        let found = self.index.find(hash, |&slot| {
            slots[slot as usize].as_ref().is_some_and(|s| s.hash == hash && s.flow.key == *key)
        });
        found.map(|&slot| slot as usize)
    }

    /// Inserts a new flow (its key must not be present), evicting the flow under the clock
    /// hand when the table is full.
    pub fn insert(&mut self, flow: Flow, ended: &mut impl FnMut(Flow, FlowEnd)) -> &mut Flow {
        debug_assert!(self.find(&flow.key).is_none());
        let slot = match self.free.pop() {
            Some(slot) => slot as usize,
            None if self.slots.len() < self.capacity => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => {
                let victim = self.next_occupied();
                let evicted = self.remove_slot(victim);
                self.evictions += 1;
                ended(evicted, FlowEnd::Evicted);
                self.free.pop().expect("a slot was just freed") as usize
            }
        };
        let hash = self.hasher.hash_one(flow.key);
        self.recent = Some((flow.key, slot as u32));
        let slots = &self.slots;
        self.index.insert_unique(hash, slot as u32, |&s| slot_hash(slots, s));
        &mut self.slots[slot].insert(Slot { hash, flow }).flow
    }

    /// Moves the clock hand over up to [`SWEEP_BUDGET`] slots, removing idle flows.
    pub fn sweep(&mut self, now_ms: u64, ended: &mut impl FnMut(Flow, FlowEnd)) {
        if self.slots.is_empty() {
            return;
        }
        for _ in 0..SWEEP_BUDGET.min(self.slots.len()) {
            self.hand = (self.hand + 1) % self.slots.len();
            let expired = self.slots[self.hand].as_ref().is_some_and(|s| {
                now_ms.saturating_sub(s.flow.last_seen_ms) > self.timeouts.of(&s.flow)
            });
            if expired {
                let flow = self.remove_slot(self.hand);
                ended(flow, FlowEnd::Expired);
            }
        }
    }

    /// Removes every flow (shutdown), handing each to `ended` as expired.
    pub fn drain(&mut self, ended: &mut impl FnMut(Flow, FlowEnd)) {
        for slot in 0..self.slots.len() {
            if self.slots[slot].is_some() {
                let flow = self.remove_slot(slot);
                ended(flow, FlowEnd::Expired);
            }
        }
    }

    fn next_occupied(&mut self) -> usize {
        loop {
            self.hand = (self.hand + 1) % self.slots.len();
            if self.slots[self.hand].is_some() {
                return self.hand;
            }
        }
    }

    fn remove_slot(&mut self, slot: usize) -> Flow {
        let taken = self.slots[slot].take().expect("slot is occupied");
        if self.recent.is_some_and(|(_, recent)| recent as usize == slot) {
            self.recent = None;
        }
        if let Ok(entry) = self.index.find_entry(taken.hash, |&s| s as usize == slot) {
            entry.remove();
        }
        self.free.push(slot as u32);
        taken.flow
    }
}

/// The stored hash of a slot's flow (what the index grows by).
fn slot_hash(slots: &[Option<Slot>], slot: u32) -> u64 {
    slots[slot as usize].as_ref().map_or(0, |s| s.hash)
}

/// Whether a protocol's flows are tracked with ports (TCP, UDP) or echo identifiers (ICMP).
pub fn has_ports(protocol: u8) -> bool {
    matches!(protocol, ip_proto::TCP | ip_proto::UDP)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Action;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn flow(key: FlowKey, now: u64, tcp: TcpState) -> Flow {
        Flow {
            key,
            initiator: Side::A,
            generation: 1,
            decision: Decision { action: Action::Allow, rule: Some(0), log: false },
            rule_name: None,
            tcp,
            started_ms: now,
            last_seen_ms: now,
            packets: 1,
            bytes: 100,
            cookie: 1,
            endpoint_id: None,
            attachment_id: None,
            server_name: None,
            pending: None,
        }
    }

    fn key(n: u16) -> FlowKey {
        FlowKey::of_packet(ip("10.0.0.1"), 1000 + n, ip("10.0.0.2"), 80, ip_proto::TCP).0
    }

    #[test]
    fn both_directions_have_the_same_key() {
        let (k1, s1) = FlowKey::of_packet(ip("10.0.0.9"), 40000, ip("10.0.0.1"), 443, 6);
        let (k2, s2) = FlowKey::of_packet(ip("10.0.0.1"), 443, ip("10.0.0.9"), 40000, 6);
        assert_eq!(k1, k2);
        assert_eq!(s1, s2.other());
        assert_eq!(k1.endpoint(s1), (ip("10.0.0.9"), 40000));
    }

    #[test]
    fn flows_expire_after_their_idle_timeout() {
        let mut table = FlowTable::new(8, Timeouts::default());
        let mut ended = Vec::new();
        table.insert(flow(key(1), 0, TcpState::Established), &mut |f, e| ended.push((f.key, e)));
        table.insert(flow(key(2), 0, TcpState::NotTcp), &mut |f, e| ended.push((f.key, e)));
        assert!(table.lookup(&key(1), 350_000, &mut |f, e| ended.push((f.key, e))).is_some());
        // UDP-like flow: 120 s.
        assert!(table.lookup(&key(2), 120_001, &mut |f, e| ended.push((f.key, e))).is_none());
        assert_eq!(ended, [(key(2), FlowEnd::Expired)]);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn sweep_removes_idle_flows_without_lookups() {
        let mut table = FlowTable::new(4, Timeouts::default());
        for n in 0..4 {
            table.insert(flow(key(n), 0, TcpState::Closed), &mut |_, _| {});
        }
        let mut ended = 0;
        table.sweep(10_001, &mut |_, _| ended += 1);
        assert_eq!(ended, 4);
        assert!(table.is_empty());
    }

    #[test]
    fn full_table_evicts_and_counts() {
        let mut table = FlowTable::new(2, Timeouts::default());
        let mut ended = Vec::new();
        for n in 0..3 {
            table.insert(flow(key(n), n.into(), TcpState::Established), &mut |f, e| {
                ended.push((f.key, e))
            });
        }
        assert_eq!(table.len(), 2);
        assert_eq!(table.evictions(), 1);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].1, FlowEnd::Evicted);
        assert!(table.lookup(&key(2), 3, &mut |_, _| {}).is_some(), "the new flow is in");
    }

    #[test]
    fn the_recent_flow_shortcut_never_outlives_its_flow() {
        let mut table = FlowTable::new(1, Timeouts::default());
        let none = &mut |_: Flow, _: FlowEnd| {};
        table.insert(flow(key(1), 0, TcpState::Established), none);
        assert!(table.lookup(&key(1), 1, none).is_some(), "found through the shortcut");
        // Evicted by a new flow that takes the very same slot.
        table.insert(flow(key(2), 2, TcpState::Established), none);
        assert!(table.lookup(&key(1), 3, none).is_none());
        assert_eq!(table.lookup(&key(2), 3, none).map(|f| f.key), Some(key(2)));
        assert!(table.remove(&key(2)).is_some());
        assert!(table.lookup(&key(2), 4, none).is_none(), "removed, not found again");
        assert!(table.is_empty());
    }

    #[test]
    fn a_flow_fits_three_cache_lines() {
        // 176 bytes; 424 when the server name was kept inline. A million flows is this many
        // megabytes of table (docs/performance.md).
        assert!(std::mem::size_of::<Flow>() <= 192, "{}", std::mem::size_of::<Flow>());
    }

    #[test]
    fn tcp_state_follows_flags() {
        use tcp_flags::*;
        let s = TcpState::SynSent.advance(SYN | ACK);
        assert_eq!(s, TcpState::Established);
        let s = s.advance(FIN | ACK);
        assert_eq!(s, TcpState::Closing);
        assert_eq!(s.advance(FIN | ACK), TcpState::Closed);
        assert_eq!(TcpState::Established.advance(RST), TcpState::Closed);
        assert_eq!(TcpState::NotTcp.advance(RST), TcpState::NotTcp);
    }
}
