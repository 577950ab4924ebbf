//! The watch loop: one task per cluster feeds its three watch streams into the store, tells
//! the control plane what changed, that the source is lost while a kind is out of reach, and
//! that a quiet cluster is still in sync. Must not depend on the data plane, the policy or
//! the label table's internals: it speaks to the control plane only in `SourceEvent`s.
//!
//! An event goes into the store at once and marks the report due; events already waiting
//! are taken in the same turn, so a burst becomes one report. A change after a quiet spell
//! is reported at once, the changes of a burst are gathered for at least [`COALESCE`], and
//! nothing is sent while the control plane has not taken the previous report.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::health::KindHealth;
use super::objects::{Kind, NamespaceView, NodeView, PodView};
use super::store::{Applied, ClusterStore};
use crate::sources::{SourceEvent, kubernetes_source_name};

/// The least time between two reports: a change after a quiet spell is reported at once,
/// the changes of a burst are gathered for at least this long.
pub const COALESCE: Duration = Duration::from_millis(10);
/// Events taken at most in one go before the changes are reported.
const DRAIN_MAX: usize = 10_000;
/// While in sync and unchanged, an empty report is sent this often.
const HEARTBEAT: Duration = Duration::from_secs(30);

/// The events of one kind's watcher.
type WatchStream<K> = Pin<Box<dyn Stream<Item = Result<Event<K>, watcher::Error>> + Send>>;

/// A kind's watch stream: a paged list, then a watch with bookmarks, retried on the default
/// backoff.
pub(super) fn stream<K>(client: &kube::Client) -> WatchStream<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + fmt::Debug
        + for<'de> Deserialize<'de>
        + Send
        + 'static,
{
    let api = kube::Api::<K>::all(client.clone());
    watcher::watcher(api, watcher::Config::default()).default_backoff().boxed()
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

/// The watch of one cluster: its watch streams, its store, each kind's health and what is
/// due to be sent.
pub(super) struct ClusterWatch {
    name: String,
    client: kube::Client,
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

impl ClusterWatch {
    pub(super) fn new(
        cluster: String,
        client: kube::Client,
        events: mpsc::Sender<SourceEvent>,
    ) -> Self {
        ClusterWatch {
            name: kubernetes_source_name(&cluster),
            pods: stream(&client),
            namespaces: stream(&client),
            nodes: stream(&client),
            client,
            events,
            store: ClusterStore::new(cluster),
            health: [KindHealth::new(), KindHealth::new(), KindHealth::new()],
            publish: Publish::default(),
        }
    }

    /// Runs until `events` closes.
    pub(super) async fn run(mut self) {
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
            self.restart_due();
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

    fn next_wake(&self) -> Option<Instant> {
        let restarts = self.health.iter().filter_map(KindHealth::restart_at);
        let healthy = self.health.iter().all(|h| h.lost().is_none());
        let heartbeat = self.publish.last_sent.filter(|_| healthy).map(|at| at + HEARTBEAT);
        restarts.chain(self.publish.at).chain(heartbeat).min()
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
                let applied = apply(&mut self.store, event);
                self.on_event(kind, applied);
            }
            Err(error) => self.health[kind as usize].on_error(&self.name, kind, &error),
        }
    }

    fn on_event(&mut self, kind: Kind, changed: Applied) {
        self.health[kind as usize].on_event(&self.name, kind, changed == Applied::Listed);
        if changed != Applied::Unchanged {
            self.publish.dirty = true;
            if self.publish.at.is_none() {
                // Right away after a quiet spell; in a burst, once the spacing has passed.
                let now = Instant::now();
                self.publish.at = Some(self.publish.not_before.map_or(now, |at| at.max(now)));
            }
        }
    }

    /// Restarts the watchers whose restart is due: a fresh list, which is what tells that
    /// the API server is back.
    fn restart_due(&mut self) {
        let now = Instant::now();
        for kind in Kind::ALL {
            if !self.health[kind as usize].take_restart(now) {
                continue;
            }
            tracing::debug!(source = self.name, %kind, "restarting the watcher");
            match kind {
                Kind::Pods => self.pods = stream(&self.client),
                Kind::Namespaces => self.namespaces = stream(&self.client),
                Kind::Nodes => self.nodes = stream(&self.client),
            }
        }
    }

    /// Sends `Lost` when a kind lost the API server, and the changes when they are due.
    /// Returns false when the control plane is gone.
    async fn send_due(&mut self) -> bool {
        let lost = self.health.iter().find_map(|h| h.lost().map(String::from));
        if let (Some(error), false) = (&lost, self.publish.lost_reported) {
            self.publish.lost_reported = true;
            let event = SourceEvent::Lost { source: self.name.clone(), error: error.clone() };
            if self.events.send(event).await.is_err() {
                return false;
            }
        }
        let now = Instant::now();
        if !self.publish.dirty {
            // Nothing changed: say so now and then, so that the last-sync age tells a quiet
            // cluster from a lost one; and at once when the API server is back, so that a
            // withdrawn cluster (`max_stale`) comes back without waiting for a heartbeat.
            let back = lost.is_none() && self.publish.lost_reported && self.store.listed();
            if let (None, Some(at)) = (&lost, &mut self.publish.last_sent)
                && (*at + HEARTBEAT <= now || back)
            {
                self.publish.lost_reported = false;
                *at = now;
                let event =
                    SourceEvent::Changes { source: self.name.clone(), changes: Arc::default() };
                return self.events.send(event).await.is_ok();
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
        let event = SourceEvent::Changes { source: self.name.clone(), changes };
        if self.events.send(event).await.is_err() {
            return false;
        }
        self.publish.lost_reported = false;
        if let Some(error) = lost {
            // Some kind is still out of reach: the view is not known to be current.
            self.publish.lost_reported = true;
            let event = SourceEvent::Lost { source: self.name.clone(), error };
            return self.events.send(event).await.is_ok();
        }
        true
    }
}
