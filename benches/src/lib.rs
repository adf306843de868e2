//! Shared set-up for Siren's benchmarks: a database of synthetic lifelong users, the naive
//! baselines the engine is compared with in the same run, and the stores users would otherwise
//! pick (Parquet, RocksDB with one row per event) for the comparison command.

pub mod appends;
pub mod esu;
pub mod parquet_events;
pub mod rocks_rows;
pub mod timing;

use std::collections::HashMap;

use siren_engine::{AppendOptions, Db, Durability, Event, Options, SemId};
use siren_model::synth::{self, SynthConfig};

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub db: Db,
    pub catalog: synth::Catalog,
    pub users: Vec<u64>,
    pub events_per_user: usize,
}

/// `users` users of `events_per_user` events each over a catalog of `items` items with
/// `dim`-dimensional embeddings, compacted.
pub fn fixture(users: usize, events_per_user: usize, items: usize, dim: usize) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(
        dir.path(),
        Options {
            embedding_dim: dim as u32,
            auto_compact: None,
            ..Options::default()
        },
    )
    .expect("open");
    let cfg = SynthConfig {
        items,
        dim,
        ..SynthConfig::default()
    };
    let catalog = synth::catalog(&cfg);
    for chunk in catalog.items.chunks(10_000) {
        db.upsert_items(chunk, Durability::Buffered)
            .expect("upsert");
    }
    let ids: Vec<u64> = (1..=users as u64).collect();
    for &u in &ids {
        let h = synth::history(&catalog, cfg.seed, u, events_per_user, 1_600_000_000_000);
        append_buffered(&db, &h);
    }
    db.compact().expect("compact");
    db.flush().expect("flush");
    Fixture {
        dir,
        db,
        catalog,
        users: ids,
        events_per_user,
    }
}

/// Append in batches of 50,000 with `Buffered` durability (bulk loading).
fn append_buffered(db: &Db, events: &[Event]) {
    let opts = AppendOptions {
        durability: Durability::Buffered,
        source: None,
    };
    for c in events.chunks(50_000) {
        db.append(c, &opts).expect("append");
    }
}

/// The catalog as a naive service would hold it: hash maps from item id to SemID and to an f32
/// embedding.
pub struct NaiveCatalog {
    pub semid: HashMap<u64, SemId>,
    pub emb: HashMap<u64, Vec<f32>>,
}

impl NaiveCatalog {
    pub fn new(cat: &synth::Catalog) -> Self {
        NaiveCatalog {
            semid: cat
                .items
                .iter()
                .filter_map(|i| Some((i.id, i.semid?)))
                .collect(),
            emb: cat
                .items
                .iter()
                .filter_map(|i| Some((i.id, i.embedding.clone()?)))
                .collect(),
        }
    }

    /// Hard retrieval by a linear scan of a decoded history.
    pub fn hard_scan(&self, history: &[Event], target: &SemId, k: usize) -> Vec<(usize, u8)> {
        let mut hits: Vec<(usize, u8)> = history
            .iter()
            .enumerate()
            .filter_map(|(p, e)| {
                let d = self.semid.get(&e.item)?.common_prefix(target) as u8;
                (d > 0).then_some((p, d))
            })
            .collect();
        hits.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
        hits.truncate(k);
        hits
    }

    /// Soft retrieval by a linear scan of a decoded history, f32 cosine per behaviour.
    pub fn soft_scan(&self, history: &[Event], target: &[f32], k: usize) -> Vec<(usize, f32)> {
        let tn = target.iter().map(|x| x * x).sum::<f32>().sqrt();
        let mut hits: Vec<(usize, f32)> = history
            .iter()
            .enumerate()
            .filter_map(|(p, e)| {
                let v = self.emb.get(&e.item)?;
                let dot: f32 = v.iter().zip(target).map(|(a, b)| a * b).sum();
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                Some((p, dot / (n * tn)))
            })
            .collect();
        hits.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
        hits.truncate(k);
        hits
    }
}

/// A database with a 100,000-event user and a trained SIREN model over it, for the scoring
/// benchmarks.
pub struct ScoringFixture {
    pub dir: tempfile::TempDir,
    pub db: std::sync::Arc<Db>,
    pub ranker: std::sync::Arc<siren_serve::Ranker>,
    /// The same model in a ranker that keeps no history summaries: every call reads its
    /// user's, as the first call after an append does.
    pub ranker_without_summaries: std::sync::Arc<siren_serve::Ranker>,
    pub lifelong_user: u64,
    /// `(history length, user)` for the lengths asked of [`scoring_fixture_with`].
    pub scaling_users: Vec<(usize, u64)>,
    pub candidates: Vec<u64>,
    pub model: siren_model::models::ModelConfig,
    pub model_name: String,
    /// Width of the catalog embeddings the model projects.
    pub embedding_dim: usize,
}

/// The synthetic dataset of `siren demo` at a smaller user count, one extra user with exactly
/// 100,000 events, and `siren-hard` (the default SIREN configuration) trained for one epoch.
pub fn scoring_fixture() -> ScoringFixture {
    scoring_fixture_with(&[])
}

/// [`scoring_fixture`] plus one user per entry of `lengths` with exactly that many events (for
/// scaling curves).
pub fn scoring_fixture_with(lengths: &[usize]) -> ScoringFixture {
    use siren_model::dataset::{self, DatasetDir};
    use siren_model::models::ModelConfig;
    use siren_model::semid::RqKmeansConfig;
    use siren_model::synth::{Planted, PlantedConfig};
    use siren_model::train::{train, TrainConfig};

    let dir = tempfile::tempdir().expect("temp dir");
    let data = DatasetDir::new(dir.path().join("data"));
    let cfg = PlantedConfig {
        items: 20_000,
        dim: 64,
        users: 40,
        min_events: 1_000,
        max_events: 20_000,
        ..PlantedConfig::default()
    };
    let meta = dataset::import_synthetic(&cfg, &data, &RqKmeansConfig::default()).expect("import");
    let lifelong_user = 9_999_999;
    let scaling_users: Vec<(usize, u64)> = lengths
        .iter()
        .enumerate()
        .map(|(i, &n)| (n, 9_000_000 + i as u64))
        .collect();
    {
        let db = data.open_db(&meta).expect("open");
        let catalog = Planted::new(cfg.clone()).catalog;
        for &(n, user) in scaling_users
            .iter()
            .chain(std::iter::once(&(100_000, lifelong_user)))
        {
            let h = synth::history(&catalog, 7, user, n, 1_500_000_000_000);
            append_buffered(&db, &h);
        }
        db.compact().expect("compact");
    }
    let model = ModelConfig::named("siren-hard").expect("model");
    let (db, _meta, prepared) =
        dataset::prepare(&data, std::slice::from_ref(&model), 2).expect("prepare");
    let t = train(
        &model,
        &TrainConfig {
            epochs: 1,
            ..TrainConfig::default()
        },
        &prepared,
    )
    .expect("train");
    let ck = dir.path().join("model");
    t.save(&ck, &prepared.vocabs, prepared.levels)
        .expect("save");
    let served = siren_serve::ServedModel::load(&ck).expect("load");
    let snap = db.snapshot();
    let candidates = snap.items().step_by(199).take(100).map(|i| i.id).collect();
    drop(snap);
    let ranker = |served| siren_serve::Ranker::new(&db, Some(served), None).expect("ranker");
    let without =
        ranker(siren_serve::ServedModel::load(&ck).expect("load")).with_summary_cache_bytes(0);
    let ranker = ranker(served);
    ScoringFixture {
        dir,
        db: std::sync::Arc::new(db),
        ranker: std::sync::Arc::new(ranker),
        ranker_without_summaries: std::sync::Arc::new(without),
        lifelong_user,
        scaling_users,
        candidates,
        model_name: model.name(),
        model,
        embedding_dim: cfg.dim,
    }
}

/// Floating-point operations (a multiply-add counts two) of the SIREN ESU's matrix products
/// when it scores `candidates` candidates: the target's multimodal projection, the transformer
/// over the target token and `retrieved` behaviour tokens (the last layer only updates the
/// target token), the recent behaviours' target attention and the MLP head. Element-wise work
/// (layer norms, softmax, embedding sums) is left out, so this is a lower bound.
pub fn siren_esu_flops(
    cfg: &siren_model::models::ModelConfig,
    embedding_dim: usize,
    candidates: usize,
) -> f64 {
    let (b, d, e) = (candidates as f64, cfg.dim as f64, embedding_dim as f64);
    let t = (1 + cfg.retrieved) as f64;
    let r = cfg.recent as f64;
    let full_layers = cfg.layers.saturating_sub(1) as f64;
    let projection = 2.0 * b * e * d;
    // qkv 3d^2, output d^2, feed-forward 2 * (d x 2d): 8d^2 multiply-adds per token.
    let full = full_layers * (16.0 * b * t * d * d + 4.0 * b * t * t * d);
    let last = 6.0 * b * t * d * d + 4.0 * b * t * d + 2.0 * b * d * d + 8.0 * b * d * d;
    let recent = if cfg.recent > 0 {
        2.0 * b * r * (4.0 * d * 32.0 + 32.0) + 2.0 * b * r * d
    } else {
        0.0
    };
    let head_in = (4 + usize::from(cfg.recent > 0)) as f64 * d;
    let head = 2.0 * b * (head_in * 64.0 + 64.0 * 32.0 + 32.0);
    projection + full + last + recent + head
}
