//! Per-user SemID prefix index: for every prefix of every SemID in the user's history (level 1,
//! levels 1-2, ..., the full SemID), a roaring bitmap of the sequence positions whose item has
//! that prefix.
//!
//! On disk it is a sorted directory of fixed 16-byte entries `(key u64, offset u32, len u32)`
//! followed by the bitmaps in roaring's portable serialisation. A lookup binary-searches the
//! directory in place (memory-mapped) and deserialises only the bitmap it needs.

use std::collections::BTreeMap;

use roaring::RoaringBitmap;

use crate::codec::{bits_for, le_u32, le_u64};
use crate::error::{corrupt, DecodeResult};
use crate::types::SemId;

pub const DIR_ENTRY_LEN: usize = 16;

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
}

/// Collects positions per prefix while a user's sequence is written.
#[derive(Default)]
pub struct PrefixIndexBuilder {
    maps: BTreeMap<u64, RoaringBitmap>,
}

impl PrefixIndexBuilder {
    /// Record that position `pos` holds an item with `semid`. Positions must be added in
    /// increasing order (roaring's `push` is then O(1)).
    pub fn add(&mut self, layout: &PrefixLayout, pos: u32, semid: &SemId) {
        let depth = semid.levels().min(usize::from(layout.levels));
        for d in 1..=depth {
            let bm = self.maps.entry(layout.key(semid, d)).or_default();
            if bm.try_push(pos).is_err() {
                bm.insert(pos);
            }
        }
    }

    /// Serialise: returns (directory bytes, bitmap bytes, entry count).
    pub fn finish(self) -> (Vec<u8>, Vec<u8>, u32) {
        let mut dir = Vec::with_capacity(self.maps.len() * DIR_ENTRY_LEN);
        let mut bitmaps = Vec::new();
        for (key, mut bm) in self.maps {
            bm.optimize();
            let off = bitmaps.len() as u32;
            bm.serialize_into(&mut bitmaps)
                .expect("writing to a Vec cannot fail");
            let len = bitmaps.len() as u32 - off;
            dir.extend_from_slice(&key.to_le_bytes());
            dir.extend_from_slice(&off.to_le_bytes());
            dir.extend_from_slice(&len.to_le_bytes());
        }
        let n = (dir.len() / DIR_ENTRY_LEN) as u32;
        (dir, bitmaps, n)
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

/// A prefix index read in place.
#[derive(Clone, Copy)]
pub struct PrefixIndex<'a> {
    dir: &'a [u8],
    bitmaps: &'a [u8],
}

impl<'a> PrefixIndex<'a> {
    pub fn new(dir: &'a [u8], count: u32, bitmaps: &'a [u8]) -> DecodeResult<Self> {
        if dir.len() != count as usize * DIR_ENTRY_LEN {
            corrupt!(
                "prefix directory of {} bytes for {count} entries",
                dir.len()
            );
        }
        Ok(PrefixIndex { dir, bitmaps })
    }

    pub fn len(&self) -> usize {
        self.dir.len() / DIR_ENTRY_LEN
    }

    pub fn is_empty(&self) -> bool {
        self.dir.is_empty()
    }

    fn entry(&self, i: usize) -> (u64, u32, u32) {
        let o = i * DIR_ENTRY_LEN;
        (
            le_u64(self.dir, o),
            le_u32(self.dir, o + 8),
            le_u32(self.dir, o + 12),
        )
    }

    fn bitmap_at(&self, i: usize) -> DecodeResult<RoaringBitmap> {
        let (key, off, len) = self.entry(i);
        let (off, len) = (off as usize, len as usize);
        match self.bitmaps.get(off..off.saturating_add(len)) {
            Some(b) => decode_bitmap(b),
            None => corrupt!("bitmap of key {key:016x} at {off}+{len} is outside the index"),
        }
    }

    /// The bitmap of `key`, if the user has any position with that prefix.
    pub fn find(&self, key: u64) -> DecodeResult<Option<RoaringBitmap>> {
        let (mut lo, mut hi) = (0usize, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let k = self.entry(mid).0;
            if k == key {
                return self.bitmap_at(mid).map(Some);
            }
            if k < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(None)
    }

    /// Check the whole index: keys strictly ascending, bitmaps contiguous and well-formed,
    /// positions below `n_events`.
    pub fn validate(&self, n_events: u32) -> DecodeResult<()> {
        let mut expect_off = 0usize;
        let mut prev_key = None;
        for i in 0..self.len() {
            let (key, off, len) = self.entry(i);
            if prev_key.is_some_and(|p| p >= key) {
                corrupt!("prefix directory keys not ascending at entry {i}");
            }
            prev_key = Some(key);
            if off as usize != expect_off {
                corrupt!("prefix bitmap {i} starts at {off}, expected {expect_off}");
            }
            expect_off += len as usize;
            let bm = self.bitmap_at(i)?;
            if bm.is_empty() {
                corrupt!("prefix bitmap {i} is empty");
            }
            if bm.max().is_some_and(|m| m >= n_events) {
                corrupt!("prefix bitmap {i} holds a position beyond {n_events} events");
            }
        }
        if expect_off != self.bitmaps.len() {
            corrupt!(
                "prefix bitmaps use {expect_off} of {} bytes",
                self.bitmaps.len()
            );
        }
        Ok(())
    }
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
        fn index_round_trip(semids in proptest::collection::vec((0u16..4, 0u16..4, 0u16..4), 0..500)) {
            let layout = PrefixLayout::new(3, 4);
            let mut b = PrefixIndexBuilder::default();
            let ids: Vec<SemId> = semids.iter().map(|&(a, b, c)| SemId::new(&[a, b, c]).unwrap()).collect();
            for (p, s) in ids.iter().enumerate() { b.add(&layout, p as u32, s); }
            let (dir, bm, n) = b.finish();
            let idx = PrefixIndex::new(&dir, n, &bm).unwrap();
            idx.validate(ids.len() as u32).unwrap();
            for target in ids.iter().take(20) {
                for d in 1..=3 {
                    let expect: Vec<u32> = ids.iter().enumerate()
                        .filter(|(_, s)| s.common_prefix(target) >= d)
                        .map(|(p, _)| p as u32).collect();
                    let got: Vec<u32> = idx.find(layout.key(target, d)).unwrap().unwrap().iter().collect();
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
    fn hostile_container_count_is_refused() {
        let mut b = 12346u32.to_le_bytes().to_vec();
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_bitmap(&b).is_err());
    }
}
