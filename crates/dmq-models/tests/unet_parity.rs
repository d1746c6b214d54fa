//! UNet2DModel parity with diffusers (fixtures from `scripts/fixtures/unet_parity.py`:
//! random-weight diffusers models saved with `save_pretrained`, fixed inputs and diffusers'
//! outputs), layer inventory against diffusers' module names, strict loading errors,
//! unsupported config options, and the save → load round trip. Tensor tests run on every
//! enabled backend through `backend_tests!`.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use dmq_models::layers::LayerKind;
use dmq_models::unet::{UNet2DModel, UNetConfig};
use dmq_models::{
    Conditioning, Denoiser, ForwardCtx, LayerRecorder, ModelError, StepContext, TapTensor, Taps,
    forward_for_taps, layer_inventory,
};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

/// Max abs error allowed against diffusers (f32 on CPU and wgpu).
const TOL: f32 = 1e-4;

/// Every fixture directory; `nomid_f16` holds f16 weights.
const FIXTURES: [&str; 4] = ["base", "class3", "heads", "nomid_f16"];

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join("unet")
        .join(name)
}

/// A scratch directory unique to this process and tag (removed on drop).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("dmq-unet-test-{}-{tag}", std::process::id()));
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
    sample_size: usize,
    conv_linear_modules: Vec<String>,
}

fn expected(name: &str) -> Expected {
    let text = std::fs::read_to_string(fixture_dir(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The fixture's inputs and diffusers outputs.
struct Io {
    x: (Vec<f32>, Vec<usize>),
    t: Vec<f32>,
    t_single: Vec<f32>,
    class: Option<Vec<i64>>,
    out: (Vec<f32>, Vec<usize>),
    out_single: Vec<f32>,
}

fn read_io(name: &str) -> Io {
    let bytes = std::fs::read(fixture_dir(name).join("io.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |k: &str| {
        let v = st.tensor(k).unwrap();
        assert_eq!(v.dtype(), Dtype::F32, "{k}");
        let data = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect::<Vec<_>>();
        (data, v.shape().to_vec())
    };
    let class = st.tensor("class_labels").ok().map(|v| {
        assert_eq!(v.dtype(), Dtype::I64);
        v.data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    });
    Io {
        x: f32s("x"),
        t: f32s("t").0,
        t_single: f32s("t_single").0,
        class,
        out: f32s("out"),
        out_single: f32s("out_single").0,
    }
}

fn tensor4(v: &(Vec<f32>, Vec<usize>), device: &Device) -> Tensor<4> {
    let s = &v.1;
    Tensor::from_data(
        TensorData::new(v.0.clone(), [s[0], s[1], s[2], s[3]]),
        device,
    )
}

fn tensor1(v: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
}

fn labels(v: &Option<Vec<i64>>, device: &Device) -> Option<Conditioning> {
    v.as_ref().map(|l| {
        Conditioning::Class(Tensor::from_data(
            TensorData::new(l.clone(), [l.len()]),
            device,
        ))
    })
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

// ---------------------------------------------------------------------------------
// Per-backend test bodies

/// Loads every fixture and compares the output with diffusers', for per-batch timesteps and
/// for one timestep broadcast over the batch.
fn parity(device: &Device) {
    for name in FIXTURES {
        let model = UNet2DModel::from_pretrained(&fixture_dir(name), device)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let io = read_io(name);
        let out = model
            .forward(
                tensor4(&io.x, device),
                tensor1(&io.t, device),
                labels(&io.class, device),
                &ctx(),
            )
            .unwrap();
        assert_eq!(out.dims().to_vec(), io.out.1, "{name}: output shape");
        let err = max_abs_err(&values(out), &io.out.0);
        let out1 = model
            .forward(
                tensor4(&io.x, device),
                tensor1(&io.t_single, device),
                labels(&io.class, device),
                &ctx(),
            )
            .unwrap();
        let err1 = max_abs_err(&values(out1), &io.out_single);
        eprintln!(
            "unet parity {name}: max abs err {err:.3e} (per-sample t), {err1:.3e} (broadcast t)"
        );
        assert!(err <= TOL, "{name}: max abs err {err} > {TOL}");
        assert!(
            err1 <= TOL,
            "{name}: broadcast-t max abs err {err1} > {TOL}"
        );
    }
}

/// The quantizable layers are diffusers' Conv2d/Linear modules (plus the attention
/// products), `for_each_layer` visits them in forward (call) order, and MACs are counted.
fn inventory(device: &Device) {
    for name in FIXTURES {
        let model = UNet2DModel::from_pretrained(&fixture_dir(name), device).unwrap();
        let exp = expected(name);
        assert_eq!(model.info().sample_size, exp.sample_size);
        let calls = layer_inventory(&model, device).unwrap();

        let mut ours: Vec<String> = calls
            .iter()
            .filter(|c| c.kind != LayerKind::Matmul)
            .map(|c| c.name.clone())
            .collect();
        ours.sort();
        let mut theirs = exp.conv_linear_modules.clone();
        theirs.sort();
        assert_eq!(ours, theirs, "{name}: conv/linear layer names");

        // matmuls come in qk/sv pairs, one per attention
        for c in calls.iter().filter(|c| c.kind == LayerKind::Matmul) {
            assert!(
                c.name.ends_with(".qk") || c.name.ends_with(".sv"),
                "{}",
                c.name
            );
            assert!(c.weight_shape.is_empty());
            let attn = c.name.rsplit_once('.').unwrap().0;
            assert!(theirs.contains(&format!("{attn}.to_q")), "{}", c.name);
        }

        // for_each_layer order == forward call order, and kinds agree
        let mut visited = Vec::new();
        model.for_each_layer(&mut |l| visited.push((l.name().to_string(), l.kind())));
        let called: Vec<_> = calls.iter().map(|c| (c.name.clone(), c.kind)).collect();
        assert_eq!(visited, called, "{name}: for_each_layer order");
        let mut model = model;
        let mut visited_mut = Vec::new();
        model.for_each_layer_mut(&mut |l| visited_mut.push((l.name().to_string(), l.kind())));
        assert_eq!(visited_mut, called, "{name}: for_each_layer_mut order");

        // hand count for conv_in: B=1, C_out·H·W·C_in·3·3
        let cfg = model.config();
        let s = exp.sample_size;
        let conv_in = calls.iter().find(|c| c.name == "conv_in").unwrap();
        let c0 = cfg.block_out_channels[0];
        assert_eq!(conv_in.weight_shape, vec![c0, cfg.in_channels, 3, 3]);
        assert_eq!(conv_in.macs, (c0 * s * s * cfg.in_channels * 9) as u64);
        // a downsampler conv runs at half resolution
        if let Some(d) = calls
            .iter()
            .find(|c| c.name == "down_blocks.0.downsamplers.0.conv")
        {
            let (h, p) = (s, cfg.downsample_padding);
            let ho = if p == 0 {
                (h + 1 - 3) / 2 + 1
            } else {
                (h + 2 * p - 3) / 2 + 1
            };
            assert_eq!(d.macs, (c0 * ho * ho * c0 * 9) as u64, "{name}");
        }
        // time_emb_proj: one row per batch element
        let tp = calls
            .iter()
            .find(|c| c.name == "down_blocks.0.resnets.0.time_emb_proj")
            .unwrap();
        assert_eq!(tp.macs, (cfg.time_embed_dim() * c0) as u64);
    }
    // attention matmul MACs: base's down_blocks.1.attentions.0 has 16 channels, 4 heads of 4,
    // at 4x4 = 16 positions: qk = sv = heads·N·d·N
    let model = UNet2DModel::from_pretrained(&fixture_dir("base"), device).unwrap();
    let calls = layer_inventory(&model, device).unwrap();
    for op in ["qk", "sv"] {
        let c = calls
            .iter()
            .find(|c| c.name == format!("down_blocks.1.attentions.0.{op}"))
            .unwrap();
        assert_eq!(c.macs, 4 * 16 * 4 * 16, "{op}");
    }
}

/// save_pretrained → from_pretrained reproduces the config and the outputs exactly.
fn round_trip(device: &Device) {
    for name in ["base", "class3"] {
        let model = UNet2DModel::from_pretrained(&fixture_dir(name), device).unwrap();
        let tmp = TempDir::new(&format!("rt-{name}"));
        model.save_pretrained(&tmp.0).unwrap();
        let back = UNet2DModel::from_pretrained(&tmp.0, device).unwrap();
        assert_eq!(back.config(), model.config());
        let io = read_io(name);
        let run = |m: &UNet2DModel| {
            values(
                m.forward(
                    tensor4(&io.x, device),
                    tensor1(&io.t, device),
                    labels(&io.class, device),
                    &ctx(),
                )
                .unwrap(),
            )
        };
        // Same weights, same kernels; GPU reductions may reorder sums, so not bitwise.
        let err = max_abs_err(&run(&model), &run(&back));
        assert!(
            err <= 1e-5,
            "{name}: round trip changed the outputs by {err}"
        );
    }
    // a randomly initialised model round-trips too
    let mut cfg = UNetConfig::new(8, 1, 1, vec![8, 16]);
    cfg.norm_num_groups = Some(4);
    cfg.down_block_types = vec!["DownBlock2D".into(), "AttnDownBlock2D".into()];
    cfg.up_block_types = vec!["AttnUpBlock2D".into(), "UpBlock2D".into()];
    cfg.layers_per_block = 1;
    let model = UNet2DModel::new(&cfg, device).unwrap();
    let tmp = TempDir::new("rt-random");
    model.save_pretrained(&tmp.0).unwrap();
    let back = UNet2DModel::from_pretrained(&tmp.0, device).unwrap();
    let x = Tensor::<4>::ones([2, 1, 8, 8], device);
    let t = Tensor::<1>::from_floats([10.0, 20.0], device);
    let a = values(model.forward(x.clone(), t.clone(), None, &ctx()).unwrap());
    let b = values(back.forward(x, t, None, &ctx()).unwrap());
    let err = max_abs_err(&a, &b);
    assert!(
        err <= 1e-5,
        "random model: round trip changed the outputs by {err}"
    );
}

/// Block and unit outputs can be tapped under their diffusers paths.
fn taps(device: &Device) {
    let model = UNet2DModel::from_pretrained(&fixture_dir("base"), device).unwrap();
    let io = read_io("base");
    let names = [
        "down_blocks.0",
        "down_blocks.1",
        "mid_block",
        "up_blocks.0",
        "up_blocks.1",
        "down_blocks.1.resnets.0",
        "down_blocks.1.attentions.1",
        "mid_block.attentions.0",
        "up_blocks.0.upsamplers.0",
    ];
    let taps = Taps::new(names);
    let c = ctx().with_taps(&taps);
    model
        .forward(tensor4(&io.x, device), tensor1(&io.t, device), None, &c)
        .unwrap();
    let got = taps.take();
    let dims = |n: &str| match &got[n] {
        TapTensor::R4(t) => t.dims(),
        other => panic!("{n}: {other:?}"),
    };
    assert_eq!(got.len(), names.len());
    assert_eq!(dims("down_blocks.0"), [2, 8, 4, 4]);
    assert_eq!(dims("down_blocks.1"), [2, 16, 4, 4]);
    assert_eq!(dims("mid_block"), [2, 16, 4, 4]);
    assert_eq!(dims("up_blocks.0"), [2, 16, 8, 8]);
    assert_eq!(dims("up_blocks.1"), [2, 8, 8, 8]);
    assert_eq!(dims("down_blocks.1.resnets.0"), [2, 16, 4, 4]);
    assert_eq!(dims("up_blocks.0.upsamplers.0"), [2, 16, 8, 8]);

    // Stopping at the tap: the same tensor, fewer layers computed, no output.
    let full_calls = LayerRecorder::default();
    let full = Taps::new(["down_blocks.1.resnets.0"]);
    let out = model.forward(
        tensor4(&io.x, device),
        tensor1(&io.t, device),
        None,
        &ctx().with_taps(&full).with_recorder(&full_calls),
    );
    assert!(forward_for_taps(out).unwrap().is_some());
    let early_calls = LayerRecorder::default();
    let early = Taps::new(["down_blocks.1.resnets.0"]).stop_when_complete();
    let out = model.forward(
        tensor4(&io.x, device),
        tensor1(&io.t, device),
        None,
        &ctx().with_taps(&early).with_recorder(&early_calls),
    );
    assert!(matches!(out, Err(ModelError::TapsComplete)));
    let (n_full, n_early) = (full_calls.calls().len(), early_calls.calls().len());
    assert!(n_early < n_full / 2, "{n_early} of {n_full} layer calls");
    let last = early_calls.calls().last().unwrap().name.clone();
    assert!(last.starts_with("down_blocks.1.resnets.0."), "{last}");
    let value = |t: &Taps| match t.take().remove("down_blocks.1.resnets.0") {
        Some(TapTensor::R4(t)) => t.into_data().try_to_vec::<f32>().unwrap(),
        other => panic!("{other:?}"),
    };
    // same ops on the same inputs; a tolerance only because wgpu's autotune may pick another
    // kernel on a later call
    let (a, b) = (value(&full), value(&early));
    assert_eq!(a.len(), b.len());
    let max = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(max <= 1e-5, "max |full − early| = {max}");
}

/// Input errors: wrong shapes, missing/extra class labels, labels out of range.
fn input_errors(device: &Device) {
    let class_model = UNet2DModel::from_pretrained(&fixture_dir("class3"), device).unwrap();
    let x = Tensor::<4>::zeros([2, 1, 16, 16], device);
    let t = Tensor::<1>::from_floats([1.0, 2.0], device);
    let lab = |v: [i64; 2]| {
        Some(Conditioning::Class(Tensor::<1, Int>::from_data(
            TensorData::new(v.to_vec(), [2]),
            device,
        )))
    };
    assert!(matches!(
        class_model.forward(x.clone(), t.clone(), None, &ctx()),
        Err(ModelError::Config(_))
    ));
    assert!(matches!(
        class_model.forward(x.clone(), t.clone(), lab([0, 5]), &ctx()),
        Err(ModelError::Shape { .. })
    ));
    assert!(
        class_model
            .forward(x.clone(), t.clone(), lab([0, 4]), &ctx())
            .is_ok()
    );
    // 3 levels: H must be a multiple of 4
    assert!(matches!(
        class_model.forward(
            Tensor::zeros([2, 1, 10, 10], device),
            t.clone(),
            lab([0, 1]),
            &ctx()
        ),
        Err(ModelError::Shape { .. })
    ));
    // 3 timesteps for a batch of 2
    assert!(matches!(
        class_model.forward(
            x,
            Tensor::from_floats([1.0, 2.0, 3.0], device),
            lab([0, 1]),
            &ctx()
        ),
        Err(ModelError::Shape { .. })
    ));
    let uncond = UNet2DModel::from_pretrained(&fixture_dir("base"), device).unwrap();
    let x = Tensor::<4>::zeros([2, 3, 8, 8], device);
    assert!(matches!(
        uncond.forward(x.clone(), t.clone(), lab([0, 1]), &ctx()),
        Err(ModelError::Config(_))
    ));
    assert!(matches!(
        uncond.forward(Tensor::zeros([2, 2, 8, 8], device), t, None, &ctx()),
        Err(ModelError::Shape { .. })
    ));
}

/// A safetensors entry: key, dtype, shape, bytes.
type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// A copy of the `base` fixture in a scratch directory, its tensors passed through `edit`.
fn base_variant(tag: &str, edit: &dyn Fn(&mut Vec<RawTensor>)) -> TempDir {
    let src = fixture_dir("base");
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

/// A checkpoint with a missing or an extra tensor, or a wrong shape, is a Checkpoint error
/// naming the key.
fn checkpoint_errors(device: &Device) {
    let write = base_variant;
    let missing_key = "down_blocks.1.attentions.0.to_k.weight";
    let dir = write("missing", &|t| t.retain(|(k, ..)| k != missing_key));
    match UNet2DModel::from_pretrained(&dir.0, device) {
        Err(ModelError::Checkpoint { reason, .. }) => {
            assert!(reason.contains(missing_key), "{reason}")
        }
        other => panic!("expected a Checkpoint error, got {other:?}"),
    }
    let extra_key = "down_blocks.0.resnets.0.conv_shortcut.weight";
    let dir = write("extra", &|t| {
        t.push((
            extra_key.into(),
            Dtype::F32,
            vec![8, 8, 1, 1],
            vec![0u8; 8 * 8 * 4],
        ))
    });
    match UNet2DModel::from_pretrained(&dir.0, device) {
        Err(ModelError::Checkpoint { reason, .. }) => {
            assert!(reason.contains(extra_key), "{reason}")
        }
        other => panic!("expected a Checkpoint error, got {other:?}"),
    }
    let shape_key = "conv_out.bias";
    let dir = write("shape", &|t| {
        for e in t.iter_mut().filter(|e| e.0 == shape_key) {
            e.2 = vec![1];
            e.3.truncate(4);
        }
    });
    match UNet2DModel::from_pretrained(&dir.0, device) {
        Err(ModelError::Checkpoint { reason, .. }) => {
            assert!(reason.contains(shape_key), "{reason}")
        }
        other => panic!("expected a Checkpoint error, got {other:?}"),
    }
}

/// A checkpoint with the deprecated attention names (`query`, `key`, `value`, `proj_attn`)
/// loads as diffusers loads it.
fn deprecated_attention_keys(device: &Device) {
    let dir = base_variant("deprecated", &|t| {
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
                .any(|e| e.0 == "mid_block.attentions.0.proj_attn.weight")
        );
    });
    let model = UNet2DModel::from_pretrained(&dir.0, device).unwrap();
    let io = read_io("base");
    let out = model
        .forward(tensor4(&io.x, device), tensor1(&io.t, device), None, &ctx())
        .unwrap();
    let err = max_abs_err(&values(out), &io.out.0);
    assert!(err <= TOL, "max abs err {err}");
}

/// A random-init model of a small config runs and has the right output shape.
fn random_init(device: &Device) {
    let mut cfg = UNetConfig::new(8, 2, 4, vec![8, 8, 16]);
    cfg.norm_num_groups = Some(2);
    cfg.down_block_types = vec![
        "DownBlock2D".into(),
        "AttnDownBlock2D".into(),
        "DownBlock2D".into(),
    ];
    cfg.up_block_types = vec![
        "UpBlock2D".into(),
        "AttnUpBlock2D".into(),
        "UpBlock2D".into(),
    ];
    cfg.layers_per_block = 1;
    cfg.num_class_embeds = Some(3);
    let model = UNet2DModel::new(&cfg, device).unwrap();
    let info = model.info();
    assert_eq!(
        (info.in_channels, info.out_channels, info.sample_size),
        (2, 4, 8)
    );
    assert_eq!(info.num_classes, Some(3));
    let out = model
        .forward(
            Tensor::zeros([3, 2, 8, 8], device),
            Tensor::from_floats([7.0], device),
            Some(Tensor::<1, Int>::from_ints([0, 1, 2], device).into()),
            &ctx(),
        )
        .unwrap();
    assert_eq!(out.dims(), [3, 4, 8, 8]);
    let eps = model
        .predict_eps(
            Tensor::zeros([1, 2, 8, 8], device),
            Tensor::from_floats([7.0], device),
            Some(Tensor::<1, Int>::from_ints([0], device).into()),
            &ctx(),
        )
        .unwrap();
    assert_eq!(eps.dims(), [1, 2, 8, 8]);
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
            fn inventory() {
                super::inventory(&device());
            }

            #[test]
            fn round_trip() {
                super::round_trip(&device());
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
            fn random_init() {
                super::random_init(&device());
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

fn base_config_json() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture_dir("base").join("config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `UNetConfig::from_json` of the base config with `key` set to `value`.
fn with(key: &str, value: serde_json::Value) -> Result<UNetConfig, ModelError> {
    let mut v = base_config_json();
    v.as_object_mut().unwrap().insert(key.into(), value);
    UNetConfig::from_json(&v)
}

fn assert_config_err(r: Result<UNetConfig, ModelError>, option: &str) {
    match r {
        Err(ModelError::Config(msg)) => {
            assert!(msg.contains(option), "'{msg}' should name '{option}'")
        }
        other => panic!("expected a Config error naming {option}, got {other:?}"),
    }
}

#[test]
fn fixture_configs_parse() {
    for name in FIXTURES {
        let cfg = UNetConfig::from_dir(&fixture_dir(name)).unwrap();
        // serialising and parsing again is the identity
        let back: serde_json::Value = serde_json::from_str(&cfg.to_json_string().unwrap()).unwrap();
        assert_eq!(UNetConfig::from_json(&back).unwrap(), cfg, "{name}");
    }
    let cfg = UNetConfig::from_dir(&fixture_dir("class3")).unwrap();
    assert_eq!(cfg.num_class_embeds, Some(5));
    assert_eq!(cfg.time_embed_dim(), 24);
    assert_eq!(cfg.attention_heads(12), (1, 12));
    let cfg = UNetConfig::from_dir(&fixture_dir("heads")).unwrap();
    assert_eq!(cfg.attention_heads(12), (2, 5));
    // harmless metadata is accepted
    let mut v = base_config_json();
    let m = v.as_object_mut().unwrap();
    m.insert("_name_or_path".into(), "somewhere".into());
    m.insert("dropout".into(), 0.1.into());
    m.insert("num_train_timesteps".into(), 1000.into());
    UNetConfig::from_json(&v).unwrap();
}

#[test]
fn unsupported_config_options() {
    use serde_json::json;
    assert_config_err(
        with("time_embedding_type", json!("fourier")),
        "time_embedding_type",
    );
    assert_config_err(
        with("time_embedding_type", json!("learned")),
        "time_embedding_type",
    );
    assert_config_err(with("act_fn", json!("gelu")), "act_fn");
    assert_config_err(
        with("resnet_time_scale_shift", json!("scale_shift")),
        "resnet_time_scale_shift",
    );
    assert_config_err(
        with("class_embed_type", json!("timestep")),
        "class_embed_type",
    );
    assert_config_err(
        with("class_embed_type", json!("identity")),
        "class_embed_type",
    );
    assert_config_err(with("downsample_type", json!("resnet")), "downsample_type");
    assert_config_err(with("upsample_type", json!("resnet")), "upsample_type");
    assert_config_err(
        with("mid_block_type", json!("UNetMidBlock2DCrossAttn")),
        "mid_block_type",
    );
    assert_config_err(
        with(
            "down_block_types",
            json!(["DownBlock2D", "SkipDownBlock2D"]),
        ),
        "down_block_types",
    );
    assert_config_err(
        with(
            "up_block_types",
            json!(["AttnUpBlock2D", "CrossAttnUpBlock2D"]),
        ),
        "up_block_types",
    );
    assert_config_err(
        with("cross_attention_dim", json!(64)),
        "cross_attention_dim",
    );
    assert_config_err(
        with("_class_name", json!("UNet2DConditionModel")),
        "_class_name",
    );
    assert_config_err(with("norm_num_groups", json!(3)), "norm_num_groups");
    assert_config_err(with("norm_num_groups", json!(null)), "norm_num_groups");
    assert_config_err(with("attention_head_dim", json!(32)), "attention_head_dim");
    assert_config_err(with("layers_per_block", json!("two")), "layers_per_block");
    assert_config_err(
        with("block_out_channels", json!([8, 16, 32])),
        "block_out_channels",
    );
    assert_config_err(with("sample_size", json!([8, 16])), "sample_size");

    // through from_pretrained: the same error, before any weight is read
    let dir = TempDir::new("bad-config");
    let mut v = base_config_json();
    v.as_object_mut()
        .unwrap()
        .insert("resnet_time_scale_shift".into(), json!("scale_shift"));
    std::fs::write(dir.0.join("config.json"), v.to_string()).unwrap();
    #[cfg(feature = "flex")]
    assert_config_err(
        UNet2DModel::from_pretrained(&dir.0, &Device::flex()).map(|m| m.config().clone()),
        "resnet_time_scale_shift",
    );
}
