//! The training loop and evaluation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use snn_data::augment::random_crop_flip;
use snn_data::{Batches, Samples};
use snn_models::{
    checkpoint_bytes, parse_checkpoint, save_checkpoint, temp_path, write_atomic, Engine, ForwardOptions,
    ForwardOutput, Gradients, LayerActivity, LayerSpec, Masks, Phase, SpikingNetwork, Work,
};

use crate::collective::{Collective, Single};
use crate::loss::{count_correct, sum_squared_error};
use crate::{Error, Recipe, Result, Sgd};

/// The independent random streams of a run, all derived from the run seed. Changing how much one stream
/// is used (e.g. the batch size) never shifts another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Weight initialisation.
    Init = 0,
    /// Order of the training samples.
    Shuffle = 1,
    /// Poisson input spikes during training.
    TrainInput = 2,
    /// Dropout masks.
    Dropout = 3,
    /// Poisson input spikes during evaluation (restarted at every evaluation).
    EvalInput = 4,
    /// Data augmentation (random crops and flips).
    Augment = 5,
    /// Input spikes of the activity probe before training ([`probe_activity`]).
    Probe = 6,
}

/// A ChaCha8 generator for one stream of a run.
pub fn stream_rng(seed: u64, stream: Stream) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream as u64);
    rng
}

/// The generator of one sample's draws in one stream: keyed by the run seed, the stream, the epoch (0
/// outside training) and the sample's index in its dataset.
///
/// Input spikes, dropout masks, crops and flips are drawn per sample from these, so they depend on nothing
/// else: not on the batch size, not on which samples share the batch, not on which process draws them. A
/// checkpoint therefore scores the same at any evaluation batch size, and a batch split across processes
/// draws what one process would have drawn.
pub fn sample_rng(seed: u64, stream: Stream, epoch: u64, sample: u64) -> ChaCha8Rng {
    // SplitMix64 finaliser: every key word depends on the seed and on all the parts before it.
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let mut key = [0u8; 32];
    let mut state = seed;
    for (word, part) in key.chunks_exact_mut(8).zip([stream as u64, epoch, sample, u64::MAX]) {
        state = mix(state.wrapping_add(0x9E37_79B9_7F4A_7C15) ^ mix(part));
        word.copy_from_slice(&state.to_le_bytes());
    }
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(stream as u64);
    rng
}

/// One [`sample_rng`] per sample index of a batch.
fn sample_rngs(seed: u64, stream: Stream, epoch: u64, idx: &[usize]) -> Vec<ChaCha8Rng> {
    idx.iter().map(|&i| sample_rng(seed, stream, epoch, i as u64)).collect()
}

/// Average activity of one spiking layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRate {
    /// Layer name.
    pub layer: String,
    /// Spikes per neuron over the window, averaged over neurons and samples.
    pub spikes_per_neuron: f64,
    /// Spikes per neuron per time step.
    pub firing_rate: f64,
    /// Share of neuron positions that never fired, for any sample, at any step.
    pub dead_fraction: f64,
}

/// Accumulates per-layer spike counts over batches.
#[derive(Debug, Default)]
pub(crate) struct ActivityTally {
    /// Per layer: name and per-neuron spike counts (summed over steps and samples).
    pub(crate) layers: Vec<(String, Vec<f64>)>,
    pub(crate) samples: usize,
    pub(crate) timesteps: usize,
}

impl ActivityTally {
    /// Adds one batch's counts; returns each layer's spikes per neuron over the window in that batch.
    pub(crate) fn add(&mut self, out: &ForwardOutput, batch: usize, timesteps: usize) -> Result<Vec<f64>> {
        if self.layers.is_empty() {
            self.layers = out.activity.iter().map(|a| (a.name.clone(), vec![0.0; a.neurons])).collect();
        }
        let mut per_neuron = Vec::with_capacity(out.activity.len());
        for ((_, counts), a) in self.layers.iter_mut().zip(&out.activity) {
            let c = a.neuron_counts.flatten_all()?.to_vec1::<f64>()?;
            per_neuron.push(c.iter().sum::<f64>() / (a.neurons.max(1) * batch.max(1)) as f64);
            counts.iter_mut().zip(c).for_each(|(acc, v)| *acc += v);
        }
        self.samples += batch;
        self.timesteps = timesteps;
        Ok(per_neuron)
    }

    pub(crate) fn rates(&self) -> Vec<LayerRate> {
        self.layers
            .iter()
            .map(|(name, counts)| {
                let neurons = counts.len().max(1) as f64;
                let per_neuron = counts.iter().sum::<f64>() / (neurons * self.samples.max(1) as f64);
                LayerRate {
                    layer: name.clone(),
                    spikes_per_neuron: per_neuron,
                    firing_rate: per_neuron / self.timesteps.max(1) as f64,
                    dead_fraction: counts.iter().filter(|&&c| c == 0.0).count() as f64 / neurons,
                }
            })
            .collect()
    }
}

/// Result of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// Correct top-1 predictions.
    pub correct: usize,
    /// Samples evaluated.
    pub total: usize,
    /// Fraction correct.
    pub accuracy: f64,
    /// Time steps per sample.
    pub timesteps: usize,
    /// Per-layer activity.
    pub layers: Vec<LayerRate>,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// The input window of the samples `idx` of `data`, each drawing from its own generator of the `stream` of
/// `seed` at `epoch` ([`sample_rng`]).
pub(crate) fn encode(
    net: &SpikingNetwork,
    data: &Samples,
    idx: &[usize],
    steps: usize,
    (seed, stream, epoch): (u64, Stream, u64),
) -> Result<(Tensor, Vec<u32>)> {
    encode_augmented(net, data, idx, steps, &mut sample_rngs(seed, stream, epoch, idx), None)
}

/// The input window `[T, B, C, H, W]` of a batch: coded images (augmented first when augmentation
/// generators are given), or the binned frames of event recordings, which are spikes already and are neither
/// augmented nor re-coded. `rngs` and `augment` hold one generator per sample.
fn encode_augmented(
    net: &SpikingNetwork,
    data: &Samples,
    idx: &[usize],
    steps: usize,
    rngs: &mut [ChaCha8Rng],
    augment: Option<&mut [ChaCha8Rng]>,
) -> Result<(Tensor, Vec<u32>)> {
    let images = match data {
        Samples::Images(images) => images,
        Samples::Events(events) => {
            let (frames, labels) = events.frames(idx, steps)?;
            let shape = [&[steps, idx.len()][..], &data.input_shape()[..]].concat();
            let x = Tensor::from_vec(frames, shape, net.device())?.to_dtype(net.dtype())?;
            return Ok((x, labels));
        }
    };
    let (mut pixels, labels) = match augment {
        Some(arngs) => {
            let mut next = arngs.iter_mut();
            images.batch_with(idx, |img| match next.next() {
                Some(arng) => random_crop_flip(img, images.shape(), 4, arng),
                None => img.to_vec(),
            })
        }
        None => images.batch(idx),
    };
    net.spec().normalize(&mut pixels);
    let x = net.spec().encode_input(&pixels, rngs, steps, net.dtype(), net.device())?;
    Ok((x, labels))
}

pub(crate) fn check_dataset(net: &SpikingNetwork, data: &Samples, role: &str) -> Result<()> {
    let spec = net.spec();
    if data.input_shape()[..] != spec.input_shape[..] {
        return Err(Error::Config(format!(
            "{role} samples have shape {:?} but model '{}' expects {:?}",
            data.input_shape(),
            spec.name,
            spec.input_shape
        )));
    }
    if data.classes() > spec.classes() {
        return Err(Error::Config(format!(
            "{role} set has {} classes but the model outputs {}",
            data.classes(),
            spec.classes()
        )));
    }
    if data.is_empty() {
        return Err(Error::Config(format!("{role} set is empty")));
    }
    Ok(())
}

/// Evaluates top-1 accuracy over `data` with `timesteps` steps per sample. Every sample's input spikes are
/// drawn from its own [`Stream::EvalInput`] generator of `seed` ([`sample_rng`]), so the same checkpoint
/// always gets the same score, at any batch size;
/// `engine` picks dense or event-driven synaptic layers (same predictions up to floating-point rounding).
pub fn evaluate(
    net: &SpikingNetwork,
    data: &Samples,
    timesteps: usize,
    batch_size: usize,
    seed: u64,
    engine: Engine,
    on_batch: &mut dyn FnMut(usize, usize),
) -> Result<EvalResult> {
    evaluate_with(net, data, (timesteps, batch_size, seed), engine, on_batch, &SINGLE)
}

/// [`evaluate`] with the batches dealt out over the ranks of `comm` (batch `b` to rank `b mod size`) and the
/// counts summed: every input draw is keyed by its sample, so the result does not depend on the rank count.
fn evaluate_with(
    net: &SpikingNetwork,
    data: &Samples,
    (timesteps, batch_size, seed): (usize, usize, u64),
    engine: Engine,
    on_batch: &mut dyn FnMut(usize, usize),
    comm: &dyn Collective,
) -> Result<EvalResult> {
    check_dataset(net, data, "test")?;
    if timesteps == 0 || batch_size == 0 {
        return Err(Error::Config("timesteps and batch size must be at least 1".into()));
    }
    let start = Instant::now();
    let mut correct = 0;
    let mut tally = ActivityTally::default();
    let opts = ForwardOptions { engine, ..ForwardOptions::default() };
    for (b, idx) in Batches::new::<ChaCha8Rng>(data.len(), batch_size, None)?.enumerate() {
        if b % comm.size() != comm.rank() {
            continue;
        }
        let (x, labels) = encode(net, data, &idx, timesteps, (seed, Stream::EvalInput, 0))?;
        let out = net.forward(&x, &Masks::new(), opts)?;
        correct += count_correct(&out.output, &labels)?;
        tally.add(&out, idx.len(), timesteps)?;
        on_batch(tally.samples, data.len());
    }
    if comm.size() > 1 {
        if tally.layers.is_empty() {
            tally.layers =
                spiking_layers(net).into_iter().map(|(n, _, shape)| (n, vec![0.0; shape.iter().product()])).collect();
        }
        let mut buf = vec![correct as f64, tally.samples as f64];
        tally.layers.iter().for_each(|(_, c)| buf.extend(c));
        comm.all_reduce_sum(&mut buf)?;
        (correct, tally.samples, tally.timesteps) = (buf[0] as usize, buf[1] as usize, timesteps);
        let mut at = 2;
        for (_, c) in &mut tally.layers {
            let n = c.len();
            c.copy_from_slice(take(&buf, &mut at, n));
        }
    }
    Ok(EvalResult {
        correct,
        total: data.len(),
        accuracy: correct as f64 / data.len() as f64,
        timesteps,
        layers: tally.rates(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The next `n` values of a reduced buffer read front to back, from `*at` on (which moves past them).
fn take<'b>(buf: &'b [f64], at: &mut usize, n: usize) -> &'b [f64] {
    let part = &buf[*at..*at + n];
    *at += n;
    part
}

/// The one-process collective of runs without one.
static SINGLE: Single = Single;

/// The spiking layers in the order of [`ForwardOutput::activity`]: name, whether it is a pooling layer, and
/// its per-sample shape.
fn spiking_layers(net: &SpikingNetwork) -> Vec<(String, bool, Vec<usize>)> {
    net.spec()
        .layers
        .iter()
        .filter(|l| !matches!(l, LayerSpec::Readout(_)))
        .map(|l| {
            let shape = net.layer_shape(l.name()).unwrap_or_default().to_vec();
            (l.name().to_string(), matches!(l, LayerSpec::Pool(_)), shape)
        })
        .collect()
}

/// Spikes per neuron over the window below which a layer counts as nearly silent: fewer than one spike per
/// neuron in twenty windows. So little activity passes almost no error back (the error flows only at spike
/// times), and the layers below it barely learn.
pub const QUIET_SPIKES_PER_NEURON: f64 = 0.05;

/// Every spiking layer's activity on the first `batch_size` samples of `data` at `timesteps` steps, without
/// dropout and without changing anything: the check a run makes before it spends any time training. Input
/// spikes come from the [`Stream::Probe`] stream of `seed`, so the probe never shifts a training stream.
pub fn probe_activity(
    net: &SpikingNetwork,
    data: &Samples,
    timesteps: usize,
    batch_size: usize,
    seed: u64,
) -> Result<Vec<LayerRate>> {
    check_dataset(net, data, "probe")?;
    let idx: Vec<usize> = (0..batch_size.clamp(1, data.len())).collect();
    let (x, _) = encode(net, data, &idx, timesteps, (seed, Stream::Probe, 0))?;
    let out = net.forward(&x, &Masks::new(), ForwardOptions::default())?;
    let mut tally = ActivityTally::default();
    tally.add(&out, idx.len(), timesteps)?;
    Ok(tally.rates())
}

/// A warning about a layer's activity, raised before training or the moment it happens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityWarning {
    /// The layer.
    pub layer: String,
    /// Its spikes per neuron over the window (on the probe batch, or on the batch that raised it).
    pub spikes_per_neuron: f64,
    /// When: before training, or at a training batch.
    pub when: WarningTime,
}

/// When an [`ActivityWarning`] was raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WarningTime {
    /// On the probe batch before the first step ([`probe_activity`]).
    BeforeTraining,
    /// The layer fell below [`QUIET_SPIKES_PER_NEURON`] at this (1-based) epoch and (0-based) batch, after
    /// having been above it.
    Batch {
        /// 1-based epoch.
        epoch: usize,
        /// 0-based batch of the epoch.
        batch: usize,
    },
}

impl std::fmt::Display for ActivityWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let remedy = "the error reaches the layers below only through spikes; more time steps (--timesteps), \
                      direct input coding (--encoding direct) or a smaller learning rate (--lr) keep layers firing";
        match self.when {
            WarningTime::BeforeTraining if self.spikes_per_neuron == 0.0 => {
                write!(f, "layer {} is silent on the first batch (no spikes); {remedy}", self.layer)
            }
            WarningTime::BeforeTraining => write!(
                f,
                "layer {} is nearly silent on the first batch ({:.4} spikes per neuron over the window); {remedy}",
                self.layer, self.spikes_per_neuron
            ),
            WarningTime::Batch { epoch, batch } => write!(
                f,
                "layer {} fell nearly silent at epoch {epoch}, batch {batch} ({:.4} spikes per neuron over the \
                 window); if it stays silent the network stops learning; {remedy}",
                self.layer, self.spikes_per_neuron
            ),
        }
    }
}

/// The warnings of a probe: every layer below [`QUIET_SPIKES_PER_NEURON`].
pub fn quiet_layers(rates: &[LayerRate]) -> Vec<ActivityWarning> {
    rates
        .iter()
        .filter(|r| r.spikes_per_neuron < QUIET_SPIKES_PER_NEURON)
        .map(|r| ActivityWarning {
            layer: r.layer.clone(),
            spikes_per_neuron: r.spikes_per_neuron,
            when: WarningTime::BeforeTraining,
        })
        .collect()
}

/// Metrics of one epoch (one JSON line of `metrics.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean summed-squared-error loss per training sample.
    pub loss: f64,
    /// Training accuracy (on the spikes seen during training, dropout active).
    pub train_accuracy: f64,
    /// Test accuracy after the epoch.
    pub test_accuracy: f64,
    /// Learning rate of the epoch.
    pub lr: f64,
    /// Time steps per training sample in the epoch ([`Recipe::timesteps_at`]; 0 in metrics written before
    /// the field existed).
    #[serde(default)]
    pub timesteps: usize,
    /// Time steps per test sample in the test after the epoch ([`Recipe::test_timesteps`]; 0 in metrics
    /// written before the field existed).
    #[serde(default)]
    pub test_timesteps: usize,
    /// Training throughput.
    pub images_per_sec: f64,
    /// Spikes per neuron per layer during training.
    pub train_spikes: Vec<LayerRate>,
    /// Spikes per neuron per layer during the test.
    pub test_spikes: Vec<LayerRate>,
    /// Batches skipped because their loss or a gradient was not finite
    /// ([`Recipe::skip_nonfinite_batches`]).
    #[serde(default)]
    pub skipped_batches: usize,
    /// Wall time of the epoch, training and test.
    pub seconds: f64,
    /// Data-parallel runs: the ranks, the seconds this rank spent in the per-batch all-reduce (gradients,
    /// counts and flags) and the bytes it contributed to each one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub communication: Option<Communication>,
}

/// What a data-parallel epoch spent communicating (see [`EpochMetrics::communication`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Communication {
    /// Ranks of the run.
    pub ranks: usize,
    /// Seconds in the all-reduce over the epoch's batches (this rank's wait included).
    pub allreduce_seconds: f64,
    /// Bytes of one all-reduce buffer (f64 gradients, loss, counts, flags).
    pub bytes_per_step: usize,
}

/// Progress of the current training batch, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchProgress {
    /// 1-based epoch.
    pub epoch: usize,
    /// Samples trained so far in this epoch.
    pub samples: usize,
    /// Samples in the epoch.
    pub epoch_samples: usize,
    /// Mean loss per sample so far in this epoch.
    pub loss: f64,
    /// Training accuracy so far in this epoch.
    pub accuracy: f64,
    /// Throughput so far in this epoch.
    pub images_per_sec: f64,
}

/// Receives training events (progress bars, logs). Every method has an empty default.
pub trait TrainObserver {
    /// After every training batch.
    fn on_batch(&mut self, _progress: &BatchProgress) {}
    /// During evaluation: samples done out of total.
    fn on_eval(&mut self, _done: usize, _total: usize) {}
    /// After every epoch.
    fn on_epoch(&mut self, _metrics: &EpochMetrics) {}
    /// When a layer is silent or nearly silent before training, or stops firing during it.
    fn on_warning(&mut self, _warning: &ActivityWarning) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl TrainObserver for Silent {}

/// Where a run writes its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFiles {
    /// Weights after the last epoch.
    pub last: PathBuf,
    /// Weights of the epoch with the best test accuracy.
    pub best: PathBuf,
    /// One JSON object per epoch.
    pub metrics: PathBuf,
    /// The resumable run state.
    pub state: PathBuf,
}

impl RunFiles {
    /// The standard file names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            last: dir.join("last.safetensors"),
            best: dir.join("best.safetensors"),
            metrics: dir.join("metrics.jsonl"),
            state: dir.join(STATE_FILE),
        }
    }
}

/// Outcome of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Test accuracy after the last epoch (fraction).
    pub test_accuracy: f64,
    /// Best test accuracy over epochs.
    pub best_test_accuracy: f64,
    /// Epoch of the best test accuracy.
    pub best_epoch: usize,
    /// Epochs trained.
    pub epochs: usize,
    /// Training time steps.
    pub timesteps: usize,
    /// Test time steps.
    pub test_timesteps: usize,
    /// Training images per epoch.
    pub train_images: usize,
    /// Test images.
    pub test_images: usize,
    /// Total wall time.
    pub seconds: f64,
    /// Per-epoch metrics.
    pub history: Vec<EpochMetrics>,
    /// The files written, if an output folder was given.
    pub files: Option<RunFiles>,
}

fn ensure_finite(t: &Tensor, what: &str, epoch: usize, batch: usize) -> Result<f64> {
    let v = t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(Error::NonFinite { what: what.to_string(), epoch, batch })
    }
}

/// Places a non-finite error reported by [`train_step`] at its epoch and batch.
fn locate(e: Error, epoch: usize, batch: usize) -> Error {
    match e {
        Error::NonFinite { what, .. } => Error::NonFinite { what, epoch, batch },
        other => other,
    }
}

/// One optimisation step on one mini-batch of input spikes `x` `[T, B, ...]`: forward pass with the given
/// dropout masks, summed squared error against `labels`, spike-based backward pass, SGD update.
///
/// Returns the forward output and the loss. Fails without updating anything when the loss or a gradient is
/// not finite (the error's epoch and batch are 0; [`train`] fills them in).
///
/// The step takes the input window: on the CPU it is released after the forward pass when the caller keeps
/// no other handle to it (the tape holds rate-coded spikes as bits), so the backward pass does not hold the
/// window's floats. On the CPU a long window runs in micro-batches ([`train_step_micro_batched`] with the
/// network's choice).
pub fn train_step(
    net: &SpikingNetwork,
    opt: &mut Sgd,
    x: Tensor,
    labels: &[u32],
    masks: &Masks,
) -> Result<(ForwardOutput, f64)> {
    train_step_micro_batched(net, opt, x, labels, masks, None)
}

/// [`train_step`] with the batch's passes run over micro-batches of at most `micro_batch` samples on the
/// CPU ([`SpikingNetwork::taped_gradients`]): the same update (up to the order of the sums over samples), while
/// what the step holds per sample (its tape above all, which grows with the window) is held for one
/// micro-batch at a time. `None` takes the network's choice for the window and batch
/// ([`SpikingNetwork::micro_batch_for`]: the whole batch unless its state per sample outgrows
/// [`snn_models::MICRO_BATCH_BYTES`]), which is what [`train_step`] does; a micro-batch at least as large as
/// the batch runs it whole. Other devices run the whole batch.
pub fn train_step_micro_batched(
    net: &SpikingNetwork,
    opt: &mut Sgd,
    x: Tensor,
    labels: &[u32],
    masks: &Masks,
    micro_batch: Option<usize>,
) -> Result<(ForwardOutput, f64)> {
    // The whole step on a worker thread: the passes, the checks and the update open their parallel sections
    // from there.
    snn_core::cpu::on_worker(|| {
        let (out, loss_value, grads) = batch_gradients(net, x, labels, masks, micro_batch)?;
        let start = Instant::now();
        for (name, g) in grads.iter() {
            ensure_finite(&g.sum_all()?, &format!("gradient of {name}"), 0, 0)?;
        }
        opt.step(&grads)?;
        // The check reads every gradient; the update reads the weights and gradients and writes the weights.
        let bytes = 4 * net.parameter_count() * net.dtype().size_in_bytes();
        net.record_profile("step", Phase::Optimizer, start.elapsed(), Work::bytes(bytes as f64));
        Ok((out, loss_value))
    })
}

/// The forward pass, the loss and the weights' gradients of one batch (no update).
fn batch_gradients(
    net: &SpikingNetwork,
    x: Tensor,
    labels: &[u32],
    masks: &Masks,
    micro_batch: Option<usize>,
) -> Result<(ForwardOutput, f64, Gradients)> {
    let (steps, batch) = (x.dims().first().copied().unwrap_or(0), x.dims().get(1).copied().unwrap_or(0));
    let micro_batch = micro_batch.unwrap_or_else(|| net.micro_batch_for(steps, batch));
    if net.device().is_cpu() && micro_batch < batch {
        if labels.len() != batch {
            return Err(Error::Config(format!("{} labels for a batch of {batch}", labels.len())));
        }
        let mut loss_value = 0.0;
        let (out, grads) =
            net.taped_gradients(x, masks, micro_batch, |readout: &Tensor, samples| -> Result<Tensor> {
                let (grad_output, loss) = readout_gradient(net, readout, &labels[samples])?;
                loss_value += loss;
                Ok(grad_output)
            })?;
        return Ok((out, loss_value, grads));
    }
    // On the CPU the taped pass (compact tape, hand-written backward); elsewhere Candle's autograd.
    Ok(if net.device().is_cpu() {
        let (out, tape) = net.forward_taped(&x, masks)?;
        drop(x);
        let (grad_output, loss_value) = readout_gradient(net, &out.output, labels)?;
        let grads = net.backward(tape, &grad_output)?;
        (out, loss_value, grads)
    } else {
        let opts = ForwardOptions { track_gradients: true, ..ForwardOptions::default() };
        let out = net.forward(&x, masks, opts)?;
        let loss = sum_squared_error(&out.output, labels)?;
        let loss_value = checked_loss(net, &loss)?;
        let grads = Gradients::from_grad_store(&loss.backward()?, net);
        (out, loss_value, grads)
    })
}

/// The gradient of the summed squared error with respect to the readout `[B, classes]` of a taped pass, and
/// the loss (checked to be finite).
fn readout_gradient(net: &SpikingNetwork, readout: &Tensor, labels: &[u32]) -> Result<(Tensor, f64)> {
    let readout = Var::from_tensor(readout)?;
    let loss = sum_squared_error(readout.as_tensor(), labels)?;
    let loss_value = checked_loss(net, &loss)?;
    let grad_output = loss.backward()?.get(readout.as_tensor()).cloned();
    let grad_output = grad_output.ok_or_else(|| Error::Config("the loss does not depend on the readout".into()))?;
    Ok((grad_output, loss_value))
}

/// The loss as a number, or a non-finite error that names a non-finite weight when there is one.
fn checked_loss(net: &SpikingNetwork, loss: &Tensor) -> Result<f64> {
    ensure_finite(loss, "loss", 0, 0).or_else(|e| {
        for (name, var) in net.weights() {
            ensure_finite(&var.as_tensor().sum_all()?, &format!("loss (weight {name} is not finite)"), 0, 0)?;
        }
        Err(e)
    })
}

/// Options of a training run beyond the recipe.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Folder for checkpoints, metrics and the resumable run state (nothing is written without one).
    pub out_dir: Option<PathBuf>,
    /// Also save the resumable state every this many batches (it is always saved after each epoch).
    pub checkpoint_every: Option<usize>,
    /// Continue from the run state in `out_dir` instead of starting afresh.
    pub resume: bool,
    /// When set (e.g. by a Ctrl-C handler), training stops after the current batch, saves its resumable
    /// state and returns [`Error::Interrupted`].
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Kill the process at a chosen point, to test that a crashed run resumes exactly.
    pub crash: Option<CrashPoint>,
    /// Data-parallel training over several processes ([`Collective`]); `None` trains in this process alone.
    /// Every rank runs the same call with the same data and recipe; rank 0 alone writes the output folder.
    pub collective: Option<std::rc::Rc<dyn Collective>>,
    /// Run each batch's passes over micro-batches of at most this many samples ([`train_step_micro_batched`]):
    /// the same training, up to the order of sums, in less memory (on the CPU).
    pub micro_batch: Option<usize>,
}

/// A point at which [`train_run`] aborts the whole process (`std::process::abort`: no unwinding, no
/// destructors, files left as they are), to test recovery from a crash at a known place. Parsed from
/// `batch:N` or `state-write:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Right after the `N`-th training batch of this process (counted from 1, across epochs, after any
    /// state write that batch makes).
    AfterBatch(usize),
    /// Halfway through writing the `N`-th run state of this process: the temporary file holds the first half
    /// of the new state and the previous state file is untouched.
    DuringStateWrite(usize),
    /// Not a crash: the `N`-th training batch of this process gets a non-finite loss, to test the non-finite
    /// policies (and, in a data-parallel run, that one rank's bad shard stops or skips every rank together).
    NonFiniteAt(usize),
}

impl std::str::FromStr for CrashPoint {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad =
            || Error::Config(format!("crash point '{s}' is not batch:N, state-write:N or nonfinite:N with N >= 1"));
        let (kind, n) = s.split_once(':').ok_or_else(bad)?;
        let n: usize = n.parse().ok().filter(|&n| n >= 1).ok_or_else(bad)?;
        match kind {
            "batch" => Ok(Self::AfterBatch(n)),
            "state-write" => Ok(Self::DuringStateWrite(n)),
            "nonfinite" => Ok(Self::NonFiniteAt(n)),
            _ => Err(bad()),
        }
    }
}

/// Writes run states, counting them for [`CrashPoint::DuringStateWrite`].
struct StateWriter {
    path: PathBuf,
    writes: usize,
    crash_at: Option<usize>,
}

impl StateWriter {
    fn save(&mut self, net: &SpikingNetwork, opt: &Sgd, st: &RunState, tally: &ActivityTally) -> Result<()> {
        self.writes += 1;
        let bytes = state_bytes(net, opt, st, tally)?;
        if self.crash_at == Some(self.writes) {
            // Leave what a kill in the middle of the write leaves: half a temporary file.
            let tmp = temp_path(&self.path);
            let _ = std::fs::write(&tmp, &bytes[..bytes.len() / 2]);
            std::process::abort();
        }
        write_atomic(&self.path, &bytes).map_err(|source| Error::Io { path: self.path.clone(), source })
    }
}

/// Trains `net` with `recipe` on `train`, evaluating on `test` after every epoch.
///
/// Before the first step the first batch is probed and silent layers are reported ([`probe_activity`]). Each
/// mini-batch draws fresh input spikes and one dropout mask per masked layer and sample (held over the window;
/// every draw keyed by epoch and sample, [`sample_rng`]), runs the window layer-major, forms the summed squared error of the readout and applies one SGD
/// step from the spike-based gradients. With `out_dir`, `last.safetensors`, `best.safetensors` and
/// `metrics.jsonl` are written there atomically after every epoch.
pub fn train(
    net: &SpikingNetwork,
    train: &Samples,
    test: &Samples,
    recipe: &Recipe,
    out_dir: Option<&Path>,
    observer: &mut dyn TrainObserver,
) -> Result<TrainSummary> {
    let opts = RunOptions { out_dir: out_dir.map(Path::to_path_buf), ..RunOptions::default() };
    train_run(net, train, test, recipe, &opts, observer)
}

/// [`train`] with periodic resumable state and resumption.
///
/// The state (`state.safetensors` in the output folder: weights, momentum buffers, the position of the
/// shuffle stream (every other draw is keyed by epoch and sample), the epoch and batch reached, the running epoch statistics and the history) is written
/// atomically after every epoch and every `checkpoint_every` batches. A run resumed from it continues with
/// exactly the same random draws, so its final weights equal, bit for bit, those of a run that was never
/// interrupted (same machine, same thread count).
pub fn train_run(
    net: &SpikingNetwork,
    train: &Samples,
    test: &Samples,
    recipe: &Recipe,
    opts: &RunOptions,
    observer: &mut dyn TrainObserver,
) -> Result<TrainSummary> {
    let start = Instant::now();
    let mut run = Run::start(net, train, test, recipe, opts)?;
    if !opts.resume {
        run.probe(observer)?;
    }
    while run.st.epoch <= recipe.epochs {
        let epoch_start = Instant::now();
        run.train_epoch(observer, epoch_start)?;
        run.end_epoch(observer, epoch_start)?;
    }
    Ok(run.summary(start))
}

/// A training run in progress: what [`train_run`] carries from batch to batch and epoch to epoch.
struct Run<'a> {
    net: &'a SpikingNetwork,
    train: &'a Samples,
    test: &'a Samples,
    recipe: &'a Recipe,
    opts: &'a RunOptions,
    files: Option<RunFiles>,
    writer: Option<StateWriter>,
    opt: Sgd,
    /// The sample order's stream; its position at the start of the epoch is saved in the run state (every
    /// other draw is keyed by epoch and sample, [`sample_rng`]).
    shuffle: ChaCha8Rng,
    st: RunState,
    tally: ActivityTally,
    /// Batches trained by this process (for [`CrashPoint::AfterBatch`]).
    batches_run: usize,
    /// Per spiking layer: whether it was active on the last batch, so that falling silent is reported once.
    armed: Vec<bool>,
    /// The ranks training together ([`SINGLE`] when alone).
    comm: &'a dyn Collective,
    /// Whether some rank was asked to stop at the last batch (every rank then stops there).
    stop_all: bool,
    /// The epoch's all-reduce time and buffer size so far (data-parallel runs).
    communication: Option<Communication>,
}

impl<'a> Run<'a> {
    /// Checks the inputs, creates the output folder and starts afresh or from the saved state.
    fn start(
        net: &'a SpikingNetwork,
        train: &'a Samples,
        test: &'a Samples,
        recipe: &'a Recipe,
        opts: &'a RunOptions,
    ) -> Result<Self> {
        recipe.validate()?;
        check_dataset(net, train, "training")?;
        check_dataset(net, test, "test")?;
        if opts.checkpoint_every == Some(0) {
            return Err(Error::Config("checkpoint interval must be at least 1 batch".into()));
        }
        if opts.micro_batch == Some(0) {
            return Err(Error::Config("a micro-batch holds at least 1 sample".into()));
        }
        let comm: &'a dyn Collective = opts.collective.as_deref().unwrap_or(&SINGLE);
        crate::collective::check(comm)?;
        // Rank 0 alone writes the run's folder.
        let files = match &opts.out_dir {
            Some(dir) if comm.rank() == 0 => {
                std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
                Some(RunFiles::in_dir(dir))
            }
            _ => None,
        };
        let writer = files.as_ref().map(|f| StateWriter {
            path: f.state.clone(),
            writes: 0,
            crash_at: match opts.crash {
                Some(CrashPoint::DuringStateWrite(n)) => Some(n),
                _ => None,
            },
        });
        let opt = Sgd::new(net.weights().to_vec(), recipe.lr, recipe.momentum, recipe.weight_decay)?;
        let st = RunState::fresh(recipe, train.len(), net);
        let shuffle = stream_rng(recipe.seed, Stream::Shuffle);
        let tally = ActivityTally::default();
        let mut run = Self {
            net,
            train,
            test,
            recipe,
            opts,
            files,
            writer,
            opt,
            shuffle,
            st,
            tally,
            batches_run: 0,
            armed: vec![],
            comm,
            stop_all: false,
            communication: None,
        };
        if opts.resume {
            run.resume()?;
        } else {
            run.share_weights()?;
        }
        Ok(run)
    }

    /// Restores the weights, momentum, streams and running statistics from the saved state, after checking
    /// that it belongs to this run (recipe, training set size, element type, device).
    fn resume(&mut self) -> Result<()> {
        // Rank 0 reads the state and hands it to the others, so every rank resumes from the same bytes.
        let (mut bytes, mut path) = (Vec::new(), PathBuf::from("run state received from rank 0"));
        if self.comm.rank() == 0 {
            let files = self.files.as_ref().ok_or_else(|| Error::Config("resuming needs the run's folder".into()))?;
            path = files.state.clone();
            bytes = std::fs::read(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        }
        self.comm.broadcast(&mut bytes, 0)?;
        let (state, restored) = load_state(&bytes, &path, self.net, &mut self.opt)?;
        if state.recipe != *self.recipe || state.train_images != self.train.len() {
            return Err(Error::Config(format!(
                "{}: the saved run used a different recipe or training set size",
                path.display()
            )));
        }
        let now = &self.st;
        for (what, saved, given) in [("element type", &state.dtype, &now.dtype), ("device", &state.device, &now.device)]
        {
            if let (Some(saved), Some(given)) = (saved, given) {
                if saved != given {
                    return Err(Error::Config(format!(
                        "{}: the saved run trained with {what} {saved}; this network has {given}",
                        path.display()
                    )));
                }
            }
        }
        self.shuffle.set_word_pos(state.shuffle_pos);
        self.st = state;
        self.tally = restored;
        Ok(())
    }

    /// Gives every rank rank 0's weights (they start equal when every rank seeds alike; this makes sure).
    fn share_weights(&self) -> Result<()> {
        if self.comm.size() == 1 {
            return Ok(());
        }
        for (_, var) in self.net.weights() {
            let mut bytes = Vec::new();
            if self.comm.rank() == 0 {
                let values = var.as_tensor().flatten_all()?.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
                bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            }
            self.comm.broadcast(&mut bytes, 0)?;
            let values: Vec<f64> =
                bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
            let t = Tensor::from_vec(values, var.dims(), self.net.device())?.to_dtype(self.net.dtype())?;
            var.set(&t)?;
        }
        Ok(())
    }

    /// Writes the run state, if the run has an output folder.
    fn save_state(&mut self) -> Result<()> {
        if let Some(writer) = &mut self.writer {
            writer.save(self.net, &self.opt, &self.st, &self.tally)?;
        }
        Ok(())
    }

    /// Trains the batches of the current epoch that are not done yet.
    fn train_epoch(&mut self, observer: &mut dyn TrainObserver, epoch_start: Instant) -> Result<()> {
        let (recipe, train) = (self.recipe, self.train);
        let epoch = self.st.epoch;
        self.opt.lr = recipe.lr_at(epoch);
        if self.st.batches_done == 0 {
            self.st.shuffle_pos = self.shuffle.get_word_pos();
        } else {
            self.shuffle.set_word_pos(self.st.shuffle_pos);
        }
        let batches: Vec<Vec<usize>> = Batches::new(train.len(), recipe.batch_size, Some(&mut self.shuffle))?.collect();
        let batch_count = batches.len();
        for (b, idx) in batches.into_iter().enumerate().skip(self.st.batches_done) {
            self.train_batch(epoch, b, &idx, observer)?;
            let seen = self.tally.samples.max(1);
            observer.on_batch(&BatchProgress {
                epoch,
                samples: self.tally.samples,
                epoch_samples: train.len(),
                loss: self.st.loss_sum / seen as f64,
                accuracy: self.st.correct as f64 / seen as f64,
                images_per_sec: self.tally.samples as f64 / epoch_start.elapsed().as_secs_f64().max(1e-9),
            });
            if self.stop_all || (self.comm.size() == 1 && self.stop_requested()) {
                self.save_state()?;
                return Err(Error::Interrupted { epoch, batch: self.st.batches_done });
            }
            if let Some(every) = self.opts.checkpoint_every {
                if self.st.batches_done % every == 0 && self.st.batches_done < batch_count {
                    self.save_state()?;
                }
            }
            self.batches_run += 1;
            if self.opts.crash == Some(CrashPoint::AfterBatch(self.batches_run)) {
                std::process::abort();
            }
        }
        Ok(())
    }

    /// The fault [`CrashPoint::NonFiniteAt`] injects at this batch, if it does.
    fn injected_fault(&self, epoch: usize, batch: usize) -> Option<Error> {
        (self.opts.crash == Some(CrashPoint::NonFiniteAt(self.batches_run + 1))).then(|| Error::NonFinite {
            what: "loss (injected fault)".into(),
            epoch,
            batch,
        })
    }

    /// Whether this process was asked to stop (e.g. by Ctrl-C).
    fn stop_requested(&self) -> bool {
        self.opts.stop.as_ref().is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// One batch: fresh input spikes (and augmentation) and dropout masks, one training step, and the
    /// non-finite policy of the recipe.
    fn train_batch(&mut self, epoch: usize, b: usize, idx: &[usize], observer: &mut dyn TrainObserver) -> Result<()> {
        if self.comm.size() > 1 {
            return self.train_shard(epoch, b, idx, observer);
        }
        let (net, recipe) = (self.net, self.recipe);
        let (seed, key) = (recipe.seed, epoch as u64);
        let mut augment = recipe.augment.then(|| sample_rngs(seed, Stream::Augment, key, idx));
        let mut inputs = sample_rngs(seed, Stream::TrainInput, key, idx);
        let steps = recipe.timesteps_at(epoch);
        let (x, labels) = encode_augmented(net, self.train, idx, steps, &mut inputs, augment.as_deref_mut())?;
        let masks = net.draw_masks(&mut sample_rngs(seed, Stream::Dropout, key, idx))?;
        let step = match self.injected_fault(epoch, b) {
            Some(fault) => Err(fault),
            None => train_step_micro_batched(net, &mut self.opt, x, &labels, &masks, self.opts.micro_batch),
        };
        let (out, loss) = match step {
            Ok(step) => step,
            Err(Error::NonFinite { what, .. }) if recipe.skip_nonfinite_batches => {
                return self.skip_batch(epoch, b, &what);
            }
            Err(e) => return Err(locate(e, epoch, b)),
        };
        self.st.loss_sum += loss;
        self.st.correct += count_correct(&out.output, &labels)?;
        let rates = self.tally.add(&out, idx.len(), steps)?;
        self.watch_activity(&out, &rates, epoch, b, observer);
        self.st.batches_done = b + 1;
        Ok(())
    }

    /// Skips a batch whose loss or gradient was not finite (the recipe's non-finite policy), after checking
    /// that the weights still are.
    fn skip_batch(&mut self, epoch: usize, b: usize, what: &str) -> Result<()> {
        ensure_weights_finite(self.net, epoch, b)?;
        tracing::warn!(epoch, batch = b, %what, "non-finite batch skipped");
        self.st.skipped += 1;
        self.st.batches_done = b + 1;
        Ok(())
    }

    /// One batch of a data-parallel run: this rank's shard of the global batch (draws keyed by sample, as
    /// alone), then one all-reduce of the gradients with the loss, the correct count, the stop requests, the
    /// spike counts and a failure flag per rank, then the same update on every rank. A rank whose shard
    /// failed makes every rank fail (or skip the batch, for non-finite values under the recipe's policy)
    /// with an error naming it, instead of leaving the others waiting.
    fn train_shard(&mut self, epoch: usize, b: usize, idx: &[usize], observer: &mut dyn TrainObserver) -> Result<()> {
        let (net, recipe, comm) = (self.net, self.recipe, self.comm);
        let (rank, size) = (comm.rank(), comm.size());
        let mine = &idx[crate::collective::shard(idx.len(), rank, size)];
        let (seed, key) = (recipe.seed, epoch as u64);
        let local = if let Some(fault) = self.injected_fault(epoch, b) {
            Err(fault)
        } else if mine.is_empty() {
            Ok(None)
        } else {
            (|| {
                let mut augment = recipe.augment.then(|| sample_rngs(seed, Stream::Augment, key, mine));
                let mut inputs = sample_rngs(seed, Stream::TrainInput, key, mine);
                let steps = recipe.timesteps_at(epoch);
                let (x, labels) = encode_augmented(net, self.train, mine, steps, &mut inputs, augment.as_deref_mut())?;
                let masks = net.draw_masks(&mut sample_rngs(seed, Stream::Dropout, key, mine))?;
                let (out, loss, grads) = batch_gradients(net, x, &labels, &masks, self.opts.micro_batch)?;
                let correct = count_correct(&out.output, &labels)?;
                Ok::<_, Error>(Some((out, loss, grads, correct)))
            })()
        };
        let layers = spiking_layers(net);
        let mut buf = Vec::new();
        for (name, var) in net.weights() {
            match local.as_ref().ok().and_then(|l| l.as_ref()).and_then(|(_, _, g, _)| g.get(name)) {
                Some(g) => buf.extend(g.flatten_all()?.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?),
                None => buf.resize(buf.len() + var.elem_count(), 0.0),
            }
        }
        let scalars = buf.len();
        let (loss, correct) = match &local {
            Ok(Some((_, loss, _, correct))) => (*loss, *correct as f64),
            _ => (0.0, 0.0),
        };
        buf.extend([loss, correct, f64::from(u8::from(self.stop_requested()))]);
        for (name, _, shape) in &layers {
            let counts = local.as_ref().ok().and_then(|l| l.as_ref()).and_then(|(out, ..)| {
                out.activity.iter().find(|a| &a.name == name).map(|a| a.neuron_counts.flatten_all())
            });
            match counts {
                Some(c) => buf.extend(c?.to_vec1::<f64>()?),
                None => buf.resize(buf.len() + shape.iter().product::<usize>(), 0.0),
            }
        }
        // Per rank: 1 for a non-finite loss or gradient, 2 for any other failure.
        let flags = buf.len();
        buf.resize(flags + size, 0.0);
        let finite = buf[..scalars + 1].iter().all(|v| v.is_finite());
        buf[flags + rank] = match &local {
            Err(Error::NonFinite { .. }) => 1.0,
            Err(_) => 2.0,
            Ok(_) if !finite => 1.0,
            Ok(_) => 0.0,
        };
        if buf[flags + rank] != 0.0 {
            // Keep the sums finite so that only the flags speak.
            buf[..flags].iter_mut().for_each(|v| *v = 0.0);
        }
        let reduce_start = Instant::now();
        comm.all_reduce_sum(&mut buf)?;
        let c =
            self.communication.get_or_insert(Communication { ranks: size, allreduce_seconds: 0.0, bytes_per_step: 0 });
        c.allreduce_seconds += reduce_start.elapsed().as_secs_f64();
        c.bytes_per_step = buf.len() * std::mem::size_of::<f64>();
        let failed: Vec<usize> = (0..size).filter(|r| buf[flags + r] != 0.0).collect();
        if !failed.is_empty() {
            let here = match &local {
                Err(e) => format!("; rank {rank}: {e}"),
                _ => String::new(),
            };
            if failed.iter().any(|r| buf[flags + r] >= 2.0) {
                return Err(Error::Config(format!(
                    "epoch {epoch}, batch {b}: the shard of rank(s) {failed:?} failed{here}"
                )));
            }
            let what = format!("the loss or a gradient of the shard of rank(s) {failed:?}{here}");
            if recipe.skip_nonfinite_batches {
                return self.skip_batch(epoch, b, &what);
            }
            return Err(Error::NonFinite { what, epoch, batch: b });
        }
        let mut grads = Vec::with_capacity(net.weights().len());
        let mut at = 0;
        for (name, var) in net.weights() {
            let g = take(&buf, &mut at, var.elem_count());
            grads.push((name.clone(), Tensor::from_slice(g, var.dims(), net.device())?.to_dtype(net.dtype())?));
        }
        self.opt.step(&Gradients::new(grads))?;
        self.st.loss_sum += buf[scalars];
        self.st.correct += buf[scalars + 1] as usize;
        self.stop_all = buf[scalars + 2] > 0.0;
        let mut at = scalars + 3;
        let mut activity = Vec::with_capacity(layers.len());
        for (name, is_pool, shape) in layers {
            let n: usize = shape.iter().product();
            let neuron_counts = Tensor::from_slice(take(&buf, &mut at, n), shape, &candle_core::Device::Cpu)?;
            activity.push(LayerActivity { name, is_pool, neurons: n, neuron_counts, spikes: None });
        }
        let out =
            ForwardOutput { output: Tensor::zeros(0, candle_core::DType::F64, &candle_core::Device::Cpu)?, activity };
        let rates = self.tally.add(&out, idx.len(), recipe.timesteps_at(epoch))?;
        self.watch_activity(&out, &rates, epoch, b, observer);
        self.st.batches_done = b + 1;
        Ok(())
    }

    /// Reports a layer the moment its activity on a batch falls below [`QUIET_SPIKES_PER_NEURON`] after having
    /// been above it (once, until it recovers).
    fn watch_activity(
        &mut self,
        out: &ForwardOutput,
        rates: &[f64],
        epoch: usize,
        batch: usize,
        observer: &mut dyn TrainObserver,
    ) {
        if self.armed.len() != rates.len() {
            self.armed = vec![true; rates.len()];
        }
        for ((armed, &rate), a) in self.armed.iter_mut().zip(rates).zip(&out.activity) {
            let quiet = rate < QUIET_SPIKES_PER_NEURON;
            if quiet && *armed {
                let warning = ActivityWarning {
                    layer: a.name.clone(),
                    spikes_per_neuron: rate,
                    when: WarningTime::Batch { epoch, batch },
                };
                tracing::debug!(layer = %a.name, epoch, batch, rate, "layer fell silent");
                observer.on_warning(&warning);
            }
            *armed = !quiet;
        }
    }

    /// Before the first step of a fresh run: probes every layer's activity on the first training batch and
    /// reports the silent or nearly silent ones.
    fn probe(&mut self, observer: &mut dyn TrainObserver) -> Result<()> {
        let recipe = self.recipe;
        let steps = recipe.timesteps_at(self.st.epoch);
        let rates = probe_activity(self.net, self.train, steps, recipe.batch_size, recipe.seed)?;
        for warning in quiet_layers(&rates) {
            tracing::debug!(layer = %warning.layer, rate = warning.spikes_per_neuron, "quiet layer before training");
            observer.on_warning(&warning);
        }
        self.armed = rates.iter().map(|r| r.spikes_per_neuron >= QUIET_SPIKES_PER_NEURON).collect();
        Ok(())
    }

    /// Evaluates after an epoch, records its metrics and writes the checkpoints, the metrics and the state.
    fn end_epoch(&mut self, observer: &mut dyn TrainObserver, epoch_start: Instant) -> Result<()> {
        let (net, recipe) = (self.net, self.recipe);
        let epoch = self.st.epoch;
        let train_seconds = epoch_start.elapsed().as_secs_f64();
        ensure_weights_finite(net, epoch, 0)?;
        let eval = evaluate_with(
            net,
            self.test,
            (recipe.test_timesteps, recipe.test_batch_size, recipe.seed),
            Engine::Sparse,
            &mut |d, t| observer.on_eval(d, t),
            self.comm,
        )?;
        // Means over the samples actually trained on (all of them unless batches were skipped).
        let trained = self.tally.samples.max(1) as f64;
        let metrics = EpochMetrics {
            epoch,
            loss: self.st.loss_sum / trained,
            train_accuracy: self.st.correct as f64 / trained,
            test_accuracy: eval.accuracy,
            lr: self.opt.lr,
            timesteps: recipe.timesteps_at(epoch),
            test_timesteps: recipe.test_timesteps,
            images_per_sec: self.train.len() as f64 / train_seconds.max(1e-9),
            train_spikes: self.tally.rates(),
            test_spikes: eval.layers.clone(),
            skipped_batches: self.st.skipped,
            seconds: epoch_start.elapsed().as_secs_f64(),
            communication: self.communication.take(),
        };
        tracing::info!(epoch, loss = metrics.loss, test_accuracy = metrics.test_accuracy, "epoch done");
        let st = &mut self.st;
        st.history.push(metrics.clone());
        let improved = st.best.is_none_or(|(acc, _)| eval.accuracy > acc);
        if improved {
            st.best = Some((eval.accuracy, epoch));
        }
        st.epoch += 1;
        st.batches_done = 0;
        st.loss_sum = 0.0;
        st.correct = 0;
        st.skipped = 0;
        self.tally = ActivityTally::default();
        if let Some(files) = &self.files {
            let mut meta = HashMap::new();
            meta.insert("epoch".to_string(), epoch.to_string());
            meta.insert("recipe".to_string(), serde_json::to_string(recipe).unwrap_or_default());
            meta.insert("test_accuracy".to_string(), eval.accuracy.to_string());
            meta.insert("test_timesteps".to_string(), recipe.test_timesteps.to_string());
            save_checkpoint(&files.last, net, &meta)?;
            if improved {
                save_checkpoint(&files.best, net, &meta)?;
            }
            let lines: String =
                self.st.history.iter().map(|m| serde_json::to_string(m).unwrap_or_default() + "\n").collect();
            write_atomic(&files.metrics, lines.as_bytes())
                .map_err(|source| Error::Io { path: files.metrics.clone(), source })?;
            self.st.shuffle_pos = self.shuffle.get_word_pos();
            self.save_state()?;
        }
        observer.on_epoch(&metrics);
        Ok(())
    }

    /// The outcome of the finished run.
    fn summary(self, start: Instant) -> TrainSummary {
        let last = self.st.history.last().map_or(0.0, |m| m.test_accuracy);
        let (best_acc, best_epoch) = self.st.best.unwrap_or((0.0, 0));
        TrainSummary {
            test_accuracy: last,
            best_test_accuracy: best_acc,
            best_epoch,
            epochs: self.recipe.epochs,
            timesteps: self.recipe.timesteps,
            test_timesteps: self.recipe.test_timesteps,
            train_images: self.train.len(),
            test_images: self.test.len(),
            seconds: start.elapsed().as_secs_f64(),
            history: self.st.history,
            files: self.files,
        }
    }
}

/// A non-finite error naming the first weight that is not finite, if any.
fn ensure_weights_finite(net: &SpikingNetwork, epoch: usize, batch: usize) -> Result<()> {
    for (name, var) in net.weights() {
        ensure_finite(&var.as_tensor().sum_all()?, &format!("weight {name}"), epoch, batch)?;
    }
    Ok(())
}

/// File name of the resumable run state inside the output folder.
pub const STATE_FILE: &str = "state.safetensors";

/// Everything besides weights and momentum that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunState {
    recipe: Recipe,
    train_images: usize,
    /// Epoch in progress (1-based); `epochs + 1` when the run is complete.
    epoch: usize,
    /// Batches of that epoch already applied.
    batches_done: usize,
    shuffle_pos: u128,
    loss_sum: f64,
    correct: usize,
    /// Batches of this epoch skipped as non-finite.
    #[serde(default)]
    skipped: usize,
    best: Option<(f64, usize)>,
    history: Vec<EpochMetrics>,
    tally_layers: Vec<String>,
    tally_samples: usize,
    /// Element type of the weights (`f32`, `f64`); absent in states saved before it was recorded.
    #[serde(default)]
    dtype: Option<String>,
    /// Device of the weights (`cpu`, `cuda:0`, ...); absent in older states.
    #[serde(default)]
    device: Option<String>,
}

/// A device as the run state names it: `cpu`, `cuda:N` or `metal:N`.
fn device_name(device: &candle_core::Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

impl RunState {
    fn fresh(recipe: &Recipe, train_images: usize, net: &SpikingNetwork) -> Self {
        Self {
            dtype: Some(net.dtype().as_str().to_string()),
            device: Some(device_name(net.device())),
            recipe: recipe.clone(),
            train_images,
            epoch: 1,
            batches_done: 0,
            shuffle_pos: 0,
            loss_sum: 0.0,
            correct: 0,
            skipped: 0,
            best: None,
            history: Vec::new(),
            tally_layers: Vec::new(),
            tally_samples: 0,
        }
    }
}

const STATE_KEY: &str = "run_state";

/// The run state file's bytes: weights, momentum buffers and activity tallies as tensors, the rest as JSON
/// metadata.
fn state_bytes(net: &SpikingNetwork, opt: &Sgd, st: &RunState, tally: &ActivityTally) -> Result<Vec<u8>> {
    let mut st = st.clone();
    let mut extra: Vec<(String, Tensor)> =
        opt.momentum_state().into_iter().map(|(n, t)| (format!("momentum.{n}"), t)).collect();
    st.tally_layers.clear();
    st.tally_samples = tally.samples;
    for (i, (name, counts)) in tally.layers.iter().enumerate() {
        st.tally_layers.push(name.clone());
        extra.push((format!("tally.{i}"), Tensor::from_slice(counts, counts.len(), &candle_core::Device::Cpu)?));
    }
    let mut meta = HashMap::new();
    meta.insert(STATE_KEY.to_string(), serde_json::to_string(&st).map_err(|e| Error::Config(e.to_string()))?);
    Ok(checkpoint_bytes(net, &extra, &meta)?)
}

/// Restores a run state from the bytes of its file (`path` names it in errors).
fn load_state(bytes: &[u8], path: &Path, net: &SpikingNetwork, opt: &mut Sgd) -> Result<(RunState, ActivityTally)> {
    let bad = |msg: String| Error::Config(format!("{}: {msg}", path.display()));
    let ckpt = parse_checkpoint(bytes, path, &candle_core::Device::Cpu)?;
    let text = ckpt.metadata.get(STATE_KEY).ok_or_else(|| bad("no run state in the file".into()))?;
    let st: RunState = serde_json::from_str(text).map_err(|e| bad(format!("corrupt run state: {e}")))?;
    if ckpt.spec != *net.spec() {
        return Err(bad("the saved run trained a different network".into()));
    }
    for (name, var) in net.weights() {
        let t = ckpt.weights.get(name).ok_or_else(|| bad(format!("missing tensor '{name}'")))?;
        if t.dims() != var.dims() {
            return Err(bad(format!("tensor '{name}' has the wrong shape")));
        }
        var.set(&t.to_device(net.device())?.to_dtype(net.dtype())?)?;
        if let Some(m) = ckpt.weights.get(&format!("momentum.{name}")) {
            opt.set_momentum(name, m.to_device(net.device())?.to_dtype(net.dtype())?)?;
        }
    }
    let timesteps = st.recipe.timesteps_at(st.epoch);
    let mut tally = ActivityTally { samples: st.tally_samples, timesteps, ..Default::default() };
    for (i, name) in st.tally_layers.iter().enumerate() {
        let t = ckpt.weights.get(&format!("tally.{i}")).ok_or_else(|| bad(format!("missing tally of '{name}'")))?;
        tally.layers.push((name.clone(), t.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?));
    }
    Ok((st, tally))
}
