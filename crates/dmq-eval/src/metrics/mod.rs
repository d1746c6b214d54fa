//! Quality and cost metrics (docs/design.md §5): Fréchet distance of classifier features
//! ([`mod@fd`]), fidelity to full-precision samples from the same noise ([`mod@fidelity`]: MSE, PSNR,
//! SSIM), and BitOPs summed over sampling steps ([`mod@bitops`]).

pub mod bitops;
pub mod fd;
pub mod fidelity;

pub use bitops::{BitOpsCount, LayerBits, bitops};
pub use fd::{FeatureStats, frechet_distance};
pub use fidelity::{Fidelity, fidelity, psnr, ssim};
