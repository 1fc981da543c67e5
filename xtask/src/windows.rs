//! `cargo xtask windows`: the short-window table. LeNet trained for one epoch on a subset of MNIST and
//! Fashion-MNIST at short windows, Poisson against direct input coding, the paper's learning rate against the
//! short-window rule, over several seeds: how many seeds learn, their mean and spread, and the time per epoch.
//!
//! Every finished run is appended to `runs.jsonl` in the output folder, so an interrupted table continues
//! where it stopped; `table.md` is rewritten from all rows after every run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use serde::{Deserialize, Serialize};
use snn_data::mnist::Split;
use snn_data::Dataset;
use snn_models::{builtin, InputEncoding, SpikingNetwork};
use snn_train::{stream_rng, train, Recipe, Silent, Stream};

/// Test accuracy at or above which a run counts as having learned (chance is 10 %).
const LEARNED: f64 = 0.25;

/// Options of `cargo xtask windows`.
#[derive(Args)]
pub struct WindowsArgs {
    /// Folder holding one subfolder per dataset with its four IDX files (`mnist/`, `fashion-mnist/`).
    #[arg(long)]
    data_root: PathBuf,
    /// Datasets (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "mnist,fashion-mnist")]
    datasets: Vec<String>,
    /// Windows (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "4,6,8,12,20")]
    timesteps: Vec<usize>,
    /// Seeds 1..=N.
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// Training images (the first N).
    #[arg(long, default_value_t = 2000)]
    train_limit: usize,
    /// Test images (the first N).
    #[arg(long, default_value_t = 10000)]
    test_limit: usize,
    /// Output folder.
    #[arg(long, default_value = "runs/windows")]
    out: PathBuf,
}

/// One training run of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row {
    dataset: String,
    timesteps: usize,
    encoding: String,
    /// `paper` (LR 0.0085) or `rule` (the short-window rule).
    lr_mode: String,
    seed: u64,
    lr: f64,
    test_accuracy: f64,
    seconds: f64,
}

impl Row {
    fn key(&self) -> (String, usize, String, String, u64) {
        (self.dataset.clone(), self.timesteps, self.encoding.clone(), self.lr_mode.clone(), self.seed)
    }
}

pub fn run(args: WindowsArgs) -> Result<()> {
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let rows_path = args.out.join("runs.jsonl");
    let mut rows: Vec<Row> = match std::fs::read_to_string(&rows_path) {
        Ok(text) => {
            text.lines().filter(|l| !l.trim().is_empty()).map(serde_json::from_str).collect::<Result<_, _>>()?
        }
        Err(_) => Vec::new(),
    };
    for name in &args.datasets {
        let dataset = Dataset::from_name(name)?;
        let dir = args.data_root.join(name);
        let mut train_set = dataset.load(Some(&dir), Split::Train).with_context(|| format!("{}", dir.display()))?;
        let mut test_set = dataset.load(Some(&dir), Split::Test)?;
        train_set.truncate(args.train_limit);
        test_set.truncate(args.test_limit);
        for &t in &args.timesteps {
            for encoding in [InputEncoding::Poisson, InputEncoding::Direct] {
                // At T >= 20 the rule changes nothing, so the paper's rate is the only row.
                let modes: &[&str] = if t < snn_train::STABLE_TIMESTEPS { &["paper", "rule"] } else { &["paper"] };
                for &lr_mode in modes {
                    for seed in 1..=args.seeds {
                        let mut recipe =
                            Recipe { timesteps: t, test_timesteps: t, seed, ..Recipe::paper_mnist().quick() };
                        if lr_mode == "rule" {
                            recipe = recipe.with_short_window_rule();
                        }
                        let encoding_name = if encoding.is_poisson() { "poisson" } else { "direct" };
                        let mut row = Row {
                            dataset: name.clone(),
                            timesteps: t,
                            encoding: encoding_name.into(),
                            lr_mode: lr_mode.into(),
                            seed,
                            lr: recipe.lr,
                            test_accuracy: 0.0,
                            seconds: 0.0,
                        };
                        if rows.iter().any(|r| r.key() == row.key()) {
                            continue;
                        }
                        let mut spec = builtin("lenet")?;
                        spec.input_encoding = encoding;
                        let net =
                            SpikingNetwork::new(spec, &mut stream_rng(seed, Stream::Init), DType::F32, &Device::Cpu)?;
                        let summary = train(&net, &train_set, &test_set, &recipe, None, &mut Silent)?;
                        row.test_accuracy = summary.test_accuracy;
                        row.seconds = summary.seconds;
                        eprintln!(
                            "{name} T={t} {encoding_name} {lr_mode} seed {seed}: {:.2} % in {:.1} s",
                            100.0 * row.test_accuracy,
                            row.seconds
                        );
                        rows.push(row);
                        let lines: String =
                            rows.iter().map(|r| serde_json::to_string(r).unwrap_or_default() + "\n").collect();
                        write_atomic(&rows_path, lines.as_bytes())?;
                        write_atomic(&args.out.join("table.md"), render(&rows).as_bytes())?;
                    }
                }
            }
        }
    }
    println!("{}", render(&rows));
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    snn_models::write_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// The Markdown table of all rows, one line per dataset, window, coding and learning-rate mode.
fn render(rows: &[Row]) -> String {
    let mut groups: Vec<(String, usize, String, String)> = Vec::new();
    for r in rows {
        let g = (r.dataset.clone(), r.timesteps, r.encoding.clone(), r.lr_mode.clone());
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    let mut out = String::from(
        "| dataset | T | input | learning rate | learned (≥ 25 %) | test accuracy, mean ± sd | s per run |\n|---|---|---|---|---|---|---|\n",
    );
    for (dataset, t, encoding, mode) in groups {
        let runs: Vec<&Row> = rows
            .iter()
            .filter(|r| r.dataset == dataset && r.timesteps == t && r.encoding == encoding && r.lr_mode == mode)
            .collect();
        let n = runs.len() as f64;
        let accs: Vec<f64> = runs.iter().map(|r| 100.0 * r.test_accuracy).collect();
        let mean = accs.iter().sum::<f64>() / n;
        let sd = (accs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
        let learned = runs.iter().filter(|r| r.test_accuracy >= LEARNED).count();
        let secs = runs.iter().map(|r| r.seconds).sum::<f64>() / n;
        // Shortest decimal that identifies the rate (the rule's products carry binary noise in the last digits).
        let rate = format!("{:.6}", runs[0].lr).trim_end_matches('0').to_string();
        let lr = format!("{mode} ({rate})");
        let _ = writeln!(
            out,
            "| {dataset} | {t} | {encoding} | {lr} | {learned} of {} | {mean:.2} ± {sd:.2} % | {secs:.1} |",
            runs.len()
        );
    }
    out
}
