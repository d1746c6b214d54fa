//! `dmq sample`: a PNG grid from a model directory or a quantized file.

use std::path::PathBuf;
use std::time::Instant;

use dmq_models::noise::NoiseRng;
use dmq_models::{Denoiser, HostTensor};

use dmq_pipeline::scheduler::{AnySampler, SamplerKind};

use super::{Error, ModelArg, device, positive};

/// Flags of `dmq sample`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A diffusers model directory, a diffusers text-to-image pipeline directory
    /// (`model_index.json`; needs `--prompt`) or a .dmq.safetensors file.
    #[arg(long, value_parser = crate::existing)]
    pub model: PathBuf,
    /// Number of images (text-to-image: per prompt).
    #[arg(long, default_value_t = 16)]
    pub n: usize,
    /// A prompt (text-to-image pipelines; repeat the flag for several: one grid row each).
    #[arg(long)]
    pub prompt: Vec<String>,
    /// Sampling steps (default: the file's own, 20 for a directory).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Sampler: ddim, pndm (PLMS) or dpm++2m (DPM-Solver++ 2M), over the model's own
    /// schedule (default: DDIM; a pipeline's own scheduler for text-to-image). Quantized
    /// files sample with DDIM, the sampler they were calibrated on.
    #[arg(long)]
    pub sampler: Option<dmq_pipeline::scheduler::SamplerKind>,
    /// Class label of every image (class-conditional models); default: 0, 1, 2, ... cycled.
    #[arg(long)]
    pub class: Option<usize>,
    /// Classifier-free guidance scale (default 1.5 for class-conditional models, 7.5 for
    /// text-to-image pipelines).
    #[arg(long)]
    pub cfg: Option<f64>,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
    /// Run the quantized layers with the integer kernels (quantized files only).
    #[arg(long)]
    pub integer: bool,
}

/// Runs `dmq sample`.
pub fn run(a: Args, backend: &str) -> Result<(), Error> {
    positive("n", a.n, 10_000)?;
    if let Some(s) = a.steps {
        positive("steps", s, 1000)?;
    }
    if let Some(cfg) = a.cfg
        && !(cfg.is_finite() && cfg >= 1.0)
    {
        return Err(format!("--cfg {cfg}: must be ≥ 1").into());
    }
    if a.out.extension().and_then(|e| e.to_str()) != Some("png") {
        return Err(format!("--out {}: must end in .png", a.out.display()).into());
    }
    let device = device(backend, false)?;
    if dmq_pipeline::text_to_image::is_pipeline_dir(&a.model) {
        if a.integer {
            return Err("--integer needs a quantized .dmq.safetensors file".into());
        }
        let pipe = dmq_pipeline::TextToImage::load(&a.model, &device)?;
        let kind = a.sampler.unwrap_or(pipe.scheduler.native);
        let sampler = pipe.scheduler.sampler(kind, a.steps.unwrap_or(20))?;
        return text_to_image(&a, &pipe, &pipe.unet, &sampler, kind, &device);
    }
    let arg = ModelArg::load(&a.model, &device)?;
    if let ModelArg::File(f) = &arg
        && let Some(pipe) = &f.pipeline
    {
        if let Some(kind) = a.sampler.filter(|k| *k != SamplerKind::Ddim) {
            return Err(ddim_only(kind, &f.path));
        }
        let sampler = arg.sampler(a.steps)?;
        return if a.integer {
            let m = dmq_infer::IntegerModel::from_export(f.model.clone(), &f.file, &device)?;
            text_to_image(&a, pipe, &m, &sampler, SamplerKind::Ddim, &device)
        } else {
            text_to_image(&a, pipe, &f.model, &sampler, SamplerKind::Ddim, &device)
        };
    }
    if !a.prompt.is_empty() {
        return Err(super::not_a_pipeline(&a.model));
    }
    let info = arg.model().info();
    if let (Some(k), Some(nc)) = (a.class, info.num_classes)
        && k >= nc
    {
        return Err(format!("--class {k}: the model has {nc} classes").into());
    }
    if a.class.is_some() && info.num_classes.is_none() {
        return Err("--class: the model is not class-conditional".into());
    }
    let sched = match (a.sampler.unwrap_or(SamplerKind::Ddim), &arg) {
        (SamplerKind::Ddim, _) => AnySampler::Ddim(arg.sampler(a.steps)?),
        (kind, ModelArg::Dir { scheduler, .. }) => scheduler.sampler(kind, arg.steps(a.steps)?)?,
        (kind, ModelArg::File(f)) => return Err(ddim_only(kind, &f.path)),
    };
    let steps = dmq_models::scheduler::Scheduler::timesteps(&sched).len();
    let t0 = Instant::now();
    let images = match (&arg, a.integer) {
        (ModelArg::File(f), true) => {
            let m = dmq_infer::IntegerModel::from_export(f.model.clone(), &f.file, &device)?;
            draw(&m, &sched, &a, &device)?
        }
        (ModelArg::Dir { .. }, true) => {
            return Err("--integer needs a quantized .dmq.safetensors file".into());
        }
        (_, false) => draw(arg.model(), &sched, &a, &device)?,
    };
    let dt = t0.elapsed().as_secs_f64();
    dmq_pipeline::eval::grid_png(&a.out, &[&images], &device)?;
    println!(
        "{} images in {dt:.1} s ({:.2} images/s, {steps} {} steps{}) → {}",
        a.n,
        a.n as f64 / dt,
        a.sampler.unwrap_or(SamplerKind::Ddim),
        if a.integer { ", integer path" } else { "" },
        a.out.display()
    );
    Ok(())
}

fn draw<M: Denoiser, S: dmq_models::scheduler::Scheduler>(
    model: &M,
    sched: &S,
    a: &Args,
    device: &burn::tensor::Device,
) -> Result<HostTensor, Error> {
    let info = model.info();
    let (c, s) = (info.in_channels, info.sample_size);
    let batch = 16.min(a.n);
    let mut out = Vec::with_capacity(a.n * c * s * s);
    let mut bar = super::bar("sampling", a.n);
    let mut start = 0;
    while start < a.n {
        let b = batch.min(a.n - start);
        let x = NoiseRng::new(a.seed.wrapping_add(start as u64)).tensor([b, c, s, s], device);
        let class = info.num_classes.map(|nc| {
            let v: Vec<usize> = (start..start + b)
                .map(|i| a.class.unwrap_or(i % nc))
                .collect();
            dmq_models::Conditioning::Class(dmq_models::sampler::labels(&v, device))
        });
        let guidance = if info.num_classes.is_some() {
            a.cfg.unwrap_or(1.5)
        } else {
            1.0
        };
        let x0 =
            dmq_models::sampler::sample(model, sched, x, class, guidance, a.seed, &mut |_, _| {})?;
        out.extend(HostTensor::from_tensor(&x0.clamp(-1.0, 1.0)).data);
        start += b;
        bar.set(start as u64, "");
    }
    bar.finish();
    Ok(HostTensor {
        data: out,
        shape: vec![a.n, c, s, s],
    })
}

/// The error for a non-DDIM `--sampler` on a quantized file.
fn ddim_only(kind: SamplerKind, path: &std::path::Path) -> Error {
    format!(
        "--sampler {kind}: {} holds activation parameters calibrated on DDIM's timesteps; \
         sample it with --sampler ddim (or sample the FP directory)",
        path.display()
    )
    .into()
}

/// `dmq sample` on a text-to-image pipeline (a directory, or a quantized file with its
/// components): `--n` images per `--prompt` from `unet` under `sampler`, one grid row per
/// prompt.
fn text_to_image<M: Denoiser + ?Sized, S: dmq_models::scheduler::Scheduler>(
    a: &Args,
    pipe: &dmq_pipeline::TextToImage,
    unet: &M,
    sampler: &S,
    kind: SamplerKind,
    device: &burn::tensor::Device,
) -> Result<(), Error> {
    if a.prompt.is_empty() {
        return Err(format!(
            "{} is a text-to-image pipeline: give at least one --prompt",
            a.model.display()
        )
        .into());
    }
    if a.class.is_some() {
        return Err("--class does not apply to a text-to-image pipeline".into());
    }
    let steps = sampler.timesteps().len();
    let opts = dmq_pipeline::GenerateOptions {
        steps,
        guidance: a.cfg.unwrap_or(7.5),
        seed: a.seed,
        sampler: kind,
    };
    let t0 = Instant::now();
    let mut rows = Vec::with_capacity(a.prompt.len());
    let mut bar = super::bar("text-to-image", a.prompt.len() * a.n);
    for (k, prompt) in a.prompt.iter().enumerate() {
        let prompts = vec![prompt.as_str(); a.n];
        let o = dmq_pipeline::GenerateOptions {
            seed: opts.seed.wrapping_add((k * a.n) as u64),
            ..opts.clone()
        };
        rows.push(HostTensor::from_tensor(
            &pipe.generate_with_sampler(unet, &prompts, sampler, &o, device)?,
        ));
        bar.set(((k + 1) * a.n) as u64, "");
    }
    bar.finish();
    let dt = t0.elapsed().as_secs_f64();
    let refs: Vec<&HostTensor> = rows.iter().collect();
    dmq_pipeline::eval::grid_png(&a.out, &refs, device)?;
    println!(
        "{} images for {} prompt(s) in {dt:.1} s ({} {} steps, guidance {}{}) → {}",
        a.n * a.prompt.len(),
        a.prompt.len(),
        opts.steps,
        opts.sampler,
        opts.guidance,
        if a.integer { ", integer path" } else { "" },
        a.out.display()
    );
    Ok(())
}
