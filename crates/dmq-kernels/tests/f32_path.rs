//! The f32 entry point (`gemm_f32_out`: quantize activations → integer GEMM → dequantize),
//! per weight format (8, 4, 3, 2, 1 bits; signed/unsigned; per tensor / channel / group)
//! and activation quantizer (A8, A4; dynamic per tensor / per row, symmetric, static):
//!
//! (a) every SIMD path, thread split and k-blocking == `gemm_f32_out_ref` **bitwise**: the
//!     integer accumulators are exact and the epilogue does the same f32 operations;
//! (b1) the reference against an f64 matmul of the dequantized operands within the pinned
//!     rounding budget `E1` below;
//! (b2) against the f32 matmul of the *unquantized* operands within the quantization budget
//!     `E2` below (uniform grids without clipping);
//! (c) the GEMM against row-by-row GEMV calls (bitwise, for per-row and static grids).

use crate::common;

use common::{Rng, gemm_options};
use dmq_kernels::act_quant::quantize_ref;
use dmq_kernels::{
    ActQuant, ActRange, GemmOptions, Isa, PackedWeights, gemm_f32_out_ref, gemm_f32_out_with,
};
use dmq_quant::{AffineParams, QuantSpec, QuantizedTensor};
use proptest::prelude::*;

const EPS: f64 = f32::EPSILON as f64 / 2.0; // unit roundoff 2^-24

#[derive(Clone, Copy, Debug)]
enum WGran {
    Tensor,
    Channel,
    Group(usize),
}

/// A weight `[n, k]` quantized by `dmq-quant` with min/max ranges (no clipping).
fn quantized_weight(
    rng: &mut Rng,
    n: usize,
    k: usize,
    bits: u32,
    signed: bool,
    gran: WGran,
) -> (Vec<f32>, QuantizedTensor) {
    let w = rng.floats(n * k, 0.2);
    let shape = [n, k];
    if bits == 1 {
        // BinaryQuantizer's export: c = [w ≥ 0], Δ = 2σ, z = ½ (value σ·(2c − 1)).
        let codes: Vec<u8> = w.iter().map(|&v| (v >= 0.0) as u8).collect();
        let sigma: Vec<f32> = w
            .chunks(k)
            .map(|r| r.iter().map(|v| v.abs()).sum::<f32>() / k as f32 + 1e-3)
            .collect();
        let params = AffineParams {
            spec: QuantSpec::int(1).unwrap().per_channel(0),
            delta: sigma.iter().map(|s| 2.0 * s).collect(),
            zero: vec![0.5; n],
        };
        return (
            w,
            QuantizedTensor::from_codes(&codes, &shape, params).unwrap(),
        );
    }
    let mut spec = if signed {
        QuantSpec::signed_symmetric(bits).unwrap()
    } else {
        QuantSpec::int(bits).unwrap()
    };
    let (groups_per_row, g) = match gran {
        WGran::Tensor => (1, n * k),
        WGran::Channel => {
            spec = spec.per_channel(0);
            (1, k)
        }
        WGran::Group(g) => {
            spec = spec.per_group(1, g);
            (k / g, g)
        }
    };
    let (qmin, qmax) = spec.int_range().unwrap();
    let chunks: Vec<&[f32]> = match gran {
        WGran::Tensor => vec![&w[..]],
        _ => w.chunks(g).collect(),
    };
    let _ = groups_per_row;
    let (mut delta, mut zero) = (Vec::new(), Vec::new());
    for c in chunks {
        let lo = c.iter().cloned().fold(f32::INFINITY, f32::min);
        let hi = c.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        if signed {
            let d = lo.abs().max(hi.abs()) / qmax as f32;
            delta.push(d.max(1e-6));
            zero.push(0.0);
        } else {
            let d = ((hi - lo) / (qmax - qmin) as f32).max(1e-6);
            delta.push(d);
            zero.push((qmin as f32 - lo / d).round_ties_even());
        }
    }
    let params = AffineParams { spec, delta, zero };
    let qt = QuantizedTensor::quantize(&w, &shape, &params).unwrap();
    (w, qt)
}

fn act_quants() -> Vec<ActQuant> {
    vec![
        ActQuant::dynamic(8).unwrap(),
        ActQuant::dynamic(8).unwrap().per_row(),
        ActQuant::dynamic_symmetric(8).unwrap(),
        ActQuant::dynamic(4).unwrap(),
        ActQuant::dynamic_symmetric(4).unwrap().per_row(),
        ActQuant::fixed(8, 0.01, 128.0, false).unwrap(),
        ActQuant::fixed(4, 0.1, 0.0, true).unwrap(),
        ActQuant::dynamic(6).unwrap(),
    ]
}

/// Per-element weight parameters (Δ, z_c, code) straight from the QuantizedTensor.
fn weight_terms(qt: &QuantizedTensor) -> (Vec<f64>, Vec<f64>, Vec<u8>, Vec<usize>) {
    let gi = qt.params.group_index(&qt.shape).unwrap();
    let (qmin, _) = qt.params.spec.int_range().unwrap();
    let dw = gi.iter().map(|&p| qt.params.delta[p] as f64).collect();
    let zc = gi
        .iter()
        .map(|&p| qt.params.zero[p] as f64 - qmin as f64)
        .collect();
    (dw, zc, qt.codes().unwrap(), gi)
}

fn run_case(
    m: usize,
    n: usize,
    k: usize,
    bits: u32,
    signed: bool,
    gran: WGran,
    bias: bool,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let (w, qt) = quantized_weight(&mut rng, n, k, bits, signed, gran);
    let x = rng.floats(m * k, 1.0);
    let b: Option<Vec<f32>> = bias.then(|| rng.floats(n, 0.5));
    let packed = PackedWeights::from_quantized(&qt).unwrap();
    let groups = packed.groups() as f64;
    let (dw, zc, codes, gi) = weight_terms(&qt);
    for act in act_quants() {
        let want = gemm_f32_out_ref(&x, &qt, &act, b.as_deref()).unwrap();
        // (a) bitwise equality on every path.
        for opts in gemm_options() {
            let got = gemm_f32_out_with(&x, &packed, &act, b.as_deref(), &opts).unwrap();
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(g, w)| g.to_bits() == w.to_bits()),
                "{opts:?} {act:?} bits={bits} {gran:?} m={m} n={n} k={k}"
            );
        }
        // (b1) rounding budget against the dequantized operands in f64:
        //   E1 = (4 + groups)·ε·(|b| + Σ_g |Δx·Δw_g|·Σ_{k∈g} (c_k + 2|z_c,g|)·|q_k − z_x|).
        let acts = quantize_ref(&x, m, k, &act).unwrap();
        for i in 0..m {
            let (dx, zx) = (acts.delta[i] as f64, acts.zero[i] as f64);
            let q = acts.row(i);
            for j in 0..n {
                let bj = b.as_ref().map_or(0.0, |b| b[j] as f64);
                let (mut exact, mut scale) = (bj, bj.abs());
                for kk in 0..k {
                    let e = j * k + kk;
                    let xq = (q[kk] as f64 - zx) * dx;
                    let wq = (codes[e] as f64 - zc[e]) * dw[e];
                    exact += xq * wq;
                    scale += (dx * dw[e]).abs()
                        * (codes[e] as f64 + 2.0 * zc[e].abs())
                        * (q[kk] as f64 - zx).abs();
                }
                let e1 = (4.0 + groups) * EPS * scale + 1e-30;
                let got = want[i * n + j] as f64;
                assert!(
                    (got - exact).abs() <= e1,
                    "(b1) {act:?} bits={bits} {gran:?}: {got} vs {exact}, budget {e1}"
                );
                // (b2) quantization budget against the unquantized operands (uniform weight
                // grids with min/max ranges, dynamic activation grids: nothing is clipped,
                // so |x̂ − x| ≤ Δx and |ŵ − w| ≤ Δw):
                //   E2 = Σ_k (|x_k|·Δw_k + |ŵ_k|·Δx) + E1.
                if bits >= 2 && matches!(act.range(), ActRange::Dynamic { .. }) {
                    let (mut fp, mut e2) = (bj, e1);
                    for kk in 0..k {
                        let e = j * k + kk;
                        let xv = x[i * k + kk] as f64;
                        fp += xv * w[e] as f64;
                        let wq = (codes[e] as f64 - zc[e]) * dw[e];
                        e2 += xv.abs() * dw[e] + wq.abs() * dx;
                    }
                    assert!(
                        (got - fp).abs() <= e2,
                        "(b2) {act:?} bits={bits} {gran:?}: {got} vs fp {fp}, budget {e2}"
                    );
                }
            }
        }
        let _ = &gi;
        // (c) row-by-row GEMV == GEMM (grids that do not depend on the other rows).
        let rowwise = !matches!(act.range(), ActRange::Dynamic { .. })
            || act.granularity() == dmq_kernels::ActGranularity::PerRow;
        if rowwise {
            let opts = GemmOptions::default();
            let full = gemm_f32_out_with(&x, &packed, &act, b.as_deref(), &opts).unwrap();
            for i in 0..m {
                let row =
                    gemm_f32_out_with(&x[i * k..(i + 1) * k], &packed, &act, b.as_deref(), &opts)
                        .unwrap();
                assert_eq!(row, full[i * n..(i + 1) * n], "(c) row {i} {act:?}");
            }
        }
    }
}

fn gran_strategy() -> impl Strategy<Value = (WGran, usize)> {
    prop_oneof![
        (1usize..200).prop_map(|k| (WGran::Tensor, k)),
        (1usize..300).prop_map(|k| (WGran::Channel, k)),
        (prop::sample::select(vec![4usize, 8, 12, 32]), 1usize..8)
            .prop_map(|(g, c)| (WGran::Group(g), g * c)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn w8_w4_w2_w1_against_reference_and_budgets(
        m in 1usize..20, n in 1usize..45, (gran, k) in gran_strategy(),
        bits in prop::sample::select(vec![8u32, 7, 4, 3, 2, 1]), signed in any::<bool>(),
        bias in any::<bool>(), seed: u64,
    ) {
        let gran = if bits == 1 { WGran::Channel } else { gran };
        run_case(m, n, k, bits, signed && bits > 1, gran, bias, seed);
    }
}

#[test]
fn fixed_cases() {
    for (bits, gran, signed) in [
        (8, WGran::Channel, false),
        (8, WGran::Group(32), true),
        (4, WGran::Channel, false),
        (4, WGran::Group(16), false),
        (2, WGran::Tensor, false),
        (1, WGran::Channel, false),
    ] {
        run_case(17, 37, 128, bits, signed, gran, true, bits as u64);
        run_case(1, 70, 1152, bits, signed, gran, false, 100 + bits as u64);
    }
}

/// A conv weight `[C_out, C_in, kh, kw]` runs flattened to `[C_out, C_in·kh·kw]`.
#[test]
fn conv_shaped_weights_flatten() {
    let mut rng = Rng::new(21);
    let (cout, cin) = (6, 5);
    let w = rng.floats(cout * cin * 9, 0.3);
    let params = AffineParams {
        spec: QuantSpec::int(4).unwrap().per_channel(0),
        delta: vec![0.05; cout],
        zero: vec![8.0; cout],
    };
    let qt4 = QuantizedTensor::quantize(&w, &[cout, cin, 3, 3], &params).unwrap();
    let qt2 = QuantizedTensor::quantize(&w, &[cout, cin * 9], &params).unwrap();
    let p4 = PackedWeights::from_quantized(&qt4).unwrap();
    let p2 = PackedWeights::from_quantized(&qt2).unwrap();
    assert_eq!(p4.shape(), &[cout, cin, 3, 3]);
    let x = rng.floats(7 * cin * 9, 1.0);
    let act = ActQuant::dynamic(8).unwrap();
    for isa in Isa::available() {
        let opts = GemmOptions::default().with_isa(isa);
        let y4 = gemm_f32_out_with(&x, &p4, &act, None, &opts).unwrap();
        let y2 = gemm_f32_out_with(&x, &p2, &act, None, &opts).unwrap();
        assert_eq!(y4, y2);
        assert_eq!(y4, gemm_f32_out_ref(&x, &qt4, &act, None).unwrap());
    }
}

/// Static activation parameters reproduce dmq-quant's quantizer exactly.
#[test]
fn static_act_params_match_dmq_quant() {
    let mut rng = Rng::new(4);
    let (m, k) = (9, 77);
    let x = rng.floats(m * k, 2.0);
    let params = AffineParams {
        spec: QuantSpec::int(8).unwrap(),
        delta: vec![0.02],
        zero: vec![131.0],
    };
    let want = QuantizedTensor::quantize(&x, &[m, k], &params)
        .unwrap()
        .dequantize()
        .unwrap();
    let aq = ActQuant::from_params(&params).unwrap();
    for f in [dmq_kernels::act_quant::quantize, quantize_ref] {
        let got = f(&x, m, k, &aq).unwrap().dequantize();
        assert_eq!(got, want);
    }
}
