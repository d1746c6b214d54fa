//! Minimal PNG charts (line, scatter, bar) with titles, axis labels, tick labels and a legend
//! drawn from a built-in 3×5 bitmap font (digits, capital letters, a few signs), so charts
//! render the same everywhere without system fonts (plotters' text needs a font file or
//! font-kit's system lookup).

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
        'A' => 0b010_101_111_101_101,
        'B' => 0b110_101_110_101_110,
        'C' => 0b011_100_100_100_011,
        'D' => 0b110_101_101_101_110,
        'E' => 0b111_100_110_100_111,
        'F' => 0b111_100_110_100_100,
        'G' => 0b011_100_101_101_011,
        'H' => 0b101_101_111_101_101,
        'I' => 0b111_010_010_010_111,
        'J' => 0b001_001_001_101_010,
        'K' => 0b101_101_110_101_101,
        'L' => 0b100_100_100_100_111,
        'M' => 0b101_111_111_101_101,
        'N' => 0b110_101_101_101_101,
        'O' => 0b010_101_101_101_010,
        'P' => 0b110_101_110_100_100,
        'Q' => 0b010_101_101_111_011,
        'R' => 0b110_101_110_101_101,
        'S' => 0b011_100_010_001_110,
        'T' => 0b111_010_010_010_010,
        'U' => 0b101_101_101_101_111,
        'V' => 0b101_101_101_101_010,
        'W' => 0b101_101_111_111_101,
        'X' => 0b101_101_010_101_101,
        'Y' => 0b101_101_010_010_010,
        'Z' => 0b111_001_010_100_111,
        '(' => 0b010_100_100_100_010,
        ')' => 0b010_001_001_001_010,
        '/' => 0b001_001_010_100_100,
        '%' => 0b101_001_010_100_101,
        ':' => 0b000_010_000_010_000,
        ',' => 0b000_000_000_010_100,
        '=' => 0b000_111_000_111_000,
        '_' => 0b000_000_000_000_111,
        '<' => 0b001_010_100_010_001,
        '>' => 0b100_010_001_010_100,
        '|' => 0b010_010_010_010_010,
        '*' => 0b000_101_010_101_000,
        _ => return None,
    })
}

/// Draws a label: `text` in capitals (the font has capital letters only), at (x, y), scale `s`.
pub fn label(canvas: &mut Canvas, x: i64, y: i64, s: i64, text_: &str, rgb: [u8; 3]) {
    text(canvas, x, y, s, &text_.to_uppercase(), rgb);
}

/// Width in pixels of `text` drawn at scale `s`.
pub fn text_width(text: &str, s: i64) -> i64 {
    4 * s * text.chars().count() as i64
}

/// Draws `text` (digits, `.`, `-`, `+`, `e`, `k`, capitals, `()/%:,=_<>|*`) at (x, y),
/// scaled by `s`.
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

const COLORS: [[u8; 3]; 10] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [23, 190, 207],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
];
const W: usize = 760;
const H: usize = 460;
const L: i64 = 70;
const B: i64 = 60;
const T: i64 = 52;
const R: i64 = 20;

/// Title, axis labels and tick-label transform of a chart.
#[derive(Clone, Copy, Debug, Default)]
pub struct Axes<'a> {
    /// Title, above the plot.
    pub title: &'a str,
    /// x-axis label, under the tick labels.
    pub x_label: &'a str,
    /// y-axis label, above the y axis.
    pub y_label: &'a str,
    /// x plotted on a log10 scale (ticks show the values).
    pub log_x: bool,
}

fn frame(
    xr: (f64, f64),
    yr: (f64, f64),
    axes: &Axes<'_>,
) -> (Canvas, impl Fn(f64, f64) -> (i64, i64) + use<>) {
    let mut c = Canvas::new(W, H, [255, 255, 255]);
    let black = [0, 0, 0];
    label(&mut c, L, 6, 2, axes.title, black);
    label(&mut c, 4, T - 24, 2, axes.y_label, black);
    let xw = text_width(axes.x_label, 2);
    label(
        &mut c,
        L + (W as i64 - L - R - xw) / 2,
        H as i64 - 20,
        2,
        axes.x_label,
        black,
    );
    let (pw, ph) = (W as i64 - L - R, H as i64 - T - B);
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
        let v = xr.0 + fy * (xr.1 - xr.0);
        let label = tick_label(if axes.log_x { 10f64.powf(v) } else { v });
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

/// Series `k`'s marker centred at (x, y): its colour, and a shape per cycle through the
/// colours (filled square, hollow square, cross), so more series than colours stay apart.
fn marker(c: &mut Canvas, k: usize, x: i64, y: i64) {
    let rgb = COLORS[k % COLORS.len()];
    match (k / COLORS.len()) % 3 {
        0 => c.rect(x - 4, y - 4, 9, 9, rgb),
        1 => {
            c.rect(x - 4, y - 4, 9, 2, rgb);
            c.rect(x - 4, y + 3, 9, 2, rgb);
            c.rect(x - 4, y - 4, 2, 9, rgb);
            c.rect(x + 3, y - 4, 2, 9, rgb);
        }
        _ => {
            c.rect(x - 5, y - 1, 11, 3, rgb);
            c.rect(x - 1, y - 5, 3, 11, rgb);
        }
    }
}

/// The legend: one colour swatch and name per series, top right inside the plot.
fn legend(c: &mut Canvas, names: &[&str]) {
    let w = names.iter().map(|n| text_width(n, 2)).max().unwrap_or(0) + 26;
    let x0 = W as i64 - R - w - 6;
    let y0 = T + 6;
    c.rect(
        x0 - 4,
        y0 - 4,
        w + 8,
        14 * names.len() as i64 + 6,
        [245, 245, 245],
    );
    for (k, n) in names.iter().enumerate() {
        let y = y0 + 14 * k as i64;
        marker(c, k, x0 + 6, y + 5);
        label(c, x0 + 20, y, 2, n, [0, 0, 0]);
    }
}

/// A line chart of several named `(x, y)` series (colours in order: blue, red, green,
/// orange, ...) with a title, an x label and a legend, written as PNG.
pub fn line_chart_png(
    path: &Path,
    title: &str,
    xlabel: &str,
    series: &[(&str, &[(f64, f64)])],
) -> Result<(), DataError> {
    let axes = Axes {
        title,
        x_label: xlabel,
        ..Axes::default()
    };
    let xr = range(series.iter().flat_map(|(_, s)| s.iter().map(|p| p.0)));
    let yr = range(series.iter().flat_map(|(_, s)| s.iter().map(|p| p.1)));
    let (mut c, map) = frame(xr, yr, &axes);
    for (k, (_, s)) in series.iter().enumerate() {
        let rgb = COLORS[k % COLORS.len()];
        for w in s.windows(2) {
            if w.iter().all(|p| p.0.is_finite() && p.1.is_finite()) {
                c.line(map(w[0].0, w[0].1), map(w[1].0, w[1].1), rgb);
            }
        }
    }
    let names: Vec<&str> = series.iter().map(|(n, _)| *n).collect();
    legend(&mut c, &names);
    c.save_png(path)
}

/// A scatter chart (a Pareto plot): each named series' points as filled squares in its
/// colour, with title, axis labels and a legend; `axes.log_x` plots x on a log scale (x > 0).
pub fn scatter_chart_png(
    path: &Path,
    axes: &Axes<'_>,
    series: &[(&str, &[(f64, f64)])],
) -> Result<(), DataError> {
    let tx = |x: f64| if axes.log_x { x.log10() } else { x };
    let xr = range(series.iter().flat_map(|(_, s)| s.iter().map(|p| tx(p.0))));
    let yr = range(series.iter().flat_map(|(_, s)| s.iter().map(|p| p.1)));
    // a margin so extreme points are not drawn on the axes
    let pad = |(lo, hi): (f64, f64)| {
        let d = ((hi - lo) * 0.06).max(1e-9);
        (lo - d, hi + d)
    };
    let (mut c, map) = frame(pad(xr), pad(yr), axes);
    for (k, (_, s)) in series.iter().enumerate() {
        for &(x, y) in s.iter() {
            if tx(x).is_finite() && y.is_finite() {
                let (px, py) = map(tx(x), y);
                marker(&mut c, k, px, py);
            }
        }
    }
    let names: Vec<&str> = series.iter().map(|(n, _)| *n).collect();
    legend(&mut c, &names);
    c.save_png(path)
}

/// A bar chart of `values` in order (bar i at x = i), one colour per group of `group` bars
/// (e.g. one colour per bit-width), written as PNG.
pub fn bar_chart_png(path: &Path, values: &[f64], group: usize) -> Result<(), DataError> {
    let yr = (
        0.0f64.min(range(values.iter().copied()).0),
        range(values.iter().copied()).1,
    );
    let (mut c, map) = frame((0.0, values.len().max(1) as f64), yr, &Axes::default());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every character of a label is a glyph (so nothing silently disappears), and a
    /// scatter chart with labels and a legend is written.
    #[test]
    fn labels_have_glyphs_and_charts_are_written() {
        for ch in "FD TEST vs GBITOPS/IMG (LOG) MODEL KIB: W4A4, 10%"
            .to_uppercase()
            .chars()
        {
            assert!(glyph(ch).is_some(), "no glyph for {ch:?}");
        }
        let dir = std::env::temp_dir().join(format!("dmq-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("pareto.png");
        let axes = Axes {
            title: "unet pareto",
            x_label: "GBitOPs per image",
            y_label: "FD test",
            log_x: true,
        };
        scatter_chart_png(
            &p,
            &axes,
            &[
                ("naive", &[(100.0, 5.0), (1000.0, 2.0)]),
                ("svdquant", &[(300.0, 3.0)]),
            ],
        )
        .unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
