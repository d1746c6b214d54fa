//! Packed export of a quantized model's layers and its size in bytes.
//!
//! The export ([`export_layers`]) holds, per quantizable layer: the weight as packed integer
//! codes with its Δ and z per output channel (`<layer>.weight`, a [`dmq_quant::QuantizedTensor`]), or
//! as f32 when the layer is FP; the bias as f32; the activation parameters per set
//! (`<layer>.<a|b>.delta.<set>` / `.zero.<set>`, f32) with the step → set map in the
//! metadata. Parameters outside the quantizable layers (norms, embedding tables) stay f32
//! and are counted by [`model_bytes`].

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::Tensor;
use dmq_models::layers::LayerRef;
use dmq_models::{Denoiser, HostTensor, try_for_each_layer};
use dmq_quant::{ActQuantizer, QuantizedFile, Quantizer, WeightQuantizer};

use crate::error::{CalibError, Result};

fn put_weight<const D: usize>(
    f: &mut QuantizedFile,
    name: &str,
    w: Tensor<D>,
    q: Option<&WeightQuantizer>,
) -> Result<()> {
    match q {
        Some(q) => {
            let qt = q.export(w, 0).map_err(|e| CalibError::BadLayerSpec {
                layer: name.into(),
                what: "a packed export".into(),
                reason: e.to_string(),
            })?;
            f.quantized.insert(format!("{name}.weight"), qt);
        }
        None => {
            let h = HostTensor::from_tensor(&w);
            f.float.insert(format!("{name}.weight"), (h.shape, h.data));
        }
    }
    Ok(())
}

fn put_act(
    f: &mut QuantizedFile,
    name: &str,
    op: &str,
    q: &Option<ActQuantizer>,
    num_steps: usize,
) -> Result<()> {
    let Some(q) = q else { return Ok(()) };
    if let ActQuantizer::Dynamic(d) = q {
        // no parameter sets: the range is measured per call
        f.metadata.insert(
            format!("{name}.{op}.dynamic"),
            serde_json::to_string(&d.dynamic_spec()).expect("spec serialises"),
        );
        return Ok(());
    }
    // One parameter set per distinct step mapping: read each step's parameters and keep the
    // distinct ones in order (exact for shared, per-step and grouped quantizers).
    let mut sets: Vec<dmq_quant::AffineParams> = Vec::new();
    let mut map = Vec::with_capacity(num_steps.max(1));
    for s in 0..num_steps.max(1) {
        let p = match q.affine_params(s) {
            Ok(p) => p,
            Err(_) if s > 0 => break, // a shared quantizer answers every step; a timed one stops at its length
            Err(e) => return Err(e.into()),
        };
        let k = match sets.iter().position(|x| *x == p) {
            Some(k) => k,
            None => {
                sets.push(p);
                sets.len() - 1
            }
        };
        map.push(k);
    }
    for (i, p) in sets.iter().enumerate() {
        f.float.insert(
            format!("{name}.{op}.delta.{i}"),
            (vec![p.delta.len()], p.delta.clone()),
        );
        f.float.insert(
            format!("{name}.{op}.zero.{i}"),
            (vec![p.zero.len()], p.zero.clone()),
        );
    }
    f.metadata.insert(
        format!("{name}.{op}.spec"),
        serde_json::to_string(&q.spec()).expect("spec serialises"),
    );
    f.metadata.insert(
        format!("{name}.{op}.step_to_set"),
        serde_json::to_string(&map).expect("map"),
    );
    Ok(())
}

/// Packed export of every quantizable layer (see the module docs); `num_steps` is the number
/// of sampling steps whose activation parameters are exported.
pub fn export_layers<M: Denoiser + ?Sized>(model: &M, num_steps: usize) -> Result<QuantizedFile> {
    let mut f = QuantizedFile::default();
    try_for_each_layer(model, |layer| -> Result<()> {
        let name = layer.name().to_string();
        match layer {
            LayerRef::Linear(l) => {
                put_weight(&mut f, &name, l.weight.val(), l.w_quant.as_ref())?;
                put_vectors(&mut f, &name, &l.bias, &l.smooth);
                put_low_rank(&mut f, &name, l.low_rank.as_ref());
                put_act(&mut f, &name, "a", &l.a_quant, num_steps)
            }
            LayerRef::Conv2d(l) => {
                put_weight(&mut f, &name, l.weight.val(), l.w_quant.as_ref())?;
                put_vectors(&mut f, &name, &l.bias, &l.smooth);
                put_low_rank(&mut f, &name, l.low_rank.as_ref());
                put_act(&mut f, &name, "a", &l.a_quant, num_steps)
            }
            LayerRef::Matmul(m) => {
                put_act(&mut f, &name, "a", &m.a_quant, num_steps)?;
                put_act(&mut f, &name, "b", &m.b_quant, num_steps)
            }
        }
    })?;
    f.metadata.insert("dmq.export".into(), "layers.v1".into());
    Ok(f)
}

/// A dense layer's float vectors: `<name>.bias` and SmoothQuant's `<name>.smooth`.
fn put_vectors(
    f: &mut QuantizedFile,
    name: &str,
    bias: &Option<burn::module::Param<Tensor<1>>>,
    smooth: &Option<burn::module::Param<Tensor<1>>>,
) {
    for (key, v) in [("bias", bias), ("smooth", smooth)] {
        if let Some(p) = v {
            let h = HostTensor::from_tensor(&p.val());
            f.float.insert(format!("{name}.{key}"), (h.shape, h.data));
        }
    }
}

/// SVDQuant's branch as `<name>.low_rank.{down,up}` at 16 bits (its values are f16 already).
fn put_low_rank(f: &mut QuantizedFile, name: &str, lr: Option<&dmq_models::layers::LowRank>) {
    if let Some(lr) = lr {
        for (key, p) in [("down", &lr.down), ("up", &lr.up)] {
            let h = HostTensor::from_tensor(&p.val());
            f.half
                .insert(format!("{name}.low_rank.{key}"), (h.shape, h.data));
        }
    }
}

/// Parameters of the quantizable layers' quantizers (AdaRound V, Δ, z...): training state,
/// not model weights.
fn quantizer_params<M: Denoiser + ?Sized>(model: &M) -> usize {
    let mut n = 0;
    model.for_each_layer(&mut |layer| match layer {
        LayerRef::Linear(l) => {
            n += l.w_quant.as_ref().map_or(0, |q| q.num_params())
                + l.a_quant.as_ref().map_or(0, |q| q.num_params());
        }
        LayerRef::Conv2d(l) => {
            n += l.w_quant.as_ref().map_or(0, |q| q.num_params())
                + l.a_quant.as_ref().map_or(0, |q| q.num_params());
        }
        LayerRef::Matmul(m) => {
            n += m.a_quant.as_ref().map_or(0, |q| q.num_params())
                + m.b_quant.as_ref().map_or(0, |q| q.num_params());
        }
    });
    n
}

/// Bytes of the deployed model: the packed layer export plus every other parameter at f32.
pub fn model_bytes<M: Denoiser + Module>(model: &M, num_steps: usize) -> Result<usize> {
    let f = export_layers(model, num_steps)?;
    let layer_params: usize = f.quantized.values().map(|q| q.numel()).sum::<usize>()
        + f.float
            .iter()
            .filter(|(k, _)| k.ends_with(".weight") || k.ends_with(".bias"))
            .map(|(_, (_, d))| d.len())
            .sum::<usize>()
        + f.half.values().map(|(_, d)| d.len()).sum::<usize>();
    let others = model
        .num_params()
        .saturating_sub(quantizer_params(model) + layer_params);
    Ok(f.payload_bytes() + 4 * others)
}

/// Layers with an SVDQuant branch and the branch's multiply-accumulates per MAC of the
/// layer ([`dmq_models::layers::LowRank::macs_ratio`]); the branch runs at 16 × 16 bits.
pub fn branch_macs_ratio<M: Denoiser + ?Sized>(model: &M) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    model.for_each_layer(&mut |layer| {
        let lr = match layer {
            LayerRef::Linear(l) => l.low_rank.as_ref(),
            LayerRef::Conv2d(l) => l.low_rank.as_ref(),
            LayerRef::Matmul(_) => None,
        };
        if let Some(lr) = lr {
            out.insert(layer.name().to_string(), lr.macs_ratio());
        }
    });
    out
}

/// Per-layer bits for the BitOPs cost model: `(weight, input)` bits of linear/conv layers,
/// `(left, right)` of matmuls (32 = FP). SVDQuant's branches are counted by
/// [`branch_macs_ratio`].
pub fn layer_bits<M: Denoiser + ?Sized>(model: &M) -> BTreeMap<String, (u32, u32)> {
    let mut out = BTreeMap::new();
    let bits = |s: Option<dmq_quant::QuantSpec>| s.map_or(32, |s| s.cost_bits());
    model.for_each_layer(&mut |layer| {
        let v = match layer {
            LayerRef::Linear(l) => (
                bits(l.w_quant.as_ref().map(|q| q.spec())),
                bits(l.a_quant.as_ref().map(|q| q.spec())),
            ),
            LayerRef::Conv2d(l) => (
                bits(l.w_quant.as_ref().map(|q| q.spec())),
                bits(l.a_quant.as_ref().map(|q| q.spec())),
            ),
            LayerRef::Matmul(m) => (
                bits(m.a_quant.as_ref().map(|q| q.spec())),
                bits(m.b_quant.as_ref().map(|q| q.spec())),
            ),
        };
        out.insert(layer.name().to_string(), v);
    });
    out
}
