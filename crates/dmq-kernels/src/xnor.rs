//! XNOR-popcount GEMM for binary × binary bitplanes (W1A1):
//! `C[m, n] = Σ_k s_a[m, k]·s_w[n, k] = K − 2·popcount(a[m] XOR w[n])` with signs stored as
//! bits (1 = +1, 0 = −1, sign(0) = +1 as in `dmq-quant`).
//!
//! Rows are padded to a multiple of 512 bits with zeros in both operands; padded bits XOR to
//! 0 and are not counted, and the formula uses the true K.
//!
//! Paths ([`PopcntIsa`]): AVX-512 VPOPCNTDQ (XOR + `vpopcntq` on 8 words per instruction),
//! scalar `popcnt`, and portable `u64::count_ones`; all with 4 × 4 register tiles.
//! [`gemm_xnor_i32_ref`] is the literal `Σ ±1` loop.
//!
//! Only binary activations use this kernel; binary weights with 4- or 8-bit activations
//! (BinaryDM's W1A4) use sign application ([`crate::binary`]).

use std::ops::Range;

use dmq_quant::{Granularity, QuantizedTensor};

use crate::detect::PopcntIsa;
use crate::error::{KernelError, Result, shape_err};
use crate::kernel::split_rows;
use crate::parallel::{OutView, available_threads, for_each_part, threads_for};

/// Words per 512-bit chunk.
const CHUNK: usize = 8;
/// Output channels per register tile (weights are padded to a multiple of it).
const NR: usize = 4;
/// Largest rows per register tile.
const MR: usize = 4;
/// Default bit operations per thread below which no extra thread is started.
pub const PAR_MIN_BITOPS: usize = 1 << 26;

fn words_for(k: usize) -> usize {
    k.div_ceil(64).div_ceil(CHUNK) * CHUNK
}

/// Packs sign rows (`true` = +1) into `[rows, words_for(k)]` u64 bitplanes.
fn pack_rows(
    signs: impl Fn(usize, usize) -> bool,
    rows: usize,
    padded_rows: usize,
    k: usize,
) -> Vec<u64> {
    let kw = words_for(k);
    let mut bits = vec![0u64; padded_rows * kw];
    for r in 0..rows {
        for kk in 0..k {
            if signs(r, kk) {
                bits[r * kw + kk / 64] |= 1 << (kk % 64);
            }
        }
    }
    bits
}

/// Binary weights as sign bitplanes with a scale σ per output channel (`w = σ[n]·s[n, k]`).
///
/// # Shapes
/// - bits: `[N_p, K_w]` (`N_p` = N rounded up to 4, `K_w` = words of K rounded up to 8)
#[derive(Clone, Debug, PartialEq)]
pub struct XnorWeights {
    n: usize,
    k: usize,
    kw: usize,
    bits: Vec<u64>,
    sigma: Vec<f32>,
}

impl XnorWeights {
    /// From signs `[N, K]` (`true` = +1) and σ `[N]`.
    pub fn from_signs(signs: &[bool], n: usize, k: usize, sigma: Vec<f32>) -> Result<Self> {
        const CTX: &str = "XnorWeights::from_signs";
        if n == 0 || k == 0 || signs.len() != n * k || sigma.len() != n {
            return Err(shape_err(
                format!("N, K ≥ 1, {} signs and {n} scales", n * k),
                format!(
                    "N = {n}, K = {k}, {} signs, {} scales",
                    signs.len(),
                    sigma.len()
                ),
                CTX,
            ));
        }
        if let Some(i) = sigma.iter().position(|s| !s.is_finite()) {
            return Err(KernelError::InvalidParam {
                reason: format!("σ = {} at index {i}", sigma[i]),
                context: CTX.into(),
            });
        }
        let np = n.div_ceil(NR) * NR;
        Ok(Self {
            n,
            k,
            kw: words_for(k),
            bits: pack_rows(|r, kk| signs[r * k + kk], n, np, k),
            sigma,
        })
    }

    /// From a 1-bit `dmq-quant` export (`σ·(2c − 1)`: Δ = 2σ, z − q_min = ½), per tensor or
    /// per output channel; conv weights are flattened to `[C_out, C_in·kh·kw]`.
    pub fn from_quantized(qt: &QuantizedTensor) -> Result<Self> {
        const CTX: &str = "XnorWeights::from_quantized";
        let spec = qt.params.spec;
        if spec.int_bits() != Some(1) {
            return Err(KernelError::UnsupportedBits {
                bits: spec.cost_bits(),
                supported: "1".into(),
                context: CTX.into(),
            });
        }
        if qt.shape.len() < 2 {
            return Err(shape_err(
                "a weight of rank ≥ 2",
                format!("{:?}", qt.shape),
                CTX,
            ));
        }
        qt.params.validate(CTX)?;
        let n = qt.shape[0];
        let k: usize = qt.shape[1..].iter().product();
        let per_channel = match spec.granularity() {
            Granularity::PerTensor => false,
            Granularity::PerChannel { axis: 0 } => true,
            other => {
                return Err(KernelError::UnsupportedSpec {
                    reason: format!(
                        "granularity {other:?} (need per-tensor or per-channel on axis 0)"
                    ),
                    context: CTX.into(),
                });
            }
        };
        if qt.params.delta.len() != spec.num_params(&qt.shape)? {
            return Err(shape_err(
                "one Δ per parameter group",
                qt.params.delta.len().to_string(),
                CTX,
            ));
        }
        let (qmin, _) = spec.int_range().unwrap_or((0, 0));
        let mut sigma = Vec::with_capacity(n);
        for row in 0..n {
            let p = if per_channel { row } else { 0 };
            if qt.params.zero[p] - qmin as f32 != 0.5 {
                return Err(KernelError::UnsupportedSpec {
                    reason: format!(
                        "channel {row} has code-space zero point {} (XNOR needs ±σ weights, \
                         z − q_min = ½; use sign application for other 1-bit grids)",
                        qt.params.zero[p] - qmin as f32
                    ),
                    context: CTX.into(),
                });
            }
            sigma.push(qt.params.delta[p] / 2.0);
        }
        let codes = qt.codes()?;
        let signs: Vec<bool> = codes.iter().map(|&c| c != 0).collect();
        Self::from_signs(&signs, n, k, sigma)
    }

    /// Output channels N.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Reduction length K.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Scales σ, `[N]`.
    pub fn sigma(&self) -> &[f32] {
        &self.sigma
    }

    /// Bytes of the bitplanes plus scales.
    pub fn storage_bytes(&self) -> usize {
        8 * self.bits.len() + 4 * self.sigma.len()
    }
}

/// Binarized activations: sign bitplanes and a scale β per row (XNOR-Net: β = mean |x|).
#[derive(Clone, Debug, PartialEq)]
pub struct BinaryActs {
    m: usize,
    k: usize,
    kw: usize,
    bits: Vec<u64>,
    /// Scale per row.
    pub beta: Vec<f32>,
}

impl BinaryActs {
    /// From signs `[M, K]` (`true` = +1), β = 1.
    pub fn from_signs(signs: &[bool], m: usize, k: usize) -> Result<Self> {
        if k == 0 || signs.len() != m * k {
            return Err(shape_err(
                format!("{} signs for [{m}, {k}] with K ≥ 1", m * k),
                signs.len().to_string(),
                "BinaryActs::from_signs",
            ));
        }
        Ok(Self {
            m,
            k,
            kw: words_for(k),
            bits: pack_rows(|r, kk| signs[r * k + kk], m, m, k),
            beta: vec![1.0; m],
        })
    }

    /// Rows M.
    pub fn m(&self) -> usize {
        self.m
    }
}

/// Binarizes `x[M, K]`: sign bits (x ≥ 0 → +1) and `β[m] = mean |x[m, :]|`.
pub fn binarize(x: &[f32], m: usize, k: usize) -> Result<BinaryActs> {
    const CTX: &str = "xnor::binarize";
    if k == 0 || x.len() != m * k {
        return Err(shape_err(
            format!("{} values for [{m}, {k}] with K ≥ 1", m * k),
            x.len().to_string(),
            CTX,
        ));
    }
    if let Some(index) = x.iter().position(|v| !v.is_finite()) {
        return Err(KernelError::NonFinite {
            value: x[index],
            index,
            context: CTX.into(),
        });
    }
    let kw = words_for(k);
    let mut bits = vec![0u64; m * kw];
    let mut beta = Vec::with_capacity(m);
    for (row, words) in x.chunks(k).zip(bits.chunks_mut(kw.max(1))) {
        for (word, chunk) in words.iter_mut().zip(row.chunks(64)) {
            *word = chunk
                .iter()
                .enumerate()
                .fold(0u64, |w, (i, &v)| w | (((v >= 0.0) as u64) << i));
        }
        // Eight independent f64 partial sums (vectorizable, deterministic).
        let mut acc = [0f64; 8];
        for c in row.chunks(8) {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += v.abs() as f64;
            }
        }
        beta.push((acc.iter().sum::<f64>() / k as f64) as f32);
    }
    Ok(BinaryActs {
        m,
        k,
        kw,
        bits,
        beta,
    })
}

/// Instruction set and threads of an XNOR GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XnorOptions {
    /// Popcount path.
    pub isa: PopcntIsa,
    /// Most threads to use.
    pub threads: usize,
    /// Bit operations per thread below which fewer threads are used ([`PAR_MIN_BITOPS`]).
    pub min_bitops_per_thread: usize,
}

impl Default for XnorOptions {
    fn default() -> Self {
        Self {
            isa: PopcntIsa::best(),
            threads: available_threads(),
            min_bitops_per_thread: PAR_MIN_BITOPS,
        }
    }
}

/// Popcounts of `rows ≤ MR` activation rows against NR weight rows (portable body).
#[inline(always)]
fn tile_body<const R: usize>(a: &[u64], w: &[u64], kw: usize) -> [[u32; NR]; MR] {
    let mut acc = [[0u32; NR]; MR];
    let a_rows: [&[u64]; R] = std::array::from_fn(|r| &a[r * kw..(r + 1) * kw]);
    let w_rows: [&[u64]; NR] = std::array::from_fn(|c| &w[c * kw..(c + 1) * kw]);
    for i in 0..kw {
        let wv: [u64; NR] = std::array::from_fn(|c| w_rows[c][i]);
        for r in 0..R {
            let av = a_rows[r][i];
            for c in 0..NR {
                acc[r][c] += (av ^ wv[c]).count_ones();
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
fn tile_popcnt<const R: usize>(a: &[u64], w: &[u64], kw: usize) -> [[u32; NR]; MR] {
    tile_body::<R>(a, w, kw)
}

/// # Safety
/// AVX-512 F and VPOPCNTDQ available; `a` readable for `R·kw` words, `w` for `NR·kw`,
/// `kw` a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vpopcntdq")]
unsafe fn tile_vpopcnt<const R: usize>(a: *const u64, w: *const u64, kw: usize) -> [[u32; NR]; MR] {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_si512(); NR]; R];
    let mut wv = [_mm512_setzero_si512(); NR];
    let mut i = 0;
    while i < kw {
        for c in 0..NR {
            // SAFETY: words i..i + 8 of weight row c lie within its readable `kw` words.
            wv[c] = unsafe { _mm512_loadu_si512(w.add(c * kw + i) as *const __m512i) };
        }
        for r in 0..R {
            // SAFETY: as above, for activation row r.
            let av = unsafe { _mm512_loadu_si512(a.add(r * kw + i) as *const __m512i) };
            for c in 0..NR {
                let x = _mm512_popcnt_epi64(_mm512_xor_si512(av, wv[c]));
                acc[r][c] = _mm512_add_epi64(acc[r][c], x);
            }
        }
        i += CHUNK;
    }
    let mut out = [[0u32; NR]; MR];
    for r in 0..R {
        for c in 0..NR {
            out[r][c] = _mm512_reduce_add_epi64(acc[r][c]) as u32;
        }
    }
    out
}

fn tile(isa: PopcntIsa, rows: usize, a: &[u64], w: &[u64], kw: usize) -> [[u32; NR]; MR] {
    assert!(rows <= MR && a.len() >= rows * kw && w.len() >= NR * kw && kw.is_multiple_of(CHUNK));
    macro_rules! by_rows {
        ($f:ident, $a:expr, $w:expr) => {
            match rows {
                4 => $f::<4>($a, $w, kw),
                3 => $f::<3>($a, $w, kw),
                2 => $f::<2>($a, $w, kw),
                _ => $f::<1>($a, $w, kw),
            }
        };
    }
    match isa {
        PopcntIsa::Portable => by_rows!(tile_body, a, w),
        #[cfg(target_arch = "x86_64")]
        PopcntIsa::Popcnt => {
            assert!(isa.is_available());
            // SAFETY: `popcnt` availability asserted above.
            unsafe { by_rows!(tile_popcnt, a, w) }
        }
        #[cfg(target_arch = "x86_64")]
        PopcntIsa::Avx512Vpopcntdq => {
            assert!(isa.is_available());
            // SAFETY: features asserted above; bounds asserted at the top.
            unsafe { by_rows!(tile_vpopcnt, a.as_ptr(), w.as_ptr()) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => by_rows!(tile_body, a, w),
    }
}

/// `C[M, N] = K − 2·popcount(a[m] XOR w[n])` (= `Σ_k s_a·s_w`).
pub fn gemm_xnor_i32(a: &BinaryActs, w: &XnorWeights, opts: &XnorOptions) -> Result<Vec<i32>> {
    if a.k != w.k {
        return Err(shape_err(
            format!("activations with K = {}", w.k),
            format!("K = {}", a.k),
            "xnor::gemm_xnor_i32",
        ));
    }
    let isa = opts.isa.check()?;
    let (m, n, k, kw) = (a.m, w.n, w.k, w.kw);
    let threads = threads_for(m * n * k, opts.min_bitops_per_thread, opts.threads);
    let part = |rows: Range<usize>, cols: Range<usize>, view: &mut OutView<'_, i32>| {
        let mut c0 = cols.start;
        while c0 < cols.end {
            let wt = &w.bits[c0 * kw..(c0 + NR) * kw];
            split_rows(rows.len(), &[4, 2, 1], |r0, rr| {
                let m0 = rows.start + r0;
                let at = &a.bits[m0 * kw..(m0 + rr) * kw];
                let pop = tile(isa, rr, at, wt, kw);
                for r in 0..rr {
                    for c in 0..NR.min(cols.end - c0) {
                        *view.at(m0 + r, c0 + c) = k as i32 - 2 * pop[r][c] as i32;
                    }
                }
            });
            c0 += NR;
        }
    };
    Ok(for_each_part(m, n, threads, MR, NR, &part))
}

/// Scalar reference: the literal `Σ_k s_a[m, k]·s_w[n, k]` with `s = ±1`.
pub fn gemm_xnor_i32_ref(a: &[bool], w: &[bool], m: usize, n: usize, k: usize) -> Vec<i32> {
    let s = |b: bool| if b { 1i32 } else { -1 };
    let mut c = vec![0i32; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|kk| s(a[i * k + kk]) * s(w[j * k + kk])).sum();
        }
    }
    c
}

fn check_bias(bias: Option<&[f32]>, n: usize) -> Result<()> {
    match bias {
        Some(b) if b.len() != n => Err(shape_err(
            format!("bias of {n} values"),
            b.len().to_string(),
            "xnor bias",
        )),
        _ => Ok(()),
    }
}

/// The f32 output of one element (shared by the optimized and reference paths).
#[inline]
fn out_value(acc: i32, beta: f32, sigma: f32, bias: f32) -> f32 {
    (beta * sigma) * acc as f32 + bias
}

/// f32 W1A1 GEMM: binarize `x[M, K]` (β per row), XNOR-popcount, `y = β[m]·σ[n]·C + bias`.
pub fn gemm_f32_out(x: &[f32], w: &XnorWeights, bias: Option<&[f32]>) -> Result<Vec<f32>> {
    gemm_f32_out_with(x, w, bias, &XnorOptions::default())
}

/// [`gemm_f32_out`] with explicit options.
pub fn gemm_f32_out_with(
    x: &[f32],
    w: &XnorWeights,
    bias: Option<&[f32]>,
    opts: &XnorOptions,
) -> Result<Vec<f32>> {
    if !x.len().is_multiple_of(w.k) {
        return Err(shape_err(
            format!("a multiple of K = {} values", w.k),
            x.len().to_string(),
            "xnor::gemm_f32_out",
        ));
    }
    check_bias(bias, w.n)?;
    let m = x.len() / w.k;
    let a = binarize(x, m, w.k)?;
    let c = gemm_xnor_i32(&a, w, opts)?;
    Ok(scale_rows(&c, &a.beta, &w.sigma, bias))
}

/// `y[m, n] = β[m]·σ[n]·C[m, n] + bias[n]` (row by row, no per-element division).
fn scale_rows(c: &[i32], beta: &[f32], sigma: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let n = sigma.len();
    let mut y = Vec::with_capacity(c.len());
    for (row, &b) in c.chunks(n.max(1)).zip(beta) {
        for (j, &acc) in row.iter().enumerate() {
            y.push(out_value(acc, b, sigma[j], bias.map_or(0.0, |bb| bb[j])));
        }
    }
    y
}

/// Scalar reference of [`gemm_f32_out`] from signs `[N, K]` and σ `[N]`.
pub fn gemm_f32_out_ref(
    x: &[f32],
    w_signs: &[bool],
    sigma: &[f32],
    n: usize,
    k: usize,
    bias: Option<&[f32]>,
) -> Result<Vec<f32>> {
    check_bias(bias, n)?;
    if k == 0 || !x.len().is_multiple_of(k) || w_signs.len() != n * k || sigma.len() != n {
        return Err(shape_err(
            "x [M, K], signs [N, K], σ [N]",
            format!(
                "{} values, {} signs, {} scales",
                x.len(),
                w_signs.len(),
                sigma.len()
            ),
            "xnor::gemm_f32_out_ref",
        ));
    }
    let m = x.len() / k;
    let a = binarize(x, m, k)?;
    let signs: Vec<bool> = x.iter().map(|&v| v >= 0.0).collect();
    let c = gemm_xnor_i32_ref(&signs, w_signs, m, n, k);
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            y[i * n + j] = out_value(
                c[i * n + j],
                a.beta[i],
                sigma[j],
                bias.map_or(0.0, |b| b[j]),
            );
        }
    }
    Ok(y)
}
