//! QuEST (Q-Diffusion AdaRound weights, timestep-grouped activations, time-embedding alignment
//! and activation-sensitive layer fine-tuning) on the default models at W4A4, W4A8 and W8A8,
//! scored like the PTQ baselines and tabled next to Q-Diffusion and EfficientDM.
//!
//! ```text
//! cargo run --release --example quest -- [--model unet|dit|both] [--presets W4A4,W4A8,W8A8]
//!     [--samples 500] [--steps 20] [--cfg 1.5] [--calib-n 64] [--calib-steps 10]
//!     [--a-epochs 20] [--b-epochs 10] [--b-chunks 8] [--weight-lr 1e-5] [--act-lr-a 1e-5] [--act-lr-b 1e-4]
//!     [--loss reference|paper]
//!     [--recon-iters 200] [--sensitive GLOB,GLOB] [--sens-bits 4,6,8] [--skip-sensitivity] [--skip-init]
//!     [--batch 100] [--out docs/results] [--work runs/ptq] [--models-dir assets/models]
//! ```
//!
//! Per model: the layer-sensitivity sweep (table on stderr, `quest/<model>-sensitivity.png`
//! and `.json`). Per preset: the Q-Diffusion weight rounding is taken from the `ptq`
//! example's run directory in `--work` (`<model>-<preset>-qdiffusion/`, or any preset
//! with the same weight bits: the weight phase does not depend on the activation bits), and
//! reconstructed weights-only with `--recon-iters` when there is none; then QuEST
//! (checkpointed under `--work`), the integer export loaded back into the FP model, sampled and
//! scored. `--sensitive` replaces the stage-B layer patterns (e.g. by the sweep's most
//! sensitive layers). `quest-init` rows score the student before fine-tuning (same weights and
//! activation layout). Rows go to `docs/results/quest.json`, the table to `quest.md`.

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use dmq::calib::{QuantConfig, ReconCheckpoint, ReconOptions, qdiffusion};
use dmq::eval::cli::{FlagError, Flags};
use dmq::eval::plot::{bar_chart_png, line_chart_png};
use dmq::eval::progress::Progress;
use dmq::eval::report::{read_rows, upsert_row, write_markdown};
use dmq::finetune::{
    QuestConfig, QuestLoss, SelectionRules, SensitivityOptions, SensitivityRow, layer_sensitivity,
    quest_finetune, quest_student_with, quest_tuned_scalars, select_layers, sensitivity_by_set,
};
use dmq::models::{Denoiser, layer_inventory};

mod common;
use common::deploy::{Ctx, comparison_rows, deploy_and_score, provenance};
use common::{Error, Model, ModelJob, calib_set, eval_sampling, for_each_model, list, model_list};
use dmq::pipeline::{AnyDenoiser, SchedulerSpec};

struct Args {
    models: Vec<String>,
    presets: Vec<String>,
    samples: usize,
    steps: usize,
    cfg: f64,
    calib_n: usize,
    calib_steps: usize,
    a_epochs: usize,
    b_epochs: usize,
    b_chunks: usize,
    weight_lr: f64,
    act_lr_a: f64,
    act_lr_b: f64,
    loss: QuestLoss,
    recon_iters: usize,
    sensitive: Vec<String>,
    sens_bits: Vec<u32>,
    sensitivity: bool,
    score_init: bool,
    batch: usize,
    out: PathBuf,
    work: PathBuf,
    models_dir: PathBuf,
}

fn parse_args(f: &Flags) -> Result<Args, FlagError> {
    let model: String = f.get("model", "both".into())?;
    let loss: String = f.get("loss", "reference".into())?;
    let sens: String = f.get("sens-bits", "4,6,8".into())?;
    Ok(Args {
        models: model_list(model),
        presets: list(f.get("presets", "W4A4,W4A8,W8A8".into())?),
        samples: f.get("samples", 500)?,
        steps: f.get("steps", 20)?,
        cfg: f.get("cfg", 1.5)?,
        calib_n: f.get("calib-n", 64)?,
        calib_steps: f.get("calib-steps", 10)?,
        a_epochs: f.get("a-epochs", 20)?,
        b_epochs: f.get("b-epochs", 10)?,
        b_chunks: f.get("b-chunks", 8)?,
        weight_lr: f.get("weight-lr", QuestConfig::default().weight_lr)?,
        act_lr_a: f.get("act-lr-a", QuestConfig::default().act_lr_a)?,
        act_lr_b: f.get("act-lr-b", QuestConfig::default().act_lr_b)?,
        loss: match loss.as_str() {
            "paper" => QuestLoss::Paper,
            _ => QuestLoss::Reference,
        },
        recon_iters: f.get("recon-iters", 200)?,
        sensitive: list(f.get("sensitive", String::new())?),
        sens_bits: list(sens).iter().filter_map(|b| b.parse().ok()).collect(),
        sensitivity: !f.switch("skip-sensitivity"),
        score_init: !f.switch("skip-init"),
        batch: f.get("batch", 100)?,
        out: f.get("out", PathBuf::from("docs/results"))?,
        work: f.get("work", PathBuf::from("runs/ptq"))?,
        models_dir: f.get("models-dir", PathBuf::from("assets/models"))?,
    })
}

fn command() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("cargo run --release --example quest -- {}", args.join(" "))
}

/// A Q-Diffusion checkpoint with a finished weight phase at `preset`'s weight bits: the
/// `ptq` example's (any preset with those weight bits), else a weights-only reconstruction.
fn weights_checkpoint<M: Model>(
    fp: &M,
    name: &str,
    preset: &QuantConfig,
    calib: &dmq::calib::CalibSet,
    args: &Args,
    device: &Device,
) -> Result<ReconCheckpoint, Error> {
    let w = preset.weight.map_or(32, |s| s.cost_bits());
    for a in [4, 8, 16, 32] {
        // the ptq example's run directory (dmq::pipeline::quantize's checkpoint name)
        let p = args
            .work
            .join(format!("{name}-W{w}A{a}-qdiffusion"))
            .join("qdiffusion-recon.safetensors");
        if p.exists() {
            eprintln!("{name}: Q-Diffusion weight rounding from {}", p.display());
            return Ok(ReconCheckpoint::new(p));
        }
    }
    let path = args
        .work
        .join(format!("{name}-W{w}-qdiffusion-weights.safetensors"));
    let ck = ReconCheckpoint::new(&path);
    let weights_only = QuantConfig {
        act: None,
        matmul: None,
        softmax: None,
        ..preset.clone()
    };
    let opts = ReconOptions {
        weight_iters: args.recon_iters,
        ..ReconOptions::default()
    };
    let mut bar = Progress::new(&format!("{name} W{w} AdaRound weights"), 1_000_000, 0);
    qdiffusion(
        fp,
        fp.clone(),
        &weights_only,
        calib,
        &opts,
        Some(&ck),
        device,
        &mut |p| {
            let total = (p.units * p.iters.max(1)) as u64;
            bar.set(
                (p.unit * p.iters + p.iter) as u64 * 1_000_000 / total.max(1),
                format!("{}/{} {} loss {:.4}", p.unit + 1, p.units, p.name, p.loss),
            );
        },
    )?;
    bar.finish();
    Ok(ck)
}

fn sensitivity<M: Model>(
    fp: &M,
    name: &str,
    calib: &dmq::calib::CalibSet,
    args: &Args,
    device: &Device,
) -> Result<(), Error> {
    let opts = SensitivityOptions {
        bits: args.sens_bits.clone(),
        ..SensitivityOptions::default()
    };
    let t = Instant::now();
    let calls = layer_inventory(fp, device)?;
    let mut bar = Progress::new(&format!("{name} sensitivity"), calls.len() as u64, 0);
    let rows: Vec<SensitivityRow> =
        layer_sensitivity(fp, calib, &opts, device, &mut |done, _, layer| {
            bar.set(done as u64, layer.to_string())
        })?;
    bar.finish();
    let structure = fp.structure();
    let sel = select_layers(
        &structure,
        &calls,
        &SelectionRules::for_structure(&structure),
    )?;
    let all: Vec<String> = rows.iter().map(|r| r.layer.clone()).collect();
    let rest: Vec<String> = all
        .iter()
        .filter(|n| !sel.time_embedding.contains(n) && !sel.sensitive.contains(n))
        .cloned()
        .collect();
    let sets = [
        ("time-embedding (stage A)", &sel.time_embedding[..]),
        ("activation-sensitive (stage B)", &sel.sensitive[..]),
        ("all other layers", &rest[..]),
    ];
    let summary = sensitivity_by_set(&rows, &sets);
    eprintln!(
        "{name}: mean relative ε error with one layer quantized ({:.0} s)",
        t.elapsed().as_secs_f64()
    );
    eprintln!("| layer set | bits | weights only | input activations only |");
    eprintln!("|---|---|---|---|");
    for (set, b, w, a) in &summary {
        eprintln!("| {set} | {b} | {w:.2e} | {a:.2e} |");
    }
    let mut top: Vec<&SensitivityRow> = rows
        .iter()
        .filter(|r| Some(&r.bits) == args.sens_bits.iter().min())
        .collect();
    top.sort_by(|a, b| b.act_err.total_cmp(&a.act_err));
    eprintln!(
        "{name}: most activation-sensitive layers at {:?} bits:",
        args.sens_bits.iter().min()
    );
    for r in top.iter().take(8) {
        eprintln!(
            "  {:<48} act {:.2e}  weight {:?}",
            r.layer, r.act_err, r.weight_err
        );
    }
    let dir = args.out.join("quest");
    std::fs::create_dir_all(&dir)?;
    // bars: per bit-width (one colour each), every layer's activation error in call order
    let mut bars = Vec::new();
    for &b in &args.sens_bits {
        bars.extend(
            rows.iter()
                .filter(|r| r.bits == b)
                .map(|r| r.act_err.max(1e-12).log10()),
        );
    }
    let per = rows.iter().filter(|r| r.bits == args.sens_bits[0]).count();
    bar_chart_png(&dir.join(format!("{name}-sensitivity.png")), &bars, per)?;
    let json = serde_json::json!({
        "model": name, "options": opts, "rows": rows,
        "by_set": summary.iter().map(|(s, b, w, a)| serde_json::json!({"set": s, "bits": b, "weight_err": w, "act_err": a})).collect::<Vec<_>>(),
        "command": command(), "wall_s": t.elapsed().as_secs_f64(),
    });
    dmq::quant::file::write_atomic(
        &dir.join(format!("{name}-sensitivity.json")),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    Ok(())
}

/// QuEST in its stages (`quest_student_with`, then `quest_finetune`) rather than through
/// `dmq::pipeline::quantize`, which runs them in one go: the table scores the student
/// between the two (`quest-init`) and the ablations change the stages' settings.
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
    let (calib, _) = calib_set(
        &fp,
        &sched,
        name,
        (args.calib_n, args.calib_steps),
        cfg_scale,
        &args.work,
        device,
    )?;
    if args.sensitivity {
        sensitivity(&fp, name, &calib, args, device)?;
    }
    if args.presets.is_empty() {
        return Ok(());
    }
    let json = args.out.join("quest.json");
    let ctx = Ctx::new(
        name,
        &fp,
        schedule,
        &sched,
        &spec,
        &args.work,
        args.out.join("quest"),
        command(),
        device,
    )?;
    for preset_name in &args.presets {
        let preset = QuantConfig::preset(preset_name)?;
        let weights = weights_checkpoint(&fp, name, &preset, &calib, args, device)?;
        let calls_rules = SelectionRules::for_structure(&fp.structure());
        let rules = (!args.sensitive.is_empty()).then(|| SelectionRules {
            sensitive: args.sensitive.clone(),
            ..calls_rules
        });
        let cfg = QuestConfig {
            rules,
            stage_a_epochs: args.a_epochs,
            stage_b_epochs: args.b_epochs,
            stage_b_chunks: args.b_chunks,
            weight_lr: args.weight_lr,
            act_lr_a: args.act_lr_a,
            act_lr_b: args.act_lr_b,
            loss: args.loss,
            ..QuestConfig::default()
        };
        eprintln!(
            "{name} {preset_name}: building the student (activation ranges per timestep group)"
        );
        let label = format!("{name} {preset_name} student");
        let mut bar: Option<Progress> = None;
        let student = quest_student_with(
            &fp,
            &preset,
            &calib,
            &weights,
            &cfg,
            device,
            &mut |done, total| {
                bar.get_or_insert_with(|| Progress::new(&label, total as u64, 0))
                    .set(done as u64, "group passes")
            },
        )?;
        if let Some(b) = bar {
            b.finish();
        }
        if args.score_init {
            let ev = deploy_and_score(
                &ctx,
                student.model.clone(),
                &format!("{name}-{preset_name}"),
                "quest-init",
                &provenance("quest-init", serde_json::to_value(&cfg)?, &preset),
            )?;
            upsert_row(&json, ev.row(&ctx, &preset, "quest-init", student.build_s, serde_json::json!({
                "cfg": cfg_scale, "what": "QuEST's student before fine-tuning: Q-Diffusion AdaRound weights, timestep-grouped activations (per channel at 4 bits), 8-bit edge activations",
                "groups": student.groups,
                "export_round_trip_max_abs": ev.round_trip, "sample_s": ev.sample_s, "class_share": ev.scores.class_share,
            }))?)?;
        }
        let ck = args.work.join(format!("{name}-{preset_name}-quest"));
        let mut bar = Progress::new(&format!("{name} {preset_name} QuEST"), 1, 0);
        let mut sized = false;
        let (student, rep) =
            quest_finetune(&fp, student, &calib, &cfg, Some(&ck), device, &mut |p| {
                if !sized {
                    bar = Progress::new(
                        &format!("{name} {preset_name} QuEST"),
                        p.total as u64,
                        p.iteration.saturating_sub(1) as u64,
                    );
                    sized = true;
                }
                bar.set(
                    p.iteration as u64,
                    format!("stage {} group {} loss {:.4}", p.stage, p.group, p.loss),
                )
            })?;
        bar.finish();
        let tuned = quest_tuned_scalars(&student, &rep.selection);
        let ev = deploy_and_score(
            &ctx,
            student,
            &format!("{name}-{preset_name}"),
            "quest",
            &provenance("quest", serde_json::to_value(&cfg)?, &preset),
        )?;
        let curve: Vec<(f64, f64)> = rep
            .losses
            .iter()
            .map(|&(k, l)| (k as f64, f64::from(l).max(1e-12).log10()))
            .collect();
        line_chart_png(
            &args
                .out
                .join("quest")
                .join(format!("{name}-{preset_name}-loss.png")),
            "log10 QuEST loss per group pass",
            "step",
            &[("loss", &curve)],
        )?;
        let s = &ev.scores;
        upsert_row(
            &json,
            ev.row(
                &ctx,
                &preset,
                "quest",
                rep.init_s + rep.train_s,
                serde_json::json!({
                    "cfg": cfg_scale, "loss": format!("{:?}", args.loss), "groups": rep.groups,
                    "sensitive_patterns": cfg.rules.as_ref().map(|r| r.sensitive.clone()),
                    "per_channel_acts": rep.per_channel_acts, "stage_steps": rep.stage_steps,
                    "stage_a_epochs": args.a_epochs, "stage_b_epochs": args.b_epochs, "stage_b_chunks": args.b_chunks,
                    "weight_lr": args.weight_lr, "act_lr_a": args.act_lr_a, "act_lr_b": args.act_lr_b,
                    "time_embedding_layers": rep.selection.time_embedding.len(),
                    "sensitive_layers": rep.selection.sensitive.len(),
                    "tuned_weight_fraction": rep.selection.tuned_fraction(),
                    "tuned_weight_params": rep.selection.tuned_params,
                    "tuned_scalars_with_act_deltas": tuned,
                    "layer_params": rep.selection.layer_params,
                    "init_s": rep.init_s, "train_s": rep.train_s, "sample_s": ev.sample_s,
                    "export_round_trip_max_abs": ev.round_trip, "class_share": s.class_share,
                    "resumed_steps": rep.resumed_steps,
                }),
            )?,
        )?;
        eprintln!(
            "{name} quest {preset_name}: FD test {:.2}, FD fp {:.2}, PSNR {:.2} dB, SSIM {:.3}, class acc {:?}, fine-tuned {:.2}% of the layer parameters, {:.0} s",
            s.fd_test,
            s.fd_fp,
            s.fidelity.psnr,
            s.fidelity.ssim,
            s.class_acc,
            100.0 * rep.selection.tuned_fraction(),
            rep.init_s + rep.train_s
        );
    }
    Ok(())
}

fn write_table(args: &Args) -> Result<(), Error> {
    let Ok(mine) = read_rows(&args.out.join("quest.json")) else {
        return Ok(());
    };
    let ptq = read_rows(&args.out.join("ptq.json")).unwrap_or_default();
    let edm = read_rows(&args.out.join("efficientdm.json")).unwrap_or_default();
    let rows = comparison_rows(&mine, &[&ptq, &edm]);
    let header = format!(
        "# QuEST on the default models\n\n\
         QuEST = the Q-Diffusion AdaRound weight rounding (hard, floor-STE so the latent weights \
         train), activations re-initialised per timestep group (one group per recorded \
         calibration step; per channel at 4 bits; first conv and last layer inputs at 8 bits), \
         then stage A (time-embedding projections, {} passes × 4 chunks of 2 per group) and \
         stage B (attention q/k/v for the UNet; FF + self-attention q/k/v for the DiT, plus every \
         activation Δ off the time-embedding path; {} epochs × {} chunks of 4 per group), Adam, \
         weights lr 1e-5 unless the row's `extra.weight_lr` says otherwise, Δ lr 1e-5 (A) / 1e-4 (B) unless `extra.act_lr_a`/`act_lr_b` say otherwise, reference-code loss weighting unless the row \
         says otherwise. The scored model is the integer export loaded back into the FP model; \
         `quest-init` is the student before fine-tuning. FP, naive and Q-Diffusion rows come from \
         `ptq.json`, EfficientDM rows from `efficientdm.json`, at the same samples and steps. \
         The fine-tuned parameter fraction is in each row's `extra` (`tuned_weight_fraction`); \
         the layer-sensitivity sweep that motivates the selection is in \
         `quest/<model>-sensitivity.{{json,png}}`.\n\n\
         Machine: 2-core x86-64 (AVX-512), flex backend. Command: `{}`",
        args.a_epochs,
        args.b_epochs,
        args.b_chunks,
        mine.last().map(|r| r.command.as_str()).unwrap_or("")
    );
    write_markdown(
        &args.out.join("quest.md"),
        &header,
        &rows,
        "Wall s = student construction + fine-tuning for QuEST (the Q-Diffusion weight phase it starts from is in the Q-Diffusion row), calibration/reconstruction for the baselines.",
    )?;
    Ok(())
}

model_main!(parse_args, run_model, write_table);
