//! A user entry, format version 2: one user's whole retained sequence inside a segment file.
//! See docs/FORMAT.md ("User entry, version 2") for the bytes; version 1 is `entry_v1`.
//!
//! The items of a sequence are stored one of two ways, chosen per entry:
//! - **forward** (fewer than [`INVERTED_MIN_EVENTS`] events): the user's distinct items as
//!   ascending catalog rows (an Elias–Fano list), and one bit-packed dictionary code per event.
//!   Short histories are mostly distinct items, where any other order costs a permutation; a
//!   scan of a few thousand codes is as fast as an index.
//! - **inverted** (longer histories): the distinct items ordered by SemID, so that the items
//!   sharing a SemID prefix are a contiguous range of entries, each with the list of positions
//!   where it occurs (Elias–Fano). The lists are the item column and the SemID index at once:
//!   hard retrieval reads the lists of one range of entries; per-entry counts, first and newest
//!   positions are rank queries on them.
//!
//! Time, action and domain are in column blocks (`block`). Every byte after the header is
//! covered by a CRC32C per 4 KiB page, checked when read.

use std::collections::HashMap;

use crate::block::{self, Block, Stamp};
use crate::codec::{
    bitpack, bitpacked_len, bits_for, checksum_matches, le_u32, put_varint, Reader,
};
use crate::columns::Packed;
use crate::ef::{self, BitWriter, EfList};
use crate::error::{corrupt, DecodeError, DecodeResult};
use crate::postings::ByEntry;
use crate::prefix::PrefixLayout;
use crate::types::SemId;

pub const ENTRY_MAGIC: &[u8; 4] = b"SUSR";
pub const ENTRY_VERSION: u16 = 2;
/// Bytes covered by one page checksum.
pub const PAGE: usize = 4096;
/// Entries of at least this many events use the inverted layout.
pub const INVERTED_MIN_EVENTS: usize = 4096;
/// Entries per row of the inverted layout's count table.
const GROUP: usize = 64;
/// Count table row: events before the group u32, bit offset of its first list u32, count width
/// u8, byte offset of its packed counts u32.
const GROUP_META: usize = 13;
/// Block index record: first timestamp i64, byte offset u32 (blocks after the first).
const BLOCK_INDEX_LEN: usize = 12;

pub use crate::types::Ev;

/// Bytes an entry spends on each part, for statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntrySizes {
    pub time: u32,
    /// Item codes (forward layout; version 1's item column).
    pub item: u32,
    pub action: u32,
    pub domain: u32,
    /// The item dictionary (catalog rows).
    pub dict: u32,
    /// Position lists and their count table (inverted layout; version 1's prefix index).
    pub index: u32,
    /// Header, page checksums and block index.
    pub meta: u32,
}

impl EntrySizes {
    pub fn total(&self) -> u64 {
        [
            self.time,
            self.item,
            self.action,
            self.domain,
            self.dict,
            self.index,
            self.meta,
        ]
        .iter()
        .map(|&v| u64::from(v))
        .sum()
    }
}

pub struct EntryParams {
    pub block_events: u32,
    /// zstd level of version 1's chunks (version 2 stores no compressed chunk).
    pub zstd_level: i32,
    pub layout: PrefixLayout,
    pub semid_gen: u64,
}

/// How an entry stores its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Forward,
    Inverted,
}

/// The fixed facts of an entry, from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHeader {
    pub user: u64,
    pub layout: Layout,
    /// SemID levels of the keys the inverted layout is ordered by.
    pub levels: u8,
    pub n_events: u32,
    pub n_dict: u32,
    pub block_events: u32,
    pub first_ts: i64,
    pub last_ts: i64,
    pub semid_gen: u64,
    pub dict_len: u32,
    pub pos_len: u32,
    pub time_len: u32,
    pub action_len: u32,
    pub domain_len: u32,
    pub header_crc: u32,
}

impl EntryHeader {
    pub fn n_blocks(&self) -> usize {
        n_blocks(self.n_events as usize, self.block_events as usize)
    }
}

/// Blocks of `block_events` events that `n_events` events fill (both versions).
pub fn n_blocks(n_events: usize, block_events: usize) -> usize {
    n_events.div_ceil(block_events.max(1))
}

/// Events in block `b` (both versions).
pub fn block_len(n_events: usize, block_events: usize, b: usize) -> usize {
    (n_events - b * block_events).min(block_events)
}

/// Encode `events` (sorted by time, at least one) of `user`. `resolve` gives each distinct item's
/// catalog row and SemID.
pub fn build_entry(
    user: u64,
    events: &[Ev],
    params: &EntryParams,
    mut resolve: impl FnMut(u64) -> (u32, Option<SemId>),
) -> (Vec<u8>, EntrySizes) {
    debug_assert!(!events.is_empty());
    debug_assert!(events.windows(2).all(|w| w[0].ts <= w[1].ts));
    let n = events.len();
    // Each item's order of first appearance, with one hash look-up per event.
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
    let layout = if n >= INVERTED_MIN_EVENTS {
        Layout::Inverted
    } else {
        Layout::Forward
    };
    let mut order: Vec<u32> = (0..distinct.len() as u32).collect();
    match layout {
        Layout::Forward => order.sort_unstable_by_key(|&i| distinct[i as usize].0),
        Layout::Inverted => order.sort_unstable_by_key(|&i| {
            let (row, semid) = distinct[i as usize];
            (params.layout.order_key(semid), row)
        }),
    }
    let mut dict_index = vec![0u32; distinct.len()];
    for (d, &i) in order.iter().enumerate() {
        dict_index[i as usize] = d as u32;
    }
    let codes: Vec<u32> = seen.iter().map(|&i| dict_index[i as usize]).collect();
    let rows: Vec<u32> = order.iter().map(|&i| distinct[i as usize].0).collect();
    let (dict, positions) = match layout {
        Layout::Forward => encode_forward(&rows, &codes),
        Layout::Inverted => encode_inverted(&rows, &codes),
    };
    let mut sizes = EntrySizes {
        dict: dict.len() as u32,
        ..EntrySizes::default()
    };
    match layout {
        Layout::Forward => sizes.item = positions.len() as u32,
        Layout::Inverted => sizes.index = positions.len() as u32,
    }
    let (block_index, blocks) = encode_blocks(events, params.block_events as usize, &mut sizes);

    let mut out = Vec::new();
    out.extend_from_slice(ENTRY_MAGIC);
    out.extend_from_slice(&ENTRY_VERSION.to_le_bytes());
    out.push(match layout {
        Layout::Forward => 0,
        Layout::Inverted => 1,
    });
    out.push(params.layout.levels);
    let first = events[0].ts;
    let last = events[n - 1].ts;
    for v in [
        user,
        n as u64,
        rows.len() as u64,
        u64::from(params.block_events),
        zigzag(first),
        last.wrapping_sub(first) as u64,
        params.semid_gen,
        dict.len() as u64,
        positions.len() as u64,
        u64::from(sizes.time),
        u64::from(sizes.action),
        u64::from(sizes.domain),
    ] {
        put_varint(&mut out, v);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    let body: Vec<u8> = [block_index, dict, positions, blocks].concat();
    for page in body.chunks(PAGE) {
        out.extend_from_slice(&crc32c::crc32c(page).to_le_bytes());
    }
    sizes.meta = (out.len() + body.len()) as u32
        - [
            sizes.dict,
            sizes.item,
            sizes.index,
            sizes.time,
            sizes.action,
            sizes.domain,
        ]
        .iter()
        .sum::<u32>();
    out.extend_from_slice(&body);
    debug_assert_eq!(sizes.total(), out.len() as u64);
    (out, sizes)
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Forward layout: rows ascending as an Elias–Fano list behind their universe; codes packed.
fn encode_forward(rows: &[u32], codes: &[u32]) -> (Vec<u8>, Vec<u8>) {
    let universe = u64::from(rows[rows.len() - 1]) + 1;
    let mut dict = Vec::new();
    put_varint(&mut dict, universe);
    let mut bits = BitWriter::default();
    ef::encode(rows, universe, &mut bits);
    dict.extend_from_slice(&bits.into_bytes());
    let mut positions = Vec::new();
    let w = bits_for(rows.len() as u64 - 1);
    positions.push(w);
    bitpack(codes, w, &mut positions);
    (dict, positions)
}

/// Inverted layout: rows in SemID order, packed; the count table; the position lists.
fn encode_inverted(rows: &[u32], codes: &[u32]) -> (Vec<u8>, Vec<u8>) {
    let mut dict = Vec::new();
    let w = bits_for(u64::from(rows.iter().copied().max().unwrap_or(0)));
    dict.push(w);
    bitpack(rows, w, &mut dict);

    let n = codes.len() as u64;
    let mut start = vec![0u32; rows.len() + 1];
    for &c in codes {
        start[c as usize + 1] += 1;
    }
    for e in 1..start.len() {
        start[e] += start[e - 1];
    }
    let mut fill = start.clone();
    let mut flat = vec![0u32; codes.len()];
    for (p, &c) in codes.iter().enumerate() {
        flat[fill[c as usize] as usize] = p as u32;
        fill[c as usize] += 1;
    }
    let mut table = Vec::new();
    let mut counts = Vec::new();
    let mut lists = BitWriter::default();
    for (g, group) in (0..rows.len())
        .collect::<Vec<_>>()
        .chunks(GROUP)
        .enumerate()
    {
        let c: Vec<u32> = group.iter().map(|&e| start[e + 1] - start[e] - 1).collect();
        let cw = bits_for(u64::from(c.iter().copied().max().unwrap_or(0)));
        table.extend_from_slice(&start[g * GROUP].to_le_bytes());
        table.extend_from_slice(&(lists.len() as u32).to_le_bytes());
        table.push(cw);
        table.extend_from_slice(&(counts.len() as u32).to_le_bytes());
        bitpack(&c, cw, &mut counts);
        for &e in group {
            ef::encode(
                &flat[start[e] as usize..start[e + 1] as usize],
                n,
                &mut lists,
            );
        }
    }
    (dict, [table, counts, lists.into_bytes()].concat())
}

/// Column blocks and the block index of `events`; adds the parts' sizes to `sizes`.
fn encode_blocks(events: &[Ev], be: usize, sizes: &mut EntrySizes) -> (Vec<u8>, Vec<u8>) {
    let mut index = Vec::new();
    let mut blocks = Vec::new();
    for (b, chunk) in events.chunks(be).enumerate() {
        if b > 0 {
            index.extend_from_slice(&chunk[0].ts.to_le_bytes());
            index.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
        }
        let ts: Vec<i64> = chunk.iter().map(|e| e.ts).collect();
        let action: Vec<u32> = chunk.iter().map(|e| u32::from(e.action)).collect();
        let domain: Vec<u32> = chunk.iter().map(|e| u32::from(e.domain)).collect();
        let mut raw = Vec::new();
        block::encode_block(&ts, &action, &domain, &mut raw);
        let lens = block::part_lens(&raw, ts.len(), ts[0]).expect("a block just encoded decodes");
        sizes.time += lens[0] as u32;
        sizes.action += lens[1] as u32;
        sizes.domain += lens[2] as u32;
        blocks.extend_from_slice(&raw);
    }
    (index, blocks)
}

/// A version-2 user entry read in place.
#[derive(Clone, Copy)]
pub struct EntryView<'a> {
    pub header: EntryHeader,
    /// Bytes of the header with its checksum.
    header_len: usize,
    crcs: &'a [u8],
    body: &'a [u8],
    /// Where each section starts in `body`: block index, dict, positions, blocks, end.
    at: [usize; 5],
}

impl<'a> EntryView<'a> {
    /// Parse and check the header, the page checksums of the block index, dictionary and
    /// positions, and every structural bound. Blocks are checked when read.
    pub fn parse(bytes: &'a [u8]) -> DecodeResult<Self> {
        Self::parse_with(bytes, true)
    }

    /// [`EntryView::parse`]; with `sections` false, the page checksums and the block index's
    /// order are not checked again (the caller checked these same bytes before). The header
    /// checksum and the section bounds are always checked.
    pub fn parse_with(bytes: &'a [u8], sections: bool) -> DecodeResult<Self> {
        let mut r = Reader::new(bytes);
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
        let h = parse_header(&mut r)?;
        let header_len = r.position();
        let crc = r.u32()?;
        let actual = crc32c::crc32c(&bytes[..header_len]);
        if !checksum_matches(crc, actual) {
            corrupt!("entry header checksum mismatch (stored {crc:08x}, computed {actual:08x})");
        }
        let h = EntryHeader {
            header_crc: crc,
            ..h
        };
        let lens = [
            (h.n_blocks() - 1) * BLOCK_INDEX_LEN,
            h.dict_len as usize,
            h.pos_len as usize,
            h.time_len as usize + h.action_len as usize + h.domain_len as usize,
        ];
        let mut at = [0usize; 5];
        for (i, l) in lens.iter().enumerate() {
            at[i + 1] = at[i] + l;
        }
        let body_len = at[4];
        let crcs = r.bytes(body_len.div_ceil(PAGE) * 4)?;
        let body = r.bytes(body_len)?;
        r.finish()?;
        let view = EntryView {
            header: h,
            header_len: header_len + 4,
            crcs,
            body,
            at,
        };
        if sections {
            // Everything but an inverted entry's lists, which readers check list by list
            // ([`EntryView::lists`], [`EntryView::check_list`]).
            let end = match h.layout {
                Layout::Forward => at[3],
                Layout::Inverted => at[2] + view.lists_unchecked()?.lists_at,
            };
            view.check_pages(0, end)?;
            view.check_block_index()?;
        }
        Ok(view)
    }

    /// Check the page checksums covering `body[start..end]`.
    fn check_pages(&self, start: usize, end: usize) -> DecodeResult<()> {
        self.check_pages_once(start, end, &mut PageMemo::default())
    }

    /// [`EntryView::check_pages`], skipping the pages `memo` says were checked and adding the
    /// others to it.
    fn check_pages_once(&self, start: usize, end: usize, memo: &mut PageMemo) -> DecodeResult<()> {
        if start >= end {
            return Ok(());
        }
        for p in start / PAGE..end.div_ceil(PAGE) {
            if memo.0.get(p / 64).is_some_and(|w| w & (1 << (p % 64)) != 0) {
                continue;
            }
            let page = &self.body[p * PAGE..((p + 1) * PAGE).min(self.body.len())];
            let stored = le_u32(self.crcs, p * 4);
            if !checksum_matches(stored, crc32c::crc32c(page)) {
                corrupt!("page {p} checksum mismatch");
            }
            if memo.0.len() <= p / 64 {
                memo.0.resize(p / 64 + 1, 0);
            }
            memo.0[p / 64] |= 1 << (p % 64);
        }
        Ok(())
    }

    /// Block offsets ascend within the blocks section and first times ascend.
    fn check_block_index(&self) -> DecodeResult<()> {
        let mut prev = (self.header.first_ts, 0usize);
        for b in 1..self.n_blocks() {
            let (ts, off) = (self.block_first_ts(b), self.block_offset(b));
            if ts < prev.0 || off <= prev.1 || off >= self.blocks().len() {
                corrupt!("block index record {b} out of order");
            }
            prev = (ts, off);
        }
        if self.n_blocks() > 1 && self.block_first_ts(self.n_blocks() - 1) > self.header.last_ts {
            corrupt!("last block starts after the entry's last time");
        }
        Ok(())
    }

    fn section(&self, i: usize) -> &'a [u8] {
        &self.body[self.at[i]..self.at[i + 1]]
    }

    fn blocks(&self) -> &'a [u8] {
        self.section(3)
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
        block_len(self.n_events(), self.block_events(), b)
    }

    fn block_record(&self, b: usize) -> &'a [u8] {
        let o = (b - 1) * BLOCK_INDEX_LEN;
        &self.section(0)[o..o + BLOCK_INDEX_LEN]
    }

    /// The first timestamp of block `b`.
    pub fn block_first_ts(&self, b: usize) -> i64 {
        if b == 0 {
            return self.header.first_ts;
        }
        i64::from_le_bytes(self.block_record(b)[..8].try_into().expect("8 bytes"))
    }

    fn block_offset(&self, b: usize) -> usize {
        if b == 0 {
            return 0;
        }
        le_u32(self.block_record(b), 8) as usize
    }

    /// The block holding the first event with `ts >= t`, or one before it: every block before
    /// the returned one ends before `t`.
    pub fn first_block_reaching(&self, t: i64) -> usize {
        let (mut lo, mut hi) = (1, self.n_blocks());
        // Blocks whose first time is below t, counted by binary search; the answer is the last
        // of them (its tail may reach t), or block 0.
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.block_first_ts(mid) < t {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo - 1
    }

    /// Byte range of block `b` in the blocks section.
    fn block_bounds(&self, b: usize) -> (usize, usize) {
        let start = self.block_offset(b);
        let end = if b + 1 < self.n_blocks() {
            self.block_offset(b + 1)
        } else {
            self.blocks().len()
        };
        (start, end.max(start))
    }

    /// Decode block `b` (checking its pages) into `out`.
    pub fn decode_block(&self, b: usize, out: &mut Block) -> DecodeResult<()> {
        let (start, end) = self.block_bounds(b);
        self.check_pages(self.at[3] + start, self.at[3] + end)?;
        let raw = &self.blocks()[start..end];
        block::decode_block(raw, self.block_len(b), self.block_first_ts(b), out)
            .map_err(|e| e.context(format!("block {b}")))
    }

    /// The dictionary's catalog rows, in dictionary order (ascending for the forward layout, in
    /// SemID order for the inverted one).
    pub fn dict_rows(&self) -> DecodeResult<Vec<u32>> {
        let raw = self.section(1);
        let n = self.header.n_dict as usize;
        let rows = match self.header.layout {
            Layout::Forward => {
                let mut r = Reader::new(raw);
                let universe = r.varint()?;
                let at = r.position();
                let list = EfList::new(&raw[at..], 0, n, universe)?;
                if (ef::size_bits(n as u64, universe) as usize).div_ceil(8) != raw.len() - at {
                    corrupt!("dictionary has trailing bytes");
                }
                list.validate(universe)?
            }
            Layout::Inverted => {
                let p = Packed::parse(raw, n, 32)?;
                let mut rows = Vec::new();
                p.unpack(&mut rows)?;
                rows
            }
        };
        Ok(rows)
    }

    /// The dictionary's rows read in place (inverted layout: in SemID order, one `get` each).
    pub fn packed_rows(&self) -> DecodeResult<Packed<'a>> {
        if self.header.layout != Layout::Inverted {
            corrupt!("a forward entry's dictionary is an Elias-Fano list");
        }
        Packed::parse(self.section(1), self.header.n_dict as usize, 32)
    }

    /// Dictionary code of every event (forward layout: read; inverted layout: each list's
    /// positions scattered).
    pub fn codes(&self) -> DecodeResult<Vec<u32>> {
        let n = self.n_events();
        let nd = self.header.n_dict;
        match self.header.layout {
            Layout::Forward => {
                let p = Packed::parse(self.section(2), n, 32)?;
                let mut codes = Vec::new();
                p.unpack(&mut codes)?;
                if codes.iter().any(|&c| c >= nd) {
                    corrupt!("item code beyond the dictionary of {nd}");
                }
                Ok(codes)
            }
            Layout::Inverted => {
                let by_entry = self.lists()?.decode_all()?;
                let mut codes = vec![0u32; n];
                for e in 0..nd as usize {
                    for &p in
                        &by_entry.pos[by_entry.start[e] as usize..by_entry.start[e + 1] as usize]
                    {
                        codes[p as usize] = e as u32;
                    }
                }
                Ok(codes)
            }
        }
    }

    /// The position lists, every page of them checked (inverted layout only).
    pub fn lists(&self) -> DecodeResult<Lists<'a>> {
        let lists = self.lists_unchecked()?;
        self.check_pages(self.at[2] + lists.lists_at, self.at[3])?;
        Ok(lists)
    }

    /// The position lists without their pages checked: check each list read with
    /// [`EntryView::check_list`] first (a query that reads a few lists checks a few pages).
    pub fn lists_unchecked(&self) -> DecodeResult<Lists<'a>> {
        if self.header.layout != Layout::Inverted {
            corrupt!("a forward entry has no position lists");
        }
        Lists::parse(
            self.section(2),
            self.header.n_dict as usize,
            self.header.n_events,
        )
    }

    /// Check the pages holding `list`, one of `lists`'s.
    pub fn check_list(
        &self,
        lists: &Lists<'_>,
        list: &EfList<'_>,
        memo: &mut PageMemo,
    ) -> DecodeResult<()> {
        let at = self.at[2] + lists.lists_at;
        let (a, b) = (
            list.start_bit() / 8,
            (list.start_bit() + list.bits()).div_ceil(8),
        );
        self.check_pages_once(at + a, at + b, memo)
    }

    /// The time, action and domain of event `i`, decoding only what that needs from its
    /// block (whose pages are checked, once per `memo`).
    pub fn stamp_at(&self, i: usize, memo: &mut PageMemo) -> DecodeResult<Stamp> {
        let b = i / self.block_events();
        let (start, end) = self.block_bounds(b);
        self.check_pages_once(self.at[3] + start, self.at[3] + end, memo)?;
        let raw = &self.blocks()[start..end];
        block::stamp_at(
            raw,
            self.block_len(b),
            self.block_first_ts(b),
            i % self.block_events(),
        )
        .map_err(|e| e.context(format!("block {b}")))
    }

    /// Bytes spent on each part.
    pub fn sizes(&self) -> EntrySizes {
        let h = &self.header;
        let mut s = EntrySizes {
            time: h.time_len,
            action: h.action_len,
            domain: h.domain_len,
            dict: h.dict_len,
            ..EntrySizes::default()
        };
        match h.layout {
            Layout::Forward => s.item = h.pos_len,
            Layout::Inverted => s.index = h.pos_len,
        }
        let parts = s.total() as usize;
        let whole = self.body.len() + self.crcs.len() + self.header_len;
        s.meta = (whole - parts) as u32;
        s
    }

    /// Check everything: every page, every block decodes and agrees with the block index, time
    /// is sorted across blocks, the dictionary's rows are distinct, and every position has
    /// exactly one dictionary entry, each entry at least one position. Used by `verify`.
    pub fn validate(&self) -> DecodeResult<()> {
        self.check_pages(0, self.body.len())?;
        let rows = self.dict_rows()?;
        let mut sorted = rows.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            corrupt!("dictionary lists a catalog row twice");
        }
        let codes = self.codes()?;
        let mut used = vec![false; rows.len()];
        for &c in &codes {
            used[c as usize] = true;
        }
        if used.contains(&false) {
            corrupt!("dictionary holds items the sequence never uses");
        }
        let mut block = Block::default();
        let mut prev = i64::MIN;
        for b in 0..self.n_blocks() {
            self.decode_block(b, &mut block)?;
            if block.ts[0] < prev {
                corrupt!("block {b} starts before the previous block ends");
            }
            prev = block.ts[block.ts.len() - 1];
            if b + 1 < self.n_blocks() && self.block_first_ts(b + 1) < prev {
                corrupt!("block {} starts before block {b} ends", b + 1);
            }
        }
        if prev != self.header.last_ts {
            corrupt!("header's last time disagrees with the blocks");
        }
        if self.header.layout == Layout::Inverted {
            self.lists()?.validate()?;
        }
        Ok(())
    }
}

fn parse_header(r: &mut Reader<'_>) -> DecodeResult<EntryHeader> {
    let layout = match r.u8()? {
        0 => Layout::Forward,
        1 => Layout::Inverted,
        l => corrupt!("unknown entry layout {l}"),
    };
    let levels = r.u8()?;
    let mut v = [0u64; 12];
    for x in v.iter_mut() {
        *x = r.varint()?;
    }
    let [user, n_events, n_dict, block_events, first, span, semid_gen, dict_len, pos_len, time_len, action_len, domain_len] =
        v;
    let small = |x: u64, what: &str| -> DecodeResult<u32> {
        match u32::try_from(x) {
            Ok(x) => Ok(x),
            Err(_) => corrupt!("{what} {x} out of range"),
        }
    };
    let n_events = small(n_events, "event count")?;
    let n_dict = small(n_dict, "dictionary size")?;
    if n_events == 0 || n_dict == 0 || n_dict > n_events {
        corrupt!("{n_dict} dictionary entries for {n_events} events");
    }
    if !(16..=65_536).contains(&block_events) {
        corrupt!("block size {block_events} out of range");
    }
    let first_ts = unzigzag(first);
    let Some(last_ts) = first_ts.checked_add_unsigned(span) else {
        corrupt!("time span overflows");
    };
    if layout == Layout::Inverted && (levels == 0 || usize::from(levels) > crate::MAX_SEMID_LEVELS)
    {
        corrupt!("{levels} SemID levels");
    }
    Ok(EntryHeader {
        user,
        layout,
        levels,
        n_events,
        n_dict,
        block_events: block_events as u32,
        first_ts,
        last_ts,
        semid_gen,
        dict_len: small(dict_len, "dictionary length")?,
        pos_len: small(pos_len, "positions length")?,
        time_len: small(time_len, "time length")?,
        action_len: small(action_len, "action length")?,
        domain_len: small(domain_len, "domain length")?,
        header_crc: 0,
    })
}

/// Pages of an entry already checked by one reader.
#[derive(Debug, Default)]
pub struct PageMemo(Vec<u64>);

/// The position lists of an inverted entry: per dictionary entry (in SemID order), the
/// ascending positions where it occurs, found through the count table.
#[derive(Clone, Copy)]
pub struct Lists<'a> {
    table: &'a [u8],
    counts: &'a [u8],
    lists: &'a [u8],
    /// Where the lists start in the positions section.
    pub lists_at: usize,
    n_dict: usize,
    n_events: u64,
}

impl<'a> Lists<'a> {
    /// The positions section of an inverted entry of `n_dict` items and `n_events` events.
    pub fn parse(raw: &'a [u8], n_dict: usize, n_events: u32) -> DecodeResult<Self> {
        if n_dict == 0 || n_events == 0 || n_dict as u64 > u64::from(n_events) {
            corrupt!("{n_dict} position lists over {n_events} events");
        }
        let groups = n_dict.div_ceil(GROUP);
        let Some(table) = raw.get(..groups * GROUP_META) else {
            corrupt!("count table of {groups} rows does not fit");
        };
        let mut counts_len = 0usize;
        let mut prev = (0u32, 0u32);
        for g in 0..groups {
            let m = &table[g * GROUP_META..];
            let (before, bit, w, off) = (le_u32(m, 0), le_u32(m, 4), m[8], le_u32(m, 9));
            if w > 32 || off as usize != counts_len || (g > 0 && (before <= prev.0 || bit < prev.1))
            {
                corrupt!("count table row {g} is inconsistent");
            }
            if before >= n_events || (g == 0 && (before != 0 || bit != 0)) {
                corrupt!("count table row {g} starts at event {before}");
            }
            prev = (before, bit);
            counts_len += bitpacked_len((n_dict - g * GROUP).min(GROUP), w);
        }
        let rest = &raw[groups * GROUP_META..];
        if counts_len > rest.len() {
            corrupt!("counts need {counts_len} bytes, {} remain", rest.len());
        }
        let (counts, lists) = rest.split_at(counts_len);
        if prev.1 as usize > lists.len() * 8 {
            corrupt!("count table points beyond the lists");
        }
        Ok(Lists {
            table,
            counts,
            lists,
            lists_at: groups * GROUP_META + counts_len,
            n_dict,
            n_events: u64::from(n_events),
        })
    }

    /// Number of dictionary entries.
    pub fn len(&self) -> usize {
        self.n_dict
    }

    pub fn is_empty(&self) -> bool {
        self.n_dict == 0
    }

    fn meta(&self, g: usize) -> (u32, u32, u8, u32) {
        let m = &self.table[g * GROUP_META..];
        (le_u32(m, 0), le_u32(m, 4), m[8], le_u32(m, 9))
    }

    /// Occurrences of entry `e`.
    #[inline]
    pub fn count(&self, e: usize) -> usize {
        let (_, _, w, off) = self.meta(e / GROUP);
        crate::codec::bit_get(&self.counts[off as usize..], w, e % GROUP) as usize + 1
    }

    /// The positions of entry `e`.
    pub fn list(&self, e: usize) -> DecodeResult<EfList<'a>> {
        let g = e / GROUP;
        let (_, bit, _, _) = self.meta(g);
        let skipped: u64 = (g * GROUP..e)
            .map(|j| ef::size_bits(self.count(j) as u64, self.n_events))
            .sum();
        EfList::new(
            self.lists,
            bit as usize + skipped as usize,
            self.count(e),
            self.n_events,
        )
    }

    /// The lists of entries `range` in order, each found from the previous one's end.
    pub fn range(
        &self,
        range: std::ops::Range<usize>,
    ) -> impl Iterator<Item = DecodeResult<(usize, EfList<'a>)>> + '_ {
        let mut bit = None;
        range.map(move |e| {
            let at = match bit {
                Some(b) => b,
                None => self.list(e)?.start_bit(),
            };
            let c = self.count(e);
            let list = EfList::new(self.lists, at, c, self.n_events)?;
            bit = Some(at + ef::size_bits(c as u64, self.n_events) as usize);
            Ok((e, list))
        })
    }

    /// Every entry's positions, checking that the lists partition the positions and agree with
    /// the count table.
    pub fn decode_all(&self) -> DecodeResult<ByEntry> {
        let n = self.n_events as usize;
        let mut start = Vec::with_capacity(self.n_dict + 1);
        start.push(0u32);
        let mut pos = Vec::with_capacity(n);
        let mut seen = vec![0u64; n.div_ceil(64)];
        for item in self.range(0..self.n_dict) {
            let (e, list) = item?;
            if e % GROUP == 0 {
                let (before, at, _, _) = self.meta(e / GROUP);
                if before as usize != pos.len() || at as usize != list.start_bit() {
                    corrupt!("count table row {} disagrees with the lists", e / GROUP);
                }
            }
            let mut prev = None;
            for p in list.iter() {
                let last_word = seen.len() - 1;
                let word = &mut seen[(p as usize / 64).min(last_word)];
                let bit = 1u64 << (p % 64);
                if p as usize >= n || *word & bit != 0 || prev.is_some_and(|q| q >= p) {
                    corrupt!(
                        "position {p} of entry {e} is out of order, beyond {n}, or listed twice"
                    );
                }
                *word |= bit;
                prev = Some(p);
                pos.push(p);
            }
            if pos.len() - start[e] as usize != list.len() {
                corrupt!("list {e} holds fewer positions than its count");
            }
            start.push(pos.len() as u32);
        }
        if pos.len() != n {
            corrupt!("lists hold {} of {n} positions", pos.len());
        }
        Ok(ByEntry { start, pos })
    }

    /// Check the table against the lists, that the lists partition the positions, and that
    /// no byte follows the last list.
    pub fn validate(&self) -> DecodeResult<()> {
        self.decode_all()?;
        let bits: u64 = (0..self.n_dict)
            .map(|e| ef::size_bits(self.count(e) as u64, self.n_events))
            .sum();
        if bits.div_ceil(8) != self.lists.len() as u64 {
            corrupt!("lists take {bits} bits of {} bytes", self.lists.len());
        }
        for e in 0..self.n_dict {
            self.list(e)?.validate(self.n_events)?;
        }
        Ok(())
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

    pub(crate) fn semid_of(item: u64) -> Option<SemId> {
        (!item.is_multiple_of(5)).then(|| {
            SemId::new(&[(item % 3) as u16, (item % 7) as u16, (item % 16) as u16]).unwrap()
        })
    }

    /// Items resolve to catalog row `id * 3`.
    fn decode_all(v: &EntryView<'_>) -> Vec<Ev> {
        let rows = v.dict_rows().unwrap();
        let codes = v.codes().unwrap();
        let mut out = Vec::new();
        let mut b = Block::default();
        for i in 0..v.n_blocks() {
            v.decode_block(i, &mut b).unwrap();
            for j in 0..b.ts.len() {
                out.push(Ev {
                    ts: b.ts[j],
                    item: u64::from(rows[codes[i * v.block_events() + j] as usize] / 3),
                    action: b.action[j],
                    domain: b.domain[j],
                });
            }
        }
        out
    }

    fn events(n: usize, items: u64, seed: u64) -> Vec<Ev> {
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut t = (next() % 1_000_000) as i64;
        (0..n)
            .map(|_| {
                t += (next() % 5_000) as i64;
                Ev {
                    ts: t,
                    item: next() % items,
                    action: (next() % 3) as u8,
                    domain: u16::from(next() % 10 == 0),
                }
            })
            .collect()
    }

    fn check(evs: &[Ev], be: u32) -> Vec<u8> {
        let (bytes, sizes) =
            build_entry(42, evs, &params(be), |id| ((id * 3) as u32, semid_of(id)));
        assert_eq!(sizes.total(), bytes.len() as u64);
        let v = EntryView::parse(&bytes).unwrap();
        v.validate().unwrap();
        assert_eq!(v.sizes(), sizes);
        assert_eq!(v.header.user, 42);
        assert_eq!(decode_all(&v), evs);
        bytes
    }

    proptest! {
        #[test]
        fn forward_round_trip(n in 1usize..1500, items in 1u64..400, seed in any::<u64>(), be in 16u32..300) {
            check(&events(n, items, seed), be);
        }

        #[test]
        fn flipped_bytes_are_detected(n in 1usize..300, seed in any::<u64>(), pos in any::<usize>(), bit in 0u8..8) {
            let (mut bytes, _) = build_entry(1, &events(n, 50, seed), &params(64), |id| ((id * 3) as u32, semid_of(id)));
            let pos = pos % bytes.len();
            bytes[pos] ^= 1 << bit;
            let detected = match EntryView::parse(&bytes) { Err(_) => true, Ok(v) => v.validate().is_err() };
            prop_assert!(detected, "flip at {} of {} not detected", pos, bytes.len());
        }

        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut b = bytes.clone();
            if b.len() > 6 {
                b[..4].copy_from_slice(ENTRY_MAGIC);
                b[4..6].copy_from_slice(&ENTRY_VERSION.to_le_bytes());
            }
            if let Ok(v) = EntryView::parse_with(&b, false) {
                let _ = v.validate();
                let _ = v.codes();
                let _ = v.dict_rows();
            }
        }
    }

    #[test]
    fn inverted_round_trip_and_lists() {
        let evs = events(20_000, 3_000, 9);
        let bytes = check(&evs, 1024);
        let v = EntryView::parse(&bytes).unwrap();
        assert_eq!(v.header.layout, Layout::Inverted);
        let rows = v.dict_rows().unwrap();
        let lists = v.lists().unwrap();
        let layout = PrefixLayout::new(3, 16);
        let keys: Vec<u64> = rows
            .iter()
            .map(|&r| layout.order_key(semid_of(u64::from(r / 3))))
            .collect();
        assert!(
            keys.windows(2).all(|w| w[0] <= w[1]),
            "entries in SemID order"
        );
        for e in (0..rows.len()).step_by(97) {
            let item = u64::from(rows[e] / 3);
            let want: Vec<u32> = evs
                .iter()
                .enumerate()
                .filter(|(_, x)| x.item == item)
                .map(|(p, _)| p as u32)
                .collect();
            let list = lists.list(e).unwrap();
            assert_eq!(list.iter().collect::<Vec<_>>(), want);
            assert_eq!(lists.count(e), want.len());
        }
        // A flipped byte anywhere is found.
        for pos in (0..bytes.len()).step_by(bytes.len() / 200) {
            let mut b = bytes.clone();
            b[pos] ^= 4;
            let detected = match EntryView::parse(&b) {
                Err(_) => true,
                Ok(v) => v.validate().is_err(),
            };
            assert!(detected, "flip at {pos}");
        }
    }

    #[test]
    fn one_event_and_block_search() {
        let evs = [Ev {
            ts: -5,
            item: 5,
            action: 255,
            domain: u16::MAX,
        }];
        check(&evs, 16);
        let evs: Vec<Ev> = (0..1000u64)
            .map(|i| Ev {
                ts: (i / 10) as i64,
                item: i % 37,
                action: 0,
                domain: 0,
            })
            .collect();
        let bytes = check(&evs, 64);
        let v = EntryView::parse(&bytes).unwrap();
        // Block b starts at event 64 b, time 6.4 b.
        assert_eq!(v.first_block_reaching(0), 0);
        assert_eq!(v.first_block_reaching(13), 2);
        assert_eq!(v.first_block_reaching(1_000), v.n_blocks() - 1);
    }
}
