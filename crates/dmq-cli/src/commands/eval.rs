//! `dmq eval`: the metrics row of a quantized file, as a table and JSON.

use std::path::PathBuf;
use std::time::Instant;

use dmq_eval::harness::SampleSpec;
use dmq_models::Denoiser;
use dmq_pipeline::eval::{Evaluator, cost, sample};
use dmq_pipeline::scheduler::SamplerKind;
use dmq_pipeline::{GenerateOptions, TextToImage, t2i_eval};

use super::{Error, ModelArg, device, positive};

/// Flags of `dmq eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A .dmq.safetensors file (or a diffusers directory: scores the FP model). A
    /// text-to-image pipeline (directory or file) is scored on Fashion-MNIST class prompts.
    #[arg(long, value_parser = crate::existing)]
    pub model: PathBuf,
    /// The FP model directory it was quantized from: FD/PSNR/SSIM against its samples from
    /// the same noise (without it, the row has FD against the test set only).
    #[arg(long, value_parser = crate::existing)]
    pub fp: Option<PathBuf>,
    /// Number of samples.
    #[arg(long, default_value_t = 100)]
    pub samples: usize,
    /// DDIM steps (default: the file's own).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (class-conditional models and text-to-image
    /// pipelines).
    #[arg(long, default_value_t = 1.5)]
    pub cfg: f64,
    /// Seed of the noise (the result tables use 2024).
    #[arg(long, default_value_t = 2024)]
    pub seed: u64,
    /// Metric classifier directory (Fashion-MNIST features).
    #[arg(long, default_value = "assets/models/fmnist-classifier")]
    pub classifier: PathBuf,
    /// Fashion-MNIST directory (IDX files; Debian package dataset-fashion-mnist).
    #[arg(long, default_value = dmq_eval::data::fashion_mnist::DEFAULT_DIR)]
    pub data: PathBuf,
    /// Sample cache directory (keyed by a fingerprint of weights, sampler and noise).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Also write the row as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Sample the quantized model on the integer path (`dmq_infer::IntegerModel`: the
    /// deployed arithmetic) instead of its fake-quant form; FP samples are unchanged.
    #[arg(long)]
    pub integer: bool,
    /// Evaluation prompts of a text-to-image pipeline, cycled over the samples (repeat the
    /// flag). Default: "a photo of a {class}" with class i mod 10 for sample i, which makes
    /// the class accuracy the prompt accuracy (Fashion-MNIST-like pipelines); with given
    /// prompts the row has fidelity to FP, BitOPs and bytes only.
    #[arg(long)]
    pub prompt: Vec<String>,
    /// Also write the first 40 samples as a PNG grid, ten per row, beside the FP samples from
    /// the same noise when `--fp` is given (FP left). Text-to-image: one column per class
    /// prompt.
    #[arg(long)]
    pub grid: Option<PathBuf>,
}

/// Runs `dmq eval`.
pub fn run(a: Args, backend: &str) -> Result<(), Error> {
    positive("samples", a.samples, 100_000)?;
    if !(a.cfg.is_finite() && a.cfg >= 1.0) {
        return Err(format!("--cfg {}: must be ≥ 1", a.cfg).into());
    }
    if let Some(g) = &a.grid
        && g.extension().and_then(|e| e.to_str()) != Some("png")
    {
        return Err(format!("--grid {}: must end in .png", g.display()).into());
    }
    let device = device(backend, false)?;
    if dmq_pipeline::text_to_image::is_pipeline_dir(&a.model) {
        if a.integer {
            return Err("--integer needs a quantized .dmq.safetensors file".into());
        }
        let pipe = TextToImage::load(&a.model, &device)?;
        let sampler = pipe.scheduler.ddim(a.steps.unwrap_or(20))?;
        let fp = dmq_pipeline::AnyDenoiser::UNetCond(pipe.unet.clone());
        return text_to_image(&a, &pipe, &pipe.unet, &fp, &sampler, &device);
    }
    let arg = ModelArg::load(&a.model, &device)?;
    if let ModelArg::File(f) = &arg
        && let Some(pipe) = &f.pipeline
    {
        let sampler = arg.sampler(a.steps)?;
        return if a.integer {
            let m = dmq_infer::IntegerModel::from_export(f.model.clone(), &f.file, &device)?;
            text_to_image(&a, pipe, &m, &f.model, &sampler, &device)
        } else {
            text_to_image(&a, pipe, &f.model, &f.model, &sampler, &device)
        };
    }
    if !a.prompt.is_empty() {
        return Err(super::not_a_pipeline(&a.model));
    }
    let model = arg.model();
    let info = model.info();
    let sched = arg.sampler(a.steps)?;
    let steps = dmq_models::scheduler::Scheduler::timesteps(&sched).len();
    let spec = SampleSpec {
        n: a.samples,
        guidance: if info.num_classes.is_some() {
            a.cfg
        } else {
            1.0
        },
        seed: a.seed,
        batch: 100.min(a.samples),
    };
    let cache = a.cache.as_deref();
    let t0 = Instant::now();
    let mut b = super::bar("samples", a.samples);
    let images = if a.integer {
        let ModelArg::File(f) = &arg else {
            return Err("--integer: give a .dmq.safetensors file".into());
        };
        let int = dmq_infer::IntegerModel::from_export(f.model.clone(), &f.file, &device)?;
        dmq_pipeline::eval::sample_integer(
            model,
            &int,
            &sched,
            &spec,
            cache,
            &device,
            &mut |d, _| b.set(d as u64, ""),
        )?
    } else {
        sample(model, &sched, &spec, cache, &device, &mut |d, _| {
            b.set(d as u64, "")
        })?
    };
    b.finish();
    let sample_s = t0.elapsed().as_secs_f64();
    let fp_images = match &a.fp {
        Some(dir) => {
            let fp = dmq_pipeline::AnyDenoiser::from_pretrained(dir, &device)?;
            let mut b = super::bar("FP samples", a.samples);
            let im = sample(&fp, &sched, &spec, cache, &device, &mut |d, _| {
                b.set(d as u64, "")
            })?;
            b.finish();
            Some(im)
        }
        None => None,
    };
    // FD and class accuracy use the Fashion-MNIST metric classifier: only for 1×28×28 models
    let fmnist = info.in_channels == 1 && info.sample_size == 28;
    let (fd_test, fd_fp, class_acc) = if fmnist {
        for (flag, dir) in [("classifier", &a.classifier), ("data", &a.data)] {
            if !dir.is_dir() {
                return Err(format!("--{flag} {}: not a directory", dir.display()).into());
            }
        }
        let ev = Evaluator::new(
            &a.classifier,
            &a.data,
            fp_images.clone().unwrap_or_else(|| images.clone()),
            &device,
        )?;
        let s = ev.score(&images, info.num_classes, &device)?;
        (Some(s.fd_test), Some(s.fd_fp), s.class_acc)
    } else {
        eprintln!(
            "note: FD and class accuracy need the Fashion-MNIST metric classifier (1×28×28 images); \
             this model makes {}×{}×{}: reporting fidelity to FP, BitOPs and bytes",
            info.in_channels, info.sample_size, info.sample_size
        );
        (None, None, None)
    };
    write_grid(&a, &images, fp_images.as_ref(), &device)?;
    let fidelity = fidelity_to(&images, fp_images.as_ref())?;
    let c = cost(model, steps, spec.guidance != 1.0, &device)?;
    let fd_fp = fd_fp.filter(|_| fp_images.is_some());
    let row = serde_json::json!({
        "model": a.model, "samples": a.samples, "steps": steps, "cfg": spec.guidance, "seed": a.seed,
        "path": if a.integer { "integer" } else { "fake-quant" },
        "fd_test": fd_test,
        "fd_fp": fd_fp,
        "psnr_fp": fidelity.as_ref().map(|f| f.psnr),
        "ssim_fp": fidelity.as_ref().map(|f| f.ssim),
        "class_acc": class_acc,
        "gbitops_per_image": c.bitops / 1e9,
        "model_bytes": c.model_bytes,
        "sample_s": sample_s,
    });
    print_row(&a, &row)
}

/// Prints the row as a table line and JSON, and writes it to `--json`.
fn print_row(a: &Args, row: &serde_json::Value) -> Result<(), Error> {
    let opt = |key: &str, p: usize, scale: f64| {
        row[key]
            .as_f64()
            .map_or("-".to_string(), |x| format!("{:.p$}", x * scale))
    };
    println!(
        "| samples | steps | FD test | FD vs FP | PSNR vs FP dB | SSIM | class acc | GBitOPs/img | model KiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        a.samples,
        row["steps"],
        opt("fd_test", 2, 1.0),
        opt("fd_fp", 2, 1.0),
        opt("psnr_fp", 2, 1.0),
        opt("ssim_fp", 4, 1.0),
        opt("class_acc", 1, 100.0),
        opt("gbitops_per_image", 1, 1.0),
        opt("model_bytes", 0, 1.0 / 1024.0),
    );
    println!("{row}");
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(row)? + "\n")
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

/// `dmq eval` of a text-to-image pipeline (a directory, or a quantized file with its
/// components): image `i` is prompted with Fashion-MNIST class `i mod 10`
/// (`dmq_pipeline::t2i_eval`), so the class accuracy is the prompt accuracy; FD and class
/// accuracy need 1-channel images of at least 28×28 (cropped to the central 28×28); the
/// FP reference is `--fp`'s pipeline from the same noise, prompts and timesteps. `unet`
/// samples (fake-quant or integer path), `model` is its fake-quant form (for the cost).
fn text_to_image<M: Denoiser + ?Sized>(
    a: &Args,
    pipe: &TextToImage,
    unet: &M,
    model: &dmq_pipeline::AnyDenoiser,
    sampler: &dmq_models::scheduler::DdimScheduler,
    device: &burn::tensor::Device,
) -> Result<(), Error> {
    let steps = dmq_models::scheduler::Scheduler::timesteps(sampler).len();
    let given = !a.prompt.is_empty();
    let prompts = if given {
        (0..a.samples)
            .map(|i| a.prompt[i % a.prompt.len()].clone())
            .collect()
    } else {
        t2i_eval::eval_prompts(a.samples)?
    };
    let opts = GenerateOptions {
        steps,
        guidance: a.cfg,
        seed: a.seed,
        sampler: SamplerKind::Ddim,
    };
    // Fashion-MNIST-like pipelines are scored by the metric classifier on 28×28 crops;
    // others get fidelity to FP, BitOPs and bytes
    let fmnist = !given && t2i_eval::fmnist_scorable(pipe, unet);
    let crop = fmnist.then_some(t2i_eval::FMNIST_SIZE);
    let t0 = Instant::now();
    let mut b = super::bar("samples", a.samples);
    let images = t2i_eval::generate_images(
        pipe,
        unet,
        &prompts,
        sampler,
        &opts,
        100,
        crop,
        device,
        &mut |d, _| b.set(d as u64, ""),
    )?;
    b.finish();
    let sample_s = t0.elapsed().as_secs_f64();
    let fp_images = match &a.fp {
        Some(dir) => {
            let fp = TextToImage::load(dir, device)?;
            let mut b = super::bar("FP samples", a.samples);
            let im = t2i_eval::generate_images(
                &fp,
                &fp.unet,
                &prompts,
                sampler,
                &opts,
                100,
                crop,
                device,
                &mut |d, _| b.set(d as u64, ""),
            )?;
            b.finish();
            Some(im)
        }
        None => None,
    };
    let (mut fd_test, mut fd_fp, mut class_acc) = (None, None, None);
    if fmnist {
        let ev = Evaluator::new(
            &a.classifier,
            &a.data,
            fp_images.clone().unwrap_or_else(|| images.clone()),
            device,
        )?;
        let s = ev.score(&images, Some(10), device)?;
        fd_test = Some(s.fd_test);
        fd_fp = fp_images.as_ref().map(|_| s.fd_fp);
        class_acc = s.class_acc;
    }
    write_grid(a, &images, fp_images.as_ref(), device)?;
    let fidelity = fidelity_to(&images, fp_images.as_ref())?;
    let c = t2i_eval::pipeline_cost(pipe, model, steps, a.cfg != 1.0, device)?;
    let row = serde_json::json!({
        "model": a.model, "samples": a.samples, "steps": steps, "cfg": a.cfg, "seed": a.seed,
        "path": if a.integer { "integer" } else { "fake-quant" },
        "prompts": if given {
            serde_json::json!(a.prompt)
        } else {
            serde_json::json!("a photo of a {class}, class = i mod 10")
        },
        "fd_test": fd_test,
        "fd_fp": fd_fp,
        "psnr_fp": fidelity.as_ref().map(|f| f.psnr),
        "ssim_fp": fidelity.as_ref().map(|f| f.ssim),
        "class_acc": class_acc,
        "gbitops_per_image": c.bitops / 1e9,
        "model_bytes": c.model_bytes,
        "sample_s": sample_s,
    });
    print_row(a, &row)
}

/// `--grid`: the first 40 samples, beside the FP samples from the same noise when there are
/// some.
fn write_grid(
    a: &Args,
    images: &dmq_models::HostTensor,
    fp: Option<&dmq_models::HostTensor>,
    device: &burn::tensor::Device,
) -> Result<(), Error> {
    let Some(path) = &a.grid else { return Ok(()) };
    let sets: Vec<&dmq_models::HostTensor> = fp.into_iter().chain([images]).collect();
    dmq_pipeline::eval::grid_png(path, &sets, device)?;
    eprintln!("grid: {}", path.display());
    Ok(())
}

/// PSNR/SSIM of `images` against the FP samples from the same noise, when there are some.
fn fidelity_to(
    images: &dmq_models::HostTensor,
    fp: Option<&dmq_models::HostTensor>,
) -> Result<Option<dmq_eval::metrics::fidelity::Fidelity>, Error> {
    let Some(fp) = fp else { return Ok(None) };
    let s = &images.shape;
    Ok(Some(dmq_eval::metrics::fidelity::fidelity(
        &images.data,
        &fp.data,
        [s[0], s[1], s[2], s[3]],
    )?))
}
