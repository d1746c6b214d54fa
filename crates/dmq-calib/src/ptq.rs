//! PTQ initialisation (docs/algorithms.md §1.2, §2.1 step 2): attach weight quantizers (per output
//! channel, max or MSE search) and calibrate activation quantizers on a [`CalibSet`]
//! (per tensor or per channel; max, MSE or percentile; one set for all steps, one per step,
//! or one per group of steps), attention-matmul operands included.

use std::collections::BTreeMap;
use std::time::Instant;

use burn::tensor::Device;
use dmq_models::layers::{LayerKind, LayerMut};
use dmq_models::{Denoiser, ForwardCtx, HostTensor, InputCapture, Operand, try_for_each_layer_mut};
use dmq_quant::{
    ActQuantizer, AffineParams, QuantSpec, RangeInit, TimeIndexed, UniformQuantizer,
    WeightQuantizer, init_params,
};
use serde::{Deserialize, Serialize};

use crate::calib_set::CalibSet;
use crate::config::{LayerPlan, QuantConfig};
use crate::error::{CalibError, Result};

/// Which steps share one set of activation parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum TimeGrouping {
    /// One set for the whole trajectory (Q-Diffusion).
    #[default]
    Shared,
    /// One set per recorded step; steps between recorded ones use the nearest recorded step.
    PerStep,
    /// `n` groups of consecutive steps of (almost) equal length (QuEST's timestep groups).
    Groups(usize),
}

/// Options of [`ptq`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PtqOptions {
    /// Weight range method (reference: MSE search, p = 2.4).
    pub weight_init: RangeInit,
    /// Activation range method (reference: MSE search per tensor).
    pub act_init: RangeInit,
    /// Per-channel activations (axis 1 of `[B, C, H, W]`, last axis of tokens) instead of
    /// per tensor (QuEST at 4-bit activations).
    pub act_per_channel: bool,
    /// Time grouping of the activation parameters.
    pub time: TimeGrouping,
    /// Calibration samples used to initialise each activation set (reference: 64).
    pub act_samples: usize,
    /// Forward batch for the calibration passes.
    pub batch: usize,
    /// Activation values kept per layer and set for the range search; larger inputs are
    /// subsampled along the batch axis (the search is O(values · steps) on the host).
    pub max_values: usize,
    /// Q-Diffusion's running statistics (`--running_stat`): activation ranges as an
    /// exponential moving average of each calibration batch's min/max with this momentum
    /// (reference 0.95), max-style (Δ, z), instead of `act_init` over the pooled values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act_running_stat: Option<f32>,
}

impl Default for PtqOptions {
    fn default() -> Self {
        Self {
            weight_init: RangeInit::mse(),
            act_init: RangeInit::mse(),
            act_per_channel: false,
            time: TimeGrouping::Shared,
            act_samples: 64,
            batch: 32,
            max_values: 1 << 20,
            act_running_stat: None,
        }
    }
}

/// What [`ptq`] did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PtqReport {
    /// The resolved plan of every layer.
    pub plans: Vec<LayerPlan>,
    /// Layers with a weight quantizer.
    pub weight_layers: usize,
    /// Activation quantizers attached (matmul operands count separately).
    pub act_quantizers: usize,
    /// Activation parameter sets per quantizer.
    pub act_sets: usize,
    /// Seconds spent on weights.
    pub weight_s: f64,
    /// Seconds spent on activations.
    pub act_s: f64,
}

/// Attaches round-to-nearest weight quantizers to every layer `plans` gives a weight spec.
pub fn quantize_weights<M: Denoiser + ?Sized>(
    model: &mut M,
    plans: &[LayerPlan],
    init: &RangeInit,
) -> Result<usize> {
    let by_name: BTreeMap<&str, &LayerPlan> = plans.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut n = 0;
    try_for_each_layer_mut(model, |layer| -> Result<()> {
        let Some(spec) = by_name.get(layer.name()).and_then(|p| p.weight) else {
            return Ok(());
        };
        let name = layer.name().to_string();
        let wrap = |e: dmq_quant::QuantError| CalibError::BadLayerSpec {
            layer: name.clone(),
            what: "its weight quantizer".into(),
            reason: e.to_string(),
        };
        let r = match layer {
            LayerMut::Linear(l) => UniformQuantizer::init(spec, l.weight.val(), init)
                .map(|q| l.w_quant = Some(WeightQuantizer::Uniform(q)))
                .map_err(wrap),
            LayerMut::Conv2d(l) => UniformQuantizer::init(spec, l.weight.val(), init)
                .map(|q| l.w_quant = Some(WeightQuantizer::Uniform(q)))
                .map_err(wrap),
            LayerMut::Matmul(_) => Ok(()),
        };
        r?;
        n += 1;
        Ok(())
    })?;
    Ok(n)
}

/// Removes every quantizer (weights and activations) from the model: back to exact FP.
pub fn clear_quantizers<M: Denoiser + ?Sized>(model: &mut M) {
    model.for_each_layer_mut(&mut |layer| match layer {
        LayerMut::Linear(l) => {
            l.w_quant = None;
            l.a_quant = None;
        }
        LayerMut::Conv2d(l) => {
            l.w_quant = None;
            l.a_quant = None;
        }
        LayerMut::Matmul(m) => {
            m.a_quant = None;
            m.b_quant = None;
        }
    });
}

/// Step → set map of a grouping over `num_steps` steps with data at `recorded` steps.
pub fn step_groups(time: TimeGrouping, num_steps: usize, recorded: &[usize]) -> Result<Vec<usize>> {
    match time {
        TimeGrouping::Shared => Ok(vec![0; num_steps]),
        TimeGrouping::PerStep => Ok((0..num_steps)
            .map(|s| {
                // nearest recorded step (ties to the earlier one)
                let (k, _) = recorded
                    .iter()
                    .enumerate()
                    .min_by_key(|&(_, &r)| r.abs_diff(s))
                    .expect("recorded steps checked non-empty");
                k
            })
            .collect()),
        TimeGrouping::Groups(g) => {
            if g == 0 || g > num_steps {
                return Err(CalibError::Option(format!(
                    "{g} timestep groups for {num_steps} steps (need 1..={num_steps})"
                )));
            }
            Ok((0..num_steps).map(|s| s * g / num_steps).collect())
        }
    }
}

/// The channel axis of an activation of rank `rank`: 1 for `[B, C, H, W]`, the last axis
/// for `[B, C]` and token tensors `[B, N, C]`.
pub fn act_channel_axis(rank: usize) -> usize {
    if rank == 4 { 1 } else { rank.saturating_sub(1) }
}

/// Concatenates captured inputs along axis 0, keeping at most about `max_values` values:
/// whole leading rows picked at an even stride over all parts, so every captured step keeps
/// its share.
pub fn concat_rows(parts: &[HostTensor], max_values: usize, layer: &str) -> Result<HostTensor> {
    let first = parts
        .first()
        .ok_or_else(|| CalibError::CalibSet(format!("no input captured for '{layer}'")))?;
    let rest: Vec<usize> = first.shape[1..].to_vec();
    let per: usize = rest.iter().product::<usize>().max(1);
    let mut rows: Vec<&[f32]> = Vec::new();
    for p in parts {
        if p.shape[1..] != rest[..] || p.data.len() != p.shape.iter().product::<usize>() {
            return Err(CalibError::CalibSet(format!(
                "inputs of '{layer}' change shape between calls: {:?} vs {:?}",
                p.shape, first.shape
            )));
        }
        rows.extend(p.data.chunks_exact(per));
    }
    let total = rows.len();
    let keep = total.min((max_values / per).max(1));
    let mut data = Vec::with_capacity(keep * per);
    for j in 0..keep {
        data.extend_from_slice(rows[j * total / keep]);
    }
    let mut shape = vec![keep];
    shape.extend(rest);
    Ok(HostTensor { data, shape })
}

/// Runs the model on calibration entries `idx` and returns every layer input.
pub fn capture_inputs<M: Denoiser + ?Sized>(
    model: &M,
    calib: &CalibSet,
    idx: &[usize],
    batch: usize,
    device: &Device,
) -> Result<BTreeMap<(String, Operand), Vec<HostTensor>>> {
    let cap = InputCapture::all();
    for chunk in idx.chunks(batch.max(1)) {
        let (x, t, class) = calib.batch(chunk, device)?;
        let step = calib.step[chunk[0]];
        let sc = calib.step_context(step);
        model.forward(x, t, class, &ForwardCtx::new(sc).with_inputs(&cap))?;
    }
    Ok(cap.take())
}

fn act_spec_for(spec: QuantSpec, rank: usize, per_channel: bool) -> QuantSpec {
    if per_channel {
        spec.per_channel(act_channel_axis(rank))
    } else {
        spec
    }
}

/// Calibrates activation quantizers of every layer `plans` gives an activation spec, on
/// `calib`. The model's weight quantizers stay on during the passes (Q-Diffusion
/// initialises activations on the weight-quantized model).
pub fn calibrate_activations<M: Denoiser + ?Sized>(
    model: &mut M,
    plans: &[LayerPlan],
    calib: &CalibSet,
    opts: &PtqOptions,
    device: &Device,
) -> Result<(usize, usize)> {
    calibrate_activations_with(model, plans, calib, opts, device, &mut |_, _| {})
}

/// [`calibrate_activations`] reporting `progress(sets done, sets)` after each parameter set
/// (one per timestep group; per-channel ranges over many groups take minutes).
pub fn calibrate_activations_with<M: Denoiser + ?Sized>(
    model: &mut M,
    plans: &[LayerPlan],
    calib: &CalibSet,
    opts: &PtqOptions,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(usize, usize)> {
    calib.validate()?;
    if calib.is_empty() {
        return Err(CalibError::CalibSet("no entries".into()));
    }
    let recorded = calib.steps();
    let map = step_groups(opts.time, calib.num_steps(), &recorded)?;
    let n_sets = map.iter().max().map_or(1, |m| m + 1);
    // Entries of each set: the recorded steps mapped to it.
    let mut set_entries: Vec<Vec<usize>> = vec![vec![]; n_sets];
    for (i, &s) in calib.step.iter().enumerate() {
        let set = match opts.time {
            TimeGrouping::PerStep => recorded.iter().position(|&r| r == s).expect("recorded"),
            _ => map[s],
        };
        set_entries[set].push(i);
    }
    let step_to_set: Vec<usize> = map;
    // params[(layer, operand)][set]
    let mut params: BTreeMap<(String, Operand), Vec<Option<AffineParams>>> = BTreeMap::new();
    let wanted: BTreeMap<&str, &LayerPlan> = plans
        .iter()
        .filter(|p| p.act.is_some() || p.act_b.is_some())
        .map(|p| (p.name.as_str(), p))
        .collect();
    for (set, entries) in set_entries.iter().enumerate() {
        if entries.is_empty() {
            return Err(CalibError::CalibSet(format!(
                "timestep group {set} has no calibration entries; record more steps or use fewer groups"
            )));
        }
        // spread the samples over the group's entries
        let k = opts.act_samples.min(entries.len()).max(1);
        let idx: Vec<usize> = (0..k).map(|j| entries[j * entries.len() / k]).collect();
        // group entries by step: a forward pass is at one step
        let mut by_step: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for &i in &idx {
            by_step.entry(calib.step[i]).or_default().push(i);
        }
        let mut captured: BTreeMap<(String, Operand), Vec<HostTensor>> = BTreeMap::new();
        for (_, ids) in by_step {
            for (key, v) in capture_inputs(model, calib, &ids, opts.batch, device)? {
                captured.entry(key).or_default().extend(v);
            }
        }
        for ((name, op), parts) in captured {
            let Some(plan) = wanted.get(name.as_str()) else {
                continue;
            };
            let spec = match op {
                Operand::Input | Operand::Left => plan.act,
                Operand::Right => plan.act_b,
            };
            let Some(spec) = spec else { continue };
            let bad = |e: dmq_quant::QuantError| CalibError::BadLayerSpec {
                layer: name.clone(),
                what: format!("activation calibration ({op:?})"),
                reason: e.to_string(),
            };
            let rank = parts.first().map_or(0, |p| p.shape.len());
            let spec = act_spec_for(
                spec,
                rank,
                opts.act_per_channel && plan.kind != LayerKind::Matmul,
            );
            let p = match opts.act_running_stat {
                Some(momentum) => {
                    // batches in calibration order, each folded into the moving range
                    let mut r = dmq_quant::RunningRange::new(spec, momentum).map_err(bad)?;
                    for part in &parts {
                        r.observe(&part.data, &part.shape).map_err(bad)?;
                    }
                    r.params().map_err(bad)?
                }
                None => {
                    let x = concat_rows(&parts, opts.max_values, &name)?;
                    init_params(&x.data, &x.shape, &spec, &opts.act_init).map_err(bad)?
                }
            };
            params
                .entry((name, op))
                .or_insert_with(|| vec![None; n_sets])[set] = Some(p);
        }
        progress(set + 1, n_sets);
    }
    let timesteps = calib.timesteps.clone();
    let mut built: BTreeMap<(String, Operand), ActQuantizer> = BTreeMap::new();
    for (key, sets) in params {
        let sets: Vec<AffineParams> = sets
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                p.ok_or_else(|| {
                    CalibError::CalibSet(format!(
                        "'{}' was not called in timestep group {i}",
                        key.0
                    ))
                })
            })
            .collect::<Result<_>>()?;
        let qs = sets
            .iter()
            .map(|p| UniformQuantizer::from_params(p, device))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let q = if n_sets == 1 && opts.time == TimeGrouping::Shared {
            ActQuantizer::Uniform(qs.into_iter().next().expect("one set"))
        } else {
            ActQuantizer::TimeUniform(TimeIndexed::grouped(
                qs,
                timesteps.clone(),
                step_to_set.clone(),
            )?)
        };
        built.insert(key, q);
    }
    for p in wanted.values() {
        let missing = |op: Operand| !built.contains_key(&(p.name.clone(), op));
        let need_a = p.act.is_some()
            && missing(if p.kind == LayerKind::Matmul {
                Operand::Left
            } else {
                Operand::Input
            });
        let need_b = p.act_b.is_some() && missing(Operand::Right);
        if need_a || need_b {
            return Err(CalibError::CalibSet(format!(
                "layer '{}' was never called during calibration",
                p.name
            )));
        }
    }
    let count = built.len();
    model.for_each_layer_mut(&mut |layer| {
        let name = layer.name().to_string();
        match layer {
            LayerMut::Linear(l) => {
                l.a_quant = built.remove(&(name, Operand::Input)).or(l.a_quant.take())
            }
            LayerMut::Conv2d(l) => {
                l.a_quant = built.remove(&(name, Operand::Input)).or(l.a_quant.take())
            }
            LayerMut::Matmul(m) => {
                m.a_quant = built
                    .remove(&(name.clone(), Operand::Left))
                    .or(m.a_quant.take());
                m.b_quant = built.remove(&(name, Operand::Right)).or(m.b_quant.take());
            }
        }
    });
    Ok((count, n_sets))
}

/// Naive PTQ: resolve `config` on the model, attach round-to-nearest weight quantizers, then
/// calibrate activations on `calib`.
pub fn ptq<M: Denoiser + ?Sized>(
    model: &mut M,
    config: &QuantConfig,
    calib: &CalibSet,
    opts: &PtqOptions,
    device: &Device,
) -> Result<PtqReport> {
    let plans = config.resolve(&*model, device)?;
    let t0 = Instant::now();
    let weight_layers = quantize_weights(model, &plans, &opts.weight_init)?;
    let weight_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let (act_quantizers, act_sets) = if plans.iter().any(|p| p.act.is_some() || p.act_b.is_some()) {
        calibrate_activations(model, &plans, calib, opts, device)?
    } else {
        (0, 0)
    };
    Ok(PtqReport {
        plans,
        weight_layers,
        act_quantizers,
        act_sets,
        weight_s,
        act_s: t1.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_rows_strides_over_every_part() {
        let part = |v: f32| HostTensor {
            data: (0..6).map(|i| v + i as f32).collect(),
            shape: vec![3, 2],
        };
        let x = concat_rows(&[part(0.0), part(100.0)], 4, "l").unwrap();
        // 6 rows of 2 values, room for 2 rows: rows 0 and 3 (the first of each part)
        assert_eq!(x.shape, vec![2, 2]);
        assert_eq!(x.data, vec![0.0, 1.0, 100.0, 101.0]);
        let all = concat_rows(&[part(0.0), part(100.0)], 1 << 20, "l").unwrap();
        assert_eq!(all.shape, vec![6, 2]);
        let bad = HostTensor {
            data: vec![0.0; 3],
            shape: vec![1, 3],
        };
        assert!(concat_rows(&[part(0.0), bad], 100, "l").is_err());
        assert!(concat_rows(&[], 100, "l").is_err());
    }

    #[test]
    fn step_groups_cover_every_step() {
        assert_eq!(
            step_groups(TimeGrouping::Shared, 3, &[0]).unwrap(),
            vec![0, 0, 0]
        );
        assert_eq!(
            step_groups(TimeGrouping::Groups(2), 5, &[0]).unwrap(),
            vec![0, 0, 0, 1, 1]
        );
        // nearest recorded step, ties to the earlier one
        assert_eq!(
            step_groups(TimeGrouping::PerStep, 6, &[0, 2, 4]).unwrap(),
            vec![0, 0, 1, 1, 2, 2]
        );
        assert!(step_groups(TimeGrouping::Groups(0), 5, &[0]).is_err());
    }
}
