//! # snn-train: spike-based backpropagation training
//!
//! The training recipe of Lee et al. 2020 on top of `snn-models`: summed squared error of the leaky readout
//! against one-hot targets, plain SGD with coupled weight decay and a step learning-rate schedule, a fresh
//! Poisson input draw and one dropout mask per mini-batch, evaluation on the test set every epoch, and
//! atomic checkpoints. [`golden`] replays reference training steps to check the numerics.

#![warn(missing_docs)]

pub mod analysis;
mod error;
pub mod golden;
pub mod loss;
pub mod optim;
mod recipe;
mod trainer;

pub use analysis::{analyse, EnergyModel, SparsityReport};
pub use error::{Error, Result};
pub use optim::Sgd;
pub use recipe::Recipe;
pub use trainer::{
    evaluate, stream_rng, train, train_run, train_step, BatchProgress, CrashPoint, EpochMetrics, EvalResult, LayerRate,
    RunFiles, RunOptions, Silent, Stream, TrainObserver, TrainSummary, STATE_FILE,
};
