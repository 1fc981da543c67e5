//! A training process killed (SIGKILL at a random moment, an abort at a chosen batch or in the middle of
//! writing its state, Ctrl-C) and resumed ends with exactly the tensors and metrics of a run that was never
//! interrupted; identical runs give byte-identical checkpoints; a resumed run keeps its element type.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

mod common;
use common::{cli, stderr};

const RUN: [&str; 12] = [
    "train",
    "--train-limit",
    "96",
    "--test-limit",
    "16",
    "--timesteps",
    "4",
    "--batch-size",
    "16",
    "--epochs",
    "2",
    "--json",
];

fn tensors(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(name, view)| (name, view.data().to_vec())).collect()
}

fn run_to_end(out: &Path) {
    let mut args = RUN.to_vec();
    args.extend(["--checkpoint-every", "1", "--out", out.to_str().unwrap()]);
    let o = cli(&args);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn killed_and_resumed_run_matches_the_uninterrupted_one_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
    run_to_end(&a);
    run_to_end(&c);
    assert_eq!(tensors(&a.join("last.safetensors")), tensors(&c.join("last.safetensors")), "identical runs differ");
    for file in ["last.safetensors", "best.safetensors"] {
        let bytes = |d: &Path| std::fs::read(d.join(file)).unwrap();
        assert!(bytes(&a) == bytes(&c), "{file}: identical runs wrote different bytes");
    }

    // Start the same run, wait for its first saved state, then kill it after a random further delay.
    let mut args = RUN.to_vec();
    args.extend(["--checkpoint-every", "1", "--out", b.to_str().unwrap()]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_snn-cli")).args(&args).spawn().unwrap();
    let started = Instant::now();
    while !b.join("state.safetensors").exists() && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().subsec_nanos();
    std::thread::sleep(Duration::from_millis(u64::from(nanos % 600)));
    let finished_before_kill = child.try_wait().unwrap().is_some();
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    eprintln!("killed after {:?} (finished before the kill: {finished_before_kill})", started.elapsed());

    let o = cli(&["train", "--resume", b.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(tensors(&a.join("last.safetensors")), tensors(&b.join("last.safetensors")), "resumed run differs");
    let metrics = |d: &Path| std::fs::read_to_string(d.join("metrics.jsonl")).unwrap();
    let accuracies = |m: String| -> Vec<f64> {
        m.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["test_accuracy"].as_f64().unwrap())
            .collect()
    };
    assert_eq!(accuracies(metrics(&a)), accuracies(metrics(&b)));

    // Resuming a finished run changes nothing; a folder without a run is an error.
    let o = cli(&["train", "--resume", a.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(tensors(&a.join("last.safetensors")), tensors(&c.join("last.safetensors")));
    let o = cli(&["train", "--resume", dir.path().join("none").to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("no run to resume"), "{}", stderr(&o));
}

#[test]
fn ctrl_c_saves_the_state_and_the_run_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    // 40 epochs of 2 batches: far more than can run between the first saved state and the signal.
    let args = |out: &Path| -> Vec<String> {
        let run = ["train", "--train-limit", "32", "--test-limit", "8", "--timesteps", "4", "--batch-size", "16"];
        let mut v: Vec<String> = run.iter().map(|s| s.to_string()).collect();
        v.extend(["--epochs", "40", "--checkpoint-every", "1", "--json", "--out"].map(String::from));
        v.push(out.to_str().unwrap().to_string());
        v
    };
    let o = Command::new(env!("CARGO_BIN_EXE_snn-cli")).args(args(&a)).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let child = Command::new(env!("CARGO_BIN_EXE_snn-cli"))
        .args(args(&b))
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !b.join("state.safetensors").exists() && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "the run must stop at the interrupt: {err}");
    assert!(err.contains("interrupted at epoch") && err.contains("--resume"), "{err}");
    let o = cli(&["train", "--resume", b.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for file in ["last.safetensors", "best.safetensors", "state.safetensors"] {
        assert_eq!(tensors(&a.join(file)), tensors(&b.join(file)), "{file}");
    }
    assert_eq!(metric_lines(&a), metric_lines(&b));
}

/// Every metrics line without its wall-time fields.
fn metric_lines(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let obj = v.as_object_mut().unwrap();
            for timing in ["seconds", "images_per_sec"] {
                assert!(obj.remove(timing).is_some(), "metrics line without '{timing}'");
            }
            v
        })
        .collect()
}

/// A small CIFAR-10 image tree from the official test images kept as lossless PNGs (16 for training, 4 for
/// testing), or `None` when the shared data folder is absent.
fn cifar_tree(root: &Path) -> Option<()> {
    let pngs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/golden-png");
    if !pngs.is_dir() {
        eprintln!("SKIPPED: real CIFAR-10 images not found at {}", pngs.display());
        return None;
    }
    const CLASSES: [&str; 10] =
        ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
    for i in 0..20 {
        let name = std::fs::read_dir(&pngs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with(&format!("cifar10_{i:02}_")))
            .unwrap();
        let label: usize = name.trim_end_matches(".png").rsplit('_').next().unwrap().parse().unwrap();
        let split = if i < 16 { "train" } else { "test" };
        let dst = root.join(split).join(CLASSES[label]);
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::copy(pngs.join(&name), dst.join(format!("{i:02}.png"))).unwrap();
    }
    Some(())
}

/// A small VGG-style network for 32×32 colour images, with dropout on every spiking layer.
const SMALL_VGG: &str = r#"{
  "name": "small-vgg", "family": "vgg", "input_shape": [3, 32, 32], "input_signed": true, "dropout_p": 0.2,
  "input_mean": [0.4914, 0.4822, 0.4465], "input_std": [0.557, 0.549, 0.5534],
  "layers": [
    {"kind": "conv", "name": "c1", "input": "input", "in_channels": 3, "out_channels": 4, "kernel": 3, "padding": 1,
     "stride": 2, "dropout": true},
    {"kind": "pool", "name": "p1", "input": "c1"},
    {"kind": "conv", "name": "c2", "input": "p1", "in_channels": 4, "out_channels": 6, "kernel": 3, "padding": 1,
     "dropout": true},
    {"kind": "pool", "name": "p2", "input": "c2"},
    {"kind": "fc", "name": "f1", "input": "p2", "in_features": 96, "out_features": 16, "dropout": true},
    {"kind": "readout", "name": "out", "input": "f1", "in_features": 16, "out_features": 10}
  ]
}"#;

/// Aborts at a chosen batch and in the middle of a state write, on a run with momentum, dropout, crop and
/// flip augmentation in f64: the resumed runs end with every tensor (weights, momentum, activity tallies)
/// and every metrics line of the uninterrupted run, the state written before the crash survives it, and the
/// resumed run keeps f64 without being told (a conflicting --dtype is refused).
#[test]
fn aborted_runs_with_every_random_stream_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cifar");
    if cifar_tree(&data).is_none() {
        return;
    }
    let spec = dir.path().join("small-vgg.json");
    std::fs::write(&spec, SMALL_VGG).unwrap();
    let run = |out: &Path, crash: Option<&str>| {
        let args = [
            "train",
            "--model-config",
            spec.to_str().unwrap(),
            "--dataset",
            "cifar10",
            "--data-dir",
            data.to_str().unwrap(),
            "--timesteps",
            "5",
            "--batch-size",
            "4",
            "--epochs",
            "2",
            "--momentum",
            "0.9",
            "--lr",
            "0.01",
            "--dtype",
            "f64",
            "--checkpoint-every",
            "2",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ];
        let env: Vec<(&str, &str)> = crash.map(|c| vec![("SNN_CRASH_AT", c)]).unwrap_or_default();
        common::cli_env(&args, &env)
    };
    let full = dir.path().join("full");
    let o = run(&full, None);
    assert!(o.status.success(), "{}", stderr(&o));
    let recipe = std::fs::read_to_string(full.join("recipe.json")).unwrap();
    assert!(recipe.contains("\"augment\": true") && recipe.contains("\"momentum\": 0.9"), "{recipe}");
    let dtypes = |d: &Path| -> Vec<String> {
        let bytes = std::fs::read(d.join("last.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensors().into_iter().map(|(_, v)| format!("{:?}", v.dtype())).collect()
    };
    assert!(dtypes(&full).iter().all(|d| d == "F64"), "{:?}", dtypes(&full));
    let state = tensors(&full.join("state.safetensors"));
    assert!(state.keys().any(|k| k.starts_with("momentum.")), "the state keeps the momentum buffers");

    // Four batches per epoch, the state saved after batch 2 and after each epoch. batch:3 aborts after the
    // third batch (the state was last saved after the second); state-write:3 aborts halfway through the
    // state write after batch 2 of epoch 2 (the state written after epoch 1 must survive).
    for (name, crash, saved_at) in [("batch", "batch:3", (1, 2)), ("write", "state-write:3", (2, 0))] {
        let out = dir.path().join(name);
        let o = run(&out, Some(crash));
        assert!(!o.status.success(), "{name}: the run must abort");
        assert_eq!(o.status.code(), None, "{name}: killed by a signal, not an exit ({})", stderr(&o));
        let run_state = snn_models::load_checkpoint(&out.join("state.safetensors"), &candle_core::Device::Cpu)
            .unwrap_or_else(|e| panic!("{name}: the last good state must survive: {e}"));
        let st: serde_json::Value = serde_json::from_str(&run_state.metadata["run_state"]).unwrap();
        assert_eq!((st["epoch"].as_u64(), st["batches_done"].as_u64()), (Some(saved_at.0), Some(saved_at.1)), "{name}");
        if name == "write" {
            let leftovers = std::fs::read_dir(&out)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"));
            assert_eq!(leftovers.count(), 1, "the half-written state is a separate temporary file");
        }
        let o = cli(&["train", "--resume", out.to_str().unwrap(), "--dtype", "f32"]);
        let err = stderr(&o);
        assert!(!o.status.success() && err.contains("--dtype f64"), "{name}: a conflicting dtype is refused: {err}");
        let o = cli(&["train", "--resume", out.to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        for file in ["last.safetensors", "best.safetensors", "state.safetensors"] {
            assert_eq!(tensors(&full.join(file)), tensors(&out.join(file)), "{name}: {file}");
        }
        assert_eq!(metric_lines(&full), metric_lines(&out), "{name}: metrics");
        assert!(dtypes(&out).iter().all(|d| d == "F64"), "{name}: the resumed run must stay in f64");
    }
}
