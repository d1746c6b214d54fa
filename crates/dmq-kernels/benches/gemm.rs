//! Integer GEMM throughput against burn's f32 matmul (flex backend) on the same CPU in the
//! same run, plus this machine's measured peaks (f32 FMA, int8 `vpdpbusd`, memory
//! bandwidth), so each kernel's distance to the limit is visible.
//!
//! Throughput is `Elements(2·M·N·K)`: criterion's "elem/s" is ops/s (one multiply-add = 2
//! ops) for every format, including the quantize/dequantize epilogue of the f32 entry
//! points. All kernels use every hardware thread; burn's flex matmul uses its own pool.
//!
//! ```text
//! cargo bench -p dmq-kernels --bench gemm -- --quick 'gemm/dit_mlp/M256'
//! cargo bench -p dmq-kernels --bench gemm -- --quick peak
//! ```
//!
//! Shapes: M ∈ {1, 16, 256, 1024} tokens × (K, N) ∈ {(1152, 4608) DiT-XL MLP,
//! (4096, 4096), (1152, 128) the default UNet's 128→128 3×3 conv as GEMM, (128, 512) its
//! time-embedding-sized linear}. Formats: `f32_burn` (burn flex `matmul`, weight `[K, N]`),
//! `int8` (W8A8), `w4a8` / `w4a4` (nibbles unpacked in the kernel), `w4a8_repack8` (nibbles
//! repacked to bytes at load), `w1a8` / `w1a4` (sign application), `xnor` (W1A1).

#![allow(missing_docs)] // criterion's macros generate undocumented public items

use std::hint::black_box;
use std::time::Duration;

use burn::tensor::{Device, Tensor, TensorData};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dmq_kernels::peak::{self, FmaWidth};
use dmq_kernels::xnor::{self, XnorWeights};
use dmq_kernels::{ActQuant, PackedWeights, available_threads, gemm_f32_out, testdata, w4};
use dmq_quant::QuantizedTensor;

fn data(n: usize, seed: u64) -> Vec<f32> {
    testdata::uniform(n, seed)
}

fn quantize(w: &[f32], n: usize, k: usize, bits: u32) -> QuantizedTensor {
    testdata::quantize_rows(w, n, k, bits).expect("valid shapes")
}

fn shapes() -> Vec<(&'static str, usize, usize, usize)> {
    let mut out = Vec::new();
    for (tag, k, n) in [
        ("dit_mlp", 1152, 4608),
        ("sq4096", 4096, 4096),
        ("unet_conv3x3", 1152, 128),
        ("unet_linear", 128, 512),
    ] {
        for m in [1usize, 16, 256, 1024] {
            out.push((tag, m, k, n));
        }
    }
    out
}

fn gemm(c: &mut Criterion) {
    let device = Device::flex();
    for (tag, m, k, n) in shapes() {
        let mut group = c.benchmark_group(format!("gemm/{tag}/M{m}"));
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        group.sample_size(10);
        group.warm_up_time(Duration::from_millis(300));
        group.measurement_time(Duration::from_secs(2));
        // Criterion runs every closure below only when its id passes the filter, so the
        // (slow, for 4096²) weight preparation is lazy.
        let x = data(m * k, 1);
        let w = data(n * k, 2);

        group.bench_function(BenchmarkId::from_parameter("f32_burn"), |b| {
            let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
            let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), &device);
            let wt = Tensor::<2>::from_data(TensorData::new(wt, [k, n]), &device);
            b.iter(|| {
                let y = xt.clone().matmul(wt.clone());
                device.sync().expect("sync");
                black_box(y)
            })
        });
        for (name, bits, a_bits, repack) in [
            ("int8", 8, 8, false),
            ("w4a8", 4, 8, false),
            ("w4a8_repack8", 4, 8, true),
            ("w4a4", 4, 4, false),
            ("w1a8", 1, 8, false),
            ("w1a4", 1, 4, false),
        ] {
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                let qt = quantize(&w, n, k, bits);
                let mut packed = PackedWeights::from_quantized(&qt).unwrap();
                if repack {
                    packed = w4::repack_u8(&packed).unwrap();
                }
                let act = ActQuant::dynamic(a_bits).unwrap();
                b.iter(|| black_box(gemm_f32_out(&x, &packed, &act, None).unwrap()))
            });
        }
        group.bench_function(BenchmarkId::from_parameter("xnor"), |b| {
            let wx = XnorWeights::from_quantized(&quantize(&w, n, k, 1)).unwrap();
            b.iter(|| black_box(xnor::gemm_f32_out(&x, &wx, None).unwrap()))
        });
        group.finish();
    }
}

/// Runs `f` on every hardware thread at once (for the all-core peaks).
fn on_all_threads(f: impl Fn() + Sync) {
    std::thread::scope(|s| {
        for _ in 0..available_threads() {
            s.spawn(&f);
        }
    });
}

fn peaks(c: &mut Criterion) {
    let threads = available_threads();
    let mut group = c.benchmark_group("peak/compute");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(1));
    const ITERS: usize = 1 << 20;
    for (name, width) in [
        ("fma_f32_avx2", FmaWidth::Avx2),
        ("fma_f32_avx512", FmaWidth::Avx512),
    ] {
        if peak::fma_f32(width, 1).is_err() {
            continue;
        }
        group.throughput(Throughput::Elements(peak::fma_flops(width, ITERS)));
        group.bench_function(format!("{name}/1t"), |b| {
            b.iter(|| black_box(peak::fma_f32(width, ITERS).unwrap()))
        });
        group.throughput(Throughput::Elements(
            peak::fma_flops(width, ITERS) * threads as u64,
        ));
        group.bench_function(format!("{name}/{threads}t"), |b| {
            b.iter(|| {
                on_all_threads(|| {
                    black_box(peak::fma_f32(width, ITERS).unwrap());
                })
            })
        });
    }
    if peak::vnni_i8(1).is_ok() {
        group.throughput(Throughput::Elements(peak::vnni_ops(ITERS)));
        group.bench_function("vpdpbusd_i8/1t", |b| {
            b.iter(|| black_box(peak::vnni_i8(ITERS).unwrap()))
        });
        group.throughput(Throughput::Elements(peak::vnni_ops(ITERS) * threads as u64));
        group.bench_function(format!("vpdpbusd_i8/{threads}t"), |b| {
            b.iter(|| {
                on_all_threads(|| {
                    black_box(peak::vnni_i8(ITERS).unwrap());
                })
            })
        });
    }
    group.finish();

    // Memory bandwidth: 256 MiB, far beyond the last-level cache.
    let mut group = c.benchmark_group("peak/memory");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(2));
    let len = 64 << 20; // f32s
    let src = data(len, 3);
    let mut dst = vec![0f32; len];
    group.throughput(Throughput::Bytes((4 * len) as u64));
    group.bench_function(format!("read_sum_256MiB/{threads}t"), |b| {
        b.iter(|| {
            let chunk = len.div_ceil(threads);
            let sums: Vec<f32> = std::thread::scope(|s| {
                let hs: Vec<_> = src
                    .chunks(chunk)
                    .map(|c| {
                        s.spawn(move || {
                            // 16 independent partial sums let the loop vectorize.
                            c.chunks_exact(16)
                                .fold([0f32; 16], |mut a, v| {
                                    for (ai, vi) in a.iter_mut().zip(v) {
                                        *ai += vi;
                                    }
                                    a
                                })
                                .iter()
                                .sum::<f32>()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            black_box(sums)
        })
    });
    group.throughput(Throughput::Bytes((8 * len) as u64));
    group.bench_function(format!("copy_256MiB_read+write/{threads}t"), |b| {
        b.iter(|| {
            let chunk = len.div_ceil(threads);
            std::thread::scope(|s| {
                for (d, sc) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                    s.spawn(move || d.copy_from_slice(sc));
                }
            });
            black_box(&dst);
        })
    });
    group.finish();
}

criterion_group!(benches, peaks, gemm);
criterion_main!(benches);
