//! Integer GEMMs on the GPU (wgpu through CubeCL; feature `wgpu`): int8 × int8 and
//! int8/int4 activations × packed 4-bit weights, with the same per-(channel, group)
//! dequantizing epilogue as the CPU path.
//!
//! The CPU kernels are the reference: the integer accumulators of [`WgpuGemm::gemm_i32`] equal
//! [`int8::gemm_i8_i32_ref`](crate::int8::gemm_i8_i32_ref) /
//! [`w4::gemm_w4_i32_ref`](crate::w4::gemm_w4_i32_ref) exactly, and
//! [`WgpuGemm::gemm_acts_f32`] performs the f32 operations of
//! [`gemm_acts_f32`](crate::gemm_acts_f32) group by group in the same order (a GPU compiler
//! may contract them into FMAs, so the outputs agree to rounding, not bit for bit).
//!
//! # Layout on the device
//! - activations `[M, K_p]` signed codes, four per `u32` (little-endian bytes: exactly the
//!   bytes of [`QuantizedActs::q`]);
//! - int8 weights (bits 5..=8) `[N, K_p]` unsigned codes, four per `u32`;
//! - 4-bit weights (bits 2..=4) `[N, K_p]` unsigned codes, eight nibbles per `u32`
//!   (nibble `j` of word `w` is `k = 8w + j`), rows padded to a whole word;
//! - Δ_w, z_c, code sums `[G, N]` group-major (as [`PackedWeights`] keeps them).
//!
//! One invocation computes one output `y[m, n]`: for each group `g` it accumulates
//! `acc = Σ_k a[m,k]·c[n,k]` and `rsum = Σ_k a[m,k]` over the group's quads, then adds
//! `(Δ_x·Δ_w)·((acc − z_x·C) − z_c·(rsum − G·z_x))` to the running output (first group: to
//! the bias). 16 × 16 invocations per workgroup.
//!
//! ```no_run
//! # fn main() -> dmq_kernels::Result<()> {
//! use dmq_kernels::{gpu::WgpuGemm, int8, act_quant, ActQuant, QuantizedActs};
//! let gpu = WgpuGemm::new()?;                         // the default wgpu adapter
//! let (m, n, k) = (4, 32, 64);
//! let w: Vec<i8> = (0..n * k).map(|i| (i % 255) as i8).collect();
//! let packed = int8::pack_i8(&w, n, k)?;
//! let w_dev = gpu.upload(&packed)?;                   // once per layer
//! let a = QuantizedActs::from_i8(&vec![3i8; m * k], m, k)?;
//! let acc = gpu.gemm_i32(&a, &w_dev)?;                // == int8::gemm_i8_i32_ref
//! # Ok(()) }
//! ```

use burn::cubecl;
use burn::cubecl::device::WgpuDeviceKind;
use burn::cubecl::prelude::*;
use burn::cubecl::server::Handle;

use crate::act_quant::{self, ActQuant, QuantizedActs};
use crate::error::{KernelError, Result, shape_err};
use crate::layout::{CodeFormat, MAX_K, PackedWeights, QUAD};

/// Invocations per workgroup along each axis (16 × 16 = 256).
const TILE: u32 = 16;

/// Sign-extends the low byte of `x`.
#[cube]
fn byte_i8(x: u32) -> i32 {
    let v = i32::cast_from(x & 0xFFu32);
    v - (v >> 7i32) * 256i32
}

/// Code `j` (0..4) of the weight quad `q` of row `col`: a byte of the int8 layout or a
/// nibble of the 4-bit layout.
#[cube]
fn weight_code(
    w: &[u32],
    col: usize,
    q: usize,
    j: u32,
    row_words: usize,
    #[comptime] nib4: bool,
) -> i32 {
    if comptime![nib4] {
        let word = w[col * row_words + q / 2];
        let shift = u32::cast_from(q % 2) * 16u32 + j * 4u32;
        i32::cast_from((word >> shift) & 0xFu32)
    } else {
        let word = w[col * row_words + q];
        i32::cast_from((word >> (j * 8u32)) & 0xFFu32)
    }
}

/// `acc[m, n] = Σ_k a[m, k]·c[n, k]` in i32 (no parameters): the integer core, tested for
/// exact equality against the CPU references.
#[cube(launch)]
fn gemm_i32_kernel(
    acts: &[u32],
    w: &[u32],
    out: &mut [i32],
    m: u32,
    n: u32,
    quads: u32,
    row_words: u32,
    #[comptime] nib4: bool,
) {
    let col = ABSOLUTE_POS_X;
    let row = ABSOLUTE_POS_Y;
    if row < m && col < n {
        let (r, c) = (row as usize, col as usize);
        let mut acc = 0i32;
        for q in 0..quads as usize {
            let a = acts[r * quads as usize + q];
            for j in 0..4u32 {
                let code = weight_code(w, c, q, j, row_words as usize, nib4);
                acc += byte_i8(a >> (j * 8u32)) * code;
            }
        }
        out[r * n as usize + c] = acc;
    }
}

/// The whole layer: integer accumulation per group and the dequantizing epilogue.
#[cube(launch)]
fn gemm_f32_kernel(
    acts: &[u32],
    w: &[u32],
    dx: &[f32],
    zx: &[i32],
    dw: &[f32],
    zc: &[f32],
    cs: &[i32],
    bias: &[f32],
    out: &mut [f32],
    m: u32,
    n: u32,
    quads: u32,
    row_words: u32,
    group_quads: u32,
    group_len: u32,
    groups: u32,
    #[comptime] nib4: bool,
) {
    let col = ABSOLUTE_POS_X;
    let row = ABSOLUTE_POS_Y;
    if row < m && col < n {
        let (r, c) = (row as usize, col as usize);
        let z = zx[r];
        let d = dx[r];
        let gsize = i32::cast_from(group_len);
        let mut y = bias[c];
        for g in 0..groups as usize {
            let mut acc = 0i32;
            let mut rsum = 0i32;
            let q0 = g * group_quads as usize;
            for q in q0..q0 + group_quads as usize {
                let a = acts[r * quads as usize + q];
                for j in 0..4u32 {
                    let v = byte_i8(a >> (j * 8u32));
                    acc += v * weight_code(w, c, q, j, row_words as usize, nib4);
                    rsum += v;
                }
            }
            let p = g * n as usize + c;
            let ti = acc - z * cs[p];
            let rq = f32::cast_from(rsum - gsize * z);
            y += (d * dw[p]) * (f32::cast_from(ti) - zc[p] * rq);
        }
        out[r * n as usize + c] = y;
    }
}

/// A compute client on a wgpu adapter, running the integer GEMMs of this module.
#[derive(Clone)]
pub struct WgpuGemm {
    client: Client,
}

impl std::fmt::Debug for WgpuGemm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuGemm").finish_non_exhaustive()
    }
}

/// Weights resident on the device, uploaded once per layer by [`WgpuGemm::upload`].
#[derive(Clone)]
pub struct GpuWeights {
    codes: Handle,
    dw: Handle,
    zc: Handle,
    cs: Handle,
    codes_len: usize,
    params_len: usize,
    nib4: bool,
    n: usize,
    k: usize,
    kp: usize,
    group: usize,
    bits: u32,
}

impl std::fmt::Debug for GpuWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuWeights")
            .field("n", &self.n)
            .field("k", &self.k)
            .field("bits", &self.bits)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl GpuWeights {
    /// Output channels N.
    pub fn n(&self) -> usize {
        self.n
    }
    /// Reduction length K.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Code bit-width.
    pub fn bits(&self) -> u32 {
        self.bits
    }
    /// Bytes held on the device (codes + Δ_w, z_c, code sums).
    pub fn device_bytes(&self) -> usize {
        4 * (self.codes_len + 3 * self.params_len)
    }
}

fn device_err(reason: impl std::fmt::Display, context: &str) -> KernelError {
    KernelError::Device {
        reason: reason.to_string(),
        context: context.into(),
    }
}

fn as_words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        })
        .collect()
}

fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl WgpuGemm {
    /// A client on the default wgpu adapter (a discrete GPU, else an integrated one, else a
    /// software rasteriser such as lavapipe). An adapter that cannot be created is
    /// [`KernelError::Device`].
    pub fn new() -> Result<Self> {
        Self::on(WgpuDeviceKind::DefaultDevice)
    }

    /// A client on the wgpu device of `kind` (the same client burn's wgpu backend uses for
    /// that device).
    pub fn on(kind: WgpuDeviceKind) -> Result<Self> {
        const CTX: &str = "WgpuGemm::new";
        let device = cubecl::Device::wgpu(kind).map_err(|e| device_err(e, CTX))?;
        // cubecl panics when no adapter can be created; that is an environment error here.
        std::panic::catch_unwind(move || device.client())
            .map(|client| Self { client })
            .map_err(|p| {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                device_err(
                    format!(
                        "no usable wgpu adapter ({msg}); on a CPU-only machine install \
                         Mesa's lavapipe (mesa-vulkan-drivers)"
                    ),
                    CTX,
                )
            })
    }

    /// Uploads packed weights: 5..=8-bit codes as bytes, 2..=4-bit codes as nibbles.
    /// 1-bit weights are [`KernelError::UnsupportedBits`] (the CPU sign-application and
    /// XNOR kernels serve them).
    pub fn upload(&self, w: &PackedWeights) -> Result<GpuWeights> {
        const CTX: &str = "WgpuGemm::upload";
        let nib4 = match w.format() {
            CodeFormat::U8 => false,
            CodeFormat::Nib4 => true,
            CodeFormat::Bit1 => {
                return Err(KernelError::UnsupportedBits {
                    bits: w.bits(),
                    supported: "2..=8 (1-bit weights run on the CPU kernels)".into(),
                    context: CTX.into(),
                });
            }
        };
        let (n, k, kp) = (w.n(), w.k(), w.k_padded());
        let codes = w.codes();
        let words: Vec<u32> = if nib4 {
            let row_words = kp.div_ceil(8);
            let mut out = vec![0u32; n * row_words];
            for col in 0..n {
                for kk in 0..k {
                    let c = (codes[col * k + kk] & 0xF) as u32;
                    out[col * row_words + kk / 8] |= c << (4 * (kk % 8));
                }
            }
            out
        } else {
            let mut bytes = vec![0u8; n * kp];
            for col in 0..n {
                bytes[col * kp..col * kp + k].copy_from_slice(&codes[col * k..(col + 1) * k]);
            }
            as_words(&bytes)
        };
        let params_len = w.delta().len();
        let c = &self.client;
        Ok(GpuWeights {
            codes: c.create_from_slice(&u32_bytes(&words)),
            dw: c.create_from_slice(&f32_bytes(w.delta())),
            zc: c.create_from_slice(&f32_bytes(w.zero_codes())),
            cs: c.create_from_slice(&i32_bytes(w.code_sums())),
            codes_len: words.len(),
            params_len,
            nib4,
            n,
            k,
            kp,
            group: w.group_size(),
            bits: w.bits(),
        })
    }

    fn check_acts(&self, acts: &QuantizedActs, w: &GpuWeights, ctx: &str) -> Result<()> {
        if acts.k != w.k || acts.kp != w.kp || acts.q.len() < acts.m * acts.kp {
            return Err(shape_err(
                format!("activations with K = {} (K_p = {})", w.k, w.kp),
                format!("K = {}, K_p = {}, {} codes", acts.k, acts.kp, acts.q.len()),
                ctx,
            ));
        }
        if w.k > MAX_K {
            return Err(KernelError::TooLong {
                k: w.k,
                max: MAX_K,
                context: ctx.into(),
            });
        }
        if acts.m == 0 {
            return Err(shape_err("M ≥ 1 rows", "0", ctx));
        }
        Ok(())
    }

    fn upload_acts(&self, acts: &QuantizedActs) -> Handle {
        let bytes: Vec<u8> = acts.q[..acts.m * acts.kp]
            .iter()
            .map(|&v| v as u8)
            .collect();
        self.client.create_from_slice(&bytes)
    }

    fn grid(m: usize, n: usize) -> (CubeCount, CubeDim) {
        (
            CubeCount::Static((n as u32).div_ceil(TILE), (m as u32).div_ceil(TILE), 1),
            CubeDim::new_2d(TILE, TILE),
        )
    }

    fn row_words(w: &GpuWeights) -> usize {
        if w.nib4 {
            w.kp.div_ceil(8)
        } else {
            w.kp / QUAD
        }
    }

    fn read(&self, handle: Handle, ctx: &str) -> Result<Vec<u8>> {
        self.client
            .read_one(handle)
            .map(|b| b.to_vec())
            .map_err(|e| device_err(format!("{e:?}"), ctx))
    }

    /// Integer core `acc[m, n] = Σ_k a[m, k]·c[n, k]` (`[M, N]` row-major), the weights'
    /// unsigned codes against the activations' signed codes; parameters are ignored.
    pub fn gemm_i32(&self, acts: &QuantizedActs, w: &GpuWeights) -> Result<Vec<i32>> {
        const CTX: &str = "WgpuGemm::gemm_i32";
        self.check_acts(acts, w, CTX)?;
        let (m, n) = (acts.m, w.n);
        let quads = acts.kp / QUAD;
        let a = self.upload_acts(acts);
        let out = self.client.empty(4 * m * n);
        let (count, dim) = Self::grid(m, n);
        // SAFETY: every buffer length matches its handle's allocation.
        unsafe {
            gemm_i32_kernel::launch(
                &self.client,
                count,
                dim,
                BufferArg::from_raw_parts(a, m * quads),
                BufferArg::from_raw_parts(w.codes.clone(), w.codes_len),
                BufferArg::from_raw_parts(out.clone(), m * n),
                m as u32,
                n as u32,
                quads as u32,
                Self::row_words(w) as u32,
                w.nib4,
            )
        }
        let bytes = self.read(out, CTX)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// The integer GEMM and f32 epilogue on already-quantized activations, `[M, N]`:
    /// the device counterpart of [`gemm_acts_f32`](crate::gemm_acts_f32).
    pub fn gemm_acts_f32(
        &self,
        acts: &QuantizedActs,
        w: &GpuWeights,
        bias: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        const CTX: &str = "WgpuGemm::gemm_acts_f32";
        self.check_acts(acts, w, CTX)?;
        if let Some(b) = bias
            && b.len() != w.n
        {
            return Err(shape_err(
                format!("bias of {} values", w.n),
                b.len().to_string(),
                CTX,
            ));
        }
        let (m, n) = (acts.m, w.n);
        let quads = acts.kp / QUAD;
        let groups = w.k / w.group;
        let c = &self.client;
        let a = self.upload_acts(acts);
        let dx = c.create_from_slice(&f32_bytes(&acts.delta[..m]));
        let zx = c.create_from_slice(&i32_bytes(&acts.zero[..m]));
        let zeros;
        let bias = match bias {
            Some(b) => b,
            None => {
                zeros = vec![0f32; n];
                &zeros
            }
        };
        let b = c.create_from_slice(&f32_bytes(bias));
        let out = c.empty(4 * m * n);
        let (count, dim) = Self::grid(m, n);
        // SAFETY: every buffer length matches its handle's allocation.
        unsafe {
            gemm_f32_kernel::launch(
                c,
                count,
                dim,
                BufferArg::from_raw_parts(a, m * quads),
                BufferArg::from_raw_parts(w.codes.clone(), w.codes_len),
                BufferArg::from_raw_parts(dx, m),
                BufferArg::from_raw_parts(zx, m),
                BufferArg::from_raw_parts(w.dw.clone(), w.params_len),
                BufferArg::from_raw_parts(w.zc.clone(), w.params_len),
                BufferArg::from_raw_parts(w.cs.clone(), w.params_len),
                BufferArg::from_raw_parts(b, n),
                BufferArg::from_raw_parts(out.clone(), m * n),
                m as u32,
                n as u32,
                quads as u32,
                Self::row_words(w) as u32,
                // K padded to whole quads when one group spans the row (zero codes and
                // zero activations add nothing); G itself enters the row correction.
                w.group.div_ceil(QUAD) as u32,
                w.group as u32,
                groups as u32,
                w.nib4,
            )
        }
        let bytes = self.read(out, CTX)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// The whole quantized layer `y = x·Ŵᵀ + b` for f32 inputs `x[M, K]`: activations
    /// quantized on the host by [`act_quant::quantize`], integer GEMM and epilogue on the
    /// device.
    pub fn gemm_f32_out(
        &self,
        x: &[f32],
        w: &GpuWeights,
        act: &ActQuant,
        bias: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        if w.k == 0 || !x.len().is_multiple_of(w.k) {
            return Err(shape_err(
                format!("a multiple of K = {}", w.k),
                x.len().to_string(),
                "WgpuGemm::gemm_f32_out",
            ));
        }
        let acts = act_quant::quantize(x, x.len() / w.k, w.k, act)?;
        self.gemm_acts_f32(&acts, w, bias)
    }
}
