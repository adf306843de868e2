//! Decoded user entries, shared by every reader of a database. Reads and retrieval of a hot
//! user touch the same entry again and again; decoding it costs checksums, bit unpacking, a
//! scatter of position lists and the grouping of positions by SemID prefix. The cache keeps each
//! entry decoded whole ([`Decoded`]), so a hot user's queries run on plain arrays.
//!
//! Entries are immutable once written (a compaction writes new ones under new segment ids,
//! which are never reused while the database is open), so a key never goes stale but for the
//! SemIDs its postings were grouped by: the key carries the catalog's SemID generation, and a
//! change of any item's SemID makes every reader build its entries again. Copies of a user's
//! embeddings carry the catalog's embedding generation too, bumped by every upsert of an existing
//! item. A piece of a segment that is later deleted just ages out. Everything cached was checked (checksums and structure)
//! when it was decoded. Memory is bounded by [`crate::Options::cache_bytes`].

use std::sync::Arc;

use crate::decoded::{Decoded, Embeddings};
use crate::error::{DecodeError, Result};
use crate::segment::Segment;

/// What part of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// The whole entry, its postings grouped by the SemIDs of catalog generation `semid_gen`.
    Decoded { semid_gen: u64 },
    /// The embeddings of the entry's items, copied from the catalog as of its generations.
    Embeddings { semid_gen: u64, emb_gen: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub segment: u64,
    pub record: u32,
    pub part: Part,
}

#[derive(Clone)]
pub enum Value {
    Decoded(Arc<Decoded>),
    Embeddings(Arc<Embeddings>),
}

impl Value {
    pub fn into_decoded(self) -> Option<Arc<Decoded>> {
        match self {
            Value::Decoded(d) => Some(d),
            _ => None,
        }
    }

    pub fn into_embeddings(self) -> Option<Arc<Embeddings>> {
        match self {
            Value::Embeddings(e) => Some(e),
            _ => None,
        }
    }

    /// Approximate heap bytes, for the budget.
    fn bytes(&self) -> usize {
        const OVERHEAD: usize = 64;
        OVERHEAD
            + match self {
                Value::Decoded(d) => d.bytes(),
                Value::Embeddings(e) => e.bytes(),
            }
    }
}

/// The weight of a cached piece: its approximate heap bytes (at least 1, as a zero weight would
/// never be evicted).
#[derive(Clone)]
struct Bytes;

impl quick_cache::Weighter<Key, Value> for Bytes {
    fn weight(&self, _key: &Key, value: &Value) -> u64 {
        value.bytes() as u64
    }
}

/// A concurrent, weighted cache (quick_cache: sharded, S3-FIFO eviction; a hit sets one atomic
/// bit under a shard's read lock, and eviction walks a queue instead of sorting every entry).
pub struct DecodedCache {
    capacity: usize,
    cache: quick_cache::sync::Cache<Key, Value, Bytes>,
}

/// Typical size of a cached piece, for the cache's initial table size.
const TYPICAL_PIECE: usize = 16 << 10;

impl DecodedCache {
    /// A cache of at most `capacity` bytes; 0 turns caching off.
    pub fn new(capacity: usize) -> Self {
        let items = (capacity / TYPICAL_PIECE).max(16);
        DecodedCache {
            capacity,
            cache: quick_cache::sync::Cache::with_weighter(items, capacity.max(1) as u64, Bytes),
        }
    }

    /// The cached value of `key`, else `decode()`'s, which is then kept. Readers asking for a
    /// piece being decoded wait for it rather than decoding it again.
    pub fn get_or_insert<E>(
        &self,
        key: Key,
        decode: impl FnOnce() -> Result<Value, E>,
    ) -> Result<Value, E> {
        if self.capacity == 0 {
            return decode();
        }
        self.cache.get_or_insert_with(&key, decode)
    }

    /// Whether anything can be kept (a capacity above 0).
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.cache.weight() as usize
    }
}

/// Part `part` of entry `record` of `segment`: from `cache` when it holds it, else `decode()`d
/// (and kept when there is a cache), then unwrapped by `take`. Keys name their part, so a
/// cached value of another kind is a bug, reported as corruption of the entry rather than
/// trusted.
pub fn cached<T>(
    cache: Option<&DecodedCache>,
    segment: &Segment,
    record: usize,
    part: Part,
    take: fn(Value) -> Option<T>,
    decode: impl FnOnce() -> Result<Value>,
) -> Result<T> {
    let value = match cache {
        Some(c) => c.get_or_insert(
            Key {
                segment: segment.id,
                record: record as u32,
                part,
            },
            decode,
        )?,
        None => decode()?,
    };
    take(value).ok_or_else(|| {
        segment.corruption(
            record,
            DecodeError::corrupt(format!("decoded cache returned another part for {part:?}")),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decoded::Columns;
    use crate::postings::Postings;

    fn key(n: u32) -> Key {
        Key {
            segment: 1,
            record: n,
            part: Part::Decoded { semid_gen: 0 },
        }
    }

    fn entry(n: usize) -> Value {
        Value::Decoded(Arc::new(Decoded {
            cols: Columns {
                events: vec![Default::default(); n],
            },
            postings: Postings::default(),
        }))
    }

    #[test]
    fn decodes_once_and_stays_within_its_budget() {
        let c = DecodedCache::new(64 * 1024);
        let mut calls = 0;
        for _ in 0..3 {
            c.get_or_insert::<()>(key(0), || {
                calls += 1;
                Ok(entry(100))
            })
            .unwrap();
        }
        assert_eq!(calls, 1);
        for n in 1..1000 {
            c.get_or_insert::<()>(key(n), || Ok(entry(100))).unwrap();
            assert!(c.bytes() <= 64 * 1024);
        }
        // Pieces seen once were evicted to make room.
        let mut redecoded = 0;
        for n in 1..1000 {
            c.get_or_insert::<()>(key(n), || {
                redecoded += 1;
                Ok(entry(100))
            })
            .unwrap();
        }
        assert!(redecoded > 500, "{redecoded}");
    }

    #[test]
    fn errors_are_not_cached_and_zero_capacity_keeps_nothing() {
        let c = DecodedCache::new(1 << 20);
        assert!(c.get_or_insert(key(0), || Err("bad")).is_err());
        assert_eq!(c.bytes(), 0);
        let off = DecodedCache::new(0);
        off.get_or_insert::<()>(key(0), || Ok(entry(10))).unwrap();
        assert_eq!(off.bytes(), 0);
    }
}
