//! [`UNet2DConditionModel`]: the full text-conditional network, its diffusers-format
//! loading/saving, forward pass and layer inventory.

use std::path::Path;

use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use super::blocks::{DownBlock, MidBlock, UpBlock};
use super::config::UNet2DConditionConfig;
use crate::conditioning::Conditioning;
use crate::context::ForwardCtx;
use crate::denoiser::{Denoiser, DenoiserInfo};
use crate::error::{ModelError, Result, shape_err};
use crate::io;
use crate::layers::{GroupNorm, GroupNormConfig, LayerMut, LayerRef, QConv2d, QConv2dConfig};
use crate::structure::Structure;
use crate::unet::{TimestepEmbedding, timestep_embedding};

/// diffusers' `UNet2DConditionModel` in the Stable Diffusion 1.x layout: every field is
/// named as the diffusers state-dict key, so a diffusers checkpoint loads 1:1
/// ([`crate::io`]).
///
/// Forward pass (diffusers `UNet2DConditionModel.forward`, no masks, no extra residuals):
/// 1. `x ← 2x − 1` if `center_input_sample`;
/// 2. `emb = time_embedding(sinusoid(t))`;
/// 3. `h = conv_in(x)`; down blocks (collecting skips), mid block, up blocks (consuming
///    them); every transformer cross-attends to `encoder_hidden_states`;
/// 4. `conv_out(silu(conv_norm_out(h)))`.
///
/// Taps (as [`crate::unet::UNet2DModel`]): `down_blocks.i`, `mid_block`, `up_blocks.i`
/// (block outputs) and every `*.resnets.j`, `*.attentions.j` (transformer outputs),
/// `*.downsamplers.0`, `*.upsamplers.0` output, plus each
/// `*.attentions.j.transformer_blocks.k` (tokens `[B, H·W, D]`).
///
/// # Shapes
/// - x: `[B, in_channels, H, W]` with H, W positive multiples of `2^(levels−1)`;
///   t: `[B]` or `[1]`; encoder_hidden_states: `[B, L, cross_attention_dim]`, L ≥ 1;
///   output: `[B, out_channels, H, W]`
#[derive(Module, Debug)]
pub struct UNet2DConditionModel {
    /// Input conv (`conv_in_kernel`).
    pub conv_in: QConv2d,
    /// Time MLP on the sinusoid.
    pub time_embedding: TimestepEmbedding,
    /// Down path.
    pub down_blocks: Vec<DownBlock>,
    /// Bottleneck.
    pub mid_block: MidBlock,
    /// Up path (deepest first).
    pub up_blocks: Vec<UpBlock>,
    /// Output GroupNorm.
    pub conv_norm_out: GroupNorm,
    /// Output conv (`conv_out_kernel`).
    pub conv_out: QConv2d,
    #[module(skip)]
    config: UNet2DConditionConfig,
}

impl UNet2DConditionConfig {
    /// A randomly initialised model of this config (PyTorch's default init; validated
    /// first, so an unsupported or oversized config allocates nothing).
    pub fn init(&self, device: &Device) -> Result<UNet2DConditionModel> {
        self.validate()?;
        let down = self.down_kinds()?;
        let up = self.up_kinds()?;
        let c0 = self.block_out_channels[0];
        let conv = |cin, cout, k: usize, name: &str| {
            QConv2dConfig::new(cin, cout, k)
                .with_padding((k - 1) / 2)
                .init(name, device)
        };
        Ok(UNet2DConditionModel {
            conv_in: conv(self.in_channels, c0, self.conv_in_kernel, "conv_in"),
            time_embedding: TimestepEmbedding::new(
                "time_embedding",
                c0,
                self.time_embed_dim(),
                device,
            ),
            down_blocks: down
                .iter()
                .enumerate()
                .map(|(i, &k)| DownBlock::new(self, i, k, device))
                .collect(),
            mid_block: MidBlock::new(self, device),
            up_blocks: up
                .iter()
                .enumerate()
                .map(|(i, &k)| UpBlock::new(self, i, k, device))
                .collect(),
            conv_norm_out: GroupNormConfig::new(self.groups(), c0)
                .with_eps(self.norm_eps)
                .init(device),
            conv_out: conv(c0, self.out_channels, self.conv_out_kernel, "conv_out"),
            config: self.clone(),
        })
    }
}

impl UNet2DConditionModel {
    /// The model's config.
    pub fn config(&self) -> &UNet2DConditionConfig {
        &self.config
    }

    /// Loads a diffusers model directory (`config.json` +
    /// `diffusion_pytorch_model.safetensors`, f32/f16/bf16), strictly: an unsupported config
    /// option is [`ModelError::Config`] (before any weight is read), a missing, unused or
    /// misshapen tensor is [`ModelError::Checkpoint`] naming the key.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = UNet2DConditionConfig::from_dir(dir)?;
        let (_, weights) = io::dir_files(dir);
        io::load_weights(config.init(device)?, &weights, device)
    }

    /// Writes a diffusers model directory (created if needed): `config.json` and the f32
    /// weights, each written atomically. Quantizer state is not written.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        io::save_model_dir(self, dir, &self.config.to_json_value()?, io::WEIGHTS_FILE)
    }

    /// The time embedding `time_embedding(sinusoid(t))`.
    ///
    /// # Shapes
    /// - t: `[B]`; output: `[B, time_embed_dim]`
    pub fn embed(&self, t: Tensor<1>, ctx: &ForwardCtx<'_>) -> Result<Tensor<2>> {
        let c = &self.config;
        let feats = timestep_embedding(t, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift);
        self.time_embedding.forward(feats, ctx)
    }

    /// Checks the input shapes and returns the timesteps as `[B]` (a length-1 `t` is
    /// broadcast over the batch, as diffusers does).
    fn check_inputs(
        &self,
        x: &Tensor<4>,
        t: Tensor<1>,
        encoder_hidden_states: &Tensor<3>,
    ) -> Result<Tensor<1>> {
        let c = &self.config;
        let [b, cin, h, w] = x.dims();
        let factor = 1usize << (c.levels() - 1);
        if cin != c.in_channels
            || b == 0
            || h == 0
            || w == 0
            || !h.is_multiple_of(factor)
            || !w.is_multiple_of(factor)
        {
            return Err(shape_err(
                "UNet2DConditionModel input",
                format!(
                    "[B ≥ 1, {}, H, W] with H, W positive multiples of {factor}",
                    c.in_channels
                ),
                [b, cin, h, w],
            ));
        }
        let [be, l, d] = encoder_hidden_states.dims();
        if be != b || l == 0 || d != c.cross_dim() {
            return Err(shape_err(
                "UNet2DConditionModel encoder_hidden_states",
                format!("[{b}, L ≥ 1, {}]", c.cross_dim()),
                [be, l, d],
            ));
        }
        match t.dims() {
            [n] if n == b => Ok(t),
            [1] => Ok(t.expand([b])),
            [n] => Err(shape_err(
                "UNet2DConditionModel timesteps",
                format!("[{b}] or [1]"),
                [n],
            )),
        }
    }

    /// Raw model output (ε for Stable Diffusion) for `x_t` at timesteps `t`, conditioned on
    /// `encoder_hidden_states` (the text encoder's last hidden states).
    ///
    /// # Shapes
    /// - x: `[B, in_channels, H, W]`; t: `[B]` or `[1]`;
    ///   encoder_hidden_states: `[B, L, cross_attention_dim]`
    /// - output: `[B, out_channels, H, W]`
    pub fn forward(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        encoder_hidden_states: Tensor<3>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor<4>> {
        let t = self.check_inputs(&x, t, &encoder_hidden_states)?;
        let ehs = &encoder_hidden_states;
        let emb = self.embed(t, ctx)?;
        let x = if self.config.center_input_sample {
            x * 2.0 - 1.0
        } else {
            x
        };
        let mut h = self.conv_in.forward(x, ctx)?;
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            h = block.forward(h, &emb, ehs, &mut skips, ctx)?;
        }
        h = self.mid_block.forward(h, &emb, ehs, ctx)?;
        for block in &self.up_blocks {
            h = block.forward(h, &emb, ehs, &mut skips, ctx)?;
        }
        let h = silu(self.conv_norm_out.forward(h)?);
        self.conv_out.forward(h, ctx)
    }

    /// Static facts: channels, sample size; no class labels (`num_classes: None`).
    pub fn info(&self) -> DenoiserInfo {
        DenoiserInfo {
            in_channels: self.config.in_channels,
            sample_size: self.config.sample_size(),
            num_classes: None,
            out_channels: self.config.out_channels,
            cross_attention_dim: Some(self.config.cross_dim()),
        }
    }

    /// Visits every quantizable layer in forward (call) order: the time MLP, `conv_in`,
    /// the blocks, `conv_out` (as [`crate::unet::UNet2DModel`]).
    pub fn for_each_layer(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        f(LayerRef::Linear(&self.time_embedding.linear_1));
        f(LayerRef::Linear(&self.time_embedding.linear_2));
        f(LayerRef::Conv2d(&self.conv_in));
        for b in &self.down_blocks {
            b.for_each_layer(f);
        }
        self.mid_block.for_each_layer(f);
        for b in &self.up_blocks {
            b.for_each_layer(f);
        }
        f(LayerRef::Conv2d(&self.conv_out));
    }

    /// Mutable [`Self::for_each_layer`] (to attach or replace quantizers).
    pub fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        f(LayerMut::Linear(&mut self.time_embedding.linear_1));
        f(LayerMut::Linear(&mut self.time_embedding.linear_2));
        f(LayerMut::Conv2d(&mut self.conv_in));
        for b in &mut self.down_blocks {
            b.for_each_layer_mut(f);
        }
        self.mid_block.for_each_layer_mut(f);
        for b in &mut self.up_blocks {
            b.for_each_layer_mut(f);
        }
        f(LayerMut::Conv2d(&mut self.conv_out));
    }
}

/// The text-conditional UNet as a [`Denoiser`]: the conditioning must be
/// [`Conditioning::Text`] (encoder hidden states `[B, L, cross_attention_dim]`).
impl Denoiser for UNet2DConditionModel {
    fn forward(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        cond: Option<Conditioning>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor<4>> {
        match cond {
            Some(Conditioning::Text { states, .. }) => {
                UNet2DConditionModel::forward(self, x, t, states, ctx)
            }
            _ => Err(ModelError::Config(
                "UNet2DConditionModel is text-conditional: pass Conditioning::Text with the \
                 encoder hidden states"
                    .into(),
            )),
        }
    }

    fn info(&self) -> DenoiserInfo {
        UNet2DConditionModel::info(self)
    }

    fn for_each_layer(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        UNet2DConditionModel::for_each_layer(self, f)
    }

    fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        UNet2DConditionModel::for_each_layer_mut(self, f)
    }

    fn structure(&self) -> Structure {
        UNet2DConditionModel::structure(self)
    }
}
