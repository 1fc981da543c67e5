//! Hub dataset shards: Parquet structure, rows, embedded PNG images and labels.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snn_data::hub::{parse_parquet_images, HUB_DATASETS};

fuzz_target!(|data: &[u8]| {
    let hub = &HUB_DATASETS[data.len() % HUB_DATASETS.len()];
    let _ = parse_parquet_images(data, std::path::Path::new("fuzz.parquet"), hub, &mut Vec::new(), &mut Vec::new());
});
