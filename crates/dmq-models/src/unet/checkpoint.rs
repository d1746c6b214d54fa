//! Old UNet checkpoints: the attention-key renaming diffusers applies on load
//! (`ModelMixin._convert_deprecated_attention_blocks`).
//!
//! Checkpoints written before diffusers' `Attention` refactor (for example the original
//! `google/ddpm-cifar10-32`) name the attention projections `query`, `key`, `value` and
//! `proj_attn`; today's names are `to_q`, `to_k`, `to_v` and `to_out.0`. Shapes are the same,
//! so converting is a pure rename of the keys under `*.attentions.<n>.`.

use std::path::Path;

use safetensors::SafeTensors;
use safetensors::tensor::TensorView;

use crate::error::{ModelError, Result};

/// Old → new names of the attention parameters.
const RENAMES: [(&str, &str); 4] = [
    ("query", "to_q"),
    ("key", "to_k"),
    ("value", "to_v"),
    ("proj_attn", "to_out.0"),
];

/// The current name of `key` if it is a deprecated attention key
/// (`mid_block.attentions.0.query.weight` → `mid_block.attentions.0.to_q.weight`).
pub fn renamed_attention_key(key: &str) -> Option<String> {
    let (prefix, rest) = key.split_once(".attentions.")?;
    let (index, rest) = rest.split_once('.')?;
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (name, param) = rest.split_once('.')?;
    if !matches!(param, "weight" | "bias") {
        return None;
    }
    RENAMES
        .iter()
        .find(|(old, _)| *old == name)
        .map(|(_, new)| format!("{prefix}.attentions.{index}.{new}.{param}"))
}

/// Safetensors bytes with deprecated attention keys renamed, or `None` when there is none
/// (the bytes are then used as they are). Dtypes and data are kept.
pub fn convert_deprecated_attention_keys(bytes: &[u8], origin: &Path) -> Result<Option<Vec<u8>>> {
    let err = |reason: String| ModelError::Checkpoint {
        path: origin.to_path_buf(),
        reason,
    };
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| err(format!("not a safetensors file: {e}")))?;
    if !st
        .names()
        .iter()
        .any(|k| renamed_attention_key(k).is_some())
    {
        return Ok(None);
    }
    let mut views: Vec<(String, TensorView<'_>)> = Vec::new();
    for (key, view) in st.tensors() {
        let new = renamed_attention_key(&key).unwrap_or(key.clone());
        if new != key && st.tensor(&new).is_ok() {
            return Err(err(format!(
                "both the deprecated '{key}' and '{new}' are present"
            )));
        }
        views.push((new, view));
    }
    safetensors::serialize(views, None)
        .map(Some)
        .map_err(|e| err(format!("re-serialising renamed tensors: {e}")))
}
