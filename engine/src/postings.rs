//! A user's items in SemID order with the positions where each occurs, in memory: what hard and
//! soft retrieval (and the per-prefix counts the ESU asks for) run on once a user is hot. Built
//! from an entry of any layout or version, with the catalog's current SemIDs, so it is never stale.
//!
//! - Entries (distinct items) are ordered by their full SemID key, then catalog row, items without
//!   a SemID last: the items sharing a prefix are a contiguous range of entries.
//! - Per entry, its positions ascending (count, first and newest position, and rank queries under
//!   `as_of` are slice operations).
//! - Per SemID depth `d`, per distinct depth-`d` prefix, the ascending positions of every item
//!   with that prefix: the `k` newest behaviours sharing at least `d` codes with a target, and
//!   how many there are before any `as_of`, are a binary search away.
//! - The code (entry) of every position, so that a hit's depth is known in O(1).

use std::ops::Range;

use crate::catalog::Catalog;
use crate::prefix::PrefixLayout;
use crate::types::SemId;

/// Positions grouped by a key: group `g` holds `pos[start[g]..start[g + 1]]`, ascending.
#[derive(Debug, Default, Clone)]
pub struct Groups {
    start: Vec<u32>,
    pos: Vec<u32>,
}

impl Groups {
    /// Group every position `p` with a group (`group_of(p) < groups`) by a counting sort.
    fn build(n_groups: usize, positions: usize, group_of: impl Fn(usize) -> u32) -> Groups {
        let mut start = vec![0u32; n_groups + 1];
        for p in 0..positions {
            let g = group_of(p);
            if (g as usize) < n_groups {
                start[g as usize + 1] += 1;
            }
        }
        for g in 1..start.len() {
            start[g] += start[g - 1];
        }
        let mut fill = start.clone();
        let mut pos = vec![0u32; start[n_groups] as usize];
        for p in 0..positions {
            let g = group_of(p) as usize;
            if g < n_groups {
                pos[fill[g] as usize] = p as u32;
                fill[g] += 1;
            }
        }
        Groups { start, pos }
    }

    /// Group `g`'s positions, ascending.
    #[inline]
    pub fn get(&self, g: usize) -> &[u32] {
        &self.pos[self.start[g] as usize..self.start[g + 1] as usize]
    }

    fn bytes(&self) -> usize {
        (self.start.len() + self.pos.len()) * 4
    }
}

/// The depth-`d` prefixes of a user's items.
#[derive(Debug, Default, Clone)]
struct Depth {
    /// Distinct depth-`d` prefix keys, ascending.
    keys: Vec<u64>,
    /// Entries of prefix `g`: `bounds[g]..bounds[g + 1]`.
    bounds: Vec<u32>,
    groups: Groups,
}

#[derive(Debug, Default, Clone)]
pub struct Postings {
    /// Catalog row of each entry.
    pub rows: Vec<u32>,
    /// Item id of each entry (a row's id never changes).
    pub ids: Vec<u64>,
    /// Full SemID key of each entry (`u64::MAX`: no SemID).
    keys: Vec<u64>,
    /// Positions of each entry.
    entries: Groups,
    /// Entry of each position (empty when built without it).
    pub codes: Vec<u32>,
    /// Per depth `1..=levels` (index `d - 1`); empty when built without them.
    depths: Vec<Depth>,
    /// Entries in catalog-row order: a pass over the items' catalog rows (their embeddings)
    /// in this order reads the catalog's arrays front to back.
    pub by_row: Vec<u32>,
}

/// Positions grouped by dictionary entry (in the dictionary's own order).
pub struct ByEntry {
    pub start: Vec<u32>,
    pub pos: Vec<u32>,
}

impl ByEntry {
    /// From the dictionary code of every position.
    pub fn from_codes(codes: &[u32], n_dict: usize) -> ByEntry {
        let g = Groups::build(n_dict, codes.len(), |p| codes[p]);
        ByEntry {
            start: g.start,
            pos: g.pos,
        }
    }
}

impl Postings {
    /// Build from the dictionary's rows and the positions of each of its entries (both in the
    /// dictionary's order, which may be any). `full` adds the position codes and the per-depth
    /// prefix groups (what hard retrieval needs); without it, only rows and per-entry positions.
    pub fn build(
        dict_rows: &[u32],
        by_entry: ByEntry,
        n_events: usize,
        catalog: &Catalog,
        layout: &PrefixLayout,
        full: bool,
    ) -> Postings {
        let key_of = |row: u32| layout.order_key(catalog.semid(row));
        let mut order: Vec<u32> = (0..dict_rows.len() as u32).collect();
        order.sort_unstable_by_key(|&i| (key_of(dict_rows[i as usize]), dict_rows[i as usize]));
        let rows: Vec<u32> = order.iter().map(|&i| dict_rows[i as usize]).collect();
        let keys: Vec<u64> = rows.iter().map(|&r| key_of(r)).collect();
        let entries = if order.iter().enumerate().all(|(j, &i)| j as u32 == i) {
            Groups {
                start: by_entry.start,
                pos: by_entry.pos,
            }
        } else {
            let mut start = Vec::with_capacity(order.len() + 1);
            let mut pos = Vec::with_capacity(by_entry.pos.len());
            start.push(0);
            for &i in &order {
                let i = i as usize;
                pos.extend_from_slice(
                    &by_entry.pos[by_entry.start[i] as usize..by_entry.start[i + 1] as usize],
                );
                start.push(pos.len() as u32);
            }
            Groups { start, pos }
        };
        let mut by_row: Vec<u32> = (0..rows.len() as u32).collect();
        by_row.sort_unstable_by_key(|&e| rows[e as usize]);
        let ids = rows.iter().map(|&r| catalog.id(r)).collect();
        let mut p = Postings {
            rows,
            ids,
            keys,
            entries,
            codes: Vec::new(),
            depths: Vec::new(),
            by_row,
        };
        if full {
            p.codes = vec![0; n_events];
            for e in 0..p.rows.len() {
                for &q in p.entries.get(e) {
                    p.codes[q as usize] = e as u32;
                }
            }
            p.depths = (1..=usize::from(layout.levels))
                .map(|d| p.depth(layout, d))
                .collect();
        }
        p
    }

    /// The depth-`d` prefix groups.
    fn depth(&self, layout: &PrefixLayout, d: usize) -> Depth {
        let mut keys = Vec::new();
        let mut bounds = Vec::new();
        let mut group_of = vec![u32::MAX; self.rows.len()];
        for (e, &k) in self.keys.iter().enumerate() {
            if k == u64::MAX {
                break;
            }
            let pk = layout.truncate(k, d);
            if keys.last() != Some(&pk) {
                keys.push(pk);
                bounds.push(e as u32);
            }
            group_of[e] = keys.len() as u32 - 1;
        }
        let end = self.keys.partition_point(|&k| k != u64::MAX);
        bounds.push(end as u32);
        let groups = Groups::build(keys.len(), self.codes.len(), |p| {
            group_of[self.codes[p] as usize]
        });
        Depth {
            keys,
            bounds,
            groups,
        }
    }

    /// Positions of entry `e`, ascending.
    #[inline]
    pub fn positions(&self, e: usize) -> &[u32] {
        self.entries.get(e)
    }

    /// Whether entry `e` occurs in `[s0, s1)`.
    #[inline]
    pub fn occurs_in(&self, e: usize, s0: u32, s1: u32) -> bool {
        let p = self.positions(e);
        if p.first().is_none_or(|&f| f >= s1) {
            return false;
        }
        if s0 == 0 {
            return true;
        }
        let i = p.partition_point(|&x| x < s0);
        p.get(i).is_some_and(|&x| x < s1)
    }

    /// Hard retrieval: the `k` newest positions in `[s0, s1)` whose item shares the most SemID
    /// codes with `target`, deepest first, as (depth, position, entry). Needs `full`.
    pub fn hard(
        &self,
        layout: &PrefixLayout,
        target: &SemId,
        k: usize,
        s0: u32,
        s1: u32,
    ) -> Vec<(u8, u32, u32)> {
        let mut out = Vec::with_capacity(k);
        let mut deeper: Range<u32> = 0..0;
        for d in (1..=self.depths.len()).rev() {
            let depth = &self.depths[d - 1];
            let key = layout.key(target, d);
            let Ok(g) = depth.keys.binary_search(&key) else {
                continue;
            };
            let list = depth.groups.get(g);
            let end = list.partition_point(|&p| p < s1);
            for &p in list[..end].iter().rev() {
                if p < s0 {
                    break;
                }
                let e = self.codes[p as usize];
                if deeper.contains(&e) {
                    continue;
                }
                out.push((d as u8, p, e));
                if out.len() == k {
                    return out;
                }
            }
            deeper = depth.bounds[g]..depth.bounds[g + 1];
        }
        out
    }

    /// Approximate heap bytes, for the decoded cache's budget.
    pub fn bytes(&self) -> usize {
        (self.rows.len() * 24)
            + self.entries.bytes()
            + self.codes.len() * 4
            + self
                .depths
                .iter()
                .map(|d| d.keys.len() * 12 + d.groups.bytes())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::ItemRecord;

    fn catalog(semids: &[Option<[u16; 2]>]) -> Catalog {
        let mut c = Catalog::new(0);
        for (i, s) in semids.iter().enumerate() {
            c.put(
                100 + i as u64,
                &ItemRecord {
                    internal: i as u32,
                    category: 0,
                    semid: s.map(|s| SemId::new(&s).unwrap()),
                    semid_gen: 0,
                    embedding: None,
                    stub: false,
                },
            )
            .unwrap();
        }
        c
    }

    #[test]
    fn hard_is_deepest_then_newest() {
        let layout = PrefixLayout::new(2, 8);
        let cat = catalog(&[Some([1, 2]), Some([1, 3]), Some([2, 2]), None, Some([1, 2])]);
        // Positions 0..10: rows in this order.
        let codes_rows = [0u32, 1, 2, 3, 4, 0, 1, 2, 0, 1];
        let dict: Vec<u32> = (0..5).collect();
        let p = Postings::build(
            &dict,
            ByEntry::from_codes(&codes_rows, 5),
            10,
            &cat,
            &layout,
            true,
        );
        let t = SemId::new(&[1, 2]).unwrap();
        let got: Vec<(u8, u32)> = p
            .hard(&layout, &t, 10, 0, 10)
            .iter()
            .map(|&(d, q, _)| (d, q))
            .collect();
        assert_eq!(
            got,
            vec![(2, 8), (2, 5), (2, 4), (2, 0), (1, 9), (1, 6), (1, 1)]
        );
        let got: Vec<u32> = p.hard(&layout, &t, 3, 1, 8).iter().map(|h| h.1).collect();
        assert_eq!(got, vec![5, 4, 6]);
        assert_eq!(
            p.rows[p.rows.len() - 1],
            3,
            "items without a SemID come last"
        );
        assert!(p.occurs_in(p.codes[3] as usize, 2, 4));
        assert!(!p.occurs_in(p.codes[3] as usize, 4, 10));
    }
}
