//! Random draws keyed by sample: a checkpoint scores the same at any evaluation batch size, and a batch's
//! input spikes do not depend on its other members.

use candle_core::{DType, Device};
use rand::Rng;
use snn_data::mnist::{builtin_subset, Split};
use snn_data::Samples;
use snn_models::{builtin, SpikingNetwork};
use snn_train::{evaluate, sample_rng, stream_rng, Stream};

#[test]
fn sample_generators_are_keyed_by_seed_stream_epoch_and_sample() {
    let first = |seed, stream, epoch, sample| sample_rng(seed, stream, epoch, sample).gen::<u64>();
    let base = first(1, Stream::TrainInput, 3, 17);
    assert_eq!(base, first(1, Stream::TrainInput, 3, 17), "the same key gives the same draws");
    let others = [
        first(2, Stream::TrainInput, 3, 17),
        first(1, Stream::Dropout, 3, 17),
        first(1, Stream::TrainInput, 4, 17),
        first(1, Stream::TrainInput, 3, 18),
        first(1, Stream::TrainInput, 17, 3),
    ];
    for (i, o) in others.iter().enumerate() {
        assert_ne!(base, *o, "key change {i} must change the draws");
    }
    // Neighbouring samples' streams are unrelated: their first 10,000 bits agree about half the time.
    let bits = |sample| {
        let mut rng = sample_rng(1, Stream::EvalInput, 0, sample);
        (0..157).map(|_| rng.gen::<u64>()).collect::<Vec<_>>()
    };
    let (a, b) = (bits(0), bits(1));
    let same: u32 = a.iter().zip(&b).map(|(x, y)| (!(x ^ y)).count_ones()).sum();
    let total = 64 * a.len() as u32;
    assert!((same as f64 / total as f64 - 0.5).abs() < 0.03, "{same} of {total} bits agree");
}

#[test]
fn a_checkpoint_scores_the_same_at_any_evaluation_batch_size() {
    let mut test_set = Samples::from(builtin_subset(Split::Test).unwrap());
    test_set.truncate(150);
    let net =
        SpikingNetwork::new(builtin("lenet").unwrap(), &mut stream_rng(4, Stream::Init), DType::F32, &Device::Cpu)
            .unwrap();
    let score = |batch| evaluate(&net, &test_set, 12, batch, 9, snn_models::Engine::Sparse, &mut |_, _| {}).unwrap();
    let (a, b, c) = (score(64), score(7), score(150));
    assert_eq!((a.correct, a.total), (b.correct, b.total));
    assert_eq!((a.correct, a.total), (c.correct, c.total));
    // Per-layer spike counts are sums of the same per-sample spikes, so they agree too.
    for ((x, y), z) in a.layers.iter().zip(&b.layers).zip(&c.layers) {
        assert!((x.spikes_per_neuron - y.spikes_per_neuron).abs() < 1e-12, "{x:?} vs {y:?}");
        assert!((x.spikes_per_neuron - z.spikes_per_neuron).abs() < 1e-12, "{x:?} vs {z:?}");
    }
    assert!(a.layers.iter().all(|l| l.spikes_per_neuron > 0.0));
}
