//! # snn-models: spiking network architectures
//!
//! A network is **data**: a [`NetworkSpec`] lists its layers (spiking convolutions and fully connected
//! layers, average pooling followed by IF neurons, residual shortcuts into a layer's membrane input, and
//! the leaky readout). [`SpikingNetwork`] builds the weights for a spec and runs it layer-major over the
//! whole time window: each convolution or linear map runs once over all `T·B` frames, then one neuron op
//! runs the window's recurrence (see `snn-core`).
//!
//! The named architectures of Lee et al. 2020 are built-in specs ([`builtin`]); checkpoints are
//! safetensors files carrying the spec in their metadata, so a file alone can be evaluated.
//!
//! This crate holds the structure (which layer feeds which) and walks it in both training passes; every
//! kernel it runs (neuron recurrences, event-driven and dense synaptic layers, pooling, subsampling) lives in
//! `snn-core`.

#![warn(missing_docs)]

mod checkpoint;
mod error;
mod network;
pub mod nir;
mod plan;
pub mod profile;
mod spec;
mod tape;
pub mod zoo;

pub use checkpoint::{
    checkpoint_bytes, load_checkpoint, parse_checkpoint, save_checkpoint, save_checkpoint_with, temp_path,
    write_atomic, Checkpoint,
};
pub use error::{Error, Result};
pub use network::{spike_counts, Engine, ForwardOptions, ForwardOutput, LayerActivity, Masks, SpikingNetwork};
pub use profile::{Phase, Profile, ProfileEntry, Work};
pub use spec::{
    ConvSpec, FcSpec, InputEncoding, LayerSpec, NetworkSpec, PoolSpec, ReadoutSpec, ShortcutKind, ShortcutSpec,
};
pub use tape::{Gradients, Tape, MICRO_BATCH_BYTES, PART_BYTES, PART_FRAMES};
pub use zoo::{builtin, builtin_names, is_verified, provenance};
