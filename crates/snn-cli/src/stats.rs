//! `snn-cli stats`: spikes, synaptic operations and energy of a trained network.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use snn_data::mnist::Split;
use snn_train::analysis::SparsityReport;
use snn_train::{analyse, EnergyModel};

use crate::plots::{self, SweepPoint};
use crate::{load_network, load_split, Common};

#[derive(Args)]
pub struct StatsArgs {
    /// Checkpoint file (safetensors written by `snn-cli train`).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Time steps per image (default: the test time steps stored in the checkpoint, else 100).
    #[arg(long)]
    timesteps: Option<usize>,
    /// Also evaluate at these time steps (comma-separated) and report accuracy and ACs at each.
    #[arg(long, value_delimiter = ',')]
    timesteps_sweep: Vec<usize>,
    /// Batch size of the evaluation.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Seed of the input spike draws (the same for every T of a sweep).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Energy of one accumulate, picojoules (default: 32-bit float, 45 nm CMOS).
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    e_ac: f64,
    /// Energy of one multiply-accumulate, picojoules (default: 32-bit float, 45 nm CMOS).
    #[arg(long, default_value_t = 4.6, allow_negative_numbers = true)]
    e_mac: f64,
    /// Count every neuron's membrane update at every step as one more AC.
    #[arg(long)]
    count_neuron_updates: bool,
    /// Print CSV instead of a table.
    #[arg(long, conflicts_with = "json")]
    csv: bool,
    /// Write raster.png, firing_rates.png, accuracy_vs_timesteps.png and ac_vs_mac.png into this folder.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Spiking layer shown in the raster plot (default: the first spiking layer).
    #[arg(long)]
    raster_layer: Option<String>,
    #[command(flatten)]
    common: Common,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".to_string(), |x| format!("{x:.digits$}"))
}

fn sci(x: f64) -> String {
    format!("{x:.3e}")
}

fn table(r: &SparsityReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<10} {:<7} {:>9} {:>13} {:>10} {:>7} {:>12} {:>11} {:>11} {:>8}",
        "layer", "kind", "neurons", "spikes/neuron", "rate/step", "dead%", "in spikes", "SNN AC", "ANN MAC", "AC/MAC"
    );
    for l in &r.layers {
        let ratio = if l.ann_mac > 0.0 { format!("{:.4}", l.snn_ac / l.ann_mac) } else { "-".into() };
        let _ = writeln!(
            s,
            "{:<10} {:<7} {:>9} {:>13} {:>10} {:>7} {:>12.1} {:>11} {:>11} {:>8}",
            l.layer,
            l.kind,
            l.neurons,
            opt(l.spikes_per_neuron, 4),
            opt(l.firing_rate, 5),
            opt(l.dead_fraction.map(|d| 100.0 * d), 1),
            l.input_spikes,
            sci(l.snn_ac),
            sci(l.ann_mac),
            ratio
        );
    }
    let t = &r.totals;
    let _ = writeln!(s, "{:<85} {:>11} {:>11} {:>8.4}", "total per image", sci(t.snn_ac), sci(t.ann_mac), t.ac_per_mac);
    let _ = writeln!(
        s,
        "\nenergy per image: SNN {:.3} µJ, ANN {:.3} µJ -> the SNN needs {:.2}x less",
        t.snn_energy_pj / 1e6,
        t.ann_energy_pj / 1e6,
        t.energy_gain
    );
    let _ = writeln!(s, "accuracy {:.2}% on {} images at T = {}", 100.0 * r.accuracy, r.images, r.timesteps);
    let _ = writeln!(s, "assumptions:");
    for a in &r.assumptions {
        let _ = writeln!(s, "  - {a}");
    }
    s
}

fn csv(r: &SparsityReport, sweep: &[SweepPoint]) -> String {
    let mut s = String::from(
        "layer,kind,neurons,spikes_per_neuron,firing_rate,dead_fraction,input_spikes,snn_ac,ann_mac,neuron_updates\n",
    );
    let f = |v: Option<f64>| v.map_or(String::new(), |x| x.to_string());
    for l in &r.layers {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{}",
            l.layer,
            l.kind,
            l.neurons,
            f(l.spikes_per_neuron),
            f(l.firing_rate),
            f(l.dead_fraction),
            l.input_spikes,
            l.snn_ac,
            l.ann_mac,
            l.neuron_updates
        );
    }
    let t = &r.totals;
    let _ = writeln!(s, "total,,,,,,,{},{},", t.snn_ac, t.ann_mac);
    if !sweep.is_empty() {
        s.push_str("\ntimesteps,accuracy,snn_ac,snn_energy_pj\n");
        for p in sweep {
            let _ = writeln!(s, "{},{},{},{}", p.timesteps, p.accuracy, p.snn_ac, p.snn_energy_pj);
        }
    }
    for a in &r.assumptions {
        let _ = writeln!(s, "# {a}");
    }
    s
}

pub fn run(a: StatsArgs) -> Result<()> {
    let (net, timesteps) = load_network(&a.common, &a.checkpoint, a.timesteps)?;
    if timesteps == 0 || a.timesteps_sweep.contains(&0) {
        bail!("time steps must be at least 1");
    }
    let energy = EnergyModel { ac_pj: a.e_ac, mac_pj: a.e_mac, count_neuron_updates: a.count_neuron_updates };
    energy.validate()?;
    let data = load_split(&a.common, net.spec(), Split::Test, a.common.test_limit)?;
    let raster_layer = match (&a.raster_layer, &a.plot) {
        (Some(l), _) => Some(l.clone()),
        (None, Some(_)) => net.spec().layers.first().map(|l| l.name().to_string()),
        (None, None) => None,
    };
    let report = analyse(&net, &data, timesteps, a.batch_size, a.seed, energy, raster_layer.as_deref())?;

    let mut sweep_ts = a.timesteps_sweep.clone();
    if sweep_ts.is_empty() && a.plot.is_some() {
        sweep_ts = vec![(timesteps / 4).max(1), (timesteps / 2).max(1), timesteps];
    }
    sweep_ts.sort_unstable();
    sweep_ts.dedup();
    let mut sweep = Vec::new();
    for &t in &sweep_ts {
        let r =
            if t == timesteps { report.clone() } else { analyse(&net, &data, t, a.batch_size, a.seed, energy, None)? };
        if !a.common.json && !a.csv {
            eprintln!("T = {t}: accuracy {:.2}%", 100.0 * r.accuracy);
        }
        sweep.push(SweepPoint {
            timesteps: t,
            accuracy: r.accuracy,
            snn_ac: r.totals.snn_ac,
            snn_energy_pj: r.totals.snn_energy_pj,
        });
    }
    let plots = match &a.plot {
        Some(dir) => plots::write_all(dir, &report, &sweep)?,
        None => Vec::new(),
    };

    if a.common.json {
        let mut v = serde_json::to_value(&report)?;
        if let Some(obj) = v.as_object_mut() {
            obj.remove("raster");
            obj.insert("sweep".into(), serde_json::to_value(&sweep)?);
            obj.insert("plots".into(), serde_json::to_value(&plots)?);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if a.csv {
        print!("{}", csv(&report, &sweep));
    } else {
        print!("{}", table(&report));
        if !sweep.is_empty() {
            println!("\n{:>6} {:>9} {:>14} {:>14}", "T", "accuracy", "SNN AC/image", "SNN µJ/image");
            for p in &sweep {
                println!(
                    "{:>6} {:>8.2}% {:>14} {:>14.4}",
                    p.timesteps,
                    100.0 * p.accuracy,
                    sci(p.snn_ac),
                    p.snn_energy_pj / 1e6
                );
            }
        }
        for p in &plots {
            println!("wrote {}", p.display());
        }
    }
    Ok(())
}
