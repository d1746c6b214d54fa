//! QuEST's layer-sensitivity sweep (paper Fig. 3; docs/algorithms.md §5): the model-output error
//! when only one layer is quantized, its weights or its input activations, per bit-width.
//! It is what justifies fine-tuning some layers and not others on a given model.
//!
//! `error = Σ ‖ε_q − ε_fp‖² / Σ ‖ε_fp‖²` over the ε channels of a strided subset of the
//! calibration set, with round-to-nearest weights (per output channel) or activations
//! (per tensor; both operands for attention matmuls) initialised on that subset.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use dmq_calib::{CalibSet, LayerPlan, QuantConfig, capture_inputs, concat_rows, quantize_weights};
use dmq_models::layers::{LayerKind, LayerMut};
use dmq_models::{Denoiser, ForwardCtx, Operand, layer_inventory};
use dmq_quant::{ActQuantizer, RangeInit, UniformQuantizer, init_params};
use serde::{Deserialize, Serialize};

use crate::error::{FinetuneError, Result};

/// Options of [`layer_sensitivity`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SensitivityOptions {
    /// Bit-widths swept.
    pub bits: Vec<u32>,
    /// Calibration entries (strided over the set) used for ranges and the error.
    pub samples: usize,
    /// Weight range method.
    pub weight_init: RangeInit,
    /// Activation range method.
    pub act_init: RangeInit,
    /// Activation values kept per layer for the range search.
    pub max_values: usize,
}

impl Default for SensitivityOptions {
    fn default() -> Self {
        Self {
            bits: vec![4, 6, 8],
            samples: 32,
            weight_init: RangeInit::mse(),
            act_init: RangeInit::mse(),
            max_values: 1 << 18,
        }
    }
}

/// One layer at one bit-width.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SensitivityRow {
    /// Layer name.
    pub layer: String,
    /// `linear`, `conv2d` or `matmul`.
    pub kind: String,
    /// Bit-width.
    pub bits: u32,
    /// Relative output error with only this layer's weights quantized (`None` for matmuls).
    pub weight_err: Option<f64>,
    /// Relative output error with only this layer's input activations quantized.
    pub act_err: f64,
}

fn kind_name(k: LayerKind) -> &'static str {
    match k {
        LayerKind::Linear => "linear",
        LayerKind::Conv2d => "conv2d",
        LayerKind::Matmul => "matmul",
    }
}

/// The sweep (module docs). `progress(done, total, layer)` is called after every layer.
pub fn layer_sensitivity<M: Denoiser + Module + Clone>(
    fp: &M,
    calib: &CalibSet,
    opts: &SensitivityOptions,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Vec<SensitivityRow>> {
    if opts.bits.is_empty() || opts.samples == 0 {
        return Err(FinetuneError::Option(
            "sensitivity sweep needs at least one bit-width and one sample".into(),
        ));
    }
    calib.validate()?;
    if calib.is_empty() {
        return Err(dmq_calib::CalibError::CalibSet("no entries".into()).into());
    }
    let fp = fp.clone().no_grad();
    let c = fp.info().in_channels;
    let n = calib.len();
    let k = opts.samples.min(n);
    let mut by_step: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for j in 0..k {
        let i = j * n / k;
        by_step.entry(calib.step[i]).or_default().push(i);
    }
    let chunks: Vec<(usize, Vec<usize>)> = by_step.into_iter().collect();
    let forward = |m: &M, step: usize, ids: &[usize]| -> Result<Tensor<4>> {
        let (x, t, class) = calib.batch(ids, device)?;
        let out = m.forward(x, t, class, &ForwardCtx::new(calib.step_context(step)))?;
        let [b, _, h, w] = out.dims();
        Ok(out.slice([0..b, 0..c, 0..h, 0..w]))
    };
    let mut reference = Vec::new();
    let mut norm = 0.0;
    let mut captured: BTreeMap<(String, Operand), Vec<dmq_models::HostTensor>> = BTreeMap::new();
    for (step, ids) in &chunks {
        let e = forward(&fp, *step, ids)?;
        norm += scalar(&e.clone().powi_scalar(2).sum());
        reference.push(e);
        for (key, v) in capture_inputs(&fp, calib, ids, ids.len(), device)? {
            captured.entry(key).or_default().extend(v);
        }
    }
    let rel_err = |m: &M| -> Result<f64> {
        let mut e = 0.0;
        for ((step, ids), r) in chunks.iter().zip(&reference) {
            e += scalar(&(forward(m, *step, ids)? - r.clone()).powi_scalar(2).sum());
        }
        Ok(e / norm.max(f64::MIN_POSITIVE))
    };
    let calls = layer_inventory(&fp, device)?;
    let mut per_bits: Vec<Vec<LayerPlan>> = Vec::new();
    for &b in &opts.bits {
        per_bits.push(QuantConfig::wa(Some(b), Some(b))?.resolve_calls(&calls)?);
    }
    let layers = per_bits[0].len();
    let mut rows = Vec::new();
    for li in 0..layers {
        let name = per_bits[0][li].name.clone();
        for (bi, &b) in opts.bits.iter().enumerate() {
            let plan = &per_bits[bi][li];
            let weight_err = if plan.kind == LayerKind::Matmul {
                None
            } else {
                let mut m = fp.clone();
                let only = LayerPlan {
                    act: None,
                    act_b: None,
                    ..plan.clone()
                };
                quantize_weights(&mut m, &[only], &opts.weight_init)?;
                Some(rel_err(&m)?)
            };
            let act_q =
                |op: Operand, spec: Option<dmq_quant::QuantSpec>| -> Result<Option<ActQuantizer>> {
                    let Some(spec) = spec else { return Ok(None) };
                    let parts =
                        captured
                            .get(&(name.clone(), op))
                            .ok_or_else(|| FinetuneError::Layer {
                                layer: name.clone(),
                                reason: "was not called on the calibration subset".into(),
                            })?;
                    let x = concat_rows(parts, opts.max_values, &name)?;
                    let p = init_params(&x.data, &x.shape, &spec, &opts.act_init)?;
                    Ok(Some(ActQuantizer::Uniform(UniformQuantizer::from_params(
                        &p, device,
                    )?)))
                };
            let mut m = fp.clone();
            let (qa, qb) = if plan.kind == LayerKind::Matmul {
                (
                    act_q(Operand::Left, plan.act)?,
                    act_q(Operand::Right, plan.act_b)?,
                )
            } else {
                (act_q(Operand::Input, plan.act)?, None)
            };
            let (mut qa, mut qb) = (Some(qa), Some(qb));
            m.for_each_layer_mut(&mut |layer| {
                if layer.name() != name {
                    return;
                }
                match layer {
                    LayerMut::Linear(l) => l.a_quant = qa.take().flatten(),
                    LayerMut::Conv2d(l) => l.a_quant = qa.take().flatten(),
                    LayerMut::Matmul(mm) => {
                        mm.a_quant = qa.take().flatten();
                        mm.b_quant = qb.take().flatten();
                    }
                }
            });
            rows.push(SensitivityRow {
                layer: name.clone(),
                kind: kind_name(plan.kind).into(),
                bits: b,
                weight_err,
                act_err: rel_err(&m)?,
            });
        }
        progress(li + 1, layers, &name);
    }
    Ok(rows)
}

fn scalar(t: &Tensor<1>) -> f64 {
    dmq_models::HostTensor::from_tensor(t)
        .data
        .first()
        .map_or(f64::NAN, |&v| f64::from(v))
}

/// Mean relative error per layer set: for each named `set` of layer names, the mean weight
/// and activation error at every bit-width (`(set, bits, mean weight err, mean act err)`).
pub fn sensitivity_by_set(
    rows: &[SensitivityRow],
    sets: &[(&str, &[String])],
) -> Vec<(String, u32, f64, f64)> {
    let mut out = Vec::new();
    let mut bits: Vec<u32> = rows.iter().map(|r| r.bits).collect();
    bits.sort_unstable();
    bits.dedup();
    for (label, names) in sets {
        for &b in &bits {
            let sel: Vec<&SensitivityRow> = rows
                .iter()
                .filter(|r| r.bits == b && names.contains(&r.layer))
                .collect();
            if sel.is_empty() {
                continue;
            }
            let w: Vec<f64> = sel.iter().filter_map(|r| r.weight_err).collect();
            let a: f64 = sel.iter().map(|r| r.act_err).sum::<f64>() / sel.len() as f64;
            let wm = if w.is_empty() {
                f64::NAN
            } else {
                w.iter().sum::<f64>() / w.len() as f64
            };
            out.push(((*label).to_string(), b, wm, a));
        }
    }
    out
}
