//! The wgpu GEMMs (feature `wgpu`; lavapipe on a CPU-only machine) against the CPU kernels:
//! (a) integer accumulators equal the scalar reference exactly, for int8 and 4-bit codes,
//! int8 and int4 activations, K not a multiple of 4 or 8 and N not a multiple of the tile;
//! (b) the dequantizing epilogue matches the CPU reference per channel and per group, with
//! and without bias, to f32 rounding; (c) the quantized layer is close to the f32 matmul of
//! the dequantized weight; (d) typed errors.
#![cfg(feature = "wgpu")]

use crate::common;

use common::Rng;
use dmq_kernels::gpu::WgpuGemm;
use dmq_kernels::{
    ActQuant, GemmOptions, KernelError, PackedWeights, QuantizedActs, act_quant, gemm_acts_f32,
    gemm_f32_out_ref, testdata, w4,
};
use dmq_quant::{AffineParams, QuantSpec, QuantizedTensor, RangeInit, init_params};

fn gpu() -> WgpuGemm {
    WgpuGemm::new().expect("a wgpu adapter (lavapipe: apt-get install mesa-vulkan-drivers)")
}

#[test]
fn integer_core_equals_reference() {
    let gpu = gpu();
    // (m, n, k, weight bits, activation bits): odd K (padding), K/4 odd (the second
    // half-word of a nibble row), N past one 16-wide tile, M = 1 (a GEMV).
    let cases = [
        (5, 37, 70, 8, 8),
        (1, 16, 4, 8, 8),
        (17, 33, 130, 6, 8),
        (5, 37, 70, 4, 8),
        (9, 20, 141, 4, 4),
        (3, 50, 36, 2, 8),
        (1, 7, 9, 3, 4),
    ];
    for (i, &(m, n, k, bits, a_bits)) in cases.iter().enumerate() {
        let mut rng = Rng::new(100 + i as u64);
        let lim = 1i64 << (a_bits - 1);
        let a: Vec<i8> = (0..m * k).map(|_| rng.int(-lim, lim - 1) as i8).collect();
        let codes = rng.codes(n * k, bits);
        let packed = PackedWeights::from_codes(&codes, n, k, bits).unwrap();
        let w = gpu.upload(&packed).unwrap();
        let acts = QuantizedActs::from_i8(&a, m, k).unwrap();
        let got = gpu.gemm_i32(&acts, &w).unwrap();
        let want = w4::gemm_w4_i32_ref(&a, &codes, m, n, k);
        assert_eq!(got, want, "m={m} n={n} k={k} W{bits}A{a_bits}");
    }
}

#[test]
fn extremes_do_not_saturate() {
    // −128 × 255 over K = 4096: |acc| = 133 693 440, inside i32, no 16-bit intermediate.
    let gpu = gpu();
    let (m, n, k) = (2, 3, 4096);
    let codes = vec![255u8; n * k];
    let w = gpu
        .upload(&PackedWeights::from_codes(&codes, n, k, 8).unwrap())
        .unwrap();
    let acts = QuantizedActs::from_i8(&vec![-128i8; m * k], m, k).unwrap();
    let got = gpu.gemm_i32(&acts, &w).unwrap();
    assert!(got.iter().all(|&v| v == -128 * 255 * k as i32), "{got:?}");
}

/// A weight `[n, k]` quantized at `bits` per channel or per group of `group`.
fn weight(n: usize, k: usize, bits: u32, group: Option<usize>, seed: u64) -> QuantizedTensor {
    let w = testdata::uniform(n * k, seed);
    let spec = QuantSpec::int(bits).unwrap();
    let spec = match group {
        Some(g) => spec.per_group(1, g),
        None => spec.per_channel(0),
    };
    let params: AffineParams = init_params(&w, &[n, k], &spec, &RangeInit::Max).unwrap();
    QuantizedTensor::quantize(&w, &[n, k], &params).unwrap()
}

fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    let num: f32 = got.iter().zip(want).map(|(a, b)| (a - b).powi(2)).sum();
    let den: f32 = want.iter().map(|b| b * b).sum();
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn epilogue_matches_cpu_reference() {
    let gpu = gpu();
    for (i, (m, n, k, bits, a_bits, group, with_bias)) in [
        (7, 40, 96, 8, 8, None, true),
        (7, 40, 96, 4, 8, None, false),
        (6, 24, 128, 4, 4, Some(32), true),
        (3, 18, 64, 8, 8, Some(16), false),
        (1, 33, 75, 4, 8, None, true),
    ]
    .into_iter()
    .enumerate()
    {
        let qt = weight(n, k, bits, group, 7 + i as u64);
        let packed = PackedWeights::from_quantized(&qt).unwrap();
        let w = gpu.upload(&packed).unwrap();
        let x: Vec<f32> = testdata::uniform(m * k, 50 + i as u64)
            .iter()
            .map(|v| v * 3.0 + 0.5)
            .collect();
        let bias: Vec<f32> = testdata::uniform(n, 90 + i as u64);
        let bias = with_bias.then_some(bias.as_slice());
        let aq = ActQuant::dynamic(a_bits).unwrap();
        let want = gemm_f32_out_ref(&x, &qt, &aq, bias).unwrap();
        let got = gpu.gemm_f32_out(&x, &w, &aq, bias).unwrap();
        let e = rel_err(&got, &want);
        assert!(
            e < 1e-6,
            "case {i}: relative error {e} vs the CPU reference"
        );
        // The CPU optimized path on the same quantized activations.
        let acts = act_quant::quantize(&x, m, k, &aq).unwrap();
        let cpu = gemm_acts_f32(&acts, &packed, bias, &GemmOptions::default()).unwrap();
        assert!(rel_err(&got, &cpu) < 1e-6, "case {i}: vs the CPU kernel");
    }
}

#[test]
fn layer_is_close_to_f32_matmul() {
    // Against x·Ŵᵀ in f32 with the dequantized weight: only activation rounding remains,
    // ≤ Δ_x/2 per element, so the relative error is bounded by the 8-bit (4-bit) grid.
    let gpu = gpu();
    let (m, n, k) = (8, 48, 256);
    for (bits, a_bits, budget) in [(8, 8, 1e-2f32), (4, 8, 1e-2), (4, 4, 1.5e-1)] {
        let qt = weight(n, k, bits, None, 3);
        let w_hat = qt.dequantize().unwrap();
        let w = gpu
            .upload(&PackedWeights::from_quantized(&qt).unwrap())
            .unwrap();
        let x = testdata::uniform(m * k, 11);
        let mut want = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                want[r * n + c] = (0..k).map(|j| x[r * k + j] * w_hat[c * k + j]).sum();
            }
        }
        let got = gpu
            .gemm_f32_out(&x, &w, &ActQuant::dynamic(a_bits).unwrap(), None)
            .unwrap();
        let e = rel_err(&got, &want);
        assert!(
            e < budget,
            "W{bits}A{a_bits}: relative error {e} ≥ {budget}"
        );
    }
}

#[test]
fn errors_are_typed() {
    let gpu = gpu();
    let one_bit = PackedWeights::from_codes(&[1, 0, 1, 1], 1, 4, 1).unwrap();
    assert!(matches!(
        gpu.upload(&one_bit),
        Err(KernelError::UnsupportedBits { bits: 1, .. })
    ));
    let w = gpu
        .upload(&PackedWeights::from_codes(&[3u8; 2 * 8], 2, 8, 8).unwrap())
        .unwrap();
    let wrong_k = QuantizedActs::from_i8(&[1i8; 12], 1, 12).unwrap();
    assert!(matches!(
        gpu.gemm_i32(&wrong_k, &w),
        Err(KernelError::ShapeMismatch { .. })
    ));
    let acts = QuantizedActs::from_i8(&[1i8; 8], 1, 8).unwrap();
    assert!(matches!(
        gpu.gemm_acts_f32(&acts, &w, Some(&[0.0; 3])),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        gpu.gemm_f32_out(&[0.0; 7], &w, &ActQuant::dynamic(8).unwrap(), None),
        Err(KernelError::ShapeMismatch { .. })
    ));
}
