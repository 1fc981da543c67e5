//! The peer benchmark's plain-PyTorch network is ours: the same parameter count and, on the same weights and
//! input spikes, the same readout and the same spike counts in every layer (float64).
//!
//! Needs a Python with the packages of `bench/peers/requirements.txt`: `SNN_PEERS_PYTHON`, else `python3`;
//! skipped with a message when it cannot import them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use snn_models::{builtin, save_checkpoint, ForwardOptions, Masks, SpikingNetwork};
use snn_train::{sample_rng, stream_rng, Stream};

fn python() -> Option<PathBuf> {
    let python = PathBuf::from(std::env::var_os("SNN_PEERS_PYTHON").unwrap_or_else(|| "python3".into()));
    let ok = Command::new(&python)
        .args(["-c", "import torch, safetensors, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(python)
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("bench").join("peers").join("snn_peers.py")
}

/// Runs our network and the script's on the same weights and input; compares them.
fn compare(model: &str, peer_model: &str, batch: usize, steps: usize, expected_params: usize) {
    let Some(python) = python() else {
        eprintln!("skipped: no Python with torch and safetensors (set SNN_PEERS_PYTHON; see bench/peers/README.md)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let net = SpikingNetwork::new(builtin(model).unwrap(), &mut stream_rng(3, Stream::Init), DType::F64, &Device::Cpu)
        .unwrap();
    assert_eq!(net.parameter_count(), expected_params);
    // Real-valued pixels in [0, 1], then the network's own coding and normalisation.
    let pixels_per_sample: usize = net.spec().input_shape.iter().product();
    let mut pixels: Vec<f32> = (0..batch * pixels_per_sample).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
    net.spec().normalize(&mut pixels);
    let mut rngs: Vec<_> = (0..batch as u64).map(|b| sample_rng(5, Stream::EvalInput, 0, b)).collect();
    let x = net.spec().encode_input(&pixels, &mut rngs, steps, DType::F64, &Device::Cpu).unwrap();

    let weights = dir.path().join("weights.safetensors");
    save_checkpoint(&weights, &net, &HashMap::new()).unwrap();
    let input = dir.path().join("input.safetensors");
    candle_core::safetensors::save(&HashMap::from([("input".to_string(), x.clone())]), &input).unwrap();
    let out = dir.path().join("out.safetensors");
    let o = Command::new(&python)
        .arg(script())
        .args(["--check-forward", "--model", peer_model, "--dtype", "f64", "--weights"])
        .arg(&weights)
        .arg("--input")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains(&format!("params={expected_params}")), "{stdout}");

    let theirs = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let opts = ForwardOptions { engine: snn_models::Engine::Dense, ..ForwardOptions::default() };
    let ours = net.forward(&x, &Masks::new(), opts).unwrap();
    let values = |t: &Tensor| t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let (a, b) = (values(&ours.output), values(&theirs["output"]));
    assert_eq!(a.len(), b.len());
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    // The script writes its readout in f32.
    assert!(worst < 1e-6, "{model}: readouts differ by {worst}");
    for layer in &ours.activity {
        let key = format!("count.{}", layer.name);
        let theirs = theirs.get(&key).unwrap_or_else(|| panic!("the script wrote no {key}"));
        assert_eq!(values(&layer.neuron_counts), values(theirs), "{model}: spike counts of {}", layer.name);
    }
    assert!(ours.activity.iter().all(|l| values(&l.neuron_counts).iter().sum::<f64>() > 0.0), "every layer fired");
}

#[test]
fn the_plain_pytorch_lenet_is_ours() {
    compare("lenet", "mnist", 3, 20, 517_500);
}

#[test]
fn the_plain_pytorch_vgg9_is_ours() {
    compare("vgg9", "vgg9", 2, 50, 5_938_880);
}
