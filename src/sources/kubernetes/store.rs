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

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use kube::runtime::watcher::Event;
use rustc_hash::{FxHashMap, FxHashSet};

use super::claims::{Claimants, NodeEntry, Owner, PodEntry, claim, node_entry, pod_entry, pod_key};
use super::intern::Interner;
use super::objects::{NamespaceView, NodeView, PodView};
use crate::labels::{
    EndpointChange, EndpointKind, EndpointRecord, Labels, NamespaceChange, NamespaceRecord,
    SourceChanges, SourceRecords,
};
use crate::sources::kubernetes_source_name;

/// The entries of one kind: the live ones, and a new list being gathered.
#[derive(Debug)]
pub(super) struct Table<E> {
    live: HashMap<Arc<str>, E>,
    listing: Option<HashMap<Arc<str>, E>>,
    /// Has completed a full list at least once.
    pub(super) listed: bool,
}

impl<E: PartialEq> Table<E> {
    fn new() -> Table<E> {
        Table { live: HashMap::new(), listing: None, listed: false }
    }

    fn init(&mut self) {
        self.listing = Some(HashMap::new());
    }

    fn init_apply(&mut self, key: Arc<str>, entry: Option<E>) {
        if let (Some(listing), Some(entry)) = (&mut self.listing, entry) {
            listing.insert(key, entry);
        }
    }

    /// Swaps the new list in (objects that were not listed are gone); returns the entries
    /// it replaced.
    fn init_done(&mut self) -> HashMap<Arc<str>, E> {
        self.listed = true;
        match self.listing.take() {
            Some(listing) => std::mem::replace(&mut self.live, listing),
            None => HashMap::new(),
        }
    }

    /// An added or changed object; `None` removes it. Returns the entry it replaced, or
    /// `None` when nothing changed.
    fn apply(&mut self, key: &Arc<str>, entry: Option<E>) -> Option<Option<E>> {
        if self.live.get(key) == entry.as_ref() {
            return None;
        }
        Some(match entry {
            Some(entry) => self.live.insert(Arc::clone(key), entry),
            None => self.live.remove(key),
        })
    }
}

/// Everything known of one cluster, in compact form, and what the control plane was told.
#[derive(Debug)]
pub(super) struct ClusterStore {
    cluster: Arc<str>,
    pub(super) pods: Table<PodEntry>,
    pub(super) namespaces: Table<Arc<Labels>>,
    pub(super) nodes: Table<NodeEntry>,
    interner: Interner,
    /// Which pods and nodes claim each address.
    claims: FxHashMap<IpAddr, Claimants>,
    /// Addresses and namespaces that may have changed since they were last reported.
    dirty_ips: FxHashSet<IpAddr>,
    dirty_namespaces: FxHashSet<Arc<str>>,
    /// What the control plane was told: the owner of each address, each namespace's labels.
    reported: FxHashMap<IpAddr, EndpointRecord>,
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
            interner: Interner::default(),
            claims: FxHashMap::default(),
            dirty_ips: FxHashSet::default(),
            dirty_namespaces: FxHashSet::default(),
            reported: FxHashMap::default(),
            reported_namespaces: FxHashMap::default(),
            no_namespace: Arc::from(""),
        }
    }

    pub(super) fn listed(&self) -> bool {
        self.pods.listed && self.namespaces.listed && self.nodes.listed
    }

    pub(super) fn apply_pod(&mut self, event: Event<PodView>) -> Applied {
        let (interner, claims, dirty) = (&mut self.interner, &mut self.claims, &mut self.dirty_ips);
        let entry = |pod: &PodView| {
            if pod.bad_ips > 0 {
                tracing::debug!(pod = ?pod.metadata.name, "a pod address that is not an IP ignored");
            }
            (pod_key(pod), pod_entry(pod, interner))
        };
        apply(&mut self.pods, event, entry, |key, old, new| {
            let pick: fn(&mut Claimants) -> &mut Vec<Arc<str>> = |c| &mut c.pods;
            if let Some(old) = old {
                claim(claims, dirty, &old.ips, key, pick, false);
            }
            if let Some(new) = new {
                claim(claims, dirty, &new.ips, key, pick, true);
            }
        })
    }

    pub(super) fn apply_namespace(&mut self, event: Event<NamespaceView>) -> Applied {
        let (interner, dirty) = (&mut self.interner, &mut self.dirty_namespaces);
        let entry = |ns: &NamespaceView| {
            let name = ns.metadata.name.as_deref().unwrap_or_default();
            (name.into(), Some(interner.labels(ns.labels.clone())))
        };
        apply(&mut self.namespaces, event, entry, |key, _, _| {
            dirty.insert(Arc::clone(key));
        })
    }

    pub(super) fn apply_node(&mut self, event: Event<NodeView>) -> Applied {
        let (interner, claims, dirty) = (&mut self.interner, &mut self.claims, &mut self.dirty_ips);
        let entry = |node: &NodeView| {
            let name = node.metadata.name.as_deref().unwrap_or_default();
            (name.into(), Some(node_entry(node, interner)))
        };
        apply(&mut self.nodes, event, entry, |key, old, new| {
            let pick: fn(&mut Claimants) -> &mut Vec<Arc<str>> = |c| &mut c.nodes;
            if let Some(old) = old {
                claim(claims, dirty, &old.ips, key, pick, false);
            }
            if let Some(new) = new {
                claim(claims, dirty, &new.ips, key, pick, true);
            }
        })
    }

    /// The record of the owner of an address (see [`Claimants::owner`]).
    fn owner(&self, ip: IpAddr) -> Option<EndpointRecord> {
        let owner = self.claims.get(&ip)?.owner(&self.pods.live, &self.nodes.live)?;
        let (namespace, name, kind, labels) = match owner {
            Owner::Pod(pod) => (&pod.namespace, &pod.name, EndpointKind::Pod, &pod.labels),
            Owner::Node(name, node) => (&self.no_namespace, name, EndpointKind::Node, &node.labels),
        };
        Some(EndpointRecord {
            net: IpNet::from(ip),
            cluster: Arc::clone(&self.cluster),
            namespace: Arc::clone(namespace),
            name: Arc::clone(name),
            kind,
            labels: Arc::clone(labels),
        })
    }

    /// What changed since the last call, as the control plane is to be told; from then on
    /// it counts as reported. Sorted by address and by namespace name.
    pub(super) fn take_changes(&mut self) -> SourceChanges {
        let mut changes = SourceChanges::default();
        for ip in std::mem::take(&mut self.dirty_ips) {
            let owner = self.owner(ip);
            if self.claims.get(&ip).is_some_and(|c| c.pods.is_empty() && c.nodes.is_empty()) {
                self.claims.remove(&ip);
            }
            if owner.as_ref() == self.reported.get(&ip) {
                continue;
            }
            match &owner {
                Some(record) => self.reported.insert(ip, record.clone()),
                None => self.reported.remove(&ip),
            };
            changes.endpoints.push(EndpointChange { net: IpNet::from(ip), record: owner });
        }
        for name in std::mem::take(&mut self.dirty_namespaces) {
            let labels = self.namespaces.live.get(&name).cloned();
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
        self.interner.collect();
        changes
    }

    /// The full view, as reported (after taking what changed): sorted by address, then
    /// namespaces by name.
    pub(super) fn records(&mut self) -> SourceRecords {
        self.take_changes();
        let mut endpoints: Vec<EndpointRecord> = self.reported.values().cloned().collect();
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

/// What an event did to a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Applied {
    Unchanged,
    Changed,
    /// A full list was swapped in.
    Listed,
}

/// Applies one watcher event to a table; `changed` hears of every entry that went or came
/// (`key`, the old entry, the new one), a relist as every old entry going and every listed
/// one coming.
fn apply<K, E: PartialEq>(
    table: &mut Table<E>,
    event: Event<K>,
    mut entry: impl FnMut(&K) -> (Arc<str>, Option<E>),
    mut changed: impl FnMut(&Arc<str>, Option<&E>, Option<&E>),
) -> Applied {
    let mut replace = |key: Arc<str>, value: Option<E>| match table.apply(&key, value) {
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
            for (key, old) in &table.init_done() {
                changed(key, Some(old), None);
            }
            for (key, new) in &table.live {
                changed(key, None, Some(new));
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
        let mut table: Table<u32> = Table::new();
        table.init();
        table.init_apply("a".into(), Some(1));
        table.init_apply("b".into(), Some(2));
        assert!(table.live.is_empty(), "nothing is live before InitDone");
        table.init_done();
        assert_eq!(table.live.len(), 2);
        table.init();
        table.init_apply("b".into(), Some(3));
        assert_eq!(table.live.len(), 2, "the old view stays until the new list is complete");
        table.init_done();
        assert_eq!(table.live.into_iter().collect::<Vec<_>>(), [("b".into(), 3)]);
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
}
