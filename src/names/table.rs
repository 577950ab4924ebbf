//! `NameTable`: the server names a worker's flows showed, each kept once however many flows
//! showed it, so that a flow holds a 4-byte [`NameId`] rather than a 254-byte [`ServerName`]
//! (a million flows, a few hundred names: 4 MB, not 254 MB).
//!
//! References are counted: the owner interns a name when a flow shows it and releases it when
//! the flow leaves, exactly once each; a name no flow holds is forgotten and its room reused.
//! Room for `capacity` names (the flow table's size: one name per flow at most) is reserved
//! up front and touched only as names arrive, so interning never allocates.

use std::num::NonZeroU32;

use hashbrown::HashTable;

use super::ServerName;

/// A name held in a [`NameTable`] (its slot, plus one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NameId(NonZeroU32);

#[derive(Debug)]
struct Entry {
    name: ServerName,
    hash: u64,
    /// Flows holding it; 0: the slot is free.
    holders: u32,
}

/// Interned server names with reference counts.
#[derive(Debug)]
pub struct NameTable {
    entries: Vec<Entry>,
    capacity: usize,
    free: Vec<u32>,
    /// Slots by the hash of their name.
    index: HashTable<u32>,
    /// Random keys: names come off the wire, chosen by whoever sends them.
    hasher: ahash::RandomState,
}

impl NameTable {
    /// A table for `capacity` names at most held at once (at least 1).
    pub fn new(capacity: usize) -> NameTable {
        let capacity = capacity.clamp(1, u32::MAX as usize - 1);
        NameTable {
            entries: Vec::with_capacity(capacity),
            capacity,
            free: Vec::with_capacity(capacity),
            index: HashTable::with_capacity(capacity),
            hasher: ahash::RandomState::new(),
        }
    }

    /// A reference to `name`, interned if no flow holds it yet. `None` only when `capacity`
    /// distinct names are held already (an owner that holds one per flow never gets it).
    pub fn intern(&mut self, name: &ServerName) -> Option<NameId> {
        let hash = self.hasher.hash_one(name.as_str());
        let entries = &mut self.entries;
        if let Some(&slot) =
            self.index.find(hash, |&s| entries[s as usize].name.as_str() == name.as_str())
        {
            entries[slot as usize].holders += 1;
            return Some(id(slot));
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None if entries.len() < self.capacity => {
                entries.push(Entry { name: *name, hash, holders: 0 });
                (entries.len() - 1) as u32
            }
            None => return None,
        };
        entries[slot as usize] = Entry { name: *name, hash, holders: 1 };
        let entries = &self.entries;
        self.index.insert_unique(hash, slot, |&s| entries[s as usize].hash);
        Some(id(slot))
    }

    /// The name `id` refers to.
    pub fn get(&self, id: NameId) -> &ServerName {
        let entry = &self.entries[slot(id)];
        debug_assert!(entry.holders > 0, "{id:?} was released");
        &entry.name
    }

    /// Gives up one reference; the last one frees the name.
    pub fn release(&mut self, id: NameId) {
        let slot = slot(id);
        let entry = &mut self.entries[slot];
        if entry.holders == 0 {
            // Released once too often (a bug): never free a slot twice.
            debug_assert!(false, "{id:?} released once too often");
            return;
        }
        entry.holders -= 1;
        if entry.holders > 0 {
            return;
        }
        if let Ok(found) = self.index.find_entry(entry.hash, |&s| s as usize == slot) {
            found.remove();
        }
        self.free.push(slot as u32);
    }

    /// Distinct names held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

fn id(slot: u32) -> NameId {
    NameId(NonZeroU32::new(slot + 1).expect("slots stay below u32::MAX"))
}

fn slot(id: NameId) -> usize {
    (id.0.get() - 1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ServerName {
        s.parse().unwrap()
    }

    #[test]
    fn a_name_is_kept_once_however_many_flows_hold_it() {
        let mut table = NameTable::new(8);
        let a = table.intern(&name("api.stripe.com")).unwrap();
        let b = table.intern(&name("API.Stripe.com.")).unwrap();
        let other = table.intern(&name("example.org")).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(table.len(), 2);
        assert_eq!(table.get(a).as_str(), "api.stripe.com");
        assert_eq!(table.get(other).as_str(), "example.org");
    }

    #[test]
    fn the_last_release_frees_the_name_and_its_room_is_reused() {
        let mut table = NameTable::new(2);
        let a = table.intern(&name("a.example")).unwrap();
        table.intern(&name("a.example")).unwrap();
        let b = table.intern(&name("b.example")).unwrap();
        assert_eq!(table.intern(&name("c.example")), None, "full: two names held");
        table.release(a);
        assert_eq!(table.len(), 2, "one flow still holds a.example");
        assert_eq!(table.get(a).as_str(), "a.example");
        table.release(a);
        assert_eq!(table.len(), 1);
        let c = table.intern(&name("c.example")).unwrap();
        assert_eq!(c, a, "the freed slot is reused");
        assert_eq!(table.get(c).as_str(), "c.example");
        assert_eq!(table.get(b).as_str(), "b.example");
        // a.example is gone: interning it again needs room.
        assert_eq!(table.intern(&name("a.example")), None);
        table.release(b);
        let again = table.intern(&name("a.example")).unwrap();
        assert_eq!(table.get(again).as_str(), "a.example");
        assert_eq!(table.intern(&name("c.example")), Some(c), "still found by its name");
    }

    #[test]
    fn holders_are_counted_across_many_names() {
        let mut table = NameTable::new(1000);
        let names: Vec<ServerName> = (0..500).map(|n| name(&format!("n{n}.example"))).collect();
        let mut held = Vec::new();
        for round in 0..3 {
            for (n, server) in names.iter().enumerate() {
                if n % 3 >= round {
                    held.push(table.intern(server).unwrap());
                }
            }
        }
        assert_eq!(table.len(), 500);
        for id in held.drain(..) {
            table.release(id);
        }
        assert!(table.is_empty());
    }
}
