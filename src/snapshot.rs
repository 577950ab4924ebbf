//! The one bridge between the planes: an immutable [`Snapshot`] of label table + compiled
//! policy + the group membership of every identity, published whole through arc-swap.
//! Must not depend on: sockets, async, flow state, the data plane.
//!
//! The control plane builds a new snapshot off to the side whenever labels or policy change
//! (evaluating each group's selectors against each new or changed identity once, sharing the
//! rest with the snapshot before) and swaps it in; a worker
//! loads it once per batch, so a packet sees the old snapshot or the new one, never a mix.
//! Deciding a packet then costs two address lookups and a few bit operations (with a server
//! name, one hash probe per label more).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

use crate::labels::shared::Chunked;
use crate::labels::{IdentityId, LabelTable};
use crate::policy::compile::{ANY_GROUP, GROUP_WORDS};
use crate::policy::membership::MembershipIndex;
use crate::policy::{CompiledPolicy, Decision, GroupBits, Judgement, NameState};

/// Packets per rule, one row per data-plane worker (each row has a single writer, so
/// counting is a relaxed load and store on a cache line no other worker touches). The last
/// slot counts the default action. Kept across snapshots while the policy stays the same.
#[derive(Debug)]
pub struct RuleHits {
    rows: Box<[Box<[AtomicU64]>]>,
}

impl RuleHits {
    pub fn new(workers: usize, rules: usize) -> RuleHits {
        let rows =
            (0..workers.max(1)).map(|_| (0..=rules).map(|_| AtomicU64::new(0)).collect()).collect();
        RuleHits { rows }
    }

    /// Counts one packet for `rule` (`None` = default action) on `worker`.
    #[inline]
    pub fn add(&self, worker: usize, rule: Option<usize>) {
        self.add_many(worker, rule, 1);
    }

    /// Counts `packets` packets for `rule` on `worker`.
    #[inline]
    pub fn add_many(&self, worker: usize, rule: Option<usize>, packets: u64) {
        let Some(row) = self.rows.get(worker) else { return };
        let slot = &row[rule.unwrap_or(row.len() - 1).min(row.len() - 1)];
        slot.store(slot.load(Ordering::Relaxed) + packets, Ordering::Relaxed);
    }

    /// What `worker` counted for `rule` (`None` = default action).
    pub fn count(&self, worker: usize, rule: Option<usize>) -> u64 {
        self.rows.get(worker).map_or(0, |row| {
            row[rule.unwrap_or(row.len() - 1).min(row.len() - 1)].load(Ordering::Relaxed)
        })
    }

    /// Total for `rule` (`None` = default action) over all workers.
    pub fn total(&self, rule: Option<usize>) -> u64 {
        (0..self.rows.len()).map(|worker| self.count(worker, rule)).sum()
    }
}

#[derive(Debug)]
pub struct Snapshot {
    /// Increases with every published snapshot; flows judged under an older one are judged
    /// again on their next packet.
    pub generation: u64,
    pub labels: Arc<LabelTable>,
    pub policy: Arc<CompiledPolicy>,
    /// Per-rule packet counters of `policy`.
    pub rule_hits: Arc<RuleHits>,
    /// Per identity id, `group_words` bits: which groups' label parts select the identity.
    /// Shared in chunks with the snapshot before, when only labels changed.
    membership: Chunked<u64>,
    /// How `membership` is evaluated under `policy`.
    index: Arc<MembershipIndex>,
}

impl Snapshot {
    /// Evaluates every group against every identity, through [`MembershipIndex`] so that an
    /// identity is only checked against the groups that could select it.
    pub fn new(
        generation: u64,
        labels: Arc<LabelTable>,
        policy: Arc<CompiledPolicy>,
        rule_hits: Arc<RuleHits>,
    ) -> Snapshot {
        let mut membership = Chunked::new(policy.group_words, 0);
        membership.grow_to(labels.identity_id_bound());
        let index = Arc::new(MembershipIndex::new(&policy));
        for (id, identity) in labels.identities() {
            index.evaluate(&policy, identity, membership.row_mut(id.0 as usize));
        }
        Snapshot { generation, labels, policy, rule_hits, membership, index }
    }

    /// The snapshot after this one: with the same policy, only the `changed` identities
    /// (those [`crate::labels::LabelBuilder::publish`] names) are evaluated again and the
    /// rest of the membership is shared; with another policy, everything is.
    pub fn next(
        &self,
        generation: u64,
        labels: Arc<LabelTable>,
        policy: Arc<CompiledPolicy>,
        rule_hits: Arc<RuleHits>,
        changed: &[IdentityId],
    ) -> Snapshot {
        if !Arc::ptr_eq(&policy, &self.policy) {
            return Snapshot::new(generation, labels, policy, rule_hits);
        }
        let mut membership = self.membership.clone();
        membership.grow_to(labels.identity_id_bound());
        for &id in changed {
            let Some(identity) = labels.get_identity(id) else { continue }; // gone again
            let row = membership.row_mut(id.0 as usize);
            row.fill(0);
            self.index.evaluate(&policy, identity, row);
        }
        let index = Arc::clone(&self.index);
        Snapshot { generation, labels, policy, rule_hits, membership, index }
    }

    /// The groups an address belongs to: its identity's groups, plus CIDR groups that contain
    /// it, minus groups whose `except` contains it; always `any`.
    #[inline]
    pub fn groups_of(&self, ip: IpAddr) -> GroupBits {
        self.groups_with_identity(ip, self.labels.identity_of(ip))
    }

    /// As [`Snapshot::groups_of`], with the identity already looked up.
    #[inline]
    pub fn groups_with_identity(&self, ip: IpAddr, identity: Option<IdentityId>) -> GroupBits {
        let words = self.policy.group_words;
        let mut bits = [0u64; GROUP_WORDS];
        if let Some(id) = identity {
            bits[..words].copy_from_slice(self.membership.row(id.0 as usize));
        }
        if !self.policy.cidrs.is_empty() {
            let mut exclude = [0u64; GROUP_WORDS];
            self.policy.cidrs.for_each_match(ip, |cidr| {
                for w in 0..words {
                    bits[w] |= cidr.include[w];
                    exclude[w] |= cidr.exclude[w];
                }
            });
            for w in 0..words {
                bits[w] &= !exclude[w];
            }
        }
        bits[ANY_GROUP / 64] |= 1 << (ANY_GROUP % 64);
        bits
    }

    /// First matching rule for a flow from `src` to `dst` (destination `port`, `None` for
    /// protocols without ports), else the default action.
    #[inline]
    pub fn decide(&self, src: IpAddr, dst: IpAddr, protocol: u8, port: Option<u16>) -> Decision {
        let src_groups = self.groups_of(src);
        let dst_groups = self.groups_of(dst);
        self.decide_groups(&src_groups, &dst_groups, protocol, port)
    }

    #[inline]
    pub fn decide_groups(
        &self,
        src: &GroupBits,
        dst: &GroupBits,
        protocol: u8,
        port: Option<u16>,
    ) -> Decision {
        self.policy.decision(self.policy.first_match(src, dst, protocol, port))
    }

    /// As [`Snapshot::decide`], with what is known of the flow's server name: a decision, or
    /// [`Judgement::NeedsName`] while a rule that decides by the name could still decide (see
    /// [`CompiledPolicy::judge`]). Without `domains` groups it costs what `decide` costs.
    #[inline]
    pub fn judge(
        &self,
        src: IpAddr,
        dst: IpAddr,
        protocol: u8,
        port: Option<u16>,
        name: NameState<'_>,
    ) -> Judgement {
        let src_groups = self.groups_of(src);
        let dst_groups = self.groups_of(dst);
        self.policy.judge(&src_groups, &dst_groups, protocol, port, name)
    }

    /// Names of the groups in a bitset, for `explain`.
    pub fn group_names(&self, bits: &GroupBits) -> Vec<&str> {
        let policy = &self.policy;
        (0..policy.groups.len())
            .filter(|&g| bits[g / 64] & (1 << (g % 64)) != 0)
            .map(|g| policy.groups[g].name.as_str())
            .collect()
    }

    /// The rule name, or `default` for the default action.
    pub fn rule_name(&self, rule: Option<usize>) -> &str {
        match rule {
            None => "default",
            Some(r) => self.policy.rules.get(r).map_or("unknown", |rule| &rule.name),
        }
    }
}

/// Where the current snapshot is published.
pub type SnapshotCell = ArcSwap<Snapshot>;
