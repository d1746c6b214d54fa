//! # dmq-quant: quantizer primitives for low-bit diffusion models
//!
//! The building blocks every method of dmq (Q-Diffusion, EfficientDM, QuEST, BinaryDM,
//! TMPQ-DM) is assembled from, written on burn 0.22 so that they run on any backend
//! (flex and ndarray on CPU, wgpu on GPU) and train through burn's autodiff:
//!
//! - [`QuantSpec`]: bits 1..=8 or float pass-through, signed/unsigned, symmetric/asymmetric,
//!   per-tensor / per-channel / per-group, half-to-even rounding.
//! - [`UniformQuantizer`] and [`LsqQuantizer`]: uniform affine fake quantization with the
//!   straight-through estimator and LSQ step-size gradients ([`ste`]).
//! - [`TimeIndexed`]: per-step (TALSQ) or per-group parameter sets chosen by an explicit step
//!   index, re-sampled to other step counts.
//! - [`AdaRoundQuantizer`]: learned rounding with the annealed regulariser ([`BetaSchedule`]).
//! - [`DynamicQuantizer`]: per-token activation ranges measured at run time (SVDQuant).
//! - [`QaLoraQuantizer`]: EfficientDM's QALoRA, LoRA offsets on a frozen integer base.
//! - [`BinaryQuantizer`] and [`MultiBasisBinarizer`] (EBB) for 1-bit weights.
//! - [`init_params`] / [`RunningRange`]: max, MSE (L_2.4), percentile, LSQ and EMA ranges.
//! - [`pack`] and [`QuantizedTensor`]: real packed integers, saved to safetensors by
//!   [`QuantizedFile`].
//!
//! Every fallible call returns [`QuantError`]; nothing panics on user input.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use dmq_quant::{QuantSpec, Quantizer, RangeInit, UniformQuantizer};
//!
//! let device = Device::default();
//! let w = Tensor::<2>::from_floats([[0.3, -0.7], [0.05, 0.9]], &device);
//! let q = UniformQuantizer::init(QuantSpec::int(4)?.per_channel(0), w.clone(), &RangeInit::mse())?;
//! let packed = q.export(w.clone(), 0)?;                 // 4-bit codes, 2 per byte
//! assert_eq!(packed.packed.len(), 2);
//! let back = packed.dequantize()?;                      // equals the fake-quantized weight
//! let fq: Vec<f32> = q.fake_quant(w, 0)?.into_data().try_to_vec().unwrap();
//! assert_eq!(back, fq);
//! # Ok::<(), dmq_quant::QuantError>(())
//! ```

pub mod adaround;
pub mod any;
pub mod binary;
pub mod device;
pub mod dynamic;
pub mod error;
pub mod file;
pub mod fingerprint;
pub mod limits;
pub mod lsq;
pub mod pack;
pub mod qalora;
pub mod qtensor;
pub mod quantizer;
pub mod range;
pub mod spec;
pub mod ste;
pub mod time_indexed;
pub mod uniform;

pub use adaround::{AdaRoundMode, AdaRoundQuantizer, BetaSchedule};
pub use any::{ActQuantizer, WeightQuantizer};
pub use binary::{BinaryQuantizer, MultiBasisBinarizer, ebb_regularizer};
pub use dynamic::{DynamicQuantizer, DynamicSpec};
pub use error::{QuantError, Result};
pub use file::QuantizedFile;
pub use limits::Limits;
pub use lsq::LsqQuantizer;
pub use qalora::QaLoraQuantizer;
pub use qtensor::{AffineParams, QuantizedTensor};
pub use quantizer::Quantizer;
pub use range::{RangeInit, RunningRange, init_params};
pub use spec::{BitWidth, Granularity, QuantSpec, Rounding};
pub use time_indexed::{AffineSet, Resample, TimeIndexed};
pub use uniform::UniformQuantizer;
