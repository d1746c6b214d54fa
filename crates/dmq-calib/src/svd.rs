//! Truncated SVD of a weight matrix for SVDQuant's low-rank branch: the best rank-r
//! approximation `W ≈ L1·L2` (Eckart–Young), by randomized subspace iteration (Halko,
//! Martinsson & Tropp 2011, Alg. 4.4) in f64.
//!
//! For `W [m, n]` and `k = r + p` (p = 8 oversampling columns):
//! 1. `Q = orth(W·Ω)`, Ω `[n, k]` Gaussian from a fixed seed (deterministic);
//! 2. `q` power iterations `Q ← orth(W·orth(Wᵀ·Q))`, which sharpen the decay of the spectrum;
//! 3. `B = Qᵀ·W [k, n]`; the eigen-decomposition of the small `B·Bᵀ = V·Λ·Vᵀ` (cyclic
//!    Jacobi) gives the singular values `σ_i = √λ_i` and the left vectors `U = Q·V`;
//! 4. the top r: `L1 = U_r·diag(√σ)`, `L2 = diag(1/√σ)·U_rᵀ·W = diag(√σ)·V_rᵀ`, balanced so
//!    that neither factor holds all the magnitude (both are stored at 16 bits).
//!
//! The weights SVDQuant splits are at most a few thousand wide, so a dense eigen-solver of a
//! `k×k` matrix is all that is needed; no LAPACK.

/// Rank-r factors of `W [m, n]`: `up` (L1) `[m, r]` and `down` (L2) `[r, n]`, row-major, and
/// the r leading singular values in decreasing order.
#[derive(Clone, Debug, PartialEq)]
pub struct LowRankFactors {
    /// Rank r.
    pub rank: usize,
    /// L1 `[m, r]`.
    pub up: Vec<f32>,
    /// L2 `[r, n]`.
    pub down: Vec<f32>,
    /// σ_1 ≥ … ≥ σ_r.
    pub singular_values: Vec<f64>,
}

/// SplitMix64 → standard normals (Box–Muller); a fixed seed keeps calibration reproducible.
struct Gaussian(u64);

impl Gaussian {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// Orthonormalizes the k columns of `a [rows, k]` in place (modified Gram–Schmidt, twice for
/// stability); a column that vanishes is left zero.
fn orthonormalize(a: &mut [f64], rows: usize, k: usize) {
    for _pass in 0..2 {
        for j in 0..k {
            for i in 0..j {
                let dot: f64 = (0..rows).map(|r| a[r * k + i] * a[r * k + j]).sum();
                for r in 0..rows {
                    a[r * k + j] -= dot * a[r * k + i];
                }
            }
            let norm = (0..rows).map(|r| a[r * k + j].powi(2)).sum::<f64>().sqrt();
            let inv = if norm > 1e-300 { 1.0 / norm } else { 0.0 };
            for r in 0..rows {
                a[r * k + j] *= inv;
            }
        }
    }
}

/// `W [m, n] · X [n, k]` → `[m, k]`.
fn mul(w: &[f64], m: usize, n: usize, x: &[f64], k: usize) -> Vec<f64> {
    let mut y = vec![0f64; m * k];
    for i in 0..m {
        let yr = &mut y[i * k..(i + 1) * k];
        for (c, &wv) in w[i * n..(i + 1) * n].iter().enumerate() {
            for (o, &xv) in yr.iter_mut().zip(&x[c * k..(c + 1) * k]) {
                *o += wv * xv;
            }
        }
    }
    y
}

/// `Wᵀ [n, m] · Q [m, k]` → `[n, k]`.
fn mul_t(w: &[f64], m: usize, n: usize, q: &[f64], k: usize) -> Vec<f64> {
    let mut y = vec![0f64; n * k];
    for i in 0..m {
        let qr = &q[i * k..(i + 1) * k];
        for (c, &wv) in w[i * n..(i + 1) * n].iter().enumerate() {
            for (o, &qv) in y[c * k..(c + 1) * k].iter_mut().zip(qr) {
                *o += wv * qv;
            }
        }
    }
    y
}

/// The rank-`rank` factors of `w [m, n]` (see the module docs); `rank` is capped at
/// `min(m, n)`. `power_iters` = 2 is plenty for weight spectra.
pub fn truncated_svd(
    w: &[f32],
    m: usize,
    n: usize,
    rank: usize,
    power_iters: usize,
) -> LowRankFactors {
    let rank = rank.min(m).min(n);
    let k = (rank + 8).min(m).min(n);
    let w: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
    let mut g = Gaussian(0x5EED_5EED);
    let omega: Vec<f64> = (0..n * k).map(|_| g.normal()).collect();
    let mut q = mul(&w, m, n, &omega, k);
    orthonormalize(&mut q, m, k);
    for _ in 0..power_iters {
        let mut z = mul_t(&w, m, n, &q, k);
        orthonormalize(&mut z, n, k);
        q = mul(&w, m, n, &z, k);
        orthonormalize(&mut q, m, k);
    }
    // B = Qᵀ·W [k, n], and B·Bᵀ [k, k]
    let mut b = vec![0f64; k * n];
    for i in 0..m {
        for j in 0..k {
            let qij = q[i * k + j];
            if qij != 0.0 {
                for (o, &wv) in b[j * n..(j + 1) * n].iter_mut().zip(&w[i * n..(i + 1) * n]) {
                    *o += qij * wv;
                }
            }
        }
    }
    let mut bbt = vec![0f64; k * k];
    for i in 0..k {
        for j in i..k {
            let d: f64 = b[i * n..(i + 1) * n]
                .iter()
                .zip(&b[j * n..(j + 1) * n])
                .map(|(x, y)| x * y)
                .sum();
            bbt[i * k + j] = d;
            bbt[j * k + i] = d;
        }
    }
    let (lambda, v) = dmq_models::linalg::symmetric_eigen(&bbt, k);
    let sigma: Vec<f64> = lambda
        .iter()
        .take(rank)
        .map(|l| l.max(0.0).sqrt())
        .collect();
    let mut up = vec![0f32; m * rank];
    let mut down = vec![0f32; rank * n];
    for (j, &s) in sigma.iter().enumerate() {
        let root = s.sqrt();
        if root <= 1e-150 {
            continue; // a zero direction: the factors stay zero
        }
        // u_j = Q·v_j; L1[:, j] = u_j·√σ; L2[j, :] = (v_jᵀ·B)/√σ = √σ·(right vector)
        for i in 0..m {
            let u: f64 = (0..k).map(|c| q[i * k + c] * v[c * k + j]).sum();
            up[i * rank + j] = (u * root) as f32;
        }
        for c in 0..n {
            let r: f64 = (0..k).map(|t| v[t * k + j] * b[t * n + c]).sum();
            down[j * n + c] = (r / root) as f32;
        }
    }
    LowRankFactors {
        rank,
        up,
        down,
        singular_values: sigma,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A matrix with known singular values: `W = U·diag(σ)·Vᵀ` with orthonormal U, V.
    fn with_spectrum(m: usize, n: usize, sigma: &[f64]) -> Vec<f32> {
        let k = sigma.len();
        let mut g = Gaussian(42);
        let mut u: Vec<f64> = (0..m * k).map(|_| g.normal()).collect();
        let mut v: Vec<f64> = (0..n * k).map(|_| g.normal()).collect();
        orthonormalize(&mut u, m, k);
        orthonormalize(&mut v, n, k);
        let mut w = vec![0f32; m * n];
        for i in 0..m {
            for c in 0..n {
                let s: f64 = (0..k).map(|j| u[i * k + j] * sigma[j] * v[c * k + j]).sum();
                w[i * n + c] = s as f32;
            }
        }
        w
    }

    fn residual_norm(w: &[f32], f: &LowRankFactors, m: usize, n: usize) -> f64 {
        let mut e = 0f64;
        for i in 0..m {
            for c in 0..n {
                let a: f64 = (0..f.rank)
                    .map(|j| f64::from(f.up[i * f.rank + j]) * f64::from(f.down[j * n + c]))
                    .sum();
                e += (f64::from(w[i * n + c]) - a).powi(2);
            }
        }
        e.sqrt()
    }

    /// Eckart–Young: the rank-r residual has Frobenius norm √(Σ_{i>r} σ_i²), and the
    /// singular values come back in order.
    #[test]
    fn recovers_singular_values_and_the_optimal_residual() {
        let (m, n) = (40, 70);
        let sigma: Vec<f64> = (0..30).map(|i| 10.0 * 0.8f64.powi(i)).collect();
        let w = with_spectrum(m, n, &sigma);
        let r = 6;
        let f = truncated_svd(&w, m, n, r, 2);
        for (got, want) in f.singular_values.iter().zip(&sigma) {
            assert!((got - want).abs() < 1e-4 * want, "σ {got} vs {want}");
        }
        let optimal = sigma[r..].iter().map(|s| s * s).sum::<f64>().sqrt();
        let got = residual_norm(&w, &f, m, n);
        assert!((got - optimal).abs() < 1e-3 * optimal, "{got} vs {optimal}");
    }

    /// A matrix of rank 3 is reproduced exactly by rank 3, and the factors are balanced
    /// (each column of L1 and row of L2 carries √σ).
    #[test]
    fn exact_for_low_rank_matrices_with_balanced_factors() {
        let (m, n) = (12, 9);
        let sigma = [5.0, 2.0, 0.5];
        let w = with_spectrum(m, n, &sigma);
        let f = truncated_svd(&w, m, n, 3, 1);
        assert!(residual_norm(&w, &f, m, n) < 1e-5);
        for j in 0..3 {
            let cu = (0..m)
                .map(|i| f64::from(f.up[i * 3 + j]).powi(2))
                .sum::<f64>()
                .sqrt();
            let rd = (0..n)
                .map(|c| f64::from(f.down[j * n + c]).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!((cu - sigma[j].sqrt()).abs() < 1e-4 && (rd - sigma[j].sqrt()).abs() < 1e-4);
        }
        // rank above min(m, n) is capped; a zero matrix gives zero factors
        assert_eq!(truncated_svd(&w, m, n, 50, 1).rank, 9);
        let z = truncated_svd(&vec![0.0; m * n], m, n, 2, 1);
        assert!(z.up.iter().chain(&z.down).all(|&v| v == 0.0));
    }
}
