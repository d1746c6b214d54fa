//! Property tests of the quantizer invariants (host reference and default device).

use crate::common;

use common::{host, tn};
use dmq_quant::pack::{pack_codes, unpack_codes};
use dmq_quant::{
    AffineParams, QuantSpec, QuantizedFile, QuantizedTensor, Quantizer, UniformQuantizer,
};
use proptest::prelude::*;

fn spec_strategy() -> impl Strategy<Value = QuantSpec> {
    (1u32..=8, any::<bool>()).prop_map(|(b, signed)| QuantSpec::int(b).unwrap().with_signed(signed))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Inside the representable range the error is at most Δ/2; re-quantizing is a no-op;
    /// the map is monotone.
    #[test]
    fn uniform_invariants(
        spec in spec_strategy(),
        delta in 1e-3f32..10.0,
        zraw in -300i32..300,
        mut xs in prop::collection::vec(-1e3f32..1e3, 1..64),
    ) {
        let (qmin, qmax) = spec.int_range().unwrap();
        let z = zraw.clamp(qmin - 4, qmax + 4) as f32;
        let params = AffineParams { spec, delta: vec![delta], zero: vec![z] };
        let device = dmq_quant::device::default_device().unwrap();
        let q = UniformQuantizer::from_params(&params, &device).unwrap();
        xs.sort_by(f32::total_cmp);
        let n = xs.len();
        let y = host(q.fake_quant(tn(&xs, [n], &device), 0).unwrap());
        let lo = (qmin as f32 - z) * delta;
        let hi = (qmax as f32 - z) * delta;
        for (x, v) in xs.iter().zip(&y) {
            if *x >= lo && *x <= hi {
                prop_assert!((x - v).abs() <= delta / 2.0 * (1.0 + 1e-5) + 1e-6, "x {} v {} Δ {}", x, v, delta);
            }
            prop_assert!(*v >= lo - 1e-4 * delta.max(1.0) && *v <= hi + 1e-4 * delta.max(1.0));
        }
        for w in y.windows(2) {
            prop_assert!(w[0] <= w[1], "not monotone: {:?}", w);
        }
        let y2 = host(q.fake_quant(tn(&y, [n], &device), 0).unwrap());
        for (a, b) in y.iter().zip(&y2) {
            prop_assert!((a - b).abs() <= 1e-5 * delta.max(a.abs()), "not idempotent {} {}", a, b);
        }
    }

    #[test]
    fn pack_unpack_round_trip(bits in 1u32..=8, seed in prop::collection::vec(any::<u8>(), 0..200)) {
        let codes: Vec<u8> = seed.iter().map(|c| if bits == 8 { *c } else { c & ((1u8 << bits) - 1) }).collect();
        let packed = pack_codes(&codes, bits).unwrap();
        prop_assert_eq!(unpack_codes(&packed, bits, codes.len()).unwrap(), codes);
    }

    #[test]
    fn save_load_round_trip(
        spec in spec_strategy(),
        rows in 1usize..5,
        cols in 1usize..9,
        vals in prop::collection::vec(-5f32..5.0, 40),
        d in prop::collection::vec(1e-3f32..1.0, 5),
    ) {
        let spec = spec.per_channel(0);
        let (qmin, _) = spec.int_range().unwrap();
        let params = AffineParams { spec, delta: d[..rows].to_vec(), zero: vec![qmin as f32 + 1.0; rows] };
        let q = QuantizedTensor::quantize(&vals[..rows * cols], &[rows, cols], &params).unwrap();
        let mut f = QuantizedFile::default();
        f.quantized.insert("layer".into(), q.clone());
        let g = QuantizedFile::from_bytes(&f.to_bytes().unwrap(), "mem").unwrap();
        prop_assert_eq!(&g.quantized["layer"], &q);
        prop_assert_eq!(g.quantized["layer"].dequantize().unwrap(), q.dequantize().unwrap());
    }
}
