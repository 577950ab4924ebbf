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
pub mod selector;

pub use compile::{CompiledPolicy, Group, GroupBits, PortMatch, Rule};
pub use file::Action;
