//! Kubernetes label selectors (being written).
