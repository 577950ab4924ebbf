//! Label sources: where the records of the label table come from. Inventory files are read
//! whole ([`SourceRecords`](crate::labels::SourceRecords)); Kubernetes watchers report what
//! changed ([`SourceChanges`]). The control plane keeps the table current from both.
//! Must not depend on: policy, the data plane.

pub mod inventory;
pub mod kubernetes;

use std::sync::Arc;

use crate::labels::SourceChanges;

/// What a live label source (a Kubernetes watcher) tells the control plane.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    /// What changed since the source's last `Changes` (the first one, sent once every kind
    /// has been listed in full, holds everything). Each leaves the source's view consistent;
    /// with `in_sync`, even an empty one says the source is in sync. Without it (events still
    /// arrive while some part of the API server is silent) the source stays lost: its
    /// `max_stale` goes on counting.
    Changes { source: String, changes: Arc<SourceChanges>, in_sync: bool },
    /// The source lost its origin (API server unreachable, watch failing): the control plane
    /// keeps its last records and reports it as out of sync until the next `Changes`.
    Lost { source: String, error: String },
}

/// The source name of a Kubernetes cluster.
pub fn kubernetes_source_name(cluster: &str) -> String {
    format!("kubernetes:{cluster}")
}
