//! The leaderboard: every method's rows from the result tables, per model and sampling
//! protocol (sample count and steps: FD is only comparable at equal counts), sorted by FD,
//! with the cost of each row (BitOPs per image, model bytes) and, per group, the cheapest
//! row whose FD is within 10% of the group's best marked (by BitOPs and by bytes).
//!
//! ```text
//! cargo run --release --example leaderboard -- [--results docs/results]
//! ```
//! Reads `ptq.json`, `efficientdm.json`, `quest.json`, `binarydm.json`, `tmpq.json`,
//! `smoothquant.json` and `svdquant.json`; writes `leaderboard.md` and `leaderboard.json`
//! (the results schema: an array of records, each the table's own row with `extra` = its
//! table and its marks), and per group two Pareto PNGs
//! (`leaderboard-<model>-<samples>-{bitops,bytes}.png`: FD against BitOPs and against
//! bytes, a series per method, labelled axes, legend).
//! Rows are copied, never recomputed: each keeps the command and commit of its table.

use std::collections::BTreeMap;
use std::path::PathBuf;

use dmq::eval::cli::{FlagError, Flags};
use dmq::eval::report::{ResultRow, read_rows};

type Error = Box<dyn std::error::Error>;

struct Args {
    results: PathBuf,
}

fn parse_args(f: &Flags) -> Result<Args, FlagError> {
    Ok(Args {
        results: f.get("results", PathBuf::from("docs/results"))?,
    })
}

fn run(args: &Args) -> Result<(), Error> {
    let mut rows: Vec<(String, ResultRow)> = Vec::new();
    for t in [
        "ptq",
        "efficientdm",
        "quest",
        "binarydm",
        "tmpq",
        "smoothquant",
        "svdquant",
    ] {
        if t == "svdquant" && !args.results.join("svdquant.json").exists() {
            continue;
        }
        for r in read_rows(&args.results.join(format!("{t}.json")))? {
            rows.push((t.to_string(), r));
        }
    }
    // groups: model × samples × steps; the FP rows stay (they anchor the group)
    let mut groups: BTreeMap<(String, usize, usize), Vec<(String, ResultRow)>> = BTreeMap::new();
    for (t, r) in rows {
        if r.fd_test.is_finite() {
            groups
                .entry((r.model.clone(), r.samples, r.steps))
                .or_default()
                .push((t, r));
        }
    }
    let mut md_charts = String::from(
        "\n## Pareto charts\n\nFD test against cost (log scale), one colour per method, one \
         chart per group with at least two quantized methods:\n\n",
    );
    let mut md = String::from(
        "# Leaderboard\n\nEvery method's rows from the result tables, grouped by model and \
         sampling protocol (FD is comparable only at equal sample count and steps), sorted by \
         FD test. Cost: BitOPs per image (all steps, both CFG branches) and model bytes. \
         **B** marks the cheapest row by BitOPs whose FD is within 10% of the group's best \
         (FP rows excluded), **S** the smallest by bytes. Rows are copied from their tables \
         (command, commit, machine there); written by `cargo run --release --example \
         leaderboard`. The FD seed-to-seed spread of the FP models is ±2.3 (UNet) and ±1.4 \
         (DiT) at 1000 samples (`noise.md`). Rows named `efficientdm` keep the \
         reference layer policy (attention matmuls and shortcuts FP, edges 8-bit), so their \
         BitOPs exceed the baselines' at the same preset; `efficientdm-all` is EfficientDM on \
         the baselines' layer set (`--policy everything`), at the naive rows' BitOPs. \
         SVDQuant rows carry their 16-bit low-rank branches in BitOPs (16 × 16 bits per branch \
         MAC) and bytes (f16 factors), so at rank 32 on these 128-wide models they cost more \
         than plain W4A4.\n",
    );
    let mut records: Vec<ResultRow> = Vec::new();
    // Pareto charts per group (FD is comparable only within one)
    for ((model, samples, steps), g) in &groups {
        let rows: Vec<&ResultRow> = g.iter().map(|(_, r)| r).collect();
        if rows.iter().filter(|r| !r.method.starts_with("fp")).count() < 2 {
            continue;
        }
        let mut by_method: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
        for r in rows {
            by_method.entry(r.method.clone()).or_default().push((
                r.bitops / 1e9,
                r.model_bytes as f64 / 1024.0,
                r.fd_test,
            ));
        }
        for (what, x_label, pick) in [
            ("bitops", "GBitOPs per image (log)", 0usize),
            ("bytes", "model KiB (log)", 1),
        ] {
            let series: Vec<(String, Vec<(f64, f64)>)> = by_method
                .iter()
                .map(|(m, pts)| {
                    let xy = pts
                        .iter()
                        .map(|p| (if pick == 0 { p.0 } else { p.1 }, p.2))
                        .collect();
                    (m.clone(), xy)
                })
                .collect();
            let refs: Vec<(&str, &[(f64, f64)])> = series
                .iter()
                .map(|(m, v)| (m.as_str(), v.as_slice()))
                .collect();
            let title = format!("{model}: FD vs cost, {samples} samples, {steps} steps");
            let file = format!("leaderboard-{model}-{samples}-{what}.png");
            let path = args.results.join(&file);
            dmq::eval::plot::scatter_chart_png(
                &path,
                &dmq::eval::plot::Axes {
                    title: &title,
                    x_label,
                    y_label: "FD test (lower is better)",
                    log_x: true,
                },
                &refs,
            )?;
            md_charts.push_str(&format!(
                "- {model}, {samples} samples: FD against {x_label}: ![{file}]({file})\n"
            ));
        }
    }
    for ((model, samples, steps), mut g) in groups {
        if g.iter().all(|(_, r)| r.method == "fp") {
            continue;
        }
        g.sort_by(|a, b| a.1.fd_test.total_cmp(&b.1.fd_test));
        let quantized: Vec<&ResultRow> = g
            .iter()
            .map(|(_, r)| r)
            .filter(|r| !r.method.starts_with("fp"))
            .collect();
        let best = quantized
            .iter()
            .map(|r| r.fd_test)
            .fold(f64::INFINITY, f64::min);
        let near: Vec<&&ResultRow> = quantized
            .iter()
            .filter(|r| r.fd_test <= 1.1 * best)
            .collect();
        let cheapest = near
            .iter()
            .min_by(|a, b| a.bitops.total_cmp(&b.bitops))
            .map(|r| (r.method.clone(), r.w_bits, r.a_bits));
        let smallest = near
            .iter()
            .min_by_key(|r| r.model_bytes)
            .map(|r| (r.method.clone(), r.w_bits, r.a_bits));
        md.push_str(&format!(
            "\n## {model}, {samples} samples, {steps} steps\n\n| table | method | W | A | FD test ↓ | PSNR vs FP | class acc | GBitOPs/img | model KiB | |\n|---|---|---|---|---|---|---|---|---|---|\n"
        ));
        for (t, r) in &g {
            let id = Some((r.method.clone(), r.w_bits, r.a_bits));
            let is_b = !r.method.starts_with("fp") && id == cheapest;
            let is_s = !r.method.starts_with("fp") && id == smallest;
            let bits = |b: u32| {
                if b >= 32 {
                    "FP".to_string()
                } else {
                    b.to_string()
                }
            };
            md.push_str(&format!(
                "| {t} | {} | {} | {} | {:.2} | {} | {} | {:.1} | {:.0} | {}{} |\n",
                r.method,
                bits(r.w_bits),
                bits(r.a_bits),
                r.fd_test,
                if r.psnr_fp.is_finite() && r.psnr_fp < 99.0 {
                    format!("{:.2}", r.psnr_fp)
                } else {
                    "–".into()
                },
                r.class_acc
                    .map_or("–".into(), |a| format!("{:.1}%", 100.0 * a)),
                r.bitops / 1e9,
                r.model_bytes as f64 / 1024.0,
                if is_b { "B" } else { "" },
                if is_s { "S" } else { "" },
            ));
            records.push(ResultRow {
                extra: serde_json::json!({
                    "table": t,
                    "cheapest_bitops_within_10pct": is_b,
                    "smallest_within_10pct": is_s,
                }),
                ..r.clone()
            });
        }
    }
    md.push_str(&md_charts);
    dmq::quant::file::write_atomic(&args.results.join("leaderboard.md"), md.as_bytes())?;
    let mut text = serde_json::to_string_pretty(&records)?;
    text.push('\n');
    dmq::quant::file::write_atomic(&args.results.join("leaderboard.json"), text.as_bytes())?;
    eprintln!(
        "leaderboard: {} rows → {}",
        records.len(),
        args.results.join("leaderboard.md").display()
    );
    Ok(())
}

fn main() {
    let args = Flags::parse_env(parse_args);
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
