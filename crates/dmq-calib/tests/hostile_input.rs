//! Calibration-set files with random contents: `CalibSet::load` returns a typed error naming
//! the file or a set that validates, never a panic, and an accepted set's batches build.

use burn::tensor::Device;
use dmq_calib::CalibSet;
use dmq_quant::QuantizedFile;
use proptest::prelude::*;

fn float_value() -> impl Strategy<Value = f32> {
    prop_oneof![
        Just(f32::NAN),
        Just(-1.0f32),
        Just(0.5f32),
        Just(1e30f32),
        Just(f32::INFINITY),
        (0u32..12).prop_map(|v| v as f32),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn random_calibration_files_never_panic(
        x_shape in proptest::collection::vec(0usize..4, 0..6),
        t in proptest::collection::vec(float_value(), 0..6),
        step in proptest::collection::vec(float_value(), 0..6),
        class in proptest::option::of(proptest::collection::vec(float_value(), 0..6)),
        timesteps in prop_oneof![
            Just("[900.0, 500.0, 100.0]".to_string()),
            Just("[]".to_string()),
            Just("[1e400]".to_string()),
            Just("{\"a\": 1}".to_string()),
            Just("[NaN]".to_string()),
        ],
        format in prop_oneof![Just("dmq.calibset.v1"), Just("other")],
    ) {
        let mut f = QuantizedFile::default();
        let numel: usize = x_shape.iter().product();
        f.float.insert("x".into(), (x_shape.clone(), vec![0.25; numel]));
        f.float.insert("t".into(), (vec![t.len()], t.clone()));
        f.float.insert("step".into(), (vec![step.len()], step.clone()));
        if let Some(c) = &class {
            f.float.insert("class".into(), (vec![c.len()], c.clone()));
        }
        f.metadata.insert("format".into(), format.into());
        f.metadata.insert("timesteps".into(), timesteps);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calib.safetensors");
        if f.save(&path).is_err() {
            return Ok(());
        }
        match CalibSet::load(&path) {
            Ok(set) => {
                // accepted: every entry builds a batch
                let idx: Vec<usize> = (0..set.len()).collect();
                set.batch(&idx, &Device::flex()).unwrap();
            }
            Err(e) => prop_assert!(e.to_string().contains("calib.safetensors"), "{}", e),
        }
    }
}

/// Reconstruction on a device without autodiff is a typed error, not burn's panic at the
/// first backward pass.
#[test]
fn reconstruction_without_autodiff_is_an_error() {
    use dmq_calib::{QuantConfig, ReconOptions, RecordOptions, qdiffusion};
    use dmq_models::scheduler::{DdimConfig, DdimScheduler};
    let device = Device::flex();
    let fp =
        dmq_models::unet::UNet2DModel::new(&dmq_models::defaults::tiny_unet().unwrap(), &device)
            .unwrap();
    let calib = CalibSet::record(
        &fp,
        &DdimScheduler::diffusers(&DdimConfig::new(), 2).unwrap(),
        &RecordOptions {
            trajectories: 2,
            steps_kept: 1,
            batch: 2,
            ..RecordOptions::default()
        },
        &device,
    )
    .unwrap();
    let e = qdiffusion(
        &fp,
        fp.clone(),
        &QuantConfig::preset("W8A8").unwrap(),
        &calib,
        &ReconOptions::default(),
        None,
        &device,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("autodiff"), "{e}");
}
