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
//! Rules kept here: when several sources claim an address or network, the owner is the claim
//! of a source that is not withdrawn ([`LabelBuilder::set_suspended`]: the others own
//! nothing), then of a connected source before a lost one ([`LabelBuilder::set_connected`]),
//! then a claimant that is not terminating, then the newest creation time (a record without
//! one, such as an inventory entry, is the oldest), then the earlier source in configuration
//! order; the others take over when it lets go. Each claim that joins an address another
//! source claims is a conflict, counted for the joining source (and so are the conflicts a
//! source decided inside itself and reports with its changes); a few are kept in detail for
//! the log ([`LabelBuilder::take_contests`]). An identity lives while an endpoint uses it, and
//! its id is reused after that (the ids handed out by `publish` as changed include reused
//! ones); all identities of a (cluster, namespace) carry the namespace's current labels (the
//! first claim in configuration order of a source that is not withdrawn).
//!
//! A source's change of state (connected or lost) re-places only the addresses it shares with
//! another source, found through an index of contested addresses per source, so it costs
//! nothing for a source that shares none.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;

use hashbrown::HashTable;
use ipnet::IpNet;
use rustc_hash::{FxBuildHasher, FxHashMap, FxHashSet};

use super::shared::{Chunked, ShardedMap};
use super::{
    Contest, Endpoint, EndpointKind, EndpointRecord, Identity, IdentityId, LabelTable, Labels,
    Loss, NamespaceChange, SourceChanges, SourceRecords,
};
use crate::prefix::PrefixMap;

/// One source's claim on an address or network.
#[derive(Debug, Clone)]
struct Claim {
    source: usize,
    record: EndpointRecord,
}

/// Contested addresses kept for [`LabelBuilder::take_contests`] at most (the rest are only
/// counted).
const PENDING_CONTESTS: usize = 64;

/// What the builder knows of each source's state, which ranks its claims.
#[derive(Debug)]
struct Standing {
    /// Its claims are kept but own nothing (a source lost for too long).
    suspended: Vec<bool>,
    /// In touch with its origin (inventory files always are; a Kubernetes source while its
    /// API server answers).
    connected: Vec<bool>,
}

impl Standing {
    /// How a claim ranks against the other claims of its address: the greatest owns it.
    fn rank(&self, claim: &Claim) -> (bool, bool, bool, u32, Reverse<usize>) {
        let source = claim.source;
        let record = &claim.record;
        (
            !self.suspended[source],
            self.connected[source],
            !record.terminating,
            record.created,
            Reverse(source),
        )
    }

    /// The claim that owns the address: the best of a source that is not suspended.
    fn owner<'a>(&self, claims: &'a [Claim]) -> Option<&'a Claim> {
        claims.iter().max_by_key(|c| self.rank(c)).filter(|c| !self.suspended[c.source])
    }

    /// The claims, best first.
    fn ranked<'a>(&self, claims: &'a [Claim]) -> Vec<&'a Claim> {
        let mut ranked: Vec<&Claim> = claims.iter().collect();
        ranked.sort_by_key(|c| Reverse(self.rank(c)));
        ranked
    }

    /// Why `loser` ranks below `winner`.
    fn loss(&self, winner: &Claim, loser: &Claim) -> Loss {
        let (w, l) = (&winner.record, &loser.record);
        if self.suspended[loser.source] {
            Loss::Withdrawn
        } else if self.connected[winner.source] != self.connected[loser.source] {
            Loss::LostSource
        } else if w.terminating != l.terminating {
            Loss::Terminating
        } else if w.created != l.created {
            Loss::Older
        } else {
            Loss::LaterInConfig
        }
    }
}

/// One claim on an address as [`LabelBuilder::claimants`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimant {
    /// Index of the source in configuration order.
    pub source: usize,
    pub record: EndpointRecord,
    /// `None` for the owner; why the claim loses to the owner otherwise (`Withdrawn` for
    /// every claim when none owns the address).
    pub loss: Option<Loss>,
}

/// An address that became contested between sources, or inside one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceContest {
    /// The source counted: the one whose claim made the address contested.
    pub source: usize,
    pub winner_source: usize,
    pub loser_source: usize,
    pub contest: Contest,
}

/// A live identity.
#[derive(Debug)]
struct Slot {
    identity: Arc<Identity>,
    hash: u64,
    /// Endpoints of the table that have this identity.
    endpoints: u32,
    /// Changes whenever the slot holds another identity, so that what
    /// [`LabelBuilder::recent`] remembers of it can be checked. (A relabel keeps it: every
    /// identity of the namespace gets the namespace's new labels in place, so records that
    /// named an identity still name the right one.)
    generation: u64,
}

/// A record's identity as the values it shares name it: its cluster's, namespace's and
/// labels' shared copies (compared by address) and its kind. Sources share those values
/// between records (the pods of a ReplicaSet have one label set), so most records find their
/// identity here without hashing or comparing label maps. The key holds the values, so no
/// address is reused while it is remembered.
#[derive(Debug, Clone)]
struct SharedValues {
    cluster: Arc<str>,
    namespace: Arc<str>,
    labels: Arc<Labels>,
    kind: EndpointKind,
}

impl SharedValues {
    fn of(record: &EndpointRecord) -> SharedValues {
        SharedValues {
            cluster: Arc::clone(&record.cluster),
            namespace: Arc::clone(&record.namespace),
            labels: Arc::clone(&record.labels),
            kind: record.kind,
        }
    }
}

impl PartialEq for SharedValues {
    fn eq(&self, other: &SharedValues) -> bool {
        Arc::ptr_eq(&self.cluster, &other.cluster)
            && Arc::ptr_eq(&self.namespace, &other.namespace)
            && Arc::ptr_eq(&self.labels, &other.labels)
            && self.kind == other.kind
    }
}

impl Eq for SharedValues {}

impl std::hash::Hash for SharedValues {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.cluster), state);
        std::ptr::hash(Arc::as_ptr(&self.namespace), state);
        std::ptr::hash(Arc::as_ptr(&self.labels), state);
        self.kind.hash(state);
    }
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
    standing: Standing,
    /// Per source: the addresses and networks it claims that another source claims too.
    contested: Vec<FxHashSet<IpNet>>,
    /// Per source: conflicts counted for it, ever.
    conflicts: Vec<u64>,
    /// Addresses that became contested, with the source counted, for the log.
    contests: Vec<SourceContest>,
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
    /// The identity recently found for records sharing these values, with the generation
    /// of its slot then (an entry whose slot has moved on is stale, and is replaced).
    recent: FxHashMap<SharedValues, (u32, u64)>,
    /// The next slot generation.
    generations: u64,
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
            standing: Standing {
                suspended: vec![false; source_names.len()],
                connected: vec![true; source_names.len()],
            },
            contested: vec![FxHashSet::default(); source_names.len()],
            conflicts: vec![0; source_names.len()],
            contests: Vec::new(),
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
            recent: FxHashMap::default(),
            generations: 0,
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
        let mut duplicates = 0usize;
        for record in &records.endpoints {
            let net = record.net.trunc();
            if seen.insert(net) {
                self.set_claim(source, net, Some(record));
            } else {
                duplicates += 1;
            }
        }
        // A record repeating an address of its own file: each one more than before is counted.
        self.conflicts[source] += duplicates.saturating_sub(self.duplicates[source]) as u64;
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
        if self.standing.suspended[source] == suspended {
            return;
        }
        // Every address `source` claims, with its owner before the change.
        let standing = &self.standing;
        let owner_of = |claims: &Vec<Claim>| {
            claims
                .iter()
                .any(|c| c.source == source)
                .then(|| standing.owner(claims).map(|c| c.source))
        };
        let affected: Vec<(IpNet, Option<usize>)> = self
            .host_claims
            .iter()
            .filter_map(|(ip, claims)| owner_of(claims).map(|o| (IpNet::from(*ip), o)))
            .chain(
                self.network_claims
                    .iter()
                    .filter_map(|(net, claims)| owner_of(claims).map(|o| (*net, o))),
            )
            .collect();
        let flags = &self.standing.suspended;
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
        self.standing.suspended[source] = suspended;
        // Namespace labels first, so that the addresses placed below get identities with the
        // labels in force.
        for (cluster, name, before) in namespaces_before {
            let after = in_force(&self.namespaces[&cluster][&name], &self.standing.suspended);
            if before != after {
                self.relabel_namespace(&cluster, &name, &after);
            }
        }
        self.replace_owners(affected);
    }

    /// Tells whether `source` is in touch with its origin: a lost source's claims lose to a
    /// connected source's on the addresses they share. Only those addresses are placed again
    /// (the source's index of contested addresses). Returns whether any changed owner.
    pub fn set_connected(&mut self, source: usize, connected: bool) -> bool {
        if self.standing.connected[source] == connected {
            return false;
        }
        let affected: Vec<(IpNet, Option<usize>)> = self.contested[source]
            .iter()
            .map(|net| (*net, self.claims_on(net).and_then(|c| self.standing.owner(c))))
            .map(|(net, owner)| (net, owner.map(|c| c.source)))
            .collect();
        self.standing.connected[source] = connected;
        self.replace_owners(affected)
    }

    /// Whether `source` is connected ([`LabelBuilder::set_connected`]).
    pub fn is_connected(&self, source: usize) -> bool {
        self.standing.connected[source]
    }

    /// Places the owner of each address again where it is no longer the source it was (a
    /// source's state changed, none of its records); returns whether any changed.
    fn replace_owners(&mut self, addresses: Vec<(IpNet, Option<usize>)>) -> bool {
        let mut changed = false;
        for (net, before) in addresses {
            let owner = self.claims_on(&net).and_then(|c| self.standing.owner(c)).cloned();
            if owner.as_ref().map(|c| c.source) != before {
                self.place(net, owner);
                changed = true;
            }
        }
        changed
    }

    /// Every source's claim on `net`.
    fn claims_on(&self, net: &IpNet) -> Option<&Vec<Claim>> {
        if is_host(net) { self.host_claims.get(&net.addr()) } else { self.network_claims.get(net) }
    }

    /// The claims on `net` (an address or network as the table holds it), the owner first,
    /// then the others in the order they would take over, each with why it loses.
    pub fn claimants(&self, net: IpNet) -> Vec<Claimant> {
        let Some(claims) = self.claims_on(&net.trunc()) else { return Vec::new() };
        let ranked = self.standing.ranked(claims);
        let owner = self.standing.owner(claims);
        ranked
            .iter()
            .map(|c| Claimant {
                source: c.source,
                record: c.record.clone(),
                loss: match owner {
                    Some(o) if o.source == c.source => None,
                    Some(o) => Some(self.standing.loss(o, c)),
                    None => Some(Loss::Withdrawn),
                },
            })
            .collect()
    }

    /// Conflicts counted for `source` so far: claims of its that joined an address another
    /// source claimed, records repeating an address of its own (inventory), and the conflicts
    /// it decided inside itself (its changes' `conflicts`).
    pub fn conflicts(&self, source: usize) -> u64 {
        self.conflicts[source]
    }

    /// The addresses that became contested between sources since the last call (at most
    /// [`PENDING_CONTESTS`]; the rest are only counted), each with its owner and the best claim
    /// that loses to it, as they stand now; those no longer contested are left out.
    pub fn take_contests(&mut self) -> Vec<SourceContest> {
        let mut contests = std::mem::take(&mut self.contests);
        contests.retain_mut(|pending| {
            let Some(claims) = self.claims_on(&pending.contest.net) else { return false };
            let ranked = self.standing.ranked(claims);
            let (Some(winner), Some(loser)) = (ranked.first(), ranked.get(1)) else {
                return false;
            };
            pending.winner_source = winner.source;
            pending.loser_source = loser.source;
            pending.contest.winner = winner.record.clone();
            pending.contest.loser = loser.record.clone();
            pending.contest.loss = self.standing.loss(winner, loser);
            true
        });
        contests
    }

    /// The name of a source (`inventory:<path>`, `kubernetes:<cluster>`).
    pub fn source_name(&self, source: usize) -> &str {
        &self.source_names[source]
    }

    /// Whether `source` is suspended ([`LabelBuilder::set_suspended`]).
    pub fn is_suspended(&self, source: usize) -> bool {
        self.standing.suspended[source]
    }

    /// Applies what changed in `source` since its last view or changes, and counts the
    /// conflicts it decided inside itself.
    pub fn apply_changes(&mut self, source: usize, changes: &SourceChanges) {
        self.conflicts[source] += changes.conflicts;
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
        let live = self.slots.len() - self.free.len();
        if self.recent.len() > 2 * live + 1024 {
            // Forget what names identities that are gone or changed (and the values it holds).
            let slots = &self.slots;
            self.recent.retain(|_, &mut (id, generation)| {
                slots[id as usize].as_ref().is_some_and(|slot| slot.generation == generation)
            });
        }
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
    /// its new owner when the owner changed (or is `source` and its record did).
    fn set_claim(&mut self, source: usize, net: IpNet, record: Option<&EndpointRecord>) {
        let claims = if is_host(&net) {
            self.host_claims.entry(net.addr()).or_default()
        } else {
            self.network_claims.entry(net).or_default()
        };
        let before = claims.len();
        let owner_before = self.standing.owner(claims).map(|c| c.source);
        // Claims are kept in source order, one per source.
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
        let owner = self.standing.owner(claims);
        let owner_after = owner.map(|c| c.source);
        let replace = changed && (owner_after != owner_before || owner_after == Some(source));
        let owner = replace.then(|| owner.cloned());
        if before >= 2 || after >= 2 {
            // The index of contested addresses: every source of a shared address has it.
            if ours && record.is_none() {
                self.contested[source].remove(&net);
            }
            for claim in claims.iter() {
                if after >= 2 {
                    self.contested[claim.source].insert(net);
                } else {
                    self.contested[claim.source].remove(&net);
                }
            }
        }
        if !ours && record.is_some() && before >= 1 {
            // `source` joins an address others claim: a conflict, counted for it.
            self.conflicts[source] += 1;
            if self.contests.len() < PENDING_CONTESTS {
                let record = record.cloned().expect("a record joins");
                self.contests.push(SourceContest {
                    source,
                    winner_source: source,
                    loser_source: source,
                    contest: Contest {
                        net,
                        winner: record.clone(),
                        loser: record,
                        loss: Loss::LaterInConfig,
                    },
                });
            }
        }
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
        let suspended = &self.standing.suspended;
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
            .and_then(|claims| claims.iter().find(|c| !self.standing.suspended[c.0]))
            .map_or_else(|| Arc::clone(&self.empty_labels), |c| Arc::clone(&c.1))
    }

    /// The identity of a record, created if new; counts one more endpoint using it.
    fn acquire(&mut self, record: &EndpointRecord) -> IdentityId {
        let shared = SharedValues::of(record);
        if let Some(&(id, generation)) = self.recent.get(&shared)
            && let Some(slot) = &mut self.slots[id as usize]
            && slot.generation == generation
        {
            slot.endpoints += 1;
            return IdentityId(id);
        }
        let id = self.acquire_by_content(record);
        if let Some(slot) = &self.slots[id.0 as usize] {
            self.recent.insert(shared, (id.0, slot.generation));
        }
        id
    }

    /// [`LabelBuilder::acquire`] for a record whose shared values were not seen with a live
    /// identity: found by hashing and comparing its content.
    fn acquire_by_content(&mut self, record: &EndpointRecord) -> IdentityId {
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
        let generation = self.generations;
        self.generations += 1;
        self.slots[id as usize] =
            Some(Slot { identity: Arc::clone(&identity), hash, endpoints: 1, generation });
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
        let mut record = record(net, namespace, &format!("s{source}-{}", rng.below(4)), kind, app);
        // Few values, so that ties happen and the later rules decide too.
        record.terminating = kind == EndpointKind::Pod && rng.below(4) == 0;
        record.created = [0, 100, 200][rng.below(3) as usize];
        if rng.below(2) == 0 {
            // Values shared with other records (as a Kubernetes source shares them), so that
            // identities are found by those values too, across relabels and reused ids.
            let (cluster, namespaces, apps) = SHARED.with(Clone::clone);
            let at = |names: &[&str], name: &str| names.iter().position(|n| *n == name).unwrap();
            record.cluster = cluster;
            record.namespace = Arc::clone(&namespaces[at(&["ns1", "ns2", ""], &record.namespace)]);
            record.labels = Arc::clone(&apps[at(&["a", "b", "c"], app)]);
        }
        record
    }

    type SharedRecordValues = (Arc<str>, [Arc<str>; 3], [Arc<Labels>; 3]);

    thread_local! {
        static SHARED: SharedRecordValues = (
            "c1".into(),
            ["ns1".into(), "ns2".into(), "".into()],
            [labels(&[("app", "a")]), labels(&[("app", "b")]), labels(&[("app", "c")])],
        );
    }

    /// The table a builder made at once from these views gives, with these sources lost and
    /// (as if they claimed nothing) suspended.
    fn full_build(views: &[View], connected: &[bool], suspended: &[bool]) -> LabelTable {
        let mut builder = LabelBuilder::new(NAMES.iter().map(|s| s.to_string()).collect());
        for (i, view) in views.iter().enumerate() {
            builder.set_connected(i, connected[i]);
            if !suspended[i] {
                builder.replace_source(i, &view.records(NAMES[i]));
            }
        }
        builder.publish().0
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
            if rng.below(8) == 0 {
                // A live source lost, or back: its shared addresses go to the connected.
                let live = rng.below(2) as usize;
                builder.set_connected(live, !builder.is_connected(live));
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
            let connected: Vec<bool> = (0..NAMES.len()).map(|i| builder.is_connected(i)).collect();
            let suspended: Vec<bool> = (0..NAMES.len()).map(|i| builder.is_suspended(i)).collect();
            let full = full_build(&views, &connected, &suspended);
            let fresh =
                Snapshot::new(step, Arc::new(full.clone()), Arc::clone(&policy), Arc::clone(&hits));
            for ip in probes() {
                assert_eq!(describe(&table, ip), describe(&full, ip), "step {step}, {ip}");
                assert_eq!(snapshot.groups_of(ip), fresh.groups_of(ip), "step {step}, {ip}");
            }
            assert_eq!(table.identity_count(), full.identity_count(), "step {step}");
            // The index of contested addresses is what the claims say.
            for (source, indexed) in builder.contested.iter().enumerate() {
                let shared: FxHashSet<IpNet> = builder
                    .host_claims
                    .iter()
                    .map(|(ip, claims)| (IpNet::from(*ip), claims))
                    .chain(builder.network_claims.iter().map(|(net, claims)| (*net, claims)))
                    .filter(|(_, c)| c.len() >= 2 && c.iter().any(|c| c.source == source))
                    .map(|(net, _)| net)
                    .collect();
                assert_eq!(*indexed, shared, "step {step}, source {source}");
            }
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

    fn pod(net: IpNet, name: &str, created: u32, terminating: bool) -> EndpointRecord {
        let mut record = record(net, "ns1", name, EndpointKind::Pod, "web");
        (record.created, record.terminating) = (created, terminating);
        record
    }

    fn upsert(builder: &mut LabelBuilder, source: usize, record: &EndpointRecord) {
        let change = EndpointChange { net: record.net, record: Some(record.clone()) };
        builder.apply_changes(
            source,
            &SourceChanges { endpoints: vec![change], ..Default::default() },
        );
    }

    fn owner_of(builder: &mut LabelBuilder, net: IpNet) -> Option<(String, String)> {
        let (table, _) = builder.publish();
        let e = table.lookup(net.addr())?;
        Some((table.source_name(e).to_string(), e.name.to_string()))
    }

    fn owner(source: &str, name: &str) -> Option<(String, String)> {
        Some((source.to_string(), name.to_string()))
    }

    #[test]
    fn the_newest_claim_owns_an_address_whatever_the_config_order_and_ties_go_to_the_first() {
        let net: IpNet = "10.0.0.5/32".parse().unwrap();
        let mut builder = LabelBuilder::new(NAMES.iter().map(|s| s.to_string()).collect());
        upsert(&mut builder, 1, &pod(net, "b-new", 200, false));
        upsert(&mut builder, 0, &pod(net, "a-old", 100, false));
        assert_eq!(owner_of(&mut builder, net), owner("kubernetes:b", "b-new"));
        let claimants = builder.claimants(net);
        assert_eq!(
            claimants.iter().map(|c| (c.source, c.loss)).collect::<Vec<_>>(),
            [(1, None), (0, Some(Loss::Older))]
        );
        // As new as b's: the earlier source in the configuration.
        upsert(&mut builder, 0, &pod(net, "a-same", 200, false));
        assert_eq!(owner_of(&mut builder, net), owner("kubernetes:a", "a-same"));
        assert_eq!(builder.claimants(net)[1].loss, Some(Loss::LaterInConfig));
        // An inventory entry has no creation time: the oldest, behind both pods.
        let inventory = SourceRecords {
            source: NAMES[2].into(),
            endpoints: vec![record(net, "ns1", "static", EndpointKind::External, "db")],
            namespaces: vec![],
        };
        builder.replace_source(2, &inventory);
        assert_eq!(owner_of(&mut builder, net), owner("kubernetes:a", "a-same"));
        assert_eq!(builder.claimants(net)[2].loss, Some(Loss::Older));
    }

    #[test]
    fn a_terminating_pod_loses_to_an_older_live_one_of_another_source() {
        let net: IpNet = "10.0.0.5/32".parse().unwrap();
        let mut builder = LabelBuilder::new(NAMES.iter().map(|s| s.to_string()).collect());
        upsert(&mut builder, 0, &pod(net, "a-newer", 200, false));
        upsert(&mut builder, 1, &pod(net, "b-older", 100, false));
        assert_eq!(owner_of(&mut builder, net), owner("kubernetes:a", "a-newer"));
        upsert(&mut builder, 0, &pod(net, "a-newer", 200, true));
        assert_eq!(owner_of(&mut builder, net), owner("kubernetes:b", "b-older"));
        assert_eq!(builder.claimants(net)[1].loss, Some(Loss::Terminating));
        // Both terminating: the newest again.
        upsert(&mut builder, 1, &pod(net, "b-older", 100, true));
        assert_eq!(owner_of(&mut builder, net), owner("kubernetes:a", "a-newer"));
    }

    #[test]
    fn a_lost_source_loses_its_shared_addresses_and_gets_them_back_when_connected() {
        let shared: IpNet = "10.0.0.5/32".parse().unwrap();
        let own: IpNet = "10.0.0.6/32".parse().unwrap();
        let mut builder = LabelBuilder::new(NAMES.iter().map(|s| s.to_string()).collect());
        upsert(&mut builder, 0, &pod(shared, "a-old", 100, false));
        upsert(&mut builder, 1, &pod(shared, "b-new", 200, false));
        upsert(&mut builder, 1, &pod(own, "b-own", 200, false));
        assert_eq!(owner_of(&mut builder, shared), owner("kubernetes:b", "b-new"));
        assert!(builder.set_connected(1, false), "an owner changed");
        assert_eq!(owner_of(&mut builder, shared), owner("kubernetes:a", "a-old"));
        assert_eq!(builder.claimants(shared)[1].loss, Some(Loss::LostSource));
        // What it alone claims stays its own: a lost source keeps its last table.
        assert_eq!(owner_of(&mut builder, own), owner("kubernetes:b", "b-own"));
        assert!(!builder.set_connected(1, false), "no change of state");
        // Lost beats terminating: a lost source's live pod loses to a terminating one.
        upsert(&mut builder, 0, &pod(shared, "a-old", 100, true));
        assert_eq!(owner_of(&mut builder, shared), owner("kubernetes:a", "a-old"));
        assert!(builder.set_connected(1, true));
        assert_eq!(owner_of(&mut builder, shared), owner("kubernetes:b", "b-new"));
        // Both lost: the rules below apply again (a's pod is terminating), and a connected
        // inventory entry beats both.
        assert!(!builder.set_connected(0, false), "a's claim was not the owner");
        assert!(!builder.set_connected(1, false), "b's claim still ranks first");
        assert_eq!(owner_of(&mut builder, shared), owner("kubernetes:b", "b-new"));
        let inventory = SourceRecords {
            source: NAMES[2].into(),
            endpoints: vec![record(shared, "ns1", "static", EndpointKind::External, "db")],
            namespaces: vec![],
        };
        builder.replace_source(2, &inventory);
        assert_eq!(owner_of(&mut builder, shared), owner("inventory:x", "static"));
        // A source that shares nothing changes no owner.
        let mut alone = LabelBuilder::new(NAMES.iter().map(|s| s.to_string()).collect());
        upsert(&mut alone, 0, &pod(own, "a-own", 100, false));
        assert!(!alone.set_connected(0, false));
        assert!(alone.contested[0].is_empty());
        assert_eq!(owner_of(&mut alone, own), owner("kubernetes:a", "a-own"));
    }

    #[test]
    fn a_suspended_source_owns_nothing_however_it_ranks() {
        let net: IpNet = "10.0.0.5/32".parse().unwrap();
        let mut builder = LabelBuilder::new(NAMES.iter().map(|s| s.to_string()).collect());
        upsert(&mut builder, 0, &pod(net, "a-new", 200, false));
        upsert(&mut builder, 1, &pod(net, "b-old", 100, true));
        builder.set_connected(1, false);
        builder.set_suspended(0, true);
        assert_eq!(owner_of(&mut builder, net), owner("kubernetes:b", "b-old"));
        let claimants = builder.claimants(net);
        assert_eq!(claimants[1].loss, Some(Loss::Withdrawn));
        builder.set_suspended(1, true);
        assert_eq!(owner_of(&mut builder, net), None);
        assert!(builder.claimants(net).iter().all(|c| c.loss == Some(Loss::Withdrawn)));
        builder.set_suspended(0, false);
        assert_eq!(owner_of(&mut builder, net), owner("kubernetes:a", "a-new"));
    }

    #[test]
    fn conflicts_are_counted_for_the_source_whose_claim_made_the_address_contested() {
        let net: IpNet = "10.0.0.5/32".parse().unwrap();
        let mut builder = LabelBuilder::new(NAMES.iter().map(|s| s.to_string()).collect());
        upsert(&mut builder, 0, &pod(net, "a-old", 100, false));
        assert_eq!(builder.take_contests(), []);
        upsert(&mut builder, 1, &pod(net, "b-new", 200, false));
        let counts = |b: &LabelBuilder| (0..3).map(|i| b.conflicts(i)).collect::<Vec<_>>();
        assert_eq!(counts(&builder), [0, 1, 0]);
        // A change of a claim already there is no new conflict.
        upsert(&mut builder, 1, &pod(net, "b-new", 200, true));
        upsert(&mut builder, 0, &pod(net, "a-old", 100, true));
        assert_eq!(counts(&builder), [0, 1, 0]);
        let contests = builder.take_contests();
        assert_eq!(contests.len(), 1);
        let c = &contests[0];
        assert_eq!((c.source, c.winner_source, c.loser_source), (1, 1, 0));
        assert_eq!((&*c.contest.winner.name, &*c.contest.loser.name), ("b-new", "a-old"));
        assert_eq!(c.contest.loss, Loss::Older);
        assert_eq!(builder.take_contests(), [], "taken");
        // a lets go and claims it again: a joins b's address.
        let remove = EndpointChange { net, record: None };
        builder.apply_changes(0, &SourceChanges { endpoints: vec![remove], ..Default::default() });
        upsert(&mut builder, 0, &pod(net, "a-back", 300, false));
        assert_eq!(counts(&builder), [1, 1, 0]);
        // The conflicts a source decided inside itself.
        builder.apply_changes(1, &SourceChanges { conflicts: 3, ..Default::default() });
        assert_eq!(counts(&builder), [1, 4, 0]);
        // An inventory file that repeats an address of its own, then one more, then as many.
        let file = |names: &[&str]| SourceRecords {
            source: NAMES[2].into(),
            endpoints: names
                .iter()
                .map(|n| record("10.0.0.9/32".parse().unwrap(), "", n, EndpointKind::External, "x"))
                .collect(),
            namespaces: vec![],
        };
        builder.replace_source(2, &file(&["x1", "x2"]));
        assert_eq!(counts(&builder), [1, 4, 1]);
        builder.replace_source(2, &file(&["x1", "x2", "x3"]));
        builder.replace_source(2, &file(&["x1", "x2", "x3"]));
        assert_eq!(counts(&builder), [1, 4, 2]);
        assert_eq!(builder.publish().0.conflicts(), 1 + 2, "records that lost, now");
    }
}
