//! The General Search Unit inside the storage engine: hard retrieval by SemID prefix (through the
//! prefix bitmaps) and soft retrieval by cosine of int8 embeddings, each for many targets
//! against one user with the per-user work done once.

use std::sync::Arc;

use roaring::RoaringBitmap;

use crate::cache::{self, DecodedCache, Part, Value};
use crate::catalog::{dot_i8_kernel, Catalog, QueryVec};
use crate::entry::Ev;
use crate::error::Result;
use crate::prefix::{IndexCache, PrefixIndex, PrefixLayout};
use crate::segment::Segment;
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

/// A candidate: from the compacted entry (S index) or the pending events (P index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    Seg(usize),
    Pend(usize),
}

fn event_of(view: &mut UserView<'_>, src: Src) -> Result<(Event, u32)> {
    let (ev, pos): (Ev, usize) = match src {
        Src::Seg(i) => (view.seg_event(i)?, view.seg_position(i)?),
        Src::Pend(j) => (view.pending().get(j).ev, view.pending_position(j)?),
    };
    Ok((
        Event {
            user: view.user,
            ts: ev.ts,
            item: ev.item,
            action: ev.action,
            domain: ev.domain,
        },
        pos as u32,
    ))
}

/// Rank `seg` and `pend` candidates (each already in its own best-first order and at most `k`
/// long) by `key` then recency, and build the hits.
fn finish<K: PartialOrd + Copy, H>(
    view: &mut UserView<'_>,
    seg: Vec<(K, usize)>,
    pend: Vec<(K, usize)>,
    k: usize,
    make: impl Fn(Event, u32, K) -> H,
) -> Result<Vec<H>> {
    let mut all = Vec::with_capacity(seg.len() + pend.len());
    for (key, i) in seg {
        let (e, p) = event_of(view, Src::Seg(i))?;
        all.push((key, p, e));
    }
    for (key, j) in pend {
        let (e, p) = event_of(view, Src::Pend(j))?;
        all.push((key, p, e));
    }
    all.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.1.cmp(&a.1))
    });
    all.truncate(k);
    Ok(all.into_iter().map(|(key, p, e)| make(e, p, key)).collect())
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

/// The bitmap of prefix `key` in the entry `record` of `segment`, through the shared cache
/// when there is one.
fn bitmap(
    shared: Option<&DecodedCache>,
    segment: &Segment,
    record: usize,
    idx: &PrefixIndex<'_>,
    key: u64,
    chunks: &mut IndexCache,
) -> Result<Option<Arc<RoaringBitmap>>> {
    let part = Part::Bitmap(key);
    cache::cached(shared, segment, record, part, Value::into_bitmap, || {
        idx.find(key, chunks)
            .map(|b| Value::Bitmap(b.map(Arc::new)))
            .map_err(|e| segment.corruption(record, e))
    })
}

/// Hard retrieval of `k` behaviours for each target.
pub fn hard(
    view: &mut UserView<'_>,
    catalog: &Catalog,
    layout: PrefixLayout,
    targets: &[SemId],
    k: usize,
) -> Result<Vec<Vec<HardHit>>> {
    let levels = usize::from(layout.levels);
    let depth_of = |row: Option<u32>, t: &SemId| -> u8 {
        row.and_then(|r| catalog.semid(r))
            .map_or(0, |s| s.common_prefix(t).min(levels) as u8)
    };
    let (s0, s1) = (view.s0, view.s1);
    let mut index = None;
    let mut stale_rows = None;
    if s1 > s0 {
        if view.index_is_fresh()? {
            let (segment, record, entry) = view.entry().expect("visible S events imply an entry");
            let idx = entry.index().map_err(|e| segment.corruption(record, e))?;
            index = Some((segment, record, idx));
        } else {
            // SemIDs changed since this entry was written: score from the catalog until the
            // next compaction rebuilds the index.
            let rows = view.dict_rows()?;
            let items = view.visible_seg_items()?;
            stale_rows = Some(
                items
                    .iter()
                    .map(|&i| rows[i as usize])
                    .collect::<Vec<u32>>(),
            );
        }
    }
    let mut cache = IndexCache::default();
    let shared = view.cache();
    let mut out = Vec::with_capacity(targets.len());
    for t in targets {
        let mut seg: Vec<(u8, usize)> = Vec::new();
        if let Some((segment, record, idx)) = &index {
            let mut deeper: Option<Arc<RoaringBitmap>> = None;
            'depths: for d in (1..=levels).rev() {
                let bm = bitmap(shared, segment, *record, idx, layout.key(t, d), &mut cache)?;
                if let Some(bm) = &bm {
                    let mut it = bm.iter();
                    // Skip positions at or after `as_of` without visiting them one by one.
                    if s1 > 0 {
                        it.advance_back_to(s1 as u32 - 1);
                    }
                    for p in it.rev() {
                        let p = p as usize;
                        if p < s0 {
                            break;
                        }
                        if p >= s1 || deeper.as_ref().is_some_and(|x| x.contains(p as u32)) {
                            continue;
                        }
                        seg.push((d as u8, p));
                        if seg.len() == k {
                            break 'depths;
                        }
                    }
                }
                deeper = bm;
            }
        } else if let Some(rows) = &stale_rows {
            for (o, &row) in rows.iter().enumerate() {
                let d = depth_of(Some(row), t);
                if d > 0 {
                    seg.push((d, s0 + o));
                }
            }
            best_first(&mut seg, k);
        }
        let mut pend: Vec<(u8, usize)> = Vec::new();
        for j in view.p0..view.p1 {
            let d = depth_of(catalog.lookup(view.pending().get(j).ev.item), t);
            if d > 0 {
                pend.push((d, j));
            }
        }
        best_first(&mut pend, k);
        out.push(finish(view, seg, pend, k, |event, position, depth| {
            HardHit {
                event,
                position,
                depth,
            }
        })?);
    }
    Ok(out)
}

/// Soft retrieval of `k` behaviours for each target.
///
/// Per user: the dictionary's catalog rows, the visible item column and per-item occurrence
/// counts. Per target: one cosine per distinct visible item with an embedding, then the best
/// items are expanded to their most recent positions.
pub fn soft(
    view: &mut UserView<'_>,
    catalog: &Catalog,
    targets: &[QueryVec],
    k: usize,
) -> Result<Vec<Vec<SoftHit>>> {
    let nt = targets.len();
    let mut seg_cands: Vec<Vec<(f32, usize)>> = vec![Vec::new(); nt];
    let (s0, s1) = (view.s0, view.s1);
    if s1 > s0 {
        let rows = view.dict_rows()?;
        let items = view.visible_seg_items()?;
        let nd = rows.len();
        let mut count = vec![0u32; nd];
        for &i in &items {
            count[i as usize] += 1;
        }
        // sims[e * nt + t]: each embedding is read once for all targets.
        let dot_i8 = dot_i8_kernel();
        let mut sims = vec![f32::NEG_INFINITY; nd * nt];
        for e in 0..nd {
            if count[e] == 0 {
                continue;
            }
            if let Some((emb, inv)) = catalog.embedding(rows[e]) {
                for (t, q) in targets.iter().enumerate() {
                    sims[e * nt + t] = dot_i8(&q.q, emb) as f32 * q.inv_norm * inv;
                }
            }
        }
        // Per target: the best entries whose occurrences cover k positions (plus ties).
        let mut wanted = vec![0u32; nd];
        let mut chosen: Vec<Vec<u32>> = Vec::with_capacity(nt);
        for t in 0..nt {
            let sim = |e: u32| sims[e as usize * nt + t];
            let mut cand: Vec<u32> = (0..nd as u32)
                .filter(|&e| sim(e) > f32::NEG_INFINITY)
                .collect();
            if cand.len() > k {
                cand.select_nth_unstable_by(k - 1, |&a, &b| sim(b).total_cmp(&sim(a)));
                let bound = sim(cand[k - 1]);
                let (head, tail) = cand.split_at(k);
                let ties: Vec<u32> = tail.iter().copied().filter(|&e| sim(e) == bound).collect();
                cand = head.iter().copied().chain(ties).collect();
            }
            cand.sort_by(|&a, &b| sim(b).total_cmp(&sim(a)));
            // Keep entries until k occurrences are covered, and everything tied with the last.
            let mut covered = 0usize;
            let mut keep = cand.len();
            for (i, &e) in cand.iter().enumerate() {
                if covered >= k && sim(e) != sim(cand[i - 1]) {
                    keep = i;
                    break;
                }
                covered += count[e as usize] as usize;
            }
            cand.truncate(keep);
            for &e in &cand {
                wanted[e as usize] = wanted[e as usize].max(count[e as usize].min(k as u32));
            }
            chosen.push(cand);
        }
        // Most recent positions of every wanted entry, in one backward pass.
        let mut slot = vec![u32::MAX; nd];
        let mut lists: Vec<Vec<usize>> = Vec::new();
        let mut remaining: u64 = 0;
        for e in 0..nd {
            if wanted[e] > 0 {
                slot[e] = lists.len() as u32;
                lists.push(Vec::with_capacity(wanted[e] as usize));
                remaining += u64::from(wanted[e]);
            }
        }
        for (o, &e) in items.iter().enumerate().rev() {
            if remaining == 0 {
                break;
            }
            let s = slot[e as usize];
            if s != u32::MAX && (lists[s as usize].len() as u32) < wanted[e as usize] {
                lists[s as usize].push(s0 + o);
                remaining -= 1;
            }
        }
        for (t, cand) in chosen.iter().enumerate() {
            let c = &mut seg_cands[t];
            for &e in cand {
                let s = sims[e as usize * nt + t];
                c.extend(lists[slot[e as usize] as usize].iter().map(|&p| (s, p)));
            }
            best_first(c, k);
        }
    }
    // Pending events: each distinct item scored once per target.
    let mut pend_sims: std::collections::HashMap<u64, Option<u32>> = Default::default();
    let mut out = Vec::with_capacity(nt);
    for (t, q) in targets.iter().enumerate() {
        let mut pend: Vec<(f32, usize)> = Vec::new();
        for j in view.p0..view.p1 {
            let item = view.pending().get(j).ev.item;
            let row = *pend_sims
                .entry(item)
                .or_insert_with(|| catalog.lookup(item));
            if let Some(s) = row.and_then(|r| catalog.cosine(q, r)) {
                pend.push((s, j));
            }
        }
        best_first(&mut pend, k);
        let seg = std::mem::take(&mut seg_cands[t]);
        out.push(finish(
            view,
            seg,
            pend,
            k,
            |event, position, similarity| SoftHit {
                event,
                position,
                similarity,
            },
        )?);
    }
    Ok(out)
}
