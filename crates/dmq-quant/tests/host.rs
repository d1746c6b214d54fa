//! Backend-independent tests: range initialisers, packing, the file format and input errors.

use dmq_quant::pack::{pack_codes, packed_len, unpack_codes};
use dmq_quant::{
    AffineParams, BetaSchedule, QuantError, QuantSpec, QuantizedFile, QuantizedTensor, RangeInit,
    RunningRange, init_params,
};

#[test]
fn max_init_matches_closed_form() {
    // Asymmetric: Δ = (max − min)/(2^b − 1) with 0 in range, z = round(−min/Δ).
    let p = init_params(
        &[-0.5, 0.25, 1.0],
        &[3],
        &QuantSpec::int(4).unwrap(),
        &RangeInit::Max,
    )
    .unwrap();
    assert!((p.delta[0] - 0.1).abs() < 1e-7);
    assert_eq!(p.zero[0], 5.0);
    // All-positive data: min clamps to 0.
    let p = init_params(
        &[0.5, 3.0],
        &[2],
        &QuantSpec::int(8).unwrap(),
        &RangeInit::Max,
    )
    .unwrap();
    assert!((p.delta[0] - 3.0 / 255.0).abs() < 1e-7);
    assert_eq!(p.zero[0], 0.0);
    // Symmetric signed: Δ = absmax/(2^(b−1) − 1).
    let p = init_params(
        &[-2.0, 1.0],
        &[2],
        &QuantSpec::signed_symmetric(4).unwrap(),
        &RangeInit::Max,
    )
    .unwrap();
    assert!((p.delta[0] - 2.0 / 7.0).abs() < 1e-7);
    assert_eq!(p.zero[0], 0.0);
    // Per channel on axis 1 of [2, 2].
    let spec = QuantSpec::int(2).unwrap().per_channel(1);
    let p = init_params(&[1.0, -3.0, 2.0, 0.0], &[2, 2], &spec, &RangeInit::Max).unwrap();
    assert!((p.delta[0] - 2.0 / 3.0).abs() < 1e-7 && (p.delta[1] - 1.0).abs() < 1e-7);
    // Symmetric signed 1-bit has no positive level: a typed error.
    let spec = QuantSpec::signed_symmetric(1).unwrap();
    assert!(matches!(
        init_params(&[1.0], &[1], &spec, &RangeInit::Max),
        Err(QuantError::Unsupported(_))
    ));
}

/// Brute-force L_p search over the same candidate grid, written independently.
#[test]
fn mse_search_picks_the_best_candidate() {
    let data: Vec<f32> = (0..200)
        .map(|i| ((i as f32 * 0.37).sin() * 3.0).powi(3) / 9.0)
        .collect();
    let spec = QuantSpec::int(3).unwrap();
    let p = init_params(&data, &[200], &spec, &RangeInit::mse()).unwrap();
    let (lo, hi) = data
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let score = |d: f32, z: f32| -> f64 {
        data.iter()
            .map(|&x| {
                let q = ((x / d).round_ties_even() + z).clamp(0.0, 7.0);
                ((x - (q - z) * d).abs() as f64).powf(2.4)
            })
            .sum::<f64>()
    };
    let best = (0..80)
        .map(|i| {
            let s = 1.0 - 0.01 * i as f32;
            let d = (hi * s - lo * s) / 7.0;
            (score(d, (-lo * s / d).round_ties_even()), d)
        })
        .fold((f64::MAX, 0.0), |a, b| if b.0 < a.0 { b } else { a });
    assert!(
        (p.delta[0] - best.1).abs() < 1e-7,
        "{} vs {}",
        p.delta[0],
        best.1
    );
    // The search never does worse than plain max init under its own metric.
    let m = init_params(&data, &[200], &spec, &RangeInit::Max).unwrap();
    assert!(score(p.delta[0], p.zero[0]) <= score(m.delta[0], m.zero[0]) + 1e-9);
}

#[test]
fn percentile_clips_outliers() {
    // Uniform bulk in [−0.5, 0.5) plus three outliers at 3.0: clipping at the 0.999 quantile
    // costs 3·2.5²/N in MSE but shrinks Δ 3.5×, so the search must clip.
    let mut data: Vec<f32> = (0..10_000).map(|i| (i as f32 / 10_000.0) - 0.5).collect();
    for i in [17, 4000, 9000] {
        data[i] = 3.0;
    }
    let spec = QuantSpec::int(4).unwrap();
    let p = init_params(&data, &[10_000], &spec, &RangeInit::percentile()).unwrap();
    let m = init_params(&data, &[10_000], &spec, &RangeInit::Max).unwrap();
    assert!((m.delta[0] - 3.4999 / 15.0).abs() < 1e-4);
    // torch.quantile(…, 0.001) and (…, 0.999) of this data: −0.4989 and 0.4991 (hand count).
    assert!(
        (p.delta[0] - (0.4991 + 0.4989) / 15.0).abs() < 2e-4,
        "{}",
        p.delta[0]
    );
    assert!(
        init_params(
            &data,
            &[10_000],
            &spec,
            &RangeInit::Percentile {
                quantiles: vec![0.2]
            }
        )
        .is_err()
    );
}

#[test]
fn lsq_init_and_running_range() {
    let spec = QuantSpec::signed_symmetric(8).unwrap();
    let p = init_params(&[1.0, -3.0], &[2], &spec, &RangeInit::Lsq).unwrap();
    assert!((p.delta[0] - 2.0 * 2.0 / 127f32.sqrt()).abs() < 1e-6);
    let mut r = RunningRange::new(QuantSpec::int(8).unwrap(), 0.95).unwrap();
    assert!(r.params().is_err());
    r.observe(&[-1.0, 1.0], &[2]).unwrap();
    r.observe(&[-3.0, 5.0], &[2]).unwrap();
    let (lo, hi) = r.range();
    assert!((lo[0] - (-1.1)).abs() < 1e-6 && (hi[0] - 1.2).abs() < 1e-6);
    assert!(r.observe(&[f32::NAN, 0.0], &[2]).is_err());
    assert!(RunningRange::new(QuantSpec::int(8).unwrap(), 1.5).is_err());
}

#[test]
fn nan_in_calibration_data_is_an_error_with_its_index() {
    let err = init_params(
        &[0.0, 1.0, f32::NAN],
        &[3],
        &QuantSpec::int(8).unwrap(),
        &RangeInit::Max,
    )
    .unwrap_err();
    match err {
        QuantError::NonFinite { index, .. } => assert_eq!(index, 2),
        e => panic!("{e}"),
    }
}

#[test]
fn bad_bits_and_scales_are_typed_errors() {
    for b in [0, 9, 32] {
        assert!(
            matches!(QuantSpec::int(b), Err(QuantError::InvalidBits { bits, .. }) if bits == b)
        );
    }
    let spec = QuantSpec::int(4).unwrap();
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let p = AffineParams {
            spec,
            delta: vec![0.1, bad],
            zero: vec![0.0, 0.0],
        };
        assert!(matches!(
            p.validate("t"),
            Err(QuantError::InvalidScale { index: 1, .. })
        ));
    }
    let sym = AffineParams {
        spec: QuantSpec::signed_symmetric(4).unwrap(),
        delta: vec![0.1],
        zero: vec![1.0],
    };
    assert!(sym.validate("t").is_err());
    let g = QuantSpec::int(4).unwrap().per_group(1, 3);
    assert!(matches!(
        g.num_params(&[2, 8]),
        Err(QuantError::BadGroupSize { .. })
    ));
    assert!(matches!(
        QuantSpec::int(4)
            .unwrap()
            .per_channel(2)
            .num_params(&[2, 8]),
        Err(QuantError::AxisOutOfRange { .. })
    ));
}

#[test]
fn packing_layout_is_lsb_first() {
    // 4-bit: element 0 in the low nibble.
    assert_eq!(pack_codes(&[0x1, 0xA, 0x3], 4).unwrap(), vec![0xA1, 0x03]);
    // 2-bit: offsets 0, 2, 4, 6.
    assert_eq!(
        pack_codes(&[1, 2, 3, 0, 3], 2).unwrap(),
        vec![0b00_11_10_01, 0b11]
    );
    // 1-bit.
    assert_eq!(
        pack_codes(&[1, 0, 1, 1, 0, 0, 0, 1, 1], 1).unwrap(),
        vec![0b1000_1101, 1]
    );
    // 3-bit codes are stored in nibbles.
    assert_eq!(packed_len(5, 3), 3);
    assert!(pack_codes(&[16], 4).is_err());
    assert!(unpack_codes(&[0xff], 4, 3).is_err());
    assert!(pack_codes(&[0], 0).is_err());
}

fn sample_file() -> QuantizedFile {
    let spec = QuantSpec::int(4).unwrap().per_channel(0);
    let params = AffineParams {
        spec,
        delta: vec![0.1, 0.05],
        zero: vec![8.0, 7.0],
    };
    let data = [0.3f32, -0.2, 0.5, 0.11, -0.7, 0.0];
    let q = QuantizedTensor::quantize(&data, &[2, 3], &params).unwrap();
    let bin = QuantizedTensor::from_codes(
        &[1, 0, 1],
        &[3, 1],
        AffineParams {
            spec: QuantSpec::int(1).unwrap().per_channel(0),
            delta: vec![0.2, 0.4, 0.6],
            zero: vec![0.5; 3],
        },
    )
    .unwrap();
    let mut f = QuantizedFile::default();
    f.quantized
        .insert("down_blocks.0.resnets.0.conv1".into(), q);
    f.quantized.insert("mid.binary".into(), bin);
    f.float
        .insert("conv_in.bias".into(), (vec![2], vec![0.5, -0.25]));
    f.metadata.insert("model".into(), "unet-fmnist".into());
    f
}

#[test]
fn file_round_trip_is_exact() {
    let dir = std::env::temp_dir().join(format!("dmq-quant-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    let f = sample_file();
    f.save(&path).unwrap();
    let g = QuantizedFile::load(&path).unwrap();
    assert_eq!(f, g);
    let q = &g.quantized["down_blocks.0.resnets.0.conv1"];
    assert_eq!(q.int_values().unwrap(), vec![11, 6, 13, 9, 0, 7]);
    assert_eq!(
        g.quantized["mid.binary"].dequantize().unwrap(),
        vec![0.1, -0.2, 0.3]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn content_hash_survives_save_load_and_sees_every_field() {
    let f = sample_file();
    let h = f.content_hash().unwrap();
    let dir = std::env::temp_dir().join(format!("dmq-quant-hash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    f.save(&path).unwrap();
    assert_eq!(
        QuantizedFile::load(&path).unwrap().content_hash().unwrap(),
        h
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let name = "down_blocks.0.resnets.0.conv1";
    let mut changes: Vec<(&str, QuantizedFile)> = Vec::new();
    let mut g = f.clone();
    g.quantized.get_mut(name).unwrap().packed[0] ^= 1;
    changes.push(("one code bit", g));
    let mut g = f.clone();
    g.quantized.get_mut(name).unwrap().params.delta[1] = 0.050001;
    changes.push(("one Δ", g));
    let mut g = f.clone();
    g.quantized.get_mut(name).unwrap().params.zero[0] = 9.0;
    changes.push(("one z", g));
    let mut g = f.clone();
    g.quantized.get_mut(name).unwrap().shape = vec![3, 2];
    changes.push(("the shape", g));
    let mut g = f.clone();
    g.float.get_mut("conv_in.bias").unwrap().1[1] = -0.125;
    changes.push(("a float value", g));
    let mut g = f.clone();
    let q = g.quantized.remove(name).unwrap();
    g.quantized
        .insert("down_blocks.0.resnets.0.conv2".into(), q);
    changes.push(("a layer name", g));
    let mut g = f.clone();
    g.metadata.insert("model".into(), "dit-fmnist".into());
    changes.push(("metadata", g));
    for (what, g) in changes {
        assert_ne!(
            g.content_hash().unwrap(),
            h,
            "changing {what} must change the hash"
        );
    }
}

#[test]
fn truncated_malformed_and_missing_files_are_errors() {
    let bytes = sample_file().to_bytes().unwrap();
    for cut in [0, 7, 8, 50, bytes.len() / 2, bytes.len() - 1] {
        let e = QuantizedFile::from_bytes(&bytes[..cut], "cut.safetensors").unwrap_err();
        assert!(matches!(e, QuantError::Malformed { .. }), "cut {cut}: {e}");
        assert!(e.to_string().contains("cut.safetensors"));
    }
    // A plain safetensors file without our metadata.
    let plain = safetensors::serialize(
        [(
            "w",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &[0, 0, 0, 0])
                .unwrap(),
        )],
        None,
    )
    .unwrap();
    assert!(
        QuantizedFile::from_bytes(&plain, "plain")
            .unwrap_err()
            .to_string()
            .contains("dmq.format")
    );
    // Corrupt a scale to zero: validated on load.
    let mut f = sample_file();
    f.quantized.get_mut("mid.binary").unwrap().params.delta[1] = 0.0;
    let e = QuantizedFile::from_bytes(&f.to_bytes().unwrap(), "zero-scale").unwrap_err();
    assert!(e.to_string().contains("mid.binary"), "{e}");
    let e = QuantizedFile::load("/nonexistent/dir/model.safetensors").unwrap_err();
    assert!(matches!(e, QuantError::Io { .. }) && e.to_string().contains("/nonexistent/dir"));
}

#[test]
fn beta_schedule_matches_the_reference_formula() {
    let s = BetaSchedule::reference(1000);
    assert_eq!(s.beta(0), None);
    assert_eq!(s.beta(199), None);
    assert_eq!(s.beta(200), Some(20.0));
    assert!((s.beta(600).unwrap() - 11.0).abs() < 1e-9);
    assert!((s.beta(1000).unwrap() - 2.0).abs() < 1e-9);
}

/// 16-bit tensors (SVDQuant's branch) round-trip exactly when their values are f16 values,
/// are stored at 2 bytes per value, and a non-finite f16 in a file is refused naming the
/// tensor; a name used twice is refused when writing.
#[test]
fn half_tensors_round_trip_and_are_checked() {
    let mut f = sample_file();
    let vals: Vec<f32> = [0.5f32, -1.25, 3.0e-3, 65504.0]
        .iter()
        .map(|&v| dmq_quant::file::round_to_f16(v))
        .collect();
    f.half
        .insert("up.0.low_rank.down".into(), (vec![2, 2], vals.clone()));
    let bytes = f.to_bytes().unwrap();
    let back = QuantizedFile::from_bytes(&bytes, "t.safetensors").unwrap();
    assert_eq!(back, f);
    assert_eq!(back.half["up.0.low_rank.down"].1, vals);
    assert_eq!(
        back.payload_bytes() - sample_file().payload_bytes(),
        2 * vals.len()
    );
    // an f16 infinity (0x7c00) planted in the stored bytes
    let pos = bytes
        .windows(4)
        .position(|w| w == half_bytes(vals[0], vals[1]))
        .expect("the tensor's bytes");
    let mut bad = bytes.clone();
    bad[pos..pos + 2].copy_from_slice(&0x7c00u16.to_le_bytes());
    let e = QuantizedFile::from_bytes(&bad, "t.safetensors")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("t.safetensors") && e.contains("up.0.low_rank.down"),
        "{e}"
    );
    // one name, two kinds
    let mut twice = f.clone();
    twice
        .float
        .insert("up.0.low_rank.down".into(), (vec![1], vec![0.0]));
    assert!(twice.to_bytes().is_err());
}

fn half_bytes(a: f32, b: f32) -> Vec<u8> {
    let h = |v: f32| {
        // f16 bits of an exactly representable normal value
        let bits = v.to_bits();
        let sign = ((bits >> 16) & 0x8000) as u16;
        let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
        let mant = ((bits >> 13) & 0x3ff) as u16;
        sign | ((exp as u16) << 10) | mant
    };
    [h(a).to_le_bytes(), h(b).to_le_bytes()].concat()
}
