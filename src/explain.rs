//! `labelwall explain`: what policy says about a flow and why, from the same snapshot the
//! data plane would use: the verdict, the deciding rule, and who both ends are; with the label
//! builder, also the claims on each end's address that lose to its owner, and why. With a
//! server name, the verdict for a flow that shows it; without, whether the verdict waits for
//! one (and which rule would decide by it).
//! Must not depend on: the data plane, sockets, the flow log.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;

use crate::labels::{EndpointKind, LabelBuilder, Labels, Loss};
use crate::packet::ip_proto;
use crate::policy::{Judgement, NameState};
use crate::snapshot::Snapshot;

/// The question: the first packet of a flow from `src` to `dst`.
#[derive(Debug, Clone, Copy)]
pub struct FlowQuestion {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub sport: u16,
    pub dport: u16,
}

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub verdict: &'static str,
    pub rule: String,
    /// Line of the rule in the policy file (absent for the default action).
    pub rule_line: Option<usize>,
    pub policy: String,
    pub policy_generation: u64,
    pub proto: &'static str,
    pub sport: u16,
    pub dport: u16,
    /// The server name asked about (`--server-name`), and the `domains` groups it matches;
    /// `None` when none was given.
    pub server_name: Option<ServerNameReport>,
    /// Without a server name: the rule that waits for it, when the verdict depends on it
    /// (then `verdict` and `rule` are what a flow that shows no name gets).
    pub waits_for_name: Option<RuleReport>,
    pub src: EndpointReport,
    pub dst: EndpointReport,
}

#[derive(Debug, Serialize)]
pub struct ServerNameReport {
    /// Lowercase, without a trailing dot.
    pub name: String,
    pub groups: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RuleReport {
    pub rule: String,
    pub rule_line: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct EndpointReport {
    pub ip: IpAddr,
    /// `None` when no label source knows the address (only `any` and CIDR groups match it).
    pub identity: Option<IdentityReport>,
    pub groups: Vec<String>,
    /// Other claims on the address (or network) that owns it, in the order they would take
    /// over; left out when there are none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub losing: Vec<LosingClaim>,
}

/// A claim on an address that loses to its owner.
#[derive(Debug, Serialize)]
pub struct LosingClaim {
    pub source: String,
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    pub kind: EndpointKind,
    /// Why it loses: `withdrawn`, `lost_source`, `terminating`, `older`, `later_in_config`.
    pub loss: Loss,
}

#[derive(Debug, Serialize)]
pub struct IdentityReport {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    pub kind: EndpointKind,
    pub labels: Labels,
    pub source: String,
}

/// Answers the question with `snapshot`.
pub fn explain(snapshot: &Snapshot, q: &FlowQuestion) -> Explanation {
    explain_with_claims(snapshot, q, None)
}

/// Answers the question with `snapshot`, and with `labels` (the builder its table came from)
/// the claims on each end's address that lose.
pub fn explain_with_claims(
    snapshot: &Snapshot,
    q: &FlowQuestion,
    labels: Option<&LabelBuilder>,
) -> Explanation {
    explain_with_name(snapshot, q, None, labels)
}

/// As [`explain_with_claims`], for a flow whose client asks for `server_name` (`None`: the
/// name is not known, and the answer says whether the verdict waits for it).
pub fn explain_with_name(
    snapshot: &Snapshot,
    q: &FlowQuestion,
    server_name: Option<&str>,
    labels: Option<&LabelBuilder>,
) -> Explanation {
    let losing = |ip: IpAddr| -> Vec<LosingClaim> {
        let (Some(labels), Some(owner)) = (labels, snapshot.labels.lookup(ip)) else {
            return Vec::new();
        };
        labels
            .claimants(owner.net)
            .into_iter()
            .filter_map(|c| {
                Some(LosingClaim {
                    source: labels.source_name(c.source).to_string(),
                    cluster: c.record.cluster.to_string(),
                    namespace: c.record.namespace.to_string(),
                    name: c.record.name.to_string(),
                    kind: c.record.kind,
                    loss: c.loss?,
                })
            })
            .collect()
    };
    let port = matches!(q.protocol, ip_proto::TCP | ip_proto::UDP).then_some(q.dport);
    let name = match server_name {
        Some(name) => NameState::Name(name),
        None => NameState::Unknown,
    };
    let (decision, waits) = match snapshot.judge(q.src, q.dst, q.protocol, port, name) {
        Judgement::Decided(decision) => (decision, None),
        Judgement::NeedsName { rule } => (
            snapshot.decide(q.src, q.dst, q.protocol, port),
            Some(RuleReport {
                rule: snapshot.rule_name(Some(rule)).to_string(),
                rule_line: snapshot.policy.rules[rule].line,
            }),
        ),
    };
    let server_name = server_name.map(|name| ServerNameReport {
        name: name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase(),
        groups: snapshot
            .group_names(&snapshot.policy.domains().matches(name))
            .into_iter()
            .map(String::from)
            .collect(),
    });
    let endpoint = |ip: IpAddr| EndpointReport {
        ip,
        identity: snapshot.labels.lookup(ip).map(|e| {
            let identity = snapshot.labels.identity(e.identity);
            IdentityReport {
                cluster: identity.cluster.clone(),
                namespace: identity.namespace.clone(),
                name: e.name.to_string(),
                kind: identity.kind,
                labels: identity.labels.clone(),
                source: snapshot.labels.source_name(e).to_string(),
            }
        }),
        groups: snapshot
            .group_names(&snapshot.groups_of(ip))
            .into_iter()
            .map(String::from)
            .collect(),
        losing: losing(ip),
    };
    Explanation {
        verdict: decision.action.as_str(),
        rule: snapshot.rule_name(decision.rule).to_string(),
        rule_line: decision.rule.and_then(|r| snapshot.policy.rules[r].line),
        policy: snapshot.policy.path.display().to_string(),
        policy_generation: snapshot.generation,
        proto: crate::packet::ip_proto::name(q.protocol),
        sport: q.sport,
        dport: q.dport,
        server_name,
        waits_for_name: waits,
        src: endpoint(q.src),
        dst: endpoint(q.dst),
    }
}

impl Explanation {
    /// The human-readable form.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let rule = match self.rule_line {
            Some(line) => format!("{} ({}:{line})", self.rule, self.policy),
            None => format!("{} (default_action of {})", self.rule, self.policy),
        };
        let ports = if matches!(self.proto, "tcp" | "udp") {
            format!(" {} -> {}", self.sport, self.dport)
        } else {
            String::new()
        };
        let place = |line: Option<usize>| match line {
            Some(line) => format!("{}:{line}", self.policy),
            None => self.policy.clone(),
        };
        match &self.waits_for_name {
            Some(_) => {
                let _ =
                    writeln!(out, "verdict: {} (if the flow shows no server name)", self.verdict);
            }
            None => {
                let _ = writeln!(out, "verdict: {}", self.verdict);
            }
        }
        let _ = writeln!(out, "rule:    {rule}");
        if let Some(waits) = &self.waits_for_name {
            let _ = writeln!(
                out,
                "waits:   for the server name: rule {} ({}) decides by it; the flow waits until \
                 its name is read (names.timeout at most), and the verdict above is for a flow \
                 that shows none (ask again with --server-name NAME)",
                waits.rule,
                place(waits.rule_line)
            );
        }
        let _ = writeln!(out, "flow:    {} {} -> {}{ports}", self.proto, self.src.ip, self.dst.ip);
        if let Some(name) = &self.server_name {
            let groups = if name.groups.is_empty() {
                "no domains group".to_string()
            } else {
                format!("domains groups: {}", name.groups.join(", "))
            };
            let _ = writeln!(out, "name:    {} ({groups})", name.name);
        }
        for (role, e) in [("src", &self.src), ("dst", &self.dst)] {
            let who = match &e.identity {
                Some(i) => format!("{} {}", i.kind, describe(i)),
                None => "unknown (no label source knows this address)".to_string(),
            };
            let _ = writeln!(out, "{role}:     {} {who}", e.ip);
            for l in &e.losing {
                let path = [l.cluster.as_str(), l.namespace.as_str(), l.name.as_str()]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join("/");
                let _ = writeln!(
                    out,
                    "         also claimed by {} {path} from {} (loses: {})",
                    l.kind, l.source, l.loss
                );
            }
            let _ = writeln!(out, "         groups: {}", e.groups.join(", "));
        }
        out
    }
}

fn describe(i: &IdentityReport) -> String {
    let path = [i.cluster.as_str(), i.namespace.as_str(), i.name.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    let labels = i.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    format!("{path} {{{labels}}} from {}", i.source)
}
