//! One entry point for every quantization method: FP model + [`QuantConfig`] + calibration
//! set + [`Method`] options + progress callback → quantized model.
//!
//! What every method shares lives here once: the run directory with its checkpoints (each
//! method refuses a checkpoint of another run by its run tag), the finite-output guard on
//! the result, and the timesteps the model is finalised for.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use dmq_calib::{
    CalibSet, PtqOptions, QuantConfig, ReconCheckpoint, ReconOptions, SmoothOptions, SvdOptions,
};
use dmq_finetune::{BinaryDmConfig, EfficientDmConfig, QuestConfig};
use dmq_models::scheduler::{DdimConfig, DdimScheduler};
use dmq_models::{Denoiser, ForwardCtx, HostTensor, PromptStates};
use serde::{Deserialize, Serialize};

use crate::error::{PipelineError, Result};
use crate::images::ImageSet;
use crate::model::AnyDenoiser;

/// A quantization method and its options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", content = "options", rename_all = "kebab-case")]
pub enum Method {
    /// Round-to-nearest PTQ: weights per channel, activations calibrated on the set.
    Naive(PtqOptions),
    /// Q-Diffusion: AdaRound block reconstruction, then activation step-size reconstruction.
    Qdiffusion(ReconOptions),
    /// SmoothQuant: per-input-channel migration of activation outliers into the weights (α
    /// per layer from a grid, or global), then naive PTQ.
    Smoothquant(SmoothOptions),
    /// SVDQuant: smoothing, a 16-bit rank-r SVD branch per layer, the residual quantized, and
    /// per-token dynamic activations.
    Svdquant(SvdOptions),
    /// EfficientDM: QALoRA + TALSQ, data-free distillation from the FP model.
    Efficientdm {
        /// Fine-tuning options.
        config: EfficientDmConfig,
        /// DDIM steps of the fine-tuning trajectories (η = 1).
        train_steps: usize,
    },
    /// QuEST: Q-Diffusion rounding, then time-embedding and activation-sensitive tuning.
    Quest {
        /// The Q-Diffusion reconstruction it starts from.
        recon: ReconOptions,
        /// Fine-tuning options.
        config: QuestConfig,
    },
    /// BinaryDM: 1-bit weights (EBB in the head and tail blocks), LRM, QAT on real images
    /// ([`RunOptions::images`]). The activation bits come from the `QuantConfig`; its weight
    /// spec must be 1-bit.
    Binarydm(BinaryDmConfig),
}

/// Names [`Method::from_name`] accepts.
pub const METHOD_NAMES: [&str; 7] = [
    "naive",
    "qdiffusion",
    "smoothquant",
    "svdquant",
    "efficientdm",
    "quest",
    "binarydm",
];

impl Method {
    /// The method with its default options: `naive`, `qdiffusion`, `efficientdm`, `quest`,
    /// `binarydm`.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "naive" | "ptq" => Self::Naive(PtqOptions::default()),
            "qdiffusion" | "q-diffusion" => Self::Qdiffusion(ReconOptions::default()),
            "smoothquant" => Self::Smoothquant(SmoothOptions::default()),
            "svdquant" => Self::Svdquant(SvdOptions::default()),
            "efficientdm" => Self::Efficientdm {
                config: EfficientDmConfig::default(),
                train_steps: 20,
            },
            "quest" => Self::Quest {
                recon: ReconOptions::default(),
                config: QuestConfig::default(),
            },
            "binarydm" => Self::Binarydm(BinaryDmConfig::default()),
            other => {
                return Err(PipelineError::Option {
                    option: "method".into(),
                    reason: format!("unknown method '{other}' (use one of {METHOD_NAMES:?})"),
                });
            }
        })
    }

    /// The method's name as stored in files and result rows.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Naive(_) => "naive",
            Self::Qdiffusion(_) => "qdiffusion",
            Self::Smoothquant(_) => "smoothquant",
            Self::Svdquant(_) => "svdquant",
            Self::Efficientdm { .. } => "efficientdm",
            Self::Quest { .. } => "quest",
            Self::Binarydm(_) => "binarydm",
        }
    }

    /// The options as JSON (stored in the quantized file).
    pub fn settings(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Scales the method's iteration counts by `f` (≥ 1 iteration each): for quick runs.
    pub fn scaled(mut self, f: f64) -> Self {
        let s = |n: usize| ((n as f64 * f).round() as usize).max(1);
        match &mut self {
            Self::Naive(_) | Self::Smoothquant(_) | Self::Svdquant(_) => {}
            Self::Qdiffusion(r) => {
                r.weight_iters = s(r.weight_iters);
                r.act_iters = s(r.act_iters);
            }
            Self::Efficientdm { config, .. } => config.epochs = s(config.epochs),
            Self::Quest { recon, config } => {
                recon.weight_iters = s(recon.weight_iters);
                recon.act_iters = s(recon.act_iters);
                config.stage_a_epochs = s(config.stage_a_epochs);
                config.stage_b_epochs = s(config.stage_b_epochs);
            }
            Self::Binarydm(c) => {
                c.steps = s(c.steps);
                c.transition = c.transition.map(s);
                c.checkpoint_every = s(c.checkpoint_every);
            }
        }
        self
    }
}

/// Progress of a quantization run, for a progress bar.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// What is running (`calibration`, `weights`, `activations`, `fine-tuning`, ...).
    pub stage: String,
    /// Work done in the stage.
    pub done: u64,
    /// Work of the stage.
    pub total: u64,
    /// Last loss, where the stage has one.
    pub loss: Option<f64>,
}

/// Where and how a run works.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Run directory for checkpoints (resumable); `None` runs without checkpoints.
    pub work_dir: Option<PathBuf>,
    /// The sampling schedule the quantized model is finalised for (per-step activation
    /// parameters follow its steps).
    pub sampler: DdimScheduler,
    /// Real training images, for the methods that train on data (BinaryDM).
    pub images: Option<ImageSet>,
    /// The model's noise schedule (EfficientDM's fine-tuning trajectories follow it).
    pub schedule: DdimConfig,
    /// Prompts for the trajectories a method draws itself (EfficientDM on a text-conditional
    /// model: required there).
    pub prompts: Option<PromptStates>,
    /// How a latent text-to-image model trains on [`RunOptions::images`] (BinaryDM): the
    /// pipeline whose VAE encodes them and whose text encoder encodes their prompts.
    pub text_training: Option<TextTraining>,
}

/// Real-image training of a latent text-to-image UNet: images are encoded by `pipe`'s VAE
/// and prompted per label ([`ImageSet::latent_text_batch`]).
#[derive(Clone, Debug)]
pub struct TextTraining {
    /// The pipeline (its UNet is the model being quantized).
    pub pipe: Arc<crate::TextToImage>,
    /// The prompt of each label (`prompts[label]`).
    pub prompts: Vec<String>,
}

impl RunOptions {
    /// No run directory, no training images, finalised for `sampler`.
    pub fn new(sampler: DdimScheduler) -> Self {
        Self {
            work_dir: None,
            sampler,
            images: None,
            schedule: DdimConfig::new(),
            prompts: None,
            text_training: None,
        }
    }

    /// How a latent text-to-image model trains on the images (BinaryDM).
    pub fn with_text_training(mut self, text: TextTraining) -> Self {
        self.text_training = Some(text);
        self
    }

    /// Prompts for the trajectories EfficientDM draws on a text-conditional model
    /// (`TextToImage::prompt_states` gives them).
    pub fn with_prompts(mut self, prompts: PromptStates) -> Self {
        self.prompts = Some(prompts);
        self
    }

    /// The model's noise schedule (default: diffusers' DDIM defaults); set it from the
    /// model directory's `SchedulerSpec::ddim`.
    pub fn with_schedule(mut self, schedule: DdimConfig) -> Self {
        self.schedule = schedule;
        self
    }

    /// Checkpoints under `dir` (a killed run resumes from it).
    pub fn with_work_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.work_dir = Some(dir.into());
        self
    }

    /// Training images for BinaryDM.
    pub fn with_images(mut self, images: ImageSet) -> Self {
        self.images = Some(images);
        self
    }
}

/// What a method did (its own report type).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "method", content = "report", rename_all = "kebab-case")]
pub enum MethodReport {
    /// Naive PTQ.
    Naive(dmq_calib::PtqReport),
    /// Q-Diffusion.
    Qdiffusion(dmq_calib::ReconReport),
    /// SmoothQuant.
    Smoothquant(dmq_calib::SmoothReport),
    /// SVDQuant.
    Svdquant(dmq_calib::SvdReport),
    /// EfficientDM.
    Efficientdm(dmq_finetune::FinetuneReport),
    /// QuEST (and the Q-Diffusion run it started from).
    Quest {
        /// The reconstruction.
        recon: dmq_calib::ReconReport,
        /// The fine-tuning.
        quest: dmq_finetune::QuestReport,
    },
    /// BinaryDM.
    Binarydm(dmq_finetune::BinaryDmReport),
}

impl MethodReport {
    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// A quantized model and what the run did.
#[derive(Debug)]
pub struct Quantized {
    /// The quantized model (fake-quant form, frozen).
    pub model: AnyDenoiser,
    /// What the method did.
    pub report: MethodReport,
    /// Seconds of this run.
    pub wall_s: f64,
}

fn ck_path(opts: &RunOptions, name: &str) -> Option<PathBuf> {
    opts.work_dir.as_ref().map(|d| d.join(name))
}

fn ensure_dir(dir: &Option<PathBuf>) -> Result<()> {
    if let Some(d) = dir {
        std::fs::create_dir_all(d)
            .map_err(|e| crate::error::file_err(d, "run directory", e.to_string()))?;
    }
    Ok(())
}

/// Quantizes `fp` with `method` under `config`, calibrated on `calib`.
///
/// `fp` must live on an autodiff device for the methods that train (Q-Diffusion, EfficientDM,
/// QuEST). The result is finalised for `opts.sampler`'s timesteps, frozen, and checked to
/// give finite outputs on a calibration batch (else [`PipelineError::Option`] naming the
/// method: a diverged run never reaches a file).
pub fn quantize(
    fp: &AnyDenoiser,
    config: &QuantConfig,
    calib: &CalibSet,
    method: &Method,
    opts: &RunOptions,
    device: &Device,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Quantized> {
    ensure_dir(&opts.work_dir)?;
    let t0 = Instant::now();
    let timesteps = crate::scheduler::timesteps(&opts.sampler);
    let (model, report) = match method {
        Method::Naive(o) => {
            let mut m = fp.clone();
            let rep = dmq_calib::ptq(&mut m, config, calib, o, device)?;
            progress(&Progress {
                stage: "ptq".into(),
                done: 1,
                total: 1,
                loss: None,
            });
            (m, MethodReport::Naive(rep))
        }
        Method::Smoothquant(o) => {
            let mut m = fp.clone();
            let rep = dmq_calib::smoothquant(&mut m, config, calib, o, device, &mut |d, n| {
                progress(&Progress {
                    stage: "smoothing".into(),
                    done: d as u64,
                    total: n as u64,
                    loss: None,
                })
            })?;
            (m, MethodReport::Smoothquant(rep))
        }
        Method::Svdquant(o) => {
            let mut m = fp.clone();
            let rep = dmq_calib::svdquant(&mut m, config, calib, o, device, &mut |d, n| {
                progress(&Progress {
                    stage: "smoothing + SVD".into(),
                    done: d as u64,
                    total: n as u64,
                    loss: None,
                })
            })?;
            (m, MethodReport::Svdquant(rep))
        }
        Method::Qdiffusion(o) => {
            let ck = ck_path(opts, "qdiffusion-recon.safetensors").map(ReconCheckpoint::new);
            let (m, rep) = run_qdiffusion(fp, config, calib, o, ck.as_ref(), device, progress)?;
            (m, MethodReport::Qdiffusion(rep))
        }
        Method::Efficientdm {
            config: c,
            train_steps,
        } => {
            // the fine-tuning trajectories: the model's own schedule, stochastic DDIM (η = 1)
            let train =
                DdimScheduler::diffusers(&opts.schedule.clone().with_eta(1.0), *train_steps)?;
            let ck = ck_path(opts, "efficientdm");
            let (m, rep) = dmq_finetune::efficientdm(
                fp,
                config,
                calib,
                &train,
                c,
                opts.prompts.as_ref(),
                ck.as_deref(),
                device,
                &mut |p| {
                    progress(&Progress {
                        stage: "fine-tuning".into(),
                        done: p.iteration as u64,
                        total: p.total as u64,
                        loss: Some(p.loss),
                    })
                },
            )?;
            (
                dmq_finetune::finalize(m, &timesteps)?,
                MethodReport::Efficientdm(rep),
            )
        }
        Method::Quest { recon, config: c } => {
            if recon.split_shortcuts != c.split_shortcuts {
                return Err(PipelineError::Option {
                    option: "split_shortcuts".into(),
                    reason: format!(
                        "QuEST ({}) must split shortcuts as the Q-Diffusion reconstruction it \
                         starts from does ({})",
                        c.split_shortcuts, recon.split_shortcuts
                    ),
                });
            }
            // QuEST starts from a finished Q-Diffusion reconstruction, kept in the run dir
            // (or a temporary one) so that both stages resume independently.
            let tmp;
            let dir: &Path = match &opts.work_dir {
                Some(d) => d,
                None => {
                    tmp = std::env::temp_dir().join(format!("dmq-quest-{}", std::process::id()));
                    std::fs::create_dir_all(&tmp).map_err(|e| {
                        crate::error::file_err(&tmp, "run directory", e.to_string())
                    })?;
                    &tmp
                }
            };
            let ck = ReconCheckpoint::new(dir.join("qdiffusion-recon.safetensors"));
            let (_, recon_rep) =
                run_qdiffusion(fp, config, calib, recon, Some(&ck), device, progress)?;
            let (m, rep) = dmq_finetune::quest(
                fp,
                config,
                calib,
                &ck,
                c,
                Some(&dir.join("quest")),
                device,
                &mut |p| {
                    progress(&Progress {
                        stage: format!("fine-tuning ({})", p.stage),
                        done: p.iteration as u64,
                        total: p.total as u64,
                        loss: Some(p.loss),
                    })
                },
            )?;
            if opts.work_dir.is_none() {
                // a run without a run directory leaves nothing behind
                let _ = std::fs::remove_dir_all(dir);
            }
            (
                m,
                MethodReport::Quest {
                    recon: recon_rep,
                    quest: rep,
                },
            )
        }
        Method::Binarydm(c) => {
            let (m, rep) = run_binarydm(fp, config, c, opts, device, progress)?;
            (m, MethodReport::Binarydm(rep))
        }
    };
    let model = model.no_grad();
    finite_guard(&model, calib, method.name(), device)?;
    Ok(Quantized {
        model,
        report,
        wall_s: t0.elapsed().as_secs_f64(),
    })
}

fn run_qdiffusion(
    fp: &AnyDenoiser,
    config: &QuantConfig,
    calib: &CalibSet,
    o: &ReconOptions,
    ck: Option<&ReconCheckpoint>,
    device: &Device,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(AnyDenoiser, dmq_calib::ReconReport)> {
    let teacher = fp.clone().no_grad();
    Ok(dmq_calib::qdiffusion(
        &teacher,
        fp.clone(),
        config,
        calib,
        o,
        ck,
        device,
        &mut |p| {
            progress(&Progress {
                stage: format!("{} {}/{}", p.phase, p.unit + 1, p.units),
                done: (p.unit * p.iters + p.iter) as u64,
                total: (p.units * p.iters) as u64,
                loss: Some(p.loss),
            })
        },
    )?)
}

/// BinaryDM with the activation bits of `config` (whose weights must be 1-bit) on
/// `opts.images`.
fn run_binarydm(
    fp: &AnyDenoiser,
    config: &QuantConfig,
    c: &BinaryDmConfig,
    opts: &RunOptions,
    device: &Device,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(AnyDenoiser, dmq_finetune::BinaryDmReport)> {
    let bad = |reason: String| PipelineError::Option {
        option: "quant config".into(),
        reason,
    };
    match config.weight {
        Some(w) if w.int_bits() == Some(1) => {}
        other => {
            return Err(bad(format!(
                "binarydm binarizes the weights: use a W1Ax preset (got weights {})",
                other.map_or("FP".into(), |w| format!("{} bits", w.cost_bits()))
            )));
        }
    }
    if !config.rules.is_empty() {
        return Err(bad(
            "binarydm chooses its own per-layer treatment (EBB head/tail, FP edges); layer rules are not applied".into(),
        ));
    }
    let images = opts.images.as_ref().ok_or_else(|| PipelineError::Option {
        option: "images".into(),
        reason: "binarydm trains on real images: give a training set (RunOptions::with_images, dmq quantize --data DIR)".into(),
    })?;
    let info = fp.info();
    let text = info.cross_attention_dim.is_some() && info.num_classes.is_none();
    let latent = match (&opts.text_training, text) {
        (Some(t), true) => Some(t),
        (None, true) => {
            return Err(PipelineError::Option {
                option: "text training".into(),
                reason: "binarydm on a text-conditional model trains on prompted latents: give \
                         the pipeline and the prompts per label (RunOptions::with_text_training)"
                    .into(),
            });
        }
        _ => {
            images.check_fits(&info)?;
            None
        }
    };
    let cfg = BinaryDmConfig {
        act_bits: config.act.and_then(|a| a.int_bits()),
        ..c.clone()
    };
    let ck = ck_path(opts, "binarydm");
    if let Some(t) = latent {
        // fail on the first batch here, with the pipeline's error, not inside the QAT loop
        images.latent_text_batch(0, 1, &t.pipe, &t.prompts, 0.0, device)?;
    }
    let mut data = |step: usize| -> dmq_finetune::Result<dmq_finetune::Batch> {
        match latent {
            Some(t) => {
                let (x0, cond) = images
                    .latent_text_batch(step, cfg.batch, &t.pipe, &t.prompts, 0.1, device)
                    .map_err(|e| dmq_finetune::FinetuneError::Option(e.to_string()))?;
                Ok((x0, Some(cond)))
            }
            None => {
                let (x0, class) = images.batch(step, cfg.batch, &info, 0.1, device);
                Ok((x0, class.map(dmq_models::Conditioning::Class)))
            }
        }
    };
    // the model's own training noise schedule (the schedule of its scheduler config)
    let noise = dmq_models::scheduler::Scheduler::noise_schedule(&DdimScheduler::diffusers(
        &opts.schedule,
        1,
    )?)
    .clone();
    Ok(dmq_finetune::binarydm(
        fp,
        &cfg,
        &noise,
        &mut data,
        ck.as_deref(),
        device,
        &mut |p| {
            progress(&Progress {
                stage: "qat".into(),
                done: p.step as u64,
                total: p.total as u64,
                loss: Some(p.loss),
            })
        },
    )?)
}

/// The NaN guard of every method: one forward pass of `model` on the first calibration
/// entries must be finite.
fn finite_guard(
    model: &AnyDenoiser,
    calib: &CalibSet,
    method: &str,
    device: &Device,
) -> Result<()> {
    let idx: Vec<usize> = (0..calib.len().min(4)).collect();
    if idx.is_empty() {
        return Ok(());
    }
    let step = calib.step[idx[0]];
    let idx: Vec<usize> = idx.into_iter().filter(|&i| calib.step[i] == step).collect();
    let (x, t, class) = calib.batch(&idx, device)?;
    let ctx = ForwardCtx::new(calib.step_context(step));
    let y: Tensor<4> = model.forward(x, t, class, &ctx)?;
    if HostTensor::from_tensor(&y)
        .data
        .iter()
        .any(|v| !v.is_finite())
    {
        return Err(PipelineError::Option {
            option: "method".into(),
            reason: format!(
                "{method} produced a model with non-finite outputs (diverged); lower the learning rate or raise the bit-width"
            ),
        });
    }
    Ok(())
}
