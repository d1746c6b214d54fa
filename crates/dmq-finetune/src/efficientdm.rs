//! [`efficientdm`]: data-free QALoRA distillation along the FP model's own trajectories
//! (docs/algorithms.md §3.3 step 7), with checkpoint/resume.
//!
//! Per epoch: a fresh x_T (and class labels for class-conditional models); for each of the
//! scheduler's steps, ε_fp = CFG(FP(x_t)) and ε_q = CFG(Q(x_t)) on the same `[uncond; cond]`
//! batch, loss = Σ(ε_q − ε_fp)² over the ε channels, one AdamW step, then x_t advances with
//! **ε_fp** (teacher forcing; no gradient crosses steps). The step index passed to the student
//! selects its TALSQ set, never a call counter (§3.6).
//!
//! Scaling to dmq's default models (`EfficientDmConfig::default`): the reference runs 160
//! trajectories × 100 DDIM steps (16 000 optimiser steps, batch 2) on a 400M-parameter LDM
//! and samples with a 20-step sub-grid of the TALSQ steps. Our Fashion-MNIST models have
//! 2–3M parameters and are sampled with 20 steps; the default is 200 trajectories, batch 2,
//! meant for the 20-step sampling schedule itself (4 000 optimiser steps, each TALSQ set
//! updated 200 times instead of the reference's 160). Fine-tuning on a finer schedule and
//! sub-sampling, as the reference does, is a matter of passing that scheduler:
//! [`crate::finalize`] selects (sub-grid) or interpolates the TALSQ sets. Rank, learning-rate
//! rules, weight decay and the linear decay are the reference's.

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use dmq_calib::{CalibSet, QuantConfig};
use dmq_models::noise::NoiseRng;
use dmq_models::sampler::{Trajectory, labels};
use dmq_models::scheduler::{DdimScheduler, Scheduler};
use dmq_models::train::{Checkpoint, TrainState};
use dmq_models::{Denoiser, ForwardCtx, PromptStates};
use serde::{Deserialize, Serialize};

use crate::delta_floor::{keep_act_deltas_positive, keep_weight_deltas_positive};
use crate::error::{FinetuneError, Result};
use crate::lr::{LayerLr, LrConfig, layer_lrs, lr_scheduler};
use crate::run::refuse_foreign_checkpoint;
use crate::student::{StudentOptions, StudentReport, build_student, set_trainable};

/// What the student is distilled towards (docs/algorithms.md §3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DistillTarget {
    /// The teacher's CFG-combined ε: `Σ (ε_q − ε_fp)²` (the reference code).
    #[default]
    Eps,
    /// The mean of the teacher's DDIM step (the paper's Eq. 7),
    /// `μ = √ᾱ_prev·x̂₀ + √(1 − ᾱ_prev − σ_t²)·ε`: at a shared x_t, `μ_q − μ_fp = k_t·(ε_q − ε_fp)`
    /// with `k_t = √(1 − ᾱ_prev − σ_t²) − √(ᾱ_prev·(1 − ᾱ_t)/ᾱ_t)`, so the ε loss weighted by
    /// `k_t²` per step ([`ddim_mean_weight`]).
    DdimMean,
}

impl DistillTarget {
    fn is_eps(&self) -> bool {
        *self == Self::Eps
    }
}

/// `k_t²` of DDIM step `step_index` ([`DistillTarget::DdimMean`]): the factor between the
/// squared distance of two ε predictions and that of the step means they give at the same
/// x_t (without `clip_sample`, which makes the mean non-affine in ε).
pub fn ddim_mean_weight(scheduler: &DdimScheduler, step_index: usize) -> Result<f64> {
    let (a_t, a_prev) = scheduler
        .alphas(step_index)
        .map_err(dmq_models::ModelError::from)?;
    let sigma = scheduler
        .sigma(step_index)
        .map_err(dmq_models::ModelError::from)?;
    let (a_t, a_prev, sigma) = (f64::from(a_t), f64::from(a_prev), f64::from(sigma));
    let k = (1.0 - a_prev - sigma * sigma).max(0.0).sqrt() - (a_prev * (1.0 - a_t) / a_t).sqrt();
    Ok(k * k)
}

/// EfficientDM settings (see the module docs for the scaling of the defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EfficientDmConfig {
    /// Student initialisation (rank, layer policy, naive-PTQ ranges).
    pub student: StudentOptions,
    /// Learning rates.
    pub lr: LrConfig,
    /// AdamW weight decay, applied to every trained parameter Δ included (reference 0.01).
    pub weight_decay: f64,
    /// Trajectories (reference "epochs", 160).
    pub epochs: usize,
    /// Trajectories per batch (reference 2).
    pub batch: usize,
    /// CFG scale of the fine-tuning trajectories for class- and text-conditional models
    /// (reference 1.5 on class-conditional LDM-4).
    pub guidance: f64,
    /// Seed of x_T, labels and the stochastic DDIM noise; epoch `e` uses a seed derived from it.
    pub seed: u64,
    /// Save a checkpoint every this many epochs (and after the last).
    pub checkpoint_every: usize,
    /// `Some(n)`: cycle over `n` fixed x_T draws instead of a fresh draw every epoch (the
    /// reference). A small pool makes the objective deterministic, e.g. for tests.
    pub trajectory_pool: Option<usize>,
    /// The distillation target (not written when it is the default ε, so runs from before
    /// the option keep their checkpoint tags).
    #[serde(default, skip_serializing_if = "DistillTarget::is_eps")]
    pub target: DistillTarget,
}

impl Default for EfficientDmConfig {
    fn default() -> Self {
        Self {
            student: StudentOptions::default(),
            lr: LrConfig::default(),
            weight_decay: 0.01,
            epochs: 200,
            batch: 2,
            guidance: 1.5,
            seed: 0xEFF1_C1E7,
            checkpoint_every: 1,
            trajectory_pool: None,
            target: DistillTarget::Eps,
        }
    }
}

/// Where a run is.
#[derive(Clone, Debug, PartialEq)]
pub struct FinetuneProgress {
    /// Optimiser steps done.
    pub iteration: usize,
    /// Optimiser steps of the run.
    pub total: usize,
    /// Current epoch (trajectory).
    pub epoch: usize,
    /// Loss of the last step.
    pub loss: f64,
}

/// What a run did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FinetuneReport {
    /// Student layout.
    pub student: StudentReport,
    /// Starting learning rates of every LoRA layer.
    pub layer_lrs: Vec<LayerLr>,
    /// Optimiser steps of the run.
    pub steps: usize,
    /// Steps restored from a checkpoint instead of recomputed.
    pub resumed_steps: usize,
    /// (optimiser step, mean loss of the epoch that ended there).
    pub epoch_losses: Vec<(usize, f32)>,
    /// Seconds of naive PTQ + student construction in this session.
    pub init_s: f64,
    /// Seconds of fine-tuning, summed over sessions.
    pub train_s: f64,
}

/// `Σ (ε_q − ε_fp)²` over the first `eps_channels` channels (the reference's
/// `mse_loss(..., reduction='sum')`; learned-variance channels are not distilled because DDIM
/// does not read them).
///
/// # Shapes
/// - `student`, `teacher`: `[B, C_out, H, W]`, `C_out ≥ eps_channels`; output `[1]`
pub fn distill_loss(student: Tensor<4>, teacher: Tensor<4>, eps_channels: usize) -> Tensor<1> {
    let [b, _, h, w] = student.dims();
    let s = student.slice([0..b, 0..eps_channels, 0..h, 0..w]);
    let t = teacher.slice([0..b, 0..eps_channels, 0..h, 0..w]).detach();
    (s - t).powi_scalar(2).sum()
}

fn scalar(t: &Tensor<1>) -> f64 {
    dmq_models::HostTensor::from_tensor(t)
        .data
        .first()
        .map_or(f64::NAN, |&v| f64::from(v))
}

/// EfficientDM: naive PTQ of `fp` under `preset` with the §3.2 policy, QALoRA + TALSQ
/// student, then data-free distillation on `scheduler`'s trajectories (use a DDIM scheduler
/// with η = 1 and the fine-tuning step count; its timesteps become the TALSQ steps).
///
/// `fp` must live on an autodiff device. With `checkpoint` (a directory), the state is saved
/// atomically every `checkpoint_every` epochs and a rerun resumes from the last save; a
/// checkpoint of another run (other preset, config or schedule) is an error.
///
/// The trajectories are conditioned like the model: random labels for a class-conditional
/// model, prompts drawn from `prompts` for a text-conditional one (required there), with
/// classifier-free guidance `cfg.guidance` in both cases.
///
/// Returns the trained student (TALSQ still per fine-tuning step, z continuous: call
/// [`crate::finalize`] before sampling with another schedule or exporting).
#[allow(clippy::too_many_arguments)]
pub fn efficientdm<M: Denoiser + Module + Clone>(
    fp: &M,
    preset: &QuantConfig,
    calib: &CalibSet,
    scheduler: &DdimScheduler,
    cfg: &EfficientDmConfig,
    prompts: Option<&PromptStates>,
    checkpoint: Option<&Path>,
    device: &Device,
    progress: &mut dyn FnMut(&FinetuneProgress),
) -> Result<(M, FinetuneReport)> {
    dmq_models::train::require_autodiff(device, "EfficientDM")?;
    let info = fp.info();
    if info.cross_attention_dim.is_some() && info.num_classes.is_none() && prompts.is_none() {
        return Err(FinetuneError::Option(
            "a text-conditional model distils on prompted trajectories: give the prompt states"
                .into(),
        ));
    }
    if cfg.epochs == 0
        || cfg.batch == 0
        || cfg.checkpoint_every == 0
        || cfg.trajectory_pool == Some(0)
    {
        return Err(FinetuneError::Option(format!(
            "epochs ({}), batch ({}), checkpoint_every ({}) and the trajectory pool ({:?}) must be ≥ 1",
            cfg.epochs, cfg.batch, cfg.checkpoint_every, cfg.trajectory_pool
        )));
    }
    if !cfg.guidance.is_finite() || cfg.weight_decay.is_nan() || cfg.weight_decay < 0.0 {
        return Err(FinetuneError::Option(format!(
            "guidance {} must be finite and weight decay {} ≥ 0",
            cfg.guidance, cfg.weight_decay
        )));
    }
    let t0 = Instant::now();
    let timesteps = (0..scheduler.num_steps())
        .map(|i| scheduler.timestep(i).map(|t| t as f64))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(dmq_models::ModelError::from)?;
    let tag = serde_json::json!({ "preset": preset, "config": cfg, "timesteps": timesteps });
    let ck = checkpoint.map(Checkpoint::new);
    // Refuse another run's checkpoint before the (costly) naive PTQ pass.
    refuse_foreign_checkpoint(ck.as_ref(), &tag, "preset, config or schedule")?;
    let fp = fp.clone().no_grad();
    let (mut student, report) =
        build_student(&fp, preset, calib, &timesteps, &cfg.student, device)?;
    let lrs = layer_lrs(&student, &cfg.lr)?;
    let per_epoch = scheduler.num_steps();
    let total = cfg.epochs * per_epoch;
    let mut optim = dmq_models::train::adamw(cfg.weight_decay as f32).init();
    let mut state = TrainState {
        notes: tag.clone(),
        ..TrainState::default()
    };
    if let Some(ck) = &ck
        && let Some((m, _, o, st)) = ck.load(student.clone(), Vec::<M>::new(), optim.clone())?
    {
        if st.step % per_epoch != 0 || st.step > total {
            return Err(FinetuneError::Checkpoint {
                path: ck.dir().to_path_buf(),
                reason: format!("step {} is not an epoch boundary of this run", st.step),
            });
        }
        student = set_trainable(m);
        optim = o;
        state = st;
    }
    // a checkpoint written before the Δ_w floor existed may hold a flipped Δ_w
    keep_weight_deltas_positive(&mut student);
    let resumed_steps = state.step;
    let mut sched = lr_scheduler(&lrs, &cfg.lr, total)?;
    for _ in 0..state.step {
        sched.step();
    }
    let init_s = t0.elapsed().as_secs_f64();
    let (c, s) = (info.in_channels, info.sample_size);
    for epoch in state.step / per_epoch..cfg.epochs {
        let te = Instant::now();
        let draw = cfg.trajectory_pool.map_or(epoch, |n| epoch % n);
        let seed = cfg.seed ^ (draw as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut rng = NoiseRng::new(seed);
        let x_t = rng.tensor([cfg.batch, c, s, s], device);
        let class = match (info.num_classes, prompts) {
            (Some(n), _) => {
                let ys: Vec<usize> = (0..cfg.batch).map(|_| rng.below(n)).collect();
                Some(dmq_models::Conditioning::Class(labels(&ys, device)))
            }
            (None, Some(p)) if info.cross_attention_dim.is_some() => {
                Some(p.draw(&mut rng, cfg.batch))
            }
            _ => None,
        };
        let guidance = if class.is_some() { cfg.guidance } else { 1.0 };
        let mut traj = Trajectory::new(
            scheduler,
            x_t,
            class,
            info.num_classes,
            guidance,
            seed ^ 0x5EED,
        )?;
        let mut sum = 0.0;
        while !traj.done() {
            let input = traj.inputs()?;
            let ctx = ForwardCtx::new(input.step);
            let eps_fp = traj.guide(
                fp.forward(input.x.clone(), input.t.clone(), input.cond.clone(), &ctx)?,
                c,
            );
            let eps_q = traj.guide(student.forward(input.x, input.t, input.cond, &ctx)?, c);
            let loss = match cfg.target {
                DistillTarget::Eps => distill_loss(eps_q, eps_fp.clone(), c),
                DistillTarget::DdimMean => distill_loss(eps_q, eps_fp.clone(), c)
                    .mul_scalar(ddim_mean_weight(scheduler, input.step.step)?),
            };
            let v = scalar(&loss);
            if !v.is_finite() {
                return Err(FinetuneError::NonFinite {
                    loss: v,
                    epoch,
                    step: input.step.step,
                });
            }
            sum += v;
            let grads = GradientsParams::from_grads(loss.backward(), &student);
            student = optim.step(sched.step(), student, grads);
            // an AdamW step can flip a small TALSQ Δ negative (seen on the UNet W4A8 time_emb_proj input)
            keep_act_deltas_positive(&mut student, input.step.step, &|_| true);
            keep_weight_deltas_positive(&mut student);
            state.step += 1;
            traj.advance(eps_fp.detach())?;
            progress(&FinetuneProgress {
                iteration: state.step,
                total,
                epoch,
                loss: v,
            });
        }
        state
            .losses
            .push((state.step, (sum / per_epoch as f64) as f32));
        state.wall_s += te.elapsed().as_secs_f64();
        if let Some(ck) = &ck
            && ((epoch + 1) % cfg.checkpoint_every == 0 || epoch + 1 == cfg.epochs)
        {
            ck.save(&student, &Vec::<M>::new(), &optim, &state)?;
        }
    }
    Ok((
        student,
        FinetuneReport {
            student: report,
            layer_lrs: lrs,
            steps: total,
            resumed_steps,
            epoch_losses: state.losses.clone(),
            init_s,
            train_s: state.wall_s,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn distill_loss_sums_squares_over_eps_channels_only() {
        let device = Device::default();
        // [1, 2, 1, 2]: channel 0 = ε, channel 1 = learned variance (ignored)
        let s = Tensor::<4>::from_data(
            TensorData::new(vec![1.0f32, -2.0, 5.0, 7.0], [1, 2, 1, 2]),
            &device,
        );
        let t = Tensor::<4>::from_data(
            TensorData::new(vec![0.5f32, 1.0, 0.0, 0.0], [1, 2, 1, 2]),
            &device,
        );
        let l = scalar(&distill_loss(s, t, 1));
        assert!((l - (0.25 + 9.0)).abs() < 1e-6, "{l}");
    }
}
