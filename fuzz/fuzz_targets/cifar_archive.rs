//! CIFAR-10 image trees in a `.tar.gz` archive: gzip, tar headers, entry sizes and counts, image decoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snn_data::cifar;
use snn_data::mnist::Split;

fuzz_target!(|data: &[u8]| {
    let _ = cifar::parse_archive(data, std::path::Path::new("fuzz.tar.gz"), Split::Train);
});
