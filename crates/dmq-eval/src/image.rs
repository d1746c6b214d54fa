//! PNG output: sample grids from image tensors, and a small RGB canvas used by the plots.

use std::path::Path;

use burn::tensor::Tensor;

use crate::error::DataError;

/// An 8-bit RGB raster.
#[derive(Clone, Debug, PartialEq)]
pub struct Canvas {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Row-major RGB bytes.
    pub pixels: Vec<u8>,
}

impl Canvas {
    /// A canvas filled with `rgb`.
    pub fn new(width: usize, height: usize, rgb: [u8; 3]) -> Self {
        Self {
            width,
            height,
            pixels: rgb
                .iter()
                .copied()
                .cycle()
                .take(width * height * 3)
                .collect(),
        }
    }

    /// Sets one pixel (ignored outside the canvas).
    pub fn put(&mut self, x: i64, y: i64, rgb: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = 3 * (y as usize * self.width + x as usize);
            self.pixels[i..i + 3].copy_from_slice(&rgb);
        }
    }

    /// Draws a line (Bresenham).
    pub fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), rgb: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.put(x, y, rgb);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Fills a rectangle.
    pub fn rect(&mut self, x0: i64, y0: i64, w: i64, h: i64, rgb: [u8; 3]) {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                self.put(x, y, rgb);
            }
        }
    }

    /// Writes the canvas as an RGB PNG (atomically).
    pub fn save_png(&self, path: &Path) -> Result<(), DataError> {
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().map_err(|e| png_err(path, e))?;
            w.write_image_data(&self.pixels)
                .map_err(|e| png_err(path, e))?;
        }
        dmq_quant::file::write_atomic(path, &bytes).map_err(|e| DataError::Output {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}

fn png_err(path: &Path, e: png::EncodingError) -> DataError {
    DataError::Output {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Lays out `[N, C, H, W]` images (values in [-1, 1]; C = 1 gray or 3 RGB) in a grid of
/// `ncol` columns with `pad` pixels of white between them.
pub fn grid(images: Tensor<4>, ncol: usize, pad: usize) -> Result<Canvas, DataError> {
    let [n, c, h, w] = images.dims();
    if (c != 1 && c != 3) || ncol == 0 || n == 0 {
        return Err(DataError::Invalid(format!(
            "image grid needs [N>0, 1 or 3, H, W] images and ncol > 0, got [{n}, {c}, {h}, {w}], ncol {ncol}"
        )));
    }
    let data: Vec<f32> = images
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| DataError::Invalid(format!("{e:?}")))?;
    let nrow = n.div_ceil(ncol);
    let mut canvas = Canvas::new(
        ncol * (w + pad) + pad,
        nrow * (h + pad) + pad,
        [255, 255, 255],
    );
    for k in 0..n {
        let (gx, gy) = (pad + (k % ncol) * (w + pad), pad + (k / ncol) * (h + pad));
        for y in 0..h {
            for x in 0..w {
                let px = |ch: usize| {
                    let v = data[((k * c + ch) * h + y) * w + x];
                    (((v + 1.0) * 127.5).round().clamp(0.0, 255.0)) as u8
                };
                let rgb = if c == 1 {
                    [px(0); 3]
                } else {
                    [px(0), px(1), px(2)]
                };
                canvas.put((gx + x) as i64, (gy + y) as i64, rgb);
            }
        }
    }
    Ok(canvas)
}

/// [`grid`] written to a PNG file.
pub fn save_grid_png(path: &Path, images: Tensor<4>, ncol: usize) -> Result<(), DataError> {
    grid(images, ncol, 2)?.save_png(path)
}

/// Several grids side by side with a gap (e.g. FP samples | quantized samples from the same
/// noise).
pub fn side_by_side(panels: &[Canvas], gap: usize) -> Canvas {
    let width =
        panels.iter().map(|p| p.width).sum::<usize>() + gap * panels.len().saturating_sub(1);
    let height = panels.iter().map(|p| p.height).max().unwrap_or(0);
    let mut out = Canvas::new(width, height, [255, 255, 255]);
    let mut x0 = 0;
    for p in panels {
        for y in 0..p.height {
            for x in 0..p.width {
                let i = 3 * (y * p.width + x);
                out.put(
                    (x0 + x) as i64,
                    y as i64,
                    [p.pixels[i], p.pixels[i + 1], p.pixels[i + 2]],
                );
            }
        }
        x0 += p.width + gap;
    }
    out
}
