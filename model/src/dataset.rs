//! The dataset directory: what an importer writes and what training and evaluation read, and
//! the synthetic dataset (the one importer with no outside format, see [`import_synthetic`]).
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
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use siren_engine::{Db, Durability, Item, Options};

use crate::batch::domains_by_frequency;
use crate::data::{Impression, Splits};
use crate::error::{ModelError, Result};
use crate::features::{ItemTable, SeqKind};
use crate::metrics::{gauc, per_domain, RankingMetrics};
use crate::models::ModelConfig;
use crate::semid::{unit_length, Codebook, CodebookReport, RqKmeansConfig};
use crate::synth::{Planted, PlantedConfig};
use crate::train::{evaluate, Loaded, Prepared};

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
    pub fn create(&self) -> Result<()> {
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

    pub fn db_options(dim: usize, semid: &RqKmeansConfig) -> Options {
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
        // The file is Siren's own (numbers only, no quoting), so a split on commas reads it.
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| ModelError::input(&p, "impressions are not UTF-8"))?;
        let mut s = Splits::default();
        for (line, rec) in text.lines().enumerate().skip(1) {
            let bad = || ModelError::input(&p, format!("row {}: malformed impression", line + 1));
            let f: Vec<&str> = rec.split(',').collect();
            if f.len() != 6 {
                return Err(bad());
            }
            let imp = Impression {
                user: f[1].parse().map_err(|_| bad())?,
                item: f[2].parse().map_err(|_| bad())?,
                ts: f[3].parse().map_err(|_| bad())?,
                label: f[4].parse().map_err(|_| bad())?,
                domain: f[5].parse().map_err(|_| bad())?,
            };
            match f[0] {
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

/// Finish an import into `dir` (made by [`DatasetDir::create`]) from the database `db` it
/// holds: SemIDs, compaction, codebook, impressions, metadata.
pub fn finish(
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
    prepare_with(dir, models, threads, 1, false)
}

/// [`prepare`], with ids seen fewer than `min_count` times in training folded into row 0, and
/// with the validation impressions also trained on when `train_on_valid` (the reference
/// regime: no hold-out; validation figures are then in-sample and choose nothing).
pub fn prepare_with(
    dir: &DatasetDir,
    models: &[ModelConfig],
    threads: usize,
    min_count: usize,
    train_on_valid: bool,
) -> Result<(Db, DatasetMeta, Prepared)> {
    let (db, meta, mut splits) = dir.open()?;
    if train_on_valid {
        let valid = splits.valid.clone();
        splits.train.extend(valid);
    }
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
        models.iter().any(|m| m.evidence),
        meta.semid_levels as usize,
        threads,
        min_count,
    )?;
    Ok((db, meta, prepared))
}

/// Predictions of a trained model for a dataset's test split (for `siren eval`).
pub fn score_test(
    dir: &DatasetDir,
    loaded: &Loaded,
    threads: usize,
) -> Result<(Vec<Impression>, Vec<f32>, RankingMetrics)> {
    let (db, meta, splits) = dir.open()?;
    let snap = db.snapshot();
    let items = ItemTable::from_snapshot(&snap, meta.embedding_dim);
    let data = Prepared::for_scoring(
        &snap,
        items,
        &splits.test,
        &loaded.cfg.model.sequences(),
        loaded.cfg.model.evidence,
        loaded.cfg.vocabs.clone(),
        loaded.cfg.levels,
        threads,
    )?;
    let (m, scores) = evaluate(loaded.model.as_ref(), &loaded.cfg.model, &data, &data.test)?;
    Ok((splits.test, scores, m))
}
