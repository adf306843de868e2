//! Semantic IDs by residual k-means (RQ-KMeans).
//!
//! Hard retrieval asks the engine for the behaviours whose SemID shares a prefix with the
//! target's, so a SemID is only useful if a longer shared prefix means a more similar item.
//! Residual k-means gives that ordering by construction: level 1 clusters the embeddings, and
//! each later level clusters what the earlier levels left unexplained (the residual), so the
//! first code says the most about an item and each further code refines it. It needs no training
//! loop and no GPU; a catalog of 100,000 items fits in seconds.
//!
//! Fitting is a pure function of the embeddings and the [`RqKmeansConfig`]: the seed drives
//! every random choice, each point's nearest centroid is computed by the same kernel in the same
//! order whichever thread runs it, and cluster sums are reduced in point order. The same catalog
//! and seed therefore give the same codebook, bit for bit, whatever the number of cores, so
//! SemIDs stored in a database can be recomputed and checked. (Across builds this holds as long
//! as `rand`'s `StdRng` keeps its algorithm, which `rand` promises only within a minor version;
//! the saved codebook, not the seed, is the record to keep.)
//!
//! A codebook file is, little-endian:
//!
//! ```text
//! magic  b"SIRENCBK"          8 bytes
//! version u32 (= 1)
//! dim u32, levels u32, size u32
//! centroids f32 × levels × size × dim   level-major, then code, then component
//! crc32c u32                  over every byte before it
//! ```

use std::fmt;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use siren_engine::{SemId, MAX_SEMID_LEVELS};

use crate::error::{ModelError, Result};

pub const CODEBOOK_MAGIC: &[u8; 8] = b"SIRENCBK";
pub const CODEBOOK_VERSION: u32 = 1;
/// Codes are stored as u16 by the engine.
pub const MAX_CODEBOOK_SIZE: usize = 1 << 16;

const HEADER_LEN: usize = 24;
const CRC_LEN: usize = 4;

/// Inputs are bounded well below `f32::MAX` so that squared norms and residuals stay finite in
/// f32 for any realistic dimension; a codebook with an infinite centroid would assign
/// everything to code 0, and [`Codebook::decode`] rejects it.
const MAX_ABS_VALUE: f32 = 1e15;

/// Points per block of the distance kernel. With [`LANES`] this fixes the kernel's register
/// tile (4 × 8 accumulators fit the 16 SSE registers of baseline x86-64 with room to spare).
const BLOCK: usize = 4;
/// Centroids per group of the distance kernel.
const LANES: usize = 8;

/// Below this many multiply-adds per piece of work, handing it to another thread costs more
/// than it saves.
const MIN_WORK_PER_THREAD: usize = 1 << 20;

/// Seeding looks at no more than this many points per centroid. Greedy k-means++ costs several
/// Lloyd steps on the full data, yet a random subset of a few dozen points per centroid already
/// shows it where the mass is; Lloyd's iterations on every point do the rest.
const SEED_POINTS_PER_CODE: usize = 40;

/// `e` scaled to unit length (zero stays zero). Siren fits and assigns SemIDs on unit-length
/// embeddings because its similarity is the cosine.
pub fn unit_length(e: &[f32]) -> impl Iterator<Item = f32> + '_ {
    let n = e.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    e.iter().map(move |v| v / n)
}

/// How to fit a [`Codebook`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RqKmeansConfig {
    /// Number of codes per SemID (1 to 6). Each level adds a finer refinement.
    pub levels: usize,
    /// Centroids per level (2 to 65,536). The engine's prefix index sizes its keys by this.
    pub codebook_size: usize,
    /// Lloyd update steps per level; fitting stops earlier when no assignment changes.
    pub iterations: usize,
    pub seed: u64,
    /// Fit on a seeded random subset of this many items when the catalog is larger. k-means
    /// centroids settle long before every item has been seen, so this bounds fit time on large
    /// catalogs; every item still gets a SemID from [`Codebook::assign_all`].
    pub max_fit_points: Option<usize>,
}

impl Default for RqKmeansConfig {
    fn default() -> Self {
        RqKmeansConfig {
            levels: 3,
            codebook_size: 256,
            iterations: 20,
            seed: 0,
            max_fit_points: None,
        }
    }
}

/// One level's centroids, laid out for the distance kernel.
///
/// Centroids are grouped [`LANES`] at a time and each group is stored component-major, so that
/// the kernel reads one contiguous run of memory per group and the compiler can vectorise across
/// the group's centroids without reordering any sum.
#[derive(Clone)]
struct Kernel {
    k: usize,
    dim: usize,
    /// `packed[(g * dim + t) * LANES + l]` is component `t` of centroid `g * LANES + l`; the
    /// last group is zero-padded.
    packed: Vec<f32>,
    norms: Vec<f32>,
}

impl Kernel {
    fn new(centroids: &[f32], k: usize, dim: usize) -> Kernel {
        let groups = k.div_ceil(LANES);
        let mut packed = vec![0f32; groups * dim * LANES];
        for (j, c) in centroids.chunks_exact(dim).enumerate() {
            let (g, l) = (j / LANES, j % LANES);
            for (t, &v) in c.iter().enumerate() {
                packed[(g * dim + t) * LANES + l] = v;
            }
        }
        let norms = centroids.chunks_exact(dim).map(sq_norm).collect();
        Kernel {
            k,
            dim,
            packed,
            norms,
        }
    }

    /// For each row of `xs`, the nearest centroid (lowest index on ties).
    ///
    /// Distances are `||x||² − 2x·c + ||c||²` so that the inner loop is a dot product over a
    /// register tile of [`BLOCK`] points × [`LANES`] centroids. Each dot product is accumulated
    /// over components in order, whatever block or thread the point lands in, which is what
    /// makes assignments independent of how the rows are split.
    fn nearest(&self, xs: &[f32], out: &mut [u32]) {
        let dim = self.dim;
        debug_assert_eq!(xs.len(), out.len() * dim);
        let mut xt = vec![0f32; dim * BLOCK];
        for (xb, ob) in xs.chunks(BLOCK * dim).zip(out.chunks_mut(BLOCK)) {
            let np = ob.len();
            if np < BLOCK {
                xt.fill(0.0);
            }
            for (p, x) in xb.chunks_exact(dim).enumerate() {
                for (t, &v) in x.iter().enumerate() {
                    xt[t * BLOCK + p] = v;
                }
            }
            let mut best = [(f32::INFINITY, 0u32); BLOCK];
            for (g, cg) in self.packed.chunks_exact(dim * LANES).enumerate() {
                let mut acc = [[0f32; LANES]; BLOCK];
                for (xv, cv) in xt.chunks_exact(BLOCK).zip(cg.chunks_exact(LANES)) {
                    let xv: &[f32; BLOCK] = xv.try_into().expect("BLOCK-sized chunk");
                    let cv: &[f32; LANES] = cv.try_into().expect("LANES-sized chunk");
                    for p in 0..BLOCK {
                        for l in 0..LANES {
                            acc[p][l] += xv[p] * cv[l];
                        }
                    }
                }
                let base = g * LANES;
                let lanes = LANES.min(self.k - base);
                let norms = &self.norms[base..base + lanes];
                for (b, a) in best.iter_mut().zip(&acc).take(np) {
                    for (l, (&cn, &dot)) in norms.iter().zip(a).enumerate() {
                        let s = cn - 2.0 * dot;
                        if s < b.0 {
                            *b = (s, (base + l) as u32);
                        }
                    }
                }
            }
            for (o, b) in ob.iter_mut().zip(&best) {
                *o = b.1;
            }
        }
    }

    fn nearest_par(&self, xs: &[f32], out: &mut [u32], par: Par) {
        let dim = self.dim;
        par.rows(out, 1, self.k * dim, |first, piece| {
            self.nearest(&xs[first * dim..(first + piece.len()) * dim], piece)
        });
    }
}

/// How row-wise work is shared out on rayon's pool. Results never depend on the split or the
/// thread count: rows are independent and every reduction across rows runs on one thread in
/// row order.
#[derive(Debug, Clone, Copy)]
struct Par {
    /// Multiply-adds a piece of rows must hold at least: below that, handing a piece to another
    /// thread costs more than it saves.
    min_work: usize,
}

impl Par {
    fn auto() -> Par {
        Par {
            min_work: MIN_WORK_PER_THREAD,
        }
    }

    /// Run `f(first_row, rows)` over contiguous pieces of `out`, in parallel. `out` holds
    /// `width` values per row; pieces are whole rows.
    fn rows<T: Send>(
        self,
        out: &mut [T],
        width: usize,
        cost_per_row: usize,
        f: impl Fn(usize, &mut [T]) + Sync,
    ) {
        let n = out.len() / width;
        // A few pieces per thread balance the load; more only add overhead.
        let by_threads = n.div_ceil(4 * rayon::current_num_threads());
        let by_work = self.min_work / cost_per_row.max(1);
        let rows = by_threads.max(by_work).max(1);
        if rows >= n {
            f(0, out);
            return;
        }
        out.par_chunks_mut(rows * width)
            .enumerate()
            .for_each(|(i, piece)| f(i * rows, piece));
    }
}

/// Sum of squares with eight partial sums: the fixed split lets the compiler vectorise while
/// the result stays a function of the input alone.
fn sq_norm(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l] * c[l];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for &v in rest {
        s += v * v;
    }
    s
}

/// Squared Euclidean distance, computed directly (k-means++ needs exact zeros for points that
/// coincide with a chosen centre, which the expanded form does not give).
fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            let d = x[l] - y[l];
            acc[l] += d * d;
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        let d = x - y;
        s += d * d;
    }
    s
}

/// Greedy k-means++ seeding: each new centre is the best of a few candidates drawn with
/// probability proportional to their squared distance from the centres so far. Plain k-means++
/// still puts two centres in one cluster often enough that Lloyd's iterations, which cannot
/// move a centre across an empty gap, end with one cluster split and two merged; trying
/// `2 + ln k` candidates and keeping the one that lowers the total distance most makes that
/// rare, for about as much work as `2 + ln k` Lloyd steps over the points it looks at.
///
/// When every point already coincides with a centre (fewer distinct points than `k`), the
/// remaining centres are copies of random points. Copies never win a point (ties go to the
/// lowest index), so the level simply uses fewer distinct codes.
fn kmeans_pp(xs: &[f32], dim: usize, k: usize, rng: &mut StdRng, par: Par) -> Vec<f32> {
    let n = xs.len() / dim;
    let row = |i: usize| &xs[i * dim..(i + 1) * dim];
    let trials = 2 + (k as f64).ln() as usize;
    let mut cents = Vec::with_capacity(k * dim);
    cents.extend_from_slice(row(rng.random_range(0..n)));
    let mut d2 = vec![0f32; n];
    par.rows(&mut d2, 1, dim, |first, piece| {
        for (o, i) in piece.iter_mut().zip(first..) {
            *o = sq_dist(row(i), &cents[..dim]);
        }
    });
    // Candidate `c`'s distances in column `c`: row-major `n × trials`.
    let mut cand_d2 = vec![0f32; n * trials];
    let mut targets = Vec::with_capacity(trials);
    let mut cands = Vec::with_capacity(trials);
    for _ in 1..k {
        let total: f64 = d2.iter().map(|&d| f64::from(d)).sum();
        if !(total > 0.0 && total.is_finite()) {
            cents.extend_from_slice(row(rng.random_range(0..n)));
            continue;
        }
        targets.clear();
        targets.extend((0..trials).map(|_| rng.random::<f64>() * total));
        targets.sort_unstable_by(f64::total_cmp);
        cands.clear();
        let (mut acc, mut last_positive) = (0.0, 0);
        let mut next = targets.iter().peekable();
        for (i, &d) in d2.iter().enumerate() {
            if d > 0.0 {
                last_positive = i;
                acc += f64::from(d);
                while next.next_if(|&&t| acc > t).is_some() {
                    cands.push(i);
                }
                if next.peek().is_none() {
                    break;
                }
            }
        }
        // Rounding can leave `acc` a hair below the largest targets at the end.
        cands.resize(trials, last_positive);

        let d2_now = &d2;
        let cands_now = &cands;
        par.rows(&mut cand_d2, trials, dim * trials, |first, piece| {
            for (out, i) in piece.chunks_exact_mut(trials).zip(first..) {
                for (o, &c) in out.iter_mut().zip(cands_now) {
                    *o = d2_now[i].min(sq_dist(row(i), row(c)));
                }
            }
        });
        let mut potential = vec![0f64; trials];
        for r in cand_d2.chunks_exact(trials) {
            for (p, &d) in potential.iter_mut().zip(r) {
                *p += f64::from(d);
            }
        }
        let mut best = 0;
        for (c, &p) in potential.iter().enumerate() {
            if p < potential[best] {
                best = c;
            }
        }
        for (d, r) in d2.iter_mut().zip(cand_d2.chunks_exact(trials)) {
            *d = r[best];
        }
        cents.extend_from_slice(row(cands[best]));
    }
    cents
}

/// `m` distinct rows of `xs` drawn at random, in their original order (which keeps memory
/// access as local as the input's).
fn sample_rows(xs: &[f32], dim: usize, m: usize, rng: &mut StdRng) -> Vec<f32> {
    let mut idx = rand::seq::index::sample(rng, xs.len() / dim, m).into_vec();
    idx.sort_unstable();
    let mut out = Vec::with_capacity(m * dim);
    for i in idx {
        out.extend_from_slice(&xs[i * dim..(i + 1) * dim]);
    }
    out
}

/// One level of k-means: k-means++ seeding, then Lloyd steps until no assignment changes.
/// Returns the centroids and each point's assignment under them.
fn kmeans(
    xs: &[f32],
    dim: usize,
    k: usize,
    iterations: usize,
    rng: &mut StdRng,
    par: Par,
) -> (Vec<f32>, Vec<u32>) {
    let n = xs.len() / dim;
    let seed_rows = SEED_POINTS_PER_CODE.saturating_mul(k);
    let mut cents = if n > seed_rows {
        kmeans_pp(&sample_rows(xs, dim, seed_rows, rng), dim, k, rng, par)
    } else {
        kmeans_pp(xs, dim, k, rng, par)
    };
    let mut near = vec![0u32; n];
    Kernel::new(&cents, k, dim).nearest_par(xs, &mut near, par);
    let mut next = vec![0u32; n];
    let mut sums = vec![0f64; k * dim];
    let mut counts = vec![0usize; k];
    for _ in 0..iterations {
        // Sums in f64 and in point order: exact enough that the mean does not drift with n,
        // and the same whatever the thread count.
        sums.fill(0.0);
        counts.fill(0);
        for (x, &a) in xs.chunks_exact(dim).zip(&near) {
            let a = a as usize;
            counts[a] += 1;
            for (s, &v) in sums[a * dim..(a + 1) * dim].iter_mut().zip(x) {
                *s += f64::from(v);
            }
        }
        for (j, &c) in counts.iter().enumerate() {
            if c > 0 {
                for (o, &s) in cents[j * dim..(j + 1) * dim]
                    .iter_mut()
                    .zip(&sums[j * dim..(j + 1) * dim])
                {
                    *o = (s / c as f64) as f32;
                }
            }
        }
        reseed_empty(xs, dim, &counts, &near, &mut cents);
        Kernel::new(&cents, k, dim).nearest_par(xs, &mut next, par);
        let changed = next != near;
        std::mem::swap(&mut near, &mut next);
        if !changed {
            break;
        }
    }
    (cents, near)
}

/// Move each empty cluster's centroid onto one of the points worst served by its (just updated)
/// centroid, worst first, ties by index so the choice is deterministic. An empty centroid is a
/// wasted code; the worst-served points are where a new centroid lowers the error most.
///
/// Distances are computed directly rather than by the expanded form so that a point sitting
/// exactly on its centroid has distance exactly 0 and is never used: with fewer distinct points
/// than codes, surplus centroids then stay empty instead of being shuffled between copies of
/// the same point on every iteration.
fn reseed_empty(xs: &[f32], dim: usize, counts: &[usize], near: &[u32], cents: &mut [f32]) {
    let empty: Vec<usize> = (0..counts.len()).filter(|&j| counts[j] == 0).collect();
    if empty.is_empty() {
        return;
    }
    let dist: Vec<f32> = xs
        .chunks_exact(dim)
        .zip(near)
        .map(|(x, &a)| sq_dist(x, &cents[a as usize * dim..(a as usize + 1) * dim]))
        .collect();
    let worse = |a: &usize, b: &usize| dist[*b].total_cmp(&dist[*a]).then(a.cmp(b));
    let mut cand: Vec<usize> = (0..near.len()).filter(|&i| dist[i] > 0.0).collect();
    if cand.len() > empty.len() {
        cand.select_nth_unstable_by(empty.len() - 1, worse);
        cand.truncate(empty.len());
    }
    cand.sort_unstable_by(worse);
    for (&j, &i) in empty.iter().zip(&cand) {
        cents[j * dim..(j + 1) * dim].copy_from_slice(&xs[i * dim..(i + 1) * dim]);
    }
}

/// A fitted residual codebook: `levels` sets of `size` centroids of dimension `dim`.
#[derive(Clone)]
pub struct Codebook {
    dim: usize,
    levels: usize,
    size: usize,
    /// Per level, `size × dim` row-major.
    centroids: Vec<Vec<f32>>,
    /// The same centroids laid out for the distance kernel, built once so that [`Codebook::assign`]
    /// on a single item does not repack the codebook.
    kernels: Vec<Kernel>,
}

impl PartialEq for Codebook {
    fn eq(&self, other: &Self) -> bool {
        self.dim == other.dim
            && self.levels == other.levels
            && self.size == other.size
            && self.centroids == other.centroids
    }
}

impl fmt::Debug for Codebook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codebook")
            .field("dim", &self.dim)
            .field("levels", &self.levels)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Codebook {
    /// Fit a codebook on `embeddings` (`n × dim`, row-major).
    ///
    /// Level 1 is k-means on the embeddings; level `l + 1` is k-means on what levels `1..=l`
    /// leave (each item minus its chosen centroids). Fails with
    /// [`ModelError::InvalidArgument`] on an empty or ragged input, a non-finite or huge value,
    /// or a configuration outside 1 to 6 levels or 2 to 65,536 codes.
    pub fn fit(embeddings: &[f32], dim: usize, cfg: &RqKmeansConfig) -> Result<Codebook> {
        Codebook::fit_par(embeddings, dim, cfg, Par::auto())
    }

    fn fit_par(embeddings: &[f32], dim: usize, cfg: &RqKmeansConfig, par: Par) -> Result<Codebook> {
        validate_shape(dim, cfg.levels, cfg.codebook_size).map_err(ModelError::invalid)?;
        if embeddings.is_empty() {
            return Err(ModelError::invalid("no embeddings to fit a codebook on"));
        }
        if !embeddings.len().is_multiple_of(dim) {
            return Err(ModelError::invalid(format!(
                "{} values are not a whole number of {dim}-dimensional embeddings",
                embeddings.len()
            )));
        }
        if let Some(i) = embeddings
            .iter()
            .position(|v| !v.is_finite() || v.abs() > MAX_ABS_VALUE)
        {
            return Err(ModelError::invalid(format!(
                "embedding {} component {} is {}; values must be finite and at most {MAX_ABS_VALUE:e} in magnitude",
                i / dim,
                i % dim,
                embeddings[i]
            )));
        }
        if cfg.max_fit_points == Some(0) {
            return Err(ModelError::invalid("max_fit_points must be at least 1"));
        }
        let n = embeddings.len() / dim;
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let mut residual = match cfg.max_fit_points {
            Some(m) if n > m => sample_rows(embeddings, dim, m, &mut rng),
            _ => embeddings.to_vec(),
        };
        let k = cfg.codebook_size;
        let mut centroids = Vec::with_capacity(cfg.levels);
        for _ in 0..cfg.levels {
            let (cents, assign) = kmeans(&residual, dim, k, cfg.iterations, &mut rng, par);
            // The same f32 subtraction `assign` performs, so fitted items get the codes they
            // were fitted with.
            for (r, &a) in residual.chunks_exact_mut(dim).zip(&assign) {
                let c = &cents[a as usize * dim..(a as usize + 1) * dim];
                for (rv, &cv) in r.iter_mut().zip(c) {
                    *rv -= cv;
                }
            }
            centroids.push(cents);
        }
        Ok(Codebook::from_parts(dim, cfg.levels, k, centroids))
    }

    /// Assumes the shape was validated.
    fn from_parts(dim: usize, levels: usize, size: usize, centroids: Vec<Vec<f32>>) -> Codebook {
        let kernels = centroids
            .iter()
            .map(|c| Kernel::new(c, size, dim))
            .collect();
        Codebook {
            dim,
            levels,
            size,
            centroids,
            kernels,
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn levels(&self) -> usize {
        self.levels
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// The centroids of `level` (0-based), `size × dim` row-major.
    ///
    /// # Panics
    /// If `level >= self.levels()`.
    pub fn centroids(&self, level: usize) -> &[f32] {
        &self.centroids[level]
    }

    /// The SemID of one embedding: at each level, the nearest centroid to what the earlier
    /// levels left. Greedy, as in fitting, so an item of the fitting set gets the codes it was
    /// fitted with.
    ///
    /// # Panics
    /// If `x.len() != self.dim()`.
    pub fn assign(&self, x: &[f32]) -> SemId {
        assert_eq!(
            x.len(),
            self.dim,
            "embedding length must equal the codebook's dim"
        );
        self.assign_par(x, Par::auto()).pop().expect("one row")
    }

    /// [`Codebook::assign`] for each row of `xs` (`n × dim`, row-major), with the same results.
    ///
    /// # Panics
    /// If `xs.len()` is not a multiple of `self.dim()`.
    pub fn assign_all(&self, xs: &[f32]) -> Vec<SemId> {
        self.assign_par(xs, Par::auto())
    }

    fn assign_par(&self, xs: &[f32], par: Par) -> Vec<SemId> {
        let (codes, _) = self.encode_rows(xs, par, |_, _| {});
        codes
            .iter()
            .map(|c| SemId::new(&c[..self.levels]).expect("levels checked at construction"))
            .collect()
    }

    /// Greedy residual assignment of every row; calls `after_level(level, residuals)` after each
    /// level so [`Codebook::report`] can measure what is left without a second pass.
    fn encode_rows(
        &self,
        xs: &[f32],
        par: Par,
        mut after_level: impl FnMut(usize, &[f32]),
    ) -> (Vec<[u16; MAX_SEMID_LEVELS]>, Vec<f32>) {
        let dim = self.dim;
        assert!(
            xs.len().is_multiple_of(dim),
            "{} values are not a whole number of {dim}-dimensional embeddings",
            xs.len()
        );
        let n = xs.len() / dim;
        let mut codes = vec![[0u16; MAX_SEMID_LEVELS]; n];
        let mut residual = xs.to_vec();
        let mut near = vec![0u32; n];
        for (level, (kernel, cents)) in self.kernels.iter().zip(&self.centroids).enumerate() {
            kernel.nearest_par(&residual, &mut near, par);
            for ((r, code), &a) in residual.chunks_exact_mut(dim).zip(&mut codes).zip(&near) {
                code[level] = a as u16;
                let c = &cents[a as usize * dim..(a as usize + 1) * dim];
                for (rv, &cv) in r.iter_mut().zip(c) {
                    *rv -= cv;
                }
            }
            after_level(level, &residual);
        }
        (codes, residual)
    }

    /// The embedding a SemID stands for: the sum of its codes' centroids. A SemID shorter than
    /// the codebook gives the coarser reconstruction of its prefix; codes beyond the codebook's
    /// levels are ignored.
    ///
    /// # Panics
    /// If a code is not below `self.size()`.
    pub fn reconstruct(&self, semid: &SemId) -> Vec<f32> {
        let mut out = vec![0f32; self.dim];
        for (cents, &code) in self.centroids.iter().zip(semid.codes()) {
            let code = usize::from(code);
            assert!(
                code < self.size,
                "code {code} is outside a codebook of size {}",
                self.size
            );
            for (o, &c) in out
                .iter_mut()
                .zip(&cents[code * self.dim..(code + 1) * self.dim])
            {
                *o += c;
            }
        }
        out
    }

    /// How well this codebook serves `xs` (`n × dim`, row-major): code utilisation, SemID
    /// collisions and reconstruction error.
    ///
    /// # Panics
    /// If `xs.len()` is not a multiple of `self.dim()`.
    pub fn report(&self, xs: &[f32]) -> CodebookReport {
        let n = xs.len() / self.dim.max(1);
        let mean_sq = |rows: &[f32]| {
            if n == 0 {
                0.0
            } else {
                rows.chunks_exact(self.dim)
                    .map(|r| f64::from(sq_norm(r)))
                    .sum::<f64>()
                    / n as f64
            }
        };
        let mut mse_by_level = Vec::with_capacity(self.levels);
        let (codes, _) = self.encode_rows(xs, Par::auto(), |_, r| mse_by_level.push(mean_sq(r)));
        let mean_sq_norm = mean_sq(xs);

        let utilisation = (0..self.levels)
            .map(|l| {
                let mut used = vec![false; self.size];
                for c in &codes {
                    used[usize::from(c[l])] = true;
                }
                used.iter().filter(|&&u| u).count() as f64 / self.size as f64
            })
            .collect();

        let mut sorted = codes;
        sorted.sort_unstable();
        let (mut distinct, mut colliding, mut largest) = (0usize, 0usize, 0usize);
        for group in sorted.chunk_by(|a, b| a == b) {
            distinct += 1;
            largest = largest.max(group.len());
            if group.len() > 1 {
                colliding += group.len();
            }
        }
        let mse = mse_by_level.last().copied().unwrap_or(0.0);
        CodebookReport {
            items: n,
            levels: self.levels,
            codebook_size: self.size,
            utilisation,
            distinct_semids: distinct,
            collision_share: if n == 0 {
                0.0
            } else {
                colliding as f64 / n as f64
            },
            largest_collision_group: largest,
            mse,
            relative_mse: if mean_sq_norm > 0.0 {
                mse / mean_sq_norm
            } else {
                0.0
            },
            mse_by_level,
            mean_sq_norm,
        }
    }

    /// The codebook file's bytes (layout in the module documentation).
    pub fn encode(&self) -> Vec<u8> {
        let floats = self.levels * self.size * self.dim;
        let mut out = Vec::with_capacity(HEADER_LEN + 4 * floats + CRC_LEN);
        out.extend_from_slice(CODEBOOK_MAGIC);
        out.extend_from_slice(&CODEBOOK_VERSION.to_le_bytes());
        for v in [self.dim, self.levels, self.size] {
            out.extend_from_slice(&(v as u32).to_le_bytes());
        }
        for level in &self.centroids {
            for v in level {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parse a codebook file's bytes. `path_for_errors` only labels errors.
    ///
    /// Every header field is checked against the byte length before anything is allocated, so
    /// a corrupt or hostile header cannot make this allocate more than the input's size.
    pub fn decode(bytes: &[u8], path_for_errors: &Path) -> Result<Codebook> {
        let corrupt = |detail: String| ModelError::DataCorruption {
            path: path_for_errors.to_path_buf(),
            detail,
        };
        if bytes.len() < HEADER_LEN + CRC_LEN {
            return Err(corrupt(format!(
                "codebook is {} bytes, shorter than its {}-byte header and checksum",
                bytes.len(),
                HEADER_LEN + CRC_LEN
            )));
        }
        if &bytes[..8] != CODEBOOK_MAGIC {
            return Err(corrupt("not a codebook file (bad magic)".into()));
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        // The version comes before the checksum: a newer file may lay out its checksum
        // differently, and its reader should be told to upgrade rather than that it is corrupt.
        let version = u32_at(8);
        if version != CODEBOOK_VERSION {
            return Err(ModelError::UnsupportedVersion {
                path: path_for_errors.to_path_buf(),
                what: "codebook",
                found: version,
                supported: CODEBOOK_VERSION,
            });
        }
        let (dim, levels, size) = (u32_at(12), u32_at(16), u32_at(20));
        let expected = u64::from(dim)
            .checked_mul(u64::from(levels))
            .and_then(|v| v.checked_mul(u64::from(size)))
            .and_then(|v| v.checked_mul(4))
            .and_then(|v| v.checked_add((HEADER_LEN + CRC_LEN) as u64));
        if expected != Some(bytes.len() as u64) {
            return Err(corrupt(format!(
                "codebook is {} bytes but its header (dim {dim}, levels {levels}, size {size}) implies {}",
                bytes.len(),
                expected.map_or_else(|| "more than 2^64".to_string(), |e| e.to_string())
            )));
        }
        let body_end = bytes.len() - CRC_LEN;
        let stored = u32_at(body_end);
        let actual = crc32c::crc32c(&bytes[..body_end]);
        if !siren_engine::format::checksum_matches(stored, actual) {
            return Err(corrupt(format!(
                "checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"
            )));
        }
        let (dim, levels, size) = (dim as usize, levels as usize, size as usize);
        validate_shape(dim, levels, size).map_err(corrupt)?;
        let per_level = size * dim * 4;
        let mut centroids = Vec::with_capacity(levels);
        for (l, raw) in bytes[HEADER_LEN..body_end]
            .chunks_exact(per_level)
            .enumerate()
        {
            let level: Vec<f32> = raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect();
            if let Some(i) = level.iter().position(|v| !v.is_finite()) {
                return Err(corrupt(format!(
                    "level {l} centroid {} component {} is {}",
                    i / dim,
                    i % dim,
                    level[i]
                )));
            }
            centroids.push(level);
        }
        Ok(Codebook::from_parts(dim, levels, size, centroids))
    }

    /// Write the codebook to `path` atomically: a crash leaves either the old file or the new
    /// one, never a torn one that would fail its checksum on the next start.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&self.encode())?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(ModelError::io(&tmp, e));
        }
        fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))?;
        // The rename itself is only durable once the directory is synced.
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| ModelError::io(dir, e))
    }

    pub fn load(path: impl AsRef<Path>) -> Result<Codebook> {
        let path = path.as_ref();
        let bytes = fs::read(path).map_err(|e| ModelError::io(path, e))?;
        Codebook::decode(&bytes, path)
    }
}

fn validate_shape(dim: usize, levels: usize, size: usize) -> std::result::Result<(), String> {
    if dim == 0 || dim > u32::MAX as usize {
        return Err(format!("dim must be 1 to {}, got {dim}", u32::MAX));
    }
    if !(1..=MAX_SEMID_LEVELS).contains(&levels) {
        return Err(format!(
            "a SemID has 1 to {MAX_SEMID_LEVELS} levels, got {levels}"
        ));
    }
    if !(2..=MAX_CODEBOOK_SIZE).contains(&size) {
        return Err(format!(
            "codebook size must be 2 to {MAX_CODEBOOK_SIZE}, got {size}"
        ));
    }
    Ok(())
}

/// How well a codebook serves a set of items. Utilisation and collisions say whether hard
/// retrieval can tell items apart; reconstruction error says how much of the embedding the
/// SemID keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodebookReport {
    pub items: usize,
    pub levels: usize,
    pub codebook_size: usize,
    /// Per level: distinct codes used / codebook size.
    pub utilisation: Vec<f64>,
    /// Distinct full SemIDs among the items.
    pub distinct_semids: usize,
    /// Share of items whose full SemID is also some other item's.
    pub collision_share: f64,
    /// Most items sharing one full SemID.
    pub largest_collision_group: usize,
    /// Mean over items of the squared distance between item and reconstruction.
    pub mse: f64,
    /// `mse` / `mean_sq_norm`: the share of the items' energy the SemIDs lose.
    pub relative_mse: f64,
    /// `mse` using only the first 1, 2, ... levels.
    pub mse_by_level: Vec<f64>,
    /// Mean over items of the squared norm.
    pub mean_sq_norm: f64,
}

impl fmt::Display for CodebookReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "codebook: {} levels × {} codes, {} items",
            self.levels, self.codebook_size, self.items
        )?;
        write!(f, "  utilisation by level:")?;
        for u in &self.utilisation {
            write!(f, " {:.1}%", 100.0 * u)?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "  distinct SemIDs: {} ({:.2}% of items share theirs, largest group {})",
            self.distinct_semids,
            100.0 * self.collision_share,
            self.largest_collision_group
        )?;
        write!(
            f,
            "  reconstruction MSE: {:.6} ({:.2}% of mean squared norm); by level:",
            self.mse,
            100.0 * self.relative_mse
        )?;
        for m in &self.mse_by_level {
            write!(f, " {m:.6}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    // Both of the above export an `Rng`; this is rand 0.9's.
    use rand::Rng;

    /// `clusters` well-separated centres in `dim` dimensions, each with `per` points: centre +
    /// one of 4 shared sub-offsets (so level 2 has structure to find) + small noise. Returns
    /// the data and each point's planted cluster.
    fn planted(clusters: usize, per: usize, dim: usize, seed: u64) -> (Vec<f32>, Vec<usize>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut uni = |scale: f32| (rng.random::<f32>() * 2.0 - 1.0) * scale;
        let centres: Vec<f32> = (0..clusters * dim).map(|_| uni(20.0)).collect();
        let subs: Vec<f32> = (0..4 * dim).map(|_| uni(1.5)).collect();
        let mut xs = Vec::new();
        let mut label = Vec::new();
        for c in 0..clusters {
            for p in 0..per {
                let s = p % 4;
                for t in 0..dim {
                    xs.push(centres[c * dim + t] + subs[s * dim + t] + uni(0.05));
                }
                label.push(c);
            }
        }
        (xs, label)
    }

    fn small_cfg(levels: usize, size: usize) -> RqKmeansConfig {
        RqKmeansConfig {
            levels,
            codebook_size: size,
            iterations: 20,
            seed: 11,
            max_fit_points: None,
        }
    }

    #[test]
    fn recovers_planted_clusters_and_error_falls_with_levels() {
        let dim = 16;
        for seed in 1..=10 {
            let (xs, label) = planted(8, 40, dim, seed);
            let cfg = RqKmeansConfig {
                seed,
                ..small_cfg(3, 8)
            };
            let cb = Codebook::fit(&xs, dim, &cfg).unwrap();
            assert_eq!((cb.dim(), cb.levels(), cb.size()), (16, 3, 8));
            let ids = cb.assign_all(&xs);
            let mut code_of = [None; 8];
            for (id, &c) in ids.iter().zip(&label) {
                assert_eq!(id.levels(), 3);
                let code = id.codes()[0];
                assert_eq!(*code_of[c].get_or_insert(code), code, "cluster {c} split");
            }
            let mut codes: Vec<u16> = code_of.iter().map(|c| c.unwrap()).collect();
            codes.sort_unstable();
            codes.dedup();
            assert_eq!(codes.len(), 8, "two planted clusters merged (seed {seed})");

            let r = cb.report(&xs);
            assert_eq!(r.items, 320);
            assert_eq!(r.mse_by_level.len(), 3);
            assert!(
                r.mse_by_level.windows(2).all(|w| w[1] < w[0]),
                "{:?}",
                r.mse_by_level
            );
            // Level 1 leaves the sub-offsets (variance ~0.75 per component), level 2 finds them.
            assert!(r.mse_by_level[1] < 0.2 * r.mse_by_level[0], "{r}");
            assert_eq!(r.mse, r.mse_by_level[2]);
            assert!(r.relative_mse > 0.0 && r.relative_mse < 0.01, "{r}");
            assert_eq!(r.utilisation[0], 1.0);
            assert!(r.utilisation.iter().all(|&u| u > 0.0 && u <= 1.0));
            assert!(r.distinct_semids >= 32 && r.distinct_semids <= 320);
            assert!((0.0..=1.0).contains(&r.collision_share));
            assert!(r.largest_collision_group >= 1);

            // The report's error is the error of `reconstruct`, up to rounding.
            let mse: f64 = ids
                .iter()
                .zip(xs.chunks_exact(dim))
                .map(|(id, x)| f64::from(sq_dist(&cb.reconstruct(id), x)))
                .sum::<f64>()
                / 320.0;
            assert!(
                (mse - r.mse).abs() <= 1e-3 * r.mse + 1e-9,
                "{mse} vs {}",
                r.mse
            );

            // A prefix reconstructs coarser.
            let coarse = SemId::new(&ids[0].codes()[..1]).unwrap();
            assert!(
                sq_dist(&cb.reconstruct(&coarse), &xs[..dim])
                    > sq_dist(&cb.reconstruct(&ids[0]), &xs[..dim])
            );

            let text = r.to_string();
            assert!(
                text.contains("utilisation") && text.contains("MSE"),
                "{text}"
            );
            let json = serde_json::to_value(&r).unwrap();
            assert_eq!(json["items"], 320);
        }
    }

    #[test]
    fn assign_matches_assign_all_and_fitting() {
        let dim = 12;
        let (xs, _) = planted(5, 30, dim, 9);
        let cb = Codebook::fit(&xs, dim, &small_cfg(3, 16)).unwrap();
        let all = cb.assign_all(&xs);
        for (x, id) in xs.chunks_exact(dim).zip(&all) {
            assert_eq!(cb.assign(x), *id);
        }
        // Fitting assigned the same codes: Lloyd converges well within 20 iterations on this
        // data, so each level-1 centroid is the mean of the items `assign_all` gives its code.
        let mut sums = vec![0f64; 16 * dim];
        let mut counts = [0usize; 16];
        for (x, id) in xs.chunks_exact(dim).zip(&all) {
            let c = usize::from(id.codes()[0]);
            counts[c] += 1;
            for t in 0..dim {
                sums[c * dim + t] += f64::from(x[t]);
            }
        }
        let cents = cb.centroids(0);
        for c in 0..16 {
            assert!(counts[c] > 0, "code {c} unused");
            for t in 0..dim {
                let mean = sums[c * dim + t] / counts[c] as f64;
                assert!((f64::from(cents[c * dim + t]) - mean).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn deterministic_for_a_seed_and_any_thread_count() {
        let dim = 8;
        let (xs, _) = planted(6, 30, dim, 4);
        let cfg = small_cfg(3, 16);
        let a = Codebook::fit(&xs, dim, &cfg).unwrap();
        let b = Codebook::fit(&xs, dim, &cfg).unwrap();
        assert_eq!(a, b);
        for threads in [1, 2, 3, 7] {
            // No minimum work per piece: as many pieces as the pool makes.
            let par = Par { min_work: 1 };
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (c, assigned) = pool.install(|| {
                let c = Codebook::fit_par(&xs, dim, &cfg, par).unwrap();
                (c, a.assign_par(&xs, par))
            });
            assert_eq!(a, c, "{threads} threads");
            assert_eq!(assigned, a.assign_all(&xs));
        }
        let other = Codebook::fit(
            &xs,
            dim,
            &RqKmeansConfig {
                seed: 12,
                ..cfg.clone()
            },
        )
        .unwrap();
        assert_eq!((other.dim(), other.levels(), other.size()), (8, 3, 16));
        // Subsampled fits are deterministic too.
        let sub = RqKmeansConfig {
            max_fit_points: Some(50),
            ..cfg
        };
        assert_eq!(
            Codebook::fit(&xs, dim, &sub).unwrap(),
            Codebook::fit(&xs, dim, &sub).unwrap()
        );
        assert_ne!(Codebook::fit(&xs, dim, &sub).unwrap(), a);
    }

    #[test]
    fn fewer_points_than_codes() {
        let dim = 5;
        let (xs, _) = planted(5, 1, dim, 3);
        let cb = Codebook::fit(&xs, dim, &small_cfg(2, 16)).unwrap();
        let ids = cb.assign_all(&xs);
        let mut first: Vec<u16> = ids.iter().map(|id| id.codes()[0]).collect();
        first.sort_unstable();
        first.dedup();
        assert_eq!(first.len(), 5, "each point its own level-1 code");
        let r = cb.report(&xs);
        assert!(r.mse < 1e-9, "{r}");
        assert_eq!(r.distinct_semids, 5);
        assert_eq!(r.collision_share, 0.0);
        assert!((r.utilisation[0] - 5.0 / 16.0).abs() < 1e-12);

        // One point, the largest codebook.
        let one = Codebook::fit(&xs[..dim], dim, &small_cfg(1, MAX_CODEBOOK_SIZE)).unwrap();
        assert_eq!(one.assign(&xs[..dim]).codes(), &[0]);
    }

    #[test]
    fn identical_points() {
        let dim = 3;
        let xs: Vec<f32> = [0.5f32, -1.0, 2.0].repeat(40);
        let cb = Codebook::fit(&xs, dim, &small_cfg(3, 8)).unwrap();
        let ids = cb.assign_all(&xs);
        assert!(ids.iter().all(|id| *id == ids[0]));
        assert_eq!(cb.reconstruct(&ids[0]), vec![0.5, -1.0, 2.0]);
        let r = cb.report(&xs);
        assert_eq!(r.distinct_semids, 1);
        assert_eq!(r.collision_share, 1.0);
        assert_eq!(r.largest_collision_group, 40);
        assert_eq!(r.mse, 0.0);
        assert_eq!(r.utilisation, vec![1.0 / 8.0; 3]);
    }

    #[test]
    fn one_level_and_zero_iterations() {
        let dim = 4;
        let (xs, _) = planted(3, 10, dim, 5);
        let cb = Codebook::fit(&xs, dim, &small_cfg(1, 4)).unwrap();
        assert!(cb.assign_all(&xs).iter().all(|id| id.levels() == 1));
        let r = cb.report(&xs);
        assert_eq!(r.mse_by_level.len(), 1);
        // k-means++ seeding alone (no Lloyd step) is a valid codebook too.
        let cfg = RqKmeansConfig {
            iterations: 0,
            ..small_cfg(2, 4)
        };
        let cb0 = Codebook::fit(&xs, dim, &cfg).unwrap();
        assert!(cb0.report(&xs).mse.is_finite());
        // Empty input to report.
        let empty = cb.report(&[]);
        assert_eq!((empty.items, empty.distinct_semids, empty.mse), (0, 0, 0.0));
    }

    #[test]
    fn rejects_invalid_arguments() {
        let xs = vec![0.0f32; 12];
        let bad = |xs: &[f32], dim: usize, cfg: RqKmeansConfig| {
            matches!(
                Codebook::fit(xs, dim, &cfg),
                Err(ModelError::InvalidArgument(_))
            )
        };
        let cfg = small_cfg(2, 4);
        assert!(bad(&xs, 0, cfg.clone()));
        assert!(bad(&xs, 5, cfg.clone()));
        assert!(bad(&[], 3, cfg.clone()));
        let mut nan = xs.clone();
        nan[7] = f32::NAN;
        assert!(bad(&nan, 3, cfg.clone()));
        nan[7] = f32::INFINITY;
        assert!(bad(&nan, 3, cfg.clone()));
        nan[7] = 1e30;
        assert!(bad(&nan, 3, cfg.clone()));
        for levels in [0, 7] {
            assert!(bad(
                &xs,
                3,
                RqKmeansConfig {
                    levels,
                    ..cfg.clone()
                }
            ));
        }
        for codebook_size in [0, 1, MAX_CODEBOOK_SIZE + 1] {
            assert!(bad(
                &xs,
                3,
                RqKmeansConfig {
                    codebook_size,
                    ..cfg.clone()
                }
            ));
        }
        assert!(bad(
            &xs,
            3,
            RqKmeansConfig {
                max_fit_points: Some(0),
                ..cfg.clone()
            }
        ));
        assert!(Codebook::fit(&xs, 3, &cfg).is_ok());
    }

    fn sample_codebook() -> Codebook {
        let dim = 3;
        let (xs, _) = planted(4, 5, dim, 8);
        Codebook::fit(&xs, dim, &small_cfg(2, 4)).unwrap()
    }

    #[test]
    fn save_load_round_trip() {
        let cb = sample_codebook();
        let bytes = cb.encode();
        assert_eq!(bytes.len(), HEADER_LEN + 2 * 4 * 3 * 4 + CRC_LEN);
        assert_eq!(Codebook::decode(&bytes, Path::new("x")).unwrap(), cb);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("codebook.bin");
        cb.save(&path).unwrap();
        let loaded = Codebook::load(&path).unwrap();
        assert_eq!(loaded, cb);
        // The loaded codebook assigns like the original (its kernels were rebuilt).
        let x = [0.3f32, -2.0, 7.5];
        assert_eq!(loaded.assign(&x), cb.assign(&x));
        assert!(!dir.path().join("codebook.bin.tmp").exists());
        // Overwriting is fine.
        sample_codebook().save(&path).unwrap();
        assert!(matches!(
            Codebook::load(dir.path().join("missing")),
            Err(ModelError::Io { .. })
        ));
    }

    #[test]
    fn every_flipped_bit_or_byte_is_rejected() {
        let bytes = sample_codebook().encode();
        for i in 0..bytes.len() {
            for mask in (0..8).map(|b| 1u8 << b).chain([0xFF]) {
                let mut b = bytes.clone();
                b[i] ^= mask;
                assert!(
                    Codebook::decode(&b, Path::new("x")).is_err(),
                    "byte {i} ^ {mask:#04x} accepted"
                );
            }
        }
    }

    #[test]
    fn truncated_or_extended_input_is_rejected() {
        let bytes = sample_codebook().encode();
        for len in 0..bytes.len() {
            assert!(matches!(
                Codebook::decode(&bytes[..len], Path::new("x")),
                Err(ModelError::DataCorruption { .. })
            ));
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            Codebook::decode(&longer, Path::new("x")),
            Err(ModelError::DataCorruption { .. })
        ));
    }

    #[test]
    fn other_version_is_unsupported() {
        let mut bytes = sample_codebook().encode();
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        match Codebook::decode(&bytes, Path::new("cb")) {
            Err(ModelError::UnsupportedVersion {
                found, supported, ..
            }) => assert_eq!((found, supported), (2, 1)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn huge_header_is_rejected_before_allocating() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(CODEBOOK_MAGIC);
        for v in [CODEBOOK_VERSION, u32::MAX, 6, 65536] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes.extend_from_slice(&[0; 64]);
        assert!(matches!(
            Codebook::decode(&bytes, Path::new("x")),
            Err(ModelError::DataCorruption { .. })
        ));
    }

    #[test]
    fn well_formed_but_invalid_contents_are_rejected() {
        // A correct checksum over a shape the format forbids (levels 7), and over a NaN.
        let build = |levels: u32, value: f32| {
            let mut b = Vec::new();
            b.extend_from_slice(CODEBOOK_MAGIC);
            for v in [CODEBOOK_VERSION, 1, levels, 2] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            for _ in 0..levels * 2 {
                b.extend_from_slice(&value.to_le_bytes());
            }
            let crc = crc32c::crc32c(&b);
            b.extend_from_slice(&crc.to_le_bytes());
            b
        };
        assert!(Codebook::decode(&build(1, 0.5), Path::new("x")).is_ok());
        for b in [build(7, 0.5), build(0, 0.5), build(1, f32::NAN)] {
            assert!(matches!(
                Codebook::decode(&b, Path::new("x")),
                Err(ModelError::DataCorruption { .. })
            ));
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Codebook::decode(&bytes, Path::new("x"));
        }

        #[test]
        fn decode_never_panics_on_mutated_codebooks(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = sample_codebook().encode();
            for (at, v) in edits {
                let i = at.index(bytes.len());
                bytes[i] = v;
            }
            let cut = cut.index(bytes.len() + 1);
            let _ = Codebook::decode(&bytes[..cut], Path::new("x"));
        }
    }
}
