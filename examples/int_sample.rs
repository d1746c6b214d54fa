//! End-to-end speed of the integer inference path: images per second for sampling the
//! default UNet and DiT at FP32 (burn flex), and at W8A8 / W4A8 / W4A4 / W1A4 both as
//! fake quantization (burn) and through `dmq-infer` (integer kernels), with model bytes and
//! the fidelity of the integer samples to the fake-quant ones.
//!
//! ```text
//! cargo run --release --example int_sample [-- --model unet|dit|both --n 16 --steps 10
//!     --formats W8A8,W4A8,W4A4,W1A4 --reps 2 --models assets/models --out docs/results/kernels_e2e.json]
//! ```
//! Weights come from `<models>/<model>-fmnist` when it exists, otherwise from a random
//! init of the default config (speed does not depend on the weights; the table says which).
//! Quantization is naive PTQ with max ranges (per-channel weights, per-tensor activations,
//! one set for all steps) calibrated on 16 FP trajectories: the point here is speed, not
//! quality.

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use dmq::calib::{
    CalibSet, PtqOptions, QuantConfig, RecordOptions, export_layers, model_bytes, ptq,
};
use dmq::eval::cli::{FlagError, Flags};
use dmq::infer::IntegerModel;
use dmq::models::dit::DiT;
use dmq::models::noise::NoiseRng;
use dmq::models::sampler::{Trajectory, labels};
use dmq::models::scheduler::{DdimConfig, DdimScheduler};
use dmq::models::unet::UNet2DModel;
use dmq::models::{Denoiser, ForwardCtx, HostTensor, defaults};

struct Args {
    model: String,
    n: usize,
    steps: usize,
    formats: Vec<String>,
    reps: usize,
    out: PathBuf,
    models: PathBuf,
}

fn parse_args(f: &Flags) -> Result<Args, FlagError> {
    let formats: String = f.get("formats", "W8A8,W4A8,W4A4,W1A4".into())?;
    Ok(Args {
        model: f.get("model", "both".into())?,
        n: f.get("n", 16)?,
        steps: f.get("steps", 10)?,
        formats: formats.split(',').map(|s| s.trim().to_string()).collect(),
        reps: f.get("reps", 2)?,
        out: f.get("out", PathBuf::from("docs/results/kernels_e2e.json"))?,
        models: f.get("models", PathBuf::from("assets/models"))?,
    })
}

/// Samples `n` images; returns (best seconds over `reps`, the images on the host).
fn time_sampling(model: &dyn Denoiser, args: &Args, device: &Device) -> (f64, Vec<f32>) {
    let info = model.info();
    let sched = DdimScheduler::diffusers(&DdimConfig::new(), args.steps).expect("scheduler");
    let s = info.sample_size;
    let mut best = f64::MAX;
    let mut images = Vec::new();
    for _ in 0..args.reps.max(1) {
        let x = NoiseRng::new(7).tensor([args.n, info.in_channels, s, s], device);
        let class = info
            .num_classes
            .map(|k| labels(&(0..args.n).map(|i| i % k).collect::<Vec<_>>(), device).into());
        let guidance = if info.num_classes.is_some() { 4.0 } else { 1.0 };
        let t0 = Instant::now();
        let mut traj =
            Trajectory::new(&sched, x, class, info.num_classes, guidance, 7).expect("trajectory");
        while !traj.done() {
            let inp = traj.inputs().expect("inputs");
            let out = model
                .forward(inp.x, inp.t, inp.cond, &ForwardCtx::new(inp.step))
                .expect("forward");
            let eps = traj.guide(out, info.in_channels);
            traj.advance(eps).expect("advance");
        }
        images = HostTensor::from_tensor(traj.sample()).data;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    (best, images)
}

fn psnr(a: &[f32], b: &[f32]) -> f64 {
    let mse: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x.clamp(-1.0, 1.0) - y.clamp(-1.0, 1.0)) as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    // Images in [−1, 1]: peak-to-peak 2.
    10.0 * (4.0 / mse.max(1e-12)).log10()
}

fn run<M: Denoiser + Module + Clone>(
    name: &str,
    fp: M,
    weights: &str,
    args: &Args,
    device: &Device,
    rows: &mut Vec<serde_json::Value>,
) {
    let calib_sched = DdimScheduler::diffusers(&DdimConfig::new(), args.steps).expect("scheduler");
    let calib = CalibSet::record(
        &fp,
        &calib_sched,
        &RecordOptions {
            trajectories: 16,
            steps_kept: args.steps.min(5),
            batch: 16,
            ..RecordOptions::default()
        },
        device,
    )
    .expect("calibration set");
    let fp_bytes = 4 * fp.num_params();
    let (fp_s, _) = time_sampling(&fp, args, device);
    let ips = |s: f64| args.n as f64 / s;
    println!(
        "\n{name} ({weights}), {} images × {} DDIM steps, batch {}",
        args.n, args.steps, args.n
    );
    println!(
        "| format | path | images/s | speed-up vs FP32 | model bytes | PSNR int vs fake-quant (dB) |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| FP32 | burn flex | {:.2} | 1.00× | {fp_bytes} | — |",
        ips(fp_s)
    );
    rows.push(
        serde_json::json!({"model": name, "weights": weights, "format": "FP32", "path": "burn",
        "images_per_s": ips(fp_s), "speedup_vs_fp32": 1.0, "model_bytes": fp_bytes,
        "n": args.n, "steps": args.steps}),
    );
    for fmt in &args.formats {
        let mut fq = fp.clone();
        let cfg = QuantConfig::preset(fmt).expect("preset");
        let opts = PtqOptions {
            act_samples: 16,
            weight_init: dmq::quant::RangeInit::Max,
            act_init: dmq::quant::RangeInit::Max,
            ..PtqOptions::default()
        };
        ptq(&mut fq, &cfg, &calib, &opts, device).expect("ptq");
        let file = export_layers(&fq, args.steps).expect("export");
        let bytes = model_bytes(&fq, args.steps).expect("bytes");
        let int = IntegerModel::from_export(fp.clone(), &file, device).expect("integer model");
        let int_layers = int.executor().integer_layers();
        let (fq_s, fq_img) = time_sampling(&fq, args, device);
        int.executor().reset_timings();
        let (int_s, int_img) = time_sampling(&int, args, device);
        let timings = int.executor().timings();
        let in_kernels: f64 =
            timings.values().map(|t| t.seconds).sum::<f64>() / args.reps.max(1) as f64;
        let mut by_kind: std::collections::BTreeMap<&str, f64> = Default::default();
        for (layer, t) in &timings {
            let kind = if layer.ends_with(".qk") || layer.ends_with(".sv") {
                "matmul"
            } else if layer.contains("conv") || layer.contains("sample") {
                "conv"
            } else {
                "linear"
            };
            *by_kind.entry(kind).or_default() += t.seconds / args.reps.max(1) as f64;
        }
        eprintln!(
            "  {fmt}: {:.2} s per sampling run, {in_kernels:.2} s in integer kernels ({by_kind:.2?})",
            int_s
        );
        let p = psnr(&int_img, &fq_img);
        println!(
            "| {fmt} | fake-quant (burn) | {:.2} | {:.2}× | {bytes} | — |",
            ips(fq_s),
            fp_s / fq_s
        );
        println!(
            "| {fmt} | integer ({int_layers} layers) | {:.2} | **{:.2}×** | {bytes} | {p:.1} |",
            ips(int_s),
            fp_s / int_s
        );
        for (path, s, psnr) in [("fake-quant", fq_s, None), ("integer", int_s, Some(p))] {
            rows.push(
                serde_json::json!({"model": name, "weights": weights, "format": fmt, "path": path,
                "images_per_s": ips(s), "speedup_vs_fp32": fp_s / s, "model_bytes": bytes,
                "integer_layers": int_layers, "psnr_int_vs_fakequant": psnr,
                "n": args.n, "steps": args.steps}),
            );
        }
    }
}

fn main() {
    let args = Flags::parse_env(parse_args);
    let device = Device::flex();
    let mut rows = Vec::new();
    let want = |m: &str| args.model == "both" || args.model == m;
    let dir = |m: &str| args.models.join(format!("{m}-fmnist"));
    if want("unet") {
        let (m, w) = match UNet2DModel::from_pretrained(&dir("unet"), &device) {
            Ok(m) => (m, "trained weights"),
            Err(_) => (
                UNet2DModel::new(&defaults::unet_fmnist().expect("config"), &device).expect("init"),
                "random init of the default config",
            ),
        };
        run("unet-fmnist", m, w, &args, &device, &mut rows);
    }
    if want("dit") {
        let (m, w) = match DiT::from_pretrained(dir("dit"), &device) {
            Ok(m) => (m, "trained weights"),
            Err(_) => (
                DiT::new(&defaults::dit_fmnist().expect("config"), &device).expect("init"),
                "random init of the default config",
            ),
        };
        run("dit-fmnist", m, w, &args, &device, &mut rows);
    }
    // A JSON array of records (docs/design.md §6): every row names its command and commit.
    let command = format!(
        "cargo run --release --example int_sample -- {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let (commit, threads) = (
        dmq::eval::report::git_commit(),
        dmq::kernels::available_threads(),
    );
    for r in &mut rows {
        r["command"] = command.clone().into();
        r["commit"] = commit.clone().into();
        r["threads"] = threads.into();
    }
    let json = serde_json::to_vec_pretty(&rows).expect("json");
    if let Err(e) = dmq::quant::file::write_atomic(&args.out, &json) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    println!("\nwritten to {}", args.out.display());
}
