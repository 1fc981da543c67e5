//! Checkpoints: safetensors header and data, the embedded network spec, then building the network
//! (which checks every weight's shape against the spec).
#![no_main]

use candle_core::{DType, Device};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ckpt) = snn_models::parse_checkpoint(data, std::path::Path::new("fuzz.safetensors"), &Device::Cpu) {
        let _ = ckpt.into_network(DType::F32, &Device::Cpu);
    }
});
