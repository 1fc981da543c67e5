//! Average pooling and identity subsampling, the two parameter-free maps between spiking layers, for both
//! training passes: on tensors (differentiable, any device) and on the frames of a window part (the taped
//! pass on the CPU, reading input spikes as events).
//!
//! * Average pooling, window = stride = `k`, no padding: `y[c, i, j] = (1/k²) Σ_{a,b < k} x[c, k·i + a, k·j + b]`
//!   for `i < ⌊H/k⌋`, `j < ⌊W/k⌋`; rows and columns past the last whole window are left out.
//! * Identity subsampling by `s` (the parameter-free residual shortcut): `y[c, i, j] = x[c, s·i, s·j]`, an
//!   output of `⌈H/s⌉ × ⌈W/s⌉`.

use candle_core::Tensor;
use rayon::prelude::*;

use crate::events::EventFrames;
use crate::kernels::Real;
use crate::{Error, Result};

/// Average pooling of frames `[N, C, H, W]` (differentiable). Rows and columns past the last whole window
/// are cut off before pooling, because Candle's pooling gradient spreads the output gradient over the whole
/// input by nearest-neighbour upsampling, which misplaces it (and feeds the left-out positions) when `H` or
/// `W` is not a multiple of `k`.
pub fn average_pool(frames: &Tensor, k: usize) -> Result<Tensor> {
    let (_, _, h, w) = frames.dims4()?;
    let (h_used, w_used) = (h / k * k, w / k * k);
    let frames =
        if (h_used, w_used) == (h, w) { frames.clone() } else { frames.narrow(2, 0, h_used)?.narrow(3, 0, w_used)? };
    Ok(frames.avg_pool2d(k)?)
}

/// Identity subsampling of frames `[N, C, H, W]` by `stride` (differentiable).
pub fn subsample(frames: &Tensor, stride: usize) -> Result<Tensor> {
    let (_, _, h, w) = frames.dims4()?;
    let rows: Vec<u32> = (0..h as u32).step_by(stride).collect();
    let cols: Vec<u32> = (0..w as u32).step_by(stride).collect();
    let rows = Tensor::new(rows.as_slice(), frames.device())?;
    let cols = Tensor::new(cols.as_slice(), frames.device())?;
    Ok(frames.contiguous()?.index_select(&rows, 2)?.contiguous()?.index_select(&cols, 3)?)
}

/// Average pooling (window = stride = `k`, no padding) of the part's frames `[N, C, H, W]` into `out`
/// `[N, C, H/k, W/k]`; frames in parallel.
pub fn average_pool_frames<F: Real, X: EventFrames<F>>(x: &X, shape: &[usize], k: usize, out: &mut [F]) {
    let (c, h, w) = (shape[0], shape[1], shape[2]);
    let (oh, ow) = (h / k, w / k);
    let scale = F::lit(1.0 / (k * k) as f64);
    out.par_chunks_mut(c * oh * ow).enumerate().for_each(|(f, dst)| {
        let mut visit = |i: usize, v: F| {
            let (ch, y, xx) = (i / (h * w), (i % (h * w)) / w, i % w);
            if y / k < oh && xx / k < ow {
                dst[(ch * oh + y / k) * ow + xx / k] += v * scale;
            }
        };
        x.for_each_event(f, &mut visit);
    });
}

/// Gradient of [`average_pool_frames`]: every input position of a window receives `1/k²` of the window's gradient;
/// frames in parallel.
pub fn average_pool_grad<F: Real>(shape: &[usize], k: usize, delta: &[F], into: &mut [F]) {
    let (c, h, w) = (shape[0], shape[1], shape[2]);
    let (oh, ow) = (h / k, w / k);
    let scale = F::lit(1.0 / (k * k) as f64);
    into.par_chunks_mut(c * h * w).zip(delta.par_chunks(c * oh * ow)).for_each(|(dst, d)| {
        for (plane, d) in dst.chunks_exact_mut(h * w).zip(d.chunks_exact(oh * ow)) {
            for (rows, d_row) in plane.chunks_exact_mut(k * w).zip(d.chunks_exact(ow)) {
                for row in rows.chunks_exact_mut(w) {
                    for (cells, &g) in row.chunks_exact_mut(k).zip(d_row) {
                        cells.iter_mut().for_each(|cell| *cell += g * scale);
                    }
                }
            }
        }
    });
}

/// Identity subsampling shortcut: output `(c, i, j)` is input `(c, s·i, s·j)`; adds into `out`.
pub fn subsample_frames<F: Real, X: EventFrames<F>>(
    x: &X,
    shape: &[usize],
    stride: usize,
    out_shape: &[usize],
    out: &mut [F],
) -> Result<()> {
    let (c, h, w) = (shape[0], shape[1], shape[2]);
    let (oh, ow) = (out_shape[1], out_shape[2]);
    if out_shape[0] != c || h.div_ceil(stride) != oh || w.div_ceil(stride) != ow {
        return Err(Error::Shape {
            op: "subsampling",
            msg: format!("{shape:?} by {stride} does not give {out_shape:?}"),
        });
    }
    for (f, dst) in out.chunks_exact_mut(c * oh * ow).enumerate() {
        let mut visit = |i: usize, v: F| {
            let (ch, y, xx) = (i / (h * w), (i % (h * w)) / w, i % w);
            if y % stride == 0 && xx % stride == 0 {
                dst[(ch * oh + y / stride) * ow + xx / stride] += v;
            }
        };
        x.for_each_event(f, &mut visit);
    }
    Ok(())
}

/// Gradient of [`subsample_frames`] into its input positions.
pub fn subsample_grad<F: Real>(shape: &[usize], stride: usize, out_shape: &[usize], delta: &[F], into: &mut [F]) {
    let (c, h, w) = (shape[0], shape[1], shape[2]);
    let (oh, ow) = (out_shape[1], out_shape[2]);
    for (d, dst) in delta.chunks_exact(c * oh * ow).zip(into.chunks_exact_mut(c * h * w)) {
        for ch in 0..c {
            for i in 0..oh {
                for j in 0..ow {
                    dst[(ch * h + i * stride) * w + j * stride] += d[(ch * oh + i) * ow + j];
                }
            }
        }
    }
}
