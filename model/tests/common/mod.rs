//! A small planted dataset in a real database, shared by the model crate's integration tests.

use siren_engine::{Db, Options};
use siren_model::data::Impression;
use siren_model::features::{ItemTable, SeqKind};
use siren_model::models::ModelConfig;
use siren_model::synth::{Planted, PlantedConfig};
use siren_model::train::{predict, Prepared};
use siren_model::ServedModel;

/// The dataset's directory, its open database and every split's samples (all four sequence
/// kinds, 16 long).
#[allow(dead_code)]
pub fn small_with_db() -> (tempfile::TempDir, std::sync::Arc<Db>, Prepared) {
    small_from(PlantedConfig {
        items: 1_500,
        dim: 16,
        clusters: 12,
        users: 60,
        min_events: 300,
        max_events: 1_500,
        impressions_per_user: 24,
        ..PlantedConfig::default()
    })
}

/// A small dataset from `cfg` (whose `dim` must be 16).
#[allow(dead_code)]
pub fn small_from(cfg: PlantedConfig) -> (tempfile::TempDir, std::sync::Arc<Db>, Prepared) {
    let planted = Planted::new(cfg);
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path(),
        Options {
            embedding_dim: 16,
            auto_compact: None,
            ..Options::default()
        },
    )
    .unwrap();
    // Planted SemIDs stand in for a fitted codebook here.
    let semids: Vec<_> = planted
        .catalog
        .items
        .iter()
        .map(|i| i.semid.unwrap())
        .collect();
    let (splits, _) = planted.import(&db, Some(&semids)).unwrap();
    db.compact().unwrap();
    let snap = db.snapshot();
    let items = ItemTable::from_snapshot(&snap, 16);
    let spec: Vec<(SeqKind, usize)> = SeqKind::ALL.iter().map(|&k| (k, 16)).collect();
    let data = Prepared::build(&snap, items, &splits, &spec, 3, 2, 1).unwrap();
    (dir, std::sync::Arc::new(db), data)
}

#[allow(dead_code)]
pub fn small() -> (tempfile::TempDir, Prepared) {
    let (dir, _db, data) = small_with_db();
    (dir, data)
}

/// Model `name`, sized for the small dataset.
#[allow(dead_code)]
pub fn cfg(name: &str) -> ModelConfig {
    ModelConfig {
        dim: 16,
        recent: 16,
        retrieved: 16,
        layers: 1,
        ..ModelConfig::named(name).unwrap()
    }
}

/// What the training path predicts for `(user, candidate, at)`.
#[allow(dead_code)]
pub fn reference(
    db: &siren_engine::Db,
    data: &Prepared,
    m: &ServedModel,
    imp: Impression,
    cands: &[u64],
) -> Vec<f32> {
    let snap = db.snapshot();
    let imps: Vec<Impression> = cands
        .iter()
        .map(|&item| Impression { item, ..imp })
        .collect();
    let prepared = Prepared::for_scoring(
        &snap,
        ItemTable::from_snapshot(&snap, data.items.dim),
        &imps,
        &m.config.model.sequences(),
        m.config.vocabs.clone(),
        m.config.levels,
        1,
    )
    .unwrap();
    let loaded = siren_model::train::load_checkpoint(m.source()).unwrap();
    predict(
        loaded.model.as_ref(),
        &m.config.model,
        &prepared,
        &prepared.test,
        1024,
    )
    .unwrap()
}

#[allow(dead_code)]
pub fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
}
