//! Typed errors of the kernels. Nothing in this crate panics on user input: shapes, specs,
//! bit-widths and instruction sets are checked up front and reported here.

use dmq_quant::QuantError;

/// Everything that can go wrong in `dmq-kernels` on user input.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A buffer or shape that does not match what the call needs.
    #[error("shape mismatch in {context}: expected {expected}, got {got}")]
    ShapeMismatch {
        /// What was expected.
        expected: String,
        /// What was given.
        got: String,
        /// Which call or argument.
        context: String,
    },
    /// A bit-width the kernel does not implement.
    #[error("unsupported bit-width {bits} for {context}: supported widths are {supported}")]
    UnsupportedBits {
        /// The requested width.
        bits: u32,
        /// The widths that are implemented, in words.
        supported: String,
        /// Which kernel or quantizer.
        context: String,
    },
    /// A quantization spec (granularity, zero point, float state) the kernel cannot run.
    #[error("unsupported spec for {context}: {reason}")]
    UnsupportedSpec {
        /// Why it cannot run.
        reason: String,
        /// Which kernel or tensor.
        context: String,
    },
    /// An instruction set that this CPU (or this build) does not have.
    #[error("instruction set {isa} is not available on this CPU")]
    IsaUnavailable {
        /// Name of the instruction set.
        isa: &'static str,
    },
    /// The reduction length is too long for exact `i32` accumulation.
    #[error(
        "reduction length K = {k} exceeds {max} ({context}): the i32 accumulators could overflow"
    )]
    TooLong {
        /// The reduction length.
        k: usize,
        /// The largest supported reduction length.
        max: usize,
        /// Which call.
        context: String,
    },
    /// NaN or infinity in an input that must be finite.
    #[error("non-finite value {value} at flat index {index} of {context}")]
    NonFinite {
        /// The offending value.
        value: f32,
        /// Flat (row-major) index.
        index: usize,
        /// Which tensor.
        context: String,
    },
    /// A step size or zero point that is not usable (Δ ≤ 0, non-finite, non-integer z).
    #[error("invalid quantization parameter in {context}: {reason}")]
    InvalidParam {
        /// What is wrong.
        reason: String,
        /// Which quantizer.
        context: String,
    },
    /// The GPU device could not be created or failed while running a kernel.
    #[error("GPU device error in {context}: {reason}")]
    Device {
        /// What went wrong.
        reason: String,
        /// Which call.
        context: String,
    },
    /// An error from `dmq-quant` (unpacking codes, spec checks).
    #[error(transparent)]
    Quant(#[from] QuantError),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, KernelError>;

/// Shape-mismatch error helper.
pub(crate) fn shape_err(
    expected: impl Into<String>,
    got: impl Into<String>,
    context: &str,
) -> KernelError {
    KernelError::ShapeMismatch {
        expected: expected.into(),
        got: got.into(),
        context: context.into(),
    }
}
