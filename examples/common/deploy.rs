//! Scoring a deployed quantized model the way every result table does: the self-contained
//! `.dmq.safetensors` file (`dmq::pipeline::dmq_file`) written and loaded back on its own,
//! round-trip check, sampling, scores and a sample grid.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use dmq::calib::{QuantConfig, layer_bits, model_bytes};
use dmq::eval::classifier::FmnistClassifier;
use dmq::eval::harness::{Reference, SampleSpec, Scores, bitops_per_image, score};
use dmq::eval::report::{ResultRow, git_commit};
use dmq::models::scheduler::{DdimScheduler, Scheduler};
use dmq::models::{Denoiser, ForwardCtx, HostTensor};
use dmq::pipeline::SchedulerSpec;
use dmq::pipeline::dmq_file::{self, Provenance};

use super::{Error, Model, grid_png, sample_images};

/// Largest |a − b| between the deployed student and the export loaded back, at every sampling
/// step on calibration-shaped noise.
pub fn round_trip_error<M: Model>(
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
        .map(|_| dmq::models::sampler::labels(&[1, 2], device).into());
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
pub struct Ctx<'a, M: Model> {
    /// Sampling steps.
    pub steps: usize,
    /// Samples scored.
    pub samples: usize,
    /// Where exports (and the FP-sample cache) are written.
    pub work: &'a Path,
    /// Folder of the sample-grid PNGs.
    pub png_dir: PathBuf,
    /// The command line recorded in every row.
    pub command: String,
    /// Model name (`unet-fmnist`, ...).
    pub name: &'a str,
    /// The FP model.
    pub fp: &'a M,
    /// Sampling schedule.
    pub sched: &'a DdimScheduler,
    /// The model's noise schedule (written into every deployed file).
    pub schedule: &'a SchedulerSpec,
    /// Samples, guidance, seed.
    pub spec: &'a SampleSpec,
    /// Metric classifier.
    pub classifier: FmnistClassifier,
    /// Test-set and FP-sample feature statistics.
    pub reference: Reference,
    /// The FP model's samples.
    pub fp_images: HostTensor,
    /// Layer inventory of the FP model.
    pub calls: Vec<dmq::models::LayerCall>,
    /// Whether CFG doubles every call (for BitOPs).
    pub cfg_calls: bool,
    /// Device.
    pub device: &'a Device,
}

impl<'a, M: Model> Ctx<'a, M> {
    /// Loads the metric classifier and the test set, samples (or loads the cached) FP images
    /// of `spec` and builds the reference statistics.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &'a str,
        fp: &'a M,
        schedule: &'a SchedulerSpec,
        sched: &'a DdimScheduler,
        spec: &'a SampleSpec,
        work: &'a Path,
        png_dir: PathBuf,
        command: String,
        device: &'a Device,
    ) -> Result<Self, Error> {
        use dmq::eval::data::fashion_mnist::{DEFAULT_DIR, Split, load_split};
        let classifier =
            FmnistClassifier::load(Path::new("assets/models/fmnist-classifier"), device)?;
        let test = load_split(DEFAULT_DIR, Split::Test)?;
        let calls = dmq::models::layer_inventory(fp, device)?;
        let fp_images = fp_samples(fp, sched, spec, name, work, device)?;
        let reference = Reference::new(&classifier, &test, fp_images.clone(), device)?;
        Ok(Self {
            steps: sched.num_steps(),
            samples: spec.n,
            work,
            png_dir,
            command,
            name,
            fp,
            sched,
            schedule,
            spec,
            classifier,
            reference,
            fp_images,
            calls,
            cfg_calls: fp.info().num_classes.is_some() && spec.guidance != 1.0,
            device,
        })
    }
}

/// A deployed model scored through its `.dmq.safetensors` file.
pub struct Evaluated<M> {
    /// The file loaded back (what was sampled).
    pub loaded: M,
    /// Its scores.
    pub scores: Scores,
    /// BitOPs per image.
    pub bitops: f64,
    /// Largest |Δ| between the deployed model and the loaded file.
    pub round_trip: f32,
    /// Sampling seconds.
    pub sample_s: f64,
}

impl<M: Model> Evaluated<M> {
    /// The result row of this model.
    pub fn row(
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
            steps: ctx.steps,
            samples: ctx.samples,
            fd_test: s.fd_test,
            fd_fp: s.fd_fp,
            psnr_fp: s.fidelity.psnr,
            ssim_fp: s.fidelity.ssim,
            class_acc: s.class_acc,
            bitops: self.bitops,
            model_bytes: model_bytes(&self.loaded, ctx.steps)?,
            wall_s,
            command: ctx.command.clone(),
            commit: git_commit(),
            extra,
        })
    }
}

/// Writes `deployed` as a self-contained `.dmq.safetensors` file
/// (`<work>/<tag>-<method>.dmq.safetensors`, with `provenance`), loads the file back on its
/// own, checks the round trip, then samples and scores the loaded model; writes its sample
/// grid as `<png_dir>/<tag>-<method>.png`.
pub fn deploy_and_score(
    ctx: &Ctx<'_, dmq::pipeline::AnyDenoiser>,
    deployed: dmq::pipeline::AnyDenoiser,
    tag: &str,
    method: &str,
    provenance: &Provenance,
) -> Result<Evaluated<dmq::pipeline::AnyDenoiser>, Error> {
    let device = ctx.device;
    let path = ctx.work.join(format!("{tag}-{method}.dmq.safetensors"));
    let timesteps = dmq::pipeline::scheduler::timesteps(ctx.sched);
    dmq_file::save(&path, &deployed, ctx.schedule, &timesteps, provenance)?;
    // loaded parameters are trainable by default: sampling would record an autodiff graph
    let loaded = dmq_file::load(&path, device)?.model.no_grad();
    let round_trip = round_trip_error(&deployed, &loaded, ctx.sched, device)?;
    eprintln!(
        "{tag} {method}: {} loaded back, max |Δ output| = {round_trip:.2e} over {} steps",
        path.display(),
        ctx.steps
    );
    let (images, sample_s) = sample_images(
        &loaded,
        ctx.sched,
        ctx.spec,
        &format!("{tag} {method}"),
        Some(ctx.work),
        device,
    )?;
    let scores = score(
        &ctx.classifier,
        &ctx.reference,
        &images,
        loaded.info().num_classes,
        device,
    )?;
    let bitops =
        bitops_per_image(&ctx.calls, &layer_bits(&loaded), ctx.steps, ctx.cfg_calls).bitops;
    grid_png(
        &ctx.png_dir.join(format!("{tag}-{method}.png")),
        &ctx.fp_images,
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

/// The distinct items of `items`, in the order they first appear.
fn first_appearances<T: Eq + std::hash::Hash + Copy>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut seen = std::collections::HashSet::new();
    items.filter(|x| seen.insert(*x)).collect()
}

/// Rows for a method table: per model of `mine`, the FP row of `baselines[0]` (the PTQ
/// table), then per bit-width of `mine` the other methods of every baseline table and `mine`'s
/// rows, all at `mine`'s sample count and steps.
pub fn comparison_rows(mine: &[ResultRow], baselines: &[&[ResultRow]]) -> Vec<ResultRow> {
    let mut rows: Vec<ResultRow> = Vec::new();
    // rows of one model need not be adjacent (runs append)
    for m in first_appearances(mine.iter().map(|r| r.model.as_str())) {
        let ours: Vec<&ResultRow> = mine.iter().filter(|r| r.model == m).collect();
        let (steps, samples) = (ours[0].steps, ours[0].samples);
        let same = |r: &&ResultRow| r.model == m && r.steps == steps && r.samples == samples;
        if let Some(ptq) = baselines.first() {
            rows.extend(
                ptq.iter()
                    .filter(same)
                    .filter(|r| r.method == "fp")
                    .cloned(),
            );
        }
        for (w, a) in first_appearances(ours.iter().map(|r| (r.w_bits, r.a_bits))) {
            let at = |r: &&ResultRow| r.w_bits == w && r.a_bits == a;
            for b in baselines {
                rows.extend(
                    b.iter()
                        .filter(same)
                        .filter(|p| p.method != "fp")
                        .filter(at)
                        .cloned(),
                );
            }
            rows.extend(ours.iter().copied().filter(at).cloned());
        }
    }
    rows
}

/// The FP model's `spec.n` samples, cached under `work` by the fingerprint of its weights,
/// the sampler and the noise (the DiT takes minutes per 500 images with CFG).
pub fn fp_samples<M: Model>(
    fp: &M,
    sched: &DdimScheduler,
    spec: &SampleSpec,
    name: &str,
    work: &Path,
    device: &Device,
) -> Result<HostTensor, Error> {
    let (images, _) = sample_images(fp, sched, spec, &format!("{name} fp"), Some(work), device)?;
    Ok(images)
}

/// The provenance of a deployed file: `method` with its `settings`, quantized under `config`.
pub fn provenance(method: &str, settings: serde_json::Value, config: &QuantConfig) -> Provenance {
    Provenance {
        method: method.into(),
        method_settings: settings,
        quant_config: serde_json::to_value(config).unwrap_or_default(),
    }
}
