//! Samples a grid of images from a default model (or any diffusers-layout UNet/DiT
//! directory) and writes it as PNG.
//!
//! ```text
//! cargo run --release --example sample [-- --model unet|dit --n 64 --steps 50 --cfg 1.5
//!     --seed 0 --backend flex --out samples.png --dir assets/models/unet-fmnist]
//! ```
//! `--backend wgpu` needs the build feature: `cargo run --release --features wgpu --example sample -- --backend wgpu`.
//! The DiT draws class `i mod 10` for image i (one class per column of the 10-wide grid).

use std::path::PathBuf;

use burn::tensor::Device;
use dmq::eval::cli::{FlagError, Flags};
use dmq::eval::progress::Progress;
use dmq::models::noise::NoiseRng;
use dmq::models::sampler::{Trajectory, labels};
use dmq::models::scheduler::{DdimConfig, DdimScheduler, Scheduler};
use dmq::models::{Denoiser, ForwardCtx, ModelError};

fn run(model: &dyn Denoiser, args: &Args, device: &Device) -> Result<(), ModelError> {
    let info = model.info();
    let sched = DdimScheduler::diffusers(&DdimConfig::new(), args.steps)?;
    let s = info.sample_size;
    let x = NoiseRng::new(args.seed).tensor([args.n, info.in_channels, s, s], device);
    let (class, guidance, ncol) = match info.num_classes {
        Some(k) => (
            Some(labels(&(0..args.n).map(|i| i % k).collect::<Vec<_>>(), device).into()),
            args.cfg,
            k,
        ),
        None => (None, 1.0, 8),
    };
    let mut traj = Trajectory::new(&sched, x, class, info.num_classes, guidance, args.seed)?;
    let mut bar = Progress::new("sampling", sched.num_steps() as u64, 0);
    while !traj.done() {
        let inp = traj.inputs()?;
        let out = model.forward(inp.x, inp.t, inp.cond, &ForwardCtx::new(inp.step))?;
        let eps = traj.guide(out, info.in_channels);
        traj.advance(eps)?;
        bar.inc("");
    }
    let secs = bar.finish();
    let images = traj.sample().clone().clamp(-1.0, 1.0);
    dmq::eval::image::save_grid_png(&args.out, images, ncol)
        .map_err(|e| ModelError::Config(e.to_string()))?;
    println!(
        "{} images, {} DDIM steps{}, in {secs:.1} s ({:.2} images/s) on {}; grid written to {}",
        args.n,
        args.steps,
        if guidance != 1.0 {
            format!(", CFG {guidance}")
        } else {
            String::new()
        },
        args.n as f64 / secs,
        args.backend,
        args.out.display()
    );
    Ok(())
}

struct Args {
    n: usize,
    steps: usize,
    cfg: f64,
    seed: u64,
    backend: String,
    out: PathBuf,
    dir: PathBuf,
}

fn parse_args(f: &Flags) -> Result<Args, FlagError> {
    let model: String = f.get("model", "unet".into())?;
    Ok(Args {
        n: f.get("n", if model == "dit" { 60 } else { 64 })?,
        steps: f.get("steps", 50)?,
        cfg: f.get("cfg", 1.5)?,
        seed: f.get("seed", 0)?,
        backend: f.get("backend", "flex".into())?,
        out: f.get("out", PathBuf::from(format!("samples-{model}.png")))?,
        dir: f.get(
            "dir",
            PathBuf::from(format!("assets/models/{model}-fmnist")),
        )?,
    })
}

fn main() {
    let args = Flags::parse_env(parse_args);
    let device =
        dmq::quant::device::by_name(&args.backend).unwrap_or_else(|e| Flags::exit_usage(e));
    // the class comes from the directory's config.json (UNet2DModel, DiTTransformer2DModel)
    let result = dmq::pipeline::AnyDenoiser::from_pretrained(&args.dir, &device)
        .map_err(|e| e.to_string())
        .and_then(|m| run(&m, &args, &device).map_err(|e| e.to_string()));
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
