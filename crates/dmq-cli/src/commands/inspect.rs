//! `dmq inspect FILE`: per layer bits, granularity and bytes; totals and compression.

use std::path::PathBuf;

use dmq_pipeline::dmq_file;

use super::Error;

/// Flags of `dmq inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A .dmq.safetensors file.
    #[arg(value_parser = crate::existing)]
    pub file: PathBuf,
    /// Print the table as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `dmq inspect`.
pub fn run(a: Args) -> Result<(), Error> {
    let f = dmq_quant::QuantizedFile::load(&a.file)?;
    let info = dmq_file::info(&f, &a.file)?;
    let rows = dmq_file::layer_table(&f);
    let file_bytes = std::fs::metadata(&a.file)?.len();
    let float_params: usize = f
        .float
        .values()
        .map(|(s, _)| s.iter().product::<usize>())
        .sum();
    let q_params: usize = f.quantized.values().map(|q| q.numel()).sum();
    let q_bytes: usize = f.quantized.values().map(|q| q.storage_bytes()).sum();
    let fp32_bytes = 4 * (float_params + q_params);
    // a text-to-image file's FP components (text encoder, VAE): parameters per component
    let mut components = std::collections::BTreeMap::<&str, usize>::new();
    let shapes = f.float.iter().map(|(k, (s, _))| (k, s));
    for (k, s) in shapes.chain(f.quantized.iter().map(|(k, q)| (k, &q.shape))) {
        if dmq_pipeline::pipeline_file::is_component_key(k) {
            let name = k.split('.').next().unwrap_or("");
            *components.entry(name).or_default() += s.iter().product::<usize>();
        }
    }
    // their weight bits (`dmq quantize --text-encoder-bits / --vae-bits`; absent: f32)
    let component_bits: dmq_pipeline::ComponentBits = f
        .metadata
        .get(dmq_pipeline::pipeline_file::keys::COMPONENT_BITS)
        .map(|j| serde_json::from_str(j))
        .transpose()
        .map_err(|e| {
            format!(
                "{}: {}: {e}",
                a.file.display(),
                dmq_pipeline::pipeline_file::keys::COMPONENT_BITS
            )
        })?
        .unwrap_or_default();
    if a.json {
        let v = serde_json::json!({
            "file": a.file, "info": info, "layers": rows, "file_bytes": file_bytes,
            "fp32_bytes": fp32_bytes, "quantized_params": q_params, "float_params": float_params,
            "component_params": components, "component_bits": component_bits,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{}: {} quantized with {} ({} steps), written by {}",
        a.file.display(),
        info.class_name,
        info.method,
        info.num_steps,
        info.writer
    );
    println!(
        "{:<56} {:>6} {:>26} {:>10} {:>10}  act",
        "layer", "w bits", "granularity", "params", "bytes"
    );
    for r in &rows {
        let act: Vec<String> = r.act.iter().map(|(op, b)| format!("{op}:{b}")).collect();
        println!(
            "{:<56} {:>6} {:>26} {:>10} {:>10}  {}",
            r.layer,
            r.weight_bits.map_or("fp32".into(), |b| b.to_string()),
            r.granularity,
            r.params,
            r.bytes,
            act.join(" ")
        );
    }
    for (name, n) in &components {
        let bits = match *name {
            "text_encoder" => component_bits.text_encoder,
            _ => component_bits.vae,
        };
        match bits {
            Some(b) => println!(
                "component {name}: {n} parameters, weights at {b} bits (weight-only, per output row)"
            ),
            None => println!("component {name}: {n} parameters at f32 (text-to-image pipeline)"),
        }
    }
    println!(
        "total: {q_params} quantized weights in {q_bytes} bytes, {float_params} other parameters at f32; \
         file {file_bytes} bytes vs {fp32_bytes} bytes at f32 ({:.2}× smaller)",
        fp32_bytes as f64 / file_bytes.max(1) as f64
    );
    Ok(())
}
