//! Seeded, deterministic synthetic data.
//!
//! - [`catalog`] and [`history`]: a catalog with clustered embeddings and SemIDs, and lifelong
//!   histories with Zipf popularity and per-user interests (the demo and the benchmarks use them).
//!   SemIDs here follow the generator's own cluster tree (level 1 = cluster, level 2 =
//!   sub-cluster, deeper levels = hashed codes), not a fitted codebook.
//! - [`Planted`]: a labelled dataset whose clicks depend on interests that only appear far back
//!   in a user's history (beyond the last [`RECENT_WINDOW`] events) as well as on recent ones,
//!   with the true click probabilities kept so that the best achievable AUC (the ceiling) is
//!   known. With several domains ([`PlantedConfig::domain_shares`]), impressions come in
//!   blocks of [`DOMAIN_BLOCK`] from one domain each, the tail domains have a click affinity per
//!   cluster of their own and each user a third interest cluster per tail domain: interests
//!   partly differ across domains.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal, Zipf};
use siren_engine::{AppendOptions, Db, Durability, Event, Item, SemId};

use crate::data::{user_split, Impression, Splits, UserSplit};
use crate::error::Result;

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

/// Chance that a gap of [`history`] is a break of hours, the breaks' range (ms) and the ordinary
/// gaps' range (ms): uniform in each.
const BREAK_P: f64 = 0.02;
const BREAK_MS: std::ops::Range<i64> = 3_600_000..86_400_000;
const GAP_MS: std::ops::Range<i64> = 1_000..180_000;
/// Chance that an event of [`history`] comes from one of the user's interest clusters.
const FROM_INTERESTS_P: f64 = 0.7;
/// Zipf exponent of item popularity, in the catalog and in each cluster.
const ZIPF_S: f64 = 1.05;
/// Chances of action 1 and of domain 1 (else 0).
const ACTION_P: f64 = 0.1;
const DOMAIN_P: f64 = 0.1;

fn history_rng(seed: u64, user: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ user.wrapping_mul(0xA24B_AED4_963E_E407))
}

/// The user's three long-term interest clusters: the first draws of its generator.
fn interests(cat: &Catalog, rng: &mut StdRng) -> Vec<usize> {
    (0..3)
        .map(|_| rng.random_range(0..cat.by_cluster.len()))
        .collect()
}

/// A user's history of `n` events starting at `t0` (ms): 70% of events from the user's three
/// long-term interest clusters, the rest from the whole catalog, popularity Zipf-distributed in
/// both; gaps between events are mostly seconds to minutes with occasional breaks of hours.
pub fn history(cat: &Catalog, seed: u64, user: u64, n: usize, t0: i64) -> Vec<Event> {
    let mut rng = history_rng(seed, user);
    let interests = interests(cat, &mut rng);
    let global = Zipf::new(cat.items.len() as f64, ZIPF_S).unwrap();
    let mut t = t0;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        t += if rng.random_bool(BREAK_P) {
            rng.random_range(BREAK_MS)
        } else {
            rng.random_range(GAP_MS)
        };
        let idx = if rng.random_bool(FROM_INTERESTS_P) {
            let members = &cat.by_cluster[interests[rng.random_range(0..interests.len())]];
            if members.is_empty() {
                global.sample(&mut rng) as usize - 1
            } else {
                let z = Zipf::new(members.len() as f64, ZIPF_S).unwrap();
                members[z.sample(&mut rng) as usize - 1]
            }
        } else {
            global.sample(&mut rng) as usize - 1
        };
        out.push(Event {
            user,
            ts: t,
            item: cat.items[idx.min(cat.items.len() - 1)].id,
            action: if rng.random_bool(ACTION_P) { 1 } else { 0 },
            domain: if rng.random_bool(DOMAIN_P) { 1 } else { 0 },
        });
    }
    out
}

/// Bits per event of each column of a user's [`history`], from the distributions it draws from
/// (events are independent given the user): the least any lossless store of the columns can
/// take on average, with no index. Time counts the gap to the previous event.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct HistoryEntropy {
    pub time: f64,
    pub item: f64,
    pub action: f64,
    pub domain: f64,
}

impl HistoryEntropy {
    /// All four columns, in bytes per event.
    pub fn bytes_per_event(&self) -> f64 {
        (self.time + self.item + self.action + self.domain) / 8.0
    }
}

/// The entropy of `user`'s [`history`] columns (see [`HistoryEntropy`]).
pub fn history_entropy(cat: &Catalog, seed: u64, user: u64) -> HistoryEntropy {
    fn binary(p: f64) -> f64 {
        -(p * p.log2() + (1.0 - p) * (1.0 - p).log2())
    }
    let span = |r: &std::ops::Range<i64>| ((r.end - r.start) as f64).log2();
    // Breaks and ordinary gaps do not overlap: the kind of gap, then a uniform value in it.
    let time = binary(BREAK_P) + BREAK_P * span(&BREAK_MS) + (1.0 - BREAK_P) * span(&GAP_MS);
    let interests = interests(cat, &mut history_rng(seed, user));
    let mut p = vec![0f64; cat.items.len()];
    let mut add_zipf = |members: &mut dyn Iterator<Item = usize>, n: usize, weight: f64| {
        let norm: f64 = (1..=n).map(|k| (k as f64).powf(-ZIPF_S)).sum();
        for (k, i) in members.enumerate() {
            p[i] += weight * ((k + 1) as f64).powf(-ZIPF_S) / norm;
        }
    };
    let n = cat.items.len();
    add_zipf(&mut (0..n), n, 1.0 - FROM_INTERESTS_P);
    let share = FROM_INTERESTS_P / interests.len() as f64;
    for &c in &interests {
        let m = &cat.by_cluster[c];
        if m.is_empty() {
            add_zipf(&mut (0..n), n, share);
        } else {
            add_zipf(&mut m.iter().copied(), m.len(), share);
        }
    }
    let item = p.iter().filter(|&&x| x > 0.0).map(|&x| -x * x.log2()).sum();
    HistoryEntropy {
        time,
        item,
        action: binary(ACTION_P),
        domain: binary(DOMAIN_P),
    }
}

/// Events at the end of a history that show only the user's current interests.
pub const RECENT_WINDOW: usize = 200;

/// Settings of a [`Planted`] dataset.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PlantedConfig {
    pub items: usize,
    pub dim: usize,
    pub clusters: usize,
    pub users: usize,
    /// History lengths are log-uniform between these.
    pub min_events: usize,
    pub max_events: usize,
    pub impressions_per_user: usize,
    pub seed: u64,
    /// Logit weights of the click model: long-term interest, current interest, item quality,
    /// and the bias (subtracted).
    pub w_long: f64,
    pub w_current: f64,
    pub w_quality: f64,
    pub bias: f64,
    /// Share of each domain (domain `d` is index `d`) in the impressions and the events.
    /// `[1.0]` is a single domain, and no random draw of the single-domain data changes.
    #[serde(default = "one_domain")]
    pub domain_shares: Vec<f64>,
    /// Standard deviation of each tail domain's per-cluster click affinity (logit units).
    #[serde(default)]
    pub domain_shift: f64,
    /// Logit weight of item popularity (the item's standardised log draw weight): clicks that
    /// an ID embedding can learn from other users' impressions of the same item.
    #[serde(default)]
    pub w_popularity: f64,
    /// How impressions are placed and split.
    #[serde(default)]
    pub layout: Layout,
}

/// Where impressions happen and how they are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// Impressions inside the recent window, between its events; split by time (the latest
    /// 20% test, the latest 10% of the rest validation): test users were seen in training.
    #[default]
    Interleaved,
    /// The Taobao-MM layout: every impression after the user's whole history (all of a user's
    /// impressions see the same history), split by user (one in eight test, one in eight
    /// validation, the rest training), so validation and test users are never seen in training.
    AfterHistory,
}

fn one_domain() -> Vec<f64> {
    vec![1.0]
}

/// Impressions of a user come in blocks of this many from one domain, so that per-domain GAUC
/// has users with several impressions in a tail domain.
pub const DOMAIN_BLOCK: usize = 10;

impl PlantedConfig {
    /// A long-tailed multi-domain configuration: one domain with 85% of the impressions and
    /// five with 5, 4, 3, 2 and 1%; more users with shorter histories than the default so that
    /// the 1% domain still has a few thousand impressions.
    /// Lifelong histories in the Taobao-MM layout: histories of exactly 1,000 events, ten
    /// impressions per user after the whole history, clicks driven by long-term interests (only
    /// before the last 200 events), the current interest and popularity; validation and test
    /// users never seen in training.
    pub fn lifelong() -> PlantedConfig {
        PlantedConfig {
            users: 20_000,
            min_events: 1_000,
            max_events: 1_000,
            impressions_per_user: 10,
            w_popularity: 0.5,
            layout: Layout::AfterHistory,
            ..PlantedConfig::default()
        }
    }

    pub fn multi_domain() -> PlantedConfig {
        PlantedConfig {
            users: 4_000,
            min_events: 300,
            max_events: 3_000,
            impressions_per_user: 60,
            domain_shares: vec![0.85, 0.05, 0.04, 0.03, 0.02, 0.01],
            domain_shift: 1.5,
            ..PlantedConfig::default()
        }
    }
}

impl Default for PlantedConfig {
    fn default() -> Self {
        PlantedConfig {
            items: 50_000,
            dim: 64,
            clusters: 64,
            users: 1_000,
            min_events: 1_000,
            max_events: 100_000,
            impressions_per_user: 40,
            seed: 11,
            w_long: 2.0,
            w_current: 1.5,
            w_quality: 0.6,
            bias: 1.6,
            domain_shares: one_domain(),
            domain_shift: 0.0,
            w_popularity: 0.0,
            layout: Layout::Interleaved,
        }
    }
}

/// One user's hidden profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Clusters the user engaged with long ago (only outside the recent window).
    pub long_term: [usize; 2],
    /// Clusters of the recent window.
    pub current: [usize; 2],
    /// Per tail domain (index `d - 1` for domain `d`), a cluster the user likes there only.
    pub domain_interest: Vec<usize>,
    pub n_events: usize,
    pub t0: i64,
}

/// A labelled impression with its true click probability.
#[derive(Debug, Clone, Copy)]
pub struct Truth {
    pub impression: Impression,
    pub p: f64,
    /// The probability without the item's latent quality term: what a model knows that has
    /// every user's interests right but has not memorised each item's own click rate (which
    /// only the item's ID embedding can learn, from that item's training impressions).
    pub p_without_quality: f64,
}

/// A dataset with planted long-term and recent interests.
pub struct Planted {
    pub cfg: PlantedConfig,
    pub catalog: Catalog,
    /// Latent quality of each item (a standard normal), part of the click model.
    pub quality: Vec<f64>,
    /// Per domain, a click affinity per cluster (all zero for domain 0).
    pub affinity: Vec<Vec<f64>>,
    /// Standardised popularity of each item: the log of its draw weight inside its cluster
    /// (the generator draws items Zipf-distributed, most popular first).
    pub popularity: Vec<f64>,
}

/// Standardised log Zipf weight of each item within its cluster.
fn popularity(cat: &Catalog) -> Vec<f64> {
    let mut raw = vec![0.0f64; cat.items.len()];
    for members in &cat.by_cluster {
        for (rank, &i) in members.iter().enumerate() {
            raw[i] = -1.05 * ((rank + 1) as f64).ln();
        }
    }
    let n = raw.len().max(1) as f64;
    let mean = raw.iter().sum::<f64>() / n;
    let sd = (raw.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n)
        .sqrt()
        .max(1e-9);
    raw.iter().map(|x| (x - mean) / sd).collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl Planted {
    pub fn new(cfg: PlantedConfig) -> Planted {
        let catalog = catalog(&SynthConfig {
            items: cfg.items,
            dim: cfg.dim,
            clusters: cfg.clusters,
            seed: cfg.seed,
            ..SynthConfig::default()
        });
        let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x51_7cc1_b727_220a);
        let normal = Normal::new(0.0f64, 1.0).unwrap();
        let quality = (0..cfg.items).map(|_| normal.sample(&mut rng)).collect();
        let shift = Normal::new(0.0f64, cfg.domain_shift.max(0.0)).expect("finite shift");
        let clusters = catalog.by_cluster.len();
        let affinity = (0..cfg.domain_shares.len().max(1))
            .map(|d| {
                (0..clusters)
                    .map(|_| if d == 0 { 0.0 } else { shift.sample(&mut rng) })
                    .collect()
            })
            .collect();
        let popularity = popularity(&catalog);
        Planted {
            cfg,
            catalog,
            quality,
            affinity,
            popularity,
        }
    }

    fn user_rng(&self, user: u64, salt: u64) -> StdRng {
        StdRng::seed_from_u64(
            self.cfg.seed
                ^ user.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ salt.wrapping_mul(0xD6E8_FEB8_6659_FD93),
        )
    }

    pub fn profile(&self, user: u64) -> Profile {
        let mut rng = self.user_rng(user, 1);
        let k = self.catalog.by_cluster.len();
        let mut pick = |avoid: &[usize]| loop {
            let c = rng.random_range(0..k);
            if !avoid.contains(&c) {
                return c;
            }
        };
        let a = pick(&[]);
        let b = pick(&[a]);
        let c = pick(&[a, b]);
        let d = pick(&[a, b, c]);
        let (lo, hi) = (
            self.cfg.min_events as f64,
            self.cfg.max_events.max(self.cfg.min_events) as f64,
        );
        let mut drng = self.user_rng(user, 5);
        let domain_interest = (1..self.cfg.domain_shares.len())
            .map(|_| drng.random_range(0..k))
            .collect();
        let mut rng = self.user_rng(user, 2);
        let n = (lo.ln() + rng.random::<f64>() * (hi.ln() - lo.ln()))
            .exp()
            .round() as usize;
        Profile {
            long_term: [a, b],
            current: [c, d],
            domain_interest,
            n_events: n.max(RECENT_WINDOW + 50),
            t0: 1_500_000_000_000 + rng.random_range(0..30 * 86_400_000),
        }
    }

    fn draw_item(&self, rng: &mut StdRng, cluster: Option<usize>) -> usize {
        let members = cluster
            .map(|c| &self.catalog.by_cluster[c])
            .filter(|m| !m.is_empty());
        match members {
            Some(m) => m[Zipf::new(m.len() as f64, 1.05).unwrap().sample(rng) as usize - 1],
            None => {
                Zipf::new(self.catalog.items.len() as f64, 1.05)
                    .unwrap()
                    .sample(rng) as usize
                    - 1
            }
        }
        .min(self.catalog.items.len() - 1)
    }

    /// The user's events: before the recent window, 60% from the long-term clusters; inside it,
    /// 60% from the current clusters; the rest from the whole catalog.
    pub fn history(&self, user: u64) -> Vec<Event> {
        let p = self.profile(user);
        let mut rng = self.user_rng(user, 3);
        let mut drng = self.user_rng(user, 6);
        let mut t = p.t0;
        let mut out = Vec::with_capacity(p.n_events);
        for i in 0..p.n_events {
            t += if rng.random_bool(0.02) {
                rng.random_range(3_600_000..86_400_000)
            } else {
                rng.random_range(5_000..600_000)
            };
            let recent = i >= p.n_events - RECENT_WINDOW;
            let own = if recent { p.current } else { p.long_term };
            let mut cluster = rng.random_bool(0.6).then(|| own[rng.random_range(0..2)]);
            let domain = self.draw_domain(&mut drng);
            // In a tail domain, half the events follow the user's interest there.
            if domain > 0 && drng.random_bool(0.5) {
                cluster = Some(p.domain_interest[usize::from(domain) - 1]);
            }
            let idx = self.draw_item(&mut rng, cluster);
            out.push(Event {
                user,
                ts: t,
                item: self.catalog.items[idx].id,
                action: u8::from(rng.random_bool(0.2)),
                domain,
            });
        }
        out
    }

    /// A domain drawn from the shares; no draw at all with a single domain.
    fn draw_domain(&self, rng: &mut StdRng) -> u16 {
        let shares = &self.cfg.domain_shares;
        if shares.len() <= 1 {
            return 0;
        }
        let total: f64 = shares.iter().sum();
        let mut x = rng.random::<f64>() * total;
        for (d, s) in shares.iter().enumerate() {
            if x < *s {
                return d as u16;
            }
            x -= s;
        }
        (shares.len() - 1) as u16
    }

    /// The user's current clusters in `domain`: in a tail domain, the second is replaced by the
    /// user's interest there.
    pub fn current_in(&self, p: &Profile, domain: u16) -> [usize; 2] {
        match domain {
            0 => p.current,
            d => [p.current[0], p.domain_interest[usize::from(d) - 1]],
        }
    }

    /// True click probability of item `idx` for a user in `domain`.
    pub fn click_probability(&self, p: &Profile, idx: usize, domain: u16) -> f64 {
        sigmoid(self.logit_without_quality(p, idx, domain) + self.cfg.w_quality * self.quality[idx])
    }

    /// The click logit of item `idx` without its latent quality term.
    fn logit_without_quality(&self, p: &Profile, idx: usize, domain: u16) -> f64 {
        let c = self.catalog.cluster[idx];
        let current = self.current_in(p, domain);
        self.cfg.w_long * f64::from(u8::from(p.long_term.contains(&c)))
            + self.cfg.w_current * f64::from(u8::from(current.contains(&c)))
            + self.cfg.w_popularity * self.popularity[idx]
            + self.affinity[usize::from(domain)][c]
            - self.cfg.bias
    }

    /// Bayes-optimal click probabilities of `test` given the labels of `seen`: each user's
    /// interests known exactly (the logit without quality), each item's latent quality
    /// inferred from the labels of its own `seen` impressions under the generator's standard
    /// normal prior, and the prediction the posterior predictive `E[sigmoid(a + w q) | labels]`
    /// (on a grid of `q` over [-5, 5]). An item never seen labelled keeps the prior. No model
    /// trained on `seen` can expect a better ranking.
    pub fn bayes_probabilities(&self, seen: &[&Truth], test: &[&Truth]) -> Vec<f64> {
        const STEPS: usize = 201;
        let grid: Vec<f64> = (0..STEPS)
            .map(|k| -5.0 + 10.0 * k as f64 / (STEPS - 1) as f64)
            .collect();
        let logit = |p: f64| (p / (1.0 - p)).ln();
        let w = self.cfg.w_quality;
        let prior: Vec<f64> = grid.iter().map(|q| -0.5 * q * q).collect();
        let mut log_post: std::collections::HashMap<u64, Vec<f64>> = Default::default();
        for t in seen {
            let a = logit(t.p_without_quality);
            let lp = (log_post.entry(t.impression.item)).or_insert_with(|| prior.clone());
            for (l, q) in lp.iter_mut().zip(&grid) {
                let p = sigmoid(a + w * q);
                *l += if t.impression.label > 0.5 {
                    p.ln()
                } else {
                    (1.0 - p).ln()
                };
            }
        }
        test.iter()
            .map(|t| {
                let lp = log_post.get(&t.impression.item).unwrap_or(&prior);
                let max = lp.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let a = logit(t.p_without_quality);
                let (num, den) = lp.iter().zip(&grid).fold((0.0, 0.0), |(n, d), (l, q)| {
                    let wgt = (l - max).exp();
                    (n + wgt * sigmoid(a + w * q), d + wgt)
                });
                num / den
            })
            .collect()
    }

    /// Impressions at times inside the recent window (between its events), targets drawn a
    /// third each from the long-term clusters, the current clusters and the whole catalog.
    pub fn impressions(&self, user: u64, history: &[Event]) -> Vec<Truth> {
        let p = self.profile(user);
        let mut rng = self.user_rng(user, 4);
        let mut drng = self.user_rng(user, 7);
        let window = &history[history.len() - RECENT_WINDOW / 2..];
        let after = history.last().map_or(p.t0, |e| e.ts) + 1_000;
        let mut domain = 0;
        (0..self.cfg.impressions_per_user)
            .map(|i| {
                if i % DOMAIN_BLOCK == 0 {
                    domain = self.draw_domain(&mut drng);
                }
                let current = self.current_in(&p, domain);
                let ts = match self.cfg.layout {
                    Layout::Interleaved => window[rng.random_range(0..window.len())].ts + 1,
                    Layout::AfterHistory => after,
                };
                let cluster = match rng.random_range(0..3) {
                    0 => Some(p.long_term[rng.random_range(0..2)]),
                    1 => Some(current[rng.random_range(0..2)]),
                    _ => None,
                };
                let idx = self.draw_item(&mut rng, cluster);
                let prob = self.click_probability(&p, idx, domain);
                Truth {
                    impression: Impression {
                        user,
                        item: self.catalog.items[idx].id,
                        ts,
                        label: if rng.random_bool(prob) { 1.0 } else { 0.0 },
                        domain,
                    },
                    p: prob,
                    p_without_quality: sigmoid(self.logit_without_quality(&p, idx, domain)),
                }
            })
            .collect()
    }

    /// Users are numbered from 1.
    pub fn users(&self) -> impl Iterator<Item = u64> {
        1..=self.cfg.users as u64
    }

    /// Load the catalog (SemIDs when given, one per item in catalog order) and every user's
    /// history into `db`; return the impressions split by time (the latest 20% test, the
    /// latest 10% of the rest validation) with their true probabilities.
    pub fn import(&self, db: &Db, semids: Option<&[SemId]>) -> Result<(Splits, Vec<Truth>)> {
        let items: Vec<Item> = self
            .catalog
            .items
            .iter()
            .enumerate()
            .map(|(i, it)| Item {
                semid: semids.map(|s| s[i]),
                ..it.clone()
            })
            .collect();
        for chunk in items.chunks(10_000) {
            db.upsert_items(chunk, Durability::Buffered)?;
        }
        let opts = AppendOptions {
            durability: Durability::Buffered,
            source: None,
        };
        let mut truths = Vec::new();
        let mut pending = Vec::new();
        for u in self.users() {
            let h = self.history(u);
            truths.extend(self.impressions(u, &h));
            pending.extend(h);
            if pending.len() >= 200_000 {
                db.append(&pending, &opts)?;
                pending.clear();
            }
        }
        db.append(&pending, &opts)?;
        db.flush()?;
        let splits = match self.cfg.layout {
            Layout::Interleaved => split_by_time(&truths, 0.8, 0.1),
            Layout::AfterHistory => split_by_user(&truths),
        };
        Ok((splits, truths))
    }
}

/// Split impressions by user with [`user_split`]: a user's every impression goes to one split
/// (one user in eight test, another one in eight validation, the rest training).
pub fn split_by_user(truths: &[Truth]) -> Splits {
    let mut s = Splits::default();
    for t in truths {
        let part = match user_split(t.impression.user) {
            UserSplit::Test => &mut s.test,
            UserSplit::Valid => &mut s.valid,
            UserSplit::Train => &mut s.train,
        };
        part.push(t.impression);
    }
    for v in [&mut s.train, &mut s.valid, &mut s.test] {
        v.sort_by_key(|i| (i.ts, i.user, i.item));
    }
    s
}

/// Split impressions by time: those at or after the `test_from` quantile of times test, the
/// latest `valid_share` of the rest validation.
pub fn split_by_time(truths: &[Truth], test_from: f64, valid_share: f64) -> Splits {
    let mut all: Vec<Impression> = truths.iter().map(|t| t.impression).collect();
    all.sort_by_key(|i| (i.ts, i.user, i.item));
    let cut = (all.len() as f64 * test_from) as usize;
    let test = all.split_off(cut);
    let n_valid = (all.len() as f64 * valid_share) as usize;
    let valid = all.split_off(all.len() - n_valid);
    Splits {
        train: all,
        valid,
        test,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entropy computed from the generator's distributions agrees with the empirical
    /// entropy of a long history drawn from them (items: the plug-in estimate of 200,000 draws
    /// from a few thousand likely items is close, and below it).
    #[test]
    fn history_entropy_matches_the_drawn_history() {
        use std::collections::HashMap;
        let cfg = SynthConfig {
            items: 5_000,
            dim: 8,
            ..SynthConfig::default()
        };
        let cat = catalog(&cfg);
        let h = history_entropy(&cat, cfg.seed, 3);
        let evs = history(&cat, cfg.seed, 3, 200_000, 0);
        let plug_in = |keys: Vec<u64>| {
            let mut counts: HashMap<u64, f64> = HashMap::new();
            for k in &keys {
                *counts.entry(*k).or_default() += 1.0;
            }
            let n = keys.len() as f64;
            counts
                .values()
                .map(|c| -c / n * (c / n).log2())
                .sum::<f64>()
        };
        let item = plug_in(evs.iter().map(|e| e.item).collect());
        let action = plug_in(evs.iter().map(|e| u64::from(e.action)).collect());
        assert!(
            item <= h.item + 0.01 && item > h.item - 0.1,
            "{item} vs {h:?}"
        );
        assert!((action - h.action).abs() < 0.01, "{action} vs {h:?}");
        // Uniform gaps over 179,000 ms with 2% breaks: about 17.8 bits.
        assert!((h.time - 17.77).abs() < 0.01, "{h:?}");
    }

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

    fn small() -> Planted {
        Planted::new(PlantedConfig {
            items: 3_000,
            dim: 16,
            clusters: 16,
            users: 30,
            min_events: 400,
            max_events: 3_000,
            impressions_per_user: 20,
            ..PlantedConfig::default()
        })
    }

    #[test]
    fn long_term_interests_live_beyond_the_recent_window() {
        let p = small();
        let pos: std::collections::HashMap<u64, usize> = p
            .catalog
            .items
            .iter()
            .enumerate()
            .map(|(i, it)| (it.id, i))
            .collect();
        for u in p.users().take(10) {
            let prof = p.profile(u);
            let h = p.history(u);
            assert_eq!(h.len(), prof.n_events);
            assert!(h.windows(2).all(|w| w[0].ts < w[1].ts));
            let in_long = |e: &Event| prof.long_term.contains(&p.catalog.cluster[pos[&e.item]]);
            let old = &h[..h.len() - RECENT_WINDOW];
            let old_share = old.iter().filter(|e| in_long(e)).count() as f64 / old.len() as f64;
            assert!(
                old_share > 0.5,
                "long-term clusters dominate the old part: {old_share}"
            );
            let (mut n_long, mut n) = (0, 0);
            for t in p.impressions(u, &h) {
                // The last 50 events before an impression show long-term interests only by the
                // chance of the popularity draws.
                let before: Vec<&Event> = h.iter().filter(|e| e.ts < t.impression.ts).collect();
                n_long += before[before.len() - 50..]
                    .iter()
                    .filter(|e| in_long(e))
                    .count();
                n += 50;
                assert!(t.impression.ts > h[h.len() - RECENT_WINDOW].ts);
            }
            let recent_share = n_long as f64 / n as f64;
            assert!(
                recent_share < 0.15,
                "long-term share in the last 50: {recent_share}"
            );
        }
    }

    #[test]
    fn labels_follow_the_click_model_and_split_by_time() {
        let p = small();
        let mut truths = Vec::new();
        for u in p.users() {
            truths.extend(p.impressions(u, &p.history(u)));
        }
        let mean_p: f64 = truths.iter().map(|t| t.p).sum::<f64>() / truths.len() as f64;
        let mean_y: f64 = truths
            .iter()
            .map(|t| f64::from(t.impression.label))
            .sum::<f64>()
            / truths.len() as f64;
        assert!((mean_p - mean_y).abs() < 0.05, "{mean_p} vs {mean_y}");
        let s = split_by_time(&truths, 0.8, 0.1);
        assert_eq!(s.train.len() + s.valid.len() + s.test.len(), truths.len());
        assert!(
            s.train.last().unwrap().ts <= s.valid[0].ts
                && s.valid.last().unwrap().ts <= s.test[0].ts
        );
        // Deterministic.
        let again: Vec<f64> = p
            .users()
            .flat_map(|u| p.impressions(u, &p.history(u)))
            .map(|t| t.p)
            .collect();
        assert_eq!(again, truths.iter().map(|t| t.p).collect::<Vec<_>>());
    }

    /// The Bayes predictions sit between the interests-only probabilities and the planted
    /// ones, and learn from labels: an item seen clicked many times scores above what its
    /// interests alone say, and an item never seen keeps the prior's ranking.
    #[test]
    fn bayes_predictions_learn_item_quality_from_labels_only() {
        let p = Planted::new(PlantedConfig {
            items: 400,
            dim: 8,
            clusters: 8,
            users: 300,
            min_events: 300,
            max_events: 400,
            impressions_per_user: 40,
            ..PlantedConfig::default()
        });
        let truths: Vec<Truth> = p
            .users()
            .flat_map(|u| p.impressions(u, &p.history(u)))
            .collect();
        let (seen, test): (Vec<&Truth>, Vec<&Truth>) =
            truths.iter().partition(|t| t.impression.user % 5 != 0);
        let bayes = p.bayes_probabilities(&seen, &test);
        let gauc_of = |scores: Vec<f32>| {
            let users: Vec<u64> = test.iter().map(|t| t.impression.user).collect();
            let labels: Vec<f32> = test.iter().map(|t| t.impression.label).collect();
            crate::metrics::gauc(&users, &scores, &labels)
                .expect("both classes")
                .value
        };
        let without = gauc_of(test.iter().map(|t| t.p_without_quality as f32).collect());
        let exact = gauc_of(test.iter().map(|t| t.p as f32).collect());
        let learnt = gauc_of(bayes.iter().map(|&b| b as f32).collect());
        assert!(
            without < learnt && learnt < exact,
            "{without} {learnt} {exact}"
        );
        // With no labels at all, the prediction is the prior predictive: a function of the
        // interests' logit alone, so it ranks as the probabilities without quality do.
        let mut prior: Vec<(f64, f64)> = (test.iter().map(|t| t.p_without_quality))
            .zip(p.bayes_probabilities(&[], &test))
            .collect();
        prior.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(prior.windows(2).all(|w| w[0].1 <= w[1].1 + 1e-12));
        // Ten clicks of one item lift its prediction above its prior; ten skips lower it.
        let t = test[0];
        let with = |label: f32| {
            let mut copy = *t;
            copy.impression.label = label;
            let seen = vec![copy; 10];
            p.bayes_probabilities(&seen.iter().collect::<Vec<_>>(), &[t])[0]
        };
        let none = p.bayes_probabilities(&[], &[t])[0];
        assert!(
            with(1.0) > none && with(0.0) < none,
            "{} {none} {}",
            with(1.0),
            with(0.0)
        );
    }
}
