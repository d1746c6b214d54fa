//! Helpers shared by the result-table examples: the models come from their diffusers
//! directories through `dmq::pipeline` (`AnyDenoiser` + the directory's schedule), the
//! methods run through `dmq::pipeline::quantize` where the table is a method's output, and
//! every scored model is deployed through the self-contained `.dmq.safetensors` file
//! ([`deploy`]). What stays here is table bookkeeping: sampling with a progress bar and a
//! resumable cache, the FP-vs-quantized grid PNG, and the per-model loop.

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use dmq::eval::harness::SampleSpec;
use dmq::eval::progress::Progress;
use dmq::models::scheduler::DdimScheduler;
use dmq::models::{Denoiser, HostTensor};
use dmq::pipeline::{AnyDenoiser, SchedulerSpec};

#[allow(dead_code)] // used by the fine-tuning examples, not by ptq
pub mod deploy;

pub type Error = Box<dyn std::error::Error>;

/// A model the examples can quantize: any diffusers directory `AnyDenoiser` loads.
pub trait Model: Denoiser + Module + Clone {}
impl Model for AnyDenoiser {}

/// `spec.n` samples from `model` with a progress bar; returns them and the seconds this
/// process spent. With `resume = Some(dir)` the set is cached in `dir` under the fingerprint
/// of the model's weights, the sampler and the noise (`dmq::pipeline::eval::sample`): a
/// finished set is returned again without sampling, a killed run resumes at its last batch,
/// and another model's (or another schedule's) images are never reused.
pub fn sample_images<M: Model>(
    model: &M,
    sched: &DdimScheduler,
    spec: &SampleSpec,
    label: &str,
    resume: Option<&Path>,
    device: &Device,
) -> Result<(HostTensor, f64), Error> {
    let t = Instant::now();
    let mut bar: Option<Progress> = None;
    let images =
        dmq::pipeline::eval::sample(model, sched, spec, resume, device, &mut |done, n| {
            bar.get_or_insert_with(|| Progress::new(label, n as u64, 0))
                .set(done as u64, "")
        })?;
    if let Some(b) = bar {
        b.finish();
    }
    Ok((images, t.elapsed().as_secs_f64()))
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
pub fn calib_set<M: Model>(
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
    // keyed by the model's weights and the sampler too: a retrained model or another
    // schedule under the same name records a new set
    let key = dmq::pipeline::eval::fingerprint(
        fp,
        sched,
        &SampleSpec {
            n,
            guidance,
            seed: 7,
            batch: steps_kept,
        },
    )?;
    let path = work.join(format!("{name}-calib-n{n}-s{steps_kept}-{key}.safetensors"));
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

/// The evaluation sampling of every result table: DDIM (η = 0) on the model's own schedule
/// with `steps` steps and `samples` images from seed 2024, CFG `cfg` for class-conditional
/// models (1 otherwise).
pub fn eval_sampling<M: Denoiser>(
    fp: &M,
    schedule: &SchedulerSpec,
    steps: usize,
    samples: usize,
    cfg: f64,
    batch: usize,
) -> Result<(f64, DdimScheduler, SampleSpec), Error> {
    let cfg_scale = if fp.info().num_classes.is_some() {
        cfg
    } else {
        1.0
    };
    let sched = schedule.ddim(steps)?;
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

/// `--model unet|dit|both|<dir>[,<dir>...]` as the list of model directories to run
/// (`unet` and `dit` are the embedded `unet-fmnist` and `dit-fmnist`).
pub fn model_list(flag: String) -> Vec<String> {
    let expand = |m: String| match m.as_str() {
        "unet" => "unet-fmnist".to_string(),
        "dit" => "dit-fmnist".to_string(),
        _ => m,
    };
    if flag == "both" {
        vec!["unet-fmnist".into(), "dit-fmnist".into()]
    } else {
        list(flag).into_iter().map(expand).collect()
    }
}

/// Work done on one model.
pub trait ModelJob {
    /// Runs on `fp` (named by its directory, `unet-fmnist`, ...), sampled with `schedule`.
    fn run(&mut self, fp: AnyDenoiser, name: &str, schedule: &SchedulerSpec) -> Result<(), Error>;
}

/// Loads each of `models` (a directory under `models_dir`, or a path) with its schedule and
/// runs `job` on it.
pub fn for_each_model(
    models: &[String],
    models_dir: &Path,
    device: &Device,
    job: &mut impl ModelJob,
) -> Result<(), Error> {
    for m in models {
        let dir = if Path::new(m).is_dir() {
            Path::new(m).to_path_buf()
        } else {
            models_dir.join(m)
        };
        let name = dir
            .file_name()
            .map_or_else(|| m.clone(), |n| n.to_string_lossy().to_string());
        let fp = AnyDenoiser::from_pretrained(&dir, device)?;
        let schedule = SchedulerSpec::from_dir(&dir)?;
        job.run(fp, &name, &schedule)?;
    }
    Ok(())
}

/// The `main` of a result-table example: `$parse` the flags into `Args` (with `models` and
/// `models_dir` fields), run `$run(fp, name, &schedule, &args, &device)` on every `--model`
/// (flex, autodiff device), then `$finish(&args)`; any error is printed and exits with
/// status 1.
#[macro_export]
macro_rules! model_main {
    ($parse:path, $run:path, $finish:path) => {
        fn main() {
            let args = Flags::parse_env($parse);
            let device = Device::flex().autodiff();
            let result = (|| -> Result<(), Error> {
                struct Job<'a>(&'a Args, &'a Device);
                impl ModelJob for Job<'_> {
                    fn run(
                        &mut self,
                        fp: dmq::pipeline::AnyDenoiser,
                        name: &str,
                        schedule: &dmq::pipeline::SchedulerSpec,
                    ) -> Result<(), Error> {
                        $run(fp, name, schedule, self.0, self.1)
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

/// Shows a `dmq::pipeline::quantize` progress report on `bars` (one bar per stage).
#[allow(dead_code)] // quest and tmpq run the methods' stages themselves
pub fn show(bars: &mut dmq::eval::progress::StageBars, p: &dmq::pipeline::Progress) {
    let stage = p.stage.split(' ').next().unwrap_or("");
    let msg = p
        .loss
        .map(|l| format!("{} loss {l:.4}", p.stage))
        .unwrap_or_default();
    bars.update(stage, p.done, p.total, msg);
}
