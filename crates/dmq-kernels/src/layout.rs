//! [`PackedWeights`]: weight codes re-laid out once, at load, into the panel layout every
//! integer GEMM path (scalar, AVX2, AVX-512 VNNI) reads.
//!
//! # Layout
//!
//! A weight `W[N, K]` (PyTorch linear layout; a conv weight `[C_out, C_in, kh, kw]` is
//! flattened to `[C_out, C_in·kh·kw]`) holds unsigned codes `c = q − q_min` (what
//! [`dmq_quant::QuantizedTensor`] stores). `K` is padded to `K_p`, a multiple of 4, and `N`
//! to a multiple of 16, with code 0 (padding contributes nothing to `Σ c·a`).
//!
//! Columns are cut into panels of [`PANEL`] = 16 output channels; each panel is stored as
//! `K_p/4` consecutive **blocks** of 64 codes, one block per quad of `k`:
//!
//! ```text
//! block (panel p, quad q), code index i ∈ 0..64:  n = 16·p + i/4,  k = 4·q + i%4
//! ```
//!
//! so one 512-bit register holds 16 output channels × 4 consecutive `k`: the operand shape
//! of `vpdpbusd` (each 32-bit lane = one channel, 4 products). The block is stored at the
//! code width:
//!
//! | format              | bytes per block | byte / bit `j` holds                               |
//! |---------------------|-----------------|----------------------------------------------------|
//! | [`CodeFormat::U8`]   | 64              | code `j`                                           |
//! | [`CodeFormat::Nib4`] | 32              | code `j` in the low nibble, code `j + 32` in the high |
//! | [`CodeFormat::Bit1`] | 8 (one `u64`)   | bit `j` = code `j`                                 |
//!
//! The nibble order lets a kernel unpack with one AND (low half: channels 0..8) and one
//! shift + AND (high half: channels 8..16); the bit order lets AVX-512 use the `u64` as a
//! byte mask directly.

use dmq_quant::{Granularity, QuantizedTensor};

use crate::error::{KernelError, Result, shape_err};

/// Output channels per panel (one 512-bit register of i32 lanes).
pub const PANEL: usize = 16;
/// Consecutive `k` per 32-bit lane (the `vpdpbusd` dot-product width).
pub const QUAD: usize = 4;
/// Largest supported reduction length: with `|c| ≤ 255` and `|a − z_a| ≤ 255`,
/// `K·255·255 < 2^31` keeps every i32 accumulator and correction exact.
pub const MAX_K: usize = 32768;

/// How codes are stored inside a block (chosen from the bit-width).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CodeFormat {
    /// 5..=8-bit codes, one byte each (the int8 GEMM).
    U8,
    /// 2..=4-bit codes, two per byte (the W4 GEMM; 2- and 3-bit codes run through it too).
    Nib4,
    /// 1-bit codes, eight per byte (the W1 sign-application GEMM).
    Bit1,
}

impl CodeFormat {
    /// The storage format for codes of `bits` bits.
    pub fn for_bits(bits: u32) -> Result<Self> {
        match bits {
            1 => Ok(CodeFormat::Bit1),
            2..=4 => Ok(CodeFormat::Nib4),
            5..=8 => Ok(CodeFormat::U8),
            _ => Err(KernelError::UnsupportedBits {
                bits,
                supported: "1..=8".into(),
                context: "weight packing".into(),
            }),
        }
    }

    /// Bytes of one 64-code block.
    pub fn block_bytes(self) -> usize {
        match self {
            CodeFormat::U8 => 64,
            CodeFormat::Nib4 => 32,
            CodeFormat::Bit1 => 8,
        }
    }

    /// Short name (`int8`, `w4`, `w1`).
    pub fn name(self) -> &'static str {
        match self {
            CodeFormat::U8 => "int8",
            CodeFormat::Nib4 => "w4",
            CodeFormat::Bit1 => "w1",
        }
    }
}

/// Weights packed once into the panel layout (see the [module docs](self)), with their
/// per-(channel, group) grid parameters and code sums.
///
/// The real weight is `w[n, k] = Δ[n, g]·(c[n, k] − z_c[n, g])` with `g = k / G` and the
/// code-space zero point `z_c = z − q_min` (it may be fractional: binary weights σ·(2c − 1)
/// have `Δ = 2σ`, `z_c = ½`). Per-tensor and per-output-channel parameters are the case
/// `G = K`.
///
/// # Shapes
/// - codes: `[N, K]` row-major; parameters and code sums are given `[N, K/G]`
///   (channel-major, the `dmq-quant` order) and stored `[K/G, N]` (group-major, so the
///   epilogue reads them contiguously along the output channels)
#[derive(Clone, Debug, PartialEq)]
pub struct PackedWeights {
    format: CodeFormat,
    bits: u32,
    n: usize,
    k: usize,
    kp: usize,
    panels: usize,
    data: Vec<u8>,
    group: usize,
    delta: Vec<f32>,
    zc: Vec<f32>,
    colsum: Vec<i32>,
    shape: Vec<usize>,
}

impl PackedWeights {
    /// Packs a weight exported by `dmq-quant`: `[N, K]`, or `[C_out, ...]` flattened to
    /// `[C_out, prod(rest)]` (conv weights `[C_out, C_in, kh, kw]`).
    ///
    /// Supported granularities: per tensor, per channel on axis 0, and per group along the
    /// last axis with a group size that is a multiple of 4. Bit-widths 1..=8 (see
    /// [`CodeFormat::for_bits`]). Anything else is a [`KernelError::UnsupportedSpec`].
    pub fn from_quantized(qt: &QuantizedTensor) -> Result<Self> {
        const CTX: &str = "PackedWeights::from_quantized";
        let spec = qt.params.spec;
        let bits = spec
            .int_bits()
            .ok_or_else(|| KernelError::UnsupportedSpec {
                reason: "a float pass-through spec has no integer codes".into(),
                context: CTX.into(),
            })?;
        if qt.shape.len() < 2 {
            return Err(shape_err(
                "a weight of rank ≥ 2 ([N, K] or [C_out, C_in, kh, kw])",
                format!("{:?}", qt.shape),
                CTX,
            ));
        }
        qt.params.validate(CTX)?;
        let n = qt.shape[0];
        let k: usize = qt.shape[1..].iter().product();
        let nparams = spec.num_params(&qt.shape)?;
        if nparams != qt.params.delta.len() {
            return Err(shape_err(
                format!("{nparams} parameter groups for shape {:?}", qt.shape),
                qt.params.delta.len().to_string(),
                CTX,
            ));
        }
        let rank = qt.shape.len();
        let (group, index): (usize, Box<dyn Fn(usize, usize) -> usize>) = match spec.granularity() {
            Granularity::PerTensor => (k, Box::new(|_, _| 0)),
            Granularity::PerChannel { axis: 0 } => (k, Box::new(|n, _| n)),
            Granularity::PerGroup { axis, size } if axis == rank - 1 => {
                if !size.is_multiple_of(QUAD) && size != k {
                    return Err(KernelError::UnsupportedSpec {
                        reason: format!(
                            "group size {size} is not a multiple of {QUAD} (the kernels \
                             reduce k in quads)"
                        ),
                        context: CTX.into(),
                    });
                }
                let groups = k / size;
                (size, Box::new(move |n, g| n * groups + g))
            }
            other => {
                return Err(KernelError::UnsupportedSpec {
                    reason: format!(
                        "granularity {other:?}: the kernels need per-tensor, per-channel on \
                         axis 0, or per-group along the last axis"
                    ),
                    context: CTX.into(),
                });
            }
        };
        let (qmin, _) = spec.int_range().unwrap_or((0, 0));
        let groups = k / group;
        let mut delta = Vec::with_capacity(n * groups);
        let mut zc = Vec::with_capacity(n * groups);
        for row in 0..n {
            for g in 0..groups {
                let p = index(row, g);
                delta.push(qt.params.delta[p]);
                zc.push(qt.params.zero[p] - qmin as f32);
            }
        }
        let codes = qt.codes()?;
        let mut packed = Self::pack(&codes, n, k, bits, group, delta, zc, CTX)?;
        packed.set_shape(qt.shape.clone());
        Ok(packed)
    }

    /// Packs raw codes `c[N, K]` (each `< 2^bits`) with unit parameters (`Δ = 1`, `z_c = 0`):
    /// for the integer-only entry points ([`crate::int8`], [`crate::w4`], [`crate::binary`]).
    pub fn from_codes(codes: &[u8], n: usize, k: usize, bits: u32) -> Result<Self> {
        Self::pack(
            codes,
            n,
            k,
            bits,
            k,
            vec![1.0; n],
            vec![0.0; n],
            "PackedWeights::from_codes",
        )
    }

    /// Packs codes with explicit per-(channel, group) parameters `[N, K/group]`.
    pub fn from_codes_with_params(
        codes: &[u8],
        n: usize,
        k: usize,
        bits: u32,
        group: usize,
        delta: Vec<f32>,
        zc: Vec<f32>,
    ) -> Result<Self> {
        const CTX: &str = "PackedWeights::from_codes_with_params";
        if group == 0 || (!group.is_multiple_of(QUAD) && group != k) || !k.is_multiple_of(group) {
            return Err(KernelError::UnsupportedSpec {
                reason: format!(
                    "group size {group} must divide K = {k} and be a multiple of {QUAD} (or K)"
                ),
                context: CTX.into(),
            });
        }
        Self::pack(codes, n, k, bits, group, delta, zc, CTX)
    }

    fn pack(
        codes: &[u8],
        n: usize,
        k: usize,
        bits: u32,
        group: usize,
        delta: Vec<f32>,
        zc: Vec<f32>,
        context: &str,
    ) -> Result<Self> {
        let format = CodeFormat::for_bits(bits)?;
        if n == 0 || k == 0 {
            return Err(shape_err(
                "N ≥ 1 and K ≥ 1",
                format!("N = {n}, K = {k}"),
                context,
            ));
        }
        if k > MAX_K {
            return Err(KernelError::TooLong {
                k,
                max: MAX_K,
                context: context.into(),
            });
        }
        if codes.len() != n * k {
            return Err(shape_err(
                format!("{} codes for [{n}, {k}]", n * k),
                codes.len().to_string(),
                context,
            ));
        }
        let groups = k / group;
        if delta.len() != n * groups || zc.len() != n * groups {
            return Err(shape_err(
                format!("{} step sizes and zero points ([N, K/G])", n * groups),
                format!("{} and {}", delta.len(), zc.len()),
                context,
            ));
        }
        for (i, (&d, &z)) in delta.iter().zip(&zc).enumerate() {
            if !(d.is_finite() && d > 0.0 && z.is_finite()) {
                return Err(KernelError::InvalidParam {
                    reason: format!("Δ = {d}, z = {z} at index {i} (need finite Δ > 0, finite z)"),
                    context: context.into(),
                });
            }
        }
        if let Some((i, &c)) = codes
            .iter()
            .enumerate()
            .find(|&(_, &c)| bits < 8 && c >> bits != 0)
        {
            return Err(shape_err(
                format!("codes < 2^{bits}"),
                format!("code {c} at index {i}"),
                context,
            ));
        }
        let kp = k.div_ceil(QUAD) * QUAD;
        let panels = n.div_ceil(PANEL);
        let quads = kp / QUAD;
        let bb = format.block_bytes();
        let mut data = vec![0u8; panels * quads * bb];
        let mut block = [0u8; 64];
        for p in 0..panels {
            for q in 0..quads {
                for (i, b) in block.iter_mut().enumerate() {
                    let col = p * PANEL + i / QUAD;
                    let kk = q * QUAD + i % QUAD;
                    *b = if col < n && kk < k {
                        codes[col * k + kk]
                    } else {
                        0
                    };
                }
                let out = &mut data[(p * quads + q) * bb..][..bb];
                encode_block(format, &block, out);
            }
        }
        let mut colsum = vec![0i32; n * groups];
        for row in 0..n {
            for (kk, &c) in codes[row * k..(row + 1) * k].iter().enumerate() {
                colsum[(kk / group) * n + row] += c as i32;
            }
        }
        let transpose = |v: Vec<f32>| -> Vec<f32> {
            let mut t = vec![0f32; n * groups];
            for row in 0..n {
                for g in 0..groups {
                    t[g * n + row] = v[row * groups + g];
                }
            }
            t
        };
        let (delta, zc) = (transpose(delta), transpose(zc));
        Ok(Self {
            format,
            bits,
            n,
            k,
            kp,
            panels,
            data,
            group,
            delta,
            zc,
            colsum,
            shape: vec![n, k],
        })
    }

    /// Storage format of the codes.
    pub fn format(&self) -> CodeFormat {
        self.format
    }

    /// Bit-width of the codes.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Output channels N.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Reduction length K.
    pub fn k(&self) -> usize {
        self.k
    }

    /// K padded to a multiple of 4.
    pub fn k_padded(&self) -> usize {
        self.kp
    }

    /// Group size G along K (`G = K` for per-tensor and per-channel parameters).
    pub fn group_size(&self) -> usize {
        self.group
    }

    /// Number of groups along K.
    pub fn groups(&self) -> usize {
        self.k / self.group
    }

    /// The shape the weight was packed from (`[N, K]`, or the conv shape).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Step sizes Δ, `[K/G, N]` (group-major).
    pub fn delta(&self) -> &[f32] {
        &self.delta
    }

    /// Code-space zero points `z_c = z − q_min`, `[K/G, N]` (group-major).
    pub fn zero_codes(&self) -> &[f32] {
        &self.zc
    }

    /// Sums of codes per (group, channel), `[K/G, N]` (group-major).
    pub fn code_sums(&self) -> &[i32] {
        &self.colsum
    }

    /// Bytes of the packed codes plus the f32 parameters and i32 sums.
    pub fn storage_bytes(&self) -> usize {
        self.data.len() + 4 * (self.delta.len() + self.zc.len() + self.colsum.len())
    }

    /// Records the original (e.g. conv) shape; its product over axes 1.. must be K.
    pub(crate) fn set_shape(&mut self, shape: Vec<usize>) {
        debug_assert_eq!(shape.iter().skip(1).product::<usize>(), self.k);
        self.shape = shape;
    }

    /// Number of 16-channel panels.
    pub(crate) fn panels(&self) -> usize {
        self.panels
    }

    /// Packed bytes of panel `p` (all its `K_p/4` blocks).
    pub(crate) fn panel(&self, p: usize) -> &[u8] {
        let len = self.kp / QUAD * self.format.block_bytes();
        &self.data[p * len..(p + 1) * len]
    }

    /// Unpacks the codes back to `[N, K]` row-major (round-trip checks and references).
    pub fn codes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.n * self.k];
        let quads = self.kp / QUAD;
        let bb = self.format.block_bytes();
        for p in 0..self.panels {
            let panel = self.panel(p);
            for q in 0..quads {
                let block = decode_block(self.format, &panel[q * bb..(q + 1) * bb]);
                for (i, &c) in block.iter().enumerate() {
                    let col = p * PANEL + i / QUAD;
                    let kk = q * QUAD + i % QUAD;
                    if col < self.n && kk < self.k {
                        out[col * self.k + kk] = c;
                    }
                }
            }
        }
        out
    }
}

/// Writes 64 codes in `format` into `out` (`format.block_bytes()` bytes).
fn encode_block(format: CodeFormat, block: &[u8; 64], out: &mut [u8]) {
    match format {
        CodeFormat::U8 => out.copy_from_slice(block),
        CodeFormat::Nib4 => {
            for j in 0..32 {
                out[j] = block[j] | (block[j + 32] << 4);
            }
        }
        CodeFormat::Bit1 => {
            let word = block
                .iter()
                .enumerate()
                .fold(0u64, |w, (i, &c)| w | (((c & 1) as u64) << i));
            out.copy_from_slice(&word.to_le_bytes());
        }
    }
}

/// Reads the 64 codes of one block (the portable kernel's loader).
#[inline]
pub(crate) fn decode_block(format: CodeFormat, bytes: &[u8]) -> [u8; 64] {
    let mut block = [0u8; 64];
    match format {
        CodeFormat::U8 => block.copy_from_slice(&bytes[..64]),
        CodeFormat::Nib4 => {
            for j in 0..32 {
                block[j] = bytes[j] & 0x0F;
                block[j + 32] = bytes[j] >> 4;
            }
        }
        CodeFormat::Bit1 => {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[..8]);
            let word = u64::from_le_bytes(w);
            for (i, b) in block.iter_mut().enumerate() {
                *b = ((word >> i) & 1) as u8;
            }
        }
    }
    block
}
