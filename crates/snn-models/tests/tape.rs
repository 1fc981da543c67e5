//! The taped training pass (byte tape, hand-written backward, window in parts) against Candle's autograd
//! through the layer-major forward pass.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use snn_models::{builtin, Engine, ForwardOptions, Masks, NetworkSpec, SpikingNetwork};

/// One generator per sample, seeded from `rng`.
fn per_sample(batch: usize, rng: &mut ChaCha8Rng) -> Vec<ChaCha8Rng> {
    (0..batch).map(|_| ChaCha8Rng::seed_from_u64(rng.gen())).collect()
}

/// A small residual network with every layer kind: a stem, pooling, a block with a strided 1×1-conv
/// shortcut, a block with an identity-subsampling shortcut, dropout on two convolutions (one read by a
/// convolution) and the fully connected layer, and the readout.
const SMALL_RESNET: &str = r#"{
  "name": "small-resnet", "input_shape": [2, 16, 16], "input_signed": true, "dropout_p": 0.25,
  "stats_after_mask": false,
  "layers": [
    {"kind": "conv", "name": "stem", "input": "input", "in_channels": 2, "out_channels": 4, "kernel": 3,
     "padding": 1, "dropout": true},
    {"kind": "pool", "name": "pool1", "input": "stem"},
    {"kind": "conv", "name": "a1", "input": "pool1", "in_channels": 4, "out_channels": 6, "kernel": 3,
     "padding": 1, "dropout": true},
    {"kind": "conv", "name": "a2", "input": "a1", "in_channels": 6, "out_channels": 6, "kernel": 3,
     "padding": 1, "stride": 2,
     "shortcut": {"name": "short1", "kind": "conv1x1", "input": "pool1", "stride": 2}},
    {"kind": "conv", "name": "b1", "input": "a2", "in_channels": 6, "out_channels": 6, "kernel": 3,
     "padding": 1},
    {"kind": "conv", "name": "b2", "input": "b1", "in_channels": 6, "out_channels": 6, "kernel": 3,
     "padding": 1, "stride": 2,
     "shortcut": {"name": "short2", "kind": "subsample", "input": "a2", "stride": 2}},
    {"kind": "fc", "name": "fc0", "input": "b2", "in_features": 24, "out_features": 12, "dropout": true},
    {"kind": "readout", "name": "out", "input": "fc0", "in_features": 12, "out_features": 3}
  ]
}"#;

/// Input spikes in {−1, 0, 1} (or {0, 1}) with the given density.
fn input(shape: &[usize], density: f64, signed: bool, rng: &mut ChaCha8Rng) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| match (rng.gen_bool(density), signed && rng.gen_bool(0.5)) {
            (false, _) => 0.0,
            (true, true) => -1.0,
            (true, false) => 1.0,
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// The small residual network in f64 with its initial weights doubled, which keeps the deep layers firing
/// at small batch sizes.
fn lively_resnet(rng: &mut ChaCha8Rng) -> SpikingNetwork {
    let spec = NetworkSpec::from_json(SMALL_RESNET).unwrap();
    let initial = SpikingNetwork::new(spec.clone(), rng, DType::F64, &Device::Cpu).unwrap();
    let weights: HashMap<String, Tensor> =
        initial.weights().iter().map(|(n, v)| (n.clone(), (v.as_tensor() * 2.0).unwrap())).collect();
    SpikingNetwork::from_weights(spec, weights, DType::F64, &Device::Cpu).unwrap()
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

/// Runs both training passes in f64 on the same input, masks and loss gradient and compares readout,
/// spike counts and every weight gradient. Returns the total spike count (so callers can check that the
/// network was active).
fn passes_agree(net: &SpikingNetwork, x: &Tensor, masks: &Masks) -> f64 {
    let opts = ForwardOptions { track_gradients: true, ..ForwardOptions::default() };
    let reference = net.forward(x, masks, opts).unwrap();
    let (taped, tape) = net.forward_taped(x, masks).unwrap();

    let diff = max_abs(&(&reference.output - &taped.output).unwrap());
    assert!(diff < 1e-12, "{}: readouts differ by {diff}", net.spec().name);
    let mut total = 0.0;
    for (r, t) in reference.activity.iter().zip(&taped.activity) {
        assert_eq!(r.name, t.name);
        let (r, t) = (r.neuron_counts.flatten_all().unwrap(), t.neuron_counts.flatten_all().unwrap());
        assert_eq!(r.to_vec1::<f64>().unwrap(), t.to_vec1::<f64>().unwrap(), "spike counts of a layer differ");
        total += t.sum_all().unwrap().to_scalar::<f64>().unwrap();
    }
    assert_eq!(reference.activity.len(), taped.activity.len());

    // A loss with a gradient that differs per sample and class: L = Σ c_bk · y_bk².
    let (b, k) = reference.output.dims2().unwrap();
    let c: Vec<f64> = (0..b * k).map(|i| ((i * 7 % 5) as f64) - 1.5).collect();
    let c = Tensor::from_vec(c, (b, k), &Device::Cpu).unwrap();
    let loss = |y: &Tensor| (y.sqr().unwrap() * &c).unwrap().sum_all().unwrap();
    let autograd = loss(&reference.output).backward().unwrap();
    let out = Var::from_tensor(&taped.output).unwrap();
    let grad_output = loss(out.as_tensor()).backward().unwrap().get(out.as_tensor()).unwrap().clone();
    let grads = net.backward(tape, &grad_output).unwrap();

    for (name, var) in net.weights() {
        let r = autograd.get(var.as_tensor()).cloned().unwrap_or(var.as_tensor().zeros_like().unwrap());
        let t = grads.get(name).unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_eq!(r.dims(), t.dims(), "{name}");
        let scale = max_abs(&r).max(1e-300);
        let diff = max_abs(&(&r - t).unwrap());
        assert!(diff <= 1e-10 * scale.max(1.0), "{name}: gradients differ by {diff} (largest {scale})");
    }
    total
}

#[test]
fn the_taped_pass_reproduces_autograd_on_every_layer_kind() {
    let spec = NetworkSpec::from_json(SMALL_RESNET).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    // 16 samples: parts of 4 steps, so T = 9 runs as 4 + 4 + 1 with state carried across parts.
    let (steps, batch) = (9, 16);
    for (density, excite) in [(0.1, false), (0.7, false), (0.5, true)] {
        let net = SpikingNetwork::new(spec.clone(), &mut rng, DType::F64, &Device::Cpu).unwrap();
        // With positive stem, a1, b1 and b2 weights and positive input those layers fire at most steps, so the
        // layers reading them (pool1, a2, b2, fc0) take the dense fallback of the taped pass (convolution,
        // pooling and fully connected).
        let weights: HashMap<String, Tensor> = net
            .weights()
            .iter()
            .map(|(n, v)| {
                let t = v.as_tensor().clone();
                let excited = excite && ["stem.weight", "a1.weight", "b1.weight", "b2.weight"].contains(&n.as_str());
                (n.clone(), if excited { (t.abs().unwrap() * 3.0).unwrap() } else { t })
            })
            .collect();
        let net = SpikingNetwork::from_weights(spec.clone(), weights, DType::F64, &Device::Cpu).unwrap();
        let masks = net.draw_masks(&mut per_sample(batch, &mut rng)).unwrap();
        assert_eq!(masks.len(), 3);
        let x = input(&[steps, batch, 2, 16, 16], density, !excite, &mut rng);
        let spikes = passes_agree(&net, &x, &masks);
        assert!(spikes > 0.0, "the network must be active");
    }
}

#[test]
fn the_taped_pass_reproduces_autograd_on_lenet_over_two_parts() {
    let spec = builtin("lenet").unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let net = SpikingNetwork::new(spec, &mut rng, DType::F64, &Device::Cpu).unwrap();
    let masks = net.draw_masks(&mut per_sample(2, &mut rng)).unwrap();
    // Parts of 32 steps: 32 + 8.
    let x = input(&[40, 2, 1, 28, 28], 0.2, false, &mut rng);
    assert!(passes_agree(&net, &x, &masks) > 0.0);
}

#[test]
fn the_tape_keeps_one_bit_per_neuron_and_step_and_reads_back_the_dense_passs_spikes() {
    let spec = NetworkSpec::from_json(SMALL_RESNET).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let net = SpikingNetwork::new(spec, &mut rng, DType::F64, &Device::Cpu).unwrap();
    // 37 steps: parts of 32 + 5 steps, so parts start off 64-bit word boundaries for some layers.
    let (steps, batch) = (37, 2);
    let x = input(&[steps, batch, 2, 16, 16], 0.3, true, &mut rng);
    let (_, tape) = net.forward_taped(&x, &Masks::new()).unwrap();
    // Spiking neurons per sample: stem 4·16·16, pool1 4·8·8, a1 6·8·8, a2 6·4·4, b1 6·4·4, b2 6·2·2,
    // fc0 12; each layer's window is packed into whole 64-bit words; the readout keeps its 12 input counts
    // per sample in f64.
    let words = |n: usize| (steps * batch * n).div_ceil(64);
    let bits: usize = [1024, 256, 384, 96, 96, 24, 12].into_iter().map(|n| 8 * words(n)).sum();
    // The input window (2·16·16 values per sample, −1, 0 or +1) in two bits per value.
    let input_bits = 2 * 8 * words(2 * 16 * 16);
    assert_eq!(tape.bytes(), bits + input_bits + 8 * batch * 12);
    assert!(
        (tape.bytes() - input_bits) * 7 < steps * batch * (1024 + 256 + 384 + 96 + 96 + 24 + 12),
        "a byte tape would be 8× larger"
    );
    assert_eq!(tape.steps(), steps);
    // The dense engine computes the same spikes with Candle's convolutions and its own recurrence op.
    let opts = ForwardOptions { keep_spikes: true, engine: Engine::Dense, ..ForwardOptions::default() };
    let dense = net.forward(&x, &Masks::new(), opts).unwrap();
    for layer in ["stem", "a1", "b2", "fc0"] {
        let window = tape.spike_window(&net, layer, DType::F64).unwrap().unwrap();
        let reference = dense.activity.iter().find(|a| a.name == layer).unwrap().spikes.clone().unwrap();
        assert_eq!(window.dims(), reference.dims(), "{layer}");
        let (a, b) = (
            window.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            reference.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        );
        assert_eq!(a, b, "{layer}");
        assert!(a.contains(&1.0), "{layer} fired");
    }
    assert!(tape.spike_window(&net, "nope", DType::F64).unwrap().is_none());
}

/// Rate-coded input is kept on the tape as two bits per value; a window with any other value (here one value
/// of the last part) is kept as the caller's tensor. Both give autograd's gradients.
#[test]
fn spike_input_is_taped_as_two_bits_and_other_input_as_given() {
    let spec = NetworkSpec::from_json(SMALL_RESNET).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let net = SpikingNetwork::new(spec, &mut rng, DType::F64, &Device::Cpu).unwrap();
    // Batch 4: parts of 16 steps, so the window runs as 16 + 4 steps.
    let (steps, batch) = (20, 4);
    let masks = net.draw_masks(&mut per_sample(batch, &mut rng)).unwrap();
    let spikes = input(&[steps, batch, 2, 16, 16], 0.3, true, &mut rng);
    let mut values = spikes.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let last = values.len() - 100;
    values[last] = 0.5;
    let analog = Tensor::from_vec(values, spikes.dims(), &Device::Cpu).unwrap();
    assert!(passes_agree(&net, &spikes, &masks) > 0.0);
    assert!(passes_agree(&net, &analog, &masks) > 0.0);
    let bytes = |x: &Tensor| net.forward_taped(x, &masks).unwrap().1.bytes();
    let window = steps * batch * 2 * 16 * 16;
    assert_eq!(bytes(&spikes) - bytes(&analog), 2 * 8 * window.div_ceil(64));
}

#[test]
fn bad_gradients_and_inputs_are_errors() {
    let spec = NetworkSpec::from_json(SMALL_RESNET).unwrap();
    let net = SpikingNetwork::new(spec, &mut ChaCha8Rng::seed_from_u64(1), DType::F64, &Device::Cpu).unwrap();
    let x = Tensor::zeros((3, 2, 2, 16, 16), DType::F64, &Device::Cpu).unwrap();
    let (_, tape) = net.forward_taped(&x, &Masks::new()).unwrap();
    let wrong = Tensor::zeros((2, 4), DType::F64, &Device::Cpu).unwrap();
    let err = net.backward(tape, &wrong).unwrap_err().to_string();
    assert!(err.contains("[2, 3]"), "{err}");
    let bad_input = Tensor::zeros((3, 2, 1, 16, 16), DType::F64, &Device::Cpu).unwrap();
    assert!(net.forward_taped(&bad_input, &Masks::new()).is_err());
}

#[test]
fn a_tape_serves_only_the_network_that_recorded_it() {
    let spec = NetworkSpec::from_json(SMALL_RESNET).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let x = input(&[3, 2, 2, 16, 16], 0.3, true, &mut rng);
    let ones = Tensor::ones((2, 3), DType::F64, &Device::Cpu).unwrap();
    let a = SpikingNetwork::new(spec.clone(), &mut rng, DType::F64, &Device::Cpu).unwrap();
    let weights: HashMap<String, Tensor> =
        a.weights().iter().map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap())).collect();
    let b = SpikingNetwork::from_weights(spec.clone(), weights.clone(), DType::F64, &Device::Cpu).unwrap();
    let (_, tape) = a.forward_taped(&x, &Masks::new()).unwrap();
    let err = b.backward(tape, &ones).unwrap_err().to_string();
    assert!(err.contains("another network"), "{err}");
    // A network dropped and replaced by a new one (which may reuse its memory) does not take its tapes.
    let (_, tape) = a.forward_taped(&x, &Masks::new()).unwrap();
    drop(a);
    let c = SpikingNetwork::from_weights(spec, weights, DType::F64, &Device::Cpu).unwrap();
    assert!(c.backward(tape, &ones).is_err());
    let (_, tape) = c.forward_taped(&x, &Masks::new()).unwrap();
    assert!(c.backward(tape, &ones).is_ok());
}

/// The taped pass's gradients on `net` for input `x`, with a loss gradient of ones.
fn taped_gradients(net: &SpikingNetwork, x: &Tensor, masks: &Masks) -> Vec<(String, Vec<f64>)> {
    let (out, tape) = net.forward_taped(x, masks).unwrap();
    let grads = net.backward(tape, &out.output.ones_like().unwrap()).unwrap();
    net.weights()
        .iter()
        .map(|(name, _)| (name.clone(), grads.get(name).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()))
        .collect()
}

#[test]
fn buffers_kept_between_passes_do_not_leak_into_the_next_step() {
    // One network runs several steps of different batch sizes, so the buffers it keeps from one pass to the
    // next come in every size and hold the previous step's values; each step must give the same bits as a
    // fresh network with the same weights, which starts with no buffers.
    let spec = NetworkSpec::from_json(SMALL_RESNET).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let initial = SpikingNetwork::new(spec.clone(), &mut rng, DType::F64, &Device::Cpu).unwrap();
    // Doubled weights keep the deep layers firing for small batches too.
    let weights: HashMap<String, Tensor> =
        initial.weights().iter().map(|(n, v)| (n.clone(), (v.as_tensor() * 2.0).unwrap())).collect();
    let net = SpikingNetwork::from_weights(spec.clone(), weights.clone(), DType::F64, &Device::Cpu).unwrap();
    for (steps, batch, density) in [(9, 16, 0.3), (8, 4, 0.3), (9, 16, 0.2), (7, 2, 0.5)] {
        let masks = net.draw_masks(&mut per_sample(batch, &mut rng)).unwrap();
        let x = input(&[steps, batch, 2, 16, 16], density, true, &mut rng);
        let reused = taped_gradients(&net, &x, &masks);
        let fresh = SpikingNetwork::from_weights(spec.clone(), weights.clone(), DType::F64, &Device::Cpu).unwrap();
        assert_eq!(
            reused,
            taped_gradients(&fresh, &x, &masks),
            "T {steps}, B {batch}: kept buffers changed the gradients"
        );
        let reached = reused.iter().filter(|(_, g)| g.iter().any(|v| *v != 0.0)).count();
        assert_eq!(reached, reused.len(), "T {steps}, B {batch}: the step must reach every weight");
    }
}

#[test]
fn a_profile_times_every_phase_and_counts_the_dense_work_without_changing_the_step() {
    use snn_models::Phase;
    let spec = NetworkSpec::from_json(SMALL_RESNET).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let net = SpikingNetwork::new(spec.clone(), &mut rng, DType::F64, &Device::Cpu).unwrap();
    let (steps, batch) = (6, 4);
    let masks = net.draw_masks(&mut per_sample(batch, &mut rng)).unwrap();
    // Every input entry non-zero: the stem takes the dense path, whose work is the whole dense count.
    let x = (input(&[steps, batch, 2, 16, 16], 1.0, true, &mut rng) * 0.5).unwrap();
    let plain = taped_gradients(&net, &x, &masks);
    assert!(net.take_profile().is_none(), "nothing is recorded unless asked");

    net.start_profile();
    let profiled = taped_gradients(&net, &x, &masks);
    let profile = net.take_profile().expect("recording was on");
    assert_eq!(plain, profiled, "recording must not change the gradients");
    assert!(net.take_profile().is_none(), "taking the profile stops recording");

    let entry = |layer: &str, phase: Phase| profile.entries().iter().find(|e| e.layer == layer && e.phase == phase);
    // The stem's forward work, from the spec's own operation count: 2 · MACs per image and step · T · B.
    let macs: HashMap<String, u64> = spec.dense_macs().unwrap().into_iter().collect();
    let stem = entry("stem", Phase::Forward).expect("the stem's forward pass is timed");
    assert_eq!(stem.work.flops, 2.0 * (macs["stem"] * (steps * batch) as u64) as f64);
    // A dense input gives no input gradient (nothing spikes there); its kernel gradient is the same work.
    let kernel = entry("stem", Phase::KernelGradient).expect("the stem's kernel gradient is timed");
    assert_eq!(kernel.work.flops, stem.work.flops);
    // Every spiking layer runs its recurrence both ways and reads its tape; every synaptic layer runs forward.
    for layer in ["stem", "pool1", "a1", "a2", "b1", "b2", "fc0"] {
        for phase in [Phase::Forward, Phase::Neurons, Phase::Tape, Phase::NeuronsBackward] {
            let e = entry(layer, phase).unwrap_or_else(|| panic!("{layer} {phase:?} missing"));
            assert!(e.calls >= 1 && e.seconds >= 0.0 && e.work.flops + e.work.bytes > 0.0, "{layer}: {e:?}");
        }
    }
    // The gradients go back to the weights' layout, one timed transpose per weight.
    for (name, _) in net.weights() {
        assert!(entry(name, Phase::Transpose).is_some(), "{name}");
    }
    // Event-driven work never exceeds the dense count: a1's forward over its spike input.
    let a1 = entry("a1", Phase::Forward).unwrap();
    assert!(a1.work.flops <= 2.0 * (macs["a1"] * (steps * batch) as u64) as f64);
    assert!(profile.total_seconds() > 0.0);
}

#[test]
fn masks_are_read_wherever_their_values_lie() {
    // The pass reads a mask in place when its tensor holds the values contiguously, from any offset in its
    // storage, and converts it otherwise; every layout of the same values must give the same bits.
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let net = lively_resnet(&mut rng);
    let (steps, batch) = (8, 4);
    let masks = net.draw_masks(&mut per_sample(batch, &mut rng)).unwrap();
    let x = input(&[steps, batch, 2, 16, 16], 0.3, true, &mut rng);
    let relaid = |f: &dyn Fn(&Tensor) -> Tensor| -> Masks { masks.iter().map(|(n, m)| (n.clone(), f(m))).collect() };
    // The second half of a tensor twice the size: contiguous, starting past the storage's beginning.
    let offset = relaid(&|m| Tensor::cat(&[&m.ones_like().unwrap(), m], 0).unwrap().narrow(0, batch, batch).unwrap());
    // The first and last axes swapped in storage and swapped back in the view: not contiguous.
    let strided = relaid(&|m| {
        let last = m.rank() - 1;
        m.transpose(0, last).unwrap().contiguous().unwrap().transpose(0, last).unwrap()
    });
    assert!(offset.values().all(|m| m.is_contiguous()));
    assert!(strided.values().all(|m| !m.is_contiguous()));
    let reference = taped_gradients(&net, &x, &masks);
    let reached = reference.iter().filter(|(_, g)| g.iter().any(|v| *v != 0.0)).count();
    assert_eq!(reached, reference.len(), "the step must reach every weight");
    assert_eq!(taped_gradients(&net, &x, &offset), reference, "a mask at an offset in its storage");
    assert_eq!(taped_gradients(&net, &x, &strided), reference, "a mask whose values are not contiguous");
    // Drawn masks are keep flags; the same masks as multipliers (1/(1 − p) = 4/3 in f32, and 0), read in
    // place in the network's float type and converted from another one, give the same bits.
    assert!(masks.values().all(|m| m.dtype() == DType::U8));
    let keep = f64::from((4.0f64 / 3.0) as f32);
    let multipliers = relaid(&|m| (m.to_dtype(DType::F64).unwrap() * keep).unwrap());
    assert_eq!(taped_gradients(&net, &x, &multipliers), reference, "multipliers in the network's float type");
    let converted = relaid(&|m| (m.to_dtype(DType::F32).unwrap() * keep).unwrap());
    assert_eq!(taped_gradients(&net, &x, &converted), reference, "multipliers in another float type");
    let ints = relaid(&|m| m.to_dtype(DType::U32).unwrap());
    let err = net.forward_taped(&x, &ints).unwrap_err().to_string();
    assert!(err.contains("keep flags (u8) or multipliers"), "{err}");
    // Masks matter: without them the gradients differ.
    assert_ne!(taped_gradients(&net, &x, &Masks::new()), reference);
}

#[test]
fn micro_batches_give_the_batch_step() {
    // Every layer kind, dropout masks, a signed spike window and a direct (non-spike) one: the gradients, the
    // readout, the activity and the per-sample loss gradients of the batch run in micro-batches of 1, 3, 5
    // and 16 samples are those of the whole batch, up to the order of the sums over samples.
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let net = lively_resnet(&mut rng);
    let (steps, batch) = (7, 11);
    let masks = net.draw_masks(&mut per_sample(batch, &mut rng)).unwrap();
    let spikes = input(&[steps, batch, 2, 16, 16], 0.3, true, &mut rng);
    let direct = (input(&[steps, batch, 2, 16, 16], 0.5, false, &mut rng) * 0.7).unwrap();
    // A loss gradient that differs per sample and class, so a mix-up of samples shows.
    let weight_of = |sample: usize, k: usize| ((sample * 5 + k * 3) % 7) as f64 - 3.0;
    let grad_for = |readout: &Tensor, samples: std::ops::Range<usize>| -> snn_models::Result<Tensor> {
        let (b, k) = readout.dims2()?;
        assert_eq!(b, samples.len());
        let c: Vec<f64> = samples.flat_map(|s| (0..k).map(move |j| weight_of(s, j))).collect();
        Ok((readout * Tensor::from_vec(c, (b, k), &Device::Cpu)?)?)
    };
    for x in [&spikes, &direct] {
        let (whole, tape) = net.forward_taped(x, &masks).unwrap();
        let whole_grads = net.backward(tape, &grad_for(&whole.output, 0..batch).unwrap()).unwrap();
        let mut spikes_total = 0.0;
        for micro in [1, 3, 5, 16] {
            let (out, grads) = net.taped_gradients(x.clone(), &masks, micro, grad_for).unwrap();
            let diff = max_abs(&(&out.output - &whole.output).unwrap());
            assert!(diff < 1e-12, "micro-batch {micro}: readouts differ by {diff}");
            for (a, b) in out.activity.iter().zip(&whole.activity) {
                assert_eq!(a.name, b.name);
                let counts = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
                let (a, b) = (counts(&a.neuron_counts), counts(&b.neuron_counts));
                assert_eq!(a, b, "micro-batch {micro}: spike counts differ");
            }
            assert_eq!(out.activity.len(), whole.activity.len());
            for (name, _) in net.weights() {
                let (g, w) = (grads.get(name).unwrap(), whole_grads.get(name).unwrap());
                let scale = max_abs(w);
                let diff = max_abs(&(g - w).unwrap());
                assert!(diff <= 1e-12 * scale.max(1.0), "micro-batch {micro}, {name}: differ by {diff} of {scale}");
                assert!(scale > 0.0, "{name} must get a gradient");
            }
            spikes_total += out
                .activity
                .iter()
                .map(|a| a.neuron_counts.sum_all().unwrap().to_scalar::<f64>().unwrap())
                .sum::<f64>();
        }
        assert!(spikes_total > 0.0, "the network must be active");
    }
    assert!(net.taped_gradients(spikes, &masks, 0, grad_for).is_err(), "a micro-batch of no samples is refused");
}

#[test]
fn long_windows_take_micro_batches_by_the_state_they_keep_per_sample() {
    // VGG9 keeps 275,456 spiking neurons (64·32·32·2 + 64·16·16 + 128·16·16·2 + 128·8·8 + 256·8·8·3 + 256·4·4
    // + 1024) and 3,072 input values per sample: per step one bit per neuron and two per input, plus two
    // 4-byte floats per neuron. At batch 16 that stays within 64 MiB up to T = 56.
    let net =
        SpikingNetwork::new(builtin("vgg9").unwrap(), &mut ChaCha8Rng::seed_from_u64(1), DType::F32, &Device::Cpu)
            .unwrap();
    let per_sample = |t: usize| (t * (275_456 + 2 * 3_072)).div_ceil(8) + 8 * 275_456;
    assert!(
        16 * per_sample(56) <= snn_models::MICRO_BATCH_BYTES && 16 * per_sample(57) > snn_models::MICRO_BATCH_BYTES
    );
    assert_eq!(net.micro_batch_for(20, 16), 16);
    assert_eq!(net.micro_batch_for(56, 16), 16);
    assert_eq!(net.micro_batch_for(57, 16), 8);
    assert_eq!(net.micro_batch_for(100, 16), 8);
    assert_eq!(net.micro_batch_for(100, 64), 11, "64 samples at T = 100 take six parts (366 MB)");
    assert_eq!(net.micro_batch_for(100_000, 3), 1, "at least one sample");
    let lenet =
        SpikingNetwork::new(builtin("lenet").unwrap(), &mut ChaCha8Rng::seed_from_u64(1), DType::F32, &Device::Cpu)
            .unwrap();
    assert_eq!(lenet.micro_batch_for(100, 64), 64, "the paper's MNIST step runs whole");
}
