//! Weight-only quantization of a text-to-image pipeline's text encoder and VAE.
//!
//! The UNet runs once per step (twice under CFG), the text encoder and the VAE decoder once
//! per image, so the methods quantize the UNet and keep the other two FP by default. They
//! can still dominate the file (the embedded `t2i-fmnist`: 0.7 MiB of 4-bit UNet codes against
//! 4.2 MiB of f32 text encoder and VAE), so [`ComponentBits`] quantizes their weights:
//!
//! ```text
//! every parameter of rank ≥ 2 (linear weights [O, I], conv kernels [O, I, kh, kw],
//! token and position embeddings [V, D]):
//!     Δ_o = max_i |W[o, i]| / (2^(b−1) − 1)        one step per output row (axis 0)
//!     q   = clamp(round(W / Δ_o), −(2^(b−1) − 1), 2^(b−1) − 1)   signed, symmetric
//! biases and norm scales (rank 1): f32
//! ```
//!
//! The arithmetic stays FP (the weights are dequantized once at load, W{b}A32): the gain is
//! bytes, not BitOPs. [`quantize_in_place`] applies the rounding to a model in memory, so the
//! pipeline that calibrates and samples is the one the file holds; the file stores the codes
//! (`docs/format.md` §11).

use std::collections::HashMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use dmq_quant::qtensor::{AffineParams, QuantizedTensor};
use dmq_quant::spec::QuantSpec;
use serde::{Deserialize, Serialize};

use crate::error::{Result, file_err};
use crate::pipeline_file::{FloatEntry, float_bytes, float_entries};

/// Weight bit-widths of the FP components; `None` keeps a component in f32 (the default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentBits {
    /// The text encoder's weight bits.
    pub text_encoder: Option<u32>,
    /// The VAE's weight bits (encoder and decoder).
    pub vae: Option<u32>,
}

/// Bit-widths a component's weights may take.
pub const COMPONENT_BITS: std::ops::RangeInclusive<u32> = 2..=8;

impl ComponentBits {
    /// Checks each width against [`COMPONENT_BITS`]; `origin` and the component name the
    /// error.
    pub fn validate(&self, origin: &Path) -> Result<()> {
        for (name, bits) in [("text_encoder", self.text_encoder), ("vae", self.vae)] {
            if let Some(b) = bits
                && !COMPONENT_BITS.contains(&b)
            {
                return Err(file_err(
                    origin,
                    name,
                    format!(
                        "{b}-bit weights: components take {}..={} bits",
                        COMPONENT_BITS.start(),
                        COMPONENT_BITS.end()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether both components are f32.
    pub fn is_fp(&self) -> bool {
        self.text_encoder.is_none() && self.vae.is_none()
    }
}

/// Whether a parameter of `shape` is quantized (rank ≥ 2 with at least one element).
pub fn is_quantized_weight(shape: &[usize]) -> bool {
    shape.len() >= 2 && shape.iter().all(|&d| d > 0)
}

/// The b-bit codes of one weight, one step per output row (see the module docs). Δ of an
/// all-zero row is 1 (its codes are 0 either way).
pub fn quantize_weight(
    data: &[f32],
    shape: &[usize],
    bits: u32,
    origin: &Path,
    key: &str,
) -> Result<QuantizedTensor> {
    let spec = QuantSpec::signed_symmetric(bits)
        .map_err(|e| file_err(origin, key, e.to_string()))?
        .per_channel(0);
    let rows = shape[0];
    let per = data.len() / rows.max(1);
    let qmax = ((1u32 << (bits - 1)) - 1) as f32;
    let delta: Vec<f32> = data
        .chunks(per.max(1))
        .map(|row| {
            let m = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            if m > 0.0 { m / qmax } else { 1.0 }
        })
        .collect();
    let params = AffineParams {
        spec,
        zero: vec![0.0; delta.len()],
        delta,
    };
    QuantizedTensor::quantize(data, shape, &params)
        .map_err(|e| file_err(origin, key, e.to_string()))
}

/// The parameters of `model` as `(key, shape, values)`, with the weights quantized to `bits`
/// (dequantized values) when given.
fn rounded_entries<M: Module>(
    model: &M,
    bits: Option<u32>,
    origin: &Path,
) -> Result<Vec<FloatEntry>> {
    let bytes = dmq_models::io::weights_to_bytes(model, HashMap::new())?;
    let mut entries = float_entries(&bytes, origin)?;
    if let Some(b) = bits {
        for (key, shape, data) in &mut entries {
            if is_quantized_weight(shape) {
                *data = quantize_weight(data, shape, b, origin, key)?
                    .dequantize()
                    .map_err(|e| file_err(origin, key.as_str(), e.to_string()))?;
            }
        }
    }
    Ok(entries)
}

/// `model` with its weights rounded to `bits` (dequantized: what a file written with these
/// bits reads back); unchanged for `None`.
pub fn quantize_in_place<M: Module>(model: M, bits: Option<u32>, device: &Device) -> Result<M> {
    if bits.is_none() {
        return Ok(model);
    }
    let origin = Path::new("<memory>");
    let entries = rounded_entries(&model, bits, origin)?;
    Ok(dmq_models::io::load_weights_from_bytes(
        model,
        &float_bytes(&entries, origin)?,
        origin,
        device,
    )?)
}

/// The stored bytes of `model`'s parameters at `bits`: packed codes (3, 5, 6, 7 bits in the
/// next packed width, `dmq_quant::pack`) and one f32 (Δ, z) per row for
/// the quantized weights, 4 bytes per value for the rest.
pub fn storage_bytes<M: Module>(model: &M, bits: Option<u32>) -> Result<usize> {
    let bytes = dmq_models::io::weights_to_bytes(model, HashMap::new())?;
    let entries = float_entries(&bytes, Path::new("<memory>"))?;
    Ok(entries
        .iter()
        .map(|(_, shape, data)| match bits {
            Some(b) if is_quantized_weight(shape) => {
                dmq_quant::pack::packed_len(data.len(), b) + 8 * shape[0]
            }
            _ => 4 * data.len(),
        })
        .sum())
}
