//! Copy-on-write containers for published tables: a new table shares every part that a change
//! did not touch with the table before it, so publishing a change costs about what changed,
//! not the table's size. Readers see plain immutable data (no lock, no atomics beyond `Arc`).
//! Must not depend on: anything of labelwall's.
//!
//! [`ShardedMap`] splits a hash map into [`SHARDS`] `Arc`-shared shards; [`Chunked`] splits a
//! vector of fixed-width rows into `Arc`-shared chunks of [`CHUNK_ROWS`] rows. Cloning either
//! copies only the shard or chunk pointers; writing clones the one shard or chunk written to
//! if another table still shares it.

use std::hash::Hash;
use std::sync::Arc;

use rustc_hash::FxHashMap;

/// Shards per [`ShardedMap`]: at 100k entries a shard holds about 400, which is what one
/// changed address costs to copy.
pub const SHARDS: usize = 256;
const SHARD_BITS: u32 = SHARDS.trailing_zeros();

/// A key that picks its own shard (from bits the shard's hasher does not lean on alone).
pub trait ShardKey: Hash + Eq + Copy {
    fn shard(self) -> usize;
}

impl ShardKey for u32 {
    #[inline]
    fn shard(self) -> usize {
        (self.wrapping_mul(0x9E37_79B9) >> (32 - SHARD_BITS)) as usize
    }
}

impl ShardKey for u128 {
    #[inline]
    fn shard(self) -> usize {
        let folded = (self as u64) ^ ((self >> 64) as u64);
        (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SHARD_BITS)) as usize
    }
}

/// A hash map in `Arc`-shared shards.
#[derive(Debug)]
pub struct ShardedMap<K, V> {
    shards: Vec<Arc<FxHashMap<K, V>>>,
    len: usize,
}

impl<K, V> Clone for ShardedMap<K, V> {
    fn clone(&self) -> Self {
        ShardedMap { shards: self.shards.clone(), len: self.len }
    }
}

impl<K: ShardKey, V: Clone> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap { shards: (0..SHARDS).map(|_| Arc::default()).collect(), len: 0 }
    }
}

impl<K: ShardKey, V: Clone> ShardedMap<K, V> {
    #[inline]
    pub fn get(&self, key: &K) -> Option<&V> {
        self.shards[key.shard()].get(key)
    }

    /// Inserts or replaces; returns the value that was there.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let old = Arc::make_mut(&mut self.shards[key.shard()]).insert(key, value);
        self.len += usize::from(old.is_none());
        old
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let shard = &mut self.shards[key.shard()];
        if !shard.contains_key(key) {
            return None; // do not copy a shared shard for nothing
        }
        let old = Arc::make_mut(shard).remove(key);
        self.len -= usize::from(old.is_some());
        old
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|shard| shard.iter())
    }
}

/// Rows per chunk of a [`Chunked`] (a power of two, so that finding a row is a shift).
pub const CHUNK_ROWS: usize = 1024;
const CHUNK_SHIFT: u32 = CHUNK_ROWS.trailing_zeros();

/// A vector of rows of `width` values each, in `Arc`-shared chunks.
#[derive(Debug)]
pub struct Chunked<T> {
    chunks: Vec<Arc<Vec<T>>>,
    rows: usize,
    width: usize,
    fill: T,
}

impl<T: Clone> Clone for Chunked<T> {
    fn clone(&self) -> Self {
        Chunked {
            chunks: self.chunks.clone(),
            rows: self.rows,
            width: self.width,
            fill: self.fill.clone(),
        }
    }
}

impl<T: Clone> Chunked<T> {
    /// An empty vector whose rows are `width` values, new rows filled with `fill`.
    pub fn new(width: usize, fill: T) -> Chunked<T> {
        Chunked { chunks: Vec::new(), rows: 0, width: width.max(1), fill }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn width(&self) -> usize {
        self.width
    }

    #[inline]
    pub fn row(&self, index: usize) -> &[T] {
        let start = (index & (CHUNK_ROWS - 1)) * self.width;
        &self.chunks[index >> CHUNK_SHIFT][start..start + self.width]
    }

    /// The row to write, its chunk copied first if another vector shares it.
    pub fn row_mut(&mut self, index: usize) -> &mut [T] {
        let start = (index & (CHUNK_ROWS - 1)) * self.width;
        let chunk = Arc::make_mut(&mut self.chunks[index >> CHUNK_SHIFT]);
        &mut chunk[start..start + self.width]
    }

    /// Grows to `rows` rows (filled); never shrinks.
    pub fn grow_to(&mut self, rows: usize) {
        while self.rows < rows {
            if self.rows & (CHUNK_ROWS - 1) == 0 {
                self.chunks.push(Arc::new(vec![self.fill.clone(); CHUNK_ROWS * self.width]));
            }
            self.rows += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_shares_every_shard_until_one_is_written() {
        let mut map: ShardedMap<u32, u32> = ShardedMap::default();
        for k in 0..10_000 {
            map.insert(k, k);
        }
        let published = map.clone();
        assert_eq!(map.insert(7, 70), Some(7));
        assert_eq!(map.remove(&8), Some(8));
        assert_eq!(map.remove(&1_000_000), None);
        let copied = (0..SHARDS).filter(|&s| !Arc::ptr_eq(&map.shards[s], &published.shards[s]));
        assert!(copied.count() <= 2, "only the written shards are copied");
        assert_eq!((published.get(&7), published.get(&8)), (Some(&7), Some(&8)));
        assert_eq!((map.get(&7), map.get(&8)), (Some(&70), None));
        assert_eq!((published.len(), map.len()), (10_000, 9_999));
        assert_eq!(map.iter().count(), 9_999);
    }

    #[test]
    fn keys_spread_over_the_shards() {
        let mut used = [0usize; SHARDS];
        for k in 0..(64u32 * SHARDS as u32) {
            used[(0x0a00_0000 + k).shard()] += 1; // a /16-ish block of pod addresses
            used[(0xfd00_0000_0000_0000_0000_0000_0000_0000u128 + u128::from(k)).shard()] += 1;
        }
        assert!(used.iter().all(|&n| (96..=160).contains(&n)), "{used:?}"); // 128 each
    }

    #[test]
    fn chunked_rows_copy_one_chunk_on_write() {
        let mut rows: Chunked<u64> = Chunked::new(3, 0);
        rows.grow_to(2 * CHUNK_ROWS + 5);
        rows.row_mut(CHUNK_ROWS + 1).copy_from_slice(&[1, 2, 3]);
        let published = rows.clone();
        rows.row_mut(CHUNK_ROWS + 1)[0] = 9;
        rows.grow_to(2 * CHUNK_ROWS + 6);
        assert_eq!(published.row(CHUNK_ROWS + 1), [1, 2, 3]);
        assert_eq!(rows.row(CHUNK_ROWS + 1), [9, 2, 3]);
        assert_eq!(rows.row(2 * CHUNK_ROWS + 5), [0, 0, 0]);
        assert!(Arc::ptr_eq(&rows.chunks[0], &published.chunks[0]));
        assert!(!Arc::ptr_eq(&rows.chunks[1], &published.chunks[1]));
        assert_eq!((rows.rows(), published.rows()), (2 * CHUNK_ROWS + 6, 2 * CHUNK_ROWS + 5));
    }
}
