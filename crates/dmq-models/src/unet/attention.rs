//! [`Attention`]: the spatial self-attention of diffusers' `AttnDownBlock2D`,
//! `AttnUpBlock2D` and `UNetMidBlock2D` (diffusers `Attention` with `residual_connection`,
//! `bias`, a GroupNorm in front, no cross-attention, `AttnProcessor2_0`).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::context::ForwardCtx;
use crate::error::{Result, shape_err};
use crate::layers::{
    GroupNorm, GroupNormConfig, LayerMut, LayerRef, QLinear, QLinearConfig, QMatmul,
    multi_head_attention,
};

/// Configuration of an [`Attention`].
#[derive(Config, Debug)]
pub struct AttentionConfig {
    /// Channels C of the feature map (query dim and output dim).
    pub channels: usize,
    /// Heads (diffusers: `channels // attention_head_dim`).
    pub heads: usize,
    /// Channels per head (`inner_dim = heads · head_dim`, which may differ from C).
    pub head_dim: usize,
    /// GroupNorm groups.
    pub groups: usize,
    /// GroupNorm ε.
    #[config(default = 1e-5)]
    pub eps: f64,
    /// The output (residual included) is divided by this (`rescale_output_factor`).
    #[config(default = 1.0)]
    pub rescale_output_factor: f64,
}

impl AttentionConfig {
    /// Random init; `name` is the diffusers path (`mid_block.attentions.0`).
    pub fn init(&self, name: &str, device: &Device) -> Attention {
        let inner = self.heads * self.head_dim;
        let lin = |i, o, n: &str| QLinearConfig::new(i, o).init(&format!("{name}.{n}"), device);
        Attention {
            group_norm: GroupNormConfig::new(self.groups, self.channels)
                .with_eps(self.eps)
                .init(device),
            to_q: lin(self.channels, inner, "to_q"),
            to_k: lin(self.channels, inner, "to_k"),
            to_v: lin(self.channels, inner, "to_v"),
            to_out: vec![lin(inner, self.channels, "to_out.0")],
            qk: QMatmul::new(&format!("{name}.qk")),
            sv: QMatmul::new(&format!("{name}.sv")),
            heads: self.heads,
            rescale_output_factor: self.rescale_output_factor,
            name: name.to_string(),
        }
    }
}

/// Multi-head self-attention over the `N = H·W` positions of a feature map, with residual:
///
/// `h = GN(x)` as tokens `[B, N, C]`; `q, k, v = to_q(h), to_k(h), to_v(h)` split into heads;
/// `S = (q·kᵀ) / sqrt(d)` (the `qk` matmul); `P = softmax(S)` over keys (f32);
/// `o = P·v` (the `sv` matmul); `y = (to_out.0(o) + x) / rescale_output_factor`.
///
/// The scale is applied to the scores after the `qk` product, so the product's quantizers see
/// the raw `to_q`/`to_k` outputs (as Q-Diffusion's attention).
///
/// # Shapes
/// - input/output: `[B, C, H, W]`; q, k, v: `[B, heads, N, d]`
#[derive(Module, Debug)]
pub struct Attention {
    /// GroupNorm on the input.
    pub group_norm: GroupNorm,
    /// Query projection `C → heads·d`.
    pub to_q: QLinear,
    /// Key projection.
    pub to_k: QLinear,
    /// Value projection.
    pub to_v: QLinear,
    /// Output projection `heads·d → C` (one element: diffusers key `to_out.0`; its `to_out.1`
    /// is a parameterless dropout).
    pub to_out: Vec<QLinear>,
    /// `q·kᵀ` (no parameters; `<path>.qk`).
    pub qk: QMatmul,
    /// `softmax·v` (no parameters; `<path>.sv`).
    pub sv: QMatmul,
    /// Number of heads.
    pub heads: usize,
    /// Output divisor.
    pub rescale_output_factor: f64,
    #[module(skip)]
    name: String,
}

impl Attention {
    /// diffusers path of the attention.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Forward pass; taps the output under the attention's path.
    pub fn forward(&self, x: Tensor<4>, ctx: &ForwardCtx<'_>) -> Result<Tensor<4>> {
        let [b, c, hh, ww] = x.dims();
        let n = hh * ww;
        let heads = self.heads;
        let out_proj = self
            .to_out
            .first()
            .ok_or_else(|| shape_err(&self.name, "one to_out projection", 0))?;

        let h = self.group_norm.forward(x.clone())?;
        let h = h.reshape([b, c, n]).swap_dims(1, 2); // [B, N, C]
        let q = self.to_q.forward(h.clone(), ctx)?;
        let k = self.to_k.forward(h.clone(), ctx)?;
        let v = self.to_v.forward(h, ctx)?;
        let o = multi_head_attention(&self.qk, &self.sv, q, k, v, heads, ctx)?;
        let o = out_proj.forward(o, ctx)?; // [B, N, C]
        let o = o.swap_dims(1, 2).reshape([b, c, hh, ww]);
        let mut y = o + x;
        if self.rescale_output_factor != 1.0 {
            y = y / self.rescale_output_factor;
        }
        ctx.tap4(&self.name, &y)?;
        Ok(y)
    }

    /// Visits the quantizable layers in forward order.
    pub(crate) fn layers(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        f(LayerRef::Linear(&self.to_q));
        f(LayerRef::Linear(&self.to_k));
        f(LayerRef::Linear(&self.to_v));
        f(LayerRef::Matmul(&self.qk));
        f(LayerRef::Matmul(&self.sv));
        for l in &self.to_out {
            f(LayerRef::Linear(l));
        }
    }

    /// Visits the quantizable layers mutably in forward order.
    pub(crate) fn layers_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        f(LayerMut::Linear(&mut self.to_q));
        f(LayerMut::Linear(&mut self.to_k));
        f(LayerMut::Linear(&mut self.to_v));
        f(LayerMut::Matmul(&mut self.qk));
        f(LayerMut::Matmul(&mut self.sv));
        for l in &mut self.to_out {
            f(LayerMut::Linear(l));
        }
    }
}
