//! What is read of each object the source watches: the three kinds, and for each a view
//! deserialized straight from the API server's JSON into the few facts labelwall uses (names,
//! UID, resource version, creation time, whether a pod is terminating, labels, phase,
//! addresses), so that specs,
//! annotations and managed fields are never held. Must not depend on the rest of the source
//! (store, claims, watch loop): they are built on these views.
//!
//! Creation times are read with jiff, as RFC 3339 only. The views implement
//! `k8s_openapi::Resource` and `Metadata` (`core_v1_resource!`) so that
//! `kube`'s watcher lists and watches them as it would the full objects; the `ObjectMeta`
//! they carry holds only what the watcher reads (name, namespace, UID, resource version).

use std::fmt;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use crate::labels::Labels;

/// The three kinds watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Pods,
    Namespaces,
    Nodes,
}

impl Kind {
    pub(super) const ALL: [Kind; 3] = [Kind::Pods, Kind::Namespaces, Kind::Nodes];

    fn as_str(self) -> &'static str {
        match self {
            Kind::Pods => "pods",
            Kind::Namespaces => "namespaces",
            Kind::Nodes => "nodes",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fields of `metadata` that are kept: what the watcher needs, and labels.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    creation_timestamp: Option<String>,
    /// Set once the object is being deleted; only whether it is there matters.
    #[serde(default)]
    deletion_timestamp: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    labels: Option<Labels>,
}

impl RawMeta {
    /// The metadata the watcher reads (name and resource version), without labels.
    fn object_meta(&mut self) -> ObjectMeta {
        ObjectMeta {
            name: self.name.take(),
            namespace: self.namespace.take(),
            uid: self.uid.take(),
            resource_version: self.resource_version.take(),
            ..ObjectMeta::default()
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPodSpec {
    #[serde(default)]
    host_network: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct RawPodIp {
    #[serde(default)]
    ip: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPodStatus {
    #[serde(default)]
    phase: Option<String>,
    #[serde(default, rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pod_ips: Option<Vec<RawPodIp>>,
}

#[derive(Debug, Deserialize)]
struct RawPod {
    #[serde(default)]
    metadata: RawMeta,
    #[serde(default)]
    spec: Option<RawPodSpec>,
    #[serde(default)]
    status: Option<RawPodStatus>,
}

/// A pod as far as labelwall cares.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "RawPod")]
pub(super) struct PodView {
    pub(super) metadata: ObjectMeta,
    pub(super) labels: Labels,
    /// Seconds since the Unix epoch; 0 when absent or unreadable.
    pub(super) created: i64,
    /// `metadata.deletionTimestamp` is set: the pod is being deleted (it may stay so for
    /// long, with phase Running, on a node that stopped answering).
    pub(super) terminating: bool,
    pub(super) phase: Option<String>,
    pub(super) host_network: bool,
    pub(super) ips: Vec<IpAddr>,
    /// Addresses in status that are not IP addresses.
    pub(super) bad_ips: usize,
}

impl From<RawPod> for PodView {
    fn from(mut raw: RawPod) -> PodView {
        let status = raw.status.unwrap_or_default();
        let mut texts: Vec<String> =
            status.pod_ips.unwrap_or_default().into_iter().filter_map(|p| p.ip).collect();
        if texts.is_empty() {
            texts.extend(status.pod_ip);
        }
        let mut ips = Vec::with_capacity(texts.len());
        let mut bad_ips = 0;
        for text in &texts {
            match text.parse::<IpAddr>() {
                Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                Ok(_) => {}
                Err(_) => bad_ips += 1,
            }
        }
        PodView {
            labels: raw.metadata.labels.take().unwrap_or_default(),
            created: raw.metadata.creation_timestamp.as_deref().and_then(unix_seconds).unwrap_or(0),
            terminating: raw.metadata.deletion_timestamp.is_some(),
            metadata: raw.metadata.object_meta(),
            phase: status.phase,
            host_network: raw.spec.and_then(|s| s.host_network).unwrap_or(false),
            ips,
            bad_ips,
        }
    }
}

/// Seconds since the Unix epoch of an RFC 3339 timestamp, as the API server writes
/// `creationTimestamp` (`2024-05-01T12:00:00Z`); a fraction, which is dropped, and a numeric
/// offset such as `+02:00` are read too.
fn unix_seconds(text: &str) -> Option<i64> {
    // jiff also reads ISO 8601 and Temporal forms that RFC 3339 does not have (a space for the
    // `T`, `+0200`, no seconds, `[UTC]`): the shape is checked first, so they stay unread.
    let (date_time, rest) = (text.get(..19)?, text.get(19..)?);
    let b = date_time.as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    let shaped = [4, 7].into_iter().all(|at| b[at] == b'-')
        && matches!(b[10], b'T' | b't')
        && [13, 16].into_iter().all(|at| b[at] == b':')
        && [0..4, 5..7, 8..10, 11..13, 14..16, 17..19].into_iter().all(|r| digits(&b[r]));
    let zone = match rest.strip_prefix('.') {
        Some(fraction) => match fraction.trim_start_matches(|c: char| c.is_ascii_digit()) {
            zone if zone.len() < fraction.len() => zone,
            _ => return None, // a fraction has at least one digit
        },
        None => rest,
    };
    let zoned = match zone.as_bytes() {
        b"Z" | b"z" => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => digits(&[*h1, *h2, *m1, *m2]),
        _ => false,
    };
    if !shaped || !zoned {
        return None;
    }
    // jiff is not given the fraction: it reads at most 9 digits, and would round towards zero
    // before 1970, where dropping the fraction rounds down. It reads a leap second (`:60`) as
    // `:59`; it is counted as the next minute's first second instead.
    let timestamp = if zone.len() == rest.len() {
        text.parse::<jiff::Timestamp>()
    } else {
        format!("{date_time}{zone}").parse::<jiff::Timestamp>()
    };
    Some(timestamp.ok()?.as_second() + i64::from(&b[17..19] == b"60"))
}

#[derive(Debug, Deserialize)]
struct RawNamespace {
    #[serde(default)]
    metadata: RawMeta,
}

/// A namespace: its name and labels.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "RawNamespace")]
pub(super) struct NamespaceView {
    pub(super) metadata: ObjectMeta,
    pub(super) labels: Labels,
}

impl From<RawNamespace> for NamespaceView {
    fn from(mut raw: RawNamespace) -> NamespaceView {
        NamespaceView {
            labels: raw.metadata.labels.take().unwrap_or_default(),
            metadata: raw.metadata.object_meta(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawNodeAddress {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    address: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawNodeStatus {
    #[serde(default)]
    addresses: Option<Vec<RawNodeAddress>>,
}

#[derive(Debug, Deserialize)]
struct RawNode {
    #[serde(default)]
    metadata: RawMeta,
    #[serde(default)]
    status: Option<RawNodeStatus>,
}

/// A node: its name, labels and InternalIP/ExternalIP addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "RawNode")]
pub(super) struct NodeView {
    pub(super) metadata: ObjectMeta,
    pub(super) labels: Labels,
    pub(super) ips: Vec<IpAddr>,
}

impl From<RawNode> for NodeView {
    fn from(mut raw: RawNode) -> NodeView {
        let mut ips = Vec::new();
        let addresses = raw.status.and_then(|s| s.addresses).unwrap_or_default();
        for address in addresses {
            let wanted = matches!(address.kind.as_deref(), Some("InternalIP" | "ExternalIP"));
            if let (true, Some(Ok(ip))) = (wanted, address.address.map(|a| a.parse::<IpAddr>()))
                && !ips.contains(&ip)
            {
                ips.push(ip);
            }
        }
        NodeView {
            labels: raw.metadata.labels.take().unwrap_or_default(),
            metadata: raw.metadata.object_meta(),
            ips,
        }
    }
}

macro_rules! core_v1_resource {
    ($view:ty, $kind:literal, $plural:literal, $scope:ty) => {
        impl k8s_openapi::Resource for $view {
            const API_VERSION: &'static str = "v1";
            const GROUP: &'static str = "";
            const KIND: &'static str = $kind;
            const VERSION: &'static str = "v1";
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = $scope;
        }
        impl k8s_openapi::Metadata for $view {
            type Ty = ObjectMeta;
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

core_v1_resource!(PodView, "Pod", "pods", k8s_openapi::NamespaceResourceScope);
core_v1_resource!(NamespaceView, "Namespace", "namespaces", k8s_openapi::ClusterResourceScope);
core_v1_resource!(NodeView, "Node", "nodes", k8s_openapi::ClusterResourceScope);

#[cfg(test)]
mod tests {
    use kube::runtime::watcher::Event;

    use super::*;
    use crate::labels::EndpointKind;
    use crate::sources::kubernetes::fixtures::*;

    #[test]
    fn only_pod_ip_is_used_when_pod_ips_is_absent_and_garbage_addresses_are_skipped() {
        let view = pod(serde_json::json!({
            "metadata": {"name": "old", "namespace": "ns", "uid": "u"},
            "status": {"phase": "Running", "podIP": "10.1.2.3"}
        }));
        assert_eq!(view.ips, ["10.1.2.3".parse::<IpAddr>().unwrap()]);
        let view = pod(serde_json::json!({
            "metadata": {"name": "bad", "uid": "u"},
            "status": {"phase": "Running", "podIPs": [{"ip": "not-an-ip"}, {"ip": "10.1.2.4"}, {}]}
        }));
        assert_eq!(view.ips, ["10.1.2.4".parse::<IpAddr>().unwrap()]);
        assert_eq!(view.bad_ips, 1);
    }

    #[test]
    fn a_pod_with_a_deletion_timestamp_is_terminating() {
        let mut json = running("u", "p", "2024-05-01T12:00:00Z", &["10.1.2.3"]);
        assert!(!pod(json.clone()).terminating);
        json["metadata"]["deletionTimestamp"] = "2024-05-01T12:30:00Z".into();
        assert!(pod(json.clone()).terminating);
        json["metadata"]["deletionTimestamp"] = serde_json::Value::Null;
        assert!(!pod(json).terminating, "null is unset");
    }

    #[test]
    fn nodes_keep_internal_and_external_addresses_only() {
        let node: NodeView = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ip-10-0-0-10", "labels": {"role": "worker"}},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "10.0.0.10"},
                {"type": "ExternalIP", "address": "203.0.113.7"},
                {"type": "InternalIP", "address": "fd00::a"},
                {"type": "Hostname", "address": "ip-10-0-0-10.ec2.internal"},
                {"type": "InternalDNS", "address": "10.9.9.9"}
            ]}
        }))
        .unwrap();
        let mut store = store_with(&[]);
        store.apply_node(Event::Apply(node));
        let records = store.records();
        let nets: Vec<String> = records.endpoints.iter().map(|e| e.net.to_string()).collect();
        assert_eq!(nets, ["10.0.0.10/32", "203.0.113.7/32", "fd00::a/128"]);
        assert!(records.endpoints.iter().all(|e| e.kind == EndpointKind::Node
            && e.namespace.is_empty()
            && labels_text(&e.labels) == "role=worker"));
    }

    #[test]
    fn creation_times_are_read_as_rfc_3339_and_nothing_else() {
        for (text, seconds) in [
            ("2024-05-01T10:00:00Z", 1_714_557_600),
            ("2024-05-01t12:00:00z", 1_714_564_800),
            ("2024-05-01T12:00:00.123456Z", 1_714_564_800),
            ("2024-05-01T14:00:00+02:00", 1_714_564_800),
            ("2024-05-01T10:30:00.5-01:30", 1_714_564_800),
            ("2015-08-30T12:36:00.123Z", 1_440_938_160),
            ("2024-05-01T12:00:00.1234567890123Z", 1_714_564_800),
            ("1969-12-31T23:59:59.5Z", -1),
            ("2016-12-31T23:59:60Z", 1_483_228_800),
        ] {
            assert_eq!(unix_seconds(text), Some(seconds), "{text}");
        }
        for bad in [
            "",
            "yesterday",
            "2024-13-01T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00.Z",
            "+024-05-01T12:00:00Z",
            // ISO 8601 and Temporal forms that jiff reads and RFC 3339 does not have.
            "2024-05-01 12:00:00Z",
            "2024-05-01T12:00:00+0200",
            "2024-05-01T12:00:00+02",
            "2024-05-01T12:00:00+02:00:30",
            "2024-05-01T12:00Z",
            "20240501T120000Z",
            "2024-05-01T12:00:00,5Z",
            "2024-05-01T12:00:00Z[UTC]",
        ] {
            assert_eq!(unix_seconds(bad), None, "{bad}");
        }
        assert_eq!(pod(running("u", "p", "2024-05-01 12:00:00Z", &[])).created, 0, "unread");
    }
}
