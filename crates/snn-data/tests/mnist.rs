//! MNIST reader tests on the real dataset (skipped when `../shared/data` is absent) and on corrupt files.

use std::io::Write;
use std::path::{Path, PathBuf};

use snn_data::mnist::{self, Split, OFFICIAL_SHA256};
use snn_data::sha256_hex;

fn shared_data() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if dir.join("mnist").is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIPPED: real MNIST not found at {} (shared data folder absent)", dir.display());
        None
    }
}

#[test]
fn real_mnist_matches_official_checksums_and_shapes() {
    let Some(data) = shared_data() else { return };
    let dir = data.join("mnist");
    for (stem, sha) in OFFICIAL_SHA256 {
        let mut bytes = Vec::new();
        let file = std::fs::File::open(dir.join(format!("{stem}.gz"))).unwrap();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(file), &mut bytes).unwrap();
        assert_eq!(sha256_hex(&bytes), sha, "{stem}");
    }
    let train = mnist::load(&dir, Split::Train).unwrap();
    let test = mnist::load(&dir, Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!(train.shape(), [1, 28, 28]);
    // Label histogram of the official test set (digits 0..9).
    let mut hist = [0usize; 10];
    test.labels().iter().for_each(|&l| hist[l as usize] += 1);
    assert_eq!(hist, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
}

#[test]
fn test_images_match_lossless_pngs_pixel_for_pixel() {
    let Some(data) = shared_data() else { return };
    let test = mnist::load(&data.join("mnist"), Split::Test).unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(data.join("golden-png")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("mnist_") else { continue };
        let (index, label) = rest.split_once('_').unwrap();
        let (index, label): (usize, u8) = (index.parse().unwrap(), label.parse().unwrap());
        let decoder = png::Decoder::new(std::fs::File::open(&path).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (28, 28));
        let gray: Vec<u8> = match info.color_type {
            png::ColorType::Grayscale => buf[..784].to_vec(),
            png::ColorType::Rgb => buf.chunks(3).take(784).map(|p| p[0]).collect(),
            png::ColorType::Rgba => buf.chunks(4).take(784).map(|p| p[0]).collect(),
            other => panic!("unexpected PNG colour type {other:?}"),
        };
        assert_eq!(test.image(index), gray.as_slice(), "{name}");
        assert_eq!(test.labels()[index], label, "{name}");
        checked += 1;
    }
    assert_eq!(checked, 20);
}

#[test]
fn builtin_subset_is_the_head_of_the_official_files() {
    let train = mnist::builtin_subset(Split::Train).unwrap();
    let test = mnist::builtin_subset(Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (mnist::SUBSET_TRAIN_LEN, mnist::SUBSET_TEST_LEN));
    let Some(data) = shared_data() else { return };
    let mut full = mnist::load(&data.join("mnist"), Split::Train).unwrap();
    full.truncate(mnist::SUBSET_TRAIN_LEN);
    assert_eq!(full, train);
    let mut full = mnist::load(&data.join("mnist"), Split::Test).unwrap();
    full.truncate(mnist::SUBSET_TEST_LEN);
    assert_eq!(full, test);
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::File::create(dir.join(name)).unwrap().write_all(bytes).unwrap();
}

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    dims.iter().for_each(|d| v.extend(d.to_be_bytes()));
    v.extend_from_slice(data);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn corrupt_and_inconsistent_folders_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Missing files.
    let err = mnist::load(d, Split::Test).unwrap_err().to_string();
    assert!(err.contains("t10k-images-idx3-ubyte") && err.contains("not found"), "{err}");

    // Count mismatch: 2 images, 3 labels.
    write(d, "t10k-images-idx3-ubyte", &idx(&[2, 2, 2], &[0; 8]));
    write(d, "t10k-labels-idx1-ubyte", &idx(&[3], &[1, 2, 3]));
    let err = mnist::load(d, Split::Test).unwrap_err().to_string();
    assert!(err.contains("2 images") && err.contains("3 labels"), "{err}");

    // Label out of range.
    write(d, "t10k-labels-idx1-ubyte", &idx(&[2], &[1, 12]));
    let err = mnist::load(d, Split::Test).unwrap_err().to_string();
    assert!(err.contains("label 12"), "{err}");

    // Truncated gzip stream (preferred over the raw file when both exist).
    let good = gz(&idx(&[2, 2, 2], &[7; 8]));
    write(d, "t10k-images-idx3-ubyte.gz", &good[..good.len() - 6]);
    let err = mnist::load(d, Split::Test).unwrap_err().to_string();
    assert!(err.contains("t10k-images-idx3-ubyte.gz"), "{err}");

    // Garbled bytes: random content with a gzip magic.
    write(d, "t10k-images-idx3-ubyte.gz", &[0x1f, 0x8b, 1, 2, 3, 4, 5]);
    let err = mnist::load(d, Split::Test).unwrap_err().to_string();
    assert!(err.contains("gzip"), "{err}");

    // Images with the wrong number of dimensions.
    write(d, "t10k-images-idx3-ubyte.gz", &gz(&idx(&[2, 4], &[0; 8])));
    let err = mnist::load(d, Split::Test).unwrap_err().to_string();
    assert!(err.contains("[N, H, W]"), "{err}");
}
