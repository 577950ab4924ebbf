//! Policy: the policy file, its compilation against identities, and the verdict.

pub mod selector;
