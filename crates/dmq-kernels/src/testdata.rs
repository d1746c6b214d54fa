//! Deterministic inputs for benchmarks, examples and tests: pseudo-random floats and their
//! per-row quantized exports, so every measurement of a kernel runs on the same operands.

use dmq_quant::{AffineParams, QuantSpec, QuantizedTensor, RangeInit, init_params};

use crate::error::{Result, shape_err};

/// `n` pseudo-random floats in `[-1, 1)` from an xorshift stream seeded by `seed`.
pub fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Quantizes the rows of `w[n, k]` per output channel at `bits`.
///
/// `bits >= 2`: unsigned asymmetric min/max ranges (dmq-quant's [`RangeInit::Max`]).
/// `bits == 1`: the binary export, code 1 for `w >= 0`, Δ = 2·mean|w_row| and z = 0.5,
/// so that the dequantized value is `±mean|w_row|` (XNOR-Net's scaled sign).
pub fn quantize_rows(w: &[f32], n: usize, k: usize, bits: u32) -> Result<QuantizedTensor> {
    if w.len() != n * k {
        return Err(shape_err(
            format!("{} values ([{n}, {k}])", n * k),
            w.len().to_string(),
            "quantize_rows",
        ));
    }
    if bits == 1 {
        let codes: Vec<u8> = w.iter().map(|&v| u8::from(v >= 0.0)).collect();
        let delta = w
            .chunks(k)
            .map(|r| 2.0 * (r.iter().map(|v| v.abs()).sum::<f32>() / k as f32).max(1e-6))
            .collect();
        let params = AffineParams {
            spec: QuantSpec::int(1)?.per_channel(0),
            delta,
            zero: vec![0.5; n],
        };
        return Ok(QuantizedTensor::from_codes(&codes, &[n, k], params)?);
    }
    let spec = QuantSpec::int(bits)?.per_channel(0);
    let params = init_params(w, &[n, k], &spec, &RangeInit::Max)?;
    Ok(QuantizedTensor::quantize(w, &[n, k], &params)?)
}
