//! Building the EfficientDM student from a naive-PTQ pass (docs/algorithms.md §3.3 steps 2–5),
//! choosing what trains, and finalising it for another step count and for export.

use burn::module::{Module, Param};
use burn::tensor::Device;
use dmq_calib::{CalibSet, PtqOptions, ptq};
use dmq_models::layers::{LayerMut, LayerRef};
use dmq_models::noise::NoiseRng;
use dmq_models::{Denoiser, layer_inventory, try_for_each_layer_mut};
use dmq_quant::{
    ActQuantizer, AffineParams, AffineSet, LsqQuantizer, QaLoraQuantizer, Quantizer, RangeInit,
    Resample, TimeIndexed, WeightQuantizer,
};
use serde::{Deserialize, Serialize};

use crate::error::{FinetuneError, Result};
use crate::policy::{LayerPolicy, PolicyPlan, plan_layers};

/// How the student is initialised.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudentOptions {
    /// LoRA rank r (reference 32).
    pub rank: usize,
    /// Layer policy (§3.2).
    pub policy: LayerPolicy,
    /// Weight range method of the naive PTQ pass (reference: channel-wise max).
    pub weight_init: RangeInit,
    /// Activation range method of the naive PTQ pass (reference: per-tensor MSE).
    pub act_init: RangeInit,
    /// Calibration samples of the naive pass (reference 32).
    pub act_samples: usize,
    /// Seed of the LoRA A initialisation: layer `name` draws from a host stream keyed by
    /// (seed, name), so a student is the same whatever else runs in the process.
    #[serde(default = "default_lora_seed")]
    pub lora_seed: u64,
}

fn default_lora_seed() -> u64 {
    0x107A_5EED
}

impl Default for StudentOptions {
    fn default() -> Self {
        Self {
            rank: 32,
            policy: LayerPolicy::default(),
            weight_init: RangeInit::Max,
            act_init: RangeInit::mse(),
            act_samples: 32,
            lora_seed: default_lora_seed(),
        }
    }
}

/// What [`build_student`] made.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StudentReport {
    /// The resolved layer policy.
    pub plan: PolicyPlan,
    /// Trainable scalars: LoRA A and B, Δ_w, and the TALSQ Δ_x, z_x of every step.
    pub trainable_params: usize,
}

/// Naive PTQ of `fp` under the EfficientDM policy for `preset`, then QALoRA weights
/// (integer base from the PTQ codes, A ~ U(±1/√fan_in), B = 0) and TALSQ activations (the PTQ
/// (Δ, z) copied into one learnable set per step of `timesteps`, continuous z) on every
/// LoRA layer. The returned model has exactly the trainable parameters of §3.3 step 5.
///
/// `fp` must live on an autodiff device for the student to train.
pub fn build_student<M: Denoiser + Module + Clone>(
    fp: &M,
    preset: &dmq_calib::QuantConfig,
    calib: &CalibSet,
    timesteps: &[f64],
    opts: &StudentOptions,
    device: &Device,
) -> Result<(M, StudentReport)> {
    if opts.rank == 0 {
        return Err(FinetuneError::Option("LoRA rank must be ≥ 1".into()));
    }
    if timesteps.is_empty() {
        return Err(FinetuneError::Option(
            "TALSQ needs the fine-tuning timesteps (got none)".into(),
        ));
    }
    let plan = plan_layers(
        preset,
        &fp.structure(),
        &layer_inventory(fp, device)?,
        &opts.policy,
    )?;
    let mut model = fp.clone();
    ptq(
        &mut model,
        &plan.config,
        calib,
        &PtqOptions {
            weight_init: opts.weight_init.clone(),
            act_init: opts.act_init.clone(),
            act_samples: opts.act_samples,
            ..PtqOptions::default()
        },
        device,
    )?;
    try_for_each_layer_mut(&mut model, |layer| -> Result<()> {
        if !plan.lora.iter().any(|n| n == layer.name()) {
            return Ok(());
        }
        let name = layer.name().to_string();
        match layer {
            LayerMut::Linear(l) => convert(
                &name,
                l.weight.val(),
                &mut l.w_quant,
                &mut l.a_quant,
                timesteps,
                opts,
                device,
            ),
            LayerMut::Conv2d(l) => convert(
                &name,
                l.weight.val(),
                &mut l.w_quant,
                &mut l.a_quant,
                timesteps,
                opts,
                device,
            ),
            LayerMut::Matmul(_) => Ok(()),
        }
    })?;
    let model = set_trainable(model);
    let trainable_params = trainable_count(&model);
    Ok((
        model,
        StudentReport {
            plan,
            trainable_params,
        },
    ))
}

fn convert<const D: usize>(
    name: &str,
    weight: burn::tensor::Tensor<D>,
    w_quant: &mut Option<WeightQuantizer>,
    a_quant: &mut Option<ActQuantizer>,
    timesteps: &[f64],
    opts: &StudentOptions,
    device: &Device,
) -> Result<()> {
    let layer_err = |reason: String| FinetuneError::Layer {
        layer: name.into(),
        reason,
    };
    let params = match w_quant {
        Some(WeightQuantizer::Uniform(u)) => u.affine_params(0)?,
        other => {
            return Err(layer_err(format!(
                "expected a round-to-nearest weight quantizer from the naive pass, found {}",
                if other.is_some() {
                    "another kind"
                } else {
                    "none"
                }
            )));
        }
    };
    // FNV-1a of the name: each layer's stream is independent of the visiting order
    let key = dmq_quant::fingerprint::fnv1a64(name.as_bytes());
    let mut rng = NoiseRng::new(opts.lora_seed ^ key);
    *w_quant = Some(WeightQuantizer::QaLora(QaLoraQuantizer::from_ptq_seeded(
        weight,
        &params,
        opts.rank,
        &mut || rng.uniform(),
    )?));
    if let Some(a) = a_quant.take() {
        let p = match &a {
            ActQuantizer::Uniform(u) => u.affine_params(0)?,
            _ => {
                return Err(layer_err(
                    "expected one shared activation quantizer from the naive pass".into(),
                ));
            }
        };
        *a_quant = Some(ActQuantizer::TimeLsq(talsq(&p, timesteps, device)?));
    }
    Ok(())
}

/// TALSQ: `timesteps.len()` independent LSQ sets (fresh parameter ids, so the optimizer keeps
/// separate moments), each a copy of `params`, continuous learnable z, no gradient scale.
pub fn talsq(
    params: &AffineParams,
    timesteps: &[f64],
    device: &Device,
) -> Result<TimeIndexed<LsqQuantizer>> {
    let sets = timesteps
        .iter()
        .map(|_| LsqQuantizer::from_params(params, true, false, device))
        .collect::<dmq_quant::Result<Vec<_>>>()?;
    let n = timesteps.len();
    Ok(TimeIndexed::grouped(
        sets,
        timesteps.to_vec(),
        (0..n).collect(),
    )?)
}

/// Freezes everything, then makes trainable exactly the QALoRA A, B, Δ_w and the TALSQ Δ_x, z_x
/// (the reference's `lora`/`delta`/`zp_list` parameters inside the LoRA layers). Weight zero
/// points, the integer base, W8A8 layers and all FP parameters stay frozen.
pub fn set_trainable<M: Denoiser + Module>(model: M) -> M {
    let mut model = model.no_grad();
    model.for_each_layer_mut(&mut |layer| {
        let (w, a) = match layer {
            LayerMut::Linear(l) => (&mut l.w_quant, &mut l.a_quant),
            LayerMut::Conv2d(l) => (&mut l.w_quant, &mut l.a_quant),
            LayerMut::Matmul(_) => return,
        };
        let Some(WeightQuantizer::QaLora(q)) = w else {
            return;
        };
        q.lora_a = q.lora_a.clone().set_require_grad(true);
        q.lora_b = q.lora_b.clone().set_require_grad(true);
        q.delta = q.delta.clone().set_require_grad(true);
        if let Some(ActQuantizer::TimeLsq(t)) = a {
            for s in &mut t.sets {
                s.delta = s.delta.clone().set_require_grad(true);
                s.zero = s.zero.clone().set_require_grad(true);
            }
        }
    });
    model
}

/// Scalars of `p` if it is trainable, else 0.
fn trainable<const D: usize>(p: &Param<burn::tensor::Tensor<D>>) -> usize {
    if p.is_require_grad() {
        p.val().dims().iter().product()
    } else {
        0
    }
}

/// Number of trainable scalars in the quantizable layers.
pub fn trainable_count<M: Denoiser + ?Sized>(model: &M) -> usize {
    let mut n = 0;
    model.for_each_layer(&mut |layer| {
        let (w, a) = match layer {
            LayerRef::Linear(l) => (&l.w_quant, &l.a_quant),
            LayerRef::Conv2d(l) => (&l.w_quant, &l.a_quant),
            LayerRef::Matmul(_) => return,
        };
        if let Some(WeightQuantizer::QaLora(q)) = w {
            n += trainable(&q.lora_a) + trainable(&q.lora_b) + trainable(&q.delta);
        }
        if let Some(ActQuantizer::TimeLsq(t)) = a {
            for s in &t.sets {
                n += trainable(&s.delta) + trainable(&s.zero);
            }
        }
    });
    n
}

/// Whether every timestep of `new` is one of `old` (then TALSQ moves by exact selection).
pub fn is_sub_grid(old: &[f64], new: &[f64]) -> bool {
    new.iter().all(|t| old.iter().any(|o| (o - t).abs() < 1e-6))
}

/// Prepares a fine-tuned student for sampling with `timesteps` (step order) and for export:
/// every TALSQ moves to the new steps ([`Resample::SubGrid`] when they are a sub-grid of the
/// training steps, else [`Resample::Interpolate`] over t) and its z_x is rounded, so the model
/// computes exactly what the integer export ([`dmq_calib::export_layers`]) stores. All
/// parameters end up frozen.
pub fn finalize<M: Denoiser + Module>(model: M, timesteps: &[f64]) -> Result<M> {
    let mut model = model.no_grad();
    try_for_each_layer_mut(&mut model, |layer| -> Result<()> {
        let name = layer.name().to_string();
        let a = match layer {
            LayerMut::Linear(l) => &mut l.a_quant,
            LayerMut::Conv2d(l) => &mut l.a_quant,
            LayerMut::Matmul(_) => return Ok(()),
        };
        if let Some(ActQuantizer::TimeLsq(t)) = a {
            let r = (|| -> Result<TimeIndexed<LsqQuantizer>> {
                let how = if is_sub_grid(t.timesteps(), timesteps) {
                    Resample::SubGrid
                } else {
                    Resample::Interpolate
                };
                let moved = t.resample(timesteps, how)?;
                let sets = moved
                    .sets
                    .iter()
                    .map(|s| {
                        let mut p = s.raw_params()?;
                        let rounding = p.spec.rounding();
                        for z in &mut p.zero {
                            *z = dmq_quant::qtensor::round_scalar(*z, rounding);
                        }
                        s.with_params(&p)
                    })
                    .collect::<dmq_quant::Result<Vec<_>>>()?;
                let n = timesteps.len();
                Ok(TimeIndexed::grouped(
                    sets,
                    timesteps.to_vec(),
                    (0..n).collect(),
                )?)
            })();
            let q = r.map_err(|e| FinetuneError::Layer {
                layer: name,
                reason: e.to_string(),
            })?;
            *a = Some(ActQuantizer::TimeLsq(q));
        }
        Ok(())
    })?;
    Ok(model.no_grad())
}
