//! The ESU inputs of a batch as plain slices: the same [`Batch`] the candle model reads, so
//! both paths score exactly the same features.

use candle_core::Tensor;
use siren_model::batch::{Batch, SeqBatch};
use siren_model::SeqKind;

use crate::error::{Result, ServeError};

fn u32s(t: &Tensor) -> Result<Vec<u32>> {
    Ok(t.flatten_all()?.to_vec1::<u32>()?)
}

fn f32s(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// One sequence: `len` positions per candidate, row-major.
pub struct Seq {
    pub len: usize,
    pub item: Vec<u32>,
    pub category: Vec<u32>,
    pub action: Vec<u32>,
    pub gap: Vec<u32>,
    pub sim_bucket: Vec<u32>,
    pub depth: Vec<u32>,
    /// `levels` per position.
    pub prefix: Vec<u32>,
    pub mask: Vec<f32>,
}

impl Seq {
    fn of(s: &SeqBatch) -> Result<Seq> {
        let (_, len) = s.item.dims2()?;
        Ok(Seq {
            len,
            item: u32s(&s.item)?,
            category: u32s(&s.category)?,
            action: u32s(&s.action)?,
            gap: u32s(&s.gap)?,
            sim_bucket: u32s(&s.sim_bucket)?,
            depth: u32s(&s.depth)?,
            prefix: u32s(&s.prefix)?,
            mask: f32s(&s.mask)?,
        })
    }

    /// Position `p` of candidate `c` is a real behaviour.
    pub fn valid(&self, c: usize, p: usize) -> bool {
        self.mask[c * self.len + p] > 0.0
    }

    /// Whether candidates `a` and `b` have the same behaviours in the fields target attention
    /// keys read (item, category, action, time gap, mask).
    pub fn same_keys(&self, a: usize, b: usize) -> bool {
        let r = |c: usize| c * self.len..(c + 1) * self.len;
        self.item[r(a)] == self.item[r(b)]
            && self.category[r(a)] == self.category[r(b)]
            && self.action[r(a)] == self.action[r(b)]
            && self.gap[r(a)] == self.gap[r(b)]
            && self.mask[r(a)] == self.mask[r(b)]
    }
}

/// Everything the fused forward reads of a batch.
pub struct Inputs {
    pub size: usize,
    pub user: Vec<u32>,
    pub item: Vec<u32>,
    pub category: Vec<u32>,
    /// `levels` per candidate.
    pub prefix: Vec<u32>,
    pub levels: usize,
    /// `emb_dim` per candidate.
    pub emb: Vec<f32>,
    pub emb_dim: usize,
    pub retrieved: Seq,
    pub recent: Option<Seq>,
    /// `evidence_len` per candidate, when the batch carries them.
    pub evidence: Option<Vec<f32>>,
    /// `ITEM_LABEL_FEATURES` per candidate, when the batch carries them.
    pub item_labels: Option<Vec<f32>>,
}

impl Inputs {
    /// The inputs of `b`, whose GSU sequence is `retrieved` (with the recent one when
    /// `recent`).
    pub fn of(b: &Batch, retrieved: SeqKind, recent: bool) -> Result<Inputs> {
        let seq = |k: SeqKind| {
            b.seq(k)
                .ok_or_else(|| ServeError::invalid(format!("batch lacks the {k:?} sequence")))
        };
        let (_, levels) = b.prefix.dims2()?;
        let (_, emb_dim) = b.emb.dims2()?;
        Ok(Inputs {
            size: b.size,
            user: u32s(&b.user)?,
            item: u32s(&b.item)?,
            category: u32s(&b.category)?,
            prefix: u32s(&b.prefix)?,
            levels,
            emb: f32s(&b.emb)?,
            emb_dim,
            retrieved: Seq::of(seq(retrieved)?)?,
            recent: if recent {
                Some(Seq::of(seq(SeqKind::Recent)?)?)
            } else {
                None
            },
            evidence: b.evidence.as_ref().map(f32s).transpose()?,
            item_labels: b.item_labels.as_ref().map(f32s).transpose()?,
        })
    }
}
