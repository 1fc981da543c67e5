//! MNIST-style datasets (MNIST, Fashion-MNIST, any IDX image/label pair).

use std::path::{Path, PathBuf};

use crate::{idx, Error, ImageDataset, Result};

/// A dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The training set (`train-*`).
    Train,
    /// The test set (`t10k-*`).
    Test,
}

impl Split {
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// SHA-256 of the official MNIST files after decompression (train images, train labels, test images,
/// test labels), for verifying a local copy. (Their MD5 sums match the widely published ones, e.g.
/// `6bbc9ace898e44ae57da46a324031adb` for the raw training images.)
pub const OFFICIAL_SHA256: [(&str, &str); 4] = [
    ("train-images-idx3-ubyte", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    ("train-labels-idx1-ubyte", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    ("t10k-images-idx3-ubyte", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    ("t10k-labels-idx1-ubyte", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
];

fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    let candidates = [format!("{stem}.gz"), stem.to_string(), stem.replacen("-idx", ".idx", 1)];
    for c in &candidates {
        let p = dir.join(c);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::NotFound { what: stem.to_string(), dir: dir.to_path_buf(), candidates: candidates.join(", ") })
}

/// Loads one split of an MNIST-style dataset from `dir`, which holds the standard files
/// (`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`, `t10k-...`).
pub fn load(dir: &Path, split: Split) -> Result<ImageDataset> {
    let images_path = find(dir, &format!("{}-images-idx3-ubyte", split.prefix()))?;
    let labels_path = find(dir, &format!("{}-labels-idx1-ubyte", split.prefix()))?;
    let (images, [n, h, w]) = idx::read_images(&images_path)?;
    let labels = idx::read_labels(&labels_path, 10)?;
    if labels.len() != n {
        return Err(Error::Mismatch(format!(
            "{} holds {n} images but {} holds {} labels",
            images_path.display(),
            labels_path.display(),
            labels.len()
        )));
    }
    ImageDataset::new(images, labels, [1, h, w], 10)
}

static SUBSET_TRAIN_IMAGES: &[u8] = include_bytes!("../data/mnist-subset/train-images-idx3-ubyte.gz");
static SUBSET_TRAIN_LABELS: &[u8] = include_bytes!("../data/mnist-subset/train-labels-idx1-ubyte.gz");
static SUBSET_TEST_IMAGES: &[u8] = include_bytes!("../data/mnist-subset/t10k-images-idx3-ubyte.gz");
static SUBSET_TEST_LABELS: &[u8] = include_bytes!("../data/mnist-subset/t10k-labels-idx1-ubyte.gz");

/// Number of training images in the built-in subset (the first ones of the official training set).
pub const SUBSET_TRAIN_LEN: usize = 6000;
/// Number of test images in the built-in subset (the first ones of the official test set).
pub const SUBSET_TEST_LEN: usize = 1000;

/// The built-in real MNIST subset, compiled into the library: the first 6,000 training and the first
/// 1,000 test images of the official files. Lets a fresh checkout train without any data folder.
pub fn builtin_subset(split: Split) -> Result<ImageDataset> {
    let (imgs, lbls) = match split {
        Split::Train => (SUBSET_TRAIN_IMAGES, SUBSET_TRAIN_LABELS),
        Split::Test => (SUBSET_TEST_IMAGES, SUBSET_TEST_LABELS),
    };
    let ipath = PathBuf::from(format!("<builtin>/{}-images-idx3-ubyte.gz", split.prefix()));
    let lpath = PathBuf::from(format!("<builtin>/{}-labels-idx1-ubyte.gz", split.prefix()));
    let (images, [_, h, w]) = idx::images_from(idx::parse_gzip(imgs, &ipath)?, &ipath)?;
    let labels = idx::labels_from(idx::parse_gzip(lbls, &lpath)?, &lpath, 10)?;
    ImageDataset::new(images, labels, [1, h, w], 10)
}
