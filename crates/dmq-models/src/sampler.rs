//! Sampling loops over any [`Scheduler`]: classifier-free guidance as one batched call (on
//! class labels or on text embeddings, [`Conditioning`]), a per-step callback that sees
//! exactly what the denoiser was fed, and teacher-forced trajectories (advance with one
//! model's output while another model is evaluated).

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::conditioning::Conditioning;
use crate::context::{ForwardCtx, StepContext};
use crate::denoiser::Denoiser;
use crate::error::{Result, shape_err};
use crate::noise::NoiseRng;
use crate::scheduler::{Scheduler, SolverState};

/// What the denoiser is fed at one step (after CFG batching), and the step's context.
#[derive(Clone, Debug)]
pub struct DenoiserInput {
    /// `[B', C, H, W]` with B' = 2B under CFG (`[uncond; cond]`), else B.
    pub x: Tensor<4>,
    /// `[B']` timesteps.
    pub t: Tensor<1>,
    /// `[B']` labels (null label for the unconditional half) or `[B', L, D]` encoder
    /// hidden states (the unconditional states first), if conditional.
    pub cond: Option<Conditioning>,
    /// Step index, timestep and step count.
    pub step: StepContext,
}

/// A reverse trajectory from x_T, advanced one step at a time.
///
/// `inputs()` gives the batched denoiser input of the current step; `guide()` turns the raw
/// output for that input into the (guided) ε; `advance(ε)` takes the scheduler step.
pub struct Trajectory<'s, S: Scheduler> {
    scheduler: &'s S,
    x: Tensor<4>,
    cond: Option<Conditioning>,
    null_class: Option<usize>,
    guidance: f64,
    step: usize,
    rng: NoiseRng,
    solver: SolverState,
}

impl<'s, S: Scheduler> Trajectory<'s, S> {
    /// Starts from `x_T` with optional conditioning. `guidance` ≠ 1 enables CFG, which needs
    /// the unconditional half: the model's null label (`null_class`, its `num_classes`) for
    /// labels, [`Conditioning::Text`]'s `uncond` for text; `seed` drives the stochastic steps.
    pub fn new(
        scheduler: &'s S,
        x_t: Tensor<4>,
        cond: Option<Conditioning>,
        null_class: Option<usize>,
        guidance: f64,
        seed: u64,
    ) -> Result<Self> {
        let [b, ..] = x_t.dims();
        if let Some(c) = &cond
            && c.batch() != b
        {
            return Err(shape_err(
                "Trajectory conditioning",
                format!("batch {b}"),
                [c.batch()],
            ));
        }
        if guidance != 1.0 {
            match &cond {
                None => {
                    return Err(crate::ModelError::Config(
                        "classifier-free guidance needs a conditional model and its conditioning"
                            .into(),
                    ));
                }
                // checks that the unconditional half exists and fits
                Some(c) => {
                    c.with_unconditional(null_class)?;
                }
            }
        }
        if !guidance.is_finite() {
            return Err(crate::ModelError::Config(format!(
                "guidance scale {guidance} is not finite"
            )));
        }
        Ok(Self {
            scheduler,
            x: x_t,
            cond,
            null_class,
            guidance,
            step: 0,
            rng: NoiseRng::new(seed),
            solver: SolverState::default(),
        })
    }

    /// True when every step has been taken.
    pub fn done(&self) -> bool {
        self.step >= self.scheduler.num_steps()
    }

    /// The current sample x_t.
    pub fn sample(&self) -> &Tensor<4> {
        &self.x
    }

    /// Index of the next step.
    pub fn step_index(&self) -> usize {
        self.step
    }

    fn cfg(&self) -> bool {
        self.guidance != 1.0
    }

    /// The denoiser input of the current step (CFG: `[uncond; cond]` in one batch).
    pub fn inputs(&self) -> Result<DenoiserInput> {
        let t = self.scheduler.timestep(self.step)?;
        let device = self.x.device();
        let step = StepContext {
            step: self.step,
            timestep: t as f64,
            num_steps: self.scheduler.num_steps(),
        };
        let (x, cond) = match (&self.cond, self.cfg()) {
            (Some(c), true) => (
                Tensor::cat(vec![self.x.clone(), self.x.clone()], 0),
                Some(c.with_unconditional(self.null_class)?),
            ),
            (c, _) => (self.x.clone(), c.clone()),
        };
        let [bb, ..] = x.dims();
        let t = Tensor::from_data(TensorData::new(vec![t as f32; bb], [bb]), &device);
        Ok(DenoiserInput { x, t, cond, step })
    }

    /// Raw model output for [`Trajectory::inputs`] → ε used for the step:
    /// `ε_u + s·(ε_c − ε_u)` on the first `eps_channels`, variance channels from the
    /// conditional half (as diffusers' DiT pipeline).
    pub fn guide(&self, output: Tensor<4>, eps_channels: usize) -> Tensor<4> {
        if !self.cfg() {
            return output;
        }
        let [bb, c, h, w] = output.dims();
        let b = bb / 2;
        let uncond = output.clone().slice([0..b, 0..c, 0..h, 0..w]);
        let cond = output.slice([b..bb, 0..c, 0..h, 0..w]);
        let eu = uncond.slice([0..b, 0..eps_channels, 0..h, 0..w]);
        let ec = cond.clone().slice([0..b, 0..eps_channels, 0..h, 0..w]);
        let eps = eu.clone() + (ec - eu) * self.guidance;
        if c == eps_channels {
            eps
        } else {
            Tensor::cat(
                vec![eps, cond.slice([0..b, eps_channels..c, 0..h, 0..w])],
                1,
            )
        }
    }

    /// Takes the scheduler step with `eps` (already guided; learned-variance channels after
    /// the first C are dropped unless the scheduler uses them) and moves to the next step.
    pub fn advance(&mut self, eps: Tensor<4>) -> Result<()> {
        let [b, c, h, w] = self.x.dims();
        let [_, ce, ..] = eps.dims();
        let eps = if ce > c && !self.scheduler.takes_variance() {
            eps.slice([0..b, 0..c, 0..h, 0..w])
        } else {
            eps
        };
        let noise = self.rng.tensor(self.x.dims(), &self.x.device());
        let out = self.scheduler.step(
            eps,
            self.step,
            self.x.clone(),
            Some(noise),
            &mut self.solver,
        )?;
        self.x = out.prev_sample;
        self.step += 1;
        Ok(())
    }
}

/// Integer labels on `device`.
pub fn labels(values: &[usize], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = values.iter().map(|&c| c as i64).collect();
    Tensor::from_data(TensorData::new(v, [values.len()]), device)
}

/// Samples from x_T to x_0 with `model`, calling `on_step(input, guided output)` after every
/// denoiser call.
pub fn sample<M: Denoiser + ?Sized, S: Scheduler>(
    model: &M,
    scheduler: &S,
    x_t: Tensor<4>,
    cond: Option<Conditioning>,
    guidance: f64,
    seed: u64,
    on_step: &mut dyn FnMut(&DenoiserInput, &Tensor<4>),
) -> Result<Tensor<4>> {
    let info = model.info();
    let mut traj = Trajectory::new(scheduler, x_t, cond, info.num_classes, guidance, seed)?;
    while !traj.done() {
        let input = traj.inputs()?;
        let out = model.forward(
            input.x.clone(),
            input.t.clone(),
            input.cond.clone(),
            &ForwardCtx::new(input.step),
        )?;
        let eps = traj.guide(out, info.in_channels);
        on_step(&input, &eps);
        traj.advance(eps)?;
    }
    Ok(traj.x)
}

/// Teacher-forced trajectory: `teacher`'s ε advances the sample while `student` is evaluated
/// on the same inputs; `on_step(input, teacher ε, student ε)` sees both (EfficientDM's
/// distillation, fidelity checks).
pub fn sample_teacher_forced<T: Denoiser + ?Sized, U: Denoiser + ?Sized, S: Scheduler>(
    teacher: &T,
    student: &U,
    scheduler: &S,
    x_t: Tensor<4>,
    cond: Option<Conditioning>,
    guidance: f64,
    seed: u64,
    on_step: &mut dyn FnMut(&DenoiserInput, &Tensor<4>, &Tensor<4>),
) -> Result<Tensor<4>> {
    let info = teacher.info();
    let mut traj = Trajectory::new(scheduler, x_t, cond, info.num_classes, guidance, seed)?;
    while !traj.done() {
        let input = traj.inputs()?;
        let ctx = ForwardCtx::new(input.step);
        let e_t = traj.guide(
            teacher.forward(input.x.clone(), input.t.clone(), input.cond.clone(), &ctx)?,
            info.in_channels,
        );
        let e_s = traj.guide(
            student.forward(input.x.clone(), input.t.clone(), input.cond.clone(), &ctx)?,
            info.in_channels,
        );
        on_step(&input, &e_t, &e_s);
        traj.advance(e_t)?;
    }
    Ok(traj.x)
}
