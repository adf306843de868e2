//! Decoded pieces of segment entries, shared by every reader of a database: decoded blocks,
//! prefix bitmaps, dictionary rows, and which entries' checksums matched. Point reads (a retrieval's hits, an `as_of` bound,
//! the GSU's item column) touch the same pieces of a hot user again and again; decoding them
//! costs a checksum, often a zstd frame, and an unpack or a bitmap build each time.
//!
//! Entries are immutable once written (a compaction writes new ones under new segment ids,
//! which are never reused while the database is open), so a key never goes stale: a cached
//! piece of a segment that is later deleted just ages out. Everything cached was checked
//! (checksum and structure) when it was decoded. Memory is bounded by
//! [`crate::Options::cache_bytes`]; when full, the least recently used quarter is dropped.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
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

struct Slot {
    value: Value,
    bytes: usize,
    used: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Key, Slot>,
    bytes: usize,
    clock: u64,
}

pub struct DecodedCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl DecodedCache {
    /// A cache of at most `capacity` bytes; 0 turns caching off.
    pub fn new(capacity: usize) -> Self {
        DecodedCache {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The cached value of `key`, else `decode()`'s, which is then kept. The lock is not held
    /// while decoding, so two readers may decode the same piece at once; both get equal values.
    pub fn get_or_insert<E>(
        &self,
        key: Key,
        decode: impl FnOnce() -> Result<Value, E>,
    ) -> Result<Value, E> {
        if self.capacity == 0 {
            return decode();
        }
        {
            let mut g = self.inner.lock();
            g.clock += 1;
            let now = g.clock;
            if let Some(slot) = g.map.get_mut(&key) {
                slot.used = now;
                return Ok(slot.value.clone());
            }
        }
        let value = decode()?;
        let bytes = value.bytes();
        if bytes <= self.capacity / 4 {
            let mut g = self.inner.lock();
            g.clock += 1;
            let used = g.clock;
            let old = g.map.insert(
                key,
                Slot {
                    value: value.clone(),
                    bytes,
                    used,
                },
            );
            g.bytes = g.bytes + bytes - old.map_or(0, |s| s.bytes);
            if g.bytes > self.capacity {
                evict(&mut g, self.capacity - self.capacity / 4);
            }
        }
        Ok(value)
    }

    /// Whether anything can be kept (a capacity above 0).
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
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

/// Drop the least recently used entries until at most `target` bytes remain.
fn evict(g: &mut Inner, target: usize) {
    let mut by_age: Vec<(u64, Key, usize)> =
        g.map.iter().map(|(k, s)| (s.used, *k, s.bytes)).collect();
    by_age.sort_unstable_by_key(|e| e.0);
    for (_, k, b) in by_age {
        if g.bytes <= target {
            break;
        }
        g.map.remove(&k);
        g.bytes -= b;
    }
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
        // The oldest went first.
        let mut redecoded = false;
        c.get_or_insert::<()>(key(1), || {
            redecoded = true;
            Ok(times(100))
        })
        .unwrap();
        assert!(redecoded);
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
