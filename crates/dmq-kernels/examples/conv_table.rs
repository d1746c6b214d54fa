//! Quantized conv2d against burn's f32 conv2d (flex) on the default UNet's convolution
//! shapes at batch 16, best of N, with the time split into quantize + im2col, the integer
//! GEMM and the rest (transpose to NCHW, allocation). The quantized path is the integer
//! inference path's: [`conv::conv2d_hwc`] (quantize, NHWC im2col on the codes, GEMM).
//!
//! ```text
//! cargo run --release -p dmq-kernels --example conv_table
//! ```

use std::time::Duration;

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData};
use dmq_kernels::conv::{self, Conv2dParams};
use dmq_kernels::{ActQuant, GemmOptions, gemm_acts_f32, testdata};

fn best(f: impl FnMut()) -> f64 {
    dmq_kernels::peak::min_wall_time(f, 30, Duration::from_millis(1500))
}

fn main() {
    let device = Device::flex();
    let opts = GemmOptions::default();
    println!(
        "| x [B, C_in, H, W] → C_out (3×3) | GMAC | f32 burn (ms) | W8A8 (ms) | W4A8 (ms) | W8A8 split: quant+im2col / GEMM / rest (ms) | W8A8 vs f32 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &(b, cin, h, cout) in &[
        (16usize, 32usize, 28usize, 32usize),
        (16, 64, 28, 32),
        (16, 64, 14, 64),
        (16, 128, 14, 64),
        (16, 128, 7, 128),
        (16, 256, 7, 128),
    ] {
        let (k, w) = (3, h);
        let x = testdata::uniform(b * cin * h * w, 1);
        let wt = testdata::uniform(cout * cin * k * k, 2);
        let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), [b, cin, h, w]), &device);
        let wtt = Tensor::<4>::from_data(TensorData::new(wt.clone(), [cout, cin, k, k]), &device);
        let f32_s = best(|| {
            let y = conv2d(
                xt.clone(),
                wtt.clone(),
                None,
                ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
            );
            std::hint::black_box(y.into_data());
        });
        let params = Conv2dParams::new([1, 1], [1, 1]);
        let act = ActQuant::fixed(8, 2.0 / 255.0, 128.0, false).unwrap();
        let mut ts = Vec::new();
        for bits in [8u32, 4] {
            let qt = testdata::quantize_rows(&wt, cout, cin * k * k, bits).unwrap();
            let mut qt4 = qt.clone();
            qt4.shape = vec![cout, cin, k, k];
            let hwc = conv::pack_conv_weight_hwc(&qt4).unwrap();
            ts.push(best(|| {
                std::hint::black_box(
                    conv::conv2d_hwc(&x, [b, cin, h, w], &hwc, &act, None, &params, &opts).unwrap(),
                );
            }));
            if bits == 8 {
                let im = best(|| {
                    std::hint::black_box(
                        conv::im2col_quantized_hwc(
                            &x,
                            [b, cin, h, w],
                            k,
                            k,
                            &params,
                            &act,
                            opts.threads,
                        )
                        .unwrap(),
                    );
                });
                let (acts, _, _) = conv::im2col_quantized_hwc(
                    &x,
                    [b, cin, h, w],
                    k,
                    k,
                    &params,
                    &act,
                    opts.threads,
                )
                .unwrap();
                let g = best(|| {
                    std::hint::black_box(gemm_acts_f32(&acts, &hwc, None, &opts).unwrap());
                });
                ts.push(im);
                ts.push(g);
            }
        }
        let macs = (b * h * w * cout * cin * k * k) as f64;
        println!(
            "| [{b}, {cin}, {h}, {w}] → {cout} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} / {:.2} / {:.2} | {:.2}× |",
            macs / 1e9,
            f32_s * 1e3,
            ts[0] * 1e3,
            ts[3] * 1e3,
            ts[1] * 1e3,
            ts[2] * 1e3,
            (ts[0] - ts[1] - ts[2]) * 1e3,
            f32_s / ts[0]
        );
    }
}
