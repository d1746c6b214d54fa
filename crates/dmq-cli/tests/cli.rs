//! The `dmq` binary end to end: every subcommand on a tiny model; quantize, integer sampling
//! and a scored eval row on the embedded DiT; quantize and integer sampling on a diffusers
//! directory in the CIFAR-10 DDPM shape that the repository does not ship; search → quantize;
//! BinaryDM; text-to-image sampling; bad input gives one line on stderr and a non-zero
//! status, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::Device;

const DMQ: &str = env!("CARGO_BIN_EXE_dmq");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn dmq(args: &[&str]) -> Output {
    Command::new(DMQ)
        .args(args)
        .current_dir(root())
        .output()
        .expect("the dmq binary runs")
}

/// Runs `dmq args`, asserts success, returns stdout.
fn ok(args: &[&str]) -> String {
    let out = dmq(args);
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "dmq {args:?} failed:\n{so}\n{se}");
    so
}

/// Runs `dmq args`, asserts a one-line error (no panic) mentioning `needle`.
fn fails(args: &[&str], needle: &str) {
    let out = dmq(args);
    let se = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "dmq {args:?} succeeded");
    assert!(
        !se.contains("panicked") && !se.contains("RUST_BACKTRACE"),
        "{args:?} panicked: {se}"
    );
    let first = se.lines().find(|l| l.starts_with("error")).unwrap_or("");
    assert!(
        first.contains(needle),
        "dmq {args:?}: '{needle}' not in the error line:\n{se}"
    );
}

/// Copies directory `from` (recursively) to `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dst = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dst);
        } else {
            std::fs::copy(&p, &dst).unwrap();
        }
    }
}

fn write_unet_dir(dir: &Path, config: serde_json::Value) {
    let cfg = dmq_models::unet::UNetConfig::from_json(&config).unwrap();
    let m = dmq_models::unet::UNet2DModel::new(&cfg, &Device::flex()).unwrap();
    m.save_pretrained(dir).unwrap();
    std::fs::write(
        dir.join("scheduler_config.json"),
        r#"{"_class_name":"DDPMScheduler","beta_schedule":"linear","num_train_timesteps":1000}"#,
    )
    .unwrap();
}

/// quantize (naive W8A8) → inspect on `model`; returns the file.
fn quantize_and_inspect(model: &str, tmp: &Path, tag: &str, quick: &[&str]) -> PathBuf {
    let file = tmp.join(format!("{tag}.dmq.safetensors"));
    let f = file.to_str().unwrap();
    let mut q = vec![
        "quantize", "--model", model, "--method", "naive", "--preset", "W8A8", "--out", f,
    ];
    q.extend_from_slice(quick);
    let out = ok(&q);
    assert!(out.contains("× smaller"), "{out}");
    assert!(
        !Path::new(&format!("{f}.work")).exists(),
        "the run directory is removed after success"
    );
    let ins = ok(&["inspect", f]);
    assert!(ins.contains("total:") && ins.contains("naive"), "{ins}");
    file
}

/// `dmq sample` of a quantized file on the integer path: a PNG.
fn sample_integer(file: &Path, tmp: &Path, tag: &str) {
    let png = tmp.join(format!("{tag}-int.png"));
    let (f, p) = (file.to_str().unwrap(), png.to_str().unwrap());
    ok(&["sample", "--model", f, "--n", "1", "--out", p, "--integer"]);
    assert!(std::fs::metadata(&png).unwrap().len() > 100);
}

/// `dmq eval` of a quantized file against its FP model on `path` (fake-quant or integer).
fn eval_row(file: &Path, model: &str, integer: bool) -> serde_json::Value {
    let mut args = vec![
        "eval",
        "--model",
        file.to_str().unwrap(),
        "--fp",
        model,
        "--samples",
        "2",
    ];
    if integer {
        args.push("--integer");
    }
    let e = ok(&args);
    let row: serde_json::Value = serde_json::from_str(e.lines().last().unwrap()).unwrap();
    assert!(row["psnr_fp"].as_f64().unwrap() > 10.0, "{row}");
    assert!(row["gbitops_per_image"].as_f64().unwrap() > 0.0, "{row}");
    assert_eq!(row["path"], if integer { "integer" } else { "fake-quant" });
    row
}

/// quantize → inspect → sample (fake-quant and integer) → bench → eval on `model`.
fn every_subcommand(model: &str, tmp: &Path, tag: &str, quick: &[&str]) {
    let file = quantize_and_inspect(model, tmp, tag, quick);
    let f = file.to_str().unwrap();
    let png = tmp.join(format!("{tag}.png"));
    let p = png.to_str().unwrap();
    ok(&["sample", "--model", f, "--n", "2", "--out", p]);
    assert!(std::fs::metadata(&png).unwrap().len() > 100);
    sample_integer(&file, tmp, tag);
    let b = ok(&["bench", "--model", f, "--batch", "1", "--repeats", "1"]);
    assert!(b.contains("integer kernels"), "{b}");
    let row = eval_row(&file, model, false);
    // the integer path's samples: a row of their own, at the same cost
    let int = eval_row(&file, model, true);
    assert_eq!(int["gbitops_per_image"], row["gbitops_per_image"]);
    let b = ok(&[
        "bench",
        "--model",
        f,
        "--batch",
        "1",
        "--repeats",
        "1",
        "--agreement",
    ]);
    assert!(b.contains("PSNR integer vs fake-quant"), "{b}");
}

const QUICK: [&str; 6] = ["--steps", "2", "--calib-n", "2", "--calib-steps", "1"];

#[test]
fn tiny_unet_every_subcommand() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    write_unet_dir(
        &dir,
        serde_json::to_value(dmq_models::defaults::tiny_unet().unwrap()).unwrap(),
    );
    every_subcommand(dir.to_str().unwrap(), tmp.path(), "tiny", &QUICK);
}

/// The embedded DiT (the tiny model covers the UNet's chain; the embedded UNet is loaded by
/// the BinaryDM and bad-input tests): quantize, inspect, integer sampling, and an integer
/// eval row scored with the metric classifier (a 1×28×28 model: FD and class accuracy).
#[test]
fn embedded_dit_quantize_sample_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let model = "assets/models/dit-fmnist";
    let file = quantize_and_inspect(model, tmp.path(), "dit", &QUICK);
    sample_integer(&file, tmp.path(), "dit");
    let row = eval_row(&file, model, true);
    assert!(row["fd_test"].as_f64().unwrap() > 0.0, "{row}");
    assert!(row["class_acc"].is_number(), "{row}");
}

/// The CIFAR-10 DDPM shape (35.7M parameters), random weights: a model dmq does not ship
/// quantizes, inspects and samples on the integer path.
#[test]
fn cifar10_ddpm_shape_quantize_and_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ddpm-cifar10");
    write_unet_dir(
        &dir,
        serde_json::json!({
            "_class_name": "UNet2DModel", "sample_size": 32, "in_channels": 3, "out_channels": 3,
            "block_out_channels": [128, 256, 256, 256], "layers_per_block": 2,
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
            "attention_head_dim": null, "norm_num_groups": 32, "norm_eps": 1e-6,
            "downsample_padding": 0, "flip_sin_to_cos": false, "freq_shift": 1,
            "resnet_time_scale_shift": "default", "add_attention": true, "act_fn": "silu"
        }),
    );
    let file = quantize_and_inspect(
        dir.to_str().unwrap(),
        tmp.path(),
        "cifar",
        &["--steps", "1", "--calib-n", "1", "--calib-steps", "1"],
    );
    sample_integer(&file, tmp.path(), "cifar");
}

/// `dmq search` writes a config; `dmq quantize --config` applies its per-layer bits and its
/// timesteps; the file then samples over those timesteps without being told.
#[test]
fn search_then_quantize_with_the_searched_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    write_unet_dir(
        &dir,
        serde_json::to_value(dmq_models::defaults::tiny_unet().unwrap()).unwrap(),
    );
    let d = dir.to_str().unwrap();
    let cfg = tmp.path().join("search.json");
    let c = cfg.to_str().unwrap();
    let out = ok(&[
        "search",
        "--model",
        d,
        "--steps",
        "3",
        "--bits",
        "8,6,4",
        "--budget-bits",
        "6",
        "--population",
        "4",
        "--epochs",
        "1",
        "--fitness-samples",
        "2",
        "--reference-steps",
        "4",
        "--calib-n",
        "2",
        "--out",
        c,
    ]);
    assert!(out.contains("tmpq: 3 timesteps"), "{out}");
    assert!(!Path::new(&format!("{c}.state.json")).exists());
    let searched: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    assert_eq!(searched["format"], "dmq.search.v1");
    let ts: Vec<u64> = searched["timesteps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    let file = tmp.path().join("tmpq.dmq.safetensors");
    let f = file.to_str().unwrap();
    ok(&[
        "quantize",
        "--model",
        d,
        "--config",
        c,
        "--calib-n",
        "2",
        "--calib-steps",
        "1",
        "--out",
        f,
    ]);
    let ins = ok(&["inspect", f, "--json"]);
    let info: serde_json::Value = serde_json::from_str(&ins).unwrap();
    let mut file_ts: Vec<u64> = info["info"]["timesteps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_f64().unwrap() as u64)
        .collect();
    file_ts.sort_unstable();
    assert_eq!(file_ts, ts, "the file carries the searched timesteps");
    let png = tmp.path().join("tmpq.png");
    let s = ok(&[
        "sample",
        "--model",
        f,
        "--n",
        "2",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(s.contains("3 ddim steps"), "{s}");
    fails(
        &[
            "quantize", "--model", d, "--config", c, "--steps", "5", "--out", f,
        ],
        "--steps 5",
    );
    fails(
        &["search", "--model", d, "--bits", "8,9", "--out", c],
        "--bits",
    );
    fails(
        &["search", "--model", d, "--budget-bits", "3", "--out", c],
        "--budget-bits 3",
    );
}

/// BinaryDM from the command line on Fashion-MNIST (two iterations), and its refusals.
#[test]
fn binarydm_from_the_command_line() {
    let data = dmq_eval::data::fashion_mnist::DEFAULT_DIR;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("bin.dmq.safetensors");
    let f = file.to_str().unwrap();
    let unet = "assets/models/unet-fmnist";
    ok(&[
        "quantize",
        "--model",
        unet,
        "--method",
        "binarydm",
        "--preset",
        "W1A4",
        "--iters-scale",
        "0.001",
        "--steps",
        "2",
        "--calib-n",
        "2",
        "--calib-steps",
        "1",
        "--data",
        data,
        "--out",
        f,
    ]);
    let ins = ok(&["inspect", f, "--json"]);
    let info: serde_json::Value = serde_json::from_str(&ins).unwrap();
    assert_eq!(info["info"]["method"], "binarydm");
    let layers = info["layers"].as_array().unwrap();
    let ones = layers.iter().filter(|l| l["weight_bits"] == 1).count();
    assert!(
        ones * 2 > layers.len(),
        "most layers binarized: {ones} of {}",
        layers.len()
    );
    fails(
        &[
            "quantize", "--model", unet, "--method", "binarydm", "--preset", "W4A4", "--data",
            data, "--out", f,
        ],
        "W1Ax",
    );
    // Fashion-MNIST is 28×28: a model of another size is refused before training
    let dir = tmp.path().join("tiny");
    write_unet_dir(
        &dir,
        serde_json::to_value(dmq_models::defaults::tiny_unet().unwrap()).unwrap(),
    );
    fails(
        &[
            "quantize",
            "--model",
            dir.to_str().unwrap(),
            "--method",
            "binarydm",
            "--preset",
            "W1A4",
            "--steps",
            "2",
            "--calib-n",
            "2",
            "--calib-steps",
            "1",
            "--data",
            data,
            "--out",
            f,
        ],
        "1×28×28",
    );
}

/// `dmq sample --prompt` on a diffusers text-to-image pipeline directory (the tiny
/// random-weight pipeline of dmq-pipeline's parity test): a grid with one row per prompt, under
/// the pipeline's own sampler and DPM-Solver++; prompts are required there and refused
/// elsewhere. Then `dmq quantize` of the pipeline on calibration prompts into one file that
/// samples (fake-quant and integer) and evaluates on its own.
#[test]
fn text_to_image_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let pipe = root().join("crates/dmq-pipeline/tests/fixtures/t2i/pipeline");
    let pipe = pipe.to_str().unwrap();
    let png = tmp.path().join("t2i.png");
    let png = png.to_str().unwrap();
    let s = ok(&[
        "sample",
        "--model",
        pipe,
        "--prompt",
        "a photo of a sneaker",
        "--prompt",
        "a bag",
        "--n",
        "2",
        "--steps",
        "3",
        "--out",
        png,
    ]);
    assert!(
        s.contains("4 images for 2 prompt(s)") && s.contains("pndm"),
        "{s}"
    );
    assert!(std::fs::metadata(png).unwrap().len() > 100);
    let s = ok(&[
        "sample",
        "--model",
        pipe,
        "--prompt",
        "a coat",
        "--n",
        "1",
        "--steps",
        "3",
        "--sampler",
        "dpm++2m",
        "--cfg",
        "3",
        "--out",
        png,
    ]);
    assert!(s.contains("dpm++2m") && s.contains("guidance 3"), "{s}");
    fails(&["sample", "--model", pipe, "--out", png], "--prompt");
    // quantize the pipeline's UNet on calibration prompts: one self-contained file
    let file = tmp.path().join("t2i.dmq.safetensors");
    let f = file.to_str().unwrap();
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(&prompts, "a photo of a sneaker\n\na bag\n").unwrap();
    let out = ok(&[
        "quantize",
        "--model",
        pipe,
        "--prompts",
        prompts.to_str().unwrap(),
        "--prompt",
        "a coat",
        "--steps",
        "3",
        "--calib-n",
        "2",
        "--calib-steps",
        "1",
        "--cfg",
        "3",
        "--text-encoder-bits",
        "8",
        "--out",
        f,
    ]);
    assert!(out.contains("× smaller"), "{out}");
    let ins = ok(&["inspect", f, "--json"]);
    let info: serde_json::Value = serde_json::from_str(&ins).unwrap();
    assert_eq!(info["info"]["class_name"], "UNet2DConditionModel");
    assert_eq!(
        info["component_bits"],
        serde_json::json!({"text_encoder": 8, "vae": null})
    );
    let te = info["component_params"]["text_encoder"].as_u64().unwrap();
    assert!(te > 0 && info["component_params"]["vae"].as_u64().unwrap() > 0);
    // the file alone generates from prompts, fake-quant and on the integer path
    for extra in [&[][..], &["--integer"][..]] {
        let mut args = vec![
            "sample", "--model", f, "--prompt", "a coat", "--n", "1", "--out", png,
        ];
        args.extend_from_slice(extra);
        let s = ok(&args);
        assert!(
            s.contains("1 images for 1 prompt(s)") && s.contains("3 ddim steps"),
            "{s}"
        );
    }
    fails(
        &[
            "sample",
            "--model",
            f,
            "--prompt",
            "a coat",
            "--sampler",
            "pndm",
            "--out",
            png,
        ],
        "--sampler pndm",
    );
    // scored against the FP pipeline from the same noise and prompts (images too small
    // for the Fashion-MNIST classifier: fidelity, BitOPs and bytes)
    let grid = tmp.path().join("t2i-grid.png");
    let e = ok(&[
        "eval",
        "--model",
        f,
        "--fp",
        pipe,
        "--samples",
        "2",
        "--cfg",
        "3",
        "--grid",
        grid.to_str().unwrap(),
    ]);
    assert!(std::fs::metadata(&grid).unwrap().len() > 100);
    let row: serde_json::Value = serde_json::from_str(e.lines().last().unwrap()).unwrap();
    assert!(row["psnr_fp"].as_f64().unwrap() > 10.0, "{row}");
    assert!(row["fd_test"].is_null(), "{row}");
    assert!(row["gbitops_per_image"].as_f64().unwrap() > 0.0, "{row}");
    assert_eq!(row["steps"], 3);
    // with prompts of its own, cycled over the samples
    let e = ok(&[
        "eval",
        "--model",
        f,
        "--fp",
        pipe,
        "--samples",
        "2",
        "--prompt",
        "a coat",
    ]);
    let own: serde_json::Value = serde_json::from_str(e.lines().last().unwrap()).unwrap();
    assert_eq!(own["prompts"], serde_json::json!(["a coat"]));
    assert!(own["psnr_fp"].as_f64().unwrap() > 10.0, "{own}");
    fails(
        &[
            "eval",
            "--model",
            "assets/models/unet-fmnist",
            "--prompt",
            "x",
        ],
        "not a text-to-image pipeline",
    );
    fails(
        &["quantize", "--model", pipe, "--out", f],
        "calibration prompts",
    );
    fails(
        &[
            "quantize",
            "--model",
            pipe,
            "--prompt",
            "a bag",
            "--vae-bits",
            "9",
            "--out",
            f,
        ],
        "9-bit",
    );
    // TMPQ on the pipeline's UNet (prompted fitness samples), applied by quantize
    let searched = tmp.path().join("t2i-search.json");
    let sc = searched.to_str().unwrap();
    let out = ok(&[
        "search",
        "--model",
        pipe,
        "--prompt",
        "a bag",
        "--steps",
        "2",
        "--bits",
        "8,4",
        "--budget-bits",
        "8",
        "--population",
        "2",
        "--epochs",
        "1",
        "--fitness-samples",
        "2",
        "--reference-steps",
        "4",
        "--calib-n",
        "2",
        "--cfg",
        "3",
        "--out",
        sc,
    ]);
    assert!(out.contains("tmpq: 2 timesteps"), "{out}");
    ok(&[
        "quantize",
        "--model",
        pipe,
        "--config",
        sc,
        "--prompt",
        "a bag",
        "--calib-n",
        "2",
        "--calib-steps",
        "1",
        "--out",
        f,
    ]);
    // a pipeline's own calibration_prompts.txt is the default list
    let own = tmp.path().join("own-prompts");
    copy_dir(Path::new(pipe), &own);
    std::fs::write(own.join("calibration_prompts.txt"), "a bag\n").unwrap();
    ok(&[
        "quantize",
        "--model",
        own.to_str().unwrap(),
        "--steps",
        "2",
        "--calib-n",
        "1",
        "--calib-steps",
        "1",
        "--out",
        f,
    ]);
    // BinaryDM trains on Fashion-MNIST encoded by the pipeline's VAE: this one takes 16×16
    fails(
        &[
            "quantize",
            "--model",
            pipe,
            "--prompt",
            "x",
            "--method",
            "binarydm",
            "--preset",
            "W1A4",
            "--steps",
            "2",
            "--calib-n",
            "1",
            "--calib-steps",
            "1",
            "--out",
            f,
        ],
        "the VAE takes 1×16×16",
    );
    fails(
        &[
            "quantize",
            "--model",
            "assets/models/unet-fmnist",
            "--prompt",
            "x",
            "--out",
            f,
        ],
        "not a text-to-image pipeline",
    );
    let unet = root().join("assets/models/unet-fmnist");
    fails(
        &[
            "sample",
            "--model",
            unet.to_str().unwrap(),
            "--prompt",
            "x",
            "--out",
            png,
        ],
        "model_index.json",
    );
}

#[test]
fn bad_input_is_one_line_and_nonzero() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let unet = "assets/models/unet-fmnist";
    let out = t.join("x.dmq.safetensors");
    let o = out.to_str().unwrap();
    fails(
        &["quantize", "--model", "/no/such/dir", "--out", o],
        "no such file",
    );
    fails(
        &["quantize", "--model", unet, "--preset", "W99A3", "--out", o],
        "W99A3",
    );
    fails(
        &["quantize", "--model", unet, "--method", "magic", "--out", o],
        "magic",
    );
    fails(
        &["quantize", "--model", unet, "--steps", "0", "--out", o],
        "--steps",
    );
    fails(
        &["quantize", "--model", unet, "--bogus", "--out", o],
        "--bogus",
    );
    fails(&["sample", "--model", unet, "--out", "grid.jpg"], ".png");
    fails(
        &[
            "sample",
            "--model",
            unet,
            "--out",
            t.join("a.png").to_str().unwrap(),
            "--integer",
        ],
        "--integer",
    );
    // a directory without a config, a file that is not safetensors, a truncated one
    let empty = t.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fails(
        &[
            "sample",
            "--model",
            empty.to_str().unwrap(),
            "--out",
            t.join("b.png").to_str().unwrap(),
        ],
        "config.json",
    );
    let junk = t.join("junk.dmq.safetensors");
    std::fs::write(&junk, b"not a model").unwrap();
    fails(&["inspect", junk.to_str().unwrap()], "junk.dmq.safetensors");
    fails(
        &[
            "sample",
            "--model",
            junk.to_str().unwrap(),
            "--out",
            t.join("c.png").to_str().unwrap(),
        ],
        "junk.dmq.safetensors",
    );
    // a plain safetensors file that is no dmq model
    let plain = root().join("assets/models/unet-fmnist/diffusion_pytorch_model.safetensors");
    fails(&["inspect", plain.to_str().unwrap()], "dmq.format");
    // nothing was written into the source tree
    assert!(!root().join("grid.jpg").exists());
}
