//! [`ClipMlp`]: transformers' `CLIPMLP` (`fc1` → activation → `fc2`) and the two
//! activations CLIP text encoders use.

use burn::module::Module;
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::{Device, Tensor};

use super::config::ClipActivation;
use crate::context::ForwardCtx;
use crate::error::Result;
use crate::layers::{LayerMut, LayerRef, QLinear, QLinearConfig};

/// transformers' `QuickGELUActivation`: `x·σ(1.702·x)`.
pub fn quick_gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.clone() * sigmoid(x * 1.702)
}

/// The activation `act` applied element-wise (`gelu` is the exact, erf form, as PyTorch's
/// `F.gelu` with no approximation).
pub fn activate<const D: usize>(act: ClipActivation, x: Tensor<D>) -> Tensor<D> {
    match act {
        ClipActivation::QuickGelu => quick_gelu(x),
        ClipActivation::Gelu => gelu(x),
    }
}

/// `fc2(act(fc1(x)))`.
///
/// # Shapes
/// - input/output: `[B, L, D]`; hidden: `[B, L, intermediate_size]`
#[derive(Module, Debug)]
pub struct ClipMlp {
    /// `D → intermediate_size`.
    pub fc1: QLinear,
    /// `intermediate_size → D`.
    pub fc2: QLinear,
    #[module(skip)]
    act: ClipActivation,
}

impl ClipMlp {
    /// Random init (PyTorch's default); `name` is the checkpoint path
    /// (`text_model.encoder.layers.0.mlp`).
    pub fn new(
        name: &str,
        width: usize,
        hidden: usize,
        act: ClipActivation,
        device: &Device,
    ) -> Self {
        Self {
            fc1: QLinearConfig::new(width, hidden).init(&format!("{name}.fc1"), device),
            fc2: QLinearConfig::new(hidden, width).init(&format!("{name}.fc2"), device),
            act,
        }
    }

    /// The activation.
    pub fn activation(&self) -> ClipActivation {
        self.act
    }

    /// Forward pass.
    pub fn forward(&self, x: Tensor<3>, ctx: &ForwardCtx<'_>) -> Result<Tensor<3>> {
        let h = activate(self.act, self.fc1.forward(x, ctx)?);
        self.fc2.forward(h, ctx)
    }

    /// Visits `fc1`, `fc2`.
    pub fn for_each_layer(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        f(LayerRef::Linear(&self.fc1));
        f(LayerRef::Linear(&self.fc2));
    }

    /// Mutable [`Self::for_each_layer`].
    pub fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        f(LayerMut::Linear(&mut self.fc1));
        f(LayerMut::Linear(&mut self.fc2));
    }
}
