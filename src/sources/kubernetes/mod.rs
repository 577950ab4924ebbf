//! The Kubernetes label source: one task per configured cluster watches its Pods, Namespaces
//! and Nodes through the API server and reports to the control plane what changed, as
//! [`SourceEvent::Changes`] (the owner of each changed address, each changed namespace's
//! labels), or [`SourceEvent::Lost`] while the API server cannot be reached. Owns the
//! per-cluster store of compact entries (never whole objects), who claims each address, what
//! was reported, and the rule that decides which pod owns an address. Must not depend on the
//! data plane, the policy or the label table's internals. Invariants: the first `Changes` is
//! only sent once every kind has completed a full list (so every report leaves a consistent
//! view, never a half-listed one); an address belongs to at most one pod, the newest by
//! creation time (then UID), so the delete of an old pod never removes the newer owner of the
//! same address, and a pod's address beats a node's; pods that are Succeeded or Failed, run in
//! the host network, or have no address yet own nothing; no error of the API server or of its
//! data ends the task.
//!
//! How the watch works: each kind has a `kube::runtime::watcher` (paged initial list, then a
//! watch with bookmarks, default backoff). `Init`/`InitApply` are buffered and swapped in at
//! `InitDone`, so objects that were not re-listed (after a 410 Gone, a restart) are gone.
//! Dropped watch connections are resumed by the watcher from the last resource version. A
//! failed list or watch start (or three failed watches in a row) means the API server is out
//! of reach: the source is reported lost, the last report stays in force, and the kind's
//! watcher is restarted (a fresh list) on a backoff of its own until a list succeeds; the
//! next `Changes` (only what differs from the last report) marks the source synced again. An
//! event marks the addresses and namespaces it touches; a change after a quiet spell is
//! reported at once, the changes of a burst are gathered for at least [`COALESCE`], and
//! nothing is sent while the control plane has not taken the previous report. A quiet cluster
//! in sync sends an empty `Changes` every 30 s, so that the last-sync age grows only for a
//! source that is out of sync.

mod claims;
#[cfg(test)]
mod fixtures;
mod health;
mod intern;
mod objects;
mod store;

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

use self::health::KindHealth;
use self::objects::{Kind, NamespaceView, NodeView, PodView};
use self::store::{Applied, ClusterStore};
use crate::config::KubernetesSource;
use crate::labels::SourceRecords;
use crate::sources::{SourceEvent, kubernetes_source_name};

/// The least time between two reports: a change after a quiet spell is reported at once,
/// the changes of a burst are gathered for at least this long.
pub const COALESCE: Duration = Duration::from_millis(10);
/// Events taken at most in one go before the changes are reported.
const DRAIN_MAX: usize = 10_000;
/// While in sync and unchanged, an empty report is sent this often.
const HEARTBEAT: Duration = Duration::from_secs(30);
/// How often an unreadable kubeconfig is read again.
const CONFIG_RETRY: Duration = Duration::from_secs(5);

/// Starts watching one cluster; the task reports to `events` until that channel closes.
pub fn spawn(
    source: KubernetesSource,
    events: mpsc::Sender<SourceEvent>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(source, events))
}

/// Watches one cluster until `events` closes.
pub async fn run(source: KubernetesSource, events: mpsc::Sender<SourceEvent>) {
    let name = kubernetes_source_name(&source.cluster);
    let mut reported = false;
    let client = loop {
        match client_for(&source).await {
            Ok(client) => break client,
            Err(error) => {
                tracing::error!(source = name, "cannot connect to the API server: {error}");
                if !reported {
                    reported = true;
                    let lost = SourceEvent::Lost { source: name.clone(), error };
                    if events.send(lost).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(CONFIG_RETRY) => {}
                    _ = events.closed() => return,
                }
            }
        }
    };
    tracing::info!(source = name, "watching pods, namespaces and nodes");
    ClusterWatch::new(source.cluster, client, events).run().await;
}

/// A client from the kubeconfig file (exec credential plugins included) or the in-cluster
/// service account.
async fn client_for(source: &KubernetesSource) -> Result<kube::Client, String> {
    let config = match &source.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read the kubeconfig {}: {e}", path.display()))?;
            let options = kube::config::KubeConfigOptions::default();
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| format!("the kubeconfig {} is not usable: {e}", path.display()))?
        }
        None => {
            kube::Config::incluster().map_err(|e| format!("no in-cluster service account: {e}"))?
        }
    };
    kube::Client::try_from(config).map_err(|e| format!("cannot build an API client: {e}"))
}

/// Lists one cluster once (pods, namespaces, nodes) and returns its records, or the first
/// error: for commands that answer one question and exit (`explain`), not for the appliance.
pub async fn list_once(source: &KubernetesSource) -> Result<SourceRecords, String> {
    let client = client_for(source).await?;
    let mut store = ClusterStore::new(source.cluster.clone());
    let mut pods = watch::<PodView>(&client);
    let mut namespaces = watch::<NamespaceView>(&client);
    let mut nodes = watch::<NodeView>(&client);
    while !store.listed() {
        let failed = |kind: Kind, error: watcher::Error| format!("{kind}: {error}");
        tokio::select! {
            Some(item) = pods.next(), if !store.pods.listed => {
                store.apply_pod(item.map_err(|e| failed(Kind::Pods, e))?);
            }
            Some(item) = namespaces.next(), if !store.namespaces.listed => {
                store.apply_namespace(item.map_err(|e| failed(Kind::Namespaces, e))?);
            }
            Some(item) = nodes.next(), if !store.nodes.listed => {
                store.apply_node(item.map_err(|e| failed(Kind::Nodes, e))?);
            }
            else => return Err("the watch streams ended before a full list".into()),
        }
    }
    Ok(store.records())
}

// ---------------------------------------------------------------------------------------------
// The watch loop.

type WatchStream<K> = Pin<Box<dyn Stream<Item = Result<Event<K>, watcher::Error>> + Send>>;

fn watch<K>(client: &kube::Client) -> WatchStream<K>
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

struct ClusterWatch {
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
    fn new(cluster: String, client: kube::Client, events: mpsc::Sender<SourceEvent>) -> Self {
        ClusterWatch {
            name: kubernetes_source_name(&cluster),
            pods: watch(&client),
            namespaces: watch(&client),
            nodes: watch(&client),
            client,
            events,
            store: ClusterStore::new(cluster),
            health: [KindHealth::new(), KindHealth::new(), KindHealth::new()],
            publish: Publish::default(),
        }
    }

    async fn run(mut self) {
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
                Kind::Pods => self.pods = watch(&self.client),
                Kind::Namespaces => self.namespaces = watch(&self.client),
                Kind::Nodes => self.nodes = watch(&self.client),
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
            // cluster from a lost one.
            if let (None, Some(at)) = (&lost, &mut self.publish.last_sent)
                && *at + HEARTBEAT <= now
            {
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
