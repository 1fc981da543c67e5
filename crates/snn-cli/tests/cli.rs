//! End-to-end tests of the `snn-cli` binary: the happy path and every class of bad input.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::Output;

mod common;
use common::{cli, stderr};

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

#[test]
fn models_lists_lenet_with_its_parameter_count() {
    let o = cli(&["models", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    let lenet = v.as_array().unwrap().iter().find(|m| m["name"] == "lenet").expect("lenet listed");
    assert_eq!(lenet["parameters"], 517_500);
    let o = cli(&["models"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("517500"));
}

#[test]
fn train_then_eval_round_trip_reproduces_the_test_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = cli(&[
        "train",
        "--train-limit",
        "128",
        "--test-limit",
        "64",
        "--timesteps",
        "4",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    for key in ["test_accuracy", "epochs", "timesteps", "train_images", "seconds", "files"] {
        assert!(v.get(key).is_some(), "summary lacks {key}: {v}");
    }
    assert_eq!(v["train_images"], 128);
    assert_eq!(v["timesteps"], 4);
    let acc = v["test_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    let best = v["files"]["best"].as_str().unwrap();
    assert!(Path::new(best).is_file());
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert_eq!(line["epoch"], 1);
    let layers = line["train_spikes"].as_array().unwrap();
    assert_eq!(layers.len(), 5, "5 spiking layers: {line}");
    for l in layers {
        let (rate, dead) = (l["firing_rate"].as_f64().unwrap(), l["dead_fraction"].as_f64().unwrap());
        assert!((rate * 4.0 - l["spikes_per_neuron"].as_f64().unwrap()).abs() < 1e-9, "{l}");
        assert!((0.0..=1.0).contains(&dead), "{l}");
    }

    // Evaluating the saved checkpoint with the same seed and batch size draws the same input spikes.
    let o = cli(&["eval", "--checkpoint", best, "--test-limit", "64", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = json(&o);
    assert_eq!(e["timesteps"], 4, "test time steps come from the checkpoint");
    assert_eq!(e["accuracy"].as_f64().unwrap(), acc);
}

#[test]
fn unknown_model_and_non_numeric_flags_are_rejected() {
    let o = cli(&["train", "--model", "alexnet"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown model 'alexnet'"), "{}", stderr(&o));
    let o = cli(&["train", "--epochs", "many"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("invalid value 'many'"), "{}", stderr(&o));
    let o = cli(&["train", "--timesteps", "0", "--train-limit", "8"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("timesteps must be at least 1"), "{}", stderr(&o));
    let o = cli(&["train", "--lr", "NaN", "--train-limit", "8"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("lr must be finite"), "{}", stderr(&o));
}

#[test]
fn missing_and_corrupt_data_are_reported_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let o = cli(&["train", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("train-images-idx3-ubyte") && stderr(&o).contains("not found"), "{}", stderr(&o));

    // A truncated image file: header says 10 images of 28x28, body has 100 bytes.
    let mut f = std::fs::File::create(dir.path().join("train-images-idx3-ubyte")).unwrap();
    f.write_all(&[0, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 28, 0, 0, 0, 28]).unwrap();
    f.write_all(&[0; 100]).unwrap();
    let mut f = std::fs::File::create(dir.path().join("train-labels-idx1-ubyte")).unwrap();
    f.write_all(&[0, 0, 8, 1, 0, 0, 0, 10]).unwrap();
    f.write_all(&[1; 10]).unwrap();
    let o = cli(&["train", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("train-images-idx3-ubyte") && err.contains("truncated data"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_checkpoints_are_reported_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.safetensors");
    let o = cli(&["eval", "--checkpoint", missing.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("nope.safetensors"), "{}", stderr(&o));

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    let o = cli(&["eval", "--checkpoint", garbage.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a valid safetensors file"), "{}", stderr(&o));

    // A well-formed checkpoint whose weight does not fit the spec it declares.
    let spec = snn_models::builtin("lenet").unwrap().to_json();
    let wrong = dir.path().join("wrong.safetensors");
    let data = vec![0u8; 4 * 20 * 3 * 3];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![20, 1, 3, 3], &data).unwrap();
    let meta = HashMap::from([("format".to_string(), "snn-checkpoint/1".to_string()), ("spec".to_string(), spec)]);
    let bytes = safetensors::serialize([("cnn1.weight", view)], Some(meta)).unwrap();
    std::fs::write(&wrong, bytes).unwrap();
    let o = cli(&["eval", "--checkpoint", wrong.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("cnn1.weight") && err.contains("[20, 1, 5, 5]"), "{err}");

    // A safetensors file from elsewhere (no spec metadata).
    let foreign = dir.path().join("foreign.safetensors");
    let bytes = safetensors::serialize(
        [("w", safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &[0u8; 4]).unwrap())],
        None,
    )
    .unwrap();
    std::fs::write(&foreign, bytes).unwrap();
    let o = cli(&["eval", "--checkpoint", foreign.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a checkpoint of this toolkit"), "{}", stderr(&o));
}

#[test]
fn nmnist_event_recordings_train_and_evaluate_lenet_nmnist() {
    let dir = tempfile::tempdir().unwrap();
    // Synthetic recordings in the N-MNIST format: digit d is a short vertical stroke at column 3 + 3d.
    for (split, per_class) in [("Train", 3), ("Test", 1)] {
        for digit in 0..4u8 {
            let class_dir = dir.path().join(split).join(digit.to_string());
            std::fs::create_dir_all(&class_dir).unwrap();
            for k in 0..per_class {
                let bytes: Vec<u8> = (0..30u32)
                    .flat_map(|i| {
                        let t = i * 1000 + k;
                        [3 + 3 * digit, 5 + (i % 20) as u8, 0x80 | (t >> 16) as u8, (t >> 8) as u8, t as u8]
                    })
                    .collect();
                std::fs::write(class_dir.join(format!("{k:05}.bin")), bytes).unwrap();
            }
        }
    }
    let out = dir.path().join("run");
    let data = dir.path().to_str().unwrap();
    let o = cli(&[
        "train",
        "--model",
        "lenet-nmnist",
        "--dataset",
        "nmnist",
        "--data-dir",
        data,
        "--timesteps",
        "6",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["train_images"], 12);
    let best = v["files"]["best"].as_str().unwrap().to_string();
    let o = cli(&["eval", "--checkpoint", &best, "--dataset", "nmnist", "--data-dir", data, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["total"], 4);
    // The image LeNet cannot read event frames: a clear shape error, not a panic.
    let o =
        cli(&["train", "--model", "lenet", "--dataset", "nmnist", "--data-dir", data, "--out", out.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("[2, 34, 34]"), "{}", stderr(&o));
}

#[test]
fn short_windows_get_the_learning_rate_rule_unless_the_rate_is_given_and_direct_coding_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args = vec!["train", "--train-limit", "32", "--test-limit", "16", "--timesteps", "5"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--out", out.to_str().unwrap()]);
        let o = cli(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("recipe.json")).unwrap()).unwrap();
        (o, saved)
    };
    let (o, saved) = run("ruled", &["--encoding", "direct"]);
    let lr = saved["recipe"]["lr"].as_f64().unwrap();
    assert!((lr - 0.0085 * 5.0 / 20.0).abs() < 1e-12, "lr {lr}");
    assert_eq!(saved["recipe"]["lr_before_window_rule"], 0.0085);
    assert!(stderr(&o).contains("scaled by T/20"), "the rule is announced: {}", stderr(&o));
    assert_eq!(saved["spec"]["input_encoding"], "direct");
    // The checkpoint carries the coding, so evaluation codes its inputs the same way.
    let ckpt = dir.path().join("ruled").join("last.safetensors");
    let bytes = std::fs::read(&ckpt).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let spec: serde_json::Value = serde_json::from_str(header["__metadata__"]["spec"].as_str().unwrap()).unwrap();
    assert_eq!(spec["input_encoding"], "direct");

    let (_, saved) = run("chosen", &["--lr", "0.0085"]);
    assert_eq!(saved["recipe"]["lr"], 0.0085);
    assert!(saved["recipe"].get("lr_before_window_rule").is_none());
    assert!(saved["spec"].get("input_encoding").is_none(), "Poisson coding is the default and not written");
}
