//! `cargo xtask golden` passes on the shipped fixtures and fails on a doctored case.

use std::path::Path;
use std::process::Command;

#[test]
fn golden_command_passes_on_fixtures_and_fails_on_a_doctored_case() {
    let bin = env!("CARGO_BIN_EXE_xtask");
    let out = Command::new(bin).arg("golden").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("lenet_tiny") && stdout.contains("f32") && stdout.contains("ok"), "{stdout}");

    // The VGG- and ResNet-family cases (dropout masks, both shortcut kinds) pass too.
    let families = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden-families");
    let out = Command::new(bin).arg("golden").arg(&families).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("vgg_masked") && stdout.contains("resnet_masked"), "{stdout}");

    // Same case with a wrong loss value must fail with a non-zero exit.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixtures.join("lenet_tiny.json"), dir.path().join("lenet_tiny.json")).unwrap();
    let mut t =
        candle_core::safetensors::load(fixtures.join("lenet_tiny.safetensors"), &candle_core::Device::Cpu).unwrap();
    let loss = (t["loss"].clone() + 0.01).unwrap();
    t.insert("loss".into(), loss);
    candle_core::safetensors::save(&t, dir.path().join("lenet_tiny.safetensors")).unwrap();
    let out = Command::new(bin).arg("golden").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL"));

    // An empty folder is a usage error.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(bin).arg("golden").arg(empty.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
