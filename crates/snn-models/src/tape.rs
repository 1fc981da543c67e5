//! The lean training pass on the CPU: a forward pass that keeps only a compact tape, and the spike-based
//! backward pass written out by hand.
//!
//! Candle's autograd keeps every intermediate window of the graph in full precision: each layer's input, its
//! currents and its spikes, `[T, B, ...]` floats each. The backward pass of Lee et al. needs far less:
//!
//! * a spiking layer's backward recurrence reads only its own spikes (and the leak correction computed from
//!   them), never its currents or membranes;
//! * a synaptic layer's kernel gradient `Σ_t δ(t) ⊗ x(t)` and its input gradient at the input's spikes read
//!   only the input spikes, which are the previous layer's spikes times its dropout mask;
//! * the readout's backward is constant over the window (`∂y/∂I(t) = 1/(θT)`), so its kernel gradient needs
//!   only the input spike counts.
//!
//! So the tape holds each spiking layer's spikes as one byte per neuron and step, the dropout masks, the
//! readout's input counts and the caller's input window; the float buffers are sized by one part of the
//! window and come from a pool the network keeps between passes (buffers no pass has asked for in two passes
//! are released).
//!
//! The window runs in **parts** of a few time steps ([`PART_FRAMES`] frames of `T·B`): forward, every layer
//! maps one part (one convolution over its frames, then the neuron recurrence continued from the membranes
//! the previous part left); backward, parts run in reverse time, every layer continuing its error `δ(t+1)`
//! from the part after. Transient buffers are therefore sized by the part, not by `T`; only the byte tape grows
//! with the window. The values are those of [`SpikingNetwork::forward`] with gradients tracked: the same
//! event-driven or dense convolutions per frame, the same recurrences; kernel gradients sum the parts in a
//! fixed order, so they can differ from the whole-window sum in the last bits.

use std::any::Any;
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, WithDType};
use snn_core::buffers::BufferPool;
use snn_core::conv::{dense_input_grad, dense_kernel_grad};
use snn_core::events::{
    channel_last_into, conv_events, conv_grads_events, linear_events_into, linear_input_grad_events,
    linear_weight_grad_events, transpose, within_density_limit, ConvGeometry, DenseFrames, EventFrames, SpikeFrames,
};
use snn_core::kernels::{self, Real};
use snn_core::pool::{average_pool_frames, average_pool_grad, subsample_frames, subsample_grad};

use crate::network::{LayerActivity, Masks};
use crate::spec::{LayerSpec, ShortcutKind, INPUT};
use crate::{Error, ForwardOutput, Result, SpikingNetwork};

/// Frames (`steps · batch`) per part of the window: the part's steps are `max(1, PART_FRAMES / B)`.
pub const PART_FRAMES: usize = 64;

/// What a training forward pass keeps for [`SpikingNetwork::backward`]: the spikes of every spiking layer as
/// bytes, the dropout masks, the readout's input spike counts and the input window.
#[derive(Debug)]
pub struct Tape {
    steps: usize,
    batch: usize,
    input: Tensor,
    masks: Masks,
    spikes: HashMap<String, Vec<u8>>,
    readout_counts: Vec<f64>,
    /// The forward pass's [`Prepared`] weights and masks, for the backward pass of the same float type.
    prepared: Option<Box<dyn Any + Send + Sync>>,
    /// The id of the network that recorded the tape: only that network's backward pass accepts it.
    network: u64,
}

impl Tape {
    /// Time steps of the window.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Bytes the tape holds beyond the caller's input window and masks: one per spiking neuron and step,
    /// plus the readout's input counts. (It also hands the forward pass's transposed copy of the weights and
    /// its float copy of the masks to the backward pass, which would otherwise rebuild them; those copies, the
    /// size of the weights and of the masks, are not counted.)
    pub fn bytes(&self) -> usize {
        self.spikes.values().map(Vec::len).sum::<usize>() + 8 * self.readout_counts.len()
    }

    /// The spike window `[T, B, ...]` of a spiking layer (before its mask) as 0/1 in `dtype`, if the layer
    /// exists.
    pub fn spike_window(&self, net: &SpikingNetwork, layer: &str, dtype: DType) -> Result<Option<Tensor>> {
        let (Some(bytes), Some(shape)) = (self.spikes.get(layer), net.layer_shape(layer)) else { return Ok(None) };
        let mut dims = vec![self.steps, self.batch];
        dims.extend_from_slice(shape);
        Ok(Some(Tensor::from_slice(bytes.as_slice(), dims, &Device::Cpu)?.to_dtype(dtype)?))
    }
}

/// Weight gradients of one backward pass, by weight name (`<layer>.weight`), in the network's weight order.
#[derive(Debug, Clone, Default)]
pub struct Gradients(Vec<(String, Tensor)>);

impl Gradients {
    /// Collects named gradients.
    pub fn new(grads: Vec<(String, Tensor)>) -> Self {
        Self(grads)
    }

    /// The gradients of the network's weights from a Candle autograd pass (weights without one are left out).
    pub fn from_grad_store(store: &candle_core::backprop::GradStore, net: &SpikingNetwork) -> Self {
        Self(
            net.weights()
                .iter()
                .filter_map(|(n, v)| store.get(v.as_tensor()).map(|g| (n.clone(), g.clone())))
                .collect(),
        )
    }

    /// The gradient of weight `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, g)| g)
    }

    /// All gradients in weight order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.0.iter().map(|(n, g)| (n.as_str(), g))
    }
}

impl SpikingNetwork {
    /// The forward pass of training on the CPU: the readout and layer activity of
    /// [`Self::forward`], plus the compact [`Tape`] that [`Self::backward`] needs (no autograd graph).
    ///
    /// The output tensor is not connected to the weights: form the loss on it, take its gradient with respect
    /// to the output, and pass that to [`Self::backward`].
    pub fn forward_taped(&self, input: &Tensor, masks: &Masks) -> Result<(ForwardOutput, Tape)> {
        if !self.device().is_cpu() {
            return Err(Error::Spec("the taped training pass runs on the CPU; use forward() elsewhere".into()));
        }
        match self.dtype() {
            DType::F32 => Pass::<f32>::new(self, input, masks, None)?.forward(),
            DType::F64 => Pass::<f64>::new(self, input, masks, None)?.forward(),
            other => Err(Error::Spec(format!("the taped training pass runs in f32 or f64, not {other:?}"))),
        }
    }

    /// The spike-based backward pass from a [`Tape`] and the gradient of the loss with respect to the readout
    /// `[B, classes]`: the gradient of every weight, as Candle's autograd computes it through
    /// [`Self::forward`] (up to summation order).
    ///
    /// Update the weights only after this call: the gradient belongs to the weights of the forward pass, whose
    /// transposed copy the tape carries for the event-driven layers, while the dense layers read the weight
    /// tensors themselves, which an optimizer step changes in place.
    pub fn backward(&self, mut tape: Tape, grad_output: &Tensor) -> Result<Gradients> {
        if tape.network != self.id {
            return Err(Error::Spec(
                "the tape was recorded by another network; run forward_taped on this network first".into(),
            ));
        }
        fn typed<F: Real + WithDType>(prepared: Option<Box<dyn Any + Send + Sync>>) -> Option<Prepared<F>> {
            prepared.and_then(|p| p.downcast::<Prepared<F>>().ok()).map(|p| *p)
        }
        match self.dtype() {
            DType::F32 => {
                let prepared = typed::<f32>(tape.prepared.take());
                Pass::<f32>::new(self, &tape.input, &tape.masks, prepared)?.backward(&tape, grad_output)
            }
            DType::F64 => {
                let prepared = typed::<f64>(tape.prepared.take());
                Pass::<f64>::new(self, &tape.input, &tape.masks, prepared)?.backward(&tape, grad_output)
            }
            other => Err(Error::Spec(format!("the taped training pass runs in f32 or f64, not {other:?}"))),
        }
    }
}

/// What a pass derives from the network and the masks before it starts: each layer's weights as slices, and
/// the masks as slices. The forward pass hands it to the backward pass through the tape.
struct Prepared<F> {
    masks: HashMap<String, Vec<F>>,
    weights: HashMap<String, Weights<F>>,
}

impl<F: Real + WithDType> Prepared<F> {
    fn new(net: &SpikingNetwork, masks: &Masks) -> Result<Self> {
        let masks = masks
            .iter()
            .map(|(k, m)| Ok((k.clone(), m.to_dtype(F::DTYPE)?.flatten_all()?.to_vec1::<F>()?)))
            .collect::<Result<_>>()?;
        let mut weights = HashMap::new();
        for (name, var) in net.weights() {
            let tensor = var.as_tensor().detach();
            let values = tensor.flatten_all()?.to_vec1::<F>()?;
            let dims = tensor.dims();
            let (outputs, fan_in) = (dims[0], values.len() / dims[0]);
            let rows = transpose(&values, outputs, fan_in);
            let layer = name.strip_suffix(".weight").unwrap_or(name).to_string();
            weights.insert(layer, Weights { tensor, rows });
        }
        Ok(Self { masks, weights })
    }
}

/// One layer's weights as slices: the tensor (for the dense layers) and its transposed rows (for the
/// event-driven ones).
struct Weights<F> {
    tensor: Tensor,
    rows: Vec<F>,
}

/// Where a synaptic layer's input frames of the current part come from.
enum Source<'a, F> {
    /// The caller's input window (any values).
    Input(DenseFrames<'a, F>),
    /// A spiking layer's byte tape, masked.
    Spikes(SpikeFrames<'a, F>),
}

impl<F: Real> EventFrames<F> for Source<'_, F> {
    fn frame_len(&self) -> usize {
        match self {
            Source::Input(x) => x.frame_len(),
            Source::Spikes(x) => x.frame_len(),
        }
    }

    fn frames(&self) -> usize {
        match self {
            Source::Input(x) => x.frames(),
            Source::Spikes(x) => x.frames(),
        }
    }

    #[inline(always)]
    fn for_each_event_in(&self, frame: usize, range: std::ops::Range<usize>, f: impl FnMut(usize, F)) {
        match self {
            Source::Input(x) => x.for_each_event_in(frame, range, f),
            Source::Spikes(x) => x.for_each_event_in(frame, range, f),
        }
    }
}

impl<F: Real + WithDType> Source<'_, F> {
    /// Whether few enough entries are non-zero for the event-driven kernels ([`within_density_limit`]): the
    /// input's non-zero values, or the spikes that their dropout mask kept.
    fn sparse(&self) -> bool {
        let mut nonzero = 0;
        for f in 0..self.frames() {
            self.for_each_event(f, |_, _| nonzero += 1);
        }
        within_density_limit(nonzero, self.frames() * self.frame_len())
    }

    /// The frames as a dense tensor `[N, ...frame]`.
    fn dense(&self, frame: &[usize]) -> Result<Tensor> {
        let mut dims = vec![self.frames()];
        dims.extend_from_slice(frame);
        let values = match self {
            Source::Input(x) => x.data.to_vec(),
            Source::Spikes(x) => {
                let mut v = vec![F::zero(); x.spikes.len()];
                for f in 0..x.frames() {
                    let dst = &mut v[f * x.frame_len..][..x.frame_len];
                    x.for_each_event(f, |i, value| dst[i] = value);
                }
                v
            }
        };
        Ok(Tensor::from_vec(values, dims, &Device::Cpu)?)
    }
}

/// The state of one taped pass over a network, for one float type.
struct Pass<'a, F: Real + WithDType> {
    net: &'a SpikingNetwork,
    input: &'a Tensor,
    steps: usize,
    batch: usize,
    /// Steps per part.
    part: usize,
    masks: HashMap<String, Vec<F>>,
    /// The masks as given (tensors share their storage), for the tape.
    mask_tensors: Masks,
    weights: HashMap<String, Weights<F>>,
    /// Float buffers reused from part to part.
    pool: BufferPool<F>,
}

impl<'a, F: Real + WithDType> Pass<'a, F> {
    /// A pass over `input` with `masks`, reusing the weights and masks a forward pass prepared, if given.
    fn new(net: &'a SpikingNetwork, input: &'a Tensor, masks: &Masks, prepared: Option<Prepared<F>>) -> Result<Self> {
        let (steps, batch) = net.check_input(input, masks)?;
        let mask_tensors = masks.clone();
        let Prepared { masks, weights } = match prepared {
            Some(prepared) => prepared,
            None => Prepared::new(net, masks)?,
        };
        let part = (PART_FRAMES / batch).clamp(1, steps);
        let pool = net.scratch.take();
        Ok(Self { net, input, steps, batch, part, masks, mask_tensors, weights, pool })
    }

    fn weights(&self, layer: &str) -> Result<&Weights<F>> {
        self.weights.get(layer).ok_or_else(|| Error::Weights(format!("missing tensor '{layer}.weight'")))
    }

    fn neurons(&self, layer: &str) -> usize {
        self.net.shapes.get(layer).map_or(0, |s| s.iter().product())
    }

    /// Per-sample shape of a layer's output, or of the input.
    fn shape(&self, layer: &str) -> Vec<usize> {
        if layer == INPUT {
            self.net.spec().input_shape.clone()
        } else {
            self.net.shapes.get(layer).cloned().unwrap_or_default()
        }
    }

    /// The input frames of part `[t0, t0 + steps)` of `layer`'s output (or of the input window).
    fn source<'s>(
        &'s self,
        layer: &str,
        t0: usize,
        steps: usize,
        input: &'s [F],
        spikes: &'s HashMap<String, Vec<u8>>,
    ) -> Result<Source<'s, F>> {
        if layer == INPUT {
            let frame_len = self.net.spec().input_shape.iter().product();
            return Ok(Source::Input(DenseFrames { data: input, frame_len }));
        }
        let n = self.neurons(layer);
        let bytes = spikes.get(layer).ok_or_else(|| Error::Spec(format!("layer '{layer}' has no output")))?;
        let span = self.batch * n;
        Ok(Source::Spikes(SpikeFrames {
            spikes: &bytes[t0 * span..(t0 + steps) * span],
            frame_len: n,
            batch: self.batch,
            mask: self.masks.get(layer).map(Vec::as_slice),
        }))
    }

    /// The input window's part `[t0, t0 + steps)`.
    fn input_part(&self, t0: usize, steps: usize) -> Result<Vec<F>> {
        Ok(self.input.narrow(0, t0, steps)?.to_dtype(F::DTYPE)?.flatten_all()?.to_vec1::<F>()?)
    }

    fn geometry(
        &self,
        input: &str,
        outputs: usize,
        kernel: usize,
        padding: usize,
        stride: usize,
    ) -> Result<ConvGeometry> {
        let shape = self.shape(input);
        let [c, h, w] = shape[..] else {
            return Err(Error::Spec(format!("convolution input '{input}' is not [C, H, W]: {shape:?}")));
        };
        ConvGeometry::new([c, h, w], outputs, kernel, padding, stride)
            .ok_or_else(|| Error::Spec(format!("kernel {kernel} does not fit input '{input}' {shape:?}")))
    }

    /// Currents of a convolution over the part's frames, event-driven when the input is sparse.
    fn conv_forward(&self, x: &Source<F>, w: &Weights<F>, g: ConvGeometry, out: &mut [F]) -> Result<()> {
        if x.sparse() {
            conv_events(x, &w.rows, g, out);
        } else {
            let y = x.dense(&[g.channels, g.height, g.width])?.conv2d(&w.tensor, g.padding, g.stride, 1, 1)?;
            out.copy_from_slice(&y.flatten_all()?.to_vec1::<F>()?);
        }
        Ok(())
    }

    fn forward(mut self) -> Result<(ForwardOutput, Tape)> {
        let spec = self.net.spec();
        let (steps, batch) = (self.steps, self.batch);
        let mut spikes: HashMap<String, Vec<u8>> = HashMap::new();
        let mut membranes: HashMap<String, Vec<F>> = HashMap::new();
        for layer in &spec.layers {
            if !matches!(layer, LayerSpec::Readout(_)) {
                let n = self.neurons(layer.name());
                spikes.insert(layer.name().to_string(), vec![0; steps * batch * n]);
                membranes.insert(layer.name().to_string(), vec![F::zero(); batch * n]);
            }
        }
        let mut readout = Vec::new();
        let mut readout_counts = Vec::new();
        let pool = &self.pool;

        for t0 in (0..steps).step_by(self.part) {
            let len = self.part.min(steps - t0);
            let frames = len * batch;
            let input = self.input_part(t0, len)?;
            for layer in &spec.layers {
                let name = layer.name();
                let x = self.source(layer.input(), t0, len, &input, &spikes)?;
                let (currents, neuron) = match layer {
                    LayerSpec::Conv(c) => {
                        let g = self.geometry(&c.input, c.out_channels, c.kernel, c.padding, c.stride)?;
                        let mut currents = pool.zeroed(frames * g.frame_out());
                        self.conv_forward(&x, self.weights(name)?, g, &mut currents)?;
                        if let Some(sc) = &c.shortcut {
                            let src = self.source(&sc.input, t0, len, &input, &spikes)?;
                            let mut term = pool.zeroed(currents.len());
                            match sc.kind {
                                ShortcutKind::Conv1x1 => {
                                    let g = self.geometry(&sc.input, c.out_channels, 1, 0, sc.stride)?;
                                    self.conv_forward(&src, self.weights(&sc.name)?, g, &mut term)?;
                                }
                                ShortcutKind::Subsample => {
                                    let shape = self.shape(&sc.input);
                                    subsample_frames(&src, &shape, sc.stride, &self.shape(name), &mut term)?;
                                }
                            }
                            currents.iter_mut().zip(&term).for_each(|(c, t)| *c += *t);
                            pool.recycle(term);
                        }
                        (currents, self.net.lif)
                    }
                    LayerSpec::Fc(f) => {
                        let mut currents = pool.zeroed(frames * f.out_features);
                        linear_forward(&x, self.weights(name)?, f.out_features, &mut currents)?;
                        (currents, self.net.lif)
                    }
                    LayerSpec::Pool(p) => {
                        let shape = self.shape(&p.input);
                        let mut currents = pool.zeroed(frames * self.neurons(name));
                        average_pool_frames(&x, &shape, p.kernel, &mut currents);
                        (currents, self.net.pool)
                    }
                    LayerSpec::Readout(r) => {
                        let mut currents = pool.zeroed(frames * r.out_features);
                        linear_forward(&x, self.weights(name)?, r.out_features, &mut currents)?;
                        if readout.is_empty() {
                            readout = vec![F::zero(); batch * r.out_features];
                            readout_counts = vec![0.0; batch * x.frame_len()];
                        }
                        kernels::readout_membrane_from(&currents, F::lit(spec.leak), &mut readout);
                        add_counts(&x, &mut readout_counts);
                        pool.recycle(currents);
                        break;
                    }
                };
                let n = self.neurons(name);
                let span = batch * n;
                let (Some(membrane), Some(tape)) = (membranes.get_mut(name), spikes.get_mut(name)) else {
                    return Err(Error::Spec(format!("layer '{name}' has no state")));
                };
                kernels::spike_forward_from(
                    &currents,
                    F::lit(neuron.threshold),
                    F::lit(neuron.leak),
                    membrane,
                    &mut tape[t0 * span..(t0 + len) * span],
                );
                pool.recycle(currents);
            }
        }

        let Some(LayerSpec::Readout(r)) = spec.layers.iter().find(|l| matches!(l, LayerSpec::Readout(_))) else {
            return Err(Error::Spec("network has no readout".into()));
        };
        kernels::readout_normalise(&mut readout, F::lit(spec.threshold), steps);
        let output = Tensor::from_vec(readout, (batch, r.out_features), &Device::Cpu)?;

        let mut activity = Vec::new();
        for layer in &spec.layers {
            let Some(bytes) = spikes.get(layer.name()) else { continue };
            let shape = self.shape(layer.name());
            let n = shape.iter().product::<usize>();
            let mut counts = vec![0u32; n];
            for frame in bytes.chunks_exact(n) {
                counts.iter_mut().zip(frame).for_each(|(c, &s)| *c += u32::from(s));
            }
            let counts: Vec<f64> = counts.into_iter().map(f64::from).collect();
            activity.push(LayerActivity {
                name: layer.name().to_string(),
                is_pool: matches!(layer, LayerSpec::Pool(_)),
                neurons: n,
                neuron_counts: Tensor::from_vec(counts, shape, &Device::Cpu)?,
                spikes: None,
            });
        }
        let masks = self.mask_tensors.clone();
        let prepared: Box<dyn Any + Send + Sync> =
            Box::new(Prepared { masks: std::mem::take(&mut self.masks), weights: std::mem::take(&mut self.weights) });
        let input = self.input.clone();
        let network = self.net.id;
        let tape = Tape { steps, batch, input, masks, spikes, readout_counts, prepared: Some(prepared), network };
        Ok((ForwardOutput { output, activity }, tape))
    }

    fn backward(self, tape: &Tape, grad_output: &Tensor) -> Result<Gradients> {
        let spec = self.net.spec();
        let (steps, batch) = (self.steps, self.batch);
        let Some(LayerSpec::Readout(r)) = spec.layers.iter().find(|l| matches!(l, LayerSpec::Readout(_))) else {
            return Err(Error::Spec("network has no readout".into()));
        };
        if grad_output.dims() != [batch, r.out_features] {
            return Err(Error::Spec(format!(
                "output gradient has shape {:?}, expected [{batch}, {}]",
                grad_output.dims(),
                r.out_features
            )));
        }
        let spikes = &tape.spikes;
        // The readout: ∂y/∂I(t) = 1/(θT) at every step.
        let norm = F::lit(1.0 / (spec.threshold * steps as f64));
        let readout_delta: Vec<F> =
            grad_output.to_dtype(F::DTYPE)?.flatten_all()?.to_vec1::<F>()?.into_iter().map(|g| g * norm).collect();
        let classes = r.out_features;
        let fan_in = r.in_features;
        // Weight gradients accumulate transposed, `[fan-in, outputs]` (the layout of `Weights::rows`).
        let mut grads: HashMap<String, Vec<F>> =
            self.weights.iter().map(|(k, w)| (k.clone(), vec![F::zero(); w.rows.len()])).collect();
        {
            let gw = accumulator(&mut grads, &r.name)?;
            for b in 0..batch {
                let counts = &tape.readout_counts[b * fan_in..][..fan_in];
                let delta = &readout_delta[b * classes..][..classes];
                for (row, &c) in gw.chunks_exact_mut(classes).zip(counts) {
                    row.iter_mut().zip(delta).for_each(|(g, &d)| *g += d * F::lit(c));
                }
            }
        }
        // Gradient of the readout's input spikes, the same at every step: [B, in].
        let readout_rows = &self.weights(&r.name)?.rows;
        let readout_input_grad: Vec<F> = (0..batch * fan_in)
            .map(|j| {
                let (b, i) = (j / fan_in, j % fan_in);
                (0..classes).fold(F::zero(), |s, k| s + readout_rows[i * classes + k] * readout_delta[b * classes + k])
            })
            .collect();

        // Per spiking layer: the factor at spike times (θ⁻¹·NG or 1) and the running error δ(t+1).
        let mut gains: HashMap<&str, Vec<F>> = HashMap::new();
        let mut deltas: HashMap<&str, Vec<F>> = HashMap::new();
        for layer in &spec.layers {
            let name = layer.name();
            let Some(bytes) = spikes.get(name) else { continue };
            let span = batch * self.neurons(name);
            let neuron = if matches!(layer, LayerSpec::Pool(_)) { self.net.pool } else { self.net.lif };
            gains.insert(name, kernels::spike_gains(bytes, span, neuron.backward_rule()));
            deltas.insert(name, vec![F::zero(); span]);
        }

        let pool = &self.pool;
        let starts: Vec<usize> = (0..steps).step_by(self.part).collect();
        for &t0 in starts.iter().rev() {
            let len = self.part.min(steps - t0);
            let frames = len * batch;
            let input = self.input_part(t0, len)?;
            let mut grad_spikes: HashMap<&str, Vec<F>> = HashMap::new();
            for layer in &spec.layers {
                if spikes.contains_key(layer.name()) {
                    grad_spikes.insert(layer.name(), pool.zeroed(frames * self.neurons(layer.name())));
                }
            }
            if let Some(g) = grad_spikes.get_mut(r.input.as_str()) {
                for row in g.chunks_exact_mut(batch * fan_in) {
                    row.iter_mut().zip(&readout_input_grad).for_each(|(g, &d)| *g += d);
                }
            }
            for layer in spec.layers.iter().rev() {
                let name = layer.name();
                let Some(mut grad) = grad_spikes.remove(name) else { continue };
                let n = self.neurons(name);
                if let Some(mask) = self.masks.get(name) {
                    for row in grad.chunks_exact_mut(batch * n) {
                        row.iter_mut().zip(mask).for_each(|(g, &m)| *g *= m);
                    }
                }
                let span = batch * n;
                let (Some(gain), Some(delta)) = (gains.get(name), deltas.get_mut(name)) else { continue };
                let mut currents_grad = pool.zeroed(grad.len());
                let own = &spikes[name][t0 * span..(t0 + len) * span];
                kernels::spike_backward_from(own, &grad, gain, delta, &mut currents_grad);
                pool.recycle(grad);
                let x = self.source(layer.input(), t0, len, &input, spikes)?;
                match layer {
                    LayerSpec::Conv(c) => {
                        let g = self.geometry(&c.input, c.out_channels, c.kernel, c.padding, c.stride)?;
                        let w = self.weights(name)?;
                        let into = grad_spikes.get_mut(c.input.as_str());
                        let acc = accumulator(&mut grads, name)?;
                        self.conv_backward(&x, w, g, &currents_grad, into, acc)?;
                        if let Some(sc) = &c.shortcut {
                            let src = self.source(&sc.input, t0, len, &input, spikes)?;
                            let into = grad_spikes.get_mut(sc.input.as_str());
                            match sc.kind {
                                ShortcutKind::Conv1x1 => {
                                    let g = self.geometry(&sc.input, c.out_channels, 1, 0, sc.stride)?;
                                    let w = self.weights(&sc.name)?;
                                    let acc = accumulator(&mut grads, &sc.name)?;
                                    self.conv_backward(&src, w, g, &currents_grad, into, acc)?;
                                }
                                ShortcutKind::Subsample => {
                                    if let Some(into) = into {
                                        let shape = self.shape(&sc.input);
                                        subsample_grad(&shape, sc.stride, &self.shape(name), &currents_grad, into);
                                    }
                                }
                            }
                        }
                    }
                    LayerSpec::Fc(f) => {
                        let w = self.weights(name)?;
                        let into = grad_spikes.get_mut(f.input.as_str());
                        linear_backward(&x, w, f.out_features, &currents_grad, into, accumulator(&mut grads, name)?)?;
                    }
                    LayerSpec::Pool(p) => {
                        if let Some(into) = grad_spikes.get_mut(p.input.as_str()) {
                            average_pool_grad(&self.shape(&p.input), p.kernel, &currents_grad, into);
                        }
                    }
                    LayerSpec::Readout(_) => {}
                }
                pool.recycle(currents_grad);
            }
        }

        let mut out = Vec::new();
        for (name, var) in self.net.weights() {
            let layer = name.strip_suffix(".weight").unwrap_or(name);
            let g = grads.remove(layer).ok_or_else(|| Error::Weights(format!("missing '{name}'")))?;
            let outputs = var.dims()[0];
            let g = transpose(&g, g.len() / outputs, outputs);
            out.push((name.clone(), Tensor::from_vec(g, var.dims(), &Device::Cpu)?));
        }
        Ok(Gradients(out))
    }

    /// Adds the kernel gradient of a convolution over one part to `acc` (transposed, `[C·k·k, O]`), and its
    /// input gradient (at the input's events,
    /// or everywhere for a dense input) into `input_grad` when the input is a spiking layer.
    fn conv_backward(
        &self,
        x: &Source<F>,
        w: &Weights<F>,
        g: ConvGeometry,
        delta: &[F],
        input_grad: Option<&mut Vec<F>>,
        acc: &mut [F],
    ) -> Result<()> {
        let input_grad = match x {
            Source::Input(_) => None,
            Source::Spikes(_) => input_grad,
        };
        if x.sparse() {
            // The kernels read the error channel-last; one pass over the events gives both gradients.
            let mut delta_rows = self.pool.zeroed(delta.len());
            channel_last_into(delta, g, &mut delta_rows);
            let input = input_grad.map(|into| (w.rows.as_slice(), into.as_mut_slice()));
            conv_grads_events(x, &delta_rows, g, acc, input);
            self.pool.recycle(delta_rows);
        } else {
            let frames = x.frames();
            let dense = x.dense(&[g.channels, g.height, g.width])?;
            let delta = Tensor::from_slice(delta, (frames, g.outputs, g.out_h, g.out_w), &Device::Cpu)?;
            if let Some(into) = input_grad {
                let gx = dense_input_grad(&w.tensor, &delta, g.padding, g.stride, (g.height, g.width))?;
                add(into, &gx.flatten_all()?.to_vec1::<F>()?);
            }
            // Candle's gradient is [O, C·k·k]; the accumulator holds it transposed.
            let gw = dense_kernel_grad(&dense, &delta, g.kernel, g.padding, g.stride)?.flatten_all()?.to_vec1::<F>()?;
            add(acc, &transpose(&gw, g.outputs, g.channels * g.kernel * g.kernel));
        }
        Ok(())
    }
}

impl<F: Real + WithDType> Drop for Pass<'_, F> {
    /// Hands the buffers back to the network, for its next pass.
    fn drop(&mut self) {
        self.pool.end_pass();
        self.net.scratch.put(std::mem::take(&mut self.pool));
    }
}

/// `dst += src`.
fn add<F: Real>(dst: &mut [F], src: &[F]) {
    dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
}

/// Currents of a fully connected layer over the part's frames `[N, out]`.
fn linear_forward<F: Real + WithDType>(x: &Source<F>, w: &Weights<F>, outputs: usize, out: &mut [F]) -> Result<()> {
    if x.sparse() {
        linear_events_into(x, &w.rows, outputs, out);
    } else {
        let y = x.dense(&[x.frame_len()])?.matmul(&w.tensor.t()?)?;
        out.copy_from_slice(&y.flatten_all()?.to_vec1::<F>()?);
    }
    Ok(())
}

/// Adds the weight gradient of a fully connected layer over one part to `acc` (transposed, `[in, out]`),
/// and its input gradient into `input_grad` when the input is a spiking layer: event-driven (at the input's
/// events) when the input is sparse, else as dense products (everywhere), as `Pass::conv_backward` does for a
/// convolution.
fn linear_backward<F: Real + WithDType>(
    x: &Source<F>,
    w: &Weights<F>,
    outputs: usize,
    delta: &[F],
    input_grad: Option<&mut Vec<F>>,
    acc: &mut [F],
) -> Result<()> {
    let input_grad = match x {
        Source::Input(_) => None,
        Source::Spikes(_) => input_grad,
    };
    if x.sparse() {
        if let Some(into) = input_grad {
            linear_input_grad_events(x, &w.rows, delta, outputs, into);
        }
        linear_weight_grad_events(x, delta, outputs, acc);
    } else {
        let delta = Tensor::from_slice(delta, (x.frames(), outputs), &Device::Cpu)?;
        if let Some(into) = input_grad {
            add(into, &delta.matmul(&w.tensor)?.flatten_all()?.to_vec1::<F>()?);
        }
        let inputs = x.dense(&[x.frame_len()])?;
        add(acc, &inputs.t()?.contiguous()?.matmul(&delta)?.flatten_all()?.to_vec1::<F>()?);
    }
    Ok(())
}

/// The transposed gradient accumulator of a layer's weight.
fn accumulator<'m, F>(grads: &'m mut HashMap<String, Vec<F>>, layer: &str) -> Result<&'m mut [F]> {
    grads.get_mut(layer).map(Vec::as_mut_slice).ok_or_else(|| Error::Weights(format!("missing '{layer}.weight'")))
}

/// Adds the part's input frames, summed over its steps, into `counts` `[B, in]`.
fn add_counts<F: Real + WithDType>(x: &Source<F>, counts: &mut [f64]) {
    let len = x.frame_len();
    let batch = counts.len() / len.max(1);
    for f in 0..x.frames() {
        let row = &mut counts[(f % batch) * len..][..len];
        let mut visit = |i: usize, v: F| row[i] += <F as WithDType>::to_f64(v);
        x.for_each_event(f, &mut visit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The density of a masked spike window counts the spikes its mask kept, once each: 60 % of the
    /// neurons spike but the mask drops half of those, so 30 % of the entries are non-zero (event-driven),
    /// while 60 % kept spikes are dense.
    #[test]
    fn masked_spike_density_counts_the_kept_spikes() {
        let (batch, n) = (2, 10);
        let spikes: Vec<u8> = (0..batch * n).map(|i| u8::from(i % 10 < 6)).collect();
        let dropped: Vec<f64> = (0..batch * n).map(|i| if i % 2 == 0 { 2.0 } else { 0.0 }).collect();
        let kept = vec![2.0; batch * n];
        let frames = |mask| Source::Spikes(SpikeFrames { spikes: &spikes, frame_len: n, batch, mask });
        assert!(frames(Some(&dropped)).sparse(), "30 % kept spikes are within the limit");
        assert!(!frames(Some(&kept)).sparse(), "60 % kept spikes are not");
        assert!(!frames(None).sparse());
        // Dense inputs: the share of non-zero values, whatever their magnitude.
        let small: Vec<f64> = (0..20).map(|i| if i % 10 < 6 { 0.1 } else { 0.0 }).collect();
        assert!(!Source::Input(DenseFrames { data: &small, frame_len: 10 }).sparse());
        let large: Vec<f64> = (0..20).map(|i| if i % 10 < 4 { 3.0 } else { 0.0 }).collect();
        assert!(Source::Input(DenseFrames { data: &large, frame_len: 10 }).sparse());
    }
}
