//! `snn-cli stats` end to end: table, JSON, CSV, plots, sweep, and bad input.

use std::path::{Path, PathBuf};

mod common;
use common::{cli, stderr};

/// Trains a tiny LeNet on the built-in subset and returns its checkpoint.
fn checkpoint(dir: &Path) -> PathBuf {
    let out = dir.join("run");
    let o = cli(&[
        "train",
        "--train-limit",
        "64",
        "--test-limit",
        "16",
        "--timesteps",
        "6",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    out.join("best.safetensors")
}

fn png_size(path: &Path) -> (u32, u32) {
    let reader = png::Decoder::new(std::fs::File::open(path).unwrap()).read_info().unwrap();
    (reader.info().width, reader.info().height)
}

#[test]
fn stats_reports_table_json_csv_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(dir.path());
    let ck = ckpt.to_str().unwrap();

    let o = cli(&["stats", "--checkpoint", ck, "--limit", "16"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    for needle in ["cnn1", "pool2", "fc1", "SNN AC", "ANN MAC", "0.9 pJ per AC", "4.6 pJ per MAC", "assumptions"] {
        assert!(table.contains(needle), "table lacks {needle}:\n{table}");
    }

    let o = cli(&["stats", "--checkpoint", ck, "--limit", "16", "--json", "--timesteps-sweep", "2,6", "--e-ac", "1.5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["timesteps"], 6, "T comes from the checkpoint");
    assert_eq!(v["images"], 16);
    assert_eq!(v["layers"].as_array().unwrap().len(), 6);
    assert_eq!(v["energy"]["ac_pj"], 1.5);
    let snn_ac = v["totals"]["snn_ac"].as_f64().unwrap();
    assert!((v["totals"]["snn_energy_pj"].as_f64().unwrap() - 1.5 * snn_ac).abs() < 1e-6 * snn_ac);
    let sweep = v["sweep"].as_array().unwrap();
    assert_eq!(sweep.len(), 2);
    // More steps, more spikes, more synaptic operations.
    assert!(sweep[1]["snn_ac"].as_f64().unwrap() > sweep[0]["snn_ac"].as_f64().unwrap());
    assert_eq!(sweep[1]["snn_ac"].as_f64().unwrap(), snn_ac);

    let o = cli(&["stats", "--checkpoint", ck, "--limit", "16", "--csv"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = String::from_utf8_lossy(&o.stdout);
    let rows: Vec<&str> = csv.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(rows[0].starts_with("layer,kind,neurons"));
    assert_eq!(rows.len(), 1 + 6 + 1, "{csv}");
    assert!(rows.iter().skip(1).all(|r| r.split(',').count() == 10));

    let plots = dir.path().join("plots");
    let o = cli(&[
        "stats",
        "--checkpoint",
        ck,
        "--limit",
        "16",
        "--plot",
        plots.to_str().unwrap(),
        "--raster-layer",
        "fc0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for name in ["raster.png", "firing_rates.png", "accuracy_vs_timesteps.png", "ac_vs_mac.png"] {
        let (w, h) = png_size(&plots.join(name));
        assert!(w >= 800 && h >= 500, "{name}: {w}x{h}");
    }
}

#[test]
fn stats_rejects_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let o = cli(&["stats", "--checkpoint", dir.path().join("missing.safetensors").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("missing.safetensors"), "{}", stderr(&o));

    let ckpt = checkpoint(dir.path());
    let ck = ckpt.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--timesteps", "0"], "at least 1"),
        (&["--timesteps-sweep", "4,0"], "at least 1"),
        (&["--e-ac", "-0.5"], "AC energy must be a finite, non-negative"),
        (&["--e-mac", "nan"], "MAC energy must be a finite, non-negative"),
        (&["--raster-layer", "nope"], "'nope' is not a spiking layer"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["stats", "--checkpoint", ck, "--limit", "8"];
        args.extend_from_slice(extra);
        let o = cli(&args);
        assert!(!o.status.success(), "{extra:?} was accepted");
        assert!(stderr(&o).contains(needle), "{extra:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"));
    }

    // Data that does not fit the model: 8x8 images for a 28x28 network.
    let data = dir.path().join("small");
    std::fs::create_dir_all(&data).unwrap();
    let mut img = vec![0u8, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 8, 0, 0, 0, 8];
    img.extend([0u8; 128]);
    std::fs::write(data.join("t10k-images-idx3-ubyte"), img).unwrap();
    std::fs::write(data.join("t10k-labels-idx1-ubyte"), [0u8, 0, 8, 1, 0, 0, 0, 2, 3, 4]).unwrap();
    let o = cli(&["stats", "--checkpoint", ck, "--data-dir", data.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("[1, 8, 8]") && stderr(&o).contains("[1, 28, 28]"), "{}", stderr(&o));
}

/// One epoch record as `train` writes it to `metrics.jsonl`.
fn epoch_line(epoch: usize, loss: f64, train: f64, test: f64, fc0: f64) -> String {
    let rate = |layer: &str, spikes: f64| serde_json::json!({"layer": layer, "spikes_per_neuron": spikes, "firing_rate": spikes / 20.0, "dead_fraction": 0.0});
    serde_json::json!({
        "epoch": epoch, "loss": loss, "train_accuracy": train, "test_accuracy": test, "lr": 0.0085,
        "images_per_sec": 100.0, "seconds": 10.0, "skipped_batches": 0,
        "train_spikes": [rate("cnn1", 1.2), rate("fc0", fc0)],
        "test_spikes": [rate("cnn1", 1.1), rate("fc0", fc0)],
    })
    .to_string()
}

#[test]
fn plot_draws_every_learning_curve_and_names_a_corrupt_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let lines = [
        epoch_line(1, 0.3, 0.90, 0.97, 0.4),
        epoch_line(2, 0.1, 0.97, 0.985, 0.3),
        epoch_line(3, 0.08, 0.98, 0.99, 0.25),
    ];
    std::fs::write(run.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
    let o = cli(&["plot", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The series colours: the first series blue, the second orange (train, test; cnn1, fc0).
    let has = |img: &image::RgbImage, rgb: [u8; 3]| img.pixels().filter(|p| p.0 == rgb).count() > 50;
    for (name, series) in [("loss.png", 1), ("accuracy.png", 2), ("spikes.png", 2)] {
        let path = run.join("plots").join(name);
        assert_eq!(png_size(&path), (900, 600), "{name}");
        let img = image::open(&path).unwrap().to_rgb8();
        assert!(has(&img, [31, 119, 180]), "{name}: first series not drawn");
        assert_eq!(has(&img, [255, 127, 14]), series == 2, "{name}: second series");
    }

    std::fs::write(run.join("metrics.jsonl"), format!("{}\n{{\"epoch\": 2, \"loss\"\n", lines[0])).unwrap();
    let o = cli(&["plot", run.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("line 2"), "{}", stderr(&o));
    let o = cli(&["plot", dir.path().join("none").to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("metrics.jsonl"), "{}", stderr(&o));
}
