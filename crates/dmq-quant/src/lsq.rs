//! [`LsqQuantizer`]: learned step size quantization (LSQ), with the optional learnable
//! continuous zero point of EfficientDM's TALSQ and BinaryDM's signed variant (§6.3).

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::error::Result;
use crate::qtensor::AffineParams;
use crate::quantizer::{Quantizer, to_host};
use crate::range::{RangeInit, init_params};
use crate::spec::QuantSpec;
use crate::ste::{fake_quant_affine, grad_scale};

/// LSQ fake-quantizer: `x̂ = (clamp(round(x/Δ) + z, q_min, q_max) − z)·Δ` with Δ learnable
/// and, optionally, z learnable and continuous (rounded only at export).
///
/// With `grad_scale` on, the gradient reaching Δ is multiplied by
/// `g = 1/sqrt(N·Q_p)`, N = elements per parameter group of the input (LSQ; only BinaryDM's
/// `_ActQ` uses it among the reference methods). The forward value is unchanged.
///
/// Gradients (§1.1): ∂x̂/∂Δ = round(x/Δ) − x/Δ inside the range, q_clip − z when clipped
/// (times g); ∂x̂/∂z = 0 inside, −Δ when clipped; ∂x̂/∂x = 1 inside, 0 clipped.
#[derive(Module, Debug)]
pub struct LsqQuantizer {
    /// Learnable step sizes Δ, `[num_params]`.
    pub delta: Param<Tensor<1>>,
    /// Zero points z, `[num_params]` (learnable only when built with `learn_zero`).
    pub zero: Param<Tensor<1>>,
    #[module(skip)]
    spec: QuantSpec,
    #[module(skip)]
    use_grad_scale: bool,
}

impl LsqQuantizer {
    /// Builds from host parameters; Δ is trainable, z trainable iff `learn_zero`.
    pub fn from_params(
        params: &AffineParams,
        learn_zero: bool,
        use_grad_scale: bool,
        device: &Device,
    ) -> Result<Self> {
        params.validate("LsqQuantizer")?;
        let (delta, zero) = params.to_tensors(device);
        Ok(Self {
            delta: Param::from_tensor(delta),
            zero: Param::from_tensor(zero)
                .set_require_grad(learn_zero && !params.spec.is_symmetric()),
            spec: params.spec,
            use_grad_scale,
        })
    }

    /// Initialises from data with `method` (e.g. [`RangeInit::Lsq`] or the PTQ result's method).
    pub fn init<const D: usize>(
        spec: QuantSpec,
        x: Tensor<D>,
        method: &RangeInit,
        learn_zero: bool,
        use_grad_scale: bool,
    ) -> Result<Self> {
        let device = x.device();
        let shape = x.dims();
        let data = to_host(x, "LsqQuantizer::init")?;
        Self::from_params(
            &init_params(&data, &shape, &spec, method)?,
            learn_zero,
            use_grad_scale,
            &device,
        )
    }

    /// BinaryDM's activation quantizer (§6.3): signed symmetric per tensor
    /// (`Q_n = −2^(b−1)`, `Q_p = 2^(b−1) − 1`), gradient scale on, initialised **once** from
    /// `x` with `α = 2·mean|x|/sqrt(Q_p)` (not re-initialised on every call, the reference bug).
    pub fn binarydm_signed<const D: usize>(bits: u32, x: Tensor<D>) -> Result<Self> {
        Self::init(
            QuantSpec::signed_symmetric(bits)?,
            x,
            &RangeInit::Lsq,
            false,
            true,
        )
    }

    /// Whether the LSQ gradient scale is applied.
    pub fn uses_grad_scale(&self) -> bool {
        self.use_grad_scale
    }
}

impl Quantizer for LsqQuantizer {
    fn spec(&self) -> QuantSpec {
        self.spec
    }

    fn fake_quant<const D: usize>(&self, x: Tensor<D>, _step: usize) -> Result<Tensor<D>> {
        let mut delta = self.delta.val();
        if self.use_grad_scale
            && let Some((_, qmax)) = self.spec.int_range()
        {
            let [n] = delta.dims();
            let per_group = x.dims().iter().product::<usize>() / n.max(1);
            let g = 1.0 / ((per_group as f64) * (qmax.max(1) as f64)).sqrt();
            delta = grad_scale(delta, g);
        }
        fake_quant_affine(x, delta, self.zero.val(), &self.spec)
    }

    /// Exported zero points are rounded (continuous z is a training-time relaxation).
    fn affine_params(&self, _step: usize) -> Result<AffineParams> {
        let rounding = self.spec.rounding();
        Ok(AffineParams {
            spec: self.spec,
            delta: to_host(self.delta.val(), "LsqQuantizer delta")?,
            zero: to_host(self.zero.val(), "LsqQuantizer zero")?
                .into_iter()
                .map(|z| crate::qtensor::round_scalar(z, rounding))
                .collect(),
        })
    }
}
