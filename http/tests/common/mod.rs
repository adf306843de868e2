//! A small synthetic dataset and a trained model, imported and trained once per test binary,
//! and copied into a fresh directory for each server (a database is opened by one process).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use siren_http::config::Config;
use siren_http::server::{self, Running};
use siren_model::dataset::{self, DatasetDir};
use siren_model::models::ModelConfig;
use siren_model::semid::RqKmeansConfig;
use siren_model::synth::PlantedConfig;
use siren_model::train::{train, TrainConfig};

pub struct Built {
    _dir: tempfile::TempDir,
    pub dataset: PathBuf,
    pub model: PathBuf,
}

fn build() -> Built {
    let dir = tempfile::tempdir().unwrap();
    let dataset = dir.path().join("data");
    let cfg = PlantedConfig {
        items: 1_500,
        dim: 16,
        clusters: 12,
        users: 40,
        min_events: 300,
        max_events: 1_500,
        impressions_per_user: 16,
        ..PlantedConfig::default()
    };
    let semid = RqKmeansConfig {
        levels: 3,
        codebook_size: 64,
        ..RqKmeansConfig::default()
    };
    dataset::import_synthetic(&cfg, &DatasetDir::new(&dataset), &semid).unwrap();
    let model = ModelConfig {
        dim: 16,
        recent: 16,
        retrieved: 16,
        layers: 1,
        ..ModelConfig::named("siren-hard").unwrap()
    };
    let (_db, _meta, data) =
        dataset::prepare(&DatasetDir::new(&dataset), std::slice::from_ref(&model), 2).unwrap();
    let t = train(
        &model,
        &TrainConfig {
            epochs: 1,
            batch_size: 64,
            ..TrainConfig::default()
        },
        &data,
    )
    .unwrap();
    let ck = dir.path().join("model");
    t.save(&ck, &data.vocabs, data.levels).unwrap();
    Built {
        _dir: dir,
        dataset,
        model: ck,
    }
}

pub fn built() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(build)
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A server on an ephemeral loopback port over a fresh copy of the dataset's database.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub running: Running,
    pub base: String,
}

impl TestServer {
    pub async fn start(edit: impl FnOnce(&mut Config)) -> TestServer {
        let b = built();
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&b.dataset.join("db"), &dir.path().join("db"));
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            db: dir.path().join("db"),
            model: Some(b.model.clone()),
            codebook: Some(b.dataset.join("codebook.bin")),
            backup_dir: Some(dir.path().join("backups")),
            ..Config::default()
        };
        edit(&mut config);
        let (db, ranker) = siren_http::state::open(&config).unwrap();
        let running = server::start(config, Arc::new(db), Arc::new(ranker))
            .await
            .unwrap();
        let base = format!("http://{}", running.addr);
        TestServer { dir, running, base }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// A user and an item of the dataset with history (for scoring and retrieval).
pub fn some_user_and_items(s: &TestServer) -> (u64, Vec<u64>) {
    let snap = s.running.state.db.snapshot();
    let user = snap.users()[3];
    let items: Vec<u64> = snap.items().take(40).map(|i| i.id).collect();
    (user, items)
}

/// The most candidates a request may hold (`limits.max_candidates`' default), items of the
/// dataset: a score of them takes well over a millisecond, for the deadline tests (a score of
/// a few dozen, its user's history summary kept from an earlier request, no longer does).
pub fn items_for_a_slow_score(s: &TestServer) -> Vec<u64> {
    let snap = s.running.state.db.snapshot();
    snap.items().take(1_000).map(|i| i.id).collect()
}

/// This process's resident memory, KiB (Linux).
pub fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl TestServer {
    /// The server's OpenAPI document, as served.
    pub async fn openapi(&self) -> serde_json::Value {
        reqwest::get(self.url("/openapi.json"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The version of the model loaded now.
    pub fn model_version(&self) -> Option<String> {
        let m = self.running.state.ranker.model()?;
        Some(m.version().to_string())
    }
}
