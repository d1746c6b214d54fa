//! [`UniformQuantizer`]: the uniform affine fake-quantizer of docs/algorithms.md §1.1.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::error::Result;
use crate::qtensor::AffineParams;
use crate::quantizer::{Quantizer, to_host};
use crate::range::{RangeInit, init_params};
use crate::spec::QuantSpec;
use crate::ste::fake_quant_affine;

/// Uniform affine fake-quantizer `x̂ = (clamp(round(x/Δ) + z, q_min, q_max) − z)·Δ` with the
/// straight-through estimator (see [`fake_quant_affine`] for the gradients).
///
/// Δ and z are parameters (one per group of the spec's granularity). By default both are
/// frozen, as after PTQ initialisation; [`UniformQuantizer::with_trainable`] turns on
/// gradients for Δ (Q-Diffusion's activation reconstruction) and/or z.
///
/// # Shapes
/// - input: any rank, compatible with the spec's granularity
/// - `delta`, `zero`: `[num_params]`
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use dmq_quant::{QuantSpec, Quantizer, RangeInit, UniformQuantizer};
/// let device = Device::default();
/// let w = Tensor::<2>::from_floats([[0.1, -0.4, 0.25], [1.0, 0.5, -0.2]], &device);
/// let q = UniformQuantizer::init(QuantSpec::int(4)?.per_channel(0), w.clone(), &RangeInit::Max)?;
/// let w_hat = q.fake_quant(w, 0)?;
/// assert_eq!(w_hat.dims(), [2, 3]);
/// # Ok::<(), dmq_quant::QuantError>(())
/// ```
#[derive(Module, Debug)]
pub struct UniformQuantizer {
    /// Step sizes Δ, `[num_params]`.
    pub delta: Param<Tensor<1>>,
    /// Zero points z, `[num_params]`.
    pub zero: Param<Tensor<1>>,
    #[module(skip)]
    spec: QuantSpec,
}

impl UniformQuantizer {
    /// Builds from host parameters (validated: Δ > 0 finite, z finite, z = 0 if symmetric).
    pub fn from_params(params: &AffineParams, device: &Device) -> Result<Self> {
        params.validate("UniformQuantizer")?;
        let (delta, zero) = params.to_tensors(device);
        Ok(Self {
            delta: Param::from_tensor(delta).set_require_grad(false),
            zero: Param::from_tensor(zero).set_require_grad(false),
            spec: params.spec,
        })
    }

    /// Initialises (Δ, z) from data with a range method; the quantizer lives on `x`'s device.
    pub fn init<const D: usize>(spec: QuantSpec, x: Tensor<D>, method: &RangeInit) -> Result<Self> {
        let device = x.device();
        let shape = x.dims();
        let data = to_host(x, "UniformQuantizer::init")?;
        Self::from_params(&init_params(&data, &shape, &spec, method)?, &device)
    }

    /// Enables or disables gradients for Δ and z.
    pub fn with_trainable(mut self, delta: bool, zero: bool) -> Self {
        self.delta = self.delta.set_require_grad(delta);
        self.zero = self.zero.set_require_grad(zero);
        self
    }
}

impl Quantizer for UniformQuantizer {
    fn spec(&self) -> QuantSpec {
        self.spec
    }

    fn fake_quant<const D: usize>(&self, x: Tensor<D>, _step: usize) -> Result<Tensor<D>> {
        fake_quant_affine(x, self.delta.val(), self.zero.val(), &self.spec)
    }

    fn affine_params(&self, _step: usize) -> Result<AffineParams> {
        Ok(AffineParams {
            spec: self.spec,
            delta: to_host(self.delta.val(), "UniformQuantizer delta")?,
            zero: to_host(self.zero.val(), "UniformQuantizer zero")?,
        })
    }
}
