//! The mutable side of the label table: what every source claims, the interned identities
//! with how many endpoints use each, and the parts of the next table to publish.
//! Must not depend on: policy, snapshots, sockets, async (its tests excepted).
//!
//! Sources report either a full view ([`LabelBuilder::replace_source`]: inventory files) or
//! changes ([`LabelBuilder::apply_changes`]: Kubernetes watchers). Either way only the
//! addresses that changed are touched, and [`LabelBuilder::publish`] hands out a
//! [`LabelTable`] that shares everything untouched with the one before, plus the identities
//! whose group membership must be evaluated again. One change to one pod therefore costs a few
//! microseconds to publish, whatever the size of the table.
//!
//! Rules kept here: the first source (in configuration order) that claims an address or
//! network owns it, the others are counted as conflicts and take over when it lets go; an
//! identity lives while an endpoint uses it, and its id is reused after that (the ids handed
//! out by `publish` as changed include reused ones); all identities of a (cluster, namespace)
//! carry the namespace's current labels.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;

use hashbrown::HashTable;
use ipnet::IpNet;
use rustc_hash::{FxBuildHasher, FxHashMap, FxHashSet};

use super::shared::{Chunked, ShardedMap};
use super::{
    Endpoint, EndpointKind, EndpointRecord, Identity, IdentityId, LabelTable, Labels,
    NamespaceChange, SourceChanges, SourceRecords,
};
use crate::prefix::PrefixMap;

/// One source's claim on an address or network.
#[derive(Debug, Clone)]
struct Claim {
    source: usize,
    record: EndpointRecord,
}

/// A live identity.
#[derive(Debug)]
struct Slot {
    identity: Arc<Identity>,
    hash: u64,
    /// Endpoints of the table that have this identity.
    endpoints: u32,
}

/// Namespace labels by cluster, then namespace: each source's claim, in source order.
type NamespaceClaims = FxHashMap<Arc<str>, FxHashMap<Arc<str>, Vec<(usize, Arc<Labels>)>>>;

#[derive(Debug)]
pub struct LabelBuilder {
    source_names: Arc<[String]>,
    /// Every source's claim on each host address (/32, /128), in source order.
    host_claims: FxHashMap<IpAddr, Vec<Claim>>,
    /// The same for wider networks (inventory subnets: few).
    network_claims: BTreeMap<IpNet, Vec<Claim>>,
    namespaces: NamespaceClaims,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// Live identity ids by the hash of their content.
    index: HashTable<u32>,
    /// Per source: records that repeat an address the same source already claimed.
    duplicates: Vec<usize>,
    /// Per source: its claims are kept but own nothing (a source lost for too long).
    suspended: Vec<bool>,
    /// Claims beyond the first on each address or network.
    overlaps: usize,
    empty_labels: Arc<Labels>,
    // The parts of the next table.
    hosts_v4: ShardedMap<u32, Endpoint>,
    hosts_v6: ShardedMap<u128, Endpoint>,
    network_endpoints: BTreeMap<IpNet, Endpoint>,
    networks: Arc<PrefixMap<Endpoint>>,
    networks_changed: bool,
    identities: Chunked<Option<Arc<Identity>>>,
    /// Identities created, reused or relabelled since the last `publish`.
    changed: Vec<IdentityId>,
}

fn identity_hash(
    cluster: &str,
    namespace: &str,
    kind: EndpointKind,
    labels: &Labels,
    namespace_labels: &Labels,
) -> u64 {
    FxBuildHasher.hash_one((cluster, namespace, kind, labels, namespace_labels))
}

fn is_host(net: &IpNet) -> bool {
    net.prefix_len() == net.max_prefix_len()
}

impl LabelBuilder {
    /// An empty builder for these sources (in priority order).
    pub fn new(source_names: Vec<String>) -> LabelBuilder {
        LabelBuilder {
            duplicates: vec![0; source_names.len()],
            suspended: vec![false; source_names.len()],
            source_names: source_names.into(),
            host_claims: FxHashMap::default(),
            network_claims: BTreeMap::new(),
            namespaces: FxHashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            overlaps: 0,
            empty_labels: Arc::default(),
            hosts_v4: ShardedMap::default(),
            hosts_v6: ShardedMap::default(),
            network_endpoints: BTreeMap::new(),
            networks: Arc::default(),
            networks_changed: false,
            identities: Chunked::new(1, None),
            changed: Vec::new(),
        }
    }

    /// Replaces everything `source` claimed with `records` (a full view). Within the view,
    /// the first record of an address wins and the others count as conflicts.
    pub fn replace_source(&mut self, source: usize, records: &SourceRecords) {
        let mut listed: FxHashSet<(Arc<str>, Arc<str>)> = FxHashSet::default();
        for ns in &records.namespaces {
            let key = (Arc::<str>::from(ns.cluster.as_str()), Arc::<str>::from(ns.name.as_str()));
            if listed.insert(key.clone()) {
                self.set_namespace(source, &key.0, &key.1, Some(Arc::clone(&ns.labels)));
            }
        }
        let stale: Vec<(Arc<str>, Arc<str>)> = self
            .namespaces
            .iter()
            .flat_map(|(cluster, names)| {
                names
                    .iter()
                    .filter(|(_, claims)| claims.iter().any(|c| c.0 == source))
                    .map(|(name, _)| (Arc::clone(cluster), Arc::clone(name)))
            })
            .filter(|key| !listed.contains(key))
            .collect();
        for (cluster, name) in stale {
            self.set_namespace(source, &cluster, &name, None);
        }

        let mut seen: FxHashSet<IpNet> = FxHashSet::default();
        let mut duplicates = 0;
        for record in &records.endpoints {
            let net = record.net.trunc();
            if seen.insert(net) {
                self.set_claim(source, net, Some(record));
            } else {
                duplicates += 1;
            }
        }
        self.duplicates[source] = duplicates;
        let claimed_by_source = |claims: &Vec<Claim>| claims.iter().any(|c| c.source == source);
        let stale: Vec<IpNet> = self
            .host_claims
            .iter()
            .filter(|(_, claims)| claimed_by_source(claims))
            .map(|(ip, _)| IpNet::from(*ip))
            .chain(
                self.network_claims
                    .iter()
                    .filter(|(_, claims)| claimed_by_source(claims))
                    .map(|(net, _)| *net),
            )
            .filter(|net| !seen.contains(net))
            .collect();
        for net in stale {
            self.set_claim(source, net, None);
        }
    }

    /// Suspends `source` (its claims stay, but own nothing: each of its addresses goes to the
    /// next claimant, or to nobody) or ends its suspension. For a label source lost longer
    /// than it may be trusted (`max_stale`): its entries are withdrawn without forgetting
    /// them, and come back whole when it syncs again. Costs a pass over every claim.
    pub fn set_suspended(&mut self, source: usize, suspended: bool) {
        if self.suspended[source] == suspended {
            return;
        }
        // Where `source` owns the address, or would once it is back: every claim before its
        // own is of a suspended source.
        let flags = &self.suspended;
        let decides = |claims: &Vec<Claim>| {
            claims
                .iter()
                .take_while(|c| c.source <= source)
                .all(|c| c.source == source || flags[c.source])
                && claims.iter().any(|c| c.source == source)
        };
        let affected: Vec<IpNet> = self
            .host_claims
            .iter()
            .filter(|(_, claims)| decides(claims))
            .map(|(ip, _)| IpNet::from(*ip))
            .chain(self.network_claims.iter().filter(|(_, c)| decides(c)).map(|(net, _)| *net))
            .collect();
        let in_force = |claims: &Vec<(usize, Arc<Labels>)>, flags: &[bool]| {
            claims.iter().find(|c| !flags[c.0]).map(|c| Arc::clone(&c.1)).unwrap_or_default()
        };
        let namespaces_before: Vec<(Arc<str>, Arc<str>, Arc<Labels>)> = self
            .namespaces
            .iter()
            .flat_map(|(cluster, names)| {
                names.iter().filter(|(_, claims)| claims.iter().any(|c| c.0 == source)).map(
                    |(name, claims)| {
                        (Arc::clone(cluster), Arc::clone(name), in_force(claims, flags))
                    },
                )
            })
            .collect();
        self.suspended[source] = suspended;
        // Namespace labels first, so that the addresses placed below get identities with the
        // labels in force.
        for (cluster, name, before) in namespaces_before {
            let after = in_force(&self.namespaces[&cluster][&name], &self.suspended);
            if before != after {
                self.relabel_namespace(&cluster, &name, &after);
            }
        }
        for net in affected {
            let claims = if is_host(&net) {
                &self.host_claims[&net.addr()]
            } else {
                &self.network_claims[&net]
            };
            let owner = claims.iter().find(|c| !self.suspended[c.source]).cloned();
            self.place(net, owner);
        }
    }

    /// Whether `source` is suspended ([`LabelBuilder::set_suspended`]).
    pub fn is_suspended(&self, source: usize) -> bool {
        self.suspended[source]
    }

    /// Applies what changed in `source` since its last view or changes.
    pub fn apply_changes(&mut self, source: usize, changes: &SourceChanges) {
        for NamespaceChange { cluster, name, labels } in &changes.namespaces {
            self.set_namespace(source, cluster, name, labels.clone());
        }
        for change in &changes.endpoints {
            self.set_claim(source, change.net.trunc(), change.record.as_ref());
        }
    }

    /// The table as it stands, and the identities whose group membership is new since the
    /// last call (created, reused or relabelled; sorted, each once).
    pub fn publish(&mut self) -> (LabelTable, Vec<IdentityId>) {
        if self.networks_changed {
            let mut networks = PrefixMap::default();
            for (net, endpoint) in &self.network_endpoints {
                networks.insert_with(*net, endpoint.clone(), |_, _| {});
            }
            self.networks = Arc::new(networks);
            self.networks_changed = false;
        }
        let mut changed = std::mem::take(&mut self.changed);
        changed.sort_unstable();
        changed.dedup();
        let table = LabelTable {
            identities: self.identities.clone(),
            identity_count: self.slots.len() - self.free.len(),
            hosts_v4: self.hosts_v4.clone(),
            hosts_v6: self.hosts_v6.clone(),
            networks: Arc::clone(&self.networks),
            source_names: Arc::clone(&self.source_names),
            endpoint_count: self.hosts_v4.len()
                + self.hosts_v6.len()
                + self.network_endpoints.len(),
            conflicts: self.overlaps + self.duplicates.iter().sum::<usize>(),
        };
        (table, changed)
    }

    /// Sets (or with `None` withdraws) `source`'s claim on `net`, and moves the address to
    /// its new owner when the first claim changed.
    fn set_claim(&mut self, source: usize, net: IpNet, record: Option<&EndpointRecord>) {
        let claims = if is_host(&net) {
            self.host_claims.entry(net.addr()).or_default()
        } else {
            self.network_claims.entry(net).or_default()
        };
        let before = claims.len();
        let at = claims.iter().position(|c| c.source >= source).unwrap_or(claims.len());
        let ours = claims.get(at).is_some_and(|c| c.source == source);
        let changed = match (ours, record) {
            (true, Some(record)) if claims[at].record == *record => false,
            (true, Some(record)) => {
                claims[at].record = record.clone();
                true
            }
            (true, None) => {
                claims.remove(at);
                true
            }
            (false, Some(record)) => {
                claims.insert(at, Claim { source, record: record.clone() });
                true
            }
            (false, None) => false,
        };
        let after = claims.len();
        // The owner is the first claim of a source that is not suspended: it changed when this
        // claim is (or was) that one.
        let suspended = &self.suspended;
        let owner =
            (changed && !suspended[source] && claims[..at].iter().all(|c| suspended[c.source]))
                .then(|| claims.iter().find(|c| !suspended[c.source]).cloned());
        if after == 0 {
            if is_host(&net) {
                self.host_claims.remove(&net.addr());
            } else {
                self.network_claims.remove(&net);
            }
        }
        self.overlaps = self.overlaps + after.saturating_sub(1) - before.saturating_sub(1);
        if let Some(owner) = owner {
            self.place(net, owner);
        }
    }

    /// Makes `owner` the endpoint of `net` in the next table (`None`: nobody).
    fn place(&mut self, net: IpNet, owner: Option<Claim>) {
        let endpoint = owner.map(|claim| Endpoint {
            net,
            name: Arc::clone(&claim.record.name),
            identity: self.acquire(&claim.record),
            source: claim.source,
        });
        let old = match (net, endpoint) {
            (IpNet::V4(n), Some(e)) if is_host(&net) => self.hosts_v4.insert(n.addr().into(), e),
            (IpNet::V4(n), None) if is_host(&net) => self.hosts_v4.remove(&n.addr().into()),
            (IpNet::V6(n), Some(e)) if is_host(&net) => self.hosts_v6.insert(n.addr().into(), e),
            (IpNet::V6(n), None) if is_host(&net) => self.hosts_v6.remove(&n.addr().into()),
            (_, endpoint) => {
                self.networks_changed = true;
                match endpoint {
                    Some(e) => self.network_endpoints.insert(net, e),
                    None => self.network_endpoints.remove(&net),
                }
            }
        };
        if let Some(old) = old {
            self.release(old.identity);
        }
    }

    /// Sets (or withdraws) `source`'s labels for a namespace; relabels the namespace's
    /// identities when the labels in force change.
    fn set_namespace(
        &mut self,
        source: usize,
        cluster: &Arc<str>,
        name: &Arc<str>,
        labels: Option<Arc<Labels>>,
    ) {
        let suspended = &self.suspended;
        let in_force = |claims: &Vec<(usize, Arc<Labels>)>| {
            claims.iter().find(|c| !suspended[c.0]).map(|c| Arc::clone(&c.1))
        };
        let names = self.namespaces.entry(Arc::clone(cluster)).or_default();
        let claims = names.entry(Arc::clone(name)).or_default();
        let before = in_force(claims);
        let at = claims.iter().position(|c| c.0 >= source).unwrap_or(claims.len());
        let ours = claims.get(at).is_some_and(|c| c.0 == source);
        match (ours, labels) {
            (true, Some(labels)) => claims[at].1 = labels,
            (true, None) => {
                claims.remove(at);
            }
            (false, Some(labels)) => claims.insert(at, (source, labels)),
            (false, None) => {}
        }
        let after = in_force(claims);
        if claims.is_empty() {
            names.remove(name);
            if names.is_empty() {
                self.namespaces.remove(cluster);
            }
        }
        let (before, after) = (before.unwrap_or_default(), after.unwrap_or_default());
        if before != after {
            self.relabel_namespace(cluster, name, &after);
        }
    }

    /// Gives every identity of one namespace the namespace's new labels.
    fn relabel_namespace(&mut self, cluster: &str, namespace: &str, labels: &Arc<Labels>) {
        for id in 0..self.slots.len() {
            let Some(slot) = &mut self.slots[id] else { continue };
            if slot.identity.cluster != cluster || slot.identity.namespace != namespace {
                continue;
            }
            let id = id as u32;
            if let Ok(entry) = self.index.find_entry(slot.hash, |&x| x == id) {
                entry.remove();
            }
            let mut identity = (*slot.identity).clone();
            identity.namespace_labels = (**labels).clone();
            slot.hash = identity_hash(
                &identity.cluster,
                &identity.namespace,
                identity.kind,
                &identity.labels,
                &identity.namespace_labels,
            );
            slot.identity = Arc::new(identity);
            let (hash, identity) = (slot.hash, Arc::clone(&slot.identity));
            let slots = &self.slots;
            self.index.insert_unique(hash, id, |&x| slot_hash(slots, x));
            self.identities.row_mut(id as usize)[0] = Some(identity);
            self.changed.push(IdentityId(id));
        }
    }

    /// The labels in force for a namespace (empty when no source knows it).
    fn namespace_labels(&self, cluster: &str, namespace: &str) -> Arc<Labels> {
        self.namespaces
            .get(cluster)
            .and_then(|names| names.get(namespace))
            .and_then(|claims| claims.iter().find(|c| !self.suspended[c.0]))
            .map_or_else(|| Arc::clone(&self.empty_labels), |c| Arc::clone(&c.1))
    }

    /// The identity of a record, created if new; counts one more endpoint using it.
    fn acquire(&mut self, record: &EndpointRecord) -> IdentityId {
        let ns_labels = self.namespace_labels(&record.cluster, &record.namespace);
        let hash = identity_hash(
            &record.cluster,
            &record.namespace,
            record.kind,
            &record.labels,
            &ns_labels,
        );
        let slots = &self.slots;
        let found = self.index.find(hash, |&id| {
            slots[id as usize].as_ref().is_some_and(|slot| {
                let identity = &*slot.identity;
                identity.kind == record.kind
                    && *identity.cluster == *record.cluster
                    && *identity.namespace == *record.namespace
                    && identity.labels == *record.labels
                    && identity.namespace_labels == *ns_labels
            })
        });
        if let Some(&id) = found {
            if let Some(slot) = &mut self.slots[id as usize] {
                slot.endpoints += 1;
            }
            return IdentityId(id);
        }
        let identity = Arc::new(Identity {
            cluster: record.cluster.to_string(),
            namespace: record.namespace.to_string(),
            kind: record.kind,
            labels: (*record.labels).clone(),
            namespace_labels: (*ns_labels).clone(),
        });
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        self.slots[id as usize] =
            Some(Slot { identity: Arc::clone(&identity), hash, endpoints: 1 });
        let slots = &self.slots;
        self.index.insert_unique(hash, id, |&x| slot_hash(slots, x));
        self.identities.grow_to(self.slots.len());
        self.identities.row_mut(id as usize)[0] = Some(identity);
        self.changed.push(IdentityId(id));
        IdentityId(id)
    }

    /// One endpoint fewer uses `id`; the identity goes when none does.
    fn release(&mut self, id: IdentityId) {
        let Some(slot) = &mut self.slots[id.0 as usize] else { return };
        slot.endpoints -= 1;
        if slot.endpoints > 0 {
            return;
        }
        if let Ok(entry) = self.index.find_entry(slot.hash, |&x| x == id.0) {
            entry.remove();
        }
        self.slots[id.0 as usize] = None;
        self.free.push(id.0);
        self.identities.row_mut(id.0 as usize)[0] = None;
    }
}

fn slot_hash(slots: &[Option<Slot>], id: u32) -> u64 {
    slots[id as usize].as_ref().map_or(0, |slot| slot.hash)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use crate::labels::{EndpointChange, NamespaceRecord};
    use crate::policy::CompiledPolicy;
    use crate::snapshot::{RuleHits, Snapshot};

    /// A small deterministic generator (no dependency for a test).
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Arc<Labels> {
        Arc::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn record(
        net: IpNet,
        namespace: &str,
        name: &str,
        kind: EndpointKind,
        app: &str,
    ) -> EndpointRecord {
        EndpointRecord {
            net,
            cluster: "c1".into(),
            namespace: namespace.into(),
            name: name.into(),
            kind,
            terminating: false,
            created: 0,
            labels: labels(&[("app", app)]),
        }
    }

    /// What each source says, as full views.
    #[derive(Default, Clone)]
    struct View {
        endpoints: BTreeMap<IpNet, EndpointRecord>,
        namespaces: BTreeMap<String, Arc<Labels>>,
    }

    impl View {
        fn records(&self, name: &str) -> SourceRecords {
            SourceRecords {
                source: name.into(),
                endpoints: self.endpoints.values().cloned().collect(),
                namespaces: self
                    .namespaces
                    .iter()
                    .map(|(ns, labels)| NamespaceRecord {
                        cluster: "c1".into(),
                        name: ns.clone(),
                        labels: Arc::clone(labels),
                    })
                    .collect(),
            }
        }
    }

    const NAMES: [&str; 3] = ["kubernetes:a", "kubernetes:b", "inventory:x"];

    fn probes() -> Vec<IpAddr> {
        (0..48u8)
            .map(|i| IpAddr::from([10, 0, 0, i]))
            .chain(["10.0.1.1".parse().unwrap(), "fd00::7".parse().unwrap()])
            .collect()
    }

    fn random_record(rng: &mut Lcg, net: IpNet, source: usize) -> EndpointRecord {
        let namespace = ["ns1", "ns2", ""][rng.below(3) as usize];
        let kind = if namespace.is_empty() { EndpointKind::Node } else { EndpointKind::Pod };
        let app = ["a", "b", "c"][rng.below(3) as usize];
        record(net, namespace, &format!("s{source}-{}", rng.below(4)), kind, app)
    }

    fn random_net(rng: &mut Lcg) -> IpNet {
        match rng.below(20) {
            0 => "10.0.0.0/28".parse().unwrap(),
            1 => "10.0.0.0/24".parse().unwrap(),
            2 => "fd00::7/128".parse().unwrap(),
            _ => IpNet::from(IpAddr::from([10, 0, 0, rng.below(40) as u8])),
        }
    }

    /// Describes what a table says about an address, independent of identity ids.
    fn describe(table: &LabelTable, ip: IpAddr) -> Option<String> {
        table.lookup(ip).map(|e| {
            let identity = table.identity(e.identity);
            format!("{} {} {} {identity:?}", e.net, e.name, table.source_name(e))
        })
    }

    #[test]
    fn changes_applied_one_by_one_give_the_table_a_full_build_gives() {
        let policy = Arc::new(
            CompiledPolicy::parse(
                Path::new("policy.yaml"),
                "default_action: deny\ngroups:\n  a:\n    pods: {selector: \"app=a\"}\n  books:\n    pods: {namespace_selector: \"team=books\"}\n  nodes-b:\n    nodes: {selector: \"app in (b,c)\"}\n  not-c:\n    pods: {selector: \"app!=c\"}\nrules: []\n",
            )
            .unwrap(),
        );
        let hits = Arc::new(RuleHits::new(1, 0));
        let mut rng = Lcg(7);
        let mut views = vec![View::default(); NAMES.len()];
        let mut builder = LabelBuilder::new(NAMES.iter().map(|s| s.to_string()).collect());
        let mut snapshot =
            Snapshot::new(0, Arc::new(builder.publish().0), Arc::clone(&policy), Arc::clone(&hits));
        for step in 1..=600u64 {
            let source = rng.below(3) as usize;
            if rng.below(12) == 0 {
                // A live source lost for too long, or back: suspended or resumed, its claims
                // kept (and still changed while suspended).
                let live = rng.below(2) as usize;
                builder.set_suspended(live, !builder.is_suspended(live));
            }
            if source == 2 {
                // An inventory reload: a new full view.
                let mut view = View::default();
                for _ in 0..rng.below(12) {
                    let net = random_net(&mut rng);
                    view.endpoints
                        .insert(net.trunc(), random_record(&mut rng, net.trunc(), source));
                }
                if rng.below(2) == 0 {
                    view.namespaces.insert("ns2".into(), labels(&[("team", "ops")]));
                }
                builder.replace_source(source, &view.records(NAMES[source]));
                views[source] = view;
            } else {
                let mut changes = SourceChanges::default();
                for _ in 0..1 + rng.below(3) {
                    if rng.below(8) == 0 {
                        let ns = ["ns1", "ns2"][rng.below(2) as usize];
                        let labels = match rng.below(3) {
                            0 => None,
                            1 => Some(labels(&[("team", "books")])),
                            _ => Some(labels(&[("team", "films")])),
                        };
                        match &labels {
                            Some(l) => views[source].namespaces.insert(ns.into(), Arc::clone(l)),
                            None => views[source].namespaces.remove(ns),
                        };
                        changes.namespaces.push(NamespaceChange {
                            cluster: "c1".into(),
                            name: ns.into(),
                            labels,
                        });
                    } else {
                        let net = IpNet::from(IpAddr::from([10, 0, 0, rng.below(40) as u8]));
                        let record =
                            (rng.below(3) != 0).then(|| random_record(&mut rng, net, source));
                        match &record {
                            Some(r) => views[source].endpoints.insert(net, r.clone()),
                            None => views[source].endpoints.remove(&net),
                        };
                        changes.endpoints.push(EndpointChange { net, record });
                    }
                }
                builder.apply_changes(source, &changes);
            }
            let (table, changed) = builder.publish();
            let table = Arc::new(table);
            snapshot = snapshot.next(
                step,
                Arc::clone(&table),
                Arc::clone(&policy),
                Arc::clone(&hits),
                &changed,
            );
            // A suspended source counts as one that claims nothing.
            let in_force = |(i, v): (usize, &View)| {
                if builder.is_suspended(i) { View::default() } else { v.clone() }
            };
            let full = LabelTable::build(
                &views
                    .iter()
                    .enumerate()
                    .map(in_force)
                    .zip(NAMES)
                    .map(|(v, n)| Arc::new(v.records(n)))
                    .collect::<Vec<_>>(),
            );
            let fresh =
                Snapshot::new(step, Arc::new(full.clone()), Arc::clone(&policy), Arc::clone(&hits));
            for ip in probes() {
                assert_eq!(describe(&table, ip), describe(&full, ip), "step {step}, {ip}");
                assert_eq!(snapshot.groups_of(ip), fresh.groups_of(ip), "step {step}, {ip}");
            }
            assert_eq!(table.identity_count(), full.identity_count(), "step {step}");
            assert_eq!(table.endpoint_count(), full.endpoint_count(), "step {step}");
            if !(0..NAMES.len()).any(|i| builder.is_suspended(i)) {
                // A suspended source's claims are still there, and still counted as conflicts.
                assert_eq!(table.conflicts(), full.conflicts(), "step {step}");
            }
        }
    }

    #[test]
    fn a_later_source_takes_an_address_over_when_the_first_lets_go() {
        let net: IpNet = "10.0.0.5/32".parse().unwrap();
        let mut builder = LabelBuilder::new(NAMES.iter().map(|s| s.to_string()).collect());
        let inventory = SourceRecords {
            source: NAMES[2].into(),
            endpoints: vec![record(net, "ns1", "static", EndpointKind::External, "db")],
            namespaces: vec![],
        };
        builder.replace_source(2, &inventory);
        let pod = record(net, "ns1", "pod", EndpointKind::Pod, "web");
        let upsert = SourceChanges {
            endpoints: vec![EndpointChange { net, record: Some(pod) }],
            ..SourceChanges::default()
        };
        builder.apply_changes(0, &upsert);
        let (table, _) = builder.publish();
        assert_eq!(&*table.lookup(net.addr()).unwrap().name, "pod");
        assert_eq!(table.conflicts(), 1);
        let remove = SourceChanges {
            endpoints: vec![EndpointChange { net, record: None }],
            ..SourceChanges::default()
        };
        builder.apply_changes(0, &remove);
        let (after, changed) = builder.publish();
        let endpoint = after.lookup(net.addr()).unwrap();
        assert_eq!((&*endpoint.name, after.source_name(endpoint)), ("static", "inventory:x"));
        assert_eq!((after.conflicts(), after.identity_count()), (0, 1));
        assert_eq!(changed.len(), 1, "only winners hold identities: the static one is made again");
        // The earlier table is untouched.
        assert_eq!(&*table.lookup(net.addr()).unwrap().name, "pod");
    }

    #[test]
    fn an_unused_identity_is_freed_and_its_id_reused_as_changed() {
        let mut builder = LabelBuilder::new(vec![NAMES[0].into()]);
        let a: IpNet = "10.0.0.1/32".parse().unwrap();
        let set = |app: &str| SourceChanges {
            endpoints: vec![EndpointChange {
                net: a,
                record: Some(record(a, "ns1", "p", EndpointKind::Pod, app)),
            }],
            ..SourceChanges::default()
        };
        builder.apply_changes(0, &set("a"));
        let (first, changed) = builder.publish();
        assert_eq!(changed, [IdentityId(0)]);
        builder.apply_changes(0, &set("b"));
        let (second, changed) = builder.publish();
        // "b" was created before "a" was released, so it took a new id; "a" is free now.
        assert_eq!(changed, [IdentityId(1)]);
        assert_eq!((second.identity_count(), second.get_identity(IdentityId(0))), (1, None));
        assert_eq!(first.identity(IdentityId(0)).labels.get("app").unwrap(), "a");
        builder.apply_changes(0, &set("c"));
        let (third, changed) = builder.publish();
        assert_eq!(changed, [IdentityId(0)], "the free id is reused and reported");
        assert_eq!(third.identity(IdentityId(0)).labels.get("app").unwrap(), "c");
    }
}
