//! W1A8 / W1A4 by sign application (not XNOR): binary weights `s[n, k] = ±1` stored as
//! bitplanes (code 1 = +1, code 0 = −1; the `dmq-quant` binary export `σ·(2c − 1)`), times
//! integer activations: `C[m, n] = Σ_k s[n, k]·a[m, k]`.
//!
//! The kernels never multiply: they expand 64 weight bits into a 0/1 byte mask in registers
//! (AVX-512: one masked byte move; AVX2: `vpshufb` + AND + `vpminub`, as llama.cpp's Q1_0)
//! and sum the selected activations (`vpdpbusd` / `vpmaddubsw` of the 0/1 mask with `a`),
//! then apply the signs by `Σ s·a = 2·Σ_{s=+1} a − Σ_k a` with the row sum. Exact.
//!
//! With σ per output channel and activations `x = Δ_x·(q − z_x)`, the real output is
//! `y = σ[n]·Δ_x·(C − z_x·Σ_k s[n, k]) + bias` (the general form with any 1-bit Δ, z is
//! [`crate::gemm_f32_out`]).

use crate::act_quant::QuantizedActs;
use crate::error::{Result, shape_err};
use crate::gemm::{GemmOptions, gemm_codes_i32};
use crate::int8::check_format;
use crate::layout::{CodeFormat, PackedWeights};

/// Packs signs `[N, K]` (`true` = +1) as bitplanes with unit parameters.
pub fn pack_signs(signs: &[bool], n: usize, k: usize) -> Result<PackedWeights> {
    if signs.len() != n * k {
        return Err(shape_err(
            format!("{} signs for [{n}, {k}]", n * k),
            signs.len().to_string(),
            "binary::pack_signs",
        ));
    }
    let codes: Vec<u8> = signs.iter().map(|&s| s as u8).collect();
    PackedWeights::from_codes(&codes, n, k, 1)
}

/// `C[M, N] = Σ_k s[n, k]·a[m, k]` with `s = 2c − 1` from a bitplane weight.
pub fn gemm_w1_i32(a: &[i8], m: usize, w: &PackedWeights, opts: &GemmOptions) -> Result<Vec<i32>> {
    check_format(w, CodeFormat::Bit1, "binary::gemm_w1_i32")?;
    let acts = QuantizedActs::from_i8(a, m, w.k())?;
    gemm_codes_i32(&acts, w, 2, 1, opts)
}

/// Scalar reference: literal sign application, `+a` where the bit is set, `−a` elsewhere.
pub fn gemm_w1_i32_ref(a: &[i8], signs: &[bool], m: usize, n: usize, k: usize) -> Vec<i32> {
    let mut c = vec![0i32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0i32;
            for kk in 0..k {
                let x = a[i * k + kk] as i32;
                if signs[j * k + kk] {
                    acc += x;
                } else {
                    acc -= x;
                }
            }
            c[i * n + j] = acc;
        }
    }
    c
}
