//! CIFAR-10 binary batches (3,073-byte records).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = snn_data::cifar::parse_binary(data, std::path::Path::new("fuzz.bin"));
});
