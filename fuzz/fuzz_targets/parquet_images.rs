//! Hub dataset shards: Parquet structure, rows, embedded PNG images and labels.
//!
//! The reader catches panics raised inside the Parquet crate on malformed pages and reports them as errors.
//! libFuzzer's panic hook aborts before any unwinding, which would count those handled panics as crashes, so
//! this target prints panics instead; a panic that escapes the reader still aborts the run (libFuzzer checks
//! for it around every input).
#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use snn_data::hub::{parse_parquet_images, HUB_DATASETS};

static HOOK: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    HOOK.call_once(|| std::panic::set_hook(Box::new(|info| eprintln!("{info}"))));
    let hub = &HUB_DATASETS[data.len() % HUB_DATASETS.len()];
    let _ = parse_parquet_images(data, std::path::Path::new("fuzz.parquet"), hub, &mut Vec::new(), &mut Vec::new());
});
