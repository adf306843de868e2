//! In-database scoring: one [`Ranker`] holds an open engine and a loaded ESU and scores N
//! candidate items for one user in one call.
//!
//! For each call it takes one consistent snapshot, reads the user's recent behaviours once, runs
//! the GSU for all candidates as one batched engine call (hard by SemID prefix by default, soft
//! by cosine on request), builds the ESU inputs exactly as training does
//! ([`crate::candidates`]) and scores the candidates in batched forward passes.
//!
//! Defined answers for the edge cases:
//! - an empty candidate list gives an empty list of scores;
//! - a user with no history (or none before `at`) is scored with empty sequences: the model's
//!   answer for a new user;
//! - a candidate the catalog does not hold is scored as a cold item (the shared "unknown" rows,
//!   no embedding, no SemID, so the GSU retrieves nothing for it) and is marked
//!   `in_catalog: false`, so a caller can rank it or drop it.
//!
//! The ranker is `Send + Sync`. [`Ranker::swap_model`] replaces the model atomically: a call in
//! flight finishes with the model it started with, and every answer names the model version
//! that produced it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use candle_core::Device;
use siren_engine::{Db, Item};

use crate::batch::{make_batch, RowIndex};
use crate::candidates::{candidate_samples, BuildTimings, Retrieved};
use crate::error::{ModelError, Result};
use crate::features::SeqKind;
use crate::models::Scorer;
use crate::semid::{unit_length, Codebook};
use crate::train::{load_checkpoint, CheckpointConfig};

/// Which retrieval feeds the model's GSU sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Gsu {
    /// By SemID prefix, through the engine's per-user bitmaps.
    #[default]
    Hard,
    /// By cosine between multimodal embeddings.
    Soft,
}

#[derive(Debug, Clone, Default)]
pub struct ScoreOptions {
    pub gsu: Gsu,
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
    /// The retrieval that fed the GSU sequence; `None` for models without one.
    pub gsu: Option<Gsu>,
    pub at: i64,
    /// The user's events before `at`.
    pub history_events: usize,
    pub scores: Vec<CandidateScore>,
    pub timings: ScoreTimings,
}

/// A checkpoint ready to serve.
pub struct ServedModel {
    version: String,
    source: PathBuf,
    pub config: CheckpointConfig,
    scorer: Box<dyn Scorer>,
}

impl std::fmt::Debug for ServedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedModel")
            .field("version", &self.version)
            .field("source", &self.source)
            .finish()
    }
}

impl ServedModel {
    /// Load a checkpoint directory written by `siren train`. Its version is the model name and
    /// the checksum of its weights, so two loads of the same weights have the same version.
    pub fn load(dir: impl AsRef<Path>) -> Result<ServedModel> {
        let loaded = load_checkpoint(dir.as_ref())?;
        Ok(ServedModel {
            version: format!(
                "{}-{:08x}",
                loaded.cfg.model.name(),
                loaded.cfg.weights_crc32c
            ),
            source: dir.as_ref().to_path_buf(),
            config: loaded.cfg,
            scorer: loaded.model,
        })
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn name(&self) -> String {
        self.config.model.name()
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The sequences to read for `gsu`, and (the kind read, the model's kind) for its GSU slot.
    fn plan(&self, gsu: Gsu) -> (Vec<(SeqKind, usize)>, Option<GsuSlot>) {
        let mut swap = None;
        let spec = self
            .config
            .model
            .sequences()
            .into_iter()
            .map(|(kind, len)| match kind {
                SeqKind::Soft | SeqKind::Hard => {
                    let read = match gsu {
                        Gsu::Hard => SeqKind::Hard,
                        Gsu::Soft => SeqKind::Soft,
                    };
                    swap = Some((read, kind));
                    (read, len)
                }
                other => (other, len),
            })
            .collect();
        (spec, swap)
    }

    fn check_fits(&self, db: &Db) -> Result<()> {
        let o = db.options();
        let d = &self.config.dims;
        if d.emb_dim != o.embedding_dim as usize {
            return Err(ModelError::invalid(format!(
                "model {} expects {}-dimensional embeddings, the database holds {}",
                self.version, d.emb_dim, o.embedding_dim
            )));
        }
        if self.config.levels != usize::from(o.semid_levels) {
            return Err(ModelError::invalid(format!(
                "model {} was trained on {} SemID levels, the database uses {}",
                self.version, self.config.levels, o.semid_levels
            )));
        }
        Ok(())
    }
}

/// The kind a GSU sequence was read as, and the kind the model expects in that slot.
type GsuSlot = (SeqKind, SeqKind);

/// Forward passes take at most this many candidates at once.
const FORWARD_BATCH: usize = 256;

/// An open engine, an optional model and an optional SemID codebook, shared across threads.
pub struct Ranker {
    db: Arc<Db>,
    model: ArcSwapOption<ServedModel>,
    codebook: ArcSwapOption<Codebook>,
}

impl std::fmt::Debug for Ranker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ranker")
            .field("db", &self.db.path())
            .field(
                "model",
                &self.model.load().as_ref().map(|m| m.version.clone()),
            )
            .finish()
    }
}

impl Ranker {
    /// A ranker over `db`. Without a model it can still assign SemIDs and answer everything
    /// but [`Ranker::score`], which fails with [`ModelError::NoModel`].
    pub fn new(
        db: Arc<Db>,
        model: Option<ServedModel>,
        codebook: Option<Codebook>,
    ) -> Result<Ranker> {
        let r = Ranker {
            db,
            model: ArcSwapOption::empty(),
            codebook: ArcSwapOption::empty(),
        };
        if let Some(m) = model {
            r.swap_model(m)?;
        }
        if let Some(c) = codebook {
            r.set_codebook(c)?;
        }
        Ok(r)
    }

    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    pub fn model(&self) -> Option<Arc<ServedModel>> {
        self.model.load_full()
    }

    pub fn codebook(&self) -> Option<Arc<Codebook>> {
        self.codebook.load_full()
    }

    /// Replace the model (after checking it fits the database); returns the previous one.
    /// Calls already running finish with the model they started with.
    pub fn swap_model(&self, m: ServedModel) -> Result<Option<Arc<ServedModel>>> {
        m.check_fits(&self.db)?;
        Ok(self.model.swap(Some(Arc::new(m))))
    }

    pub fn set_codebook(&self, c: Codebook) -> Result<()> {
        let o = self.db.options();
        if c.dim() != o.embedding_dim as usize
            || c.levels() != usize::from(o.semid_levels)
            || c.size() != o.semid_codebook_size as usize
        {
            return Err(ModelError::invalid(format!(
                "codebook of {} levels x {} codes over {} dimensions does not fit the database \
                 ({} levels x {} codes, {} dimensions)",
                c.levels(),
                c.size(),
                c.dim(),
                o.semid_levels,
                o.semid_codebook_size,
                o.embedding_dim
            )));
        }
        self.codebook.store(Some(Arc::new(c)));
        Ok(())
    }

    /// Give each item that has an embedding but no SemID the codebook's SemID for it; returns
    /// how many were assigned. Without a codebook, nothing is assigned.
    pub fn assign_semids(&self, items: &mut [Item]) -> usize {
        let Some(cb) = self.codebook.load_full() else {
            return 0;
        };
        let mut n = 0;
        for it in items.iter_mut() {
            if let (None, Some(e)) = (&it.semid, &it.embedding) {
                if e.len() == cb.dim() {
                    let x: Vec<f32> = unit_length(e).collect();
                    it.semid = Some(cb.assign(&x));
                    n += 1;
                }
            }
        }
        n
    }

    /// Score `candidates` for `user`; see the module documentation for the edge cases.
    pub fn score(&self, user: u64, candidates: &[u64], opts: &ScoreOptions) -> Result<Scored> {
        let start = Instant::now();
        let model = self.model.load_full().ok_or(ModelError::NoModel)?;
        let at = opts.at.unwrap_or_else(now_ms);
        let (spec, swap) = model.plan(opts.gsu);
        let snap = self.db.snapshot();
        let dim = self.db.options().embedding_dim as usize;
        let mut built = candidate_samples(&snap, user, at, opts.domain, candidates, &spec, dim)?;
        // A hard retrieval may feed a model trained on soft retrieval, and the reverse: the
        // sequence goes where the model expects its GSU sequence.
        if let Some((read, slot)) = swap {
            for s in &mut built.set.seqs {
                if s.0 == read {
                    s.0 = slot;
                }
            }
        }
        let t = Instant::now();
        let vocabs = &model.config.vocabs;
        let rows = RowIndex::new(vocabs, &built.items);
        let kinds: Vec<SeqKind> = model.config.model.sequences().iter().map(|s| s.0).collect();
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
            let p = candle_nn::ops::sigmoid(&model.scorer.logits(&b)?)?;
            probs.extend(p.to_vec1::<f32>()?);
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
            model_version: model.version.clone(),
            model: model.name(),
            gsu: swap.map(|_| opts.gsu),
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
