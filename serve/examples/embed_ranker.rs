//! Siren inside a Rust feature service: open a database, load a model, score candidates.
//!
//! ```sh
//! siren demo --no-serve                    # makes siren-demo/ with a database and a model
//! cargo run --release -p siren-serve --example embed_ranker -- siren-demo
//! ```
//!
//! Without arguments it makes a tiny database and model of its own first (a few seconds).

use std::path::{Path, PathBuf};

use siren_engine::{AppendOptions, Db, Durability, Event, Options};
use siren_model::dataset::{self, DatasetDir};
use siren_model::models::ModelConfig;
use siren_model::semid::{Codebook, RqKmeansConfig};
use siren_model::synth::PlantedConfig;
use siren_model::train::{train, TrainConfig};
use siren_serve::ranker::now_ms;
use siren_serve::{Ranker, Retrieval, ScoreOptions, ServedModel};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A small dataset and model in `dir` (what `siren demo` does at full size).
fn make_demo(dir: &Path) -> Result<()> {
    let data = DatasetDir::new(dir.join("data"));
    let planted = PlantedConfig {
        items: 2_000,
        dim: 16,
        clusters: 16,
        users: 30,
        min_events: 300,
        max_events: 3_000,
        ..PlantedConfig::default()
    };
    let semid = RqKmeansConfig {
        codebook_size: 32,
        ..RqKmeansConfig::default()
    };
    dataset::import_synthetic(&planted, &data, &semid)?;
    let model = ModelConfig::named("siren-hard")?;
    let (_db, _meta, prepared) = dataset::prepare(&data, std::slice::from_ref(&model), 2)?;
    let trained = train(
        &model,
        &TrainConfig {
            epochs: 1,
            ..TrainConfig::default()
        },
        &prepared,
    )?;
    trained.save(&dir.join("model"), &prepared.vocabs, prepared.levels)?;
    Ok(())
}

fn main() -> Result<()> {
    let tmp;
    let dir: PathBuf = match std::env::args().nth(1) {
        Some(d) => d.into(),
        None => {
            tmp = tempfile::tempdir()?;
            make_demo(tmp.path())?;
            tmp.path().to_path_buf()
        }
    };
    let db_path = dir.join("data/db");
    // Open with the settings the database was created with.
    let db = Db::open(
        &db_path,
        Db::created_with(&db_path)?.apply(Options::default()),
    )?;
    // The service keeps the database; the ranker keeps the model and the codebook.
    let ranker = Ranker::new(
        &db,
        Some(ServedModel::load(dir.join("model"))?),
        Some(Codebook::load(dir.join("data/codebook.bin"))?),
    )?;
    let snap = db.snapshot();
    let user = snap.users()[0];
    let candidates: Vec<u64> = snap.items().step_by(50).take(20).map(|i| i.id).collect();

    // The feature service records a new behaviour, then ranks.
    let now = now_ms();
    db.append(
        &[Event {
            user,
            ts: now - 1,
            item: candidates[0],
            action: 1,
            domain: 0,
        }],
        &AppendOptions {
            durability: Durability::Buffered,
            source: None,
        },
    )?;
    for retrieval in [Retrieval::Hard, Retrieval::Soft] {
        // A snapshot taken after the append sees it.
        let scored = ranker.score(
            &db.snapshot(),
            user,
            &candidates,
            &ScoreOptions {
                retrieval,
                explain: true,
                ..ScoreOptions::default()
            },
        )?;
        let mut ranked = scored.scores.clone();
        ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
        println!(
            "{retrieval:?} GSU, model {}: user {user} ({} events), {} candidates in {:.1} ms",
            scored.model_version,
            scored.history_events,
            ranked.len(),
            scored.timings.total_us / 1e3
        );
        for c in ranked.iter().take(3) {
            let why = c.retrieved.as_ref().map_or(0, Vec::len);
            println!(
                "  item {:>12}  pCTR {:.3}  ({why} behaviours retrieved)",
                c.item, c.score
            );
        }
    }
    Ok(())
}
