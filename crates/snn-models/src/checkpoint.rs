//! Safetensors checkpoints that carry their own network spec.

use std::collections::{BTreeMap, HashMap};
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
    let tmp = temp_path(path);
    let dir = tmp.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
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

/// The temporary file [`write_atomic`] writes before renaming it over `path`: a hidden file in the same
/// folder, named after `path` and the process. A process killed while writing leaves it behind, never a
/// partial `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.join(format!(".{file_name}.{}.tmp", std::process::id()))
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
    let bytes = checkpoint_bytes(net, extra, metadata)?;
    write_atomic(path, &bytes).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

/// The bytes of the checkpoint [`save_checkpoint_with`] writes: the weights, the `extra` tensors, the spec
/// and `metadata` as safetensors, with the header's keys in sorted order so that equal contents always give
/// equal bytes.
pub fn checkpoint_bytes(
    net: &SpikingNetwork,
    extra: &[(String, Tensor)],
    metadata: &HashMap<String, String>,
) -> Result<Vec<u8>> {
    let mut meta = metadata.clone();
    meta.insert(FORMAT_KEY.into(), FORMAT.into());
    meta.insert(SPEC_KEY.into(), net.spec().to_json());
    let mut tensors = Vec::new();
    for (name, t) in net.weights().iter().map(|(n, v)| (n, v.as_tensor())).chain(extra.iter().map(|(n, t)| (n, t))) {
        tensors.push((name.clone(), t.to_device(&Device::Cpu)?.contiguous()?));
    }
    let bad = |msg: String| Error::Weights(format!("cannot serialise the checkpoint: {msg}"));
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta))
        .map_err(|e| bad(e.to_string()))?;
    canonical_header(bytes).map_err(bad)
}

/// The header of a safetensors file: its metadata and where each tensor lies, both kept in sorted maps.
#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    #[serde(rename = "__metadata__", default, skip_serializing_if = "Option::is_none")]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    tensors: BTreeMap<String, TensorEntry>,
}

/// One tensor of a safetensors header.
#[derive(serde::Serialize, serde::Deserialize)]
struct TensorEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// Rewrites the header of serialised safetensors bytes with every key in sorted order, so that equal tensors
/// and metadata always give equal bytes (the safetensors crate writes the metadata map in hash order, which
/// changes from process to process). The tensor data is not touched: its offsets are relative to the end of
/// the header.
fn canonical_header(bytes: Vec<u8>) -> std::result::Result<Vec<u8>, String> {
    let short = || "serialised safetensors shorter than their header".to_string();
    let declared = bytes.get(..8).ok_or_else(short)?;
    let len = u64::from_le_bytes(declared.try_into().map_err(|_| short())?) as usize;
    let header = bytes.get(8..8 + len).ok_or_else(short)?;
    let header: Header = serde_json::from_slice(header).map_err(|e| format!("unreadable header: {e}"))?;
    let mut text = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    // Keep the data 8-byte aligned, as the safetensors crate does, by padding the header with spaces.
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - 8 - len);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + len..]);
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zoo::builtin;
    use rand::SeedableRng;

    /// Two saves of the same weights and metadata give the same bytes, whatever order the metadata map
    /// iterates in, and the file reads back with every tensor and metadata entry intact.
    #[test]
    fn equal_checkpoints_are_equal_bytes() -> Result<()> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let net = SpikingNetwork::new(builtin("lenet")?, &mut rng, DType::F32, &Device::Cpu)?;
        let dir = std::env::temp_dir().join(format!("snn-ckpt-bytes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
        let mut files = Vec::new();
        for i in 0..4 {
            // Maps built with different keys first hash their entries into different orders.
            let mut meta = HashMap::new();
            for k in 0..12 {
                meta.insert(format!("key{}", (k * 5 + i) % 12), format!("value{}", (k * 5 + i) % 12));
            }
            let path = dir.join(format!("c{i}.safetensors"));
            save_checkpoint(&path, &net, &meta)?;
            files.push(std::fs::read(&path).map_err(|source| Error::Io { path: path.clone(), source })?);
        }
        assert!(files.windows(2).all(|w| w[0] == w[1]), "checkpoint bytes differ between equal saves");
        let back = load_checkpoint(&dir.join("c0.safetensors"), &Device::Cpu)?;
        assert_eq!(back.metadata.len(), 12);
        assert_eq!(back.metadata["key7"], "value7");
        for (name, var) in net.weights() {
            let a = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let b = back.weights[name].flatten_all()?.to_vec1::<f32>()?;
            assert_eq!(a, b, "{name}");
        }
        let header_len = u64::from_le_bytes(files[0][..8].try_into().unwrap_or_default()) as usize;
        assert_eq!(header_len % 8, 0, "data stays 8-byte aligned");
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
