//! `snn-cli`: train, evaluate and inspect spiking neural networks trained with spike-based backpropagation.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use snn_data::mnist::Split;
use snn_data::{Dataset, Samples};
use snn_models::{
    builtin, builtin_names, is_verified, load_checkpoint, provenance, Engine, InputEncoding, NetworkSpec,
    SpikingNetwork,
};
use snn_train::{
    evaluate, stream_rng, train_run, ActivityWarning, BatchProgress, CrashPoint, EpochMetrics, Recipe, RunOptions,
    Stream, TrainObserver, STABLE_TIMESTEPS,
};

mod distributed;
mod hub;
mod nir;
mod plots;
mod stats;

/// Every layer allocates and frees window-sized tensors; mimalloc keeps those pages mapped where the system
/// allocator unmaps them and faults them in again (about a fifth of an inference pass).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "snn-cli", version, about = "Deep spiking neural networks trained with spike-based backpropagation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a network (with no options: LeNet on the built-in MNIST subset, under a minute on 2 cores).
    Train(TrainArgs),
    /// Evaluate a checkpoint's test accuracy.
    Eval(EvalArgs),
    /// Spikes per layer, synaptic operations and energy against the ANN of the same architecture.
    Stats(stats::StatsArgs),
    /// Datasets from the Hugging Face Hub: fetch into the local cache, verify a cached copy.
    #[command(subcommand)]
    Data(hub::DataCommand),
    /// Write a checkpoint with its config and a model card laid out for a Hub model repository, or as a
    /// NIR graph for other simulators and neuromorphic hardware.
    Export(hub::ExportArgs),
    /// Read a NIR graph (written by this toolkit, snnTorch, Norse, ...) into a checkpoint.
    Import(nir::ImportArgs),
    /// Draw a run's learning curves (loss, training and test accuracy, spikes per neuron per layer) from its
    /// `metrics.jsonl` into PNG files.
    Plot {
        /// The run's output folder (holding `metrics.jsonl`).
        run_dir: PathBuf,
        /// Folder for the figures (default: `plots/` inside the run folder).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List the built-in architectures.
    Models {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DeviceArg {
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, ValueEnum)]
enum EngineArg {
    Sparse,
    Dense,
}

/// Input coding of `--encoding`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EncodingArg {
    Poisson,
    Direct,
}

impl From<EncodingArg> for InputEncoding {
    fn from(e: EncodingArg) -> Self {
        match e {
            EncodingArg::Poisson => InputEncoding::Poisson,
            EncodingArg::Direct => InputEncoding::Direct,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DTypeArg {
    F32,
    F64,
}

#[derive(Args)]
pub(crate) struct Common {
    /// Dataset: mnist, fashion-mnist, cifar10, svhn or nmnist (default: implied by the model's input shape).
    #[arg(long)]
    pub(crate) dataset: Option<String>,
    /// Data folder (MNIST-style IDX files; CIFAR-10 binary batches, image tree or .tar.gz; SVHN .mat files;
    /// N-MNIST Train/Test folders). Default: the Hub cache filled by `snn-cli data fetch`; for MNIST, when
    /// it is not cached, the built-in real subset (6,000 training and 1,000 test images).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) hub: hub::HubArgs,
    /// Use at most this many test images.
    #[arg(long, alias = "limit")]
    pub(crate) test_limit: Option<usize>,
    /// Compute device [default: cpu; a resumed run keeps its own].
    #[arg(long, value_enum)]
    pub(crate) device: Option<DeviceArg>,
    /// Element type [default: f32; a resumed run keeps its own].
    #[arg(long, value_enum)]
    pub(crate) dtype: Option<DTypeArg>,
    /// Print a machine-readable JSON summary on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
struct TrainArgs {
    /// Architecture to train (see `snn-cli models`).
    #[arg(long, default_value = "lenet")]
    model: String,
    /// Train an architecture described in a JSON file (a network spec) instead of a built-in one.
    #[arg(long, conflicts_with = "model")]
    model_config: Option<PathBuf>,
    /// Experiment file (TOML): any recipe field (epochs, batch_size, lr, lr_milestones, momentum,
    /// weight_decay, timesteps, window_milestones, test_timesteps, seed, augment, ...) overriding the model's
    /// defaults; command-line options override the file. `window_milestones = [[13, 100]]` trains at 100
    /// steps from epoch 13 on.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Start from the paper's full recipe for the model (e.g. 125 epochs at T = 100 for LeNet) instead of
    /// the quick defaults; explicit options still override it.
    #[arg(long)]
    paper: bool,
    /// Time steps per sample, training and test (default 20; 100 with --paper). Below 20 steps the
    /// recipe's learning rate is scaled by T/20 to keep short windows stable, unless --lr (or `lr` in
    /// --config) sets it.
    #[arg(long)]
    timesteps: Option<usize>,
    /// Input coding: `poisson` spikes at a rate set by each pixel (the paper), or `direct`, the normalised
    /// image as a constant input current at every step (steadier at short windows).
    #[arg(long, value_enum, conflicts_with = "resume")]
    encoding: Option<EncodingArg>,
    /// Data-parallel training: `mpi` makes this process one rank of an MPI job (launched by `mpirun` or
    /// `srun`; every rank takes its share of each batch and the gradients are summed), `auto` picks MPI when
    /// an MPI launcher started the process. Results do not depend on the number of ranks.
    #[arg(long, value_enum, default_value_t = distributed::DistributedArg::Single)]
    distributed: distributed::DistributedArg,

    /// Time steps per test sample, if different from --timesteps.
    #[arg(long)]
    test_timesteps: Option<usize>,
    /// Epochs (default 1).
    #[arg(long)]
    epochs: Option<usize>,
    /// Mini-batch size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Initial learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// SGD momentum (the paper: 0).
    #[arg(long)]
    momentum: Option<f64>,
    /// Weight decay.
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Seed of all random streams.
    #[arg(long)]
    seed: Option<u64>,
    /// Skip (and count) a batch whose loss or gradient is not finite instead of stopping the run; a
    /// non-finite weight still stops it.
    #[arg(long)]
    skip_nonfinite_batches: bool,
    /// Use the first N training images.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Output folder for checkpoints and metrics.
    #[arg(long, default_value = "runs/latest")]
    out: PathBuf,
    /// Save the resumable run state every N batches as well as after every epoch.
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Run each batch in micro-batches of at most N samples (CPU): the same update up to the order of sums,
    /// with the per-sample memory of the step (its spike tape above all) held for N samples at a time (give the
    /// same N when resuming for bit-identical weights). Default: the whole batch, or equal micro-batches when
    /// the step's state per sample over the window would outgrow 64 MiB for the batch (VGG9, batch 16,
    /// T = 100: two of 8); the batch size itself turns micro-batches off.
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Continue the interrupted run in this folder (its recipe, architecture and data settings are reused).
    #[arg(long, conflicts_with_all = ["model", "model_config", "config", "paper"])]
    resume: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct EvalArgs {
    /// Checkpoint file (safetensors written by `snn-cli train`).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Time steps per sample (default: the test time steps stored in the checkpoint, else 100).
    #[arg(long)]
    timesteps: Option<usize>,
    /// Evaluation batch size.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Synaptic layers: `sparse` adds weights only where spikes are (event-driven, faster), `dense` runs full
    /// convolutions and matrix products. Predictions agree up to floating-point rounding.
    #[arg(long, value_enum, default_value = "sparse")]
    engine: EngineArg,
    /// Seed of the input spike draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    common: Common,
}

pub(crate) fn device(arg: Option<DeviceArg>) -> Result<Device> {
    match arg.unwrap_or(DeviceArg::Cpu) {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Cuda => Device::new_cuda(0).context("CUDA device unavailable (build with --features cuda)"),
    }
}

pub(crate) fn dtype(arg: Option<DTypeArg>) -> DType {
    match arg.unwrap_or(DTypeArg::F32) {
        DTypeArg::F32 => DType::F32,
        DTypeArg::F64 => DType::F64,
    }
}

/// The dataset named by `--dataset`, else the one the model's input shape implies.
fn dataset_for(common: &Common, spec: &NetworkSpec) -> Result<Dataset> {
    if let Some(name) = &common.dataset {
        return Ok(Dataset::from_name(name)?);
    }
    Dataset::for_input_shape(&spec.input_shape)
        .with_context(|| format!("no default dataset for input shape {:?}; pass --dataset", spec.input_shape))
}

pub(crate) fn load_split(common: &Common, spec: &NetworkSpec, split: Split, limit: Option<usize>) -> Result<Samples> {
    let dataset = dataset_for(common, spec)?;
    let mut data = dataset.load_from(common.data_dir.as_deref(), &common.hub.options(false), split)?;
    if let Some(n) = limit {
        if n == 0 {
            bail!("limits must be at least 1");
        }
        data.truncate(n);
    }
    Ok(data)
}

fn bar(len: usize, template: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

struct Progress {
    train_bar: Option<ProgressBar>,
    eval_bar: Option<ProgressBar>,
    epochs: usize,
    quiet: bool,
    /// A rank other than 0 of a data-parallel run: rank 0 reports for every rank.
    follower: bool,
}

impl Progress {
    fn finish(&mut self) {
        for pb in [self.train_bar.take(), self.eval_bar.take()].into_iter().flatten() {
            pb.finish_and_clear();
        }
    }
}

impl TrainObserver for Progress {
    fn on_batch(&mut self, p: &BatchProgress) {
        let pb = self.train_bar.get_or_insert_with(|| {
            bar(p.epoch_samples, "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})", self.quiet)
        });
        pb.set_prefix(format!("epoch {}/{}", p.epoch, self.epochs));
        pb.set_position(p.samples as u64);
        pb.set_message(format!("loss {:.3} acc {:.1}% {:.0} img/s", p.loss, 100.0 * p.accuracy, p.images_per_sec));
    }

    fn on_eval(&mut self, done: usize, total: usize) {
        if let Some(pb) = self.train_bar.take() {
            pb.finish_and_clear();
        }
        let pb = self
            .eval_bar
            .get_or_insert_with(|| bar(total, "  test [{bar:30}] {pos}/{len} ({elapsed}<{eta})", self.quiet));
        pb.set_position(done as u64);
    }

    fn on_warning(&mut self, w: &ActivityWarning) {
        if self.follower {
            return;
        }
        let line = format!("warning: {w}");
        match &self.train_bar {
            Some(pb) => pb.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    fn on_epoch(&mut self, m: &EpochMetrics) {
        if let Some(pb) = self.eval_bar.take() {
            pb.finish_and_clear();
        }
        if self.follower {
            return;
        }
        if m.skipped_batches > 0 {
            eprintln!(
                "warning: {} batch(es) of epoch {} skipped: non-finite loss or gradient",
                m.skipped_batches, m.epoch
            );
        }
        for r in m.train_spikes.iter().filter(|r| r.spikes_per_neuron == 0.0) {
            tracing::warn!(layer = %r.layer, epoch = m.epoch, "layer never fired");
            eprintln!(
                "warning: layer {} never fired during epoch {}: no gradient reaches the layers below it \
                 (more time steps or a larger input rate may help)",
                r.layer, m.epoch
            );
        }
        if !self.quiet {
            let rates: Vec<String> =
                m.train_spikes.iter().map(|r| format!("{} {:.2}", r.layer, r.spikes_per_neuron)).collect();
            eprintln!(
                "epoch {}: loss {:.4}, train acc {:.2}%, test acc {:.2}%, lr {}, {:.0} img/s, spikes/neuron: {}",
                m.epoch,
                m.loss,
                100.0 * m.train_accuracy,
                100.0 * m.test_accuracy,
                m.lr,
                m.images_per_sec,
                rates.join(", ")
            );
        }
    }
}

fn run_plot(run_dir: &Path, out: Option<PathBuf>) -> Result<()> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let history = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{} line {}: not an epoch record", path.display(), i + 1))
        })
        .collect::<Result<Vec<EpochMetrics>>>()?;
    let dir = out.unwrap_or_else(|| run_dir.join("plots"));
    for p in plots::learning_curves(&dir, &history)? {
        println!("{}", p.display());
    }
    Ok(())
}

/// What `train` saves as `recipe.json`: enough to resume the run.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedRun {
    model: String,
    spec: NetworkSpec,
    recipe: Recipe,
    dataset: Option<String>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    cache_dir: Option<PathBuf>,
    train_limit: Option<usize>,
    test_limit: Option<usize>,
    /// Element type of the run (absent in runs saved before it was recorded, which ran in f32 unless told).
    #[serde(default)]
    dtype: Option<DTypeArg>,
    /// Device of the run (absent in older runs).
    #[serde(default)]
    device: Option<DeviceArg>,
}

/// The setting a resumed run continues with: the saved one, which a given flag must not contradict.
fn keep_saved<T: PartialEq + ValueEnum>(
    flag: &str,
    given: Option<T>,
    saved: Option<T>,
    dir: &Path,
) -> Result<Option<T>> {
    let name = |v: &T| v.to_possible_value().map(|p| p.get_name().to_string()).unwrap_or_default();
    match (given, saved) {
        (Some(g), Some(s)) if g != s => bail!(
            "the run in {} was trained with {flag} {}; resuming it with {flag} {} would change it (leave the flag \
             out to keep {})",
            dir.display(),
            name(&s),
            name(&g),
            name(&s)
        ),
        (given, saved) => Ok(saved.or(given)),
    }
}

fn run_train(a: TrainArgs) -> Result<()> {
    let comm = distributed::connect(a.distributed)?;
    match (&comm, prepare_training(a, comm.clone())) {
        // A rank that fails alone ends the whole job: the others would wait for it in the next collective.
        (Some(c), Err(e)) if c.size() > 1 => {
            // One write of the whole line: stderr is unbuffered, and `eprintln!` writes each piece of the
            // format separately, so the launcher's own abort notice could land in the middle of the message.
            let line = format!("error on rank {} of {}: {e:#}\n", c.rank(), c.size());
            let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
            c.abort(1)
        }
        (_, result) => result,
    }
}

fn prepare_training(mut a: TrainArgs, comm: Option<std::rc::Rc<dyn snn_train::Collective>>) -> Result<()> {
    if let Some(dir) = a.resume.clone() {
        let path = dir.join("recipe.json");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("no run to resume: reading {}", path.display()))?;
        let saved: SavedRun = serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))?;
        a.common.dataset = a.common.dataset.or(saved.dataset);
        a.common.data_dir = a.common.data_dir.or(saved.data_dir);
        a.common.hub.cache_dir = a.common.hub.cache_dir.or(saved.cache_dir);
        a.train_limit = a.train_limit.or(saved.train_limit);
        a.common.test_limit = a.common.test_limit.or(saved.test_limit);
        a.common.dtype = keep_saved("--dtype", a.common.dtype, saved.dtype, &dir)?;
        a.common.device = keep_saved("--device", a.common.device, saved.device, &dir)?;
        a.out = dir;
        return execute_training(a, saved.model, saved.spec, saved.recipe, true, comm);
    }
    let mut spec = match &a.model_config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let mut spec = NetworkSpec::from_json(&text).with_context(|| format!("model config {}", path.display()))?;
            if spec.name.is_empty() {
                spec.name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            }
            a.model = spec.name.clone();
            spec
        }
        None => builtin(&a.model)?,
    };
    if let Some(encoding) = a.encoding {
        spec.input_encoding = encoding.into();
    }
    let mut recipe = if a.paper {
        Recipe::paper_for(&a.model).with_context(|| format!("no paper recipe for model '{}'", a.model))?
    } else {
        Recipe::paper_for_spec(&a.model, &spec).quick()
    };
    let mut lr_chosen = a.lr.is_some();
    if let Some(path) = &a.config {
        let (configured, keys) = apply_config(recipe, path)?;
        recipe = configured;
        lr_chosen |= keys.iter().any(|k| k == "lr");
    }
    if let Some(t) = a.timesteps {
        recipe.timesteps = t;
        recipe.test_timesteps = t;
    }
    if let Some(t) = a.test_timesteps {
        recipe.test_timesteps = t;
    }
    if let Some(v) = a.epochs {
        recipe.epochs = v;
    }
    if let Some(v) = a.batch_size {
        recipe.batch_size = v;
        recipe.test_batch_size = v;
    }
    if let Some(v) = a.lr {
        recipe.lr = v;
    }
    if let Some(v) = a.momentum {
        recipe.momentum = v;
    }
    if let Some(v) = a.weight_decay {
        recipe.weight_decay = v;
    }
    if let Some(v) = a.seed {
        recipe.seed = v;
    }
    if a.skip_nonfinite_batches {
        recipe.skip_nonfinite_batches = true;
    }
    if !lr_chosen {
        recipe = recipe.with_short_window_rule();
        if let Some(before) = recipe.lr_before_window_rule {
            tracing::info!(timesteps = recipe.timesteps, before, lr = recipe.lr, "short-window learning-rate rule");
            if !a.common.json {
                eprintln!(
                    "short window (T = {} < {STABLE_TIMESTEPS}): learning rate {before} scaled by T/{STABLE_TIMESTEPS} \
                     to {} to keep every layer firing (set --lr to choose it yourself)",
                    recipe.timesteps, recipe.lr
                );
            }
        }
    }
    recipe.validate()?;
    let model = a.model.clone();
    execute_training(a, model, spec, recipe, false, comm)
}

fn execute_training(
    a: TrainArgs,
    model: String,
    spec: NetworkSpec,
    recipe: Recipe,
    resume: bool,
    comm: Option<std::rc::Rc<dyn snn_train::Collective>>,
) -> Result<()> {
    // Rank 0 alone reports and writes; the other ranks of a distributed run only log.
    let (rank, ranks) = comm.as_ref().map_or((0, 1), |c| (c.rank(), c.size()));
    let lead = rank == 0;
    let dev = device(a.common.device)?;
    let train_set = load_split(&a.common, &spec, Split::Train, a.train_limit)?;
    let test_set = load_split(&a.common, &spec, Split::Test, a.common.test_limit)?;
    let net = SpikingNetwork::new(spec, &mut stream_rng(recipe.seed, Stream::Init), dtype(a.common.dtype), &dev)?;
    tracing::info!(
        model = %model, params = net.parameter_count(), train = train_set.len(), test = test_set.len(),
        "training"
    );
    if ranks > 1 {
        tracing::info!(rank, ranks, "data-parallel training");
    }
    if !a.common.json && lead {
        eprintln!(
            "training {} ({} parameters) on {} images, testing on {}; T = {}, batch {}{}, lr {}, {} epoch(s) -> {}",
            model,
            net.parameter_count(),
            train_set.len(),
            test_set.len(),
            recipe.timesteps,
            recipe.batch_size,
            if ranks > 1 { format!(" over {ranks} ranks") } else { String::new() },
            recipe.lr,
            recipe.epochs,
            a.out.display()
        );
    }
    if lead {
        std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    }
    if !resume && lead {
        let saved = SavedRun {
            model: model.clone(),
            spec: net.spec().clone(),
            recipe: recipe.clone(),
            dataset: a.common.dataset.clone(),
            data_dir: a.common.data_dir.as_deref().map(absolute),
            cache_dir: a.common.hub.cache_dir.as_deref().map(absolute),
            train_limit: a.train_limit,
            test_limit: a.common.test_limit,
            dtype: Some(a.common.dtype.unwrap_or(DTypeArg::F32)),
            device: Some(a.common.device.unwrap_or(DeviceArg::Cpu)),
        };
        snn_models::write_atomic(&a.out.join("recipe.json"), serde_json::to_string_pretty(&saved)?.as_bytes())
            .with_context(|| format!("writing {}", a.out.join("recipe.json").display()))?;
    }
    let mut progress = Progress {
        train_bar: None,
        eval_bar: None,
        epochs: recipe.epochs,
        quiet: a.common.json || !lead,
        follower: !lead,
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    // A second Ctrl-C while the first is being handled kills the process the usual way.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
    // A crash injected at a known point (`batch:N`, `state-write:N`), for testing recovery.
    let crash = match std::env::var("SNN_CRASH_AT") {
        Ok(point) => Some(point.parse::<CrashPoint>()?),
        Err(_) => None,
    };
    let opts = RunOptions {
        out_dir: Some(a.out.clone()),
        checkpoint_every: a.checkpoint_every,
        micro_batch: a.micro_batch,
        resume,
        stop: Some(stop),
        crash,
        collective: comm,
    };
    let summary = match train_run(&net, &train_set, &test_set, &recipe, &opts, &mut progress) {
        Err(snn_train::Error::Interrupted { epoch, batch }) => {
            progress.finish();
            eprintln!(
                "interrupted at epoch {epoch} after batch {batch}; state saved. Continue with: snn-cli train --resume {}",
                a.out.display()
            );
            std::process::exit(130);
        }
        other => other?,
    };
    if !lead {
        tracing::info!(rank, "done");
        return Ok(());
    }
    if a.common.json {
        let mut v = serde_json::to_value(&summary)?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("model".into(), model.clone().into());
            obj.remove("history");
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "test accuracy {:.2}% (best {:.2}% at epoch {}) after {:.1} s; checkpoints in {}",
            100.0 * summary.test_accuracy,
            100.0 * summary.best_test_accuracy,
            summary.best_epoch,
            summary.seconds,
            a.out.display()
        );
    }
    Ok(())
}

/// `path` made absolute (unchanged if that fails), so a saved run resumes from any working directory.
fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Overrides recipe fields with the keys of a TOML experiment file; unknown keys and wrong types are errors.
/// The recipe with an experiment file's fields applied, and the keys the file set.
fn apply_config(recipe: Recipe, path: &std::path::Path) -> Result<(Recipe, Vec<String>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table = text.parse().with_context(|| format!("{} is not valid TOML", path.display()))?;
    let mut value = serde_json::to_value(&recipe)?;
    let keys: Vec<String> = table.keys().cloned().collect();
    for (key, v) in table {
        let Some(slot) = value.get_mut(&key) else {
            bail!("{}: unknown recipe key '{key}'", path.display());
        };
        *slot = serde_json::to_value(v)?;
    }
    let recipe: Recipe =
        serde_json::from_value(value).with_context(|| format!("{}: invalid recipe", path.display()))?;
    Ok((recipe, keys))
}

/// Loads a checkpoint's network on the chosen device and dtype, with the time steps to evaluate at:
/// `timesteps` if given, else the test time steps stored in the checkpoint, else 100.
pub(crate) fn load_network(
    common: &Common,
    checkpoint: &std::path::Path,
    timesteps: Option<usize>,
) -> Result<(SpikingNetwork, usize)> {
    let dev = device(common.device)?;
    let checkpoint = &hub::resolve_checkpoint(checkpoint, &common.hub)?;
    let ckpt = load_checkpoint(checkpoint, &dev)?;
    let stored_t = ckpt.metadata.get("test_timesteps").and_then(|t| t.parse::<usize>().ok());
    let timesteps = timesteps.or(stored_t).unwrap_or(100);
    let net =
        ckpt.into_network(dtype(common.dtype), &dev).with_context(|| format!("checkpoint {}", checkpoint.display()))?;
    Ok((net, timesteps))
}

fn run_eval(a: EvalArgs) -> Result<()> {
    let (net, timesteps) = load_network(&a.common, &a.checkpoint, a.timesteps)?;
    let test_set = load_split(&a.common, net.spec(), Split::Test, a.common.test_limit)?;
    let pb = bar(test_set.len(), "  test [{bar:30}] {pos}/{len} ({elapsed}<{eta})", a.common.json);
    let engine = match a.engine {
        EngineArg::Sparse => Engine::Sparse,
        EngineArg::Dense => Engine::Dense,
    };
    let result =
        evaluate(&net, &test_set, timesteps, a.batch_size, a.seed, engine, &mut |d, _| pb.set_position(d as u64))?;
    pb.finish_and_clear();
    if a.common.json {
        let mut v = serde_json::to_value(&result)?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("model".into(), net.spec().name.clone().into());
            obj.insert("checkpoint".into(), a.checkpoint.display().to_string().into());
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{}: test accuracy {:.2}% ({}/{}) at T = {} in {:.1} s",
            a.checkpoint.display(),
            100.0 * result.accuracy,
            result.correct,
            result.total,
            timesteps,
            result.seconds
        );
    }
    Ok(())
}

fn run_models(json: bool) -> Result<()> {
    let mut rows = Vec::new();
    for name in builtin_names() {
        let spec = builtin(name)?;
        rows.push(serde_json::json!({
            "name": name,
            "verified": is_verified(name),
            "note": provenance(name),
            "family": spec.family,
            "parameters": spec.parameter_count()?,
            "input_shape": spec.input_shape,
            "classes": spec.classes(),
            "layers": spec.layers.len(),
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("{:<13} {:<8} {:>12}  {:<12} note", "model", "family", "parameters", "input");
        for r in &rows {
            println!(
                "{:<13} {:<8} {:>12}  {:<12} {}",
                r["name"].as_str().unwrap_or(""),
                r["family"].as_str().unwrap_or(""),
                r["parameters"].to_string(),
                r["input_shape"].to_string(),
                r["note"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = snn_core::cpu::join_global_pool() {
        tracing::warn!("the main thread does not take part in the thread pool: {e}");
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => run_train(a),
        Command::Eval(a) => run_eval(a),
        Command::Stats(a) => stats::run(a),
        Command::Data(c) => hub::run_data(c),
        Command::Export(a) => hub::run_export(a),
        Command::Import(a) => nir::run_import(a),
        Command::Plot { run_dir, out } => run_plot(&run_dir, out),
        Command::Models { json } => run_models(json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
