//! SVDQuant's low-rank branch beside a low-bit GEMM: `y[M, N] += (x[M, K]·L2ᵀ)·L1ᵀ` with
//! `L2 [r, K]`, `L1 [N, r]` (docs/algorithms.md §11.2).
//!
//! The branch reads the same f32 input the quantization pass of the main GEMM reads, and adds
//! into the main GEMM's f32 output, so the input is read once per layer call and the output
//! written once. Per row: `t = L2·x` (r dot products over K contiguous values), then
//! `y += Σ_j t_j·L1ᵀ[j, :]` (r axpys over N contiguous values); both vectorize. The factors
//! are f16 values (the file stores them at 16 bits) held as f32. Rows are spread over
//! threads.

use crate::error::{KernelError, Result, shape_err};

/// A rank-r branch, `L1·L2`, for `[M, K]` inputs and `[M, N]` outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct LowRankBranch {
    rank: usize,
    k: usize,
    n: usize,
    /// L2 `[r, K]`.
    down: Vec<f32>,
    /// L1ᵀ `[r, N]` (transposed once so the axpys run over contiguous outputs).
    up_t: Vec<f32>,
}

impl LowRankBranch {
    /// From L2 `down [r, K]` and L1 `up [N, r]`, row-major.
    ///
    /// # Errors
    /// Lengths that are not `r·K` and `N·r`, a zero rank, or a non-finite factor.
    pub fn new(down: &[f32], up: &[f32], rank: usize, k: usize, n: usize) -> Result<Self> {
        const CTX: &str = "LowRankBranch::new";
        if rank == 0 || down.len() != rank * k || up.len() != n * rank {
            return Err(shape_err(
                format!("rank ≥ 1, down [{rank}, {k}] and up [{n}, {rank}]"),
                format!("rank {rank}, {} and {} values", down.len(), up.len()),
                CTX,
            ));
        }
        if let Some((index, &value)) = down
            .iter()
            .chain(up)
            .enumerate()
            .find(|(_, v)| !v.is_finite())
        {
            return Err(KernelError::NonFinite {
                value,
                index,
                context: CTX.into(),
            });
        }
        let mut up_t = vec![0f32; rank * n];
        for o in 0..n {
            for j in 0..rank {
                up_t[j * n + o] = up[o * rank + j];
            }
        }
        Ok(Self {
            rank,
            k,
            n,
            down: down.to_vec(),
            up_t,
        })
    }

    /// Rank r.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Input length K.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The branch of a `kh×kw` convolution with its L2 columns reordered from the weight's
    /// `(c, kh, kw)` order to the `(kh, kw, c)` order of NHWC im2col rows
    /// ([`crate::conv::im2col_dynamic_hwc`]).
    ///
    /// # Errors
    /// `c·kh·kw` is not the branch's input length.
    pub fn for_hwc_conv(&self, c: usize, kh: usize, kw: usize) -> Result<Self> {
        if c * kh * kw != self.k {
            return Err(shape_err(
                format!("C·kh·kw = {}", self.k),
                format!("{c}·{kh}·{kw}"),
                "LowRankBranch::for_hwc_conv",
            ));
        }
        let mut down = vec![0f32; self.down.len()];
        for j in 0..self.rank {
            for ci in 0..c {
                for i in 0..kh {
                    for jj in 0..kw {
                        down[j * self.k + (i * kw + jj) * c + ci] =
                            self.down[j * self.k + (ci * kh + i) * kw + jj];
                    }
                }
            }
        }
        Ok(Self {
            down,
            ..self.clone()
        })
    }

    /// The down projection of a few rows: `t[i, :] = L2·x[i, :]` for `x [rows, K]`,
    /// `t [rows, r]` (the first half of [`apply_add`](Self::apply_add), for callers that
    /// hold the rows only briefly).
    pub fn down_rows(&self, x: &[f32], t: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            let f = crate::detect::cpu_features();
            if f.avx2 && f.fma {
                // SAFETY: AVX2 and FMA detected.
                return unsafe { self.down_rows_fma(x, t) };
            }
        }
        self.down_rows_body(x, t, dot)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn down_rows_fma(&self, x: &[f32], t: &mut [f32]) {
        self.down_rows_body(x, t, dot_fma)
    }

    /// Blocks of [`ROW_BLOCK`] rows: each row of L2 is read once per block.
    #[inline(always)]
    fn down_rows_body(&self, x: &[f32], t: &mut [f32], dot: impl Fn(&[f32], &[f32]) -> f32) {
        let (k, r) = (self.k, self.rank);
        for (xb, tb) in x.chunks(ROW_BLOCK * k).zip(t.chunks_mut(ROW_BLOCK * r)) {
            for (j, dj) in self.down.chunks_exact(k).enumerate() {
                for (i, xr) in xb.chunks_exact(k).enumerate() {
                    tb[i * r + j] = dot(xr, dj);
                }
            }
        }
    }

    /// The up projection added into the output: `y[i, :] += L1·t[i, :]` for `t [M, r]`,
    /// `y [M, N]`, rows spread over up to `threads` threads.
    ///
    /// # Errors
    /// `t` not `M·r` long or `y` not `M·N` long.
    pub fn up_add(&self, t: &[f32], m: usize, y: &mut [f32], threads: usize) -> Result<()> {
        let (n, r) = (self.n, self.rank);
        if t.len() != m * r || y.len() != m * n {
            return Err(shape_err(
                format!("t [{m}, {r}] and y [{m}, {n}]"),
                format!("{} and {} values", t.len(), y.len()),
                "LowRankBranch::up_add",
            ));
        }
        let per = m.div_ceil(threads.clamp(1, m.max(1))).max(1);
        let run = |tc: &[f32], yc: &mut [f32]| {
            for (tr, yr) in tc.chunks_exact(r).zip(yc.chunks_exact_mut(n)) {
                for (&tj, uj) in tr.iter().zip(self.up_t.chunks_exact(n)) {
                    for (o, &u) in yr.iter_mut().zip(uj) {
                        *o += tj * u;
                    }
                }
            }
        };
        if threads <= 1 || m <= per {
            run(t, y);
            return Ok(());
        }
        std::thread::scope(|s| {
            for (tc, yc) in t.chunks(per * r).zip(y.chunks_mut(per * n)) {
                s.spawn(move || run(tc, yc));
            }
        });
        Ok(())
    }

    /// Bytes of the factors at 16 bits (as stored).
    pub fn storage_bytes(&self) -> usize {
        2 * (self.down.len() + self.up_t.len())
    }

    /// `y[M, N] += (x[M, K]·L2ᵀ)·L1ᵀ` on up to `threads` threads.
    ///
    /// # Errors
    /// `x` not `M·K` long or `y` not `M·N` long.
    pub fn apply_add(&self, x: &[f32], m: usize, y: &mut [f32], threads: usize) -> Result<()> {
        self.check(x, m, y, "LowRankBranch::apply_add")?;
        let (k, n) = (self.k, self.n);
        let rows_per = m.div_ceil(threads.clamp(1, m.max(1))).max(1);
        if threads <= 1 || m <= rows_per {
            self.rows(x, y);
            return Ok(());
        }
        std::thread::scope(|s| {
            for (xc, yc) in x.chunks(rows_per * k).zip(y.chunks_mut(rows_per * n)) {
                s.spawn(move || self.rows(xc, yc));
            }
        });
        Ok(())
    }

    fn check(&self, x: &[f32], m: usize, y: &[f32], ctx: &str) -> Result<()> {
        if x.len() != m * self.k || y.len() != m * self.n {
            return Err(shape_err(
                format!("x [{m}, {}] and y [{m}, {}]", self.k, self.n),
                format!("{} and {} values", x.len(), y.len()),
                ctx,
            ));
        }
        Ok(())
    }

    /// The rows of `x` into `y`, AVX2-compiled when the CPU has it (the same operations in
    /// the same order, so the same results).
    /// The rows of `x` into `y`: per block of [`ROW_BLOCK`] rows, the down projection
    /// ([`down_rows`](Self::down_rows)) then the r axpys per row.
    fn rows(&self, x: &[f32], y: &mut [f32]) {
        let (k, n, r) = (self.k, self.n, self.rank);
        let mut t = vec![0f32; ROW_BLOCK * r];
        for (xb, yb) in x.chunks(ROW_BLOCK * k).zip(y.chunks_mut(ROW_BLOCK * n)) {
            let rows = xb.len() / k.max(1);
            self.down_rows(xb, &mut t[..rows * r]);
            for (i, yr) in yb.chunks_exact_mut(n).enumerate().take(rows) {
                for (&tj, uj) in t[i * r..(i + 1) * r].iter().zip(self.up_t.chunks_exact(n)) {
                    for (o, &u) in yr.iter_mut().zip(uj) {
                        *o += tj * u;
                    }
                }
            }
        }
    }

    /// Scalar reference of [`apply_add`](Self::apply_add) in f64.
    pub fn apply_add_ref(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
        self.check(x, m, y, "LowRankBranch::apply_add_ref")?;
        for i in 0..m {
            for o in 0..self.n {
                let mut acc = 0f64;
                for j in 0..self.rank {
                    let t: f64 = (0..self.k)
                        .map(|c| {
                            f64::from(x[i * self.k + c]) * f64::from(self.down[j * self.k + c])
                        })
                        .sum();
                    acc += t * f64::from(self.up_t[j * self.n + o]);
                }
                y[i * self.n + o] += acc as f32;
            }
        }
        Ok(())
    }
}

/// Rows per block of [`LowRankBranch::apply_add`].
const ROW_BLOCK: usize = 8;

/// [`dot`] with fused multiply-adds (compiled into FMA code only).
#[inline(always)]
fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s = x.mul_add(*y, s);
    }
    s
}

/// Dot product with eight independent accumulators (vectorizes without fast-math).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::uniform;

    #[test]
    fn matches_the_f64_reference_threaded_or_not() {
        let (m, k, n, r) = (37, 70, 23, 5);
        let x = uniform(m * k, 1);
        let down = uniform(r * k, 2);
        let up = uniform(n * r, 3);
        let b = LowRankBranch::new(&down, &up, r, k, n).unwrap();
        let y0 = uniform(m * n, 4);
        let mut want = y0.clone();
        b.apply_add_ref(&x, m, &mut want).unwrap();
        for threads in [1, 2, 3] {
            let mut got = y0.clone();
            b.apply_add(&x, m, &mut got, threads).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{g} vs {w}");
            }
        }
    }

    /// Closed form: L2 = [1, 1], L1 = [[2], [−1]] → y += [2(x0 + x1), −(x0 + x1)].
    #[test]
    fn rank_one_closed_form() {
        let b = LowRankBranch::new(&[1.0, 1.0], &[2.0, -1.0], 1, 2, 2).unwrap();
        let mut y = vec![10.0, 10.0, 0.0, 0.0];
        b.apply_add(&[1.0, 2.0, -0.5, 0.25], 2, &mut y, 1).unwrap();
        assert_eq!(y, vec![16.0, 7.0, -0.5, 0.25]);
    }

    #[test]
    fn bad_shapes_and_values_are_errors() {
        assert!(LowRankBranch::new(&[1.0; 3], &[1.0; 2], 1, 2, 2).is_err());
        assert!(LowRankBranch::new(&[], &[], 0, 0, 0).is_err());
        assert!(matches!(
            LowRankBranch::new(&[f32::NAN, 1.0], &[1.0, 1.0], 1, 2, 2),
            Err(KernelError::NonFinite { .. })
        ));
        let b = LowRankBranch::new(&[1.0, 1.0], &[2.0, -1.0], 1, 2, 2).unwrap();
        assert!(b.apply_add(&[1.0; 3], 2, &mut [0.0; 4], 1).is_err());
    }
}
