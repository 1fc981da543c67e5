//! Spiking neuron layers as window-level differentiable Candle ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use crate::cpu::{run_cpu, CpuKernel};
use crate::kernels::{self, BackwardRule, Real};
use crate::{Error, Result};

/// The surrogate ("pseudo") derivative used by the backward pass at spike times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PseudoDerivative {
    /// Leaky integrate-and-fire rule of Lee et al. 2020: `∂s/∂U ≈ (1/θ) · NG`, with `NG` the leak
    /// correction of [`crate::kernels::leak_correction`] computed from the layer's own spike train.
    LeakCorrected,
    /// Unit pass-through at spike times, as for the pooling IF neurons: no `1/θ`, no `NG`.
    Unit,
}

/// A layer of spiking neurons with hard reset to zero, run over a whole time window.
///
/// Each neuron integrates its input current, fires when the membrane exceeds the threshold (strictly),
/// resets to zero, then leaks:
///
/// ```text
/// U(t) = V(t−1) + I(t),   s(t) = 1[U(t) > θ],   V(t) = λ · (1 − s(t)) · U(t),   V(0) = 0
/// ```
///
/// The backward pass is the exact reverse-time recurrence of the authors' code
/// (see [`kernels::spike_backward`]): `δ(t) = s(t)·k·g(t) + (1 − s(t))·δ(t+1)` with `k = NG/θ` for
/// [`PseudoDerivative::LeakCorrected`] and `k = 1` for [`PseudoDerivative::Unit`]. The leak is not
/// differentiated (factor 1), and no membrane value is needed: the saved spikes suffice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neuron {
    /// Firing threshold θ (> 0).
    pub threshold: f64,
    /// Membrane leak factor λ per step, in (0, 1]; 1 means no leak (IF neuron).
    pub leak: f64,
    /// The pseudo-derivative of the backward pass.
    pub pseudo_derivative: PseudoDerivative,
}

impl Neuron {
    /// The paper's hidden LIF neuron: θ = 1, λ = 0.99, leak-corrected pseudo-derivative.
    pub const PAPER_LIF: Neuron =
        Neuron { threshold: 1.0, leak: 0.99, pseudo_derivative: PseudoDerivative::LeakCorrected };

    /// The paper's pooling IF neuron: θ = 0.75, no leak, unit pseudo-derivative.
    pub const PAPER_POOL_IF: Neuron = Neuron { threshold: 0.75, leak: 1.0, pseudo_derivative: PseudoDerivative::Unit };

    /// A leaky integrate-and-fire neuron with the leak-corrected pseudo-derivative.
    pub fn lif(threshold: f64, leak: f64) -> Result<Self> {
        Self::new(threshold, leak, PseudoDerivative::LeakCorrected)
    }

    /// A non-leaky integrate-and-fire neuron as used after average pooling (unit pseudo-derivative).
    pub fn pool_if(threshold: f64) -> Result<Self> {
        Self::new(threshold, 1.0, PseudoDerivative::Unit)
    }

    /// A neuron with explicit parameters, validated: θ must be finite and positive, λ in (0, 1].
    pub fn new(threshold: f64, leak: f64, pseudo_derivative: PseudoDerivative) -> Result<Self> {
        if !(threshold.is_finite() && threshold > 0.0) {
            return Err(Error::Parameter { name: "threshold", value: threshold, msg: "must be finite and > 0" });
        }
        if !(leak > 0.0 && leak <= 1.0) {
            return Err(Error::Parameter { name: "leak", value: leak, msg: "must lie in (0, 1]" });
        }
        Ok(Self { threshold, leak, pseudo_derivative })
    }

    /// Runs the neuron over a window of input currents `[T, ...]` and returns the spikes `[T, ...]`
    /// (0 or 1, same dtype and device). Differentiable with respect to `currents`.
    pub fn forward_window(&self, currents: &Tensor) -> Result<Tensor> {
        if currents.rank() < 1 || currents.dim(0)? == 0 {
            return Err(Error::Shape {
                op: "Neuron::forward_window",
                msg: format!("expected currents [T, ...] with T > 0, got {:?}", currents.dims()),
            });
        }
        Ok(currents.contiguous()?.apply_op1(WindowOp(*self))?)
    }

    /// The rule the backward pass applies at spike times: `1/θ` with the leak correction for
    /// [`PseudoDerivative::LeakCorrected`], a unit factor for [`PseudoDerivative::Unit`].
    pub fn backward_rule<F: Real>(&self) -> BackwardRule<F> {
        match self.pseudo_derivative {
            PseudoDerivative::LeakCorrected => {
                BackwardRule { scale: F::lit(1.0 / self.threshold), leak_correction: Some(F::lit(self.leak)) }
            }
            PseudoDerivative::Unit => BackwardRule { scale: F::one(), leak_correction: None },
        }
    }
}

/// Number of neurons per time step of a `[T, ...]` window.
fn neurons_per_step(shape: &Shape) -> usize {
    let dims = shape.dims();
    if dims.is_empty() || dims[0] == 0 {
        0
    } else {
        shape.elem_count() / dims[0]
    }
}

/// A kernel over one contiguous window buffer, generic over the float type.
pub(crate) trait WindowKernel {
    /// Name used in error messages.
    const NAME: &'static str;
    /// Computes the output buffer from the input buffer of a window of the given shape.
    fn run<F: Real + candle_core::WithDType>(&self, input: &[F], shape: &Shape) -> Vec<F>;
    /// Shape of the output.
    fn output_shape(&self, input: &Shape) -> Shape {
        input.clone()
    }
}

/// Runs a [`WindowKernel`] on a CPU storage of `f32` or `f64`.
pub(crate) fn cpu_apply<K: WindowKernel>(
    kernel: &K,
    storage: &CpuStorage,
    layout: &Layout,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let shape = layout.shape();
    let out = run_cpu(&OnWindow(kernel, shape), &[(storage, layout)])?;
    Ok((out, kernel.output_shape(shape)))
}

/// A [`WindowKernel`] with its window's shape, as a [`CpuKernel`].
struct OnWindow<'a, K>(&'a K, &'a Shape);

impl<K: WindowKernel> CpuKernel for OnWindow<'_, K> {
    const NAME: &'static str = K::NAME;

    fn run<F: Real + candle_core::WithDType>(&self, operands: &[&[F]]) -> Vec<F> {
        self.0.run(operands[0], self.1)
    }
}

struct WindowOp(Neuron);

impl WindowKernel for WindowOp {
    const NAME: &'static str = "spike-window";

    fn run<F: Real + candle_core::WithDType>(&self, currents: &[F], shape: &Shape) -> Vec<F> {
        let mut spikes = vec![F::zero(); currents.len()];
        kernels::spike_forward(
            currents,
            neurons_per_step(shape),
            F::lit(self.0.threshold),
            F::lit(self.0.leak),
            &mut spikes,
        );
        spikes
    }
}

impl CustomOp1 for WindowOp {
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
        Ok((crate::cuda::spike_forward(storage, layout, self.0.threshold, self.0.leak)?, layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = res.apply_op2_no_bwd(&grad_res.contiguous()?, &WindowBackwardOp(self.0))?;
        Ok(Some(grad))
    }
}

/// Backward of [`WindowOp`]: (spikes, ∂L/∂spikes) → ∂L/∂currents.
struct WindowBackwardOp(Neuron);

/// The kernel of [`WindowBackwardOp`] for a window of `per_step` neurons per time step.
struct SpikeBackward {
    neuron: Neuron,
    per_step: usize,
}

impl CpuKernel for SpikeBackward {
    const NAME: &'static str = "spike-window-backward";

    /// Operands: the spikes and the gradient with respect to them, of the same window shape.
    fn run<F: Real + candle_core::WithDType>(&self, operands: &[&[F]]) -> Vec<F> {
        let (spikes, grad) = (operands[0], operands[1]);
        let mut out = vec![F::zero(); spikes.len()];
        kernels::spike_backward(spikes, grad, self.per_step, self.neuron.backward_rule(), &mut out);
        out
    }
}

impl CustomOp2 for WindowBackwardOp {
    fn name(&self) -> &'static str {
        SpikeBackward::NAME
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        ls: &Layout,
        g: &CpuStorage,
        lg: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if ls.shape().elem_count() != lg.shape().elem_count() {
            candle_core::bail!("{}: spikes and gradient differ in size", self.name());
        }
        let kernel = SpikeBackward { neuron: self.0, per_step: neurons_per_step(ls.shape()) };
        Ok((run_cpu(&kernel, &[(s, ls), (g, lg)])?, ls.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        ls: &Layout,
        g: &candle_core::CudaStorage,
        lg: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        Ok((crate::cuda::spike_backward(s, ls, g, lg, self.0.backward_rule::<f64>())?, ls.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn rejects_bad_parameters() {
        assert!(Neuron::lif(0.0, 0.99).is_err());
        assert!(Neuron::lif(1.0, 1.5).is_err());
        assert!(Neuron::lif(f64::NAN, 0.99).is_err());
        assert!(Neuron::pool_if(0.75).is_ok());
    }

    #[test]
    fn gradient_flows_only_through_spike_times() -> Result<()> {
        // T = 3, one neuron firing at t = 2 only; IF neuron with unit derivative.
        let cur = Var::from_vec(vec![0.5f64, 0.6, 0.1], (3, 1), &Device::Cpu)?;
        let s = Neuron::pool_if(1.0)?.forward_window(cur.as_tensor())?;
        assert_eq!(s.flatten_all()?.to_vec1::<f64>()?, vec![0.0, 1.0, 0.0]);
        let grads = s.sum_all()?.backward()?;
        let g = grads.get(&cur).expect("gradient").flatten_all()?.to_vec1::<f64>()?;
        // Inputs up to and including the spike get the spike's error; the input after the last spike none.
        assert_eq!(g, vec![1.0, 1.0, 0.0]);
        Ok(())
    }
}
