//! The fused forward's dense products over plain `f32` slices, through the `gemm` crate (the
//! kernels candle's CPU matmul uses), and the small element-wise helpers around them. The
//! row kernels (attention, softmax, layer norm) are in [`super::simd`].

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

/// `x += bias`, then ReLU when `relu`.
pub fn bias_act(x: &mut [f32], bias: &[f32], relu: bool) {
    // Two loops, each a select the compiler vectorises (a conditional store is not).
    if relu {
        for (v, b) in x.iter_mut().zip(bias) {
            let y = *v + b;
            *v = if y < 0.0 { 0.0 } else { y };
        }
    } else {
        for (v, b) in x.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// `acc += row`. Inlined, so that the row kernels' AVX builds vectorise it with their
/// instruction set.
#[inline(always)]
pub fn add(acc: &mut [f32], row: &[f32]) {
    for (a, r) in acc.iter_mut().zip(row) {
        *a += r;
    }
}

/// `sum of relu(x + bias) * w` in eight independent lanes (one vector accumulator; a single
/// running sum would be a chain of dependent adds).
pub fn relu_dot(x: &[f32], bias: &[f32], w: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (x8, xt) = x.as_chunks::<8>();
    let ((b8, bt), (w8, wt)) = (bias.as_chunks::<8>(), w.as_chunks::<8>());
    for ((x, b), w) in x8.iter().zip(b8).zip(w8) {
        for l in 0..8 {
            acc[l] += (x[l] + b[l]).max(0.0) * w[l];
        }
    }
    let tail: f32 = xt
        .iter()
        .zip(bt)
        .zip(wt)
        .map(|((x, b), w)| (x + b).max(0.0) * w)
        .sum();
    acc.iter().sum::<f32>() + tail
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
    }

    #[test]
    fn relu_dot_equals_its_definition() {
        for n in [1, 7, 8, 32, 37] {
            let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.23).cos() * 0.5).collect();
            let w: Vec<f32> = (0..n).map(|i| (i as f32 * 0.71).sin()).collect();
            let want: f64 = (0..n)
                .map(|i| f64::from((x[i] + b[i]).max(0.0)) * f64::from(w[i]))
                .sum();
            let got = f64::from(relu_dot(&x, &b, &w));
            assert!((got - want).abs() < 1e-5, "{n}: {got} vs {want}");
        }
    }

    #[test]
    fn bias_and_relu() {
        let mut r = vec![-1.0, 2.0];
        bias_act(&mut r, &[0.5, 0.5], true);
        assert_eq!(r, vec![0.0, 2.5]);
        let mut r = vec![-1.0, 2.0];
        bias_act(&mut r, &[0.5, 0.5], false);
        assert_eq!(r, vec![-0.5, 2.5]);
    }
}
