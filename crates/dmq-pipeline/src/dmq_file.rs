//! The self-contained quantized model file (`*.dmq.safetensors`): writer, reader and schema
//! in one place. The byte layout is specified in `docs/format.md`.
//!
//! One safetensors file holds everything needed to sample: the model's diffusers
//! `config.json` and `scheduler_config.json`, every parameter that is not quantized (norms,
//! embeddings, biases, FP layers) at f32 under its diffusers key, the packed quantized
//! weights (`<layer>.weight` as codes + Δ + z), the activation parameters per step set
//! with their step map and timesteps, and the method with its settings.
//!
//! Loading is strict: another format version, an entry that matches no parameter or layer
//! of the model the config builds, a missing parameter, and a layer the file lists as
//! quantized without its codes are all errors naming the file and the entry.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use dmq_calib::export_layers;
use dmq_models::Denoiser;
use dmq_models::layers::LayerRef;
use dmq_models::scheduler::DdimScheduler;
use dmq_quant::QuantizedFile;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Result, file_err};
use crate::model::AnyDenoiser;
use crate::pipeline_file::{float_bytes, float_entries};
use crate::scheduler::SchedulerSpec;
use crate::text_to_image::TextToImage;

/// `dmq.format` of the files this version writes and reads.
pub const FORMAT_VERSION: &str = "dmq.model.v1";
/// `dmq.format` of a text-to-image file: a [`FORMAT_VERSION`] model plus the pipeline's FP
/// components ([`crate::pipeline_file`]).
pub const PIPELINE_FORMAT_VERSION: &str = "dmq.pipeline.v1";
/// The file name suffix of quantized model files.
pub const FILE_SUFFIX: &str = ".dmq.safetensors";

/// Metadata keys (stored by [`QuantizedFile`] as `user.<key>` in the safetensors header).
pub mod keys {
    /// Format version, [`super::FORMAT_VERSION`].
    pub const FORMAT: &str = "dmq.format";
    /// diffusers `_class_name` of the model.
    pub const CLASS: &str = "dmq.class_name";
    /// The model's `config.json` (JSON).
    pub const CONFIG: &str = "dmq.config";
    /// The model's `scheduler_config.json` (JSON).
    pub const SCHEDULER: &str = "dmq.scheduler";
    /// Method name (`naive`, `qdiffusion`, ...; `fp` for an unquantized model).
    pub const METHOD: &str = "dmq.method";
    /// The method's options (JSON).
    pub const METHOD_SETTINGS: &str = "dmq.method_settings";
    /// The `QuantConfig` (JSON).
    pub const QUANT_CONFIG: &str = "dmq.quant_config";
    /// Sampling steps the activation parameters cover.
    pub const NUM_STEPS: &str = "dmq.num_steps";
    /// Timesteps of those steps, step order (JSON list); read by the integer path.
    pub const TIMESTEPS: &str = "dmq.timesteps";
    /// Layers with a quantized weight or activation (JSON list of diffusers paths).
    pub const LAYERS: &str = "dmq.quantized_layers";
    /// The dmq version that wrote the file.
    pub const WRITER: &str = "dmq.writer";
}

/// What a quantized model file says about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileInfo {
    /// diffusers class of the model.
    pub class_name: String,
    /// Method that produced it.
    pub method: String,
    /// Its options.
    pub method_settings: Value,
    /// The quantization config.
    pub quant_config: Value,
    /// Sampling steps covered by the activation parameters.
    pub num_steps: usize,
    /// Their timesteps.
    pub timesteps: Vec<f64>,
    /// Quantized layers.
    pub quantized_layers: Vec<String>,
    /// Writer version.
    pub writer: String,
}

/// A model read from a `.dmq.safetensors` file.
#[derive(Debug)]
pub struct LoadedFile {
    /// The model in fake-quant form (what the exported integers mean), frozen.
    pub model: AnyDenoiser,
    /// Its schedule.
    pub scheduler: SchedulerSpec,
    /// The file's metadata.
    pub info: FileInfo,
    /// The raw file (for the integer path: `dmq_infer::IntegerModel::from_export`): the
    /// denoiser's entries; a text-to-image file's component tensors, read into
    /// [`Self::pipeline`], are left out.
    pub file: QuantizedFile,
    /// Where it was read from.
    pub path: PathBuf,
    /// A text-to-image file's whole pipeline (tokenizer, text encoder and VAE from the file,
    /// its UNet = [`Self::model`]); `None` for a plain denoiser.
    pub pipeline: Option<TextToImage>,
}

impl LoadedFile {
    /// The sampler the file was quantized for: its schedule over its own timesteps (a
    /// TMPQ file's searched ones included). A file without timesteps (no per-step
    /// parameters) gets `fallback_steps` uniform diffusers steps.
    pub fn sampler(&self, fallback_steps: usize) -> Result<DdimScheduler> {
        if self.info.timesteps.is_empty() {
            return self.scheduler.ddim(fallback_steps);
        }
        let mut ascending: Vec<usize> = self
            .info
            .timesteps
            .iter()
            .map(|&t| t.round() as usize)
            .collect();
        ascending.sort_unstable();
        let uniform = self.scheduler.ddim(ascending.len())?;
        let mut u = crate::scheduler::timesteps(&uniform);
        u.sort_by(f64::total_cmp);
        if u.iter().zip(&ascending).all(|(a, &b)| *a == b as f64) {
            // the diffusers construction of the same grid (its own last-step rule)
            return Ok(uniform);
        }
        DdimScheduler::with_timesteps(&self.scheduler.ddim, &ascending)
            .map_err(|e| file_err(&self.path, keys::TIMESTEPS, e.to_string()))
    }
}

/// What to record about the run that produced a model.
#[derive(Clone, Debug, Default)]
pub struct Provenance {
    /// Method name (`fp` for none).
    pub method: String,
    /// Method options.
    pub method_settings: Value,
    /// The quantization config.
    pub quant_config: Value,
}

impl Provenance {
    /// The provenance of a model quantized by `method` under `config`.
    pub fn new(method: &crate::Method, config: &dmq_calib::QuantConfig) -> Self {
        Self {
            method: method.name().into(),
            method_settings: method.settings(),
            quant_config: serde_json::to_value(config).unwrap_or(Value::Null),
        }
    }
}

fn layer_quantized(layer: &LayerRef<'_>) -> bool {
    match layer {
        LayerRef::Linear(l) => l.w_quant.is_some() || l.a_quant.is_some(),
        LayerRef::Conv2d(l) => l.w_quant.is_some() || l.a_quant.is_some(),
        LayerRef::Matmul(m) => m.a_quant.is_some() || m.b_quant.is_some(),
    }
}

/// Builds the file of `model` (quantized or FP) whose activation parameters cover the
/// `timesteps` of a sampling run (step order).
pub fn to_file(
    model: &AnyDenoiser,
    scheduler: &SchedulerSpec,
    timesteps: &[f64],
    provenance: &Provenance,
) -> Result<QuantizedFile> {
    let mut f = export_layers(model, timesteps.len())?;
    let fp = model.weights_to_bytes()?;
    for (key, shape, data) in float_entries(&fp, Path::new("<memory>"))? {
        if f.quantized.contains_key(&key) || f.float.contains_key(&key) || f.half.contains_key(&key)
        {
            continue; // a layer's weight, bias or branch, already exported
        }
        f.float.insert(key, (shape, data));
    }
    let mut layers = Vec::new();
    model.for_each_layer(&mut |l| {
        if layer_quantized(&l) {
            layers.push(l.name().to_string());
        }
    });
    let json = |v: &Value| serde_json::to_string(v).unwrap_or_else(|_| "null".into());
    let m = &mut f.metadata;
    m.insert(keys::FORMAT.into(), FORMAT_VERSION.into());
    m.insert(keys::CLASS.into(), model.class_name().into());
    m.insert(keys::CONFIG.into(), json(&model.config_json()?));
    m.insert(keys::SCHEDULER.into(), json(&scheduler.json));
    m.insert(keys::METHOD.into(), provenance.method.clone());
    m.insert(
        keys::METHOD_SETTINGS.into(),
        json(&provenance.method_settings),
    );
    m.insert(keys::QUANT_CONFIG.into(), json(&provenance.quant_config));
    m.insert(keys::NUM_STEPS.into(), timesteps.len().to_string());
    m.insert(keys::TIMESTEPS.into(), json(&serde_json::json!(timesteps)));
    m.insert(keys::LAYERS.into(), json(&serde_json::json!(layers)));
    m.insert(
        keys::WRITER.into(),
        format!("dmq {}", env!("CARGO_PKG_VERSION")),
    );
    Ok(f)
}

/// Writes `model` to `path` atomically (see [`to_file`]); returns the file size in bytes.
pub fn save(
    path: &Path,
    model: &AnyDenoiser,
    scheduler: &SchedulerSpec,
    timesteps: &[f64],
    provenance: &Provenance,
) -> Result<u64> {
    write(path, &to_file(model, scheduler, timesteps, provenance)?)
}

/// Writes `model` (the quantized UNet of `pipe`) to `path` atomically with `pipe`'s
/// tokenizer, text encoder, VAE and scheduler ([`crate::pipeline_file`]), so the file alone
/// generates from prompts; returns the file size in bytes.
pub fn save_pipeline(
    path: &Path,
    model: &AnyDenoiser,
    pipe: &TextToImage,
    timesteps: &[f64],
    provenance: &Provenance,
) -> Result<u64> {
    let mut f = to_file(model, &pipe.scheduler, timesteps, provenance)?;
    crate::pipeline_file::add_components(&mut f, pipe)?;
    write(path, &f)
}

fn write(path: &Path, f: &QuantizedFile) -> Result<u64> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(|e| file_err(d, "output directory", e.to_string()))?;
    }
    f.save(path)?;
    Ok(std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
}

fn meta<'a>(f: &'a QuantizedFile, path: &Path, key: &str) -> Result<&'a str> {
    f.metadata
        .get(key)
        .map(String::as_str)
        .ok_or_else(|| file_err(path, key, "missing (not a dmq model file?)"))
}

fn meta_json(f: &QuantizedFile, path: &Path, key: &str) -> Result<Value> {
    serde_json::from_str(meta(f, path, key)?)
        .map_err(|e| file_err(path, key, format!("invalid JSON: {e}")))
}

/// The metadata of a file, checked for the format version.
pub fn info(f: &QuantizedFile, path: &Path) -> Result<FileInfo> {
    let version = meta(f, path, keys::FORMAT)?;
    if version != FORMAT_VERSION && version != PIPELINE_FORMAT_VERSION {
        return Err(file_err(
            path,
            keys::FORMAT,
            format!(
                "version '{version}' is not supported (this dmq reads {FORMAT_VERSION} and \
                 {PIPELINE_FORMAT_VERSION})"
            ),
        ));
    }
    let components = crate::pipeline_file::has_components(f);
    if components != (version == PIPELINE_FORMAT_VERSION) {
        return Err(file_err(
            path,
            keys::FORMAT,
            format!(
                "{version} {} text-to-image components ({})",
                if components { "has" } else { "lacks" },
                crate::pipeline_file::keys::MODEL_INDEX
            ),
        ));
    }
    let num_steps: usize = meta(f, path, keys::NUM_STEPS)?
        .parse()
        .map_err(|e| file_err(path, keys::NUM_STEPS, format!("not a count: {e}")))?;
    let timesteps: Vec<f64> = serde_json::from_value(meta_json(f, path, keys::TIMESTEPS)?)
        .map_err(|e| file_err(path, keys::TIMESTEPS, format!("not a list of numbers: {e}")))?;
    if timesteps.len() != num_steps {
        return Err(file_err(
            path,
            keys::TIMESTEPS,
            format!("{} timesteps for {num_steps} steps", timesteps.len()),
        ));
    }
    let quantized_layers: Vec<String> =
        serde_json::from_value(meta_json(f, path, keys::LAYERS)?)
            .map_err(|e| file_err(path, keys::LAYERS, format!("not a list of names: {e}")))?;
    Ok(FileInfo {
        class_name: meta(f, path, keys::CLASS)?.to_string(),
        method: meta(f, path, keys::METHOD)?.to_string(),
        method_settings: meta_json(f, path, keys::METHOD_SETTINGS)?,
        quant_config: meta_json(f, path, keys::QUANT_CONFIG)?,
        num_steps,
        timesteps,
        quantized_layers,
        writer: f.metadata.get(keys::WRITER).cloned().unwrap_or_default(),
    })
}

/// Reads a `.dmq.safetensors` file (see the module docs for what is refused).
pub fn load(path: &Path, device: &Device) -> Result<LoadedFile> {
    let mut file = QuantizedFile::load(path)?;
    let info = info(&file, path)?;
    // a text-to-image file's components first; the rest of the file is the denoiser's
    let components = crate::pipeline_file::read_components(&file, path, device)?;
    file.float
        .retain(|k, _| !crate::pipeline_file::is_component_key(k));
    file.quantized
        .retain(|k, _| !crate::pipeline_file::is_component_key(k));
    let config = meta_json(&file, path, keys::CONFIG)?;
    if config.get("_class_name").and_then(Value::as_str) != Some(info.class_name.as_str()) {
        return Err(file_err(
            path,
            keys::CONFIG,
            "its _class_name differs from dmq.class_name",
        ));
    }
    let scheduler = SchedulerSpec::from_json(&meta_json(&file, path, keys::SCHEDULER)?, path)?;
    let mut model = AnyDenoiser::from_config_json(&config, path, device)?;
    // SmoothQuant divisors are parameters of the layers that have them
    let smoothed: BTreeSet<String> = file
        .float
        .keys()
        .filter_map(|k| k.strip_suffix(".smooth").map(String::from))
        .collect();
    model.for_each_layer_mut(&mut |l| {
        if smoothed.contains(l.name()) {
            match l {
                dmq_models::layers::LayerMut::Linear(q) => q.attach_smoothing(device),
                dmq_models::layers::LayerMut::Conv2d(q) => q.attach_smoothing(device),
                dmq_models::layers::LayerMut::Matmul(_) => {}
            }
        }
    });
    // so are SVDQuant's branches (their factors are the file's f16 entries)
    let mut branch_err = None;
    model.for_each_layer_mut(&mut |l| {
        let (name, shape) = match &l {
            dmq_models::layers::LayerMut::Linear(q) => {
                (q.name().to_string(), q.weight_shape().to_vec())
            }
            dmq_models::layers::LayerMut::Conv2d(q) => {
                (q.name().to_string(), q.weight_shape().to_vec())
            }
            dmq_models::layers::LayerMut::Matmul(_) => return,
        };
        let (d_out, d_in) = (shape[0], shape[1..].iter().product::<usize>());
        let entry = match dmq_infer::export::low_rank(&file, &name, d_in, d_out) {
            Ok(Some(e)) => e,
            Ok(None) => return,
            Err(e) => {
                branch_err.get_or_insert(e);
                return;
            }
        };
        let branch = dmq_models::layers::LowRank::from_host(
            &name, entry.down, entry.up, entry.rank, d_in, d_out, device,
        );
        match (l, branch) {
            (dmq_models::layers::LayerMut::Linear(q), Ok(b)) => q.low_rank = Some(b),
            (dmq_models::layers::LayerMut::Conv2d(q), Ok(b)) => q.low_rank = Some(b),
            (_, Err(e)) => {
                branch_err.get_or_insert(e.into());
            }
            _ => {}
        }
    });
    if let Some(e) = branch_err {
        return Err(e.into());
    }

    // 1. every model parameter, from a float entry or a dequantized weight
    let fresh = model.weights_to_bytes()?;
    let mut params = Vec::new();
    let mut used: BTreeSet<String> = BTreeSet::new();
    for (key, want, _) in float_entries(&fresh, path)? {
        let data = if let Some((shape, data)) = file.float.get(&key).or(file.half.get(&key)) {
            check_shape(path, &key, shape, &want)?;
            data.clone()
        } else if let Some(q) = file.quantized.get(&key) {
            check_shape(path, &key, &q.shape, &want)?;
            q.dequantize()?
        } else {
            return Err(file_err(
                path,
                &key,
                "missing: the model's config has this parameter",
            ));
        };
        used.insert(key.clone());
        params.push((key, want, data));
    }
    model = model.load_weights_bytes(&float_bytes(&params, path)?, path, device)?;

    // 2. the quantizers of the layers
    dmq_infer::load_export(&mut model, &file, device)
        .map_err(|e| file_err(path, "layers", e.to_string()))?;

    // 3. nothing left over, nothing missing
    let mut layer_names = BTreeSet::new();
    model.for_each_layer(&mut |l| {
        layer_names.insert(l.name().to_string());
    });
    let owner = |key: &str| -> bool {
        // `<layer>.<a|b>.<delta|zero>.<set>`
        let parts: Vec<&str> = key.rsplitn(4, '.').collect();
        parts.len() == 4
            && (parts[2] == "a" || parts[2] == "b")
            && (parts[1] == "delta" || parts[1] == "zero")
            && parts[0].parse::<usize>().is_ok()
            && layer_names.contains(parts[3])
    };
    for key in file.float.keys().chain(file.quantized.keys()) {
        if !used.contains(key) && !owner(key) {
            return Err(file_err(
                path,
                key,
                "matches no parameter or layer of the model",
            ));
        }
    }
    for k in file.metadata.keys() {
        if let Some(rest) = k
            .strip_suffix(".spec")
            .or_else(|| k.strip_suffix(".step_to_set"))
            && let Some((layer, op)) = rest.rsplit_once('.')
            && (op == "a" || op == "b")
            && !layer_names.contains(layer)
        {
            return Err(file_err(path, k, "matches no layer of the model"));
        }
    }
    // every activation step map covers exactly the file's sampling steps
    for (k, v) in &file.metadata {
        if let Some(rest) = k.strip_suffix(".step_to_set")
            && let Some((_, op)) = rest.rsplit_once('.')
            && (op == "a" || op == "b")
        {
            let n = serde_json::from_str::<Vec<serde_json::Value>>(v)
                .map_err(|e| file_err(path, k, format!("not a list: {e}")))?
                .len();
            if n != info.num_steps {
                return Err(file_err(
                    path,
                    k,
                    format!("maps {n} steps; the file is for {} steps", info.num_steps),
                ));
            }
        }
    }
    let mut quantized_now = BTreeSet::new();
    model.for_each_layer(&mut |l| {
        if layer_quantized(&l) {
            quantized_now.insert(l.name().to_string());
        }
    });
    for l in &info.quantized_layers {
        if !layer_names.contains(l) {
            return Err(file_err(
                path,
                keys::LAYERS,
                format!("layer '{l}' is not in the model"),
            ));
        }
        if !quantized_now.contains(l) {
            return Err(file_err(
                path,
                l,
                "listed as quantized but the file has no quantizer for it",
            ));
        }
    }
    let model = burn::module::Module::no_grad(model);
    let pipeline = match (components, &model) {
        (None, _) => None,
        (Some(c), AnyDenoiser::UNetCond(unet)) => {
            crate::text_to_image::check_widths(unet, &c.text_encoder, path)?;
            Some(TextToImage {
                dir: path.to_path_buf(),
                model_index: c.model_index,
                tokenizer: c.tokenizer,
                tokenizer_files: c.tokenizer_files,
                text_encoder: c.text_encoder,
                unet: unet.clone(),
                vae: c.vae,
                scheduler: scheduler.clone(),
                component_bits: c.bits,
            })
        }
        (Some(_), other) => {
            return Err(file_err(
                path,
                crate::pipeline_file::keys::MODEL_INDEX,
                format!(
                    "text-to-image components beside a {}: only a UNet2DConditionModel takes them",
                    other.class_name()
                ),
            ));
        }
    };
    Ok(LoadedFile {
        model,
        scheduler,
        info,
        file,
        path: path.to_path_buf(),
        pipeline,
    })
}

fn check_shape(path: &Path, key: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got != want {
        return Err(file_err(
            path,
            key,
            format!("shape {got:?}, the model's config gives {want:?}"),
        ));
    }
    Ok(())
}

/// Per-layer summary of a file for `dmq inspect`: (layer, weight bits, granularity, bytes).
pub fn layer_table(f: &QuantizedFile) -> Vec<LayerRow> {
    let mut rows: BTreeMap<String, LayerRow> = BTreeMap::new();
    for (name, q) in &f.quantized {
        let layer = name.strip_suffix(".weight").unwrap_or(name).to_string();
        rows.insert(
            layer.clone(),
            LayerRow {
                layer,
                weight_bits: Some(q.bits()),
                granularity: format!("{:?}", q.params.spec.granularity()),
                params: q.numel(),
                bytes: q.storage_bytes(),
                act: Vec::new(),
            },
        );
    }
    for (k, v) in &f.metadata {
        if let Some(rest) = k.strip_suffix(".spec")
            && let Some((layer, op)) = rest.rsplit_once('.')
            && (op == "a" || op == "b")
            && let Ok(spec) = serde_json::from_str::<dmq_quant::QuantSpec>(v)
        {
            rows.entry(layer.to_string())
                .or_insert_with(|| LayerRow {
                    layer: layer.to_string(),
                    weight_bits: None,
                    granularity: "-".into(),
                    params: 0,
                    bytes: 0,
                    act: Vec::new(),
                })
                .act
                .push((op.to_string(), spec.cost_bits()));
        }
    }
    rows.into_values().collect()
}

/// One row of [`layer_table`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerRow {
    /// diffusers path.
    pub layer: String,
    /// Weight bits (None: FP weight).
    pub weight_bits: Option<u32>,
    /// Weight quantization granularity.
    pub granularity: String,
    /// Weight parameters.
    pub params: usize,
    /// Packed weight bytes (codes + Δ + z).
    pub bytes: usize,
    /// Activation quantizers: (operand, bits).
    pub act: Vec<(String, u32)>,
}
