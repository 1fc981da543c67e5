//! The non-spiking leaky readout of the output layer.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use crate::kernels::{self, Real};
use crate::neuron::{cpu_apply, WindowKernel};
use crate::{Error, Result};

/// Leaky integration of the output currents `[T, ...]` into the network output `[...]`.
///
/// The output neurons never fire; their membrane integrates and leaks, and the output is the final
/// membrane normalised by threshold and window length:
///
/// ```text
/// M(t) = λ · (M(t−1) + I(t)),  M(0) = 0,     y = M(T) / (θ · T) = (1/(θT)) Σ_t λ^(T−t+1) I(t)
/// ```
///
/// As in the authors' code, the backward pass does not differentiate the leak: `∂y/∂I(t) = 1/(θT)` for
/// every step.
pub fn leaky_readout(currents: &Tensor, threshold: f64, leak: f64) -> Result<Tensor> {
    if currents.rank() < 1 || currents.dim(0)? == 0 {
        return Err(Error::Shape {
            op: "leaky_readout",
            msg: format!("expected currents [T, ...] with T > 0, got {:?}", currents.dims()),
        });
    }
    if !(threshold.is_finite() && threshold > 0.0) {
        return Err(Error::Parameter { name: "threshold", value: threshold, msg: "must be finite and > 0" });
    }
    Ok(currents.contiguous()?.apply_op1(ReadoutOp { threshold, leak })?)
}

struct ReadoutOp {
    threshold: f64,
    leak: f64,
}

impl WindowKernel for ReadoutOp {
    const NAME: &'static str = "leaky-readout";

    fn run<F: Real + candle_core::WithDType>(&self, currents: &[F], shape: &Shape) -> Vec<F> {
        let n = shape.elem_count() / shape.dims()[0];
        let mut out = vec![F::zero(); n];
        kernels::readout_forward(currents, n, F::lit(self.threshold), F::lit(self.leak), &mut out);
        out
    }

    fn output_shape(&self, input: &Shape) -> Shape {
        Shape::from(&input.dims()[1..])
    }
}

impl CustomOp1 for ReadoutOp {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_apply(self, storage, layout)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let out = crate::cuda::readout_forward(storage, layout, self.threshold, self.leak)?;
        Ok((out, self.output_shape(layout.shape())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let steps = arg.dim(0)?;
        let scale = 1.0 / (self.threshold * steps as f64);
        let grad = (grad_res.unsqueeze(0)?.broadcast_as(arg.shape())? * scale)?.contiguous()?;
        Ok(Some(grad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn forward_is_the_leaky_sum_and_backward_the_plain_mean() -> Result<()> {
        let cur = Var::from_vec(vec![1.0f64, 2.0, 3.0], (3, 1), &Device::Cpu)?;
        let y = leaky_readout(cur.as_tensor(), 1.0, 0.5)?;
        // (0.5^3·1 + 0.5^2·2 + 0.5·3) / 3
        let expect = (0.125 + 0.5 + 1.5) / 3.0;
        assert!((y.to_vec1::<f64>()?[0] - expect).abs() < 1e-15);
        let g = y.sum_all()?.backward()?;
        let g = g.get(&cur).expect("grad").flatten_all()?.to_vec1::<f64>()?;
        assert_eq!(g, vec![1.0 / 3.0; 3]);
        Ok(())
    }
}
