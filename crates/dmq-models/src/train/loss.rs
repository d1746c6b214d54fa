//! The ε-prediction objective `L = E‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖²`.

use burn::tensor::{Tensor, TensorData};

use crate::conditioning::Conditioning;
use crate::context::{ForwardCtx, StepContext};
use crate::denoiser::Denoiser;
use crate::error::Result;
use crate::noise::NoiseRng;
use crate::scheduler::NoiseSchedule;

/// One noised training batch.
#[derive(Clone, Debug)]
pub struct DiffusionBatch {
    /// x_t, `[B, C, H, W]`.
    pub x_t: Tensor<4>,
    /// The noise ε that was added, `[B, C, H, W]`.
    pub noise: Tensor<4>,
    /// Timesteps, `[B]` (float, as the denoiser takes them).
    pub t: Tensor<1>,
    /// The same timesteps as integers.
    pub t_host: Vec<usize>,
}

/// Noises `x0` at uniformly drawn timesteps t ~ U{0..T−1} with host-seeded noise.
pub fn diffusion_batch(
    x0: Tensor<4>,
    schedule: &NoiseSchedule,
    rng: &mut NoiseRng,
) -> Result<DiffusionBatch> {
    let dims = x0.dims();
    let device = x0.device();
    let t_host: Vec<usize> = (0..dims[0])
        .map(|_| rng.below(schedule.num_train_timesteps()))
        .collect();
    let noise = rng.tensor(dims, &device);
    let x_t = schedule.add_noise(x0, noise.clone(), &t_host)?;
    let t = Tensor::from_data(
        TensorData::new(
            t_host.iter().map(|&t| t as f32).collect::<Vec<_>>(),
            [dims[0]],
        ),
        &device,
    );
    Ok(DiffusionBatch {
        x_t,
        noise,
        t,
        t_host,
    })
}

/// Mean squared error between ε and the model's ε prediction on `batch` under `cond`
/// (class labels or text states, one per row).
pub fn eps_loss<M: Denoiser + ?Sized>(
    model: &M,
    batch: &DiffusionBatch,
    cond: Option<Conditioning>,
) -> Result<Tensor<1>> {
    let ctx = ForwardCtx::new(StepContext::single(0.0));
    let eps = model.predict_eps(batch.x_t.clone(), batch.t.clone(), cond, &ctx)?;
    Ok((eps - batch.noise.clone()).powi_scalar(2).mean())
}
