//! [`DiT`]: diffusers' `DiTTransformer2DModel` (patchify → adaLN-Zero transformer blocks →
//! modulated output projection → unpatchify).

use std::path::Path;

use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Int, Tensor};

use super::block::{BasicTransformerBlock, BasicTransformerBlockConfig};
use super::config::DiTConfig;
use super::patch_embed::{PatchEmbed, PatchEmbedConfig};
use crate::conditioning::{Conditioning, class_labels};
use crate::context::ForwardCtx;
use crate::denoiser::{Denoiser, DenoiserInfo};
use crate::error::{ModelError, Result, shape_err};
use crate::io;
use crate::layers::{LayerMut, LayerNorm, LayerNormConfig, LayerRef, QLinear, QLinearConfig};

/// A class-conditional diffusion transformer in diffusers' `DiTTransformer2DModel` layout.
///
/// ```text
/// h  = pos_embed(x)                                   patchify + 2-D sin-cos positions
/// h  = transformer_blocks[i](h, t, y)                 i = 0..num_layers
/// c  = transformer_blocks[0].norm1.emb(t, y)          (diffusers reuses block 0's embedding)
/// shift, scale = chunk₂(proj_out_1(silu(c)))
/// h  = proj_out_2(norm_out(h)·(1 + scale) + shift)    norm_out: LayerNorm, no affine, ε 1e-6
/// out = unpatchify(h)                                 [B, out_channels, H, W]
/// ```
///
/// Field names are the diffusers state-dict keys, so [`crate::io`] maps checkpoints one to
/// one. Every linear/conv is a [`QLinear`]/[`QConv2d`](crate::layers::QConv2d) named by its
/// diffusers path, and each attention has the matmuls `transformer_blocks.i.attn1.qk` and
/// `.sv`. Block outputs can be tapped as `transformer_blocks.i` ([`TapTensor::R3`](crate::TapTensor::R3),
/// `[B, N, D]`).
///
/// Class labels are required: label `num_classes` (= `num_embeds_ada_norm`) is the null class
/// used for unconditional / classifier-free-guidance predictions.
///
/// Inputs of another size than `sample_size` (multiples of the patch size) get positions
/// rescaled to the training grid exactly as diffusers' `PatchEmbed` does; non-square inputs
/// (which diffusers' own unpatchify cannot handle) are unpatchified on their real grid.
#[derive(Module, Debug)]
pub struct DiT {
    /// Patch embedding (`pos_embed.proj` + positions).
    pub pos_embed: PatchEmbed,
    /// The transformer blocks.
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    /// Final LayerNorm (no parameters).
    pub norm_out: LayerNorm,
    /// Final modulation `D → 2·D`.
    pub proj_out_1: QLinear,
    /// Output projection `D → p²·out_channels`.
    pub proj_out_2: QLinear,
    #[module(skip)]
    config: DiTConfig,
}

impl DiT {
    /// A randomly initialised model (PyTorch default init, as a freshly constructed
    /// diffusers model; the class table is N(0, 1)). Validates the config.
    pub fn new(config: &DiTConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        let d = config.inner_dim();
        let p = config.patch_size;
        let block = BasicTransformerBlockConfig::new(
            d,
            config.num_attention_heads,
            config.attention_head_dim,
            config.num_classes(),
        )
        .with_attention_bias(config.attention_bias)
        .with_dropout(config.dropout)
        .with_norm_elementwise_affine(config.norm_elementwise_affine)
        .with_norm_eps(config.norm_eps);
        Ok(Self {
            pos_embed: PatchEmbedConfig::new(config.sample_size, p, config.in_channels, d)
                .init("pos_embed", device),
            transformer_blocks: (0..config.num_layers)
                .map(|i| block.init(&format!("transformer_blocks.{i}"), device))
                .collect(),
            norm_out: LayerNormConfig::new(d)
                .with_eps(1e-6)
                .with_affine(false)
                .init(device),
            proj_out_1: QLinearConfig::new(d, 2 * d).init("proj_out_1", device),
            proj_out_2: QLinearConfig::new(d, p * p * config.out_channels())
                .init("proj_out_2", device),
            config: config.clone(),
        })
    }

    /// Loads a diffusers model directory (`config.json` +
    /// `diffusion_pytorch_model.safetensors`, f32/f16/bf16). Strict: unsupported options
    /// are [`ModelError::Config`], missing/extra/misshapen tensors [`ModelError::Checkpoint`].
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let (_, weights) = io::dir_files(dir.as_ref());
        let config = DiTConfig::from_dir(dir.as_ref())?;
        io::load_weights(Self::new(&config, device)?, &weights, device)
    }

    /// Writes `config.json` and `diffusion_pytorch_model.safetensors` (f32) into `dir`
    /// (created if needed), each file atomically. diffusers loads the result with
    /// `DiTTransformer2DModel.from_pretrained(dir)`. Quantizer state is not written.
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        io::save_model_dir(self, dir, &self.config.to_json(), io::WEIGHTS_FILE)
    }

    /// The model's config.
    pub fn config(&self) -> &DiTConfig {
        &self.config
    }

    /// DiT's training initialisation (Peebles & Xie): every adaLN modulation linear and the
    /// output projection start at zero, so each block starts as the identity and the model
    /// predicts 0. diffusers' constructor uses PyTorch's default init instead; use this before
    /// training from scratch.
    pub fn zero_init_modulation(mut self) -> Self {
        // `Param::map` takes the trainability of the new value, and a fresh zeros tensor is
        // not tracked: without `set_require_grad(true)` these layers would stay frozen at 0.
        fn zero(l: &mut QLinear) {
            l.weight = l
                .weight
                .clone()
                .map(|w| w.zeros_like())
                .set_require_grad(true);
            if let Some(b) = l.bias.take() {
                l.bias = Some(b.map(|b| b.zeros_like()).set_require_grad(true));
            }
        }
        for block in &mut self.transformer_blocks {
            zero(&mut block.norm1.linear);
        }
        zero(&mut self.proj_out_1);
        zero(&mut self.proj_out_2);
        self
    }

    /// Checks x, t and the labels, reading the labels back to verify their range.
    fn check_inputs(
        &self,
        x: &Tensor<4>,
        t: &Tensor<1>,
        class: Option<Tensor<1, Int>>,
    ) -> Result<Tensor<1, Int>> {
        let cfg = &self.config;
        let [b, c, h, w] = x.dims();
        if c != cfg.in_channels {
            return Err(shape_err(
                "DiT input",
                format!("[B, {}, H, W]", cfg.in_channels),
                [b, c, h, w],
            ));
        }
        let [bt] = t.dims();
        if bt != b {
            return Err(shape_err("DiT timesteps", format!("[{b}]"), [bt]));
        }
        let n = cfg.num_classes();
        let labels = class.ok_or_else(|| ModelError::Shape {
            context: "DiT class labels".into(),
            expected: format!(
                "[{b}] labels in 0..={n} (this DiT is class-conditional; pass the null label \
                 {n} for an unconditional prediction)"
            ),
            got: "None".into(),
        })?;
        let [bl] = labels.dims();
        if bl != b {
            return Err(shape_err("DiT class labels", format!("[{b}]"), [bl]));
        }
        let values = labels
            .clone()
            .try_into_vec_as::<i64>()
            .map_err(|e| ModelError::Config(format!("could not read the class labels: {e:?}")))?;
        if let Some(bad) = values.iter().find(|&&v| v < 0 || v > n as i64) {
            return Err(ModelError::Shape {
                context: "DiT class labels".into(),
                expected: format!("labels in 0..={n} ({n} = null class)"),
                got: format!("label {bad} in {values:?}"),
            });
        }
        Ok(labels)
    }
}

impl Denoiser for DiT {
    fn forward(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        cond: Option<Conditioning>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor<4>> {
        let labels = self.check_inputs(&x, &t, class_labels(cond, "DiT")?)?;
        let [b, _, h, w] = x.dims();
        let p = self.config.patch_size;
        let co = self.config.out_channels();
        let emb0 = &self.transformer_blocks[0].norm1.emb;
        let t_proj = emb0.time_proj.forward(t)?;

        let mut hs = self.pos_embed.forward(x, ctx)?;
        for (i, block) in self.transformer_blocks.iter().enumerate() {
            hs = block.forward(hs, t_proj.clone(), labels.clone(), ctx)?;
            if ctx.taps.is_some() {
                ctx.tap3(&format!("transformer_blocks.{i}"), &hs)?;
            }
        }

        let cond = emb0.forward(t_proj, labels, ctx)?;
        let m = self.proj_out_1.forward(silu(cond), ctx)?;
        let mut parts = m.chunk(2, 1).into_iter();
        let (shift, scale) = (parts.next().expect("chunk"), parts.next().expect("chunk"));
        let hs = self.norm_out.forward(hs)? * (scale.unsqueeze_dim::<3>(1) + 1.0)
            + shift.unsqueeze_dim::<3>(1);
        let hs = self.proj_out_2.forward(hs, ctx)?;

        let (gh, gw) = (h / p, w / p);
        Ok(hs
            .reshape([b, gh, gw, p, p, co])
            .permute([0, 5, 1, 3, 2, 4])
            .reshape([b, co, gh * p, gw * p]))
    }

    fn info(&self) -> DenoiserInfo {
        DenoiserInfo {
            in_channels: self.config.in_channels,
            sample_size: self.config.sample_size,
            num_classes: Some(self.config.num_classes()),
            cross_attention_dim: None,
            out_channels: self.config.out_channels(),
        }
    }

    fn structure(&self) -> crate::structure::Structure {
        DiT::structure(self)
    }

    fn for_each_layer(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        f(LayerRef::Conv2d(&self.pos_embed.proj));
        for block in &self.transformer_blocks {
            block.for_each_layer(f);
        }
        f(LayerRef::Linear(&self.proj_out_1));
        f(LayerRef::Linear(&self.proj_out_2));
    }

    fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        f(LayerMut::Conv2d(&mut self.pos_embed.proj));
        for block in &mut self.transformer_blocks {
            block.for_each_layer_mut(f);
        }
        f(LayerMut::Linear(&mut self.proj_out_1));
        f(LayerMut::Linear(&mut self.proj_out_2));
    }
}
