//! [`FinetuneError`]: what can go wrong while building, training or exporting a fine-tuned
//! student.

use std::path::PathBuf;

/// Errors of the fine-tuning methods.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    /// A calibration, PTQ or export step failed.
    #[error(transparent)]
    Calib(#[from] dmq_calib::CalibError),
    /// A model forward pass, scheduler step or checkpoint read failed.
    #[error(transparent)]
    Model(#[from] dmq_models::ModelError),
    /// A quantizer could not be built or evaluated.
    #[error(transparent)]
    Quant(#[from] dmq_quant::QuantError),
    /// An option is out of range (rank 0, no epochs, a learning rate outside (0, 1]...).
    #[error("invalid fine-tuning option: {0}")]
    Option(String),
    /// A layer cannot be converted (no per-channel weight quantizer, unexpected quantizer kind).
    #[error("layer {layer}: {reason}")]
    Layer {
        /// diffusers path of the layer.
        layer: String,
        /// What was wrong.
        reason: String,
    },
    /// The distillation loss became NaN or infinite.
    #[error(
        "distillation loss is {loss} at epoch {epoch}, step {step}: lower the learning rates or check the calibration data"
    )]
    NonFinite {
        /// The loss value.
        loss: f64,
        /// Epoch (trajectory) index.
        epoch: usize,
        /// Sampling step within the trajectory.
        step: usize,
    },
    /// A QuEST stage produced a NaN or infinite loss.
    #[error(
        "QuEST stage {stage} loss is {loss} in timestep group {group}: lower the learning rates or check the calibration data"
    )]
    NonFiniteStage {
        /// The loss.
        loss: f64,
        /// `"A"` or `"B"`.
        stage: &'static str,
        /// Timestep group.
        group: usize,
    },
    /// A checkpoint belongs to another run or cannot be used.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// Checkpoint directory.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, FinetuneError>;
