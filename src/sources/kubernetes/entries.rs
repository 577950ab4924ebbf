//! A map for the store's tables that stays small when large: values sit in one vector and are
//! found through a hash index of keys and positions. A hash table of a million entries has
//! 2^21 buckets (hashbrown fills at most 7/8 of them), each as large as a key and a value;
//! here a bucket holds a key and a position, and each value is stored once, densely. Must not
//! depend on what the entries are.

use std::hash::Hash;

use rustc_hash::FxHashMap;

#[derive(Debug)]
pub(super) struct Entries<K, E> {
    index: FxHashMap<K, u32>,
    values: Vec<Option<E>>,
    /// Positions of `values` that hold nothing, reused first.
    free: Vec<u32>,
}

impl<K, E> Default for Entries<K, E> {
    fn default() -> Self {
        Entries { index: FxHashMap::default(), values: Vec::new(), free: Vec::new() }
    }
}

impl<K: Eq + Hash, E> Entries<K, E> {
    pub(super) fn get(&self, key: &K) -> Option<&E> {
        let &at = self.index.get(key)?;
        self.values[at as usize].as_ref()
    }

    pub(super) fn contains_key(&self, key: &K) -> bool {
        self.index.contains_key(key)
    }

    /// Inserts or replaces; returns the value that was there.
    pub(super) fn insert(&mut self, key: K, value: E) -> Option<E> {
        use std::collections::hash_map::Entry;
        match self.index.entry(key) {
            Entry::Occupied(entry) => self.values[*entry.get() as usize].replace(value),
            Entry::Vacant(entry) => {
                let at = match self.free.pop() {
                    Some(at) => {
                        self.values[at as usize] = Some(value);
                        at
                    }
                    None => {
                        self.values.push(Some(value));
                        u32::try_from(self.values.len() - 1).expect("fewer than 2^32 entries")
                    }
                };
                entry.insert(at);
                None
            }
        }
    }

    pub(super) fn remove(&mut self, key: &K) -> Option<E> {
        let at = self.index.remove(key)?;
        self.free.push(at);
        self.values[at as usize].take()
    }

    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&K, &E)> {
        self.index.iter().filter_map(|(key, &at)| Some((key, self.values[at as usize].as_ref()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_map_and_reuses_the_room_of_removed_values() {
        let mut entries: Entries<&str, u32> = Entries::default();
        assert_eq!(entries.insert("a", 1), None);
        assert_eq!(entries.insert("b", 2), None);
        assert_eq!(entries.insert("a", 3), Some(1));
        assert_eq!(
            (entries.get(&"a"), entries.get(&"b"), entries.get(&"c")),
            (Some(&3), Some(&2), None)
        );
        assert_eq!(entries.remove(&"a"), Some(3));
        assert_eq!(entries.remove(&"a"), None);
        assert!(!entries.contains_key(&"a") && entries.contains_key(&"b"));
        assert_eq!(entries.insert("c", 4), None);
        assert_eq!(entries.values.len(), 2, "c took a's room");
        let mut all: Vec<_> = entries.iter().map(|(k, v)| (*k, *v)).collect();
        all.sort();
        assert_eq!(all, [("b", 2), ("c", 4)]);
        assert_eq!(entries.len(), 2);
    }
}
