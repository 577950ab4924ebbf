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
//!
//! One file per concern, the later built on the earlier: `objects` (what is read of each
//! object), `intern` (shared label sets and names), `claims` (who owns an address), `store`
//! (the cluster store and what changed), `health` (whether a kind has lost the API server),
//! `watch` (the loop between the watchers, the store and the control plane). This file holds
//! the entry points: [`spawn`], [`run`] and [`list_once`].

mod claims;
#[cfg(test)]
mod fixtures;
mod health;
mod intern;
mod objects;
mod store;
mod watch;

use std::time::Duration;

use futures::StreamExt;
use kube::runtime::watcher;
use tokio::sync::mpsc;

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
    let mut pods = watch::stream::<PodView>(&client);
    let mut namespaces = watch::stream::<NamespaceView>(&client);
    let mut nodes = watch::stream::<NodeView>(&client);
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
