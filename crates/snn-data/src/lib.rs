//! # snn-data: datasets for spiking networks
//!
//! * [`idx`]: the IDX format of MNIST and Fashion-MNIST (raw or gzip), fully validated.
//! * [`cifar`]: CIFAR-10 from the official binary batches, an image-folder tree or a `.tar.gz` of it.
//! * [`mnist`]: the MNIST train/test splits from a folder, and a small built-in real subset so that training
//!   works on a fresh checkout with no data at all.
//! * [`svhn`]: SVHN cropped digits from the official MATLAB files.
//! * [`nmnist`]: N-MNIST event recordings, binned into spike frames; [`Dataset`] names them all.
//! * [`hub`]: the image datasets (and any file) from the Hugging Face Hub through a checksummed, offline-capable
//!   cache.
//! * [`augment`]: seeded random crop and flip.
//! * [`ImageDataset`]: images as `u8` with labels; [`Samples`]: images or event recordings;
//!   [`Batches`]: seeded shuffling and batching.
//! * [`sha256_hex`]: checksums of files and buffers.
//!
//! Every reader error names the file and what is wrong with it.

#![warn(missing_docs)]

pub mod augment;
mod batch;
pub mod cifar;
mod dataset;
mod error;
pub mod hub;
pub mod idx;
pub mod mnist;
pub mod nmnist;
mod source;
pub mod svhn;

pub use batch::Batches;
pub use dataset::{ImageDataset, Samples};
pub use error::{Error, Result};
pub use source::Dataset;

use sha2::{Digest, Sha256};

/// Lower-case hexadecimal SHA-256 of a byte buffer.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hexadecimal of a digest.
fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
