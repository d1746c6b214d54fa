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
