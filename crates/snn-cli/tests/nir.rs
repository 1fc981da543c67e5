//! `snn-cli export --nir` and `snn-cli import` against the field's own Python packages: the exported file
//! read by `nir.read` and run in snnTorch, and a file written by snnTorch imported and run here.
//!
//! Needs the crate feature `nir` (system HDF5) for the commands, and a Python with the packages of
//! `interop/nir/requirements.txt` (`SNN_NIR_PYTHON`, else `python3`) for the checks against snnTorch, which
//! are skipped with a message without it.

mod common;

/// Without the feature the commands exist and say how to get NIR support.
#[cfg(not(feature = "nir"))]
#[test]
fn without_the_nir_feature_the_commands_say_how_to_enable_it() {
    let dir = tempfile::tempdir().unwrap();
    let out =
        common::cli(&["import", "--nir", "model.nir", "--out", dir.path().join("m.safetensors").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(common::stderr(&out).contains("--features nir"), "{}", common::stderr(&out));
}

#[cfg(feature = "nir")]
mod with_hdf5 {
    use super::common;
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use candle_core::{DType, Device, Tensor};
    use common::{cli, stderr};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use serde_json::Value;
    use snn_models::{builtin, load_checkpoint, save_checkpoint, ForwardOptions, Masks, SpikingNetwork};

    fn python() -> Option<PathBuf> {
        let python = PathBuf::from(std::env::var_os("SNN_NIR_PYTHON").unwrap_or_else(|| "python3".into()));
        let ok = Command::new(&python)
            .args(["-c", "import nir, nirtorch, snntorch, torch, h5py"])
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then_some(python)
    }

    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop/nir/nir_check.py")
    }

    /// Input spike trains `[T, B, C, H, W]` of the given density, as the tensor and as the script's JSON.
    fn spike_input(shape: [usize; 5], density: f64, path: &Path) -> Tensor {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let n: usize = shape.iter().product();
        let data: Vec<f64> = (0..n).map(|_| if rng.gen_bool(density) { 1.0 } else { 0.0 }).collect();
        let json = serde_json::json!({ "shape": shape, "data": data });
        std::fs::write(path, json.to_string()).unwrap();
        Tensor::from_vec(data, shape.to_vec(), &Device::Cpu).unwrap()
    }

    /// Our forward pass in f64: spikes per layer (by layer name) and the readout `[B, classes]`.
    fn ours(checkpoint: &Path, x: &Tensor) -> (HashMap<String, f64>, Vec<Vec<f64>>) {
        let net = load_checkpoint(checkpoint, &Device::Cpu).unwrap().into_network(DType::F64, &Device::Cpu).unwrap();
        let out = net.forward(x, &Masks::new(), ForwardOptions::default()).unwrap();
        let counts = out
            .activity
            .iter()
            .map(|a| (a.name.clone(), a.neuron_counts.sum_all().unwrap().to_scalar::<f64>().unwrap()))
            .collect();
        (counts, out.output.to_vec2::<f64>().unwrap())
    }

    fn run_script(python: &Path, args: &[&str]) {
        let out = Command::new(python).arg(script()).args(args).output().unwrap();
        assert!(out.status.success(), "nir_check.py {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }

    /// Spike counts of the script's report by layer (the synaptic node feeding each neuron node).
    fn script_counts(report: &Value) -> HashMap<String, f64> {
        report["spikes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["layer"][0].as_str().unwrap().to_string(), s["count"].as_f64().unwrap()))
            .collect()
    }

    /// Our forward pass on `x` fires exactly as the script's run, layer by layer (every layer firing), and our
    /// readout equals its final membrane divided by θ·T (θ = 1) to 1e-6.
    fn agree_with_script(checkpoint: &Path, x: &Tensor, report: &Value, steps: f64) {
        let (our_counts, our_readout) = ours(checkpoint, x);
        let theirs = script_counts(report);
        assert_eq!(theirs.len(), our_counts.len());
        for (layer, n) in &our_counts {
            eprintln!("{layer}: here {n}, snnTorch {}", theirs[layer]);
            assert_eq!(*n, theirs[layer], "{layer}: spikes here and in snnTorch");
        }
        assert!(our_counts.values().all(|&n| n > 0.0), "every layer should fire: {our_counts:?}");
        let membrane = report["readout_membrane"].as_array().unwrap();
        for (ours_row, theirs_row) in our_readout.iter().zip(membrane) {
            for (y, m) in ours_row.iter().zip(theirs_row.as_array().unwrap()) {
                let m = m.as_f64().unwrap() / steps;
                assert!((y - m).abs() <= 1e-6 * (1.0 + y.abs()), "readout {y} here, {m} in snnTorch");
            }
        }
    }

    #[test]
    fn an_exported_lenet_reads_in_nir_and_runs_in_snntorch_with_our_spikes() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("lenet.safetensors");
        let net =
            SpikingNetwork::new(builtin("lenet").unwrap(), &mut ChaCha8Rng::seed_from_u64(4), DType::F32, &Device::Cpu)
                .unwrap();
        save_checkpoint(&ckpt, &net, &HashMap::new()).unwrap();
        let nir = dir.path().join("lenet.nir");
        // snnTorch's importer assumes a step of 1e-4.
        let out =
            cli(&["export", "--checkpoint", ckpt.to_str().unwrap(), "--nir", nir.to_str().unwrap(), "--dt", "1e-4"]);
        assert!(out.status.success(), "{}", stderr(&out));
        // Our own import of the file gives the checkpoint back.
        let back = dir.path().join("back.safetensors");
        let out = cli(&["import", "--nir", nir.to_str().unwrap(), "--out", back.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let (a, b) = (load_checkpoint(&ckpt, &Device::Cpu).unwrap(), load_checkpoint(&back, &Device::Cpu).unwrap());
        assert_eq!(a.spec, b.spec);
        for (k, t) in &a.weights {
            assert_eq!(
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.weights[k].flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }

        let Some(python) = python() else {
            eprintln!("skipped the snnTorch check: no Python with nir, nirtorch and snntorch (set SNN_NIR_PYTHON; see interop/nir/requirements.txt)");
            return;
        };
        let input = dir.path().join("input.json");
        let x = spike_input([20, 2, 1, 28, 28], 0.3, &input);
        let report_path = dir.path().join("report.json");
        let args = [
            "simulate",
            nir.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--dt",
            "1e-4",
            "--out",
            report_path.to_str().unwrap(),
        ];
        run_script(&python, &args);
        let report: Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
        // What nir.read made of the file: node types, shapes (no batch dimension) and edges.
        let types = &report["nodes"];
        for (node, ty) in [
            ("cnn1", "Conv2d"),
            ("cnn1.lif", "LIF"),
            ("pool1", "AvgPool2d"),
            ("pool1.if", "IF"),
            ("fc0.flatten", "Flatten"),
            ("fc0", "Linear"),
            ("fc1.li", "LI"),
            ("input", "Input"),
            ("output", "Output"),
        ] {
            assert_eq!(types[node], ty, "{node}");
        }
        assert_eq!(report["shapes"]["cnn1.lif"], serde_json::json!([20, 28, 28]));
        assert_eq!(report["shapes"]["pool2.if"], serde_json::json!([50, 7, 7]));
        assert_eq!(report["shapes"]["fc0.flatten"], serde_json::json!([2450]));
        assert_eq!(report["shapes"]["output"], serde_json::json!([10]));
        assert_eq!(report["edges"].as_array().unwrap().len(), 14);
        assert!(report["metadata_keys"].as_array().unwrap().iter().any(|k| k == "snn.spec"));

        // snnTorch's leak is 1 − 1e-4/τ with τ stored in 32 bits (0.98999999776 instead of 0.99): a membrane within
        // ~1e-9 of the threshold could fire on one side and not the other; on this input none does.
        agree_with_script(&ckpt, &x, &report, 20.0);
    }

    /// A residual network (a 1×1 convolution shortcut and an identity-subsampling one into strided
    /// convolutions): nirtorch sums the shortcut into the block's LIF input as this toolkit does.
    #[test]
    fn an_exported_residual_network_runs_in_snntorch_with_our_spikes() {
        let Some(python) = python() else {
            eprintln!("skipped: no Python with nir, nirtorch and snntorch (set SNN_NIR_PYTHON; see interop/nir/requirements.txt)");
            return;
        };
        // The network of the library's own NIR tests (dropout does not act at inference).
        let spec = snn_models::NetworkSpec::from_json(include_str!("../../snn-models/tests/fixtures/tiny-resnet.json"))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let net = SpikingNetwork::new(spec, &mut ChaCha8Rng::seed_from_u64(11), DType::F32, &Device::Cpu).unwrap();
        // Stronger weights so that the deep layers of the small network fire too.
        let weights = net.weights().iter().map(|(n, v)| (n.clone(), (v.as_tensor() * 3.0).unwrap())).collect();
        let net = SpikingNetwork::from_weights(net.spec().clone(), weights, DType::F32, &Device::Cpu).unwrap();
        let ckpt = dir.path().join("resnet.safetensors");
        save_checkpoint(&ckpt, &net, &HashMap::new()).unwrap();
        let nir = dir.path().join("resnet.nir");
        let out =
            cli(&["export", "--checkpoint", ckpt.to_str().unwrap(), "--nir", nir.to_str().unwrap(), "--dt", "1e-4"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let input = dir.path().join("input.json");
        let x = spike_input([12, 2, 2, 9, 9], 0.3, &input);
        let report_path = dir.path().join("report.json");
        let (g, i, r) = (nir.to_str().unwrap(), input.to_str().unwrap(), report_path.to_str().unwrap());
        run_script(&python, &["simulate", g, "--input", i, "--dt", "1e-4", "--out", r]);
        let report: Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
        assert_eq!(report["nodes"]["s2"], "AvgPool2d");
        assert!(report["edges"].as_array().unwrap().contains(&serde_json::json!(["s1", "c3.lif"])));
        agree_with_script(&ckpt, &x, &report, 12.0);
    }

    #[test]
    fn a_network_written_by_snntorch_imports_and_runs_here() {
        let Some(python) = python() else {
            eprintln!("skipped: no Python with nir, nirtorch and snntorch (set SNN_NIR_PYTHON; see interop/nir/requirements.txt)");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("input.json");
        let x = spike_input([10, 2, 1, 14, 14], 0.3, &input);
        let (nir, report_path) = (dir.path().join("snntorch.nir"), dir.path().join("report.json"));
        let args = [
            "snntorch-file",
            nir.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--out",
            report_path.to_str().unwrap(),
        ];
        run_script(&python, &args);
        // The file does not record its step: without --dt the import says so.
        let ckpt = dir.path().join("imported.safetensors");
        let out = cli(&["import", "--nir", nir.to_str().unwrap(), "--out", ckpt.to_str().unwrap()]);
        assert!(!out.status.success() && stderr(&out).contains("dt"), "{}", stderr(&out));
        let out = cli(&["import", "--nir", nir.to_str().unwrap(), "--out", ckpt.to_str().unwrap(), "--dt", "1e-4"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let spec = load_checkpoint(&ckpt, &Device::Cpu).unwrap().spec;
        assert_eq!(spec.pool_threshold, 0.75);
        let report: Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
        // Our readout is the membrane / (θ·T), θ = 1 (the first LIF layer's threshold).
        agree_with_script(&ckpt, &x, &report, 10.0);
    }

    #[test]
    fn bad_nir_files_and_arguments_give_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.nir");
        std::fs::write(&bad, b"\x89HDF\r\n\x1a\n truncated").unwrap();
        let out = cli(&[
            "import",
            "--nir",
            bad.to_str().unwrap(),
            "--out",
            dir.path().join("x.safetensors").to_str().unwrap(),
        ]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("bad.nir"), "{}", stderr(&out));
        assert!(!dir.path().join("x.safetensors").exists());
        let out = cli(&[
            "export",
            "--checkpoint",
            dir.path().join("missing.safetensors").to_str().unwrap(),
            "--nir",
            "out.nir",
        ]);
        assert!(!out.status.success() && stderr(&out).contains("missing.safetensors"), "{}", stderr(&out));
    }
}
