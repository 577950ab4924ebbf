//! The fragment table: what a first fragment was judged, so that the later fragments of its
//! datagram (which carry no ports) follow it.
//!
//! Must not depend on: the flow table, sockets.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::packet::InnerPacket;
use crate::policy::Decision;

/// Non-first fragments remembered per worker (their verdict follows the first fragment).
const MAX_FRAGMENTS: usize = 4096;
/// How long a fragment series is remembered.
const FRAGMENT_TIMEOUT_MS: u64 = 30_000;

/// (source, destination, protocol, identification): a datagram's fragments share it.
type FragmentKey = (IpAddr, IpAddr, u8, u32);

/// First fragments' decisions, each with its expiry and the snapshot generation that made it.
#[derive(Debug)]
pub(super) struct FragmentTable {
    entries: HashMap<FragmentKey, (Decision, u64, u64), ahash::RandomState>,
}

impl FragmentTable {
    pub(super) fn new() -> FragmentTable {
        FragmentTable {
            entries: HashMap::with_capacity_and_hasher(MAX_FRAGMENTS, ahash::RandomState::new()),
        }
    }

    /// Remembers the decision on the first fragment `inner` of datagram `id`.
    pub(super) fn remember(
        &mut self,
        inner: &InnerPacket,
        id: u32,
        decision: Decision,
        generation: u64,
        now: u64,
    ) {
        if self.entries.len() >= MAX_FRAGMENTS {
            self.entries.retain(|_, (_, expires, _)| *expires > now);
        }
        if self.entries.len() < MAX_FRAGMENTS {
            let key = (inner.src, inner.dst, inner.protocol, id);
            self.entries.insert(key, (decision, now + FRAGMENT_TIMEOUT_MS, generation));
        }
    }

    /// The decision a later fragment `inner` follows, if its first fragment was judged under
    /// snapshot `generation` and has not expired.
    pub(super) fn lookup(
        &self,
        inner: &InnerPacket,
        generation: u64,
        now: u64,
    ) -> Option<Decision> {
        let id = inner.fragment.map_or(0, |f| f.id);
        let key = (inner.src, inner.dst, inner.protocol, id);
        match self.entries.get(&key) {
            Some((decision, expires, made_by)) if *expires > now && *made_by == generation => {
                Some(*decision)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Outcome;
    use super::super::testing::*;
    use crate::policy::Action;

    #[test]
    fn later_fragments_follow_their_first_fragment() {
        let (mut p, _) = pipeline();
        let fragment = |src: [u8; 4], offset: u16, more: bool, data: &[u8]| {
            let mut h = etherparse::Ipv4Header::new(
                data.len() as u16,
                64,
                etherparse::IpNumber::UDP,
                src,
                DB,
            )
            .unwrap();
            h.identification = 99;
            h.more_fragments = more;
            h.fragment_offset = etherparse::IpFragOffset::try_new(offset).unwrap();
            geneve([&h.to_bytes()[..], data].concat())
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
}
