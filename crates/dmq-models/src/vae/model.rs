//! [`AutoencoderKL`]: the full VAE, its diffusers-format loading/saving, encoding to a
//! [`LatentDist`], decoding, and the latent scaling the diffusion pipelines apply.

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::config::AutoencoderKlConfig;
use super::decoder::Decoder;
use super::distribution::LatentDist;
use super::encoder::Encoder;
use crate::context::ForwardCtx;
use crate::error::{ModelError, Result, shape_err};
use crate::io;
use crate::layers::{LayerMut, LayerRef, QConv2d, QConv2dConfig};
use crate::unet::checkpoint::convert_deprecated_attention_keys;

/// diffusers' `AutoencoderKL` (the Stable Diffusion VAE). Every field is named as the
/// diffusers state-dict key, so a diffusers `vae/` directory loads 1:1 ([`crate::io`]).
///
/// - encode: `moments = quant_conv(encoder(x))` (no `quant_conv` without
///   `use_quant_conv`), then [`LatentDist::from_moments`];
/// - decode: `decoder(post_quant_conv(z))` (no `post_quant_conv` without
///   `use_post_quant_conv`);
/// - pipeline scaling (diffusers' SD / SD3 pipelines): latents `(z − shift)·s` for the
///   diffusion model, and `z = latents / s + shift` back, with `s = scaling_factor` and
///   `shift = shift_factor` (0 when `null`).
///
/// Taps: `encoder`, `decoder` (their outputs), `encoder.down_blocks.i`, `*.mid_block`,
/// `decoder.up_blocks.i` and every `*.resnets.j`, `*.attentions.0`, `*.downsamplers.0`,
/// `*.upsamplers.0` output, plus every quantizable layer by name.
///
/// # Shapes
/// - image x: `[B, in_channels, H, W]`, H and W positive multiples of `f = 2^(levels−1)`;
/// - latent z: `[B, latent_channels, H/f, W/f]`;
/// - decoded image: `[B, out_channels, h·f, w·f]` for z `[B, latent_channels, h, w]`
#[derive(Module, Debug)]
pub struct AutoencoderKL {
    /// Image → moments (`encoder`).
    pub encoder: Encoder,
    /// 1×1 conv on the `2L` moments (`quant_conv`; None without `use_quant_conv`).
    pub quant_conv: Option<QConv2d>,
    /// 1×1 conv on the latent (`post_quant_conv`; None without `use_post_quant_conv`).
    pub post_quant_conv: Option<QConv2d>,
    /// Latent → image (`decoder`).
    pub decoder: Decoder,
    #[module(skip)]
    config: AutoencoderKlConfig,
}

impl AutoencoderKlConfig {
    /// A randomly initialised [`AutoencoderKL`] of this config (validated first, so sizes
    /// are checked before any layer is allocated).
    pub fn init(&self, device: &Device) -> Result<AutoencoderKL> {
        self.validate()?;
        let l = self.latent_channels;
        Ok(AutoencoderKL {
            encoder: Encoder::new(self, device),
            quant_conv: self
                .use_quant_conv
                .then(|| QConv2dConfig::new(2 * l, 2 * l, 1).init("quant_conv", device)),
            post_quant_conv: self
                .use_post_quant_conv
                .then(|| QConv2dConfig::new(l, l, 1).init("post_quant_conv", device)),
            decoder: Decoder::new(self, device),
            config: self.clone(),
        })
    }
}

impl AutoencoderKL {
    /// Loads a diffusers VAE directory (`config.json` +
    /// `diffusion_pytorch_model.safetensors`, f32/f16/bf16), strictly: an unsupported config
    /// option is [`ModelError::Config`] naming the key; a missing, unused or misshapen tensor
    /// is [`ModelError::Checkpoint`] naming the file and the key. Deprecated attention keys
    /// (`query`, `key`, `value`, `proj_attn`) are renamed as diffusers does.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = AutoencoderKlConfig::from_dir(dir)?;
        let model = config.init(device)?;
        let (_, weights) = io::dir_files(dir);
        let bytes = io::read_file(&weights)?;
        match convert_deprecated_attention_keys(&bytes, &weights)? {
            Some(renamed) => io::load_weights_from_bytes(model, &renamed, &weights, device),
            None => io::load_weights_from_bytes(model, &bytes, &weights, device),
        }
    }

    /// Writes a diffusers VAE directory (created if needed): `config.json` and the f32
    /// weights, each written atomically.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        io::save_model_dir(self, dir, &self.config.to_json_value()?, io::WEIGHTS_FILE)
    }

    /// The model's config.
    pub fn config(&self) -> &AutoencoderKlConfig {
        &self.config
    }

    /// `scaling_factor` s (latents for the diffusion model are `(z − shift)·s`).
    pub fn scaling_factor(&self) -> f64 {
        self.config.scaling_factor
    }

    /// Sets `scaling_factor` (after training: `1 / std(z)` of the latents, Stable Diffusion's
    /// rule).
    ///
    /// # Errors
    /// [`ModelError::Config`] unless `s` is finite and positive.
    pub fn set_scaling_factor(&mut self, s: f64) -> Result<()> {
        if !(s.is_finite() && s > 0.0) {
            return Err(ModelError::Config(format!(
                "scaling_factor must be finite and > 0, got {s}"
            )));
        }
        self.config.scaling_factor = s;
        Ok(())
    }

    /// `shift_factor` (0 when the config has `null`).
    pub fn shift_factor(&self) -> f64 {
        self.config.shift()
    }

    /// Spatial factor between image and latent, `f = 2^(levels−1)`.
    pub fn downsample_factor(&self) -> usize {
        self.config.downsample_factor()
    }

    /// The posterior `q(z | x)`: `LatentDist::from_moments(quant_conv(encoder(x)))`.
    /// A wrong channel count, an empty batch or a size that is not a positive multiple of
    /// `f` is a [`ModelError::Shape`].
    ///
    /// # Shapes
    /// - x: `[B, in_channels, H, W]`; the distribution's tensors: `[B, L, H/f, W/f]`
    pub fn encode(&self, x: Tensor<4>, ctx: &ForwardCtx<'_>) -> Result<LatentDist> {
        let [b, c, h, w] = x.dims();
        let f = self.downsample_factor();
        let cin = self.config.in_channels;
        if b == 0 || c != cin || h == 0 || w == 0 || !h.is_multiple_of(f) || !w.is_multiple_of(f) {
            return Err(shape_err(
                "AutoencoderKL::encode input",
                format!("[B ≥ 1, {cin}, H, W] with H, W positive multiples of {f}"),
                [b, c, h, w],
            ));
        }
        let mut moments = self.encoder.forward(x, ctx)?;
        if let Some(q) = &self.quant_conv {
            moments = q.forward(moments, ctx)?;
        }
        LatentDist::from_moments(moments)
    }

    /// `decoder(post_quant_conv(z))` on an unscaled latent (see [`Self::image_from_latents`]
    /// for the diffusion model's scaled latents). A wrong channel count or an empty input is
    /// a [`ModelError::Shape`].
    ///
    /// # Shapes
    /// - z: `[B, latent_channels, h, w]`; output: `[B, out_channels, h·f, w·f]`
    pub fn decode(&self, z: Tensor<4>, ctx: &ForwardCtx<'_>) -> Result<Tensor<4>> {
        let [b, c, h, w] = z.dims();
        let l = self.config.latent_channels;
        if b == 0 || c != l || h == 0 || w == 0 {
            return Err(shape_err(
                "AutoencoderKL::decode input",
                format!("[B ≥ 1, {l}, h ≥ 1, w ≥ 1]"),
                [b, c, h, w],
            ));
        }
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(z, ctx)?,
            None => z,
        };
        self.decoder.forward(z, ctx)
    }

    /// diffusers' `AutoencoderKL.forward`: encode, take the posterior mode (or, with
    /// `noise`, the draw `mean + std·noise`), decode.
    ///
    /// # Shapes
    /// - x: `[B, in_channels, H, W]`; noise: `[B, L, H/f, W/f]`; output:
    ///   `[B, out_channels, H, W]`
    pub fn reconstruct(
        &self,
        x: Tensor<4>,
        noise: Option<Tensor<4>>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor<4>> {
        let dist = self.encode(x, ctx)?;
        let z = match noise {
            Some(n) => dist.sample(n)?,
            None => dist.mode(),
        };
        self.decode(z, ctx)
    }

    /// The diffusion model's latents of an image: `(z − shift)·s` with `z` the posterior
    /// mean, or the draw `mean + std·noise` when `noise` is given (as the SD / SD3 pipelines
    /// scale `vae.encode(x).latent_dist.sample()`).
    ///
    /// # Shapes
    /// - x: `[B, in_channels, H, W]`; noise and output: `[B, L, H/f, W/f]`
    pub fn latents_from_image(
        &self,
        x: Tensor<4>,
        noise: Option<Tensor<4>>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor<4>> {
        let dist = self.encode(x, ctx)?;
        let z = match noise {
            Some(n) => dist.sample(n)?,
            None => dist.mode(),
        };
        Ok(self.scale_latents(z))
    }

    /// The image of diffusion-model latents: `decode(latents / s + shift)` (the pipelines'
    /// final step).
    ///
    /// # Shapes
    /// - latents: `[B, L, h, w]`; output: `[B, out_channels, h·f, w·f]`
    pub fn image_from_latents(
        &self,
        latents: Tensor<4>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor<4>> {
        let z = self.unscale_latents(latents);
        self.decode(z, ctx)
    }

    /// `(z − shift)·s`: VAE latent → diffusion-model latent.
    pub fn scale_latents(&self, z: Tensor<4>) -> Tensor<4> {
        let shift = self.shift_factor();
        let z = if shift != 0.0 { z - shift } else { z };
        z * self.scaling_factor()
    }

    /// `latents / s + shift`: diffusion-model latent → VAE latent.
    pub fn unscale_latents(&self, latents: Tensor<4>) -> Tensor<4> {
        let shift = self.shift_factor();
        let z = latents / self.scaling_factor();
        if shift != 0.0 { z + shift } else { z }
    }

    /// Visits the quantizable layers (convs, attention linears and products) in forward
    /// order: the encoder, `quant_conv`, `post_quant_conv`, the decoder.
    pub fn for_each_layer(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        self.encoder.layers(f);
        if let Some(q) = &self.quant_conv {
            f(LayerRef::Conv2d(q));
        }
        if let Some(p) = &self.post_quant_conv {
            f(LayerRef::Conv2d(p));
        }
        self.decoder.layers(f);
    }

    /// Visits the quantizable layers mutably, in the order of [`Self::for_each_layer`].
    pub fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        self.encoder.layers_mut(f);
        if let Some(q) = &mut self.quant_conv {
            f(LayerMut::Conv2d(q));
        }
        if let Some(p) = &mut self.post_quant_conv {
            f(LayerMut::Conv2d(p));
        }
        self.decoder.layers_mut(f);
    }
}
