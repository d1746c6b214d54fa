//! Best-of-N kernel throughput table (a companion of `benches/gemm.rs` for shared, noisy
//! machines: the minimum over repetitions is far less sensitive to other processes than
//! criterion's mean). Prints a markdown table of Gop/s (2·M·N·K per call, quantize and
//! dequantize included) with the ratio to burn's f32 matmul (flex) measured in the same
//! run, then one JSON object per measurement.
//!
//! ```text
//! cargo run --release -p dmq-kernels --example kernel_table            # all shapes
//! cargo run --release -p dmq-kernels --example kernel_table -- dit_mlp # shapes by tag
//! ```

use std::time::{Duration, Instant};

use burn::tensor::{Device, Tensor, TensorData};
use dmq_kernels::xnor::{self, XnorWeights};
use dmq_kernels::{ActQuant, PackedWeights, gemm_f32_out, testdata, w4};
use dmq_quant::QuantizedTensor;

fn data(n: usize, seed: u64) -> Vec<f32> {
    testdata::uniform(n, seed)
}

fn quantize(w: &[f32], n: usize, k: usize, bits: u32) -> QuantizedTensor {
    testdata::quantize_rows(w, n, k, bits).expect("valid shapes")
}

fn best(f: impl FnMut()) -> f64 {
    dmq_kernels::peak::min_wall_time(f, 40, Duration::from_millis(1500))
}

/// Seconds for `f` run once on each of `threads` threads at the same time.
fn on_threads(threads: usize, f: impl Fn() + Sync) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(&f);
        }
    });
    t.elapsed().as_secs_f64()
}

/// This machine's limits, measured: f32 FMA (AVX-512 / AVX2), int8 `vpdpbusd` (VNNI), and
/// read bandwidth of a 256 MiB sum. Printed first so every table row can be read against
/// them.
fn peaks() -> Vec<String> {
    use dmq_kernels::available_threads;
    use dmq_kernels::peak::{self, FmaWidth};
    let threads = available_threads();
    const ITERS: usize = 1 << 22;
    let mut out = Vec::new();
    for (name, width) in [
        ("f32 FMA AVX-512", FmaWidth::Avx512),
        ("f32 FMA AVX2", FmaWidth::Avx2),
    ] {
        if peak::fma_f32(width, 1).is_err() {
            continue;
        }
        let s = (0..3)
            .map(|_| {
                on_threads(threads, || {
                    drop(std::hint::black_box(peak::fma_f32(width, ITERS)))
                })
            })
            .fold(f64::MAX, f64::min);
        let g = (peak::fma_flops(width, ITERS) * threads as u64) as f64 / s / 1e9;
        out.push(format!("{name}: {g:.1} GFLOP/s ({threads} threads)"));
    }
    if peak::vnni_i8(1).is_ok() {
        let s = (0..3)
            .map(|_| on_threads(threads, || drop(std::hint::black_box(peak::vnni_i8(ITERS)))))
            .fold(f64::MAX, f64::min);
        let g = (peak::vnni_ops(ITERS) * threads as u64) as f64 / s / 1e9;
        out.push(format!(
            "int8 vpdpbusd (VNNI): {g:.1} Gop/s ({threads} threads)"
        ));
    }
    let big = vec![1.0f32; 64 << 20];
    let s = (0..3)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(big.iter().sum::<f32>());
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min);
    out.push(format!(
        "memory read (1 thread, 256 MiB sum): {:.1} GB/s",
        (big.len() * 4) as f64 / s / 1e9
    ));
    out
}

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).collect();
    for p in peaks() {
        println!("- peak {p}");
    }
    println!();
    let device = Device::flex();
    let fmts = [
        "f32_burn",
        "int8",
        "w4a8",
        "w4a8_repack8",
        "w4a4",
        "w1a8",
        "w1a4",
        "xnor",
    ];
    println!("| shape (K×N) | M | {} |", fmts.join(" | "));
    println!("|---|---|{}", "---|".repeat(fmts.len()));
    let mut json = Vec::new();
    for (tag, k, n) in [
        ("dit_mlp", 1152, 4608),
        ("sq4096", 4096, 4096),
        ("unet_conv3x3", 1152, 128),
        ("unet_linear", 128, 512),
    ] {
        if !filter.is_empty() && !filter.iter().any(|f| tag.contains(f.as_str())) {
            continue;
        }
        let w = data(n * k, 2);
        let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
        let wt = Tensor::<2>::from_data(TensorData::new(wt, [k, n]), &device);
        let packed: Vec<(&str, PackedWeights, u32)> = vec![
            (
                "int8",
                PackedWeights::from_quantized(&quantize(&w, n, k, 8)).unwrap(),
                8,
            ),
            (
                "w4a8",
                PackedWeights::from_quantized(&quantize(&w, n, k, 4)).unwrap(),
                8,
            ),
            (
                "w4a8_repack8",
                w4::repack_u8(&PackedWeights::from_quantized(&quantize(&w, n, k, 4)).unwrap())
                    .unwrap(),
                8,
            ),
            (
                "w4a4",
                PackedWeights::from_quantized(&quantize(&w, n, k, 4)).unwrap(),
                4,
            ),
            (
                "w1a8",
                PackedWeights::from_quantized(&quantize(&w, n, k, 1)).unwrap(),
                8,
            ),
            (
                "w1a4",
                PackedWeights::from_quantized(&quantize(&w, n, k, 1)).unwrap(),
                4,
            ),
        ];
        let wx = XnorWeights::from_quantized(&quantize(&w, n, k, 1)).unwrap();
        for m in [1usize, 16, 256, 1024] {
            let x = data(m * k, 1);
            let ops = 2.0 * (m * n * k) as f64;
            let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), &device);
            let mut row = vec![
                ops / best(|| {
                    let y = xt.clone().matmul(wt.clone());
                    device.sync().expect("sync");
                    std::hint::black_box(y);
                }) / 1e9,
            ];
            for (_, p, a_bits) in &packed {
                let act = ActQuant::dynamic(*a_bits).unwrap();
                row.push(
                    ops / best(|| {
                        drop(std::hint::black_box(
                            gemm_f32_out(&x, p, &act, None).unwrap(),
                        ))
                    }) / 1e9,
                );
            }
            row.push(
                ops / best(|| {
                    drop(std::hint::black_box(
                        xnor::gemm_f32_out(&x, &wx, None).unwrap(),
                    ))
                }) / 1e9,
            );
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    if i == 0 {
                        format!("{g:.1}")
                    } else {
                        format!("{g:.1} ({:.2}×)", g / row[0])
                    }
                })
                .collect();
            println!("| {tag} ({k}×{n}) | {m} | {} |", cells.join(" | "));
            for (f, g) in fmts.iter().zip(&row) {
                json.push(format!(
                    "{{\"shape\": \"{tag}\", \"m\": {m}, \"k\": {k}, \"n\": {n}, \"format\": \"{f}\", \"gops\": {g:.2}, \"ratio_vs_f32_burn\": {:.3}}}",
                    g / row[0]
                ));
            }
        }
    }
    println!();
    for j in json {
        println!("{j}");
    }
}
