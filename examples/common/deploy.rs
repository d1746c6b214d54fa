//! Scoring a deployed quantized model the way every fine-tuning example does: integer export,
//! loaded back into a fresh FP model, round-trip check, sampling, scores and a sample grid.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use dmq::calib::{QuantConfig, export_layers, layer_bits, model_bytes};
use dmq::eval::classifier::FmnistClassifier;
use dmq::eval::harness::{Reference, SampleSpec, Scores, bitops_per_image, score};
use dmq::eval::report::{ResultRow, git_commit};
use dmq::infer::load_export;
use dmq::models::scheduler::{DdimScheduler, Scheduler};
use dmq::models::{ForwardCtx, HostTensor};

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

/// A deployed model scored through its integer export.
pub struct Evaluated<M> {
    /// The export loaded back into the FP model (what was sampled).
    pub loaded: M,
    /// Its scores.
    pub scores: Scores,
    /// BitOPs per image.
    pub bitops: f64,
    /// Largest |Δ| between the deployed model and the loaded export.
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

/// Exports `deployed` (merged integer layers), loads the export back into a fresh FP model,
/// checks the round trip, then samples and scores the loaded model; writes its sample grid
/// as `<png_dir>/<tag>-<method>.png`.
pub fn deploy_and_score<M: Model>(
    ctx: &Ctx<'_, M>,
    deployed: M,
    tag: &str,
    method: &str,
) -> Result<Evaluated<M>, Error> {
    deploy_and_score_on(ctx, deployed, ctx.fp.clone(), tag, method)
}

/// [`deploy_and_score`] loading the export onto `base` instead of the FP model (QAT methods
/// train the non-layer parameters too: norms, embeddings).
pub fn deploy_and_score_on<M: Model>(
    ctx: &Ctx<'_, M>,
    deployed: M,
    base: M,
    tag: &str,
    method: &str,
) -> Result<Evaluated<M>, Error> {
    let device = ctx.device;
    let file = export_layers(&deployed, ctx.steps)?;
    let export_path = ctx.work.join(format!("{tag}-{method}-int.safetensors"));
    file.save(&export_path)?;
    let mut loaded = base;
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

/// The FP model's `spec.n` samples, cached under `work` (sampling is deterministic given the
/// spec; the DiT takes minutes per 500 images with CFG).
pub fn fp_samples<M: Model>(
    fp: &M,
    sched: &DdimScheduler,
    spec: &SampleSpec,
    name: &str,
    work: &Path,
    device: &Device,
) -> Result<HostTensor, Error> {
    let path = work.join(format!(
        "{name}-fp-samples-n{}-s{}-cfg{}-seed{}.safetensors",
        spec.n,
        sched.num_steps(),
        spec.guidance,
        spec.seed
    ));
    if let Ok(f) = dmq::quant::QuantizedFile::load(&path)
        && let Some((shape, data)) = f.float.get("images")
    {
        return Ok(HostTensor {
            data: data.clone(),
            shape: shape.clone(),
        });
    }
    let (images, _) = sample_images(fp, sched, spec, &format!("{name} fp"), Some(work), device)?;
    let mut f = dmq::quant::QuantizedFile::default();
    f.float
        .insert("images".into(), (images.shape.clone(), images.data.clone()));
    std::fs::create_dir_all(work)?;
    f.save(&path)?;
    Ok(images)
}
