//! Hostile model configs and interrupted training checkpoints (issue 26, items 4 and 7):
//! configs whose sizes would ask for terabytes or overflow are refused with a typed limit
//! error naming the file and the key before any layer is initialised; a checkpoint save
//! interrupted at any stage leaves the previous checkpoint loadable.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::AdamWConfig;
use burn::tensor::Device;
use dmq_models::ModelError;
use dmq_models::defaults;
use dmq_models::dit::{DiT, DiTConfig};
use dmq_models::train::{Checkpoint, TrainState};
use dmq_models::unet::{UNet2DModel, UNetConfig};
use dmq_quant::{Limits, QuantError};
use proptest::prelude::*;
use serde_json::{Value, json};

fn limit_field(e: &ModelError) -> &str {
    match e {
        ModelError::Limit(QuantError::LimitExceeded { field, .. }) => field,
        other => panic!("expected a limit error, got {other}"),
    }
}

fn unet_json(patch: Value) -> Value {
    let mut v = defaults::unet_fmnist_json();
    for (k, x) in patch.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

fn dit_json(patch: Value) -> Value {
    let mut v = defaults::dit_fmnist_json();
    for (k, x) in patch.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

/// Item 4: `"block_out_channels": [1048576]` and friends are refused by the config parser
/// and by the model constructor, before any layer exists.
#[test]
fn unet_configs_beyond_the_limits_are_refused() {
    let n = defaults::unet_fmnist_json()["block_out_channels"]
        .as_array()
        .unwrap()
        .len();
    let e = UNetConfig::from_json(&unet_json(
        json!({ "block_out_channels": vec![1048576; n] }),
    ))
    .unwrap_err();
    assert_eq!(limit_field(&e), "block_out_channels", "{e}");
    assert!(
        e.to_string().contains("config.json") && e.to_string().contains("parameters"),
        "{e}"
    );
    let e = UNetConfig::from_json(&unet_json(
        json!({ "block_out_channels": vec![1u64 << 40; n] }),
    ))
    .unwrap_err();
    assert_eq!(limit_field(&e), "block_out_channels[0]", "{e}");
    let e =
        UNetConfig::from_json(&unet_json(json!({ "layers_per_block": 1u64 << 40 }))).unwrap_err();
    assert_eq!(limit_field(&e), "layers_per_block", "{e}");
    let e =
        UNetConfig::from_json(&unet_json(json!({ "num_class_embeds": 1u64 << 40 }))).unwrap_err();
    assert_eq!(limit_field(&e), "num_class_embeds", "{e}");
    let e =
        UNetConfig::from_json(&unet_json(json!({ "sample_size": [8, 1u64 << 40] }))).unwrap_err();
    assert_eq!(limit_field(&e), "sample_size", "{e}");
    // The constructor checks too (a config built in code never went through the parser).
    let mut c = defaults::tiny_unet().unwrap();
    c.block_out_channels = vec![1 << 20; c.block_out_channels.len()];
    let e = UNet2DModel::new(&c, &Device::default()).unwrap_err();
    assert_eq!(limit_field(&e), "block_out_channels", "{e}");
    // Limits are overridable; the parameter count is the model's.
    let tiny = defaults::tiny_unet().unwrap();
    let model = UNet2DModel::new(&tiny, &Device::default()).unwrap();
    assert_eq!(tiny.param_count(), model.num_params() as u64);
    let tight = Limits {
        max_params: tiny.param_count() - 1,
        ..Limits::DEFAULT
    };
    let e = tiny.validate_with_limits(&tight).unwrap_err();
    assert!(
        matches!(e, ModelError::Limit(QuantError::LimitExceeded { .. })),
        "{e}"
    );
}

/// Item 4: a DiT whose `inner_dim` overflows, or whose size would be terabytes.
#[test]
fn dit_configs_beyond_the_limits_are_refused() {
    let e = DiTConfig::from_json_value(&dit_json(
        json!({ "num_attention_heads": 1u64 << 33, "attention_head_dim": 1u64 << 33 }),
    ))
    .unwrap_err();
    assert_eq!(limit_field(&e), "num_attention_heads", "{e}");
    let e = DiTConfig::from_json_value(&dit_json(
        json!({ "num_attention_heads": 1 << 20, "attention_head_dim": 1 << 20 }),
    ))
    .unwrap_err();
    assert_eq!(
        limit_field(&e),
        "num_attention_heads·attention_head_dim",
        "{e}"
    );
    let e = DiTConfig::from_json_value(&dit_json(
        json!({ "num_attention_heads": 1024, "attention_head_dim": 1024 }),
    ))
    .unwrap_err();
    assert_eq!(limit_field(&e), "num_layers", "{e}");
    let e = DiTConfig::from_json_value(&dit_json(json!({ "num_layers": 1u64 << 40 }))).unwrap_err();
    assert_eq!(limit_field(&e), "num_layers", "{e}");
    let e = DiTConfig::from_json_value(&dit_json(
        json!({ "sample_size": 1u64 << 30, "patch_size": 1 }),
    ))
    .unwrap_err();
    assert_eq!(limit_field(&e), "sample_size", "{e}");
    let c = DiTConfig {
        num_attention_heads: usize::MAX,
        attention_head_dim: 2,
        ..defaults::tiny_dit().unwrap()
    };
    let e = DiT::new(&c, &Device::default()).unwrap_err();
    assert_eq!(limit_field(&e), "num_attention_heads", "{e}");
    let tiny = defaults::tiny_dit().unwrap();
    let model = DiT::new(&tiny, &Device::default()).unwrap();
    let counted = tiny.param_count();
    let real = model.num_params() as u64;
    // The count adds the fixed position table to the trainable parameters.
    let pos = (tiny.grid_size().pow(2) * tiny.inner_dim()) as u64;
    assert_eq!(counted, real + pos, "counted {counted}, model {real}");
}

/// A one-layer module, its optimizer and a state with `step`.
fn save_step(ckpt: &Checkpoint, step: usize) {
    let m: Linear = LinearConfig::new(2, 2).init(&Device::default());
    let state = TrainState {
        step,
        ..TrainState::default()
    };
    ckpt.save(&m, &m.clone(), &AdamWConfig::new().init(), &state)
        .unwrap();
}

fn loaded_step(ckpt: &Checkpoint) -> usize {
    let m: Linear = LinearConfig::new(2, 2).init(&Device::default());
    let (_, _, _, st) = ckpt
        .load(m.clone(), m, AdamWConfig::new().init())
        .unwrap()
        .expect("a checkpoint");
    assert_eq!(ckpt.state().unwrap().unwrap().step, st.step);
    st.step
}

fn sibling(dir: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(suffix);
    s.into()
}

/// Item 7: a save interrupted at each stage leaves a loadable checkpoint (the previous one,
/// or the new one once it is complete), and the next save succeeds; a trailing slash works.
#[test]
fn interrupted_checkpoint_saves_keep_the_previous_checkpoint() {
    let root = std::env::temp_dir().join(format!("dmq-ckpt-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let dir = root.join("run");
    // A trailing slash: saves and loads the same directory, siblings next to it.
    let slashed = Checkpoint::new(format!("{}/", dir.display()));
    assert_eq!(slashed.dir(), dir.as_path());
    save_step(&slashed, 1);
    save_step(&slashed, 2);
    assert_eq!(loaded_step(&slashed), 2);
    assert!(!sibling(&dir, ".old").exists() && !sibling(&dir, ".tmp").exists());
    let ckpt = Checkpoint::new(&dir);
    let tmp = sibling(&dir, ".tmp");
    let old = sibling(&dir, ".old");
    // Stage 1: the save died while writing `<dir>.tmp` (partial files, no state.json).
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("model.bpk"), b"partial").unwrap();
    assert_eq!(loaded_step(&ckpt), 2);
    save_step(&ckpt, 3);
    assert_eq!(loaded_step(&ckpt), 3);
    // Stage 2: `<dir>.tmp` complete (with a truncated state.json from a torn write).
    std::fs::create_dir_all(&tmp).unwrap();
    for f in ["model.bpk", "ema.bpk", "optim.bpk"] {
        std::fs::copy(dir.join(f), tmp.join(f)).unwrap();
    }
    std::fs::write(tmp.join("state.json"), b"{\"step\": 9").unwrap();
    assert_eq!(loaded_step(&ckpt), 3);
    // Stage 3: between the two renames: `<dir>` gone, `<dir>.old` holds the previous one.
    std::fs::rename(&dir, &old).unwrap();
    assert_eq!(loaded_step(&ckpt), 3);
    save_step(&ckpt, 4);
    assert_eq!(loaded_step(&ckpt), 4);
    assert!(!old.exists() && !tmp.exists());
    // Stage 4: after both renames, before `<dir>.old` was removed: the new one loads.
    copy_dir(&dir, &old);
    save_step(&ckpt, 5);
    copy_dir(&dir, &old);
    assert_eq!(loaded_step(&ckpt), 5);
    save_step(&ckpt, 6);
    assert_eq!(loaded_step(&ckpt), 6);
    std::fs::remove_dir_all(&root).unwrap();
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn size() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u64..40).prop_map(Value::from),
        Just(json!(1u64 << 20)),
        Just(json!(1u64 << 33)),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(null)),
        Just(json!("8")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// 128 cases: a UNet config with random sizes (channels, levels, layers, groups, heads,
    /// classes, sample size): the parser returns a typed error or a config whose counted
    /// parameters stay under `Limits::DEFAULT.max_params`; it never panics.
    #[test]
    fn random_unet_configs_never_panic(
        channels in prop::collection::vec(size(), 0..4),
        layers in size(), groups in size(), head in size(), classes in size(), sample in size(),
        time_dim in size(),
    ) {
        let n = channels.len();
        let v = unet_json(json!({
            "block_out_channels": channels,
            "down_block_types": vec!["AttnDownBlock2D"; n],
            "up_block_types": vec!["AttnUpBlock2D"; n],
            "layers_per_block": layers, "norm_num_groups": groups, "attention_head_dim": head,
            "num_class_embeds": classes, "sample_size": sample, "time_embedding_dim": time_dim,
        }));
        if let Ok(c) = UNetConfig::from_json(&v) {
            prop_assert!(c.param_count() <= Limits::DEFAULT.max_params);
        }
    }

    /// 128 cases: a DiT config with random sizes: a typed error or a config under the
    /// parameter cap; never a panic or an overflow.
    #[test]
    fn random_dit_configs_never_panic(
        heads in size(), head_dim in size(), layers in size(), inc in size(), sample in size(),
        patch in size(), classes in size(),
    ) {
        let v = dit_json(json!({
            "num_attention_heads": heads, "attention_head_dim": head_dim, "num_layers": layers,
            "in_channels": inc, "sample_size": sample, "patch_size": patch,
            "num_embeds_ada_norm": classes,
        }));
        if let Ok(c) = DiTConfig::from_json_value(&v) {
            prop_assert!(c.param_count() <= Limits::DEFAULT.max_params);
        }
    }
}

fn state_field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(null)),
        Just(json!(-1)),
        Just(json!(1e300)),
        Just(json!(u64::MAX)),
        Just(json!("7")),
        Just(json!([[1, "x"]])),
        Just(json!([[usize::MAX, 1e39]])),
        Just(json!({})),
        any::<i64>().prop_map(|v| json!(v)),
        any::<f64>().prop_map(|v| json!(v)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A damaged `state.json` (a random value in any field, a truncation, a flipped byte) is
    /// an error or a well-typed state, never a panic, for both `state()` and `load`.
    #[test]
    fn damaged_state_json_never_panics(
        field in prop_oneof![
            Just("step"), Just("ema_updates"), Just("losses"), Just("wall_s"), Just("notes")
        ],
        value in state_field_value(),
        cut in 0usize..200,
        flip in any::<(usize, u8)>(),
    ) {
        let root = std::env::temp_dir().join(format!(
            "dmq-state-hostile-{}-{}", std::process::id(), cut
        ));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("run");
        let ckpt = Checkpoint::new(&dir);
        save_step(&ckpt, 4);
        let good = std::fs::read(dir.join("state.json")).unwrap();
        let mut v: Value = serde_json::from_slice(&good).unwrap();
        v[field] = value;
        let mut variants = vec![serde_json::to_vec(&v).unwrap()];
        variants.push(good[..cut.min(good.len())].to_vec());
        let mut flipped = good.clone();
        let i = flip.0 % flipped.len();
        flipped[i] ^= flip.1 | 1;
        variants.push(flipped);
        for bytes in variants {
            std::fs::write(dir.join("state.json"), &bytes).unwrap();
            let _ = ckpt.state();
            let m: Linear = LinearConfig::new(2, 2).init(&Device::default());
            let _ = ckpt.load(m.clone(), m, AdamWConfig::new().init());
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
