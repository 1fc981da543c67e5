//! N-MNIST event recordings, then binning into frames.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snn_data::nmnist;

fuzz_target!(|data: &[u8]| {
    if let Ok(events) = nmnist::parse_events(data, std::path::Path::new("fuzz.bin")) {
        let steps = 1 + data.first().map_or(0, |&b| b as usize % 16);
        let mut frames = vec![0f32; steps * nmnist::FRAME_SHAPE.iter().product::<usize>()];
        let _ = nmnist::bin_events(&events, steps, &mut frames);
    }
});
