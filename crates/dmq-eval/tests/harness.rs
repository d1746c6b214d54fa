//! The sampling/scoring harness and the results tables, on a tiny 28×28 DiT, the committed
//! metric classifier and the committed 64-image test subset.

use std::path::{Path, PathBuf};

use dmq_eval::classifier::FmnistClassifier;
use dmq_eval::data::fashion_mnist::{Split, load_split};
use dmq_eval::harness::{Reference, SampleSpec, generate, score};
use dmq_eval::report::{
    NOTES_MARKER, ResultRow, markdown_table, read_rows, upsert_row, write_markdown,
};
use dmq_models::dit::{DiT, DiTConfig};
use dmq_models::scheduler::{DdimConfig, DdimScheduler};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A one-block 28×28 DiT, 3 DDIM steps, 12 samples in batches of 5 (the last one short).
fn tiny_setup(device: &burn::tensor::Device) -> (DiT, DdimScheduler, SampleSpec) {
    let cfg = DiTConfig::from_json_value(&serde_json::json!({
        "sample_size": 28, "in_channels": 1, "out_channels": 1, "patch_size": 7,
        "num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 4,
        "num_embeds_ada_norm": 10
    }))
    .unwrap();
    let spec = SampleSpec {
        n: 12,
        guidance: 2.0,
        seed: 5,
        batch: 5,
    };
    (
        DiT::new(&cfg, device).unwrap(),
        DdimScheduler::diffusers(&DdimConfig::new(), 3).unwrap(),
        spec,
    )
}

#[test]
fn harness_is_deterministic_and_scores_fp_against_itself() {
    let device = burn::tensor::Device::flex();
    let (model, sched, spec) = tiny_setup(&device);
    let mut calls = vec![];
    let a = generate(&model, &sched, &spec, &device, &mut |d, t| {
        calls.push((d, t))
    })
    .unwrap();
    assert_eq!(calls, vec![(5, 12), (10, 12), (12, 12)]);
    assert_eq!(a.shape, vec![12, 1, 28, 28]);
    assert!(a.data.iter().all(|v| (-1.0..=1.0).contains(v)));
    let b = generate(&model, &sched, &spec, &device, &mut |_, _| {}).unwrap();
    assert_eq!(a, b, "same spec, same samples");
    let c = generate(
        &model,
        &sched,
        &SampleSpec {
            seed: 6,
            ..spec.clone()
        },
        &device,
        &mut |_, _| {},
    )
    .unwrap();
    assert_ne!(a, c);

    let classifier =
        FmnistClassifier::load(&root().join("assets/models/fmnist-classifier"), &device).unwrap();
    let test = load_split(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fashion-mnist-subset"),
        Split::Test,
    )
    .unwrap();
    let reference = Reference::new(&classifier, &test, a.clone(), &device).unwrap();
    let s = score(&classifier, &reference, &a, Some(10), &device).unwrap();
    assert!(s.fd_fp.abs() < 1e-6, "{}", s.fd_fp);
    assert_eq!(s.fidelity.psnr, 100.0);
    assert!((s.fidelity.ssim - 1.0).abs() < 1e-9);
    assert!(
        s.fd_test > 1.0,
        "noise-like samples are far from the test set: {}",
        s.fd_test
    );
    let acc = s.class_acc.unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert!((s.class_share.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    // the test images themselves sit at FD ≈ 0 from the test statistics
    let t = dmq_models::HostTensor::from_tensor(
        &test
            .range_tensor(
                0,
                test.len(),
                dmq_eval::data::fashion_mnist::Padding::None,
                &device,
            )
            .unwrap(),
    );
    let (f, preds) = dmq_eval::harness::features(&classifier, &t, &device).unwrap();
    let st = dmq_eval::metrics::FeatureStats::from_rows(&f, 128).unwrap();
    assert!(dmq_eval::metrics::frechet_distance(&st, &reference.test).unwrap() < 1e-6);
    let correct = preds
        .iter()
        .zip(test.labels())
        .filter(|(p, l)| **p == **l as usize)
        .count();
    assert!(
        correct * 100 >= 80 * test.len(),
        "classifier accuracy on the subset: {correct}/{}",
        test.len()
    );
    // shape mismatch is an error
    assert!(score(&classifier, &reference, &c.clone(), Some(10), &device).is_ok());
    let mut short = c;
    short.shape[0] = 11;
    short.data.truncate(11 * 784);
    assert!(score(&classifier, &reference, &short, Some(10), &device).is_err());
}

/// A sampling run killed after its second batch resumes at the third and ends with the
/// images of an uninterrupted run; checkpoints of another model, spec or step count, corrupt
/// ones and ones that are not whole batches are refused.
#[test]
fn interrupted_sampling_resumes_to_the_same_images() {
    use dmq_eval::sample_checkpoint::ResumableSampling;
    let device = burn::tensor::Device::flex();
    let (model, sched, spec) = tiny_setup(&device);
    let whole = generate(&model, &sched, &spec, &device, &mut |_, _| {}).unwrap();
    let dir = std::env::temp_dir().join(format!("dmq-resume-{}", std::process::id()));
    let path = dir.join("samples.safetensors");
    let open = |fp: &str, sched: &DdimScheduler, spec: &SampleSpec| {
        ResumableSampling::open(&path, fp, &model, sched, spec)
    };
    let kill_after_10 = || {
        let run = open("model-a", &sched, &spec).unwrap();
        let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run.generate(&model, &sched, &device, &mut |done, _| {
                assert!(done != 10, "killed after the second batch")
            })
        }));
        assert!(killed.is_err());
    };
    kill_after_10();

    let run = open("model-a", &sched, &spec).unwrap();
    assert_eq!(run.done(), 10, "two batches were saved before the kill");
    let refused = |fp: &str, sched: &DdimScheduler, spec: &SampleSpec, what: &str| {
        let e = open(fp, sched, spec).unwrap_err().to_string();
        assert!(e.contains(what) && e.contains("samples.safetensors"), "{e}");
    };
    refused("model-b", &sched, &spec, "fingerprint = model-a");
    refused(
        "model-a",
        &sched,
        &SampleSpec {
            seed: 6,
            ..spec.clone()
        },
        "seed = 5",
    );
    refused(
        "model-a",
        &DdimScheduler::diffusers(&DdimConfig::new(), 4).unwrap(),
        &spec,
        "steps = 3",
    );
    let mut calls = vec![];
    let resumed = run
        .generate(&model, &sched, &device, &mut |d, t| calls.push((d, t)))
        .unwrap();
    assert_eq!(calls, vec![(12, 12)], "only the last batch is drawn again");
    assert_eq!(
        resumed, whole,
        "resumed images equal an uninterrupted run's"
    );
    assert!(!path.exists(), "a finished run removes its checkpoint");

    // a checkpoint cut to 7 images (not whole batches of 5) and a corrupt file are refused
    kill_after_10();
    let mut f = dmq_quant::QuantizedFile::load(&path).unwrap();
    let (shape, data) = f.float.get_mut("images").unwrap();
    shape[0] = 7;
    data.truncate(7 * 784);
    f.save(&path).unwrap();
    refused("model-a", &sched, &spec, "whole batches");
    std::fs::write(&path, b"not safetensors").unwrap();
    refused("model-a", &sched, &spec, "samples.safetensors");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn rows_upsert_and_render() {
    let dir = std::env::temp_dir().join(format!("dmq-report-{}", std::process::id()));
    let path = dir.join("t.json");
    let row = |method: &str, fd: f64| ResultRow {
        model: "unet-fmnist".into(),
        method: method.into(),
        w_bits: 4,
        a_bits: 8,
        steps: 20,
        samples: 1000,
        fd_test: fd,
        fd_fp: 1.0,
        psnr_fp: 20.0,
        ssim_fp: 0.5,
        class_acc: None,
        bitops: 2e9,
        model_bytes: 2048,
        wall_s: 3.0,
        command: "c".into(),
        commit: "x".into(),
        extra: serde_json::Value::Null,
    };
    upsert_row(&path, row("naive", 5.0)).unwrap();
    upsert_row(&path, row("qdiffusion", 4.0)).unwrap();
    let rows = upsert_row(&path, row("naive", 3.0)).unwrap();
    assert_eq!(rows.len(), 2);
    // the same configuration on another sample count is another row
    let fewer = ResultRow {
        samples: 500,
        ..row("naive", 6.0)
    };
    let with_fewer = upsert_row(&path.with_extension("n.json"), fewer.clone()).unwrap();
    assert_eq!(with_fewer.len(), 1);
    for r in &rows {
        upsert_row(&path.with_extension("n.json"), r.clone()).unwrap();
    }
    let both = read_rows(&path.with_extension("n.json")).unwrap();
    assert_eq!(both.len(), 3, "500- and 1000-sample naive rows coexist");
    assert!(both.contains(&fewer));
    assert_eq!(read_rows(&path).unwrap(), rows);
    assert_eq!(rows[0].fd_test, 3.0);
    let md = markdown_table(&rows);
    assert!(
        md.contains("| unet-fmnist | naive | 4 | 8 | 20 | 1000 | 3.00 |"),
        "{md}"
    );
    assert!(md.contains("| 2.000 | 2.0 |"), "{md}");
    // Regenerating a page keeps the notes below the marker, and only those.
    let page = dir.join("page.md");
    write_markdown(&page, "# T", &rows, "old footer").unwrap();
    let first = std::fs::read_to_string(&page).unwrap();
    assert!(!first.contains(NOTES_MARKER), "{first}");
    let notes = format!("{NOTES_MARKER}\n## Reading\nhand-written analysis\n");
    std::fs::write(&page, first + "\n" + &notes).unwrap();
    write_markdown(&page, "# T2", &rows[..1], "new footer").unwrap();
    let second = std::fs::read_to_string(&page).unwrap();
    assert!(second.starts_with("# T2\n"), "{second}");
    assert!(!second.contains("old footer") && second.contains("new footer"));
    assert!(second.ends_with(&notes), "{second}");
    assert_eq!(second.matches(NOTES_MARKER).count(), 1);
    std::fs::write(&path, b"[{").unwrap();
    assert!(read_rows(&path).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

/// Runs finishing at once (the UNet and DiT jobs of one example) must both keep their rows:
/// every upsert of 6 threads × 8 rows into one file survives.
#[test]
fn concurrent_upserts_keep_every_row() {
    let dir = std::env::temp_dir().join(format!("dmq-report-conc-{}", std::process::id()));
    let path = dir.join("r.json");
    std::thread::scope(|s| {
        for t in 0..6 {
            let path = &path;
            s.spawn(move || {
                for i in 0..8 {
                    let row = ResultRow {
                        model: format!("m{t}"),
                        method: format!("k{i}"),
                        w_bits: 4,
                        a_bits: 4,
                        steps: 20,
                        samples: 100,
                        fd_test: f64::from(t * 8 + i),
                        fd_fp: 0.0,
                        psnr_fp: 0.0,
                        ssim_fp: 0.0,
                        class_acc: None,
                        bitops: 0.0,
                        model_bytes: 0,
                        wall_s: 0.0,
                        command: "c".repeat(4000),
                        commit: "x".into(),
                        extra: serde_json::Value::Null,
                    };
                    upsert_row(path, row).unwrap();
                }
            });
        }
    });
    let rows = read_rows(&path).unwrap();
    let mut fds: Vec<f64> = rows.iter().map(|r| r.fd_test).collect();
    fds.sort_by(f64::total_cmp);
    assert_eq!(fds, (0..48).map(f64::from).collect::<Vec<_>>());
    std::fs::remove_dir_all(&dir).ok();
}
