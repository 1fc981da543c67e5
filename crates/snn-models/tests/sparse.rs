//! The event-driven synaptic layers against plain f64 loops and against the dense network path.

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use snn_models::sparse::{conv2d_events, conv2d_weight_grad_events, linear_events};
use snn_models::{builtin, Engine, ForwardOptions, Masks, SpikingNetwork};

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

/// Direct definition of a zero-padded, strided 2-D cross-correlation.
#[allow(clippy::too_many_arguments)]
fn reference_conv(x: &[f64], w: &[f64], [n, c, h, wd]: [usize; 4], o: usize, k: usize, p: usize, s: usize) -> Vec<f64> {
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (wd + 2 * p - k) / s + 1);
    let mut out = vec![0.0; n * o * oh * ow];
    for b in 0..n {
        for oc in 0..o {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0.0;
                    for ic in 0..c {
                        for ky in 0..k {
                            for kx in 0..k {
                                let (y, xx) =
                                    ((oy * s + ky) as isize - p as isize, (ox * s + kx) as isize - p as isize);
                                if y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < wd {
                                    acc += x[((b * c + ic) * h + y as usize) * wd + xx as usize]
                                        * w[((oc * c + ic) * k + ky) * k + kx];
                                }
                            }
                        }
                    }
                    out[((b * o + oc) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    out
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn event_convolution_matches_the_definition_for_every_geometry() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let dev = Device::Cpu;
    for (c, h, o, k, p, s) in
        [(3, 9, 4, 3, 1, 1), (2, 8, 5, 3, 1, 2), (4, 7, 3, 1, 0, 2), (1, 12, 6, 5, 2, 1), (2, 6, 2, 5, 0, 1)]
    {
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
        assert!(max_abs_diff(&dense, &events) < 1e-5);
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

/// Dense and event-driven forward passes of a network in f64 (input spikes of the given density): same spikes in every layer, same readout up to
/// rounding.
fn engines_agree(model: &str, input_shape: [usize; 3], steps: usize, batch: usize, density: f64) {
    let spec = builtin(model).unwrap();
    let net = SpikingNetwork::new(spec, &mut ChaCha8Rng::seed_from_u64(2), DType::F64, &Device::Cpu).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let [c, h, w] = input_shape;
    let x = spikes(steps * batch * c * h * w, density, &mut rng);
    let x = Tensor::from_vec(x, (steps, batch, c, h, w), &Device::Cpu).unwrap();
    let run = |engine| net.forward(&x, &Masks::new(), ForwardOptions { engine, ..ForwardOptions::default() }).unwrap();
    let (dense, sparse) = (run(Engine::Dense), run(Engine::Sparse));
    for (d, s) in dense.activity.iter().zip(&sparse.activity) {
        let (d, s) = (d.neuron_counts.flatten_all().unwrap(), s.neuron_counts.flatten_all().unwrap());
        assert_eq!(d.to_vec1::<f64>().unwrap(), s.to_vec1::<f64>().unwrap(), "{model}: spike counts differ");
    }
    let (d, s) = (dense.output.flatten_all().unwrap(), sparse.output.flatten_all().unwrap());
    assert!(max_abs_diff(&d.to_vec1::<f64>().unwrap(), &s.to_vec1::<f64>().unwrap()) < 1e-9, "{model}");
    assert!(dense.activity.iter().any(|a| a.neuron_counts.sum_all().unwrap().to_scalar::<f64>().unwrap() > 0.0));
}

#[test]
fn the_event_engine_reproduces_the_dense_network() {
    // Dense input (the first layer stays dense) and sparse input (every layer event-driven).
    engines_agree("lenet", [1, 28, 28], 6, 2, 0.5);
    engines_agree("lenet", [1, 28, 28], 6, 2, 0.1);
    // 1×1 convolution shortcuts and signed input.
    engines_agree("resnet7", [3, 32, 32], 4, 1, 0.1);
}

#[test]
fn event_gradients_are_the_same_bits_with_one_or_two_threads() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (n, c, h, o, k) = (40, 3, 10, 6, 3);
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
    for _ in 0..3 {
        assert_eq!(bits(&run(2)), bits(&one));
    }
}
