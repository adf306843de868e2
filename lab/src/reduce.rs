//! Item embeddings reduced as in MUSE's reference data: projected onto their first principal
//! components and stored as int8 (the public Taobao-MM release ships 128-d int8 vectors). Used
//! by `siren import movielens --reduce-dim`, so that a MovieLens comparison with the reference
//! code can feed every model the same kind of embedding.

use nalgebra::{DMatrix, SymmetricEigen};

use crate::error::{LabError, Result};

/// Projects `rows` (row-major, `dim` wide) onto their first `out_dim` principal components and
/// rounds each projected row to int8 with its own scale (largest magnitude to 127), returning
/// the dequantised values, row-major and `out_dim` wide.
///
/// The components are the eigenvectors of the covariance of the centred rows, largest
/// eigenvalue first, each signed so that its largest-magnitude coordinate is positive (an
/// eigenvector's sign is arbitrary; fixing it makes the output reproducible).
pub fn pca_int8(rows: &[f32], dim: usize, out_dim: usize) -> Result<Vec<f32>> {
    if dim == 0 || !rows.len().is_multiple_of(dim) {
        return Err(LabError::InvalidArgument(format!(
            "{} values are not rows of {dim}",
            rows.len()
        )));
    }
    if out_dim == 0 || out_dim > dim {
        return Err(LabError::InvalidArgument(format!(
            "cannot reduce {dim}-d embeddings to {out_dim} dimensions (1 to {dim})"
        )));
    }
    let n = rows.len() / dim;
    if n < 2 {
        return Err(LabError::InvalidArgument(
            "principal components need at least two embeddings".into(),
        ));
    }
    let x = centred(rows, dim, n);
    let components = top_components(&x, out_dim);
    let projected = (&x * &components).map(|v| v as f32);
    // nalgebra stores column-major; the transpose's columns are the projected rows.
    Ok(projected
        .transpose()
        .as_slice()
        .chunks(out_dim)
        .flat_map(int8_round_trip)
        .collect())
}

/// The rows as an n × dim matrix minus their mean.
fn centred(rows: &[f32], dim: usize, n: usize) -> DMatrix<f64> {
    let mut x = DMatrix::from_row_iterator(n, dim, rows.iter().map(|&v| f64::from(v)));
    let mean = x.row_mean();
    for mut r in x.row_iter_mut() {
        r -= &mean;
    }
    x
}

/// The `k` leading eigenvectors of `x`'s covariance as the columns of a dim × k matrix.
fn top_components(x: &DMatrix<f64>, k: usize) -> DMatrix<f64> {
    let cov = x.transpose() * x / (x.nrows() as f64 - 1.0);
    let eig = SymmetricEigen::new(cov);
    let mut order: Vec<usize> = (0..eig.eigenvalues.len()).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
    let mut out = DMatrix::zeros(x.ncols(), k);
    for (j, &c) in order.iter().take(k).enumerate() {
        let v = eig.eigenvectors.column(c);
        let lead = v
            .iter()
            .copied()
            .fold(0.0f64, |m, e| if e.abs() > m.abs() { e } else { m });
        let sign = if lead < 0.0 { -1.0 } else { 1.0 };
        out.set_column(j, &(v * sign));
    }
    out
}

/// `v` rounded to int8 steps of its own scale (largest magnitude to 127), as floats.
pub fn int8_round_trip(v: &[f32]) -> Vec<f32> {
    let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if max == 0.0 {
        return v.to_vec();
    }
    let scale = max / 127.0;
    v.iter()
        .map(|x| (x / scale).round().clamp(-127.0, 127.0) * scale)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points on a plane inside 6-d space, with a little noise along one further direction.
    fn plane(n: usize) -> Vec<f32> {
        let (a, b, c) = (
            [0.6f32, 0.0, 0.8, 0.0, 0.0, 0.0],
            [0.0f32, 1.0, 0.0, 0.0, 0.0, 0.0],
            [0.0f32, 0.0, 0.0, 0.0, 1.0, 0.0],
        );
        (0..n)
            .flat_map(|i| {
                let (s, t) = ((i as f32 * 0.37).sin() * 3.0, (i as f32 * 0.71).cos() * 2.0);
                let e = ((i * 7919) % 13) as f32 / 13.0 * 0.01;
                (0..6).map(move |d| 1.0 + s * a[d] + t * b[d] + e * c[d])
            })
            .collect()
    }

    fn dist(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f32>()
            .sqrt()
    }

    #[test]
    fn two_components_keep_the_distances_of_points_on_a_plane() {
        let rows = plane(200);
        let out = pca_int8(&rows, 6, 2).unwrap();
        assert_eq!(out.len(), 400);
        for (i, j) in [(0, 1), (3, 150), (17, 99), (42, 43)] {
            let before = dist(&rows[i * 6..i * 6 + 6], &rows[j * 6..j * 6 + 6]);
            let after = dist(&out[i * 2..i * 2 + 2], &out[j * 2..j * 2 + 2]);
            // The dropped direction holds at most 0.01; int8 steps are at most 1/254 of a
            // coordinate's range per row.
            assert!(
                (before - after).abs() < 0.05,
                "{i},{j}: {before} vs {after}"
            );
        }
    }

    #[test]
    fn the_first_component_carries_the_most_variance() {
        let out = pca_int8(&plane(200), 6, 3).unwrap();
        let var = |c: usize| out.chunks(3).map(|r| r[c] * r[c]).sum::<f32>();
        assert!(var(0) >= var(1) && var(1) > var(2) * 100.0);
    }

    #[test]
    fn the_output_is_reproducible() {
        let rows = plane(50);
        assert_eq!(
            pca_int8(&rows, 6, 2).unwrap(),
            pca_int8(&rows, 6, 2).unwrap()
        );
    }

    #[test]
    fn values_are_int8_steps_of_the_row_scale() {
        let v = [0.5f32, -1.27, 0.003, 0.0];
        let q = int8_round_trip(&v);
        let scale = 1.27 / 127.0;
        for x in &q {
            let steps = x / scale;
            assert!((steps - steps.round()).abs() < 1e-3 && steps.abs() <= 127.0 + 1e-3);
        }
        assert_eq!(q[1], -1.27);
        assert_eq!(int8_round_trip(&[0.0, 0.0]), vec![0.0, 0.0]);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let rows = plane(10);
        assert!(pca_int8(&rows, 6, 0).is_err());
        assert!(pca_int8(&rows, 6, 7).is_err());
        assert!(pca_int8(&rows[..7], 6, 2).is_err());
        assert!(pca_int8(&rows[..6], 6, 2).is_err());
        assert!(pca_int8(&[], 0, 1).is_err());
    }
}
