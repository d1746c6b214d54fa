//! DDIM (Song et al. 2021) over any ascending timestep list.
//!
//! For step `i` at `t = tau_i` moving to `t_prev`:
//!
//! ```text
//! a      = abar[t],  a_prev = abar[t_prev]   (final alpha when there is no t_prev)
//! x0_hat, eps = from the model output per the prediction type     (x0_hat clamped to
//!               [-r, r] if clip_sample; ε-prediction: x0_hat = (x_t - sqrt(1 - a) eps) / sqrt(a))
//! sigma  = eta * sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
//! x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps + sigma z
//! ```
//!
//! Two rules pick `t_prev`:
//! - [`DdimScheduler::with_timesteps`]: the previous entry of the ascending list
//!   (docs/algorithms.md §1.6; LDM, Q-Diffusion, TMPQ-DM's searched lists);
//! - [`DdimScheduler::diffusers`]: diffusers' `t - N / S`, whatever the spacing (it
//!   equals the list rule for `leading`, not for `trailing` / `linspace`).
//!
//! The final alpha is `1` with `set_alpha_to_one` (diffusers default, DDIM repo) and
//! `abar[0]` without (LDM's `make_ddim_sampling_parameters`).

use burn::config::Config;
use burn::tensor::Tensor;

use super::spacing::{self, PrevRule, TimestepSpacing};
use super::{
    BetaSchedule, NoiseSchedule, PredictionType, Scheduler, SchedulerError, SolverState,
    StepOutput, check_shape, noise_or_sample, predict_x0_eps,
};

/// Configuration of a [`DdimScheduler`]; defaults are diffusers' `DDIMScheduler` ones
/// (plus `eta`, which diffusers passes to `step`).
#[derive(Config, Debug)]
pub struct DdimConfig {
    /// Length `N` of the training schedule.
    #[config(default = 1000)]
    pub num_train_timesteps: usize,
    /// First beta (`linear`, `scaled_linear`).
    #[config(default = 0.0001)]
    pub beta_start: f64,
    /// Last beta (`linear`, `scaled_linear`).
    #[config(default = 0.02)]
    pub beta_end: f64,
    /// Beta layout.
    #[config(default = "BetaSchedule::Linear")]
    pub beta_schedule: BetaSchedule,
    /// Explicit betas (diffusers `trained_betas`); overrides the three fields above.
    pub trained_betas: Option<Vec<f32>>,
    /// Clamp `x0_hat` to `[-clip_sample_range, clip_sample_range]`.
    #[config(default = true)]
    pub clip_sample: bool,
    /// Clamp range of `clip_sample`.
    #[config(default = 1.0)]
    pub clip_sample_range: f64,
    /// Final alpha is `1` (true) or `abar[0]` (false).
    #[config(default = true)]
    pub set_alpha_to_one: bool,
    /// Added to `leading` timesteps (diffusers `steps_offset`; SD uses 1).
    #[config(default = 0)]
    pub steps_offset: usize,
    /// Spacing of [`DdimScheduler::diffusers`].
    #[config(default = "TimestepSpacing::Leading")]
    pub timestep_spacing: TimestepSpacing,
    /// Stochasticity: `0` is deterministic DDIM, `1` has DDPM-like variance. Must be `>= 0`.
    #[config(default = 0.0)]
    pub eta: f64,
    /// Recompute `eps` from the clipped `x0_hat` before the direction term.
    #[config(default = false)]
    pub use_clipped_model_output: bool,
    /// What the model outputs.
    #[config(default = "PredictionType::Epsilon")]
    pub prediction_type: PredictionType,
}

impl DdimConfig {
    /// The training noise schedule of this config.
    ///
    /// # Errors
    /// [`SchedulerError::InvalidBetas`].
    pub fn noise_schedule(&self) -> Result<NoiseSchedule, SchedulerError> {
        NoiseSchedule::from_config(
            self.trained_betas.as_deref(),
            self.beta_schedule,
            self.num_train_timesteps,
            self.beta_start,
            self.beta_end,
        )
    }
}

/// DDIM sampler over a fixed timestep list (see the module docs for the formula).
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    schedule: NoiseSchedule,
    /// Sampling order (descending).
    timesteps: Vec<usize>,
    /// `t_prev` of each entry of `timesteps`.
    prev: Vec<Option<usize>>,
    final_alpha_cumprod: f32,
    eta: f32,
    clip_range: Option<f32>,
    use_clipped_model_output: bool,
    prediction: PredictionType,
}

impl DdimScheduler {
    /// diffusers `DDIMScheduler` after `set_timesteps(num_inference_steps)`: the list
    /// from `config.timestep_spacing` / `steps_offset` and `t_prev = t - N / S`.
    ///
    /// # Errors
    /// [`SchedulerError::InvalidNumSteps`], [`SchedulerError::InvalidEta`],
    /// [`SchedulerError::InvalidBetas`], [`SchedulerError::InvalidConfig`],
    /// [`SchedulerError::TimestepOutOfRange`].
    pub fn diffusers(
        config: &DdimConfig,
        num_inference_steps: usize,
    ) -> Result<Self, SchedulerError> {
        let schedule = config.noise_schedule()?;
        let n = schedule.num_train_timesteps();
        let asc = spacing::diffusers_timesteps(
            config.timestep_spacing,
            num_inference_steps,
            n,
            config.steps_offset,
        )?;
        Self::build(
            config,
            schedule,
            &asc,
            PrevRule::Stride(n / num_inference_steps),
        )
    }

    /// DDIM over an arbitrary strictly ascending list `tau_0 < ... < tau_{S-1}`
    /// (uniform, quad, searched): `t_prev` of `tau_i` is `tau_{i-1}`, and the final
    /// alpha for `tau_0`. `config.timestep_spacing` and `steps_offset` are not used.
    ///
    /// # Errors
    /// [`SchedulerError::EmptyTimesteps`], [`SchedulerError::NotAscending`],
    /// [`SchedulerError::TimestepOutOfRange`], [`SchedulerError::InvalidEta`],
    /// [`SchedulerError::InvalidBetas`], [`SchedulerError::InvalidConfig`].
    pub fn with_timesteps(
        config: &DdimConfig,
        ascending: &[usize],
    ) -> Result<Self, SchedulerError> {
        let schedule = config.noise_schedule()?;
        Self::build(config, schedule, ascending, PrevRule::ListNeighbour)
    }

    fn build(
        config: &DdimConfig,
        schedule: NoiseSchedule,
        ascending: &[usize],
        rule: PrevRule,
    ) -> Result<Self, SchedulerError> {
        if !(config.eta.is_finite() && config.eta >= 0.0) {
            return Err(SchedulerError::InvalidEta(config.eta));
        }
        if !(config.clip_sample_range.is_finite() && config.clip_sample_range > 0.0) {
            return Err(SchedulerError::InvalidConfig(format!(
                "clip_sample_range must be finite and > 0, got {}",
                config.clip_sample_range
            )));
        }
        spacing::validate_timesteps(ascending, schedule.num_train_timesteps())?;
        let mut prev = spacing::prev_timesteps(ascending, rule);
        prev.reverse();
        let timesteps: Vec<usize> = ascending.iter().rev().copied().collect();
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            schedule.alphas_cumprod()[0]
        };
        Ok(Self {
            schedule,
            timesteps,
            prev,
            final_alpha_cumprod,
            eta: config.eta as f32,
            clip_range: config
                .clip_sample
                .then_some(config.clip_sample_range as f32),
            use_clipped_model_output: config.use_clipped_model_output,
            prediction: config.prediction_type,
        })
    }

    /// The timestep a step moves to (`None`: the final alpha is used).
    ///
    /// # Errors
    /// [`SchedulerError::StepIndexOutOfRange`].
    pub fn prev_timestep(&self, step_index: usize) -> Result<Option<usize>, SchedulerError> {
        self.check_index(step_index)?;
        Ok(self.prev[step_index])
    }

    /// `eta` of this scheduler.
    pub fn eta(&self) -> f64 {
        f64::from(self.eta)
    }

    /// `(abar_t, abar_prev)` of a step.
    ///
    /// # Errors
    /// [`SchedulerError::StepIndexOutOfRange`].
    pub fn alphas(&self, step_index: usize) -> Result<(f32, f32), SchedulerError> {
        self.check_index(step_index)?;
        let ac = self.schedule.alphas_cumprod();
        let a_t = ac[self.timesteps[step_index]];
        let a_prev = self.prev[step_index].map_or(self.final_alpha_cumprod, |p| ac[p]);
        Ok((a_t, a_prev))
    }

    /// `sigma_t = eta * sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))` of a step.
    ///
    /// # Errors
    /// [`SchedulerError::StepIndexOutOfRange`].
    pub fn sigma(&self, step_index: usize) -> Result<f32, SchedulerError> {
        let (a_t, a_prev) = self.alphas(step_index)?;
        Ok(self.eta * variance(a_t, a_prev).sqrt())
    }

    /// The predicted clean sample `x0_hat` of a step (clipped when `clip_sample`).
    ///
    /// # Shapes
    /// - `model_output`, `x_t`: `[B, C, H, W]`
    /// - output: `[B, C, H, W]`
    ///
    /// # Errors
    /// [`SchedulerError::StepIndexOutOfRange`], [`SchedulerError::ShapeMismatch`].
    pub fn predict_x0(
        &self,
        model_output: Tensor<4>,
        step_index: usize,
        x_t: Tensor<4>,
    ) -> Result<Tensor<4>, SchedulerError> {
        let (a_t, _) = self.alphas(step_index)?;
        check_shape(
            "model output (must match x_t)",
            x_t.dims(),
            model_output.dims(),
        )?;
        Ok(predict_x0_eps(self.prediction, model_output, x_t, a_t, self.clip_range).0)
    }

    fn check_index(&self, step_index: usize) -> Result<(), SchedulerError> {
        if step_index >= self.timesteps.len() {
            return Err(SchedulerError::StepIndexOutOfRange {
                step_index,
                num_steps: self.timesteps.len(),
            });
        }
        Ok(())
    }
}

/// `(1 - a_prev) / (1 - a) * (1 - a / a_prev)` in diffusers' f32 op order.
fn variance(a_t: f32, a_prev: f32) -> f32 {
    let beta_prod_t = 1.0 - a_t;
    let beta_prod_t_prev = 1.0 - a_prev;
    (beta_prod_t_prev / beta_prod_t) * (1.0 - a_t / a_prev)
}

impl Scheduler for DdimScheduler {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn noise_schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction
    }

    /// One DDIM step; `noise` is used only when `eta > 0`; `state` is not used.
    fn step(
        &self,
        model_output: Tensor<4>,
        step_index: usize,
        x_t: Tensor<4>,
        noise: Option<Tensor<4>>,
        _state: &mut SolverState,
    ) -> Result<StepOutput, SchedulerError> {
        let (a_t, a_prev) = self.alphas(step_index)?;
        check_shape(
            "model output (must match x_t)",
            x_t.dims(),
            model_output.dims(),
        )?;
        let noise = if self.eta > 0.0 {
            Some(noise_or_sample(noise, &x_t)?)
        } else {
            None
        };
        let beta_prod_t = 1.0 - a_t;
        let (x0, eps) = predict_x0_eps(
            self.prediction,
            model_output,
            x_t.clone(),
            a_t,
            self.clip_range,
        );
        let std_dev_t = self.eta * variance(a_t, a_prev).sqrt();
        let eps = if self.use_clipped_model_output {
            x_t.sub(x0.clone().mul_scalar(a_t.sqrt()))
                .div_scalar(beta_prod_t.sqrt())
        } else {
            eps
        };
        // max(0): for eta > 1 the direction coefficient would be imaginary.
        let dir_coeff = (1.0 - a_prev - std_dev_t * std_dev_t).max(0.0).sqrt();
        let mut prev = x0
            .clone()
            .mul_scalar(a_prev.sqrt())
            .add(eps.mul_scalar(dir_coeff));
        if let Some(z) = noise {
            prev = prev.add(z.mul_scalar(std_dev_t));
        }
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: x0,
        })
    }
}
