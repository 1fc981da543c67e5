//! 2-D convolution over a window of frames with a leaner backward pass than Candle's default.
//!
//! Candle differentiates `conv2d` with respect to its input through `conv_transpose2d`, which is about half
//! as fast on the CPU as a plain convolution, and computes that gradient even when the input is data (the
//! network's input spikes). Here the forward value comes from Candle's `conv2d` (or the event-driven
//! convolution) on detached operands; a custom op then ties it to the operands with a backward pass that
//!
//! * skips the input gradient when the input needs none, or computes it only at the input spikes when that
//!   is all the neuron upstream reads ([`InputGrad::AtSpikes`]),
//! * computes it for stride 1 as a convolution of the output gradient with the flipped, transposed kernel,
//! * and the kernel gradient as Candle does (a convolution of the input with the output gradient).
//!
//! When the input is sparse spikes (at most [`crate::events::EVENT_DENSITY_LIMIT`] non-zero) on the CPU, the
//! forward value and the kernel gradient are computed event-driven instead ([`crate::events`]).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use crate::events::{conv2d_events, conv2d_input_grad_at_events, conv2d_weight_grad_events, sparse_enough};
use crate::Result;

/// Which gradient with respect to its input a convolution computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputGrad {
    /// None: the input is data (the network's input spikes).
    None,
    /// The full gradient.
    Full,
    /// Only at the input's non-zero entries (zero elsewhere), when the input is a spike train whose neuron
    /// backward reads the gradient only at spike times ([`crate::events::conv2d_input_grad_at_events`]); on
    /// a dense input the full gradient is computed.
    AtSpikes,
}

/// Convolution of `frames` `[N, C, H, W]` with `kernel` `[O, C, k, k]` (square, no bias, dilation 1), with
/// the input gradient chosen by `input_grad`.
pub fn conv2d_frames(
    frames: &Tensor,
    kernel: &Tensor,
    padding: usize,
    stride: usize,
    input_grad: InputGrad,
) -> Result<Tensor> {
    // Spike inputs sparse enough for it take the event-driven path, forward and kernel gradient.
    let events = frames.device().is_cpu() && sparse_enough(frames)?;
    let value = if events {
        conv2d_events(&frames.detach(), &kernel.detach(), padding, stride)?
    } else {
        frames.detach().conv2d(&kernel.detach(), padding, stride, 1, 1)?
    };
    let op = ConvOp { padding, stride, input_grad, events };
    Ok(frames.apply_op3(kernel, &value.contiguous()?, op)?)
}

/// Ties a convolution's forward value (its third operand, computed from the detached input and kernel) to
/// the input and kernel (its first two), with the backward pass of this module. Its forward is a copy of
/// the value, so the op is a function of its operands.
struct ConvOp {
    padding: usize,
    stride: usize,
    input_grad: InputGrad,
    /// Whether the input is sparse spikes (event-driven kernel and input gradients).
    events: bool,
}

impl CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        "conv2d-frames"
    }

    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
        value: &CpuStorage,
        value_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        whole_buffer(value_layout, self.name())?;
        Ok((value.try_clone(value_layout)?, value_layout.shape().clone()))
    }

    /// On a GPU the value comes from Candle's own convolution; the op hands over a copy of it.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _s1: &candle_core::CudaStorage,
        _l1: &Layout,
        _s2: &candle_core::CudaStorage,
        _l2: &Layout,
        value: &candle_core::CudaStorage,
        value_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        whole_buffer(value_layout, self.name())?;
        Ok((value.try_clone(value_layout)?, value_layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _value: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, _, kh, _) = w.dims4()?;
        let gw = if self.events {
            conv2d_weight_grad_events(x, grad, kh, self.padding, self.stride).map_err(candle_core::Error::wrap)?
        } else {
            dense_kernel_grad(x, grad, kh, self.padding, self.stride)?
        };
        if self.input_grad == InputGrad::None {
            return Ok((None, Some(gw), None));
        }
        let gx = if self.events && self.input_grad == InputGrad::AtSpikes {
            conv2d_input_grad_at_events(x, w, grad, self.padding, self.stride).map_err(candle_core::Error::wrap)?
        } else {
            dense_input_grad(w, grad, self.padding, self.stride, (x.dim(2)?, x.dim(3)?))?
        };
        Ok((Some(gx), Some(gw), None))
    }
}

/// Checks that a layout spans its whole (fresh, contiguous) buffer, as the forward value of [`ConvOp`] does,
/// so that cloning the buffer copies exactly the value.
fn whole_buffer(layout: &Layout, op: &'static str) -> candle_core::Result<()> {
    match layout.contiguous_offsets() {
        Some((0, _)) => Ok(()),
        _ => candle_core::bail!("{op}: the forward value must be a contiguous tensor of its own"),
    }
}

/// The kernel gradient `[O, C, k, k]` of a convolution from its dense input `x` `[N, C, H, W]` and output
/// gradient `grad` `[N, O, Ho, Wo]`: the input correlated with the output gradient, batch and channel axes
/// swapped.
pub fn dense_kernel_grad(
    x: &Tensor,
    grad: &Tensor,
    kernel: usize,
    padding: usize,
    stride: usize,
) -> candle_core::Result<Tensor> {
    let gw = x.transpose(0, 1)?.conv2d(&grad.transpose(0, 1)?, padding, 1, stride, 1)?.transpose(0, 1)?;
    gw.narrow(2, 0, kernel)?.narrow(3, 0, kernel)?.contiguous()
}

/// The full input gradient `[N, C, H, W]` of a convolution with kernel `w` `[O, C, k, k]` from its output
/// gradient `grad`, for an input of `input_hw = (H, W)`: for stride 1 a full correlation with the spatially
/// flipped, transposed kernel, otherwise Candle's transposed convolution.
///
/// A strided convolution leaves up to `stride − 1` rows (columns) at the input's bottom (right) edge that no
/// output position's window starts in, so the input size is not a function of the output size; the rows
/// a transposed convolution would drop are restored by its output padding. Candle takes one output padding
/// for both axes, so the larger of the two is used and the result cut to `H × W`.
pub fn dense_input_grad(
    w: &Tensor,
    grad: &Tensor,
    padding: usize,
    stride: usize,
    input_hw: (usize, usize),
) -> candle_core::Result<Tensor> {
    let (_, _, kh, kw) = w.dims4()?;
    let (height, width) = input_hw;
    if stride == 1 && padding < kh && kh == kw {
        let rev: Vec<u32> = (0..kh as u32).rev().collect();
        let rev = Tensor::new(rev.as_slice(), w.device())?;
        let flipped = w.transpose(0, 1)?.contiguous()?.index_select(&rev, 2)?.index_select(&rev, 3)?;
        grad.conv2d(&flipped, kh - 1 - padding, 1, 1, 1)
    } else {
        let (_, _, gh, gw) = grad.dims4()?;
        // Input rows (columns) reached by the transposed convolution without output padding.
        let reached = |g: usize| ((g.max(1) - 1) * stride + kh).checked_sub(2 * padding);
        let missing = |g: usize, len: usize| reached(g).and_then(|r| len.checked_sub(r));
        let (Some(extra_h), Some(extra_w)) = (missing(gh, height), missing(gw, width)) else {
            candle_core::bail!(
                "input gradient: an output of {gh}×{gw} cannot come from a {height}×{width} input with kernel \
                 {kh}, padding {padding}, stride {stride}"
            );
        };
        let full = grad.conv_transpose2d(w, padding, extra_h.max(extra_w), stride, 1)?;
        full.narrow(2, 0, height)?.narrow(3, 0, width)?.contiguous()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The custom backward must agree with Candle's own conv2d backward.
    #[test]
    fn gradients_match_candle_for_strides_and_paddings() -> Result<()> {
        let dev = Device::Cpu;
        // Dense real-valued inputs (Candle's convolutions) and sparse ±1 spikes (the event-driven path).
        let dense = |i: usize| ((i * 37 % 17) as f64 - 8.0) / 7.0;
        let spikes = |i: usize| match i * 37 % 23 {
            0 | 1 => 1.0,
            2 => -1.0,
            _ => 0.0,
        };
        let cases = [(3, 1, 1), (5, 2, 1), (3, 1, 2), (1, 0, 2), (1, 0, 1)];
        for (is_spikes, (k, pad, stride)) in cases.iter().flat_map(|&c| [(false, c), (true, c)]) {
            let xv: Vec<f64> = (0..2 * 3 * 8 * 8).map(|i| if is_spikes { spikes(i) } else { dense(i) }).collect();
            let wv: Vec<f64> = (0..4 * 3 * k * k).map(|i| ((i * 11 % 13) as f64 - 6.0) / 5.0).collect();
            let x = Var::from_vec(xv, (2, 3, 8, 8), &dev)?;
            let w = Var::from_vec(wv, (4, 3, k, k), &dev)?;
            let probe = |y: &Tensor| -> candle_core::Result<Tensor> {
                let p: Vec<f64> = (0..y.elem_count()).map(|i| ((i * 7 % 5) as f64) - 2.0).collect();
                (y * Tensor::from_vec(p, y.shape(), &dev)?)?.sum_all()
            };
            let ours = conv2d_frames(x.as_tensor(), w.as_tensor(), pad, stride, InputGrad::Full)?;
            let reference = x.as_tensor().conv2d(w.as_tensor(), pad, stride, 1, 1)?;
            let diff = (&ours - &reference)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
            assert!(diff < 1e-12, "forward k{k} p{pad} s{stride}: {diff}");
            let g1 = probe(&ours)?.backward()?;
            let g2 = probe(&reference)?.backward()?;
            for v in [&x, &w] {
                let d = (g1.get(v).unwrap() - g2.get(v).unwrap())?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
                assert!(d < 1e-10, "gradient k{k} p{pad} s{stride}: {d}");
            }
            // At spikes: the full gradient where the input spikes, zero elsewhere; the kernel gradient unchanged.
            let at_spikes = conv2d_frames(x.as_tensor(), w.as_tensor(), pad, stride, InputGrad::AtSpikes)?;
            let g4 = probe(&at_spikes)?.backward()?;
            let full = g2.get(&x).unwrap().flatten_all()?.to_vec1::<f64>()?;
            let partial = g4.get(&x).unwrap().flatten_all()?.to_vec1::<f64>()?;
            for ((f, p), xi) in full.iter().zip(&partial).zip(x.as_tensor().flatten_all()?.to_vec1::<f64>()?) {
                // Dense inputs take the full gradient; sparse spikes keep it at their events only.
                let expected = if is_spikes && xi == 0.0 { 0.0 } else { *f };
                assert!((p - expected).abs() < 1e-10, "input gradient at spikes k{k} p{pad} s{stride}");
            }
            let dw = (g4.get(&w).unwrap() - g2.get(&w).unwrap())?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
            assert!(dw < 1e-10);
            let no_input = conv2d_frames(x.as_tensor(), w.as_tensor(), pad, stride, InputGrad::None)?;
            let g3 = probe(&no_input)?.backward()?;
            assert!(g3.get(&x).is_none());
            assert!(g3.get(&w).is_some());
        }
        Ok(())
    }
}
