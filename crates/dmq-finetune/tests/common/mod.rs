//! Fixtures shared by the fine-tuning test files: tiny models, schedulers, calibration sets,
//! one-step evaluation and the per-backend test macro.
#![allow(dead_code)]

use burn::tensor::{Device, Tensor};
use dmq_calib::{CalibSet, RecordOptions};
use dmq_models::dit::DiT;
use dmq_models::scheduler::{DdimConfig, DdimScheduler, Scheduler};
use dmq_models::unet::UNet2DModel;
use dmq_models::{Denoiser, ForwardCtx, HostTensor, StepContext};

pub fn tiny_unet(device: &Device) -> UNet2DModel {
    UNet2DModel::new(&dmq_models::defaults::tiny_unet().unwrap(), device).unwrap()
}

pub fn tiny_dit(device: &Device) -> DiT {
    DiT::new(&dmq_models::defaults::tiny_dit().unwrap(), device).unwrap()
}

/// Rewrites every float parameter from a host RNG keyed by `seed`: matrices and kernels
/// N(0, 1/fan_in), constant 1-D parameters (norm γ, β) kept, other 1-D ones N(0, 0.1²).
/// `Device::seed` is one process-wide stream that parallel tests draw from concurrently, so
/// a model initialised with it alone is not reproducible under `cargo test`.
pub fn reseeded<M: burn::module::Module>(model: M, seed: u64) -> M {
    struct Reseed(dmq_models::noise::NoiseRng);
    impl burn::module::ModuleMapper for Reseed {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<Tensor<D>>,
        ) -> burn::module::Param<Tensor<D>> {
            let rng = &mut self.0;
            param.map(|old| {
                let (dims, device) = (old.dims(), old.device());
                let scale = if D >= 2 {
                    1.0 / (dims[1..].iter().product::<usize>() as f32).sqrt()
                } else {
                    let v = host(&old);
                    if v.iter().all(|x| *x == v[0]) {
                        return old;
                    }
                    0.1
                };
                rng.tensor(dims, &device) * scale
            })
        }
    }
    model.map(&mut Reseed(dmq_models::noise::NoiseRng::new(seed)))
}

pub fn host<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    HostTensor::from_tensor(t).data
}

pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn sched(steps: usize, eta: f64) -> DdimScheduler {
    DdimScheduler::diffusers(&DdimConfig::new().with_eta(eta), steps).unwrap()
}

pub fn timesteps(s: &DdimScheduler) -> Vec<f64> {
    s.timesteps().iter().map(|&t| t as f64).collect()
}

pub fn calib_for(model: &dyn Denoiser, guidance: f64, device: &Device) -> CalibSet {
    CalibSet::record(
        model,
        &sched(4, 0.0),
        &RecordOptions {
            trajectories: 4,
            steps_kept: 2,
            guidance,
            batch: 4,
            seed: 3,
        },
        device,
    )
    .unwrap()
}

pub fn eval_step(
    model: &dyn Denoiser,
    x: &Tensor<4>,
    s: &DdimScheduler,
    k: usize,
    class: Option<Vec<i64>>,
    device: &Device,
) -> Vec<f32> {
    let [b, ..] = x.dims();
    let t = s.timestep(k).unwrap() as f32;
    let ctx = ForwardCtx::new(StepContext {
        step: k,
        timestep: t as f64,
        num_steps: s.num_steps(),
    });
    let class = class.map(|c| {
        dmq_models::Conditioning::Class(Tensor::from_data(
            burn::tensor::TensorData::new(c, [b]),
            device,
        ))
    });
    host(
        &model
            .forward(
                x.clone(),
                Tensor::from_floats(vec![t; b].as_slice(), device),
                class,
                &ctx,
            )
            .unwrap(),
    )
}

/// One `#[test]` per function and compiled-in backend.
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

/// One `#[test]` per function on the CPU backends only: for end-to-end training runs, which
/// take minutes per step count on lavapipe; the wgpu suite covers their kernels (forward,
/// backward, quantizers, export) through the other tests of the same file.
#[allow(unused_macros)]
macro_rules! per_cpu_backend {
    ($($name:ident),*) => {
        #[cfg(feature = "flex")]
        mod flex_train { $( #[test] fn $name() { super::$name(&burn::tensor::Device::flex()) } )* }
        #[cfg(feature = "ndarray")]
        mod ndarray_train { $( #[test] #[allow(deprecated)] fn $name() { super::$name(&burn::tensor::Device::ndarray()) } )* }
    };
}
