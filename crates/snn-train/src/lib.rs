//! # snn-train: spike-based backpropagation training
//!
//! The training recipe of Lee et al. 2020 on top of `snn-models`: summed squared error of the leaky readout
//! against one-hot targets, plain SGD with coupled weight decay and a step learning-rate schedule, a fresh
//! Poisson input draw and one dropout mask per mini-batch, evaluation on the test set every epoch, and
//! atomic checkpoints.
//!
//! [`golden`] replays reference training steps (inputs, weights, masks and the reference outputs and
//! gradients) through both training passes and reports every tensor's error. It is public API on purpose:
//! it is how a build on another device or a modified kernel is checked against the method
//! (`cargo xtask golden [--cuda]` and the test suites call it), and it checks the training step, so it
//! lives with the step.

#![warn(missing_docs)]

pub mod analysis;
pub mod collective;
mod error;
pub mod golden;
pub mod loss;
pub mod optim;
mod recipe;
mod trainer;

pub use analysis::{analyse, EnergyModel, SparsityReport};
pub use collective::{Collective, Single};
pub use error::{Error, Result};
pub use optim::Sgd;
pub use recipe::{Recipe, QUICK_TIMESTEPS, RESNET_CIFAR10_LR, STABLE_TIMESTEPS, VGG_CIFAR10_LR};
pub use trainer::{
    evaluate, probe_activity, quiet_layers, sample_rng, stream_rng, train, train_run, train_step,
    train_step_micro_batched, ActivityWarning, BatchProgress, Communication, CrashPoint, EpochMetrics, EvalResult,
    LayerRate, RunFiles, RunOptions, Silent, Stream, TrainObserver, TrainSummary, WarningTime, QUIET_SPIKES_PER_NEURON,
    STATE_FILE,
};
