//! Noise schedulers: DDPM and DDIM over any ascending timestep list, PNDM (PLMS steps) and
//! DPM-Solver++ (multistep, first and second order).
//!
//! - [`NoiseSchedule`] / [`BetaSchedule`]: the training betas and `abar_t`
//!   (`linear`, `scaled_linear`, `squaredcos_cap_v2`), and the forward process
//!   [`NoiseSchedule::add_noise`].
//! - [`DdpmScheduler`]: ancestral sampling (diffusers `DDPMScheduler`), including
//!   DiT's learned-range variance.
//! - [`DdimScheduler`]: DDIM with `eta`, either exactly as diffusers' `DDIMScheduler`
//!   after `set_timesteps` or over an arbitrary ascending list (docs/algorithms.md §1.6).
//! - [`PndmScheduler`]: diffusers' `PNDMScheduler` with `skip_prk_steps` (pseudo linear
//!   multistep, the Stable Diffusion 1.x papers' "PLMS" sampler).
//! - [`DpmSolverScheduler`]: diffusers' `DPMSolverMultistepScheduler` with
//!   `algorithm_type = "dpmsolver++"`, orders 1 and 2 (DPM-Solver++ 2M), optional Karras
//!   sigmas.
//! - [`spacing`]: timestep lists (`leading`, `trailing`, `linspace`, LDM `uniform`,
//!   Q-Diffusion `quad`).
//! - [`PredictionType`]: ε, v or x0 prediction, for every scheduler.
//!
//! The math follows diffusers in float32 and is checked against it by
//! `tests/schedulers.rs` (fixtures from `scripts/fixtures/schedulers.py`).
//!
//! # Multistep state
//! Schedulers are immutable descriptions of a sampling schedule; what a multistep solver
//! remembers between the steps of one trajectory (past model outputs, a saved sample) lives
//! in a [`SolverState`] the caller owns, one per trajectory. Single-step schedulers ignore it.
//!
//! # Step indices
//! A scheduler samples its timesteps in descending order; `step_index` is the position
//! in that order ([`Scheduler::timesteps`]): `0` is the noisiest step, `num_steps() - 1`
//! the last one. Time-indexed quantizers use the same index.
//!
//! ```
//! # #[cfg(feature = "flex")] {
//! use burn::tensor::{Device, Distribution, Tensor};
//! use dmq_models::scheduler::{DdimConfig, DdimScheduler, Scheduler, SolverState};
//!
//! let device = Device::flex();
//! let sched = DdimScheduler::diffusers(&DdimConfig::new(), 10).unwrap();
//! let mut x = Tensor::<4>::random([1, 1, 4, 4], Distribution::Normal(0.0, 1.0), &device);
//! let mut state = SolverState::default();
//! for i in 0..sched.num_steps() {
//!     let eps = x.clone().mul_scalar(0.5); // stand-in for a denoiser eps(x_t, t)
//!     x = sched.step(eps, i, x, None, &mut state).unwrap().prev_sample;
//! }
//! # }
//! ```

mod betas;
mod ddim;
mod ddpm;
mod dpm_solver;
mod error;
mod pndm;
mod prediction;
pub mod spacing;

use burn::tensor::{Distribution, Tensor};

pub use betas::{BetaSchedule, NoiseSchedule, betas};
pub use ddim::{DdimConfig, DdimScheduler};
pub use ddpm::{DdpmConfig, DdpmScheduler, VarianceType};
pub use dpm_solver::{DpmSolverConfig, DpmSolverScheduler, FinalSigmas, SolverType};
pub use error::SchedulerError;
pub use pndm::{PndmConfig, PndmScheduler};
pub use prediction::PredictionType;
pub use spacing::TimestepSpacing;

/// The result of one reverse step.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// `x_{t_prev}`, the sample after the step. Shape `[B, C, H, W]`.
    pub prev_sample: Tensor<4>,
    /// The predicted clean sample `x0_hat` (after clipping when enabled).
    /// Shape `[B, C, H, W]`.
    pub pred_original_sample: Tensor<4>,
}

/// What a multistep solver carries from one step of a trajectory to the next (module docs):
/// start each trajectory with `SolverState::default()` and pass the same value to every step.
#[derive(Debug, Clone, Default)]
pub struct SolverState {
    /// Past (converted) model outputs, oldest first: ε for PLMS, x0 for DPM-Solver++.
    pub history: Vec<Tensor<4>>,
    /// A sample kept for a later step (PLMS redoes its first step from x_T).
    pub saved_sample: Option<Tensor<4>>,
}

/// A reverse-diffusion sampler over a fixed list of timesteps.
///
/// The math runs on burn tensors, so a scheduler works on any backend; the
/// per-timestep coefficients are computed on the host in `f32`.
pub trait Scheduler {
    /// The timesteps in sampling order (descending). `timesteps()[step_index]` is the
    /// `t` to feed the denoiser at that step.
    fn timesteps(&self) -> &[usize];

    /// Number of sampling steps.
    fn num_steps(&self) -> usize {
        self.timesteps().len()
    }

    /// The timestep of one step.
    ///
    /// # Errors
    /// [`SchedulerError::StepIndexOutOfRange`].
    fn timestep(&self, step_index: usize) -> Result<usize, SchedulerError> {
        let ts = self.timesteps();
        ts.get(step_index)
            .copied()
            .ok_or(SchedulerError::StepIndexOutOfRange {
                step_index,
                num_steps: ts.len(),
            })
    }

    /// The training noise schedule.
    fn noise_schedule(&self) -> &NoiseSchedule;

    /// Whether [`Scheduler::step`] takes the model's learned variance channels after ε
    /// (`[B, 2C, H, W]`, DDPM with a learned variance type) instead of ε alone.
    fn takes_variance(&self) -> bool {
        false
    }

    /// What the model's output is (ε, v or x0).
    fn prediction_type(&self) -> PredictionType {
        PredictionType::Epsilon
    }

    /// One reverse step from `x_t` (at `timesteps()[step_index]`) to the next timestep.
    ///
    /// `model_output` is the (guided) network output, read per
    /// [`Scheduler::prediction_type`]. `noise` is the standard normal noise of stochastic
    /// steps; pass it for determinism, or `None` to draw it on `x_t`'s device.
    /// Deterministic steps ignore it. `state` is the trajectory's [`SolverState`]: steps
    /// must be taken in order `0, 1, ...` with the same state for multistep schedulers.
    ///
    /// # Shapes
    /// - `model_output`: `[B, C, H, W]` (`[B, 2C, H, W]` for learned-variance DDPM)
    /// - `x_t`, `noise`: `[B, C, H, W]`
    ///
    /// # Errors
    /// [`SchedulerError::StepIndexOutOfRange`], [`SchedulerError::ShapeMismatch`],
    /// [`SchedulerError::OutOfOrder`] (a multistep scheduler given a state from another
    /// step).
    fn step(
        &self,
        model_output: Tensor<4>,
        step_index: usize,
        x_t: Tensor<4>,
        noise: Option<Tensor<4>>,
        state: &mut SolverState,
    ) -> Result<StepOutput, SchedulerError>;

    /// Forward process `x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`
    /// (see [`NoiseSchedule::add_noise`]).
    ///
    /// # Errors
    /// See [`NoiseSchedule::add_noise`].
    fn add_noise(
        &self,
        x0: Tensor<4>,
        noise: Tensor<4>,
        t: &[usize],
    ) -> Result<Tensor<4>, SchedulerError> {
        self.noise_schedule().add_noise(x0, noise, t)
    }
}

/// Returns an error unless `actual == expected`.
fn check_shape(
    what: &'static str,
    expected: [usize; 4],
    actual: [usize; 4],
) -> Result<(), SchedulerError> {
    if expected != actual {
        return Err(SchedulerError::ShapeMismatch {
            what,
            expected: expected.to_vec(),
            actual: actual.to_vec(),
        });
    }
    Ok(())
}

/// The given noise (shape-checked against `like`) or fresh `N(0, 1)` noise on its device.
fn noise_or_sample(
    noise: Option<Tensor<4>>,
    like: &Tensor<4>,
) -> Result<Tensor<4>, SchedulerError> {
    match noise {
        Some(n) => {
            check_shape("noise (must match x_t)", like.dims(), n.dims())?;
            Ok(n)
        }
        None => Ok(Tensor::random(
            like.shape(),
            Distribution::Normal(0.0, 1.0),
            &like.device(),
        )),
    }
}

/// `(x0_hat, eps_hat)` from a model output ([`PredictionType::x0_and_eps`]), `x0_hat`
/// clamped to `[-r, r]` when a clip range is given.
fn predict_x0_eps(
    prediction: PredictionType,
    model_output: Tensor<4>,
    x_t: Tensor<4>,
    alpha_prod_t: f32,
    clip_range: Option<f32>,
) -> (Tensor<4>, Tensor<4>) {
    let (x0, eps) = prediction.x0_and_eps(model_output, x_t, alpha_prod_t);
    match clip_range {
        Some(r) => (x0.clamp(-r, r), eps),
        None => (x0, eps),
    }
}
