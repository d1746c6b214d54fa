//! DiT parity with diffusers' `DiTTransformer2DModel` (fixtures from
//! `scripts/fixtures/dit_parity.py`: random-weight tiny models, one stored in bfloat16),
//! the layer inventory against diffusers' module names and call order, MACs by hand,
//! strict config/checkpoint errors, and save → load round trips.
//!
//! The tensor tests run on every enabled backend through `backend_tests!`.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use dmq_models::dit::{DiT, DiTConfig};
use dmq_models::layers::LayerKind;
use dmq_models::{
    Conditioning, Denoiser, ForwardCtx, LayerRecorder, ModelError, StepContext, TapTensor, Taps,
    io, layer_inventory,
};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{Value, json};

/// Required parity: max abs error against diffusers.
const TOL: f32 = 1e-4;

const FIXTURES: [&str; 3] = ["p2_c4_sigma_l2", "p4_c1_l1_affine", "p2_c1_sigma_l3_bf16"];

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dit")
        .join(name)
}

/// `io.safetensors` of a fixture: inputs, diffusers outputs, layer-name metadata.
struct FixtureIo {
    bytes: Vec<u8>,
}

impl FixtureIo {
    fn load(name: &str) -> Self {
        let path = fixture_dir(name).join("io.safetensors");
        Self {
            bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }

    fn has(&self, key: &str) -> bool {
        SafeTensors::deserialize(&self.bytes)
            .unwrap()
            .tensor(key)
            .is_ok()
    }

    fn raw(&self, key: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let v = st.tensor(key).unwrap_or_else(|_| panic!("no tensor {key}"));
        (v.dtype(), v.shape().to_vec(), v.data().to_vec())
    }

    fn f32s(&self, key: &str) -> (Vec<f32>, Vec<usize>) {
        let (dtype, shape, data) = self.raw(key);
        assert_eq!(dtype, Dtype::F32, "{key}");
        let v = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (v, shape)
    }

    fn i64s(&self, key: &str) -> Vec<i64> {
        let (dtype, _, data) = self.raw(key);
        assert_eq!(dtype, Dtype::I64, "{key}");
        data.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn x(&self, key: &str, device: &Device) -> Tensor<4> {
        let (v, s) = self.f32s(key);
        Tensor::from_data(TensorData::new(v, [s[0], s[1], s[2], s[3]]), device)
    }

    fn t(&self, key: &str, device: &Device) -> Tensor<1> {
        let (v, s) = self.f32s(key);
        Tensor::from_data(TensorData::new(v, [s[0]]), device)
    }

    fn y(&self, key: &str, device: &Device) -> Tensor<1, Int> {
        let v = self.i64s(key);
        let n = v.len();
        Tensor::from_data(TensorData::new(v, [n]), device)
    }

    /// A list from the `fixture` metadata JSON object.
    fn meta_list(&self, key: &str) -> Vec<String> {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes).unwrap();
        let text = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("fixture"))
            .expect("no 'fixture' metadata")
            .clone();
        let v: Value = serde_json::from_str(&text).unwrap();
        serde_json::from_value(v[key].clone()).unwrap_or_else(|e| panic!("metadata {key}: {e}"))
    }
}

fn ctx() -> ForwardCtx<'static> {
    ForwardCtx::new(StepContext::single(500.0))
}

fn to_vec(t: Tensor<4>) -> (Vec<f32>, Vec<usize>) {
    let dims = t.dims().to_vec();
    (t.try_into_vec_as::<f32>().unwrap(), dims)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs `model` on the fixture inputs `x{suffix}`, `t{suffix}`, `y{suffix}` and returns
/// the max abs error against `out{suffix}`.
fn parity_error(model: &DiT, io: &FixtureIo, suffix: &str, device: &Device) -> f32 {
    let out = model
        .forward(
            io.x(&format!("x{suffix}"), device),
            io.t(&format!("t{suffix}"), device),
            Some(io.y(&format!("y{suffix}"), device).into()),
            &ctx(),
        )
        .unwrap();
    let (got, dims) = to_vec(out);
    let (want, shape) = io.f32s(&format!("out{suffix}"));
    assert_eq!(dims, shape, "output shape");
    max_abs_diff(&got, &want)
}

// ---------------------------------------------------------------------------------
// Per-backend test bodies

fn parity(name: &str, device: &Device) {
    let model = DiT::from_pretrained(fixture_dir(name), device).unwrap();
    let io = FixtureIo::load(name);
    let err = parity_error(&model, &io, "", device);
    eprintln!("dit parity {name}: max abs error {err:.3e}");
    assert!(err <= TOL, "{name}: max abs error {err} > {TOL}");
    if io.has("x_big") {
        let err = parity_error(&model, &io, "_big", device);
        eprintln!("dit parity {name} (2x sample size): max abs error {err:.3e}");
        assert!(err <= TOL, "{name} at 2x size: max abs error {err} > {TOL}");
    }
}

fn learned_sigma_info(device: &Device) {
    let model = DiT::from_pretrained(fixture_dir("p2_c4_sigma_l2"), device).unwrap();
    let info = model.info();
    assert_eq!(
        (info.in_channels, info.out_channels, info.sample_size),
        (4, 8, 8)
    );
    assert_eq!(info.num_classes, Some(3));
    // predict_eps keeps the first in_channels channels of the raw output.
    let io = FixtureIo::load("p2_c4_sigma_l2");
    let eps = model
        .predict_eps(
            io.x("x", device),
            io.t("t", device),
            Some(io.y("y", device).into()),
            &ctx(),
        )
        .unwrap();
    assert_eq!(eps.dims(), [4, 4, 8, 8]);
    let (want, _) = io.f32s("out");
    let (got, _) = to_vec(eps);
    let want_eps: Vec<f32> = want
        .chunks_exact(8 * 64)
        .flat_map(|sample| sample[..4 * 64].to_vec())
        .collect();
    assert!(max_abs_diff(&got, &want_eps) <= TOL);
}

fn inventory(device: &Device) {
    for name in FIXTURES {
        let model = DiT::from_pretrained(fixture_dir(name), device).unwrap();
        let io = FixtureIo::load(name);

        // Every diffusers Linear/Conv2d, in module order, is one of our layers (same order).
        let mut ours = Vec::new();
        model.for_each_layer(&mut |l| {
            if l.kind() != LayerKind::Matmul {
                ours.push(l.name().to_string());
            }
        });
        assert_eq!(
            ours,
            io.meta_list("linear_conv_names"),
            "{name}: layer names"
        );

        // The calls of one forward pass, in order (block 0's timestep MLP runs twice, as in
        // diffusers: once in the block, once for the final modulation).
        let calls = layer_inventory(&model, device).unwrap();
        let linear_conv: Vec<String> = calls
            .iter()
            .filter(|c| c.kind != LayerKind::Matmul)
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(
            linear_conv,
            io.meta_list("call_order"),
            "{name}: call order"
        );

        // Each attention contributes q·kᵀ then softmax·v, named after it.
        let cfg = model.config();
        let matmuls: Vec<String> = calls
            .iter()
            .filter(|c| c.kind == LayerKind::Matmul)
            .map(|c| c.name.clone())
            .collect();
        let want: Vec<String> = (0..cfg.num_layers)
            .flat_map(|i| {
                [
                    format!("transformer_blocks.{i}.attn1.qk"),
                    format!("transformer_blocks.{i}.attn1.sv"),
                ]
            })
            .collect();
        assert_eq!(matmuls, want, "{name}: matmuls");
    }
}

fn macs_by_hand(device: &Device) {
    // p2_c4_sigma_l2: D = 2·8 = 16, p = 2, C = 4, sample 8 → N = 4·4 = 16 tokens.
    let model = DiT::from_pretrained(fixture_dir("p2_c4_sigma_l2"), device).unwrap();
    let calls = layer_inventory(&model, device).unwrap();
    let find = |n: &str| {
        calls
            .iter()
            .find(|c| c.name == n)
            .unwrap_or_else(|| panic!("no call {n}"))
            .clone()
    };
    let (d, n, c, p) = (16u64, 16u64, 4u64, 2u64);
    let q = find("transformer_blocks.1.attn1.to_q");
    assert_eq!(q.kind, LayerKind::Linear);
    assert_eq!(q.weight_shape, vec![16, 16]);
    assert_eq!(q.macs, d * d * n); // in · out · tokens
    let ff = find("transformer_blocks.0.ff.net.0.proj");
    assert_eq!(ff.weight_shape, vec![64, 16]);
    assert_eq!(ff.macs, d * 4 * d * n);
    let ada = find("transformer_blocks.0.norm1.linear");
    assert_eq!(ada.macs, d * 6 * d); // one conditioning row per sample
    let out2 = find("proj_out_2");
    assert_eq!(out2.weight_shape, vec![(p * p * 8) as usize, 16]);
    assert_eq!(out2.macs, d * p * p * 8 * n);
    let conv = find("pos_embed.proj");
    assert_eq!(conv.kind, LayerKind::Conv2d);
    assert_eq!(conv.weight_shape, vec![16, 4, 2, 2]);
    assert_eq!(conv.macs, n * d * c * p * p);
    let qk = find("transformer_blocks.0.attn1.qk");
    assert_eq!(qk.kind, LayerKind::Matmul);
    assert_eq!(qk.macs, n * n * d); // N²·C per sample
    assert_eq!(find("transformer_blocks.0.attn1.sv").macs, n * n * d);

    // MACs scale with the batch.
    let rec = LayerRecorder::default();
    let b = 3;
    model
        .forward(
            Tensor::zeros([b, 4, 8, 8], device),
            Tensor::from_floats([1.0, 2.0, 3.0], device),
            Some(Tensor::<1, Int>::from_ints([0, 1, 3], device).into()),
            &ctx().with_recorder(&rec),
        )
        .unwrap();
    let qk3 = rec
        .calls()
        .into_iter()
        .find(|c| c.name == "transformer_blocks.0.attn1.qk")
        .unwrap();
    assert_eq!(qk3.macs, b * n * n * d);
}

fn taps(device: &Device) {
    let model = DiT::from_pretrained(fixture_dir("p2_c1_sigma_l3_bf16"), device).unwrap();
    let io = FixtureIo::load("p2_c1_sigma_l3_bf16");
    let taps = Taps::new(["transformer_blocks.0", "transformer_blocks.2"]);
    model
        .forward(
            io.x("x", device),
            io.t("t", device),
            Some(io.y("y", device).into()),
            &ctx().with_taps(&taps),
        )
        .unwrap();
    let got = taps.take();
    assert_eq!(got.len(), 2);
    for t in got.values() {
        match t {
            TapTensor::R3(t) => assert_eq!(t.dims(), [4, 16, 12]),
            other => panic!("expected R3, got {other:?}"),
        }
    }
}

fn input_errors(device: &Device) {
    let model = DiT::from_pretrained(fixture_dir("p2_c4_sigma_l2"), device).unwrap();
    let x = || Tensor::<4>::zeros([2, 4, 8, 8], device);
    let t = || Tensor::<1>::from_floats([1.0, 2.0], device);
    // No labels: the error explains the null label.
    let err = model.forward(x(), t(), None, &ctx()).unwrap_err();
    assert!(
        matches!(&err, ModelError::Shape { .. }) && err.to_string().contains("null label 3"),
        "{err}"
    );
    // Label beyond the null class.
    let err = model
        .forward(
            x(),
            t(),
            Some(Tensor::<1, Int>::from_ints([0, 4], device).into()),
            &ctx(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("label 4"), "{err}");
    // Null label itself is fine.
    model
        .forward(
            x(),
            t(),
            Some(Tensor::<1, Int>::from_ints([3, 3], device).into()),
            &ctx(),
        )
        .unwrap();
    // Wrong channels, wrong batch of t, size not a multiple of the patch.
    let y = || Some(Conditioning::Class(Tensor::from_ints([0, 1], device)));
    assert!(matches!(
        model.forward(Tensor::zeros([2, 3, 8, 8], device), t(), y(), &ctx()),
        Err(ModelError::Shape { .. })
    ));
    assert!(matches!(
        model.forward(x(), Tensor::from_floats([1.0], device), y(), &ctx()),
        Err(ModelError::Shape { .. })
    ));
    assert!(matches!(
        model.forward(Tensor::zeros([2, 4, 9, 9], device), t(), y(), &ctx()),
        Err(ModelError::Shape { .. })
    ));
}

/// Rewrites a safetensors file: drops `drop`, adds `add` (f32 tensors), keeps the rest.
fn rewrite_weights(bytes: &[u8], drop: &str, add: &[(&str, Vec<usize>)]) -> Vec<u8> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut names: Vec<&str> = st.names().into_iter().filter(|n| *n != drop).collect();
    names.sort();
    let added: Vec<(String, Vec<usize>, Vec<u8>)> = add
        .iter()
        .map(|(k, s)| {
            (
                k.to_string(),
                s.clone(),
                vec![0u8; 4 * s.iter().product::<usize>()],
            )
        })
        .collect();
    let mut views: Vec<(String, TensorView<'_>)> = names
        .into_iter()
        .map(|n| (n.to_string(), st.tensor(n).unwrap()))
        .collect();
    for (k, s, b) in &added {
        views.push((
            k.clone(),
            TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
        ));
    }
    safetensors::serialize(views, None).unwrap()
}

fn checkpoint_errors(device: &Device) {
    let dir = fixture_dir("p2_c4_sigma_l2");
    let cfg = DiTConfig::from_dir(&dir).unwrap();
    let weights = std::fs::read(dir.join(io::WEIGHTS_FILE)).unwrap();
    let load = |bytes: &[u8]| {
        io::load_weights_from_bytes(
            DiT::new(&cfg, device).unwrap(),
            bytes,
            Path::new("test.safetensors"),
            device,
        )
    };
    assert!(load(&weights).is_ok());

    let missing = "transformer_blocks.1.attn1.to_out.0.bias";
    match load(&rewrite_weights(&weights, missing, &[])) {
        Err(ModelError::Checkpoint { reason, .. }) => {
            assert!(reason.contains(missing), "{reason}")
        }
        other => panic!("expected a checkpoint error, got {other:?}"),
    }
    // An extra tensor, e.g. norm3 weights of an affine model loaded into a non-affine one.
    let extra = "transformer_blocks.0.norm3.weight";
    match load(&rewrite_weights(&weights, "", &[(extra, vec![16])])) {
        Err(ModelError::Checkpoint { reason, .. }) => assert!(reason.contains(extra), "{reason}"),
        other => panic!("expected a checkpoint error, got {other:?}"),
    }
    // A wrong shape.
    let key = "proj_out_2.weight";
    match load(&rewrite_weights(&weights, key, &[(key, vec![8, 16])])) {
        Err(ModelError::Checkpoint { reason, .. }) => assert!(reason.contains(key), "{reason}"),
        other => panic!("expected a checkpoint error, got {other:?}"),
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dmq_dit_{tag}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn outputs(model: &DiT, device: &Device) -> Vec<f32> {
    let io = FixtureIo::load("p2_c4_sigma_l2");
    let info = model.info();
    let s = info.sample_size;
    let (xv, _) = io.f32s("x");
    let n = 2 * info.in_channels * s * s;
    let x = Tensor::from_data(
        TensorData::new(
            xv.iter().cycle().take(n).copied().collect::<Vec<_>>(),
            [2, info.in_channels, s, s],
        ),
        device,
    );
    let null = info.num_classes.unwrap() as i64;
    let out = model
        .forward(
            x,
            Tensor::from_floats([10.0, 900.0], device),
            Some(Tensor::<1, Int>::from_ints([0, null], device).into()),
            &ctx(),
        )
        .unwrap();
    to_vec(out).0
}

fn save_load_round_trip(device: &Device) {
    // A fresh random model (PyTorch default init).
    let cfg = DiTConfig {
        num_attention_heads: 2,
        attention_head_dim: 4,
        in_channels: 2,
        out_channels: Some(4),
        num_layers: 2,
        sample_size: 8,
        patch_size: 4,
        num_embeds_ada_norm: Some(2),
        attention_bias: false,
        norm_elementwise_affine: true,
        ..Default::default()
    };
    let model = DiT::new(&cfg, device).unwrap();
    let dir = temp_dir("new");
    model.save_pretrained(&dir).unwrap();
    let loaded = DiT::from_pretrained(&dir, device).unwrap();
    assert_eq!(loaded.config(), &cfg);
    assert_eq!(outputs(&model, device), outputs(&loaded, device));
    std::fs::remove_dir_all(&dir).unwrap();

    // A diffusers checkpoint (bf16 on disk) → f32 → saved → reloaded: identical outputs.
    let model = DiT::from_pretrained(fixture_dir("p2_c1_sigma_l3_bf16"), device).unwrap();
    let dir = temp_dir("bf16");
    model.save_pretrained(&dir).unwrap();
    let loaded = DiT::from_pretrained(&dir, device).unwrap();
    assert_eq!(loaded.config(), model.config());
    assert_eq!(outputs(&model, device), outputs(&loaded, device));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `gelu_tanh` (evaluated as `x·σ(2u)`) against `0.5·x·(1 + tanh(u))` in f64, out to the
/// saturated tails, and its gradient against the closed-form derivative: finite where σ
/// saturates (x = −40 puts 2u far below f32's exp range).
fn gelu_tanh_matches_closed_form(device: &Device) {
    let xs: Vec<f32> = vec![
        -40.0, -9.5, -6.0, -3.0, -1.5, -0.7, -0.1, 0.0, 1e-3, 0.3, 1.0, 2.2, 4.0, 9.0, 40.0,
    ];
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let reference = |x: f64| 0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh());
    let derivative = |x: f64| {
        let t = (c * (x + 0.044715 * x * x * x)).tanh();
        0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x)
    };
    let ad = device.clone().autodiff();
    let x = Tensor::<1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &ad).require_grad();
    let y = dmq_models::dit::gelu_tanh(x.clone());
    let grads = y.clone().sum().backward();
    let got: Vec<f32> = y.into_data().try_to_vec::<f32>().unwrap();
    let grad: Vec<f32> = x
        .grad(&grads)
        .unwrap()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    for (i, &x) in xs.iter().enumerate() {
        let (want, dwant) = (reference(x as f64), derivative(x as f64));
        let tol = 2e-6 * (1.0 + want.abs());
        assert!(
            (got[i] as f64 - want).abs() <= tol,
            "gelu({x}) = {} vs {want}",
            got[i]
        );
        assert!(
            (grad[i] as f64 - dwant).abs() <= 1e-5 * (1.0 + dwant.abs()),
            "gelu'({x}) = {} vs {dwant}",
            grad[i]
        );
    }
}

macro_rules! backend_tests {
    ($name:ident, $device:expr) => {
        mod $name {
            use burn::tensor::Device;

            fn device() -> Device {
                $device
            }

            #[test]
            fn parity_p2_c4_sigma_l2() {
                super::parity("p2_c4_sigma_l2", &device());
            }

            #[test]
            fn parity_p4_c1_l1_affine() {
                super::parity("p4_c1_l1_affine", &device());
            }

            #[test]
            fn parity_p2_c1_sigma_l3_bf16() {
                super::parity("p2_c1_sigma_l3_bf16", &device());
            }

            #[test]
            fn learned_sigma_info() {
                super::learned_sigma_info(&device());
            }

            #[test]
            fn inventory() {
                super::inventory(&device());
            }

            #[test]
            fn macs_by_hand() {
                super::macs_by_hand(&device());
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
            fn save_load_round_trip() {
                super::save_load_round_trip(&device());
            }

            #[test]
            fn gelu_tanh_matches_closed_form() {
                super::gelu_tanh_matches_closed_form(&device());
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
// Config (no tensors)

fn fixture_config(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture_dir(name).join(io::CONFIG_FILE)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn config_error_names(v: &Value, key: &str) {
    match DiTConfig::from_json_value(v) {
        Err(ModelError::Config(msg)) => assert!(msg.contains(key), "'{key}' not in: {msg}"),
        other => panic!("expected a config error naming '{key}', got {other:?}"),
    }
}

#[test]
fn config_parses_diffusers_json() {
    let cfg = DiTConfig::from_json_value(&fixture_config("p4_c1_l1_affine")).unwrap();
    assert_eq!(
        cfg,
        DiTConfig {
            num_attention_heads: 4,
            attention_head_dim: 4,
            in_channels: 1,
            out_channels: None,
            num_layers: 1,
            sample_size: 16,
            patch_size: 4,
            num_embeds_ada_norm: Some(5),
            attention_bias: false,
            norm_elementwise_affine: true,
            norm_eps: 1e-6,
            ..Default::default()
        }
    );
    assert_eq!(cfg.out_channels(), 1);
    assert_eq!(cfg.inner_dim(), 16);
    // to_json → from_json is the identity.
    assert_eq!(DiTConfig::from_json_value(&cfg.to_json()).unwrap(), cfg);
    // Missing keys take diffusers' defaults.
    let minimal = DiTConfig::from_json_value(&json!({"_class_name": "DiTTransformer2DModel"}));
    assert_eq!(minimal.unwrap(), DiTConfig::default());
}

#[test]
fn config_accepts_transformer2d_layout_of_dit() {
    // The config of facebook/DiT-XL-2-256's transformer (diffusers' older
    // Transformer2DModel class), shrunk: the extra keys have their DiT values.
    let v = json!({
        "_class_name": "Transformer2DModel",
        "_diffusers_version": "0.12.0.dev0",
        "activation_fn": "gelu-approximate",
        "attention_bias": true,
        "attention_head_dim": 8,
        "cross_attention_dim": null,
        "dropout": 0.0,
        "in_channels": 4,
        "norm_elementwise_affine": false,
        "norm_num_groups": 32,
        "norm_type": "ada_norm_zero",
        "num_attention_heads": 2,
        "num_embeds_ada_norm": 1000,
        "num_layers": 2,
        "num_vector_embeds": null,
        "only_cross_attention": false,
        "out_channels": 8,
        "patch_size": 2,
        "sample_size": 32,
        "upcast_attention": false,
        "use_linear_projection": false
    });
    let cfg = DiTConfig::from_json_value(&v).unwrap();
    assert_eq!(cfg.out_channels(), 8);
    assert_eq!(cfg.num_classes(), 1000);
    // ... but not cross-attention.
    let mut bad = v.clone();
    bad["cross_attention_dim"] = json!(64);
    config_error_names(&bad, "cross_attention_dim");
    // Its own defaults apply to absent keys: Transformer2DModel's norm_type is layer_norm.
    let mut bare = v;
    bare.as_object_mut().unwrap().remove("norm_type");
    config_error_names(&bare, "norm_type");
}

#[test]
fn config_rejects_unsupported_options() {
    let base = fixture_config("p2_c4_sigma_l2");
    let with = |key: &str, value: Value| {
        let mut v = base.clone();
        v[key] = value;
        v
    };
    config_error_names(&with("norm_type", json!("ada_norm")), "norm_type");
    config_error_names(&with("activation_fn", json!("geglu")), "activation_fn");
    config_error_names(
        &with("num_embeds_ada_norm", Value::Null),
        "num_embeds_ada_norm",
    );
    config_error_names(&with("patch_size", json!(3)), "patch_size");
    config_error_names(&with("sample_size", json!(9)), "sample_size");
    config_error_names(&with("num_layers", json!(2.5)), "num_layers");
    config_error_names(
        &with("interpolation_scale", json!(2.0)),
        "interpolation_scale",
    );
    config_error_names(
        &with("caption_projection_dim", json!(4)),
        "caption_projection_dim",
    );
    config_error_names(&with("_class_name", json!("UNet2DModel")), "_class_name");
    // Metadata keys are accepted.
    let ok = with("_name_or_path", json!("somewhere"));
    assert!(DiTConfig::from_json_value(&ok).is_ok());
    // upcast_attention has no effect in f32 and is accepted.
    assert!(DiTConfig::from_json_value(&with("upcast_attention", json!(true))).is_ok());
}

#[test]
fn from_pretrained_reports_config_errors() {
    let dir = temp_dir("badcfg");
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture_dir("p2_c4_sigma_l2");
    std::fs::copy(src.join(io::WEIGHTS_FILE), dir.join(io::WEIGHTS_FILE)).unwrap();
    let mut v = fixture_config("p2_c4_sigma_l2");
    v["norm_type"] = json!("layer_norm");
    std::fs::write(dir.join(io::CONFIG_FILE), v.to_string()).unwrap();
    let device = Device::default();
    match DiT::from_pretrained(&dir, &device) {
        Err(ModelError::Config(msg)) => assert!(msg.contains("norm_type"), "{msg}"),
        other => panic!("expected a config error, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
