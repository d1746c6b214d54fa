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
    /// A diffusers model directory or a .dmq.safetensors file.
    #[arg(long, value_parser = crate::existing)]
    pub model: PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = 16)]
    pub n: usize,
    /// Sampling steps (default: the file's own, 20 for a directory).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Sampler: ddim, pndm (PLMS) or dpm++2m (DPM-Solver++ 2M), over the model's own
    /// schedule. Quantized files sample with DDIM, the sampler they were calibrated on.
    #[arg(long, default_value = "ddim")]
    pub sampler: dmq_pipeline::scheduler::SamplerKind,
    /// Class label of every image (class-conditional models); default: 0, 1, 2, ... cycled.
    #[arg(long)]
    pub class: Option<usize>,
    /// Classifier-free guidance scale (class-conditional models).
    #[arg(long, default_value_t = 1.5)]
    pub cfg: f64,
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
    if !(a.cfg.is_finite() && a.cfg >= 1.0) {
        return Err(format!("--cfg {}: must be ≥ 1", a.cfg).into());
    }
    if a.out.extension().and_then(|e| e.to_str()) != Some("png") {
        return Err(format!("--out {}: must end in .png", a.out.display()).into());
    }
    let device = device(backend, false)?;
    let arg = ModelArg::load(&a.model, &device)?;
    let info = arg.model().info();
    if let (Some(k), Some(nc)) = (a.class, info.num_classes)
        && k >= nc
    {
        return Err(format!("--class {k}: the model has {nc} classes").into());
    }
    if a.class.is_some() && info.num_classes.is_none() {
        return Err("--class: the model is not class-conditional".into());
    }
    let sched = match (a.sampler, &arg) {
        (SamplerKind::Ddim, _) => AnySampler::Ddim(arg.sampler(a.steps)?),
        (kind, ModelArg::Dir { scheduler, .. }) => scheduler.sampler(kind, arg.steps(a.steps)?)?,
        (kind, ModelArg::File(f)) => {
            return Err(format!(
                "--sampler {kind}: {} holds activation parameters calibrated on DDIM's \
                 timesteps; sample it with --sampler ddim (or sample the FP directory)",
                f.path.display()
            )
            .into());
        }
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
        a.sampler,
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
            a.cfg
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
