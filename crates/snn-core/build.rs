//! With the `cuda` feature, compiles the neuron-window kernels (`src/cuda/neuron.cu`) to PTX with `nvcc`.
//!
//! The PTX targets a virtual architecture, so the driver compiles it for whatever GPU runs it: by default
//! `compute_75` (the oldest that CUDA 13 still builds for), or `compute_<CAP>` with `CUDA_COMPUTE_CAP=<CAP>`
//! (for example `80`). `NVCC` names the compiler when it is not the `nvcc` on the `PATH`.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = "src/cuda/neuron.cu";

fn main() {
    println!("cargo::rerun-if-changed={SOURCE}");
    println!("cargo::rerun-if-env-changed=NVCC");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR for build scripts"));
    let ptx = out_dir.join("neuron.ptx");
    let nvcc = env::var("NVCC").unwrap_or_else(|_| "nvcc".to_string());
    let arch = match env::var("CUDA_COMPUTE_CAP") {
        Ok(cap) => format!("compute_{}", cap.trim().replace('.', "")),
        Err(_) => "compute_75".to_string(),
    };
    // No fused multiply-add: the device kernels round exactly like the CPU kernels.
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "--fmad=false", &format!("-arch={arch}"), "-o"])
        .arg(&ptx)
        .arg(SOURCE)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("`{nvcc}` failed on {SOURCE} ({s})"),
        Err(e) => panic!(
            "cannot run `{nvcc}` ({e}): the `cuda` feature needs the CUDA toolkit's nvcc on the PATH (or NVCC=/path/to/nvcc)"
        ),
    }
}
