//! Seeded, deterministic synthetic data: a catalog with clustered embeddings and SemIDs, and
//! lifelong user histories with Zipf item popularity and per-user long-term interests.
//!
//! SemIDs here follow the generator's own cluster tree (level 1 = cluster, level 2 =
//! sub-cluster, deeper levels = hashed codes), not a fitted codebook.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal, Zipf};
use siren_engine::{Event, Item, SemId};

#[derive(Debug, Clone)]
pub struct SynthConfig {
    pub items: usize,
    pub dim: usize,
    pub semid_levels: u8,
    pub codebook_size: u16,
    /// Level-1 clusters (at most `codebook_size`).
    pub clusters: usize,
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            items: 100_000,
            dim: 64,
            semid_levels: 3,
            codebook_size: 256,
            clusters: 64,
            seed: 7,
        }
    }
}

/// Item ids are spread out (not 0..n) so that nothing can rely on them being dense.
pub fn item_id(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9E37_79B9) % 1_000_000_007 + 1
}

pub struct Catalog {
    pub items: Vec<Item>,
    /// Level-1 cluster of each item.
    pub cluster: Vec<usize>,
    /// Items of each cluster, most popular first.
    pub by_cluster: Vec<Vec<usize>>,
}

pub fn catalog(cfg: &SynthConfig) -> Catalog {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let clusters = cfg.clusters.clamp(1, cfg.codebook_size as usize);
    let unit = Normal::new(0.0f32, 1.0).unwrap();
    let centre: Vec<Vec<f32>> = (0..clusters)
        .map(|_| (0..cfg.dim).map(|_| unit.sample(&mut rng)).collect())
        .collect();
    let subs = 8usize.min(cfg.codebook_size as usize);
    let sub_offset: Vec<Vec<Vec<f32>>> = (0..clusters)
        .map(|_| {
            (0..subs)
                .map(|_| (0..cfg.dim).map(|_| 0.5 * unit.sample(&mut rng)).collect())
                .collect()
        })
        .collect();
    let mut items = Vec::with_capacity(cfg.items);
    let mut cluster = Vec::with_capacity(cfg.items);
    let mut by_cluster = vec![Vec::new(); clusters];
    for i in 0..cfg.items {
        let c = rng.random_range(0..clusters);
        let s = rng.random_range(0..subs);
        let emb: Vec<f32> = (0..cfg.dim)
            .map(|d| centre[c][d] + sub_offset[c][s][d] + 0.3 * unit.sample(&mut rng))
            .collect();
        let mut codes = vec![c as u16, s as u16];
        for l in 2..cfg.semid_levels as usize {
            codes.push(((i * 31 + l * 7) % cfg.codebook_size as usize) as u16);
        }
        codes.truncate(cfg.semid_levels as usize);
        items.push(Item {
            id: item_id(i),
            category: c as u32,
            semid: Some(SemId::new(&codes).expect("1 to 6 levels")),
            embedding: Some(emb),
        });
        cluster.push(c);
        by_cluster[c].push(i);
    }
    Catalog {
        items,
        cluster,
        by_cluster,
    }
}

/// A user's history of `n` events starting at `t0` (ms): 70% of events from the user's three
/// long-term interest clusters, the rest from the whole catalog, popularity Zipf-distributed in
/// both; gaps between events are mostly seconds to minutes with occasional breaks of hours.
pub fn history(cat: &Catalog, seed: u64, user: u64, n: usize, t0: i64) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(seed ^ user.wrapping_mul(0xA24B_AED4_963E_E407));
    let interests: Vec<usize> = (0..3)
        .map(|_| rng.random_range(0..cat.by_cluster.len()))
        .collect();
    let global = Zipf::new(cat.items.len() as f64, 1.05).unwrap();
    let mut t = t0;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        t += if rng.random_bool(0.02) {
            rng.random_range(3_600_000..86_400_000)
        } else {
            rng.random_range(1_000..180_000)
        };
        let idx = if rng.random_bool(0.7) {
            let members = &cat.by_cluster[interests[rng.random_range(0..interests.len())]];
            if members.is_empty() {
                global.sample(&mut rng) as usize - 1
            } else {
                let z = Zipf::new(members.len() as f64, 1.05).unwrap();
                members[z.sample(&mut rng) as usize - 1]
            }
        } else {
            global.sample(&mut rng) as usize - 1
        };
        out.push(Event {
            user,
            ts: t,
            item: cat.items[idx.min(cat.items.len() - 1)].id,
            action: if rng.random_bool(0.1) { 1 } else { 0 },
            domain: if rng.random_bool(0.9) { 0 } else { 1 },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_clustered() {
        let cfg = SynthConfig {
            items: 2_000,
            dim: 16,
            ..SynthConfig::default()
        };
        let a = catalog(&cfg);
        let b = catalog(&cfg);
        assert_eq!(a.items, b.items);
        let h1 = history(&a, 1, 42, 500, 0);
        assert_eq!(h1, history(&b, 1, 42, 500, 0));
        assert!(h1.windows(2).all(|w| w[0].ts < w[1].ts));
        // Interest clusters dominate the history.
        let mut counts = vec![0usize; a.by_cluster.len()];
        let pos: std::collections::HashMap<u64, usize> = a
            .items
            .iter()
            .enumerate()
            .map(|(i, it)| (it.id, i))
            .collect();
        for e in &h1 {
            counts[a.cluster[pos[&e.item]]] += 1;
        }
        counts.sort_unstable_by(|x, y| y.cmp(x));
        assert!(counts[..3].iter().sum::<usize>() > 300, "{counts:?}");
    }
}
