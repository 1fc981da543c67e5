//! Named datasets and where their files come from.

use std::path::Path;

use crate::hub::{self, HubOptions};
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

    /// The paper's dataset for a network input shape `[C, H, W]`, when the shape implies one: MNIST for
    /// 1×28×28, CIFAR-10 for 3×32×32, N-MNIST for 2×34×34 (Fashion-MNIST and SVHN share those shapes and are
    /// never implied).
    pub fn for_input_shape(shape: &[usize]) -> Option<Self> {
        match shape {
            [1, 28, 28] => Some(Self::Mnist),
            [3, 32, 32] => Some(Self::Cifar10),
            [2, 34, 34] => Some(Self::Nmnist),
            _ => None,
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

    /// Loads a split from `dir`; with no folder, from the Hub cache of [`HubOptions::from_env`] (see
    /// [`Self::load_from`]).
    pub fn load(self, dir: Option<&Path>, split: Split) -> Result<Samples> {
        self.load_from(dir, &HubOptions::from_env(), split)
    }

    /// Loads a split from `dir`. With no folder the split comes from the Hub cache described by `hub`
    /// (never from the network; `snn-cli data fetch` fills it), and MNIST falls back to the built-in subset
    /// when it is not cached.
    pub fn load_from(self, dir: Option<&Path>, hub: &HubOptions, split: Split) -> Result<Samples> {
        if dir.is_none() && hub::is_cached(self, hub) {
            return hub::load_cached(self, split, hub).map(Samples::from);
        }
        match (self, dir) {
            (Self::Mnist, None) => mnist::builtin_subset(split).map(Samples::from),
            (Self::Mnist | Self::FashionMnist, Some(d)) => mnist::load(d, split).map(Samples::from),
            (Self::Cifar10, Some(d)) => cifar::load(d, split).map(Samples::from),
            (Self::Svhn, Some(d)) => svhn::load(d, split).map(Samples::from),
            (Self::Nmnist, Some(d)) => nmnist::load(d, split).map(Samples::from),
            (Self::Nmnist, None) => {
                Err(Error::Mismatch("dataset 'nmnist' needs a data folder (--data-dir): it has no Hub source".into()))
            }
            (_, None) => Err(Error::Mismatch(format!(
                "dataset '{name}' needs a data folder (--data-dir) or a cached copy from `snn-cli data fetch {name}` \
                 (none in {})",
                hub.cache_dir.display(),
                name = self.name()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_shapes_imply_the_papers_datasets_only() {
        assert_eq!(Dataset::for_input_shape(&[1, 28, 28]), Some(Dataset::Mnist));
        assert_eq!(Dataset::for_input_shape(&[3, 32, 32]), Some(Dataset::Cifar10));
        assert_eq!(Dataset::for_input_shape(&[2, 34, 34]), Some(Dataset::Nmnist));
        assert_eq!(Dataset::for_input_shape(&[1, 32, 32]), None);
        assert_eq!(Dataset::for_input_shape(&[3, 32]), None);
    }
}
