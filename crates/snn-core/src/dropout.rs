//! Dropout masks held fixed over the time window.

use candle_core::{DType, Device, Tensor};
use rand::Rng;

use crate::{Error, Result};

/// Draws an element-wise inverted-dropout mask of the given shape (typically `[B, C, H, W]` or `[B, N]`).
///
/// Each element is kept with probability `1 − p` and then holds `1/(1 − p)`; dropped elements hold 0.
/// Lee et al. draw one mask per mini-batch and apply the same mask at every time step, so the network is
/// the same random sub-network for the whole window. Draws come from `rng` in row-major order.
pub fn dropout_mask<R: Rng + ?Sized>(
    shape: &[usize],
    p: f64,
    rng: &mut R,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::Parameter { name: "dropout p", value: p, msg: "must lie in [0, 1)" });
    }
    let n: usize = shape.iter().product();
    let keep = (1.0 / (1.0 - p)) as f32;
    let p = p as f32;
    let values: Vec<f32> = (0..n).map(|_| if rng.gen::<f32>() >= p { keep } else { 0.0 }).collect();
    Ok(Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn mask_values_and_keep_rate() -> Result<()> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let m = dropout_mask(&[100, 100], 0.2, &mut rng, DType::F64, &Device::Cpu)?;
        let v = m.flatten_all()?.to_vec1::<f64>()?;
        assert!(v.iter().all(|&x| x == 0.0 || (x - 1.25).abs() < 1e-6));
        let kept = v.iter().filter(|&&x| x > 0.0).count() as f64 / v.len() as f64;
        assert!((kept - 0.8).abs() < 0.02, "kept {kept}");
        assert!(dropout_mask(&[2], 1.0, &mut rng, DType::F32, &Device::Cpu).is_err());
        Ok(())
    }
}
