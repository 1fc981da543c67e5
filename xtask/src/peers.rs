//! `cargo xtask bench --peers PYTHON --peers-script FILE`: the same network, batch, T and thread count timed
//! in plain PyTorch, snnTorch and SpikingJelly by an external script, run as child processes interleaved with
//! our own measurements, so the ratios come from one run on one machine.
//!
//! The script is called as `PYTHON FILE --impl IMPL --model {mnist|vgg9} --batch B --timesteps T --mode
//! {train|infer} --steps N --threads K` and must end with one line of `key=value` pairs holding at least
//! `sec_per_step` (median), `sec_min`, `peak_rss_mb` and `rss_base_mb`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;

/// The implementations the peer script offers.
pub const IMPLS: [&str; 3] = ["plain", "snntorch", "spikingjelly"];

/// Where the peers come from.
pub struct Peers {
    /// Python interpreter with torch, snntorch and spikingjelly.
    pub python: PathBuf,
    /// The benchmark script.
    pub script: PathBuf,
}

/// One peer measurement.
#[derive(Debug, Clone, Serialize)]
pub struct PeerRow {
    /// Implementation name.
    pub implementation: String,
    /// `train` or `infer`.
    pub mode: String,
    /// Time steps.
    pub timesteps: usize,
    /// Median seconds per step.
    pub median_s: f64,
    /// Fastest step.
    pub min_s: f64,
    /// Peak RSS minus the RSS before the first step (MB): the step's own memory.
    pub step_mb: f64,
}

impl Peers {
    /// Times one implementation; `extra` options go to the script as they are (`--weights`, `--pixels`).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        implementation: &str,
        model: &str,
        batch: usize,
        timesteps: usize,
        mode: &str,
        steps: usize,
        threads: usize,
        extra: &[String],
    ) -> Result<PeerRow> {
        let peer_model = match model {
            "lenet" => "mnist",
            "vgg9" => "vgg9",
            other => bail!("the peer script has no '{other}' network (lenet and vgg9 only)"),
        };
        let args: Vec<String> = vec![
            script_arg(&self.script)?,
            "--impl".into(),
            implementation.into(),
            "--model".into(),
            peer_model.into(),
            "--batch".into(),
            batch.to_string(),
            "--timesteps".into(),
            timesteps.to_string(),
            "--mode".into(),
            mode.into(),
            "--steps".into(),
            steps.to_string(),
            "--threads".into(),
            threads.to_string(),
        ];
        let args: Vec<String> = args.into_iter().chain(extra.iter().cloned()).collect();
        let line = format!("{} {}", self.python.display(), args.join(" "));
        eprintln!("$ {line}");
        let out = Command::new(&self.python).args(&args).output().with_context(|| format!("running {line}"))?;
        ensure!(out.status.success(), "{line} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().rev().find(|l| l.contains("sec_per_step=")).context("no result line")?;
        let fields: HashMap<&str, &str> = last.split_whitespace().filter_map(|kv| kv.split_once('=')).collect();
        let num = |key: &str| -> Result<f64> {
            fields.get(key).and_then(|v| v.parse().ok()).with_context(|| format!("{line}: no numeric '{key}'"))
        };
        Ok(PeerRow {
            implementation: implementation.into(),
            mode: mode.into(),
            timesteps,
            median_s: num("sec_per_step")?,
            min_s: num("sec_min")?,
            step_mb: num("peak_rss_mb")? - num("rss_base_mb")?,
        })
    }
}

fn script_arg(script: &Path) -> Result<String> {
    ensure!(script.is_file(), "peer script {} not found", script.display());
    Ok(script.display().to_string())
}
