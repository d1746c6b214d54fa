//! [`Decoder`]: diffusers' VAE `Decoder` (`norm_type="group"`), latent → image.

use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use super::blocks::{UpDecoderBlock2D, VaeMidBlock};
use super::config::{AutoencoderKlConfig, VAE_NORM_EPS};
use crate::context::ForwardCtx;
use crate::error::Result;
use crate::layers::{GroupNorm, GroupNormConfig, LayerMut, LayerRef, QConv2d, QConv2dConfig};

/// `conv_out(silu(conv_norm_out(up_blocks(mid_block(conv_in(z))))))`: a 3×3 `conv_in` to the
/// deepest width `block_out_channels[n−1]`, the [`VaeMidBlock`], one [`UpDecoderBlock2D`] per
/// level from the deepest (each but the last doubling the resolution), GroupNorm (ε 1e-6),
/// SiLU and a 3×3 `conv_out` to the image channels.
///
/// # Shapes
/// - input: `[B, latent_channels, h, w]`; output: `[B, out_channels, h·f, w·f]`,
///   `f = 2^(levels−1)`
#[derive(Module, Debug)]
pub struct Decoder {
    /// Input 3×3 conv (`decoder.conv_in`).
    pub conv_in: QConv2d,
    /// Bottleneck (`decoder.mid_block`).
    pub mid_block: VaeMidBlock,
    /// Levels, deepest first (`decoder.up_blocks.i`).
    pub up_blocks: Vec<UpDecoderBlock2D>,
    /// Output GroupNorm (`decoder.conv_norm_out`).
    pub conv_norm_out: GroupNorm,
    /// Output 3×3 conv (`decoder.conv_out`).
    pub conv_out: QConv2d,
}

impl Decoder {
    /// Random init of the decoder of a validated `config`, under the path `decoder`.
    pub fn new(config: &AutoencoderKlConfig, device: &Device) -> Self {
        let rev: Vec<usize> = config.block_out_channels.iter().rev().copied().collect();
        let (deepest, first) = (rev[0], rev[rev.len() - 1]);
        let g = config.norm_num_groups;
        let conv3 = |cin, cout, name: &str| {
            QConv2dConfig::new(cin, cout, 3)
                .with_padding(1)
                .init(name, device)
        };
        let up_blocks = rev
            .iter()
            .enumerate()
            .map(|(i, &c_out)| {
                let c_in = if i == 0 { deepest } else { rev[i - 1] };
                UpDecoderBlock2D::new(
                    &format!("decoder.up_blocks.{i}"),
                    c_in,
                    c_out,
                    config.layers_per_block + 1,
                    g,
                    i + 1 < rev.len(),
                    device,
                )
            })
            .collect();
        Self {
            conv_in: conv3(config.latent_channels, deepest, "decoder.conv_in"),
            mid_block: VaeMidBlock::new(
                "decoder.mid_block",
                deepest,
                g,
                config.mid_block_add_attention,
                device,
            ),
            up_blocks,
            conv_norm_out: GroupNormConfig::new(g, first)
                .with_eps(VAE_NORM_EPS)
                .init(device),
            conv_out: conv3(first, config.out_channels, "decoder.conv_out"),
        }
    }

    /// Forward pass (input shape checked by [`super::AutoencoderKL::decode`]); taps the
    /// output as `decoder`.
    pub fn forward(&self, z: Tensor<4>, ctx: &ForwardCtx<'_>) -> Result<Tensor<4>> {
        let h = self.conv_in.forward(z, ctx)?;
        let mut h = self.mid_block.forward(h, ctx)?;
        for block in &self.up_blocks {
            h = block.forward(h, ctx)?;
        }
        let h = silu(self.conv_norm_out.forward(h)?);
        let h = self.conv_out.forward(h, ctx)?;
        ctx.tap4("decoder", &h)?;
        Ok(h)
    }

    pub(crate) fn layers(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        f(LayerRef::Conv2d(&self.conv_in));
        self.mid_block.layers(f);
        for b in &self.up_blocks {
            b.layers(f);
        }
        f(LayerRef::Conv2d(&self.conv_out));
    }

    pub(crate) fn layers_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        f(LayerMut::Conv2d(&mut self.conv_in));
        self.mid_block.layers_mut(f);
        for b in &mut self.up_blocks {
            b.layers_mut(f);
        }
        f(LayerMut::Conv2d(&mut self.conv_out));
    }
}
