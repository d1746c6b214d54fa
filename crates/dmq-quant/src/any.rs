//! Closed sets of quantizers that a layer can hold: [`WeightQuantizer`] and [`ActQuantizer`].
//!
//! burn modules cannot hold trait objects, so layers store these enums (themselves burn
//! modules, so their parameters train, save and load like any other). Each forwards the
//! [`Quantizer`] trait to the variant it holds.

use burn::module::Module;
use burn::tensor::Tensor;

use crate::error::Result;
use crate::qtensor::{AffineParams, QuantizedTensor};
use crate::quantizer::Quantizer;
use crate::spec::QuantSpec;
use crate::{
    AdaRoundQuantizer, BinaryQuantizer, DynamicQuantizer, LsqQuantizer, MultiBasisBinarizer,
    QaLoraQuantizer, TimeIndexed, UniformQuantizer,
};

macro_rules! forward_quantizer {
    ($enum:ident { $($variant:ident),* }) => {
        impl Quantizer for $enum {
            fn spec(&self) -> QuantSpec {
                match self { $( $enum::$variant(q) => q.spec(), )* }
            }
            fn fake_quant<const D: usize>(&self, x: Tensor<D>, step: usize) -> Result<Tensor<D>> {
                match self { $( $enum::$variant(q) => q.fake_quant(x, step), )* }
            }
            fn affine_params(&self, step: usize) -> Result<AffineParams> {
                match self { $( $enum::$variant(q) => q.affine_params(step), )* }
            }
            fn export<const D: usize>(&self, x: Tensor<D>, step: usize) -> Result<QuantizedTensor> {
                match self { $( $enum::$variant(q) => q.export(x, step), )* }
            }
        }
    };
}

/// A weight quantizer of any kind.
#[derive(Module, Debug)]
pub enum WeightQuantizer {
    /// Round-to-nearest uniform (PTQ).
    Uniform(UniformQuantizer),
    /// Learned step size.
    Lsq(LsqQuantizer),
    /// Learned rounding (Q-Diffusion, QuEST).
    AdaRound(AdaRoundQuantizer),
    /// σ·sign(w).
    Binary(BinaryQuantizer),
    /// Two-basis binarizer (BinaryDM EBB/LMB).
    MultiBasis(MultiBasisBinarizer),
    /// Integer base + LoRA offsets (EfficientDM's QALoRA).
    QaLora(QaLoraQuantizer),
}

forward_quantizer!(WeightQuantizer {
    Uniform,
    Lsq,
    AdaRound,
    Binary,
    MultiBasis,
    QaLora
});

/// An activation quantizer of any kind.
#[derive(Module, Debug)]
pub enum ActQuantizer {
    /// One (Δ, z) for all steps.
    Uniform(UniformQuantizer),
    /// LSQ (BinaryDM's signed variant included).
    Lsq(LsqQuantizer),
    /// One uniform set per step or step group (QuEST, TMPQ-DM).
    TimeUniform(TimeIndexed<UniformQuantizer>),
    /// One LSQ set per step (EfficientDM's TALSQ).
    TimeLsq(TimeIndexed<LsqQuantizer>),
    /// Range measured per call, per token (SVDQuant's activations).
    Dynamic(DynamicQuantizer),
}

forward_quantizer!(ActQuantizer {
    Uniform,
    Lsq,
    TimeUniform,
    Dynamic,
    TimeLsq
});
