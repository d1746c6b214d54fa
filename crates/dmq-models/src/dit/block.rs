//! [`BasicTransformerBlock`]: diffusers' transformer block with `norm_type = "ada_norm_zero"`
//! and no cross-attention (the DiT block).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};

use super::ada_norm::{AdaLayerNormZero, AdaLayerNormZeroConfig};
use super::attention::{Attention, AttentionConfig};
use super::feed_forward::{FeedForward, FeedForwardConfig};
use crate::context::ForwardCtx;
use crate::error::Result;
use crate::layers::{LayerMut, LayerNorm, LayerNormConfig, LayerRef};

/// Configuration of a [`BasicTransformerBlock`].
#[derive(Config, Debug)]
pub struct BasicTransformerBlockConfig {
    /// Width D.
    pub dim: usize,
    /// Heads H.
    pub num_attention_heads: usize,
    /// Channels per head.
    pub attention_head_dim: usize,
    /// Number of classes.
    pub num_embeds_ada_norm: usize,
    /// Bias of q/k/v.
    #[config(default = true)]
    pub attention_bias: bool,
    /// Dropout (training only).
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Affine weight/bias of `norm3`.
    #[config(default = false)]
    pub norm_elementwise_affine: bool,
    /// ε of `norm3`.
    #[config(default = 1e-5)]
    pub norm_eps: f64,
}

impl BasicTransformerBlockConfig {
    /// Submodules under `name` (e.g. `transformer_blocks.3`).
    pub fn init(&self, name: &str, device: &Device) -> BasicTransformerBlock {
        BasicTransformerBlock {
            norm1: AdaLayerNormZeroConfig::new(self.dim, self.num_embeds_ada_norm)
                .init(&format!("{name}.norm1"), device),
            attn1: AttentionConfig::new(
                self.dim,
                self.num_attention_heads,
                self.attention_head_dim,
            )
            .with_bias(self.attention_bias)
            .with_dropout(self.dropout)
            .init(&format!("{name}.attn1"), device),
            norm3: LayerNormConfig::new(self.dim)
                .with_eps(self.norm_eps)
                .with_affine(self.norm_elementwise_affine)
                .init(device),
            ff: FeedForwardConfig::new(self.dim)
                .with_dropout(self.dropout)
                .init(&format!("{name}.ff"), device),
        }
    }
}

/// The DiT block (diffusers `BasicTransformerBlock`, `norm_type="ada_norm_zero"`):
///
/// ```text
/// x̂, g_msa, shift_mlp, scale_mlp, g_mlp = norm1(x, t, y)     (adaLN-Zero)
/// x = x + g_msa · attn1(x̂)
/// x = x + g_mlp · ff(norm3(x)·(1 + scale_mlp) + shift_mlp)
/// ```
///
/// The pre-feed-forward norm is diffusers' `norm3` (`norm2` belongs to the cross-attention
/// that DiT does not have); it uses the config's `norm_eps` and `norm_elementwise_affine`.
///
/// # Shapes
/// - x: `[B, N, D]`; t_proj: `[B, 256]`; labels: `[B]`; output: `[B, N, D]`
#[derive(Module, Debug)]
pub struct BasicTransformerBlock {
    /// adaLN-Zero with its own timestep/class embedding.
    pub norm1: AdaLayerNormZero,
    /// Self-attention.
    pub attn1: Attention,
    /// LayerNorm before the feed-forward.
    pub norm3: LayerNorm,
    /// Feed-forward.
    pub ff: FeedForward,
}

impl BasicTransformerBlock {
    /// Forward pass.
    pub fn forward(
        &self,
        x: Tensor<3>,
        t_proj: Tensor<2>,
        labels: Tensor<1, Int>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor<3>> {
        let m = self.norm1.forward(x.clone(), t_proj, labels, ctx)?;
        let attn = self.attn1.forward(m.x, ctx)?;
        let x = m.gate_msa.unsqueeze_dim::<3>(1) * attn + x;
        let h = self.norm3.forward(x.clone())? * (m.scale_mlp.unsqueeze_dim::<3>(1) + 1.0)
            + m.shift_mlp.unsqueeze_dim::<3>(1);
        let ff = self.ff.forward(h, ctx)?;
        Ok(m.gate_mlp.unsqueeze_dim::<3>(1) * ff + x)
    }

    /// Visits the quantizable layers in forward order.
    pub fn for_each_layer(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        self.norm1.for_each_layer(f);
        self.attn1.for_each_layer(f);
        self.ff.for_each_layer(f);
    }

    /// Visits the quantizable layers mutably, in forward order.
    pub fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        self.norm1.for_each_layer_mut(f);
        self.attn1.for_each_layer_mut(f);
        self.ff.for_each_layer_mut(f);
    }
}
