//! The Kubernetes label source: one task per configured cluster watches its Pods, Namespaces
//! and Nodes through the API server and reports to the control plane what changed, as
//! [`SourceEvent::Changes`] (the owner of each changed address, each changed namespace's
//! labels), or [`SourceEvent::Lost`] while the API server does not answer. Owns the
//! per-cluster store of compact entries (never whole objects), who claims each address, what
//! was reported, and the rule that decides which pod owns an address. Must not depend on the
//! data plane, the policy or the label table's internals. Invariants: the first `Changes` is
//! only sent once every kind has completed a full list (so every report leaves a consistent
//! view, never a half-listed one); an address belongs to at most one pod: one that is not
//! terminating before one that is, then the newest by creation time (then UID), so the delete
//! of an old pod never removes the newer owner of the same address, and a pod's address beats
//! a node's (other claimants are reported as conflicts); pods that are Succeeded or Failed, run in
//! the host network, or have no address yet own nothing; no error of the API server or of its
//! data ends the task.
//!
//! How the watch works: each kind has a `kube::runtime::watcher` (paged initial list, then
//! watches with bookmarks, each ending after half of the source's `timeout` and resumed from
//! its resource version). `Init`/`InitApply` are buffered and swapped in at `InitDone`, so
//! objects that were not re-listed (after a 410 Gone) are gone. Failed watches and watch starts
//! (429, 503 during a control-plane rollout) are retried from the last resource version with
//! jittered backoff, never by a fresh list; a full list follows only a 410 Gone or a failed
//! list, at least 30 s after the last one. The source is lost when some question (a kind's
//! list or watch, the version probe about every third of `timeout`) had no answer for
//! `timeout`; the last report stays in force, events that still arrive are reported without
//! marking it in sync, and the first `Changes` once everything answers again marks it synced
//! again. Refused credentials (401, 403), or silence, make the
//! connection read the kubeconfig or the service account again (and run exec plugins again)
//! without restarting the watchers. An event marks the addresses and namespaces it touches; a
//! change after a quiet spell is reported at once, the changes of a burst are gathered for at
//! least [`COALESCE`], and nothing is sent while the control plane has not taken the previous
//! report. A cluster in sync sends an empty `Changes` every 30 s when the probe answered since
//! the last one, so that the last-sync age grows only for a source that is out of sync.
//!
//! One file per concern, the later built on the earlier: `objects` (what is read of each
//! object), `intern` (shared label sets and names), `claims` (who owns an address), `store`
//! (the cluster store and what changed), `connection` (the client, its credentials and the
//! evidence of answers), `retry` (how a watcher tries again), `health` (which watch errors are
//! logged), `watch` (the loop between the watchers, the store and the control plane). This
//! file holds the entry points: [`spawn`], [`run`] and [`list_once`].

mod claims;
mod connection;
mod entries;
#[cfg(test)]
mod fixtures;
mod health;
mod intern;
mod objects;
mod retry;
mod store;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::watcher;
use tokio::sync::mpsc;

use self::connection::Connection;
use self::objects::{Kind, NamespaceView, NodeView, PodView};
use self::store::ClusterStore;
pub use self::watch::COALESCE;
use self::watch::ClusterWatch;
use crate::config::KubernetesSource;
use crate::labels::SourceRecords;
use crate::sources::{SourceEvent, kubernetes_source_name};

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
    let connection = loop {
        match Connection::open(&source).await {
            Ok(connection) => break connection,
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
    ClusterWatch::new(source.cluster, Arc::new(connection), events).run().await;
}

/// Lists one cluster once (pods, namespaces, nodes) and returns its records, or the first
/// error: for commands that answer one question and exit (`explain`), not for the appliance.
pub async fn list_once(source: &KubernetesSource) -> Result<SourceRecords, String> {
    let connection = Connection::open(source).await?;
    let (client, timeout) = (connection.client(), source.timeout());
    let mut store = ClusterStore::new(source.cluster.clone());
    let mut pods = watch::stream::<PodView>(client, timeout);
    let mut namespaces = watch::stream::<NamespaceView>(client, timeout);
    let mut nodes = watch::stream::<NodeView>(client, timeout);
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
