//! conv2d via im2col + integer GEMM: optimized == reference bitwise on every path;
//! reference against a direct f64 convolution of the dequantized operands within the
//! rounding budget; XNOR conv against its reference.

use crate::common;

use common::{Rng, gemm_options};
use dmq_kernels::conv::{self, Conv2dParams};
use dmq_kernels::xnor::{XnorOptions, XnorWeights};
use dmq_kernels::{ActQuant, PackedWeights};
use dmq_quant::{AffineParams, QuantSpec, QuantizedTensor};

fn weight(rng: &mut Rng, shape: [usize; 4], bits: u32) -> QuantizedTensor {
    let n: usize = shape.iter().product();
    let w = rng.floats(n, 0.2);
    let cout = shape[0];
    let per = n / cout;
    let (qmin, qmax) = (0, (1 << bits) - 1);
    let (mut delta, mut zero) = (Vec::new(), Vec::new());
    for c in w.chunks(per) {
        let lo = c.iter().cloned().fold(f32::INFINITY, f32::min);
        let hi = c.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let d = ((hi - lo) / (qmax - qmin) as f32).max(1e-6);
        delta.push(d);
        zero.push((-lo / d).round_ties_even());
    }
    let params = AffineParams {
        spec: QuantSpec::int(bits).unwrap().per_channel(0),
        delta,
        zero,
    };
    QuantizedTensor::quantize(&w, &shape, &params).unwrap()
}

#[test]
fn conv_matches_reference_and_direct_conv() {
    let mut rng = Rng::new(31);
    for &(b, cin, h, w, cout, k, stride, pad, bits) in &[
        (1, 3, 8, 8, 5, 3, 1, 1, 8),
        (2, 4, 9, 7, 6, 3, 2, 1, 4),
        (1, 2, 6, 6, 17, 1, 1, 0, 4),
        (2, 3, 7, 9, 4, 3, 1, 0, 1),
        (1, 8, 5, 5, 33, 3, 1, 1, 2),
    ] {
        let xs = [b, cin, h, w];
        let x = rng.floats(b * cin * h * w, 1.0);
        let qt = if bits == 1 {
            let n = cout * cin * k * k;
            let codes: Vec<u8> = rng.bools(n).into_iter().map(u8::from).collect();
            let params = AffineParams {
                spec: QuantSpec::int(1).unwrap().per_channel(0),
                delta: vec![0.1; cout],
                zero: vec![0.5; cout],
            };
            QuantizedTensor::from_codes(&codes, &[cout, cin, k, k], params).unwrap()
        } else {
            weight(&mut rng, [cout, cin, k, k], bits)
        };
        let packed = PackedWeights::from_quantized(&qt).unwrap();
        let bias = rng.floats(cout, 0.1);
        let params = Conv2dParams::new([stride, stride], [pad, pad]);
        // Static grids take the quantize-then-im2col path (zero point inside the grid, off
        // its centre, so a wrong padding code would show); the dynamic grid the f32 im2col.
        for act in [
            ActQuant::fixed(8, 0.011, 120.0, false).unwrap(),
            ActQuant::fixed(4, 0.15, -2.0, true).unwrap(),
            ActQuant::dynamic(8).unwrap(),
        ] {
            let (want, shape) = conv::conv2d_ref(&x, xs, &qt, &act, Some(&bias), &params).unwrap();
            for opts in gemm_options() {
                let (got, s) =
                    conv::conv2d(&x, xs, &packed, &act, Some(&bias), &params, &opts).unwrap();
                assert_eq!(s, shape);
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{opts:?} {act:?}"
                );
                if matches!(act.range(), dmq_kernels::ActRange::Static { .. }) {
                    let hwc = conv::pack_conv_weight_hwc(&qt).unwrap();
                    let (got, s) =
                        conv::conv2d_hwc(&x, xs, &hwc, &act, Some(&bias), &params, &opts).unwrap();
                    assert_eq!(s, shape);
                    assert!(
                        got.iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "hwc {opts:?} {act:?}"
                    );
                }
            }
        }
        let act = ActQuant::dynamic(8).unwrap();
        let (want, shape) = conv::conv2d_ref(&x, xs, &qt, &act, Some(&bias), &params).unwrap();
        // Direct convolution of the dequantized operands: per-tensor dynamic quantization of
        // the im2col matrix equals quantizing the input (every pixel is covered, zeros are in
        // range), so x̂ is the input quantized on its own.
        let xq = dmq_kernels::act_quant::quantize_ref(&x, 1, x.len(), &act).unwrap();
        let xhat = xq.dequantize();
        let what = qt.dequantize().unwrap();
        let (direct, s) =
            conv::conv2d_f32_direct(&xhat, xs, &what, [cout, cin, k, k], Some(&bias), &params)
                .unwrap();
        assert_eq!(s, shape);
        // E = 1e-5·(1 + Σ|x̂||ŵ| per output), bounded here by K·max|x̂|·max|ŵ|.
        let kk = (cin * k * k) as f32;
        let mx = xhat.iter().fold(0f32, |a, v| a.max(v.abs()));
        let mw = what.iter().fold(0f32, |a, v| a.max(v.abs()));
        let budget = 1e-5 * (1.0 + kk * mx * mw);
        for (a, d) in want.iter().zip(&direct) {
            assert!(
                (a - d).abs() <= budget,
                "{a} vs direct {d} (budget {budget})"
            );
        }
    }
}

#[test]
fn xnor_conv_matches_gemm_reference() {
    let mut rng = Rng::new(5);
    let (b, cin, h, w, cout) = (2, 4, 6, 6, 8);
    let x = rng.floats(b * cin * h * w, 1.0);
    let kk = cin * 9;
    let signs = rng.bools(cout * kk);
    let sigma: Vec<f32> = (0..cout).map(|i| 0.1 + i as f32 * 0.01).collect();
    let wx = XnorWeights::from_signs(&signs, cout, kk, sigma.clone()).unwrap();
    let params = Conv2dParams::new([1, 1], [1, 1]);
    let (y, shape) = conv::conv2d_xnor(
        &x,
        [b, cin, h, w],
        &wx,
        [3, 3],
        None,
        &params,
        &XnorOptions::default(),
    )
    .unwrap();
    assert_eq!(shape, [b, cout, h, w]);
    let (cols, ho, wo) = conv::im2col(&x, [b, cin, h, w], 3, 3, &params).unwrap();
    let flat = dmq_kernels::xnor::gemm_f32_out_ref(&cols, &signs, &sigma, cout, kk, None).unwrap();
    for bb in 0..b {
        for co in 0..cout {
            for p in 0..ho * wo {
                assert_eq!(
                    y[(bb * cout + co) * ho * wo + p],
                    flat[(bb * ho * wo + p) * cout + co]
                );
            }
        }
    }
}

/// The fused NHWC gather with per-row dynamic quantization (SVDQuant's conv path) against the
/// f32 im2col + per-row quantization + GEMM on the (c, kh, kw)-packed weight: the same codes,
/// Δ and z per row (a row's range does not depend on the order of its values), so the same
/// output bit for bit; and the branch's down projection on the HWC rows with its L2 reordered
/// equals the projection of the f32 im2col rows. A NaN is a typed error.
#[test]
fn dynamic_hwc_gather_matches_f32_im2col() {
    let mut rng = Rng::new(77);
    for &(b, cin, h, w, cout, k, stride, pad, bits, threads) in &[
        (2, 5, 7, 6, 6, 3, 1, 1, 4, 1),
        (1, 8, 9, 9, 12, 3, 2, 1, 8, 2),
        (3, 16, 6, 5, 7, 1, 1, 0, 4, 2),
        (2, 32, 12, 12, 16, 3, 1, 1, 4, 3),
    ] {
        let xs = [b, cin, h, w];
        let x = rng.floats(b * cin * h * w, 1.0);
        let qt = weight(&mut rng, [cout, cin, k, k], bits);
        let params = Conv2dParams::new([stride; 2], [pad; 2]);
        let act = ActQuant::dynamic(bits).unwrap().per_row();
        let opts = dmq_kernels::GemmOptions::default().with_threads(threads);
        // reference: f32 im2col rows in (c, kh, kw) order
        let (cols, ho, wo) = conv::im2col(&x, xs, k, k, &params).unwrap();
        let m = b * ho * wo;
        let kk = cin * k * k;
        let q_ref = dmq_kernels::act_quant::quantize(&cols, m, kk, &act).unwrap();
        let y_ref = dmq_kernels::gemm_acts_f32(
            &q_ref,
            &PackedWeights::from_quantized(&qt).unwrap(),
            None,
            &opts,
        )
        .unwrap();
        // fused: NHWC gather, rows quantized in blocks, weight packed (kh, kw, c)
        let r = 3.min(kk);
        let (down, up) = (rng.floats(r * kk, 0.3), rng.floats(cout * r, 0.3));
        let branch = dmq_kernels::LowRankBranch::new(&down, &up, r, kk, cout).unwrap();
        let hwc_branch = branch.for_hwc_conv(cin, k, k).unwrap();
        let rows =
            conv::im2col_dynamic_hwc(&x, xs, k, k, &params, &act, Some(&hwc_branch), threads)
                .unwrap();
        let (q, t) = (rows.acts, rows.branch_t);
        assert_eq!((rows.ho, rows.wo), (ho, wo));
        assert_eq!(
            (q.delta.clone(), q.zero.clone()),
            (q_ref.delta.clone(), q_ref.zero.clone())
        );
        let y =
            dmq_kernels::gemm_acts_f32(&q, &conv::pack_conv_weight_hwc(&qt).unwrap(), None, &opts)
                .unwrap();
        assert_eq!(y, y_ref, "{xs:?} k{k} s{stride} p{pad} W{bits}");
        // branch: down projection of the same rows in either order
        let mut t_ref = vec![0f32; m * r];
        branch.down_rows(&cols, &mut t_ref);
        for (a, b) in t.unwrap().iter().zip(&t_ref) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
    let mut x = vec![0.5f32; 2 * 3 * 4 * 4];
    x[7] = f32::NAN;
    let act = ActQuant::dynamic(4).unwrap().per_row();
    let e = conv::im2col_dynamic_hwc(
        &x,
        [2, 3, 4, 4],
        3,
        3,
        &Conv2dParams::new([1; 2], [1; 2]),
        &act,
        None,
        1,
    );
    assert!(matches!(e, Err(dmq_kernels::KernelError::NonFinite { .. })));
}
