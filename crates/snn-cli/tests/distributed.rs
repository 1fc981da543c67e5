//! Data-parallel training over MPI: two ranks against one process (weights and accuracy), resuming on a
//! different number of ranks, and a rank that dies mid-run ending the whole job within a bounded time.
//!
//! Needs the crate feature `mpi` and Open MPI's `mpirun` on the PATH (skipped with a message without it);
//! the ranks talk over the loopback interface.

#![cfg(feature = "mpi")]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use candle_core::Device;
use common::{cli, cli_env, stderr};
use snn_models::load_checkpoint;

/// A short f64 run on the built-in MNIST subset: 20 steps of 16 images at T = 20.
const RUN: &[&str] = &[
    "train",
    "--dtype",
    "f64",
    "--epochs",
    "1",
    "--train-limit",
    "320",
    "--test-limit",
    "100",
    "--batch-size",
    "16",
    "--timesteps",
    "20",
    "--json",
];

fn mpirun_available() -> bool {
    Command::new("mpirun").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// One rank: its environment (exported with `-x`) and arguments added to the common ones.
type Rank<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);

/// `mpirun` with one `snn-cli` per rank on the loopback interface. Killed after `limit` (the test then fails).
fn mpirun(ranks: &[Rank], args: &[&str], limit: Duration) -> Output {
    let mut cmd = Command::new("mpirun");
    cmd.args([
        "--oversubscribe",
        "--allow-run-as-root",
        "--mca",
        "btl",
        "self,tcp",
        "--mca",
        "btl_tcp_if_include",
        "lo",
    ]);
    for (i, (env, extra)) in ranks.iter().enumerate() {
        if i > 0 {
            cmd.arg(":");
        }
        cmd.args(["-np", "1"]);
        for (k, v) in *env {
            cmd.args(["-x", &format!("{k}={v}")]);
        }
        cmd.arg(env!("CARGO_BIN_EXE_snn-cli")).args(args).args(*extra).args(["--distributed", "mpi"]);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("mpirun starts");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("the MPI job did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two ranks with nothing special.
const TWO: &[Rank] = &[(&[], &[]), (&[], &[])];

fn max_weight_difference(a: &Path, b: &Path) -> f64 {
    let (a, b) = (load_checkpoint(a, &Device::Cpu).unwrap(), load_checkpoint(b, &Device::Cpu).unwrap());
    assert_eq!(a.weights.len(), b.weights.len());
    let mut worst = 0.0f64;
    for (name, t) in &a.weights {
        let x = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let y = b.weights[name].flatten_all().unwrap().to_vec1::<f64>().unwrap();
        worst = x.iter().zip(&y).fold(worst, |w, (p, q)| w.max((p - q).abs()));
    }
    worst
}

fn test_accuracy(dir: &Path) -> f64 {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    last["test_accuracy"].as_f64().unwrap()
}

fn with_out(out: &Path) -> Vec<&str> {
    let mut a = RUN.to_vec();
    a.extend(["--out", out.to_str().unwrap()]);
    a
}

#[test]
fn two_ranks_train_the_same_weights_as_one_process() {
    if !mpirun_available() {
        eprintln!("skipped: no mpirun (install Open MPI: Debian's openmpi-bin and libopenmpi-dev)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let out = cli(&with_out(&one));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = mpirun(TWO, &with_out(&two), Duration::from_secs(300));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let diff = max_weight_difference(&one.join("last.safetensors"), &two.join("last.safetensors"));
    assert!(diff <= 1e-9, "weights differ by {diff} after 20 steps");
    assert_eq!(test_accuracy(&one), test_accuracy(&two));
    assert!(test_accuracy(&one) > 0.2, "the run should learn something");
}

#[test]
fn a_run_resumes_on_another_number_of_ranks() {
    if !mpirun_available() {
        eprintln!("skipped: no mpirun");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (whole, split) = (dir.path().join("whole"), dir.path().join("split"));
    let out = cli(&with_out(&whole));
    assert!(out.status.success(), "{}", stderr(&out));
    // One process crashes after batch 10 (state saved every 5 batches), two ranks finish the run.
    let mut args = with_out(&split);
    args.extend(["--checkpoint-every", "5"]);
    let out = cli_env(&args, &[("SNN_CRASH_AT", "batch:10")]);
    assert!(!out.status.success(), "the injected crash should end the first process");
    let resume = ["train", "--resume", split.to_str().unwrap(), "--json"];
    let out = mpirun(TWO, &resume, Duration::from_secs(300));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let diff = max_weight_difference(&whole.join("last.safetensors"), &split.join("last.safetensors"));
    assert!(diff <= 1e-9, "weights differ by {diff}");
    assert_eq!(test_accuracy(&whole), test_accuracy(&split));
}

#[test]
fn a_rank_that_dies_ends_the_job_with_an_error() {
    if !mpirun_available() {
        eprintln!("skipped: no mpirun");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("run");
    let start = Instant::now();
    // Rank 1 is killed (SIGABRT) after its third batch; rank 0 would wait for it in the next all-reduce.
    let out =
        mpirun(&[(&[], &[]), (&[("SNN_CRASH_AT", "batch:3")], &[])], &with_out(&out_dir), Duration::from_secs(120));
    assert!(!out.status.success(), "the job should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rank 1") || err.contains("signal"), "{err}");
    eprintln!("killed rank: job ended {:.1} s after start", start.elapsed().as_secs_f64());
    // No checkpoint was written: the run never finished an epoch.
    assert!(!out_dir.join("last.safetensors").exists());

    // A rank whose data is corrupt ends the job at once with an error naming the rank and the file.
    let bad = dir.path().join("bad-mnist");
    std::fs::create_dir_all(&bad).unwrap();
    for f in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    {
        std::fs::write(bad.join(f), b"not an IDX file").unwrap();
    }
    let start = Instant::now();
    let bad_args = ["--data-dir", bad.to_str().unwrap()];
    let out = mpirun(&[(&[], &[]), (&[], &bad_args)], &with_out(&dir.path().join("run2")), Duration::from_secs(120));
    assert!(!out.status.success(), "the job should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error on rank 1 of 2") && err.contains("bad-mnist"), "{err}");
    eprintln!("corrupt data on rank 1: job ended {:.1} s after start", start.elapsed().as_secs_f64());
}

#[test]
fn a_non_finite_shard_on_one_rank_stops_or_skips_every_rank_together() {
    if !mpirun_available() {
        eprintln!("skipped: no mpirun");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fault: &[(&str, &str)] = &[("SNN_CRASH_AT", "nonfinite:3")];
    // The paper's policy: the run stops, on every rank, with an error naming the rank whose shard went bad.
    let stopped = dir.path().join("stopped");
    let out = mpirun(&[(&[], &[]), (fault, &[])], &with_out(&stopped), Duration::from_secs(120));
    assert!(!out.status.success(), "the job should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rank(s) [1]") && err.contains("epoch 1, batch 2"), "{err}");
    assert!(!stopped.join("last.safetensors").exists());
    // With non-finite batches skipped, both ranks skip the same batch and end where one process that skips
    // that batch ends.
    let config = dir.path().join("skip.toml");
    std::fs::write(&config, "skip_nonfinite_batches = true\n").unwrap();
    let (alone, split) = (dir.path().join("alone"), dir.path().join("split"));
    let mut args = with_out(&alone);
    args.extend(["--config", config.to_str().unwrap()]);
    let out = cli_env(&args, fault);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut args = with_out(&split);
    args.extend(["--config", config.to_str().unwrap()]);
    let out = mpirun(&[(&[], &[]), (fault, &[])], &args, Duration::from_secs(300));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let skipped = |dir: &Path| -> u64 {
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        last["skipped_batches"].as_u64().unwrap()
    };
    assert_eq!((skipped(&alone), skipped(&split)), (1, 1));
    let diff = max_weight_difference(&alone.join("last.safetensors"), &split.join("last.safetensors"));
    assert!(diff <= 1e-9, "weights differ by {diff}");
}
