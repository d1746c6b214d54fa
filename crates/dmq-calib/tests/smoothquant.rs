//! SmoothQuant: the migration leaves the FP model unchanged (closed form), the factors follow
//! the paper's formula, bad factors are refused naming the layer, and on a model with an
//! activation-outlier channel SmoothQuant W8A8 is closer to FP than naive W8A8.

use burn::module::Param;
use burn::tensor::{Device, Tensor};
use dmq_calib::smoothquant::smoothing_factors;
use dmq_calib::{
    CalibSet, PtqOptions, QuantConfig, RecordOptions, SmoothOptions, ptq, smoothquant,
};
use dmq_models::layers::{QConv2dConfig, QLinearConfig};
use dmq_models::noise::NoiseRng;
use dmq_models::scheduler::{DdimConfig, DdimScheduler};
use dmq_models::unet::UNet2DModel;
use dmq_models::{Denoiser, ForwardCtx, HostTensor, StepContext};

fn max_rel(a: &HostTensor, b: &HostTensor) -> f32 {
    let scale = b.data.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.data
        .iter()
        .zip(&b.data)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

#[test]
fn smoothing_keeps_the_fp_output_and_refuses_bad_factors() {
    let device = Device::flex();
    let ctx = ForwardCtx::new(StepContext::single(0.0));
    let mut rng = NoiseRng::new(4);
    let s: Vec<f32> = (0..6).map(|i| 0.1 * 3f32.powi(i % 4)).collect();
    // linear, on a token tensor [B, N, C]
    let mut lin = QLinearConfig::new(6, 5).init("blk.proj", &device);
    let x: Tensor<3> = rng.tensor([2, 3, 6], &device);
    let before = HostTensor::from_tensor(&lin.forward(x.clone(), &ctx).unwrap());
    lin.smooth_by(&s).unwrap();
    let after = HostTensor::from_tensor(&lin.forward(x, &ctx).unwrap());
    assert!(
        max_rel(&after, &before) < 1e-5,
        "{}",
        max_rel(&after, &before)
    );
    // conv: per input channel
    let mut conv = QConv2dConfig::new(6, 4, 3)
        .with_padding(1)
        .init("blk.conv", &device);
    let x: Tensor<4> = rng.tensor([2, 6, 5, 5], &device);
    let before = HostTensor::from_tensor(&conv.forward(x.clone(), &ctx).unwrap());
    conv.smooth_by(&s).unwrap();
    let after = HostTensor::from_tensor(&conv.forward(x, &ctx).unwrap());
    assert!(
        max_rel(&after, &before) < 1e-5,
        "{}",
        max_rel(&after, &before)
    );
    // refusals name the layer
    let mut l = QLinearConfig::new(3, 2).init("blk.q", &device);
    for bad in [
        vec![1.0, 1.0],
        vec![1.0, 0.0, 1.0],
        vec![1.0, f32::NAN, 1.0],
    ] {
        let e = l.smooth_by(&bad).unwrap_err().to_string();
        assert!(e.contains("blk.q"), "{e}");
    }
    l.smooth_by(&[1.0, 2.0, 3.0]).unwrap();
    let e = l.smooth_by(&[1.0, 2.0, 3.0]).unwrap_err().to_string();
    assert!(e.contains("already"), "{e}");
    let _: Option<Param<Tensor<1>>> = l.smooth;
}

#[test]
fn factors_follow_the_formula() {
    // s = a^α / w^(1−α): α = 0.5 → sqrt(a / w); a zero max leaves the channel alone
    let s = smoothing_factors(&[4.0, 0.0, 1.0, 9.0], &[1.0, 2.0, 0.0, 4.0], 0.5);
    assert_eq!(s, vec![2.0, 1.0, 1.0, 1.5]);
    let s = smoothing_factors(&[8.0], &[2.0], 1.0);
    assert_eq!(s, vec![8.0]);
    let s = smoothing_factors(&[8.0], &[2.0], 0.0);
    assert_eq!(s, vec![0.5]);
    // clamped
    assert_eq!(smoothing_factors(&[1e12], &[1.0], 1.0), vec![1e4]);
}

/// The tiny UNet with one outlier channel in every resnet's time projection input: channel 0
/// of the time embedding pushed to ≈ +60 by its bias (SiLU passes it; the other channels are
/// O(1)), as trained diffusion models have a few huge channels. Seeded init.
fn outlier_unet(device: &Device) -> UNet2DModel {
    device.seed(21);
    let mut m = UNet2DModel::new(&dmq_models::defaults::tiny_unet().unwrap(), device).unwrap();
    let l = &mut m.time_embedding.linear_2;
    let [o, _] = l.weight.val().dims();
    let mut shift = vec![0f32; o];
    shift[0] = 60.0;
    let add = Tensor::<1>::from_floats(shift.as_slice(), device);
    if let Some(b) = &l.bias {
        l.bias = Some(Param::from_tensor(b.val() + add));
    }
    m
}

fn output(m: &UNet2DModel, calib: &CalibSet, device: &Device) -> HostTensor {
    let idx: Vec<usize> = (0..calib.len())
        .filter(|&i| calib.step[i] == calib.step[0])
        .collect();
    let (x, t, c) = calib.batch(&idx, device).unwrap();
    let ctx = ForwardCtx::new(calib.step_context(calib.step[0]));
    HostTensor::from_tensor(&m.forward(x, t, c, &ctx).unwrap())
}

#[test]
fn smoothquant_beats_naive_on_activation_outliers() {
    let device = Device::flex();
    let fp = outlier_unet(&device);
    let sched = DdimScheduler::diffusers(&DdimConfig::new(), 4).unwrap();
    let calib = CalibSet::record(
        &fp,
        &sched,
        &RecordOptions {
            trajectories: 8,
            steps_kept: 2,
            batch: 8,
            ..RecordOptions::default()
        },
        &device,
    )
    .unwrap();
    let config = QuantConfig::preset("W8A8").unwrap();
    let reference = output(&fp, &calib, &device);
    let mut naive = fp.clone();
    ptq(&mut naive, &config, &calib, &PtqOptions::default(), &device).unwrap();
    let mut smooth = fp.clone();
    let mut calls = 0;
    let rep = smoothquant(
        &mut smooth,
        &config,
        &calib,
        &SmoothOptions::default(),
        &device,
        &mut |_, _| calls += 1,
    )
    .unwrap();
    assert_eq!(
        calls,
        rep.layers.len(),
        "one progress report per searched layer"
    );
    // every choice is at least as good as no smoothing, on that layer alone
    assert!(rep.layers.iter().all(|l| l.mse <= l.mse_unsmoothed));
    // the outlier layers are smoothed, and their error drops by more than half
    let te: Vec<_> = rep
        .layers
        .iter()
        .filter(|l| l.layer.ends_with("time_emb_proj"))
        .collect();
    assert!(!te.is_empty());
    for l in &te {
        assert!(l.outlier_ratio > 20.0, "{l:?}");
        assert!(l.alpha.is_some() && l.mse < 0.5 * l.mse_unsmoothed, "{l:?}");
    }
    let e_naive = max_rel(&output(&naive, &calib, &device), &reference);
    let e_smooth = max_rel(&output(&smooth, &calib, &device), &reference);
    assert!(
        e_smooth < e_naive,
        "SmoothQuant W8A8 error {e_smooth} vs naive {e_naive}"
    );
    // refuses a model that is already quantized
    let e = smoothquant(
        &mut naive,
        &config,
        &calib,
        &SmoothOptions::default(),
        &device,
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("FP model"), "{e}");
}
