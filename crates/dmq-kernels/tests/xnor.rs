//! XNOR-popcount (W1A1): (a) every popcount path == the literal Σ ±1 reference exactly;
//! f32 output == reference bitwise; (b) against the f64 matmul of the binarized operands
//! (β·sign(x) and σ·s) within `E = 4ε·K·β·σ`; (c) GEMM == per-row calls == dot products.

use crate::common;

use common::{Rng, xnor_options};
use dmq_kernels::PopcntIsa;
use dmq_kernels::xnor::{self, BinaryActs, XnorOptions, XnorWeights};
use dmq_quant::{AffineParams, QuantSpec, QuantizedTensor};
use proptest::prelude::*;

fn check(m: usize, n: usize, k: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let sa = rng.bools(m * k);
    let sw = rng.bools(n * k);
    let a = BinaryActs::from_signs(&sa, m, k).unwrap();
    let w = XnorWeights::from_signs(&sw, n, k, vec![1.0; n]).unwrap();
    let want = xnor::gemm_xnor_i32_ref(&sa, &sw, m, n, k);
    for opts in xnor_options() {
        assert_eq!(
            xnor::gemm_xnor_i32(&a, &w, &opts).unwrap(),
            want,
            "{opts:?} m={m} n={n} k={k}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn popcount_paths_equal_reference(m in 1usize..30, n in 1usize..40, k in 1usize..1500, seed: u64) {
        check(m, n, k, seed);
    }
}

#[test]
fn fixed_edge_shapes() {
    for &(m, n, k) in &[
        (1, 1, 1),
        (1, 4, 64),
        (5, 7, 511),
        (4, 4, 512),
        (9, 13, 513),
        (3, 2, 4096),
    ] {
        check(m, n, k, (m * n + k) as u64);
    }
}

#[test]
fn f32_output_reference_budget_and_rows() {
    let (m, n, k) = (11, 23, 777);
    let mut rng = Rng::new(17);
    let x = rng.floats(m * k, 1.0);
    let wf = rng.floats(n * k, 0.3);
    let signs: Vec<bool> = wf.iter().map(|&v| v >= 0.0).collect();
    let sigma: Vec<f32> = wf
        .chunks(k)
        .map(|r| r.iter().map(|v| v.abs()).sum::<f32>() / k as f32)
        .collect();
    let bias = rng.floats(n, 0.1);
    let w = XnorWeights::from_signs(&signs, n, k, sigma.clone()).unwrap();
    let want = xnor::gemm_f32_out_ref(&x, &signs, &sigma, n, k, Some(&bias)).unwrap();
    for opts in xnor_options() {
        let got = xnor::gemm_f32_out_with(&x, &w, Some(&bias), &opts).unwrap();
        assert_eq!(got, want, "{opts:?}");
    }
    // (b) f64 matmul of the binarized operands; E = 4ε·(|b| + K·β·σ).
    let a = xnor::binarize(&x, m, k).unwrap();
    let eps = f32::EPSILON as f64 / 2.0;
    for i in 0..m {
        for j in 0..n {
            let beta = a.beta[i] as f64;
            let exact: f64 = bias[j] as f64
                + (0..k)
                    .map(|kk| {
                        let sx = if x[i * k + kk] >= 0.0 { beta } else { -beta };
                        let sw = if signs[j * k + kk] {
                            sigma[j] as f64
                        } else {
                            -(sigma[j] as f64)
                        };
                        sx * sw
                    })
                    .sum::<f64>();
            let budget = 4.0 * eps * (bias[j].abs() as f64 + k as f64 * beta * sigma[j] as f64);
            assert!((want[i * n + j] as f64 - exact).abs() <= budget);
        }
    }
    // (c) per-row calls.
    let full = xnor::gemm_f32_out(&x, &w, Some(&bias)).unwrap();
    for i in 0..m {
        let row = xnor::gemm_f32_out(&x[i * k..(i + 1) * k], &w, Some(&bias)).unwrap();
        assert_eq!(row, full[i * n..(i + 1) * n]);
    }
}

#[test]
fn from_binary_export() {
    let (n, k) = (5, 70);
    let mut rng = Rng::new(2);
    let codes: Vec<u8> = rng.bools(n * k).into_iter().map(u8::from).collect();
    let sigma = [0.1f32, 0.2, 0.3, 0.4, 0.5];
    let params = AffineParams {
        spec: QuantSpec::int(1).unwrap().per_channel(0),
        delta: sigma.iter().map(|s| 2.0 * s).collect(),
        zero: vec![0.5; n],
    };
    let qt = QuantizedTensor::from_codes(&codes, &[n, k], params).unwrap();
    let w = XnorWeights::from_quantized(&qt).unwrap();
    assert_eq!(w.sigma(), &sigma);
    let x = rng.floats(3 * k, 1.0);
    let signs: Vec<bool> = codes.iter().map(|&c| c == 1).collect();
    assert_eq!(
        xnor::gemm_f32_out(&x, &w, None).unwrap(),
        xnor::gemm_f32_out_ref(&x, &signs, &sigma, n, k, None).unwrap()
    );
    // A 1-bit grid that is not ±σ (z = 0: values {0, Δ}) is refused by XNOR.
    let params = AffineParams {
        spec: QuantSpec::int(1).unwrap().per_channel(0),
        delta: vec![1.0; n],
        zero: vec![0.0; n],
    };
    let qt = QuantizedTensor::from_codes(&codes, &[n, k], params).unwrap();
    assert!(XnorWeights::from_quantized(&qt).is_err());
}

#[test]
fn unavailable_paths_are_errors_not_crashes() {
    for isa in PopcntIsa::ALL {
        let a = BinaryActs::from_signs(&[true; 10], 1, 10).unwrap();
        let w = XnorWeights::from_signs(&[false; 10], 1, 10, vec![1.0]).unwrap();
        let r = xnor::gemm_xnor_i32(
            &a,
            &w,
            &XnorOptions {
                isa,
                ..XnorOptions::default()
            },
        );
        assert_eq!(r.is_ok(), isa.is_available());
        if let Ok(c) = r {
            assert_eq!(c, vec![-10]);
        }
    }
}
