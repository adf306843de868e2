//! One trainer for every model: AdamW on binary cross-entropy, shuffled mini-batches, early
//! stopping on validation GAUC, checkpoints as safetensors plus a JSON config.
//!
//! Training is deterministic for a given seed and thread count: parameters are initialised from
//! the seed ([`Params`]), batches are shuffled from the seed, and candle's CPU kernels reduce in a
//! fixed order for a fixed number of threads.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use crate::models::table::SparseAdam;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::batch::{make_batch, RowIndex, VocabCounter, Vocabs};
use crate::data::Splits;
use crate::error::{ModelError, Result};
use crate::features::{ItemTable, SeqKind};
use crate::labels::{ItemLabelTable, ItemLabels, LabelTime};
use crate::metrics::RankingMetrics;
use crate::models::layers::Params;
use crate::models::{build, Dims, ModelConfig, Scorer};
use crate::samples::{SampleReader, SampleSpec, Split, DEFAULT_SAMPLE_MEMORY};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Learning rate of the dense weights (AdamW).
    pub lr: f64,
    /// Learning rate of the embedding tables (sparse Adam: only the rows of a batch move).
    #[serde(default = "default_embedding_lr")]
    pub embedding_lr: f64,
    /// Standard deviation of new embedding rows.
    #[serde(default = "default_embedding_std")]
    pub embedding_std: f64,
    /// Weight decay of the dense weights.
    pub weight_decay: f64,
    /// Ids seen fewer times than this in training share the unknown row.
    #[serde(default = "one")]
    pub min_count: usize,
    pub seed: u64,
    /// Stop after this many epochs without a better validation GAUC.
    pub patience: usize,
    /// Also evaluate on validation every this many training batches within an epoch (0 = at
    /// the end of each epoch only), keeping the best weights seen at any check. The models
    /// overfit item ids within their first or second epoch on sparse data; a check at the end
    /// of the epoch alone misses the best point.
    /// Not serialised when 0, so that checkpoints written before it keep their canonical form.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub validate_every: usize,
    /// Train on the impressions in the training split's order instead of shuffling them each
    /// epoch (a streamed split: its users in order of first appearance). MUSE's reference code
    /// trains so (`shuffle: false`), in the order of its shards; Siren's MovieLens split is in
    /// time order, as `siren export taobao` writes it. Not serialised when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unshuffled: bool,
    /// Show a progress bar on the terminal.
    pub progress: bool,
}

fn one() -> usize {
    1
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn default_embedding_lr() -> f64 {
    2e-3
}

fn default_embedding_std() -> f64 {
    crate::models::layers::EMBEDDING_STD
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 5,
            batch_size: 256,
            lr: 2e-3,
            embedding_lr: default_embedding_lr(),
            embedding_std: default_embedding_std(),
            weight_decay: 1e-4,
            min_count: 1,
            seed: 1,
            patience: 1,
            validate_every: 0,
            unshuffled: false,
            progress: false,
        }
    }
}

/// How [`Prepared::build`] reads samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrepareOptions {
    /// Threads building samples.
    pub threads: usize,
    /// Ids seen fewer times than this in training share the unknown row.
    pub min_count: usize,
    /// Bytes the built samples of all splits may take; beyond it they are streamed
    /// ([`crate::samples`]).
    pub sample_memory: usize,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            threads: 1,
            min_count: 1,
            sample_memory: DEFAULT_SAMPLE_MEMORY,
        }
    }
}

/// Every split's impressions with their samples (held, or streamed from the engine when they
/// do not fit the memory budget), the vocabularies built from the training part, and the
/// catalog rows they refer to. Built once and shared by every model that reads a subset of its
/// sequences.
pub struct Prepared {
    pub items: ItemTable,
    pub vocabs: Vocabs,
    pub rows: RowIndex,
    pub train: Split,
    pub valid: Split,
    pub test: Split,
    pub levels: usize,
    pub reader: SampleReader,
}

impl Prepared {
    /// Every split's samples `spec` read from `snap` (with `as_of` = each impression's time),
    /// held or streamed as `opts.sample_memory` allows, and the vocabularies from the training
    /// samples.
    pub fn build(
        snap: &siren_engine::Snapshot,
        items: ItemTable,
        splits: Splits,
        spec: SampleSpec,
        levels: usize,
        opts: &PrepareOptions,
    ) -> Result<Prepared> {
        let total = splits.train.len() + splits.valid.len() + splits.test.len();
        // Counted over the training impressions only: validation and test stand for serving.
        let labels = spec
            .item_labels
            .then(|| Arc::new(ItemLabels::from_impressions(&splits.train)));
        let reader = SampleReader::new(snap.clone(), spec, opts.threads, opts.sample_memory, total)
            .with_labels(labels);
        let train = reader.split(&items, splits.train, LabelTime::AsOf)?;
        let valid = reader.split(&items, splits.valid, LabelTime::Final)?;
        let test = reader.split(&items, splits.test, LabelTime::Final)?;
        let mut counter = VocabCounter::new(levels);
        let blocks = reader.pass(&train, &mut Vec::new(), None);
        reader.visit(&items, &train, &blocks, |set, _, _| {
            counter.add(set, &items);
            Ok(())
        })?;
        let domains = train.impressions().iter().map(|i| i.domain);
        let vocabs = counter.finish(domains, opts.min_count);
        let rows = RowIndex::new(&vocabs, &items);
        Ok(Prepared {
            items,
            vocabs,
            rows,
            train,
            valid,
            test,
            levels,
            reader,
        })
    }

    /// Samples of `imps` (as the test split) with vocabularies fixed by a checkpoint, and its
    /// item click statistics when the model reads them.
    #[allow(clippy::too_many_arguments)]
    pub fn for_scoring(
        snap: &siren_engine::Snapshot,
        items: ItemTable,
        imps: &[crate::data::Impression],
        spec: SampleSpec,
        labels: Option<&ItemLabelTable>,
        vocabs: Vocabs,
        levels: usize,
        threads: usize,
    ) -> Result<Prepared> {
        let labels = labels.map(|t| Arc::new(ItemLabels::from_table(t)));
        let reader = SampleReader::new(
            snap.clone(),
            spec,
            threads,
            DEFAULT_SAMPLE_MEMORY,
            imps.len(),
        )
        .with_labels(labels);
        let rows = RowIndex::new(&vocabs, &items);
        Ok(Prepared {
            train: reader.split(&items, Vec::new(), LabelTime::AsOf)?,
            valid: reader.split(&items, Vec::new(), LabelTime::Final)?,
            test: reader.split(&items, imps.to_vec(), LabelTime::Final)?,
            items,
            vocabs,
            rows,
            levels,
            reader,
        })
    }

    pub fn dims(&self) -> Dims {
        Dims::new(&self.vocabs, self.items.dim)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub train_loss: f64,
    /// Mean of the model's regulariser over the epoch's batches, before its weight
    /// (Crocodile's cross-expert covariance penalty).
    #[serde(default)]
    pub train_penalty: Option<f64>,
    pub valid: RankingMetrics,
    /// Validation checks within the epoch ([`TrainConfig::validate_every`]), in order; the
    /// end-of-epoch figure is `valid`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<ValidationCheck>,
    pub seconds: f64,
    /// The batch loop's rate (sample building excluded).
    pub train_samples_per_s: f64,
    /// The epoch's rate with the samples built from the engine included, when they were
    /// (a streamed dataset; a held one builds them once, before training).
    #[serde(default)]
    pub end_to_end_samples_per_s: Option<f64>,
}

/// A validation evaluation within an epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationCheck {
    /// Training batches of the epoch done before the check.
    pub batches: usize,
    pub gauc: Option<f64>,
    pub auc: Option<f64>,
}

/// The best weights so far: their validation score, the epoch and the batch within it they
/// were seen at, and a copy of every dense variable then every embedding table.
struct Best {
    score: f64,
    epoch: usize,
    batches: usize,
    weights: Vec<Tensor>,
}

impl Best {
    /// Keep the current weights when `score` beats `best` (or nothing is kept yet).
    fn offer(
        best: &mut Option<Best>,
        score: f64,
        epoch: usize,
        batches: usize,
        vars: &[candle_core::Var],
        params: &Params,
    ) -> Result<()> {
        if best.as_ref().is_some_and(|b| score <= b.score) {
            return Ok(());
        }
        let mut weights: Vec<Tensor> = vars
            .iter()
            .map(|v| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?;
        for t in params.tables() {
            weights.push(t.tensor()?.copy()?);
        }
        *best = Some(Best {
            score,
            epoch,
            batches,
            weights,
        });
        Ok(())
    }
}

/// The score training maximises: validation GAUC, or AUC when no user has both classes.
fn score_of(m: &RankingMetrics) -> f64 {
    m.gauc.or(m.auc).unwrap_or(f64::NEG_INFINITY)
}

/// A trained model with what it needs to score.
pub struct Trained {
    pub cfg: ModelConfig,
    pub train_cfg: TrainConfig,
    pub dims: Dims,
    pub params: Params,
    pub model: Box<dyn Scorer>,
    pub history: Vec<EpochLog>,
    pub best_epoch: usize,
    /// Training batches of the best epoch done when the kept weights were seen (the epoch's
    /// batch count when they are the end of the epoch's).
    pub best_batches: usize,
    /// Validation GAUC of the kept weights (AUC when no validation user has both classes).
    pub best_valid_gauc: Option<f64>,
    /// The item click statistics the model reads, as its checkpoint keeps them.
    pub item_labels: Option<ItemLabelTable>,
}

fn kinds(cfg: &ModelConfig) -> Vec<SeqKind> {
    cfg.sequences().into_iter().map(|(k, _)| k).collect()
}

fn check_sequences(cfg: &ModelConfig, data: &Prepared) -> Result<()> {
    for (kind, len) in cfg.sequences() {
        let have = data.reader.spec().seqs.iter().find(|s| s.0 == kind);
        match have.map(|s| s.1) {
            Some(have) if have == len => {}
            other => {
                return Err(ModelError::invalid(format!(
                    "model {} needs {kind:?} sequences of {len}, the prepared data has {other:?}",
                    cfg.name()
                )))
            }
        }
    }
    Ok(())
}

/// pCTR for every sample of `split`.
pub fn predict(
    model: &dyn Scorer,
    cfg: &ModelConfig,
    data: &Prepared,
    split: &Split,
    batch_size: usize,
) -> Result<Vec<f32>> {
    let dev = Device::Cpu;
    let ks = kinds(cfg);
    let mut out = vec![f32::NAN; split.len()];
    let blocks = data.reader.pass(split, &mut Vec::new(), None);
    let bs = batch_size.max(1);
    data.reader
        .visit(&data.items, split, &blocks, |set, rows, block| {
            for (chunk, at) in rows.chunks(bs).zip(block.chunks(bs)) {
                let b = make_batch(set, chunk, &data.vocabs, &data.rows, &data.items, &ks, &dev)?;
                let p = candle_nn::ops::sigmoid(&model.logits(&b)?)?.to_vec1::<f32>()?;
                for (&i, v) in at.iter().zip(p) {
                    out[i] = v;
                }
            }
            Ok(())
        })?;
    Ok(out)
}

pub fn evaluate(
    model: &dyn Scorer,
    cfg: &ModelConfig,
    data: &Prepared,
    split: &Split,
) -> Result<(RankingMetrics, Vec<f32>)> {
    let p = predict(model, cfg, data, split, 1024)?;
    let imps = split.impressions();
    let users: Vec<u64> = imps.iter().map(|i| i.user).collect();
    let labels: Vec<f32> = imps.iter().map(|i| i.label).collect();
    Ok((RankingMetrics::compute(&users, &p, &labels), p))
}

pub fn train(cfg: &ModelConfig, tcfg: &TrainConfig, data: &Prepared) -> Result<Trained> {
    check_sequences(cfg, data)?;
    let item_labels = item_labels_of(cfg, data)?;
    if data.train.is_empty() {
        return Err(ModelError::invalid("no training samples"));
    }
    let dev = Device::Cpu;
    let dims = data.dims();
    let params = Params::with_embedding_std(tcfg.seed, &dev, tcfg.embedding_std);
    let model = build(cfg, &dims, &params)?;
    let vars = params.varmap().all_vars();
    let sparse = SparseAdam::new(tcfg.embedding_lr);
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: tcfg.lr,
            weight_decay: tcfg.weight_decay,
            ..ParamsAdamW::default()
        },
    )?;
    let ks = kinds(cfg);
    let mut rng = StdRng::seed_from_u64(tcfg.seed ^ 0x7261_696e);
    let mut order: Vec<usize> = Vec::new();
    let mut history = Vec::new();
    let mut best: Option<Best> = None;
    let n = data.train.len();
    let bs = tcfg.batch_size.max(1);
    for epoch in 1..=tcfg.epochs {
        let start = Instant::now();
        let shuffle = (!tcfg.unshuffled).then_some(&mut rng);
        let blocks = data.reader.pass(&data.train, &mut order, shuffle);
        let epoch_batches: usize = blocks.iter().map(|b| b.len().div_ceil(bs)).sum();
        let bar = progress_bar(tcfg.progress, n, &format!("{} epoch {epoch}", cfg.name()));
        let mut loss = LossSums::default();
        let mut checks = Vec::new();
        let mut checking = 0.0;
        let mut done = 0;
        let building = data
            .reader
            .visit(&data.items, &data.train, &blocks, |set, rows, _| {
                for chunk in rows.chunks(bs) {
                    let b =
                        make_batch(set, chunk, &data.vocabs, &data.rows, &data.items, &ks, &dev)?;
                    params.set_training(true);
                    let step = train_step(model.as_ref(), cfg, &b, &mut opt, &params, &sparse);
                    params.set_training(false);
                    loss.add(step?);
                    bar.inc(chunk.len() as u64);
                    done += 1;
                    // The end of the epoch has its own check below.
                    if tcfg.validate_every > 0
                        && done % tcfg.validate_every == 0
                        && done < epoch_batches
                    {
                        let at = Instant::now();
                        let (v, _) = evaluate(model.as_ref(), cfg, data, &data.valid)?;
                        Best::offer(&mut best, score_of(&v), epoch, done, &vars, &params)?;
                        checks.push(ValidationCheck {
                            batches: done,
                            gauc: v.gauc,
                            auc: v.auc,
                        });
                        checking += at.elapsed().as_secs_f64();
                    }
                }
                Ok(())
            })?
            .as_secs_f64();
        let loop_secs = (start.elapsed().as_secs_f64() - building - checking).max(1e-9);
        bar.finish_and_clear();
        let (valid, _) = evaluate(model.as_ref(), cfg, data, &data.valid)?;
        let log = EpochLog {
            epoch,
            train_loss: loss.loss / loss.batches.max(1) as f64,
            train_penalty: loss.penalty.map(|p| p / loss.batches.max(1) as f64),
            valid: valid.clone(),
            checks,
            seconds: start.elapsed().as_secs_f64(),
            train_samples_per_s: n as f64 / loop_secs,
            end_to_end_samples_per_s: (building > 0.0).then(|| n as f64 / (loop_secs + building)),
        };
        if tcfg.progress {
            let within: String = log
                .checks
                .iter()
                .map(|c| format!(" {}:{}", c.batches, fmt_opt(c.gauc)))
                .collect();
            eprintln!(
                "{} epoch {epoch}: loss {:.4}{}, valid GAUC {}, AUC {}{}, {:.0} samples/s",
                cfg.name(),
                log.train_loss,
                log.train_penalty
                    .map_or(String::new(), |p| format!(", covariance penalty {p:.4}")),
                fmt_opt(valid.gauc),
                fmt_opt(valid.auc),
                if within.is_empty() {
                    String::new()
                } else {
                    format!(" (within the epoch, batches:GAUC{within})")
                },
                log.train_samples_per_s
            );
        }
        history.push(log);
        Best::offer(&mut best, score_of(&valid), epoch, done, &vars, &params)?;
        let best_epoch = best.as_ref().map_or(0, |b| b.epoch);
        if epoch - best_epoch > tcfg.patience {
            break;
        }
    }
    let best = best.expect("at least one epoch ran");
    for (v, w) in vars.iter().zip(&best.weights) {
        v.set(w)?;
    }
    for (t, w) in params.tables().iter().zip(&best.weights[vars.len()..]) {
        t.load(w)?;
    }
    let (best_epoch, best_batches) = (best.epoch, best.batches);
    let best_valid_gauc = best.score.is_finite().then_some(best.score);
    Ok(Trained {
        cfg: cfg.clone(),
        train_cfg: tcfg.clone(),
        dims,
        params,
        model,
        history,
        best_epoch,
        best_batches,
        best_valid_gauc,
        item_labels,
    })
}

/// The item click statistics of `data` when `cfg` reads them.
fn item_labels_of(cfg: &ModelConfig, data: &Prepared) -> Result<Option<ItemLabelTable>> {
    if !cfg.item_labels {
        return Ok(None);
    }
    match data.reader.labels() {
        Some(l) => Ok(Some(l.table())),
        None => Err(ModelError::invalid(format!(
            "model {} reads item click statistics the prepared data lacks",
            cfg.name()
        ))),
    }
}

/// The rate of an epoch that reads its samples at `build_rate` and trains on them at
/// `train_rate` (samples per second each): what a held dataset's epoch would cost if it built
/// its samples again, as a streamed one does.
pub fn end_to_end_rate(train_rate: f64, build_rate: f64) -> f64 {
    1.0 / (1.0 / train_rate + 1.0 / build_rate)
}

/// Sums of the training loss over an epoch's batches.
#[derive(Default)]
struct LossSums {
    loss: f64,
    penalty: Option<f64>,
    batches: usize,
}

impl LossSums {
    fn add(&mut self, (bce, penalty): (f32, Option<f32>)) {
        self.loss += f64::from(bce);
        if let Some(p) = penalty {
            *self.penalty.get_or_insert(0.0) += f64::from(p);
        }
        self.batches += 1;
    }
}

/// One optimiser step on batch `b`: AdamW on the dense weights, sparse Adam on the rows of the
/// embedding tables the batch touched. Returns the batch's cross-entropy and penalty.
fn train_step(
    model: &dyn Scorer,
    cfg: &ModelConfig,
    b: &crate::batch::Batch,
    opt: &mut AdamW,
    params: &Params,
    sparse: &SparseAdam,
) -> Result<(f32, Option<f32>)> {
    let (logits, penalty) = model.logits_and_penalty(b)?;
    let bce = bce_with_logits(&logits, &b.label)?;
    let loss = match &penalty {
        Some(pen) if cfg.cov_weight > 0.0 => (&bce + (pen * cfg.cov_weight)?)?,
        _ => bce.clone(),
    };
    let grads = loss.backward()?;
    opt.step(&grads)?;
    params.sparse_step(&grads, sparse)?;
    let penalty = penalty.map(|p| p.to_scalar::<f32>()).transpose()?;
    Ok((bce.to_scalar::<f32>()?, penalty))
}

/// Mean binary cross-entropy of `logits` against 0/1 `labels`, computed as
/// `max(x, 0) - x·y + ln(1 + e^-|x|)`, which stays finite for any logit (candle's
/// `binary_cross_entropy_with_logit` takes the log of a saturated sigmoid and turns NaN once a
/// logit passes about 17).
pub fn bce_with_logits(logits: &Tensor, labels: &Tensor) -> candle_core::Result<Tensor> {
    let softplus = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    ((logits.relu()? - (logits * labels)?)? + softplus)?.mean_all()
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |x| format!("{x:.4}"))
}

fn progress_bar(show: bool, len: usize, msg: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} samples, {per_sec}, eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(msg.to_string());
    bar
}

/// What a checkpoint's `config.json` holds besides the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointConfig {
    pub format_version: u32,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub dims: Dims,
    pub vocabs: Vocabs,
    pub levels: usize,
    pub best_epoch: usize,
    pub history: Vec<EpochLog>,
    /// CRC32C of `model.safetensors`.
    pub weights_crc32c: u32,
    /// The item click statistics of the training impressions, when the model reads them
    /// (version 3). Absent from checkpoints of models that do not, so version-2 files keep
    /// their canonical form and checksum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_labels: Option<ItemLabelTable>,
    /// CRC32C of this file's canonical form ([`crate::sealed`]).
    #[serde(default)]
    pub checksum: u32,
}

/// Version 2 added the file's own checksum; version 3 the item click statistics (a build that
/// reads only version 2 would otherwise take a `-ctr` model's file for a damaged one); version
/// 4 the model switches `no_user_id` and `no_mm_target` (likewise: an older build would drop
/// them and fail the checksum); version 5 the switch `reference_net` (likewise); version 6 the
/// switch `no_head_item`, the training setting `validate_every` and the epochs' validation
/// `checks` (likewise).
pub const CHECKPOINT_VERSION: u32 = 6;

/// Version 2 to 5 checkpoints (no click statistics, no user-id, multimodal, reference-network
/// or head-item switches) still load.
pub const OLDEST_CHECKPOINT_VERSION: u32 = 2;

impl crate::sealed::Sealed for CheckpointConfig {
    const WHAT: &'static str = "checkpoint config";
    const VERSION: u32 = CHECKPOINT_VERSION;
    const OLDEST: u32 = OLDEST_CHECKPOINT_VERSION;
    fn checksum_mut(&mut self) -> &mut u32 {
        &mut self.checksum
    }
}

impl Trained {
    /// Write `dir/model.safetensors` and `dir/config.json`.
    pub fn save(&self, dir: &Path, vocabs: &Vocabs, levels: usize) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let weights = dir.join("model.safetensors");
        self.params.save(&weights)?;
        let bytes = std::fs::read(&weights).map_err(|e| ModelError::io(&weights, e))?;
        let cfg = CheckpointConfig {
            format_version: CHECKPOINT_VERSION,
            model: self.cfg.clone(),
            train: self.train_cfg.clone(),
            dims: self.dims.clone(),
            vocabs: vocabs.clone(),
            levels,
            best_epoch: self.best_epoch,
            history: self.history.clone(),
            weights_crc32c: crc32c::crc32c(&bytes),
            item_labels: self.item_labels.clone(),
            checksum: 0,
        };
        let mut cfg = cfg;
        let path = dir.join("config.json");
        let json = crate::sealed::seal(&mut cfg);
        std::fs::write(&path, json).map_err(|e| ModelError::io(&path, e))
    }
}

/// A checkpoint loaded back: the model and its vocabularies.
pub struct Loaded {
    pub cfg: CheckpointConfig,
    pub params: Params,
    pub model: Box<dyn Scorer>,
}

impl CheckpointConfig {
    /// What the model's samples hold.
    pub fn sample_spec(&self) -> SampleSpec {
        SampleSpec::for_models(std::slice::from_ref(&self.model), self.levels)
    }

    /// Parse and check a checkpoint's `config.json`: the version first, then that the table
    /// sizes follow from the vocabularies in the file and the model's shape is within bounds, so
    /// that building the model allocates what the file itself implies and no more.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<CheckpointConfig> {
        let corrupt = |detail: String| ModelError::DataCorruption {
            path: path.to_path_buf(),
            detail,
        };
        let mut cfg: CheckpointConfig = crate::sealed::open(bytes, path)?;
        cfg.vocabs.rebuild();
        let m = &cfg.model;
        if !(1..=MAX_MODEL_DIM).contains(&m.dim)
            || m.layers > MAX_LAYERS
            || m.heads == 0
            || !m.dim.is_multiple_of(m.heads)
            || m.recent > MAX_SEQUENCE
            || m.retrieved > MAX_SEQUENCE
            || crate::models::check_experts(m.experts).is_err()
            || !crate::models::valid_cov_weight(m.cov_weight)
        {
            return Err(corrupt(format!("model shape out of bounds: {m:?}")));
        }
        if cfg.dims.emb_dim > MAX_EMBEDDING_DIM
            || cfg.levels != cfg.vocabs.levels()
            || cfg.levels > siren_engine::MAX_SEMID_LEVELS
            || cfg.dims != Dims::new(&cfg.vocabs, cfg.dims.emb_dim)
        {
            return Err(corrupt(
                "table sizes do not follow from the vocabularies".into(),
            ));
        }
        match (&cfg.item_labels, m.item_labels) {
            (None, true) => {
                return Err(corrupt(
                    "the model reads item click statistics the file lacks".into(),
                ))
            }
            (Some(t), _) => t.check().map_err(corrupt)?,
            (None, false) => {}
        }
        if m.reference_net {
            crate::models::reference::check(m).map_err(|e| corrupt(e.to_string()))?;
        }
        Ok(cfg)
    }
}

/// Bounds a checkpoint's model shape must keep (far above what Siren trains).
const MAX_MODEL_DIM: usize = 512;
const MAX_LAYERS: usize = 16;
const MAX_SEQUENCE: usize = 10_000;
const MAX_EMBEDDING_DIM: usize = 8192;

pub fn load_checkpoint(dir: &Path) -> Result<Loaded> {
    load_checkpoint_within(dir, u64::MAX)
}

/// [`load_checkpoint`], refusing a `config.json` or weights file larger than `max_file_bytes`
/// before reading it (a server reloading models on request bounds what a request makes it
/// read). The weights are built from the very bytes whose checksum was checked.
pub fn load_checkpoint_within(dir: &Path, max_file_bytes: u64) -> Result<Loaded> {
    let path = dir.join("config.json");
    let bytes = read_within(&path, max_file_bytes)?;
    let cfg = CheckpointConfig::decode(&bytes, &path)?;
    let weights = dir.join("model.safetensors");
    let wbytes = read_within(&weights, max_file_bytes)?;
    if !siren_engine::format::checksum_matches(cfg.weights_crc32c, crc32c::crc32c(&wbytes)) {
        return Err(ModelError::DataCorruption {
            path: weights,
            detail: "checksum mismatch".into(),
        });
    }
    let params = Params::new(0, &Device::Cpu);
    let model = build(&cfg.model, &cfg.dims, &params)?;
    params
        .load_buffer(&wbytes)
        .map_err(|e| ModelError::DataCorruption {
            path: weights.clone(),
            detail: e.to_string(),
        })?;
    Ok(Loaded { cfg, params, model })
}

/// The whole file, refused with [`ModelError::InvalidArgument`] if it holds more than `max`
/// bytes (checked on the open file, and again while reading, so a file growing meanwhile is
/// caught too).
fn read_within(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let too_big = || ModelError::invalid(format!("{} is larger than {max} bytes", path.display()));
    let f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let len = f.metadata().map_err(|e| ModelError::io(path, e))?.len();
    if len > max {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(len as usize);
    f.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| ModelError::io(path, e))?;
    if bytes.len() as u64 > max {
        return Err(too_big());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stable form equals the textbook one where that is finite, and stays finite where
    /// the textbook one (candle's) is not.
    #[test]
    fn bce_is_stable() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[-3f32, -0.5, 0.0, 2.0, 40.0, -40.0], &dev).unwrap();
        let y = Tensor::new(&[0f32, 1.0, 1.0, 0.0, 0.0, 1.0], &dev).unwrap();
        let got = bce_with_logits(&x, &y).unwrap().to_scalar::<f32>().unwrap();
        let xs = [-3f64, -0.5, 0.0, 2.0, 40.0, -40.0];
        let ys = [0f64, 1.0, 1.0, 0.0, 0.0, 1.0];
        let want = xs
            .iter()
            .zip(ys)
            .map(|(&x, y)| x.max(0.0) - x * y + (1.0 + (-x.abs()).exp()).ln())
            .sum::<f64>()
            / 6.0;
        assert!(
            got.is_finite() && (f64::from(got) - want).abs() < 1e-5,
            "{got} vs {want}"
        );
        let naive = candle_nn::loss::binary_cross_entropy_with_logit(&x, &y)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(!naive.is_finite(), "candle's form saturates at |x| = 40");
    }
}
