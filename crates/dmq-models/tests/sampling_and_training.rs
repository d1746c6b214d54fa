//! Sampler (CFG batching, callbacks, teacher forcing, determinism) and training utilities
//! (EMA, LR schedule, resumable checkpoints), on every compiled-in backend.

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use dmq_models::dit::DiT;
use dmq_models::noise::NoiseRng;
use dmq_models::sampler::{Trajectory, labels, sample, sample_teacher_forced};
use dmq_models::scheduler::{DdimConfig, DdimScheduler, Scheduler};
use dmq_models::train::{Checkpoint, Ema, LrSchedule, TrainState, diffusion_batch, eps_loss};
use dmq_models::{Conditioning, Denoiser, ForwardCtx};

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

fn tiny_dit(device: &Device) -> DiT {
    DiT::new(&dmq_models::defaults::tiny_dit().unwrap(), device).unwrap()
}

/// CFG is one batched call on [uncond; cond] and equals ε_u + s(ε_c − ε_u) of two calls.
fn cfg_is_one_batched_call(device: &Device) {
    let model = tiny_dit(device);
    let sched = DdimScheduler::diffusers(&DdimConfig::new(), 4).unwrap();
    let x = NoiseRng::new(1).tensor([2, 1, 8, 8], device);
    let y = Conditioning::from(labels(&[0, 2], device));
    let mut calls = Vec::new();
    let out = sample(
        &model,
        &sched,
        x.clone(),
        Some(y.clone()),
        3.0,
        7,
        &mut |inp, eps| {
            calls.push((
                inp.x.dims(),
                host(inp.cond.as_ref().unwrap().labels().unwrap().clone().float()),
                inp.step.step,
                eps.dims(),
            ));
        },
    )
    .unwrap();
    assert_eq!(calls.len(), 4);
    for (i, (xd, cls, step, ed)) in calls.iter().enumerate() {
        assert_eq!(xd, &[4, 1, 8, 8]);
        assert_eq!(
            cls,
            &vec![3.0, 3.0, 0.0, 2.0],
            "null label 3 first, then the labels"
        );
        assert_eq!(*step, i);
        assert_eq!(ed, &[2, 1, 8, 8]);
    }
    // First step by hand: two separate calls.
    let t = Tensor::from_data(
        TensorData::new(vec![sched.timesteps()[0] as f32; 2], [2]),
        device,
    );
    let ctx = ForwardCtx::new(dmq_models::StepContext::single(0.0));
    let eu = model
        .predict_eps(
            x.clone(),
            t.clone(),
            Some(labels(&[3, 3], device).into()),
            &ctx,
        )
        .unwrap();
    let ec = model
        .predict_eps(x.clone(), t, Some(y.clone()), &ctx)
        .unwrap();
    let guided = eu.clone() + (ec - eu) * 3.0;
    let mut traj = Trajectory::new(&sched, x.clone(), Some(y.clone()), Some(3), 3.0, 7).unwrap();
    let inp = traj.inputs().unwrap();
    let raw = model
        .forward(inp.x, inp.t, inp.cond, &ForwardCtx::new(inp.step))
        .unwrap();
    let g = traj.guide(raw, 1);
    let diff = host((g - guided).abs().max());
    assert!(diff[0] < 1e-5, "{diff:?}");
    traj.advance(host_tensor(&[0.0; 128], device)).unwrap();
    // Same seed → same samples; guidance without labels is an error.
    let again = sample(&model, &sched, x.clone(), Some(y), 3.0, 7, &mut |_, _| {}).unwrap();
    assert_close(&host(out), &host(again), "same seed");
    assert!(sample(&model, &sched, x, None, 3.0, 7, &mut |_, _| {}).is_err());
}

/// Equal up to float reassociation (GPU reductions are not bit-reproducible across graphs).
fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len());
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 1e-5, "{what}: max |diff| {worst}");
}

fn host_tensor(v: &[f32], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(v.to_vec(), [2, 1, 8, 8]), device)
}

/// Teacher forcing: the trajectory follows the teacher, the student only observes.
fn teacher_forcing_follows_the_teacher(device: &Device) {
    let teacher = tiny_dit(device);
    let student = tiny_dit(device);
    let sched = DdimScheduler::diffusers(&DdimConfig::new(), 3).unwrap();
    let x = NoiseRng::new(3).tensor([1, 1, 8, 8], device);
    let y: Option<Conditioning> = Some(labels(&[1], device).into());
    let alone = sample(
        &teacher,
        &sched,
        x.clone(),
        y.clone(),
        1.0,
        0,
        &mut |_, _| {},
    )
    .unwrap();
    let mut n = 0;
    let forced = sample_teacher_forced(
        &teacher,
        &student,
        &sched,
        x,
        y,
        1.0,
        0,
        &mut |_, et, es| {
            n += 1;
            assert_ne!(host(et.clone()), host(es.clone()));
        },
    )
    .unwrap();
    assert_eq!(n, 3);
    assert_close(
        &host(alone),
        &host(forced),
        "teacher-forced vs teacher alone",
    );
}

/// EMA follows θ̄ ← dθ̄ + (1−d)θ with the warm-up decay; checkpoints resume bit-exactly.
fn ema_and_checkpoint_resume(device: &Device) {
    let ad = device.clone().autodiff();
    let model = tiny_dit(&ad);
    let mut ema = Ema::new(&model, 0.999);
    let first = host(model.proj_out_2.weight.val());
    let shifted = model.clone().map(&mut Shift(1.0));
    ema.update(&shifted); // d = min(.999, 1/10) = 0.1 → θ̄ = 0.1θ + 0.9(θ + 1)
    let got = host(ema.shadow().proj_out_2.weight.val());
    for (g, f) in got.iter().zip(&first) {
        assert!((g - (f + 0.9)).abs() < 1e-5);
    }
    // Train 2 steps, checkpoint, train 2 more; vs. reload and train the same 2 steps.
    let sched = DdimScheduler::diffusers(&DdimConfig::new(), 10).unwrap();
    let schedule = sched.noise_schedule().clone();
    let step = |m: DiT, opt: &mut burn::optim::ModuleOptimizer, k: usize| -> DiT {
        let mut rng = NoiseRng::new(k as u64);
        let x0 = rng.tensor([2, 1, 8, 8], &ad);
        let b = diffusion_batch(x0, &schedule, &mut rng).unwrap();
        let loss = eps_loss(&m, &b, Some(labels(&[0, 1], &ad).into())).unwrap();
        let g = GradientsParams::from_grads(loss.backward(), &m);
        opt.step(1e-3, m, g)
    };
    let mut opt = AdamWConfig::new().init();
    let mut m = tiny_dit(&ad);
    for k in 0..2 {
        m = step(m, &mut opt, k);
    }
    let dir = std::env::temp_dir().join(format!(
        "dmq-ckpt-{}-{}",
        std::process::id(),
        rand_tag(device)
    ));
    let ckpt = Checkpoint::new(&dir);
    let state = TrainState {
        step: 2,
        ..TrainState::default()
    };
    ckpt.save(&m, &m.clone().no_grad(), &opt, &state).unwrap();
    let mut cont = m;
    let mut opt_cont = opt;
    for k in 2..4 {
        cont = step(cont, &mut opt_cont, k);
    }
    let (mut resumed, _, mut opt_r, st) = ckpt
        .load(tiny_dit(&ad), tiny_dit(&ad), AdamWConfig::new().init())
        .unwrap()
        .unwrap();
    assert_eq!(st.step, 2);
    for k in 2..4 {
        resumed = step(resumed, &mut opt_r, k);
    }
    assert_close(
        &host(cont.proj_out_2.weight.val()),
        &host(resumed.proj_out_2.weight.val()),
        "resumed training",
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        Checkpoint::new(&dir)
            .load(tiny_dit(&ad), tiny_dit(&ad), AdamWConfig::new().init())
            .unwrap()
            .is_none()
    );
}

fn rand_tag(device: &Device) -> String {
    format!("{device:?}")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect()
}

struct Shift(f64);

impl burn::module::ModuleMapper for Shift {
    fn map_float<const D: usize>(
        &mut self,
        p: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        let s = self.0;
        p.map(move |t| t + s)
    }
}

#[test]
fn lr_schedule_warmup_and_cosine() {
    let s = LrSchedule {
        peak: 1.0,
        final_lr: 0.1,
        warmup: 10,
        total: 110,
        cosine: true,
    };
    assert!((s.at(0) - 0.1).abs() < 1e-12);
    assert!((s.at(9) - 1.0).abs() < 1e-12);
    assert!((s.at(60) - 0.55).abs() < 1e-12);
    assert!((s.at(110) - 0.1).abs() < 1e-12);
    let lin = LrSchedule { cosine: false, ..s };
    assert!((lin.at(35) - (0.1 + 0.9 * 0.75)).abs() < 1e-12);
}

/// DiT's zero initialisation leaves the zeroed layers trainable: one AdamW step moves them
/// off zero and the loss starts to fall (a frozen output layer would keep ε̂ = 0, loss ≈ 1).
fn zero_initialised_dit_trains(device: &Device) {
    let ad = device.clone().autodiff();
    let mut model = tiny_dit(&ad).zero_init_modulation();
    let mut rng = NoiseRng::new(4);
    let x = rng.tensor([4, 1, 8, 8], &ad);
    let t = Tensor::<1>::from_floats([10.0, 200.0, 500.0, 900.0], &ad);
    let y = Conditioning::from(labels(&[0, 1, 2, 3], &ad));
    let eps = rng.tensor([4, 1, 8, 8], &ad);
    let mut optim = AdamWConfig::new().init();
    let mut losses = vec![];
    for _ in 0..5 {
        let out = model
            .forward(
                x.clone(),
                t.clone(),
                Some(y.clone()),
                &ForwardCtx::new(dmq_models::StepContext::single(0.0)),
            )
            .unwrap();
        let loss = (out - eps.clone()).powf_scalar(2.0).mean();
        losses.push(host(loss.clone())[0]);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    let w = host(model.proj_out_2.weight.val());
    assert!(w.iter().any(|v| *v != 0.0), "proj_out_2 stayed at zero");
    assert!(losses[4] < losses[0], "{losses:?}");
}

macro_rules! per_backend {
    ($($name:ident),*) => {
        #[cfg(feature = "flex")]
        mod flex { $( #[test] fn $name() { super::$name(&burn::tensor::Device::flex()) } )* }
        #[cfg(feature = "ndarray")]
        mod ndarray { $( #[test] #[allow(deprecated)] fn $name() { super::$name(&burn::tensor::Device::ndarray()) } )* }
        #[cfg(feature = "wgpu")]
        mod wgpu { $( #[test] fn $name() { super::$name(&burn::tensor::Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)) } )* }
    };
}

/// One `#[test]` per function on the CPU backends only (end-to-end runs).
macro_rules! per_cpu_backend {
    ($($name:ident),*) => {
        #[cfg(feature = "flex")]
        mod flex_e2e { $( #[test] fn $name() { super::$name(&burn::tensor::Device::flex()) } )* }
        #[cfg(feature = "ndarray")]
        mod ndarray_e2e { $( #[test] #[allow(deprecated)] fn $name() { super::$name(&burn::tensor::Device::ndarray()) } )* }
    };
}

/// One Adam step from dmq's optimisers, against the closed form `Δp = −lr·g/(|g| + ε)` of a
/// first (bias-corrected) step: with ε = 1e-8 a gradient of 1e-6 moves the parameter by 0.99·lr
/// (burn's default ε = 1e-5 would move it by 0.09·lr).
fn adam_uses_pytorch_epsilon(device: &Device) {
    use burn::nn::{Linear, LinearConfig};
    let ad = device.clone().autodiff();
    let lr = 0.1;
    let g = 1e-6f32;
    let expect = -(lr as f32) * g / (g + dmq_models::train::ADAM_EPSILON);
    for (name, mut optim) in [
        ("adam", dmq_models::train::adam().init()),
        ("adamw", dmq_models::train::adamw(0.0).init()),
    ] {
        // one step on w ↦ g·w (gradient g)
        let m: Linear = LinearConfig::new(1, 1).with_bias(false).init(&ad);
        let w0 = host(m.weight.val())[0];
        let loss = m.forward(Tensor::<2>::from_floats([[1.0]], &ad)).sum() * g;
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        let m = optim.step(lr, m, grads);
        let d = host(m.weight.val())[0] - w0;
        assert!(
            (d - expect).abs() < 1e-4,
            "{name}: step {d}, closed form {expect}"
        );
    }
}

per_backend!(
    adam_uses_pytorch_epsilon,
    cfg_is_one_batched_call,
    teacher_forcing_follows_the_teacher,
    ema_and_checkpoint_resume
);
// End-to-end runs (minutes on lavapipe): CPU backends only; the backend-sensitive ops they
// use are covered on wgpu by the tests above.
per_cpu_backend!(zero_initialised_dit_trains);
