//! The optimisers of every dmq training loop, with one ε.
//!
//! burn's Adam and AdamW default to ε = 1e-5; PyTorch and every reference implementation
//! dmq reproduces use 1e-8. The difference matters for parameters whose gradients are
//! small (AdaRound's V, step sizes Δ, LSQ α): the first Adam step is
//! `lr · g / (|g| + ε)`, which for |g| = 1e-6 is `0.99·lr` with ε = 1e-8 but `0.09·lr` with
//! 1e-5. So reconstruction and fine-tuning take their optimisers from here.

use burn::optim::{AdamConfig, AdamWConfig};

/// ε of every Adam/AdamW in dmq (PyTorch's default).
pub const ADAM_EPSILON: f32 = 1e-8;

/// Adam with β = (0.9, 0.999) and ε = [`ADAM_EPSILON`].
pub fn adam() -> AdamConfig {
    AdamConfig::new().with_epsilon(ADAM_EPSILON)
}

/// AdamW with β = (0.9, 0.999), ε = [`ADAM_EPSILON`] and `weight_decay`.
pub fn adamw(weight_decay: f32) -> AdamWConfig {
    AdamWConfig::new()
        .with_epsilon(ADAM_EPSILON)
        .with_weight_decay(weight_decay)
}

/// Refuses to train on a device without autodiff (burn would panic at the first backward
/// pass): `what` names the method in the error.
pub fn require_autodiff(device: &burn::tensor::Device, what: &str) -> crate::Result<()> {
    if device.is_autodiff() {
        Ok(())
    } else {
        Err(crate::ModelError::Config(format!(
            "{what} trains: give it an autodiff device (`device.autodiff()`) with the model on it"
        )))
    }
}
