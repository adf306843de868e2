//! Decoded pieces of segment entries, shared by every reader of a database: decoded blocks,
//! prefix bitmaps, dictionary rows, and which entries' checksums matched. Point reads (a retrieval's hits, an `as_of` bound,
//! the GSU's item column) touch the same pieces of a hot user again and again; decoding them
//! costs a checksum, often a zstd frame, and an unpack or a bitmap build each time.
//!
//! Entries are immutable once written (a compaction writes new ones under new segment ids,
//! which are never reused while the database is open), so a key never goes stale: a cached
//! piece of a segment that is later deleted just ages out. Everything cached was checked
//! (checksum and structure) when it was decoded. Memory is bounded by
//! [`crate::Options::cache_bytes`]; when full, pieces seen once go first (S3-FIFO).

use std::sync::Arc;

use roaring::RoaringBitmap;

use crate::entry::Block;
use crate::error::{DecodeError, Result};
use crate::segment::Segment;

/// What part of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// Block `n`, every column.
    Block(u32),
    /// That the entry's sections (block index, dictionary, index directory) match their
    /// checksums.
    Checked,
    /// The dictionary as catalog rows.
    Rows,
    /// The prefix bitmap of a directory key.
    Bitmap(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub segment: u64,
    pub record: u32,
    pub part: Part,
}

#[derive(Clone)]
pub enum Value {
    Block(Arc<Block>),
    Checked,
    Rows(Arc<[u32]>),
    /// `None`: the user has no position with that prefix.
    Bitmap(Option<Arc<RoaringBitmap>>),
}

impl Value {
    pub fn into_block(self) -> Option<Arc<Block>> {
        match self {
            Value::Block(b) => Some(b),
            _ => None,
        }
    }

    pub fn into_checked(self) -> Option<()> {
        matches!(self, Value::Checked).then_some(())
    }

    pub fn into_rows(self) -> Option<Arc<[u32]>> {
        match self {
            Value::Rows(r) => Some(r),
            _ => None,
        }
    }

    pub fn into_bitmap(self) -> Option<Option<Arc<RoaringBitmap>>> {
        match self {
            Value::Bitmap(b) => Some(b),
            _ => None,
        }
    }

    /// Approximate heap bytes, for the budget.
    fn bytes(&self) -> usize {
        const OVERHEAD: usize = 64;
        OVERHEAD
            + match self {
                Value::Block(b) => {
                    b.ts.len() * 8 + b.item.len() * 4 + b.action.len() + b.domain.len() * 2
                }
                Value::Checked => 0,
                Value::Rows(r) => r.len() * 4,
                Value::Bitmap(b) => b.as_ref().map_or(0, |b| b.serialized_size()),
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

    fn key(n: u32) -> Key {
        Key {
            segment: 1,
            record: 0,
            part: Part::Block(n),
        }
    }

    fn times(n: usize) -> Value {
        let mut b = Block::default();
        b.ts = vec![0i64; n];
        Value::Block(Arc::new(b))
    }

    #[test]
    fn decodes_once_and_stays_within_its_budget() {
        let c = DecodedCache::new(64 * 1024);
        let mut calls = 0;
        for _ in 0..3 {
            c.get_or_insert::<()>(key(0), || {
                calls += 1;
                Ok(times(100))
            })
            .unwrap();
        }
        assert_eq!(calls, 1);
        for n in 1..1000 {
            c.get_or_insert::<()>(key(n), || Ok(times(100))).unwrap();
            assert!(c.bytes() <= 64 * 1024);
        }
        // Pieces seen once were evicted to make room.
        let mut redecoded = 0;
        for n in 1..1000 {
            c.get_or_insert::<()>(key(n), || {
                redecoded += 1;
                Ok(times(100))
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
        off.get_or_insert::<()>(key(0), || Ok(times(10))).unwrap();
        assert_eq!(off.bytes(), 0);
    }
}
