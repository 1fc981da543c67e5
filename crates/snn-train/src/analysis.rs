//! Sparse event-based computation: spikes, synaptic operations and energy of a spiking network, against
//! the ANN of the same architecture.
//!
//! Conventions (stated with every report, see [`SparsityReport::assumptions`]):
//!
//! * **SNN synaptic operations** of a weight layer `l`: `AC_l = Σ_t Σ_i |o_i(t)| · fanout_i(l)`, one accumulate
//!   per spike and outgoing synapse; `|·|` because signed input spikes (−1) cost the same. The fan-out of an
//!   input position is exact, borders and strides included. Pooling neurons receive one accumulate per input
//!   spike inside a pooling window; a residual shortcut adds its own ACs (1×1 conv: its fan-out; identity
//!   subsampling: one per kept spike).
//! * **ANN operations**: `MAC_l = outputs(l) · fan-in(l)` per image (shortcut 1×1 convolutions included;
//!   pooling and identity shortcuts count 0 MACs).
//! * **Energy**: counts times the energy per operation, by default 0.9 pJ per 32-bit float AC and 4.6 pJ per
//!   32-bit float MAC (45 nm CMOS, Horowitz, ISSCC 2014). Optionally every membrane update of every neuron
//!   at every step counts as one more AC. Memory access and spike routing are not counted.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use snn_data::{Batches, Samples};
use snn_models::{spike_counts, Engine, ForwardOptions, ForwardOutput, LayerSpec, Masks, ShortcutKind, SpikingNetwork};

use crate::loss::count_correct;
use crate::trainer::{check_dataset, encode, ActivityTally, Stream};
use crate::{Error, Result};

/// Energy per operation and what to count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EnergyModel {
    /// Energy of one accumulate, in picojoules.
    pub ac_pj: f64,
    /// Energy of one multiply-accumulate, in picojoules.
    pub mac_pj: f64,
    /// Count one AC per neuron membrane update per time step in the SNN.
    pub count_neuron_updates: bool,
}

impl Default for EnergyModel {
    /// 45 nm CMOS, 32-bit float: AC 0.9 pJ, MAC 4.6 pJ (Horowitz, ISSCC 2014); neuron updates not counted.
    fn default() -> Self {
        Self { ac_pj: 0.9, mac_pj: 4.6, count_neuron_updates: false }
    }
}

impl EnergyModel {
    /// Checks that the energies are finite and non-negative.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("AC energy", self.ac_pj), ("MAC energy", self.mac_pj)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::Config(format!("{name} must be a finite, non-negative number of pJ, got {v}")));
            }
        }
        Ok(())
    }
}

/// Activity and cost of one layer, per image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerAnalysis {
    /// Layer name.
    pub layer: String,
    /// `conv`, `fc`, `pool` or `readout`.
    pub kind: String,
    /// Neurons per sample.
    pub neurons: usize,
    /// Spikes per neuron over the window (not for the readout, which does not spike).
    pub spikes_per_neuron: Option<f64>,
    /// Spikes per neuron per step.
    pub firing_rate: Option<f64>,
    /// Share of neuron positions that never fired on any evaluated image.
    pub dead_fraction: Option<f64>,
    /// Input spikes received per image over the window (`Σ |spike|`, shortcut inputs included).
    pub input_spikes: f64,
    /// SNN accumulates per image.
    pub snn_ac: f64,
    /// ANN multiply-accumulates per image.
    pub ann_mac: f64,
    /// Membrane updates per image (`neurons · T`).
    pub neuron_updates: f64,
}

/// Whole-network totals per image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// SNN accumulates (synaptic operations), plus neuron updates when the energy model counts them.
    pub snn_ac: f64,
    /// ANN multiply-accumulates.
    pub ann_mac: f64,
    /// `snn_ac / ann_mac`.
    pub ac_per_mac: f64,
    /// SNN energy in picojoules.
    pub snn_energy_pj: f64,
    /// ANN energy in picojoules.
    pub ann_energy_pj: f64,
    /// `ann_energy / snn_energy`: how many times less energy the SNN needs.
    pub energy_gain: f64,
}

/// The spike trains of one sample in one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Raster {
    /// Layer name.
    pub layer: String,
    /// Neurons in the layer.
    pub neurons: usize,
    /// Steps in the window.
    pub timesteps: usize,
    /// `(step, neuron)` of every spike.
    pub events: Vec<(u32, u32)>,
}

/// The sparsity analysis of a network on a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SparsityReport {
    /// Model name.
    pub model: String,
    /// Images evaluated.
    pub images: usize,
    /// Time steps per image.
    pub timesteps: usize,
    /// Top-1 accuracy on those images.
    pub accuracy: f64,
    /// Per layer, in network order.
    pub layers: Vec<LayerAnalysis>,
    /// Totals per image.
    pub totals: Totals,
    /// The energy model used.
    pub energy: EnergyModel,
    /// The counting conventions, in words; print them with any figure.
    pub assumptions: Vec<String>,
    /// Spike raster of the first image in the requested layer, if any.
    pub raster: Option<Raster>,
}

/// Fan-out of every input position `(h, w)` of a window-sliding map (convolution, pooling, subsampling):
/// the number of output positions whose window covers it, `count_h(h) · count_w(w)`, row-major `[H, W]`.
pub fn spatial_fanout(
    in_hw: (usize, usize),
    out_hw: (usize, usize),
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Vec<f64> {
    let count = |len: usize, out: usize| -> Vec<f64> {
        let mut c = vec![0.0; len];
        for o in 0..out {
            for k in 0..kernel {
                let pos = (o * stride + k) as isize - padding as isize;
                if pos >= 0 && (pos as usize) < len {
                    c[pos as usize] += 1.0;
                }
            }
        }
        c
    };
    let (ch, cw) = (count(in_hw.0, out_hw.0), count(in_hw.1, out_hw.1));
    ch.iter().flat_map(|&a| cw.iter().map(move |&b| a * b)).collect()
}

/// One synaptic projection: which window it reads and how many synapses each input position drives.
struct Projection {
    source: String,
    /// Fan-out per input element (`[C·H·W]` or `[N]`).
    fanout: Vec<f64>,
}

fn projections(net: &SpikingNetwork, layer: &LayerSpec) -> Result<Vec<Projection>> {
    let shape = |name: &str| -> Result<Vec<usize>> {
        net.layer_shape(name)
            .map(<[usize]>::to_vec)
            .or_else(|| (name == "input").then(|| net.spec().input_shape.clone()))
            .ok_or_else(|| Error::Config(format!("unknown layer '{name}'")))
    };
    let conv_like = |src: &str, out: &[usize], k: usize, s: usize, p: usize, per: f64| -> Result<Projection> {
        let input = shape(src)?;
        let map = spatial_fanout((input[1], input[2]), (out[1], out[2]), k, s, p);
        let fanout = (0..input[0]).flat_map(|_| map.iter().map(|f| f * per)).collect();
        Ok(Projection { source: src.to_string(), fanout })
    };
    let out = shape(layer.name())?;
    Ok(match layer {
        LayerSpec::Conv(c) => {
            let mut v = vec![conv_like(&c.input, &out, c.kernel, c.stride, c.padding, c.out_channels as f64)?];
            if let Some(sc) = &c.shortcut {
                let per = if sc.kind == ShortcutKind::Conv1x1 { c.out_channels as f64 } else { 1.0 };
                v.push(conv_like(&sc.input, &out, 1, sc.stride, 0, per)?);
            }
            v
        }
        LayerSpec::Pool(p) => vec![conv_like(&p.input, &out, p.kernel, p.stride, 0, 1.0)?],
        LayerSpec::Fc(f) => {
            vec![Projection { source: f.input.clone(), fanout: vec![f.out_features as f64; f.in_features] }]
        }
        LayerSpec::Readout(r) => {
            vec![Projection { source: r.input.clone(), fanout: vec![r.out_features as f64; r.in_features] }]
        }
    })
}

/// Spikes of every neuron position of a window `[T, B, ...]`, counted by magnitude (signed input spikes
/// count once each) and summed over the steps and the batch.
pub fn window_counts(window: &Tensor) -> Result<Vec<f64>> {
    Ok(spike_counts(&window.abs()?)?.flatten_all()?.to_vec1::<f64>()?)
}

/// Input spikes received and synaptic operations (ACs) of every layer of `net`, in spec order, given the
/// per-neuron spike counts ([`window_counts`]) of the input (`"input"`) and of every spiking layer, as its
/// consumers receive them. Synaptic operations are linear in the counts, so counts summed over any number of
/// batches give the summed operations.
pub fn synaptic_ops(net: &SpikingNetwork, counts: &HashMap<&str, Vec<f64>>) -> Result<Vec<(f64, f64)>> {
    let mut out = Vec::with_capacity(net.spec().layers.len());
    for layer in &net.spec().layers {
        let (mut spikes, mut ops) = (0.0, 0.0);
        for p in projections(net, layer)? {
            let c = counts
                .get(p.source.as_str())
                .ok_or_else(|| Error::Config(format!("no spike counts for '{}'", p.source)))?;
            if c.len() != p.fanout.len() {
                return Err(Error::Config(format!(
                    "spike counts of '{}' cover {} neurons per sample, expected {}",
                    p.source,
                    c.len(),
                    p.fanout.len()
                )));
            }
            spikes += c.iter().sum::<f64>();
            ops += c.iter().zip(&p.fanout).map(|(c, f)| c * f).sum::<f64>();
        }
        out.push((spikes, ops));
    }
    Ok(out)
}

/// Runs `net` over `data` at `timesteps` steps and measures spikes, synaptic operations and energy.
///
/// Input spikes come from the per-sample [`Stream::EvalInput`] generators of `seed`, so for the same seed the
/// accuracy equals that of [`crate::evaluate`], at any batch size. `raster_layer` names a spiking layer whose spike trains of
/// the first image are returned.
pub fn analyse(
    net: &SpikingNetwork,
    data: &Samples,
    timesteps: usize,
    batch_size: usize,
    seed: u64,
    energy: EnergyModel,
    raster_layer: Option<&str>,
) -> Result<SparsityReport> {
    check_dataset(net, data, "test")?;
    energy.validate()?;
    if timesteps == 0 || batch_size == 0 {
        return Err(Error::Config("timesteps and batch size must be at least 1".into()));
    }
    let spec = net.spec();
    if let Some(name) = raster_layer {
        let spiking = spec.layers.iter().any(|l| l.name() == name && !matches!(l, LayerSpec::Readout(_)));
        if !spiking {
            return Err(Error::Config(format!("'{name}' is not a spiking layer of model '{}'", spec.name)));
        }
    }
    let observed = observe(net, data, timesteps, batch_size, seed, raster_layer)?;
    let layers = layer_analyses(net, &observed, data.len() as f64, timesteps)?;
    let totals = Totals::of(&layers, &energy);
    Ok(SparsityReport {
        model: spec.name.clone(),
        images: data.len(),
        timesteps,
        accuracy: observed.correct as f64 / data.len() as f64,
        layers,
        totals,
        energy,
        assumptions: assumptions(&energy, timesteps),
        raster: observed.raster,
    })
}

/// What one event-driven pass over a dataset observes.
struct Observed {
    /// Correct predictions.
    correct: usize,
    /// Per-layer spike counts per neuron, summed over the dataset.
    tally: ActivityTally,
    /// Input spikes per input position (by magnitude), summed over the dataset.
    input_counts: Vec<f64>,
    /// The raster of the first sample, when asked for.
    raster: Option<Raster>,
}

/// Runs the dataset through the network (event-driven, no masks) and counts its spikes; the first batch also
/// keeps `raster_layer`'s spike window for the raster of its first sample.
fn observe(
    net: &SpikingNetwork,
    data: &Samples,
    timesteps: usize,
    batch_size: usize,
    seed: u64,
    raster_layer: Option<&str>,
) -> Result<Observed> {
    let mut observed = Observed { correct: 0, tally: ActivityTally::default(), input_counts: Vec::new(), raster: None };
    for idx in Batches::new::<rand_chacha::ChaCha8Rng>(data.len(), batch_size, None)? {
        let (x, labels) = encode(net, data, &idx, timesteps, (seed, Stream::EvalInput, 0))?;
        // Spike windows are kept only for the batch that supplies the raster.
        let keep_spikes = observed.raster.is_none() && raster_layer.is_some();
        let opts = ForwardOptions { track_gradients: false, keep_spikes, engine: Engine::Sparse };
        let out = net.forward(&x, &Masks::new(), opts)?;
        observed.correct += count_correct(&out.output, &labels)?;
        observed.tally.add(&out, idx.len(), timesteps)?;
        let batch_counts = window_counts(&x)?;
        if observed.input_counts.is_empty() {
            observed.input_counts = batch_counts;
        } else {
            observed.input_counts.iter_mut().zip(batch_counts).for_each(|(a, c)| *a += c);
        }
        if let (true, Some(name)) = (keep_spikes, raster_layer) {
            observed.raster = Some(Raster::of_first_sample(net, &out, name, timesteps)?);
        }
    }
    Ok(observed)
}

impl Raster {
    /// The spikes of the first sample of a batch in `layer`, from a forward pass that kept its window.
    fn of_first_sample(net: &SpikingNetwork, out: &ForwardOutput, layer: &str, timesteps: usize) -> Result<Self> {
        let window = out
            .activity
            .iter()
            .find(|a| a.name == layer)
            .and_then(|a| a.spikes.as_ref())
            .ok_or_else(|| Error::Config(format!("no spike window for '{layer}'")))?;
        let s = window.narrow(1, 0, 1)?.flatten_from(1)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let events = s
            .iter()
            .enumerate()
            .flat_map(|(t, row)| {
                row.iter().enumerate().filter(|(_, &v)| v != 0.0).map(move |(n, _)| (t as u32, n as u32))
            })
            .collect();
        let neurons = net.layer_shape(layer).map_or(0, |s| s.iter().product());
        Ok(Self { layer: layer.to_string(), neurons, timesteps, events })
    }
}

/// Per-layer spikes, synaptic operations and the dense MACs of the same layers, per image.
fn layer_analyses(
    net: &SpikingNetwork,
    observed: &Observed,
    images: f64,
    timesteps: usize,
) -> Result<Vec<LayerAnalysis>> {
    let spec = net.spec();
    // No masks at test time, so the forward pass's per-neuron counts are what each consumer receives.
    let mut counts: HashMap<&str, Vec<f64>> =
        observed.tally.layers.iter().map(|(name, c)| (name.as_str(), c.clone())).collect();
    counts.insert("input", observed.input_counts.clone());
    let (input_spikes, ac): (Vec<f64>, Vec<f64>) = synaptic_ops(net, &counts)?.into_iter().unzip();
    let rates = observed.tally.rates();
    let macs: HashMap<String, u64> = spec.dense_macs()?.into_iter().collect();
    let mut layers = Vec::new();
    for (l, layer) in spec.layers.iter().enumerate() {
        let name = layer.name();
        let neurons: usize = net.layer_shape(name).map_or(0, |s| s.iter().product());
        let rate = rates.iter().find(|r| r.layer == name);
        layers.push(LayerAnalysis {
            layer: name.to_string(),
            kind: match layer {
                LayerSpec::Conv(_) => "conv",
                LayerSpec::Fc(_) => "fc",
                LayerSpec::Pool(_) => "pool",
                LayerSpec::Readout(_) => "readout",
            }
            .to_string(),
            neurons,
            spikes_per_neuron: rate.map(|r| r.spikes_per_neuron),
            firing_rate: rate.map(|r| r.firing_rate),
            dead_fraction: rate.map(|r| r.dead_fraction),
            input_spikes: input_spikes[l] / images,
            snn_ac: ac[l] / images,
            ann_mac: macs.get(name).copied().unwrap_or(0) as f64,
            neuron_updates: (neurons * timesteps) as f64,
        });
    }
    Ok(layers)
}

impl Totals {
    /// The network's totals from its layers under an energy model.
    fn of(layers: &[LayerAnalysis], energy: &EnergyModel) -> Self {
        let synops: f64 = layers.iter().map(|l| l.snn_ac).sum();
        let updates: f64 = layers.iter().map(|l| l.neuron_updates).sum();
        let snn_ac = synops + if energy.count_neuron_updates { updates } else { 0.0 };
        let ann_mac: f64 = layers.iter().map(|l| l.ann_mac).sum();
        let (snn_e, ann_e) = (snn_ac * energy.ac_pj, ann_mac * energy.mac_pj);
        Self {
            snn_ac,
            ann_mac,
            ac_per_mac: snn_ac / ann_mac,
            snn_energy_pj: snn_e,
            ann_energy_pj: ann_e,
            energy_gain: ann_e / snn_e,
        }
    }
}

fn assumptions(e: &EnergyModel, timesteps: usize) -> Vec<String> {
    vec![
        format!("SNN: one accumulate (AC) per input spike (|±1|) per outgoing synapse, over T = {timesteps} steps; exact fan-out at borders and strides"),
        "pooling IF neurons: one AC per input spike in a pooling window; identity shortcuts: one AC per kept spike".into(),
        "ANN of the same architecture: one MAC per connection per image; pooling and identity shortcuts count 0".into(),
        format!(
            "energy: {} pJ per AC, {} pJ per MAC (defaults: 32-bit float in 45 nm CMOS, Horowitz ISSCC 2014)",
            e.ac_pj, e.mac_pj
        ),
        if e.count_neuron_updates {
            "neuron membrane updates (one per neuron per step) are counted as ACs".into()
        } else {
            "neuron membrane updates are not counted (use --count-neuron-updates)".into()
        },
        "memory access, data movement and spike routing are not counted".into(),
    ]
}
