//! [`ModelError`]: typed errors of models, layers, loading and sampling.

use std::path::PathBuf;

use dmq_quant::QuantError;

use crate::scheduler::SchedulerError;

/// Everything that can go wrong in `dmq-models` on user input.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A quantizer of a named layer rejected its input.
    #[error("layer '{layer}': {source}")]
    Quant {
        /// diffusers path of the layer.
        layer: String,
        /// The quantizer's error.
        #[source]
        source: QuantError,
    },
    /// An input tensor of the wrong shape.
    #[error("shape mismatch in {context}: expected {expected}, got {got}")]
    Shape {
        /// Where.
        context: String,
        /// Expected shape, in words.
        expected: String,
        /// Actual shape.
        got: String,
    },
    /// A model configuration that is invalid or not supported (names the option).
    #[error("invalid model config: {0}")]
    Config(String),
    /// A size in a config or file above dmq's [`Limits`](dmq_quant::Limits), refused before
    /// any layer is initialised (a [`QuantError::LimitExceeded`] naming the file and the
    /// field).
    #[error(transparent)]
    Limit(QuantError),
    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A checkpoint that does not fit the model (missing/extra tensors, wrong shapes, dtype).
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A [`LayerExecutor`](crate::LayerExecutor) failed on a named layer.
    #[error("layer '{layer}' (executor): {source}")]
    Executor {
        /// diffusers path of the layer.
        layer: String,
        /// The executor's error.
        #[source]
        source: crate::executor::ExecutorError,
    },
    /// A scheduler error.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// Not a failure: a forward pass with [`Taps::stop_when_complete`](crate::Taps) has
    /// captured everything it was asked for and ended early ([`crate::forward_for_taps`]
    /// turns this into success).
    #[error("forward pass stopped early: every requested tap was captured")]
    TapsComplete,
}

/// Result alias for this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

pub(crate) fn shape_err(
    context: &str,
    expected: impl Into<String>,
    got: impl std::fmt::Debug,
) -> ModelError {
    ModelError::Shape {
        context: context.into(),
        expected: expected.into(),
        got: format!("{got:?}"),
    }
}

/// Replaces the origin of a limit error (configs are checked as `config.json`; a loader that
/// knows the path names it).
pub(crate) fn at_origin(e: ModelError, path: &std::path::Path) -> ModelError {
    match e {
        ModelError::Limit(QuantError::LimitExceeded {
            field,
            value,
            limit,
            what,
            ..
        }) => ModelError::Limit(QuantError::LimitExceeded {
            origin: path.display().to_string(),
            field,
            value,
            limit,
            what,
        }),
        other => other,
    }
}
