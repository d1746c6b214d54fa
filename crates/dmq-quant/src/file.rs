//! [`QuantizedFile`]: packed quantized tensors (and plain f32 tensors) in one safetensors
//! file with self-describing metadata. burn's safetensors store refuses quantized tensors,
//! so this layout is our own:
//!
//! | key                  | dtype | content                                  |
//! |----------------------|-------|------------------------------------------|
//! | `<name>.qcodes`      | U8    | packed codes (see [`crate::pack`])       |
//! | `<name>.delta`       | F32   | Δ per parameter group                    |
//! | `<name>.zero`        | F32   | z per parameter group                    |
//! | `<name>` (float)     | F32   | an unquantized tensor (bias, FP layer)   |
//!
//! Header metadata: `dmq.format = "dmq-quantized/1"`, `dmq.q.<name>` = JSON
//! `{"shape": [...], "spec": {...}}` per quantized tensor, and free `user.<key>` entries.
//! Files are written atomically (temporary file + rename).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::error::{QuantError, Result};
use crate::pack::packed_len;
use crate::qtensor::{AffineParams, QuantizedTensor};
use crate::spec::QuantSpec;

const FORMAT: &str = "dmq-quantized/1";

#[derive(Serialize, Deserialize)]
struct Entry {
    shape: Vec<usize>,
    spec: QuantSpec,
}

/// A named collection of quantized and float tensors plus string metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QuantizedFile {
    /// Quantized tensors by name.
    pub quantized: BTreeMap<String, QuantizedTensor>,
    /// Plain f32 tensors by name: (shape, row-major data).
    pub float: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// Free metadata (stored as `user.<key>`).
    pub metadata: BTreeMap<String, String>,
}

fn malformed(path: &str, reason: impl Into<String>) -> QuantError {
    QuantError::Malformed {
        path: path.into(),
        reason: reason.into(),
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bytes_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced, then
/// renamed over the target, so a crash never leaves a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| QuantError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| io(std::io::Error::other("path has no file name")))?;
    // pid + a per-process counter: two threads writing the same path never share a temp file
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
}

impl QuantizedFile {
    /// Serialises to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut meta = HashMap::new();
        meta.insert("dmq.format".to_string(), FORMAT.to_string());
        for (name, q) in &self.quantized {
            if self.float.contains_key(name) {
                return Err(malformed(
                    "<memory>",
                    format!("'{name}' is both quantized and float"),
                ));
            }
            let entry = Entry {
                shape: q.shape.clone(),
                spec: q.params.spec,
            };
            let json =
                serde_json::to_string(&entry).map_err(|e| malformed("<memory>", e.to_string()))?;
            meta.insert(format!("dmq.q.{name}"), json);
            owned.push((
                format!("{name}.qcodes"),
                Dtype::U8,
                vec![q.packed.len()],
                q.packed.clone(),
            ));
            let n = q.params.delta.len();
            owned.push((
                format!("{name}.delta"),
                Dtype::F32,
                vec![n],
                f32_bytes(&q.params.delta),
            ));
            owned.push((
                format!("{name}.zero"),
                Dtype::F32,
                vec![n],
                f32_bytes(&q.params.zero),
            ));
        }
        for (name, (shape, data)) in &self.float {
            owned.push((name.clone(), Dtype::F32, shape.clone(), f32_bytes(data)));
        }
        for (k, v) in &self.metadata {
            meta.insert(format!("user.{k}"), v.clone());
        }
        let views = owned
            .iter()
            .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
            .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
            .map_err(|e| malformed("<memory>", e.to_string()))?;
        safetensors::serialize(views, Some(meta)).map_err(|e| malformed("<memory>", e.to_string()))
    }

    /// Parses safetensors bytes; `origin` names the source in errors.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| malformed(origin, e.to_string()))?;
        let (_, header) =
            SafeTensors::read_metadata(bytes).map_err(|e| malformed(origin, e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        match meta.get("dmq.format").map(String::as_str) {
            Some(FORMAT) => {}
            other => {
                return Err(malformed(
                    origin,
                    format!("missing or unknown dmq.format {other:?} (expected {FORMAT})"),
                ));
            }
        }
        let tensor = |key: &str, dtype: Dtype| -> Result<TensorView<'_>> {
            let t = st
                .tensor(key)
                .map_err(|e| malformed(origin, format!("tensor '{key}': {e}")))?;
            if t.dtype() != dtype {
                return Err(malformed(
                    origin,
                    format!(
                        "tensor '{key}' has dtype {:?}, expected {dtype:?}",
                        t.dtype()
                    ),
                ));
            }
            Ok(t)
        };
        let mut out = QuantizedFile::default();
        let mut claimed = std::collections::HashSet::new();
        for (k, v) in &meta {
            if let Some(key) = k.strip_prefix("user.") {
                out.metadata.insert(key.to_string(), v.clone());
                continue;
            }
            let Some(name) = k.strip_prefix("dmq.q.") else {
                continue;
            };
            let entry: Entry = serde_json::from_str(v)
                .map_err(|e| malformed(origin, format!("metadata of '{name}': {e}")))?;
            let bits = entry.spec.int_bits().ok_or_else(|| {
                malformed(
                    origin,
                    format!("'{name}' has a float spec but is stored quantized"),
                )
            })?;
            let numel: usize = entry.shape.iter().product();
            let codes = tensor(&format!("{name}.qcodes"), Dtype::U8)?;
            let need = packed_len(numel, bits);
            if codes.data().len() != need {
                return Err(malformed(
                    origin,
                    format!(
                        "'{name}.qcodes' holds {} bytes, shape {:?} at {bits} bits needs {need}",
                        codes.data().len(),
                        entry.shape
                    ),
                ));
            }
            let delta = bytes_f32(tensor(&format!("{name}.delta"), Dtype::F32)?.data());
            let zero = bytes_f32(tensor(&format!("{name}.zero"), Dtype::F32)?.data());
            let params = AffineParams {
                spec: entry.spec,
                delta,
                zero,
            };
            params
                .validate(&format!("{origin}: '{name}'"))
                .and_then(|_| params.group_index(&entry.shape).map(|_| ()))
                .map_err(|e| malformed(origin, format!("'{name}': {e}")))?;
            for suffix in ["qcodes", "delta", "zero"] {
                claimed.insert(format!("{name}.{suffix}"));
            }
            out.quantized.insert(
                name.to_string(),
                QuantizedTensor {
                    shape: entry.shape,
                    params,
                    packed: codes.data().to_vec(),
                },
            );
        }
        for (name, view) in st.iter() {
            if claimed.contains(name) {
                continue;
            }
            if view.dtype() != Dtype::F32 {
                return Err(malformed(
                    origin,
                    format!(
                        "float tensor '{name}' has dtype {:?}, expected F32",
                        view.dtype()
                    ),
                ));
            }
            out.float.insert(
                name.to_string(),
                (view.shape().to_vec(), bytes_f32(view.data())),
            );
        }
        Ok(out)
    }

    /// Writes the file atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), &self.to_bytes()?)
    }

    /// Reads a file; a missing, truncated or malformed file is an error naming it.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| QuantError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// FNV-1a hash of the content (every tensor's name, shape, spec, codes, Δ, z and data,
    /// and the metadata), independent of the byte layout: two files hash equal exactly when
    /// they hold the same model. Used to tell whether a checkpoint belongs to a model.
    pub fn content_hash(&self) -> Result<u64> {
        let mut h = crate::fingerprint::Fnv1a::new();
        h.write_len(self.quantized.len());
        for (name, q) in &self.quantized {
            let spec = serde_json::to_string(&q.params.spec)
                .map_err(|e| malformed("<memory>", e.to_string()))?;
            h.write_str(name).write_str(&spec).write_len(q.shape.len());
            for &d in &q.shape {
                h.write_len(d);
            }
            h.write_f32s(&q.params.delta)
                .write_f32s(&q.params.zero)
                .write_len(q.packed.len())
                .write(&q.packed);
        }
        h.write_len(self.float.len());
        for (name, (shape, data)) in &self.float {
            h.write_str(name).write_len(shape.len());
            for &d in shape {
                h.write_len(d);
            }
            h.write_f32s(data);
        }
        h.write_len(self.metadata.len());
        for (k, v) in &self.metadata {
            h.write_str(k).write_str(v);
        }
        Ok(h.finish())
    }

    /// Total bytes of packed codes, scales, zero points and float tensors.
    pub fn payload_bytes(&self) -> usize {
        self.quantized
            .values()
            .map(QuantizedTensor::storage_bytes)
            .sum::<usize>()
            + self.float.values().map(|(_, d)| 4 * d.len()).sum::<usize>()
    }
}
