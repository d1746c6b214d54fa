//! `dmq`: quantize, sample, evaluate, benchmark, inspect and search low-bit diffusion models.
//!
//! Every subcommand checks its flags before any work starts; an error is one line on stderr
//! and exit status 1 (2 for a usage error, from clap).

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Low-bit quantization of diffusion models.
#[derive(Parser, Debug)]
#[command(name = "dmq", version, about, long_about = None)]
pub struct Cli {
    /// Backend: flex (CPU, default), ndarray (CPU) or wgpu (GPU), as compiled in.
    #[arg(long, global = true, default_value = "flex")]
    pub backend: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Quantize a diffusers model directory into a self-contained .dmq.safetensors file.
    Quantize(commands::quantize::Args),
    /// Sample a PNG grid from a model directory or a .dmq.safetensors file.
    Sample(commands::sample::Args),
    /// Score a quantized file: FD, PSNR/SSIM against FP, class accuracy, BitOPs, bytes.
    Eval(commands::eval::Args),
    /// Images per second: FP vs fake-quant vs integer path, and model bytes.
    Bench(commands::bench::Args),
    /// Per-layer bits, granularity and bytes of a .dmq.safetensors file.
    Inspect(commands::inspect::Args),
    /// TMPQ-DM: search timesteps and per-layer bits under a BitOPs budget; writes a config
    /// for `dmq quantize --config`.
    Search(commands::search::Args),
}

/// A file argument that must exist.
pub fn existing(p: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(p);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("{p}: no such file or directory"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Quantize(a) => commands::quantize::run(a, &cli.backend),
        Command::Sample(a) => commands::sample::run(a, &cli.backend),
        Command::Eval(a) => commands::eval::run(a, &cli.backend),
        Command::Bench(a) => commands::bench::run(a, &cli.backend),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Search(a) => commands::search::run(a, &cli.backend),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
