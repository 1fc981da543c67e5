//! IDX arrays read as a stream (the path of gzip-compressed files): the header is checked before the data
//! is read, and no more data is read than the header declares. The input is tried raw and as a gzip stream.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use snn_data::idx;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.idx.gz");
    let streamed = idx::parse_reader(data, path);
    // The stream reader and the in-memory parser agree on every input.
    assert_eq!(streamed.as_ref().ok(), idx::parse(data, path).as_ref().ok());
    let _ = idx::parse_gzip(data, path);
});
