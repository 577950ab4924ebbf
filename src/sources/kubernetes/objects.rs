//! What is read of each object the source watches: the three kinds, and for each a view
//! deserialized straight from the API server's JSON into the few facts labelwall uses (names,
//! UID, resource version, creation time, whether a pod is terminating, labels, phase,
//! addresses), so that specs, annotations and managed fields are never held. Each fact is
//! read in place from the strings the JSON reader lends (labels and namespace names straight
//! into their shared copies, see `intern`): per pod, only its name and resource version are
//! allocated. Must not depend on the rest of the source (store, claims, watch loop): they
//! are built on these views.
//!
//! Creation times are read with jiff, as RFC 3339 only. The views implement
//! `k8s_openapi::Resource` and `Metadata` (`core_v1_resource!`) so that
//! `kube`'s watcher lists and watches them as it would the full objects; the `ObjectMeta`
//! they carry holds only what the watcher reads (the resource version).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde::de::{Deserializer, SeqAccess, Visitor};

use super::intern::{self, InternedLabels, InternedName};
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

/// The fields of `metadata` that are kept: the resource version (all the watcher reads),
/// names, UID, times and labels, each read in place from the JSON (no string of its own
/// but the name and the version; labels and namespace names shared, see `intern`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    #[serde(default)]
    name: Option<SharedText>,
    #[serde(default)]
    namespace: Option<InternedName>,
    #[serde(default)]
    uid: Option<Uid>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    creation_timestamp: Option<Created>,
    /// Set once the object is being deleted; only whether it is there matters.
    #[serde(default)]
    deletion_timestamp: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    labels: Option<InternedLabels>,
}

impl RawMeta {
    /// The metadata the watcher reads: the resource version.
    fn object_meta(&mut self) -> ObjectMeta {
        ObjectMeta { resource_version: self.resource_version.take(), ..ObjectMeta::default() }
    }

    fn name(&self) -> Arc<str> {
        self.name.as_ref().map_or_else(|| Arc::from(""), |n| Arc::clone(&n.0))
    }

    fn labels(&mut self) -> Arc<Labels> {
        self.labels.take().map_or_else(|| intern::labels(&Labels::new()), |l| l.0)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPodSpec {
    #[serde(default)]
    host_network: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct RawPodIp {
    #[serde(default)]
    ip: Option<Address>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPodStatus {
    #[serde(default)]
    phase: Option<Phase>,
    #[serde(default, rename = "podIP")]
    pod_ip: Option<Address>,
    #[serde(default, rename = "podIPs")]
    pod_ips: Option<AddressList>,
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
    /// Its UID (or, without one, `namespace/name`).
    pub(super) key: PodKey,
    pub(super) namespace: Arc<str>,
    pub(super) name: Arc<str>,
    pub(super) labels: Arc<Labels>,
    /// Seconds since the Unix epoch; 0 when absent or unreadable.
    pub(super) created: i64,
    /// `metadata.deletionTimestamp` is set: the pod is being deleted (it may stay so for
    /// long, with phase Running, on a node that stopped answering).
    pub(super) terminating: bool,
    /// Phase Succeeded or Failed: its containers are gone, and so is its claim.
    pub(super) finished: bool,
    pub(super) host_network: bool,
    pub(super) ips: PodIps,
    /// Addresses in status that are not IP addresses (or beyond the two a pod may have).
    pub(super) bad_ips: usize,
}

impl From<RawPod> for PodView {
    fn from(mut raw: RawPod) -> PodView {
        let status = raw.status.unwrap_or_default();
        let (mut ips, mut bad_ips) =
            status.pod_ips.map_or((PodIps::default(), 0), |l| (l.ips, l.bad));
        if ips.is_empty() && bad_ips == 0 {
            match status.pod_ip {
                Some(Address(Some(ip))) => {
                    ips.push(ip);
                }
                Some(Address(None)) => bad_ips += 1,
                None => {}
            }
        }
        let namespace = raw.metadata.namespace.take().map_or_else(|| intern::name(""), |n| n.0);
        let name = raw.metadata.name();
        let key = match raw.metadata.uid.take() {
            Some(uid) if !matches!(&uid, Uid::Text(text) if text.is_empty()) => PodKey(uid),
            _ => PodKey(Uid::Text(format!("{namespace}/{name}").into())),
        };
        PodView {
            key,
            labels: raw.metadata.labels(),
            created: raw.metadata.creation_timestamp.take().and_then(|c| c.0).unwrap_or(0),
            terminating: raw.metadata.deletion_timestamp.is_some(),
            metadata: raw.metadata.object_meta(),
            namespace,
            name,
            finished: status.phase.is_some_and(|p| p.finished),
            host_network: raw.spec.and_then(|s| s.host_network).unwrap_or(false),
            ips,
            bad_ips,
        }
    }
}

/// The addresses of a pod: at most two (one per family: the API server allows no more),
/// held inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct PodIps {
    len: u8,
    addrs: [IpAddr; 2],
}

impl Default for PodIps {
    fn default() -> PodIps {
        PodIps { len: 0, addrs: [IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED); 2] }
    }
}

impl PodIps {
    pub(super) fn as_slice(&self) -> &[IpAddr] {
        &self.addrs[..usize::from(self.len)]
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `ip` unless it is there already; false when there is no room for it.
    fn push(&mut self, ip: IpAddr) -> bool {
        if self.as_slice().contains(&ip) {
            return true;
        }
        match self.addrs.get_mut(usize::from(self.len)) {
            Some(slot) => {
                *slot = ip;
                self.len += 1;
                true
            }
            None => false,
        }
    }
}

impl std::ops::Deref for PodIps {
    type Target = [IpAddr];
    fn deref(&self) -> &[IpAddr] {
        self.as_slice()
    }
}

/// What identifies a pod in the store: its UID, so that a new pod of the same name is a
/// different entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct PodKey(pub(super) Uid);

/// A UID: as the 16 bytes of a UUID (what the API server gives: 16 bytes a pod instead of a
/// shared string), or the text of anything else. UUIDs order as their lowercase text would.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Uid {
    Uuid([u8; 16]),
    Text(Arc<str>),
}

impl Uid {
    fn read(text: &str) -> Uid {
        parse_uuid(text).map_or_else(|| Uid::Text(text.into()), Uid::Uuid)
    }
}

/// The 16 bytes of a UUID in its `8-4-4-4-12` lowercase hex form; `None` for anything else
/// (uppercase included, so that every UID has one form only).
fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let b = text.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&at| b[at] != b'-') {
        return None;
    }
    let mut bytes = [0u8; 16];
    let mut digits = b.iter().filter(|&&c| c != b'-');
    for byte in &mut bytes {
        let mut value = 0;
        for _ in 0..2 {
            let digit = match *digits.next()? {
                c @ b'0'..=b'9' => c - b'0',
                c @ b'a'..=b'f' => c - b'a' + 10,
                _ => return None,
            };
            value = value << 4 | digit;
        }
        *byte = value;
    }
    Some(bytes)
}

/// Reads a string in place through `read` (no string of its own is made).
macro_rules! read_str {
    ($ty:ty, $what:literal, |$text:ident| $read:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<$ty, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: serde::de::Error>(self, $text: &str) -> Result<$ty, E> {
                        Ok($read)
                    }
                }
                deserializer.deserialize_str(V)
            }
        }
    };
}

/// A name held as a shared string (read once, then moved, never copied).
#[derive(Debug)]
struct SharedText(Arc<str>);
read_str!(SharedText, "a name", |text| SharedText(text.into()));
read_str!(Uid, "a UID", |text| Uid::read(text));

/// A creation time, in seconds since the Unix epoch (`None`: unreadable).
#[derive(Debug)]
struct Created(Option<i64>);
read_str!(Created, "a timestamp", |text| Created(unix_seconds(text)));

/// Whether a pod's phase is one of the finished ones.
#[derive(Debug)]
struct Phase {
    finished: bool,
}
read_str!(Phase, "a phase", |text| Phase { finished: matches!(text, "Succeeded" | "Failed") });

/// An address (`None`: not an IP address).
#[derive(Debug)]
struct Address(Option<IpAddr>);
read_str!(Address, "an address", |text| Address(text.parse().ok()));

/// `status.podIPs`: the addresses, and how many entries were not (another) address.
#[derive(Debug, Default)]
struct AddressList {
    ips: PodIps,
    bad: usize,
}

impl<'de> Deserialize<'de> for AddressList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<AddressList, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AddressList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of pod addresses")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AddressList, A::Error> {
                let mut list = AddressList::default();
                while let Some(entry) = seq.next_element::<RawPodIp>()? {
                    match entry.ip {
                        Some(Address(Some(ip))) if list.ips.push(ip) => {}
                        Some(_) => list.bad += 1,
                        None => {}
                    }
                }
                Ok(list)
            }
        }
        deserializer.deserialize_seq(V)
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
    pub(super) name: Arc<str>,
    pub(super) labels: Arc<Labels>,
}

impl From<RawNamespace> for NamespaceView {
    fn from(mut raw: RawNamespace) -> NamespaceView {
        NamespaceView {
            name: intern::name(&raw.metadata.name()),
            labels: raw.metadata.labels(),
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
    pub(super) name: Arc<str>,
    pub(super) labels: Arc<Labels>,
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
            name: raw.metadata.name(),
            labels: raw.metadata.labels(),
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
        assert_eq!(view.ips.as_slice(), ["10.1.2.3".parse::<IpAddr>().unwrap()]);
        let view = pod(serde_json::json!({
            "metadata": {"name": "bad", "uid": "u"},
            "status": {"phase": "Running", "podIPs": [{"ip": "not-an-ip"}, {"ip": "10.1.2.4"}, {}]}
        }));
        assert_eq!(view.ips.as_slice(), ["10.1.2.4".parse::<IpAddr>().unwrap()]);
        assert_eq!(view.bad_ips, 1);
    }

    #[test]
    fn uids_are_keyed_by_their_16_bytes_and_anything_else_by_its_text() {
        let uuid = "0a1b2c3d-4e5f-4607-8899-aabbccddeeff";
        assert_eq!(
            Uid::read(uuid),
            Uid::Uuid([
                0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f, 0x46, 0x07, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
                0xee, 0xff
            ])
        );
        // Ordered as their text is, so that ties between pods go the same way either form.
        let (low, high) =
            ("00000000-0000-4000-9000-00000000000f", "00000000-0000-4000-9000-000000000010");
        assert!(low < high && Uid::read(low) < Uid::read(high));
        for other in [
            "u1",
            "0A1B2C3D-4E5F-4607-8899-AABBCCDDEEFF",
            "0a1b2c3d-4e5f-4607-8899-aabbccddeef",
            "0a1b2c3d-4e5f-4607-8899-aabbccddeeffa",
            "0a1b2c3d+4e5f-4607-8899-aabbccddeeff",
            "0a1b2c3d-4e5f-4607-8899-aabbccddeefg",
        ] {
            assert_eq!(Uid::read(other), Uid::Text(other.into()), "{other}");
        }
        let view = pod(serde_json::json!({"metadata": {"name": "p", "namespace": "ns"}}));
        assert_eq!(view.key, PodKey(Uid::Text("ns/p".into())), "no UID: namespace/name");
    }

    #[test]
    fn a_pod_has_at_most_two_addresses_and_more_count_as_bad() {
        let view = pod(running(
            "u",
            "p",
            "2024-05-01T12:00:00Z",
            &["10.1.2.3", "fd00::3", "10.1.2.3", "10.1.2.4"],
        ));
        let expected: Vec<IpAddr> = vec!["10.1.2.3".parse().unwrap(), "fd00::3".parse().unwrap()];
        assert_eq!(view.ips.as_slice(), expected);
        assert_eq!(view.bad_ips, 1, "the repeat is no address of its own, the third is bad");
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
