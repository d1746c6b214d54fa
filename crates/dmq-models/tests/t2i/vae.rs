//! AutoencoderKL parity with diffusers (fixtures from `scripts/fixtures/vae_parity.py`:
//! random-weight diffusers VAEs saved with `save_pretrained`, a fixed image batch, fixed
//! posterior noise and diffusers' outputs), layer names against diffusers' modules and the
//! safetensors keys, strict config/checkpoint errors and input-shape errors. Tensor tests run
//! on every enabled backend through `backend_tests!`.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use dmq_models::layers::LayerKind;
use dmq_models::vae::{AutoencoderKL, AutoencoderKlConfig, LatentDist};
use dmq_models::{ForwardCtx, LayerRecorder, ModelError, StepContext, TapTensor, Taps};
use dmq_quant::Limits;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

/// Max abs error allowed against diffusers (f32).
const TOL: f32 = 1e-4;

/// Every fixture directory; `noquant_f16` holds f16 weights.
const FIXTURES: [&str; 2] = ["sd", "noquant_f16"];

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join("vae")
        .join(name)
}

/// A scratch directory unique to this process and tag (removed on drop).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("dmq-vae-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Deserialize)]
struct Expected {
    conv_linear_modules: Vec<String>,
}

fn expected(name: &str) -> Expected {
    let text = std::fs::read_to_string(fixture_dir(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// An f32 tensor of the fixture's `io.safetensors`: values and shape.
type Raw = (Vec<f32>, [usize; 4]);

fn read_io(name: &str) -> impl Fn(&str) -> Raw {
    let bytes = std::fs::read(fixture_dir(name).join("io.safetensors")).unwrap();
    move |key: &str| {
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let v = st
            .tensor(key)
            .unwrap_or_else(|_| panic!("io.safetensors: {key}"));
        assert_eq!(v.dtype(), Dtype::F32, "{key}");
        let data = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let s = v.shape();
        (data, [s[0], s[1], s[2], s[3]])
    }
}

fn tensor(v: &Raw, device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(v.0.clone(), v.1), device)
}

fn values(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

fn max_abs_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

fn ctx() -> ForwardCtx<'static> {
    ForwardCtx::new(StepContext::single(0.0))
}

fn check(name: &str, what: &str, got: Tensor<4>, want: &Raw) {
    assert_eq!(got.dims(), want.1, "{name} {what}: shape");
    let err = max_abs_err(&values(got), &want.0);
    eprintln!("vae parity {name} {what}: max abs err {err:.3e}");
    assert!(err <= TOL, "{name} {what}: max abs err {err} > {TOL}");
}

// ---------------------------------------------------------------------------------
// Per-backend test bodies

/// Every recorded output of every fixture: posterior mean and log-variance, a draw with the
/// fixture's noise, its decode, the full reconstruction, the pipeline-scaled latents and the
/// image decoded from them.
fn parity(device: &Device) {
    for name in FIXTURES {
        let vae = AutoencoderKL::load(&fixture_dir(name), device)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let io = read_io(name);
        let x = tensor(&io("x"), device);
        let dist = vae.encode(x.clone(), &ctx()).unwrap();
        check(name, "mean", dist.mean.clone(), &io("mean"));
        check(name, "logvar", dist.logvar.clone(), &io("logvar"));
        check(name, "mode", dist.mode(), &io("mean"));
        let sample = dist.sample(tensor(&io("noise"), device)).unwrap();
        check(name, "sample", sample, &io("sample"));
        // decode the reference draw, so that this checks the decoder alone
        let decoded = vae.decode(tensor(&io("sample"), device), &ctx()).unwrap();
        check(name, "decoded_sample", decoded, &io("decoded_sample"));
        let recon = vae.reconstruct(x.clone(), None, &ctx()).unwrap();
        check(name, "reconstruction", recon, &io("reconstruction"));
        let recon_sampled = vae
            .reconstruct(x.clone(), Some(tensor(&io("noise"), device)), &ctx())
            .unwrap();
        check(
            name,
            "reconstruction with noise",
            recon_sampled,
            &io("decoded_sample"),
        );
        let latents = vae.latents_from_image(x.clone(), None, &ctx()).unwrap();
        check(name, "latents", latents, &io("latents"));
        let image = vae
            .image_from_latents(tensor(&io("latents"), device), &ctx())
            .unwrap();
        check(name, "image_from_latents", image, &io("image_from_latents"));
    }
}

/// The scaling helpers apply `(z − shift)·s` and its inverse with the config's values; a
/// draw with noise is scaled the same way.
fn scaling(device: &Device) {
    let vae = AutoencoderKL::load(&fixture_dir("noquant_f16"), device).unwrap();
    assert_eq!(vae.scaling_factor(), 1.5305);
    assert_eq!(vae.shift_factor(), 0.0609);
    let sd = AutoencoderKL::load(&fixture_dir("sd"), device).unwrap();
    assert_eq!(sd.scaling_factor(), 0.18215);
    assert_eq!(sd.shift_factor(), 0.0);
    assert_eq!((sd.downsample_factor(), vae.downsample_factor()), (2, 4));

    let io = read_io("noquant_f16");
    let x = tensor(&io("x"), device);
    let noise = tensor(&io("noise"), device);
    let got = vae
        .latents_from_image(x, Some(noise.clone()), &ctx())
        .unwrap();
    let want: Vec<f32> = io("sample")
        .0
        .iter()
        .map(|z| ((*z as f64 - 0.0609) * 1.5305) as f32)
        .collect();
    let err = max_abs_err(&values(got), &want);
    assert!(err <= TOL, "scaled draw: {err}");
    let z = tensor(&io("sample"), device);
    let back = vae.unscale_latents(vae.scale_latents(z.clone()));
    let err = max_abs_err(&values(back), &values(z));
    assert!(err <= 1e-6, "scale/unscale round trip: {err}");
}

/// The clamp of the log-variance to [-30, 20] and `std = exp(logvar / 2)`.
fn distribution(device: &Device) {
    // moments [1, 4, 1, 2]: mean channels 0-1, logvar channels 2-3
    let m = Tensor::<4>::from_data(
        TensorData::new(
            vec![1.0f32, -2.0, 3.0, 4.0, 50.0, -50.0, 0.0, 2.0],
            [1, 4, 1, 2],
        ),
        device,
    );
    let d = LatentDist::from_moments(m).unwrap();
    assert_eq!(values(d.mean.clone()), vec![1.0, -2.0, 3.0, 4.0]);
    assert_eq!(values(d.logvar.clone()), vec![20.0, -30.0, 0.0, 2.0]);
    let std = values(d.std.clone());
    let want = [10f32.exp(), (-15f32).exp(), 1.0, 1f32.exp()];
    for (g, w) in std.iter().zip(want) {
        assert!((g - w).abs() <= 1e-6 * w.max(1.0), "std {g} vs {w}");
    }
    let var = values(d.var());
    assert!((var[3] - 2f32.exp()).abs() < 1e-5);
    let s = d.sample(Tensor::ones([1, 2, 1, 2], device)).unwrap();
    let s = values(s);
    assert!((s[2] - 4.0).abs() < 1e-6 && (s[3] - (4.0 + 1f32.exp())).abs() < 1e-5);
    assert!(matches!(
        d.sample(Tensor::ones([1, 2, 2, 1], device)),
        Err(ModelError::Shape { .. })
    ));
    assert!(matches!(
        LatentDist::from_moments(Tensor::zeros([1, 3, 2, 2], device)),
        Err(ModelError::Shape { .. })
    ));
}

/// The quantizable layers are diffusers' Conv2d/Linear modules (plus the attention
/// products), each names its safetensors weight, and `for_each_layer(_mut)` visits them in
/// forward (call) order: encoder, quant_conv, post_quant_conv, decoder.
fn layer_names(device: &Device) {
    for name in FIXTURES {
        let mut vae = AutoencoderKL::load(&fixture_dir(name), device).unwrap();
        let bytes =
            std::fs::read(fixture_dir(name).join("diffusion_pytorch_model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();

        let mut visited = Vec::new();
        vae.for_each_layer(&mut |l| visited.push((l.name().to_string(), l.kind())));
        let mut ours: Vec<String> = visited
            .iter()
            .filter(|(_, k)| *k != LayerKind::Matmul)
            .map(|(n, _)| n.clone())
            .collect();
        for layer in &ours {
            let key = format!("{layer}.weight");
            assert!(st.tensor(&key).is_ok(), "{name}: no tensor '{key}'");
        }
        ours.sort();
        let mut theirs = expected(name).conv_linear_modules;
        theirs.sort();
        assert_eq!(ours, theirs, "{name}: conv/linear layer names");
        // every weight of the file is a layer's or a norm's
        for key in st.names() {
            let owner = key.rsplit_once('.').unwrap().0;
            assert!(
                theirs.iter().any(|l| l == owner) || owner.contains("norm"),
                "{name}: '{key}' belongs to no layer or norm"
            );
        }
        for (n, k) in visited.iter().filter(|(_, k)| *k == LayerKind::Matmul) {
            let attn = n.rsplit_once('.').unwrap().0;
            assert!(n.ends_with(".qk") || n.ends_with(".sv"), "{n}");
            assert!(attn.contains(".mid_block.attentions.0"), "{n} ({k:?})");
        }

        // forward call order == for_each_layer order
        let io = read_io(name);
        let recorder = LayerRecorder::default();
        let c = ctx().with_recorder(&recorder);
        vae.reconstruct(tensor(&io("x"), device), None, &c).unwrap();
        let called: Vec<_> = recorder
            .calls()
            .into_iter()
            .map(|c| (c.name, c.kind))
            .collect();
        assert_eq!(visited, called, "{name}: for_each_layer order");
        assert_eq!(called.first().unwrap().0, "encoder.conv_in");
        assert_eq!(called.last().unwrap().0, "decoder.conv_out");
        let mut visited_mut = Vec::new();
        vae.for_each_layer_mut(&mut |l| visited_mut.push((l.name().to_string(), l.kind())));
        assert_eq!(visited_mut, called, "{name}: for_each_layer_mut order");
    }
    let sd = AutoencoderKL::load(&fixture_dir("sd"), device).unwrap();
    let mut names = Vec::new();
    sd.for_each_layer(&mut |l| names.push(l.name().to_string()));
    for want in [
        "encoder.down_blocks.0.resnets.0.conv1",
        "encoder.down_blocks.0.downsamplers.0.conv",
        "encoder.mid_block.attentions.0.to_q",
        "encoder.mid_block.attentions.0.qk",
        "quant_conv",
        "post_quant_conv",
        "decoder.mid_block.attentions.0.to_out.0",
        "decoder.up_blocks.0.upsamplers.0.conv",
        "decoder.up_blocks.1.resnets.0.conv_shortcut",
    ] {
        assert!(names.iter().any(|n| n == want), "missing layer {want}");
    }
}

/// Block outputs are tapped under their diffusers paths.
fn taps(device: &Device) {
    let vae = AutoencoderKL::load(&fixture_dir("sd"), device).unwrap();
    let io = read_io("sd");
    let names = [
        "encoder.down_blocks.0",
        "encoder.mid_block",
        "encoder",
        "decoder.mid_block.attentions.0",
        "decoder.up_blocks.0",
        "decoder",
    ];
    let taps = Taps::new(names);
    vae.reconstruct(tensor(&io("x"), device), None, &ctx().with_taps(&taps))
        .unwrap();
    let got = taps.take();
    let dims = |n: &str| match &got[n] {
        TapTensor::R4(t) => t.dims(),
        other => panic!("{n}: {other:?}"),
    };
    assert_eq!(got.len(), names.len());
    assert_eq!(dims("encoder.down_blocks.0"), [2, 8, 8, 8]);
    assert_eq!(dims("encoder.mid_block"), [2, 16, 8, 8]);
    assert_eq!(dims("encoder"), [2, 8, 8, 8]);
    assert_eq!(dims("decoder.mid_block.attentions.0"), [2, 16, 8, 8]);
    assert_eq!(dims("decoder.up_blocks.0"), [2, 16, 16, 16]);
    assert_eq!(dims("decoder"), [2, 3, 16, 16]);
}

/// Wrong channel counts, sizes not divisible by 2^(levels−1) and empty inputs are shape
/// errors, not panics.
fn input_errors(device: &Device) {
    let sd = AutoencoderKL::load(&fixture_dir("sd"), device).unwrap();
    let three = AutoencoderKL::load(&fixture_dir("noquant_f16"), device).unwrap();
    let shape_err = |r: Result<_, ModelError>, what: &str| match r {
        Err(ModelError::Shape { .. }) => {}
        other => panic!("{what}: expected a Shape error, got {other:?}"),
    };
    shape_err(
        sd.encode(Tensor::zeros([2, 4, 16, 16], device), &ctx())
            .map(|_| ()),
        "4-channel image",
    );
    shape_err(
        sd.encode(Tensor::zeros([1, 3, 15, 16], device), &ctx())
            .map(|_| ()),
        "odd height, 2 levels",
    );
    // 3 levels: multiples of 4
    shape_err(
        three
            .encode(Tensor::zeros([1, 3, 18, 16], device), &ctx())
            .map(|_| ()),
        "height 18, 3 levels",
    );
    shape_err(
        three
            .encode(Tensor::zeros([1, 3, 16, 6], device), &ctx())
            .map(|_| ()),
        "width 6, 3 levels",
    );
    shape_err(
        sd.encode(Tensor::zeros([0, 3, 16, 16], device), &ctx())
            .map(|_| ()),
        "empty batch",
    );
    shape_err(
        sd.decode(Tensor::zeros([1, 3, 4, 4], device), &ctx())
            .map(|_| ()),
        "3-channel latent",
    );
    shape_err(
        sd.image_from_latents(Tensor::zeros([1, 8, 4, 4], device), &ctx())
            .map(|_| ()),
        "8-channel latent",
    );
    shape_err(
        sd.latents_from_image(
            Tensor::zeros([1, 3, 16, 16], device),
            Some(Tensor::zeros([1, 4, 4, 4], device)),
            &ctx(),
        )
        .map(|_| ()),
        "noise of the wrong shape",
    );
    // a non-square size that is a multiple of 4 is fine
    let z = three
        .latents_from_image(Tensor::zeros([1, 3, 8, 12], device), None, &ctx())
        .unwrap();
    assert_eq!(z.dims(), [1, 4, 2, 3]);
    assert_eq!(
        three.image_from_latents(z, &ctx()).unwrap().dims(),
        [1, 2, 8, 12]
    );
}

/// A safetensors entry: key, dtype, shape, bytes.
type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// A copy of the `sd` fixture in a scratch directory, its tensors passed through `edit`.
fn sd_variant(tag: &str, edit: &dyn Fn(&mut Vec<RawTensor>)) -> TempDir {
    let src = fixture_dir("sd");
    let bytes = std::fs::read(src.join("diffusion_pytorch_model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<RawTensor> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<_> = tensors
        .iter()
        .map(|(k, d, s, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let out = safetensors::serialize(views, None).unwrap();
    let dir = TempDir::new(tag);
    std::fs::copy(src.join("config.json"), dir.0.join("config.json")).unwrap();
    std::fs::write(dir.0.join("diffusion_pytorch_model.safetensors"), out).unwrap();
    dir
}

fn assert_checkpoint_err(r: Result<AutoencoderKL, ModelError>, key: &str) {
    match r {
        Err(ModelError::Checkpoint { path, reason }) => {
            assert!(reason.contains(key), "'{reason}' should name '{key}'");
            assert!(
                path.ends_with("diffusion_pytorch_model.safetensors"),
                "{path:?}"
            );
        }
        other => panic!("expected a Checkpoint error naming {key}, got {other:?}"),
    }
}

/// A missing, an extra or a misshapen tensor is a Checkpoint error naming the key.
fn checkpoint_errors(device: &Device) {
    let missing = "decoder.mid_block.attentions.0.to_k.weight";
    let dir = sd_variant("missing", &|t| t.retain(|(k, ..)| k != missing));
    assert_checkpoint_err(AutoencoderKL::load(&dir.0, device), missing);

    let missing_norm = "encoder.down_blocks.1.resnets.0.norm2.bias";
    let dir = sd_variant("missing-norm", &|t| t.retain(|(k, ..)| k != missing_norm));
    assert_checkpoint_err(AutoencoderKL::load(&dir.0, device), missing_norm);

    // a resnet time projection the VAE does not have
    let extra = "encoder.down_blocks.0.resnets.0.time_emb_proj.weight";
    let dir = sd_variant("extra", &|t| {
        t.push((extra.into(), Dtype::F32, vec![8, 4], vec![0u8; 8 * 4 * 4]))
    });
    assert_checkpoint_err(AutoencoderKL::load(&dir.0, device), extra);

    let shape = "quant_conv.weight";
    let dir = sd_variant("shape", &|t| {
        for e in t.iter_mut().filter(|e| e.0 == shape) {
            e.2 = vec![8, 8, 1];
        }
    });
    assert_checkpoint_err(AutoencoderKL::load(&dir.0, device), shape);

    // a config with use_quant_conv false on a checkpoint that has one
    let dir = sd_variant("no-quant-conv", &|_| {});
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.0.join("config.json")).unwrap()).unwrap();
    cfg["use_quant_conv"] = serde_json::json!(false);
    std::fs::write(dir.0.join("config.json"), cfg.to_string()).unwrap();
    assert_checkpoint_err(AutoencoderKL::load(&dir.0, device), "quant_conv.weight");

    // no weights file at all
    let dir = TempDir::new("no-weights");
    std::fs::copy(
        fixture_dir("sd").join("config.json"),
        dir.0.join("config.json"),
    )
    .unwrap();
    assert!(matches!(
        AutoencoderKL::load(&dir.0, device),
        Err(ModelError::Io { .. })
    ));
}

/// A checkpoint with the deprecated attention names (`query`, `key`, `value`, `proj_attn`)
/// loads as diffusers loads it.
fn deprecated_attention_keys(device: &Device) {
    let dir = sd_variant("deprecated", &|t| {
        for e in t.iter_mut() {
            for (new, old) in [
                (".to_q.", ".query."),
                (".to_k.", ".key."),
                (".to_v.", ".value."),
                (".to_out.0.", ".proj_attn."),
            ] {
                e.0 = e.0.replace(new, old);
            }
        }
        assert!(
            t.iter()
                .any(|e| e.0 == "encoder.mid_block.attentions.0.proj_attn.weight")
        );
    });
    let vae = AutoencoderKL::load(&dir.0, device).unwrap();
    let io = read_io("sd");
    let recon = vae
        .reconstruct(tensor(&io("x"), device), None, &ctx())
        .unwrap();
    check(
        "sd (deprecated keys)",
        "reconstruction",
        recon,
        &io("reconstruction"),
    );
}

/// save_pretrained → load reproduces the config and the outputs; a random-init model of a
/// small config runs with the right shapes.
fn round_trip_and_random_init(device: &Device) {
    let vae = AutoencoderKL::load(&fixture_dir("noquant_f16"), device).unwrap();
    let tmp = TempDir::new("rt");
    vae.save_pretrained(&tmp.0).unwrap();
    let back = AutoencoderKL::load(&tmp.0, device).unwrap();
    assert_eq!(back.config(), vae.config());
    let io = read_io("noquant_f16");
    let run = |m: &AutoencoderKL| {
        values(
            m.reconstruct(tensor(&io("x"), device), None, &ctx())
                .unwrap(),
        )
    };
    let err = max_abs_err(&run(&vae), &run(&back));
    assert!(err <= 1e-5, "round trip changed the outputs by {err}");

    let cfg = AutoencoderKlConfig {
        in_channels: 1,
        out_channels: 2,
        down_block_types: vec!["DownEncoderBlock2D".into(); 2],
        up_block_types: vec!["UpDecoderBlock2D".into(); 2],
        block_out_channels: vec![4, 8],
        norm_num_groups: 2,
        latent_channels: 3,
        ..AutoencoderKlConfig::default()
    };
    let model = cfg.init(device).unwrap();
    let dist = model
        .encode(Tensor::ones([2, 1, 8, 6], device), &ctx())
        .unwrap();
    assert_eq!(dist.mean.dims(), [2, 3, 4, 3]);
    assert_eq!(dist.logvar.dims(), [2, 3, 4, 3]);
    let out = model.decode(dist.mode(), &ctx()).unwrap();
    assert_eq!(out.dims(), [2, 2, 8, 6]);
    let mut n = 0;
    model.for_each_layer(&mut |_| n += 1);
    // enc: conv_in, 2 resnets (+1 shortcut), down conv, mid 2×2 convs + 6 attention layers,
    // conv_out; quant_conv, post_quant_conv; dec: conv_in, mid 4 + 6, 2×2 resnets × 2 convs
    // (+1 shortcut), up conv, conv_out
    assert_eq!(
        n,
        (1 + 4 + 1 + 1 + 4 + 6 + 1) + 2 + (1 + 4 + 6 + 8 + 1 + 1 + 1)
    );
}

macro_rules! backend_tests {
    ($name:ident, $device:expr) => {
        mod $name {
            use burn::tensor::Device;

            fn device() -> Device {
                $device
            }

            #[test]
            fn parity() {
                super::parity(&device());
            }

            #[test]
            fn scaling() {
                super::scaling(&device());
            }

            #[test]
            fn distribution() {
                super::distribution(&device());
            }

            #[test]
            fn layer_names() {
                super::layer_names(&device());
            }

            #[test]
            fn taps() {
                super::taps(&device());
            }

            #[test]
            fn input_errors() {
                super::input_errors(&device());
            }

            #[test]
            fn checkpoint_errors() {
                super::checkpoint_errors(&device());
            }

            #[test]
            fn deprecated_attention_keys() {
                super::deprecated_attention_keys(&device());
            }

            #[test]
            fn round_trip_and_random_init() {
                super::round_trip_and_random_init(&device());
            }
        }
    };
}

#[cfg(feature = "flex")]
backend_tests!(flex, Device::flex());

/// The deprecated ndarray device (kept building and tested, docs/design.md §2).
#[cfg(feature = "ndarray")]
#[allow(deprecated)]
fn ndarray_device() -> Device {
    Device::ndarray()
}

#[cfg(feature = "ndarray")]
backend_tests!(ndarray, super::ndarray_device());

#[cfg(feature = "wgpu")]
backend_tests!(wgpu, Device::wgpu(burn::tensor::DeviceKind::DefaultDevice));

// ---------------------------------------------------------------------------------
// Config parsing (no tensors)

fn sd_config_json() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture_dir("sd").join("config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `AutoencoderKlConfig::from_json` of the sd config with `key` set to `value`.
fn with(key: &str, value: serde_json::Value) -> Result<AutoencoderKlConfig, ModelError> {
    let mut v = sd_config_json();
    v.as_object_mut().unwrap().insert(key.into(), value);
    AutoencoderKlConfig::from_json(&v)
}

fn assert_config_err(r: Result<AutoencoderKlConfig, ModelError>, option: &str) {
    match r {
        Err(ModelError::Config(msg)) => {
            assert!(msg.contains(option), "'{msg}' should name '{option}'")
        }
        other => panic!("expected a Config error naming {option}, got {other:?}"),
    }
}

#[test]
fn config_parses_fixtures_and_defaults() {
    for name in FIXTURES {
        AutoencoderKlConfig::from_dir(&fixture_dir(name)).unwrap();
    }
    let sd = AutoencoderKlConfig::from_json(&sd_config_json()).unwrap();
    assert_eq!(sd.block_out_channels, vec![8, 16]);
    assert!(sd.use_quant_conv && sd.mid_block_add_attention);
    assert_eq!(sd.shift_factor, None);
    // diffusers' defaults
    let d = AutoencoderKlConfig::from_json(&serde_json::json!({})).unwrap();
    assert_eq!(d, AutoencoderKlConfig::default());
    assert_eq!(
        (
            d.in_channels,
            d.latent_channels,
            d.norm_num_groups,
            d.layers_per_block
        ),
        (3, 4, 32, 1)
    );
    assert_eq!(d.scaling_factor, 0.18215);
    assert!(d.force_upcast && d.use_quant_conv && d.use_post_quant_conv);
    // the SD 1.x VAE config validates and counts diffusers' 83,653,863 parameters
    let sd15 = AutoencoderKlConfig::stable_diffusion();
    sd15.validate().unwrap();
    assert_eq!(sd15.param_count(), 83_653_863);
    // a real SD VAE config.json (runwayml/stable-diffusion-v1-5 vae, with metadata keys)
    let real = serde_json::json!({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.6.0",
        "_name_or_path": "runwayml/stable-diffusion-v1-5",
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 512,
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
    });
    let parsed = AutoencoderKlConfig::from_json(&real).unwrap();
    assert_eq!(parsed.param_count(), sd15.param_count());
    // force_upcast is accepted either way; sample_size may be [h, w]
    with("force_upcast", serde_json::json!(false)).unwrap();
    with("sample_size", serde_json::json!([32, 48])).unwrap();
    with("act_fn", serde_json::json!("swish")).unwrap();
    with("shift_factor", serde_json::json!(0.1159)).unwrap();
}

#[test]
fn param_count_matches_the_fixtures() {
    for name in FIXTURES {
        let cfg = AutoencoderKlConfig::from_dir(&fixture_dir(name)).unwrap();
        let bytes =
            std::fs::read(fixture_dir(name).join("diffusion_pytorch_model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let n: usize = st
            .tensors()
            .iter()
            .map(|(_, v)| v.shape().iter().product::<usize>())
            .sum();
        assert_eq!(cfg.param_count(), n as u64, "{name}");
    }
}

#[test]
fn config_errors_name_the_option() {
    assert_config_err(
        with(
            "down_block_types",
            serde_json::json!(["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]),
        ),
        "down_block_types",
    );
    assert_config_err(
        with(
            "up_block_types",
            serde_json::json!(["UpDecoderBlock2D", "AttnUpDecoderBlock2D"]),
        ),
        "up_block_types",
    );
    assert_config_err(with("act_fn", serde_json::json!("gelu")), "act_fn");
    assert_config_err(
        with("latents_mean", serde_json::json!([0.1, 0.2, 0.3, 0.4])),
        "latents_mean",
    );
    assert_config_err(
        with("latents_std", serde_json::json!([1.0, 1.0, 1.0, 1.0])),
        "latents_std",
    );
    assert_config_err(with("norm_type", serde_json::json!("spatial")), "norm_type");
    assert_config_err(
        with("layers_per_block", serde_json::json!(-1)),
        "layers_per_block",
    );
    assert_config_err(
        with("layers_per_block", serde_json::json!(0)),
        "layers_per_block",
    );
    assert_config_err(
        with("latent_channels", serde_json::json!(0)),
        "latent_channels",
    );
    assert_config_err(
        with("scaling_factor", serde_json::json!(0.0)),
        "scaling_factor",
    );
    assert_config_err(
        with("scaling_factor", serde_json::json!("x")),
        "scaling_factor",
    );
    assert_config_err(with("shift_factor", serde_json::json!("x")), "shift_factor");
    assert_config_err(
        with("_class_name", serde_json::json!("UNet2DModel")),
        "_class_name",
    );
    // groups must divide every width
    assert_config_err(
        with("norm_num_groups", serde_json::json!(3)),
        "norm_num_groups",
    );
    assert_config_err(
        with("block_out_channels", serde_json::json!([8, 10])),
        "block_out_channels[1]",
    );
    // one block type per level
    assert_config_err(
        with("block_out_channels", serde_json::json!([8, 16, 16])),
        "block_out_channels",
    );
    assert_config_err(
        with("block_out_channels", serde_json::json!([])),
        "block_out_channels",
    );
}

#[test]
fn config_errors_come_from_the_file() {
    let dir = TempDir::new("bad-config");
    let mut v = sd_config_json();
    v["act_fn"] = serde_json::json!("relu");
    std::fs::write(dir.0.join("config.json"), v.to_string()).unwrap();
    match AutoencoderKL::load(&dir.0, &Device::default()) {
        Err(ModelError::Config(msg)) => {
            assert!(
                msg.contains("act_fn") && msg.contains("config.json"),
                "{msg}"
            )
        }
        other => panic!("expected a Config error, got {other:?}"),
    }
}

/// Huge sizes are refused by the limits before any layer is allocated.
fn limit_err(r: Result<(), ModelError>, field: &str) {
    match r {
        Err(ModelError::Limit(e)) => {
            let msg = e.to_string();
            assert!(msg.contains(field) && msg.contains("config.json"), "{msg}")
        }
        other => panic!("expected a Limit error naming {field}, got {other:?}"),
    }
}

#[test]
fn sizes_are_checked_before_allocating() {
    let mut cfg = AutoencoderKlConfig::stable_diffusion();
    cfg.block_out_channels = vec![1 << 20; 4];
    limit_err(cfg.validate(), "block_out_channels");
    // init refuses it as well (nothing allocated: this would need petabytes)
    assert!(matches!(
        cfg.init(&Device::default()),
        Err(ModelError::Limit(_))
    ));
    let mut cfg = AutoencoderKlConfig::stable_diffusion();
    cfg.latent_channels = usize::MAX / 2;
    limit_err(cfg.validate(), "latent_channels");
    let small = Limits {
        max_params: 1_000_000,
        ..Limits::DEFAULT
    };
    match AutoencoderKlConfig::stable_diffusion().validate_with_limits(&small) {
        Err(ModelError::Limit(_)) => {}
        other => panic!("expected a Limit error, got {other:?}"),
    }
    // too many levels for any image
    let cfg = AutoencoderKlConfig {
        block_out_channels: vec![32; 40],
        down_block_types: vec!["DownEncoderBlock2D".into(); 40],
        up_block_types: vec!["UpDecoderBlock2D".into(); 40],
        ..AutoencoderKlConfig::default()
    };
    assert!(matches!(cfg.validate(), Err(ModelError::Config(_))));
}
