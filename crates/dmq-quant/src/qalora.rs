//! [`QaLoraQuantizer`]: EfficientDM's quantization-aware LoRA in the shared-scale integer form
//! (docs/algorithms.md §3.1).
//!
//! ```text
//! Ŵ = Δ_w · ( clamp( W_int + round(B·A / Δ_w), q_min, q_max ) − z_w )
//! ```
//!
//! `W_int` are the integer codes of a naive PTQ pass and stay fixed; LoRA only adds integer
//! offsets `round(B·A/Δ_w)`, so the deployed layer is purely integer and the merged export
//! ([`Quantizer::export`]) is `W_int' = clamp(W_int + round(B·A/Δ_w))` with the same Δ_w, z_w.
//! Δ_w is one tensor used both to dequantize the base and to re-quantize the update (the
//! reference's shared storage), so its gradient has both paths.
//!
//! Why not burn's `Lora`/reparameterization: burn's LoRA adapts 2-D weights in float (W + BA
//! then a separate quantizer), has no integer base and no conv layout; this form needs the
//! adapter inside the rounding, so it is a weight quantizer of its own.

use burn::module::{Module, Param};
use burn::tensor::{Distribution, Tensor, TensorData};

use crate::error::{QuantError, Result};
use crate::qtensor::{AffineParams, QuantizedTensor, round_scalar};
use crate::quantizer::{Quantizer, check_weight_shape, to_host};
use crate::spec::{Granularity, QuantSpec};
use crate::ste::round_ste;

/// QALoRA weight quantizer over a frozen integer base.
///
/// # Shapes
/// - weight (logical): `[C_out, ...]` with `fan_in = numel / C_out` (conv `[C_out, C_in, k, k]`
///   flattens to `[C_out, C_in·k·k]`, the reference's `B.squeeze() @ A` layout)
/// - `codes` (W_int, as f32): `[C_out, fan_in]`; `lora_a`: `[r, fan_in]`; `lora_b`: `[C_out, r]`
/// - `delta`, `zero`: `[C_out]`, or `[C_out·n_groups]` for a linear weight quantized per group
///   of `G = fan_in / n_groups` inputs (`Granularity::PerGroup { axis: 1, size: G }`)
#[derive(Module, Debug)]
pub struct QaLoraQuantizer {
    /// Integer base codes `q ∈ [q_min, q_max]` stored as f32, frozen.
    pub codes: Param<Tensor<2>>,
    /// LoRA down-projection A `[r, fan_in]`, Kaiming-uniform U(±1/√fan_in).
    pub lora_a: Param<Tensor<2>>,
    /// LoRA up-projection B `[C_out, r]`, zeros at init.
    pub lora_b: Param<Tensor<2>>,
    /// Per-output-channel Δ_w (trainable).
    pub delta: Param<Tensor<1>>,
    /// Per-output-channel z_w (never trained).
    pub zero: Param<Tensor<1>>,
    #[module(skip)]
    spec: QuantSpec,
    #[module(skip)]
    shape: Vec<usize>,
}

impl QaLoraQuantizer {
    /// Builds from the weight `w` and its naive-PTQ parameters (per output channel, axis 0):
    /// W_int = clamp(round(W/Δ) + z), A ~ U(±1/√fan_in) (burn's RNG on `w`'s device),
    /// B = 0, rank `rank`.
    ///
    /// burn's RNG is one process-wide stream: two builds in parallel threads draw from it
    /// in an order that changes run to run. [`Self::from_ptq_seeded`] is reproducible.
    pub fn from_ptq<const D: usize>(
        w: Tensor<D>,
        params: &AffineParams,
        rank: usize,
    ) -> Result<Self> {
        Self::build(w, params, rank, None)
    }

    /// [`Self::from_ptq`] with A drawn on the host from `uniform01`, a source of U(0, 1)
    /// samples (row-major `[rank, fan_in]`): A = (2u − 1)/√fan_in.
    pub fn from_ptq_seeded<const D: usize>(
        w: Tensor<D>,
        params: &AffineParams,
        rank: usize,
        uniform01: &mut dyn FnMut() -> f64,
    ) -> Result<Self> {
        Self::build(w, params, rank, Some(uniform01))
    }

    fn build<const D: usize>(
        w: Tensor<D>,
        params: &AffineParams,
        rank: usize,
        uniform01: Option<&mut dyn FnMut() -> f64>,
    ) -> Result<Self> {
        let device = w.device();
        let shape = w.dims().to_vec();
        match params.spec.granularity() {
            Granularity::PerChannel { axis: 0 } => {}
            Granularity::PerGroup { axis: 1, .. } if shape.len() == 2 => {}
            g => {
                return Err(QuantError::Unsupported(format!(
                    "QALoRA needs per-output-channel weight parameters (axis 0), or groups \
                     along the input axis of a linear weight, got {g:?}"
                )));
            }
        }
        if rank == 0 {
            return Err(QuantError::Unsupported("QALoRA rank 0".into()));
        }
        let data = to_host(w, "QaLoraQuantizer::from_ptq")?;
        let qt = QuantizedTensor::quantize(&data, &shape, params)?;
        let codes: Vec<f32> = qt.int_values()?.into_iter().map(|q| q as f32).collect();
        let c_out = shape[0];
        let fan_in = codes.len() / c_out.max(1);
        let k = 1.0 / (fan_in.max(1) as f64).sqrt();
        let (delta, zero) = params.to_tensors(&device);
        Ok(Self {
            codes: Param::from_tensor(Tensor::from_data(
                TensorData::new(codes, [c_out, fan_in]),
                &device,
            ))
            .set_require_grad(false),
            lora_a: Param::from_tensor(match uniform01 {
                Some(u) => {
                    let a: Vec<f32> = (0..rank * fan_in)
                        .map(|_| ((2.0 * u() - 1.0) * k) as f32)
                        .collect();
                    Tensor::from_data(TensorData::new(a, [rank, fan_in]), &device)
                }
                None => Tensor::random([rank, fan_in], Distribution::Uniform(-k, k), &device),
            }),
            lora_b: Param::from_tensor(Tensor::zeros([c_out, rank], &device)),
            delta: Param::from_tensor(delta),
            zero: Param::from_tensor(zero).set_require_grad(false),
            spec: params.spec,
            shape,
        })
    }

    /// LoRA rank r.
    pub fn rank(&self) -> usize {
        self.lora_a.val().dims()[0]
    }

    /// Logical weight shape.
    pub fn weight_shape(&self) -> &[usize] {
        &self.shape
    }

    /// Mean of Δ_w over the output channels (EfficientDM's per-layer LoRA learning rate is
    /// `mean(Δ_w)/2500`).
    pub fn mean_delta(&self) -> Result<f64> {
        let d = to_host(self.delta.val(), "QaLoraQuantizer delta")?;
        Ok(d.iter().map(|&v| v as f64).sum::<f64>() / d.len().max(1) as f64)
    }

    /// `[C_out, n_groups, G]`: the parameter layout (one group of `fan_in` inputs when per
    /// channel).
    fn groups(&self) -> [usize; 3] {
        let [c_out, fan_in] = self.codes.val().dims();
        let n_groups = (self.delta.val().dims()[0] / c_out.max(1)).max(1);
        [c_out, n_groups, fan_in / n_groups]
    }

    /// A per-parameter vector as `[C_out, n_groups, 1]`, broadcasting over each group.
    fn per_group(&self, t: Tensor<1>) -> Tensor<3> {
        let [c, ng, _] = self.groups();
        t.reshape([c, ng, 1])
    }

    /// `clamp(W_int + round_ste(B·A/Δ_w), q_min, q_max)` as f32 `[C_out, n_groups, G]`.
    fn merged_codes(&self) -> Result<Tensor<3>> {
        let (qmin, qmax) = self
            .spec
            .int_range()
            .ok_or_else(|| QuantError::Unsupported("QALoRA over a float spec".into()))?;
        let g = self.groups();
        let delta = self.per_group(self.delta.val());
        let update = self.lora_b.val().matmul(self.lora_a.val()).reshape(g) / delta;
        Ok(
            (self.codes.val().reshape(g) + round_ste(update, self.spec.rounding()))
                .clamp(qmin as f32, qmax as f32),
        )
    }

    /// The merged integer weight `W_int'` with Δ_w and z_w: what the deployed layer stores.
    pub fn merged(&self) -> Result<QuantizedTensor> {
        let (qmin, _) = self.spec.int_range().unwrap_or((0, 0));
        let q = to_host(self.merged_codes()?, "QaLoraQuantizer merged codes")?;
        let codes: Vec<u8> = q
            .iter()
            .map(|&v| (round_scalar(v, self.spec.rounding()) - qmin as f32) as u8)
            .collect();
        QuantizedTensor::from_codes(&codes, &self.shape, self.affine_params(0)?)
    }
}

impl Quantizer for QaLoraQuantizer {
    fn spec(&self) -> QuantSpec {
        self.spec
    }

    /// `x` only supplies the shape (the base codes replace the FP weight).
    fn fake_quant<const D: usize>(&self, x: Tensor<D>, _step: usize) -> Result<Tensor<D>> {
        let dims = x.dims();
        check_weight_shape(&self.shape, &dims, "QaLoraQuantizer::fake_quant")?;
        let delta = self.per_group(self.delta.val());
        let zero = self.per_group(self.zero.val());
        let w = (self.merged_codes()? - zero) * delta;
        Ok(w.reshape(dims))
    }

    fn affine_params(&self, _step: usize) -> Result<AffineParams> {
        Ok(AffineParams {
            spec: self.spec,
            delta: to_host(self.delta.val(), "QaLoraQuantizer delta")?,
            zero: to_host(self.zero.val(), "QaLoraQuantizer zero")?,
        })
    }

    /// The merged codes (not a re-quantization of `x`): dequantizes to the fake-quant weight.
    fn export<const D: usize>(&self, x: Tensor<D>, _step: usize) -> Result<QuantizedTensor> {
        check_weight_shape(&self.shape, &x.dims(), "QaLoraQuantizer::export")?;
        self.merged()
    }
}
