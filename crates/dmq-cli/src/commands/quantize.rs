//! `dmq quantize`: a diffusers model directory → a self-contained `.dmq.safetensors` file.

use std::path::PathBuf;
use std::time::Instant;

use dmq_calib::{QuantConfig, RecordOptions};
use dmq_pipeline::dmq_file::{self, Provenance};
use dmq_pipeline::search::SearchedConfig;
use dmq_pipeline::{ImageSet, Method, RunOptions, TextToImage, quantize};

use super::{
    Error, PromptArgs, StageBars, calibration_prompts, calibration_set, device, positive,
    text_calibration_set,
};

/// Flags of `dmq quantize`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// diffusers model directory (config.json + diffusion_pytorch_model.safetensors), or a
    /// text-to-image pipeline directory (model_index.json; needs calibration prompts): its
    /// UNet is quantized, and the file carries the FP text encoder, tokenizer and VAE.
    #[arg(long, value_parser = crate::existing)]
    pub model: PathBuf,
    /// Calibration prompts (text-to-image pipelines).
    #[command(flatten)]
    pub text: PromptArgs,
    /// Method.
    #[arg(long, default_value = "naive", value_parser = ["naive", "qdiffusion", "smoothquant", "svdquant", "efficientdm", "quest", "binarydm"])]
    pub method: String,
    /// Preset: W8A8, W4A8, W4A4, W8A32, W1A4 (binarydm), W4A8-g64 (linear weights per group
    /// of 64 input features), ... (WxAy[-gG]).
    #[arg(long, default_value = "W8A8")]
    pub preset: String,
    /// A config file (overrides --preset): a QuantConfig JSON, or a `dmq search` result
    /// (per-layer bits and its searched timesteps, which then set the sampling steps).
    #[arg(long, value_parser = crate::existing)]
    pub config: Option<PathBuf>,
    /// Training images for binarydm: a Fashion-MNIST-format directory (IDX files); a
    /// text-to-image pipeline trains on them encoded by its VAE, prompted "a photo of a
    /// {class}".
    #[arg(long, default_value = dmq_eval::data::fashion_mnist::DEFAULT_DIR)]
    pub data: PathBuf,
    /// Output file (.dmq.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Sampling steps the model is quantized for (per-step activation parameters); default
    /// 20, or the searched timesteps of a `dmq search` config.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Calibration trajectories.
    #[arg(long, default_value_t = 64)]
    pub calib_n: usize,
    /// Steps kept per calibration trajectory.
    #[arg(long, default_value_t = 10)]
    pub calib_steps: usize,
    /// Classifier-free guidance scale of the calibration trajectories (class-conditional models).
    #[arg(long, default_value_t = 1.5)]
    pub cfg: f64,
    /// svdquant: rank of the 16-bit low-rank branch (capped per layer at half of
    /// min(d_in, d_out)).
    #[arg(long, default_value_t = 32)]
    pub rank: usize,
    /// Multiplies the method's iteration counts (e.g. 0.1 for a quick run).
    #[arg(long, default_value_t = 1.0)]
    pub iters_scale: f64,
    /// Text-to-image pipelines: the text encoder's weights at this many bits (2–8; per
    /// output row, weight-only; the default keeps it f32).
    #[arg(long)]
    pub text_encoder_bits: Option<u32>,
    /// Text-to-image pipelines: the VAE's weights at this many bits (2–8; per output row,
    /// weight-only; the default keeps it f32).
    #[arg(long)]
    pub vae_bits: Option<u32>,
    /// Run directory for checkpoints (a killed run resumes from it); default: `<out>.work`,
    /// removed after success.
    #[arg(long)]
    pub work: Option<PathBuf>,
}

/// Runs `dmq quantize`.
pub fn run(a: Args, backend: &str) -> Result<(), Error> {
    // every flag is checked before the model is read
    let method = Method::from_name(&a.method)?;
    if !(a.iters_scale.is_finite() && a.iters_scale > 0.0 && a.iters_scale <= 100.0) {
        return Err(format!("--iters-scale {}: must be in (0, 100]", a.iters_scale).into());
    }
    let method = match method.scaled(a.iters_scale) {
        Method::Svdquant(mut o) => {
            o.rank = a.rank;
            Method::Svdquant(o)
        }
        m => m,
    };
    let (config, searched) = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            if SearchedConfig::is_searched_config(&text) {
                let s = SearchedConfig::from_json(&text, p)?;
                (s.config.clone(), Some(s))
            } else {
                let c = serde_json::from_str::<QuantConfig>(&text)
                    .map_err(|e| format!("{}: not a QuantConfig: {e}", p.display()))?;
                (c, None)
            }
        }
        None => (QuantConfig::preset(&a.preset)?, None),
    };
    let steps = match (&searched, a.steps) {
        (Some(s), Some(n)) if n != s.timesteps.len() => {
            return Err(format!(
                "--steps {n}: the searched config selects {} timesteps; leave --steps out",
                s.timesteps.len()
            )
            .into());
        }
        (Some(s), _) => s.timesteps.len(),
        (None, n) => n.unwrap_or(20),
    };
    positive("steps", steps, 1000)?;
    positive("calib-n", a.calib_n, 100_000)?;
    positive("rank", a.rank, 4096)?;
    positive("calib-steps", a.calib_steps, steps)?;
    if !(a.cfg.is_finite() && a.cfg >= 1.0) {
        return Err(format!("--cfg {}: must be ≥ 1", a.cfg).into());
    }
    if a.out.is_dir() {
        return Err(format!(
            "--out {}: is a directory; give a file name",
            a.out.display()
        )
        .into());
    }
    let is_pipeline = dmq_pipeline::text_to_image::is_pipeline_dir(&a.model);
    let prompts = calibration_prompts(&a.model, &a.text, is_pipeline)?;
    let component_bits = dmq_pipeline::ComponentBits {
        text_encoder: a.text_encoder_bits,
        vae: a.vae_bits,
    };
    if !component_bits.is_fp() && !is_pipeline {
        return Err(format!(
            "--text-encoder-bits / --vae-bits: {} is not a text-to-image pipeline",
            a.model.display()
        )
        .into());
    }
    component_bits.validate(std::path::Path::new("--text-encoder-bits/--vae-bits"))?;
    // a pipeline's trajectories (calibration and EfficientDM's) run at the --cfg guidance
    let method = match method {
        Method::Efficientdm {
            mut config,
            train_steps,
        } if is_pipeline => {
            config.guidance = a.cfg;
            Method::Efficientdm {
                config,
                train_steps,
            }
        }
        m => m,
    };
    let train = !matches!(method, Method::Naive(_));
    let device = device(backend, train)?;
    let t0 = Instant::now();
    let pipe = if is_pipeline {
        // the components as the file will hold them: calibration sees the deployed prompts
        let mut p = TextToImage::load(&a.model, &device)?;
        p.quantize_components(component_bits, &device)?;
        Some(std::sync::Arc::new(p))
    } else {
        None
    };
    let (fp, sched) = super::denoiser_and_schedule(&a.model, pipe.as_deref(), &device)?;
    let sampler = match &searched {
        Some(s) => s.sampler(&sched)?,
        None => sched.ddim(steps)?,
    };
    let info = dmq_models::Denoiser::info(&fp);
    let guidance = if info.num_classes.is_some() || pipe.is_some() {
        a.cfg
    } else {
        1.0
    };
    let record = RecordOptions {
        trajectories: a.calib_n,
        steps_kept: a.calib_steps,
        guidance,
        batch: a.calib_n.min(64),
        seed: 7,
    };
    let calib = match &pipe {
        Some(p) => text_calibration_set(&fp, p, &prompts, &sampler, &record, &device)?,
        None => calibration_set(&fp, &sampler, &record, &device)?,
    };
    let work = a.work.clone().unwrap_or_else(|| {
        let mut w = a.out.clone().into_os_string();
        w.push(".work");
        PathBuf::from(w)
    });
    let mut opts = RunOptions::new(sampler.clone())
        .with_schedule(sched.ddim.clone())
        .with_work_dir(&work);
    if matches!(method, Method::Binarydm(_)) {
        opts = opts.with_images(ImageSet::fashion_mnist_train(&a.data)?);
        if let Some(p) = &pipe {
            // the latent model trains on the images encoded by its VAE, each prompted with
            // its class ("a photo of a {class}", the evaluation prompts)
            let prompts = (0..dmq_eval::data::fashion_mnist::NUM_CLASSES)
                .map(dmq_pipeline::t2i_eval::class_prompt)
                .collect::<Result<Vec<_>, _>>()?;
            opts = opts.with_text_training(dmq_pipeline::TextTraining {
                pipe: p.clone(),
                prompts,
            });
        }
    }
    if let Some(p) = &pipe {
        // EfficientDM's own trajectories: prompts drawn from the calibration prompts
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        opts = opts.with_prompts(p.prompt_states(&refs, &device)?);
    }
    let mut bars = StageBars::new(method.name());
    let q = quantize(&fp, &config, &calib, &method, &opts, &device, &mut |p| {
        bars.update(p)
    })?;
    bars.finish();
    let timesteps = dmq_pipeline::scheduler::timesteps(&sampler);
    let provenance = Provenance::new(&method, &config);
    let bytes = match &pipe {
        Some(p) => dmq_file::save_pipeline(&a.out, &q.model, p, &timesteps, &provenance)?,
        None => dmq_file::save(&a.out, &q.model, &sched, &timesteps, &provenance)?,
    };
    if a.work.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    // the FP weights the file replaces: the model's, or every component of a pipeline
    let weights = |dir: &std::path::Path, name: &str| {
        std::fs::metadata(dir.join(name)).map_or(0, |m| m.len())
    };
    let f32_total = if pipe.is_some() {
        weights(&a.model.join("unet"), "diffusion_pytorch_model.safetensors")
            + weights(&a.model.join("vae"), "diffusion_pytorch_model.safetensors")
            + weights(&a.model.join("text_encoder"), "model.safetensors")
    } else {
        weights(&a.model, "diffusion_pytorch_model.safetensors")
    };
    println!(
        "{} {} → {} ({} bytes; FP weights {} bytes, {:.2}× smaller) in {:.1} s",
        method.name(),
        a.config
            .as_ref()
            .map_or(a.preset.clone(), |p| p.display().to_string()),
        a.out.display(),
        bytes,
        f32_total,
        f32_total as f64 / bytes.max(1) as f64,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
