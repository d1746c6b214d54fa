//! Fine-tuning methods of dmq.
//!
//! - [`efficientdm()`]: EfficientDM (He et al., ICLR 2024; docs/algorithms.md §3): naive PTQ, then
//!   QALoRA weights ([`dmq_quant::QaLoraQuantizer`], integer base + LoRA offsets inside the
//!   rounding) and TALSQ activations (one learnable (Δ_x, z_x) per step) trained by data-free
//!   distillation from the FP model along its own trajectories, with per-layer scale-aware
//!   LoRA learning rates. [`finalize`] moves TALSQ to the sampling schedule and rounds z_x so
//!   the model equals its integer export ([`dmq_calib::export_layers`]).
//! - [`binarydm()`]: BinaryDM (Zheng et al., ICLR 2025; docs/algorithms.md §6): QAT of 1-bit
//!   weights (EBB in the head/tail blocks, vanilla σ·sign elsewhere), signed LSQ activations,
//!   LRM feature mimicking ([`lrm`]) against a frozen FP teacher, EMA.
//! - [`quest()`]: QuEST (Wang et al., ICCV 2025; docs/algorithms.md §5): Q-Diffusion AdaRound
//!   weights with a floor STE, timestep-grouped (per-channel at 4 bits) activations, then
//!   time-embedding alignment (stage A) and activation-sensitive layer fine-tuning (stage B)
//!   of the layers [`quest_select`] picks; [`quest_sensitivity`] measures the per-layer
//!   sensitivity that justifies the selection.
//!
//! ```no_run
//! use burn::tensor::Device;
//! use dmq_calib::{CalibSet, QuantConfig};
//! use dmq_finetune::{EfficientDmConfig, efficientdm, finalize};
//! use dmq_models::Denoiser;
//! use dmq_models::scheduler::{DdimConfig, DdimScheduler, Scheduler};
//! use dmq_models::unet::UNet2DModel;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = Device::flex().autodiff();
//! let fp = UNet2DModel::from_pretrained(std::path::Path::new("assets/models/unet-fmnist"), &device)?;
//! let calib = CalibSet::load("calib.safetensors")?;
//! let train = DdimScheduler::diffusers(&DdimConfig::new().with_eta(1.0), 100)?;
//! let (student, report) = efficientdm(
//!     &fp, &QuantConfig::preset("W4A4")?, &calib, &train,
//!     &EfficientDmConfig::default(), None, Some("runs/edm".as_ref()), &device, &mut |_| {},
//! )?;
//! let infer = DdimScheduler::diffusers(&DdimConfig::new(), 20)?;
//! let ts: Vec<f64> = infer.timesteps().iter().map(|&t| t as f64).collect();
//! let deployed = finalize(student, &ts)?;
//! let file = dmq_calib::export_layers(&deployed, 20)?;
//! # Ok(()) }
//! ```

pub mod binarydm;
mod delta_floor;
pub mod efficientdm;
pub mod error;
pub mod lr;
pub mod lrm;
pub mod policy;
pub mod quest;
pub mod quest_select;
pub mod quest_sensitivity;
mod run;
pub mod student;

pub use binarydm::{
    Batch, BinaryDiag, BinaryDmConfig, BinaryDmReport, BinaryPlan, BinaryProgress, binarize,
    binary_plan, binarydm, collapse_ebb, ebb_loss, set_binary_trainable,
};
pub use efficientdm::{
    DistillTarget, EfficientDmConfig, FinetuneProgress, FinetuneReport, ddim_mean_weight,
    distill_loss, efficientdm,
};
pub use error::{FinetuneError, Result};
pub use lr::{LayerLr, LrConfig, layer_lrs, lr_scheduler};
pub use lrm::{LrmAxis, LrmProjection, lrm_loss, symmetric_eigen};
pub use policy::{LayerPolicy, PolicyPlan, Treatment, plan_layers};
pub use quest::{
    QuestConfig, QuestLoss, QuestProgress, QuestReport, QuestStudent, Stage, quest, quest_finetune,
    quest_loss, quest_plans, quest_student, quest_student_with, quest_tuned_scalars,
    set_quest_trainable, tap_mse,
};
pub use quest_select::{QuestSelection, SelectionRules, select_layers};
pub use quest_sensitivity::{
    SensitivityOptions, SensitivityRow, layer_sensitivity, sensitivity_by_set,
};
pub use student::{
    StudentOptions, StudentReport, build_student, finalize, is_sub_grid, set_trainable, talsq,
    trainable_count,
};
