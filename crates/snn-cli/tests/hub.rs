//! The Hub workflow end to end through the binary, against a local Hub server (no internet): fetch a
//! dataset, verify it, train offline from the cache, export the checkpoint in the Hub layout, and evaluate
//! it again through an `hf://` address.

mod common;
#[path = "../../snn-data/tests/support/hub_server.rs"]
mod hub_server;

use common::{cli_env, stderr};
use hub_server::{image_parquet, png, HubServer};
use snn_data::mnist::{builtin_subset, Split};

fn serve_mnist(server: &HubServer, train: usize, test: usize) {
    for (split, n, stem) in [(Split::Train, train, "train"), (Split::Test, test, "test")] {
        let data = builtin_subset(split).unwrap();
        let rows: Vec<_> = (0..n).map(|i| (png(data.image(i), [1, 28, 28]), i64::from(data.labels()[i]))).collect();
        server.serve(
            "datasets/ylecun/mnist",
            &format!("mnist/{stem}-00000-of-00001.parquet"),
            image_parquet("image", &rows),
        );
    }
}

fn json(stdout: &[u8]) -> serde_json::Value {
    serde_json::from_slice(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(stdout)))
}

#[test]
fn fetch_verify_train_offline_export_and_evaluate_from_the_hub() {
    let server = HubServer::start();
    serve_mnist(&server, 96, 40);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let cache = cache.to_str().unwrap();
    let online = [("HF_ENDPOINT", server.endpoint.as_str())];
    let offline = [("HF_HUB_OFFLINE", "1")];

    let o = cli_env(&["data", "fetch", "mnist", "--cache-dir", cache], &online);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cli_env(&["data", "verify", "mnist", "--cache-dir", cache], &offline);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("136 images, all checksums match"));

    // Offline training reads the cache: 96 training images, not the 6,000 of the built-in subset.
    let out = dir.path().join("run");
    let o = cli_env(
        &[
            "train",
            "--dataset",
            "mnist",
            "--cache-dir",
            cache,
            "--timesteps",
            "4",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ],
        &offline,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let summary = json(&o.stdout);
    assert_eq!(summary["train_images"], 96);
    let accuracy = summary["test_accuracy"].as_f64().unwrap();

    let layout = dir.path().join("export");
    let best = out.join("best.safetensors");
    let o = cli_env(&["export", "--checkpoint", best.to_str().unwrap(), "--hub-layout", layout.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let card = std::fs::read_to_string(layout.join("README.md")).unwrap();
    for needle in ["# lenet spiking network (mnist)", "| cnn1 | conv + LIF | 1→20 5×5 stride 1 |", "517500 weights"]
    {
        assert!(card.contains(needle), "model card lacks '{needle}':\n{card}");
    }
    assert!(card.contains(&format!("Test accuracy **{:.2} %**", 100.0 * accuracy)), "{card}");
    assert!(card.contains("| fc0 |") && card.contains("spikes per neuron"), "{card}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(layout.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["name"], "lenet");
    let exported = std::fs::read(layout.join("model.safetensors")).unwrap();
    assert_eq!(exported, std::fs::read(&best).unwrap());

    // Publish the exported file and evaluate it through its hf:// address: the same accuracy.
    server.serve("someone/lenet-demo", "model.safetensors", exported);
    let o = cli_env(
        &[
            "eval",
            "--checkpoint",
            "hf://someone/lenet-demo/model.safetensors",
            "--dataset",
            "mnist",
            "--cache-dir",
            cache,
            "--json",
        ],
        &online,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o.stdout)["accuracy"].as_f64().unwrap(), accuracy);
}

#[test]
fn hub_failures_are_reported_clearly() {
    let server = HubServer::start();
    let rows = vec![(png(&[0u8; 784], [1, 28, 28]), 1i64)];
    let wrong = snn_data::sha256_hex(b"tampered");
    server.serve_with_etag(
        "datasets/ylecun/mnist",
        "mnist/train-00000-of-00001.parquet",
        image_parquet("image", &rows),
        &wrong,
    );
    server.serve("datasets/ylecun/mnist", "mnist/test-00000-of-00001.parquet", image_parquet("image", &rows));
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().to_str().unwrap();
    let o = cli_env(&["data", "fetch", "mnist", "--cache-dir", cache], &[("HF_ENDPOINT", server.endpoint.as_str())]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("checksum mismatch"), "{}", stderr(&o));

    let offline = [("HF_HUB_OFFLINE", "1")];
    let o = cli_env(&["train", "--dataset", "cifar10", "--cache-dir", cache], &offline);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("snn-cli data fetch cifar10"), "{}", stderr(&o));
    let o =
        cli_env(&["eval", "--checkpoint", "hf://someone/missing/model.safetensors", "--cache-dir", cache], &offline);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("someone/missing/model.safetensors"), "{}", stderr(&o));
    let o = cli_env(&["data", "fetch", "nmnist", "--cache-dir", cache], &offline);
    assert!(!o.status.success() && stderr(&o).contains("no Hub source"), "{}", stderr(&o));
}
