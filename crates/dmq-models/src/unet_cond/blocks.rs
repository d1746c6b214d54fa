//! The conditional UNet's blocks: [`DownBlock`] (diffusers `CrossAttnDownBlock2D` /
//! `DownBlock2D`), [`MidBlock`] (`UNetMidBlock2DCrossAttn`) and [`UpBlock`]
//! (`CrossAttnUpBlock2D` / `UpBlock2D`). A block without cross-attention has an empty
//! `attentions` list, so field names (and checkpoint keys) are diffusers' in both variants.
//! Resnets and resamplers are the UNet's ([`crate::unet`]).

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::config::{DownKind, UNet2DConditionConfig, UpKind};
use super::transformer::Transformer2DModel;
use crate::context::ForwardCtx;
use crate::error::{Result, shape_err};
use crate::layers::{LayerMut, LayerRef};
use crate::unet::{Downsample2D, ResnetBlock2D, ResnetBlock2DConfig, Upsample2D};

fn resnet(
    cfg: &UNet2DConditionConfig,
    c_in: usize,
    c_out: usize,
    scale: f64,
) -> ResnetBlock2DConfig {
    ResnetBlock2DConfig::new(c_in, c_out, cfg.time_embed_dim(), cfg.groups())
        .with_eps(cfg.norm_eps)
        .with_output_scale_factor(scale)
}

/// A down level: `layers_per_block` resnets (each followed by a [`Transformer2DModel`] in
/// `CrossAttnDownBlock2D`), then a stride-2 downsampler except at the last level. Every
/// resnet/transformer output and the downsampler output is a skip connection.
#[derive(Module, Debug)]
pub struct DownBlock {
    /// Residual blocks.
    pub resnets: Vec<ResnetBlock2D>,
    /// Transformers after each resnet (empty for `DownBlock2D`).
    pub attentions: Vec<Transformer2DModel>,
    /// Zero or one downsampler.
    pub downsamplers: Vec<Downsample2D>,
    #[module(skip)]
    name: String,
}

impl DownBlock {
    /// Block `index` of `cfg` (`down_blocks.{index}`).
    pub fn new(cfg: &UNet2DConditionConfig, index: usize, kind: DownKind, device: &Device) -> Self {
        let name = format!("down_blocks.{index}");
        let ch = &cfg.block_out_channels;
        let c_out = ch[index];
        let c_in = if index == 0 { ch[0] } else { ch[index - 1] };
        let layers = cfg.layers();
        let resnets = (0..layers)
            .map(|j| {
                resnet(cfg, if j == 0 { c_in } else { c_out }, c_out, 1.0)
                    .init(&format!("{name}.resnets.{j}"), device)
            })
            .collect();
        let attentions = match kind {
            DownKind::Down => Vec::new(),
            DownKind::CrossAttnDown => {
                let spec = cfg.transformer_spec(index, c_out);
                (0..layers)
                    .map(|j| {
                        Transformer2DModel::new(&format!("{name}.attentions.{j}"), &spec, device)
                    })
                    .collect()
            }
        };
        let downsamplers = if index + 1 == ch.len() {
            Vec::new()
        } else {
            vec![Downsample2D::new(
                &format!("{name}.downsamplers.0"),
                c_out,
                c_out,
                cfg.downsample_padding,
                device,
            )]
        };
        Self {
            resnets,
            attentions,
            downsamplers,
            name,
        }
    }

    /// diffusers path (`down_blocks.i`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Forward pass: the block output, its skip tensors appended to `skips`. Taps the output
    /// under the block's path.
    pub fn forward(
        &self,
        x: Tensor<4>,
        temb: &Tensor<2>,
        encoder_hidden_states: &Tensor<3>,
        skips: &mut Vec<Tensor<4>>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor<4>> {
        let mut h = x;
        for (j, res) in self.resnets.iter().enumerate() {
            h = res.forward(h, temb, ctx)?;
            if let Some(attn) = self.attentions.get(j) {
                h = attn.forward(h, encoder_hidden_states, ctx)?;
            }
            skips.push(h.clone());
        }
        for down in &self.downsamplers {
            h = down.forward(h, ctx)?;
            skips.push(h.clone());
        }
        ctx.tap4(&self.name, &h)?;
        Ok(h)
    }

    /// Visits the quantizable layers in forward order.
    pub fn for_each_layer(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        for (j, res) in self.resnets.iter().enumerate() {
            res.layers(f);
            if let Some(a) = self.attentions.get(j) {
                a.for_each_layer(f);
            }
        }
        for d in &self.downsamplers {
            d.layers(f);
        }
    }

    /// Mutable [`Self::for_each_layer`].
    pub fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        let mut attns = self.attentions.iter_mut();
        for res in &mut self.resnets {
            res.layers_mut(f);
            if let Some(a) = attns.next() {
                a.for_each_layer_mut(f);
            }
        }
        for d in &mut self.downsamplers {
            d.layers_mut(f);
        }
    }
}

/// The bottleneck `UNetMidBlock2DCrossAttn`: `resnets.0`, then `attentions.0` and
/// `resnets.1`; the resnets divide their output by `mid_block_scale_factor` (the transformer
/// does not).
#[derive(Module, Debug)]
pub struct MidBlock {
    /// Two residual blocks.
    pub resnets: Vec<ResnetBlock2D>,
    /// One transformer between them.
    pub attentions: Vec<Transformer2DModel>,
    #[module(skip)]
    name: String,
}

impl MidBlock {
    /// The mid block of `cfg` (`mid_block`; heads and transformer depth of the last level).
    pub fn new(cfg: &UNet2DConditionConfig, device: &Device) -> Self {
        let name = "mid_block".to_string();
        let n = cfg.levels();
        let c = cfg.block_out_channels[n - 1];
        let s = cfg.mid_block_scale_factor;
        Self {
            resnets: (0..2)
                .map(|j| resnet(cfg, c, c, s).init(&format!("{name}.resnets.{j}"), device))
                .collect(),
            attentions: vec![Transformer2DModel::new(
                &format!("{name}.attentions.0"),
                &cfg.transformer_spec(n - 1, c),
                device,
            )],
            name,
        }
    }

    /// diffusers path (`mid_block`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Forward pass; taps the output as `mid_block`.
    pub fn forward(
        &self,
        x: Tensor<4>,
        temb: &Tensor<2>,
        encoder_hidden_states: &Tensor<3>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor<4>> {
        let (first, rest) = self
            .resnets
            .split_first()
            .ok_or_else(|| shape_err(&self.name, "at least one resnet", 0))?;
        let mut h = first.forward(x, temb, ctx)?;
        for (attn, res) in self.attentions.iter().zip(rest) {
            h = attn.forward(h, encoder_hidden_states, ctx)?;
            h = res.forward(h, temb, ctx)?;
        }
        ctx.tap4(&self.name, &h)?;
        Ok(h)
    }

    /// Visits the quantizable layers in forward order.
    pub fn for_each_layer(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        for (j, res) in self.resnets.iter().enumerate() {
            if j > 0
                && let Some(a) = self.attentions.get(j - 1)
            {
                a.for_each_layer(f);
            }
            res.layers(f);
        }
    }

    /// Mutable [`Self::for_each_layer`].
    pub fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        let mut attns = self.attentions.iter_mut();
        for (j, res) in self.resnets.iter_mut().enumerate() {
            if j > 0
                && let Some(a) = attns.next()
            {
                a.for_each_layer_mut(f);
            }
            res.layers_mut(f);
        }
    }
}

/// An up level: `layers_per_block + 1` resnets, each on `[h ‖ skip]` with the most recent
/// unused skip tensor (each followed by a [`Transformer2DModel`] in `CrossAttnUpBlock2D`),
/// then a ×2 upsampler except at the last level.
#[derive(Module, Debug)]
pub struct UpBlock {
    /// Residual blocks.
    pub resnets: Vec<ResnetBlock2D>,
    /// Transformers after each resnet (empty for `UpBlock2D`).
    pub attentions: Vec<Transformer2DModel>,
    /// Zero or one upsampler.
    pub upsamplers: Vec<Upsample2D>,
    #[module(skip)]
    name: String,
}

impl UpBlock {
    /// Block `index` of `cfg` (`up_blocks.{index}`, deepest first; it reads the per-block
    /// lists at down index `n − 1 − index`, as diffusers reverses them).
    pub fn new(cfg: &UNet2DConditionConfig, index: usize, kind: UpKind, device: &Device) -> Self {
        let name = format!("up_blocks.{index}");
        let n = cfg.levels();
        let mirror = n - 1 - index;
        let c_out = cfg.block_out_channels[mirror];
        let layers = cfg.layers() + 1;
        let resnets = (0..layers)
            .map(|j| {
                let (main, skip) = cfg.up_resnet_channels(index, j);
                resnet(cfg, main + skip, c_out, 1.0).init(&format!("{name}.resnets.{j}"), device)
            })
            .collect();
        let attentions = match kind {
            UpKind::Up => Vec::new(),
            UpKind::CrossAttnUp => {
                let spec = cfg.transformer_spec(mirror, c_out);
                (0..layers)
                    .map(|j| {
                        Transformer2DModel::new(&format!("{name}.attentions.{j}"), &spec, device)
                    })
                    .collect()
            }
        };
        let upsamplers = if index + 1 == n {
            Vec::new()
        } else {
            vec![Upsample2D::new(
                &format!("{name}.upsamplers.0"),
                c_out,
                c_out,
                device,
            )]
        };
        Self {
            resnets,
            attentions,
            upsamplers,
            name,
        }
    }

    /// diffusers path (`up_blocks.i`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Forward pass, consuming one skip tensor per resnet from the end of `skips`. Taps the
    /// output under the block's path.
    pub fn forward(
        &self,
        x: Tensor<4>,
        temb: &Tensor<2>,
        encoder_hidden_states: &Tensor<3>,
        skips: &mut Vec<Tensor<4>>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor<4>> {
        let mut h = x;
        for (j, res) in self.resnets.iter().enumerate() {
            let skip = skips
                .pop()
                .ok_or_else(|| shape_err(&self.name, "a skip tensor per resnet", "none left"))?;
            let (hd, sd) = (h.dims(), skip.dims());
            if hd[0] != sd[0] || hd[2] != sd[2] || hd[3] != sd[3] {
                return Err(shape_err(
                    &format!("{} skip connection", res.name()),
                    format!("[{}, C, {}, {}]", hd[0], hd[2], hd[3]),
                    sd,
                ));
            }
            h = res.forward(Tensor::cat(vec![h, skip], 1), temb, ctx)?;
            if let Some(attn) = self.attentions.get(j) {
                h = attn.forward(h, encoder_hidden_states, ctx)?;
            }
        }
        for up in &self.upsamplers {
            h = up.forward(h, ctx)?;
        }
        ctx.tap4(&self.name, &h)?;
        Ok(h)
    }

    /// Visits the quantizable layers in forward order.
    pub fn for_each_layer(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        for (j, res) in self.resnets.iter().enumerate() {
            res.layers(f);
            if let Some(a) = self.attentions.get(j) {
                a.for_each_layer(f);
            }
        }
        for u in &self.upsamplers {
            u.layers(f);
        }
    }

    /// Mutable [`Self::for_each_layer`].
    pub fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        let mut attns = self.attentions.iter_mut();
        for res in &mut self.resnets {
            res.layers_mut(f);
            if let Some(a) = attns.next() {
                a.for_each_layer_mut(f);
            }
        }
        for u in &mut self.upsamplers {
            u.layers_mut(f);
        }
    }
}
