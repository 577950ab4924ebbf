//! The tools around the appliance: `labelwall demo`, `loadgen`, `gwlb-sim` and `replay`.
//!
//! They exist to show, test and measure the product, and use it only as an outsider would:
//! the pipeline's public API, the wire formats, and the system-call layer in [`crate::net`].
//! No product module imports anything from here.

pub mod demo;
pub mod gwlbsim;
pub mod loadgen;
pub mod replay;
