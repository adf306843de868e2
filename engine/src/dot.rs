//! Exact int8 dot products for soft retrieval, with the best SIMD the CPU has, chosen once at run
//! time: AVX-512 VNNI (`vpdpbusd`: 64 products a cycle into i32 lanes), else AVX2 (`vpmaddwd` on
//! sign-extended lanes), else a portable loop that vectorises anywhere. Every kernel is exact
//! (integer arithmetic; a property test checks each against a plain loop).
//!
//! Two shapes: one embedding against one query ([`Kernel::dot`]), and one embedding against a
//! block of queries ([`Kernel::dots`], the rows of an int8 matrix product: the batched soft
//! retrieval multiplies the user's distinct items by all the targets at once).

/// Queries laid out for [`Kernel::select`]: for each group of 16 queries, for each 4 dimensions, the
/// 16 queries' 4 bytes side by side (so that one broadcast of an embedding's 4 bytes meets 16
/// queries), and each query's sum of values (for the unsigned-operand correction).
pub struct Queries {
    dim: usize,
    n: usize,
    /// `[group][dim / 4 (rounded up)][16 queries][4 bytes]`.
    packed: Vec<i8>,
    /// Per query, 128 * the sum of its values (zero past the last query, to whole groups).
    bias: Vec<i32>,
    /// Per query, the factor its dot products are scaled by (zero past the last query).
    scale: Vec<f32>,
    /// The queries as given, row by row (for the kernels without VNNI).
    rows: Vec<i8>,
}

const LANES: usize = 16;

impl Queries {
    /// Lay out `queries` (each `dim` values), whose dot products [`Kernel::select`] scales by
    /// `scale` (one factor per query).
    pub fn new<'a>(
        queries: impl IntoIterator<Item = &'a [i8]>,
        dim: usize,
        scale: &[f32],
    ) -> Queries {
        let rows: Vec<i8> = queries.into_iter().flatten().copied().collect();
        let n = rows.len().checked_div(dim).unwrap_or(0);
        let quads = dim.div_ceil(4);
        let groups = n.div_ceil(LANES);
        let mut packed = vec![0i8; groups * quads * LANES * 4];
        for t in 0..n {
            let (g, lane) = (t / LANES, t % LANES);
            for d in 0..dim {
                packed[((g * quads + d / 4) * LANES + lane) * 4 + d % 4] = rows[t * dim + d];
            }
        }
        let mut bias: Vec<i32> = (0..n)
            .map(|t| {
                128 * rows[t * dim..(t + 1) * dim]
                    .iter()
                    .map(|&v| i32::from(v))
                    .sum::<i32>()
            })
            .collect();
        bias.resize(groups * LANES, 0);
        let mut scale = scale.to_vec();
        scale.resize(groups * LANES, 0.0);
        Queries {
            dim,
            n,
            packed,
            bias,
            scale,
            rows,
        }
    }

    fn row(&self, t: usize) -> &[i8] {
        &self.rows[t * self.dim..(t + 1) * self.dim]
    }

    /// Queries padded to whole groups of 16 (what a thresholds array must cover).
    pub fn padded_len(&self) -> usize {
        self.n.div_ceil(LANES) * LANES
    }
}

/// The score of an embedding for query `t`: its dot product times the query's factor times the
/// embedding's (the order of the multiplications is part of the definition: every kernel
/// rounds alike).
#[inline(always)]
pub fn score(dot: i32, query_scale: f32, emb_scale: f32) -> f32 {
    dot as f32 * query_scale * emb_scale
}

/// [`Kernel::select`]: (embedding, its scale, queries, thresholds, passing (query, score)).
pub type Select = fn(&[i8], f32, &Queries, &[f32], &mut Vec<(u32, f32)>);

/// The dot-product kernels chosen for this CPU.
#[derive(Clone, Copy)]
pub struct Kernel {
    /// `a · b` (equal lengths).
    pub dot: fn(&[i8], &[i8]) -> i32,
    /// `out[i] = row i · query` for every row of a row-major matrix of `dim` columns.
    pub rows: fn(&[i8], usize, &[i8], &mut [i32]),
    /// For one embedding (scaled by the given factor): push `(t, score)` for every query `t`
    /// whose [`score`] is at least `thresholds[t]` (`thresholds` covers
    /// [`Queries::padded_len`]).
    pub select: Select,
    /// `out[t] = embedding · query t` for every query (`out` at least as long as the queries).
    pub dots: fn(&[i8], &Queries, &mut [i32]),
}

impl Kernel {
    /// The best kernels for this CPU (feature detection is cached by the standard library).
    pub fn best() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                return Kernel {
                    // SAFETY: chosen only when the CPU has these features.
                    dot: |a, b| unsafe { x86::dot_vnni(a, b) },
                    rows: |m, dim, q, out| unsafe { x86::rows_vnni(m, dim, q, out) },
                    select: |e, s, q, th, out| unsafe { x86::select_vnni(e, s, q, th, out) },
                    dots: |e, q, out| unsafe { x86::dots_vnni(e, q, out) },
                };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Kernel {
                    // SAFETY: chosen only when the CPU has AVX2.
                    dot: |a, b| unsafe { x86::dot_avx2(a, b) },
                    rows: |m, dim, q, out| {
                        rows_by_row(m, dim, q, out, |a, b| unsafe { x86::dot_avx2(a, b) })
                    },
                    select: |e, s, q, th, out| {
                        select_by_row(e, s, q, th, out, |a, b| unsafe { x86::dot_avx2(a, b) })
                    },
                    dots: |e, q, out| dots_by_row(e, q, out, |a, b| unsafe { x86::dot_avx2(a, b) }),
                };
            }
        }
        Kernel::portable()
    }

    /// The loops every target has.
    pub fn portable() -> Kernel {
        Kernel {
            dot: dot_portable,
            rows: |m, dim, q, out| rows_by_row(m, dim, q, out, dot_portable),
            select: |e, s, q, th, out| select_by_row(e, s, q, th, out, dot_portable),
            dots: |e, q, out| dots_by_row(e, q, out, dot_portable),
        }
    }

    /// Every kernel this CPU can run (for the tests).
    #[cfg(test)]
    pub fn all() -> Vec<Kernel> {
        vec![Kernel::best(), Kernel::portable()]
    }
}

fn select_by_row(
    emb: &[i8],
    emb_scale: f32,
    q: &Queries,
    thresholds: &[f32],
    out: &mut Vec<(u32, f32)>,
    dot: impl Fn(&[i8], &[i8]) -> i32,
) {
    for (t, &th) in thresholds.iter().enumerate().take(q.n) {
        let s = score(dot(emb, q.row(t)), q.scale[t], emb_scale);
        if s >= th {
            out.push((t as u32, s));
        }
    }
}

fn dots_by_row(emb: &[i8], q: &Queries, out: &mut [i32], dot: impl Fn(&[i8], &[i8]) -> i32) {
    for (t, o) in out.iter_mut().enumerate().take(q.n) {
        *o = dot(emb, q.row(t));
    }
}

fn rows_by_row(m: &[i8], dim: usize, q: &[i8], out: &mut [i32], dot: impl Fn(&[i8], &[i8]) -> i32) {
    for (o, row) in out.iter_mut().zip(m.chunks_exact(dim.max(1))) {
        *o = dot(row, q);
    }
}

fn dot_portable(a: &[i8], b: &[i8]) -> i32 {
    // Chunks of 16 with products summed into i32 lanes vectorise on any target.
    let mut acc = [0i32; 16];
    let (ca, ra) = a.as_chunks::<16>();
    let (cb, rb) = b.as_chunks::<16>();
    for (x, y) in ca.iter().zip(cb) {
        for l in 0..16 {
            acc[l] += i32::from(x[l]) * i32::from(y[l]);
        }
    }
    let mut s: i32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += i32::from(*x) * i32::from(*y);
    }
    s
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Queries, LANES};

    /// 32 bytes at a time into two accumulators (a 64-d embedding is two steps): each half
    /// sign-extended to i16 lanes, then `vpmaddwd` multiplies and adds adjacent pairs into i32
    /// lanes (at most 2 * 128 * 128 each, so no overflow below 2^15 steps); a 16-byte step for
    /// what is left, the eight lanes summed in registers (through memory, the sum cost about as
    /// much as the products of a 64-d dot), then the scalar tail. Integer sums: exact in any
    /// order.
    #[target_feature(enable = "avx2")]
    pub unsafe fn dot_avx2(a: &[i8], b: &[i8]) -> i32 {
        let n = a.len().min(b.len());
        let mut acc0 = _mm256_setzero_si256();
        let mut acc1 = _mm256_setzero_si256();
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: i + 32 <= n, within both slices; loadu needs no alignment.
            let (x, y) = unsafe {
                (
                    _mm256_loadu_si256(a.as_ptr().add(i).cast()),
                    _mm256_loadu_si256(b.as_ptr().add(i).cast()),
                )
            };
            let (xl, yl) = (_mm256_castsi256_si128(x), _mm256_castsi256_si128(y));
            let (xh, yh) = (
                _mm256_extracti128_si256::<1>(x),
                _mm256_extracti128_si256::<1>(y),
            );
            acc0 = _mm256_add_epi32(
                acc0,
                _mm256_madd_epi16(_mm256_cvtepi8_epi16(xl), _mm256_cvtepi8_epi16(yl)),
            );
            acc1 = _mm256_add_epi32(
                acc1,
                _mm256_madd_epi16(_mm256_cvtepi8_epi16(xh), _mm256_cvtepi8_epi16(yh)),
            );
            i += 32;
        }
        if i + 16 <= n {
            // SAFETY: i + 16 <= n, within both slices.
            let (x, y) = unsafe {
                (
                    _mm_loadu_si128(a.as_ptr().add(i).cast()),
                    _mm_loadu_si128(b.as_ptr().add(i).cast()),
                )
            };
            acc0 = _mm256_add_epi32(
                acc0,
                _mm256_madd_epi16(_mm256_cvtepi8_epi16(x), _mm256_cvtepi8_epi16(y)),
            );
            i += 16;
        }
        let acc = _mm256_add_epi32(acc0, acc1);
        let four = _mm_add_epi32(
            _mm256_castsi256_si128(acc),
            _mm256_extracti128_si256::<1>(acc),
        );
        let two = _mm_add_epi32(four, _mm_shuffle_epi32::<0b01_00_11_10>(four));
        let one = _mm_add_epi32(two, _mm_shuffle_epi32::<0b10_11_00_01>(two));
        let mut s = _mm_cvtsi128_si32(one);
        for j in i..n {
            s += i32::from(a[j]) * i32::from(b[j]);
        }
        s
    }

    /// 64 bytes at a time: `vpdpbusd` multiplies unsigned by signed bytes and adds groups of
    /// four into i32 lanes. `a` is made unsigned by adding 128 (flipping its sign bit), which
    /// adds `128 * sum(b)`; that is subtracted at the end. Exact: each lane gathers at most
    /// `4 * 255 * 128` per chunk. The tail is a masked load (zeros add nothing).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dot_vnni(a: &[i8], b: &[i8]) -> i32 {
        let n = a.len().min(b.len());
        let flip = _mm512_set1_epi8(-128);
        let ones = _mm512_set1_epi8(1);
        let mut acc = _mm512_setzero_si512();
        let mut sum_b = _mm512_setzero_si512();
        let mut i = 0;
        while i < n {
            let left = n - i;
            let mask: u64 = if left >= 64 {
                u64::MAX
            } else {
                (1u64 << left) - 1
            };
            // SAFETY: the mask covers only bytes below n, within both slices.
            let (x, y) = unsafe {
                (
                    _mm512_maskz_loadu_epi8(mask, a.as_ptr().add(i).cast()),
                    _mm512_maskz_loadu_epi8(mask, b.as_ptr().add(i).cast()),
                )
            };
            // Masked-out bytes of x are 0 and flip to 128, but meet zeros of y.
            acc = _mm512_dpbusd_epi32(acc, _mm512_xor_si512(x, flip), y);
            sum_b = _mm512_dpbusd_epi32(sum_b, ones, y);
            i += 64;
        }
        _mm512_reduce_add_epi32(acc) - 128 * _mm512_reduce_add_epi32(sum_b)
    }

    /// Every row of a matrix against one query, in one pass over the matrix: the query is
    /// loaded once, its unsigned-operand correction computed once; per row, one masked load per
    /// 64 values, a `vpdpbusd`, and one reduction.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn rows_vnni(m: &[i8], dim: usize, q: &[i8], out: &mut [i32]) {
        if dim == 0 || dim > 256 || q.len() < dim {
            super::rows_by_row(m, dim, q, out, |a, b| unsafe { dot_vnni(a, b) });
            return;
        }
        let flip = _mm512_set1_epi8(-128);
        let chunks = dim.div_ceil(64);
        let mut qv = [_mm512_setzero_si512(); 4];
        let mut masks = [0u64; 4];
        for (c, (v, mask)) in qv.iter_mut().zip(masks.iter_mut()).enumerate().take(chunks) {
            let left = dim - c * 64;
            *mask = if left >= 64 {
                u64::MAX
            } else {
                (1u64 << left) - 1
            };
            // SAFETY: the mask covers only values below dim, within q.
            *v = unsafe { _mm512_maskz_loadu_epi8(*mask, q.as_ptr().add(c * 64).cast()) };
        }
        let bias: i32 = 128 * q[..dim].iter().map(|&v| i32::from(v)).sum::<i32>();
        for (o, row) in out.iter_mut().zip(m.chunks_exact(dim)) {
            let mut acc = _mm512_setzero_si512();
            for c in 0..chunks {
                // SAFETY: the mask covers only values below dim, within the row.
                let x =
                    unsafe { _mm512_maskz_loadu_epi8(masks[c], row.as_ptr().add(c * 64).cast()) };
                acc = _mm512_dpbusd_epi32(acc, _mm512_xor_si512(x, flip), qv[c]);
            }
            *o = _mm512_reduce_add_epi32(acc) - bias;
        }
    }

    /// [`super::Kernel::select`]: the accumulators of [`accumulate`], then per 16 queries the
    /// scores as floats (the same multiplications, in the same order, as [`super::score`]) and
    /// one comparison with the 16 thresholds; only the queries that pass leave the registers.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn select_vnni(
        emb: &[i8],
        emb_scale: f32,
        q: &Queries,
        thresholds: &[f32],
        out: &mut Vec<(u32, f32)>,
    ) {
        if q.dim > 4 * 2048 {
            super::select_by_row(emb, emb_scale, q, thresholds, out, |a, b| unsafe {
                dot_vnni(a, b)
            });
            return;
        }
        let es = _mm512_set1_ps(emb_scale);
        let done = |g: usize, acc: __m512i, out: &mut Vec<(u32, f32)>| {
            let base = g * LANES;
            // SAFETY: bias, scale and thresholds cover whole groups of 16.
            let (bias, scale, th) = unsafe {
                (
                    _mm512_loadu_si512(q.bias.as_ptr().add(base).cast()),
                    _mm512_loadu_ps(q.scale.as_ptr().add(base)),
                    _mm512_loadu_ps(thresholds.as_ptr().add(base)),
                )
            };
            let d = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, bias));
            let s = _mm512_mul_ps(_mm512_mul_ps(d, scale), es);
            let mut m = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(s, th);
            if m != 0 {
                let mut lanes = [0f32; LANES];
                // SAFETY: `lanes` is 64 bytes; storeu needs no alignment.
                unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), s) };
                while m != 0 {
                    let l = m.trailing_zeros() as usize;
                    m &= m - 1;
                    if base + l < q.n {
                        out.push(((base + l) as u32, lanes[l]));
                    }
                }
            }
        };
        // SAFETY: the same features are enabled here.
        unsafe { accumulate(emb, q, |g, acc| done(g, acc, out)) };
    }

    /// [`super::Kernel::dots`]: the accumulators of [`accumulate`] less each query's
    /// unsigned-operand correction.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dots_vnni(emb: &[i8], q: &Queries, out: &mut [i32]) {
        if q.dim > 4 * 2048 {
            super::dots_by_row(emb, q, out, |a, b| unsafe { dot_vnni(a, b) });
            return;
        }
        let n = q.n.min(out.len());
        let each = |g: usize, acc: __m512i| {
            let base = g * LANES;
            // SAFETY: bias covers whole groups of 16.
            let bias = unsafe { _mm512_loadu_si512(q.bias.as_ptr().add(base).cast()) };
            let mut lanes = [0i32; LANES];
            // SAFETY: `lanes` is 64 bytes; storeu needs no alignment.
            unsafe { _mm512_storeu_si512(lanes.as_mut_ptr().cast(), _mm512_sub_epi32(acc, bias)) };
            let take = n.saturating_sub(base).min(LANES);
            out[base..base + take].copy_from_slice(&lanes[..take]);
        };
        // SAFETY: the same features are enabled here.
        unsafe { accumulate(emb, q, each) };
    }

    /// One embedding against every query of `q`, group by group: `each(group, accumulators)`,
    /// the accumulators holding `(emb + 128) · query` for the group's 16 queries.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn accumulate(emb: &[i8], q: &Queries, mut each: impl FnMut(usize, __m512i)) {
        let groups = q.n.div_ceil(LANES);
        let mut g0 = 0;
        while g0 < groups {
            // A block of a constant number of groups keeps its accumulators in registers (a
            // count known at run time only left them on the stack, a load and a store around
            // every product).
            g0 += match groups - g0 {
                1 => accumulate_block::<1>(emb, q, g0, &mut each),
                2 => accumulate_block::<2>(emb, q, g0, &mut each),
                3 => accumulate_block::<3>(emb, q, g0, &mut each),
                4 => accumulate_block::<4>(emb, q, g0, &mut each),
                5 => accumulate_block::<5>(emb, q, g0, &mut each),
                6 => accumulate_block::<6>(emb, q, g0, &mut each),
                7 => accumulate_block::<7>(emb, q, g0, &mut each),
                _ => accumulate_block::<8>(emb, q, g0, &mut each),
            };
        }
    }

    /// [`accumulate`] for the `G` groups from `g0`; returns `G`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn accumulate_block<const G: usize>(
        emb: &[i8],
        q: &Queries,
        g0: usize,
        each: &mut impl FnMut(usize, __m512i),
    ) -> usize {
        let quads = q.dim.div_ceil(4);
        let mut acc = [_mm512_setzero_si512(); G];
        for j in 0..quads {
            let b = _mm512_set1_epi32(word(emb, q.dim, j) as i32);
            for (g, a) in acc.iter_mut().enumerate() {
                let at = (((g0 + g) * quads + j) * LANES) * 4;
                // SAFETY: `packed` holds groups * quads * 64 bytes, and `g0 + G` groups
                // at most.
                let qv = unsafe { _mm512_loadu_si512(q.packed.as_ptr().add(at).cast()) };
                *a = _mm512_dpbusd_epi32(*a, b, qv);
            }
        }
        for (g, a) in acc.iter().enumerate() {
            each(g0 + g, *a);
        }
        G
    }

    /// The embedding's 4 values `j`, made unsigned (past the first `dim`: 128, the shifted
    /// zero). Computed where used: a buffer of them filled per call cost more than the
    /// products when the caller passes thousands of embeddings. A whole word is one load and
    /// one xor: with a few dozen products per word (a hundred queries), its bytes one by one
    /// cost as much as the products.
    #[inline(always)]
    fn word(emb: &[i8], dim: usize, j: usize) -> u32 {
        if 4 * j + 4 <= emb.len().min(dim) {
            let w: [u8; 4] = std::array::from_fn(|i| emb[4 * j + i] as u8);
            return u32::from_le_bytes(w) ^ 0x8080_8080;
        }
        let mut w = [0x80u8; 4];
        for (b, &v) in w.iter_mut().zip(emb.iter().take(dim).skip(4 * j)) {
            *b = (v as u8) ^ 0x80;
        }
        u32::from_le_bytes(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plain(a: &[i8], b: &[i8]) -> i32 {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| i32::from(x) * i32::from(y))
            .sum()
    }

    proptest! {
        /// Every kernel this CPU runs is exact, for every length, with the extremes -128 and
        /// 127, and for every number of queries up to several blocks of 8 groups of 16.
        #[test]
        fn kernels_are_exact(
            dim in 1usize..300,
            n in 1usize..300,
            seed in any::<u64>(),
        ) {
            let mut x = seed | 1;
            let mut next = move || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x };
            let value = |r: u64| match r % 9 { 0 => -128, 1 => 127, _ => (r >> 8) as i8 };
            let emb: Vec<i8> = (0..dim).map(|_| value(next())).collect();
            let qs: Vec<Vec<i8>> = (0..n).map(|_| (0..dim).map(|_| value(next())).collect()).collect();
            let scales: Vec<f32> = (0..n).map(|t| 0.01 + t as f32 / 7.0).collect();
            let queries = Queries::new(qs.iter().map(|v| v.as_slice()), dim, &scales);
            let matrix: Vec<i8> = qs.iter().flatten().copied().collect();
            for k in Kernel::all() {
                let mut by_rows = vec![0i32; n];
                (k.rows)(&matrix, dim, &emb, &mut by_rows);
                // With unit scales and no threshold, select hands back every exact dot product.
                let ones = Queries::new(qs.iter().map(|v| v.as_slice()), dim, &vec![1.0; n]);
                let mut all = Vec::new();
                (k.select)(&emb, 1.0, &ones, &vec![f32::NEG_INFINITY; ones.padded_len()], &mut all);
                let out: Vec<i32> = all.iter().map(|&(_, s)| s as i32).collect();
                let mut dots = vec![0i32; n];
                (k.dots)(&emb, &queries, &mut dots);
                prop_assert_eq!(&dots, &by_rows);
                prop_assert_eq!(all.len(), n);
                // Thresholds at every other query's own score: exactly those pass, scored alike.
                let mut th = vec![f32::INFINITY; queries.padded_len()];
                for (t, q) in qs.iter().enumerate().step_by(2) {
                    th[t] = score(plain(&emb, q), scales[t], 0.5);
                }
                let mut picked = Vec::new();
                (k.select)(&emb, 0.5, &queries, &th, &mut picked);
                let want: Vec<(u32, f32)> = (0..n).step_by(2).map(|t| (t as u32, th[t])).collect();
                prop_assert_eq!(picked, want);
                for (t, q) in qs.iter().enumerate() {
                    prop_assert_eq!((k.dot)(&emb, q), plain(&emb, q));
                    prop_assert_eq!(out[t], plain(&emb, q));
                    prop_assert_eq!(by_rows[t], plain(q, &emb));
                }
            }
        }
    }
}
