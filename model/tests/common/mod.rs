//! A small planted dataset in a real database and a small fixture of hand-made events, shared by
//! the model crate's integration tests (and, through `#[path]`, by siren-serve's).

use siren_engine::{AppendOptions, Db, Durability, Event, Item, Options, SemId};
use siren_model::data::{Impression, Splits};
use siren_model::features::{ItemTable, SeqKind};
use siren_model::models::ModelConfig;
use siren_model::samples::SampleSpec;
use siren_model::synth::{Planted, PlantedConfig};
use siren_model::train::{PrepareOptions, Prepared, TrainConfig};

/// The dataset's directory, its open database and every split's samples (all four sequence
/// kinds, 16 long).
#[allow(dead_code)]
pub fn small_with_db() -> (tempfile::TempDir, std::sync::Arc<Db>, Prepared) {
    small_from(small_config())
}

fn small_config() -> PlantedConfig {
    PlantedConfig {
        items: 1_500,
        dim: 16,
        clusters: 12,
        users: 60,
        min_events: 300,
        max_events: 1_500,
        impressions_per_user: 24,
        ..PlantedConfig::default()
    }
}

/// A small dataset from `cfg` (whose `dim` must be 16).
#[allow(dead_code)]
pub fn small_from(cfg: PlantedConfig) -> (tempfile::TempDir, std::sync::Arc<Db>, Prepared) {
    let (dir, db, splits) = planted_db(cfg);
    let data = prepare(&db, splits, &PrepareOptions::default());
    (dir, db, data)
}

/// [`small_with_db`]'s dataset read twice: held in memory, and streamed from the engine in
/// blocks with a sample budget of `sample_memory` bytes.
#[allow(dead_code)]
pub fn small_held_and_streamed(
    sample_memory: usize,
) -> (tempfile::TempDir, std::sync::Arc<Db>, Prepared, Prepared) {
    let (dir, db, splits) = planted_db(small_config());
    let held = prepare(&db, splits.clone(), &PrepareOptions::default());
    let opts = PrepareOptions {
        sample_memory,
        ..PrepareOptions::default()
    };
    let streamed = prepare(&db, splits, &opts);
    (dir, db, held, streamed)
}

/// Every split's samples ([`small_spec`]), read with 2 threads and `opts`' budget.
fn prepare(db: &Db, splits: Splits, opts: &PrepareOptions) -> Prepared {
    let snap = db.snapshot();
    let items = ItemTable::from_snapshot(&snap, 16);
    let opts = PrepareOptions {
        threads: 2,
        ..*opts
    };
    Prepared::build(&snap, items, splits, small_spec(), 3, &opts).unwrap()
}

/// What the small dataset's samples hold: all four sequence kinds, 16 long, evidence over 3
/// levels.
#[allow(dead_code)]
pub fn small_spec() -> SampleSpec {
    SampleSpec {
        seqs: SeqKind::ALL.iter().map(|&k| (k, 16)).collect(),
        evidence: Some(3),
        item_labels: true,
    }
}

/// A database of `cfg`'s planted data (whose `dim` must be 16), compacted, and its splits.
fn planted_db(cfg: PlantedConfig) -> (tempfile::TempDir, std::sync::Arc<Db>, Splits) {
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
    (dir, std::sync::Arc::new(db), splits)
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

#[allow(dead_code)]
pub fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
}

/// A small database where many events share timestamps with impressions: items 0..20 in 3
/// categories, users 1..=3 with 300 compacted events each, user 2 with 30 pending ones.
#[allow(dead_code)]
pub fn fixture() -> (tempfile::TempDir, Db, Vec<Impression>) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path(),
        Options {
            embedding_dim: 4,
            semid_levels: 2,
            semid_codebook_size: 4,
            auto_compact: None,
            ..Options::default()
        },
    )
    .unwrap();
    let items: Vec<Item> = (0..20u64)
        .map(|i| Item {
            id: i,
            category: (i % 3) as u32,
            semid: Some(SemId::new(&[(i % 4) as u16, (i / 4 % 4) as u16]).unwrap()),
            embedding: Some(vec![(i % 4) as f32 + 0.5, 1.0, (i % 3) as f32, -1.0]),
        })
        .collect();
    db.upsert_items(&items, Durability::Sync).unwrap();
    let mut evs = Vec::new();
    for u in 1..=3u64 {
        for k in 0..300i64 {
            // Several events per timestamp, some exactly at impression times.
            evs.push(Event {
                user: u,
                ts: (k / 3) * 1000,
                item: ((k * 7 + u as i64) % 20) as u64,
                action: (k % 2) as u8,
                domain: 0,
            });
        }
    }
    db.append(&evs, &AppendOptions::default()).unwrap();
    db.compact().unwrap();
    // Some later events stay pending so reads merge both.
    let late: Vec<Event> = (0..30)
        .map(|k| Event {
            user: 2,
            ts: 100_000 + k * 500,
            item: (k % 20) as u64,
            action: 1,
            domain: 0,
        })
        .collect();
    db.append(&late, &AppendOptions::default()).unwrap();
    let imps = (1..=3u64)
        .flat_map(|u| {
            (0..15).map(move |j| Impression {
                user: u,
                item: (j * 3 % 20) as u64,
                ts: 10_000 + j * 7_000,
                label: (j % 2) as f32,
                domain: 0,
            })
        })
        .collect();
    (dir, db, imps)
}

/// Three long-tailed domains on a small planted dataset (`dim` 16).
#[allow(dead_code)]
pub fn multi() -> PlantedConfig {
    PlantedConfig {
        items: 1_500,
        dim: 16,
        clusters: 12,
        users: 120,
        min_events: 300,
        max_events: 1_000,
        impressions_per_user: 30,
        domain_shares: vec![0.7, 0.2, 0.1],
        domain_shift: 1.5,
        ..PlantedConfig::default()
    }
}

/// Training for `epochs` epochs, with as much patience.
#[allow(dead_code)]
pub fn tcfg(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        patience: epochs,
        ..TrainConfig::default()
    }
}
