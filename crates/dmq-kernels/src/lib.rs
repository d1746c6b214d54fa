//! # dmq-kernels: real low-bit compute on the CPU
//!
//! Fake quantization makes a model slower; these kernels run quantized layers with integer
//! arithmetic. Every optimized kernel has a scalar reference beside it (`*_ref`), and every
//! SIMD path is chosen at run time and can be requested explicitly.
//!
//! | format | weights | activations | kernel | module |
//! |---|---|---|---|---|
//! | W8A8 | int8 (5..=8-bit codes) | int8 | `vpdpbusd` / `vpmaddwd` | [`int8`] |
//! | W4A8, W4A4 | 4-bit nibbles (2..=4-bit codes) | int8 / int4 | unpack in registers + `vpdpbusd` / `vpmaddubsw` | [`w4`] |
//! | W1A8, W1A4 | 1-bit sign bitplanes | int8 / int4 | sign application (byte mask + sum) | [`binary`] |
//! | W1A1 | 1-bit sign bitplanes | 1-bit | XNOR + popcount | [`xnor`] |
//!
//! Weights come from `dmq-quant` exports ([`PackedWeights::from_quantized`], packed once
//! into the panel layout of [`layout`]); activations are quantized on the fly
//! ([`ActQuant`], [`act_quant`]); [`gemm_f32_out`] runs the whole f32 → integer → f32 layer
//! (per-channel or per-group Δ, zero points, bias), [`conv::conv2d`] the convolution via
//! im2col. Work is split over threads with `std::thread::scope` ([`GemmOptions::threads`]).
//!
//! With the `wgpu` feature, the `gpu` module runs the int8 and W4 GEMMs on a wgpu adapter (CubeCL
//! kernels; lavapipe on a CPU-only machine) with the same epilogue.
//!
//! Instruction sets ([`Isa`], [`PopcntIsa`]): AVX-512 VNNI, AVX2, portable scalar; AVX-512
//! VPOPCNTDQ, `popcnt`, portable for XNOR. Nothing panics on user input: shapes, specs and
//! instruction sets are checked and reported as [`KernelError`].
//!
//! ```
//! use dmq_kernels::{int8, GemmOptions, Isa};
//! let (m, n, k) = (3, 5, 7);
//! let a: Vec<i8> = (0..m * k).map(|i| (i as i32 * 37 % 255 - 127) as i8).collect();
//! let w: Vec<i8> = (0..n * k).map(|i| (i as i32 * 11 % 255 - 128) as i8).collect();
//! let packed = int8::pack_i8(&w, n, k)?;
//! for isa in Isa::available() {
//!     let c = int8::gemm_i8_i32(&a, m, &packed, &GemmOptions::default().with_isa(isa))?;
//!     assert_eq!(c, int8::gemm_i8_i32_ref(&a, &w, m, n, k));
//! }
//! # Ok::<(), dmq_kernels::KernelError>(())
//! ```

pub mod act_quant;
pub mod binary;
pub mod conv;
pub mod detect;
pub mod error;
pub mod gemm;
#[cfg(feature = "wgpu")]
pub mod gpu;
pub mod int8;
mod kernel;
pub mod layout;
pub mod low_rank;
mod parallel;
pub mod peak;
pub mod testdata;
pub mod w4;
pub mod xnor;

pub use act_quant::{ActGranularity, ActQuant, ActRange, QuantizedActs};
pub use conv::Conv2dParams;
pub use detect::{CpuFeatures, Isa, PopcntIsa, cpu_features};
pub use error::{KernelError, Result};
pub use gemm::{GemmOptions, gemm_acts_f32, gemm_f32_out, gemm_f32_out_ref, gemm_f32_out_with};
pub use layout::{CodeFormat, MAX_K, PackedWeights};
pub use low_rank::LowRankBranch;
pub use parallel::available_threads;
pub use xnor::{BinaryActs, XnorOptions, XnorWeights};
