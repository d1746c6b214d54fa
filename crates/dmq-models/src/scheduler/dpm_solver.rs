//! DPM-Solver++ (Lu et al. 2022), diffusers `DPMSolverMultistepScheduler` with
//! `algorithm_type = "dpmsolver++"`: first order (DDIM in data-prediction form) and the
//! second-order multistep update ("DPM++ 2M"), optionally on Karras sigmas.
//!
//! With `σ_i = sqrt((1 - abar) / abar)` at the step's timestep (or a Karras sigma),
//! `α = 1 / sqrt(σ² + 1)`, `s = σ α`, `λ = ln α - ln s`, and `x0_i` the clean-sample estimate
//! of step `i` (from ε, v or x0 per the prediction type):
//!
//! ```text
//! h   = λ_{i+1} - λ_i
//! 1st order:  x_{i+1} = (s_{i+1} / s_i) x_i - α_{i+1} (e^{-h} - 1) x0_i
//! 2nd order:  r = (λ_i - λ_{i-1}) / h,  D1 = (x0_i - x0_{i-1}) / r
//!   midpoint: x_{i+1} = (s_{i+1} / s_i) x_i - α_{i+1} (e^{-h} - 1) x0_i - ½ α_{i+1} (e^{-h} - 1) D1
//!   heun:     x_{i+1} = (s_{i+1} / s_i) x_i - α_{i+1} (e^{-h} - 1) x0_i + α_{i+1} ((e^{-h} - 1) / h + 1) D1
//! ```
//!
//! The first step is first order, and so is the last one when `final_sigmas_type = "zero"`
//! (σ = 0 after the last step, where the update returns `x0`), `euler_at_final`, or
//! `lower_order_final` with fewer than 15 steps. Coefficients are computed on the host in
//! f32 in diffusers' op order.

use std::str::FromStr;

use burn::config::Config;
use burn::tensor::Tensor;

use super::spacing::{TimestepSpacing, numpy_linspace};
use super::{
    BetaSchedule, NoiseSchedule, PredictionType, Scheduler, SchedulerError, SolverState,
    StepOutput, check_shape,
};

/// The second-order update's form (diffusers `solver_type`).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum SolverType {
    /// `midpoint` (the default).
    Midpoint,
    /// `heun`.
    Heun,
}

impl FromStr for SolverType {
    type Err = SchedulerError;

    /// Parses a diffusers `solver_type` string.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "midpoint" => Ok(Self::Midpoint),
            "heun" => Ok(Self::Heun),
            _ => Err(SchedulerError::UnknownName {
                what: "solver_type",
                name: s.to_string(),
                expected: "midpoint, heun",
            }),
        }
    }
}

/// The sigma after the last step (diffusers `final_sigmas_type`).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum FinalSigmas {
    /// `zero`: the last step lands on the clean-sample estimate (the default).
    Zero,
    /// `sigma_min`: the last step stops at `σ` of timestep 0.
    SigmaMin,
}

impl FromStr for FinalSigmas {
    type Err = SchedulerError;

    /// Parses a diffusers `final_sigmas_type` string.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "zero" => Ok(Self::Zero),
            "sigma_min" => Ok(Self::SigmaMin),
            _ => Err(SchedulerError::UnknownName {
                what: "final_sigmas_type",
                name: s.to_string(),
                expected: "zero, sigma_min",
            }),
        }
    }
}

/// Configuration of a [`DpmSolverScheduler`]; defaults are diffusers'
/// `DPMSolverMultistepScheduler` ones (`solver_order = 2`: DPM++ 2M).
#[derive(Config, Debug)]
pub struct DpmSolverConfig {
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
    /// 1 or 2.
    #[config(default = 2)]
    pub solver_order: usize,
    /// What the model outputs.
    #[config(default = "PredictionType::Epsilon")]
    pub prediction_type: PredictionType,
    /// Form of the second-order update.
    #[config(default = "SolverType::Midpoint")]
    pub solver_type: SolverType,
    /// First order at the last step when there are fewer than 15 steps.
    #[config(default = true)]
    pub lower_order_final: bool,
    /// First order at the last step always.
    #[config(default = false)]
    pub euler_at_final: bool,
    /// Karras et al. (2022) sigmas (ρ = 7) between the schedule's smallest and largest σ.
    #[config(default = false)]
    pub use_karras_sigmas: bool,
    /// The sigma after the last step.
    #[config(default = "FinalSigmas::Zero")]
    pub final_sigmas_type: FinalSigmas,
    /// Spacing of the timesteps (diffusers' DPM-Solver variants: over `S + 1` points).
    #[config(default = "TimestepSpacing::Linspace")]
    pub timestep_spacing: TimestepSpacing,
    /// Added to `leading` timesteps.
    #[config(default = 0)]
    pub steps_offset: usize,
}

impl DpmSolverConfig {
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

/// DPM-Solver++ multistep sampler (module docs). Keep one [`SolverState`] per trajectory.
#[derive(Debug, Clone)]
pub struct DpmSolverScheduler {
    schedule: NoiseSchedule,
    /// Sampling order (descending).
    timesteps: Vec<usize>,
    /// `σ` of every step plus the final one (`S + 1` entries).
    sigmas: Vec<f32>,
    order: usize,
    prediction: PredictionType,
    solver_type: SolverType,
    lower_order_final: bool,
    euler_at_final: bool,
    final_zero: bool,
}

/// `(α, s)` of a sigma: `α = 1 / sqrt(σ² + 1)`, `s = σ α`.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// `λ = ln α - ln s` (`+∞` at σ = 0).
fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

impl DpmSolverScheduler {
    /// diffusers `DPMSolverMultistepScheduler.set_timesteps(num_inference_steps)`.
    ///
    /// # Errors
    /// [`SchedulerError::InvalidConfig`] (solver order not 1 or 2),
    /// [`SchedulerError::InvalidNumSteps`], [`SchedulerError::InvalidBetas`], and
    /// [`SchedulerError::NotAscending`] / [`SchedulerError::TimestepOutOfRange`] when the
    /// spacing yields repeated or out-of-range timesteps.
    pub fn new(
        config: &DpmSolverConfig,
        num_inference_steps: usize,
    ) -> Result<Self, SchedulerError> {
        if !(1..=2).contains(&config.solver_order) {
            return Err(SchedulerError::InvalidConfig(format!(
                "DPM-Solver++ solver_order {} is not implemented (1 or 2)",
                config.solver_order
            )));
        }
        let schedule = config.noise_schedule()?;
        let n = schedule.num_train_timesteps();
        let s = num_inference_steps;
        if s == 0 || s > n {
            return Err(SchedulerError::InvalidNumSteps {
                num_inference_steps: s,
                num_train_timesteps: n,
            });
        }
        // σ of every training timestep, in f32 as diffusers computes it.
        let all: Vec<f32> = schedule
            .alphas_cumprod()
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt())
            .collect();
        let (timesteps, mut sigmas): (Vec<usize>, Vec<f32>) = if config.use_karras_sigmas {
            let ks = karras_sigmas(f64::from(all[0]), f64::from(all[n - 1]), s);
            let log_sigmas: Vec<f32> = all.iter().map(|v| v.ln()).collect();
            let round = config.beta_schedule != BetaSchedule::SquaredCosCapV2;
            let ts = ks
                .iter()
                .map(|&sg| {
                    let t = sigma_to_t(sg, &log_sigmas);
                    // diffusers rounds except for the cosine schedule, then casts to int64
                    (if round { t.round_ties_even() } else { t }) as usize
                })
                .collect();
            (ts, ks.iter().map(|&v| v as f32).collect())
        } else {
            let ts = dpm_timesteps(config.timestep_spacing, s, n, config.steps_offset);
            let sg = ts
                .iter()
                .map(|&t| all.get(t).copied().unwrap_or(0.0))
                .collect();
            (ts, sg)
        };
        // the step math needs strictly decreasing, in-range timesteps
        let mut asc = timesteps.clone();
        asc.reverse();
        super::spacing::validate_timesteps(&asc, n)?;
        sigmas.push(match config.final_sigmas_type {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => all[0],
        });
        Ok(Self {
            schedule,
            timesteps,
            sigmas,
            order: config.solver_order,
            prediction: config.prediction_type,
            solver_type: config.solver_type,
            lower_order_final: config.lower_order_final,
            euler_at_final: config.euler_at_final,
            final_zero: config.final_sigmas_type == FinalSigmas::Zero,
        })
    }

    /// `σ` of every step and the final one (`num_steps() + 1` entries).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The data-prediction `x0` of a model output at step `i`.
    fn x0(&self, model_output: Tensor<4>, x_t: Tensor<4>, i: usize) -> Tensor<4> {
        let (alpha, sigma) = alpha_sigma(self.sigmas[i]);
        match self.prediction {
            PredictionType::Epsilon => x_t.sub(model_output.mul_scalar(sigma)).div_scalar(alpha),
            PredictionType::Sample => model_output,
            PredictionType::VPrediction => {
                x_t.mul_scalar(alpha).sub(model_output.mul_scalar(sigma))
            }
        }
    }
}

/// Karras sigmas: `(σ_max^{1/ρ} + r (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ`, `r = linspace(0, 1, S)`,
/// ρ = 7, in f64 as numpy computes them.
fn karras_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    numpy_linspace(0.0, 1.0, steps)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// diffusers `_sigma_to_t`: the fractional timestep whose `ln σ` interpolates `ln sigma`
/// linearly between neighbouring training timesteps (clamped to the schedule).
fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let n = log_sigmas.len();
    let log_sigma = sigma.max(1e-10).ln();
    // the last index whose ln σ is <= ln sigma (0 when none), at most N - 2
    let low = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - f64::from(l) >= 0.0)
        .unwrap_or(0)
        .min(n.saturating_sub(2));
    let high = (low + 1).min(n - 1);
    let (lo, hi) = (f64::from(log_sigmas[low]), f64::from(log_sigmas[high]));
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * high as f64
}

/// The descending timesteps of diffusers' DPM-Solver `set_timesteps` (over `S + 1` points
/// for `linspace` / `leading`, the last point dropped).
fn dpm_timesteps(
    spacing: TimestepSpacing,
    steps: usize,
    num_train: usize,
    offset: usize,
) -> Vec<usize> {
    match spacing {
        TimestepSpacing::Linspace => {
            let mut v: Vec<usize> = numpy_linspace(0.0, (num_train - 1) as f64, steps + 1)
                .into_iter()
                .map(|x| x.round_ties_even() as usize)
                .collect();
            v.reverse();
            v.pop();
            v
        }
        TimestepSpacing::Leading => {
            let ratio = num_train / (steps + 1);
            (1..=steps).rev().map(|i| i * ratio + offset).collect()
        }
        TimestepSpacing::Trailing => {
            // np.arange(N, 0, -N / S).round() - 1 (numpy's float arange)
            let start = num_train as f64;
            let step = -(num_train as f64 / steps as f64);
            let len = ((0.0 - start) / step).ceil().max(0.0) as usize;
            let delta = (start + step) - start;
            (0..len)
                .map(|i| {
                    let v = if i == 0 {
                        start
                    } else {
                        start + i as f64 * delta
                    };
                    (v.round_ties_even() as i64 - 1).max(0) as usize
                })
                .collect()
        }
    }
}

impl Scheduler for DpmSolverScheduler {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn noise_schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction
    }

    /// One DPM-Solver++ step; `noise` is not used (the ODE solver is deterministic).
    fn step(
        &self,
        model_output: Tensor<4>,
        step_index: usize,
        x_t: Tensor<4>,
        _noise: Option<Tensor<4>>,
        state: &mut SolverState,
    ) -> Result<StepOutput, SchedulerError> {
        let i = step_index;
        let n = self.timestep(i).map(|_| self.timesteps.len())?;
        check_shape(
            "model output (must match x_t)",
            x_t.dims(),
            model_output.dims(),
        )?;
        let expected = i.min(2);
        if state.history.len() != expected {
            return Err(SchedulerError::OutOfOrder {
                scheduler: "DPM-Solver++",
                step_index: i,
                history: state.history.len(),
                expected,
            });
        }
        let lower_final = i == n - 1
            && (self.euler_at_final || (self.lower_order_final && n < 15) || self.final_zero);
        let x0 = self.x0(model_output, x_t.clone(), i);
        if state.history.len() == 2 {
            state.history.remove(0);
        }
        state.history.push(x0.clone());

        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let h = lambda(alpha_t, sigma_t) - lambda(alpha_s0, sigma_s0);
        let em1 = (-h).exp() - 1.0;
        let base = x_t
            .mul_scalar(sigma_t / sigma_s0)
            .sub(x0.clone().mul_scalar(alpha_t * em1));
        // (diffusers' `lower_order_second` only demotes third-order steps: none here)
        let first_order = self.order == 1 || i < 1 || lower_final;
        let prev = if first_order {
            base
        } else {
            let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
            let h0 = lambda(alpha_s0, sigma_s0) - lambda(alpha_s1, sigma_s1);
            let r0 = h0 / h;
            let m1 = state.history[0].clone();
            let d1 = x0.clone().sub(m1).mul_scalar(1.0 / r0);
            match self.solver_type {
                SolverType::Midpoint => base.sub(d1.mul_scalar(0.5 * (alpha_t * em1))),
                SolverType::Heun => base.add(d1.mul_scalar(alpha_t * (em1 / h + 1.0))),
            }
        };
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: x0,
        })
    }
}
