//! The fused forward's row kernels, compiled twice: once for any x86-64 (SSE2) and once with
//! AVX2 and FMA, chosen at run time as the engine's dot products are ([`RowKernels::best`]).
//! On CPUs with AVX-512 the attention of 16-wide heads, and the layer norms and token sums of
//! rows of whole registers, take [`super::avx512`]'s kernels instead.
//!
//! They are plain loops over slices written so that the compiler vectorises them: axpy forms
//! (`row += a * x`) rather than dot products, whose horizontal sums it cannot vectorise under
//! IEEE rules, and reductions into eight independent lanes. The generic bodies take the
//! instruction set as a const parameter so that the FMA build uses fused multiply-adds and the
//! portable build never calls the slow software `fmaf`.
//!
//! Attention is the main user: per candidate and head, `softmax(q k^T / sqrt(dh)) v` with the
//! keys transposed once into a small buffer and all the queries' scores (`51 x 56` floats at
//! 50 behaviours) kept in cache from the product through the softmax to the weighted sum of
//! values. Both products are tiled in registers over several queries ([`product`]). Before
//! these kernels it went through two packs and two `gemm` calls per candidate and head, whose
//! per-call overhead outweighed `51 x 16` products.

/// One head of one candidate's attention: `tq` queries `q_rs` apart, `t1` keys and values
/// `kv_rs` apart, each `dh` wide starting at the slices' first element; `keep[j]` is 1 for a
/// real key position and 0 for padding, for [`padded`]`(t1)` positions (0 past `t1`), so that
/// the softmax works in whole lanes.
#[derive(Debug, Clone, Copy)]
pub struct HeadInput<'a> {
    pub q: &'a [f32],
    pub q_rs: usize,
    pub tq: usize,
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub kv_rs: usize,
    pub t1: usize,
    pub dh: usize,
    pub keep: &'a [f32],
    /// Applied to the scores before the softmax (`1 / sqrt(dh)`); positive.
    pub scale: f32,
}

/// Where one head's context rows go: row `i` at `out[i * rs..i * rs + dh]`.
pub type HeadOutput<'a> = (&'a mut [f32], usize);

/// Attention of a few queries whose keys are folded into them (the last layer's, whose only
/// query is the target): for each of `heads` queries `q` (`heads` rows `d` wide), the softmax
/// over the kept rows `x_j` of `scale * q . x_j`, times those rows. `x` is `t1` rows `d`
/// wide; `keep` as in [`HeadInput`].
#[derive(Debug, Clone, Copy)]
pub struct PoolInput<'a> {
    pub q: &'a [f32],
    pub heads: usize,
    pub x: &'a [f32],
    pub t1: usize,
    pub d: usize,
    pub keep: &'a [f32],
    pub scale: f32,
}

/// `out = layer_norm(x)` row by row: `(out, x, gamma, beta)`.
pub type NormRows = fn(&mut [f32], &[f32], &[f32], &[f32]);

/// `out = layer_norm(rows summed)`: `(out, rows, gamma, beta)`.
pub type SumNorm = fn(&mut [f32], &[&[f32]], &[f32], &[f32]);

/// The kernels for this CPU.
#[derive(Clone, Copy)]
pub struct RowKernels {
    /// One head's attention (`scratch` is reused across calls).
    pub attend: fn(&HeadInput<'_>, HeadOutput<'_>, &mut Vec<f32>),
    /// Pooled rows `[heads, d]` into `out` (`scratch` is reused across calls).
    pub pool: fn(&PoolInput<'_>, &mut [f32], &mut Vec<f32>),
    /// `out = layer_norm(x)` row by row over `gamma.len()`-wide rows (eps 1e-5, biased
    /// variance, as candle's `LayerNorm`); `out` and `x` have the same length.
    pub norm_rows: NormRows,
    /// Layer norm of every `gamma.len()`-wide row of `x` in place.
    pub norm_in_place: fn(&mut [f32], &[f32], &[f32]),
    /// `out = layer_norm(rows[0] + rows[1] + ...)`, the sum taken in that order: a token's
    /// embedding rows summed and normalised in one pass (`rows` not empty, each as wide as
    /// `out` and `gamma`).
    pub sum_norm: SumNorm,
    /// Softmax of `scale * s` over the positions where `keep` is 1, the others 0; all zeros
    /// when none is kept.
    pub softmax: fn(&mut [f32], &[f32], f32),
}

impl RowKernels {
    /// The fastest build this CPU runs: AVX2 and FMA with the AVX-512 kernels
    /// ([`super::avx512`]) where the CPU has AVX-512F, AVX2 and FMA without it, the portable
    /// build elsewhere (detection is cached by the standard library).
    pub fn best() -> RowKernels {
        RowKernels::avx512()
            .or_else(RowKernels::avx2)
            .unwrap_or_else(RowKernels::portable)
    }

    /// The AVX2 and FMA build, where the CPU has both.
    pub fn avx2() -> Option<RowKernels> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Some(RowKernels {
                    // SAFETY: chosen only when the CPU has AVX2 and FMA.
                    attend: |a, o, s| unsafe { x86::attend(a, o, s) },
                    pool: |a, o, s| unsafe { x86::pool(a, o, s) },
                    norm_rows: |o, x, g, b| unsafe { x86::norm_rows(o, x, g, b) },
                    norm_in_place: |x, g, b| unsafe { x86::norm_in_place(x, g, b) },
                    sum_norm: |o, r, g, b| unsafe { x86::sum_norm(o, r, g, b) },
                    softmax: |s, k, scale| unsafe { x86::softmax(s, k, scale) },
                });
            }
        }
        None
    }

    /// The AVX2 build with the AVX-512 attention, layer norms and token sums for the shapes
    /// they cover, where the CPU has AVX-512F, AVX2 and FMA.
    pub fn avx512() -> Option<RowKernels> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // The AVX-512 kernel `$f` where `$covers` holds for the call's arguments,
                // else the AVX2 one.
                macro_rules! avx512_or_avx2 {
                    ($covers:expr, $f:ident($($arg:ident),*)) => {
                        |$($arg),*| {
                            if $covers {
                                // SAFETY: chosen only when the CPU has AVX-512F, AVX2 and FMA.
                                unsafe { super::avx512::$f($($arg),*) }
                            } else {
                                // SAFETY: as above.
                                unsafe { x86::$f($($arg),*) }
                            }
                        }
                    };
                }
                use super::avx512::{covers, covers_norm};
                return RowKernels::avx2().map(|k| RowKernels {
                    attend: avx512_or_avx2!(covers(a), attend(a, o, s)),
                    norm_rows: avx512_or_avx2!(covers_norm(g.len()), norm_rows(o, x, g, b)),
                    norm_in_place: avx512_or_avx2!(covers_norm(g.len()), norm_in_place(x, g, b)),
                    sum_norm: avx512_or_avx2!(covers_norm(g.len()), sum_norm(o, r, g, b)),
                    ..k
                });
            }
        }
        None
    }

    /// The build for any CPU of the target.
    pub fn portable() -> RowKernels {
        RowKernels {
            attend: attend::<false>,
            pool: pool::<false>,
            norm_rows: norm_rows::<false>,
            norm_in_place: norm_in_place::<false>,
            sum_norm: sum_norm::<false>,
            softmax: masked_softmax::<false>,
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{HeadInput, HeadOutput, Operands, PoolInput};
    use std::arch::x86_64::{
        _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_permute2f128_ps, _mm256_set1_ps,
        _mm256_setzero_ps, _mm256_shuffle_ps, _mm256_storeu_ps, _mm256_unpackhi_ps,
        _mm256_unpacklo_ps,
    };

    /// `dst[c * dst_rs + j] = src[j * src_rs + c]` for `j` and `c` below 8: an 8 x 8 block
    /// transposed in registers (eight loads, 24 shuffles, eight stores).
    #[target_feature(enable = "avx2,fma")]
    pub fn transpose8(src: &[f32], src_rs: usize, dst: &mut [f32], dst_rs: usize) {
        let mut r = [_mm256_setzero_ps(); 8];
        for (j, r) in r.iter_mut().enumerate() {
            let row = &src[j * src_rs..][..8];
            // SAFETY: `row` holds eight floats.
            *r = unsafe { _mm256_loadu_ps(row.as_ptr()) };
        }
        let t = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let u = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        let out = [
            _mm256_permute2f128_ps::<0x20>(u[0], u[4]),
            _mm256_permute2f128_ps::<0x20>(u[1], u[5]),
            _mm256_permute2f128_ps::<0x20>(u[2], u[6]),
            _mm256_permute2f128_ps::<0x20>(u[3], u[7]),
            _mm256_permute2f128_ps::<0x31>(u[0], u[4]),
            _mm256_permute2f128_ps::<0x31>(u[1], u[5]),
            _mm256_permute2f128_ps::<0x31>(u[2], u[6]),
            _mm256_permute2f128_ps::<0x31>(u[3], u[7]),
        ];
        for (c, v) in out.iter().enumerate() {
            let row = &mut dst[c * dst_rs..][..8];
            // SAFETY: `row` holds eight floats.
            unsafe { _mm256_storeu_ps(row.as_mut_ptr(), *v) };
        }
    }

    /// [`super::tile`] with its `R x N` sums in AVX registers: the compiler's own
    /// vectorisation of the portable form splits them into mixed 8-, 4- and 1-wide pieces.
    #[target_feature(enable = "avx2,fma")]
    pub fn tile<const R: usize, const N: usize>(
        m: &Operands<'_>,
        (out, out_rs): (&mut [f32], usize),
        i: usize,
        at: usize,
    ) {
        let mut w: [&[f32]; R] = [&[]; R];
        for (r, w) in w.iter_mut().enumerate() {
            *w = &m.w[(i + r) * m.w_rs..][..m.depth];
        }
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        for k in 0..m.depth {
            let b = &m.b[k * m.b_rs + 8 * at..][..8 * N];
            let mut bv = [_mm256_setzero_ps(); N];
            for (n, v) in bv.iter_mut().enumerate() {
                // SAFETY: `b` holds `8 * N` floats, so the eight from `8 * n` are readable.
                *v = unsafe { _mm256_loadu_ps(b.as_ptr().add(8 * n)) };
            }
            for (acc, w) in acc.iter_mut().zip(&w) {
                let wv = _mm256_set1_ps(w[k]);
                for (a, b) in acc.iter_mut().zip(&bv) {
                    *a = _mm256_fmadd_ps(wv, *b, *a);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let o = &mut out[(i + r) * out_rs + 8 * at..][..8 * N];
            for (n, a) in acc.iter().enumerate() {
                // SAFETY: `o` holds `8 * N` floats, so the eight from `8 * n` are writable.
                unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(8 * n), *a) };
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn pool(a: &PoolInput<'_>, out: &mut [f32], scratch: &mut Vec<f32>) {
        super::pool::<true>(a, out, scratch)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn attend(a: &HeadInput<'_>, out: HeadOutput<'_>, scratch: &mut Vec<f32>) {
        super::attend::<true>(a, out, scratch)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn norm_rows(out: &mut [f32], x: &[f32], gamma: &[f32], beta: &[f32]) {
        super::norm_rows::<true>(out, x, gamma, beta)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softmax(s: &mut [f32], keep: &[f32], scale: f32) {
        super::masked_softmax::<true>(s, keep, scale)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn norm_in_place(x: &mut [f32], gamma: &[f32], beta: &[f32]) {
        super::norm_in_place::<true>(x, gamma, beta)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn sum_norm(out: &mut [f32], rows: &[&[f32]], gamma: &[f32], beta: &[f32]) {
        super::sum_norm::<true>(out, rows, gamma, beta)
    }
}

/// `a * b + c`, fused when `FMA` (the build that has the instruction).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Eight lanes: the unit every loop below works in. Fixed-size arrays let the compiler map
/// them to one AVX register (two SSE ones); loops over runtime lengths as short as a head's 16
/// columns or a row's 51 keys would otherwise fall into the scalar remainder of its wider
/// unrolled vector loop.
type Lanes = [f32; 8];

fn lanes(x: &[f32]) -> &Lanes {
    x.try_into().expect("eight lanes")
}

fn lanes_mut(x: &mut [f32]) -> &mut Lanes {
    x.try_into().expect("eight lanes")
}

/// `x[i] = f(x[i])` for every element, eight at a time.
#[inline(always)]
fn map8(x: &mut [f32], f: impl Fn(f32) -> f32) {
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        let c = lanes_mut(c);
        for v in c.iter_mut() {
            *v = f(*v);
        }
    }
    for v in chunks.into_remainder() {
        *v = f(*v);
    }
}

/// `op` folded over `x` in eight independent lanes, which `combine` then joins: the form the
/// compiler turns into one vector accumulator.
#[inline(always)]
fn reduce8(
    x: &[f32],
    init: f32,
    op: impl Fn(f32, f32) -> f32 + Copy,
    combine: impl Fn(f32, f32) -> f32,
) -> f32 {
    let mut acc = [init; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        let c = lanes(c);
        for l in 0..8 {
            acc[l] = op(acc[l], c[l]);
        }
    }
    let lanes = acc.into_iter().fold(init, combine);
    chunks.remainder().iter().fold(lanes, |a, &b| op(a, b))
}

#[inline(always)]
fn add(a: f32, b: f32) -> f32 {
    a + b
}

/// [`exp_neg`]'s constants, shared with the AVX-512 kernel's: `log2(e)`, `ln 2` in two parts
/// (Cody and Waite), the rounding constant (adding and subtracting 1.5 * 2^23 rounds to the
/// nearest integer in the FPU's mode), and the Taylor coefficients of `e^r` from degree 7
/// down, in Horner's order.
pub(super) mod exp_consts {
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    pub const ROUND: f32 = 12_582_912.0;
    pub const TAYLOR: [f32; 8] = [
        1.0 / 5040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
}

/// `e^x` for `x` in `[-87, 0]` (callers clamp): `2^n e^r` with `n = round(x / ln 2)`, `r`
/// reduced in two steps (Cody and Waite) and `e^r` by its Taylor series to degree 7 (error
/// below 1e-8 relative on `|r| <= ln 2 / 2`). Branch-free so that it vectorises.
#[inline(always)]
fn exp_neg<const FMA: bool>(x: f32) -> f32 {
    use exp_consts::{LN2_HI, LN2_LO, LOG2E, ROUND, TAYLOR};
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = madd::<FMA>(n, -LN2_LO, madd::<FMA>(n, -LN2_HI, x));
    let mut p = TAYLOR[0];
    for c in &TAYLOR[1..] {
        p = madd::<FMA>(p, r, *c);
    }
    // n is an integer in [-126, 0], and t's bits are 1.5 * 2^23's plus n (its unit in the
    // last place is 1): integer arithmetic on them gives 2^n's exponent field, 127 + n, in
    // the vector registers (a float-to-int cast would be Rust's saturating one, lane by lane).
    let biased = t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127);
    p * f32::from_bits(biased << 23)
}

/// Softmax of `scale * s` over the positions where `keep` is 1 (the others get 0); all zeros
/// when none is kept (the candle model's masked softmax, whose additive -1e9 underflows to
/// exactly 0 after the exponential). `keep` is as long as `s`.
#[inline(always)]
pub(super) fn masked_softmax<const FMA: bool>(s: &mut [f32], keep: &[f32], scale: f32) {
    let max = kept_max(s, keep);
    if max == f32::NEG_INFINITY {
        s.fill(0.0);
        return;
    }
    // Padding's scores may exceed the maximum: clamped to 0, their exponential is then
    // cleared by the mask.
    map8(s, |v| exp_neg::<FMA>(((v - max) * scale).clamp(-87.0, 0.0)));
    for (v, &k) in s.iter_mut().zip(keep) {
        *v *= k;
    }
    let inv = 1.0 / reduce8(s, 0.0, add, add);
    map8(s, |v| v * inv);
}

/// The largest of `s` where `keep` is 1 (`-inf` when none is), in eight lanes. Selected in
/// registers rather than by writing `-inf` over the padding first: the compiler turns that
/// write into a masked store, which is slow on AMD's cores.
#[inline(always)]
fn kept_max(s: &[f32], keep: &[f32]) -> f32 {
    let kept = |v: f32, k: f32| if k == 0.0 { f32::NEG_INFINITY } else { v };
    let mut acc = [f32::NEG_INFINITY; 8];
    let (s8, st) = s.as_chunks::<8>();
    let (k8, kt) = keep.as_chunks::<8>();
    for (v, k) in s8.iter().zip(k8) {
        for l in 0..8 {
            acc[l] = acc[l].max(kept(v[l], k[l]));
        }
    }
    let lanes = acc.into_iter().fold(f32::NEG_INFINITY, f32::max);
    st.iter()
        .zip(kt)
        .fold(lanes, |m, (&v, &k)| m.max(kept(v, k)))
}

/// `t` positions rounded up to whole lanes.
pub fn padded(t: usize) -> usize {
    t.div_ceil(8) * 8
}

// Inlined into the AVX2 wrappers, so that they are compiled with AVX2 and FMA.
#[inline(always)]
fn attend<const FMA: bool>(a: &HeadInput<'_>, out: HeadOutput<'_>, scratch: &mut Vec<f32>) {
    let (t1, dh) = (a.t1, a.dh);
    // Keys padded to whole lanes with zeros: the padding's scores are masked.
    let tp = padded(t1);
    let (out, out_rs) = out;
    let need = (dh + a.tq) * tp;
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let (kt, scores) = scratch[..need].split_at_mut(dh * tp);
    transpose_keys::<FMA>(a, kt, tp);
    // Every query's scores `q K^T` (`tq` rows of `tp`), then each row's softmax while the
    // scores are in cache, then the rows times the values.
    let keys = Operands {
        w: a.q,
        w_rs: a.q_rs,
        rows: a.tq,
        depth: dh,
        b: kt,
        b_rs: tp,
        lanes: tp / 8,
    };
    product::<FMA>(&keys, (scores, tp));
    for row in scores.chunks_exact_mut(tp) {
        masked_softmax::<FMA>(row, &a.keep[..tp], a.scale);
    }
    let values = Operands {
        w: scores,
        w_rs: tp,
        rows: a.tq,
        depth: t1,
        b: a.v,
        b_rs: a.kv_rs,
        lanes: dh / 8,
    };
    product::<FMA>(&values, (&mut *out, out_rs));
    // The columns past whole lanes.
    for (i, p) in scores.chunks_exact(tp).enumerate() {
        for c in 8 * values.lanes..dh {
            out[i * out_rs + c] = p[..t1]
                .iter()
                .zip(a.v.chunks(a.kv_rs))
                .fold(0.0, |acc, (&pj, vj)| madd::<FMA>(pj, vj[c], acc));
        }
    }
}

// Inlined into the AVX2 wrappers, so that they are compiled with AVX2 and FMA.
#[inline(always)]
fn pool<const FMA: bool>(a: &PoolInput<'_>, out: &mut [f32], scratch: &mut Vec<f32>) {
    let (t1, d, heads) = (a.t1, a.d, a.heads);
    let tp = padded(t1);
    // The queries transposed (`d` rows of `wq` columns, zero past `heads`): every row's
    // scores for all heads as one product over the rows as they are, none transposed.
    let wq = padded(heads);
    let need = (d + t1) * wq + heads * tp;
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let (qt, rest) = scratch[..need].split_at_mut(d * wq);
    let (scores, probs) = rest.split_at_mut(t1 * wq);
    for (c, row) in qt.chunks_exact_mut(wq).enumerate() {
        for (h, v) in row.iter_mut().enumerate() {
            *v = if h < heads { a.q[h * d + c] } else { 0.0 };
        }
    }
    let rows = Operands {
        w: a.x,
        w_rs: d,
        rows: t1,
        depth: d,
        b: qt,
        b_rs: wq,
        lanes: wq / 8,
    };
    product::<FMA>(&rows, (scores, wq));
    for (h, p) in probs.chunks_exact_mut(tp).enumerate() {
        for (v, s) in p[..t1].iter_mut().zip(scores.chunks_exact(wq)) {
            *v = s[h];
        }
        p[t1..].fill(0.0);
        masked_softmax::<FMA>(p, &a.keep[..tp], a.scale);
    }
    let weighted = Operands {
        w: probs,
        w_rs: tp,
        rows: heads,
        depth: t1,
        b: a.x,
        b_rs: d,
        lanes: d / 8,
    };
    product::<FMA>(&weighted, (&mut *out, d));
    // The columns past whole lanes.
    for (h, p) in probs.chunks_exact(tp).enumerate() {
        for c in 8 * weighted.lanes..d {
            out[h * d + c] = p[..t1]
                .iter()
                .zip(a.x.chunks(d))
                .fold(0.0, |acc, (&pj, xj)| madd::<FMA>(pj, xj[c], acc));
        }
    }
}

/// `kt[c * tp + j] = k[j * kv_rs + c]` for the `t1` keys and `dh` columns of `a`, zero for
/// `j` from `t1` to `tp`: whole 8 x 8 blocks by register shuffles in the AVX2 build (one
/// element at a time, the transposition was a sixth of the attention's time), the rest one
/// by one.
#[inline(always)]
fn transpose_keys<const FMA: bool>(a: &HeadInput<'_>, kt: &mut [f32], tp: usize) {
    let (t1, dh) = (a.t1, a.dh);
    let (mut keys, mut cols) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if FMA {
        (keys, cols) = (t1 / 8 * 8, dh / 8 * 8);
        for j in (0..keys).step_by(8) {
            for c in (0..cols).step_by(8) {
                let (src, dst) = (&a.k[j * a.kv_rs + c..], &mut kt[c * tp + j..]);
                // SAFETY: the FMA build runs only where `RowKernels::best` found AVX2 and FMA.
                unsafe { x86::transpose8(src, a.kv_rs, dst, tp) };
            }
        }
    }
    for (c, row) in kt.chunks_exact_mut(tp).enumerate() {
        let from = if c < cols { keys } else { 0 };
        let column = a.k.iter().skip(from * a.kv_rs + c).step_by(a.kv_rs);
        for (x, &k) in row[from..t1].iter_mut().zip(column) {
            *x = k;
        }
        row[t1..].fill(0.0);
    }
}

/// [`transpose_keys`] in the AVX2 build, for the AVX-512 attention.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) fn transpose_keys_avx2(a: &HeadInput<'_>, kt: &mut [f32], tp: usize) {
    transpose_keys::<true>(a, kt, tp)
}

/// The operands of [`product`]: `rows` rows of `w`, `w_rs` apart, of which the first `depth`
/// are read, and `depth` rows of `b`, `b_rs` apart, of which the first `lanes` 8-lane blocks
/// are read.
#[derive(Clone, Copy)]
pub(super) struct Operands<'a> {
    w: &'a [f32],
    w_rs: usize,
    rows: usize,
    depth: usize,
    b: &'a [f32],
    b_rs: usize,
    lanes: usize,
}

/// `out[i] = sum over k of w[i][k] * b[k]` for every row `i` of `m` (row `i` of `out` at
/// `out[i * out_rs..]`, `8 * lanes` wide): a small matrix product in register tiles of up to
/// eight 8-lane sums (two rows of three or four lanes, or up to four rows of one or two), so
/// that each block of `b` loaded serves several rows and eight independent chains of
/// multiply-adds hide their latency (one row at a time, a head's 16 columns were two chains
/// of 51 dependent multiply-adds).
#[inline(always)]
fn product<const FMA: bool>(m: &Operands<'_>, (out, out_rs): (&mut [f32], usize)) {
    let mut at = 0;
    while at < m.lanes {
        let n = (m.lanes - at).min(4);
        let tall = if n <= 2 { 4 } else { 2 };
        let mut i = 0;
        while i < m.rows {
            let r = (m.rows - i).min(tall);
            let o = (&mut *out, out_rs);
            match n {
                4 => tile_rows::<4, FMA>(m, o, i, at, r),
                3 => tile_rows::<3, FMA>(m, o, i, at, r),
                2 => tile_rows::<2, FMA>(m, o, i, at, r),
                _ => tile_rows::<1, FMA>(m, o, i, at, r),
            }
            i += r;
        }
        at += n;
    }
}

/// [`tile`] over rows `i..i + r` (`r` at most four, and at most two when `N` is over two).
#[inline(always)]
fn tile_rows<const N: usize, const FMA: bool>(
    m: &Operands<'_>,
    out: (&mut [f32], usize),
    i: usize,
    at: usize,
    r: usize,
) {
    match r {
        4 if N <= 2 => tile::<4, N, FMA>(m, out, i, at),
        3 if N <= 2 => tile::<3, N, FMA>(m, out, i, at),
        2 => tile::<2, N, FMA>(m, out, i, at),
        1 => tile::<1, N, FMA>(m, out, i, at),
        _ => unreachable!("product keeps tiles to eight sums"),
    }
}

/// One tile of [`product`]: rows `i..i + R`, lanes `at..at + N`.
#[inline(always)]
fn tile<const R: usize, const N: usize, const FMA: bool>(
    m: &Operands<'_>,
    (out, out_rs): (&mut [f32], usize),
    i: usize,
    at: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: the FMA build runs only where `RowKernels::best` found AVX2 and FMA.
        return unsafe { x86::tile::<R, N>(m, (out, out_rs), i, at) };
    }
    let w: [&[f32]; R] = std::array::from_fn(|r| &m.w[(i + r) * m.w_rs..][..m.depth]);
    let mut acc = [[[0f32; 8]; N]; R];
    for k in 0..m.depth {
        let b: &[Lanes; N] = m.b[k * m.b_rs + 8 * at..][..8 * N]
            .as_chunks::<8>()
            .0
            .try_into()
            .expect("N lanes");
        for (acc, w) in acc.iter_mut().zip(&w) {
            for (a, b) in acc.iter_mut().zip(b) {
                for l in 0..8 {
                    a[l] = madd::<FMA>(w[k], b[l], a[l]);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let o = &mut out[(i + r) * out_rs + 8 * at..][..8 * N];
        o.as_chunks_mut::<8>().0.copy_from_slice(acc);
    }
}

/// The mean of a row and `1 / sqrt(variance + 1e-5)` (biased variance, two passes, as
/// candle's `LayerNorm`).
#[inline(always)]
fn norm_stats<const FMA: bool>(x: &[f32]) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = reduce8(x, 0.0, add, add) / n;
    let var = reduce8(
        x,
        0.0,
        |a, v| {
            let d = v - mean;
            madd::<FMA>(d, d, a)
        },
        add,
    ) / n;
    (mean, 1.0 / (var + 1e-5).sqrt())
}

/// `(v - mean) * inv * gamma + beta` on one lane block.
#[inline(always)]
fn norm_lanes<const FMA: bool>(v: &mut Lanes, g: &Lanes, b: &Lanes, mean: f32, inv: f32) {
    for l in 0..8 {
        v[l] = madd::<FMA>((v[l] - mean) * inv, g[l], b[l]);
    }
}

/// Layer norm of one row, read from `x` and written to `out` (no copy of the row first: rows
/// are 32 wide, and a `memcpy` call per row cost as much as the arithmetic).
#[inline(always)]
fn norm_row<const FMA: bool>(out: &mut [f32], x: &[f32], gamma: &[f32], beta: &[f32]) {
    let (mean, inv) = norm_stats::<FMA>(x);
    let (o8, ot) = out.as_chunks_mut::<8>();
    let ((x8, xt), (g8, gt), (b8, bt)) = (
        x.as_chunks::<8>(),
        gamma.as_chunks::<8>(),
        beta.as_chunks::<8>(),
    );
    for (((o, x), g), b) in o8.iter_mut().zip(x8).zip(g8).zip(b8) {
        let mut v = *x;
        norm_lanes::<FMA>(&mut v, g, b, mean, inv);
        *o = v;
    }
    for (((o, x), g), b) in ot.iter_mut().zip(xt).zip(gt).zip(bt) {
        *o = madd::<FMA>((x - mean) * inv, *g, *b);
    }
}

/// Layer norm of one row in place.
#[inline(always)]
fn norm_row_in_place<const FMA: bool>(x: &mut [f32], gamma: &[f32], beta: &[f32]) {
    let (mean, inv) = norm_stats::<FMA>(x);
    let (x8, xt) = x.as_chunks_mut::<8>();
    let ((g8, gt), (b8, bt)) = (gamma.as_chunks::<8>(), beta.as_chunks::<8>());
    for ((x, g), b) in x8.iter_mut().zip(g8).zip(b8) {
        let mut v = *x;
        norm_lanes::<FMA>(&mut v, g, b, mean, inv);
        *x = v;
    }
    for ((x, g), b) in xt.iter_mut().zip(gt).zip(bt) {
        *x = madd::<FMA>((*x - mean) * inv, *g, *b);
    }
}

// Inlined into the AVX2 wrappers, so that they are compiled with AVX2 and FMA.
#[inline(always)]
fn norm_rows<const FMA: bool>(out: &mut [f32], x: &[f32], gamma: &[f32], beta: &[f32]) {
    let d = gamma.len();
    for (o, r) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        norm_row::<FMA>(o, r, gamma, beta);
    }
}

// Inlined into the AVX2 wrappers, so that they are compiled with AVX2 and FMA.
#[inline(always)]
fn norm_in_place<const FMA: bool>(x: &mut [f32], gamma: &[f32], beta: &[f32]) {
    for r in x.chunks_exact_mut(gamma.len()) {
        norm_row_in_place::<FMA>(r, gamma, beta);
    }
}

// Inlined into the AVX2 wrappers, so that they are compiled with AVX2 and FMA.
#[inline(always)]
fn sum_norm<const FMA: bool>(out: &mut [f32], rows: &[&[f32]], gamma: &[f32], beta: &[f32]) {
    let (first, rest) = rows.split_first().expect("a token sums at least one row");
    out.copy_from_slice(first);
    for row in rest {
        super::kernels::add(out, row);
    }
    norm_row_in_place::<FMA>(out, gamma, beta);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Every build this CPU can run.
    fn builds() -> Vec<RowKernels> {
        [
            Some(RowKernels::portable()),
            RowKernels::avx2(),
            RowKernels::avx512(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The definition in f64: `softmax(scale * q k^T)` over kept keys, times `v`.
    fn attend_naive(a: &HeadInput<'_>) -> Vec<f64> {
        let mut out = vec![0.0; a.tq * a.dh];
        for i in 0..a.tq {
            let s: Vec<f64> = (0..a.t1)
                .map(|j| {
                    (0..a.dh)
                        .map(|c| f64::from(a.q[i * a.q_rs + c]) * f64::from(a.k[j * a.kv_rs + c]))
                        .sum::<f64>()
                        * f64::from(a.scale)
                })
                .collect();
            let kept = |j: usize| a.keep[j] > 0.0;
            let max = (0..a.t1)
                .filter(|&j| kept(j))
                .map(|j| s[j])
                .fold(f64::MIN, f64::max);
            let e: Vec<f64> = (0..a.t1)
                .map(|j| if kept(j) { (s[j] - max).exp() } else { 0.0 })
                .collect();
            let z: f64 = e.iter().sum();
            for c in 0..a.dh {
                out[i * a.dh + c] = if z == 0.0 {
                    0.0
                } else {
                    (0..a.t1)
                        .map(|j| e[j] / z * f64::from(a.v[j * a.kv_rs + c]))
                        .sum()
                };
            }
        }
        out
    }

    #[test]
    fn attention_equals_its_definition_on_every_build() {
        let mut rng = StdRng::seed_from_u64(5);
        for case in 0..60 {
            let dh = [1, 3, 8, 16, 20][case % 5];
            let t1 = rng.random_range(1..70);
            let tq = if case % 3 == 0 { 1 } else { t1 };
            // Heads of wider rows, as the layers store them: q, k and v at offsets of a row.
            let rs = 3 * dh + rng.random_range(0..5);
            let data: Vec<f32> = (0..t1.max(tq) * rs)
                .map(|_| rng.random_range(-3.0..3.0))
                .collect();
            let keep: Vec<f32> = (0..padded(t1))
                .map(|j| {
                    if j >= t1 {
                        return 0.0;
                    }
                    if case % 7 == 0 || rng.random_bool(0.8) {
                        1.0
                    } else {
                        0.0
                    }
                })
                .map(|k| if case % 11 == 5 { 0.0 } else { k })
                .collect();
            let a = HeadInput {
                q: &data,
                q_rs: rs,
                tq,
                k: &data[dh..],
                v: &data[2 * dh..],
                kv_rs: rs,
                t1,
                dh,
                keep: &keep,
                scale: 1.0 / (dh as f32).sqrt(),
            };
            let want = attend_naive(&a);
            for k in builds() {
                let out_rs = dh + 2;
                let mut out = vec![f32::NAN; tq * out_rs];
                (k.attend)(&a, (&mut out, out_rs), &mut Vec::new());
                for i in 0..tq {
                    for c in 0..dh {
                        let (g, w) = (f64::from(out[i * out_rs + c]), want[i * dh + c]);
                        assert!((g - w).abs() < 1e-5, "case {case} ({i}, {c}): {g} vs {w}");
                    }
                }
            }
        }
    }

    /// `false`, and `true` where this CPU runs the FMA build.
    fn fma_builds() -> Vec<bool> {
        let mut v = vec![false];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            v.push(true);
        }
        v
    }

    #[test]
    fn register_tiled_products_equal_a_plain_loop_exactly() {
        let mut rng = StdRng::seed_from_u64(3);
        for case in 0..60 {
            let rows = rng.random_range(1..10);
            let lanes = rng.random_range(1..7);
            let depth = rng.random_range(1..60);
            let w_rs = depth + rng.random_range(0..3);
            let b_rs = 8 * lanes + rng.random_range(0..9);
            let out_rs = 8 * lanes + rng.random_range(0..5);
            let mut values =
                |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-2.0..2.0)).collect() };
            let (w, b) = (values(rows * w_rs), values(depth * b_rs));
            let m = Operands {
                w: &w,
                w_rs,
                rows,
                depth,
                b: &b,
                b_rs,
                lanes,
            };
            for fma in fma_builds() {
                let mut out = vec![f32::NAN; rows * out_rs];
                if fma {
                    product::<true>(&m, (&mut out, out_rs));
                } else {
                    product::<false>(&m, (&mut out, out_rs));
                }
                for i in 0..rows {
                    for c in 0..8 * lanes {
                        let want = (0..depth).fold(0.0, |acc, k| {
                            let (x, y) = (w[i * w_rs + k], b[k * b_rs + c]);
                            if fma {
                                x.mul_add(y, acc)
                            } else {
                                x * y + acc
                            }
                        });
                        assert_eq!(
                            out[i * out_rs + c],
                            want,
                            "case {case} fma {fma} ({i}, {c})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn folded_attention_equals_its_definition_on_every_build() {
        let mut rng = StdRng::seed_from_u64(8);
        for case in 0..40 {
            let (d, heads) = ([3, 8, 16, 32, 20][case % 5], 1 + case % 3);
            let t1 = rng.random_range(1..70);
            let mut values =
                |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-2.0..2.0)).collect() };
            let (q, x) = (values(heads * d), values(t1 * d));
            // The first position always kept, as the target is.
            let keep: Vec<f32> = (0..padded(t1))
                .map(|j| f32::from(j == 0 || (j < t1 && (j + case) % 4 != 0)))
                .collect();
            let a = PoolInput {
                q: &q,
                heads,
                x: &x,
                t1,
                d,
                keep: &keep,
                scale: 0.25,
            };
            // The same attention as `attend_naive`'s: each head's query against keys and
            // values that are both the rows.
            let want: Vec<f64> = (0..heads)
                .flat_map(|h| {
                    attend_naive(&HeadInput {
                        q: &q[h * d..],
                        q_rs: d,
                        tq: 1,
                        k: &x,
                        v: &x,
                        kv_rs: d,
                        t1,
                        dh: d,
                        keep: &keep,
                        scale: 0.25,
                    })
                })
                .collect();
            for k in builds() {
                let mut out = vec![f32::NAN; heads * d];
                (k.pool)(&a, &mut out, &mut Vec::new());
                for (i, (g, w)) in out.iter().zip(&want).enumerate() {
                    let g = f64::from(*g);
                    assert!((g - w).abs() < 1e-5, "case {case} {i}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn softmax_ignores_padding_and_zeroes_empty_rows_on_every_build() {
        for k in builds() {
            let mut s = vec![1.0, 5.0, 2.0];
            (k.softmax)(&mut s, &[1.0, 0.0, 1.0], 1.0);
            let e = 1f32.exp() + 2f32.exp();
            let want = [1f32.exp() / e, 0.0, 2f32.exp() / e];
            assert!(
                s.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
                "{s:?}"
            );
            let mut none = vec![3.0, 4.0];
            (k.softmax)(&mut none, &[0.0, 0.0], 1.0);
            assert_eq!(none, vec![0.0, 0.0]);
            let mut scaled = vec![2.0, 4.0];
            (k.softmax)(&mut scaled, &[1.0, 1.0], 0.5);
            assert!((scaled[0] - 1f32.exp() / e).abs() < 1e-6);
        }
    }

    #[test]
    fn the_exponential_is_within_a_few_ulp() {
        for i in 0..=87_000 {
            let x = -(i as f32) * 0.001;
            let want = f64::from(x).exp();
            for got in [exp_neg::<false>(x), exp_neg::<true>(x)] {
                let rel = (f64::from(got) - want).abs() / want;
                assert!(rel < 4.0 * f64::from(f32::EPSILON), "{x}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn summed_and_normalised_tokens_equal_the_sum_then_the_norm_on_every_build() {
        let mut rng = StdRng::seed_from_u64(13);
        for d in [1, 5, 16, 32, 37, 64, 80] {
            for n in [1, 2, 9] {
                let rows: Vec<Vec<f32>> = (0..n)
                    .map(|_| (0..d).map(|_| rng.random_range(-2.0..2.0)).collect())
                    .collect();
                let gamma: Vec<f32> = (0..d).map(|_| rng.random_range(0.5..1.5)).collect();
                let beta: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
                let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
                for k in builds() {
                    let mut want = rows[0].clone();
                    for r in &rows[1..] {
                        for (w, v) in want.iter_mut().zip(r) {
                            *w += v;
                        }
                    }
                    (k.norm_in_place)(&mut want, &gamma, &beta);
                    let mut got = vec![f32::NAN; d];
                    (k.sum_norm)(&mut got, &refs, &gamma, &beta);
                    // The same sums in the same order and the same norm: the same floats.
                    assert_eq!(got, want, "d {d}, {n} rows");
                }
            }
        }
    }

    #[test]
    fn layer_norm_rows_equal_the_definition_on_every_build() {
        let mut rng = StdRng::seed_from_u64(9);
        for d in [1, 5, 8, 16, 32, 37, 48, 64, 80] {
            let x: Vec<f32> = (0..3 * d).map(|_| rng.random_range(-4.0..4.0)).collect();
            let gamma: Vec<f32> = (0..d).map(|_| rng.random_range(0.5..1.5)).collect();
            let beta: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
            let want: Vec<f64> = x
                .chunks(d)
                .flat_map(|r| {
                    let n = d as f64;
                    let mean = r.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                    let var = r
                        .iter()
                        .map(|&v| (f64::from(v) - mean).powi(2))
                        .sum::<f64>()
                        / n;
                    let inv = 1.0 / (var + 1e-5).sqrt();
                    r.iter()
                        .zip(&gamma)
                        .zip(&beta)
                        .map(move |((&v, &g), &b)| {
                            (f64::from(v) - mean) * inv * f64::from(g) + f64::from(b)
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            for k in builds() {
                let mut out = vec![0.0; x.len()];
                (k.norm_rows)(&mut out, &x, &gamma, &beta);
                let mut inplace = x.clone();
                (k.norm_in_place)(&mut inplace, &gamma, &beta);
                for ((g, h), w) in out.iter().zip(&inplace).zip(&want) {
                    assert!((f64::from(*g) - w).abs() < 1e-5, "{d}: {g} vs {w}");
                    assert_eq!(g, h);
                }
            }
        }
    }
}
