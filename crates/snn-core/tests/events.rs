//! The event-driven synaptic layers and the differentiable convolution against plain f64 loops.

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use snn_core::events::{
    conv2d_events, conv2d_weight_grad_events, conv_events, linear_events, transpose, ConvGeometry, DenseFrames,
    EventFrames, SpikeFrames, CHANNEL_BLOCK,
};
use snn_core::MaskView;

/// Spike-like values: 0 mostly, else +1 or -1.
fn spikes(n: usize, density: f64, rng: &mut ChaCha8Rng) -> Vec<f64> {
    (0..n)
        .map(|_| {
            if rng.gen_bool(density) {
                if rng.gen_bool(0.5) {
                    1.0
                } else {
                    -1.0
                }
            } else {
                0.0
            }
        })
        .collect()
}

/// Calls `f(output, input, weight)` with the flat indices of every (output position, kernel tap) pair of a
/// zero-padded, strided 2-D cross-correlation of `x` `[n, c, h, wd]` with `w` `[o, c, k, k]` that reads an input
/// inside the frame: the definition every reference below is written from.
#[allow(clippy::too_many_arguments)]
fn for_each_tap(
    [n, c, h, wd]: [usize; 4],
    o: usize,
    k: usize,
    p: usize,
    s: usize,
    mut f: impl FnMut(usize, usize, usize),
) -> usize {
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (wd + 2 * p - k) / s + 1);
    for b in 0..n {
        for oc in 0..o {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ic in 0..c {
                        for ky in 0..k {
                            for kx in 0..k {
                                let (y, xx) =
                                    ((oy * s + ky) as isize - p as isize, (ox * s + kx) as isize - p as isize);
                                if y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < wd {
                                    f(
                                        ((b * o + oc) * oh + oy) * ow + ox,
                                        ((b * c + ic) * h + y as usize) * wd + xx as usize,
                                        ((oc * c + ic) * k + ky) * k + kx,
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    n * o * oh * ow
}

/// Direct definition of a zero-padded, strided 2-D cross-correlation.
#[allow(clippy::too_many_arguments)]
fn reference_conv(x: &[f64], w: &[f64], dims: [usize; 4], o: usize, k: usize, p: usize, s: usize) -> Vec<f64> {
    let mut taps = Vec::new();
    let len = for_each_tap(dims, o, k, p, s, |yi, xi, wi| taps.push((yi, xi, wi)));
    let mut out = vec![0.0; len];
    taps.into_iter().for_each(|(yi, xi, wi)| out[yi] += x[xi] * w[wi]);
    out
}

/// Masked spike frames (a layer's spikes read with its dropout mask), through both forward passes of the
/// event-driven convolution: the gathering one (a wide layer) and the scattering one (a narrow layer),
/// against the definition on the masked values.
#[test]
fn masked_spikes_convolve_as_their_masked_values() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let (steps, batch, k, p) = (2, 2, 3, 1);
    for (c, h, o) in [(40, 16, 70), (6, 9, 5)] {
        let len = c * h * h;
        let bytes: Vec<u8> = (0..steps * batch * len).map(|_| u8::from(rng.gen_bool(0.2))).collect();
        let mask: Vec<f64> = (0..batch * len).map(|_| if rng.gen_bool(0.25) { 0.0 } else { 4.0 / 3.0 }).collect();
        let w: Vec<f64> = (0..o * c * k * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let masked: Vec<f64> =
            bytes.iter().enumerate().map(|(i, &b)| f64::from(b) * mask[(i / len % batch) * len + i % len]).collect();
        let frames = steps * batch;
        let expected = reference_conv(&masked, &w, [frames, c, h, h], o, k, p, 1);
        let g = ConvGeometry::new([c, h, h], o, k, p, 1).unwrap();
        // The mask as multipliers and as keep flags (any non-zero byte keeps) with one value.
        let flags: Vec<u8> = mask.iter().map(|&m| if m != 0.0 { 1 + (m.to_bits() % 5) as u8 } else { 0 }).collect();
        let keep = MaskView::Keep { flags: &flags, value: 4.0 / 3.0 };
        let mut outputs = Vec::new();
        for mask in [MaskView::Values(&mask), keep] {
            let x = SpikeFrames { spikes: &bytes, frame_len: len, batch, mask: Some(mask) };
            let mut got = vec![f64::NAN; frames * g.frame_out()];
            conv_events(&x, &transpose(&w, o, c * k * k), g, &mut got);
            assert!(max_abs_diff(&got, &expected) < 1e-12, "{:?}", (c, h, o));
            outputs.push(got);
        }
        assert_eq!(outputs[0], outputs[1], "both forms of the mask give the same bits");
    }
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn event_convolution_matches_the_definition_for_every_geometry() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let dev = Device::Cpu;
    // The last four are layers of VGG size (many outputs over wide frames), with padding, without, and with a
    // stride.
    for (c, h, o, k, p, s) in [
        (3, 9, 4, 3, 1, 1),
        (2, 8, 5, 3, 1, 2),
        (4, 7, 3, 1, 0, 2),
        (1, 12, 6, 5, 2, 1),
        (2, 6, 2, 5, 0, 1),
        (3, 34, 40, 3, 1, 1),
        (3, 33, 64, 3, 1, 2),
        (2, 30, 48, 5, 0, 1),
        (2, 41, 20, 3, 1, 1),
        // More input channels than one block of the forward pass visits together, with a partial last block.
        (11, 9, 16, 3, 1, 1),
        (10, 8, 7, 3, 1, 2),
        // Wide enough for the gathering forward pass: one and two words of its bitmap per position, two
        // register blocks of 64 outputs and a remainder.
        (40, 16, 130, 3, 1, 1),
        (70, 16, 130, 3, 1, 1),
    ] {
        let n = 3;
        let x = spikes(n * c * h * h, 0.2, &mut rng);
        let w: Vec<f64> = (0..o * c * k * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let expected = reference_conv(&x, &w, [n, c, h, h], o, k, p, s);
        let xt = Tensor::from_vec(x, (n, c, h, h), &dev).unwrap();
        let wt = Tensor::from_vec(w, (o, c, k, k), &dev).unwrap();
        let got = conv2d_events(&xt, &wt, p, s).unwrap();
        let oh = (h + 2 * p - k) / s + 1;
        assert_eq!(got.dims(), &[n, o, oh, oh]);
        let got = got.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert!(max_abs_diff(&got, &expected) < 1e-12, "geometry {:?}", (c, h, o, k, p, s));
        // f32 agrees with Candle's dense convolution up to rounding.
        let (x32, w32) = (xt.to_dtype(DType::F32).unwrap(), wt.to_dtype(DType::F32).unwrap());
        let dense = x32.conv2d(&w32, p, s, 1, 1).unwrap().flatten_all().unwrap().to_dtype(DType::F64).unwrap();
        let events = conv2d_events(&x32, &w32, p, s).unwrap().flatten_all().unwrap().to_dtype(DType::F64).unwrap();
        let (dense, events) = (dense.to_vec1::<f64>().unwrap(), events.to_vec1::<f64>().unwrap());
        // Rounding grows with the terms of each sum (the inputs under the kernel).
        let fan_in = (c * k * k) as f64;
        assert!(max_abs_diff(&dense, &events) < 1e-5 * (fan_in / 50.0).max(1.0), "f32, geometry {:?}", (c, h, o));
    }
}

#[test]
fn event_product_matches_the_definition() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (n, inputs, outputs) = (5, 40, 7);
    let x = spikes(n * inputs, 0.1, &mut rng);
    let w: Vec<f64> = (0..outputs * inputs).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let mut expected = vec![0.0; n * outputs];
    for b in 0..n {
        for o in 0..outputs {
            expected[b * outputs + o] = (0..inputs).map(|i| x[b * inputs + i] * w[o * inputs + i]).sum();
        }
    }
    let xt = Tensor::from_vec(x, (n, inputs), &Device::Cpu).unwrap();
    let wt = Tensor::from_vec(w, (outputs, inputs), &Device::Cpu).unwrap();
    let got = linear_events(&xt, &wt).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    assert!(max_abs_diff(&got, &expected) < 1e-12);
    assert!(linear_events(&xt, &wt.t().unwrap()).is_err(), "mismatched shapes are an error");
}

#[test]
fn event_gradients_are_the_same_bits_with_one_or_two_threads() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    // Layers with few input channels take their kernel gradient split by frames as well (at every thread
    // count), wider ones by blocks of input channels that depend on the thread count: neither split may
    // change a bit between thread counts.
    for (c, o) in [(3, 6), (3, 64), (1, 48), (2, 33), (12, 8)] {
        let (n, h, k) = (40, 10, 3);
        let x = Tensor::from_vec(spikes(n * c * h * h, 0.15, &mut rng), (n, c, h, h), &Device::Cpu).unwrap();
        let grad: Vec<f64> = (0..n * o * h * h).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let grad = Tensor::from_vec(grad, (n, o, h, h), &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
        let x = x.to_dtype(DType::F32).unwrap();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| conv2d_weight_grad_events(&x, &grad, k, 1, 1).unwrap())
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let one = run(1);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for threads in [2, 2, 3, 8] {
            assert_eq!(bits(&run(threads)), bits(&one), "{c} → {o} channels, {threads} threads");
        }
    }
}

/// The density limit is a share of non-zero entries: dropout-scaled spikes (2.0 at p = 0.5) on 40 % of the
/// entries are within it, small non-zero values on 60 % are not.
#[test]
fn the_density_measure_is_the_share_of_non_zero_entries() {
    use snn_core::events::{sparse_enough, within_density_limit, EVENT_DENSITY_LIMIT};
    let window = |value: f64, share: usize| {
        let v: Vec<f64> = (0..1000).map(|i| if i % 10 < share { value } else { 0.0 }).collect();
        Tensor::from_vec(v, (10, 100), &Device::Cpu).unwrap()
    };
    assert!(sparse_enough(&window(2.0, 4)).unwrap(), "40 % non-zero, magnitude 0.8 per entry");
    assert!(!sparse_enough(&window(0.25, 6)).unwrap(), "60 % non-zero, magnitude 0.15 per entry");
    assert!(sparse_enough(&window(-1.0, 5)).unwrap(), "exactly at the limit");
    assert!(!sparse_enough(&window(1.0, 6).to_dtype(DType::F32).unwrap()).unwrap());
    assert_eq!(EVENT_DENSITY_LIMIT, 0.5);
    assert!(within_density_limit(50, 100) && !within_density_limit(51, 100));
}

/// Gradients of `L = Σ probe · conv(x, w)` by the definition: `∂L/∂x` and `∂L/∂w`.
#[allow(clippy::too_many_arguments)]
fn reference_conv_grads(
    x: &[f64],
    w: &[f64],
    probe: &[f64],
    dims: [usize; 4],
    o: usize,
    k: usize,
    p: usize,
    s: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (mut gx, mut gw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
    for_each_tap(dims, o, k, p, s, |yi, xi, wi| {
        gx[xi] += probe[yi] * w[wi];
        gw[wi] += probe[yi] * x[xi];
    });
    (gx, gw)
}

/// The differentiable convolution on non-square inputs (taller and wider, strides that leave uncovered rows
/// or columns at the edge), dense and sparse input, against the definition: forward value and both
/// gradients in f64.
#[test]
fn the_convolution_and_its_gradients_are_right_on_non_square_inputs() {
    use candle_core::Var;
    use snn_core::conv::{conv2d_frames, InputGrad};
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let dev = Device::Cpu;
    for (h, wd, k, p, s) in
        [(8, 9, 3, 1, 2), (9, 8, 3, 1, 2), (7, 10, 3, 0, 2), (10, 7, 5, 2, 3), (6, 11, 1, 0, 2), (5, 9, 3, 1, 1)]
    {
        for density in [0.15, 0.9] {
            let (n, c, o) = (2, 3, 4);
            let x = spikes(n * c * h * wd, density, &mut rng);
            let w: Vec<f64> = (0..o * c * k * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let expected = reference_conv(&x, &w, [n, c, h, wd], o, k, p, s);
            let probe: Vec<f64> = (0..expected.len()).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let (gx, gw) = reference_conv_grads(&x, &w, &probe, [n, c, h, wd], o, k, p, s);
            let xv = Var::from_vec(x, (n, c, h, wd), &dev).unwrap();
            let wv = Var::from_vec(w, (o, c, k, k), &dev).unwrap();
            let y = conv2d_frames(xv.as_tensor(), wv.as_tensor(), p, s, InputGrad::Full).unwrap();
            let case = format!("{h}×{wd} k{k} p{p} s{s} density {density}");
            let got = y.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            assert!(max_abs_diff(&got, &expected) < 1e-12, "forward {case}");
            let probe = Tensor::from_vec(probe, y.shape(), &dev).unwrap();
            let grads = (y * probe).unwrap().sum_all().unwrap().backward().unwrap();
            let got_x = grads.get(xv.as_tensor()).unwrap();
            assert_eq!(got_x.dims(), [n, c, h, wd], "input gradient shape {case}");
            let got_x = got_x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            assert!(max_abs_diff(&got_x, &gx) < 1e-10, "input gradient {case}");
            let got_w = grads.get(wv.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            assert!(max_abs_diff(&got_w, &gw) < 1e-10, "kernel gradient {case}");
        }
    }
}

#[test]
fn spike_frames_count_the_events_they_visit() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let (frames, batch, len) = (12, 4, 37);
    let bytes: Vec<u8> = (0..frames * len).map(|_| u8::from(rng.gen_bool(0.3))).collect();
    // Dropout-like: a third of the entries dropped (0), the rest scaled.
    let mask: Vec<f32> = (0..batch * len).map(|_| if rng.gen_bool(1.0 / 3.0) { 0.0 } else { 1.5 }).collect();
    let flags: Vec<u8> = mask.iter().map(|&m| u8::from(m != 0.0)).collect();
    let views = [None, Some(MaskView::Values(&mask)), Some(MaskView::Keep { flags: &flags, value: 1.5 })];
    for view in views {
        let x = SpikeFrames { spikes: &bytes, frame_len: len, batch, mask: view };
        let mut visited = 0;
        let mut values = Vec::new();
        for f in 0..frames {
            x.for_each_event(f, |_, v| {
                visited += 1;
                values.push(v);
            });
        }
        // Independent count: a spike whose sample's mask keeps it.
        let kept = |i: usize| view.is_none() || mask[(i / len % batch) * len + i % len] != 0.0;
        let expected = (0..frames * len).filter(|&i| bytes[i] != 0 && kept(i)).count();
        assert_eq!((x.nonzero(), visited), (expected, expected), "mask given: {}", view.is_some());
        let value = if view.is_some() { 1.5 } else { 1.0 };
        assert!(values.iter().all(|&v| v == value));
        assert!(expected > 0);
    }
}

#[test]
fn transposes_match_the_definition_at_every_shape() {
    // Shapes below, at and above the tile (16) and the parallel band (64), square and not, powers of two.
    // In f32 as well, which takes 8 × 8 blocks of vector shuffles where the CPU has AVX2.
    for (rows, cols) in [(1, 1), (3, 7), (8, 8), (16, 16), (17, 33), (64, 200), (130, 65), (256, 128), (5, 0)] {
        let src: Vec<f64> = (0..rows * cols).map(|i| i as f64).collect();
        let got = transpose(&src, rows, cols);
        let src32: Vec<f32> = src.iter().map(|&v| v as f32).collect();
        let got32 = transpose(&src32, rows, cols);
        assert_eq!((got.len(), got32.len()), (rows * cols, rows * cols));
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(got[c * rows + r], src[r * cols + c], "{rows}x{cols} at ({r}, {c})");
                assert_eq!(got32[c * rows + r], src32[r * cols + c], "f32 {rows}x{cols} at ({r}, {c})");
            }
        }
    }
}

#[test]
fn events_by_position_come_position_by_position_with_their_values() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    // Planes of 13 positions (a partial last group of eight), 11 channels, 6 frames of 3 samples.
    let (frames, batch, channels, plane) = (6, 3, 11, 13);
    let len = channels * plane;
    // Any non-zero byte is a spike, whatever its bits.
    let bytes: Vec<u8> =
        (0..frames * len).map(|_| if rng.gen_bool(0.3) { [1, 2, 128, 255][rng.gen_range(0..4)] } else { 0 }).collect();
    let mask: Vec<f32> = (0..batch * len).map(|_| if rng.gen_bool(0.25) { 0.0 } else { 2.0 }).collect();
    let flags: Vec<u8> = mask.iter().map(|&m| if m != 0.0 { [1, 3, 255][rng.gen_range(0..3)] } else { 0 }).collect();
    let views = [None, Some(MaskView::Values(&mask)), Some(MaskView::Keep { flags: &flags, value: 2.0 })];
    let dense: Vec<f32> =
        (0..frames * len).map(|_| if rng.gen_bool(0.3) { rng.gen_range(-1.0..1.0) } else { 0.0 }).collect();
    let blocks = [0..CHANNEL_BLOCK, CHANNEL_BLOCK..channels, 3..4, 2..9];
    // The expected visits, from the raw arrays: positions in order, then channels in order.
    let expected = |f: usize, block: &std::ops::Range<usize>, value: &dyn Fn(usize) -> f32| {
        let mut v = Vec::new();
        for p in 0..plane {
            for c in block.clone() {
                let x = value(f * len + c * plane + p);
                if x != 0.0 {
                    v.push((p, c, x));
                }
            }
        }
        v
    };
    let mut seen = 0;
    for f in 0..frames {
        for block in &blocks {
            for view in views {
                let with_mask = view.is_some();
                let x = SpikeFrames { spikes: &bytes, frame_len: len, batch, mask: view };
                let mut got = Vec::new();
                x.for_each_event_by_position(f, block.clone(), plane, |p, c, v| got.push((p, c, v)));
                let want = expected(f, block, &|i| {
                    let m = if with_mask { mask[(i / len % batch) * len + i % len] } else { 1.0 };
                    if bytes[i] != 0 {
                        m
                    } else {
                        0.0
                    }
                });
                assert_eq!(got, want, "spikes, frame {f}, channels {block:?}, mask {with_mask}");
                seen += got.len();
            }
            let x = DenseFrames { data: &dense, frame_len: len };
            let mut got = Vec::new();
            x.for_each_event_by_position(f, block.clone(), plane, |p, c, v| got.push((p, c, v)));
            assert_eq!(got, expected(f, block, &|i| dense[i]), "dense, frame {f}, channels {block:?}");
            seen += got.len();
        }
    }
    assert!(seen > 500, "the frames have events to visit ({seen})");
}

/// Both gradients of one pass over a layer's events (`conv_grads_events`, as the training pass runs them) on
/// masked spike frames, against the definition in f64: the kernel gradient everywhere, the input gradient
/// added at the kept spikes and nowhere else; paddings 0, 1 and 2, 3 × 3 and 5 × 5 kernels, strides 1 and 2,
/// output counts that leave a remainder at every vector width, non-square frames, wide and narrow layers.
#[test]
fn fused_event_gradients_match_the_definition() {
    use snn_core::events::{channel_last_into, conv_grads_events};
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let (steps, batch) = (2, 2);
    for (c, h, w, o, k, p, s) in [
        (40, 9, 11, 64, 3, 1, 1),
        (33, 8, 7, 71, 3, 0, 1),
        (36, 6, 9, 40, 3, 2, 1),
        (6, 9, 8, 5, 3, 1, 1),
        (34, 7, 7, 33, 5, 2, 1),
        (5, 10, 9, 20, 3, 1, 2),
    ] {
        let (len, frames) = (c * h * w, steps * batch);
        let g = ConvGeometry::new([c, h, w], o, k, p, s).unwrap();
        let bytes: Vec<u8> = (0..frames * len).map(|_| u8::from(rng.gen_bool(0.2))).collect();
        let flags: Vec<u8> = (0..batch * len).map(|_| u8::from(rng.gen_bool(0.8))).collect();
        let mask = Some(MaskView::Keep { flags: &flags, value: 1.25 });
        let x = SpikeFrames { spikes: &bytes, frame_len: len, batch, mask };
        let kept = |i: usize| bytes[i] != 0 && flags[(i / len % batch) * len + i % len] != 0;
        let values: Vec<f64> = (0..frames * len).map(|i| if kept(i) { 1.25 } else { 0.0 }).collect();
        let weights: Vec<f64> = (0..o * c * k * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let probe: Vec<f64> = (0..frames * g.frame_out()).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let (gx, gw) = reference_conv_grads(&values, &weights, &probe, [frames, c, h, w], o, k, p, s);
        let mut rows = vec![0.0; probe.len()];
        channel_last_into(&probe, g, &mut rows);
        let kernel_rows = transpose(&weights, o, c * k * k);
        let start: Vec<f64> = (0..frames * len).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let (mut acc, mut input_grad) = (vec![0.0; kernel_rows.len()], start.clone());
        conv_grads_events(&x, &rows, g, &mut acc, Some((&kernel_rows, &mut input_grad)));
        let case = format!("{:?}", (c, h, w, o, k, p, s));
        // The accumulator is `[C, k, k, O]`, the definition's gradient `[O, C, k, k]`.
        let fan_in = c * k * k;
        let err = (0..acc.len()).map(|i| (acc[i] - gw[(i % o) * fan_in + i / o]).abs()).fold(0.0, f64::max);
        assert!(err < 1e-10, "kernel gradient {case}: {err}");
        for i in 0..start.len() {
            let want = if kept(i) { start[i] + gx[i] } else { start[i] };
            assert!((input_grad[i] - want).abs() < 1e-10, "input gradient {case} at {i}");
        }
        // The kernel gradient alone is the same.
        let mut alone = vec![0.0; kernel_rows.len()];
        conv_grads_events(&x, &rows, g, &mut alone, None);
        assert_eq!(alone, acc, "{case}");
        assert!(gw.iter().any(|&v| v != 0.0) && (0..start.len()).any(kept));
    }
}
