//! Quality and cost metrics (DESIGN.md §5): Fréchet distance of classifier features
//! ([`fd`]), fidelity to full-precision samples from the same noise ([`fidelity`]: MSE, PSNR,
//! SSIM), and BitOPs summed over sampling steps ([`bitops`]).

pub mod bitops;
pub mod fd;
pub mod fidelity;

pub use bitops::{BitOpsCount, LayerBits, bitops};
pub use fd::{FeatureStats, frechet_distance};
pub use fidelity::{Fidelity, fidelity, psnr, ssim};
