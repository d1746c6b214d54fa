//! # dmq-infer: the integer inference path
//!
//! Runs an exported quantized model (the `dmq-calib` layer export of a PTQ, Q-Diffusion or
//! fine-tuned model) with real integer arithmetic from `dmq-kernels`, activations
//! quantized on the fly with the exported per-step parameters:
//!
//! ```text
//! FP model (config + norms, embeddings) ─┐
//!                                        ├─ IntegerModel::from_export ─ Denoiser (samplers, metrics)
//! layer export (codes, Δ, z, act sets) ──┘      ├ quantized linear/conv/matmul → IntegerExecutor (int8 / W4 / W1 GEMMs)
//!                                               └ everything else → burn, on the fake-quant model
//! ```
//!
//! The model code is shared with the fake-quant path through the
//! [`LayerExecutor`](dmq_models::LayerExecutor) hook of `dmq-models`, so the two cannot
//! drift apart; tests hold the integer path to the fake-quant model within a pinned error
//! budget per format. This crate sits above `dmq-models` and `dmq-kernels` (which depends
//! on `dmq-quant` only), so the kernels stay usable without any model code.
//!
//! `cargo run --release --example int_sample` measures images per second against FP32.

pub mod error;
pub mod executor;
pub mod export;
pub mod model;

pub use error::{InferError, Result};
pub use executor::{IntegerExecutor, LayerPath, LayerTiming};
pub use model::{IntegerModel, export_timesteps, load_export};
