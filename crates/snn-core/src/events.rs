//! Event-driven synaptic layers: forward values and gradients computed from the input spikes alone.
//!
//! The inputs of every synaptic layer are spikes: `0` or `±1` (signed input coding), and only a few percent of
//! them are non-zero at any step. Instead of a dense convolution or matrix product, these kernels visit the
//! non-zero inputs only and add the weights they reach into the output:
//!
//! * fully connected: `out[n, :] += x[n, i] · Wᵀ[i, :]` for each `x[n, i] ≠ 0`;
//! * convolution: an input event at `(c, y, x)` adds the kernel column `W[:, c, ky, kx]` to every output
//!   position `(oy, ox)` with `oy·s + ky = y + p` and `ox·s + kx = x + p` (stride `s`, padding `p`).
//!
//! Work is proportional to the number of events times the fan-out, instead of to the number of connections.
//! The weights are transposed once per call so that each event adds one contiguous row. Frames run in
//! parallel. The sums are the dense sums taken in another order, so values agree with the dense layers up to
//! floating-point rounding; every sum is taken in an order fixed by the data's shape, so results are the same
//! bits whatever the thread count. The ops themselves are not differentiable: inference calls them directly;
//! training reaches them through the convolution of [`crate::conv`], whose backward uses the kernel and
//! input-gradient kernels here, and through the taped pass of `snn-models`, which calls the slice kernels
//! ([`conv_events`], [`conv_grads_events`], [`linear_events_into`], ...) on the frames of each part of the
//! window ([`EventFrames`]). They run on the CPU; on other devices the callers use the dense layers.

use crate::cpu::{run_cpu, CpuKernel};
use crate::dropout::MaskView;
use crate::kernels::{add_into, Real};
use crate::simd::MulAdd;
use crate::{Error, Result};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// The density limit of the event-driven layers: a synaptic layer whose input window has at most this share
/// of non-zero entries (spikes that survived their dropout mask; a masked spike counts once whatever its mask
/// value, a dropped one not at all) takes the event-driven kernels, a denser one the dense layers (Candle's
/// convolutions and products). Both training passes and inference decide with this one measure
/// ([`sparse_enough`] on a tensor, [`within_density_limit`] on counted entries).
///
/// Measured by `cargo xtask density` on 64 frames of VGG9's 3×3 convolutions: the event-driven forward pass
/// stays ahead of Candle's convolution up to 50–100 % non-zero inputs for 64–256 channels (at any density for a
/// 3-channel image), the event-driven kernel gradient up to 100 %; at 50 % every measured layer is on the
/// faster path or level with it. (The input gradient at the events, which the taped pass computes in the same
/// pass as the kernel gradient, was not timed against the dense input gradient.)
pub const EVENT_DENSITY_LIMIT: f64 = 0.5;

/// Whether `nonzero` non-zero entries out of `entries` are within [`EVENT_DENSITY_LIMIT`].
pub fn within_density_limit(nonzero: usize, entries: usize) -> bool {
    nonzero as f64 <= EVENT_DENSITY_LIMIT * entries as f64
}

/// Whether a window `[N, ...]` on the CPU is sparse enough for the event-driven layers: its share of non-zero
/// entries is within [`EVENT_DENSITY_LIMIT`]. One pass over the buffer, no temporaries.
pub fn sparse_enough(window: &Tensor) -> Result<bool> {
    let partial_counts = window.contiguous()?.apply_op1_no_bwd(&NonzeroCounts)?;
    let nonzero = partial_counts.to_dtype(candle_core::DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    Ok(within_density_limit(nonzero as usize, window.elem_count()))
}

/// Entries per partial count of [`NonzeroCounts`]: small enough that a count is exact in `f32`.
const COUNT_CHUNK: usize = 1 << 20;

/// The number of non-zero entries of consecutive chunks of [`COUNT_CHUNK`] entries.
struct NonzeroCounts;

impl CpuKernel for NonzeroCounts {
    const NAME: &'static str = "nonzero-counts";

    fn run<F: Real + WithDType>(&self, operands: &[&[F]]) -> Vec<F> {
        operands[0]
            .par_chunks(COUNT_CHUNK)
            .map(|c| F::lit(c.iter().filter(|v| **v != F::zero()).count() as f64))
            .collect()
    }
}

impl CustomOp1 for NonzeroCounts {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let counts = run_cpu(self, &[(s, l)])?;
        Ok((counts, Shape::from(l.shape().elem_count().div_ceil(COUNT_CHUNK))))
    }
}

/// Event-driven 2-D convolution of `frames` `[N, C, H, W]` with `kernel` `[O, C, k, k]` (square, no bias),
/// visiting only the non-zero inputs. Same result as `frames.conv2d(kernel, padding, stride, 1, 1)` up to
/// rounding.
pub fn conv2d_events(frames: &Tensor, kernel: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    let (_, c, _, _) = frames.dims4()?;
    let (_, kc, kh, kw) = kernel.dims4()?;
    if kc != c || kh != kw || stride == 0 {
        return Err(Error::Shape {
            op: "event convolution",
            msg: format!(
                "needs a square kernel over the input's {c} channels and a positive stride, got kernel {:?}, \
                 stride {stride}",
                kernel.dims()
            ),
        });
    }
    let op = EventConv { padding, stride };
    Ok(frames.contiguous()?.apply_op2_no_bwd(&kernel.contiguous()?, &op)?)
}

/// Event-driven product of `inputs` `[N, In]` with `weight` `[Out, In]`: `inputs · weightᵀ`, visiting only
/// the non-zero inputs.
pub fn linear_events(inputs: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (_, features) = inputs.dims2()?;
    let (_, w_in) = weight.dims2()?;
    if features != w_in {
        return Err(Error::Shape {
            op: "event product",
            msg: format!("{features} inputs with a weight of shape {:?}", weight.dims()),
        });
    }
    Ok(inputs.contiguous()?.apply_op2_no_bwd(&weight.contiguous()?, &EventLinear)?)
}

/// Gradient of a convolution's kernel `[O, C, k, k]` from its input `frames` `[N, C, H, W]` (spikes) and the
/// gradient of its output `grad` `[N, O, Ho, Wo]`: `Σ_n Σ_(oy,ox) grad[n, :, oy, ox] ⊗ x[n, c, oy·s + ky − p,
/// ox·s + kx − p]`, visiting only the non-zero inputs. Same result as the dense correlation up to rounding.
pub fn conv2d_weight_grad_events(
    frames: &Tensor,
    grad: &Tensor,
    kernel: usize,
    padding: usize,
    stride: usize,
) -> Result<Tensor> {
    let op = EventWeightGrad { kernel, padding, stride };
    Ok(frames.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &op)?)
}

/// Gradient of a convolution's input `frames` `[N, C, H, W]` (spikes), **at the non-zero inputs only**,
/// from the kernel `[O, C, k, k]` and the output gradient `grad` `[N, O, Ho, Wo]`; zero elsewhere.
///
/// This is the whole gradient that matters when the input is a spike train `s` (possibly masked): the
/// neuron's backward recurrence `δ(t) = s(t)·NG·g(t)/θ + (1 − s(t))·δ(t+1)` reads the incoming gradient `g`
/// only where `s(t) = 1`, and a dropout mask zeroes it where the mask dropped the spike.
pub fn conv2d_input_grad_at_events(
    frames: &Tensor,
    kernel: &Tensor,
    grad: &Tensor,
    padding: usize,
    stride: usize,
) -> Result<Tensor> {
    let (n, c, h, w) = frames.dims4()?;
    let (o, kc, k, _) = kernel.dims4()?;
    let (gn, go, out_h, out_w) = grad.dims4()?;
    if kc != c || gn != n || go != o {
        return Err(Error::Shape {
            op: "event input gradient",
            msg: format!("frames {:?}, kernel {:?}, output gradient {:?}", frames.dims(), kernel.dims(), grad.dims()),
        });
    }
    let g = ConvGeometry { channels: c, height: h, width: w, outputs: o, kernel: k, padding, stride, out_h, out_w };
    Ok(frames.contiguous()?.apply_op3_no_bwd(&kernel.contiguous()?, &grad.contiguous()?, &EventInputGrad(g))?)
}

pub use crate::simd::SimdLevel;

/// A window of input frames whose non-zero entries the event-driven kernels visit, frame by frame.
pub trait EventFrames<F: Real>: Sync {
    /// Entries per frame.
    fn frame_len(&self) -> usize;
    /// Number of frames.
    fn frames(&self) -> usize;
    /// Calls `f(index, value)` for every non-zero entry of frame `frame` whose index lies in `range`, in
    /// index order.
    fn for_each_event_in(&self, frame: usize, range: std::ops::Range<usize>, f: impl FnMut(usize, F));

    /// Calls `f(position, channel, value)` for every non-zero entry of frame `frame` in the planes `channels`
    /// (at most [`CHANNEL_BLOCK`] planes of `plane` entries; an entry's index is `channel · plane +
    /// position`), position by position and, at one position, channel by channel.
    fn for_each_event_by_position(
        &self,
        frame: usize,
        channels: std::ops::Range<usize>,
        plane: usize,
        f: impl FnMut(usize, usize, F),
    );

    /// The value of entry `index` of frame `frame` (which the caller knows to be an event).
    fn value_at(&self, frame: usize, index: usize) -> F;

    /// Calls `f(index, value)` for every non-zero entry of frame `frame`, in index order.
    #[inline(always)]
    fn for_each_event(&self, frame: usize, f: impl FnMut(usize, F)) {
        self.for_each_event_in(frame, 0..self.frame_len(), f);
    }

    /// The number of non-zero entries over all frames (the events the event-driven kernels would visit).
    fn nonzero(&self) -> usize {
        let mut nonzero = 0;
        for f in 0..self.frames() {
            self.for_each_event(f, |_, _| nonzero += 1);
        }
        nonzero
    }

    /// The share of non-zero entries when few enough are non-zero for the event-driven kernels
    /// ([`within_density_limit`], the one density measure), else `None` (the dense layers run). It is also the
    /// share of a synaptic map's dense work that the event-driven kernels do.
    fn event_share(&self) -> Option<f64> {
        let entries = self.frames() * self.frame_len();
        let nonzero = self.nonzero();
        within_density_limit(nonzero, entries).then(|| nonzero as f64 / entries.max(1) as f64)
    }

    /// Writes the entries of frame `frame` whose index lies in `range` into `out` (`range.len()` values),
    /// zeros included.
    #[inline(always)]
    fn values_into(&self, frame: usize, range: std::ops::Range<usize>, out: &mut [F]) {
        out.fill(F::zero());
        let start = range.start;
        self.for_each_event_in(frame, range, |i, v| out[i - start] = v);
    }

    /// The frames written out densely, zeros included: `frames · frame_len` values.
    fn to_dense(&self) -> Vec<F> {
        let len = self.frame_len();
        let mut v = vec![F::zero(); self.frames() * len];
        for (f, dst) in v.chunks_exact_mut(len.max(1)).enumerate().take(self.frames()) {
            self.values_into(f, 0..len, dst);
        }
        v
    }

    /// Adds every frame's entries into `counts` `[B, frame_len]`, frame `f` into row `f mod B`: the window's
    /// input summed over its steps, per sample.
    fn add_to_counts(&self, counts: &mut [f64])
    where
        F: WithDType,
    {
        let len = self.frame_len();
        let batch = counts.len() / len.max(1);
        for f in 0..self.frames() {
            let row = &mut counts[(f % batch) * len..][..len];
            self.for_each_event(f, |i, v| row[i] += <F as WithDType>::to_f64(v));
        }
    }
}

/// Channels that the event-driven convolution visits together, position by position
/// ([`EventFrames::for_each_event_by_position`]): one bit each in a byte per position.
pub const CHANNEL_BLOCK: usize = 8;

/// `0x01` in every byte of `w` that is not zero, `0x00` in the others.
#[inline(always)]
fn nonzero_bytes(w: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    ((((w & LOW7) + LOW7) | w) >> 7) & 0x0101_0101_0101_0101
}

/// The walk of [`EventFrames::for_each_event_by_position`] over eight positions at a time: `flags(p0, n, k)`
/// gives `0x01` in byte `j` when channel `channels.start + k` is non-zero at position `p0 + j` (`j < n`), and
/// `value(p, c)` the value of a non-zero entry, or `None` to skip it (a dropped spike).
#[inline(always)]
fn visit_positions<F>(
    plane: usize,
    channels: std::ops::Range<usize>,
    value: impl Fn(usize, usize) -> Option<F>,
    mut f: impl FnMut(usize, usize, F),
    flags: impl Fn(usize, usize, usize) -> u64,
) {
    for p0 in (0..plane).step_by(8) {
        let n = (plane - p0).min(8);
        // Bit 8·j + k of `word`: channel `channels.start + k` is non-zero at position p0 + j; the lowest set
        // bit first is position by position, channel by channel.
        let mut word = (0..channels.len()).fold(0u64, |w, k| w | flags(p0, n, k) << k);
        while word != 0 {
            let bit = word.trailing_zeros() as usize;
            word &= word - 1;
            let (p, c) = (p0 + bit / 8, channels.start + bit % 8);
            if let Some(v) = value(p, c) {
                f(p, c, v);
            }
        }
    }
}

/// Frames stored densely, zeros included.
pub struct DenseFrames<'a, F> {
    /// `frames · frame_len` values.
    pub data: &'a [F],
    /// Entries per frame.
    pub frame_len: usize,
}

impl<F: Real> EventFrames<F> for DenseFrames<'_, F> {
    fn frame_len(&self) -> usize {
        self.frame_len
    }

    fn frames(&self) -> usize {
        self.data.len().checked_div(self.frame_len).unwrap_or(0)
    }

    fn values_into(&self, frame: usize, range: std::ops::Range<usize>, out: &mut [F]) {
        out.copy_from_slice(&self.data[frame * self.frame_len..][range]);
    }

    #[inline(always)]
    fn value_at(&self, frame: usize, index: usize) -> F {
        self.data[frame * self.frame_len + index]
    }

    #[inline(always)]
    fn for_each_event_by_position(
        &self,
        frame: usize,
        channels: std::ops::Range<usize>,
        plane: usize,
        f: impl FnMut(usize, usize, F),
    ) {
        debug_assert!(channels.len() <= CHANNEL_BLOCK);
        let data = &self.data[frame * self.frame_len..][..self.frame_len];
        let value = |p: usize, c: usize| Some(data[c * plane + p]);
        visit_positions(plane, channels.clone(), value, f, |p0, n, k| {
            let values = &data[(channels.start + k) * plane + p0..][..n];
            values.iter().enumerate().fold(0, |w, (j, &v)| w | u64::from(v != F::zero()) << (8 * j))
        });
    }

    #[inline(always)]
    fn for_each_event_in(&self, frame: usize, range: std::ops::Range<usize>, mut f: impl FnMut(usize, F)) {
        let start = range.start;
        for (i, &v) in self.data[frame * self.frame_len..][range].iter().enumerate() {
            if v != F::zero() {
                f(start + i, v);
            }
        }
    }
}

/// Frames of a `[T, B, ...]` spike window stored as bytes (0 or 1), each spike weighted by its sample's
/// dropout mask when there is one (frame `f` belongs to sample `f mod B`).
pub struct SpikeFrames<'a, F> {
    /// `frames · frame_len` bytes.
    pub spikes: &'a [u8],
    /// Entries per frame.
    pub frame_len: usize,
    /// Samples per time step `B`.
    pub batch: usize,
    /// Mask `[B, frame_len]`, when the layer has dropout.
    pub mask: Option<MaskView<'a, F>>,
}

impl<'a, F: Real> SpikeFrames<'a, F> {
    /// The mask row of frame `frame`'s sample over the entries `range`, if there is a mask.
    #[inline(always)]
    fn mask_row(&self, frame: usize, range: std::ops::Range<usize>) -> Option<MaskView<'a, F>> {
        let row = (frame % self.batch) * self.frame_len;
        self.mask.map(|m| m.slice(row + range.start..row + range.end))
    }
}

impl<F: Real> EventFrames<F> for SpikeFrames<'_, F> {
    fn frame_len(&self) -> usize {
        self.frame_len
    }

    fn frames(&self) -> usize {
        self.spikes.len().checked_div(self.frame_len).unwrap_or(0)
    }

    /// Spikes whose mask entry is not zero, counted in one pass over the bytes (and the mask), vectorised at
    /// the current [`SimdLevel`].
    fn nonzero(&self) -> usize {
        let len = self.frame_len.max(1);
        let count = |(f, frame): (usize, &[u8])| match self.mask_row(f, 0..frame.len()) {
            Some(MaskView::Values(kept)) => dispatch!(count_kept_avx2, count_kept_avx512, count_kept(frame, kept)),
            Some(MaskView::Keep { flags, .. }) => {
                dispatch!(count_kept_avx2, count_kept_avx512, count_kept(frame, flags))
            }
            None => dispatch!(count_spikes_avx2, count_spikes_avx512, count_spikes(frame)),
        };
        self.spikes.par_chunks(len).enumerate().map(count).sum()
    }

    #[inline(always)]
    fn value_at(&self, frame: usize, index: usize) -> F {
        self.mask.map_or(F::one(), |m| m.get((frame % self.batch) * self.frame_len + index))
    }

    /// Each spike as 1 (or its mask value), without branches.
    #[inline(always)]
    fn values_into(&self, frame: usize, range: std::ops::Range<usize>, out: &mut [F]) {
        let bytes = &self.spikes[frame * self.frame_len..][range.clone()];
        match self.mask_row(frame, range) {
            None => out.iter_mut().zip(bytes).for_each(|(o, &b)| *o = if b != 0 { F::one() } else { F::zero() }),
            Some(MaskView::Values(mask)) => {
                for ((o, &b), &m) in out.iter_mut().zip(bytes).zip(mask) {
                    *o = if b != 0 { m } else { F::zero() };
                }
            }
            Some(MaskView::Keep { flags, value }) => {
                for ((o, &b), &k) in out.iter_mut().zip(bytes).zip(flags) {
                    *o = if b != 0 && k != 0 { value } else { F::zero() };
                }
            }
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
        debug_assert!(channels.len() <= CHANNEL_BLOCK);
        let bytes = &self.spikes[frame * self.frame_len..][..self.frame_len];
        let word = |bytes: &[u8], p0: usize, n: usize, k: usize| {
            let mut eight = [0u8; 8];
            eight[..n].copy_from_slice(&bytes[(channels.start + k) * plane + p0..][..n]);
            nonzero_bytes(u64::from_le_bytes(eight))
        };
        match self.mask_row(frame, 0..self.frame_len) {
            Some(MaskView::Values(m)) => {
                let value = |p: usize, c: usize| Some(m[c * plane + p]).filter(|&v| v != F::zero());
                visit_positions(plane, channels.clone(), value, f, |p0, n, k| word(bytes, p0, n, k));
            }
            // Dropped spikes leave the walk with their flag: every visited entry is a kept spike.
            Some(MaskView::Keep { flags, value }) => {
                let flagged = |p0, n, k| word(bytes, p0, n, k) & word(flags, p0, n, k);
                visit_positions(plane, channels.clone(), |_, _| Some(value), f, flagged);
            }
            None => {
                visit_positions(plane, channels.clone(), |_, _| Some(F::one()), f, |p0, n, k| word(bytes, p0, n, k))
            }
        }
    }

    #[inline(always)]
    fn for_each_event_in(&self, frame: usize, range: std::ops::Range<usize>, mut f: impl FnMut(usize, F)) {
        let bytes = &self.spikes[frame * self.frame_len..][range.clone()];
        let mask = self.mask_row(frame, range.clone());
        // Eight silent neurons are skipped with one comparison; the last few bytes are visited one by one. The
        // events are visited in this function's own body, not in a closure: a closure the compiler leaves out
        // of line is compiled for the baseline instruction set, so the caller's work on every event (inlined
        // into it) would lose the SIMD level of the kernel that calls.
        let words = bytes.chunks_exact(8);
        let tail = (bytes.len() - words.remainder().len(), words.remainder());
        let busy = words
            .enumerate()
            .filter(|(_, w)| u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) != 0)
            .map(|(k, w)| (8 * k, w));
        for (base, chunk) in busy.chain(std::iter::once(tail)) {
            for (j, &b) in chunk.iter().enumerate() {
                if b != 0 {
                    let i = base + j;
                    match mask {
                        Some(MaskView::Values(m)) if m[i] != F::zero() => f(range.start + i, m[i]),
                        Some(MaskView::Keep { flags, value }) if flags[i] != 0 => f(range.start + i, value),
                        Some(_) => {}
                        None => f(range.start + i, F::one()),
                    }
                }
            }
        }
    }
}

wide_variants!(fn count_spikes_avx2, count_spikes_avx512 = count_spikes<>(bytes: &[u8]) -> usize);
wide_variants!(fn count_kept_avx2, count_kept_avx512 = count_kept<M: MaskEntry>(bytes: &[u8], mask: &[M]) -> usize);

/// Bytes counted per round of [`count_spikes`] and [`count_kept`]: a byte counter per lane cannot overflow,
/// and the count is a whole number of 512-bit vectors.
const COUNT_RUN: usize = 128;

/// The non-zero bytes of `bytes`.
#[inline(always)]
fn count_spikes(bytes: &[u8]) -> usize {
    bytes.chunks(COUNT_RUN).map(|c| c.iter().fold(0u8, |n, &b| n + u8::from(b != 0)) as usize).sum()
}

/// An entry of a dropout mask as [`count_kept`] reads it: a multiplier, or a keep flag.
trait MaskEntry: Copy + Send + Sync {
    /// Whether the entry keeps its spike (is not zero).
    fn keeps(self) -> bool;
}

impl<F: Real> MaskEntry for F {
    #[inline(always)]
    fn keeps(self) -> bool {
        self != F::zero()
    }
}

impl MaskEntry for u8 {
    #[inline(always)]
    fn keeps(self) -> bool {
        self != 0
    }
}

/// The non-zero bytes of `bytes` whose entry in `mask` keeps them.
#[inline(always)]
fn count_kept<M: MaskEntry>(bytes: &[u8], mask: &[M]) -> usize {
    let run = |(c, m): (&[u8], &[M])| c.iter().zip(m).fold(0u8, |n, (&b, &m)| n + u8::from(b != 0 && m.keeps()));
    bytes.chunks(COUNT_RUN).zip(mask.chunks(COUNT_RUN)).map(|r| run(r) as usize).sum()
}

/// [`conv2d_input_grad_at_events`] on operands (frames, kernel, output gradient).
struct EventInputGrad(ConvGeometry);

impl CpuKernel for EventInputGrad {
    const NAME: &'static str = "conv2d-input-grad-at-events";

    fn run<F: Real + WithDType>(&self, operands: &[&[F]]) -> Vec<F> {
        let x = DenseFrames { data: operands[0], frame_len: self.0.frame_in() };
        let mut out = vec![F::zero(); operands[0].len()];
        let grad = channel_last(operands[2], self.0);
        input_grad_events(&x, &kernel_rows(operands[1], self.0), &grad, self.0, &mut out);
        out
    }
}

impl CustomOp3 for EventInputGrad {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((run_cpu(self, &[(s1, l1), (s2, l2), (s3, l3)])?, l1.shape().clone()))
    }
}

/// Adds to `out` (laid out like the frames) the gradient of a convolution's input at the input's events:
/// `out[f, c, y, x] += Σ_taps W[:, c, ky, kx] · grad[f, oy, ox, :]`, from the transposed kernel `rows`
/// ([`kernel_rows`]) and the output gradient `grad` channel-last, `[N, Ho, Wo, O]` ([`channel_last`]).
fn input_grad_events<F: Real, X: EventFrames<F>>(x: &X, rows: &[F], grad: &[F], g: ConvGeometry, out: &mut [F]) {
    out.par_chunks_mut(g.frame_in()).zip(grad.par_chunks(g.frame_out())).enumerate().for_each(
        |(f, (dst, frame_grad))| {
            dispatch!(fused input_grad_frame_avx2, input_grad_frame_avx512, input_grad_frame(x, f, rows, frame_grad, g, dst))
        },
    );
}

wide_variants!(fused fn input_grad_frame_avx2, input_grad_frame_avx512 = input_grad_frame<F: Real, X: EventFrames<F>>(
    x: &X, f: usize, rows: &[F], frame_grad: &[F], g: ConvGeometry, dst: &mut [F]
));

/// One frame of [`input_grad_events`].
#[inline(always)]
fn input_grad_frame<F: Real, X: EventFrames<F>, M: MulAdd>(
    x: &X,
    f: usize,
    rows: &[F],
    frame_grad: &[F],
    g: ConvGeometry,
    dst: &mut [F],
    _: M,
) {
    let per_channel = g.kernel * g.kernel * g.outputs;
    let plane_in = g.height * g.width;
    x.for_each_event(
        f,
        #[inline(always)]
        |i, _| {
            let (c, y, xx) = (i / plane_in, (i % plane_in) / g.width, i % g.width);
            let taps = &rows[c * per_channel..][..per_channel];
            let mut sum = DotLanes::<F, M>::new();
            for_each_tap(
                y,
                xx,
                g,
                #[inline(always)]
                |tap, o| sum.add(&taps[tap * g.outputs..][..g.outputs], &frame_grad[o * g.outputs..][..g.outputs]),
            );
            dst[i] += sum.sum();
        },
    );
}

struct EventWeightGrad {
    kernel: usize,
    padding: usize,
    stride: usize,
}

/// Adds the kernel gradient of a convolution, in the transposed layout `[C, k, k, O]` of [`kernel_rows`], to
/// `acc`, from its input events and output gradient `grad` channel-last, `[N, Ho, Wo, O]` ([`channel_last`]):
/// `Σ_f Σ_events v · grad[f, oy, ox, :]` into the tap `(c, ky, kx)`.
fn weight_grad_events<F: Real, X: EventFrames<F>>(x: &X, grad: &[F], g: ConvGeometry, acc: &mut [F]) {
    conv_grads_events(x, grad, g, acc, None);
}

/// The kernel gradient of `weight_grad_events` and, with `input` = `(rows, out)`, in the same pass over the
/// events the input gradient of `input_grad_events` added to `out` (`[N, C, H, W]`): each event reads the
/// output-gradient rows of its taps once for both.
///
/// Blocks of input channels run in parallel, each owning its slice of `acc` and of every frame of `out` and
/// visiting the frames in order (one frame's gradient is read for all the block's channels while it is in
/// cache), so every sum runs in the same order, whatever the thread count.
pub fn conv_grads_events<F: Real, X: EventFrames<F>>(
    x: &X,
    grad: &[F],
    g: ConvGeometry,
    acc: &mut [F],
    input: Option<(&[F], &mut [F])>,
) {
    let per_channel = g.kernel * g.kernel * g.outputs;
    let plane_in = g.height * g.width;
    if input.is_none() && g.channels < FEW_CHANNELS && x.frames() > FRAMES_PER_TASK {
        // Too few input channels (a first layer over RGB) to keep the workers busy: split the frames as well.
        return kernel_grad_by_frames(x, grad, g, acc);
    }
    // Two blocks per thread balance the load; fewer, larger blocks read each frame's gradient fewer times.
    let block = g.channels.div_ceil(2 * rayon::current_num_threads()).max(1);
    let blocks = g.channels.div_ceil(block);
    // Each block's share of every frame of the input gradient.
    let mut outs: Vec<Vec<&mut [F]>> = (0..blocks).map(|_| Vec::new()).collect();
    let rows = input.as_ref().map(|(rows, _)| *rows);
    if let Some((_, out)) = input {
        for frame in out.chunks_mut(g.frame_in()) {
            for (b, share) in frame.chunks_mut(block * plane_in).enumerate() {
                outs[b].push(share);
            }
        }
    }
    acc.par_chunks_mut(block * per_channel).zip(outs.into_par_iter()).enumerate().for_each(
        |(b, (acc_block, mut outs))| {
            dispatch!(fused
                conv_grads_block_avx2,
                conv_grads_block_avx512,
                conv_grads_block(x, 0, b * block, grad, g, acc_block, rows, &mut outs)
            )
        },
    );
}

/// Layers with fewer input channels than this take their kernel gradient frames-parallel
/// ([`kernel_grad_by_frames`]).
const FEW_CHANNELS: usize = 8;

/// Frames per task of [`kernel_grad_by_frames`].
const FRAMES_PER_TASK: usize = 4;

/// The kernel gradient of [`conv_grads_events`] (no input gradient) for a layer with few input channels:
/// each task sums the events of [`FRAMES_PER_TASK`] frames into its own copy of the (small) gradient, and the
/// copies are added to `acc` in frame order. The split does not depend on the number of threads, so neither
/// do the result's bits.
fn kernel_grad_by_frames<F: Real, X: EventFrames<F>>(x: &X, grad: &[F], g: ConvGeometry, acc: &mut [F]) {
    let frames = x.frames();
    let parts: Vec<Vec<F>> = (0..frames.div_ceil(FRAMES_PER_TASK))
        .into_par_iter()
        .map(|task| {
            let range = task * FRAMES_PER_TASK..((task + 1) * FRAMES_PER_TASK).min(frames);
            let grad = &grad[range.start * g.frame_out()..range.end * g.frame_out()];
            let mut part = vec![F::zero(); acc.len()];
            dispatch!(fused
                conv_grads_block_avx2,
                conv_grads_block_avx512,
                conv_grads_block(x, range.start, 0, grad, g, &mut part, None, &mut [])
            );
            part
        })
        .collect();
    for part in parts {
        add_into(acc, &part);
    }
}

wide_variants!(fused fn conv_grads_block_avx2, conv_grads_block_avx512 = conv_grads_block<F: Real, X: EventFrames<F>>(
    x: &X, first_frame: usize, first: usize, channel_last: &[F], g: ConvGeometry, acc_block: &mut [F],
    rows: Option<&[F]>, outs: &mut [&mut [F]]
));

/// The input channels `first..` of [`conv_grads_events`] (as many as `acc_block` holds `[k, k, O]` taps for)
/// over the frames from `first_frame` on that `channel_last` holds the output gradient of; `outs` holds the
/// block's share of each of those frames of the input gradient, or nothing.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn conv_grads_block<F: Real, X: EventFrames<F>, M: MulAdd>(
    x: &X,
    first_frame: usize,
    first: usize,
    channel_last: &[F],
    g: ConvGeometry,
    acc_block: &mut [F],
    rows: Option<&[F]>,
    outs: &mut [&mut [F]],
    _: M,
) {
    let plane_in = g.height * g.width;
    let per_channel = g.kernel * g.kernel * g.outputs;
    let channels = first..first + acc_block.len() / per_channel;
    for (f, frame_grad) in channel_last.chunks_exact(g.frame_out()).enumerate() {
        let mut out = outs.get_mut(f);
        x.for_each_event_in(
            first_frame + f,
            channels.start * plane_in..channels.end * plane_in,
            #[inline(always)]
            |i, v| {
                let (c, y, xx) = (i / plane_in, (i % plane_in) / g.width, i % g.width);
                let acc_c = &mut acc_block[(c - first) * per_channel..][..per_channel];
                match (rows, out.as_deref_mut()) {
                    (Some(rows), Some(out)) => {
                        let taps = &rows[c * per_channel..][..per_channel];
                        let mut sum = DotLanes::<F, M>::new();
                        for_each_tap(
                            y,
                            xx,
                            g,
                            #[inline(always)]
                            |tap, o| {
                                let at = tap * g.outputs..(tap + 1) * g.outputs;
                                let grad_row = &frame_grad[o * g.outputs..][..g.outputs];
                                sum.add_and_scatter(&taps[at.clone()], grad_row, &mut acc_c[at], v);
                            },
                        );
                        out[i - first * plane_in] += sum.sum();
                    }
                    _ => for_each_tap(
                        y,
                        xx,
                        g,
                        #[inline(always)]
                        |tap, o| {
                            let grad_row = &frame_grad[o * g.outputs..][..g.outputs];
                            add_scaled::<F, M>(&mut acc_c[tap * g.outputs..][..g.outputs], grad_row, v);
                        },
                    ),
                }
            },
        );
    }
}

/// [`EventWeightGrad`] with the geometry read from its operands' shapes.
struct KernelGrad(ConvGeometry);

impl CpuKernel for KernelGrad {
    const NAME: &'static str = "conv2d-weight-grad-events";

    fn run<F: Real + WithDType>(&self, operands: &[&[F]]) -> Vec<F> {
        let g = self.0;
        let mut acc = vec![F::zero(); g.channels * g.kernel * g.kernel * g.outputs];
        let grad = channel_last(operands[1], g);
        weight_grad_events(&DenseFrames { data: operands[0], frame_len: g.frame_in() }, &grad, g, &mut acc);
        // [C, k, k, O] → [O, C, k, k]
        transpose(&acc, g.channels * g.kernel * g.kernel, g.outputs)
    }
}

impl CustomOp2 for EventWeightGrad {
    fn name(&self) -> &'static str {
        KernelGrad::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let (gn, o, out_h, out_w) = l2.shape().dims4()?;
        if gn != n {
            return Err(candle_core::Error::Msg(format!("{n} input frames but {gn} gradient frames")));
        }
        let g = ConvGeometry {
            channels: c,
            height: h,
            width: w,
            outputs: o,
            kernel: self.kernel,
            padding: self.padding,
            stride: self.stride,
            out_h,
            out_w,
        };
        let storage = run_cpu(&KernelGrad(g), &[(s1, l1), (s2, l2)])?;
        Ok((storage, Shape::from((o, c, self.kernel, self.kernel))))
    }
}

struct EventConv {
    padding: usize,
    stride: usize,
}

/// Geometry of one convolution: input `[C, H, W]`, kernel `[O, C, k, k]`, output `[O, Ho, Wo]`.
#[derive(Debug, Clone, Copy)]
pub struct ConvGeometry {
    /// Input channels `C`.
    pub channels: usize,
    /// Input height `H`.
    pub height: usize,
    /// Input width `W`.
    pub width: usize,
    /// Output channels `O`.
    pub outputs: usize,
    /// Kernel side `k`.
    pub kernel: usize,
    /// Zero padding `p` on every side.
    pub padding: usize,
    /// Stride `s`.
    pub stride: usize,
    /// Output height `Ho = (H + 2p − k)/s + 1`.
    pub out_h: usize,
    /// Output width `Wo = (W + 2p − k)/s + 1`.
    pub out_w: usize,
}

impl ConvGeometry {
    /// The geometry of a `kernel`×`kernel` convolution of `[channels, height, width]` frames into `outputs`
    /// channels; `None` when the kernel is larger than the padded input, or the kernel or the stride is 0.
    pub fn new(
        [channels, height, width]: [usize; 3],
        outputs: usize,
        kernel: usize,
        padding: usize,
        stride: usize,
    ) -> Option<Self> {
        if stride == 0 || kernel == 0 {
            return None;
        }
        let span = |len: usize| (len + 2 * padding).checked_sub(kernel).map(|d| d / stride + 1);
        Some(Self {
            channels,
            height,
            width,
            outputs,
            kernel,
            padding,
            stride,
            out_h: span(height)?,
            out_w: span(width)?,
        })
    }

    /// Entries of one input frame.
    pub fn frame_in(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Entries of one output frame.
    pub fn frame_out(&self) -> usize {
        self.outputs * self.out_h * self.out_w
    }

    /// `(y, x)` of every position `y·W + x` of an input plane: the kernels look positions up here instead of
    /// dividing per event.
    fn input_coordinates(&self) -> Vec<(u32, u32)> {
        (0..self.height * self.width).map(|q| ((q / self.width) as u32, (q % self.width) as u32)).collect()
    }
}

/// Columns of the source per parallel task of [`transpose`].
const TRANSPOSE_BAND: usize = 64;

/// `src` as a `rows × cols` row-major matrix, transposed; bands of columns in parallel.
pub fn transpose<F: Real>(src: &[F], rows: usize, cols: usize) -> Vec<F> {
    let mut out = vec![F::zero(); rows * cols];
    transpose_into(src, rows, cols, &mut out);
    out
}

/// [`transpose`] into `dst` (`cols × rows`), e.g. a buffer of the same size that is no longer needed.
pub fn transpose_into<F: Real>(src: &[F], rows: usize, cols: usize, dst: &mut [F]) {
    assert_eq!(src.len(), rows * cols, "transpose_into: the source holds {} values, not {rows} × {cols}", src.len());
    assert_eq!(dst.len(), src.len(), "transpose_into: the destination must hold as many values as the source");
    dst.par_chunks_mut((TRANSPOSE_BAND * rows).max(1)).enumerate().for_each(|(band, dst)| {
        let c0 = band * TRANSPOSE_BAND;
        let columns = c0..(c0 + TRANSPOSE_BAND).min(cols);
        dispatch!(transpose_columns_avx2, transpose_columns_avx512, transpose_columns(src, rows, cols, columns, dst));
    });
}

/// Writes `src` (`rows × cols`, row-major) transposed into `dst` (`cols × rows`) on the calling thread.
/// Inlined, so it runs at the SIMD level of its caller.
#[inline(always)]
fn transpose_whole<F: Real>(src: &[F], rows: usize, cols: usize, dst: &mut [F]) {
    transpose_columns(src, rows, cols, 0..cols, dst);
}

wide_variants!(fn transpose_columns_avx2, transpose_columns_avx512 = transpose_columns<F: Real>(
    src: &[F], rows: usize, cols: usize, columns: std::ops::Range<usize>, dst: &mut [F]
));

/// The columns `columns` of `src` (`rows × cols`, row-major) as rows of `dst` (`columns.len() × rows`): tiles
/// of 16 × 16 with the columns outermost, so the 16 rows of `dst` being written advance together.
#[inline(always)]
fn transpose_columns<F: Real>(src: &[F], rows: usize, cols: usize, columns: std::ops::Range<usize>, dst: &mut [F]) {
    #[cfg(target_arch = "x86_64")]
    if SimdLevel::current() >= SimdLevel::Avx2 {
        if let (Some(src), Some(dst)) = (as_f32(src), as_f32_mut(dst)) {
            // SAFETY: the CPU has AVX2, and with it AVX (the level never exceeds the detected one).
            unsafe { shuffle_transpose::transpose_columns_f32(src, rows, cols, columns, dst) };
            return;
        }
    }
    const TILE: usize = 16;
    let mut block = [[F::zero(); TILE]; TILE];
    for c0 in columns.clone().step_by(TILE) {
        let c1 = (c0 + TILE).min(columns.end);
        for r0 in (0..rows).step_by(TILE) {
            let r1 = (r0 + TILE).min(rows);
            // Each row of the tile is read once, whole, into a small block first: rows a power of two apart
            // share a cache set, so a tile read column by column would evict its own lines between columns.
            // A whole tile row is copied at its fixed length, which compiles to vector moves instead of a
            // call to `memcpy` per row.
            for (r, row) in (r0..r1).zip(block.iter_mut()) {
                let from = &src[r * cols + c0..r * cols + c1];
                match <[F; TILE]>::try_from(from) {
                    Ok(whole) => *row = whole,
                    Err(_) => row[..from.len()].copy_from_slice(from),
                }
            }
            for c in c0..c1 {
                let at = (c - columns.start) * rows;
                for (d, row) in dst[at + r0..at + r1].iter_mut().zip(&block) {
                    *d = row[c - c0];
                }
            }
        }
    }
}

/// `values` as `f32`, when `F` is `f32`.
fn as_f32<F: Real>(values: &[F]) -> Option<&[f32]> {
    (std::any::TypeId::of::<F>() == std::any::TypeId::of::<f32>())
        // SAFETY: `F` is `f32`, so the slice is one of `f32` values.
        .then(|| unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<f32>(), values.len()) })
}

/// [`as_f32`] for a mutable slice.
fn as_f32_mut<F: Real>(values: &mut [F]) -> Option<&mut [f32]> {
    (std::any::TypeId::of::<F>() == std::any::TypeId::of::<f32>())
        // SAFETY: `F` is `f32`, so the slice is one of `f32` values; the borrow is handed on.
        .then(|| unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<f32>(), values.len()) })
}

/// The transposes of `f32` values in 8 × 8 blocks of vector shuffles (the compiler turns a transpose written
/// element by element into gathers, or into scalar moves).
#[cfg(target_arch = "x86_64")]
mod shuffle_transpose {
    use std::arch::x86_64::*;

    /// [`super::transpose_columns`] for `f32`: whole 8 × 8 blocks through eight 256-bit registers, the edges
    /// value by value.
    ///
    /// # Safety
    /// Only call it on a CPU with AVX.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn transpose_columns_f32(
        src: &[f32],
        rows: usize,
        cols: usize,
        columns: std::ops::Range<usize>,
        dst: &mut [f32],
    ) {
        assert!(src.len() >= rows * cols && columns.end <= cols && dst.len() >= columns.len() * rows);
        let (first, whole_rows) = (columns.start, rows / 8 * 8);
        let whole_end = first + columns.len() / 8 * 8;
        for c0 in (first..whole_end).step_by(8) {
            for r0 in (0..whole_rows).step_by(8) {
                // SAFETY: rows r0..r0 + 8 and columns c0..c0 + 8 lie inside `src`, and the eight rows of
                // `dst` written (columns c0..c0 + 8, entries r0..r0 + 8) inside `dst` (checked above).
                unsafe {
                    let load = |r: usize| _mm256_loadu_ps(src.as_ptr().add((r0 + r) * cols + c0));
                    let t = transpose8([load(0), load(1), load(2), load(3), load(4), load(5), load(6), load(7)]);
                    for (j, row) in t.into_iter().enumerate() {
                        _mm256_storeu_ps(dst.as_mut_ptr().add((c0 + j - first) * rows + r0), row);
                    }
                }
            }
            for c in c0..c0 + 8 {
                for r in whole_rows..rows {
                    dst[(c - first) * rows + r] = src[r * cols + c];
                }
            }
        }
        for c in whole_end..columns.end {
            for r in 0..rows {
                dst[(c - first) * rows + r] = src[r * cols + c];
            }
        }
    }

    /// The 8 × 8 transpose of eight rows.
    #[target_feature(enable = "avx")]
    fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let (a0, a1) = (_mm256_unpacklo_ps(r[0], r[1]), _mm256_unpackhi_ps(r[0], r[1]));
        let (a2, a3) = (_mm256_unpacklo_ps(r[2], r[3]), _mm256_unpackhi_ps(r[2], r[3]));
        let (a4, a5) = (_mm256_unpacklo_ps(r[4], r[5]), _mm256_unpackhi_ps(r[4], r[5]));
        let (a6, a7) = (_mm256_unpacklo_ps(r[6], r[7]), _mm256_unpackhi_ps(r[6], r[7]));
        let (b0, b1) = (_mm256_shuffle_ps::<0x44>(a0, a2), _mm256_shuffle_ps::<0xEE>(a0, a2));
        let (b2, b3) = (_mm256_shuffle_ps::<0x44>(a1, a3), _mm256_shuffle_ps::<0xEE>(a1, a3));
        let (b4, b5) = (_mm256_shuffle_ps::<0x44>(a4, a6), _mm256_shuffle_ps::<0xEE>(a4, a6));
        let (b6, b7) = (_mm256_shuffle_ps::<0x44>(a5, a7), _mm256_shuffle_ps::<0xEE>(a5, a7));
        [
            _mm256_permute2f128_ps::<0x20>(b0, b4),
            _mm256_permute2f128_ps::<0x20>(b1, b5),
            _mm256_permute2f128_ps::<0x20>(b2, b6),
            _mm256_permute2f128_ps::<0x20>(b3, b7),
            _mm256_permute2f128_ps::<0x31>(b0, b4),
            _mm256_permute2f128_ps::<0x31>(b1, b5),
            _mm256_permute2f128_ps::<0x31>(b2, b6),
            _mm256_permute2f128_ps::<0x31>(b3, b7),
        ]
    }
}

/// A convolution's output-shaped values `[N, O, Ho, Wo]` channel-last, `[N, Ho, Wo, O]` (the layout the
/// backward kernels read: one contiguous row of `O` values per output position).
fn channel_last<F: Real>(planes: &[F], g: ConvGeometry) -> Vec<F> {
    let mut out = vec![F::zero(); planes.len()];
    channel_last_into(planes, g, &mut out);
    out
}

/// `channel_last` into `dst`, frames in parallel.
pub fn channel_last_into<F: Real>(planes: &[F], g: ConvGeometry, dst: &mut [F]) {
    dst.par_chunks_mut(g.frame_out()).zip(planes.par_chunks(g.frame_out())).for_each(|(dst, planes)| {
        let all = 0..g.out_h * g.out_w;
        dispatch!(
            transpose_columns_avx2,
            transpose_columns_avx512,
            transpose_columns(planes, g.outputs, g.out_h * g.out_w, all, dst)
        )
    });
}

/// `W[o, c, ky, kx]` → `W[c, ky, kx, o]`: one contiguous row of output weights per input tap.
fn kernel_rows<F: Real>(w: &[F], g: ConvGeometry) -> Vec<F> {
    transpose(w, g.outputs, g.channels * g.kernel * g.kernel)
}

/// Event-driven convolution into `out` `[N, O, Ho, Wo]` (overwritten) from the input events and the
/// transposed kernel `rows` (`kernel_rows`). Frames run in parallel.
///
/// Layers with at least [`GATHER_MIN`] input and output channels and an output frame of at least
/// [`GATHER_MIN_BYTES`] gather: each frame's events are mapped position by position, then every output
/// position's sums are formed in registers over the taps and the events under them ([`conv_frame`]). The
/// others scatter every event's kernel rows into the outputs it reaches ([`scatter_frame`]): narrow layers,
/// whose input positions hold few events each (work in proportion to the events alone), and small frames,
/// whose accumulator stays in the cache the scattering pass writes to.
pub fn conv_events<F: Real, X: EventFrames<F>>(x: &X, rows: &[F], g: ConvGeometry, out: &mut [F]) {
    let wide = g.channels >= GATHER_MIN && g.outputs >= GATHER_MIN;
    if wide && g.frame_out() * std::mem::size_of::<F>() >= GATHER_MIN_BYTES {
        out.par_chunks_mut(g.frame_out()).enumerate().for_each_init(
            // Per worker: the frame's event bitmap, and a channel-last accumulator (one contiguous row of
            // `outputs` per output position).
            || (PositionEvents::default(), vec![F::zero(); g.frame_out()]),
            |(events, acc), (f, dst)| {
                events.fill(x, f, g.channels, g.height * g.width);
                dispatch!(fused conv_frame_avx2, conv_frame_avx512, conv_frame(x, f, events, rows, g, acc, dst))
            },
        );
        return;
    }
    let coords = g.input_coordinates();
    out.par_chunks_mut(g.frame_out()).enumerate().for_each_init(
        // Channel-last accumulator, one per worker: one contiguous row of `outputs` per output position.
        || vec![F::zero(); g.frame_out()],
        |acc, (f, dst)| {
            dispatch!(fused scatter_frame_avx2, scatter_frame_avx512, scatter_frame(x, f, rows, g, &coords, acc, dst))
        },
    );
}

/// The fewest input and output channels for which [`conv_events`] gathers (below, it scatters). At 10–20 %
/// input density a 64-channel layer has several events under every tap, which the gathering pass adds
/// in registers; LeNet's 1- and 12-channel inputs leave most taps empty, and gathering them took 2–3× the
/// scattering pass's time.
const GATHER_MIN: usize = 32;

/// The smallest output frame (in bytes) for which [`conv_events`] gathers. VGG9's 32 × 32 × 64 frame
/// (256 KiB in `f32`) took 25 % less time gathering; its 8 × 8 × 256 frames (64 KiB) took more, their
/// scattered rows staying in the core's cache.
const GATHER_MIN_BYTES: usize = 128 << 10;

/// Output channels whose sums one pass of [`conv_frame`] keeps in registers: four 512-bit (or eight 256-bit)
/// registers of `f32`.
const OUTPUT_BLOCK: usize = 64;

/// One frame's non-zero inputs as a bitmap by position (channel-last): bit `c % 64` of word
/// `q · words + c / 64` is set when channel `c` holds an event (a kept spike) at input position `q`.
#[derive(Debug, Default)]
struct PositionEvents {
    bits: Vec<u64>,
    /// Words per position, `⌈C / 64⌉`.
    words: usize,
}

impl PositionEvents {
    /// The bitmap of frame `f` of `x` (`channels` planes of `plane` positions), from its walk position by
    /// position over blocks of [`CHANNEL_BLOCK`] channels.
    fn fill<F: Real, X: EventFrames<F>>(&mut self, x: &X, f: usize, channels: usize, plane: usize) {
        let words = channels.div_ceil(64);
        self.words = words;
        self.bits.clear();
        self.bits.resize(plane * words, 0);
        let bits = &mut self.bits;
        for first in (0..channels).step_by(CHANNEL_BLOCK) {
            let block = first..(first + CHANNEL_BLOCK).min(channels);
            x.for_each_event_by_position(f, block, plane, |q, c, _| bits[q * words + c / 64] |= 1 << (c % 64));
        }
    }
}

wide_variants!(fused fn conv_frame_avx2, conv_frame_avx512 = conv_frame<F: Real, X: EventFrames<F>>(
    x: &X, f: usize, events: &PositionEvents, rows: &[F], g: ConvGeometry, acc: &mut [F], dst: &mut [F]
));

/// One frame of [`conv_events`] from its events by position: for every block of [`OUTPUT_BLOCK`] output
/// channels and every output position, the sum over the kernel's taps and the events under each tap of the
/// event's kernel row, held in registers; the sums go to `acc` (channel-last), then to `dst` as
/// `[O, Ho, Wo]`. Only the kernel rows are read per event, nothing is stored.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn conv_frame<F: Real, X: EventFrames<F>, M: MulAdd>(
    x: &X,
    f: usize,
    events: &PositionEvents,
    rows: &[F],
    g: ConvGeometry,
    acc: &mut [F],
    dst: &mut [F],
    _: M,
) {
    let mut first = 0;
    while first + OUTPUT_BLOCK <= g.outputs {
        gather_block::<F, X, M, OUTPUT_BLOCK>(x, f, events, rows, g, first, acc);
        first += OUTPUT_BLOCK;
    }
    // The last outputs of a layer whose count is not a multiple of the block, in halving blocks (each used
    // at most once: fewer than 64 outputs remain).
    for width in [32, 16, 8, 4, 2, 1] {
        if first + width <= g.outputs {
            match width {
                32 => gather_block::<F, X, M, 32>(x, f, events, rows, g, first, acc),
                16 => gather_block::<F, X, M, 16>(x, f, events, rows, g, first, acc),
                8 => gather_block::<F, X, M, 8>(x, f, events, rows, g, first, acc),
                4 => gather_block::<F, X, M, 4>(x, f, events, rows, g, first, acc),
                2 => gather_block::<F, X, M, 2>(x, f, events, rows, g, first, acc),
                _ => gather_block::<F, X, M, 1>(x, f, events, rows, g, first, acc),
            }
            first += width;
        }
    }
    transpose_whole(acc, g.out_h * g.out_w, g.outputs, dst);
}

/// The output channels `first..first + W` of [`conv_frame`] at every output position, into `acc`.
#[inline(always)]
fn gather_block<F: Real, X: EventFrames<F>, M: MulAdd, const W: usize>(
    x: &X,
    f: usize,
    events: &PositionEvents,
    rows: &[F],
    g: ConvGeometry,
    first: usize,
    acc: &mut [F],
) {
    let (taps, plane) = (g.kernel * g.kernel, g.height * g.width);
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            let mut sum = [F::zero(); W];
            for ky in 0..g.kernel {
                // Input row `oy·s + ky − p`; rows in the padding wrap to large values and are skipped.
                let y = (oy * g.stride + ky).wrapping_sub(g.padding);
                if y >= g.height {
                    continue;
                }
                for kx in 0..g.kernel {
                    let col = (ox * g.stride + kx).wrapping_sub(g.padding);
                    if col >= g.width {
                        continue;
                    }
                    let (tap, q) = (ky * g.kernel + kx, y * g.width + col);
                    for (w, &word) in events.bits[q * events.words..][..events.words].iter().enumerate() {
                        let mut word = word;
                        while word != 0 {
                            let c = 64 * w + word.trailing_zeros() as usize;
                            word &= word - 1;
                            let v = x.value_at(f, c * plane + q);
                            let at = (c * taps + tap) * g.outputs + first;
                            let Ok(row) = <&[F; W]>::try_from(&rows[at..at + W]) else { continue };
                            if v == F::one() {
                                for k in 0..W {
                                    sum[k] += row[k];
                                }
                            } else {
                                for k in 0..W {
                                    sum[k] = M::mul_add(v, row[k], sum[k]);
                                }
                            }
                        }
                    }
                }
            }
            acc[(oy * g.out_w + ox) * g.outputs + first..][..W].copy_from_slice(&sum);
        }
    }
}

wide_variants!(fused fn scatter_frame_avx2, scatter_frame_avx512 = scatter_frame<F: Real, X: EventFrames<F>>(
    x: &X, f: usize, rows: &[F], g: ConvGeometry, coords: &[(u32, u32)], acc: &mut [F], dst: &mut [F]
));

/// One frame of [`conv_events`] by scattering: adds every event's kernel rows into `acc` (channel-last, cleared
/// here), then writes it to `dst` as `[O, Ho, Wo]`.
///
/// The input channels are taken [`CHANNEL_BLOCK`] at a time and, within a block, position by position: the
/// output rows that successive events update then lie within a few rows of the frame and stay in the L1
/// cache together with the block's kernel rows, instead of the whole frame's accumulator streaming through
/// L2 once per input channel.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn scatter_frame<F: Real, X: EventFrames<F>, M: MulAdd>(
    x: &X,
    f: usize,
    rows: &[F],
    g: ConvGeometry,
    coords: &[(u32, u32)],
    acc: &mut [F],
    dst: &mut [F],
    _: M,
) {
    let per_channel = g.kernel * g.kernel * g.outputs;
    let plane_in = g.height * g.width;
    acc.fill(F::zero());
    for first in (0..g.channels).step_by(CHANNEL_BLOCK) {
        x.for_each_event_by_position(
            f,
            first..(first + CHANNEL_BLOCK).min(g.channels),
            plane_in,
            #[inline(always)]
            |p, c, v| {
                let (y, xx) = coords[p];
                let taps = &rows[c * per_channel..][..per_channel];
                for_each_tap(
                    y as usize,
                    xx as usize,
                    g,
                    #[inline(always)]
                    |tap, o| {
                        let row = &taps[tap * g.outputs..][..g.outputs];
                        add_scaled::<F, M>(&mut acc[o * g.outputs..][..g.outputs], row, v);
                    },
                );
            },
        );
    }
    transpose_whole(acc, g.out_h * g.out_w, g.outputs, dst);
}

/// Calls `f(tap, output)` for every kernel tap `ky·k + kx` through which the input at `(y, x)` reaches an
/// output position `oy·Wo + ox` (`oy·s + ky = y + p`, `ox·s + kx = x + p`).
#[inline(always)]
fn for_each_tap(y: usize, x: usize, g: ConvGeometry, mut f: impl FnMut(usize, usize)) {
    if g.stride == 1 {
        // Output (oy, ox) = (y + p - ky, x + p - kx): the valid taps form one rectangle.
        let kx_range = tap_range(x, g.padding, g.kernel, g.out_w);
        for ky in tap_range(y, g.padding, g.kernel, g.out_h) {
            let oy = y + g.padding - ky;
            for kx in kx_range.clone() {
                f(ky * g.kernel + kx, oy * g.out_w + x + g.padding - kx);
            }
        }
        return;
    }
    for ky in 0..g.kernel {
        let Some(oy) = output_index(y, ky, g.padding, g.stride, g.out_h) else { continue };
        for kx in 0..g.kernel {
            let Some(ox) = output_index(x, kx, g.padding, g.stride, g.out_w) else { continue };
            f(ky * g.kernel + kx, oy * g.out_w + ox);
        }
    }
}

/// For stride 1: the taps `k` of an input at `i` whose output `i + padding - k` lies in `0..len`.
#[inline(always)]
fn tap_range(i: usize, padding: usize, kernel: usize, len: usize) -> std::ops::Range<usize> {
    let shifted = i + padding;
    let first = (shifted + 1).saturating_sub(len);
    let last = shifted.min(kernel - 1);
    first..(last + 1).max(first)
}

/// The output index `o` with `o·stride + k = i + padding`, if it exists and is below `len`.
#[inline(always)]
fn output_index(i: usize, k: usize, padding: usize, stride: usize, len: usize) -> Option<usize> {
    let shifted = (i + padding).checked_sub(k)?;
    (shifted % stride == 0 && shifted / stride < len).then_some(shifted / stride)
}

/// Independent partial sums of [`DotLanes`] (four 512-bit registers of `f32` in the AVX-512 build, eight
/// 256-bit ones in the AVX2 build), so that consecutive multiply-adds do not wait for each other (one register
/// would serialise them on the adder's latency). A power of two, for the pairwise sum of [`DotLanes::sum`].
const DOT_LANES: usize = 64;

/// The width in which [`DotLanes`] takes what is left of a row after its whole chunks of [`DOT_LANES`] (into
/// successive groups of partial sums, so that these too are independent), before the last few values one by
/// one: a row of 50 leaves 2 values to the scalar tail instead of 50.
const DOT_TAIL_LANES: usize = 8;

/// A running dot product over several pairs of rows, in [`DOT_LANES`] partial sums that the compiler keeps in
/// SIMD registers; they are added up once, by [`DotLanes::sum`].
struct DotLanes<F, M> {
    lanes: [F; DOT_LANES],
    tail: F,
    form: std::marker::PhantomData<M>,
}

impl<F: Real, M: MulAdd> DotLanes<F, M> {
    #[inline(always)]
    fn new() -> Self {
        Self { lanes: [F::zero(); DOT_LANES], tail: F::zero(), form: std::marker::PhantomData }
    }

    /// Adds `Σ a·b`.
    #[inline(always)]
    fn add(&mut self, a: &[F], b: &[F]) {
        let (head_a, head_b) = (a.chunks_exact(DOT_LANES), b.chunks_exact(DOT_LANES));
        let (rest_a, rest_b) = (head_a.remainder(), head_b.remainder());
        for (ca, cb) in head_a.zip(head_b) {
            for k in 0..DOT_LANES {
                self.lanes[k] = M::mul_add(ca[k], cb[k], self.lanes[k]);
            }
        }
        let (mid_a, mid_b) = (rest_a.chunks_exact(DOT_TAIL_LANES), rest_b.chunks_exact(DOT_TAIL_LANES));
        let (tail_a, tail_b) = (mid_a.remainder(), mid_b.remainder());
        for (group, (ca, cb)) in self.lanes.chunks_exact_mut(DOT_TAIL_LANES).zip(mid_a.zip(mid_b)) {
            for k in 0..DOT_TAIL_LANES {
                group[k] = M::mul_add(ca[k], cb[k], group[k]);
            }
        }
        for (&x, &y) in tail_a.iter().zip(tail_b) {
            self.tail = M::mul_add(x, y, self.tail);
        }
    }

    /// Adds `Σ a·b` and, in the same pass over `b`, `acc += v · b`.
    #[inline(always)]
    fn add_and_scatter(&mut self, a: &[F], b: &[F], acc: &mut [F], v: F) {
        let (head_a, head_b) = (a.chunks_exact(DOT_LANES), b.chunks_exact(DOT_LANES));
        let (rest_a, rest_b) = (head_a.remainder(), head_b.remainder());
        let mut head_acc = acc.chunks_exact_mut(DOT_LANES);
        for ((ca, cb), cacc) in head_a.zip(head_b).zip(&mut head_acc) {
            for k in 0..DOT_LANES {
                self.lanes[k] = M::mul_add(ca[k], cb[k], self.lanes[k]);
                cacc[k] = M::mul_add(v, cb[k], cacc[k]);
            }
        }
        let (mid_a, mid_b) = (rest_a.chunks_exact(DOT_TAIL_LANES), rest_b.chunks_exact(DOT_TAIL_LANES));
        let (tail_a, tail_b) = (mid_a.remainder(), mid_b.remainder());
        let mut mid_acc = head_acc.into_remainder().chunks_exact_mut(DOT_TAIL_LANES);
        let groups = self.lanes.chunks_exact_mut(DOT_TAIL_LANES);
        for (group, ((ca, cb), cacc)) in groups.zip(mid_a.zip(mid_b).zip(&mut mid_acc)) {
            for k in 0..DOT_TAIL_LANES {
                group[k] = M::mul_add(ca[k], cb[k], group[k]);
                cacc[k] = M::mul_add(v, cb[k], cacc[k]);
            }
        }
        for ((&x, &y), d) in tail_a.iter().zip(tail_b).zip(mid_acc.into_remainder()) {
            self.tail = M::mul_add(x, y, self.tail);
            *d = M::mul_add(v, y, *d);
        }
    }

    /// The dot product so far: the partial sums added pairwise (halves onto halves, in vector registers),
    /// then the scalar tail.
    #[inline(always)]
    fn sum(&self) -> F {
        let mut lanes = self.lanes;
        let mut width = DOT_LANES / 2;
        while width > 0 {
            for k in 0..width {
                lanes[k] += lanes[k + width];
            }
            width /= 2;
        }
        lanes[0] + self.tail
    }
}

/// Elements per fixed-length chunk of [`add_scaled`]: a whole number of SIMD registers, with no run-time
/// trip count or overlap check for the compiler to emit per row.
const ROW_CHUNK: usize = 64;

/// `dst += v · row`, with the multiplication skipped for the common `v = 1`.
#[inline(always)]
fn add_scaled<F: Real, M: MulAdd>(dst: &mut [F], row: &[F], v: F) {
    let mut dst_chunks = dst.chunks_exact_mut(ROW_CHUNK);
    let mut row_chunks = row.chunks_exact(ROW_CHUNK);
    for (d, r) in (&mut dst_chunks).zip(&mut row_chunks) {
        add_scaled_chunk::<F, M>(d, r, v);
    }
    add_scaled_chunk::<F, M>(dst_chunks.into_remainder(), row_chunks.remainder(), v);
}

/// [`add_scaled`] over one chunk (or the remainder).
#[inline(always)]
fn add_scaled_chunk<F: Real, M: MulAdd>(dst: &mut [F], row: &[F], v: F) {
    if v == F::one() {
        for (d, &w) in dst.iter_mut().zip(row) {
            *d += w;
        }
    } else {
        for (d, &w) in dst.iter_mut().zip(row) {
            *d = M::mul_add(v, w, *d);
        }
    }
}

/// Event-driven product into `out` `[N, Out]` (overwritten): each input event adds its row of the transposed
/// weight `rows` `[In, Out]`.
pub fn linear_events_into<F: Real, X: EventFrames<F>>(x: &X, rows: &[F], outputs: usize, out: &mut [F]) {
    out.par_chunks_mut(outputs).enumerate().for_each(
        |(f, dst)| dispatch!(fused linear_frame_avx2, linear_frame_avx512, linear_frame(x, f, rows, outputs, dst)),
    );
}

wide_variants!(fused fn linear_frame_avx2, linear_frame_avx512 = linear_frame<F: Real, X: EventFrames<F>>(
    x: &X, f: usize, rows: &[F], outputs: usize, dst: &mut [F]
));

/// One frame of [`linear_events_into`].
#[inline(always)]
fn linear_frame<F: Real, X: EventFrames<F>, M: MulAdd>(
    x: &X,
    f: usize,
    rows: &[F],
    outputs: usize,
    dst: &mut [F],
    _: M,
) {
    dst.fill(F::zero());
    x.for_each_event(
        f,
        #[inline(always)]
        |i, v| add_scaled::<F, M>(dst, &rows[i * outputs..][..outputs], v),
    );
}

/// Inputs per parallel task of [`linear_weight_grad_events`].
const INPUTS_PER_TASK: usize = 64;

/// Adds the weight gradient of a fully connected layer, transposed (`[In, Out]`, the layout of the rows the
/// event kernels read), to `acc`, from its input events and output gradient `grad` `[N, Out]`:
/// `Σ_f Σ_events v · grad[f, :]` into row `i`. Blocks of inputs run in parallel, each visiting the frames in
/// order, so the sums are the same bits whatever the thread count.
pub fn linear_weight_grad_events<F: Real, X: EventFrames<F>>(x: &X, grad: &[F], outputs: usize, acc: &mut [F]) {
    acc.par_chunks_mut(INPUTS_PER_TASK * outputs).enumerate().for_each(|(block, acc)| {
        let first = block * INPUTS_PER_TASK;
        dispatch!(fused
            linear_weight_grad_block_avx2,
            linear_weight_grad_block_avx512,
            linear_weight_grad_block(x, first, grad, outputs, acc)
        )
    });
}

wide_variants!(fused fn linear_weight_grad_block_avx2, linear_weight_grad_block_avx512 = linear_weight_grad_block<F: Real, X: EventFrames<F>>(
    x: &X, first: usize, grad: &[F], outputs: usize, acc: &mut [F]
));

/// The inputs `first..` of [`linear_weight_grad_events`] (as many as `acc` has rows) over every frame.
#[inline(always)]
fn linear_weight_grad_block<F: Real, X: EventFrames<F>, M: MulAdd>(
    x: &X,
    first: usize,
    grad: &[F],
    outputs: usize,
    acc: &mut [F],
    _: M,
) {
    let range = first..first + acc.len() / outputs;
    for (f, row) in grad.chunks_exact(outputs).enumerate() {
        x.for_each_event_in(
            f,
            range.clone(),
            #[inline(always)]
            |i, v| {
                add_scaled::<F, M>(&mut acc[(i - first) * outputs..][..outputs], row, v);
            },
        );
    }
}

/// Adds to `out` `[N, In]` the input gradient of a fully connected layer at the input's events:
/// `out[f, i] += rows[i, :] · grad[f, :]`, with `rows` the transposed weight `[In, Out]`.
pub fn linear_input_grad_events<F: Real, X: EventFrames<F>>(
    x: &X,
    rows: &[F],
    grad: &[F],
    outputs: usize,
    out: &mut [F],
) {
    out.par_chunks_mut(x.frame_len()).zip(grad.par_chunks(outputs)).enumerate().for_each(|(f, (dst, row))| {
        dispatch!(fused
            linear_input_grad_frame_avx2,
            linear_input_grad_frame_avx512,
            linear_input_grad_frame(x, f, rows, row, outputs, dst)
        )
    });
}

wide_variants!(fused fn linear_input_grad_frame_avx2, linear_input_grad_frame_avx512 = linear_input_grad_frame<F: Real, X: EventFrames<F>>(
    x: &X, f: usize, rows: &[F], row: &[F], outputs: usize, dst: &mut [F]
));

/// One frame of [`linear_input_grad_events`].
#[inline(always)]
fn linear_input_grad_frame<F: Real, X: EventFrames<F>, M: MulAdd>(
    x: &X,
    f: usize,
    rows: &[F],
    row: &[F],
    outputs: usize,
    dst: &mut [F],
    _: M,
) {
    x.for_each_event(
        f,
        #[inline(always)]
        |i, _| {
            let mut sum = DotLanes::<F, M>::new();
            sum.add(&rows[i * outputs..][..outputs], row);
            dst[i] += sum.sum();
        },
    );
}

/// [`EventConv`] on `frames` frames of the given geometry.
struct ConvForward(ConvGeometry);

impl CpuKernel for ConvForward {
    const NAME: &'static str = "conv2d-events";

    fn run<F: Real + WithDType>(&self, operands: &[&[F]]) -> Vec<F> {
        let x = DenseFrames { data: operands[0], frame_len: self.0.frame_in() };
        let mut out = vec![F::zero(); x.frames() * self.0.frame_out()];
        conv_events(&x, &kernel_rows(operands[1], self.0), self.0, &mut out);
        out
    }
}

impl CustomOp2 for EventConv {
    fn name(&self) -> &'static str {
        ConvForward::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let (o, _, k, _) = l2.shape().dims4()?;
        let Some(g) = ConvGeometry::new([c, h, w], o, k, self.padding, self.stride) else {
            return Err(candle_core::Error::Msg(format!("kernel {k} larger than the padded {h}×{w} input")));
        };
        let storage = run_cpu(&ConvForward(g), &[(s1, l1), (s2, l2)])?;
        Ok((storage, Shape::from((n, o, g.out_h, g.out_w))))
    }
}

/// [`linear_events`] as an op on (inputs `[N, In]`, weight `[Out, In]`).
struct EventLinear;

/// [`EventLinear`]'s kernel for the given sizes.
struct Product {
    inputs: usize,
    outputs: usize,
}

impl CpuKernel for Product {
    const NAME: &'static str = "linear-events";

    fn run<F: Real + WithDType>(&self, operands: &[&[F]]) -> Vec<F> {
        let x = DenseFrames { data: operands[0], frame_len: self.inputs };
        let mut out = vec![F::zero(); x.frames() * self.outputs];
        linear_events_into(&x, &transpose(operands[1], self.outputs, self.inputs), self.outputs, &mut out);
        out
    }
}

impl CustomOp2 for EventLinear {
    fn name(&self) -> &'static str {
        Product::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, inputs) = l1.shape().dims2()?;
        let (outputs, _) = l2.shape().dims2()?;
        let storage = run_cpu(&Product { inputs, outputs }, &[(s1, l1), (s2, l2)])?;
        Ok((storage, Shape::from((n, outputs))))
    }
}
