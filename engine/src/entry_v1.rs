//! A user entry of format version 1: one user's whole retained sequence inside a segment file, as
//! column blocks, an item dictionary and a SemID prefix index. See `docs/FORMAT.md` ("Version 1")
//! for the byte layout. Databases written by version 1 are read through this module until a
//! compaction rewrites their entries as version 2 (`entry`); nothing writes version 1 any more
//! but the tests.

use std::collections::HashMap;

use crate::codec::{
    bytes_at, checksum_matches, chunk_len, le_u32, read_chunk, write_chunk, Reader,
};
use crate::columns::{self, DictView, Packed};
pub use crate::entry::{EntryParams, EntrySizes, Ev};
use crate::error::{corrupt, DecodeError, DecodeResult};
use crate::prefix::{BuiltIndex, PrefixIndex, PrefixIndexBuilder, PrefixLayout, SPARSE_ENTRY_LEN};
use crate::types::SemId;

pub const ENTRY_MAGIC: &[u8; 4] = b"SUSR";
pub const ENTRY_VERSION: u16 = 1;
pub const ENTRY_HEADER_LEN: usize = 88;
pub const BLOCK_META_LEN: usize = 36;

/// The prefix index of a sequence whose event `p` is dictionary entry `idx[p]`. Each entry's
/// prefixes get their slots once; then the positions of all slots are laid out by a counting
/// sort (ascending within a slot, as events are visited in order) and each bitmap is built from
/// its sorted run, rather than pushing every position into one of thousands of bitmaps.
fn prefix_index(rows: &[(u32, Option<SemId>)], idx: &[u32], params: &EntryParams) -> BuiltIndex {
    let mut index = PrefixIndexBuilder::default();
    let slots: Vec<Vec<usize>> = rows
        .iter()
        .map(|r| {
            r.1.map_or_else(Vec::new, |s| index.slots_of(&params.layout, &s))
        })
        .collect();
    let mut start = vec![0usize; index.n_slots() + 1];
    for &i in idx {
        for &s in &slots[i as usize] {
            start[s + 1] += 1;
        }
    }
    for s in 1..start.len() {
        start[s] += start[s - 1];
    }
    let mut fill = start.clone();
    let mut flat = vec![0u32; start[start.len() - 1]];
    for (pos, &i) in idx.iter().enumerate() {
        for &s in &slots[i as usize] {
            flat[fill[s]] = pos as u32;
            fill[s] += 1;
        }
    }
    for s in 0..index.n_slots() {
        index.set_positions(s, &flat[start[s]..start[s + 1]]);
    }
    index.finish(params.zstd_level)
}

/// Encode `events` (sorted by time) of `user`. `resolve` gives each distinct item's internal
/// catalog number and SemID.
pub fn build_entry(
    user: u64,
    events: &[Ev],
    params: &EntryParams,
    mut resolve: impl FnMut(u64) -> (u32, Option<SemId>),
) -> (Vec<u8>, EntrySizes) {
    debug_assert!(events.windows(2).all(|w| w[0].ts <= w[1].ts));
    // Dictionary: the distinct items' internal numbers, ascending. One hash look-up per event
    // gives each item its order of first appearance; sorting the distinct items then maps that
    // to the dictionary index.
    let mut first_seen: HashMap<u64, u32> = HashMap::new();
    let mut distinct: Vec<(u32, Option<SemId>)> = Vec::new();
    let seen: Vec<u32> = events
        .iter()
        .map(|e| {
            *first_seen.entry(e.item).or_insert_with(|| {
                distinct.push(resolve(e.item));
                (distinct.len() - 1) as u32
            })
        })
        .collect();
    let mut order: Vec<u32> = (0..distinct.len() as u32).collect();
    order.sort_unstable_by_key(|&i| distinct[i as usize].0);
    let mut dict_index = vec![0u32; distinct.len()];
    for (d, &i) in order.iter().enumerate() {
        dict_index[i as usize] = d as u32;
    }
    let idx: Vec<u32> = seen.iter().map(|&i| dict_index[i as usize]).collect();
    let rows: Vec<(u32, Option<SemId>)> = order.iter().map(|&i| distinct[i as usize]).collect();

    let index = prefix_index(&rows, &idx, params);

    let mut sizes = EntrySizes::default();
    let internal: Vec<u32> = rows.iter().map(|r| r.0).collect();
    let mut dict = Vec::new();
    columns::encode_dict(&internal, &mut dict);
    sizes.dict = dict.len() as u32;

    let be = params.block_events as usize;
    let mut block_index = Vec::new();
    let mut cols = Vec::new();
    let mut raw = Vec::new();
    for (b, block) in events.chunks(be).enumerate() {
        let off = cols.len() as u32;
        let mut lens = [0u32; 4];
        let start = b * be;
        for (c, len) in lens.iter_mut().enumerate() {
            raw.clear();
            match c {
                0 => {
                    let ts: Vec<i64> = block.iter().map(|e| e.ts).collect();
                    columns::encode_time(&ts, &mut raw)
                }
                1 => columns::encode_packed(&idx[start..start + block.len()], &mut raw),
                2 => {
                    let a: Vec<u32> = block.iter().map(|e| u32::from(e.action)).collect();
                    columns::encode_packed(&a, &mut raw)
                }
                _ => {
                    let d: Vec<u32> = block.iter().map(|e| u32::from(e.domain)).collect();
                    columns::encode_packed(&d, &mut raw)
                }
            }
            let before = cols.len();
            write_chunk(&mut cols, &raw, params.zstd_level);
            *len = (cols.len() - before) as u32;
        }
        sizes.time += lens[0];
        sizes.item += lens[1];
        sizes.action += lens[2];
        sizes.domain += lens[3];
        block_index.extend_from_slice(&block[0].ts.to_le_bytes());
        block_index.extend_from_slice(&block[block.len() - 1].ts.to_le_bytes());
        block_index.extend_from_slice(&off.to_le_bytes());
        for l in lens {
            block_index.extend_from_slice(&l.to_le_bytes());
        }
    }

    let mut out = Vec::with_capacity(
        ENTRY_HEADER_LEN
            + block_index.len()
            + dict.len()
            + cols.len()
            + index.sparse.len()
            + index.chunks.len(),
    );
    out.extend_from_slice(ENTRY_MAGIC);
    out.extend_from_slice(&ENTRY_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&user.to_le_bytes());
    out.extend_from_slice(&(events.len() as u32).to_le_bytes());
    out.extend_from_slice(&params.block_events.to_le_bytes());
    out.extend_from_slice(&(internal.len() as u32).to_le_bytes());
    out.extend_from_slice(&index.n_chunks.to_le_bytes());
    out.extend_from_slice(&events.first().map_or(0, |e| e.ts).to_le_bytes());
    out.extend_from_slice(&events.last().map_or(0, |e| e.ts).to_le_bytes());
    out.extend_from_slice(&params.semid_gen.to_le_bytes());
    out.push(params.layout.levels);
    out.push(params.layout.code_bits);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&block_index).to_le_bytes());
    out.extend_from_slice(&(dict.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&dict).to_le_bytes());
    out.extend_from_slice(&(cols.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&index.sparse).to_le_bytes());
    out.extend_from_slice(&(index.chunks.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(out.len(), ENTRY_HEADER_LEN);
    out.extend_from_slice(&block_index);
    out.extend_from_slice(&dict);
    out.extend_from_slice(&cols);
    out.extend_from_slice(&index.sparse);
    out.extend_from_slice(&index.chunks);
    sizes.index = (index.sparse.len() + index.chunks.len()) as u32;
    sizes.meta = (ENTRY_HEADER_LEN + block_index.len()) as u32;
    (out, sizes)
}

/// The fixed header of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHeader {
    pub user: u64,
    pub n_events: u32,
    pub block_events: u32,
    pub n_dict: u32,
    pub index_chunks: u32,
    pub first_ts: i64,
    pub last_ts: i64,
    pub semid_gen: u64,
    pub layout: PrefixLayout,
    pub block_index_crc: u32,
    pub dict_len: u32,
    pub dict_crc: u32,
    pub columns_len: u32,
    pub index_sparse_crc: u32,
    pub index_len: u32,
    pub header_crc: u32,
}

impl EntryHeader {
    pub fn n_blocks(&self) -> usize {
        crate::entry::n_blocks(self.n_events as usize, self.block_events as usize)
    }
}

/// Which columns of a block to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cols {
    pub time: bool,
    pub item: bool,
    pub action: bool,
    pub domain: bool,
}

impl Cols {
    pub const ALL: Cols = Cols {
        time: true,
        item: true,
        action: true,
        domain: true,
    };
    pub const NONE: Cols = Cols {
        time: false,
        item: false,
        action: false,
        domain: false,
    };
    pub const TIME: Cols = Cols {
        time: true,
        item: false,
        action: false,
        domain: false,
    };
    pub const ITEM: Cols = Cols {
        time: false,
        item: true,
        action: false,
        domain: false,
    };
}

/// Decoded columns of one block (only the requested ones are filled).
#[derive(Debug, Clone, Default)]
pub struct Block {
    pub ts: Vec<i64>,
    pub item: Vec<u32>,
    pub action: Vec<u8>,
    pub domain: Vec<u16>,
    /// Unpacking space for the narrow columns, kept so that a reused block allocates nothing.
    values: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
pub struct BlockMeta {
    pub first_ts: i64,
    pub last_ts: i64,
    col_off: u32,
    lens: [u32; 4],
}

/// A user entry read in place.
#[derive(Clone, Copy)]
pub struct EntryView<'a> {
    pub header: EntryHeader,
    block_index: &'a [u8],
    dict: &'a [u8],
    columns: &'a [u8],
    index_sparse: &'a [u8],
    index_chunks: &'a [u8],
}

impl<'a> EntryView<'a> {
    /// Parse and check the header and the block index; other sections are checked when read.
    pub fn parse(bytes: &'a [u8]) -> DecodeResult<Self> {
        Self::parse_with(bytes, true)
    }

    /// [`EntryView::parse`]; with `sections` false, the checksums of the block index, the
    /// dictionary and the index directory are not recomputed (the caller checked these same
    /// bytes before). The header's checksum and every structural bound are always checked.
    pub fn parse_with(bytes: &'a [u8], sections: bool) -> DecodeResult<Self> {
        if bytes.len() < ENTRY_HEADER_LEN {
            corrupt!("entry of {} bytes is shorter than its header", bytes.len());
        }
        let crc = le_u32(bytes, ENTRY_HEADER_LEN - 4);
        let actual = crc32c::crc32c(&bytes[..ENTRY_HEADER_LEN - 4]);
        if !checksum_matches(crc, actual) {
            corrupt!("entry header checksum mismatch (stored {crc:08x}, computed {actual:08x})");
        }
        let mut r = Reader::new(&bytes[..ENTRY_HEADER_LEN]);
        if r.bytes(4)? != ENTRY_MAGIC {
            corrupt!("bad entry magic");
        }
        let version = r.u16()?;
        if version != ENTRY_VERSION {
            return Err(DecodeError::Version {
                what: "user entry",
                found: u32::from(version),
                supported: u32::from(ENTRY_VERSION),
            });
        }
        let _flags = r.u16()?;
        let h = EntryHeader {
            user: r.u64()?,
            n_events: r.u32()?,
            block_events: r.u32()?,
            n_dict: r.u32()?,
            index_chunks: r.u32()?,
            first_ts: r.i64()?,
            last_ts: r.i64()?,
            semid_gen: r.u64()?,
            layout: PrefixLayout {
                levels: r.u8()?,
                code_bits: r.u8()?,
            },
            block_index_crc: {
                r.u16()?;
                r.u32()?
            },
            dict_len: r.u32()?,
            dict_crc: r.u32()?,
            columns_len: r.u32()?,
            index_sparse_crc: r.u32()?,
            index_len: r.u32()?,
            header_crc: crc,
        };
        if h.block_events == 0 || h.block_events > 1 << 20 {
            corrupt!("block size {} out of range", h.block_events);
        }
        if h.n_dict > h.n_events || (h.n_events > 0 && h.n_dict == 0) {
            corrupt!("{} dictionary entries for {} events", h.n_dict, h.n_events);
        }
        if h.first_ts > h.last_ts {
            corrupt!("first timestamp after last");
        }
        let block_index_len = h.n_blocks() * BLOCK_META_LEN;
        let mut r = Reader::new(&bytes[ENTRY_HEADER_LEN..]);
        let view = EntryView {
            header: h,
            block_index: r.bytes(block_index_len)?,
            dict: r.bytes(h.dict_len as usize)?,
            columns: r.bytes(h.columns_len as usize)?,
            index_sparse: r.bytes((h.index_chunks as usize).saturating_mul(SPARSE_ENTRY_LEN))?,
            index_chunks: r.bytes(h.index_len as usize)?,
        };
        r.finish()?;
        if !sections {
            return Ok(view);
        }
        if !checksum_matches(h.block_index_crc, crc32c::crc32c(view.block_index)) {
            corrupt!("block index checksum mismatch");
        }
        if !checksum_matches(h.dict_crc, crc32c::crc32c(view.dict)) {
            corrupt!("item dictionary checksum mismatch");
        }
        if !checksum_matches(h.index_sparse_crc, crc32c::crc32c(view.index_sparse)) {
            corrupt!("prefix index directory checksum mismatch");
        }
        Ok(view)
    }

    pub fn n_events(&self) -> usize {
        self.header.n_events as usize
    }

    pub fn n_blocks(&self) -> usize {
        self.header.n_blocks()
    }

    pub fn block_events(&self) -> usize {
        self.header.block_events as usize
    }

    /// Number of events in block `b`.
    pub fn block_len(&self, b: usize) -> usize {
        crate::entry::block_len(self.n_events(), self.block_events(), b)
    }

    pub fn block_meta(&self, b: usize) -> BlockMeta {
        let o = b * BLOCK_META_LEN;
        let m = &self.block_index[o..o + BLOCK_META_LEN];
        BlockMeta {
            first_ts: i64::from_le_bytes(bytes_at(m, 0)),
            last_ts: i64::from_le_bytes(bytes_at(m, 8)),
            col_off: le_u32(m, 16),
            lens: [le_u32(m, 20), le_u32(m, 24), le_u32(m, 28), le_u32(m, 32)],
        }
    }

    fn column_chunk(&self, b: usize, c: usize) -> DecodeResult<&'a [u8]> {
        let m = self.block_meta(b);
        let start = m.col_off as usize + m.lens[..c].iter().map(|&l| l as usize).sum::<usize>();
        let len = m.lens[c] as usize;
        match self.columns.get(start..start.saturating_add(len)) {
            Some(s) => Ok(s),
            None => corrupt!("column {c} of block {b} lies outside the column section"),
        }
    }

    /// Decode the requested columns of block `b` into `out`.
    pub fn decode_block(
        &self,
        b: usize,
        cols: Cols,
        out: &mut Block,
        scratch: &mut Vec<u8>,
    ) -> DecodeResult<()> {
        let n = self.block_len(b);
        let n_dict = self.header.n_dict;
        let wrap = |c: &str, e: DecodeError| match e {
            DecodeError::Corrupt(d) => DecodeError::Corrupt(format!("block {b} {c} column: {d}")),
            v => v,
        };
        let values = &mut out.values;
        if cols.time {
            let raw = read_chunk(self.column_chunk(b, 0)?, 11 + 16 * n, scratch)
                .map_err(|e| wrap("time", e))?;
            columns::decode_time(raw, n, &mut out.ts).map_err(|e| wrap("time", e))?;
            let m = self.block_meta(b);
            if out.ts.first() != Some(&m.first_ts) || out.ts.last() != Some(&m.last_ts) {
                corrupt!("block {b} time column disagrees with the block index");
            }
        }
        if cols.item {
            let raw = read_chunk(self.column_chunk(b, 1)?, 1 + 4 * n, scratch)
                .map_err(|e| wrap("item", e))?;
            Packed::parse(raw, n, 32)
                .and_then(|p| p.unpack(&mut out.item))
                .map_err(|e| wrap("item", e))?;
            if out.item.iter().any(|&i| i >= n_dict) {
                corrupt!("block {b} item column points outside the dictionary of {n_dict}");
            }
        }
        if cols.action {
            let raw = read_chunk(self.column_chunk(b, 2)?, 1 + n, scratch)
                .map_err(|e| wrap("action", e))?;
            Packed::parse(raw, n, 8)
                .and_then(|p| p.unpack(values))
                .map_err(|e| wrap("action", e))?;
            out.action.clear();
            out.action.extend(values.iter().map(|&v| v as u8));
        }
        if cols.domain {
            let raw = read_chunk(self.column_chunk(b, 3)?, 1 + 2 * n, scratch)
                .map_err(|e| wrap("domain", e))?;
            Packed::parse(raw, n, 16)
                .and_then(|p| p.unpack(values))
                .map_err(|e| wrap("domain", e))?;
            out.domain.clear();
            out.domain.extend(values.iter().map(|&v| v as u16));
        }
        Ok(())
    }

    /// The item dictionary (checked against its checksum at parse).
    pub fn dict(&self) -> DecodeResult<DictView<'a>> {
        DictView::parse(self.dict, self.header.n_dict as usize)
            .map_err(|e| DecodeError::Corrupt(format!("item dictionary: {e}")))
    }

    /// The prefix index (its sparse directory checked at parse, each chunk when read).
    pub fn index(&self) -> DecodeResult<PrefixIndex<'a>> {
        PrefixIndex::new(
            self.index_sparse,
            self.header.index_chunks,
            self.index_chunks,
        )
    }

    /// Block holding the first event with `ts >= t` lies at or after the returned block; every
    /// block before it ends before `t`.
    pub fn first_block_reaching(&self, t: i64) -> usize {
        let (mut lo, mut hi) = (0, self.n_blocks());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.block_meta(mid).last_ts < t {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Check everything: every chunk's checksum, every block decodes and agrees with the block
    /// index, time is sorted across blocks, the dictionary ascends and is used, and the index is
    /// well formed. Used by `verify`.
    pub fn validate(&self) -> DecodeResult<()> {
        let h = &self.header;
        let dict = self.dict()?;
        dict.validate()?;
        let mut prev_ts = i64::MIN;
        let mut block = Block::default();
        let mut scratch = Vec::new();
        let mut used = vec![false; dict.len()];
        let mut expect_off = 0u32;
        for b in 0..self.n_blocks() {
            let m = self.block_meta(b);
            if m.col_off != expect_off {
                corrupt!(
                    "block {b} columns start at {}, expected {expect_off}",
                    m.col_off
                );
            }
            expect_off = m.lens.iter().fold(expect_off, |a, &l| a.saturating_add(l));
            for (c, &len) in m.lens.iter().enumerate() {
                let chunk = self.column_chunk(b, c)?;
                if chunk_len(chunk)? != len as usize {
                    corrupt!("block {b} column {c} length disagrees with its chunk");
                }
            }
            self.decode_block(b, Cols::ALL, &mut block, &mut scratch)?;
            let (Some(&first), Some(&last)) = (block.ts.first(), block.ts.last()) else {
                corrupt!("block {b} has no events");
            };
            if first < prev_ts {
                corrupt!("block {b} starts before the previous block ends");
            }
            prev_ts = last;
            for &i in &block.item {
                used[i as usize] = true;
            }
        }
        if expect_off != h.columns_len {
            corrupt!(
                "column section has {} bytes, blocks use {expect_off}",
                h.columns_len
            );
        }
        if used.iter().any(|u| !u) {
            corrupt!("item dictionary holds items the sequence never uses");
        }
        if self.n_events() > 0
            && (self.block_meta(0).first_ts != h.first_ts
                || self.block_meta(self.n_blocks() - 1).last_ts != h.last_ts)
        {
            corrupt!("header time range disagrees with the blocks");
        }
        self.index()?.validate(h.n_events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params(block_events: u32) -> EntryParams {
        EntryParams {
            block_events,
            zstd_level: 3,
            layout: PrefixLayout::new(3, 16),
            semid_gen: 7,
        }
    }

    fn semid_of(item: u64) -> Option<SemId> {
        (!item.is_multiple_of(5)).then(|| {
            SemId::new(&[(item % 3) as u16, (item % 7) as u16, (item % 16) as u16]).unwrap()
        })
    }

    /// Items are resolved to internal number `id * 3`.
    fn decode_all(v: &EntryView<'_>) -> Vec<Ev> {
        let dict = v.dict().unwrap();
        let mut out = Vec::new();
        let mut b = Block::default();
        let mut s = Vec::new();
        for i in 0..v.n_blocks() {
            v.decode_block(i, Cols::ALL, &mut b, &mut s).unwrap();
            for j in 0..b.ts.len() {
                out.push(Ev {
                    ts: b.ts[j],
                    item: u64::from(dict.get(b.item[j] as usize) / 3),
                    action: b.action[j],
                    domain: b.domain[j],
                });
            }
        }
        out
    }

    fn events_strategy() -> impl Strategy<Value = Vec<Ev>> {
        proptest::collection::vec((0i64..5_000, 0u64..300, any::<u8>(), 0u16..4), 0..700).prop_map(
            |v| {
                let mut evs: Vec<Ev> = v
                    .into_iter()
                    .map(|(ts, item, action, domain)| Ev {
                        ts,
                        item,
                        action,
                        domain,
                    })
                    .collect();
                evs.sort_by_key(|e| e.ts);
                evs
            },
        )
    }

    proptest! {
        #[test]
        fn entry_round_trip(evs in events_strategy(), be in 16u32..200) {
            let (bytes, sizes) = build_entry(42, &evs, &params(be), |id| ((id * 3) as u32, semid_of(id)));
            prop_assert_eq!(sizes.total(), bytes.len() as u64);
            let v = EntryView::parse(&bytes).unwrap();
            v.validate().unwrap();
            prop_assert_eq!(v.header.user, 42);
            prop_assert_eq!(decode_all(&v), evs.clone());
            let idx = v.index().unwrap();
            let mut cache = crate::prefix::IndexCache::default();
            if let Some(e) = evs.iter().find(|e| semid_of(e.item).is_some()) {
                let s = semid_of(e.item).unwrap();
                let got: Vec<u32> = idx.find(v.header.layout.key(&s, 3), &mut cache).unwrap().unwrap().iter().collect();
                let want: Vec<u32> = evs.iter().enumerate().filter(|(_, x)| semid_of(x.item) == Some(s)).map(|(p, _)| p as u32).collect();
                prop_assert_eq!(got, want);
            }
        }

        #[test]
        fn every_flipped_byte_is_detected(evs in events_strategy(), pos in any::<usize>(), bit in 0u8..8) {
            prop_assume!(!evs.is_empty());
            let (mut bytes, _) = build_entry(1, &evs, &params(64), |id| ((id * 3) as u32, semid_of(id)));
            let pos = pos % bytes.len();
            bytes[pos] ^= 1 << bit;
            let detected = match EntryView::parse(&bytes) { Err(_) => true, Ok(v) => v.validate().is_err() };
            prop_assert!(detected, "flip at {} of {} not detected", pos, bytes.len());
        }
    }

    #[test]
    fn hundred_thousand_events_and_equal_timestamps() {
        let evs: Vec<Ev> = (0..100_000u64)
            .map(|i| Ev {
                ts: (i / 10) as i64,
                item: i % 1237,
                action: (i % 4) as u8,
                domain: (i % 3) as u16,
            })
            .collect();
        let (bytes, _) = build_entry(9, &evs, &params(1024), |id| ((id * 3) as u32, semid_of(id)));
        let v = EntryView::parse(&bytes).unwrap();
        v.validate().unwrap();
        assert_eq!(v.n_blocks(), 98);
        assert_eq!(decode_all(&v), evs);
        assert_eq!(v.first_block_reaching(5_000), 48);
    }

    #[test]
    fn one_event() {
        let evs = [Ev {
            ts: -5,
            item: 5,
            action: 255,
            domain: u16::MAX,
        }];
        let (bytes, _) = build_entry(u64::MAX, &evs, &params(16), |_| (15, None));
        let v = EntryView::parse(&bytes).unwrap();
        v.validate().unwrap();
        assert_eq!(decode_all(&v), evs);
        assert!(v.index().unwrap().is_empty());
    }
}
