//! Training on CIFAR-10 (real archive, skipped when absent), user-defined architectures and TOML experiment
//! files, from the command line.

use std::path::{Path, PathBuf};

mod common;
use common::{cli, stderr};

fn cifar_archive() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cifar10/cifar10-jpg-q75.tar.gz");
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("SKIPPED: CIFAR-10 archive not found at {}", p.display());
        None
    }
}

#[test]
fn vgg9_and_resnet11_train_on_cifar10_and_evaluate_back() {
    let Some(archive) = cifar_archive() else { return };
    let dir = tempfile::tempdir().unwrap();
    for model in ["vgg9", "resnet11"] {
        let out = dir.path().join(model);
        let o = cli(&[
            "train",
            "--model",
            model,
            "--dataset",
            "cifar10",
            "--data-dir",
            archive.to_str().unwrap(),
            "--train-limit",
            "16",
            "--test-limit",
            "10",
            "--timesteps",
            "2",
            "--batch-size",
            "8",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{model}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["train_images"], 16);
        // The resolved recipe is saved beside the checkpoints, with the paper's CIFAR values.
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("recipe.json")).unwrap()).unwrap();
        assert_eq!(r["recipe"]["augment"], true);
        // The paper's rate, scaled by the short-window rule at T = 2.
        let paper = if model == "vgg9" { 0.0033 } else { 0.0025 };
        assert_eq!(r["recipe"]["lr_before_window_rule"], paper);
        assert!((r["recipe"]["lr"].as_f64().unwrap() - paper * 2.0 / 20.0).abs() < 1e-15, "{}", r["recipe"]);
        assert_eq!(r["spec"]["input_std"][0], 0.557);
        let o = cli(&[
            "eval",
            "--checkpoint",
            out.join("last.safetensors").to_str().unwrap(),
            "--data-dir",
            archive.to_str().unwrap(),
            "--test-limit",
            "10",
            "--json",
        ]);
        assert!(o.status.success(), "{model} eval: {}", stderr(&o));
        let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(e["total"], 10);
    }
}

#[test]
fn models_json_marks_derived_networks() {
    let o = cli(&["models", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let get = |n: &str| v.as_array().unwrap().iter().find(|m| m["name"] == n).unwrap().clone();
    assert_eq!(get("vgg9")["parameters"], 5_938_880);
    assert_eq!(get("resnet11")["parameters"], 17_936_064);
    for derived in ["vgg7", "resnet7", "resnet9"] {
        let m = get(derived);
        assert_eq!(m["verified"], false);
        assert!(m["note"].as_str().unwrap().contains("derived"));
        assert!(m["parameters"].as_u64().unwrap() > 1_000_000);
    }
    // 2·20·25 + 20·50·25 + 50·8·8·200 + 200·10 weights.
    let nmnist = get("lenet-nmnist");
    assert_eq!(nmnist["parameters"], 668_000);
    assert!(nmnist["note"].as_str().unwrap().contains("beyond the paper"));
}

#[test]
fn user_architectures_and_toml_experiments() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("mini.json");
    std::fs::write(
        &spec,
        r#"{"name": "mini", "input_shape": [1, 28, 28], "input_gain": 0.5, "layers": [
            {"name": "c1", "kind": "conv", "input": "input", "in_channels": 1, "out_channels": 4, "kernel": 5, "padding": 2},
            {"name": "p1", "kind": "pool", "input": "c1"},
            {"name": "out", "kind": "readout", "input": "p1", "in_features": 784, "out_features": 10}]}"#,
    )
    .unwrap();
    let exp = dir.path().join("exp.toml");
    std::fs::write(
        &exp,
        "epochs = 2\nbatch_size = 16\ntimesteps = 3\ntest_timesteps = 3\nlr_milestones = [[2, 0.5]]\n",
    )
    .unwrap();
    let out = dir.path().join("run");
    let o = cli(&[
        "train",
        "--model-config",
        spec.to_str().unwrap(),
        "--config",
        exp.to_str().unwrap(),
        "--train-limit",
        "32",
        "--test-limit",
        "16",
        "--lr",
        "0.01",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["model"].as_str(), v["epochs"].as_u64(), v["timesteps"].as_u64()), (Some("mini"), Some(2), Some(3)));
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lrs: Vec<f64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["lr"].as_f64().unwrap())
        .collect();
    assert_eq!(lrs, vec![0.01, 0.005], "the flag overrides the file's lr; the file's schedule applies");

    // Bad experiment files and specs are named errors.
    std::fs::write(&exp, "epochz = 2\n").unwrap();
    let o = cli(&["train", "--config", exp.to_str().unwrap(), "--train-limit", "8"]);
    assert!(!o.status.success() && stderr(&o).contains("unknown recipe key 'epochz'"), "{}", stderr(&o));
    std::fs::write(&exp, "epochs = \"two\"\n").unwrap();
    let o = cli(&["train", "--config", exp.to_str().unwrap(), "--train-limit", "8"]);
    assert!(!o.status.success() && stderr(&o).contains("invalid recipe"), "{}", stderr(&o));
    std::fs::write(&spec, r#"{"input_shape": [1, 28, 28], "layers": [{"name": "x", "kind": "fc", "input": "input", "in_features": 10, "out_features": 3}]}"#).unwrap();
    let o = cli(&["train", "--model-config", spec.to_str().unwrap(), "--train-limit", "8"]);
    assert!(!o.status.success() && stderr(&o).contains("mini.json"), "{}", stderr(&o));
    let o = cli(&["train", "--dataset", "imagenet", "--train-limit", "8"]);
    assert!(!o.status.success() && stderr(&o).contains("unknown dataset 'imagenet'"), "{}", stderr(&o));
    let o = cli(&["train", "--model", "vgg9", "--train-limit", "8"]);
    assert!(!o.status.success() && stderr(&o).contains("needs a data folder"), "{}", stderr(&o));
}
