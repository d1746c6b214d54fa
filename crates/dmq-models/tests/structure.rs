//! `Denoiser::structure` checked against the models themselves: every name it gives is a
//! layer (or a tapped module) of the model, stage resolutions and skip-concat channel splits
//! agree with the shapes a forward pass actually sees, and the unit/stage partition covers
//! the layers the way the algorithms expect. Backend-independent: flex only.

use std::collections::BTreeSet;

use burn::tensor::{Device, Int, Tensor};
use dmq_models::dit::DiT;
use dmq_models::layers::LayerRef;
use dmq_models::unet::UNet2DModel;
use dmq_models::{
    Denoiser, ForwardCtx, InputCapture, Operand, StageKind, StepContext, Structure, Taps, defaults,
};

fn layer_names<M: Denoiser>(m: &M) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    m.for_each_layer(&mut |l| {
        out.insert(l.name().to_string());
    });
    out
}

fn inputs(x_shape: [usize; 4], m: &impl Denoiser, device: &Device) -> InputCapture {
    let cap = InputCapture::all();
    let info = m.info();
    let class = info
        .num_classes
        .map(|_| Tensor::<1, Int>::from_ints([0], device).into());
    m.forward(
        Tensor::zeros(x_shape, device),
        Tensor::from_floats([10.0], device),
        class,
        &ForwardCtx::new(StepContext::single(10.0)).with_inputs(&cap),
    )
    .unwrap();
    cap
}

/// Units and stages are all tapped by one forward pass.
fn assert_tapped(m: &impl Denoiser, s: &Structure, device: &Device) {
    let info = m.info();
    let names: Vec<String> = s
        .units
        .iter()
        .chain(s.stages.iter().map(|st| &st.path))
        .cloned()
        .collect();
    let taps = Taps::new(names.clone());
    let class = info
        .num_classes
        .map(|_| Tensor::<1, Int>::from_ints([0], device).into());
    let n = info.sample_size;
    m.forward(
        Tensor::zeros([1, info.in_channels, n, n], device),
        Tensor::from_floats([10.0], device),
        class,
        &ForwardCtx::new(StepContext::single(10.0)).with_taps(&taps),
    )
    .unwrap();
    let got = taps.take();
    for n in &names {
        assert!(got.contains_key(n), "{n} is not tapped");
    }
}

#[test]
fn unet_structure_matches_the_model() {
    let device = Device::flex();
    let m = UNet2DModel::new(&defaults::unet_fmnist().unwrap(), &device).unwrap();
    let s = m.structure();
    let layers = layer_names(&m);
    for n in s.named_layers() {
        assert!(layers.contains(n), "structure names `{n}`, not a layer");
    }
    assert_eq!(
        s.time_mlp,
        ["time_embedding.linear_1", "time_embedding.linear_2"]
    );
    let kinds: Vec<StageKind> = s.stages.iter().map(|st| st.kind).collect();
    let levels = m.config().block_out_channels.len();
    assert_eq!(
        kinds.iter().filter(|&&k| k == StageKind::Down).count(),
        levels
    );
    assert_eq!(
        kinds.iter().filter(|&&k| k == StageKind::Up).count(),
        levels
    );
    // one time projection per resnet, one skip concat per decoder resnet
    let resnets = layers.iter().filter(|n| n.ends_with(".conv1")).count();
    assert_eq!(s.time_projections.len(), resnets);
    assert_eq!(
        s.skip_concats.len(),
        levels * (m.config().layers_per_block + 1)
    );
    assert_tapped(&m, &s, &device);

    let info = m.info();
    let size = info.sample_size;
    let cap = inputs([1, info.in_channels, size, size], &m, &device).take();
    // matmuls have Left/Right operands, not an Input: None
    let input_of = |name: &str| {
        cap.get(&(name.to_string(), Operand::Input))
            .map(|v| v[0].shape.clone())
    };
    // the concatenation split sums to the channels conv1 reads
    for sc in &s.skip_concats {
        for l in &sc.layers {
            assert_eq!(
                input_of(l).unwrap()[1],
                sc.main_channels + sc.skip_channels,
                "{l}"
            );
        }
    }
    // stage resolution = the smallest map a conv of the stage reads
    for st in &s.stages {
        let r = layers
            .iter()
            .filter(|n| s.stage_of(n).map(|x| &x.path) == Some(&st.path))
            .filter(|n| !s.time_projections.contains(n))
            .filter_map(|n| {
                let sh = input_of(n)?;
                (sh.len() == 4).then_some(sh[2])
            })
            .min()
            .unwrap();
        assert_eq!(st.resolution, r, "{}", st.path);
    }
    // every layer inside a stage has a unit, and the unit lies in that stage
    for n in &layers {
        if let Some(st) = s.stage_of(n) {
            let u = s.unit_of(n);
            assert_ne!(&u, n, "{n} has no unit");
            assert!(dmq_models::structure::within(&u, &st.path));
        }
    }
    assert_eq!(s.unit_of("conv_in"), "conv_in");
    assert!(s.on_time_path("down_blocks.0.resnets.0.time_emb_proj"));
    assert!(!s.on_time_path("down_blocks.0.resnets.0.conv1"));
}

#[test]
fn dit_structure_matches_the_model() {
    let device = Device::flex();
    let m = DiT::new(&defaults::dit_fmnist().unwrap(), &device).unwrap();
    let s = m.structure();
    let layers = layer_names(&m);
    for n in s.named_layers() {
        assert!(layers.contains(n), "structure names `{n}`, not a layer");
    }
    let blocks = m.config().num_layers;
    assert_eq!(s.stages.len(), blocks);
    assert!(s.stages.iter().all(|st| st.kind == StageKind::Transformer));
    assert_eq!(s.time_mlp.len(), 2 * blocks);
    assert_eq!(s.attention.len(), blocks);
    assert!(s.skip_concats.is_empty() && s.shortcuts.is_empty());
    assert_tapped(&m, &s, &device);
    let info = m.info();
    let size = info.sample_size;
    let cap = inputs([1, info.in_channels, size, size], &m, &device).take();
    // the token grid of every block: N tokens = resolution²
    for st in &s.stages {
        let q = &s
            .attention
            .iter()
            .find(|a| dmq_models::structure::within(&a.path, &st.path))
            .unwrap()
            .qkv[0];
        let n = cap[&(q.clone(), Operand::Input)][0].shape[1];
        assert_eq!(st.resolution * st.resolution, n, "{}", st.path);
    }
    // the time path: the per-block MLPs and modulations, not the attention or feed-forward
    let mut on_path = 0;
    m.for_each_layer(&mut |l| {
        if let LayerRef::Linear(q) = l
            && s.on_time_path(q.name())
        {
            on_path += 1;
        }
    });
    assert_eq!(on_path, 3 * blocks + 1);
    assert!(!s.on_time_path("transformer_blocks.0.ff.net.2"));
}
