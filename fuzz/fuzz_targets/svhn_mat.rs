//! SVHN MATLAB v5 files: elements, compressed elements, and the X / y checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = snn_data::svhn::parse_file(data, std::path::Path::new("fuzz.mat"));
});
