//! Fixtures shared by the unit tests of the Kubernetes source's files: pods as the API server
//! writes them, a store that has listed them, and what its records say. Must not depend on
//! the watch loop or an API server (the unit tests run without one); compiled for tests only,
//! so nothing outside `#[cfg(test)]` may use it.

use std::net::IpAddr;

use ipnet::IpNet;
use kube::runtime::watcher::Event;

use super::objects::PodView;
use super::store::ClusterStore;
use crate::labels::{Labels, SourceRecords};

/// `k=v,k=v`, in the labels' order.
pub(super) fn labels_text(labels: &Labels) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// A pod view read from its JSON.
pub(super) fn pod(json: serde_json::Value) -> PodView {
    serde_json::from_value(json).unwrap()
}

/// A running pod of `bookinfo` with these addresses, and fields labelwall does not read.
pub(super) fn running(uid: &str, name: &str, created: &str, ips: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "metadata": {
            "name": name, "namespace": "bookinfo", "uid": uid, "resourceVersion": "7",
            "creationTimestamp": created, "labels": {"app": "ratings"},
            "annotations": {"big": "x"}, "managedFields": [{"manager": "kubelet"}]
        },
        "spec": {"containers": [{"name": "c", "image": "i"}], "nodeName": "n1"},
        "status": {
            "phase": "Running", "podIP": ips.first().copied().unwrap_or_default(),
            "podIPs": ips.iter().map(|ip| serde_json::json!({"ip": ip})).collect::<Vec<_>>()
        }
    })
}

/// A store of cluster `c1` that holds these pods and has listed every kind.
pub(super) fn store_with(pods: &[serde_json::Value]) -> ClusterStore {
    let mut store = ClusterStore::new("c1".into());
    for json in pods {
        store.apply_pod(Event::Apply(pod(json.clone())));
    }
    store.pods.listed = true;
    store.namespaces.listed = true;
    store.nodes.listed = true;
    store
}

/// The name of the endpoint that owns `ip` in `records`.
pub(super) fn owner(records: &SourceRecords, ip: &str) -> Option<String> {
    let net = IpNet::from(ip.parse::<IpAddr>().unwrap());
    records.endpoints.iter().find(|e| e.net == net).map(|e| e.name.to_string())
}
