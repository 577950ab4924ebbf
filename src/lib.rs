//! labelwall: a user-space GENEVE inspection appliance for AWS Gateway Load Balancer.
//!
//! See docs/architecture.md for the module map and the data flow.

pub mod admin;
pub mod cli;
pub mod config;
pub mod dataplane;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod loadgen;
pub mod packet;
pub mod policy;
pub mod pipeline;
pub mod wire;
