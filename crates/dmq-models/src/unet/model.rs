//! [`UNet2DModel`]: the full network, its diffusers-format loading/saving and its
//! [`Denoiser`] implementation.

use std::path::Path;

use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Int, Tensor};

use super::blocks::{DownBlock, MidBlock, UpBlock};
use super::checkpoint::convert_deprecated_attention_keys;
use super::config::UNetConfig;
use super::embedding::{ClassEmbedding, TimestepEmbedding, timestep_embedding};
use crate::conditioning::{Conditioning, class_labels};
use crate::context::ForwardCtx;
use crate::denoiser::{Denoiser, DenoiserInfo};
use crate::error::{ModelError, Result, shape_err};
use crate::io;
use crate::layers::{GroupNorm, GroupNormConfig, LayerMut, LayerRef, QConv2d, QConv2dConfig};

/// diffusers' `UNet2DModel` (DDPM-style UNet): every field is named as the diffusers
/// state-dict key, so a diffusers checkpoint loads 1:1 ([`crate::io`]).
///
/// Forward pass (diffusers `UNet2DModel.forward`):
/// 1. `x ← 2x − 1` if `center_input_sample`;
/// 2. `emb = time_embedding(sinusoid(t))` (+ `class_embedding[class]`);
/// 3. `h = conv_in(x)`; down blocks (collecting skips), mid block, up blocks (consuming them);
/// 4. `conv_out(silu(conv_norm_out(h)))`.
///
/// Taps: `down_blocks.i`, `mid_block`, `up_blocks.i` (block outputs) and every
/// `*.resnets.j`, `*.attentions.j`, `*.downsamplers.0`, `*.upsamplers.0` output.
///
/// # Shapes
/// - x: `[B, in_channels, H, W]` with H, W divisible by `2^(levels−1)`; t: `[B]` or `[1]`;
///   class: `[B]`; output: `[B, out_channels, H, W]`
#[derive(Module, Debug)]
pub struct UNet2DModel {
    /// Input 3×3 conv.
    pub conv_in: QConv2d,
    /// Time MLP on the sinusoid.
    pub time_embedding: TimestepEmbedding,
    /// Learned class table (`num_class_embeds`), added to the time embedding.
    pub class_embedding: Option<ClassEmbedding>,
    /// Down path.
    pub down_blocks: Vec<DownBlock>,
    /// Bottleneck (absent with `mid_block_type: null`).
    pub mid_block: Option<MidBlock>,
    /// Up path (deepest first).
    pub up_blocks: Vec<UpBlock>,
    /// Output GroupNorm.
    pub conv_norm_out: GroupNorm,
    /// Output 3×3 conv.
    pub conv_out: QConv2d,
    #[module(skip)]
    config: UNetConfig,
}

impl UNet2DModel {
    /// A randomly initialised model of `config` (validated first).
    pub fn new(config: &UNetConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        let down_types = config.down_types()?;
        let up_types = config.up_types()?;
        let ch = &config.block_out_channels;
        let c0 = ch[0];
        let temb = config.time_embed_dim();
        let conv3 = |cin, cout, name: &str| {
            QConv2dConfig::new(cin, cout, 3)
                .with_padding(1)
                .init(name, device)
        };
        Ok(Self {
            conv_in: conv3(config.in_channels, c0, "conv_in"),
            time_embedding: TimestepEmbedding::new("time_embedding", c0, temb, device),
            class_embedding: config
                .num_class_embeds
                .map(|n| ClassEmbedding::new(n, temb, device)),
            down_blocks: down_types
                .iter()
                .enumerate()
                .map(|(i, &k)| DownBlock::new(config, i, k, device))
                .collect(),
            mid_block: config
                .mid_block_type
                .is_some()
                .then(|| MidBlock::new(config, device)),
            up_blocks: up_types
                .iter()
                .enumerate()
                .map(|(i, &k)| UpBlock::new(config, i, k, device))
                .collect(),
            conv_norm_out: GroupNormConfig::new(config.groups(), c0)
                .with_eps(config.norm_eps)
                .init(device),
            conv_out: conv3(c0, config.out_channels, "conv_out"),
            config: config.clone(),
        })
    }

    /// The model's config.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Loads a diffusers model directory (`config.json` +
    /// `diffusion_pytorch_model.safetensors`, f32/f16/bf16), strictly: an unsupported config
    /// option is [`ModelError::Config`], a missing, unused or misshapen tensor is
    /// [`ModelError::Checkpoint`]. Deprecated attention keys (`query`, `key`, `value`,
    /// `proj_attn`) are renamed as diffusers does ([`super::checkpoint`]).
    pub fn from_pretrained(dir: &Path, device: &Device) -> Result<Self> {
        let config = UNetConfig::from_dir(dir)?;
        let model = Self::new(&config, device)?;
        let (_, weights) = io::dir_files(dir);
        let bytes = io::read_file(&weights)?;
        match convert_deprecated_attention_keys(&bytes, &weights)? {
            Some(renamed) => io::load_weights_from_bytes(model, &renamed, &weights, device),
            None => io::load_weights_from_bytes(model, &bytes, &weights, device),
        }
    }

    /// Writes a diffusers model directory (created if needed): `config.json` and the f32
    /// weights, each written atomically.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        io::save_model_dir(self, dir, &self.config.to_json_value()?, io::WEIGHTS_FILE)
    }

    /// Timesteps as `[B]`: a length-1 `t` is broadcast over the batch (as diffusers).
    fn batch_timesteps(t: Tensor<1>, batch: usize) -> Result<Tensor<1>> {
        let [n] = t.dims();
        if n == batch {
            Ok(t)
        } else if n == 1 {
            Ok(t.expand([batch]))
        } else {
            Err(shape_err(
                "UNet2DModel timesteps",
                format!("[{batch}] or [1]"),
                [n],
            ))
        }
    }

    /// The conditioning vector `time_embedding(sinusoid(t)) (+ class_embedding[class])`.
    ///
    /// # Shapes
    /// - t: `[B]`; class: `[B]`; output: `[B, time_embed_dim]`
    pub fn embed(
        &self,
        t: Tensor<1>,
        class: Option<Tensor<1, Int>>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor<2>> {
        let c = &self.config;
        let [b] = t.dims();
        let feats = timestep_embedding(t, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift);
        let mut emb = self.time_embedding.forward(feats, ctx)?;
        match (&self.class_embedding, class) {
            (Some(table), Some(labels)) => {
                let [n] = labels.dims();
                if n != b {
                    return Err(shape_err("UNet2DModel class labels", format!("[{b}]"), [n]));
                }
                emb = emb + table.forward(labels)?;
            }
            (Some(_), None) => {
                return Err(ModelError::Config(
                    "class labels are required: the model has a class embedding (num_class_embeds)"
                        .into(),
                ));
            }
            (None, Some(_)) => {
                return Err(ModelError::Config(
                    "class labels given, but the model has no class embedding (num_class_embeds is null)"
                        .into(),
                ));
            }
            (None, None) => {}
        }
        Ok(emb)
    }
}

impl Denoiser for UNet2DModel {
    fn forward(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        cond: Option<Conditioning>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor<4>> {
        let class = class_labels(cond, "UNet2DModel")?;
        let c = &self.config;
        let [b, cin, h, w] = x.dims();
        let levels = c.block_out_channels.len();
        let factor = 1usize << (levels - 1);
        if cin != c.in_channels
            || !h.is_multiple_of(factor)
            || !w.is_multiple_of(factor)
            || h == 0
            || w == 0
        {
            return Err(shape_err(
                "UNet2DModel input",
                format!(
                    "[B, {}, H, W] with H, W positive multiples of {factor}",
                    c.in_channels
                ),
                [b, cin, h, w],
            ));
        }
        let t = Self::batch_timesteps(t, b)?;
        let emb = self.embed(t, class, ctx)?;
        let x = if c.center_input_sample {
            x * 2.0 - 1.0
        } else {
            x
        };

        let mut h = self.conv_in.forward(x, ctx)?;
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            h = block.forward(h, &emb, &mut skips, ctx)?;
        }
        if let Some(mid) = &self.mid_block {
            h = mid.forward(h, &emb, ctx)?;
        }
        for block in &self.up_blocks {
            h = block.forward(h, &emb, &mut skips, ctx)?;
        }
        let h = silu(self.conv_norm_out.forward(h)?);
        self.conv_out.forward(h, ctx)
    }

    /// `num_classes` is `num_class_embeds`. A diffusers UNet has no reserved null label: every
    /// label must lie in `0..num_class_embeds` (a model trained for classifier-free guidance
    /// reserves one of its rows itself).
    fn info(&self) -> DenoiserInfo {
        DenoiserInfo {
            in_channels: self.config.in_channels,
            sample_size: self.config.sample_size(),
            num_classes: self.config.num_class_embeds,
            cross_attention_dim: None,
            out_channels: self.config.out_channels,
        }
    }

    fn structure(&self) -> crate::structure::Structure {
        UNet2DModel::structure(self)
    }

    fn for_each_layer(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        f(LayerRef::Linear(&self.time_embedding.linear_1));
        f(LayerRef::Linear(&self.time_embedding.linear_2));
        f(LayerRef::Conv2d(&self.conv_in));
        for b in &self.down_blocks {
            b.layers(f);
        }
        if let Some(m) = &self.mid_block {
            m.layers(f);
        }
        for b in &self.up_blocks {
            b.layers(f);
        }
        f(LayerRef::Conv2d(&self.conv_out));
    }

    fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        f(LayerMut::Linear(&mut self.time_embedding.linear_1));
        f(LayerMut::Linear(&mut self.time_embedding.linear_2));
        f(LayerMut::Conv2d(&mut self.conv_in));
        for b in &mut self.down_blocks {
            b.layers_mut(f);
        }
        if let Some(m) = &mut self.mid_block {
            m.layers_mut(f);
        }
        for b in &mut self.up_blocks {
            b.layers_mut(f);
        }
        f(LayerMut::Conv2d(&mut self.conv_out));
    }
}
