//! Stochastic gradient descent as the paper's recipe uses it.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;
use snn_models::Gradients;

use crate::{Error, Result};

/// SGD with coupled L2 weight decay and optional heavy-ball momentum (PyTorch semantics):
///
/// ```text
/// d = ∇w + wd · w;   b = μ · b + d (b = d at the first step);   w ← w − lr · (μ > 0 ? b : d)
/// ```
///
/// The authors parse a momentum argument but never pass it to the optimizer, so the paper's runs use
/// `μ = 0`, the default here.
#[derive(Debug)]
pub struct Sgd {
    vars: Vec<(String, Var)>,
    momentum_buffers: Vec<Option<Tensor>>,
    /// Learning rate.
    pub lr: f64,
    /// Momentum μ.
    pub momentum: f64,
    /// Coupled weight decay.
    pub weight_decay: f64,
}

impl Sgd {
    /// An optimizer over the named variables.
    pub fn new(vars: Vec<(String, Var)>, lr: f64, momentum: f64, weight_decay: f64) -> Result<Self> {
        for (name, v) in [("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::Config(format!("{name} must be finite and >= 0, got {v}")));
            }
        }
        let momentum_buffers = vec![None; vars.len()];
        Ok(Self { vars, momentum_buffers, lr, momentum, weight_decay })
    }

    /// The momentum buffers that exist so far, by variable name (empty without momentum or before a step).
    pub fn momentum_state(&self) -> Vec<(String, Tensor)> {
        self.vars
            .iter()
            .zip(&self.momentum_buffers)
            .filter_map(|((name, _), b)| b.as_ref().map(|b| (name.clone(), b.clone())))
            .collect()
    }

    /// Restores a momentum buffer saved by [`Self::momentum_state`].
    pub fn set_momentum(&mut self, name: &str, buffer: Tensor) -> Result<()> {
        let i = self
            .vars
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| Error::Config(format!("no variable '{name}' for a momentum buffer")))?;
        if buffer.dims() != self.vars[i].1.dims() {
            return Err(Error::Config(format!("momentum buffer of '{name}' has the wrong shape")));
        }
        self.momentum_buffers[i] = Some(buffer);
        Ok(())
    }

    /// Applies one update from the gradients in `grads`. Variables without a gradient are left unchanged
    /// (except for weight decay, which still applies, as in PyTorch only when a gradient exists).
    pub fn step(&mut self, grads: &Gradients) -> Result<()> {
        for ((name, var), buf) in self.vars.iter().zip(self.momentum_buffers.iter_mut()) {
            let Some(g) = grads.get(name) else { continue };
            let float = matches!(var.dtype(), DType::F32 | DType::F64) && g.dtype() == var.dtype();
            if self.momentum == 0.0 && var.device().is_cpu() && float && g.dims() == var.dims() {
                // The paper's update, in place in one pass over the weights: no temporaries. Candle refuses a
                // gradient that shares the weights' storage; the tensor expression below handles that case.
                let update = PlainUpdate { lr: self.lr, weight_decay: self.weight_decay };
                if var.as_tensor().inplace_op2(&g.contiguous()?, &update).is_ok() {
                    continue;
                }
            }
            let mut d = g.clone();
            if self.weight_decay > 0.0 {
                d = (d + (var.as_tensor() * self.weight_decay)?)?;
            }
            if self.momentum > 0.0 {
                let b = match buf.take() {
                    Some(b) => ((b * self.momentum)? + &d)?,
                    None => d,
                };
                d = b.clone();
                *buf = Some(b);
            }
            var.set(&(var.as_tensor() - (d * self.lr)?)?)?;
        }
        Ok(())
    }
}

/// `w ← w − lr · (∇w + wd · w)` in place on the CPU, element by element with the same operations in the same
/// order as the tensor expression it replaces (`w · wd` and `d · lr` as Candle's scalar multiplications,
/// `x · c + 0`), so both give the same bits.
struct PlainUpdate {
    lr: f64,
    weight_decay: f64,
}

impl PlainUpdate {
    /// Chunks of this many weights are updated in parallel (each value on its own, so the split changes no bit).
    const CHUNK: usize = 1 << 16;

    fn apply<F: snn_core::kernels::Real>(&self, weights: &mut [F], grads: &[F], lr: F, weight_decay: F) {
        let (zero, decay) = (F::zero(), self.weight_decay > 0.0);
        let update = |(weights, grads): (&mut [F], &[F])| {
            for (w, &g) in weights.iter_mut().zip(grads) {
                let d = if decay { g + (*w * weight_decay + zero) } else { g };
                *w = *w - (d * lr + zero);
            }
        };
        if weights.len() > Self::CHUNK {
            weights.par_chunks_mut(Self::CHUNK).zip(grads.par_chunks(Self::CHUNK)).for_each(update);
        } else {
            update((weights, grads));
        }
    }
}

impl InplaceOp2 for PlainUpdate {
    fn name(&self) -> &'static str {
        "sgd-update"
    }

    fn cpu_fwd(&self, w: &mut CpuStorage, lw: &Layout, g: &CpuStorage, lg: &Layout) -> candle_core::Result<()> {
        let (Some((w0, w1)), Some((g0, g1))) = (lw.contiguous_offsets(), lg.contiguous_offsets()) else {
            candle_core::bail!("{}: weights and gradient must be contiguous", self.name());
        };
        if w1 - w0 != g1 - g0 {
            candle_core::bail!("{}: {} weights but {} gradient values", self.name(), w1 - w0, g1 - g0);
        }
        match (w, g) {
            (CpuStorage::F32(w), CpuStorage::F32(g)) => {
                self.apply(&mut w[w0..w1], &g[g0..g1], self.lr as f32, self.weight_decay as f32)
            }
            (CpuStorage::F64(w), CpuStorage::F64(g)) => {
                self.apply(&mut w[w0..w1], &g[g0..g1], self.lr, self.weight_decay)
            }
            (w, g) => candle_core::bail!("{}: weights {:?} with gradient {:?}", self.name(), w.dtype(), g.dtype()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn in_place_update_gives_the_bits_of_the_tensor_expression() -> Result<()> {
        // Short and long weights (the long ones updated in parallel chunks).
        for n in [997, 3 * PlainUpdate::CHUNK + 11] {
            in_place_update_matches(n)?;
        }
        Ok(())
    }

    fn in_place_update_matches(n: usize) -> Result<()> {
        // Values of every magnitude and sign, zeros included, in f32.
        let values: Vec<f32> =
            (0..n).map(|i| ((i * 7919 % 2003) as f32 - 1001.0) * 10f32.powi(i as i32 % 9 - 6)).collect();
        let grads: Vec<f32> = (0..n).map(|i| ((i * 104_729 % 997) as f32 - 498.0) * 1e-3).collect();
        let (lr, wd) = (0.0085, 5e-4);
        let w = Var::from_vec(values.clone(), n, &Device::Cpu)?;
        let g = Tensor::from_vec(grads, n, &Device::Cpu)?;
        let expected = (w.as_tensor() - ((&g + (w.as_tensor() * wd)?)? * lr)?)?.to_vec1::<f32>()?;
        let mut opt = Sgd::new(vec![("w".into(), w.clone())], lr, 0.0, wd)?;
        opt.step(&Gradients::new(vec![("w".into(), g)]))?;
        let got = w.as_tensor().to_vec1::<f32>()?;
        let same_bits = got.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same_bits, "the in-place update must round exactly like the tensor expression");
        assert_ne!(got, values, "the update must change the weights");
        Ok(())
    }

    #[test]
    fn update_matches_hand_computation() -> Result<()> {
        let w = Var::from_vec(vec![1.0f64, -2.0], 2, &Device::Cpu)?;
        let loss = (w.as_tensor() * 3.0)?.sum_all()?; // gradient 3 everywhere
        let grads = Gradients::new(vec![("w".into(), loss.backward()?.get(w.as_tensor()).unwrap().clone())]);
        let mut opt = Sgd::new(vec![("w".into(), w.clone())], 0.1, 0.0, 0.5)?;
        opt.step(&grads)?;
        // w - 0.1 * (3 + 0.5 w)
        assert_eq!(w.as_tensor().to_vec1::<f64>()?, vec![1.0 - 0.1 * 3.5, -2.0 - 0.1 * 2.0]);
        let mut m = Sgd::new(vec![("w".into(), w.clone())], 1.0, 0.9, 0.0)?;
        m.step(&grads)?;
        m.step(&grads)?;
        // two steps: d=3, then b = 0.9*3 + 3 = 5.7 → total change 8.7
        assert!((w.as_tensor().to_vec1::<f64>()?[0] - (0.65 - 8.7)).abs() < 1e-12);
        Ok(())
    }
}
