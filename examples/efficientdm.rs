//! EfficientDM (QALoRA + TALSQ, data-free distillation) on the default models at W8A8, W4A8
//! and W4A4, scored like the PTQ baselines and tabled next to them.
//!
//! ```text
//! cargo run --release --example efficientdm -- [--model unet|dit|both] [--presets W8A8,W4A8,W4A4]
//!     [--samples 500] [--steps 20] [--ft-steps 20] [--epochs 200] [--rank 32] [--train-cfg 1.5]
//!     [--cfg 1.5] [--calib-n 64] [--calib-steps 10] [--batch 100] [--out docs/results]
//!     [--work runs/ptq] [--models-dir assets/models]
//! ```
//!
//! Per model and preset: naive PTQ under the EfficientDM layer policy, fine-tuning on
//! `--ft-steps`-step DDIM (η = 1) trajectories for `--epochs` trajectories (checkpointed under
//! `--work`, so an interrupted run resumes), TALSQ moved to the `--steps` sampling schedule,
//! the merged integer export written to `--work` and **loaded back into a fresh FP model**,
//! and that loaded model is what gets sampled and scored. Rows go to
//! `docs/results/efficientdm.json`; `efficientdm.md` tables them with the FP, naive and
//! Q-Diffusion rows of `ptq.json` taken at the same samples and steps. Sample grids and loss
//! curves are PNGs under `docs/results/efficientdm/`.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use dmq::calib::{QuantConfig, export_layers, layer_bits, model_bytes};
use dmq::eval::classifier::FmnistClassifier;
use dmq::eval::cli::{FlagError, Flags};
use dmq::eval::data::fashion_mnist::{DEFAULT_DIR, Split, load_split};
use dmq::eval::harness::{Reference, SampleSpec, Scores, bitops_per_image, score};
use dmq::eval::plot::line_chart_png;
use dmq::eval::progress::Progress;
use dmq::eval::report::{ResultRow, git_commit, read_rows, upsert_row, write_markdown};
use dmq::finetune::{EfficientDmConfig, StudentOptions, build_student, efficientdm, finalize};
use dmq::infer::load_export;
use dmq::models::scheduler::{DdimConfig, DdimScheduler, Scheduler};
use dmq::models::{ForwardCtx, HostTensor, layer_inventory};

mod common;
use common::{
    Error, Model, ModelJob, calib_set, for_each_model, grid_png, list, model_list, sample_images,
};

struct Args {
    models: Vec<String>,
    presets: Vec<String>,
    samples: usize,
    steps: usize,
    ft_steps: usize,
    epochs: usize,
    rank: usize,
    train_cfg: f64,
    cfg: f64,
    calib_n: usize,
    calib_steps: usize,
    batch: usize,
    out: PathBuf,
    work: PathBuf,
    models_dir: PathBuf,
    score_init: bool,
}

fn parse_args(f: &Flags) -> Result<Args, FlagError> {
    let model: String = f.get("model", "both".into())?;
    Ok(Args {
        models: model_list(model),
        presets: list(f.get("presets", "W8A8,W4A8,W4A4".into())?),
        samples: f.get("samples", 500)?,
        steps: f.get("steps", 20)?,
        ft_steps: f.get("ft-steps", 20)?,
        epochs: f.get("epochs", 200)?,
        rank: f.get("rank", 32)?,
        train_cfg: f.get("train-cfg", 1.5)?,
        cfg: f.get("cfg", 1.5)?,
        calib_n: f.get("calib-n", 64)?,
        calib_steps: f.get("calib-steps", 10)?,
        batch: f.get("batch", 100)?,
        out: f.get("out", PathBuf::from("docs/results"))?,
        work: f.get("work", PathBuf::from("runs/ptq"))?,
        models_dir: f.get("models-dir", PathBuf::from("assets/models"))?,
        score_init: !f.switch("skip-init"),
    })
}

fn command() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!(
        "cargo run --release --example efficientdm -- {}",
        args.join(" ")
    )
}

/// Largest |a − b| between the deployed student and the export loaded back, at every sampling
/// step on calibration-shaped noise.
fn round_trip_error<M: Model>(
    a: &M,
    b: &M,
    sched: &DdimScheduler,
    device: &Device,
) -> Result<f32, Error> {
    let info = a.info();
    let x = dmq::models::noise::NoiseRng::new(5).tensor(
        [2, info.in_channels, info.sample_size, info.sample_size],
        device,
    );
    let class = info
        .num_classes
        .map(|_| dmq::models::sampler::labels(&[1, 2], device));
    let mut worst = 0f32;
    for k in 0..sched.num_steps() {
        let t = sched.timestep(k)? as f32;
        let ctx = ForwardCtx::new(dmq::models::StepContext {
            step: k,
            timestep: t as f64,
            num_steps: sched.num_steps(),
        });
        let tt = burn::tensor::Tensor::<1>::from_floats([t, t], device);
        let ya = HostTensor::from_tensor(&a.forward(x.clone(), tt.clone(), class.clone(), &ctx)?);
        let yb = HostTensor::from_tensor(&b.forward(x.clone(), tt, class.clone(), &ctx)?);
        for (p, q) in ya.data.iter().zip(&yb.data) {
            worst = worst.max((p - q).abs());
        }
    }
    Ok(worst)
}

/// What every scored model of one run shares.
struct Ctx<'a, M: Model> {
    args: &'a Args,
    name: &'a str,
    fp: &'a M,
    sched: &'a DdimScheduler,
    spec: &'a SampleSpec,
    classifier: &'a FmnistClassifier,
    reference: &'a Reference,
    fp_images: &'a HostTensor,
    calls: &'a [dmq::models::LayerCall],
    cfg_calls: bool,
    device: &'a Device,
}

/// A deployed model scored through its integer export.
struct Evaluated<M> {
    loaded: M,
    scores: Scores,
    bitops: f64,
    round_trip: f32,
    sample_s: f64,
}

impl<M: Model> Evaluated<M> {
    fn row(
        &self,
        ctx: &Ctx<'_, M>,
        preset: &QuantConfig,
        method: &str,
        wall_s: f64,
        extra: serde_json::Value,
    ) -> Result<ResultRow, Error> {
        let s = &self.scores;
        Ok(ResultRow {
            model: ctx.name.into(),
            method: method.into(),
            w_bits: preset.weight.map_or(32, |s| s.cost_bits()),
            a_bits: preset.act.map_or(32, |s| s.cost_bits()),
            steps: ctx.args.steps,
            samples: ctx.args.samples,
            fd_test: s.fd_test,
            fd_fp: s.fd_fp,
            psnr_fp: s.fidelity.psnr,
            ssim_fp: s.fidelity.ssim,
            class_acc: s.class_acc,
            bitops: self.bitops,
            model_bytes: model_bytes(&self.loaded, ctx.args.steps)?,
            wall_s,
            command: command(),
            commit: git_commit(),
            extra,
        })
    }
}

/// Exports `deployed` (merged integer layers), loads the export back into a fresh FP model,
/// checks the round trip, then samples and scores the loaded model; writes its sample grid
/// as `<out>/efficientdm/<tag>.png`.
fn deploy_and_score<M: Model>(
    ctx: &Ctx<'_, M>,
    deployed: M,
    tag: &str,
    method: &str,
) -> Result<Evaluated<M>, Error> {
    let (args, device) = (ctx.args, ctx.device);
    let file = export_layers(&deployed, args.steps)?;
    let export_path = args.work.join(format!("{tag}-{method}-int.safetensors"));
    file.save(&export_path)?;
    let mut loaded = ctx.fp.clone();
    load_export(
        &mut loaded,
        &dmq::quant::QuantizedFile::load(&export_path)?,
        device,
    )?;
    // loaded parameters are trainable by default: sampling would record an autodiff graph
    let loaded = loaded.no_grad();
    let round_trip = round_trip_error(&deployed, &loaded, ctx.sched, device)?;
    eprintln!(
        "{tag} {method}: export loaded back, max |Δ output| = {round_trip:.2e} over {} steps",
        args.steps
    );
    let (images, sample_s) = sample_images(
        &loaded,
        ctx.sched,
        ctx.spec,
        &format!("{tag} {method}"),
        device,
    )?;
    let scores = score(
        ctx.classifier,
        ctx.reference,
        &images,
        loaded.info().num_classes,
        device,
    )?;
    let bitops =
        bitops_per_image(ctx.calls, &layer_bits(&loaded), args.steps, ctx.cfg_calls).bitops;
    grid_png(
        &args
            .out
            .join("efficientdm")
            .join(format!("{tag}-{method}.png")),
        ctx.fp_images,
        &images,
        device,
    )?;
    Ok(Evaluated {
        loaded,
        scores,
        bitops,
        round_trip,
        sample_s,
    })
}

fn run_model<M: Model>(fp: M, name: &str, args: &Args, device: &Device) -> Result<(), Error> {
    let fp = fp.no_grad();
    let info = fp.info();
    let cfg_scale = if info.num_classes.is_some() {
        args.cfg
    } else {
        1.0
    };
    let sched = DdimScheduler::diffusers(&DdimConfig::new(), args.steps)?;
    let train = DdimScheduler::diffusers(&DdimConfig::new().with_eta(1.0), args.ft_steps)?;
    let eval_ts: Vec<f64> = sched.timesteps().iter().map(|&t| t as f64).collect();
    let spec = SampleSpec {
        n: args.samples,
        guidance: cfg_scale,
        seed: 2024,
        batch: args.batch,
    };
    let classifier = FmnistClassifier::load(Path::new("assets/models/fmnist-classifier"), device)?;
    let test = load_split(DEFAULT_DIR, Split::Test)?;
    let calls = layer_inventory(&fp, device)?;
    let cfg_calls = info.num_classes.is_some() && cfg_scale != 1.0;
    let (fp_images, _) = sample_images(&fp, &sched, &spec, &format!("{name} fp"), device)?;
    let reference = Reference::new(&classifier, &test, fp_images.clone(), device)?;
    let (calib, _) = calib_set(
        &fp,
        &sched,
        name,
        (args.calib_n, args.calib_steps),
        cfg_scale,
        &args.work,
        device,
    )?;
    let json = args.out.join("efficientdm.json");
    let ctx = Ctx {
        args,
        name,
        fp: &fp,
        sched: &sched,
        spec: &spec,
        classifier: &classifier,
        reference: &reference,
        fp_images: &fp_images,
        calls: &calls,
        cfg_calls,
        device,
    };
    for preset_name in &args.presets {
        let preset = QuantConfig::preset(preset_name)?;
        let cfg = EfficientDmConfig {
            student: StudentOptions {
                rank: args.rank,
                ..StudentOptions::default()
            },
            epochs: args.epochs,
            guidance: args.train_cfg,
            ..EfficientDmConfig::default()
        };
        if args.score_init {
            // the naive PTQ the fine-tuning starts from, under the same layer policy
            let t = std::time::Instant::now();
            let (init, _) = build_student(&fp, &preset, &calib, &eval_ts, &cfg.student, device)?;
            let init_s = t.elapsed().as_secs_f64();
            let ev = deploy_and_score(
                &ctx,
                finalize(init, &eval_ts)?,
                &format!("{name}-{preset_name}-init"),
                "efficientdm-init",
            )?;
            upsert_row(&json, ev.row(&ctx, &preset, "efficientdm-init", init_s, serde_json::json!({
                "cfg": cfg_scale, "what": "EfficientDM's naive PTQ initialisation (its layer policy), before fine-tuning",
                "export_round_trip_max_abs": ev.round_trip, "sample_s": ev.sample_s, "class_share": ev.scores.class_share,
            }))?)?;
        }
        let total = (args.epochs * args.ft_steps) as u64;
        let mut bar = Progress::new(&format!("{name} {preset_name} EfficientDM"), total, 0);
        let ck = args.work.join(format!("{name}-{preset_name}-efficientdm"));
        let (student, rep) = efficientdm(
            &fp,
            &preset,
            &calib,
            &train,
            &cfg,
            Some(&ck),
            device,
            &mut |p| {
                bar.set(
                    p.iteration as u64,
                    format!("epoch {} loss {:.4}", p.epoch + 1, p.loss),
                )
            },
        )?;
        bar.finish();
        let deployed = finalize(student, &eval_ts)?;
        let ev = deploy_and_score(
            &ctx,
            deployed,
            &format!("{name}-{preset_name}"),
            "efficientdm",
        )?;
        let (s, rt, sample_s) = (&ev.scores, ev.round_trip, ev.sample_s);
        let dir = args.out.join("efficientdm");
        let curve: Vec<(f64, f64)> = rep
            .epoch_losses
            .iter()
            .map(|&(k, l)| (k as f64, l as f64))
            .collect();
        line_chart_png(
            &dir.join(format!("{name}-{preset_name}-loss.png")),
            "distillation loss",
            "step",
            &[("loss", &curve)],
        )?;
        upsert_row(
            &json,
            ev.row(
                &ctx,
                &preset,
                "efficientdm",
                rep.init_s + rep.train_s,
                serde_json::json!({
                    "cfg": cfg_scale, "train_cfg": args.train_cfg, "ft_steps": args.ft_steps,
                    "epochs": args.epochs, "optimizer_steps": rep.steps, "rank": args.rank,
                    "init_s": rep.init_s, "train_s": rep.train_s, "sample_s": sample_s,
                    "lora_layers": rep.student.plan.lora.len(), "w8a8_frozen_layers": rep.student.plan.frozen.len(),
                    "fp_layers": rep.student.plan.fp.len(), "trainable_params": rep.student.trainable_params,
                    "export_round_trip_max_abs": rt, "class_share": s.class_share,
                    "first_epoch_loss": rep.epoch_losses.first().map(|l| l.1),
                    "last_epoch_loss": rep.epoch_losses.last().map(|l| l.1),
                }),
            )?,
        )?;
        let label = format!("{name} efficientdm {preset_name}");
        eprintln!(
            "{label}: FD test {:.2}, FD fp {:.2}, PSNR {:.2} dB, SSIM {:.3}, class acc {:?}, fine-tune {:.0} s",
            s.fd_test,
            s.fd_fp,
            s.fidelity.psnr,
            s.fidelity.ssim,
            s.class_acc,
            rep.init_s + rep.train_s
        );
    }
    Ok(())
}

fn write_table(args: &Args) -> Result<(), Error> {
    let mine = read_rows(&args.out.join("efficientdm.json"))?;
    let ptq = read_rows(&args.out.join("ptq.json")).unwrap_or_default();
    let mut rows: Vec<ResultRow> = Vec::new();
    let mut models: Vec<&str> = mine.iter().map(|r| r.model.as_str()).collect();
    models.dedup();
    for m in models {
        let ours: Vec<&ResultRow> = mine.iter().filter(|r| r.model == m).collect();
        let (steps, samples) = (ours[0].steps, ours[0].samples);
        let same = |r: &&ResultRow| r.model == m && r.steps == steps && r.samples == samples;
        rows.extend(
            ptq.iter()
                .filter(same)
                .filter(|r| r.method == "fp")
                .cloned(),
        );
        let mut bits: Vec<(u32, u32)> = ours.iter().map(|r| (r.w_bits, r.a_bits)).collect();
        bits.dedup();
        for (w, a) in bits {
            let at = |r: &&ResultRow| r.w_bits == w && r.a_bits == a;
            rows.extend(
                ptq.iter()
                    .filter(same)
                    .filter(|p| p.method != "fp")
                    .filter(at)
                    .cloned(),
            );
            rows.extend(ours.iter().copied().filter(at).cloned());
        }
    }
    let header = format!(
        "# EfficientDM on the default models\n\n\
         EfficientDM = naive PTQ (channel-wise max weights, per-tensor MSE activations) under the \
         §3.2 policy (first conv, last layer and timestep MLP at W8A8 frozen; shortcut and \
         downsample convs and attention matmuls FP), then QALoRA (rank {}) + TALSQ trained by \
         data-free distillation on {}-step DDIM (η = 1) trajectories, {} trajectories of batch 2 \
         (CFG {} for the DiT), AdamW with LoRA lr mean(Δ_w)/2500 per layer, Δ_w 1e-6, TALSQ 5e-4, \
         linear decay. The scored model is the merged integer export loaded back into the FP \
         model; `efficientdm-init` is that same pipeline on the naive initialisation (no fine-tuning). FP, naive and Q-Diffusion rows come from `ptq.json` at the same samples and steps \
         (see `ptq.md` for their settings; note that naive there quantizes the attention matmuls \
         and every layer, EfficientDM keeps the edges at 8 bits). Wall s = fine-tuning (with its \
         naive init) for EfficientDM, calibration/reconstruction for the baselines.\n\n\
         Machine: 2-core x86-64 (AVX-512), flex backend. Command: `{}`",
        args.rank,
        args.ft_steps,
        args.epochs,
        args.train_cfg,
        mine.last().map(|r| r.command.as_str()).unwrap_or("")
    );
    write_markdown(
        &args.out.join("efficientdm.md"),
        &header,
        &rows,
        "Per-row settings (optimizer steps, rank, export round-trip error, sampling time) are in the JSON `extra`.",
    )?;
    Ok(())
}

fn main() {
    let args = parse_args(&Flags::from_env()).unwrap_or_else(|e| Flags::exit_usage(e));
    let device = Device::flex().autodiff();
    let result = (|| -> Result<(), Error> {
        struct Job<'a>(&'a Args, &'a Device);
        impl ModelJob for Job<'_> {
            fn run<M: Model>(&mut self, fp: M, name: &str) -> Result<(), Error> {
                run_model(fp, name, self.0, self.1)
            }
        }
        for_each_model(
            &args.models,
            &args.models_dir,
            &device,
            &mut Job(&args, &device),
        )?;
        write_table(&args)
    })();
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
