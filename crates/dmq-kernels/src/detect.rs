//! Run-time CPU feature detection and the instruction-set choice of each kernel family.
//!
//! Every kernel has a portable scalar path; SIMD paths are picked at run time with
//! `is_x86_feature_detected!` (never at compile time), and each one can also be requested
//! explicitly (`GemmOptions::isa`, [`crate::xnor::XnorOptions::isa`]) so that tests exercise
//! every path this CPU has. Asking for a path the CPU lacks is an error, not a crash.

use std::sync::OnceLock;

use crate::error::{KernelError, Result};

/// The CPU features the kernels care about (all `false` off x86-64).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    /// AVX2 (256-bit integer SIMD).
    pub avx2: bool,
    /// FMA3 (fused multiply-add; used by the f32 peak bench).
    pub fma: bool,
    /// AVX-512 Foundation.
    pub avx512f: bool,
    /// AVX-512 byte/word instructions (masked byte moves, byte shuffles).
    pub avx512bw: bool,
    /// AVX-512 VNNI (`vpdpbusd`: u8 × i8 dot products of 4, accumulated in i32).
    pub avx512vnni: bool,
    /// AVX-VNNI (the 256-bit VEX form of `vpdpbusd`; detected and reported, no kernel yet).
    pub avxvnni: bool,
    /// AVX-512 VPOPCNTDQ (`vpopcntq` on 8 × u64).
    pub avx512vpopcntdq: bool,
    /// Scalar `popcnt`.
    pub popcnt: bool,
}

impl CpuFeatures {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            Self {
                avx2: std::arch::is_x86_feature_detected!("avx2"),
                fma: std::arch::is_x86_feature_detected!("fma"),
                avx512f: std::arch::is_x86_feature_detected!("avx512f"),
                avx512bw: std::arch::is_x86_feature_detected!("avx512bw"),
                avx512vnni: std::arch::is_x86_feature_detected!("avx512vnni"),
                avxvnni: std::arch::is_x86_feature_detected!("avxvnni"),
                avx512vpopcntdq: std::arch::is_x86_feature_detected!("avx512vpopcntdq"),
                popcnt: std::arch::is_x86_feature_detected!("popcnt"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Self::default()
        }
    }
}

/// The features of this CPU (detected once, then cached).
pub fn cpu_features() -> CpuFeatures {
    static FEATURES: OnceLock<CpuFeatures> = OnceLock::new();
    *FEATURES.get_or_init(CpuFeatures::detect)
}

/// Instruction set of the integer GEMM kernels (int8, W4, W1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust on the packed layout (exact; no SIMD intrinsics).
    Scalar,
    /// AVX2: `vpmaddwd` on zero/sign-extended 16-bit values for 8-bit codes (exact, no
    /// saturation), `vpmaddubsw` + `vpmaddwd` for 1..4-bit codes (exact because a code is
    /// at most 15, so a pair sum is at most 2·15·128 < 2^15).
    Avx2,
    /// AVX-512 VNNI: one `vpdpbusd` per 64 multiply-adds (u8 weight codes × i8 activations).
    Avx512Vnni,
}

impl Isa {
    /// Every variant, slowest first.
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni];

    /// Short name (`scalar`, `avx2`, `avx512vnni`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
        }
    }

    /// True when this CPU can run the path.
    pub fn is_available(self) -> bool {
        let f = cpu_features();
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => f.avx2,
            Isa::Avx512Vnni => f.avx512f && f.avx512bw && f.avx512vnni,
        }
    }

    /// The paths this CPU can run, slowest first.
    pub fn available() -> Vec<Isa> {
        Self::ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// The fastest available path.
    pub fn best() -> Isa {
        Self::ALL
            .into_iter()
            .rev()
            .find(|i| i.is_available())
            .unwrap_or(Isa::Scalar)
    }

    /// `Ok(self)` when available, else [`KernelError::IsaUnavailable`].
    pub fn check(self) -> Result<Self> {
        if self.is_available() {
            Ok(self)
        } else {
            Err(KernelError::IsaUnavailable { isa: self.name() })
        }
    }
}

/// Instruction set of the XNOR-popcount kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PopcntIsa {
    /// `u64::count_ones` compiled for the baseline target (a bit-twiddling sequence on
    /// x86-64 without `popcnt`).
    Portable,
    /// The scalar `popcnt` instruction.
    Popcnt,
    /// AVX-512 VPOPCNTDQ: XOR and popcount of 8 words per instruction.
    Avx512Vpopcntdq,
}

impl PopcntIsa {
    /// Every variant, slowest first.
    pub const ALL: [PopcntIsa; 3] = [
        PopcntIsa::Portable,
        PopcntIsa::Popcnt,
        PopcntIsa::Avx512Vpopcntdq,
    ];

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            PopcntIsa::Portable => "portable",
            PopcntIsa::Popcnt => "popcnt",
            PopcntIsa::Avx512Vpopcntdq => "avx512vpopcntdq",
        }
    }

    /// True when this CPU can run the path.
    pub fn is_available(self) -> bool {
        let f = cpu_features();
        match self {
            PopcntIsa::Portable => true,
            PopcntIsa::Popcnt => f.popcnt,
            PopcntIsa::Avx512Vpopcntdq => f.avx512f && f.avx512vpopcntdq,
        }
    }

    /// The paths this CPU can run, slowest first.
    pub fn available() -> Vec<PopcntIsa> {
        Self::ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// The fastest available path.
    pub fn best() -> PopcntIsa {
        Self::ALL
            .into_iter()
            .rev()
            .find(|i| i.is_available())
            .unwrap_or(PopcntIsa::Portable)
    }

    /// `Ok(self)` when available, else [`KernelError::IsaUnavailable`].
    pub fn check(self) -> Result<Self> {
        if self.is_available() {
            Ok(self)
        } else {
            Err(KernelError::IsaUnavailable { isa: self.name() })
        }
    }
}
