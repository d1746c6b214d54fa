//! Results records (docs/design.md §6): one JSON object per (model, method, bits, steps, samples)
//! in `docs/results/<topic>.json`, a markdown table beside it, both written atomically.
//! Rerunning a configuration replaces its row, so tables fill up over several runs; the same
//! configuration scored on another number of samples is another row (FD depends on it).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::DataError;

/// One results row; the first keys are the cross-method schema of docs/design.md §6.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    /// `unet-fmnist`, `dit-fmnist`, ...
    pub model: String,
    /// `fp`, `naive`, `qdiffusion`, `efficientdm`, `quest`, `binary-baseline`, `binarydm`,
    /// `tmpq`, or a documented ablation name.
    pub method: String,
    /// Weight bits (32 for FP).
    pub w_bits: u32,
    /// Activation bits (32 for FP).
    pub a_bits: u32,
    /// Sampling steps.
    pub steps: usize,
    /// Samples the metrics are computed on.
    pub samples: usize,
    /// FD against the Fashion-MNIST test set (lower is better).
    pub fd_test: f64,
    /// FD against the FP model's samples.
    pub fd_fp: f64,
    /// PSNR against the FP samples from the same noise (dB).
    pub psnr_fp: f64,
    /// SSIM against the FP samples.
    pub ssim_fp: f64,
    /// Class accuracy of conditional samples (None for unconditional models).
    pub class_acc: Option<f64>,
    /// BitOPs per generated image over all steps.
    pub bitops: f64,
    /// Bytes of the packed model.
    pub model_bytes: usize,
    /// Wall time of the method (calibration / fine-tuning), seconds.
    pub wall_s: f64,
    /// The command that produced the row.
    pub command: String,
    /// Commit of the code.
    pub commit: String,
    /// Anything else (sampling time, iterations, CFG scale...).
    #[serde(default)]
    pub extra: serde_json::Value,
}

impl ResultRow {
    fn key(&self) -> (String, String, u32, u32, usize, usize) {
        (
            self.model.clone(),
            self.method.clone(),
            self.w_bits,
            self.a_bits,
            self.steps,
            self.samples,
        )
    }
}

/// Reads the rows of `path` (an empty list when the file does not exist yet).
pub fn read_rows(path: &Path) -> Result<Vec<ResultRow>, DataError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| DataError::Invalid(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(source) => Err(DataError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Inserts `row` into `path`, replacing a row with the same model, method, bits, steps and
/// samples. The read-modify-write holds an exclusive lock on `.<file name>.lock` beside
/// `path`, so two runs finishing at once (say the UNet and DiT jobs of one method) both
/// keep their rows.
pub fn upsert_row(path: &Path, row: ResultRow) -> Result<Vec<ResultRow>, DataError> {
    let _lock = lock_beside(path)?;
    let mut rows = read_rows(path)?;
    match rows.iter_mut().find(|r| r.key() == row.key()) {
        Some(r) => *r = row,
        None => rows.push(row),
    }
    let json = serde_json::to_vec_pretty(&rows).expect("rows serialise");
    write(path, &json)?;
    Ok(rows)
}

/// An exclusive advisory lock on `.<file name>.lock` next to `path`, released on drop. (Not
/// `path` itself: the atomic write replaces that file, so a lock on it would lock nothing.)
fn lock_beside(path: &Path) -> Result<std::fs::File, DataError> {
    let name = path
        .file_name()
        .map_or("results".into(), |n| n.to_string_lossy());
    let lock = path.with_file_name(format!(".{name}.lock"));
    create_parent(path)?;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .and_then(|f| f.lock().map(|()| f))
        .map_err(|e| DataError::Output {
            path: lock,
            reason: format!("cannot lock: {e}"),
        })
}

fn create_parent(path: &Path) -> Result<(), DataError> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => std::fs::create_dir_all(d).map_err(|e| DataError::Output {
            path: d.to_path_buf(),
            reason: e.to_string(),
        }),
        None => Ok(()),
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    create_parent(path)?;
    dmq_quant::file::write_atomic(path, bytes).map_err(|e| DataError::Output {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn bits(b: u32) -> String {
    if b >= 16 { "FP".into() } else { b.to_string() }
}

/// A markdown table of `rows` (grouped by model in row order).
pub fn markdown_table(rows: &[ResultRow]) -> String {
    let mut s = String::from(
        "| model | method | W | A | steps | samples | FD test ↓ | FD vs FP ↓ | PSNR vs FP | SSIM vs FP | class acc | GBitOPs/img | model KiB | wall s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut models: Vec<&str> = rows.iter().map(|r| r.model.as_str()).collect();
    models.dedup();
    let mut seen = std::collections::BTreeSet::new();
    for m in models {
        if !seen.insert(m) {
            continue;
        }
        for r in rows.iter().filter(|r| r.model == m) {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.4} | {} | {:.3} | {:.1} | {:.0} |\n",
                r.model,
                r.method,
                bits(r.w_bits),
                bits(r.a_bits),
                r.steps,
                r.samples,
                r.fd_test,
                r.fd_fp,
                r.psnr_fp,
                r.ssim_fp,
                r.class_acc
                    .map_or("–".into(), |a| format!("{:.1}%", 100.0 * a)),
                r.bitops / 1e9,
                r.model_bytes as f64 / 1024.0,
                r.wall_s
            );
        }
    }
    s
}

/// Marks the start of hand-written notes in a results page: [`write_markdown`] keeps
/// everything from this line on when it regenerates the page.
pub const NOTES_MARKER: &str = "<!-- notes: kept when the table is regenerated -->";

/// Writes `header`, the table of `rows` and `footer` to `path`, followed by the notes of the
/// existing page (from [`NOTES_MARKER`] on), so rerunning an example does not erase the
/// analysis written under its table.
pub fn write_markdown(
    path: &Path,
    header: &str,
    rows: &[ResultRow],
    footer: &str,
) -> Result<(), DataError> {
    let notes = std::fs::read_to_string(path)
        .ok()
        .and_then(|old| old.find(NOTES_MARKER).map(|i| old[i..].to_string()))
        .map_or(String::new(), |n| format!("\n{}", n.trim_end()) + "\n");
    let text = format!("{header}\n\n{}\n{footer}\n{notes}", markdown_table(rows));
    write(path, text.as_bytes())
}

/// The current git commit (short), or `unknown` outside a checkout.
pub fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}
