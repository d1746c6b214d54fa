//! Beta schedules and the cumulative products derived from them.
//!
//! The values follow diffusers (`DDPMScheduler` / `DDIMScheduler.__init__`) exactly:
//! betas are float32, `alphas = 1 - betas` in float32, and `alphas_cumprod` is the
//! running product, accumulated in float64 and stored as float32 (this is what
//! `torch.cumprod` does for a float32 CPU tensor).

use std::fmt;
use std::str::FromStr;

use burn::config::Config;
use burn::tensor::{Tensor, TensorData};

use super::SchedulerError;

/// How the betas are laid out over the training timesteps (diffusers `beta_schedule`).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    /// `linear`: `beta_i = beta_start + (beta_end - beta_start) * i / (N - 1)`.
    Linear,
    /// `scaled_linear` (Stable Diffusion, LDM):
    /// `beta_i = (sqrt(beta_start) + (sqrt(beta_end) - sqrt(beta_start)) * i / (N - 1))^2`.
    ScaledLinear,
    /// `squaredcos_cap_v2` (improved DDPM cosine schedule, used by DiT):
    /// `beta_i = min(1 - abar((i + 1) / N) / abar(i / N), 0.999)` with
    /// `abar(t) = cos((t + 0.008) / 1.008 * pi / 2)^2`; ignores `beta_start`/`beta_end`.
    SquaredCosCapV2,
}

impl BetaSchedule {
    /// The diffusers config string of this schedule.
    pub fn diffusers_name(&self) -> &'static str {
        match self {
            Self::Linear => "linear",
            Self::ScaledLinear => "scaled_linear",
            Self::SquaredCosCapV2 => "squaredcos_cap_v2",
        }
    }
}

impl FromStr for BetaSchedule {
    type Err = SchedulerError;

    /// Parses a diffusers `beta_schedule` string.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "linear" => Ok(Self::Linear),
            "scaled_linear" => Ok(Self::ScaledLinear),
            "squaredcos_cap_v2" => Ok(Self::SquaredCosCapV2),
            _ => Err(SchedulerError::UnknownName {
                what: "beta_schedule",
                name: s.to_string(),
                expected: "linear, scaled_linear, squaredcos_cap_v2",
            }),
        }
    }
}

/// Computes the betas of a schedule as diffusers does (values rounded to `f32`).
///
/// # Errors
/// [`SchedulerError::InvalidBetas`] for `num_train_timesteps == 0`, non-finite
/// `beta_start`/`beta_end`, or any resulting beta outside `(0, 1)`.
pub fn betas(
    schedule: BetaSchedule,
    num_train_timesteps: usize,
    beta_start: f64,
    beta_end: f64,
) -> Result<Vec<f32>, SchedulerError> {
    let n = num_train_timesteps;
    if n == 0 {
        return Err(SchedulerError::InvalidBetas(
            "num_train_timesteps must be at least 1".into(),
        ));
    }
    if !beta_start.is_finite() || !beta_end.is_finite() {
        return Err(SchedulerError::InvalidBetas(format!(
            "beta_start ({beta_start}) and beta_end ({beta_end}) must be finite"
        )));
    }
    let out: Vec<f32> = match schedule {
        BetaSchedule::Linear => linspace(beta_start, beta_end, n)
            .into_iter()
            .map(|b| b as f32)
            .collect(),
        BetaSchedule::ScaledLinear => {
            if beta_start < 0.0 || beta_end < 0.0 {
                return Err(SchedulerError::InvalidBetas(
                    "scaled_linear needs beta_start, beta_end >= 0".into(),
                ));
            }
            // torch.linspace(sqrt(s), sqrt(e), N, dtype=float32) ** 2, the square in f32.
            linspace(beta_start.sqrt(), beta_end.sqrt(), n)
                .into_iter()
                .map(|b| {
                    let b = b as f32;
                    b * b
                })
                .collect()
        }
        BetaSchedule::SquaredCosCapV2 => {
            let alpha_bar = |t: f64| {
                ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                    .cos()
                    .powi(2)
            };
            (0..n)
                .map(|i| {
                    let t1 = i as f64 / n as f64;
                    let t2 = (i + 1) as f64 / n as f64;
                    (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                })
                .collect()
        }
    };
    Ok(out)
}

/// `start + (end - start) * i / (n - 1)` for `i` in `0..n` (`[start]` when `n == 1`).
fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let span = end - start;
    (0..n)
        .map(|i| {
            if i == n - 1 {
                end
            } else {
                start + span * i as f64 / (n - 1) as f64
            }
        })
        .collect()
}

/// The training noise schedule: `beta_t` and `abar_t = prod_{s <= t} (1 - beta_s)`.
///
/// Shared by every scheduler; also implements the forward process [`Self::add_noise`].
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    betas: Vec<f32>,
    alphas_cumprod: Vec<f32>,
}

impl NoiseSchedule {
    /// Builds the schedule from a [`BetaSchedule`] (diffusers `beta_schedule`,
    /// `num_train_timesteps`, `beta_start`, `beta_end`).
    ///
    /// # Errors
    /// See [`betas`] and [`Self::from_betas`].
    pub fn new(
        schedule: BetaSchedule,
        num_train_timesteps: usize,
        beta_start: f64,
        beta_end: f64,
    ) -> Result<Self, SchedulerError> {
        Self::from_betas(betas(schedule, num_train_timesteps, beta_start, beta_end)?)
    }

    /// A scheduler config's schedule: `trained_betas` when given, else [`Self::new`].
    ///
    /// # Errors
    /// See [`Self::new`] and [`Self::from_betas`].
    pub fn from_config(
        trained_betas: Option<&[f32]>,
        schedule: BetaSchedule,
        num_train_timesteps: usize,
        beta_start: f64,
        beta_end: f64,
    ) -> Result<Self, SchedulerError> {
        match trained_betas {
            Some(b) => Self::from_betas(b.to_vec()),
            None => Self::new(schedule, num_train_timesteps, beta_start, beta_end),
        }
    }

    /// Builds the schedule from explicit betas (diffusers `trained_betas`).
    ///
    /// `alphas_cumprod[t] = f32(prod_{s <= t} f64(1 - beta_s))` with `1 - beta_s` in `f32`.
    ///
    /// # Errors
    /// [`SchedulerError::InvalidBetas`] when the list is empty or a beta is not in `(0, 1)`.
    pub fn from_betas(betas: Vec<f32>) -> Result<Self, SchedulerError> {
        if betas.is_empty() {
            return Err(SchedulerError::InvalidBetas("no betas".into()));
        }
        if let Some((i, b)) = betas
            .iter()
            .enumerate()
            .find(|(_, b)| !(b.is_finite() && **b > 0.0 && **b < 1.0))
        {
            return Err(SchedulerError::InvalidBetas(format!(
                "beta[{i}] = {b} is not in (0, 1)"
            )));
        }
        let mut acc = 1.0f64;
        let alphas_cumprod = betas
            .iter()
            .map(|&b| {
                acc *= f64::from(1.0f32 - b);
                acc as f32
            })
            .collect();
        Ok(Self {
            betas,
            alphas_cumprod,
        })
    }

    /// Number of training timesteps `N`.
    pub fn num_train_timesteps(&self) -> usize {
        self.betas.len()
    }

    /// The betas, length `N`.
    pub fn betas(&self) -> &[f32] {
        &self.betas
    }

    /// `abar_t` for every training timestep, length `N`.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// `abar_t` of one timestep.
    ///
    /// # Errors
    /// [`SchedulerError::TimestepOutOfRange`] for `t >= N`.
    pub fn alpha_cumprod(&self, t: usize) -> Result<f32, SchedulerError> {
        self.alphas_cumprod
            .get(t)
            .copied()
            .ok_or(SchedulerError::TimestepOutOfRange {
                timestep: t,
                num_train_timesteps: self.num_train_timesteps(),
            })
    }

    /// Forward diffusion `q(x_t | x_0)` with explicit noise (diffusers `add_noise`):
    ///
    /// `x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise`
    ///
    /// `t` holds either one timestep for the whole batch or one per batch element.
    ///
    /// # Shapes
    /// - `x0`, `noise`: `[B, ...]` (same shape)
    /// - `t`: length 1 or `B`
    /// - output: `[B, ...]`
    ///
    /// # Errors
    /// [`SchedulerError::ShapeMismatch`], [`SchedulerError::TimestepBatchMismatch`],
    /// [`SchedulerError::TimestepOutOfRange`].
    pub fn add_noise<const D: usize>(
        &self,
        x0: Tensor<D>,
        noise: Tensor<D>,
        t: &[usize],
    ) -> Result<Tensor<D>, SchedulerError> {
        let dims = x0.dims();
        if noise.dims() != dims {
            return Err(SchedulerError::ShapeMismatch {
                what: "noise (must match x0)",
                expected: dims.to_vec(),
                actual: noise.dims().to_vec(),
            });
        }
        let batch = dims.first().copied().unwrap_or(1);
        if t.len() != 1 && t.len() != batch {
            return Err(SchedulerError::TimestepBatchMismatch {
                num_timesteps: t.len(),
                batch,
            });
        }
        let mut sqrt_a = Vec::with_capacity(t.len());
        let mut sqrt_1ma = Vec::with_capacity(t.len());
        for &ti in t {
            let a = self.alpha_cumprod(ti)?;
            sqrt_a.push(a.sqrt());
            sqrt_1ma.push((1.0 - a).sqrt());
        }
        if t.len() == 1 {
            return Ok(x0.mul_scalar(sqrt_a[0]).add(noise.mul_scalar(sqrt_1ma[0])));
        }
        let device = x0.device();
        let mut coef_dims = [1usize; D];
        if let Some(first) = coef_dims.first_mut() {
            *first = batch;
        }
        let ca =
            Tensor::<1>::from_data(TensorData::new(sqrt_a, [batch]), &device).reshape(coef_dims);
        let cn =
            Tensor::<1>::from_data(TensorData::new(sqrt_1ma, [batch]), &device).reshape(coef_dims);
        Ok(x0.mul(ca).add(noise.mul(cn)))
    }
}

impl fmt::Display for NoiseSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NoiseSchedule(N={}, beta[0]={}, beta[N-1]={}, abar[N-1]={})",
            self.betas.len(),
            self.betas[0],
            self.betas[self.betas.len() - 1],
            self.alphas_cumprod[self.alphas_cumprod.len() - 1]
        )
    }
}
