//! Named datasets and where their files come from.

use std::path::Path;

use crate::mnist::{self, Split};
use crate::{cifar, nmnist, svhn, Error, Result, Samples};

/// The datasets this crate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataset {
    /// MNIST handwritten digits (IDX files; a built-in subset when no folder is given).
    Mnist,
    /// Fashion-MNIST (IDX files with MNIST's names).
    FashionMnist,
    /// CIFAR-10 (binary batches, image folders or a `.tar.gz` of them).
    Cifar10,
    /// SVHN cropped digits (`train_32x32.mat`, `test_32x32.mat`).
    Svhn,
    /// N-MNIST event recordings (`Train/<digit>/*.bin`, `Test/<digit>/*.bin`).
    Nmnist,
}

impl Dataset {
    /// All names accepted by [`Dataset::from_name`].
    pub const NAMES: [&'static str; 5] = ["mnist", "fashion-mnist", "cifar10", "svhn", "nmnist"];

    /// Parses a dataset name.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "mnist" => Ok(Self::Mnist),
            "fashion-mnist" => Ok(Self::FashionMnist),
            "cifar10" => Ok(Self::Cifar10),
            "svhn" => Ok(Self::Svhn),
            "nmnist" => Ok(Self::Nmnist),
            other => Err(Error::Mismatch(format!("unknown dataset '{other}' (available: {})", Self::NAMES.join(", ")))),
        }
    }

    /// The dataset's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mnist => "mnist",
            Self::FashionMnist => "fashion-mnist",
            Self::Cifar10 => "cifar10",
            Self::Svhn => "svhn",
            Self::Nmnist => "nmnist",
        }
    }

    /// Loads a split from `dir`; with no folder only MNIST is available (the built-in subset).
    pub fn load(self, dir: Option<&Path>, split: Split) -> Result<Samples> {
        match (self, dir) {
            (Self::Mnist, None) => mnist::builtin_subset(split).map(Samples::from),
            (Self::Mnist | Self::FashionMnist, Some(d)) => mnist::load(d, split).map(Samples::from),
            (Self::Cifar10, Some(d)) => cifar::load(d, split).map(Samples::from),
            (Self::Svhn, Some(d)) => svhn::load(d, split).map(Samples::from),
            (Self::Nmnist, Some(d)) => nmnist::load(d, split).map(Samples::from),
            (other, None) => Err(Error::Mismatch(format!(
                "dataset '{}' needs a data folder (--data-dir); only mnist has a built-in subset",
                other.name()
            ))),
        }
    }
}
