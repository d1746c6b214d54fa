//! The two key layouts of a transformers `CLIPTextModel` checkpoint, and the
//! `position_ids` buffer some of them carry.
//!
//! - transformers ≤ 4.x (every Stable Diffusion `text_encoder/model.safetensors` on the
//!   Hub) prefixes each key with `text_model.` (`text_model.encoder.layers.0.mlp.fc1.weight`);
//! - transformers 5 writes the keys without it (`encoder.layers.0.mlp.fc1.weight`) and
//!   loads both.
//!
//! Older files also hold `…embeddings.position_ids`, the `arange(max_position_embeddings)`
//! buffer that transformers made non-persistent in 4.31 and has ignored on load since
//! (whatever its dtype or values: some converted checkpoints store it as rounded floats).
//! It is no parameter here either: [`prepare`] drops exactly that key, so that the strict
//! loader ([`crate::io`]) still reports every other unknown tensor.

use std::path::Path;

use safetensors::SafeTensors;
use safetensors::tensor::TensorView;

use crate::error::{ModelError, Result};

/// Key prefix of the transformers ≤ 4.x layout.
pub const PREFIX: &str = "text_model.";
/// The non-persistent position buffer (without the prefix).
pub const POSITION_IDS: &str = "embeddings.position_ids";

/// Which layout a checkpoint uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyLayout {
    /// Keys start with `text_model.` (transformers ≤ 4.x).
    Prefixed,
    /// Keys without the prefix (transformers 5).
    Bare,
}

/// The layout of the checkpoint `bytes`, and its bytes without the `position_ids` buffer
/// when it has one (`None`: use `bytes` as they are). A file mixing prefixed and bare
/// parameter keys is a [`ModelError::Checkpoint`] naming one key of each.
pub fn prepare(bytes: &[u8], origin: &Path) -> Result<(KeyLayout, Option<Vec<u8>>)> {
    let err = |reason: String| ModelError::Checkpoint {
        path: origin.to_path_buf(),
        reason,
    };
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| err(format!("not a safetensors file: {e}")))?;
    let mut names = st.names();
    names.sort();
    let prefixed = names.iter().find(|k| k.starts_with(PREFIX));
    let bare = names
        .iter()
        .find(|k| !k.starts_with(PREFIX) && **k != POSITION_IDS);
    let layout = match (prefixed, bare) {
        (Some(p), Some(b)) => {
            return Err(err(format!(
                "mixes keys with the '{PREFIX}' prefix (transformers ≤ 4.x) and without it \
                 (transformers 5): '{p}' and '{b}'"
            )));
        }
        (Some(_), None) => KeyLayout::Prefixed,
        _ => KeyLayout::Bare,
    };
    let buffer = match layout {
        KeyLayout::Prefixed => format!("{PREFIX}{POSITION_IDS}"),
        KeyLayout::Bare => POSITION_IDS.to_string(),
    };
    if st.tensor(&buffer).is_err() {
        return Ok((layout, None));
    }
    let views: Vec<(String, TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(k, _)| *k != buffer)
        .collect();
    let without = safetensors::serialize(views, None)
        .map_err(|e| err(format!("re-serialising without '{buffer}': {e}")))?;
    Ok((layout, Some(without)))
}
