//! Synaptic-operation counting checked against hand counts and brute force, and the analysis checked
//! against the forward pass's own spike counts.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use snn_data::mnist::{builtin_subset, Split};
use snn_data::Samples;
use snn_models::{builtin, NetworkSpec, SpikingNetwork};
use snn_train::analysis::{spatial_fanout, synaptic_ops, window_counts};
use snn_train::{analyse, stream_rng, EnergyModel, Stream};

#[test]
fn spatial_fanout_matches_brute_force_enumeration() {
    // Square and non-square inputs (n × m), strides that leave edge rows or columns unread.
    let cases = [(4, 4, 3, 1, 1), (5, 5, 3, 2, 1), (6, 6, 5, 1, 2), (7, 7, 1, 2, 0), (8, 8, 2, 2, 0), (7, 7, 2, 2, 0)];
    let non_square = [(8, 9, 3, 2, 1), (9, 8, 3, 2, 1), (7, 10, 2, 2, 0), (5, 11, 5, 3, 2)];
    for (n, m, k, s, p) in cases.into_iter().chain(non_square) {
        let (out, out_w) = ((n + 2 * p - k) / s + 1, (m + 2 * p - k) / s + 1);
        let map = spatial_fanout((n, m), (out, out_w), k, s, p);
        assert_eq!(map.len(), n * m);
        for h in 0..n {
            for w in 0..m {
                // Count (output position, kernel offset) pairs that read input (h, w).
                let mut brute = 0;
                for oh in 0..out {
                    for ow in 0..out_w {
                        for ki in 0..k {
                            for kj in 0..k {
                                let (r, c) = ((oh * s + ki) as isize - p as isize, (ow * s + kj) as isize - p as isize);
                                if r == h as isize && c == w as isize {
                                    brute += 1;
                                }
                            }
                        }
                    }
                }
                assert_eq!(map[h * m + w], brute as f64, "{n}×{m} k{k} s{s} p{p} at ({h},{w})");
            }
        }
    }
    // By hand: 3×3 kernel, padding 1, stride 1 on 4×4: corner 4, edge 6, interior 9.
    let m = spatial_fanout((4, 4), (4, 4), 3, 1, 1);
    assert_eq!((m[0], m[1], m[5]), (4.0, 6.0, 9.0));
}

fn tiny_spec() -> NetworkSpec {
    NetworkSpec::from_json(
        r#"{"name": "tiny", "input_shape": [1, 4, 4], "input_signed": true, "layers": [
        {"name": "c1", "kind": "conv", "input": "input", "in_channels": 1, "out_channels": 3, "kernel": 3, "padding": 1},
        {"name": "p1", "kind": "pool", "input": "c1"},
        {"name": "c2", "kind": "conv", "input": "p1", "in_channels": 3, "out_channels": 2, "kernel": 3, "stride": 2, "padding": 1,
         "shortcut": {"name": "s2", "kind": "conv1x1", "input": "p1", "stride": 2}},
        {"name": "f", "kind": "fc", "input": "c2", "in_features": 2, "out_features": 4},
        {"name": "out", "kind": "readout", "input": "f", "in_features": 4, "out_features": 10}]}"#,
    )
    .unwrap()
}

/// A window `[T=2, B=1, dims...]` with the given `(t, flat index, value)` entries.
fn window(dims: &[usize], entries: &[(usize, usize, f32)]) -> Tensor {
    let per: usize = dims.iter().product();
    let mut v = vec![0f32; 2 * per];
    for &(t, i, x) in entries {
        v[t * per + i] = x;
    }
    let mut shape = vec![2, 1];
    shape.extend_from_slice(dims);
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[test]
fn synaptic_ops_match_a_hand_count_with_padding_stride_pooling_shortcut_and_signed_input() {
    let spec = tiny_spec();
    let net = SpikingNetwork::new(spec, &mut stream_rng(0, Stream::Init), DType::F32, &Device::Cpu).unwrap();
    // Input: −1 at corner (0,0) at t0, +1 at (1,1) at t1.
    let input = window(&[1, 4, 4], &[(0, 0, -1.0), (1, 5, 1.0)]);
    // c1 [3,4,4]: channel 0 (0,0) at t0, channel 2 (3,3) at t1.
    let c1 = window(&[3, 4, 4], &[(0, 0, 1.0), (1, 2 * 16 + 15, 1.0)]);
    // p1 [3,2,2]: channel 0 (0,0) at t0, channel 1 (1,1) at t1.
    let p1 = window(&[3, 2, 2], &[(0, 0, 1.0), (1, 4 + 3, 1.0)]);
    let c2 = window(&[2, 1, 1], &[(1, 0, 1.0)]);
    let f = window(&[4], &[(1, 3, 1.0)]);
    let counts = |windows: [(&'static str, &Tensor); 5]| -> HashMap<&'static str, Vec<f64>> {
        windows.into_iter().map(|(n, w)| (n, window_counts(w).unwrap())).collect()
    };
    let ops =
        synaptic_ops(&net, &counts([("input", &input), ("c1", &c1), ("p1", &p1), ("c2", &c2), ("f", &f)])).unwrap();
    // c1: corner pixel reaches 2×2 positions × 3 channels = 12; pixel (1,1) reaches 3×3 × 3 = 27.
    // p1: each of the two spikes lies in one pooling window: 2.
    // c2: 3×3 stride-2 kernel with padding 1 on 2×2 → one output position covering all inputs: 2 spikes × 2
    //     channels = 4; the stride-2 1×1 shortcut reads only (0,0): 1 spike × 2 channels = 2.
    // f: one spike × 4 outputs; readout: one spike × 10 classes.
    let expected = [(2.0, 39.0), (2.0, 2.0), (4.0, 6.0), (1.0, 4.0), (1.0, 10.0)];
    assert_eq!(ops, expected);

    // A window of the wrong size is an error, not a panic.
    let bad = window(&[4, 4, 4], &[]);
    assert!(
        synaptic_ops(&net, &counts([("input", &input), ("c1", &bad), ("p1", &p1), ("c2", &c2), ("f", &f)])).is_err()
    );
}

#[test]
fn analysis_agrees_with_the_forward_pass_and_accounts_energy() {
    let mut data = Samples::from(builtin_subset(Split::Test).unwrap());
    data.truncate(24);
    let net =
        SpikingNetwork::new(builtin("lenet").unwrap(), &mut stream_rng(1, Stream::Init), DType::F32, &Device::Cpu)
            .unwrap();
    let energy = EnergyModel::default();
    let r = analyse(&net, &data, 12, 8, 1, energy, Some("cnn2")).unwrap();
    let by = |name: &str| r.layers.iter().find(|l| l.layer == name).unwrap();
    // The spikes a layer emits are exactly the spikes its consumer receives (no masks at test time).
    for (src, dst) in [("cnn1", "pool1"), ("pool1", "cnn2"), ("cnn2", "pool2"), ("pool2", "fc0"), ("fc0", "fc1")] {
        let emitted = by(src).spikes_per_neuron.unwrap() * by(src).neurons as f64;
        assert!((emitted - by(dst).input_spikes).abs() < 1e-6 * emitted.max(1.0), "{src} -> {dst}");
    }
    // Firing rate is spikes per neuron per step.
    assert!((by("cnn1").firing_rate.unwrap() * 12.0 - by("cnn1").spikes_per_neuron.unwrap()).abs() < 1e-12);
    // fc layers: AC = input spikes × fan-out exactly.
    assert!((by("fc0").snn_ac - by("fc0").input_spikes * 200.0).abs() < 1e-6);
    assert_eq!(by("cnn2").ann_mac, 4_900_000.0);
    let t = &r.totals;
    assert!((t.snn_energy_pj - t.snn_ac * 0.9).abs() < 1e-6 * t.snn_energy_pj);
    assert!((t.ann_energy_pj - t.ann_mac * 4.6).abs() < 1e-6 * t.ann_energy_pj);
    let raster = r.raster.as_ref().unwrap();
    assert_eq!((raster.neurons, raster.timesteps), (50 * 14 * 14, 12));
    assert!(raster.events.iter().all(|&(t, n)| t < 12 && (n as usize) < raster.neurons));
    assert!(r.assumptions.iter().any(|a| a.contains("0.9 pJ per AC")));

    // Counting neuron updates adds exactly neurons × T per layer.
    let with = analyse(&net, &data, 12, 8, 1, EnergyModel { count_neuron_updates: true, ..energy }, None).unwrap();
    let updates: f64 = r.layers.iter().map(|l| l.neuron_updates).sum();
    assert!((with.totals.snn_ac - t.snn_ac - updates).abs() < 1e-6 * updates);

    // Bad input: negative energy, T = 0, unknown raster layer, data of the wrong shape.
    assert!(analyse(&net, &data, 12, 8, 1, EnergyModel { ac_pj: -1.0, ..energy }, None).is_err());
    assert!(analyse(&net, &data, 0, 8, 1, energy, None).is_err());
    assert!(analyse(&net, &data, 4, 8, 1, energy, Some("fc1")).is_err());
}
