//! W4 GEMM from packed nibbles (also 2- and 3-bit codes): (a) every path == reference
//! exactly; repacking to int8 gives the same integers; (c) GEMM == per-row GEMV == dots.

use crate::common;

use common::{Rng, gemm_options};
use dmq_kernels::{GemmOptions, Isa, PackedWeights, w4};
use proptest::prelude::*;

fn check(m: usize, n: usize, k: usize, bits: u32, a_bits: u32, seed: u64) {
    let mut rng = Rng::new(seed);
    let lim = 1i64 << (a_bits - 1);
    let a: Vec<i8> = (0..m * k).map(|_| rng.int(-lim, lim - 1) as i8).collect();
    let codes = rng.codes(n * k, bits);
    let packed = PackedWeights::from_codes(&codes, n, k, bits).unwrap();
    assert_eq!(packed.codes(), codes);
    let want = w4::gemm_w4_i32_ref(&a, &codes, m, n, k);
    for opts in gemm_options() {
        let got = w4::gemm_w4_i32(&a, m, &packed, &opts).unwrap();
        assert_eq!(got, want, "{opts:?} m={m} n={n} k={k} bits={bits}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// W4A8 (a ∈ [−128, 127]) and W4A4 (a ∈ [−8, 7]), 2..=4-bit codes.
    #[test]
    fn simd_paths_equal_reference(m in 1usize..40, n in 1usize..70, k in 1usize..300,
                                  bits in 2u32..=4, a4 in any::<bool>(), seed: u64) {
        check(m, n, k, bits, if a4 { 4 } else { 8 }, seed);
    }
}

#[test]
fn extremes_are_exact() {
    // Code 15 × −128 everywhere: the vpmaddubsw pair sum is 2·15·−128 = −3840, no saturation.
    let (m, n, k) = (5, 19, 2053);
    let a = vec![-128i8; m * k];
    let codes = vec![15u8; n * k];
    let packed = w4::pack_w4(&codes, n, k).unwrap();
    for opts in gemm_options() {
        let got = w4::gemm_w4_i32(&a, m, &packed, &opts).unwrap();
        assert!(got.iter().all(|&v| v == -128 * 15 * k as i32), "{opts:?}");
    }
}

#[test]
fn repacked_int8_gives_same_integers() {
    let (m, n, k) = (11, 40, 260);
    let mut rng = Rng::new(5);
    let a = rng.i8s(m * k);
    let codes = rng.codes(n * k, 4);
    let packed = w4::pack_w4(&codes, n, k).unwrap();
    let wide = w4::repack_u8(&packed).unwrap();
    assert_eq!(wide.codes(), codes);
    let acts = dmq_kernels::QuantizedActs::from_i8(&a, m, k).unwrap();
    for isa in Isa::available() {
        let opts = GemmOptions::default().with_isa(isa);
        let y4 = dmq_kernels::gemm_acts_f32(&acts, &packed, None, &opts).unwrap();
        let y8 = dmq_kernels::gemm_acts_f32(&acts, &wide, None, &opts).unwrap();
        assert_eq!(y4, y8, "{isa:?}");
    }
}

#[test]
fn gemm_equals_rowwise_dot_products() {
    let (m, n, k) = (10, 50, 257);
    let mut rng = Rng::new(9);
    let a = rng.i8s(m * k);
    let codes = rng.codes(n * k, 4);
    let packed = w4::pack_w4(&codes, n, k).unwrap();
    for isa in Isa::available() {
        let opts = GemmOptions::default().with_isa(isa);
        let c = w4::gemm_w4_i32(&a, m, &packed, &opts).unwrap();
        for i in 0..m {
            let row = w4::gemm_w4_i32(&a[i * k..(i + 1) * k], 1, &packed, &opts).unwrap();
            assert_eq!(row, c[i * n..(i + 1) * n]);
            for j in 0..n {
                let dot: i64 = (0..k)
                    .map(|kk| a[i * k + kk] as i64 * codes[j * k + kk] as i64)
                    .sum();
                assert_eq!(c[i * n + j] as i64, dot);
            }
        }
    }
}
