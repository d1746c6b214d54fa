//! [`InferError`]: typed errors of the integer inference path.

use dmq_kernels::KernelError;
use dmq_models::ModelError;
use dmq_quant::QuantError;

/// Everything that can go wrong when building or running an integer model.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The export does not fit the model, or one of its entries is malformed.
    #[error("{origin}: export entry '{entry}': {reason}")]
    Export {
        /// The export file (its [`QuantizedFile::origin_name`](dmq_quant::QuantizedFile::origin_name)).
        origin: String,
        /// The tensor or metadata key.
        entry: String,
        /// What is wrong.
        reason: String,
    },
    /// A layer the executor was asked to compute that it does not hold.
    #[error("layer '{layer}' has no integer kernel in this executor")]
    UnknownLayer {
        /// diffusers path of the layer.
        layer: String,
    },
    /// A sampling step past the exported activation parameters.
    #[error(
        "layer '{layer}': step {step} has no activation parameters (the export covers {len} steps)"
    )]
    Step {
        /// diffusers path of the layer.
        layer: String,
        /// The requested step.
        step: usize,
        /// Steps in the export.
        len: usize,
    },
    /// An input of the wrong shape.
    #[error("layer '{layer}': input shape {got:?}, expected {expected}")]
    Shape {
        /// diffusers path of the layer.
        layer: String,
        /// Expected, in words.
        expected: String,
        /// Actual shape.
        got: Vec<usize>,
    },
    /// A kernel rejected its input.
    #[error("layer '{layer}': {source}")]
    Kernel {
        /// diffusers path of the layer.
        layer: String,
        /// The kernel's error.
        #[source]
        source: KernelError,
    },
    /// A quantizer or export-format error.
    #[error(transparent)]
    Quant(#[from] QuantError),
    /// A model error (forward pass, loading).
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Result alias for this crate.
pub type Result<T, E = InferError> = std::result::Result<T, E>;

pub(crate) fn export_err(
    origin: &str,
    entry: impl Into<String>,
    reason: impl Into<String>,
) -> InferError {
    InferError::Export {
        origin: origin.into(),
        entry: entry.into(),
        reason: reason.into(),
    }
}
