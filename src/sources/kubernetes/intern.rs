//! Interning for the store's entries: equal label sets and namespace names are held once and
//! shared by every entry that has them (the pods of one ReplicaSet have the same labels), then
//! forgotten once no entry uses them. Must not depend on anything else of the source: it
//! knows values, not objects or entries.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Arc;

use crate::labels::Labels;

/// Shares equal label sets and namespace names between entries.
#[derive(Debug, Default)]
pub(super) struct Interner {
    labels: HashSet<Arc<Labels>>,
    names: HashSet<Arc<str>>,
}

impl Interner {
    pub(super) fn labels(&mut self, labels: Labels) -> Arc<Labels> {
        intern(&mut self.labels, labels)
    }

    pub(super) fn name(&mut self, name: &str) -> Arc<str> {
        match self.names.get(name) {
            Some(shared) => Arc::clone(shared),
            None => {
                let shared: Arc<str> = Arc::from(name);
                self.names.insert(Arc::clone(&shared));
                shared
            }
        }
    }

    /// Forgets what no entry uses any more.
    pub(super) fn collect(&mut self) {
        self.labels.retain(|l| Arc::strong_count(l) > 1);
        self.names.retain(|n| Arc::strong_count(n) > 1);
    }
}

fn intern<T: Hash + Eq>(set: &mut HashSet<Arc<T>>, value: T) -> Arc<T> {
    match set.get(&value) {
        Some(shared) => Arc::clone(shared),
        None => {
            let shared = Arc::new(value);
            set.insert(Arc::clone(&shared));
            shared
        }
    }
}
