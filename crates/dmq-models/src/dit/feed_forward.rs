//! [`FeedForward`]: diffusers' transformer MLP with GELU (tanh approximation), laid out as
//! `net.0.proj` → GELU → `net.1` (dropout) → `net.2`.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};

use crate::context::ForwardCtx;
use crate::error::Result;
use crate::layers::{LayerMut, LayerRef, QLinear, QLinearConfig};

/// GELU, tanh form, as PyTorch's `F.gelu(x, approximate="tanh")`:
/// `0.5·x·(1 + tanh(u))` with `u = √(2/π)·(x + 0.044715·x³)`, evaluated as the identical
/// `x·σ(2u)`.
///
/// Why σ: on the CPU backends `tanh` is a scalar libm call that took ~30% of a DiT sampling
/// run, `sigmoid` is one fused exp pass (and its backward uses only its output, so a saturated
/// σ never yields NaN gradients). Written with `x·x·x` (burn's `gelu_approximate` uses
/// `powf_scalar(3)`, whose value for negative x depends on the backend's `pow`).
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    const TWO_SQRT_2_OVER_PI: f64 =
        2.0 * core::f64::consts::FRAC_2_SQRT_PI * core::f64::consts::FRAC_1_SQRT_2;
    let cube = x.clone() * x.clone() * x.clone();
    let two_u = (x.clone() + cube * 0.044715) * TWO_SQRT_2_OVER_PI;
    x * sigmoid(two_u)
}

/// diffusers `GELU` activation module: a projection followed by GELU (tanh form).
///
/// # Shapes
/// - input: `[..., dim_in]`; output: `[..., dim_out]`
#[derive(Module, Debug)]
pub struct GeluProj {
    /// The projection.
    pub proj: QLinear,
}

impl GeluProj {
    /// Forward pass.
    pub fn forward<const D: usize>(&self, x: Tensor<D>, ctx: &ForwardCtx<'_>) -> Result<Tensor<D>> {
        Ok(gelu_tanh(self.proj.forward(x, ctx)?))
    }
}

/// Configuration of a [`FeedForward`].
#[derive(Config, Debug)]
pub struct FeedForwardConfig {
    /// Input = output width D.
    pub dim: usize,
    /// Hidden width multiplier.
    #[config(default = 4)]
    pub mult: usize,
    /// Dropout between the projections (training on an autodiff device only).
    #[config(default = 0.0)]
    pub dropout: f64,
}

impl FeedForwardConfig {
    /// Layers `<name>.net.0.proj` and `<name>.net.2`.
    pub fn init(&self, name: &str, device: &Device) -> FeedForward {
        let inner = self.dim * self.mult;
        FeedForward {
            net: (
                GeluProj {
                    proj: QLinearConfig::new(self.dim, inner)
                        .init(&format!("{name}.net.0.proj"), device),
                },
                DropoutConfig::new(self.dropout).init(),
                QLinearConfig::new(inner, self.dim).init(&format!("{name}.net.2"), device),
            ),
        }
    }
}

/// diffusers `FeedForward` (activation "gelu-approximate"): `net.2(dropout(gelu(net.0.proj(x))))`.
///
/// # Shapes
/// - input/output: `[B, N, D]`
#[derive(Module, Debug)]
pub struct FeedForward {
    /// `(GELU projection, dropout, output projection)` = diffusers' `net` ModuleList.
    pub net: (GeluProj, Dropout, QLinear),
}

impl FeedForward {
    /// Forward pass.
    pub fn forward(&self, x: Tensor<3>, ctx: &ForwardCtx<'_>) -> Result<Tensor<3>> {
        let h = self.net.0.forward(x, ctx)?;
        let h = self.net.1.forward(h);
        self.net.2.forward(h, ctx)
    }

    /// Visits `net.0.proj`, `net.2`.
    pub fn for_each_layer(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        f(LayerRef::Linear(&self.net.0.proj));
        f(LayerRef::Linear(&self.net.2));
    }

    /// Mutable [`Self::for_each_layer`].
    pub fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        f(LayerMut::Linear(&mut self.net.0.proj));
        f(LayerMut::Linear(&mut self.net.2));
    }
}
