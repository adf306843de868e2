//! The fused forward's building blocks over plain `f32` slices: dense products through the
//! `gemm` crate (the kernels candle's CPU matmul uses), and the row-wise parts (gather-and-sum,
//! layer norm, bias and activation, masked softmax) applied to one row while it is in cache.

use wide::f32x8;

/// A read-only matrix over a slice: element `(i, j)` is `data[i * rs + j * cs]`. A transposed
/// view of a row-major weight is a view with the strides swapped, so no weight is ever copied
/// to be transposed.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// Row-major `rows x cols` at the start of `data`.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> View<'a> {
        View {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// `rows x cols` starting at column `col` of row-major rows `rs` wide (a head's slice of a
    /// wider row).
    pub fn columns(data: &'a [f32], rows: usize, rs: usize, col: usize, cols: usize) -> View<'a> {
        View {
            data: &data[col..],
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    pub fn t(self) -> View<'a> {
        View {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// One past the last element the view reads.
    fn span(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
        }
    }
}

/// `v` copied row-major into `buf` (reused across calls), as a contiguous view: the `gemm`
/// kernels run two to three times faster on a small contiguous operand than on a strided one
/// (a head's columns of a wider row, a transposed block).
pub fn pack<'b>(buf: &'b mut Vec<f32>, v: View<'_>) -> View<'b> {
    buf.clear();
    for i in 0..v.rows {
        buf.extend((0..v.cols).map(|j| v.data[i * v.rs + j * v.cs]));
    }
    View::rows(buf, v.rows, v.cols)
}

/// `dst = a b` (or `dst += a b` with `accumulate`), `dst` row-major with row stride `dst_rs`.
///
/// # Panics
/// When the shapes disagree or a view reaches past its slice: the callers size every buffer
/// from the model's shapes, so this is a bug, never bad input.
pub fn matmul(dst: &mut [f32], dst_rs: usize, a: View<'_>, b: View<'_>, accumulate: bool) {
    assert_eq!(a.cols, b.rows, "inner dimensions of a product");
    assert!(a.span() <= a.data.len() && b.span() <= b.data.len());
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst_rs >= n && (m - 1) * dst_rs + n <= dst.len());
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_rs..r * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    // SAFETY: the asserts above keep every element gemm reads or writes inside the slices
    // (the spans of `a` and `b`, and `m` rows of `n` elements `dst_rs` apart in `dst`), and
    // `dst` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Layer norm of `x` in place (eps 1e-5, biased variance, as candle's `LayerNorm`).
pub fn layer_norm(x: &mut [f32], gamma: &[f32], beta: &[f32]) {
    let n = x.len() as f32;
    let mean = sum(x) / n;
    for v in x.iter_mut() {
        *v -= mean;
    }
    let var = lanes_of(x, |v| v * v, |v| v * v) / n;
    let inv = 1.0 / (var + 1e-5).sqrt();
    for ((v, g), b) in x.iter_mut().zip(gamma).zip(beta) {
        *v = *v * inv * g + b;
    }
}

/// `out = layer_norm(x)` for one row, leaving `x` as it was (the residual stream).
pub fn layer_norm_into(out: &mut [f32], x: &[f32], gamma: &[f32], beta: &[f32]) {
    out.copy_from_slice(x);
    layer_norm(out, gamma, beta);
}

/// `x += bias`, then ReLU when `relu`.
pub fn bias_act(x: &mut [f32], bias: &[f32], relu: bool) {
    for (v, b) in x.iter_mut().zip(bias) {
        *v += b;
        if relu && *v < 0.0 {
            *v = 0.0;
        }
    }
}

/// `acc += row`.
pub fn add(acc: &mut [f32], row: &[f32]) {
    for (a, r) in acc.iter_mut().zip(row) {
        *a += r;
    }
}

/// Softmax of `scale * scores` in place, `mask` added first (0 for a real position, `-inf`
/// for padding, see [`mask_bias`]): padding gets weight 0, and a row without any real
/// position is all zeros (the candle model's masked softmax: an additive -1e9 underflows to
/// exactly 0 after the exponential). `scale` must be positive (attention's
/// `1 / sqrt(head width)`, folded into the pass that subtracts the max). Every pass runs eight
/// lanes at a time.
pub fn masked_softmax(scores: &mut [f32], mask: &[f32], scale: f32) {
    add(scores, mask);
    let max = lanes(scores, f32::NEG_INFINITY, f32x8::max, f32::max);
    if max == f32::NEG_INFINITY {
        scores.fill(0.0);
        return;
    }
    for s in scores.iter_mut() {
        *s = (*s - max) * scale;
    }
    exp_in_place(scores);
    let inv = 1.0 / sum(scores);
    for s in scores.iter_mut() {
        *s *= inv;
    }
}

/// The additive mask of [`masked_softmax`]: 0 where `valid`, `-inf` elsewhere.
pub fn mask_bias(valid: impl IntoIterator<Item = bool>) -> Vec<f32> {
    valid
        .into_iter()
        .map(|v| if v { 0.0 } else { f32::NEG_INFINITY })
        .collect()
}

/// The sum of `x`, eight lanes at a time.
fn sum(x: &[f32]) -> f32 {
    lanes(x, 0.0, |a, b| a + b, |a, b| a + b)
}

/// The sum of `f` over `x`, eight lanes at a time (`wide_f` and `f` the same function).
fn lanes_of(x: &[f32], wide_f: impl Fn(f32x8) -> f32x8, f: impl Fn(f32) -> f32) -> f32 {
    let mut chunks = x.chunks_exact(8);
    let mut acc = f32x8::ZERO;
    for c in &mut chunks {
        acc += wide_f(f32x8::from(<[f32; 8]>::try_from(c).expect("chunks of 8")));
    }
    acc.reduce_add() + chunks.remainder().iter().map(|&v| f(v)).sum::<f32>()
}

/// A reduction of `x` (max, sum) eight lanes at a time, then across the lanes and the tail.
fn lanes(
    x: &[f32],
    init: f32,
    wide_op: impl Fn(f32x8, f32x8) -> f32x8,
    op: impl Fn(f32, f32) -> f32,
) -> f32 {
    let mut chunks = x.chunks_exact(8);
    let mut acc = f32x8::splat(init);
    for c in &mut chunks {
        acc = wide_op(
            acc,
            f32x8::from(<[f32; 8]>::try_from(c).expect("chunks of 8")),
        );
    }
    let lanes = acc.to_array().into_iter().fold(init, &op);
    chunks.remainder().iter().fold(lanes, |a, &b| op(a, b))
}

/// `e^x` of every element, eight at a time (`wide`'s polynomial, within a few ulp of
/// `f32::exp`; `-inf` gives 0). The exponentials are most of a softmax's time.
pub fn exp_in_place(x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = f32x8::from(<[f32; 8]>::try_from(&*c).expect("chunks of 8"));
        c.copy_from_slice(&v.exp().to_array());
    }
    for v in chunks.into_remainder() {
        *v = v.exp();
    }
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        (0..m * n)
            .map(|x| (0..k).map(|j| a[(x / n) * k + j] * b[j * n + x % n]).sum())
            .collect()
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4)
    }

    #[test]
    fn products_over_views_equal_the_definition() {
        let (m, k, n) = (7, 5, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let mut got = vec![0.0; m * n];
        matmul(
            &mut got,
            n,
            View::rows(&a, m, k),
            View::rows(&b, k, n),
            false,
        );
        assert!(close(&got, &want));
        // b stored transposed (a weight `[out, in]`), read through a transposed view.
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let mut acc = vec![1.0; m * n];
        matmul(
            &mut acc,
            n,
            View::rows(&a, m, k),
            View::rows(&bt, n, k).t(),
            true,
        );
        let plus_one: Vec<f32> = want.iter().map(|x| x + 1.0).collect();
        assert!(close(&acc, &plus_one));
        // Columns 2..4 of rows 6 wide, into columns 1..4 of rows 5 wide.
        let wide: Vec<f32> = (0..m * 6).map(|i| i as f32 * 0.01).collect();
        let narrow: Vec<f32> = (0..m * 2).map(|i| wide[(i / 2) * 6 + 2 + i % 2]).collect();
        let mut out = vec![0.0; m * 5];
        let b2: Vec<f32> = b[..2 * n].to_vec();
        matmul(
            &mut out[1..],
            5,
            View::columns(&wide, m, 6, 2, 2),
            View::rows(&b2, 2, n),
            false,
        );
        let want2 = naive(&narrow, &b2, m, 2, n);
        let got2: Vec<f32> = (0..m * n).map(|i| out[(i / n) * 5 + 1 + i % n]).collect();
        assert!(close(&got2, &want2));
        // The same product over packed copies of the strided operands.
        let (mut pa, mut pb) = (Vec::new(), Vec::new());
        let a2 = pack(&mut pa, View::columns(&wide, m, 6, 2, 2));
        let b3 = pack(&mut pb, View::rows(&b2, 2, n).t().t());
        let mut packed = vec![0.0; m * n];
        matmul(&mut packed, n, a2, b3, false);
        assert!(close(&packed, &want2));
    }

    #[test]
    fn a_long_row_softmax_equals_the_definition() {
        let raw: Vec<f32> = (0..37).map(|i| (i as f32 * 0.7).sin() * 3.0).collect();
        let valid: Vec<bool> = (0..37).map(|i| i % 5 != 3).collect();
        let mut got = raw.clone();
        masked_softmax(&mut got, &mask_bias(valid.iter().copied()), 0.25);
        let e: Vec<f32> = raw.iter().map(|x| (x * 0.25).exp()).collect();
        let z: f32 = e
            .iter()
            .zip(&valid)
            .filter(|(_, &v)| v)
            .map(|(x, _)| x)
            .sum();
        let want: Vec<f32> = e
            .iter()
            .zip(&valid)
            .map(|(x, &v)| if v { x / z } else { 0.0 })
            .collect();
        assert!(close(&got, &want), "{got:?} vs {want:?}");
    }

    #[test]
    fn vector_exponentials_match_the_scalar_ones() {
        let xs: Vec<f32> = (0..203).map(|i| -60.0 + i as f32 * 0.37).collect();
        let mut got = xs.clone();
        got.push(f32::NEG_INFINITY);
        exp_in_place(&mut got);
        for (x, g) in xs.iter().zip(&got) {
            let want = x.exp();
            assert!(
                (g - want).abs() <= 4.0 * f32::EPSILON * want,
                "{x}: {g} vs {want}"
            );
        }
        assert_eq!(got[203], 0.0);
    }

    #[test]
    fn layer_norm_centres_and_scales() {
        let mut x = vec![1.0, 2.0, 3.0, 6.0];
        layer_norm(&mut x, &[1.0; 4], &[0.5; 4]);
        let mean: f32 = x.iter().sum::<f32>() / 4.0;
        let var: f32 = x.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 4.0;
        assert!(
            (mean - 0.5).abs() < 1e-6 && (var - 1.0).abs() < 1e-4,
            "{mean} {var}"
        );
    }

    #[test]
    fn masked_softmax_ignores_padding_and_zeroes_empty_rows() {
        let mut s = vec![1.0, 5.0, 2.0];
        masked_softmax(&mut s, &mask_bias([true, false, true]), 1.0);
        let e = 1f32.exp() + 2f32.exp();
        assert!(close(&s, &[1f32.exp() / e, 0.0, 2f32.exp() / e]));
        let mut none = vec![3.0, 4.0];
        masked_softmax(&mut none, &mask_bias([false, false]), 1.0);
        assert_eq!(none, vec![0.0, 0.0]);
        let mut scaled = vec![2.0, 4.0];
        masked_softmax(&mut scaled, &[0.0, 0.0], 0.5);
        let e = 1f32.exp() + 2f32.exp();
        assert!(close(&scaled, &[1f32.exp() / e, 2f32.exp() / e]));
        let mut r = vec![-1.0, 2.0];
        bias_act(&mut r, &[0.5, 0.5], true);
        assert_eq!(r, vec![0.0, 2.5]);
    }
}
