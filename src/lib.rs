//! # dmq: low-bit quantization of diffusion models
//!
//! Facade crate: re-exports the workspace crates so an application can depend on `dmq` alone.
//! Backends are Cargo features: `flex` (default, fast portable CPU), `ndarray` (CPU) and
//! `wgpu` (GPU; runs on CPU through Mesa lavapipe for tests). Pick one at run time with
//! [`quant::device::by_name`].
//!
//! | module      | crate        | what                                             |
//! |-------------|--------------|--------------------------------------------------|
//! | [`quant`]   | `dmq-quant`  | quantizer primitives, bit packing, packed export |
//! | [`models`]  | `dmq-models` | quantizable layers, UNet, DiT, schedulers, samplers |
//! | [`calib`]   | `dmq-calib`  | quant configs, calibration sets, PTQ, Q-Diffusion |
//! | [`eval`]    | `dmq-eval`   | Fashion-MNIST loader, classifier, FD, PSNR/SSIM, BitOPs |
//! | [`kernels`] | `dmq-kernels`| integer GEMMs (int8, W4, W1, XNOR) with scalar references |
//! | [`infer`]   | `dmq-infer`  | the integer inference path for exported models   |
//! | [`search`]  | `dmq-search` | TMPQ-DM timestep and mixed-precision search       |
//! | [`pipeline`]| `dmq-pipeline`| load a diffusers directory, `quantize` with any method, `.dmq.safetensors` files, evaluation |

pub use dmq_calib as calib;
pub use dmq_eval as eval;
pub use dmq_finetune as finetune;
pub use dmq_infer as infer;
pub use dmq_kernels as kernels;
pub use dmq_models as models;
pub use dmq_pipeline as pipeline;
pub use dmq_quant as quant;
pub use dmq_search as search;
