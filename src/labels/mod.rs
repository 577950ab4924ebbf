//! Who an address is: identities and the immutable IP -> identity table.
//!
//! Label sources (inventory files, Kubernetes watchers) hand in plain records; [`LabelTable::build`]
//! interns every distinct (cluster, namespace, kind, labels, namespace labels) set once as an
//! [`Identity`] and maps each address or network to the endpoint that owns it. A table is
//! never changed after it is built: a new one is built off to the side and published whole,
//! so data-plane lookups need no lock.
//!
//! Must not depend on: policy, sockets, async. Invariant: every `IdentityId` and endpoint
//! index stored in a table is valid for that table.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::prefix::PrefixMap;

/// Label key -> value, ordered (so that equal sets compare and hash equal).
pub type Labels = BTreeMap<String, String>;

/// What kind of thing an endpoint is; decides which group kinds can select it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    Pod,
    Node,
    External,
}

impl EndpointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointKind::Pod => "pod",
            EndpointKind::Node => "node",
            EndpointKind::External => "external",
        }
    }
}

impl fmt::Display for EndpointKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Index of an identity in its [`LabelTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityId(pub u32);

/// A set of endpoints that policy cannot tell apart: same cluster, namespace, kind and labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub cluster: String,
    /// Empty for nodes and external endpoints outside any namespace.
    pub namespace: String,
    pub kind: EndpointKind,
    pub labels: Labels,
    /// Labels of the namespace (for `namespace_selector`).
    pub namespace_labels: Labels,
}

/// One address or network as a label source reports it. The strings and the label set are
/// shared (`Arc`), so that a source can hand over a full view of 100k pods without copying
/// them, and views compare cheaply (pointer equality first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRecord {
    pub net: IpNet,
    pub cluster: Arc<str>,
    pub namespace: Arc<str>,
    /// Pod, node or VM name: shown in `explain` and flow logs, not part of the identity.
    pub name: Arc<str>,
    pub kind: EndpointKind,
    pub labels: Arc<Labels>,
}

/// A namespace and its labels as a label source reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRecord {
    pub cluster: String,
    pub name: String,
    pub labels: Arc<Labels>,
}

/// Everything one label source currently knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceRecords {
    /// `inventory:<path>` or `kubernetes:<cluster>`.
    pub source: String,
    pub endpoints: Vec<EndpointRecord>,
    pub namespaces: Vec<NamespaceRecord>,
}

/// The owner of an address in a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub net: IpNet,
    pub name: Arc<str>,
    pub identity: IdentityId,
    /// Index of the source in the slice the table was built from.
    pub source: usize,
}

/// The immutable IP -> endpoint -> identity table.
#[derive(Debug, Clone, Default)]
pub struct LabelTable {
    identities: Vec<Identity>,
    endpoints: Vec<Endpoint>,
    source_names: Vec<String>,
    hosts_v4: FxHashMap<u32, u32>,
    hosts_v6: FxHashMap<u128, u32>,
    networks: PrefixMap<u32>,
    conflicts: usize,
}

impl LabelTable {
    /// Builds a table from every source's records. When two records claim the same address
    /// or network, the one from the earlier source (then the earlier record) wins and the
    /// other is counted in [`LabelTable::conflicts`].
    pub fn build(sources: &[Arc<SourceRecords>]) -> LabelTable {
        let mut namespace_labels: HashMap<(&str, &str), &Labels> = HashMap::new();
        for source in sources {
            for ns in &source.namespaces {
                namespace_labels.entry((&ns.cluster, &ns.name)).or_insert(&*ns.labels);
            }
        }
        let empty = Labels::new();
        let mut table = LabelTable {
            source_names: sources.iter().map(|s| s.source.clone()).collect(),
            ..LabelTable::default()
        };
        // Interning without building an `Identity` per record: identities are found by the hash
        // of the record's borrowed fields, with a chain through `next` for equal hashes.
        let hasher = rustc_hash::FxBuildHasher;
        let mut first_with_hash: FxHashMap<u64, u32> = FxHashMap::default();
        let mut next: Vec<u32> = Vec::new();
        for (source_index, source) in sources.iter().enumerate() {
            for record in &source.endpoints {
                let ns_labels = namespace_labels
                    .get(&(&*record.cluster, &*record.namespace))
                    .copied()
                    .unwrap_or(&empty);
                let hash = hasher.hash_one((
                    &*record.cluster,
                    &*record.namespace,
                    record.kind,
                    &*record.labels,
                    ns_labels,
                ));
                let mut candidate = first_with_hash.get(&hash).copied();
                let found = loop {
                    let Some(id) = candidate else { break None };
                    let identity = &table.identities[id as usize];
                    if identity.kind == record.kind
                        && *identity.cluster == *record.cluster
                        && *identity.namespace == *record.namespace
                        && identity.labels == *record.labels
                        && identity.namespace_labels == *ns_labels
                    {
                        break Some(IdentityId(id));
                    }
                    candidate = Some(next[id as usize]).filter(|&n| n != u32::MAX);
                };
                let id = found.unwrap_or_else(|| {
                    let id = table.identities.len() as u32;
                    table.identities.push(Identity {
                        cluster: record.cluster.to_string(),
                        namespace: record.namespace.to_string(),
                        kind: record.kind,
                        labels: (*record.labels).clone(),
                        namespace_labels: ns_labels.clone(),
                    });
                    next.push(first_with_hash.insert(hash, id).unwrap_or(u32::MAX));
                    IdentityId(id)
                });
                table.insert(record, id, source_index);
            }
        }
        table
    }

    fn insert(&mut self, record: &EndpointRecord, identity: IdentityId, source: usize) {
        let index = self.endpoints.len() as u32;
        let inserted = match record.net {
            IpNet::V4(n) if n.prefix_len() == 32 => {
                try_insert(&mut self.hosts_v4, u32::from(n.addr()), index)
            }
            IpNet::V6(n) if n.prefix_len() == 128 => {
                try_insert(&mut self.hosts_v6, u128::from(n.addr()), index)
            }
            net => {
                let mut fresh = true;
                self.networks.insert_with(net.trunc(), index, |_, _| fresh = false);
                fresh
            }
        };
        if inserted {
            self.endpoints.push(Endpoint {
                net: record.net.trunc(),
                name: record.name.clone(),
                identity,
                source,
            });
        } else {
            self.conflicts += 1;
        }
    }

    /// The endpoint that owns `ip`: an exact address first, else the longest network.
    pub fn lookup(&self, ip: IpAddr) -> Option<&Endpoint> {
        let index = match ip {
            IpAddr::V4(a) => self.hosts_v4.get(&u32::from(a)),
            IpAddr::V6(a) => self.hosts_v6.get(&u128::from(a)),
        };
        let index = index.or_else(|| self.networks.longest_match(ip))?;
        self.endpoints.get(*index as usize)
    }

    /// The identity of `ip`, if any source knows it (the per-packet question).
    #[inline]
    pub fn identity_of(&self, ip: IpAddr) -> Option<IdentityId> {
        self.lookup(ip).map(|e| e.identity)
    }

    pub fn identity(&self, id: IdentityId) -> &Identity {
        &self.identities[id.0 as usize]
    }

    pub fn identities(&self) -> &[Identity] {
        &self.identities
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Name of the source an endpoint came from.
    pub fn source_name(&self, endpoint: &Endpoint) -> &str {
        &self.source_names[endpoint.source]
    }

    /// Records that lost to an earlier record for the same address or network.
    pub fn conflicts(&self) -> usize {
        self.conflicts
    }
}

fn try_insert<K: std::hash::Hash + Eq>(map: &mut FxHashMap<K, u32>, key: K, index: u32) -> bool {
    match map.entry(key) {
        std::collections::hash_map::Entry::Occupied(_) => false,
        std::collections::hash_map::Entry::Vacant(slot) => {
            slot.insert(index);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn pod(ip: &str, name: &str, app: &str) -> EndpointRecord {
        EndpointRecord {
            net: ip.parse().unwrap(),
            cluster: "demo".into(),
            namespace: "bookinfo".into(),
            name: name.into(),
            kind: EndpointKind::Pod,
            labels: Arc::new(labels(&[("app", app)])),
        }
    }

    fn source(name: &str, endpoints: Vec<EndpointRecord>) -> Arc<SourceRecords> {
        Arc::new(SourceRecords {
            source: name.into(),
            endpoints,
            namespaces: vec![NamespaceRecord {
                cluster: "demo".into(),
                name: "bookinfo".into(),
                labels: Arc::new(labels(&[("team", "books")])),
            }],
        })
    }

    #[test]
    fn pods_with_the_same_labels_share_one_identity() {
        let table = LabelTable::build(&[source(
            "inventory:a",
            vec![
                pod("10.0.1.10/32", "ratings-1", "ratings"),
                pod("10.0.1.11/32", "ratings-2", "ratings"),
                pod("10.0.1.20/32", "other-1", "other"),
            ],
        )]);
        assert_eq!(table.identities().len(), 2);
        let a = table.lookup("10.0.1.10".parse().unwrap()).unwrap();
        let b = table.lookup("10.0.1.11".parse().unwrap()).unwrap();
        assert_eq!(a.identity, b.identity);
        assert_eq!((&*a.name, &*b.name), ("ratings-1", "ratings-2"));
        let other = table.identity_of("10.0.1.20".parse().unwrap()).unwrap();
        assert_ne!(other, a.identity);
        let identity = table.identity(a.identity);
        assert_eq!(identity.labels, labels(&[("app", "ratings")]));
        assert_eq!(identity.namespace_labels, labels(&[("team", "books")]));
        assert_eq!(table.source_name(a), "inventory:a");
    }

    #[test]
    fn exact_address_beats_network_and_unknown_is_none() {
        let mut db = pod("10.20.0.0/24", "db-subnet", "db");
        db.kind = EndpointKind::External;
        let table = LabelTable::build(&[source(
            "inventory:a",
            vec![db, pod("10.20.0.7/32", "special", "cache"), pod("fd00::5/128", "v6", "web")],
        )]);
        assert_eq!(&*table.lookup("10.20.0.7".parse().unwrap()).unwrap().name, "special");
        assert_eq!(&*table.lookup("10.20.0.8".parse().unwrap()).unwrap().name, "db-subnet");
        assert_eq!(&*table.lookup("fd00::5".parse().unwrap()).unwrap().name, "v6");
        assert!(table.lookup("10.21.0.1".parse().unwrap()).is_none());
        assert!(table.lookup("fd00::6".parse().unwrap()).is_none());
    }

    #[test]
    fn first_source_wins_a_conflict_and_it_is_counted() {
        let table = LabelTable::build(&[
            source("kubernetes:demo", vec![pod("10.0.1.10/32", "new-owner", "other")]),
            source("inventory:a", vec![pod("10.0.1.10/32", "stale", "ratings")]),
        ]);
        assert_eq!(&*table.lookup("10.0.1.10".parse().unwrap()).unwrap().name, "new-owner");
        assert_eq!(table.conflicts(), 1);
    }
}
