//! Quickstart: quantize the embedded Fashion-MNIST UNet at W8A8 and W4A8, save each as a
//! self-contained `.dmq.safetensors` file, load it back, and compare with the FP model.
//!
//! Prints, per format: file size and compression, FD against the test set and PSNR against
//! the FP samples from the same noise (a small sample count: a quick look, not a result
//! table), and images/s of the FP model, the fake-quant model and the integer path; writes
//! FP | W8A8 | W4A8 samples side by side to `target/quickstart/samples.png`.
//!
//! ```text
//! cargo run --release --example quickstart [-- --samples 64 --steps 20 --out target/quickstart]
//! ```
//! Needs the Debian package `dataset-fashion-mnist` for FD (the test-set statistics).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use dmq::calib::{CalibSet, QuantConfig, RecordOptions};
use dmq::eval::harness::SampleSpec;
use dmq::models::HostTensor;
use dmq::pipeline::dmq_file::{self, Provenance};
use dmq::pipeline::eval::{Evaluator, grid_png, sample};
use dmq::pipeline::{AnyDenoiser, Method, RunOptions, SchedulerSpec, quantize};

type Error = Box<dyn std::error::Error>;

struct Args {
    samples: usize,
    steps: usize,
    out: PathBuf,
}

fn parse() -> Result<Args, Error> {
    let mut a = Args {
        samples: 64,
        steps: 20,
        out: PathBuf::from("target/quickstart"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--samples" => a.samples = value()?.parse()?,
            "--steps" => a.steps = value()?.parse()?,
            "--out" => a.out = PathBuf::from(value()?),
            other => {
                return Err(format!("unknown flag {other} (see examples/quickstart.rs)").into());
            }
        }
    }
    if a.samples == 0 || a.steps == 0 {
        return Err("--samples and --steps must be ≥ 1".into());
    }
    Ok(a)
}

/// Images per second of `model` sampling one batch of 16 with `steps` steps.
fn images_per_s<M: dmq::models::Denoiser>(
    model: &M,
    sched: &dmq::models::scheduler::DdimScheduler,
    device: &Device,
) -> Result<f64, Error> {
    let x = dmq::models::noise::NoiseRng::new(1).tensor([16, 1, 28, 28], device);
    let t = Instant::now();
    let y = dmq::models::sampler::sample(model, sched, x, None, 1.0, 0, &mut |_, _| {})?;
    let _ = HostTensor::from_tensor(&y);
    Ok(16.0 / t.elapsed().as_secs_f64())
}

fn main() -> Result<(), Error> {
    let args = parse()?;
    let t0 = Instant::now();
    let device = Device::flex();
    let dir = Path::new("assets/models/unet-fmnist");
    let fp = AnyDenoiser::from_pretrained(dir, &device)?;
    let sched = SchedulerSpec::from_dir(dir)?;
    let sampler = sched.ddim(args.steps)?;
    let timesteps = dmq::pipeline::scheduler::timesteps(&sampler);
    println!(
        "calibration: 32 FP trajectories, {} of {} steps kept",
        10.min(args.steps),
        args.steps
    );
    let calib = CalibSet::record(
        &fp,
        &sampler,
        &RecordOptions {
            trajectories: 32,
            steps_kept: 10.min(args.steps),
            guidance: 1.0,
            batch: 32,
            seed: 7,
        },
        &device,
    )?;
    let spec = SampleSpec {
        n: args.samples,
        guidance: 1.0,
        seed: 2024,
        batch: 64.min(args.samples),
    };
    let fp_images = sample(&fp, &sampler, &spec, None, &device, &mut |_, _| {})?;
    let data = Path::new(dmq::eval::data::fashion_mnist::DEFAULT_DIR);
    let evaluator = Evaluator::new(
        Path::new("assets/models/fmnist-classifier"),
        data,
        fp_images.clone(),
        &device,
    )?;
    let fp_scores = evaluator.score(&fp_images, None, &device)?;
    let fp_ips = images_per_s(&fp, &sampler, &device)?;
    let fp_bytes = std::fs::metadata(dir.join("diffusion_pytorch_model.safetensors"))?.len();
    std::fs::create_dir_all(&args.out)?;

    println!(
        "\n| model | file | bytes | × smaller | FD test ({} samples) | PSNR vs FP dB | images/s burn | images/s integer |",
        args.samples
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| FP32 | {} | {fp_bytes} | 1.00 | {:.1} | - | {fp_ips:.1} | - |",
        dir.display(),
        fp_scores.fd_test
    );
    let mut grids = vec![fp_images];
    for preset in ["W8A8", "W4A8"] {
        let config = QuantConfig::preset(preset)?;
        let method = Method::from_name("naive")?;
        let opts = RunOptions::new(sampler.clone());
        let q = quantize(&fp, &config, &calib, &method, &opts, &device, &mut |_| {})?;
        let path = args.out.join(format!(
            "unet-fmnist-{}.dmq.safetensors",
            preset.to_lowercase()
        ));
        let bytes = dmq_file::save(
            &path,
            &q.model,
            &sched,
            &timesteps,
            &Provenance::new(&method, &config),
        )?;
        // everything below runs on the file alone
        let loaded = dmq_file::load(&path, &device)?;
        let images = sample(
            &loaded.model,
            &sampler,
            &spec,
            None,
            &device,
            &mut |_, _| {},
        )?;
        let s = evaluator.score(&images, None, &device)?;
        let fq_ips = images_per_s(&loaded.model, &sampler, &device)?;
        let int =
            dmq::infer::IntegerModel::from_export(loaded.model.clone(), &loaded.file, &device)?;
        let int_ips = images_per_s(&int, &sampler, &device)?;
        println!(
            "| {preset} naive PTQ | {} | {bytes} | {:.2} | {:.1} | {:.2} | {fq_ips:.1} | {int_ips:.1} |",
            path.display(),
            fp_bytes as f64 / bytes as f64,
            s.fd_test,
            s.fidelity.psnr
        );
        grids.push(images);
    }
    let png = grid_png(
        &args.out.join("samples.png"),
        &grids.iter().collect::<Vec<_>>(),
        &device,
    )?;
    println!(
        "\nFP | W8A8 | W4A8 samples from the same noise: {}\ntotal {:.0} s",
        png.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
