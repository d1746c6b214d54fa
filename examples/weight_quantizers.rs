//! Weight quantizers: quantize the weights of a real layer stack with every dmq quantizer.
//!
//! Trains a small MLP classifier (784 → 256 → 128 → 10) on Fashion-MNIST for a few hundred
//! steps, then quantizes its three weight matrices at 8/4/2/1 bits with each weight quantizer
//! of `dmq-quant` (uniform max, uniform MSE, LSQ init, AdaRound with a short layer-wise
//! reconstruction, the binarizer and the two-basis EBB binarizer), exports them as packed
//! integers and prints, per format: relative weight error, packed size, compression and the
//! test accuracy of the network running with the dequantized weights.
//!
//! ```text
//! cargo run --release --example weight_quantizers [-- --backend flex|ndarray|wgpu --steps 2000]
//! ```
//! Needs the Debian package `dataset-fashion-mnist` (or `--data DIR`).

use std::time::Instant;

use burn::module::{Module, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor};
use dmq::eval::data::fashion_mnist::{FashionMnist, FashionMnistSplit, Padding};
use dmq::quant::{
    AdaRoundMode, AdaRoundQuantizer, BetaSchedule, BinaryQuantizer, LsqQuantizer,
    MultiBasisBinarizer, QuantSpec, QuantizedFile, QuantizedTensor, Quantizer, RangeInit,
    UniformQuantizer, WeightQuantizer, init_params,
};

#[derive(Module, Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
}

impl Mlp {
    fn new(device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(784, 256).init(device),
            fc2: LinearConfig::new(256, 128).init(device),
            fc3: LinearConfig::new(128, 10).init(device),
        }
    }

    fn layers(&self) -> [&Linear; 3] {
        [&self.fc1, &self.fc2, &self.fc3]
    }

    /// Logits and the input of every layer.
    fn forward_taps(&self, x: Tensor<2>) -> (Tensor<2>, [Tensor<2>; 3]) {
        let h1 = relu(self.fc1.forward(x.clone()));
        let h2 = relu(self.fc2.forward(h1.clone()));
        (self.fc3.forward(h2.clone()), [x, h1, h2])
    }

    fn with_weights(&self, weights: &[Tensor<2>]) -> Self {
        let mut m = self.clone();
        for (layer, w) in [&mut m.fc1, &mut m.fc2, &mut m.fc3]
            .into_iter()
            .zip(weights)
        {
            layer.weight = Param::from_tensor(w.clone());
        }
        m
    }
}

struct Args {
    backend: String,
    steps: usize,
    data: Option<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        backend: "flex".into(),
        steps: 2000,
        data: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--backend" => a.backend = value,
            "--steps" => a.steps = value.parse().unwrap_or(a.steps),
            "--data" => a.data = Some(value),
            other => {
                eprintln!(
                    "unknown argument {other}; see the doc comment of examples/weight_quantizers.rs"
                );
                std::process::exit(2);
            }
        }
        i += 2;
    }
    a
}

fn flat_batch(split: &FashionMnistSplit, start: usize, n: usize, device: &Device) -> Tensor<2> {
    let x = split
        .range_tensor(start, n, Padding::None, device)
        .expect("batch in range");
    x.reshape([n, 784])
}

fn accuracy(model: &Mlp, test: &FashionMnistSplit, device: &Device) -> f64 {
    let mut correct = 0i64;
    let bs = 1000;
    for start in (0..test.len()).step_by(bs) {
        let n = bs.min(test.len() - start);
        let (logits, _) = model.forward_taps(flat_batch(test, start, n, device));
        let idx: Vec<usize> = (start..start + n).collect();
        let labels = test.labels_tensor(&idx, device).expect("labels");
        let pred: Tensor<1, Int> = logits.argmax(1).reshape([n]);
        correct += pred.equal(labels).int().sum().into_scalar::<i64>();
    }
    correct as f64 / test.len() as f64
}

fn train(data: &FashionMnist, steps: usize, device: &Device) -> Mlp {
    let ad = device.clone().autodiff();
    let mut model = Mlp::new(&ad);
    let mut optim = dmq::models::train::adamw(1e-4).init();
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    let bs = 128;
    let t0 = Instant::now();
    for step in 0..steps {
        let start = (step * bs) % (data.train.len() - bs);
        let idx: Vec<usize> = (start..start + bs).collect();
        let x = flat_batch(&data.train, start, bs, &ad);
        let y = data.train.labels_tensor(&idx, &ad).expect("labels");
        let (logits, _) = model.forward_taps(x);
        let loss = loss_fn.forward(logits, y);
        if step % 100 == 0 || step + 1 == steps {
            let l = loss.clone().into_scalar::<f64>();
            eprintln!(
                "  train step {step:>4}/{steps}  loss {l:.4}  {:.1}s",
                t0.elapsed().as_secs_f64()
            );
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
    }
    model.valid().to_device(device)
}

/// One row of the report.
struct Row {
    format: String,
    rel_err: f64,
    bytes: usize,
    acc: f64,
}

/// PyTorch layout `[out, in]` (burn stores `[in, out]`): per-output-channel is axis 0.
fn torch_layout(l: &Linear) -> Tensor<2> {
    l.weight.val().transpose()
}

fn rel_error(ws: &[Tensor<2>], w_hat: &[Tensor<2>]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (w, h) in ws.iter().zip(w_hat) {
        num += (w.clone() - h.clone())
            .powi_scalar(2)
            .sum()
            .into_scalar::<f64>();
        den += w.clone().powi_scalar(2).sum().into_scalar::<f64>();
    }
    (num / den).sqrt()
}

/// Fake-quantized weights and their packed exports (one bitplane set per layer).
fn apply(
    qs: impl Iterator<Item = WeightQuantizer>,
    ws: &[Tensor<2>],
) -> (Vec<Tensor<2>>, Vec<Vec<QuantizedTensor>>) {
    qs.zip(ws)
        .map(|(q, w)| {
            let w_hat = q.fake_quant(w.clone(), 0).expect("fake quant");
            let planes = match &q {
                WeightQuantizer::MultiBasis(m) => m.export_bases(w.clone()),
                q => q.export(w.clone(), 0).map(|e| vec![e]),
            };
            (w_hat, planes.expect("export"))
        })
        .unzip()
}

/// AdaRound on one layer: minimise ‖X·Ŵᵀ − X·Wᵀ‖² + λ·Σ(1 − |2h(V) − 1|^β) over V.
fn adaround_layer(w: Tensor<2>, x: Tensor<2>, spec: QuantSpec, iters: usize) -> AdaRoundQuantizer {
    let device = w.device();
    let ad = device.clone().autodiff();
    let data: Vec<f32> = w.clone().into_data().try_to_vec::<f32>().expect("f32");
    let params = init_params(&data, &w.dims(), &spec, &RangeInit::mse()).expect("init");
    // Fresh leaves on the autodiff device (to_device keeps a tensor's autodiff context).
    let w = Tensor::<2>::from_data(w.into_data(), &ad);
    let x = Tensor::<2>::from_data(x.into_data(), &ad);
    let target = x.clone().matmul(w.clone().transpose());
    let mut q = AdaRoundQuantizer::init(w.clone(), &params).expect("adaround init");
    let mut optim = dmq::models::train::adam().init();
    let schedule = BetaSchedule::reference(iters);
    for it in 0..iters {
        let w_hat = q.fake_quant(w.clone(), 0).expect("fake quant");
        let out = x.clone().matmul(w_hat.transpose());
        let rec = (out - target.clone()).powi_scalar(2).sum_dim(1).mean();
        let loss = match schedule.beta(it) {
            Some(beta) => rec + q.round_regularizer(beta) * 0.01,
            None => rec,
        };
        let grads = GradientsParams::from_grads(loss.backward(), &q);
        q = optim.step(1e-2, q, grads);
    }
    q.valid().to_device(&device).with_mode(AdaRoundMode::Hard)
}

fn main() {
    let args = parse_args();
    let device = dmq::quant::device::by_name(&args.backend).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let data = match &args.data {
        Some(dir) => FashionMnist::load_from(dir),
        None => FashionMnist::load(),
    }
    .unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    eprintln!(
        "backend {}: training a 784-256-128-10 MLP for {} steps",
        args.backend, args.steps
    );
    let model = train(&data, args.steps, &device);
    let fp_acc = accuracy(&model, &data.test, &device);
    let ws: Vec<Tensor<2>> = model.layers().iter().map(|l| torch_layout(l)).collect();
    let biases: Vec<(Vec<usize>, Vec<f32>)> = model
        .layers()
        .iter()
        .map(|l| {
            let b = l.bias.as_ref().expect("bias").val();
            (
                b.dims().to_vec(),
                b.into_data().try_to_vec::<f32>().expect("f32"),
            )
        })
        .collect();
    let fp_bytes: usize = ws
        .iter()
        .map(|w| 4 * w.dims().iter().product::<usize>())
        .sum::<usize>()
        + biases.iter().map(|(_, b)| 4 * b.len()).sum::<usize>();
    // Calibration inputs for AdaRound: each layer's FP input on 512 training images.
    let (_, taps) = model.forward_taps(flat_batch(&data.train, 0, 512, &device));

    let mut rows = vec![Row {
        format: "fp32".into(),
        rel_err: 0.0,
        bytes: fp_bytes,
        acc: fp_acc,
    }];
    let mut evaluate =
        |format: String, w_hat: Vec<Tensor<2>>, exports: Vec<Vec<QuantizedTensor>>| {
            let mut file = QuantizedFile::default();
            for (i, planes) in exports.into_iter().enumerate() {
                for (j, q) in planes.into_iter().enumerate() {
                    file.quantized
                        .insert(format!("fc{}.weight.basis{j}", i + 1), q);
                }
                file.float
                    .insert(format!("fc{}.bias", i + 1), biases[i].clone());
            }
            let bytes = file.to_bytes().expect("serialise").len();
            let qmodel = model.with_weights(
                &w_hat
                    .iter()
                    .map(|w| w.clone().transpose())
                    .collect::<Vec<_>>(),
            );
            let row = Row {
                rel_err: rel_error(&ws, &w_hat),
                acc: accuracy(&qmodel, &data.test, &device),
                bytes,
                format,
            };
            eprintln!("  {:<28} acc {:.4}", row.format, row.acc);
            rows.push(row);
        };

    for bits in [8u32, 4, 2, 1] {
        let spec = QuantSpec::int(bits).expect("bits").per_channel(0);
        for (name, method) in [
            ("uniform/max", RangeInit::Max),
            ("uniform/mse", RangeInit::mse()),
        ] {
            let qs = ws.iter().map(|w| {
                WeightQuantizer::Uniform(
                    UniformQuantizer::init(spec, w.clone(), &method).expect("init"),
                )
            });
            let (w_hat, ex) = apply(qs, &ws);
            evaluate(format!("W{bits} {name}"), w_hat, ex);
        }
        let qs = ws.iter().map(|w| {
            WeightQuantizer::Lsq(
                LsqQuantizer::init(spec, w.clone(), &RangeInit::Lsq, false, false).expect("init"),
            )
        });
        let (w_hat, ex) = apply(qs, &ws);
        evaluate(format!("W{bits} lsq-init"), w_hat, ex);
        let qs = ws.iter().zip(&taps).map(|(w, x)| {
            WeightQuantizer::AdaRound(adaround_layer(w.clone(), x.clone(), spec, 300))
        });
        let (w_hat, ex) = apply(qs, &ws);
        evaluate(format!("W{bits} adaround (300 it)"), w_hat, ex);
    }
    let qs = ws
        .iter()
        .map(|w| WeightQuantizer::Binary(BinaryQuantizer::init(w.clone()).expect("init")));
    let (w_hat, ex) = apply(qs, &ws);
    evaluate("W1 binary σ·sign".into(), w_hat, ex);
    let qs = ws
        .iter()
        .map(|w| WeightQuantizer::MultiBasis(MultiBasisBinarizer::init(w.clone()).expect("init")));
    let (w_hat, ex) = apply(qs, &ws);
    evaluate("W1x2 EBB (2 bitplanes)".into(), w_hat, ex);

    println!(
        "\nWeights of a 784-256-128-10 MLP trained on Fashion-MNIST ({} steps, backend {})",
        args.steps, args.backend
    );
    println!("| format | rel. weight error | file bytes | compression | test acc |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.4} | {} | {:.1}x | {:.2}% |",
            r.format,
            r.rel_err,
            r.bytes,
            fp_bytes as f64 / r.bytes as f64,
            100.0 * r.acc
        );
    }
}
