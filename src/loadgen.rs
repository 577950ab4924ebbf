//! `labelwall loadgen` (being written).
