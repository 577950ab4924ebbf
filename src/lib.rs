//! labelwall: a user-space GENEVE inspection appliance for AWS Gateway Load Balancer.
//!
//! See docs/architecture.md for the module map and the data flow.

pub mod admin;
pub mod cli;
pub mod config;
pub mod conntrack;
pub mod control;
pub mod dataplane;
pub mod diagnostics;
pub mod eks;
pub mod explain;
pub mod flowlog;
#[doc(hidden)]
pub mod fuzzing;
pub mod labels;
pub mod metrics;
pub mod names;
pub mod net;
pub mod packet;
pub mod pipeline;
pub mod policy;
pub mod prefix;
pub mod reject;
pub mod snapshot;
pub mod sources;
pub mod tools;
pub mod wire;
pub mod yaml_lines;
