//! Trains the embedded default models on Fashion-MNIST on the CPU: the unconditional UNet
//! (`unet-fmnist`) or the 10-class conditional DiT (`dit-fmnist`).
//!
//! ```text
//! cargo run --release --example train -- --model unet [--steps 20000] [--batch 32]
//!     [--lr 5e-4 (unet) / 4e-4 (dit)] [--ckpt runs/unet-fmnist] [--out assets/models/unet-fmnist] [--every 250]
//!     [--init DIR] [--warmup N]
//! ```
//! `--init DIR` continues training from the weights of a diffusers-layout directory (a fresh
//! optimiser and a new LR schedule of `--steps`; the model and its EMA start from those weights);
//! it is ignored once the checkpoint directory holds a run, which then resumes as usual.
//! AdamW with linear warm-up and cosine decay, EMA of the weights (decay 0.999), a resumable
//! checkpoint every `--every` steps (re-running the same command resumes), a progress bar with
//! loss and ETA, and a loss log. At the end (or with `--export-only`) the EMA weights are
//! written in the diffusers layout to `--out`, with the loss curve as PNG.

use std::path::PathBuf;

use burn::module::Module;
use burn::tensor::Device;
use dmq::eval::cli::{FlagError, Flags};
use dmq::eval::data::fashion_mnist::{FashionMnist, Padding};
use dmq::models::defaults;
use dmq::models::dit::DiT;
use dmq::models::noise::NoiseRng;
use dmq::models::sampler::labels;
use dmq::models::scheduler::{BetaSchedule, NoiseSchedule};
use dmq::models::train::{diffusion_batch, eps_loss};
use dmq::models::unet::UNet2DModel;
use dmq::models::{Conditioning, Denoiser, ModelError};

#[path = "common/fit.rs"]
mod fit;
use fit::{Fit, cosine_lr, fit, loss_curve};

struct Args {
    model: String,
    steps: usize,
    batch: usize,
    lr: f64,
    every: usize,
    ckpt: PathBuf,
    out: PathBuf,
    export_only: bool,
    data: Option<String>,
    init: Option<PathBuf>,
    warmup: Option<usize>,
}

fn parse_args(f: &Flags) -> Result<Args, FlagError> {
    let model: String = f.get("model", "unet".into())?;
    let name = format!("{model}-fmnist");
    Ok(Args {
        steps: f.get("steps", 20_000)?,
        batch: f.get("batch", 32)?,
        lr: f.get("lr", if model == "dit" { 4e-4 } else { 5e-4 })?,
        every: f.get("every", 250)?,
        ckpt: f.get("ckpt", PathBuf::from("runs").join(&name))?,
        out: f.get("out", PathBuf::from("assets/models").join(&name))?,
        export_only: f.switch("export-only"),
        data: f.opt("data")?,
        init: f.opt("init")?,
        warmup: f.opt("warmup")?,
        model,
    })
}

/// A model the loop can train.
trait Trainable: Denoiser + Module + Clone {
    fn export(&self, dir: &std::path::Path) -> Result<(), ModelError>;
}

impl Trainable for UNet2DModel {
    fn export(&self, dir: &std::path::Path) -> Result<(), ModelError> {
        self.save_pretrained(dir)
    }
}

impl Trainable for DiT {
    fn export(&self, dir: &std::path::Path) -> Result<(), ModelError> {
        self.save_pretrained(dir)
    }
}

fn run<M: Trainable>(
    model: M,
    args: &Args,
    data: &FashionMnist,
    device: &Device,
) -> Result<(), ModelError> {
    let schedule = NoiseSchedule::new(BetaSchedule::Linear, 1000, 1e-4, 0.02)?;
    let num_classes = model.info().num_classes;
    let notes = if args.export_only {
        serde_json::Value::Null
    } else {
        serde_json::json!({"model": args.model, "batch": args.batch, "lr": args.lr, "steps": args.steps,
            "init": args.init.as_ref().map(|p| p.display().to_string())})
    };
    let run = Fit {
        label: &args.model,
        steps: if args.export_only { 0 } else { args.steps },
        every: args.every,
        lr: cosine_lr(
            args.lr,
            args.steps,
            args.warmup.unwrap_or(500.min(args.steps / 10)),
        ),
        ckpt: &args.ckpt,
        notes,
    };
    let (ema, state) = fit(
        model,
        dmq::models::train::adamw(0.0).init(),
        &run,
        &mut |model: &M, step| {
            // Per-step seeds make a resumed run draw exactly the batches it would have drawn.
            let mut rng = NoiseRng::new(0xD1F_F000 ^ (step as u64).wrapping_mul(0x9E37_79B9));
            let idx: Vec<usize> = (0..args.batch)
                .map(|_| rng.below(data.train.len()))
                .collect();
            let x0 = data
                .train
                .images_tensor(&idx, Padding::None, device)
                .expect("indices in range");
            let class = num_classes.map(|n| {
                // 10% label dropout to the null class trains the unconditional branch for CFG.
                let ys: Vec<usize> = idx
                    .iter()
                    .map(|&i| {
                        if rng.uniform() < 0.1 {
                            n
                        } else {
                            data.train.label(i).expect("label") as usize
                        }
                    })
                    .collect();
                labels(&ys, device)
            });
            let batch = diffusion_batch(x0, &schedule, &mut rng)?;
            let loss = eps_loss(model, &batch, class.map(Conditioning::Class))?;
            Ok((loss, String::new()))
        },
    )?;
    let shadow = ema.valid();
    std::fs::create_dir_all(&args.out).map_err(|source| ModelError::Io {
        path: args.out.clone(),
        source,
    })?;
    shadow.export(&args.out)?;
    // The noise schedule the model was trained with, for samplers (diffusers' scheduler config).
    let sched = serde_json::json!({"_class_name": "DDPMScheduler", "num_train_timesteps": 1000,
        "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear", "prediction_type": "epsilon"});
    dmq::quant::file::write_atomic(
        &args.out.join("scheduler_config.json"),
        sched.to_string().as_bytes(),
    )
    .map_err(|e| ModelError::Config(e.to_string()))?;
    let log = serde_json::to_vec_pretty(&state).expect("json");
    dmq::quant::file::write_atomic(&args.out.join("train_log.json"), &log)
        .map_err(|e| ModelError::Config(e.to_string()))?;
    dmq::eval::plot::line_chart_png(
        &args.out.join("loss.png"),
        "training loss (EMA)",
        "step",
        &[("loss", &loss_curve(&state))],
    )
    .map_err(|e| ModelError::Config(e.to_string()))?;
    eprintln!(
        "{}: {} steps in {:.0} s total; final smoothed loss {:.4}; EMA weights written to {}",
        args.model,
        state.step,
        state.wall_s,
        state.losses.last().map_or(f64::NAN, |&(_, l)| f64::from(l)),
        args.out.display()
    );
    Ok(())
}

fn main() {
    let args = Flags::parse_env(parse_args);
    let device = Device::flex().autodiff();
    let data = match &args.data {
        Some(d) => FashionMnist::load_from(d),
        None => FashionMnist::load(),
    }
    .unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    let result = match (args.model.as_str(), &args.init) {
        ("unet", None) => run(
            UNet2DModel::new(&defaults::unet_fmnist().expect("config"), &device).expect("model"),
            &args,
            &data,
            &device,
        ),
        ("unet", Some(dir)) => UNet2DModel::from_pretrained(dir, &device)
            .and_then(|m| run(m.set_require_grad(true), &args, &data, &device)),
        ("dit", None) => run(
            DiT::new(&defaults::dit_fmnist().expect("config"), &device)
                .expect("config")
                .zero_init_modulation(),
            &args,
            &data,
            &device,
        ),
        ("dit", Some(dir)) => DiT::from_pretrained(dir, &device)
            .and_then(|m| run(m.set_require_grad(true), &args, &data, &device)),
        (other, _) => {
            eprintln!("unknown --model {other}: use unet or dit");
            std::process::exit(2)
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
