//! A split's samples, held in memory or streamed from the engine.
//!
//! Built samples cost about 2 KB each (every token of every sequence, padding included), so a
//! dataset of tens of millions of impressions does not fit in memory once built. [`SampleReader`]
//! decides once, from a memory budget: when every split's samples fit, they are built once and
//! held (a comparison of several models then reads the engine once); otherwise every pass over a
//! split (a training epoch, an evaluation) builds them again from the engine, one block at a
//! time, and drops each block before building the next, so memory stays within the budget
//! whatever the dataset's size. Training and evaluation see the same samples either way: a
//! sample's features depend only on its impression and the snapshot.
//!
//! A block holds whole users where it can, so that a user's history is read once per block
//! (category search and the evidence features read it), not once per impression.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use siren_engine::Snapshot;

use crate::data::Impression;
use crate::error::{ModelError, Result};
use crate::features::{build_samples, evidence_len, ItemTable, SampleSet, SeqKind, Token};
use crate::labels::{ItemLabels, LabelTime, ITEM_LABEL_FEATURES};
use crate::models::ModelConfig;

/// Default bound on the memory the built samples of a dataset take: 2 GiB.
pub const DEFAULT_SAMPLE_MEMORY: usize = 2 << 30;

/// What a sample holds: its sequences (kind, length), with `Some(levels)` the evidence
/// features over that many SemID levels, and with `item_labels` its target's click statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleSpec {
    pub seqs: Vec<(SeqKind, usize)>,
    pub evidence: Option<usize>,
    pub item_labels: bool,
}

impl SampleSpec {
    /// What the samples of `models` hold (SemIDs of `levels` levels): every sequence any of
    /// them reads, each at the longest length asked for, and the evidence and click statistics
    /// when any reads them.
    pub fn for_models(models: &[ModelConfig], levels: usize) -> SampleSpec {
        let mut seqs: Vec<(SeqKind, usize)> = Vec::new();
        for m in models {
            for (k, len) in m.sequences() {
                match seqs.iter_mut().find(|(kk, _)| *kk == k) {
                    Some(e) => e.1 = e.1.max(len),
                    None => seqs.push((k, len)),
                }
            }
        }
        seqs.sort();
        SampleSpec {
            seqs,
            evidence: models.iter().any(|m| m.evidence).then_some(levels),
            item_labels: models.iter().any(|m| m.item_labels),
        }
    }

    /// Bytes one built sample takes in a [`SampleSet`].
    pub fn bytes_per_sample(&self) -> usize {
        let tokens: usize = self.seqs.iter().map(|s| s.1).sum();
        tokens * size_of::<Token>()
            + self.seqs.len() * size_of::<u16>()
            + self
                .evidence
                .map_or(0, |l| evidence_len(l) * size_of::<f32>())
            + usize::from(self.item_labels) * ITEM_LABEL_FEATURES * size_of::<f32>()
            + size_of::<Impression>()
            + size_of::<u32>()
    }
}

/// One split's impressions and, when the dataset is held, their built samples.
pub struct Split {
    imps: Vec<Impression>,
    held: Option<SampleSet>,
    /// Which item click statistics its samples count (training: as of each sample's time).
    when: LabelTime,
}

impl Split {
    pub fn impressions(&self) -> &[Impression] {
        &self.imps
    }

    pub fn len(&self) -> usize {
        self.imps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.imps.is_empty()
    }

    /// The built samples, when they are held in memory.
    pub fn held(&self) -> Option<&SampleSet> {
        self.held.as_ref()
    }

    /// Impression indexes in blocks of at most `max`, each user's impressions together (a user
    /// with more than `max` is cut into several blocks). Users come in the order they first
    /// appear, or shuffled by `rng`, which then also shuffles the indexes within each block.
    pub fn user_blocks(&self, max: usize, mut rng: Option<&mut StdRng>) -> Vec<Vec<usize>> {
        let max = max.max(1);
        let mut slot: HashMap<u64, usize> = HashMap::new();
        let mut users: Vec<Vec<usize>> = Vec::new();
        for (i, imp) in self.imps.iter().enumerate() {
            let k = *slot.entry(imp.user).or_insert_with(|| {
                users.push(Vec::new());
                users.len() - 1
            });
            users[k].push(i);
        }
        if let Some(r) = rng.as_deref_mut() {
            users.shuffle(r);
        }
        let mut blocks: Vec<Vec<usize>> = Vec::new();
        let mut current: Vec<usize> = Vec::new();
        for user in users {
            for piece in user.chunks(max) {
                if current.len() + piece.len() > max {
                    blocks.push(std::mem::take(&mut current));
                }
                current.extend_from_slice(piece);
            }
        }
        if !current.is_empty() {
            blocks.push(current);
        }
        if let Some(r) = rng {
            blocks.iter_mut().for_each(|b| b.shuffle(r));
        }
        blocks
    }
}

/// Reads the samples of a dataset's splits from one engine snapshot.
pub struct SampleReader {
    snap: Snapshot,
    spec: SampleSpec,
    /// The item click statistics, when the spec asks for them.
    labels: Option<Arc<ItemLabels>>,
    threads: usize,
    /// Samples per streamed block; `None` when every split is held.
    block: Option<usize>,
}

impl SampleReader {
    /// A reader that holds every split when the samples of `total` impressions fit in
    /// `memory` bytes, and streams them otherwise (blocks of half the budget: building a block
    /// briefly takes twice its size).
    pub fn new(
        snap: Snapshot,
        spec: SampleSpec,
        threads: usize,
        memory: usize,
        total: usize,
    ) -> SampleReader {
        let per = spec.bytes_per_sample().max(1);
        let block = (total.saturating_mul(per) > memory).then(|| (memory / (2 * per)).max(1));
        SampleReader {
            snap,
            spec,
            labels: None,
            threads,
            block,
        }
    }

    /// The item click statistics the samples count, when the spec asks for them.
    pub fn with_labels(mut self, labels: Option<Arc<ItemLabels>>) -> SampleReader {
        self.labels = labels;
        self
    }

    /// The item click statistics the samples count.
    pub fn labels(&self) -> Option<&Arc<ItemLabels>> {
        self.labels.as_ref()
    }

    pub fn spec(&self) -> &SampleSpec {
        &self.spec
    }

    /// Samples per streamed block, or `None` when the splits are held.
    pub fn block(&self) -> Option<usize> {
        self.block
    }

    /// Samples of `imps`, built now, counting the item click statistics `when` says.
    pub fn build(
        &self,
        items: &ItemTable,
        imps: &[Impression],
        when: LabelTime,
    ) -> Result<SampleSet> {
        let mut set = build_samples(
            &self.snap,
            items,
            imps,
            &self.spec.seqs,
            self.spec.evidence,
            self.threads,
        )?;
        if self.spec.item_labels {
            let labels = self.labels.as_ref().ok_or_else(|| {
                ModelError::invalid("the samples need item click statistics, and none were given")
            })?;
            labels.fill(&mut set, when);
        }
        Ok(set)
    }

    /// A split of `imps` whose samples count the item click statistics `when` says: built now
    /// when this reader holds its splits.
    pub fn split(
        &self,
        items: &ItemTable,
        imps: Vec<Impression>,
        when: LabelTime,
    ) -> Result<Split> {
        let held = match self.block {
            None => Some(self.build(items, &imps, when)?),
            Some(_) => None,
        };
        Ok(Split { imps, held, when })
    }

    /// One pass over `split`, in an order chosen by `rng` when given: the blocks of impression
    /// indexes of a held split is one block, all of it; a streamed split's are
    /// [`Split::user_blocks`]. `order` keeps a held split's shuffled order from pass to pass.
    pub fn pass(
        &self,
        split: &Split,
        order: &mut Vec<usize>,
        rng: Option<&mut StdRng>,
    ) -> Vec<Vec<usize>> {
        match self.block {
            Some(max) => split.user_blocks(max, rng),
            None => {
                if order.len() != split.len() {
                    *order = (0..split.len()).collect();
                }
                if let Some(r) = rng {
                    order.shuffle(r);
                }
                vec![order.clone()]
            }
        }
    }

    /// Call `f(samples, rows, block)` for each block of `blocks` (impression indexes of
    /// `split`), where `rows[j]` is the row in `samples` of the block's `j`-th impression. A held split's samples
    /// are its own; a streamed block's are built here and dropped after `f`. Returns the time
    /// spent building samples.
    pub fn visit(
        &self,
        items: &ItemTable,
        split: &Split,
        blocks: &[Vec<usize>],
        mut f: impl FnMut(&SampleSet, &[usize], &[usize]) -> Result<()>,
    ) -> Result<Duration> {
        let mut building = Duration::ZERO;
        for block in blocks {
            match &split.held {
                Some(set) => f(set, block, block)?,
                None => {
                    let start = Instant::now();
                    let imps: Vec<Impression> = block.iter().map(|&i| split.imps[i]).collect();
                    let set = self.build(items, &imps, split.when)?;
                    building += start.elapsed();
                    let rows: Vec<usize> = (0..block.len()).collect();
                    f(&set, &rows, block)?;
                }
            }
        }
        Ok(building)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn split(users: &[u64]) -> Split {
        let imps = users
            .iter()
            .enumerate()
            .map(|(i, &user)| Impression {
                user,
                item: i as u64,
                ts: i as i64,
                label: 0.0,
                domain: 0,
            })
            .collect();
        Split {
            imps,
            held: None,
            when: LabelTime::Final,
        }
    }

    /// Every impression once, no block above the bound, a user's impressions in one block
    /// unless it has more than the bound, the same blocks for the same seed.
    #[test]
    fn user_blocks_cover_every_impression_once_within_the_bound() {
        let users: Vec<u64> = (0..500u64)
            .map(|i| (i * 7919) % 37 + u64::from(i > 480) * 100)
            .collect();
        let s = split(&users);
        for max in [1, 5, 24, 60, 1_000] {
            for seed in [None, Some(1u64), Some(2)] {
                let mut rng = seed.map(StdRng::seed_from_u64);
                let blocks = s.user_blocks(max, rng.as_mut());
                let mut seen: Vec<usize> = blocks.concat();
                seen.sort_unstable();
                assert_eq!(seen, (0..users.len()).collect::<Vec<_>>(), "max {max}");
                assert!(blocks.iter().all(|b| !b.is_empty() && b.len() <= max));
                let block_of: HashMap<usize, usize> = blocks
                    .iter()
                    .enumerate()
                    .flat_map(|(k, b)| b.iter().map(move |&i| (i, k)))
                    .collect();
                for u in 0..140u64 {
                    let mine: Vec<usize> = (0..users.len()).filter(|&i| users[i] == u).collect();
                    let mut in_blocks: Vec<usize> = mine.iter().map(|i| block_of[i]).collect();
                    in_blocks.dedup();
                    assert!(
                        in_blocks.len() <= mine.len().div_ceil(max).max(1) + 1,
                        "user {u}"
                    );
                    if mine.len() <= max {
                        assert!(in_blocks.len() <= 1, "user {u} split at max {max}");
                    }
                }
                let mut again = seed.map(StdRng::seed_from_u64);
                assert_eq!(blocks, s.user_blocks(max, again.as_mut()));
            }
        }
    }

    /// A split held or streamed follows from the budget and the sample's size.
    #[test]
    fn the_budget_decides_held_or_streamed() {
        let spec = SampleSpec {
            seqs: vec![
                (SeqKind::Recent, 50),
                (SeqKind::Retrieved(crate::Retrieval::Hard), 50),
            ],
            evidence: Some(3),
            item_labels: false,
        };
        let per = spec.bytes_per_sample();
        assert!(per > 100 * size_of::<Token>(), "{per}");
        let dir = tempfile::tempdir().unwrap();
        let db = siren_engine::Db::open(dir.path(), siren_engine::Options::default()).unwrap();
        let reader = |memory, total| {
            SampleReader::new(db.snapshot(), spec.clone(), 1, memory, total).block()
        };
        assert_eq!(reader(per * 1_000, 1_000), None);
        assert_eq!(reader(per * 1_000, 1_001), Some(500));
        assert_eq!(reader(1, 10), Some(1));
    }
}
