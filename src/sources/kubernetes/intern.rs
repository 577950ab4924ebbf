//! Interning for the source's objects: equal label sets and namespace names are held once and
//! shared by every object that has them (the pods of one ReplicaSet have the same labels),
//! then forgotten once nothing uses them. Must not depend on anything else of the source: it
//! knows values, not objects or entries.
//!
//! Label sets are interned while they are deserialized, from the strings serde_json lends
//! out of the page it reads: a label set that is already known costs no allocation, where
//! building a map of owned strings per pod (and dropping it once the interned copy was found)
//! was most of the time a 1M-pod list took. The interner is per thread: the watchers of every
//! cluster run on the control plane's one thread, and tests on their own.

use std::cell::RefCell;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use hashbrown::HashTable;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};

use crate::labels::Labels;

thread_local! {
    static INTERNER: RefCell<Interner> = RefCell::new(Interner::default());
}

/// Shares equal label sets and names. Hashed with random keys: label values are written by
/// whoever may create pods, who must not be able to make lookups collide.
#[derive(Default)]
struct Interner {
    hasher: ahash::RandomState,
    labels: HashTable<Arc<Labels>>,
    names: HashTable<Arc<str>>,
}

/// The hash of a label set, from its pairs in key order.
fn hash_pairs<'a>(
    state: &ahash::RandomState,
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
) -> u64 {
    let mut hasher = state.build_hasher();
    for (key, value) in pairs {
        // Lengths first, so that ("ab", "c") and ("a", "bc") differ.
        hasher.write_usize(key.len());
        hasher.write(key.as_bytes());
        hasher.write_usize(value.len());
        hasher.write(value.as_bytes());
    }
    hasher.finish()
}

impl Interner {
    fn labels(&mut self, pairs: &Pairs) -> Arc<Labels> {
        let hash = hash_pairs(&self.hasher, pairs.iter());
        let same = |labels: &Arc<Labels>| {
            labels.len() == pairs.len()
                && labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).eq(pairs.iter())
        };
        if let Some(shared) = self.labels.find(hash, same) {
            return Arc::clone(shared);
        }
        let labels: Arc<Labels> =
            Arc::new(pairs.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect());
        let state = &self.hasher;
        let rehash = |l: &Arc<Labels>| hash_pairs(state, l.iter().map(|(k, v)| (&**k, &**v)));
        self.labels.insert_unique(hash, Arc::clone(&labels), rehash);
        labels
    }

    fn name(&mut self, name: &str) -> Arc<str> {
        let hash = self.hasher.hash_one(name);
        if let Some(shared) = self.names.find(hash, |n| **n == *name) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(name);
        let state = &self.hasher;
        self.names.insert_unique(hash, Arc::clone(&shared), |n| state.hash_one(&**n));
        shared
    }
}

impl std::fmt::Debug for Interner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interner")
            .field("labels", &self.labels.len())
            .field("names", &self.names.len())
            .finish()
    }
}

/// The shared copy of a name (a namespace's).
pub(super) fn name(name: &str) -> Arc<str> {
    INTERNER.with(|interner| interner.borrow_mut().name(name))
}

/// The shared copy of a label set.
pub(super) fn labels(labels: &Labels) -> Arc<Labels> {
    let mut pairs = Pairs::default();
    for (key, value) in labels {
        pairs.push(key, value);
    }
    pairs.settle();
    INTERNER.with(|interner| interner.borrow_mut().labels(&pairs))
}

/// Forgets what nothing uses any more.
pub(super) fn collect() {
    INTERNER.with(|interner| {
        let mut interner = interner.borrow_mut();
        interner.labels.retain(|l| Arc::strong_count(l) > 1);
        interner.names.retain(|n| Arc::strong_count(n) > 1);
    });
}

/// Label pairs as read, in one reused buffer: the text of every key and value, and where
/// each pair's key and value end in it.
#[derive(Debug, Default)]
struct Pairs {
    text: String,
    /// End of the key, end of the value, per pair.
    ends: Vec<(usize, usize)>,
}

impl Pairs {
    fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
    }

    fn push(&mut self, key: &str, value: &str) {
        self.text.push_str(key);
        let key_end = self.text.len();
        self.text.push_str(value);
        self.ends.push((key_end, self.text.len()));
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn pair(&self, at: usize) -> (&str, &str) {
        let start = if at == 0 { 0 } else { self.ends[at - 1].1 };
        let (key_end, value_end) = self.ends[at];
        (&self.text[start..key_end], &self.text[key_end..value_end])
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        (0..self.len()).map(|at| self.pair(at))
    }

    /// In key order, a key that came twice keeping its last value (as a map would). The API
    /// server writes labels in key order, so this rarely has anything to do.
    fn settle(&mut self) {
        let sorted = (1..self.len()).all(|at| self.pair(at - 1).0 < self.pair(at).0);
        if sorted {
            return;
        }
        let mut order: Vec<usize> = (0..self.len()).collect();
        // Stable: of equal keys, the last one read ends the run.
        order.sort_by(|a, b| self.pair(*a).0.cmp(self.pair(*b).0));
        let mut settled = Pairs::default();
        for (i, &at) in order.iter().enumerate() {
            let last_of_key =
                order.get(i + 1).is_none_or(|&next| self.pair(next).0 != self.pair(at).0);
            if last_of_key {
                let (key, value) = self.pair(at);
                settled.push(key, value);
            }
        }
        *self = settled;
    }
}

/// A label set read from JSON (an object of strings) straight into its shared copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct InternedLabels(pub(super) Arc<Labels>);

impl<'de> de::Deserialize<'de> for InternedLabels {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(LabelsVisitor)
    }
}

struct LabelsVisitor;

impl<'de> Visitor<'de> for LabelsVisitor {
    type Value = InternedLabels;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a map of label strings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<InternedLabels, A::Error> {
        // The thread's buffer is taken while the map is read and put back after (an error
        // drops it: the next read starts a new one).
        let mut pairs = SCRATCH.with(RefCell::take);
        pairs.clear();
        while map.next_key_seed(Append { text: &mut pairs.text })?.is_some() {
            let key_end = pairs.text.len();
            map.next_value_seed(Append { text: &mut pairs.text })?;
            pairs.ends.push((key_end, pairs.text.len()));
        }
        pairs.settle();
        let labels = INTERNER.with(|interner| interner.borrow_mut().labels(&pairs));
        SCRATCH.with(|s| s.replace(pairs));
        Ok(InternedLabels(labels))
    }
}

thread_local! {
    /// The buffer label pairs are read into (reused: no allocation once it has grown).
    static SCRATCH: RefCell<Pairs> = RefCell::new(Pairs::default());
}

/// Appends a JSON string to `text` without allocating one of its own.
struct Append<'a> {
    text: &'a mut String,
}

impl<'de> DeserializeSeed<'de> for Append<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Append<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        self.text.push_str(text);
        Ok(())
    }
}

/// A namespace name read from JSON straight into its shared copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct InternedName(pub(super) Arc<str>);

impl<'de> de::Deserialize<'de> for InternedName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl Visitor<'_> for NameVisitor {
            type Value = InternedName;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a name")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<InternedName, E> {
                Ok(InternedName(name(text)))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: &str) -> Arc<Labels> {
        serde_json::from_str::<InternedLabels>(json).unwrap().0
    }

    #[test]
    fn equal_label_sets_are_one_shared_copy_whatever_their_order() {
        let a = read(r#"{"app": "ratings", "tier": "web"}"#);
        let b = read(r#"{"tier": "web", "app": "ratings"}"#);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(
            a.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            ["app=ratings", "tier=web"]
        );
        let c = read(r#"{"app": "ratings", "tier": "webx"}"#);
        assert!(!Arc::ptr_eq(&a, &c));
        // Where a key ends counts: ab=c is not a=bc.
        assert!(!Arc::ptr_eq(&read(r#"{"ab": "c"}"#), &read(r#"{"a": "bc"}"#)));
        assert!(Arc::ptr_eq(&labels(&a), &a), "a map interns to the same copy");
    }

    #[test]
    fn a_key_given_twice_keeps_its_last_value_as_a_map_would() {
        let json = r#"{"b": "1", "a": "x", "b": "2"}"#;
        let read = read(json);
        let map: Labels = serde_json::from_str(json).unwrap();
        assert_eq!(*read, map);
        assert_eq!(read.get("b").map(String::as_str), Some("2"));
    }

    #[test]
    fn escaped_strings_and_empty_sets_are_read_too() {
        let labels = read(r#"{"k\u00e9y": "v\"q"}"#);
        assert_eq!(labels.get("kéy").map(String::as_str), Some("v\"q"));
        assert!(read("{}").is_empty());
        assert!(serde_json::from_str::<InternedLabels>(r#"{"a": 1}"#).is_err());
        // A failed read leaves nothing behind for the next one.
        assert_eq!(read(r#"{"z": "1"}"#).len(), 1);
    }

    #[test]
    fn what_nothing_uses_is_forgotten() {
        let kept = read(r#"{"keep": "me"}"#);
        let dropped = Arc::downgrade(&read(r#"{"drop": "me"}"#));
        collect();
        assert!(dropped.upgrade().is_none());
        assert!(Arc::ptr_eq(&kept, &read(r#"{"keep": "me"}"#)));
        assert!(Arc::ptr_eq(&name("ns-1"), &name("ns-1")));
    }
}
