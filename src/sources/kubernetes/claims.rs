//! Who owns an address: what each pod and node claims (its compact entry; a pod that has
//! finished, runs in the host network or has no address yet claims nothing), who claims each
//! address, and which claim wins. Must not depend on the store, which keeps the entries and
//! the claims and turns owners into records, nor on the watch loop.
//!
//! An address may be claimed by several pods at once (a new pod may be seen before the delete
//! of the old one that had its address, or an old pod may stay terminating for long on a node
//! that stopped answering) and by nodes. Among pods, one that is not terminating
//! (`deletionTimestamp` unset) wins over one that is, then the newest by creation time, then
//! the greater UID, whatever the order of events: so the delete of an old pod never removes
//! the newer owner, and a pod stuck terminating hands its address to the live pod at once.
//! Any pod beats a node; among nodes, the least name wins. A claim that joins an address
//! another claimant already holds is a conflict, counted by the store.

use std::net::IpAddr;
use std::num::NonZeroU64;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::entries::Entries;
use super::objects::{NodeView, PodIps, PodKey, PodView};
use crate::labels::{Labels, Loss, created_seconds};

/// A pod that owns at least one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PodEntry {
    pub(super) namespace: Arc<str>,
    pub(super) name: Arc<str>,
    pub(super) labels: Arc<Labels>,
    pub(super) ips: PodIps,
    /// Seconds since the Unix epoch ([`created_seconds`]: the records' form, and with
    /// `terminating` it fits where an `i64` alone would).
    pub(super) created: u32,
    /// `deletionTimestamp` is set.
    pub(super) terminating: bool,
}

impl PodEntry {
    /// How the pod ranks for an address: the greatest wins.
    fn rank<'a>(&self, key: &'a PodKey) -> (bool, u32, &'a PodKey) {
        (!self.terminating, self.created, key)
    }
}

/// A node with its labels and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NodeEntry {
    pub(super) labels: Arc<Labels>,
    pub(super) ips: Box<[IpAddr]>,
}

/// The entry of a pod, or `None` when it owns no address: finished (Succeeded, Failed), in
/// the host network (the address is the node's), or not given an address yet.
pub(super) fn pod_entry(pod: &PodView) -> Option<PodEntry> {
    if pod.finished || pod.host_network || pod.ips.is_empty() {
        return None;
    }
    Some(PodEntry {
        namespace: Arc::clone(&pod.namespace),
        name: Arc::clone(&pod.name),
        labels: Arc::clone(&pod.labels),
        ips: pod.ips,
        created: created_seconds(pod.created),
        terminating: pod.terminating,
    })
}

/// The entry of a node: its labels and addresses (a node claims them whatever its state).
pub(super) fn node_entry(node: &NodeView) -> NodeEntry {
    NodeEntry { labels: Arc::clone(&node.labels), ips: node.ips.clone().into_boxed_slice() }
}

/// A claimant of an address: a pod, by its key, or a node, by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Claimant {
    Pod(PodKey),
    Node(Arc<str>),
}

/// Who claims one address. Nearly every address has one claimant, held inline (a list per
/// address would be a million small allocations at 1M pods).
#[derive(Debug, Default)]
pub(super) enum Claimants {
    #[default]
    None,
    One(Claimant),
    Many(Vec<Claimant>),
}

impl Claimants {
    pub(super) fn as_slice(&self) -> &[Claimant] {
        match self {
            Claimants::None => &[],
            Claimants::One(claimant) => std::slice::from_ref(claimant),
            Claimants::Many(list) => list,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    fn push(&mut self, claimant: Claimant) {
        *self = match std::mem::take(self) {
            Claimants::None => Claimants::One(claimant),
            Claimants::One(first) => Claimants::Many(vec![first, claimant]),
            Claimants::Many(mut list) => {
                list.push(claimant);
                Claimants::Many(list)
            }
        };
    }

    fn remove(&mut self, claimant: &Claimant) {
        match self {
            Claimants::One(only) if only == claimant => *self = Claimants::None,
            Claimants::Many(list) => {
                if let Some(at) = list.iter().position(|c| c == claimant) {
                    list.swap_remove(at);
                }
                if list.len() == 1 {
                    *self = Claimants::One(list.remove(0));
                }
            }
            _ => {}
        }
    }
}

/// One address of the cluster: who claims it, and what was last reported of it.
#[derive(Debug, Default)]
pub(super) struct Address {
    pub(super) claimants: Claimants,
    /// A fingerprint of the record last reported for it (`None`: nothing, or its removal).
    pub(super) reported: Option<NonZeroU64>,
    /// Queued to be looked at by the next report.
    pub(super) dirty: bool,
}

impl Address {
    /// Nothing claims it and nothing of it stands reported: it can be forgotten.
    pub(super) fn is_unused(&self) -> bool {
        self.claimants.is_empty() && self.reported.is_none()
    }
}

/// The addresses of a cluster, and those that may have changed since the last report.
#[derive(Debug, Default)]
pub(super) struct Addresses {
    pub(super) map: FxHashMap<IpAddr, Address>,
    pub(super) dirty: Vec<IpAddr>,
}

impl Addresses {
    /// Room for `more` addresses than there are.
    pub(super) fn reserve(&mut self, more: usize) {
        self.map.reserve(more);
        self.dirty.reserve(more);
    }

    fn touch(&mut self, ip: IpAddr) -> &mut Address {
        let address = self.map.entry(ip).or_default();
        if !address.dirty {
            address.dirty = true;
            self.dirty.push(ip);
        }
        address
    }
}

/// Moves a claimant's claims from the addresses `old` to `new` (either may be empty: a
/// claimant that comes or goes). Every address of either needs reporting (the claimant's
/// entry changed); only the addresses it leaves or joins change their claimants, so an update
/// that keeps a pod's addresses is no new claim. Each address the claimant joins while another
/// claimant holds it is pushed to `contested`.
pub(super) fn claim(
    addresses: &mut Addresses,
    contested: &mut Vec<IpAddr>,
    old: &[IpAddr],
    new: &[IpAddr],
    claimant: &Claimant,
) {
    for ip in old {
        let address = addresses.touch(*ip);
        if !new.contains(ip) {
            address.claimants.remove(claimant);
        }
    }
    for ip in new {
        let address = addresses.touch(*ip);
        if !old.contains(ip) {
            if !address.claimants.is_empty() {
                contested.push(*ip);
            }
            address.claimants.push(claimant.clone());
        }
    }
}

/// The claim that wins an address.
#[derive(Debug, Clone, Copy)]
pub(super) enum Owner<'a> {
    Pod(&'a PodEntry),
    /// A node, with its name.
    Node(&'a Arc<str>, &'a NodeEntry),
}

impl Claimants {
    /// The claimants still in `pods` and `nodes`, best first: pods that are not terminating,
    /// then by creation time, then by UID, the greatest first; then nodes by name.
    fn ranked<'a>(
        &'a self,
        pods: &'a Entries<PodKey, PodEntry>,
        nodes: &'a Entries<Arc<str>, NodeEntry>,
    ) -> Vec<Owner<'a>> {
        let mut live_pods: Vec<(&PodKey, &PodEntry)> = Vec::new();
        let mut live_nodes: Vec<(&Arc<str>, &NodeEntry)> = Vec::new();
        for claimant in self.as_slice() {
            match claimant {
                Claimant::Pod(key) => live_pods.extend(pods.get(key).map(|pod| (key, pod))),
                Claimant::Node(name) => live_nodes.extend(nodes.get(name).map(|n| (name, n))),
            }
        }
        live_pods.sort_unstable_by(|a, b| b.1.rank(b.0).cmp(&a.1.rank(a.0)));
        live_nodes.sort_unstable_by(|a, b| a.0.cmp(b.0));
        live_pods
            .into_iter()
            .map(|(_, pod)| Owner::Pod(pod))
            .chain(live_nodes.into_iter().map(|(name, node)| Owner::Node(name, node)))
            .collect()
    }

    /// The owner of the address among the claimants still in `pods` and `nodes`: the pod that
    /// is not terminating before one that is, then the newest (by creation time, then UID);
    /// else the node with the least name.
    pub(super) fn owner<'a>(
        &'a self,
        pods: &'a Entries<PodKey, PodEntry>,
        nodes: &'a Entries<Arc<str>, NodeEntry>,
    ) -> Option<Owner<'a>> {
        if let Claimants::One(only) = self {
            // The common case: one claimant, nothing to rank.
            return match only {
                Claimant::Pod(key) => pods.get(key).map(Owner::Pod),
                Claimant::Node(name) => nodes.get(name).map(|node| Owner::Node(name, node)),
            };
        }
        self.ranked(pods, nodes).into_iter().next()
    }

    /// The owner and the best claim that loses to it, with why, when the address has at least
    /// two claimants.
    pub(super) fn contest<'a>(
        &'a self,
        pods: &'a Entries<PodKey, PodEntry>,
        nodes: &'a Entries<Arc<str>, NodeEntry>,
    ) -> Option<(Owner<'a>, Owner<'a>, Loss)> {
        let ranked = self.ranked(pods, nodes);
        let (winner, loser) = (*ranked.first()?, *ranked.get(1)?);
        let loss = match (winner, loser) {
            (Owner::Pod(w), Owner::Pod(l)) if w.terminating != l.terminating => Loss::Terminating,
            (Owner::Pod(w), Owner::Pod(l)) if w.created != l.created => Loss::Older,
            (Owner::Pod(_), Owner::Node(..)) => Loss::Node,
            _ => Loss::TieBreak,
        };
        Some((winner, loser, loss))
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::watcher::Event;

    use super::*;
    use crate::sources::kubernetes::fixtures::*;
    use crate::sources::kubernetes::objects::Uid;
    use crate::sources::kubernetes::store::Applied;

    #[test]
    fn finished_host_network_and_addressless_pods_own_nothing() {
        let mut succeeded = running("u1", "job", "2024-05-01T12:00:00Z", &["10.0.1.1"]);
        succeeded["status"]["phase"] = "Succeeded".into();
        let mut failed = running("u2", "crashed", "2024-05-01T12:00:00Z", &["10.0.1.2"]);
        failed["status"]["phase"] = "Failed".into();
        let mut host = running("u3", "kube-proxy", "2024-05-01T12:00:00Z", &["10.0.0.10"]);
        host["spec"]["hostNetwork"] = true.into();
        let mut pending = running("u4", "pending", "2024-05-01T12:00:00Z", &[]);
        pending["status"] = serde_json::json!({"phase": "Pending"});
        let bare = serde_json::json!({"metadata": {"name": "bare", "uid": "u5"}});
        for json in [succeeded, failed, host, pending, bare] {
            assert_eq!(pod_entry(&pod(json.clone())), None, "{json}");
        }
    }

    #[test]
    fn the_newest_pod_owns_a_reused_address_whatever_the_order_of_events() {
        let old = running("u-old", "ratings-old", "2024-05-01T12:00:00Z", &["10.0.1.15"]);
        let mut new = running("u-new", "other-new", "2024-05-01T12:05:00Z", &["10.0.1.15"]);
        new["metadata"]["labels"] = serde_json::json!({"app": "other"});
        // The new pod is seen before the old one's delete.
        let mut store = store_with(&[new.clone(), old.clone()]);
        assert_eq!(owner(&store.records(), "10.0.1.15").as_deref(), Some("other-new"));
        assert_eq!(store.apply_pod(Event::Delete(pod(old))), Applied::Changed, "the delete");
        assert_eq!(owner(&store.records(), "10.0.1.15").as_deref(), Some("other-new"));
        // A late update of the old pod, still claiming the address, does not take it back.
        let late_old = running("u-old", "ratings-old", "2024-05-01T12:00:00Z", &["10.0.1.15"]);
        let mut store = store_with(&[new, late_old]);
        let records = store.records();
        assert_eq!(owner(&records, "10.0.1.15").as_deref(), Some("other-new"));
        assert_eq!(records.endpoints.len(), 1);
    }

    #[test]
    fn equal_creation_times_are_decided_by_uid() {
        let a = running("aaa", "pod-a", "2024-05-01T12:00:00Z", &["10.0.1.9"]);
        let b = running("bbb", "pod-b", "2024-05-01T12:00:00Z", &["10.0.1.9"]);
        assert_eq!(
            owner(&store_with(&[a.clone(), b.clone()]).records(), "10.0.1.9").unwrap(),
            "pod-b"
        );
        assert_eq!(owner(&store_with(&[b, a]).records(), "10.0.1.9").unwrap(), "pod-b");
    }

    /// `json` with `metadata.deletionTimestamp` set: the pod is being deleted.
    fn terminating(mut json: serde_json::Value) -> serde_json::Value {
        json["metadata"]["deletionTimestamp"] = "2024-05-01T13:00:00Z".into();
        json
    }

    #[test]
    fn a_pod_that_starts_terminating_hands_its_address_to_a_live_claimant_at_once() {
        // The newer pod is the one stuck terminating (its node stopped answering), so the
        // creation time alone would keep it.
        let live = running("u-live", "live", "2024-05-01T12:00:00Z", &["10.0.1.15"]);
        let stuck = running("u-stuck", "stuck", "2024-05-01T12:05:00Z", &["10.0.1.15"]);
        let mut store = store_with(&[live, stuck.clone()]);
        assert_eq!(owner(&store.records(), "10.0.1.15").as_deref(), Some("stuck"));
        assert_eq!(
            store.apply_pod(Event::Apply(pod(terminating(stuck.clone())))),
            Applied::Changed
        );
        let changes = store.take_changes();
        assert_eq!(changes.endpoints.len(), 1, "the change is reported: {changes:?}");
        let record = changes.endpoints[0].record.as_ref().unwrap();
        assert_eq!((&*record.name, record.terminating), ("live", false));
        // Both terminating: the newest again, and its record says so.
        let live = running("u-live", "live", "2024-05-01T12:00:00Z", &["10.0.1.15"]);
        store.apply_pod(Event::Apply(pod(terminating(live))));
        let records = store.records();
        assert_eq!(owner(&records, "10.0.1.15").as_deref(), Some("stuck"));
        assert!(records.endpoints[0].terminating);
        assert_eq!(records.endpoints[0].created, 1_714_565_100);
    }

    #[test]
    fn a_terminating_pod_still_beats_a_node_and_is_its_addresses_owner_when_alone() {
        let mut store = store_with(&[terminating(running(
            "u1",
            "stuck",
            "2024-05-01T12:00:00Z",
            &["10.0.0.10"],
        ))]);
        let node: NodeView = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.10"}]}
        }))
        .unwrap();
        store.apply_node(Event::Apply(node));
        assert_eq!(owner(&store.records(), "10.0.0.10").as_deref(), Some("stuck"));
    }

    #[test]
    fn the_contest_of_an_address_names_the_owner_the_runner_up_and_why() {
        let old = running("u-old", "old", "2024-05-01T12:00:00Z", &["10.0.1.15"]);
        let new = running("u-new", "new", "2024-05-01T12:05:00Z", &["10.0.1.15"]);
        let same = running("u-same", "same", "2024-05-01T12:05:00Z", &["10.0.1.15"]);
        let mut entries: Entries<PodKey, PodEntry> = Entries::default();
        for json in [&old, &new, &same] {
            let view = pod(json.clone());
            entries.insert(view.key.clone(), pod_entry(&view).unwrap());
        }
        let nodes = Entries::default();
        let name = |o: Owner<'_>| match o {
            Owner::Pod(p) => p.name.to_string(),
            Owner::Node(n, _) => n.to_string(),
        };
        let contest = |uids: &[&str]| {
            let mut claimants = Claimants::None;
            for uid in uids {
                claimants.push(Claimant::Pod(PodKey(Uid::Text(Arc::from(*uid)))));
            }
            claimants.contest(&entries, &nodes).map(|(w, l, loss)| (name(w), name(l), loss))
        };
        assert_eq!(contest(&["u-old", "u-new"]), Some(("new".into(), "old".into(), Loss::Older)));
        assert_eq!(
            contest(&["u-same", "u-new"]),
            Some(("same".into(), "new".into(), Loss::TieBreak))
        );
        assert_eq!(contest(&["u-old"]), None, "not contested");
    }
}
