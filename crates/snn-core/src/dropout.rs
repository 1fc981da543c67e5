//! Dropout masks held fixed over the time window.
//!
//! Lee et al. draw one element-wise mask per mini-batch and apply it at every time step, so the network is the
//! same random sub-network for the whole window. A kept entry is scaled by `1/(1 − p)` (inverted dropout), a
//! dropped one is 0. Since every kept entry of a layer takes the same value, a mask is stored as one keep flag
//! per entry ([`dropout_keep`], a `u8` tensor) and the value is implied by `p` ([`keep_value`]): a quarter of
//! the bytes of an `f32` mask, and the kernels test a byte instead of loading a float.

use candle_core::{DType, Device, Tensor};
use rand::Rng;
use rayon::prelude::*;

use crate::kernels::Real;
use crate::{Error, Result};

/// The value `1/(1 − p)` that a kept entry takes, as the masks have always been drawn: rounded to `f32` (so
/// that an `f32` and an `f64` network multiply by the same number).
pub fn keep_value(p: f64) -> f32 {
    (1.0 / (1.0 - p)) as f32
}

/// Draws the keep flags of an element-wise inverted-dropout mask of the given shape `[B, ...]` (typically
/// `[B, C, H, W]` or `[B, N]`) as a `u8` tensor: 1 where the entry is kept (probability `1 − p`), 0 where it is
/// dropped. Sample `b`'s row comes from `rngs[b]` alone (row-major), so that a sample's mask does not depend
/// on the rest of its batch. The mask's multipliers are the flags times [`keep_value`]`(p)`.
pub fn dropout_keep<R: Rng + Send>(shape: &[usize], p: f64, rngs: &mut [R], device: &Device) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::Parameter { name: "dropout p", value: p, msg: "must lie in [0, 1)" });
    }
    if shape.first() != Some(&rngs.len()) {
        return Err(Error::Shape {
            op: "dropout_keep",
            msg: format!("shape {shape:?} needs one generator per sample, got {}", rngs.len()),
        });
    }
    let per_sample: usize = shape[1..].iter().product();
    let p = p as f32;
    let mut flags = vec![0u8; per_sample * rngs.len()];
    // Each sample's row from its own generator, so the samples can be drawn on different workers.
    flags.par_chunks_mut(per_sample.max(1)).zip(rngs.par_iter_mut()).for_each(|(row, rng)| {
        row.iter_mut().for_each(|keep| *keep = u8::from(rng.gen::<f32>() >= p));
    });
    Ok(Tensor::from_vec(flags, shape, device)?)
}

/// The multipliers of a dropout mask as a float tensor of `dtype`: keep flags (`u8`, any non-zero byte keeps)
/// become `keep_value(p)` and 0; a mask given as multipliers is converted to `dtype` as it is.
pub fn mask_multipliers(mask: &Tensor, p: f64, dtype: DType) -> Result<Tensor> {
    if mask.dtype() != DType::U8 {
        return Ok(mask.to_dtype(dtype)?);
    }
    let kept = mask.ne(0u8)?.to_dtype(DType::F32)?;
    Ok((kept * f64::from(keep_value(p)))?.to_dtype(dtype)?)
}

/// A dropout mask `[B, len]` as the CPU kernels read it, one row per sample.
#[derive(Debug, Clone, Copy)]
pub enum MaskView<'a, F> {
    /// One multiplier per entry (0 drops it): any mask.
    Values(&'a [F]),
    /// One keep flag per entry (non-zero keeps) and the value every kept entry takes.
    Keep {
        /// The flags, `B · len` bytes.
        flags: &'a [u8],
        /// The multiplier of a kept entry, `1/(1 − p)`.
        value: F,
    },
}

impl<'a, F: Real> MaskView<'a, F> {
    /// Entries in the mask.
    pub fn len(&self) -> usize {
        match self {
            Self::Values(values) => values.len(),
            Self::Keep { flags, .. } => flags.len(),
        }
    }

    /// Whether the mask has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries `range` of the mask (e.g. one sample's row).
    #[inline(always)]
    pub fn slice(self, range: std::ops::Range<usize>) -> Self {
        match self {
            Self::Values(values) => Self::Values(&values[range]),
            Self::Keep { flags, value } => Self::Keep { flags: &flags[range], value },
        }
    }

    /// The multiplier of entry `i`.
    #[inline(always)]
    pub fn get(&self, i: usize) -> F {
        match *self {
            Self::Values(values) => values[i],
            Self::Keep { flags, value } => {
                if flags[i] != 0 {
                    value
                } else {
                    F::zero()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn keep_flags_and_their_multipliers() -> Result<()> {
        let mut rngs: Vec<_> = (0..100).map(rand_chacha::ChaCha8Rng::seed_from_u64).collect();
        let flags = dropout_keep(&[100, 100], 0.2, &mut rngs, &Device::Cpu)?;
        assert_eq!(flags.dtype(), DType::U8);
        let v = flags.flatten_all()?.to_vec1::<u8>()?;
        assert!(v.iter().all(|&k| k <= 1));
        let kept = v.iter().filter(|&&k| k == 1).count() as f64 / v.len() as f64;
        assert!((kept - 0.8).abs() < 0.02, "kept {kept}");
        let m = mask_multipliers(&flags, 0.2, DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        for (&k, &x) in v.iter().zip(&m) {
            assert_eq!(x, if k == 1 { 1.25 } else { 0.0 });
        }
        // p = 0.25: the f32 rounding of 4/3 in both float types.
        let third = mask_multipliers(&Tensor::new(&[[1u8, 0]], &Device::Cpu)?, 0.25, DType::F64)?;
        assert_eq!(third.to_vec2::<f64>()?, [[f64::from((4.0f64 / 3.0) as f32), 0.0]]);
        assert!(dropout_keep(&[2], 1.0, &mut rngs[..2], &Device::Cpu).is_err());
        assert!(dropout_keep(&[3, 4], 0.5, &mut rngs[..2], &Device::Cpu).is_err(), "one generator per row");
        Ok(())
    }

    #[test]
    fn a_sample_row_depends_on_its_own_generator_only() -> Result<()> {
        let rngs = |seeds: &[u64]| seeds.iter().map(|&s| rand_chacha::ChaCha8Rng::seed_from_u64(s)).collect::<Vec<_>>();
        let a = dropout_keep(&[2, 50], 0.5, &mut rngs(&[7, 8]), &Device::Cpu)?.to_vec2::<u8>()?;
        let b = dropout_keep(&[2, 50], 0.5, &mut rngs(&[9, 8]), &Device::Cpu)?.to_vec2::<u8>()?;
        assert_eq!(a[1], b[1]);
        assert_ne!(a[0], b[0]);
        Ok(())
    }

    #[test]
    fn views_read_the_same_multipliers() {
        let flags = [1u8, 0, 3, 0];
        let values = [1.5f32, 0.0, 1.5, 0.0];
        let keep = MaskView::Keep { flags: &flags, value: 1.5f32 };
        let plain = MaskView::Values(&values);
        assert_eq!(keep.len(), 4);
        for i in 0..4 {
            assert_eq!(keep.get(i), plain.get(i));
        }
        assert_eq!(keep.slice(2..4).get(0), 1.5);
        assert!(keep.slice(1..1).is_empty());
    }
}
