//! Hostile IDX files (issue 26, item 9): the header is read from the first bytes of the
//! (gzip) stream and checked before the rest is decompressed, so a gzip bomb or a header
//! announcing terabytes is refused with a typed error naming the file, and never more than
//! the announced payload is held in memory.

use std::io::Write;
use std::path::{Path, PathBuf};

use dmq_eval::DataError;
use dmq_eval::data::fashion_mnist::{read_idx_images, read_idx_labels};
use dmq_quant::QuantError;
use flate2::Compression;
use flate2::write::GzEncoder;
use proptest::prelude::*;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dmq-eval-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn header(magic: u32, dims: &[u32]) -> Vec<u8> {
    let mut h = magic.to_be_bytes().to_vec();
    for d in dims {
        h.extend(d.to_be_bytes());
    }
    h
}

/// Writes `head` then `zeros` zero bytes, gzipped, streaming (the file stays small).
fn write_gz(path: &Path, head: &[u8], zeros: usize) {
    let mut e = GzEncoder::new(std::fs::File::create(path).unwrap(), Compression::fast());
    e.write_all(head).unwrap();
    let block = vec![0u8; 1 << 16];
    let mut left = zeros;
    while left > 0 {
        let n = left.min(block.len());
        e.write_all(&block[..n]).unwrap();
        left -= n;
    }
    e.finish().unwrap();
}

#[test]
fn gzip_bomb_after_a_small_header_is_refused_without_inflating_it() {
    // A valid header for one 28×28 image, followed by 48 MiB of zeros (~50 KB gzipped).
    let path = temp("bomb-images-idx3-ubyte.gz");
    write_gz(&path, &header(2051, &[1, 28, 28]), 784 + (48 << 20));
    assert!(std::fs::metadata(&path).unwrap().len() < 1 << 20);
    let e = read_idx_images(&path).unwrap_err();
    assert!(
        matches!(&e, DataError::TrailingBytes { expected, extra, .. }
            if *expected == 16 + 784 && *extra == 48 << 20),
        "{e}"
    );
    assert!(e.to_string().contains(&path.display().to_string()));
    std::fs::remove_file(&path).ok();
}

#[test]
fn headers_announcing_huge_payloads_are_refused_before_reading_it() {
    // 2^24 images of 2^12 × 2^12 pixels: the header alone, nothing behind it.
    for (name, dims) in [
        ("huge-dim", [1u32 << 25, 28, 28]),
        ("huge-product", [1 << 24, 1 << 12, 1 << 12]),
        ("max", [u32::MAX, u32::MAX, u32::MAX]),
    ] {
        let path = temp(&format!("{name}-images-idx3-ubyte.gz"));
        write_gz(&path, &header(2051, &dims), 0);
        let e = read_idx_images(&path).unwrap_err();
        match &e {
            DataError::Limit(QuantError::LimitExceeded { origin, field, .. }) => {
                assert_eq!(origin, &path.display().to_string());
                assert!(field.starts_with("images header dimensions"), "{field}");
            }
            other => panic!("{name}: expected a limit error, got {other}"),
        }
        std::fs::remove_file(&path).ok();
    }
    // The same for a plain label file.
    let path = temp("huge-labels-idx1-ubyte");
    std::fs::write(&path, header(2049, &[u32::MAX])).unwrap();
    assert!(matches!(read_idx_labels(&path), Err(DataError::Limit(_))));
    std::fs::remove_file(&path).ok();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// 64 cases: a random header (either magic, random or huge sizes) and a random body,
    /// gzipped or plain: a typed error or a payload of exactly the announced size; never a
    /// panic.
    #[test]
    fn random_idx_files_never_panic(
        labels in any::<bool>(),
        gz in any::<bool>(),
        dims in prop::collection::vec(prop_oneof![0u32..40, Just(u32::MAX), Just(1 << 24)], 0..4),
        body in prop::collection::vec(any::<u8>(), 0..300),
        case in 0u32..1_000_000,
    ) {
        let magic = if labels { 2049 } else { 2051 };
        let mut bytes = header(magic, &dims);
        bytes.extend(&body);
        let path = temp(&format!("prop-{case}-{labels}-{gz}"));
        if gz {
            let mut e = GzEncoder::new(Vec::new(), Compression::fast());
            e.write_all(&bytes).unwrap();
            std::fs::write(&path, e.finish().unwrap()).unwrap();
        } else {
            std::fs::write(&path, &bytes).unwrap();
        }
        if labels {
            if let Ok(l) = read_idx_labels(&path) {
                prop_assert_eq!(l.len() as u64, dims[0] as u64);
            }
        } else if let Ok(i) = read_idx_images(&path) {
            prop_assert_eq!(i.pixels.len(), i.count * i.rows * i.cols);
        }
        std::fs::remove_file(&path).ok();
    }
}
