//! Damage every file the model crate writes (codebook, dataset metadata, impressions and side
//! tables, checkpoint config and weights) by flipping, truncating and zeroing bytes at random
//! offsets, many times. Each load must either give exactly what the undamaged file gave or fail with a
//! typed corruption (or version) error that names the file; nothing panics.
//!
//! Attempts per file: `SIREN_CORRUPTION_TRIES` (default 40).

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use siren_model::dataset::{self, DatasetDir};
use siren_model::semid::{Codebook, RqKmeansConfig};
use siren_model::synth::PlantedConfig;
use siren_model::train::{load_checkpoint, train, TrainConfig};
use siren_model::ModelError;

/// A comparable summary of what a file loads as.
fn load(kind: &str, dir: &Path) -> Result<String, ModelError> {
    Ok(match kind {
        "codebook" => format!(
            "{:?}",
            Codebook::load(dir.join("data/codebook.bin"))?.encode()
        ),
        "dataset" => {
            let d = DatasetDir::new(dir.join("data"));
            let (meta, s, side) = d.read_tables()?;
            format!(
                "{}|{:?}|{:?}|{:?}|{side:?}",
                serde_json::to_string(&meta).unwrap(),
                s.train,
                s.valid,
                s.test
            )
        }
        "checkpoint" => {
            let l = load_checkpoint(&dir.join("model"))?;
            let mut names: Vec<String> = l
                .params
                .varmap()
                .data()
                .lock()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            names.sort();
            let vm = l.params.varmap().data().lock().unwrap();
            let weights: Vec<Vec<f32>> = names
                .iter()
                .map(|n| {
                    vm[n]
                        .as_tensor()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                })
                .collect();
            format!("{}|{weights:?}", serde_json::to_string(&l.cfg).unwrap())
        }
        _ => unreachable!(),
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn damaged_model_files_are_detected_or_harmless() {
    let tries: usize = std::env::var("SIREN_CORRUPTION_TRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let work = tempfile::tempdir().unwrap();
    let pristine = work.path().join("pristine");
    let data = DatasetDir::new(pristine.join("data"));
    let planted = PlantedConfig {
        items: 400,
        dim: 8,
        clusters: 8,
        users: 10,
        min_events: 100,
        max_events: 400,
        impressions_per_user: 10,
        ..PlantedConfig::default()
    };
    let semid = RqKmeansConfig {
        codebook_size: 16,
        ..RqKmeansConfig::default()
    };
    dataset::import_synthetic(&planted, &data, &semid).unwrap();
    let model = common::cfg("siren-hard");
    let (_db, _m, prepared) = dataset::prepare(&data, std::slice::from_ref(&model), 1).unwrap();
    drop(_db);
    let t = train(
        &model,
        &TrainConfig {
            epochs: 1,
            ..TrainConfig::default()
        },
        &prepared,
    )
    .unwrap();
    t.save(&pristine.join("model"), &prepared.vocabs, prepared.levels)
        .unwrap();

    let files: [(&str, PathBuf); 7] = [
        ("codebook", PathBuf::from("data/codebook.bin")),
        ("dataset", PathBuf::from("data/dataset.json")),
        ("dataset", PathBuf::from("data/impressions.csv")),
        ("dataset", PathBuf::from("data/item_attributes.csv")),
        ("dataset", PathBuf::from("data/user_profiles.csv")),
        ("checkpoint", PathBuf::from("model/config.json")),
        ("checkpoint", PathBuf::from("model/model.safetensors")),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    for (kind, rel) in &files {
        let expect = load(kind, &pristine).unwrap();
        let original = std::fs::read(pristine.join(rel)).unwrap();
        let (mut detected, mut harmless) = (0, 0);
        for t in 0..tries {
            let copy = work.path().join("copy");
            let _ = std::fs::remove_dir_all(&copy);
            copy_dir(&pristine, &copy);
            let mut bytes = original.clone();
            let len = bytes.len();
            let how = match t % 3 {
                0 => {
                    let p = rng.random_range(0..len);
                    bytes[p] ^= 1 << rng.random_range(0..8);
                    format!("bit flip at {p}")
                }
                1 => {
                    let cut = rng.random_range(0..len);
                    bytes.truncate(cut);
                    format!("truncated to {cut}")
                }
                _ => {
                    let p = rng.random_range(0..len);
                    let n = rng.random_range(1..64).min(len - p);
                    bytes[p..p + n].fill(0);
                    format!("{n} bytes zeroed at {p}")
                }
            };
            if bytes == original {
                continue;
            }
            std::fs::write(copy.join(rel), &bytes).unwrap();
            let got = catch_unwind(AssertUnwindSafe(|| load(kind, &copy)))
                .unwrap_or_else(|_| panic!("panic loading {} after {how}", rel.display()));
            match got {
                Ok(v) => {
                    assert_eq!(
                        v,
                        expect,
                        "{} after {how} loaded different data",
                        rel.display()
                    );
                    harmless += 1;
                }
                Err(
                    e @ (ModelError::DataCorruption { .. } | ModelError::UnsupportedVersion { .. }),
                ) => {
                    let name = rel.file_name().unwrap().to_str().unwrap();
                    assert!(e.to_string().contains(name), "{e} does not name {name}");
                    detected += 1;
                }
                Err(e) => panic!("{} after {how}: untyped error {e}", rel.display()),
            }
        }
        eprintln!(
            "{}: {detected} detected, {harmless} harmless",
            rel.display()
        );
        assert!(detected > 0);
    }
}
