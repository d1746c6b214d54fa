//! [`ResnetBlock2D`]: diffusers' residual block with time conditioning
//! (`time_embedding_norm = "default"`, SiLU, no up/down sampling inside).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use crate::context::ForwardCtx;
use crate::error::Result;
use crate::layers::{
    GroupNorm, GroupNormConfig, LayerMut, LayerRef, QConv2d, QConv2dConfig, QLinear, QLinearConfig,
};

/// Configuration of a [`ResnetBlock2D`].
#[derive(Config, Debug)]
pub struct ResnetBlock2DConfig {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Width of the time embedding.
    pub temb_channels: usize,
    /// GroupNorm groups (both norms).
    pub groups: usize,
    /// GroupNorm ε.
    #[config(default = 1e-5)]
    pub eps: f64,
    /// The output is divided by this (`mid_block_scale_factor` in the mid block).
    #[config(default = 1.0)]
    pub output_scale_factor: f64,
}

impl ResnetBlock2DConfig {
    /// Random init; `name` is the diffusers path (`down_blocks.0.resnets.1`).
    pub fn init(&self, name: &str, device: &Device) -> ResnetBlock2D {
        let conv3 = |cin, cout| QConv2dConfig::new(cin, cout, 3).with_padding(1);
        ResnetBlock2D {
            norm1: GroupNormConfig::new(self.groups, self.c_in)
                .with_eps(self.eps)
                .init(device),
            conv1: conv3(self.c_in, self.c_out).init(&format!("{name}.conv1"), device),
            time_emb_proj: QLinearConfig::new(self.temb_channels, self.c_out)
                .init(&format!("{name}.time_emb_proj"), device),
            norm2: GroupNormConfig::new(self.groups, self.c_out)
                .with_eps(self.eps)
                .init(device),
            conv2: conv3(self.c_out, self.c_out).init(&format!("{name}.conv2"), device),
            conv_shortcut: (self.c_in != self.c_out).then(|| {
                QConv2dConfig::new(self.c_in, self.c_out, 1)
                    .init(&format!("{name}.conv_shortcut"), device)
            }),
            output_scale_factor: self.output_scale_factor,
            name: name.to_string(),
        }
    }
}

/// `(shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + time_emb_proj(silu(temb)))))) / s`
/// where `shortcut` is a 1×1 conv when the channel count changes, else the identity.
///
/// # Shapes
/// - x: `[B, C_in, H, W]`; temb: `[B, T]`; output: `[B, C_out, H, W]`
#[derive(Module, Debug)]
pub struct ResnetBlock2D {
    /// First GroupNorm.
    pub norm1: GroupNorm,
    /// First 3×3 conv.
    pub conv1: QConv2d,
    /// Projection of the time embedding to `C_out`.
    pub time_emb_proj: QLinear,
    /// Second GroupNorm.
    pub norm2: GroupNorm,
    /// Second 3×3 conv.
    pub conv2: QConv2d,
    /// 1×1 conv on the residual path when `C_in != C_out`.
    pub conv_shortcut: Option<QConv2d>,
    /// Output divisor.
    pub output_scale_factor: f64,
    #[module(skip)]
    name: String,
}

impl ResnetBlock2D {
    /// diffusers path of the block.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Forward pass; `temb` is the raw time embedding (the SiLU is applied here). Taps the
    /// output under the block's path.
    pub fn forward(
        &self,
        x: Tensor<4>,
        temb: &Tensor<2>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor<4>> {
        let h = silu(self.norm1.forward(x.clone())?);
        let h = self.conv1.forward(h, ctx)?;
        let t = self.time_emb_proj.forward(silu(temb.clone()), ctx)?;
        let [b, c] = t.dims();
        let h = h + t.reshape([b, c, 1, 1]);
        let h = silu(self.norm2.forward(h)?);
        let h = self.conv2.forward(h, ctx)?;
        let skip = match &self.conv_shortcut {
            Some(conv) => conv.forward(x, ctx)?,
            None => x,
        };
        let mut out = skip + h;
        if self.output_scale_factor != 1.0 {
            out = out / self.output_scale_factor;
        }
        ctx.tap4(&self.name, &out)?;
        Ok(out)
    }

    /// Visits the quantizable layers in forward order.
    pub(crate) fn layers(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        f(LayerRef::Conv2d(&self.conv1));
        f(LayerRef::Linear(&self.time_emb_proj));
        f(LayerRef::Conv2d(&self.conv2));
        if let Some(c) = &self.conv_shortcut {
            f(LayerRef::Conv2d(c));
        }
    }

    /// Visits the quantizable layers mutably in forward order.
    pub(crate) fn layers_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        f(LayerMut::Conv2d(&mut self.conv1));
        f(LayerMut::Linear(&mut self.time_emb_proj));
        f(LayerMut::Conv2d(&mut self.conv2));
        if let Some(c) = &mut self.conv_shortcut {
            f(LayerMut::Conv2d(c));
        }
    }
}
