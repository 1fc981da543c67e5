//! NIR files: HDF5 with a `version` string and the graph in the group `node` (each node a group of
//! arrays and strings, `edges` an N×2 string array), through the system HDF5 library.

use std::collections::BTreeMap;
use std::path::Path;

use hdf5::types::{FloatSize, TypeDescriptor, VarLenUnicode};
use hdf5::{Dataset, Group};

use super::graph::{NirArray, NirData, NirGraph, NirValue};
use crate::{temp_path, Error, Result};

/// The NIR format version written into new files.
pub const NIR_VERSION: &str = "1.0.0";

fn h5_error(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Nir(format!("{}: {what}: {e}", path.display()))
}

/// Writes `graph` as a NIR file, atomically (a temporary file in the same folder renamed over `path`).
pub fn write_nir(path: &Path, graph: &NirGraph) -> Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let file = hdf5::File::create(&tmp).map_err(|e| h5_error(path, "cannot create", e))?;
        write_array(&file, "version", &NirArray::string(NIR_VERSION)).map_err(|e| h5_error(path, "cannot write", e))?;
        let node = file.create_group("node").map_err(|e| h5_error(path, "cannot write", e))?;
        write_group(&node, &graph.to_group()).map_err(|e| h5_error(path, "cannot write", e))?;
        file.close().map_err(|e| h5_error(path, "cannot close", e))?;
        // On disk before the rename, as `write_atomic` does for the other files.
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|source| Error::Io { path: tmp.clone(), source })?;
        std::fs::rename(&tmp, path).map_err(|source| Error::Io { path: path.to_path_buf(), source })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_group(group: &Group, values: &BTreeMap<String, NirValue>) -> hdf5::Result<()> {
    for (name, value) in values {
        match value {
            NirValue::Group(g) => write_group(&group.create_group(name)?, g)?,
            NirValue::Array(a) => write_array(group, name, a)?,
        }
    }
    Ok(())
}

fn write_array(group: &Group, name: &str, a: &NirArray) -> hdf5::Result<()> {
    let shape = a.shape.clone();
    match &a.data {
        NirData::F32(v) => group.new_dataset::<f32>().shape(shape).create(name)?.write_raw(v),
        NirData::F64(v) => group.new_dataset::<f64>().shape(shape).create(name)?.write_raw(v),
        NirData::I64(v) => group.new_dataset::<i64>().shape(shape).create(name)?.write_raw(v),
        NirData::Str(v) => {
            let v = v
                .iter()
                .map(|s| s.parse::<VarLenUnicode>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| hdf5::Error::from(e.to_string()))?;
            group.new_dataset::<VarLenUnicode>().shape(shape).create(name)?.write_raw(&v)
        }
    }
}

/// Reads a NIR file. A file that is not HDF5, is truncated, or does not hold a NIR graph gives an error
/// naming the file and what is wrong.
pub fn read_nir(path: &Path) -> Result<NirGraph> {
    if !path.is_file() {
        return Err(Error::Io { path: path.to_path_buf(), source: std::io::Error::from(std::io::ErrorKind::NotFound) });
    }
    let file = hdf5::File::open(path).map_err(|e| h5_error(path, "not a readable HDF5 file", e))?;
    let node =
        file.group("node").map_err(|_| Error::Nir(format!("{}: no 'node' group: not a NIR file", path.display())))?;
    let tree = read_group(&node).map_err(|e| h5_error(path, "cannot read", e))?;
    NirGraph::from_group(&tree).map_err(|e| Error::Nir(format!("{}: {e}", path.display())))
}

fn read_group(group: &Group) -> std::result::Result<BTreeMap<String, NirValue>, String> {
    let mut out = BTreeMap::new();
    for name in group.member_names().map_err(|e| e.to_string())? {
        let value = if let Ok(g) = group.group(&name) {
            NirValue::Group(read_group(&g)?)
        } else {
            let ds = group.dataset(&name).map_err(|e| format!("'{name}': {e}"))?;
            NirValue::Array(read_array(&ds).map_err(|e| format!("dataset '{}': {e}", ds.name()))?)
        };
        out.insert(name, value);
    }
    Ok(out)
}

fn read_array(ds: &Dataset) -> std::result::Result<NirArray, String> {
    let shape = ds.shape();
    let err = |e: hdf5::Error| e.to_string();
    let data = match ds.dtype().map_err(err)?.to_descriptor().map_err(err)? {
        TypeDescriptor::Float(FloatSize::U4) => NirData::F32(ds.read_raw::<f32>().map_err(err)?),
        TypeDescriptor::Float(_) => NirData::F64(ds.read_raw::<f64>().map_err(err)?),
        TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_) | TypeDescriptor::Boolean => {
            NirData::I64(ds.read_raw::<i64>().map_err(err)?)
        }
        TypeDescriptor::VarLenUnicode => {
            NirData::Str(ds.read_raw::<VarLenUnicode>().map_err(err)?.iter().map(|s| s.as_str().to_string()).collect())
        }
        TypeDescriptor::VarLenAscii => NirData::Str(
            ds.read_raw::<hdf5::types::VarLenAscii>().map_err(err)?.iter().map(|s| s.as_str().to_string()).collect(),
        ),
        TypeDescriptor::FixedAscii(_) | TypeDescriptor::FixedUnicode(_) => {
            // Fixed-length strings convert to variable-length ones on read.
            NirData::Str(ds.read_raw::<VarLenUnicode>().map_err(err)?.iter().map(|s| s.as_str().to_string()).collect())
        }
        other => return Err(format!("holds {other:?}, which a NIR graph does not use")),
    };
    Ok(NirArray { shape, data })
}
