//! Typed errors of the quantizer primitives.

use std::path::PathBuf;

/// Everything that can go wrong in `dmq-quant` on user input.
///
/// Every variant says what was wrong and where (which parameter, index, axis or file),
/// so that a caller can report it without a backtrace.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// A bit-width outside the supported range.
    #[error("invalid bit-width {bits} for {context}: supported integer widths are {min}..={max}")]
    InvalidBits {
        /// The requested width.
        bits: u32,
        /// Smallest supported width in this context.
        min: u32,
        /// Largest supported width in this context.
        max: u32,
        /// Where the width was used.
        context: String,
    },
    /// A step size (scale) that is zero, negative or not finite.
    #[error("invalid scale {value} at index {index} of {context}: scales must be finite and > 0")]
    InvalidScale {
        /// The offending value.
        value: f32,
        /// Its flat index in the scale vector.
        index: usize,
        /// Which quantizer or tensor.
        context: String,
    },
    /// A zero point that is not finite.
    #[error("invalid zero point {value} at index {index} of {context}: zero points must be finite")]
    InvalidZeroPoint {
        /// The offending value.
        value: f32,
        /// Its flat index.
        index: usize,
        /// Which quantizer or tensor.
        context: String,
    },
    /// NaN or infinity in data that must be finite (weights, calibration activations).
    #[error("non-finite value {value} at flat index {index} of {context}")]
    NonFinite {
        /// The offending value.
        value: f32,
        /// Flat (row-major) index.
        index: usize,
        /// Which tensor.
        context: String,
    },
    /// An axis that the tensor does not have.
    #[error("axis {axis} out of range for a rank-{rank} tensor ({context})")]
    AxisOutOfRange {
        /// Requested axis.
        axis: usize,
        /// Rank of the tensor.
        rank: usize,
        /// Where.
        context: String,
    },
    /// Shapes that do not fit together.
    #[error("shape mismatch in {context}: expected {expected}, got {got}")]
    ShapeMismatch {
        /// What was expected, in words or as a shape.
        expected: String,
        /// What was found.
        got: String,
        /// Where.
        context: String,
    },
    /// A group size that does not divide the grouped axis.
    #[error("group size {group} does not divide axis {axis} of length {len} ({context})")]
    BadGroupSize {
        /// Group size G.
        group: usize,
        /// Axis that is grouped.
        axis: usize,
        /// Length of that axis.
        len: usize,
        /// Where.
        context: String,
    },
    /// A time-indexed quantizer was asked for a step it has no parameters for.
    #[error("step index {step} out of range: {context} holds {len} parameter sets")]
    StepOutOfRange {
        /// Requested step index.
        step: usize,
        /// Number of parameter sets.
        len: usize,
        /// Which quantizer.
        context: String,
    },
    /// A combination of options that is not meaningful (e.g. symmetric 1-bit uniform).
    #[error("unsupported configuration: {0}")]
    Unsupported(String),
    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file or buffer that is not a valid dmq quantized-tensor file.
    #[error("malformed quantized file {path}: {reason}")]
    Malformed {
        /// The file (or `<memory>` for buffers).
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// A field of a file (or of another input surface) that is present but invalid:
    /// names the source and the field.
    #[error("{origin}: field '{field}': {reason}")]
    InvalidField {
        /// The file (or `<memory>`).
        origin: String,
        /// The field: a metadata key, tensor name or JSON path.
        field: String,
        /// What was wrong.
        reason: String,
    },
    /// A size in an input above the loader's [`Limits`](crate::Limits), refused before
    /// anything of that size is allocated.
    #[error(
        "{origin}: field '{field}' asks for {value} {what}, above the limit of {limit} \
         (see dmq_quant::Limits)"
    )]
    LimitExceeded {
        /// The file (or `<memory>`).
        origin: String,
        /// The field.
        field: String,
        /// The requested size (saturated at `u64::MAX` when it overflows).
        value: u64,
        /// The limit it exceeds.
        limit: u64,
        /// What is counted (e.g. "elements", "steps").
        what: &'static str,
    },
    /// A step size and zero point whose extreme codes dequantize to a non-finite value
    /// (a finite but huge Δ).
    #[error(
        "step size {delta} with zero point {zero} at index {index} of {context} dequantizes \
         codes {qmin}..={qmax} to a non-finite value"
    )]
    DequantOverflow {
        /// Δ.
        delta: f32,
        /// z.
        zero: f32,
        /// Flat index of the parameter group.
        index: usize,
        /// Smallest code.
        qmin: i32,
        /// Largest code.
        qmax: i32,
        /// Which quantizer or tensor.
        context: String,
    },
    /// A tensor read back from the device could not be converted to f32.
    #[error("tensor data error in {context}: {reason}")]
    Data {
        /// Where.
        context: String,
        /// burn's message.
        reason: String,
    },
}

/// Result alias for this crate.
pub type Result<T, E = QuantError> = std::result::Result<T, E>;
