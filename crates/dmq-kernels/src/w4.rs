//! W4 GEMM from packed nibbles: `C[m, n] = Σ_k c[n, k]·a[m, k]` with 4-bit weight codes
//! `c ∈ [0, 15]` (2- and 3-bit codes too) and signed activations: int8 (W4A8) or int4 in
//! `[−8, 7]` stored one per i8 (W4A4; same kernel, 4-bit activation grid).
//!
//! The weights stay packed two per byte in memory; the kernels unpack a 64-code block in
//! registers (AVX-512: shift + insert + AND, then `vpdpbusd`; AVX2: AND / shift + AND, then
//! `vpmaddubsw` + `vpmaddwd`, exact because `2·15·128 < 2^15`). [`repack_u8`] is the
//! alternative of unpacking once at load into the int8 layout (4 → 8 bits per weight,
//! same results) for comparison in the benches.
//!
//! Real-valued use (zero points, per-channel or per-group Δ, on-the-fly activation
//! quantization, bias) goes through [`crate::gemm_f32_out`].

use crate::act_quant::QuantizedActs;
use crate::error::Result;
use crate::gemm::{GemmOptions, gemm_codes_i32};
use crate::int8::check_format;
use crate::layout::{CodeFormat, PackedWeights};

/// Packs 4-bit codes `c[N, K]` (each < 16) with unit parameters.
pub fn pack_w4(codes: &[u8], n: usize, k: usize) -> Result<PackedWeights> {
    PackedWeights::from_codes(codes, n, k, 4)
}

/// `C[M, N] = Σ_k c[n, k]·a[m, k]` (codes of a nibble-packed weight, activations i8).
pub fn gemm_w4_i32(a: &[i8], m: usize, w: &PackedWeights, opts: &GemmOptions) -> Result<Vec<i32>> {
    check_format(w, CodeFormat::Nib4, "w4::gemm_w4_i32")?;
    let acts = QuantizedActs::from_i8(a, m, w.k())?;
    gemm_codes_i32(&acts, w, 1, 0, opts)
}

/// Scalar reference: `Σ_k c[n, k]·a[m, k]` on row-major codes.
pub fn gemm_w4_i32_ref(a: &[i8], codes: &[u8], m: usize, n: usize, k: usize) -> Vec<i32> {
    let mut c = vec![0i32; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k)
                .map(|kk| a[i * k + kk] as i32 * codes[j * k + kk] as i32)
                .sum();
        }
    }
    c
}

/// The same weight (codes, Δ, z) re-laid out one byte per code (the int8 kernel).
pub fn repack_u8(w: &PackedWeights) -> Result<PackedWeights> {
    // Parameters are stored group-major; the constructor takes them channel-major.
    let (n, groups) = (w.n(), w.groups());
    let channel_major = |v: &[f32]| -> Vec<f32> {
        (0..n * groups)
            .map(|i| v[(i % groups) * n + i / groups])
            .collect()
    };
    let mut out = PackedWeights::from_codes_with_params(
        &w.codes(),
        n,
        w.k(),
        8,
        w.group_size(),
        channel_major(w.delta()),
        channel_major(w.zero_codes()),
    )?;
    out.set_shape(w.shape().to_vec());
    Ok(out)
}
