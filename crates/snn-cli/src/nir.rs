//! `snn-cli export --nir` and `snn-cli import`: checkpoints to and from NIR graphs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use snn_models::nir::{export, import, ExportOptions, ImportOptions, NirGraph};
use snn_models::{load_checkpoint, save_checkpoint, Checkpoint};

use crate::EncodingArg;

/// `snn-cli import`
#[derive(Args)]
pub(crate) struct ImportArgs {
    /// NIR file to read.
    #[arg(long)]
    nir: PathBuf,
    /// Checkpoint to write (safetensors with the network spec).
    #[arg(long)]
    out: PathBuf,
    /// Time step the file's time constants assume (default: the `dt` the file records; snnTorch writes for
    /// 1e-4, Norse for 1e-3).
    #[arg(long)]
    dt: Option<f64>,
    /// Network name when the file carries no spec of this toolkit (default: the file name).
    #[arg(long)]
    name: Option<String>,
    /// Input coding of the imported network (default: the file's, else Poisson with gain 1).
    #[arg(long, value_enum)]
    encoding: Option<EncodingArg>,
}

/// Writes the checkpoint at `checkpoint` as a NIR graph to `out`.
pub(crate) fn export_nir(checkpoint: &Path, out: &Path, dt: f64) -> Result<()> {
    let ckpt = load_checkpoint(checkpoint, &Device::Cpu)?;
    // Building the network checks every weight's shape before anything is written.
    ckpt.clone().into_network(DType::F32, &Device::Cpu)?;
    let graph = export(&ckpt, &ExportOptions { dt })?;
    write(out, &graph)?;
    println!(
        "wrote {} ({} nodes, {} edges, dt = {dt}; the input coding, dropout and readout scaling are in its metadata)",
        out.display(),
        graph.nodes.len(),
        graph.edges.len()
    );
    Ok(())
}

pub(crate) fn run_import(a: ImportArgs) -> Result<()> {
    let graph = read(&a.nir)?;
    let name = a.name.or_else(|| a.nir.file_stem().map(|s| s.to_string_lossy().into_owned()));
    let Checkpoint { mut spec, weights, metadata } =
        import(&graph, &ImportOptions { dt: a.dt, name }).with_context(|| format!("importing {}", a.nir.display()))?;
    if let Some(encoding) = a.encoding {
        spec.input_encoding = encoding.into();
    }
    let dtype = weights.values().next().map_or(DType::F32, |t| t.dtype());
    let net = snn_models::SpikingNetwork::from_weights(spec, weights, dtype, &Device::Cpu)?;
    save_checkpoint(&a.out, &net, &metadata).with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "wrote {} ({}, {} layers, {} weights){}",
        a.out.display(),
        net.spec().name,
        net.spec().layers.len(),
        net.parameter_count(),
        metadata.get("nir_spec").map(|s| format!("; spec {s}")).unwrap_or_default()
    );
    Ok(())
}

#[cfg(feature = "nir")]
fn write(path: &Path, graph: &NirGraph) -> Result<()> {
    Ok(snn_models::nir::write_nir(path, graph)?)
}

#[cfg(feature = "nir")]
fn read(path: &Path) -> Result<NirGraph> {
    Ok(snn_models::nir::read_nir(path)?)
}

#[cfg(not(feature = "nir"))]
const NO_NIR: &str = "this snn-cli was built without NIR file support (HDF5): rebuild it with \
                      `cargo build --release -p snn-cli --features nir` (needs Debian's libhdf5-dev or your \
                      system's HDF5 library)";

#[cfg(not(feature = "nir"))]
fn write(_: &Path, _: &NirGraph) -> Result<()> {
    anyhow::bail!(NO_NIR)
}

#[cfg(not(feature = "nir"))]
fn read(_: &Path) -> Result<NirGraph> {
    anyhow::bail!(NO_NIR)
}
