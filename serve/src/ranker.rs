//! In-database scoring: one [`Ranker`] holds a loaded ESU and a SemID codebook and scores N
//! candidate items for one user in one call, over an engine snapshot it is handed.
//!
//! A call plans its sequences ([`crate::retrieval::plan`]: which retrieval feeds the model's
//! GSU slot), reads them from the snapshot with one batched engine call per sequence, builds
//! the ESU inputs exactly as training does ([`crate::candidates`]; the user's history summary,
//! which the evidence features need, from a cache shared by the calls, [`crate::summaries`])
//! and scores the candidates in
//! batched forward passes: the fused forward ([`crate::forward`]) for the SIREN models it
//! covers, candle's for the rest.
//!
//! Defined answers for the edge cases:
//! - an empty candidate list gives an empty list of scores;
//! - a user with no history (or none before `at`) is scored with empty sequences: the model's
//!   answer for a new user;
//! - a candidate the catalog does not hold is scored as a cold item (the shared "unknown" rows,
//!   no embedding, no SemID, so the GSU retrieves nothing for it) and is marked
//!   `in_catalog: false`, so a caller can rank it or drop it.
//!
//! The ranker is `Send + Sync` and does not own the database: the caller (the HTTP server, a
//! benchmark, a Rust service) keeps the `Db` and hands each call a snapshot, so that every read
//! of the call sees the same data. [`Ranker::swap_model`] replaces the model atomically: a call
//! in flight finishes with the model it started with, and every answer names the model version
//! that produced it.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use candle_core::Device;
use siren_engine::{Db, Item, Snapshot};
use siren_model::batch::{make_batch, RowIndex};
use siren_model::labels::LabelTime;
use siren_model::semid::Codebook;
use siren_model::{Retrieval, SeqKind};

use crate::candidates::{candidate_samples_cached, BuildTimings};
use crate::error::{Result, ServeError};
use crate::retrieval::{plan, Retrieved};
use crate::semids::assign_missing;
use crate::served::{DbShape, ServedModel};
use crate::summaries::{SummaryCache, DEFAULT_SUMMARY_CACHE_BYTES};

#[derive(Debug, Clone, Default)]
pub struct ScoreOptions {
    /// The retrieval that feeds a soft or hard GSU slot of the model (SIREN, MUSE); a category
    /// slot (SIM) is always read by category.
    pub retrieval: Retrieval,
    /// Score as of this time (milliseconds): only events strictly before it are seen. Default:
    /// the wall clock.
    pub at: Option<i64>,
    /// Return, per candidate, the behaviours the GSU retrieved.
    pub explain: bool,
    /// The domain (scenario, surface) the candidates are shown in; multi-domain models pick
    /// their tower and gates by it, single-domain models ignore it.
    pub domain: u16,
}

/// One candidate's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateScore {
    pub item: u64,
    /// Predicted click probability.
    pub score: f32,
    pub in_catalog: bool,
    /// With `explain`: the retrieved behaviours, best first.
    pub retrieved: Option<Vec<Retrieved>>,
}

/// Where a call's time went, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ScoreTimings {
    pub build: BuildTimings,
    /// Tensors and forward passes.
    pub esu_us: f64,
    pub total_us: f64,
}

#[derive(Debug, Clone)]
pub struct Scored {
    pub model_version: String,
    pub model: String,
    /// The retrieval that fed a soft or hard GSU slot; `None` for models without one.
    pub retrieval: Option<Retrieval>,
    pub at: i64,
    /// The user's events before `at`.
    pub history_events: usize,
    pub scores: Vec<CandidateScore>,
    pub timings: ScoreTimings,
}

/// Forward passes take at most this many candidates at once.
const FORWARD_BATCH: usize = 256;

/// An optional model and an optional SemID codebook for one database, shared across threads.
pub struct Ranker {
    shape: DbShape,
    model: ArcSwapOption<ServedModel>,
    codebook: ArcSwapOption<Codebook>,
    /// Users' history summaries, kept across calls and models (a summary depends on the
    /// history and the catalog only).
    summaries: SummaryCache,
}

impl std::fmt::Debug for Ranker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ranker")
            .field("shape", &self.shape)
            .field(
                "model",
                &self.model.load().as_ref().map(|m| m.version().to_string()),
            )
            .finish()
    }
}

impl Ranker {
    /// A ranker for `db` (it keeps only the database's shape). Without a model it can still
    /// assign SemIDs; [`Ranker::score`] then fails with [`ServeError::NoModel`].
    pub fn new(db: &Db, model: Option<ServedModel>, codebook: Option<Codebook>) -> Result<Ranker> {
        let r = Ranker {
            shape: DbShape::of(db),
            model: ArcSwapOption::empty(),
            codebook: ArcSwapOption::empty(),
            summaries: SummaryCache::new(DEFAULT_SUMMARY_CACHE_BYTES),
        };
        if let Some(m) = model {
            r.swap_model(m)?;
        }
        if let Some(c) = codebook {
            r.set_codebook(c)?;
        }
        Ok(r)
    }

    pub fn model(&self) -> Option<Arc<ServedModel>> {
        self.model.load_full()
    }

    pub fn codebook(&self) -> Option<Arc<Codebook>> {
        self.codebook.load_full()
    }

    /// This ranker keeping at most `bytes` of users' history summaries (0: none, every call
    /// reads its user's summary; the default is [`DEFAULT_SUMMARY_CACHE_BYTES`]).
    pub fn with_summary_cache_bytes(mut self, bytes: usize) -> Ranker {
        self.summaries = SummaryCache::new(bytes);
        self
    }

    /// The cache of users' history summaries the calls share.
    pub fn summaries(&self) -> &SummaryCache {
        &self.summaries
    }

    /// Replace the model (after checking it fits the database); returns the previous one.
    /// Calls already running finish with the model they started with.
    pub fn swap_model(&self, m: ServedModel) -> Result<Option<Arc<ServedModel>>> {
        m.check_fits(&self.shape)?;
        Ok(self.model.swap(Some(Arc::new(m))))
    }

    pub fn set_codebook(&self, c: Codebook) -> Result<()> {
        self.shape.check_codebook(&c)?;
        self.codebook.store(Some(Arc::new(c)));
        Ok(())
    }

    /// Give each item that has an embedding but no SemID the codebook's SemID for it; returns
    /// how many were assigned. Without a codebook, nothing is assigned.
    pub fn assign_semids(&self, items: &mut [Item]) -> usize {
        match self.codebook.load_full() {
            Some(cb) => assign_missing(&cb, items),
            None => 0,
        }
    }

    /// Score `candidates` for `user` over `snap`, a snapshot of the ranker's database; see the
    /// module documentation for the edge cases.
    pub fn score(
        &self,
        snap: &Snapshot,
        user: u64,
        candidates: &[u64],
        opts: &ScoreOptions,
    ) -> Result<Scored> {
        let start = Instant::now();
        let model = self.model.load_full().ok_or(ServeError::NoModel)?;
        let at = opts.at.unwrap_or_else(now_ms);
        let (plan, fed) = plan(&model.config.model.sequences(), opts.retrieval);
        let dim = self.shape.embedding_dim as usize;
        let cfg = &model.config;
        let evidence = cfg.model.evidence.then_some(cfg.levels);
        let mut built = candidate_samples_cached(
            snap,
            user,
            at,
            opts.domain,
            candidates,
            &plan,
            evidence,
            dim,
            &self.summaries,
        )?;
        if let Some(labels) = &model.item_labels {
            labels.fill(&mut built.set, LabelTime::Final);
        }
        let t = Instant::now();
        let vocabs = &model.config.vocabs;
        let rows = RowIndex::new(vocabs, &built.items);
        let kinds: Vec<SeqKind> = plan.iter().map(|p| p.slot).collect();
        let mut probs = Vec::with_capacity(candidates.len());
        let idx: Vec<usize> = (0..candidates.len()).collect();
        for chunk in idx.chunks(FORWARD_BATCH) {
            let b = make_batch(
                &built.set,
                chunk,
                vocabs,
                &rows,
                &built.items,
                &kinds,
                &Device::Cpu,
            )?;
            match &model.fused {
                Some(fused) => probs.extend(fused.probs(&b)?),
                None => {
                    let p = candle_nn::ops::sigmoid(&model.scorer.logits(&b)?)?;
                    probs.extend(p.to_vec1::<f32>()?);
                }
            }
        }
        let esu_us = t.elapsed().as_secs_f64() * 1e6;
        let retrieved = std::mem::take(&mut built.retrieved);
        let scores = candidates
            .iter()
            .zip(probs)
            .zip(built.in_catalog.iter().zip(retrieved))
            .map(|((&item, score), (&in_catalog, r))| CandidateScore {
                item,
                score,
                in_catalog,
                retrieved: opts.explain.then_some(r),
            })
            .collect();
        Ok(Scored {
            model_version: model.version().to_string(),
            model: model.name(),
            retrieval: fed,
            at,
            history_events: built.history_len,
            scores,
            timings: ScoreTimings {
                build: built.timings,
                esu_us,
                total_us: start.elapsed().as_secs_f64() * 1e6,
            },
        })
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
