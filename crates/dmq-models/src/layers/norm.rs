//! GroupNorm and LayerNorm with diffusers parameter names (`weight`, `bias`; burn's own
//! modules call them `gamma`/`beta`), so diffusers checkpoints load without renaming.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::error::{Result, shape_err};

/// Configuration of a [`GroupNorm`].
#[derive(Config, Debug)]
pub struct GroupNormConfig {
    /// Number of groups G.
    pub groups: usize,
    /// Channels C (divisible by G).
    pub channels: usize,
    /// ε.
    #[config(default = 1e-5)]
    pub eps: f64,
}

impl GroupNormConfig {
    /// Affine group norm initialised to the identity (weight 1, bias 0).
    pub fn init(&self, device: &Device) -> GroupNorm {
        GroupNorm {
            weight: Param::from_tensor(Tensor::ones([self.channels], device)),
            bias: Param::from_tensor(Tensor::zeros([self.channels], device)),
            groups: self.groups,
            eps: self.eps,
        }
    }
}

/// `y = (x − μ_g)/sqrt(σ²_g + ε)·weight + bias`, statistics over each group of C/G channels
/// and all spatial positions (biased variance, as PyTorch).
///
/// # Shapes
/// - input/output: `[B, C, H, W]`
#[derive(Module, Debug)]
pub struct GroupNorm {
    /// Scale `[C]`.
    pub weight: Param<Tensor<1>>,
    /// Shift `[C]`.
    pub bias: Param<Tensor<1>>,
    /// Groups G.
    pub groups: usize,
    /// ε.
    pub eps: f64,
}

impl GroupNorm {
    /// Forward pass.
    pub fn forward(&self, x: Tensor<4>) -> Result<Tensor<4>> {
        let [b, c, h, w] = x.dims();
        let [channels] = self.weight.val().dims();
        if c != channels || self.groups == 0 || c % self.groups != 0 {
            return Err(shape_err(
                "GroupNorm",
                format!("[B, {channels}, H, W] with {} groups", self.groups),
                [b, c, h, w],
            ));
        }
        let g = x.reshape([b, self.groups, (c / self.groups) * h * w]);
        let mean = g.clone().mean_dim(2);
        let centered = g - mean;
        let var = centered.clone().powi_scalar(2).mean_dim(2);
        let normed = (centered / (var + self.eps).sqrt()).reshape([b, c, h, w]);
        Ok(
            normed * self.weight.val().reshape([1, c, 1, 1])
                + self.bias.val().reshape([1, c, 1, 1]),
        )
    }
}

/// Configuration of a [`LayerNorm`].
#[derive(Config, Debug)]
pub struct LayerNormConfig {
    /// Normalised size (last axis).
    pub d_model: usize,
    /// ε.
    #[config(default = 1e-5)]
    pub eps: f64,
    /// Learnable weight and bias (`elementwise_affine`); DiT's norms have none.
    #[config(default = true)]
    pub affine: bool,
}

impl LayerNormConfig {
    /// Initialised to the identity.
    pub fn init(&self, device: &Device) -> LayerNorm {
        LayerNorm {
            weight: self
                .affine
                .then(|| Param::from_tensor(Tensor::ones([self.d_model], device))),
            bias: self
                .affine
                .then(|| Param::from_tensor(Tensor::zeros([self.d_model], device))),
            d_model: self.d_model,
            eps: self.eps,
        }
    }
}

/// Layer norm over the last axis, optionally affine.
///
/// # Shapes
/// - input/output: `[..., d_model]`
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// Scale `[d_model]`.
    pub weight: Option<Param<Tensor<1>>>,
    /// Shift `[d_model]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// Normalised size.
    pub d_model: usize,
    /// ε.
    pub eps: f64,
}

impl LayerNorm {
    /// Forward pass.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        let dims = x.dims();
        if dims[D - 1] != self.d_model {
            return Err(shape_err(
                "LayerNorm",
                format!("[..., {}]", self.d_model),
                dims,
            ));
        }
        let mean = x.clone().mean_dim(D - 1);
        let centered = x - mean;
        let var = centered.clone().powi_scalar(2).mean_dim(D - 1);
        let mut y = centered / (var + self.eps).sqrt();
        let mut s = [1usize; D];
        s[D - 1] = self.d_model;
        if let Some(w) = &self.weight {
            y = y * w.val().reshape(s);
        }
        if let Some(b) = &self.bias {
            y = y + b.val().reshape(s);
        }
        Ok(y)
    }
}
