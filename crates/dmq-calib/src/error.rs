//! [`CalibError`]: typed errors of configs, calibration sets, PTQ and reconstruction.

use std::path::PathBuf;

use dmq_models::ModelError;
use dmq_quant::QuantError;

/// Everything that can go wrong in `dmq-calib` on user input.
#[derive(Debug, thiserror::Error)]
pub enum CalibError {
    /// A layer pattern of a [`crate::QuantConfig`] that matches no layer of the model.
    #[error(
        "pattern '{pattern}' ({role}) matches no quantizable layer of the model; layers look like '{example}'"
    )]
    UnmatchedPattern {
        /// The glob pattern.
        pattern: String,
        /// Which rule or policy it came from.
        role: String,
        /// A real layer name, to show the naming.
        example: String,
    },
    /// A spec a layer cannot take (axis beyond its rank, group size not dividing it, ...).
    #[error("layer '{layer}' cannot take {what}: {reason}")]
    BadLayerSpec {
        /// diffusers path of the layer.
        layer: String,
        /// Which quantizer (weight / activation).
        what: String,
        /// Why.
        reason: String,
    },
    /// An unknown preset name.
    #[error(
        "unknown quantization preset '{0}': use one of fp, W8A8, W4A8, W4A4, W2A8, W1A4, W8A32, W4A32, W1A32, or WxAy with x in 1..=8 (or 32) and y in 2..=8 (or 32)"
    )]
    UnknownPreset(String),
    /// A calibration set that is empty, inconsistent or does not fit the model.
    #[error("calibration set: {0}")]
    CalibSet(String),
    /// A malformed or truncated calibration or checkpoint file.
    #[error("file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Invalid options of a calibration or reconstruction run.
    #[error("invalid option: {0}")]
    Option(String),
    /// An error of the model (shapes, quantizers of a named layer).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// An error of a quantizer primitive.
    #[error(transparent)]
    Quant(#[from] QuantError),
}

/// Result alias for this crate.
pub type Result<T, E = CalibError> = std::result::Result<T, E>;
