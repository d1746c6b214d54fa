//! BinaryDM on tiny UNet and DiT models, on every compiled-in backend: the layer plan, the
//! student (binarizers, signed LSQ initialised once from the first batch), the EBB regulariser
//! gradient, the LRM projection against a closed form, training with the transition,
//! checkpoint/resume and the bitplane export round trip.

use burn::tensor::{Device, Tensor, TensorData};
use dmq_calib::export_layers;
use dmq_finetune::{
    BinaryDmConfig, FinetuneError, LrmAxis, LrmProjection, binarize, binary_plan, binarydm,
    ebb_loss, set_binary_trainable,
};
use dmq_models::layers::LayerRef;
use dmq_models::noise::NoiseRng;
use dmq_models::{Denoiser, ForwardCtx, HostTensor, InputCapture, Operand, StepContext};
use dmq_quant::{ActQuantizer, Quantizer, WeightQuantizer};

use crate::common;
use common::*;

/// Deterministic "images" in [−1, 1] for step `k` (a smooth pattern plus noise).
fn images(k: usize, b: usize, device: &Device) -> Tensor<4> {
    let mut rng = NoiseRng::new(100 + k as u64);
    let data: Vec<f32> = (0..b * 64)
        .map(|i| {
            let (y, x) = ((i % 64) / 8, i % 8);
            (((x + y) as f32 / 7.0 - 1.0) + 0.2 * (rng.uniform() as f32 - 0.5)).clamp(-1.0, 1.0)
        })
        .collect();
    Tensor::from_data(TensorData::new(data, [b, 1, 8, 8]), device)
}

/// The noise schedule of the test models (diffusers' DDPM defaults).
fn linear_schedule() -> dmq_models::scheduler::NoiseSchedule {
    dmq_models::scheduler::NoiseSchedule::new(
        dmq_models::scheduler::BetaSchedule::Linear,
        1000,
        1e-4,
        0.02,
    )
    .unwrap()
}

fn first_input(device: &Device) -> (Tensor<4>, Tensor<1>, Option<dmq_models::Conditioning>) {
    (
        images(0, 4, device),
        Tensor::from_floats([10.0f32, 300.0, 600.0, 900.0], device),
        None,
    )
}

fn binary_plan_and_student(device: &Device) {
    let fp = tiny_unet(device);
    let cfg = BinaryDmConfig::default();
    let plan = binary_plan(&fp, &cfg, device).unwrap();
    // tiny 8×8 UNet: every block runs at 8 or 4, i.e. at least half the input
    assert_eq!(plan.head_tail, plan.blocks, "{plan:?}");
    // the default 28×28 UNet: blocks at 28 and 14 are head/tail, those at 7 are not
    let big =
        dmq_models::unet::UNet2DModel::new(&dmq_models::defaults::unet_fmnist().unwrap(), device)
            .unwrap();
    let bp = binary_plan(&big, &cfg, device).unwrap();
    assert_eq!(
        bp.head_tail,
        [
            "down_blocks.0",
            "down_blocks.1",
            "up_blocks.1",
            "up_blocks.2"
        ],
        "{bp:?}"
    );
    assert!(!bp.ebb.is_empty() && !bp.vanilla.is_empty());
    assert!(bp.binarized_params < bp.layer_params);
    // a head/tail override picks the EBB layers
    let cfg = BinaryDmConfig {
        head_tail: Some(vec!["down_blocks.0".into()]),
        ..cfg
    };
    let plan = binary_plan(&fp, &cfg, device).unwrap();
    assert!(
        binary_plan(
            &fp,
            &BinaryDmConfig {
                head_tail: Some(vec!["nope".into()]),
                ..cfg.clone()
            },
            device
        )
        .is_err()
    );
    for e in [
        "conv_in",
        "conv_out",
        "time_embedding.linear_1",
        "time_embedding.linear_2",
    ] {
        assert!(
            plan.edges.iter().any(|n| n == e),
            "{e} must stay FP: {plan:?}"
        );
    }
    assert!(!plan.ebb.is_empty() && !plan.vanilla.is_empty());
    assert!(plan.ebb.iter().all(|n| {
        plan.head_tail
            .iter()
            .any(|b| n.starts_with(&format!("{b}.")))
    }));
    assert!(plan.blocks.contains(&"mid_block".to_string()));
    // without EBB every binarized layer is vanilla
    let base = binary_plan(
        &fp,
        &BinaryDmConfig {
            ebb: false,
            ..cfg.clone()
        },
        device,
    )
    .unwrap();
    assert!(base.ebb.is_empty() && base.vanilla.len() == plan.ebb.len() + plan.vanilla.len());

    let student = binarize(&fp, &plan, &cfg, first_input(device), device).unwrap();
    // the inputs the weight-binarized model sees, for the closed-form α check
    let wonly = binarize(
        &fp,
        &plan,
        &BinaryDmConfig {
            act_bits: None,
            ..cfg.clone()
        },
        first_input(device),
        device,
    )
    .unwrap();
    let cap = InputCapture::all();
    let (x, t, c) = first_input(device);
    wonly
        .forward(
            x,
            t,
            c,
            &ForwardCtx::new(StepContext::single(500.0)).with_inputs(&cap),
        )
        .unwrap();
    let inputs = cap.take();
    let mut checked = 0;
    student.for_each_layer(&mut |layer| {
        let name = layer.name().to_string();
        let (w, a) = match layer {
            LayerRef::Linear(l) => (&l.w_quant, &l.a_quant),
            LayerRef::Conv2d(l) => (&l.w_quant, &l.a_quant),
            LayerRef::Matmul(m) => {
                assert!(matches!(m.a_quant, Some(ActQuantizer::Lsq(_))), "{name}");
                return;
            }
        };
        if plan.edges.contains(&name) {
            assert!(w.is_none() && a.is_none(), "{name}: FP edge");
            return;
        }
        match w {
            Some(WeightQuantizer::MultiBasis(q)) => {
                assert!(plan.ebb.contains(&name) && q.num_bases() == 2)
            }
            Some(WeightQuantizer::Binary(_)) => assert!(plan.vanilla.contains(&name)),
            _ => panic!("{name}: expected a binarizer"),
        }
        let Some(ActQuantizer::Lsq(q)) = a else {
            panic!("{name}: expected LSQ")
        };
        // signed 4-bit: α = 2·mean|x|/√7 on the first batch, z = 0
        let p = q.affine_params(0).unwrap();
        let x = &inputs[&(name.clone(), Operand::Input)];
        let (s, n) = x
            .iter()
            .flat_map(|h| h.data.iter())
            .fold((0.0f64, 0usize), |(s, n), v| {
                (s + f64::from(v.abs()), n + 1)
            });
        let want = 2.0 * s / n as f64 / 7f64.sqrt();
        assert!(
            (f64::from(p.delta[0]) - want).abs() < 1e-4 * want.max(1e-3),
            "{name}: {} vs {want}",
            p.delta[0]
        );
        assert_eq!(p.zero[0], 0.0);
        checked += 1;
    });
    assert!(checked > 5);
}

fn ebb_regularizer_gradient(device: &Device) {
    let ad = device.clone().autodiff();
    let fp = tiny_unet(&ad);
    let cfg = BinaryDmConfig {
        act_bits: None,
        ..BinaryDmConfig::default()
    };
    let plan = binary_plan(&fp, &cfg, &ad).unwrap();
    let student = set_binary_trainable(binarize(&fp, &plan, &cfg, first_input(&ad), &ad).unwrap());
    let tau = 0.09;
    let reg = ebb_loss(&student, tau).unwrap();
    // closed form: τ · mean_layers(mean_c σ_II)
    let mut means = Vec::new();
    student.for_each_layer(&mut |layer| {
        if let LayerRef::Conv2d(l) = layer
            && let Some(WeightQuantizer::MultiBasis(q)) = &l.w_quant
        {
            let s = host(&q.sigma2.as_ref().unwrap().val());
            means.push(s.iter().sum::<f32>() / s.len() as f32);
        }
        if let LayerRef::Linear(l) = layer
            && let Some(WeightQuantizer::MultiBasis(q)) = &l.w_quant
        {
            let s = host(&q.sigma2.as_ref().unwrap().val());
            means.push(s.iter().sum::<f32>() / s.len() as f32);
        }
    });
    let n = means.len();
    let want = tau as f32 * means.iter().sum::<f32>() / n as f32;
    assert!(
        (host(&reg)[0] - want).abs() < 1e-6,
        "{} vs {want}",
        host(&reg)[0]
    );
    // ∂L/∂σ_II[c] = τ / (N · C_out) for every channel of every EBB layer
    let mut grads = reg.backward();
    let mut seen = 0;
    student.for_each_layer(&mut |layer| {
        let w = match layer {
            LayerRef::Linear(l) => &l.w_quant,
            LayerRef::Conv2d(l) => &l.w_quant,
            LayerRef::Matmul(_) => return,
        };
        if let Some(WeightQuantizer::MultiBasis(q)) = w {
            let s2 = q.sigma2.as_ref().unwrap().val();
            let c = s2.dims()[0];
            let g = host(&s2.grad_remove(&mut grads).expect("σ_II gradient"));
            let want = tau as f32 / (n * c) as f32;
            assert!(
                g.iter().all(|v| (v - want).abs() < 1e-7),
                "{}: {g:?} vs {want}",
                layer.name()
            );
            seen += 1;
        }
    });
    assert_eq!(seen, n);
}

fn lrm_projection_closed_form(device: &Device) {
    // channels 0, 1, 2 with uncorrelated ±3, ±0.1, ±1 patterns: E keeps e0 and e2 (K = 2)
    let (b, c, h, w) = (2, 3, 2, 2);
    let signs = [1.0f32, -1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 1.0];
    let other = [1.0f32, 1.0, -1.0, -1.0, 1.0, 1.0, -1.0, -1.0];
    let third = [1.0f32, -1.0, -1.0, 1.0, -1.0, 1.0, 1.0, -1.0];
    let mut data = vec![0.0f32; b * c * h * w];
    for bi in 0..b {
        for p in 0..h * w {
            let k = bi * h * w + p;
            data[(bi * c) * h * w + p] = 3.0 * signs[k];
            data[(bi * c + 1) * h * w + p] = 0.1 * other[k];
            data[(bi * c + 2) * h * w + p] = 1.0 * third[k];
        }
    }
    let f = HostTensor {
        data: data.clone(),
        shape: vec![b, c, h, w],
    };
    let p = LrmProjection::fit(&f, LrmAxis::Channels, 2).unwrap();
    assert_eq!((p.dim, p.rank), (3, 2));
    let col = |k: usize| [p.basis[k].abs(), p.basis[2 + k].abs(), p.basis[4 + k].abs()];
    for (got, want) in [(col(0), [1.0, 0.0, 0.0]), (col(1), [0.0, 0.0, 1.0])] {
        assert!(
            got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-6),
            "{got:?} vs {want:?}"
        );
    }
    // projecting the feature itself: its coordinates on e0 and e2
    let t = dmq_models::TapTensor::R4(Tensor::from_data(
        TensorData::new(data, [b, c, h, w]),
        device,
    ));
    let y = host(&p.project(&t, LrmAxis::Channels, device).unwrap());
    assert_eq!(y.len(), b * h * w * 2);
    assert!(
        (y[0].abs() - 3.0).abs() < 1e-5 && (y[1].abs() - 1.0).abs() < 1e-5,
        "{y:?}"
    );
    // the reference axis projects the width (2 entries → rank 1 with K = 2)
    let pw = LrmProjection::fit(&f, LrmAxis::LastAxis, 2).unwrap();
    assert_eq!((pw.dim, pw.rank), (w, 1));
    assert!(LrmProjection::fit(&f, LrmAxis::Channels, 0).is_err());
}

fn binarydm_trains_resumes_and_exports(device: &Device) {
    let ad = device.clone().autodiff();
    let fp = reseeded(tiny_unet(&ad), 21);
    let cfg = BinaryDmConfig {
        steps: 16,
        batch: 4,
        transition: Some(12),
        checkpoint_every: 4,
        lr: 2e-3,
        head_tail: Some(vec!["down_blocks.0".into()]),
        ..BinaryDmConfig::default()
    };
    let dir = std::env::temp_dir().join(format!(
        "dmq-binarydm-{}-{}",
        std::process::id(),
        format!("{device:?}").len()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let mut data =
        |k: usize| -> dmq_finetune::Result<dmq_finetune::Batch> { Ok((images(k, 4, &ad), None)) };
    let noise = linear_schedule();
    let mut eps = Vec::new();
    let (model, rep) = binarydm(&fp, &cfg, &noise, &mut data, Some(&dir), &ad, &mut |p| {
        eps.push(p.eps_loss)
    })
    .unwrap();
    assert_eq!(eps.len(), 16);
    assert!(eps.iter().all(|e| e.is_finite()));
    let (head, tail) = (
        eps[..4].iter().sum::<f64>() / 4.0,
        eps[12..].iter().sum::<f64>() / 4.0,
    );
    assert!(tail < head, "QAT must lower the ε loss: {head} -> {tail}");
    assert_eq!(rep.losses.len(), 1);
    // diagnostics at iteration 10, before the transition at 12: the second basis is there,
    // L_EBB = τ·mean σ_II (one EBB layer group here), and the loss pulls on σ_II
    assert_eq!(rep.diagnostics.len(), 1, "{:?}", rep.diagnostics);
    let d = &rep.diagnostics[0];
    assert_eq!(d.step, 10);
    let s2 = d.sigma2_mean.expect("σ_II before the transition");
    assert!(
        s2 > 0.0 && (d.ebb_term - cfg.tau * s2).abs() <= 1e-6 + 1e-3 * d.ebb_term,
        "{d:?}"
    );
    assert!(
        d.grad_ratio.is_some_and(|r| r.is_finite() && r > 0.0),
        "{d:?}"
    );
    assert!(
        d.lrm_term > 0.0 && d.lrm_term.is_finite() && d.eps_loss > 0.0,
        "{d:?}"
    );
    // past the transition every EBB layer has one basis left
    model.for_each_layer(&mut |layer| {
        if let LayerRef::Conv2d(l) = layer
            && let Some(WeightQuantizer::MultiBasis(q)) = &l.w_quant
        {
            assert_eq!(q.num_bases(), 1, "{}", layer.name());
        }
    });
    // resume from the finished checkpoint: nothing recomputed, the same EMA model
    let (again, rep2) = binarydm(&fp, &cfg, &noise, &mut data, Some(&dir), &ad, &mut |_| {
        panic!("nothing left")
    })
    .unwrap();
    assert_eq!(rep2.resumed_steps, 16);
    assert_eq!(
        rep2.diagnostics, rep.diagnostics,
        "diagnostics survive the resume"
    );
    let x = NoiseRng::new(3).tensor([2, 1, 8, 8], &ad);
    let s = sched(4, 0.0);
    assert!(
        max_abs(
            &eval_step(&again, &x, &s, 1, None, &ad),
            &eval_step(&model, &x, &s, 1, None, &ad)
        ) < 1e-6
    );
    // another config is refused
    let other = BinaryDmConfig {
        steps: 20,
        ..cfg.clone()
    };
    assert!(matches!(
        binarydm(&fp, &other, &noise, &mut data, Some(&dir), &ad, &mut |_| {}),
        Err(FinetuneError::Checkpoint { .. })
    ));
    // bitplane export: 1-bit codes + σ per output channel, loaded back exactly
    let file = export_layers(&model, 1).unwrap();
    let q = file
        .quantized
        .get(&format!("{}.weight", rep.plan.vanilla[0]))
        .unwrap();
    assert_eq!(q.bits(), 1);
    // QAT trains the norms and embeddings too: the export loads onto the trained model with
    // its quantizers removed (what `dmq_models` exports as the FP-layout checkpoint)
    let mut loaded = model.clone();
    dmq_calib::clear_quantizers(&mut loaded);
    dmq_infer::load_export(&mut loaded, &file, &ad).unwrap();
    for k in 0..4 {
        let d = max_abs(
            &eval_step(&loaded, &x, &s, k, None, &ad),
            &eval_step(&model, &x, &s, k, None, &ad),
        );
        assert!(d < 1e-4, "bitplane export round trip at step {k}: {d}");
    }
    // 1 bit per weight plus σ and z per channel: over 10× below f32 in the binarized layers
    let bytes: usize = rep
        .plan
        .vanilla
        .iter()
        .chain(&rep.plan.ebb)
        .map(|n| file.quantized[&format!("{n}.weight")].storage_bytes())
        .sum();
    assert!(
        bytes * 10 < rep.plan.binarized_params * 4,
        "{bytes} bytes for {} weights",
        rep.plan.binarized_params
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn binarydm_dit_plan_and_step(device: &Device) {
    let ad = device.clone().autodiff();
    let fp = tiny_dit(&ad);
    let cfg = BinaryDmConfig {
        steps: 2,
        batch: 2,
        transition: None,
        ..BinaryDmConfig::default()
    };
    let plan = binary_plan(&fp, &cfg, &ad).unwrap();
    assert_eq!(plan.head_tail, vec!["transformer_blocks.0".to_string()]);
    assert!(plan.edges.iter().any(|n| n.contains("timestep_embedder")));
    let mut data = |k: usize| -> dmq_finetune::Result<dmq_finetune::Batch> {
        Ok((
            images(k, 2, &ad),
            Some(Tensor::from_ints([1, 3], &ad).into()),
        ))
    };
    let noise = linear_schedule();
    let (_, rep) = binarydm(&fp, &cfg, &noise, &mut data, None, &ad, &mut |_| {}).unwrap();
    assert_eq!(rep.resumed_steps, 0);
}

per_backend!(
    binary_plan_and_student,
    ebb_regularizer_gradient,
    lrm_projection_closed_form,
    binarydm_dit_plan_and_step
);
per_cpu_backend!(binarydm_trains_resumes_and_exports);
