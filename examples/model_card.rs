//! The quality checks of a default model's card: an 8×8 sample grid PNG, and on `--n`
//! samples the classifier's verdict: class shares for the unconditional UNet (every class
//! should be ≥ 4%), class accuracy for the conditional DiT at CFG `--cfg` (≥ 80%), FD against
//! the test set. Prints a markdown block for the model card and writes `card_metrics.json`.
//!
//! ```text
//! cargo run --release --example model_card -- --model unet|dit [--dir assets/models/unet-fmnist]
//!     [--n 500] [--steps 50] [--cfg 1.5] [--batch 50]
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use dmq::eval::classifier::FmnistClassifier;
use dmq::eval::cli::{FlagError, Flags};
use dmq::eval::data::fashion_mnist::{DEFAULT_DIR, Split, load_split};
use dmq::eval::harness::{Reference, SampleSpec, generate, score};
use dmq::eval::progress::Progress;
use dmq::models::Denoiser;
use dmq::models::scheduler::{DdimConfig, DdimScheduler};

type Error = Box<dyn std::error::Error>;

struct Args {
    dir: PathBuf,
    n: usize,
    steps: usize,
    cfg: f64,
    batch: usize,
}

fn parse_args(f: &Flags) -> Result<Args, FlagError> {
    let model: String = f.get("model", "unet".into())?;
    Ok(Args {
        dir: f.get(
            "dir",
            PathBuf::from(format!("assets/models/{model}-fmnist")),
        )?,
        n: f.get("n", 500)?,
        steps: f.get("steps", 50)?,
        cfg: f.get("cfg", 1.5)?,
        batch: f.get("batch", 50)?,
    })
}

fn run(model: &dyn Denoiser, args: &Args, device: &Device) -> Result<(), Error> {
    let info = model.info();
    let guidance = if info.num_classes.is_some() {
        args.cfg
    } else {
        1.0
    };
    let sched = DdimScheduler::diffusers(&DdimConfig::new(), args.steps)?;
    let spec = SampleSpec {
        n: args.n.max(64),
        guidance,
        seed: 99,
        batch: args.batch,
    };
    let t = Instant::now();
    let mut bar = Progress::new("samples", spec.n as u64, 0);
    let images = generate(model, &sched, &spec, device, &mut |done, _| {
        bar.set(done as u64, "")
    })?;
    bar.finish();
    let secs = t.elapsed().as_secs_f64();
    // 8×8 grid of the first 64 (for the DiT: classes in order, i mod 10).
    let per: usize = images.shape[1..].iter().product();
    let first = Tensor::<4>::from_data(
        TensorData::new(
            images.data[..64 * per].to_vec(),
            [64, images.shape[1], images.shape[2], images.shape[3]],
        ),
        device,
    );
    dmq::eval::image::save_grid_png(&args.dir.join("samples.png"), first.clamp(-1.0, 1.0), 8)?;
    let classifier = FmnistClassifier::load(Path::new("assets/models/fmnist-classifier"), device)?;
    let test = load_split(DEFAULT_DIR, Split::Test)?;
    let reference = Reference::new(&classifier, &test, images.clone(), device)?;
    let s = score(&classifier, &reference, &images, info.num_classes, device)?;
    let min_share = s.class_share.iter().cloned().fold(f64::INFINITY, f64::min);
    println!("| metric | value |\n|---|---|");
    println!(
        "| samples | {} ({} DDIM steps{}) in {secs:.0} s |",
        spec.n,
        args.steps,
        if guidance != 1.0 {
            format!(", CFG {guidance}")
        } else {
            String::new()
        }
    );
    println!("| FD vs test set ({} samples) | {:.2} |", spec.n, s.fd_test);
    if let Some(acc) = s.class_acc {
        println!(
            "| class accuracy (classifier agrees with the conditioning class) | {:.1}% |",
            100.0 * acc
        );
    }
    println!(
        "| class shares (classifier labels) | {} |",
        s.class_share
            .iter()
            .map(|v| format!("{:.1}%", 100.0 * v))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("| smallest class share | {:.1}% |", 100.0 * min_share);
    let json = serde_json::json!({"samples": spec.n, "steps": args.steps, "cfg": guidance, "fd_test": s.fd_test,
        "class_acc": s.class_acc, "class_share": s.class_share, "min_class_share": min_share, "sampling_s": secs,
        "command": format!("cargo run --release --example model_card -- {}", std::env::args().skip(1).collect::<Vec<_>>().join(" "))});
    dmq::quant::file::write_atomic(
        &args.dir.join("card_metrics.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    Ok(())
}

fn main() {
    let args = Flags::parse_env(parse_args);
    let device = Device::flex();
    // the class comes from the directory's config.json (UNet2DModel, DiTTransformer2DModel)
    let r = dmq::pipeline::AnyDenoiser::from_pretrained(&args.dir, &device)
        .map_err(Error::from)
        .and_then(|m| run(&m, &args, &device));
    if let Err(e) = r {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
