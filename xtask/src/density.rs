//! `cargo xtask density`: where the event-driven convolution stops paying.
//!
//! Times the event-driven forward convolution and kernel gradient of `snn_core::events` against Candle's
//! dense convolution (the same work the dense layers do) on 64 frames of random ±1 inputs of growing density,
//! for the 3×3 convolutions of VGG9. The `EVENT_DENSITY_LIMIT` of the event-driven layers is read off this
//! table. Each figure is the fastest of `reps` repetitions, both paths measured in the same run.

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use snn_core::events::{conv2d_events, conv2d_weight_grad_events, EVENT_DENSITY_LIMIT};

/// Frames per measurement: one part of the taped training pass.
const FRAMES: usize = 64;

/// `(input channels, height = width, output channels)` of VGG9's 3×3 convolutions.
const LAYERS: [(usize, usize, usize); 4] = [(3, 32, 64), (64, 32, 64), (128, 16, 128), (256, 8, 256)];

/// Shares of non-zero inputs measured.
const DENSITIES: [f64; 5] = [0.1, 0.3, 0.5, 0.8, 1.0];

/// The fastest of `reps` runs of `f`, in milliseconds.
fn fastest(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        f()?;
        best = best.min(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(best)
}

/// Prints, per layer and density, both paths' times and the dense ÷ event-driven ratio.
pub fn run(reps: usize) -> Result<()> {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    println!("event-driven vs dense 3×3 convolution, {FRAMES} frames, fastest of {reps} (limit in use: {EVENT_DENSITY_LIMIT})");
    println!(
        "{:<16} {:>7} {:>12} {:>10} {:>7} {:>12} {:>10} {:>7}",
        "layer", "density", "fwd events", "fwd dense", "ratio", "grad events", "grad dense", "ratio"
    );
    for (channels, size, outputs) in LAYERS {
        let weights: Vec<f32> = (0..outputs * channels * 9).map(|_| rng.gen_range(-0.1..0.1)).collect();
        let kernel = Tensor::from_vec(weights, (outputs, channels, 3, 3), &dev)?;
        let grad: Vec<f32> = (0..FRAMES * outputs * size * size).map(|_| rng.gen_range(-0.1..0.1)).collect();
        let grad = Tensor::from_vec(grad, (FRAMES, outputs, size, size), &dev)?;
        for density in DENSITIES {
            let values: Vec<f32> = (0..FRAMES * channels * size * size)
                .map(|_| match rng.gen_bool(density) {
                    true if rng.gen_bool(0.5) => 1.0,
                    true => -1.0,
                    false => 0.0,
                })
                .collect();
            let x = Tensor::from_vec(values, (FRAMES, channels, size, size), &dev)?;
            let fwd_events = fastest(reps, || Ok(conv2d_events(&x, &kernel, 1, 1).map(drop)?))?;
            let fwd_dense = fastest(reps, || Ok(x.conv2d(&kernel, 1, 1, 1, 1).map(drop)?))?;
            let grad_events = fastest(reps, || Ok(conv2d_weight_grad_events(&x, &grad, 3, 1, 1).map(drop)?))?;
            // The dense kernel gradient as the dense layers compute it: the input correlated with the output
            // gradient, batch and channel axes swapped.
            let grad_dense = fastest(reps, || {
                let g = x.transpose(0, 1)?.conv2d(&grad.transpose(0, 1)?, 1, 1, 1, 1)?.transpose(0, 1)?;
                Ok(g.contiguous().map(drop)?)
            })?;
            println!(
                "{:<16} {:>7.1} {:>10.1}ms {:>8.1}ms {:>6.2}× {:>10.1}ms {:>8.1}ms {:>6.2}×",
                format!("{channels}→{outputs} {size}×{size}"),
                density,
                fwd_events,
                fwd_dense,
                fwd_dense / fwd_events,
                grad_events,
                grad_dense,
                grad_dense / grad_events
            );
        }
    }
    println!("ratio = dense time ÷ event-driven time (above 1: the event-driven path is faster)");
    Ok(())
}
