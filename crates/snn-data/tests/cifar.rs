//! CIFAR-10 readers: the real JPEG archive, lossless PNGs of official test images, the binary format and
//! malformed inputs.

use std::path::{Path, PathBuf};

use snn_data::cifar::{self, CLASSES, RECORD_BYTES};
use snn_data::mnist::Split;

fn shared_data() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if dir.join("cifar10").is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIPPED: real CIFAR-10 not found at {} (shared data folder absent)", dir.display());
        None
    }
}

/// Decodes a PNG with the `png` crate into CHW bytes (an independent decoder from the loader's).
fn png_chw(path: &Path) -> Vec<u8> {
    let mut reader = png::Decoder::new(std::fs::File::open(path).unwrap()).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (32, 32));
    let step = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected colour type {other:?}"),
    };
    let mut chw = vec![0u8; 3072];
    for i in 0..1024 {
        for c in 0..3 {
            chw[c * 1024 + i] = buf[i * step + c];
        }
    }
    chw
}

/// The official test images 0..19 as (index, label, path), from the lossless PNGs.
fn golden_pngs(data: &Path) -> Vec<(usize, u8, PathBuf)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(data.join("golden-png")).unwrap() {
        let p = e.unwrap().path();
        let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
        if let Some(rest) = stem.strip_prefix("cifar10_") {
            let (i, l) = rest.split_once('_').unwrap();
            v.push((i.parse().unwrap(), l.parse().unwrap(), p));
        }
    }
    v.sort();
    v
}

#[test]
fn real_jpeg_archive_has_every_image_in_class_order() {
    let Some(data) = shared_data() else { return };
    let archive = data.join("cifar10/cifar10-jpg-q75.tar.gz");
    let test = cifar::load(&archive, Split::Test).unwrap();
    assert_eq!((test.len(), test.shape()), (10_000, [3, 32, 32]));
    let mut hist = [0usize; 10];
    test.labels().iter().for_each(|&l| hist[l as usize] += 1);
    assert_eq!(hist, [1000; 10]);
    // Classes are interleaved, so every prefix is balanced.
    assert_eq!(&test.labels()[..20], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);

    // Official test image NN is test/<class>/<rank within its class>.jpg; compare with the lossless PNG.
    let golden = golden_pngs(&data);
    assert_eq!(golden.len(), 20);
    for (k, (index, label, path)) in golden.iter().enumerate() {
        assert_eq!(*index, k);
        let rank = golden[..k].iter().filter(|g| g.1 == *label).count();
        let position = rank * 10 + *label as usize;
        assert_eq!(test.labels()[position], *label);
        let jpeg = test.image(position);
        let png = png_chw(path);
        let mae = jpeg.iter().zip(&png).map(|(a, b)| (*a as f64 - *b as f64).abs()).sum::<f64>() / 3072.0;
        assert!(mae < 12.0, "{}: mean absolute error {mae} against the lossless original", path.display());
    }
}

#[test]
fn real_training_split_loads() {
    let Some(data) = shared_data() else { return };
    let train = cifar::load(&data.join("cifar10/cifar10-jpg-q75.tar.gz"), Split::Train).unwrap();
    assert_eq!(train.len(), 50_000);
    let mut hist = [0usize; 10];
    train.labels().iter().for_each(|&l| hist[l as usize] += 1);
    assert_eq!(hist, [5000; 10]);
}

#[test]
fn png_image_folder_is_decoded_pixel_exactly() {
    let Some(data) = shared_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let golden = golden_pngs(&data);
    for (index, label, path) in &golden {
        let class_dir = dir.path().join("test").join(CLASSES[*label as usize]);
        std::fs::create_dir_all(&class_dir).unwrap();
        std::fs::copy(path, class_dir.join(format!("{index:04}.png"))).unwrap();
    }
    let ds = cifar::load(dir.path(), Split::Test).unwrap();
    assert_eq!(ds.len(), 20);
    // Expected order: by rank within the class, then by class.
    let mut order: Vec<_> =
        golden.iter().map(|g| (golden.iter().filter(|h| h.1 == g.1 && h.0 < g.0).count(), g)).collect();
    order.sort_by_key(|(rank, (_, l, _))| (*rank, *l));
    let order: Vec<_> = order.into_iter().map(|(_, g)| g).collect();
    for (k, (_, label, path)) in order.iter().enumerate() {
        assert_eq!(ds.labels()[k], *label);
        assert_eq!(ds.image(k), png_chw(path).as_slice(), "{}", path.display());
    }
}

#[test]
fn binary_batches_round_trip_and_malformed_ones_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir_all(&base).unwrap();
    let record = |label: u8, fill: u8| {
        let mut r = vec![label];
        r.extend((0..3072).map(|i| fill.wrapping_add((i % 251) as u8)));
        r
    };
    for i in 1..=5u8 {
        std::fs::write(base.join(format!("data_batch_{i}.bin")), [record(i, i), record(9, 0)].concat()).unwrap();
    }
    std::fs::write(base.join("test_batch.bin"), record(3, 7)).unwrap();
    let train = cifar::load(dir.path(), Split::Train).unwrap();
    assert_eq!(train.len(), 10);
    assert_eq!(train.labels(), &[1, 9, 2, 9, 3, 9, 4, 9, 5, 9]);
    assert_eq!(train.image(2), &record(2, 2)[1..]);
    let test = cifar::load(dir.path(), Split::Test).unwrap();
    assert_eq!(test.labels(), &[3]);

    // Truncated record.
    std::fs::write(base.join("test_batch.bin"), &record(3, 7)[..RECORD_BYTES - 1]).unwrap();
    let err = cifar::load(dir.path(), Split::Test).unwrap_err().to_string();
    assert!(err.contains("test_batch.bin") && err.contains("whole number"), "{err}");
    // Label out of range.
    std::fs::write(base.join("test_batch.bin"), record(10, 7)).unwrap();
    let err = cifar::load(dir.path(), Split::Test).unwrap_err().to_string();
    assert!(err.contains("label 10"), "{err}");

    // Nothing usable.
    let empty = tempfile::tempdir().unwrap();
    let err = cifar::load(empty.path(), Split::Train).unwrap_err().to_string();
    assert!(err.contains("not found"), "{err}");
    // A corrupt image inside an image tree names the file.
    let tree = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tree.path().join("test/cat")).unwrap();
    std::fs::write(tree.path().join("test/cat/0000.jpg"), b"\xff\xd8 not really a jpeg").unwrap();
    let err = cifar::load(tree.path(), Split::Test).unwrap_err().to_string();
    assert!(err.contains("0000.jpg") && err.contains("decode"), "{err}");
    // A file that is not a gzip archive.
    let bogus = tree.path().join("data.tar.gz");
    std::fs::write(&bogus, b"plain text").unwrap();
    assert!(cifar::load(&bogus, Split::Test).unwrap_err().to_string().contains("data.tar.gz"));
}
