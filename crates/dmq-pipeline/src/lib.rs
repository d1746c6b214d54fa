//! # dmq-pipeline: from a diffusers model directory to a quantized model file
//!
//! The library form of everything the `dmq` command-line tool does:
//!
//! ```text
//! load (config.json → AnyDenoiser, scheduler_config.json → SchedulerSpec)
//!   → calibration set (CalibSet::record on the FP model's own trajectories)
//!   → quantize(fp, QuantConfig, calib, Method, RunOptions, progress)   naive | qdiffusion | efficientdm | quest | binarydm
//!     (search::tmpq → SearchedConfig: per-layer bits + timesteps, applied by quantize)
//!   → dmq_file::save (self-contained *.dmq.safetensors, docs/format.md)
//!   → dmq_file::load → sample / score / integer path (dmq_infer::IntegerModel)
//! ```
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use burn::tensor::Device;
//! use dmq_pipeline::{AnyDenoiser, Method, RunOptions, SchedulerSpec, dmq_file, quantize};
//!
//! let device = Device::flex().autodiff();
//! let dir = std::path::Path::new("assets/models/unet-fmnist");
//! let fp = AnyDenoiser::from_pretrained(dir, &device)?;
//! let sched = SchedulerSpec::from_dir(dir)?;
//! let sampler = sched.ddim(20)?;
//! let calib = dmq_calib::CalibSet::record(&fp, &sampler, &Default::default(), &device)?;
//! let config = dmq_calib::QuantConfig::preset("W8A8")?;
//! let opts = RunOptions::new(sampler.clone()).with_schedule(sched.ddim.clone());
//! let q = quantize(&fp, &config, &calib, &Method::from_name("naive")?, &opts, &device, &mut |_| {})?;
//! let ts: Vec<f64> = dmq_models::scheduler::Scheduler::timesteps(&sampler).iter().map(|&t| t as f64).collect();
//! dmq_file::save("unet-w8a8.dmq.safetensors".as_ref(), &q.model, &sched, &ts, &Default::default())?;
//! # Ok(()) }
//! ```

pub mod component_quant;
pub mod dmq_file;
pub mod error;
pub mod eval;
pub mod images;
pub mod method;
pub mod model;
pub mod pipeline_file;
pub mod scheduler;
pub mod search;
pub mod t2i_eval;
pub mod text_to_image;
pub mod tokenizer;

pub use component_quant::ComponentBits;
pub use error::{PipelineError, Result};
pub use images::ImageSet;
pub use method::{
    METHOD_NAMES, Method, MethodReport, Progress, Quantized, RunOptions, TextTraining, quantize,
};
pub use model::AnyDenoiser;
pub use scheduler::SchedulerSpec;
pub use text_to_image::{GenerateOptions, TextToImage};
