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
/// `[N, C, H/k, W/k]` (overwritten); frames in parallel.
pub fn average_pool_frames<F: Real, X: EventFrames<F>>(x: &X, shape: &[usize], k: usize, out: &mut [F]) {
    let (c, h, w) = (shape[0], shape[1], shape[2]);
    let (oh, ow) = (h / k, w / k);
    out.par_chunks_mut(c * oh * ow).enumerate().for_each_init(
        // One input frame written out densely, and room for its column-pair sums.
        || vec![F::zero(); c * h * w + c * h * ow],
        |frame, (f, dst)| dispatch!(pool_frame_avx2, pool_frame_avx512, pool_frame(x, f, [c, h, w], k, frame, dst)),
    );
}

wide_variants!(fn pool_frame_avx2, pool_frame_avx512 = pool_frame<F: Real, X: EventFrames<F>>(
    x: &X, f: usize, shape: [usize; 3], k: usize, scratch: &mut [F], dst: &mut [F]
));

/// Frame `f` of [`average_pool_frames`]: the frame is written out densely (zeros included) into the front
/// of `scratch`. The common 2 × 2 window over planes of even height and width sums each row's column pairs
/// over the whole frame in one pass, then adds the two rows of pair sums of each window and scales:
/// `y = ((x00 + x01) + (x10 + x11)) / 4`. Other windows add their values row by row, column by column,
/// each scaled.
#[inline(always)]
fn pool_frame<F: Real, X: EventFrames<F>>(
    x: &X,
    f: usize,
    [c, h, w]: [usize; 3],
    k: usize,
    scratch: &mut [F],
    dst: &mut [F],
) {
    let (oh, ow) = (h / k, w / k);
    if oh * ow == 0 {
        return;
    }
    let (frame, pairs) = scratch.split_at_mut(c * h * w);
    x.values_into(f, 0..c * h * w, frame);
    let scale = F::lit(1.0 / (k * k) as f64);
    if k == 2 && h % 2 == 0 && w % 2 == 0 {
        for (p, cells) in pairs.iter_mut().zip(frame.chunks_exact(2)) {
            *p = cells[0] + cells[1];
        }
        // Row pair `R` of the frame (rows 2R and 2R + 1 of one plane) gives output row `R`.
        for (out_row, rows) in dst.chunks_exact_mut(ow).zip(pairs.chunks_exact(2 * ow)) {
            let (upper, lower) = rows.split_at(ow);
            for ((o, &a), &b) in out_row.iter_mut().zip(upper).zip(lower) {
                *o = (a + b) * scale;
            }
        }
        return;
    }
    dst.fill(F::zero());
    for (plane, out) in frame.chunks_exact(h * w).zip(dst.chunks_exact_mut(oh * ow)) {
        for (rows, out_row) in plane.chunks_exact(k * w).zip(out.chunks_exact_mut(ow)) {
            for row in rows.chunks_exact(w) {
                // The 2 × 2 window with its width known, so the column pairs vectorise.
                match k {
                    2 => add_windows::<F, 2>(out_row, row, scale),
                    _ => (0..k).for_each(|b| {
                        out_row.iter_mut().zip(row.chunks_exact(k)).for_each(|(o, cells)| *o += cells[b] * scale)
                    }),
                }
            }
        }
    }
}

/// Adds column `b` of each window of `K` columns in `row`, scaled, to its output, for `b = 0, 1, …, K − 1`.
#[inline(always)]
fn add_windows<F: Real, const K: usize>(out_row: &mut [F], row: &[F], scale: F) {
    for b in 0..K {
        for (o, cells) in out_row.iter_mut().zip(row.chunks_exact(K)) {
            *o += cells[b] * scale;
        }
    }
}

/// Gradient of [`average_pool_frames`]: every input position of a window receives `1/k²` of the window's gradient;
/// frames in parallel.
pub fn average_pool_grad<F: Real>(shape: &[usize], k: usize, delta: &[F], into: &mut [F]) {
    let (c, h, w) = (shape[0], shape[1], shape[2]);
    let (oh, ow) = (h / k, w / k);
    into.par_chunks_mut(c * h * w).zip(delta.par_chunks(c * oh * ow)).for_each(|(dst, d)| {
        dispatch!(pool_grad_frame_avx2, pool_grad_frame_avx512, pool_grad_frame(dst, d, [h, w], k));
    });
}

wide_variants!(fn pool_grad_frame_avx2, pool_grad_frame_avx512 = pool_grad_frame<F: Real>(
    dst: &mut [F], delta: &[F], plane: [usize; 2], k: usize
));

/// One frame of [`average_pool_grad`]: each output row's gradient, spread over its `k` columns and scaled,
/// is added to the `k` input rows of its windows.
#[inline(always)]
fn pool_grad_frame<F: Real>(dst: &mut [F], delta: &[F], [h, w]: [usize; 2], k: usize) {
    let (oh, ow) = (h / k, w / k);
    let scale = F::lit(1.0 / (k * k) as f64);
    let mut spread = vec![F::zero(); ow * k];
    for (plane, d) in dst.chunks_exact_mut(h * w).zip(delta.chunks_exact(oh * ow)) {
        for (rows, d_row) in plane.chunks_exact_mut(k * w).zip(d.chunks_exact(ow)) {
            match k {
                2 => spread_windows::<F, 2>(&mut spread, d_row, scale),
                _ => spread.chunks_exact_mut(k).zip(d_row).for_each(|(cells, &g)| cells.fill(g * scale)),
            }
            for row in rows.chunks_exact_mut(w) {
                row[..ow * k].iter_mut().zip(&spread).for_each(|(cell, &g)| *cell += g);
            }
        }
    }
}

/// Each window's gradient `g`, scaled, into its `K` columns of `spread`.
#[inline(always)]
fn spread_windows<F: Real, const K: usize>(spread: &mut [F], d_row: &[F], scale: F) {
    for (cells, &g) in spread.chunks_exact_mut(K).zip(d_row) {
        cells.fill(g * scale);
    }
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
    // Each kept input row is written out densely and every `stride`-th value added; frames in parallel.
    out.par_chunks_mut(c * oh * ow).enumerate().for_each_init(
        || vec![F::zero(); w],
        |row, (f, dst)| {
            for (r, out_row) in dst.chunks_exact_mut(ow).enumerate() {
                let (ch, i) = (r / oh, r % oh);
                let start = (ch * h + i * stride) * w;
                x.values_into(f, start..start + w, row);
                out_row.iter_mut().zip(row.iter().step_by(stride)).for_each(|(o, &v)| *o += v);
            }
        },
    );
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
