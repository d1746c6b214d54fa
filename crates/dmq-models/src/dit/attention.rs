//! [`Attention`]: diffusers' multi-head self-attention (`attn1`) with its two
//! activation × activation products as quantizable [`QMatmul`]s.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Device, Tensor};

use crate::context::ForwardCtx;
use crate::error::Result;
use crate::layers::{LayerMut, LayerRef, QLinear, QLinearConfig, QMatmul, multi_head_attention};

/// Configuration of an [`Attention`].
#[derive(Config, Debug)]
pub struct AttentionConfig {
    /// Model width D (query dim).
    pub query_dim: usize,
    /// Heads H.
    pub heads: usize,
    /// Channels per head d.
    pub dim_head: usize,
    /// Bias of `to_q`/`to_k`/`to_v`.
    #[config(default = false)]
    pub bias: bool,
    /// Dropout after `to_out.0` (training on an autodiff device only).
    #[config(default = 0.0)]
    pub dropout: f64,
}

impl AttentionConfig {
    /// Layers `<name>.to_q|to_k|to_v|to_out.0` and matmuls `<name>.qk`, `<name>.sv`.
    pub fn init(&self, name: &str, device: &Device) -> Attention {
        let inner = self.heads * self.dim_head;
        let proj = |suffix: &str, bias: bool| {
            QLinearConfig::new(self.query_dim, inner)
                .with_bias(bias)
                .init(&format!("{name}.{suffix}"), device)
        };
        Attention {
            to_q: proj("to_q", self.bias),
            to_k: proj("to_k", self.bias),
            to_v: proj("to_v", self.bias),
            to_out: (
                QLinearConfig::new(inner, self.query_dim).init(&format!("{name}.to_out.0"), device),
                DropoutConfig::new(self.dropout).init(),
            ),
            qk: QMatmul::new(&format!("{name}.qk")),
            sv: QMatmul::new(&format!("{name}.sv")),
            heads: self.heads,
        }
    }
}

/// diffusers `Attention` with `AttnProcessor2_0`, self-attention only:
/// `q, k, v = to_q(x), to_k(x), to_v(x)` split into H heads;
/// `o = softmax(qk(q, kᵀ)·d^(−1/2))` then `sv(o, v)`; heads merged; `to_out.0`, dropout.
///
/// The scale is applied to the q·kᵀ product (as diffusers' non-fused processors do), so
/// the `qk` matmul sees the raw q and k.
///
/// # Shapes
/// - input/output: `[B, N, D]`
#[derive(Module, Debug)]
pub struct Attention {
    /// Query projection.
    pub to_q: QLinear,
    /// Key projection.
    pub to_k: QLinear,
    /// Value projection.
    pub to_v: QLinear,
    /// Output projection and dropout (`to_out.0`, `to_out.1`).
    pub to_out: (QLinear, Dropout),
    /// `q·kᵀ` per head.
    pub qk: QMatmul,
    /// `softmax·v` per head.
    pub sv: QMatmul,
    /// Heads H.
    pub heads: usize,
}

impl Attention {
    /// Forward pass.
    pub fn forward(&self, x: Tensor<3>, ctx: &ForwardCtx<'_>) -> Result<Tensor<3>> {
        let q = self.to_q.forward(x.clone(), ctx)?;
        let k = self.to_k.forward(x.clone(), ctx)?;
        let v = self.to_v.forward(x, ctx)?;
        let o = multi_head_attention(&self.qk, &self.sv, q, k, v, self.heads, ctx)?;
        let o = self.to_out.0.forward(o, ctx)?;
        Ok(self.to_out.1.forward(o))
    }

    /// Visits `to_q`, `to_k`, `to_v`, `qk`, `sv`, `to_out.0` (forward order).
    pub fn for_each_layer(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        f(LayerRef::Linear(&self.to_q));
        f(LayerRef::Linear(&self.to_k));
        f(LayerRef::Linear(&self.to_v));
        f(LayerRef::Matmul(&self.qk));
        f(LayerRef::Matmul(&self.sv));
        f(LayerRef::Linear(&self.to_out.0));
    }

    /// Mutable [`Self::for_each_layer`].
    pub fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        f(LayerMut::Linear(&mut self.to_q));
        f(LayerMut::Linear(&mut self.to_k));
        f(LayerMut::Linear(&mut self.to_v));
        f(LayerMut::Matmul(&mut self.qk));
        f(LayerMut::Matmul(&mut self.sv));
        f(LayerMut::Linear(&mut self.to_out.0));
    }
}
