//! Group membership: which groups of a compiled policy select an identity, found without
//! evaluating every group's selectors against every identity.
//!
//! Must not depend on: the label table, snapshots, the data plane.

use rustc_hash::FxHashMap;

use super::CompiledPolicy;
use super::selector::Operator;
use crate::labels::{EndpointKind, Identity};

/// Which groups could select an identity of a given kind: a group part whose selector has an
/// exact-match requirement (`k=v`, `k==v`, `k in (...)`) can only select identities carrying
/// one of those labels, so it is filed under them; the other parts are checked for every
/// identity of their kind. Turns groups x identities selector evaluations into a few hash
/// probes per identity. Built once per policy and kept by the snapshots of that policy.
#[derive(Debug)]
pub struct MembershipIndex {
    /// By kind, then label key, then value.
    anchored: [FxHashMap<String, FxHashMap<String, Vec<usize>>>; 3],
    unanchored: [Vec<usize>; 3],
}

impl MembershipIndex {
    pub fn new(policy: &CompiledPolicy) -> MembershipIndex {
        let mut index =
            MembershipIndex { anchored: Default::default(), unanchored: Default::default() };
        for (g, group) in policy.groups.iter().enumerate() {
            let parts = [
                (EndpointKind::Pod, group.pods.as_ref().map(|p| &p.selector)),
                (EndpointKind::Node, group.nodes.as_ref().map(|m| &m.selector)),
                (EndpointKind::External, group.external.as_ref().map(|m| &m.selector)),
            ];
            for (kind, selector) in parts {
                let Some(selector) = selector else { continue };
                let anchor = selector.requirements().iter().find(|r| {
                    matches!(r.operator, Operator::Equals | Operator::DoubleEquals | Operator::In)
                });
                match anchor {
                    Some(r) => {
                        let by_value =
                            index.anchored[kind as usize].entry(r.key.clone()).or_default();
                        for value in &r.values {
                            by_value.entry(value.clone()).or_default().push(g);
                        }
                    }
                    None => index.unanchored[kind as usize].push(g),
                }
            }
        }
        index
    }

    /// Sets the bits of the groups that select `identity` in `row`.
    pub fn evaluate(&self, policy: &CompiledPolicy, identity: &Identity, row: &mut [u64]) {
        self.for_each_candidate(identity, |g| {
            if row[g / 64] & (1 << (g % 64)) == 0 && policy.groups[g].selects(identity) {
                row[g / 64] |= 1 << (g % 64);
            }
        });
    }

    /// Calls `f` with every group that could select `identity` (possibly more than once).
    fn for_each_candidate(&self, identity: &Identity, mut f: impl FnMut(usize)) {
        let kind = identity.kind as usize;
        self.unanchored[kind].iter().for_each(|&g| f(g));
        let anchored = &self.anchored[kind];
        if anchored.is_empty() {
            return;
        }
        for (key, value) in &identity.labels {
            if let Some(groups) = anchored.get(key.as_str()).and_then(|v| v.get(value.as_str())) {
                groups.iter().for_each(|&g| f(g));
            }
        }
    }
}
