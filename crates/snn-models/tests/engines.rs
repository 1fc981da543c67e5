//! The event-driven engine of a whole network against the dense one: same spikes, same readout.

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use snn_models::{builtin, Engine, ForwardOptions, Masks, SpikingNetwork};

/// Signed input spikes: each entry is ±1 with probability `density` (either sign alike), else 0.
fn spikes(n: usize, density: f64, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let signs = [1.0, -1.0];
    (0..n).map(|_| if rng.gen_bool(density) { signs[rng.gen_range(0..2)] } else { 0.0 }).collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Dense and event-driven forward passes of a network in f64 (input spikes of the given density): same spikes in every layer, same readout up to
/// rounding.
fn engines_agree(model: &str, input_shape: [usize; 3], steps: usize, batch: usize, density: f64) {
    let spec = builtin(model).unwrap();
    let net = SpikingNetwork::new(spec, &mut ChaCha8Rng::seed_from_u64(2), DType::F64, &Device::Cpu).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let [c, h, w] = input_shape;
    let x = spikes(steps * batch * c * h * w, density, &mut rng);
    let x = Tensor::from_vec(x, (steps, batch, c, h, w), &Device::Cpu).unwrap();
    let run = |engine| net.forward(&x, &Masks::new(), ForwardOptions { engine, ..ForwardOptions::default() }).unwrap();
    let (dense, sparse) = (run(Engine::Dense), run(Engine::Sparse));
    for (d, s) in dense.activity.iter().zip(&sparse.activity) {
        let (d, s) = (d.neuron_counts.flatten_all().unwrap(), s.neuron_counts.flatten_all().unwrap());
        assert_eq!(d.to_vec1::<f64>().unwrap(), s.to_vec1::<f64>().unwrap(), "{model}: spike counts differ");
    }
    // Kept spike windows: the same spikes from the event-driven engine (read off its tape) as from the dense.
    let keep = |engine| {
        net.forward(&x, &Masks::new(), ForwardOptions { engine, keep_spikes: true, ..ForwardOptions::default() })
            .unwrap()
    };
    let (kept_dense, kept_sparse) = (keep(Engine::Dense), keep(Engine::Sparse));
    for (d, s) in kept_dense.activity.iter().zip(&kept_sparse.activity) {
        let (d, s) = (d.spikes.as_ref().unwrap(), s.spikes.as_ref().unwrap());
        assert_eq!(d.dims(), s.dims());
        let (d, s) = (d.flatten_all().unwrap(), s.flatten_all().unwrap());
        assert_eq!(d.to_vec1::<f64>().unwrap(), s.to_vec1::<f64>().unwrap(), "{model}: kept spikes differ");
    }
    let (d, s) = (dense.output.flatten_all().unwrap(), sparse.output.flatten_all().unwrap());
    assert!(max_abs_diff(&d.to_vec1::<f64>().unwrap(), &s.to_vec1::<f64>().unwrap()) < 1e-9, "{model}");
    assert!(dense.activity.iter().any(|a| a.neuron_counts.sum_all().unwrap().to_scalar::<f64>().unwrap() > 0.0));
}

#[test]
fn the_event_engine_reproduces_the_dense_network() {
    // Dense input (the first layer stays dense) and sparse input (every layer event-driven).
    engines_agree("lenet", [1, 28, 28], 6, 2, 0.5);
    engines_agree("lenet", [1, 28, 28], 6, 2, 0.1);
    // 1×1 convolution shortcuts and signed input.
    engines_agree("resnet7", [3, 32, 32], 4, 1, 0.1);
}
