//! PNDM with PLMS steps (Liu et al. 2022), diffusers `PNDMScheduler` with
//! `skip_prk_steps = true`: the "PLMS" sampler of the Stable Diffusion 1.x papers.
//!
//! Over the ascending list `a_0 < … < a_{S-1}` (diffusers spacing) with stride
//! `k = N / S` (integer division), the sampling order is
//! `a_{S-1}, a_{S-2}, a_{S-2}, a_{S-3}, …, a_0`: `S + 1` model calls, the second timestep
//! twice. With `e_j` the ε estimates kept so far (newest last):
//!
//! ```text
//! step 0:  e' = e_0                                   x from x_T,  t -> t - k
//! step 1:  e' = (e_1 + e_0) / 2                       x from x_T again (a Heun-like redo of step 0)
//! then     e' = (3 e_{-1} - e_{-2}) / 2               (2 outputs kept)
//!          e' = (23 e_{-1} - 16 e_{-2} + 5 e_{-3}) / 12
//!          e' = (55 e_{-1} - 59 e_{-2} + 37 e_{-3} - 9 e_{-4}) / 24
//! x_prev = sqrt(a_prev / a) x - (a_prev - a) e' / (a sqrt(1 - a_prev) + sqrt(a (1 - a) a_prev))
//! ```
//!
//! with `a = abar_t`, `a_prev = abar_{t-k}` (the final alpha when `t - k < 0`), and the
//! output of step 1 not kept (diffusers drops it). For v-prediction the combined output is
//! turned into ε at the step's timestep with the sample it is applied to.

use burn::config::Config;
use burn::tensor::Tensor;

use super::spacing::{self, TimestepSpacing};
use super::{
    BetaSchedule, NoiseSchedule, PredictionType, Scheduler, SchedulerError, SolverState,
    StepOutput, check_shape,
};

/// Configuration of a [`PndmScheduler`]; defaults are diffusers' `PNDMScheduler` ones except
/// `skip_prk_steps`, which must be `true` (the Runge–Kutta warm-up is not implemented; every
/// Stable Diffusion scheduler config sets it).
#[derive(Config, Debug)]
pub struct PndmConfig {
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
    /// PLMS from the first step (must be `true`).
    #[config(default = true)]
    pub skip_prk_steps: bool,
    /// Final alpha is `1` (true) or `abar[0]` (false, diffusers' PNDM default).
    #[config(default = false)]
    pub set_alpha_to_one: bool,
    /// What the model outputs (ε or v; x0-prediction is refused, as in diffusers).
    #[config(default = "PredictionType::Epsilon")]
    pub prediction_type: PredictionType,
    /// Spacing of the timesteps.
    #[config(default = "TimestepSpacing::Leading")]
    pub timestep_spacing: TimestepSpacing,
    /// Added to `leading` timesteps (SD uses 1).
    #[config(default = 0)]
    pub steps_offset: usize,
}

impl PndmConfig {
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

/// PLMS sampler (module docs). Keep one [`SolverState`] per trajectory.
#[derive(Debug, Clone)]
pub struct PndmScheduler {
    schedule: NoiseSchedule,
    /// Sampling order: `S + 1` entries, the second timestep twice.
    timesteps: Vec<usize>,
    /// `N / S`.
    stride: usize,
    final_alpha_cumprod: f32,
    prediction: PredictionType,
}

impl PndmScheduler {
    /// diffusers `PNDMScheduler.set_timesteps(num_inference_steps)` with `skip_prk_steps`.
    ///
    /// # Errors
    /// [`SchedulerError::InvalidConfig`] (`skip_prk_steps = false`, x0-prediction),
    /// [`SchedulerError::InvalidNumSteps`], [`SchedulerError::InvalidBetas`],
    /// [`SchedulerError::TimestepOutOfRange`].
    pub fn new(config: &PndmConfig, num_inference_steps: usize) -> Result<Self, SchedulerError> {
        if !config.skip_prk_steps {
            return Err(SchedulerError::InvalidConfig(
                "PNDM with skip_prk_steps = false (Runge-Kutta warm-up) is not implemented; \
                 set skip_prk_steps = true (PLMS from the first step, as Stable Diffusion does)"
                    .into(),
            ));
        }
        if config.prediction_type == PredictionType::Sample {
            return Err(SchedulerError::InvalidConfig(
                "PNDM supports prediction_type epsilon or v_prediction, not sample".into(),
            ));
        }
        let schedule = config.noise_schedule()?;
        let n = schedule.num_train_timesteps();
        let asc = spacing::diffusers_timesteps(
            config.timestep_spacing,
            num_inference_steps,
            n,
            config.steps_offset,
        )?;
        // diffusers: concat(ts[:-1], ts[-2:-1], ts[-1:])[::-1]
        let s = asc.len();
        let mut order: Vec<usize> = asc[..s - 1].to_vec();
        if s >= 2 {
            order.push(asc[s - 2]);
        }
        order.push(asc[s - 1]);
        order.reverse();
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            schedule.alphas_cumprod()[0]
        };
        Ok(Self {
            schedule,
            timesteps: order,
            stride: n / num_inference_steps,
            final_alpha_cumprod,
            prediction: config.prediction_type,
        })
    }

    /// `abar` of a possibly negative timestep (the final alpha below 0).
    fn alpha_at(&self, t: i64) -> f32 {
        if t >= 0 {
            self.schedule.alphas_cumprod()[t as usize]
        } else {
            self.final_alpha_cumprod
        }
    }

    /// Number of ε estimates the state holds before step `i` (module docs).
    fn expected_history(i: usize) -> usize {
        match i {
            0 => 0,
            1 | 2 => 1,
            _ => (i - 1).min(4),
        }
    }
}

impl Scheduler for PndmScheduler {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn noise_schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction
    }

    /// One PLMS step; `noise` is not used. `pred_original_sample` is the clean-sample
    /// estimate of this step's own model output at its timestep (PNDM makes none itself).
    fn step(
        &self,
        model_output: Tensor<4>,
        step_index: usize,
        x_t: Tensor<4>,
        _noise: Option<Tensor<4>>,
        state: &mut SolverState,
    ) -> Result<StepOutput, SchedulerError> {
        let t = self.timestep(step_index)?;
        check_shape(
            "model output (must match x_t)",
            x_t.dims(),
            model_output.dims(),
        )?;
        let expected = Self::expected_history(step_index);
        if state.history.len() != expected || (step_index == 1) != state.saved_sample.is_some() {
            return Err(SchedulerError::OutOfOrder {
                scheduler: "PNDM",
                step_index,
                history: state.history.len(),
                expected,
            });
        }
        let x0 = self
            .prediction
            .x0_and_eps(model_output.clone(), x_t.clone(), self.alpha_at(t as i64))
            .0;
        let k = self.stride as i64;
        let (mut timestep, mut prev_t) = (t as i64, t as i64 - k);
        let mut sample = x_t;
        if step_index != 1 {
            if state.history.len() == 4 {
                state.history.remove(0);
            }
            state.history.push(model_output.clone());
        } else {
            prev_t = t as i64;
            timestep = t as i64 + k;
        }
        let e = &state.history;
        let combined = match (step_index, e.len()) {
            (0, _) => {
                state.saved_sample = Some(sample.clone());
                model_output
            }
            (1, _) => {
                if let Some(x_first) = state.saved_sample.take() {
                    sample = x_first;
                }
                model_output.add(e[0].clone()).div_scalar(2.0)
            }
            (_, 2) => e[1]
                .clone()
                .mul_scalar(3.0)
                .sub(e[0].clone())
                .div_scalar(2.0),
            (_, 3) => e[2]
                .clone()
                .mul_scalar(23.0)
                .sub(e[1].clone().mul_scalar(16.0))
                .add(e[0].clone().mul_scalar(5.0))
                .div_scalar(12.0),
            _ => e[3]
                .clone()
                .mul_scalar(55.0)
                .sub(e[2].clone().mul_scalar(59.0))
                .add(e[1].clone().mul_scalar(37.0))
                .sub(e[0].clone().mul_scalar(9.0))
                .mul_scalar(1.0f32 / 24.0),
        };
        let a = self.alpha_at(timestep);
        let a_prev = self.alpha_at(prev_t);
        let (b, b_prev) = (1.0 - a, 1.0 - a_prev);
        let eps = self.prediction.eps(combined, sample.clone(), a);
        let sample_coeff = (a_prev / a).sqrt();
        let denom = a * b_prev.sqrt() + (a * b * a_prev).sqrt();
        let prev = sample
            .mul_scalar(sample_coeff)
            .sub(eps.mul_scalar(a_prev - a).div_scalar(denom));
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: x0,
        })
    }
}
