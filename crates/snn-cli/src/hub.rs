//! `snn-cli data` (Hub datasets into the local cache) and `snn-cli export` (a checkpoint laid out for a Hub
//! model repository), plus `hf://` checkpoint addresses.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use snn_data::hub::{self, HubDataset, HubFile, HubOptions};
use snn_data::Dataset;
use snn_models::{parse_checkpoint, write_atomic, LayerSpec};
use snn_train::{EpochMetrics, Recipe};

/// Options shared by every command that reads from the Hub.
#[derive(Args, Clone, Default)]
pub(crate) struct HubArgs {
    /// Hub cache folder (default: `$HF_HOME/hub`, else `~/.cache/huggingface/hub`). `HF_ENDPOINT` picks
    /// another Hub server; `HF_HUB_OFFLINE=1` forbids network access.
    #[arg(long)]
    pub(crate) cache_dir: Option<PathBuf>,
}

impl HubArgs {
    /// The Hub options: the environment's, with `--cache-dir` applied.
    pub(crate) fn options(&self, progress: bool) -> HubOptions {
        let mut opts = HubOptions::from_env();
        if let Some(dir) = &self.cache_dir {
            opts.cache_dir = dir.clone();
        }
        opts.progress = progress;
        opts
    }
}

/// `snn-cli data ...`
#[derive(Subcommand)]
pub(crate) enum DataCommand {
    /// Download a dataset from the Hugging Face Hub into the cache, checking every file's SHA-256.
    Fetch {
        /// mnist, fashion-mnist, cifar10 or svhn.
        name: String,
        #[command(flatten)]
        hub: HubArgs,
    },
    /// Re-hash and fully decode a cached dataset.
    Verify {
        /// mnist, fashion-mnist, cifar10 or svhn.
        name: String,
        #[command(flatten)]
        hub: HubArgs,
    },
}

pub(crate) fn run_data(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Fetch { name, hub } => {
            let dataset = Dataset::from_name(&name)?;
            let source = HubDataset::of(dataset)?;
            let opts = hub.options(true);
            eprintln!("fetching {} from the Hub repository {} into {}", name, source.repo, opts.cache_dir.display());
            let paths = hub::fetch_dataset(dataset, &opts)?;
            for p in &paths {
                println!("{}", p.display());
            }
            eprintln!(
                "{} files cached and checked; `snn-cli train --dataset {name}` now reads them offline",
                paths.len()
            );
        }
        DataCommand::Verify { name, hub } => {
            let dataset = Dataset::from_name(&name)?;
            let source = HubDataset::of(dataset)?;
            let shards = hub::verify_dataset(dataset, &hub.options(false))?;
            let rows: usize = shards.iter().map(|s| s.rows).sum();
            for s in &shards {
                println!("{}  {}  {} rows", s.sha256, s.path.display(), s.rows);
            }
            let published: usize = source.sizes.iter().sum();
            println!("{name}: {} shards, {rows} images, all checksums match", shards.len());
            if rows != published {
                eprintln!("note: the published dataset has {published} images; this cache holds {rows}");
            }
        }
    }
    Ok(())
}

/// A checkpoint path, or an `hf://owner/repo/file` address fetched into (or found in) the Hub cache.
pub(crate) fn resolve_checkpoint(path: &Path, hub: &HubArgs) -> Result<PathBuf> {
    match path.to_str().filter(|s| s.starts_with("hf://")) {
        Some(url) => {
            let file = HubFile::parse_url(url)?;
            Ok(hub::fetch_file(&file, &hub.options(true)).with_context(|| format!("fetching {url}"))?)
        }
        None => Ok(path.to_path_buf()),
    }
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["hub_layout", "nir"]))]
pub(crate) struct ExportArgs {
    /// Checkpoint to export (a path or hf://owner/repo/file).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Output folder in the layout of a Hub model repository: model.safetensors, config.json, README.md.
    #[arg(long)]
    hub_layout: Option<PathBuf>,
    /// Write the network as a NIR graph (HDF5) to this file, for other simulators and neuromorphic chips
    /// (needs a build with `--features nir`).
    #[arg(long)]
    nir: Option<PathBuf>,
    /// Time step of the NIR neuron parameters, in the unit of their time constants: 1 measures time in steps;
    /// give the consumer's own step where it assumes one (snnTorch's importer: 1e-4).
    #[arg(long, default_value_t = 1.0, requires = "nir")]
    dt: f64,
    /// Dataset the model was trained on, for the model card (default: implied by the input shape).
    #[arg(long)]
    dataset: Option<String>,
    #[command(flatten)]
    hub: HubArgs,
}

pub(crate) fn run_export(a: ExportArgs) -> Result<()> {
    let source = resolve_checkpoint(&a.checkpoint, &a.hub)?;
    let Some(hub_layout) = &a.hub_layout else {
        let nir = a.nir.as_deref().context("give --hub-layout or --nir")?;
        return crate::nir::export_nir(&source, nir, a.dt);
    };
    // Read once: the same bytes are checked and then copied into the layout.
    let bytes = std::fs::read(&source).with_context(|| format!("reading {}", source.display()))?;
    let ckpt = parse_checkpoint(&bytes, &source, &candle_core::Device::Cpu)?;
    let (spec, meta) = (ckpt.spec.clone(), ckpt.metadata.clone());
    // Building the network checks that every weight has its layer's shape before anything is written.
    let net = ckpt.into_network(candle_core::DType::F32, &candle_core::Device::Cpu)?;
    let history = read_history(&source);

    std::fs::create_dir_all(hub_layout).with_context(|| format!("creating {}", hub_layout.display()))?;
    let write = |name: &str, bytes: &[u8]| {
        let path = hub_layout.join(name);
        write_atomic(&path, bytes).with_context(|| format!("writing {}", path.display()))
    };
    write("model.safetensors", &bytes)?;
    write("config.json", spec.to_json().as_bytes())?;
    let card = model_card(&spec, net.parameter_count(), &meta, history.as_deref(), a.dataset.as_deref())?;
    write("README.md", card.as_bytes())?;
    println!("wrote {} (model.safetensors, config.json, README.md)", hub_layout.display());
    Ok(())
}

/// The epochs of `metrics.jsonl` beside a checkpoint, if it is there and readable.
fn read_history(checkpoint: &Path) -> Option<Vec<EpochMetrics>> {
    let text = std::fs::read_to_string(checkpoint.parent()?.join("metrics.jsonl")).ok()?;
    text.lines().map(|l| serde_json::from_str(l).ok()).collect()
}

fn model_card(
    spec: &snn_models::NetworkSpec,
    parameters: usize,
    meta: &HashMap<String, String>,
    history: Option<&[EpochMetrics]>,
    dataset: Option<&str>,
) -> Result<String> {
    let dataset = match dataset {
        Some(d) => Dataset::from_name(d)?.name(),
        None => match spec.input_shape[..] {
            [1, 28, 28] => "mnist",
            [3, 32, 32] => "cifar10",
            [2, 34, 34] => "nmnist",
            _ => "unknown",
        },
    };
    let recipe: Option<Recipe> = meta.get("recipe").and_then(|r| serde_json::from_str(r).ok());
    let epoch: Option<usize> = meta.get("epoch").and_then(|e| e.parse().ok());
    let accuracy: Option<f64> = meta.get("test_accuracy").and_then(|a| a.parse().ok());
    let mut s = String::new();
    writeln!(s, "---\nlibrary_name: snn-cli\ntags:\n- spiking-neural-network\n- snn")?;
    writeln!(s, "- image-classification\ndatasets:\n- {dataset}\n---\n")?;
    writeln!(s, "# {} spiking network ({dataset})\n", spec.name)?;
    writeln!(
        s,
        "A deep spiking network of leaky integrate-and-fire neurons trained directly on spike trains with \
         spike-based backpropagation (Lee et al. 2020, \"Enabling Spike-Based Backpropagation for Training Deep \
         Neural Network Architectures\").\n"
    )?;
    writeln!(s, "## Architecture\n")?;
    writeln!(
        s,
        "`{}` ({} family), input {:?}, {} classes, {parameters} weights; leak {}, threshold {}, pooling threshold \
         {}.\n",
        spec.name,
        spec.family,
        spec.input_shape,
        spec.classes(),
        spec.leak,
        spec.threshold,
        spec.pool_threshold
    )?;
    writeln!(s, "| layer | kind | detail |\n|---|---|---|")?;
    for layer in &spec.layers {
        let (kind, detail) = match layer {
            LayerSpec::Conv(c) => (
                "conv + LIF",
                format!("{}→{} {}×{} stride {}{}", c.in_channels, c.out_channels, c.kernel, c.kernel, c.stride, {
                    c.shortcut.as_ref().map_or(String::new(), |sc| format!(", shortcut from {}", sc.input))
                }),
            ),
            LayerSpec::Fc(f) => ("fc + LIF", format!("{}→{}", f.in_features, f.out_features)),
            LayerSpec::Pool(p) => ("avg-pool + IF", format!("{}×{} stride {}", p.kernel, p.kernel, p.stride)),
            LayerSpec::Readout(r) => ("readout", format!("{}→{}", r.in_features, r.out_features)),
        };
        writeln!(s, "| {} | {kind} | {detail} |", layer.name())?;
    }
    writeln!(s, "\nThe full specification is in `config.json`.\n\n## Training\n")?;
    match &recipe {
        Some(r) => writeln!(
            s,
            "SGD, lr {} (milestones {:?}), momentum {}, weight decay {}, batch {}, {} epoch(s), T = {} (test T = {}), \
             seed {}, augmentation {}.\n\n```json\n{}\n```\n",
            r.lr,
            r.lr_milestones,
            r.momentum,
            r.weight_decay,
            r.batch_size,
            r.epochs,
            r.timesteps,
            r.test_timesteps,
            r.seed,
            r.augment,
            serde_json::to_string_pretty(r)?
        )?,
        None => writeln!(s, "The checkpoint carries no recipe.\n")?,
    }
    writeln!(s, "## Results\n")?;
    match (accuracy, epoch) {
        (Some(acc), Some(e)) => writeln!(s, "Test accuracy **{:.2} %** after epoch {e}.\n", 100.0 * acc)?,
        (Some(acc), None) => writeln!(s, "Test accuracy **{:.2} %**.\n", 100.0 * acc)?,
        _ => writeln!(s, "The checkpoint records no test accuracy.\n")?,
    }
    let epoch_metrics = history.and_then(|h| h.iter().find(|m| Some(m.epoch) == epoch).or(h.last()));
    match epoch_metrics {
        Some(m) if !m.test_spikes.is_empty() => {
            writeln!(s, "Spikes during the test (epoch {}):\n", m.epoch)?;
            writeln!(s, "| layer | spikes per neuron | firing rate per step | never fired |\n|---|---|---|---|")?;
            for r in &m.test_spikes {
                writeln!(
                    s,
                    "| {} | {:.3} | {:.4} | {:.1} % |",
                    r.layer,
                    r.spikes_per_neuron,
                    r.firing_rate,
                    100.0 * r.dead_fraction
                )?;
            }
            writeln!(s)?;
        }
        _ => writeln!(
            s,
            "No spike statistics were found beside the checkpoint; `snn-cli stats --checkpoint model.safetensors` \
             measures them.\n"
        )?,
    }
    writeln!(
        s,
        "## Use\n\n```sh\nsnn-cli eval --checkpoint hf://OWNER/REPO/model.safetensors --dataset {dataset}\n```"
    )?;
    Ok(s)
}
