//! Coding of static inputs into input windows: Bernoulli ("Poisson") spike trains, or the analog values
//! themselves held over the window (direct coding).

use candle_core::{DType, Device, Tensor};
use rand::Rng;
use rayon::prelude::*;

use crate::{Error, Result};

/// Bernoulli ("Poisson") rate encoder with a fresh random draw at every step.
///
/// A pixel value `x` emits at each step
///
/// ```text
/// s(t) = sign(x) · 1[gain · |x| > r(t)],   r(t) ~ U[0, 1)
/// ```
///
/// so its firing probability per step is `min(gain·|x|, 1)` and the spike carries the sign of `x`.
/// The paper's MNIST recipe is [`RateEncoder::MNIST`] (`gain = 1/2` on pixels in [0, 1], spikes in
/// {0, 1}); its CIFAR-10 recipe is [`RateEncoder::SIGNED`] (`gain = 1` on normalised pixels, spikes in
/// {−1, 0, 1}).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateEncoder {
    /// Multiplier from |pixel| to firing probability per step.
    pub gain: f64,
}

impl RateEncoder {
    /// MNIST recipe of Lee et al.: rate `x/2` for pixels in [0, 1].
    pub const MNIST: RateEncoder = RateEncoder { gain: 0.5 };
    /// Signed recipe for normalised inputs (CIFAR-10): rate `|x|`, spikes carry the sign of `x`.
    pub const SIGNED: RateEncoder = RateEncoder { gain: 1.0 };

    /// An encoder with the given gain (finite and ≥ 0).
    pub fn new(gain: f64) -> Result<Self> {
        if !(gain.is_finite() && gain >= 0.0) {
            return Err(Error::Parameter { name: "gain", value: gain, msg: "must be finite and >= 0" });
        }
        Ok(Self { gain })
    }

    /// Encodes a batch of `pixels` (any shape `[B, ...]`, row-major) into a spike window of shape
    /// `[timesteps, B, ...]`. Sample `b` draws from `rngs[b]` alone (its pixels in row-major order, step
    /// after step), so a sample's spikes do not depend on which other samples share its batch or in which
    /// order: key each generator by the sample for draws that are the same whatever the batching.
    pub fn encode<R: Rng + Send>(
        &self,
        pixels: &[f32],
        shape: &[usize],
        timesteps: usize,
        rngs: &mut [R],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let total: usize = shape.iter().product();
        if total != pixels.len() || shape.first() != Some(&rngs.len()) {
            return Err(Error::Shape {
                op: "RateEncoder::encode",
                msg: format!(
                    "shape {shape:?} holds {total} values in {:?} samples; got {} values and {} generators",
                    shape.first(),
                    pixels.len(),
                    rngs.len()
                ),
            });
        }
        let batch = rngs.len();
        let per_sample = total / batch.max(1);
        let gain = self.gain as f32;
        let mut spikes = vec![0.0f32; total * timesteps];
        // Each sample's rows (one per step) with its own generator, so samples run on different workers.
        let mut rows: Vec<Vec<&mut [f32]>> = (0..batch).map(|_| Vec::with_capacity(timesteps)).collect();
        for (i, row) in spikes.chunks_mut(per_sample.max(1)).enumerate() {
            rows[i % batch].push(row);
        }
        rows.into_par_iter().zip(rngs.par_iter_mut()).enumerate().for_each(|(b, (steps, rng))| {
            let image = &pixels[b * per_sample..][..per_sample];
            for out in steps {
                for (s, &x) in out.iter_mut().zip(image) {
                    let r: f32 = rng.gen();
                    if gain * x.abs() > r {
                        *s = x.signum();
                    }
                }
            }
        });
        let mut dims = Vec::with_capacity(shape.len() + 1);
        dims.push(timesteps);
        dims.extend_from_slice(shape);
        Ok(Tensor::from_vec(spikes, dims, device)?.to_dtype(dtype)?)
    }
}

/// Direct (analog) input coding: the pixel value itself is the input current of the first layer at every
/// step,
///
/// ```text
/// x(t) = x,   t = 1, …, T
/// ```
///
/// so no information is lost to sampling noise, which matters at short windows (T ≤ 8). The first layer's
/// synaptic input is then real-valued rather than spikes; every layer after it still receives spikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirectEncoder;

impl DirectEncoder {
    /// Repeats a batch of `pixels` (any shape `[B, ...]`, row-major) over `timesteps` steps: a window of
    /// shape `[timesteps, B, ...]`.
    pub fn encode(
        &self,
        pixels: &[f32],
        shape: &[usize],
        timesteps: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let per_step: usize = shape.iter().product();
        if per_step != pixels.len() {
            return Err(Error::Shape {
                op: "DirectEncoder::encode",
                msg: format!("shape {shape:?} holds {per_step} values, got {}", pixels.len()),
            });
        }
        let frame = Tensor::from_slice(pixels, shape, device)?.to_dtype(dtype)?.unsqueeze(0)?;
        let mut dims = Vec::with_capacity(shape.len() + 1);
        dims.push(timesteps);
        dims.extend_from_slice(shape);
        Ok(frame.broadcast_as(dims)?.contiguous()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn rates_and_signs_follow_the_recipe() -> Result<()> {
        let rng = ChaCha8Rng::seed_from_u64(7);
        let pixels = [0.0f32, 1.0, 0.4, -0.8];
        let t = 20_000;
        let s = RateEncoder::MNIST.encode(&pixels, &[1, 4], t, &mut [rng], DType::F32, &Device::Cpu)?;
        let s = s.to_dtype(DType::F64)?.sum(0)?.flatten_all()?.to_vec1::<f64>()?;
        let rates: Vec<f64> = s.iter().map(|c| c / t as f64).collect();
        assert_eq!(rates[0], 0.0);
        assert!((rates[1] - 0.5).abs() < 0.015, "{rates:?}");
        assert!((rates[2] - 0.2).abs() < 0.015, "{rates:?}");
        assert!((rates[3] + 0.4).abs() < 0.015, "negative pixels give -1 spikes: {rates:?}");
        Ok(())
    }

    #[test]
    fn direct_coding_holds_every_value_over_the_window() -> Result<()> {
        let pixels = [0.0f32, 1.0, -0.25, 0.5, 0.125, 2.0];
        let x = DirectEncoder.encode(&pixels, &[2, 3], 4, DType::F64, &Device::Cpu)?;
        assert_eq!(x.dims(), &[4, 2, 3]);
        let values = x.flatten_all()?.to_vec1::<f64>()?;
        for (i, v) in values.iter().enumerate() {
            assert_eq!(*v, f64::from(pixels[i % 6]), "step {} value {}", i / 6, i % 6);
        }
        assert!(DirectEncoder.encode(&pixels, &[4, 2], 3, DType::F32, &Device::Cpu).is_err());
        Ok(())
    }

    #[test]
    fn same_seed_same_spikes_and_each_sample_its_own_stream() -> Result<()> {
        let px: Vec<f32> = (0..16).map(|i| i as f32 / 16.0).collect();
        let rngs = |seeds: &[u64]| seeds.iter().map(|&s| ChaCha8Rng::seed_from_u64(s)).collect::<Vec<_>>();
        let encode = |px: &[f32], shape: &[usize], seeds: &[u64]| -> Result<Vec<f32>> {
            let x = RateEncoder::SIGNED.encode(px, shape, 5, &mut rngs(seeds), DType::F32, &Device::Cpu)?;
            Ok(x.flatten_all()?.to_vec1::<f32>()?)
        };
        assert_eq!(encode(&px, &[2, 8], &[1, 2])?, encode(&px, &[2, 8], &[1, 2])?);
        // Sample 1 alone with generator 2 gives the spikes it had as the second sample of the batch.
        let pair = encode(&px, &[2, 8], &[1, 2])?;
        let alone = encode(&px[8..], &[1, 8], &[2])?;
        for t in 0..5 {
            assert_eq!(pair[t * 16 + 8..t * 16 + 16], alone[t * 8..t * 8 + 8], "step {t}");
        }
        // Each generator draws its sample's uniforms step after step, pixel after pixel: the plain loop.
        let mut gens = rngs(&[1, 2]);
        for (b, rng) in gens.iter_mut().enumerate() {
            for t in 0..5 {
                for i in 0..8 {
                    let (x, r) = (px[b * 8 + i], rand::Rng::gen::<f32>(rng));
                    let expected = if x.abs() > r { x.signum() } else { 0.0 };
                    assert_eq!(pair[t * 16 + b * 8 + i], expected, "sample {b}, step {t}, pixel {i}");
                }
            }
        }
        assert!(RateEncoder::SIGNED.encode(&px, &[2, 8], 5, &mut rngs(&[1]), DType::F32, &Device::Cpu).is_err());
        assert!(RateEncoder::new(f64::NAN).is_err());
        Ok(())
    }
}
