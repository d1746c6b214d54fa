//! Fréchet distance between Gaussians fitted to feature sets:
//!
//! ```text
//! FD = |μ₁ − μ₂|² + tr(Σ₁) + tr(Σ₂) − 2·tr((Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2})
//! ```
//!
//! The matrix square roots come from a cyclic Jacobi eigendecomposition in f64 (symmetric
//! PSD matrices; tiny negative eigenvalues from round-off are clamped to 0). With the metric
//! classifier's penultimate features this is our FD (never called FID: no Inception).

use crate::error::DataError;

/// Mean and covariance (unbiased, N − 1) of a feature set.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureStats {
    /// Feature dimension D.
    pub dim: usize,
    /// Number of samples N.
    pub count: usize,
    /// μ, `[D]`.
    pub mean: Vec<f64>,
    /// Σ, `[D, D]` row-major.
    pub cov: Vec<f64>,
}

impl FeatureStats {
    /// Statistics of `n` feature rows of width `dim` (row-major). Needs n ≥ 2 and finite
    /// values.
    pub fn from_rows(rows: &[f32], dim: usize) -> Result<Self, DataError> {
        if dim == 0 || !rows.len().is_multiple_of(dim) || rows.len() / dim < 2 {
            return Err(DataError::Metric(format!(
                "feature statistics need at least 2 rows of width {dim}, got {} values",
                rows.len()
            )));
        }
        if let Some(i) = rows.iter().position(|v| !v.is_finite()) {
            return Err(DataError::Metric(format!(
                "non-finite feature {} at flat index {i}",
                rows[i]
            )));
        }
        let n = rows.len() / dim;
        let mut mean = vec![0.0f64; dim];
        for r in rows.chunks_exact(dim) {
            for (m, &v) in mean.iter_mut().zip(r) {
                *m += v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut cov = vec![0.0f64; dim * dim];
        let mut c = vec![0.0f64; dim];
        for r in rows.chunks_exact(dim) {
            for (ci, (&v, m)) in c.iter_mut().zip(r.iter().zip(&mean)) {
                *ci = v as f64 - m;
            }
            for i in 0..dim {
                let ci = c[i];
                let row = &mut cov[i * dim..(i + 1) * dim];
                for j in i..dim {
                    row[j] += ci * c[j];
                }
            }
        }
        for i in 0..dim {
            for j in i..dim {
                let v = cov[i * dim + j] / (n - 1) as f64;
                cov[i * dim + j] = v;
                cov[j * dim + i] = v;
            }
        }
        Ok(Self {
            dim,
            count: n,
            mean,
            cov,
        })
    }
}

pub use dmq_models::linalg::symmetric_eigen;

/// √A of a symmetric PSD matrix (negative round-off eigenvalues clamped to 0).
pub fn sqrt_psd(a: &[f64], n: usize) -> Vec<f64> {
    let (w, v) = symmetric_eigen(a, n);
    let s: Vec<f64> = w.iter().map(|&x| x.max(0.0).sqrt()).collect();
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = (0..n).map(|k| v[i * n + k] * s[k] * v[j * n + k]).sum();
        }
    }
    out
}

fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            for j in 0..n {
                out[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    out
}

/// Fréchet distance between two fitted Gaussians of the same dimension.
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64, DataError> {
    if a.dim != b.dim {
        return Err(DataError::Metric(format!(
            "feature dimensions differ: {} vs {}",
            a.dim, b.dim
        )));
    }
    let n = a.dim;
    let mu: f64 = a
        .mean
        .iter()
        .zip(&b.mean)
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    let tr = |m: &[f64]| (0..n).map(|i| m[i * n + i]).sum::<f64>();
    let s1 = sqrt_psd(&a.cov, n);
    let mut m = matmul(&matmul(&s1, &b.cov, n), &s1, n);
    // symmetrise round-off before the second square root
    for i in 0..n {
        for j in i + 1..n {
            let v = 0.5 * (m[i * n + j] + m[j * n + i]);
            m[i * n + j] = v;
            m[j * n + i] = v;
        }
    }
    let (w, _) = symmetric_eigen(&m, n);
    let tr_sqrt: f64 = w.iter().map(|&x| x.max(0.0).sqrt()).sum();
    Ok((mu + tr(&a.cov) + tr(&b.cov) - 2.0 * tr_sqrt).max(0.0))
}
