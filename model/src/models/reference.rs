//! MUSE's reference network (`MUSE_DIN` in alimama-tech/MUSE, `model/muse.py`), the one network
//! its code trains for `din`, `sim-hard` and `muse` alike: the method only chooses the long
//! sequence (`muse`: the cosine top-K; `sim-hard`: the newest K of the target's category; `din`:
//! none, its long-sequence columns are zeros). `ModelConfig::reference_net` builds it, so that a
//! comparison with the reference code compares the same architecture.
//!
//! What it computes, from the reference code (our reading; no code copied):
//! - the short sequence (the last K behaviours): target attention with linear query and key
//!   maps, `softmax(k·q)` over every position, the weighted sum of the mapped keys;
//! - the long sequence: semantic-aware target attention (SA-TA), query, key and value
//!   `SiLU(linear)`, logit `b1·s + b2·m + b3·s·m` with `s = k·q` and `m = cos / a`;
//! - the mean of each sequence's `[item, category]` embeddings over its K positions;
//! - a SimTier histogram of each sequence's cosines with the target: per 0.1-wide bin,
//!   `log(1 + count)` times a learned weight of that bin;
//! - the head: an MLP 256-128-64-2 with Dice after every layer, the last included, then a
//!   two-way softmax. Dice here is the reference's `ln_dice` form (`FCRepeat` builds it so):
//!   the gate is a sigmoid of the layer's output normalised per sample (a layer norm without
//!   affine weights), so it has no batch statistics and training and inference compute the same
//!   function.
//!
//! The reference pads a short history with id 0, whose embedding is zero and whose content
//! vector is zero: a padded position takes part in both attentions' softmax with a zero
//! behaviour, counts in the means' denominators, and its cosine 0 counts in the SimTier bin of 0.
//! This module does the same with Siren's padding (masked to zero), and counts in that bin
//! likewise the behaviours whose item has no multimodal vector (the reference's missing content
//! vectors are zero as well). The reference adds 1e-7 to every attention weight after the
//! softmax and clips its probabilities to [1e-7, 1]; both are left out (the trainer computes the
//! loss from logits stably).

use candle_core::{Module, Result, Tensor, D};
use candle_nn::Linear;

use super::layers::{flat, Params, SemanticFusion};
use super::{seq, Backbone, Dims, Ids, ModelConfig, ModelKind, Scorer};
use crate::batch::{Batch, SeqBatch, SIMTIER_BINS};
use crate::error::{ModelError, Result as ModelResult};
use crate::features::{simtier_bin, Retrieval, SeqKind};

/// Width of the reference's ID embeddings (`embedding_dim` in its configs).
pub const REFERENCE_DIM: usize = 16;

/// Hidden widths of the reference's head (`fc_tower`).
const HEAD: [usize; 3] = [256, 128, 64];

/// Bias of every linear layer at creation in the reference (`FCRepeat.reset_parameters`).
const LINEAR_BIAS: f32 = 0.1;

/// Dice's gate slope at creation (`dice_gamma`).
const DICE_GAMMA: f32 = -0.25;

/// The layer norm's epsilon in the reference's Dice (`ln(...)`).
const DICE_EPS: f64 = 1e-12;

/// Whether `kind` has a form in the reference network.
pub fn has_reference_net(kind: ModelKind) -> bool {
    matches!(kind, ModelKind::Din | ModelKind::SimHard | ModelKind::Muse)
}

/// The long sequence `kind` reads in the reference network (`None` for `din`).
pub fn long_sequence(kind: ModelKind) -> Option<SeqKind> {
    match kind {
        ModelKind::SimHard => Some(SeqKind::Retrieved(Retrieval::Category)),
        ModelKind::Muse => Some(SeqKind::Retrieved(Retrieval::Soft)),
        _ => None,
    }
}

/// The settings the reference network does not combine with, as an error.
pub fn check(cfg: &ModelConfig) -> ModelResult<()> {
    let refuse = |what: &str| {
        Err(ModelError::invalid(format!(
            "the reference network (reference_net) {what}"
        )))
    };
    if !has_reference_net(cfg.kind) {
        return refuse("is built for din, sim-hard and muse only");
    }
    if cfg.domain != super::DomainMode::Shared {
        return refuse("has no multi-domain form");
    }
    if cfg.item_labels {
        return refuse("does not read click statistics (-ctr)");
    }
    if cfg.dropout > 0.0 {
        return refuse("has no dropout");
    }
    if !cfg.no_mm_target {
        return refuse("has no projected multimodal target (set no_mm_target)");
    }
    Ok(())
}

/// Dice over the last dimension of `x` `[B, n]`: `x · (p + γ (1 - p))` with `p` the sigmoid of
/// `x` normalised per sample.
struct Dice {
    gamma: Tensor,
}

impl Dice {
    fn new(p: &Params, name: &str, n: usize) -> Result<Dice> {
        Ok(Dice {
            gamma: p.constant(&format!("{name}.gamma"), n, DICE_GAMMA)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let gate = candle_nn::ops::sigmoid(&centred.broadcast_div(&(var + DICE_EPS)?.sqrt()?)?)?;
        let slope = (&gate + (1.0 - &gate)?.broadcast_mul(&self.gamma)?)?;
        x * slope
    }
}

/// The reference's head: linear layers each followed by Dice, the last with two outputs whose
/// two-way softmax is the click probability. Its logit is returned: `y1 - y0`, whose sigmoid is
/// that softmax's second column, so the trainer's binary cross-entropy on it is the reference's
/// two-way cross-entropy.
struct DiceHead {
    layers: Vec<(Linear, Dice)>,
}

impl DiceHead {
    fn new(p: &Params, width: usize) -> Result<DiceHead> {
        let sizes: Vec<usize> = std::iter::once(width)
            .chain(HEAD)
            .chain(std::iter::once(2))
            .collect();
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let name = format!("head.{i}");
                Ok((
                    p.linear_normal(&name, w[0], w[1], LINEAR_BIAS)?,
                    Dice::new(p, &format!("{name}.dice"), w[1])?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(DiceHead { layers })
    }

    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (linear, dice) in &self.layers {
            x = dice.forward(&linear.forward(&x)?)?;
        }
        flat((x.narrow(1, 1, 1)? - x.narrow(1, 0, 1)?)?)
    }
}

/// `[item, category]` of each behaviour, zero at padded positions, `[B, T, 2d]`.
fn behaviours(ids: &Ids, s: &SeqBatch) -> Result<Tensor> {
    ids.behaviours(s)?.broadcast_mul(&s.mask.unsqueeze(2)?)
}

/// Mean over all `T` positions, padding included (zero), as the reference averages.
fn mean_over_positions(x: &Tensor) -> Result<Tensor> {
    x.mean(1)
}

/// Softmax over all `T` positions of `logits` `[B, T]`, then the weighted sum of `values`
/// `[B, T, w]`.
fn attend(logits: &Tensor, values: &Tensor) -> Result<Tensor> {
    let w = candle_nn::ops::softmax_last_dim(logits)?;
    w.unsqueeze(1)?.matmul(values)?.squeeze(1)
}

/// `logits` of `keys` `[B, T, w]` against `query` `[B, w]`: `[B, T]`.
fn dot(keys: &Tensor, query: &Tensor) -> Result<Tensor> {
    keys.matmul(&query.unsqueeze(2)?)?.squeeze(2)
}

/// The short sequence's target attention (`multi_head_att`, one head).
struct ShortAttention {
    query: Linear,
    key: Linear,
}

impl ShortAttention {
    fn new(p: &Params, width: usize) -> Result<ShortAttention> {
        Ok(ShortAttention {
            query: p.linear_normal("short_att.query", width, width, LINEAR_BIAS)?,
            key: p.linear_normal("short_att.key", width, width, LINEAR_BIAS)?,
        })
    }

    fn pool(&self, target: &Tensor, behaviours: &Tensor) -> Result<Tensor> {
        let q = self.query.forward(target)?;
        let k = self.key.forward(behaviours)?;
        attend(&dot(&k, &q)?, &k)
    }
}

/// The long sequence's semantic-aware target attention (`multi_head_att_v2` with the cosine
/// term, one head).
struct SemanticAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    fusion: SemanticFusion,
}

impl SemanticAttention {
    fn new(p: &Params, width: usize) -> Result<SemanticAttention> {
        let lin = |n: &str| p.linear_normal(&format!("sata.{n}"), width, width, LINEAR_BIAS);
        Ok(SemanticAttention {
            query: lin("query")?,
            key: lin("key")?,
            value: lin("value")?,
            fusion: SemanticFusion::new(p)?,
        })
    }

    /// `cosine` `[B, T]`: each behaviour's cosine with the target, 0 at padded positions.
    fn pool(&self, target: &Tensor, behaviours: &Tensor, cosine: &Tensor) -> Result<Tensor> {
        let silu = |l: &Linear, x: &Tensor| candle_nn::ops::silu(&l.forward(x)?);
        let q = silu(&self.query, target)?;
        let k = silu(&self.key, behaviours)?;
        let v = silu(&self.value, behaviours)?;
        let s = dot(&k, &q)?;
        attend(&self.fusion.logits(&s, cosine)?, &v)
    }
}

/// A SimTier histogram: per bin, `log(1 + count)` times the bin's learned weight.
struct SimTier {
    weight: Tensor,
    /// One-hot row of the bin of cosine 0, `[1, SIMTIER_BINS]`.
    zero_bin: Tensor,
}

impl SimTier {
    fn new(p: &Params, name: &str) -> Result<SimTier> {
        let mut zero = vec![0f32; SIMTIER_BINS];
        zero[simtier_bin(0.0)] = 1.0;
        Ok(SimTier {
            weight: p.uniform(&format!("{name}.weight"), SIMTIER_BINS, 0.0, 1.0)?,
            zero_bin: Tensor::from_vec(zero, (1, SIMTIER_BINS), p.device())?,
        })
    }

    /// The sequence's histogram, weighted.
    fn forward(&self, s: &SeqBatch) -> Result<Tensor> {
        self.weighted(&s.simtier, s.mask.dim(1)?)
    }

    /// `simtier` `[B, SIMTIER_BINS]` (`log(1 + count)` over the behaviours with a cosine) with
    /// every other of the `positions` counted in the bin of cosine 0, weighted.
    fn weighted(&self, simtier: &Tensor, positions: usize) -> Result<Tensor> {
        // The counts are whole numbers; rounding drops the exp/log round trip's error, so a
        // full sequence adds exactly nothing to the bin of 0.
        let counts = (simtier.exp()? - 1.0)?.round()?;
        let uncounted = (counts.sum_keepdim(1)?.neg()? + positions as f64)?.relu()?;
        let counts = (counts + uncounted.broadcast_mul(&self.zero_bin)?)?;
        (counts + 1.0)?.log()?.broadcast_mul(&self.weight)
    }
}

/// What the reference's long sequence gives the head: SA-TA's output, the mean of its
/// behaviours and its SimTier histogram.
struct LongBranch {
    kind: SeqKind,
    attention: SemanticAttention,
    simtier: SimTier,
}

/// The reference network's features before the head.
struct MuseDin {
    ids: Ids,
    short_attention: ShortAttention,
    short_simtier: SimTier,
    /// Absent for `din`, whose long-sequence columns are zeros.
    long: Option<LongBranch>,
    /// Width of `[item, category]`.
    pair: usize,
}

impl MuseDin {
    /// SA-TA's output, the mean and the SimTier histogram of the long sequence; zeros for
    /// `din`, as the reference zeroes them.
    fn long_features(&self, b: &Batch, target: &Tensor) -> Result<[Tensor; 3]> {
        let Some(long) = &self.long else {
            let zeros = |w: usize| Tensor::zeros((b.size, w), target.dtype(), target.device());
            return Ok([zeros(self.pair)?, zeros(self.pair)?, zeros(SIMTIER_BINS)?]);
        };
        let s = seq(b, long.kind)?;
        let keys = behaviours(&self.ids, s)?;
        let cosine = (&s.sim * &s.mask)?;
        Ok([
            long.attention.pool(target, &keys, &cosine)?,
            mean_over_positions(&keys)?,
            long.simtier.forward(s)?,
        ])
    }
}

impl Backbone for MuseDin {
    fn features(&self, b: &Batch) -> Result<Tensor> {
        let target = self.ids.target(b)?;
        let short = seq(b, SeqKind::Recent)?;
        let short_keys = behaviours(&self.ids, short)?;
        let [long_att, long_mean, long_tier] = self.long_features(b, &target)?;
        let mut feats = vec![
            self.short_attention.pool(&target, &short_keys)?,
            long_att,
            long_mean,
            mean_over_positions(&short_keys)?,
            target,
        ];
        feats.extend(self.ids.user(b)?);
        feats.extend([self.short_simtier.forward(short)?, long_tier]);
        Tensor::cat(&feats, 1)
    }
}

/// The reference network: [`MuseDin`]'s features through the Dice head.
struct ReferenceNet {
    body: MuseDin,
    head: DiceHead,
}

impl Scorer for ReferenceNet {
    fn logits(&self, b: &Batch) -> Result<Tensor> {
        self.head.logits(&self.body.features(b)?)
    }
}

/// Build the reference network for `cfg` (checked by [`check`]).
pub(crate) fn build(cfg: &ModelConfig, d: &Dims, p: &Params) -> ModelResult<Box<dyn Scorer>> {
    check(cfg)?;
    let pair = 2 * cfg.dim;
    let long = long_sequence(cfg.kind)
        .map(|kind| {
            Ok::<_, candle_core::Error>(LongBranch {
                kind,
                attention: SemanticAttention::new(p, pair)?,
                simtier: SimTier::new(p, "long_simtier")?,
            })
        })
        .transpose()?;
    let body = MuseDin {
        ids: Ids::new(p, d, cfg)?,
        short_attention: ShortAttention::new(p, pair)?,
        short_simtier: SimTier::new(p, "short_simtier")?,
        long,
        pair,
    };
    // Short and long attention, long and short means, the target, the user; two histograms.
    let width = 5 * pair + usize::from(!cfg.no_user_id) * cfg.dim + 2 * SIMTIER_BINS;
    Ok(Box::new(ReferenceNet {
        head: DiceHead::new(p, width)?,
        body,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn row(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Dice is `x (p + γ (1 - p))` with `p` the sigmoid of the per-sample normalised `x`: the
    /// same function of one sample whatever the batch, so inference needs no running statistics.
    #[test]
    fn dice_gates_each_sample_by_its_own_normalised_values() {
        let dev = Device::Cpu;
        let p = Params::new(1, &dev);
        let dice = Dice::new(&p, "d", 2).unwrap();
        let x = Tensor::new(&[[1f32, 3.0], [-2.0, -2.0]], &dev).unwrap();
        let got = row(&dice.forward(&x).unwrap());
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let want = |v: f64, z: f64| (v * (sig(z) + DICE_GAMMA as f64 * (1.0 - sig(z)))) as f32;
        // First row: mean 2, variance 1, so the normalised values are -1 and 1; the second
        // row has no spread, so both gates are sigmoid(0).
        let expected = [
            want(1.0, -1.0),
            want(3.0, 1.0),
            want(-2.0, 0.0),
            want(-2.0, 0.0),
        ];
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-6, "{got:?} vs {expected:?}");
        }
        let alone = row(&dice.forward(&x.narrow(0, 0, 1).unwrap()).unwrap());
        assert_eq!(alone, got[..2]);
    }

    /// Positions the histogram did not count (padding, behaviours without a vector) count in
    /// the bin of cosine 0, as the reference's zero vectors do.
    #[test]
    fn simtier_counts_uncounted_positions_at_cosine_zero() {
        let dev = Device::Cpu;
        let p = Params::new(1, &dev);
        let tier = SimTier::new(&p, "t").unwrap();
        let mut counts = [0f32; SIMTIER_BINS];
        counts[15] = 2.0;
        counts[3] = 1.0;
        let logs: Vec<f32> = counts.iter().map(|c| c.ln_1p()).collect();
        let simtier = Tensor::from_vec(logs, (1, SIMTIER_BINS), &dev).unwrap();
        let got = row(&tier.weighted(&simtier, 5).unwrap());
        let weight = row(&tier.weight);
        counts[simtier_bin(0.0)] += 2.0;
        for (b, c) in counts.iter().enumerate() {
            let want = c.ln_1p() * weight[b];
            assert!(
                (got[b] - want).abs() < 1e-6,
                "bin {b}: {} vs {want}",
                got[b]
            );
        }
    }
}
