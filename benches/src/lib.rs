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
        for c in h.chunks(50_000) {
            db.append(
                c,
                &AppendOptions {
                    durability: Durability::Buffered,
                    source: None,
                },
            )
            .expect("append");
        }
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
