//! The [`Quantizer`] trait: what every quantizer offers to layers and exporters.

use burn::tensor::Tensor;

use crate::error::Result;
use crate::qtensor::{AffineParams, QuantizedTensor};
use crate::spec::QuantSpec;

/// A differentiable fake-quantizer with an integer export.
///
/// `step` is the explicit sampling-step index from the caller's step context. Quantizers
/// without time dependence ignore it; [`TimeIndexed`](crate::TimeIndexed) selects its
/// parameter set with it. No implementation counts calls.
pub trait Quantizer {
    /// The spec (bits, range, granularity) of this quantizer at `step`.
    fn spec(&self) -> QuantSpec;

    /// Quantize-dequantize `x` with straight-through gradients.
    fn fake_quant<const D: usize>(&self, x: Tensor<D>, step: usize) -> Result<Tensor<D>>;

    /// The integer-grid parameters (Δ, z) in force at `step`, copied to the host.
    fn affine_params(&self, step: usize) -> Result<AffineParams>;

    /// Integer codes of `x` plus the parameters needed to dequantize them.
    ///
    /// The default quantizes with [`Quantizer::affine_params`] (round-to-nearest);
    /// quantizers with learned rounding or sign codes override it. `dequantize()` of the
    /// result equals [`Quantizer::fake_quant`] of `x`.
    fn export<const D: usize>(&self, x: Tensor<D>, step: usize) -> Result<QuantizedTensor> {
        let params = self.affine_params(step)?;
        QuantizedTensor::quantize_tensor(x, &params)
    }
}

/// Reads a rank-1 parameter tensor back to the host as f32.
pub(crate) fn to_host<const D: usize>(t: Tensor<D>, context: &str) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| crate::QuantError::Data {
            context: context.into(),
            reason: format!("{e:?}"),
        })
}

/// `Ok` when a weight of shape `got` is the one a per-element quantizer was built for.
pub(crate) fn check_weight_shape(expected: &[usize], got: &[usize], context: &str) -> Result<()> {
    if expected == got {
        return Ok(());
    }
    Err(crate::QuantError::ShapeMismatch {
        expected: format!("{expected:?}"),
        got: format!("{got:?}"),
        context: context.into(),
    })
}
