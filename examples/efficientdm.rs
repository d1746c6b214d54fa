//! EfficientDM (QALoRA + TALSQ, data-free distillation) on the default models at W8A8, W4A8
//! and W4A4, scored like the PTQ baselines and tabled next to them.
//!
//! ```text
//! cargo run --release --example efficientdm -- [--model unet|dit|both] [--presets W8A8,W4A8,W4A4]
//!     [--samples 500] [--steps 20] [--ft-steps 20] [--epochs 200] [--rank 32] [--train-cfg 1.5]
//!     [--cfg 1.5] [--calib-n 64] [--calib-steps 10] [--batch 100] [--out docs/results]
//!     [--work runs/ptq] [--models-dir assets/models] [--policy reference|everything]
//!     [--target eps|ddim-mean]
//! ```
//!
//! `--target ddim-mean` distils towards the teacher's DDIM step mean (the paper's Eq. 7)
//! instead of its ε (the reference code): rows `efficientdm-mean` (`efficientdm-all-mean`).
//!
//! `--policy everything` runs EfficientDM on the baselines' layer set (every layer at the
//! preset, attention matmuls quantized: the same BitOPs as naive PTQ; rows `efficientdm-all`).
//!
//! Per model and preset: naive PTQ under the EfficientDM layer policy, fine-tuning on
//! `--ft-steps`-step DDIM (η = 1) trajectories for `--epochs` trajectories (checkpointed under
//! `--work`, so an interrupted run resumes), all through `dmq::pipeline::quantize`; TALSQ is
//! moved to the `--steps` sampling schedule, the self-contained `.dmq.safetensors` file is
//! written to `--work` and **loaded back on its own**, and that loaded model is what gets
//! sampled and scored. Rows go to
//! `docs/results/efficientdm.json`; `efficientdm.md` tables them with the FP, naive and
//! Q-Diffusion rows of `ptq.json` taken at the same samples and steps. Sample grids and loss
//! curves are PNGs under `docs/results/efficientdm/`.

use std::path::PathBuf;

use burn::module::Module;
use burn::tensor::Device;
use dmq::calib::QuantConfig;
use dmq::eval::cli::{FlagError, Flags};
use dmq::eval::plot::line_chart_png;
use dmq::eval::progress::StageBars;
use dmq::eval::report::{read_rows, upsert_row, write_markdown};
use dmq::finetune::{
    DistillTarget, EfficientDmConfig, LayerPolicy, StudentOptions, build_student, finalize,
};
use dmq::models::scheduler::Scheduler;
use dmq::pipeline::{AnyDenoiser, Method, MethodReport, RunOptions, SchedulerSpec, quantize};

mod common;
use common::deploy::{Ctx, comparison_rows, deploy_and_score, provenance};
use common::{Error, ModelJob, calib_set, eval_sampling, for_each_model, list, model_list, show};

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
    policy: String,
    target: DistillTarget,
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
        policy: f.get("policy", "reference".into())?,
        target: match f.get::<String>("target", "eps".into())?.as_str() {
            "eps" => DistillTarget::Eps,
            "ddim-mean" => DistillTarget::DdimMean,
            other => {
                eprintln!("--target {other}: use eps or ddim-mean");
                std::process::exit(2)
            }
        },
    })
}

/// `-mean` for the DDIM-mean target (row names, run directories), nothing for ε.
fn mean_suffix(t: DistillTarget) -> &'static str {
    match t {
        DistillTarget::Eps => "",
        DistillTarget::DdimMean => "-mean",
    }
}

fn command() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!(
        "cargo run --release --example efficientdm -- {}",
        args.join(" ")
    )
}

fn run_model(
    fp: AnyDenoiser,
    name: &str,
    schedule: &SchedulerSpec,
    args: &Args,
    device: &Device,
) -> Result<(), Error> {
    let fp = fp.no_grad();
    let (cfg_scale, sched, spec) = eval_sampling(
        &fp,
        schedule,
        args.steps,
        args.samples,
        args.cfg,
        args.batch,
    )?;
    let eval_ts: Vec<f64> = sched.timesteps().iter().map(|&t| t as f64).collect();
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
    let ctx = Ctx::new(
        name,
        &fp,
        schedule,
        &sched,
        &spec,
        &args.work,
        args.out.join("efficientdm"),
        command(),
        device,
    )?;
    for preset_name in &args.presets {
        let preset = QuantConfig::preset(preset_name)?;
        let cfg = EfficientDmConfig {
            student: StudentOptions {
                rank: args.rank,
                policy: match args.policy.as_str() {
                    "reference" => LayerPolicy::default(),
                    "everything" => LayerPolicy::quantize_everything(),
                    other => {
                        return Err(format!("--policy {other}: use reference or everything").into());
                    }
                },
                ..StudentOptions::default()
            },
            epochs: args.epochs,
            guidance: args.train_cfg,
            target: args.target,
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
                &provenance(
                    "efficientdm-init",
                    serde_json::to_value(&cfg.student)?,
                    &preset,
                ),
            )?;
            upsert_row(&json, ev.row(&ctx, &preset, "efficientdm-init", init_s, serde_json::json!({
                "cfg": cfg_scale, "what": "EfficientDM's naive PTQ initialisation (its layer policy), before fine-tuning",
                "export_round_trip_max_abs": ev.round_trip, "sample_s": ev.sample_s, "class_share": ev.scores.class_share,
            }))?)?;
        }
        let method = Method::Efficientdm {
            config: cfg.clone(),
            train_steps: args.ft_steps,
        };
        let opts = RunOptions::new(sched.clone())
            .with_schedule(schedule.ddim.clone())
            .with_work_dir(args.work.join(format!(
                "{name}-{preset_name}-efficientdm-{}{}-run",
                args.policy,
                mean_suffix(args.target)
            )));
        let mut bars = StageBars::new(&format!("{name} {preset_name} EfficientDM"));
        let q = quantize(&fp, &preset, &calib, &method, &opts, device, &mut |p| {
            show(&mut bars, p)
        })?;
        bars.finish();
        let MethodReport::Efficientdm(rep) = q.report else {
            return Err("quantize returned another method's report".into());
        };
        let row_method = format!(
            "{}{}",
            if args.policy == "everything" {
                "efficientdm-all"
            } else {
                "efficientdm"
            },
            mean_suffix(args.target)
        );
        let row_method = row_method.as_str();
        let ev = deploy_and_score(
            &ctx,
            q.model,
            &format!("{name}-{preset_name}"),
            row_method,
            &dmq::pipeline::dmq_file::Provenance::new(&method, &preset),
        )?;
        let (s, rt, sample_s) = (&ev.scores, ev.round_trip, ev.sample_s);
        let dir = args.out.join("efficientdm");
        let curve: Vec<(f64, f64)> = rep
            .epoch_losses
            .iter()
            .map(|&(k, l)| (k as f64, l as f64))
            .collect();
        line_chart_png(
            &dir.join(if args.policy == "everything" {
                format!("{name}-{preset_name}-all-loss.png")
            } else {
                format!("{name}-{preset_name}-loss.png")
            }),
            "distillation loss",
            "step",
            &[("loss", &curve)],
        )?;
        upsert_row(
            &json,
            ev.row(
                &ctx,
                &preset,
                row_method,
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
    let rows = comparison_rows(&mine, &[&ptq]);
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

model_main!(parse_args, run_model, write_table);
