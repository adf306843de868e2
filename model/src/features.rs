//! Training and serving samples read from the engine.
//!
//! For each labelled impression `(user, item, ts, label)` the behaviour sequences come from the
//! engine with `as_of = ts`, through the same calls serving uses (`read` for the recent
//! behaviours, `retrieve_soft` / `retrieve_hard` for the General Search Unit), so no sample can
//! see an event at or after its own time. Item-side features (category, SemID, embedding) come
//! from an [`ItemTable`] built once from the catalog; each token keeps only what belongs to the
//! event (its item's row, action, age) and to the pair (cosine with the target, shared SemID
//! depth).

use foldhash::{HashMap, HashMapExt};
use serde::{Deserialize, Serialize};
use siren_engine::format::{dequantize, dot_i8, dot_queries, inv_norm_f64, quantize, Queries};
use siren_engine::{Event, Item, ItemRef, ReadRange, SemId, Snapshot};

use crate::data::Impression;
use crate::error::{ModelError, Result};

/// How the General Search Unit (GSU) finds the behaviours of a user's history that are relevant
/// to a target item. Training reads a sample's GSU sequence with the model's own retrieval;
/// serving may feed another one into the same slot (`siren-serve` decides).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub enum Retrieval {
    /// By cosine between multimodal embeddings (the engine's soft retrieval).
    Soft,
    /// By SemID prefix (the engine's hard retrieval through its prefix bitmaps).
    #[default]
    Hard,
    /// Behaviours with the target's category, newest first (SIM's hard search).
    Category,
}

/// Which behaviours a sequence holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SeqKind {
    /// The most recent behaviours, newest first.
    Recent,
    /// The behaviours a retrieval found for the target (the GSU sequence).
    Retrieved(Retrieval),
}

impl SeqKind {
    pub const ALL: [SeqKind; 4] = [
        SeqKind::Recent,
        SeqKind::Retrieved(Retrieval::Soft),
        SeqKind::Retrieved(Retrieval::Hard),
        SeqKind::Retrieved(Retrieval::Category),
    ];
}

/// The catalog as features need it: dense rows, L2-normalised f32 embeddings (the models'
/// input), and the int8 codes the catalog stores them as, from which every cosine of the
/// features is computed ([`ItemTable::cosine`]).
#[derive(Clone)]
pub struct ItemTable {
    pub ids: Vec<u64>,
    index: HashMap<u64, u32>,
    pub category: Vec<u32>,
    pub semid: Vec<Option<SemId>>,
    pub dim: usize,
    /// Unit-length values, `dim` per row that has them (zeros for an item without an
    /// embedding), in the order the rows were added: every row of a table built from a catalog
    /// or from items, only the rows added by [`Self::push_ref`] in one built with
    /// [`Self::push_codes_ref`] too. Read a row's with [`Self::embedding`].
    pub emb: Vec<f32>,
    /// Per row, where its values start in `emb` (in rows of `dim`), or [`NO_ROW`] for a row
    /// added without them.
    values_at: Vec<u32>,
    pub has_emb: Vec<bool>,
    /// Row-major int8 codes (zero rows for items without an embedding).
    codes: Vec<i8>,
    /// Per row, 1 / the norm of its codes (0 without an embedding).
    inv_norm: Vec<f64>,
}

/// The cosine of two embeddings from the exact dot product of their int8 codes and their
/// inverse norms. In f64, and the two norms multiplied first, so that it is symmetric and an
/// item's cosine with itself is exactly 1 (the similarity histogram's top bin holds exactly 1).
#[inline(always)]
fn cosine_of(dot: i32, inv_a: f64, inv_b: f64) -> f32 {
    (f64::from(dot) * (inv_a * inv_b)) as f32
}

/// Whether a row keeps its embedding's f32 values, and what a row without them needs to know.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Values {
    Keep,
    /// Codes only; `scale` is the codes' (`x ≈ q * scale`).
    Drop {
        scale: f32,
    },
}

/// Whether the dequantised values `q * scale` have a positive f32 norm, as the row with its
/// values computes it (the sum of their squares), without dequantising: the sum of
/// non-negative squares is positive exactly when its largest term is, and rounding is
/// monotone, so that term is the largest code's.
fn has_norm(q: &[i8], scale: f32) -> bool {
    let largest = q.iter().map(|&v| v.unsigned_abs()).max().unwrap_or(0);
    let v = f32::from(largest) * scale;
    v * v > 0.0
}

impl ItemTable {
    /// An empty table for embeddings of `dim` values.
    pub fn new(dim: usize) -> ItemTable {
        ItemTable {
            ids: Vec::new(),
            index: HashMap::new(),
            category: Vec::new(),
            semid: Vec::new(),
            dim,
            emb: Vec::new(),
            values_at: Vec::new(),
            has_emb: Vec::new(),
            codes: Vec::new(),
            inv_norm: Vec::new(),
        }
    }

    /// Every catalog item, from its stored codes.
    pub fn from_snapshot(snap: &Snapshot, dim: usize) -> ItemTable {
        let mut t = ItemTable::new(dim);
        for it in snap.item_refs() {
            t.push_ref(&it);
        }
        t
    }

    /// A table of just these items (the serving path builds one per request from the
    /// candidates and the behaviours retrieved for them). Repeated ids keep their first row.
    /// Embeddings are quantised as the catalog does ([`quantize`]), so an item read back from
    /// a catalog gets the codes the catalog holds.
    pub fn from_items(items: impl IntoIterator<Item = Item>, dim: usize) -> ItemTable {
        let mut t = ItemTable::new(dim);
        for it in items {
            let codes = it.embedding.as_deref().map(|e| quantize(e).1);
            let values = it.embedding.iter().flatten().copied();
            let emb = codes.as_deref().map(|q| (values, q));
            t.push_parts(it.id, it.category, it.semid, emb, Values::Keep);
        }
        t
    }

    /// Add a catalog item as stored (nothing when `id` has a row already); its row.
    pub fn push_ref(&mut self, it: &ItemRef<'_>) -> u32 {
        self.push_ref_with(it, true)
    }

    /// [`Self::push_ref`] without the embedding's f32 values: the row has its codes, its
    /// category and SemID (all that cosines, counts and tokens read), but not
    /// [`Self::embedding`]. Serving adds the behaviours of a request this way, as only its
    /// targets' values are read (the model's multimodal input, soft retrieval's query); a
    /// history of 10,000 distinct items then costs no dequantised copy.
    pub fn push_codes_ref(&mut self, it: &ItemRef<'_>) -> u32 {
        self.push_ref_with(it, false)
    }

    fn push_ref_with(&mut self, it: &ItemRef<'_>, keep_values: bool) -> u32 {
        let values = if keep_values {
            Values::Keep
        } else {
            // Without an embedding, the scale is never read.
            Values::Drop {
                scale: it.embedding.map_or(0.0, |(_, scale)| scale),
            }
        };
        let emb = it.embedding.map(|(q, scale)| (dequantize(q, scale), q));
        self.push_parts(it.id, it.category, it.semid, emb, values)
    }

    /// The row of catalog item `id`, added from `snap` with [`Self::push_ref`] when the table
    /// lacks it ([`NO_ROW`] when the catalog lacks it too).
    pub fn row_or_add(&mut self, snap: &Snapshot, id: u64) -> u32 {
        self.row_or_add_with(snap, id, true)
    }

    /// [`Self::row_or_add`] with [`Self::push_codes_ref`] (a row it adds has no values).
    pub fn row_or_add_codes(&mut self, snap: &Snapshot, id: u64) -> u32 {
        self.row_or_add_with(snap, id, false)
    }

    fn row_or_add_with(&mut self, snap: &Snapshot, id: u64, keep_values: bool) -> u32 {
        if let Some(row) = self.row(id) {
            return row;
        }
        snap.item_ref(id)
            .map_or(NO_ROW, |it| self.push_ref_with(&it, keep_values))
    }

    /// Add a row: its embedding's values and int8 codes, when it has one of `dim` values,
    /// and the values themselves when `keep_values`.
    fn push_parts(
        &mut self,
        id: u64,
        category: u32,
        semid: Option<SemId>,
        embedding: Option<(impl Iterator<Item = f32> + Clone, &[i8])>,
        values: Values,
    ) -> u32 {
        if let Some(&row) = self.index.get(&id) {
            return row;
        }
        let row = self.ids.len() as u32;
        self.index.insert(id, row);
        self.ids.push(id);
        self.category.push(category);
        self.semid.push(semid);
        let dim = self.dim;
        self.values_at.push(match values {
            Values::Keep => (self.emb.len() / dim.max(1)) as u32,
            Values::Drop { .. } => NO_ROW,
        });
        match embedding.filter(|(_, q)| q.len() == dim) {
            Some((e, q)) => {
                let has = match values {
                    Values::Keep => {
                        let n = e.clone().map(|x| x * x).sum::<f32>().sqrt();
                        let inv = if n > 0.0 { 1.0 / n } else { 0.0 };
                        self.emb.extend(e.map(|x| x * inv));
                        n > 0.0
                    }
                    Values::Drop { scale } => has_norm(q, scale),
                };
                self.has_emb.push(has);
                self.codes.extend_from_slice(q);
                self.inv_norm.push(inv_norm_f64(q));
            }
            None => {
                if values == Values::Keep {
                    self.emb.extend(std::iter::repeat_n(0.0, dim));
                }
                self.has_emb.push(false);
                self.codes.extend(std::iter::repeat_n(0, dim));
                self.inv_norm.push(0.0);
            }
        }
        row
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn row(&self, id: u64) -> Option<u32> {
        self.index.get(&id).copied()
    }

    /// The unit-length values of row `row`'s embedding (zeros for an item without one).
    ///
    /// Panics for a row added with [`Self::push_codes_ref`], which keeps no values: the
    /// caller that added it promised not to read them.
    pub fn embedding(&self, row: u32) -> &[f32] {
        let at = self.values_at[row as usize];
        assert!(at != NO_ROW, "row {row} was added without its values");
        let at = at as usize;
        &self.emb[at * self.dim..(at + 1) * self.dim]
    }

    /// The int8 codes of row `row`'s embedding.
    pub fn codes(&self, row: u32) -> &[i8] {
        let r = row as usize;
        &self.codes[r * self.dim..(r + 1) * self.dim]
    }

    /// Cosine between two items, `None` if either has no embedding: the cosine of their int8
    /// codes, exact up to one rounding ([`cosine_of`]), the same on every CPU.
    pub fn cosine(&self, a: u32, b: u32) -> Option<f32> {
        let (a, b) = (a as usize, b as usize);
        (self.has_emb[a] && self.has_emb[b]).then(|| {
            let dot = dot_i8(self.codes(a as u32), self.codes(b as u32));
            cosine_of(dot, self.inv_norm[a], self.inv_norm[b])
        })
    }

    /// SemID levels shared by two items (0 when either has none).
    pub fn depth(&self, a: u32, b: u32) -> u8 {
        match (&self.semid[a as usize], &self.semid[b as usize]) {
            (Some(x), Some(y)) => x.common_prefix(y) as u8,
            _ => 0,
        }
    }
}

/// Row value of a token whose item the catalog does not know.
pub const NO_ROW: u32 = u32::MAX;

/// One behaviour in a sample's sequence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Token {
    /// Row in the [`ItemTable`], or [`NO_ROW`].
    pub row: u32,
    pub action: u8,
    /// Seconds from the behaviour to the impression, rounded up: always at least 1.
    pub age_s: u32,
    /// Cosine of the behaviour's item with the target (NaN when unknown).
    pub sim: f32,
    /// SemID levels shared with the target.
    pub depth: u8,
}

impl Token {
    pub const PAD: Token = Token {
        row: NO_ROW,
        action: 0,
        age_s: 0,
        sim: f32::NAN,
        depth: 0,
    };
}

/// Samples with their sequences, padded to fixed lengths.
pub struct SampleSet {
    pub impressions: Vec<Impression>,
    pub target_row: Vec<u32>,
    /// Per kind: its length and `n × len` tokens (padding is [`Token::PAD`] after the real ones).
    pub seqs: Vec<(SeqKind, usize, Vec<Token>)>,
    pub lens: Vec<Vec<u16>>,
    /// Per sample, [`evidence_len`] numbers summarising the whole as-of history against the
    /// target (empty when not computed).
    pub evidence: Vec<f32>,
    /// Per sample, [`crate::labels::ITEM_LABEL_FEATURES`] numbers: the click statistics of its
    /// target item (empty when not computed; [`crate::labels::ItemLabels::fill`]).
    pub item_labels: Vec<f32>,
}

/// Bins of MUSE's similarity-tier histogram (and of the evidence features' cosine histogram):
/// width 0.1 over [-1, 1].
pub const SIMTIER_BINS: usize = 21;

/// The similarity-tier bin of a cosine: 0.1 wide over [-1, 1], the last holding exactly 1.
/// (The value is never negative, so truncation is `floor`, without its call.)
#[inline(always)]
pub fn simtier_bin(cos: f32) -> usize {
    let x = (cos.clamp(-1.0, 1.0) + 1.0) / 0.1;
    // A NaN cosine is bin 0 (what `as` makes of NaN); any other `x` is in [0, 20.000002], where
    // the unchecked cast truncates as `as` does, without the saturation checks that kept a loop
    // of `as` casts from compiling to SIMD.
    let x = if x.is_nan() { 0.0 } else { x };
    // SAFETY: `x` is finite and in [0, 21), so it fits an `i32`.
    let bin = unsafe { x.to_int_unchecked::<i32>() };
    bin.min(SIMTIER_BINS as i32 - 1) as usize
}

/// Behaviours counted as recent by the evidence features.
pub const EVIDENCE_WINDOW: usize = 50;

/// Numbers per sample in [`SampleSet::evidence`] for `levels` SemID levels.
pub fn evidence_len(levels: usize) -> usize {
    3 * (levels + 1) + SIMTIER_BINS + 1
}

/// A user's as-of history summarised once, so that the evidence features of many targets
/// (every candidate of a request, or one impression in training) cost a few look-ups and one
/// pass of dot products over the history's distinct items each. It keeps what it needs of the
/// history's items (codes, categories, SemID prefixes), so it holds no reference to the table
/// it was built from, and serving keeps it across requests (`siren-serve`'s summary cache).
#[derive(Debug, Clone, Default)]
pub struct HistorySummary {
    /// Behaviours in the history, with or without a catalog row.
    len: usize,
    /// Per distinct item with a catalog row and an embedding: its occurrences.
    counts: Vec<u32>,
    /// Their int8 codes, row-major in the order of `counts` (one linear pass per target instead
    /// of a look-up per item), and their inverse norms.
    codes: Vec<i8>,
    inv_norm: Vec<f64>,
    /// Behaviours per category.
    by_category: HashMap<u32, Matches>,
    /// Behaviours per SemID prefix, keyed by [`prefix_key`].
    by_prefix: HashMap<u128, Matches>,
}

/// The first `d` levels of `semid` and `d` itself in one number (at most six 16-bit codes).
fn prefix_key(semid: &SemId, d: usize) -> u128 {
    semid.codes()[..d]
        .iter()
        .fold(d as u128, |k, &c| (k << 16) | u128::from(c))
}

/// The behaviours of one group (a category, a SemID prefix, one item).
#[derive(Debug, Clone, Copy)]
struct Matches {
    count: u32,
    /// Among the newest [`EVIDENCE_WINDOW`] behaviours.
    recent: u32,
    /// Behaviours newer than the group's newest.
    newest: u32,
}

impl Matches {
    /// The first (newest) behaviour of a group, `back` behaviours from the end.
    fn first(back: usize) -> Matches {
        Matches {
            count: 1,
            recent: u32::from(back < EVIDENCE_WINDOW),
            newest: back as u32,
        }
    }

    /// One more, older, behaviour of the group.
    fn add(&mut self, back: usize) {
        self.count += 1;
        self.recent += u32::from(back < EVIDENCE_WINDOW);
    }

    /// The union of two groups' behaviours (a group of items is the union of its items').
    fn merge(&mut self, other: &Matches) {
        self.count += other.count;
        self.recent += other.recent;
        self.newest = self.newest.min(other.newest);
    }
}

/// Add `m` to the group `key` of `groups`.
fn merge_into<K: std::hash::Hash + Eq>(groups: &mut HashMap<K, Matches>, key: K, m: &Matches) {
    groups.entry(key).and_modify(|g| g.merge(m)).or_insert(*m);
}

impl HistorySummary {
    /// Summarise `hist` (oldest first); behaviours whose item has no row in `items` count in
    /// the length only. One look-up per behaviour finds its item; categories and SemID
    /// prefixes are then grouped over the distinct items, which are far fewer.
    pub fn new(items: &ItemTable, hist: &[Event]) -> HistorySummary {
        // The rows are looked up as the pass goes: training builds one summary per sample, and
        // a list of them would be one more allocation the history's length per sample.
        let rows = hist.iter().map(|e| items.row(e.item).unwrap_or(NO_ROW));
        HistorySummary::summarise(items, rows)
    }

    /// The summary of `user`'s events before `as_of` in `snap`, their items as the catalog
    /// holds them (codes only: no embedding is dequantised).
    pub fn read(snap: &Snapshot, user: u64, as_of: i64, dim: usize) -> Result<HistorySummary> {
        let hist = snap.read(user, ReadRange::as_of(as_of))?;
        let mut items = ItemTable::new(dim);
        let rows: Vec<u32> = hist
            .iter()
            .map(|e| items.row_or_add_codes(snap, e.item))
            .collect();
        Ok(HistorySummary::summarise(&items, rows.into_iter()))
    }

    /// Approximate heap bytes (a cache's weight).
    pub fn bytes(&self) -> usize {
        fn table<K, V>(m: &HashMap<K, V>) -> usize {
            m.capacity() * (std::mem::size_of::<(K, V)>() + 1)
        }
        self.codes.capacity()
            + self.inv_norm.capacity() * std::mem::size_of::<f64>()
            + self.counts.capacity() * std::mem::size_of::<u32>()
            + table(&self.by_category)
            + table(&self.by_prefix)
    }

    /// The summary of the behaviours whose rows `rows` yields, oldest first.
    fn summarise(
        items: &ItemTable,
        rows: impl DoubleEndedIterator<Item = u32> + ExactSizeIterator,
    ) -> HistorySummary {
        let len = rows.len();
        // Per distinct item, newest first (so that an item's first behaviour is its newest).
        let mut slot = vec![u32::MAX; items.len()];
        let mut per_item: Vec<(u32, Matches)> = Vec::new();
        for (back, row) in rows.rev().enumerate() {
            if row == NO_ROW {
                continue;
            }
            match slot[row as usize] {
                u32::MAX => {
                    slot[row as usize] = per_item.len() as u32;
                    per_item.push((row, Matches::first(back)));
                }
                k => per_item[k as usize].1.add(back),
            }
        }
        let mut out = HistorySummary {
            len,
            ..HistorySummary::default()
        };
        for (row, m) in &per_item {
            let r = *row as usize;
            merge_into(&mut out.by_category, items.category[r], m);
            if let Some(semid) = &items.semid[r] {
                for d in 1..=semid.levels() {
                    merge_into(&mut out.by_prefix, prefix_key(semid, d), m);
                }
            }
            if items.has_emb[r] {
                out.counts.push(m.count);
                out.codes.extend_from_slice(items.codes(*row));
                out.inv_norm.push(items.inv_norm[r]);
            }
        }
        out
    }

    /// What the history says about `target` ([`evidence_len`]`(levels)` numbers). For each
    /// group — the target's category, then SemID depths d = 1..=levels (behaviours sharing at
    /// least d levels) — log(1 + its behaviours), log(1 + those among the newest
    /// [`EVIDENCE_WINDOW`]) and log(1 + behaviours newer than its newest) (log(2 + len) when
    /// it has none); then the similarity-tier histogram of every behaviour's cosine with the
    /// target (log(1 + count) per 0.1-wide bin); then log(1 + len). Coarse counts rather than
    /// ids, so they mean the same for users never seen in training.
    pub fn evidence(&self, items: &ItemTable, target: u32, levels: usize) -> Vec<f32> {
        self.evidence_of(items, &[target], levels)
    }

    /// [`Self::evidence`] of every target, one after the other (`targets.len()` times
    /// [`evidence_len`] numbers). The cosine histograms take the history's items in blocks
    /// that stay in cache while every target passes over them (the embeddings of a long
    /// history are megabytes, which a pass per target read from memory each time); each
    /// target still sees the items in the same order through the same dot product, so the
    /// numbers are those of [`Self::evidence`], bit for bit.
    pub fn evidence_of(&self, items: &ItemTable, targets: &[u32], levels: usize) -> Vec<f32> {
        let width = evidence_len(levels);
        let groups = levels + 1;
        let mut out = vec![0f32; targets.len() * width];
        for (row, &target) in out.chunks_exact_mut(width).zip(targets) {
            self.counts_into(row, items, target, levels);
        }
        self.cosine_histograms(&mut out, items, targets, width, 3 * groups);
        for row in out.chunks_exact_mut(width) {
            for x in &mut row[3 * groups..3 * groups + SIMTIER_BINS] {
                *x = x.ln_1p();
            }
        }
        out
    }

    /// The group counts and the length of `target`'s evidence into `out` (the histogram left
    /// at zero).
    fn counts_into(&self, out: &mut [f32], items: &ItemTable, target: u32, levels: usize) {
        let groups = levels + 1;
        let n = self.len as f32;
        out[3 * groups + SIMTIER_BINS] = n.ln_1p();
        let none = (n + 1.0).ln_1p();
        let mut put = |g: usize, m: Option<&Matches>| {
            let m = m.copied().unwrap_or(Matches {
                count: 0,
                recent: 0,
                newest: u32::MAX,
            });
            out[3 * g] = (m.count as f32).ln_1p();
            out[3 * g + 1] = (m.recent as f32).ln_1p();
            out[3 * g + 2] = if m.count == 0 {
                none
            } else {
                (m.newest as f32).ln_1p()
            };
        };
        if target == NO_ROW {
            (0..groups).for_each(|g| put(g, None));
            return;
        }
        put(0, self.by_category.get(&items.category[target as usize]));
        let tsem = items.semid[target as usize].as_ref();
        for d in 1..=levels {
            let m = tsem
                .filter(|t| d <= t.levels())
                .and_then(|t| self.by_prefix.get(&prefix_key(t, d)));
            put(d, m);
        }
    }

    /// Add each behaviour's count to the bin of its cosine with each target, at offset `at` of
    /// the target's row of `out` (rows `width` long): items outside, every target's exact int8
    /// dot product with the item at once inside ([`dot_queries`], the best kernel for the
    /// CPU), so the bins are the same whatever the CPU and however many targets there are.
    fn cosine_histograms(
        &self,
        out: &mut [f32],
        items: &ItemTable,
        targets: &[u32],
        width: usize,
        at: usize,
    ) {
        let dim = items.dim;
        if dim == 0 {
            return;
        }
        let embedded: Vec<(usize, u32)> = targets
            .iter()
            .enumerate()
            .filter(|&(_, &t)| t != NO_ROW && items.has_emb[t as usize])
            .map(|(k, &t)| (k, t))
            .collect();
        let inv_t: Vec<f64> = embedded
            .iter()
            .map(|&(_, t)| items.inv_norm[t as usize])
            .collect();
        let queries = Queries::new(
            embedded.iter().map(|&(_, t)| items.codes(t)),
            dim,
            &vec![1.0; embedded.len()],
        );
        let n = embedded.len();
        // The embedded targets' histograms side by side, so that the pass over the items adds
        // to them without finding each target's row of `out`; copied there at the end (`out`'s
        // bins are still zero, and 0 + x is x).
        let mut hist = vec![0f32; n * SIMTIER_BINS];
        let (mut dots, mut bins) = (vec![0i32; n], vec![0u8; n]);
        let codes = self.codes.chunks_exact(dim);
        for ((e, &count), &inv_e) in codes.zip(&self.counts).zip(&self.inv_norm) {
            dot_queries(e, &queries, &mut dots);
            cosine_bins(&mut bins, &dots, &inv_t, inv_e);
            let count = count as f32;
            for (h, &b) in hist.chunks_exact_mut(SIMTIER_BINS).zip(&bins) {
                h[usize::from(b)] += count;
            }
        }
        for (h, &(k, _)) in hist.chunks_exact(SIMTIER_BINS).zip(&embedded) {
            out[k * width + at..][..SIMTIER_BINS].copy_from_slice(h);
        }
    }
}

/// `bins[t] =` the [`simtier_bin`] of the cosine of dot product `dots[t]` with inverse norms
/// `inv_t[t]` and `inv_e`: a loop of its own, which the compiler vectorises, built for AVX-512
/// and AVX2 as well, the widest the CPU has chosen at run time (the same IEEE operations
/// every way, so the same bins).
fn cosine_bins(bins: &mut [u8], dots: &[i32], inv_t: &[f64], inv_e: f64) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: chosen only when the CPU has AVX-512F.
            return unsafe { cosine_bins_avx512(bins, dots, inv_t, inv_e) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: chosen only when the CPU has AVX2.
            return unsafe { cosine_bins_avx2(bins, dots, inv_t, inv_e) };
        }
    }
    cosine_bins_with(bins, dots, inv_t, inv_e)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn cosine_bins_avx512(bins: &mut [u8], dots: &[i32], inv_t: &[f64], inv_e: f64) {
    cosine_bins_with(bins, dots, inv_t, inv_e)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn cosine_bins_avx2(bins: &mut [u8], dots: &[i32], inv_t: &[f64], inv_e: f64) {
    cosine_bins_with(bins, dots, inv_t, inv_e)
}

#[inline(always)]
fn cosine_bins_with(bins: &mut [u8], dots: &[i32], inv_t: &[f64], inv_e: f64) {
    for (b, (&dot, &inv)) in bins.iter_mut().zip(dots.iter().zip(inv_t)) {
        *b = simtier_bin(cosine_of(dot, inv, inv_e)) as u8;
    }
}

impl SampleSet {
    pub fn len(&self) -> usize {
        self.impressions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.impressions.is_empty()
    }

    /// Tokens of sequence `kind` of sample `i`, padding included.
    pub fn seq(&self, kind: SeqKind, i: usize) -> Option<&[Token]> {
        self.seqs
            .iter()
            .find(|(k, _, _)| *k == kind)
            .map(|(_, len, t)| &t[i * len..(i + 1) * len])
    }

    pub fn seq_len(&self, kind: SeqKind) -> Option<usize> {
        self.seqs.iter().find(|(k, _, _)| *k == kind).map(|s| s.1)
    }
}

pub fn token(items: &ItemTable, target: u32, imp: &Impression, e: &Event) -> Result<Token> {
    if e.ts >= imp.ts {
        return Err(ModelError::invalid(format!(
            "the engine returned an event at {} for an impression at {} (as_of violated)",
            e.ts, imp.ts
        )));
    }
    let row = items.row(e.item).unwrap_or(NO_ROW);
    // Saturating: an impression at `i64::MAX` (a request's `as_of`) and an event at a negative
    // time are further apart than an i64 holds; the age is clamped to u32 seconds anyway.
    let age_ms = imp.ts.saturating_sub(e.ts);
    let (sim, depth) = if row == NO_ROW || target == NO_ROW {
        (f32::NAN, 0)
    } else {
        (
            items.cosine(row, target).unwrap_or(f32::NAN),
            items.depth(row, target),
        )
    };
    Ok(Token {
        row,
        action: e.action,
        age_s: (age_ms.saturating_add(999) / 1000).min(i64::from(u32::MAX)) as u32,
        sim,
        depth,
    })
}

/// The newest `len` behaviours of `user` before `as_of`, newest first.
pub fn recent(snap: &Snapshot, user: u64, len: usize, as_of: Option<i64>) -> Result<Vec<Event>> {
    let mut v = snap.read(
        user,
        ReadRange {
            last: Some(len),
            as_of,
            since: None,
        },
    )?;
    v.reverse();
    Ok(v)
}

/// The behaviours of one sequence of one sample, from the engine.
fn sequence(
    snap: &Snapshot,
    items: &ItemTable,
    imp: &Impression,
    target: u32,
    kind: SeqKind,
    len: usize,
    user_history: &mut Option<Vec<Event>>,
) -> Result<Vec<Token>> {
    let as_of = Some(imp.ts);
    let events: Vec<Event> = match kind {
        SeqKind::Recent => recent(snap, imp.user, len, as_of)?,
        SeqKind::Retrieved(Retrieval::Soft) => {
            if target == NO_ROW || !items.has_emb[target as usize] {
                Vec::new()
            } else {
                snap.retrieve_soft(imp.user, items.embedding(target), len, as_of)?
                    .into_iter()
                    .map(|h| h.event)
                    .collect()
            }
        }
        SeqKind::Retrieved(Retrieval::Hard) => match (target != NO_ROW)
            .then(|| items.semid[target as usize])
            .flatten()
        {
            Some(s) => snap
                .retrieve_hard(imp.user, &s, len, as_of)?
                .into_iter()
                .map(|h| h.event)
                .collect(),
            None => Vec::new(),
        },
        SeqKind::Retrieved(Retrieval::Category) => {
            // The engine has no category index: SIM's category search scans the user's history
            // (read once per user, as of the user's latest impression, then cut at this one's).
            if target == NO_ROW {
                Vec::new()
            } else {
                let hist = user_history
                    .as_ref()
                    .expect("history read for category search");
                let cut = hist.partition_point(|e| e.ts < imp.ts);
                let cat = items.category[target as usize];
                hist[..cut]
                    .iter()
                    .rev()
                    .filter(|e| {
                        items
                            .row(e.item)
                            .is_some_and(|r| items.category[r as usize] == cat)
                    })
                    .take(len)
                    .copied()
                    .collect()
            }
        }
    };
    events
        .iter()
        .map(|e| token(items, target, imp, e))
        .collect()
}

/// Build the sequences `spec` (kind, length) for each impression, and its evidence features
/// over `evidence` SemID levels when given. Impressions are processed per user on `threads` threads; the result is
/// in the order of `imps` and does not depend on the thread count.
pub fn build_samples(
    snap: &Snapshot,
    items: &ItemTable,
    imps: &[Impression],
    spec: &[(SeqKind, usize)],
    evidence: Option<usize>,
    threads: usize,
) -> Result<SampleSet> {
    let n = imps.len();
    // Group by user so that a user's history is read at most once (for category search).
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (imps[i].user, imps[i].ts));
    let threads = threads.clamp(1, 64);
    let chunk = order.len().div_ceil(threads).max(1);
    // Split at user boundaries.
    let mut parts: Vec<&[usize]> = Vec::new();
    let mut rest: &[usize] = &order;
    while !rest.is_empty() {
        let mut end = chunk.min(rest.len());
        while end < rest.len() && imps[rest[end]].user == imps[rest[end - 1]].user {
            end += 1;
        }
        let (a, b) = rest.split_at(end);
        parts.push(a);
        rest = b;
    }
    // Per thread: (impression index, one token list per sequence of `spec`, evidence).
    type Part = Vec<(usize, Vec<Vec<Token>>, Vec<f32>)>;
    let results: Vec<Result<Part>> = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .iter()
            .map(|part| {
                s.spawn(move || -> Result<Part> {
                    let mut out = Vec::with_capacity(part.len());
                    let mut current_user = None;
                    let mut history: Option<Vec<Event>> = None;
                    for &i in *part {
                        let imp = &imps[i];
                        if (evidence.is_some()
                            || spec
                                .iter()
                                .any(|(k, _)| *k == SeqKind::Retrieved(Retrieval::Category)))
                            && current_user != Some(imp.user)
                        {
                            let latest = part
                                .iter()
                                .filter(|&&j| imps[j].user == imp.user)
                                .map(|&j| imps[j].ts)
                                .max()
                                .unwrap_or(imp.ts);
                            history = Some(snap.read(imp.user, ReadRange::as_of(latest))?);
                            current_user = Some(imp.user);
                        }
                        let target = items.row(imp.item).unwrap_or(NO_ROW);
                        let mut seqs = Vec::with_capacity(spec.len());
                        for &(kind, len) in spec {
                            seqs.push(sequence(snap, items, imp, target, kind, len, &mut history)?);
                        }
                        let ev = match (&history, evidence) {
                            (Some(h), Some(levels)) => {
                                let cut = h.partition_point(|e| e.ts < imp.ts);
                                HistorySummary::new(items, &h[..cut])
                                    .evidence(items, target, levels)
                            }
                            _ => Vec::new(),
                        };
                        out.push((i, seqs, ev));
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("sample builder thread panicked"))
            .collect()
    });
    let mut all = Vec::with_capacity(n);
    let mut evs = Vec::new();
    for r in results {
        for (i, seqs, ev) in r? {
            all.push((i, seqs));
            if !ev.is_empty() {
                evs.push((i, ev));
            }
        }
    }
    let mut set = assemble(items, imps, spec, all);
    if let Some((_, first)) = evs.first() {
        let e = first.len();
        set.evidence = vec![0.0; n * e];
        for (i, ev) in evs {
            set.evidence[i * e..(i + 1) * e].copy_from_slice(&ev);
        }
    }
    Ok(set)
}

/// Pad each impression's token lists (`(impression index, one list per sequence of spec)`) to
/// the lengths of `spec`.
pub fn assemble(
    items: &ItemTable,
    imps: &[Impression],
    spec: &[(SeqKind, usize)],
    per_impression: Vec<(usize, Vec<Vec<Token>>)>,
) -> SampleSet {
    let n = imps.len();
    let mut seqs: Vec<(SeqKind, usize, Vec<Token>)> = spec
        .iter()
        .map(|&(k, len)| (k, len, vec![Token::PAD; n * len]))
        .collect();
    let mut lens = vec![vec![0u16; n]; spec.len()];
    for (i, per_kind) in per_impression {
        for (s, toks) in per_kind.into_iter().enumerate() {
            let len = seqs[s].1;
            let toks = &toks[..toks.len().min(len)];
            lens[s][i] = toks.len() as u16;
            seqs[s].2[i * len..i * len + toks.len()].copy_from_slice(toks);
        }
    }
    SampleSet {
        impressions: imps.to_vec(),
        target_row: imps
            .iter()
            .map(|imp| items.row(imp.item).unwrap_or(NO_ROW))
            .collect(),
        seqs,
        lens,
        evidence: Vec::new(),
        item_labels: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bin equals the `floor` form it replaced, on a fine grid, at every bin edge, beyond
    /// [-1, 1] and for NaN (bin 0 either way).
    #[test]
    fn simtier_bin_is_the_floor_form() {
        let floor_form =
            |c: f32| (((c.clamp(-1.0, 1.0) + 1.0) / 0.1).floor() as usize).min(SIMTIER_BINS - 1);
        let edges = (0..=20).map(|i| -1.0 + 0.1 * i as f32);
        let grid = (-120_000..=120_000).map(|i| i as f32 / 100_000.0);
        let near = edges.flat_map(|e| {
            [
                e,
                f32::from_bits(e.to_bits() + 1),
                f32::from_bits(e.to_bits().wrapping_sub(1)),
            ]
        });
        for c in grid
            .chain(near)
            .chain([f32::NAN, f32::INFINITY, f32::NEG_INFINITY])
        {
            assert_eq!(simtier_bin(c), floor_form(c), "{c}");
        }
    }

    /// Every kernel [`cosine_bins`] can choose gives, lane for lane, the bins of the plain
    /// formula: random dot products and norms, cosines a rounding away from every bin edge and
    /// from 1, beyond [-1, 1], and NaN (an infinite inverse norm times a zero dot product).
    #[test]
    fn cosine_bins_equal_the_plain_loop() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for trial in 0..3_000 {
            let n = rng.random_range(0..140);
            let inv_e: f64 = rng.random_range(1e-4..0.2);
            let inv_t: Vec<f64> = (0..n)
                .map(|_| match rng.random_range(0..50) {
                    0 => f64::INFINITY,
                    1 => 0.0,
                    _ => rng.random_range(1e-4..0.2),
                })
                .collect();
            let dots: Vec<i32> = inv_t
                .iter()
                .map(|&inv| match rng.random_range(0..4) {
                    0 => rng.random_range(-1_000_000..1_000_000),
                    1 => 0,
                    _ => {
                        let edge = -1.0 + 0.1 * f64::from(rng.random_range(0..=21));
                        let dot = edge / (inv * inv_e) + f64::from(rng.random_range(-2..=2));
                        dot.clamp(-2e9, 2e9) as i32
                    }
                })
                .collect();
            let plain: Vec<u8> = dots
                .iter()
                .zip(&inv_t)
                .map(|(&d, &inv)| simtier_bin(cosine_of(d, inv, inv_e)) as u8)
                .collect();
            let mut bins = vec![0u8; n];
            cosine_bins(&mut bins, &dots, &inv_t, inv_e);
            assert_eq!(bins, plain, "trial {trial}");
            cosine_bins_with(&mut bins, &dots, &inv_t, inv_e);
            assert_eq!(bins, plain, "portable, trial {trial}");
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2.
                    unsafe { cosine_bins_avx2(&mut bins, &dots, &inv_t, inv_e) };
                    assert_eq!(bins, plain, "AVX2, trial {trial}");
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F.
                    unsafe { cosine_bins_avx512(&mut bins, &dots, &inv_t, inv_e) };
                    assert_eq!(bins, plain, "AVX-512, trial {trial}");
                }
            }
        }
    }

    /// A row without values says it has an embedding exactly when the row with them does,
    /// scales whose squares underflow included.
    #[test]
    fn has_norm_is_the_values_test() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let scales = [
            1.0,
            1e-3,
            1e-18,
            1e-19,
            7e-20,
            1e-20,
            1e-22,
            1e-25,
            1e-30,
            1e-38,
            1e-44,
            1e-45,
            0.0,
            1e30,
            f32::MAX / 127.0,
        ];
        for &scale in &scales {
            for _ in 0..300 {
                let q: Vec<i8> = (0..8)
                    .map(|_| match rng.random_range(0..4) {
                        0 => 0,
                        1 => rng.random_range(-2i8..=2),
                        _ => rng.random(),
                    })
                    .collect();
                let n = dequantize(&q, scale).map(|x| x * x).sum::<f32>().sqrt();
                assert_eq!(has_norm(&q, scale), n > 0.0, "{q:?} x {scale:e}");
            }
        }
    }
}
