//! Architecture files (`--model-config`): JSON, validation, shapes and counts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snn_models::NetworkSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(spec) = NetworkSpec::from_json(text) {
        let _ = spec.parameter_count();
        let _ = spec.dense_macs();
        let _ = spec.output_shapes();
    }
});
