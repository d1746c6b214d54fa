//! Binary weight quantizers (docs/algorithms.md §6.1): the vanilla binarizer σ·sign(w) and the
//! multi-basis / evolvable-basis binarizer (EBB) with its regulariser and collapse.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{QuantError, Result};
use crate::qtensor::{AffineParams, QuantizedTensor, check_finite};
use crate::quantizer::{Quantizer, to_host};
use crate::spec::QuantSpec;
use crate::ste::sign_ste;

/// Per-output-channel mean |x| of row-major data with `rows` = shape[0].
fn channel_mean_abs(data: &[f32], rows: usize) -> Vec<f32> {
    let per = data.len() / rows.max(1);
    data.chunks(per.max(1))
        .map(|c| (c.iter().map(|v| v.abs() as f64).sum::<f64>() / c.len() as f64) as f32)
        .collect()
}

/// Host sign with sign(0) = +1 (reference computations).
pub fn sign_scalar(v: f32) -> f32 {
    if v >= 0.0 { 1.0 } else { -1.0 }
}

fn weight_host<const D: usize>(w: Tensor<D>, context: &str) -> Result<(Vec<f32>, Vec<usize>)> {
    let shape = w.dims().to_vec();
    if D < 1 || shape[0] == 0 {
        return Err(QuantError::ShapeMismatch {
            expected: "a weight with at least one output channel".into(),
            got: format!("{shape:?}"),
            context: context.into(),
        });
    }
    let data = to_host(w, context)?;
    check_finite(&data, context)?;
    Ok((data, shape))
}

fn sigma_param(values: Vec<f32>, device: &Device) -> Param<Tensor<1>> {
    let n = values.len();
    // σ = 0 would make the channel constant and its gradient useless; keep a tiny floor.
    let values = values.into_iter().map(|s| s.max(1e-8)).collect();
    Param::from_tensor(Tensor::from_data(TensorData::new(values, [n]), device))
}

fn per_channel<const D: usize>(sigma: Tensor<1>, channels: usize) -> Tensor<D> {
    let mut s = [1usize; D];
    s[0] = channels;
    sigma.reshape(s)
}

fn check_channels<const D: usize>(w: &Tensor<D>, channels: usize, context: &str) -> Result<()> {
    let dims = w.dims();
    if D == 0 || dims[0] != channels {
        return Err(QuantError::ShapeMismatch {
            expected: format!("{channels} output channels on axis 0"),
            got: format!("{dims:?}"),
            context: context.into(),
        });
    }
    Ok(())
}

/// 1-bit export spec: unsigned codes c ∈ {0, 1}, value σ·(2c − 1) = (c − ½)·2σ.
fn binary_params(sigma: &[f32]) -> Result<AffineParams> {
    Ok(AffineParams {
        spec: QuantSpec::int(1)?.per_channel(0),
        delta: sigma.iter().map(|s| 2.0 * s).collect(),
        zero: vec![0.5; sigma.len()],
    })
}

/// One bitplane `σ_c·sign(v)` with `positive[i]` = (sign(v_i) = +1), σ per output channel.
///
/// A learnable σ can cross zero during training (BinaryDM's zero-initialised adaLN
/// modulation does), but a packed scale must be > 0: since σ·sign(v) = |σ|·(−sign(v)), a
/// negative channel stores its codes flipped with |σ|, and σ = 0 (an all-zero channel) the
/// smallest positive scale, so the export dequantizes to the trained forward.
fn bitplane(positive: &[bool], shape: &[usize], sigma: &[f32]) -> Result<QuantizedTensor> {
    // callers checked `sigma.len()` = shape[0] ≥ 1
    let per = positive.len() / sigma.len();
    let codes: Vec<u8> = positive
        .iter()
        .enumerate()
        .map(|(i, &p)| (p != (sigma[i / per] < 0.0)) as u8)
        .collect();
    // |NaN| stays NaN, which `from_codes` rejects as a typed error
    let scale: Vec<f32> = sigma
        .iter()
        .map(|&s| if s == 0.0 { f32::MIN_POSITIVE } else { s.abs() })
        .collect();
    QuantizedTensor::from_codes(&codes, shape, binary_params(&scale)?)
}

/// Vanilla binarizer `ŵ = σ·sign(w)`, sign(0) = +1, σ per output channel (axis 0),
/// initialised to mean|w| and learnable; clipped STE (gradient to w is `1[|w| ≤ 1]`).
///
/// # Shapes
/// - weight: `[C_out, ...]`; `sigma`: `[C_out]`
#[derive(Module, Debug)]
pub struct BinaryQuantizer {
    /// Per-channel scales σ.
    pub sigma: Param<Tensor<1>>,
}

impl BinaryQuantizer {
    /// σ = mean|w| per output channel.
    pub fn init<const D: usize>(weight: Tensor<D>) -> Result<Self> {
        let device = weight.device();
        let (w, shape) = weight_host(weight, "BinaryQuantizer::init")?;
        Ok(Self {
            sigma: sigma_param(channel_mean_abs(&w, shape[0]), &device),
        })
    }

    /// Number of output channels.
    pub fn channels(&self) -> usize {
        self.sigma.val().dims()[0]
    }
}

impl Quantizer for BinaryQuantizer {
    fn spec(&self) -> QuantSpec {
        binary_spec()
    }

    fn fake_quant<const D: usize>(&self, w: Tensor<D>, _step: usize) -> Result<Tensor<D>> {
        let c = self.channels();
        check_channels(&w, c, "BinaryQuantizer::fake_quant")?;
        Ok(sign_ste(w) * per_channel::<D>(self.sigma.val(), c))
    }

    fn affine_params(&self, _step: usize) -> Result<AffineParams> {
        binary_params(&to_host(self.sigma.val(), "BinaryQuantizer sigma")?)
    }

    fn export<const D: usize>(&self, w: Tensor<D>, _step: usize) -> Result<QuantizedTensor> {
        check_channels(&w, self.channels(), "BinaryQuantizer::export")?;
        let (data, shape) = weight_host(w, "BinaryQuantizer::export")?;
        let positive: Vec<bool> = data.iter().map(|&v| v >= 0.0).collect();
        bitplane(
            &positive,
            &shape,
            &to_host(self.sigma.val(), "BinaryQuantizer sigma")?,
        )
    }
}

fn binary_spec() -> QuantSpec {
    QuantSpec::int(1)
        .expect("1 is a valid width")
        .per_channel(0)
}

/// Multi-basis binarizer (BinaryDM's LMB/EBB, §6.1):
///
/// ```text
/// ŵ = σ_I·sign(w) + σ_II·sign(w − σ_I·sign(w))      (two bases)
/// ŵ = σ_I·sign(w)                                   (after collapse)
/// σ_I⁰ = mean|w|,  σ_II⁰ = mean|w − σ_I⁰·sign(w)|   (per output channel)
/// ```
///
/// Both signs use the clipped STE, so ∂ŵ/∂σ_II = sign(r) and σ_I receives
/// `sign(w)·(1 − σ_II·1[|r| ≤ 1])` by the chain rule (r = w − σ_I·sign(w)).
/// [`MultiBasisBinarizer::sigma2_mean`] feeds the regulariser `L_EBB = τ·mean_layers(σ_II)`
/// (τ = 9e-2); [`MultiBasisBinarizer::collapse`] removes the second basis at the transition.
#[derive(Module, Debug)]
pub struct MultiBasisBinarizer {
    /// First-basis scales σ_I, `[C_out]`.
    pub sigma1: Param<Tensor<1>>,
    /// Second-basis scales σ_II, `[C_out]`; `None` after collapse.
    pub sigma2: Option<Param<Tensor<1>>>,
}

impl MultiBasisBinarizer {
    /// Two bases initialised from the weight.
    pub fn init<const D: usize>(weight: Tensor<D>) -> Result<Self> {
        let device = weight.device();
        let (w, shape) = weight_host(weight, "MultiBasisBinarizer::init")?;
        let s1 = channel_mean_abs(&w, shape[0]);
        let per = w.len() / shape[0];
        let residual: Vec<f32> = w
            .iter()
            .enumerate()
            .map(|(i, &v)| v - s1[i / per] * sign_scalar(v))
            .collect();
        let s2 = channel_mean_abs(&residual, shape[0]);
        Ok(Self {
            sigma1: sigma_param(s1, &device),
            sigma2: Some(sigma_param(s2, &device)),
        })
    }

    /// Number of bases in use (2, or 1 after collapse).
    pub fn num_bases(&self) -> usize {
        1 + self.sigma2.is_some() as usize
    }

    /// Drops the second basis (EBB stage 2).
    pub fn collapse(mut self) -> Self {
        self.sigma2 = None;
        self
    }

    /// mean(σ_II) of this layer (0 after collapse), for `L_EBB`.
    pub fn sigma2_mean(&self) -> Option<Tensor<1>> {
        self.sigma2.as_ref().map(|s| s.val().mean())
    }

    fn channels(&self) -> usize {
        self.sigma1.val().dims()[0]
    }

    /// One [`QuantizedTensor`] per basis; the sum of their dequantized values is ŵ.
    pub fn export_bases<const D: usize>(&self, w: Tensor<D>) -> Result<Vec<QuantizedTensor>> {
        check_channels(&w, self.channels(), "MultiBasisBinarizer::export_bases")?;
        let (data, shape) = weight_host(w, "MultiBasisBinarizer::export_bases")?;
        let per = data.len() / shape[0];
        let s1 = to_host(self.sigma1.val(), "sigma1")?;
        let first: Vec<bool> = data.iter().map(|&v| v >= 0.0).collect();
        let mut out = vec![bitplane(&first, &shape, &s1)?];
        if let Some(s2) = &self.sigma2 {
            let s2 = to_host(s2.val(), "sigma2")?;
            let second: Vec<bool> = data
                .iter()
                .enumerate()
                .map(|(i, &v)| (v - s1[i / per] * sign_scalar(v)) >= 0.0)
                .collect();
            out.push(bitplane(&second, &shape, &s2)?);
        }
        Ok(out)
    }
}

/// `L_EBB = τ · (1/N) Σ_layers mean(σ_II)` over the layers that still have two bases;
/// `None` when none has.
pub fn ebb_regularizer(layers: &[&MultiBasisBinarizer], tau: f64) -> Option<Tensor<1>> {
    let terms: Vec<Tensor<1>> = layers.iter().filter_map(|l| l.sigma2_mean()).collect();
    let n = terms.len();
    (n > 0).then(|| Tensor::cat(terms, 0).sum() * (tau / n as f64))
}

impl Quantizer for MultiBasisBinarizer {
    fn spec(&self) -> QuantSpec {
        binary_spec()
    }

    fn fake_quant<const D: usize>(&self, w: Tensor<D>, _step: usize) -> Result<Tensor<D>> {
        let c = self.channels();
        check_channels(&w, c, "MultiBasisBinarizer::fake_quant")?;
        let first = sign_ste(w.clone()) * per_channel::<D>(self.sigma1.val(), c);
        Ok(match &self.sigma2 {
            None => first,
            Some(s2) => {
                let residual = w - first.clone();
                first + sign_ste(residual) * per_channel::<D>(s2.val(), c)
            }
        })
    }

    fn affine_params(&self, _step: usize) -> Result<AffineParams> {
        binary_params(&to_host(self.sigma1.val(), "sigma1")?)
    }

    /// Single-basis export; a two-basis binarizer must use
    /// [`MultiBasisBinarizer::export_bases`] (or [`MultiBasisBinarizer::collapse`] first).
    fn export<const D: usize>(&self, w: Tensor<D>, _step: usize) -> Result<QuantizedTensor> {
        if self.sigma2.is_some() {
            return Err(QuantError::Unsupported(
                "a two-basis binarizer exports two bitplanes: use export_bases or collapse first"
                    .into(),
            ));
        }
        Ok(self.export_bases(w)?.remove(0))
    }
}
