//! SVHN cropped digits from the official MATLAB v5 files (`train_32x32.mat`, `test_32x32.mat`,
//! `extra_32x32.mat`): `X` is `uint8 [32, 32, 3, N]` (column-major), `y` is `[N, 1]` with labels 1..10,
//! where 10 stands for the digit 0. Data elements may be zlib-compressed (`miCOMPRESSED`).

use std::io::Read;
use std::path::Path;

use crate::mnist::Split;
use crate::{Error, ImageDataset, Result};

/// Largest array accepted, in bytes of its stored type: the real `extra_32x32.mat` holds 531,131 images of
/// 3,072 bytes (1.6 GB), `train_32x32.mat` 73,257 (225 MB).
const MAX_ARRAY_BYTES: usize = 2 << 30;

/// zlib inflates data by at most about 1,032 to 1: a compressed element whose inner element claims more than
/// this many times its compressed size cannot be genuine and is refused before anything is inflated.
const MAX_INFLATE_RATIO: usize = 1032;

/// Bytes of an inflated matrix read before its size is checked against its dimensions: enough for the
/// flags, up to 32 dimensions, a long variable name and the data element's tag.
const MATRIX_HEADER_PREFIX: usize = 4096;

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

/// Bytes per value of a numeric MATLAB data type.
fn value_bytes(ty: u32) -> Option<usize> {
    match ty {
        MI_INT8 | MI_UINT8 => Some(1),
        MI_INT16 | MI_UINT16 => Some(2),
        MI_INT32 | MI_UINT32 | MI_SINGLE => Some(4),
        MI_DOUBLE | MI_INT64 | MI_UINT64 => Some(8),
        _ => None,
    }
}

/// Widens values of a numeric type to `f64`; `data` holds a whole number of values (checked by the caller).
fn numeric(ty: u32, data: &[u8], big: bool) -> Vec<f64> {
    macro_rules! conv {
        ($t:ty, $n:expr) => {
            data.chunks_exact($n)
                .map(|c| {
                    let a: [u8; $n] = std::array::from_fn(|i| c[i]);
                    (if big { <$t>::from_be_bytes(a) } else { <$t>::from_le_bytes(a) }) as f64
                })
                .collect()
        };
    }
    match ty {
        MI_INT8 => data.iter().map(|&b| b as i8 as f64).collect(),
        MI_INT16 => conv!(i16, 2),
        MI_UINT16 => conv!(u16, 2),
        MI_INT32 => conv!(i32, 4),
        MI_UINT32 => conv!(u32, 4),
        MI_SINGLE => conv!(f32, 4),
        MI_DOUBLE => conv!(f64, 8),
        MI_INT64 => conv!(i64, 8),
        MI_UINT64 => conv!(u64, 8),
        _ => data.iter().map(|&b| b as f64).collect(),
    }
}

/// The header of a matrix element: everything before its real data, and where that data lies.
struct MatrixHeader {
    name: String,
    dims: Vec<usize>,
    /// Data type of the real part.
    ty: u32,
    /// Offset of the real part's data in the matrix element's body.
    data_start: usize,
    /// Bytes of real data the dimensions need (and the data element declares).
    data_len: usize,
}

impl MatrixHeader {
    /// Reads the header from the start of a matrix element's body (the rest of the body may be absent) and
    /// checks the declared data size against the dimensions, before any data is read or converted.
    fn read(body: &[u8], big_endian: bool, path: &Path) -> Result<Self> {
        let mut r = Reader { buf: body, pos: 0, big_endian, path };
        let (_, _flags) = r.element()?;
        let (dty, dims_raw) = r.element()?;
        if dty != MI_INT32 || dims_raw.len() % 4 != 0 {
            return Err(r.err("matrix dimensions are not int32"));
        }
        let mut dims = Vec::with_capacity(dims_raw.len() / 4);
        for c in dims_raw.chunks_exact(4) {
            let a: [u8; 4] = std::array::from_fn(|i| c[i]);
            let d = if big_endian { i32::from_be_bytes(a) } else { i32::from_le_bytes(a) };
            dims.push(usize::try_from(d).map_err(|_| r.err(format!("negative matrix dimension {d}")))?);
        }
        let (_, name_raw) = r.element()?;
        let name = String::from_utf8_lossy(name_raw).trim_end_matches('\0').to_string();
        // The real part's tag (its data may lie beyond `body`).
        let start = r.pos;
        let word = r.u32_at(start)?;
        let (ty, declared, data_start) = if word >> 16 != 0 {
            (word & 0xffff, (word >> 16) as usize, start + 4)
        } else {
            (word, r.u32_at(start + 4)? as usize, start + 8)
        };
        let size =
            value_bytes(ty).ok_or_else(|| r.err(format!("variable '{name}': unsupported numeric data type {ty}")))?;
        let data_len =
            dims.iter().try_fold(size, |a, &d| a.checked_mul(d)).filter(|&n| n <= MAX_ARRAY_BYTES).ok_or_else(
                || r.err(format!("variable '{name}': absurd dimensions {dims:?} (limit {MAX_ARRAY_BYTES} bytes)")),
            )?;
        if declared != data_len {
            return Err(r.err(format!(
                "variable '{name}': dimensions {dims:?} need {data_len} bytes of data, the element declares {declared}"
            )));
        }
        Ok(Self { name, dims, ty, data_start, data_len })
    }

    /// Bytes of the whole matrix body: header and data, padded to 8 bytes.
    fn body_len(&self) -> usize {
        (self.data_start + self.data_len).next_multiple_of(8)
    }
}

fn parse_matrix(data: &[u8], big_endian: bool, path: &Path) -> Result<MatArray> {
    let h = MatrixHeader::read(data, big_endian, path)?;
    let real = data.get(h.data_start..h.data_start + h.data_len).ok_or_else(|| Error::Format {
        path: path.to_path_buf(),
        msg: format!("variable '{}': truncated data ({} bytes expected)", h.name, h.data_len),
    })?;
    let (bytes, values) =
        if h.ty == MI_UINT8 { (real.to_vec(), Vec::new()) } else { (Vec::new(), numeric(h.ty, real, big_endian)) };
    Ok(MatArray { name: h.name, dims: h.dims, bytes, values })
}

/// Inflates a compressed element whose content is a matrix, reading no more than the matrix's dimensions
/// need; `None` for any other content. The inner element's claimed size is checked against what its
/// compressed bytes can hold, and against its dimensions, before the data is inflated.
fn inflate_matrix(data: &[u8], big_endian: bool, path: &Path) -> Result<Option<Vec<u8>>> {
    let err = |msg: String| Error::Format { path: path.to_path_buf(), msg };
    let corrupt = |e: std::io::Error| err(format!("corrupt compressed element: {e}"));
    let mut z = flate2::read::ZlibDecoder::new(data);
    let mut tag = [0u8; 8];
    z.read_exact(&mut tag).map_err(corrupt)?;
    let word = |b: [u8; 4]| if big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) };
    let ty = word([tag[0], tag[1], tag[2], tag[3]]);
    let len = word([tag[4], tag[5], tag[6], tag[7]]) as usize;
    if ty != MI_MATRIX {
        return Ok(None);
    }
    if len > data.len().saturating_mul(MAX_INFLATE_RATIO) {
        return Err(err(format!(
            "a compressed element of {} bytes claims to hold {len} bytes, more than zlib can inflate it to",
            data.len()
        )));
    }
    let mut body = Vec::new();
    (&mut z).take(len.min(MATRIX_HEADER_PREFIX) as u64).read_to_end(&mut body).map_err(corrupt)?;
    let header = MatrixHeader::read(&body, big_endian, path)?;
    if len < header.data_start + header.data_len || len > header.body_len() {
        return Err(err(format!(
            "variable '{}': a matrix of {} bytes declares {len} bytes",
            header.name,
            header.body_len()
        )));
    }
    (&mut z).take((len - body.len()) as u64).read_to_end(&mut body).map_err(corrupt)?;
    if body.len() != len {
        return Err(err(format!("compressed element inflates to {} bytes, its tag declares {len}", body.len())));
    }
    Ok(Some(body))
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
                if let Some(body) = inflate_matrix(data, big_endian, path)? {
                    arrays.push(parse_matrix(&body, big_endian, path)?);
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
