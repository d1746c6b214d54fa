//! `dmq quantize`: a diffusers model directory → a self-contained `.dmq.safetensors` file.

use std::path::PathBuf;
use std::time::Instant;

use dmq_calib::{CalibSet, QuantConfig, RecordOptions};
use dmq_pipeline::dmq_file::{self, Provenance};
use dmq_pipeline::{AnyDenoiser, Method, RunOptions, SchedulerSpec, quantize};

use super::{Error, bar, device, positive};

/// Flags of `dmq quantize`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// diffusers model directory (config.json + diffusion_pytorch_model.safetensors).
    #[arg(long, value_parser = crate::existing)]
    pub model: PathBuf,
    /// Method.
    #[arg(long, default_value = "naive", value_parser = ["naive", "qdiffusion", "efficientdm", "quest"])]
    pub method: String,
    /// Preset: W8A8, W4A8, W4A4, W8A32, ... (WxAy).
    #[arg(long, default_value = "W8A8")]
    pub preset: String,
    /// A QuantConfig JSON file (overrides --preset), e.g. written by a search.
    #[arg(long, value_parser = crate::existing)]
    pub config: Option<PathBuf>,
    /// Output file (.dmq.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Sampling steps the model is quantized for (per-step activation parameters).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Calibration trajectories.
    #[arg(long, default_value_t = 64)]
    pub calib_n: usize,
    /// Steps kept per calibration trajectory.
    #[arg(long, default_value_t = 10)]
    pub calib_steps: usize,
    /// Classifier-free guidance scale of the calibration trajectories (class-conditional models).
    #[arg(long, default_value_t = 1.5)]
    pub cfg: f64,
    /// Multiplies the method's iteration counts (e.g. 0.1 for a quick run).
    #[arg(long, default_value_t = 1.0)]
    pub iters_scale: f64,
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
    let method = method.scaled(a.iters_scale);
    let config = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            serde_json::from_str::<QuantConfig>(&text)
                .map_err(|e| format!("{}: not a QuantConfig: {e}", p.display()))?
        }
        None => QuantConfig::preset(&a.preset)?,
    };
    positive("steps", a.steps, 1000)?;
    positive("calib-n", a.calib_n, 100_000)?;
    positive("calib-steps", a.calib_steps, a.steps)?;
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
    let train = !matches!(method, Method::Naive(_));
    let device = device(backend, train)?;
    let t0 = Instant::now();
    let fp = AnyDenoiser::from_pretrained(&a.model, &device)?;
    let sched = SchedulerSpec::from_dir(&a.model)?;
    let sampler = sched.ddim(a.steps)?;
    let guidance = if dmq_models::Denoiser::info(&fp).num_classes.is_some() {
        a.cfg
    } else {
        1.0
    };
    let mut b = bar("calibration set", a.calib_n);
    let calib = CalibSet::record(
        &burn::module::Module::no_grad(fp.clone()),
        &sampler,
        &RecordOptions {
            trajectories: a.calib_n,
            steps_kept: a.calib_steps,
            guidance,
            batch: a.calib_n.min(64),
            seed: 7,
        },
        &device,
    )?;
    b.set(a.calib_n as u64, "");
    b.finish();
    let work = a.work.clone().unwrap_or_else(|| {
        let mut w = a.out.clone().into_os_string();
        w.push(".work");
        PathBuf::from(w)
    });
    let opts = RunOptions {
        work_dir: Some(work.clone()),
        sampler: sampler.clone(),
    };
    let mut progress: Option<(String, dmq_eval::progress::Progress)> = None;
    let q = quantize(&fp, &config, &calib, &method, &opts, &device, &mut |p| {
        let stage = p.stage.split(' ').next().unwrap_or("").to_string();
        if progress.as_ref().map(|(s, _)| s != &stage).unwrap_or(true) {
            if let Some((_, old)) = progress.take() {
                old.finish();
            }
            progress = Some((
                stage.clone(),
                bar(&format!("{} {stage}", method.name()), p.total as usize),
            ));
        }
        if let Some((_, bar)) = progress.as_mut() {
            bar.set(
                p.done,
                p.loss
                    .map(|l| format!("{} loss {l:.4}", p.stage))
                    .unwrap_or_default(),
            );
        }
    })?;
    if let Some((_, b)) = progress.take() {
        b.finish();
    }
    let timesteps = dmq_pipeline::scheduler::timesteps(&sampler);
    let bytes = dmq_file::save(
        &a.out,
        &q.model,
        &sched,
        &timesteps,
        &Provenance::new(&method, &config),
    )?;
    if a.work.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    let f32_total = std::fs::metadata(a.model.join("diffusion_pytorch_model.safetensors"))
        .map(|m| m.len())
        .unwrap_or(0);
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
