//! BinaryDM (1-bit weights, QAT on Fashion-MNIST) on the default models at W1A32, W1A8 and
//! W1A4, with the paper's ablation rows: vanilla binarization (`binary-baseline`), + EBB
//! (`binarydm-no-lrm`), + EBB + LRM (`binarydm`).
//!
//! ```text
//! cargo run --release --example binarydm -- [--model unet|dit|both] [--acts 32,8,4]
//!     [--methods binary-baseline,binarydm-no-lrm,binarydm] [--train-steps 2000] [--train-batch 16]
//!     [--lr 2e-4] [--transition 1000] [--samples 500] [--steps 20] [--cfg 1.5] [--batch 100]
//!     [--out docs/results] [--work runs/binarydm] [--models-dir assets/models]
//! ```
//!
//! Per model, activation width and method: QAT from the FP model (checkpointed under `--work`,
//! so an interrupted run resumes) through `dmq::pipeline::quantize`; the EMA model is written
//! as a self-contained `.dmq.safetensors` file (1-bit codes + σ per output channel, LSQ α, FP
//! edges, the trained norms and embeddings) and loaded back on its own, sampled and scored.
//! Rows go to `docs/results/binarydm.json` with OPs (BOPs/64 + FP FLOPs, §1.7) and the packed
//! model size against FP; `binarydm.md` tables them next to the FP row of `ptq.json`.

use std::path::PathBuf;

use burn::tensor::Device;
use dmq::calib::{QuantConfig, layer_bits, model_bytes};
use dmq::eval::cli::{FlagError, Flags};
use dmq::eval::data::fashion_mnist::DEFAULT_DIR;
use dmq::eval::plot::line_chart_png;
use dmq::eval::progress::StageBars;
use dmq::eval::report::{read_rows, upsert_row, write_markdown};
use dmq::finetune::BinaryDmConfig;
use dmq::pipeline::dmq_file::Provenance;
use dmq::pipeline::{
    AnyDenoiser, ImageSet, Method, MethodReport, RunOptions, SchedulerSpec, quantize,
};

mod common;
use common::deploy::{Ctx, comparison_rows, deploy_and_score};
use common::{
    Error, Model, ModelJob, calib_set, eval_sampling, for_each_model, list, model_list, show,
};

struct Args {
    models: Vec<String>,
    acts: Vec<u32>,
    methods: Vec<String>,
    train_steps: usize,
    train_batch: usize,
    lr: f64,
    transition: usize,
    samples: usize,
    steps: usize,
    cfg: f64,
    batch: usize,
    out: PathBuf,
    work: PathBuf,
    models_dir: PathBuf,
}

fn parse_args(f: &Flags) -> Result<Args, FlagError> {
    let model: String = f.get("model", "both".into())?;
    let acts: String = f.get("acts", "32,8,4".into())?;
    Ok(Args {
        models: model_list(model),
        acts: list(acts).iter().filter_map(|a| a.parse().ok()).collect(),
        methods: list(f.get("methods", "binary-baseline,binarydm-no-lrm,binarydm".into())?),
        train_steps: f.get("train-steps", 2000)?,
        train_batch: f.get("train-batch", 16)?,
        lr: f.get("lr", 2e-4)?,
        transition: f.get("transition", 1000)?,
        samples: f.get("samples", 500)?,
        steps: f.get("steps", 20)?,
        cfg: f.get("cfg", 1.5)?,
        batch: f.get("batch", 100)?,
        out: f.get("out", PathBuf::from("docs/results"))?,
        work: f.get("work", PathBuf::from("runs/binarydm"))?,
        models_dir: f.get("models-dir", PathBuf::from("assets/models"))?,
    })
}

fn command() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!(
        "cargo run --release --example binarydm -- {}",
        args.join(" ")
    )
}

/// OPs per image (§1.7): BOPs/64 for layers with both operands quantized, FLOPs (MACs) for
/// FP ones, summed over the sampling steps (both CFG branches).
fn ops_per_image<M: Model>(ctx: &Ctx<'_, M>, model: &M) -> f64 {
    let bits = layer_bits(model);
    let mut ops = 0.0;
    for c in &ctx.calls {
        let (w, a) = bits.get(&c.name).copied().unwrap_or((32, 32));
        let macs = c.macs as f64;
        ops += if w < 32 && a < 32 {
            macs * f64::from(w) * f64::from(a) / 64.0
        } else if w < 32 {
            // binary weights, FP activations: the paper counts b_a = 32
            macs * f64::from(w) * 32.0 / 64.0
        } else {
            macs
        };
    }
    ops * (ctx.steps * if ctx.cfg_calls { 2 } else { 1 }) as f64
}

fn run_model(
    fp: AnyDenoiser,
    name: &str,
    schedule: &SchedulerSpec,
    args: &Args,
    device: &Device,
) -> Result<(), Error> {
    let (cfg_scale, sched, spec) = eval_sampling(
        &fp,
        schedule,
        args.steps,
        args.samples,
        args.cfg,
        args.batch,
    )?;
    let ctx = Ctx::new(
        name,
        &fp,
        schedule,
        &sched,
        &spec,
        &args.work,
        args.out.join("binarydm"),
        command(),
        device,
    )?;
    let images = ImageSet::fashion_mnist_train(std::path::Path::new(DEFAULT_DIR))?;
    // quantize's finite-output check runs on a few FP-trajectory entries
    let (calib, _) = calib_set(&fp, &sched, name, (8, 2), cfg_scale, &args.work, device)?;
    let fp_ops = ops_per_image(&ctx, &fp);
    let fp_bytes = model_bytes(&fp, args.steps)?;
    let json = args.out.join("binarydm.json");
    for &a in &args.acts {
        for method in &args.methods {
            let (ebb, lrm) = match method.as_str() {
                "binary-baseline" => (false, false),
                "binarydm-no-lrm" => (true, false),
                "binarydm" => (true, true),
                other => {
                    return Err(format!(
                        "unknown method {other}: use binary-baseline, binarydm-no-lrm, binarydm"
                    )
                    .into());
                }
            };
            let cfg = BinaryDmConfig {
                ebb,
                lrm,
                act_bits: (a < 32).then_some(a),
                steps: args.train_steps,
                batch: args.train_batch,
                lr: args.lr,
                transition: Some(args.transition),
                ..BinaryDmConfig::default()
            };
            let tag = format!("{name}-W1A{a}");
            let preset = QuantConfig::wa(Some(1), (a < 32).then_some(a))?;
            let m = Method::Binarydm(cfg.clone());
            let opts = RunOptions::new(sched.clone())
                .with_schedule(schedule.ddim.clone())
                .with_work_dir(args.work.join(format!("{tag}-{method}-run")))
                .with_images(images.clone());
            let mut bars = StageBars::new(&format!("{tag} {method}"));
            let q = quantize(&fp, &preset, &calib, &m, &opts, device, &mut |p| {
                show(&mut bars, p)
            })?;
            bars.finish();
            let MethodReport::Binarydm(rep) = q.report else {
                return Err("quantize returned another method's report".into());
            };
            let ev = deploy_and_score(&ctx, q.model, &tag, method, &Provenance::new(&m, &preset))?;
            let curve: Vec<(f64, f64)> = rep
                .losses
                .iter()
                .map(|&(k, l)| (k as f64, f64::from(l)))
                .collect();
            line_chart_png(
                &args
                    .out
                    .join("binarydm")
                    .join(format!("{tag}-{method}-loss.png")),
                "smoothed ε-MSE",
                "iteration",
                &[("loss", &curve)],
            )?;
            // σ_II, the EBB gradient ratio and LRM's share of the loss through the run
            let diag = &rep.diagnostics;
            let series =
                |f: &dyn Fn(&dmq::finetune::BinaryDiag) -> Option<f64>| -> Vec<(f64, f64)> {
                    diag.iter()
                        .filter_map(|d| f(d).map(|v| (d.step as f64, v)))
                        .collect()
                };
            let sigma2 = series(&|d| d.sigma2_mean);
            let ratio = series(&|d| d.grad_ratio);
            let lrm_share = series(&|d| {
                let total = d.eps_loss + d.lrm_term + d.ebb_term;
                (total > 0.0).then(|| d.lrm_term / total)
            });
            line_chart_png(
                &args
                    .out
                    .join("binarydm")
                    .join(format!("{tag}-{method}-diagnostics.png")),
                "sigma_II mean, EBB grad ratio, LRM share of the loss",
                "iteration",
                &[
                    ("mean sigma_II", &sigma2),
                    ("grad ratio II/I", &ratio),
                    ("LRM share", &lrm_share),
                ],
            )?;
            let mean =
                |v: &[(f64, f64)]| v.iter().map(|p| p.1).sum::<f64>() / v.len().max(1) as f64;
            let ops = ops_per_image(&ctx, &ev.loaded);
            let bytes = model_bytes(&ev.loaded, args.steps)?;
            let s = &ev.scores;
            upsert_row(
                &json,
                ev.row(&ctx, &preset, method, rep.train_s, serde_json::json!({
                    "cfg": cfg_scale, "train_steps": cfg.steps, "train_batch": cfg.batch, "lr": cfg.lr,
                    "transition": cfg.transition, "tau": cfg.tau, "lrm_lambda": cfg.lrm_lambda, "lrm_k": cfg.lrm_k,
                    "ema_decay": cfg.ema_decay, "head_tail": rep.plan.head_tail, "ebb_layers": rep.plan.ebb.len(),
                    "vanilla_layers": rep.plan.vanilla.len(), "fp_edges": rep.plan.edges,
                    "binarized_weight_fraction": rep.plan.binarized_params as f64 / rep.plan.layer_params.max(1) as f64,
                    "ops_per_image": ops, "fp_ops_per_image": fp_ops, "ops_saving": fp_ops / ops.max(1.0),
                    "model_bytes": bytes, "fp_model_bytes": fp_bytes, "size_saving": fp_bytes as f64 / bytes.max(1) as f64,
                    "export_round_trip_max_abs": ev.round_trip, "sample_s": ev.sample_s,
                    "class_share": s.class_share, "resumed_steps": rep.resumed_steps,
                    "final_eps_mse": rep.losses.last().map(|l| l.1),
                    "lrm_share_mean": mean(&lrm_share),
                    "sigma2_first_last": [sigma2.first().map(|p| p.1), sigma2.last().map(|p| p.1)],
                    "grad_ratio_first_last": [ratio.first().map(|p| p.1), ratio.last().map(|p| p.1)],
                }))?,
            )?;
            eprintln!(
                "{tag} {method}: FD test {:.2}, FD fp {:.2}, PSNR {:.2} dB, SSIM {:.3}, class acc {:?}; OPs ×{:.1} and size ×{:.1} smaller than FP; {:.0} s",
                s.fd_test,
                s.fd_fp,
                s.fidelity.psnr,
                s.fidelity.ssim,
                s.class_acc,
                fp_ops / ops.max(1.0),
                fp_bytes as f64 / bytes.max(1) as f64,
                rep.train_s
            );
        }
    }
    Ok(())
}

fn write_table(args: &Args) -> Result<(), Error> {
    let Ok(mine) = read_rows(&args.out.join("binarydm.json")) else {
        return Ok(());
    };
    let ptq = read_rows(&args.out.join("ptq.json")).unwrap_or_default();
    let rows = comparison_rows(&mine, &[&ptq]);
    let header = format!(
        "# BinaryDM on the default models\n\n\
         QAT of 1-bit weights on Fashion-MNIST training images from the FP model ({} iterations, \
         batch {}, AdamW lr {}, EMA 0.999), ε-prediction loss. `binary-baseline` = σ·sign(w) \
         everywhere; `binarydm-no-lrm` adds the evolvable-basis binarizer in the head/tail blocks \
         (UNet: blocks at ≥ half the input resolution; DiT: first and last transformer blocks) \
         with L_EBB (τ = 9e-2) until iteration {} where the second basis is dropped; `binarydm` \
         adds LRM (per-block PCA on channels, K = 4, λ = 1e-4). First conv, last layer and the \
         timestep MLP stay FP; activations signed LSQ per tensor (α initialised once). The \
         scored model is the bitplane export loaded back. OPs = BOPs/64 + FP FLOPs and the \
         size saving are in each row's `extra` (`ops_saving`, `size_saving`); the size is \
         limited by the FP edges, norms and embeddings.\n\n\
         Machine: 2-core x86-64 (AVX-512), flex backend. Command: `{}`",
        args.train_steps,
        args.train_batch,
        args.lr,
        args.transition,
        mine.last().map(|r| r.command.as_str()).unwrap_or("")
    );
    write_markdown(
        &args.out.join("binarydm.md"),
        &header,
        &rows,
        "Wall s = QAT time (summed over resumed sessions).",
    )?;
    Ok(())
}

model_main!(parse_args, run_model, write_table);
