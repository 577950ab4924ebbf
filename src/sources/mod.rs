//! Label sources: where the records of the label table come from. Each source produces a
//! whole [`SourceRecords`](crate::labels::SourceRecords) at a time; the control plane builds
//! the table from all of them.

pub mod inventory;
