//! The training loop of the model-training examples (`train`, `train_t2i`): AdamW under a
//! learning-rate schedule, an EMA of the weights, a resumable checkpoint every `every` steps
//! (re-running the same command resumes where the last checkpoint left off), a progress bar
//! with the smoothed loss and ETA, and the loss log kept in the [`TrainState`].
//!
//! Included with `#[path = "common/fit.rs"] mod fit;` so that an example compiles only this
//! file of `common/`.

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;
use dmq::eval::progress::Progress;
use dmq::models::ModelError;
use dmq::models::train::{Checkpoint, Ema, LrSchedule, TrainState};

/// One step's loss and a status text for the progress bar.
pub type StepLoss = Result<(Tensor<1>, String), ModelError>;

/// EMA decay of every training example.
pub const EMA_DECAY: f64 = 0.999;

/// What one training run is.
pub struct Fit<'a> {
    /// Progress-bar label.
    pub label: &'a str,
    /// Total optimiser steps.
    pub steps: usize,
    /// Checkpoint period in steps.
    pub every: usize,
    /// Learning rate per step.
    pub lr: LrSchedule,
    /// Checkpoint directory.
    pub ckpt: &'a Path,
    /// The run's settings, stored in the state (a resumed run stores the current ones;
    /// `Null` keeps the stored ones).
    pub notes: serde_json::Value,
}

/// Trains `model` (or resumes it from `fit.ckpt`) until `fit.steps`. `loss_of(model, step)`
/// gives the step's loss and a status text; its randomness must be seeded from `step` so a
/// resumed run draws what the uninterrupted run would have drawn. Returns the EMA weights and
/// the final state (`wall_s` summed over sessions). A non-finite loss stops with an error
/// naming the step.
pub fn fit<M: Module + Clone>(
    model: M,
    optim: ModuleOptimizer,
    fit: &Fit<'_>,
    loss_of: &mut dyn FnMut(&M, usize) -> StepLoss,
) -> Result<(M, TrainState), ModelError> {
    let (mut model, mut optim) = (model, optim);
    let mut ema = Ema::new(&model, EMA_DECAY);
    let mut state = TrainState::default();
    let ckpt = Checkpoint::new(fit.ckpt);
    if let Some((m, e, o, s)) = ckpt.load(model.clone(), ema.shadow().clone(), optim.clone())? {
        eprintln!(
            "resuming {} at step {} ({:.0} s trained so far)",
            fit.ckpt.display(),
            s.step,
            s.wall_s
        );
        model = m;
        ema = Ema::resume(e, EMA_DECAY, s.ema_updates);
        optim = o;
        state = s;
    }
    if !fit.notes.is_null() {
        state.notes = fit.notes.clone();
    }
    let mut bar = Progress::new(fit.label, fit.steps as u64, state.step as u64);
    let session = Instant::now();
    let wall0 = state.wall_s;
    let mut smooth = state.losses.last().map(|&(_, l)| f64::from(l));
    while state.step < fit.steps {
        let step = state.step;
        let (loss, status) = loss_of(&model, step)?;
        let l = loss.clone().into_scalar::<f64>();
        if !l.is_finite() {
            return Err(ModelError::Config(format!(
                "{}: loss became {l} at step {step}; lower --lr",
                fit.label
            )));
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(fit.lr.at(step), model, grads);
        ema.update(&model);
        state.step += 1;
        state.ema_updates = ema.updates();
        let s = smooth.map_or(l, |s| 0.98 * s + 0.02 * l);
        smooth = Some(s);
        if state.step.is_multiple_of(10) {
            state.losses.push((state.step, s as f32));
        }
        bar.set(
            state.step as u64,
            format!("loss {s:.4} lr {:.2e} {status}", fit.lr.at(step)),
        );
        if state.step.is_multiple_of(fit.every) || state.step == fit.steps {
            state.wall_s = wall0 + session.elapsed().as_secs_f64();
            ckpt.save(&model, ema.shadow(), &optim, &state)?;
        }
    }
    bar.finish();
    state.wall_s = wall0 + session.elapsed().as_secs_f64();
    Ok((ema.shadow().clone(), state))
}

/// Linear warm-up over `warmup` steps to `peak`, then cosine decay to `peak / 20` at `steps`.
pub fn cosine_lr(peak: f64, steps: usize, warmup: usize) -> LrSchedule {
    LrSchedule {
        peak,
        final_lr: peak * 0.05,
        warmup,
        total: steps,
        cosine: true,
    }
}

/// The smoothed loss log of `state` as a curve, for a PNG.
pub fn loss_curve(state: &TrainState) -> Vec<(f64, f64)> {
    state
        .losses
        .iter()
        .map(|&(s, l)| (s as f64, f64::from(l)))
        .collect()
}
