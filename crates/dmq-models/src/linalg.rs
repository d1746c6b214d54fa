//! Small dense linear algebra shared by the metrics (FD's matrix square root), LRM's
//! projections and SVDQuant's truncated SVD: host f64, matrices of at most a few hundred
//! rows, no LAPACK.

/// Eigen-decomposition of a symmetric `n × n` matrix (row-major) by cyclic Jacobi rotations:
/// eigenvalues descending with their unit eigenvectors as columns of the returned row-major
/// matrix. Scalar reference; `n` is at most a few hundred.
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut m = a.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * n + j] * m[i * n + j])
            .sum();
        let scale: f64 = (0..n).map(|i| m[i * n + i] * m[i * n + i]).sum::<f64>();
        if off <= 1e-24 * scale.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (mkp, mkq) = (m[k * n + p], m[k * n + q]);
                    m[k * n + p] = c * mkp - s * mkq;
                    m[k * n + q] = s * mkp + c * mkq;
                }
                for k in 0..n {
                    let (mpk, mqk) = (m[p * n + k], m[q * n + k]);
                    m[p * n + k] = c * mpk - s * mqk;
                    m[q * n + k] = s * mpk + c * mqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| m[j * n + j].total_cmp(&m[i * n + i]));
    let vals = order.iter().map(|&i| m[i * n + i]).collect();
    let mut vecs = vec![0.0; n * n];
    for (col, &i) in order.iter().enumerate() {
        for r in 0..n {
            vecs[r * n + col] = v[r * n + i];
        }
    }
    (vals, vecs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [[2, 1], [1, 2]]: eigenvalues 3 and 1 with eigenvectors (1, 1)/√2 and (1, −1)/√2.
    #[test]
    fn two_by_two_closed_form() {
        let (vals, vecs) = symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2);
        assert!((vals[0] - 3.0).abs() < 1e-12 && (vals[1] - 1.0).abs() < 1e-12);
        let r = std::f64::consts::FRAC_1_SQRT_2;
        assert!((vecs[0].abs() - r).abs() < 1e-12 && (vecs[2].abs() - r).abs() < 1e-12);
        assert!(
            (vecs[0] * vecs[2] - 0.5).abs() < 1e-12,
            "first eigenvector ∥ (1, 1)"
        );
    }
}
