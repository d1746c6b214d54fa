//! The pipeline end to end on tiny models: loading by `_class_name` with the model's own
//! schedule, every method through `quantize`, and the self-contained file's round trip and
//! refusals.

use std::path::Path;

use burn::tensor::{Device, Tensor};
use dmq_calib::{CalibSet, QuantConfig, RecordOptions};
use dmq_models::scheduler::{DdimScheduler, PredictionType, Scheduler};
use dmq_models::{Denoiser, ForwardCtx, HostTensor, StepContext};
use dmq_pipeline::dmq_file::{self, Provenance, keys};
use dmq_pipeline::scheduler::SamplerKind;
use dmq_pipeline::search::{SearchOptions, SearchedConfig};
use dmq_pipeline::{
    AnyDenoiser, ImageSet, Method, MethodReport, PipelineError, RunOptions, SchedulerSpec, quantize,
};

const STEPS: usize = 4;

fn tiny(kind: &str, device: &Device) -> AnyDenoiser {
    match kind {
        "unet" => AnyDenoiser::UNet(
            dmq_models::unet::UNet2DModel::new(&dmq_models::defaults::tiny_unet().unwrap(), device)
                .unwrap(),
        ),
        _ => AnyDenoiser::DiT(
            dmq_models::dit::DiT::new(&dmq_models::defaults::tiny_dit().unwrap(), device).unwrap(),
        ),
    }
}

fn write_dir(model: &AnyDenoiser, dir: &Path, scheduler: &str) {
    model.save_pretrained(dir).unwrap();
    std::fs::write(dir.join("scheduler_config.json"), scheduler).unwrap();
}

fn calib(fp: &AnyDenoiser, sched: &DdimScheduler, device: &Device) -> CalibSet {
    let opts = RecordOptions {
        trajectories: 4,
        steps_kept: 2,
        guidance: 1.0,
        batch: 4,
        seed: 3,
    };
    CalibSet::record(
        &burn::module::Module::no_grad(fp.clone()),
        sched,
        &opts,
        device,
    )
    .unwrap()
}

/// Outputs of two models on the same inputs at every step: the largest |a − b|.
fn max_diff(a: &dyn Denoiser, b: &dyn Denoiser, sched: &DdimScheduler, device: &Device) -> f32 {
    let info = a.info();
    let x = dmq_models::noise::NoiseRng::new(9).tensor(
        [2, info.in_channels, info.sample_size, info.sample_size],
        device,
    );
    let class = info
        .num_classes
        .map(|_| dmq_models::sampler::labels(&[0, 1], device).into());
    let mut worst = 0f32;
    for k in 0..sched.num_steps() {
        let t = sched.timestep(k).unwrap() as f32;
        let ctx = ForwardCtx::new(StepContext {
            step: k,
            timestep: t as f64,
            num_steps: sched.num_steps(),
        });
        let tt = Tensor::<1>::from_floats([t, t], device);
        let ya = HostTensor::from_tensor(
            &a.forward(x.clone(), tt.clone(), class.clone(), &ctx)
                .unwrap(),
        );
        let yb = HostTensor::from_tensor(&b.forward(x.clone(), tt, class.clone(), &ctx).unwrap());
        for (p, q) in ya.data.iter().zip(&yb.data) {
            assert!(p.is_finite() && q.is_finite());
            worst = worst.max((p - q).abs());
        }
    }
    worst
}

fn load_dispatches_and_reads_the_schedule(device: &Device) {
    let tmp = tempfile::tempdir().unwrap();
    for kind in ["unet", "dit"] {
        let dir = tmp.path().join(kind);
        let m = tiny(kind, device);
        write_dir(
            &m,
            &dir,
            r#"{"_class_name":"DDIMScheduler","num_train_timesteps":500,"beta_schedule":"scaled_linear",
               "beta_start":0.00085,"beta_end":0.012,"clip_sample":false,"steps_offset":1,
               "timestep_spacing":"trailing","prediction_type":"epsilon","variance_type":"fixed_small"}"#,
        );
        let loaded = AnyDenoiser::from_pretrained(&dir, device).unwrap();
        assert_eq!(loaded.class_name(), m.class_name());
        let sched = SchedulerSpec::from_dir(&dir).unwrap();
        assert_eq!(sched.ddim.num_train_timesteps, 500);
        assert!(!sched.ddim.clip_sample);
        assert_eq!(sched.ddim.steps_offset, 1);
        // trailing spacing over 500 steps, 5 inference steps: 499, 399, ..., 99
        let s = sched.ddim(5).unwrap();
        assert_eq!(
            s.timesteps(),
            &[99, 199, 299, 399, 499][..]
                .iter()
                .rev()
                .copied()
                .collect::<Vec<_>>()[..]
        );
        assert!(max_diff(&m, &loaded, &sched.ddim(2).unwrap(), device) == 0.0);
    }
    // Stable Diffusion 1.x's PNDM config and a DPM-Solver++ one read into every sampler
    let dir = tmp.path().join("unet");
    let sd =
        r#""beta_schedule":"scaled_linear","beta_start":0.00085,"beta_end":0.012,"steps_offset":1"#;
    std::fs::write(
        dir.join("scheduler_config.json"),
        format!(r#"{{"_class_name":"PNDMScheduler",{sd},"skip_prk_steps":true,"set_alpha_to_one":false,"prediction_type":"v_prediction"}}"#),
    )
    .unwrap();
    let spec = SchedulerSpec::from_dir(&dir).unwrap();
    assert_eq!(spec.native, SamplerKind::Pndm);
    assert_eq!(spec.prediction_type(), PredictionType::VPrediction);
    let plms = spec.sampler(SamplerKind::Pndm, 10).unwrap();
    assert_eq!(plms.timesteps()[..3], [901, 801, 801]);
    assert_eq!(plms.prediction_type(), PredictionType::VPrediction);
    assert_eq!(
        spec.sampler(SamplerKind::Ddim, 10).unwrap().timesteps()[0],
        901
    );
    std::fs::write(
        dir.join("scheduler_config.json"),
        format!(r#"{{"_class_name":"DPMSolverMultistepScheduler",{sd},"use_karras_sigmas":true,"solver_order":2}}"#),
    )
    .unwrap();
    let spec = SchedulerSpec::from_dir(&dir).unwrap();
    assert_eq!(spec.native, SamplerKind::DpmSolver);
    assert!(spec.dpm.use_karras_sigmas);
    let dpm = spec.sampler(SamplerKind::DpmSolver, 12).unwrap();
    assert_eq!(dpm.timesteps()[..3], [999, 933, 854]);
    // the same denoiser samples the same images through AnySampler and DDIM itself
    let m = tiny("unet", device);
    let ddim = spec.ddim(3).unwrap();
    let any = spec.sampler(SamplerKind::Ddim, 3).unwrap();
    let info = m.info();
    let (c, sz) = (info.in_channels, info.sample_size);
    let x = dmq_models::noise::NoiseRng::new(3).tensor([2, c, sz, sz], device);
    let a =
        dmq_models::sampler::sample(&m, &ddim, x.clone(), None, 1.0, 0, &mut |_, _| {}).unwrap();
    let b = dmq_models::sampler::sample(&m, &any, x, None, 1.0, 0, &mut |_, _| {}).unwrap();
    assert_eq!(a.into_data(), b.into_data());
    // refusals name the file and the field
    for (json, field) in [
        (r#"{"prediction_type":"flow"}"#, "prediction_type"),
        (r#"{"_class_name":"EulerDiscreteScheduler"}"#, "_class_name"),
        (r#"{"_class_name":"PNDMScheduler"}"#, "skip_prk_steps"),
        (
            r#"{"_class_name":"DPMSolverMultistepScheduler","solver_order":3}"#,
            "solver_order",
        ),
        (
            r#"{"_class_name":"DPMSolverMultistepScheduler","algorithm_type":"sde-dpmsolver++"}"#,
            "algorithm_type",
        ),
        (
            r#"{"_class_name":"DPMSolverMultistepScheduler","thresholding":true}"#,
            "thresholding",
        ),
    ] {
        std::fs::write(dir.join("scheduler_config.json"), json).unwrap();
        let e = SchedulerSpec::from_dir(&dir).unwrap_err().to_string();
        assert!(
            e.contains("scheduler_config.json") && e.contains(field),
            "{json}: {e}"
        );
    }
    std::fs::write(
        dir.join("scheduler_config.json"),
        r#"{"beta_schedule":"sigmoid"}"#,
    )
    .unwrap();
    let e = SchedulerSpec::from_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("beta_schedule") && e.contains("sigmoid"), "{e}");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    cfg["_class_name"] = "UNet3DConditionModel".into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let e = AnyDenoiser::from_pretrained(&dir, device).unwrap_err();
    assert!(
        matches!(e, PipelineError::UnsupportedModel { ref class, .. } if class == "UNet3DConditionModel"),
        "{e}"
    );
    // no scheduler file: diffusers' DDPMScheduler defaults (clip_sample on)
    let none = tmp.path().join("none");
    std::fs::create_dir_all(&none).unwrap();
    assert!(SchedulerSpec::from_dir(&none).unwrap().ddim.clip_sample);
}

/// Every method through the one entry point (iterations cut to a few), written to a file and
/// read back: the loaded model computes what the quantized one computed.
fn every_method_round_trips_through_the_file(device: &Device) {
    methods_round_trip(device, &dmq_pipeline::METHOD_NAMES);
}

/// The same for naive PTQ (the others train: minutes on lavapipe; they run on flex).
fn naive_round_trips_through_the_file(device: &Device) {
    methods_round_trip(device, &["naive"]);
}

/// `name` with its iteration counts cut to a few (tests).
fn quick(name: &str) -> Method {
    let mut method = Method::from_name(name).unwrap().scaled(0.005);
    match &mut method {
        Method::Efficientdm {
            train_steps,
            config,
        } => {
            *train_steps = 2;
            config.epochs = 1;
            config.student.rank = 2;
        }
        Method::Quest { config, .. } => (config.stage_a_chunks, config.stage_b_chunks) = (1, 1),
        Method::Binarydm(c) => c.batch = 4,
        _ => {}
    }
    method
}

fn methods_round_trip(device: &Device, methods: &[&str]) {
    let ad = device.clone().autodiff();
    let tmp = tempfile::tempdir().unwrap();
    let fp = tiny("unet", &ad);
    let sched = SchedulerSpec::default();
    let sampler = sched.ddim(STEPS).unwrap();
    let calib = calib(&fp, &sampler, &ad);
    let timesteps: Vec<f64> = sampler.timesteps().iter().map(|&t| t as f64).collect();
    let info = fp.info();
    let n = info.sample_size;
    // BinaryDM's training images: 16 random 8-bit images of the model's size
    let mut rng = dmq_models::noise::NoiseRng::new(5);
    let pixels: Vec<u8> = (0..16 * info.in_channels * n * n)
        .map(|_| rng.below(256) as u8)
        .collect();
    let images = ImageSet::new([16, info.in_channels, n, n], pixels, None).unwrap();
    for &name in methods {
        // BinaryDM binarizes the weights: a W1Ax preset
        let config = QuantConfig::preset(if name == "binarydm" { "W1A4" } else { "W8A8" }).unwrap();
        let method = quick(name);
        let opts = RunOptions::new(sampler.clone())
            .with_work_dir(tmp.path().join(name))
            .with_images(images.clone());
        let mut events = 0;
        let q = quantize(&fp, &config, &calib, &method, &opts, &ad, &mut |_| {
            events += 1
        })
        .unwrap();
        assert!(events > 0, "{name}: no progress reported");
        let path = tmp.path().join(format!("{name}.dmq.safetensors"));
        let prov = Provenance::new(&method, &config);
        dmq_file::save(&path, &q.model, &sched, &timesteps, &prov).unwrap();
        let back = dmq_file::load(&path, device).unwrap();
        assert_eq!(back.info.method, name);
        assert_eq!(back.info.timesteps, timesteps);
        assert!(!back.info.quantized_layers.is_empty());
        let d = max_diff(&q.model, &back.model, &sampler, &ad);
        assert!(
            d <= 1e-4,
            "{name}: loaded file differs from the quantized model by {d}"
        );
        // and it is quantized: it differs from FP
        assert!(max_diff(&fp, &back.model, &sampler, &ad) > 1e-6, "{name}");
    }
}

/// A text-conditional UNet (`UNet2DConditionModel`, dmq-models' parity fixture) through the
/// one entry point on a text calibration set, for the methods that calibrate on recorded
/// inputs (naive PTQ, Q-Diffusion, QuEST), written to a file and read back: the loaded model
/// computes what the quantized one computed, on the recorded text conditioning, and differs
/// from FP.
fn text_unet_round_trips_through_the_file(device: &Device) {
    let ad = device.clone().autodiff();
    let tmp = tempfile::tempdir().unwrap();
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../dmq-models/tests/fixtures/unet_cond/conv");
    let fp = AnyDenoiser::from_pretrained(&dir, &ad).unwrap();
    assert_eq!(fp.class_name(), "UNet2DConditionModel");
    let d = fp.info().cross_attention_dim.unwrap();
    let sched = SchedulerSpec::default();
    let sampler = sched.ddim(STEPS).unwrap();
    let timesteps: Vec<f64> = sampler.timesteps().iter().map(|&t| t as f64).collect();
    // text models are not calibrated on labels
    assert!(CalibSet::record(&fp, &sampler, &RecordOptions::default(), &ad).is_err());
    let prompts: Vec<Tensor<3>> = (0..2)
        .map(|k| dmq_models::noise::NoiseRng::new(40 + k).tensor([1, 5, d], &ad))
        .collect();
    let opts = RecordOptions {
        trajectories: 4,
        steps_kept: STEPS,
        guidance: 2.0,
        batch: 2,
        seed: 1,
    };
    let calib = CalibSet::record_with(&fp, &sampler, &opts, &ad, &mut |rng, b| {
        let rows: Vec<Tensor<3>> = (0..b).map(|_| prompts[rng.below(2)].clone()).collect();
        Ok(Some(dmq_models::Conditioning::Text {
            states: Tensor::cat(rows, 0),
            uncond: Some(Tensor::zeros([1, 5, d], &ad)),
        }))
    })
    .unwrap();
    let idx: Vec<usize> = calib.indices_at_step(0);
    let out = |m: &AnyDenoiser, dev: &Device| {
        let (x, t, c) = calib.batch(&idx, dev).unwrap();
        HostTensor::from_tensor(
            &m.forward(x, t, c, &ForwardCtx::new(calib.step_context(0)))
                .unwrap(),
        )
        .data
    };
    let diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max)
    };
    let reference = out(&fp, &ad);
    for name in ["naive", "qdiffusion", "quest"] {
        let config = QuantConfig::preset("W8A8").unwrap();
        let method = quick(name);
        let run = RunOptions::new(sampler.clone()).with_work_dir(tmp.path().join(name));
        let q = quantize(&fp, &config, &calib, &method, &run, &ad, &mut |_| {}).unwrap();
        let path = tmp.path().join(format!("{name}.dmq.safetensors"));
        dmq_file::save(
            &path,
            &q.model,
            &sched,
            &timesteps,
            &Provenance::new(&method, &config),
        )
        .unwrap();
        let back = dmq_file::load(&path, device).unwrap();
        assert_eq!(back.model.class_name(), "UNet2DConditionModel");
        let (yq, yb) = (out(&q.model, &ad), out(&back.model, device));
        assert!(
            diff(&yq, &yb) <= 1e-4,
            "{name}: file differs by {}",
            diff(&yq, &yb)
        );
        assert!(diff(&yq, &reference) > 1e-6, "{name}: not quantized");
    }
}

fn file_refuses_what_does_not_fit(device: &Device) {
    let tmp = tempfile::tempdir().unwrap();
    let fp = tiny("unet", device);
    let sched = SchedulerSpec::default();
    let sampler = sched.ddim(STEPS).unwrap();
    let calib = calib(&fp, &sampler, device);
    let ts: Vec<f64> = sampler.timesteps().iter().map(|&t| t as f64).collect();
    let mut q = fp.clone();
    dmq_calib::ptq(
        &mut q,
        &QuantConfig::preset("W4A8").unwrap(),
        &calib,
        &Default::default(),
        device,
    )
    .unwrap();
    let good = dmq_file::to_file(&q, &sched, &ts, &Provenance::default()).unwrap();
    let save = |f: &dmq_quant::QuantizedFile, name: &str| {
        let p = tmp.path().join(name);
        f.save(&p).unwrap();
        p
    };
    let p = save(&good, "good.dmq.safetensors");
    dmq_file::load(&p, device).unwrap();
    let expect = |f: dmq_quant::QuantizedFile, name: &str, field: &str| {
        let p = save(&f, name);
        let e = dmq_file::load(&p, device).unwrap_err().to_string();
        assert!(e.contains(name) && e.contains(field), "{name}: {e}");
    };
    let mut f = good.clone();
    f.metadata
        .insert(keys::FORMAT.into(), "dmq.model.v0".into());
    expect(f, "version.dmq.safetensors", keys::FORMAT);
    let mut f = good.clone();
    f.float.insert(
        "down_blocks.9.resnets.0.conv1.a.delta.0".into(),
        (vec![1], vec![1.0]),
    );
    expect(
        f,
        "stray.dmq.safetensors",
        "down_blocks.9.resnets.0.conv1.a.delta.0",
    );
    let mut f = good.clone();
    let (k, _) = f.quantized.pop_first().unwrap();
    expect(f, "missing.dmq.safetensors", &k);
    // a UNet's layers under a DiT config: nothing matches, refused rather than run in FP
    let mut f = good.clone();
    let dit = tiny("dit", device);
    f.metadata
        .insert(keys::CLASS.into(), dit.class_name().into());
    f.metadata
        .insert(keys::CONFIG.into(), dit.config_json().unwrap().to_string());
    expect(f, "foreign.dmq.safetensors", "missing");
    let mut f = good.clone();
    f.metadata.remove(keys::TIMESTEPS);
    expect(f, "nots.dmq.safetensors", keys::TIMESTEPS);
    // truncated bytes: a typed error, not a panic
    let bytes = std::fs::read(&p).unwrap();
    let cut = tmp.path().join("cut.dmq.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert!(dmq_file::load(&cut, device).is_err());
}

/// A per-group weight preset through every method that takes a bit-width config (naive,
/// Q-Diffusion and QuEST with AdaRound, SmoothQuant, EfficientDM with QALoRA): each quantizes
/// with grouped weights in its linear layers, and the result round-trips through the file
/// with the grouped specs.
fn grouped_preset_through_the_methods(device: &Device) {
    let ad = device.clone().autodiff();
    let tmp = tempfile::tempdir().unwrap();
    let fp = tiny("unet", &ad);
    let sched = SchedulerSpec::default();
    let sampler = sched.ddim(STEPS).unwrap();
    let calib = calib(&fp, &sampler, &ad);
    let config = QuantConfig::preset("W4A8-g8").unwrap();
    let timesteps: Vec<f64> = sampler.timesteps().iter().map(|&t| t as f64).collect();
    for name in [
        "naive",
        "qdiffusion",
        "smoothquant",
        "svdquant",
        "efficientdm",
        "quest",
    ] {
        let method = quick(name);
        let opts = RunOptions::new(sampler.clone()).with_work_dir(tmp.path().join(name));
        match quantize(&fp, &config, &calib, &method, &opts, &ad, &mut |_| {}) {
            Ok(q) => {
                let path = tmp.path().join(format!("{name}-g8.dmq.safetensors"));
                dmq_file::save(
                    &path,
                    &q.model,
                    &sched,
                    &timesteps,
                    &Provenance::new(&method, &config),
                )
                .unwrap();
                let back = dmq_file::load(&path, device).unwrap();
                let grouped = dmq_file::layer_table(&back.file)
                    .iter()
                    .filter(|r| r.granularity.starts_with("PerGroup"))
                    .count();
                eprintln!("{name}: {grouped} grouped layers");
                assert!(grouped > 0, "{name}: no grouped layer in the file");
                assert!(
                    max_diff(&q.model, &back.model, &sampler, &ad) <= 1e-4,
                    "{name}"
                );
            }
            Err(e) => panic!("{name} with a grouped preset: {e}"),
        }
    }
}

/// EfficientDM on the baselines' layer set (`LayerPolicy::quantize_everything`) costs
/// exactly what naive PTQ costs at the same preset (BitOPs), where its reference policy
/// (matmuls and shortcuts FP, edges 8-bit) costs more; the result round-trips through the file.
fn efficientdm_at_equal_cost(device: &Device) {
    let ad = device.clone().autodiff();
    let tmp = tempfile::tempdir().unwrap();
    let fp = tiny("unet", &ad);
    let sched = SchedulerSpec::default();
    let sampler = sched.ddim(STEPS).unwrap();
    let calib = calib(&fp, &sampler, &ad);
    let config = QuantConfig::preset("W4A8").unwrap();
    let run = |method: &Method| {
        quantize(
            &fp,
            &config,
            &calib,
            method,
            &RunOptions::new(sampler.clone()),
            &ad,
            &mut |_| {},
        )
        .unwrap()
        .model
    };
    let cost = |m: &AnyDenoiser| {
        dmq_pipeline::eval::cost(m, STEPS, false, &ad)
            .unwrap()
            .bitops
    };
    let naive = cost(&run(&Method::from_name("naive").unwrap()));
    let reference = cost(&run(&quick("efficientdm")));
    let mut everything = quick("efficientdm");
    if let Method::Efficientdm { config, .. } = &mut everything {
        config.student.policy = dmq_finetune::LayerPolicy::quantize_everything();
    }
    let q = run(&everything);
    assert_eq!(cost(&q), naive, "equal BitOPs at the same preset");
    assert!(
        reference > naive,
        "the reference policy costs more: {reference} vs {naive}"
    );
    let path = tmp.path().join("edm-all.dmq.safetensors");
    let ts: Vec<f64> = sampler.timesteps().iter().map(|&t| t as f64).collect();
    dmq_file::save(
        &path,
        &q,
        &sched,
        &ts,
        &Provenance::new(&everything, &config),
    )
    .unwrap();
    let back = dmq_file::load(&path, device).unwrap();
    assert!(max_diff(&q, &back.model, &sampler, &ad) <= 1e-4);
}

/// A SmoothQuant model through the layer export onto a fresh FP model and the integer path:
/// the divisors travel with the folded weights, and the integers compute what the
/// fake-quant model computes.
fn smoothquant_runs_in_integers(device: &Device) {
    let fp = tiny("dit", device);
    let sampler = SchedulerSpec::default().ddim(STEPS).unwrap();
    let calib = calib(&fp, &sampler, device);
    let q = quantize(
        &fp,
        &QuantConfig::preset("W8A8").unwrap(),
        &calib,
        &Method::from_name("smoothquant").unwrap(),
        &RunOptions::new(sampler.clone()),
        device,
        &mut |_| {},
    )
    .unwrap();
    let mut smoothed = 0;
    q.model.for_each_layer(&mut |l| {
        let s = match l {
            dmq_models::layers::LayerRef::Linear(x) => x.smooth.is_some(),
            dmq_models::layers::LayerRef::Conv2d(x) => x.smooth.is_some(),
            dmq_models::layers::LayerRef::Matmul(_) => false,
        };
        smoothed += usize::from(s);
    });
    let MethodReport::Smoothquant(rep) = &q.report else {
        panic!("another report")
    };
    assert_eq!(
        smoothed,
        rep.layers.iter().filter(|l| l.alpha.is_some()).count(),
        "every chosen α is a divisor in the model"
    );
    let file = dmq_calib::export_layers(&q.model, STEPS).unwrap();
    let int = dmq_infer::IntegerModel::from_export(fp.clone(), &file, device).unwrap();
    // the fake-quant model rebuilt from the export on the FP model, and its integer run
    assert!(max_diff(&q.model, int.fake_quant(), &sampler, device) <= 1e-4);
    let scale = max_diff(&q.model, &fp, &sampler, device).max(1e-6);
    let d = max_diff(&q.model, &int, &sampler, device);
    assert!(
        d <= 0.25 * scale,
        "integer vs fake-quant {d} against the quantization error {scale}"
    );
}

/// SVDQuant W4A4 on both tiny models: every targeted layer gets a branch and per-token
/// dynamic activations; without its quantizers the split model is the FP model (the branch
/// plus the residual is the smoothed weight); it is closer to FP than naive W4A4; the
/// `.dmq.safetensors` file carries the f16 branch exactly; and the integer path (branch
/// beside the 4-bit GEMM) computes what the fake-quant model computes.
fn svdquant_w4a4_beats_naive_and_runs_in_integers(device: &Device) {
    let tmp = tempfile::tempdir().unwrap();
    for kind in ["unet", "dit"] {
        device.seed(5);
        let fp = tiny(kind, device);
        let sched = SchedulerSpec::default();
        let sampler = sched.ddim(STEPS).unwrap();
        let calib = calib(&fp, &sampler, device);
        let config = QuantConfig::preset("W4A4").unwrap();
        let run = |name: &str| {
            quantize(
                &fp,
                &config,
                &calib,
                &Method::from_name(name).unwrap(),
                &RunOptions::new(sampler.clone()),
                device,
                &mut |_| {},
            )
            .unwrap()
        };
        let q = run("svdquant");
        let naive = run("naive");
        let MethodReport::Svdquant(rep) = &q.report else {
            panic!("another report")
        };
        let (mut branches, mut dynamic) = (0, 0);
        q.model.for_each_layer(&mut |l| {
            let (b, d) = match l {
                dmq_models::layers::LayerRef::Linear(x) => (
                    x.low_rank.is_some(),
                    matches!(x.a_quant, Some(dmq_quant::ActQuantizer::Dynamic(_))),
                ),
                dmq_models::layers::LayerRef::Conv2d(x) => (
                    x.low_rank.is_some(),
                    matches!(x.a_quant, Some(dmq_quant::ActQuantizer::Dynamic(_))),
                ),
                dmq_models::layers::LayerRef::Matmul(_) => (false, false),
            };
            branches += usize::from(b);
            dynamic += usize::from(d);
        });
        let with_rank = rep.layers.iter().filter(|l| l.rank > 0).count();
        assert!(
            with_rank > 0 && branches == with_rank,
            "{kind}: {branches} vs {with_rank}"
        );
        assert_eq!(dynamic, rep.layers.len(), "{kind}");
        assert!(rep.branch_params > 0);
        // FP equivalence of smoothing + split
        let mut split = q.model.clone();
        dmq_calib::clear_quantizers(&mut split);
        // (outputs are O(1) noise predictions; f32 rounding of W·s, L1·L2 and R is ~1e-6)
        let e_split = max_diff(&split, &fp, &sampler, device);
        assert!(
            e_split <= 1e-4,
            "{kind}: split model differs from FP by {e_split}"
        );
        // closer to FP than naive W4A4
        let e_svd = max_diff(&q.model, &fp, &sampler, device);
        let e_naive = max_diff(&naive.model, &fp, &sampler, device);
        eprintln!("{kind}: SVDQuant W4A4 max error {e_svd}, naive {e_naive}");
        assert!(
            e_svd < e_naive,
            "{kind}: SVDQuant {e_svd} vs naive {e_naive}"
        );
        // through the file
        let path = tmp.path().join(format!("{kind}-svd.dmq.safetensors"));
        let timesteps: Vec<f64> = sampler.timesteps().iter().map(|&t| t as f64).collect();
        let method = Method::from_name("svdquant").unwrap();
        dmq_file::save(
            &path,
            &q.model,
            &sched,
            &timesteps,
            &Provenance::new(&method, &config),
        )
        .unwrap();
        let back = dmq_file::load(&path, device).unwrap();
        assert!(
            !back.file.half.is_empty(),
            "{kind}: no f16 branch in the file"
        );
        assert!(
            max_diff(&q.model, &back.model, &sampler, device) <= 1e-4,
            "{kind}"
        );
        // integer path
        let file = dmq_calib::export_layers(&q.model, STEPS).unwrap();
        let int = dmq_infer::IntegerModel::from_export(fp.clone(), &file, device).unwrap();
        let lr_layers = int
            .executor()
            .plan()
            .iter()
            .filter(|(_, p)| matches!(p, dmq_infer::LayerPath::Integer(f) if f.contains("+LR")))
            .count();
        assert_eq!(lr_layers, with_rank, "{kind}: {:?}", int.executor().plan());
        assert!(max_diff(&q.model, int.fake_quant(), &sampler, device) <= 1e-4);
        let d = max_diff(&q.model, &int, &sampler, device);
        assert!(
            d <= 0.05 * e_svd.max(1e-3),
            "{kind}: integer vs fake-quant {d} against the quantization error {e_svd}"
        );
    }
}

/// BinaryDM refuses a config that does not binarize, and a run without images.
fn binarydm_checks_its_inputs(device: &Device) {
    let ad = device.clone().autodiff();
    let fp = tiny("unet", &ad);
    let sampler = SchedulerSpec::default().ddim(STEPS).unwrap();
    let calib = calib(&fp, &sampler, &ad);
    let m = Method::from_name("binarydm").unwrap();
    let opts = RunOptions::new(sampler);
    let run = |preset: &str, opts: &RunOptions| {
        quantize(
            &fp,
            &QuantConfig::preset(preset).unwrap(),
            &calib,
            &m,
            opts,
            &ad,
            &mut |_| {},
        )
        .unwrap_err()
        .to_string()
    };
    let e = run("W4A4", &opts);
    assert!(e.contains("W1Ax") && e.contains("4 bits"), "{e}");
    let e = run("W1A4", &opts);
    assert!(e.contains("images"), "{e}");
    // images of another size than the model's
    let wrong = ImageSet::new([2, 1, 4, 4], vec![0; 32], None).unwrap();
    let e = run("W1A4", &opts.clone().with_images(wrong));
    assert!(e.contains("1×4×4") && e.contains("1×8×8"), "{e}");
}

/// TMPQ through the library: the search meets its budget, its config round-trips through
/// JSON, `quantize` applies it (per-layer bits as searched, attention-matmul operands
/// included) and the file samples over the searched timesteps.
fn tmpq_search_applies_through_quantize(device: &Device) {
    let tmp = tempfile::tempdir().unwrap();
    let fp = tiny("unet", device);
    let sched = SchedulerSpec::default();
    let search_calib = calib(&fp, &sched.ddim(STEPS).unwrap(), device);
    let opts = SearchOptions {
        steps: 3,
        bit_options: vec![8, 6, 4],
        budget_bits: 6,
        evolution: dmq_search::EvolutionConfig {
            population: 4,
            top_k: 2,
            mutations: 2,
            crossovers: 1,
            epochs: 1,
            seed: 1,
            ..Default::default()
        },
        fitness_samples: 2,
        reference_steps: 5,
        act_samples: 8,
        ..SearchOptions::default()
    };
    let ck = tmp.path().join("search.state.json");
    let mut stages = std::collections::BTreeSet::new();
    let found = dmq_pipeline::search::tmpq(
        &fp,
        &sched,
        &search_calib,
        &opts,
        None,
        Some(&ck),
        device,
        &mut |p| {
            stages.insert(p.stage.clone());
        },
    )
    .unwrap();
    assert!(
        stages.contains("search") && stages.contains("supernet"),
        "{stages:?}"
    );
    assert!(ck.exists(), "the search checkpoints");
    assert_eq!(found.timesteps.len(), 3);
    assert!(found.timesteps.windows(2).all(|w| w[0] < w[1]));
    assert!(found.bitops <= found.budget_bitops * (1.0 + 1e-9));
    assert!((4.0..=8.0).contains(&found.mean_bits));
    // the JSON round trip, and its refusals
    let path = tmp.path().join("search.json");
    found.save(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(SearchedConfig::is_searched_config(&text));
    assert_eq!(SearchedConfig::from_json(&text, &path).unwrap(), found);
    let e = SearchedConfig::from_json(&text.replace("dmq.search.v1", "dmq.search.v0"), &path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("search.json") && e.contains("format"), "{e}");
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["timesteps"] = serde_json::json!([500, 100]);
    let e = SearchedConfig::from_json(&v.to_string(), &path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("timesteps"), "{e}");
    // applied: per-layer bits as searched, over the searched timesteps
    let sampler = found.sampler(&sched).unwrap();
    let mut ts: Vec<usize> = sampler.timesteps().to_vec();
    ts.sort_unstable();
    assert_eq!(ts, found.timesteps);
    let q = quantize(
        &fp,
        &found.config,
        &calib(&fp, &sampler, device),
        &Method::from_name("naive").unwrap(),
        &RunOptions::new(sampler.clone()),
        device,
        &mut |_| {},
    )
    .unwrap();
    let file = tmp.path().join("tmpq.dmq.safetensors");
    let timesteps: Vec<f64> = sampler.timesteps().iter().map(|&t| t as f64).collect();
    dmq_file::save(
        &file,
        &q.model,
        &sched,
        &timesteps,
        &Provenance::new(&Method::from_name("naive").unwrap(), &found.config),
    )
    .unwrap();
    let back = dmq_file::load(&file, device).unwrap();
    assert_eq!(back.sampler(20).unwrap().timesteps(), sampler.timesteps());
    let plans = found.config.resolve(&fp, device).unwrap();
    let rows = dmq_file::layer_table(&back.file);
    for p in plans.iter().filter(|p| p.weight.is_some()) {
        let row = rows.iter().find(|r| r.layer == p.name).unwrap();
        assert_eq!(
            row.weight_bits,
            p.weight.and_then(|w| w.int_bits()),
            "{}",
            p.name
        );
    }
    // matmul operands: the rule's left and right bits both reach the plan
    let mm = plans
        .iter()
        .find(|p| p.kind == dmq_models::layers::LayerKind::Matmul)
        .unwrap();
    let rule = found
        .config
        .rules
        .iter()
        .find(|r| r.pattern == mm.name)
        .unwrap();
    let spec = |c: &dmq_calib::Choice| match c {
        dmq_calib::Choice::Spec(s) => s.int_bits(),
        _ => None,
    };
    assert_eq!(mm.act.and_then(|s| s.int_bits()), spec(&rule.act));
    assert_eq!(
        mm.act_b.and_then(|s| s.int_bits()),
        spec(rule.act_right.as_ref().unwrap())
    );
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

per_backend!(
    load_dispatches_and_reads_the_schedule,
    naive_round_trips_through_the_file,
    file_refuses_what_does_not_fit
);

#[cfg(feature = "flex")]
#[test]
fn flex_text_unet_round_trips_through_the_file() {
    text_unet_round_trips_through_the_file(&Device::flex())
}

#[cfg(feature = "flex")]
#[test]
fn flex_every_method_round_trips_through_the_file() {
    every_method_round_trips_through_the_file(&Device::flex())
}

#[cfg(feature = "flex")]
#[test]
fn flex_grouped_preset_through_the_methods() {
    grouped_preset_through_the_methods(&Device::flex())
}

#[cfg(feature = "flex")]
#[test]
fn flex_efficientdm_at_equal_cost() {
    efficientdm_at_equal_cost(&Device::flex())
}

#[cfg(feature = "flex")]
#[test]
fn flex_smoothquant_runs_in_integers() {
    smoothquant_runs_in_integers(&Device::flex())
}

#[cfg(feature = "flex")]
#[test]
fn flex_svdquant_w4a4_beats_naive_and_runs_in_integers() {
    svdquant_w4a4_beats_naive_and_runs_in_integers(&Device::flex())
}

#[cfg(feature = "flex")]
#[test]
fn flex_binarydm_checks_its_inputs() {
    binarydm_checks_its_inputs(&Device::flex())
}

#[cfg(feature = "flex")]
#[test]
fn flex_tmpq_search_applies_through_quantize() {
    tmpq_search_applies_through_quantize(&Device::flex())
}
