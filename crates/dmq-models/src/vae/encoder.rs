//! [`Encoder`]: diffusers' VAE `Encoder` (`double_z=True`), image → `2L` posterior moments.

use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use super::blocks::{DownEncoderBlock2D, VaeMidBlock};
use super::config::{AutoencoderKlConfig, VAE_NORM_EPS};
use crate::context::ForwardCtx;
use crate::error::Result;
use crate::layers::{GroupNorm, GroupNormConfig, LayerMut, LayerRef, QConv2d, QConv2dConfig};

/// `conv_out(silu(conv_norm_out(mid_block(down_blocks(conv_in(x))))))`: a 3×3 `conv_in` to
/// `block_out_channels[0]`, one [`DownEncoderBlock2D`] per level (each but the last halving
/// the resolution), the [`VaeMidBlock`], GroupNorm (ε 1e-6), SiLU and a 3×3 `conv_out` to the
/// `2L` moments (mean and log-variance).
///
/// # Shapes
/// - input: `[B, in_channels, H, W]`; output: `[B, 2·latent_channels, H/f, W/f]`,
///   `f = 2^(levels−1)`
#[derive(Module, Debug)]
pub struct Encoder {
    /// Input 3×3 conv (`encoder.conv_in`).
    pub conv_in: QConv2d,
    /// Levels (`encoder.down_blocks.i`).
    pub down_blocks: Vec<DownEncoderBlock2D>,
    /// Bottleneck (`encoder.mid_block`).
    pub mid_block: VaeMidBlock,
    /// Output GroupNorm (`encoder.conv_norm_out`).
    pub conv_norm_out: GroupNorm,
    /// Output 3×3 conv to `2L` channels (`encoder.conv_out`).
    pub conv_out: QConv2d,
}

impl Encoder {
    /// Random init of the encoder of a validated `config`, under the path `encoder`.
    pub fn new(config: &AutoencoderKlConfig, device: &Device) -> Self {
        let ch = &config.block_out_channels;
        let (first, last) = (ch[0], ch[ch.len() - 1]);
        let g = config.norm_num_groups;
        let conv3 = |cin, cout, name: &str| {
            QConv2dConfig::new(cin, cout, 3)
                .with_padding(1)
                .init(name, device)
        };
        let down_blocks = ch
            .iter()
            .enumerate()
            .map(|(i, &c_out)| {
                let c_in = if i == 0 { first } else { ch[i - 1] };
                DownEncoderBlock2D::new(
                    &format!("encoder.down_blocks.{i}"),
                    c_in,
                    c_out,
                    config.layers_per_block,
                    g,
                    i + 1 < ch.len(),
                    device,
                )
            })
            .collect();
        Self {
            conv_in: conv3(config.in_channels, first, "encoder.conv_in"),
            down_blocks,
            mid_block: VaeMidBlock::new(
                "encoder.mid_block",
                last,
                g,
                config.mid_block_add_attention,
                device,
            ),
            conv_norm_out: GroupNormConfig::new(g, last)
                .with_eps(VAE_NORM_EPS)
                .init(device),
            conv_out: conv3(last, 2 * config.latent_channels, "encoder.conv_out"),
        }
    }

    /// Forward pass (input shape checked by [`super::AutoencoderKL::encode`]); taps the
    /// output as `encoder`.
    pub fn forward(&self, x: Tensor<4>, ctx: &ForwardCtx<'_>) -> Result<Tensor<4>> {
        let mut h = self.conv_in.forward(x, ctx)?;
        for block in &self.down_blocks {
            h = block.forward(h, ctx)?;
        }
        let h = self.mid_block.forward(h, ctx)?;
        let h = silu(self.conv_norm_out.forward(h)?);
        let h = self.conv_out.forward(h, ctx)?;
        ctx.tap4("encoder", &h)?;
        Ok(h)
    }

    pub(crate) fn layers(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        f(LayerRef::Conv2d(&self.conv_in));
        for b in &self.down_blocks {
            b.layers(f);
        }
        self.mid_block.layers(f);
        f(LayerRef::Conv2d(&self.conv_out));
    }

    pub(crate) fn layers_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        f(LayerMut::Conv2d(&mut self.conv_in));
        for b in &mut self.down_blocks {
            b.layers_mut(f);
        }
        self.mid_block.layers_mut(f);
        f(LayerMut::Conv2d(&mut self.conv_out));
    }
}
