//! The window-part average pooling and its gradient, and identity subsampling, against the definitions, in
//! plain f64 loops.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use snn_core::events::{DenseFrames, SpikeFrames};
use snn_core::pool::{average_pool_frames, average_pool_grad, subsample_frames, subsample_grad};
use snn_core::MaskView;

/// `y[f, c, i, j] = (1/k²) Σ_{a,b < k} x[f, c, k·i + a, k·j + b]` over whole windows only.
fn pool_reference(x: &[f64], [n, c, h, w]: [usize; 4], k: usize) -> Vec<f64> {
    let (oh, ow) = (h / k, w / k);
    let mut y = vec![0.0; n * c * oh * ow];
    for f in 0..n {
        for ch in 0..c {
            for i in 0..oh {
                for j in 0..ow {
                    let mut sum = 0.0;
                    for a in 0..k {
                        for b in 0..k {
                            sum += x[((f * c + ch) * h + k * i + a) * w + k * j + b];
                        }
                    }
                    y[((f * c + ch) * oh + i) * ow + j] = sum / (k * k) as f64;
                }
            }
        }
    }
    y
}

#[test]
fn pooling_of_spike_and_dense_frames_matches_the_definition() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    // Heights and widths that leave rows and columns outside the last whole window.
    for (n, c, h, w, k) in [(4, 3, 8, 8, 2), (3, 2, 9, 11, 2), (2, 5, 10, 7, 3), (2, 1, 4, 4, 4)] {
        let (batch, len) = (2, c * h * w);
        let bytes: Vec<u8> = (0..n * len).map(|_| u8::from(rng.gen_bool(0.4))).collect();
        let mask: Vec<f64> = (0..batch * len).map(|_| if rng.gen_bool(0.3) { 0.0 } else { 1.25 }).collect();
        let out_len = n * c * (h / k) * (w / k);
        let flags: Vec<u8> = mask.iter().map(|&m| u8::from(m != 0.0)).collect();
        for view in [None, Some(MaskView::Values(&mask)), Some(MaskView::Keep { flags: &flags, value: 1.25 })] {
            let with_mask = view.is_some();
            let x = SpikeFrames { spikes: &bytes, frame_len: len, batch, mask: view };
            let values: Vec<f64> = (0..n * len)
                .map(|i| {
                    let m = if with_mask { mask[(i / len % batch) * len + i % len] } else { 1.0 };
                    f64::from(bytes[i]) * m
                })
                .collect();
            let mut got = vec![0.0; out_len];
            average_pool_frames(&x, &[c, h, w], k, &mut got);
            let want = pool_reference(&values, [n, c, h, w], k);
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(err < 1e-12, "spikes {:?}, mask {with_mask}: {err}", (n, c, h, w, k));
        }
        let dense: Vec<f64> =
            (0..n * len).map(|_| if rng.gen_bool(0.5) { rng.gen_range(-1.0..1.0) } else { 0.0 }).collect();
        let mut got = vec![0.0; out_len];
        average_pool_frames(&DenseFrames { data: &dense, frame_len: len }, &[c, h, w], k, &mut got);
        let want = pool_reference(&dense, [n, c, h, w], k);
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(err < 1e-12, "dense {:?}: {err}", (n, c, h, w, k));
        assert!(want.iter().any(|&v| v != 0.0));
    }
}

#[test]
fn the_pooling_gradient_is_the_transpose_of_pooling() {
    // <pool(x), d> = <x, pool_grad(d)> for every x and d: check it on every unit input, which also pins the
    // positions outside whole windows to zero gradient.
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for (n, c, h, w, k) in [(2, 3, 8, 8, 2), (2, 2, 9, 11, 2), (1, 2, 10, 7, 3)] {
        let (oh, ow) = (h / k, w / k);
        let delta: Vec<f64> = (0..n * c * oh * ow).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let start: Vec<f64> = (0..n * c * h * w).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut into = start.clone();
        average_pool_grad(&[c, h, w], k, &delta, &mut into);
        for i in 0..n * c * h * w {
            let mut unit = vec![0.0; n * c * h * w];
            unit[i] = 1.0;
            let pooled = pool_reference(&unit, [n, c, h, w], k);
            let expected: f64 = pooled.iter().zip(&delta).map(|(p, d)| p * d).sum();
            assert!((into[i] - start[i] - expected).abs() < 1e-12, "{:?} at {i}", (n, c, h, w, k));
        }
    }
}

#[test]
fn subsampling_adds_every_strided_input_and_its_gradient_goes_back_there() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let shapes: [(usize, usize, usize, usize, usize); 4] =
        [(3, 2, 8, 8, 2), (2, 3, 9, 7, 2), (2, 2, 7, 10, 3), (1, 2, 5, 5, 1)];
    for (n, c, h, w, s) in shapes {
        let (oh, ow) = (h.div_ceil(s), w.div_ceil(s));
        let x: Vec<f64> =
            (0..n * c * h * w).map(|_| if rng.gen_bool(0.3) { rng.gen_range(-2.0..2.0) } else { 0.0 }).collect();
        let base: Vec<f64> = (0..n * c * oh * ow).map(|_| rng.gen_range(-1.0..1.0)).collect();
        // y = base + x[c, s·i, s·j]
        let mut expected = base.clone();
        for f in 0..n {
            for ch in 0..c {
                for i in 0..oh {
                    for j in 0..ow {
                        expected[((f * c + ch) * oh + i) * ow + j] += x[((f * c + ch) * h + s * i) * w + s * j];
                    }
                }
            }
        }
        let mut got = base.clone();
        subsample_frames(&DenseFrames { data: &x, frame_len: c * h * w }, &[c, h, w], s, &[c, oh, ow], &mut got)
            .unwrap();
        assert_eq!(got, expected, "{n}×{c}×{h}×{w} by {s}");
        // The gradient: the transpose, so <subsample(x), d> = <x, grad(d)>.
        let delta: Vec<f64> = (0..base.len()).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut grad = vec![0.0; x.len()];
        subsample_grad(&[c, h, w], s, &[c, oh, ow], &delta, &mut grad);
        let mut pooled = vec![0.0; base.len()];
        subsample_frames(&DenseFrames { data: &x, frame_len: c * h * w }, &[c, h, w], s, &[c, oh, ow], &mut pooled)
            .unwrap();
        let lhs: f64 = pooled.iter().zip(&delta).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.iter().zip(&grad).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-12, "{lhs} vs {rhs}");
        // A shape that does not fit is an error.
        assert!(subsample_frames(
            &DenseFrames { data: &x, frame_len: c * h * w },
            &[c, h, w],
            s,
            &[c, oh + 1, ow],
            &mut got
        )
        .is_err());
    }
}
