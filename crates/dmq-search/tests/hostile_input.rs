//! Hostile search checkpoints (issue 26, item 6): a resume checks the state's contents, so
//! `"initialised": true, "scored": []` or a short bit row is a typed error naming the file
//! and the field instead of an index-out-of-bounds panic.

use dmq_models::LayerCall;
use dmq_models::layers::LayerKind;
use dmq_search::{
    Budget, Candidate, CostModel, Evolution, EvolutionConfig, LayerSlot, SearchError, SearchSpace,
    ThreadEvaluator, timestep_groups,
};
use proptest::prelude::*;
use serde_json::{Value, json};

fn space() -> SearchSpace {
    let slot = |name: &str, matmul| LayerSlot {
        name: name.into(),
        matmul,
    };
    SearchSpace::new(
        timestep_groups(4, 1000).unwrap(),
        vec![slot("conv", false), slot("attn.qk", true)],
        vec![8, 6, 4],
        false,
    )
    .unwrap()
}

fn cost(s: &SearchSpace) -> CostModel {
    let call = |name: &str, kind, macs| LayerCall {
        name: name.into(),
        kind,
        weight_shape: vec![],
        macs,
    };
    CostModel::new(
        &[
            call("conv", LayerKind::Conv2d, 1000),
            call("attn.qk", LayerKind::Matmul, 500),
        ],
        s,
        false,
    )
    .unwrap()
}

fn config() -> EvolutionConfig {
    EvolutionConfig {
        population: 6,
        top_k: 2,
        mutations: 2,
        crossovers: 2,
        epochs: 1,
        x0_index: 0,
        seed: 3,
        ..EvolutionConfig::default()
    }
}

fn fitness(c: &Candidate) -> dmq_search::Result<f64> {
    Ok(c.timesteps.iter().sum::<usize>() as f64 + c.bits.iter().flatten().count() as f64)
}

/// Writes a valid checkpoint of a one-epoch search to `path` and returns its JSON.
fn valid_checkpoint(path: &std::path::Path) -> Value {
    let s = space();
    let c = cost(&s);
    let budget = Budget {
        max_bitops: c.bitops(&s, &s.uniform(0).unwrap()),
    };
    let _ = std::fs::remove_file(path);
    Evolution::new(&s, &c, budget, config())
        .unwrap()
        .with_checkpoint(path)
        .run(&ThreadEvaluator::new(fitness, 1), &mut |_| {})
        .unwrap();
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn resume(path: &std::path::Path) -> dmq_search::Result<dmq_search::SearchResult> {
    let s = space();
    let c = cost(&s);
    let budget = Budget {
        max_bitops: c.bitops(&s, &s.uniform(0).unwrap()),
    };
    Evolution::new(&s, &c, budget, config())
        .unwrap()
        .with_checkpoint(path)
        .run(&ThreadEvaluator::new(fitness, 1), &mut |_| {})
}

fn dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("dmq-search-hostile-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn expect_field(path: &std::path::Path, state: &Value, field: &str) {
    std::fs::write(path, serde_json::to_vec(state).unwrap()).unwrap();
    let e = resume(path).unwrap_err();
    assert!(
        matches!(&e, SearchError::Checkpoint { path: p, reason } if p == path && reason.contains(field)),
        "{field}: {e}"
    );
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
}

#[test]
fn resume_checks_the_checkpoint_contents() {
    let d = dir("resume");
    let path = d.join("search.json");
    let good = valid_checkpoint(&path);
    // The valid checkpoint resumes (nothing left to do).
    assert!(resume(&path).is_ok());

    let mut st = good.clone();
    st["scored"] = json!([]);
    expect_field(&path, &st, "field 'scored'");

    let mut st = good.clone();
    st["scored"][0]["candidate"]["bits"][0] = json!([0]);
    expect_field(&path, &st, "field 'scored[0].candidate'");

    let mut st = good.clone();
    st["scored"][1]["candidate"]["bits"][0][0] = json!(9);
    expect_field(&path, &st, "field 'scored[1].candidate'");

    let mut st = good.clone();
    st["scored"][0]["candidate"]["timesteps"] = json!([5000, 0, 0, 0]);
    expect_field(&path, &st, "field 'scored[0].candidate'");

    let mut st = good.clone();
    st["scored"][0]["candidate"]["timesteps"] = json!([]);
    expect_field(&path, &st, "field 'scored[0].candidate'");

    let mut st = good.clone();
    st["initialised"] = json!(false);
    expect_field(&path, &st, "field 'epochs_done'");

    let mut st = good.clone();
    st["scored"][0]["bitops"] = json!(-1.0);
    expect_field(&path, &st, "field 'scored[0].bitops'");
    std::fs::remove_dir_all(&d).ok();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// 48 cases: a valid checkpoint truncated at a random point, with one byte flipped, or
    /// with a random JSON value put in one of its fields: resuming returns a typed error
    /// or a result; it never panics.
    #[test]
    fn damaged_checkpoints_never_panic(
        cut in 0usize..4000,
        pos in 0usize..4000,
        flip in 1u8..=255,
        field in prop::sample::select(vec!["epochs_done", "initialised", "rng", "scored", "history"]),
        value in prop_oneof![
            Just(json!(null)), Just(json!([])), Just(json!(true)), Just(json!(0)),
            Just(json!(18446744073709551615u64)), Just(json!([{"candidate": {"timesteps": [], "bits": []}, "fitness": 1.0, "bitops": 1.0}])),
        ],
    ) {
        let d = dir("prop");
        let path = d.join(format!("search-{cut}-{pos}-{flip}.json"));
        let good = valid_checkpoint(&path);
        let bytes = serde_json::to_vec(&good).unwrap();
        let mut variants = vec![bytes[..cut % bytes.len()].to_vec()];
        let mut flipped = bytes.clone();
        flipped[pos % bytes.len()] ^= flip;
        variants.push(flipped);
        let mut st = good.clone();
        st[field] = value;
        variants.push(serde_json::to_vec(&st).unwrap());
        for v in variants {
            std::fs::write(&path, &v).unwrap();
            if let Err(e) = resume(&path) {
                let typed = matches!(e, SearchError::Checkpoint { .. } | SearchError::Option(_));
                prop_assert!(typed, "{}", e);
            }
        }
        std::fs::remove_file(&path).ok();
    }
}
