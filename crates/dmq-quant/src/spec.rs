//! [`QuantSpec`]: what a quantizer does, independent of its parameters.

use serde::{Deserialize, Serialize};

use crate::error::{QuantError, Result};

/// Integer bit-width, or the float pass-through state (quantizer switched off).
///
/// Deserializing checks the width: `Int(0)` or `Int(9)` is refused, so a spec read from a
/// file can never overflow [`QuantSpec::int_range`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawBitWidth")]
pub enum BitWidth {
    /// Integer codes of this many bits, 1..=8.
    Int(u8),
    /// No quantization: the tensor passes through unchanged.
    Float,
}

/// [`BitWidth`] as written in a file, before its range is checked (any integer width).
#[derive(Clone, Copy, Debug, Deserialize)]
enum RawBitWidth {
    Int(u64),
    Float,
}

impl RawBitWidth {
    fn check(self, context: &str) -> Result<BitWidth> {
        match self {
            RawBitWidth::Float => Ok(BitWidth::Float),
            RawBitWidth::Int(b) => {
                let bits = u32::try_from(b).unwrap_or(u32::MAX);
                check_bits(bits, context).map(|b| BitWidth::Int(b as u8))
            }
        }
    }
}

impl TryFrom<RawBitWidth> for BitWidth {
    type Error = QuantError;
    fn try_from(raw: RawBitWidth) -> Result<Self> {
        raw.check("a deserialized BitWidth")
    }
}

/// [`QuantSpec`] as written in a file, before it is checked.
#[derive(Clone, Copy, Debug, Deserialize)]
struct RawQuantSpec {
    bits: RawBitWidth,
    signed: bool,
    symmetric: bool,
    granularity: Granularity,
    rounding: Rounding,
}

impl RawQuantSpec {
    /// Checks the spec; `field(sub)` names a sub-field (`bits`, `granularity`) in errors.
    fn check(self, field: impl Fn(&str) -> String) -> Result<QuantSpec> {
        let bits = self.bits.check(&field("bits"))?;
        if let Granularity::PerGroup { axis, size: 0 } = self.granularity {
            return Err(QuantError::BadGroupSize {
                group: 0,
                axis,
                len: 0,
                context: field("granularity"),
            });
        }
        if let Granularity::Split { channel, axis, at } = self.granularity
            && (at == 0 || channel == Some(axis))
        {
            return Err(QuantError::InvalidField {
                origin: field("granularity"),
                field: "Split".into(),
                reason: format!(
                    "split at {at} of axis {axis} with channel axis {channel:?}: the first block \
                     must be non-empty and the channel axis another axis"
                ),
            });
        }
        Ok(QuantSpec {
            bits,
            signed: self.signed,
            symmetric: self.symmetric,
            granularity: self.granularity,
            rounding: self.rounding,
        })
    }
}

impl TryFrom<RawQuantSpec> for QuantSpec {
    type Error = QuantError;
    fn try_from(raw: RawQuantSpec) -> Result<Self> {
        raw.check(|sub| format!("the field '{sub}' of a deserialized QuantSpec"))
    }
}

/// Which elements share one (Δ, z) pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Granularity {
    /// One pair for the whole tensor.
    PerTensor,
    /// One pair per index of `axis` (axis 0 = output channel of conv/linear weights).
    PerChannel {
        /// The channel axis.
        axis: usize,
    },
    /// The tensor is viewed with `axis` moved last and flattened to `[R, L]`; each row is cut
    /// into groups of `size` consecutive elements along `axis`, one pair per (row, group),
    /// `R·L/size` pairs in all. For a linear weight `[out, in]` with `axis = 1` this is the
    /// usual per-output-channel, per-group-of-inputs layout.
    PerGroup {
        /// The grouped axis.
        axis: usize,
        /// Group size G; must divide the axis length.
        size: usize,
    },
    /// Q-Diffusion's shortcut splitting: `axis` is cut at index `at` into two blocks (the
    /// two halves of a concatenated input: upsampled features ‖ skip connection), each with
    /// its own pair, per index of `channel` when given. `channel: Some(0), axis: 1` on a
    /// conv weight `[out, in, kh, kw]` is one pair per (output channel, input block),
    /// `2·out` pairs (pair `2·o + b`); `channel: None, axis: 1` on an activation
    /// `[B, C, H, W]` is one pair per block, 2 pairs.
    Split {
        /// Per-channel axis inside each block (None: per block only); differs from `axis`.
        channel: Option<usize>,
        /// The axis that is cut.
        axis: usize,
        /// Length of the first block, `0 < at < len(axis)`.
        at: usize,
    },
}

/// How `x/Δ` is rounded to an integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Rounding {
    /// Round half to even, as `torch.round` (the reference code) does.
    #[default]
    HalfToEven,
    /// Round half away from zero (C `round`).
    HalfAwayFromZero,
}

/// Description of a uniform quantizer: bit-width, integer range, zero-point mode,
/// granularity and rounding.
///
/// Integer ranges (docs/algorithms.md §1.1):
///
/// | signed | range                    |
/// |--------|--------------------------|
/// | no     | `[0, 2^b − 1]`           |
/// | yes    | `[−2^(b−1), 2^(b−1) − 1]` |
///
/// `symmetric` fixes z = 0. Symmetric + signed is the reference `--a_sym` mode
/// (Δ = absmax/(2^(b−1) − 1)); symmetric + unsigned is the `always_zero` mode used for
/// softmax probabilities; asymmetric + unsigned is the default for weights and activations.
///
/// ```
/// use dmq_quant::{QuantSpec, Granularity};
/// let spec = QuantSpec::int(4)?.per_channel(0);
/// assert_eq!(spec.int_range(), Some((0, 15)));
/// assert_eq!(spec.granularity(), Granularity::PerChannel { axis: 0 });
/// assert!(QuantSpec::int(9).is_err());
/// # Ok::<(), dmq_quant::QuantError>(())
/// ```
///
/// Deserializing checks the bit-width (1..=8) and a per-group size (> 0); use
/// [`QuantSpec::from_json`] to get a typed error naming the file and the field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawQuantSpec")]
pub struct QuantSpec {
    bits: BitWidth,
    signed: bool,
    symmetric: bool,
    granularity: Granularity,
    rounding: Rounding,
}

impl QuantSpec {
    /// Unsigned asymmetric per-tensor spec with `bits` ∈ 1..=8.
    pub fn int(bits: u32) -> Result<Self> {
        if !(1..=8).contains(&bits) {
            return Err(QuantError::InvalidBits {
                bits,
                min: 1,
                max: 8,
                context: "QuantSpec::int".into(),
            });
        }
        Ok(Self {
            bits: BitWidth::Int(bits as u8),
            signed: false,
            symmetric: false,
            granularity: Granularity::PerTensor,
            rounding: Rounding::HalfToEven,
        })
    }

    /// Parses a spec from JSON read from `origin` (a file) at `field` (its key), checking
    /// it: a bit-width outside 1..=8 is [`QuantError::InvalidBits`] and a zero group size
    /// [`QuantError::BadGroupSize`], both naming `origin` and `field`; JSON that is not a
    /// spec is [`QuantError::InvalidField`].
    pub fn from_json(json: &str, origin: &str, field: &str) -> Result<Self> {
        let raw: RawQuantSpec =
            serde_json::from_str(json).map_err(|e| QuantError::InvalidField {
                origin: origin.into(),
                field: field.into(),
                reason: format!("not a quantizer spec: {e}"),
            })?;
        raw.check(|sub| format!("{origin}: field '{field}.{sub}'"))
    }

    /// [`QuantSpec::from_json`] for a spec already parsed into a JSON value.
    pub fn from_value(value: serde_json::Value, origin: &str, field: &str) -> Result<Self> {
        let raw: RawQuantSpec =
            serde_json::from_value(value).map_err(|e| QuantError::InvalidField {
                origin: origin.into(),
                field: field.into(),
                reason: format!("not a quantizer spec: {e}"),
            })?;
        raw.check(|sub| format!("{origin}: field '{field}.{sub}'"))
    }

    /// The float pass-through spec: quantizers with it return their input unchanged.
    pub fn float() -> Self {
        Self {
            bits: BitWidth::Float,
            signed: true,
            symmetric: true,
            granularity: Granularity::PerTensor,
            rounding: Rounding::HalfToEven,
        }
    }

    /// Signed symmetric spec (`[−2^(b−1), 2^(b−1)−1]`, z = 0).
    pub fn signed_symmetric(bits: u32) -> Result<Self> {
        Ok(Self::int(bits)?.with_signed(true).with_symmetric(true))
    }

    /// Sets signed/unsigned integer codes.
    pub fn with_signed(mut self, signed: bool) -> Self {
        self.signed = signed;
        self
    }

    /// Sets symmetric (z = 0) or asymmetric (learned/initialised z).
    pub fn with_symmetric(mut self, symmetric: bool) -> Self {
        self.symmetric = symmetric;
        self
    }

    /// One (Δ, z) per index of `axis`.
    pub fn per_channel(mut self, axis: usize) -> Self {
        self.granularity = Granularity::PerChannel { axis };
        self
    }

    /// One (Δ, z) per group of `size` elements along `axis` (see [`Granularity::PerGroup`]).
    pub fn per_group(mut self, axis: usize, size: usize) -> Self {
        self.granularity = Granularity::PerGroup { axis, size };
        self
    }

    /// Sets the granularity.
    pub fn with_granularity(mut self, granularity: Granularity) -> Self {
        self.granularity = granularity;
        self
    }

    /// Sets the rounding mode.
    pub fn with_rounding(mut self, rounding: Rounding) -> Self {
        self.rounding = rounding;
        self
    }

    /// Bit-width or float state.
    pub fn bits(&self) -> BitWidth {
        self.bits
    }

    /// Integer bit-width, `None` in the float state.
    pub fn int_bits(&self) -> Option<u32> {
        match self.bits {
            BitWidth::Int(b) => Some(b as u32),
            BitWidth::Float => None,
        }
    }

    /// Bits per element for cost models: the integer width, or 32 for float.
    pub fn cost_bits(&self) -> u32 {
        self.int_bits().unwrap_or(32)
    }

    /// True in the float pass-through state.
    pub fn is_float(&self) -> bool {
        self.bits == BitWidth::Float
    }

    /// Signed integer codes.
    pub fn is_signed(&self) -> bool {
        self.signed
    }

    /// Zero point fixed at 0.
    pub fn is_symmetric(&self) -> bool {
        self.symmetric
    }

    /// Granularity of the (Δ, z) pairs.
    pub fn granularity(&self) -> Granularity {
        self.granularity
    }

    /// Rounding mode.
    pub fn rounding(&self) -> Rounding {
        self.rounding
    }

    /// Clamp range `(q_min, q_max)` of the integer codes; `None` in the float state.
    pub fn int_range(&self) -> Option<(i32, i32)> {
        // Every constructor and deserializer checks 1..=8; the guard keeps this total.
        let b = self.int_bits().filter(|b| (1..=8).contains(b))?;
        Some(if self.signed {
            (-(1 << (b - 1)), (1 << (b - 1)) - 1)
        } else {
            (0, (1 << b) - 1)
        })
    }

    /// Number of (Δ, z) pairs this spec needs for a tensor of `shape`, after checking that
    /// the axis exists and the group size divides it. An element count that overflows
    /// `usize` is an error.
    pub fn num_params(&self, shape: &[usize]) -> Result<usize> {
        match self.granularity {
            Granularity::PerTensor => Ok(1),
            Granularity::PerChannel { axis } => {
                check_axis(axis, shape.len(), "per-channel quantization")?;
                Ok(shape[axis])
            }
            Granularity::PerGroup { axis, size } => {
                check_axis(axis, shape.len(), "per-group quantization")?;
                let len = shape[axis];
                if size == 0 || !len.is_multiple_of(size) {
                    return Err(QuantError::BadGroupSize {
                        group: size,
                        axis,
                        len,
                        context: "per-group quantization".into(),
                    });
                }
                let numel = crate::limits::checked_numel(shape).ok_or_else(|| {
                    QuantError::ShapeMismatch {
                        expected: "an element count that fits in usize".into(),
                        got: format!("shape {shape:?}"),
                        context: "per-group quantization".into(),
                    }
                })?;
                Ok(numel / size)
            }
            Granularity::Split { channel, axis, at } => {
                check_axis(axis, shape.len(), "split quantization")?;
                if at == 0 || at >= shape[axis] {
                    return Err(QuantError::ShapeMismatch {
                        expected: format!("axis {axis} longer than the split point {at}"),
                        got: format!("shape {shape:?}"),
                        context: "split quantization".into(),
                    });
                }
                match channel {
                    None => Ok(2),
                    Some(c) => {
                        check_axis(c, shape.len(), "split quantization (channel axis)")?;
                        if c == axis {
                            return Err(QuantError::Unsupported(format!(
                                "split quantization with channel axis = split axis {axis}"
                            )));
                        }
                        Ok(2 * shape[c])
                    }
                }
            }
        }
    }
}

pub(crate) fn check_axis(axis: usize, rank: usize, context: &str) -> Result<()> {
    if axis >= rank {
        return Err(QuantError::AxisOutOfRange {
            axis,
            rank,
            context: context.into(),
        });
    }
    Ok(())
}

/// Checks a bit-width given as a plain number (1..=8).
pub fn check_bits(bits: u32, context: &str) -> Result<u32> {
    if (1..=8).contains(&bits) {
        Ok(bits)
    } else {
        Err(QuantError::InvalidBits {
            bits,
            min: 1,
            max: 8,
            context: context.into(),
        })
    }
}
