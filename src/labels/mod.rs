//! Who an address is: identities and the immutable IP -> identity table.
//!
//! Label sources (inventory files, Kubernetes watchers) hand in plain records, as full views
//! or as changes; [`LabelBuilder`] interns every distinct (cluster, namespace, kind, labels,
//! namespace labels) set once as an [`Identity`] and maps each address or network to the
//! endpoint that owns it. A published [`LabelTable`] is never changed: the next one is made
//! off to the side, sharing what did not change (`shared`), and published whole, so
//! data-plane lookups need no lock.
//!
//! Must not depend on: policy, sockets, async. Invariant: every `IdentityId` and endpoint
//! index stored in a table is valid for that table.

mod builder;
pub mod shared;
pub mod syntax;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use self::builder::LabelBuilder;
use self::shared::{Chunked, ShardedMap};
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
/// shared (`Arc`), so that the copies a source, its reports and the label builder keep of
/// 100k pods share their text, and records compare cheaply. `terminating` and `created` rank
/// the claims of sources that claim the same address ([`LabelBuilder`]); they fit in the
/// padding after `kind`, so a record is no larger with them (80 bytes on 64-bit targets).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointRecord {
    pub net: IpNet,
    pub cluster: Arc<str>,
    pub namespace: Arc<str>,
    /// Pod, node or VM name: shown in `explain` and flow logs, not part of the identity.
    pub name: Arc<str>,
    pub kind: EndpointKind,
    /// A pod being deleted (`deletionTimestamp` set): it loses to any claimant that is not.
    pub terminating: bool,
    /// Creation time in seconds since the Unix epoch ([`created_seconds`]); 0 when the
    /// claimant has none (inventory entries, nodes, a pod without a readable
    /// `creationTimestamp`), which ranks as the oldest.
    pub created: u32,
    pub labels: Arc<Labels>,
}

/// A creation time (seconds since the Unix epoch) as [`EndpointRecord::created`] holds it:
/// clamped to 0 (before 1970) ..= `u32::MAX` (2106).
pub fn created_seconds(unix: i64) -> u32 {
    u32::try_from(unix.max(0)).unwrap_or(u32::MAX)
}

/// Why a claim on an address loses to the claim that owns it, in the order the rules are
/// applied: across sources (the label builder) a withdrawn source, a lost source, a
/// terminating pod, an older creation time, then the later source in the configuration;
/// inside one cluster (its store) a terminating pod, an older pod, a node against a pod, then
/// the tie-break (UID of pods, name of nodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Its source is withdrawn (lost longer than its `max_stale`): it owns nothing.
    Withdrawn,
    /// Its source has lost its origin (API server) and the owner's has not.
    LostSource,
    /// A terminating pod, and the owner is not terminating.
    Terminating,
    /// Created before the owner.
    Older,
    /// As new as the owner, from a source later in the configuration.
    LaterInConfig,
    /// A node's address that a pod of the same cluster has.
    Node,
    /// As new as the owner in the same cluster: the greater UID (pods) or the lesser name
    /// (nodes) wins.
    TieBreak,
}

impl Loss {
    pub fn as_str(self) -> &'static str {
        match self {
            Loss::Withdrawn => "withdrawn source",
            Loss::LostSource => "lost source",
            Loss::Terminating => "terminating",
            Loss::Older => "older",
            Loss::LaterInConfig => "later in config",
            Loss::Node => "node against a pod",
            Loss::TieBreak => "tie-break",
        }
    }
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An address that became contested: its owner, the best claim that lost, and why it lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contest {
    pub net: IpNet,
    pub winner: EndpointRecord,
    pub loser: EndpointRecord,
    pub loss: Loss,
}

impl EndpointRecord {
    /// `cluster/namespace/name`, leaving out what is empty (for logs and `explain`).
    pub fn path(&self) -> String {
        [&*self.cluster, &*self.namespace, &*self.name]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("/")
    }
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

impl SourceRecords {
    /// Folds changes into a full view (endpoints kept sorted by network, namespaces by
    /// cluster and name): how a one-shot reader or a test turns a change stream into a view.
    pub fn apply(&mut self, changes: &SourceChanges) {
        for change in &changes.namespaces {
            let key = (&*change.cluster, &*change.name);
            let at = self
                .namespaces
                .binary_search_by(|ns| (ns.cluster.as_str(), ns.name.as_str()).cmp(&key));
            match (at, &change.labels) {
                (Ok(i), Some(labels)) => self.namespaces[i].labels = Arc::clone(labels),
                (Ok(i), None) => {
                    self.namespaces.remove(i);
                }
                (Err(i), Some(labels)) => self.namespaces.insert(
                    i,
                    NamespaceRecord {
                        cluster: change.cluster.to_string(),
                        name: change.name.to_string(),
                        labels: Arc::clone(labels),
                    },
                ),
                (Err(_), None) => {}
            }
        }
        for change in &changes.endpoints {
            let at = self.endpoints.binary_search_by(|e| e.net.cmp(&change.net));
            match (at, &change.record) {
                (Ok(i), Some(record)) => self.endpoints[i] = record.clone(),
                (Ok(i), None) => {
                    self.endpoints.remove(i);
                }
                (Err(i), Some(record)) => self.endpoints.insert(i, record.clone()),
                (Err(_), None) => {}
            }
        }
    }
}

/// An address or network a source now says `record` owns, or (`None`) no longer knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointChange {
    pub net: IpNet,
    pub record: Option<EndpointRecord>,
}

/// A namespace's new labels, or (`None`) its removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceChange {
    pub cluster: Arc<str>,
    pub name: Arc<str>,
    pub labels: Option<Arc<Labels>>,
}

/// What changed in a source since what it last reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceChanges {
    pub endpoints: Vec<EndpointChange>,
    pub namespaces: Vec<NamespaceChange>,
    /// Conflicts decided inside the source since its last report: each time one of its
    /// claimants joined an address another of its claimants already held (a pod and a pod,
    /// a pod and a node of one cluster). Counted for the source.
    pub conflicts: u64,
    /// Some of those addresses, for the log (at most a few per report; `conflicts` is the
    /// count).
    pub contests: Vec<Contest>,
}

impl SourceChanges {
    /// Whether the table is unchanged by these changes (conflicts change no owner the
    /// source reports: its owners are in `endpoints`).
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty() && self.namespaces.is_empty()
    }
}

/// The owner of an address in a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub net: IpNet,
    pub name: Arc<str>,
    pub identity: IdentityId,
    /// Index of the source (in configuration order) the endpoint came from.
    pub source: usize,
}

/// Who an address is, kept apart from the table it was looked up in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    /// Pod, node or VM name.
    pub name: Arc<str>,
    pub identity: Arc<Identity>,
}

/// The immutable IP -> endpoint -> identity table. Built by [`LabelBuilder`]; a table shares
/// the parts that did not change with the table published before it.
#[derive(Debug, Clone)]
pub struct LabelTable {
    /// By identity id; `None` for ids no endpoint uses (free for reuse).
    identities: Chunked<Option<Arc<Identity>>>,
    identity_count: usize,
    hosts_v4: ShardedMap<u32, Endpoint>,
    hosts_v6: ShardedMap<u128, Endpoint>,
    networks: Arc<PrefixMap<Endpoint>>,
    source_names: Arc<[String]>,
    endpoint_count: usize,
    conflicts: usize,
}

impl Default for LabelTable {
    fn default() -> Self {
        LabelBuilder::new(Vec::new()).publish().0
    }
}

impl LabelTable {
    /// Builds a table from every source's records, every source connected. When two records
    /// claim the same address or network, the ranking of [`LabelBuilder`] decides between
    /// sources (within one source the earlier record wins), and the loser is counted in
    /// [`LabelTable::conflicts`].
    pub fn build(sources: &[Arc<SourceRecords>]) -> LabelTable {
        let mut builder = LabelBuilder::new(sources.iter().map(|s| s.source.clone()).collect());
        for (index, source) in sources.iter().enumerate() {
            builder.replace_source(index, source);
        }
        builder.publish().0
    }

    /// The endpoint that owns `ip`: an exact address first, else the longest network.
    #[inline]
    pub fn lookup(&self, ip: IpAddr) -> Option<&Endpoint> {
        let host = match ip {
            IpAddr::V4(a) => self.hosts_v4.get(&u32::from(a)),
            IpAddr::V6(a) => self.hosts_v6.get(&u128::from(a)),
        };
        host.or_else(|| self.networks.longest_match(ip))
    }

    /// The identity of `ip`, if any source knows it (the per-packet question).
    #[inline]
    pub fn identity_of(&self, ip: IpAddr) -> Option<IdentityId> {
        self.lookup(ip).map(|e| e.identity)
    }

    /// The identity behind an id taken from this table's endpoints.
    pub fn identity(&self, id: IdentityId) -> &Identity {
        self.get_identity(id).expect("an identity id of this table")
    }

    /// Who `ip` is, as a record that outlives this table: the endpoint's name and its shared
    /// identity (two reference counts, no copy).
    pub fn who(&self, ip: IpAddr) -> Option<Who> {
        let endpoint = self.lookup(ip)?;
        let index = endpoint.identity.0 as usize;
        let identity = self.identities.row(index).first()?.as_ref()?;
        Some(Who { name: Arc::clone(&endpoint.name), identity: Arc::clone(identity) })
    }

    /// The identity behind an id, if the id is in use.
    pub fn get_identity(&self, id: IdentityId) -> Option<&Identity> {
        let index = id.0 as usize;
        (index < self.identities.rows()).then(|| self.identities.row(index)[0].as_deref()).flatten()
    }

    /// Every live identity with its id.
    pub fn identities(&self) -> impl Iterator<Item = (IdentityId, &Identity)> {
        (0..self.identities.rows()).filter_map(|i| {
            self.identities.row(i)[0].as_deref().map(|identity| (IdentityId(i as u32), identity))
        })
    }

    /// Ids in use are below this.
    pub fn identity_id_bound(&self) -> usize {
        self.identities.rows()
    }

    /// Live identities.
    pub fn identity_count(&self) -> usize {
        self.identity_count
    }

    /// Addresses and networks with an owner.
    pub fn endpoint_count(&self) -> usize {
        self.endpoint_count
    }

    /// Name of the source an endpoint came from.
    pub fn source_name(&self, endpoint: &Endpoint) -> &str {
        &self.source_names[endpoint.source]
    }

    /// Records that lose to another record for the same address or network, now (what
    /// `labelwall check` warns about; the metric counts conflicts as they happen instead).
    pub fn conflicts(&self) -> usize {
        self.conflicts
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
            terminating: false,
            created: 0,
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
        assert_eq!(table.identity_count(), 2);
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
    #[cfg(target_pointer_width = "64")]
    fn a_record_with_its_ranking_fields_is_no_larger_than_without() {
        // 1M pods are a target: terminating and created fill padding after `kind`.
        assert_eq!(std::mem::size_of::<EndpointRecord>(), 80);
        assert_eq!((created_seconds(-5), created_seconds(1 << 40)), (0, u32::MAX));
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
