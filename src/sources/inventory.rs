//! Static inventory files (`labels.inventory`): identities for VMs, databases, test setups,
//! anything no watcher reports. Every problem in a file is reported at once, each naming the
//! file, line, endpoint and field.
//! Must not depend on: policy, the data plane, async.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::diagnostics::{Diagnostic, Diagnostics, read_file};
use crate::labels::syntax::{validate_label_key, validate_label_value};
use crate::labels::{EndpointKind, EndpointRecord, Labels, NamespaceRecord, SourceRecords};
use crate::prefix::parse_network;
use crate::yaml_lines::LineIndex;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InventoryFile {
    #[serde(default)]
    endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    namespaces: Vec<NamespaceSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointSpec {
    /// An address or a network.
    ip: String,
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    name: String,
    kind: EndpointKind,
    #[serde(default)]
    labels: Labels,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceSpec {
    #[serde(default)]
    cluster: String,
    name: String,
    #[serde(default)]
    labels: Labels,
}

/// The source name an inventory file's records carry.
pub fn source_name(path: &Path) -> String {
    format!("inventory:{}", path.display())
}

/// Reads and validates one inventory file.
pub fn load(path: &Path) -> Result<SourceRecords, Diagnostics> {
    let text = read_file(path)?;
    parse(path, &text)
}

/// Validates `text` as the contents of the inventory file `path`.
pub fn parse(path: &Path, text: &str) -> Result<SourceRecords, Diagnostics> {
    let file: InventoryFile =
        serde_yaml_ng::from_str(text).map_err(|e| Diagnostic::from_yaml(path, &e))?;
    let lines = LineIndex::build(text);
    let mut errors = crate::diagnostics::duplicate_keys(path, &lines);
    let mut error = |at: &str, item: String, field: &str, message: String| {
        errors.push(Diagnostic {
            line: lines.line(&format!("{at}.{field}")),
            item: Some(item),
            field: Some(field.to_string()),
            ..Diagnostic::file(path, message)
        });
    };
    let check_labels = |at: &str,
                        item: &str,
                        labels: &Labels,
                        error: &mut dyn FnMut(&str, String, &str, String)| {
        for (key, value) in labels {
            if let Err(message) = validate_label_key(key) {
                error(at, item.to_string(), &format!("labels.{key}"), message);
            }
            if let Err(message) = validate_label_value(value) {
                error(at, item.to_string(), &format!("labels.{key}"), message);
            }
        }
    };
    let mut records = SourceRecords { source: source_name(path), ..SourceRecords::default() };
    for (i, spec) in file.endpoints.into_iter().enumerate() {
        let at = format!("endpoints[{i}]");
        let item = if spec.name.is_empty() {
            format!("endpoint #{} ({})", i + 1, spec.ip)
        } else {
            format!("endpoint `{}`", spec.name)
        };
        check_labels(&at, &item, &spec.labels, &mut error);
        if spec.kind == EndpointKind::Pod && spec.namespace.is_empty() {
            error(&at, item.clone(), "namespace", "a pod needs its namespace".into());
        }
        match parse_network(&spec.ip) {
            Ok(net) => records.endpoints.push(EndpointRecord {
                net,
                cluster: spec.cluster.into(),
                namespace: spec.namespace.into(),
                name: spec.name.into(),
                kind: spec.kind,
                // An inventory entry has no creation time: it ranks as the oldest claim.
                terminating: false,
                created: 0,
                labels: Arc::new(spec.labels),
            }),
            Err(message) => error(&at, item, "ip", message),
        }
    }
    for (i, spec) in file.namespaces.into_iter().enumerate() {
        let at = format!("namespaces[{i}]");
        let item = format!("namespace `{}`", spec.name);
        check_labels(&at, &item, &spec.labels, &mut error);
        records.namespaces.push(NamespaceRecord {
            cluster: spec.cluster,
            name: spec.name,
            labels: Arc::new(spec.labels),
        });
    }
    if errors.is_empty() { Ok(records) } else { Err(Diagnostics(errors)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_example_loads() {
        let text = "endpoints:\n  - ip: 10.0.1.10\n    cluster: demo\n    namespace: bookinfo\n\
                    \x20   name: ratings-v1-7d9f\n    kind: pod\n    labels: {app: ratings, version: v1}\n\
                    \x20 - ip: 10.20.0.0/24\n    name: rating-database\n    kind: external\n\
                    \x20   labels: {app: mysql}\nnamespaces:\n  - {cluster: demo, name: bookinfo, labels: {team: books}}\n";
        let records = parse(Path::new("inv.yaml"), text).unwrap();
        assert_eq!(records.source, "inventory:inv.yaml");
        assert_eq!(records.endpoints.len(), 2);
        assert_eq!(records.endpoints[0].net.to_string(), "10.0.1.10/32");
        assert_eq!(records.endpoints[0].labels["version"], "v1");
        assert_eq!(records.endpoints[1].kind, EndpointKind::External);
        assert_eq!(records.namespaces[0].labels["team"], "books");
    }

    #[test]
    fn every_bad_field_is_reported_with_its_line() {
        let text = "endpoints:\n  - ip: 10.0.1.300\n    name: bad-ip\n    namespace: x\n    kind: pod\n\
                    \x20 - ip: 10.0.1.5\n    name: bad-label\n    kind: pod\n    namespace: x\n\
                    \x20   labels: {\"-app\": ok}\n  - ip: 10.0.1.6\n    name: no-ns\n    kind: pod\n";
        let errors = parse(Path::new("inv.yaml"), text).unwrap_err();
        let text = errors.to_string();
        assert_eq!(errors.0.len(), 3, "{text}");
        assert!(text.contains("inv.yaml:2: endpoint `bad-ip`: ip: `10.0.1.300` is not"), "{text}");
        assert!(text.contains("inv.yaml:10: endpoint `bad-label`: labels.-app:"), "{text}");
        assert!(text.contains("endpoint `no-ns`: namespace: a pod needs its namespace"), "{text}");
    }

    #[test]
    fn unknown_keys_and_kinds_are_rejected() {
        let err =
            parse(Path::new("i.yaml"), "endpoints:\n  - {ip: 1.2.3.4, kind: vm}\n").unwrap_err();
        assert!(err.to_string().contains("unknown variant `vm`"), "{err}");
        let err = parse(Path::new("i.yaml"), "endpoint: []\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `endpoint`"), "{err}");
    }
}
