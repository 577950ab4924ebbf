//! Who owns an address: what each pod and node claims (its compact entry; a pod that has
//! finished, runs in the host network or has no address yet claims nothing), who claims each
//! address, and which claim wins. Must not depend on the store, which keeps the entries and
//! the claims and turns owners into records, nor on the watch loop.
//!
//! An address may be claimed by several pods at once (a new pod may be seen before the delete
//! of the old one that had its address) and by nodes. The newest pod wins, by creation time
//! and then UID, whatever the order of events, so that the delete of an old pod never removes
//! the newer owner; any pod beats a node; among nodes, the least name wins.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use super::intern::Interner;
use super::objects::{NodeView, PodView};
use crate::labels::Labels;

/// A pod that owns at least one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PodEntry {
    pub(super) namespace: Arc<str>,
    pub(super) name: Arc<str>,
    pub(super) labels: Arc<Labels>,
    pub(super) ips: Box<[IpAddr]>,
    pub(super) created: i64,
}

/// A node with its labels and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NodeEntry {
    pub(super) labels: Arc<Labels>,
    pub(super) ips: Box<[IpAddr]>,
}

/// The key of a pod: its UID, so that a new pod of the same name is a different entry.
pub(super) fn pod_key(pod: &PodView) -> Arc<str> {
    match &pod.metadata.uid {
        Some(uid) if !uid.is_empty() => uid.as_str().into(),
        _ => format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        )
        .into(),
    }
}

/// The entry of a pod, or `None` when it owns no address: finished (Succeeded, Failed), in
/// the host network (the address is the node's), or not given an address yet.
pub(super) fn pod_entry(pod: &PodView, interner: &mut Interner) -> Option<PodEntry> {
    let finished = matches!(pod.phase.as_deref(), Some("Succeeded" | "Failed"));
    if finished || pod.host_network || pod.ips.is_empty() {
        return None;
    }
    Some(PodEntry {
        namespace: interner.name(pod.metadata.namespace.as_deref().unwrap_or_default()),
        name: pod.metadata.name.as_deref().unwrap_or_default().into(),
        labels: interner.labels(pod.labels.clone()),
        ips: pod.ips.clone().into_boxed_slice(),
        created: pod.created,
    })
}

/// The entry of a node: its labels and addresses (a node claims them whatever its state).
pub(super) fn node_entry(node: &NodeView, interner: &mut Interner) -> NodeEntry {
    NodeEntry {
        labels: interner.labels(node.labels.clone()),
        ips: node.ips.clone().into_boxed_slice(),
    }
}

/// The pods and nodes that claim one address.
#[derive(Debug, Default)]
pub(super) struct Claimants {
    pub(super) pods: Vec<Arc<str>>,
    pub(super) nodes: Vec<Arc<str>>,
}

/// Adds or withdraws (`claim`) a claimant's claims on `ips`; the addresses need reporting.
pub(super) fn claim(
    claims: &mut FxHashMap<IpAddr, Claimants>,
    dirty: &mut FxHashSet<IpAddr>,
    ips: &[IpAddr],
    key: &Arc<str>,
    pick: fn(&mut Claimants) -> &mut Vec<Arc<str>>,
    add: bool,
) {
    for ip in ips {
        let list = pick(claims.entry(*ip).or_default());
        if add {
            list.push(Arc::clone(key));
        } else if let Some(at) = list.iter().position(|k| k == key) {
            list.swap_remove(at);
        }
        dirty.insert(*ip);
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
    /// The owner of the address among the claimants still in `pods` and `nodes`: the newest
    /// pod that claims it (by creation time, then UID), else the node with the least name.
    pub(super) fn owner<'a>(
        &'a self,
        pods: &'a HashMap<Arc<str>, PodEntry>,
        nodes: &'a HashMap<Arc<str>, NodeEntry>,
    ) -> Option<Owner<'a>> {
        let pod = self
            .pods
            .iter()
            .filter_map(|uid| pods.get(uid).map(|pod| (pod.created, uid, pod)))
            .max_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        if let Some((_, _, pod)) = pod {
            return Some(Owner::Pod(pod));
        }
        let (name, node) = self
            .nodes
            .iter()
            .filter_map(|name| nodes.get(name).map(|node| (name, node)))
            .min_by(|a, b| a.0.cmp(b.0))?;
        Some(Owner::Node(name, node))
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::watcher::Event;

    use super::*;
    use crate::sources::kubernetes::fixtures::*;
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
        let mut interner = Interner::default();
        for json in [succeeded, failed, host, pending, bare] {
            assert_eq!(pod_entry(&pod(json.clone()), &mut interner), None, "{json}");
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
}
