//! A training process killed with SIGKILL at a random moment and resumed ends with exactly the weights of a
//! run that was never interrupted; identical runs give identical checkpoints.

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
    run_to_end(&a);
    let mut args = RUN.to_vec();
    args.extend(["--out", b.to_str().unwrap()]);
    let child = Command::new(env!("CARGO_BIN_EXE_snn-cli"))
        .args(&args)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the run to be under way (its resolved recipe is written before training starts).
    let started = Instant::now();
    while !b.join("recipe.json").exists() && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(0) {
        eprintln!("the run finished before the interrupt arrived; nothing to check");
        return;
    }
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted at epoch") && err.contains("--resume"), "{err}");
    assert!(b.join("state.safetensors").exists());
    let o = cli(&["train", "--resume", b.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(tensors(&a.join("last.safetensors")), tensors(&b.join("last.safetensors")));
}
