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
