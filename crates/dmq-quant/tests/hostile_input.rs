//! Hostile input: every defect of issue 26 that concerns `dmq-quant` fed as a file, expecting
//! a typed error naming the file and the field, plus bounded property tests of the parser
//! (random metadata, truncations, byte flips) that must never panic.

use std::collections::HashMap;

use dmq_quant::file::write_atomic;
use dmq_quant::pack::{check_packed, packed_len};
use dmq_quant::{AffineParams, Limits, QuantError, QuantSpec, QuantizedFile, QuantizedTensor};
use proptest::prelude::*;
use safetensors::Dtype;
use safetensors::tensor::TensorView;

const ORIGIN: &str = "hostile.safetensors";

/// A safetensors buffer with our format tag, the given `dmq.q.*` metadata and tensors.
fn craft(meta: &[(&str, String)], tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let mut m = HashMap::new();
    m.insert("dmq.format".to_string(), "dmq-quantized/1".to_string());
    for (k, v) in meta {
        m.insert(k.to_string(), v.clone());
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, Some(m)).unwrap()
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn spec_json(bits: u64) -> String {
    format!(
        r#"{{"bits":{{"Int":{bits}}},"signed":false,"symmetric":false,"granularity":"PerTensor","rounding":"HalfToEven"}}"#
    )
}

/// One per-tensor quantized tensor `w` with the given bits, shape, codes and (Δ, z).
fn one_tensor(bits: u64, shape: &str, codes: Vec<u8>, delta: f32, zero: f32) -> Vec<u8> {
    craft(
        &[(
            "dmq.q.w",
            format!(r#"{{"shape":{shape},"spec":{}}}"#, spec_json(bits)),
        )],
        &[
            ("w.qcodes", Dtype::U8, vec![codes.len()], codes),
            ("w.delta", Dtype::F32, vec![1], f32s(&[delta])),
            ("w.zero", Dtype::F32, vec![1], f32s(&[zero])),
        ],
    )
}

fn err(bytes: &[u8]) -> QuantError {
    QuantizedFile::from_bytes(bytes, ORIGIN).unwrap_err()
}

fn names(e: &QuantError, field: &str) {
    let msg = e.to_string();
    assert!(msg.contains(ORIGIN), "error does not name the file: {msg}");
    assert!(msg.contains(field), "error does not name '{field}': {msg}");
}

/// Item 1: bits 0, 9, 33 and 300 in a spec read from a file are refused by name.
#[test]
fn spec_bits_out_of_range_are_refused() {
    for bits in [0u64, 9, 33, 300] {
        let e = err(&one_tensor(bits, "[2]", vec![0], 0.1, 0.0));
        assert!(
            matches!(e, QuantError::InvalidBits { bits: b, .. } if b as u64 == bits),
            "{bits}: {e}"
        );
        names(&e, "dmq.q.w.spec.bits");
        // Deserializing a spec anywhere else refuses it too.
        assert!(serde_json::from_str::<QuantSpec>(&spec_json(bits)).is_err());
        let e = QuantSpec::from_json(&spec_json(bits), "cfg.json", "a.spec").unwrap_err();
        assert!(matches!(e, QuantError::InvalidBits { .. }), "{e}");
        assert!(e.to_string().contains("cfg.json") && e.to_string().contains("a.spec.bits"));
    }
    let ok = QuantSpec::from_json(&spec_json(3), "cfg.json", "a.spec").unwrap();
    assert_eq!(ok.int_range(), Some((0, 7)));
    let e = QuantSpec::from_json("{\"bits\": 4}", "cfg.json", "a.spec").unwrap_err();
    assert!(matches!(e, QuantError::InvalidField { ref field, .. } if field == "a.spec"));
    let group0 = spec_json(4).replace("\"PerTensor\"", r#"{"PerGroup":{"axis":0,"size":0}}"#);
    let e = QuantSpec::from_json(&group0, "cfg.json", "a.spec").unwrap_err();
    assert!(matches!(e, QuantError::BadGroupSize { .. }), "{e}");
}

/// Item 3: a shape whose product wraps (`[2^61]`, `[2^32, 2^32]`) or exceeds the limits is
/// refused before anything is allocated.
#[test]
fn huge_and_wrapping_shapes_are_refused() {
    let e = err(&one_tensor(4, "[2305843009213693952]", vec![], 0.1, 0.0));
    assert!(
        matches!(&e, QuantError::LimitExceeded { field, .. } if field == "dmq.q.w.shape[0]"),
        "{e}"
    );
    names(&e, "dmq.q.w.shape[0]");
    let e = err(&one_tensor(1, "[4294967296, 4294967296]", vec![], 0.1, 0.0));
    assert!(matches!(e, QuantError::LimitExceeded { .. }), "{e}");
    let e = err(&one_tensor(1, "[65536, 65536]", vec![], 0.1, 0.0));
    assert!(
        matches!(&e, QuantError::LimitExceeded { field, what, .. }
            if field == "dmq.q.w.shape" && what.contains("elements")),
        "{e}"
    );
    let e = err(&one_tensor(1, "[1,1,1,1,1,1,1,1,1]", vec![0], 0.1, 0.0));
    assert!(matches!(e, QuantError::LimitExceeded { .. }), "{e}");
    // Limits are overridable: a tight limit refuses a file the default accepts.
    let ok = one_tensor(8, "[16]", vec![0; 16], 0.1, 0.0);
    QuantizedFile::from_bytes(&ok, ORIGIN).unwrap();
    let tight = Limits {
        max_dim: 8,
        ..Limits::DEFAULT
    };
    let e = QuantizedFile::from_bytes_with_limits(&ok, ORIGIN, &tight).unwrap_err();
    assert!(
        matches!(e, QuantError::LimitExceeded { limit: 8, .. }),
        "{e}"
    );
    // A zero dimension is a valid, empty tensor.
    let empty =
        QuantizedFile::from_bytes(&one_tensor(4, "[0, 16777216]", vec![], 0.1, 0.0), ORIGIN);
    assert_eq!(
        empty.unwrap().quantized["w"].dequantize().unwrap(),
        Vec::<f32>::new()
    );
    // The codes length is computed without overflow.
    assert_eq!(packed_len(usize::MAX, 1), usize::MAX / 8 + 1);
}

/// Item 10: codes ≥ 2^b of a 3-bit tensor (stored as nibbles), non-zero padding bits, a
/// float tensor named like a quantized one, and a finite Δ that dequantizes to inf.
#[test]
fn codes_padding_name_clashes_and_huge_delta_are_refused() {
    // 3-bit codes, stored 4 bits each: nibble 0xF = 15 ≥ 8.
    let e = err(&one_tensor(3, "[2]", vec![0xF1], 0.1, 0.0));
    assert!(
        matches!(&e, QuantError::InvalidField { field, reason, .. }
            if field == "w.qcodes" && reason.contains("code 15 at element 1")),
        "{e}"
    );
    names(&e, "w.qcodes");
    // 4-bit, 3 codes: the high nibble of the second byte is padding and must be zero.
    let e = err(&one_tensor(4, "[3]", vec![0x21, 0x13], 0.1, 0.0));
    assert!(
        matches!(&e, QuantError::InvalidField { field, reason, .. }
            if field == "w.qcodes" && reason.contains("padding")),
        "{e}"
    );
    // 1-bit, 3 codes: bits 3..8 are padding.
    let e = err(&one_tensor(1, "[3]", vec![0b1000_0101], 0.1, 0.0));
    assert!(matches!(e, QuantError::InvalidField { .. }), "{e}");
    assert!(check_packed(&[0b0000_0101], 1, 3).is_ok());
    // A float tensor with the same name as the quantized tensor.
    let clash = craft(
        &[(
            "dmq.q.w",
            format!(r#"{{"shape":[2],"spec":{}}}"#, spec_json(8)),
        )],
        &[
            ("w.qcodes", Dtype::U8, vec![2], vec![1, 2]),
            ("w.delta", Dtype::F32, vec![1], f32s(&[0.1])),
            ("w.zero", Dtype::F32, vec![1], f32s(&[0.0])),
            ("w", Dtype::F32, vec![2], f32s(&[1.0, 2.0])),
        ],
    );
    let e = err(&clash);
    assert!(
        matches!(&e, QuantError::InvalidField { field, .. } if field == "w"),
        "{e}"
    );
    names(&e, "'w'");
    // Δ = 3e38 is finite, but code 255 dequantizes to 7.6e40 = inf.
    let e = err(&one_tensor(8, "[1]", vec![255], 3e38, 0.0));
    assert!(
        matches!(e, QuantError::DequantOverflow { qmax: 255, .. }),
        "{e}"
    );
    names(&e, "w.delta");
    // So does a huge zero point.
    let e = err(&one_tensor(8, "[1]", vec![0], 1e30, -1e9));
    assert!(matches!(e, QuantError::DequantOverflow { .. }), "{e}");
    // Δ count that does not match the granularity.
    let wrong = craft(
        &[(
            "dmq.q.w",
            format!(r#"{{"shape":[2],"spec":{}}}"#, spec_json(8)),
        )],
        &[
            ("w.qcodes", Dtype::U8, vec![2], vec![1, 2]),
            ("w.delta", Dtype::F32, vec![3], f32s(&[0.1; 3])),
            ("w.zero", Dtype::F32, vec![3], f32s(&[0.0; 3])),
        ],
    );
    let e = err(&wrong);
    assert!(
        matches!(&e, QuantError::InvalidField { field, .. } if field == "w.delta"),
        "{e}"
    );
}

/// A small valid file that the property tests mutate.
fn sample_bytes() -> Vec<u8> {
    let params = AffineParams {
        spec: QuantSpec::int(3).unwrap().per_channel(0),
        delta: vec![0.1, 0.2],
        zero: vec![3.0, 4.0],
    };
    let q = QuantizedTensor::from_codes(&[1, 7, 0, 5, 2, 3], &[2, 3], params).unwrap();
    let mut f = QuantizedFile::default();
    f.quantized.insert("blk.conv".into(), q);
    f.float
        .insert("blk.bias".into(), (vec![2], vec![0.5, -1.0]));
    f.metadata.insert("model".into(), "t".into());
    f.to_bytes().unwrap()
}

/// Anything that loads must dequantize to finite values without panicking.
fn exercise(f: &QuantizedFile) {
    for q in f.quantized.values() {
        let v = q.dequantize().expect("a loaded tensor dequantizes");
        assert!(
            v.iter().all(|x| x.is_finite()),
            "non-finite dequantized value"
        );
    }
}

fn granularity_json() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"PerTensor\"".to_string()),
        (0usize..4).prop_map(|a| format!(r#"{{"PerChannel":{{"axis":{a}}}}}"#)),
        (0usize..4, 0usize..5)
            .prop_map(|(a, s)| format!(r#"{{"PerGroup":{{"axis":{a},"size":{s}}}}}"#)),
    ]
}

fn dim() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..6,
        Just(1u64 << 24),
        Just(1u64 << 32),
        Just(1u64 << 61),
        Just(u64::MAX)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// 256 cases: random metadata (bits 0..255, huge and zero dimensions, every
    /// granularity, signedness, symmetry) over random codes, Δ and z: the parser returns a
    /// typed error or a file that dequantizes to finite values; it never panics.
    #[test]
    fn random_metadata_never_panics(
        bits in 0u64..256,
        shape in prop::collection::vec(dim(), 0..5),
        gran in granularity_json(),
        signed in any::<bool>(),
        symmetric in any::<bool>(),
        codes in prop::collection::vec(any::<u8>(), 0..16),
        n_params in 0usize..6,
        delta in prop_oneof![Just(0.1f32), Just(3e38f32), Just(-1.0f32), Just(f32::NAN), 1e-6f32..10.0],
        zero in prop_oneof![Just(0.0f32), Just(-1e30f32), -10.0f32..10.0],
    ) {
        let shape_json = serde_json::to_string(&shape).unwrap();
        let spec = format!(
            r#"{{"bits":{{"Int":{bits}}},"signed":{signed},"symmetric":{symmetric},"granularity":{gran},"rounding":"HalfToEven"}}"#
        );
        let bytes = craft(
            &[("dmq.q.w", format!(r#"{{"shape":{shape_json},"spec":{spec}}}"#))],
            &[
                ("w.qcodes", Dtype::U8, vec![codes.len()], codes.clone()),
                ("w.delta", Dtype::F32, vec![n_params], f32s(&vec![delta; n_params])),
                ("w.zero", Dtype::F32, vec![n_params], f32s(&vec![zero; n_params])),
            ],
        );
        if let Ok(f) = QuantizedFile::from_bytes(&bytes, ORIGIN) {
            exercise(&f);
        }
    }

    /// 256 cases: every truncation point and one flipped byte of a valid file give a typed
    /// error or a file that dequantizes to finite values.
    #[test]
    fn truncations_and_byte_flips_never_panic(cut in 0usize..2000, pos in 0usize..2000, flip in 1u8..=255) {
        let bytes = sample_bytes();
        let cut = cut % (bytes.len() + 1);
        match QuantizedFile::from_bytes(&bytes[..cut], ORIGIN) {
            Ok(f) => exercise(&f),
            Err(e) => prop_assert!(e.to_string().contains(ORIGIN), "{}", e),
        }
        let mut flipped = bytes.clone();
        let pos = pos % flipped.len();
        flipped[pos] ^= flip;
        if let Ok(f) = QuantizedFile::from_bytes(&flipped, ORIGIN) {
            exercise(&f);
        }
    }

    /// 256 cases: random shapes against the limits: accepted shapes have the element count
    /// the overflow-checked product gives and stay under `max_tensor_elems`.
    #[test]
    fn limits_check_shape_is_total(shape in prop::collection::vec(dim(), 0..10)) {
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        match Limits::DEFAULT.check_shape(&shape, ORIGIN, "s") {
            Ok(n) => {
                prop_assert_eq!(Some(n), dmq_quant::limits::checked_numel(&shape));
                prop_assert!(n as u64 <= Limits::DEFAULT.max_tensor_elems);
            }
            Err(e) => {
                let limit = matches!(e, QuantError::LimitExceeded { .. });
                prop_assert!(limit, "{}", e);
            }
        }
    }
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("dmq-hostile-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn temps_in(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect()
}

/// Item 8: a symlink planted at the temp names the old code used is never followed.
#[cfg(unix)]
#[test]
fn write_atomic_never_follows_a_planted_symlink() {
    let dir = temp_dir("symlink");
    let victim = dir.join("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    let target = dir.join("model.safetensors");
    for n in 0..64 {
        let planted = dir.join(format!(".model.safetensors.tmp-{}-{n}", std::process::id()));
        std::os::unix::fs::symlink(&victim, planted).unwrap();
    }
    write_atomic(&target, b"new content").unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(std::fs::read(&target).unwrap(), b"new content");
    assert!(
        std::fs::symlink_metadata(&target)
            .unwrap()
            .file_type()
            .is_file()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Item 8: a write interrupted at each stage leaves the previous file loadable, and a
/// failed write leaves no temporary file behind.
#[test]
fn interrupted_or_failed_writes_keep_the_previous_file() {
    let dir = temp_dir("interrupt");
    let path = dir.join("model.safetensors");
    let old = sample_bytes();
    write_atomic(&path, &old).unwrap();
    assert!(temps_in(&dir).is_empty());
    let new = {
        let mut f = QuantizedFile::from_bytes(&old, "old").unwrap();
        f.metadata.insert("model".into(), "new".into());
        f.to_bytes().unwrap()
    };
    // A crash after the temp file was created, then after part of it was written, then
    // after all of it was written but before the rename: the target is untouched.
    for stage in [0, new.len() / 2, new.len()] {
        let stale = dir.join(format!(".model.safetensors.tmp-crash-{stage}"));
        std::fs::write(&stale, &new[..stage]).unwrap();
        let f = QuantizedFile::load(&path).unwrap();
        assert_eq!(f.metadata["model"], "t");
    }
    // The next save succeeds next to the leftovers.
    write_atomic(&path, &new).unwrap();
    assert_eq!(QuantizedFile::load(&path).unwrap().metadata["model"], "new");
    for n in temps_in(&dir) {
        std::fs::remove_file(dir.join(n)).unwrap();
    }
    // A write that fails at the rename (the target is a non-empty directory) is an error
    // naming the path, and removes its temporary file.
    let blocked = dir.join("blocked");
    std::fs::create_dir_all(blocked.join("inside")).unwrap();
    let e = write_atomic(&blocked, &new).unwrap_err();
    assert!(
        matches!(&e, QuantError::Io { path, .. } if path == &blocked),
        "{e}"
    );
    assert!(temps_in(&dir).is_empty(), "{:?}", temps_in(&dir));
    assert_eq!(QuantizedFile::load(&path).unwrap().metadata["model"], "new");
    // No file name at all.
    assert!(matches!(
        write_atomic(std::path::Path::new("/"), b"x"),
        Err(QuantError::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
