//! SVHN cropped digits from the official MATLAB v5 files (`train_32x32.mat`, `test_32x32.mat`,
//! `extra_32x32.mat`): `X` is `uint8 [32, 32, 3, N]` (column-major), `y` is `[N, 1]` with labels 1..10,
//! where 10 stands for the digit 0. Data elements may be zlib-compressed (`miCOMPRESSED`).

use std::io::Read;
use std::path::Path;

use crate::mnist::Split;
use crate::{Error, ImageDataset, Result};

/// Largest decompressed element accepted.
const MAX_ELEMENT_BYTES: u64 = 4 << 30;

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;

/// A numeric MATLAB array: name, dimensions (column-major) and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct MatArray {
    /// Variable name.
    pub name: String,
    /// Dimensions.
    pub dims: Vec<usize>,
    /// Raw bytes when the data is `uint8` (images), else empty.
    pub bytes: Vec<u8>,
    /// Values converted to `f64` when the data is not `uint8`, else empty.
    pub values: Vec<f64>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    big_endian: bool,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Format { path: self.path.to_path_buf(), msg: msg.into() }
    }

    fn u32_at(&self, at: usize) -> Result<u32> {
        let b = self.buf.get(at..at + 4).ok_or_else(|| self.err(format!("truncated at byte {at}")))?;
        let a = [b[0], b[1], b[2], b[3]];
        Ok(if self.big_endian { u32::from_be_bytes(a) } else { u32::from_le_bytes(a) })
    }

    /// Reads one element tag and returns (type, data).
    fn element(&mut self) -> Result<(u32, &'a [u8])> {
        let start = self.pos;
        let word = self.u32_at(start)?;
        if word >> 16 != 0 {
            // Small data element: type and size in one word, data in the next four bytes.
            let (ty, n) = (word & 0xffff, (word >> 16) as usize);
            if n > 4 {
                return Err(self.err(format!("small element at byte {start} claims {n} bytes")));
            }
            let data =
                self.buf.get(start + 4..start + 4 + n).ok_or_else(|| self.err(format!("truncated at byte {start}")))?;
            self.pos = start + 8;
            return Ok((ty, data));
        }
        let n = self.u32_at(start + 4)? as usize;
        let end = start.checked_add(8 + n).filter(|&e| e <= self.buf.len()).ok_or_else(|| {
            self.err(format!(
                "element at byte {start} claims {n} bytes, only {} remain",
                self.buf.len().saturating_sub(start + 8)
            ))
        })?;
        let data = &self.buf[start + 8..end];
        // Elements are padded to 8 bytes, except compressed ones.
        self.pos = if word == MI_COMPRESSED { end } else { (end + 7) & !7 };
        Ok((word, data))
    }
}

fn numeric(ty: u32, data: &[u8], big: bool, r: &Reader) -> Result<Vec<f64>> {
    macro_rules! conv {
        ($t:ty, $n:expr) => {
            data.chunks_exact($n)
                .map(|c| {
                    let a: [u8; $n] = c.try_into().unwrap_or([0; $n]);
                    (if big { <$t>::from_be_bytes(a) } else { <$t>::from_le_bytes(a) }) as f64
                })
                .collect()
        };
    }
    Ok(match ty {
        MI_INT8 => data.iter().map(|&b| b as i8 as f64).collect(),
        MI_UINT8 => data.iter().map(|&b| b as f64).collect(),
        MI_INT16 => conv!(i16, 2),
        MI_UINT16 => conv!(u16, 2),
        MI_INT32 => conv!(i32, 4),
        MI_UINT32 => conv!(u32, 4),
        MI_SINGLE => conv!(f32, 4),
        MI_DOUBLE => conv!(f64, 8),
        MI_INT64 => conv!(i64, 8),
        MI_UINT64 => conv!(u64, 8),
        other => return Err(r.err(format!("unsupported numeric data type {other}"))),
    })
}

fn parse_matrix(data: &[u8], big_endian: bool, path: &Path) -> Result<MatArray> {
    let mut r = Reader { buf: data, pos: 0, big_endian, path };
    let (_, _flags) = r.element()?;
    let (dty, dims_raw) = r.element()?;
    if dty != MI_INT32 {
        return Err(r.err("matrix dimensions are not int32"));
    }
    let dims: Vec<usize> =
        numeric(MI_INT32, dims_raw, big_endian, &r)?.into_iter().map(|d| d.max(0.0) as usize).collect();
    let (_, name_raw) = r.element()?;
    let name = String::from_utf8_lossy(name_raw).trim_end_matches('\0').to_string();
    let (ty, real) = r.element()?;
    let count = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| r.err("absurd dimensions"))?;
    let (bytes, values) =
        if ty == MI_UINT8 { (real.to_vec(), Vec::new()) } else { (Vec::new(), numeric(ty, real, big_endian, &r)?) };
    let len = if ty == MI_UINT8 { bytes.len() } else { values.len() };
    if len != count {
        return Err(r.err(format!("variable '{name}': dimensions {dims:?} need {count} values, found {len}")));
    }
    Ok(MatArray { name, dims, bytes, values })
}

/// Parses every numeric array of a MATLAB v5 file.
pub fn parse_mat(buf: &[u8], path: &Path) -> Result<Vec<MatArray>> {
    let err = |msg: String| Error::Format { path: path.to_path_buf(), msg };
    if buf.len() < 128 {
        return Err(err(format!("truncated header: {} bytes, a MATLAB v5 header has 128", buf.len())));
    }
    let big_endian = match &buf[126..128] {
        b"IM" => false,
        b"MI" => true,
        other => return Err(err(format!("bad endian indicator {other:?}: not a MATLAB v5 file"))),
    };
    let mut r = Reader { buf, pos: 128, big_endian, path };
    let mut arrays = Vec::new();
    while r.pos < buf.len() {
        let (ty, data) = r.element()?;
        match ty {
            MI_MATRIX => arrays.push(parse_matrix(data, big_endian, path)?),
            MI_COMPRESSED => {
                let mut inflated = Vec::new();
                flate2::read::ZlibDecoder::new(data)
                    .take(MAX_ELEMENT_BYTES + 1)
                    .read_to_end(&mut inflated)
                    .map_err(|e| err(format!("corrupt compressed element: {e}")))?;
                if inflated.len() as u64 > MAX_ELEMENT_BYTES {
                    return Err(err("compressed element inflates beyond the size limit".into()));
                }
                let mut inner = Reader { buf: &inflated, pos: 0, big_endian, path };
                let (ity, idata) = inner.element()?;
                if ity == MI_MATRIX {
                    arrays.push(parse_matrix(idata, big_endian, path)?);
                }
            }
            _ => {}
        }
    }
    Ok(arrays)
}

/// Reads one SVHN `.mat` file into images `[3, 32, 32]` and labels 0..9.
pub fn load_file(path: &Path) -> Result<ImageDataset> {
    let buf = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    parse_file(&buf, path)
}

/// Decodes the bytes of an SVHN `.mat` file (see [`load_file`]); `path` names it in errors.
pub fn parse_file(buf: &[u8], path: &Path) -> Result<ImageDataset> {
    let arrays = parse_mat(buf, path)?;
    let err = |msg: String| Error::Format { path: path.to_path_buf(), msg };
    let find = |n: &str| arrays.iter().find(|a| a.name == n).ok_or_else(|| err(format!("no variable '{n}'")));
    let (x, y) = (find("X")?, find("y")?);
    let [32, 32, 3, n] = x.dims[..] else {
        return Err(err(format!("X has dimensions {:?}, expected [32, 32, 3, N]", x.dims)));
    };
    if x.bytes.is_empty() && n > 0 {
        return Err(err("X must be uint8".into()));
    }
    let labels_raw: Vec<f64> =
        if y.bytes.is_empty() { y.values.clone() } else { y.bytes.iter().map(|&b| b as f64).collect() };
    if labels_raw.len() != n {
        return Err(err(format!("X holds {n} images but y holds {} labels", labels_raw.len())));
    }
    let mut labels = Vec::with_capacity(n);
    for (i, &l) in labels_raw.iter().enumerate() {
        if !(l.fract() == 0.0 && (1.0..=10.0).contains(&l)) {
            return Err(err(format!("label {l} at index {i} is not in 1..10")));
        }
        labels.push((l as u8) % 10);
    }
    // Column-major X[h, w, c, n] → row-major [n, c, h, w].
    let mut images = vec![0u8; n * 3072];
    for img in 0..n {
        for c in 0..3 {
            for w in 0..32 {
                for h in 0..32 {
                    images[img * 3072 + c * 1024 + h * 32 + w] = x.bytes[h + 32 * w + 1024 * c + 3072 * img];
                }
            }
        }
    }
    ImageDataset::new(images, labels, [3, 32, 32], 10)
}

/// Loads `train_32x32.mat` or `test_32x32.mat` from `dir`.
pub fn load(dir: &Path, split: Split) -> Result<ImageDataset> {
    let name = match split {
        Split::Train => "train_32x32.mat",
        Split::Test => "test_32x32.mat",
    };
    let path = dir.join(name);
    if !path.is_file() {
        return Err(Error::NotFound { what: "SVHN".into(), dir: dir.to_path_buf(), candidates: name.into() });
    }
    load_file(&path)
}
