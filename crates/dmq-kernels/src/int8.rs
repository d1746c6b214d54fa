//! int8 × int8 → int32 GEMM: `C[m, n] = Σ_k A[m, k]·W[n, k]`, exact.
//!
//! `A` is `[M, K]` i8 (or u8 with a zero point), `W` is `[N, K]` i8 row-major (PyTorch linear
//! layout), packed once by [`pack_i8`]. The kernels multiply unsigned codes by signed
//! activations, so the weight is stored as the code `c = W + 128 ∈ [0, 255]` and the result
//! is corrected per row: `C = Σ_k A·c − 128·Σ_k A[m, k]` (exact in wrapping i32 because the
//! true `C` fits: `|C| ≤ K·128·128` with `K ≤` [`MAX_K`](crate::layout::MAX_K)).
//!
//! Paths: AVX-512 VNNI (`vpdpbusd`, 64 multiply-adds per instruction), AVX2 (`vpmaddwd` on
//! 16-bit values: exact, unlike `vpmaddubsw`, whose i16 pair sums saturate for 8-bit
//! operands), portable scalar. [`gemm_i8_i32_ref`] is the plain triple loop.
//!
//! 8-bit weights exported by `dmq-quant` (5..=8 bits) are packed by
//! [`PackedWeights::from_quantized`] into the same layout and run through
//! [`crate::gemm_f32_out`] (W8A8).

use crate::act_quant::QuantizedActs;
use crate::error::{KernelError, Result, shape_err};
use crate::gemm::{GemmOptions, gemm_codes_i32};
use crate::layout::{CodeFormat, PackedWeights};

/// Packs signed weights `W[N, K]` (code `c = W + 128`, Δ = 1, z_c = 128, so the f32 path
/// also sees the value `W`).
pub fn pack_i8(w: &[i8], n: usize, k: usize) -> Result<PackedWeights> {
    if w.len() != n * k {
        return Err(shape_err(
            format!("{} weights for [{n}, {k}]", n * k),
            w.len().to_string(),
            "int8::pack_i8",
        ));
    }
    let codes: Vec<u8> = w.iter().map(|&v| (v as u8) ^ 0x80).collect();
    PackedWeights::from_codes_with_params(&codes, n, k, 8, k, vec![1.0; n], vec![128.0; n])
}

pub(crate) fn check_format(w: &PackedWeights, want: CodeFormat, context: &str) -> Result<()> {
    if w.format() != want {
        return Err(KernelError::UnsupportedBits {
            bits: w.bits(),
            supported: format!("weights packed as {} for this kernel", want.name()),
            context: context.into(),
        });
    }
    Ok(())
}

/// `C[M, N] = Σ_k A[m, k]·W[n, k]` with `W = c − 128` (the signed view of 8-bit codes).
///
/// # Shapes
/// - `a`: `[M, K]` row-major; output `[M, N]`
pub fn gemm_i8_i32(a: &[i8], m: usize, w: &PackedWeights, opts: &GemmOptions) -> Result<Vec<i32>> {
    check_format(w, CodeFormat::U8, "int8::gemm_i8_i32")?;
    let acts = QuantizedActs::from_i8(a, m, w.k())?;
    gemm_codes_i32(&acts, w, 1, 128, opts)
}

/// `C[M, N] = Σ_k (A[m, k] − z_a)·W[n, k]` for unsigned activations with a zero point
/// (`A ∈ [0, 255]`): run as `A − 128` (exact in i8) plus `(128 − z_a)·Σ_k W[n, k]`.
pub fn gemm_u8_i32(
    a: &[u8],
    a_zero: i32,
    m: usize,
    w: &PackedWeights,
    opts: &GemmOptions,
) -> Result<Vec<i32>> {
    check_format(w, CodeFormat::U8, "int8::gemm_u8_i32")?;
    let shifted: Vec<i8> = a.iter().map(|&v| (v ^ 0x80) as i8).collect();
    let mut c = gemm_i8_i32(&shifted, m, w, opts)?;
    let n = w.n();
    let k = w.k() as i32;
    // Σ_k W[n, k] = Σ_k c[n, k] − 128·K (one group: the sums are `[N]`).
    let wsum: Vec<i32> = w.code_sums().iter().map(|&s| s - 128 * k).collect();
    for row in c.chunks_mut(n) {
        for (v, &s) in row.iter_mut().zip(&wsum) {
            *v = v.wrapping_add((128 - a_zero).wrapping_mul(s));
        }
    }
    Ok(c)
}

/// Scalar reference: the plain triple loop `Σ_k A[m, k]·W[n, k]` on row-major operands.
pub fn gemm_i8_i32_ref(a: &[i8], w: &[i8], m: usize, n: usize, k: usize) -> Vec<i32> {
    let mut c = vec![0i32; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k)
                .map(|kk| a[i * k + kk] as i32 * w[j * k + kk] as i32)
                .sum();
        }
    }
    c
}

/// Scalar reference of [`gemm_u8_i32`].
pub fn gemm_u8_i32_ref(a: &[u8], a_zero: i32, w: &[i8], m: usize, n: usize, k: usize) -> Vec<i32> {
    let mut c = vec![0i32; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k)
                .map(|kk| (a[i * k + kk] as i32 - a_zero) * w[j * k + kk] as i32)
                .sum();
        }
    }
    c
}
