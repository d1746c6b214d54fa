//! Hostile exports (issue 26, items 1 and 2): a spec with an out-of-range bit-width and
//! step → set maps that would reserve terabytes or overflow are refused with typed errors
//! naming the file and the entry, before anything of their size is allocated.

use dmq_infer::InferError;
use dmq_infer::export::ActSets;
use dmq_quant::{Limits, QuantError, QuantSpec, QuantizedFile};
use proptest::prelude::*;

const ORIGIN: &str = "export.safetensors";

/// An export with activation sets of `conv.a`: the given spec JSON and map, and `sets`
/// parameter sets of one (Δ, z) each; round-tripped through bytes so it has an origin.
fn export(spec: &str, map: &str, sets: usize) -> QuantizedFile {
    let mut f = QuantizedFile::default();
    f.metadata.insert("conv.a.spec".into(), spec.into());
    f.metadata.insert("conv.a.step_to_set".into(), map.into());
    for i in 0..sets {
        f.float
            .insert(format!("conv.a.delta.{i}"), (vec![1], vec![0.1]));
        f.float
            .insert(format!("conv.a.zero.{i}"), (vec![1], vec![3.0]));
    }
    QuantizedFile::from_bytes(&f.to_bytes().unwrap(), ORIGIN).unwrap()
}

fn spec4() -> String {
    serde_json::to_string(&QuantSpec::int(4).unwrap()).unwrap()
}

fn names(e: &InferError, field: &str) {
    let msg = e.to_string();
    assert!(msg.contains(ORIGIN), "error does not name the file: {msg}");
    assert!(msg.contains(field), "error does not name '{field}': {msg}");
}

/// Item 1: bits 0 and 33 in an activation spec are a typed error, not a clamp to one value.
#[test]
fn activation_spec_bits_out_of_range_are_refused() {
    for bits in [0, 33, 255] {
        let spec = spec4().replace("{\"Int\":4}", &format!("{{\"Int\":{bits}}}"));
        let e = ActSets::read(&export(&spec, "[0]", 1), "conv", "a").unwrap_err();
        assert!(
            matches!(e, InferError::Quant(QuantError::InvalidBits { bits: b, .. }) if b == bits),
            "{bits}: {e}"
        );
        names(&e, "conv.a.spec.bits");
    }
    let e = ActSets::read(&export("{\"bits\":1}", "[0]", 1), "conv", "a").unwrap_err();
    assert!(
        matches!(e, InferError::Quant(QuantError::InvalidField { .. })),
        "{e}"
    );
    names(&e, "conv.a.spec");
}

/// Item 2: `[100000000000]` and `[u64::MAX]` are refused before any set is reserved;
/// a map longer than the step limit is a limit error.
#[test]
fn step_to_set_that_would_reserve_terabytes_is_refused() {
    for map in ["[100000000000]", "[18446744073709551615]", "[0, 2]"] {
        let e = ActSets::read(&export(&spec4(), map, 1), "conv", "a").unwrap_err();
        assert!(
            matches!(&e, InferError::Export { entry, .. } if entry == "conv.a.step_to_set"),
            "{map}: {e}"
        );
        names(&e, "conv.a.step_to_set");
    }
    for map in ["[]", "[-1]", "[0.5]", "{}", "[18446744073709551616]"] {
        let e = ActSets::read(&export(&spec4(), map, 1), "conv", "a").unwrap_err();
        assert!(
            matches!(&e, InferError::Export { entry, .. } if entry == "conv.a.step_to_set"),
            "{map}: {e}"
        );
    }
    let tight = Limits {
        max_steps: 3,
        ..Limits::DEFAULT
    };
    let f = export(&spec4(), "[0, 0, 0, 0]", 1);
    let e = ActSets::read_with_limits(&f, "conv", "a", &tight).unwrap_err();
    assert!(
        matches!(&e, InferError::Quant(QuantError::LimitExceeded { field, value: 4, limit: 3, .. })
            if field == "conv.a.step_to_set"),
        "{e}"
    );
    // A set named by the map but missing names the missing entry.
    let e = ActSets::read(&export(&spec4(), "[0, 1]", 1), "conv", "a").unwrap_err();
    assert!(
        matches!(&e, InferError::Export { entry, .. } if entry == "conv.a.delta.1"),
        "{e}"
    );
    names(&e, "conv.a.delta.1");
    // The valid map loads.
    let ok = ActSets::read(&export(&spec4(), "[0, 1, 1, 0]", 2), "conv", "a")
        .unwrap()
        .unwrap();
    assert_eq!(ok.sets.len(), 2);
    assert_eq!(ok.num_steps(), 4);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// 256 cases: random step → set maps (huge and small indices, any length up to 40),
    /// random bit-widths and set counts: `ActSets::read` never panics, and what it accepts
    /// has only in-range set indices and at most as many sets as steps.
    #[test]
    fn random_act_sets_never_panic(
        map in prop::collection::vec(prop_oneof![0u64..6, Just(1u64 << 40), Just(u64::MAX)], 0..40),
        bits in 0u32..40,
        sets in 0usize..6,
    ) {
        let spec = spec4().replace("{\"Int\":4}", &format!("{{\"Int\":{bits}}}"));
        let f = export(&spec, &serde_json::to_string(&map).unwrap(), sets);
        if let Ok(Some(a)) = ActSets::read(&f, "conv", "a") {
            prop_assert!((1..=8).contains(&bits));
            prop_assert!(a.sets.len() <= a.num_steps());
            prop_assert!(a.step_to_set.iter().all(|&s| s < a.sets.len()));
        }
    }
}

/// Item 5: an export whose layers belong to another model (a UNet export loaded into a DiT)
/// is refused, naming an entry, instead of loading as FP under a quantized label.
#[cfg(feature = "flex")]
#[test]
fn export_of_another_model_is_refused() {
    use dmq_models::Denoiser;
    let device = burn::tensor::Device::flex();
    let mut unet =
        dmq_models::unet::UNet2DModel::new(&dmq_models::defaults::tiny_unet().unwrap(), &device)
            .unwrap();
    let plans = dmq_calib::QuantConfig::preset("W8A32")
        .unwrap()
        .resolve(&unet, &device)
        .unwrap();
    dmq_calib::quantize_weights(&mut unet, &plans, &dmq_quant::RangeInit::Max).unwrap();
    let f = dmq_calib::export_layers(&unet, 1).unwrap();
    let f = QuantizedFile::from_bytes(&f.to_bytes().unwrap(), ORIGIN).unwrap();
    let mut dit =
        dmq_models::dit::DiT::new(&dmq_models::defaults::tiny_dit().unwrap(), &device).unwrap();
    let e = dmq_infer::load_export(&mut dit, &f, &device).unwrap_err();
    assert!(matches!(e, InferError::Export { .. }), "{e}");
    names(&e, ".weight");
    assert!(
        e.to_string().contains("matches no quantizable layer"),
        "{e}"
    );
    // the model's own export still loads
    let mut again =
        dmq_models::unet::UNet2DModel::new(&dmq_models::defaults::tiny_unet().unwrap(), &device)
            .unwrap();
    dmq_infer::load_export(&mut again, &f, &device).unwrap();
    let mut quantized = 0;
    again.for_each_layer(&mut |l| {
        if let dmq_models::layers::LayerRef::Conv2d(c) = l {
            quantized += usize::from(c.w_quant.is_some());
        }
    });
    assert!(quantized > 0);
}

/// SVDQuant entries: a branch with one factor missing, factors that do not chain or do not
/// fit the layer, and a dynamic spec of 1 or 9 bits are typed errors naming the file and the
/// entry.
#[test]
fn malformed_svdquant_entries_are_refused() {
    let with = |down: Option<(Vec<usize>, usize)>, up: Option<(Vec<usize>, usize)>| {
        let mut f = QuantizedFile::default();
        if let Some((s, n)) = down {
            f.half
                .insert("conv.low_rank.down".into(), (s, vec![0.5; n]));
        }
        if let Some((s, n)) = up {
            f.half.insert("conv.low_rank.up".into(), (s, vec![0.5; n]));
        }
        QuantizedFile::from_bytes(&f.to_bytes().unwrap(), ORIGIN).unwrap()
    };
    // a [4, 9] weight (C_in·k·k = 9, 4 outputs): rank-2 factors [2, 9] and [4, 2] fit
    let ok = with(Some((vec![2, 9], 18)), Some((vec![4, 2], 8)));
    let e = dmq_infer::export::low_rank(&ok, "conv", 9, 4)
        .unwrap()
        .unwrap();
    assert_eq!((e.rank, e.down.len(), e.up.len()), (2, 18, 8));
    let e =
        dmq_infer::export::low_rank(&with(Some((vec![2, 9], 18)), None), "conv", 9, 4).unwrap_err();
    names(&e, "conv.low_rank.up");
    for (d, u) in [
        ((vec![2, 9], 18), (vec![4, 3], 12)), // ranks differ
        ((vec![2, 8], 16), (vec![4, 2], 8)),  // d_in differs
        ((vec![2, 9], 18), (vec![5, 2], 10)), // d_out differs
        ((vec![18], 18), (vec![4, 2], 8)),    // not a matrix
        ((vec![0, 9], 0), (vec![4, 0], 0)),   // rank 0
    ] {
        let e = dmq_infer::export::low_rank(&with(Some(d), Some(u)), "conv", 9, 4).unwrap_err();
        names(&e, "conv.low_rank.down");
    }
    for bits in [1, 9] {
        let mut f = QuantizedFile::default();
        f.metadata.insert(
            "conv.a.dynamic".into(),
            format!("{{\"bits\":{bits},\"symmetric\":false,\"per_token\":true}}"),
        );
        let f = QuantizedFile::from_bytes(&f.to_bytes().unwrap(), ORIGIN).unwrap();
        let e = dmq_infer::export::dynamic(&f, "conv", "a").unwrap_err();
        assert!(
            matches!(e, InferError::Quant(QuantError::InvalidBits { .. })),
            "{e}"
        );
        names(&e, "conv.a.dynamic");
    }
}
