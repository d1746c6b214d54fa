//! [`Checkpoint`]: resumable training state in one directory, replaced atomically.
//!
//! Layout: `model.bpk` and `ema.bpk` (burnpack records, which keep parameter ids so the
//! optimizer state still matches after a restart), `optim.bpk` (AdamW moments) and
//! `state.json` ([`TrainState`]). A save writes a fresh `<dir>.tmp` and syncs every file in
//! it and the directory itself, then swaps it in with two renames, syncing the parent
//! directory after each; `<dir>.old` is removed only once the new checkpoint is durable. An
//! interrupted save (or a power loss at any point) leaves either the old or the new
//! checkpoint loadable, never a mix: [`Checkpoint::load`] falls back to `<dir>.old`.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Progress of a training run, saved next to the weights.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps taken.
    pub step: usize,
    /// EMA updates taken.
    pub ema_updates: u64,
    /// (step, loss) log.
    pub losses: Vec<(usize, f32)>,
    /// Wall-clock seconds spent training, summed over sessions.
    pub wall_s: f64,
    /// Free-form run description (config, command).
    pub notes: serde_json::Value,
}

/// A checkpoint directory.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    dir: PathBuf,
}

fn err(path: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// fsync of a file written by someone else (burn's record writers do not sync).
fn sync_file(path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .open(path)?
        .sync_all()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Checkpoint {
    /// A checkpoint at `dir` (created on first save). A trailing slash is ignored
    /// (`runs/a/` is `runs/a`, whose siblings are `runs/a.tmp` and `runs/a.old`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir: PathBuf = dir.into();
        // `components` drops trailing separators and `.` components.
        let normal: PathBuf = dir.components().collect();
        Self {
            dir: if normal.as_os_str().is_empty() {
                dir
            } else {
                normal
            },
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut s = self.dir.clone().into_os_string();
        s.push(suffix);
        PathBuf::from(s)
    }

    /// Saves model, EMA shadow, optimizer and state atomically.
    pub fn save<M: Module, E: Module>(
        &self,
        model: &M,
        ema: &E,
        optim: &ModuleOptimizer,
        state: &TrainState,
    ) -> Result<()> {
        let tmp = self.sibling(".tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        model
            .clone()
            .save_file(tmp.join("model.bpk"))
            .map_err(|e| err(&tmp, e))?;
        ema.clone()
            .save_file(tmp.join("ema.bpk"))
            .map_err(|e| err(&tmp, e))?;
        optim
            .save(tmp.join("optim.bpk"))
            .map_err(|e| err(&tmp, e))?;
        let json = serde_json::to_vec_pretty(state).map_err(|e| err(&tmp, e))?;
        let state_path = tmp.join("state.json");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&state_path).map_err(io(&state_path))?;
            f.write_all(&json).map_err(io(&state_path))?;
        }
        // Every file, then the directory, on disk before the new checkpoint is swapped in.
        for name in ["model.bpk", "ema.bpk", "optim.bpk", "state.json"] {
            let p = tmp.join(name);
            sync_file(&p).map_err(io(&p))?;
        }
        dmq_quant::file::sync_dir(&tmp).map_err(io(&tmp))?;
        let old = self.sibling(".old");
        if self.dir.exists() {
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(io(&old))?;
            }
            std::fs::rename(&self.dir, &old).map_err(io(&self.dir))?;
            dmq_quant::file::sync_parent_dir(&self.dir).map_err(io(&self.dir))?;
        }
        std::fs::rename(&tmp, &self.dir).map_err(io(&tmp))?;
        dmq_quant::file::sync_parent_dir(&self.dir).map_err(io(&self.dir))?;
        // Only now is the new checkpoint durable: the previous one may go.
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
            dmq_quant::file::sync_parent_dir(&old).map_err(io(&old))?;
        }
        Ok(())
    }

    /// The saved [`TrainState`] alone (cheap: no tensors are read), or `None` when there is no
    /// checkpoint; lets a caller refuse a checkpoint of another run before building modules.
    pub fn state(&self) -> Result<Option<TrainState>> {
        for dir in [self.dir.clone(), self.sibling(".old")] {
            let p = dir.join("state.json");
            if p.exists() {
                let bytes = std::fs::read(&p).map_err(io(&p))?;
                return serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| err(&dir, format!("state.json: {e}")));
            }
        }
        Ok(None)
    }

    /// Loads the checkpoint into freshly built modules and optimizer, or `None` when there is
    /// none. Falls back to `<dir>.old` if a save was interrupted between its two renames.
    #[allow(clippy::type_complexity)]
    pub fn load<M: Module, E: Module>(
        &self,
        model: M,
        ema: E,
        optim: ModuleOptimizer,
    ) -> Result<Option<(M, E, ModuleOptimizer, TrainState)>> {
        let dir = if self.dir.join("state.json").exists() {
            self.dir.clone()
        } else if self.sibling(".old").join("state.json").exists() {
            self.sibling(".old")
        } else {
            return Ok(None);
        };
        let state: TrainState =
            serde_json::from_slice(&std::fs::read(dir.join("state.json")).map_err(io(&dir))?)
                .map_err(|e| err(&dir, format!("state.json: {e}")))?;
        // Read every file into memory: burn's file records are lazy, and the next save replaces
        // (then deletes) this directory while frozen parameters would still point into it.
        let read = |name: &str| -> Result<burn::tensor::Bytes> {
            let p = dir.join(name);
            Ok(burn::tensor::Bytes::from_bytes_vec(
                std::fs::read(&p).map_err(io(&p))?,
            ))
        };
        let record = |name: &str| -> Result<burn::store::ModuleRecord> {
            burn::store::ModuleRecord::from_bytes(read(name)?)
                .map_err(|e| err(&dir, format!("{name}: {e}")))
        };
        let model = model
            .try_load_record(record("model.bpk")?)
            .map_err(|e| err(&dir, format!("model.bpk: {e}")))?;
        let ema = ema
            .try_load_record(record("ema.bpk")?)
            .map_err(|e| err(&dir, format!("ema.bpk: {e}")))?;
        let optim = optim
            .from_bytes(read("optim.bpk")?)
            .map_err(|e| err(&dir, format!("optim.bpk: {e}")))?;
        Ok(Some((model, ema, optim, state)))
    }
}
