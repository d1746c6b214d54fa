//! Reading the layer export of `dmq-calib` (`export_layers`, format `layers.v1`): weights,
//! biases and activation parameter sets with their step → set map.

use dmq_quant::{AffineParams, DynamicSpec, Limits, QuantSpec, QuantizedFile, QuantizedTensor};

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

/// SmoothQuant's per-input-channel divisor of `layer` (its weight is already folded).
pub fn smooth<'a>(file: &'a QuantizedFile, layer: &str) -> Option<&'a [f32]> {
    file.float
        .get(&format!("{layer}.smooth"))
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
    /// Reads `<layer>.<op>.{spec, step_to_set}` and `<layer>.<op>.{delta,zero}.<i>`, with
    /// sizes checked against [`Limits::current`].
    pub fn read(file: &QuantizedFile, layer: &str, op: &str) -> Result<Option<Self>> {
        Self::read_with_limits(file, layer, op, &Limits::current())
    }

    /// [`ActSets::read`] with explicit [`Limits`].
    ///
    /// The spec is checked (bits 1..=8) and the step → set map before anything of its size
    /// is allocated: at most `limits.max_steps` steps, every set index below the step count
    /// (so there are never more sets than steps), and every set present with valid (Δ, z).
    /// Errors name the file and the entry.
    pub fn read_with_limits(
        file: &QuantizedFile,
        layer: &str,
        op: &str,
        limits: &Limits,
    ) -> Result<Option<Self>> {
        let origin = file.origin_name();
        let spec_key = format!("{layer}.{op}.spec");
        let Some(spec) = file.metadata.get(&spec_key) else {
            return Ok(None);
        };
        let spec = QuantSpec::from_json(spec, origin, &spec_key)?;
        let map_key = format!("{layer}.{op}.step_to_set");
        let map = file
            .metadata
            .get(&map_key)
            .ok_or_else(|| export_err(origin, &map_key, "missing (the spec is there)"))?;
        // u64 so that no index overflows; the JSON text bounds the list's length.
        let raw: Vec<u64> = serde_json::from_str(map)
            .map_err(|e| export_err(origin, &map_key, format!("not a list of set indices: {e}")))?;
        let steps = raw.len();
        if steps == 0 {
            return Err(export_err(origin, &map_key, "empty step → set map"));
        }
        limits.check_steps(steps as u64, origin, &map_key)?;
        let mut step_to_set = Vec::with_capacity(steps);
        for (step, &set) in raw.iter().enumerate() {
            if set >= steps as u64 {
                return Err(export_err(
                    origin,
                    &map_key,
                    format!(
                        "step {step} names set {set}, but a map of {steps} steps can name at \
                         most {steps} sets"
                    ),
                ));
            }
            step_to_set.push(set as usize);
        }
        let n_sets = step_to_set.iter().max().map_or(0, |m| m + 1);
        let mut sets = Vec::with_capacity(n_sets);
        for i in 0..n_sets {
            let get = |what: &str| {
                let key = format!("{layer}.{op}.{what}.{i}");
                file.float
                    .get(&key)
                    .map(|(_, d)| d.clone())
                    .ok_or_else(|| export_err(origin, key, "missing (named by the step → set map)"))
            };
            let p = AffineParams {
                spec,
                delta: get("delta")?,
                zero: get("zero")?,
            };
            p.validate(&format!("{origin}: {layer}.{op} set {i}"))?;
            sets.push(p);
        }
        Ok(Some(Self { sets, step_to_set }))
    }

    /// Number of exported steps.
    pub fn num_steps(&self) -> usize {
        self.step_to_set.len()
    }
}

/// The dynamic (per-call range) quantizer of operand `op` of `layer`
/// (`<layer>.<op>.dynamic`), if the export has one.
pub fn dynamic(file: &QuantizedFile, layer: &str, op: &str) -> Result<Option<DynamicSpec>> {
    let key = format!("{layer}.{op}.dynamic");
    let Some(s) = file.metadata.get(&key) else {
        return Ok(None);
    };
    let spec: DynamicSpec = serde_json::from_str(s).map_err(|e| {
        export_err(
            file.origin_name(),
            &key,
            format!("not a dynamic quantizer spec: {e}"),
        )
    })?;
    let origin = file.origin_name();
    Ok(Some(spec.checked(&format!("{origin}: {key}"))?))
}

/// SVDQuant's branch of a layer: `down` (L2) `[r, d_in]` and `up` (L1) `[d_out, r]`.
#[derive(Clone, Copy, Debug)]
pub struct LowRankEntry<'a> {
    /// Rank r.
    pub rank: usize,
    /// L2, row-major `[r, d_in]`.
    pub down: &'a [f32],
    /// L1, row-major `[d_out, r]`.
    pub up: &'a [f32],
}

/// `<layer>.low_rank.{down,up}` checked against the layer's `d_in` / `d_out` (flattened
/// `C_in·k·k` for a convolution): both present or neither, rank-2 shapes that chain.
pub fn low_rank<'a>(
    file: &'a QuantizedFile,
    layer: &str,
    d_in: usize,
    d_out: usize,
) -> Result<Option<LowRankEntry<'a>>> {
    let origin = file.origin_name();
    let (dk, uk) = (
        format!("{layer}.low_rank.down"),
        format!("{layer}.low_rank.up"),
    );
    let (down, up) = match (file.half.get(&dk), file.half.get(&uk)) {
        (None, None) => return Ok(None),
        (Some(d), Some(u)) => (d, u),
        (Some(_), None) => {
            return Err(export_err(
                origin,
                &uk,
                "missing (the down factor is there)",
            ));
        }
        (None, Some(_)) => return Err(export_err(origin, &dk, "missing (the up factor is there)")),
    };
    let (&[r, di], &[d_o, r2]) = (&down.0[..], &up.0[..]) else {
        return Err(export_err(
            origin,
            &dk,
            format!("shapes {:?} and {:?} are not two matrices", down.0, up.0),
        ));
    };
    if di != d_in || d_o != d_out || r != r2 || r == 0 {
        return Err(export_err(
            origin,
            &dk,
            format!(
                "factors [{r}, {di}] and [{d_o}, {r2}] do not make the layer's [{d_out}, {d_in}] weight"
            ),
        ));
    }
    Ok(Some(LowRankEntry {
        rank: r,
        down: &down.1,
        up: &up.1,
    }))
}
