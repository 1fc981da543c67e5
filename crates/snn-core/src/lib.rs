//! # snn-core: the spiking compute core for Candle
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
//! * [`RateEncoder`]: Bernoulli ("Poisson") rate coding of static images, a fresh draw every step;
//!   [`DirectEncoder`]: the image itself as a constant input current.
//! * [`dropout_mask`]: dropout masks held fixed over the whole window.
//!
//! The synaptic and structural kernels that networks run between neuron layers live here too:
//!
//! * [`events`]: event-driven convolution, product, kernel gradient and at-spike input gradient (weights
//!   added only where input spikes are), as tensor ops and as slice kernels over window parts, with the one
//!   density measure that decides between them and the dense layers ([`events::EVENT_DENSITY_LIMIT`]).
//! * [`conv`]: the differentiable convolution with a leaner backward pass than Candle's.
//! * [`pool`]: average pooling and identity subsampling, on tensors and on window parts.
//! * [`buffers`]: float buffers reused across the parts of a window and between passes.
//! * [`bits`]: spike windows packed one bit per neuron and step, as training keeps them for the backward pass.
//!
//! The pure neuron kernels live in [`kernels`]; they operate on slices and are usable without Candle tensors.
//! [`cpu`] runs such kernels on Candle's CPU storage for the custom ops of this crate. With the `cuda`
//! feature the neuron and readout ops also run on CUDA devices, through kernels compiled by `nvcc` at build
//! time that compute the same recurrences.
//!
//! Every random draw takes an explicit `rand::Rng`, so runs are reproducible from their seed.

#![warn(missing_docs)]

// First: its kernel-variant macros are used by the modules below.
#[macro_use]
mod simd;

pub mod bits;
pub mod buffers;
pub mod conv;
pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
pub mod dropout;
pub mod encode;
mod error;
pub mod events;
pub mod kernels;
pub mod neuron;
pub mod pool;
pub mod readout;

pub use dropout::{dropout_keep, MaskView};
pub use encode::{DirectEncoder, RateEncoder};
pub use error::{Error, Result};
pub use neuron::{Neuron, PseudoDerivative};
pub use readout::leaky_readout;

/// Guard used by the leak correction: counts at or below this value are treated as "never fired".
pub const NG_EPS: f64 = 1e-3;
