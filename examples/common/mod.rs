//! Helpers shared by the result-table examples (`ptq`, `efficientdm`): sampling with a
//! progress bar, and the FP-vs-quantized sample grid PNG.

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use dmq::eval::harness::{SampleSpec, generate};
use dmq::eval::progress::Progress;
use dmq::eval::sample_checkpoint::ResumableSampling;
use dmq::models::dit::DiT;
use dmq::models::scheduler::{DdimScheduler, Scheduler};
use dmq::models::unet::UNet2DModel;
use dmq::models::{Denoiser, HostTensor};

#[allow(dead_code)] // used by the fine-tuning examples, not by ptq
pub mod deploy;

pub type Error = Box<dyn std::error::Error>;

/// A default model the examples can quantize.
pub trait Model: Denoiser + Module + Clone {}
impl Model for UNet2DModel {}
impl Model for DiT {}

/// `spec.n` samples from `model` with a progress bar; returns them and the seconds this
/// process spent. With `resume = Some(dir)` the finished batches are checkpointed in `dir`
/// under the model's [`fingerprint`], so a killed run resumes at its last batch (the DiT
/// draws 1,000 samples in tens of minutes) and never continues another model's images.
pub fn sample_images<M: Model>(
    model: &M,
    sched: &DdimScheduler,
    spec: &SampleSpec,
    label: &str,
    resume: Option<&Path>,
    device: &Device,
) -> Result<(HostTensor, f64), Error> {
    let t = Instant::now();
    let images = match resume {
        None => {
            let mut bar = Progress::new(label, spec.n as u64, 0);
            let images = generate(model, sched, spec, device, &mut |done, _| {
                bar.set(done as u64, "")
            })?;
            bar.finish();
            images
        }
        Some(dir) => {
            let fp = fingerprint(model, sched.num_steps())?;
            let path = dir.join(format!(
                "samples-{fp}-n{}-s{}-cfg{}-seed{}.partial.safetensors",
                spec.n,
                sched.num_steps(),
                spec.guidance,
                spec.seed
            ));
            let run = ResumableSampling::open(&path, &fp, model, sched, spec)?;
            if run.done() > 0 {
                eprintln!(
                    "{label}: resuming at sample {} of {} from {}",
                    run.done(),
                    spec.n,
                    path.display()
                );
            }
            let mut bar = Progress::new(label, spec.n as u64, run.done() as u64);
            let images = run.generate(model, sched, device, &mut |done, _| {
                bar.set(done as u64, "")
            })?;
            bar.finish();
            images
        }
    };
    Ok((images, t.elapsed().as_secs_f64()))
}

/// A hex fingerprint of everything `model` samples with: the FNV-1a hash of its FP parameters
/// (norms, embeddings, unquantized layers) combined with the content hash of its quantized
/// layer export over `num_steps` steps (codes, Δ, z, per-step activation parameters).
pub fn fingerprint<M: Model>(model: &M, num_steps: usize) -> Result<String, Error> {
    let fp = dmq::models::io::weights_to_bytes(model, Default::default())?;
    let q = dmq::calib::export_layers(model, num_steps)?.content_hash()?;
    Ok(format!(
        "{:016x}",
        dmq::quant::fingerprint::fnv1a64(&fp) ^ q.rotate_left(1)
    ))
}

/// The first 40 FP samples (left) next to the same-noise quantized samples (right), as PNG.
pub fn grid_png(
    path: &Path,
    fp: &HostTensor,
    q: &HostTensor,
    device: &Device,
) -> Result<(), Error> {
    let n = fp.shape[0].min(40);
    let take = |h: &HostTensor| {
        let per: usize = h.shape[1..].iter().product();
        Tensor::<4>::from_data(
            TensorData::new(
                h.data[..n * per].to_vec(),
                [n, h.shape[1], h.shape[2], h.shape[3]],
            ),
            device,
        )
    };
    let a = dmq::eval::image::grid(take(fp), 10, 2)?;
    let b = dmq::eval::image::grid(take(q), 10, 2)?;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    dmq::eval::image::side_by_side(&[a, b], 12).save_png(path)?;
    Ok(())
}

/// The calibration set of `name` (`n` FP trajectories, `steps_kept` of `sched`'s steps, CFG
/// `guidance`), loaded from `work` or recorded there; returns it and the seconds taken.
#[allow(dead_code)] // the data-free examples use it; binarydm trains on real data
pub fn calib_set<M: Denoiser>(
    fp: &M,
    sched: &DdimScheduler,
    name: &str,
    (n, steps_kept): (usize, usize),
    guidance: f64,
    work: &Path,
    device: &Device,
) -> Result<(dmq::calib::CalibSet, f64), Error> {
    use dmq::calib::{CalibSet, RecordOptions};
    std::fs::create_dir_all(work)?;
    let path = work.join(format!(
        "{name}-calib-n{n}-s{steps_kept}-{}.safetensors",
        sched.num_steps()
    ));
    let t = Instant::now();
    let calib = match CalibSet::load(&path) {
        Ok(c) => c,
        Err(_) => {
            let c = CalibSet::record(
                fp,
                sched,
                &RecordOptions {
                    trajectories: n,
                    steps_kept,
                    guidance,
                    batch: n.min(64),
                    seed: 7,
                },
                device,
            )?;
            c.save(&path)?;
            c
        }
    };
    Ok((calib, t.elapsed().as_secs_f64()))
}

/// The evaluation sampling of every result table: DDIM (η = 0) with `steps` steps and
/// `samples` images from seed 2024, CFG `cfg` for class-conditional models (1 otherwise).
pub fn eval_sampling<M: Denoiser>(
    fp: &M,
    steps: usize,
    samples: usize,
    cfg: f64,
    batch: usize,
) -> Result<(f64, DdimScheduler, SampleSpec), Error> {
    use dmq::models::scheduler::DdimConfig;
    let cfg_scale = if fp.info().num_classes.is_some() {
        cfg
    } else {
        1.0
    };
    let sched = DdimScheduler::diffusers(&DdimConfig::new(), steps)?;
    let spec = SampleSpec {
        n: samples,
        guidance: cfg_scale,
        seed: 2024,
        batch,
    };
    Ok((cfg_scale, sched, spec))
}

/// A comma-separated flag value as a list (`"W8A8, W4A4"` → `["W8A8", "W4A4"]`).
pub fn list(s: String) -> Vec<String> {
    s.split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

/// `--model unet|dit|both` as the list of models to run.
pub fn model_list(flag: String) -> Vec<String> {
    if flag == "both" {
        vec!["unet".into(), "dit".into()]
    } else {
        list(flag)
    }
}

/// Work done on one default model (generic over the model type).
pub trait ModelJob {
    /// Runs on `fp`, called `name` (`unet-fmnist`, `dit-fmnist`).
    fn run<M: Model>(&mut self, fp: M, name: &str) -> Result<(), Error>;
}

/// Loads each of `models` (`unet`, `dit`) from `models_dir` and runs `job` on it.
pub fn for_each_model(
    models: &[String],
    models_dir: &Path,
    device: &Device,
    job: &mut impl ModelJob,
) -> Result<(), Error> {
    for m in models {
        match m.as_str() {
            "unet" => job.run(
                UNet2DModel::from_pretrained(&models_dir.join("unet-fmnist"), device)?,
                "unet-fmnist",
            )?,
            "dit" => job.run(
                DiT::from_pretrained(models_dir.join("dit-fmnist"), device)?,
                "dit-fmnist",
            )?,
            other => return Err(format!("unknown --model {other}: use unet, dit or both").into()),
        }
    }
    Ok(())
}

/// The `main` of a result-table example: `$parse` the flags into `Args` (with `models` and
/// `models_dir` fields), run `$run(fp, name, &args, &device)` on every `--model` (flex, autodiff
/// device), then `$finish(&args)`; any error is printed and exits with status 1.
#[macro_export]
macro_rules! model_main {
    ($parse:path, $run:path, $finish:path) => {
        fn main() {
            let args = Flags::parse_env($parse);
            let device = Device::flex().autodiff();
            let result = (|| -> Result<(), Error> {
                struct Job<'a>(&'a Args, &'a Device);
                impl ModelJob for Job<'_> {
                    fn run<M: Model>(&mut self, fp: M, name: &str) -> Result<(), Error> {
                        $run(fp, name, self.0, self.1)
                    }
                }
                for_each_model(
                    &args.models,
                    &args.models_dir,
                    &device,
                    &mut Job(&args, &device),
                )?;
                $finish(&args)
            })();
            if let Err(e) = result {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    };
}
