//! Where the time of the taped training pass goes: per layer and phase, the seconds spent and the work done,
//! as arithmetic (floating-point operations) or memory traffic (bytes), so that a benchmark can set each part
//! against the machine's limits (a roofline).
//!
//! Recording is off unless [`SpikingNetwork::start_profile`] turned it on; then every phase of
//! [`SpikingNetwork::forward_taped`] and [`SpikingNetwork::backward`] is timed on the calling thread around
//! the (possibly multi-threaded) kernel it runs. The work is counted, not measured:
//!
//! * synaptic maps count two operations per multiply-accumulate they perform: the dense map's
//!   `frames · macs_per_frame`, an event-driven map's share of it that its input events demand (the share of
//!   non-zero inputs; border effects of padded convolutions are ignored);
//! * neuron recurrences, the bit tape, masks and layout changes count the bytes they must read and write once
//!   (per value: currents or gradients in the float type, spikes as one byte in the part buffers and one bit on
//!   the tape); per-neuron state that stays in cache from step to step is not counted.
//!
//! [`SpikingNetwork::start_profile`]: crate::SpikingNetwork::start_profile
//! [`SpikingNetwork::forward_taped`]: crate::SpikingNetwork::forward_taped
//! [`SpikingNetwork::backward`]: crate::SpikingNetwork::backward

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A phase of a training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// A synaptic map's forward pass: input currents from the input frames (event-driven or dense), or an
    /// average pool's sums.
    Forward,
    /// The neuron recurrence over a part of the window (membranes and spikes, or the readout's membrane),
    /// with the spikes stored on the bit tape and counted.
    Neurons,
    /// The spikes read back from the bit tape, and the backward rule's per-neuron gains computed from them.
    Tape,
    /// The backward recurrence: the error δ(t) at spike times from the spike gradients (after the dropout
    /// mask), cut at resets.
    NeuronsBackward,
    /// Kernel and input gradient of an event-driven convolution, in one pass over the input events.
    KernelAndInputGradient,
    /// A weight (kernel) gradient alone.
    KernelGradient,
    /// An input gradient alone (a synaptic map's or a pool's).
    InputGradient,
    /// A layout change: the weights' transposed copy, the error channel-last, the gradients back to the weights'
    /// layout.
    Transpose,
    /// The optimizer's update of the weights (recorded by the caller that runs it).
    Optimizer,
    /// The input window's spikes drawn from the pixels (recorded by the caller that encodes them).
    Encoding,
    /// The step's dropout masks drawn (recorded by the caller that draws them).
    Dropout,
}

impl Phase {
    /// A short lower-case name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Forward => "forward",
            Phase::Neurons => "neurons",
            Phase::Tape => "tape",
            Phase::NeuronsBackward => "neurons backward",
            Phase::KernelAndInputGradient => "kernel + input grad",
            Phase::KernelGradient => "kernel grad",
            Phase::InputGradient => "input grad",
            Phase::Transpose => "transpose",
            Phase::Optimizer => "optimizer",
            Phase::Encoding => "encoding",
            Phase::Dropout => "dropout masks",
        }
    }
}

/// The work of one timed call: floating-point operations and bytes of memory traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Work {
    /// Floating-point operations (a multiply-accumulate counts two).
    pub flops: f64,
    /// Bytes read and written.
    pub bytes: f64,
}

impl Work {
    /// Arithmetic work of `flops` operations.
    pub fn flops(flops: f64) -> Self {
        Self { flops, bytes: 0.0 }
    }

    /// Memory traffic of `bytes` bytes.
    pub fn bytes(bytes: f64) -> Self {
        Self { flops: 0.0, bytes }
    }
}

/// The accumulated time and work of one layer (or weight) in one phase.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileEntry {
    /// The layer's name (a weight's name for the layout changes of weights and gradients; `step` for work
    /// that belongs to no layer).
    pub layer: String,
    /// The phase.
    pub phase: Phase,
    /// Seconds spent, summed over calls.
    pub seconds: f64,
    /// Work done, summed over calls.
    pub work: Work,
    /// Timed calls.
    pub calls: u64,
}

/// Time and work by layer and phase, in the order each pair first occurred.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    entries: Vec<ProfileEntry>,
}

impl Profile {
    /// The entry of `layer` in `phase`, added empty when new.
    fn entry(&mut self, layer: &str, phase: Phase) -> &mut ProfileEntry {
        let i = match self.entries.iter().position(|e| e.layer == layer && e.phase == phase) {
            Some(i) => i,
            None => {
                let empty =
                    ProfileEntry { layer: layer.to_string(), phase, seconds: 0.0, work: Work::default(), calls: 0 };
                self.entries.push(empty);
                self.entries.len() - 1
            }
        };
        &mut self.entries[i]
    }

    /// Adds one timed call of `phase` in `layer`.
    pub fn record(&mut self, layer: &str, phase: Phase, elapsed: Duration, work: Work) {
        let entry = self.entry(layer, phase);
        entry.seconds += elapsed.as_secs_f64();
        entry.work.flops += work.flops;
        entry.work.bytes += work.bytes;
        entry.calls += 1;
    }

    /// Adds every entry of `other`.
    pub fn merge(&mut self, other: Profile) {
        for e in other.entries {
            let entry = self.entry(&e.layer, e.phase);
            entry.seconds += e.seconds;
            entry.work.flops += e.work.flops;
            entry.work.bytes += e.work.bytes;
            entry.calls += e.calls;
        }
    }

    /// The entries, in the order each (layer, phase) pair first occurred.
    pub fn entries(&self) -> &[ProfileEntry] {
        &self.entries
    }

    /// Seconds of every entry together.
    pub fn total_seconds(&self) -> f64 {
        self.entries.iter().map(|e| e.seconds).sum()
    }
}

/// Times the phases of one pass into a profile when recording is on, and only runs them otherwise.
#[derive(Debug, Default)]
pub(crate) struct Recorder(Option<Mutex<Profile>>);

impl Recorder {
    /// A recorder that records (`on`) or only runs.
    pub(crate) fn new(on: bool) -> Self {
        Self(on.then(|| Mutex::new(Profile::default())))
    }

    /// Runs `f`; when recording, adds its time to `layer`'s `phase` with the work `work` counts from `f`'s
    /// value (not called when not recording).
    pub(crate) fn time<T>(&self, layer: &str, phase: Phase, f: impl FnOnce() -> T, work: impl FnOnce(&T) -> Work) -> T {
        let Some(profile) = &self.0 else { return f() };
        let start = Instant::now();
        let value = f();
        let elapsed = start.elapsed();
        profile.lock().unwrap_or_else(|e| e.into_inner()).record(layer, phase, elapsed, work(&value));
        value
    }

    /// The recorded profile (`None` when not recording).
    pub(crate) fn finish(self) -> Option<Profile> {
        self.0.map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_accumulate_by_layer_and_phase_in_first_seen_order() {
        let mut p = Profile::default();
        let ms = Duration::from_millis;
        p.record("conv1", Phase::Forward, ms(10), Work::flops(100.0));
        p.record("conv1", Phase::Neurons, ms(5), Work::bytes(40.0));
        p.record("conv1", Phase::Forward, ms(30), Work::flops(300.0));
        assert_eq!(p.entries().len(), 2);
        let fwd = &p.entries()[0];
        assert_eq!((fwd.layer.as_str(), fwd.phase, fwd.calls), ("conv1", Phase::Forward, 2));
        assert!((fwd.seconds - 0.040).abs() < 1e-12);
        assert_eq!(fwd.work, Work { flops: 400.0, bytes: 0.0 });
        assert!((p.total_seconds() - 0.045).abs() < 1e-12);

        let mut q = Profile::default();
        q.record("fc", Phase::Optimizer, ms(1), Work::bytes(8.0));
        q.record("conv1", Phase::Neurons, ms(5), Work::bytes(40.0));
        q.record("conv1", Phase::Neurons, ms(5), Work::bytes(40.0));
        p.merge(q);
        let neurons = p.entries().iter().find(|e| e.phase == Phase::Neurons).unwrap();
        assert_eq!((neurons.calls, neurons.work.bytes), (3, 120.0));
        assert_eq!(p.entries()[2].layer, "fc");
    }

    #[test]
    fn a_silent_recorder_runs_but_keeps_nothing() {
        let off = Recorder::new(false);
        let mut counted = false;
        let work = |_: &i32| {
            counted = true;
            Work::default()
        };
        assert_eq!(off.time("l", Phase::Forward, || 7, work), 7);
        assert!(!counted, "the work is not even counted when not recording");
        assert!(off.finish().is_none());
        let on = Recorder::new(true);
        assert_eq!(on.time("l", Phase::Forward, || 7, |&v| Work::flops(f64::from(v))), 7);
        let p = on.finish().unwrap();
        assert_eq!(p.entries()[0].work.flops, 7.0);
    }
}
