//! Trains the embedded text-to-image model `t2i-fmnist` on Fashion-MNIST, stage by stage.
//! This file holds the first stage, the VAE:
//!
//! ```text
//! cargo run --release --example train_t2i -- --stage vae [--steps 20000] [--batch 32]
//!     [--lr 1e-3] [--kl 1e-4] [--ckpt runs/t2i-vae] [--out assets/models/t2i-fmnist] [--every 250]
//! ```
//! An `AutoencoderKL` (1 → 4 latent channels, block_out_channels 32/64/64: 32×32 images, the
//! 28×28 digits padded by 2, to 8×8 latents) trained on the Fashion-MNIST training split with
//! `MSE(x̂, x) + kl · KL(q(z|x) ‖ N(0, I))` (means over elements; the posterior sampled with
//! seeded noise). AdamW with warm-up and cosine decay, EMA of the weights (0.999), a resumable
//! checkpoint every `--every` steps (re-running the same command resumes), a progress bar with
//! loss and ETA, a loss log. At the end the EMA weights are written to `--out/vae` in the
//! diffusers layout with `scaling_factor = 1 / std(z)` over 2048 training images (Stable
//! Diffusion's rule), the loss curve (`loss.png`), an original-vs-reconstruction grid
//! (`reconstructions.png`) and the reconstruction PSNR on the whole test split
//! (`train_log.json`, printed).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use dmq::eval::cli::{FlagError, Flags};
use dmq::eval::data::fashion_mnist::{FashionMnist, Padding};
use dmq::eval::progress::Progress;
use dmq::models::noise::NoiseRng;
use dmq::models::train::{Checkpoint, Ema, LrSchedule, TrainState};
use dmq::models::unet::SampleSize;
use dmq::models::vae::{AutoencoderKL, AutoencoderKlConfig};
use dmq::models::{ForwardCtx, HostTensor, ModelError, StepContext};

struct Args {
    stage: String,
    steps: usize,
    batch: usize,
    lr: f64,
    kl: f64,
    every: usize,
    ckpt: PathBuf,
    out: PathBuf,
}

fn parse_args(f: &Flags) -> Result<Args, FlagError> {
    Ok(Args {
        stage: f.get("stage", "vae".into())?,
        steps: f.get("steps", 20_000)?,
        batch: f.get("batch", 32)?,
        lr: f.get("lr", 1e-3)?,
        kl: f.get("kl", 1e-4)?,
        every: f.get("every", 250)?,
        ckpt: f.get("ckpt", PathBuf::from("runs/t2i-vae"))?,
        out: f.get("out", PathBuf::from("assets/models/t2i-fmnist"))?,
    })
}

/// The VAE of `t2i-fmnist` (module docs).
fn vae_config() -> AutoencoderKlConfig {
    AutoencoderKlConfig {
        in_channels: 1,
        out_channels: 1,
        down_block_types: vec!["DownEncoderBlock2D".into(); 3],
        up_block_types: vec!["UpDecoderBlock2D".into(); 3],
        block_out_channels: vec![32, 64, 64],
        layers_per_block: 1,
        latent_channels: 4,
        norm_num_groups: 8,
        sample_size: Some(SampleSize::Square(32)),
        scaling_factor: 1.0,
        ..AutoencoderKlConfig::default()
    }
}

fn ctx() -> ForwardCtx<'static> {
    ForwardCtx::new(StepContext::single(0.0))
}

fn config_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Config(e.to_string())
}

/// `(MSE, KL)` of one batch: the posterior sampled with `noise`, both means over elements.
fn vae_loss(
    vae: &AutoencoderKL,
    x: Tensor<4>,
    rng: &mut NoiseRng,
) -> Result<(Tensor<1>, Tensor<1>), ModelError> {
    let dist = vae.encode(x.clone(), &ctx())?;
    let noise = rng.tensor(dist.mean.dims(), &x.device());
    let z = dist.sample(noise)?;
    let recon = vae.decode(z, &ctx())?;
    let mse = (recon - x).powi_scalar(2).mean();
    let kl = (dist.mean.clone().powi_scalar(2) + dist.logvar.clone().exp() - dist.logvar - 1.0)
        .mean()
        .mul_scalar(0.5);
    Ok((mse, kl))
}

/// Reconstruction PSNR (dB, images in [-1, 1]) over the test split, from the posterior mean.
fn test_psnr(vae: &AutoencoderKL, data: &FashionMnist, device: &Device) -> Result<f64, ModelError> {
    let n = data.test.len();
    let mut se = 0.0f64;
    let mut count = 0usize;
    for start in (0..n).step_by(250) {
        let idx: Vec<usize> = (start..(start + 250).min(n)).collect();
        let x = data
            .test
            .images_tensor(&idx, Padding::To32, device)
            .map_err(config_err)?;
        let recon = vae.reconstruct(x.clone(), None, &ctx())?.clamp(-1.0, 1.0);
        let (a, b) = (HostTensor::from_tensor(&recon), HostTensor::from_tensor(&x));
        se += a
            .data
            .iter()
            .zip(&b.data)
            .map(|(p, q)| f64::from(p - q).powi(2))
            .sum::<f64>();
        count += a.data.len();
    }
    Ok(10.0 * (4.0 / (se / count as f64).max(1e-30)).log10())
}

/// `1 / std(z)` of the posterior means of 2048 training images.
fn latent_scale(
    vae: &AutoencoderKL,
    data: &FashionMnist,
    device: &Device,
) -> Result<f64, ModelError> {
    let mut vals = Vec::new();
    for start in (0..2048).step_by(256) {
        let idx: Vec<usize> = (start..start + 256).collect();
        let x = data
            .train
            .images_tensor(&idx, Padding::To32, device)
            .map_err(config_err)?;
        vals.extend(HostTensor::from_tensor(&vae.encode(x, &ctx())?.mode()).data);
    }
    let n = vals.len() as f64;
    let mean = vals.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = vals
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    Ok(1.0 / var.sqrt().max(1e-6))
}

fn train_vae(args: &Args, data: &FashionMnist, plain: &Device) -> Result<(), ModelError> {
    let device = &plain.clone().autodiff();
    let mut model = vae_config().init(device)?;
    let lr = LrSchedule {
        peak: args.lr,
        final_lr: args.lr * 0.05,
        warmup: 500.min(args.steps / 10),
        total: args.steps,
        cosine: true,
    };
    let mut optim = dmq::models::train::adamw(0.0).init();
    let mut ema = Ema::new(&model, 0.999);
    let mut state = TrainState {
        notes: serde_json::json!({"stage": "vae", "batch": args.batch, "lr": args.lr,
            "kl": args.kl, "steps": args.steps}),
        ..TrainState::default()
    };
    let ckpt = Checkpoint::new(&args.ckpt);
    if let Some((m, e, o, s)) = ckpt.load(model.clone(), ema.shadow().clone(), optim.clone())? {
        eprintln!(
            "resuming {} at step {} ({:.0} s trained so far)",
            args.ckpt.display(),
            s.step,
            s.wall_s
        );
        model = m;
        ema = Ema::resume(e, 0.999, s.ema_updates);
        optim = o;
        state = s;
    }
    let mut bar = Progress::new("vae", args.steps as u64, state.step as u64);
    let session = Instant::now();
    let wall0 = state.wall_s;
    let mut smooth = None::<f64>;
    while state.step < args.steps {
        let step = state.step;
        // per-step seeds: a resumed run draws exactly the batches it would have drawn
        let mut rng = NoiseRng::new(0x7A3_0000 ^ (step as u64).wrapping_mul(0x9E37_79B9));
        let idx: Vec<usize> = (0..args.batch)
            .map(|_| rng.below(data.train.len()))
            .collect();
        let x = data
            .train
            .images_tensor(&idx, Padding::To32, device)
            .map_err(config_err)?;
        let (mse, kl) = vae_loss(&model, x, &mut rng)?;
        let loss = mse.clone() + kl.clone().mul_scalar(args.kl);
        let l = loss.clone().into_scalar::<f64>();
        if !l.is_finite() {
            return Err(ModelError::Config(format!(
                "loss became {l} at step {step}; lower --lr"
            )));
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(lr.at(step), model, grads);
        ema.update(&model);
        state.step += 1;
        state.ema_updates = ema.updates();
        let s = smooth.map_or(l, |s| 0.98 * s + 0.02 * l);
        smooth = Some(s);
        if state.step.is_multiple_of(10) {
            state.losses.push((state.step, s as f32));
        }
        bar.set(
            state.step as u64,
            format!(
                "loss {s:.4} (mse {:.4}, kl {:.2})",
                mse.into_scalar::<f64>(),
                kl.into_scalar::<f64>()
            ),
        );
        if state.step.is_multiple_of(args.every) || state.step == args.steps {
            state.wall_s = wall0 + session.elapsed().as_secs_f64();
            ckpt.save(&model, ema.shadow(), &optim, &state)?;
        }
    }
    bar.finish();
    state.wall_s = wall0 + session.elapsed().as_secs_f64();
    let vae = ema.shadow().valid().to_device(plain);
    export_vae(vae, &state, data, &args.out.join("vae"), plain)
}

/// Writes the trained VAE with its latent scale, curve, reconstructions and test PSNR.
fn export_vae(
    vae: AutoencoderKL,
    state: &TrainState,
    data: &FashionMnist,
    dir: &Path,
    device: &Device,
) -> Result<(), ModelError> {
    let scale = latent_scale(&vae, data, device)?;
    let mut vae = vae;
    vae.set_scaling_factor(scale)?;
    let psnr = test_psnr(&vae, data, device)?;
    vae.save_pretrained(dir)?;
    let idx: Vec<usize> = (0..16).collect();
    let x = data
        .test
        .images_tensor(&idx, Padding::To32, device)
        .map_err(config_err)?;
    let recon = vae.reconstruct(x.clone(), None, &ctx())?.clamp(-1.0, 1.0);
    dmq::pipeline::eval::grid_png(
        &dir.join("reconstructions.png"),
        &[
            &HostTensor::from_tensor(&x),
            &HostTensor::from_tensor(&recon),
        ],
        device,
    )
    .map_err(config_err)?;
    let curve: Vec<(f64, f64)> = state
        .losses
        .iter()
        .map(|&(s, l)| (s as f64, l as f64))
        .collect();
    dmq::eval::plot::line_chart_png(
        &dir.join("loss.png"),
        "VAE training loss (MSE + kl·KL, smoothed)",
        "step",
        &[("loss", &curve)],
    )
    .map_err(config_err)?;
    let log = serde_json::json!({"state": state, "scaling_factor": scale, "test_psnr_db": psnr,
        "test_images": data.test.len()});
    dmq::quant::file::write_atomic(
        &dir.join("train_log.json"),
        serde_json::to_vec_pretty(&log).expect("json").as_slice(),
    )
    .map_err(config_err)?;
    eprintln!(
        "vae: {} steps in {:.0} s; test reconstruction PSNR {psnr:.2} dB over {} images; scaling_factor {scale:.4}; written to {}",
        state.step,
        state.wall_s,
        data.test.len(),
        dir.display()
    );
    Ok(())
}

fn main() {
    let args = Flags::parse_env(parse_args);
    let device = Device::flex();
    let data = FashionMnist::load().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    let result = match args.stage.as_str() {
        "vae" => train_vae(&args, &data, &device),
        other => Err(ModelError::Config(format!(
            "--stage {other}: this example trains the vae stage"
        ))),
    };
    if let Err(e) = result {
        eprintln!("{e}");
        std::process::exit(1);
    }
}
