//! Fashion-MNIST loader tests on the committed 64-image test subset
//! (`tests/fixtures/fashion-mnist-subset`, written by
//! `scripts/fixtures/fashion_mnist_subset.py`) and on corrupted copies of it.

// Without any backend feature the per-backend bodies are unused.
#![cfg_attr(
    not(any(feature = "flex", feature = "ndarray", feature = "wgpu")),
    allow(dead_code, unused_imports)
)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use dmq_eval::DataError;
use dmq_eval::data::fashion_mnist::{
    self, CLASS_NAMES, DEBIAN_PACKAGE, FashionMnist, Padding, Split, class_name, load_split,
    read_idx_images, read_idx_labels,
};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

/// Labels of the first 64 Fashion-MNIST test items.
const SUBSET_LABELS: [u8; 64] = [
    9, 2, 1, 1, 6, 1, 4, 6, 5, 7, 4, 5, 7, 3, 4, 1, 2, 4, 8, 0, 2, 5, 7, 9, 1, 4, 6, 0, 9, 3, 8, 8,
    3, 3, 8, 0, 7, 5, 7, 9, 6, 1, 3, 7, 6, 7, 2, 1, 2, 2, 4, 4, 5, 8, 2, 2, 8, 4, 8, 0, 7, 7, 8, 5,
];

/// Pixel sums of the first four test images.
const SUBSET_PIXEL_SUMS: [u64; 4] = [33456, 100994, 51520, 35377];

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fashion-mnist-subset")
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("dmq-eval-{}-{}", std::process::id(), name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn write_gz(path: &Path, bytes: &[u8]) {
    let mut enc = GzEncoder::new(std::fs::File::create(path).unwrap(), Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap();
}

/// The raw (decompressed) subset files: (images, labels).
fn raw_subset() -> (Vec<u8>, Vec<u8>) {
    let dir = fixture_dir();
    (
        gunzip(&dir.join("t10k-images-idx3-ubyte.gz")),
        gunzip(&dir.join("t10k-labels-idx1-ubyte.gz")),
    )
}

/// Writes a test split (gzipped) with the given raw contents into a temp dir.
fn split_dir(name: &str, images: &[u8], labels: &[u8]) -> TempDir {
    let dir = TempDir::new(name);
    write_gz(&dir.path().join("t10k-images-idx3-ubyte.gz"), images);
    write_gz(&dir.path().join("t10k-labels-idx1-ubyte.gz"), labels);
    dir
}

fn set_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

#[test]
fn subset_loads_with_known_labels() {
    let test = load_split(fixture_dir(), Split::Test).unwrap();
    assert_eq!(test.split(), Split::Test);
    assert_eq!(test.len(), 64);
    assert_eq!(test.labels(), &SUBSET_LABELS);
    assert_eq!(test.images().len(), 64 * 28 * 28);
    for (i, &sum) in SUBSET_PIXEL_SUMS.iter().enumerate() {
        let s: u64 = test.image(i).unwrap().iter().map(|&p| u64::from(p)).sum();
        assert_eq!(s, sum, "pixel sum of image {i}");
    }
    assert_eq!(test.label(0), Some(9));
    assert_eq!(test.label(64), None);
    assert!(test.image(64).is_none());
    assert_eq!(class_name(test.label(0).unwrap()), Some("Ankle boot"));
    assert_eq!(class_name(1), Some("Trouser"));
    assert_eq!(class_name(10), None);
    assert_eq!(CLASS_NAMES.len(), 10);
    let head = test.take(10);
    assert_eq!(head.len(), 10);
    assert_eq!(head.labels(), &SUBSET_LABELS[..10]);
}

#[test]
fn plain_files_load_like_gzipped() {
    let (images, labels) = raw_subset();
    let dir = TempDir::new("plain");
    std::fs::write(dir.path().join("t10k-images-idx3-ubyte"), &images).unwrap();
    std::fs::write(dir.path().join("t10k-labels-idx1-ubyte"), &labels).unwrap();
    let plain = load_split(dir.path(), Split::Test).unwrap();
    let gz = load_split(fixture_dir(), Split::Test).unwrap();
    assert_eq!(plain, gz);
    let idx = read_idx_images(dir.path().join("t10k-images-idx3-ubyte")).unwrap();
    assert_eq!((idx.count, idx.rows, idx.cols), (64, 28, 28));
    assert_eq!(
        read_idx_labels(dir.path().join("t10k-labels-idx1-ubyte")).unwrap(),
        SUBSET_LABELS
    );
}

#[test]
fn missing_directory_names_package_and_dir() {
    let dir = Path::new("/nonexistent/dmq-eval/fashion-mnist");
    let err = FashionMnist::load_from(dir).unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(DEBIAN_PACKAGE), "{msg}");
    assert!(msg.contains("dataset-fashion-mnist"), "{msg}");
    assert!(msg.contains("/nonexistent/dmq-eval/fashion-mnist"), "{msg}");
    assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");
}

#[test]
fn missing_train_split_is_not_found() {
    // The fixture holds only the test split.
    let err = FashionMnist::load_from(fixture_dir()).unwrap_err();
    match err {
        DataError::NotFound { file, dir, package } => {
            assert_eq!(file, "train-images-idx3-ubyte");
            assert_eq!(dir, fixture_dir());
            assert_eq!(package, "dataset-fashion-mnist");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn bad_magic_is_rejected() {
    let (images, mut labels) = raw_subset();
    set_u32(&mut labels, 0, 2051); // an image magic in the label file
    let dir = split_dir("magic-labels", &images, &labels);
    match load_split(dir.path(), Split::Test).unwrap_err() {
        DataError::BadMagic {
            kind,
            expected,
            found,
            ..
        } => {
            assert_eq!((kind, expected, found), ("labels", 2049, 2051));
        }
        other => panic!("unexpected {other:?}"),
    }

    let (mut images, labels) = raw_subset();
    set_u32(&mut images, 0, 0xdead_beef);
    let dir = split_dir("magic-images", &images, &labels);
    let err = load_split(dir.path(), Split::Test).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::BadMagic {
                expected: 2051,
                found: 0xdead_beef,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn truncated_files_are_rejected() {
    let (images, labels) = raw_subset();
    // Payload shorter than the header promises.
    let dir = split_dir("trunc-images", &images[..images.len() - 100], &labels);
    match load_split(dir.path(), Split::Test).unwrap_err() {
        DataError::Truncated {
            expected, actual, ..
        } => {
            assert_eq!(expected, 16 + 64 * 784);
            assert_eq!(actual, 16 + 64 * 784 - 100);
        }
        other => panic!("unexpected {other:?}"),
    }
    // Header cut short.
    let dir = split_dir("trunc-header", &images, &labels[..6]);
    let err = load_split(dir.path(), Split::Test).unwrap_err();
    assert!(matches!(err, DataError::Truncated { .. }), "{err:?}");
    // A gzip stream cut in the middle surfaces as an I/O error.
    let dir = TempDir::new("trunc-gz");
    let gz = std::fs::read(fixture_dir().join("t10k-images-idx3-ubyte.gz")).unwrap();
    std::fs::write(
        dir.path().join("t10k-images-idx3-ubyte.gz"),
        &gz[..gz.len() / 2],
    )
    .unwrap();
    write_gz(&dir.path().join("t10k-labels-idx1-ubyte.gz"), &labels);
    let err = load_split(dir.path(), Split::Test).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err:?}");
    // Extra bytes after the payload.
    let mut long = labels.clone();
    long.push(3);
    let dir = split_dir("trailing", &images, &long);
    let err = load_split(dir.path(), Split::Test).unwrap_err();
    assert!(
        matches!(err, DataError::TrailingBytes { extra: 1, .. }),
        "{err:?}"
    );
}

#[test]
fn count_mismatch_is_rejected() {
    let (images, labels) = raw_subset();
    let mut fewer = labels[..8 + 63].to_vec();
    set_u32(&mut fewer, 4, 63);
    let dir = split_dir("count", &images, &fewer);
    match load_split(dir.path(), Split::Test).unwrap_err() {
        DataError::CountMismatch {
            split,
            images,
            labels,
        } => assert_eq!((split, images, labels), ("test", 64, 63)),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn wrong_dimensions_and_labels_are_rejected() {
    let (mut images, labels) = raw_subset();
    // Same byte count, declared as 64 images of 14x56.
    set_u32(&mut images, 8, 14);
    set_u32(&mut images, 12, 56);
    let dir = split_dir("dims", &images, &labels);
    let err = load_split(dir.path(), Split::Test).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::BadDimensions {
                rows: 14,
                cols: 56,
                expected: 28,
                ..
            }
        ),
        "{err:?}"
    );

    let (images, mut labels) = raw_subset();
    labels[8 + 5] = 10;
    let dir = split_dir("label", &images, &labels);
    let err = load_split(dir.path(), Split::Test).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::BadLabel {
                index: 5,
                label: 10,
                ..
            }
        ),
        "{err:?}"
    );
}

/// The installed Debian dataset, when present: full sizes and the same first items.
#[test]
fn debian_dataset_if_installed() {
    if !Path::new(fashion_mnist::DEFAULT_DIR)
        .join("t10k-images-idx3-ubyte.gz")
        .is_file()
    {
        eprintln!(
            "skipping: {} not installed in {}",
            DEBIAN_PACKAGE,
            fashion_mnist::DEFAULT_DIR
        );
        return;
    }
    let data = FashionMnist::load().unwrap();
    assert_eq!(data.train.len(), 60_000);
    assert_eq!(data.test.len(), 10_000);
    let subset = load_split(fixture_dir(), Split::Test).unwrap();
    assert_eq!(data.test.take(64), subset);
    // Balanced classes: 6000 per class in train.
    let mut counts = [0usize; 10];
    for &l in data.train.labels() {
        counts[usize::from(l)] += 1;
    }
    assert_eq!(counts, [6000; 10]);
}

// ---------------------------------------------------------------------------------
// Tensor conversion, run on every enabled backend.

fn tensors_are_scaled_and_padded(device: &Device) {
    let test = load_split(fixture_dir(), Split::Test).unwrap();
    let idx = [0usize, 3, 63];
    let x = test.images_tensor(&idx, Padding::None, device).unwrap();
    assert_eq!(x.dims(), [3, 1, 28, 28]);
    let v: Vec<f32> = x.try_into_vec_as::<f32>().unwrap();
    for (k, &i) in idx.iter().enumerate() {
        let img = test.image(i).unwrap();
        for p in 0..784 {
            let want = f32::from(img[p]) / 127.5 - 1.0;
            assert_eq!(v[k * 784 + p], want);
        }
    }
    assert!(v.iter().all(|&a| (-1.0..=1.0).contains(&a)));

    let xp = test.images_tensor(&idx, Padding::To32, device).unwrap();
    assert_eq!(xp.dims(), [3, 1, 32, 32]);
    let vp: Vec<f32> = xp.try_into_vec_as::<f32>().unwrap();
    for k in 0..3 {
        for r in 0..32 {
            for c in 0..32 {
                let got = vp[k * 1024 + r * 32 + c];
                if (2..30).contains(&r) && (2..30).contains(&c) {
                    assert_eq!(got, v[k * 784 + (r - 2) * 28 + (c - 2)]);
                } else {
                    assert_eq!(got, -1.0, "border pixel ({r},{c})");
                }
            }
        }
    }

    let range = test.range_tensor(60, 4, Padding::None, device).unwrap();
    assert_eq!(range.dims(), [4, 1, 28, 28]);
    assert!(matches!(
        test.range_tensor(60, 5, Padding::None, device),
        Err(DataError::IndexOutOfRange { len: 64, .. })
    ));
    assert!(matches!(
        test.images_tensor(&[64], Padding::None, device),
        Err(DataError::IndexOutOfRange { index: 64, len: 64 })
    ));

    let labels = test.labels_tensor(&idx, device).unwrap();
    let lv: Vec<i64> = labels.try_into_vec_as::<i64>().unwrap();
    assert_eq!(lv, vec![9, 1, 5]);
}

macro_rules! backend_tests {
    ($name:ident, $device:expr) => {
        mod $name {
            #[test]
            fn tensors_are_scaled_and_padded() {
                super::tensors_are_scaled_and_padded(&$device);
            }
        }
    };
}

#[cfg(feature = "flex")]
backend_tests!(flex, burn::tensor::Device::flex());

/// The deprecated ndarray device (kept building and tested, docs/design.md §2).
#[cfg(feature = "ndarray")]
#[allow(deprecated)]
fn ndarray_device() -> burn::tensor::Device {
    burn::tensor::Device::ndarray()
}

#[cfg(feature = "ndarray")]
backend_tests!(ndarray, super::ndarray_device());

#[cfg(feature = "wgpu")]
backend_tests!(
    wgpu,
    burn::tensor::Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)
);
