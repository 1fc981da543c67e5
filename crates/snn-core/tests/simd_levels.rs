//! Every SIMD level of the event and neuron kernels that this CPU runs gives the same bits as the portable
//! build.
//!
//! Kept in its own test binary: forcing a level is process-wide.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use snn_core::events::{
    conv2d_events, conv2d_input_grad_at_events, conv2d_weight_grad_events, linear_events, linear_input_grad_events,
    linear_weight_grad_events, DenseFrames, SimdLevel,
};
use snn_core::kernels::{spike_backward, spike_forward, BackwardRule};
use snn_core::pool::{average_pool_frames, average_pool_grad};

/// Spike-like inputs (0 mostly, ±1 or a real value otherwise) and real weights and gradients.
fn values(n: usize, density: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..n)
        .map(|_| match rng.gen_range(0.0..1.0) {
            r if r < density / 2.0 => 1.0,
            r if r < density * 0.8 => -1.0,
            r if r < density => rng.gen_range(-2.0..2.0),
            _ => 0.0,
        })
        .collect()
}

fn real(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// Every kernel's output at the current level, flattened.
fn all_outputs(rng_seed: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(rng_seed);
    let dev = &Device::Cpu;
    let mut out = Vec::new();
    // Output channels chosen so that rows end in a remainder at every vector width; the last has two blocks of
    // input channels in the forward pass.
    for (n, c, h, w, o, k, p, s) in
        [(3, 5, 9, 11, 48, 3, 1, 1), (2, 4, 12, 10, 37, 5, 2, 2), (4, 3, 8, 8, 70, 3, 0, 1), (2, 12, 7, 9, 40, 3, 1, 1)]
    {
        let x = Tensor::from_vec(values(n * c * h * w, 0.2, &mut rng), (n, c, h, w), dev).unwrap();
        let kernel = Tensor::from_vec(real(o * c * k * k, &mut rng), (o, c, k, k), dev).unwrap();
        let y = conv2d_events(&x, &kernel, p, s).unwrap();
        let (_, _, oh, ow) = y.dims4().unwrap();
        let grad = Tensor::from_vec(real(n * o * oh * ow, &mut rng), (n, o, oh, ow), dev).unwrap();
        out.push(y.flatten_all().unwrap().to_vec1().unwrap());
        out.push(conv2d_weight_grad_events(&x, &grad, k, p, s).unwrap().flatten_all().unwrap().to_vec1().unwrap());
        out.push(
            conv2d_input_grad_at_events(&x, &kernel, &grad, p, s).unwrap().flatten_all().unwrap().to_vec1().unwrap(),
        );
    }
    for (n, inputs, outputs) in [(6, 300, 10), (3, 129, 200), (5, 64, 33)] {
        let data = values(n * inputs, 0.3, &mut rng);
        let weight = real(outputs * inputs, &mut rng);
        let xt = Tensor::from_vec(data.clone(), (n, inputs), dev).unwrap();
        let wt = Tensor::from_vec(weight.clone(), (outputs, inputs), dev).unwrap();
        out.push(linear_events(&xt, &wt).unwrap().flatten_all().unwrap().to_vec1().unwrap());
        let frames = DenseFrames { data: &data, frame_len: inputs };
        let grad = real(n * outputs, &mut rng);
        let mut acc = vec![0.0f32; inputs * outputs];
        linear_weight_grad_events(&frames, &grad, outputs, &mut acc);
        out.push(acc);
        // Transposed weight rows `[In, Out]`.
        let rows: Vec<f32> = (0..inputs * outputs).map(|i| weight[(i % outputs) * inputs + i / outputs]).collect();
        let mut input_grad = vec![0.0f32; n * inputs];
        linear_input_grad_events(&frames, &rows, &grad, outputs, &mut input_grad);
        out.push(input_grad);
    }
    // Average pooling and its gradient: the 2 × 2 window (its own code) and a 3 × 3 one, planes with and
    // without a cut-off row and column.
    for (n, c, h, w, k) in [(3, 4, 8, 12, 2), (2, 3, 9, 11, 2), (2, 2, 10, 7, 3)] {
        let data = values(n * c * h * w, 0.4, &mut rng);
        let frames = DenseFrames { data: &data, frame_len: c * h * w };
        let mut pooled = vec![0.0f32; n * c * (h / k) * (w / k)];
        average_pool_frames(&frames, &[c, h, w], k, &mut pooled);
        let delta = real(pooled.len(), &mut rng);
        let mut grad = real(data.len(), &mut rng);
        average_pool_grad(&[c, h, w], k, &delta, &mut grad);
        out.push(pooled);
        out.push(grad);
    }
    // The neuron recurrences over 9 steps of 5,003 neurons (more than one parallel chunk, and a remainder at
    // every vector width), spikes as bytes and as floats, with and without the leak correction.
    let (steps, n) = (9, 5003);
    let currents: Vec<f32> = (0..steps * n).map(|_| rng.gen_range(-0.5..1.5)).collect();
    let grad: Vec<f32> = real(steps * n, &mut rng);
    let mut bytes = vec![0u8; steps * n];
    spike_forward(&currents, n, 1.0, 0.99, &mut bytes);
    let mut floats = vec![0.0f32; steps * n];
    spike_forward(&currents, n, 1.0, 0.99, &mut floats);
    assert!(bytes.iter().zip(&floats).all(|(&b, &f)| f32::from(b) == f), "byte and float spikes agree");
    assert!(bytes.contains(&1) && bytes.contains(&0), "some neurons fire, some do not");
    out.push(floats);
    for rule in
        [BackwardRule { scale: 1.0, leak_correction: Some(0.99) }, BackwardRule { scale: 0.5, leak_correction: None }]
    {
        let mut from_bytes = vec![0.0f32; steps * n];
        spike_backward(&bytes, &grad, n, rule, &mut from_bytes);
        out.push(from_bytes);
    }
    out
}

#[test]
fn every_available_level_gives_the_portable_bits() {
    let levels = SimdLevel::available();
    eprintln!("levels this CPU runs: {:?} (detected {:?})", levels, SimdLevel::detected());
    assert_eq!(levels.first(), Some(&SimdLevel::Portable));
    SimdLevel::force(Some(SimdLevel::Portable));
    assert_eq!(SimdLevel::current(), SimdLevel::Portable);
    let reference = all_outputs(11);
    assert!(reference.iter().all(|v| v.iter().any(|&x| x != 0.0)), "every kernel produced something");
    for level in levels {
        SimdLevel::force(Some(level));
        assert_eq!(SimdLevel::current(), level);
        let got = all_outputs(11);
        for (i, (a, b)) in got.iter().zip(&reference).enumerate() {
            let same = a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{} differs from portable in output {i}", level.name());
        }
    }
    // A level above the CPU's is lowered to what it runs; `None` goes back to detection.
    SimdLevel::force(Some(SimdLevel::Avx512));
    assert_eq!(SimdLevel::current(), SimdLevel::detected().min(SimdLevel::Avx512));
    SimdLevel::force(None);
    assert_eq!(SimdLevel::current(), SimdLevel::detected());
}
