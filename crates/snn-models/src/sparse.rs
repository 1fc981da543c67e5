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
//! bits whatever the thread count. The ops themselves are not differentiable: inference calls them directly, and
//! training reaches them through the convolution of [`crate::conv`], whose backward uses the kernel- and
//! input-gradient kernels here. They run on the CPU; on other devices the callers use the dense layers.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;
use snn_core::cpu::{run_cpu, CpuKernel};
use snn_core::kernels::Real;

use crate::{Error, Result};

/// Above this share of non-zero inputs the callers use the dense layers. A chosen, not a measured, crossover:
/// at 30 % the event path still skips 70 % of the connections, while a dense GEMM-based convolution does
/// several times more useful work per instruction than scattered row additions.
pub const EVENT_DENSITY_LIMIT: f64 = 0.3;

/// Whether a window of spikes `[N, ...]` (values 0 or ±1, dropout-masked spikes by their mask value) on the CPU
/// is sparse enough for the event-driven layers: its summed magnitude, the number of spikes, is at most
/// [`EVENT_DENSITY_LIMIT`] times its number of entries. One pass over the buffer, no temporaries.
pub fn sparse_enough(spikes: &Tensor) -> Result<bool> {
    let partial_sums = spikes.contiguous()?.apply_op1_no_bwd(&MagnitudeSums)?;
    let events = partial_sums.to_dtype(candle_core::DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    Ok(events <= EVENT_DENSITY_LIMIT * spikes.elem_count() as f64)
}

/// Entries per partial sum of [`MagnitudeSums`]: small enough that a partial sum of spike magnitudes is exact
/// in `f32`.
const MAGNITUDE_CHUNK: usize = 1 << 20;

/// `Σ |x|` over consecutive chunks of [`MAGNITUDE_CHUNK`] entries.
struct MagnitudeSums;

impl CpuKernel for MagnitudeSums {
    const NAME: &'static str = "magnitude-sums";

    fn run<F: Real + WithDType>(&self, operands: &[&[F]]) -> Vec<F> {
        operands[0].par_chunks(MAGNITUDE_CHUNK).map(|c| c.iter().fold(F::zero(), |s, v| s + v.abs())).collect()
    }
}

impl CustomOp1 for MagnitudeSums {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let sums = run_cpu(self, &[(s, l)])?;
        Ok((sums, Shape::from(l.shape().elem_count().div_ceil(MAGNITUDE_CHUNK))))
    }
}

/// Event-driven 2-D convolution of `frames` `[N, C, H, W]` with `kernel` `[O, C, k, k]` (square, no bias),
/// visiting only the non-zero inputs. Same result as `frames.conv2d(kernel, padding, stride, 1, 1)` up to
/// rounding.
pub fn conv2d_events(frames: &Tensor, kernel: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    let (_, c, _, _) = frames.dims4()?;
    let (_, kc, kh, kw) = kernel.dims4()?;
    if kc != c || kh != kw || stride == 0 {
        return Err(Error::Spec(format!(
            "event convolution needs a square kernel over the input's {c} channels and a positive stride, got \
             kernel {:?}, stride {stride}",
            kernel.dims()
        )));
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
        return Err(Error::Spec(format!(
            "event product of {features} inputs with a weight of shape {:?}",
            weight.dims()
        )));
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
        return Err(Error::Spec(format!(
            "input gradient of frames {:?}, kernel {:?}, output gradient {:?}",
            frames.dims(),
            kernel.dims(),
            grad.dims()
        )));
    }
    let g = ConvGeometry { channels: c, height: h, width: w, outputs: o, kernel: k, padding, stride, out_h, out_w };
    Ok(frames.contiguous()?.apply_op3_no_bwd(&kernel.contiguous()?, &grad.contiguous()?, &EventInputGrad(g))?)
}

/// [`conv2d_input_grad_at_events`] on operands (frames, kernel, output gradient).
struct EventInputGrad(ConvGeometry);

impl CpuKernel for EventInputGrad {
    const NAME: &'static str = "conv2d-input-grad-at-events";

    fn run<F: Real + WithDType>(&self, operands: &[&[F]]) -> Vec<F> {
        input_grad_events(operands[0], operands[1], operands[2], self.0)
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

fn input_grad_events<F: Real>(x: &[F], w: &[F], grad: &[F], g: ConvGeometry) -> Vec<F> {
    let rows = kernel_rows(w, g);
    let (plane_in, plane_out) = (g.height * g.width, g.out_h * g.out_w);
    let mut out = vec![F::zero(); x.len()];
    out.par_chunks_mut(g.channels * plane_in)
        .zip(x.par_chunks(g.channels * plane_in))
        .zip(grad.par_chunks(g.outputs * plane_out))
        .for_each_init(
            || vec![F::zero(); plane_out * g.outputs],
            |channel_last, ((dst, frame), frame_grad)| input_grad_frame(frame, frame_grad, &rows, g, channel_last, dst),
        );
    out
}

/// One frame of [`input_grad_events`]: `dst[c, y, x] = Σ_taps W[:, c, ky, kx] · grad[:, oy, ox]` at events.
#[inline(never)]
fn input_grad_frame<F: Real>(
    frame: &[F],
    frame_grad: &[F],
    rows: &[F],
    g: ConvGeometry,
    channel_last: &mut [F],
    dst: &mut [F],
) {
    planes_to_channel_last(frame_grad, g, channel_last);
    let per_channel = g.kernel * g.kernel * g.outputs;
    for_each_event(frame, g, |i, c, y, x, _| {
        let taps = &rows[c * per_channel..][..per_channel];
        let mut sum = F::zero();
        for_each_tap(y, x, g, |tap, out| {
            sum += dot(&taps[tap * g.outputs..][..g.outputs], &channel_last[out * g.outputs..][..g.outputs]);
        });
        dst[i] = sum;
    });
}

struct EventWeightGrad {
    kernel: usize,
    padding: usize,
    stride: usize,
}

/// Frames per partial sum of [`weight_grad_events`]'s reduction. The partition depends only on the number of
/// frames, never on the thread count or on scheduling, so the sum is the same bits on every run.
const FRAMES_PER_PARTIAL: usize = 16;

fn weight_grad_events<F: Real>(x: &[F], grad: &[F], g: ConvGeometry) -> Vec<F> {
    let (plane_in, plane_out) = (g.height * g.width, g.out_h * g.out_w);
    let taps = g.channels * g.kernel * g.kernel;
    let (frame_in, frame_out) = (g.channels * plane_in, g.outputs * plane_out);
    let partials: Vec<Vec<F>> = x
        .par_chunks(frame_in * FRAMES_PER_PARTIAL)
        .zip(grad.par_chunks(frame_out * FRAMES_PER_PARTIAL))
        .map(|(frames, grads)| {
            let mut acc = vec![F::zero(); taps * g.outputs];
            let mut channel_last = vec![F::zero(); plane_out * g.outputs];
            for (frame, frame_grad) in frames.chunks_exact(frame_in).zip(grads.chunks_exact(frame_out)) {
                weight_grad_frame(frame, frame_grad, g, &mut acc, &mut channel_last);
            }
            acc
        })
        .collect();
    // Partial sums added in frame order.
    let mut acc = vec![F::zero(); taps * g.outputs];
    for partial in &partials {
        acc.iter_mut().zip(partial).for_each(|(a, &p)| *a += p);
    }
    // [C, k, k, O] → [O, C, k, k]
    transpose(&acc, taps, g.outputs)
}

/// One frame of [`weight_grad_events`]: `acc[c, ky, kx, :] += v · grad[:, oy, ox]` for every event.
#[inline(never)]
fn weight_grad_frame<F: Real>(frame: &[F], frame_grad: &[F], g: ConvGeometry, acc: &mut [F], channel_last: &mut [F]) {
    planes_to_channel_last(frame_grad, g, channel_last);
    let per_channel = g.kernel * g.kernel * g.outputs;
    for_each_event(frame, g, |_, c, y, x, v| {
        let acc_c = &mut acc[c * per_channel..][..per_channel];
        for_each_tap(y, x, g, |tap, out| {
            add_scaled(&mut acc_c[tap * g.outputs..][..g.outputs], &channel_last[out * g.outputs..][..g.outputs], v);
        });
    });
}

/// [`EventWeightGrad`] with the geometry read from its operands' shapes.
struct KernelGrad(ConvGeometry);

impl CpuKernel for KernelGrad {
    const NAME: &'static str = "conv2d-weight-grad-events";

    fn run<F: Real + WithDType>(&self, operands: &[&[F]]) -> Vec<F> {
        weight_grad_events(operands[0], operands[1], self.0)
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

/// Geometry of one event convolution.
#[derive(Clone, Copy)]
struct ConvGeometry {
    channels: usize,
    height: usize,
    width: usize,
    outputs: usize,
    kernel: usize,
    padding: usize,
    stride: usize,
    out_h: usize,
    out_w: usize,
}

/// `src` as a `rows × cols` row-major matrix, transposed.
fn transpose<F: Real>(src: &[F], rows: usize, cols: usize) -> Vec<F> {
    let mut out = vec![F::zero(); rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = src[r * cols + c];
        }
    }
    out
}

/// Writes a frame's output planes `[O, P]` into `dst` as channel-last rows `[P, O]`.
fn planes_to_channel_last<F: Real>(planes: &[F], g: ConvGeometry, dst: &mut [F]) {
    let plane = g.out_h * g.out_w;
    for (o, values) in planes.chunks_exact(plane).enumerate() {
        for (p, &value) in values.iter().enumerate() {
            dst[p * g.outputs + o] = value;
        }
    }
}

/// Calls `f(index, channel, y, x, value)` for every non-zero entry of a frame `[C, H, W]`.
#[inline(always)]
fn for_each_event<F: Real>(frame: &[F], g: ConvGeometry, mut f: impl FnMut(usize, usize, usize, usize, F)) {
    let plane = g.height * g.width;
    for (i, &v) in frame.iter().enumerate() {
        if v != F::zero() {
            f(i, i / plane, (i % plane) / g.width, i % g.width, v);
        }
    }
}

/// `W[o, c, ky, kx]` → `W[c, ky, kx, o]`.
fn kernel_rows<F: Real>(w: &[F], g: ConvGeometry) -> Vec<F> {
    transpose(w, g.outputs, g.channels * g.kernel * g.kernel)
}

fn conv_events<F: Real>(x: &[F], w: &[F], n: usize, g: ConvGeometry) -> Vec<F> {
    let rows = kernel_rows(w, g);
    let (plane_in, plane_out) = (g.height * g.width, g.out_h * g.out_w);
    let mut out = vec![F::zero(); n * g.outputs * plane_out];
    out.par_chunks_mut(g.outputs * plane_out).zip(x.par_chunks(g.channels * plane_in)).for_each_init(
        // Channel-last accumulator, one per worker: one contiguous row of `outputs` per output position.
        || vec![F::zero(); plane_out * g.outputs],
        |acc, (dst, frame)| conv_frame(frame, &rows, g, acc, dst),
    );
    out
}

/// One frame of [`conv_events`]: accumulates every event's kernel rows into `acc` (channel-last, cleared
/// here), then writes it to `dst` as `[O, Ho, Wo]`.
#[inline(never)]
fn conv_frame<F: Real>(frame: &[F], rows: &[F], g: ConvGeometry, acc: &mut [F], dst: &mut [F]) {
    let plane_out = g.out_h * g.out_w;
    let per_channel = g.kernel * g.kernel * g.outputs;
    acc.fill(F::zero());
    for_each_event(frame, g, |_, c, y, x, v| {
        let taps = &rows[c * per_channel..][..per_channel];
        for_each_tap(y, x, g, |tap, out| {
            add_scaled(&mut acc[out * g.outputs..][..g.outputs], &taps[tap * g.outputs..][..g.outputs], v);
        });
    });
    for (p, cell) in acc.chunks_exact(g.outputs).enumerate() {
        for (o, &value) in cell.iter().enumerate() {
            dst[o * plane_out + p] = value;
        }
    }
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
fn tap_range(i: usize, padding: usize, kernel: usize, len: usize) -> std::ops::Range<usize> {
    let shifted = i + padding;
    let first = (shifted + 1).saturating_sub(len);
    let last = shifted.min(kernel - 1);
    first..(last + 1).max(first)
}

/// The output index `o` with `o·stride + k = i + padding`, if it exists and is below `len`.
fn output_index(i: usize, k: usize, padding: usize, stride: usize, len: usize) -> Option<usize> {
    let shifted = (i + padding).checked_sub(k)?;
    (shifted % stride == 0 && shifted / stride < len).then_some(shifted / stride)
}

/// `Σ a·b` with eight independent partial sums, which the compiler turns into SIMD lanes (a single running
/// sum would serialise every addition).
#[inline(always)]
fn dot<F: Real>(a: &[F], b: &[F]) -> F {
    let mut lanes = [F::zero(); 8];
    let (head_a, head_b) = (a.chunks_exact(8), b.chunks_exact(8));
    let (tail_a, tail_b) = (head_a.remainder(), head_b.remainder());
    for (ca, cb) in head_a.zip(head_b) {
        for k in 0..8 {
            lanes[k] += ca[k] * cb[k];
        }
    }
    let mut sum = lanes.iter().fold(F::zero(), |s, &l| s + l);
    for (&x, &y) in tail_a.iter().zip(tail_b) {
        sum += x * y;
    }
    sum
}

/// `dst += v · row`, with the multiplication skipped for the common `v = 1`.
fn add_scaled<F: Real>(dst: &mut [F], row: &[F], v: F) {
    if v == F::one() {
        for (d, &w) in dst.iter_mut().zip(row) {
            *d += w;
        }
    } else {
        for (d, &w) in dst.iter_mut().zip(row) {
            *d += v * w;
        }
    }
}

fn linear_events_cpu<F: Real>(x: &[F], w: &[F], inputs: usize, outputs: usize) -> Vec<F> {
    // W[out, in] → W[in, out]: each event adds one contiguous row.
    let rows = transpose(w, outputs, inputs);
    let mut out = vec![F::zero(); x.len() / inputs * outputs];
    out.par_chunks_mut(outputs).zip(x.par_chunks(inputs)).for_each(|(dst, frame)| {
        for (i, &v) in frame.iter().enumerate() {
            if v != F::zero() {
                add_scaled(dst, &rows[i * outputs..][..outputs], v);
            }
        }
    });
    out
}

/// [`EventConv`] on `frames` frames of the given geometry.
struct ConvForward {
    frames: usize,
    g: ConvGeometry,
}

impl CpuKernel for ConvForward {
    const NAME: &'static str = "conv2d-events";

    fn run<F: Real + WithDType>(&self, operands: &[&[F]]) -> Vec<F> {
        conv_events(operands[0], operands[1], self.frames, self.g)
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
        let span = |len: usize| (len + 2 * self.padding).checked_sub(k).map(|d| d / self.stride + 1);
        let (Some(out_h), Some(out_w)) = (span(h), span(w)) else {
            return Err(candle_core::Error::Msg(format!("kernel {k} larger than the padded {h}×{w} input")));
        };
        let g = ConvGeometry {
            channels: c,
            height: h,
            width: w,
            outputs: o,
            kernel: k,
            padding: self.padding,
            stride: self.stride,
            out_h,
            out_w,
        };
        let storage = run_cpu(&ConvForward { frames: n, g }, &[(s1, l1), (s2, l2)])?;
        Ok((storage, Shape::from((n, o, out_h, out_w))))
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
        linear_events_cpu(operands[0], operands[1], self.inputs, self.outputs)
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
