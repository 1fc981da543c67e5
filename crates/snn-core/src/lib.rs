//! # snn-core: spiking neuron dynamics for Candle
//!
//! The neuron models of Lee et al. 2020 ("Enabling Spike-Based Backpropagation for Training Deep Neural
//! Network Architectures"), written for **layer-major** execution: a neuron layer receives the input
//! currents of its whole time window at once, `I[T, ...]`, and runs the T-step recurrence as a single
//! differentiable Candle op. No per-step graph is built.
//!
//! * [`Neuron`]: leaky integrate-and-fire (LIF) hidden neurons and the integrate-and-fire (IF) neurons that
//!   follow average pooling, with the exact reverse-time backward recurrence of the authors' code
//!   (gradient only at spike times, cut at resets, leak not differentiated, `1/θ` and the leak-correction
//!   factor `NG`).
//! * [`leaky_readout`]: the non-spiking leaky integrator of the output layer (membrane / θ / T).
//! * [`RateEncoder`]: Bernoulli ("Poisson") rate coding of static images, a fresh draw every step.
//! * [`dropout_mask`]: dropout masks held fixed over the whole window.
//! * [`WindowStats`]: per-neuron spike counts and the leak-correction factor.
//!
//! The pure kernels live in [`kernels`]; they operate on slices and are usable without Candle tensors.
//! [`cpu`] runs such kernels on Candle's CPU storage for the custom ops of this and the other crates. With the
//! `cuda` feature the neuron and readout ops also run on CUDA devices, through kernels compiled by `nvcc` at
//! build time that compute the same recurrences.
//!
//! Every random draw takes an explicit `rand::Rng`, so runs are reproducible from their seed.

#![warn(missing_docs)]

pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
pub mod dropout;
pub mod encode;
mod error;
pub mod kernels;
pub mod neuron;
pub mod readout;
pub mod stats;

pub use dropout::dropout_mask;
pub use encode::RateEncoder;
pub use error::{Error, Result};
pub use neuron::{Neuron, PseudoDerivative};
pub use readout::leaky_readout;
pub use stats::WindowStats;

/// Guard used by the leak correction: counts at or below this value are treated as "never fired".
pub const NG_EPS: f64 = 1e-3;
