//! The latent text-to-image pipeline against diffusers' `StableDiffusionPipeline` on a tiny
//! random-weight pipeline directory (fixture from `scripts/fixtures/t2i_pipeline.py`): the same
//! images from the same initial latents, with CFG, under PNDM and DPM-Solver++ 2M; and the
//! typed errors of a malformed pipeline directory.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use dmq_models::HostTensor;
use dmq_pipeline::scheduler::SamplerKind;
use dmq_pipeline::text_to_image::is_pipeline_dir;
use dmq_pipeline::{GenerateOptions, PipelineError, TextToImage};
use serde::Deserialize;

#[derive(Deserialize)]
struct Expected {
    prompts: Vec<String>,
    steps: usize,
    guidance: f64,
    latents: Vec<f32>,
    latents_shape: Vec<usize>,
    text_states_first: Vec<f32>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    sampler: String,
    timesteps: Vec<usize>,
    images_bhwc: Vec<f32>,
    shape: Vec<usize>,
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/t2i")
}

fn expected() -> Expected {
    serde_json::from_slice(&std::fs::read(fixture().join("expected.json")).unwrap()).unwrap()
}

/// diffusers' images are `(x / 2 + 0.5).clamp(0, 1)` in `[B, H, W, C]`.
fn to_bhwc01(img: &Tensor<4>) -> Vec<f32> {
    let h = HostTensor::from_tensor(img);
    let [b, c, hh, ww] = [h.shape[0], h.shape[1], h.shape[2], h.shape[3]];
    let mut out = vec![0.0; h.data.len()];
    for bi in 0..b {
        for ci in 0..c {
            for y in 0..hh {
                for x in 0..ww {
                    let v = h.data[((bi * c + ci) * hh + y) * ww + x];
                    out[((bi * hh + y) * ww + x) * c + ci] = (v / 2.0 + 0.5).clamp(0.0, 1.0);
                }
            }
        }
    }
    out
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn parity(device: &Device) {
    let dir = fixture().join("pipeline");
    assert!(is_pipeline_dir(&dir));
    let pipe = TextToImage::load(&dir, device).unwrap();
    let e = expected();
    let prompts: Vec<&str> = e.prompts.iter().map(String::as_str).collect();
    let states = HostTensor::from_tensor(&pipe.encode(&prompts, device).unwrap());
    let n = e.text_states_first.len();
    assert!(max_abs(&states.data[..n], &e.text_states_first) < 1e-5);
    let s = &e.latents_shape;
    let latents = Tensor::<4>::from_data(
        TensorData::new(e.latents.clone(), [s[0], s[1], s[2], s[3]]),
        device,
    );
    assert_eq!(e.cases.len(), 2);
    for case in &e.cases {
        let opts = GenerateOptions {
            steps: e.steps,
            guidance: e.guidance,
            seed: 0,
            sampler: case.sampler.parse::<SamplerKind>().unwrap(),
        };
        let kind = opts.sampler;
        let sampler = pipe.scheduler.sampler(kind, e.steps).unwrap();
        assert_eq!(
            dmq_models::scheduler::Scheduler::timesteps(&sampler),
            &case.timesteps[..]
        );
        let img = pipe
            .generate_from(&pipe.unet, &prompts, latents.clone(), &opts, device)
            .unwrap();
        let d = img.dims();
        assert_eq!(
            [d[0], d[2], d[3], d[1]].to_vec(),
            case.shape,
            "{}",
            case.sampler
        );
        let err = max_abs(&to_bhwc01(&img), &case.images_bhwc);
        assert!(err < 1e-4, "{}: max abs error {err:e}", case.sampler);
    }
    // seeded generation: one image per prompt, each independent of the batch it is drawn in
    let opts = GenerateOptions {
        steps: 2,
        guidance: 3.0,
        seed: 7,
        sampler: SamplerKind::Ddim,
    };
    let both =
        HostTensor::from_tensor(&pipe.generate(&pipe.unet, &prompts, &opts, device).unwrap());
    let first = HostTensor::from_tensor(
        &pipe
            .generate(&pipe.unet, &prompts[..1], &opts, device)
            .unwrap(),
    );
    assert_eq!(both.data[..first.data.len()], first.data[..]);
}

/// Copies the fixture pipeline to a temporary directory and applies `edit` to its index.
fn edited(edit: &dyn Fn(&mut serde_json::Value)) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture().join("pipeline");
    for entry in walk(&src) {
        let rel = entry.strip_prefix(&src).unwrap();
        let dst = tmp.path().join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &dst).unwrap();
    }
    let index = tmp.path().join("model_index.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&index, json.to_string()).unwrap();
    tmp
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn malformed_pipelines_are_typed_errors(device: &Device) {
    let field_of = |e: PipelineError| match e {
        PipelineError::File { path, field, .. } => (path, field),
        other => panic!("expected a file error, got {other}"),
    };
    let no_vae = edited(&|j| {
        j.as_object_mut().unwrap().remove("vae");
    });
    let (path, field) = field_of(TextToImage::load(no_vae.path(), device).unwrap_err());
    assert!(path.ends_with("model_index.json") && field == "vae");
    let other_unet = edited(&|j| j["unet"] = serde_json::json!(["diffusers", "UNet2DModel"]));
    let (_, field) = field_of(TextToImage::load(other_unet.path(), device).unwrap_err());
    assert_eq!(field, "unet");
    let not_json = tempfile::tempdir().unwrap();
    std::fs::write(not_json.path().join("model_index.json"), b"{ nope").unwrap();
    let (_, field) = field_of(TextToImage::load(not_json.path(), device).unwrap_err());
    assert_eq!(field, "model index");
    // a text encoder of another width than the UNet's cross-attention
    let wide = edited(&|_| {});
    let cfg_path = wide.path().join("unet/config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["cross_attention_dim"] = 24.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    assert!(TextToImage::load(wide.path(), device).is_err());
}

/// A calibration set of `pipe`'s UNet (`fp`): `n` trajectories under `sampler`, `n` steps
/// kept of each, every one prompted "a bag" at guidance `guidance`.
fn prompted_calib(
    fp: &dmq_pipeline::AnyDenoiser,
    pipe: &TextToImage,
    sampler: &dmq_models::scheduler::DdimScheduler,
    n: usize,
    guidance: f64,
    device: &Device,
) -> dmq_calib::CalibSet {
    let record = dmq_calib::RecordOptions {
        trajectories: n,
        steps_kept: n,
        guidance,
        batch: n,
        seed: 7,
    };
    dmq_calib::CalibSet::record_with(fp, sampler, &record, device, &mut |_, b| {
        Ok(Some(
            pipe.conditioning(&vec!["a bag"; b], guidance, device)
                .unwrap(),
        ))
    })
    .unwrap()
}

/// The pipeline's UNet quantized with naive W8A8 on two prompted trajectories.
fn naive_w8a8(
    pipe: &TextToImage,
    sampler: &dmq_models::scheduler::DdimScheduler,
    device: &Device,
) -> (
    dmq_pipeline::method::Quantized,
    dmq_calib::QuantConfig,
    dmq_pipeline::Method,
) {
    let fp = dmq_pipeline::AnyDenoiser::UNetCond(pipe.unet.clone());
    let calib = prompted_calib(&fp, pipe, sampler, 2, 3.0, device);
    let (config, method) = (
        dmq_calib::QuantConfig::preset("W8A8").unwrap(),
        dmq_pipeline::Method::from_name("naive").unwrap(),
    );
    let q = dmq_pipeline::quantize(
        &fp,
        &config,
        &calib,
        &method,
        &dmq_pipeline::RunOptions::new(sampler.clone()),
        device,
        &mut |_| {},
    )
    .unwrap();
    (q, config, method)
}

/// The pipeline's UNet quantized (naive W8A8, calibrated on prompts) and written with
/// `save_pipeline` is one file that generates on its own: read back, its tokenizer, text
/// encoder, VAE and quantized UNet generate what the in-memory pipeline with the quantized
/// UNet generates; a damaged file is refused, naming the entry.
fn quantized_pipeline_file_generates_alone(device: &Device) {
    use dmq_pipeline::dmq_file::{self, PIPELINE_FORMAT_VERSION, Provenance};

    let pipe = TextToImage::load(&fixture().join("pipeline"), device).unwrap();
    let sampler = pipe.scheduler.ddim(3).unwrap();
    let (q, config, method) = naive_w8a8(&pipe, &sampler, device);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("pipe.dmq.safetensors");
    let ts = dmq_pipeline::scheduler::timesteps(&sampler);
    dmq_file::save_pipeline(
        &path,
        &q.model,
        &pipe,
        &ts,
        &Provenance::new(&method, &config),
    )
    .unwrap();
    let loaded = dmq_file::load(&path, device).unwrap();
    assert_eq!(loaded.file.metadata["dmq.format"], PIPELINE_FORMAT_VERSION);
    let alone = loaded.pipeline.as_ref().expect("the file's pipeline");
    let text = ["a photo of a sneaker", "a bag"];
    assert_eq!(
        alone.tokenizer.encode_padded(&text, 77).unwrap(),
        pipe.tokenizer.encode_padded(&text, 77).unwrap()
    );
    let opts = GenerateOptions {
        steps: 3,
        guidance: 3.0,
        seed: 5,
        sampler: SamplerKind::Ddim,
    };
    let generate = |p: &TextToImage, unet: &dyn dmq_models::Denoiser| {
        HostTensor::from_tensor(
            &p.generate_with_sampler(unet, &text, &sampler, &opts, device)
                .unwrap(),
        )
    };
    let from_file = generate(alone, &loaded.model);
    let in_memory = generate(&pipe, &q.model);
    let fp_images = generate(&pipe, &pipe.unet);
    let err = max_abs(&from_file.data, &in_memory.data);
    assert!(err < 1e-5, "file vs in-memory quantized pipeline: {err}");
    assert!(max_abs(&from_file.data, &fp_images.data) > 1e-4);

    // a component tensor missing, the plain-model format claimed: refused, named
    let broken = |edit: &dyn Fn(&mut dmq_quant::QuantizedFile)| {
        let mut f = dmq_quant::QuantizedFile::load(&path).unwrap();
        edit(&mut f);
        let p = tmp.path().join("broken.dmq.safetensors");
        f.save(&p).unwrap();
        dmq_file::load(&p, device).unwrap_err().to_string()
    };
    let msg = broken(&|f| {
        f.float.remove("vae.decoder.conv_out.bias").unwrap();
    });
    assert!(
        msg.contains("dmq.pipeline.vae") && msg.contains("conv_out"),
        "{msg}"
    );
    let msg = broken(&|f| {
        f.metadata
            .insert("dmq.format".into(), dmq_file::FORMAT_VERSION.into());
    });
    assert!(
        msg.contains("dmq.format") && msg.contains("components"),
        "{msg}"
    );
    let msg = broken(&|f| {
        f.float.insert("vae.extra".into(), (vec![1], vec![0.0]));
    });
    assert!(msg.contains("vae") && msg.contains("extra"), "{msg}");
}

/// `--text-encoder-bits` / `--vae-bits`: the components' weights rounded per output row
/// (checked against the closed form on one weight), stored as integer codes that read back
/// to the same pipeline, counted in the bytes and BitOPs; bad widths and inconsistent files
/// are typed errors.
fn components_quantized_weight_only(device: &Device) {
    use dmq_pipeline::ComponentBits;
    use dmq_pipeline::dmq_file::{self, Provenance};
    use std::collections::HashMap;

    let fp_pipe = TextToImage::load(&fixture().join("pipeline"), device).unwrap();
    let mut pipe = fp_pipe.clone();
    let bits = ComponentBits {
        text_encoder: Some(8),
        vae: Some(6),
    };
    pipe.quantize_components(bits, device).unwrap();
    assert_eq!(pipe.component_bits, bits);

    // closed form on one weight: Δ_o = max|W_o| / 127, Ŵ = round(W / Δ_o)·Δ_o
    let weights = |m: &dmq_models::clip::ClipTextModel| {
        let bytes = dmq_models::io::weights_to_bytes(m, HashMap::new()).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let v = st
            .tensor("text_model.encoder.layers.0.mlp.fc1.weight")
            .unwrap();
        let data: Vec<f32> = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (v.shape().to_vec(), data)
    };
    let (shape, w) = weights(&fp_pipe.text_encoder);
    let (_, got) = weights(&pipe.text_encoder);
    let cols = shape[1];
    let mut worst = 0f32;
    for (row, (w, g)) in w.chunks(cols).zip(got.chunks(cols)).enumerate() {
        let d = w.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
        for (x, y) in w.iter().zip(g) {
            let want = (x / d).round() * d;
            assert!(
                (want - y).abs() <= 1e-6 * d.max(1.0),
                "row {row}: {y} vs {want}"
            );
            worst = worst.max((x - y).abs() / d);
        }
    }
    assert!(
        worst > 0.1 && worst <= 0.5 + 1e-4,
        "rounding error {worst} Δ"
    );

    // the file holds codes and reads back to the same pipeline
    let sampler = pipe.scheduler.ddim(3).unwrap();
    let (q, config, method) = naive_w8a8(&pipe, &sampler, device);
    let tmp = tempfile::tempdir().unwrap();
    let ts = dmq_pipeline::scheduler::timesteps(&sampler);
    let save = |p: &TextToImage, name: &str| {
        let path = tmp.path().join(name);
        let bytes =
            dmq_file::save_pipeline(&path, &q.model, p, &ts, &Provenance::new(&method, &config))
                .unwrap();
        (path, bytes)
    };
    let (fp_path, fp_bytes) = save(&fp_pipe, "fp.dmq.safetensors");
    let (path, bytes) = save(&pipe, "q.dmq.safetensors");
    let f = dmq_quant::QuantizedFile::load(&path).unwrap();
    let key = "text_encoder.text_model.encoder.layers.0.mlp.fc1.weight";
    assert_eq!(f.quantized[key].bits(), 8);
    assert_eq!(f.quantized["vae.decoder.conv_out.weight"].bits(), 6);
    assert!(f.float.contains_key("vae.decoder.conv_out.bias"));
    // the codes and their (Δ, z) replace 4 bytes per weight
    let te =
        (fp_pipe.text_encoder.config().param_count() + fp_pipe.vae.config().param_count()) as usize;
    let coded: usize = f
        .quantized
        .iter()
        .filter(|(k, _)| dmq_pipeline::pipeline_file::is_component_key(k))
        .map(|(_, q)| q.numel())
        .sum();
    assert!(coded > te / 2, "{coded} of {te} component parameters coded");
    assert!(bytes < fp_bytes, "{bytes} vs {fp_bytes}");
    let cost = |p: &TextToImage| {
        dmq_pipeline::t2i_eval::pipeline_cost(p, &q.model, 3, true, device).unwrap()
    };
    let (c_fp, c_q) = (cost(&fp_pipe), cost(&pipe));
    let stored: usize = f
        .quantized
        .iter()
        .filter(|(k, _)| dmq_pipeline::pipeline_file::is_component_key(k))
        .map(|(_, q)| q.storage_bytes())
        .sum::<usize>()
        + f.float
            .iter()
            .filter(|(k, _)| dmq_pipeline::pipeline_file::is_component_key(k))
            .map(|(_, (s, _))| 4 * s.iter().product::<usize>())
            .sum::<usize>();
    let f_fp = dmq_quant::QuantizedFile::load(&fp_path).unwrap();
    let fp_stored: usize = f_fp
        .float
        .iter()
        .filter(|(k, _)| dmq_pipeline::pipeline_file::is_component_key(k))
        .map(|(_, (s, _))| 4 * s.iter().product::<usize>())
        .sum();
    assert_eq!(fp_stored, 4 * te);
    assert_eq!(c_fp.model_bytes - c_q.model_bytes, fp_stored - stored);
    assert!(c_q.bitops < c_fp.bitops);

    let loaded = dmq_file::load(&path, device).unwrap();
    let alone = loaded.pipeline.as_ref().unwrap();
    assert_eq!(alone.component_bits, bits);
    assert!(
        loaded
            .file
            .quantized
            .keys()
            .all(|k| !k.starts_with("text_encoder."))
    );
    let text = ["a photo of a sneaker", "a bag"];
    let opts = GenerateOptions {
        steps: 3,
        guidance: 3.0,
        seed: 5,
        sampler: SamplerKind::Ddim,
    };
    let generate = |p: &TextToImage| {
        HostTensor::from_tensor(
            &p.generate_with_sampler(&q.model, &text, &sampler, &opts, device)
                .unwrap(),
        )
    };
    let (from_file, in_memory, fp_components) =
        (generate(alone), generate(&pipe), generate(&fp_pipe));
    let err = max_abs(&from_file.data, &in_memory.data);
    assert!(err < 1e-5, "file vs in-memory: {err}");
    assert!(max_abs(&from_file.data, &fp_components.data) > 1e-5);
    let fp_loaded = dmq_file::load(&fp_path, device).unwrap();
    assert!(fp_loaded.pipeline.as_ref().unwrap().component_bits.is_fp());

    // refused: a width out of range, rounding twice, codes the metadata does not declare
    let mut twice = pipe.clone();
    let msg = twice
        .quantize_components(
            ComponentBits {
                text_encoder: Some(4),
                vae: None,
            },
            device,
        )
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("text_encoder") && msg.contains("already"),
        "{msg}"
    );
    let mut wide = fp_pipe.clone();
    let msg = wide
        .quantize_components(
            ComponentBits {
                text_encoder: None,
                vae: Some(9),
            },
            device,
        )
        .unwrap_err()
        .to_string();
    assert!(msg.contains("vae") && msg.contains("9"), "{msg}");
    let mut f = dmq_quant::QuantizedFile::load(&path).unwrap();
    f.metadata.remove("dmq.pipeline.component_bits").unwrap();
    let p = tmp.path().join("broken.dmq.safetensors");
    f.save(&p).unwrap();
    let msg = dmq_file::load(&p, device).unwrap_err().to_string();
    assert!(
        msg.contains("dmq.pipeline.component_bits") && msg.contains("text_encoder."),
        "{msg}"
    );
}

/// The embedded `assets/models/t2i-fmnist` follows its prompts: one image per class prompt
/// (20 DDIM steps, CFG 4, as its card measures 98.4% over 500), and the metric classifier
/// assigns at least 8 of the 10 to the prompted class.
fn embedded_t2i_fmnist_follows_prompts(device: &Device) {
    use dmq_pipeline::t2i_eval;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let pipe = TextToImage::load(&root.join("assets/models/t2i-fmnist"), device).unwrap();
    let prompts = t2i_eval::eval_prompts(10).unwrap();
    let sampler = pipe.scheduler.ddim(20).unwrap();
    let opts = GenerateOptions {
        steps: 20,
        guidance: 4.0,
        seed: 2024,
        sampler: SamplerKind::Ddim,
    };
    let images = t2i_eval::generate_images(
        &pipe,
        &pipe.unet,
        &prompts,
        &sampler,
        &opts,
        10,
        Some(t2i_eval::FMNIST_SIZE),
        device,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(images.shape, vec![10, 1, 28, 28]);
    let classifier = dmq_eval::classifier::FmnistClassifier::load(
        &root.join("assets/models/fmnist-classifier"),
        device,
    )
    .unwrap();
    let (_, preds) = dmq_eval::harness::features(&classifier, &images, device).unwrap();
    let hits = preds
        .iter()
        .enumerate()
        .filter(|(i, p)| **p == i % 10)
        .count();
    assert!(
        hits >= 8,
        "{hits}/10 images of the prompted class: {preds:?}"
    );
}

/// EfficientDM distils a text-conditional UNet on trajectories prompted from
/// `RunOptions::with_prompts` (refused without prompts): the loss falls over the epochs on a
/// fixed trajectory pool, and the student differs from the FP UNet.
fn efficientdm_on_prompted_trajectories(device: &Device) {
    use dmq_calib::QuantConfig;
    use dmq_pipeline::{AnyDenoiser, Method, MethodReport, RunOptions, quantize};

    let ad = device.clone().autodiff();
    let pipe = TextToImage::load(&fixture().join("pipeline"), &ad).unwrap();
    let fp = AnyDenoiser::UNetCond(pipe.unet.clone());
    let sampler = pipe.scheduler.ddim(3).unwrap();
    let calib = prompted_calib(&fp, &pipe, &sampler, 2, 3.0, &ad);
    let method = Method::Efficientdm {
        config: dmq_finetune::EfficientDmConfig {
            epochs: 6,
            guidance: 3.0,
            trajectory_pool: Some(1),
            ..Default::default()
        },
        train_steps: 3,
    };
    let config = QuantConfig::preset("W4A8").unwrap();
    let opts = RunOptions::new(sampler.clone());
    let err = quantize(&fp, &config, &calib, &method, &opts, &ad, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("prompt"), "{err}");
    let opts = opts.with_prompts(
        pipe.prompt_states(&["a photo of a sneaker", "a bag"], &ad)
            .unwrap(),
    );
    let q = quantize(&fp, &config, &calib, &method, &opts, &ad, &mut |_| {}).unwrap();
    let MethodReport::Efficientdm(rep) = &q.report else {
        panic!("an EfficientDM report")
    };
    assert_eq!(rep.steps, 6 * 3);
    let (first, last) = (rep.epoch_losses[0].1, rep.epoch_losses.last().unwrap().1);
    assert!(last.is_finite() && last < first, "loss {first} → {last}");
}

/// BinaryDM trains a latent text-conditional UNet on real images: encoded by the pipeline's
/// VAE (12×12 images padded to its 16×16), prompted per label, the empty prompt for CFG
/// dropout; refused without the pipeline and prompts, and with a label that has no prompt.
fn binarydm_on_prompted_latents(device: &Device) {
    use dmq_calib::QuantConfig;
    use dmq_pipeline::{
        AnyDenoiser, ImageSet, Method, MethodReport, RunOptions, TextTraining, quantize,
    };

    let ad = device.clone().autodiff();
    let pipe = std::sync::Arc::new(TextToImage::load(&fixture().join("pipeline"), &ad).unwrap());
    let fp = AnyDenoiser::UNetCond(pipe.unet.clone());
    let sampler = pipe.scheduler.ddim(2).unwrap();
    let calib = prompted_calib(&fp, &pipe, &sampler, 1, 1.0, &ad);
    let pixels: Vec<u8> = (0..6 * 144).map(|i| ((i * 37) % 256) as u8).collect();
    let images = ImageSet::new([6, 1, 12, 12], pixels, Some(vec![0, 1, 2, 0, 1, 2])).unwrap();
    let method = Method::Binarydm(dmq_finetune::BinaryDmConfig {
        steps: 3,
        batch: 2,
        ..Default::default()
    });
    let config = QuantConfig::preset("W1A4").unwrap();
    let opts = RunOptions::new(sampler.clone()).with_images(images);
    let err = quantize(&fp, &config, &calib, &method, &opts, &ad, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("with_text_training"), "{err}");
    let text = |prompts: &[&str]| TextTraining {
        pipe: pipe.clone(),
        prompts: prompts.iter().map(|p| p.to_string()).collect(),
    };
    let short = opts.clone().with_text_training(text(&["a bag", "a coat"]));
    let err = quantize(&fp, &config, &calib, &method, &short, &ad, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("label 2 has no prompt"), "{err}");
    let opts = opts.with_text_training(text(&["a bag", "a coat", "a photo of a sneaker"]));
    let q = quantize(&fp, &config, &calib, &method, &opts, &ad, &mut |_| {}).unwrap();
    let MethodReport::Binarydm(rep) = &q.report else {
        panic!("a BinaryDM report")
    };
    assert!(!rep.plan.vanilla.is_empty() || !rep.plan.ebb.is_empty());
    let ones = dmq_calib::layer_bits(&q.model)
        .values()
        .filter(|(w, _)| *w == 1)
        .count();
    assert!(ones > 0, "binarized layers");
}

/// TMPQ searches a text-conditional UNet on prompted fitness samples (refused without
/// prompts): the searched config meets the budget and `quantize` applies it.
fn tmpq_on_prompted_samples(device: &Device) {
    use dmq_pipeline::search::{SearchOptions, tmpq};
    use dmq_pipeline::{AnyDenoiser, Method, RunOptions, quantize};

    let pipe = TextToImage::load(&fixture().join("pipeline"), device).unwrap();
    let fp = AnyDenoiser::UNetCond(pipe.unet.clone());
    let calib = prompted_calib(&fp, &pipe, &pipe.scheduler.ddim(4).unwrap(), 2, 3.0, device);
    let opts = SearchOptions {
        steps: 2,
        bit_options: vec![8, 4],
        budget_bits: 8,
        evolution: dmq_search::EvolutionConfig {
            population: 2,
            top_k: 1,
            mutations: 1,
            crossovers: 0,
            epochs: 1,
            seed: 1,
            ..Default::default()
        },
        fitness_samples: 2,
        reference_steps: 4,
        act_samples: 4,
        guidance: 3.0,
        ..SearchOptions::default()
    };
    let run = |prompts| {
        tmpq(
            &fp,
            &pipe.scheduler,
            &calib,
            &opts,
            prompts,
            None,
            device,
            &mut |_| {},
        )
    };
    let err = run(None).unwrap_err();
    assert!(err.to_string().contains("prompt"), "{err}");
    let states = pipe.prompt_states(&["a bag", "a coat"], device).unwrap();
    let found = run(Some(&states)).unwrap();
    assert_eq!(found.timesteps.len(), 2);
    assert!(found.bitops <= found.budget_bitops * (1.0 + 1e-9));
    let sampler = found.sampler(&pipe.scheduler).unwrap();
    let q = quantize(
        &fp,
        &found.config,
        &calib,
        &Method::from_name("naive").unwrap(),
        &RunOptions::new(sampler),
        device,
        &mut |_| {},
    )
    .unwrap();
    assert!(!dmq_calib::layer_bits(&q.model).is_empty());
}

#[cfg(feature = "flex")]
mod flex {
    #[test]
    fn tmpq_on_prompted_samples() {
        super::tmpq_on_prompted_samples(&burn::tensor::Device::flex());
    }

    #[test]
    fn binarydm_on_prompted_latents() {
        super::binarydm_on_prompted_latents(&burn::tensor::Device::flex());
    }

    #[test]
    fn efficientdm_on_prompted_trajectories() {
        super::efficientdm_on_prompted_trajectories(&burn::tensor::Device::flex());
    }

    #[test]
    fn embedded_t2i_fmnist_follows_prompts() {
        super::embedded_t2i_fmnist_follows_prompts(&burn::tensor::Device::flex());
    }

    #[test]
    fn components_quantized_weight_only() {
        super::components_quantized_weight_only(&burn::tensor::Device::flex());
    }

    #[test]
    fn quantized_pipeline_file_generates_alone() {
        super::quantized_pipeline_file_generates_alone(&burn::tensor::Device::flex());
    }

    #[test]
    fn parity() {
        super::parity(&burn::tensor::Device::flex());
    }

    #[test]
    fn malformed_pipelines_are_typed_errors() {
        super::malformed_pipelines_are_typed_errors(&burn::tensor::Device::flex());
    }
}
