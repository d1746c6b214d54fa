//! [`Transformer2DModel`] (diffusers' continuous-input `Transformer2DModel`, the
//! `attentions.j` of the cross-attention blocks) and its [`BasicTransformerBlock`]s
//! (`norm_type = "layer_norm"`, self- and cross-attention, GEGLU feed-forward).

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::attention::{Attention, AttentionConfig};
use super::config::TransformerSpec;
use super::feed_forward::FeedForward;
use super::projection::Projection;
use crate::context::ForwardCtx;
use crate::error::{Result, shape_err};
use crate::layers::{GroupNorm, GroupNormConfig, LayerMut, LayerNorm, LayerNormConfig, LayerRef};

/// diffusers `BasicTransformerBlock` as the SD UNet builds it (LayerNorms with ε 1e-5 and
/// affine weights, no attention bias except `to_out.0`, dropout off):
///
/// ```text
/// x = attn1(norm1(x)) + x                          self-attention
/// x = attn2(norm2(x), encoder_hidden_states) + x   cross-attention
/// x = ff(norm3(x)) + x                             GEGLU feed-forward
/// ```
///
/// Taps its output under its path (`…attentions.j.transformer_blocks.k`, a
/// [`TapTensor::R3`](crate::TapTensor::R3) `[B, N, D]`).
///
/// # Shapes
/// - x: `[B, N, D]`; encoder_hidden_states: `[B, L, D_cross]`; output: `[B, N, D]`
#[derive(Module, Debug)]
pub struct BasicTransformerBlock {
    /// LayerNorm before `attn1`.
    pub norm1: LayerNorm,
    /// Self-attention.
    pub attn1: Attention,
    /// LayerNorm before `attn2`.
    pub norm2: LayerNorm,
    /// Cross-attention to `encoder_hidden_states`.
    pub attn2: Attention,
    /// LayerNorm before `ff`.
    pub norm3: LayerNorm,
    /// GEGLU feed-forward.
    pub ff: FeedForward,
    #[module(skip)]
    name: String,
}

impl BasicTransformerBlock {
    /// Block of width `dim` = heads · head_dim under `name`.
    pub fn new(name: &str, spec: &TransformerSpec, device: &Device) -> Self {
        let dim = spec.inner_dim();
        let norm = || LayerNormConfig::new(dim).with_eps(1e-5).init(device);
        let attn = |cross: Option<usize>, n: &str| {
            AttentionConfig {
                query_dim: dim,
                heads: spec.heads,
                dim_head: spec.head_dim,
                cross_attention_dim: cross,
            }
            .init(&format!("{name}.{n}"), device)
        };
        Self {
            norm1: norm(),
            attn1: attn(None, "attn1"),
            norm2: norm(),
            attn2: attn(Some(spec.cross_attention_dim), "attn2"),
            norm3: norm(),
            ff: FeedForward::new(&format!("{name}.ff"), dim, device),
            name: name.to_string(),
        }
    }

    /// diffusers path of the block.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Forward pass; taps the output under the block's path.
    pub fn forward(
        &self,
        x: Tensor<3>,
        encoder_hidden_states: &Tensor<3>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor<3>> {
        let x = self
            .attn1
            .forward(self.norm1.forward(x.clone())?, None, ctx)?
            + x;
        let x = self.attn2.forward(
            self.norm2.forward(x.clone())?,
            Some(encoder_hidden_states),
            ctx,
        )? + x;
        let x = self.ff.forward(self.norm3.forward(x.clone())?, ctx)? + x;
        ctx.tap3(&self.name, &x)?;
        Ok(x)
    }

    /// Visits `attn1` (q, k, v, qk, sv, out), `attn2` (the same), `ff` (forward order).
    pub fn for_each_layer(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        self.attn1.for_each_layer(f);
        self.attn2.for_each_layer(f);
        self.ff.for_each_layer(f);
    }

    /// Mutable [`Self::for_each_layer`].
    pub fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        self.attn1.for_each_layer_mut(f);
        self.attn2.for_each_layer_mut(f);
        self.ff.for_each_layer_mut(f);
    }
}

/// diffusers `Transformer2DModel` on a feature map (continuous input):
///
/// ```text
/// h = norm(x)                                       GroupNorm, ε 1e-6
/// t = proj_in(h) as tokens [B, H·W, D]              1×1 conv then flatten, or flatten then linear
/// t = transformer_blocks[k](t, encoder_hidden_states)
/// y = proj_out(t) as a map [B, C, H, W] + x         (the inverse order of proj_in)
/// ```
///
/// With D = heads · (C / heads), which may be less than C for the conv projection. Taps its
/// output under its path (`down_blocks.i.attentions.j`).
///
/// # Shapes
/// - x: `[B, C, H, W]`; encoder_hidden_states: `[B, L, D_cross]`; output: `[B, C, H, W]`
#[derive(Module, Debug)]
pub struct Transformer2DModel {
    /// Input GroupNorm.
    pub norm: GroupNorm,
    /// `C → D` (1×1 conv or linear).
    pub proj_in: Projection,
    /// The transformer blocks.
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    /// `D → C` (1×1 conv or linear).
    pub proj_out: Projection,
    #[module(skip)]
    name: String,
}

impl Transformer2DModel {
    /// A transformer of shape `spec` under `name` (`down_blocks.0.attentions.1`).
    pub fn new(name: &str, spec: &TransformerSpec, device: &Device) -> Self {
        let (c, d) = (spec.channels, spec.inner_dim());
        let linear = spec.linear_projection;
        Self {
            norm: GroupNormConfig::new(spec.groups, c)
                .with_eps(1e-6)
                .init(device),
            proj_in: Projection::new(&format!("{name}.proj_in"), c, d, linear, device),
            transformer_blocks: (0..spec.layers)
                .map(|k| {
                    BasicTransformerBlock::new(
                        &format!("{name}.transformer_blocks.{k}"),
                        spec,
                        device,
                    )
                })
                .collect(),
            proj_out: Projection::new(&format!("{name}.proj_out"), d, c, linear, device),
            name: name.to_string(),
        }
    }

    /// diffusers path of the transformer.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Forward pass; taps the output under the transformer's path.
    pub fn forward(
        &self,
        x: Tensor<4>,
        encoder_hidden_states: &Tensor<3>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor<4>> {
        let [b, c, h, w] = x.dims();
        let [be, _, _] = encoder_hidden_states.dims();
        if be != b {
            return Err(shape_err(
                &self.name,
                format!("encoder_hidden_states [{b}, L, D]"),
                encoder_hidden_states.dims(),
            ));
        }
        let t = self
            .proj_in
            .map_to_tokens(self.norm.forward(x.clone())?, ctx)?;
        let t = self
            .transformer_blocks
            .iter()
            .try_fold(t, |t, block| block.forward(t, encoder_hidden_states, ctx))?;
        let y = self.proj_out.map_to_image(t, h, w, ctx)?;
        if y.dims()[1] != c {
            return Err(shape_err(
                &self.name,
                format!("[{b}, {c}, {h}, {w}]"),
                y.dims(),
            ));
        }
        let y = y + x;
        ctx.tap4(&self.name, &y)?;
        Ok(y)
    }

    /// Visits `proj_in`, every transformer block, `proj_out` (forward order).
    pub fn for_each_layer(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        f(self.proj_in.layer());
        for b in &self.transformer_blocks {
            b.for_each_layer(f);
        }
        f(self.proj_out.layer());
    }

    /// Mutable [`Self::for_each_layer`].
    pub fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        f(self.proj_in.layer_mut());
        for b in &mut self.transformer_blocks {
            b.for_each_layer_mut(f);
        }
        f(self.proj_out.layer_mut());
    }
}
