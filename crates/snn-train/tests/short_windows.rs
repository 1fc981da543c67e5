//! Short windows: the activity probe before training, the report of a layer that falls silent, the
//! short-window learning-rate rule and direct input coding, on real MNIST digits.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use snn_data::mnist::{builtin_subset, Split};
use snn_data::Samples;
use snn_models::{builtin, InputEncoding, NetworkSpec, SpikingNetwork};
use snn_train::{
    probe_activity, quiet_layers, stream_rng, train, ActivityWarning, Recipe, Stream, TrainObserver, WarningTime,
    QUIET_SPIKES_PER_NEURON,
};

fn digits(train: usize, test: usize) -> (Samples, Samples) {
    let mut train_set = Samples::from(builtin_subset(Split::Train).unwrap());
    let mut test_set = Samples::from(builtin_subset(Split::Test).unwrap());
    train_set.truncate(train);
    test_set.truncate(test);
    (train_set, test_set)
}

fn lenet(spec: NetworkSpec, seed: u64) -> SpikingNetwork {
    SpikingNetwork::new(spec, &mut stream_rng(seed, Stream::Init), DType::F32, &Device::Cpu).unwrap()
}

/// The network with one weight tensor replaced by `f(values)`.
fn with_weight(net: &SpikingNetwork, name: &str, f: impl FnOnce(Vec<f32>) -> Vec<f32>) -> SpikingNetwork {
    let mut weights: HashMap<String, Tensor> =
        net.weights().iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    let old = &weights[name];
    let values = f(old.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    let new = Tensor::from_vec(values, old.dims(), &Device::Cpu).unwrap();
    weights.insert(name.into(), new);
    SpikingNetwork::from_weights(net.spec().clone(), weights, DType::F32, &Device::Cpu).unwrap()
}

#[derive(Default)]
struct Warnings(Vec<ActivityWarning>);

impl TrainObserver for Warnings {
    fn on_warning(&mut self, w: &ActivityWarning) {
        self.0.push(w.clone());
    }
}

fn recipe(timesteps: usize, batch: usize) -> Recipe {
    Recipe { epochs: 1, timesteps, test_timesteps: timesteps, batch_size: batch, ..Recipe::paper_mnist() }
}

#[test]
fn a_silenced_layer_is_reported_before_any_training_step() {
    let (train_set, test_set) = digits(64, 16);
    let net = lenet(builtin("lenet").unwrap(), 1);
    let healthy = probe_activity(&net, &train_set, 20, 32, 1).unwrap();
    assert_eq!(healthy.iter().map(|r| r.layer.as_str()).collect::<Vec<_>>(), ["cnn1", "pool1", "cnn2", "pool2", "fc0"]);
    assert!(quiet_layers(&healthy).is_empty(), "a fresh LeNet at T = 20 fires everywhere: {healthy:?}");

    // Negative weights into fc0 keep its membranes below threshold: fc0 cannot fire, the layers below can.
    let silenced = with_weight(&net, "fc0.weight", |w| w.into_iter().map(|v| -v.abs()).collect());
    let rates = probe_activity(&silenced, &train_set, 20, 32, 1).unwrap();
    let quiet = quiet_layers(&rates);
    assert_eq!(quiet.len(), 1, "{quiet:?}");
    assert_eq!(
        (quiet[0].layer.as_str(), quiet[0].spikes_per_neuron, quiet[0].when),
        ("fc0", 0.0, WarningTime::BeforeTraining)
    );
    assert!(quiet[0].to_string().contains("--timesteps"), "the warning names a remedy: {}", quiet[0]);

    // The probe's rates are those of the same batch counted independently from the network's spike counts.
    let cnn1 = rates.iter().find(|r| r.layer == "cnn1").unwrap();
    assert!(cnn1.spikes_per_neuron > QUIET_SPIKES_PER_NEURON);

    // A run reports it before its first step, through the observer, and changes nothing by probing.
    let mut seen = Warnings::default();
    let a = train(&silenced, &train_set, &test_set, &recipe(20, 32), None, &mut seen).unwrap();
    assert_eq!(seen.0.first().map(|w| (w.layer.as_str(), w.when)), Some(("fc0", WarningTime::BeforeTraining)));
    let again = with_weight(&net, "fc0.weight", |w| w.into_iter().map(|v| -v.abs()).collect());
    let b = train(&again, &train_set, &test_set, &recipe(20, 32), None, &mut snn_train::Silent).unwrap();
    assert_eq!(a.history[0].loss, b.history[0].loss, "the probe must not shift any training stream");
}

#[test]
fn a_layer_that_falls_silent_during_training_is_reported_at_that_batch() {
    let (train_set, test_set) = digits(256, 16);
    let net = lenet(builtin("lenet").unwrap(), 1);
    // A learning rate fifty times the paper's throws the weights far in the first steps; whichever layer it
    // silences must be reported at the batch it happened, after having fired on the probe batch.
    let mut r = recipe(20, 32);
    r.lr = 0.5;
    let mut seen = Warnings::default();
    let summary = train(&net, &train_set, &test_set, &r, None, &mut seen).unwrap();
    let during: Vec<_> = seen.0.iter().filter(|w| matches!(w.when, WarningTime::Batch { .. })).collect();
    assert!(!during.is_empty(), "no layer reported silent: {:?}; rates {:?}", seen.0, summary.history[0].train_spikes);
    for w in during {
        assert!(w.spikes_per_neuron < QUIET_SPIKES_PER_NEURON, "{w:?}");
        let WarningTime::Batch { epoch, batch } = w.when else { unreachable!() };
        assert_eq!(epoch, 1);
        assert!(batch < 8, "{w:?}");
        assert!(w.to_string().contains(&format!("batch {batch}")), "{w}");
    }
}

#[test]
fn direct_coding_drives_the_first_layer_harder_than_poisson_spikes() {
    let (train_set, _) = digits(64, 1);
    let poisson = lenet(builtin("lenet").unwrap(), 1);
    let rates = probe_activity(&poisson, &train_set, 4, 16, 1).unwrap();
    let cnn1 = rates.iter().find(|r| r.layer == "cnn1").unwrap();
    let mut spec = builtin("lenet").unwrap();
    spec.input_encoding = InputEncoding::Direct;
    let direct = lenet(spec, 1);
    let direct_rates = probe_activity(&direct, &train_set, 4, 16, 1).unwrap();
    let direct_cnn1 = direct_rates.iter().find(|r| r.layer == "cnn1").unwrap();
    assert!(
        direct_cnn1.spikes_per_neuron > 1.5 * cnn1.spikes_per_neuron,
        "the full image as current drives cnn1 harder than spikes at half the pixel rate: {direct_cnn1:?} vs {cnn1:?}"
    );
}
