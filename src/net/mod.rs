//! The system-call layer: batched sends on raw and packet sockets, segmentation-offload
//! sockets, socket options socket2 does not have, rtnetlink questions about routes, links and
//! neighbours, the next-hop table and the single-packet sender built on them, the receive
//! ring of `dataplane.io: packet_ring` and its tc ingress rule, a TUN device, and private
//! namespaces for tools run without privileges.
//! The data plane's workers and the tools (loadgen, gwlb-sim) use it alike.
//!
//! The only modules with `unsafe` are here (`sys.rs`, `ring.rs`, `tun.rs`, `namespace.rs`), each saying why.
//!
//! Must not depend on: the pipeline, policy, labels, the control plane, tokio.

pub mod ingress;
pub mod namespace;
pub mod netlink;
pub mod nexthop;
pub mod ring;
pub mod sys;
pub mod tun;
