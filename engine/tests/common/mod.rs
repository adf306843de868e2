//! Test support: a simple in-memory reference model of a Siren database and data generators.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use siren_engine::format::{dot_i8, inv_norm, quantize};
use siren_engine::{Event, Item, Options, SemId};

pub fn test_options(dim: u32, levels: u8, codebook: u32) -> Options {
    Options {
        embedding_dim: dim,
        semid_levels: levels,
        semid_codebook_size: codebook,
        block_events: 64,
        auto_compact: None,
        ..Options::default()
    }
}

/// The reference: every user's events sorted by (time, arrival), retention applied on read,
/// retrieval by brute force over the visible events.
pub struct Model {
    pub users: BTreeMap<u64, Vec<(u64, Event)>>,
    arrival: u64,
    pub items: HashMap<u64, Item>,
    pub max_events: usize,
    pub max_age: Option<i64>,
    pub levels: usize,
}

impl Model {
    pub fn new(opts: &Options) -> Model {
        Model {
            users: BTreeMap::new(),
            arrival: 0,
            items: HashMap::new(),
            max_events: opts.max_events_per_user as usize,
            max_age: opts.max_event_age_ms,
            levels: opts.semid_levels as usize,
        }
    }

    pub fn append(&mut self, events: &[Event]) {
        for e in events {
            self.arrival += 1;
            let v = self.users.entry(e.user).or_default();
            v.push((self.arrival, *e));
        }
        for v in self.users.values_mut() {
            v.sort_by_key(|(a, e)| (e.ts, *a));
        }
    }

    pub fn upsert(&mut self, items: &[Item]) {
        for it in items {
            self.items.insert(it.id, it.clone());
        }
    }

    pub fn delete(&mut self, user: u64) {
        self.users.remove(&user);
    }

    /// Retained sequence.
    pub fn retained(&self, user: u64) -> Vec<Event> {
        let Some(v) = self.users.get(&user) else {
            return Vec::new();
        };
        let mut evs: Vec<Event> = v.iter().map(|(_, e)| *e).collect();
        if let (Some(age), Some(newest)) = (self.max_age, evs.iter().map(|e| e.ts).max()) {
            let cutoff = newest.saturating_sub(age);
            evs.retain(|e| e.ts >= cutoff);
        }
        let drop = evs.len().saturating_sub(self.max_events);
        evs.drain(..drop);
        evs
    }

    pub fn visible(&self, user: u64, as_of: Option<i64>) -> Vec<Event> {
        let mut v = self.retained(user);
        if let Some(t) = as_of {
            v.retain(|e| e.ts < t);
        }
        v
    }

    pub fn hard(
        &self,
        user: u64,
        target: &SemId,
        k: usize,
        as_of: Option<i64>,
    ) -> Vec<(Event, u32, u8)> {
        let mut hits: Vec<(Event, u32, u8)> = self
            .visible(user, as_of)
            .into_iter()
            .enumerate()
            .filter_map(|(p, e)| {
                let s = self.items.get(&e.item)?.semid?;
                let d = s.common_prefix(target).min(self.levels) as u8;
                (d > 0).then_some((e, p as u32, d))
            })
            .collect();
        hits.sort_by(|a, b| b.2.cmp(&a.2).then(b.1.cmp(&a.1)));
        hits.truncate(k);
        hits
    }

    pub fn soft(
        &self,
        user: u64,
        target: &[f32],
        k: usize,
        as_of: Option<i64>,
    ) -> Vec<(Event, u32, f32)> {
        let (_, tq) = quantize(target);
        let tinv = inv_norm(&tq);
        let mut hits: Vec<(Event, u32, f32)> = self
            .visible(user, as_of)
            .into_iter()
            .enumerate()
            .filter_map(|(p, e)| {
                let emb = self.items.get(&e.item)?.embedding.as_ref()?;
                let (_, q) = quantize(emb);
                let s = dot_i8(&tq, &q) as f32 * tinv * inv_norm(&q);
                Some((e, p as u32, s))
            })
            .collect();
        hits.sort_by(|a, b| b.2.total_cmp(&a.2).then(b.1.cmp(&a.1)));
        hits.truncate(k);
        hits
    }
}

/// A catalog with clustered SemIDs and embeddings: items of the same level-1 code have similar
/// embeddings. Every 11th item has no SemID, every 13th no embedding.
pub fn catalog(rng: &mut StdRng, n: u64, dim: usize, levels: usize, codebook: u16) -> Vec<Item> {
    let centres: Vec<Vec<f32>> = (0..codebook)
        .map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    let mut prev_emb: Vec<f32> = Vec::new();
    (0..n)
        .map(|i| {
            let codes: Vec<u16> = (0..levels).map(|_| rng.random_range(0..codebook)).collect();
            let c = &centres[codes[0] as usize];
            // Every 4th item repeats the previous item's embedding: equal similarities.
            let emb: Vec<f32> = if i % 4 == 1 {
                prev_emb.clone()
            } else {
                c.iter().map(|x| x + rng.random_range(-0.5..0.5)).collect()
            };
            prev_emb = emb.clone();
            Item {
                id: 1_000 + i * 7,
                category: codes[0] as u32,
                semid: (i % 11 != 5).then(|| SemId::new(&codes).unwrap()),
                embedding: (i % 13 != 3).then_some(emb),
            }
        })
        .collect()
}

/// `n` events for `user` with Zipf-distributed items from `items`, times increasing by random
/// gaps (some zero), starting at `t0`.
pub fn zipf_events(rng: &mut StdRng, user: u64, n: usize, items: &[u64], t0: i64) -> Vec<Event> {
    let zipf = Zipf::new(items.len() as f64, 1.1).unwrap();
    let mut t = t0;
    (0..n)
        .map(|_| {
            t += if rng.random_bool(0.1) {
                0
            } else {
                rng.random_range(1..120_000)
            };
            let r = zipf.sample(rng) as usize - 1;
            Event {
                user,
                ts: t,
                item: items[r.min(items.len() - 1)],
                action: rng.random_range(0..4),
                domain: rng.random_range(0..3),
            }
        })
        .collect()
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Copy a directory tree (a crashed database, to check it while the original is recovered).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for e in std::fs::read_dir(from)
        .expect("read the directory")
        .flatten()
    {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).expect("copy a file");
        }
    }
}

/// Compile the C source `src` into an LD_PRELOAD library in `dir`; an error says why not (no C
/// compiler, or it failed).
pub fn build_preload(
    src: &str,
    dir: &std::path::Path,
    name: &str,
) -> Result<std::path::PathBuf, String> {
    let c = dir.join(format!("{name}.c"));
    let so = dir.join(format!("{name}.so"));
    std::fs::write(&c, src).map_err(|e| format!("write {}: {e}", c.display()))?;
    let out = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&so)
        .arg(&c)
        .arg("-ldl")
        .arg("-lpthread")
        .output()
        .map_err(|e| format!("no C compiler ({e})"))?;
    if !out.status.success() {
        return Err(format!(
            "cc failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(so)
}

/// The number in environment variable `name` (a campaign's size), or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The campaigns' small database (4-dimensional embeddings, two-level SemIDs of 8 codes), with
/// background compaction after `pending_events` pending events or every `interval`.
pub fn compacting_options(pending_events: u64, interval_ms: u64, block_events: u32) -> Options {
    Options {
        block_events,
        auto_compact: Some(siren_engine::AutoCompact {
            pending_events,
            interval: std::time::Duration::from_millis(interval_ms),
        }),
        ..test_options(4, 2, 8)
    }
}
