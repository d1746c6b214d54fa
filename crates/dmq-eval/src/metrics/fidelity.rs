//! Fidelity of quantized samples to the FP model's samples from the same initial noise:
//! MSE, PSNR and SSIM, per image then averaged.
//!
//! Images are in the model's range [−1, 1] and are mapped to [0, 1] first, so MSE and PSNR
//! (`10·log10(1/MSE)`) are on the unit range. SSIM is Wang et al. (2004): an 11×11 Gaussian
//! window with σ = 1.5, K₁ = 0.01, K₂ = 0.03, L = 1, over the valid region, averaged over
//! positions and channels (images smaller than the window use the whole image).

use crate::error::DataError;

/// Mean fidelity of a batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fidelity {
    /// Mean squared error on [0, 1].
    pub mse: f64,
    /// Mean PSNR in dB (identical images count as 100 dB).
    pub psnr: f64,
    /// Mean SSIM.
    pub ssim: f64,
}

fn check(a: &[f32], b: &[f32], shape: [usize; 4]) -> Result<(), DataError> {
    let n: usize = shape.iter().product();
    if a.len() != n || b.len() != n || n == 0 {
        return Err(DataError::Metric(format!(
            "fidelity needs two batches of shape {shape:?}, got {} and {} values",
            a.len(),
            b.len()
        )));
    }
    if let Some(i) = a.iter().chain(b).position(|v| !v.is_finite()) {
        return Err(DataError::Metric(format!(
            "non-finite pixel at flat index {i}"
        )));
    }
    Ok(())
}

fn unit(v: f32) -> f64 {
    ((v as f64 + 1.0) * 0.5).clamp(0.0, 1.0)
}

/// PSNR (dB) of one image pair given in [−1, 1].
pub fn psnr(a: &[f32], b: &[f32]) -> f64 {
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (unit(x) - unit(y)).powi(2))
        .sum::<f64>()
        / a.len().max(1) as f64;
    if mse <= 1e-10 {
        100.0
    } else {
        10.0 * (1.0 / mse).log10()
    }
}

fn gaussian_window(size: usize, sigma: f64) -> Vec<f64> {
    let c = (size as f64 - 1.0) / 2.0;
    let g: Vec<f64> = (0..size)
        .map(|i| (-((i as f64 - c).powi(2)) / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f64 = g.iter().sum();
    g.into_iter().map(|v| v / s).collect()
}

/// SSIM of one single-channel image pair `[h, w]` given in [−1, 1].
pub fn ssim(a: &[f32], b: &[f32], h: usize, w: usize) -> f64 {
    let win = 11.min(h).min(w);
    let g = gaussian_window(win, 1.5);
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let (x, y): (Vec<f64>, Vec<f64>) = (
        a.iter().map(|&v| unit(v)).collect(),
        b.iter().map(|&v| unit(v)).collect(),
    );
    let mut total = 0.0;
    let mut count = 0usize;
    for i0 in 0..=h - win {
        for j0 in 0..=w - win {
            let (mut mx, mut my, mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for di in 0..win {
                for dj in 0..win {
                    let wt = g[di] * g[dj];
                    let p = (i0 + di) * w + j0 + dj;
                    mx += wt * x[p];
                    my += wt * y[p];
                    sxx += wt * x[p] * x[p];
                    syy += wt * y[p] * y[p];
                    sxy += wt * x[p] * y[p];
                }
            }
            let (vx, vy, cxy) = (sxx - mx * mx, syy - my * my, sxy - mx * my);
            total += ((2.0 * mx * my + c1) * (2.0 * cxy + c2))
                / ((mx * mx + my * my + c1) * (vx + vy + c2));
            count += 1;
        }
    }
    total / count.max(1) as f64
}

/// Mean MSE, PSNR and SSIM between batches `a` (quantized) and `b` (FP) of `shape`
/// `[N, C, H, W]`, row-major, in [−1, 1].
pub fn fidelity(a: &[f32], b: &[f32], shape: [usize; 4]) -> Result<Fidelity, DataError> {
    check(a, b, shape)?;
    let [n, c, h, w] = shape;
    let per = c * h * w;
    let (mut mse, mut ps, mut ss) = (0.0, 0.0, 0.0);
    for k in 0..n {
        let (ia, ib) = (&a[k * per..(k + 1) * per], &b[k * per..(k + 1) * per]);
        mse += ia
            .iter()
            .zip(ib)
            .map(|(&x, &y)| (unit(x) - unit(y)).powi(2))
            .sum::<f64>()
            / per as f64;
        ps += psnr(ia, ib);
        ss += (0..c)
            .map(|ch| {
                ssim(
                    &ia[ch * h * w..(ch + 1) * h * w],
                    &ib[ch * h * w..(ch + 1) * h * w],
                    h,
                    w,
                )
            })
            .sum::<f64>()
            / c as f64;
    }
    Ok(Fidelity {
        mse: mse / n as f64,
        psnr: ps / n as f64,
        ssim: ss / n as f64,
    })
}
