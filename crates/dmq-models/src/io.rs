//! Loading and saving model weights in the diffusers layout: a directory with `config.json`
//! and `diffusion_pytorch_model.safetensors` whose keys are the module paths
//! (`down_blocks.0.resnets.0.conv1.weight`). dmq's modules use the diffusers field names and
//! PyTorch weight layouts, so a checkpoint maps onto the module tree one to one; f16 and
//! bf16 tensors are widened to f32. Loading is strict: a missing tensor, an unused tensor
//! (an option the model does not implement) or a shape mismatch is an error naming the key.
//! Quantizer parameters (`w_quant`, `a_quant`, `b_quant` subtrees) are not part of the
//! diffusers layout and are skipped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor, TensorData};
use dmq_quant::file::write_atomic;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::error::{ModelError, Result};

/// File name of the weights in a diffusers model directory.
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";
/// File name of the config in a diffusers model directory.
pub const CONFIG_FILE: &str = "config.json";

const QUANT_SEGMENTS: [&str; 3] = ["w_quant", "a_quant", "b_quant"];

fn is_quant_path(stack: &[String]) -> bool {
    stack.iter().any(|s| QUANT_SEGMENTS.contains(&s.as_str()))
}

fn ckpt_err(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads a file, naming it in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and parses `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join(CONFIG_FILE);
    let bytes = read_file(&path)?;
    serde_json::from_slice(&bytes).map_err(|e| ckpt_err(&path, format!("invalid JSON: {e}")))
}

/// Parses a diffusers `config.json` value into `T` strictly: a key outside `accepted` (metadata
/// keys starting with `_` aside) is refused as an option the model does not implement, and a
/// value `T` cannot take is an error naming its option. `_class_name` and
/// `_diffusers_version` are kept; other `_` keys are dropped. `class` names the model in errors.
///
/// # Errors
/// [`ModelError::Config`].
pub fn parse_config<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
    class: &str,
    accepted: &[&str],
) -> Result<T> {
    let cfg_err = |m: String| ModelError::Config(m);
    let map = value
        .as_object()
        .ok_or_else(|| cfg_err("config.json must be a JSON object".into()))?;
    if let Some(key) = map
        .keys()
        .find(|k| !k.starts_with('_') && !accepted.contains(&k.as_str()))
    {
        return Err(cfg_err(format!(
            "unknown option '{key}' for {class} (not supported; it may change the model)"
        )));
    }
    let filtered: serde_json::Map<String, serde_json::Value> = map
        .iter()
        .filter(|(k, _)| !k.starts_with('_') || *k == "_class_name" || *k == "_diffusers_version")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    serde_json::from_value(serde_json::Value::Object(filtered.clone())).map_err(|e| {
        // Name the offending option: parse each key on its own.
        for (k, v) in &filtered {
            let one = serde_json::json!({ k.clone(): v.clone() });
            if let Err(e1) = serde_json::from_value::<T>(one) {
                return cfg_err(format!("option '{k}' = {v}: {e1}"));
            }
        }
        cfg_err(format!("config.json: {e}"))
    })
}

/// Converts a safetensors tensor to f32 (F32, F16 and BF16 are accepted).
fn to_f32(view: &TensorView<'_>, key: &str, path: &Path) -> Result<Vec<f32>> {
    let b = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(ckpt_err(
                path,
                format!("tensor '{key}' has dtype {other:?}; expected F32, F16 or BF16"),
            ));
        }
    })
}

struct Loader<'a> {
    st: &'a SafeTensors<'a>,
    path: &'a Path,
    device: Device,
    stack: Vec<String>,
    used: HashSet<String>,
    errors: Vec<String>,
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if is_quant_path(&self.stack) {
            return param;
        }
        let key = self.stack.join(".");
        let view = match self.st.tensor(&key) {
            Ok(v) => v,
            Err(_) => {
                self.errors.push(format!("missing tensor '{key}'"));
                return param;
            }
        };
        self.used.insert(key.clone());
        let expected = param.val().dims();
        if view.shape() != expected.as_slice() {
            self.errors.push(format!(
                "tensor '{key}' has shape {:?}, the model expects {expected:?}",
                view.shape()
            ));
            return param;
        }
        match to_f32(&view, &key, self.path) {
            Ok(values) => {
                let device = self.device.clone();
                param.map(move |_| Tensor::from_data(TensorData::new(values, expected), &device))
            }
            Err(e) => {
                self.errors.push(e.to_string());
                param
            }
        }
    }
}

/// Loads safetensors bytes into `model` (strict; see the module docs).
pub fn load_weights_from_bytes<M: Module>(
    model: M,
    bytes: &[u8],
    origin: &Path,
    device: &Device,
) -> Result<M> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| ckpt_err(origin, format!("not a safetensors file: {e}")))?;
    let mut loader = Loader {
        st: &st,
        path: origin,
        device: device.clone(),
        stack: Vec::new(),
        used: HashSet::new(),
        errors: Vec::new(),
    };
    let model = model.map(&mut loader);
    let mut errors = loader.errors;
    let mut unused: Vec<String> = st
        .names()
        .into_iter()
        .filter(|k| !loader.used.contains(*k))
        .map(String::from)
        .collect();
    unused.sort();
    if !unused.is_empty() {
        errors.push(format!(
            "{} tensors the model does not use (an unsupported option?): {}",
            unused.len(),
            unused
                .iter()
                .take(8)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if errors.is_empty() {
        Ok(model)
    } else {
        let n = errors.len();
        Err(ckpt_err(
            origin,
            format!(
                "{n} problem(s): {}",
                errors.into_iter().take(8).collect::<Vec<_>>().join("; ")
            ),
        ))
    }
}

/// Loads a safetensors file into `model` (strict).
pub fn load_weights<M: Module>(model: M, path: &Path, device: &Device) -> Result<M> {
    let bytes = read_file(path)?;
    load_weights_from_bytes(model, &bytes, path, device)
}

#[derive(Default)]
struct Collector {
    stack: Vec<String>,
    tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)>,
    error: Option<String>,
}

impl ModuleVisitor for Collector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if is_quant_path(&self.stack) {
            return;
        }
        let t = param.val();
        let shape = t.dims().to_vec();
        match t.into_data().convert::<f32>().try_into_vec::<f32>() {
            Ok(v) => {
                let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                self.tensors.insert(self.stack.join("."), (shape, bytes));
            }
            Err(e) => self.error = Some(format!("{e:?}")),
        }
    }
}

/// The model's FP parameters as safetensors bytes (f32), diffusers keys, with metadata.
pub fn weights_to_bytes<M: Module>(
    model: &M,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let mut c = Collector::default();
    model.visit(&mut c);
    if let Some(e) = c.error {
        return Err(ModelError::Config(format!(
            "could not read a parameter back: {e}"
        )));
    }
    let views = c
        .tensors
        .iter()
        .map(|(k, (s, b))| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (k.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| ModelError::Config(e.to_string()))?;
    safetensors::serialize(views, Some(metadata)).map_err(|e| ModelError::Config(e.to_string()))
}

/// Writes the model's weights to `path` atomically.
pub fn save_weights<M: Module>(
    model: &M,
    path: &Path,
    metadata: HashMap<String, String>,
) -> Result<()> {
    write_atomic(path, &weights_to_bytes(model, metadata)?)
        .map_err(|e| ckpt_err(path, e.to_string()))
}

/// Writes a model directory (created if needed): `dir/config.json` (`config`, pretty JSON)
/// and `dir/weights_file` (the f32 weights, `format: pt` metadata), each atomically.
pub fn save_model_dir<M: Module>(
    model: &M,
    dir: &Path,
    config: &serde_json::Value,
    weights_file: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let config_path = dir.join(CONFIG_FILE);
    let mut json = serde_json::to_string_pretty(config)
        .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
    json.push('\n');
    write_atomic(&config_path, json.as_bytes())
        .map_err(|e| ckpt_err(&config_path, e.to_string()))?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    save_weights(model, &dir.join(weights_file), metadata)
}

/// Paths of a diffusers directory: (config, weights).
pub fn dir_files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join(CONFIG_FILE), dir.join(WEIGHTS_FILE))
}
