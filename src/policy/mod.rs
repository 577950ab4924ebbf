//! Policy: the policy file, its compilation, and the selector language.
//!
//! Groups name sets of endpoints (pods, nodes, external endpoints by labels; CIDRs); ordered
//! rules say which groups may talk to which on which ports; the first matching rule decides,
//! else `default_action`. Compilation turns names into bit positions so that deciding a
//! packet costs a few bit operations (see [`crate::snapshot`]).
//!
//! `domains` groups name destinations by the server name a client asks for instead
//! ([`domains`]); [`CompiledPolicy::judge`] is first match with that name.
//!
//! Must not depend on: sockets, async, logging on the per-packet path.

pub mod compile;
pub mod domains;
pub mod file;
pub mod membership;
pub mod selector;

pub use compile::{CompiledPolicy, Group, GroupBits, PortMatch, Rule};
pub use domains::{DomainMatcher, DomainPattern};
pub use file::Action;

/// What policy says about one flow direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// Index of the deciding rule; `None` for the default action.
    pub rule: Option<usize>,
    /// Whether the deciding rule (or the default) asks for the flow log.
    pub log: bool,
}

impl Decision {
    /// Whether the flow log records the flows this decides: the rule logs, or audits.
    pub fn logged(&self) -> bool {
        self.log || self.action == Action::Audit
    }
}

/// What the data plane knows of a flow's server name (TLS SNI, HTTP Host, QUIC SNI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameState<'a> {
    /// Not read yet: the flow may still show one.
    Unknown,
    /// The flow shows none (or was picked up mid-flow, or passed the `names` limits): no
    /// `domains` group matches it.
    Absent,
    /// The name the client asked for.
    Name(&'a str),
}

/// First match with server names: a decision, or the flow must wait for its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    Decided(Decision),
    /// With the name not known yet, rule `rule` (which decides by the name) comes before
    /// every rule that decides by addresses and ports alone: the name decides.
    NeedsName {
        rule: usize,
    },
}

impl Judgement {
    /// The decision, unless the flow needs its name.
    pub fn decision(self) -> Option<Decision> {
        match self {
            Judgement::Decided(decision) => Some(decision),
            Judgement::NeedsName { .. } => None,
        }
    }
}
