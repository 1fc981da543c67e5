//! The spiking network: weights for a [`NetworkSpec`] and its layer-major forward pass.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use rand_distr::{Distribution, Normal};
use snn_core::dropout::mask_multipliers;
use snn_core::{dropout_keep, leaky_readout, Neuron};

use crate::plan::{Feed, Op, Plan, ShortcutMap};
use crate::spec::{LayerSpec, NetworkSpec};
use crate::{Error, Result};
use snn_core::buffers::Scratch;
use snn_core::conv::{conv2d_frames, InputGrad};
use snn_core::events::{conv2d_events, linear_events, sparse_enough};
use snn_core::pool::{average_pool, subsample};

/// Dropout masks by layer name, each of shape `[B, ...]` (the layer's per-sample output shape): keep flags
/// (`u8`, non-zero keeps; a kept spike is scaled by `1/(1 − p)` of the spec's `dropout_p`, see
/// [`snn_core::dropout`]), as [`SpikingNetwork::draw_masks`] draws them, or multipliers in any float type.
pub type Masks = HashMap<String, Tensor>;

/// How the synaptic layers (convolutions, fully connected, readout) compute their currents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Engine {
    /// Dense convolutions and matrix products over every input, spiking or not.
    #[default]
    Dense,
    /// Event-driven accumulation over the non-zero input spikes only (`snn_core::events`), for inference on the
    /// CPU (on other devices the dense layers run), the window in parts (see [`SpikingNetwork::forward`]). When gradients are tracked the engine is not consulted:
    /// the differentiable convolution of `snn_core::conv` takes the event path for sparse spike input itself.
    Sparse,
}

/// How [`SpikingNetwork::forward`] runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardOptions {
    /// Record the autograd graph through the weights (training). When false the weights are detached and
    /// no graph is kept.
    pub track_gradients: bool,
    /// Keep every spiking layer's spike window (before its mask) in the output.
    pub keep_spikes: bool,
    /// Synaptic-layer engine.
    pub engine: Engine,
}

/// What one spiking layer did during a forward pass.
#[derive(Debug, Clone)]
pub struct LayerActivity {
    /// Layer name.
    pub name: String,
    /// True for a pooling IF layer, false for a LIF (conv or fc) layer.
    pub is_pool: bool,
    /// Neurons per sample.
    pub neurons: usize,
    /// Spikes of each neuron position summed over the window and the batch, before any mask; the layer's
    /// per-sample shape, f64, detached.
    pub neuron_counts: Tensor,
    /// The spike window `[T, B, ...]` before the mask, when [`ForwardOptions::keep_spikes`] is set.
    pub spikes: Option<Tensor>,
}

/// Result of a forward pass.
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// Readout `[B, classes]`: final output membrane / θ / T.
    pub output: Tensor,
    /// Activity of the spiking layers in execution order.
    pub activity: Vec<LayerActivity>,
}

/// A spiking network: its spec, its weights (as trainable [`Var`]s) and its neurons.
#[derive(Debug)]
pub struct SpikingNetwork {
    spec: NetworkSpec,
    pub(crate) shapes: HashMap<String, Vec<usize>>,
    weights: Vec<(String, Var)>,
    pub(crate) lif: Neuron,
    pub(crate) pool: Neuron,
    device: Device,
    dtype: DType,
    /// The layers resolved to indices, for both passes.
    pub(crate) plan: Plan,
    /// Float buffers of the taped training pass, kept from one call to the next.
    pub(crate) scratch: Scratch,
    /// Where the taped passes' time goes, while [`SpikingNetwork::start_profile`] has recording on.
    pub(crate) profile: std::sync::Mutex<Option<crate::Profile>>,
    /// Identifies the network to the tapes it records ([`crate::Tape`]); never shared by two networks of a
    /// process, even when one is dropped and the other takes its memory.
    pub(crate) id: u64,
}

/// The next [`SpikingNetwork::id`].
static NEXT_NETWORK_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl SpikingNetwork {
    /// Builds the network with freshly initialised weights, `N(0, sqrt(init_gain / fan_in))` per weight
    /// tensor in layer order, drawn from `rng`.
    pub fn new<R: Rng + ?Sized>(spec: NetworkSpec, rng: &mut R, dtype: DType, device: &Device) -> Result<Self> {
        let shapes = spec.weight_shapes()?;
        let mut weights = HashMap::new();
        for (name, shape) in shapes {
            let fan_in: usize = shape[1..].iter().product();
            let std = (spec.init_gain / fan_in as f64).sqrt();
            let normal = Normal::new(0.0f32, std as f32).map_err(|e| Error::Spec(format!("{name}: {e}")))?;
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n).map(|_| normal.sample(rng)).collect();
            weights.insert(name, Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?);
        }
        Self::from_weights(spec, weights, dtype, device)
    }

    /// Builds the network from given weights (e.g. a checkpoint). Every weight the spec requires must be
    /// present with the right shape, and no other tensor may be given.
    pub fn from_weights(
        spec: NetworkSpec,
        mut weights: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let required = spec.weight_shapes()?;
        let shapes = spec.output_shapes()?;
        let mut vars = Vec::with_capacity(required.len());
        for (name, shape) in &required {
            let Some(t) = weights.remove(name) else {
                return Err(Error::Weights(format!("missing tensor '{name}' (shape {shape:?})")));
            };
            if t.dims() != shape.as_slice() {
                return Err(Error::Weights(format!(
                    "tensor '{name}' has shape {:?}, the model needs {shape:?}",
                    t.dims()
                )));
            }
            let t = t.to_device(device)?.to_dtype(dtype)?.contiguous()?;
            vars.push((name.clone(), Var::from_tensor(&t)?));
        }
        if let Some(extra) = weights.keys().next() {
            return Err(Error::Weights(format!("unexpected tensor '{extra}' for model '{}'", spec.name)));
        }
        let names: Vec<String> = vars.iter().map(|(n, _)| n.clone()).collect();
        let plan = Plan::new(&spec, &shapes, &names)?;
        Ok(Self {
            plan,
            lif: spec.lif_neuron()?,
            pool: spec.pool_neuron()?,
            spec,
            shapes,
            weights: vars,
            device: device.clone(),
            dtype,
            scratch: Scratch::default(),
            profile: std::sync::Mutex::new(None),
            id: NEXT_NETWORK_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Starts recording where the time of the taped training passes ([`Self::forward_taped`],
    /// [`Self::backward`]) goes, by layer and phase with the work done (see [`crate::profile`]); a profile
    /// already being recorded is discarded.
    pub fn start_profile(&self) {
        *self.profile.lock().unwrap_or_else(|e| e.into_inner()) = Some(crate::Profile::default());
    }

    /// Stops recording and returns what the passes since [`Self::start_profile`] recorded (`None` when
    /// recording was off).
    pub fn take_profile(&self) -> Option<crate::Profile> {
        self.profile.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Whether [`Self::start_profile`] has recording on.
    pub fn profiling(&self) -> bool {
        self.profile.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Adds a caller's own timed work (e.g. the optimizer's update, the input encoding) to the profile being
    /// recorded; does nothing when recording is off.
    pub fn record_profile(&self, layer: &str, phase: crate::Phase, elapsed: std::time::Duration, work: crate::Work) {
        if let Some(p) = self.profile.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            p.record(layer, phase, elapsed, work);
        }
    }

    /// Adds a finished pass's profile to the one being recorded (dropped when recording stopped meanwhile).
    pub(crate) fn add_profile(&self, pass: crate::Profile) {
        if let Some(p) = self.profile.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            p.merge(pass);
        }
    }

    /// The network's spec.
    pub fn spec(&self) -> &NetworkSpec {
        &self.spec
    }

    /// The trainable weights in layer order, by name (`<layer>.weight`).
    pub fn weights(&self) -> &[(String, Var)] {
        &self.weights
    }

    /// Number of trainable parameters.
    pub fn parameter_count(&self) -> usize {
        self.weights.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The element type of the weights and activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Per-sample output shape of a layer.
    pub fn layer_shape(&self, name: &str) -> Option<&[usize]> {
        self.shapes.get(name).map(Vec::as_slice)
    }

    /// Draws the dropout masks of one mini-batch (one mask per layer with `dropout`, held over the window),
    /// sample `b`'s from `rngs[b]` alone, layer after layer, as keep flags (one byte per neuron). Empty when
    /// the spec's `dropout_p` is 0.
    pub fn draw_masks<R: Rng + Send>(&self, rngs: &mut [R]) -> Result<Masks> {
        let batch = rngs.len();
        let mut masks = Masks::new();
        if self.spec.dropout_p <= 0.0 {
            return Ok(masks);
        }
        for layer in &self.spec.layers {
            let (name, dropout) = match layer {
                LayerSpec::Conv(c) => (&c.name, c.dropout),
                LayerSpec::Fc(f) => (&f.name, f.dropout),
                _ => continue,
            };
            if dropout {
                let mut shape = vec![batch];
                shape.extend_from_slice(&self.shapes[name]);
                masks.insert(name.clone(), dropout_keep(&shape, self.spec.dropout_p, rngs, &self.device)?);
            }
        }
        Ok(masks)
    }

    /// The weight with index `i` in [`Self::weights`], tracked by autograd or detached.
    fn weight_at(&self, i: usize, track: bool) -> Tensor {
        let t = self.weights[i].1.as_tensor();
        if track {
            t.clone()
        } else {
            t.detach()
        }
    }

    /// Checks an input window `[T, B, ...]` and its dropout masks against the spec; returns `(T, B)`.
    pub(crate) fn check_input(&self, input: &Tensor, masks: &Masks) -> Result<(usize, usize)> {
        let dims = input.dims();
        if dims.len() != 5 || dims[2..] != self.spec.input_shape[..] || dims[0] == 0 || dims[1] == 0 {
            return Err(Error::Spec(format!(
                "input must be [T, B, {:?}] with T, B > 0, got {dims:?}",
                self.spec.input_shape
            )));
        }
        let batch = dims[1];
        for (name, mask) in masks {
            let Some(shape) = self.shapes.get(name) else {
                return Err(Error::Spec(format!("mask given for unknown layer '{name}'")));
            };
            if mask.dims()[0..1] != [batch] || mask.dims()[1..] != shape[..] {
                return Err(Error::Spec(format!(
                    "mask of '{name}' has shape {:?}, expected [{batch}, {shape:?}]",
                    mask.dims()
                )));
            }
            if !matches!(mask.dtype(), DType::U8 | DType::F16 | DType::BF16 | DType::F32 | DType::F64) {
                return Err(Error::Spec(format!(
                    "mask of '{name}' is {:?}: give keep flags (u8) or multipliers (a float type)",
                    mask.dtype()
                )));
            }
        }
        Ok((dims[0], batch))
    }

    /// Runs the network over a window of input spikes `[T, B, C, H, W]` and returns the readout and the
    /// activity of every spiking layer.
    ///
    /// Execution is layer-major: each layer maps the whole window of its input at once (one convolution or
    /// matrix product over all `T·B` frames), then its neurons run the window's recurrence in one op.
    /// `masks` holds the dropout masks (see [`Self::draw_masks`]); pass an empty map for inference.
    ///
    /// Event-driven inference on the CPU (`Engine::Sparse`, no gradients, f32 or f64) runs the forward half
    /// of the taped training pass ([`Self::forward_taped`]) instead: the same event-driven layers and
    /// recurrences, the window in parts, so its memory grows with `T` only by one byte per neuron and step;
    /// kept spikes are read off its tape.
    pub fn forward(&self, input: &Tensor, masks: &Masks, opts: ForwardOptions) -> Result<ForwardOutput> {
        let (steps, batch) = self.check_input(input, masks)?;
        let track = opts.track_gradients;
        let events = opts.engine == Engine::Sparse && !track && input.device().is_cpu();
        if events && matches!(self.dtype, DType::F32 | DType::F64) {
            // The taped pass's forward computes the same readout and counts in parts of the window, with
            // buffers sized by the part; its tape holds every layer's spikes, which are handed out when asked.
            let (mut out, tape) = self.taped_forward(input, masks, false)?;
            if opts.keep_spikes {
                for layer in &mut out.activity {
                    layer.spikes = tape.spike_window(self, &layer.name, self.dtype)?;
                }
            }
            return Ok(out);
        }

        // Windows by layer index; each is dropped after the last layer that reads it.
        let input = input.to_dtype(self.dtype)?;
        let mut outputs: Vec<Option<Tensor>> = vec![None; self.plan.layers.len()];
        let fetch = |outputs: &[Option<Tensor>], from: Feed| -> Result<Tensor> {
            match from {
                Feed::Input => Ok(input.clone()),
                Feed::Layer(j) => outputs[j].clone().ok_or_else(|| Error::Spec(format!("layer {j} has no output"))),
            }
        };
        let mut activity = Vec::new();
        for (i, layer) in self.plan.layers.iter().enumerate() {
            let frames = fetch(&outputs, layer.from)?.flatten(0, 1)?; // [T·B, ...]
            let needs_input_grad = layer.from != Feed::Input;
            let currents = match &layer.op {
                Op::Conv { weight, geometry: g, shortcut } => {
                    let w = self.weight_at(*weight, track);
                    let mut cur = conv(&frames, &w, g.padding, g.stride, needs_input_grad, events)?;
                    if let Some(sc) = shortcut {
                        let src = fetch(&outputs, sc.from)?.flatten(0, 1)?;
                        let term = match &sc.map {
                            ShortcutMap::Conv1x1 { weight, geometry } => {
                                let w = self.weight_at(*weight, track);
                                conv(&src, &w, geometry.padding, geometry.stride, sc.from != Feed::Input, events)?
                            }
                            ShortcutMap::Subsample { stride, .. } => subsample(&src, *stride)?,
                        };
                        cur = (cur + term)?;
                    }
                    cur
                }
                Op::Fc { weight, .. } => linear(&frames.flatten_from(1)?, &self.weight_at(*weight, track), events)?,
                Op::Pool { kernel, .. } => average_pool(&frames, *kernel)?,
                Op::Readout { weight, classes } => {
                    let cur = linear(&frames.flatten_from(1)?, &self.weight_at(*weight, track), events)?;
                    let cur = cur.reshape((steps, batch, *classes))?;
                    let output = leaky_readout(&cur, self.spec.threshold, self.spec.leak)?;
                    return Ok(ForwardOutput { output, activity });
                }
            };
            let neuron = if layer.is_pool() { self.pool } else { self.lif };
            let mut shape = vec![steps, batch];
            shape.extend_from_slice(&layer.shape);
            let spikes = neuron.forward_window(&currents.reshape(shape)?)?;
            let neuron_counts = spike_counts(&spikes.detach())?;
            let out = match masks.get(&layer.name) {
                Some(m) => {
                    spikes.broadcast_mul(&mask_multipliers(m, self.spec.dropout_p, self.dtype)?.unsqueeze(0)?)?
                }
                None => spikes.clone(),
            };
            activity.push(LayerActivity {
                name: layer.name.clone(),
                is_pool: layer.is_pool(),
                neurons: layer.neurons,
                neuron_counts,
                spikes: opts.keep_spikes.then_some(spikes),
            });
            outputs[i] = Some(out);
            for (j, earlier) in self.plan.layers[..=i].iter().enumerate() {
                if earlier.last_read.is_none_or(|last| last <= i) {
                    outputs[j] = None;
                }
            }
        }
        Err(Error::Spec("network has no readout".into()))
    }
}

/// A convolution over frames: Candle's own when no gradient is recorded (detached weights), else the op of
/// `snn_core::conv`, which skips the input gradient when `input_grad` is false (the network's input spikes) and
/// otherwise needs it only at the input's spikes (every other layer input is a neuron's spike train).
fn conv(frames: &Tensor, w: &Tensor, padding: usize, stride: usize, input_grad: bool, events: bool) -> Result<Tensor> {
    if events && sparse_enough(frames)? {
        Ok(conv2d_events(frames, w, padding, stride)?)
    } else if w.is_variable() {
        let input_grad = if input_grad { InputGrad::AtSpikes } else { InputGrad::None };
        Ok(conv2d_frames(frames, w, padding, stride, input_grad)?)
    } else {
        Ok(frames.conv2d(w, padding, stride, 1, 1)?)
    }
}

/// Spikes of every neuron position of a window `[T, B, ...]` summed over the steps and the batch: an f64 tensor
/// of the per-sample shape. One row-vector product `1ᵀ · S` over the `T·B` frames (Candle's reduction over a
/// leading dimension walks memory with a stride and costs more than a layer). Exact for spike windows: the
/// counts are integers far below 2²⁴. Signed windows (±1 input spikes) need `abs` first to count by magnitude.
pub fn spike_counts(window: &Tensor) -> Result<Tensor> {
    let dims = window.dims();
    if dims.len() < 3 {
        return Err(Error::Spec(format!("a spike window is [T, B, ...], got {dims:?}")));
    }
    let flat = window.reshape((dims[0] * dims[1], ()))?;
    let ones = Tensor::ones((1, flat.dim(0)?), flat.dtype(), flat.device())?;
    Ok(ones.matmul(&flat)?.to_dtype(DType::F64)?.reshape(&dims[2..])?)
}

/// `inputs · wᵀ`, event-driven when asked and the inputs are sparse enough.
fn linear(inputs: &Tensor, w: &Tensor, events: bool) -> Result<Tensor> {
    if events && sparse_enough(inputs)? {
        Ok(linear_events(inputs, w)?)
    } else {
        Ok(inputs.matmul(&w.t()?)?)
    }
}
