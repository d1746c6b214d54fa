//! `dmq eval`: the metrics row of a quantized file, as a table and JSON.

use std::path::PathBuf;
use std::time::Instant;

use dmq_eval::harness::SampleSpec;
use dmq_models::Denoiser;
use dmq_pipeline::eval::{Evaluator, cost, sample};

use super::{Error, ModelArg, device, positive};

/// Flags of `dmq eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A .dmq.safetensors file (or a diffusers directory: scores the FP model).
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
    /// Classifier-free guidance scale (class-conditional models).
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
}

/// Runs `dmq eval`.
pub fn run(a: Args, backend: &str) -> Result<(), Error> {
    positive("samples", a.samples, 100_000)?;
    if !(a.cfg.is_finite() && a.cfg >= 1.0) {
        return Err(format!("--cfg {}: must be ≥ 1", a.cfg).into());
    }
    let device = device(backend, false)?;
    let arg = ModelArg::load(&a.model, &device)?;
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
    let fidelity = match &fp_images {
        Some(fp) => Some(dmq_eval::metrics::fidelity::fidelity(
            &images.data,
            &fp.data,
            [
                images.shape[0],
                images.shape[1],
                images.shape[2],
                images.shape[3],
            ],
        )?),
        None => None,
    };
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
    let opt = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |x| format!("{x:.p$}"));
    println!(
        "| samples | steps | FD test | FD vs FP | PSNR vs FP dB | SSIM | class acc | GBitOPs/img | model KiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {steps} | {} | {} | {} | {} | {} | {:.1} | {:.0} |",
        a.samples,
        opt(fd_test, 2),
        opt(fd_fp, 2),
        opt(fidelity.as_ref().map(|f| f.psnr), 2),
        opt(fidelity.as_ref().map(|f| f.ssim), 4),
        opt(class_acc.map(|x| 100.0 * x), 1),
        c.bitops / 1e9,
        c.model_bytes as f64 / 1024.0
    );
    println!("{row}");
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&row)? + "\n")
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}
