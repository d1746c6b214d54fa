//! Trains the Fashion-MNIST metric classifier (`assets/models/fmnist-classifier`): the CNN
//! whose penultimate features define dmq's Fréchet distance and whose predictions give the
//! class accuracy of conditional samples.
//!
//! ```text
//! cargo run --release --example train_classifier [-- --steps 3000 --out assets/models/fmnist-classifier]
//! ```

use std::collections::HashMap;
use std::path::PathBuf;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor};
use dmq::eval::classifier::FmnistClassifier;
use dmq::eval::cli::Flags;
use dmq::eval::data::fashion_mnist::{FashionMnist, FashionMnistSplit, Padding};
use dmq::eval::progress::Progress;
use dmq::models::noise::NoiseRng;
use dmq::models::train::LrSchedule;

fn accuracy(model: &FmnistClassifier, split: &FashionMnistSplit, device: &Device) -> f64 {
    let mut correct = 0i64;
    for start in (0..split.len()).step_by(500) {
        let n = 500.min(split.len() - start);
        let x = split
            .range_tensor(start, n, Padding::None, device)
            .expect("range");
        let idx: Vec<usize> = (start..start + n).collect();
        let y = split.labels_tensor(&idx, device).expect("labels");
        let pred: Tensor<1, Int> = model.predict(x).expect("shape");
        correct += pred.equal(y).int().sum().into_scalar::<i64>();
    }
    correct as f64 / split.len() as f64
}

fn main() {
    let (steps, out): (usize, PathBuf) = Flags::parse_env(|f| {
        Ok((
            f.get("steps", 3000)?,
            f.get("out", PathBuf::from("assets/models/fmnist-classifier"))?,
        ))
    });
    let data = FashionMnist::load().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let mut model = FmnistClassifier::new(&ad);
    let mut optim = dmq::models::train::adam().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    let lr = LrSchedule {
        peak: 1e-3,
        final_lr: 1e-5,
        warmup: 100,
        total: steps,
        cosine: true,
    };
    let mut bar = Progress::new("classifier", steps as u64, 0);
    let mut curve = Vec::new();
    let bs = 128;
    for step in 0..steps {
        let mut rng = NoiseRng::new(step as u64);
        let idx: Vec<usize> = (0..bs).map(|_| rng.below(data.train.len())).collect();
        let mut x = data
            .train
            .images_tensor(&idx, Padding::None, &ad)
            .expect("idx");
        // Horizontal flips (half the batch): clothing is left-right symmetric.
        if step % 2 == 1 {
            x = x.flip([3]);
        }
        let y = data.train.labels_tensor(&idx, &ad).expect("labels");
        let loss = loss_fn.forward(model.forward(x).expect("shape"), y);
        let l = loss.clone().into_scalar::<f64>();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(lr.at(step), model, grads);
        if step % 20 == 0 {
            curve.push((step as f64, l));
        }
        bar.inc(format!("loss {l:.4}"));
    }
    let wall = bar.finish();
    let model = model.valid();
    let test_acc = accuracy(&model, &data.test, &device);
    let train_acc = accuracy(&model, &data.train.take(10_000), &device);
    let mut meta = HashMap::new();
    meta.insert("test_accuracy".to_string(), format!("{test_acc:.4}"));
    meta.insert("steps".to_string(), steps.to_string());
    model.save(&out, meta).expect("save");
    dmq::eval::plot::line_chart_png(&out.join("loss.png"), "loss", "step", &[("loss", &curve)])
        .expect("png");
    let card = format!(
        "# fmnist-classifier\n\nThe metric network of dmq: its 128-d penultimate features define the Fréchet \
         distance (FD) of every results table, and its predictions give the class accuracy of conditional samples.\n\n\
         | | |\n|---|---|\n| architecture | conv3x3(1→32), conv3x3(32→32), maxpool, conv3x3(32→64), conv3x3(64→64), maxpool, linear(3136→128), linear(128→10); ReLU |\n\
         | parameters | {} |\n| training | Adam, lr 1e-3 cosine to 1e-5, batch 128, {steps} steps, horizontal flips on alternate batches |\n\
         | wall time | {wall:.0} s on 2 CPU cores (flex backend, release) |\n| train accuracy (first 10k) | {:.2}% |\n| **test accuracy (10k)** | **{:.2}%** |\n\n\
         Loss curve: `loss.png`. Command: `cargo run --release --example train_classifier -- --steps {steps}`\n",
        model.num_params(),
        100.0 * train_acc,
        100.0 * test_acc
    );
    dmq::quant::file::write_atomic(&out.join("README.md"), card.as_bytes()).expect("card");
    println!(
        "test accuracy {:.2}% ({steps} steps, {wall:.0} s); written to {}",
        100.0 * test_acc,
        out.display()
    );
}
