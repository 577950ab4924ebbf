//! The fragment table: the ports of each fragmented datagram's first fragment, and its TCP
//! SYN and ACK flags, so that its later fragments (which carry none) are judged as packets of
//! the same flow, as the first fragment was (a SYN's later fragments as a SYN: never taken
//! for a reply), by the flow's decision, re-decided like any flow's when policy or labels
//! change.
//!
//! Bounded and allocated up front: a slab of entries, an index of slot numbers, a clock hand
//! that finds a slot to reuse within a few steps (an expired entry, else the one under the
//! hand), so no packet ever scans the table. No source address may hold more than a share of
//! it, so that one sender's flood of first fragments cannot push out everyone else's.
//!
//! Must not depend on: the flow table, policy, sockets.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::packet::{InnerPacket, tcp_flags};

/// Fragmented datagrams remembered per worker.
pub(super) const MAX_FRAGMENTS: usize = 4096;
/// Most entries one source address may hold.
pub(super) const SOURCE_SHARE: u16 = (MAX_FRAGMENTS / 16) as u16;
/// How long a datagram's fragments are waited for (Linux's `ipfrag_time` is 30 s).
const FRAGMENT_TIMEOUT_MS: u64 = 30_000;
/// Slots the clock hand looks at for an expired entry before it takes the one it is on.
const HAND_STEPS: usize = 8;

/// (source, destination, protocol, identification): a datagram's fragments share it.
type FragmentKey = (IpAddr, IpAddr, u8, u32);

/// What a later fragment is judged by: its first fragment's flow ports
/// ([`crate::packet::Transport::flow_ports`]) and the TCP flags that decide whose connection
/// a segment is (SYN and ACK; 0 for anything but TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct First {
    pub(super) ports: (u16, u16),
    pub(super) flags: u8,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: FragmentKey,
    first: First,
    expires: u64,
}

#[derive(Debug)]
pub(super) struct FragmentTable {
    slots: Vec<Option<Entry>>,
    index: HashMap<FragmentKey, u32, ahash::RandomState>,
    /// Entries per source address.
    per_source: HashMap<IpAddr, u16, ahash::RandomState>,
    /// Slots never used yet (taken from the end).
    unused: usize,
    hand: usize,
    /// First fragments not remembered because their source held its share.
    refused: u64,
}

impl FragmentTable {
    pub(super) fn new() -> FragmentTable {
        let hasher = ahash::RandomState::new;
        FragmentTable {
            slots: vec![None; MAX_FRAGMENTS],
            index: HashMap::with_capacity_and_hasher(MAX_FRAGMENTS, hasher()),
            per_source: HashMap::with_capacity_and_hasher(MAX_FRAGMENTS, hasher()),
            unused: MAX_FRAGMENTS,
            hand: 0,
            refused: 0,
        }
    }

    /// Remembers the ports and flags of the first fragment `inner` of datagram `id`.
    pub(super) fn remember(&mut self, inner: &InnerPacket, id: u32, now: u64) {
        let key = (inner.src, inner.dst, inner.protocol, id);
        let first = First {
            ports: inner.transport.flow_ports(),
            flags: inner.transport.tcp_flags() & (tcp_flags::SYN | tcp_flags::ACK),
        };
        let entry = Entry { key, first, expires: now + FRAGMENT_TIMEOUT_MS };
        if let Some(&slot) = self.index.get(&key) {
            self.slots[slot as usize] = Some(entry);
            return;
        }
        if self.per_source.get(&inner.src).is_some_and(|&n| n >= SOURCE_SHARE) {
            self.refused += 1;
            return;
        }
        let slot = self.free_slot(now);
        self.slots[slot] = Some(entry);
        self.index.insert(key, slot as u32);
        *self.per_source.entry(inner.src).or_insert(0) += 1;
    }

    /// What the first fragment of the later fragment `inner` was judged by, if its datagram's
    /// first fragment was seen and has not expired.
    pub(super) fn first_of(&self, inner: &InnerPacket, now: u64) -> Option<First> {
        let id = inner.fragment.map_or(0, |f| f.id);
        let slot = *self.index.get(&(inner.src, inner.dst, inner.protocol, id))?;
        self.slots[slot as usize].filter(|e| e.expires > now).map(|e| e.first)
    }

    /// First fragments not remembered because their source held its share (a running total).
    pub(super) fn refused(&self) -> u64 {
        self.refused
    }

    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    /// A slot to write: one never used, else the first expired one within [`HAND_STEPS`] of
    /// the clock hand, else the one the hand ends on (the entries it passes are the oldest
    /// written, in the order slots were taken).
    fn free_slot(&mut self, now: u64) -> usize {
        if self.unused > 0 {
            self.unused -= 1;
            return self.unused;
        }
        for _ in 0..HAND_STEPS {
            self.hand = (self.hand + 1) % MAX_FRAGMENTS;
            if self.slots[self.hand].is_none_or(|e| e.expires <= now) {
                break;
            }
        }
        let slot = self.hand;
        if let Some(old) = self.slots[slot].take() {
            self.index.remove(&old.key);
            if let Some(n) = self.per_source.get_mut(&old.key.0) {
                *n -= 1;
                if *n == 0 {
                    self.per_source.remove(&old.key.0);
                }
            }
        }
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::super::Outcome;
    use super::super::testing::*;
    use super::{MAX_FRAGMENTS, SOURCE_SHARE};
    use crate::policy::Action;

    #[test]
    fn later_fragments_follow_their_first_fragment() {
        let (mut p, _) = pipeline();
        let fragment = |src: [u8; 4], offset: u16, more: bool, data: &[u8]| {
            ipv4_fragment((src, DB), etherparse::IpNumber::UDP, 99, offset, more, data)
        };
        // UDP to db:53 from a client: allowed; from a stranger: rejected (ICMP).
        let first = [&[0x0f, 0xa0, 0x00, 0x35, 0x00, 0x30, 0, 0][..], &[1u8; 16]].concat();
        assert_eq!(
            run(&mut p, &fragment(CLIENT, 0, true, &first)),
            Outcome::SendBack(Action::Allow)
        );
        assert_eq!(
            run(&mut p, &fragment(CLIENT, 3, false, &[2u8; 24])),
            Outcome::SendBack(Action::Allow)
        );
        assert!(matches!(
            run(&mut p, &fragment(STRANGER, 0, true, &first)),
            Outcome::Reject { .. }
        ));
        assert_eq!(
            run(&mut p, &fragment(STRANGER, 3, false, &[2u8; 24])),
            Outcome::Withhold(Action::Reject),
            "no ICMP for a non-first fragment"
        );
        // A later fragment whose first was never seen: only port-less rules can match.
        assert!(matches!(
            run(&mut p, &fragment([10, 0, 1, 6], 3, false, &[2u8; 24])),
            Outcome::Withhold(Action::Reject)
        ));
    }

    /// A UDP fragment from `src` to db, datagram `id`, at `offset` (8-byte units).
    fn udp_fragment(src: [u8; 4], id: u16, offset: u16, more: bool, data: &[u8]) -> Vec<u8> {
        ipv4_fragment((src, DB), etherparse::IpNumber::UDP, id, offset, more, data)
    }

    /// The first 24 bytes of a UDP datagram to port 53 (allowed from clients).
    fn first_to_dns() -> Vec<u8> {
        [&[0x0f, 0xa0, 0x00, 0x35, 0x00, 0x30, 0, 0][..], &[1u8; 16]].concat()
    }

    #[test]
    fn a_new_snapshot_re_decides_later_fragments_instead_of_dropping_them() {
        let (mut p, cell) = pipeline();
        let allow = Outcome::SendBack(Action::Allow);
        assert_eq!(run(&mut p, &udp_fragment(CLIENT, 7, 0, true, &first_to_dns())), allow);
        // Label churn: a new generation, the same verdict for this flow.
        cell.store(snapshot(2, POLICY));
        p.begin_batch(2);
        assert_eq!(run(&mut p, &udp_fragment(CLIENT, 7, 3, true, &[2u8; 24])), allow);
        // A policy that refuses it: its later fragments follow the flow's new verdict.
        cell.store(snapshot(3, &POLICY.replace("udp/53", "udp/54")));
        p.begin_batch(3);
        assert!(!matches!(
            run(&mut p, &udp_fragment(CLIENT, 7, 6, false, &[3u8; 8])),
            Outcome::SendBack(_)
        ));
        // Later fragments are packets of the flow.
        assert_eq!(p.flows().map(|f| f.packets).sum::<u64>(), 3);
    }

    /// A TCP fragment from db:3306 to the client's port 4000, datagram `id`, at `offset`.
    fn tcp_fragment_from_db(id: u16, offset: u16, more: bool, data: &[u8]) -> Vec<u8> {
        ipv4_fragment((DB, CLIENT), etherparse::IpNumber::TCP, id, offset, more, data)
    }

    /// The first 24 bytes (whole header and 4 of data) of a segment db:3306 -> client:4000.
    fn segment_from_db(flags: u8) -> Vec<u8> {
        let mut segment = Vec::new();
        let step = etherparse::PacketBuilder::ipv4(DB, CLIENT, 64).tcp(3306, 4000, 7, 1000);
        let step = if flags & SYN != 0 { step.syn() } else { step };
        let step = if flags & ACK != 0 { step.ack(11) } else { step };
        step.write(&mut segment, &[9u8; 40]).unwrap();
        segment[20..44].to_vec()
    }

    #[test]
    fn the_rest_of_a_syn_from_the_responder_is_refused_as_its_first_fragment_was() {
        // Found by the fuzz target's generator: the later fragment of such a SYN was judged
        // as a packet of the flow it could not turn around, and passed.
        let (mut p, _) = pipeline();
        let allow = Outcome::SendBack(Action::Allow);
        assert_eq!(run(&mut p, &tcp(CLIENT, DB, 4000, 3306, SYN)), allow);
        // db connecting to the client's port on the flow's 5-tuple: its own connection.
        let deny = Outcome::Withhold(Action::Deny);
        assert_eq!(run(&mut p, &tcp_fragment_from_db(1, 0, true, &segment_from_db(SYN))), deny);
        assert_eq!(run(&mut p, &tcp_fragment_from_db(1, 3, false, &[2u8; 16])), deny);
        // The flow is untouched, and the rest of db's answer is part of it.
        assert_eq!(
            run(&mut p, &tcp_fragment_from_db(2, 0, true, &segment_from_db(SYN_ACK))),
            allow
        );
        assert_eq!(run(&mut p, &tcp_fragment_from_db(2, 3, false, &[2u8; 16])), allow);
        assert_eq!(run(&mut p, &tcp(CLIENT, DB, 4000, 3306, ACK)), allow);
        assert_eq!(p.flow_counts().created, 1);
    }

    #[test]
    fn the_rest_of_a_packet_a_new_policy_refuses_is_refused_with_it() {
        // Found by the fuzz target: db's answer on a client's flow that a reload refuses is
        // judged as a packet of the flow (refused); its later fragment came to a flow now
        // refused, from its responder, and was judged as db's own connection, which passed.
        let (mut p, cell) = pipeline();
        let allow = Outcome::SendBack(Action::Allow);
        assert_eq!(run(&mut p, &udp(CLIENT, DB, 4000, 53)), allow);
        let tightened = POLICY.replace("tcp/3306, udp/53", "tcp/3306")
            + "  - {name: db-out, from: [db], to: [clients], action: allow}\n";
        cell.store(snapshot(2, &tightened));
        p.begin_batch(2);
        let fragment = |offset: u16, more: bool, data: &[u8]| {
            ipv4_fragment((DB, CLIENT), etherparse::IpNumber::UDP, 5, offset, more, data)
        };
        let answer = [&[0x00, 0x35, 0x0f, 0xa0, 0x00, 0x30, 0, 0][..], &[1u8; 16]].concat();
        let first = run(&mut p, &fragment(0, true, &answer));
        assert!(matches!(first, Outcome::Reject { .. }), "{first:?}");
        assert_eq!(run(&mut p, &fragment(3, false, &[2u8; 24])), Outcome::Withhold(Action::Reject));
    }

    #[test]
    fn one_source_cannot_take_more_than_its_share_of_the_table() {
        let (mut p, _) = pipeline();
        let share = u32::from(SOURCE_SHARE);
        for id in 0..share + 10 {
            run(&mut p, &udp_fragment(CLIENT, id as u16, 0, true, &first_to_dns()));
        }
        assert_eq!(p.flow_counts().fragments, u64::from(share));
        assert_eq!(p.flow_counts().fragments_refused, 10);
        // Another client's datagram is still remembered and followed.
        let other = [10, 0, 1, 77];
        let allow = Outcome::SendBack(Action::Allow);
        assert_eq!(run(&mut p, &udp_fragment(other, 1, 0, true, &first_to_dns())), allow);
        assert_eq!(run(&mut p, &udp_fragment(other, 1, 3, false, &[2u8; 24])), allow);
    }

    #[test]
    fn a_full_table_reuses_slots_by_clock_without_growing() {
        let (mut p, _) = pipeline();
        let sources = (MAX_FRAGMENTS / usize::from(SOURCE_SHARE)) as u8 + 2;
        for source in 0..sources {
            for id in 0..SOURCE_SHARE {
                run(&mut p, &udp_fragment([10, 0, 1, source], id, 0, true, &first_to_dns()));
            }
        }
        assert_eq!(p.flow_counts().fragments, MAX_FRAGMENTS as u64);
        assert_eq!(p.flow_counts().fragments_refused, 0);
        // The newest datagrams are remembered: their later fragments pass.
        let last = [10, 0, 1, sources - 1];
        let allow = Outcome::SendBack(Action::Allow);
        assert_eq!(run(&mut p, &udp_fragment(last, SOURCE_SHARE - 1, 3, false, &[2u8; 24])), allow);
    }
}
