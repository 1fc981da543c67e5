//! IDX arrays (MNIST, Fashion-MNIST): header, dimensions and payload, then the image/label views.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use snn_data::idx;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.idx");
    if let Ok(array) = idx::parse(data, path) {
        let _ = idx::images_from(array.clone(), path);
        let _ = idx::labels_from(array, path, 10);
    }
});
