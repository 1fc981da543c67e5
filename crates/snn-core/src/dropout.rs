//! Dropout masks held fixed over the time window.

use candle_core::{DType, Device, Tensor};
use rand::Rng;

use crate::{Error, Result};

/// Draws an element-wise inverted-dropout mask of the given shape `[B, ...]` (typically `[B, C, H, W]` or
/// `[B, N]`), sample `b`'s row from `rngs[b]` alone (row-major), so that a sample's mask does not depend on
/// the rest of its batch.
///
/// Each element is kept with probability `1 − p` and then holds `1/(1 − p)`; dropped elements hold 0.
/// Lee et al. draw one mask per mini-batch and apply the same mask at every time step, so the network is
/// the same random sub-network for the whole window.
pub fn dropout_mask<R: Rng>(shape: &[usize], p: f64, rngs: &mut [R], dtype: DType, device: &Device) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::Parameter { name: "dropout p", value: p, msg: "must lie in [0, 1)" });
    }
    if shape.first() != Some(&rngs.len()) {
        return Err(Error::Shape {
            op: "dropout_mask",
            msg: format!("shape {shape:?} needs one generator per sample, got {}", rngs.len()),
        });
    }
    let per_sample: usize = shape[1..].iter().product();
    let keep = (1.0 / (1.0 - p)) as f32;
    let p = p as f32;
    let mut values = Vec::with_capacity(per_sample * rngs.len());
    for rng in rngs.iter_mut() {
        values.extend((0..per_sample).map(|_| if rng.gen::<f32>() >= p { keep } else { 0.0 }));
    }
    Ok(Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn mask_values_and_keep_rate() -> Result<()> {
        let mut rngs: Vec<_> = (0..100).map(rand_chacha::ChaCha8Rng::seed_from_u64).collect();
        let m = dropout_mask(&[100, 100], 0.2, &mut rngs, DType::F64, &Device::Cpu)?;
        let v = m.flatten_all()?.to_vec1::<f64>()?;
        assert!(v.iter().all(|&x| x == 0.0 || (x - 1.25).abs() < 1e-6));
        let kept = v.iter().filter(|&&x| x > 0.0).count() as f64 / v.len() as f64;
        assert!((kept - 0.8).abs() < 0.02, "kept {kept}");
        assert!(dropout_mask(&[2], 1.0, &mut rngs[..2], DType::F32, &Device::Cpu).is_err());
        assert!(dropout_mask(&[3, 4], 0.5, &mut rngs[..2], DType::F32, &Device::Cpu).is_err(), "one generator per row");
        Ok(())
    }
}
