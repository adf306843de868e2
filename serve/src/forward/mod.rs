//! The fused serving forward of the SIREN ESU: the candle model's function over the same
//! weights and the same [`Batch`], computed the way a serving call needs it.
//!
//! - Weights are read by name once at model load into contiguous `f32` buffers
//!   ([`weights`]); the target-attention MLP's first layer is refactored there as candle's
//!   `TargetAttention::pool` does (`(W1 + W3) q + (W2 - W3) k + W4 (q * k)`).
//! - Per request, once: the recent branch's keys (every candidate of one user has the same
//!   recent behaviours; candidates whose recent sequences differ get their own). Per block of
//!   candidates with the same keys, the branch is three dense products: the queries' part,
//!   the keys times every candidate's key weight side by side (the target folded into the
//!   weight), and the pooling.
//! - Per candidate, in chunks over the thread pool: each token is one gather-and-sum of its
//!   embedding rows and the input layer norm in one pass (in registers on AVX-512); attention per
//!   candidate and head with its `T x T` scores in a small reused buffer; bias, ReLU, residual
//!   and layer norm applied row by row after each dense product; the last layer computes the
//!   target position only, with the key and value weights folded into its query and pooled
//!   row; the head's MLP. Every activation lives in per-thread buffers ([`Scratch`]) reused
//!   from block to block and call to call. Dense products go through the `gemm` crate
//!   ([`kernels::matmul`]); attention, softmax and layer norm are the row kernels of
//!   [`simd`], built for AVX2 and FMA where the CPU has them, and for AVX-512 where it has
//!   that (`avx512`: attention of 16-wide heads, layer norms, token sums).
//!
//! What it covers is [`FusedEsu::load`]'s test: `siren-soft` and `siren-hard` with or without
//! the recent branch, prefix SemIDs, similarity buckets, the behaviours' action and time gap,
//! the evidence input, the target's click statistics, the user id and the projected
//! multimodal target embedding, in the single-domain form.
//! Everything else (the baselines, the multi-domain forms) is served by candle.

#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod inputs;
pub mod kernels;
pub mod simd;
pub mod weights;

use std::cell::RefCell;

use rayon::prelude::*;
use siren_model::batch::Batch;
use siren_model::models::{DomainMode, ModelConfig, ModelKind};
use siren_model::{Retrieval, SeqKind};

use crate::error::{Result, ServeError};
use inputs::{Inputs, Seq};
use kernels::{matmul, relu_dot, sigmoid, View};
use simd::{padded, HeadInput, PoolInput, RowKernels};
use weights::{Dense, Named, Norm, Table};

/// ID tables shared by the target and the behaviours (the user absent when the model leaves
/// it out, action and time gap when it leaves them out of its behaviours).
struct Ids {
    item: Table,
    category: Table,
    user: Option<Table>,
    action: Option<Table>,
    gap: Option<Table>,
}

impl Ids {
    /// `row += ` the action and time-gap rows of position `i` of `s`, when the model reads them.
    fn add_context(&self, row: &mut [f32], s: &Seq, i: usize) -> Result<()> {
        let mut rows = TokenRows::default();
        self.context_rows(&mut rows, s, i)?;
        for r in rows.as_slice() {
            kernels::add(row, r);
        }
        Ok(())
    }

    /// The action and time-gap rows of position `i` of `s`, when the model reads them.
    fn context_rows<'a>(&'a self, rows: &mut TokenRows<'a>, s: &Seq, i: usize) -> Result<()> {
        if let Some(a) = &self.action {
            rows.push(a.row(s.action[i])?);
        }
        if let Some(g) = &self.gap {
            rows.push(g.row(s.gap[i])?);
        }
        Ok(())
    }
}

/// Rows a token sums beyond its SemID levels: item, category, action, time gap, similarity
/// bucket, shared depth (a behaviour), or item, category, projected embedding, target type
/// (the target).
const FIXED_ROWS: usize = 6;
/// The most SemID levels the fused forward takes ([`FusedEsu::load`] leaves deeper models to
/// candle): with them, a token's rows fit [`TokenRows`].
const MAX_LEVELS: usize = 10;

/// The embedding rows one token sums, in the order candle adds them.
struct TokenRows<'a> {
    rows: [&'a [f32]; FIXED_ROWS + MAX_LEVELS],
    n: usize,
}

impl Default for TokenRows<'_> {
    fn default() -> Self {
        TokenRows {
            rows: [&[]; FIXED_ROWS + MAX_LEVELS],
            n: 0,
        }
    }
}

impl<'a> TokenRows<'a> {
    /// # Panics
    /// Past the capacity, which `FusedEsu::load` rules out by the model's levels.
    fn push(&mut self, row: &'a [f32]) {
        self.rows[self.n] = row;
        self.n += 1;
    }

    fn as_slice(&self) -> &[&'a [f32]] {
        &self.rows[..self.n]
    }

    fn clear(&mut self) {
        self.n = 0;
    }
}

/// Per-level prefix SemID tables and the shared-depth table.
struct Prefix {
    levels: Vec<Table>,
    depth: Table,
}

/// A pre-norm transformer layer (`TransformerLayer`). `q`, `k` and `v` are the rows of `qkv`
/// the last layer uses separately ([`Layer::forward_first`]).
struct Layer {
    ln1: Norm,
    qkv: Dense,
    q: Dense,
    k: Dense,
    v: Dense,
    out: Dense,
    ln2: Norm,
    ff1: Dense,
    ff2: Dense,
}

/// The recent branch's target attention with its first layer in factored form: for a query
/// `q`, key `k` gets the hidden activations `relu(W_q q + b + (W_k + W_qk diag(q)) k)`.
struct Recent {
    /// Applied to the query (bias included).
    w_q: Dense,
    /// `W_k^T` and `W_qk^T`, `[2d, hidden]` row-major: row `j` of a candidate's key weight
    /// `(W_k + W_qk diag(q))^T` is `wk_t[j] + q[j] * wqk_t[j]`.
    wk_t: Vec<f32>,
    wqk_t: Vec<f32>,
    /// The score layer (`hidden -> 1`).
    score: Dense,
}

/// The SIREN ESU as the fused forward computes it.
pub struct FusedEsu {
    dim: usize,
    heads: usize,
    retrieved: SeqKind,
    ids: Ids,
    /// The target's multimodal embedding to the model width (absent when the model leaves it
    /// out).
    mm: Option<Dense>,
    sim_bucket: Option<Table>,
    prefix: Option<Prefix>,
    target_type: Vec<f32>,
    ln_in: Norm,
    layers: Vec<Layer>,
    recent: Option<Recent>,
    evidence: Option<Dense>,
    /// The target's click statistics to the model width (after the evidence in the head's
    /// input, as candle's `WithItemLabels` appends them).
    item_labels: Option<Dense>,
    head: Vec<Dense>,
    kernels: RowKernels,
    /// The head and the recent branch's query read the target's item half as zeros
    /// (`ModelConfig::no_head_item`).
    no_head_item: bool,
}

/// Candidates per block of work: the block's activations (about half a megabyte at 16
/// candidates of 51 tokens at width 32) stay in cache from one fused pass to the next, and the
/// blocks spread over the thread pool (blocks of 8 measured no faster).
const BLOCK: usize = 16;

/// The recent branch's keys `[R, 2d]`, per group of candidates with the same recent
/// behaviours.
struct RecentKeys {
    groups: Vec<Vec<f32>>,
    group_of: Vec<usize>,
}

/// One block's activations. Each thread of the pool keeps one set ([`with_scratch`]), reused
/// from block to block and from call to call: fresh zeroed buffers per block and layer cost
/// about a tenth of the forward in `memset` and page faults. Every buffer is written in full
/// before it is read (see [`space`]), so none is cleared.
#[derive(Default)]
struct Scratch {
    /// The projected embeddings `[c, d]`.
    mm: Vec<f32>,
    /// The tokens `[c * t1, d]`, transformed in place layer by layer.
    tokens: Vec<f32>,
    /// Which positions are real (the target and real behaviours), each candidate's `t1`
    /// padded to whole lanes with zeros: `[c * padded(t1)]`.
    keep: Vec<f32>,
    layer: LayerScratch,
    recent: RecentScratch,
    /// The head's input `[c, width]`, the evidence and click-statistics projections, and its
    /// hidden layers.
    feats: Vec<f32>,
    side: [Vec<f32>; 2],
    hidden: [Vec<f32>; 2],
}

#[derive(Default)]
struct LayerScratch {
    /// Layer-normed rows, then attention's context rows: `[rows, d]`.
    norm: Vec<f32>,
    /// The query, key and value rows (`[rows, 3d]`), then the feed-forward's hidden rows.
    wide: Vec<f32>,
    /// The last layer's target rows: queries, context, output (`[c, d]` each).
    query: Vec<f32>,
    context: Vec<f32>,
    target: Vec<f32>,
    /// The last layer's queries with the keys folded in and their pooled rows, `[c, heads,
    /// d]` each.
    folded: Vec<f32>,
    pooled: Vec<f32>,
    /// The attention kernels' own (transposed keys, scores).
    attend: Vec<f32>,
}

#[derive(Default)]
struct RecentScratch {
    /// The queries' part of the hidden activations `[n, hidden]`.
    query: Vec<f32>,
    /// The candidates' key weights side by side, `[2d, n * hidden]`.
    weights: Vec<f32>,
    /// The keys' hidden activations before bias and ReLU, `[R, n * hidden]`.
    hidden: Vec<f32>,
    /// Attention weights `[n, R]` and one candidate's real positions `[R]`.
    logits: Vec<f32>,
    keep: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// `f` with this thread's [`Scratch`] (a fresh one should the thread's be in use: `f` never
/// yields to the pool, so that does not happen, but it costs nothing to be safe).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Scratch::default()),
    })
}

/// The first `len` elements of `buf`, grown (never shrunk) to hold them. They hold what an
/// earlier block left: the caller writes every element before it reads any.
fn space(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

impl FusedEsu {
    /// The fused forward of `cfg` over the weights `w`, or `None` when it does not cover the
    /// model (the caller serves it with candle): a kind other than `siren-soft`/`siren-hard`,
    /// a multi-domain form, or MUSE's reference network (`ModelConfig::reference_net`).
    pub fn load(cfg: &ModelConfig, w: &Named) -> Result<Option<FusedEsu>> {
        let retrieved = match cfg.kind {
            ModelKind::SirenSoft => SeqKind::Retrieved(Retrieval::Soft),
            ModelKind::SirenHard => SeqKind::Retrieved(Retrieval::Hard),
            _ => return Ok(None),
        };
        if cfg.domain != DomainMode::Shared || cfg.reference_net {
            return Ok(None);
        }
        let d = cfg.dim;
        if cfg.layers == 0 || cfg.heads == 0 || !d.is_multiple_of(cfg.heads) {
            return Err(ServeError::invalid(format!(
                "SIREN needs at least one layer and heads dividing dim {d}"
            )));
        }
        let table = |n: &str| w.table(n, d);
        let prefix = if cfg.prefix_semids {
            let mut levels = Vec::new();
            while w.has(&format!("prefix{}.weight", levels.len() + 1)) {
                levels.push(table(&format!("prefix{}", levels.len() + 1))?);
            }
            if levels.len() > MAX_LEVELS {
                return Ok(None);
            }
            Some(Prefix {
                depth: table("depth")?,
                levels,
            })
        } else {
            None
        };
        let recent = if cfg.recent > 0 {
            Some(Recent::load(w, d)?)
        } else {
            None
        };
        let evidence = cfg
            .evidence
            .then(|| w.dense("evidence", None, Some(d)))
            .transpose()?;
        let item_labels = cfg
            .item_labels
            .then(|| w.dense("item_labels", None, Some(d)))
            .transpose()?;
        let width = d
            * (1 + cfg.user_and_mm_columns()
                + if recent.is_some() { 6 } else { 2 }
                + usize::from(evidence.is_some())
                + usize::from(item_labels.is_some()));
        let esu = FusedEsu {
            dim: d,
            heads: cfg.heads,
            retrieved,
            ids: Ids {
                item: table("item")?,
                category: table("category")?,
                user: (!cfg.no_user_id).then(|| table("user")).transpose()?,
                action: (!cfg.no_action).then(|| table("action")).transpose()?,
                gap: (!cfg.no_gap).then(|| table("gap")).transpose()?,
            },
            mm: (!cfg.no_mm_target)
                .then(|| w.dense("mm", None, Some(d)))
                .transpose()?,
            sim_bucket: cfg.sim_buckets.then(|| table("sim_bucket")).transpose()?,
            prefix,
            target_type: w.vector("target_type", d)?,
            ln_in: w.norm("ln_in", d)?,
            layers: (0..cfg.layers)
                .map(|l| Layer::load(w, &format!("layer{l}"), d))
                .collect::<Result<_>>()?,
            recent,
            evidence,
            item_labels,
            head: head(w, width)?,
            kernels: RowKernels::best(),
            no_head_item: cfg.no_head_item,
        };
        Ok(Some(esu))
    }

    /// Click probabilities of the samples of `b` (a batch built by `make_batch` with the
    /// model's sequences).
    pub fn probs(&self, b: &Batch) -> Result<Vec<f32>> {
        let x = Inputs::of(b, self.retrieved, self.recent.is_some())?;
        self.check(&x)?;
        let keys = match (&self.recent, &x.recent) {
            (Some(r), Some(s)) => Some(r.keys(&self.ids, s)?),
            _ => None,
        };
        let n = x.size;
        // Blocks of at most BLOCK, as many as a multiple of the threads, so that every thread
        // gets the same share (100 candidates on 2 threads: 8 blocks of 13, not 7 of 16).
        let threads = rayon::current_num_threads().max(1);
        let blocks = n.div_ceil(BLOCK).div_ceil(threads) * threads;
        let chunk = n.div_ceil(blocks.max(1)).max(1);
        let starts: Vec<usize> = (0..n).step_by(chunk).collect();
        let parts = starts
            .par_iter()
            .map(|&s| {
                with_scratch(|scratch| {
                    self.chunk(&x, keys.as_ref(), s, (s + chunk).min(n), scratch)
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(parts.concat())
    }

    /// The batch has the widths the weights expect.
    fn check(&self, x: &Inputs) -> Result<()> {
        let bad = |what: &str| Err(ServeError::invalid(format!("batch does not fit: {what}")));
        if self.mm.as_ref().is_some_and(|m| x.emb_dim != m.inp) {
            return bad("embedding width");
        }
        if let Some(p) = &self.prefix {
            if x.levels != p.levels.len() {
                return bad("SemID levels");
            }
        }
        for (dense, input, what) in self.side_inputs(x) {
            match (dense, input) {
                (Some(_), None) => return bad(&format!("the model reads {what} the batch lacks")),
                (Some(e), Some(v)) if v.len() != x.size * e.inp => {
                    return bad(&format!("{what} width"))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The head's side inputs in the order it reads them, after the recent branch: each
    /// model projection, the batch's values and what they are.
    fn side_inputs<'a>(&'a self, x: &'a Inputs) -> [SideInput<'a>; 2] {
        [
            (&self.evidence, &x.evidence, "evidence features"),
            (&self.item_labels, &x.item_labels, "click statistics"),
        ]
    }

    /// Probabilities of candidates `lo..hi`.
    fn chunk(
        &self,
        x: &Inputs,
        keys: Option<&RecentKeys>,
        lo: usize,
        hi: usize,
        s: &mut Scratch,
    ) -> Result<Vec<f32>> {
        let c = hi - lo;
        let d = self.dim;
        let mm = self.mm.as_ref().map(|m| {
            let buf = space(&mut s.mm, c * d);
            m.forward(buf, &x.emb[lo * x.emb_dim..hi * x.emb_dim], c, false);
            &*buf
        });
        let seq = &x.retrieved;
        let t1 = seq.len + 1;
        let tokens = space(&mut s.tokens, c * t1 * d);
        self.tokens(tokens, x, mm, lo)?;
        let keep = space(&mut s.keep, c * padded(t1));
        for (i, k) in keep.iter_mut().enumerate() {
            let (cand, j) = (i / padded(t1), i % padded(t1));
            *k = f32::from(j == 0 || (j < t1 && seq.valid(lo + cand, j - 1)));
        }
        let interest = self.encode(tokens, c, t1, keep, &mut s.layer);
        let at = Columns {
            lo,
            hi,
            interest,
            mm,
        };
        let feats = self.features(x, keys, &at, &mut s.feats, &mut s.side, &mut s.recent)?;
        Ok(mlp(&self.head, feats, c, &mut s.hidden)
            .iter()
            .map(|&l| sigmoid(l))
            .collect())
    }

    /// The normalised tokens `[c * (T + 1), d]` of candidates `lo..lo + c` into `out`: per
    /// candidate the target token, then its retrieved behaviours. Each token's embedding rows
    /// are summed and normalised in one pass ([`RowKernels::sum_norm`]).
    fn tokens(&self, out: &mut [f32], x: &Inputs, mm: Option<&[f32]>, lo: usize) -> Result<()> {
        let (d, t) = (self.dim, x.retrieved.len);
        let sum_norm = |row: &mut [f32], rows: &TokenRows<'_>| {
            (self.kernels.sum_norm)(row, rows.as_slice(), &self.ln_in.gamma, &self.ln_in.beta)
        };
        // One list of rows, refilled for every token.
        let mut parts = TokenRows::default();
        for (cand, rows) in out.chunks_exact_mut((t + 1) * d).enumerate() {
            let (target, behaviours) = rows.split_at_mut(d);
            let mm = mm.map(|m| &m[cand * d..(cand + 1) * d]);
            parts.clear();
            self.target_rows(&mut parts, x, mm, lo + cand)?;
            sum_norm(target, &parts);
            let next = lo + cand + 1 < x.size;
            for (p, row) in behaviours.chunks_exact_mut(d).enumerate() {
                let i = (lo + cand) * t + p;
                if next {
                    self.prefetch_behaviour(&x.retrieved, x.levels, i + t);
                }
                parts.clear();
                self.behaviour_rows(&mut parts, &x.retrieved, x.levels, i)?;
                sum_norm(row, &parts);
            }
        }
        Ok(())
    }

    /// Item + category (+ projected embedding) + target type (+ prefix SemIDs) of candidate
    /// `i`, in candle's order.
    fn target_rows<'a>(
        &'a self,
        rows: &mut TokenRows<'a>,
        x: &Inputs,
        mm: Option<&'a [f32]>,
        i: usize,
    ) -> Result<()> {
        rows.push(self.ids.item.row(x.item[i])?);
        rows.push(self.ids.category.row(x.category[i])?);
        if let Some(mm) = mm {
            rows.push(mm);
        }
        rows.push(&self.target_type);
        if let Some(p) = &self.prefix {
            for (l, table) in p.levels.iter().enumerate() {
                rows.push(table.row(x.prefix[i * x.levels + l])?);
            }
        }
        Ok(())
    }

    /// Asks for the rows of the catalog-sized tables (items, SemID prefixes) that position
    /// `i` of a sequence reads, a candidate ahead of their gather: the item table is
    /// megabytes, mostly outside the core's cache, and the gather otherwise waited on its
    /// rows one after the other. One position at a time, spread over the current
    /// candidate's gather: a candidate's worth at once overflowed the core's outstanding
    /// misses and stalled on them.
    fn prefetch_behaviour(&self, s: &Seq, levels: usize, i: usize) {
        self.ids.item.prefetch(s.item[i]);
        if let Some(px) = &self.prefix {
            for (l, table) in px.levels.iter().enumerate() {
                table.prefetch(s.prefix[i * levels + l]);
            }
        }
    }

    /// Item + category (+ action + time gap) (+ similarity bucket) (+ prefix SemIDs and shared
    /// depth) of position `i` of a sequence, in candle's order.
    fn behaviour_rows<'a>(
        &'a self,
        rows: &mut TokenRows<'a>,
        s: &Seq,
        levels: usize,
        i: usize,
    ) -> Result<()> {
        rows.push(self.ids.item.row(s.item[i])?);
        rows.push(self.ids.category.row(s.category[i])?);
        self.ids.context_rows(rows, s, i)?;
        if let Some(sb) = &self.sim_bucket {
            rows.push(sb.row(s.sim_bucket[i])?);
        }
        if let Some(p) = &self.prefix {
            for (l, table) in p.levels.iter().enumerate() {
                rows.push(table.row(s.prefix[i * levels + l])?);
            }
            rows.push(p.depth.row(s.depth[i])?);
        }
        Ok(())
    }

    /// The transformer over `c` candidates' `t1` tokens each: every layer but the last over
    /// all positions, the last for the target only. Returns the interest vectors `[c, d]`.
    fn encode<'s>(
        &self,
        x: &mut [f32],
        c: usize,
        t1: usize,
        keep: &[f32],
        s: &'s mut LayerScratch,
    ) -> &'s [f32] {
        let att = Attention {
            d: self.dim,
            heads: self.heads,
            t1,
            keep,
            kernels: self.kernels,
        };
        let (last, rest) = self
            .layers
            .split_last()
            .expect("load checks at least one layer");
        for l in rest {
            l.forward(x, c, &att, s);
        }
        last.forward_first(x, c, &att, s)
    }

    /// The head's input `[c, width]` into `out`: interest, user and projected embedding (each
    /// when the model has it), the recent branch (or the target's IDs), the evidence input, the click statistics.
    fn features<'s>(
        &self,
        x: &Inputs,
        keys: Option<&RecentKeys>,
        at: &Columns<'_>,
        out: &'s mut Vec<f32>,
        side: &mut [Vec<f32>; 2],
        recent: &mut RecentScratch,
    ) -> Result<&'s mut [f32]> {
        let d = self.dim;
        let width = self.head[0].inp;
        let (lo, hi) = (at.lo, at.hi);
        let c = hi - lo;
        // The side inputs projected with ReLU, `[c, d]` each, in the order the head reads them.
        let sides: Vec<&[f32]> = self
            .side_inputs(x)
            .into_iter()
            .zip(side.iter_mut())
            .filter_map(|((dense, input, _), buf)| match (dense, input) {
                (Some(e), Some(v)) => {
                    let buf = space(buf, c * d);
                    e.forward(buf, &v[lo * e.inp..hi * e.inp], c, true);
                    Some(&*buf)
                }
                _ => None,
            })
            .collect();
        let out = space(out, c * width);
        let q_width = if self.recent.is_some() { 6 * d } else { 2 * d };
        // Where the recent branch (or the target's IDs) starts: after the interest, the user
        // and the projected embedding, when the model has them.
        let q_at = d * (1 + usize::from(self.ids.user.is_some()) + usize::from(self.mm.is_some()));
        for (cand, row) in out.chunks_exact_mut(width).enumerate() {
            let i = lo + cand;
            let (a, rest) = row.split_at_mut(d);
            a.copy_from_slice(&at.interest[cand * d..(cand + 1) * d]);
            let mut rest = rest;
            if let Some(user) = &self.ids.user {
                let (u, r) = rest.split_at_mut(d);
                u.copy_from_slice(user.row(x.user[i])?);
                rest = r;
            }
            if let Some(mm) = at.mm {
                let (m, r) = rest.split_at_mut(d);
                m.copy_from_slice(&mm[cand * d..(cand + 1) * d]);
                rest = r;
            }
            let (q, mut e) = rest.split_at_mut(q_width);
            if self.no_head_item {
                q[..d].fill(0.0);
            } else {
                q[..d].copy_from_slice(self.ids.item.row(x.item[i])?);
            }
            q[d..2 * d].copy_from_slice(self.ids.category.row(x.category[i])?);
            for side in &sides {
                let (part, rest) = e.split_at_mut(d);
                part.copy_from_slice(&side[cand * d..(cand + 1) * d]);
                e = rest;
            }
        }
        if let Some(r) = &self.recent {
            let (Some(k), Some(s)) = (keys, &x.recent) else {
                unreachable!("probs reads the recent sequence and its keys for this model")
            };
            // Runs of candidates with the same keys (one run for one user's request).
            let mut start = lo;
            while start < hi {
                let g = k.group_of[start];
                let end = (start..hi).find(|&i| k.group_of[i] != g).unwrap_or(hi);
                let rows = &mut out[(start - lo) * width..(end - lo) * width];
                let run = Run {
                    rows,
                    width,
                    first: start,
                    count: end - start,
                };
                r.interest(run, q_at, &k.groups[g], s, &self.kernels, recent);
                start = end;
            }
        }
        Ok(out)
    }
}

/// One of the head's side inputs: the model's projection of it (when the model reads it), the
/// batch's values (when it carries them) and what it is, for errors.
type SideInput<'a> = (&'a Option<Dense>, &'a Option<Vec<f32>>, &'static str);

/// What the head's input of candidates `lo..hi` is assembled from besides the batch: the
/// transformer's interest vectors and the projected embeddings, when the model reads them
/// (`[hi - lo, d]` each).
struct Columns<'a> {
    lo: usize,
    hi: usize,
    interest: &'a [f32],
    mm: Option<&'a [f32]>,
}

/// Rows of the head's input of `count` candidates from `first` (in the batch) that share their
/// recent behaviours.
struct Run<'a> {
    rows: &'a mut [f32],
    width: usize,
    first: usize,
    count: usize,
}

/// Linear layers with ReLU between them over `rows` rows of `x` (`rows x width`), their
/// outputs in the two buffers of `hidden` in turn; the last has one output, returned per row.
fn mlp<'s>(layers: &[Dense], x: &[f32], rows: usize, hidden: &'s mut [Vec<f32>; 2]) -> &'s [f32] {
    let [even, odd] = hidden;
    for (i, l) in layers.iter().enumerate() {
        let (src, dst) = if i % 2 == 0 {
            (&*odd, &mut *even)
        } else {
            (&*even, &mut *odd)
        };
        let src = if i == 0 { x } else { &src[..rows * l.inp] };
        l.forward(space(dst, rows * l.out), src, rows, i + 1 < layers.len());
    }
    let last = if layers.len() % 2 == 1 { even } else { odd };
    &last[..rows]
}

/// The head's layers `head.0`, `head.1`, ... from `width` inputs to one output.
fn head(w: &Named, width: usize) -> Result<Vec<Dense>> {
    let mut layers: Vec<Dense> = Vec::new();
    while w.has(&format!("head.{}.weight", layers.len())) {
        let inp = layers.last().map_or(width, |l| l.out);
        layers.push(w.dense(&format!("head.{}", layers.len()), Some(inp), None)?);
    }
    match layers.last() {
        Some(l) if l.out == 1 => Ok(layers),
        _ => Err(ServeError::invalid(
            "the model's head does not end in one output",
        )),
    }
}

/// The shape of one attention: width, heads, positions per candidate, which key positions
/// are real (`t1` per candidate, 1 or 0), and the row kernels of this CPU.
struct Attention<'a> {
    d: usize,
    heads: usize,
    t1: usize,
    keep: &'a [f32],
    kernels: RowKernels,
}

impl Attention<'_> {
    /// Which of candidate `cand`'s positions are real, padded to whole lanes.
    fn keep(&self, cand: usize) -> &[f32] {
        &self.keep[cand * padded(self.t1)..(cand + 1) * padded(self.t1)]
    }

    /// The scores' scale, `1 / sqrt(dh)`.
    fn scale(&self) -> f32 {
        1.0 / ((self.d / self.heads) as f32).sqrt()
    }

    /// For candidate `cand` and every head: softmax of `q k^T / sqrt(dh)` over the real keys,
    /// times `v`, into `ctx` (`tq` rows `d` wide). `q` holds `tq` rows `q_rs` apart, `k` and
    /// `v` `t1` rows `kv_rs` apart, each head's columns at `h * dh`.
    #[allow(clippy::too_many_arguments)]
    fn heads(
        &self,
        cand: usize,
        q: &[f32],
        q_rs: usize,
        tq: usize,
        k: &[f32],
        v: &[f32],
        kv_rs: usize,
        ctx: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let dh = self.d / self.heads;
        for h in 0..self.heads {
            let head = HeadInput {
                q: &q[h * dh..],
                q_rs,
                tq,
                k: &k[h * dh..],
                v: &v[h * dh..],
                kv_rs,
                t1: self.t1,
                dh,
                keep: self.keep(cand),
                scale: self.scale(),
            };
            (self.kernels.attend)(&head, (&mut ctx[h * dh..], self.d), scratch);
        }
    }
}

impl Layer {
    fn load(w: &Named, name: &str, d: usize) -> Result<Layer> {
        let qkv = w.dense(&format!("{name}.qkv"), Some(d), Some(3 * d))?;
        Ok(Layer {
            ln1: w.norm(&format!("{name}.ln1"), d)?,
            q: qkv.rows(0, d),
            k: qkv.rows(d, 2 * d),
            v: qkv.rows(2 * d, 3 * d),
            qkv,
            out: w.dense(&format!("{name}.out"), Some(d), Some(d))?,
            ln2: w.norm(&format!("{name}.ln2"), d)?,
            ff1: w.dense(&format!("{name}.ff1"), Some(d), None)?,
            ff2: w.dense(&format!("{name}.ff2"), None, Some(d))?,
        })
    }

    /// Every position of `c` candidates, in place.
    fn forward(&self, x: &mut [f32], c: usize, att: &Attention<'_>, s: &mut LayerScratch) {
        let (d, t1) = (att.d, att.t1);
        let rows = c * t1;
        let h = space(&mut s.norm, rows * d);
        (att.kernels.norm_rows)(h, x, &self.ln1.gamma, &self.ln1.beta);
        let qkv = space(&mut s.wide, rows * 3 * d);
        self.qkv.forward(qkv, h, rows, false);
        let ctx = h;
        for cand in 0..c {
            let q = &qkv[cand * t1 * 3 * d..(cand + 1) * t1 * 3 * d];
            let out = &mut ctx[cand * t1 * d..(cand + 1) * t1 * d];
            att.heads(
                cand,
                q,
                3 * d,
                t1,
                &q[d..],
                &q[2 * d..],
                3 * d,
                out,
                &mut s.attend,
            );
        }
        self.out.forward_add(x, ctx, rows);
        self.feed_forward(x, rows, att, (&mut s.norm, &mut s.wide));
    }

    /// The target position only: `[c, d]`. Its attention has one query per candidate and
    /// head, so no row is projected to a key or a value ([`Layer::fold_keys`],
    /// [`Layer::pooled_values`]).
    fn forward_first<'s>(
        &self,
        x: &[f32],
        c: usize,
        att: &Attention<'_>,
        s: &'s mut LayerScratch,
    ) -> &'s [f32] {
        let (d, t1) = (att.d, att.t1);
        let rows = c * t1;
        let h = space(&mut s.norm, rows * d);
        (att.kernels.norm_rows)(h, x, &self.ln1.gamma, &self.ln1.beta);
        // The target rows: the first of every candidate's `t1`.
        let targets = View {
            data: h,
            rows: c,
            cols: d,
            rs: t1 * d,
            cs: 1,
        };
        let q = space(&mut s.query, c * d);
        self.q.forward_view(q, d, targets, false);
        let heads = att.heads;
        let folded = space(&mut s.folded, c * heads * d);
        self.fold_keys(folded, q, c, att);
        let pooled = space(&mut s.pooled, c * heads * d);
        for cand in 0..c {
            let at = cand * heads * d..(cand + 1) * heads * d;
            let a = PoolInput {
                q: &folded[at.clone()],
                heads,
                x: &h[cand * t1 * d..(cand + 1) * t1 * d],
                t1,
                d,
                keep: att.keep(cand),
                scale: att.scale(),
            };
            (att.kernels.pool)(&a, &mut pooled[at], &mut s.attend);
        }
        let ctx = space(&mut s.context, c * d);
        self.pooled_values(ctx, pooled, c, att);
        let y = space(&mut s.target, c * d);
        for (row, x) in y.chunks_exact_mut(d).zip(x.chunks(t1 * d)) {
            row.copy_from_slice(&x[..d]);
        }
        self.out.forward_add(y, ctx, c);
        self.feed_forward(y, c, att, (&mut s.norm, &mut s.wide));
        y
    }

    /// Each candidate's query of each head times that head's key weight, `[c, heads, d]`: the
    /// last layer's only query is the target, so rather than projecting every row to a key,
    /// the key weight is folded into the query (`q . (W_k x + b_k) = (W_k^T q) . x` plus
    /// `q . b_k`, the same for every key, which the softmax cancels).
    fn fold_keys(&self, folded: &mut [f32], q: &[f32], c: usize, att: &Attention<'_>) {
        let (d, heads) = (att.d, att.heads);
        let dh = d / heads;
        for h in 0..heads {
            matmul(
                &mut folded[h * d..],
                heads * d,
                View::columns(q, c, d, h * dh, dh),
                View::rows(&self.k.w[h * dh * d..(h + 1) * dh * d], dh, d),
                false,
            );
        }
    }

    /// The context `[c, d]` from the pooled rows `[c, heads, d]`: each head's value weight
    /// applied once to its pooled row (`sum of p_j (W_v x_j + b_v) = W_v (sum of p_j x_j) + b_v`,
    /// as the weights `p_j` sum to one: the target position is always kept).
    fn pooled_values(&self, ctx: &mut [f32], pooled: &[f32], c: usize, att: &Attention<'_>) {
        let (d, heads) = (att.d, att.heads);
        let dh = d / heads;
        for h in 0..heads {
            let w = View::rows(&self.v.w[h * dh * d..(h + 1) * dh * d], dh, d).t();
            matmul(
                &mut ctx[h * dh..],
                d,
                View::columns(pooled, c, heads * d, h * d, d),
                w,
                false,
            );
        }
        for row in ctx.chunks_exact_mut(d) {
            kernels::bias_act(row, &self.v.b, false);
        }
    }

    /// `x += ff2(relu(ff1(ln2(x))))` over `rows` rows, through the buffers `norm` and `wide`.
    fn feed_forward(
        &self,
        x: &mut [f32],
        rows: usize,
        att: &Attention<'_>,
        (norm, wide): (&mut Vec<f32>, &mut Vec<f32>),
    ) {
        let h = space(norm, rows * att.d);
        (att.kernels.norm_rows)(h, x, &self.ln2.gamma, &self.ln2.beta);
        let f = space(wide, rows * self.ff1.out);
        self.ff1.forward(f, h, rows, true);
        self.ff2.forward_add(x, f, rows);
    }
}

impl Recent {
    /// `recent_att`'s MLP `[8d -> hidden -> 1]` with its first layer split into blocks of
    /// `2d` columns `W1..W4` over `[q, k, q - k, q * k]`: `W_q = W1 + W3`, `W_k = W2 - W3`,
    /// `W_qk = W4`.
    fn load(w: &Named, d: usize) -> Result<Recent> {
        let first = w.dense("recent_att.0", Some(8 * d), None)?;
        let score = w.dense("recent_att.1", Some(first.out), Some(1))?;
        let e = 2 * d;
        let block = |i: usize, row: usize| &first.w[row * 8 * d + i * e..row * 8 * d + (i + 1) * e];
        let combine = |f: &dyn Fn(usize) -> Vec<f32>, bias: Vec<f32>| Dense {
            w: (0..first.out).flat_map(f).collect(),
            b: bias,
            inp: e,
            out: first.out,
        };
        let zeros = vec![0.0; first.out];
        let w_k = combine(
            &|r| {
                block(1, r)
                    .iter()
                    .zip(block(2, r))
                    .map(|(a, b)| a - b)
                    .collect()
            },
            zeros.clone(),
        );
        Ok(Recent {
            w_q: combine(
                &|r| {
                    block(0, r)
                        .iter()
                        .zip(block(2, r))
                        .map(|(a, b)| a + b)
                        .collect()
                },
                first.b.clone(),
            ),
            wk_t: w_k.transposed(),
            wqk_t: combine(&|r| block(3, r).to_vec(), zeros).transposed(),
            score,
        })
    }

    /// The keys of every distinct recent sequence, once per request.
    fn keys(&self, ids: &Ids, s: &Seq) -> Result<RecentKeys> {
        let n = s.item.len().checked_div(s.len).unwrap_or(0);
        let mut k = RecentKeys {
            groups: Vec::new(),
            group_of: Vec::with_capacity(n),
        };
        for c in 0..n {
            match k.groups.len() {
                g if g > 0 && s.same_keys(c, c - 1) => k.group_of.push(g - 1),
                g => {
                    k.groups.push(self.behaviour_keys(ids, s, c)?);
                    k.group_of.push(g);
                }
            }
        }
        Ok(k)
    }

    /// `[item (+ action + gap), category]` of candidate `c`'s recent behaviours: `[R, 2d]`.
    fn behaviour_keys(&self, ids: &Ids, s: &Seq, c: usize) -> Result<Vec<f32>> {
        let d = ids.item.dim;
        let mut keys = vec![0.0; s.len * 2 * d];
        for (p, row) in keys.chunks_exact_mut(2 * d).enumerate() {
            let i = c * s.len + p;
            let (it, cat) = row.split_at_mut(d);
            it.copy_from_slice(ids.item.row(s.item[i])?);
            ids.add_context(it, s, i)?;
            cat.copy_from_slice(ids.category.row(s.category[i])?);
        }
        Ok(keys)
    }

    /// `[pooled, q * pooled]` into columns `at + 2d..at + 6d` of the run's rows, whose
    /// columns `at..at + 2d` hold each candidate's query `q`; `keys` `[R, 2d]` are the run's
    /// recent behaviours. Three dense products for the whole run rather than four per
    /// candidate: the queries' part, the keys times all the candidates' key weights side by
    /// side (`[R, 2d] x [2d, n * hidden]`), the pooling.
    fn interest(
        &self,
        run: Run<'_>,
        at: usize,
        keys: &[f32],
        s: &Seq,
        kernels: &RowKernels,
        scratch: &mut RecentScratch,
    ) {
        let (e, hidden, r, n) = (self.w_q.inp, self.w_q.out, s.len, run.count);
        let width = run.width;
        let queries = View::columns(run.rows, n, width, at, e);
        let qpart = space(&mut scratch.query, n * hidden);
        self.w_q.forward_view(qpart, hidden, queries, false);
        let wide = n * hidden;
        let weights = space(&mut scratch.weights, e * wide);
        for (cand, row) in run.rows.chunks_exact(width).enumerate() {
            let q = &row[at..at + e];
            for (j, &qj) in q.iter().enumerate() {
                let dst = &mut weights[j * wide + cand * hidden..][..hidden];
                let k = &self.wk_t[j * hidden..(j + 1) * hidden];
                let qk = &self.wqk_t[j * hidden..(j + 1) * hidden];
                for ((o, &a), &b) in dst.iter_mut().zip(k).zip(qk) {
                    *o = a + qj * b;
                }
            }
        }
        let pre = space(&mut scratch.hidden, r * wide);
        matmul(
            pre,
            wide,
            View::rows(keys, r, e),
            View::rows(weights, e, wide),
            false,
        );
        let logits = space(&mut scratch.logits, n * r);
        let keep = space(&mut scratch.keep, r);
        let bias = self.score.b[0];
        for (cand, l) in logits.chunks_exact_mut(r).enumerate() {
            let qc = &qpart[cand * hidden..(cand + 1) * hidden];
            for (p, v) in l.iter_mut().enumerate() {
                let row = &pre[p * wide + cand * hidden..][..hidden];
                *v = bias + relu_dot(row, qc, &self.score.w);
            }
            for (p, k) in keep.iter_mut().enumerate() {
                *k = f32::from(s.valid(run.first + cand, p));
            }
            (kernels.softmax)(l, keep, 1.0);
        }
        matmul(
            &mut run.rows[at + e..],
            width,
            View::rows(logits, n, r),
            View::rows(keys, r, e),
            false,
        );
        for row in run.rows.chunks_exact_mut(width) {
            let (q, rest) = row[at..].split_at_mut(e);
            let (pooled, qp) = rest.split_at_mut(e);
            for ((o, a), b) in qp[..e].iter_mut().zip(q.iter()).zip(pooled.iter()) {
                *o = a * b;
            }
        }
    }
}
