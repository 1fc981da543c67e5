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
//! So the tape holds each spiking layer's spikes as one bit per neuron and step ([`SpikeBits`]), the dropout
//! masks, the readout's input counts and the input window: two bits per value when it holds rate-coded spikes
//! (−1, 0, +1; [`SignedSpikeBits`]), else the caller's tensor; the float buffers are sized by one part of the
//! window and come from a pool the network keeps between passes (buffers no pass has asked for in two passes
//! are released).
//!
//! The window runs in **parts** of a few time steps (at most [`PART_FRAMES`] frames of `T·B`, and few enough
//! that one float per neuron of the part fits in [`PART_BYTES`]): forward, every layer
//! maps one part (one convolution over its frames, then the neuron recurrence continued from the membranes
//! the previous part left); backward, parts run in reverse time, every layer continuing its error `δ(t+1)`
//! from the part after. Transient buffers are therefore sized by the part, not by `T`; only the bit tape grows
//! with the window. Kernels read and write the spikes of the current part as bytes, which the pass moves in and
//! out of the tape part by part. The values are those of [`SpikingNetwork::forward`] with gradients tracked: the same
//! event-driven or dense convolutions per frame, the same recurrences; kernel gradients sum the parts in a
//! fixed order, so they can differ from the whole-window sum in the last bits.

use std::any::Any;
use std::ops::Deref;

use candle_core::{DType, Device, Storage, Tensor, WithDType};
use snn_core::bits::{SignedSpikeBits, SpikeBits};
use snn_core::buffers::{filled, BufferPool};
use snn_core::conv::{dense_input_grad, dense_kernel_grad};
use snn_core::dropout::{self, MaskView};
use snn_core::events::{
    channel_last_into, conv_events, conv_grads_events, linear_events_into, linear_input_grad_events,
    linear_weight_grad_events, transpose, transpose_into, ConvGeometry, DenseFrames, EventFrames, SpikeFrames,
};
use snn_core::kernels::{self, Real};
use snn_core::pool::{average_pool_frames, average_pool_grad, subsample_frames, subsample_grad};

use crate::network::{LayerActivity, Masks};
use crate::plan::{Feed, Layer, Op, Plan, ShortcutMap};
use crate::profile::{Phase, Recorder, Work};
use crate::{Error, ForwardOutput, Result, SpikingNetwork};

/// At most this many frames (`steps · batch`) per part of the window.
pub const PART_FRAMES: usize = 64;

/// A part holds at most as many steps as fit one float per spiking neuron of the whole network in this many
/// bytes (and at least one step, and at least two frames per available CPU thread). The part-sized buffers (currents, spike gradients) scale with it: for VGG9
/// at batch 16 in f32 a part is one step, for LeNet at batch 32 two steps.
pub const PART_BYTES: usize = 16 << 20;

/// What a training forward pass keeps for [`SpikingNetwork::backward`]: the spikes of every spiking layer as
/// bits, the dropout masks, the readout's input spike counts and the input window.
///
/// A window of rate-coded spikes is kept as two bits per value, so a caller that hands its input tensor to
/// the step and drops it after [`SpikingNetwork::forward_taped`] frees the window's floats for the backward
/// pass; any other input (direct coding) is kept as the caller's tensor.
#[derive(Debug)]
pub struct Tape {
    steps: usize,
    batch: usize,
    input: TapedInput,
    masks: Masks,
    /// Every layer's spikes `[T, B, neurons]` as bits, by layer index (empty for the readout).
    spikes: Vec<SpikeBits>,
    readout_counts: Vec<f64>,
    /// The forward pass's [`Prepared`] weights, for the backward pass of the same float type.
    prepared: Option<Box<dyn Any + Send + Sync>>,
    /// The id of the network that recorded the tape: only that network's backward pass accepts it.
    network: u64,
}

impl Tape {
    /// Time steps of the window.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Bytes the tape holds beyond the caller's masks (and input tensor, when it keeps that): one bit per
    /// spiking neuron and step (in whole 64-bit words per layer), two bits per input value when the input
    /// is rate-coded spikes, plus the readout's input counts. (It also hands the forward pass's transposed
    /// copy of the weights to the backward pass, which would otherwise rebuild it; that copy, the size of
    /// the weights, is not counted.)
    pub fn bytes(&self) -> usize {
        let input = match &self.input {
            TapedInput::Spikes(bits) => bits.bytes(),
            TapedInput::Values(_) => 0,
        };
        self.spikes.iter().map(SpikeBits::bytes).sum::<usize>() + input + 8 * self.readout_counts.len()
    }

    /// The spike window `[T, B, ...]` of a spiking layer (before its mask) as 0/1 in `dtype`, if the layer
    /// exists.
    pub fn spike_window(&self, net: &SpikingNetwork, layer: &str, dtype: DType) -> Result<Option<Tensor>> {
        let Some(i) = net.plan.position(layer).filter(|&i| net.plan.layers[i].spikes()) else { return Ok(None) };
        let bytes = self.spikes[i].to_bytes();
        let mut dims = vec![self.steps, self.batch];
        dims.extend_from_slice(&net.plan.layers[i].shape);
        Ok(Some(Tensor::from_vec(bytes, dims, &Device::Cpu)?.to_dtype(dtype)?))
    }
}

/// The input window as a tape keeps it.
#[derive(Debug)]
enum TapedInput {
    /// Rate-coded spikes, two bits per value.
    Spikes(SignedSpikeBits),
    /// Any other values: the caller's tensor (its storage is shared, not copied).
    Values(Tensor),
}

/// The input window a pass reads, part by part.
#[derive(Clone, Copy)]
enum InputWindow<'a> {
    /// A tensor `[T, B, ...]`.
    Values(&'a Tensor),
    /// Rate-coded spikes kept by a tape.
    Spikes(&'a SignedSpikeBits),
}

impl<'a> From<&'a TapedInput> for InputWindow<'a> {
    fn from(input: &'a TapedInput) -> Self {
        match input {
            TapedInput::Spikes(bits) => InputWindow::Spikes(bits),
            TapedInput::Values(tensor) => InputWindow::Values(tensor),
        }
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
        self.taped_forward(input, masks, true)
    }

    /// [`Self::forward_taped`]; with `pack_input` false the tape keeps the caller's input tensor instead of
    /// packing rate-coded spikes into bits (event-driven inference, whose tape serves no backward pass).
    pub(crate) fn taped_forward(
        &self,
        input: &Tensor,
        masks: &Masks,
        pack_input: bool,
    ) -> Result<(ForwardOutput, Tape)> {
        self.check_taped_device()?;
        let shape = self.check_input(input, masks)?;
        snn_core::cpu::on_worker(|| {
            let input = InputWindow::Values(input);
            match self.dtype() {
                DType::F32 => Pass::<f32>::new(self, input, shape, masks, None)?.forward(pack_input),
                DType::F64 => Pass::<f64>::new(self, input, shape, masks, None)?.forward(pack_input),
                other => Err(unsupported_dtype(other)),
            }
        })
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
        snn_core::cpu::on_worker(|| {
            let (input, shape) = (InputWindow::from(&tape.input), (tape.steps, tape.batch));
            match self.dtype() {
                DType::F32 => {
                    let prepared = typed::<f32>(tape.prepared.take());
                    Pass::<f32>::new(self, input, shape, &tape.masks, prepared)?.backward(&tape, grad_output)
                }
                DType::F64 => {
                    let prepared = typed::<f64>(tape.prepared.take());
                    Pass::<f64>::new(self, input, shape, &tape.masks, prepared)?.backward(&tape, grad_output)
                }
                other => Err(unsupported_dtype(other)),
            }
        })
    }

    /// Refuses a taped pass of a network on another device than the CPU.
    fn check_taped_device(&self) -> Result<()> {
        if self.device().is_cpu() {
            Ok(())
        } else {
            Err(Error::Spec("the taped training pass runs on the CPU; use forward() elsewhere".into()))
        }
    }
}

/// The error for a taped pass of a network in a float type other than `f32` and `f64`.
fn unsupported_dtype(dtype: DType) -> Error {
    Error::Spec(format!("the taped training pass runs in f32 or f64, not {dtype:?}"))
}

/// A training step on the CPU runs its batch in micro-batches ([`SpikingNetwork::micro_batch_for`]) when what
/// it holds per sample for the whole window (the bit tape, and the leak-correction factor and running error
/// of every neuron) would otherwise exceed this many bytes.
pub const MICRO_BATCH_BYTES: usize = 64 << 20;

impl SpikingNetwork {
    /// The micro-batch a training step of `batch` samples over `steps` time steps runs in on the CPU: the
    /// whole batch while the state it keeps per sample over the window (one bit per spiking neuron and step,
    /// two per input value, two floats per spiking neuron) fits [`MICRO_BATCH_BYTES`] for the batch, else
    /// the batch split into as few equal micro-batches as fit it (at least one sample each). VGG9 in `f32`
    /// at batch 16 runs whole up to T = 56 and in two halves from T = 57 (the paper's T = 100 included).
    pub fn micro_batch_for(&self, steps: usize, batch: usize) -> usize {
        let neurons: usize = self.plan.layers.iter().filter(|l| l.spikes()).map(|l| l.neurons).sum();
        let inputs = self.plan.feed_len(Feed::Input);
        let bits = steps * (neurons + 2 * inputs);
        let per_sample = bits.div_ceil(8) + 2 * neurons * self.dtype().size_in_bytes();
        let parts = (batch * per_sample).div_ceil(MICRO_BATCH_BYTES).clamp(1, batch.max(1));
        batch.div_ceil(parts).max(1)
    }

    /// The taped forward and backward pass of one batch on the CPU, run over micro-batches of at most
    /// `micro_batch` samples one after the other: the weights' gradients of the whole batch, summed over the
    /// micro-batches into one set of accumulators, with the readout and activity of the whole batch.
    ///
    /// `output_grad(readout, samples)` is called once per micro-batch, in order, with the readout of the
    /// samples `samples` of the batch (`[samples.len(), classes]`), and returns the gradient of the loss with
    /// respect to it (the loss must be a sum over samples, as the paper's is, for the sum of the parts to be
    /// the batch's gradient). The result is the batch's step up to the order of the sums over samples; what
    /// the step holds per sample (the bit tape, the leak-correction factors and errors of every neuron, a
    /// part's buffers) is held for one micro-batch at a time. The input window is taken by value: a
    /// rate-coded one is packed into bits per micro-batch and released before the first pass.
    pub fn taped_gradients<E: From<Error>>(
        &self,
        input: Tensor,
        masks: &Masks,
        micro_batch: usize,
        output_grad: impl FnMut(&Tensor, std::ops::Range<usize>) -> std::result::Result<Tensor, E>,
    ) -> std::result::Result<(ForwardOutput, Gradients), E> {
        self.check_taped_device()?;
        if micro_batch == 0 {
            return Err(Error::Spec("a micro-batch holds at least one sample".into()).into());
        }
        let shape = self.check_input(&input, masks)?;
        match self.dtype() {
            DType::F32 => self.micro_batched::<f32, E>(input, shape, masks, micro_batch, output_grad),
            DType::F64 => self.micro_batched::<f64, E>(input, shape, masks, micro_batch, output_grad),
            other => Err(unsupported_dtype(other).into()),
        }
    }

    /// [`Self::taped_gradients`] in `F`.
    fn micro_batched<F: Real + WithDType, E: From<Error>>(
        &self,
        input: Tensor,
        (steps, batch): (usize, usize),
        masks: &Masks,
        micro_batch: usize,
        mut output_grad: impl FnMut(&Tensor, std::ops::Range<usize>) -> std::result::Result<Tensor, E>,
    ) -> std::result::Result<(ForwardOutput, Gradients), E> {
        let ranges: Vec<_> = (0..batch).step_by(micro_batch).map(|b| b..(b + micro_batch).min(batch)).collect();
        let inputs =
            ranges.iter().map(|r| micro_batch_input::<F>(&input, steps, r.clone())).collect::<Result<Vec<_>>>()?;
        drop(input);
        let count = ranges.len();
        let (mut prepared, mut sums, mut gradients) = (None, None, None);
        let (mut outputs, mut activity) = (Vec::with_capacity(count), Vec::<LayerActivity>::new());
        for (k, (samples, input)) in ranges.into_iter().zip(inputs).enumerate() {
            let masks: Masks = masks
                .iter()
                .map(|(name, m)| Ok((name.clone(), m.narrow(0, samples.start, samples.len())?)))
                .collect::<Result<_>>()?;
            let shape = (steps, samples.len());
            let pass = Pass::<F>::new(self, InputWindow::from(&input), shape, &masks, prepared.take())?;
            let (out, mut tape) = pass.forward(false)?;
            let grad_output = output_grad(&out.output, samples)?;
            let carried = tape.prepared.take().and_then(|p| p.downcast::<Prepared<F>>().ok()).map(|p| *p);
            let mut pass = Pass::<F>::new(self, InputWindow::from(&tape.input), shape, &tape.masks, carried)?;
            let mut grads = sums.take().unwrap_or_else(|| pass.zeroed_gradients());
            pass.accumulate(&tape, &grad_output, &mut grads)?;
            if k + 1 == count {
                gradients = Some(pass.finish(grads)?);
            } else {
                // The next micro-batch's passes read the same transposed weights and add to the same sums.
                prepared = Some(Prepared { weights: std::mem::take(&mut pass.weights) });
                sums = Some(grads);
            }
            outputs.push(out.output);
            if activity.is_empty() {
                activity = out.activity;
            } else {
                for (total, part) in activity.iter_mut().zip(out.activity) {
                    total.neuron_counts = (&total.neuron_counts + &part.neuron_counts).map_err(Error::from)?;
                }
            }
        }
        let output = Tensor::cat(&outputs, 0).map_err(Error::from)?;
        let gradients = gradients.ok_or_else(|| Error::Spec("the batch holds no sample".into()))?;
        Ok((ForwardOutput { output, activity }, gradients))
    }
}

/// The samples `samples` of an input window `[T, B, ...]` as a tape keeps them: packed into two bits per
/// value when every value is −1, 0 or +1, else a contiguous copy.
fn micro_batch_input<F: Real + WithDType>(
    input: &Tensor,
    steps: usize,
    samples: std::ops::Range<usize>,
) -> Result<TapedInput> {
    let chunk = input.narrow(1, samples.start, samples.len())?;
    let span = chunk.elem_count() / steps;
    let mut bits = SignedSpikeBits::zeros(steps * span);
    for t in 0..steps {
        let values = chunk.get(t)?.flatten_all()?.to_dtype(F::DTYPE)?.to_vec1::<F>()?;
        if !bits.store(t * span, &values) {
            return Ok(TapedInput::Values(chunk.contiguous()?));
        }
    }
    Ok(TapedInput::Spikes(bits))
}

/// What a pass derives from the network before it starts: every weight as slices (in weight order). The
/// forward pass hands it to the backward pass through the tape.
struct Prepared<F> {
    weights: Vec<Weights<F>>,
}

/// A layer's dropout mask `[B, neurons]` as the kernels read it: read in place from the mask tensor when it
/// holds keep flags (`u8`) or `F` values contiguously on the CPU (the usual case: [`SpikingNetwork::draw_masks`]
/// draws flags), else a converted copy of its multipliers.
enum MaskValues<'a, F> {
    /// The tensor's own storage, held for reading for the length of the pass: multipliers in `F`, or keep
    /// flags whose kept entries take `value`.
    Borrowed { storage: Box<dyn Deref<Target = Storage> + Sync + 'a>, start: usize, len: usize, value: Option<F> },
    /// The multipliers in `F`.
    Owned(Vec<F>),
}

impl<'a, F: Real + WithDType> MaskValues<'a, F> {
    /// The mask `mask` of a network whose dropout probability is `p`.
    fn new(mask: &'a Tensor, p: f64) -> Result<Self> {
        let (storage, layout) = mask.storage_and_layout();
        let (start, len) = (layout.start_offset(), mask.elem_count());
        if layout.is_contiguous() {
            if let Storage::Cpu(cpu) = &*storage {
                if cpu.as_slice::<u8>().is_ok() {
                    let value = Some(F::lit(f64::from(dropout::keep_value(p))));
                    return Ok(Self::Borrowed { storage: Box::new(storage), start, len, value });
                }
                if cpu.as_slice::<F>().is_ok() {
                    return Ok(Self::Borrowed { storage: Box::new(storage), start, len, value: None });
                }
            }
        }
        drop(storage);
        Ok(Self::Owned(dropout::mask_multipliers(mask, p, F::DTYPE)?.flatten_all()?.to_vec1::<F>()?))
    }

    fn view(&self) -> MaskView<'_, F> {
        match self {
            Self::Borrowed { storage, start, len, value } => {
                let range = *start..*start + *len;
                match (&***storage, *value) {
                    // `new` checked the device and the element type.
                    (Storage::Cpu(cpu), Some(value)) => {
                        MaskView::Keep { flags: cpu.as_slice::<u8>().map_or(&[], |all| &all[range]), value }
                    }
                    (Storage::Cpu(cpu), None) => MaskView::Values(cpu.as_slice::<F>().map_or(&[], |all| &all[range])),
                    _ => MaskView::Values(&[]),
                }
            }
            Self::Owned(values) => MaskView::Values(values),
        }
    }
}

impl<F: Real + WithDType> Prepared<F> {
    /// Every layer's weights with their transposed rows, written into buffers from `pool` (the previous step's
    /// rows, handed back when its pass ended) straight from the weights' storage.
    fn new(net: &SpikingNetwork, rec: &Recorder, pool: &BufferPool<F>) -> Result<Self> {
        let weights = net
            .weights()
            .iter()
            .map(|(name, var)| {
                let tensor = var.as_tensor().detach();
                let outputs = tensor.dims()[0];
                let mut rows = pool.overwritten(tensor.elem_count());
                let mut transposed = |values: &[F]| {
                    rec.time(
                        name,
                        Phase::Transpose,
                        || transpose_into(values, outputs, values.len() / outputs, &mut rows),
                        |()| Work::bytes(moved::<F>(2 * values.len())),
                    )
                };
                let (storage, layout) = tensor.storage_and_layout();
                let in_place = match (&*storage, layout.contiguous_offsets()) {
                    (Storage::Cpu(cpu), Some((start, end))) => cpu.as_slice::<F>().ok().map(|all| &all[start..end]),
                    _ => None,
                };
                match in_place {
                    Some(values) => transposed(values),
                    None => transposed(&tensor.flatten_all()?.to_vec1::<F>()?),
                }
                drop(storage);
                Ok(Weights { tensor, rows })
            })
            .collect::<Result<_>>()?;
        Ok(Self { weights })
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

    #[inline(always)]
    fn for_each_event_by_position(
        &self,
        frame: usize,
        channels: std::ops::Range<usize>,
        plane: usize,
        f: impl FnMut(usize, usize, F),
    ) {
        match self {
            Source::Input(x) => x.for_each_event_by_position(frame, channels, plane, f),
            Source::Spikes(x) => x.for_each_event_by_position(frame, channels, plane, f),
        }
    }

    #[inline(always)]
    fn value_at(&self, frame: usize, index: usize) -> F {
        match self {
            Source::Input(x) => x.value_at(frame, index),
            Source::Spikes(x) => x.value_at(frame, index),
        }
    }

    fn nonzero(&self) -> usize {
        match self {
            Source::Input(x) => x.nonzero(),
            Source::Spikes(x) => x.nonzero(),
        }
    }

    #[inline(always)]
    fn values_into(&self, frame: usize, range: std::ops::Range<usize>, out: &mut [F]) {
        match self {
            Source::Input(x) => x.values_into(frame, range, out),
            Source::Spikes(x) => x.values_into(frame, range, out),
        }
    }
}

/// The state of one taped pass over a network, for one float type.
struct Pass<'a, F: Real + WithDType> {
    net: &'a SpikingNetwork,
    plan: &'a Plan,
    input: InputWindow<'a>,
    steps: usize,
    batch: usize,
    /// Steps per part.
    part: usize,
    /// Each layer's dropout mask `[B, neurons]`, if it has one (by layer index).
    masks: Vec<Option<MaskValues<'a, F>>>,
    /// The masks as given (tensors share their storage), for the tape.
    mask_tensors: Masks,
    /// The weights, in the network's weight order.
    weights: Vec<Weights<F>>,
    /// Float buffers reused from part to part.
    pool: BufferPool<F>,
    /// Times the phases when the network records a profile.
    rec: Recorder,
}

/// The gradients of a part's spikes, by layer: a spiking layer's buffer is taken from the pool, zeroed, when
/// its first gradient term is written (or when the layer's own backward step needs it), and goes back once
/// that step has read it, so only the layers between a writer and its reader hold one at a time.
struct SpikeGrads<'p, F: Real> {
    buffers: Vec<Option<Vec<F>>>,
    /// Values per layer over the part (`frames · neurons`; 0 for the readout).
    lens: Vec<usize>,
    pool: &'p BufferPool<F>,
}

impl<'p, F: Real> SpikeGrads<'p, F> {
    fn new(plan: &Plan, frames: usize, pool: &'p BufferPool<F>) -> Self {
        let lens = plan.layers.iter().map(|l| if l.spikes() { frames * l.neurons } else { 0 }).collect();
        Self { buffers: plan.layers.iter().map(|_| None).collect(), lens, pool }
    }

    /// The buffer for the gradient of what `from` names, if it is a spiking layer.
    fn of(&mut self, from: Feed) -> Option<&mut Vec<F>> {
        match from {
            Feed::Input => None,
            Feed::Layer(j) if self.lens[j] == 0 => None,
            Feed::Layer(j) => Some(self.buffers[j].get_or_insert_with(|| self.pool.zeroed(self.lens[j]))),
        }
    }

    /// Layer `i`'s spike gradient over the part (zeros if nothing was written), if it is a spiking layer.
    fn take(&mut self, i: usize) -> Option<Vec<F>> {
        self.of(Feed::Layer(i))?;
        self.buffers[i].take()
    }
}

impl<'a, F: Real + WithDType> Pass<'a, F> {
    /// A pass over `input` of `steps` and `batch` with `masks` (both checked against the network), reusing
    /// the weights a forward pass prepared, if given.
    fn new(
        net: &'a SpikingNetwork,
        input: InputWindow<'a>,
        (steps, batch): (usize, usize),
        masks: &'a Masks,
        prepared: Option<Prepared<F>>,
    ) -> Result<Self> {
        let mask_tensors = masks.clone();
        let rec = Recorder::new(net.profiling());
        let p = net.spec().dropout_p;
        let layer_masks =
            || net.plan.layers.iter().map(|l| masks.get(&l.name).map(|m| MaskValues::new(m, p)).transpose());
        let masks: Vec<Option<MaskValues<F>>> = rec.time(
            "step",
            Phase::Dropout,
            || layer_masks().collect::<Result<_>>(),
            |m: &Result<Vec<Option<MaskValues<F>>>>| {
                let copied = |m: &MaskValues<F>| if let MaskValues::Owned(v) = m { v.len() } else { 0 };
                let values = m.as_ref().map_or(0, |m| m.iter().flatten().map(copied).sum::<usize>());
                Work::bytes(moved::<F>(2 * values))
            },
        )?;
        let pool = net.scratch.take();
        let Prepared { weights } = match prepared {
            Some(prepared) => prepared,
            None => Prepared::new(net, &rec, &pool)?,
        };
        let neurons: usize = net.plan.layers.iter().map(|l| l.neurons).sum();
        let per_step = batch * neurons * std::mem::size_of::<F>();
        // The frame-parallel kernels need at least two frames per thread to keep every core busy; on many
        // cores that outweighs the memory budget.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let for_threads = (2 * threads).div_ceil(batch);
        let part = (PART_FRAMES / batch).min(PART_BYTES / per_step.max(1)).max(for_threads).clamp(1, steps);
        Ok(Self { net, plan: &net.plan, input, steps, batch, part, masks, mask_tensors, weights, pool, rec })
    }

    /// The frames of a part of `len` steps of what `from` names: the input window's part, or a spiking
    /// layer's spikes of the part (as bytes, `part` holds them by layer) with its mask.
    fn source<'s>(&'s self, from: Feed, len: usize, input: &'s [F], part: &'s [Vec<u8>]) -> Source<'s, F> {
        match from {
            Feed::Input => Source::Input(DenseFrames { data: input, frame_len: self.plan.feed_len(Feed::Input) }),
            Feed::Layer(j) => {
                let n = self.plan.layers[j].neurons;
                let span = self.batch * n;
                Source::Spikes(SpikeFrames {
                    spikes: &part[j][..len * span],
                    frame_len: n,
                    batch: self.batch,
                    mask: self.mask(j),
                })
            }
        }
    }

    /// Layer `i`'s dropout mask, if it has one.
    fn mask(&self, i: usize) -> Option<MaskView<'_, F>> {
        self.masks[i].as_ref().map(MaskValues::view)
    }

    /// Spikes per step of `layer` over the batch (`B · neurons`; 0 for the readout).
    fn span(&self, layer: &Layer) -> usize {
        if layer.spikes() {
            self.batch * layer.neurons
        } else {
            0
        }
    }

    /// One byte buffer per layer for a part's spikes (empty for the readout).
    fn part_buffers(&self) -> Vec<Vec<u8>> {
        self.plan.layers.iter().map(|l| filled(self.part * self.span(l), 0)).collect()
    }

    /// The input window's part `[t0, t0 + len)`.
    fn input_part(&self, t0: usize, len: usize) -> Result<Vec<F>> {
        match self.input {
            InputWindow::Values(input) => Ok(input.narrow(0, t0, len)?.to_dtype(F::DTYPE)?.flatten_all()?.to_vec1()?),
            InputWindow::Spikes(bits) => {
                let span = self.batch * self.plan.feed_len(Feed::Input);
                let mut part = vec![F::zero(); len * span];
                bits.load(t0 * span, &mut part);
                Ok(part)
            }
        }
    }

    /// The input currents of `layer` over a part of `len` steps, its input frames `x` (and a shortcut's
    /// source, read from `input` or the part's spikes `part`) given.
    fn currents(&self, layer: &Layer, x: &Source<F>, len: usize, input: &[F], part: &[Vec<u8>]) -> Result<Vec<F>> {
        let frames = len * self.batch;
        // Every synaptic map and pool writes all of its currents.
        let mut currents = self.pool.overwritten(frames * layer.neurons);
        self.rec.time(
            &layer.name,
            Phase::Forward,
            || self.synapses_forward(layer, x, len, input, part, &mut currents),
            |w| w.as_ref().copied().unwrap_or_default(),
        )?;
        Ok(currents)
    }

    /// The work of [`Self::currents`] into `currents`: the layer's synaptic map (and shortcut), or its pool.
    fn synapses_forward(
        &self,
        layer: &Layer,
        x: &Source<F>,
        len: usize,
        input: &[F],
        part: &[Vec<u8>],
        currents: &mut [F],
    ) -> Result<Work> {
        Ok(match &layer.op {
            Op::Conv { weight, geometry, shortcut } => {
                let mut macs = synapse_forward(x, &self.weights[*weight], Synapse::Conv(*geometry), currents)?;
                if let Some(sc) = shortcut {
                    let src = self.source(sc.from, len, input, part);
                    let mut term = self.pool.zeroed(currents.len());
                    match &sc.map {
                        ShortcutMap::Conv1x1 { weight, geometry } => {
                            macs += synapse_forward(&src, &self.weights[*weight], Synapse::Conv(*geometry), &mut term)?;
                        }
                        ShortcutMap::Subsample { stride, in_shape } => {
                            subsample_frames(&src, in_shape, *stride, &layer.shape, &mut term)?;
                        }
                    }
                    kernels::add_into(currents, &term);
                    self.pool.recycle(term);
                }
                Work::flops(2.0 * macs)
            }
            Op::Fc { weight, outputs: n } | Op::Readout { weight, classes: n } => {
                Work::flops(2.0 * synapse_forward(x, &self.weights[*weight], Synapse::Linear(*n), currents)?)
            }
            Op::Pool { kernel, in_shape } => {
                average_pool_frames(x, in_shape, *kernel, currents);
                // One addition per input entry; the inputs are spike bytes, the sums floats.
                let entries = x.frames() * x.frame_len();
                Work { flops: entries as f64, bytes: entries as f64 + moved::<F>(currents.len()) }
            }
        })
    }

    /// The forward pass; `pack_input` keeps a rate-coded input window as bits on the tape.
    fn forward(mut self, pack_input: bool) -> Result<(ForwardOutput, Tape)> {
        let plan = self.plan;
        let (steps, batch) = (self.steps, self.batch);
        let spec = self.net.spec();
        let span = |l: &Layer| self.span(l);
        let mut spikes: Vec<SpikeBits> = plan.layers.iter().map(|l| SpikeBits::zeros(steps * span(l))).collect();
        let mut part = self.part_buffers();
        let mut counts: Vec<Vec<u32>> =
            plan.layers.iter().map(|l| vec![0; if l.spikes() { l.neurons } else { 0 }]).collect();
        let mut membranes: Vec<Vec<F>> = plan.layers.iter().map(|l| filled(span(l), F::zero())).collect();
        let (readout, _, classes) = plan.readout()?;
        let mut readout_membrane = vec![F::zero(); batch * classes];
        let mut readout_counts = vec![0.0; batch * plan.feed_len(readout.from)];
        // The input window as signed spike bits, while every part holds only −1, 0 and +1.
        let input_span = batch * plan.feed_len(Feed::Input);
        let mut packed = pack_input.then(|| SignedSpikeBits::zeros(steps * input_span));

        for t0 in (0..steps).step_by(self.part) {
            let len = self.part.min(steps - t0);
            let input = self.input_part(t0, len)?;
            if packed.as_mut().is_some_and(|bits| !bits.store(t0 * input_span, &input)) {
                packed = None;
            }
            for (i, layer) in plan.layers.iter().enumerate() {
                let x = self.source(layer.from, len, &input, &part);
                let currents = self.currents(layer, &x, len, &input, &part)?;
                let rec = &self.rec;
                if !layer.spikes() {
                    let inputs = x.frames() * x.frame_len();
                    let readout = || {
                        kernels::readout_membrane_from(&currents, F::lit(spec.leak), &mut readout_membrane);
                        x.add_to_counts(&mut readout_counts);
                    };
                    rec.time(&layer.name, Phase::Neurons, readout, |_| {
                        Work::bytes(moved::<F>(currents.len()) + inputs as f64)
                    });
                } else {
                    let neuron = if layer.is_pool() { self.net.pool } else { self.net.lif };
                    let n = len * span(layer);
                    let own = &mut part[i][..n];
                    let (membrane, bits, count) = (&mut membranes[i], &mut spikes[i], &mut counts[i]);
                    let recurrence = || {
                        let (threshold, leak) = (F::lit(neuron.threshold), F::lit(neuron.leak));
                        kernels::spike_forward_from(&currents, threshold, leak, membrane, own);
                        bits.store(t0 * span(layer), own);
                        kernels::add_spike_counts(own, count);
                    };
                    // Currents in; spikes out as bytes, read back for the tape and the counts, one bit each.
                    rec.time(&layer.name, Phase::Neurons, recurrence, |_| {
                        Work::bytes(moved::<F>(n) + n as f64 * (2.0 + 1.0 / 8.0))
                    });
                }
                self.pool.recycle(currents);
            }
        }

        kernels::readout_normalise(&mut readout_membrane, F::lit(spec.threshold), steps);
        let output = Tensor::from_vec(readout_membrane, (batch, classes), &Device::Cpu)?;
        let activity = self.activity(counts)?;
        let masks = self.mask_tensors.clone();
        let prepared: Box<dyn Any + Send + Sync> = Box::new(Prepared { weights: std::mem::take(&mut self.weights) });
        let input = match (packed, self.input) {
            (Some(bits), _) => TapedInput::Spikes(bits),
            (None, InputWindow::Values(tensor)) => TapedInput::Values(tensor.clone()),
            (None, InputWindow::Spikes(bits)) => TapedInput::Spikes(bits.clone()),
        };
        let network = self.net.id;
        let tape = Tape { steps, batch, input, masks, spikes, readout_counts, prepared: Some(prepared), network };
        Ok((ForwardOutput { output, activity }, tape))
    }

    /// Every spiking layer's activity from its spike counts per neuron, summed over the window and the batch
    /// (`counts` by layer index, empty for the readout).
    fn activity(&self, counts: Vec<Vec<u32>>) -> Result<Vec<LayerActivity>> {
        let mut activity = Vec::new();
        for (layer, counts) in self.plan.layers.iter().zip(counts).filter(|(l, _)| l.spikes()) {
            let counts: Vec<f64> = counts.into_iter().map(f64::from).collect();
            activity.push(LayerActivity {
                name: layer.name.clone(),
                is_pool: layer.is_pool(),
                neurons: layer.neurons,
                neuron_counts: Tensor::from_vec(counts, layer.shape.clone(), &Device::Cpu)?,
                spikes: None,
            });
        }
        Ok(activity)
    }

    fn backward(self, tape: &Tape, grad_output: &Tensor) -> Result<Gradients> {
        let mut grads = self.zeroed_gradients();
        self.accumulate(tape, grad_output, &mut grads)?;
        self.finish(grads)
    }

    /// Zeroed weight-gradient accumulators, transposed, `[fan-in, outputs]` (the layout of `Weights::rows`).
    /// Their buffers come from the pool and go back to it in [`Self::finish`], where the next step's
    /// transposed weights find them.
    fn zeroed_gradients(&self) -> Vec<Vec<F>> {
        self.weights.iter().map(|w| self.pool.zeroed(w.rows.len())).collect()
    }

    /// The backward pass over the tape: adds every weight's gradient into `grads` (see
    /// [`Self::zeroed_gradients`]).
    fn accumulate(&self, tape: &Tape, grad_output: &Tensor, grads: &mut [Vec<F>]) -> Result<()> {
        let plan = self.plan;
        let (steps, batch) = (self.steps, self.batch);
        let (readout, readout_weight, classes) = plan.readout()?;
        if grad_output.dims() != [batch, classes] {
            return Err(Error::Spec(format!(
                "output gradient has shape {:?}, expected [{batch}, {classes}]",
                grad_output.dims()
            )));
        }
        let spikes = &tape.spikes;
        let span = |l: &Layer| self.span(l);
        let rec = &self.rec;
        let mut part = self.part_buffers();
        let fan_in = plan.feed_len(readout.from);
        let readout_input_grad = rec.time(
            &readout.name,
            Phase::KernelAndInputGradient,
            || self.readout_backward(tape, grad_output, &mut grads[readout_weight]),
            |_| Work::flops(4.0 * (batch * fan_in * classes) as f64),
        )?;

        // Per spiking layer: the factor at spike times (θ⁻¹·NG or 1) and the running error δ(t+1).
        let mut gains: Vec<Vec<F>> = Vec::with_capacity(plan.layers.len());
        let mut deltas: Vec<Vec<F>> = Vec::with_capacity(plan.layers.len());
        for (layer, bits) in plan.layers.iter().zip(spikes) {
            if !layer.spikes() {
                gains.push(Vec::new());
                deltas.push(Vec::new());
                continue;
            }
            let span = span(layer);
            let neuron = if layer.is_pool() { self.net.pool } else { self.net.lif };
            let mut gain = filled(span, F::zero());
            let from_bits = || kernels::SpikeGains::from_bits_into(bits, neuron.backward_rule(), &mut gain);
            // The window's bits in (the traces stay in cache), the gains out.
            let bytes = (steps * span) as f64 / 8.0 + moved::<F>(span);
            rec.time(&layer.name, Phase::Tape, from_bits, |_| Work::bytes(bytes));
            gains.push(gain);
            deltas.push(filled(span, F::zero()));
        }

        let pool = &self.pool;
        let starts: Vec<usize> = (0..steps).step_by(self.part).collect();
        for &t0 in starts.iter().rev() {
            let len = self.part.min(steps - t0);
            let frames = len * batch;
            let input = self.input_part(t0, len)?;
            for ((layer, bits), own) in plan.layers.iter().zip(spikes).zip(&mut part).filter(|((l, _), _)| l.spikes()) {
                let n = len * span(layer);
                let load = || bits.load(t0 * span(layer), &mut own[..n]);
                rec.time(&layer.name, Phase::Tape, load, |_| Work::bytes(n as f64 * (1.0 / 8.0 + 1.0)));
            }
            let mut grad_spikes = SpikeGrads::new(plan, frames, pool);
            if let Some(g) = grad_spikes.of(readout.from) {
                for row in g.chunks_exact_mut(batch * fan_in) {
                    kernels::add_into(row, &readout_input_grad);
                }
            }
            for (i, layer) in plan.layers.iter().enumerate().rev() {
                let Some(mut grad) = grad_spikes.take(i) else { continue };
                // The backward recurrence writes every current's gradient.
                let mut currents_grad = pool.overwritten(grad.len());
                let own = &part[i][..len * span(layer)];
                let (mask, n) = (self.mask(i), grad.len());
                let (gain, delta) = (&gains[i], &mut deltas[i]);
                let recurrence = || {
                    if let Some(mask) = mask {
                        kernels::apply_mask(&mut grad, mask);
                    }
                    kernels::spike_backward_from(own, &grad, gain, delta, &mut currents_grad);
                };
                // Per value: the spike byte, the spike gradient, the gain, δ(t+1) in and δ(t) out, the
                // current gradient out; the mask reads the mask and rewrites the gradient.
                let per_value = 1.0 + moved::<F>(5) + if mask.is_some() { moved::<F>(3) } else { 0.0 };
                rec.time(&layer.name, Phase::NeuronsBackward, recurrence, |_| Work::bytes(n as f64 * per_value));
                pool.recycle(grad);
                self.backward_layer(layer, &currents_grad, len, &input, &part, &mut grad_spikes, grads)?;
                pool.recycle(currents_grad);
            }
        }
        Ok(())
    }

    /// The accumulated gradients `grads`, back in the weights' layout, as tensors: written into the buffers
    /// of the transposed weights, which the pass no longer reads (its window state is gone by now), so no
    /// weight-sized buffer is added at the end.
    fn finish(mut self, grads: Vec<Vec<F>>) -> Result<Gradients> {
        let weights = std::mem::take(&mut self.weights);
        let mut out = Vec::with_capacity(grads.len());
        for (((name, var), g), w) in self.net.weights().iter().zip(grads).zip(weights) {
            let (outputs, mut rows) = (var.dims()[0], w.rows);
            let back = || transpose_into(&g, g.len() / outputs, outputs, &mut rows);
            self.rec.time(name, Phase::Transpose, back, |_| Work::bytes(moved::<F>(2 * g.len())));
            self.pool.recycle(g);
            out.push((name.clone(), Tensor::from_vec(rows, var.dims(), &Device::Cpu)?));
        }
        Ok(Gradients(out))
    }

    /// The readout's backward pass: adds its weight gradient (transposed) into `acc` and returns the gradient
    /// of its input spikes `[B, in]`, the same at every step (`∂y/∂I(t) = 1/(θT)`).
    fn readout_backward(&self, tape: &Tape, grad_output: &Tensor, acc: &mut [F]) -> Result<Vec<F>> {
        let (_, weight, classes) = self.plan.readout()?;
        let norm = F::lit(1.0 / (self.net.spec().threshold * self.steps as f64));
        let delta: Vec<F> =
            grad_output.to_dtype(F::DTYPE)?.flatten_all()?.to_vec1::<F>()?.into_iter().map(|g| g * norm).collect();
        kernels::readout_weight_grad(&tape.readout_counts, &delta, classes, acc);
        Ok(kernels::readout_input_grad(&self.weights[weight].rows, &delta, classes))
    }

    /// The backward pass of one layer over a part of `len` steps (whose spikes `part` holds by layer) from
    /// the gradient of its input currents `delta`: adds its weight gradients into `grads` and the gradient of
    /// its inputs' spikes into `grad_spikes`.
    #[allow(clippy::too_many_arguments)]
    fn backward_layer(
        &self,
        layer: &Layer,
        delta: &[F],
        len: usize,
        input: &[F],
        part: &[Vec<u8>],
        grad_spikes: &mut SpikeGrads<F>,
        grads: &mut [Vec<F>],
    ) -> Result<()> {
        let x = self.source(layer.from, len, input, part);
        let pool = &self.pool;
        let map_backward = |x: &Source<F>, w: &Weights<F>, map: Synapse, into: Option<&mut Vec<F>>, acc: &mut [F]| {
            synapse_backward(x, w, map, delta, into, acc, pool, (&self.rec, &layer.name))
        };
        let rec = &self.rec;
        match &layer.op {
            Op::Conv { weight, geometry, shortcut } => {
                let (w, map, into) = (&self.weights[*weight], Synapse::Conv(*geometry), grad_spikes.of(layer.from));
                map_backward(&x, w, map, into, &mut grads[*weight])?;
                if let Some(sc) = shortcut {
                    let src = self.source(sc.from, len, input, part);
                    let into = grad_spikes.of(sc.from);
                    match &sc.map {
                        ShortcutMap::Conv1x1 { weight, geometry } => {
                            let (w, map) = (&self.weights[*weight], Synapse::Conv(*geometry));
                            map_backward(&src, w, map, into, &mut grads[*weight])?;
                        }
                        ShortcutMap::Subsample { stride, in_shape } => {
                            if let Some(into) = into {
                                let grad = || subsample_grad(in_shape, *stride, &layer.shape, delta, into);
                                rec.time(&layer.name, Phase::InputGradient, grad, |_| {
                                    Work::bytes(moved::<F>(3 * delta.len()))
                                });
                            }
                        }
                    }
                }
            }
            Op::Fc { weight, outputs } => {
                let (w, map, into) = (&self.weights[*weight], Synapse::Linear(*outputs), grad_spikes.of(layer.from));
                map_backward(&x, w, map, into, &mut grads[*weight])?;
            }
            Op::Pool { kernel, in_shape } => {
                if let Some(into) = grad_spikes.of(layer.from) {
                    // Each input's gradient gains its window's error: one read and one update per input.
                    let entries = into.len();
                    let grad = || average_pool_grad(in_shape, *kernel, delta, into);
                    rec.time(&layer.name, Phase::InputGradient, grad, |_| Work {
                        flops: entries as f64,
                        bytes: moved::<F>(2 * entries + delta.len()),
                    });
                }
            }
            Op::Readout { .. } => {}
        }
        Ok(())
    }
}

impl<F: Real + WithDType> Drop for Pass<'_, F> {
    /// Hands the buffers back to the network, for its next pass, and the profile of this pass if one was
    /// recorded.
    fn drop(&mut self) {
        // Transposed weights this pass kept (it handed them neither to a tape nor out as gradients) serve the
        // next pass, which transposes the weights into them.
        for weights in std::mem::take(&mut self.weights) {
            self.pool.recycle(weights.rows);
        }
        self.pool.end_pass();
        self.net.scratch.put(std::mem::take(&mut self.pool));
        if let Some(profile) = std::mem::take(&mut self.rec).finish() {
            self.net.add_profile(profile);
        }
    }
}

/// A synaptic map between a layer's input frames and its input currents.
#[derive(Debug, Clone, Copy)]
enum Synapse {
    /// A convolution.
    Conv(ConvGeometry),
    /// A fully connected map to `outputs` currents.
    Linear(usize),
}

impl Synapse {
    /// The dense input frames `[N, ...]` the dense layers take.
    fn frame_shape(self, x: &Source<impl Real + WithDType>) -> Vec<usize> {
        match self {
            Synapse::Conv(g) => vec![g.channels, g.height, g.width],
            Synapse::Linear(_) => vec![x.frame_len()],
        }
    }
}

/// The frames of a part as a dense tensor `[N, ...frame]`.
fn dense_frames<F: Real + WithDType>(x: &Source<F>, frame: &[usize]) -> Result<Tensor> {
    let mut dims = vec![x.frames()];
    dims.extend_from_slice(frame);
    Ok(Tensor::from_vec(x.to_dense(), dims, &Device::Cpu)?)
}

/// Bytes of `n` values of the float type `F`.
fn moved<F>(n: usize) -> f64 {
    (n * std::mem::size_of::<F>()) as f64
}

/// Multiply-accumulates of a synaptic map's dense pass over every frame of `x`.
fn map_macs<F: Real>(map: Synapse, x: &Source<F>) -> f64 {
    let per_frame = match map {
        Synapse::Conv(g) => g.frame_out() * g.channels * g.kernel * g.kernel,
        Synapse::Linear(outputs) => x.frame_len() * outputs,
    };
    (per_frame * x.frames()) as f64
}

/// Currents of a synaptic map over the part's frames into `out`: event-driven when the input is sparse
/// (`EventFrames::event_share`), else the dense layer (Candle's convolution or product). Returns the multiply-accumulates
/// done (the dense count times the share of events on the event-driven path).
fn synapse_forward<F: Real + WithDType>(x: &Source<F>, w: &Weights<F>, map: Synapse, out: &mut [F]) -> Result<f64> {
    let macs = map_macs(map, x);
    if let Some(share) = x.event_share() {
        match map {
            Synapse::Conv(g) => conv_events(x, &w.rows, g, out),
            Synapse::Linear(outputs) => linear_events_into(x, &w.rows, outputs, out),
        }
        return Ok(macs * share);
    }
    let dense = dense_frames(x, &map.frame_shape(x))?;
    let y = match map {
        Synapse::Conv(g) => dense.conv2d(&w.tensor, g.padding, g.stride, 1, 1)?,
        Synapse::Linear(_) => dense.matmul(&w.tensor.t()?)?,
    };
    out.copy_from_slice(&y.flatten_all()?.to_vec1::<F>()?);
    Ok(macs)
}

/// The backward pass of a synaptic map over one part: adds its weight gradient to `acc` (transposed,
/// `[fan-in, outputs]`) and, when given a buffer (the input is a spiking layer), its input gradient into
/// `input_grad`. Sparse inputs take the event-driven kernels (the input gradient at the input's events only,
/// all the neuron backward reads), dense ones the dense layers (the input gradient everywhere). Each part is
/// timed into `rec` under `layer`.
#[allow(clippy::too_many_arguments)]
fn synapse_backward<F: Real + WithDType>(
    x: &Source<F>,
    w: &Weights<F>,
    map: Synapse,
    delta: &[F],
    input_grad: Option<&mut Vec<F>>,
    acc: &mut [F],
    pool: &BufferPool<F>,
    (rec, layer): (&Recorder, &str),
) -> Result<()> {
    let macs = map_macs(map, x);
    if let Some(share) = x.event_share() {
        let flops = Work::flops(2.0 * macs * share);
        match map {
            Synapse::Conv(g) => {
                // The kernels read the error channel-last; one pass over the events gives both gradients.
                let mut delta_rows = pool.overwritten(delta.len());
                let layout = || channel_last_into(delta, g, &mut delta_rows);
                rec.time(layer, Phase::Transpose, layout, |_| Work::bytes(moved::<F>(2 * delta.len())));
                let both = input_grad.is_some();
                let input = input_grad.map(|into| (w.rows.as_slice(), into.as_mut_slice()));
                let grads = || conv_grads_events(x, &delta_rows, g, acc, input);
                if both {
                    rec.time(layer, Phase::KernelAndInputGradient, grads, |_| Work::flops(2.0 * flops.flops));
                } else {
                    rec.time(layer, Phase::KernelGradient, grads, |_| flops);
                }
                pool.recycle(delta_rows);
            }
            Synapse::Linear(outputs) => {
                if let Some(into) = input_grad {
                    let grad = || linear_input_grad_events(x, &w.rows, delta, outputs, into);
                    rec.time(layer, Phase::InputGradient, grad, |_| flops);
                }
                let grad = || linear_weight_grad_events(x, delta, outputs, acc);
                rec.time(layer, Phase::KernelGradient, grad, |_| flops);
            }
        }
        return Ok(());
    }
    let flops = Work::flops(2.0 * macs);
    let frames = x.frames();
    match map {
        Synapse::Conv(g) => {
            let delta = Tensor::from_slice(delta, (frames, g.outputs, g.out_h, g.out_w), &Device::Cpu)?;
            if let Some(into) = input_grad {
                let grad = || -> Result<()> {
                    let gx = dense_input_grad(&w.tensor, &delta, g.padding, g.stride, (g.height, g.width))?;
                    kernels::add_into(into, &gx.flatten_all()?.to_vec1::<F>()?);
                    Ok(())
                };
                rec.time(layer, Phase::InputGradient, grad, |_| flops)?;
            }
            // Candle's gradient is [O, C·k·k]; the accumulator holds it transposed.
            let grad = || -> Result<Vec<F>> {
                let dense = dense_frames(x, &map.frame_shape(x))?;
                Ok(dense_kernel_grad(&dense, &delta, g.kernel, g.padding, g.stride)?.flatten_all()?.to_vec1::<F>()?)
            };
            let gw = rec.time(layer, Phase::KernelGradient, grad, |_| flops)?;
            let fan_in = g.channels * g.kernel * g.kernel;
            let layout = || kernels::add_into(acc, &transpose(&gw, g.outputs, fan_in));
            rec.time(layer, Phase::Transpose, layout, |_| Work::bytes(moved::<F>(4 * gw.len())));
        }
        Synapse::Linear(outputs) => {
            let delta = Tensor::from_slice(delta, (frames, outputs), &Device::Cpu)?;
            if let Some(into) = input_grad {
                let grad = || -> Result<()> {
                    kernels::add_into(into, &delta.matmul(&w.tensor)?.flatten_all()?.to_vec1::<F>()?);
                    Ok(())
                };
                rec.time(layer, Phase::InputGradient, grad, |_| flops)?;
            }
            let grad = || -> Result<()> {
                let dense = dense_frames(x, &map.frame_shape(x))?;
                kernels::add_into(acc, &dense.t()?.contiguous()?.matmul(&delta)?.flatten_all()?.to_vec1::<F>()?);
                Ok(())
            };
            rec.time(layer, Phase::KernelGradient, grad, |_| flops)?;
        }
    }
    Ok(())
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
        let dropped_flags: Vec<u8> = dropped.iter().map(|&m| u8::from(m != 0.0)).collect();
        let keep = MaskView::Keep { flags: &dropped_flags, value: 2.0 };
        for dropped in [MaskView::Values(&dropped), keep] {
            assert!(frames(Some(dropped)).event_share().is_some(), "30 % kept spikes are within the limit");
            assert_eq!(frames(Some(dropped)).event_share(), Some(0.3), "the share is of the kept spikes");
        }
        assert!(frames(Some(MaskView::Values(&kept))).event_share().is_none(), "60 % kept spikes are not");
        assert!(frames(None).event_share().is_none());
        // Dense inputs: the share of non-zero values, whatever their magnitude.
        let small: Vec<f64> = (0..20).map(|i| if i % 10 < 6 { 0.1 } else { 0.0 }).collect();
        assert!(Source::Input(DenseFrames { data: &small, frame_len: 10 }).event_share().is_none());
        let large: Vec<f64> = (0..20).map(|i| if i % 10 < 4 { 3.0 } else { 0.0 }).collect();
        assert!(Source::Input(DenseFrames { data: &large, frame_len: 10 }).event_share().is_some());
    }
}
