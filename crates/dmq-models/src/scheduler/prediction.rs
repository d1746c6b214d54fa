//! What the network predicts (diffusers `prediction_type`), and the conversion of its output
//! into the clean-sample and noise estimates every scheduler works with.
//!
//! With `a = abar_t` and `x_t = sqrt(a) x0 + sqrt(1 - a) eps`:
//!
//! ```text
//! epsilon:       x0 = (x_t - sqrt(1 - a) out) / sqrt(a)        eps = out
//! sample:        x0 = out                                     eps = (x_t - sqrt(a) x0) / sqrt(1 - a)
//! v_prediction:  x0 = sqrt(a) x_t - sqrt(1 - a) out           eps = sqrt(a) out + sqrt(1 - a) x_t
//! ```
//!
//! (`v = sqrt(a) eps - sqrt(1 - a) x0`, Salimans & Ho 2022.) The op order is diffusers'
//! (`DDIMScheduler.step`), so results match it in f32.

use std::str::FromStr;

use burn::config::Config;
use burn::tensor::Tensor;

use super::SchedulerError;

/// The quantity a denoiser outputs (diffusers `prediction_type`).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The added noise ε (DDPM, Stable Diffusion 1.x, DiT).
    Epsilon,
    /// The velocity `v = sqrt(abar) ε - sqrt(1 - abar) x0` (Stable Diffusion 2.x 768).
    VPrediction,
    /// The clean sample x0.
    Sample,
}

impl PredictionType {
    /// The diffusers config string.
    pub fn diffusers_name(&self) -> &'static str {
        match self {
            Self::Epsilon => "epsilon",
            Self::VPrediction => "v_prediction",
            Self::Sample => "sample",
        }
    }

    /// `(x0_hat, eps_hat)` from the model output at `abar_t = alpha_prod_t` (module docs),
    /// before any clipping.
    ///
    /// # Shapes
    /// - `model_output`, `x_t`: `[B, C, H, W]`; outputs: `[B, C, H, W]`
    pub fn x0_and_eps(
        &self,
        model_output: Tensor<4>,
        x_t: Tensor<4>,
        alpha_prod_t: f32,
    ) -> (Tensor<4>, Tensor<4>) {
        let beta_prod_t = 1.0 - alpha_prod_t;
        let (sa, sb) = (alpha_prod_t.sqrt(), beta_prod_t.sqrt());
        match self {
            Self::Epsilon => {
                let x0 = x_t.sub(model_output.clone().mul_scalar(sb)).div_scalar(sa);
                (x0, model_output)
            }
            Self::Sample => {
                let eps = x_t.sub(model_output.clone().mul_scalar(sa)).div_scalar(sb);
                (model_output, eps)
            }
            Self::VPrediction => {
                let x0 = x_t
                    .clone()
                    .mul_scalar(sa)
                    .sub(model_output.clone().mul_scalar(sb));
                let eps = model_output.mul_scalar(sa).add(x_t.mul_scalar(sb));
                (x0, eps)
            }
        }
    }

    /// The noise estimate alone (PNDM's conversion): `out` for ε-prediction,
    /// `sqrt(a) out + sqrt(1 - a) x_t` for v-prediction, `(x_t - sqrt(a) out) / sqrt(1 - a)`
    /// for x0-prediction.
    ///
    /// # Shapes
    /// - `model_output`, `x_t`: `[B, C, H, W]`; output: `[B, C, H, W]`
    pub fn eps(&self, model_output: Tensor<4>, x_t: Tensor<4>, alpha_prod_t: f32) -> Tensor<4> {
        match self {
            Self::Epsilon => model_output,
            _ => self.x0_and_eps(model_output, x_t, alpha_prod_t).1,
        }
    }
}

impl FromStr for PredictionType {
    type Err = SchedulerError;

    /// Parses a diffusers `prediction_type` string.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "epsilon" => Ok(Self::Epsilon),
            "v_prediction" => Ok(Self::VPrediction),
            "sample" => Ok(Self::Sample),
            _ => Err(SchedulerError::UnknownName {
                what: "prediction_type",
                name: s.to_string(),
                expected: "epsilon, v_prediction, sample",
            }),
        }
    }
}
