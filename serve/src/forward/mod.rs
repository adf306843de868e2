//! The fused serving forward of the SIREN ESU: the candle model's function over the same
//! weights and the same [`Batch`], computed the way a serving call needs it.
//!
//! - Weights are read by name once at model load into contiguous `f32` buffers
//!   ([`weights`]); the target-attention MLP's first layer is refactored there as candle's
//!   `TargetAttention::pool` does (`(W1 + W3) q + (W2 - W3) k + W4 (q * k)`).
//! - Per request, once: the recent branch's keys and their key projection (every candidate of
//!   one user has the same recent behaviours; candidates whose recent sequences differ get
//!   their own).
//! - Per candidate, in chunks over the thread pool: each token is one gather-and-sum of its
//!   embedding rows followed by the input layer norm while the row is in cache; attention per
//!   candidate and head with its `T x T` scores in a small reused buffer; bias, ReLU, residual
//!   and layer norm applied row by row after each dense product; the last layer computes the
//!   target position only; the head's MLP. Dense products go through the `gemm` crate
//!   ([`kernels::matmul`]); attention, softmax and layer norm are the row kernels of
//!   [`simd`], built for AVX2 and FMA where the CPU has them.
//!
//! What it covers is [`FusedEsu::load`]'s test: `siren-soft` and `siren-hard` with or without
//! the recent branch, prefix SemIDs, similarity buckets, the behaviours' action and time gap,
//! and the evidence input, in the single-domain form. Everything else (the baselines, the
//! multi-domain forms) is served by candle.

pub mod inputs;
pub mod kernels;
pub mod simd;
pub mod weights;

use rayon::prelude::*;
use siren_model::batch::Batch;
use siren_model::models::{DomainMode, ModelConfig, ModelKind};
use siren_model::{Retrieval, SeqKind};

use crate::error::{Result, ServeError};
use inputs::{Inputs, Seq};
use kernels::{matmul, sigmoid, View};
use simd::{HeadInput, RowKernels};
use weights::{Dense, Named, Norm, Table};

/// ID tables shared by the target and the behaviours (action and time gap absent when the
/// model leaves them out of its behaviours).
struct Ids {
    item: Table,
    category: Table,
    user: Table,
    action: Option<Table>,
    gap: Option<Table>,
}

impl Ids {
    /// `row += ` the action and time-gap rows of position `i` of `s`, when the model reads them.
    fn add_context(&self, row: &mut [f32], s: &Seq, i: usize) -> Result<()> {
        if let Some(a) = &self.action {
            a.add_row(row, s.action[i])?;
        }
        if let Some(g) = &self.gap {
            g.add_row(row, s.gap[i])?;
        }
        Ok(())
    }
}

/// Per-level prefix SemID tables and the shared-depth table.
struct Prefix {
    levels: Vec<Table>,
    depth: Table,
}

/// A pre-norm transformer layer (`TransformerLayer`). `q` and `kv` are the rows of `qkv` the
/// last layer uses separately (the query of the target only, keys and values of all).
struct Layer {
    ln1: Norm,
    qkv: Dense,
    q: Dense,
    kv: Dense,
    out: Dense,
    ln2: Norm,
    ff1: Dense,
    ff2: Dense,
}

/// The recent branch's target attention with its first layer in factored form.
struct Recent {
    /// Applied to the query (bias included), to the keys, and to their product.
    w_q: Dense,
    w_k: Dense,
    w_qk: Dense,
    /// The score layer (`hidden -> 1`).
    score: Dense,
}

/// The SIREN ESU as the fused forward computes it.
pub struct FusedEsu {
    dim: usize,
    heads: usize,
    retrieved: SeqKind,
    ids: Ids,
    mm: Dense,
    sim_bucket: Option<Table>,
    prefix: Option<Prefix>,
    target_type: Vec<f32>,
    ln_in: Norm,
    layers: Vec<Layer>,
    recent: Option<Recent>,
    evidence: Option<Dense>,
    head: Vec<Dense>,
    kernels: RowKernels,
}

/// Candidates per block of work: the block's activations (about 1 MB at 16 candidates of 51
/// tokens at width 32) stay in cache from one fused pass to the next and are reused from the
/// allocator rather than mapped afresh, and the blocks spread over the thread pool.
const BLOCK: usize = 16;

/// The recent branch's keys `[R, 2d]` and their projection `[R, hidden]`, per group of
/// candidates with the same recent behaviours.
struct RecentKeys {
    groups: Vec<(Vec<f32>, Vec<f32>)>,
    group_of: Vec<usize>,
}

impl FusedEsu {
    /// The fused forward of `cfg` over the weights `w`, or `None` when it does not cover the
    /// model (the caller serves it with candle): a kind other than `siren-soft`/`siren-hard`,
    /// or a multi-domain form.
    pub fn load(cfg: &ModelConfig, w: &Named) -> Result<Option<FusedEsu>> {
        let retrieved = match cfg.kind {
            ModelKind::SirenSoft => SeqKind::Retrieved(Retrieval::Soft),
            ModelKind::SirenHard => SeqKind::Retrieved(Retrieval::Hard),
            _ => return Ok(None),
        };
        if cfg.domain != DomainMode::Shared {
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
        let width =
            d * (3 + if recent.is_some() { 6 } else { 2 } + usize::from(evidence.is_some()));
        let esu = FusedEsu {
            dim: d,
            heads: cfg.heads,
            retrieved,
            ids: Ids {
                item: table("item")?,
                category: table("category")?,
                user: table("user")?,
                action: (!cfg.no_action).then(|| table("action")).transpose()?,
                gap: (!cfg.no_gap).then(|| table("gap")).transpose()?,
            },
            mm: w.dense("mm", None, Some(d))?,
            sim_bucket: cfg.sim_buckets.then(|| table("sim_bucket")).transpose()?,
            prefix,
            target_type: w.vector("target_type", d)?,
            ln_in: w.norm("ln_in", d)?,
            layers: (0..cfg.layers)
                .map(|l| Layer::load(w, &format!("layer{l}"), d))
                .collect::<Result<_>>()?,
            recent,
            evidence,
            head: head(w, width)?,
            kernels: RowKernels::best(),
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
            .map(|&s| self.chunk(&x, keys.as_ref(), s, (s + chunk).min(n)))
            .collect::<Result<Vec<_>>>()?;
        Ok(parts.concat())
    }

    /// The batch has the widths the weights expect.
    fn check(&self, x: &Inputs) -> Result<()> {
        let bad = |what: &str| Err(ServeError::invalid(format!("batch does not fit: {what}")));
        if x.emb_dim != self.mm.inp {
            return bad("embedding width");
        }
        if let Some(p) = &self.prefix {
            if x.levels != p.levels.len() {
                return bad("SemID levels");
            }
        }
        match (&self.evidence, &x.evidence) {
            (Some(_), None) => bad("the model reads evidence features the batch lacks"),
            (Some(e), Some(v)) if v.len() != x.size * e.inp => bad("evidence width"),
            _ => Ok(()),
        }
    }

    /// Probabilities of candidates `lo..hi`.
    fn chunk(
        &self,
        x: &Inputs,
        keys: Option<&RecentKeys>,
        lo: usize,
        hi: usize,
    ) -> Result<Vec<f32>> {
        let c = hi - lo;
        let d = self.dim;
        let mut mm = vec![0.0; c * d];
        self.mm
            .forward(&mut mm, &x.emb[lo * x.emb_dim..hi * x.emb_dim], c, false);
        let mut tokens = self.tokens(x, &mm, lo, hi)?;
        let seq = &x.retrieved;
        let t1 = seq.len + 1;
        let keep: Vec<f32> = (0..c * t1)
            .map(|i| i % t1 == 0 || seq.valid(lo + i / t1, i % t1 - 1))
            .map(f32::from)
            .collect();
        let interest = self.encode(&mut tokens, c, t1, &keep);
        let feats = self.features(x, keys, &interest, &mm, lo, hi)?;
        let width = self.head[0].inp;
        Ok(mlp(&self.head, feats, c, width)
            .into_iter()
            .map(sigmoid)
            .collect())
    }

    /// The normalised tokens `[c * (T + 1), d]` of candidates `lo..hi`: per candidate the
    /// target token, then its retrieved behaviours.
    fn tokens(&self, x: &Inputs, mm: &[f32], lo: usize, hi: usize) -> Result<Vec<f32>> {
        let (d, t) = (self.dim, x.retrieved.len);
        let mut out = vec![0.0; (hi - lo) * (t + 1) * d];
        let norm = |row: &mut [f32]| {
            (self.kernels.norm_in_place)(row, &self.ln_in.gamma, &self.ln_in.beta)
        };
        for (cand, rows) in out.chunks_exact_mut((t + 1) * d).enumerate() {
            let (target, behaviours) = rows.split_at_mut(d);
            self.target_token(target, x, &mm[cand * d..(cand + 1) * d], lo + cand)?;
            for (p, row) in behaviours.chunks_exact_mut(d).enumerate() {
                self.behaviour_token(row, &x.retrieved, x.levels, (lo + cand) * t + p)?;
            }
            // The candidate's rows (about 6 KB) are still in cache.
            norm(rows);
        }
        Ok(out)
    }

    /// Item + category + projected embedding + target type (+ prefix SemIDs) of candidate `i`.
    fn target_token(&self, row: &mut [f32], x: &Inputs, mm: &[f32], i: usize) -> Result<()> {
        row.copy_from_slice(self.ids.item.row(x.item[i])?);
        self.ids.category.add_row(row, x.category[i])?;
        kernels::add(row, mm);
        kernels::add(row, &self.target_type);
        if let Some(p) = &self.prefix {
            for (l, table) in p.levels.iter().enumerate() {
                table.add_row(row, x.prefix[i * x.levels + l])?;
            }
        }
        Ok(())
    }

    /// Item + category (+ action + time gap) (+ similarity bucket) (+ prefix SemIDs and shared
    /// depth) of position `i` of a sequence.
    fn behaviour_token(&self, row: &mut [f32], s: &Seq, levels: usize, i: usize) -> Result<()> {
        row.copy_from_slice(self.ids.item.row(s.item[i])?);
        self.ids.category.add_row(row, s.category[i])?;
        self.ids.add_context(row, s, i)?;
        if let Some(sb) = &self.sim_bucket {
            sb.add_row(row, s.sim_bucket[i])?;
        }
        if let Some(p) = &self.prefix {
            for (l, table) in p.levels.iter().enumerate() {
                table.add_row(row, s.prefix[i * levels + l])?;
            }
            p.depth.add_row(row, s.depth[i])?;
        }
        Ok(())
    }

    /// The transformer over `c` candidates' `t1` tokens each: every layer but the last over
    /// all positions, the last for the target only. Returns the interest vectors `[c, d]`.
    fn encode(&self, x: &mut [f32], c: usize, t1: usize, keep: &[f32]) -> Vec<f32> {
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
            l.forward(x, c, &att);
        }
        last.forward_first(x, c, &att)
    }

    /// The head's input `[c, width]`: interest, user, projected embedding, the recent branch
    /// (or the target's IDs), the evidence input.
    fn features(
        &self,
        x: &Inputs,
        keys: Option<&RecentKeys>,
        interest: &[f32],
        mm: &[f32],
        lo: usize,
        hi: usize,
    ) -> Result<Vec<f32>> {
        let d = self.dim;
        let width = self.head[0].inp;
        let c = hi - lo;
        let mut ev = Vec::new();
        if let (Some(e), Some(v)) = (&self.evidence, &x.evidence) {
            ev = vec![0.0; c * d];
            e.forward(&mut ev, &v[lo * e.inp..hi * e.inp], c, true);
        }
        let mut out = vec![0.0; c * width];
        for (cand, row) in out.chunks_exact_mut(width).enumerate() {
            let i = lo + cand;
            let (a, rest) = row.split_at_mut(d);
            a.copy_from_slice(&interest[cand * d..(cand + 1) * d]);
            let (u, rest) = rest.split_at_mut(d);
            u.copy_from_slice(self.ids.user.row(x.user[i])?);
            let (m, rest) = rest.split_at_mut(d);
            m.copy_from_slice(&mm[cand * d..(cand + 1) * d]);
            let q_width = if self.recent.is_some() { 6 * d } else { 2 * d };
            let (q, e) = rest.split_at_mut(q_width);
            q[..d].copy_from_slice(self.ids.item.row(x.item[i])?);
            q[d..2 * d].copy_from_slice(self.ids.category.row(x.category[i])?);
            if let (Some(r), Some(k), Some(s)) = (&self.recent, keys, &x.recent) {
                r.interest(q, k, s, i, &self.kernels);
            }
            if !e.is_empty() {
                e.copy_from_slice(&ev[cand * d..(cand + 1) * d]);
            }
        }
        Ok(out)
    }
}

/// Linear layers with ReLU between them over `rows` rows of `x` (`rows x width`); the last
/// has one output, returned per row.
fn mlp(layers: &[Dense], mut x: Vec<f32>, rows: usize, width: usize) -> Vec<f32> {
    debug_assert_eq!(x.len(), rows * width);
    for (i, l) in layers.iter().enumerate() {
        let mut y = vec![0.0; rows * l.out];
        l.forward(&mut y, &x, rows, i + 1 < layers.len());
        x = y;
    }
    x
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
                keep: &self.keep[cand * self.t1..(cand + 1) * self.t1],
                scale: 1.0 / (dh as f32).sqrt(),
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
            kv: qkv.rows(d, 3 * d),
            qkv,
            out: w.dense(&format!("{name}.out"), Some(d), Some(d))?,
            ln2: w.norm(&format!("{name}.ln2"), d)?,
            ff1: w.dense(&format!("{name}.ff1"), Some(d), None)?,
            ff2: w.dense(&format!("{name}.ff2"), None, Some(d))?,
        })
    }

    /// Every position of `c` candidates, in place.
    fn forward(&self, x: &mut [f32], c: usize, att: &Attention<'_>) {
        let (d, t1) = (att.d, att.t1);
        let rows = c * t1;
        let mut h = vec![0.0; rows * d];
        (att.kernels.norm_rows)(&mut h, x, &self.ln1.gamma, &self.ln1.beta);
        let mut qkv = vec![0.0; rows * 3 * d];
        self.qkv.forward(&mut qkv, &h, rows, false);
        let mut ctx = h;
        let mut scratch = Vec::new();
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
                &mut scratch,
            );
        }
        self.out.forward_add(x, &ctx, rows);
        self.feed_forward(x, rows, att);
    }

    /// The target position only: `[c, d]`.
    fn forward_first(&self, x: &[f32], c: usize, att: &Attention<'_>) -> Vec<f32> {
        let (d, t1) = (att.d, att.t1);
        let rows = c * t1;
        let mut h = vec![0.0; rows * d];
        (att.kernels.norm_rows)(&mut h, x, &self.ln1.gamma, &self.ln1.beta);
        let mut kv = vec![0.0; rows * 2 * d];
        self.kv.forward(&mut kv, &h, rows, false);
        let first = |m: &[f32]| -> Vec<f32> {
            m.chunks_exact(t1 * d)
                .flat_map(|r| r[..d].iter().copied())
                .collect()
        };
        let mut q = vec![0.0; c * d];
        self.q.forward(&mut q, &first(&h), c, false);
        let mut ctx = vec![0.0; c * d];
        let mut scratch = Vec::new();
        for cand in 0..c {
            let kvc = &kv[cand * t1 * 2 * d..(cand + 1) * t1 * 2 * d];
            let qc = &q[cand * d..(cand + 1) * d];
            let out = &mut ctx[cand * d..(cand + 1) * d];
            att.heads(cand, qc, d, 1, kvc, &kvc[d..], 2 * d, out, &mut scratch);
        }
        let mut y = first(x);
        self.out.forward_add(&mut y, &ctx, c);
        self.feed_forward(&mut y, c, att);
        y
    }

    /// `x += ff2(relu(ff1(ln2(x))))` over `rows` rows.
    fn feed_forward(&self, x: &mut [f32], rows: usize, att: &Attention<'_>) {
        let mut h = vec![0.0; rows * att.d];
        (att.kernels.norm_rows)(&mut h, x, &self.ln2.gamma, &self.ln2.beta);
        let mut f = vec![0.0; rows * self.ff1.out];
        self.ff1.forward(&mut f, &h, rows, true);
        self.ff2.forward_add(x, &f, rows);
    }
}

impl Recent {
    /// `recent_att`'s MLP `[8d -> hidden -> 1]` with its first layer split into blocks of
    /// `2d` columns `W1..W4` over `[q, k, q - k, q * k]`.
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
            w_k: combine(
                &|r| {
                    block(1, r)
                        .iter()
                        .zip(block(2, r))
                        .map(|(a, b)| a - b)
                        .collect()
                },
                zeros.clone(),
            ),
            w_qk: combine(&|r| block(3, r).to_vec(), zeros),
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
                    let keys = self.behaviour_keys(ids, s, c)?;
                    let mut proj = vec![0.0; s.len * self.w_k.out];
                    self.w_k.forward(&mut proj, &keys, s.len, false);
                    k.groups.push((keys, proj));
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

    /// `[q, pooled, q * pooled]` into `out` (`6d`), whose first `2d` already hold the target
    /// query `q` of candidate `c`.
    fn interest(
        &self,
        out: &mut [f32],
        keys: &RecentKeys,
        s: &Seq,
        c: usize,
        kernels: &RowKernels,
    ) {
        let e = self.w_k.inp;
        let r = s.len;
        let hidden = self.w_k.out;
        let (q, rest) = out.split_at_mut(e);
        let (keys_c, proj) = &keys.groups[keys.group_of[c]];
        let mut qpart = vec![0.0; hidden];
        self.w_q.forward(&mut qpart, q, 1, false);
        let mut prod = keys_c.clone();
        for row in prod.chunks_exact_mut(e) {
            for (x, y) in row.iter_mut().zip(q.iter()) {
                *x *= y;
            }
        }
        let mut pre = proj.clone();
        matmul(
            &mut pre,
            hidden,
            View::rows(&prod, r, e),
            self.w_qk.wt(),
            true,
        );
        for row in pre.chunks_exact_mut(hidden) {
            kernels::bias_act(row, &qpart, true);
        }
        let mut logits = vec![0.0; r];
        self.score.forward(&mut logits, &pre, r, false);
        let keep: Vec<f32> = (0..r).map(|p| f32::from(s.valid(c, p))).collect();
        (kernels.softmax)(&mut logits, &keep, 1.0);
        let (pooled, qp) = rest.split_at_mut(e);
        matmul(
            pooled,
            e,
            View::rows(&logits, 1, r),
            View::rows(keys_c, r, e),
            false,
        );
        for ((o, a), b) in qp.iter_mut().zip(q.iter()).zip(pooled.iter()) {
            *o = a * b;
        }
    }
}
