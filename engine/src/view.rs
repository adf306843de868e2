//! One user's sequence as a reader sees it: the compacted entry (S) and the pending events (P)
//! merged into one sequence ordered by time, equal times in arrival order (S arrived before P),
//! with retention applied and bounded by `as_of`.
//!
//! Nothing is materialised: positions are translated between the merged sequence and S or P,
//! and S's blocks are decoded on demand and remembered for the life of the view.

use std::sync::Arc;

use crate::block::Block;
use crate::block::Stamp;
use crate::cache::{self, DecodedCache, Part, Value};
use crate::catalog::Catalog;
use crate::decoded::{self, Decoded, Embeddings};
use crate::entry::{Ev, PageMemo};
use crate::entry_v1::{self, Cols};
use crate::error::{DecodeError, Error, Result};
use crate::postings::Postings;
use crate::prefix::PrefixLayout;
use crate::segment::{Entry, Segment};
use crate::state::{Pending, State, UserState};

/// A user's postings: the decoded cache's, or built for one view.
pub enum PostingsRef {
    Shared(Arc<Decoded>),
    Owned(Box<Postings>),
}

impl std::ops::Deref for PostingsRef {
    type Target = Postings;

    fn deref(&self) -> &Postings {
        match self {
            PostingsRef::Shared(d) => &d.postings,
            PostingsRef::Owned(p) => p,
        }
    }
}

/// What a user keeps (see [`crate::Options::max_events_per_user`] and `max_event_age_ms`).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_events: usize,
    pub max_age_ms: Option<i64>,
}

/// The settings a view needs besides the user's state.
#[derive(Clone, Copy)]
pub struct ViewConfig<'s> {
    pub catalog: &'s Catalog,
    pub layout: PrefixLayout,
    pub retention: Retention,
    /// The shared cache of decoded entries; `None` decodes what each view needs itself.
    pub cache: Option<&'s DecodedCache>,
}

struct SegPart<'s> {
    segment: &'s Segment,
    record: usize,
    entry: Entry<'s>,
    cache: Option<&'s DecodedCache>,
    /// Through the cache: the whole entry, decoded once for every reader.
    hot: Option<Arc<Decoded>>,
    /// Without it: the blocks this view decoded (time, action, domain) ...
    blocks: Vec<Option<Block>>,
    /// ... and the dictionary rows and item codes, once a read needed them, and the pages
    /// whose checksums it checked.
    rows: Option<Arc<[u32]>>,
    codes: Option<Arc<[u32]>>,
    pages: PageMemo,
}

impl<'s> SegPart<'s> {
    fn new(
        segment: &'s Segment,
        record: usize,
        cache: Option<&'s DecodedCache>,
    ) -> Result<SegPart<'s>> {
        // With the cache, the section checksums are checked when the entry is decoded whole;
        // without it, here.
        let entry = segment.entry_with(record, cache.is_none())?;
        Ok(SegPart {
            segment,
            record,
            blocks: Vec::new(),
            entry,
            cache,
            hot: None,
            rows: None,
            codes: None,
            pages: PageMemo::default(),
        })
    }

    fn err(&self, e: DecodeError) -> Error {
        self.segment.corruption(self.record, e)
    }

    /// The whole entry decoded, through the cache (`None` without one).
    fn hot(&mut self, catalog: &Catalog, layout: &PrefixLayout) -> Result<Option<&Decoded>> {
        if self.hot.is_none() {
            let Some(c) = self.cache else { return Ok(None) };
            let (segment, record) = (self.segment, self.record);
            let part = Part::Decoded {
                semid_gen: catalog.semid_gen(),
            };
            let d = cache::cached(Some(c), segment, record, part, Value::into_decoded, || {
                // Checked whole here: the view parsed it without its section checksums.
                let entry = segment.entry_with(record, true)?;
                decoded::decode(&entry, catalog, layout, true)
                    .map(|d| Value::Decoded(Arc::new(d)))
                    .map_err(|e| segment.corruption(record, e))
            })?;
            self.hot = Some(d);
        }
        Ok(self.hot.as_deref())
    }

    /// Block `b` (time, action, domain), decoded by this view.
    fn block(&mut self, b: usize) -> Result<&Block> {
        if self.blocks.is_empty() {
            self.blocks = vec![None; n_blocks(&self.entry)];
        }
        if self.blocks[b].is_none() {
            let mut blk = Block::default();
            let r = match &self.entry {
                Entry::V2(v) => v.decode_block(b, &mut blk),
                Entry::V1(v) => {
                    let mut old = entry_v1::Block::default();
                    let cols = Cols {
                        item: false,
                        ..Cols::ALL
                    };
                    v.decode_block(b, cols, &mut old, &mut Vec::new())
                        .map(|()| {
                            blk.ts = old.ts;
                            blk.action = old.action;
                            blk.domain = old.domain;
                        })
                }
            };
            r.map_err(|e| self.err(e))?;
            self.blocks[b] = Some(blk);
        }
        Ok(self.blocks[b].as_ref().expect("decoded above"))
    }

    /// The dictionary's catalog rows, in its own order.
    fn rows(&mut self) -> Result<Arc<[u32]>> {
        if self.rows.is_none() {
            let rows = match &self.entry {
                Entry::V2(v) => v.dict_rows(),
                Entry::V1(v) => v.dict().map(|d| d.to_vec()),
            };
            self.rows = Some(rows.map_err(|e| self.err(e))?.into());
        }
        Ok(self.rows.clone().expect("read above"))
    }

    /// The dictionary code of every event.
    fn codes(&mut self) -> Result<Arc<[u32]>> {
        if self.codes.is_none() {
            let codes = match &self.entry {
                Entry::V2(v) => v.codes(),
                Entry::V1(v) => {
                    let mut b = entry_v1::Block::default();
                    let mut scratch = Vec::new();
                    let mut codes = Vec::with_capacity(v.n_events());
                    (0..v.n_blocks())
                        .try_for_each(|i| {
                            v.decode_block(i, Cols::ITEM, &mut b, &mut scratch)?;
                            codes.extend_from_slice(&b.item);
                            Ok(())
                        })
                        .map(|()| codes)
                }
            };
            self.codes = Some(codes.map_err(|e| self.err(e))?.into());
        }
        Ok(self.codes.clone().expect("read above"))
    }
}

fn n_blocks(entry: &Entry<'_>) -> usize {
    match entry {
        Entry::V1(v) => v.n_blocks(),
        Entry::V2(v) => v.n_blocks(),
    }
}

fn block_events(entry: &Entry<'_>) -> usize {
    match entry {
        Entry::V1(v) => v.block_events(),
        Entry::V2(v) => v.block_events(),
    }
}

pub struct UserView<'s> {
    pub user: u64,
    cfg: ViewConfig<'s>,
    seg: Option<SegPart<'s>>,
    pending: &'s Pending,
    /// Visible S positions `[s0, s1)` and P positions `[p0, p1)`; `(s0, p0)` is where retention
    /// starts the sequence, `(s1, p1)` where `as_of` ends it.
    pub s0: usize,
    pub s1: usize,
    pub p0: usize,
    pub p1: usize,
}

impl<'s> UserView<'s> {
    /// The view of `user`, or `None` if the user has no events.
    pub fn open(
        state: &'s State,
        user: u64,
        cfg: ViewConfig<'s>,
        as_of: Option<i64>,
    ) -> Result<Option<UserView<'s>>> {
        let Some(us) = state.users.get(&user) else {
            return Ok(None);
        };
        Self::of(us, user, cfg, as_of).map(Some)
    }

    pub fn of(
        us: &'s UserState,
        user: u64,
        cfg: ViewConfig<'s>,
        as_of: Option<i64>,
    ) -> Result<UserView<'s>> {
        let seg = match &us.entry {
            Some(e) => Some(SegPart::new(&e.segment, e.record, cfg.cache)?),
            None => None,
        };
        let mut v = UserView {
            user,
            cfg,
            seg,
            pending: &us.pending,
            s0: 0,
            s1: 0,
            p0: 0,
            p1: 0,
        };
        let (ns, np) = (v.seg_len(), v.pending.len());
        if ns + np == 0 {
            return Ok(v);
        }
        let retention = cfg.retention;
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

    pub fn catalog(&self) -> &'s Catalog {
        self.cfg.catalog
    }

    pub fn seg_len(&self) -> usize {
        self.seg.as_ref().map_or(0, |s| s.entry.n_events())
    }

    pub fn pending(&self) -> &'s Pending {
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
        let s = self.seg.as_ref().map(|s| s.entry.last_ts());
        let p = self.pending.last().map(|p| p.ev.ts);
        s.into_iter().chain(p).max().unwrap_or(i64::MIN)
    }

    fn seg(&mut self) -> &mut SegPart<'s> {
        self.seg.as_mut().expect("compacted events imply an entry")
    }

    /// The entry, where its bytes are read in place (the cold paths).
    pub fn entry(&self) -> Option<(&'s Segment, usize, Entry<'s>)> {
        self.seg.as_ref().map(|s| (s.segment, s.record, s.entry))
    }

    /// The entry decoded whole, when the view has the shared cache.
    pub fn hot(&mut self) -> Result<Option<&Decoded>> {
        let (catalog, layout) = (self.cfg.catalog, self.cfg.layout);
        match &mut self.seg {
            Some(s) => s.hot(catalog, &layout),
            None => Ok(None),
        }
    }

    /// The entry's postings: through the cache, or built for this view (`full` as in
    /// [`Postings::build`]).
    pub fn postings(&mut self, full: bool) -> Result<PostingsRef> {
        let (catalog, layout) = (self.cfg.catalog, self.cfg.layout);
        let seg = self.seg();
        if seg.cache.is_some() {
            seg.hot(catalog, &layout)?;
            let d = seg.hot.clone().expect("a cache gives a decoded entry");
            return Ok(PostingsRef::Shared(d));
        }
        let (segment, record, entry) = (seg.segment, seg.record, seg.entry);
        let built = decoded::decode_postings(&entry, catalog, &layout, full)
            .map_err(|e| segment.corruption(record, e))?;
        Ok(PostingsRef::Owned(Box::new(built)))
    }

    /// The embeddings of the items of `postings` (this entry's), gathered from the catalog:
    /// through the cache, or for this view.
    pub fn embeddings(&mut self, postings: &Postings) -> Result<Arc<Embeddings>> {
        let catalog = self.cfg.catalog;
        let seg = self.seg();
        let gather = || {
            Ok(Value::Embeddings(Arc::new(Embeddings::gather(
                postings, catalog,
            ))))
        };
        match seg.cache {
            Some(c) => {
                let part = Part::Embeddings {
                    semid_gen: catalog.semid_gen(),
                    emb_gen: catalog.emb_gen(),
                };
                cache::cached(
                    Some(c),
                    seg.segment,
                    seg.record,
                    part,
                    Value::into_embeddings,
                    gather,
                )
            }
            None => Ok(Arc::new(Embeddings::gather(postings, catalog))),
        }
    }

    pub fn seg_ts(&mut self, i: usize) -> Result<i64> {
        let (catalog, layout) = (self.cfg.catalog, self.cfg.layout);
        let seg = self.seg();
        if let Some(d) = seg.hot(catalog, &layout)? {
            return Ok(d.cols.events[i].ts);
        }
        let be = block_events(&seg.entry);
        Ok(seg.block(i / be)?.ts[i % be])
    }

    /// Number of S events with `ts < t`.
    pub fn seg_count_lt(&mut self, t: i64) -> Result<usize> {
        let (catalog, layout) = (self.cfg.catalog, self.cfg.layout);
        let Some(seg) = &mut self.seg else {
            return Ok(0);
        };
        if let Some(d) = seg.hot(catalog, &layout)? {
            return Ok(d.cols.events.partition_point(|x| x.ts < t));
        }
        let b = match &seg.entry {
            Entry::V1(v) => v.first_block_reaching(t),
            Entry::V2(v) => v.first_block_reaching(t),
        };
        if b == n_blocks(&seg.entry) {
            return Ok(seg.entry.n_events());
        }
        let be = block_events(&seg.entry);
        Ok(b * be + seg.block(b)?.ts.partition_point(|&x| x < t))
    }

    pub fn pend_count_lt(&self, t: i64) -> usize {
        self.pending.count_lt(t)
    }

    /// How many of the first `m` merged events come from S and from P.
    pub fn split(&mut self, m: usize) -> Result<(usize, usize)> {
        let (ns, np) = (self.seg_len(), self.pending.len());
        debug_assert!(m <= ns + np);
        let last_s = match &self.seg {
            Some(seg) if np > 0 && ns > 0 => seg.entry.last_ts(),
            _ => return Ok((m.min(ns), m - m.min(ns))),
        };
        if self.pending.get(0).ev.ts >= last_s {
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
        let t = self.pending.get(j).ev.ts;
        let le = match t.checked_add(1) {
            Some(t1) => self.seg_count_lt(t1)?,
            None => self.seg_len(),
        };
        Ok((j - self.p0) + le.saturating_sub(self.s0))
    }

    /// S event `i`, whose item is known (a retrieval found it in that item's position list).
    pub fn seg_event_of(&mut self, i: usize, item: u64) -> Result<Ev> {
        let (catalog, layout) = (self.cfg.catalog, self.cfg.layout);
        let seg = self.seg();
        if let Some(d) = seg.hot(catalog, &layout)? {
            let s = d.cols.events[i];
            return Ok(Ev {
                ts: s.ts,
                item,
                action: s.action,
                domain: s.domain,
            });
        }
        let s = match seg.entry {
            // One event of a block: only what it needs is decoded.
            Entry::V2(v) => v.stamp_at(i, &mut seg.pages).map_err(|e| seg.err(e))?,
            Entry::V1(_) => {
                let be = block_events(&seg.entry);
                let blk = seg.block(i / be)?;
                let o = i % be;
                Stamp {
                    ts: blk.ts[o],
                    action: blk.action[o],
                    domain: blk.domain[o],
                }
            }
        };
        Ok(Ev {
            ts: s.ts,
            item,
            action: s.action,
            domain: s.domain,
        })
    }

    /// Whether the entry's own SemID order still matches the catalog's SemIDs: no item of this
    /// user changed its SemID after the entry was written. (Postings are built with the
    /// current SemIDs and need no such check.)
    pub fn index_is_fresh(&mut self) -> Result<bool> {
        let catalog = self.cfg.catalog;
        let Some(seg) = &mut self.seg else {
            return Ok(true);
        };
        let gen = seg.entry.semid_gen();
        if gen >= catalog.semid_gen() {
            return Ok(true);
        }
        let rows = seg.rows()?;
        decoded::check_rows(&rows, catalog).map_err(|e| seg.err(e))?;
        Ok(rows.iter().all(|&r| catalog.semid_changed_gen(r) <= gen))
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
        let mut merge = Merge {
            pending: self.pending,
            j: a_p,
            p1: self.p1,
        };
        if a_s < self.s1 {
            let (catalog, layout, s1) = (self.cfg.catalog, self.cfg.layout, self.s1);
            let seg = self.seg();
            if let Some(d) = seg.hot(catalog, &layout)? {
                let run = a_s..s1;
                merge.push(
                    &mut out,
                    &Stamped {
                        events: &d.cols.events[run.clone()],
                        codes: &d.postings.codes[run],
                    },
                    &Ids::Direct(&d.postings.ids),
                    &f,
                );
            } else {
                read_cold(seg, catalog, a_s..s1, &mut merge, &mut out, &f)?;
            }
        }
        out.extend(merge.pending.range(merge.j..merge.p1).map(|p| f(p.ev)));
        Ok(out)
    }
}

/// Compacted events `range` of an entry read without the cache, block by block (one reused
/// block buffer: a long read touches every block once), merged with pending events.
fn read_cold<T>(
    seg: &mut SegPart<'_>,
    catalog: &Catalog,
    range: std::ops::Range<usize>,
    merge: &mut Merge<'_>,
    out: &mut Vec<T>,
    f: &impl Fn(Ev) -> T,
) -> Result<()> {
    let rows = seg.rows()?;
    decoded::check_rows(&rows, catalog).map_err(|e| seg.err(e))?;
    let codes = seg.codes()?;
    let ids = Ids::new(&rows, catalog, range.len());
    let be = block_events(&seg.entry);
    for b in range.start / be..=(range.end - 1) / be {
        let lo = range.start.max(b * be);
        let hi = range.end.min((b + 1) * be);
        let blk = seg.block(b)?;
        let (o, p) = (lo - b * be, hi - b * be);
        merge.push(
            out,
            &Run {
                ts: &blk.ts[o..p],
                codes: &codes[lo..hi],
                action: &blk.action[o..p],
                domain: &blk.domain[o..p],
            },
            &ids,
            f,
        );
        // Point reads keep blocks; a long read does not need them again.
        seg.blocks[b] = None;
    }
    Ok(())
}

/// Consecutive compacted events: their times, dictionary codes, actions and domains.
trait Events {
    fn len(&self) -> usize;
    fn ts(&self, i: usize) -> i64;
    fn code(&self, i: usize) -> u32;
    fn action(&self, i: usize) -> u8;
    fn domain(&self, i: usize) -> u16;
}

/// Events of a decoded block, column by column.
struct Run<'a> {
    ts: &'a [i64],
    codes: &'a [u32],
    action: &'a [u8],
    domain: &'a [u16],
}

impl Events for Run<'_> {
    fn len(&self) -> usize {
        self.ts.len()
    }
    #[inline(always)]
    fn ts(&self, i: usize) -> i64 {
        self.ts[i]
    }
    #[inline(always)]
    fn code(&self, i: usize) -> u32 {
        self.codes[i]
    }
    #[inline(always)]
    fn action(&self, i: usize) -> u8 {
        self.action[i]
    }
    #[inline(always)]
    fn domain(&self, i: usize) -> u16 {
        self.domain[i]
    }
}

/// Events of a decoded entry.
struct Stamped<'a> {
    events: &'a [Stamp],
    codes: &'a [u32],
}

impl Events for Stamped<'_> {
    fn len(&self) -> usize {
        self.events.len()
    }
    #[inline(always)]
    fn ts(&self, i: usize) -> i64 {
        self.events[i].ts
    }
    #[inline(always)]
    fn code(&self, i: usize) -> u32 {
        self.codes[i]
    }
    #[inline(always)]
    fn action(&self, i: usize) -> u8 {
        self.events[i].action
    }
    #[inline(always)]
    fn domain(&self, i: usize) -> u16 {
        self.events[i].domain
    }
}

/// Pending events `j..p1` still to merge into a read.
struct Merge<'s> {
    pending: &'s Pending,
    j: usize,
    p1: usize,
}

impl Merge<'_> {
    /// Append `run` to `out`, each pending event before the first compacted event with a later
    /// time, runs of compacted events between them in one pass.
    fn push<T>(
        &mut self,
        out: &mut Vec<T>,
        run: &impl Events,
        ids: &Ids<'_>,
        f: &impl Fn(Ev) -> T,
    ) {
        let n = run.len();
        let mut o = 0;
        while o < n {
            while self.j < self.p1 && self.pending.get(self.j).ev.ts < run.ts(o) {
                out.push(f(self.pending.get(self.j).ev));
                self.j += 1;
            }
            let end = match (self.j < self.p1).then(|| self.pending.get(self.j)) {
                Some(p) => {
                    let (mut lo, mut hi) = (o, n);
                    while lo < hi {
                        let mid = (lo + hi) / 2;
                        if run.ts(mid) <= p.ev.ts {
                            lo = mid + 1;
                        } else {
                            hi = mid;
                        }
                    }
                    lo
                }
                None => n,
            };
            match ids {
                Ids::Resolved(v) => push_run(out, run, o..end, f, |c| v[c]),
                Ids::Direct(v) => push_run(out, run, o..end, f, |c| v[c]),
                Ids::Lazy(rows, c) => push_run(out, run, o..end, f, |code| c.id(rows[code])),
            }
            o = end;
        }
    }
}

/// Append events `range` of `run` to `out` through `f`, items resolved by `id` (a dictionary
/// code to an item id). Generic over `id` so that the pre-resolved case is a plain loop.
#[inline(always)]
fn push_run<T>(
    out: &mut Vec<T>,
    run: &impl Events,
    range: std::ops::Range<usize>,
    f: &impl Fn(Ev) -> T,
    id: impl Fn(usize) -> u64,
) {
    out.extend(range.map(|i| {
        f(Ev {
            ts: run.ts(i),
            item: id(run.code(i) as usize),
            action: run.action(i),
            domain: run.domain(i),
        })
    }));
}

/// A user's dictionary entries as item ids: resolved up front when a read covers more events
/// than there are entries, else looked up per event. Rows were checked against the catalog.
enum Ids<'a> {
    Resolved(Vec<u64>),
    /// The postings' own ids, by postings entry.
    Direct(&'a [u64]),
    Lazy(&'a [u32], &'a Catalog),
}

impl<'a> Ids<'a> {
    fn new(rows: &'a [u32], catalog: &'a Catalog, events: usize) -> Ids<'a> {
        if rows.len() < events {
            Ids::Resolved(rows.iter().map(|&r| catalog.id(r)).collect())
        } else {
            Ids::Lazy(rows, catalog)
        }
    }
}
