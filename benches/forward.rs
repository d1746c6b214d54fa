//! Forward-pass latency of the default UNet and DiT (random weights; timing does not depend
//! on them) at batch 1 and 16, per compiled-in backend. The same forward timed in
//! diffusers/PyTorch on this CPU: `python3 scripts/bench/forward_torch.py`.
//!
//! `forward_to_unit`: a reconstruction unit's output computed by a full pass (what
//! Q-Diffusion's block reconstruction did every iteration) against a pass that stops at the
//! unit's tap (`Taps::stop_when_complete`), for a unit halfway through each model.
//!
//! `cargo bench --bench forward` (add `--features wgpu` for the GPU backend).

#![allow(missing_docs)] // criterion's macros generate undocumented public items

use burn::tensor::{Device, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dmq::models::dit::DiT;
use dmq::models::unet::UNet2DModel;
use dmq::models::{Denoiser, ForwardCtx, StepContext, Taps, defaults, forward_for_taps};

fn inputs(
    model: &dyn Denoiser,
    b: usize,
    device: &Device,
) -> (Tensor<4>, Tensor<1>, Option<dmq::models::Conditioning>) {
    let info = model.info();
    let s = info.sample_size;
    let x = dmq::models::noise::NoiseRng::new(0).tensor([b, info.in_channels, s, s], device);
    let t = Tensor::full([b], 500.0, device);
    let class = info
        .num_classes
        .map(|_| dmq::models::sampler::labels(&vec![3; b], device).into());
    (x, t, class)
}

/// The default UNet and DiT with random weights.
fn default_models(device: &Device) -> Vec<(&'static str, Box<dyn Denoiser>)> {
    vec![
        (
            "unet-fmnist",
            Box::new(UNet2DModel::new(&defaults::unet_fmnist().unwrap(), device).unwrap()),
        ),
        (
            "dit-fmnist",
            Box::new(DiT::new(&defaults::dit_fmnist().unwrap(), device).unwrap()),
        ),
    ]
}

fn forward(c: &mut Criterion) {
    for (backend, device) in dmq::quant::device::all_devices() {
        let models = default_models(&device);
        for (name, model) in &models {
            let mut group = c.benchmark_group(format!("forward/{backend}/{name}"));
            group.sample_size(10);
            for b in [1usize, 16] {
                let (x, t, class) = inputs(model.as_ref(), b, &device);
                group.throughput(Throughput::Elements(b as u64));
                group.bench_with_input(BenchmarkId::new("batch", b), &b, |bench, _| {
                    bench.iter(|| {
                        let ctx = ForwardCtx::new(StepContext::single(500.0));
                        let y = model
                            .forward(x.clone(), t.clone(), class.clone(), &ctx)
                            .unwrap();
                        device.sync().expect("sync");
                        y
                    })
                });
            }
            group.finish();
        }
    }
}

fn forward_to_unit(c: &mut Criterion) {
    let device = Device::default();
    for (name, model) in &default_models(&device) {
        // a unit halfway through: the UNet's mid block, the DiT's third of six blocks
        let unit = if name.starts_with("unet") {
            "mid_block"
        } else {
            "transformer_blocks.2"
        };
        let mut group = c.benchmark_group(format!("forward_to_unit/{name}/{unit}"));
        group.sample_size(10);
        let (x, t, class) = inputs(model.as_ref(), 16, &device);
        for stop in [false, true] {
            let label = if stop { "stop_at_tap" } else { "full_pass" };
            group.bench_function(label, |bench| {
                bench.iter(|| {
                    let taps = Taps::new([unit.to_string()]);
                    let taps = if stop {
                        taps.stop_when_complete()
                    } else {
                        taps
                    };
                    let ctx = ForwardCtx::new(StepContext::single(500.0)).with_taps(&taps);
                    forward_for_taps(model.forward(x.clone(), t.clone(), class.clone(), &ctx))
                        .unwrap();
                    device.sync().expect("sync");
                    taps.take()
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, forward, forward_to_unit);
criterion_main!(benches);
