//! Every SIMD level of the event and neuron kernels that this CPU runs against the portable build: the same
//! bits for the kernels without multiply-adds (recurrences, pooling), the same bits at every fused level
//! (AVX2, AVX-512) and the portable values up to rounding for the synaptic kernels.
//!
//! Kept in its own test binary: forcing a level is process-wide.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use snn_core::events::{
    channel_last_into, conv2d_events, conv2d_input_grad_at_events, conv2d_weight_grad_events, conv_grads_events,
    linear_events, linear_input_grad_events, linear_weight_grad_events, transpose, ConvGeometry, DenseFrames,
    EventFrames, SimdLevel, SpikeFrames,
};
use snn_core::kernels::{apply_mask, spike_backward, spike_forward, BackwardRule};
use snn_core::pool::{average_pool_frames, average_pool_grad};
use snn_core::MaskView;

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

/// Every synaptic kernel's output at the current level, flattened.
fn synaptic_outputs(rng_seed: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(rng_seed);
    let dev = &Device::Cpu;
    let mut out = Vec::new();
    // Output channels chosen so that rows end in a remainder at every vector width; the fourth has two blocks
    // of input channels in the forward pass; the last is wide enough for the gathering forward pass (two bitmap
    // words per position, two register blocks of outputs and a remainder).
    for (n, c, h, w, o, k, p, s) in [
        (3, 5, 9, 11, 48, 3, 1, 1),
        (2, 4, 12, 10, 37, 5, 2, 2),
        (4, 3, 8, 8, 70, 3, 0, 1),
        (2, 12, 7, 9, 40, 3, 1, 1),
        (2, 70, 16, 16, 130, 3, 1, 1),
    ] {
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
        // Both gradients in one pass over the events, as the training pass runs them.
        let g = ConvGeometry::new([c, h, w], o, k, p, s).unwrap();
        let data = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut rows = vec![0.0f32; grad.elem_count()];
        channel_last_into(&grad.flatten_all().unwrap().to_vec1::<f32>().unwrap(), g, &mut rows);
        let kernel_rows = transpose(&kernel.flatten_all().unwrap().to_vec1::<f32>().unwrap(), o, c * k * k);
        let (mut acc, mut input_grad) = (vec![0.0f32; kernel_rows.len()], vec![0.0f32; data.len()]);
        let frames = DenseFrames { data: &data, frame_len: c * h * w };
        conv_grads_events(&frames, &rows, g, &mut acc, Some((&kernel_rows, &mut input_grad)));
        out.push(acc);
        out.push(input_grad);
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
    out
}

/// The output of every kernel without multiply-adds at the current level, flattened.
fn exact_outputs(rng_seed: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(rng_seed);
    let mut out = Vec::new();
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
    // Transposes (8 × 8 blocks of shuffles at the wide levels, with edges in both directions).
    for (rows, cols) in [(8, 8), (13, 70), (64, 37), (3, 5)] {
        out.push(transpose(&real(rows * cols, &mut rng), rows, cols));
    }
    // A dropout mask on the gradients and on the spikes, as multipliers and as keep flags: the masked values
    // and the kept-spike counts.
    let flags: Vec<u8> = (0..n).map(|_| u8::from(rng.gen_bool(0.8))).collect();
    let multipliers: Vec<f32> = flags.iter().map(|&k| if k != 0 { 1.25 } else { 0.0 }).collect();
    for view in [MaskView::Values(&multipliers), MaskView::Keep { flags: &flags, value: 1.25 }] {
        let mut masked = grad.clone();
        apply_mask(&mut masked, view);
        out.push(masked);
        let kept = SpikeFrames { spikes: &bytes, frame_len: n, batch: 1, mask: Some(view) }.nonzero();
        out.push(vec![kept as f32]);
    }
    let last = out.len() - 1;
    assert_eq!(out[last - 3], out[last - 1], "both forms of a mask give the same products");
    assert_eq!(out[last - 2], out[last], "and the same kept spikes");
    out
}

#[test]
fn every_available_level_agrees_with_the_portable_one() {
    let levels = SimdLevel::available();
    eprintln!("levels this CPU runs: {:?} (detected {:?})", levels, SimdLevel::detected());
    assert_eq!(levels.first(), Some(&SimdLevel::Portable));
    SimdLevel::force(Some(SimdLevel::Portable));
    assert_eq!(SimdLevel::current(), SimdLevel::Portable);
    let (exact, synaptic) = (exact_outputs(11), synaptic_outputs(12));
    let produced = |outputs: &[Vec<f32>]| outputs.iter().all(|v| v.iter().any(|&x| x != 0.0));
    assert!(produced(&exact) && produced(&synaptic), "every kernel produced something");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let mut fused: Option<Vec<Vec<f32>>> = None;
    for &level in &levels[1..] {
        SimdLevel::force(Some(level));
        assert_eq!(SimdLevel::current(), level);
        for (i, (a, b)) in exact_outputs(11).iter().zip(&exact).enumerate() {
            assert_eq!(bits(a), bits(b), "{} differs from portable in exact output {i}", level.name());
        }
        let got = synaptic_outputs(12);
        let mut rounded_differently = false;
        for (i, (a, b)) in got.iter().zip(&synaptic).enumerate() {
            assert_eq!(a.len(), b.len());
            let largest = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let diff = a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                diff <= 1e-5 * largest + 1e-6,
                "{}: synaptic output {i} off by {diff} (largest {largest})",
                level.name()
            );
            rounded_differently |= bits(a) != bits(b);
        }
        // The fused multiply-add rounds once where the portable build rounds twice, so some value differs.
        assert!(rounded_differently, "{} rounds exactly like portable: no fused multiply-adds", level.name());
        // Every fused level gives the same bits.
        match &fused {
            None => fused = Some(got),
            Some(first) => {
                for (i, (a, b)) in got.iter().zip(first).enumerate() {
                    assert_eq!(bits(a), bits(b), "{} differs from the other fused level in output {i}", level.name());
                }
            }
        }
    }
    // A level above the CPU's is lowered to what it runs; `None` goes back to detection.
    SimdLevel::force(Some(SimdLevel::Avx512));
    assert_eq!(SimdLevel::current(), SimdLevel::detected().min(SimdLevel::Avx512));
    SimdLevel::force(None);
    assert_eq!(SimdLevel::current(), SimdLevel::detected());
}
