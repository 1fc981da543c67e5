//! `cargo xtask bench`: time one training step and one inference pass of a built-in network.
//!
//! Every figure is a median over repetitions, and the speed is also given as a ratio to a baseline measured
//! in the same run on the same machine: the throughput of a large dense f32 matrix product in Candle (the
//! practical ceiling of dense arithmetic here).
//! For `infer-sparse` (the event-driven engine) GFLOP/s is the dense-equivalent rate: the dense work divided by
//! the time, so it shows how much the event-driven path saves.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::Rng;
use serde::Serialize;
use snn_core::events::SimdLevel;
use snn_data::mnist::{builtin_subset, Split};
use snn_data::{Dataset, Samples};
use snn_models::{
    builtin, load_checkpoint, Engine, ForwardOptions, Gradients, Masks, NetworkSpec, Phase, SpikingNetwork, Work,
};
use snn_train::loss::sum_squared_error;
use snn_train::{sample_rng, stream_rng, train_step_micro_batched, Sgd, Stream};

use crate::peers::{PeerRow, Peers, IMPLS};
use crate::roofline;

/// Options of the benchmark.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Built-in model (MNIST input).
    #[arg(long, default_value = "lenet")]
    pub model: String,
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Time steps (comma-separated for several).
    #[arg(long, value_delimiter = ',', default_value = "20")]
    pub timesteps: Vec<usize>,
    /// Timed repetitions per measurement (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// What to time (comma-separated): train (taped pass), train-graph (the same step through autograd),
    /// infer (dense layers), infer-sparse (event-driven layers).
    #[arg(long, value_delimiter = ',', default_value = "train,infer,infer-sparse")]
    pub modes: Vec<String>,
    /// Also time the peer implementations (plain PyTorch, snnTorch, SpikingJelly) with this Python, in the
    /// same run, and print the speed-ups; needs --peers-script. With --cuda they run on the GPU too.
    #[arg(long, requires = "peers_script")]
    pub peers: Option<PathBuf>,
    /// The peers' benchmark script (`bench/peers/snn_peers.py`).
    #[arg(long, requires = "peers")]
    pub peers_script: Option<PathBuf>,
    /// Run on the first CUDA device (needs a build with `--features cuda`).
    #[arg(long)]
    pub cuda: bool,
    /// Time the event kernels at these SIMD levels in turn (comma-separated: portable, avx2, avx512;
    /// default: the widest the CPU runs).
    #[arg(long, value_delimiter = ',', value_parser = parse_simd)]
    pub simd: Vec<SimdLevel>,
    /// Time this trained network (a checkpoint of `snn-cli train`; it names its own architecture, so
    /// --model is ignored) at the firing rates it has learned; with --peers they run on its weights too.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Encode the first --batch test images of this dataset folder (default: built-in MNIST digits for
    /// MNIST-shaped networks, seeded uniform pixels otherwise); with --peers they encode the same images.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The dataset in --data-dir (default: implied by the network's input shape).
    #[arg(long, requires = "data_dir")]
    pub dataset: Option<String>,
    /// Instead of the timing table: where the training step's time goes, by layer and phase, with the
    /// achieved GFLOP/s or GB/s against the machine's arithmetic peak and memory bandwidth measured in the
    /// same run (`--reps` steps at the first --timesteps, after a warm-up).
    #[arg(long, conflicts_with_all = ["peers", "cuda", "simd"])]
    pub profile: bool,
    /// Run the training step in micro-batches of at most N samples (`snn-cli train --micro-batch`): the
    /// same update in less memory (default: the network's choice for the window; --batch runs it whole).
    #[arg(long)]
    pub micro_batch: Option<usize>,
}

/// A SIMD level by name.
fn parse_simd(name: &str) -> std::result::Result<SimdLevel, String> {
    [SimdLevel::Portable, SimdLevel::Avx2, SimdLevel::Avx512]
        .into_iter()
        .find(|l| l.name() == name)
        .ok_or_else(|| format!("unknown SIMD level '{name}' (portable, avx2, avx512)"))
}

/// What can be timed: the training step (taped pass on the CPU), the same step through Candle's autograd,
/// inference with dense layers, inference with event-driven layers.
pub const MODES: [&str; 4] = ["train", "train-graph", "infer", "infer-sparse"];

#[derive(Serialize)]
struct Row {
    model: String,
    mode: &'static str,
    /// The event kernels' SIMD level.
    simd: &'static str,
    batch: usize,
    timesteps: usize,
    median_s: f64,
    min_s: f64,
    images_per_s: f64,
    gflops: f64,
    ratio_to_matmul: f64,
    peak_rss_mb: f64,
    rss_before_mb: f64,
}

#[derive(Serialize)]
struct Report {
    device: &'static str,
    threads: usize,
    matmul_gflops: f64,
    rows: Vec<Row>,
    peers: Vec<PeerRow>,
}

/// Peer rows and, per T and mode, how many times faster our fastest path is than the fastest peer.
fn print_peers(report: &Report) {
    if report.peers.is_empty() {
        return;
    }
    println!("\n{:<13} {:<6} {:>4} {:>10} {:>10} {:>9}", "peer", "mode", "T", "median s", "min s", "step MB");
    for p in &report.peers {
        println!(
            "{:<13} {:<6} {:>4} {:>10.3} {:>10.3} {:>9.0}",
            p.implementation, p.mode, p.timesteps, p.median_s, p.min_s, p.step_mb
        );
    }
    if report.device != "cpu" {
        println!("(on the GPU the peers' step MB is the GPU memory PyTorch allocated for the step)");
    }
    println!("\nspeed-up over the fastest peer (its median ÷ ours):");
    for p in &report.peers {
        let fastest = report
            .peers
            .iter()
            .filter(|q| q.mode == p.mode && q.timesteps == p.timesteps)
            .min_by(|a, b| a.median_s.total_cmp(&b.median_s));
        let ours = report
            .rows
            .iter()
            .filter(|r| r.timesteps == p.timesteps && r.mode.starts_with(p.mode.as_str()))
            .min_by(|a, b| a.median_s.total_cmp(&b.median_s));
        if let (Some(f), Some(o)) = (fastest, ours) {
            if std::ptr::eq(f, p) {
                println!(
                    "  {} T = {}: ours ({}) {:.3} s vs {} {:.3} s → {:.2}×",
                    p.mode,
                    p.timesteps,
                    o.mode,
                    o.median_s,
                    f.implementation,
                    f.median_s,
                    f.median_s / o.median_s
                );
            }
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Peak and current resident set size of this process in MB (Linux; 0 elsewhere).
fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn matmul_gflops(reps: usize, device: &Device) -> Result<f64> {
    let n = 1024;
    let a = Tensor::ones((n, n), DType::F32, device)?;
    let b = Tensor::ones((n, n), DType::F32, device)?;
    a.matmul(&b)?;
    device.synchronize()?;
    let mut times = Vec::new();
    for _ in 0..reps.max(3) {
        let t = Instant::now();
        a.matmul(&b)?;
        device.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n as f64).powi(3) / median(&mut times) / 1e9)
}

pub fn run(mut args: BenchArgs) -> Result<()> {
    let checkpoint = args.checkpoint.as_deref().map(|p| load_checkpoint(p, &Device::Cpu)).transpose()?;
    let spec = match &checkpoint {
        Some(c) => c.spec.clone(),
        None => builtin(&args.model)?,
    };
    if checkpoint.is_some() {
        args.model = spec.name.clone();
    }
    anyhow::ensure!(args.reps >= 1 && args.batch >= 1, "--reps and --batch must be at least 1");
    anyhow::ensure!(args.micro_batch != Some(0), "--micro-batch must be at least 1");
    if let Some(bad) = args.modes.iter().find(|m| !MODES.contains(&m.as_str())) {
        anyhow::bail!("unknown mode '{bad}' (available: {})", MODES.join(", "));
    }
    let device = &crate::device(args.cuda)?;
    if !device.is_cpu() {
        anyhow::ensure!(
            !args.modes.iter().any(|m| m == "infer-sparse"),
            "mode infer-sparse (the event-driven engine) runs on the CPU only"
        );
    }
    let data = match &args.data_dir {
        Some(dir) => {
            let dataset = match &args.dataset {
                Some(name) => Dataset::from_name(name)?,
                None => Dataset::for_input_shape(&spec.input_shape).with_context(|| {
                    format!("no default dataset for input shape {:?}; pass --dataset", spec.input_shape)
                })?,
            };
            Some((dataset, dir.clone()))
        }
        None => None,
    };
    let peers = args.peers.clone().zip(args.peers_script.clone()).map(|(python, script)| Peers { python, script });
    let inputs = BenchInputs::new(&spec, args.batch, data.as_ref())?;
    // The trained network when given, else a fresh one with the seeded initial weights.
    let network = || -> Result<SpikingNetwork> {
        Ok(match &checkpoint {
            Some(c) => c.clone().into_network(DType::F32, device)?,
            None => SpikingNetwork::new(spec.clone(), &mut stream_rng(1, Stream::Init), DType::F32, device)?,
        })
    };
    if args.profile {
        return profile(&args, &network()?, &inputs);
    }
    // The peers run on the same weights and images when they are given.
    let scratch = tempfile::tempdir()?;
    let given = data.is_some().then_some(&inputs);
    let mut shared = PeerInputs::write(scratch.path(), args.checkpoint.as_deref(), given, &spec)?;
    if !device.is_cpu() {
        // The peers run where ours runs.
        shared.args.extend(["--device".to_string(), "cuda".to_string()]);
    }
    let baseline = matmul_gflops(args.reps, device)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows = Vec::new();
    let mut peer_rows = Vec::new();
    for &t in &args.timesteps {
        let net = network()?;
        let mut opt = Sgd::new(net.weights().to_vec(), 0.0085, 0.0, 5e-4)?;
        let levels = if args.simd.is_empty() { vec![SimdLevel::detected()] } else { args.simd.clone() };
        for mode in MODES.into_iter().filter(|m| args.modes.iter().any(|a| a == m)) {
            for &level in &levels {
                anyhow::ensure!(level <= SimdLevel::detected(), "this CPU does not run SIMD level {}", level.name());
                SimdLevel::force(Some(level));
                let row = time_mode(&args, &net, &mut opt, &inputs, (mode, t), baseline);
                SimdLevel::force(None);
                rows.push(row?);
            }
        }
        if let Some(peers) = &peers {
            // Interleaved with ours: the same T right after our own rows, for the modes timed here.
            for mode in ["train", "infer"]
                .into_iter()
                .filter(|m| rows.iter().any(|r| r.timesteps == t && r.mode.starts_with(m)))
            {
                for implementation in IMPLS {
                    peer_rows.push(peers.run(
                        implementation,
                        &args.model,
                        inputs.batch,
                        t,
                        mode,
                        args.reps,
                        threads,
                        &shared.args,
                    )?);
                }
            }
        }
    }
    let device_name = if device.is_cpu() { "cpu" } else { "cuda" };
    let report = Report { device: device_name, threads, matmul_gflops: baseline, rows, peers: peer_rows };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// The images and labels every timed step encodes.
struct BenchInputs {
    /// Normalised pixels `[B, C, H, W]`.
    pixels: Vec<f32>,
    /// The same before normalisation, in [0, 1].
    raw: Vec<f32>,
    labels: Vec<u32>,
    batch: usize,
    /// Dense multiply-accumulates of one image and step.
    macs_per_step: u64,
}

impl BenchInputs {
    /// The first `batch` test images of `data` when given; otherwise MNIST models get real digits and other
    /// input shapes seeded uniform pixels (speed depends on the image content only through the spike rates
    /// it causes).
    fn new(spec: &NetworkSpec, batch: usize, data: Option<&(Dataset, PathBuf)>) -> Result<Self> {
        let (raw, labels, batch) = if let Some((dataset, dir)) = data {
            let Samples::Images(images) = dataset.load(Some(dir), Split::Test)? else {
                anyhow::bail!("bench encodes images; {} holds event recordings", dir.display());
            };
            anyhow::ensure!(
                images.shape()[..] == spec.input_shape[..],
                "{} holds {:?} images; the network takes {:?}",
                dir.display(),
                images.shape(),
                spec.input_shape
            );
            let idx: Vec<usize> = (0..batch.min(images.len())).collect();
            let (p, l) = images.batch(&idx);
            (p, l, idx.len())
        } else if spec.input_shape == [1, 28, 28] {
            let data = builtin_subset(Split::Train)?;
            let idx: Vec<usize> = (0..batch.min(data.len())).collect();
            let (p, l) = data.batch(&idx);
            (p, l, idx.len())
        } else {
            let mut rng = stream_rng(7, Stream::TrainInput);
            let n = batch * spec.input_shape.iter().product::<usize>();
            let pixels = (0..n).map(|_| rng.gen::<f32>()).collect();
            (pixels, (0..batch as u32).map(|i| i % spec.classes() as u32).collect(), batch)
        };
        let mut pixels = raw.clone();
        spec.normalize(&mut pixels);
        let macs_per_step = spec.dense_macs()?.iter().map(|(_, m)| m).sum();
        Ok(Self { pixels, raw, labels, batch, macs_per_step })
    }

    /// One generator per sample for repetition `rep` (the same draws in every mode and at every SIMD level).
    fn rngs(&self, stream: Stream, rep: usize) -> Vec<rand_chacha::ChaCha8Rng> {
        (0..self.batch as u64).map(|b| sample_rng(1, stream, rep as u64, b)).collect()
    }

    /// The input spikes `[T, B, ...]` of repetition `rep`.
    fn encode(&self, net: &SpikingNetwork, t: usize, rep: usize) -> Result<Tensor> {
        let mut rngs = self.rngs(Stream::TrainInput, rep);
        Ok(net.spec().encode_input(&self.pixels, &mut rngs, t, DType::F32, net.device())?)
    }

    /// The dropout masks of repetition `rep`.
    fn masks(&self, net: &SpikingNetwork, rep: usize) -> Result<Masks> {
        Ok(net.draw_masks(&mut self.rngs(Stream::Dropout, rep))?)
    }
}

/// The peer script's options that put it on our weights and images (`--weights`, `--pixels`), with the files
/// they name.
struct PeerInputs {
    args: Vec<String>,
}

impl PeerInputs {
    /// Writes the images (raw pixels and labels) into `dir` when given and names the checkpoint, whose
    /// `<layer>.weight` tensors the script reads.
    fn write(dir: &Path, checkpoint: Option<&Path>, inputs: Option<&BenchInputs>, spec: &NetworkSpec) -> Result<Self> {
        let mut args = Vec::new();
        if let Some(path) = checkpoint {
            args.extend(["--weights".to_string(), path.display().to_string()]);
        }
        if let Some(inputs) = inputs {
            let shape = [&[inputs.batch][..], &spec.input_shape[..]].concat();
            let pixels = Tensor::from_slice(&inputs.raw, shape, &Device::Cpu)?;
            let labels: Vec<i64> = inputs.labels.iter().map(|&l| i64::from(l)).collect();
            let labels = Tensor::from_vec(labels, inputs.batch, &Device::Cpu)?;
            let path = dir.join("pixels.safetensors");
            candle_core::safetensors::save(
                &HashMap::from([("pixels".to_string(), pixels), ("labels".to_string(), labels)]),
                &path,
            )?;
            args.extend(["--pixels".to_string(), path.display().to_string()]);
        }
        Ok(Self { args })
    }
}

/// Times one mode at one `T`: a warm-up, then `args.reps` repetitions, each encoding fresh input spikes
/// (repetition `r` draws the same spikes and masks in every mode and at every SIMD level).
fn time_mode(
    args: &BenchArgs,
    net: &SpikingNetwork,
    opt: &mut Sgd,
    inputs: &BenchInputs,
    (mode, t): (&'static str, usize),
    baseline: f64,
) -> Result<Row> {
    let device = net.device();
    let (batch, labels) = (inputs.batch, &inputs.labels);
    let (_, rss_before) = rss_mb();
    let mut times = Vec::new();
    for rep in 0..=args.reps {
        let start = Instant::now();
        let x = inputs.encode(net, t, rep)?;
        if mode == "train" {
            let masks = inputs.masks(net, rep)?;
            train_step_micro_batched(net, opt, x, labels, &masks, args.micro_batch)?;
        } else if mode == "train-graph" {
            // The same step through Candle's autograd (the path other devices take).
            let masks = inputs.masks(net, rep)?;
            let opts = ForwardOptions { track_gradients: true, ..ForwardOptions::default() };
            let out = net.forward(&x, &masks, opts)?;
            let grads = sum_squared_error(&out.output, labels)?.backward()?;
            opt.step(&Gradients::from_grad_store(&grads, net))?;
        } else {
            let engine = if mode == "infer" { Engine::Dense } else { Engine::Sparse };
            net.forward(&x, &Masks::new(), ForwardOptions { engine, ..ForwardOptions::default() })?;
        }
        device.synchronize()?;
        if rep > 0 {
            times.push(start.elapsed().as_secs_f64()); // rep 0 is a warm-up
        }
    }
    let (peak, _) = rss_mb();
    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
    let med = median(&mut times);
    let flops_per_pass = 2.0 * inputs.macs_per_step as f64 * t as f64 * batch as f64;
    let flops = if mode.starts_with("train") { 3.0 * flops_per_pass } else { flops_per_pass };
    let gflops = flops / med / 1e9;
    Ok(Row {
        model: args.model.clone(),
        mode,
        simd: SimdLevel::current().name(),
        batch,
        timesteps: t,
        median_s: med,
        min_s: min,
        images_per_s: batch as f64 / med,
        gflops,
        ratio_to_matmul: gflops / baseline,
        peak_rss_mb: peak,
        rss_before_mb: rss_before,
    })
}

/// Profiles `args.reps` training steps at the first `--timesteps` after a warm-up step and prints (or writes
/// as JSON) the roofline table.
fn profile(args: &BenchArgs, net: &SpikingNetwork, inputs: &BenchInputs) -> Result<()> {
    let t = args.timesteps[0];
    let peaks = roofline::measure_peaks();
    let mut opt = Sgd::new(net.weights().to_vec(), 0.0085, 0.0, 5e-4)?;
    let batch = inputs.batch;
    let mut times = Vec::new();
    for rep in 0..=args.reps {
        if rep == 1 {
            net.start_profile(); // rep 0 is a warm-up
        }
        let start = Instant::now();
        let x = inputs.encode(net, t, rep)?;
        let bytes = Work::bytes((x.elem_count() * DType::F32.size_in_bytes()) as f64);
        net.record_profile("input", Phase::Encoding, start.elapsed(), bytes);
        let drawn = Instant::now();
        let masks = inputs.masks(net, rep)?;
        let bytes = masks.values().map(|m| m.elem_count() * DType::F32.size_in_bytes()).sum::<usize>();
        net.record_profile("step", Phase::Dropout, drawn.elapsed(), Work::bytes(bytes as f64));
        train_step_micro_batched(net, &mut opt, x, &inputs.labels, &masks, args.micro_batch)?;
        if rep > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let profile = net.take_profile().context("the profile was not recorded")?;
    // The mean, so that the recorded phases and the untimed rest add up to it.
    let step = times.iter().sum::<f64>() / times.len() as f64;
    let rows = roofline::rows(&profile, args.reps, step, &peaks);
    if args.json {
        let report = serde_json::json!({
            "model": args.model, "batch": batch, "timesteps": t, "mean_step_s": step, "limits": peaks, "rows": rows,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{} batch {batch} T {t}: training step profiled over {} steps", args.model, args.reps);
        roofline::print(&peaks, &rows, step);
    }
    Ok(())
}

/// Prints the rows as a table, then the peers.
fn print_report(report: &Report) {
    println!(
        "device {}; baseline: dense f32 matmul 1024² in Candle there, {:.1} GFLOP/s ({} CPU threads)",
        report.device, report.matmul_gflops, report.threads
    );
    println!(
        "{:<7} {:<12} {:<8} {:>5} {:>4} {:>10} {:>10} {:>9} {:>9} {:>10} {:>10}",
        "model", "mode", "simd", "batch", "T", "median s", "min s", "img/s", "GFLOP/s", "÷ matmul", "peak MB"
    );
    for r in &report.rows {
        println!(
            "{:<7} {:<12} {:<8} {:>5} {:>4} {:>10.3} {:>10.3} {:>9.1} {:>9.1} {:>10.2} {:>10.0}",
            r.model,
            r.mode,
            r.simd,
            r.batch,
            r.timesteps,
            r.median_s,
            r.min_s,
            r.images_per_s,
            r.gflops,
            r.ratio_to_matmul,
            r.peak_rss_mb
        );
    }
    println!("GFLOP/s counts dense conv/linear work (training = 3 × forward); peak MB is the process's peak host RSS so far.");
    print_peers(report);
}
