//! # dmq-calib
//!
//! From a full-precision diffusion model to a calibrated quantized one (docs/design.md §1, §3):
//!
//! - [`config`]: [`QuantConfig`], weight and activation specs per layer by glob pattern over
//!   diffusers layer names, first/last-layer policies and presets (`W8A8`, `W4A4`, ...);
//! - [`calib_set`]: [`CalibSet`], data-free calibration inputs recorded from the FP model's
//!   own trajectories (both CFG branches), saved as safetensors;
//! - [`mod@ptq`]: round-to-nearest PTQ (weights per channel; activations per tensor or
//!   channel, optionally per step or step group; attention matmuls included);
//! - [`export`]: packed export of the quantized layers, model bytes, per-layer bits;
//! - [`recon`]: the Q-Diffusion baseline, AdaRound block reconstruction then activation
//!   step-size reconstruction, resumable;
//! - [`mod@smoothquant`] and [`mod@svdquant`]: outlier migration (SmoothQuant), and SVDQuant's 16-bit
//!   low-rank branch beside a 4-bit residual with per-token dynamic activations.

pub mod calib_set;
pub mod config;
pub mod error;
pub mod export;
pub mod glob;
pub mod ptq;
pub mod recon;
pub mod smoothquant;
pub mod svd;
pub mod svdquant;

pub use calib_set::{CalibSet, CondRecord, RecordOptions, kept_steps};
pub use config::{Choice, EdgePolicy, LayerPlan, LayerRule, QuantConfig};
pub use error::{CalibError, Result};
pub use export::{branch_macs_ratio, export_layers, layer_bits, model_bytes};
pub use glob::glob_match;
pub use ptq::{
    PtqOptions, PtqReport, TimeGrouping, calibrate_activations, calibrate_activations_with,
    capture_inputs, clear_quantizers, concat_rows, ptq, quantize_weights,
};
pub use recon::{
    ReconCheckpoint, ReconOptions, ReconProgress, ReconReport, Unit, qdiffusion,
    restore_weight_rounding, units,
};
pub use smoothquant::{SmoothOptions, SmoothReport, SmoothedLayer, smoothquant};
pub use svdquant::{SvdOptions, SvdReport, svdquant};
