//! `dmq bench`: images/s of FP, fake-quant and the integer path on the same noise, and
//! model bytes, measured back to back in one process; with `--agreement`, how closely the
//! integer path follows the fake-quant model, per step and over a sampling run.

use std::path::PathBuf;
use std::time::Instant;

use dmq_models::Denoiser;
use dmq_models::noise::NoiseRng;

use super::{Error, device, positive};

/// Flags of `dmq bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A .dmq.safetensors file.
    #[arg(long, value_parser = crate::existing)]
    pub model: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// DDIM steps (default: the file's own).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Timed repetitions per path (the best is reported).
    #[arg(long, default_value_t = 2)]
    pub repeats: usize,
    /// Also print the agreement of the integer path with the fake-quant model: per step, ε of
    /// both on the fake-quant trajectory's inputs (relative L2, beside the fake-quant model's
    /// own distance from FP); over a run, PSNR between the samples from the same noise.
    #[arg(long)]
    pub agreement: bool,
}

/// `‖a − b‖ / ‖b‖` over all elements.
fn rel_l2(a: &dmq_models::HostTensor, b: &dmq_models::HostTensor) -> f64 {
    let num: f64 = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum();
    let den: f64 = b.data.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// PSNR (dB) of images in [−1, 1] (peak-to-peak 2).
fn psnr(a: &dmq_models::HostTensor, b: &dmq_models::HostTensor) -> f64 {
    let mse: f64 = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum::<f64>()
        / a.data.len().max(1) as f64;
    10.0 * (4.0 / mse.max(1e-30)).log10()
}

/// Runs `dmq bench`.
pub fn run(a: Args, backend: &str) -> Result<(), Error> {
    positive("batch", a.batch, 4096)?;
    positive("repeats", a.repeats, 100)?;
    if a.model.is_dir() {
        return Err("--model: give a .dmq.safetensors file (dmq quantize writes one)".into());
    }
    let device = device(backend, false)?;
    let arg = super::ModelArg::load(&a.model, &device)?;
    let sched = arg.sampler(a.steps)?;
    let steps = dmq_models::scheduler::Scheduler::timesteps(&sched).len();
    let super::ModelArg::File(f) = arg else {
        return Err("--model: give a .dmq.safetensors file".into());
    };
    let mut fp = f.model.clone();
    dmq_calib::clear_quantizers(&mut fp);
    let integer = dmq_infer::IntegerModel::from_export(f.model.clone(), &f.file, &device)?;
    let info = f.model.info();
    let (c, s) = (info.in_channels, info.sample_size);
    let class = info.num_classes.map(|nc| {
        dmq_models::Conditioning::Class(dmq_models::sampler::labels(
            &(0..a.batch).map(|i| i % nc).collect::<Vec<_>>(),
            &device,
        ))
    });
    let guidance = if info.num_classes.is_some() { 1.5 } else { 1.0 };
    let time = |m: &dyn Denoiser| -> Result<f64, Error> {
        let mut best = f64::INFINITY;
        for r in 0..a.repeats {
            let x = NoiseRng::new(r as u64).tensor([a.batch, c, s, s], &device);
            let t0 = Instant::now();
            let y = dmq_models::sampler::sample(
                m,
                &sched,
                x,
                class.clone(),
                guidance,
                0,
                &mut |_, _| {},
            )?;
            let _ = dmq_models::HostTensor::from_tensor(&y); // wait for the device
            best = best.min(t0.elapsed().as_secs_f64());
        }
        Ok(a.batch as f64 / best)
    };
    let fp_ips = time(&fp)?;
    let fq_ips = time(&f.model)?;
    integer.executor().reset_timings();
    let int_ips = time(&integer)?;
    // SVDQuant: the branches' share of the integer run and of the file
    let timings = integer.executor().timings();
    let (mut branch_s, mut layer_s) = (0.0, 0.0);
    for (name, t) in &timings {
        if name.ends_with(".low_rank") {
            branch_s += t.seconds;
        } else {
            layer_s += t.seconds;
        }
    }
    let run_s = a.repeats as f64 * a.batch as f64 / int_ips; // ≤ the total: best-of timing
    let file_bytes = std::fs::metadata(&a.model)?.len();
    let fp32_bytes = dmq_calib::model_bytes(&fp, steps)?;
    println!(
        "{} ({} {} steps, batch {}, backend {backend}; best of {}):",
        a.model.display(),
        f.info.method,
        steps,
        a.batch,
        a.repeats
    );
    println!("| path | images/s | × FP32 | model bytes |");
    println!("|---|---|---|---|");
    println!("| FP32 (burn) | {fp_ips:.2} | 1.00 | {fp32_bytes} |");
    println!(
        "| fake-quant (burn) | {fq_ips:.2} | {:.2} | {file_bytes} |",
        fq_ips / fp_ips
    );
    println!(
        "| integer kernels | {int_ips:.2} | {:.2} | {file_bytes} |",
        int_ips / fp_ips
    );
    if a.agreement {
        let x = NoiseRng::new(0).tensor([a.batch, c, s, s], &device);
        let host = dmq_models::HostTensor::from_tensor;
        let per_step = |other: &dyn Denoiser| -> Result<Vec<f64>, Error> {
            let mut v = Vec::new();
            dmq_models::sampler::sample_teacher_forced(
                &f.model,
                other,
                &sched,
                x.clone(),
                class.clone(),
                guidance,
                0,
                &mut |_, e_fq, e_other| v.push(rel_l2(&host(e_other), &host(e_fq))),
            )?;
            Ok(v)
        };
        let (int_step, fp_step) = (per_step(&integer)?, per_step(&fp)?);
        let run = |m: &dyn Denoiser| -> Result<dmq_models::HostTensor, Error> {
            let y = dmq_models::sampler::sample(
                m,
                &sched,
                x.clone(),
                class.clone(),
                guidance,
                0,
                &mut |_, _| {},
            )?;
            Ok(host(&y))
        };
        let (fq_run, int_run, fp_run) = (run(&f.model)?, run(&integer)?, run(&fp)?);
        println!(
            "agreement on the fake-quant trajectory (batch {}): relative L2 of ε per step",
            a.batch
        );
        println!("| step | integer vs fake-quant | FP vs fake-quant |");
        println!("|---|---|---|");
        for (k, (i, p)) in int_step.iter().zip(&fp_step).enumerate() {
            println!("| {k} | {i:.2e} | {p:.2e} |");
        }
        println!(
            "over a sampling run from the same noise: PSNR integer vs fake-quant {:.1} dB, FP vs \
             fake-quant {:.1} dB",
            psnr(&int_run, &fq_run),
            psnr(&fp_run, &fq_run)
        );
    }
    let branch_bytes: usize = f.file.half.values().map(|(_, d)| 2 * d.len()).sum();
    if branch_bytes > 0 {
        println!(
            "low-rank branches: {:.1}% of the time in integer layers ({:.2} of {:.2} s over {} \
             runs, about {:.1}% of a sampling run), {branch_bytes} bytes ({:.1}% of the file)",
            100.0 * branch_s / layer_s.max(1e-12),
            branch_s,
            layer_s,
            a.repeats,
            100.0 * branch_s / run_s.max(1e-12),
            100.0 * branch_bytes as f64 / file_bytes.max(1) as f64
        );
    }
    Ok(())
}
