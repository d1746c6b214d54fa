//! The UNet's blocks: [`DownBlock`] (diffusers `DownBlock2D` / `AttnDownBlock2D`),
//! [`MidBlock`] (`UNetMidBlock2D`) and [`UpBlock`] (`UpBlock2D` / `AttnUpBlock2D`). A block
//! without attention has an empty `attentions` list, so the field names (and checkpoint keys)
//! are diffusers' in both variants.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::attention::{Attention, AttentionConfig};
use super::config::{DownBlockType, UNetConfig, UpBlockType};
use super::resnet::{ResnetBlock2D, ResnetBlock2DConfig};
use super::sampling::{Downsample2D, Upsample2D};
use crate::context::ForwardCtx;
use crate::error::{Result, shape_err};
use crate::layers::{LayerMut, LayerRef};

fn resnet(cfg: &UNetConfig, c_in: usize, c_out: usize, scale: f64) -> ResnetBlock2DConfig {
    ResnetBlock2DConfig::new(c_in, c_out, cfg.time_embed_dim(), cfg.groups())
        .with_eps(cfg.norm_eps)
        .with_output_scale_factor(scale)
}

fn attention(cfg: &UNetConfig, channels: usize, groups: usize, scale: f64) -> AttentionConfig {
    let (heads, head_dim) = cfg.attention_heads(channels);
    AttentionConfig::new(channels, heads, head_dim, groups)
        .with_eps(cfg.norm_eps)
        .with_rescale_output_factor(scale)
}

/// A down level: `layers_per_block` resnets (each followed by an attention in
/// `AttnDownBlock2D`), then a stride-2 downsampler except at the last level.
///
/// Every resnet/attention output and the downsampler output is a skip connection for the up
/// path.
#[derive(Module, Debug)]
pub struct DownBlock {
    /// Residual blocks.
    pub resnets: Vec<ResnetBlock2D>,
    /// Attentions after each resnet (empty for `DownBlock2D`).
    pub attentions: Vec<Attention>,
    /// Zero or one downsampler.
    pub downsamplers: Vec<Downsample2D>,
    #[module(skip)]
    name: String,
}

impl DownBlock {
    /// Block `index` of `cfg` (`down_blocks.{index}`).
    pub fn new(cfg: &UNetConfig, index: usize, kind: DownBlockType, device: &Device) -> Self {
        let name = format!("down_blocks.{index}");
        let ch = &cfg.block_out_channels;
        let c_out = ch[index];
        let c_in = if index == 0 { ch[0] } else { ch[index - 1] };
        let is_final = index + 1 == ch.len();
        let resnets = (0..cfg.layers_per_block)
            .map(|j| {
                resnet(cfg, if j == 0 { c_in } else { c_out }, c_out, 1.0)
                    .init(&format!("{name}.resnets.{j}"), device)
            })
            .collect();
        let attentions = match kind {
            DownBlockType::Down => Vec::new(),
            DownBlockType::AttnDown => (0..cfg.layers_per_block)
                .map(|j| {
                    attention(cfg, c_out, cfg.groups(), 1.0)
                        .init(&format!("{name}.attentions.{j}"), device)
                })
                .collect(),
        };
        let downsamplers = if is_final {
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

    /// Forward pass: the block output and its skip tensors (appended to `skips`). Taps the
    /// output under the block's path.
    pub fn forward(
        &self,
        x: Tensor<4>,
        temb: &Tensor<2>,
        skips: &mut Vec<Tensor<4>>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor<4>> {
        let mut h = x;
        for (j, res) in self.resnets.iter().enumerate() {
            h = res.forward(h, temb, ctx)?;
            if let Some(attn) = self.attentions.get(j) {
                h = attn.forward(h, ctx)?;
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

    pub(crate) fn layers(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        for (j, res) in self.resnets.iter().enumerate() {
            res.layers(f);
            if let Some(a) = self.attentions.get(j) {
                a.layers(f);
            }
        }
        for d in &self.downsamplers {
            d.layers(f);
        }
    }

    pub(crate) fn layers_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        let mut attns = self.attentions.iter_mut();
        for res in &mut self.resnets {
            res.layers_mut(f);
            if let Some(a) = attns.next() {
                a.layers_mut(f);
            }
        }
        for d in &mut self.downsamplers {
            d.layers_mut(f);
        }
    }
}

/// The bottleneck: `resnets.0`, then per layer an attention (if `add_attention`) and the next
/// resnet; resnets and attentions divide their output by `mid_block_scale_factor`.
#[derive(Module, Debug)]
pub struct MidBlock {
    /// Two residual blocks.
    pub resnets: Vec<ResnetBlock2D>,
    /// One attention between them (empty without `add_attention`).
    pub attentions: Vec<Attention>,
    #[module(skip)]
    name: String,
}

impl MidBlock {
    /// diffusers path (`mid_block`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The mid block of `cfg` (`mid_block`).
    pub fn new(cfg: &UNetConfig, device: &Device) -> Self {
        let name = "mid_block".to_string();
        let c = *cfg.block_out_channels.last().expect("validated: non-empty");
        let s = cfg.mid_block_scale_factor;
        let resnets = (0..2)
            .map(|j| resnet(cfg, c, c, s).init(&format!("{name}.resnets.{j}"), device))
            .collect();
        let attentions = if cfg.add_attention {
            let groups = cfg.attn_norm_num_groups.unwrap_or(cfg.groups());
            vec![attention(cfg, c, groups, s).init(&format!("{name}.attentions.0"), device)]
        } else {
            Vec::new()
        };
        Self {
            resnets,
            attentions,
            name,
        }
    }

    /// Forward pass; taps the output as `mid_block`.
    pub fn forward(
        &self,
        x: Tensor<4>,
        temb: &Tensor<2>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor<4>> {
        let (first, rest) = self
            .resnets
            .split_first()
            .ok_or_else(|| shape_err(&self.name, "at least one resnet", 0))?;
        let mut h = first.forward(x, temb, ctx)?;
        for (j, res) in rest.iter().enumerate() {
            if let Some(attn) = self.attentions.get(j) {
                h = attn.forward(h, ctx)?;
            }
            h = res.forward(h, temb, ctx)?;
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

/// An up level: `layers_per_block + 1` resnets, each on the concatenation of the running
/// feature map and the most recent unused skip tensor (each followed by an attention in
/// `AttnUpBlock2D`), then a ×2 upsampler except at the last level.
#[derive(Module, Debug)]
pub struct UpBlock {
    /// Residual blocks.
    pub resnets: Vec<ResnetBlock2D>,
    /// Attentions after each resnet (empty for `UpBlock2D`).
    pub attentions: Vec<Attention>,
    /// Zero or one upsampler.
    pub upsamplers: Vec<Upsample2D>,
    #[module(skip)]
    name: String,
}

/// Channels `(main, skip)` of the input `[h ‖ skip]` of resnet `j` of up block `index`
/// (diffusers `UpBlock2D`: the last resnet reads the skip of the level above).
pub(crate) fn up_resnet_channels(cfg: &UNetConfig, index: usize, j: usize) -> (usize, usize) {
    let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
    let n = rev.len();
    let prev_out = if index == 0 { rev[0] } else { rev[index - 1] };
    let c_out = rev[index];
    let c_in = rev[(index + 1).min(n - 1)];
    let layers = cfg.layers_per_block + 1;
    let skip = if j + 1 == layers { c_in } else { c_out };
    let main = if j == 0 { prev_out } else { c_out };
    (main, skip)
}

impl UpBlock {
    /// Block `index` of `cfg` (`up_blocks.{index}`, deepest first).
    pub fn new(cfg: &UNetConfig, index: usize, kind: UpBlockType, device: &Device) -> Self {
        let name = format!("up_blocks.{index}");
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let n = rev.len();
        let c_out = rev[index];
        let layers = cfg.layers_per_block + 1;
        let is_final = index + 1 == n;
        let resnets = (0..layers)
            .map(|j| {
                let (res_in, skip) = up_resnet_channels(cfg, index, j);
                resnet(cfg, res_in + skip, c_out, 1.0).init(&format!("{name}.resnets.{j}"), device)
            })
            .collect();
        let attentions = match kind {
            UpBlockType::Up => Vec::new(),
            UpBlockType::AttnUp => (0..layers)
                .map(|j| {
                    attention(cfg, c_out, cfg.groups(), 1.0)
                        .init(&format!("{name}.attentions.{j}"), device)
                })
                .collect(),
        };
        let upsamplers = if is_final {
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
                h = attn.forward(h, ctx)?;
            }
        }
        for up in &self.upsamplers {
            h = up.forward(h, ctx)?;
        }
        ctx.tap4(&self.name, &h)?;
        Ok(h)
    }

    pub(crate) fn layers(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        for (j, res) in self.resnets.iter().enumerate() {
            res.layers(f);
            if let Some(a) = self.attentions.get(j) {
                a.layers(f);
            }
        }
        for u in &self.upsamplers {
            u.layers(f);
        }
    }

    pub(crate) fn layers_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        let mut attns = self.attentions.iter_mut();
        for res in &mut self.resnets {
            res.layers_mut(f);
            if let Some(a) = attns.next() {
                a.layers_mut(f);
            }
        }
        for u in &mut self.upsamplers {
            u.layers_mut(f);
        }
    }
}
