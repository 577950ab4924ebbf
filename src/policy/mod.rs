//! Policy: the policy file, its compilation, and the selector language.
//!
//! Groups name sets of endpoints (pods, nodes, external endpoints by labels; CIDRs); ordered
//! rules say which groups may talk to which on which ports; the first matching rule decides,
//! else `default_action`. Compilation turns names into bit positions so that deciding a
//! packet costs a few bit operations (see [`crate::snapshot`]).
//!
//! Must not depend on: sockets, async, logging on the per-packet path.

pub mod compile;
pub mod file;
pub mod membership;
pub mod selector;

pub use compile::{CompiledPolicy, Group, GroupBits, PortMatch, Rule};
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
