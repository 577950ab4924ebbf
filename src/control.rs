//! The control plane: loads policy and label sources, builds snapshots and publishes them,
//! reloads on SIGHUP and on file change. A reload that fails validation keeps what runs.
//! Must not depend on: the data plane's sockets and workers (it only publishes snapshots), the
//! admin server.
//!
//! Single owner (the process's control task), so it needs no locks of its own; what the
//! admin server reads lives in [`ControlState`].
//!
//! It tells the label builder which live sources are connected (a `Lost` source's claims lose
//! to a connected source's on the addresses they share; its `Changes` make it connected
//! again), copies each source's conflict count into its status for the metrics, and logs
//! contested addresses, at most one line per source per [`CONFLICT_LOG_INTERVAL`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::diagnostics::Diagnostics;
use crate::flowlog::FlowLogStats;
use crate::labels::{Contest, LabelBuilder, SourceRecords};
use crate::policy::CompiledPolicy;
use crate::snapshot::{RuleHits, Snapshot, SnapshotCell};
use crate::sources::{SourceEvent, inventory, kubernetes_source_name};

/// Sync state of one label source, for readiness and metrics.
#[derive(Debug, Clone)]
pub struct SourceStatus {
    pub name: String,
    /// Synced at least once and currently in sync.
    pub synced: bool,
    pub last_sync: Option<Instant>,
    pub errors: u64,
    /// Since when the source is lost (it synced before); `None` while connected.
    pub lost_since: Option<Instant>,
    /// Its entries are withdrawn: lost longer than its `max_stale`.
    pub withdrawn: bool,
    /// Conflicts counted for the source ([`LabelBuilder::conflicts`]).
    pub conflicts: u64,
}

/// What the admin server and metrics read of the control plane.
#[derive(Debug)]
pub struct ControlState {
    pub snapshots: Arc<SnapshotCell>,
    pub reloads_ok: AtomicU64,
    pub reloads_error: AtomicU64,
    pub sources: Mutex<Vec<SourceStatus>>,
    /// Packets counted for rules of earlier policies, by rule name (so that
    /// `labelwall_rule_hits_total` does not reset on reload).
    pub rule_hits_carried: Mutex<BTreeMap<String, u64>>,
    pub flow_log: Option<Arc<FlowLogStats>>,
}

impl ControlState {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.load_full()
    }

    /// Sources that have not synced yet (readiness).
    pub fn unsynced_sources(&self) -> Vec<String> {
        let sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        sources.iter().filter(|s| s.last_sync.is_none()).map(|s| s.name.clone()).collect()
    }
}

/// Everything `labelwall check` validates: policy and every inventory file.
pub fn load_all(config: &Config) -> Result<(CompiledPolicy, Vec<SourceRecords>), Diagnostics> {
    let mut errors = Vec::new();
    let policy = match &config.policy {
        Some(path) => CompiledPolicy::load(path).map_err(|d| errors.extend(d.0)).ok(),
        None => {
            errors.push(crate::diagnostics::Diagnostic::file(
                Path::new("labelwall.yaml"),
                "`policy` is required: the path of policy.yaml",
            ));
            None
        }
    };
    let mut sources = Vec::new();
    for path in &config.labels.inventory {
        match inventory::load(path) {
            Ok(records) => sources.push(records),
            Err(d) => errors.extend(d.0),
        }
    }
    match policy {
        Some(policy) if errors.is_empty() => Ok((policy, sources)),
        _ => Err(Diagnostics(errors)),
    }
}

/// At most one line per source this often about contested addresses.
pub const CONFLICT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The log of contested addresses: per source, when it last had a line and how many of its
/// conflicts were counted by then (the rest are the `unlogged` of its next line).
#[derive(Debug)]
struct ConflictLog {
    last_line: Vec<Option<Instant>>,
    logged: Vec<u64>,
}

impl ConflictLog {
    fn new(sources: usize) -> ConflictLog {
        ConflictLog { last_line: vec![None; sources], logged: vec![0; sources] }
    }

    /// Copies every source's conflict count into its status, and logs one contested address
    /// for each source with new conflicts whose last line is old enough. `inside` are the
    /// contests a source reported with its changes (decided inside it); the others come from
    /// the builder (between sources).
    fn note(
        &mut self,
        labels: &mut LabelBuilder,
        statuses: &mut [SourceStatus],
        inside: Option<(usize, &[Contest])>,
    ) {
        let between = labels.take_contests();
        for (source, status) in statuses.iter_mut().enumerate() {
            let total = labels.conflicts(source);
            status.conflicts = total;
            if total == self.logged[source]
                || self.last_line[source].is_some_and(|t| t.elapsed() < CONFLICT_LOG_INTERVAL)
            {
                continue;
            }
            let inside = inside.filter(|(s, _)| *s == source).and_then(|(_, c)| c.first());
            let line = match inside {
                Some(contest) => Some((contest, source, source)),
                None => between
                    .iter()
                    .find(|c| c.source == source)
                    .map(|c| (&c.contest, c.winner_source, c.loser_source)),
            };
            // Without one to describe (no longer contested), they are counted into the next line.
            let Some((contest, winner, loser)) = line else { continue };
            let unlogged = total - self.logged[source] - 1;
            let (source_name, winner_name, loser_name) =
                (labels.source_name(source), labels.source_name(winner), labels.source_name(loser));
            let winner = format!("{winner_name} {}", contest.winner.path());
            let loser = format!("{loser_name} {}", contest.loser.path());
            let address = contest.net.addr();
            let loss = contest.loss.as_str();
            if winner_name == loser_name {
                // Inside one cluster: IP reuse seen before the old pod's delete, a pod stuck
                // terminating, a pod on a node's address. Routine.
                tracing::info!(source = source_name, %address, winner, loser, loss, unlogged,
                    "address claimed twice: the winner owns it");
            } else {
                // Between sources: overlapping clusters, an inventory entry for a pod's address.
                tracing::warn!(source = source_name, %address, winner, loser, loss, unlogged,
                    "address claimed by two label sources: the winner owns it");
            }
            self.logged[source] = total;
            self.last_line[source] = Some(Instant::now());
        }
    }
}

/// When a file was last seen changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp { modified: meta.modified().ok(), len: meta.len() })
}

#[derive(Debug)]
pub struct ControlPlane {
    policy_path: PathBuf,
    inventory_paths: Vec<PathBuf>,
    policy: Arc<CompiledPolicy>,
    rule_hits: Arc<RuleHits>,
    /// Source names in priority order: live sources first (Kubernetes clusters in config
    /// order), then the inventory files in config order; on an address claimed twice, the
    /// earlier source wins. A source's index here is its index in `labels`.
    source_names: Vec<String>,
    /// How many of the sources are live.
    live_sources: usize,
    /// Per live source: how long it may be lost before its entries are withdrawn.
    max_stale: Vec<Option<Duration>>,
    /// What each inventory file said last (to tell whether a reload changed anything).
    inventories: Vec<SourceRecords>,
    labels: LabelBuilder,
    conflict_log: ConflictLog,
    generation: u64,
    workers: usize,
    stamps: Vec<Option<FileStamp>>,
    state: Arc<ControlState>,
}

impl ControlPlane {
    /// Loads everything and publishes the first snapshot; fails with every problem found.
    pub fn start(
        config: &Config,
        workers: usize,
        flow_log: Option<Arc<FlowLogStats>>,
    ) -> Result<ControlPlane, Diagnostics> {
        let (policy, inventories) = load_all(config)?;
        let policy_path = config.policy.clone().expect("load_all checked it");
        let policy = Arc::new(policy);
        let rule_hits = Arc::new(RuleHits::new(workers, policy.rules.len()));
        let now = Instant::now();
        let mut statuses = Vec::new();
        let mut source_names: Vec<String> = Vec::new();
        let mut max_stale = Vec::new();
        for cluster in &config.labels.kubernetes {
            // Not synced until its watcher delivers a first full list.
            let name = kubernetes_source_name(&cluster.cluster);
            statuses.push(SourceStatus {
                name: name.clone(),
                synced: false,
                last_sync: None,
                errors: 0,
                lost_since: None,
                withdrawn: false,
                conflicts: 0,
            });
            source_names.push(name);
            max_stale.push(cluster.max_stale());
        }
        let live_sources = source_names.len();
        for records in &inventories {
            statuses.push(SourceStatus {
                name: records.source.clone(),
                synced: true,
                last_sync: Some(now),
                errors: 0,
                lost_since: None,
                withdrawn: false,
                conflicts: 0,
            });
            source_names.push(records.source.clone());
        }
        let mut labels = LabelBuilder::new(source_names.clone());
        for (i, records) in inventories.iter().enumerate() {
            labels.replace_source(live_sources + i, records);
        }
        let mut conflict_log = ConflictLog::new(source_names.len());
        conflict_log.note(&mut labels, &mut statuses, None);
        let (table, _) = labels.publish();
        let snapshot =
            Snapshot::new(1, Arc::new(table), Arc::clone(&policy), Arc::clone(&rule_hits));
        let state = Arc::new(ControlState {
            snapshots: Arc::new(ArcSwap::from_pointee(snapshot)),
            reloads_ok: AtomicU64::new(0),
            reloads_error: AtomicU64::new(0),
            sources: Mutex::new(statuses),
            rule_hits_carried: Mutex::new(BTreeMap::new()),
            flow_log,
        });
        let mut plane = ControlPlane {
            inventory_paths: config.labels.inventory.clone(),
            policy_path,
            policy,
            rule_hits,
            source_names,
            live_sources,
            max_stale,
            inventories,
            labels,
            conflict_log,
            generation: 1,
            workers,
            stamps: Vec::new(),
            state,
        };
        plane.stamps = plane.watched_paths().iter().map(|p| stamp(p)).collect();
        Ok(plane)
    }

    pub fn state(&self) -> Arc<ControlState> {
        Arc::clone(&self.state)
    }

    fn watched_paths(&self) -> Vec<PathBuf> {
        std::iter::once(self.policy_path.clone())
            .chain(self.inventory_paths.iter().cloned())
            .collect()
    }

    /// SIGHUP: reload the policy and every inventory file.
    pub fn reload_all(&mut self) {
        let policy_changed = self.reload_policy();
        // Every file is read, also after one that changed (no short-circuit).
        let labels_changed = (0..self.inventory_paths.len())
            .fold(false, |changed, i| self.reload_inventory(i) | changed);
        if policy_changed || labels_changed {
            self.publish();
        }
        self.stamps = self.watched_paths().iter().map(|p| stamp(p)).collect();
    }

    /// Reloads what changed on disk since it was last read; call every second or so.
    pub fn poll_files(&mut self) {
        let paths = self.watched_paths();
        let mut changed = false;
        for (i, path) in paths.iter().enumerate() {
            let now = stamp(path);
            if now == self.stamps[i] {
                continue;
            }
            self.stamps[i] = now;
            tracing::info!(file = %path.display(), "file changed, reloading");
            changed |= if i == 0 { self.reload_policy() } else { self.reload_inventory(i - 1) };
        }
        if changed {
            self.publish();
        }
    }

    /// Loads the policy file; on success it replaces the running one (published by the
    /// caller), on failure the running policy stays and every error is logged and counted.
    fn reload_policy(&mut self) -> bool {
        match CompiledPolicy::load(&self.policy_path) {
            Ok(policy) => {
                {
                    let mut carried =
                        self.state.rule_hits_carried.lock().unwrap_or_else(|e| e.into_inner());
                    for (i, rule) in self.policy.rules.iter().enumerate() {
                        *carried.entry(rule.name.to_string()).or_default() +=
                            self.rule_hits.total(Some(i));
                    }
                    *carried.entry("default".into()).or_default() += self.rule_hits.total(None);
                }
                self.rule_hits = Arc::new(RuleHits::new(self.workers, policy.rules.len()));
                self.policy = Arc::new(policy);
                self.state.reloads_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    rules = self.policy.rules.len(),
                    groups = self.policy.groups.len() - 1,
                    "policy reloaded"
                );
                true
            }
            Err(errors) => {
                self.state.reloads_error.fetch_add(1, Ordering::Relaxed);
                for error in &errors.0 {
                    tracing::error!("policy reload rejected, the running policy stays: {error}");
                }
                false
            }
        }
    }

    fn reload_inventory(&mut self, index: usize) -> bool {
        let path = &self.inventory_paths[index];
        let name = inventory::source_name(path);
        let mut statuses = self.state.sources.lock().unwrap_or_else(|e| e.into_inner());
        let status = statuses.iter_mut().find(|s| s.name == name);
        match inventory::load(path) {
            Ok(records) => {
                if let Some(status) = status {
                    status.synced = true;
                    status.last_sync = Some(Instant::now());
                }
                if self.inventories[index] == records {
                    return false;
                }
                self.labels.replace_source(self.live_sources + index, &records);
                self.inventories[index] = records;
                self.conflict_log.note(&mut self.labels, &mut statuses, None);
                true
            }
            Err(errors) => {
                if let Some(status) = status {
                    status.errors += 1;
                }
                for error in &errors.0 {
                    tracing::error!(
                        "inventory reload rejected, the previous entries stay: {error}"
                    );
                }
                false
            }
        }
    }

    /// Takes what a live source reports; returns whether a new snapshot must be published.
    pub fn apply(&mut self, event: SourceEvent) -> bool {
        let mut statuses = self.state.sources.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            SourceEvent::Changes { source, changes, in_sync } => {
                let Some(index) =
                    self.source_names[..self.live_sources].iter().position(|s| *s == source)
                else {
                    tracing::warn!(source, "changes from an unknown label source ignored");
                    return false;
                };
                if !in_sync {
                    // Events of a source that is still lost: applied, but it stays lost (and
                    // withdrawn, if it is: its claims are kept while they own nothing).
                    self.labels.apply_changes(index, &changes);
                    let inside = Some((index, &changes.contests[..]));
                    self.conflict_log.note(&mut self.labels, &mut statuses, inside);
                    return !changes.is_empty();
                }
                let mut restored = false;
                if let Some(status) = statuses.iter_mut().find(|s| s.name == source) {
                    status.synced = true;
                    status.last_sync = Some(Instant::now());
                    status.lost_since = None;
                    if status.withdrawn {
                        status.withdrawn = false;
                        self.labels.set_suspended(index, false);
                        restored = true;
                        tracing::info!(source, "label source synced again; its entries are back");
                    }
                }
                // In touch again: its claims rank as a connected source's.
                let regained = self.labels.set_connected(index, true);
                self.labels.apply_changes(index, &changes);
                let inside = Some((index, &changes.contests[..]));
                self.conflict_log.note(&mut self.labels, &mut statuses, inside);
                restored || regained || !changes.is_empty()
            }
            SourceEvent::Lost { source, error } => {
                let index =
                    self.source_names[..self.live_sources].iter().position(|s| *s == source);
                if let Some(status) = statuses.iter_mut().find(|s| s.name == source) {
                    if status.synced {
                        tracing::warn!(
                            source,
                            error,
                            "label source lost; keeping its last entries"
                        );
                    }
                    if status.last_sync.is_some() && status.lost_since.is_none() {
                        status.lost_since = Some(Instant::now());
                    }
                    status.synced = false;
                    status.errors += 1;
                }
                // Its claims on addresses another source claims too lose to a connected one's.
                index.is_some_and(|index| self.labels.set_connected(index, false))
            }
        }
    }

    /// Withdraws the entries of every live source lost longer than its `max_stale` (its
    /// addresses become unknown, or go to the next source that claims them: fail closed);
    /// they come back when it syncs again. Returns whether a new snapshot must be published.
    pub fn withdraw_stale(&mut self) -> bool {
        let mut statuses = self.state.sources.lock().unwrap_or_else(|e| e.into_inner());
        let mut withdrawn = false;
        for (index, max_stale) in self.max_stale.iter().enumerate() {
            let Some(max_stale) = *max_stale else { continue };
            let Some(status) = statuses.iter_mut().find(|s| s.name == self.source_names[index])
            else {
                continue;
            };
            if status.withdrawn || status.lost_since.is_none_or(|t| t.elapsed() < max_stale) {
                continue;
            }
            status.withdrawn = true;
            self.labels.set_suspended(index, true);
            withdrawn = true;
            tracing::warn!(
                source = status.name,
                max_stale = ?max_stale,
                "label source lost longer than max_stale; its entries are withdrawn until it syncs again"
            );
        }
        withdrawn
    }

    /// Publishes a snapshot of the current policy and label sources: only what changed since
    /// the last one is evaluated again, the rest is shared with it.
    pub fn publish(&mut self) {
        let started = Instant::now();
        let (labels, changed) = self.labels.publish();
        self.generation += 1;
        let snapshot = self.state.snapshots.load().next(
            self.generation,
            Arc::new(labels),
            Arc::clone(&self.policy),
            Arc::clone(&self.rule_hits),
            &changed,
        );
        let identities = snapshot.labels.identity_count();
        self.state.snapshots.store(Arc::new(snapshot));
        tracing::debug!(
            generation = self.generation,
            identities,
            changed_identities = changed.len(),
            took_us = started.elapsed().as_micros() as u64,
            "snapshot published"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::labels::{EndpointChange, EndpointKind, EndpointRecord, SourceChanges};

    fn status(name: &str) -> SourceStatus {
        SourceStatus {
            name: name.into(),
            synced: true,
            last_sync: None,
            errors: 0,
            lost_since: None,
            withdrawn: false,
            conflicts: 0,
        }
    }

    fn claim(ip: &str, name: &str, created: u32) -> SourceChanges {
        let record = EndpointRecord {
            net: ip.parse().unwrap(),
            cluster: "c".into(),
            namespace: "ns".into(),
            name: name.into(),
            kind: EndpointKind::Pod,
            terminating: false,
            created,
            labels: Arc::default(),
        };
        let change = EndpointChange { net: record.net, record: Some(record) };
        SourceChanges { endpoints: vec![change], ..SourceChanges::default() }
    }

    #[test]
    fn conflicts_reach_the_statuses_and_one_line_per_source_per_interval_is_logged() {
        let names = vec!["kubernetes:a".to_string(), "kubernetes:b".to_string()];
        let mut labels = LabelBuilder::new(names.clone());
        let mut statuses: Vec<SourceStatus> = names.iter().map(|n| status(n)).collect();
        let mut log = ConflictLog::new(2);
        labels.apply_changes(0, &claim("10.0.0.1/32", "a1", 1));
        labels.apply_changes(1, &claim("10.0.0.1/32", "b1", 2));
        log.note(&mut labels, &mut statuses, None);
        assert_eq!((statuses[0].conflicts, statuses[1].conflicts), (0, 1));
        assert_eq!(log.logged, [0, 1], "b's line");
        assert!(log.last_line[1].is_some() && log.last_line[0].is_none());
        // Within the interval: counted, not logged (they are the next line's `unlogged`).
        labels.apply_changes(1, &claim("10.0.0.2/32", "b2", 2));
        labels.apply_changes(0, &claim("10.0.0.2/32", "a2", 1));
        let inside = SourceChanges { conflicts: 2, ..SourceChanges::default() };
        labels.apply_changes(1, &inside);
        log.note(&mut labels, &mut statuses, None);
        assert_eq!((statuses[0].conflicts, statuses[1].conflicts), (1, 3));
        assert_eq!(log.logged, [1, 1], "a's first line; b waits for its interval");
        // Past it: b's next line, for everything counted by then.
        log.last_line[1] = Instant::now().checked_sub(CONFLICT_LOG_INTERVAL);
        labels.apply_changes(1, &claim("10.0.0.3/32", "b3", 2));
        labels.apply_changes(0, &claim("10.0.0.3/32", "a3", 3));
        labels.apply_changes(1, &claim("10.0.0.4/32", "b4", 2));
        labels.apply_changes(0, &claim("10.0.0.4/32", "a4", 3));
        labels.apply_changes(0, &claim("10.0.0.5/32", "a5", 3));
        labels.apply_changes(1, &claim("10.0.0.5/32", "b5", 2));
        log.note(&mut labels, &mut statuses, None);
        assert_eq!((statuses[0].conflicts, statuses[1].conflicts), (3, 4));
        assert_eq!(log.logged, [1, 4]);
    }
}
