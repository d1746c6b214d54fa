//! Training utilities shared by the default-model training examples and QAT methods:
//! exponential moving average of weights, learning-rate schedules, resumable checkpoints,
//! the optimisers (one ε for all) and the ε-prediction diffusion loss.

mod checkpoint;
mod ema;
mod loss;
mod lr;
mod optim;

pub use checkpoint::{Checkpoint, TrainState};
pub use ema::Ema;
pub use loss::{DiffusionBatch, diffusion_batch, eps_loss};
pub use lr::LrSchedule;
pub use optim::{ADAM_EPSILON, adam, adamw, require_autodiff};
