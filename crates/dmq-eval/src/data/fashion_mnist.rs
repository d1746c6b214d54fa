//! Fashion-MNIST (Xiao et al. 2017) from its IDX files.
//!
//! 70 000 grey-scale 28x28 images of 10 clothing classes (60 000 train, 10 000 test).
//! The default directory is the one of the Debian package `dataset-fashion-mnist`
//! ([`DEFAULT_DIR`]), which ships
//! `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`. Both gzipped and plain files are
//! read; the IDX header is validated (magic 2051 for images, 2049 for labels, 28x28
//! images, item counts, exact file lengths).
//!
//! ```no_run
//! use burn::tensor::Device;
//! use dmq_eval::data::fashion_mnist::{FashionMnist, Padding};
//!
//! let data = FashionMnist::load()?; // /usr/share/datasets/fashion-mnist
//! # #[cfg(feature = "flex")] {
//! let x = data.train.images_tensor(&[0, 1, 2, 3], Padding::To32, &Device::flex())?;
//! assert_eq!(x.dims(), [4, 1, 32, 32]);
//! # }
//! # Ok::<(), dmq_eval::DataError>(())
//! ```

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use dmq_quant::Limits;
use flate2::read::MultiGzDecoder;

use crate::DataError;

/// Where the Debian package `dataset-fashion-mnist` installs the IDX files.
pub const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The Debian package that provides the dataset.
pub const DEBIAN_PACKAGE: &str = "dataset-fashion-mnist";

/// Image side length.
pub const IMAGE_SIZE: usize = 28;

/// Pixels per image (`28 * 28`).
pub const IMAGE_PIXELS: usize = IMAGE_SIZE * IMAGE_SIZE;

/// Number of classes.
pub const NUM_CLASSES: usize = 10;

/// Class names, indexed by label.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// IDX magic number of an unsigned-byte rank-3 tensor (images).
pub const IMAGES_MAGIC: u32 = 2051;

/// IDX magic number of an unsigned-byte rank-1 tensor (labels).
pub const LABELS_MAGIC: u32 = 2049;

/// The name of a class, or `None` for a label `>= 10`.
pub fn class_name(label: u8) -> Option<&'static str> {
    CLASS_NAMES.get(usize::from(label)).copied()
}

/// One of the two dataset splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// 60 000 training items (`train-*`).
    Train,
    /// 10 000 test items (`t10k-*`).
    Test,
}

impl Split {
    /// The file-name prefix of the split (`train` or `t10k`).
    pub fn file_prefix(&self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Test => "t10k",
        }
    }

    /// `train` or `test`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Test => "test",
        }
    }

    /// The uncompressed image file name (`train-images-idx3-ubyte`).
    pub fn images_file(&self) -> String {
        format!("{}-images-idx3-ubyte", self.file_prefix())
    }

    /// The uncompressed label file name (`train-labels-idx1-ubyte`).
    pub fn labels_file(&self) -> String {
        format!("{}-labels-idx1-ubyte", self.file_prefix())
    }
}

/// Optional padding when turning images into tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    /// Keep 28x28.
    #[default]
    None,
    /// Pad 2 black pixels (value 0, i.e. `-1` after scaling) on every side to 32x32,
    /// as `torchvision.transforms.Pad(2)` does before normalisation.
    To32,
}

impl Padding {
    /// Output side length (28 or 32).
    pub fn side(&self) -> usize {
        match self {
            Self::None => IMAGE_SIZE,
            Self::To32 => 32,
        }
    }
}

/// One split held in memory: `N` images of 28x28 `u8` pixels (row-major) and `N` labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FashionMnistSplit {
    split: Split,
    images: Vec<u8>,
    labels: Vec<u8>,
}

impl FashionMnistSplit {
    /// Builds a split from raw arrays.
    ///
    /// # Shapes
    /// - `images`: `N * 28 * 28` bytes, item-major then row-major (`[N, 28, 28]`)
    /// - `labels`: `N`
    ///
    /// # Errors
    /// [`DataError::CountMismatch`] when the lengths disagree; [`DataError::BadLabel`]
    /// for a label `>= 10`.
    pub fn from_raw(split: Split, images: Vec<u8>, labels: Vec<u8>) -> Result<Self, DataError> {
        if images.len() != labels.len() * IMAGE_PIXELS {
            return Err(DataError::CountMismatch {
                split: split.name(),
                images: images.len() / IMAGE_PIXELS,
                labels: labels.len(),
            });
        }
        check_labels(Path::new("<memory>"), &labels)?;
        Ok(Self {
            split,
            images,
            labels,
        })
    }

    /// Which split this is.
    pub fn split(&self) -> Split {
        self.split
    }

    /// Number of items `N`.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split has no items.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// All pixels, `[N, 28, 28]` row-major.
    pub fn images(&self) -> &[u8] {
        &self.images
    }

    /// All labels, `[N]`.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// The 784 pixels of item `index` (row-major 28x28).
    pub fn image(&self, index: usize) -> Option<&[u8]> {
        (index < self.len()).then(|| &self.images[index * IMAGE_PIXELS..(index + 1) * IMAGE_PIXELS])
    }

    /// The label of item `index`.
    pub fn label(&self, index: usize) -> Option<u8> {
        self.labels.get(index).copied()
    }

    /// The first `n` items (all when `n >= N`).
    pub fn take(&self, n: usize) -> Self {
        let n = n.min(self.len());
        Self {
            split: self.split,
            images: self.images[..n * IMAGE_PIXELS].to_vec(),
            labels: self.labels[..n].to_vec(),
        }
    }

    /// The images at `indices` as a float tensor scaled to `[-1, 1]`:
    /// `x = pixel / 127.5 - 1`, optionally padded to 32x32 with black (`-1`).
    ///
    /// # Shapes
    /// - output: `[B, 1, S, S]`, `B = indices.len()`, `S = padding.side()`
    ///
    /// # Errors
    /// [`DataError::IndexOutOfRange`].
    pub fn images_tensor(
        &self,
        indices: &[usize],
        padding: Padding,
        device: &Device,
    ) -> Result<Tensor<4>, DataError> {
        let mut pixels = Vec::with_capacity(indices.len() * IMAGE_PIXELS);
        for &i in indices {
            let img = self.image(i).ok_or(DataError::IndexOutOfRange {
                index: i,
                len: self.len(),
            })?;
            pixels.extend_from_slice(img);
        }
        Ok(images_to_tensor(&pixels, padding, device))
    }

    /// Items `start..start + len` as a tensor (see [`Self::images_tensor`]).
    ///
    /// # Shapes
    /// - output: `[len, 1, S, S]`
    ///
    /// # Errors
    /// [`DataError::IndexOutOfRange`] when the range passes the end.
    pub fn range_tensor(
        &self,
        start: usize,
        len: usize,
        padding: Padding,
        device: &Device,
    ) -> Result<Tensor<4>, DataError> {
        let end = start.saturating_add(len);
        if end > self.len() {
            return Err(DataError::IndexOutOfRange {
                index: end.saturating_sub(1),
                len: self.len(),
            });
        }
        Ok(images_to_tensor(
            &self.images[start * IMAGE_PIXELS..end * IMAGE_PIXELS],
            padding,
            device,
        ))
    }

    /// The labels at `indices` as an integer tensor.
    ///
    /// # Shapes
    /// - output: `[B]`
    ///
    /// # Errors
    /// [`DataError::IndexOutOfRange`].
    pub fn labels_tensor(
        &self,
        indices: &[usize],
        device: &Device,
    ) -> Result<Tensor<1, Int>, DataError> {
        let labels = indices
            .iter()
            .map(|&i| {
                self.label(i)
                    .map(i64::from)
                    .ok_or(DataError::IndexOutOfRange {
                        index: i,
                        len: self.len(),
                    })
            })
            .collect::<Result<Vec<i64>, _>>()?;
        let n = labels.len();
        Ok(Tensor::from_data(TensorData::new(labels, [n]), device))
    }
}

/// Converts `B` row-major 28x28 `u8` images to `[B, 1, S, S]` floats in `[-1, 1]`
/// (`x = pixel / 127.5 - 1`), padded with black (`-1`) for [`Padding::To32`].
///
/// # Shapes
/// - `pixels`: `B * 784` bytes (a trailing partial image is ignored)
/// - output: `[B, 1, S, S]`, `S = padding.side()`
pub fn images_to_tensor(pixels: &[u8], padding: Padding, device: &Device) -> Tensor<4> {
    let b = pixels.len() / IMAGE_PIXELS;
    let side = padding.side();
    let pad = (side - IMAGE_SIZE) / 2;
    let mut out = vec![-1.0f32; b * side * side];
    for (k, img) in pixels.chunks_exact(IMAGE_PIXELS).enumerate() {
        let base = k * side * side;
        for r in 0..IMAGE_SIZE {
            let dst = base + (r + pad) * side + pad;
            for (o, &p) in out[dst..dst + IMAGE_SIZE]
                .iter_mut()
                .zip(&img[r * IMAGE_SIZE..(r + 1) * IMAGE_SIZE])
            {
                *o = f32::from(p) / 127.5 - 1.0;
            }
        }
    }
    Tensor::from_data(TensorData::new(out, [b, 1, side, side]), device)
}

/// Both splits of Fashion-MNIST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FashionMnist {
    /// 60 000 training items.
    pub train: FashionMnistSplit,
    /// 10 000 test items.
    pub test: FashionMnistSplit,
}

impl FashionMnist {
    /// Loads both splits from [`DEFAULT_DIR`].
    ///
    /// # Errors
    /// See [`load_split`].
    pub fn load() -> Result<Self, DataError> {
        Self::load_from(DEFAULT_DIR)
    }

    /// Loads both splits from `dir`.
    ///
    /// # Errors
    /// See [`load_split`].
    pub fn load_from(dir: impl AsRef<Path>) -> Result<Self, DataError> {
        let dir = dir.as_ref();
        Ok(Self {
            train: load_split(dir, Split::Train)?,
            test: load_split(dir, Split::Test)?,
        })
    }
}

/// Loads one split from `dir`, accepting `<name>.gz` or plain `<name>` for each file
/// (`.gz` preferred when both exist).
///
/// # Errors
/// [`DataError::NotFound`] (naming the directory and the Debian package),
/// [`DataError::Io`], [`DataError::BadMagic`], [`DataError::Truncated`],
/// [`DataError::TrailingBytes`], [`DataError::BadDimensions`],
/// [`DataError::CountMismatch`], [`DataError::BadLabel`].
pub fn load_split(dir: impl AsRef<Path>, split: Split) -> Result<FashionMnistSplit, DataError> {
    let dir = dir.as_ref();
    let images_path = find_file(dir, &split.images_file())?;
    let labels_path = find_file(dir, &split.labels_file())?;
    let images = read_idx_images(&images_path)?;
    let labels = read_idx_labels(&labels_path)?;
    if images.rows != IMAGE_SIZE || images.cols != IMAGE_SIZE {
        return Err(DataError::BadDimensions {
            path: images_path,
            rows: images.rows,
            cols: images.cols,
            expected: IMAGE_SIZE,
        });
    }
    if images.count != labels.len() {
        return Err(DataError::CountMismatch {
            split: split.name(),
            images: images.count,
            labels: labels.len(),
        });
    }
    check_labels(&labels_path, &labels)?;
    Ok(FashionMnistSplit {
        split,
        images: images.pixels,
        labels,
    })
}

fn check_labels(path: &Path, labels: &[u8]) -> Result<(), DataError> {
    if let Some((index, &label)) = labels
        .iter()
        .enumerate()
        .find(|(_, l)| usize::from(**l) >= NUM_CLASSES)
    {
        return Err(DataError::BadLabel {
            path: path.to_path_buf(),
            index,
            label,
        });
    }
    Ok(())
}

/// `dir/name.gz` if it exists, else `dir/name`, else [`DataError::NotFound`].
fn find_file(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    let plain = dir.join(name);
    if plain.is_file() {
        return Ok(plain);
    }
    Err(DataError::NotFound {
        dir: dir.to_path_buf(),
        file: name.to_string(),
        package: DEBIAN_PACKAGE,
    })
}

/// The decoded content of an IDX image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images `N`.
    pub count: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// `N * rows * cols` pixels, row-major.
    pub pixels: Vec<u8>,
}

/// Trailing bytes counted after the payload before giving up (the count in
/// [`DataError::TrailingBytes`] is at least this when it is this).
const MAX_TRAILING_COUNT: u64 = 1 << 26;

/// Reads into `buf` until it is full or the stream ends; returns the bytes read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A reader over the file's content, gunzipping it (streamed) when it starts with the gzip
/// magic `1f 8b`.
fn open_stream(path: &Path) -> Result<Box<dyn Read>, DataError> {
    let io_err = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(io_err)?;
    let mut magic = [0u8; 2];
    let n = read_full(&mut f, &mut magic).map_err(io_err)?;
    f.seek(SeekFrom::Start(0)).map_err(io_err)?;
    let r = BufReader::new(f);
    Ok(if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(MultiGzDecoder::new(r))
    } else {
        Box::new(r)
    })
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Reads an IDX file as a stream: the header first (magic and `rank` sizes), the sizes
/// checked against [`Limits::current`], then exactly the payload the header announces —
/// never more, so a gzip bomb is refused after at most the announced size — and a check that
/// nothing follows. Returns the dimensions and the payload.
fn read_idx(
    path: &Path,
    kind: &'static str,
    magic: u32,
    rank: usize,
) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let io_err = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut r = open_stream(path)?;
    let header = 4 + 4 * rank;
    let mut head = vec![0u8; header];
    let got = read_full(&mut r, &mut head).map_err(io_err)?;
    if got < 4 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: header,
            actual: got,
        });
    }
    let found = be_u32(&head, 0);
    if found != magic {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            kind,
            expected: magic,
            found,
        });
    }
    if got < header {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: header,
            actual: got,
        });
    }
    let dims: Vec<usize> = (0..rank)
        .map(|k| be_u32(&head, 4 + 4 * k) as usize)
        .collect();
    let limits = Limits::current();
    let origin = path.display().to_string();
    let payload = limits
        .check_shape(&dims, &origin, &format!("{kind} header dimensions"))
        .map_err(DataError::Limit)?;
    let expected = header + payload;
    // Grows with the data actually present, never to the announced size up front.
    let mut data = Vec::new();
    (&mut r)
        .take(payload as u64)
        .read_to_end(&mut data)
        .map_err(io_err)?;
    if data.len() < payload {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected,
            actual: header + data.len(),
        });
    }
    let extra =
        std::io::copy(&mut r.take(MAX_TRAILING_COUNT), &mut std::io::sink()).map_err(io_err)?;
    if extra > 0 {
        return Err(DataError::TrailingBytes {
            path: path.to_path_buf(),
            expected,
            extra: extra as usize,
        });
    }
    Ok((dims, data))
}

/// Reads an IDX image file (magic 2051, `[N, rows, cols]` unsigned bytes), gzipped or not.
///
/// # Errors
/// [`DataError::Io`], [`DataError::BadMagic`], [`DataError::Truncated`],
/// [`DataError::TrailingBytes`], [`DataError::Limit`] (header sizes above
/// [`Limits::current`], checked before the payload is read).
pub fn read_idx_images(path: impl AsRef<Path>) -> Result<IdxImages, DataError> {
    let path = path.as_ref();
    let (dims, pixels) = read_idx(path, "images", IMAGES_MAGIC, 3)?;
    Ok(IdxImages {
        count: dims[0],
        rows: dims[1],
        cols: dims[2],
        pixels,
    })
}

/// Reads an IDX label file (magic 2049, `[N]` unsigned bytes), gzipped or not.
///
/// # Errors
/// [`DataError::Io`], [`DataError::BadMagic`], [`DataError::Truncated`],
/// [`DataError::TrailingBytes`], [`DataError::Limit`] (header sizes above
/// [`Limits::current`], checked before the payload is read).
pub fn read_idx_labels(path: impl AsRef<Path>) -> Result<Vec<u8>, DataError> {
    let path = path.as_ref();
    let (_, labels) = read_idx(path, "labels", LABELS_MAGIC, 1)?;
    Ok(labels)
}
