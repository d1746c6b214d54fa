//! User errors are typed `KernelError`s, never panics: wrong shapes, unsupported bit-widths
//! and specs, format mismatches, non-finite inputs, too-long K.

use dmq_kernels::conv::{self, Conv2dParams};
use dmq_kernels::{
    ActQuant, GemmOptions, KernelError, MAX_K, PackedWeights, QuantizedActs, binary, gemm_f32_out,
    int8, w4, xnor,
};
use dmq_quant::{AffineParams, Granularity, QuantSpec, QuantizedTensor};

fn qt(shape: &[usize], spec: QuantSpec) -> QuantizedTensor {
    let n: usize = shape.iter().product();
    let p = spec.num_params(shape).unwrap();
    let params = AffineParams {
        spec,
        delta: vec![0.1; p],
        zero: vec![if spec.is_symmetric() { 0.0 } else { 1.0 }; p],
    };
    QuantizedTensor::quantize(&vec![0.05; n], shape, &params).unwrap()
}

#[test]
fn wrong_shapes() {
    let w = PackedWeights::from_quantized(&qt(&[4, 8], QuantSpec::int(4).unwrap().per_channel(0)))
        .unwrap();
    let a8 = ActQuant::dynamic(8).unwrap();
    assert!(matches!(
        gemm_f32_out(&[0.0; 7], &w, &a8, None),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        gemm_f32_out(&[0.0; 16], &w, &a8, Some(&[0.0; 3])),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert_eq!(gemm_f32_out(&[], &w, &a8, None).unwrap(), Vec::<f32>::new());
    assert!(int8::pack_i8(&[0; 5], 2, 3).is_err());
    assert!(PackedWeights::from_codes(&[0; 6], 2, 3, 4).is_ok());
    assert!(PackedWeights::from_codes(&[0; 6], 0, 6, 4).is_err());
    assert!(PackedWeights::from_codes(&[0; 5], 2, 3, 4).is_err());
    assert!(QuantizedActs::from_i8(&[0; 5], 2, 3).is_err());
    let p8 = int8::pack_i8(&[1; 12], 3, 4).unwrap();
    assert!(int8::gemm_i8_i32(&[0; 7], 2, &p8, &GemmOptions::default()).is_err());
    // Rank-1 weight.
    let r1 = qt(&[8], QuantSpec::int(4).unwrap());
    assert!(matches!(
        PackedWeights::from_quantized(&r1),
        Err(KernelError::ShapeMismatch { .. })
    ));
    // Conv: channel mismatch, kernel larger than the padded input, zero stride.
    let cw = PackedWeights::from_quantized(&qt(
        &[2, 3, 3, 3],
        QuantSpec::int(8).unwrap().per_channel(0),
    ))
    .unwrap();
    let x = vec![0.0; 4 * 5 * 5];
    let p = Conv2dParams::default();
    let o = GemmOptions::default();
    assert!(conv::conv2d(&x, [1, 4, 5, 5], &cw, &a8, None, &p, &o).is_err());
    let x3 = vec![0.0; 3 * 2 * 2];
    assert!(conv::conv2d(&x3, [1, 3, 2, 2], &cw, &a8, None, &p, &o).is_err());
    assert!(
        conv::conv2d(
            &x3,
            [1, 3, 2, 2],
            &cw,
            &a8,
            None,
            &Conv2dParams::new([0, 1], [1, 1]),
            &o
        )
        .is_err()
    );
    // A 2-D weight cannot run as a conv.
    assert!(conv::conv2d(&x, [1, 4, 5, 5], &w, &a8, None, &p, &o).is_err());
    // XNOR shapes.
    let xw = xnor::XnorWeights::from_signs(&[true; 8], 2, 4, vec![1.0; 2]).unwrap();
    assert!(xnor::gemm_f32_out(&[0.0; 5], &xw, None).is_err());
    assert!(xnor::XnorWeights::from_signs(&[true; 8], 2, 4, vec![1.0]).is_err());
}

#[test]
fn unsupported_bits() {
    for bits in [0, 1, 9, 16] {
        assert!(
            matches!(
                ActQuant::dynamic(bits),
                Err(KernelError::UnsupportedBits { .. })
            ),
            "{bits}"
        );
    }
    assert!(matches!(
        PackedWeights::from_codes(&[0; 4], 1, 4, 0),
        Err(KernelError::UnsupportedBits { .. })
    ));
    assert!(matches!(
        PackedWeights::from_codes(&[0; 4], 1, 4, 9),
        Err(KernelError::UnsupportedBits { .. })
    ));
    // A code that does not fit its width.
    assert!(PackedWeights::from_codes(&[16, 0, 0, 0], 1, 4, 4).is_err());
    assert!(PackedWeights::from_codes(&[2, 0, 0, 0], 1, 4, 1).is_err());
    // Format mismatches between packed weights and kernels.
    let p4 = w4::pack_w4(&[1; 8], 2, 4).unwrap();
    let p8 = int8::pack_i8(&[1; 8], 2, 4).unwrap();
    let o = GemmOptions::default();
    assert!(matches!(
        int8::gemm_i8_i32(&[0; 4], 1, &p4, &o),
        Err(KernelError::UnsupportedBits { .. })
    ));
    assert!(w4::gemm_w4_i32(&[0; 4], 1, &p8, &o).is_err());
    assert!(binary::gemm_w1_i32(&[0; 4], 1, &p8, &o).is_err());
    // XNOR needs 1-bit weights.
    assert!(matches!(
        xnor::XnorWeights::from_quantized(&qt(&[2, 4], QuantSpec::int(4).unwrap())),
        Err(KernelError::UnsupportedBits { .. })
    ));
}

#[test]
fn unsupported_specs() {
    // Float pass-through.
    let mut q = qt(&[2, 4], QuantSpec::int(4).unwrap());
    q.params.spec = QuantSpec::float();
    assert!(matches!(
        PackedWeights::from_quantized(&q),
        Err(KernelError::UnsupportedSpec { .. })
    ));
    // Per-channel on the input axis; per-group along the output axis; group not a multiple of 4.
    for spec in [
        QuantSpec::int(4).unwrap().per_channel(1),
        QuantSpec::int(4).unwrap().per_group(0, 2),
        QuantSpec::int(4).unwrap().per_group(1, 6),
    ] {
        let r = PackedWeights::from_quantized(&qt(&[4, 12], spec));
        assert!(
            matches!(r, Err(KernelError::UnsupportedSpec { .. })),
            "{:?}",
            spec.granularity()
        );
    }
    // Per-group on the input-channel axis of a conv weight is not contiguous along K.
    let r = PackedWeights::from_quantized(&qt(
        &[2, 8, 3, 3],
        QuantSpec::int(4).unwrap().per_group(1, 4),
    ));
    assert!(r.is_err());
    // Per-group along the last axis works, for any rank.
    let ok =
        PackedWeights::from_quantized(&qt(&[2, 3, 8], QuantSpec::int(4).unwrap().per_group(2, 4)))
            .unwrap();
    assert_eq!((ok.groups(), ok.group_size()), (6, 4));
    assert_eq!(ok.delta().len(), 12);
    // Inconsistent parameter count.
    let mut bad = qt(&[2, 4], QuantSpec::int(4).unwrap().per_channel(0));
    bad.params.delta.pop();
    bad.params.zero.pop();
    assert!(PackedWeights::from_quantized(&bad).is_err());
    // Activation params: per-channel spec, non-integer zero point, bad Δ.
    let pc = AffineParams {
        spec: QuantSpec::int(8)
            .unwrap()
            .with_granularity(Granularity::PerChannel { axis: 1 }),
        delta: vec![0.1; 3],
        zero: vec![0.0; 3],
    };
    assert!(matches!(
        ActQuant::from_params(&pc),
        Err(KernelError::UnsupportedSpec { .. })
    ));
    assert!(matches!(
        ActQuant::fixed(8, 0.1, 3.5, false),
        Err(KernelError::InvalidParam { .. })
    ));
    assert!(ActQuant::fixed(8, 0.0, 3.0, false).is_err());
    assert!(ActQuant::fixed(8, f32::NAN, 3.0, false).is_err());
    // Weight parameters given by hand.
    assert!(
        PackedWeights::from_codes_with_params(&[0; 8], 1, 8, 4, 8, vec![-1.0], vec![0.0]).is_err()
    );
    assert!(
        PackedWeights::from_codes_with_params(&[0; 8], 1, 8, 4, 3, vec![1.0; 2], vec![0.0; 2])
            .is_err()
    );
}

#[test]
fn non_finite_inputs_and_long_k() {
    let w = PackedWeights::from_quantized(&qt(&[2, 4], QuantSpec::int(8).unwrap().per_channel(0)))
        .unwrap();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let x = [0.0, 1.0, bad, 2.0];
        for aq in [
            ActQuant::dynamic(8).unwrap(),
            ActQuant::fixed(8, 0.1, 0.0, true).unwrap(),
        ] {
            assert!(matches!(
                gemm_f32_out(&x, &w, &aq, None),
                Err(KernelError::NonFinite { index: 2, .. })
            ));
        }
        let xw = xnor::XnorWeights::from_signs(&[true; 8], 2, 4, vec![1.0; 2]).unwrap();
        assert!(xnor::gemm_f32_out(&x, &xw, None).is_err());
    }
    let k = MAX_K + 4;
    assert!(matches!(
        PackedWeights::from_codes(&vec![0; k], 1, k, 4),
        Err(KernelError::TooLong { .. })
    ));
}
