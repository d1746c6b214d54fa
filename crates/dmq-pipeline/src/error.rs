//! [`PipelineError`]: every error of the pipeline, naming the file and the field at fault.

use std::path::PathBuf;

/// Everything that can go wrong in `dmq-pipeline` on user input.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A file that is missing, unreadable, or not what it claims to be.
    #[error("{path}: {field}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// The key or entry at fault (`config.json:_class_name`, `dmq.format`, ...).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A model class this version of dmq cannot build.
    #[error(
        "{path}: _class_name '{class}' is not supported (supported: UNet2DModel, DiTTransformer2DModel, UNet2DConditionModel)"
    )]
    UnsupportedModel {
        /// The config file.
        path: PathBuf,
        /// Its `_class_name`.
        class: String,
    },
    /// A bad option value (method, preset, sample count...).
    #[error("option {option}: {reason}")]
    Option {
        /// The option.
        option: String,
        /// What is wrong.
        reason: String,
    },
    /// A model error (config, weights, forward pass).
    #[error(transparent)]
    Model(#[from] dmq_models::ModelError),
    /// A calibration / PTQ / reconstruction error.
    #[error(transparent)]
    Calib(#[from] dmq_calib::CalibError),
    /// A fine-tuning error.
    #[error(transparent)]
    Finetune(#[from] dmq_finetune::FinetuneError),
    /// An integer-path / export error.
    #[error(transparent)]
    Infer(#[from] dmq_infer::InferError),
    /// A quantizer or quantized-file error.
    #[error(transparent)]
    Quant(#[from] dmq_quant::QuantError),
    /// An evaluation error (data, classifier, metrics, images).
    #[error(transparent)]
    Eval(#[from] dmq_eval::DataError),
    /// A search error (TMPQ).
    #[error(transparent)]
    Search(#[from] dmq_search::SearchError),
    /// A scheduler error.
    #[error(transparent)]
    Scheduler(#[from] dmq_models::scheduler::SchedulerError),
}

/// Result of the pipeline.
pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

pub(crate) fn file_err(
    path: impl Into<PathBuf>,
    field: impl Into<String>,
    reason: impl Into<String>,
) -> PipelineError {
    PipelineError::File {
        path: path.into(),
        field: field.into(),
        reason: reason.into(),
    }
}
