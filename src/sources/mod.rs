//! Label sources: where the records of the label table come from. Each source produces a
//! whole [`SourceRecords`](crate::labels::SourceRecords) at a time; the control plane builds
//! the table from all of them.

pub mod inventory;
pub mod kubernetes;

use std::sync::Arc;

use crate::labels::SourceRecords;

/// What a live label source (a Kubernetes watcher) tells the control plane.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    /// A full, consistent view of the source: after its first complete list, and after every
    /// change since. Replaces what the source had.
    Records { source: String, records: Arc<SourceRecords> },
    /// The source lost its origin (API server unreachable, watch failing): the control plane
    /// keeps its last records and reports it as out of sync until the next `Records`.
    Lost { source: String, error: String },
}

/// The source name of a Kubernetes cluster.
pub fn kubernetes_source_name(cluster: &str) -> String {
    format!("kubernetes:{cluster}")
}
