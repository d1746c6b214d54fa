//! Quantization configs, calibration sets, PTQ and the Q-Diffusion reconstruction on tiny
//! UNet and DiT models, on every compiled-in backend.

use burn::tensor::{Device, Tensor};
use dmq_calib::config::softmax_spec;
use dmq_calib::recon::lp_loss;
use dmq_calib::{
    CalibError, CalibSet, CondRecord, EdgePolicy, LayerRule, PtqOptions, QuantConfig,
    ReconCheckpoint, ReconOptions, RecordOptions, TimeGrouping, kept_steps, ptq, qdiffusion, units,
};
use dmq_models::dit::{DiT, DiTConfig};
use dmq_models::layers::{LayerKind, LayerRef};
use dmq_models::noise::NoiseRng;
use dmq_models::sampler::Trajectory;
use dmq_models::scheduler::{DdimConfig, DdimScheduler, Scheduler};
use dmq_models::unet::UNet2DModel;
use dmq_models::{
    Conditioning, Denoiser, DenoiserInfo, ForwardCtx, HostTensor, StepContext, TapTensor,
    layer_inventory,
};
use dmq_quant::{ActQuantizer, Quantizer};

fn tiny_unet(device: &Device) -> UNet2DModel {
    UNet2DModel::new(&dmq_models::defaults::tiny_unet().unwrap(), device).unwrap()
}

fn tiny_dit(device: &Device) -> DiT {
    let cfg = DiTConfig::from_json_value(&serde_json::json!({
        "sample_size": 8, "in_channels": 1, "out_channels": 1, "patch_size": 2,
        "num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 4,
        "num_embeds_ada_norm": 3
    }))
    .unwrap();
    DiT::new(&cfg, device).unwrap()
}

fn host<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    HostTensor::from_tensor(t).data
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn sched(steps: usize) -> DdimScheduler {
    DdimScheduler::diffusers(&DdimConfig::new(), steps).unwrap()
}

/// The output of `model` on calibration entries 0..n at their first step.
fn eval_on(model: &dyn Denoiser, calib: &CalibSet, step: usize, device: &Device) -> Vec<f32> {
    let idx = calib.indices_at_step(step);
    let (x, t, c) = calib.batch(&idx, device).unwrap();
    let sc = StepContext {
        step,
        timestep: calib.timesteps[step],
        num_steps: calib.num_steps(),
    };
    host(&model.forward(x, t, c, &ForwardCtx::new(sc)).unwrap())
}

// ---------------------------------------------------------------- configs

fn presets_and_rules(device: &Device) {
    let model = tiny_unet(device);
    let plans = QuantConfig::preset("w4a8")
        .unwrap()
        .resolve(&model, device)
        .unwrap();
    let conv_in = plans.iter().find(|p| p.name == "conv_in").unwrap();
    assert_eq!(conv_in.weight_bits(), 4);
    assert_eq!(conv_in.act_bits().0, 8);
    let sv = plans.iter().find(|p| p.name.ends_with(".sv")).unwrap();
    assert_eq!(sv.kind, LayerKind::Matmul);
    assert_eq!(sv.act, Some(softmax_spec(8).unwrap()));
    assert_eq!(sv.weight_bits(), 0);
    // edges: first conv and last layer
    let plans = QuantConfig::preset("W4A4")
        .unwrap()
        .with_edges(EdgePolicy::Int8)
        .resolve(&model, device)
        .unwrap();
    for name in ["conv_in", "conv_out"] {
        let p = plans.iter().find(|p| p.name == name).unwrap();
        assert_eq!((p.weight_bits(), p.act_bits().0), (8, 8), "{name}");
    }
    let mid = plans
        .iter()
        .find(|p| p.name.ends_with("time_emb_proj"))
        .unwrap();
    assert_eq!(mid.weight_bits(), 4);
    // rules: later rules win; FP rule
    let plans = QuantConfig::preset("W4A4")
        .unwrap()
        .with_rule(LayerRule::bits("*.time_emb_proj", Some(8), Some(8)).unwrap())
        .with_rule(LayerRule::fp("down_blocks.0.*"))
        .resolve(&model, device)
        .unwrap();
    for p in &plans {
        if p.name.starts_with("down_blocks.0.") {
            assert_eq!((p.weight_bits(), p.act_bits().0), (32, 32), "{}", p.name);
        } else if p.name.ends_with("time_emb_proj") {
            assert_eq!(p.weight_bits(), 8, "{}", p.name);
        }
    }
    // errors name the pattern / preset
    let e = QuantConfig::preset("W4A4")
        .unwrap()
        .with_rule(LayerRule::fp("*.nonexistent"))
        .resolve(&model, device)
        .unwrap_err();
    assert!(
        matches!(e, CalibError::UnmatchedPattern { ref pattern, .. } if pattern == "*.nonexistent"),
        "{e}"
    );
    for bad in ["W9A8", "W4A0", "X4A4", "W4", ""] {
        assert!(
            matches!(QuantConfig::preset(bad), Err(CalibError::UnknownPreset(_))),
            "{bad}"
        );
    }
    let mut cfg = QuantConfig::preset("W4A8").unwrap();
    cfg.weight = Some(dmq_quant::QuantSpec::int(4).unwrap().per_group(1, 3));
    let e = cfg.resolve(&model, device).unwrap_err();
    assert!(matches!(e, CalibError::BadLayerSpec { .. }), "{e}");
    assert!(
        e.to_string().contains("conv_in") || e.to_string().contains("time_embedding"),
        "{e}"
    );
}

fn reconstruction_units(device: &Device) {
    let unet = tiny_unet(device);
    let s = unet.structure();
    assert_eq!(
        s.unit_of("down_blocks.1.resnets.0.conv1"),
        "down_blocks.1.resnets.0"
    );
    assert_eq!(
        s.unit_of("down_blocks.1.attentions.0.qk"),
        "down_blocks.1.attentions.0"
    );
    assert_eq!(s.unit_of("conv_in"), "conv_in");
    assert_eq!(
        s.unit_of("time_embedding.linear_1"),
        "time_embedding.linear_1"
    );
    assert_eq!(
        tiny_dit(device)
            .structure()
            .unit_of("transformer_blocks.1.ff.net.2"),
        "transformer_blocks.1"
    );
    let u = units(&s, &layer_inventory(&unet, device).unwrap());
    let names: Vec<&str> = u.iter().map(|u| u.name.as_str()).collect();
    assert!(
        names.contains(&"conv_in") && names.contains(&"conv_out"),
        "{names:?}"
    );
    let res = u
        .iter()
        .find(|u| u.name == "down_blocks.0.resnets.0")
        .unwrap();
    assert!(
        res.layers.iter().any(|l| l.ends_with("time_emb_proj")),
        "{:?}",
        res.layers
    );
    let dit = tiny_dit(device);
    let d = units(&dit.structure(), &layer_inventory(&dit, device).unwrap());
    let names: Vec<&str> = d.iter().map(|u| u.name.as_str()).collect();
    assert!(
        names.contains(&"transformer_blocks.0") && names.contains(&"transformer_blocks.1"),
        "{names:?}"
    );
    assert_eq!(names.last(), Some(&"proj_out_2"));
}

// ---------------------------------------------------------------- calibration sets

/// Each entry is the denoiser input of its step: x_T at step 0, the trajectory state after
/// k steps at step k, paired with the timestep of that same step (the off-by-one of §1.5).
///
/// `exact_replay`: whether the replayed trajectory must be bit-identical after step 0. On
/// wgpu (lavapipe) a CI run once replayed a different trajectory from step 2 on (values off
/// by 0.3, not by rounding): kernel choice there is not reproducible between two runs of one
/// process, so that backend checks step 0 (pure noise), the timestep pairing and the layout.
fn calib_pairs_inputs_with_their_own_step(device: &Device) {
    calib_pairs_check(device, true)
}

fn calib_pairs_check(device: &Device, exact_replay: bool) {
    let model = tiny_unet(device);
    let s = sched(6);
    let opts = RecordOptions {
        trajectories: 3,
        steps_kept: 3,
        guidance: 1.0,
        batch: 3,
        seed: 11,
    };
    let set = CalibSet::record(&model, &s, &opts, device).unwrap();
    assert_eq!(kept_steps(6, 3), vec![0, 2, 4]);
    assert_eq!(set.steps(), vec![0, 2, 4]);
    assert_eq!(set.len(), 9);
    // Replay: same noise draw as the recorder (labels are not drawn for unconditional models).
    let mut rng = NoiseRng::new(11);
    let x_t = rng.tensor([3, 1, 8, 8], device);
    let mut traj = Trajectory::new(&s, x_t, None, None, 1.0, 11 ^ 0xCA11_B000).unwrap();
    while !traj.done() {
        let k = traj.step_index();
        let inp = traj.inputs().unwrap();
        if [0, 2, 4].contains(&k) {
            let idx = set.indices_at_step(k);
            let (x, t, _) = set.batch(&idx, device).unwrap();
            if exact_replay || k == 0 {
                assert_eq!(host(&x), host(&inp.x), "x at step {k}");
            } else {
                assert_eq!(x.dims(), inp.x.dims(), "x at step {k}");
                assert!(host(&x).iter().all(|v| v.is_finite()), "x at step {k}");
            }
            let tk = s.timestep(k).unwrap() as f32;
            assert!(host(&t).iter().all(|&v| v == tk), "t at step {k}");
        }
        let out = model
            .forward(inp.x, inp.t, None, &ForwardCtx::new(inp.step))
            .unwrap();
        traj.advance(out).unwrap();
    }
}

fn calib_set_cfg_and_files(device: &Device) {
    let model = tiny_dit(device);
    let opts = RecordOptions {
        trajectories: 2,
        steps_kept: 2,
        guidance: 3.0,
        batch: 2,
        seed: 5,
    };
    let set = CalibSet::record(&model, &sched(4), &opts, device).unwrap();
    // both CFG branches: 2 trajectories × 2 branches × 2 kept steps
    assert_eq!(set.len(), 8);
    let Some(CondRecord::Class(cls)) = set.cond.clone() else {
        panic!("a class-conditional set records labels")
    };
    assert_eq!(cls.iter().filter(|&&c| c == 3).count(), 4, "{cls:?}");
    let dir = std::env::temp_dir().join(format!("dmq-calib-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("calib.safetensors");
    set.save(&path).unwrap();
    let back = CalibSet::load(&path).unwrap();
    assert_eq!(back, set);
    // truncated and missing files are typed errors naming the file
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = CalibSet::load(&cut).unwrap_err();
    assert!(e.to_string().contains("cut.safetensors"), "{e}");
    assert!(CalibSet::load(dir.join("missing.safetensors")).is_err());
    // NaN in calibration data is an error with its index
    let mut bad = set.clone();
    bad.x.data[5] = f32::NAN;
    let e = bad.validate().unwrap_err();
    assert!(e.to_string().contains("index 5"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------- PTQ

fn ptq_errors_grow_as_bits_shrink(device: &Device) {
    let fp = tiny_unet(device);
    let s = sched(4);
    let calib = CalibSet::record(
        &fp,
        &s,
        &RecordOptions {
            trajectories: 8,
            steps_kept: 4,
            batch: 8,
            ..RecordOptions::default()
        },
        device,
    )
    .unwrap();
    let reference = eval_on(&fp, &calib, 2, device);
    let mut errs = vec![];
    for preset in ["W8A8", "W4A8", "W4A4"] {
        let mut m = fp.clone();
        let opts = PtqOptions {
            act_samples: 8,
            ..PtqOptions::default()
        };
        let rep = ptq(
            &mut m,
            &QuantConfig::preset(preset).unwrap(),
            &calib,
            &opts,
            device,
        )
        .unwrap();
        assert!(
            rep.weight_layers > 5 && rep.act_quantizers > rep.weight_layers,
            "{rep:?}"
        );
        errs.push(rel_err(&eval_on(&m, &calib, 2, device), &reference));
    }
    assert!(errs[0] < 0.1, "W8A8 relative error {errs:?}");
    assert!(errs[0] < errs[1] && errs[1] < errs[2], "{errs:?}");
}

fn time_grouped_activation_sets(device: &Device) {
    let mut m = tiny_dit(device);
    let calib = CalibSet::record(
        &m,
        &sched(6),
        &RecordOptions {
            trajectories: 2,
            steps_kept: 6,
            batch: 2,
            ..RecordOptions::default()
        },
        device,
    )
    .unwrap();
    let opts = PtqOptions {
        time: TimeGrouping::Groups(3),
        act_init: dmq_quant::RangeInit::Max,
        ..PtqOptions::default()
    };
    let rep = ptq(
        &mut m,
        &QuantConfig::preset("W8A8").unwrap(),
        &calib,
        &opts,
        device,
    )
    .unwrap();
    assert_eq!(rep.act_sets, 3);
    // steps 0,1 → set 0; 2,3 → set 1; 4,5 → set 2: the quantizer selects by explicit step
    let mut checked = false;
    m.for_each_layer(&mut |l| {
        if let LayerRef::Linear(q) = l
            && q.name() == "proj_out_2"
            && let Some(ActQuantizer::TimeUniform(t)) = &q.a_quant
        {
            assert_eq!(t.sets.len(), 3);
            let d: Vec<f32> = (0..6)
                .map(|s| t.affine_params(s).unwrap().delta[0])
                .collect();
            assert_eq!(d[0], d[1]);
            assert_eq!(d[2], d[3]);
            assert_eq!(d[4], d[5]);
            assert!(d[0] != d[2] || d[2] != d[4], "{d:?}");
            assert!(t.affine_params(6).is_err());
            checked = true;
        }
    });
    assert!(checked);
    // too many groups is an option error
    let e = ptq(
        &mut tiny_dit(device),
        &QuantConfig::preset("W8A8").unwrap(),
        &calib,
        &PtqOptions {
            time: TimeGrouping::Groups(7),
            ..PtqOptions::default()
        },
        device,
    )
    .unwrap_err();
    assert!(matches!(e, CalibError::Option(_)), "{e}");
}

/// The packed export dequantizes to exactly the fake-quant weights, and its byte count is
/// the FP size with every quantized weight at b bits (plus per-channel Δ, z).
fn export_matches_fake_quant_and_counts_bytes(device: &Device) {
    use burn::module::Module;
    let fp = tiny_unet(device);
    let calib = CalibSet::record(
        &fp,
        &sched(4),
        &RecordOptions {
            trajectories: 2,
            steps_kept: 2,
            batch: 2,
            ..RecordOptions::default()
        },
        device,
    )
    .unwrap();
    let fp_bytes = dmq_calib::model_bytes(&fp, 4).unwrap();
    assert_eq!(fp_bytes, 4 * fp.num_params());
    let mut m = fp.clone();
    let opts = PtqOptions {
        time: TimeGrouping::PerStep,
        ..PtqOptions::default()
    };
    ptq(
        &mut m,
        &QuantConfig::preset("W4A8").unwrap(),
        &calib,
        &opts,
        device,
    )
    .unwrap();
    let file = dmq_calib::export_layers(&m, 4).unwrap();
    let mut checked = 0;
    let (mut wnum, mut wchan) = (0usize, 0usize);
    m.for_each_layer(&mut |l| {
        if let LayerRef::Conv2d(c) = l {
            let q = &file.quantized[&format!("{}.weight", c.name())];
            let ctx = ForwardCtx::new(StepContext::single(0.0));
            let want = host(&c.effective_weight(&ctx).unwrap());
            let got = q.dequantize().unwrap();
            assert!(
                want.iter()
                    .zip(&got)
                    .all(|(a, b)| (a - b).abs() <= 1e-6 * a.abs().max(1.0)),
                "{}",
                c.name()
            );
            wnum += q.numel();
            wchan += c.weight_shape()[0];
            checked += 1;
        }
    });
    assert!(checked > 5);
    // per-step activation sets: 2 recorded steps → 2 sets, mapped nearest over 4 steps
    let map = &file.metadata["conv_in.a.step_to_set"];
    assert_eq!(map, "[0,0,1,1]");
    let bytes = dmq_calib::model_bytes(&m, 4).unwrap();
    assert!(bytes < fp_bytes / 2, "{bytes} vs {fp_bytes}");
    // conv weights alone: 4·numel f32 bytes became numel/2 packed bytes + 8 bytes per channel
    assert!(
        fp_bytes - bytes >= 4 * wnum - wnum / 2 - 8 * wchan - 4096,
        "{bytes} vs {fp_bytes}"
    );
}

// ---------------------------------------------------------------- reconstruction

fn lp_loss_reduction(device: &Device) {
    // Σ over dim 1, mean over the rest: [[1, 2], [3, 4]] vs 0 with p = 2 → mean(1+4, 9+16) = 15
    let a = TapTensor::R2(Tensor::from_floats([[1.0, 2.0], [3.0, 4.0]], device));
    let z = TapTensor::R2(Tensor::zeros([2, 2], device));
    let v = host(&lp_loss(&a, &z, 2.0).unwrap())[0];
    assert!((v - 15.0).abs() < 1e-5, "{v}");
    let b = TapTensor::R2(Tensor::zeros([2, 3], device));
    assert!(lp_loss(&a, &b, 2.0).is_err());
}

fn adaround_reconstruction_lowers_block_error(device: &Device) {
    let ad = device.clone().autodiff();
    // the random init is drawn from the device's generator (shared with the tests running
    // beside this one): seeded, the model is the same in most runs
    ad.seed(11);
    let fp = tiny_unet(&ad);
    let calib = CalibSet::record(
        &fp,
        &sched(4),
        &RecordOptions {
            trajectories: 8,
            steps_kept: 2,
            batch: 8,
            ..RecordOptions::default()
        },
        &ad,
    )
    .unwrap();
    // Three-bit weights in the middle block and the output conv only (4 units), so the
    // test stays fast on lavapipe; the other units are FP and skipped.
    let cfg = QuantConfig::preset("W3A32")
        .unwrap()
        .with_rule(LayerRule::fp("*"))
        .with_rule(LayerRule::bits("mid_block.*", Some(3), None).unwrap())
        .with_rule(LayerRule::bits("conv_out", Some(3), None).unwrap());
    let opts = ReconOptions {
        weight_iters: 80,
        weight_lr: 5e-3,
        act_iters: 0,
        batch: 8,
        samples: 16,
        ..ReconOptions::default()
    };
    let dir = std::env::temp_dir().join(format!("dmq-recon-test-{}", std::process::id()));
    let ck = ReconCheckpoint::new(dir.join("recon.safetensors"));
    let student = fp.clone();
    let (model, rep) = qdiffusion(
        &fp,
        student,
        &cfg,
        &calib,
        &opts,
        Some(&ck),
        &ad,
        &mut |_| {},
    )
    .unwrap();
    let names: Vec<&str> = rep.units.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "mid_block.resnets.0",
            "mid_block.attentions.0",
            "mid_block.resnets.1",
            "conv_out"
        ]
    );
    let before: f64 = rep.units.iter().map(|u| u.before).sum();
    let after: f64 = rep.units.iter().map(|u| u.after).sum();
    assert!(
        after < 0.9 * before,
        "summed block error {before} → {after}"
    );
    // most units improve on round-to-nearest (80 iterations do not finish AdaRound's β
    // annealing: a unit with few weights, such as `conv_out`, can end on either side of it)
    let better = rep.units.iter().filter(|u| u.after < u.before).count();
    assert!(2 * better >= rep.units.len(), "{:?}", rep.units);
    // Resume: everything is in the checkpoint, nothing is re-run, the model is the same.
    let student = fp.clone();
    let (again, rep2) = qdiffusion(
        &fp,
        student,
        &cfg,
        &calib,
        &opts,
        Some(&ck),
        &ad,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(rep2.resumed_units, rep2.units.len().max(rep2.resumed_units));
    assert_eq!(rep2.units, rep.units);
    // the resumed units' time is reported, so a resumed run's cost is not understated
    let recorded: f64 = rep.units.iter().map(|u| u.wall_s).sum();
    assert_eq!(rep.resumed_s, 0.0);
    assert!(recorded > 0.0 && (rep2.resumed_s - recorded).abs() < 1e-9);
    assert_eq!(
        eval_on(&again, &calib, 0, &ad),
        eval_on(&model, &calib, 0, &ad)
    );
    // Another config on the same checkpoint path is refused.
    let e = qdiffusion(
        &fp,
        fp.clone(),
        &QuantConfig::preset("W4A32").unwrap(),
        &calib,
        &opts,
        Some(&ck),
        &ad,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(e, CalibError::File { .. }), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// W4A4: the activation phase calibrates every activation quantizer, then tunes step sizes
/// unit by unit without making any unit worse on its held batch.
fn activation_phase_runs_and_never_hurts(device: &Device) {
    let ad = device.clone().autodiff();
    // seeded random init (the generator is shared with the tests beside this one)
    ad.seed(17);
    let fp = tiny_dit(&ad);
    let calib = CalibSet::record(
        &fp,
        &sched(4),
        &RecordOptions {
            trajectories: 4,
            steps_kept: 2,
            guidance: 2.0,
            batch: 4,
            ..RecordOptions::default()
        },
        &ad,
    )
    .unwrap();
    let opts = ReconOptions {
        weight_iters: 5,
        act_iters: 20,
        act_lr: 4e-3,
        batch: 8,
        samples: 16,
        ..ReconOptions::default()
    };
    let mut seen = 0;
    let (model, rep) = qdiffusion(
        &fp,
        fp.clone(),
        &QuantConfig::preset("W4A4").unwrap(),
        &calib,
        &opts,
        None,
        &ad,
        &mut |p| {
            if p.phase == "activations" {
                seen += 1;
            }
        },
    )
    .unwrap();
    assert!(seen > 0);
    let acts: Vec<_> = rep
        .units
        .iter()
        .filter(|u| u.phase == "activations")
        .collect();
    assert!(acts.len() >= 3, "{:?}", rep.units);
    assert!(acts.iter().all(|u| u.after <= u.before), "{acts:?}");
    assert!(acts.iter().any(|u| u.after < u.before), "{acts:?}");
    let mut n_act = 0;
    model.for_each_layer(&mut |l| {
        if let LayerRef::Linear(q) = l {
            n_act += q.a_quant.is_some() as usize;
        }
    });
    assert!(n_act > 5);
}

#[cfg(feature = "flex")]
#[test]
fn flex_calib_pairs_inputs_with_their_own_step() {
    calib_pairs_inputs_with_their_own_step(&burn::tensor::Device::flex())
}
#[cfg(feature = "ndarray")]
#[test]
#[allow(deprecated)]
fn ndarray_calib_pairs_inputs_with_their_own_step() {
    calib_pairs_inputs_with_their_own_step(&burn::tensor::Device::ndarray())
}
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_calib_pairs_inputs_with_their_own_step() {
    calib_pairs_check(
        &burn::tensor::Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
        false,
    )
}

/// Shortcut splitting: the layers that read a skip concatenation (and only those) get one
/// activation range per half and one weight range per (output channel, half); PTQ fills
/// them, the export carries them, and an export loaded back computes the same outputs.
fn shortcut_split_specs_ptq_and_export(device: &Device) {
    use dmq_quant::Granularity;
    device.seed(11);
    let fp = tiny_unet(device);
    let structure = fp.structure();
    assert!(!structure.skip_concats.is_empty());
    let config = QuantConfig::preset("W4A8")
        .unwrap()
        .with_split_shortcuts(true);
    let plans = config.resolve(&fp, device).unwrap();
    let mut split_layers = 0;
    for p in &plans {
        match structure.skip_concat_of(&p.name) {
            Some(sc) if p.kind == LayerKind::Conv2d => {
                split_layers += 1;
                let at = sc.main_channels;
                assert_eq!(
                    p.weight.unwrap().granularity(),
                    Granularity::Split {
                        channel: Some(0),
                        axis: 1,
                        at
                    },
                    "{}",
                    p.name
                );
                assert_eq!(
                    p.act.unwrap().granularity(),
                    Granularity::Split {
                        channel: None,
                        axis: 1,
                        at
                    },
                    "{}",
                    p.name
                );
            }
            _ => assert!(
                !matches!(
                    p.weight.map(|w| w.granularity()),
                    Some(Granularity::Split { .. })
                ) && !matches!(
                    p.act.map(|a| a.granularity()),
                    Some(Granularity::Split { .. })
                ),
                "{} is split but reads no concatenation",
                p.name
            ),
        }
    }
    assert!(split_layers > 0);
    let s = sched(4);
    let calib = CalibSet::record(
        &fp,
        &s,
        &RecordOptions {
            trajectories: 4,
            steps_kept: 2,
            batch: 4,
            ..RecordOptions::default()
        },
        device,
    )
    .unwrap();
    let mut m = fp.clone();
    ptq(&mut m, &config, &calib, &PtqOptions::default(), device).unwrap();
    let mut two = 0;
    m.for_each_layer(&mut |l| {
        if let LayerRef::Conv2d(c) = l
            && structure.skip_concat_of(c.name()).is_some()
        {
            let a = c.a_quant.as_ref().unwrap().affine_params(0).unwrap();
            let [o, ..] = c.weight_shape();
            let w = c.w_quant.as_ref().unwrap().affine_params(0).unwrap();
            assert_eq!((a.delta.len(), w.delta.len()), (2, 2 * o), "{}", c.name());
            two += 1;
        }
    });
    assert_eq!(two, split_layers);
    // the export carries the split parameters, and its codes are the fake-quant weights
    let file = dmq_calib::export_layers(&m, 4).unwrap();
    m.for_each_layer(&mut |l| {
        if let LayerRef::Conv2d(c) = l
            && let Some(sc) = structure.skip_concat_of(c.name())
        {
            let q = &file.quantized[&format!("{}.weight", c.name())];
            assert_eq!(
                q.params.spec.granularity(),
                Granularity::Split {
                    channel: Some(0),
                    axis: 1,
                    at: sc.main_channels
                }
            );
            let ctx = ForwardCtx::new(StepContext::single(0.0));
            let fq = host(&c.effective_weight(&ctx).unwrap());
            let d = q
                .dequantize()
                .unwrap()
                .iter()
                .zip(&fq)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(d < 1e-6, "{}: export vs fake-quant weight {d}", c.name());
            assert!(file.metadata[&format!("{}.a.spec", c.name())].contains("Split"));
        }
    });
}

/// Running statistics: an exponential moving average of the batches' ranges lies inside the
/// pooled min/max range, so every activation Δ is at most the max-range Δ, and smaller where
/// the batches differ.
fn running_statistics_stay_inside_the_pooled_range(device: &Device) {
    device.seed(12);
    let fp = tiny_unet(device);
    let s = sched(4);
    let calib = CalibSet::record(
        &fp,
        &s,
        &RecordOptions {
            trajectories: 8,
            steps_kept: 2,
            batch: 8,
            ..RecordOptions::default()
        },
        device,
    )
    .unwrap();
    let config = QuantConfig::preset("W8A8").unwrap();
    let deltas = |opts: PtqOptions| {
        let mut m = fp.clone();
        ptq(&mut m, &config, &calib, &opts, device).unwrap();
        let mut v = Vec::new();
        m.for_each_layer(&mut |l| {
            if let LayerRef::Conv2d(c) = l {
                v.push(c.a_quant.as_ref().unwrap().affine_params(0).unwrap().delta[0]);
            }
        });
        v
    };
    let base = PtqOptions {
        act_init: dmq_quant::RangeInit::Max,
        batch: 2,
        ..PtqOptions::default()
    };
    let pooled = deltas(base.clone());
    let running = deltas(PtqOptions {
        act_running_stat: Some(0.95),
        ..base
    });
    assert_eq!(pooled.len(), running.len());
    let mut smaller = 0;
    for (p, r) in pooled.iter().zip(&running) {
        assert!(
            *r <= p * (1.0 + 1e-5),
            "running Δ {r} above the pooled max Δ {p}"
        );
        smaller += usize::from(*r < 0.999 * p);
    }
    assert!(smaller > 0, "running statistics changed no range");
}

// ---------------------------------------------------------------- text conditioning

/// A text-conditional toy denoiser: `out = x · mean(states)` per sample, so what it was fed
/// is visible in its output.
struct TextToy;

impl Denoiser for TextToy {
    fn forward(
        &self,
        x: Tensor<4>,
        _t: Tensor<1>,
        cond: Option<Conditioning>,
        _ctx: &ForwardCtx<'_>,
    ) -> dmq_models::Result<Tensor<4>> {
        let s = cond
            .and_then(|c| c.states().cloned())
            .ok_or_else(|| dmq_models::ModelError::Config("TextToy needs text states".into()))?;
        let [b, ..] = x.dims();
        let m = s.mean_dim(2).mean_dim(1).reshape([b, 1, 1, 1]);
        Ok(x * m)
    }

    fn info(&self) -> DenoiserInfo {
        DenoiserInfo {
            in_channels: 1,
            sample_size: 4,
            num_classes: None,
            out_channels: 1,
            cross_attention_dim: Some(2),
        }
    }

    fn for_each_layer(&self, _f: &mut dyn FnMut(LayerRef<'_>)) {}

    fn for_each_layer_mut(&mut self, _f: &mut dyn FnMut(dmq_models::layers::LayerMut<'_>)) {}

    fn structure(&self) -> dmq_models::Structure {
        dmq_models::Structure::default()
    }
}

/// `[n, 3, 2]` states filled with `v`.
fn states(n: usize, v: f32, device: &Device) -> Tensor<3> {
    Tensor::full([n, 3, 2], v, device)
}

/// A text-conditional calibration set records both CFG halves with the states they were fed
/// (each distinct prompt embedding once), round-trips through its file, and replays exactly.
fn text_calib_set_records_prompt_embeddings(device: &Device) {
    let model = TextToy;
    let opts = RecordOptions {
        trajectories: 4,
        steps_kept: 2,
        guidance: 2.0,
        batch: 2,
        seed: 9,
    };
    // labels are not enough for a text model
    assert!(matches!(
        CalibSet::record(&model, &sched(4), &opts, device),
        Err(CalibError::Option(_))
    ));
    let prompts = [1.0f32, 2.0, 3.0];
    let mut drawn = vec![];
    let set = CalibSet::record_with(&model, &sched(4), &opts, device, &mut |rng, b| {
        let picks: Vec<usize> = (0..b).map(|_| rng.below(prompts.len())).collect();
        drawn.extend(picks.iter().copied());
        let rows: Vec<Tensor<3>> = picks
            .iter()
            .map(|&p| states(1, prompts[p], device))
            .collect();
        Ok(Some(Conditioning::Text {
            states: Tensor::cat(rows, 0),
            uncond: Some(states(1, 0.5, device)),
        }))
    })
    .unwrap();
    // 4 trajectories × 2 CFG halves × 2 kept steps
    assert_eq!(set.len(), 16);
    let Some(CondRecord::Text { table, index }) = set.cond.clone() else {
        panic!("a text set records states")
    };
    let mut distinct: Vec<usize> = drawn.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        table.shape,
        vec![distinct.len() + 1, 3, 2],
        "prompts + uncond, once each"
    );
    // row values: every row is a constant fill of 0.5 (uncond) or a drawn prompt's value
    let row_value = |r: usize| table.data[r * 6];
    let uncond_entries = index.iter().filter(|&&r| row_value(r) == 0.5).count();
    assert_eq!(
        uncond_entries, 8,
        "the unconditional half of every recorded call"
    );
    // replay: the recorded conditioning gives the same output as the states it stands for
    let idx: Vec<usize> = (0..set.len()).collect();
    let (x, t, c) = set.batch(&idx, device).unwrap();
    let c = c.unwrap();
    let got = host(
        &model
            .forward(
                x.clone(),
                t,
                Some(c.clone()),
                &ForwardCtx::new(StepContext::single(0.0)),
            )
            .unwrap(),
    );
    let want: Vec<f32> = host(&x)
        .chunks(16)
        .zip(&index)
        .flat_map(|(xs, &r)| xs.iter().map(move |v| v * row_value(r)).collect::<Vec<_>>())
        .collect();
    assert_eq!(got, want);
    // file round trip, and a corrupt index is refused
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("text.calib.safetensors");
    set.save(&path).unwrap();
    assert_eq!(CalibSet::load(&path).unwrap(), set);
    let mut bad = set.clone();
    if let Some(CondRecord::Text { index, .. }) = &mut bad.cond {
        index[3] = 99;
    }
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("text row 99")
    );
    // CFG on text without an unconditional embedding is refused up front
    let x = NoiseRng::new(1).tensor([2, 1, 4, 4], device);
    let s = sched(2);
    let no_uncond = Conditioning::text(states(2, 1.0, device));
    assert!(Trajectory::new(&s, x.clone(), Some(no_uncond), None, 2.0, 0).is_err());
    // ... and with one, the denoiser sees [uncond; cond] and the guidance formula applies
    let cond = Conditioning::Text {
        states: states(2, 2.0, device),
        uncond: Some(states(1, 0.5, device)),
    };
    let traj = Trajectory::new(&s, x.clone(), Some(cond), None, 3.0, 0).unwrap();
    let inp = traj.inputs().unwrap();
    let fed = host(inp.cond.as_ref().unwrap().states().unwrap());
    assert!(fed[..12].iter().all(|&v| v == 0.5) && fed[12..].iter().all(|&v| v == 2.0));
    let raw = model
        .forward(inp.x, inp.t, inp.cond, &ForwardCtx::new(inp.step))
        .unwrap();
    let guided = host(&traj.guide(raw, 1));
    // ε_u + 3 (ε_c − ε_u) = x (0.5 + 3 · 1.5) = 5 x
    for (g, xv) in guided.iter().zip(host(&x)) {
        assert!(
            (g - 5.0 * xv).abs() <= 1e-5 * xv.abs().max(1.0),
            "{g} vs {}",
            5.0 * xv
        );
    }
}

/// Naive PTQ on a text-conditional UNet (`UNet2DConditionModel`, dmq-models' parity
/// fixture) calibrated on a text calibration set: every layer, cross-attention included, gets
/// a weight quantizer, and the error against FP on the recorded inputs grows as bits shrink
/// (W8A32 < W8A8 < W4A8 < W4A4).
fn text_conditional_unet_ptq(device: &Device) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dmq-models/tests/fixtures/unet_cond/conv");
    let fp = dmq_models::unet_cond::UNet2DConditionModel::load(&dir, device).unwrap();
    let d = fp.info().cross_attention_dim.unwrap();
    let prompts: Vec<Tensor<3>> = (0..3)
        .map(|k| NoiseRng::new(100 + k).tensor([1, 6, d], device))
        .collect();
    let opts = RecordOptions {
        trajectories: 4,
        steps_kept: 2,
        guidance: 2.0,
        batch: 2,
        seed: 3,
    };
    let calib = CalibSet::record_with(&fp, &sched(4), &opts, device, &mut |rng, b| {
        let rows: Vec<Tensor<3>> = (0..b).map(|_| prompts[rng.below(3)].clone()).collect();
        Ok(Some(Conditioning::Text {
            states: Tensor::cat(rows, 0),
            uncond: Some(Tensor::zeros([1, 6, d], device)),
        }))
    })
    .unwrap();
    assert!(matches!(calib.cond, Some(CondRecord::Text { .. })));
    let mut layers = 0;
    let mut cross = 0;
    fp.for_each_layer(&mut |l| {
        layers += usize::from(matches!(l.kind(), LayerKind::Linear | LayerKind::Conv2d));
        cross += usize::from(l.name().contains("attn2.to_k"));
    });
    assert!(cross > 0, "the fixture has cross-attention");
    let reference = eval_on(&fp, &calib, 2, device);
    let mut errs = vec![];
    for preset in ["W8A32", "W8A8", "W4A8", "W4A4"] {
        let mut m = fp.clone();
        let rep = ptq(
            &mut m,
            &QuantConfig::preset(preset).unwrap(),
            &calib,
            &PtqOptions {
                act_samples: 8,
                ..PtqOptions::default()
            },
            device,
        )
        .unwrap();
        assert_eq!(
            rep.weight_layers, layers,
            "every linear and conv, attn2 included"
        );
        errs.push(rel_err(&eval_on(&m, &calib, 2, device), &reference));
    }
    // random weights (σ 0.2 on 4–8 channel layers) give wide activation ranges: 8-bit
    // weights alone stay within 10%, per-tensor 8-bit activations add most of the W8A8 error
    assert!(errs[0] < 0.1, "W8A32 relative error {errs:?}");
    assert!(errs[1] < 0.25, "W8A8 relative error {errs:?}");
    assert!(errs.windows(2).all(|w| w[0] < w[1]), "{errs:?}");
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

per_backend!(
    presets_and_rules,
    text_calib_set_records_prompt_embeddings,
    reconstruction_units,
    calib_set_cfg_and_files,
    time_grouped_activation_sets,
    export_matches_fake_quant_and_counts_bytes,
    lp_loss_reduction
);
// End-to-end runs (minutes on lavapipe): CPU backends only; the backend-sensitive ops they
// use are covered on wgpu by the tests above.
per_cpu_backend!(
    text_conditional_unet_ptq,
    shortcut_split_specs_ptq_and_export,
    running_statistics_stay_inside_the_pooled_range,
    ptq_errors_grow_as_bits_shrink,
    adaround_reconstruction_lowers_block_error,
    activation_phase_runs_and_never_hurts
);
