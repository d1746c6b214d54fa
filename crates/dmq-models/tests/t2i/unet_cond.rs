//! UNet2DConditionModel parity with diffusers (fixtures from
//! `scripts/fixtures/unet_cond_parity.py`: random-weight diffusers models saved with
//! `save_pretrained`, fixed inputs and diffusers' outputs), the layer inventory against the
//! checkpoint keys, `structure()` against the model, strict loading errors, refused config
//! options and input shape errors. Tensor tests run on every enabled backend through
//! `backend_tests!`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use dmq_models::layers::LayerKind;
use dmq_models::scheduler::{DdimConfig, DdimScheduler, Scheduler};
use dmq_models::structure::within;
use dmq_models::unet_cond::{UNet2DConditionConfig, UNet2DConditionModel};
use dmq_models::{
    Conditioning, Denoiser, ForwardCtx, InputCapture, LayerRecorder, ModelError, Operand,
    StageKind, StepContext, TapTensor, Taps,
};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

/// Max abs error allowed against diffusers (f32).
const TOL: f32 = 1e-4;

/// Every fixture directory.
const FIXTURES: [&str; 2] = ["conv", "linear"];

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join("unet_cond")
        .join(name)
}

/// A scratch directory unique to this process and tag (removed on drop).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p =
            std::env::temp_dir().join(format!("dmq-unet-cond-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Deserialize)]
struct Expected {
    sample_size: usize,
    param_count: usize,
    conv_linear_modules: usize,
}

fn expected(name: &str) -> Expected {
    let text = std::fs::read_to_string(fixture_dir(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

type Host = (Vec<f32>, Vec<usize>);

/// The fixture's inputs and diffusers outputs.
struct Io {
    x: Host,
    t: Vec<f32>,
    t_single: Vec<f32>,
    ehs: Host,
    out: Host,
    out_single: Vec<f32>,
}

fn read_io(name: &str) -> Io {
    let bytes = std::fs::read(fixture_dir(name).join("io.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |k: &str| {
        let v = st.tensor(k).unwrap();
        assert_eq!(v.dtype(), Dtype::F32, "{k}");
        let data = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect::<Vec<_>>();
        (data, v.shape().to_vec())
    };
    Io {
        x: f32s("x"),
        t: f32s("t").0,
        t_single: f32s("t_single").0,
        ehs: f32s("encoder_hidden_states"),
        out: f32s("out"),
        out_single: f32s("out_single").0,
    }
}

fn tensor4(v: &Host, device: &Device) -> Tensor<4> {
    let s = &v.1;
    Tensor::from_data(
        TensorData::new(v.0.clone(), [s[0], s[1], s[2], s[3]]),
        device,
    )
}

fn tensor3(v: &Host, device: &Device) -> Tensor<3> {
    let s = &v.1;
    Tensor::from_data(TensorData::new(v.0.clone(), [s[0], s[1], s[2]]), device)
}

fn tensor1(v: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
}

fn values(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

fn max_abs_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

fn ctx() -> ForwardCtx<'static> {
    ForwardCtx::new(StepContext::single(0.0))
}

fn load(name: &str, device: &Device) -> UNet2DConditionModel {
    UNet2DConditionModel::load(&fixture_dir(name), device).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The fixture's inputs as tensors: x, t, encoder_hidden_states.
fn inputs(io: &Io, device: &Device) -> (Tensor<4>, Tensor<1>, Tensor<3>) {
    (
        tensor4(&io.x, device),
        tensor1(&io.t, device),
        tensor3(&io.ehs, device),
    )
}

/// The stems (`<path>` of `<path>.weight`) of the checkpoint's 2-D and 4-D weights: the
/// diffusers `nn.Linear` and `nn.Conv2d` modules.
fn weight_stems(name: &str) -> BTreeSet<String> {
    let bytes =
        std::fs::read(fixture_dir(name).join("diffusion_pytorch_model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .filter(|(_, v)| matches!(v.shape().len(), 2 | 4))
        .filter_map(|(k, _)| k.strip_suffix(".weight").map(String::from))
        .collect()
}

// ---------------------------------------------------------------------------------
// Per-backend test bodies

/// Loads every fixture and compares the output with diffusers', for per-sample timesteps and
/// for one timestep broadcast over the batch.
fn parity(device: &Device) {
    for name in FIXTURES {
        let model = load(name, device);
        let io = read_io(name);
        let (x, t, ehs) = inputs(&io, device);
        let out = model.forward(x.clone(), t, ehs.clone(), &ctx()).unwrap();
        assert_eq!(out.dims().to_vec(), io.out.1, "{name}: output shape");
        let err = max_abs_err(&values(out), &io.out.0);
        let out1 = model
            .forward(x, tensor1(&io.t_single, device), ehs, &ctx())
            .unwrap();
        let err1 = max_abs_err(&values(out1), &io.out_single);
        eprintln!(
            "unet_cond parity {name}: max abs err {err:.3e} (per-sample t), {err1:.3e} (broadcast t)"
        );
        assert!(err <= TOL, "{name}: max abs err {err} > {TOL}");
        assert!(
            err1 <= TOL,
            "{name}: broadcast-t max abs err {err1} > {TOL}"
        );
    }
}

/// The conditioning matters: other encoder states give another output (so the cross
/// attention is not silently bypassed).
fn conditioning_matters(device: &Device) {
    let model = load("conv", device);
    let io = read_io("conv");
    let (x, t, ehs) = inputs(&io, device);
    let a = values(
        model
            .forward(x.clone(), t.clone(), ehs.clone(), &ctx())
            .unwrap(),
    );
    let b = values(model.forward(x, t, ehs * 0.5, &ctx()).unwrap());
    assert!(max_abs_err(&a, &b) > 1e-3);
}

/// The quantizable layers are exactly the checkpoint's linear/conv weights (plus the
/// attention products), `for_each_layer(_mut)` visits them in forward (call) order, the
/// parameter count matches diffusers' and the config's own count.
fn inventory(device: &Device) {
    for name in FIXTURES {
        let mut model = load(name, device);
        let exp = expected(name);
        assert_eq!(model.info().sample_size, exp.sample_size);
        assert_eq!(model.info().num_classes, None);
        assert_eq!(model.num_params(), exp.param_count, "{name}: parameters");
        assert_eq!(
            model.config().param_count(),
            exp.param_count as u64,
            "{name}"
        );

        let mut visited = Vec::new();
        model.for_each_layer(&mut |l| visited.push((l.name().to_string(), l.kind())));
        let ours: BTreeSet<String> = visited
            .iter()
            .filter(|(_, k)| *k != LayerKind::Matmul)
            .map(|(n, _)| n.clone())
            .collect();
        assert_eq!(ours.len(), exp.conv_linear_modules, "{name}");
        assert_eq!(
            ours,
            weight_stems(name),
            "{name}: layer names vs checkpoint keys"
        );
        // matmuls come in qk/sv pairs, one per attention with its projections
        for (n, _) in visited.iter().filter(|(_, k)| *k == LayerKind::Matmul) {
            let (attn, op) = n.rsplit_once('.').unwrap();
            assert!(op == "qk" || op == "sv", "{n}");
            assert!(ours.contains(&format!("{attn}.to_q")), "{n}");
        }

        // visit order == call order
        let rec = LayerRecorder::default();
        let io = read_io(name);
        let (x, t, ehs) = inputs(&io, device);
        model
            .forward(x, t, ehs, &ctx().with_recorder(&rec))
            .unwrap();
        let called: Vec<_> = rec
            .calls()
            .iter()
            .map(|c| (c.name.clone(), c.kind))
            .collect();
        assert_eq!(visited, called, "{name}: for_each_layer order");
        let mut visited_mut = Vec::new();
        model.for_each_layer_mut(&mut |l| visited_mut.push((l.name().to_string(), l.kind())));
        assert_eq!(visited_mut, called, "{name}: for_each_layer_mut order");
    }
    // MACs of the cross-attention products: conv's down_blocks.0 works at 8x8 = 64 pixels,
    // 4 channels in 2 heads of 2, against L = 5 tokens, batch 2: 2·2·64·2·5 each.
    let model = load("conv", device);
    let io = read_io("conv");
    let (x, t, ehs) = inputs(&io, device);
    let rec = LayerRecorder::default();
    model
        .forward(x, t, ehs, &ctx().with_recorder(&rec))
        .unwrap();
    let calls = rec.calls();
    for op in ["qk", "sv"] {
        let path = format!("down_blocks.0.attentions.0.transformer_blocks.0.attn2.{op}");
        let c = calls.iter().find(|c| c.name == path).unwrap();
        assert_eq!(c.macs, 2 * 2 * 64 * 2 * 5, "{op}");
        let path = format!("down_blocks.0.attentions.0.transformer_blocks.0.attn1.{op}");
        let c = calls.iter().find(|c| c.name == path).unwrap();
        assert_eq!(c.macs, 2 * 2 * 64 * 2 * 64, "{op}");
    }
    let k = calls
        .iter()
        .find(|c| c.name == "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k")
        .unwrap();
    assert_eq!(k.weight_shape, vec![4, 32]);
    let p = calls
        .iter()
        .find(|c| c.name == "down_blocks.0.attentions.0.proj_in")
        .unwrap();
    assert_eq!(
        (p.kind, p.weight_shape.clone()),
        (LayerKind::Conv2d, vec![4, 4, 1, 1])
    );
}

/// `structure()` names only layers of the model, its units and stages are all tapped by
/// one forward pass, stage resolutions and skip-concat channel splits agree with the shapes
/// the forward pass sees, and every layer in a stage lies in a unit of that stage.
fn structure(device: &Device) {
    for name in FIXTURES {
        let model = load(name, device);
        let s = model.structure();
        let mut layers = BTreeSet::new();
        model.for_each_layer(&mut |l| {
            layers.insert(l.name().to_string());
        });
        for n in s.named_layers() {
            assert!(
                layers.contains(n),
                "{name}: structure names `{n}`, not a layer"
            );
        }
        let cfg = model.config();
        let levels = cfg.levels();
        let kinds: Vec<StageKind> = s.stages.iter().map(|st| st.kind).collect();
        let mut want = vec![StageKind::Down; levels];
        want.push(StageKind::Mid);
        want.extend(vec![StageKind::Up; levels]);
        assert_eq!(kinds, want, "{name}");
        assert_eq!(
            s.time_mlp,
            ["time_embedding.linear_1", "time_embedding.linear_2"]
        );
        let resnets = layers.iter().filter(|n| n.ends_with(".conv1")).count();
        assert_eq!(s.time_projections.len(), resnets, "{name}");
        assert_eq!(s.skip_concats.len(), levels * (cfg.layers() + 1), "{name}");
        // one self- and one cross-attention per transformer block, each with a feed-forward
        let blocks = s.attention.len() / 2;
        assert!(blocks > 0);
        assert_eq!(s.attention.iter().filter(|a| a.cross).count(), blocks);
        for pair in s.attention.chunks(2) {
            assert!(
                pair[0].path.ends_with(".attn1") && !pair[0].cross,
                "{:?}",
                pair[0]
            );
            assert!(
                pair[1].path.ends_with(".attn2") && pair[1].cross,
                "{:?}",
                pair[1]
            );
        }
        assert_eq!(s.feed_forward.len(), 2 * blocks);
        assert_eq!(s.self_attention_qkv().count(), 3 * blocks);

        // units and stages are tapped by one forward pass
        let io = read_io(name);
        let (x, t, ehs) = inputs(&io, device);
        let names: Vec<String> = s
            .units
            .iter()
            .chain(s.stages.iter().map(|st| &st.path))
            .cloned()
            .collect();
        let taps = Taps::new(names.clone());
        let cap = InputCapture::all();
        model
            .forward(x, t, ehs, &ctx().with_taps(&taps).with_inputs(&cap))
            .unwrap();
        let got = taps.take();
        for n in &names {
            assert!(got.contains_key(n), "{name}: {n} is not tapped");
        }
        let cap = cap.take();
        let input_of = |n: &str| {
            cap.get(&(n.to_string(), Operand::Input))
                .map(|v| v[0].shape.clone())
        };
        for sc in &s.skip_concats {
            for l in &sc.layers {
                assert_eq!(
                    input_of(l).unwrap()[1],
                    sc.main_channels + sc.skip_channels,
                    "{name}: {l}"
                );
            }
        }
        // stage resolution = the smallest map a conv of the stage reads
        for st in &s.stages {
            let r = layers
                .iter()
                .filter(|n| s.stage_of(n).map(|x| &x.path) == Some(&st.path))
                .filter_map(|n| {
                    let sh = input_of(n)?;
                    (sh.len() == 4).then(|| sh[2])
                })
                .min()
                .unwrap();
            assert_eq!(st.resolution, r, "{name}: {}", st.path);
        }
        for n in &layers {
            if let Some(st) = s.stage_of(n) {
                let u = s.unit_of(n);
                assert_ne!(&u, n, "{name}: {n} has no unit");
                assert!(within(&u, &st.path), "{name}: {n} in {u}");
            }
        }
        let q = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q";
        assert_eq!(
            s.unit_of(q),
            "down_blocks.0.attentions.0.transformer_blocks.0"
        );
        assert_eq!(
            s.unit_of("down_blocks.0.attentions.0.proj_in"),
            "down_blocks.0.attentions.0"
        );
        assert!(s.on_time_path("down_blocks.0.resnets.0.time_emb_proj"));
        assert!(!s.on_time_path(q));
        assert_eq!(s.unit_of("conv_in"), "conv_in");
    }
}

/// Block, transformer and transformer-block outputs can be tapped under their paths.
fn taps(device: &Device) {
    let model = load("conv", device);
    let io = read_io("conv");
    let (x, t, ehs) = inputs(&io, device);
    let names = [
        "down_blocks.0",
        "down_blocks.1.attentions.0",
        "down_blocks.1.attentions.0.transformer_blocks.0",
        "mid_block",
        "mid_block.attentions.0",
        "up_blocks.0.upsamplers.0",
        "up_blocks.2",
    ];
    let taps = Taps::new(names);
    model.forward(x, t, ehs, &ctx().with_taps(&taps)).unwrap();
    let got = taps.take();
    assert_eq!(got.len(), names.len());
    let dims = |n: &str| match &got[n] {
        TapTensor::R4(t) => t.dims().to_vec(),
        TapTensor::R3(t) => t.dims().to_vec(),
        other => panic!("{n}: {other:?}"),
    };
    assert_eq!(dims("down_blocks.0"), [2, 4, 4, 4]);
    assert_eq!(dims("down_blocks.1.attentions.0"), [2, 8, 4, 4]);
    // 8 channels in 2 heads of 4 = width 8, 4x4 = 16 tokens
    assert_eq!(
        dims("down_blocks.1.attentions.0.transformer_blocks.0"),
        [2, 16, 8]
    );
    assert_eq!(dims("mid_block"), [2, 8, 2, 2]);
    assert_eq!(dims("mid_block.attentions.0"), [2, 8, 2, 2]);
    assert_eq!(dims("up_blocks.0.upsamplers.0"), [2, 8, 4, 4]);
    assert_eq!(dims("up_blocks.2"), [2, 4, 8, 8]);
}

/// Input errors: wrong encoder width, batch or length; wrong image shape; wrong timesteps.
fn input_errors(device: &Device) {
    let model = load("conv", device);
    let x = || Tensor::<4>::zeros([2, 4, 8, 8], device);
    let t = || Tensor::<1>::from_floats([1.0, 2.0], device);
    let ehs = |b, l, d| Tensor::<3>::zeros([b, l, d], device);
    let shape_err = |r: Result<Tensor<4>, ModelError>, what: &str| match r {
        Err(ModelError::Shape { context, .. }) => {
            assert!(context.contains(what), "'{context}' should name {what}")
        }
        other => panic!("expected a shape error naming {what}, got {other:?}"),
    };
    model.forward(x(), t(), ehs(2, 5, 32), &ctx()).unwrap();
    // wrong encoder_hidden_states width (the linear fixture's 24), batch, empty sequence
    shape_err(
        model.forward(x(), t(), ehs(2, 5, 24), &ctx()),
        "encoder_hidden_states",
    );
    shape_err(
        model.forward(x(), t(), ehs(1, 5, 32), &ctx()),
        "encoder_hidden_states",
    );
    shape_err(
        model.forward(x(), t(), ehs(2, 0, 32), &ctx()),
        "encoder_hidden_states",
    );
    // 3 levels: H must be a multiple of 4; channels must match
    shape_err(
        model.forward(
            Tensor::zeros([2, 4, 6, 6], device),
            t(),
            ehs(2, 5, 32),
            &ctx(),
        ),
        "input",
    );
    shape_err(
        model.forward(
            Tensor::zeros([2, 3, 8, 8], device),
            t(),
            ehs(2, 5, 32),
            &ctx(),
        ),
        "input",
    );
    shape_err(
        model.forward(
            Tensor::zeros([0, 4, 8, 8], device),
            Tensor::from_floats([1.0], device),
            ehs(0, 5, 32),
            &ctx(),
        ),
        "input",
    );
    shape_err(
        model.forward(
            x(),
            Tensor::from_floats([1.0, 2.0, 3.0], device),
            ehs(2, 5, 32),
            &ctx(),
        ),
        "timesteps",
    );
    // other sizes than sample_size work (multiples of 4), with any sequence length
    let out = model
        .forward(
            Tensor::zeros([1, 4, 12, 4], device),
            Tensor::from_floats([5.0], device),
            ehs(1, 3, 32),
            &ctx(),
        )
        .unwrap();
    assert_eq!(out.dims(), [1, 4, 12, 4]);
}

/// A safetensors entry: key, dtype, shape, bytes.
type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// A copy of the `conv` fixture in a scratch directory, its tensors passed through `edit`.
fn conv_variant(tag: &str, edit: &dyn Fn(&mut Vec<RawTensor>)) -> TempDir {
    let src = fixture_dir("conv");
    let bytes = std::fs::read(src.join("diffusion_pytorch_model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<RawTensor> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<_> = tensors
        .iter()
        .map(|(k, d, s, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let out = safetensors::serialize(views, None).unwrap();
    let dir = TempDir::new(tag);
    std::fs::copy(src.join("config.json"), dir.0.join("config.json")).unwrap();
    std::fs::write(dir.0.join("diffusion_pytorch_model.safetensors"), out).unwrap();
    dir
}

fn assert_checkpoint_err(r: Result<UNet2DConditionModel, ModelError>, key: &str) {
    match r {
        Err(ModelError::Checkpoint { reason, .. }) => {
            assert!(reason.contains(key), "'{reason}' should name {key}")
        }
        other => panic!("expected a Checkpoint error naming {key}, got {other:?}"),
    }
}

/// A checkpoint with a missing or an extra tensor, or a wrong shape, is a Checkpoint error
/// naming the key.
fn checkpoint_errors(device: &Device) {
    let missing = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight";
    let dir = conv_variant("missing", &|t| t.retain(|(k, ..)| k != missing));
    assert_checkpoint_err(UNet2DConditionModel::load(&dir.0, device), missing);
    // a bias the model does not have (diffusers' to_q has none)
    let extra = "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.bias";
    let dir = conv_variant("extra", &|t| {
        t.push((extra.into(), Dtype::F32, vec![8], vec![0u8; 8 * 4]))
    });
    assert_checkpoint_err(UNet2DConditionModel::load(&dir.0, device), extra);
    // a linear proj_in where the config says 1x1 conv
    let proj = "up_blocks.1.attentions.0.proj_in.weight";
    let dir = conv_variant("shape", &|t| {
        for e in t.iter_mut().filter(|e| e.0 == proj) {
            e.2.truncate(2);
        }
    });
    assert_checkpoint_err(UNet2DConditionModel::load(&dir.0, device), proj);
}

/// save_pretrained → load reproduces the config and the outputs; a random-init model of a
/// config runs and round-trips too.
fn round_trip(device: &Device) {
    let model = load("linear", device);
    let tmp = TempDir::new("rt-linear");
    model.save_pretrained(&tmp.0).unwrap();
    let back = UNet2DConditionModel::load(&tmp.0, device).unwrap();
    assert_eq!(back.config(), model.config());
    let io = read_io("linear");
    let run = |m: &UNet2DConditionModel| {
        let (x, t, ehs) = inputs(&io, device);
        values(m.forward(x, t, ehs, &ctx()).unwrap())
    };
    let err = max_abs_err(&run(&model), &run(&back));
    assert!(err <= 1e-5, "round trip changed the outputs by {err}");

    let mut cfg = UNet2DConditionConfig::from_dir(&fixture_dir("conv")).unwrap();
    cfg.cross_attention_dim = dmq_models::unet_cond::PerBlock::One(6);
    // heads not dividing the channels (1x1-conv projections allow it): width 3 on 4
    // channels, 6 on 8
    cfg.attention_head_dim = Some(dmq_models::unet_cond::PerBlock::One(3));
    let model = cfg.init(device).unwrap();
    assert_eq!(model.num_params() as u64, cfg.param_count());
    let out = model
        .forward(
            Tensor::ones([1, 4, 8, 8], device),
            Tensor::from_floats([9.0], device),
            Tensor::ones([1, 2, 6], device),
            &ctx(),
        )
        .unwrap();
    assert_eq!(out.dims(), [1, 4, 8, 8]);
    let tmp = TempDir::new("rt-random");
    model.save_pretrained(&tmp.0).unwrap();
    UNet2DConditionModel::load(&tmp.0, device).unwrap();
}

/// As a [`Denoiser`]: the text conditioning reaches the model (same output as the inherent
/// forward), labels are refused, the layer inventory runs on a text-conditional model, and a
/// CFG sampling run feeds `[uncond; cond]` states and guides as `ε_u + s (ε_c − ε_u)`.
fn as_denoiser(device: &Device) {
    let m = load("conv", device);
    let io = read_io("conv");
    let (x, t, ehs) = inputs(&io, device);
    let direct = values(
        m.forward(x.clone(), t.clone(), ehs.clone(), &ctx())
            .unwrap(),
    );
    let via = values(
        Denoiser::forward(
            &m,
            x.clone(),
            t.clone(),
            Some(Conditioning::text(ehs.clone())),
            &ctx(),
        )
        .unwrap(),
    );
    assert_eq!(direct, via);
    let labels = Conditioning::Class(Tensor::from_ints([0, 1], device));
    assert!(matches!(
        Denoiser::forward(&m, x.clone(), t.clone(), Some(labels), &ctx()),
        Err(ModelError::Config(_))
    ));
    assert!(Denoiser::forward(&m, x.clone(), t, None, &ctx()).is_err());
    let calls = dmq_models::layer_inventory(&m, device).unwrap();
    let mut names = vec![];
    m.for_each_layer(&mut |l| names.push(l.name().to_string()));
    assert!(
        calls.len() >= names.len(),
        "{} calls, {} layers",
        calls.len(),
        names.len()
    );

    // one DDIM step with CFG against the hand-made batched call
    let [b, ..] = x.dims();
    let [_, l, d] = ehs.dims();
    let uncond = Tensor::<3>::zeros([1, l, d], device);
    let sched = DdimScheduler::diffusers(&DdimConfig::new().with_clip_sample(false), 1).unwrap();
    let cond = Conditioning::Text {
        states: ehs.clone(),
        uncond: Some(uncond.clone()),
    };
    let mut seen = vec![];
    let out = dmq_models::sampler::sample(
        &m,
        &sched,
        x.clone(),
        Some(cond),
        4.0,
        0,
        &mut |inp, eps| {
            seen.push((
                inp.x.dims(),
                inp.cond.as_ref().unwrap().states().unwrap().dims(),
                eps.clone(),
            ));
        },
    )
    .unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, [2 * b, x.dims()[1], x.dims()[2], x.dims()[3]]);
    assert_eq!(seen[0].1, [2 * b, l, d]);
    let tt = Tensor::<1>::from_floats(vec![sched.timesteps()[0] as f32; b].as_slice(), device);
    let eu = m
        .forward(x.clone(), tt.clone(), uncond.repeat_dim(0, b), &ctx())
        .unwrap();
    let ec = m.forward(x.clone(), tt, ehs, &ctx()).unwrap();
    let want = eu.clone() + (ec - eu) * 4.0;
    assert!(max_abs_err(&values(seen[0].2.clone()), &values(want.clone())) < 1e-5);
    let step = sched
        .step(
            want,
            0,
            x,
            None,
            &mut dmq_models::scheduler::SolverState::default(),
        )
        .unwrap()
        .prev_sample;
    assert!(max_abs_err(&values(out), &values(step)) < 1e-5);
}

macro_rules! backend_tests {
    ($name:ident, $device:expr) => {
        mod $name {
            use burn::tensor::Device;

            fn device() -> Device {
                $device
            }

            #[test]
            fn parity() {
                super::parity(&device());
            }

            #[test]
            fn conditioning_matters() {
                super::conditioning_matters(&device());
            }

            #[test]
            fn inventory() {
                super::inventory(&device());
            }

            #[test]
            fn structure() {
                super::structure(&device());
            }

            #[test]
            fn taps() {
                super::taps(&device());
            }

            #[test]
            fn input_errors() {
                super::input_errors(&device());
            }

            #[test]
            fn checkpoint_errors() {
                super::checkpoint_errors(&device());
            }

            #[test]
            fn round_trip() {
                super::round_trip(&device());
            }

            #[test]
            fn as_denoiser() {
                super::as_denoiser(&device());
            }
        }
    };
}

#[cfg(feature = "flex")]
backend_tests!(flex, Device::flex());

#[cfg(feature = "wgpu")]
backend_tests!(wgpu, Device::wgpu(burn::tensor::DeviceKind::DefaultDevice));

// ---------------------------------------------------------------------------------
// Config parsing (no tensors)

fn conv_config_json() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture_dir("conv").join("config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `UNet2DConditionConfig::from_json` of the conv config with `key` set to `value`.
fn with(key: &str, value: serde_json::Value) -> Result<UNet2DConditionConfig, ModelError> {
    let mut v = conv_config_json();
    v.as_object_mut().unwrap().insert(key.into(), value);
    UNet2DConditionConfig::from_json(&v)
}

fn assert_config_err(r: Result<UNet2DConditionConfig, ModelError>, option: &str) {
    match r {
        Err(ModelError::Config(msg)) => {
            assert!(msg.contains(option), "'{msg}' should name '{option}'")
        }
        other => panic!("expected a Config error naming {option}, got {other:?}"),
    }
}

#[test]
fn fixture_configs_parse() {
    for name in FIXTURES {
        let cfg = UNet2DConditionConfig::from_dir(&fixture_dir(name)).unwrap();
        let back: serde_json::Value = serde_json::from_str(&cfg.to_json_string().unwrap()).unwrap();
        assert_eq!(
            UNet2DConditionConfig::from_json(&back).unwrap(),
            cfg,
            "{name}"
        );
    }
    // diffusers' quirk: attention_head_dim is the head count; the lists are reversed for the
    // up blocks and the mid block reads the last entry
    let cfg = UNet2DConditionConfig::from_dir(&fixture_dir("linear")).unwrap();
    let down0 = cfg.transformer_spec(0, 4);
    assert_eq!((down0.heads, down0.head_dim, down0.layers), (2, 2, 2));
    let mid = cfg.transformer_spec(2, 8);
    assert_eq!((mid.heads, mid.head_dim, mid.layers), (1, 8, 1));
    assert_eq!(cfg.cross_dim(), 24);
    // SD 1.x's own config (diffusers defaults + the SD values) parses
    let sd = serde_json::json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.6.0",
        "act_fn": "silu",
        "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": false,
        "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    });
    let cfg = UNet2DConditionConfig::from_json(&sd).unwrap();
    // SD 1.5: 859,520,964 parameters
    assert_eq!(cfg.param_count(), 859_520_964);
    let s = cfg.transformer_spec(1, 640);
    assert_eq!((s.heads, s.head_dim, s.inner_dim()), (8, 80, 640));
    // harmless metadata and no-op options are accepted
    let mut v = conv_config_json();
    let m = v.as_object_mut().unwrap();
    m.insert("_name_or_path".into(), "somewhere".into());
    m.insert("dropout".into(), 0.1.into());
    m.insert("upcast_attention".into(), true.into());
    m.insert("resnet_skip_time_act".into(), true.into());
    UNet2DConditionConfig::from_json(&v).unwrap();
}

#[test]
fn unsupported_config_options() {
    use serde_json::json;
    assert_config_err(
        with(
            "down_block_types",
            json!([
                "CrossAttnDownBlock2D",
                "SimpleCrossAttnDownBlock2D",
                "DownBlock2D"
            ]),
        ),
        "down_block_types",
    );
    assert_config_err(
        with(
            "up_block_types",
            json!(["UpBlock2D", "AttnUpBlock2D", "CrossAttnUpBlock2D"]),
        ),
        "up_block_types",
    );
    assert_config_err(
        with("mid_block_type", json!("UNetMidBlock2D")),
        "mid_block_type",
    );
    assert_config_err(with("mid_block_type", json!(null)), "mid_block_type");
    assert_config_err(
        with("class_embed_type", json!("timestep")),
        "class_embed_type",
    );
    assert_config_err(with("num_class_embeds", json!(10)), "num_class_embeds");
    assert_config_err(
        with("addition_embed_type", json!("text")),
        "addition_embed_type",
    );
    assert_config_err(
        with("only_cross_attention", json!(true)),
        "only_cross_attention",
    );
    assert_config_err(
        with("only_cross_attention", json!([false, true, false])),
        "only_cross_attention",
    );
    assert_config_err(
        with("dual_cross_attention", json!(true)),
        "dual_cross_attention",
    );
    assert_config_err(with("encoder_hid_dim", json!(16)), "encoder_hid_dim");
    assert_config_err(with("time_cond_proj_dim", json!(16)), "time_cond_proj_dim");
    assert_config_err(
        with("time_embedding_act_fn", json!("silu")),
        "time_embedding_act_fn",
    );
    assert_config_err(
        with("timestep_post_act", json!("silu")),
        "timestep_post_act",
    );
    assert_config_err(
        with("time_embedding_type", json!("fourier")),
        "time_embedding_type",
    );
    assert_config_err(
        with("resnet_time_scale_shift", json!("scale_shift")),
        "resnet_time_scale_shift",
    );
    assert_config_err(with("attention_type", json!("gated")), "attention_type");
    assert_config_err(
        with("class_embeddings_concat", json!(true)),
        "class_embeddings_concat",
    );
    assert_config_err(with("num_attention_heads", json!(4)), "num_attention_heads");
    assert_config_err(
        with("attention_head_dim", json!(null)),
        "attention_head_dim",
    );
    // 16 heads on 4 channels: a head would have 0 channels
    assert_config_err(with("attention_head_dim", json!(16)), "attention_head_dim");
    assert_config_err(
        with("attention_head_dim", json!([2, 2])),
        "attention_head_dim",
    );
    // linear projections need heads dividing the channels (diffusers cannot reshape)
    let mut v = conv_config_json();
    let m = v.as_object_mut().unwrap();
    m.insert("use_linear_projection".into(), json!(true));
    m.insert("attention_head_dim".into(), json!(3));
    assert_config_err(UNet2DConditionConfig::from_json(&v), "attention_head_dim");
    assert_config_err(
        with("layers_per_block", json!([1, 1, 1])),
        "layers_per_block",
    );
    assert_config_err(
        with("cross_attention_dim", json!([32, 32, 32])),
        "cross_attention_dim",
    );
    assert_config_err(
        with("transformer_layers_per_block", json!([[1], [1], [1]])),
        "transformer_layers_per_block",
    );
    assert_config_err(
        with("transformer_layers_per_block", json!(0)),
        "transformer_layers_per_block",
    );
    assert_config_err(
        with(
            "reverse_transformer_layers_per_block",
            json!([[1], [1], [1]]),
        ),
        "reverse_transformer_layers_per_block",
    );
    assert_config_err(with("conv_in_kernel", json!(4)), "conv_in_kernel");
    assert_config_err(with("downsample_padding", json!(2)), "downsample_padding");
    assert_config_err(with("norm_num_groups", json!(3)), "norm_num_groups");
    assert_config_err(with("norm_num_groups", json!(null)), "norm_num_groups");
    assert_config_err(with("act_fn", json!("gelu")), "act_fn");
    assert_config_err(with("sample_size", json!([8, 16])), "sample_size");
    assert_config_err(with("_class_name", json!("UNet2DModel")), "_class_name");
    assert_config_err(with("some_new_option", json!(1)), "some_new_option");
    assert_config_err(with("in_channels", json!("four")), "in_channels");

    // oversized: refused by the limits before anything is allocated
    match with("block_out_channels", json!([1 << 20, 1 << 20, 1 << 20])) {
        Err(ModelError::Limit(e)) => assert!(e.to_string().contains("config.json"), "{e}"),
        other => panic!("expected a limit error, got {other:?}"),
    }
    match with("transformer_layers_per_block", json!(1_000_000)) {
        Err(ModelError::Limit(_)) => {}
        other => panic!("expected a limit error, got {other:?}"),
    }

    // through load: the same error, before any weight is read
    let dir = TempDir::new("bad-config");
    let mut v = conv_config_json();
    v.as_object_mut()
        .unwrap()
        .insert("class_embed_type".into(), json!("projection"));
    std::fs::write(dir.0.join("config.json"), v.to_string()).unwrap();
    #[cfg(feature = "flex")]
    match UNet2DConditionModel::load(&dir.0, &Device::flex()) {
        Err(ModelError::Config(msg)) => assert!(msg.contains("class_embed_type"), "{msg}"),
        other => panic!("expected a Config error, got {other:?}"),
    }
}
