//! Throughput of the wgpu integer GEMMs ([`dmq_kernels::gpu`]) against burn's f32 matmul on
//! the same wgpu device, measured in one run (best of N). Each call is a whole layer as a
//! user runs it: host activations in, quantized on the host (integer path) or uploaded as
//! f32 (burn), GEMM on the device, f32 result read back.
//!
//! ```text
//! cargo run --release -p dmq-kernels --features wgpu --example gpu_table [-- M,N,K ...]
//! ```
//!
//! On a CPU-only machine the adapter is Mesa's lavapipe: the numbers then measure a
//! software Vulkan rasteriser and say nothing about a real GPU; the ratio column is the
//! comparison to read.

use std::time::Duration;

use burn::tensor::{Device, DeviceKind, Tensor, TensorData};
use dmq_kernels::gpu::WgpuGemm;
use dmq_kernels::{ActQuant, PackedWeights, testdata};

fn best(f: impl FnMut()) -> f64 {
    dmq_kernels::peak::min_wall_time(f, 20, Duration::from_millis(3000))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shapes: Vec<(usize, usize, usize)> = {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.is_empty() {
            // UNet-like linear, DiT-like MLP at 196 tokens × batch 2, a square.
            vec![(64, 128, 512), (392, 512, 128), (256, 1024, 1024)]
        } else {
            args.iter()
                .map(|a| {
                    let v: Vec<usize> = a.split(',').filter_map(|x| x.parse().ok()).collect();
                    match v[..] {
                        [m, n, k] => Ok((m, n, k)),
                        _ => Err(format!("shape '{a}' is not M,N,K")),
                    }
                })
                .collect::<Result<_, _>>()?
        }
    };
    let gpu = WgpuGemm::new()?;
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    println!("| M | N | K | format | ms | Gop/s | vs burn f32 (wgpu) |");
    println!("|---|---|---|---|---|---|---|");
    for (m, n, k) in shapes {
        let x = testdata::uniform(m * k, 1);
        let w = testdata::uniform(n * k, 2);
        let wt = Tensor::<2>::from_data(TensorData::new(w.clone(), [n, k]), &device).transpose();
        let f32_s = best(|| {
            let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), &device);
            let y = xt.matmul(wt.clone()).into_data();
            std::hint::black_box(y);
        });
        let ops = 2.0 * (m * n * k) as f64;
        println!(
            "| {m} | {n} | {k} | f32 (burn) | {:.2} | {:.1} | 1.00× |",
            f32_s * 1e3,
            ops / f32_s / 1e9
        );
        for (name, bits, a_bits) in [("W8A8", 8, 8), ("W4A8", 4, 8), ("W4A4", 4, 4)] {
            let qt = testdata::quantize_rows(&w, n, k, bits)?;
            let dev_w = gpu.upload(&PackedWeights::from_quantized(&qt)?)?;
            let aq = ActQuant::dynamic(a_bits)?;
            let s = best(|| {
                let y = gpu
                    .gemm_f32_out(&x, &dev_w, &aq, None)
                    .expect("valid shapes");
                std::hint::black_box(y);
            });
            println!(
                "| {m} | {n} | {k} | {name} | {:.2} | {:.1} | {:.2}× |",
                s * 1e3,
                ops / s / 1e9,
                f32_s / s
            );
        }
    }
    Ok(())
}
