//! `scripts/dmq_reader.py` (the Python reader of docs/format.md) against the Rust reader, on a
//! file written by `dmq quantize` from a tiny UNet: the same parameters with the same shapes
//! and values (quantized weights dequantized), the same metadata and activation parameter
//! sets, and the same refusal of another format version.
//!
//! Needs `python3` with numpy and safetensors (`pip install numpy safetensors`); without them
//! the test fails rather than skips.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use dmq_models::unet::UNet2DModel;
use dmq_pipeline::dmq_file;
use dmq_quant::QuantizedFile;
use safetensors::SafeTensors;
use serde_json::Value;

const READER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/dmq_reader.py");

fn require_python() {
    match Command::new("python3")
        .args(["-c", "import numpy, safetensors"])
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "python3 cannot import numpy and safetensors, which scripts/dmq_reader.py needs: \
             run `pip install numpy safetensors` (CI installs them)\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "cannot run python3 ({e}): install Python 3 and `pip install numpy safetensors` \
             (CI installs them)"
        ),
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn python_dump(file: &Path, json: &Path) -> Value {
    run(Command::new("python3")
        .arg(READER)
        .arg(file)
        .arg("--dump-json")
        .arg(json));
    serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap()
}

/// `<layer>.<a|b>.<delta|zero>.<set>` of an activation quantizer the file has a spec for.
fn is_act_tensor(name: &str, f: &QuantizedFile) -> bool {
    let parts: Vec<&str> = name.rsplitn(3, '.').collect();
    parts.len() == 3
        && parts[0].parse::<usize>().is_ok()
        && (parts[1] == "delta" || parts[1] == "zero")
        && (parts[2].ends_with(".a") || parts[2].ends_with(".b"))
        && f.metadata.contains_key(&format!("{}.spec", parts[2]))
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()) + 1e-12
}

/// Checks one parameter of the Python dump against row-major values of the Rust side.
fn check_weight(name: &str, py: &Value, shape: &[usize], data: &[f32], side: &str) {
    let py_shape: Vec<usize> = serde_json::from_value(py["shape"].clone()).unwrap();
    assert_eq!(py_shape, shape, "{name}: shape (Python vs {side})");
    let sum: f64 = data.iter().map(|&x| x as f64).sum();
    let abs_sum: f64 = data.iter().map(|&x| (x as f64).abs()).sum();
    let py_sum = py["sum"].as_f64().unwrap();
    let py_abs = py["abs_sum"].as_f64().unwrap();
    assert!(
        close(py_sum, sum, 1e-3) || (py_sum - sum).abs() <= 1e-9 * abs_sum,
        "{name}: sum {py_sum} (Python) vs {sum} ({side})"
    );
    assert!(
        close(py_abs, abs_sum, 1e-3),
        "{name}: abs_sum {py_abs} (Python) vs {abs_sum} ({side})"
    );
    let first: Vec<f64> = serde_json::from_value(py["first"].clone()).unwrap();
    assert_eq!(first.len(), data.len().min(8), "{name}: first values");
    for (i, (&p, &r)) in first.iter().zip(data).enumerate() {
        assert!(
            (p - r as f64).abs() <= 1e-6,
            "{name}[{i}]: {p} (Python) vs {r} ({side})"
        );
    }
}

/// naive W4A8; Q-Diffusion W4A8 (shortcut splitting: `Split` weight and activation specs);
/// SVDQuant W4A4 (f16 branch tensors, dynamic activations).
#[test]
fn python_reader_matches_rust_reader() {
    require_python();
    for (method, preset) in [
        ("naive", "W4A8"),
        ("qdiffusion", "W4A8"),
        ("svdquant", "W4A4"),
    ] {
        check_method(method, preset);
    }
}

fn check_method(method: &str, preset: &str) {
    let device = dmq_quant::device::default_device().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tmp.path().join("tiny-unet");
    UNet2DModel::new(&dmq_models::defaults::tiny_unet().unwrap(), &device)
        .unwrap()
        .save_pretrained(&model_dir)
        .unwrap();
    std::fs::write(
        model_dir.join("scheduler_config.json"),
        r#"{"beta_schedule":"linear","num_train_timesteps":1000}"#,
    )
    .unwrap();
    let file = tmp.path().join("tiny.dmq.safetensors");
    run(Command::new(env!("CARGO_BIN_EXE_dmq"))
        .arg("quantize")
        .arg("--model")
        .arg(&model_dir)
        .args(["--method", method, "--preset", preset, "--out"])
        .arg(&file)
        .args(["--steps", "4", "--calib-n", "4", "--calib-steps", "2"])
        .args(["--iters-scale", "0.02"]));

    let dump = python_dump(&file, &tmp.path().join("dump.json"));
    let loaded = dmq_file::load(&file, &device).unwrap();
    let raw = QuantizedFile::load(&file).unwrap();

    // metadata
    let meta = &dump["metadata"];
    assert_eq!(meta["dmq.format"], dmq_file::FORMAT_VERSION);
    assert_eq!(meta["dmq.method"], loaded.info.method.as_str());
    assert_eq!(loaded.info.method, method);
    assert_eq!(meta["dmq.num_steps"], loaded.info.num_steps);
    assert_eq!(loaded.info.num_steps, 4);
    let timesteps: Vec<f64> = serde_json::from_value(meta["dmq.timesteps"].clone()).unwrap();
    assert_eq!(timesteps, loaded.info.timesteps);
    let layers: Vec<String> = serde_json::from_value(meta["dmq.quantized_layers"].clone()).unwrap();
    assert_eq!(layers, loaded.info.quantized_layers);
    assert_eq!(meta["dmq.class_name"], loaded.info.class_name.as_str());

    // parameters: dequantized quantized weights and float tensors, activation sets aside
    let mut rust: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    for (name, q) in &raw.quantized {
        rust.insert(name.clone(), (q.shape.clone(), q.dequantize().unwrap()));
    }
    for (name, t) in &raw.float {
        if !is_act_tensor(name, &raw) {
            rust.insert(name.clone(), t.clone());
        }
    }
    for (name, t) in &raw.half {
        rust.insert(name.clone(), t.clone());
    }
    assert!(
        raw.quantized.values().any(|q| q.bits() == 4),
        "{preset} gives 4-bit weights"
    );
    match method {
        "svdquant" => assert!(
            !raw.half.is_empty(),
            "SVDQuant stores its branches at 16 bits"
        ),
        "qdiffusion" => assert!(
            raw.quantized.values().any(|q| matches!(
                q.params.spec.granularity(),
                dmq_quant::Granularity::Split { .. }
            )),
            "Q-Diffusion splits the decoder's concatenated inputs"
        ),
        _ => {}
    }
    let py = dump["weights"].as_object().unwrap();
    let py_names: Vec<&String> = py.keys().collect();
    let rust_names: Vec<&String> = rust.keys().collect();
    assert_eq!(py_names, rust_names, "parameter names (Python vs Rust)");
    for (name, (shape, data)) in &rust {
        check_weight(name, &py[name], shape, data, "QuantizedFile");
    }

    // ... which are exactly the parameters of the model dmq_file::load builds
    let model_bytes = loaded.model.weights_to_bytes().unwrap();
    let st = SafeTensors::deserialize(&model_bytes).unwrap();
    let mut model_names: Vec<String> = st.names().into_iter().map(String::from).collect();
    model_names.sort();
    assert_eq!(
        py.keys().cloned().collect::<Vec<_>>(),
        model_names,
        "parameter names (Python vs the loaded model)"
    );
    for (name, view) in st.tensors() {
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        check_weight(&name, &py[&name], view.shape(), &data, "loaded model");
    }

    // activation parameter sets and step maps
    let acts = dump["activations"].as_object().unwrap();
    let mut n_acts = 0;
    for key in raw.metadata.keys() {
        let Some(rest) = key.strip_suffix(".spec") else {
            continue;
        };
        let Some((layer, op)) = rest.rsplit_once('.') else {
            continue;
        };
        if op != "a" && op != "b" {
            continue;
        }
        n_acts += 1;
        let sets = dmq_infer::export::ActSets::read(&raw, layer, op)
            .unwrap()
            .unwrap();
        let py = &acts[rest];
        let map: Vec<usize> = serde_json::from_value(py["step_to_set"].clone()).unwrap();
        assert_eq!(map, sets.step_to_set, "{rest}: step_to_set");
        let spec: dmq_quant::QuantSpec = serde_json::from_value(py["spec"].clone()).unwrap();
        assert_eq!(spec, sets.sets[0].spec, "{rest}: spec");
        let py_sets = py["sets"].as_array().unwrap();
        assert_eq!(py_sets.len(), sets.sets.len(), "{rest}: number of sets");
        for (i, (p, r)) in py_sets.iter().zip(&sets.sets).enumerate() {
            for (what, want) in [("delta", &r.delta), ("zero", &r.zero)] {
                let got: Vec<f32> = serde_json::from_value::<Vec<f64>>(p[what].clone())
                    .unwrap()
                    .into_iter()
                    .map(|x| x as f32)
                    .collect();
                assert_eq!(&got, want, "{rest}: set {i} {what}");
            }
        }
    }
    // dynamic (per-call range) operands: the same spec on both sides
    for (key, v) in &raw.metadata {
        let Some(op) = key.strip_suffix(".dynamic") else {
            continue;
        };
        n_acts += 1;
        let want: Value = serde_json::from_str(v).unwrap();
        assert_eq!(acts[op]["dynamic"], want, "{op}: dynamic spec");
    }
    assert!(n_acts > 0, "{preset} quantizes activations");
    assert_eq!(acts.len(), n_acts, "activation quantizers (Python vs Rust)");

    // another format version: both readers refuse it
    let mut v2 = raw.clone();
    v2.metadata
        .insert(dmq_file::keys::FORMAT.into(), "dmq.model.v2".into());
    let v2_path = tmp.path().join("v2.dmq.safetensors");
    v2.save(&v2_path).unwrap();
    let e = dmq_file::load(&v2_path, &device).unwrap_err().to_string();
    assert!(e.contains("dmq.model.v2"), "{e}");
    let out = Command::new("python3")
        .arg(READER)
        .arg(&v2_path)
        .arg("--dump-json")
        .arg(tmp.path().join("v2.json"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the Python reader accepted a v2 file"
    );
    assert!(
        stderr.contains("dmq.model.v2") && stderr.contains("dmq.model.v1"),
        "{stderr}"
    );
}
