//! Stochastic gradient descent as the paper's recipe uses it.

use candle_core::{Tensor, Var};
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

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
