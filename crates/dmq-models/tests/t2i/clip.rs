//! CLIP text encoder parity with transformers' `CLIPTextModel` (fixtures from
//! `scripts/fixtures/clip_parity.py`: random-weight tiny models, one in the transformers
//! ≤ 4.x layout with the `position_ids` buffer and the legacy `eos_token_id: 2` pooling, one
//! in f16 in the transformers 5 layout with the first-EOS pooling), the layer inventory
//! against transformers' module names and call order, the causal mask, and the typed
//! errors of strict config parsing, input checks and loading.
//!
//! The tensor tests run on every enabled backend through `backend_tests!`.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use dmq_models::clip::{ClipActivation, ClipTextConfig, ClipTextModel, WEIGHTS_FILE};
use dmq_models::layers::LayerKind;
use dmq_models::{ForwardCtx, LayerRecorder, ModelError, StepContext, TapTensor, Taps};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{Value, json};

/// Required parity: max abs error against transformers.
const TOL: f32 = 1e-4;

const FIXTURES: [&str; 2] = ["sd1_quick_gelu", "gelu_f16"];

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/clip")
        .join(name)
}

/// A scratch directory unique to this process and tag (removed on drop).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("dmq-clip-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    /// A copy of fixture `name` with `config.json` and the weights replaced where given.
    fn fixture_copy(tag: &str, name: &str, config: Option<&Value>, weights: Option<&[u8]>) -> Self {
        let t = Self::new(tag);
        let src = fixture_dir(name);
        let cfg = match config {
            Some(v) => serde_json::to_vec_pretty(v).unwrap(),
            None => std::fs::read(src.join("config.json")).unwrap(),
        };
        std::fs::write(t.0.join("config.json"), cfg).unwrap();
        let w = match weights {
            Some(b) => b.to_vec(),
            None => std::fs::read(src.join(WEIGHTS_FILE)).unwrap(),
        };
        std::fs::write(t.0.join(WEIGHTS_FILE), w).unwrap();
        t
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `io.safetensors` of a fixture: ids, transformers' outputs, layer-name metadata.
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

    /// `input_ids` as `[B, L]` values.
    fn ids(&self) -> (Vec<i64>, [usize; 2]) {
        let (dtype, shape, data) = self.raw("input_ids");
        assert_eq!(dtype, Dtype::I64);
        let v = data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (v, [shape[0], shape[1]])
    }

    fn ids_tensor(&self, device: &Device) -> Tensor<2, Int> {
        let (v, s) = self.ids();
        Tensor::from_data(TensorData::new(v, s), device)
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
    ForwardCtx::new(StepContext::single(0.0))
}

fn to_vec<const D: usize>(t: Tensor<D>) -> (Vec<f32>, Vec<usize>) {
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

fn fixture_config(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture_dir(name).join("config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

// ---------------------------------------------------------------------------------
// Per-backend test bodies

fn parity(name: &str, device: &Device) {
    let model = ClipTextModel::load(&fixture_dir(name), device).unwrap();
    let io = FixtureIo::load(name);
    let out = model.forward(io.ids_tensor(device), &ctx()).unwrap();
    let (got, dims) = to_vec(out.last_hidden_state);
    let (want, shape) = io.f32s("last_hidden_state");
    assert_eq!(dims, shape, "last_hidden_state shape");
    let err = max_abs_diff(&got, &want);
    let (got_p, dims_p) = to_vec(out.pooled);
    let (want_p, shape_p) = io.f32s("pooler_output");
    assert_eq!(dims_p, shape_p, "pooled shape");
    let err_p = max_abs_diff(&got_p, &want_p);
    eprintln!("clip parity {name}: last_hidden_state {err:.3e}, pooled {err_p:.3e}");
    assert!(
        err <= TOL,
        "{name}: last_hidden_state max abs error {err} > {TOL}"
    );
    assert!(err_p <= TOL, "{name}: pooled max abs error {err_p} > {TOL}");
}

/// The fixtures' hand-made rows pool where transformers' rules say.
fn pooling_rules(device: &Device) {
    let legacy = ClipTextModel::load(&fixture_dir("sd1_quick_gelu"), device).unwrap();
    assert!(legacy.config().legacy_pooling());
    let (ids, [b, l]) = FixtureIo::load("sd1_quick_gelu").ids();
    let pos = legacy.pool_positions(&ids, l);
    assert_eq!(pos.len(), b);
    // Rows 0, 1: tokenised prompts (EOS right after the text, pads = EOS after it); row 2:
    // no BOS or EOS, largest id 700 first at 2; row 3: EOS (the largest id) first at 2.
    assert_eq!(pos[2], 2, "legacy rule: first maximum");
    assert_eq!(pos[3], 2);
    let eos = 767;
    assert_eq!(ids[pos[0]], eos);
    assert_eq!(ids[l + pos[1]], eos);
    assert_eq!(pos[1], l - 1, "a truncated prompt ends with EOS");

    let first = ClipTextModel::load(&fixture_dir("gelu_f16"), device).unwrap();
    assert!(!first.config().legacy_pooling());
    let (ids, [_, l]) = FixtureIo::load("gelu_f16").ids();
    let pos = first.pool_positions(&ids, l);
    // Row 4: no EOS → 0; row 5: EOS at 3 and 6 → 3.
    assert_eq!(&pos[4..], &[0, 3]);
}

fn inventory(device: &Device) {
    for name in FIXTURES {
        let model = ClipTextModel::load(&fixture_dir(name), device).unwrap();
        let io = FixtureIo::load(name);
        let mut ours = Vec::new();
        let mut kinds = Vec::new();
        model.for_each_layer(&mut |l| {
            ours.push(l.name().to_string());
            kinds.push(l.kind());
        });
        let linear: Vec<String> = ours
            .iter()
            .zip(&kinds)
            .filter(|(_, k)| **k == LayerKind::Linear)
            .map(|(n, _)| n.clone())
            .collect();
        // transformers' module order declares k, v, q, out: same set, ours in call order.
        let mut sorted = linear.clone();
        sorted.sort();
        let mut want = io.meta_list("linear_names");
        want.sort();
        assert_eq!(sorted, want, "{name}: linear layer names");
        assert_eq!(linear, io.meta_list("call_order"), "{name}: call order");

        // One forward pass records every layer once, in for_each_layer order.
        let rec = LayerRecorder::default();
        let ids = ClipTextModel::input_ids(&[vec![1, 2, 3, 4]], device).unwrap();
        model.forward(ids, &ctx().with_recorder(&rec)).unwrap();
        let calls: Vec<String> = rec.calls().into_iter().map(|c| c.name).collect();
        assert_eq!(calls, ours, "{name}: recorded calls");
        let layers = model.config().num_hidden_layers;
        let matmuls: Vec<String> = ours
            .iter()
            .zip(&kinds)
            .filter(|(_, k)| **k == LayerKind::Matmul)
            .map(|(n, _)| n.clone())
            .collect();
        let want: Vec<String> = (0..layers)
            .flat_map(|i| {
                [
                    format!("text_model.encoder.layers.{i}.self_attn.qk"),
                    format!("text_model.encoder.layers.{i}.self_attn.sv"),
                ]
            })
            .collect();
        assert_eq!(matmuls, want, "{name}: matmuls");
    }
}

fn macs_by_hand(device: &Device) {
    // sd1_quick_gelu: D = 32, 4 heads, MLP 64; B = 2, L = 5.
    let model = ClipTextModel::load(&fixture_dir("sd1_quick_gelu"), device).unwrap();
    let rec = LayerRecorder::default();
    let ids = ClipTextModel::input_ids(
        &[vec![766, 5, 6, 7, 767], vec![766, 8, 767, 767, 767]],
        device,
    )
    .unwrap();
    model.forward(ids, &ctx().with_recorder(&rec)).unwrap();
    let find = |n: &str| {
        rec.calls()
            .into_iter()
            .find(|c| c.name == n)
            .unwrap_or_else(|| panic!("no call {n}"))
    };
    let (b, l, d, f) = (2u64, 5u64, 32u64, 64u64);
    let q = find("text_model.encoder.layers.1.self_attn.q_proj");
    assert_eq!(q.weight_shape, vec![32, 32]);
    assert_eq!(q.macs, b * l * d * d);
    assert_eq!(
        find("text_model.encoder.layers.0.mlp.fc1").macs,
        b * l * d * f
    );
    let qk = find("text_model.encoder.layers.0.self_attn.qk");
    assert_eq!(qk.kind, LayerKind::Matmul);
    assert_eq!(qk.macs, b * l * l * d); // per head L·L·d, H·d = D
    assert_eq!(
        find("text_model.encoder.layers.0.self_attn.sv").macs,
        b * l * l * d
    );
}

/// Causality: changing a token changes no output before it, and changes its own.
fn causal(device: &Device) {
    let model = ClipTextModel::load(&fixture_dir("gelu_f16"), device).unwrap();
    let run = |row: Vec<u32>| {
        let out = model
            .forward(ClipTextModel::input_ids(&[row], device).unwrap(), &ctx())
            .unwrap();
        to_vec(out.last_hidden_state).0
    };
    let a = run(vec![766, 10, 11, 12, 13, 767]);
    let b = run(vec![766, 10, 11, 99, 13, 767]);
    let d = 24;
    assert_eq!(&a[..3 * d], &b[..3 * d], "positions before the change");
    assert!(max_abs_diff(&a[3 * d..4 * d], &b[3 * d..4 * d]) > 1e-3);
    assert!(
        max_abs_diff(&a[5 * d..], &b[5 * d..]) > 1e-3,
        "later positions see it"
    );
}

fn taps(device: &Device) {
    let model = ClipTextModel::load(&fixture_dir("gelu_f16"), device).unwrap();
    let taps = Taps::new([
        "text_model.encoder.layers.0",
        "text_model.encoder.layers.2",
        "text_model.final_layer_norm",
    ]);
    let io = FixtureIo::load("gelu_f16");
    let out = model
        .forward(io.ids_tensor(device), &ctx().with_taps(&taps))
        .unwrap();
    let got = taps.take();
    assert_eq!(got.len(), 3);
    for t in got.values() {
        match t {
            TapTensor::R3(t) => assert_eq!(t.dims(), [6, 20, 24]),
            other => panic!("expected R3, got {other:?}"),
        }
    }
    let TapTensor::R3(fin) = &got["text_model.final_layer_norm"] else {
        unreachable!()
    };
    assert_eq!(to_vec(fin.clone()).0, to_vec(out.last_hidden_state).0);
}

fn input_errors(device: &Device) {
    let model = ClipTextModel::load(&fixture_dir("gelu_f16"), device).unwrap();
    let run =
        |rows: &[Vec<u32>]| model.forward(ClipTextModel::input_ids(rows, device).unwrap(), &ctx());
    // An id ≥ vocab_size (768), checked before the lookup.
    match run(&[vec![766, 768, 767]]) {
        Err(ModelError::Shape { got, expected, .. }) => {
            assert!(
                got.contains("id 768") && got.contains("position 1"),
                "{got}"
            );
            assert!(expected.contains("vocab_size"), "{expected}");
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
    // A negative id.
    let neg = Tensor::<2, Int>::from_data(TensorData::new(vec![766i64, -1, 767], [1, 3]), device);
    assert!(matches!(
        model.forward(neg, &ctx()),
        Err(ModelError::Shape { .. })
    ));
    // Longer than max_position_embeddings (40); 40 itself is fine.
    let err = run(&[vec![5; 41]]).unwrap_err();
    assert!(
        matches!(&err, ModelError::Shape { .. })
            && err.to_string().contains("max_position_embeddings"),
        "{err}"
    );
    run(&[vec![5; 40]]).unwrap();
    // Empty sequences, ragged rows.
    assert!(matches!(run(&[vec![]]), Err(ModelError::Shape { .. })));
    assert!(matches!(
        ClipTextModel::input_ids(&[vec![1, 2], vec![1]], device),
        Err(ModelError::Shape { .. })
    ));
}

/// Rewrites a safetensors file: drops `drop`, adds `add` (f32 zeros), keeps the rest.
fn rewrite_weights(bytes: &[u8], drop: &str, add: &[(&str, Vec<usize>)]) -> Vec<u8> {
    let st = SafeTensors::deserialize(bytes).unwrap();
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
    let mut views: Vec<(String, TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != drop)
        .collect();
    for (k, s, b) in &added {
        views.push((
            k.clone(),
            TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
        ));
    }
    safetensors::serialize(views, None).unwrap()
}

fn expect_checkpoint_err(r: dmq_models::Result<ClipTextModel>, needle: &str) {
    match r {
        Err(ModelError::Checkpoint { reason, path }) => {
            assert!(reason.contains(needle), "{reason}");
            assert!(path.ends_with(WEIGHTS_FILE), "{}", path.display());
        }
        other => panic!("expected a checkpoint error naming '{needle}', got {other:?}"),
    }
}

fn checkpoint_errors(device: &Device) {
    // Prefixed layout (with position_ids).
    let weights = std::fs::read(fixture_dir("sd1_quick_gelu").join(WEIGHTS_FILE)).unwrap();
    let missing = "text_model.encoder.layers.1.self_attn.out_proj.bias";
    let t = TempDir::fixture_copy(
        "missing",
        "sd1_quick_gelu",
        None,
        Some(&rewrite_weights(&weights, missing, &[])),
    );
    expect_checkpoint_err(ClipTextModel::load(&t.0, device), missing);
    // An extra tensor (a CLIPTextModelWithProjection checkpoint, say).
    let extra = "text_projection.weight";
    let t = TempDir::fixture_copy(
        "extra",
        "sd1_quick_gelu",
        None,
        Some(&rewrite_weights(&weights, "", &[(extra, vec![32, 32])])),
    );
    expect_checkpoint_err(ClipTextModel::load(&t.0, device), extra);
    // A wrong shape.
    let key = "text_model.final_layer_norm.weight";
    let t = TempDir::fixture_copy(
        "shape",
        "sd1_quick_gelu",
        None,
        Some(&rewrite_weights(&weights, key, &[(key, vec![31])])),
    );
    expect_checkpoint_err(ClipTextModel::load(&t.0, device), key);
    // Keys of both layouts in one file.
    let t = TempDir::fixture_copy(
        "mixed",
        "sd1_quick_gelu",
        None,
        Some(&rewrite_weights(
            &weights,
            "",
            &[("encoder.layers.0.mlp.fc9.weight", vec![2])],
        )),
    );
    expect_checkpoint_err(ClipTextModel::load(&t.0, device), "mixes keys");

    // Bare layout (f16): a missing key is named as the file names it; a position_ids
    // buffer (here f32, as some converted files store it) is tolerated.
    let weights = std::fs::read(fixture_dir("gelu_f16").join(WEIGHTS_FILE)).unwrap();
    let missing = "encoder.layers.2.mlp.fc2.weight";
    let t = TempDir::fixture_copy(
        "missing16",
        "gelu_f16",
        None,
        Some(&rewrite_weights(&weights, missing, &[])),
    );
    expect_checkpoint_err(ClipTextModel::load(&t.0, device), missing);
    let with_pos = rewrite_weights(&weights, "", &[("embeddings.position_ids", vec![1, 40])]);
    let t = TempDir::fixture_copy("pos16", "gelu_f16", None, Some(&with_pos));
    let a = ClipTextModel::load(&t.0, device).unwrap();
    let b = ClipTextModel::load(&fixture_dir("gelu_f16"), device).unwrap();
    let ids = || ClipTextModel::input_ids(&[vec![766, 3, 4, 767]], device).unwrap();
    assert_eq!(
        to_vec(a.forward(ids(), &ctx()).unwrap().pooled).0,
        to_vec(b.forward(ids(), &ctx()).unwrap().pooled).0
    );
    // ... but only under its own name: a prefixed buffer in a bare file is an unused tensor.
    let odd = rewrite_weights(
        &weights,
        "",
        &[("text_model.embeddings.position_ids", vec![1, 40])],
    );
    let t = TempDir::fixture_copy("odd16", "gelu_f16", None, Some(&odd));
    expect_checkpoint_err(ClipTextModel::load(&t.0, device), "mixes keys");

    // No weights file at all.
    let t = TempDir::new("noweights");
    std::fs::write(
        t.0.join("config.json"),
        std::fs::read(fixture_dir("gelu_f16").join("config.json")).unwrap(),
    )
    .unwrap();
    match ClipTextModel::load(&t.0, device) {
        Err(ModelError::Io { path, .. }) => assert!(path.ends_with(WEIGHTS_FILE)),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

fn config_errors_name_the_file(device: &Device) {
    let mut cfg = fixture_config("gelu_f16");
    cfg["hidden_act"] = json!("relu");
    let t = TempDir::fixture_copy("act", "gelu_f16", Some(&cfg), None);
    let err = ClipTextModel::load(&t.0, device).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Config(_)), "{msg}");
    assert!(
        msg.contains("hidden_act") && msg.contains("relu") && msg.contains("config.json"),
        "{msg}"
    );
}

fn random_init(device: &Device) {
    let cfg = ClipTextConfig {
        vocab_size: 50,
        hidden_size: 16,
        intermediate_size: 20,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        max_position_embeddings: 8,
        hidden_act: ClipActivation::Gelu,
        eos_token_id: 49,
        ..Default::default()
    };
    let model = cfg.init(device).unwrap();
    let out = model
        .forward(
            ClipTextModel::input_ids(&[vec![48, 1, 2, 49, 49], vec![48, 3, 49, 49, 49]], device)
                .unwrap(),
            &ctx(),
        )
        .unwrap();
    assert_eq!(out.last_hidden_state.dims(), [2, 5, 16]);
    assert_eq!(out.pooled.dims(), [2, 16]);
    let (last, _) = to_vec(out.last_hidden_state);
    let (pooled, _) = to_vec(out.pooled);
    assert!(last.iter().all(|v| v.is_finite()));
    // Row 0 pooled at its first EOS (3), row 1 at 2.
    assert_eq!(&pooled[..16], &last[3 * 16..4 * 16]);
    assert_eq!(&pooled[16..], &last[(5 + 2) * 16..(5 + 3) * 16]);
    let mut n = 0;
    model.for_each_layer(&mut |_| n += 1);
    assert_eq!(n, 2 * 8);
}

/// `save_pretrained` → `load` gives the same config and the same outputs, bit for bit; the
/// file has the transformers keys (`text_model.` prefix, no `position_ids` buffer).
fn save_round_trip(device: &Device) {
    let model = ClipTextModel::load(&fixture_dir("gelu_f16"), device).unwrap();
    let tmp = TempDir::new("save");
    model.save_pretrained(&tmp.0).unwrap();
    let back = ClipTextModel::load(&tmp.0, device).unwrap();
    assert_eq!(back.config(), model.config());
    let bytes = std::fs::read(tmp.0.join(WEIGHTS_FILE)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let names = st.names();
    assert!(
        names.iter().all(|k| k.starts_with("text_model.")),
        "{names:?}"
    );
    assert!(names.contains(&"text_model.final_layer_norm.weight"));
    assert!(!names.iter().any(|k| k.contains("position_ids")));
    let ids = ClipTextModel::input_ids(&[vec![1, 5, 7, 3, 3]], device).unwrap();
    let a = model.forward(ids.clone(), &ctx()).unwrap();
    let b = back.forward(ids, &ctx()).unwrap();
    assert_eq!(to_vec(a.last_hidden_state).0, to_vec(b.last_hidden_state).0);
    assert_eq!(to_vec(a.pooled).0, to_vec(b.pooled).0);
}

macro_rules! backend_tests {
    ($name:ident, $device:expr) => {
        mod $name {
            use burn::tensor::Device;

            fn device() -> Device {
                $device
            }

            #[test]
            fn parity_sd1_quick_gelu() {
                super::parity("sd1_quick_gelu", &device());
            }

            #[test]
            fn parity_gelu_f16() {
                super::parity("gelu_f16", &device());
            }

            #[test]
            fn pooling_rules() {
                super::pooling_rules(&device());
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
            fn causal() {
                super::causal(&device());
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
            fn config_errors_name_the_file() {
                super::config_errors_name_the_file(&device());
            }

            #[test]
            fn random_init() {
                super::random_init(&device());
            }

            #[test]
            fn save_round_trip() {
                super::save_round_trip(&device());
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

fn config_err(v: &Value) -> String {
    match ClipTextConfig::from_json_value(v) {
        Err(e @ (ModelError::Config(_) | ModelError::Limit(_))) => e.to_string(),
        other => panic!("expected a config error for {v}, got {other:?}"),
    }
}

#[test]
fn fixture_configs_parse() {
    let a = ClipTextConfig::from_json_value(&fixture_config("sd1_quick_gelu")).unwrap();
    assert_eq!(
        (
            a.vocab_size,
            a.hidden_size,
            a.intermediate_size,
            a.num_hidden_layers
        ),
        (768, 32, 64, 2)
    );
    assert_eq!(
        (
            a.num_attention_heads,
            a.max_position_embeddings,
            a.head_dim()
        ),
        (4, 77, 8)
    );
    assert_eq!(a.hidden_act, ClipActivation::QuickGelu);
    assert_eq!(
        (a.bos_token_id, a.eos_token_id, a.pad_token_id),
        (Some(0), 2, Some(1))
    );
    assert!(a.legacy_pooling());
    let b = ClipTextConfig::from_json_value(&fixture_config("gelu_f16")).unwrap();
    assert_eq!(b.hidden_act, ClipActivation::Gelu);
    assert_eq!(b.layer_norm_eps, 1e-6);
    assert_eq!(b.eos_token_id, 767);
    assert!(!b.legacy_pooling());
}

#[test]
fn missing_keys_take_transformers_defaults() {
    let c = ClipTextConfig::from_json_value(&json!({})).unwrap();
    assert_eq!(c, ClipTextConfig::default());
    assert_eq!(
        (c.vocab_size, c.hidden_size, c.eos_token_id),
        (49408, 512, 49407)
    );
    // Stable Diffusion 1.x's text_encoder/config.json, as on the Hub.
    let sd = json!({
        "_name_or_path": "openai/clip-vit-large-patch14",
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "quick_gelu",
        "hidden_size": 768,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "pad_token_id": 1,
        "projection_dim": 768,
        "torch_dtype": "float32",
        "transformers_version": "4.22.0.dev0",
        "vocab_size": 49408
    });
    let c = ClipTextConfig::from_json_value(&sd).unwrap();
    assert_eq!(
        (c.hidden_size, c.num_attention_heads, c.head_dim()),
        (768, 12, 64)
    );
    assert!(c.legacy_pooling());
    assert!(c.param_count() > 123_000_000 && c.param_count() < 124_000_000);
}

#[test]
fn bad_configs_are_named() {
    let base = fixture_config("gelu_f16");
    let with = |key: &str, v: Value| {
        let mut c = base.clone();
        c[key] = v;
        c
    };
    for (key, v, needle) in [
        ("hidden_act", json!("gelu_new"), "hidden_act"),
        ("hidden_act", json!(3), "hidden_act"),
        ("rope_theta", json!(10000.0), "rope_theta"),
        ("model_type", json!("clip"), "model_type"),
        ("text_config", json!({}), "text_config"),
        ("pruned_heads", json!({"0": [1]}), "pruned_heads"),
        ("eos_token_id", json!([2, 3]), "eos_token_id"),
        ("eos_token_id", Value::Null, "eos_token_id"),
        ("pad_token_id", json!(-1), "pad_token_id"),
        ("num_attention_heads", json!(5), "num_attention_heads"),
        ("num_attention_heads", json!(0), "num_attention_heads"),
        ("hidden_size", json!(0), "hidden_size"),
        ("num_hidden_layers", json!(0), "num_hidden_layers"),
        ("vocab_size", json!(-3), "vocab_size"),
        ("layer_norm_eps", json!(0.0), "layer_norm_eps"),
        ("layer_norm_eps", Value::Null, "layer_norm_eps"),
        (
            "max_position_embeddings",
            json!(1u64 << 40),
            "max_position_embeddings",
        ),
        ("num_hidden_layers", json!(1u64 << 20), "num_hidden_layers"),
        ("intermediate_size", json!(1u64 << 24), "parameters"),
    ] {
        let msg = config_err(&with(key, v.clone()));
        assert!(msg.contains(needle), "{key} = {v}: {msg}");
    }
    // Harmless keys are accepted: nulls where transformers allows them, generic keys.
    let mut ok = with("pad_token_id", Value::Null);
    ok["bos_token_id"] = Value::Null;
    ok["output_hidden_states"] = json!(true);
    ok["id2label"] = json!({"0": "LABEL_0"});
    ok["pruned_heads"] = json!({});
    ok["_commit_hash"] = json!("abc");
    let c = ClipTextConfig::from_json_value(&ok).unwrap();
    assert_eq!((c.bos_token_id, c.pad_token_id), (None, None));
    assert!(ClipTextConfig::from_json_str("{not json").is_err());
}

#[test]
fn activation_names_round_trip() {
    for a in [ClipActivation::QuickGelu, ClipActivation::Gelu] {
        assert_eq!(ClipActivation::from_name(a.name()).unwrap(), a);
    }
}
