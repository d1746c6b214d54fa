//! [`FeedForward`]: diffusers' transformer MLP with the GEGLU activation (the
//! `BasicTransformerBlock` default, `activation_fn = "geglu"`), laid out as `net.0.proj`
//! (GEGLU's projection) → `net.1` (dropout) → `net.2`.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};

use crate::context::ForwardCtx;
use crate::error::Result;
use crate::layers::{LayerMut, LayerRef, QLinear, QLinearConfig};

/// diffusers `GEGLU`: `h, gate = chunk₂(proj(x))` along the last axis, `h · gelu(gate)`
/// with the exact (erf) GELU, as PyTorch's `F.gelu`.
///
/// # Shapes
/// - input: `[..., dim_in]`; `proj` output `[..., 2·dim_out]`; output: `[..., dim_out]`
#[derive(Module, Debug)]
pub struct Geglu {
    /// The projection `dim_in → 2·dim_out` (value half first, gate half second).
    pub proj: QLinear,
}

impl Geglu {
    /// Forward pass.
    pub fn forward<const D: usize>(&self, x: Tensor<D>, ctx: &ForwardCtx<'_>) -> Result<Tensor<D>> {
        let h = self.proj.forward(x, ctx)?;
        let mut halves = h.chunk(2, D - 1).into_iter();
        let (Some(value), Some(gate)) = (halves.next(), halves.next()) else {
            // `proj` has an even width by construction; a loaded odd one fails the strict
            // shape check first.
            return Err(crate::error::shape_err(
                self.proj.name(),
                "an even projection width",
                "one chunk",
            ));
        };
        Ok(value * gelu(gate))
    }
}

/// diffusers `FeedForward(dim, mult = 4, activation_fn = "geglu")`:
/// `net.2(dropout(GEGLU(x)))`, hidden width `4·dim`.
///
/// # Shapes
/// - input/output: `[B, N, D]`; hidden: `[B, N, 4·D]`
#[derive(Module, Debug)]
pub struct FeedForward {
    /// `(GEGLU, dropout, output projection)` = diffusers' `net` ModuleList.
    pub net: (Geglu, Dropout, QLinear),
}

impl FeedForward {
    /// Layers `<name>.net.0.proj` (`dim → 8·dim`) and `<name>.net.2` (`4·dim → dim`).
    pub fn new(name: &str, dim: usize, device: &Device) -> Self {
        let inner = 4 * dim;
        Self {
            net: (
                Geglu {
                    proj: QLinearConfig::new(dim, 2 * inner)
                        .init(&format!("{name}.net.0.proj"), device),
                },
                // inference: diffusers' dropout is the identity in eval mode
                DropoutConfig::new(0.0).init(),
                QLinearConfig::new(inner, dim).init(&format!("{name}.net.2"), device),
            ),
        }
    }

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
