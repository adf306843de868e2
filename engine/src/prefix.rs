//! SemID prefix keys, and the per-user SemID prefix index of format version 1: for every prefix of every SemID in the user's history (level 1,
//! levels 1-2, ..., the full SemID), a roaring bitmap of the sequence positions whose item has
//! that prefix.
//!
//! On disk the (key, bitmap) pairs, in key order, are cut into chunks of about
//! [`INDEX_CHUNK_TARGET`] raw bytes, each zstd-compressed when that pays and checksummed, behind
//! a sparse directory of each chunk's first key. A lookup binary-searches the sparse directory in
//! place, decodes one chunk, binary-searches its entries and deserialises one bitmap. Most keys
//! of a lifelong history are full SemIDs with a handful of positions, so per-key overhead
//! (directory entry, roaring header) dominates the raw size; compressing it in chunks roughly
//! halves the index for a few microseconds per lookup.

use std::collections::BTreeMap;

use roaring::RoaringBitmap;

use crate::codec::{bits_for, le_u32, le_u64, read_chunk, write_chunk};
use crate::error::{corrupt, DecodeError, DecodeResult};
use crate::types::SemId;

/// How SemID prefixes map to 64-bit directory keys: the depth in the top 8 bits, then the codes,
/// `code_bits` each, most significant first. Keys therefore sort by depth, then by codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixLayout {
    pub levels: u8,
    pub code_bits: u8,
}

impl PrefixLayout {
    pub fn new(levels: u8, codebook_size: u32) -> Self {
        PrefixLayout {
            levels,
            code_bits: bits_for(u64::from(codebook_size.saturating_sub(1))).max(1),
        }
    }

    /// Whether the layout fits in a 64-bit key.
    pub fn fits(&self) -> bool {
        u32::from(self.levels) * u32::from(self.code_bits) <= 56
    }

    /// Key of the first `depth` codes of `semid` (1 <= depth <= levels).
    pub fn key(&self, semid: &SemId, depth: usize) -> u64 {
        let mut key = (depth as u64) << 56;
        for (i, &c) in semid.codes()[..depth].iter().enumerate() {
            let shift = 56 - (i as u32 + 1) * u32::from(self.code_bits);
            key |= u64::from(c) << shift;
        }
        key
    }

    /// The key that orders a version-2 entry's items by SemID: the full key, items without a
    /// SemID last.
    pub fn order_key(&self, semid: Option<SemId>) -> u64 {
        semid.map_or(u64::MAX, |s| self.key(&s, usize::from(self.levels)))
    }

    /// The depth-`d` key of a full key (one of depth `levels`).
    pub fn truncate(&self, full: u64, d: usize) -> u64 {
        let bits = d as u32 * u32::from(self.code_bits);
        let mask = if bits == 0 {
            0
        } else {
            ((1u64 << bits) - 1) << (56 - bits)
        };
        ((d as u64) << 56) | (full & mask)
    }

    /// The full keys of the SemIDs that share the first `d` codes with `target`: `[lo, hi)`.
    pub fn key_range(&self, target: &SemId, d: usize) -> (u64, u64) {
        let levels = usize::from(self.levels);
        let full = self.key(target, levels);
        let depth = (levels as u64) << 56;
        let lo = depth | (self.truncate(full, d) & ((1 << 56) - 1));
        (
            lo,
            lo + (1u64 << (56 - d as u32 * u32::from(self.code_bits))),
        )
    }
}

/// Raw bytes per index chunk before compression.
pub const INDEX_CHUNK_TARGET: usize = 4096;
/// Sparse directory entry: first key u64, chunk offset u32.
pub const SPARSE_ENTRY_LEN: usize = 12;
/// Entry inside a chunk: key u64, bitmap offset u32, bitmap length u32.
pub const DIR_ENTRY_LEN: usize = 16;
/// Largest raw chunk a reader accepts (a chunk holds at least one bitmap, and a bitmap of
/// positions below 2^32 is at most about 2^29 bytes in the worst case; entries are capped far
/// below by `max_events_per_user`).
const MAX_CHUNK_RAW: usize = 1 << 28;

/// Collects positions per prefix while a user's sequence is written. A prefix gets a slot
/// ([`PrefixIndexBuilder::slot`]) once; positions are then pushed by slot, so that a writer that
/// knows each item's slots (one per level) pays no lookup per event.
#[derive(Default)]
pub struct PrefixIndexBuilder {
    slots: BTreeMap<u64, usize>,
    maps: Vec<RoaringBitmap>,
}

/// A serialised index: the sparse directory and the chunk area.
pub struct BuiltIndex {
    pub sparse: Vec<u8>,
    pub chunks: Vec<u8>,
    pub n_chunks: u32,
}

impl PrefixIndexBuilder {
    /// Record that position `pos` holds an item with `semid`. Positions must be added in
    /// increasing order (roaring then appends).
    pub fn add(&mut self, layout: &PrefixLayout, pos: u32, semid: &SemId) {
        for s in self.slots_of(layout, semid) {
            self.push(s, pos);
        }
    }

    /// The slot of directory key `key`, created on first use.
    pub fn slot(&mut self, key: u64) -> usize {
        let next = self.maps.len();
        let s = *self.slots.entry(key).or_insert(next);
        if s == next {
            self.maps.push(RoaringBitmap::new());
        }
        s
    }

    /// The slots of `semid`'s prefixes, one per level the layout indexes.
    pub fn slots_of(&mut self, layout: &PrefixLayout, semid: &SemId) -> Vec<usize> {
        let depth = semid.levels().min(usize::from(layout.levels));
        (1..=depth)
            .map(|d| self.slot(layout.key(semid, d)))
            .collect()
    }

    /// Number of slots handed out.
    pub fn n_slots(&self) -> usize {
        self.maps.len()
    }

    /// Set the positions of slot `slot` at once (ascending).
    pub fn set_positions(&mut self, slot: usize, positions: &[u32]) {
        let it = positions.iter().copied();
        self.maps[slot] =
            RoaringBitmap::from_sorted_iter(it.clone()).unwrap_or_else(|_| it.collect());
    }

    /// Record position `pos` under slot `slot` (positions in increasing order per slot).
    #[inline]
    pub fn push(&mut self, slot: usize, pos: u32) {
        let bm = &mut self.maps[slot];
        if bm.try_push(pos).is_err() {
            bm.insert(pos);
        }
    }

    pub fn finish(self, zstd_level: i32) -> BuiltIndex {
        let mut out = BuiltIndex {
            sparse: Vec::new(),
            chunks: Vec::new(),
            n_chunks: 0,
        };
        let mut keys: Vec<u64> = Vec::new();
        let mut bitmaps: Vec<u8> = Vec::new();
        let mut spans: Vec<(u32, u32)> = Vec::new();
        let mut flush =
            |keys: &mut Vec<u64>, bitmaps: &mut Vec<u8>, spans: &mut Vec<(u32, u32)>| {
                if keys.is_empty() {
                    return;
                }
                let mut raw = Vec::with_capacity(4 + keys.len() * DIR_ENTRY_LEN + bitmaps.len());
                raw.extend_from_slice(&(keys.len() as u32).to_le_bytes());
                for (k, (off, len)) in keys.iter().zip(spans.iter()) {
                    raw.extend_from_slice(&k.to_le_bytes());
                    raw.extend_from_slice(&off.to_le_bytes());
                    raw.extend_from_slice(&len.to_le_bytes());
                }
                raw.extend_from_slice(bitmaps);
                out.sparse.extend_from_slice(&keys[0].to_le_bytes());
                out.sparse
                    .extend_from_slice(&(out.chunks.len() as u32).to_le_bytes());
                write_chunk(&mut out.chunks, &raw, zstd_level);
                out.n_chunks += 1;
                keys.clear();
                bitmaps.clear();
                spans.clear();
            };
        let mut maps = self.maps;
        for (key, slot) in self.slots {
            // Each slot belongs to exactly one key.
            let mut bm = std::mem::take(&mut maps[slot]);
            bm.optimize();
            let off = bitmaps.len() as u32;
            bm.serialize_into(&mut bitmaps)
                .expect("writing to a Vec cannot fail");
            spans.push((off, bitmaps.len() as u32 - off));
            keys.push(key);
            if bitmaps.len() + keys.len() * DIR_ENTRY_LEN >= INDEX_CHUNK_TARGET {
                flush(&mut keys, &mut bitmaps, &mut spans);
            }
        }
        flush(&mut keys, &mut bitmaps, &mut spans);
        out
    }
}

/// Deserialise one bitmap, refusing headers that would make roaring allocate beyond what the
/// bytes can hold, and trailing bytes.
pub fn decode_bitmap(bytes: &[u8]) -> DecodeResult<RoaringBitmap> {
    if bytes.len() < 4 {
        corrupt!("bitmap of {} bytes", bytes.len());
    }
    let cookie = le_u32(bytes, 0);
    const NO_RUN: u32 = 12346;
    const WITH_RUN: u32 = 12347;
    if cookie == NO_RUN {
        if bytes.len() < 8 {
            corrupt!("bitmap header truncated");
        }
        let containers = le_u32(bytes, 4) as usize;
        if containers > 65_536 || 8 + containers * 8 > bytes.len() {
            corrupt!(
                "bitmap claims {containers} containers in {} bytes",
                bytes.len()
            );
        }
    } else if cookie & 0xffff != WITH_RUN {
        corrupt!("bad bitmap cookie {cookie:08x}");
    }
    let bm = match RoaringBitmap::deserialize_from(bytes) {
        Ok(bm) => bm,
        Err(e) => corrupt!("bitmap: {e}"),
    };
    if bm.serialized_size() != bytes.len() {
        corrupt!(
            "bitmap uses {} of its {} bytes",
            bm.serialized_size(),
            bytes.len()
        );
    }
    Ok(bm)
}

/// One decoded index chunk.
pub struct IndexChunk {
    raw: Vec<u8>,
    n: usize,
}

impl IndexChunk {
    fn parse(raw: Vec<u8>) -> DecodeResult<IndexChunk> {
        if raw.len() < 4 {
            corrupt!("index chunk of {} bytes", raw.len());
        }
        let n = le_u32(&raw, 0) as usize;
        if n == 0 || n.saturating_mul(DIR_ENTRY_LEN).saturating_add(4) > raw.len() {
            corrupt!("index chunk claims {n} entries in {} bytes", raw.len());
        }
        Ok(IndexChunk { raw, n })
    }

    fn key(&self, i: usize) -> u64 {
        le_u64(&self.raw, 4 + i * DIR_ENTRY_LEN)
    }

    fn bitmap_bytes(&self, i: usize) -> DecodeResult<&[u8]> {
        let o = 4 + i * DIR_ENTRY_LEN;
        let base = 4 + self.n * DIR_ENTRY_LEN;
        let off = le_u32(&self.raw, o + 8) as usize;
        let len = le_u32(&self.raw, o + 12) as usize;
        match self.raw.get(base + off..(base + off).saturating_add(len)) {
            Some(b) => Ok(b),
            None => corrupt!("bitmap {i} of an index chunk lies outside it"),
        }
    }

    fn find(&self, key: u64) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.key(mid).cmp(&key) {
                std::cmp::Ordering::Equal => return Some(mid),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        None
    }
}

/// A prefix index read in place.
#[derive(Clone, Copy)]
pub struct PrefixIndex<'a> {
    sparse: &'a [u8],
    chunks: &'a [u8],
}

impl<'a> PrefixIndex<'a> {
    /// `sparse` must already be checked against its checksum.
    pub fn new(sparse: &'a [u8], n_chunks: u32, chunks: &'a [u8]) -> DecodeResult<Self> {
        if sparse.len() != n_chunks as usize * SPARSE_ENTRY_LEN {
            corrupt!(
                "sparse index directory of {} bytes for {n_chunks} chunks",
                sparse.len()
            );
        }
        Ok(PrefixIndex { sparse, chunks })
    }

    pub fn n_chunks(&self) -> usize {
        self.sparse.len() / SPARSE_ENTRY_LEN
    }

    pub fn is_empty(&self) -> bool {
        self.sparse.is_empty()
    }

    fn first_key(&self, c: usize) -> u64 {
        le_u64(self.sparse, c * SPARSE_ENTRY_LEN)
    }

    fn chunk_bytes(&self, c: usize) -> DecodeResult<&'a [u8]> {
        let start = le_u32(self.sparse, c * SPARSE_ENTRY_LEN + 8) as usize;
        let end = if c + 1 < self.n_chunks() {
            le_u32(self.sparse, (c + 1) * SPARSE_ENTRY_LEN + 8) as usize
        } else {
            self.chunks.len()
        };
        match self.chunks.get(start..end) {
            Some(b) if start <= end => Ok(b),
            _ => corrupt!("index chunk {c} spans {start}..{end} outside the index"),
        }
    }

    /// Decode chunk `c`.
    pub fn chunk(&self, c: usize) -> DecodeResult<IndexChunk> {
        let mut scratch = Vec::new();
        let raw = read_chunk(self.chunk_bytes(c)?, MAX_CHUNK_RAW, &mut scratch)
            .map_err(|e| DecodeError::Corrupt(format!("index chunk {c}: {e}")))?
            .to_vec();
        IndexChunk::parse(raw)
    }

    /// Which chunk would hold `key`.
    fn chunk_for(&self, key: u64) -> Option<usize> {
        let n = self.n_chunks();
        // Last chunk whose first key is <= key.
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.first_key(mid) <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1)
    }

    /// The bitmap of `key`, if the user has any position with that prefix. `cache` keeps decoded
    /// chunks across lookups of one query.
    pub fn find(&self, key: u64, cache: &mut IndexCache) -> DecodeResult<Option<RoaringBitmap>> {
        let Some(c) = self.chunk_for(key) else {
            return Ok(None);
        };
        let pos = match cache.chunks.iter().position(|(i, _)| *i == c) {
            Some(pos) => pos,
            None => {
                cache.chunks.push((c, self.chunk(c)?));
                cache.chunks.len() - 1
            }
        };
        let chunk = &cache.chunks[pos].1;
        match chunk.find(key) {
            Some(i) => decode_bitmap(chunk.bitmap_bytes(i)?).map(Some),
            None => Ok(None),
        }
    }

    /// Check the whole index: every chunk decodes, keys ascend strictly across chunks and match
    /// the sparse directory, bitmaps tile each chunk and hold positions below `n_events`.
    pub fn validate(&self, n_events: u32) -> DecodeResult<()> {
        let mut prev_key = None;
        let mut expect_start = 0usize;
        for c in 0..self.n_chunks() {
            let start = le_u32(self.sparse, c * SPARSE_ENTRY_LEN + 8) as usize;
            if start != expect_start {
                corrupt!("index chunk {c} starts at {start}, expected {expect_start}");
            }
            let bytes = self.chunk_bytes(c)?;
            expect_start += crate::codec::chunk_len(bytes)?;
            let chunk = self.chunk(c)?;
            if chunk.key(0) != self.first_key(c) {
                corrupt!("index chunk {c} first key disagrees with the sparse directory");
            }
            let mut expect_off = 0usize;
            for i in 0..chunk.n {
                let key = chunk.key(i);
                if prev_key.is_some_and(|p| p >= key) {
                    corrupt!("index keys not ascending in chunk {c} entry {i}");
                }
                prev_key = Some(key);
                let o = 4 + i * DIR_ENTRY_LEN;
                let off = le_u32(&chunk.raw, o + 8) as usize;
                if off != expect_off {
                    corrupt!("bitmap {i} of chunk {c} starts at {off}, expected {expect_off}");
                }
                let bm = decode_bitmap(chunk.bitmap_bytes(i)?)?;
                expect_off += le_u32(&chunk.raw, o + 12) as usize;
                if bm.is_empty() || bm.max().is_some_and(|m| m >= n_events) {
                    corrupt!(
                        "bitmap {i} of chunk {c} is empty or holds a position beyond {n_events}"
                    );
                }
            }
            if 4 + chunk.n * DIR_ENTRY_LEN + expect_off != chunk.raw.len() {
                corrupt!("index chunk {c} has trailing bytes");
            }
        }
        if expect_start != self.chunks.len() {
            corrupt!(
                "index chunks use {expect_start} of {} bytes",
                self.chunks.len()
            );
        }
        Ok(())
    }
}

/// Decoded index chunks kept for the duration of one query.
#[derive(Default)]
pub struct IndexCache {
    chunks: Vec<(usize, IndexChunk)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_sort_by_depth_then_codes() {
        let l = PrefixLayout::new(3, 256);
        assert_eq!(l.code_bits, 8);
        let a = SemId::new(&[1, 2, 3]).unwrap();
        let b = SemId::new(&[1, 3, 0]).unwrap();
        assert!(l.key(&a, 1) == l.key(&b, 1));
        assert!(l.key(&a, 2) < l.key(&b, 2));
        assert!(l.key(&b, 1) < l.key(&a, 2));
        assert!(l.key(&a, 3) < l.key(&b, 3));
        assert!(PrefixLayout::new(3, 65_536).fits());
        assert!(!PrefixLayout::new(4, 65_536).fits());
    }

    proptest! {
        #[test]
        fn index_round_trip(semids in proptest::collection::vec((0u16..4, 0u16..64, 0u16..64), 0..3000)) {
            let layout = PrefixLayout::new(3, 64);
            let mut b = PrefixIndexBuilder::default();
            let ids: Vec<SemId> = semids.iter().map(|&(a, b, c)| SemId::new(&[a, b % 8, c]).unwrap()).collect();
            for (p, s) in ids.iter().enumerate() { b.add(&layout, p as u32, s); }
            let built = b.finish(3);
            let idx = PrefixIndex::new(&built.sparse, built.n_chunks, &built.chunks).unwrap();
            idx.validate(ids.len() as u32).unwrap();
            let mut cache = IndexCache::default();
            for target in ids.iter().take(20) {
                for d in 1..=3 {
                    let expect: Vec<u32> = ids.iter().enumerate()
                        .filter(|(_, s)| s.common_prefix(target) >= d)
                        .map(|(p, _)| p as u32).collect();
                    let got: Vec<u32> = idx.find(layout.key(target, d), &mut cache).unwrap().unwrap().iter().collect();
                    prop_assert_eq!(got, expect);
                }
            }
        }

        #[test]
        fn decode_bitmap_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_bitmap(&bytes);
        }
    }

    #[test]
    fn missing_keys_and_empty_index() {
        let layout = PrefixLayout::new(2, 8);
        let mut b = PrefixIndexBuilder::default();
        b.add(&layout, 0, &SemId::new(&[3, 4]).unwrap());
        let built = b.finish(3);
        let idx = PrefixIndex::new(&built.sparse, built.n_chunks, &built.chunks).unwrap();
        let mut cache = IndexCache::default();
        assert!(idx
            .find(layout.key(&SemId::new(&[1, 1]).unwrap(), 1), &mut cache)
            .unwrap()
            .is_none());
        assert!(idx
            .find(layout.key(&SemId::new(&[7, 7]).unwrap(), 2), &mut cache)
            .unwrap()
            .is_none());
        let empty = PrefixIndexBuilder::default().finish(3);
        let idx = PrefixIndex::new(&empty.sparse, empty.n_chunks, &empty.chunks).unwrap();
        assert!(idx.is_empty());
        assert!(idx.find(5, &mut cache).unwrap().is_none());
        idx.validate(0).unwrap();
    }

    #[test]
    fn hostile_container_count_is_refused() {
        let mut b = 12346u32.to_le_bytes().to_vec();
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_bitmap(&b).is_err());
    }
}
