//! Prepared datasets on disk and experiments over them.
//!
//! A dataset directory holds everything a model needs, produced once by an importer:
//!
//! ```text
//! <dir>/db/              the Siren database (events, catalog with SemIDs), compacted
//! <dir>/codebook.bin     the RQ-KMeans codebook the SemIDs come from
//! <dir>/impressions.csv  split,user,item,ts,label,domain
//! <dir>/dataset.json     what was imported, with counts and the codebook report
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use siren_engine::{Db, Durability, Item, Options};

use crate::batch::domains_by_frequency;
use crate::collapse::TableCollapse;
use crate::data::movielens::{MovieLens, MovieLensPaths};
use crate::data::taobao::{self, TaobaoFiles, TaobaoImportOptions};
use crate::data::{Impression, Splits};
use crate::error::{ModelError, Result};
use crate::features::{ItemTable, SeqKind};
use crate::metrics::{gauc, per_domain, DomainMetrics, Metrics};
use crate::models::ModelConfig;
use crate::semid::{unit_length, Codebook, CodebookReport, RqKmeansConfig};
use crate::synth::{Planted, PlantedConfig};
use crate::train::{evaluate, train, EpochLog, Prepared, TrainConfig};

/// Version 2 added checksums of `dataset.json` and `impressions.csv`; version 3 the impression's
/// domain.
pub const DATASET_VERSION: u32 = 3;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetMeta {
    pub format_version: u32,
    pub name: String,
    pub embedding_dim: usize,
    pub semid_levels: u8,
    pub codebook_size: u32,
    pub codebook: CodebookReport,
    pub train: usize,
    pub valid: usize,
    pub test: usize,
    /// Importer-specific: the MovieLens protocol report, the synthetic configuration and its
    /// ceiling, the Taobao-MM import report.
    pub details: serde_json::Value,
    /// CRC32C of `impressions.csv`.
    pub impressions_crc32c: u32,
    /// CRC32C of this file's canonical form ([`crate::sealed`]).
    #[serde(default)]
    pub checksum: u32,
}

impl crate::sealed::Sealed for DatasetMeta {
    const WHAT: &'static str = "dataset.json";
    const VERSION: u32 = DATASET_VERSION;
    fn checksum_mut(&mut self) -> &mut u32 {
        &mut self.checksum
    }
}

pub struct DatasetDir {
    pub root: PathBuf,
}

impl DatasetDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DatasetDir { root: root.into() }
    }
    pub fn db_path(&self) -> PathBuf {
        self.root.join("db")
    }
    pub fn codebook_path(&self) -> PathBuf {
        self.root.join("codebook.bin")
    }
    pub fn impressions_path(&self) -> PathBuf {
        self.root.join("impressions.csv")
    }
    pub fn meta_path(&self) -> PathBuf {
        self.root.join("dataset.json")
    }

    /// Refuse to import over anything but an empty or missing directory.
    fn create(&self) -> Result<()> {
        if self.root.exists()
            && std::fs::read_dir(&self.root)
                .map_err(|e| ModelError::io(&self.root, e))?
                .next()
                .is_some()
        {
            return Err(ModelError::invalid(format!(
                "{} is not empty; import into a new directory",
                self.root.display()
            )));
        }
        std::fs::create_dir_all(&self.root).map_err(|e| ModelError::io(&self.root, e))
    }

    fn db_options(dim: usize, semid: &RqKmeansConfig) -> Options {
        Options {
            embedding_dim: dim as u32,
            semid_levels: semid.levels as u8,
            semid_codebook_size: semid.codebook_size as u32,
            auto_compact: None,
            ..Options::default()
        }
    }

    pub fn open_db(&self, meta: &DatasetMeta) -> Result<Db> {
        Ok(Db::open(
            self.db_path(),
            Options {
                create_if_missing: false,
                embedding_dim: meta.embedding_dim as u32,
                semid_levels: meta.semid_levels,
                semid_codebook_size: meta.codebook_size,
                auto_compact: None,
                ..Options::default()
            },
        )?)
    }

    /// The database, metadata and impressions of an imported dataset.
    pub fn open(&self) -> Result<(Db, DatasetMeta, Splits)> {
        let meta = self.read_meta()?;
        let db = self.open_db(&meta)?;
        let splits = self.read_splits(&meta)?;
        Ok((db, meta, splits))
    }

    pub fn read_meta(&self) -> Result<DatasetMeta> {
        let p = self.meta_path();
        let b = std::fs::read(&p).map_err(|e| ModelError::io(&p, e))?;
        crate::sealed::open(&b, &p)
    }

    fn write_meta(&self, m: &mut DatasetMeta) -> Result<()> {
        let p = self.meta_path();
        std::fs::write(&p, crate::sealed::seal(m)).map_err(|e| ModelError::io(&p, e))
    }

    /// Write the impressions; returns the file's CRC32C.
    fn write_splits(&self, s: &Splits) -> Result<u32> {
        let mut w = Vec::new();
        writeln!(w, "split,user,item,ts,label,domain").expect("writing to memory");
        for (name, v) in [("train", &s.train), ("valid", &s.valid), ("test", &s.test)] {
            for i in v {
                writeln!(
                    w,
                    "{name},{},{},{},{},{}",
                    i.user, i.item, i.ts, i.label, i.domain
                )
                .expect("writing to memory");
            }
        }
        let p = self.impressions_path();
        std::fs::write(&p, &w).map_err(|e| ModelError::io(&p, e))?;
        Ok(crc32c::crc32c(&w))
    }

    /// The impressions, checked against the checksum in `meta`.
    pub fn read_splits(&self, meta: &DatasetMeta) -> Result<Splits> {
        let p = self.impressions_path();
        let bytes = std::fs::read(&p).map_err(|e| ModelError::io(&p, e))?;
        let actual = crc32c::crc32c(&bytes);
        if !siren_engine::format::checksum_matches(meta.impressions_crc32c, actual) {
            return Err(ModelError::DataCorruption {
                path: p,
                detail: format!(
                    "checksum mismatch (dataset.json says {:08x}, computed {actual:08x})",
                    meta.impressions_crc32c
                ),
            });
        }
        let mut r = csv::Reader::from_reader(bytes.as_slice());
        let mut s = Splits::default();
        for (line, rec) in r.records().enumerate() {
            let rec = rec.map_err(|e| ModelError::input(&p, e.to_string()))?;
            let bad = || ModelError::input(&p, format!("row {}: malformed impression", line + 2));
            if rec.len() != 6 {
                return Err(bad());
            }
            let imp = Impression {
                user: rec[1].parse().map_err(|_| bad())?,
                item: rec[2].parse().map_err(|_| bad())?,
                ts: rec[3].parse().map_err(|_| bad())?,
                label: rec[4].parse().map_err(|_| bad())?,
                domain: rec[5].parse().map_err(|_| bad())?,
            };
            match &rec[0] {
                "train" => s.train.push(imp),
                "valid" => s.valid.push(imp),
                "test" => s.test.push(imp),
                _ => return Err(bad()),
            }
        }
        Ok(s)
    }
}

/// Fit an RQ-KMeans codebook on the catalog's embeddings (unit length: similarity in Siren is
/// cosine) and give every item with an embedding its SemID. Run before compaction, so that the
/// prefix indexes are built with these SemIDs.
pub fn fit_semids(db: &Db, cfg: &RqKmeansConfig) -> Result<(Codebook, CodebookReport)> {
    let snap = db.snapshot();
    let mut items: Vec<Item> = snap.items().filter(|i| i.embedding.is_some()).collect();
    if items.is_empty() {
        return Err(ModelError::invalid(
            "no catalog item has an embedding to fit SemIDs on",
        ));
    }
    let dim = items[0].embedding.as_ref().map_or(0, Vec::len);
    let mut x = Vec::with_capacity(items.len() * dim);
    for it in &items {
        x.extend(unit_length(it.embedding.as_ref().expect("filtered")));
    }
    let codebook = Codebook::fit(&x, dim, cfg)?;
    let semids = codebook.assign_all(&x);
    let report = codebook.report(&x);
    for (it, s) in items.iter_mut().zip(semids) {
        it.semid = Some(s);
    }
    for chunk in items.chunks(10_000) {
        db.upsert_items(chunk, Durability::Buffered)?;
    }
    db.flush()?;
    Ok((codebook, report))
}

/// Finish an import: SemIDs, compaction, codebook, impressions, metadata.
fn finish(
    dir: &DatasetDir,
    db: &Db,
    name: &str,
    dim: usize,
    semid: &RqKmeansConfig,
    splits: &Splits,
    details: serde_json::Value,
) -> Result<DatasetMeta> {
    let (codebook, report) = fit_semids(db, semid)?;
    db.compact()?;
    codebook.save(dir.codebook_path())?;
    let impressions_crc32c = dir.write_splits(splits)?;
    let mut meta = DatasetMeta {
        format_version: DATASET_VERSION,
        name: name.to_string(),
        embedding_dim: dim,
        semid_levels: semid.levels as u8,
        codebook_size: semid.codebook_size as u32,
        codebook: report,
        train: splits.train.len(),
        valid: splits.valid.len(),
        test: splits.test.len(),
        details,
        impressions_crc32c,
        checksum: 0,
    };
    dir.write_meta(&mut meta)?;
    Ok(meta)
}

pub fn import_movielens(
    paths: &MovieLensPaths,
    dir: &DatasetDir,
    semid: &RqKmeansConfig,
) -> Result<DatasetMeta> {
    let ml = MovieLens::load(paths)?;
    dir.create()?;
    let db = Db::open(dir.db_path(), DatasetDir::db_options(ml.dim, semid))?;
    ml.import(&db, None)?;
    let (splits, protocol) = ml.impressions();
    let details = serde_json::to_value(&protocol).expect("report serialises");
    finish(dir, &db, "movielens", ml.dim, semid, &splits, details)
}

/// The best achievable test metrics on a synthetic dataset: its true click probabilities.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ceiling {
    pub test_auc: Option<f64>,
    pub test_gauc: Option<f64>,
    /// With several domains: each domain's, and the tail's (every domain but the head, the
    /// most frequent in training).
    #[serde(default)]
    pub test_gauc_by_domain: Vec<(u16, Option<f64>)>,
    #[serde(default)]
    pub test_gauc_tail: Option<f64>,
}

pub fn import_synthetic(
    cfg: &PlantedConfig,
    dir: &DatasetDir,
    semid: &RqKmeansConfig,
) -> Result<DatasetMeta> {
    dir.create()?;
    let planted = Planted::new(cfg.clone());
    let db = Db::open(dir.db_path(), DatasetDir::db_options(cfg.dim, semid))?;
    let (splits, truths) = planted.import(&db, None)?;
    let test: std::collections::HashSet<(u64, u64, i64)> =
        splits.test.iter().map(|i| (i.user, i.item, i.ts)).collect();
    let t: Vec<_> = truths
        .iter()
        .filter(|t| test.contains(&(t.impression.user, t.impression.item, t.impression.ts)))
        .collect();
    let users: Vec<u64> = t.iter().map(|t| t.impression.user).collect();
    let p: Vec<f32> = t.iter().map(|t| t.p as f32).collect();
    let y: Vec<f32> = t.iter().map(|t| t.impression.label).collect();
    let domains: Vec<u16> = t.iter().map(|t| t.impression.domain).collect();
    // The head as the trainer will see it: the most frequent domain in training.
    let head = domains_by_frequency(splits.train.iter().map(|i| i.domain))
        .first()
        .copied()
        .unwrap_or(0);
    let (by_domain, tail) = per_domain(&users, &domains, &p, &y, head);
    let ceiling = Ceiling {
        test_auc: crate::metrics::auc(&p, &y),
        test_gauc: gauc(&users, &p, &y).map(|g| g.value),
        test_gauc_by_domain: if by_domain.len() > 1 {
            by_domain
                .iter()
                .map(|d| (d.domain, d.metrics.gauc))
                .collect()
        } else {
            Vec::new()
        },
        test_gauc_tail: tail.and_then(|t| t.gauc),
    };
    let details = serde_json::json!({ "config": cfg, "ceiling": ceiling });
    finish(dir, &db, "synthetic", cfg.dim, semid, &splits, details)
}

pub fn import_taobao(
    files: &TaobaoFiles,
    dir: &DatasetDir,
    semid: &RqKmeansConfig,
) -> Result<DatasetMeta> {
    dir.create()?;
    let db = Db::open(
        dir.db_path(),
        DatasetDir::db_options(taobao::EMBEDDING_DIM, semid),
    )?;
    let imported = taobao::import(&db, files, &TaobaoImportOptions::default())?;
    let details = serde_json::to_value(&imported.report).expect("report serialises");
    finish(
        dir,
        &db,
        "taobao-mm",
        taobao::EMBEDDING_DIM,
        semid,
        &imported.splits,
        details,
    )
}

/// Every sequence the given models read, each at the longest length any of them asks for.
pub fn sequences_for(models: &[ModelConfig]) -> Vec<(SeqKind, usize)> {
    let mut out: Vec<(SeqKind, usize)> = Vec::new();
    for m in models {
        for (k, len) in m.sequences() {
            match out.iter_mut().find(|(kk, _)| *kk == k) {
                Some(e) => e.1 = e.1.max(len),
                None => out.push((k, len)),
            }
        }
    }
    out.sort();
    out
}

/// Open a dataset and read the samples the models need.
pub fn prepare(
    dir: &DatasetDir,
    models: &[ModelConfig],
    threads: usize,
) -> Result<(Db, DatasetMeta, Prepared)> {
    prepare_with(dir, models, threads, 1)
}

/// [`prepare`], with ids seen fewer than `min_count` times in training folded into row 0.
pub fn prepare_with(
    dir: &DatasetDir,
    models: &[ModelConfig],
    threads: usize,
    min_count: usize,
) -> Result<(Db, DatasetMeta, Prepared)> {
    let (db, meta, splits) = dir.open()?;
    let snap = db.snapshot();
    let items = ItemTable::from_snapshot(&snap, meta.embedding_dim);
    let spec = sequences_for(models);
    // Models that read shorter sequences than the union asks for are refused by the trainer.
    for m in models {
        for (k, len) in m.sequences() {
            if spec.iter().any(|(kk, l)| *kk == k && *l != len) {
                return Err(ModelError::invalid(format!(
                    "models in one comparison must agree on the length of their {k:?} sequences"
                )));
            }
        }
    }
    let prepared = Prepared::build(
        &snap,
        items,
        &splits,
        &spec,
        meta.semid_levels as usize,
        threads,
        min_count,
    )?;
    Ok((db, meta, prepared))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub model: String,
    pub seed: u64,
    pub test: Metrics,
    pub best_epoch: usize,
    pub epochs: Vec<EpochLog>,
    pub train_samples_per_s: f64,
    pub score_samples_per_s: f64,
    /// Test metrics per domain, and over the tail (every domain but the head, the largest in
    /// training).
    #[serde(default)]
    pub domains: Vec<DomainMetrics>,
    #[serde(default)]
    pub tail: Option<Metrics>,
    #[serde(default)]
    pub head_domain: u16,
    /// Collapse of each ID embedding table after training.
    #[serde(default)]
    pub collapse: Vec<TableCollapse>,
}

/// A domain's test GAUC over the seeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainRow {
    pub domain: u16,
    /// Share of the test impressions.
    pub share: f64,
    pub gauc_mean: f64,
    pub gauc_std: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareRow {
    pub model: String,
    pub runs: usize,
    pub gauc_mean: f64,
    pub gauc_std: f64,
    pub auc_mean: f64,
    pub auc_std: f64,
    pub log_loss_mean: f64,
    pub train_samples_per_s: f64,
    pub score_samples_per_s: f64,
    #[serde(default)]
    pub domains: Vec<DomainRow>,
    #[serde(default)]
    pub tail_gauc_mean: Option<f64>,
    #[serde(default)]
    pub tail_gauc_std: Option<f64>,
    /// Mean over the seeds of each table's sum of singular values over the largest.
    #[serde(default)]
    pub collapse: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareReport {
    pub dataset: String,
    pub train_config: TrainConfig,
    pub rows: Vec<CompareRow>,
    pub runs: Vec<RunResult>,
    pub details: serde_json::Value,
}

pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

/// Write `user,item,timestamp,label,score` rows.
pub fn write_predictions(path: &Path, imps: &[Impression], scores: &[f32]) -> Result<()> {
    let f = std::fs::File::create(path).map_err(|e| ModelError::io(path, e))?;
    let mut w = std::io::BufWriter::new(f);
    let io = |e| ModelError::io(path, e);
    writeln!(w, "user,item,timestamp,label,score").map_err(io)?;
    for (i, s) in imps.iter().zip(scores) {
        writeln!(w, "{},{},{},{},{}", i.user, i.item, i.ts, i.label, s).map_err(io)?;
    }
    w.flush().map_err(io)
}

/// Train every model with every seed on one prepared dataset; write `compare.json`,
/// `compare.md`, `compare.png` and each run's test predictions under `out`.
pub fn compare(
    dir: &DatasetDir,
    models: &[ModelConfig],
    seeds: &[u64],
    tcfg: &TrainConfig,
    out: &Path,
    threads: usize,
) -> Result<CompareReport> {
    let (_db, meta, data) = prepare_with(dir, models, threads, tcfg.min_count)?;
    std::fs::create_dir_all(out.join("predictions")).map_err(|e| ModelError::io(out, e))?;
    let mut runs = Vec::new();
    for m in models {
        for &seed in seeds {
            let tc = TrainConfig {
                seed,
                ..tcfg.clone()
            };
            let t = train(m, &tc, &data)?;
            let start = Instant::now();
            let (metrics, scores) = evaluate(t.model.as_ref(), m, &data, &data.test)?;
            let score_sps = data.test.len() as f64 / start.elapsed().as_secs_f64().max(1e-9);
            write_predictions(
                &out.join("predictions")
                    .join(format!("{}-seed{seed}.csv", m.name())),
                &data.test.impressions,
                &scores,
            )?;
            let trained_epochs = t.history.len().max(1) as f64;
            let head_domain = data.vocabs.head_domain();
            let (domains, tail) = score_domains(&data.test.impressions, &scores, head_domain);
            let run = RunResult {
                domains,
                tail,
                head_domain,
                collapse: crate::collapse::tables(&t.params)?,
                model: m.name(),
                seed,
                test: metrics,
                best_epoch: t.best_epoch,
                train_samples_per_s: t.history.iter().map(|h| h.train_samples_per_s).sum::<f64>()
                    / trained_epochs,
                epochs: t.history,
                score_samples_per_s: score_sps,
            };
            if tcfg.progress {
                eprintln!(
                    "{} seed {seed}: test GAUC {:.4} AUC {:.4} tail GAUC {:.4} (best epoch {})",
                    run.model,
                    run.test.gauc.unwrap_or(f64::NAN),
                    run.test.auc.unwrap_or(f64::NAN),
                    run.tail.as_ref().and_then(|t| t.gauc).unwrap_or(f64::NAN),
                    run.best_epoch
                );
            }
            runs.push(run);
        }
    }
    let rows = models
        .iter()
        .map(|m| {
            let name = m.name();
            let rs: Vec<&RunResult> = runs.iter().filter(|r| r.model == name).collect();
            let col = |f: &dyn Fn(&RunResult) -> f64| rs.iter().map(|r| f(r)).collect::<Vec<f64>>();
            let (gauc_mean, gauc_std) = mean_std(&col(&|r| r.test.gauc.unwrap_or(f64::NAN)));
            let (auc_mean, auc_std) = mean_std(&col(&|r| r.test.auc.unwrap_or(f64::NAN)));
            let (tail_mean, tail_std) = mean_std(&col(&|r| {
                r.tail.as_ref().and_then(|t| t.gauc).unwrap_or(f64::NAN)
            }));
            let has_tail = rs.iter().any(|r| r.tail.is_some());
            CompareRow {
                domains: domain_rows(&rs),
                tail_gauc_mean: has_tail.then_some(tail_mean),
                tail_gauc_std: has_tail.then_some(tail_std),
                collapse: collapse_means(&rs),
                model: name,
                runs: rs.len(),
                gauc_mean,
                gauc_std,
                auc_mean,
                auc_std,
                log_loss_mean: mean_std(&col(&|r| r.test.log_loss.unwrap_or(f64::NAN))).0,
                train_samples_per_s: mean_std(&col(&|r| r.train_samples_per_s)).0,
                score_samples_per_s: mean_std(&col(&|r| r.score_samples_per_s)).0,
            }
        })
        .collect();
    let report = CompareReport {
        dataset: meta.name.clone(),
        train_config: tcfg.clone(),
        rows,
        runs,
        details: meta.details.clone(),
    };
    crate::report::write_compare(out, &report)?;
    Ok(report)
}

/// Metrics of scored impressions per domain and over the tail (every domain but `head`).
pub fn score_domains(
    imps: &[Impression],
    scores: &[f32],
    head: u16,
) -> (Vec<DomainMetrics>, Option<Metrics>) {
    per_domain(
        &imps.iter().map(|i| i.user).collect::<Vec<_>>(),
        &imps.iter().map(|i| i.domain).collect::<Vec<_>>(),
        scores,
        &imps.iter().map(|i| i.label).collect::<Vec<_>>(),
        head,
    )
}

/// Each domain's GAUC over the runs of one model.
fn domain_rows(runs: &[&RunResult]) -> Vec<DomainRow> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    let total: usize = first.domains.iter().map(|d| d.metrics.n).sum();
    first
        .domains
        .iter()
        .map(|dm| {
            let g: Vec<f64> = runs
                .iter()
                .map(|r| {
                    r.domains
                        .iter()
                        .find(|x| x.domain == dm.domain)
                        .and_then(|x| x.metrics.gauc)
                        .unwrap_or(f64::NAN)
                })
                .collect();
            let (gauc_mean, gauc_std) = mean_std(&g);
            DomainRow {
                domain: dm.domain,
                share: dm.metrics.n as f64 / total.max(1) as f64,
                gauc_mean,
                gauc_std,
            }
        })
        .collect()
}

/// Each table's collapse figure averaged over the runs of one model.
fn collapse_means(runs: &[&RunResult]) -> Vec<(String, f64)> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    first
        .collapse
        .iter()
        .map(|c| {
            let v: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.collapse.iter().find(|x| x.table == c.table))
                .map(|x| x.sum_over_max)
                .collect();
            (c.table.clone(), mean_std(&v).0)
        })
        .collect()
}

/// Predictions of a trained model for a dataset's test split (for `siren eval`).
pub fn score_test(
    dir: &DatasetDir,
    loaded: &crate::train::Loaded,
    threads: usize,
) -> Result<(Vec<Impression>, Vec<f32>, Metrics)> {
    let (db, meta, splits) = dir.open()?;
    let snap = db.snapshot();
    let items = ItemTable::from_snapshot(&snap, meta.embedding_dim);
    let data = Prepared::for_scoring(
        &snap,
        items,
        &splits.test,
        &loaded.cfg.model.sequences(),
        loaded.cfg.vocabs.clone(),
        loaded.cfg.levels,
        threads,
    )?;
    let (m, scores) = evaluate(loaded.model.as_ref(), &loaded.cfg.model, &data, &data.test)?;
    Ok((splits.test, scores, m))
}
