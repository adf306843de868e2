//! A planted lifelong dataset exported with `siren export taobao` (both layouts) and imported
//! again with `siren import taobao` comes back as the same samples, users, splits and histories,
//! and a model trained on it (real candle, one epoch) reaches the native dataset's validation
//! GAUC within the seed spread.

use std::collections::HashMap;
use std::path::Path;

use siren_engine::ReadRange;
use siren_lab::import::import_taobao;
use siren_lab::taobao::TaobaoFiles;
use siren_lab::taobao_export::{export, ExportOptions};
use siren_lab::LabError;
use siren_model::data::{Impression, Splits};
use siren_model::dataset::{import_synthetic, prepare, DatasetDir};
use siren_model::models::ModelConfig;
use siren_model::semid::RqKmeansConfig;
use siren_model::synth::{Layout, PlantedConfig};
use siren_model::train::{train, TrainConfig};

fn planted() -> PlantedConfig {
    PlantedConfig {
        items: 2_000,
        dim: 16,
        clusters: 12,
        users: 400,
        min_events: 120,
        max_events: 120,
        impressions_per_user: 12,
        w_popularity: 0.5,
        layout: Layout::AfterHistory,
        ..PlantedConfig::default()
    }
}

fn semid() -> RqKmeansConfig {
    RqKmeansConfig {
        levels: 2,
        codebook_size: 16,
        iterations: 10,
        ..RqKmeansConfig::default()
    }
}

/// A small planted dataset with impressions between each user's events.
fn interleaved(
    users: usize,
    events: std::ops::RangeInclusive<usize>,
    impressions_per_user: usize,
) -> PlantedConfig {
    PlantedConfig {
        items: 400,
        dim: 16,
        clusters: 8,
        users,
        min_events: *events.start(),
        max_events: *events.end(),
        impressions_per_user,
        layout: Layout::Interleaved,
        ..PlantedConfig::default()
    }
}

/// Impressions without their time (the format has none), sorted.
fn untimed(v: &[Impression]) -> Vec<(u64, u64, u32)> {
    let mut out: Vec<_> = v.iter().map(|i| (i.user, i.item, i.label as u32)).collect();
    out.sort_unstable();
    out
}

fn splits_of(dir: &DatasetDir) -> Splits {
    let meta = dir.read_meta().unwrap();
    dir.read_splits(&meta).unwrap()
}

/// Every user's item sequence.
fn histories(dir: &DatasetDir) -> HashMap<u64, Vec<u64>> {
    let (db, _, _) = dir.open().unwrap();
    let snap = db.snapshot();
    snap.users()
        .into_iter()
        .map(|u| {
            let evs = snap.read(u, ReadRange::all()).unwrap();
            (u, evs.iter().map(|e| e.item).collect())
        })
        .collect()
}

/// Validation GAUC after one epoch, for each seed.
fn valid_gauc(dir: &DatasetDir, seeds: &[u64]) -> Vec<f64> {
    let cfg = ModelConfig {
        dim: 16,
        recent: 32,
        retrieved: 16,
        layers: 1,
        ..ModelConfig::named("muse").unwrap()
    };
    let (_db, _meta, data) = prepare(dir, std::slice::from_ref(&cfg), 2).unwrap();
    seeds
        .iter()
        .map(|&seed| {
            let tc = TrainConfig {
                epochs: 1,
                batch_size: 128,
                seed,
                ..TrainConfig::default()
            };
            let t = train(&cfg, &tc, &data).unwrap();
            t.history[0].valid.gauc.unwrap()
        })
        .collect()
}

fn spread(v: &[f64]) -> f64 {
    let max = v.iter().cloned().fold(f64::MIN, f64::max);
    let min = v.iter().cloned().fold(f64::MAX, f64::min);
    max - min
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn taobao_export_then_import_gives_the_same_data_and_gauc() {
    let tmp = tempfile::tempdir().unwrap();
    let at = |p: &str| tmp.path().join(p);
    let native = DatasetDir::new(at("native"));
    import_synthetic(&planted(), &native, &semid()).unwrap();

    let tables = export(&native, &at("tables"), &ExportOptions::default()).unwrap();
    let sharded = ExportOptions {
        shards: Some(3),
        ..ExportOptions::default()
    };
    export(&native, &at("shards"), &sharded).unwrap();
    assert_eq!(
        TaobaoFiles::discover(at("shards"))
            .unwrap()
            .train_shards
            .len(),
        3
    );
    assert!(TaobaoFiles::discover(at("shards"))
        .unwrap()
        .train_samples
        .is_none());
    let from_tables = DatasetDir::new(at("from-tables"));
    let from_shards = DatasetDir::new(at("from-shards"));
    import_taobao(&at("tables"), &from_tables, &semid()).unwrap();
    import_taobao(&at("shards"), &from_shards, &semid()).unwrap();

    // The same samples in the same splits (validation users by the shared hash rule), and the
    // same histories, through both layouts.
    let n = splits_of(&native);
    for got in [splits_of(&from_tables), splits_of(&from_shards)] {
        assert_eq!(untimed(&got.train), untimed(&n.train));
        assert_eq!(untimed(&got.valid), untimed(&n.valid));
        assert_eq!(untimed(&got.test), untimed(&n.test));
    }
    let want = histories(&native);
    assert_eq!(
        tables.events,
        want.values().map(|h| h.len() as u64).sum::<u64>()
    );
    assert_eq!(histories(&from_tables), want);
    assert_eq!(histories(&from_shards), want);

    let seeds = [1, 2, 3];
    let a = valid_gauc(&native, &seeds);
    let b = valid_gauc(&from_tables, &seeds);
    let tolerance = spread(&a).max(spread(&b)) + 0.01;
    eprintln!("validation GAUC native {a:?}, exported and imported {b:?}");
    assert!(mean(&a) > 0.55, "the model learns nothing: {a:?}");
    assert!(
        (mean(&a) - mean(&b)).abs() <= tolerance,
        "native {a:?} vs round trip {b:?}"
    );
}

#[test]
fn taobao_folders_without_a_layout_or_embeddings_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = |dir: &Path, needle: &str| match TaobaoFiles::discover(dir) {
        Err(LabError::Layout { detail, .. }) => assert!(detail.contains(needle), "{detail}"),
        other => panic!("{other:?}"),
    };
    layout(tmp.path(), "neither");
    std::fs::create_dir(tmp.path().join("train")).unwrap();
    std::fs::write(tmp.path().join("train/train-shard-00000.parquet"), b"x").unwrap();
    layout(tmp.path(), "no embedding table");
    std::fs::write(tmp.path().join("train_samples.parquet"), b"x").unwrap();
    layout(tmp.path(), "both");
    // The importer refuses before creating anything.
    let out = DatasetDir::new(tmp.path().join("out"));
    match import_taobao(tmp.path(), &out, &semid()) {
        Err(LabError::Layout { .. }) => {}
        other => panic!("{:?}", other.map(|m| m.name)),
    }
    assert!(!out.root.exists());
}

/// With impressions between a user's events (the interleaved synthetic layout), the exported
/// history is what the user did strictly before the earliest impression, at most `max_history`.
#[test]
fn taobao_export_keeps_the_history_before_the_first_impression() {
    let tmp = tempfile::tempdir().unwrap();
    let native = DatasetDir::new(tmp.path().join("native"));
    let cfg = interleaved(24, 300..=600, 6);
    import_synthetic(&cfg, &native, &semid()).unwrap();
    let opts = ExportOptions {
        max_history: 250,
        ..ExportOptions::default()
    };
    let out = tmp.path().join("out");
    let report = export(&native, &out, &opts).unwrap();
    assert!(report.truncated_histories > 0);

    let (db, _, splits) = native.open().unwrap();
    let snap = db.snapshot();
    let mut earliest: HashMap<u64, i64> = HashMap::new();
    for i in splits.train.iter().chain(&splits.valid).chain(&splits.test) {
        let t = earliest.entry(i.user).or_insert(i.ts);
        *t = (*t).min(i.ts);
    }
    let files = TaobaoFiles::discover(&out).unwrap();
    let mut seen = 0;
    for path in [files.train_users, files.test_users].iter().flatten() {
        for u in siren_lab::taobao::read::<siren_lab::taobao::TaobaoUser>(path).unwrap() {
            let user = u.user as u64;
            let before = snap.read(user, ReadRange::as_of(earliest[&user])).unwrap();
            let want: Vec<i64> = before
                .iter()
                .rev()
                .take(250)
                .rev()
                .map(|e| e.item as i64)
                .collect();
            assert_eq!(u.items, want, "user {user}");
            seen += 1;
        }
    }
    assert!(seen >= cfg.users);
}

/// With impressions between a user's events, shards with as-of histories (the shard default of
/// `siren export taobao`) bring every sample back with exactly the history it saw natively:
/// the importer lays each user's rows onto one timeline.
#[test]
fn as_of_shards_give_every_sample_its_native_history() {
    let tmp = tempfile::tempdir().unwrap();
    let native = DatasetDir::new(tmp.path().join("native"));
    let cfg = interleaved(40, 100..=400, 8);
    import_synthetic(&cfg, &native, &semid()).unwrap();
    let max_history = 250;
    let opts = ExportOptions {
        max_history,
        ..ExportOptions::shards(2)
    };
    let out = tmp.path().join("out");
    let report = export(&native, &out, &opts).unwrap();
    assert!(report.truncated_histories > 0);
    let back = DatasetDir::new(tmp.path().join("back"));
    import_taobao(&out, &back, &semid()).unwrap();

    // (user, item, label, the newest `max_history` items before the impression) of every
    // sample, through both paths.
    let seen = |dir: &DatasetDir| {
        let (db, _, splits) = dir.open().unwrap();
        let snap = db.snapshot();
        let mut rows: Vec<(u64, u64, u32, Vec<u64>)> = [splits.train, splits.valid, splits.test]
            .iter()
            .flatten()
            .map(|i| {
                let range = ReadRange {
                    last: Some(max_history),
                    ..ReadRange::as_of(i.ts)
                };
                let h = snap.read(i.user, range).unwrap();
                (
                    i.user,
                    i.item,
                    i.label as u32,
                    h.iter().map(|e| e.item).collect(),
                )
            })
            .collect();
        rows.sort_unstable();
        rows
    };
    let want = seen(&native);
    assert!(want.iter().any(|r| r.3.len() == max_history));
    assert!(want.iter().any(|r| r.3.len() < max_history));
    assert_eq!(seen(&back), want);
    // The six tables cannot hold a history per row.
    let tables = ExportOptions {
        shards: None,
        ..opts
    };
    assert!(matches!(
        export(&native, &tmp.path().join("tables"), &tables),
        Err(LabError::InvalidArgument(_))
    ));
}
