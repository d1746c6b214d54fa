//! DDPM ancestral sampling (Ho et al. 2020), diffusers `DDPMScheduler` semantics.
//!
//! For a step at `t` moving to `t_prev` (the previous entry of the ascending list; none
//! for the first entry, where `abar_prev = 1`):
//!
//! ```text
//! a = abar[t], a_prev = abar[t_prev], alpha_t = a / a_prev, beta_t = 1 - alpha_t
//! x0_hat = from the model output per the prediction type     (clamped if clip_sample;
//!          ε-prediction: (x_t - sqrt(1 - a) eps) / sqrt(a))
//! mean   = sqrt(a_prev) beta_t / (1 - a) * x0_hat + sqrt(alpha_t) (1 - a_prev) / (1 - a) * x_t
//! var    = max((1 - a_prev) / (1 - a) * beta_t, 1e-20)        (posterior variance)
//! x_prev = mean + std * z                                      (only when t > 0)
//! ```
//!
//! with `std` from [`VarianceType`]. As in diffusers, noise is added whenever the
//! timestep value `t` is positive, including a last step at `t = 1` of an offset list.

use std::str::FromStr;

use burn::config::Config;
use burn::tensor::Tensor;

use super::spacing::{self, PrevRule, TimestepSpacing};
use super::{
    BetaSchedule, NoiseSchedule, PredictionType, Scheduler, SchedulerError, SolverState,
    StepOutput, check_shape, noise_or_sample, predict_x0_eps,
};

/// How DDPM's step noise is scaled (diffusers `variance_type`).
///
/// `var` below is the clamped posterior variance of the module docs, `beta_t` the
/// step's `1 - abar_t / abar_prev`, and `v` the model's variance output (the second half
/// of the channels of `eps` for the learned variants).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum VarianceType {
    /// `fixed_small`: `std = sqrt(var)`.
    FixedSmall,
    /// `fixed_small_log`: `std = exp(0.5 * ln(var))`.
    FixedSmallLog,
    /// `fixed_large`: `std = sqrt(beta_t)`.
    FixedLarge,
    /// `learned`: `std = sqrt(v)` element-wise (`v` must be positive).
    Learned,
    /// `learned_range` (improved DDPM, DiT): `frac = (v + 1) / 2`,
    /// `std = exp(0.5 * (frac ln(beta_t) + (1 - frac) ln(var)))` element-wise.
    LearnedRange,
}

impl VarianceType {
    /// Whether the model predicts the variance (eps carries `2C` channels).
    pub fn is_learned(&self) -> bool {
        matches!(self, Self::Learned | Self::LearnedRange)
    }

    /// The diffusers config string.
    pub fn diffusers_name(&self) -> &'static str {
        match self {
            Self::FixedSmall => "fixed_small",
            Self::FixedSmallLog => "fixed_small_log",
            Self::FixedLarge => "fixed_large",
            Self::Learned => "learned",
            Self::LearnedRange => "learned_range",
        }
    }
}

impl FromStr for VarianceType {
    type Err = SchedulerError;

    /// Parses a diffusers `variance_type` string (`fixed_large_log` is not supported:
    /// diffusers takes the square root of a log there, which is NaN).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fixed_small" => Ok(Self::FixedSmall),
            "fixed_small_log" => Ok(Self::FixedSmallLog),
            "fixed_large" => Ok(Self::FixedLarge),
            "learned" => Ok(Self::Learned),
            "learned_range" => Ok(Self::LearnedRange),
            _ => Err(SchedulerError::UnknownName {
                what: "variance_type",
                name: s.to_string(),
                expected: "fixed_small, fixed_small_log, fixed_large, learned, learned_range",
            }),
        }
    }
}

/// Configuration of a [`DdpmScheduler`]; defaults are diffusers' `DDPMScheduler` ones.
#[derive(Config, Debug)]
pub struct DdpmConfig {
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
    /// Scale of the step noise.
    #[config(default = "VarianceType::FixedSmall")]
    pub variance_type: VarianceType,
    /// Clamp `x0_hat` to `[-clip_sample_range, clip_sample_range]`.
    #[config(default = true)]
    pub clip_sample: bool,
    /// Clamp range of `clip_sample`.
    #[config(default = 1.0)]
    pub clip_sample_range: f64,
    /// Spacing of [`DdpmScheduler::with_num_steps`].
    #[config(default = "TimestepSpacing::Leading")]
    pub timestep_spacing: TimestepSpacing,
    /// Added to `leading` timesteps.
    #[config(default = 0)]
    pub steps_offset: usize,
    /// What the model outputs.
    #[config(default = "PredictionType::Epsilon")]
    pub prediction_type: PredictionType,
}

impl DdpmConfig {
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

/// DDPM sampler (see the module docs for the formula).
#[derive(Debug, Clone)]
pub struct DdpmScheduler {
    schedule: NoiseSchedule,
    /// Sampling order (descending).
    timesteps: Vec<usize>,
    prev: Vec<Option<usize>>,
    variance_type: VarianceType,
    clip_range: Option<f32>,
    prediction: PredictionType,
}

impl DdpmScheduler {
    /// All `N` training timesteps, `N - 1` down to `0` (diffusers without `set_timesteps`).
    ///
    /// # Errors
    /// [`SchedulerError::InvalidBetas`], [`SchedulerError::InvalidConfig`].
    pub fn new(config: &DdpmConfig) -> Result<Self, SchedulerError> {
        let schedule = config.noise_schedule()?;
        let asc: Vec<usize> = (0..schedule.num_train_timesteps()).collect();
        Self::build(config, schedule, &asc)
    }

    /// diffusers `set_timesteps(num_inference_steps)`: the list from
    /// `config.timestep_spacing` / `steps_offset`; each step moves to the next listed
    /// timestep (diffusers' `previous_timestep`).
    ///
    /// # Errors
    /// [`SchedulerError::InvalidNumSteps`], [`SchedulerError::TimestepOutOfRange`],
    /// [`SchedulerError::InvalidBetas`], [`SchedulerError::InvalidConfig`].
    pub fn with_num_steps(
        config: &DdpmConfig,
        num_inference_steps: usize,
    ) -> Result<Self, SchedulerError> {
        let schedule = config.noise_schedule()?;
        let asc = spacing::diffusers_timesteps(
            config.timestep_spacing,
            num_inference_steps,
            schedule.num_train_timesteps(),
            config.steps_offset,
        )?;
        Self::build(config, schedule, &asc)
    }

    /// An arbitrary strictly ascending list (diffusers `set_timesteps(timesteps=...)`,
    /// given here in ascending order).
    ///
    /// # Errors
    /// [`SchedulerError::EmptyTimesteps`], [`SchedulerError::NotAscending`],
    /// [`SchedulerError::TimestepOutOfRange`], [`SchedulerError::InvalidBetas`],
    /// [`SchedulerError::InvalidConfig`].
    pub fn with_timesteps(
        config: &DdpmConfig,
        ascending: &[usize],
    ) -> Result<Self, SchedulerError> {
        let schedule = config.noise_schedule()?;
        Self::build(config, schedule, ascending)
    }

    fn build(
        config: &DdpmConfig,
        schedule: NoiseSchedule,
        ascending: &[usize],
    ) -> Result<Self, SchedulerError> {
        if !(config.clip_sample_range.is_finite() && config.clip_sample_range > 0.0) {
            return Err(SchedulerError::InvalidConfig(format!(
                "clip_sample_range must be finite and > 0, got {}",
                config.clip_sample_range
            )));
        }
        spacing::validate_timesteps(ascending, schedule.num_train_timesteps())?;
        let mut prev = spacing::prev_timesteps(ascending, PrevRule::ListNeighbour);
        prev.reverse();
        Ok(Self {
            schedule,
            timesteps: ascending.iter().rev().copied().collect(),
            prev,
            variance_type: config.variance_type,
            clip_range: config
                .clip_sample
                .then_some(config.clip_sample_range as f32),
            prediction: config.prediction_type,
        })
    }

    /// The variance type.
    pub fn variance_type(&self) -> VarianceType {
        self.variance_type
    }

    /// The timestep a step moves to (`None`: `abar_prev = 1`).
    ///
    /// # Errors
    /// [`SchedulerError::StepIndexOutOfRange`].
    pub fn prev_timestep(&self, step_index: usize) -> Result<Option<usize>, SchedulerError> {
        self.check_index(step_index)?;
        Ok(self.prev[step_index])
    }

    /// `(abar_t, abar_prev)` of a step.
    ///
    /// # Errors
    /// [`SchedulerError::StepIndexOutOfRange`].
    pub fn alphas(&self, step_index: usize) -> Result<(f32, f32), SchedulerError> {
        self.check_index(step_index)?;
        let ac = self.schedule.alphas_cumprod();
        let a_t = ac[self.timesteps[step_index]];
        let a_prev = self.prev[step_index].map_or(1.0, |p| ac[p]);
        Ok((a_t, a_prev))
    }

    /// The clamped posterior variance `max((1 - a_prev) / (1 - a) * beta_t, 1e-20)`.
    ///
    /// # Errors
    /// [`SchedulerError::StepIndexOutOfRange`].
    pub fn posterior_variance(&self, step_index: usize) -> Result<f32, SchedulerError> {
        let (a_t, a_prev) = self.alphas(step_index)?;
        Ok(posterior_variance(a_t, a_prev))
    }

    /// The predicted clean sample `x0_hat` of a step (clipped when `clip_sample`).
    ///
    /// # Shapes
    /// - `eps`: `[B, C, H, W]`, or `[B, 2C, H, W]` for learned variances (the variance
    ///   half is ignored)
    /// - `x_t`: `[B, C, H, W]`
    /// - output: `[B, C, H, W]`
    ///
    /// # Errors
    /// [`SchedulerError::StepIndexOutOfRange`], [`SchedulerError::ShapeMismatch`].
    pub fn predict_x0(
        &self,
        eps: Tensor<4>,
        step_index: usize,
        x_t: Tensor<4>,
    ) -> Result<Tensor<4>, SchedulerError> {
        let (a_t, _) = self.alphas(step_index)?;
        let (out, _) = self.split_output(eps, &x_t)?;
        Ok(predict_x0_eps(self.prediction, out, x_t, a_t, self.clip_range).0)
    }

    /// Splits a learned-variance output `[B, 2C, H, W]` into `(eps, v)`; checks shapes.
    fn split_output(
        &self,
        out: Tensor<4>,
        x_t: &Tensor<4>,
    ) -> Result<(Tensor<4>, Option<Tensor<4>>), SchedulerError> {
        let xd = x_t.dims();
        if self.variance_type.is_learned() {
            let mut expected = xd;
            expected[1] *= 2;
            check_shape(
                "model output (learned variance: [B, 2C, H, W] for x_t [B, C, H, W])",
                expected,
                out.dims(),
            )?;
            let c = xd[1];
            Ok((out.clone().narrow(1, 0, c), Some(out.narrow(1, c, c))))
        } else {
            check_shape("eps (must match x_t)", xd, out.dims())?;
            Ok((out, None))
        }
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

/// `max((1 - a_prev) / (1 - a) * (1 - a / a_prev), 1e-20)` in diffusers' f32 op order.
fn posterior_variance(a_t: f32, a_prev: f32) -> f32 {
    let current_beta_t = 1.0 - a_t / a_prev;
    ((1.0 - a_prev) / (1.0 - a_t) * current_beta_t).max(1e-20)
}

impl Scheduler for DdpmScheduler {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn noise_schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    fn takes_variance(&self) -> bool {
        self.variance_type().is_learned()
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction
    }

    /// One DDPM step; `noise` is used only when the step's timestep is `> 0`; `state` is
    /// not used.
    fn step(
        &self,
        model_output: Tensor<4>,
        step_index: usize,
        x_t: Tensor<4>,
        noise: Option<Tensor<4>>,
        _state: &mut SolverState,
    ) -> Result<StepOutput, SchedulerError> {
        let (a_t, a_prev) = self.alphas(step_index)?;
        let t = self.timesteps[step_index];
        let (out, predicted_variance) = self.split_output(model_output, &x_t)?;
        let noise = if t > 0 {
            Some(noise_or_sample(noise, &x_t)?)
        } else {
            None
        };

        let beta_prod_t = 1.0 - a_t;
        let beta_prod_t_prev = 1.0 - a_prev;
        let current_alpha_t = a_t / a_prev;
        let current_beta_t = 1.0 - current_alpha_t;

        let (x0, _) = predict_x0_eps(self.prediction, out, x_t.clone(), a_t, self.clip_range);
        let x0_coeff = (a_prev.sqrt() * current_beta_t) / beta_prod_t;
        let xt_coeff = current_alpha_t.sqrt() * beta_prod_t_prev / beta_prod_t;
        let mut prev = x0
            .clone()
            .mul_scalar(x0_coeff)
            .add(x_t.mul_scalar(xt_coeff));

        if let Some(z) = noise {
            let var = posterior_variance(a_t, a_prev);
            let term = match (self.variance_type, predicted_variance) {
                (VarianceType::FixedSmall, _) => z.mul_scalar(var.sqrt()),
                (VarianceType::FixedSmallLog, _) => z.mul_scalar((0.5 * var.ln()).exp()),
                (VarianceType::FixedLarge, _) => z.mul_scalar(current_beta_t.sqrt()),
                (VarianceType::Learned, Some(v)) => v.sqrt().mul(z),
                (VarianceType::LearnedRange, Some(v)) => {
                    let min_log = var.ln();
                    let max_log = current_beta_t.ln();
                    let frac = v.add_scalar(1.0).div_scalar(2.0);
                    let one_minus = frac.clone().neg().add_scalar(1.0);
                    let log_var = frac.mul_scalar(max_log).add(one_minus.mul_scalar(min_log));
                    log_var.mul_scalar(0.5).exp().mul(z)
                }
                // split_output always returns Some for the learned variants.
                (VarianceType::Learned | VarianceType::LearnedRange, None) => {
                    return Err(SchedulerError::InvalidConfig(
                        "learned variance without a variance output".into(),
                    ));
                }
            };
            prev = prev.add(term);
        }
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: x0,
        })
    }
}
