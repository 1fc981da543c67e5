//! `cargo xtask reproduce` end to end on a small real subset (the built-in MNIST digits), with the debug
//! `snn-cli` binary that the workspace's tests build; then an interrupted pipeline resumes.

use std::path::PathBuf;
use std::process::Command;

fn snn_cli() -> Option<PathBuf> {
    let xtask = PathBuf::from(env!("CARGO_BIN_EXE_xtask"));
    let cli = xtask.with_file_name(format!("snn-cli{}", std::env::consts::EXE_SUFFIX));
    if cli.is_file() {
        Some(cli)
    } else {
        eprintln!("SKIPPED: {} not built (run the whole workspace's tests)", cli.display());
        None
    }
}

#[test]
fn quick_mnist_reproduction_writes_a_report_and_resumes() {
    let Some(cli) = snn_cli() else { return };
    let out = tempfile::tempdir().unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["reproduce", "mnist-lenet", "--quick", "--train-limit", "96", "--test-limit", "48", "--out"])
            .arg(out.path())
            .arg("--cli")
            .arg(&cli)
            .env("HF_HOME", out.path().join("no-hub-cache"))
            .env_remove("HF_ENDPOINT")
            // No network in tests: the Hub fetch fails at once and the built-in subset is used.
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    let o = run();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("eval.json")).unwrap()).unwrap();
    assert_eq!(eval["total"], 48);
    let measured =
        format!("| this run, best checkpoint | {:.2} | 48 | 20 |", 100.0 * eval["accuracy"].as_f64().unwrap());
    for needle in
        ["| paper (spike-based BP) | 99.59 |", &measured, "| fc0 |", "cargo xtask reproduce mnist-lenet --quick"]
    {
        assert!(report.contains(needle), "report lacks '{needle}':\n{report}");
    }
    for plot in ["raster.png", "firing_rates.png", "accuracy_vs_timesteps.png", "ac_vs_mac.png"] {
        assert!(out.path().join("plots").join(plot).is_file(), "{plot}");
    }

    // Interrupted after training: the rerun keeps the trained checkpoint and redoes only the missing steps.
    let best = out.path().join("train/best.safetensors");
    let trained = std::fs::read(&best).unwrap();
    std::fs::remove_file(out.path().join("stats.json")).unwrap();
    std::fs::remove_file(out.path().join("report.md")).unwrap();
    let o = run();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("snn-cli train"), "training ran again:\n{stderr}");
    assert!(stderr.contains("snn-cli stats"), "{stderr}");
    assert_eq!(std::fs::read(&best).unwrap(), trained);
    assert!(std::fs::read_to_string(out.path().join("report.md")).unwrap().contains("(done earlier;"));

    // Unknown experiments are named errors.
    let o = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["reproduce", "imagenet-vgg16", "--cli"])
        .arg(&cli)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("mnist-lenet"));
}
