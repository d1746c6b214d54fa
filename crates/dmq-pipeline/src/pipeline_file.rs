//! The FP components of a text-to-image pipeline inside a `.dmq.safetensors` file
//! (`dmq.format` = `dmq.pipeline.v1`), so that the file alone turns prompts into images
//! (`docs/format.md` §11):
//!
//! - `text_encoder.<key>` and `vae.<key>`: every parameter of the CLIP text encoder
//!   (transformers keys, `text_model.` prefixed) and of the VAE (diffusers keys), f32, or
//!   for a component quantized weight-only ([`crate::component_quant`]) its rank-≥2 weights
//!   as integer entries (codes, one Δ per output row) and the rest f32;
//! - metadata `dmq.pipeline.model_index` (the pipeline's `model_index.json`),
//!   `dmq.pipeline.text_encoder` and `dmq.pipeline.vae` (their `config.json`), and
//!   `dmq.pipeline.tokenizer` (a JSON object: tokenizer file name → its text), and
//!   `dmq.pipeline.component_bits` (`{"text_encoder": b | null, "vae": b | null}`; absent
//!   means both f32).
//!
//! The quantized UNet is the file's model, as for any denoiser; the scheduler is the file's
//! `dmq.scheduler`. Reading is as strict as the rest of the file: a missing or extra
//! component tensor, a config that does not build, a tokenizer that does not load are errors
//! naming the file and the entry.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::Device;
use dmq_models::clip::{ClipTextConfig, ClipTextModel};
use dmq_models::vae::{AutoencoderKL, AutoencoderKlConfig};
use dmq_quant::QuantizedFile;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde_json::Value;

use crate::component_quant::{self, ComponentBits};
use crate::error::{Result, file_err};
use crate::text_to_image::TextToImage;
use crate::tokenizer::{ClipTokenizer, TOKENIZER_FILES};

/// Metadata keys of the components.
pub mod keys {
    /// The pipeline's `model_index.json` (JSON); its presence makes a text-to-image file.
    pub const MODEL_INDEX: &str = "dmq.pipeline.model_index";
    /// The text encoder's `config.json` (JSON).
    pub const TEXT_ENCODER: &str = "dmq.pipeline.text_encoder";
    /// The VAE's `config.json` (JSON).
    pub const VAE: &str = "dmq.pipeline.vae";
    /// The tokenizer's files: a JSON object, file name → text.
    pub const TOKENIZER: &str = "dmq.pipeline.tokenizer";
    /// Weight bits of the components (JSON `ComponentBits`; absent: both f32).
    pub const COMPONENT_BITS: &str = "dmq.pipeline.component_bits";
}

/// Tensor-name prefix of the text encoder's parameters.
pub const TEXT_ENCODER_PREFIX: &str = "text_encoder.";
/// Tensor-name prefix of the VAE's parameters.
pub const VAE_PREFIX: &str = "vae.";

/// Whether `key` names a parameter of a component (not of the denoiser).
pub fn is_component_key(key: &str) -> bool {
    key.starts_with(TEXT_ENCODER_PREFIX) || key.starts_with(VAE_PREFIX)
}

/// Whether the file holds a text-to-image pipeline's components.
pub fn has_components(f: &QuantizedFile) -> bool {
    f.metadata.contains_key(keys::MODEL_INDEX)
}

/// One f32 tensor: `(key, shape, row-major values)`.
pub(crate) type FloatEntry = (String, Vec<usize>, Vec<f32>);

/// Every f32 parameter of safetensors `bytes` (written by `dmq_models::io`).
pub(crate) fn float_entries(bytes: &[u8], origin: &Path) -> Result<Vec<FloatEntry>> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| file_err(origin, "model weights", e.to_string()))?;
    Ok(st
        .tensors()
        .into_iter()
        .map(|(key, view)| {
            let data = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (key, view.shape().to_vec(), data)
        })
        .collect())
}

/// Safetensors bytes (f32) of `(key, shape, values)` entries.
pub(crate) fn float_bytes(entries: &[FloatEntry], origin: &Path) -> Result<Vec<u8>> {
    let raw: Vec<(&str, &[usize], Vec<u8>)> = entries
        .iter()
        .map(|(k, s, d)| {
            (
                k.as_str(),
                s.as_slice(),
                d.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = raw
        .iter()
        .map(|(k, s, b)| TensorView::new(Dtype::F32, s.to_vec(), b).map(|v| (k.to_string(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| file_err(origin, "model weights", e.to_string()))?;
    safetensors::serialize(views, None)
        .map_err(|e| file_err(origin, "model weights", e.to_string()))
}

/// Adds `pipe`'s tokenizer, text encoder and VAE to `f`: f32, or at `pipe.component_bits`
/// (whose weights the pipeline already holds rounded: quantizing them again gives the same
/// codes).
pub fn add_components(f: &mut QuantizedFile, pipe: &TextToImage) -> Result<()> {
    let origin = pipe.dir.as_path();
    let bits = pipe.component_bits;
    bits.validate(origin)?;
    let te = dmq_models::io::weights_to_bytes(&pipe.text_encoder, HashMap::new())?;
    let vae = dmq_models::io::weights_to_bytes(&pipe.vae, HashMap::new())?;
    for (prefix, bytes, b) in [
        (TEXT_ENCODER_PREFIX, te, bits.text_encoder),
        (VAE_PREFIX, vae, bits.vae),
    ] {
        for (key, shape, data) in float_entries(&bytes, origin)? {
            let name = format!("{prefix}{key}");
            match b {
                Some(b) if component_quant::is_quantized_weight(&shape) => {
                    let q = component_quant::quantize_weight(&data, &shape, b, origin, &name)?;
                    f.quantized.insert(name, q);
                }
                _ => {
                    f.float.insert(name, (shape, data));
                }
            }
        }
    }
    let mut tokenizer = serde_json::Map::new();
    for (name, bytes) in &pipe.tokenizer_files {
        let text = String::from_utf8(bytes.clone())
            .map_err(|_| file_err(origin, format!("tokenizer/{name}"), "not UTF-8 text"))?;
        tokenizer.insert(name.clone(), Value::String(text));
    }
    let vae_config = pipe.vae.config().to_json_value()?;
    let m = &mut f.metadata;
    m.insert(
        crate::dmq_file::keys::FORMAT.into(),
        crate::dmq_file::PIPELINE_FORMAT_VERSION.into(),
    );
    m.insert(keys::MODEL_INDEX.into(), pipe.model_index.to_string());
    m.insert(
        keys::TEXT_ENCODER.into(),
        pipe.text_encoder.config().to_json_value().to_string(),
    );
    m.insert(keys::VAE.into(), vae_config.to_string());
    m.insert(keys::TOKENIZER.into(), Value::Object(tokenizer).to_string());
    if !bits.is_fp() {
        let json = serde_json::to_string(&bits)
            .map_err(|e| file_err(origin, keys::COMPONENT_BITS, e.to_string()))?;
        m.insert(keys::COMPONENT_BITS.into(), json);
    }
    Ok(())
}

/// The components read back from a file.
pub struct Components {
    /// `model_index.json`.
    pub model_index: Value,
    /// The tokenizer.
    pub tokenizer: ClipTokenizer,
    /// Its files.
    pub tokenizer_files: BTreeMap<String, Vec<u8>>,
    /// The text encoder.
    pub text_encoder: ClipTextModel,
    /// The VAE.
    pub vae: AutoencoderKL,
    /// The components' weight bits.
    pub bits: ComponentBits,
}

fn meta_json(f: &QuantizedFile, path: &Path, key: &str) -> Result<Value> {
    let text = f
        .metadata
        .get(key)
        .ok_or_else(|| file_err(path, key, "missing (the file has dmq.pipeline.model_index)"))?;
    serde_json::from_str(text).map_err(|e| file_err(path, key, format!("invalid JSON: {e}")))
}

/// The parameters of `f` under `prefix`, prefix stripped, as f32 safetensors bytes: f32
/// entries as they are, integer entries dequantized. An integer entry is accepted only for a
/// component the file declares at `bits` bits, with that width, per output row, and of rank
/// ≥ 2.
fn component_bytes(
    f: &QuantizedFile,
    path: &Path,
    prefix: &str,
    bits: Option<u32>,
) -> Result<Vec<u8>> {
    let mut entries: Vec<FloatEntry> = f
        .float
        .iter()
        .filter_map(|(k, (s, d))| {
            k.strip_prefix(prefix)
                .map(|rest| (rest.to_string(), s.clone(), d.clone()))
        })
        .collect();
    if let Some(k) = f.half.keys().find(|k| k.starts_with(prefix)) {
        return Err(file_err(
            path,
            k,
            "components are stored in f32 or integer codes",
        ));
    }
    for (k, q) in f.quantized.iter().filter(|(k, _)| k.starts_with(prefix)) {
        let want = bits.ok_or_else(|| {
            file_err(
                path,
                k,
                format!(
                    "integer codes, but {} declares this component f32",
                    keys::COMPONENT_BITS
                ),
            )
        })?;
        let per_row =
            q.params.spec.granularity() == dmq_quant::spec::Granularity::PerChannel { axis: 0 };
        if q.bits() != want || !per_row || !component_quant::is_quantized_weight(&q.shape) {
            return Err(file_err(
                path,
                k,
                format!(
                    "{}-bit codes of shape {:?}: the component's weights are {want}-bit, one step per output row, rank ≥ 2",
                    q.bits(),
                    q.shape
                ),
            ));
        }
        let data = q
            .dequantize()
            .map_err(|e| file_err(path, k, e.to_string()))?;
        entries.push((k[prefix.len()..].to_string(), q.shape.clone(), data));
    }
    float_bytes(&entries, path)
}

/// Reads the components of a text-to-image file, or `None` for a file of a plain denoiser.
pub fn read_components(
    f: &QuantizedFile,
    path: &Path,
    device: &Device,
) -> Result<Option<Components>> {
    if !has_components(f) {
        return Ok(None);
    }
    let model_index = meta_json(f, path, keys::MODEL_INDEX)?;
    crate::text_to_image::check_model_index(&model_index, path)?;
    let at =
        |key: &'static str| move |e: dmq_models::ModelError| file_err(path, key, e.to_string());
    let bits: ComponentBits = match f.metadata.get(keys::COMPONENT_BITS) {
        None => ComponentBits::default(),
        Some(_) => serde_json::from_value(meta_json(f, path, keys::COMPONENT_BITS)?)
            .map_err(|e| file_err(path, keys::COMPONENT_BITS, e.to_string()))?,
    };
    bits.validate(path)?;
    let te_config = ClipTextConfig::from_json_value(&meta_json(f, path, keys::TEXT_ENCODER)?)
        .map_err(at(keys::TEXT_ENCODER))?;
    let text_encoder = dmq_models::io::load_weights_from_bytes(
        te_config.init(device).map_err(at(keys::TEXT_ENCODER))?,
        &component_bytes(f, path, TEXT_ENCODER_PREFIX, bits.text_encoder)?,
        path,
        device,
    )
    .map_err(at(keys::TEXT_ENCODER))?;
    let vae_config =
        AutoencoderKlConfig::from_json(&meta_json(f, path, keys::VAE)?).map_err(at(keys::VAE))?;
    let vae = dmq_models::io::load_weights_from_bytes(
        vae_config.init(device).map_err(at(keys::VAE))?,
        &component_bytes(f, path, VAE_PREFIX, bits.vae)?,
        path,
        device,
    )
    .map_err(at(keys::VAE))?;
    let Value::Object(files) = meta_json(f, path, keys::TOKENIZER)? else {
        return Err(file_err(
            path,
            keys::TOKENIZER,
            "expected an object: file name → text",
        ));
    };
    let mut tokenizer_files = BTreeMap::new();
    for (name, text) in files {
        let Some(text) = text.as_str() else {
            return Err(file_err(
                path,
                keys::TOKENIZER,
                format!("{name}: not a string"),
            ));
        };
        if !TOKENIZER_FILES.contains(&name.as_str()) {
            return Err(file_err(
                path,
                keys::TOKENIZER,
                format!(
                    "'{name}' is not a tokenizer file ({})",
                    TOKENIZER_FILES.join(", ")
                ),
            ));
        }
        tokenizer_files.insert(name, text.as_bytes().to_vec());
    }
    let tokenizer = ClipTokenizer::from_files(path, &tokenizer_files)?;
    Ok(Some(Components {
        model_index,
        tokenizer,
        tokenizer_files,
        text_encoder,
        vae,
        bits,
    }))
}
