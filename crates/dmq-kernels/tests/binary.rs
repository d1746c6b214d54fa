//! W1A8 / W1A4 by sign application: (a) every path == the literal ±a reference exactly;
//! (c) GEMM == per-row GEMV == dot products with ±1.

use crate::common;

use common::{Rng, gemm_options};
use dmq_kernels::{GemmOptions, Isa, binary};
use proptest::prelude::*;

fn check(m: usize, n: usize, k: usize, a_bits: u32, seed: u64) {
    let mut rng = Rng::new(seed);
    let lim = 1i64 << (a_bits - 1);
    let a: Vec<i8> = (0..m * k).map(|_| rng.int(-lim, lim - 1) as i8).collect();
    let signs = rng.bools(n * k);
    let packed = binary::pack_signs(&signs, n, k).unwrap();
    let want = binary::gemm_w1_i32_ref(&a, &signs, m, n, k);
    for opts in gemm_options() {
        let got = binary::gemm_w1_i32(&a, m, &packed, &opts).unwrap();
        assert_eq!(got, want, "{opts:?} m={m} n={n} k={k}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn simd_paths_equal_reference(m in 1usize..40, n in 1usize..70, k in 1usize..300,
                                  a4 in any::<bool>(), seed: u64) {
        check(m, n, k, if a4 { 4 } else { 8 }, seed);
    }
}

#[test]
fn fixed_edge_shapes_and_extremes() {
    for &(m, n, k) in &[
        (1, 1, 1),
        (1, 16, 64),
        (9, 33, 65),
        (8, 32, 4096),
        (3, 5, 4097),
    ] {
        check(m, n, k, 8, (m + n + k) as u64);
    }
    let (m, n, k) = (3, 18, 1000);
    let a = vec![-128i8; m * k];
    let packed = binary::pack_signs(&vec![false; n * k], n, k).unwrap();
    for opts in gemm_options() {
        let got = binary::gemm_w1_i32(&a, m, &packed, &opts).unwrap();
        assert!(got.iter().all(|&v| v == 128 * k as i32));
    }
}

#[test]
fn gemm_equals_rowwise_dot_products() {
    let (m, n, k) = (12, 35, 333);
    let mut rng = Rng::new(11);
    let a = rng.i8s(m * k);
    let signs = rng.bools(n * k);
    let packed = binary::pack_signs(&signs, n, k).unwrap();
    for isa in Isa::available() {
        let opts = GemmOptions::default().with_isa(isa);
        let c = binary::gemm_w1_i32(&a, m, &packed, &opts).unwrap();
        for i in 0..m {
            let row = binary::gemm_w1_i32(&a[i * k..(i + 1) * k], 1, &packed, &opts).unwrap();
            assert_eq!(row, c[i * n..(i + 1) * n]);
            for j in 0..n {
                let dot: i64 = (0..k)
                    .map(|kk| a[i * k + kk] as i64 * if signs[j * k + kk] { 1 } else { -1 })
                    .sum();
                assert_eq!(c[i * n + j] as i64, dot);
            }
        }
    }
}
