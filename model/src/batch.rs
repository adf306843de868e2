//! Vocabularies sized from the training data, and batches of tensors.
//!
//! Every id (item, category, user, SemID prefix) maps to a dense index; index 0 is the shared
//! row for ids the training data never showed (and for padding, which masks hide).

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use siren_engine::SemId;

use crate::features::{simtier_bin, ItemTable, SampleSet, SeqKind, Token, NO_ROW};

/// Buckets of the time since a behaviour: `floor(log2(1 + seconds))`, capped.
pub const GAP_BUCKETS: usize = 32;
/// Similarity buckets over [-1, 1] of width 0.1 (21 of them, the last holding exactly 1.0),
/// plus bucket 0 for "unknown".
pub const SIM_BUCKETS: usize = 22;
pub use crate::features::SIMTIER_BINS;

/// Raw id to dense index; 0 is unknown.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Vocab {
    /// Raw ids in index order (index i + 1).
    pub ids: Vec<u64>,
    #[serde(skip)]
    map: foldhash::HashMap<u64, u32>,
}

impl Vocab {
    fn add(&mut self, id: u64) {
        if !self.map.contains_key(&id) {
            self.ids.push(id);
            self.map.insert(id, self.ids.len() as u32);
        }
    }

    pub fn get(&self, id: u64) -> u32 {
        self.map.get(&id).copied().unwrap_or(0)
    }

    /// Rows of the embedding table (unknown included).
    pub fn size(&self) -> usize {
        self.ids.len() + 1
    }

    fn rebuild(&mut self) {
        self.map = self
            .ids
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, i as u32 + 1))
            .collect();
    }
}

/// Key of the first `level` codes of a SemID, unique across levels.
pub fn prefix_key(s: &SemId, level: usize) -> u64 {
    let mut k = level as u64;
    for &c in &s.codes()[..level] {
        k = k * 65_537 + u64::from(c) + 1;
    }
    k
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Vocabs {
    pub item: Vocab,
    pub category: Vocab,
    pub user: Vocab,
    /// One per SemID level: level-1 prefixes, levels 1-2, ...
    pub prefix: Vec<Vocab>,
    /// Domains of the training impressions, most frequent first (index 1 is the head domain).
    #[serde(default)]
    pub domain: Vocab,
}

impl Vocabs {
    /// The head domain: the most frequent in training (0 when there were none).
    pub fn head_domain(&self) -> u16 {
        self.domain.ids.first().map_or(0, |&d| d as u16)
    }

    /// Row of a domain in the domain tables. A domain the training data never showed is
    /// scored as the head domain (row 1): the model has no tower of its own for it, and the
    /// head domain's is the best trained.
    pub fn domain_row(&self, domain: u16) -> u32 {
        match self.domain.get(u64::from(domain)) {
            0 => u32::from(self.domain.size() > 1),
            r => r,
        }
    }

    /// Restore the lookup maps after deserialising.
    pub fn rebuild(&mut self) {
        self.domain.rebuild();
        self.item.rebuild();
        self.category.rebuild();
        self.user.rebuild();
        for p in &mut self.prefix {
            p.rebuild();
        }
    }

    pub fn levels(&self) -> usize {
        self.prefix.len()
    }
}

/// Builds [`Vocabs`] from the training samples, seen in one block or several (a streamed
/// dataset): their users, targets and every behaviour in their sequences, rows in the order
/// ids were first seen in. An id seen fewer than `min_count` times (a user: in fewer than
/// `min_count` impressions) gets no row of its own and shares row 0 with the ids training never
/// showed: a row trained on one or two samples can only memorise them, and row 0 is then
/// trained on rare ids, which is what an unseen id at scoring time is.
pub struct VocabCounter {
    c: Counts,
    levels: usize,
}

impl VocabCounter {
    pub fn new(levels: usize) -> VocabCounter {
        VocabCounter {
            c: Counts::new(levels),
            levels,
        }
    }

    /// Count the users, targets and behaviours of `set`.
    pub fn add(&mut self, set: &SampleSet, items: &ItemTable) {
        let levels = self.levels;
        let count_row = |c: &mut Counts, row: u32| {
            if row == NO_ROW {
                return;
            }
            let r = row as usize;
            *c.item.entry(items.ids[r]).or_default() += 1;
            *c.category.entry(u64::from(items.category[r])).or_default() += 1;
            if let Some(s) = &items.semid[r] {
                for l in 1..=levels.min(s.levels()) {
                    *c.prefix[l - 1].entry(prefix_key(s, l)).or_default() += 1;
                }
            }
        };
        for (i, imp) in set.impressions.iter().enumerate() {
            *self.c.user.entry(imp.user).or_default() += 1;
            count_row(&mut self.c, set.target_row[i]);
        }
        for (_, _, toks) in &set.seqs {
            for t in toks {
                count_row(&mut self.c, t.row);
            }
        }
    }

    /// The vocabularies, with the domains of the training impressions `domains`.
    pub fn finish(self, domains: impl IntoIterator<Item = u16>, min_count: usize) -> Vocabs {
        let c = &self.c;
        let mut v = Vocabs {
            item: c.item.vocab(min_count),
            category: c.category.vocab(min_count),
            user: c.user.vocab(min_count),
            prefix: c.prefix.iter().map(|p| p.vocab(min_count)).collect(),
            ..Vocabs::default()
        };
        for d in domains_by_frequency(domains) {
            v.domain.add(u64::from(d));
        }
        v
    }
}

/// Occurrences of ids in first-seen order, per table.
struct Counts {
    item: Counted,
    category: Counted,
    user: Counted,
    prefix: Vec<Counted>,
}

impl Counts {
    fn new(levels: usize) -> Counts {
        Counts {
            item: Counted::default(),
            category: Counted::default(),
            user: Counted::default(),
            prefix: (0..levels).map(|_| Counted::default()).collect(),
        }
    }
}

/// Ids with their counts, remembering the order they were first seen in (the vocabulary's row
/// order, so that it does not depend on hashing).
#[derive(Default)]
struct Counted {
    order: Vec<u64>,
    count: HashMap<u64, usize>,
}

impl Counted {
    fn entry(&mut self, id: u64) -> std::collections::hash_map::Entry<'_, u64, usize> {
        if !self.count.contains_key(&id) {
            self.order.push(id);
        }
        self.count.entry(id)
    }

    fn vocab(&self, min_count: usize) -> Vocab {
        let mut v = Vocab::default();
        for id in &self.order {
            if self.count[id] >= min_count {
                v.add(*id);
            }
        }
        v
    }
}

/// The distinct domains, most frequent first (ties by number): the first is the head domain.
pub fn domains_by_frequency(domains: impl IntoIterator<Item = u16>) -> Vec<u16> {
    let mut count: HashMap<u16, usize> = HashMap::new();
    for d in domains {
        *count.entry(d).or_default() += 1;
    }
    let mut order: Vec<(u16, usize)> = count.into_iter().collect();
    order.sort_by_key(|&(d, n)| (std::cmp::Reverse(n), d));
    order.into_iter().map(|(d, _)| d).collect()
}

/// Dense indexes of every catalog row, computed once per (vocabs, item table).
pub struct RowIndex {
    pub item: Vec<u32>,
    pub category: Vec<u32>,
    /// `levels` per row.
    pub prefix: Vec<u32>,
    pub levels: usize,
}

impl RowIndex {
    pub fn new(v: &Vocabs, items: &ItemTable) -> RowIndex {
        let rows = items.len();
        let levels = v.levels();
        let mut prefix = vec![0u32; rows * levels];
        for (r, s) in items.semid[..rows].iter().enumerate() {
            if let Some(s) = s {
                for l in 1..=levels.min(s.levels()) {
                    prefix[r * levels + l - 1] = v.prefix[l - 1].get(prefix_key(s, l));
                }
            }
        }
        RowIndex {
            item: items.ids[..rows].iter().map(|&id| v.item.get(id)).collect(),
            category: items.category[..rows]
                .iter()
                .map(|&c| v.category.get(u64::from(c)))
                .collect(),
            prefix,
            levels,
        }
    }
}

pub fn gap_bucket(age_s: u32) -> u32 {
    (32 - (age_s.saturating_add(1)).leading_zeros()).min(GAP_BUCKETS as u32 - 1)
}

pub fn sim_bucket(sim: f32) -> u32 {
    if sim.is_nan() {
        0
    } else {
        1 + (((sim.clamp(-1.0, 1.0) + 1.0) / 0.1).floor() as u32).min(20)
    }
}

/// One sequence of a batch.
pub struct SeqBatch {
    pub kind: SeqKind,
    /// `[B, T]` u32 indexes.
    pub item: Tensor,
    pub category: Tensor,
    pub action: Tensor,
    pub gap: Tensor,
    pub sim_bucket: Tensor,
    pub depth: Tensor,
    /// `[B, T, L]` u32.
    pub prefix: Tensor,
    /// `[B, T]` f32 cosine with the target (0 where unknown).
    pub sim: Tensor,
    /// `[B, T]` f32, 1 for real behaviours.
    pub mask: Tensor,
    /// `[B, SIMTIER_BINS]` f32: log(1 + count) of the sequence's cosines per 0.1-wide bin.
    pub simtier: Tensor,
}

pub struct Batch {
    pub size: usize,
    /// `[B]` f32.
    pub label: Tensor,
    /// `[B]` u32.
    pub user: Tensor,
    /// `[B]` u32 rows of [`Vocabs::domain_row`].
    pub domain: Tensor,
    pub item: Tensor,
    pub category: Tensor,
    /// `[B, L]` u32.
    pub prefix: Tensor,
    /// `[B, E]` f32 unit-length multimodal embedding (zeros when unknown).
    pub emb: Tensor,
    pub seqs: Vec<SeqBatch>,
    /// `[B, E]` evidence features, when the samples carry them.
    pub evidence: Option<Tensor>,
    /// `[B, ITEM_LABEL_FEATURES]` click statistics of the target, when the samples carry them.
    pub item_labels: Option<Tensor>,
}

impl Batch {
    pub fn seq(&self, kind: SeqKind) -> Option<&SeqBatch> {
        self.seqs.iter().find(|s| s.kind == kind)
    }
}

/// Assemble samples `idx` of `set` into tensors, with the sequences `kinds` only.
pub fn make_batch(
    set: &SampleSet,
    idx: &[usize],
    v: &Vocabs,
    rows: &RowIndex,
    items: &ItemTable,
    kinds: &[SeqKind],
    dev: &Device,
) -> candle_core::Result<Batch> {
    let b = idx.len();
    let l = rows.levels;
    let dim = items.dim;
    let row_or = |r: u32, t: &[u32]| if r == NO_ROW { 0 } else { t[r as usize] };
    let mut label = Vec::with_capacity(b);
    let mut user = Vec::with_capacity(b);
    let mut domain = Vec::with_capacity(b);
    let mut item = Vec::with_capacity(b);
    let mut category = Vec::with_capacity(b);
    let mut prefix = Vec::with_capacity(b * l);
    let mut emb = Vec::with_capacity(b * dim);
    for &i in idx {
        let imp = &set.impressions[i];
        let r = set.target_row[i];
        label.push(imp.label);
        user.push(v.user.get(imp.user));
        domain.push(v.domain_row(imp.domain));
        item.push(row_or(r, &rows.item));
        category.push(row_or(r, &rows.category));
        for lv in 0..l {
            prefix.push(if r == NO_ROW {
                0
            } else {
                rows.prefix[r as usize * l + lv]
            });
        }
        if r == NO_ROW {
            emb.extend(std::iter::repeat_n(0.0, dim));
        } else {
            emb.extend_from_slice(items.embedding(r));
        }
    }
    let mut seqs = Vec::new();
    for (kind, t, _) in set.seqs.iter().filter(|(k, _, _)| kinds.contains(k)) {
        let t = *t;
        let n = b * t;
        let (mut it, mut ca, mut ac, mut ga, mut sb, mut de, mut si, mut ma) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut pr = Vec::with_capacity(n * l);
        let mut tier = vec![0f32; b * SIMTIER_BINS];
        for (bi, &i) in idx.iter().enumerate() {
            let toks: &[Token] = set.seq(*kind, i).expect("kind listed in the set");
            for tok in toks {
                // Padding is the only token with age 0: real ones are at least a second old.
                let real = tok.age_s > 0;
                it.push(row_or(tok.row, &rows.item));
                ca.push(row_or(tok.row, &rows.category));
                ac.push(u32::from(tok.action));
                ga.push(if real { gap_bucket(tok.age_s) } else { 0 });
                sb.push(sim_bucket(tok.sim));
                de.push(u32::from(tok.depth));
                si.push(if tok.sim.is_nan() { 0.0 } else { tok.sim });
                ma.push(if real { 1.0f32 } else { 0.0 });
                for lv in 0..l {
                    pr.push(if tok.row == NO_ROW {
                        0
                    } else {
                        rows.prefix[tok.row as usize * l + lv]
                    });
                }
                if real && !tok.sim.is_nan() {
                    tier[bi * SIMTIER_BINS + simtier_bin(tok.sim)] += 1.0;
                }
            }
        }
        for x in &mut tier {
            *x = x.ln_1p();
        }
        let u = |v: Vec<u32>| Tensor::from_vec(v, (b, t), dev);
        seqs.push(SeqBatch {
            kind: *kind,
            item: u(it)?,
            category: u(ca)?,
            action: u(ac)?,
            gap: u(ga)?,
            sim_bucket: u(sb)?,
            depth: u(de)?,
            prefix: Tensor::from_vec(pr, (b, t, l), dev)?,
            sim: Tensor::from_vec(si, (b, t), dev)?,
            mask: Tensor::from_vec(ma, (b, t), dev)?,
            simtier: Tensor::from_vec(tier, (b, SIMTIER_BINS), dev)?,
        });
    }
    Ok(Batch {
        size: b,
        label: Tensor::from_vec(label, b, dev)?,
        user: Tensor::from_vec(user, b, dev)?,
        domain: Tensor::from_vec(domain, b, dev)?,
        item: Tensor::from_vec(item, b, dev)?,
        category: Tensor::from_vec(category, b, dev)?,
        prefix: Tensor::from_vec(prefix, (b, l), dev)?,
        emb: Tensor::from_vec(emb, (b, dim), dev)?,
        seqs,
        evidence: rows_of(&set.evidence, set.len(), idx, dev)?,
        item_labels: rows_of(&set.item_labels, set.len(), idx, dev)?,
    })
}

/// Rows `idx` of a per-sample matrix stored flat for `n` samples (`None` when it is empty).
fn rows_of(
    flat: &[f32],
    n: usize,
    idx: &[usize],
    dev: &Device,
) -> candle_core::Result<Option<Tensor>> {
    if flat.is_empty() {
        return Ok(None);
    }
    let e = flat.len() / n;
    let mut v = Vec::with_capacity(idx.len() * e);
    for &i in idx {
        v.extend_from_slice(&flat[i * e..(i + 1) * e]);
    }
    Tensor::from_vec(v, (idx.len(), e), dev).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(gap_bucket(0), 1);
        assert_eq!(gap_bucket(1), 2);
        assert_eq!(gap_bucket(u32::MAX), GAP_BUCKETS as u32 - 1);
        assert_eq!(sim_bucket(f32::NAN), 0);
        assert_eq!(sim_bucket(-1.0), 1);
        assert_eq!(sim_bucket(1.0), 21);
        assert_eq!(sim_bucket(0.05), 11);
        let s = SemId::new(&[3, 4, 5]).unwrap();
        assert_ne!(
            prefix_key(&s, 1),
            prefix_key(&SemId::new(&[3, 9, 9]).unwrap(), 2)
        );
        assert_eq!(
            prefix_key(&s, 2),
            prefix_key(&SemId::new(&[3, 4, 9]).unwrap(), 2)
        );
    }

    /// Ids seen fewer than `min_count` times share row 0 with unseen ids; the rest keep rows in
    /// the order they were first seen.
    #[test]
    fn rare_ids_fold_into_the_unknown_row() {
        let mut c = Counted::default();
        for id in [5u64, 9, 5, 7, 9, 5] {
            *c.entry(id).or_default() += 1;
        }
        let all = c.vocab(1);
        assert_eq!((all.get(5), all.get(9), all.get(7)), (1, 2, 3));
        let v = c.vocab(2);
        assert_eq!(
            (v.get(5), v.get(9), v.get(7), v.get(1), v.size()),
            (1, 2, 0, 0, 3)
        );
        assert_eq!(c.vocab(4).size(), 1);
    }

    #[test]
    fn vocab_unknown_is_zero_and_survives_serde() {
        let mut v = Vocab::default();
        v.add(42);
        v.add(7);
        v.add(42);
        assert_eq!((v.get(42), v.get(7), v.get(1), v.size()), (1, 2, 0, 3));
        let mut back: Vocab = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
        back.rebuild();
        assert_eq!((back.get(42), back.get(7), back.get(1)), (1, 2, 0));
    }
}
