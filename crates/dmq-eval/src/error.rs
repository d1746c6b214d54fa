//! The error type of dmq-eval.

use std::path::PathBuf;

/// Errors of the dataset loaders, the metric classifier and the report writers.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A dataset file is in none of the accepted forms in the searched directory.
    #[error(
        "Fashion-MNIST file `{file}` (or `{file}.gz`) not found in {dir}: install the Debian \
         package `{package}` (apt-get install {package}), which puts the IDX files in \
         /usr/share/datasets/fashion-mnist, or pass the directory that holds them"
    )]
    NotFound {
        /// The directory searched.
        dir: PathBuf,
        /// The file name looked for (without `.gz`).
        file: String,
        /// The Debian package that provides the dataset.
        package: &'static str,
    },

    /// Reading or decompressing a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error (a corrupt gzip stream shows up here too).
        #[source]
        source: std::io::Error,
    },

    /// A size in a file's header above dmq's [`Limits`](dmq_quant::Limits), refused before
    /// the payload is read (a [`dmq_quant::QuantError::LimitExceeded`] naming the file and
    /// the header field).
    #[error(transparent)]
    Limit(dmq_quant::QuantError),

    /// The IDX magic number is not the expected one.
    #[error(
        "{path} is not an IDX {kind} file: magic number {found} (0x{found:08x}), expected \
         {expected} (0x{expected:08x})"
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// `images` or `labels`.
        kind: &'static str,
        /// The expected magic (2051 for images, 2049 for labels).
        expected: u32,
        /// The magic found.
        found: u32,
    },

    /// The file is shorter than its header says.
    #[error("{path} is truncated: expected {expected} bytes, found {actual}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the header implies (header included).
        expected: usize,
        /// Bytes present (after decompression).
        actual: usize,
    },

    /// The file is longer than its header says.
    #[error("{path} has {extra} unexpected trailing bytes after {expected} bytes of IDX data")]
    TrailingBytes {
        /// The file.
        path: PathBuf,
        /// Bytes the header implies (header included).
        expected: usize,
        /// Extra bytes after them.
        extra: usize,
    },

    /// Image dimensions other than the dataset's.
    #[error("{path} holds {rows}x{cols} images, expected {expected}x{expected}")]
    BadDimensions {
        /// The file.
        path: PathBuf,
        /// Rows per image in the header.
        rows: usize,
        /// Columns per image in the header.
        cols: usize,
        /// The expected side length.
        expected: usize,
    },

    /// Image and label files of one split disagree on the number of items.
    #[error("{images} images but {labels} labels in the {split} split")]
    CountMismatch {
        /// The split (`train` or `test`).
        split: &'static str,
        /// Number of images.
        images: usize,
        /// Number of labels.
        labels: usize,
    },

    /// A label outside `0..10`.
    #[error("{path}: label {label} at index {index} is not a class index (0..10)")]
    BadLabel {
        /// The file.
        path: PathBuf,
        /// Item index.
        index: usize,
        /// The label found.
        label: u8,
    },

    /// An item index past the end of a split.
    #[error("index {index} is out of range for a split of {len} items")]
    IndexOutOfRange {
        /// The index asked for.
        index: usize,
        /// Items in the split.
        len: usize,
    },

    /// An argument or tensor that the evaluation code cannot use (names what was wrong).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A metric got inputs it cannot measure (too few samples, mismatched shapes, NaN).
    #[error("metric: {0}")]
    Metric(String),

    /// Writing an output file (PNG, report, weights) failed.
    #[error("cannot write {path}: {reason}")]
    Output {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}
