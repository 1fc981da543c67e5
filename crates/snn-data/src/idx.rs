//! The IDX file format (MNIST, Fashion-MNIST), raw or gzip-compressed.
//!
//! An IDX file is a big-endian header — two zero bytes, a type code (`0x08` for unsigned bytes), the number
//! of dimensions `d`, then `d` 32-bit sizes — followed by the data in row-major order. Only `u8` data is
//! supported, which covers every MNIST-style dataset.

use std::io::{BufRead, Read};
use std::path::Path;

use crate::{Error, Result};

/// Largest data an IDX header may declare (guards against absurd headers; real MNIST-style files hold
/// at most 47 MB).
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// An n-dimensional `u8` array read from an IDX file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Sizes of the dimensions.
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<u8>,
}

fn format_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format { path: path.to_path_buf(), msg: msg.into() }
}

/// The dimensions an IDX header declares, its length and the data bytes they need, from the start of a file
/// (`bytes` may hold more than the header).
fn header(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, usize, usize)> {
    if bytes.len() < 4 {
        return Err(format_err(
            path,
            format!("truncated header: {} bytes, an IDX header needs at least 4", bytes.len()),
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(format_err(path, format!("bad magic {:02x?}: not an IDX file", &bytes[..4])));
    }
    if bytes[2] != 0x08 {
        return Err(format_err(path, format!("IDX type code 0x{:02x} is not supported (only 0x08 = u8)", bytes[2])));
    }
    let ndims = bytes[3] as usize;
    if ndims == 0 {
        return Err(format_err(path, "IDX header declares 0 dimensions"));
    }
    let header_len = 4 + 4 * ndims;
    if bytes.len() < header_len {
        return Err(format_err(
            path,
            format!("truncated header: {} bytes, {ndims} dimensions need {header_len}", bytes.len()),
        ));
    }
    let dims: Vec<usize> =
        bytes[4..header_len].chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n as u64 <= MAX_FILE_BYTES)
        .ok_or_else(|| format_err(path, format!("absurd dimensions {dims:?}")))?;
    Ok((dims, header_len, expected))
}

/// Checks that the data holds exactly the `expected` bytes that `dims` need.
fn check_body(body_len: usize, expected: usize, dims: &[usize], path: &Path) -> Result<()> {
    if body_len < expected {
        return Err(format_err(
            path,
            format!("truncated data: dimensions {dims:?} need {expected} bytes, file has {body_len}"),
        ));
    }
    if body_len > expected {
        return Err(format_err(
            path,
            format!("{} unexpected trailing bytes after {expected} bytes of data", body_len - expected),
        ));
    }
    Ok(())
}

/// Parses IDX bytes. `path` is used in error messages only.
pub fn parse(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    let (dims, header_len, expected) = header(bytes, path)?;
    let body = &bytes[header_len..];
    check_body(body.len(), expected, &dims, path)?;
    Ok(IdxArray { dims, data: body.to_vec() })
}

/// Parses an IDX stream (e.g. a gzip decoder) without reading more of it than its header declares: the
/// header is read and checked first, then at most one byte beyond the data it declares, so a stream that
/// inflates far beyond its header (a decompression bomb) is refused after that byte. `path` names it in
/// errors.
pub fn parse_reader(reader: impl Read, path: &Path) -> Result<IdxArray> {
    parse_stream(reader, path, "unreadable data")
}

/// [`parse_reader`] on a gzip-compressed IDX stream.
pub fn parse_gzip(reader: impl Read, path: &Path) -> Result<IdxArray> {
    parse_stream(flate2::read::GzDecoder::new(reader), path, "corrupt gzip stream")
}

/// [`parse_reader`], naming a read error `what` (e.g. a corrupt gzip stream).
fn parse_stream(mut reader: impl Read, path: &Path, what: &str) -> Result<IdxArray> {
    let corrupt = |e: std::io::Error| format_err(path, format!("{what}: {e}"));
    let mut head = Vec::new();
    (&mut reader).take(4).read_to_end(&mut head).map_err(corrupt)?;
    if head.len() == 4 {
        (&mut reader).take(4 * u64::from(head[3])).read_to_end(&mut head).map_err(corrupt)?;
    }
    let (dims, _, expected) = header(&head, path)?;
    let mut data = Vec::new();
    reader.take(expected as u64 + 1).read_to_end(&mut data).map_err(corrupt)?;
    check_body(data.len(), expected, &dims, path)?;
    Ok(IdxArray { dims, data })
}

/// Reads an IDX file, raw or gzip-compressed (detected by its magic bytes), through [`parse_reader`].
pub fn read(path: &Path) -> Result<IdxArray> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
    if file.fill_buf().map_err(io)?.starts_with(&[0x1f, 0x8b]) {
        parse_gzip(file, path)
    } else {
        parse_reader(file, path)
    }
}

/// Reads an image file: a 3-dimensional IDX array `[N, H, W]`. Returns the pixels and `[N, H, W]`.
pub fn read_images(path: &Path) -> Result<(Vec<u8>, [usize; 3])> {
    images_from(read(path)?, path)
}

/// Interprets a parsed array as images `[N, H, W]`.
pub fn images_from(a: IdxArray, path: &Path) -> Result<(Vec<u8>, [usize; 3])> {
    match a.dims[..] {
        [n, h, w] if h > 0 && w > 0 => Ok((a.data, [n, h, w])),
        _ => Err(format_err(path, format!("expected image dimensions [N, H, W], found {:?}", a.dims))),
    }
}

/// Reads a label file: a 1-dimensional IDX array whose values must all be below `classes`.
pub fn read_labels(path: &Path, classes: usize) -> Result<Vec<u8>> {
    labels_from(read(path)?, path, classes)
}

/// Interprets a parsed array as labels below `classes`.
pub fn labels_from(a: IdxArray, path: &Path, classes: usize) -> Result<Vec<u8>> {
    if a.dims.len() != 1 {
        return Err(format_err(path, format!("expected label dimensions [N], found {:?}", a.dims)));
    }
    if let Some((i, l)) = a.data.iter().enumerate().find(|(_, &l)| l as usize >= classes) {
        return Err(format_err(path, format!("label {l} at index {i} is out of range (0..{classes})")));
    }
    Ok(a.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(dims: &[u32]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend(d.to_be_bytes());
        }
        v
    }

    #[test]
    fn parses_a_valid_file() {
        let mut b = header(&[2, 2, 3]);
        b.extend(0..12u8);
        let a = parse(&b, Path::new("x")).unwrap();
        assert_eq!(a.dims, vec![2, 2, 3]);
        assert_eq!(a.data, (0..12).collect::<Vec<u8>>());
    }

    #[test]
    fn every_truncation_is_an_error_naming_the_file() {
        let mut b = header(&[2, 2, 3]);
        b.extend(0..12u8);
        for cut in 0..b.len() {
            let err = parse(&b[..cut], Path::new("imgs.idx")).unwrap_err().to_string();
            assert!(err.contains("imgs.idx") && err.contains("truncated"), "cut {cut}: {err}");
        }
    }

    #[test]
    fn rejects_bad_magic_type_trailing_and_absurd_sizes() {
        let p = Path::new("f");
        assert!(parse(&[1, 0, 8, 1, 0, 0, 0, 0], p).unwrap_err().to_string().contains("magic"));
        assert!(parse(&[0, 0, 0x0d, 1, 0, 0, 0, 0], p).unwrap_err().to_string().contains("type code"));
        let mut b = header(&[1]);
        b.extend([3, 4]);
        assert!(parse(&b, p).unwrap_err().to_string().contains("trailing"));
        let b = header(&[u32::MAX, u32::MAX, u32::MAX]);
        assert!(parse(&b, p).unwrap_err().to_string().contains("absurd"));
        let mut b = header(&[2]);
        b.extend([1, 10]);
        let err = labels_from(parse(&b, p).unwrap(), p, 10).unwrap_err().to_string();
        assert!(err.contains("label 10 at index 1"), "{err}");
    }
}
