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
//! | `<name>` (half)      | F16   | a 16-bit tensor (SVDQuant's low-rank branch) |
//!
//! Header metadata: `dmq.format = "dmq-quantized/1"`, `dmq.q.<name>` = JSON
//! `{"shape": [...], "spec": {...}}` per quantized tensor, and free `user.<key>` entries.
//! Files are written atomically (temporary file + rename).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::error::{QuantError, Result};
use crate::limits::Limits;
use crate::pack::{PackedDefect, check_packed};
use crate::qtensor::{AffineParams, QuantizedTensor};
use crate::spec::QuantSpec;

const FORMAT: &str = "dmq-quantized/1";

#[derive(Serialize)]
struct Entry {
    shape: Vec<usize>,
    spec: QuantSpec,
}

/// [`Entry`] as read, before its spec is checked.
#[derive(Deserialize)]
struct RawEntry {
    shape: Vec<usize>,
    spec: serde_json::Value,
}

/// A named collection of quantized and float tensors plus string metadata.
///
/// Equality and [`QuantizedFile::content_hash`] compare the content, not [`Self::origin`].
#[derive(Clone, Debug, Default)]
pub struct QuantizedFile {
    /// Quantized tensors by name.
    pub quantized: BTreeMap<String, QuantizedTensor>,
    /// Plain f32 tensors by name: (shape, row-major data).
    pub float: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// Tensors stored at 16 bits (IEEE f16) by name: (shape, values). Values that f16 does
    /// not represent exactly are rounded to nearest when written; non-finite ones are refused.
    pub half: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// Free metadata (stored as `user.<key>`).
    pub metadata: BTreeMap<String, String>,
    /// Where the file was read from (`None` when built in memory); named by the errors of
    /// readers of its entries. Not stored, not compared.
    pub origin: Option<String>,
}

impl PartialEq for QuantizedFile {
    fn eq(&self, other: &Self) -> bool {
        self.quantized == other.quantized
            && self.float == other.float
            && self.half == other.half
            && self.metadata == other.metadata
    }
}

fn invalid(origin: &str, field: impl Into<String>, reason: impl Into<String>) -> QuantError {
    QuantError::InvalidField {
        origin: origin.into(),
        field: field.into(),
        reason: reason.into(),
    }
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

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
        .collect()
}

fn bytes_f16(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}

/// `v` rounded to the nearest f16 value, as a file stores it.
pub fn round_to_f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

fn bytes_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced, then
/// renamed over the target, and the directory synced, so a crash never leaves a
/// half-written file and a completed call survives a power loss.
///
/// The temporary file has an unpredictable name (`.<name>.tmp-<pid>-<random>`) and is
/// opened with `create_new` (`O_CREAT | O_EXCL`), which never follows a symlink or opens a
/// file someone else placed there; on any error it is removed again.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| QuantError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| io(std::io::Error::other("path has no file name")))?;
    let (tmp, mut f) = create_temp(path, &file_name.to_string_lossy()).map_err(io)?;
    let written = (|| {
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    sync_parent_dir(path).map_err(io)
}

/// A fresh temporary file next to `path`, created with `create_new` under a name nobody can
/// predict (random keys of the standard library's hasher, the pid and a counter).
fn create_temp(path: &Path, file_name: &str) -> std::io::Result<(std::path::PathBuf, File)> {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut last = None;
    for _ in 0..16 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let tmp = path.with_file_name(format!(
            ".{file_name}.tmp-{}-{:016x}",
            std::process::id(),
            h.finish()
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free temporary name")))
}

/// Syncs the directory holding `path`, so that a rename into it is durable (no-op where
/// directories cannot be opened, i.e. outside Unix).
pub fn sync_parent_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    sync_dir(dir)
}

/// Syncs a directory's entries to disk (Unix); a no-op elsewhere.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
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
        for (name, (shape, data)) in &self.half {
            if self.float.contains_key(name) || self.quantized.contains_key(name) {
                return Err(malformed(
                    "<memory>",
                    format!("'{name}' is both half and another kind"),
                ));
            }
            if let Some(v) = data.iter().find(|v| !round_to_f16(**v).is_finite()) {
                return Err(malformed(
                    "<memory>",
                    format!("half tensor '{name}' holds {v}, not a finite f16"),
                ));
            }
            owned.push((name.clone(), Dtype::F16, shape.clone(), f16_bytes(data)));
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

    /// The name of the file's source for error messages (`<memory>` when built in memory).
    pub fn origin_name(&self) -> &str {
        self.origin.as_deref().unwrap_or("<memory>")
    }

    /// Parses safetensors bytes; `origin` names the source in errors. Sizes are checked
    /// against [`Limits::current`].
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self> {
        Self::from_bytes_with_limits(bytes, origin, &Limits::current())
    }

    /// [`QuantizedFile::from_bytes`] with explicit [`Limits`].
    ///
    /// Every quantized entry is checked before anything of its size is allocated: its
    /// metadata (`dmq.q.<name>`: shape within the limits, spec with bits 1..=8), the packed
    /// codes (exact length, codes `< 2^b` for 3/5/6/7 bits, zero padding), one (Δ, z) per
    /// parameter group, Δ finite and > 0, z finite, and no extreme code dequantizing to
    /// ±inf. A float tensor may not share a quantized tensor's name. Errors name `origin`
    /// and the field.
    pub fn from_bytes_with_limits(bytes: &[u8], origin: &str, limits: &Limits) -> Result<Self> {
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
                return Err(invalid(
                    origin,
                    key,
                    format!("dtype {:?}, expected {dtype:?}", t.dtype()),
                ));
            }
            Ok(t)
        };
        let mut out = QuantizedFile {
            origin: Some(origin.to_string()),
            ..QuantizedFile::default()
        };
        let mut claimed = std::collections::HashSet::new();
        for (k, v) in &meta {
            if let Some(key) = k.strip_prefix("user.") {
                out.metadata.insert(key.to_string(), v.clone());
                continue;
            }
            let Some(name) = k.strip_prefix("dmq.q.") else {
                continue;
            };
            let entry: RawEntry = serde_json::from_str(v).map_err(|e| {
                invalid(origin, k, format!("not {{\"shape\", \"spec\"}} JSON: {e}"))
            })?;
            let shape = entry.shape;
            let numel = limits.check_shape(&shape, origin, &format!("{k}.shape"))?;
            let spec = QuantSpec::from_value(entry.spec, origin, &format!("{k}.spec"))?;
            let bits = spec.int_bits().ok_or_else(|| {
                invalid(
                    origin,
                    format!("{k}.spec.bits"),
                    "a float spec but the tensor is stored quantized",
                )
            })?;
            let n_params = spec
                .num_params(&shape)
                .map_err(|e| invalid(origin, format!("{k}.spec.granularity"), e.to_string()))?;
            let codes_key = format!("{name}.qcodes");
            let codes = tensor(&codes_key, Dtype::U8)?;
            check_packed(codes.data(), bits, numel).map_err(|d| {
                let reason = match d {
                    PackedDefect::Length { got, need } => {
                        format!("holds {got} bytes, shape {shape:?} at {bits} bits needs {need}")
                    }
                    PackedDefect::CodeTooLarge { index, code } => {
                        format!("code {code} at element {index} does not fit in {bits} bits")
                    }
                    PackedDefect::Padding { byte } => format!(
                        "padding bits after the last code are not zero (trailing byte {byte:#04x})"
                    ),
                };
                invalid(origin, codes_key.as_str(), reason)
            })?;
            let mut read_params = |what: &str| -> Result<Vec<f32>> {
                let key = format!("{name}.{what}");
                let t = tensor(&key, Dtype::F32)?;
                if t.data().len() != 4 * n_params {
                    return Err(invalid(
                        origin,
                        key.as_str(),
                        format!(
                            "{} values, the spec needs one per parameter group ({n_params}) \
                             for shape {shape:?}",
                            t.data().len() / 4
                        ),
                    ));
                }
                claimed.insert(key);
                Ok(bytes_f32(t.data()))
            };
            let delta = read_params("delta")?;
            let zero = read_params("zero")?;
            claimed.insert(codes_key);
            let params = AffineParams { spec, delta, zero };
            params.validate(&format!("{origin}: tensors '{name}.delta' / '{name}.zero'"))?;
            out.quantized.insert(
                name.to_string(),
                QuantizedTensor {
                    shape,
                    params,
                    packed: codes.data().to_vec(),
                },
            );
        }
        for (name, view) in st.iter() {
            if claimed.contains(name) {
                continue;
            }
            if out.quantized.contains_key(name) {
                return Err(invalid(
                    origin,
                    name,
                    "a float tensor with the name of a quantized tensor",
                ));
            }
            if view.dtype() == Dtype::F16 {
                limits.check_shape(view.shape(), origin, &format!("{name}.shape"))?;
                let values = bytes_f16(view.data());
                if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                    return Err(invalid(origin, name, format!("value {i} is {v}")));
                }
                out.half
                    .insert(name.to_string(), (view.shape().to_vec(), values));
                continue;
            }
            if view.dtype() != Dtype::F32 {
                return Err(invalid(
                    origin,
                    name,
                    format!(
                        "float tensor of dtype {:?}, expected F32 or F16",
                        view.dtype()
                    ),
                ));
            }
            limits.check_shape(view.shape(), origin, &format!("{name}.shape"))?;
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

    /// Reads a file; a missing, truncated or malformed file is an error naming it. Sizes
    /// are checked against [`Limits::current`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with_limits(path, &Limits::current())
    }

    /// [`QuantizedFile::load`] with explicit [`Limits`].
    pub fn load_with_limits(path: impl AsRef<Path>, limits: &Limits) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| QuantError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes_with_limits(&bytes, &path.display().to_string(), limits)
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
        // written only when present, so files without half tensors keep their hashes
        if !self.half.is_empty() {
            h.write_str("half").write_len(self.half.len());
            for (name, (shape, data)) in &self.half {
                h.write_str(name).write_len(shape.len());
                for &d in shape {
                    h.write_len(d);
                }
                h.write_f32s(data);
            }
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
            + self.half.values().map(|(_, d)| 2 * d.len()).sum::<usize>()
    }
}
