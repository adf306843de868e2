//! Multi-domain models: one model serving several domains (scenarios, surfaces), with a tower per
//! domain over shared or mixed experts.
//!
//! | mode | embeddings and backbone | experts | gate | towers |
//! |---|---|---|---|---|
//! | shared-bottom | one | one MLP | none | one per domain |
//! | MMoE | one | M MLPs over the same features | per domain, one softmax weight per expert, from the sample's features | one per domain |
//! | Crocodile | M (one per expert) | M MLPs, expert e over table set e | per domain, a softmax over experts for every element of the expert output, from the domain's embedding | one per domain |
//!
//! Crocodile adds a cross-expert covariance penalty ([`cross_covariance_penalty`]) that pushes
//! the experts, and through them their embedding tables, to represent different things: with
//! several tables but no penalty, the tables can learn the same few directions, and the
//! multi-embedding buys nothing.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::Linear;

use super::table::EmbeddingTable;

use super::layers::{flat, Mlp, Params};
use super::{backbone, check_experts, Backbone, Dims, DomainMode, ModelConfig, Scorer};
use crate::batch::Batch;
use crate::error::{ModelError, Result as ModelResult};

/// Hidden and output widths of an expert, and the hidden width of a tower.
const EXPERT_HIDDEN: usize = 128;
pub const EXPERT_OUT: usize = 64;
const TOWER_HIDDEN: usize = 32;
/// Width of Crocodile's domain embedding, the prior its gates are computed from.
const DOMAIN_DIM: usize = 16;

enum Gate {
    /// Shared-bottom: a single expert, nothing to mix.
    None,
    /// MMoE: features `[B, width]` to logits `[B, domains * experts]`; the sample's domain's
    /// slice is soft-maxed over the experts.
    PerExpert(Linear),
    /// Crocodile: the domain's embedding to logits `[experts * EXPERT_OUT]`, soft-maxed over the
    /// experts separately for every element.
    PerElement {
        domain: EmbeddingTable,
        proj: Linear,
    },
}

pub(crate) struct MultiDomain {
    /// One backbone, or (Crocodile) one per expert, each with its own embedding tables.
    bodies: Vec<Box<dyn Backbone>>,
    experts: Vec<Mlp>,
    gate: Gate,
    towers: Vec<Mlp>,
}

impl MultiDomain {
    pub fn new(cfg: &ModelConfig, d: &Dims, p: &Params) -> ModelResult<MultiDomain> {
        let m = cfg.experts;
        check_experts(m)?;
        let croc = cfg.domain == DomainMode::Crocodile;
        let bodies = if croc {
            (0..m)
                .map(|t| backbone(cfg, d, &p.scoped(&format!("table{t}"))))
                .collect::<ModelResult<Vec<_>>>()?
        } else {
            vec![backbone(cfg, d, p)?]
        };
        let width = bodies[0].width;
        let n_experts = if cfg.domain == DomainMode::SharedBottom {
            1
        } else {
            m
        };
        let experts = (0..n_experts)
            .map(|e| {
                Mlp::new(
                    p,
                    &format!("expert{e}"),
                    &[width, EXPERT_HIDDEN, EXPERT_OUT],
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let domains = d.domains.max(1);
        let gate = match cfg.domain {
            DomainMode::SharedBottom => Gate::None,
            DomainMode::Mmoe => Gate::PerExpert(p.linear("gate", width, domains * m)?),
            DomainMode::Crocodile => Gate::PerElement {
                domain: p.embedding("domain", domains, DOMAIN_DIM)?,
                proj: p.linear("gate", DOMAIN_DIM, m * EXPERT_OUT)?,
            },
            DomainMode::Shared => {
                return Err(ModelError::invalid(
                    "a shared model has no domain towers; build it with models::build",
                ))
            }
        };
        let towers = (0..domains)
            .map(|k| Mlp::new(p, &format!("tower{k}"), &[EXPERT_OUT, TOWER_HIDDEN, 1]))
            .collect::<Result<Vec<_>>>()?;
        Ok(MultiDomain {
            bodies: bodies.into_iter().map(|b| b.net).collect(),
            experts,
            gate,
            towers,
        })
    }

    /// Each expert's output `[B, EXPERT_OUT]` and the first backbone's features.
    fn experts(&self, b: &Batch) -> Result<(Vec<Tensor>, Tensor)> {
        let feats = self
            .bodies
            .iter()
            .map(|body| body.features(b))
            .collect::<Result<Vec<_>>>()?;
        let outs = self
            .experts
            .iter()
            .enumerate()
            .map(|(e, mlp)| mlp.forward(&feats[e.min(feats.len() - 1)]))
            .collect::<Result<Vec<_>>>()?;
        let first = feats.into_iter().next().expect("at least one backbone");
        Ok((outs, first))
    }

    fn forward(&self, b: &Batch, penalty: bool) -> Result<(Tensor, Option<Tensor>)> {
        let (outs, feats) = self.experts(b)?;
        let domains = self.towers.len();
        // `[B, domains]`: row i selects sample i's domain.
        let onehot =
            Tensor::eye(domains, DType::F32, feats.device())?.index_select(&b.domain, 0)?;
        let mixed = match &self.gate {
            Gate::None => outs[0].clone(),
            Gate::PerExpert(gate) => {
                let m = outs.len();
                let logits = gate.forward(&feats)?.reshape((b.size, domains, m))?;
                let own = logits.broadcast_mul(&onehot.unsqueeze(2)?)?.sum(1)?;
                let w = candle_nn::ops::softmax_last_dim(&own)?;
                Tensor::stack(&outs, 1)?
                    .broadcast_mul(&w.unsqueeze(2)?)?
                    .sum(1)?
            }
            Gate::PerElement { domain, proj } => {
                let m = outs.len();
                // One gate table per domain, `[domains, experts, EXPERT_OUT]`, then each
                // sample's row of it.
                let table = proj
                    .forward(&domain.all()?)?
                    .reshape((domains, m, EXPERT_OUT))?;
                let w = candle_nn::ops::softmax(&table, 1)?.index_select(&b.domain, 0)?;
                (Tensor::stack(&outs, 1)? * w)?.sum(1)?
            }
        };
        let per_domain = self
            .towers
            .iter()
            .map(|t| t.forward(&mixed))
            .collect::<Result<Vec<_>>>()?;
        let logits = flat((Tensor::cat(&per_domain, 1)? * onehot)?.sum_keepdim(1)?)?;
        // Crocodile (the model with per-element gates) is the one trained with the penalty.
        let penalised = matches!(self.gate, Gate::PerElement { .. });
        let pen = if penalty && penalised && outs.len() > 1 {
            Some(cross_covariance_penalty(&outs)?)
        } else {
            None
        };
        Ok((logits, pen))
    }
}

impl Scorer for MultiDomain {
    fn logits(&self, b: &Batch) -> Result<Tensor> {
        Ok(self.forward(b, false)?.0)
    }

    fn logits_and_penalty(&self, b: &Batch) -> Result<(Tensor, Option<Tensor>)> {
        self.forward(b, true)
    }
}

/// Crocodile's cross-expert covariance penalty over a batch: centre each expert's output
/// `[B, d]` over the batch, take the `d x d` cross-covariance `C_ij = X_i^T X_j / B` of every
/// unordered pair of different experts, and sum the pairs' entry-wise L1 norms divided by `d^2`
/// (`C_ji` is `C_ij` transposed, so ordered pairs would only double it). Zero when the experts'
/// outputs are uncorrelated over the batch.
pub fn cross_covariance_penalty(outs: &[Tensor]) -> Result<Tensor> {
    let (rows, d) = outs[0].dims2()?;
    let centred = outs
        .iter()
        .map(|o| o.broadcast_sub(&o.mean_keepdim(0)?))
        .collect::<Result<Vec<_>>>()?;
    let mut total = Tensor::zeros((), DType::F32, outs[0].device())?;
    for i in 0..centred.len() {
        for j in i + 1..centred.len() {
            let cov = (centred[i].t()?.matmul(&centred[j])? / rows as f64)?;
            total = (total + (cov.abs()?.sum_all()? / (d * d) as f64)?)?;
        }
    }
    Ok(total)
}
