//! Crafted files of about 100 kB that claim, or inflate to, gigabytes are refused while the process's
//! allocations stay small. The test binary counts every allocation, so the bound is measured, not assumed;
//! it holds one test so that nothing else allocates while it measures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use snn_data::mnist::Split;

/// The system allocator, counting the bytes in use and their peak.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::SeqCst);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the peak of bytes allocated beyond those in use when it started.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = IN_USE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst) - base)
}

/// Bytes that real readers may use for a refused file: buffers of a decoder, an error message.
const SMALL: usize = 8 << 20;
/// What the crafted files inflate to.
const INFLATED: u64 = 100 << 20;

fn zeros() -> impl Read {
    std::io::repeat(0).take(INFLATED)
}

fn zlib(prefix: &[u8], tail: impl Read) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(prefix).unwrap();
    std::io::copy(&mut tail.take(u64::MAX), &mut z).unwrap();
    z.finish().unwrap()
}

fn element(ty: u32, data: &[u8]) -> Vec<u8> {
    let mut v = ty.to_le_bytes().to_vec();
    v.extend((data.len() as u32).to_le_bytes());
    v.extend_from_slice(data);
    v.resize(v.len().next_multiple_of(8), 0);
    v
}

/// A MATLAB v5 file with one compressed matrix `X`: `dims`, a data tag declaring `declared` bytes, and
/// `INFLATED` zero bytes after it; the inner matrix tag declares `matrix_len` bytes.
fn svhn_bomb(dims: &[i32], declared: u32, matrix_len: u32) -> Vec<u8> {
    let mut body = element(6, &[9, 0, 0, 0, 0, 0, 0, 0]);
    body.extend(element(5, &dims.iter().flat_map(|d| d.to_le_bytes()).collect::<Vec<u8>>()));
    body.extend((1u32 | (1 << 16)).to_le_bytes());
    body.extend(*b"X\0\0\0");
    body.extend(2u32.to_le_bytes());
    body.extend(declared.to_le_bytes());
    let mut inner = 14u32.to_le_bytes().to_vec();
    inner.extend(matrix_len.to_le_bytes());
    inner.extend(body);
    let data = zlib(&inner, zeros());
    let mut file = b"MATLAB 5.0 MAT-file".to_vec();
    file.resize(124, b' ');
    file.extend([0x00, 0x01]);
    file.extend(b"IM");
    file.extend(15u32.to_le_bytes());
    file.extend((data.len() as u32).to_le_bytes());
    file.extend(data);
    file
}

/// Reads a crafted file and returns the reader's error message.
type Refusal = Box<dyn Fn() -> String>;

#[test]
fn crafted_files_claiming_gigabytes_are_refused_with_small_allocations() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases: Vec<(&str, Refusal)> = Vec::new();

    // SVHN: dimensions of 40 GB with a matrix tag of 4 GB, and plausible tags over dimensions that need
    // 30 kB; both compressed elements are about 100 kB and inflate to 100 MB.
    let claims = svhn_bomb(&[32, 32, 3, 13_000_000], u32::MAX, u32::MAX);
    let inflates = svhn_bomb(&[32, 32, 3, 10], 30_720, INFLATED as u32 + 64);
    let negative = svhn_bomb(&[32, 32, 3, -5], 0, 64);
    assert!(claims.len() < 200_000 && inflates.len() < 200_000, "the crafted files are small");
    for (name, bytes) in [("claims", claims), ("inflates", inflates), ("negative", negative)] {
        let path = dir.path().join(format!("svhn_{name}.mat"));
        std::fs::write(&path, &bytes).unwrap();
        cases.push((name, Box::new(move || snn_data::svhn::load_file(&path).unwrap_err().to_string())));
    }

    // IDX, gzip: a header declaring 10 bytes followed by 100 MB.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&[0, 0, 8, 1, 0, 0, 0, 10]).unwrap();
    std::io::copy(&mut zeros(), &mut gz).unwrap();
    let idx_path = dir.path().join("train-labels-idx1-ubyte.gz");
    std::fs::write(&idx_path, gz.finish().unwrap()).unwrap();
    cases.push(("idx", Box::new(move || snn_data::idx::read(&idx_path).unwrap_err().to_string())));

    // CIFAR-10 archive: one 100 MB "image" of zeros in its class folder.
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best()));
    let mut header = tar::Header::new_gnu();
    header.set_size(INFLATED);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "cifar/train/cat/0001.png", zeros()).unwrap();
    let archive = dir.path().join("cifar.tar.gz");
    std::fs::write(&archive, tar.into_inner().unwrap().finish().unwrap()).unwrap();
    cases.push((
        "cifar",
        Box::new(move || snn_data::cifar::load(Path::new(&archive), Split::Train).unwrap_err().to_string()),
    ));

    for (name, case) in &cases {
        let (err, peak) = peak_during(case);
        eprintln!("{name}: refused with peak allocation {peak} bytes: {err}");
        assert!(peak < SMALL, "{name}: {peak} bytes allocated while refusing the file ({err})");
    }
}
