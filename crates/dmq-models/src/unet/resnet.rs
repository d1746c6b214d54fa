//! [`ResnetBlock2D`]: diffusers' residual block (`time_embedding_norm = "default"`, SiLU, no
//! up/down sampling inside), with time conditioning (the UNet's) or without (the VAE's,
//! diffusers `temb_channels=None`).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use crate::context::ForwardCtx;
use crate::error::{Result, shape_err};
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
    /// Width of the time embedding; `0`: no time conditioning and no `time_emb_proj`
    /// (diffusers `temb_channels=None`, as in the VAE).
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
    /// A block without time conditioning (`temb_channels = 0`), as the VAE's.
    pub fn without_time(c_in: usize, c_out: usize, groups: usize) -> Self {
        Self::new(c_in, c_out, 0, groups)
    }

    /// Random init; `name` is the diffusers path (`down_blocks.0.resnets.1`).
    pub fn init(&self, name: &str, device: &Device) -> ResnetBlock2D {
        let conv3 = |cin, cout| QConv2dConfig::new(cin, cout, 3).with_padding(1);
        ResnetBlock2D {
            norm1: GroupNormConfig::new(self.groups, self.c_in)
                .with_eps(self.eps)
                .init(device),
            conv1: conv3(self.c_in, self.c_out).init(&format!("{name}.conv1"), device),
            time_emb_proj: (self.temb_channels > 0).then(|| {
                QLinearConfig::new(self.temb_channels, self.c_out)
                    .init(&format!("{name}.time_emb_proj"), device)
            }),
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
/// where `shortcut` is a 1×1 conv when the channel count changes, else the identity; without
/// time conditioning the `time_emb_proj` term is absent.
///
/// # Shapes
/// - x: `[B, C_in, H, W]`; temb: `[B, T]`; output: `[B, C_out, H, W]`
#[derive(Module, Debug)]
pub struct ResnetBlock2D {
    /// First GroupNorm.
    pub norm1: GroupNorm,
    /// First 3×3 conv.
    pub conv1: QConv2d,
    /// Projection of the time embedding to `C_out` (None without time conditioning).
    pub time_emb_proj: Option<QLinear>,
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

    /// Forward pass of a time-conditioned block; `temb` is the raw time embedding (the SiLU
    /// is applied here). Taps the output under the block's path.
    pub fn forward(
        &self,
        x: Tensor<4>,
        temb: &Tensor<2>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor<4>> {
        self.forward_opt(x, Some(temb), ctx)
    }

    /// Forward pass with an optional time embedding: `Some` for a block with
    /// `time_emb_proj`, `None` for one without (the VAE's); the other combinations are shape
    /// errors naming the block.
    pub fn forward_opt(
        &self,
        x: Tensor<4>,
        temb: Option<&Tensor<2>>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor<4>> {
        let h = silu(self.norm1.forward(x.clone())?);
        let mut h = self.conv1.forward(h, ctx)?;
        match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => {
                let t = proj.forward(silu(temb.clone()), ctx)?;
                let [b, c] = t.dims();
                h = h + t.reshape([b, c, 1, 1]);
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(shape_err(&self.name, "a time embedding [B, T]", "none"));
            }
            (None, Some(t)) => {
                return Err(shape_err(
                    &self.name,
                    "no time embedding (the block has no time_emb_proj)",
                    t.dims(),
                ));
            }
        }
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
        if let Some(p) = &self.time_emb_proj {
            f(LayerRef::Linear(p));
        }
        f(LayerRef::Conv2d(&self.conv2));
        if let Some(c) = &self.conv_shortcut {
            f(LayerRef::Conv2d(c));
        }
    }

    /// Visits the quantizable layers mutably in forward order.
    pub(crate) fn layers_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        f(LayerMut::Conv2d(&mut self.conv1));
        if let Some(p) = &mut self.time_emb_proj {
            f(LayerMut::Linear(p));
        }
        f(LayerMut::Conv2d(&mut self.conv2));
        if let Some(c) = &mut self.conv_shortcut {
            f(LayerMut::Conv2d(c));
        }
    }
}
