//! Row kernels for CPUs with AVX-512, for the shapes where a row is a few whole registers;
//! [`super::simd::RowKernels::avx512`] chooses them, and other shapes take the AVX2 kernels.
//!
//! - One head's attention when the head is 16 columns wide (the SIREN default: width 32, two
//!   heads) and has at most 64 keys (50 retrieved behaviours and the target): a head's row is
//!   then one 512-bit register and a query's row of scores at most four.
//! - Layer norms of rows of 16 to 64 floats, and a token's embedding rows summed and
//!   normalised ([`sum_norm`]), each row held in registers from its load to its store.
//!
//! Per tile of up to four queries, the scores `q K^T` stay in registers through the masked
//! softmax, whose probabilities go to a small buffer only to be broadcast into the weighted
//! sum of the values. The AVX2 kernel writes each query's scores to memory and reads them
//! back three times (maximum, exponentials, normalisation), in eight-lane pieces; here the
//! exponential, the largest part of the softmax, takes half the instructions. The
//! exponential is [`super::simd`]'s (same reduction, same polynomial), 16 lanes at a time.
//!
//! A compiler-vectorised AVX-512 build of the portable kernels was measured slower than the
//! AVX2 one (its loops over 51 keys ran in masked remainders), so this kernel is written
//! with intrinsics.

use std::arch::x86_64::{
    __m512, __mmask16, _mm512_add_epi32, _mm512_add_ps, _mm512_castps_si512, _mm512_castsi512_ps,
    _mm512_cmp_ps_mask, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mask_max_ps,
    _mm512_maskz_loadu_ps, _mm512_maskz_mov_ps, _mm512_max_ps, _mm512_min_ps, _mm512_mul_ps,
    _mm512_reduce_add_ps, _mm512_reduce_max_ps, _mm512_set1_epi32, _mm512_set1_ps,
    _mm512_setzero_ps, _mm512_slli_epi32, _mm512_storeu_ps, _mm512_sub_epi32, _mm512_sub_ps,
    _CMP_NEQ_UQ,
};

use super::simd::{transpose_keys_avx2, HeadInput, HeadOutput};

/// A head's width and the lanes of a register.
const LANES: usize = 16;

/// `$f::<L>(args)` for `L = $registers`, 1 to 4 (callers check the range): the kernels are
/// generic over the registers a row takes, so that their loops over them unroll.
macro_rules! by_registers {
    ($registers:expr, $f:ident($($arg:expr),*)) => {
        match $registers {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            _ => $f::<4>($($arg),*),
        }
    };
}
/// Queries per tile: four rows of four registers of scores, sixteen accumulators.
const TILE: usize = 4;

/// Whether [`attend`] computes `a` (else the caller takes the AVX2 kernel).
pub fn covers(a: &HeadInput<'_>) -> bool {
    a.dh == LANES && a.t1 >= 1 && a.t1 <= 4 * LANES
}

/// [`super::simd::RowKernels::attend`] for the heads [`covers`] accepts.
///
/// # Safety
/// The CPU must have AVX-512F, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn attend(a: &HeadInput<'_>, out: HeadOutput<'_>, scratch: &mut Vec<f32>) {
    assert!(
        covers(a),
        "the AVX-512 attention takes 16-wide heads of at most 64 keys"
    );
    by_registers!(a.t1.div_ceil(LANES), blocks(a, out, scratch))
}

/// The attention with each query's scores in `L` registers.
#[target_feature(enable = "avx512f,avx2,fma")]
fn blocks<const L: usize>(
    a: &HeadInput<'_>,
    (out, out_rs): HeadOutput<'_>,
    scratch: &mut Vec<f32>,
) {
    let tp = L * LANES;
    let need = LANES * tp + TILE * tp;
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let (kt, probs) = scratch[..need].split_at_mut(LANES * tp);
    transpose_keys_avx2(a, kt, tp);
    let kept = kept_masks::<L>(a);
    let mut i = 0;
    while i < a.tq {
        let rows = (a.tq - i).min(TILE);
        let tile = Tile {
            a,
            kt,
            kept: &kept,
            i,
        };
        match rows {
            4 => tile.run::<4>(probs, out, out_rs),
            3 => tile.run::<3>(probs, out, out_rs),
            2 => tile.run::<2>(probs, out, out_rs),
            _ => tile.run::<1>(probs, out, out_rs),
        }
        i += rows;
    }
}

/// Which of the `16 L` positions are real keys: `keep` is 1 there (0 for padding, and past
/// `t1`, where `keep` may end before the registers do).
#[target_feature(enable = "avx512f")]
fn kept_masks<const L: usize>(a: &HeadInput<'_>) -> [__mmask16; L] {
    std::array::from_fn(|l| {
        let from = (l * LANES).min(a.keep.len());
        let n = (a.keep.len() - from)
            .min(LANES)
            .min(a.t1.saturating_sub(l * LANES));
        let load: __mmask16 = if n == LANES { !0 } else { (1 << n) - 1 };
        // SAFETY: the mask loads only the `n` elements that exist from `from`.
        let k = unsafe { _mm512_maskz_loadu_ps(load, a.keep.as_ptr().add(from)) };
        _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(k, _mm512_setzero_ps()) & load
    })
}

/// Queries `i..i + R` of one head: the keys transposed (`kt`, 16 rows of [`Tile::TP`]) and
/// the real key positions.
struct Tile<'a, 'b, const L: usize> {
    a: &'a HeadInput<'b>,
    kt: &'a [f32],
    kept: &'a [__mmask16; L],
    i: usize,
}

impl<const L: usize> Tile<'_, '_, L> {
    /// Key positions held, padded to whole registers.
    const TP: usize = L * LANES;

    #[target_feature(enable = "avx512f,avx2,fma")]
    fn run<const R: usize>(&self, probs: &mut [f32], out: &mut [f32], out_rs: usize) {
        let scores = self.scores::<R>();
        for (r, s) in scores.iter().enumerate() {
            self.softmax(s, &mut probs[r * Self::TP..(r + 1) * Self::TP]);
        }
        self.weighted::<R>(probs, out, out_rs);
    }

    /// `q_r . k_j` for the tile's queries, `L` registers per query.
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn scores<const R: usize>(&self) -> [[__m512; L]; R] {
        let a = self.a;
        let q: [&[f32]; R] = std::array::from_fn(|r| &a.q[(self.i + r) * a.q_rs..][..LANES]);
        let mut acc = [[_mm512_setzero_ps(); L]; R];
        for c in 0..LANES {
            let row = &self.kt[c * Self::TP..][..L * LANES];
            // SAFETY: `row` holds `16 L` floats.
            let b: [__m512; L] =
                std::array::from_fn(|l| unsafe { _mm512_loadu_ps(row.as_ptr().add(l * LANES)) });
            for (acc, q) in acc.iter_mut().zip(&q) {
                let w = _mm512_set1_ps(q[c]);
                for (a, b) in acc.iter_mut().zip(&b) {
                    *a = _mm512_fmadd_ps(w, *b, *a);
                }
            }
        }
        acc
    }

    /// The masked softmax of `scale * s` into `p` (`16 L` floats): zeros where no key is
    /// real, as the AVX2 kernel gives.
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn softmax(&self, s: &[__m512; L], p: &mut [f32]) {
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        for (s, k) in s.iter().zip(self.kept) {
            m = _mm512_mask_max_ps(m, *k, m, *s);
        }
        let max = _mm512_reduce_max_ps(m);
        if max == f32::NEG_INFINITY {
            p.fill(0.0);
            return;
        }
        let (max, scale) = (_mm512_set1_ps(max), _mm512_set1_ps(self.a.scale));
        let mut e = [_mm512_setzero_ps(); L];
        let mut sum = _mm512_setzero_ps();
        for ((e, s), k) in e.iter_mut().zip(s).zip(self.kept) {
            let x = _mm512_mul_ps(_mm512_sub_ps(*s, max), scale);
            let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0)), _mm512_setzero_ps());
            *e = _mm512_maskz_mov_ps(*k, exp_neg(x));
            sum = _mm512_add_ps(sum, *e);
        }
        let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
        for (l, e) in e.iter().enumerate() {
            let dst = &mut p[l * LANES..][..LANES];
            // SAFETY: `dst` holds 16 floats.
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), _mm512_mul_ps(*e, inv)) };
        }
    }

    /// `sum over j of p_rj v_j` into the tile's rows of `out`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn weighted<const R: usize>(&self, probs: &[f32], out: &mut [f32], out_rs: usize) {
        let a = self.a;
        let mut acc = [_mm512_setzero_ps(); R];
        for j in 0..a.t1 {
            let v = &a.v[j * a.kv_rs..][..LANES];
            // SAFETY: `v` holds 16 floats.
            let v = unsafe { _mm512_loadu_ps(v.as_ptr()) };
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(_mm512_set1_ps(probs[r * Self::TP + j]), v, *acc);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let dst = &mut out[(self.i + r) * out_rs..][..LANES];
            // SAFETY: `dst` holds 16 floats.
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), *acc) };
        }
    }
}

/// `e^x` for `x` in `[-87, 0]`, lane by lane: [`super::simd`]'s `exp_neg` (the same
/// constants, reduction and polynomial, so the same results but for the order of nothing:
/// every step is one rounding in both).
#[target_feature(enable = "avx512f,avx2,fma")]
fn exp_neg(x: __m512) -> __m512 {
    use super::simd::exp_consts::{LN2_HI, LN2_LO, LOG2E, ROUND, TAYLOR};
    let round = _mm512_set1_ps(ROUND);
    let t = _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)), round);
    let n = _mm512_sub_ps(t, round);
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_HI), x);
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_LO), r);
    let mut p = _mm512_set1_ps(TAYLOR[0]);
    for c in &TAYLOR[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
    }
    let biased = _mm512_add_epi32(
        _mm512_sub_epi32(
            _mm512_castps_si512(t),
            _mm512_set1_epi32(ROUND.to_bits() as i32),
        ),
        _mm512_set1_epi32(127),
    );
    _mm512_mul_ps(p, _mm512_castsi512_ps(_mm512_slli_epi32::<23>(biased)))
}

/// Whether [`norm_rows`] and [`norm_in_place`] take rows `d` wide (else the caller takes the
/// AVX2 kernels): whole registers, at most four of them (width 64).
pub fn covers_norm(d: usize) -> bool {
    d > 0 && d.is_multiple_of(LANES) && d <= 4 * LANES
}

/// [`super::simd::RowKernels::norm_rows`] for the widths [`covers_norm`] accepts: each row
/// held in registers from its load through the mean, the variance and the scaling.
///
/// # Safety
/// The CPU must have AVX-512F, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn norm_rows(out: &mut [f32], x: &[f32], gamma: &[f32], beta: &[f32]) {
    let d = gamma.len();
    assert!(covers_norm(d) && out.len() == x.len() && beta.len() == d);
    by_registers!(d / LANES, norm_each(out, x, gamma, beta))
}

/// [`norm_rows`] in place.
///
/// # Safety
/// The CPU must have AVX-512F, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn norm_in_place(x: &mut [f32], gamma: &[f32], beta: &[f32]) {
    let d = gamma.len();
    assert!(covers_norm(d) && beta.len() == d);
    by_registers!(d / LANES, norm_each_in_place(x, gamma, beta))
}

/// [`super::simd::RowKernels::sum_norm`] for the widths [`covers_norm`] accepts: the rows
/// summed in registers, in order, and normalised there.
///
/// # Safety
/// The CPU must have AVX-512F, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn sum_norm(out: &mut [f32], rows: &[&[f32]], gamma: &[f32], beta: &[f32]) {
    let d = gamma.len();
    assert!(covers_norm(d) && out.len() == d && beta.len() == d && !rows.is_empty());
    by_registers!(d / LANES, sum_norm_row(out, rows, gamma, beta))
}

#[target_feature(enable = "avx512f,avx2,fma")]
fn sum_norm_row<const L: usize>(out: &mut [f32], rows: &[&[f32]], gamma: &[f32], beta: &[f32]) {
    let mut v = load::<L>(rows[0]);
    for row in &rows[1..] {
        let r = load::<L>(row);
        for (v, r) in v.iter_mut().zip(&r) {
            *v = _mm512_add_ps(*v, *r);
        }
    }
    norm_row::<L>(v, out, gamma, beta);
}

#[target_feature(enable = "avx512f,avx2,fma")]
fn norm_each<const L: usize>(out: &mut [f32], x: &[f32], gamma: &[f32], beta: &[f32]) {
    let d = L * LANES;
    for (o, r) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        norm_row::<L>(load::<L>(r), o, gamma, beta);
    }
}

#[target_feature(enable = "avx512f,avx2,fma")]
fn norm_each_in_place<const L: usize>(x: &mut [f32], gamma: &[f32], beta: &[f32]) {
    for r in x.chunks_exact_mut(L * LANES) {
        norm_row::<L>(load::<L>(r), r, gamma, beta);
    }
}

/// The first `16 L` floats of `x` in registers.
#[target_feature(enable = "avx512f")]
fn load<const L: usize>(x: &[f32]) -> [__m512; L] {
    let x = &x[..L * LANES];
    // SAFETY: `x` holds `16 L` floats.
    std::array::from_fn(|l| unsafe { _mm512_loadu_ps(x.as_ptr().add(l * LANES)) })
}

/// The layer norm (eps 1e-5, biased variance, two passes, as candle's `LayerNorm` and the
/// AVX2 kernel) of the row `v` into `out`.
#[target_feature(enable = "avx512f,avx2,fma")]
fn norm_row<const L: usize>(v: [__m512; L], out: &mut [f32], gamma: &[f32], beta: &[f32]) {
    let d = L * LANES;
    let (out, gamma, beta) = (&mut out[..d], &gamma[..d], &beta[..d]);
    let n = d as f32;
    let sum = v
        .iter()
        .fold(_mm512_setzero_ps(), |a, v| _mm512_add_ps(a, *v));
    let mean = _mm512_set1_ps(_mm512_reduce_add_ps(sum) / n);
    let sq = v.iter().fold(_mm512_setzero_ps(), |a, v| {
        let c = _mm512_sub_ps(*v, mean);
        _mm512_fmadd_ps(c, c, a)
    });
    let inv = _mm512_set1_ps(1.0 / (_mm512_reduce_add_ps(sq) / n + 1e-5).sqrt());
    for (l, v) in v.iter().enumerate() {
        // SAFETY: `gamma`, `beta` and `out` hold `d` floats.
        unsafe {
            let g = _mm512_loadu_ps(gamma.as_ptr().add(l * LANES));
            let b = _mm512_loadu_ps(beta.as_ptr().add(l * LANES));
            let y = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_sub_ps(*v, mean), inv), g, b);
            _mm512_storeu_ps(out.as_mut_ptr().add(l * LANES), y);
        }
    }
}
