//! On-the-fly activation quantization: the fast path equals the scalar reference exactly
//! (including half-way ties and values far outside the grid); codes stay in range; the
//! error is within one step inside the dynamic range; padding is zero.

use crate::common;

use common::Rng;
use dmq_kernels::ActQuant;
use dmq_kernels::act_quant::{quantize, quantize_ref};
use proptest::prelude::*;

fn quantizers(bits: u32) -> Vec<ActQuant> {
    vec![
        ActQuant::dynamic(bits).unwrap(),
        ActQuant::dynamic(bits).unwrap().per_row(),
        ActQuant::dynamic_symmetric(bits).unwrap(),
        ActQuant::dynamic_symmetric(bits).unwrap().per_row(),
        ActQuant::fixed(bits, 0.25, 1.0, false).unwrap(),
        ActQuant::fixed(bits, 0.5, 0.0, true).unwrap(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn fast_equals_reference(m in 1usize..12, k in 1usize..90, bits in 2u32..=8, scale in 0.001f32..1000.0, seed: u64) {
        let mut rng = Rng::new(seed);
        let mut x = rng.floats(m * k, scale);
        // Exact ties for the static grids (x/Δ = n + ½) and huge values.
        x[0] = 0.375;
        if x.len() > 2 { x[1] = -0.125; x[2] = 1e30; }
        for aq in quantizers(bits) {
            let a = quantize(&x, m, k, &aq).unwrap();
            let b = quantize_ref(&x, m, k, &aq).unwrap();
            prop_assert_eq!(&a, &b);
            let lim = 1i32 << (bits - 1);
            prop_assert!(a.q.iter().all(|&q| (-lim..lim).contains(&(q as i32))));
            for r in 0..m {
                prop_assert!(a.q[r * a.kp + k..(r + 1) * a.kp].iter().all(|&q| q == 0));
            }
        }
    }

    #[test]
    fn dynamic_error_within_one_step(m in 1usize..8, k in 1usize..64, bits in 2u32..=8, seed: u64) {
        let mut rng = Rng::new(seed);
        let x = rng.floats(m * k, 1.0);
        for aq in [ActQuant::dynamic(bits).unwrap(), ActQuant::dynamic(bits).unwrap().per_row()] {
            let a = quantize(&x, m, k, &aq).unwrap();
            let xh = a.dequantize();
            for (i, (&v, &h)) in x.iter().zip(&xh).enumerate() {
                let d = a.delta[i / k];
                // Δ/2 from rounding, plus up to Δ/2 where the rounded zero point shifts the
                // grid at the edge of the range.
                prop_assert!((v - h).abs() <= d * 1.0001, "{} vs {} (Δ {})", v, h, d);
            }
        }
    }
}
