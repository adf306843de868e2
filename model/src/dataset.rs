//! The dataset directory: what an importer writes and what training and evaluation read, and
//! the synthetic dataset (the one importer with no outside format, see [`import_synthetic`]).
//!
//! A dataset directory holds everything a model needs, produced once by an importer:
//!
//! ```text
//! <dir>/db/              the Siren database (events, catalog with SemIDs), compacted
//! <dir>/codebook.bin     the RQ-KMeans codebook the SemIDs come from
//! <dir>/impressions.csv  split,user,item,ts,label,domain
//! <dir>/item_attributes.csv  item,attr_213,attr_214 (side table; see crate::tables)
//! <dir>/user_profiles.csv    user,profile_1..profile_5 (side table)
//! <dir>/dataset.json     what was imported, with counts, the codebook report and the
//!                        checksums of the three tables
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use siren_engine::{Db, Durability, Item, Options};

use crate::batch::domains_by_frequency;
use crate::data::{Impression, Splits};
use crate::error::{ModelError, Result};
use crate::features::ItemTable;
use crate::metrics::{gauc, per_domain, RankingMetrics};
use crate::models::ModelConfig;
use crate::samples::SampleSpec;
use crate::semid::{unit_length, Codebook, CodebookReport, RqKmeansConfig};
use crate::synth::{Planted, PlantedConfig};
use crate::tables::{self, ItemAttributes, UserProfiles};
use crate::train::{evaluate, Loaded, PrepareOptions, Prepared};

/// Version 2 added checksums of `dataset.json` and `impressions.csv`; version 3 the impression's
/// domain; version 4 the side tables (item attributes, user profiles).
pub const DATASET_VERSION: u32 = 4;

/// The oldest version still opened: a version 3 dataset reads as one without side tables.
pub const OLDEST_DATASET_VERSION: u32 = 3;

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
    /// CRC32C of `item_attributes.csv` (every version 4 dataset has one; version 3 has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_attributes_crc32c: Option<u32>,
    /// CRC32C of `user_profiles.csv` (likewise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_profiles_crc32c: Option<u32>,
    /// CRC32C of this file's canonical form ([`crate::sealed`]).
    #[serde(default)]
    pub checksum: u32,
}

impl crate::sealed::Sealed for DatasetMeta {
    const WHAT: &'static str = "dataset.json";
    const VERSION: u32 = DATASET_VERSION;
    const OLDEST: u32 = OLDEST_DATASET_VERSION;
    fn checksum_mut(&mut self) -> &mut u32 {
        &mut self.checksum
    }
}

/// What an importer knows beyond events, catalog and impressions: ids of item attributes and
/// user profiles (Taobao-MM columns `213`/`214` and `130_1`..`130_5`), empty when it has none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SideTables {
    pub item_attributes: ItemAttributes,
    pub user_profiles: UserProfiles,
}

pub struct DatasetDir {
    pub root: PathBuf,
}

/// Create `dir` for writing, refusing anything but an empty or missing directory.
pub fn create_new_dir(dir: &Path) -> Result<()> {
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|e| ModelError::io(dir, e))?
            .next()
            .is_some()
    {
        return Err(ModelError::invalid(format!(
            "{} is not empty; write into a new directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))
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
    pub fn item_attributes_path(&self) -> PathBuf {
        self.root.join("item_attributes.csv")
    }
    pub fn user_profiles_path(&self) -> PathBuf {
        self.root.join("user_profiles.csv")
    }

    /// Refuse to import over anything but an empty or missing directory.
    pub fn create(&self) -> Result<()> {
        create_new_dir(&self.root)
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

    /// Write `bytes` to `path`; returns their CRC32C.
    fn write_table(path: &Path, bytes: &[u8]) -> Result<u32> {
        std::fs::write(path, bytes).map_err(|e| ModelError::io(path, e))?;
        Ok(crc32c::crc32c(bytes))
    }

    /// The bytes of `path`, checked against the CRC32C `dataset.json` holds of them.
    fn read_table(path: &Path, expected: u32) -> Result<Vec<u8>> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        let actual = crc32c::crc32c(&bytes);
        if !siren_engine::format::checksum_matches(expected, actual) {
            return Err(ModelError::DataCorruption {
                path: path.to_path_buf(),
                detail: format!(
                    "checksum mismatch (dataset.json says {expected:08x}, computed {actual:08x})"
                ),
            });
        }
        Ok(bytes)
    }

    /// The impressions, checked against the checksum in `meta`.
    pub fn read_splits(&self, meta: &DatasetMeta) -> Result<Splits> {
        let p = self.impressions_path();
        tables::decode_impressions(&Self::read_table(&p, meta.impressions_crc32c)?, &p)
    }

    /// Attribute ids of items (`213`, `214` of Taobao-MM), by item; empty when the importer
    /// had none, and for version 3 datasets, which predate side tables.
    pub fn item_attributes(&self, meta: &DatasetMeta) -> Result<ItemAttributes> {
        let p = self.item_attributes_path();
        self.read_side(
            meta,
            &p,
            meta.item_attributes_crc32c,
            tables::decode_item_attributes,
        )
    }

    /// Profile ids of users (`130_1`..`130_5` of Taobao-MM), by user; empty as above.
    pub fn user_profiles(&self, meta: &DatasetMeta) -> Result<UserProfiles> {
        let p = self.user_profiles_path();
        self.read_side(
            meta,
            &p,
            meta.user_profiles_crc32c,
            tables::decode_user_profiles,
        )
    }

    /// Every table of the directory, each checked against `dataset.json` (`siren verify`).
    pub fn read_tables(&self) -> Result<(DatasetMeta, Splits, SideTables)> {
        let meta = self.read_meta()?;
        let splits = self.read_splits(&meta)?;
        let side = SideTables {
            item_attributes: self.item_attributes(&meta)?,
            user_profiles: self.user_profiles(&meta)?,
        };
        Ok((meta, splits, side))
    }

    fn read_side<T: Default>(
        &self,
        meta: &DatasetMeta,
        path: &Path,
        crc: Option<u32>,
        decode: fn(&[u8], &Path) -> Result<T>,
    ) -> Result<T> {
        match crc {
            Some(crc) => decode(&Self::read_table(path, crc)?, path),
            None if meta.format_version < 4 => Ok(T::default()),
            None => Err(ModelError::DataCorruption {
                path: self.meta_path(),
                detail: format!("no checksum of {}", path.display()),
            }),
        }
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
    semid: &RqKmeansConfig,
    splits: &Splits,
    side: &SideTables,
    details: serde_json::Value,
) -> Result<DatasetMeta> {
    let (codebook, report) = fit_semids(db, semid)?;
    db.compact()?;
    codebook.save(dir.codebook_path())?;
    let write = DatasetDir::write_table;
    let impressions_crc32c = write(&dir.impressions_path(), &tables::encode_impressions(splits))?;
    let attributes = tables::encode_item_attributes(&side.item_attributes);
    let profiles = tables::encode_user_profiles(&side.user_profiles);
    let mut meta = DatasetMeta {
        format_version: DATASET_VERSION,
        name: name.to_string(),
        embedding_dim: db.options().embedding_dim as usize,
        semid_levels: semid.levels as u8,
        codebook_size: semid.codebook_size as u32,
        codebook: report,
        train: splits.train.len(),
        valid: splits.valid.len(),
        test: splits.test.len(),
        details,
        impressions_crc32c,
        item_attributes_crc32c: Some(write(&dir.item_attributes_path(), &attributes)?),
        user_profiles_crc32c: Some(write(&dir.user_profiles_path(), &profiles)?),
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
    /// Test GAUC of the true probabilities without each item's latent quality: the best a
    /// model can do that reads every user's interests perfectly but has not memorised each
    /// item's own click rate from its training impressions (`Truth::p_without_quality`).
    #[serde(default)]
    pub test_gauc_without_quality: Option<f64>,
    /// Test GAUC of the Bayes-optimal predictions given the labels a model can learn from
    /// (training and validation): every user's interests known exactly, each item's quality
    /// inferred from its own labelled impressions ([`Planted::bayes_probabilities`]). No model
    /// trained on these labels can expect more; the distance from here to `test_gauc` is the
    /// quality of items too rarely (or never) seen labelled.
    #[serde(default)]
    pub test_gauc_bayes: Option<f64>,
    /// The same with the labels of the training impressions only: the most a model can
    /// expect whose item click statistics (`-ctr`) and ID embeddings stop at training, as
    /// `siren compare`'s do (validation labels choose the epoch, they train nothing).
    #[serde(default)]
    pub test_gauc_bayes_train: Option<f64>,
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
    // The truths of the impressions of some splits, matched by (user, item, time).
    let truths_of = |sets: &[&[Impression]]| {
        let key = |i: &Impression| (i.user, i.item, i.ts);
        let keys: std::collections::HashSet<_> =
            sets.iter().flat_map(|s| s.iter().map(key)).collect();
        (truths.iter())
            .filter(|t| keys.contains(&key(&t.impression)))
            .collect::<Vec<_>>()
    };
    let t = truths_of(&[&splits.test]);
    let users: Vec<u64> = t.iter().map(|t| t.impression.user).collect();
    let p: Vec<f32> = t.iter().map(|t| t.p as f32).collect();
    let p_known: Vec<f32> = t.iter().map(|t| t.p_without_quality as f32).collect();
    let seen = truths_of(&[&splits.train, &splits.valid]);
    let p_bayes: Vec<f32> = (planted.bayes_probabilities(&seen, &t).into_iter())
        .map(|p| p as f32)
        .collect();
    let p_bayes_train: Vec<f32> = (planted.bayes_probabilities(&truths_of(&[&splits.train]), &t))
        .into_iter()
        .map(|p| p as f32)
        .collect();
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
        test_gauc_without_quality: gauc(&users, &p_known, &y).map(|g| g.value),
        test_gauc_bayes: gauc(&users, &p_bayes, &y).map(|g| g.value),
        test_gauc_bayes_train: gauc(&users, &p_bayes_train, &y).map(|g| g.value),
    };
    let details = serde_json::json!({ "config": cfg, "ceiling": ceiling });
    let side = SideTables::default();
    finish(dir, &db, "synthetic", semid, &splits, &side, details)
}

/// Open a dataset and read the samples the models need.
pub fn prepare(
    dir: &DatasetDir,
    models: &[ModelConfig],
    threads: usize,
) -> Result<(Db, DatasetMeta, Prepared)> {
    let opts = PrepareOptions {
        threads,
        ..PrepareOptions::default()
    };
    prepare_with(dir, models, &opts, false)
}

/// [`prepare`] with `opts` (ids seen fewer than `min_count` times in training folded into row
/// 0, the sample memory budget), and with the validation impressions also trained on when
/// `train_on_valid` (the reference regime: no hold-out; validation figures are then in-sample
/// and choose nothing).
pub fn prepare_with(
    dir: &DatasetDir,
    models: &[ModelConfig],
    opts: &PrepareOptions,
    train_on_valid: bool,
) -> Result<(Db, DatasetMeta, Prepared)> {
    let (db, meta, mut splits) = dir.open()?;
    if train_on_valid {
        let valid = splits.valid.clone();
        splits.train.extend(valid);
    }
    let snap = db.snapshot();
    let items = ItemTable::from_snapshot(&snap, meta.embedding_dim);
    let levels = meta.semid_levels as usize;
    let spec = SampleSpec::for_models(models, levels);
    // Models that read shorter sequences than the union asks for are refused by the trainer.
    for m in models {
        for (k, len) in m.sequences() {
            if spec.seqs.iter().any(|(kk, l)| *kk == k && *l != len) {
                return Err(ModelError::invalid(format!(
                    "models in one comparison must agree on the length of their {k:?} sequences"
                )));
            }
        }
    }
    let prepared = Prepared::build(&snap, items, splits, spec, levels, opts)?;
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
        loaded.cfg.sample_spec(),
        loaded.cfg.item_labels.as_ref(),
        loaded.cfg.vocabs.clone(),
        loaded.cfg.levels,
        threads,
    )?;
    let (m, scores) = evaluate(loaded.model.as_ref(), &loaded.cfg.model, &data, &data.test)?;
    Ok((splits.test, scores, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A finished dataset of four items, one impression, and the given side tables.
    fn small(root: &Path, side: &SideTables) -> (DatasetDir, DatasetMeta) {
        let dir = DatasetDir::new(root);
        dir.create().unwrap();
        let semid = RqKmeansConfig {
            levels: 2,
            codebook_size: 2,
            ..RqKmeansConfig::default()
        };
        let db = Db::open(dir.db_path(), DatasetDir::db_options(2, &semid)).unwrap();
        let items: Vec<Item> = (1..=4u64)
            .map(|id| Item {
                id,
                category: 0,
                semid: None,
                embedding: Some(vec![id as f32, 1.0]),
            })
            .collect();
        db.upsert_items(&items, Durability::Buffered).unwrap();
        let imp = Impression {
            user: 7,
            item: 1,
            ts: 5,
            label: 1.0,
            domain: 0,
        };
        let splits = Splits {
            train: vec![imp],
            ..Splits::default()
        };
        let details = serde_json::json!({});
        let meta = finish(&dir, &db, "t", &semid, &splits, side, details).unwrap();
        (dir, meta)
    }

    fn side() -> SideTables {
        SideTables {
            item_attributes: [(1, [3, 4]), (2, [0, 9])].into(),
            user_profiles: [(7, [1, 0, 0, 0, 2])].into(),
        }
    }

    #[test]
    fn side_tables_are_written_sealed_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, meta) = small(tmp.path(), &side());
        assert_eq!(meta.format_version, DATASET_VERSION);
        let meta = dir.read_meta().unwrap();
        assert_eq!(dir.item_attributes(&meta).unwrap(), side().item_attributes);
        assert_eq!(dir.user_profiles(&meta).unwrap(), side().user_profiles);

        // A changed byte is caught by the checksum in dataset.json.
        let p = dir.item_attributes_path();
        let mut b = std::fs::read(&p).unwrap();
        let last = b.len() - 2;
        b[last] ^= 1;
        std::fs::write(&p, &b).unwrap();
        let e = dir.item_attributes(&meta).unwrap_err();
        assert!(matches!(e, ModelError::DataCorruption { .. }), "{e}");
        assert!(e.to_string().contains("item_attributes.csv"), "{e}");

        // A version 4 dataset.json without the checksum is refused, not read as empty.
        let mut m = meta.clone();
        m.user_profiles_crc32c = None;
        dir.write_meta(&mut m).unwrap();
        let m = dir.read_meta().unwrap();
        let e = dir.user_profiles(&m).unwrap_err();
        assert!(matches!(e, ModelError::DataCorruption { .. }), "{e}");
    }

    #[test]
    fn version_3_datasets_open_without_side_tables_and_version_2_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, mut meta) = small(tmp.path(), &SideTables::default());
        // A version 3 dataset.json, as earlier builds wrote it: no side-table fields at all.
        meta.format_version = 3;
        meta.item_attributes_crc32c = None;
        meta.user_profiles_crc32c = None;
        dir.write_meta(&mut meta).unwrap();
        let text = std::fs::read_to_string(dir.meta_path()).unwrap();
        assert!(!text.contains("item_attributes"), "{text}");
        std::fs::remove_file(dir.item_attributes_path()).unwrap();
        std::fs::remove_file(dir.user_profiles_path()).unwrap();
        let (_db, meta, splits) = dir.open().unwrap();
        assert_eq!(meta.format_version, 3);
        assert_eq!(splits.train.len(), 1);
        assert!(dir.item_attributes(&meta).unwrap().is_empty());
        assert!(dir.user_profiles(&meta).unwrap().is_empty());

        let mut old = meta;
        old.format_version = 2;
        dir.write_meta(&mut old).unwrap();
        match dir.read_meta() {
            Err(ModelError::UnsupportedVersion { found: 2, .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
