//! The CUDA kernels of `src/cuda/neuron.cu` checked without a GPU: the file is compiled as plain C++ for the
//! host (one thread, one block: the kernels' neuron loop then visits every neuron in turn) and its results
//! are compared with the CPU kernels on the same windows. This checks the device code's arithmetic and
//! indexing on every build, also where no GPU or `nvcc` exists; skipped when no C++ compiler is found.

use std::path::{Path, PathBuf};
use std::process::Command;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use snn_core::kernels::{readout_forward, spike_backward, spike_forward, Real};
use snn_core::Neuron;

/// Host stand-ins for the CUDA qualifiers and thread indices, then the kernel source itself, then a `main`
/// that runs one kernel on binary files: `harness KERNEL f32|f64 N STEPS A B FLAG IN1 [IN2] OUT`.
const HARNESS: &str = r#"
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
struct HostDim { unsigned x, y, z; };
static const HostDim blockIdx{0, 0, 0}, threadIdx{0, 0, 0}, blockDim{1, 1, 1}, gridDim{1, 1, 1};
#define __global__
#define __device__
#define __forceinline__ inline
#include NEURON_CU

template <typename F> static std::vector<F> load(const char* path, size_t count) {
    std::vector<F> v(count);
    FILE* f = std::fopen(path, "rb");
    if (!f || std::fread(v.data(), sizeof(F), count, f) != count) { std::exit(3); }
    std::fclose(f);
    return v;
}

template <typename F> static void save(const char* path, const std::vector<F>& v) {
    FILE* f = std::fopen(path, "wb");
    if (!f || std::fwrite(v.data(), sizeof(F), v.size(), f) != v.size()) { std::exit(4); }
    std::fclose(f);
}

#define RUN(F, SUFFIX)                                                                                     \
    if (kernel == "spike_forward") {                                                                       \
        auto in = load<F>(argv[8], n * steps);                                                             \
        std::vector<F> out(n * steps);                                                                     \
        spike_forward_##SUFFIX(in.data(), out.data(), n, steps, F(a), F(b));                               \
        save(argv[9], out);                                                                                \
    } else if (kernel == "spike_backward") {                                                               \
        auto s = load<F>(argv[8], n * steps);                                                              \
        auto g = load<F>(argv[9], n * steps);                                                              \
        std::vector<F> out(n * steps);                                                                     \
        spike_backward_##SUFFIX(s.data(), g.data(), out.data(), n, steps, F(a), F(b), flag);               \
        save(argv[10], out);                                                                               \
    } else if (kernel == "readout_forward") {                                                              \
        auto in = load<F>(argv[8], n * steps);                                                             \
        std::vector<F> out(n);                                                                             \
        readout_forward_##SUFFIX(in.data(), out.data(), n, steps, F(a), F(b));                             \
        save(argv[9], out);                                                                                \
    } else {                                                                                               \
        return 2;                                                                                          \
    }

int main(int argc, char** argv) {
    if (argc < 10) { return 1; }
    const std::string kernel = argv[1], dtype = argv[2];
    const size_t n = std::strtoull(argv[3], nullptr, 10), steps = std::strtoull(argv[4], nullptr, 10);
    const double a = std::strtod(argv[5], nullptr), b = std::strtod(argv[6], nullptr);
    const int flag = std::atoi(argv[7]);
    if (dtype == "f32") { RUN(float, f32) } else { RUN(double, f64) }
    return 0;
}
"#;

/// The compiled harness, or `None` (with a message) where no C++ compiler is available.
fn build_harness(dir: &Path) -> Option<PathBuf> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    if Command::new(&cxx).arg("--version").output().map_or(true, |o| !o.status.success()) {
        eprintln!("skipping: no C++ compiler (`{cxx}`) to build the CUDA kernels for the host");
        return None;
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cuda/neuron.cu");
    let cpp = dir.join("harness.cpp");
    std::fs::write(&cpp, HARNESS).unwrap();
    let exe = dir.join("harness");
    // No contraction of a*b+c into FMA, as the device build (--fmad=false) and the Rust kernels.
    let out = Command::new(&cxx)
        .args(["-std=c++17", "-O2", "-ffp-contract=off"])
        .arg(format!("-DNEURON_CU=\"{}\"", source.display()))
        .arg(&cpp)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the CUDA source does not compile as host C++:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(exe)
}

/// Host-side element types: written and read as raw little-endian bytes.
trait Raw: Real + Copy {
    const NAME: &'static str;
    fn to_bytes(v: &[Self]) -> Vec<u8>;
    fn from_bytes(b: &[u8]) -> Vec<Self>;
}

impl Raw for f32 {
    const NAME: &'static str = "f32";
    fn to_bytes(v: &[Self]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn from_bytes(b: &[u8]) -> Vec<Self> {
        b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }
}

impl Raw for f64 {
    const NAME: &'static str = "f64";
    fn to_bytes(v: &[Self]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn from_bytes(b: &[u8]) -> Vec<Self> {
        b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
    }
}

/// Runs one kernel of the harness on the given operands and returns its output.
#[allow(clippy::too_many_arguments)]
fn run<F: Raw>(
    exe: &Path,
    dir: &Path,
    kernel: &str,
    n: usize,
    steps: usize,
    a: F,
    b: F,
    flag: i32,
    inputs: &[&[F]],
) -> Vec<F> {
    let mut cmd = Command::new(exe);
    let to_f64 = |x: F| x.to_f64().unwrap();
    cmd.args([kernel, F::NAME, &n.to_string(), &steps.to_string()]);
    // `{:?}` prints the shortest text that reads back as the same f64, so the harness sees the same values.
    cmd.args([format!("{:?}", to_f64(a)), format!("{:?}", to_f64(b)), flag.to_string()]);
    for (i, input) in inputs.iter().enumerate() {
        let path = dir.join(format!("in{i}.bin"));
        std::fs::write(&path, F::to_bytes(input)).unwrap();
        cmd.arg(path);
    }
    let out_path = dir.join("out.bin");
    cmd.arg(&out_path);
    let status = cmd.status().unwrap();
    assert!(status.success(), "harness {kernel} {} failed: {status}", F::NAME);
    F::from_bytes(&std::fs::read(out_path).unwrap())
}

/// Every kernel of the CUDA source against the CPU kernel, on windows with silent, sparse and busy neurons.
fn compare_all<F: Raw>(exe: &Path, dir: &Path) {
    let (n, steps) = (41, 27);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    // Neuron i gets a drive that grows with i: the first ones never fire, the last ones fire often.
    // Neuron 1 gets 0.25 at every step, so the pooling neuron's membrane lands exactly on θ = 0.75 (no spike:
    // the comparison is strict) before it crosses it.
    let mut drive = |k: usize| match k % n {
        1 => 0.25,
        i => rng.gen_range(-0.6..1.0) * i as f64 / n as f64,
    };
    let currents: Vec<F> = (0..n * steps).map(|k| F::lit(drive(k))).collect();
    let grads: Vec<F> = (0..n * steps).map(|_| F::lit(rng.gen_range(-1.0..1.0))).collect();
    for neuron in [Neuron::PAPER_LIF, Neuron::PAPER_POOL_IF, Neuron::lif(0.5, 0.9).unwrap()] {
        let (theta, leak) = (F::lit(neuron.threshold), F::lit(neuron.leak));
        let mut spikes = vec![F::zero(); n * steps];
        spike_forward(&currents, n, theta, leak, &mut spikes);
        let device = run(exe, dir, "spike_forward", n, steps, theta, leak, 0, &[&currents]);
        assert_eq!(device, spikes, "spike_forward {} {neuron:?}", F::NAME);
        let fired = spikes.iter().filter(|&&s| s == F::one()).count();
        assert!(fired > n && fired < n * steps / 2, "the window should mix silent and firing neurons ({fired})");

        let rule = neuron.backward_rule::<F>();
        let mut grad_currents = vec![F::zero(); n * steps];
        spike_backward(&spikes, &grads, n, rule, &mut grad_currents);
        let flag = i32::from(rule.leak_correction.is_some());
        let leak_arg = rule.leak_correction.unwrap_or(F::one());
        let device = run(exe, dir, "spike_backward", n, steps, rule.scale, leak_arg, flag, &[&spikes, &grads]);
        // Same operations in the same order; only the libm logarithm may round differently, so allow 4 ulp.
        for (k, (&d, &c)) in device.iter().zip(&grad_currents).enumerate() {
            let tol = F::epsilon() * F::lit(4.0) * c.abs();
            assert!((d - c).abs() <= tol, "spike_backward {} {neuron:?} at {k}: device {d:?}, cpu {c:?}", F::NAME);
        }
        assert!(grad_currents.iter().any(|g| !g.is_zero()), "the gradient should reach some inputs");

        let mut readout = vec![F::zero(); n];
        readout_forward(&currents, n, theta, leak, &mut readout);
        let device = run(exe, dir, "readout_forward", n, steps, theta, leak, 0, &[&currents]);
        assert_eq!(device, readout, "readout_forward {} {neuron:?}", F::NAME);
    }
}

#[test]
fn cuda_kernels_compute_what_the_cpu_kernels_compute() {
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = build_harness(dir.path()) else { return };
    compare_all::<f64>(&exe, dir.path());
    compare_all::<f32>(&exe, dir.path());
}
