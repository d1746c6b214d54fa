//! Metrics against closed forms and hand counts: Fréchet distance, PSNR/SSIM, MACs and BitOPs.

use std::collections::BTreeMap;

use dmq_eval::metrics::fd::{FeatureStats, frechet_distance, sqrt_psd};
use dmq_eval::metrics::{LayerBits, bitops, fidelity, psnr, ssim};
use dmq_models::layers::LayerKind;
use dmq_models::noise::NoiseRng;
use dmq_models::unet::{UNet2DModel, UNetConfig};

fn stats(mean: Vec<f64>, cov: Vec<f64>) -> FeatureStats {
    FeatureStats {
        dim: mean.len(),
        count: 100,
        mean,
        cov,
    }
}

#[test]
fn fd_matches_closed_forms() {
    // Commuting covariances: |Δμ|² + Σ (σ₁ − σ₂)² = 5 + (1−3)² + (2−1)² = 10.
    let a = stats(vec![0.0, 0.0], vec![1.0, 0.0, 0.0, 4.0]);
    let b = stats(vec![1.0, 2.0], vec![9.0, 0.0, 0.0, 1.0]);
    assert!((frechet_distance(&a, &b).unwrap() - 10.0).abs() < 1e-9);
    // Σ₁ = I, Σ₂ = [[2,1],[1,2]] (eigenvalues 3, 1): 2 + 4 − 2(√3 + 1) = 4 − 2√3.
    let a = stats(vec![0.0, 0.0], vec![1.0, 0.0, 0.0, 1.0]);
    let b = stats(vec![0.0, 0.0], vec![2.0, 1.0, 1.0, 2.0]);
    let want = 4.0 - 2.0 * 3f64.sqrt();
    assert!((frechet_distance(&a, &b).unwrap() - want).abs() < 1e-9);
    // Rotating both Gaussians by the same rotation leaves FD unchanged.
    let (c, s) = (0.6f64, 0.8f64);
    let rot = |d: [f64; 2]| {
        vec![
            c * c * d[0] + s * s * d[1],
            c * s * (d[0] - d[1]),
            c * s * (d[0] - d[1]),
            s * s * d[0] + c * c * d[1],
        ]
    };
    let a = stats(vec![0.0, 0.0], rot([1.0, 4.0]));
    let b = stats(vec![c * 1.0 - s * 2.0, s * 1.0 + c * 2.0], rot([9.0, 1.0]));
    assert!((frechet_distance(&a, &b).unwrap() - 10.0).abs() < 1e-8);
    // √A·√A = A for a random SPD matrix.
    let mut rng = NoiseRng::new(3);
    let n = 12;
    let m: Vec<f64> = (0..n * n).map(|_| rng.normal() as f64).collect();
    let mut spd = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            spd[i * n + j] = (0..n).map(|k| m[i * n + k] * m[j * n + k]).sum::<f64>()
                + if i == j { 0.1 } else { 0.0 };
        }
    }
    let r = sqrt_psd(&spd, n);
    for i in 0..n {
        for j in 0..n {
            let v: f64 = (0..n).map(|k| r[i * n + k] * r[k * n + j]).sum();
            assert!((v - spd[i * n + j]).abs() < 1e-8 * spd[i * n + i].abs().max(1.0));
        }
    }
}

#[test]
fn fd_of_a_set_with_itself_is_zero_and_sample_fd_converges() {
    let mut rng = NoiseRng::new(9);
    let d = 8;
    let rows: Vec<f32> = (0..4000 * d).map(|_| rng.normal()).collect();
    let s = FeatureStats::from_rows(&rows, d).unwrap();
    assert!(frechet_distance(&s, &s).unwrap() < 1e-9);
    // N(0, I) vs N(1, 4I) in d dims: d·1 + d·(1 − 2)² = 2d, from 4000 samples each.
    let other: Vec<f32> = (0..4000 * d).map(|_| 1.0 + 2.0 * rng.normal()).collect();
    let t = FeatureStats::from_rows(&other, d).unwrap();
    let fd = frechet_distance(&s, &t).unwrap();
    assert!((fd - 2.0 * d as f64).abs() < 0.1 * 2.0 * d as f64, "{fd}");
    assert!(FeatureStats::from_rows(&rows[..d], d).is_err());
    let mut nan = rows.clone();
    nan[17] = f32::NAN;
    let e = FeatureStats::from_rows(&nan, d).unwrap_err();
    assert!(e.to_string().contains("index 17"), "{e}");
}

#[test]
fn psnr_and_ssim_closed_forms() {
    let mut rng = NoiseRng::new(1);
    let a: Vec<f32> = (0..16 * 16)
        .map(|_| rng.normal().clamp(-0.8, 0.8))
        .collect();
    // a shift of 0.2 in [−1, 1] is 0.1 on [0, 1]: PSNR = 10·log10(1/0.01) = 20 dB
    let b: Vec<f32> = a.iter().map(|v| v + 0.2).collect();
    assert!((psnr(&a, &b) - 20.0).abs() < 1e-4);
    assert!((ssim(&a, &a, 16, 16) - 1.0).abs() < 1e-12);
    // a constant shift keeps structure and contrast: SSIM stays below 1 only through luminance
    let s = ssim(&a, &b, 16, 16);
    assert!(s < 1.0 && s > 0.8, "{s}");
    let noisy: Vec<f32> = a.iter().map(|v| v + 0.5 * rng.normal()).collect();
    assert!(ssim(&a, &noisy, 16, 16) < s);
    let f = fidelity(&a, &b, [1, 1, 16, 16]).unwrap();
    assert!((f.mse - 0.01).abs() < 1e-6 && (f.psnr - 20.0).abs() < 1e-4);
    assert!(fidelity(&a, &b[..10], [1, 1, 16, 16]).is_err());
}

#[test]
fn macs_and_bitops_match_hand_counts() {
    let device = burn::tensor::Device::flex();
    let cfg = UNetConfig::from_json(&serde_json::json!({
        "sample_size": 8, "in_channels": 1, "out_channels": 1,
        "block_out_channels": [8, 16], "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
        "attention_head_dim": 8, "norm_num_groups": 4
    }))
    .unwrap();
    let model = UNet2DModel::new(&cfg, &device).unwrap();
    let calls = dmq_models::layer_inventory(&model, &device).unwrap();
    let macs = |name: &str| {
        calls
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{name}"))
            .macs
    };
    // conv_in: C_out·H·W·C_in·k² = 8·8·8·1·9
    assert_eq!(macs("conv_in"), 8 * 8 * 8 * 9);
    // conv_out: 1·8·8·8·9
    assert_eq!(macs("conv_out"), 8 * 8 * 8 * 9);
    // time_embedding.linear_1: in 8 → out 32 (4·block_out_channels[0]), one row
    assert_eq!(macs("time_embedding.linear_1"), 8 * 32);
    // down_blocks.0.downsamplers.0.conv: 8→8, stride 2: 4·4 outputs·8·8·9
    assert_eq!(macs("down_blocks.0.downsamplers.0.conv"), 4 * 4 * 8 * 8 * 9);
    // attention at 4×4 (the second level has no downsampler): N = 16 tokens, C = 16:
    // q·kᵀ and softmax·v are N²·C each (heads split C, not multiply it)
    assert_eq!(macs("down_blocks.1.attentions.0.qk"), 16 * 16 * 16);
    assert_eq!(macs("down_blocks.1.attentions.0.sv"), 16 * 16 * 16);
    assert_eq!(macs("down_blocks.1.attentions.0.to_q"), 16 * 16 * 16);
    // BitOPs of W4A8 with attention matmuls at 8×8, over 10 steps
    let mut bits = BTreeMap::new();
    let (mut lin, mut mm) = (0u64, 0u64);
    for c in &calls {
        let b = if c.kind == LayerKind::Matmul {
            mm += c.macs;
            LayerBits { a: 8, b: 8 }
        } else {
            lin += c.macs;
            LayerBits { a: 4, b: 8 }
        };
        bits.insert(c.name.clone(), b);
    }
    let count = bitops(&calls, &bits, 10);
    assert_eq!(count.macs, 10.0 * (lin + mm) as f64);
    assert_eq!(count.bitops, 10.0 * (lin as f64 * 32.0 + mm as f64 * 64.0));
    let fp = bitops(&calls, &BTreeMap::new(), 10);
    assert_eq!(fp.bitops, 10.0 * (lin + mm) as f64 * 1024.0);
}
