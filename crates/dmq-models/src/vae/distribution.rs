//! [`LatentDist`]: diffusers' `DiagonalGaussianDistribution`, the VAE posterior
//! `q(z | x) = N(mean, diag(exp(logvar)))`.

use burn::tensor::Tensor;

use crate::error::{Result, shape_err};

/// Lower clamp of the log-variance (diffusers).
pub const LOGVAR_MIN: f64 = -30.0;
/// Upper clamp of the log-variance (diffusers).
pub const LOGVAR_MAX: f64 = 20.0;

/// A diagonal Gaussian over latents, from the encoder's `2L` moments:
/// `mean, logvar = chunk(moments, 2, dim=1)`; `logvar ← clamp(logvar, −30, 20)`;
/// `std = exp(logvar / 2)`.
///
/// # Shapes
/// - moments: `[B, 2L, h, w]`; mean, logvar, std: `[B, L, h, w]`
#[derive(Clone, Debug)]
pub struct LatentDist {
    /// Mean `[B, L, h, w]` (the first L moment channels).
    pub mean: Tensor<4>,
    /// Clamped log-variance `[B, L, h, w]` (the last L channels).
    pub logvar: Tensor<4>,
    /// `exp(logvar / 2)`, `[B, L, h, w]`.
    pub std: Tensor<4>,
}

impl LatentDist {
    /// Splits `moments` `[B, 2L, h, w]` into mean and (clamped) log-variance. An odd channel
    /// count is a shape error.
    pub fn from_moments(moments: Tensor<4>) -> Result<Self> {
        let [b, c, h, w] = moments.dims();
        if c == 0 || !c.is_multiple_of(2) {
            return Err(shape_err(
                "LatentDist moments",
                "[B, 2L, h, w] (an even, positive channel count)",
                [b, c, h, w],
            ));
        }
        let l = c / 2;
        let mean = moments.clone().narrow(1, 0, l);
        let logvar = moments.narrow(1, l, l).clamp(LOGVAR_MIN, LOGVAR_MAX);
        let std = (logvar.clone() * 0.5).exp();
        Ok(Self { mean, logvar, std })
    }

    /// `exp(logvar)`, `[B, L, h, w]`.
    pub fn var(&self) -> Tensor<4> {
        self.logvar.clone().exp()
    }

    /// A draw `mean + std · noise` with caller-supplied standard-normal `noise` of the mean's
    /// shape (deterministic; diffusers draws the noise itself with `randn_tensor`). Another
    /// shape is a shape error.
    pub fn sample(&self, noise: Tensor<4>) -> Result<Tensor<4>> {
        let (want, got) = (self.mean.dims(), noise.dims());
        if want != got {
            return Err(shape_err(
                "LatentDist::sample noise",
                format!("{want:?} (the mean's shape)"),
                got,
            ));
        }
        Ok(self.mean.clone() + self.std.clone() * noise)
    }

    /// The mode (= the mean), `[B, L, h, w]`.
    pub fn mode(&self) -> Tensor<4> {
        self.mean.clone()
    }
}
