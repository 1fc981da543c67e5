//! The shipped golden cases (reference training steps from a port of the authors' code) replay within
//! the published tolerances in float64 and float32.

use std::path::Path;

use candle_core::DType;
use snn_train::golden::{find_cases, GoldenCase, TrainingPass};

#[test]
fn shipped_golden_cases_pass_in_f64_and_f32() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden");
    let cases = find_cases(&dir).unwrap();
    assert!(cases.len() >= 2, "expected the shipped cases in {}", dir.display());
    for path in cases {
        let case = GoldenCase::load(&path).unwrap();
        for (dtype, pass) in [DType::F64, DType::F32].into_iter().flat_map(|d| TrainingPass::ALL.map(|p| (d, p))) {
            let report = case.check(dtype, pass).unwrap();
            let failed: Vec<_> = report.checks.iter().filter(|c| !c.passed).collect();
            assert!(failed.is_empty(), "{} {dtype:?} {pass:?}: {failed:#?}", case.name);
            // Output, loss, four weight gradients, three NG tensors and five spike-count tensors.
            assert!(report.checks.len() >= 14, "{}: only {} checks", case.name, report.checks.len());
        }
    }
}

#[test]
fn malformed_cases_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("broken.json");
    std::fs::write(&json, "{\"spec\": {\"input_shape\": [1, 4, 4], \"layers\": []}}").unwrap();
    std::fs::write(dir.path().join("broken.safetensors"), b"not a safetensors file").unwrap();
    let err = GoldenCase::load(&json).unwrap_err().to_string();
    assert!(err.contains("broken.json"), "{err}");
    std::fs::write(&json, "{ not json").unwrap();
    assert!(GoldenCase::load(&json).unwrap_err().to_string().contains("invalid JSON"));
}
