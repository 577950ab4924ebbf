//! labelwall: a user-space GENEVE inspection appliance for AWS Gateway Load Balancer.
//!
//! See docs/architecture.md for the module map and the data flow.

pub mod packet;
pub mod wire;
