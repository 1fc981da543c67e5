//! NIR (Neuromorphic Intermediate Representation) export and import.
//!
//! NIR is the exchange format of the spiking-network field: a graph of nodes (`Conv2d`, `Linear`,
//! `AvgPool2d`, `LIF`, `IF`, `LI`, ...) and edges, stored as HDF5, read and written by snnTorch, Norse,
//! SpikingJelly, Sinabs, Rockpool, Lava-DL and others. [`export`] turns a checkpoint into a [`NirGraph`] and
//! [`import`] turns one back (refusing what this toolkit cannot run, with errors naming the nodes); the
//! graph model and both conversions need no system library. Reading and writing the HDF5 files
//! ([`read_nir`], [`write_nir`]) needs the crate feature `nir` and the system HDF5 library.
//!
//! The neuron mapping (forward Euler with step `dt`) is documented in [`export`]'s module and in
//! `docs/INTEROP.md`.

mod convert;
#[cfg(feature = "nir")]
mod file;
mod graph;

pub use convert::{export, import, ExportOptions, ImportOptions, DT_METADATA, INPUT_NODE, OUTPUT_NODE, SPEC_METADATA};
#[cfg(feature = "nir")]
pub use file::{read_nir, write_nir, NIR_VERSION};
pub use graph::{NirArray, NirData, NirGraph, NirNode, NirValue};
