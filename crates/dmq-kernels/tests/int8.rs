//! int8 × int8 → int32 GEMM: (a) every SIMD path == scalar reference exactly, on random
//! shapes with K, M, N off the tile sizes; (c) GEMM == per-row GEMV == i64 dot products.
//! (The f32 error budget of W8A8 is in `f32_path.rs`.)

use crate::common;

use common::{Rng, gemm_options, report_paths};
use dmq_kernels::{GemmOptions, Isa, int8};
use proptest::prelude::*;

fn check_all_paths(m: usize, n: usize, k: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let a = rng.i8s(m * k);
    let w = rng.i8s(n * k);
    let packed = int8::pack_i8(&w, n, k).unwrap();
    let want = int8::gemm_i8_i32_ref(&a, &w, m, n, k);
    for opts in gemm_options() {
        let got = int8::gemm_i8_i32(&a, m, &packed, &opts).unwrap();
        assert_eq!(got, want, "{opts:?} m={m} n={n} k={k}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn simd_paths_equal_reference(m in 1usize..40, n in 1usize..70, k in 1usize..300, seed: u64) {
        check_all_paths(m, n, k, seed);
    }

    #[test]
    fn u8_with_zero_point_equals_reference(m in 1usize..20, n in 1usize..40, k in 1usize..200, za in 0i32..256, seed: u64) {
        let mut rng = Rng::new(seed);
        let a: Vec<u8> = (0..m * k).map(|_| rng.int(0, 255) as u8).collect();
        let w = rng.i8s(n * k);
        let packed = int8::pack_i8(&w, n, k).unwrap();
        let want = int8::gemm_u8_i32_ref(&a, za, &w, m, n, k);
        for opts in gemm_options() {
            prop_assert_eq!(int8::gemm_u8_i32(&a, za, m, &packed, &opts).unwrap(), want.clone());
        }
    }
}

#[test]
fn fixed_edge_shapes() {
    report_paths();
    for &(m, n, k) in &[
        (1, 1, 1),
        (1, 16, 4),
        (8, 32, 64),
        (9, 33, 65),
        (7, 17, 3),
        (17, 31, 1029),
        (3, 48, 2051),
    ] {
        check_all_paths(m, n, k, (m * 1000 + n * 10 + k) as u64);
    }
}

/// Extreme operands (−128·−128 everywhere) over a long K: no saturation anywhere.
#[test]
fn extremes_are_exact() {
    let (m, n, k) = (9, 20, 4099);
    for (av, wv) in [(-128i8, -128i8), (127, -128), (-128, 127), (127, 127)] {
        let a = vec![av; m * k];
        let w = vec![wv; n * k];
        let packed = int8::pack_i8(&w, n, k).unwrap();
        let want = vec![av as i32 * wv as i32 * k as i32; m * n];
        for opts in gemm_options() {
            assert_eq!(
                int8::gemm_i8_i32(&a, m, &packed, &opts).unwrap(),
                want,
                "{opts:?}"
            );
        }
    }
}

/// (c) The GEMM against per-row GEMV calls and i64 dot products.
#[test]
fn gemm_equals_rowwise_dot_products() {
    let (m, n, k) = (13, 45, 301);
    let mut rng = Rng::new(7);
    let a = rng.i8s(m * k);
    let w = rng.i8s(n * k);
    let packed = int8::pack_i8(&w, n, k).unwrap();
    for isa in Isa::available() {
        let opts = GemmOptions::default().with_isa(isa);
        let c = int8::gemm_i8_i32(&a, m, &packed, &opts).unwrap();
        for i in 0..m {
            let row = int8::gemm_i8_i32(&a[i * k..(i + 1) * k], 1, &packed, &opts).unwrap();
            assert_eq!(row, c[i * n..(i + 1) * n], "{isa:?} row {i}");
            for j in 0..n {
                let dot: i64 = (0..k)
                    .map(|kk| a[i * k + kk] as i64 * w[j * k + kk] as i64)
                    .sum();
                assert_eq!(c[i * n + j] as i64, dot);
            }
        }
    }
}

#[test]
fn packing_round_trips() {
    let (n, k) = (37, 131);
    let mut rng = Rng::new(3);
    let w = rng.i8s(n * k);
    let packed = int8::pack_i8(&w, n, k).unwrap();
    let back: Vec<i8> = packed.codes().iter().map(|&c| (c ^ 0x80) as i8).collect();
    assert_eq!(back, w);
    assert_eq!(packed.k_padded(), 132);
}
