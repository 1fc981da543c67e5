//! Inputs found by the fuzz targets in `fuzz/` that once crashed a reader: each must now be rejected with an
//! error that names the file. A file's name starts with the reader it exercises.

use std::path::Path;

use snn_data::hub::{parse_parquet_images, HUB_DATASETS};

#[test]
fn every_former_crash_is_now_a_named_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        let err = if name.starts_with("parquet_") {
            // Every dataset's reading of the shard (the fuzz target picks one by the input's length).
            let mut errors: Vec<_> = HUB_DATASETS
                .iter()
                .map(|hub| parse_parquet_images(&bytes, &path, hub, &mut Vec::new(), &mut Vec::new()).unwrap_err())
                .collect();
            errors.pop().unwrap()
        } else if name.starts_with("svhn_") {
            snn_data::svhn::parse_file(&bytes, &path).unwrap_err()
        } else if name.starts_with("idx_") {
            snn_data::idx::parse(&bytes, &path).unwrap_err()
        } else if name.starts_with("nmnist_") {
            snn_data::nmnist::parse_events(&bytes, &path).unwrap_err()
        } else if name.starts_with("cifar_") {
            snn_data::cifar::parse_binary(&bytes, &path).unwrap_err()
        } else {
            panic!("{name}: unknown reader prefix");
        };
        assert!(err.to_string().contains(&name), "{name}: {err}");
        if name.contains("dictionary_count") {
            // Refused from the page header, before the reader sizes the dictionary (36 GB for this file).
            assert!(err.to_string().contains("dictionary page of"), "{name}: {err}");
        }
        seen += 1;
    }
    assert!(seen >= 1, "no regression inputs found in {}", dir.display());
}
