//! One module per subcommand, plus what they share.

pub mod bench;
pub mod eval;
pub mod inspect;
pub mod quantize;
pub mod sample;
pub mod search;

use std::path::Path;

use burn::tensor::Device;
use dmq_models::scheduler::DdimScheduler;
use dmq_pipeline::dmq_file::{self, LoadedFile};
use dmq_pipeline::{AnyDenoiser, SchedulerSpec};

/// Errors of the subcommands: printed as one line.
pub type Error = Box<dyn std::error::Error>;

/// The device of `backend`, with autodiff when `train` (methods that fine-tune).
pub fn device(backend: &str, train: bool) -> Result<Device, Error> {
    let d = dmq_quant::device::by_name(backend)?;
    Ok(if train { d.autodiff() } else { d })
}

/// A model named on the command line: a diffusers directory (FP) or a `.dmq.safetensors`
/// file (quantized).
#[allow(clippy::large_enum_variant)] // one per command
pub enum ModelArg {
    /// An FP diffusers directory.
    Dir {
        /// The model.
        model: AnyDenoiser,
        /// Its schedule.
        scheduler: SchedulerSpec,
    },
    /// A quantized file.
    File(Box<LoadedFile>),
}

impl ModelArg {
    /// Loads `path` (a directory or a file).
    pub fn load(path: &Path, device: &Device) -> Result<Self, Error> {
        if dmq_pipeline::text_to_image::is_pipeline_dir(path) {
            return Err(format!(
                "{}: a text-to-image pipeline directory (model_index.json): `dmq sample \
                 --prompt` runs it; this command takes a UNet2DModel / DiT directory or a \
                 .dmq.safetensors file",
                path.display()
            )
            .into());
        }
        if path.is_dir() {
            Ok(Self::Dir {
                model: AnyDenoiser::from_pretrained(path, device)?,
                scheduler: SchedulerSpec::from_dir(path)?,
            })
        } else {
            Ok(Self::File(Box::new(dmq_file::load(path, device)?)))
        }
    }

    /// The model (fake-quant form for a file).
    pub fn model(&self) -> &AnyDenoiser {
        match self {
            Self::Dir { model, .. } => model,
            Self::File(f) => &f.model,
        }
    }

    /// Its schedule.
    pub fn scheduler(&self) -> &SchedulerSpec {
        match self {
            Self::Dir { scheduler, .. } => scheduler,
            Self::File(f) => &f.scheduler,
        }
    }

    /// Sampling steps: `asked`, else the file's own step count (20 for a directory). A file
    /// with per-step activation parameters runs only with its own step count.
    pub fn steps(&self, asked: Option<usize>) -> Result<usize, Error> {
        match (self, asked) {
            (Self::Dir { .. }, s) => Ok(s.unwrap_or(20)),
            (Self::File(f), None) => Ok(f.info.num_steps.max(1)),
            (Self::File(f), Some(s)) => {
                if s != f.info.num_steps && !f.info.quantized_layers.is_empty() {
                    return Err(format!(
                        "{}: its activation parameters cover {} sampling steps; use --steps {} (or re-quantize with --steps {s})",
                        f.path.display(),
                        f.info.num_steps,
                        f.info.num_steps
                    )
                    .into());
                }
                Ok(s)
            }
        }
    }
}

impl ModelArg {
    /// The sampler: a file's own timesteps (uniform or searched) unless `asked` overrides
    /// the step count of a file without per-step parameters; a directory's schedule over
    /// `asked` (default 20) uniform steps.
    pub fn sampler(&self, asked: Option<usize>) -> Result<DdimScheduler, Error> {
        let steps = self.steps(asked)?;
        Ok(match self {
            Self::File(f) if steps == f.info.num_steps => f.sampler(steps)?,
            _ => self.scheduler().ddim(steps)?,
        })
    }
}

/// The error of `--prompt` given for a model that is not a text-to-image pipeline.
pub fn not_a_pipeline(model: &Path) -> Error {
    format!(
        "--prompt: {} is not a text-to-image pipeline (a directory with model_index.json, \
         or a file quantized from one)",
        model.display()
    )
    .into()
}

/// The denoiser to quantize or search and its schedule: a pipeline's UNet and scheduler, or
/// the diffusers model directory `model`.
pub fn denoiser_and_schedule(
    model: &Path,
    pipe: Option<&dmq_pipeline::TextToImage>,
    device: &Device,
) -> Result<(AnyDenoiser, SchedulerSpec), Error> {
    Ok(match pipe {
        Some(p) => (AnyDenoiser::UNetCond(p.unet.clone()), p.scheduler.clone()),
        None => (
            AnyDenoiser::from_pretrained(model, device)?,
            SchedulerSpec::from_dir(model)?,
        ),
    })
}

/// Checks a count flag.
pub fn positive(name: &str, v: usize, max: usize) -> Result<(), Error> {
    if v == 0 || v > max {
        return Err(format!("--{name} {v}: must be in 1..={max}").into());
    }
    Ok(())
}

/// A progress bar (ETA; plain lines off a terminal).
pub fn bar(label: &str, total: usize) -> dmq_eval::progress::Progress {
    dmq_eval::progress::Progress::new(label, total as u64, 0)
}

/// Records the calibration set of a command (FP trajectories from `sampler`) with a bar.
pub fn calibration_set(
    fp: &AnyDenoiser,
    sampler: &DdimScheduler,
    opts: &dmq_calib::RecordOptions,
    device: &Device,
) -> Result<dmq_calib::CalibSet, Error> {
    let mut b = bar("calibration set", opts.trajectories);
    let calib = dmq_calib::CalibSet::record(
        &burn::module::Module::no_grad(fp.clone()),
        sampler,
        opts,
        device,
    )?;
    b.set(opts.trajectories as u64, "");
    b.finish();
    Ok(calib)
}

/// One progress bar per stage of a pipeline run (the stage is the first word of
/// [`dmq_pipeline::Progress::stage`]; the rest and the loss go to the message).
pub struct StageBars(dmq_eval::progress::StageBars);

impl StageBars {
    /// Bars labelled `<prefix> <stage>`.
    pub fn new(prefix: &str) -> Self {
        Self(dmq_eval::progress::StageBars::new(prefix))
    }

    /// Shows `p`.
    pub fn update(&mut self, p: &dmq_pipeline::Progress) {
        let stage = p.stage.split(' ').next().unwrap_or("");
        let msg = p
            .loss
            .map(|l| format!("{} loss {l:.5}", p.stage))
            .unwrap_or_default();
        self.0.update(stage, p.done, p.total, msg);
    }

    /// Ends the current bar.
    pub fn finish(&mut self) {
        self.0.finish();
    }
}

/// Calibration prompts of a text-to-image pipeline (`dmq quantize`, `dmq search`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PromptArgs {
    /// A calibration prompt (text-to-image pipelines; repeat the flag for several).
    #[arg(long)]
    pub prompt: Vec<String>,
    /// A file of calibration prompts, one per line (text-to-image pipelines; default: the
    /// pipeline's own `calibration_prompts.txt` when it has one).
    #[arg(long, value_parser = crate::existing)]
    pub prompts: Option<std::path::PathBuf>,
}

/// The calibration prompts of a pipeline directory's own list (one per line), used when no
/// prompt is given.
pub const DEFAULT_PROMPTS: &str = "calibration_prompts.txt";

/// The calibration prompts of a text-to-image pipeline: `--prompt` flags, then the lines of
/// `--prompts`, else the pipeline's own [`DEFAULT_PROMPTS`]. Required for a pipeline, refused
/// for other models.
pub fn calibration_prompts(
    model: &Path,
    a: &PromptArgs,
    is_pipeline: bool,
) -> Result<Vec<String>, Error> {
    let lines = |p: &std::path::Path| -> Result<Vec<String>, Error> {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect())
    };
    let mut prompts = a.prompt.clone();
    if let Some(p) = &a.prompts {
        prompts.extend(lines(p)?);
    }
    // a pipeline may ship its own list (the embedded t2i-fmnist: its training prompts)
    let shipped = model.join(DEFAULT_PROMPTS);
    if is_pipeline && prompts.is_empty() && shipped.is_file() {
        prompts = lines(&shipped)?;
    }
    match (is_pipeline, prompts.is_empty()) {
        (true, true) => Err(format!(
            "{} is a text-to-image pipeline: give calibration prompts (--prompt or --prompts \
             FILE; or a {DEFAULT_PROMPTS} in the pipeline directory)",
            model.display()
        )
        .into()),
        (false, false) => Err(format!(
            "--prompt/--prompts: {} is not a text-to-image pipeline directory (no model_index.json)",
            model.display()
        )
        .into()),
        _ => Ok(prompts),
    }
}

/// The calibration set of a text-to-image pipeline's UNet: trajectories under prompts drawn
/// from `prompts` (the set's seeded stream picks them), with the empty prompt's states as
/// the unconditional embedding when the guidance is not 1.
pub fn text_calibration_set(
    fp: &AnyDenoiser,
    pipe: &dmq_pipeline::TextToImage,
    prompts: &[String],
    sampler: &dmq_models::scheduler::DdimScheduler,
    opts: &dmq_calib::RecordOptions,
    device: &burn::tensor::Device,
) -> Result<dmq_calib::CalibSet, Error> {
    let mut b = bar("calibration set", opts.trajectories);
    let calib = dmq_calib::CalibSet::record_with(
        &burn::module::Module::no_grad(fp.clone()),
        sampler,
        opts,
        device,
        &mut |rng, n| {
            let drawn: Vec<&str> = (0..n)
                .map(|_| prompts[rng.below(prompts.len())].as_str())
                .collect();
            pipe.conditioning(&drawn, opts.guidance, device)
                .map(Some)
                .map_err(|e| dmq_calib::CalibError::Option(e.to_string()))
        },
    )?;
    b.set(opts.trajectories as u64, "");
    b.finish();
    Ok(calib)
}
