//! The scorers: the SIREN ESU and its baselines, all behind one trait so that one trainer serves
//! them all.
//!
//! | name | sequences | interest from |
//! |---|---|---|
//! | `no-seq` | none | target and user features only |
//! | `din` | last 50 | target attention |
//! | `sim-hard` | target's category, newest 50 | target attention |
//! | `muse` | last 50 + cosine top-50 | SimTier histogram + semantic-aware target attention + DIN |
//! | `siren-soft` / `siren-hard` | cosine / SemID-prefix top-K | target-conditioned transformer over tokens with similarity buckets and prefix SemIDs |
//!
//! Ablations: `siren-soft-nosim`, `siren-soft-noprefix` (and the same for `siren-hard`).

pub mod layers;

use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, Linear};
use serde::{Deserialize, Serialize};

use crate::batch::{Batch, SeqBatch, Vocabs, GAP_BUCKETS, SIMTIER_BINS, SIM_BUCKETS};
use crate::error::{ModelError, Result as ModelResult};
use crate::features::SeqKind;
use layers::{
    flat, key_bias, masked_mean, masked_softmax, ones, sum_levels, Mlp, Params, TargetAttention,
    TransformerLayer,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelKind {
    NoSeq,
    Din,
    SimHard,
    Muse,
    SirenSoft,
    SirenHard,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub kind: ModelKind,
    /// Width of every embedding and of the transformer.
    pub dim: usize,
    /// Recent behaviours (DIN, MUSE's short sequence, SIREN's short-term branch; 0 leaves them
    /// out of SIREN).
    pub recent: usize,
    /// Behaviours the GSU retrieves (SIM, MUSE, SIREN).
    pub retrieved: usize,
    /// SIREN transformer layers and heads.
    pub layers: usize,
    pub heads: usize,
    /// SIREN ablation switches.
    pub sim_buckets: bool,
    pub prefix_semids: bool,
}

impl ModelConfig {
    /// Names accepted by `siren train --model`.
    pub const NAMES: [&'static str; 10] = [
        "no-seq",
        "din",
        "sim-hard",
        "muse",
        "siren-soft",
        "siren-hard",
        "siren-soft-nosim",
        "siren-soft-noprefix",
        "siren-hard-nosim",
        "siren-hard-noprefix",
    ];

    pub fn named(name: &str) -> ModelResult<ModelConfig> {
        let base = ModelConfig {
            kind: ModelKind::NoSeq,
            dim: 32,
            recent: 50,
            retrieved: 50,
            layers: 2,
            heads: 2,
            sim_buckets: true,
            prefix_semids: true,
        };
        let (kind, nosim, noprefix) = match name {
            "no-seq" => (ModelKind::NoSeq, false, false),
            "din" => (ModelKind::Din, false, false),
            "sim-hard" => (ModelKind::SimHard, false, false),
            "muse" => (ModelKind::Muse, false, false),
            "siren-soft" => (ModelKind::SirenSoft, false, false),
            "siren-hard" => (ModelKind::SirenHard, false, false),
            "siren-soft-nosim" => (ModelKind::SirenSoft, true, false),
            "siren-soft-noprefix" => (ModelKind::SirenSoft, false, true),
            "siren-hard-nosim" => (ModelKind::SirenHard, true, false),
            "siren-hard-noprefix" => (ModelKind::SirenHard, false, true),
            _ => {
                return Err(ModelError::invalid(format!(
                    "unknown model {name:?}; one of {}",
                    Self::NAMES.join(", ")
                )))
            }
        };
        Ok(ModelConfig {
            kind,
            sim_buckets: !nosim,
            prefix_semids: !noprefix,
            ..base
        })
    }

    pub fn name(&self) -> String {
        let base = match self.kind {
            ModelKind::NoSeq => "no-seq",
            ModelKind::Din => "din",
            ModelKind::SimHard => "sim-hard",
            ModelKind::Muse => "muse",
            ModelKind::SirenSoft => "siren-soft",
            ModelKind::SirenHard => "siren-hard",
        };
        let mut n = base.to_string();
        if matches!(self.kind, ModelKind::SirenSoft | ModelKind::SirenHard) {
            if !self.sim_buckets {
                n.push_str("-nosim");
            }
            if !self.prefix_semids {
                n.push_str("-noprefix");
            }
        }
        n
    }

    /// The sequences this model reads from the engine.
    pub fn sequences(&self) -> Vec<(SeqKind, usize)> {
        match self.kind {
            ModelKind::NoSeq => vec![],
            ModelKind::Din => vec![(SeqKind::Recent, self.recent)],
            ModelKind::SimHard => vec![(SeqKind::Category, self.retrieved)],
            ModelKind::Muse => vec![
                (SeqKind::Recent, self.recent),
                (SeqKind::Soft, self.retrieved),
            ],
            ModelKind::SirenSoft | ModelKind::SirenHard => {
                let gsu = if self.kind == ModelKind::SirenSoft {
                    SeqKind::Soft
                } else {
                    SeqKind::Hard
                };
                let mut v = vec![(gsu, self.retrieved)];
                if self.recent > 0 {
                    v.push((SeqKind::Recent, self.recent));
                }
                v
            }
        }
    }
}

/// Table sizes, from the vocabularies and the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dims {
    pub items: usize,
    pub categories: usize,
    pub users: usize,
    pub prefix: Vec<usize>,
    /// Dimension of the multimodal embeddings.
    pub emb_dim: usize,
}

impl Dims {
    pub fn new(v: &Vocabs, emb_dim: usize) -> Dims {
        Dims {
            items: v.item.size(),
            categories: v.category.size(),
            users: v.user.size(),
            prefix: v.prefix.iter().map(|p| p.size()).collect(),
            emb_dim,
        }
    }
}

/// A click model: logits `[B]` for a batch. Shared across serving threads.
pub trait Scorer: Send + Sync {
    fn logits(&self, b: &Batch) -> Result<Tensor>;
}

/// ID embedding tables shared by the target and the behaviours.
struct Ids {
    item: Embedding,
    category: Embedding,
    user: Embedding,
    action: Embedding,
    gap: Embedding,
    /// The target's multimodal embedding projected to the model width.
    mm: Linear,
}

impl Ids {
    fn new(p: &Params, d: &Dims, dim: usize) -> Result<Ids> {
        Ok(Ids {
            item: p.embedding("item", d.items, dim)?,
            category: p.embedding("category", d.categories, dim)?,
            user: p.embedding("user", d.users, dim)?,
            action: p.embedding("action", 256, dim)?,
            gap: p.embedding("gap", GAP_BUCKETS, dim)?,
            mm: p.linear("mm", d.emb_dim.max(1), dim)?,
        })
    }

    /// Item + category of the target, `[B, d]`.
    fn target(&self, b: &Batch) -> Result<Tensor> {
        self.item.forward(&b.item)? + self.category.forward(&b.category)?
    }

    /// Item + category + action + time gap of each behaviour, `[B, T, d]`.
    fn behaviours(&self, s: &SeqBatch) -> Result<Tensor> {
        ((self.item.forward(&s.item)? + self.category.forward(&s.category)?)?
            + self.action.forward(&s.action)?)?
            + self.gap.forward(&s.gap)?
    }
}

fn seq(b: &Batch, kind: SeqKind) -> Result<&SeqBatch> {
    b.seq(kind)
        .ok_or_else(|| candle_core::Error::Msg(format!("batch lacks the {kind:?} sequence")))
}

struct NoSeq {
    ids: Ids,
    head: Mlp,
}

impl Scorer for NoSeq {
    fn logits(&self, b: &Batch) -> Result<Tensor> {
        let x = Tensor::cat(
            &[
                &self.ids.item.forward(&b.item)?,
                &self.ids.category.forward(&b.category)?,
                &self.ids.user.forward(&b.user)?,
                &self.ids.mm.forward(&b.emb)?,
            ],
            1,
        )?;
        flat(self.head.forward(&x)?)
    }
}

/// DIN, and SIM (the same ESU over the category search instead of the recent behaviours).
struct Din {
    ids: Ids,
    att: TargetAttention,
    head: Mlp,
    kind: SeqKind,
}

impl Scorer for Din {
    fn logits(&self, b: &Batch) -> Result<Tensor> {
        let s = seq(b, self.kind)?;
        let q = self.ids.target(b)?;
        let pooled = self.att.pool(&q, &self.ids.behaviours(s)?, &s.mask)?;
        let x = Tensor::cat(
            &[
                &q,
                &pooled,
                &self.ids.user.forward(&b.user)?,
                &self.ids.mm.forward(&b.emb)?,
            ],
            1,
        )?;
        flat(self.head.forward(&x)?)
    }
}

/// MUSE (as publicly described): DIN over the short sequence; over the cosine top-K, the
/// similarity-tier histogram and semantic-aware target attention fusing the ID score `s` with the
/// scaled cosine `m` as `b1*s + b2*m + b3*s*m`.
struct Muse {
    ids: Ids,
    din: TargetAttention,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    /// Cosine scale `a` (m = cos / a) and the fusion weights b1..b3.
    a: Tensor,
    b: [Tensor; 3],
    simtier: Linear,
    head: Mlp,
}

impl Scorer for Muse {
    fn logits(&self, bt: &Batch) -> Result<Tensor> {
        let short = seq(bt, SeqKind::Recent)?;
        let long = seq(bt, SeqKind::Soft)?;
        let q = self.ids.target(bt)?;
        let short_keys = self.ids.behaviours(short)?;
        let din = self.din.pool(&q, &short_keys, &short.mask)?;
        // SA-TA over the long (retrieved) sequence.
        let tq = Tensor::cat(
            &[
                &self.ids.item.forward(&bt.item)?,
                &self.ids.category.forward(&bt.category)?,
            ],
            1,
        )?;
        let lk = Tensor::cat(
            &[
                &self.ids.item.forward(&long.item)?,
                &self.ids.category.forward(&long.category)?,
            ],
            2,
        )?;
        let qv = candle_nn::ops::silu(&self.wq.forward(&tq)?)?;
        let kv = candle_nn::ops::silu(&self.wk.forward(&lk)?)?;
        let vv = candle_nn::ops::silu(&self.wv.forward(&lk)?)?;
        let s = kv.matmul(&qv.unsqueeze(2)?)?.squeeze(2)?;
        let m = long.sim.broadcast_div(&self.a)?;
        let logit = ((s.broadcast_mul(&self.b[0])? + m.broadcast_mul(&self.b[1])?)?
            + (&s * &m)?.broadcast_mul(&self.b[2])?)?;
        let w = masked_softmax(&logit, &long.mask)?;
        let sata = w.unsqueeze(1)?.matmul(&vv)?.squeeze(1)?;
        let tier = self.simtier.forward(&long.simtier)?;
        let x = Tensor::cat(
            &[
                &q,
                &self.ids.mm.forward(&bt.emb)?,
                &self.ids.user.forward(&bt.user)?,
                &din,
                &sata,
                &tier,
                &masked_mean(&short_keys, &short.mask)?,
                &masked_mean(&self.ids.behaviours(long)?, &long.mask)?,
            ],
            1,
        )?;
        flat(self.head.forward(&x)?)
    }
}

/// The SIREN ESU. Each retrieved behaviour is a token: its ID embeddings (item, category,
/// action, time gap), plus a coarse similarity-bucket embedding of its cosine with the target,
/// plus one embedding per SemID prefix level and an embedding of how many levels it shares with
/// the target. The target token carries its IDs, its prefix SemIDs and its projected multimodal
/// embedding. A transformer attends over [target; retrieved]; the target's output is the
/// interest vector. The recent behaviours go through target attention (as MUSE's short
/// sequence does) into the head next to it: the GSU finds what is relevant to the target in the
/// whole history, the recent behaviours carry the user's current session, which retrieval by
/// relevance alone misses.
struct Siren {
    ids: Ids,
    kind: SeqKind,
    recent: Option<TargetAttention>,
    sim_bucket: Option<Embedding>,
    prefix: Option<(Vec<Embedding>, Embedding)>,
    target_type: Tensor,
    ln_in: candle_nn::LayerNorm,
    layers: Vec<TransformerLayer>,
    head: Mlp,
}

impl Siren {
    /// Tokens of the retrieved behaviours, `[B, T, d]`.
    fn tokens(&self, s: &SeqBatch) -> Result<Tensor> {
        let mut t = self.ids.behaviours(s)?;
        if let Some(sb) = &self.sim_bucket {
            t = (t + sb.forward(&s.sim_bucket)?)?;
        }
        if let Some((levels, depth)) = &self.prefix {
            t = ((t + sum_levels(levels, &s.prefix)?)? + depth.forward(&s.depth)?)?;
        }
        Ok(t)
    }
}

impl Scorer for Siren {
    fn logits(&self, b: &Batch) -> Result<Tensor> {
        let s = seq(b, self.kind)?;
        let mut tgt = (self.ids.target(b)? + self.ids.mm.forward(&b.emb)?)?
            .broadcast_add(&self.target_type)?;
        if let Some((levels, _)) = &self.prefix {
            tgt = (tgt + sum_levels(levels, &b.prefix)?)?;
        }
        let x = Tensor::cat(&[&tgt.unsqueeze(1)?, &self.tokens(s)?], 1)?;
        let mut x = self.ln_in.forward(&x)?;
        let mask = Tensor::cat(&[&ones(b.size, x.device())?, &s.mask], 1)?;
        let bias = key_bias(&mask)?;
        let (last, rest) = self.layers.split_last().expect("at least one layer");
        for l in rest {
            x = l.forward(&x, &bias)?;
        }
        let interest = last.forward_first(&x, &bias)?;
        let q = self.ids.target(b)?;
        let mut feats = vec![
            interest,
            q.clone(),
            self.ids.user.forward(&b.user)?,
            self.ids.mm.forward(&b.emb)?,
        ];
        if let Some(att) = &self.recent {
            let r = seq(b, SeqKind::Recent)?;
            feats.push(att.pool(&q, &self.ids.behaviours(r)?, &r.mask)?);
        }
        flat(self.head.forward(&Tensor::cat(&feats, 1)?)?)
    }
}

/// Build the model `cfg` with its parameters in `p`.
pub fn build(cfg: &ModelConfig, d: &Dims, p: &Params) -> ModelResult<Box<dyn Scorer>> {
    let dim = cfg.dim;
    let ids = Ids::new(p, d, dim)?;
    let model: Box<dyn Scorer> = match cfg.kind {
        ModelKind::NoSeq => Box::new(NoSeq {
            ids,
            head: Mlp::new(p, "head", &[4 * dim, 64, 32, 1])?,
        }),
        ModelKind::Din | ModelKind::SimHard => Box::new(Din {
            ids,
            att: TargetAttention::new(p, "att", dim)?,
            head: Mlp::new(p, "head", &[4 * dim, 64, 32, 1])?,
            kind: if cfg.kind == ModelKind::Din {
                SeqKind::Recent
            } else {
                SeqKind::Category
            },
        }),
        ModelKind::Muse => Box::new(Muse {
            ids,
            din: TargetAttention::new(p, "din", dim)?,
            wq: p.linear("sata.q", 2 * dim, dim)?,
            wk: p.linear("sata.k", 2 * dim, dim)?,
            wv: p.linear("sata.v", 2 * dim, dim)?,
            a: p.scalar("sata.a", 0.1)?,
            b: [
                p.scalar("sata.b1", 1.0)?,
                p.scalar("sata.b2", 1.0)?,
                p.scalar("sata.b3", 1.0)?,
            ],
            simtier: p.linear_no_bias("simtier", SIMTIER_BINS, dim)?,
            head: Mlp::new(p, "head", &[8 * dim, 128, 64, 1])?,
        }),
        ModelKind::SirenSoft | ModelKind::SirenHard => {
            if cfg.layers == 0 || cfg.heads == 0 || !dim.is_multiple_of(cfg.heads) {
                return Err(ModelError::invalid(format!(
                    "SIREN needs at least one layer and heads dividing dim {dim}"
                )));
            }
            let prefix = if cfg.prefix_semids {
                let levels = d
                    .prefix
                    .iter()
                    .enumerate()
                    .map(|(l, &n)| p.embedding(&format!("prefix{}", l + 1), n, dim))
                    .collect::<Result<Vec<_>>>()?;
                let depth = p.embedding("depth", d.prefix.len() + 1, dim)?;
                Some((levels, depth))
            } else {
                None
            };
            Box::new(Siren {
                kind: if cfg.kind == ModelKind::SirenSoft {
                    SeqKind::Soft
                } else {
                    SeqKind::Hard
                },
                recent: if cfg.recent > 0 {
                    Some(TargetAttention::new(p, "recent_att", dim)?)
                } else {
                    None
                },
                sim_bucket: if cfg.sim_buckets {
                    Some(p.embedding("sim_bucket", SIM_BUCKETS, dim)?)
                } else {
                    None
                },
                prefix,
                target_type: p.vector("target_type", dim)?,
                ln_in: p.layer_norm("ln_in", dim)?,
                layers: (0..cfg.layers)
                    .map(|l| TransformerLayer::new(p, &format!("layer{l}"), dim, cfg.heads))
                    .collect::<Result<_>>()?,
                head: Mlp::new(
                    p,
                    "head",
                    &[(4 + usize::from(cfg.recent > 0)) * dim, 64, 32, 1],
                )?,
                ids,
            })
        }
    };
    Ok(model)
}
