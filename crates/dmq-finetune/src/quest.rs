//! [`quest`]: QuEST's selective fine-tuning (docs/algorithms.md §5.3–5.4) on top of the
//! Q-Diffusion weight reconstruction, with checkpoint/resume.
//!
//! 1. **Student** ([`quest_student`]): the hard AdaRound weights of a finished Q-Diffusion
//!    weight phase (the reference's `--resume_w`; Q-Diffusion's activation reconstruction is
//!    skipped, as in the reference), the floor passing gradients to the latent weight (floor
//!    STE, §1.3); activation quantizers re-initialised per timestep group (one group per
//!    recorded calibration step unless set), per channel at ≤ 4 bits, the first and last
//!    layers' inputs at 8 bits.
//! 2. **Stage A, time-embedding alignment**: for each group (noisiest first) a fixed set of
//!    calibration chunks, `stage_a_epochs` passes over them; trained: the C_TE weights and
//!    biases (lr `weight_lr`) and their input Δ (lr `act_lr_a`).
//! 3. **Stage B, activation-sensitive layers**: `stage_b_epochs` × every group, fresh random
//!    chunks each time (the targets are regenerated every epoch); trained: the C_A weights and
//!    biases (lr `weight_lr`) and every activation Δ off the time-embedding path (lr
//!    `act_lr_b`). Zero points stay fixed; only the current group's Δ sees a gradient.
//!
//! Loss per chunk ([`QuestLoss`]), with `local = Σ_hooked MSE(layer_q, layer_fp)` over the
//! stage's layers and `global = MSE(ε_q, ε_fp)`: the paper's `local + 2·global`, or the
//! reference code's (stage A `Σ_hooked (local_l + global)`; stage B of the ImageNet/LSUN
//! scripts, whose local term is commented out, `n_hooked · global`).
//!
//! Deviations, all stated in results tables: one Adam per stage with per-parameter learning
//! rates instead of a fresh Adam for the activation Δ at every timestep (the sets are
//! disjoint parameters, so only their moment history differs), chunks run as one batch
//! instead of per-sample gradient accumulation (same mean loss), and iteration counts scaled
//! to the 2–3M-parameter default models (see [`QuestConfig`]).

use std::path::Path;
use std::time::Instant;

use burn::module::{Module, Param, ParamGroup, ParamId};
use burn::optim::GradientsParams;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLrSchedulerConfig;
use burn::tensor::{Device, Tensor};
use dmq_calib::config::default_act_spec;
use dmq_calib::{
    CalibSet, LayerPlan, PtqOptions, QuantConfig, ReconCheckpoint, TimeGrouping,
    calibrate_activations_with, restore_weight_rounding,
};
use dmq_models::layers::{LayerKind, LayerMut, LayerRef};
use dmq_models::noise::NoiseRng;
use dmq_models::train::{Checkpoint, TrainState};
use dmq_models::{Denoiser, ForwardCtx, TapTensor, Taps, layer_inventory};
use dmq_quant::{ActQuantizer, RangeInit, UniformQuantizer, WeightQuantizer};
use serde::{Deserialize, Serialize};

use crate::delta_floor::keep_act_deltas_positive;
use crate::error::{FinetuneError, Result};
use crate::quest_select::{QuestSelection, SelectionRules, select_layers};
use crate::run::refuse_foreign_checkpoint;

/// How the local (per-layer) and global (model output) errors are weighted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum QuestLoss {
    /// Paper Eq. 7: `local + 2·global` in both stages.
    Paper,
    /// Reference code: stage A `Σ_hooked (local_l + global)`, stage B `n_hooked · global`.
    #[default]
    Reference,
}

/// QuEST settings. Reference values (LSUN LDM-4, §5.6) in parentheses; the iteration counts
/// are scaled to dmq's default models.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuestConfig {
    /// C_TE and C_A patterns; `None` = the architecture's defaults ([`SelectionRules`]).
    pub rules: Option<SelectionRules>,
    /// Timestep groups of the activation parameters; `None` = one per recorded calibration
    /// step (the reference: `cali_st` groups).
    pub groups: Option<usize>,
    /// Activation range initialisation off the time-embedding path (MSE, as our Q-Diffusion
    /// baseline). Layers on the time-embedding path always use min-max with 0 included (the
    /// reference's `--a_min_max`): their inputs are one constant per channel at a given t, so
    /// per channel a raw-range search collapses Δ to its floor and any other t of the group
    /// clamps; min-max keeps Δ = |v|/(2^b − 1).
    pub act_init: RangeInit,
    /// Calibration samples initialising each group's activation set (reference 64).
    pub act_samples: usize,
    /// Activations are per channel at this many bits or fewer (reference: 4).
    pub per_channel_max_bits: u32,
    /// Input-activation bits of the first and last layers (reference 8; `None` = the preset's).
    pub edge_act_bits: Option<u32>,
    /// Stage A passes over each group's chunks (reference 200).
    pub stage_a_epochs: usize,
    /// Stage A chunks per group (reference 4).
    pub stage_a_chunks: usize,
    /// Stage A chunk size (reference 2).
    pub stage_a_chunk: usize,
    /// Stage B epochs over all groups (reference 20).
    pub stage_b_epochs: usize,
    /// Stage B chunks per group and epoch (reference 16).
    pub stage_b_chunks: usize,
    /// Stage B chunk size (reference 4).
    pub stage_b_chunk: usize,
    /// Adam lr of the fine-tuned weights and biases (reference 1e-5).
    pub weight_lr: f64,
    /// Adam lr of the C_TE activation Δ in stage A (reference 1e-5).
    pub act_lr_a: f64,
    /// Adam lr of the activation Δ in stage B (reference 1e-4).
    pub act_lr_b: f64,
    /// Loss weighting.
    pub loss: QuestLoss,
    /// Seed of the chunk draws.
    pub seed: u64,
    /// Shortcut splitting, as in the Q-Diffusion reconstruction QuEST starts from (its
    /// `--split`, on by default there and here); must match that reconstruction's
    /// [`dmq_calib::ReconOptions::split_shortcuts`], since the rounding is restored against
    /// the split weight ranges.
    #[serde(default = "yes")]
    pub split_shortcuts: bool,
}

fn yes() -> bool {
    true
}

impl Default for QuestConfig {
    fn default() -> Self {
        Self {
            rules: None,
            groups: None,
            act_init: RangeInit::mse(),
            act_samples: 64,
            per_channel_max_bits: 4,
            edge_act_bits: Some(8),
            stage_a_epochs: 20,
            stage_a_chunks: 4,
            stage_a_chunk: 2,
            stage_b_epochs: 10,
            stage_b_chunks: 8,
            stage_b_chunk: 4,
            weight_lr: 1e-5,
            act_lr_a: 1e-5,
            act_lr_b: 1e-4,
            loss: QuestLoss::Reference,
            seed: 0x0E57,
            split_shortcuts: true,
        }
    }
}

/// Where a run is.
#[derive(Clone, Debug, PartialEq)]
pub struct QuestProgress {
    /// `"A"` (time-embedding alignment) or `"B"` (activation-sensitive layers).
    pub stage: &'static str,
    /// Optimiser steps done (both stages).
    pub iteration: usize,
    /// Optimiser steps of the run.
    pub total: usize,
    /// Timestep group being tuned.
    pub group: usize,
    /// Loss of the last chunk.
    pub loss: f64,
}

/// What a run did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QuestReport {
    /// The fine-tuned sets and the parameter fraction.
    pub selection: QuestSelection,
    /// Timestep groups of the activation parameters.
    pub groups: usize,
    /// Whether activations are per channel.
    pub per_channel_acts: bool,
    /// Layer plans of the student (weights from the preset, activation edges overridden).
    pub plans: Vec<LayerPlan>,
    /// Optimiser steps of stage A and B.
    pub stage_steps: (usize, usize),
    /// Steps restored from a checkpoint.
    pub resumed_steps: usize,
    /// (optimiser step, mean loss of the group pass that ended there).
    pub losses: Vec<(usize, f32)>,
    /// Seconds building the student in this session.
    pub init_s: f64,
    /// Seconds of fine-tuning, summed over sessions.
    pub train_s: f64,
}

fn check(cfg: &QuestConfig) -> Result<()> {
    let counts = [
        cfg.act_samples,
        cfg.stage_a_chunks,
        cfg.stage_a_chunk,
        cfg.stage_b_chunks,
        cfg.stage_b_chunk,
    ];
    if counts.contains(&0) || cfg.groups == Some(0) {
        return Err(FinetuneError::Option(format!(
            "QuEST sample, chunk and group counts must be ≥ 1 (got {counts:?}, groups {:?})",
            cfg.groups
        )));
    }
    for (what, lr) in [
        ("weight", cfg.weight_lr),
        ("stage A activation", cfg.act_lr_a),
        ("stage B activation", cfg.act_lr_b),
    ] {
        if !(lr > 0.0 && lr <= 1.0) {
            return Err(FinetuneError::Option(format!(
                "QuEST {what} learning rate {lr} must be in (0, 1]"
            )));
        }
    }
    Ok(())
}

/// The QuEST layer plans: `preset` on the layer inventory, then the input activations of the
/// first conv and the last layer at `edge_bits` (weights untouched, so the Q-Diffusion
/// rounding of the preset applies).
pub fn quest_plans(
    preset: &QuantConfig,
    calls: &[dmq_models::LayerCall],
    edge_bits: Option<u32>,
) -> Result<Vec<LayerPlan>> {
    let mut plans = preset.resolve_calls(calls)?;
    if let Some(b) = edge_bits {
        let spec = default_act_spec(b)?;
        let first = plans.iter().position(|p| p.kind == LayerKind::Conv2d);
        let last = plans.len().checked_sub(1);
        for i in [first, last].into_iter().flatten() {
            if plans[i].act.is_some() {
                plans[i].act = Some(spec);
            }
        }
    }
    Ok(plans)
}

/// A QuEST student before fine-tuning ([`quest_student`]).
#[derive(Clone, Debug)]
pub struct QuestStudent<M> {
    /// The quantized model (frozen).
    pub model: M,
    /// The preset it was built for.
    pub preset: QuantConfig,
    /// The fine-tuned sets.
    pub selection: QuestSelection,
    /// Layer plans (weights from the preset, activation edges overridden).
    pub plans: Vec<LayerPlan>,
    /// Timestep groups of the activation parameters.
    pub groups: usize,
    /// Seconds it took to build.
    pub build_s: f64,
}

/// Builds the QuEST student of `fp` (module docs, step 1): weights from the finished
/// Q-Diffusion checkpoint `weights` (same preset; its weight-range init must be dmq-calib's
/// default), floor-STE on, activations re-initialised per timestep group.
pub fn quest_student<M: Denoiser + Module + Clone>(
    fp: &M,
    preset: &QuantConfig,
    calib: &CalibSet,
    weights: &ReconCheckpoint,
    cfg: &QuestConfig,
    device: &Device,
) -> Result<QuestStudent<M>> {
    quest_student_with(fp, preset, calib, weights, cfg, device, &mut |_, _| {})
}

/// [`quest_student`] reporting `progress(done, total)` over the activation calibration passes
/// (one unit per timestep group and pass; the per-channel ranges are most of the build time).
pub fn quest_student_with<M: Denoiser + Module + Clone>(
    fp: &M,
    preset: &QuantConfig,
    calib: &CalibSet,
    weights: &ReconCheckpoint,
    cfg: &QuestConfig,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<QuestStudent<M>> {
    check(cfg)?;
    let t0 = Instant::now();
    let calls = layer_inventory(fp, device)?;
    let structure = fp.structure();
    let rules = cfg
        .rules
        .clone()
        .unwrap_or_else(|| SelectionRules::for_structure(&structure));
    let selection = select_layers(&structure, &calls, &rules)?;
    let mut plans = quest_plans(preset, &calls, cfg.edge_act_bits)?;
    if cfg.split_shortcuts || preset.split_shortcuts {
        dmq_calib::config::apply_shortcut_split(&mut plans, &structure)?;
    }
    let mut model = fp.clone().no_grad();
    restore_weight_rounding(
        &mut model,
        &plans,
        &PtqOptions::default().weight_init,
        weights,
        device,
    )?;
    model.for_each_layer_mut(&mut |layer| {
        let w = match layer {
            LayerMut::Linear(l) => &mut l.w_quant,
            LayerMut::Conv2d(l) => &mut l.w_quant,
            LayerMut::Matmul(_) => return,
        };
        if let Some(WeightQuantizer::AdaRound(q)) = w {
            *q = q.clone().with_floor_ste(true);
        }
    });
    let groups = cfg.groups.unwrap_or(calib.steps().len());
    let a_bits = plans
        .iter()
        .filter_map(|p| p.act.map(|s| s.cost_bits()))
        .min()
        .unwrap_or(32);
    let opts = PtqOptions {
        act_init: cfg.act_init.clone(),
        act_per_channel: a_bits <= cfg.per_channel_max_bits,
        time: TimeGrouping::Groups(groups),
        act_samples: cfg.act_samples,
        ..PtqOptions::default()
    };
    let te_path: Vec<LayerPlan> = plans
        .iter()
        .filter(|p| structure.on_time_path(&p.name))
        .cloned()
        .collect();
    let passes = if te_path.is_empty() { 1 } else { 2 };
    calibrate_activations_with(&mut model, &plans, calib, &opts, device, &mut |d, n| {
        progress(d, passes * n)
    })?;
    if !te_path.is_empty() {
        let max = PtqOptions {
            act_init: RangeInit::Max,
            ..opts
        };
        calibrate_activations_with(&mut model, &te_path, calib, &max, device, &mut |d, n| {
            progress(n + d, 2 * n)
        })?;
    }
    Ok(QuestStudent {
        model,
        preset: preset.clone(),
        selection,
        plans,
        groups,
        build_s: t0.elapsed().as_secs_f64(),
    })
}

fn uniform_sets_mut(q: &mut ActQuantizer) -> Vec<&mut UniformQuantizer> {
    match q {
        ActQuantizer::Uniform(u) => vec![u],
        ActQuantizer::TimeUniform(t) => t.sets.iter_mut().collect(),
        _ => vec![],
    }
}

/// Makes a layer's weight and bias trainable and records their ids.
fn train_dense<const D: usize>(
    weight: &mut Param<Tensor<D>>,
    bias: &mut Option<Param<Tensor<1>>>,
    ids: &mut Vec<ParamId>,
) {
    *weight = weight.clone().set_require_grad(true);
    ids.push(weight.id);
    if let Some(b) = bias {
        *b = b.clone().set_require_grad(true);
        ids.push(b.id);
    }
}

/// Freezes everything, then makes trainable the weights and biases of `weights` and the
/// activation Δ (every set, both matmul operands) of `acts`. Returns the model and the ids of
/// the trainable weights and biases (their lr group).
pub fn set_quest_trainable<M: Denoiser + Module>(
    model: M,
    weights: &[String],
    acts: &[String],
) -> (M, Vec<ParamId>) {
    let mut model = model.no_grad();
    let mut ids = Vec::new();
    model.for_each_layer_mut(&mut |layer| {
        let name = layer.name().to_string();
        let w = weights.contains(&name);
        let a = acts.contains(&name);
        let mut act_slots: Vec<&mut Option<ActQuantizer>> = Vec::new();
        match layer {
            LayerMut::Linear(l) => {
                if w {
                    train_dense(&mut l.weight, &mut l.bias, &mut ids);
                }
                act_slots.push(&mut l.a_quant);
            }
            LayerMut::Conv2d(l) => {
                if w {
                    train_dense(&mut l.weight, &mut l.bias, &mut ids);
                }
                act_slots.push(&mut l.a_quant);
            }
            LayerMut::Matmul(m) => {
                act_slots.push(&mut m.a_quant);
                act_slots.push(&mut m.b_quant);
            }
        }
        if a {
            for q in act_slots.into_iter().flatten() {
                for u in uniform_sets_mut(q) {
                    u.delta = u.delta.clone().set_require_grad(true);
                }
            }
        }
    });
    (model, ids)
}

/// Activation Δ scalars of `acts` plus weight and bias scalars of `weights`.
fn tuned_scalars<M: Denoiser + ?Sized>(model: &M, weights: &[String], acts: &[String]) -> usize {
    let mut n = 0;
    model.for_each_layer(&mut |layer| {
        let name = layer.name().to_string();
        let (wb, qs): (usize, Vec<&Option<ActQuantizer>>) = match layer {
            LayerRef::Linear(l) => (
                l.weight.val().dims().iter().product::<usize>()
                    + l.bias.as_ref().map_or(0, |b| b.val().dims()[0]),
                vec![&l.a_quant],
            ),
            LayerRef::Conv2d(l) => (
                l.weight.val().dims().iter().product::<usize>()
                    + l.bias.as_ref().map_or(0, |b| b.val().dims()[0]),
                vec![&l.a_quant],
            ),
            LayerRef::Matmul(m) => (0, vec![&m.a_quant, &m.b_quant]),
        };
        if weights.contains(&name) {
            n += wb;
        }
        if acts.contains(&name) {
            for q in qs.into_iter().flatten() {
                n += match q {
                    ActQuantizer::Uniform(u) => u.delta.val().dims()[0],
                    ActQuantizer::TimeUniform(t) => {
                        t.sets.iter().map(|u| u.delta.val().dims()[0]).sum()
                    }
                    _ => 0,
                };
            }
        }
    });
    n
}

/// Mean squared error of two tapped outputs of the same shape.
pub fn tap_mse(a: &TapTensor, b: &TapTensor) -> Result<Tensor<1>> {
    let mismatch =
        || FinetuneError::Option("tapped outputs of student and FP model differ in shape".into());
    Ok(match (a, b) {
        (TapTensor::R2(x), TapTensor::R2(y)) if x.dims() == y.dims() => {
            (x.clone() - y.clone().detach()).powi_scalar(2).mean()
        }
        (TapTensor::R3(x), TapTensor::R3(y)) if x.dims() == y.dims() => {
            (x.clone() - y.clone().detach()).powi_scalar(2).mean()
        }
        (TapTensor::R4(x), TapTensor::R4(y)) if x.dims() == y.dims() => {
            (x.clone() - y.clone().detach()).powi_scalar(2).mean()
        }
        _ => return Err(mismatch()),
    })
}

/// Which stage a loss is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Time-embedding alignment.
    A,
    /// Activation-sensitive layers.
    B,
}

/// The QuEST loss of one chunk (module docs): FP and student forwards on `x` at `step`, the
/// outputs of `hooks` tapped in both.
///
/// # Shapes
/// - `x`: `[B, C, H, W]`, `t`: `[B]`, `cond`: labels `[B]` or states `[B, L, D]`; output `[1]`
#[allow(clippy::too_many_arguments)]
pub fn quest_loss<M: Denoiser + ?Sized>(
    fp: &M,
    student: &M,
    (x, t, class): (Tensor<4>, Tensor<1>, Option<dmq_models::Conditioning>),
    step: &dmq_models::StepContext,
    hooks: &[String],
    weighting: QuestLoss,
    stage: Stage,
) -> Result<Tensor<1>> {
    let c = fp.info().in_channels;
    let taps_fp = Taps::new(hooks.iter().cloned());
    let out_fp = fp
        .forward(
            x.clone(),
            t.clone(),
            class.clone(),
            &ForwardCtx::new(*step).with_taps(&taps_fp),
        )?
        .detach();
    let taps_q = Taps::new(hooks.iter().cloned());
    let out_q = student.forward(x, t, class, &ForwardCtx::new(*step).with_taps(&taps_q))?;
    let [b, _, h, w] = out_q.dims();
    let global = (out_q.slice([0..b, 0..c, 0..h, 0..w]) - out_fp.slice([0..b, 0..c, 0..h, 0..w]))
        .powi_scalar(2)
        .mean();
    let (fp_taps, q_taps) = (taps_fp.take(), taps_q.take());
    let mut local: Option<Tensor<1>> = None;
    for name in hooks {
        let (Some(q), Some(f)) = (q_taps.get(name), fp_taps.get(name)) else {
            return Err(FinetuneError::Layer {
                layer: name.clone(),
                reason: "was not called in the forward pass (cannot tap its output)".into(),
            });
        };
        let e = tap_mse(q, f)?;
        local = Some(match local {
            Some(l) => l + e,
            None => e,
        });
    }
    let n = hooks.len() as f64;
    Ok(match (weighting, stage, local) {
        (QuestLoss::Paper, _, Some(l)) => l + global.mul_scalar(2.0),
        (QuestLoss::Reference, Stage::A, Some(l)) => l + global.mul_scalar(n),
        (QuestLoss::Reference, Stage::B, _) => global.mul_scalar(n.max(1.0)),
        (_, _, None) => global.mul_scalar(2.0),
    })
}

fn scalar(t: &Tensor<1>) -> f64 {
    dmq_models::HostTensor::from_tensor(t)
        .data
        .first()
        .map_or(f64::NAN, |&v| f64::from(v))
}

/// Calibration entries at one recorded step: `(step, entry indices)`.
type Chunk = (usize, Vec<usize>);

/// Calibration entries of each timestep group, split by recorded step:
/// `groups[g] = [(step, entries at step)]`.
fn group_entries(calib: &CalibSet, groups: usize) -> Result<Vec<Vec<Chunk>>> {
    let map = dmq_calib::ptq::step_groups(
        TimeGrouping::Groups(groups),
        calib.num_steps(),
        &calib.steps(),
    )?;
    let mut out: Vec<Vec<Chunk>> = vec![Vec::new(); groups];
    for s in calib.steps() {
        out[map[s]].push((s, calib.indices_at_step(s)));
    }
    if let Some(g) = out.iter().position(Vec::is_empty) {
        return Err(FinetuneError::Option(format!(
            "timestep group {g} has no calibration entries; use fewer groups"
        )));
    }
    Ok(out)
}

/// `n` chunks of `size` entries, each at one random recorded step of the group.
fn draw_chunks(
    group: &[(usize, Vec<usize>)],
    n: usize,
    size: usize,
    seed: u64,
) -> Vec<(usize, Vec<usize>)> {
    let mut rng = NoiseRng::new(seed);
    (0..n)
        .map(|_| {
            let (step, entries) = &group[rng.below(group.len())];
            let idx = (0..size)
                .map(|_| entries[rng.below(entries.len())])
                .collect();
            (*step, idx)
        })
        .collect()
}

fn seed_of(base: u64, stage: u64, epoch: usize, group: usize) -> u64 {
    base ^ (stage << 56)
        ^ ((epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        ^ ((group as u64 + 1) << 24)
}

fn run_tag(preset: &QuantConfig, cfg: &QuestConfig, calib: &CalibSet) -> serde_json::Value {
    serde_json::json!({ "preset": preset, "config": cfg, "timesteps": calib.timesteps })
}

/// Refuses a checkpoint of another run (before any costly work).
fn check_checkpoint(ck: Option<&Checkpoint>, tag: &serde_json::Value) -> Result<()> {
    refuse_foreign_checkpoint(ck, tag, "preset, config or calibration")
}

/// QuEST on `fp` (an autodiff device): [`quest_student`], then [`quest_finetune`].
#[allow(clippy::too_many_arguments)]
pub fn quest<M: Denoiser + Module + Clone>(
    fp: &M,
    preset: &QuantConfig,
    calib: &CalibSet,
    weights: &ReconCheckpoint,
    cfg: &QuestConfig,
    checkpoint: Option<&Path>,
    device: &Device,
    progress: &mut dyn FnMut(&QuestProgress),
) -> Result<(M, QuestReport)> {
    check(cfg)?;
    dmq_models::train::require_autodiff(device, "QuEST")?;
    let ck = checkpoint.map(Checkpoint::new);
    check_checkpoint(ck.as_ref(), &run_tag(preset, cfg, calib))?;
    let student = quest_student(fp, preset, calib, weights, cfg, device)?;
    quest_finetune(fp, student, calib, cfg, checkpoint, device, progress)
}

/// Stage A and stage B (module docs) on a [`quest_student`] of `fp` built with the same `cfg`.
/// With `checkpoint` (a directory), the state is saved atomically after every group pass and
/// a rerun resumes there; another run's checkpoint is an error.
pub fn quest_finetune<M: Denoiser + Module + Clone>(
    fp: &M,
    student: QuestStudent<M>,
    calib: &CalibSet,
    cfg: &QuestConfig,
    checkpoint: Option<&Path>,
    device: &Device,
    progress: &mut dyn FnMut(&QuestProgress),
) -> Result<(M, QuestReport)> {
    check(cfg)?;
    dmq_models::train::require_autodiff(device, "QuEST")?;
    let t0 = Instant::now();
    let tag = run_tag(&student.preset, cfg, calib);
    let ck = checkpoint.map(Checkpoint::new);
    check_checkpoint(ck.as_ref(), &tag)?;
    let fp = fp.clone().no_grad();
    let QuestStudent {
        model: mut student,
        selection,
        plans,
        groups,
        build_s,
        ..
    } = student;
    let entries = group_entries(calib, groups)?;
    let per_a = cfg.stage_a_epochs * cfg.stage_a_chunks;
    let total_a = groups * per_a;
    let total_b = cfg.stage_b_epochs * groups * cfg.stage_b_chunks;
    let total = total_a + total_b;
    let te = selection.time_embedding.clone();
    let (sens, b_acts) = (selection.sensitive.clone(), selection.stage_b_acts.clone());
    let mut optim = dmq_models::train::adam().init();
    let mut state = TrainState {
        notes: tag.clone(),
        ..TrainState::default()
    };
    if let Some(ck) = &ck
        && let Some((m, _, o, st)) = ck.load(student.clone(), Vec::<M>::new(), optim.clone())?
    {
        let on_boundary = if st.step <= total_a {
            st.step.is_multiple_of(per_a.max(1))
        } else {
            (st.step - total_a).is_multiple_of(cfg.stage_b_chunks)
        };
        if !on_boundary || st.step > total {
            return Err(FinetuneError::Checkpoint {
                path: ck.dir().to_path_buf(),
                reason: format!("step {} is not a group boundary of this run", st.step),
            });
        }
        student = m;
        // the stage A optimiser does not carry into stage B
        if st.step != total_a {
            optim = o;
        }
        state = st;
    }
    let resumed_steps = state.step;
    let init_s = build_s + t0.elapsed().as_secs_f64();
    let stages = [
        (Stage::A, "A", te.clone(), te.clone(), cfg.act_lr_a, total_a),
        (Stage::B, "B", sens.clone(), b_acts, cfg.act_lr_b, total),
    ];
    for (stage, label, weights_set, acts_set, act_lr, end) in stages {
        if state.step >= end {
            continue;
        }
        if stage == Stage::B && state.step == total_a {
            optim = dmq_models::train::adam().init();
        }
        let (m, ids) = set_quest_trainable(student, &weights_set, &acts_set);
        student = m;
        let mut sched = ModuleLrSchedulerConfig::new(act_lr.into())
            .with_group(ParamGroup::from_ids(ids), cfg.weight_lr)
            .init()
            .map_err(FinetuneError::Option)?;
        // (group pass index, group, chunks) in run order
        // (group, chunks, steps) of every group pass, in run order
        let passes: Vec<(usize, Vec<Chunk>, usize)> = match stage {
            Stage::A => (0..groups)
                .map(|g| {
                    let chunks = draw_chunks(
                        &entries[g],
                        cfg.stage_a_chunks,
                        cfg.stage_a_chunk,
                        seed_of(cfg.seed, 1, 0, g),
                    );
                    let all = (0..cfg.stage_a_epochs).flat_map(|_| chunks.iter().cloned());
                    (g, all.collect(), per_a)
                })
                .collect(),
            Stage::B => (0..cfg.stage_b_epochs)
                .flat_map(|e| (0..groups).map(move |g| (e, g)))
                .map(|(e, g)| {
                    let chunks = draw_chunks(
                        &entries[g],
                        cfg.stage_b_chunks,
                        cfg.stage_b_chunk,
                        seed_of(cfg.seed, 2, e, g),
                    );
                    (g, chunks, cfg.stage_b_chunks)
                })
                .collect(),
        };
        let start = if stage == Stage::A { 0 } else { total_a };
        let mut pos = start;
        for (g, chunks, len) in passes {
            if pos + len <= state.step {
                pos += len;
                continue;
            }
            let tp = Instant::now();
            let mut sum = 0.0;
            for (step, idx) in &chunks {
                let batch = calib.batch(idx, device)?;
                let sc = calib.step_context(*step);
                let loss = quest_loss(&fp, &student, batch, &sc, &weights_set, cfg.loss, stage)?;
                let v = scalar(&loss);
                if !v.is_finite() {
                    return Err(FinetuneError::NonFiniteStage {
                        loss: v,
                        stage: label,
                        group: g,
                    });
                }
                sum += v;
                let grads = GradientsParams::from_grads(loss.backward(), &student);
                student = optim.step(sched.step(), student, grads);
                keep_act_deltas_positive(&mut student, *step, &|n| acts_set.iter().any(|a| a == n));
                state.step += 1;
                progress(&QuestProgress {
                    stage: label,
                    iteration: state.step,
                    total,
                    group: g,
                    loss: v,
                });
            }
            pos += len;
            state.losses.push((state.step, (sum / len as f64) as f32));
            state.wall_s += tp.elapsed().as_secs_f64();
            if let Some(ck) = &ck {
                ck.save(&student, &Vec::<M>::new(), &optim, &state)?;
            }
        }
    }
    Ok((
        student.no_grad(),
        QuestReport {
            per_channel_acts: plans
                .iter()
                .filter_map(|p| p.act.map(|s| s.cost_bits()))
                .min()
                .is_some_and(|b| b <= cfg.per_channel_max_bits),
            selection,
            groups,
            plans,
            stage_steps: (total_a, total_b),
            resumed_steps,
            losses: state.losses.clone(),
            init_s,
            train_s: state.wall_s,
        },
    ))
}

/// Trainable activation-Δ scalars of a QuEST student in stage B plus the fine-tuned weights
/// (for the "fraction of parameters fine-tuned" of a report).
pub fn quest_tuned_scalars<M: Denoiser + ?Sized>(model: &M, selection: &QuestSelection) -> usize {
    let mut w = selection.time_embedding.clone();
    w.extend(selection.sensitive.iter().cloned());
    tuned_scalars(model, &w, &selection.stage_b_acts)
        + tuned_scalars(model, &[], &selection.time_embedding)
}
