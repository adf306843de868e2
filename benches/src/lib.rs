//! Shared set-up for Siren's benchmarks: a database of synthetic lifelong users, and the naive
//! baselines the engine is compared with in the same run.

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
    pub ranker: std::sync::Arc<siren_model::Ranker>,
    pub lifelong_user: u64,
    pub candidates: Vec<u64>,
    pub model_name: String,
}

/// The synthetic dataset of `siren demo` at a smaller user count, one extra user with exactly
/// 100,000 events, and `siren-hard` (the default SIREN configuration) trained for one epoch.
pub fn scoring_fixture() -> ScoringFixture {
    use siren_model::experiment::{self, DatasetDir};
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
    let meta =
        experiment::import_synthetic(&cfg, &data, &RqKmeansConfig::default()).expect("import");
    let lifelong_user = 9_999_999;
    {
        let db = data.open_db(&meta).expect("open");
        let catalog = Planted::new(cfg.clone()).catalog;
        let h = synth::history(&catalog, 7, lifelong_user, 100_000, 1_500_000_000_000);
        append_buffered(&db, &h);
        db.compact().expect("compact");
    }
    let model = ModelConfig::named("siren-hard").expect("model");
    let (db, _meta, prepared) =
        experiment::prepare(&data, std::slice::from_ref(&model), 2).expect("prepare");
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
    let served = siren_model::ServedModel::load(&ck).expect("load");
    let snap = db.snapshot();
    let candidates = snap.items().step_by(199).take(100).map(|i| i.id).collect();
    drop(snap);
    let ranker =
        siren_model::Ranker::new(std::sync::Arc::new(db), Some(served), None).expect("ranker");
    ScoringFixture {
        dir,
        ranker: std::sync::Arc::new(ranker),
        lifelong_user,
        candidates,
        model_name: model.name(),
    }
}
