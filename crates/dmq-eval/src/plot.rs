//! Minimal PNG charts (line and bar) with numeric tick labels drawn from a built-in 3×5
//! bitmap font, so no system fonts are needed. Titles and legends belong in the markdown
//! report next to the PNG.

use std::path::Path;

use crate::error::DataError;
use crate::image::Canvas;

/// Glyphs of the tick-label font, 3 columns × 5 rows, one u16 per glyph (bit 14 = top left).
fn glyph(c: char) -> Option<u16> {
    Some(match c {
        '0' => 0b111_101_101_101_111,
        '1' => 0b010_110_010_010_111,
        '2' => 0b111_001_111_100_111,
        '3' => 0b111_001_111_001_111,
        '4' => 0b101_101_111_001_001,
        '5' => 0b111_100_111_001_111,
        '6' => 0b111_100_111_101_111,
        '7' => 0b111_001_010_010_010,
        '8' => 0b111_101_111_101_111,
        '9' => 0b111_101_111_001_111,
        '.' => 0b000_000_000_000_010,
        '-' => 0b000_000_111_000_000,
        '+' => 0b000_010_111_010_000,
        'e' => 0b000_111_111_100_111,
        'k' => 0b100_101_110_101_101,
        ' ' => 0,
        _ => return None,
    })
}

/// Draws `text` (digits, `.`, `-`, `+`, `e`, `k`) at (x, y), scaled by `s`.
pub fn text(canvas: &mut Canvas, x: i64, y: i64, s: i64, text: &str, rgb: [u8; 3]) {
    let mut cx = x;
    for ch in text.chars() {
        if let Some(g) = glyph(ch) {
            for row in 0..5 {
                for col in 0..3 {
                    if g >> (14 - (row * 3 + col)) & 1 == 1 {
                        canvas.rect(cx + col * s, y + row * s, s, s, rgb);
                    }
                }
            }
        }
        cx += 4 * s;
    }
}

/// Compact tick label: 3 significant digits, `k` for thousands, scientific when tiny.
pub fn tick_label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 0.01 {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.1e}")
    }
}

const COLORS: [[u8; 3]; 6] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [23, 190, 207],
];
const W: usize = 720;
const H: usize = 420;
const L: i64 = 70;
const B: i64 = 40;
const T: i64 = 20;
const R: i64 = 20;

fn frame(xr: (f64, f64), yr: (f64, f64)) -> (Canvas, impl Fn(f64, f64) -> (i64, i64)) {
    let mut c = Canvas::new(W, H, [255, 255, 255]);
    let (pw, ph) = (W as i64 - L - R, H as i64 - T - B);
    let black = [0, 0, 0];
    c.line((L, T), (L, T + ph), black);
    c.line((L, T + ph), (L + pw, T + ph), black);
    for i in 0..=4 {
        let fy = i as f64 / 4.0;
        let y = T + ph - (fy * ph as f64) as i64;
        c.line((L - 4, y), (L, y), black);
        let label = tick_label(yr.0 + fy * (yr.1 - yr.0));
        text(&mut c, 4, y - 5, 2, &label, black);
        let x = L + (fy * pw as f64) as i64;
        c.line((x, T + ph), (x, T + ph + 4), black);
        let label = tick_label(xr.0 + fy * (xr.1 - xr.0));
        text(
            &mut c,
            x - 4 * label.len() as i64,
            T + ph + 10,
            2,
            &label,
            black,
        );
    }
    let map = move |x: f64, y: f64| {
        let fx = if xr.1 > xr.0 {
            (x - xr.0) / (xr.1 - xr.0)
        } else {
            0.5
        };
        let fy = if yr.1 > yr.0 {
            (y - yr.0) / (yr.1 - yr.0)
        } else {
            0.5
        };
        (
            L + (fx * pw as f64) as i64,
            T + ph - (fy * ph as f64) as i64,
        )
    };
    (c, map)
}

fn range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = vals
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) }
}

/// A line chart of several `(x, y)` series (colours in order: blue, red, green, orange, ...),
/// written as PNG. `_title`/`_xlabel` are for the caller's report (the font has no letters).
pub fn line_chart_png(
    path: &Path,
    _title: &str,
    _xlabel: &str,
    series: &[(&str, &[(f64, f64)])],
) -> Result<(), DataError> {
    let xr = range(series.iter().flat_map(|(_, s)| s.iter().map(|p| p.0)));
    let yr = range(series.iter().flat_map(|(_, s)| s.iter().map(|p| p.1)));
    let (mut c, map) = frame(xr, yr);
    for (k, (_, s)) in series.iter().enumerate() {
        let rgb = COLORS[k % COLORS.len()];
        for w in s.windows(2) {
            if w.iter().all(|p| p.0.is_finite() && p.1.is_finite()) {
                c.line(map(w[0].0, w[0].1), map(w[1].0, w[1].1), rgb);
            }
        }
    }
    c.save_png(path)
}

/// A bar chart of `values` in order (bar i at x = i), one colour per group of `group` bars
/// (e.g. one colour per bit-width), written as PNG.
pub fn bar_chart_png(path: &Path, values: &[f64], group: usize) -> Result<(), DataError> {
    let yr = (
        0.0f64.min(range(values.iter().copied()).0),
        range(values.iter().copied()).1,
    );
    let (mut c, map) = frame((0.0, values.len().max(1) as f64), yr);
    let (x0, _) = map(0.0, 0.0);
    let (x1, _) = map(1.0, 0.0);
    let bw = ((x1 - x0) * 4 / 5).max(1);
    for (i, &v) in values.iter().enumerate() {
        let (x, y) = map(i as f64, v);
        let (_, y0) = map(0.0, 0.0);
        c.rect(
            x,
            y.min(y0),
            bw,
            (y0 - y).abs().max(1),
            COLORS[(i / group.max(1)) % COLORS.len()],
        );
    }
    c.save_png(path)
}
