//! Per-neuron spike statistics of a window.

use candle_core::{DType, Tensor};

use crate::Result;

/// Spike statistics of one layer over a window, per neuron (and per sample).
#[derive(Debug, Clone)]
pub struct WindowStats {
    /// `Tot = Σ_t s(t)`: the spike count of each neuron, shape `[...]` (the window shape without `T`).
    pub count: Tensor,
    /// `LF = Σ_t λ^(T−t) s(t)`: the leak-filtered spike count, same shape.
    pub leaky_count: Tensor,
    /// The leak factor λ used for `leaky_count`.
    pub leak: f64,
}

impl WindowStats {
    /// Computes the statistics of a spike window `[T, ...]` (device generic, no gradient recorded).
    pub fn from_spikes(spikes: &Tensor, leak: f64) -> Result<Self> {
        let spikes = spikes.detach();
        let steps = spikes.dim(0)?;
        let weights: Vec<f64> = (0..steps).map(|t| leak.powi((steps - 1 - t) as i32)).collect();
        let mut wshape = vec![1usize; spikes.rank()];
        wshape[0] = steps;
        let weights = Tensor::from_vec(weights, wshape, spikes.device())?.to_dtype(spikes.dtype())?;
        let count = spikes.sum(0)?;
        let leaky_count = spikes.broadcast_mul(&weights)?.sum(0)?;
        Ok(Self { count, leaky_count, leak })
    }

    /// The leak-correction factor `NG` of every neuron
    /// (see [`crate::kernels::leak_correction`]; 0 for neurons that never fired).
    pub fn leak_correction(&self) -> Result<Tensor> {
        let dtype = self.count.dtype();
        let fired = self.leaky_count.gt(crate::NG_EPS)?.to_dtype(dtype)?;
        let guard = self.count.lt(crate::NG_EPS)?.to_dtype(dtype)?;
        let ratio = self.leaky_count.div(&(&self.count + guard)?)?;
        Ok((fired + (ratio * self.leak.ln())?)?)
    }

    /// Total number of spikes in the window, summed over all neurons and samples.
    pub fn total(&self) -> Result<f64> {
        Ok(self.count.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::leak_correction;
    use candle_core::Device;

    #[test]
    fn matches_the_scalar_definition() -> Result<()> {
        // Two neurons over T = 3: spikes at t=1,3 and never.
        let s = Tensor::from_vec(vec![1.0f64, 0.0, 0.0, 0.0, 1.0, 0.0], (3, 2), &Device::Cpu)?;
        let st = WindowStats::from_spikes(&s, 0.99)?;
        let lf = st.leaky_count.to_vec1::<f64>()?;
        assert!((lf[0] - (0.99f64.powi(2) + 1.0)).abs() < 1e-15);
        let ng = st.leak_correction()?.to_vec1::<f64>()?;
        assert!((ng[0] - leak_correction(lf[0], 2.0, 0.99)).abs() < 1e-15);
        assert_eq!(ng[1], 0.0);
        assert_eq!(st.total()?, 2.0);
        Ok(())
    }
}
