//! One user's sequence as a reader sees it: the compacted entry (S) and the pending events (P)
//! merged into one sequence ordered by time, equal times in arrival order (S arrived before P),
//! with retention applied and bounded by `as_of`.
//!
//! Nothing is materialised: positions are translated between the merged sequence and S or P,
//! and S's blocks are decoded on demand and remembered for the life of the view.

use std::sync::Arc;

use crate::cache::{self, DecodedCache, Part, Value};
use crate::catalog::Catalog;
use crate::columns::DictView;
use crate::entry::{Block, Cols, EntryView, Ev};
use crate::error::{Error, Result};
use crate::segment::Segment;
use crate::state::{PendingEv, State, UserState};

/// What a user keeps (see [`crate::Options::max_events_per_user`] and `max_event_age_ms`).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_events: usize,
    pub max_age_ms: Option<i64>,
}

struct SegPart<'s> {
    segment: &'s Segment,
    record: usize,
    view: EntryView<'s>,
    dict: Option<DictView<'s>>,
    scratch: Vec<u8>,
    /// Blocks decoded for point reads, kept for the life of the view and shared through
    /// `cache` when given.
    blocks: Vec<Option<Arc<Block>>>,
    cache: Option<&'s DecodedCache>,
}

impl<'s> SegPart<'s> {
    fn new(
        segment: &'s Segment,
        record: usize,
        cache: Option<&'s DecodedCache>,
    ) -> Result<SegPart<'s>> {
        // The section checksums are computed once per entry while the cache remembers that
        // they matched (and on every open without a cache).
        cache::cached(
            cache,
            segment,
            record,
            Part::Checked,
            Value::into_checked,
            || {
                segment.entry(record)?;
                Ok(Value::Checked)
            },
        )?;
        let view = segment.entry_with(record, false)?;
        Ok(SegPart {
            segment,
            record,
            blocks: vec![None; view.n_blocks()],
            view,
            dict: None,
            scratch: Vec::new(),
            cache,
        })
    }

    /// Block `b` with every column decoded, through the shared cache.
    fn block(&mut self, b: usize) -> Result<&Block> {
        if self.blocks[b].is_none() {
            let (view, segment, record) = (self.view, self.segment, self.record);
            let scratch = &mut self.scratch;
            let part = Part::Block(b as u32);
            let blk = cache::cached(self.cache, segment, record, part, Value::into_block, || {
                let mut blk = Block::default();
                view.decode_block(b, Cols::ALL, &mut blk, scratch)
                    .map_err(|e| segment.corruption(record, e))?;
                Ok(Value::Block(Arc::new(blk)))
            })?;
            self.blocks[b] = Some(blk);
        }
        Ok(self.blocks[b].as_deref().expect("decoded above"))
    }

    fn dict(&mut self) -> Result<DictView<'s>> {
        if let Some(d) = self.dict {
            return Ok(d);
        }
        let d = self
            .view
            .dict()
            .map_err(|e| self.segment.corruption(self.record, e))?;
        self.dict = Some(d);
        Ok(d)
    }
}

pub struct UserView<'s> {
    pub user: u64,
    catalog: &'s Catalog,
    seg: Option<SegPart<'s>>,
    pending: &'s [PendingEv],
    /// Visible S positions `[s0, s1)` and P positions `[p0, p1)`; `(s0, p0)` is where retention
    /// starts the sequence, `(s1, p1)` where `as_of` ends it.
    pub s0: usize,
    pub s1: usize,
    pub p0: usize,
    pub p1: usize,
    /// The dictionary as catalog rows, once a point read needed it.
    rows: Option<Arc<[u32]>>,
}

impl<'s> UserView<'s> {
    /// The view of `user`, or `None` if the user has no events.
    /// `cache` shares decoded blocks and bitmaps between readers.
    pub fn open(
        state: &'s State,
        user: u64,
        retention: Retention,
        as_of: Option<i64>,
        cache: Option<&'s DecodedCache>,
    ) -> Result<Option<UserView<'s>>> {
        let Some(us) = state.users.get(&user) else {
            return Ok(None);
        };
        Self::of(us, &state.catalog, user, retention, as_of, cache).map(Some)
    }

    pub fn of(
        us: &'s UserState,
        catalog: &'s Catalog,
        user: u64,
        retention: Retention,
        as_of: Option<i64>,
        cache: Option<&'s DecodedCache>,
    ) -> Result<UserView<'s>> {
        let seg = match &us.entry {
            Some(e) => Some(SegPart::new(&e.segment, e.record, cache)?),
            None => None,
        };
        let mut v = UserView {
            user,
            catalog,
            seg,
            pending: &us.pending,
            s0: 0,
            s1: 0,
            p0: 0,
            p1: 0,
            rows: None,
        };
        let (ns, np) = (v.seg_len(), v.pending.len());
        if ns + np == 0 {
            return Ok(v);
        }
        // Retention: drop the oldest beyond the cap, and those too old relative to the newest.
        let (mut s0, mut p0) = v.split((ns + np).saturating_sub(retention.max_events))?;
        if let Some(age) = retention.max_age_ms {
            let newest = v.newest_ts();
            let cutoff = newest.saturating_sub(age);
            s0 = s0.max(v.seg_count_lt(cutoff)?);
            p0 = p0.max(v.pend_count_lt(cutoff));
        }
        let (s1, p1) = match as_of {
            Some(t) => (v.seg_count_lt(t)?, v.pend_count_lt(t)),
            None => (ns, np),
        };
        v.s0 = s0;
        v.p0 = p0;
        v.s1 = s1.max(s0);
        v.p1 = p1.max(p0);
        Ok(v)
    }

    pub fn seg_len(&self) -> usize {
        self.seg.as_ref().map_or(0, |s| s.view.n_events())
    }

    pub fn pending(&self) -> &'s [PendingEv] {
        self.pending
    }

    /// Number of visible events.
    pub fn len(&self) -> usize {
        (self.s1 - self.s0) + (self.p1 - self.p0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn newest_ts(&self) -> i64 {
        let s = self.seg.as_ref().map(|s| s.view.header.last_ts);
        let p = self.pending.last().map(|p| p.ev.ts);
        s.into_iter().chain(p).max().unwrap_or(i64::MIN)
    }

    fn err(&self, e: crate::error::DecodeError) -> Error {
        let s = self
            .seg
            .as_ref()
            .expect("segment errors come from a segment part");
        s.segment.corruption(s.record, e)
    }

    /// The entry (for the prefix index and its header).
    pub fn entry(&self) -> Option<(&'s Segment, usize, EntryView<'s>)> {
        self.seg.as_ref().map(|s| (s.segment, s.record, s.view))
    }

    /// Block `b`, every column decoded.
    fn seg_block(&mut self, b: usize) -> Result<&Block> {
        self.seg
            .as_mut()
            .expect("block of a user without an entry")
            .block(b)
    }

    /// The shared cache of decoded pieces, if this view uses one.
    pub fn cache(&self) -> Option<&'s DecodedCache> {
        self.seg.as_ref().and_then(|s| s.cache)
    }

    fn block_events(&self) -> usize {
        self.seg.as_ref().map_or(1, |s| s.view.block_events())
    }

    pub fn dict(&mut self) -> Result<DictView<'s>> {
        self.seg
            .as_mut()
            .expect("dictionary of a user without an entry")
            .dict()
    }

    pub fn seg_ts(&mut self, i: usize) -> Result<i64> {
        let be = self.block_events();
        Ok(self.seg_block(i / be)?.ts[i % be])
    }

    /// Number of S events with `ts < t`.
    pub fn seg_count_lt(&mut self, t: i64) -> Result<usize> {
        let Some(seg) = &self.seg else { return Ok(0) };
        let b = seg.view.first_block_reaching(t);
        if b == seg.view.n_blocks() {
            return Ok(seg.view.n_events());
        }
        let be = seg.view.block_events();
        let blk = self.seg_block(b)?;
        let ts = &blk.ts;
        Ok(b * be + ts.partition_point(|&x| x < t))
    }

    pub fn pend_count_lt(&self, t: i64) -> usize {
        self.pending.partition_point(|p| p.ev.ts < t)
    }

    /// How many of the first `m` merged events come from S and from P.
    pub fn split(&mut self, m: usize) -> Result<(usize, usize)> {
        let (ns, np) = (self.seg_len(), self.pending.len());
        debug_assert!(m <= ns + np);
        let last_s = match &self.seg {
            Some(seg) if np > 0 && ns > 0 => seg.view.header.last_ts,
            _ => return Ok((m.min(ns), m - m.min(ns))),
        };
        if self.pending[0].ev.ts >= last_s {
            // The usual case: pending events are newer, so the sequence is S then P.
            let i = m.min(ns);
            return Ok((i, m - i));
        }
        // Largest i such that S[i-1] is among the first m: its merged rank is
        // (i-1) + |{P with ts < S[i-1].ts}| (S comes first on equal times).
        let (mut lo, mut hi) = (m.saturating_sub(np), m.min(ns));
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            let t = self.seg_ts(mid - 1)?;
            if (mid - 1) + self.pend_count_lt(t) < m {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Ok((lo, m - lo))
    }

    /// Position in the retained sequence (0 = oldest kept) of S event `i` (`s0 <= i < s1`).
    pub fn seg_position(&mut self, i: usize) -> Result<usize> {
        if self.pending.is_empty() {
            return Ok(i - self.s0);
        }
        let t = self.seg_ts(i)?;
        Ok((i - self.s0) + self.pend_count_lt(t).saturating_sub(self.p0))
    }

    /// Position in the retained sequence of P event `j` (`p0 <= j < p1`).
    pub fn pending_position(&mut self, j: usize) -> Result<usize> {
        let t = self.pending[j].ev.ts;
        let le = match t.checked_add(1) {
            Some(t1) => self.seg_count_lt(t1)?,
            None => self.seg_len(),
        };
        Ok((j - self.p0) + le.saturating_sub(self.s0))
    }

    /// Item id of catalog row `row` taken from this user's dictionary.
    fn item_id(&self, row: u32) -> Result<u64> {
        if row >= self.catalog.len() {
            let e = crate::error::DecodeError::corrupt(format!(
                "dictionary names catalog row {row}, the catalog has {}",
                self.catalog.len()
            ));
            return Err(self.err(e));
        }
        Ok(self.catalog.id(row))
    }

    /// S event `i`, from its decoded block (kept for the view and in the decoded cache).
    pub fn seg_event(&mut self, i: usize) -> Result<Ev> {
        let be = self.block_events();
        let (b, o) = (i / be, i % be);
        // With the cache, the dictionary is decoded once for all readers; without it, decoding
        // every entry would cost more than looking up the few that point reads need.
        if self.rows.is_none() && self.cache().is_some() {
            self.rows = Some(self.dict_rows()?);
        }
        let blk = self.seg_block(b)?;
        let (ts, code, action, domain) = (blk.ts[o], blk.item[o], blk.action[o], blk.domain[o]);
        // decode_block checked the item codes against the dictionary's length.
        let row = match &self.rows {
            Some(rows) => rows[code as usize],
            None => self.dict()?.get(code as usize),
        };
        Ok(Ev {
            ts,
            item: self.item_id(row)?,
            action,
            domain,
        })
    }

    /// Dictionary indexes of the visible S events, in order.
    pub fn visible_seg_items(&mut self) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(self.s1 - self.s0);
        if self.s1 == self.s0 {
            return Ok(out);
        }
        let be = self.block_events();
        for b in self.s0 / be..=(self.s1 - 1) / be {
            let lo = self.s0.max(b * be) - b * be;
            let hi = self.s1.min((b + 1) * be) - b * be;
            out.extend_from_slice(&self.seg_block(b)?.item[lo..hi]);
        }
        Ok(out)
    }

    /// Catalog rows of the dictionary entries, checked to exist.
    ///
    /// Through the shared cache: the catalog only grows, so rows that existed when they were
    /// checked still exist.
    pub fn dict_rows(&mut self) -> Result<Arc<[u32]>> {
        let Some(seg) = &self.seg else {
            return Ok(Arc::from(Vec::new()));
        };
        let (cache, segment, record) = (seg.cache, seg.segment, seg.record);
        cache::cached(cache, segment, record, Part::Rows, Value::into_rows, || {
            let rows = self.dict()?.to_vec();
            if let Some(&bad) = rows.iter().find(|&&r| r >= self.catalog.len()) {
                self.item_id(bad)?;
            }
            Ok(Value::Rows(rows.into()))
        })
    }

    /// Whether the entry's prefix index still matches the catalog's SemIDs: no item of this
    /// user changed its SemID after the entry was written.
    pub fn index_is_fresh(&mut self) -> Result<bool> {
        let Some(seg) = &self.seg else {
            return Ok(true);
        };
        let gen = seg.view.header.semid_gen;
        if gen >= self.catalog.semid_gen() {
            return Ok(true);
        }
        let rows = self.dict_rows()?;
        Ok(rows
            .iter()
            .all(|&r| self.catalog.semid_changed_gen(r) <= gen))
    }

    /// The visible events with `ts >= since`, at most the `last` most recent, oldest first.
    pub fn read(&mut self, since: Option<i64>, last: Option<usize>) -> Result<Vec<Ev>> {
        self.read_map(since, last, |e| e)
    }

    /// [`Self::read`], each event passed through `f` as it is decoded (so that callers build
    /// their own type in the same pass).
    pub fn read_map<T>(
        &mut self,
        since: Option<i64>,
        last: Option<usize>,
        f: impl Fn(Ev) -> T,
    ) -> Result<Vec<T>> {
        let (mut a_s, mut a_p) = (self.s0, self.p0);
        if let Some(t) = since {
            a_s = a_s.max(self.seg_count_lt(t)?.min(self.s1));
            a_p = a_p.max(self.pend_count_lt(t).min(self.p1));
        }
        if let Some(n) = last {
            let len = (self.s1 - a_s) + (self.p1 - a_p);
            if n < len {
                let (b_s, b_p) = self.split(self.s1 + self.p1 - n)?;
                a_s = a_s.max(b_s);
                a_p = a_p.max(b_p);
            }
        }
        let mut out = Vec::with_capacity((self.s1 - a_s) + (self.p1 - a_p));
        let pending = self.pending;
        let mut j = a_p;
        if a_s < self.s1 {
            let ids = self.dict_ids(self.s1 - a_s)?;
            let seg = self.seg.as_mut().expect("visible S events imply an entry");
            let be = seg.view.block_events();
            // One block buffer for the whole pass: a long read touches every block once, so
            // keeping them (as point lookups do) would only cost allocations.
            let mut blk = Block::default();
            for b in a_s / be..=(self.s1 - 1) / be {
                if let Err(e) = seg
                    .view
                    .decode_block(b, Cols::ALL, &mut blk, &mut seg.scratch)
                {
                    return Err(seg.segment.corruption(seg.record, e));
                }
                let lo = a_s.max(b * be) - b * be;
                let hi = self.s1.min((b + 1) * be) - b * be;
                let mut o = lo;
                while o < hi {
                    // Pending events go before the first S event with a later time.
                    while j < self.p1 && pending[j].ev.ts < blk.ts[o] {
                        out.push(f(pending[j].ev));
                        j += 1;
                    }
                    // Then a run of S events up to the next pending event, in one pass.
                    let run_end = match pending.get(j).filter(|_| j < self.p1) {
                        Some(p) => o + blk.ts[o..hi].partition_point(|&t| t <= p.ev.ts),
                        None => hi,
                    };
                    let run = o..run_end;
                    let bad = match &ids {
                        DictIds::Resolved(v) => push_run(&mut out, &blk, run, &f, |c| Ok(v[c])),
                        DictIds::Lazy(..) => push_run(&mut out, &blk, run, &f, |c| ids.get(c)),
                    };
                    if let Some(row) = bad {
                        let e = crate::error::DecodeError::corrupt(format!(
                            "dictionary names catalog row {row}, the catalog has {}",
                            self.catalog.len()
                        ));
                        return Err(seg.segment.corruption(seg.record, e));
                    }
                    o = run_end;
                }
            }
        }
        out.extend(pending[j..self.p1].iter().map(|p| f(p.ev)));
        Ok(out)
    }

    /// Item ids of the dictionary for a read of `events` events: resolved (and checked
    /// against the catalog) up front when that is fewer look-ups than resolving each event,
    /// else on demand.
    fn dict_ids(&mut self, events: usize) -> Result<DictIds<'s>> {
        let dict = self.dict()?;
        if dict.len() < events {
            let rows = self.dict_rows()?;
            Ok(DictIds::Resolved(
                rows.iter().map(|&r| self.catalog.id(r)).collect(),
            ))
        } else {
            Ok(DictIds::Lazy(dict, self.catalog))
        }
    }
}

/// Append events `run` of `blk` to `out` through `f`, items resolved by `id` (a dictionary
/// code to an item id, or the bad catalog row). Returns the first bad row. Generic over `id` so
/// that the common, pre-resolved case compiles to a plain loop.
#[inline(always)]
fn push_run<T>(
    out: &mut Vec<T>,
    blk: &Block,
    run: std::ops::Range<usize>,
    f: &impl Fn(Ev) -> T,
    id: impl Fn(usize) -> std::result::Result<u64, u32>,
) -> Option<u32> {
    let mut bad = None;
    out.extend(
        blk.ts[run.clone()]
            .iter()
            .zip(&blk.item[run.clone()])
            .zip(&blk.action[run.clone()])
            .zip(&blk.domain[run])
            .map(|(((&ts, &code), &action), &domain)| {
                // decode_block checked the codes against the dictionary's length.
                let item = id(code as usize).unwrap_or_else(|row| {
                    bad = Some(row);
                    0
                });
                f(Ev {
                    ts,
                    item,
                    action,
                    domain,
                })
            }),
    );
    bad
}

/// A user's dictionary entries as item ids (see [`UserView::dict_ids`]).
enum DictIds<'s> {
    Resolved(Vec<u64>),
    Lazy(DictView<'s>, &'s Catalog),
}

impl DictIds<'_> {
    /// The item id of entry `i`, or the catalog row it names when that row does not exist.
    #[inline]
    fn get(&self, i: usize) -> std::result::Result<u64, u32> {
        match self {
            DictIds::Resolved(ids) => Ok(ids[i]),
            DictIds::Lazy(d, c) => {
                let row = d.get(i);
                if row < c.len() {
                    Ok(c.id(row))
                } else {
                    Err(row)
                }
            }
        }
    }
}
