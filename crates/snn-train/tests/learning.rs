//! Real learning on real data: LeNet trained briefly on the built-in MNIST subset must beat chance by far,
//! and a run must be a pure function of its seed.

use candle_core::{DType, Device};
use snn_data::mnist::{builtin_subset, Split};
use snn_data::Samples;
use snn_models::{builtin, SpikingNetwork};
use snn_train::{stream_rng, train, Recipe, Silent, Stream};

/// The first `train` and `test` images of the built-in MNIST subset.
fn first_images(train: usize, test: usize) -> (Samples, Samples) {
    let mut train_set = Samples::from(builtin_subset(Split::Train).unwrap());
    let mut test_set = Samples::from(builtin_subset(Split::Test).unwrap());
    train_set.truncate(train);
    test_set.truncate(test);
    (train_set, test_set)
}

/// LeNet with the initial weights of `seed`.
fn fresh_lenet(seed: u64) -> SpikingNetwork {
    SpikingNetwork::new(builtin("lenet").unwrap(), &mut stream_rng(seed, Stream::Init), DType::F32, &Device::Cpu)
        .unwrap()
}

fn quick_recipe(timesteps: usize) -> Recipe {
    let mut r = Recipe::paper_mnist();
    r.epochs = 1;
    r.timesteps = timesteps;
    r.test_timesteps = timesteps;
    r
}

#[test]
fn lenet_learns_mnist_digits_in_one_short_epoch() {
    let (train_set, test_set) = first_images(1280, 300);
    // T = 16 lets spikes reach the last hidden layer (at T = 8 it stays silent at initialisation); batch 16
    // gives 80 SGD steps for the same cost as 20 steps at batch 64.
    let mut recipe = quick_recipe(16);
    recipe.batch_size = 16;
    let net = fresh_lenet(recipe.seed);
    let summary = train(&net, &train_set, &test_set, &recipe, None, &mut Silent).unwrap();
    eprintln!("accuracy after 80 SGD steps: {:.3}", summary.test_accuracy);
    // Chance is 10 %; a working spike-based gradient gets far above it within 80 small steps.
    assert!(summary.test_accuracy > 0.4, "test accuracy {}", summary.test_accuracy);
    let m = &summary.history[0];
    assert!(m.train_spikes.iter().all(|r| r.spikes_per_neuron > 0.0), "a layer is silent: {:?}", m.train_spikes);
}

#[test]
fn identical_seeds_give_identical_weights() {
    let (train_set, test_set) = first_images(96, 32);
    let mut recipe = quick_recipe(3);
    recipe.batch_size = 32;
    let run = |seed: u64| {
        let mut r = recipe.clone();
        r.seed = seed;
        let net = fresh_lenet(seed);
        train(&net, &train_set, &test_set, &r, None, &mut Silent).unwrap();
        net.weights()
            .iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect::<Vec<_>>()
    };
    let (a, b, c) = (run(5), run(5), run(6));
    assert_eq!(a, b, "same seed, different weights");
    assert_ne!(a, c, "different seeds, same weights");
}

/// 16 training and 8 test digits, and a seeded LeNet whose readout weights `fc1.weight` `[10, 200]` are
/// replaced by `readout(original values)`.
fn tiny_run_with_readout(readout: impl FnOnce(Vec<f32>) -> Vec<f32>) -> (Samples, Samples, SpikingNetwork) {
    let (train_set, test_set) = first_images(16, 8);
    let spec = builtin("lenet").unwrap();
    let net = SpikingNetwork::new(spec.clone(), &mut stream_rng(1, Stream::Init), DType::F32, &Device::Cpu).unwrap();
    let mut weights: std::collections::HashMap<String, candle_core::Tensor> =
        net.weights().iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    let w = readout(weights["fc1.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap());
    weights.insert("fc1.weight".into(), candle_core::Tensor::from_vec(w, (10, 200), &Device::Cpu).unwrap());
    let net = SpikingNetwork::from_weights(spec, weights, DType::F32, &Device::Cpu).unwrap();
    (train_set, test_set, net)
}

#[test]
fn a_poisoned_weight_stops_training_with_a_message_naming_it() {
    let (train_set, test_set, net) = tiny_run_with_readout(|mut w| {
        w[3] = f32::NAN;
        w
    });
    let dir = tempfile::tempdir().unwrap();
    let err = train(&net, &train_set, &test_set, &quick_recipe(4), Some(dir.path()), &mut Silent).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("fc1.weight") && msg.contains("epoch 1, batch 0"), "{msg}");
    assert!(!dir.path().join("last.safetensors").exists(), "no checkpoint of a diverged network");
}

#[test]
fn overflowing_batches_stop_the_run_or_are_skipped_and_counted_when_configured() {
    // Finite but enormous readout weights: the readout overflows f32 and the loss is infinite.
    let (train_set, test_set, net) = tiny_run_with_readout(|w| vec![1e30; w.len()]);
    let snapshot = |net: &SpikingNetwork| -> Vec<Vec<f32>> {
        net.weights().iter().map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
    };
    let before = snapshot(&net);
    let mut recipe = quick_recipe(20);
    recipe.batch_size = 8;

    let err = train(&net, &train_set, &test_set, &recipe, None, &mut Silent).unwrap_err().to_string();
    assert!(err.contains("non-finite loss at epoch 1, batch 0"), "{err}");

    recipe.skip_nonfinite_batches = true;
    let summary = train(&net, &train_set, &test_set, &recipe, None, &mut Silent).unwrap();
    assert_eq!(summary.history[0].skipped_batches, 2, "both batches skipped and counted");
    assert_eq!(snapshot(&net), before, "a skipped batch changes no weight");
}

/// A window schedule switches the training window from its epoch on and changes nothing before it: against
/// the same run without a schedule, the first epoch is identical and the second, trained at the scheduled
/// window, is not; a milestone the run never reaches changes nothing at all. Each epoch records both windows.
#[test]
fn a_window_schedule_takes_effect_from_its_epoch() {
    let (train_set, test_set) = first_images(64, 32);
    let mut recipe = quick_recipe(4);
    (recipe.batch_size, recipe.epochs, recipe.test_timesteps) = (32, 2, 6);
    let run = |window_milestones: Vec<(usize, usize)>| {
        let r = Recipe { window_milestones, ..recipe.clone() };
        let net = fresh_lenet(r.seed);
        train(&net, &train_set, &test_set, &r, None, &mut Silent).unwrap().history
    };
    let plain = run(Vec::new());
    let scheduled = run(vec![(2, 7)]);
    let unreached = run(vec![(3, 7)]);
    assert_eq!([plain[0].timesteps, plain[1].timesteps], [4, 4]);
    assert_eq!([scheduled[0].timesteps, scheduled[1].timesteps], [4, 7]);
    assert!(plain.iter().chain(&scheduled).all(|m| m.test_timesteps == 6), "the test window is the recipe's");
    let key = |m: &snn_train::EpochMetrics| (m.loss, m.train_accuracy, m.test_accuracy, m.train_spikes.clone());
    assert_eq!(key(&scheduled[0]), key(&plain[0]), "the first epoch runs before the milestone");
    assert_ne!(key(&scheduled[1]), key(&plain[1]), "the second epoch trains at 7 steps");
    assert_eq!(unreached.iter().map(key).collect::<Vec<_>>(), plain.iter().map(key).collect::<Vec<_>>());
}
