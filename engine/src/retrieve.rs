//! The General Search Unit inside the storage engine: hard retrieval by SemID prefix and soft
//! retrieval by cosine of int8 embeddings, each for many targets against one user with the
//! per-user work done once.
//!
//! Both run on a user's [`Postings`] (its items in SemID order with their positions), which the
//! decoded cache keeps for hot users. Without the cache, hard retrieval on a long history reads
//! the position lists of the target's SemID range in place (the inverted layout of format
//! version 2); everything else builds the postings it needs.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;

use crate::catalog::{kernel, Catalog, QueryVec};
use crate::decoded::Embeddings;
use crate::dot::{score, Queries};
use crate::entry::{EntryView, Layout, PageMemo};
use crate::error::{corrupt, DecodeResult, Result};
use crate::postings::Postings;
use crate::prefix::PrefixLayout;
use crate::segment::Entry;
use crate::types::{Event, SemId};
use crate::view::UserView;

/// A behaviour found by hard retrieval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HardHit {
    pub event: Event,
    /// Index in the user's retained sequence (0 = oldest kept).
    pub position: u32,
    /// Number of leading SemID codes the behaviour's item shares with the target (>= 1).
    pub depth: u8,
}

/// A behaviour found by soft retrieval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SoftHit {
    pub event: Event,
    /// Index in the user's retained sequence (0 = oldest kept).
    pub position: u32,
    /// Cosine between the target's and the item's (int8-quantised) embeddings.
    pub similarity: f32,
}

/// A candidate from the compacted entry: (key, S index, its item's id).
type SegCand<K> = (K, usize, u64);

/// Rank compacted (`seg`) and pending (`pend`: key, P index) candidates, each already in its own
/// best-first order and at most `k` long, by `key` then recency, and build the hits.
fn finish<K: PartialOrd + Copy>(
    view: &mut UserView<'_>,
    seg: Vec<SegCand<K>>,
    pend: Vec<(K, usize)>,
    k: usize,
) -> Result<Vec<(Event, u32, K)>> {
    let user = view.user;
    let event = |ev: crate::entry::Ev| Event {
        user,
        ts: ev.ts,
        item: ev.item,
        action: ev.action,
        domain: ev.domain,
    };
    let merge = !pend.is_empty();
    let mut all = Vec::with_capacity(seg.len() + pend.len());
    for (key, i, item) in seg {
        let ev = view.seg_event_of(i, item)?;
        all.push((key, view.seg_position(i)? as u32, event(ev)));
    }
    for (key, j) in pend {
        let ev = view.pending().get(j).ev;
        all.push((key, view.pending_position(j)? as u32, event(ev)));
    }
    // Each list is already best first; only a merge needs sorting.
    if merge {
        all.sort_by(|a, b| {
            b.0.partial_cmp(&a.0)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(b.1.cmp(&a.1))
        });
    }
    all.truncate(k);
    Ok(all.into_iter().map(|(key, p, e)| (e, p, key)).collect())
}

/// Best-first order: higher key, then more recent (higher index).
fn best_first<K: PartialOrd>(v: &mut Vec<(K, usize)>, k: usize) {
    v.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.1.cmp(&a.1))
    });
    v.truncate(k);
}

/// Pending events scored by `score` (`None`: not a candidate), best first, at most `k`.
fn pending_candidates<K: PartialOrd>(
    view: &UserView<'_>,
    k: usize,
    mut score: impl FnMut(u64) -> Option<K>,
) -> Vec<(K, usize)> {
    let mut pend: Vec<(K, usize)> = (view.p0..view.p1)
        .filter_map(|j| score(view.pending().get(j).ev.item).map(|s| (s, j)))
        .collect();
    best_first(&mut pend, k);
    pend
}

/// Hard retrieval of `k` behaviours for each target.
pub fn hard(
    view: &mut UserView<'_>,
    layout: PrefixLayout,
    targets: &[SemId],
    k: usize,
) -> Result<Vec<Vec<HardHit>>> {
    let catalog = view.catalog();
    let levels = usize::from(layout.levels);
    let seg = if view.s1 > view.s0 {
        hard_seg(view, &layout, targets, k)?
    } else {
        vec![Vec::new(); targets.len()]
    };
    assemble(view, seg, k, |t, item| {
        let s = catalog.lookup(item).and_then(|r| catalog.semid(r))?;
        let d = s.common_prefix(&targets[t]).min(levels) as u8;
        (d > 0).then_some(d)
    })
    .map(|hits| {
        hits.into_iter()
            .map(|h| {
                h.into_iter()
                    .map(|(event, position, depth)| HardHit {
                        event,
                        position,
                        depth,
                    })
                    .collect()
            })
            .collect()
    })
}

/// Per target, the compacted candidates `seg[t]` merged with the pending events scored by
/// `score(t, item)` (`None`: not a candidate): (event, position, key), best first, at most `k`.
#[allow(clippy::type_complexity)]
fn assemble<K: PartialOrd + Copy>(
    view: &mut UserView<'_>,
    mut seg: Vec<Vec<SegCand<K>>>,
    k: usize,
    mut score: impl FnMut(usize, u64) -> Option<K>,
) -> Result<Vec<Vec<(Event, u32, K)>>> {
    let mut out = Vec::with_capacity(seg.len());
    for (t, s) in seg.iter_mut().enumerate() {
        let pend = pending_candidates(view, k, |item| score(t, item));
        out.push(finish(view, std::mem::take(s), pend, k)?);
    }
    Ok(out)
}

/// The compacted part of hard retrieval, per target: (depth, S index, row), deepest first.
fn hard_seg(
    view: &mut UserView<'_>,
    layout: &PrefixLayout,
    targets: &[SemId],
    k: usize,
) -> Result<Vec<Vec<SegCand<u8>>>> {
    let catalog = view.catalog();
    let (s0, s1) = (view.s0 as u32, view.s1 as u32);
    let cold = match view.entry() {
        Some((segment, record, Entry::V2(e)))
            if e.header.layout == Layout::Inverted && view.hot()?.is_none() =>
        {
            Some((segment, record, e))
        }
        _ => None,
    };
    if let Some((segment, record, entry)) = cold {
        if view.index_is_fresh()? {
            return targets
                .iter()
                .map(|t| hard_lists(&entry, catalog, layout, t, k, s0..s1))
                .collect::<DecodeResult<Vec<_>>>()
                .map_err(|e| segment.corruption(record, e));
        }
    }
    let p = view.postings(true)?;
    Ok(targets
        .iter()
        .map(|t| {
            p.hard(layout, t, k, s0, s1)
                .into_iter()
                .map(|(d, pos, e)| (d, pos as usize, p.ids[e as usize]))
                .collect()
        })
        .collect())
}

/// Hard retrieval on an inverted entry's position lists, read in place: per depth, the target's
/// SemID range of entries (binary search by the catalog's SemIDs, which the caller checked are
/// the ones the entry was ordered by), then the newest positions among those entries' lists,
/// excluding the deeper range already taken.
fn hard_lists(
    entry: &EntryView<'_>,
    catalog: &Catalog,
    layout: &PrefixLayout,
    target: &SemId,
    k: usize,
    window: Range<u32>,
) -> DecodeResult<Vec<SegCand<u8>>> {
    let lists = entry.lists_unchecked()?;
    let mut pages = PageMemo::default();
    let packed = entry.packed_rows()?;
    let n = lists.len();
    // Rows are read one at a time, each checked against the catalog before it is used.
    let row = |e: usize| -> DecodeResult<u32> {
        let r = packed.get(e);
        crate::decoded::check_rows(&[r], catalog)?;
        Ok(r)
    };
    let lower = |x: u64| -> DecodeResult<usize> {
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if layout.order_key(catalog.semid(row(mid)?)) < x {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    };
    let mut out = Vec::with_capacity(k);
    let mut deeper = 0..0;
    for d in (1..=usize::from(layout.levels)).rev() {
        let (lo, hi) = layout.key_range(target, d);
        let range = lower(lo)?..lower(hi)?;
        if range.is_empty() {
            continue;
        }
        let parts = if deeper.is_empty() {
            [range.clone(), 0..0]
        } else {
            [range.start..deeper.start, deeper.end..range.end]
        };
        let need = k - out.len();
        let mut best: BinaryHeap<Reverse<(u32, u32)>> = BinaryHeap::with_capacity(need + 1);
        for part in parts {
            for item in lists.range(part) {
                let (e, list) = item?;
                entry.check_list(&lists, &list, &mut pages)?;
                for p in list.below(u64::from(window.end)) {
                    if p >= window.end {
                        corrupt!("list {e} holds position {p}, beyond {}", window.end);
                    }
                    if p < window.start
                        || (best.len() == need && best.peek().is_some_and(|b| p <= b.0 .0))
                    {
                        break;
                    }
                    best.push(Reverse((p, e as u32)));
                    if best.len() > need {
                        best.pop();
                    }
                }
            }
        }
        let mut found: Vec<(u32, u32)> = best.into_iter().map(|Reverse(x)| x).collect();
        found.sort_unstable_by_key(|f| Reverse(f.0));
        for (p, e) in found {
            out.push((d as u8, p as usize, catalog.id(row(e as usize)?)));
        }
        if out.len() == k {
            break;
        }
        deeper = range;
    }
    Ok(out)
}

/// Soft retrieval of `k` behaviours for each target.
pub fn soft(view: &mut UserView<'_>, targets: &[QueryVec], k: usize) -> Result<Vec<Vec<SoftHit>>> {
    let catalog = view.catalog();
    let (s0, s1) = (view.s0 as u32, view.s1 as u32);
    let seg = if s1 > s0 {
        let p = view.postings(false)?;
        let emb = view.embeddings(&p)?;
        soft_postings(&p, &emb, targets, k, s0..s1)
    } else {
        vec![Vec::new(); targets.len()]
    };
    // Pending events: each distinct item looked up once.
    let mut rows: std::collections::HashMap<u64, Option<u32>> = Default::default();
    assemble(view, seg, k, |t, item| {
        let row = *rows.entry(item).or_insert_with(|| catalog.lookup(item));
        row.and_then(|r| catalog.cosine(&targets[t], r))
    })
    .map(|hits| {
        hits.into_iter()
            .map(|h| {
                h.into_iter()
                    .map(|(event, position, similarity)| SoftHit {
                        event,
                        position,
                        similarity,
                    })
                    .collect()
            })
            .collect()
    })
}

/// The compacted part of soft retrieval: each distinct item visible in `window` is scored once
/// per target (each embedding loaded once for all targets); per target, a threshold selection
/// keeps the items whose similarity reaches the `k`-th best, and only those are expanded to
/// their newest positions.
fn soft_postings(
    p: &Postings,
    emb: &Embeddings,
    targets: &[QueryVec],
    k: usize,
    window: Range<u32>,
) -> Vec<Vec<SegCand<f32>>> {
    let n = emb.entry.len();
    let k8 = kernel();
    // Visible: an occurrence in the window (with no retention cut, the first one below it).
    // Without a cut or an `as_of`, everything is.
    let all = window.start == 0 && emb.first.iter().all(|&f| f < window.end);
    let visible = |i: usize| {
        all || (emb.first[i] < window.end
            && (window.start == 0 || p.occurs_in(emb.entry[i] as usize, window.start, window.end)))
    };
    let mut best: Vec<TopK> = targets.iter().map(|_| TopK::new(k)).collect();
    if targets.len() >= 4 {
        // Many targets: each embedding meets all of them in one row of an int8 matrix product.
        let scales: Vec<f32> = targets.iter().map(|q| q.inv_norm).collect();
        let queries = Queries::new(
            targets.iter().map(|q| q.q.as_slice()),
            q_dim(targets),
            &scales,
        );
        // Per embedding, the kernel scores sixteen targets at a time and hands back only those
        // that reach their target's threshold (most, once the thresholds have risen).
        let mut thresholds = vec![f32::INFINITY; queries.padded_len()];
        thresholds[..targets.len()].fill(f32::NEG_INFINITY);
        let mut passed = Vec::with_capacity(targets.len());
        for i in 0..n {
            if !visible(i) {
                continue;
            }
            passed.clear();
            (k8.select)(
                emb.row(i),
                emb.inv_norm[i],
                &queries,
                &thresholds,
                &mut passed,
            );
            for &(t, s) in &passed {
                let top = &mut best[t as usize];
                top.push(s, i as u32);
                thresholds[t as usize] = top.threshold;
            }
        }
    } else {
        // One pass over the user's embeddings per target.
        let mut dots = vec![0i32; n];
        for (q, top) in targets.iter().zip(&mut best) {
            (k8.rows)(&emb.values, emb.dim, &q.q, &mut dots);
            for (i, (&d, &inv)) in dots.iter().zip(&emb.inv_norm).enumerate() {
                if visible(i) {
                    top.push(score(d, q.inv_norm, inv), i as u32);
                }
            }
        }
    }
    best.into_iter()
        .map(|top| expand(p, &top.finish(), &emb.entry, k, window.clone()))
        .collect()
}

fn q_dim(targets: &[QueryVec]) -> usize {
    targets.first().map_or(0, |q| q.q.len())
}

/// A streaming threshold selection of the items whose score is at least the `k`-th best: a
/// threshold rises as candidates come in, so most items are dismissed with one comparison.
/// Ties at the threshold are kept.
struct TopK {
    k: usize,
    cand: Vec<(f32, u32)>,
    threshold: f32,
    limit: usize,
}

impl TopK {
    fn new(k: usize) -> TopK {
        TopK {
            k,
            cand: Vec::with_capacity(2 * k + 1),
            threshold: f32::NEG_INFINITY,
            limit: 2 * k,
        }
    }

    #[inline]
    fn push(&mut self, score: f32, item: u32) {
        if score < self.threshold {
            return;
        }
        self.cand.push((score, item));
        if self.cand.len() >= self.limit {
            self.cut();
            // Do not select again until the list doubles (ties may keep it long).
            self.limit = (2 * self.cand.len()).max(2 * self.k);
        }
    }

    /// Keep the candidates at or above the `k`-th best.
    fn cut(&mut self) {
        if self.cand.len() > self.k {
            let k = self.k;
            self.cand
                .select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
            self.threshold = self.cand[k - 1].0;
            let th = self.threshold;
            self.cand.retain(|c| c.0 >= th);
        }
    }

    /// The kept candidates, best first.
    fn finish(mut self) -> Vec<(f32, u32)> {
        self.cut();
        self.cand.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        self.cand
    }
}

/// The `k` best positions of the chosen items (`best`: score and index into `entries`, by
/// descending score): items of equal score have their positions interleaved newest first.
fn expand(
    p: &Postings,
    best: &[(f32, u32)],
    entries: &[u32],
    k: usize,
    window: Range<u32>,
) -> Vec<SegCand<f32>> {
    let mut out: Vec<SegCand<f32>> = Vec::with_capacity(k);
    let mut i = 0;
    while i < best.len() && out.len() < k {
        let s = best[i].0;
        let group_end = i + best[i..].iter().take_while(|b| b.0 == s).count();
        let start = out.len();
        for &(_, b) in &best[i..group_end] {
            let e = entries[b as usize] as usize;
            let pos = p.positions(e);
            let end = pos.partition_point(|&x| x < window.end);
            let item = p.ids[e];
            out.extend(
                pos[..end]
                    .iter()
                    .rev()
                    .take_while(|&&x| x >= window.start)
                    .take(k)
                    .map(|&x| (s, x as usize, item)),
            );
        }
        if group_end - i > 1 {
            out[start..].sort_unstable_by_key(|c| Reverse(c.1));
        }
        out.truncate(k);
        i = group_end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The threshold selection keeps exactly the items at or above the k-th best score.
        #[test]
        fn top_items_is_a_threshold_top_k(scores in proptest::collection::vec(0u8..20, 0..300), k in 1usize..40) {
            let sims: Vec<f32> = scores.iter().map(|&s| f32::from(s)).collect();
            let sim = |i: usize| sims[i];
            let mut top = TopK::new(k);
            for (i, &s) in sims.iter().enumerate() {
                top.push(s, i as u32);
            }
            let got: Vec<usize> = top.finish().iter().map(|c| c.1 as usize).collect();
            let mut sorted: Vec<f32> = scores.iter().map(|&s| f32::from(s)).collect();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let want: Vec<usize> = match sorted.get(k - 1) {
                Some(&th) => (0..scores.len()).filter(|&i| sim(i) >= th).collect(),
                None => (0..scores.len()).collect(),
            };
            let mut g = got.clone();
            g.sort_unstable();
            prop_assert_eq!(g, want);
            prop_assert!(got.windows(2).all(|w| sim(w[0]) >= sim(w[1])));
        }
    }
}
