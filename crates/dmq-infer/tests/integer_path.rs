//! The integer inference path against the fake-quant model it was exported from, on tiny
//! UNet and DiT models (attention included), on every compiled-in backend.
//!
//! Two levels of agreement:
//! - **layer by layer** (`layerwise`): every integer layer, fed the exact input the
//!   fake-quant layer saw, reproduces the fake-quant output to 1e-5 relative (the same codes;
//!   only the f32 summation order of the dequantization differs);
//! - **whole model**: the outputs of consecutive layers differ by that summation order, so
//!   now and then an activation whose `x/Δ` lies within an ulp of a .5 boundary rounds to
//!   the neighbouring code, and later layers propagate the step (strongly so through the
//!   time embedding, which reaches every resnet). The budget is pinned per format in
//!   relative L2 of the output and, independently, at half the quantization error itself
//!   (fake-quant vs FP), which the tests print.

use burn::tensor::{Device, Tensor};
use dmq_calib::{
    CalibSet, PtqOptions, QuantConfig, RecordOptions, TimeGrouping, export_layers, ptq,
};
use dmq_infer::{InferError, IntegerModel, LayerPath, load_export};
use dmq_models::dit::{DiT, DiTConfig};
use dmq_models::scheduler::{DdimConfig, DdimScheduler};
use dmq_models::unet::{UNet2DModel, UNetConfig};
use dmq_models::{Denoiser, ForwardCtx, HostTensor, ModelError, StepContext};

/// Random inits draw from the device's shared generator: seeding it under a lock gives every
/// test the same weights whatever the order the test threads run in, so the error budgets
/// below are pinned on fixed models.
fn seeded<T>(device: &Device, init: impl FnOnce() -> T) -> T {
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    device.seed(3);
    init()
}

fn tiny_unet(device: &Device) -> UNet2DModel {
    seeded(device, || {
        UNet2DModel::new(&dmq_models::defaults::tiny_unet().unwrap(), device).unwrap()
    })
}

fn tiny_dit(device: &Device) -> DiT {
    let cfg = DiTConfig::from_json_value(&serde_json::json!({
        "sample_size": 8, "in_channels": 1, "out_channels": 1, "patch_size": 2,
        "num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 8,
        "num_embeds_ada_norm": 3
    }))
    .unwrap();
    seeded(device, || DiT::new(&cfg, device).unwrap())
}

const STEPS: usize = 4;

fn calib<M: Denoiser>(fp: &M, device: &Device) -> CalibSet {
    let s = DdimScheduler::diffusers(&DdimConfig::new(), STEPS).unwrap();
    CalibSet::record(
        fp,
        &s,
        &RecordOptions {
            trajectories: 6,
            steps_kept: STEPS,
            batch: 6,
            ..RecordOptions::default()
        },
        device,
    )
    .unwrap()
}

/// PTQ of a copy of `fp` with `cfg` (per-step activation sets), its layer export, and the
/// integer model built from it.
fn quantized<M: Denoiser + Clone>(
    fp: &M,
    cfg: &QuantConfig,
    calib: &CalibSet,
    device: &Device,
) -> (M, dmq_quant::QuantizedFile, IntegerModel<M>) {
    let mut fq = fp.clone();
    let opts = PtqOptions {
        time: TimeGrouping::PerStep,
        act_samples: 6,
        ..PtqOptions::default()
    };
    ptq(&mut fq, cfg, calib, &opts, device).unwrap();
    let file = export_layers(&fq, STEPS).unwrap();
    let int = IntegerModel::from_export(fp.clone(), &file, device).unwrap();
    (fq, file, int)
}

fn out_at(model: &dyn Denoiser, calib: &CalibSet, step: usize, device: &Device) -> Vec<f32> {
    let idx = calib.indices_at_step(step);
    let (x, t, c) = calib.batch(&idx, device).unwrap();
    let y = model
        .forward(x, t, c, &ForwardCtx::new(calib.step_context(step)))
        .unwrap();
    HostTensor::from_tensor(&y).data
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// PTQ at `preset` (per-step activation sets), export, integer model; returns the worst
/// relative error integer vs fake-quant over the steps, and fake-quant vs FP.
fn check<M: Denoiser + Clone>(fp: &M, preset: &str, budget: f64, device: &Device) -> (f64, f64) {
    let calib = calib(fp, device);
    let (fq, _, int) = quantized(fp, &QuantConfig::preset(preset).unwrap(), &calib, device);

    // Every quantized layer runs in integers (this preset quantizes all of them).
    let plan = int.executor().plan();
    let burn: Vec<_> = plan
        .iter()
        .filter(|(_, p)| matches!(p, LayerPath::Burn(_)))
        .collect();
    assert!(burn.is_empty(), "{preset}: layers left to burn: {burn:?}");
    assert!(plan.iter().any(
        |(n, p)| n.ends_with(".qk") && matches!(p, LayerPath::Integer(f) if f.starts_with('A'))
    ));

    let (mut worst, mut q_err) = (0.0f64, f64::MAX);
    for step in 0..STEPS {
        let want = out_at(&fq, &calib, step, device);
        // Loading the export back reproduces the fake-quant model.
        let reloaded = out_at(int.fake_quant(), &calib, step, device);
        let e = rel_err(&reloaded, &want);
        assert!(
            e <= 1e-5,
            "{preset} step {step}: reloaded fake-quant model differs by {e:e}"
        );
        let got = out_at(&int, &calib, step, device);
        worst = worst.max(rel_err(&got, &want));
        q_err = q_err.min(rel_err(&want, &out_at(fp, &calib, step, device)));
    }
    eprintln!("{preset}: integer vs fake-quant {worst:.2e}; fake-quant vs FP ≥ {q_err:.2e}");
    assert!(
        worst <= budget,
        "{preset}: integer vs fake-quant {worst:e} > budget {budget:e}"
    );
    assert!(
        worst < 0.5 * q_err,
        "{preset}: integer-path error {worst:e} not small against the quantization error {q_err:e}"
    );
    (worst, q_err)
}

fn unet_w8a8(device: &Device) {
    check(&tiny_unet(device), "W8A8", 2e-2, device);
}

fn unet_w4a8(device: &Device) {
    check(&tiny_unet(device), "W4A8", 3e-2, device);
}

fn unet_w4a4(device: &Device) {
    check(&tiny_unet(device), "W4A4", 5e-2, device);
}

fn unet_w1a8(device: &Device) {
    check(&tiny_unet(device), "W1A8", 5e-2, device);
}

fn dit_w8a8(device: &Device) {
    check(&tiny_dit(device), "W8A8", 2e-2, device);
}

fn dit_w4a4(device: &Device) {
    check(&tiny_dit(device), "W4A4", 5e-2, device);
}

/// A per-group preset: the linears whose input size 8 divides get weights per group of 8
/// input features (the kernels' grouped layout), the convs stay per output channel, and every
/// quantized layer still runs in integers.
fn grouped_weights(device: &Device) {
    use dmq_quant::Granularity;
    for (name, plans) in [
        (
            "dit",
            QuantConfig::preset("W4A8-g8")
                .unwrap()
                .resolve(&tiny_dit(device), device)
                .unwrap(),
        ),
        (
            "unet",
            QuantConfig::preset("W4A8-g8")
                .unwrap()
                .resolve(&tiny_unet(device), device)
                .unwrap(),
        ),
    ] {
        let grouped = plans
            .iter()
            .filter(|p| {
                matches!(
                    p.weight.map(|w| w.granularity()),
                    Some(Granularity::PerGroup { axis: 1, size: 8 })
                )
            })
            .count();
        assert!(grouped > 0, "{name}: no layer grouped");
        for p in &plans {
            if p.kind == dmq_models::layers::LayerKind::Conv2d {
                assert!(
                    matches!(
                        p.weight.map(|w| w.granularity()),
                        Some(Granularity::PerChannel { axis: 0 })
                    ),
                    "{name} {}: convs stay per channel",
                    p.name
                );
            }
        }
    }
    check(&tiny_dit(device), "W4A8-g8", 3e-2, device);
    check(&tiny_unet(device), "W4A8-g8", 3e-2, device);
}

/// Each integer layer on the fake-quant layer's own input reproduces its output.
fn layerwise<M: Denoiser + Clone>(fp: &M, preset: &str, device: &Device) {
    use dmq_models::layers::LayerRef;
    use dmq_models::{ConvGeometry, InputCapture, Operand, TapTensor, Taps};
    let calib = calib(fp, device);
    let (fq, _, int) = quantized(fp, &QuantConfig::preset(preset).unwrap(), &calib, device);
    let mut layers = Vec::new();
    fq.for_each_layer(&mut |l| {
        let geom = match &l {
            LayerRef::Conv2d(c) => Some(ConvGeometry {
                stride: c.stride,
                padding: c.padding,
            }),
            _ => None,
        };
        layers.push((l.name().to_string(), l.kind(), geom));
    });
    let step = 2;
    let idx = calib.indices_at_step(step);
    let (x, t, c) = calib.batch(&idx, device).unwrap();
    let taps = Taps::new(layers.iter().map(|l| l.0.clone()));
    let inputs = InputCapture::all();
    let ctx = ForwardCtx::new(calib.step_context(step))
        .with_taps(&taps)
        .with_inputs(&inputs);
    fq.forward(x, t, c, &ctx).unwrap();
    let (outs, ins) = (taps.take(), inputs.take());
    let ex = int.executor();
    let mut checked = 0;
    for (name, _, geom) in &layers {
        let want = match &outs[name] {
            TapTensor::R2(t) => HostTensor::from_tensor(t),
            TapTensor::R3(t) => HostTensor::from_tensor(t),
            TapTensor::R4(t) => HostTensor::from_tensor(t),
        };
        let x = |op| ins[&(name.clone(), op)][0].clone();
        let got = if let Some(g) = geom {
            ex.run_conv2d(name, &x(Operand::Input), *g, step).unwrap()
        } else if ins.contains_key(&(name.clone(), Operand::Left)) {
            ex.run_matmul(name, &x(Operand::Left), &x(Operand::Right), step)
                .unwrap()
        } else {
            let mut h = x(Operand::Input);
            let k = *h.shape.last().unwrap();
            h.shape = vec![h.data.len() / k, k];
            ex.run_linear(name, &h, step).unwrap()
        };
        let e = rel_err(&got.data, &want.data);
        assert!(
            e <= 1e-5,
            "{preset} {name}: integer layer vs fake-quant layer {e:e}"
        );
        checked += 1;
    }
    assert!(checked > 10, "{checked}");
}

fn layerwise_unet(device: &Device) {
    for preset in ["W8A8", "W4A8", "W4A4", "W1A8"] {
        layerwise(&tiny_unet(device), preset, device);
    }
}

fn layerwise_dit(device: &Device) {
    for preset in ["W8A8", "W4A4"] {
        layerwise(&tiny_dit(device), preset, device);
    }
}

/// `[B, H, N, d]` (or `[B, H, d, N]` with `transposed`) → `[B, N, H·d]`.
fn merge_heads(t: &HostTensor, transposed: bool) -> HostTensor {
    let [b, h, r, c] = t.shape[..] else {
        panic!("rank 4 expected: {:?}", t.shape)
    };
    let (n, d) = if transposed { (c, r) } else { (r, c) };
    let mut out = vec![0f32; b * n * h * d];
    for bi in 0..b {
        for hi in 0..h {
            for ni in 0..n {
                for di in 0..d {
                    let src = if transposed {
                        ((bi * h + hi) * d + di) * n + ni
                    } else {
                        ((bi * h + hi) * n + ni) * d + di
                    };
                    out[((bi * n + ni) * h + hi) * d + di] = t.data[src];
                }
            }
        }
    }
    HostTensor {
        data: out,
        shape: vec![b, n, h * d],
    }
}

/// The fused attention core reproduces the fake-quant `qk` → softmax → `sv` chain on the
/// inputs the fake-quant model saw, and a plain forward of the integer model takes it.
fn fused_attention<M: Denoiser + Clone>(fp: &M, preset: &str, device: &Device) {
    use dmq_models::{InputCapture, Operand, TapTensor, Taps};
    let calib = calib(fp, device);
    let (fq, _, int) = quantized(fp, &QuantConfig::preset(preset).unwrap(), &calib, device);
    let mut pairs = Vec::new();
    fq.for_each_layer(&mut |l| {
        if let Some(base) = l.name().strip_suffix(".qk") {
            pairs.push((l.name().to_string(), format!("{base}.sv")));
        }
    });
    assert!(!pairs.is_empty());
    let step = 1;
    let idx = calib.indices_at_step(step);
    let (x, t, c) = calib.batch(&idx, device).unwrap();
    let taps = Taps::new(pairs.iter().map(|p| p.1.clone()));
    let inputs = InputCapture::all();
    let ctx = ForwardCtx::new(calib.step_context(step))
        .with_taps(&taps)
        .with_inputs(&inputs);
    fq.forward(x.clone(), t.clone(), c.clone(), &ctx).unwrap();
    let (outs, ins) = (taps.take(), inputs.take());
    let ex = int.executor();
    for (qk, sv) in &pairs {
        let q = &ins[&(qk.clone(), Operand::Left)][0];
        let heads = q.shape[1];
        let q = merge_heads(q, false);
        let k = merge_heads(&ins[&(qk.clone(), Operand::Right)][0], true);
        let v = merge_heads(&ins[&(sv.clone(), Operand::Right)][0], false);
        let d = q.shape[2] / heads;
        let scale = (d as f32).powf(-0.5);
        let got = ex
            .run_attention(qk, sv, [&q, &k, &v], heads, scale, step)
            .unwrap();
        let TapTensor::R4(want) = &outs[sv] else {
            panic!("{sv}: rank-4 tap expected")
        };
        let want = merge_heads(&HostTensor::from_tensor(want), false);
        // Only the f32 softmax differs (host vs burn, an ulp): a probability on a rounding
        // boundary may take the neighbouring code.
        let e = rel_err(&got.data, &want.data);
        assert!(e <= 2e-3, "{preset} {qk}: fused vs fake-quant chain {e:e}");
        // A bad head count or mismatched operands are typed shape errors, not panics.
        let flat = HostTensor {
            data: k.data.clone(),
            shape: vec![1, 1, k.data.len()],
        };
        for (h, kk) in [(0, &k), (heads, &flat)] {
            let r = ex.run_attention(qk, sv, [&q, kk, &v], h, scale, step);
            assert!(matches!(r, Err(InferError::Shape { .. })), "{r:?}");
        }
    }
    ex.reset_timings();
    int.forward(x, t, c, &ForwardCtx::new(calib.step_context(step)))
        .unwrap();
    let timed = ex.timings();
    for (qk, sv) in &pairs {
        assert!(timed.contains_key(qk), "{qk} not run");
        assert!(!timed.contains_key(sv), "{sv} run unfused");
    }
}

fn fused_attention_unet(device: &Device) {
    fused_attention(&tiny_unet(device), "W8A8", device);
}

fn fused_attention_dit(device: &Device) {
    for preset in ["W8A8", "W4A4"] {
        fused_attention(&tiny_dit(device), preset, device);
    }
}

/// An FP layer in the export (a per-layer rule) is left to burn and named in the plan.
fn fp_layers_fall_back_to_burn(device: &Device) {
    let fp = tiny_unet(device);
    let calib = calib(&fp, device);
    let cfg = QuantConfig::preset("W8A8")
        .unwrap()
        .with_rule(dmq_calib::LayerRule::fp("conv_out"));
    let (fq, _, int) = quantized(&fp, &cfg, &calib, device);
    let path = &int
        .executor()
        .plan()
        .iter()
        .find(|(n, _)| n == "conv_out")
        .unwrap()
        .1;
    assert_eq!(path, &LayerPath::Burn("FP weight".into()));
    let e = rel_err(
        &out_at(&int, &calib, 1, device),
        &out_at(&fq, &calib, 1, device),
    );
    assert!(e <= 2e-2, "{e}");
}

/// A step past the exported activation sets, a weight of the wrong shape and a missing
/// parameter set are typed errors naming the layer or entry.
fn errors_name_the_layer(device: &Device) {
    let fp = tiny_unet(device);
    let calib = calib(&fp, device);
    let (_, file, int) = quantized(&fp, &QuantConfig::preset("W8A8").unwrap(), &calib, device);
    let x = Tensor::<4>::zeros([1, 1, 8, 8], device);
    let t = Tensor::<1>::from_floats([10.0], device);
    let ctx = ForwardCtx::new(StepContext {
        step: STEPS + 3,
        timestep: 10.0,
        num_steps: STEPS + 4,
    });
    match int.forward(x, t, None, &ctx) {
        Err(ModelError::Executor { layer, source }) => {
            assert_eq!(layer, "time_embedding.linear_1"); // the first quantized layer called
            let e = source.downcast_ref::<InferError>().expect("an InferError");
            assert!(
                matches!(e, InferError::Step { step, len, .. } if *step == STEPS + 3 && *len == STEPS),
                "{e}"
            );
        }
        other => panic!("expected an executor error, got {other:?}"),
    }

    let mut broken = file.clone();
    broken.float.remove("conv_in.a.delta.2");
    let e = IntegerModel::from_export(fp.clone(), &broken, device).unwrap_err();
    assert!(
        matches!(&e, InferError::Export { entry, .. } if entry == "conv_in.a.delta.2"),
        "{e}"
    );

    let other = tiny_dit(device);
    let mut m = other.clone();
    // A UNet export names no DiT layer: refused (not loaded as FP under a quantized label);
    // a UNet export loaded into a UNet of other widths is a shape error.
    let e = load_export(&mut m, &file, device).unwrap_err();
    assert!(
        matches!(&e, InferError::Export { reason, .. } if reason.contains("matches no quantizable layer")),
        "{e}"
    );
    let wide = UNet2DModel::new(
        &UNetConfig::from_json(&serde_json::json!({
            "sample_size": 8, "in_channels": 1, "out_channels": 1,
            "block_out_channels": [16, 16], "layers_per_block": 1,
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
            "attention_head_dim": 8, "norm_num_groups": 4
        }))
        .unwrap(),
        device,
    )
    .unwrap();
    let e = IntegerModel::from_export(wide, &file, device).unwrap_err();
    assert!(
        // a layer of other width, or one the narrower model does not have
        matches!(&e, InferError::Export { entry, .. }
            if entry == "time_embedding.linear_1.weight" || entry.ends_with("conv_shortcut.weight")),
        "{e}"
    );
}

macro_rules! per_backend {
    ($($name:ident),*) => {
        #[cfg(feature = "flex")]
        mod flex { $( #[test] fn $name() { super::$name(&burn::tensor::Device::flex()) } )* }
        #[cfg(feature = "ndarray")]
        mod ndarray { $( #[test] #[allow(deprecated)] fn $name() { super::$name(&burn::tensor::Device::ndarray()) } )* }
    };
}

per_backend!(
    unet_w8a8,
    unet_w4a8,
    unet_w4a4,
    unet_w1a8,
    dit_w8a8,
    dit_w4a4,
    grouped_weights,
    layerwise_unet,
    layerwise_dit,
    fused_attention_unet,
    fused_attention_dit,
    fp_layers_fall_back_to_burn,
    errors_name_the_layer
);

// The kernels run on the host whatever the backend; on wgpu (lavapipe in CI, slow) one
// model checks the fake-quant reference and the tensor round trips (each case takes a minute
// or more there; the flex suite runs them all).
#[cfg(feature = "wgpu")]
mod wgpu {
    fn device() -> burn::tensor::Device {
        burn::tensor::Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)
    }
    #[test]
    fn dit_w8a8() {
        super::dit_w8a8(&device())
    }
}
