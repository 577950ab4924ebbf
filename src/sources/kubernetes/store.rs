//! The cluster store: everything known of one cluster in compact form (a table of entries
//! per kind, never whole objects), who claims each address, and what the control plane was
//! last told, from which it works out what changed. Must not depend on the watch loop, its
//! health or the API client: it is fed watcher events and asked for changes, so that
//! `list_once` and the unit tests drive it without a server.
//!
//! A relist (`Init`, `InitApply`..., `InitDone`) is gathered aside and swapped in whole at
//! `InitDone`: objects that were not listed again are gone, and no half-listed view is ever
//! read. An address or namespace is reported only when its owner or labels differ from what
//! was last reported.
//!
//! A namespace deleted while pods of it are still in the store (its DELETED event can come
//! before theirs: the watches are separate streams) keeps its last reported labels until the
//! last of those pods goes or the namespace comes back: otherwise its pods would lose their
//! namespace labels, and selectors such as `trust!=high` would start matching them.
//!
//! Conflicts (a claim joining an address another pod or node of the cluster holds) are
//! counted here, where they are decided, and reported with the changes
//! ([`SourceChanges::conflicts`], a few of them in detail for the log).

use std::net::IpAddr;
use std::num::NonZeroU64;
use std::sync::Arc;

use ipnet::IpNet;
use kube::runtime::watcher::Event;
use rustc_hash::{FxHashMap, FxHashSet};

use super::claims::{
    Addresses, Claimant, NodeEntry, Owner, PodEntry, claim, node_entry, pod_entry,
};
use super::entries::Entries;
use super::intern;
use super::objects::{NamespaceView, NodeView, PodKey, PodView};
use crate::labels::{
    Contest, EndpointChange, EndpointKind, EndpointRecord, Labels, NamespaceChange,
    NamespaceRecord, SourceChanges, SourceRecords,
};
use crate::sources::kubernetes_source_name;

/// The entries of one kind: the live ones, and a new list being gathered.
#[derive(Debug)]
pub(super) struct Table<K, E> {
    live: Entries<K, E>,
    listing: Option<Entries<K, E>>,
    /// Has completed a full list at least once.
    pub(super) listed: bool,
}

impl<K: Clone + Eq + std::hash::Hash, E: PartialEq> Table<K, E> {
    fn new() -> Table<K, E> {
        Table { live: Entries::default(), listing: None, listed: false }
    }

    fn init(&mut self) {
        self.listing = Some(Entries::default());
    }

    fn init_apply(&mut self, key: K, entry: Option<E>) {
        if let (Some(listing), Some(entry)) = (&mut self.listing, entry) {
            listing.insert(key, entry);
        }
    }

    /// Swaps the new list in (objects that were not listed are gone); returns the entries
    /// it replaced.
    fn init_done(&mut self) -> Entries<K, E> {
        self.listed = true;
        match self.listing.take() {
            Some(listing) => std::mem::replace(&mut self.live, listing),
            None => Entries::default(),
        }
    }

    /// An added or changed object; `None` removes it. Returns the entry it replaced, or
    /// `None` when nothing changed.
    fn apply(&mut self, key: &K, entry: Option<E>) -> Option<Option<E>> {
        if self.live.get(key) == entry.as_ref() {
            return None;
        }
        Some(match entry {
            Some(entry) => self.live.insert(key.clone(), entry),
            None => self.live.remove(key),
        })
    }
}

/// Contested addresses described in one report at most (the rest are only counted).
const CONTESTS_PER_REPORT: usize = 8;

/// Everything known of one cluster, in compact form, and what the control plane was told.
#[derive(Debug)]
pub(super) struct ClusterStore {
    cluster: Arc<str>,
    pub(super) pods: Table<PodKey, PodEntry>,
    pub(super) namespaces: Table<Arc<str>, Arc<Labels>>,
    pub(super) nodes: Table<Arc<str>, NodeEntry>,
    /// Who claims each address and what was last reported of it (a fingerprint of the
    /// record: 8 bytes an address instead of a copy), and the addresses that may have
    /// changed since.
    addresses: Addresses,
    /// Namespaces that may have changed since they were last reported.
    dirty_namespaces: FxHashSet<Arc<str>>,
    /// Pods in the store per namespace (a deleted namespace's labels stay while it has any).
    pods_per_namespace: FxHashMap<Arc<str>, u32>,
    /// Addresses a claim joined while another claimant held them, since the last report.
    contested: Vec<IpAddr>,
    /// Keys of the fingerprints (random: pod labels must not be able to make two records'
    /// fingerprints collide).
    fingerprints: ahash::RandomState,
    /// What the control plane was told of each namespace's labels.
    reported_namespaces: FxHashMap<Arc<str>, Arc<Labels>>,
    /// The namespace of node records.
    no_namespace: Arc<str>,
}

impl ClusterStore {
    pub(super) fn new(cluster: String) -> ClusterStore {
        ClusterStore {
            cluster: cluster.into(),
            pods: Table::new(),
            namespaces: Table::new(),
            nodes: Table::new(),
            addresses: Addresses::default(),
            dirty_namespaces: FxHashSet::default(),
            pods_per_namespace: FxHashMap::default(),
            contested: Vec::new(),
            fingerprints: ahash::RandomState::new(),
            reported_namespaces: FxHashMap::default(),
            no_namespace: Arc::from(""),
        }
    }

    pub(super) fn listed(&self) -> bool {
        self.pods.listed && self.namespaces.listed && self.nodes.listed
    }

    pub(super) fn apply_pod(&mut self, event: Event<PodView>) -> Applied {
        if let (Event::InitDone, Some(listed)) = (&event, &self.pods.listing) {
            // Each listed pod is about to claim its addresses: room for them at once, rather
            // than growing (and rehashing) a million-entry map several times on the way.
            // (A relist finds most of them there already.)
            self.addresses.reserve(listed.len().saturating_sub(self.addresses.map.len()));
        }
        let addresses = &mut self.addresses;
        let (contested, per_namespace) = (&mut self.contested, &mut self.pods_per_namespace);
        let dirty_namespaces = &mut self.dirty_namespaces;
        let entry = |pod: &PodView| {
            if pod.bad_ips > 0 {
                tracing::debug!(pod = %pod.name, "a pod address that is not an IP ignored");
            }
            (pod.key.clone(), pod_entry(pod))
        };
        apply(&mut self.pods, event, entry, |key, old, new| {
            let (old_ips, new_ips) =
                (old.map_or(&[][..], |e| &e.ips), new.map_or(&[][..], |e| &e.ips));
            claim(addresses, contested, old_ips, new_ips, &Claimant::Pod(key.clone()));
            if let Some(new) = new {
                *per_namespace.entry(Arc::clone(&new.namespace)).or_default() += 1;
            }
            if let Some(old) = old
                && let Some(count) = per_namespace.get_mut(&old.namespace)
            {
                *count -= 1;
                if *count == 0 {
                    // Its last pod: a namespace deleted before it may be reported gone now.
                    per_namespace.remove(&old.namespace);
                    dirty_namespaces.insert(Arc::clone(&old.namespace));
                }
            }
        })
    }

    pub(super) fn apply_namespace(&mut self, event: Event<NamespaceView>) -> Applied {
        let dirty = &mut self.dirty_namespaces;
        let entry = |ns: &NamespaceView| (Arc::clone(&ns.name), Some(Arc::clone(&ns.labels)));
        apply(&mut self.namespaces, event, entry, |key, _, _| {
            dirty.insert(Arc::clone(key));
        })
    }

    pub(super) fn apply_node(&mut self, event: Event<NodeView>) -> Applied {
        let addresses = &mut self.addresses;
        let entry = |node: &NodeView| (Arc::clone(&node.name), Some(node_entry(node)));
        let contested = &mut self.contested;
        apply(&mut self.nodes, event, entry, |key, old, new| {
            let (old_ips, new_ips) =
                (old.map_or(&[][..], |e| &e.ips), new.map_or(&[][..], |e| &e.ips));
            claim(addresses, contested, old_ips, new_ips, &Claimant::Node(Arc::clone(key)));
        })
    }

    /// The record of the owner of an address (see [`Claimants::owner`]).
    fn owner(&self, ip: IpAddr) -> Option<EndpointRecord> {
        let address = self.addresses.map.get(&ip)?;
        let owner = address.claimants.owner(&self.pods.live, &self.nodes.live)?;
        Some(self.record(ip, owner))
    }

    /// The record of a claimant of `ip`.
    fn record(&self, ip: IpAddr, claimant: Owner<'_>) -> EndpointRecord {
        record_of(&self.cluster, &self.no_namespace, ip, claimant)
    }

    /// The addresses that became contested since the last report: how many times, and a few
    /// of those still contested in detail.
    fn take_contests(&mut self) -> (u64, Vec<Contest>) {
        let contested = std::mem::take(&mut self.contested);
        let mut described: Vec<Contest> = Vec::new();
        for ip in &contested {
            if described.len() == CONTESTS_PER_REPORT {
                break;
            }
            let net = IpNet::from(*ip);
            if described.iter().any(|c| c.net == net) {
                continue;
            }
            let Some(address) = self.addresses.map.get(ip) else { continue };
            if let Some((winner, loser, loss)) =
                address.claimants.contest(&self.pods.live, &self.nodes.live)
            {
                let (winner, loser) = (self.record(*ip, winner), self.record(*ip, loser));
                described.push(Contest { net, winner, loser, loss });
            }
        }
        (contested.len() as u64, described)
    }

    /// What changed since the last call, as the control plane is to be told; from then on
    /// it counts as reported. Sorted by address and by namespace name.
    pub(super) fn take_changes(&mut self) -> SourceChanges {
        let mut changes = SourceChanges::default();
        (changes.conflicts, changes.contests) = self.take_contests();
        let (pods, nodes) = (&self.pods.live, &self.nodes.live);
        let (cluster, no_namespace) = (&self.cluster, &self.no_namespace);
        let addresses = &mut self.addresses;
        for ip in std::mem::take(&mut addresses.dirty) {
            let Some(address) = addresses.map.get_mut(&ip) else { continue };
            address.dirty = false;
            let owner = address.claimants.owner(pods, nodes);
            let record = owner.map(|owner| record_of(cluster, no_namespace, ip, owner));
            let print = record.as_ref().map(|r| fingerprint(&self.fingerprints, r));
            let changed = print != address.reported;
            address.reported = print;
            if address.is_unused() {
                addresses.map.remove(&ip);
            }
            if changed {
                changes.endpoints.push(EndpointChange { net: IpNet::from(ip), record });
            }
        }
        for name in std::mem::take(&mut self.dirty_namespaces) {
            let labels = self.namespaces.live.get(&name).cloned().or_else(|| {
                // Deleted before its pods: the last labels stay while it has any.
                self.pods_per_namespace
                    .contains_key(&name)
                    .then(|| self.reported_namespaces.get(&name).cloned())
                    .flatten()
            });
            if labels.as_ref() == self.reported_namespaces.get(&name) {
                continue;
            }
            match &labels {
                Some(labels) => {
                    self.reported_namespaces.insert(Arc::clone(&name), Arc::clone(labels))
                }
                None => self.reported_namespaces.remove(&name),
            };
            changes.namespaces.push(NamespaceChange {
                cluster: Arc::clone(&self.cluster),
                name,
                labels,
            });
        }
        changes.endpoints.sort_unstable_by_key(|c| c.net);
        changes.namespaces.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        intern::collect();
        changes
    }

    /// The full view, as reported (after taking what changed): sorted by address, then
    /// namespaces by name.
    pub(super) fn records(&mut self) -> SourceRecords {
        self.take_changes();
        let reported = self.addresses.map.iter().filter(|(_, a)| a.reported.is_some());
        let mut endpoints: Vec<EndpointRecord> =
            reported.filter_map(|(ip, _)| self.owner(*ip)).collect();
        endpoints.sort_unstable_by_key(|e| e.net);
        let mut namespaces: Vec<NamespaceRecord> = self
            .reported_namespaces
            .iter()
            .map(|(name, labels)| NamespaceRecord {
                cluster: self.cluster.to_string(),
                name: name.to_string(),
                labels: Arc::clone(labels),
            })
            .collect();
        namespaces.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        SourceRecords { source: kubernetes_source_name(&self.cluster), endpoints, namespaces }
    }
}

/// The record of a claimant of `ip` in cluster `cluster` (nodes have `no_namespace`).
fn record_of(
    cluster: &Arc<str>,
    no_namespace: &Arc<str>,
    ip: IpAddr,
    claimant: Owner<'_>,
) -> EndpointRecord {
    let (namespace, name, kind, labels, created, terminating) = match claimant {
        Owner::Pod(pod) => (
            &pod.namespace,
            &pod.name,
            EndpointKind::Pod,
            &pod.labels,
            pod.created,
            pod.terminating,
        ),
        Owner::Node(name, node) => (no_namespace, name, EndpointKind::Node, &node.labels, 0, false),
    };
    EndpointRecord {
        net: IpNet::from(ip),
        cluster: Arc::clone(cluster),
        namespace: Arc::clone(namespace),
        name: Arc::clone(name),
        kind,
        terminating,
        created,
        labels: Arc::clone(labels),
    }
}

/// A fingerprint of everything a record says: equal records have equal fingerprints, and
/// different ones differ but with a chance of 2^-64 (keyed at random per store), so the
/// store keeps 8 bytes per reported address to tell what changed instead of the record.
fn fingerprint(keys: &ahash::RandomState, record: &EndpointRecord) -> NonZeroU64 {
    NonZeroU64::new(keys.hash_one(record)).unwrap_or(NonZeroU64::MIN)
}

/// What an event did to a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Applied {
    Unchanged,
    Changed,
    /// A full list was swapped in.
    Listed,
}

/// Applies one watcher event to a table; `changed` hears of every entry that went, came or
/// changed (`key`, the old entry, the new one), a relist as the difference between the old
/// entries and the listed ones (an object listed again unchanged is no change: its claims and
/// conflicts are not made again).
fn apply<O, K: Clone + Eq + std::hash::Hash, E: PartialEq>(
    table: &mut Table<K, E>,
    event: Event<O>,
    mut entry: impl FnMut(&O) -> (K, Option<E>),
    mut changed: impl FnMut(&K, Option<&E>, Option<&E>),
) -> Applied {
    let mut replace = |key: K, value: Option<E>| match table.apply(&key, value) {
        Some(old) => {
            changed(&key, old.as_ref(), table.live.get(&key));
            Applied::Changed
        }
        None => Applied::Unchanged,
    };
    match event {
        Event::Init => {
            table.init();
            Applied::Unchanged
        }
        Event::InitApply(object) => {
            let (key, value) = entry(&object);
            table.init_apply(key, value);
            Applied::Unchanged
        }
        Event::InitDone => {
            let old = table.init_done();
            for (key, old) in old.iter() {
                if !table.live.contains_key(key) {
                    changed(key, Some(old), None);
                }
            }
            for (key, new) in table.live.iter() {
                let old = old.get(key);
                if old != Some(new) {
                    changed(key, old, Some(new));
                }
            }
            Applied::Listed
        }
        Event::Apply(object) => {
            let (key, value) = entry(&object);
            replace(key, value)
        }
        Event::Delete(object) => {
            let (key, _) = entry(&object);
            replace(key, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::watcher::Event;

    use super::*;
    use crate::sources::kubernetes::fixtures::*;

    #[test]
    fn a_running_pod_owns_its_ipv4_and_ipv6_addresses_with_its_labels() {
        let view =
            pod(running("u1", "ratings-1", "2024-05-01T12:00:00Z", &["10.0.1.15", "fd00::15"]));
        assert_eq!(view.created, 1_714_564_800);
        let records = store_with(&[running(
            "u1",
            "ratings-1",
            "2024-05-01T12:00:00Z",
            &["10.0.1.15", "fd00::15"],
        )])
        .records();
        assert_eq!(records.source, "kubernetes:c1");
        assert_eq!(records.endpoints.len(), 2);
        for (record, net) in records.endpoints.iter().zip(["10.0.1.15/32", "fd00::15/128"]) {
            assert_eq!(record.net, net.parse::<IpNet>().unwrap());
            assert_eq!(&*record.cluster, "c1");
            assert_eq!(&*record.namespace, "bookinfo");
            assert_eq!(&*record.name, "ratings-1");
            assert_eq!(record.kind, EndpointKind::Pod);
            assert_eq!(labels_text(&record.labels), "app=ratings");
        }
    }

    #[test]
    fn a_pod_that_finishes_releases_its_address() {
        let mut store = store_with(&[running("u1", "job", "2024-05-01T12:00:00Z", &["10.0.1.1"])]);
        let mut done = running("u1", "job", "2024-05-01T12:00:00Z", &["10.0.1.1"]);
        done["status"]["phase"] = "Succeeded".into();
        assert_eq!(store.records().endpoints.len(), 1);
        assert_eq!(store.apply_pod(Event::Apply(pod(done))), Applied::Changed);
        assert!(store.records().endpoints.is_empty());
    }

    #[test]
    fn a_relist_forgets_what_was_not_listed_again() {
        let mut table: Table<Arc<str>, u32> = Table::new();
        table.init();
        table.init_apply("a".into(), Some(1));
        table.init_apply("b".into(), Some(2));
        assert!(table.live.iter().next().is_none(), "nothing is live before InitDone");
        table.init_done();
        assert_eq!(table.live.iter().count(), 2);
        table.init();
        table.init_apply("b".into(), Some(3));
        assert_eq!(
            table.live.iter().count(),
            2,
            "the old view stays until the new list is complete"
        );
        table.init_done();
        assert_eq!(table.live.iter().collect::<Vec<_>>(), [(&"b".into(), &3)]);
    }

    #[test]
    fn records_are_sorted_so_that_equal_views_compare_equal() {
        let pods: Vec<_> = (0..50)
            .map(|i| {
                running(
                    &format!("u{i}"),
                    &format!("p{i}"),
                    "2024-05-01T12:00:00Z",
                    &[&format!("10.0.{}.{}", i % 3, i)],
                )
            })
            .collect();
        let mut reversed = pods.clone();
        reversed.reverse();
        assert_eq!(store_with(&pods).records(), store_with(&reversed).records());
    }

    fn namespace(name: &str, labels: serde_json::Value) -> NamespaceView {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": labels}}))
            .unwrap()
    }

    fn node(name: &str, ip: &str) -> NodeView {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}
        }))
        .unwrap()
    }

    fn namespace_labels(changes: &SourceChanges) -> Vec<(String, Option<String>)> {
        changes
            .namespaces
            .iter()
            .map(|c| (c.name.to_string(), c.labels.as_deref().map(labels_text)))
            .collect()
    }

    #[test]
    fn a_namespace_deleted_before_its_pods_keeps_its_labels_until_the_last_goes() {
        let a = running("u1", "a", "2024-05-01T12:00:00Z", &["10.0.1.1"]);
        let b = running("u2", "b", "2024-05-01T12:00:00Z", &["10.0.1.2"]);
        let mut store = store_with(&[a.clone(), b.clone()]);
        store.apply_namespace(Event::Apply(namespace(
            "bookinfo",
            serde_json::json!({"trust": "high"}),
        )));
        let changes = store.take_changes();
        assert_eq!(namespace_labels(&changes), [("bookinfo".into(), Some("trust=high".into()))]);
        // The namespace's delete is seen before its pods'.
        store.apply_namespace(Event::Delete(namespace("bookinfo", serde_json::json!({}))));
        assert_eq!(namespace_labels(&store.take_changes()), []);
        assert_eq!(labels_text(&store.records().namespaces[0].labels), "trust=high");
        store.apply_pod(Event::Delete(pod(a)));
        assert_eq!(namespace_labels(&store.take_changes()), [], "b is still there");
        store.apply_pod(Event::Delete(pod(b.clone())));
        assert_eq!(namespace_labels(&store.take_changes()), [("bookinfo".into(), None)]);
        assert!(store.records().namespaces.is_empty());
        // Back with new labels while a pod of it is there: the new labels, at once.
        store.apply_pod(Event::Apply(pod(b.clone())));
        store.apply_namespace(Event::Apply(namespace(
            "bookinfo",
            serde_json::json!({"trust": "low"}),
        )));
        assert_eq!(
            namespace_labels(&store.take_changes()),
            [("bookinfo".into(), Some("trust=low".into()))]
        );
        // A relist without the namespace keeps the labels while b is listed too.
        store.apply_namespace(Event::Init);
        store.apply_namespace(Event::InitDone);
        assert_eq!(namespace_labels(&store.take_changes()), []);
        store.apply_pod(Event::Init);
        store.apply_pod(Event::InitDone);
        assert_eq!(namespace_labels(&store.take_changes()), [("bookinfo".into(), None)]);
    }

    #[test]
    fn conflicts_are_counted_once_per_claim_that_joins_an_address_held_by_another() {
        let old = running("u-old", "old", "2024-05-01T12:00:00Z", &["10.0.0.10"]);
        let mut store = store_with(&[]);
        store.apply_pod(Event::Apply(pod(old.clone())));
        let changes = store.take_changes();
        assert_eq!((changes.conflicts, changes.contests.len()), (0, 0));
        // A node with the pod's address: pod against node.
        store.apply_node(Event::Apply(node("n1", "10.0.0.10")));
        let changes = store.take_changes();
        assert_eq!(changes.conflicts, 1);
        let contest = &changes.contests[0];
        assert_eq!((&*contest.winner.name, &*contest.loser.name), ("old", "n1"));
        assert_eq!(contest.loss, crate::labels::Loss::Node);
        // A newer pod joins: pod against pod, and it takes the address.
        let mut new = running("u-new", "new", "2024-05-01T12:05:00Z", &["10.0.0.10"]);
        store.apply_pod(Event::Apply(pod(new.clone())));
        let changes = store.take_changes();
        assert_eq!(changes.conflicts, 1);
        assert_eq!(&*changes.endpoints[0].record.as_ref().unwrap().name, "new");
        let contest = &changes.contests[0];
        assert_eq!((&*contest.winner.name, &*contest.loser.name), ("new", "old"));
        assert_eq!(contest.loss, crate::labels::Loss::Older);
        // Updates of claimants already there, and a relist of the same objects, are none.
        new["metadata"]["labels"] = serde_json::json!({"app": "other"});
        store.apply_pod(Event::Apply(pod(new.clone())));
        store.apply_node(Event::Apply(node("n1", "10.0.0.10")));
        store.apply_pod(Event::Init);
        store.apply_pod(Event::InitApply(pod(old.clone())));
        store.apply_pod(Event::InitApply(pod(new.clone())));
        store.apply_pod(Event::InitDone);
        let changes = store.take_changes();
        assert_eq!((changes.conflicts, changes.contests.len()), (0, 0));
        assert_eq!(labels_text(&changes.endpoints[0].record.as_ref().unwrap().labels), "app=other");
        // A pod that moves to the address (a new address of its own) is one.
        let mut other = running("u-other", "other", "2024-05-01T12:01:00Z", &["10.0.0.11"]);
        store.apply_pod(Event::Apply(pod(other.clone())));
        other["status"]["podIPs"] = serde_json::json!([{"ip": "10.0.0.11"}, {"ip": "10.0.0.10"}]);
        store.apply_pod(Event::Apply(pod(other)));
        assert_eq!(store.take_changes().conflicts, 1);
    }
}
