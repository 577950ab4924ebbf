//! The watch loop: one task per cluster feeds its three watch streams into the store, tells
//! the control plane what changed, that the source is lost while the API server does not
//! answer, and that a quiet cluster is still in sync. Must not depend on the data plane, the
//! policy or the label table's internals: it speaks to the control plane only in
//! `SourceEvent`s.
//!
//! An event goes into the store at once and marks the report due; events already waiting
//! are taken in the same turn, so a burst becomes one report. A change after a quiet spell
//! is reported at once, the changes of a burst are gathered for at least [`COALESCE`], and
//! nothing is sent while the control plane has not taken the previous report.
//!
//! Lost and back: the source is lost when some question (a kind's list or watch, the probe)
//! has had no answer for the source's `timeout`; every watch ends at half of it and is resumed,
//! and a prober asks the API server's version about every third of it, so that a quiet cluster
//! answers often enough and a silent API server (connections open, no bytes) is noticed after
//! `timeout`, not after a watch's own five minutes. It is in sync again as soon as everything
//! answered within `timeout` (the watches resumed from their versions: no relist needed). The
//! heartbeat (an empty `Changes`) is only sent when the probe answered since the last report.
//! The prober also renews the credentials (`Connection::renew`) after a 401/403 or while
//! nothing answers.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::watcher::{self, Event};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::connection::{Asked, Connection};
use super::health::KindHealth;
use super::objects::{Kind, NamespaceView, NodeView, PodView};
use super::retry;
use super::store::{Applied, ClusterStore};
use crate::sources::{SourceEvent, kubernetes_source_name};

/// The least time between two reports: a change after a quiet spell is reported at once,
/// the changes of a burst are gathered for at least this long.
pub const COALESCE: Duration = Duration::from_millis(10);
/// Events taken at most in one go before the changes are reported.
const DRAIN_MAX: usize = 10_000;
/// While in sync and unchanged, an empty report is sent this often (when the probe answered
/// since the last one).
const HEARTBEAT: Duration = Duration::from_secs(30);
/// The longest wait between two tries of a failing watch or list.
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// How soon a failed version probe is tried again (doubling while they fail, up to a probe
/// period).
const PROBE_RETRY: Duration = Duration::from_secs(1);
/// While lost, how often the loop looks whether everything answers again.
const LOST_RECHECK: Duration = Duration::from_millis(250);

/// The events of one kind's watcher.
pub(super) type WatchStream<K> =
    Pin<Box<dyn Stream<Item = Result<Event<K>, watcher::Error>> + Send>>;

/// A kind's watch stream: a paged list, then a watch with bookmarks that ends after half of
/// `timeout` and is resumed from its version (so a quiet kind answers that often), retried
/// as `retry` paces it.
pub(super) fn stream<K>(client: &kube::Client, timeout: Duration) -> WatchStream<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + fmt::Debug
        + for<'de> Deserialize<'de>
        + Send
        + 'static,
{
    let api = kube::Api::<K>::all(client.clone());
    let watch_seconds = (timeout.as_secs() / 2).clamp(1, 290) as u32;
    let config = watcher::Config::default().timeout(watch_seconds);
    retry::paced(watcher::watcher(api, config).boxed(), timeout.min(BACKOFF_CAP))
}

/// When and what to send next.
#[derive(Debug, Default)]
struct Publish {
    /// Something happened since the last `Changes` (a change, or a list that says the source
    /// is in sync again).
    dirty: bool,
    /// When the gathered changes are sent.
    at: Option<Instant>,
    /// A `Lost` was sent and no `Changes` since.
    lost_reported: bool,
    /// When the last `Changes` was sent.
    last_sent: Option<Instant>,
    /// No `Changes` before this: [`COALESCE`] after the last. (A report costs what it holds,
    /// and none is sent while the control plane has not taken the last, so a large report,
    /// such as a relist's, needs no longer spacing.)
    not_before: Option<Instant>,
}

/// The watch of one cluster: its connection, watch streams, store, each kind's errors and
/// what is due to be sent.
pub(super) struct ClusterWatch {
    name: String,
    connection: Arc<Connection>,
    events: mpsc::Sender<SourceEvent>,
    store: ClusterStore,
    pods: WatchStream<PodView>,
    namespaces: WatchStream<NamespaceView>,
    nodes: WatchStream<NodeView>,
    health: [KindHealth; 3],
    publish: Publish,
}

impl fmt::Debug for ClusterWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterWatch").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Waits until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Aborts a task when dropped (the prober lives as long as the watch).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ClusterWatch {
    pub(super) fn new(
        cluster: String,
        connection: Arc<Connection>,
        events: mpsc::Sender<SourceEvent>,
    ) -> Self {
        let client = connection.client();
        let timeout = connection.timeout();
        ClusterWatch {
            name: kubernetes_source_name(&cluster),
            pods: stream(client, timeout),
            namespaces: stream(client, timeout),
            nodes: stream(client, timeout),
            connection,
            events,
            store: ClusterStore::new(cluster),
            health: Default::default(),
            publish: Publish::default(),
        }
    }

    /// Runs until `events` closes.
    pub(super) async fn run(mut self) {
        let prober = tokio::spawn(probe(self.connection.clone(), self.name.clone()));
        let _prober = AbortOnDrop(prober.abort_handle());
        loop {
            let wake = self.next_wake();
            tokio::select! {
                Some(item) = self.pods.next() => {
                    self.on_item(Kind::Pods, item, ClusterStore::apply_pod)
                }
                Some(item) = self.namespaces.next() => {
                    self.on_item(Kind::Namespaces, item, ClusterStore::apply_namespace)
                }
                Some(item) = self.nodes.next() => {
                    self.on_item(Kind::Nodes, item, ClusterStore::apply_node)
                }
                () = sleep_until(wake) => {}
                () = self.events.closed() => return,
            }
            self.drain_ready();
            if !self.send_due().await {
                return;
            }
        }
    }

    /// Takes every event that is already there, so that a burst becomes one report.
    fn drain_ready(&mut self) {
        use futures::FutureExt;
        for _ in 0..DRAIN_MAX {
            if let Some(Some(item)) = self.pods.next().now_or_never() {
                self.on_item(Kind::Pods, item, ClusterStore::apply_pod);
            } else if let Some(Some(item)) = self.namespaces.next().now_or_never() {
                self.on_item(Kind::Namespaces, item, ClusterStore::apply_namespace);
            } else if let Some(Some(item)) = self.nodes.next().now_or_never() {
                self.on_item(Kind::Nodes, item, ClusterStore::apply_node);
            } else {
                return;
            }
        }
    }

    /// Why the source is lost at `now`: the question unanswered for `timeout` or longer.
    fn silence(&self, now: Instant) -> Option<String> {
        let (asked, since) = self.connection.evidence().oldest();
        let silent = now.saturating_duration_since(since);
        if silent < self.connection.timeout() {
            return None;
        }
        let evidence = self.connection.evidence();
        let error_of = |kind: Kind| {
            self.health[kind as usize].last_error(evidence.last_answer(Asked::Kind(kind)))
        };
        let (what, error) = match asked {
            Asked::Kind(kind) => (kind.to_string(), error_of(kind)),
            Asked::Probe => ("the version probe".to_string(), None),
        };
        // The error of the question, or else of any kind: what the API server said last.
        let error = error.or_else(|| Kind::ALL.into_iter().find_map(error_of));
        let error = error.map(|e| format!("; last error: {e}")).unwrap_or_default();
        Some(format!("no answer from the API server for {}s ({what}){error}", silent.as_secs()))
    }

    fn next_wake(&self) -> Option<Instant> {
        let now = Instant::now();
        let lost = self.publish.lost_reported;
        let check = if lost {
            now + LOST_RECHECK
        } else {
            self.connection.evidence().oldest().1 + self.connection.timeout()
        };
        let heartbeat = self.publish.last_sent.filter(|_| !lost).map(|at| at + HEARTBEAT);
        [Some(check), self.publish.at, heartbeat].into_iter().flatten().min()
    }

    /// One item of a kind's watch stream: an event goes into the store with `apply`.
    fn on_item<K>(
        &mut self,
        kind: Kind,
        item: Result<Event<K>, watcher::Error>,
        apply: fn(&mut ClusterStore, Event<K>) -> Applied,
    ) {
        match item {
            Ok(event) => {
                // `Init` comes before the list is asked for: not an answer yet.
                if !matches!(event, Event::Init) {
                    self.connection.evidence().answered(Asked::Kind(kind));
                    self.health[kind as usize].on_event();
                }
                let applied = apply(&mut self.store, event);
                self.on_event(applied);
            }
            Err(error) => self.health[kind as usize].on_error(&self.name, kind, &error),
        }
    }

    fn on_event(&mut self, changed: Applied) {
        if changed != Applied::Unchanged {
            self.publish.dirty = true;
            if self.publish.at.is_none() {
                // Right away after a quiet spell; in a burst, once the spacing has passed.
                let now = Instant::now();
                self.publish.at = Some(self.publish.not_before.map_or(now, |at| at.max(now)));
            }
        }
    }

    /// Sends `Lost` when the API server stopped answering, and the changes when they are
    /// due. Returns false when the control plane is gone.
    async fn send_due(&mut self) -> bool {
        let now = Instant::now();
        let lost = self.silence(now);
        if let (Some(error), false) = (&lost, self.publish.lost_reported) {
            self.publish.lost_reported = true;
            let event = SourceEvent::Lost { source: self.name.clone(), error: error.clone() };
            if self.events.send(event).await.is_err() {
                return false;
            }
        }
        if !self.publish.dirty {
            // Nothing changed: say so now and then, when the probe answered since the last
            // report, so that the last-sync age tells a quiet cluster from a silent one; and at
            // once when everything answers again, so that a withdrawn cluster (`max_stale`)
            // comes back without waiting for a heartbeat.
            let back = self.publish.lost_reported && self.store.listed();
            if let (None, Some(at)) = (&lost, &mut self.publish.last_sent) {
                let probed = self.connection.evidence().last_answer(Asked::Probe) > *at;
                if back || (*at + HEARTBEAT <= now && probed) {
                    self.publish.lost_reported = false;
                    *at = now;
                    let event = SourceEvent::Changes {
                        source: self.name.clone(),
                        changes: Arc::default(),
                        in_sync: true,
                    };
                    return self.events.send(event).await.is_ok();
                }
            }
            return true;
        }
        if self.publish.at.is_some_and(|at| at > now) {
            return true;
        }
        if !self.store.listed() {
            self.publish.at = None; // the first Changes waits for every kind's first list
            return true;
        }
        if self.events.capacity() < self.events.max_capacity() {
            // The control plane has not taken everything yet: gather more meanwhile.
            self.publish.at = Some(now + COALESCE);
            return true;
        }
        let changes = Arc::new(self.store.take_changes());
        let took = now.elapsed();
        self.publish.not_before = Some(Instant::now() + COALESCE);
        tracing::debug!(
            source = self.name,
            endpoints = changes.endpoints.len(),
            namespaces = changes.namespaces.len(),
            took_us = took.as_micros() as u64,
            "changes gathered"
        );
        self.publish.dirty = false;
        self.publish.at = None;
        self.publish.last_sent = Some(now);
        // While some question goes unanswered the view is not known to be current: the
        // changes are applied, and the source stays lost.
        let in_sync = lost.is_none();
        let event = SourceEvent::Changes { source: self.name.clone(), changes, in_sync };
        if self.events.send(event).await.is_err() {
            return false;
        }
        if in_sync {
            self.publish.lost_reported = false;
        }
        true
    }
}

/// Asks the API server's version about every third of `timeout` (each answer is evidence that
/// it is there; the period is jittered, and a failed probe is tried again after
/// [`PROBE_RETRY`], doubling while they keep failing, so that a probe cannot stay in step with
/// a periodic fault nor add load to an overloaded API server), and renews the
/// credentials after a refusal (401, 403) or while nothing answers (a rotated authority or
/// client certificate shows as failed connections, not as a 401), at most once per probe
/// interval, and after silence at most once per `timeout`.
async fn probe(connection: Arc<Connection>, source: String) {
    let timeout = connection.timeout();
    let period = timeout / 3;
    let mut renewed_at = Instant::now();
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        let refused = connection.evidence().refused();
        let silent = started.saturating_duration_since(connection.evidence().oldest().1) >= timeout;
        let since_renewal = started.duration_since(renewed_at);
        if (refused && since_renewal >= period) || (silent && since_renewal >= timeout) {
            let why = if refused { "credentials refused" } else { "no answer" };
            match connection.renew().await {
                Ok(()) => tracing::info!(source, why, "read the credentials again"),
                Err(error) => {
                    tracing::warn!(source, why, "cannot read the credentials again: {error}")
                }
            }
            renewed_at = Instant::now();
        }
        let wait = if connection.probe(period).await {
            failures = 0;
            period
        } else {
            failures = failures.saturating_add(1);
            PROBE_RETRY.saturating_mul(1 << (failures - 1).min(16)).min(period)
        };
        let next = retry::jittered(wait);
        tokio::time::sleep_until(started + next).await;
    }
}
