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
//! Any of them followed by `-ctr` also reads the target's click statistics in training
//! (`crate::labels`), projected to the model width next to its other head inputs.

pub mod domain;
pub mod layers;
pub mod reference;
pub mod table;

use candle_core::{Module, Result, Tensor};
use candle_nn::Linear;
use serde::{Deserialize, Serialize};
use table::EmbeddingTable;

use crate::batch::{Batch, SeqBatch, Vocabs, GAP_BUCKETS, SIMTIER_BINS, SIM_BUCKETS};
use crate::error::{ModelError, Result as ModelResult};
use crate::features::{Retrieval, SeqKind};
use layers::{
    flat, key_bias, masked_mean, masked_softmax, ones, sum_levels, Mlp, Params, SemanticFusion,
    TargetAttention, TransformerLayer,
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
    /// How the model treats the impression's domain.
    #[serde(default)]
    pub domain: DomainMode,
    /// Experts of MMoE and Crocodile (for Crocodile, also its embedding tables).
    #[serde(default = "default_experts")]
    pub experts: usize,
    /// Weight of Crocodile's cross-expert covariance penalty in the loss.
    #[serde(default)]
    pub cov_weight: f64,
    /// SIREN: feed the head the evidence features (`features::HistorySummary`): how much of
    /// the whole as-of history matches the target by category and by each SemID prefix, how
    /// recently, and the histogram of every behaviour's cosine with the target.
    #[serde(default)]
    pub evidence: bool,
    /// Dropout on the head's input while training (0 = none).
    #[serde(default)]
    pub dropout: f32,
    /// Leave the behaviours' action (e.g. the rating) out of their tokens, as MUSE's
    /// reference code does.
    #[serde(default)]
    pub no_action: bool,
    /// Leave the time gap between a behaviour and the impression out of its token.
    #[serde(default)]
    pub no_gap: bool,
    /// Leave the user-id embedding out of the head (MUSE's reference models have one; the
    /// switch measures what it adds). Not serialised when off, so that checkpoints written
    /// before it keep their canonical form.
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_user_id: bool,
    /// Leave the target's multimodal embedding, projected to the model width, out of the head
    /// and of SIREN's target token, as MUSE's reference code does (its multimodal vectors
    /// enter only through cosines). Not serialised when off.
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_mm_target: bool,
    /// Feed the head the target item's click statistics in training (`crate::labels`), any
    /// model (the name suffix `-ctr`). Not serialised when off, so that checkpoints written
    /// before it keep their canonical form.
    #[serde(default, skip_serializing_if = "is_false")]
    pub item_labels: bool,
    /// Build `din`, `sim-hard` and `muse` as the one network MUSE's reference code trains for
    /// all three ([`reference`]): the method only chooses its long sequence. Not serialised
    /// when off.
    #[serde(default, skip_serializing_if = "is_false")]
    pub reference_net: bool,
    /// SIREN: leave the target's item embedding out of the head and out of the recent branch's
    /// query (its item half is zero); the target item then reaches the head only through the
    /// transformer's target token (and the click statistics with `-ctr`). With the item
    /// embedding read directly by the head, SIREN memorises item ids within an epoch on the
    /// synthetic set; without it, it overfits two epochs later, at a validation GAUC within
    /// the seed spread of the default's (docs/MODELS.md, "SIREN against SIM on item quality"),
    /// so it is off by default (`--no-head-item`). Not serialised when off, so that
    /// checkpoints written before it keep their canonical form.
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_head_item: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// How a model uses the domain an impression was shown in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DomainMode {
    /// One model for all domains, which ignores the domain.
    #[default]
    Shared,
    /// The backbone and one MLP shared by all domains, then a tower per domain.
    SharedBottom,
    /// Multi-gate mixture of experts: experts over one set of embeddings, a softmax gate per
    /// domain (one scalar per expert, from the sample's features), a tower per domain.
    Mmoe,
    /// Crocodile: one embedding table set and backbone per expert, a cross-expert covariance
    /// penalty, a gate per element of each expert's output from the domain's embedding, a tower
    /// per domain.
    Crocodile,
}

impl DomainMode {
    fn suffix(self) -> Option<&'static str> {
        match self {
            DomainMode::Shared => None,
            DomainMode::SharedBottom => Some("shared-bottom"),
            DomainMode::Mmoe => Some("mmoe"),
            DomainMode::Crocodile => Some("crocodile"),
        }
    }
}

/// The name suffix of a model that reads its target's click statistics.
pub const ITEM_LABELS_SUFFIX: &str = "-ctr";

/// Experts (and Crocodile's embedding tables) unless a name says otherwise.
pub const DEFAULT_EXPERTS: usize = 3;
/// Crocodile's covariance weight unless a name says otherwise: the best validation GAUC of the
/// sweep in docs/MULTIDOMAIN.md.
pub const DEFAULT_COV_WEIGHT: f64 = 0.1;
/// Bounds on the experts (each Crocodile expert is a whole backbone with its own tables).
pub const MAX_EXPERTS: usize = 8;

fn default_experts() -> usize {
    DEFAULT_EXPERTS
}

/// The number of experts a model may have: 1 to [`MAX_EXPERTS`].
pub fn check_experts(m: usize) -> ModelResult<()> {
    if (1..=MAX_EXPERTS).contains(&m) {
        Ok(())
    } else {
        Err(ModelError::invalid(format!(
            "experts must be 1 to {MAX_EXPERTS}, not {m}"
        )))
    }
}

/// A covariance weight is finite and not negative.
pub fn valid_cov_weight(w: f64) -> bool {
    w.is_finite() && w >= 0.0
}

impl ModelConfig {
    /// Names accepted by `siren train --model`.
    pub const NAMES: [&'static str; 12] = [
        "no-seq",
        "din",
        "sim-hard",
        "muse",
        "siren-soft",
        "siren-hard",
        "siren-soft-nosim",
        "siren-soft-noprefix",
        "siren-soft-noev",
        "siren-hard-noev",
        "siren-hard-nosim",
        "siren-hard-noprefix",
    ];

    /// A model by name: one of [`Self::NAMES`], optionally followed by `+` and a multi-domain
    /// form: `shared-bottom`, `mmoe`, `crocodile`, with options `-m<experts>` (MMoE and
    /// Crocodile), `-cov<weight>` or `-nocov` (Crocodile). `din+crocodile-m2-cov0.05`.
    pub fn named(name: &str) -> ModelResult<ModelConfig> {
        let Some((base, mode)) = name.split_once('+') else {
            return Self::single(name);
        };
        let mut cfg = Self::single(base)?;
        let bad = || {
            ModelError::invalid(format!(
                "unknown multi-domain form {mode:?}; one of shared-bottom, mmoe, crocodile, \
                 with -m<experts> (mmoe, crocodile) and -cov<weight> or -nocov (crocodile)"
            ))
        };
        let (kind, opts) = [
            DomainMode::SharedBottom,
            DomainMode::Mmoe,
            DomainMode::Crocodile,
        ]
        .into_iter()
        .find_map(|k| {
            let s = k.suffix().expect("multi-domain forms have one");
            mode.strip_prefix(s).map(|rest| (k, rest))
        })
        .ok_or_else(bad)?;
        cfg.domain = kind;
        if kind == DomainMode::Crocodile {
            cfg.cov_weight = DEFAULT_COV_WEIGHT;
        }
        for opt in opts.split('-').filter(|o| !o.is_empty()) {
            if let Some(m) = opt
                .strip_prefix('m')
                .filter(|_| kind != DomainMode::SharedBottom)
            {
                cfg.experts = m.parse().map_err(|_| bad())?;
                check_experts(cfg.experts)?;
            } else if opt == "nocov" && kind == DomainMode::Crocodile {
                cfg.cov_weight = 0.0;
            } else if let Some(w) = opt
                .strip_prefix("cov")
                .filter(|_| kind == DomainMode::Crocodile)
            {
                cfg.cov_weight = w.parse().map_err(|_| bad())?;
                if !valid_cov_weight(cfg.cov_weight) {
                    return Err(bad());
                }
            } else {
                return Err(bad());
            }
        }
        Ok(cfg)
    }

    /// A model of [`Self::NAMES`], with the target's click statistics when followed by
    /// `-ctr` (`sim-hard-ctr`).
    fn single(name: &str) -> ModelResult<ModelConfig> {
        match name.strip_suffix(ITEM_LABELS_SUFFIX) {
            Some(base) => Ok(ModelConfig {
                item_labels: true,
                ..Self::base(base)?
            }),
            None => Self::base(name),
        }
    }

    fn base(name: &str) -> ModelResult<ModelConfig> {
        let base = ModelConfig {
            kind: ModelKind::NoSeq,
            dim: 32,
            recent: 50,
            retrieved: 50,
            layers: 2,
            heads: 2,
            sim_buckets: true,
            prefix_semids: true,
            domain: DomainMode::Shared,
            experts: DEFAULT_EXPERTS,
            cov_weight: 0.0,
            evidence: false,
            dropout: 0.0,
            no_action: false,
            no_gap: false,
            no_user_id: false,
            no_mm_target: false,
            item_labels: false,
            reference_net: false,
            no_head_item: false,
        };
        // (kind, sim buckets, prefix SemIDs, evidence)
        let (kind, sim, prefix, evidence) = match name {
            "no-seq" => (ModelKind::NoSeq, true, true, false),
            "din" => (ModelKind::Din, true, true, false),
            "sim-hard" => (ModelKind::SimHard, true, true, false),
            "muse" => (ModelKind::Muse, true, true, false),
            "siren-soft" => (ModelKind::SirenSoft, true, true, true),
            "siren-hard" => (ModelKind::SirenHard, true, true, true),
            "siren-soft-nosim" => (ModelKind::SirenSoft, false, true, true),
            "siren-soft-noprefix" => (ModelKind::SirenSoft, true, false, true),
            "siren-hard-nosim" => (ModelKind::SirenHard, false, true, true),
            "siren-hard-noprefix" => (ModelKind::SirenHard, true, false, true),
            "siren-soft-noev" => (ModelKind::SirenSoft, true, true, false),
            "siren-hard-noev" => (ModelKind::SirenHard, true, true, false),
            _ => {
                return Err(ModelError::invalid(format!(
                    "unknown model {name:?}; one of {}",
                    Self::NAMES.join(", ")
                )))
            }
        };
        Ok(ModelConfig {
            kind,
            sim_buckets: sim,
            prefix_semids: prefix,
            evidence,
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
            if !self.evidence {
                n.push_str("-noev");
            }
        }
        if self.item_labels {
            n.push_str(ITEM_LABELS_SUFFIX);
        }
        if let Some(s) = self.domain.suffix() {
            n.push('+');
            n.push_str(s);
            if self.domain != DomainMode::SharedBottom && self.experts != DEFAULT_EXPERTS {
                n.push_str(&format!("-m{}", self.experts));
            }
            if self.domain == DomainMode::Crocodile {
                if self.cov_weight == 0.0 {
                    n.push_str("-nocov");
                } else if self.cov_weight != DEFAULT_COV_WEIGHT {
                    n.push_str(&format!("-cov{}", self.cov_weight));
                }
            }
        }
        n
    }

    /// How many columns of the model width the user id and the projected multimodal target
    /// give the head: 0 to 2 (fewer with `no_user_id`, `no_mm_target`).
    pub fn user_and_mm_columns(&self) -> usize {
        usize::from(!self.no_user_id) + usize::from(!self.no_mm_target)
    }

    /// This model as MUSE's reference network ([`reference`]) when it has a form there (`din`,
    /// `sim-hard`, `muse`): the reference's embedding width, and no projected multimodal target
    /// (the reference has none). Other models are returned unchanged.
    pub fn with_reference_net(self) -> ModelConfig {
        if !reference::has_reference_net(self.kind) {
            return self;
        }
        ModelConfig {
            reference_net: true,
            dim: reference::REFERENCE_DIM,
            no_mm_target: true,
            ..self
        }
    }

    /// The sequences this model reads from the engine.
    pub fn sequences(&self) -> Vec<(SeqKind, usize)> {
        if self.reference_net {
            let long = reference::long_sequence(self.kind).map(|k| (k, self.retrieved));
            return std::iter::once((SeqKind::Recent, self.recent))
                .chain(long)
                .collect();
        }
        match self.kind {
            ModelKind::NoSeq => vec![],
            ModelKind::Din => vec![(SeqKind::Recent, self.recent)],
            ModelKind::SimHard => vec![(SeqKind::Retrieved(Retrieval::Category), self.retrieved)],
            ModelKind::Muse => vec![
                (SeqKind::Recent, self.recent),
                (SeqKind::Retrieved(Retrieval::Soft), self.retrieved),
            ],
            ModelKind::SirenSoft | ModelKind::SirenHard => {
                let gsu = if self.kind == ModelKind::SirenSoft {
                    SeqKind::Retrieved(Retrieval::Soft)
                } else {
                    SeqKind::Retrieved(Retrieval::Hard)
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
    /// Rows of the domain tables (row 0 unused: unknown domains map to the head domain).
    #[serde(default = "one")]
    pub domains: usize,
}

fn one() -> usize {
    1
}

impl Dims {
    pub fn new(v: &Vocabs, emb_dim: usize) -> Dims {
        Dims {
            items: v.item.size(),
            categories: v.category.size(),
            users: v.user.size(),
            prefix: v.prefix.iter().map(|p| p.size()).collect(),
            emb_dim,
            domains: v.domain.size(),
        }
    }
}

/// A click model: logits `[B]` for a batch. Shared across serving threads.
pub trait Scorer: Send + Sync {
    fn logits(&self, b: &Batch) -> Result<Tensor>;

    /// The logits and, for models that have one, a regulariser the trainer adds to the loss
    /// with [`ModelConfig::cov_weight`] (Crocodile's cross-expert covariance penalty).
    fn logits_and_penalty(&self, b: &Batch) -> Result<(Tensor, Option<Tensor>)> {
        Ok((self.logits(b)?, None))
    }
}

/// What a model computes before its head: a feature vector `[B, width]` per sample.
pub(crate) trait Backbone: Send + Sync {
    fn features(&self, b: &Batch) -> Result<Tensor>;
}

/// ID embedding tables shared by the target and the behaviours.
struct Ids {
    item: EmbeddingTable,
    category: EmbeddingTable,
    /// Absent when the config leaves the user id out.
    user: Option<EmbeddingTable>,
    /// Behaviour context: the action and the time gap (absent when the config leaves them out).
    action: Option<EmbeddingTable>,
    gap: Option<EmbeddingTable>,
    /// The target's multimodal embedding projected to the model width (absent when the config
    /// leaves it out).
    mm: Option<Linear>,
}

impl Ids {
    fn new(p: &Params, d: &Dims, cfg: &ModelConfig) -> Result<Ids> {
        let dim = cfg.dim;
        Ok(Ids {
            item: p.embedding("item", d.items, dim)?,
            category: p.embedding("category", d.categories, dim)?,
            user: (!cfg.no_user_id)
                .then(|| p.embedding("user", d.users, dim))
                .transpose()?,
            action: (!cfg.no_action)
                .then(|| p.embedding("action", 256, dim))
                .transpose()?,
            gap: (!cfg.no_gap)
                .then(|| p.embedding("gap", GAP_BUCKETS, dim))
                .transpose()?,
            mm: (!cfg.no_mm_target)
                .then(|| p.linear("mm", d.emb_dim.max(1), dim))
                .transpose()?,
        })
    }

    /// The user's embedding `[B, d]`, when the model has one.
    fn user(&self, b: &Batch) -> Result<Option<Tensor>> {
        self.user.as_ref().map(|u| u.forward(&b.user)).transpose()
    }

    /// The target's projected multimodal embedding `[B, d]`, when the model reads it.
    fn mm(&self, b: &Batch) -> Result<Option<Tensor>> {
        self.mm.as_ref().map(|m| m.forward(&b.emb)).transpose()
    }

    /// The user's embedding, then the target's projected multimodal embedding, each when the
    /// model has it: the head's context columns of every model but MUSE (which has them in
    /// the other order).
    fn context(&self, b: &Batch) -> Result<Vec<Tensor>> {
        Ok(self.user(b)?.into_iter().chain(self.mm(b)?).collect())
    }

    /// `x` plus each behaviour's action and time-gap embeddings, when the model reads them.
    fn with_context(&self, mut x: Tensor, s: &SeqBatch) -> Result<Tensor> {
        if let Some(a) = &self.action {
            x = (x + a.forward(&s.action)?)?;
        }
        if let Some(g) = &self.gap {
            x = (x + g.forward(&s.gap)?)?;
        }
        Ok(x)
    }

    /// Item + category of the target, `[B, d]`: the target token of the SIREN transformer,
    /// whose tokens sum their embeddings.
    fn target_sum(&self, b: &Batch) -> Result<Tensor> {
        self.item.forward(&b.item)? + self.category.forward(&b.category)?
    }

    /// Item + category + action + time gap of each behaviour, `[B, T, d]` (SIREN's tokens).
    fn behaviours_sum(&self, s: &SeqBatch) -> Result<Tensor> {
        let ids = (self.item.forward(&s.item)? + self.category.forward(&s.category)?)?;
        self.with_context(ids, s)
    }

    /// `[item, category]` of the target, `[B, 2d]`. Item and category stay in separate halves
    /// so that a product with a behaviour's key compares category with category and item with
    /// item; summed, the two mix, and target attention over ID embeddings does not learn to
    /// match categories (DIN was no better than no sequence at all).
    fn target(&self, b: &Batch) -> Result<Tensor> {
        Tensor::cat(
            &[
                self.item.forward(&b.item)?,
                self.category.forward(&b.category)?,
            ],
            1,
        )
    }

    /// `[0, category]` of the target, `[B, 2d]`: [`Ids::target`] with the item half zero.
    fn target_without_item(&self, b: &Batch) -> Result<Tensor> {
        let category = self.category.forward(&b.category)?;
        Tensor::cat(&[&category.zeros_like()?, &category], 1)
    }

    /// `[item + action + time gap, category]` of each behaviour, `[B, T, 2d]`.
    fn behaviours(&self, s: &SeqBatch) -> Result<Tensor> {
        let item = self.with_context(self.item.forward(&s.item)?, s)?;
        Tensor::cat(&[item, self.category.forward(&s.category)?], 2)
    }
}

/// DIN's interest branch: target attention over one sequence of behaviours, then the target,
/// the pooled interest and their element-wise product, `[B, 6d]`. The product hands the head
/// the match between the target and what the user did as a feature it reads linearly; an MLP
/// over the concatenation alone has to learn a product from data.
struct TargetInterest {
    att: TargetAttention,
}

impl TargetInterest {
    const WIDTH: usize = 6;

    fn new(p: &Params, name: &str, dim: usize) -> Result<TargetInterest> {
        Ok(TargetInterest {
            att: TargetAttention::new(p, name, 2 * dim)?,
        })
    }

    fn features(&self, ids: &Ids, q: &Tensor, s: &SeqBatch) -> Result<Tensor> {
        let pooled = self.att.pool(q, &ids.behaviours(s)?, &s.mask)?;
        Tensor::cat(&[q, &pooled, &(q * &pooled)?], 1)
    }
}

fn seq(b: &Batch, kind: SeqKind) -> Result<&SeqBatch> {
    b.seq(kind)
        .ok_or_else(|| candle_core::Error::Msg(format!("batch lacks the {kind:?} sequence")))
}

struct NoSeq {
    ids: Ids,
}

impl Backbone for NoSeq {
    fn features(&self, b: &Batch) -> Result<Tensor> {
        let mut feats = vec![
            self.ids.item.forward(&b.item)?,
            self.ids.category.forward(&b.category)?,
        ];
        feats.extend(self.ids.context(b)?);
        Tensor::cat(&feats, 1)
    }
}

/// DIN, and SIM (the same ESU over the category search instead of the recent behaviours).
struct Din {
    ids: Ids,
    interest: TargetInterest,
    kind: SeqKind,
}

impl Backbone for Din {
    fn features(&self, b: &Batch) -> Result<Tensor> {
        let s = seq(b, self.kind)?;
        let q = self.ids.target(b)?;
        let mut feats = vec![self.interest.features(&self.ids, &q, s)?];
        feats.extend(self.ids.context(b)?);
        Tensor::cat(&feats, 1)
    }
}

/// MUSE (as publicly described): DIN over the short sequence; over the cosine top-K, the
/// similarity-tier histogram and semantic-aware target attention fusing the ID score `s` with the
/// scaled cosine `m` as `b1*s + b2*m + b3*s*m`.
struct Muse {
    ids: Ids,
    din: TargetInterest,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    fusion: SemanticFusion,
    simtier: Linear,
}

impl Backbone for Muse {
    fn features(&self, bt: &Batch) -> Result<Tensor> {
        let short = seq(bt, SeqKind::Recent)?;
        let long = seq(bt, SeqKind::Retrieved(Retrieval::Soft))?;
        let tq = self.ids.target(bt)?;
        let short_keys = self.ids.behaviours(short)?;
        let din = self.din.features(&self.ids, &tq, short)?;
        // SA-TA over the long (retrieved) sequence.
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
        let logit = self.fusion.logits(&s, &long.sim)?;
        let w = masked_softmax(&logit, &long.mask)?;
        let sata = w.unsqueeze(1)?.matmul(&vv)?.squeeze(1)?;
        let tier = self.simtier.forward(&long.simtier)?;
        // The projected embedding comes first here, then the user (their order since MUSE's
        // first checkpoints).
        let mut feats: Vec<Tensor> = self.ids.mm(bt)?.into_iter().collect();
        feats.extend(self.ids.user(bt)?);
        feats.extend([
            din,
            sata,
            tier,
            masked_mean(&short_keys, &short.mask)?,
            masked_mean(&self.ids.behaviours(long)?, &long.mask)?,
        ]);
        Tensor::cat(&feats, 1)
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
    recent: Option<TargetInterest>,
    sim_bucket: Option<EmbeddingTable>,
    prefix: Option<(Vec<EmbeddingTable>, EmbeddingTable)>,
    target_type: Tensor,
    ln_in: candle_nn::LayerNorm,
    layers: Vec<TransformerLayer>,
    /// Evidence features `[B, E]` to the model width.
    evidence: Option<Linear>,
    /// Leave the target's item embedding out of the head and the recent branch's query
    /// ([`ModelConfig::no_head_item`]).
    no_head_item: bool,
}

impl Siren {
    /// Tokens of the retrieved behaviours, `[B, T, d]`.
    fn tokens(&self, s: &SeqBatch) -> Result<Tensor> {
        let mut t = self.ids.behaviours_sum(s)?;
        if let Some(sb) = &self.sim_bucket {
            t = (t + sb.forward(&s.sim_bucket)?)?;
        }
        if let Some((levels, depth)) = &self.prefix {
            t = ((t + sum_levels(levels, &s.prefix)?)? + depth.forward(&s.depth)?)?;
        }
        Ok(t)
    }
}

impl Backbone for Siren {
    fn features(&self, b: &Batch) -> Result<Tensor> {
        let s = seq(b, self.kind)?;
        let mut tgt = self.ids.target_sum(b)?;
        if let Some(mm) = self.ids.mm(b)? {
            tgt = (tgt + mm)?;
        }
        tgt = tgt.broadcast_add(&self.target_type)?;
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
        let q = if self.no_head_item {
            self.ids.target_without_item(b)?
        } else {
            self.ids.target(b)?
        };
        let mut feats = vec![interest];
        feats.extend(self.ids.context(b)?);
        match &self.recent {
            Some(branch) => feats.push(branch.features(&self.ids, &q, seq(b, SeqKind::Recent)?)?),
            None => feats.push(q),
        }
        if let Some(ev) = &self.evidence {
            let e = b
                .evidence
                .as_ref()
                .ok_or_else(|| candle_core::Error::Msg("batch lacks evidence features".into()))?;
            feats.push(ev.forward(e)?.relu()?);
        }
        Tensor::cat(&feats, 1)
    }
}

/// A backbone followed by the target's click statistics (`crate::labels`) projected to the
/// model width with ReLU: `[features, relu(W x + b)]`.
struct WithItemLabels {
    inner: Box<dyn Backbone>,
    proj: Linear,
}

impl Backbone for WithItemLabels {
    fn features(&self, b: &Batch) -> Result<Tensor> {
        let x = b
            .item_labels
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("batch lacks item click statistics".into()))?;
        Tensor::cat(&[self.inner.features(b)?, self.proj.forward(x)?.relu()?], 1)
    }
}

/// A backbone with the widths of the head it gets when it scores alone.
pub(crate) struct Body {
    pub net: Box<dyn Backbone>,
    /// Width of its features.
    pub width: usize,
    /// Hidden widths of its single-domain head.
    pub head: Vec<usize>,
}

/// Build the backbone of `cfg` (its own embedding tables included) with its parameters in `p`.
pub(crate) fn backbone(cfg: &ModelConfig, d: &Dims, p: &Params) -> ModelResult<Body> {
    let dim = cfg.dim;
    let ids = Ids::new(p, d, cfg)?;
    let context = cfg.user_and_mm_columns();
    let (net, width, head): (Box<dyn Backbone>, usize, Vec<usize>) = match cfg.kind {
        ModelKind::NoSeq => (Box::new(NoSeq { ids }), (2 + context) * dim, vec![64, 32]),
        ModelKind::Din | ModelKind::SimHard => (
            Box::new(Din {
                ids,
                interest: TargetInterest::new(p, "att", dim)?,
                kind: if cfg.kind == ModelKind::Din {
                    SeqKind::Recent
                } else {
                    SeqKind::Retrieved(Retrieval::Category)
                },
            }),
            (TargetInterest::WIDTH + context) * dim,
            vec![64, 32],
        ),
        ModelKind::Muse => (
            Box::new(Muse {
                ids,
                din: TargetInterest::new(p, "din", dim)?,
                wq: p.linear("sata.q", 2 * dim, dim)?,
                wk: p.linear("sata.k", 2 * dim, dim)?,
                wv: p.linear("sata.v", 2 * dim, dim)?,
                fusion: SemanticFusion::new(p)?,
                simtier: p.linear_no_bias("simtier", SIMTIER_BINS, dim)?,
            }),
            (TargetInterest::WIDTH + 6 + context) * dim,
            vec![128, 64],
        ),
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
            let net = Siren {
                kind: if cfg.kind == ModelKind::SirenSoft {
                    SeqKind::Retrieved(Retrieval::Soft)
                } else {
                    SeqKind::Retrieved(Retrieval::Hard)
                },
                recent: if cfg.recent > 0 {
                    Some(TargetInterest::new(p, "recent_att", dim)?)
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
                ids,
                evidence: if cfg.evidence {
                    Some(p.linear(
                        "evidence",
                        crate::features::evidence_len(d.prefix.len()),
                        dim,
                    )?)
                } else {
                    None
                },
                no_head_item: cfg.no_head_item,
            };
            (
                Box::new(net),
                (1 + context
                    + if cfg.recent > 0 {
                        TargetInterest::WIDTH
                    } else {
                        2
                    }
                    + usize::from(cfg.evidence))
                    * dim,
                vec![64, 32],
            )
        }
    };
    if cfg.item_labels {
        let proj = p.linear("item_labels", crate::labels::ITEM_LABEL_FEATURES, dim)?;
        return Ok(Body {
            net: Box::new(WithItemLabels { inner: net, proj }),
            width: width + dim,
            head,
        });
    }
    Ok(Body { net, width, head })
}

/// A backbone and an MLP head: the single-domain model (`DomainMode::Shared`).
struct Single {
    body: Box<dyn Backbone>,
    head: Mlp,
}

impl Scorer for Single {
    fn logits(&self, b: &Batch) -> Result<Tensor> {
        flat(self.head.forward(&self.body.features(b)?)?)
    }
}

/// Build the model `cfg` with its parameters in `p`.
pub fn build(cfg: &ModelConfig, d: &Dims, p: &Params) -> ModelResult<Box<dyn Scorer>> {
    if cfg.reference_net {
        return reference::build(cfg, d, p);
    }
    if cfg.domain != DomainMode::Shared {
        return Ok(Box::new(domain::MultiDomain::new(cfg, d, p)?));
    }
    let body = backbone(cfg, d, p)?;
    let mut sizes = vec![body.width];
    sizes.extend(&body.head);
    sizes.push(1);
    Ok(Box::new(Single {
        head: Mlp::new(p, "head", &sizes)?.with_dropout(cfg.dropout),
        body: body.net,
    }))
}
