//! `dmq search`: TMPQ-DM (timesteps + per-layer bits under a BitOPs budget) on a diffusers
//! model directory → a config file that `dmq quantize --config` applies.

use std::path::PathBuf;
use std::time::Instant;

use dmq_calib::RecordOptions;
use dmq_pipeline::search::{SearchOptions, tmpq};
use dmq_search::EvolutionConfig;

use super::{
    Error, PromptArgs, StageBars, calibration_prompts, calibration_set, device, positive,
    text_calibration_set,
};

/// Flags of `dmq search`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// diffusers model directory, or a text-to-image pipeline directory (its UNet is searched;
    /// fitness samples and calibration are prompted from the calibration prompts).
    #[arg(long, value_parser = crate::existing)]
    pub model: PathBuf,
    /// Calibration prompts (text-to-image pipelines).
    #[command(flatten)]
    pub text: PromptArgs,
    /// Sampling steps to select (one timestep per group of the training range).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Candidate bit-widths (weights and activations), comma-separated.
    #[arg(long, default_value = "8,7,6,5", value_delimiter = ',')]
    pub bits: Vec<u32>,
    /// The budget: BitOPs of the whole model at this bit-width (one of --bits).
    #[arg(long, default_value_t = 6)]
    pub budget_bits: u32,
    /// Population size.
    #[arg(long, default_value_t = 20)]
    pub population: usize,
    /// Epochs after the initial population.
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    /// Samples per fitness evaluation (MSE against the FP model's samples).
    #[arg(long, default_value_t = 32)]
    pub fitness_samples: usize,
    /// Steps of the FP reference samples.
    #[arg(long, default_value_t = 100)]
    pub reference_steps: usize,
    /// Calibration trajectories of the super-network.
    #[arg(long, default_value_t = 64)]
    pub calib_n: usize,
    /// Classifier-free guidance scale (class-conditional models).
    #[arg(long, default_value_t = 1.5)]
    pub cfg: f64,
    /// Seed of the evolution.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output config file (JSON, for `dmq quantize --config`).
    #[arg(long)]
    pub out: PathBuf,
    /// Search checkpoint (a killed search resumes from it); default `<out>.state.json`,
    /// removed after success.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
}

/// Runs `dmq search`.
pub fn run(a: Args, backend: &str) -> Result<(), Error> {
    positive("steps", a.steps, 1000)?;
    positive("population", a.population, 10_000)?;
    positive("fitness-samples", a.fitness_samples, 100_000)?;
    positive("reference-steps", a.reference_steps, 1000)?;
    positive("calib-n", a.calib_n, 100_000)?;
    if a.bits.is_empty() || a.bits.iter().any(|&b| !(2..=8).contains(&b)) {
        return Err(format!("--bits {:?}: each must be in 2..=8", a.bits).into());
    }
    if !a.bits.contains(&a.budget_bits) {
        return Err(format!(
            "--budget-bits {} is not one of --bits {:?}",
            a.budget_bits, a.bits
        )
        .into());
    }
    if !(a.cfg.is_finite() && a.cfg >= 1.0) {
        return Err(format!("--cfg {}: must be ≥ 1", a.cfg).into());
    }
    let evolution = EvolutionConfig {
        population: a.population,
        top_k: (a.population / 5).max(2).min(a.population),
        mutations: a.population / 2,
        crossovers: a.population / 5,
        epochs: a.epochs,
        seed: a.seed,
        ..EvolutionConfig::default()
    };
    let opts = SearchOptions {
        steps: a.steps,
        bit_options: a.bits.clone(),
        budget_bits: a.budget_bits,
        evolution,
        fitness_samples: a.fitness_samples,
        reference_steps: a.reference_steps,
        guidance: a.cfg,
        ..SearchOptions::default()
    };
    let is_pipeline = dmq_pipeline::text_to_image::is_pipeline_dir(&a.model);
    let prompts = calibration_prompts(&a.model, &a.text, is_pipeline)?;
    let device = device(backend, false)?;
    let t0 = Instant::now();
    let pipe = if is_pipeline {
        Some(dmq_pipeline::TextToImage::load(&a.model, &device)?)
    } else {
        None
    };
    let (fp, sched) = super::denoiser_and_schedule(&a.model, pipe.as_ref(), &device)?;
    let guidance = if dmq_models::Denoiser::info(&fp).num_classes.is_some() || pipe.is_some() {
        a.cfg
    } else {
        1.0
    };
    let record = RecordOptions {
        trajectories: a.calib_n,
        steps_kept: a.reference_steps.min(20),
        guidance,
        batch: a.calib_n.min(64),
        seed: 1,
    };
    let reference = sched.ddim(a.reference_steps)?;
    let (calib, states) = match &pipe {
        Some(p) => {
            let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
            (
                text_calibration_set(&fp, p, &prompts, &reference, &record, &device)?,
                Some(p.prompt_states(&refs, &device)?),
            )
        }
        None => (calibration_set(&fp, &reference, &record, &device)?, None),
    };
    let checkpoint = a.checkpoint.clone().unwrap_or_else(|| {
        let mut p = a.out.clone().into_os_string();
        p.push(".state.json");
        PathBuf::from(p)
    });
    let mut bars = StageBars::new("tmpq");
    let result = tmpq(
        &fp,
        &sched,
        &calib,
        &opts,
        states.as_ref(),
        Some(&checkpoint),
        &device,
        &mut |p| bars.update(p),
    )?;
    bars.finish();
    result.save(&a.out)?;
    if a.checkpoint.is_none() {
        let _ = std::fs::remove_file(&checkpoint);
    }
    println!(
        "tmpq: {} timesteps {:?}, mean {:.2} bits, {:.1} GBitOPs/img (budget {:.1}), fitness {:.5} → {} in {:.1} s",
        result.timesteps.len(),
        result.timesteps,
        result.mean_bits,
        result.bitops / 1e9,
        result.budget_bitops / 1e9,
        result.fitness,
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
