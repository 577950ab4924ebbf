//! policy.yaml as written by the operator: plain serde types, checked for shape only.
//! Meaning (group references, selectors, CIDRs, ports) is checked by [`super::compile`],
//! which reports every problem at once.
//! Must not depend on: anything of labelwall's.

use std::collections::BTreeMap;

use serde::Deserialize;

/// What a rule (or the default) does with a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Send the flow's packets back to GWLB.
    Allow,
    /// Drop silently.
    Deny,
    /// Drop and tell the client: TCP RST, or ICMP/ICMPv6 administratively prohibited.
    Reject,
    /// Allow, but count and log the flow as one that would have been denied.
    Audit,
}

impl Action {
    pub const ALL: [Action; 4] = [Action::Allow, Action::Deny, Action::Reject, Action::Audit];
    pub const COUNT: usize = Self::ALL.len();

    /// Position in [`Action::ALL`] (counters are arrays indexed by it).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The `verdict` label of `labelwall_packets_total`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Reject => "reject",
            Action::Audit => "audit",
        }
    }

    /// Whether the flow's packets go back to GWLB.
    pub fn passes(self) -> bool {
        matches!(self, Action::Allow | Action::Audit)
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// For flows that no rule matches.
    pub default_action: Action,
    /// Write flows decided by the default action to the flow log.
    #[serde(default)]
    pub default_log: bool,
    #[serde(default)]
    pub groups: BTreeMap<String, GroupSpec>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

/// A named set of endpoints: the union of every kind it lists, minus `except`; or, alone, the
/// server names (`domains`) a flow's client may ask for.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    #[serde(default)]
    pub pods: Option<PodsSpec>,
    #[serde(default)]
    pub nodes: Option<KindSpec>,
    #[serde(default)]
    pub external: Option<KindSpec>,
    #[serde(default)]
    pub cidrs: Vec<String>,
    #[serde(default)]
    pub except: Vec<String>,
    /// Server names (`api.stripe.com`, `*.stripe.com`); a domains group has no other kind.
    #[serde(default)]
    pub domains: Option<Vec<String>>,
}

/// Pods selected by labels, narrowed by cluster, namespace and namespace labels.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PodsSpec {
    #[serde(default)]
    pub selector: Option<String>,
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub namespace_selector: Option<String>,
}

/// Nodes or external endpoints selected by labels, optionally of one cluster.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KindSpec {
    #[serde(default)]
    pub selector: Option<String>,
    #[serde(default)]
    pub cluster: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    pub from: Vec<String>,
    pub to: Vec<String>,
    /// `tcp/443`, `udp/53`, `tcp/8000-8999`, `tcp`, `icmp`, `icmpv6`; absent = every port.
    #[serde(default)]
    pub ports: Option<Vec<String>>,
    pub action: Action,
    #[serde(default)]
    pub log: bool,
}
