//! A training step run in micro-batches updates the weights as the whole batch's step does.

use candle_core::{DType, Device};
use snn_data::mnist::{builtin_subset, Split};
use snn_models::{builtin, SpikingNetwork};
use snn_train::{sample_rng, stream_rng, train_step, train_step_micro_batched, Sgd, Stream};

#[test]
fn a_micro_batched_step_is_the_batch_step() {
    // LeNet in f64 on real MNIST digits: one SGD step from the same weights with the same spikes and masks,
    // whole and in micro-batches of 3 (3, 3, 3 and 1 samples), gives the same loss and weights up to
    // the order of the sums over samples.
    let data = builtin_subset(Split::Train).expect("built-in MNIST digits");
    let net_for = || {
        SpikingNetwork::new(builtin("lenet").unwrap(), &mut stream_rng(3, Stream::Init), DType::F64, &Device::Cpu)
            .unwrap()
    };
    let (whole, parts) = (net_for(), net_for());
    let (batch, steps) = (10, 12);
    let idx: Vec<usize> = (0..batch).collect();
    let (pixels, labels) = data.batch(&idx);
    let rngs = |stream| (0..batch as u64).map(|b| sample_rng(5, stream, 0, b)).collect::<Vec<_>>();
    let x = whole.spec().encode_input(&pixels, &mut rngs(Stream::TrainInput), steps, DType::F64, &Device::Cpu).unwrap();
    let masks = whole.draw_masks(&mut rngs(Stream::Dropout)).unwrap();
    let sgd = |net: &SpikingNetwork| Sgd::new(net.weights().to_vec(), 0.0085, 0.0, 5e-4).unwrap();
    let (mut opt_whole, mut opt_parts) = (sgd(&whole), sgd(&parts));
    let (out_w, loss_w) = train_step(&whole, &mut opt_whole, x.clone(), &labels, &masks).unwrap();
    let (out_p, loss_p) = train_step_micro_batched(&parts, &mut opt_parts, x, &labels, &masks, Some(3)).unwrap();
    assert!((loss_w - loss_p).abs() <= 1e-12 * loss_w.abs().max(1.0), "losses {loss_w} and {loss_p}");
    let readouts = |o: &snn_models::ForwardOutput| o.output.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    assert_eq!(readouts(&out_w).len(), batch * 10);
    for (a, b) in readouts(&out_w).iter().zip(readouts(&out_p)) {
        assert!((a - b).abs() <= 1e-12, "readouts {a} and {b}");
    }
    let mut moved = 0.0f64;
    for ((name, w), (_, p)) in whole.weights().iter().zip(parts.weights()) {
        let (w, p) = (w.as_tensor().flatten_all().unwrap(), p.as_tensor().flatten_all().unwrap());
        let diff = (&w - &p).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
        assert!(diff <= 1e-12, "{name}: the updated weights differ by {diff}");
        let before = net_for().weights().iter().find(|(n, _)| n == name).unwrap().1.as_tensor().flatten_all().unwrap();
        moved = moved.max((&w - &before).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap());
    }
    assert!(moved > 0.0, "the step must move the weights");
}
