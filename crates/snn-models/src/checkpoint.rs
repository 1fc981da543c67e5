//! Safetensors checkpoints that carry their own network spec.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::network::SpikingNetwork;
use crate::spec::NetworkSpec;
use crate::{Error, Result};

/// Metadata key holding the network spec as JSON.
pub const SPEC_KEY: &str = "spec";
/// Metadata key and value identifying the file as a checkpoint of this toolkit.
const FORMAT_KEY: &str = "format";
const FORMAT: &str = "snn-checkpoint/1";

/// A loaded checkpoint: the spec, the weights and the remaining metadata (epoch, recipe, ...).
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The network the weights belong to.
    pub spec: NetworkSpec,
    /// Weights by name, on the device they were loaded to.
    pub weights: HashMap<String, Tensor>,
    /// Other metadata stored with the checkpoint.
    pub metadata: HashMap<String, String>,
}

impl Checkpoint {
    /// Builds the network the checkpoint describes; fails if a weight is missing or misshapen. Tensors that
    /// are not weights (names not ending in `.weight`) are ignored.
    pub fn into_network(self, dtype: DType, device: &Device) -> Result<SpikingNetwork> {
        let weights = self.weights.into_iter().filter(|(k, _)| k.ends_with(".weight")).collect();
        SpikingNetwork::from_weights(self.spec, weights, dtype, device)
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder is written, flushed to disk
/// and renamed over `path`, so readers see either the old file or the complete new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            // Persist the rename; not every platform supports syncing a directory.
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Saves the network's weights and spec (plus `metadata`) to a safetensors file, atomically.
pub fn save_checkpoint(path: &Path, net: &SpikingNetwork, metadata: &HashMap<String, String>) -> Result<()> {
    save_checkpoint_with(path, net, &[], metadata)
}

/// Like [`save_checkpoint`], with additional tensors stored beside the weights (e.g. optimizer state);
/// their names must not end in `.weight`.
pub fn save_checkpoint_with(
    path: &Path,
    net: &SpikingNetwork,
    extra: &[(String, Tensor)],
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let mut meta = metadata.clone();
    meta.insert(FORMAT_KEY.into(), FORMAT.into());
    meta.insert(SPEC_KEY.into(), net.spec().to_json());
    let mut tensors = Vec::new();
    for (name, t) in net.weights().iter().map(|(n, v)| (n, v.as_tensor())).chain(extra.iter().map(|(n, t)| (n, t))) {
        tensors.push((name.clone(), t.to_device(&Device::Cpu)?.contiguous()?));
    }
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta))
        .map_err(|e| Error::Checkpoint { path: path.to_path_buf(), msg: e.to_string() })?;
    write_atomic(path, &bytes).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

/// Loads a checkpoint written by [`save_checkpoint`]. Truncated or foreign files give an error naming
/// the file; the weights' shapes are checked when the network is built ([`Checkpoint::into_network`]).
pub fn load_checkpoint(path: &Path, device: &Device) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    parse_checkpoint(&bytes, path, device)
}

/// Decodes the bytes of a checkpoint file; `path` names it in errors. See [`load_checkpoint`].
pub fn parse_checkpoint(bytes: &[u8], path: &Path, device: &Device) -> Result<Checkpoint> {
    let bad = |msg: String| Error::Checkpoint { path: path.to_path_buf(), msg };
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
    let mut metadata = header.metadata().clone().unwrap_or_default();
    if metadata.get(FORMAT_KEY).map(String::as_str) != Some(FORMAT) {
        return Err(bad(format!("missing '{FORMAT_KEY}: {FORMAT}' metadata: not a checkpoint of this toolkit")));
    }
    metadata.remove(FORMAT_KEY);
    let spec_json = metadata.remove(SPEC_KEY).ok_or_else(|| bad("no network spec in the metadata".into()))?;
    let spec = NetworkSpec::from_json(&spec_json).map_err(|e| bad(e.to_string()))?;
    let weights = candle_core::safetensors::load_buffer(bytes, device).map_err(|e| bad(e.to_string()))?;
    Ok(Checkpoint { spec, weights, metadata })
}
