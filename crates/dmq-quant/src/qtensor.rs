//! Host-side integer representation: [`AffineParams`] (Δ, z per parameter group) and
//! [`QuantizedTensor`] (bit-packed codes + parameters), with a scalar reference quantizer.

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{QuantError, Result};
use crate::pack::{pack_codes, unpack_codes};
use crate::quantizer::to_host;
use crate::spec::{Granularity, QuantSpec, Rounding};

/// Step sizes and zero points of a uniform grid, one pair per parameter group of the spec's
/// granularity, on the host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AffineParams {
    /// The spec the parameters belong to.
    pub spec: QuantSpec,
    /// Step sizes Δ (> 0).
    pub delta: Vec<f32>,
    /// Zero points z (integers for integer exports; continuous while LSQ-training z).
    pub zero: Vec<f32>,
}

impl AffineParams {
    /// Checks finiteness, Δ > 0, equal lengths, z = 0 for symmetric specs, and that every
    /// code of the integer range dequantizes to a finite value.
    pub fn validate(&self, context: &str) -> Result<()> {
        if self.delta.len() != self.zero.len() {
            return Err(QuantError::ShapeMismatch {
                expected: format!("{} zero points (one per step size)", self.delta.len()),
                got: self.zero.len().to_string(),
                context: context.into(),
            });
        }
        if self.delta.is_empty() {
            return Err(QuantError::ShapeMismatch {
                expected: "at least one step size".into(),
                got: "0".into(),
                context: context.into(),
            });
        }
        check_scales(&self.delta, context)?;
        for (index, &value) in self.zero.iter().enumerate() {
            if !value.is_finite() || (self.spec.is_symmetric() && value != 0.0) {
                return Err(QuantError::InvalidZeroPoint {
                    value,
                    index,
                    context: format!("{context} (symmetric specs need z = 0)"),
                });
            }
        }
        // A finite but huge Δ (or z) must not dequantize the extreme codes to ±inf.
        if let Some((qmin, qmax)) = self.spec.int_range() {
            for (index, (&delta, &zero)) in self.delta.iter().zip(&self.zero).enumerate() {
                let lo = (qmin as f32 - zero) * delta;
                let hi = (qmax as f32 - zero) * delta;
                if !(lo.is_finite() && hi.is_finite()) {
                    return Err(QuantError::DequantOverflow {
                        delta,
                        zero,
                        index,
                        qmin,
                        qmax,
                        context: context.into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Parameter-group index of every element of a tensor of `shape` (row-major).
    pub fn group_index(&self, shape: &[usize]) -> Result<Vec<usize>> {
        let n = self.spec.num_params(shape)?;
        if n != self.delta.len() {
            return Err(QuantError::ShapeMismatch {
                expected: format!("{n} parameter groups for shape {shape:?}"),
                got: self.delta.len().to_string(),
                context: "AffineParams::group_index".into(),
            });
        }
        Ok(group_index(shape, self.spec.granularity()))
    }

    /// Device tensors (Δ, z) for [`crate::ste::fake_quant_affine`].
    pub fn to_tensors(&self, device: &Device) -> (Tensor<1>, Tensor<1>) {
        (
            Tensor::from_data(
                TensorData::new(self.delta.clone(), [self.delta.len()]),
                device,
            ),
            Tensor::from_data(
                TensorData::new(self.zero.clone(), [self.zero.len()]),
                device,
            ),
        )
    }
}

/// Checks that every scale is finite and strictly positive.
pub fn check_scales(scales: &[f32], context: &str) -> Result<()> {
    for (index, &value) in scales.iter().enumerate() {
        if !(value.is_finite() && value > 0.0) {
            return Err(QuantError::InvalidScale {
                value,
                index,
                context: context.into(),
            });
        }
    }
    Ok(())
}

/// Checks that data is free of NaN and infinities.
pub fn check_finite(data: &[f32], context: &str) -> Result<()> {
    match data.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(QuantError::NonFinite {
            value: data[index],
            index,
            context: context.into(),
        }),
        None => Ok(()),
    }
}

/// Row-major element → parameter-group map (shape already validated against the spec).
pub(crate) fn group_index(shape: &[usize], granularity: Granularity) -> Vec<usize> {
    let numel: usize = shape.iter().product();
    match granularity {
        Granularity::PerTensor => vec![0; numel],
        Granularity::PerChannel { axis } => {
            let inner: usize = shape[axis + 1..].iter().product();
            (0..numel).map(|i| (i / inner) % shape[axis]).collect()
        }
        Granularity::PerGroup { axis, size } => {
            // Row = all coordinates except `axis` (in order); group = coord[axis] / size.
            let inner: usize = shape[axis + 1..].iter().product();
            let len = shape[axis];
            let groups = len / size;
            (0..numel)
                .map(|i| {
                    let outer = i / (inner * len);
                    let a = (i / inner) % len;
                    let r = i % inner;
                    ((outer * inner) + r) * groups + a / size
                })
                .collect()
        }
        Granularity::Split { channel, axis, at } => {
            let coord = |i: usize, ax: usize| {
                let inner: usize = shape[ax + 1..].iter().product();
                (i / inner) % shape[ax]
            };
            (0..numel)
                .map(|i| {
                    let block = usize::from(coord(i, axis) >= at);
                    channel.map_or(0, |c| 2 * coord(i, c)) + block
                })
                .collect()
        }
    }
}

/// Scalar reference rounding (matches `Tensor::round`, half to even), for any float type
/// (the kernels' f32 references and the f64 range searches share it).
pub fn round_scalar<F: num_traits::Float>(v: F, rounding: Rounding) -> F {
    match rounding {
        Rounding::HalfToEven => {
            let half = F::from(0.5).unwrap_or_else(F::zero);
            if (v - v.trunc()).abs() == half {
                // a tie: the even neighbour, 2·round(v/2) (v/2 is exact and not a tie)
                let two = half + half + half + half;
                (v / two).round() * two
            } else {
                v.round()
            }
        }
        Rounding::HalfAwayFromZero => v.round(),
    }
}

/// A tensor stored as bit-packed unsigned codes plus per-group (Δ, z).
///
/// The stored code of an element is `c = q − q_min ∈ [0, 2^b − 1]`, packed with element `j`
/// at bit offset `b·j` of its byte (see [`crate::pack`]); the value is `(c + q_min − z)·Δ`.
/// Binary weights σ·sign(w) are the unsigned 1-bit case with Δ = 2σ and z = ½:
/// value = (c − ½)·2σ = σ·(2c − 1).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedTensor {
    /// Logical shape.
    pub shape: Vec<usize>,
    /// Grid parameters (spec, Δ, z).
    pub params: AffineParams,
    /// Packed codes, `ceil(numel·b/8)` bytes.
    pub packed: Vec<u8>,
}

impl QuantizedTensor {
    /// Quantizes host data with the scalar reference: `q = clamp(round(x/Δ) + z, q_min, q_max)`.
    pub fn quantize(data: &[f32], shape: &[usize], params: &AffineParams) -> Result<Self> {
        params.validate("QuantizedTensor::quantize")?;
        let (qmin, qmax) = params.spec.int_range().ok_or_else(|| {
            QuantError::Unsupported(
                "cannot export a float pass-through quantizer to integers".into(),
            )
        })?;
        check_len(data.len(), shape, "QuantizedTensor::quantize")?;
        check_finite(data, "QuantizedTensor::quantize input")?;
        let groups = params.group_index(shape)?;
        let rounding = params.spec.rounding();
        let codes: Vec<u8> = data
            .iter()
            .zip(&groups)
            .map(|(&x, &g)| {
                let q = round_scalar(x / params.delta[g], rounding) + params.zero[g];
                (q.clamp(qmin as f32, qmax as f32) - qmin as f32) as u8
            })
            .collect();
        Self::from_codes(&codes, shape, params.clone())
    }

    /// Quantizes a device tensor (copied to the host) with the scalar reference.
    pub fn quantize_tensor<const D: usize>(x: Tensor<D>, params: &AffineParams) -> Result<Self> {
        let shape = x.dims().to_vec();
        let data = to_host(x, "QuantizedTensor::quantize_tensor")?;
        Self::quantize(&data, &shape, params)
    }

    /// Builds from unsigned codes `c ∈ [0, 2^b − 1]` (one per element, row-major).
    pub fn from_codes(codes: &[u8], shape: &[usize], params: AffineParams) -> Result<Self> {
        params.validate("QuantizedTensor::from_codes")?;
        let bits = params
            .spec
            .int_bits()
            .ok_or_else(|| QuantError::Unsupported("float spec has no integer codes".into()))?;
        check_len(codes.len(), shape, "QuantizedTensor::from_codes")?;
        params.group_index(shape)?;
        let packed = pack_codes(codes, bits)?;
        Ok(Self {
            shape: shape.to_vec(),
            params,
            packed,
        })
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bit-width of the codes.
    pub fn bits(&self) -> u32 {
        self.params.spec.int_bits().unwrap_or(32)
    }

    /// Unsigned codes, one per element.
    pub fn codes(&self) -> Result<Vec<u8>> {
        unpack_codes(&self.packed, self.bits(), self.numel())
    }

    /// Signed integer values `q = c + q_min`.
    pub fn int_values(&self) -> Result<Vec<i32>> {
        let (qmin, _) = self.params.spec.int_range().unwrap_or((0, 0));
        Ok(self.codes()?.into_iter().map(|c| c as i32 + qmin).collect())
    }

    /// Dequantized values `(q − z)·Δ` on the host (row-major).
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        let groups = self.params.group_index(&self.shape)?;
        let q = self.int_values()?;
        Ok(q.iter()
            .zip(&groups)
            .map(|(&q, &g)| (q as f32 - self.params.zero[g]) * self.params.delta[g])
            .collect())
    }

    /// Dequantized values as a device tensor of rank `D`.
    pub fn dequantize_tensor<const D: usize>(&self, device: &Device) -> Result<Tensor<D>> {
        if self.shape.len() != D {
            return Err(QuantError::ShapeMismatch {
                expected: format!("rank {D}"),
                got: format!("shape {:?}", self.shape),
                context: "QuantizedTensor::dequantize_tensor".into(),
            });
        }
        Ok(Tensor::from_data(
            TensorData::new(self.dequantize()?, self.shape.clone()),
            device,
        ))
    }

    /// Bytes of the packed codes plus the f32 scales and zero points.
    pub fn storage_bytes(&self) -> usize {
        self.packed.len() + 4 * (self.params.delta.len() + self.params.zero.len())
    }
}

fn check_len(len: usize, shape: &[usize], context: &str) -> Result<()> {
    let numel: usize = shape.iter().product();
    if len != numel {
        return Err(QuantError::ShapeMismatch {
            expected: format!("{numel} elements for shape {shape:?}"),
            got: len.to_string(),
            context: context.into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the standard library's ties-to-even, in f32 and f64, on ties and near-ties.
    #[test]
    fn round_scalar_is_ties_to_even_in_every_float_type() {
        for i in -2000..2000 {
            let v = i as f32 * 0.25 + 0.0001 * (i % 3) as f32;
            assert_eq!(
                round_scalar(v, Rounding::HalfToEven),
                v.round_ties_even(),
                "{v}"
            );
            let w = f64::from(v);
            assert_eq!(
                round_scalar(w, Rounding::HalfToEven),
                w.round_ties_even(),
                "{w}"
            );
            assert_eq!(round_scalar(v, Rounding::HalfAwayFromZero), v.round());
        }
        assert_eq!(round_scalar(0.5f32, Rounding::HalfToEven), 0.0);
        assert_eq!(round_scalar(-1.5f64, Rounding::HalfToEven), -2.0);
        assert!(round_scalar(f32::NAN, Rounding::HalfToEven).is_nan());
    }
}
