//! The loss of Lee et al. 2020.

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// One-hot targets `[B, classes]` for integer labels, in the dtype and device of `like`.
pub fn one_hot(labels: &[u32], classes: usize, like: &Tensor) -> Result<Tensor> {
    let mut v = vec![0f32; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        let l = l as usize;
        if l >= classes {
            return Err(Error::Config(format!("label {l} out of range for {classes} classes")));
        }
        v[i * classes + l] = 1.0;
    }
    Ok(Tensor::from_vec(v, (labels.len(), classes), like.device())?.to_dtype(like.dtype())?)
}

/// Summed squared error between the readout `[B, classes]` and one-hot targets:
/// `L = Σ_b Σ_k (y_bk − onehot_bk)²` (no ½, no mean), as the authors train.
pub fn sum_squared_error(output: &Tensor, labels: &[u32]) -> Result<Tensor> {
    let (batch, classes) = output.dims2()?;
    if batch != labels.len() {
        return Err(Error::Config(format!("{} labels for a batch of {batch}", labels.len())));
    }
    let target = one_hot(labels, classes, output)?;
    Ok((output - target)?.sqr()?.sum_all()?)
}

/// Index of the largest output per sample (top-1 prediction).
pub fn predictions(output: &Tensor) -> Result<Vec<u32>> {
    Ok(output.to_dtype(DType::F32)?.argmax(1)?.to_vec1::<u32>()?)
}

/// Number of samples whose top-1 prediction equals the label.
pub fn count_correct(output: &Tensor, labels: &[u32]) -> Result<usize> {
    Ok(predictions(output)?.iter().zip(labels).filter(|(p, l)| p == l).count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn loss_is_the_plain_sum_of_squares() -> Result<()> {
        let y = Tensor::from_vec(vec![0.5f64, 0.25, 0.0, 1.0], (2, 2), &Device::Cpu)?;
        let l = sum_squared_error(&y, &[0, 1])?.to_scalar::<f64>()?;
        assert!((l - (0.25 + 0.0625)).abs() < 1e-15);
        assert!(sum_squared_error(&y, &[0, 2]).is_err());
        assert_eq!(predictions(&y)?, vec![0, 1]);
        Ok(())
    }
}
