//! Training recipes: the hyperparameters of a run.

use serde::{Deserialize, Serialize};
use snn_models::NetworkSpec;

use crate::{Error, Result};

/// The paper's CIFAR-10 learning rate for the VGG family.
pub const VGG_CIFAR10_LR: f64 = 0.0033;
/// The paper's CIFAR-10 learning rate for the ResNet family.
pub const RESNET_CIFAR10_LR: f64 = 0.0025;
/// Time steps of the quick default run ([`Recipe::quick`]).
pub const QUICK_TIMESTEPS: usize = 20;
/// The shortest window at which the paper's learning rates train stably; shorter windows get the
/// short-window rule ([`Recipe::with_short_window_rule`]).
pub const STABLE_TIMESTEPS: usize = 20;

/// The hyperparameters of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// Number of epochs.
    pub epochs: usize,
    /// Training mini-batch size.
    pub batch_size: usize,
    /// Evaluation batch size.
    pub test_batch_size: usize,
    /// Initial learning rate (per summed loss: the loss is a sum over the batch).
    pub lr: f64,
    /// Step schedule: from the given 1-based epoch on, the learning rate is `lr · factor`.
    pub lr_milestones: Vec<(usize, f64)>,
    /// SGD momentum (the paper's runs use 0).
    pub momentum: f64,
    /// Coupled L2 weight decay.
    pub weight_decay: f64,
    /// Time steps per training sample.
    pub timesteps: usize,
    /// Window schedule: from the given 1-based epoch on, training samples run for the given number of time
    /// steps instead of `timesteps` (e.g. `[[13, 100]]`: a short window while the network learns fast, the
    /// paper's own for the last epochs). The test window stays `test_timesteps`; the short-window rule looks at
    /// `timesteps` only. Empty (the paper's recipes): `timesteps` throughout.
    #[serde(default)]
    pub window_milestones: Vec<(usize, usize)>,
    /// Time steps per test sample.
    pub test_timesteps: usize,
    /// Seed of every random stream of the run.
    pub seed: u64,
    /// Random crop (4-pixel zero padding) and horizontal flip of training images.
    #[serde(default)]
    pub augment: bool,
    /// When a batch's loss or a gradient is not finite while every weight still is, skip that batch (no
    /// update) and count it in the epoch's metrics instead of stopping the run. A non-finite weight always
    /// stops the run.
    #[serde(default)]
    pub skip_nonfinite_batches: bool,
    /// The learning rate the recipe had before the short-window rule scaled it, when the rule applied
    /// ([`Recipe::with_short_window_rule`]); `None` when `lr` is the recipe's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_before_window_rule: Option<f64>,
}

impl Recipe {
    /// The authors' MNIST LeNet recipe: 125 epochs, batch 64, LR 0.0085 (×0.2 from epoch 75), plain SGD,
    /// weight decay 5e-4, T = 100 for training and test.
    pub fn paper_mnist() -> Self {
        Self {
            epochs: 125,
            batch_size: 64,
            test_batch_size: 64,
            lr: 0.0085,
            lr_milestones: vec![(75, 0.2)],
            momentum: 0.0,
            weight_decay: 5e-4,
            timesteps: 100,
            window_milestones: Vec::new(),
            test_timesteps: 100,
            seed: 1,
            augment: false,
            skip_nonfinite_batches: false,
            lr_before_window_rule: None,
        }
    }

    /// The authors' CIFAR-10 recipe for VGG9 (`lr = 0.0033`) or ResNet11 (`lr = 0.0025`): 150 epochs,
    /// batch 16 (test 8), ×0.2 at epoch 70, ×0.04 at 100, ×0.008 at 125, plain SGD, weight decay 5e-4.
    pub fn paper_cifar10(lr: f64) -> Self {
        Self {
            epochs: 150,
            batch_size: 16,
            test_batch_size: 8,
            lr,
            lr_milestones: vec![(70, 0.2), (100, 0.04), (125, 0.008)],
            momentum: 0.0,
            weight_decay: 5e-4,
            timesteps: 100,
            window_milestones: Vec::new(),
            test_timesteps: 100,
            seed: 3,
            augment: true,
            skip_nonfinite_batches: false,
            lr_before_window_rule: None,
        }
    }

    /// The paper's recipe for a built-in model name, if it has one. The derived networks (VGG7, ResNet7,
    /// ResNet9) get the CIFAR-10 recipe of their family: the paper's own values for them were not recovered.
    pub fn paper_for(model: &str) -> Option<Self> {
        match model {
            "lenet" | "lenet-nmnist" => Some(Self::paper_mnist()),
            "vgg9" | "vgg7" => Some(Self::paper_cifar10(VGG_CIFAR10_LR)),
            "resnet11" | "resnet9" | "resnet7" => Some(Self::paper_cifar10(RESNET_CIFAR10_LR)),
            _ => None,
        }
    }

    /// The paper's recipe for a network: that of its built-in name if it has one, otherwise that of the
    /// paper's dataset its input implies (three input channels: the CIFAR-10 recipe with the VGG learning
    /// rate; otherwise the MNIST recipe).
    pub fn paper_for_spec(model: &str, spec: &NetworkSpec) -> Self {
        Self::paper_for(model).unwrap_or_else(|| {
            if spec.input_shape.first() == Some(&3) {
                Self::paper_cifar10(VGG_CIFAR10_LR)
            } else {
                Self::paper_mnist()
            }
        })
    }

    /// The quick version of a recipe that `snn-cli train` runs by default: one epoch at
    /// [`QUICK_TIMESTEPS`] steps for training and test, everything else unchanged.
    pub fn quick(self) -> Self {
        Self { epochs: 1, timesteps: QUICK_TIMESTEPS, test_timesteps: QUICK_TIMESTEPS, ..self }
    }

    /// The recipe with the short-window rule applied: below [`STABLE_TIMESTEPS`] steps the learning rate is
    /// scaled by the window's share of it,
    ///
    /// ```text
    /// lr' = lr · T / 20    (T < 20; otherwise lr' = lr)
    /// ```
    ///
    /// At short windows the paper's learning rates are on the edge of stability: a layer's activity swings
    /// from batch to batch and a layer that stops firing passes no error back, so it never recovers (the
    /// network then answers one class). Fewer steps give fewer spikes and noisier gradients; the smaller step
    /// keeps the layers firing. The original rate is kept in [`Self::lr_before_window_rule`], so the rule is
    /// visible in every saved recipe and applies once. Windows of 20 steps or more (the paper's own, the
    /// quick default) are untouched.
    pub fn with_short_window_rule(mut self) -> Self {
        if self.timesteps < STABLE_TIMESTEPS && self.lr_before_window_rule.is_none() {
            self.lr_before_window_rule = Some(self.lr);
            self.lr *= self.timesteps as f64 / STABLE_TIMESTEPS as f64;
        }
        self
    }

    /// The learning rate of a 1-based epoch.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        self.lr * last_reached(&self.lr_milestones, epoch).unwrap_or(1.0)
    }

    /// The training window of a 1-based epoch: `timesteps`, or the window of the last milestone of
    /// [`Self::window_milestones`] reached.
    pub fn timesteps_at(&self, epoch: usize) -> usize {
        last_reached(&self.window_milestones, epoch).unwrap_or(self.timesteps)
    }

    /// Checks that every value is usable.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("epochs", self.epochs),
            ("batch_size", self.batch_size),
            ("test_batch_size", self.test_batch_size),
            ("timesteps", self.timesteps),
            ("test_timesteps", self.test_timesteps),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::Config(format!("{name} must be at least 1")));
            }
        }
        for (name, v) in [("lr", self.lr), ("momentum", self.momentum), ("weight_decay", self.weight_decay)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::Config(format!("{name} must be finite and >= 0, got {v}")));
            }
        }
        if self.lr_milestones.iter().any(|(_, f)| !(f.is_finite() && *f >= 0.0)) {
            return Err(Error::Config("learning-rate factors must be finite and >= 0".into()));
        }
        if let Some((epoch, t)) = self.window_milestones.iter().find(|(epoch, t)| *epoch == 0 || *t == 0) {
            return Err(Error::Config(format!(
                "window milestone [{epoch}, {t}]: the epoch (1-based) and the time steps must be at least 1"
            )));
        }
        Ok(())
    }
}

/// The value of the latest milestone `(from epoch, value)` that a 1-based `epoch` has reached, if any.
fn last_reached<T: Copy>(milestones: &[(usize, T)], epoch: usize) -> Option<T> {
    milestones.iter().filter(|(from, _)| epoch >= *from).max_by_key(|(from, _)| *from).map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_the_paper() {
        let m = Recipe::paper_mnist();
        assert_eq!(m.lr_at(74), 0.0085);
        assert!((m.lr_at(75) - 0.0017).abs() < 1e-15);
        let c = Recipe::paper_cifar10(0.0033);
        assert_eq!(c.lr_at(69), 0.0033);
        assert!((c.lr_at(70) - 0.00066).abs() < 1e-15);
        assert!((c.lr_at(100) - 0.0033 * 0.04).abs() < 1e-15);
        assert!((c.lr_at(150) - 0.0033 * 0.008).abs() < 1e-15);
        let mut bad = m.clone();
        bad.timesteps = 0;
        assert!(bad.validate().is_err());
        // The paper's recipes keep their window throughout; a schedule switches it from its epoch on.
        assert!((1..=125).all(|e| m.timesteps_at(e) == 100));
        let scheduled = Recipe { timesteps: 20, window_milestones: vec![(13, 100), (5, 50)], ..m.clone() };
        assert_eq!([1, 4, 5, 12, 13, 20].map(|e| scheduled.timesteps_at(e)), [20, 20, 50, 50, 100, 100]);
        assert!(scheduled.validate().is_ok());
        for milestone in [(0, 100), (3, 0)] {
            assert!(Recipe { window_milestones: vec![milestone], ..m.clone() }.validate().is_err());
        }
    }

    #[test]
    fn the_short_window_rule_scales_only_short_windows_and_only_once() {
        let paper = Recipe::paper_mnist();
        assert_eq!(paper.clone().with_short_window_rule(), paper, "T = 100 is untouched");
        let quick = Recipe::paper_mnist().quick();
        assert_eq!(quick.clone().with_short_window_rule(), quick, "T = 20 is untouched");
        let short = Recipe { timesteps: 8, test_timesteps: 8, ..quick };
        let ruled = short.clone().with_short_window_rule();
        assert!((ruled.lr - 0.0085 * 8.0 / 20.0).abs() < 1e-15, "{}", ruled.lr);
        assert_eq!(ruled.lr_before_window_rule, Some(0.0085));
        assert_eq!(ruled.clone().with_short_window_rule(), ruled, "applied once");
        let text = serde_json::to_string(&ruled).unwrap();
        assert!(text.contains("lr_before_window_rule"), "{text}");
        let back: Recipe = serde_json::from_str(&text).unwrap();
        assert_eq!(back, ruled);
        assert!(!serde_json::to_string(&short).unwrap().contains("lr_before_window_rule"));
    }
}
