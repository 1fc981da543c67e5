//! SVHN reader on MATLAB v5 files written here in the official layout (plain and zlib-compressed
//! elements), and on malformed ones.

use std::io::Write;
use std::path::Path;

use snn_data::mnist::Split;
use snn_data::svhn;

fn pad8(v: &mut Vec<u8>) {
    while v.len() % 8 != 0 {
        v.push(0);
    }
}

fn element(ty: u32, data: &[u8]) -> Vec<u8> {
    let mut v = ty.to_le_bytes().to_vec();
    v.extend((data.len() as u32).to_le_bytes());
    v.extend_from_slice(data);
    pad8(&mut v);
    v
}

/// A MATLAB miMATRIX element; `class` 9 = uint8 (data type 2), 6 = double (data type 9).
fn matrix(name: &str, dims: &[i32], class: u8, data: &[u8]) -> Vec<u8> {
    let mut body = element(6, &[class, 0, 0, 0, 0, 0, 0, 0]);
    body.extend(element(5, &dims.iter().flat_map(|d| d.to_le_bytes()).collect::<Vec<u8>>()));
    if name.len() <= 4 {
        // Small element format for short names.
        let mut small = (1u32 | ((name.len() as u32) << 16)).to_le_bytes().to_vec();
        let mut n = name.as_bytes().to_vec();
        n.resize(4, 0);
        small.extend(n);
        body.extend(small);
    } else {
        body.extend(element(1, name.as_bytes()));
    }
    body.extend(element(if class == 9 { 2 } else { 9 }, data));
    element(14, &body)
}

fn compressed(el: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(el).unwrap();
    let data = z.finish().unwrap();
    let mut v = 15u32.to_le_bytes().to_vec();
    v.extend((data.len() as u32).to_le_bytes());
    v.extend(data); // compressed elements are not padded
    v
}

fn header() -> Vec<u8> {
    let mut h = b"MATLAB 5.0 MAT-file, written by the snn-data tests".to_vec();
    h.resize(116, b' ');
    h.extend([0u8; 8]);
    h.extend([0x00, 0x01]);
    h.extend(b"IM");
    h
}

/// Image n has pixel (h, w, c) = n*7 + h + 2w + 5c (mod 256); label n -> 1 + (n % 10) (so 10 appears).
fn svhn_file(n: usize, compress: bool, double_labels: bool) -> Vec<u8> {
    let mut x = vec![0u8; 3072 * n];
    for img in 0..n {
        for c in 0..3 {
            for w in 0..32 {
                for h in 0..32 {
                    x[h + 32 * w + 1024 * c + 3072 * img] = ((img * 7 + h + 2 * w + 5 * c) % 256) as u8;
                }
            }
        }
    }
    let labels: Vec<u8> = (0..n).map(|i| 1 + (i % 10) as u8).collect();
    let xm = matrix("X", &[32, 32, 3, n as i32], 9, &x);
    let ym = if double_labels {
        matrix("y", &[n as i32, 1], 6, &labels.iter().flat_map(|&l| (l as f64).to_le_bytes()).collect::<Vec<u8>>())
    } else {
        matrix("y", &[n as i32, 1], 9, &labels)
    };
    let mut f = header();
    if compress {
        f.extend(compressed(&xm));
        f.extend(compressed(&ym));
    } else {
        f.extend(xm);
        f.extend(ym);
    }
    f
}

fn check(ds: &snn_data::ImageDataset, n: usize) {
    assert_eq!((ds.len(), ds.shape()), (n, [3, 32, 32]));
    for img in 0..n {
        assert_eq!(ds.labels()[img], ((1 + img % 10) % 10) as u8, "label 10 means digit 0");
        let px = ds.image(img);
        for (c, h, w) in [(0, 0, 0), (1, 5, 9), (2, 31, 30)] {
            assert_eq!(px[c * 1024 + h * 32 + w], ((img * 7 + h + 2 * w + 5 * c) % 256) as u8);
        }
    }
}

#[test]
fn reads_plain_and_compressed_files_in_the_official_layout() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("train_32x32.mat"), svhn_file(12, true, false)).unwrap();
    std::fs::write(dir.path().join("test_32x32.mat"), svhn_file(11, false, true)).unwrap();
    check(&svhn::load(dir.path(), Split::Train).unwrap(), 12);
    check(&svhn::load(dir.path(), Split::Test).unwrap(), 11);
}

fn expect_err(bytes: &[u8], needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("test_32x32.mat");
    std::fs::write(&p, bytes).unwrap();
    let err = svhn::load_file(Path::new(&p)).unwrap_err().to_string();
    assert!(err.contains("test_32x32.mat") && err.contains(needle), "wanted '{needle}': {err}");
}

#[test]
fn malformed_files_are_errors_that_name_the_file() {
    let good = svhn_file(3, false, false);
    expect_err(&good[..100], "truncated header");
    let mut bad_endian = good.clone();
    bad_endian[126] = b'X';
    expect_err(&bad_endian, "endian");
    // Truncation inside the data: every cut past the header fails cleanly.
    for cut in (130..good.len()).step_by(997) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.mat");
        std::fs::write(&p, &good[..cut]).unwrap();
        assert!(svhn::load_file(&p).is_err(), "cut at {cut} accepted");
    }
    let comp = svhn_file(3, true, false);
    let mut garbled = comp.clone();
    for b in &mut garbled[140..160] {
        *b ^= 0x5a;
    }
    expect_err(&garbled, "");
    // Missing y.
    let mut only_x = header();
    only_x.extend(matrix("X", &[32, 32, 3, 1], 9, &[0u8; 3072]));
    expect_err(&only_x, "no variable 'y'");
    // Wrong image dimensions.
    let mut wrong = header();
    wrong.extend(matrix("X", &[28, 28, 1, 1], 9, &[0u8; 784]));
    wrong.extend(matrix("y", &[1, 1], 9, &[1]));
    expect_err(&wrong, "expected [32, 32, 3, N]");
    // Label out of range.
    let mut bad_label = header();
    bad_label.extend(matrix("X", &[32, 32, 3, 1], 9, &[0u8; 3072]));
    bad_label.extend(matrix("y", &[1, 1], 9, &[11]));
    expect_err(&bad_label, "label 11");
    // Absurd element size.
    let mut absurd = header();
    absurd.extend(14u32.to_le_bytes());
    absurd.extend(u32::MAX.to_le_bytes());
    expect_err(&absurd, "claims");
    // Missing file.
    let dir = tempfile::tempdir().unwrap();
    assert!(svhn::load(dir.path(), Split::Train).unwrap_err().to_string().contains("train_32x32.mat"));
}

/// With `SNN_FUZZ_SEEDS_OUT=DIR`, writes valid files of each flavour as seeds for the `svhn_mat` fuzz target.
#[test]
fn write_fuzz_seeds_when_asked() {
    let Some(dir) = std::env::var_os("SNN_FUZZ_SEEDS_OUT") else { return };
    let dir = std::path::Path::new(&dir).join("svhn_mat");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, (compress, double)) in [(false, false), (true, false), (false, true), (true, true)].into_iter().enumerate()
    {
        std::fs::write(dir.join(format!("seed{i}.mat")), svhn_file(1, compress, double)).unwrap();
    }
}
