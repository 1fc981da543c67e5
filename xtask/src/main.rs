//! `cargo xtask`: project pipelines.
//!
//! * `cargo xtask golden [DIR]`: replays every golden training step in DIR (default `tests/golden`) in
//!   float64 and float32 through the project's model code and fails when any exceeds its tolerance.
//! * `cargo xtask bench`: times a training step and an inference pass (median of repetitions), with the
//!   throughput of a dense matrix product measured in the same run as the baseline; with `--profile`, where
//!   the training step's time goes by layer and phase against the arithmetic peak and memory bandwidth
//!   measured in the same run.
//! * `cargo xtask reproduce <experiment> [--quick]`: a paper experiment end to end (data, training,
//!   evaluation, analysis) with a Markdown report; resumes when interrupted.
//! * `cargo xtask density`: the event-driven convolution against Candle's dense one at growing input
//!   densities.
//! * `cargo xtask windows --data-root DIR`: the short-window table (LeNet, MNIST and Fashion-MNIST, T = 4 to
//!   20, Poisson and direct input, the paper's learning rate and the short-window rule, several seeds).
//! * `cargo xtask ci`: what CI checks: formatting, clippy, the test suite and the golden cases.
//! * `cargo xtask gpu-check`: on a machine with an NVIDIA GPU and `nvcc`, rebuilds this tool with the `cuda`
//!   feature, replays the golden cases on the GPU and times LeNet and VGG9 training and inference at T = 100.

mod bench;
mod density;
mod peers;
mod reproduce;
mod roofline;
mod windows;

/// Large tensors are allocated and freed on every layer; mimalloc keeps their pages mapped where the system
/// allocator returns them to the OS and faults them in again.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use candle_core::{DType, Device};
use clap::{Parser, Subcommand};
use snn_train::golden::{find_cases, GoldenCase, Tolerance, TrainingPass};

#[derive(Parser)]
#[command(name = "xtask", about = "Project pipelines for the spiking-network toolkit")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay golden reference training steps and compare output, loss, gradients, NG and spike counts.
    Golden {
        /// Folder of cases (`<case>.json` + `<case>.safetensors`).
        dir: Option<PathBuf>,
        /// Replay on the first CUDA device (autograd pass; needs a build with `--features cuda`).
        #[arg(long)]
        cuda: bool,
    },
    /// Time one training step and one inference pass of a built-in network on MNIST inputs.
    Bench(bench::BenchArgs),
    /// Reproduce a paper experiment end to end and write `report.md` (interrupted runs resume).
    Reproduce(reproduce::ReproduceArgs),
    /// Time the event-driven convolution against Candle's dense one at growing input densities (the
    /// measurement behind the event-driven layers' density limit).
    Density {
        /// Repetitions per figure (the fastest is kept).
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
    /// The short-window table: one epoch of LeNet on 2,000 images per run, over windows, input codings,
    /// learning-rate modes and seeds (resumes when interrupted).
    Windows(windows::WindowsArgs),
    /// Run what CI runs: `cargo fmt --check`, `cargo clippy -D warnings`, the test suite, the golden cases.
    Ci,
    /// Build with `--features cuda` (needs nvcc), replay the golden cases on the GPU in f64 and f32, and time
    /// LeNet (B 32) and VGG9 (B 16) at T = 100 there.
    GpuCheck,
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

/// The first CUDA device, or the CPU.
fn device(cuda: bool) -> anyhow::Result<Device> {
    if cuda {
        Device::new_cuda(0)
            .context("no CUDA device (this xtask needs `--features cuda`; `cargo xtask gpu-check` builds it)")
    } else {
        Ok(Device::Cpu)
    }
}

fn golden(dir: Option<PathBuf>, device: &Device) -> anyhow::Result<bool> {
    let dir = dir.unwrap_or_else(|| workspace_root().join("tests").join("golden"));
    let cases = find_cases(&dir)?;
    anyhow::ensure!(!cases.is_empty(), "no golden cases (<case>.json + <case>.safetensors) in {}", dir.display());
    let mut all_ok = true;
    println!(
        "{:<22} {:<4} {:<8} {:>10} {:>10} {:>10} {:>10} {:>8}  result",
        "case", "type", "pass", "output", "loss", "grads", "ng", "spikes"
    );
    // The taped pass is the CPU's; other devices train through autograd.
    let passes: &[TrainingPass] = if device.is_cpu() { &TrainingPass::ALL } else { &[TrainingPass::Autograd] };
    for path in cases {
        let case = GoldenCase::load(&path).with_context(|| format!("loading {}", path.display()))?;
        for (dtype, &pass) in [DType::F64, DType::F32].into_iter().flat_map(|d| passes.iter().map(move |p| (d, p))) {
            let report = case.check_on(dtype, pass, device)?;
            let fmt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.2e}"));
            let spikes_ok = report.checks.iter().filter(|c| c.exact).all(|c| c.passed);
            let tol = Tolerance::for_dtype(dtype);
            println!(
                "{:<22} {:<4} {:<8} {:>10} {:>10} {:>10} {:>10} {:>8}  {}",
                report.case,
                if dtype == DType::F64 { "f64" } else { "f32" },
                pass.name(),
                fmt(report.worst("output")),
                fmt(report.worst("loss")),
                fmt(report.worst("grad.")),
                fmt(report.worst_matching(".ng")),
                if spikes_ok { "exact" } else { "DIFFER" },
                if report.passed() {
                    "ok".to_string()
                } else {
                    format!("FAIL (rtol {:e}, atol {:e})", tol.rtol, tol.atol)
                }
            );
            for c in report.checks.iter().filter(|c| !c.passed) {
                println!("    {}: max|a-g| = {:.3e}, max|g| = {:.3e}", c.name, c.max_abs_err, c.ref_max);
            }
            all_ok &= report.passed();
        }
    }
    println!("errors are norm-wise relative: max|ours - reference| / max|reference|");
    Ok(all_ok)
}

/// Formatting, lints, tests and golden cases, stopping at the first failure.
fn ci() -> anyhow::Result<bool> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = workspace_root();
    let steps: [&[&str]; 3] = [
        &["fmt", "--all", "--", "--check"],
        &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"],
        &["test", "--workspace"],
    ];
    for args in steps {
        eprintln!("$ cargo {}", args.join(" "));
        let status = std::process::Command::new(&cargo).args(args).current_dir(&root).status()?;
        anyhow::ensure!(status.success(), "`cargo {}` failed", args.join(" "));
    }
    eprintln!("$ cargo xtask golden");
    golden(None, &Device::Cpu)
}

/// The CUDA build, the golden cases on the GPU and the T = 100 benchmarks there, stopping at the first failure.
fn gpu_check() -> anyhow::Result<bool> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = workspace_root();
    let xtask = ["run", "--release", "--package", "xtask", "--features", "cuda", "--"];
    let steps: [&[&str]; 3] = [
        &["golden", "--cuda"],
        &["bench", "--cuda", "--model", "lenet", "--batch", "32", "--timesteps", "100", "--modes", "train,infer"],
        &["bench", "--cuda", "--model", "vgg9", "--batch", "16", "--timesteps", "100", "--modes", "train,infer"],
    ];
    for args in steps {
        eprintln!("$ cargo xtask {} (built with --features cuda)", args.join(" "));
        let status = std::process::Command::new(&cargo).args(xtask).args(args).current_dir(&root).status()?;
        anyhow::ensure!(status.success(), "`cargo xtask {}` on the GPU failed", args.join(" "));
    }
    Ok(true)
}

fn main() -> ExitCode {
    if let Err(e) = snn_core::cpu::join_global_pool() {
        eprintln!("warning: the main thread does not take part in the thread pool: {e}");
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Golden { dir, cuda } => device(cuda).and_then(|d| golden(dir, &d)),
        Command::Bench(args) => bench::run(args).map(|()| true),
        Command::Reproduce(args) => reproduce::run(args, &workspace_root()).map(|()| true),
        Command::Density { reps } => density::run(reps).map(|()| true),
        Command::Windows(args) => windows::run(args).map(|()| true),
        Command::Ci => ci(),
        Command::GpuCheck => gpu_check(),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("golden check FAILED");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
