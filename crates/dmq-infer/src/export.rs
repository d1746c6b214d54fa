//! Reading the layer export of `dmq-calib` (`export_layers`, format `layers.v1`): weights,
//! biases and activation parameter sets with their step → set map.

use dmq_quant::{AffineParams, QuantSpec, QuantizedFile, QuantizedTensor};

use crate::error::{Result, export_err};

/// The weight of a layer as exported: packed integer codes, or f32 for an FP layer.
#[derive(Clone, Copy, Debug)]
pub enum ExportedWeight<'a> {
    /// Integer codes with Δ, z.
    Quantized(&'a QuantizedTensor),
    /// An FP weight: shape and row-major values.
    Float(&'a [usize], &'a [f32]),
}

/// The weight `<layer>.weight`, if exported.
pub fn weight<'a>(file: &'a QuantizedFile, layer: &str) -> Option<ExportedWeight<'a>> {
    let key = format!("{layer}.weight");
    if let Some(q) = file.quantized.get(&key) {
        return Some(ExportedWeight::Quantized(q));
    }
    file.float
        .get(&key)
        .map(|(s, d)| ExportedWeight::Float(s.as_slice(), d.as_slice()))
}

/// The bias `<layer>.bias`, if exported (`[C_out]`).
pub fn bias<'a>(file: &'a QuantizedFile, layer: &str) -> Option<&'a [f32]> {
    file.float
        .get(&format!("{layer}.bias"))
        .map(|(_, d)| d.as_slice())
}

/// The activation parameter sets of operand `op` (`a`, or `b` for a matmul's right operand)
/// of `layer`: one [`AffineParams`] per set and the step → set map. `None` when the operand
/// is not quantized.
#[derive(Clone, Debug, PartialEq)]
pub struct ActSets {
    /// Parameter sets.
    pub sets: Vec<AffineParams>,
    /// Set index of every exported step.
    pub step_to_set: Vec<usize>,
}

impl ActSets {
    /// Reads `<layer>.<op>.{spec, step_to_set}` and `<layer>.<op>.{delta,zero}.<i>`.
    pub fn read(file: &QuantizedFile, layer: &str, op: &str) -> Result<Option<Self>> {
        let spec_key = format!("{layer}.{op}.spec");
        let Some(spec) = file.metadata.get(&spec_key) else {
            return Ok(None);
        };
        let spec: QuantSpec = serde_json::from_str(spec)
            .map_err(|e| export_err(&spec_key, format!("not a quantizer spec: {e}")))?;
        let map_key = format!("{layer}.{op}.step_to_set");
        let map = file
            .metadata
            .get(&map_key)
            .ok_or_else(|| export_err(&map_key, "missing (the spec is there)"))?;
        let step_to_set: Vec<usize> = serde_json::from_str(map)
            .map_err(|e| export_err(&map_key, format!("not a list of set indices: {e}")))?;
        let n_sets = step_to_set.iter().max().map_or(0, |m| m + 1);
        if n_sets == 0 {
            return Err(export_err(&map_key, "empty step → set map"));
        }
        let mut sets = Vec::with_capacity(n_sets);
        for i in 0..n_sets {
            let get = |what: &str| {
                let key = format!("{layer}.{op}.{what}.{i}");
                file.float
                    .get(&key)
                    .map(|(_, d)| d.clone())
                    .ok_or_else(|| export_err(key, "missing (named by the step → set map)"))
            };
            let p = AffineParams {
                spec,
                delta: get("delta")?,
                zero: get("zero")?,
            };
            p.validate(&format!("{layer}.{op} set {i}"))?;
            sets.push(p);
        }
        Ok(Some(Self { sets, step_to_set }))
    }

    /// Number of exported steps.
    pub fn num_steps(&self) -> usize {
        self.step_to_set.len()
    }
}
