//! [`TextToImage`]: the latent text-to-image pipeline of a diffusers pipeline directory
//! (`model_index.json` with `unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`):
//!
//! ```text
//! prompt ─ tokenizer ─ ids [B, 77] ─ text encoder ─ states [B, 77, D]  (and the empty prompt's)
//! z_T ~ N(0, I) [B, C_lat, h, w] ─ sampler + UNet with CFG on [uncond; cond] ─ z_0
//! z_0 / scaling_factor (+ shift) ─ VAE decoder ─ image [B, 3, 8h, 8w] in [-1, 1]
//! ```
//!
//! The UNet is taken as any [`Denoiser`], so the FP UNet, a quantized one (fake-quant) and
//! its integer path generate through the same code. The text encoder and the VAE run in FP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use dmq_models::clip::ClipTextModel;
use dmq_models::noise::NoiseRng;
use dmq_models::scheduler::Scheduler;
use dmq_models::unet_cond::UNet2DConditionModel;
use dmq_models::vae::AutoencoderKL;
use dmq_models::{Conditioning, Denoiser, ForwardCtx, PromptStates, StepContext};
use serde_json::Value;

use crate::component_quant::{ComponentBits, quantize_in_place};
use crate::error::{Result, file_err};
use crate::scheduler::{SamplerKind, SchedulerSpec};
use crate::tokenizer::ClipTokenizer;

/// File naming the components of a diffusers pipeline directory.
pub const MODEL_INDEX: &str = "model_index.json";

/// The components a pipeline directory must name, with the classes dmq can load.
const COMPONENTS: [(&str, &[&str]); 5] = [
    ("unet", &["UNet2DConditionModel"]),
    ("vae", &["AutoencoderKL"]),
    ("text_encoder", &["CLIPTextModel"]),
    ("tokenizer", &["CLIPTokenizer", "CLIPTokenizerFast"]),
    (
        "scheduler",
        &[
            "PNDMScheduler",
            "DDIMScheduler",
            "DDPMScheduler",
            "DPMSolverMultistepScheduler",
        ],
    ),
];

/// How [`TextToImage::generate`] samples.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Sampling steps.
    pub steps: usize,
    /// Classifier-free guidance scale (1 = conditional only; Stable Diffusion uses 7.5).
    pub guidance: f64,
    /// Seed of the initial latents (image `i` of a call uses `seed + i` for its own noise, so
    /// an image does not depend on the batch it is drawn in).
    pub seed: u64,
    /// The sampler (the pipeline's own is [`SchedulerSpec::native`]).
    pub sampler: SamplerKind,
}

/// A loaded text-to-image pipeline (module docs).
#[derive(Clone, Debug)]
pub struct TextToImage {
    /// The pipeline directory, or the `.dmq.safetensors` file it was read from.
    pub dir: PathBuf,
    /// The pipeline's `model_index.json`.
    pub model_index: Value,
    /// CLIP BPE tokenizer.
    pub tokenizer: ClipTokenizer,
    /// The tokenizer's files (name → contents), as a quantized model file carries them.
    pub tokenizer_files: BTreeMap<String, Vec<u8>>,
    /// CLIP text encoder (FP).
    pub text_encoder: ClipTextModel,
    /// The text-conditional UNet: FP from a directory, fake-quant from a quantized file
    /// (any UNet of the same architecture generates through [`Self::generate`]).
    pub unet: UNet2DConditionModel,
    /// The VAE (FP).
    pub vae: AutoencoderKL,
    /// The pipeline's scheduler config.
    pub scheduler: SchedulerSpec,
    /// Weight bits of the text encoder and the VAE (`None`: f32, the default); see
    /// [`Self::quantize_components`].
    pub component_bits: ComponentBits,
}

/// Whether `dir` is a diffusers pipeline directory (it has a `model_index.json`).
pub fn is_pipeline_dir(dir: &Path) -> bool {
    dir.join(MODEL_INDEX).is_file()
}

/// Checks that `model_index.json` (`json`, read from `index`) names every component with a
/// class dmq loads.
pub fn check_model_index(json: &Value, index: &Path) -> Result<()> {
    for (name, classes) in COMPONENTS {
        let class = json
            .get(name)
            .and_then(Value::as_array)
            .and_then(|a| a.get(1))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                file_err(
                    index,
                    name,
                    "missing: a text-to-image pipeline needs [library, class] for it",
                )
            })?;
        if !classes.contains(&class) {
            return Err(file_err(
                index,
                name,
                format!("class '{class}' is not supported ({})", classes.join(", ")),
            ));
        }
    }
    Ok(())
}

/// Checks that the text encoder's width is the UNet's `cross_attention_dim`.
pub fn check_widths(
    unet: &UNet2DConditionModel,
    text_encoder: &ClipTextModel,
    origin: &Path,
) -> Result<()> {
    let width = text_encoder.config().hidden_size;
    if unet.info().cross_attention_dim != Some(width) {
        return Err(file_err(
            origin,
            "cross_attention_dim",
            format!(
                "{:?} does not match the text encoder's hidden_size {width}",
                unet.info().cross_attention_dim
            ),
        ));
    }
    Ok(())
}

impl TextToImage {
    /// Loads every component of the pipeline directory `dir`, checking `model_index.json`
    /// first: each component present with a class dmq loads (errors name the file and the
    /// component).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let index = dir.join(MODEL_INDEX);
        let bytes =
            std::fs::read(&index).map_err(|e| file_err(&index, "model index", e.to_string()))?;
        let json: Value = serde_json::from_slice(&bytes)
            .map_err(|e| file_err(&index, "model index", format!("invalid JSON: {e}")))?;
        check_model_index(&json, &index)?;
        let unet = UNet2DConditionModel::load(&dir.join("unet"), device)?;
        let text_encoder = ClipTextModel::load(&dir.join("text_encoder"), device)?;
        check_widths(&unet, &text_encoder, &dir.join("unet").join("config.json"))?;
        let tokenizer_dir = dir.join("tokenizer");
        Ok(Self {
            dir: dir.to_path_buf(),
            model_index: json,
            tokenizer: ClipTokenizer::from_dir(&tokenizer_dir)?,
            tokenizer_files: ClipTokenizer::read_files(&tokenizer_dir)?,
            text_encoder,
            unet,
            vae: AutoencoderKL::load(&dir.join("vae"), device)?,
            scheduler: SchedulerSpec::from_dir(&dir.join("scheduler"))?,
            component_bits: ComponentBits::default(),
        })
    }

    /// Rounds the text encoder's and the VAE's weights to `bits`
    /// ([`crate::component_quant`]: per output row, symmetric, weight-only), so that
    /// calibration, sampling and [`crate::dmq_file::save_pipeline`] all see the components a
    /// file stores. A component already at some bits is refused (round once, from FP).
    pub fn quantize_components(&mut self, bits: ComponentBits, device: &Device) -> Result<()> {
        bits.validate(&self.dir)?;
        for (name, now, want) in [
            (
                "text_encoder",
                self.component_bits.text_encoder,
                bits.text_encoder,
            ),
            ("vae", self.component_bits.vae, bits.vae),
        ] {
            if let (Some(n), Some(_)) = (now, want) {
                return Err(file_err(
                    &self.dir,
                    name,
                    format!("already at {n} bits: quantize from the FP component"),
                ));
            }
        }
        self.text_encoder =
            quantize_in_place(self.text_encoder.clone(), bits.text_encoder, device)?;
        self.vae = quantize_in_place(self.vae.clone(), bits.vae, device)?;
        self.component_bits = ComponentBits {
            text_encoder: self.component_bits.text_encoder.or(bits.text_encoder),
            vae: self.component_bits.vae.or(bits.vae),
        };
        Ok(())
    }

    /// The text encoder's `last_hidden_state` of `prompts`, padded to the tokenizer's
    /// maximum length as Stable Diffusion pipelines do.
    ///
    /// # Shapes
    /// - output: `[P, L, D]` (`L` = 77 for CLIP)
    pub fn encode(&self, prompts: &[&str], device: &Device) -> Result<Tensor<3>> {
        let len = self.tokenizer.max_length();
        let ids = self.tokenizer.encode_padded(prompts, len)?;
        let flat: Vec<i64> = ids.iter().flatten().map(|&v| i64::from(v)).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [prompts.len(), len]), device);
        let out = self
            .text_encoder
            .forward(ids, &ForwardCtx::new(StepContext::single(0.0)))?;
        Ok(out.last_hidden_state)
    }

    /// The states of `prompts` and of the empty prompt, for the trajectories a method draws
    /// itself ([`crate::RunOptions::with_prompts`]).
    pub fn prompt_states(&self, prompts: &[&str], device: &Device) -> Result<PromptStates> {
        Ok(PromptStates::new(
            self.encode(prompts, device)?,
            self.encode(&[""], device)?,
        )?)
    }

    /// The conditioning of `prompts`: their states, and the empty prompt's as the
    /// unconditional embedding when `guidance` ≠ 1.
    pub fn conditioning(
        &self,
        prompts: &[&str],
        guidance: f64,
        device: &Device,
    ) -> Result<Conditioning> {
        let states = self.encode(prompts, device)?;
        let uncond = if guidance != 1.0 {
            Some(self.encode(&[""], device)?)
        } else {
            None
        };
        Ok(Conditioning::Text { states, uncond })
    }

    /// Generates one image per prompt with `unet` (this pipeline's FP UNet or a quantized
    /// one of the same architecture), from seeded initial latents.
    ///
    /// # Shapes
    /// - output: `[P, C_img, H, W]` in `[-1, 1]`
    pub fn generate<M: Denoiser + ?Sized>(
        &self,
        unet: &M,
        prompts: &[&str],
        opts: &GenerateOptions,
        device: &Device,
    ) -> Result<Tensor<4>> {
        let latents = self.initial_latents(unet, prompts.len(), opts.seed, device);
        self.generate_from(unet, prompts, latents, opts, device)
    }

    /// [`TextToImage::generate`] from given initial latents `z_T` (`[P, C_lat, h, w]`, one
    /// per prompt): the whole pipeline after the noise draw, as diffusers' `latents=`.
    pub fn generate_from<M: Denoiser + ?Sized>(
        &self,
        unet: &M,
        prompts: &[&str],
        latents: Tensor<4>,
        opts: &GenerateOptions,
        device: &Device,
    ) -> Result<Tensor<4>> {
        let sampler = self.scheduler.sampler(opts.sampler, opts.steps)?;
        self.generate_with(unet, prompts, latents, &sampler, opts, device)
    }

    /// [`TextToImage::generate`] under a given sampler (`opts.sampler` and `opts.steps` are
    /// not read): a quantized file samples over the timesteps it was calibrated on
    /// ([`crate::dmq_file::LoadedFile::sampler`]).
    pub fn generate_with_sampler<M: Denoiser + ?Sized, S: Scheduler>(
        &self,
        unet: &M,
        prompts: &[&str],
        sampler: &S,
        opts: &GenerateOptions,
        device: &Device,
    ) -> Result<Tensor<4>> {
        let latents = self.initial_latents(unet, prompts.len(), opts.seed, device);
        self.generate_with(unet, prompts, latents, sampler, opts, device)
    }

    /// Seeded `z_T`, `[n, C, h, w]`: image `i` from `seed + i`.
    fn initial_latents<M: Denoiser + ?Sized>(
        &self,
        unet: &M,
        n: usize,
        seed: u64,
        device: &Device,
    ) -> Tensor<4> {
        let info = unet.info();
        let (c, s) = (info.in_channels, info.sample_size);
        let latents: Vec<Tensor<4>> = (0..n)
            .map(|i| NoiseRng::new(seed.wrapping_add(i as u64)).tensor([1, c, s, s], device))
            .collect();
        Tensor::cat(latents, 0)
    }

    fn generate_with<M: Denoiser + ?Sized, S: Scheduler>(
        &self,
        unet: &M,
        prompts: &[&str],
        latents: Tensor<4>,
        sampler: &S,
        opts: &GenerateOptions,
        device: &Device,
    ) -> Result<Tensor<4>> {
        let cond = self.conditioning(prompts, opts.guidance, device)?;
        let z0 = dmq_models::sampler::sample(
            unet,
            sampler,
            latents,
            Some(cond),
            opts.guidance,
            opts.seed,
            &mut |_, _| {},
        )?;
        let img = self
            .vae
            .image_from_latents(z0, &ForwardCtx::new(StepContext::single(0.0)))?;
        Ok(img.clamp(-1.0, 1.0))
    }
}
