//! Trains the embedded text-to-image model `t2i-fmnist` on Fashion-MNIST in two stages, each
//! resumable (re-running the same command resumes from the last checkpoint):
//!
//! ```text
//! cargo run --release --example train_t2i -- --stage vae [--steps 3000] [--batch 32]
//!     [--lr 1e-3] [--kl 1e-4] [--ckpt runs/t2i-vae/ckpt] [--out assets/models/t2i-fmnist] [--every 250]
//! cargo run --release --example train_t2i -- --stage unet [--steps 7000] [--batch 64]
//!     [--lr 5e-4] [--ckpt runs/t2i-unet/ckpt] [--out assets/models/t2i-fmnist]
//!     [--tokenizer crates/dmq-models/tests/fixtures/clip/tokenizer] [--cfg 4] [--eval-n 500]
//! ```
//! **Stage `vae`.** An `AutoencoderKL` (1 → 4 latent channels, block_out_channels 32/64/64:
//! 32×32 images, the 28×28 images padded by 2, to 8×8 latents) trained on the training split
//! with `MSE(x̂, x) + kl · KL(q(z|x) ‖ N(0, I))` (means over elements; the posterior sampled
//! with seeded noise). At the end the EMA weights are written to `--out/vae` in the diffusers
//! layout with `scaling_factor = 1 / std(z)` over 2048 training images (Stable Diffusion's
//! rule), the loss curve (`loss.png`), an original-vs-reconstruction grid
//! (`reconstructions.png`) and the reconstruction PSNR on the whole test split
//! (`train_log.json`, printed).
//!
//! **Stage `unet`** (needs `--out/vae`). A CLIP text encoder (width 64, 2 layers, 16 token
//! positions, the tokenizer's vocabulary) and a `UNet2DConditionModel` on the 4×8×8 latents
//! (block_out_channels 32/64/64, cross-attention at 8×8 and 4×4 and in the mid block), both
//! trained from scratch, jointly, with the ε-objective under Stable Diffusion's noise schedule
//! (`scaled_linear`, β 0.00085 → 0.012, 1000 steps). Jointly, because no pretrained text
//! encoder is at hand offline: a frozen random encoder would still separate the prompts, but
//! training it lets the prompt's class word dominate the states instead of the template.
//! Each image's prompt is a random template of the class name ("a photo of a {name}", "a
//! {name}", ...); 10% of the prompts are empty (the unconditional branch of classifier-free
//! guidance). The training latents are the VAE posterior's draws `(mean + std·ε)·s`, the
//! posterior of the whole training split computed once (cached beside the checkpoint, keyed
//! by the VAE weights). At the end the EMA weights are
//! written as a diffusers pipeline directory (`model_index.json`, `unet/`, `text_encoder/`,
//! `tokenizer/` with `model_max_length` 16, `scheduler/` PNDM as Stable Diffusion 1.x, `vae/`
//! from stage 1, and `calibration_prompts.txt`: every training prompt, for
//! `dmq quantize --prompts`), then loaded back through `dmq_pipeline::TextToImage` to draw a samples
//! grid with one row per class prompt and the prompt accuracy over `--eval-n` images at 20
//! DDIM steps (the metric classifier's share of images of the prompted class).
//!
//! Both stages: AdamW with warm-up and cosine decay, EMA of the weights (0.999), a resumable
//! checkpoint every `--every` steps, a progress bar with loss and ETA, a loss log and curve.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use dmq::eval::cli::{FlagError, Flags};
use dmq::eval::data::fashion_mnist::{CLASS_NAMES, FashionMnist, Padding};
use dmq::eval::progress::Progress;
use dmq::models::clip::{ClipActivation, ClipTextConfig, ClipTextModel};
use dmq::models::noise::NoiseRng;
use dmq::models::scheduler::{BetaSchedule, NoiseSchedule};
use dmq::models::train::{TrainState, diffusion_batch, eps_loss};
use dmq::models::unet::SampleSize;
use dmq::models::unet_cond::{UNet2DConditionConfig, UNet2DConditionModel};
use dmq::models::vae::{AutoencoderKL, AutoencoderKlConfig};
use dmq::models::{Conditioning, ForwardCtx, HostTensor, ModelError, StepContext};
use dmq::pipeline::scheduler::SamplerKind;
use dmq::pipeline::tokenizer::ClipTokenizer;
use dmq::pipeline::{GenerateOptions, TextToImage, t2i_eval};

#[path = "common/fit.rs"]
mod fit;
use fit::{Fit, cosine_lr, fit, loss_curve};

struct Args {
    stage: String,
    steps: usize,
    batch: usize,
    lr: f64,
    kl: f64,
    every: usize,
    ckpt: PathBuf,
    out: PathBuf,
    tokenizer: PathBuf,
    cfg: f64,
    eval_n: usize,
}

fn parse_args(f: &Flags) -> Result<Args, FlagError> {
    let stage: String = f.get("stage", "vae".into())?;
    let unet = stage == "unet";
    Ok(Args {
        steps: f.get("steps", if unet { 7_000 } else { 3_000 })?,
        batch: f.get("batch", if unet { 64 } else { 32 })?,
        lr: f.get("lr", if unet { 5e-4 } else { 1e-3 })?,
        kl: f.get("kl", 1e-4)?,
        every: f.get("every", 250)?,
        ckpt: f.get("ckpt", PathBuf::from(format!("runs/t2i-{stage}/ckpt")))?,
        out: f.get("out", PathBuf::from("assets/models/t2i-fmnist"))?,
        tokenizer: f.get(
            "tokenizer",
            PathBuf::from("crates/dmq-models/tests/fixtures/clip/tokenizer"),
        )?,
        cfg: f.get("cfg", 4.0)?,
        eval_n: f.get("eval-n", 500)?,
        stage,
    })
}

/// Prompt templates of the training prompts (the tokenizer's corpus has them all).
const TEMPLATES: [&str; 6] = [
    "a photo of a {}",
    "a {}",
    "a picture of a {}",
    "a black and white photo of a {}",
    "a small photo of the {}",
    "a grayscale image of a {}",
];

/// Token positions of the text encoder (the longest training prompt is 12 tokens with BOS
/// and EOS).
const TEXT_LEN: usize = 16;

/// Share of empty training prompts (the unconditional branch of CFG).
const UNCOND_P: f64 = 0.1;

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

/// The text encoder of `t2i-fmnist`: width 64, 4 heads, 2 layers, [`TEXT_LEN`] positions.
fn text_config(tok: &ClipTokenizer) -> Result<ClipTextConfig, ModelError> {
    let id = |t: &str| {
        tok.token_to_id(t)
            .ok_or_else(|| ModelError::Config(format!("the tokenizer has no {t} token")))
    };
    let eos = id("<|endoftext|>")?;
    Ok(ClipTextConfig {
        vocab_size: tok.vocab_size(),
        hidden_size: 64,
        intermediate_size: 256,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        max_position_embeddings: TEXT_LEN,
        hidden_act: ClipActivation::QuickGelu,
        layer_norm_eps: 1e-5,
        bos_token_id: Some(id("<|startoftext|>")?),
        eos_token_id: eos,
        pad_token_id: Some(eos),
    })
}

/// The UNet of `t2i-fmnist`: Stable Diffusion 1.x's block structure at 4×8×8.
fn unet_config() -> Result<UNet2DConditionConfig, ModelError> {
    UNet2DConditionConfig::from_json(&serde_json::json!({
        "_class_name": "UNet2DConditionModel",
        "sample_size": 8, "in_channels": 4, "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [32, 64, 64], "layers_per_block": 1,
        "attention_head_dim": 4, "cross_attention_dim": 64, "norm_num_groups": 8,
        "flip_sin_to_cos": true, "freq_shift": 0
    }))
}

/// The text encoder and the UNet, trained jointly (one optimiser, one EMA).
#[derive(Module, Debug)]
struct TextUNet {
    text: ClipTextModel,
    unet: UNet2DConditionModel,
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
    let run = Fit {
        label: "vae",
        steps: args.steps,
        every: args.every,
        lr: cosine_lr(args.lr, args.steps, 500.min(args.steps / 10)),
        ckpt: &args.ckpt,
        notes: serde_json::json!({"stage": "vae", "batch": args.batch, "lr": args.lr,
            "kl": args.kl, "steps": args.steps}),
    };
    let (ema, state) = fit(
        vae_config().init(device)?,
        dmq::models::train::adamw(0.0).init(),
        &run,
        &mut |model: &AutoencoderKL, step| {
            // per-step seeds: a resumed run draws exactly the batches it would have drawn
            let mut rng = NoiseRng::new(0x7A3_0000 ^ (step as u64).wrapping_mul(0x9E37_79B9));
            let idx: Vec<usize> = (0..args.batch)
                .map(|_| rng.below(data.train.len()))
                .collect();
            let x = data
                .train
                .images_tensor(&idx, Padding::To32, device)
                .map_err(config_err)?;
            let (mse, kl) = vae_loss(model, x, &mut rng)?;
            let status = format!(
                "(mse {:.4}, kl {:.2})",
                mse.clone().into_scalar::<f64>(),
                kl.clone().into_scalar::<f64>()
            );
            Ok((mse + kl.mul_scalar(args.kl), status))
        },
    )?;
    export_vae(
        ema.valid().to_device(plain),
        &state,
        data,
        &args.out.join("vae"),
        plain,
    )
}

/// Posterior means and standard deviations of the VAE over the whole training split,
/// `[N, 4·8·8]` each, row-major: 60000 images through the encoder, cached in `cache` under
/// the fingerprint of the VAE's weights (a resumed run reads them back; another VAE
/// recomputes).
fn training_latents(
    vae: &AutoencoderKL,
    vae_dir: &Path,
    data: &FashionMnist,
    cache: &Path,
    device: &Device,
) -> Result<(Vec<f32>, Vec<f32>, usize), ModelError> {
    use dmq::quant::QuantizedFile;
    let weights = vae_dir.join("diffusion_pytorch_model.safetensors");
    let fp = format!(
        "{:016x}",
        dmq::quant::fingerprint::fnv1a64(&std::fs::read(&weights).map_err(config_err)?)
    );
    let n = data.train.len();
    if let Ok(f) = QuantizedFile::load(cache)
        && f.metadata.get("vae") == Some(&fp)
        && let (Some((ms, mean)), Some((_, std))) = (f.float.get("mean"), f.float.get("std"))
        && ms.first() == Some(&n)
    {
        return Ok((mean.clone(), std.clone(), mean.len() / n));
    }
    let (mut mean, mut std) = (Vec::new(), Vec::new());
    let mut bar = Progress::new("encode", n as u64, 0);
    for start in (0..n).step_by(500) {
        let idx: Vec<usize> = (start..(start + 500).min(n)).collect();
        let x = data
            .train
            .images_tensor(&idx, Padding::To32, device)
            .map_err(config_err)?;
        let dist = vae.encode(x, &ctx())?;
        mean.extend(HostTensor::from_tensor(&dist.mean).data);
        std.extend(HostTensor::from_tensor(&dist.std).data);
        bar.set((start + idx.len()) as u64, String::new());
    }
    bar.finish();
    let per = mean.len() / n;
    let mut f = QuantizedFile::default();
    f.float.insert("mean".into(), (vec![n, per], mean.clone()));
    f.float.insert("std".into(), (vec![n, per], std.clone()));
    f.metadata.insert("vae".into(), fp);
    f.save(cache).map_err(config_err)?;
    Ok((mean, std, per))
}

fn train_unet(args: &Args, data: &FashionMnist, plain: &Device) -> Result<(), ModelError> {
    let device = &plain.clone().autodiff();
    let vae = AutoencoderKL::load(&args.out.join("vae"), plain)?;
    let scale = vae.scaling_factor() as f32;
    let tok = ClipTokenizer::from_dir(&args.tokenizer).map_err(config_err)?;
    let cache = PathBuf::from(format!("{}.latents.safetensors", args.ckpt.display()));
    let (mean, std, per) = training_latents(&vae, &args.out.join("vae"), data, &cache, plain)?;
    let lat = [4usize, 8, 8];
    if lat.iter().product::<usize>() != per {
        return Err(config_err(format!(
            "the VAE's latents have {per} values per image, the UNet takes 4×8×8"
        )));
    }
    let schedule = NoiseSchedule::new(BetaSchedule::ScaledLinear, 1000, 0.00085, 0.012)?;
    let model = TextUNet {
        text: text_config(&tok)?.init(device)?,
        unet: unet_config()?.init(device)?,
    };
    let run = Fit {
        label: "unet",
        steps: args.steps,
        every: args.every,
        lr: cosine_lr(args.lr, args.steps, 500.min(args.steps / 10)),
        ckpt: &args.ckpt,
        notes: serde_json::json!({"stage": "unet", "batch": args.batch, "lr": args.lr,
            "steps": args.steps, "uncond_p": UNCOND_P, "templates": TEMPLATES,
            "text_len": TEXT_LEN, "vae_scaling_factor": scale}),
    };
    let (ema, state) = fit(
        model,
        dmq::models::train::adamw(0.0).init(),
        &run,
        &mut |model: &TextUNet, step| {
            let mut rng = NoiseRng::new(0x7E0_0000 ^ (step as u64).wrapping_mul(0x9E37_79B9));
            let idx: Vec<usize> = (0..args.batch)
                .map(|_| rng.below(data.train.len()))
                .collect();
            // z₀ = (mean + std·ε)·s: a fresh posterior draw per use, as SD's training
            let mut z = Vec::with_capacity(idx.len() * per);
            for &i in &idx {
                for k in i * per..(i + 1) * per {
                    z.push((mean[k] + std[k] * rng.normal()) * scale);
                }
            }
            let z0 = Tensor::<4>::from_data(
                TensorData::new(z, [idx.len(), lat[0], lat[1], lat[2]]),
                device,
            );
            let prompts: Vec<String> = idx
                .iter()
                .map(|&i| {
                    let label = data.train.label(i).expect("label") as usize;
                    let template = TEMPLATES[rng.below(TEMPLATES.len())];
                    if rng.uniform() < UNCOND_P {
                        String::new()
                    } else {
                        template.replace("{}", &CLASS_NAMES[label].to_lowercase())
                    }
                })
                .collect();
            let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
            let ids = tok.encode_padded(&refs, TEXT_LEN).map_err(config_err)?;
            let states = model
                .text
                .forward(ClipTextModel::input_ids(&ids, device)?, &ctx())?
                .last_hidden_state;
            let batch = diffusion_batch(z0, &schedule, &mut rng)?;
            let loss = eps_loss(&model.unet, &batch, Some(Conditioning::text(states)))?;
            Ok((loss, String::new()))
        },
    )?;
    let ema = ema.valid().to_device(plain);
    write_pipeline(&ema, args)?;
    evaluate_pipeline(args, &state, plain)
}

/// Writes the pipeline directory `--out` (the VAE is already there from stage 1).
fn write_pipeline(model: &TextUNet, args: &Args) -> Result<(), ModelError> {
    let out = &args.out;
    model.unet.save_pretrained(&out.join("unet"))?;
    model.text.save_pretrained(&out.join("text_encoder"))?;
    let write = |path: PathBuf, v: &serde_json::Value| -> Result<(), ModelError> {
        let mut text = serde_json::to_string_pretty(v).map_err(config_err)?;
        text.push('\n');
        std::fs::create_dir_all(path.parent().expect("a file in a directory"))
            .map_err(config_err)?;
        dmq::quant::file::write_atomic(&path, text.as_bytes()).map_err(config_err)
    };
    // The tokenizer: the same vocabulary and merges, prompts padded to the encoder's length.
    let tok_dir = out.join("tokenizer");
    std::fs::create_dir_all(&tok_dir).map_err(config_err)?;
    let json = std::fs::read(args.tokenizer.join("tokenizer.json")).map_err(config_err)?;
    dmq::quant::file::write_atomic(&tok_dir.join("tokenizer.json"), &json).map_err(config_err)?;
    let cfg_path = args.tokenizer.join("tokenizer_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).map_err(config_err)?)
            .map_err(config_err)?;
    cfg["model_max_length"] = TEXT_LEN.into();
    write(tok_dir.join("tokenizer_config.json"), &cfg)?;
    write(
        out.join("scheduler/scheduler_config.json"),
        &serde_json::json!({
            "_class_name": "PNDMScheduler", "num_train_timesteps": 1000,
            "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "prediction_type": "epsilon", "set_alpha_to_one": false, "skip_prk_steps": true,
            "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": null,
            // as Stable Diffusion's: a DDIM built from this config must not clamp x̂₀ to
            // [-1, 1] (latents are not images; DDIMScheduler's default clips)
            "clip_sample": false
        }),
    )?;
    // every training prompt, for `dmq quantize --prompts` (calibration on the prompts the
    // model knows)
    let prompts: Vec<String> = TEMPLATES
        .iter()
        .flat_map(|t| {
            CLASS_NAMES
                .iter()
                .map(move |n| t.replace("{}", &n.to_lowercase()))
        })
        .collect();
    dmq::quant::file::write_atomic(
        &out.join("calibration_prompts.txt"),
        (prompts.join("\n") + "\n").as_bytes(),
    )
    .map_err(config_err)?;
    write(
        out.join("model_index.json"),
        &serde_json::json!({
            "_class_name": "StableDiffusionPipeline",
            "feature_extractor": [null, null], "image_encoder": [null, null],
            "requires_safety_checker": false, "safety_checker": [null, null],
            "scheduler": ["diffusers", "PNDMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]
        }),
    )
}

/// Loads `--out` back as a pipeline: one samples row per class prompt, the prompt accuracy
/// over `--eval-n` images at 20 DDIM steps (with and without CFG), the loss curve and the log.
fn evaluate_pipeline(args: &Args, state: &TrainState, device: &Device) -> Result<(), ModelError> {
    let pipe = TextToImage::load(&args.out, device).map_err(config_err)?;
    let classifier = dmq::eval::classifier::FmnistClassifier::load(
        Path::new("assets/models/fmnist-classifier"),
        device,
    )
    .map_err(config_err)?;
    let opts = |guidance: f64| GenerateOptions {
        steps: 20,
        guidance,
        seed: 2024,
        sampler: SamplerKind::Ddim,
    };
    // The grid: 8 images per class prompt, one row per prompt.
    let per_row = 8;
    let grid_prompts: Vec<String> = (0..CLASS_NAMES.len())
        .flat_map(|c| std::iter::repeat_n(c, per_row))
        .map(t2i_eval::class_prompt)
        .collect::<Result<_, _>>()
        .map_err(config_err)?;
    let sampler = pipe
        .scheduler
        .sampler(SamplerKind::Ddim, 20)
        .map_err(config_err)?;
    let grid = t2i_eval::generate_images(
        &pipe,
        &pipe.unet,
        &grid_prompts,
        &sampler,
        &opts(args.cfg),
        80,
        Some(t2i_eval::FMNIST_SIZE),
        device,
        &mut |_, _| {},
    )
    .map_err(config_err)?;
    let t = Tensor::<4>::from_data(
        TensorData::new(grid.data.clone(), grid.shape.clone()),
        device,
    );
    dmq::eval::image::save_grid_png(&args.out.join("samples.png"), t, per_row)
        .map_err(config_err)?;
    let prompts = t2i_eval::eval_prompts(args.eval_n).map_err(config_err)?;
    let mut accuracy = serde_json::Map::new();
    for guidance in [1.0, args.cfg] {
        let mut bar = Progress::new(&format!("eval cfg {guidance}"), prompts.len() as u64, 0);
        let images = t2i_eval::generate_images(
            &pipe,
            &pipe.unet,
            &prompts,
            &sampler,
            &opts(guidance),
            100,
            Some(t2i_eval::FMNIST_SIZE),
            device,
            &mut |done, _| bar.set(done as u64, String::new()),
        )
        .map_err(config_err)?;
        bar.finish();
        let (_, preds) =
            dmq::eval::harness::features(&classifier, &images, device).map_err(config_err)?;
        let want = dmq::eval::harness::sample_labels(preds.len(), CLASS_NAMES.len());
        let acc =
            preds.iter().zip(&want).filter(|(p, w)| p == w).count() as f64 / preds.len() as f64;
        eprintln!(
            "prompt accuracy at 20 DDIM steps, CFG {guidance}: {:.1}%",
            100.0 * acc
        );
        accuracy.insert(format!("cfg_{guidance}"), acc.into());
    }
    dmq::eval::plot::line_chart_png(
        &args.out.join("unet").join("loss.png"),
        "UNet + text encoder training loss (ε-MSE, smoothed)",
        "step",
        &[("loss", &loss_curve(state))],
    )
    .map_err(config_err)?;
    let log = serde_json::json!({"state": state, "prompt_accuracy_ddim20": accuracy,
        "eval_images": prompts.len(), "eval_seed": 2024, "eval_prompt": "a photo of a {name}"});
    dmq::quant::file::write_atomic(
        &args.out.join("unet").join("train_log.json"),
        serde_json::to_vec_pretty(&log).expect("json").as_slice(),
    )
    .map_err(config_err)?;
    eprintln!(
        "unet: {} steps in {:.0} s; pipeline written to {}",
        state.step,
        state.wall_s,
        args.out.display()
    );
    Ok(())
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
    dmq::eval::plot::line_chart_png(
        &dir.join("loss.png"),
        "VAE training loss (MSE + kl·KL, smoothed)",
        "step",
        &[("loss", &loss_curve(state))],
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
        "unet" => train_unet(&args, &data, &device),
        other => Err(ModelError::Config(format!(
            "--stage {other}: use vae, then unet"
        ))),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
