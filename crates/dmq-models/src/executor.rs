//! [`LayerExecutor`]: runs the arithmetic of quantizable layers outside burn.
//!
//! Fake quantization computes in f32; an integer inference path (`dmq-infer`) computes the
//! same layers with integer kernels. The model code stays one code path: a forward pass
//! carrying an executor in its [`ForwardCtx`](crate::ForwardCtx) hands every layer the
//! executor [`handles`](LayerExecutor::handles) to it, with the layer's **unquantized**
//! input on the host, and continues with the result. Layers it does not handle run in burn
//! as usual (with their own quantizers, if any). Inference only: no gradient flows through
//! an executed layer.

use crate::context::{HostTensor, StepContext};

/// The error an executor reports for a layer (wrapped in
/// [`ModelError::Executor`](crate::ModelError::Executor) with the layer's name).
pub type ExecutorError = Box<dyn std::error::Error + Send + Sync>;

/// Stride and zero padding of a convolution call (square, symmetric; groups = 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

/// Computes quantizable layers by name, on host tensors.
///
/// # Shapes
/// - [`linear`](Self::linear): `x [rows, d_in]` → `[rows, d_out]` (leading axes flattened)
/// - [`conv2d`](Self::conv2d): `x [B, C_in, H, W]` → `[B, C_out, H', W']`
/// - [`matmul`](Self::matmul): `a [B, H, N, K]`, `b [B, H, K, M]` → `[B, H, N, M]`
/// - [`attention`](Self::attention): `q, k, v [B, N, H·d]` → `[B, N, H·d]`
pub trait LayerExecutor: std::fmt::Debug + Sync {
    /// Whether this executor computes `layer` (checked before the input is copied).
    fn handles(&self, layer: &str) -> bool;

    /// Output of the linear layer `layer` (bias included) for its unquantized input.
    fn linear(
        &self,
        layer: &str,
        x: &HostTensor,
        step: &StepContext,
    ) -> Result<HostTensor, ExecutorError>;

    /// Output of the convolution `layer` (bias included) for its unquantized input.
    fn conv2d(
        &self,
        layer: &str,
        x: &HostTensor,
        geometry: ConvGeometry,
        step: &StepContext,
    ) -> Result<HostTensor, ExecutorError>;

    /// The product `a·b` of the attention matmul `layer` for its unquantized operands.
    fn matmul(
        &self,
        layer: &str,
        a: &HostTensor,
        b: &HostTensor,
        step: &StepContext,
    ) -> Result<HostTensor, ExecutorError>;

    /// The fused attention core `sv(softmax(qk(q, kᵀ)·scale), v)` per head, the heads split
    /// from the last axis of `q`, `k`, `v`, or `None` to run the two products one by one
    /// through [`matmul`](Self::matmul) (the default).
    fn attention(
        &self,
        qk: &str,
        sv: &str,
        qkv: [&HostTensor; 3],
        heads: usize,
        scale: f32,
        step: &StepContext,
    ) -> Option<Result<HostTensor, ExecutorError>> {
        let _ = (qk, sv, qkv, heads, scale, step);
        None
    }
}
