//! What every trainer of this crate does the same way around its loop: a checkpoint
//! directory belongs to one run, identified by a tag (the method's config, preset and
//! schedule as JSON, saved in the checkpoint's `state.json`), and a checkpoint of another
//! run is refused before any costly work.

use dmq_models::train::Checkpoint;

use crate::error::{FinetuneError, Result};

/// Refuses `ck` when it holds a checkpoint saved under another `tag`; `differs` says what
/// may differ (for the message).
pub(crate) fn refuse_foreign_checkpoint(
    ck: Option<&Checkpoint>,
    tag: &serde_json::Value,
    differs: &str,
) -> Result<()> {
    if let Some(ck) = ck
        && let Some(st) = ck.state()?
        && &st.notes != tag
    {
        return Err(FinetuneError::Checkpoint {
            path: ck.dir().to_path_buf(),
            reason: format!(
                "it belongs to another run ({differs} differ); delete it or use another directory"
            ),
        });
    }
    Ok(())
}
