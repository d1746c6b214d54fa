//! BitOPs (docs/algorithms.md §1.7, §4.6): `MACs · b_w · b_a` per layer call, attention matmuls
//! charged `MACs · b_left · b_right` with `MACs = N²·C` per sample for self-attention (the
//! reference's C²·N formula and its batch-2 / one-sample mix-up are not reproduced), summed
//! over every denoiser call of the sampling run.

use std::collections::BTreeMap;

use dmq_models::LayerCall;
use dmq_models::layers::LayerKind;

/// Bits of one layer for the cost model: `(weight, activation)` for linear/conv,
/// `(left, right)` operand bits for matmuls; 32 = full precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerBits {
    /// Weight bits (left-operand bits for matmuls).
    pub a: u32,
    /// Activation bits (right-operand bits for matmuls).
    pub b: u32,
}

/// Totals of a BitOPs count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BitOpsCount {
    /// Multiply-accumulates of all calls.
    pub macs: f64,
    /// BitOPs of all calls.
    pub bitops: f64,
}

/// BitOPs of `calls` (one batch-1 forward pass, e.g. [`dmq_models::layer_inventory`]) repeated
/// `calls_per_image` times (steps × 2 under batched CFG), with per-layer `bits` (layers not
/// in the map count as FP32 × FP32).
pub fn bitops(
    calls: &[LayerCall],
    bits: &BTreeMap<String, LayerBits>,
    calls_per_image: usize,
) -> BitOpsCount {
    let mut macs = 0.0;
    let mut total = 0.0;
    for c in calls {
        let b = bits
            .get(&c.name)
            .copied()
            .unwrap_or(LayerBits { a: 32, b: 32 });
        let m = c.macs as f64;
        macs += m;
        // Linear/conv: MACs·b_w·b_a; matmul: MACs·b_left·b_right (same product, other meaning).
        debug_assert!(matches!(
            c.kind,
            LayerKind::Linear | LayerKind::Conv2d | LayerKind::Matmul
        ));
        total += m * b.a as f64 * b.b as f64;
    }
    BitOpsCount {
        macs: macs * calls_per_image as f64,
        bitops: total * calls_per_image as f64,
    }
}
