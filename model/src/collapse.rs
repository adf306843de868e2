//! Embedding collapse: how many directions an embedding table really uses.
//!
//! A table of `rows x d` can span `d` directions; a collapsed one puts nearly all its energy in
//! a few. The measure is the sum of the singular values over the largest one: `d` when all are
//! equal, 1 when the table has rank one. The multi-embedding work that Crocodile builds on
//! reports collapse this way (a normalised sum of singular values).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::models::layers::Params;

/// One table's collapse figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableCollapse {
    /// The parameter's name, `item.weight` or `table1.item.weight`.
    pub table: String,
    pub rows: usize,
    pub dim: usize,
    /// Sum of the singular values over the largest one, in `[1, dim]`.
    pub sum_over_max: f64,
}

/// The ID tables whose collapse the reports follow.
const TABLES: [&str; 3] = ["item.weight", "category.weight", "user.weight"];

/// Collapse of every item, category and user table of a model, by parameter name.
pub fn tables(params: &Params) -> candle_core::Result<Vec<TableCollapse>> {
    params
        .named_tensors()?
        .into_iter()
        .filter(|(n, _)| {
            TABLES
                .iter()
                .any(|t| n.as_str() == *t || n.ends_with(&format!(".{t}")))
        })
        .map(|(name, w): (String, Tensor)| {
            let (rows, dim) = w.dims2()?;
            let values = w.flatten_all()?.to_vec1::<f32>()?;
            Ok(TableCollapse {
                table: name,
                rows,
                dim,
                sum_over_max: sum_over_max(&singular_values(&values, rows, dim)),
            })
        })
        .collect()
}

/// Sum of `s` over its largest value; 0 for an all-zero (or empty) spectrum.
pub fn sum_over_max(s: &[f64]) -> f64 {
    let max = s.iter().cloned().fold(0.0, f64::max);
    if max > 0.0 {
        s.iter().sum::<f64>() / max
    } else {
        0.0
    }
}

/// Singular values of a row-major `rows x cols` matrix, largest first: the square roots of the
/// eigenvalues of its `cols x cols` Gram matrix, found by cyclic Jacobi rotations (exact for
/// symmetric matrices, and `cols` is an embedding width, small).
pub fn singular_values(a: &[f32], rows: usize, cols: usize) -> Vec<f64> {
    assert_eq!(a.len(), rows * cols, "singular_values: shape mismatch");
    let mut g = vec![0.0f64; cols * cols];
    for r in 0..rows {
        let row = &a[r * cols..(r + 1) * cols];
        for i in 0..cols {
            let ri = f64::from(row[i]);
            for j in i..cols {
                g[i * cols + j] += ri * f64::from(row[j]);
            }
        }
    }
    for i in 0..cols {
        for j in 0..i {
            g[i * cols + j] = g[j * cols + i];
        }
    }
    let mut ev = jacobi_eigenvalues(g, cols);
    ev.sort_by(|x, y| y.total_cmp(x));
    ev.into_iter().map(|e| e.max(0.0).sqrt()).collect()
}

/// Eigenvalues of a symmetric `n x n` matrix (row-major), by cyclic Jacobi sweeps until the
/// off-diagonal mass is negligible against the diagonal.
fn jacobi_eigenvalues(mut m: Vec<f64>, n: usize) -> Vec<f64> {
    let at = |i: usize, j: usize| i * n + j;
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[at(i, j)].powi(2))
            .sum();
        let diag: f64 = (0..n).map(|i| m[at(i, i)].powi(2)).sum();
        if off <= 1e-24 * diag.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[at(p, q)];
                if apq == 0.0 {
                    continue;
                }
                // The rotation that zeroes m[p][q] (Golub and Van Loan, symmetric Schur).
                let theta = (m[at(q, q)] - m[at(p, p)]) / (2.0 * apq);
                let sign = if theta >= 0.0 { 1.0 } else { -1.0 };
                let t = sign / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (mkp, mkq) = (m[at(k, p)], m[at(k, q)]);
                    m[at(k, p)] = c * mkp - s * mkq;
                    m[at(k, q)] = s * mkp + c * mkq;
                }
                for k in 0..n {
                    let (mpk, mqk) = (m[at(p, k)], m[at(q, k)]);
                    m[at(p, k)] = c * mpk - s * mqk;
                    m[at(q, k)] = s * mpk + c * mqk;
                }
            }
        }
    }
    (0..n).map(|i| m[at(i, i)]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn singular_values_of_known_matrices() {
        // diag(3, 2, 1) padded with a zero row: singular values 3, 2, 1.
        let a = [3.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0];
        let s = singular_values(&a, 4, 3);
        for (got, want) in s.iter().zip([3.0, 2.0, 1.0]) {
            assert!((got - want).abs() < 1e-9, "{s:?}");
        }
        assert!((sum_over_max(&s) - 2.0).abs() < 1e-9);
        // A rotated rank-one matrix: one non-zero singular value, |u| |v| = 5 * sqrt(2).
        let a = [3.0, 3.0, 4.0, 4.0];
        let s = singular_values(&a, 2, 2);
        assert!(
            (s[0] - 50f64.sqrt()).abs() < 1e-9 && s[1].abs() < 1e-6,
            "{s:?}"
        );
        assert!((sum_over_max(&s) - 1.0).abs() < 1e-6);
        // A dense matrix against the sum of squares (the Frobenius norm is preserved).
        let a: Vec<f32> = (0..40)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let s = singular_values(&a, 8, 5);
        let fro: f64 = a.iter().map(|&x| f64::from(x).powi(2)).sum();
        assert!((s.iter().map(|x| x * x).sum::<f64>() - fro).abs() < 1e-6 * fro);
        assert!(s.windows(2).all(|w| w[0] >= w[1]));
    }
}
