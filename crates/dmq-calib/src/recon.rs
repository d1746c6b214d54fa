//! The Q-Diffusion baseline (docs/algorithms.md §2.1, §1.3, §1.4): AdaRound block reconstruction
//! of the weights, unit by unit in forward order, then reconstruction of the activation step
//! sizes, unit by unit.
//!
//! **Units.** A layer belongs to the innermost block the models tap: UNet `*.resnets.N`
//! (the time-embedding projection included, as Q-Diffusion's ResBlock), `*.attentions.N`
//! (its matmuls included), `*.downsamplers.N`, `*.upsamplers.N`; DiT `transformer_blocks.N`
//! (its adaLN embedders included). Every other layer (`conv_in`, the time-embedding MLP,
//! `conv_out`, `pos_embed.proj`, `proj_out_*`) is a unit alone. [`units`] lists them.
//!
//! **Targets.** A unit's output is read with a tap on a forward pass of the whole model. The
//! student runs with the units before it already quantized (weights hard-rounded), so the
//! unit input carries the upstream quantization error and the target is the FP model's
//! output of the unit: BRECQ's `asym = True`, in both phases (the reference uses FP inputs in
//! the activation phase; reading the input in place keeps one code path for UNet, DiT and
//! user models, and is the stricter objective).
//!
//! **Losses.** `lp_loss` as the reference computes it: `Σ_dim1 |pred − tgt|^p`, averaged
//! over every other axis (dim 1 is channels for `[B, C, H, W]`, tokens for `[B, N, C]`);
//! p = 2 plus `λ·Σ(1 − |2h(V) − 1|^β)` (λ = 0.01, β annealed 20 → 2 after 20 % warm-up) in
//! the weight phase, p = 2.4 in the activation phase (Adam, lr 4e-4, cosine to 0).
//!
//! **Checkpoints.** After every unit the learned state (AdaRound V per layer, activation
//! Δ per set) is written atomically; a rerun with the same inputs re-derives the
//! deterministic PTQ initialisation and resumes after the last finished unit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use dmq_models::layers::LayerMut;
use dmq_models::noise::NoiseRng;
use dmq_models::{
    Denoiser, ForwardCtx, HostTensor, LayerCall, Structure, TapTensor, Taps, forward_for_taps,
    try_for_each_layer_mut,
};
use dmq_quant::{
    ActQuantizer, AdaRoundMode, AdaRoundQuantizer, BetaSchedule, QuantizedFile, Quantizer,
    UniformQuantizer, WeightQuantizer,
};
use serde::{Deserialize, Serialize};

use crate::calib_set::CalibSet;
use crate::config::{LayerPlan, QuantConfig};
use crate::error::{CalibError, Result};
use crate::ptq::{PtqOptions, calibrate_activations, quantize_weights};

/// A reconstruction unit: a tapped block, or one layer on its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    /// Tap name (block path, or the layer's own name).
    pub name: String,
    /// Quantizable layers inside, in call order.
    pub layers: Vec<String>,
}

/// Reconstruction units of a layer inventory, in first-call order: each layer goes to the
/// unit the model's [`Structure`] puts it in (a layer outside every unit is its own).
pub fn units(structure: &Structure, calls: &[LayerCall]) -> Vec<Unit> {
    let mut out: Vec<Unit> = Vec::new();
    for c in calls {
        let u = structure.unit_of(&c.name);
        let unit = match out.iter_mut().find(|x| x.name == u) {
            Some(x) => x,
            None => {
                out.push(Unit {
                    name: u,
                    layers: vec![],
                });
                out.last_mut().expect("just pushed")
            }
        };
        if !unit.layers.contains(&c.name) {
            unit.layers.push(c.name.clone());
        }
    }
    out
}

/// `lp_loss` with the reference reduction: `Σ_dim1 |pred − tgt|^p`, mean over the rest.
pub fn lp_loss(pred: &TapTensor, tgt: &TapTensor, p: f64) -> Result<Tensor<1>> {
    let mismatch = |a: Vec<usize>, b: Vec<usize>| {
        CalibError::Option(format!("reconstruction output {a:?} vs target {b:?}"))
    };
    Ok(match (pred, tgt) {
        (TapTensor::R2(a), TapTensor::R2(b)) if a.dims() == b.dims() => (a.clone() - b.clone())
            .abs()
            .powf_scalar(p)
            .sum_dim(1)
            .mean(),
        (TapTensor::R3(a), TapTensor::R3(b)) if a.dims() == b.dims() => (a.clone() - b.clone())
            .abs()
            .powf_scalar(p)
            .sum_dim(1)
            .mean(),
        (TapTensor::R4(a), TapTensor::R4(b)) if a.dims() == b.dims() => (a.clone() - b.clone())
            .abs()
            .powf_scalar(p)
            .sum_dim(1)
            .mean(),
        _ => return Err(mismatch(tap_dims(pred), tap_dims(tgt))),
    })
}

fn tap_dims(t: &TapTensor) -> Vec<usize> {
    match t {
        TapTensor::R2(x) => x.dims().to_vec(),
        TapTensor::R3(x) => x.dims().to_vec(),
        TapTensor::R4(x) => x.dims().to_vec(),
    }
}

fn tap_to_host(t: &TapTensor) -> HostTensor {
    match t {
        TapTensor::R2(x) => HostTensor::from_tensor(x),
        TapTensor::R3(x) => HostTensor::from_tensor(x),
        TapTensor::R4(x) => HostTensor::from_tensor(x),
    }
}

/// Rows `idx` of host targets `parts` (stored per calibration entry) as a device tap tensor.
fn gather_rows(all: &HostTensor, idx: &[usize], device: &Device) -> TapTensor {
    let per: usize = all.shape[1..].iter().product();
    let mut data = Vec::with_capacity(idx.len() * per);
    for &i in idx {
        data.extend_from_slice(&all.data[i * per..(i + 1) * per]);
    }
    let mut shape = all.shape.clone();
    shape[0] = idx.len();
    match shape.len() {
        2 => TapTensor::R2(Tensor::from_data(
            TensorData::new(data, [shape[0], shape[1]]),
            device,
        )),
        3 => TapTensor::R3(Tensor::from_data(
            TensorData::new(data, [shape[0], shape[1], shape[2]]),
            device,
        )),
        _ => TapTensor::R4(Tensor::from_data(
            TensorData::new(data, [shape[0], shape[1], shape[2], shape[3]]),
            device,
        )),
    }
}

/// Options of [`qdiffusion`]. Reference values in parentheses (§2.1): iterations are scaled
/// down to the size of the default models and stated in every results table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReconOptions {
    /// Weight-phase iterations per unit (reference: 20000).
    pub weight_iters: usize,
    /// Activation-phase iterations per unit (reference: 5000).
    pub act_iters: usize,
    /// Batch size (reference: 32).
    pub batch: usize,
    /// Rounding-regulariser weight λ (reference: 0.01).
    pub round_weight: f64,
    /// AdaRound learning rate (Adam on V) (reference: 1e-3).
    pub weight_lr: f64,
    /// Activation Δ learning rate (Adam, cosine to 0) (reference: 4e-4).
    pub act_lr: f64,
    /// p of the activation-phase `lp_loss` (reference: 2.4).
    pub act_p: f64,
    /// Calibration entries used for reconstruction (a strided subset; all if larger).
    pub samples: usize,
    /// Seed of the minibatch draws.
    pub seed: u64,
    /// PTQ initialisation options (weight MSE init, activation init and time grouping).
    pub ptq: PtqOptions,
    /// Shortcut splitting (the reference's `--split`, on by default there and here): the
    /// config is resolved with [`QuantConfig::split_shortcuts`] set.
    #[serde(default = "yes")]
    pub split_shortcuts: bool,
}

fn yes() -> bool {
    true
}

impl Default for ReconOptions {
    fn default() -> Self {
        Self {
            weight_iters: 400,
            act_iters: 200,
            batch: 32,
            round_weight: 0.01,
            weight_lr: 1e-3,
            act_lr: 4e-4,
            act_p: 2.4,
            samples: 1024,
            seed: 0,
            ptq: PtqOptions::default(),
            split_shortcuts: true,
        }
    }
}

/// Progress of a reconstruction, for a progress bar.
#[derive(Clone, Debug, PartialEq)]
pub struct ReconProgress {
    /// `"weights"` or `"activations"`.
    pub phase: &'static str,
    /// Index of the unit being reconstructed.
    pub unit: usize,
    /// Number of units of the phase.
    pub units: usize,
    /// Unit name.
    pub name: String,
    /// Iteration within the unit.
    pub iter: usize,
    /// Iterations per unit.
    pub iters: usize,
    /// Reconstruction loss of the last minibatch.
    pub loss: f64,
}

/// Per-unit results of a reconstruction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitRecord {
    /// Phase (`weights` / `activations`).
    pub phase: String,
    /// Unit name.
    pub name: String,
    /// Reconstruction error (`lp_loss`, p = 2) on a held batch before the unit was tuned.
    pub before: f64,
    /// The same after.
    pub after: f64,
    /// Seconds spent.
    pub wall_s: f64,
    /// Weights phase: the fraction of the unit's weights whose learned (hard) rounding differs
    /// from round-to-nearest (how far AdaRound moved; 0 = it changed nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounding_changed: Option<f64>,
}

/// What [`qdiffusion`] did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReconReport {
    /// One record per unit and phase.
    pub units: Vec<UnitRecord>,
    /// Total seconds of this run (resumed parts not included).
    pub wall_s: f64,
    /// Units skipped because a checkpoint had them.
    pub resumed_units: usize,
    /// Seconds the resumed units took in the earlier runs (their records' `wall_s`), so
    /// `wall_s + resumed_s` is the reconstruction's cost over all sessions.
    #[serde(default)]
    pub resumed_s: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ReconState {
    weight_units_done: usize,
    act_units_done: usize,
    units: Vec<UnitRecord>,
}

/// Where [`qdiffusion`] keeps its resumable state.
#[derive(Clone, Debug)]
pub struct ReconCheckpoint {
    path: PathBuf,
}

impl ReconCheckpoint {
    /// A checkpoint file at `path` (written atomically after every unit).
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
        }
    }

    fn load(&self) -> Result<Option<(ReconState, QuantizedFile)>> {
        if !self.path.exists() {
            return Ok(None);
        }
        let f = QuantizedFile::load(&self.path)?;
        let state: ReconState =
            serde_json::from_str(f.metadata.get("recon_state").ok_or_else(|| {
                CalibError::File {
                    path: self.path.clone(),
                    reason: "not a reconstruction checkpoint (no recon_state)".into(),
                }
            })?)
            .map_err(|e| CalibError::File {
                path: self.path.clone(),
                reason: format!("recon_state: {e}"),
            })?;
        Ok(Some((state, f)))
    }

    fn save<M: Denoiser + ?Sized>(&self, model: &M, state: &ReconState, tag: &str) -> Result<()> {
        let mut f = quantizer_state(model)?;
        f.metadata.insert(
            "recon_state".into(),
            serde_json::to_string(state).expect("state serialises"),
        );
        f.metadata.insert("run".into(), tag.into());
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| CalibError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        Ok(f.save(&self.path)?)
    }
}

fn host1(t: Tensor<1>) -> Vec<f32> {
    HostTensor::from_tensor(&t).data
}

fn uniform_sets(q: &ActQuantizer) -> Vec<&UniformQuantizer> {
    match q {
        ActQuantizer::Uniform(u) => vec![u],
        ActQuantizer::TimeUniform(t) => t.sets.iter().collect(),
        _ => vec![],
    }
}

fn uniform_sets_mut(q: &mut ActQuantizer) -> Vec<&mut UniformQuantizer> {
    match q {
        ActQuantizer::Uniform(u) => vec![u],
        ActQuantizer::TimeUniform(t) => t.sets.iter_mut().collect(),
        _ => vec![],
    }
}

/// The learned state of a model's quantizers (AdaRound V, activation Δ per set) as float
/// tensors named `<layer>.v`, `<layer>.<a|b>.delta.<set>`.
pub fn quantizer_state<M: Denoiser + ?Sized>(model: &M) -> Result<QuantizedFile> {
    let mut f = QuantizedFile::default();
    model.for_each_layer(&mut |layer| {
        let name = layer.name().to_string();
        let (w, acts): (Option<&WeightQuantizer>, Vec<(&str, &Option<ActQuantizer>)>) = match layer
        {
            dmq_models::layers::LayerRef::Linear(l) => {
                (l.w_quant.as_ref(), vec![("a", &l.a_quant)])
            }
            dmq_models::layers::LayerRef::Conv2d(l) => {
                (l.w_quant.as_ref(), vec![("a", &l.a_quant)])
            }
            dmq_models::layers::LayerRef::Matmul(m) => {
                (None, vec![("a", &m.a_quant), ("b", &m.b_quant)])
            }
        };
        if let Some(WeightQuantizer::AdaRound(q)) = w {
            let v = host1(q.v.val());
            let mode = if q.mode() == AdaRoundMode::Hard {
                1.0
            } else {
                0.0
            };
            f.float.insert(format!("{name}.v"), (vec![v.len()], v));
            f.float
                .insert(format!("{name}.v_hard"), (vec![1], vec![mode]));
        }
        for (op, q) in acts {
            if let Some(q) = q {
                for (i, u) in uniform_sets(q).into_iter().enumerate() {
                    let d = host1(u.delta.val());
                    f.float
                        .insert(format!("{name}.{op}.delta.{i}"), (vec![d.len()], d));
                }
            }
        }
    });
    Ok(f)
}

/// Restores the state written by [`quantizer_state`] onto a model with the same quantizer
/// structure (uniform weight quantizers become AdaRound where the state has V).
pub fn restore_quantizer_state<M: Denoiser + ?Sized>(
    model: &mut M,
    f: &QuantizedFile,
) -> Result<()> {
    try_for_each_layer_mut(model, |layer| -> Result<()> {
        let name = layer.name().to_string();
        match layer {
            LayerMut::Linear(l) => {
                restore_weight(&name, &mut l.w_quant, l.weight.val(), f)?;
                restore_act(&name, "a", &mut l.a_quant, f)
            }
            LayerMut::Conv2d(l) => {
                restore_weight(&name, &mut l.w_quant, l.weight.val(), f)?;
                restore_act(&name, "a", &mut l.a_quant, f)
            }
            LayerMut::Matmul(m) => {
                restore_act(&name, "a", &mut m.a_quant, f)?;
                restore_act(&name, "b", &mut m.b_quant, f)
            }
        }
    })
}

/// QuEST's `--resume_w` (docs/algorithms.md §5.3): attaches `plans`' weight quantizers to `model`
/// (range init `init`, which must be the one the checkpoint's run used) and restores the
/// hard AdaRound rounding of a [`qdiffusion`] checkpoint whose weight phase is complete. The
/// checkpoint's activation state is ignored. Returns the number of AdaRound layers.
///
/// Errors if the checkpoint is missing, its weight phase unfinished, or a quantized layer of
/// `plans` has no (or a differently sized) rounding in it.
pub fn restore_weight_rounding<M: Denoiser + ?Sized>(
    model: &mut M,
    plans: &[LayerPlan],
    init: &dmq_quant::RangeInit,
    ck: &ReconCheckpoint,
    device: &Device,
) -> Result<usize> {
    let file_err = |reason: String| CalibError::File {
        path: ck.path.clone(),
        reason,
    };
    let Some((state, file)) = ck.load()? else {
        return Err(file_err(
            "no Q-Diffusion checkpoint there: run the weight reconstruction first".into(),
        ));
    };
    let n_units = units(
        &model.structure(),
        &dmq_models::layer_inventory(&*model, device)?,
    )
    .len();
    if state.weight_units_done < n_units {
        return Err(file_err(format!(
            "its weight phase is unfinished ({} of {n_units} units)",
            state.weight_units_done
        )));
    }
    for p in plans.iter().filter(|p| p.weight.is_some()) {
        let hard = file.float.get(&format!("{}.v_hard", p.name));
        if hard.is_none_or(|(_, m)| m.first() != Some(&1.0)) {
            return Err(file_err(format!(
                "no hard AdaRound rounding for quantized layer '{}' (another model or preset?)",
                p.name
            )));
        }
    }
    quantize_weights(model, plans, init)?;
    let weights_only = QuantizedFile {
        float: file
            .float
            .into_iter()
            .filter(|(k, _)| k.ends_with(".v") || k.ends_with(".v_hard"))
            .collect(),
        ..QuantizedFile::default()
    };
    restore_quantizer_state(model, &weights_only)?;
    let mut n = 0;
    model.for_each_layer(&mut |layer| {
        let w = match layer {
            dmq_models::layers::LayerRef::Linear(l) => &l.w_quant,
            dmq_models::layers::LayerRef::Conv2d(l) => &l.w_quant,
            dmq_models::layers::LayerRef::Matmul(_) => return,
        };
        if matches!(w, Some(WeightQuantizer::AdaRound(_))) {
            n += 1;
        }
    });
    Ok(n)
}

fn restore_weight<const D: usize>(
    name: &str,
    slot: &mut Option<WeightQuantizer>,
    weight: Tensor<D>,
    f: &QuantizedFile,
) -> Result<()> {
    let Some((_, v)) = f.float.get(&format!("{name}.v")) else {
        return Ok(());
    };
    let params = match slot {
        Some(q) => q.affine_params(0)?,
        None => {
            return Err(CalibError::CalibSet(format!(
                "checkpoint has AdaRound state for '{name}', which has no weight quantizer"
            )));
        }
    };
    let device = weight.device();
    let numel = weight.dims().iter().product::<usize>();
    if v.len() != numel {
        return Err(CalibError::CalibSet(format!(
            "checkpoint V of '{name}' has {} values, the weight {numel}",
            v.len()
        )));
    }
    let hard = f
        .float
        .get(&format!("{name}.v_hard"))
        .is_some_and(|(_, m)| m.first() == Some(&1.0));
    let mut q = AdaRoundQuantizer::init(weight, &params)?;
    q.v = Param::from_tensor(Tensor::from_data(
        TensorData::new(v.clone(), [numel]),
        &device,
    ));
    if hard {
        q = q.with_mode(AdaRoundMode::Hard);
        q.v = q.v.set_require_grad(false);
    }
    *slot = Some(WeightQuantizer::AdaRound(q));
    Ok(())
}

fn restore_act(
    name: &str,
    op: &str,
    slot: &mut Option<ActQuantizer>,
    f: &QuantizedFile,
) -> Result<()> {
    let Some(q) = slot else { return Ok(()) };
    for (i, u) in uniform_sets_mut(q).into_iter().enumerate() {
        if let Some((_, d)) = f.float.get(&format!("{name}.{op}.delta.{i}")) {
            let device = u.delta.val().device();
            let n = u.delta.val().dims()[0];
            if d.len() != n || d.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                return Err(CalibError::CalibSet(format!(
                    "checkpoint Δ of '{name}' ({op}, set {i}) is invalid or has the wrong length"
                )));
            }
            u.delta =
                Param::from_tensor(Tensor::from_data(TensorData::new(d.clone(), [n]), &device))
                    .set_require_grad(false);
        }
    }
    Ok(())
}

/// Runs `model` on calibration entries `idx` up to `unit` (the pass ends at its tap: the
/// layers after it cannot change it) and returns the unit's output.
fn unit_output<M: Denoiser + ?Sized>(
    model: &M,
    calib: &CalibSet,
    idx: &[usize],
    unit: &str,
    device: &Device,
) -> Result<TapTensor> {
    let (x, t, class) = calib.batch(idx, device)?;
    let taps = Taps::new([unit.to_string()]).stop_when_complete();
    let step = calib.step[idx[0]];
    let sc = calib.step_context(step);
    forward_for_taps(model.forward(x, t, class, &ForwardCtx::new(sc).with_taps(&taps)))?;
    taps.take()
        .remove(unit)
        .ok_or_else(|| CalibError::Option(format!("unit '{unit}' produced no tap output")))
}

/// Minibatches are positions in the reconstruction pool, drawn from entries of one step (a
/// forward pass runs at one step index, so time-indexed quantizers see the right set).
struct Sampler {
    by_step: Vec<Vec<usize>>,
    rng: NoiseRng,
}

impl Sampler {
    fn new(calib: &CalibSet, pool: &[usize], seed: u64) -> Self {
        let mut map: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (pos, &i) in pool.iter().enumerate() {
            map.entry(calib.step[i]).or_default().push(pos);
        }
        Self {
            by_step: map.into_values().collect(),
            rng: NoiseRng::new(seed),
        }
    }

    fn draw(&mut self, batch: usize) -> Vec<usize> {
        let g = &self.by_step[self.rng.below(self.by_step.len())];
        (0..batch.min(g.len()))
            .map(|_| g[self.rng.below(g.len())])
            .collect()
    }
}

/// The FP model's output of `unit` for every pool entry (rows in pool order).
fn fp_targets<M: Denoiser + ?Sized>(
    fp: &M,
    calib: &CalibSet,
    pool: &[usize],
    unit: &str,
    batch: usize,
    device: &Device,
) -> Result<HostTensor> {
    let mut out: Option<HostTensor> = None;
    let mut start = 0;
    while start < pool.len() {
        // chunks never straddle two steps (the pool is sorted by step)
        let step = calib.step[pool[start]];
        let mut end = start;
        while end < pool.len() && end - start < batch && calib.step[pool[end]] == step {
            end += 1;
        }
        let h = tap_to_host(&unit_output(fp, calib, &pool[start..end], unit, device)?);
        match &mut out {
            None => out = Some(h),
            Some(o) => {
                o.data.extend_from_slice(&h.data);
                o.shape[0] += h.shape[0];
            }
        }
        start = end;
    }
    out.ok_or_else(|| CalibError::CalibSet("empty reconstruction pool".into()))
}

fn set_trainable_unit<M: Denoiser + Module>(model: M, unit: &Unit, weights: bool) -> M {
    let mut model = model.no_grad();
    model.for_each_layer_mut(&mut |layer| {
        if !unit.layers.iter().any(|n| n == layer.name()) {
            return;
        }
        let (w, acts): (
            Option<&mut Option<WeightQuantizer>>,
            Vec<&mut Option<ActQuantizer>>,
        ) = match layer {
            LayerMut::Linear(l) => (Some(&mut l.w_quant), vec![&mut l.a_quant]),
            LayerMut::Conv2d(l) => (Some(&mut l.w_quant), vec![&mut l.a_quant]),
            LayerMut::Matmul(m) => (None, vec![&mut m.a_quant, &mut m.b_quant]),
        };
        if weights {
            if let Some(Some(WeightQuantizer::AdaRound(q))) = w {
                q.v = q.v.clone().set_require_grad(true);
            }
        } else {
            for q in acts.into_iter().flatten() {
                for u in uniform_sets_mut(q) {
                    u.delta = u.delta.clone().set_require_grad(true);
                }
            }
        }
    });
    model
}

/// `(changed, total)`: weights of `unit` whose AdaRound hard code differs from
/// round-to-nearest with the same (Δ, z).
fn rounding_changes<M: Denoiser + ?Sized>(model: &M, unit: &Unit) -> Result<(usize, usize)> {
    let (mut changed, mut total) = (0, 0);
    dmq_models::try_for_each_layer(model, |layer| -> Result<()> {
        if !unit.layers.iter().any(|n| n == layer.name()) {
            return Ok(());
        }
        let (hard, w, q) = match layer {
            dmq_models::layers::LayerRef::Linear(l) => match &l.w_quant {
                Some(WeightQuantizer::AdaRound(q)) => (
                    q.export(l.weight.val(), 0)?,
                    HostTensor::from_tensor(&l.weight.val()),
                    q,
                ),
                _ => return Ok(()),
            },
            dmq_models::layers::LayerRef::Conv2d(l) => match &l.w_quant {
                Some(WeightQuantizer::AdaRound(q)) => (
                    q.export(l.weight.val(), 0)?,
                    HostTensor::from_tensor(&l.weight.val()),
                    q,
                ),
                _ => return Ok(()),
            },
            dmq_models::layers::LayerRef::Matmul(_) => return Ok(()),
        };
        let rtn = dmq_quant::QuantizedTensor::quantize(&w.data, &w.shape, &q.affine_params(0)?)?;
        let (a, b) = (hard.dequantize()?, rtn.dequantize()?);
        changed += a.iter().zip(&b).filter(|(x, y)| x != y).count();
        total += a.len();
        Ok(())
    })?;
    Ok((changed, total))
}

fn unit_regularizer<M: Denoiser + ?Sized>(model: &M, unit: &Unit, beta: f64) -> Option<Tensor<1>> {
    let mut acc: Option<Tensor<1>> = None;
    model.for_each_layer(&mut |layer| {
        if !unit.layers.iter().any(|n| n == layer.name()) {
            return;
        }
        let w = match layer {
            dmq_models::layers::LayerRef::Linear(l) => l.w_quant.as_ref(),
            dmq_models::layers::LayerRef::Conv2d(l) => l.w_quant.as_ref(),
            dmq_models::layers::LayerRef::Matmul(_) => None,
        };
        if let Some(WeightQuantizer::AdaRound(q)) = w {
            let r = q.round_regularizer(beta);
            acc = Some(match acc.take() {
                Some(a) => a + r,
                None => r,
            });
        }
    });
    acc
}

/// Swaps the uniform weight quantizers of `unit` for soft AdaRound ones (V from the
/// fractional part, Δ and z kept), or hardens them.
fn set_adaround(
    model: &mut (impl Denoiser + ?Sized),
    unit: &Unit,
    mode: AdaRoundMode,
) -> Result<usize> {
    let mut n = 0;
    try_for_each_layer_mut(model, |layer| -> Result<()> {
        if !unit.layers.iter().any(|x| x == layer.name()) {
            return Ok(());
        }
        let r = match layer {
            LayerMut::Linear(l) => switch_rounding(&mut l.w_quant, l.weight.val(), mode),
            LayerMut::Conv2d(l) => switch_rounding(&mut l.w_quant, l.weight.val(), mode),
            LayerMut::Matmul(_) => Ok(false),
        };
        if r? {
            n += 1;
        }
        Ok(())
    })?;
    Ok(n)
}

fn switch_rounding<const D: usize>(
    slot: &mut Option<WeightQuantizer>,
    w: Tensor<D>,
    mode: AdaRoundMode,
) -> Result<bool> {
    match (slot.take(), mode) {
        (Some(WeightQuantizer::Uniform(u)), AdaRoundMode::Soft) => {
            let q = AdaRoundQuantizer::init(w, &u.affine_params(0)?)?;
            *slot = Some(WeightQuantizer::AdaRound(q));
            Ok(true)
        }
        (Some(WeightQuantizer::AdaRound(q)), AdaRoundMode::Hard) => {
            let mut q = q.with_mode(AdaRoundMode::Hard);
            q.v = q.v.set_require_grad(false);
            *slot = Some(WeightQuantizer::AdaRound(q));
            Ok(true)
        }
        (other, _) => {
            *slot = other;
            Ok(false)
        }
    }
}

fn unit_has(model: &(impl Denoiser + ?Sized), unit: &Unit, weights: bool) -> bool {
    let mut any = false;
    model.for_each_layer(&mut |layer| {
        if !unit.layers.iter().any(|n| n == layer.name()) {
            return;
        }
        any |= match layer {
            dmq_models::layers::LayerRef::Linear(l) => {
                if weights {
                    l.w_quant.is_some()
                } else {
                    l.a_quant.is_some()
                }
            }
            dmq_models::layers::LayerRef::Conv2d(l) => {
                if weights {
                    l.w_quant.is_some()
                } else {
                    l.a_quant.is_some()
                }
            }
            dmq_models::layers::LayerRef::Matmul(m) => {
                !weights && (m.a_quant.is_some() || m.b_quant.is_some())
            }
        };
    });
    any
}

fn scalar(t: &Tensor<1>) -> f64 {
    HostTensor::from_tensor(t)
        .data
        .first()
        .copied()
        .unwrap_or(f32::NAN) as f64
}

/// Calibration entries used for reconstruction: an even stride over the set, at most
/// `samples`, sorted by step.
fn recon_pool(calib: &CalibSet, samples: usize) -> Vec<usize> {
    let n = calib.len();
    let k = samples.min(n).max(1);
    let mut pool: Vec<usize> = (0..k).map(|j| j * n / k).collect();
    pool.sort_by_key(|&i| (calib.step[i], i));
    pool
}

/// The Q-Diffusion baseline: PTQ initialisation of `student` under `config`, AdaRound block
/// reconstruction of every unit's weights against `fp`, then (when activations are
/// quantized) activation calibration and step-size reconstruction, unit by unit.
///
/// `student` must live on an autodiff device (the rounding variables and step sizes are
/// trained) and be a copy of `fp`. With `checkpoint`, the state after every unit is saved
/// and a rerun resumes after the last finished unit.
pub fn qdiffusion<M: Denoiser + Module + Clone>(
    fp: &M,
    student: M,
    config: &QuantConfig,
    calib: &CalibSet,
    opts: &ReconOptions,
    checkpoint: Option<&ReconCheckpoint>,
    device: &Device,
    progress: &mut dyn FnMut(&ReconProgress),
) -> Result<(M, ReconReport)> {
    dmq_models::train::require_autodiff(device, "Q-Diffusion reconstruction")?;
    if opts.batch == 0 || opts.samples == 0 {
        return Err(CalibError::Option(
            "reconstruction batch and samples must be > 0".into(),
        ));
    }
    calib.validate()?;
    if calib.is_empty() {
        return Err(CalibError::CalibSet("no entries".into()));
    }
    let t0 = Instant::now();
    let mut model = student;
    let config = &config
        .clone()
        .with_split_shortcuts(config.split_shortcuts || opts.split_shortcuts);
    let plans: Vec<LayerPlan> = config.resolve(&model, device)?;
    let unit_list = units(
        &model.structure(),
        &dmq_models::layer_inventory(&model, device)?,
    );
    quantize_weights(&mut model, &plans, &opts.ptq.weight_init)?;
    let tag = format!(
        "{} {}",
        config.name,
        serde_json::to_string(opts).unwrap_or_default()
    );
    let mut state = ReconState::default();
    let mut resumed = 0;
    let mut resumed_s = 0.0;
    let mut saved: Option<QuantizedFile> = None;
    if let Some(ck) = checkpoint
        && let Some((st, file)) = ck.load()?
    {
        if file.metadata.get("run").map(String::as_str) != Some(tag.as_str()) {
            return Err(CalibError::File {
                path: ck.path.clone(),
                reason: "checkpoint belongs to a run with another config or options; delete it or use another path".into(),
            });
        }
        restore_quantizer_state(&mut model, &file)?;
        resumed = st.weight_units_done + st.act_units_done;
        resumed_s = st.units.iter().map(|u| u.wall_s).sum();
        state = st;
        saved = Some(file);
    }
    let pool = recon_pool(calib, opts.samples);
    let save = |model: &M, state: &ReconState| -> Result<()> {
        match checkpoint {
            Some(ck) => ck.save(model, state, &tag),
            None => Ok(()),
        }
    };

    // Weight phase.
    for (k, unit) in unit_list.iter().enumerate().skip(state.weight_units_done) {
        if !unit_has(&model, unit, true) {
            state.weight_units_done = k + 1;
            continue;
        }
        let tu = Instant::now();
        let mut job = UnitJob::new(
            fp,
            calib,
            &pool,
            unit,
            opts,
            opts.seed ^ ((k as u64) << 8),
            device,
        )?;
        let before = job.held_error(&model)?;
        set_adaround(&mut model, unit, AdaRoundMode::Soft)?;
        model = set_trainable_unit(model, unit, true);
        let betas = BetaSchedule::reference(opts.weight_iters);
        let round_weight = opts.round_weight;
        let tag = Phase {
            name: "weights",
            unit: k,
            units: unit_list.len(),
            iters: opts.weight_iters,
        };
        model = job.train(
            model,
            tag,
            2.0,
            |_| opts.weight_lr,
            |m, it| {
                betas
                    .beta(it)
                    .and_then(|b| unit_regularizer(m, unit, b))
                    .map(|r| r * round_weight)
            },
            progress,
        )?;
        set_adaround(&mut model, unit, AdaRoundMode::Hard)?;
        model = model.no_grad();
        let after = job.held_error(&model)?;
        let (changed, total) = rounding_changes(&model, unit)?;
        state.units.push(UnitRecord {
            phase: "weights".into(),
            name: unit.name.clone(),
            before,
            after,
            wall_s: tu.elapsed().as_secs_f64(),
            rounding_changed: Some(changed as f64 / total.max(1) as f64),
        });
        state.weight_units_done = k + 1;
        save(&model, &state)?;
    }

    // Activation phase.
    if plans.iter().any(|p| p.act.is_some() || p.act_b.is_some()) {
        calibrate_activations(&mut model, &plans, calib, &opts.ptq, device)?;
        if let Some(file) = &saved {
            restore_quantizer_state(&mut model, file)?;
        }
        for (k, unit) in unit_list.iter().enumerate().skip(state.act_units_done) {
            if !unit_has(&model, unit, false) {
                state.act_units_done = k + 1;
                continue;
            }
            let tu = Instant::now();
            let seed = opts.seed ^ 0xAC7 ^ ((k as u64) << 8);
            let mut job = UnitJob::new(fp, calib, &pool, unit, opts, seed, device)?;
            let before = job.held_error(&model)?;
            let snapshot = model.clone();
            model = set_trainable_unit(model, unit, false);
            let iters = opts.act_iters;
            let cosine = |it: usize| {
                opts.act_lr * 0.5 * (1.0 + (std::f64::consts::PI * it as f64 / iters as f64).cos())
            };
            let tag = Phase {
                name: "activations",
                unit: k,
                units: unit_list.len(),
                iters,
            };
            model = job.train(model, tag, opts.act_p, cosine, |_, _| None, progress)?;
            model = model.no_grad();
            let mut after = job.held_error(&model)?;
            // A step size driven to ≤ 0 or an update that made the unit worse is rolled back
            // (the reference's activation reconstruction is known not to converge, q-diffusion #2).
            if !after.is_finite() || after > before || !act_deltas_positive(&model, unit) {
                model = snapshot.no_grad();
                after = before;
            }
            state.units.push(UnitRecord {
                phase: "activations".into(),
                name: unit.name.clone(),
                before,
                after,
                wall_s: tu.elapsed().as_secs_f64(),
                rounding_changed: None,
            });
            state.act_units_done = k + 1;
            save(&model, &state)?;
        }
    }
    Ok((
        model,
        ReconReport {
            units: state.units,
            wall_s: t0.elapsed().as_secs_f64(),
            resumed_units: resumed,
            resumed_s,
        },
    ))
}

/// Which phase and unit a training loop reports as.
struct Phase {
    name: &'static str,
    unit: usize,
    units: usize,
    iters: usize,
}

/// One unit's reconstruction data: FP targets over the pool, a minibatch sampler and a held
/// batch on which the before/after errors are measured.
struct UnitJob<'a> {
    calib: &'a CalibSet,
    pool: &'a [usize],
    unit: &'a Unit,
    targets: HostTensor,
    sampler: Sampler,
    held_idx: Vec<usize>,
    held_tgt: TapTensor,
    batch: usize,
    device: &'a Device,
}

impl<'a> UnitJob<'a> {
    fn new<M: Denoiser + ?Sized>(
        fp: &M,
        calib: &'a CalibSet,
        pool: &'a [usize],
        unit: &'a Unit,
        opts: &ReconOptions,
        seed: u64,
        device: &'a Device,
    ) -> Result<Self> {
        let targets = fp_targets(fp, calib, pool, &unit.name, opts.batch, device)?;
        let mut sampler = Sampler::new(calib, pool, seed);
        let held = sampler.draw(opts.batch);
        let held_tgt = gather_rows(&targets, &held, device);
        Ok(Self {
            calib,
            pool,
            unit,
            held_idx: held.iter().map(|&p| pool[p]).collect(),
            held_tgt,
            targets,
            sampler,
            batch: opts.batch,
            device,
        })
    }

    /// `lp_loss` (p = 2) of the unit's output on the held batch.
    fn held_error<M: Denoiser + ?Sized>(&self, model: &M) -> Result<f64> {
        let out = unit_output(
            model,
            self.calib,
            &self.held_idx,
            &self.unit.name,
            self.device,
        )?;
        Ok(scalar(&lp_loss(&out, &self.held_tgt, 2.0)?))
    }

    /// Adam over the model's trainable parameters for `phase.iters` minibatches:
    /// `lp_loss(p) + extra(model, iteration)`, learning rate `lr(iteration)`.
    fn train<M: Denoiser + Module + Clone>(
        &mut self,
        mut model: M,
        phase: Phase,
        p: f64,
        lr: impl Fn(usize) -> f64,
        extra: impl Fn(&M, usize) -> Option<Tensor<1>>,
        progress: &mut dyn FnMut(&ReconProgress),
    ) -> Result<M> {
        let mut optim = dmq_models::train::adam().init();
        for it in 0..phase.iters {
            let pos = self.sampler.draw(self.batch);
            let idx: Vec<usize> = pos.iter().map(|&q| self.pool[q]).collect();
            let out = unit_output(&model, self.calib, &idx, &self.unit.name, self.device)?;
            let rec = lp_loss(&out, &gather_rows(&self.targets, &pos, self.device), p)?;
            let loss = match extra(&model, it) {
                Some(r) => rec.clone() + r,
                None => rec.clone(),
            };
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr(it), model, grads);
            if it % 10 == 0 || it + 1 == phase.iters {
                progress(&ReconProgress {
                    phase: phase.name,
                    unit: phase.unit,
                    units: phase.units,
                    name: self.unit.name.clone(),
                    iter: it + 1,
                    iters: phase.iters,
                    loss: scalar(&rec),
                });
            }
        }
        Ok(model)
    }
}

fn act_deltas_positive(model: &(impl Denoiser + ?Sized), unit: &Unit) -> bool {
    let mut ok = true;
    model.for_each_layer(&mut |layer| {
        if !unit.layers.iter().any(|n| n == layer.name()) {
            return;
        }
        let qs: Vec<&Option<ActQuantizer>> = match layer {
            dmq_models::layers::LayerRef::Linear(l) => vec![&l.a_quant],
            dmq_models::layers::LayerRef::Conv2d(l) => vec![&l.a_quant],
            dmq_models::layers::LayerRef::Matmul(m) => vec![&m.a_quant, &m.b_quant],
        };
        for q in qs.into_iter().flatten() {
            for u in uniform_sets(q) {
                ok &= host1(u.delta.val())
                    .iter()
                    .all(|d| d.is_finite() && *d > 0.0);
            }
        }
    });
    ok
}
