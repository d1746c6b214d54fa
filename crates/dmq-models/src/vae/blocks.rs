//! The VAE's blocks: [`DownEncoderBlock2D`], [`UpDecoderBlock2D`] and [`VaeMidBlock`]
//! (diffusers `UNetMidBlock2D` with `temb_channels=None`). Every resnet is a
//! [`ResnetBlock2D`] without time conditioning and GroupNorm ε 1e-6; resampling reuses the
//! UNet's [`Downsample2D`] (padding 0: one zero row/column at the bottom/right, then a
//! stride-2 3×3 conv) and [`Upsample2D`] (nearest ×2, then a 3×3 conv), which compute exactly
//! diffusers' `Downsample2D(padding=0)` / `Upsample2D(use_conv=True)`.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::config::VAE_NORM_EPS;
use crate::context::ForwardCtx;
use crate::error::{Result, shape_err};
use crate::layers::{LayerMut, LayerRef};
use crate::unet::attention::{Attention, AttentionConfig};
use crate::unet::resnet::{ResnetBlock2D, ResnetBlock2DConfig};
use crate::unet::sampling::{Downsample2D, Upsample2D};

/// A time-free resnet `c_in → c_out` named `name`.
fn resnet(name: &str, c_in: usize, c_out: usize, groups: usize, device: &Device) -> ResnetBlock2D {
    ResnetBlock2DConfig::without_time(c_in, c_out, groups)
        .with_eps(VAE_NORM_EPS)
        .init(name, device)
}

/// An encoder level (diffusers `DownEncoderBlock2D`): `layers_per_block` resnets, then a
/// padding-0 stride-2 downsampler unless it is the last level.
///
/// # Shapes
/// - input: `[B, C_in, H, W]`; output: `[B, C_out, H/2, W/2]` (`[B, C_out, H, W]` on the
///   last level)
#[derive(Module, Debug)]
pub struct DownEncoderBlock2D {
    /// Residual blocks (`resnets.j`).
    pub resnets: Vec<ResnetBlock2D>,
    /// Zero or one downsampler (`downsamplers.0`).
    pub downsamplers: Vec<Downsample2D>,
    #[module(skip)]
    name: String,
}

impl DownEncoderBlock2D {
    /// Random init; `name` is the diffusers path (`encoder.down_blocks.i`).
    pub fn new(
        name: &str,
        c_in: usize,
        c_out: usize,
        layers: usize,
        groups: usize,
        downsample: bool,
        device: &Device,
    ) -> Self {
        let resnets = (0..layers)
            .map(|j| {
                let cin = if j == 0 { c_in } else { c_out };
                resnet(&format!("{name}.resnets.{j}"), cin, c_out, groups, device)
            })
            .collect();
        let downsamplers = if downsample {
            vec![Downsample2D::new(
                &format!("{name}.downsamplers.0"),
                c_out,
                c_out,
                0,
                device,
            )]
        } else {
            Vec::new()
        };
        Self {
            resnets,
            downsamplers,
            name: name.to_string(),
        }
    }

    /// diffusers path (`encoder.down_blocks.i`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Forward pass; taps the output under the block's path.
    pub fn forward(&self, x: Tensor<4>, ctx: &ForwardCtx<'_>) -> Result<Tensor<4>> {
        let mut h = x;
        for res in &self.resnets {
            h = res.forward_opt(h, None, ctx)?;
        }
        for down in &self.downsamplers {
            h = down.forward(h, ctx)?;
        }
        ctx.tap4(&self.name, &h)?;
        Ok(h)
    }

    pub(crate) fn layers(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        for res in &self.resnets {
            res.layers(f);
        }
        for d in &self.downsamplers {
            d.layers(f);
        }
    }

    pub(crate) fn layers_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        for res in &mut self.resnets {
            res.layers_mut(f);
        }
        for d in &mut self.downsamplers {
            d.layers_mut(f);
        }
    }
}

/// A decoder level (diffusers `UpDecoderBlock2D`): `layers_per_block + 1` resnets, then a
/// nearest ×2 upsampler with a 3×3 conv unless it is the last level. No skip connections.
///
/// # Shapes
/// - input: `[B, C_in, h, w]`; output: `[B, C_out, 2h, 2w]` (`[B, C_out, h, w]` on the last
///   level)
#[derive(Module, Debug)]
pub struct UpDecoderBlock2D {
    /// Residual blocks (`resnets.j`).
    pub resnets: Vec<ResnetBlock2D>,
    /// Zero or one upsampler (`upsamplers.0`).
    pub upsamplers: Vec<Upsample2D>,
    #[module(skip)]
    name: String,
}

impl UpDecoderBlock2D {
    /// Random init; `name` is the diffusers path (`decoder.up_blocks.i`); `layers` is the
    /// resnet count (`layers_per_block + 1`).
    pub fn new(
        name: &str,
        c_in: usize,
        c_out: usize,
        layers: usize,
        groups: usize,
        upsample: bool,
        device: &Device,
    ) -> Self {
        let resnets = (0..layers)
            .map(|j| {
                let cin = if j == 0 { c_in } else { c_out };
                resnet(&format!("{name}.resnets.{j}"), cin, c_out, groups, device)
            })
            .collect();
        let upsamplers = if upsample {
            vec![Upsample2D::new(
                &format!("{name}.upsamplers.0"),
                c_out,
                c_out,
                device,
            )]
        } else {
            Vec::new()
        };
        Self {
            resnets,
            upsamplers,
            name: name.to_string(),
        }
    }

    /// diffusers path (`decoder.up_blocks.i`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Forward pass; taps the output under the block's path.
    pub fn forward(&self, x: Tensor<4>, ctx: &ForwardCtx<'_>) -> Result<Tensor<4>> {
        let mut h = x;
        for res in &self.resnets {
            h = res.forward_opt(h, None, ctx)?;
        }
        for up in &self.upsamplers {
            h = up.forward(h, ctx)?;
        }
        ctx.tap4(&self.name, &h)?;
        Ok(h)
    }

    pub(crate) fn layers(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        for res in &self.resnets {
            res.layers(f);
        }
        for u in &self.upsamplers {
            u.layers(f);
        }
    }

    pub(crate) fn layers_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        for res in &mut self.resnets {
            res.layers_mut(f);
        }
        for u in &mut self.upsamplers {
            u.layers_mut(f);
        }
    }
}

/// The bottleneck of the encoder and of the decoder (diffusers `UNetMidBlock2D` with
/// `temb_channels=None`, one layer): `resnets.0`, then `attentions.0` (a single-head
/// self-attention over all C channels, GroupNorm ε 1e-6; absent without
/// `mid_block_add_attention`), then `resnets.1`.
///
/// # Shapes
/// - input/output: `[B, C, h, w]`
#[derive(Module, Debug)]
pub struct VaeMidBlock {
    /// Two residual blocks.
    pub resnets: Vec<ResnetBlock2D>,
    /// Zero or one attention between them.
    pub attentions: Vec<Attention>,
    #[module(skip)]
    name: String,
}

impl VaeMidBlock {
    /// Random init; `name` is the diffusers path (`encoder.mid_block`).
    pub fn new(
        name: &str,
        channels: usize,
        groups: usize,
        attention: bool,
        device: &Device,
    ) -> Self {
        let resnets = (0..2)
            .map(|j| {
                resnet(
                    &format!("{name}.resnets.{j}"),
                    channels,
                    channels,
                    groups,
                    device,
                )
            })
            .collect();
        let attentions = if attention {
            // diffusers: attention_head_dim = C, so heads = C / C = 1.
            vec![
                AttentionConfig::new(channels, 1, channels, groups)
                    .with_eps(VAE_NORM_EPS)
                    .init(&format!("{name}.attentions.0"), device),
            ]
        } else {
            Vec::new()
        };
        Self {
            resnets,
            attentions,
            name: name.to_string(),
        }
    }

    /// diffusers path (`encoder.mid_block` / `decoder.mid_block`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Forward pass; taps the output under the block's path.
    pub fn forward(&self, x: Tensor<4>, ctx: &ForwardCtx<'_>) -> Result<Tensor<4>> {
        let (first, rest) = self
            .resnets
            .split_first()
            .ok_or_else(|| shape_err(&self.name, "at least one resnet", 0))?;
        let mut h = first.forward_opt(x, None, ctx)?;
        for (j, res) in rest.iter().enumerate() {
            if let Some(attn) = self.attentions.get(j) {
                h = attn.forward(h, ctx)?;
            }
            h = res.forward_opt(h, None, ctx)?;
        }
        ctx.tap4(&self.name, &h)?;
        Ok(h)
    }

    pub(crate) fn layers(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        for (j, res) in self.resnets.iter().enumerate() {
            if j > 0
                && let Some(a) = self.attentions.get(j - 1)
            {
                a.layers(f);
            }
            res.layers(f);
        }
    }

    pub(crate) fn layers_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        let mut attns = self.attentions.iter_mut();
        for (j, res) in self.resnets.iter_mut().enumerate() {
            if j > 0
                && let Some(a) = attns.next()
            {
                a.layers_mut(f);
            }
            res.layers_mut(f);
        }
    }
}
