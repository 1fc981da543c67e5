//! Pure slice kernels of the neuron recurrences.
//!
//! All window buffers are laid out time-major: element `(t, i)` of a window over `n` neurons lives at
//! `t * n + i`. The kernels are generic over [`Real`] (`f32`, `f64`) and parallel over neurons.

use rayon::prelude::*;

use crate::bits::SpikeBits;
use crate::dropout::MaskView;

/// Neurons per parallel work item. Small layers run on one thread.
const CHUNK: usize = 4096;

/// Floating-point element types the kernels run on.
pub trait Real:
    num_traits::Float + Spike + Send + Sync + std::ops::AddAssign + std::ops::MulAssign + std::fmt::Debug + 'static
{
    /// Converts an `f64` constant to this type (rounding to nearest for `f32`).
    fn lit(x: f64) -> Self;
}

impl Real for f32 {
    fn lit(x: f64) -> Self {
        x as f32
    }
}

impl Real for f64 {
    fn lit(x: f64) -> Self {
        x
    }
}

/// A spike as a window buffer stores it: 0 or 1, as a float or as a byte (the compact form training keeps
/// for the backward pass).
pub trait Spike: Copy + Send + Sync + PartialEq + 'static {
    /// No spike.
    const SILENT: Self;
    /// A spike.
    const FIRED: Self;
}

impl Spike for u8 {
    const SILENT: Self = 0;
    const FIRED: Self = 1;
}

impl Spike for f32 {
    const SILENT: Self = 0.0;
    const FIRED: Self = 1.0;
}

impl Spike for f64 {
    const SILENT: Self = 0.0;
    const FIRED: Self = 1.0;
}

/// Forward recurrence of a window of spiking neurons with hard reset to zero.
///
/// For every neuron, starting from `V(0) = 0`:
///
/// ```text
/// U(t) = V(t−1) + I(t)
/// s(t) = 1[U(t) > θ]            (strict)
/// V(t) = λ · (1 − s(t)) · U(t)   (reset to zero, then leak)
/// ```
///
/// `currents` and `spikes` hold `T · n` values; `spikes` receives `s(t)` as 0 or 1.
pub fn spike_forward<F: Real, S: Spike>(currents: &[F], n: usize, threshold: F, leak: F, spikes: &mut [S]) {
    let mut membrane = vec![F::zero(); n];
    spike_forward_from(currents, threshold, leak, &mut membrane, spikes);
}

/// [`spike_forward`] continued from the membranes `V` of the step before the window (`membrane`, one per
/// neuron, updated in place to the window's last step), so that a long window can run in consecutive parts.
pub fn spike_forward_from<F: Real, S: Spike>(
    currents: &[F],
    threshold: F,
    leak: F,
    membrane: &mut [F],
    spikes: &mut [S],
) {
    debug_assert_eq!(currents.len(), spikes.len());
    let n = membrane.len();
    if n == 0 {
        return;
    }
    // Each worker runs its chunk of neurons through every step, so the chunk's membranes stay in cache and the
    // window is read and written once, with one parallel split per window instead of one per step.
    let mut rows = chunk_rows(spikes, n);
    membrane.par_chunks_mut(CHUNK).zip(rows.par_iter_mut()).enumerate().for_each(
        // `move`: the parameters are copied into the closure, so the compiler need not reload them after every
        // store in case the stores changed them.
        move |(c, (v, s_rows))| {
            dispatch!(
                forward_chunk_avx2,
                forward_chunk_avx512,
                forward_chunk(v, currents, n, c * CHUNK, s_rows, threshold, leak)
            )
        },
    );
}

/// The rows of a time-major `[T, n]` window cut into chunks of [`CHUNK`] neurons: entry `c` holds chunk `c`
/// of every step, in time order.
fn chunk_rows<S>(window: &mut [S], n: usize) -> Vec<Vec<&mut [S]>> {
    let mut chunks: Vec<Vec<&mut [S]>> = (0..n.div_ceil(CHUNK)).map(|_| Vec::new()).collect();
    for row in window.chunks_exact_mut(n) {
        for (c, piece) in row.chunks_mut(CHUNK).enumerate() {
            chunks[c].push(piece);
        }
    }
    chunks
}

wide_variants!(fn forward_chunk_avx2, forward_chunk_avx512 = forward_chunk<F: Real, S: Spike>(
    membrane: &mut [F], currents: &[F], n: usize, first: usize, spikes: &mut [&mut [S]], threshold: F, leak: F
));

/// The neurons `first..first + membrane.len()` of [`spike_forward_from`] through every step of the window.
#[inline(always)]
fn forward_chunk<F: Real, S: Spike>(
    membrane: &mut [F],
    currents: &[F],
    n: usize,
    first: usize,
    spikes: &mut [&mut [S]],
    threshold: F,
    leak: F,
) {
    for (t, s) in spikes.iter_mut().enumerate() {
        forward_step(membrane, &currents[t * n + first..][..membrane.len()], s, threshold, leak);
    }
}

/// One step of [`spike_forward_from`] over a chunk of neurons.
#[inline(always)]
fn forward_step<F: Real, S: Spike>(membrane: &mut [F], currents: &[F], spikes: &mut [S], threshold: F, leak: F) {
    // Selects rather than branches: whether a neuron fires is data, not a pattern to predict, and branch-free
    // code vectorises.
    for ((v, &i), s) in membrane.iter_mut().zip(currents).zip(spikes.iter_mut()) {
        let u = *v + i;
        let fired = u > threshold;
        *s = if fired { S::FIRED } else { S::SILENT };
        *v = if fired { F::zero() } else { leak * u };
    }
}

/// The leak-correction factor `NG` of one neuron (Lee et al. 2020, §2.2.1.2 as coded by the authors).
///
/// With `LF = Σ_t λ^(T−t) s(t)` the leak-filtered spike count and `Tot = Σ_t s(t)` the spike count,
///
/// ```text
/// NG = 1[LF > ε] + ln(λ) · LF / (Tot + 1[Tot < ε]),   ε = 1e-3
/// ```
///
/// so `NG = 1 − (1/τ)·LF/Tot` for a neuron that fired (`1/τ = −ln λ`) and `NG = 0` for one that never did.
pub fn leak_correction<F: Real>(leaky_count: F, count: F, leak: F) -> F {
    let eps = F::lit(crate::NG_EPS);
    let fired = if leaky_count > eps { F::one() } else { F::zero() };
    let guard = if count < eps { F::one() } else { F::zero() };
    fired + leak.ln() * leaky_count / (count + guard)
}

/// How the spike gradient is formed in [`spike_backward`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackwardRule<F> {
    /// Factor applied to the gradient at spike times (`1/θ` for LIF neurons, 1 for pooling neurons).
    pub scale: F,
    /// `Some(λ)` multiplies by the leak-correction factor `NG` computed with this leak.
    pub leak_correction: Option<F>,
}

/// Exact reverse-time recurrence of the spike-based backward pass (Lee et al. 2020 as coded).
///
/// Given the spikes `s(t)` of the forward pass and `g(t) = ∂L/∂s(t)`, returns `δ(t) = ∂L/∂I(t)`:
///
/// ```text
/// δ(t) = s(t) · NG · scale · g(t) + (1 − s(t)) · δ(t+1),   δ(T+1) = 0
/// ```
///
/// The error reaches the input only at the neuron's own spike times, is cut at every reset, and is not
/// attenuated by the leak (the authors detach it). `NG` is 1 when `rule.leak_correction` is `None`.
pub fn spike_backward<F: Real, S: Spike>(
    spikes: &[S],
    grad_spikes: &[F],
    n: usize,
    rule: BackwardRule<F>,
    grad_currents: &mut [F],
) {
    let gain = spike_gains(spikes, n, rule);
    let mut delta = vec![F::zero(); n];
    spike_backward_from(spikes, grad_spikes, &gain, &mut delta, grad_currents);
}

/// The per-neuron factor `scale · NG` that [`spike_backward`] applies at spike times, from the spikes of the
/// whole window (`T · n` values).
pub fn spike_gains<F: Real, S: Spike>(spikes: &[S], n: usize, rule: BackwardRule<F>) -> Vec<F> {
    let mut gains = SpikeGains::new(n, rule);
    gains.add_steps(spikes);
    gains.finish()
}

/// [`spike_gains`] accumulated part by part: feed the window's steps in time order with
/// [`SpikeGains::add_steps`], then take the factors with [`SpikeGains::finish`].
///
/// Per neuron it keeps the leaky spike trace `LF(t) = λ·LF(t−1) + s(t)` and the count `Tot(t) = Σ s`, the two
/// numbers the leak correction `NG(LF, Tot)` of the whole window needs.
#[derive(Debug, Clone)]
pub struct SpikeGains<F> {
    rule: BackwardRule<F>,
    neurons: usize,
    leaky: Vec<F>,
    count: Vec<F>,
}

impl<F: Real> SpikeGains<F> {
    /// An accumulator over `n` neurons before the window's first step.
    pub fn new(n: usize, rule: BackwardRule<F>) -> Self {
        let len = if rule.leak_correction.is_some() { n } else { 0 };
        Self { rule, neurons: n, leaky: vec![F::zero(); len], count: vec![F::zero(); len] }
    }

    /// Adds the next steps of the window: `spikes` holds whole steps of `n` values each.
    pub fn add_steps<S: Spike>(&mut self, spikes: &[S]) {
        let Some(leak) = self.rule.leak_correction else { return };
        let n = self.leaky.len();
        if n == 0 {
            return;
        }
        // Each worker runs its chunk of neurons through every step (see `spike_forward_from`).
        self.leaky.par_chunks_mut(CHUNK).zip(self.count.par_chunks_mut(CHUNK)).enumerate().for_each(
            move |(c, (lf, tot))| {
                dispatch!(trace_chunk_avx2, trace_chunk_avx512, trace_chunk(lf, tot, spikes, n, c * CHUNK, leak))
            },
        );
    }

    /// The factor `scale · NG` of every neuron from a whole window kept as bits (`T · n` neuron-steps, step
    /// after step): the same values as feeding the window's steps to [`SpikeGains::add_steps`], but each
    /// worker takes a chunk of neurons through every step, so the traces stay in its cache and the window
    /// is read once, one bit per neuron and step.
    pub fn from_bits(bits: &SpikeBits, n: usize, rule: BackwardRule<F>) -> Vec<F> {
        let mut gain = vec![F::zero(); n];
        Self::from_bits_into(bits, rule, &mut gain);
        gain
    }

    /// [`SpikeGains::from_bits`] into `gain`, one factor per neuron (`gain.len()` neurons; its old values are
    /// overwritten), e.g. a buffer kept from an earlier pass.
    pub fn from_bits_into(bits: &SpikeBits, rule: BackwardRule<F>, gain: &mut [F]) {
        let n = gain.len();
        gain.fill(rule.scale);
        let Some(leak) = rule.leak_correction else { return };
        if n == 0 {
            return;
        }
        let steps = bits.len() / n;
        gain.par_chunks_mut(CHUNK).enumerate().for_each(|(c, g)| {
            let (first, len) = (c * CHUNK, g.len());
            let (mut lf, mut tot, mut row) = (vec![F::zero(); len], vec![F::zero(); len], vec![0u8; len]);
            for t in 0..steps {
                bits.load(t * n + first, &mut row);
                dispatch!(trace_chunk_avx2, trace_chunk_avx512, trace_chunk(&mut lf, &mut tot, &row, len, 0, leak));
            }
            apply_leak_correction(g, &lf, &tot, leak);
        });
    }

    /// The factor `scale · NG` of every neuron over the steps added.
    pub fn finish(self) -> Vec<F> {
        let mut gain = vec![self.rule.scale; self.neurons];
        let Some(leak) = self.rule.leak_correction else { return gain };
        gain.par_chunks_mut(CHUNK)
            .zip(self.leaky.par_chunks(CHUNK))
            .zip(self.count.par_chunks(CHUNK))
            .for_each(|((g, lf), tot)| apply_leak_correction(g, lf, tot, leak));
        gain
    }
}

/// Multiplies each factor in `gain` by its neuron's leak correction `NG(LF, Tot)`.
fn apply_leak_correction<F: Real>(gain: &mut [F], leaky: &[F], count: &[F], leak: F) {
    for ((g, &lf), &tot) in gain.iter_mut().zip(leaky).zip(count) {
        *g *= leak_correction(lf, tot, leak);
    }
}

wide_variants!(fn trace_chunk_avx2, trace_chunk_avx512 = trace_chunk<F: Real, S: Spike>(
    leaky: &mut [F], count: &mut [F], spikes: &[S], n: usize, first: usize, leak: F
));

/// The neurons `first..first + leaky.len()` of [`SpikeGains::add_steps`] through every step of `spikes`.
#[inline(always)]
fn trace_chunk<F: Real, S: Spike>(leaky: &mut [F], count: &mut [F], spikes: &[S], n: usize, first: usize, leak: F) {
    for row in spikes.chunks_exact(n) {
        trace_step(leaky, count, &row[first..][..leaky.len()], leak);
    }
}

/// One step of [`SpikeGains::add_steps`] over a chunk of neurons.
#[inline(always)]
fn trace_step<F: Real, S: Spike>(leaky: &mut [F], count: &mut [F], spikes: &[S], leak: F) {
    for ((lf, tot), &s) in leaky.iter_mut().zip(count.iter_mut()).zip(spikes) {
        let s = if s == S::FIRED { F::one() } else { F::zero() };
        *lf = leak * *lf + s;
        *tot += s;
    }
}

/// [`spike_backward`] over a part of the window, run after the parts that follow it: `delta` holds
/// `δ(t+1)` of the step after the part (zero after the window's last step) and is updated in place to the
/// part's first step; `gain` comes from [`spike_gains`] over the whole window.
pub fn spike_backward_from<F: Real, S: Spike>(
    spikes: &[S],
    grad_spikes: &[F],
    gain: &[F],
    delta: &mut [F],
    grad_currents: &mut [F],
) {
    debug_assert_eq!(spikes.len(), grad_spikes.len());
    debug_assert_eq!(spikes.len(), grad_currents.len());
    let n = delta.len();
    if n == 0 {
        return;
    }
    // Each worker runs its chunk of neurons backwards through every step (see `spike_forward_from`).
    let mut rows = chunk_rows(grad_currents, n);
    delta.par_chunks_mut(CHUNK).zip(gain.par_chunks(CHUNK)).zip(rows.par_iter_mut()).enumerate().for_each(
        |(c, ((d, k), out))| {
            let first = c * CHUNK;
            dispatch!(
                backward_chunk_avx2,
                backward_chunk_avx512,
                backward_chunk(d, k, spikes, grad_spikes, n, first, out)
            )
        },
    );
}

wide_variants!(fn backward_chunk_avx2, backward_chunk_avx512 = backward_chunk<F: Real, S: Spike>(
    delta: &mut [F], gain: &[F], spikes: &[S], grad_spikes: &[F], n: usize, first: usize, grad_currents: &mut [&mut [F]]
));

/// The neurons `first..first + delta.len()` of [`spike_backward_from`] through every step, last step first.
#[inline(always)]
fn backward_chunk<F: Real, S: Spike>(
    delta: &mut [F],
    gain: &[F],
    spikes: &[S],
    grad_spikes: &[F],
    n: usize,
    first: usize,
    grad_currents: &mut [&mut [F]],
) {
    let len = delta.len();
    for (t, out) in grad_currents.iter_mut().enumerate().rev() {
        let at = t * n + first;
        backward_step(delta, gain, &spikes[at..][..len], &grad_spikes[at..][..len], out);
    }
}

/// One step of [`spike_backward_from`] over a chunk of neurons.
#[inline(always)]
fn backward_step<F: Real, S: Spike>(
    delta: &mut [F],
    gain: &[F],
    spikes: &[S],
    grad_spikes: &[F],
    grad_currents: &mut [F],
) {
    for ((((d, &k), &s), &g), out) in delta.iter_mut().zip(gain).zip(spikes).zip(grad_spikes).zip(grad_currents) {
        *d = if s == S::FIRED { k * g } else { *d };
        *out = *d;
    }
}

/// Forward pass of the non-spiking leaky readout over a window of `T · n` currents.
///
/// `M(t) = λ · (M(t−1) + I(t))`, `M(0) = 0`; returns `M(T) / (θ · T)` for each of the `n` outputs.
pub fn readout_forward<F: Real>(currents: &[F], n: usize, threshold: F, leak: F, out: &mut [F]) {
    debug_assert_eq!(out.len(), n);
    out.iter_mut().for_each(|m| *m = F::zero());
    if n == 0 {
        return;
    }
    readout_membrane_from(currents, leak, out);
    readout_normalise(out, threshold, currents.len() / n);
}

/// The membrane recurrence of [`readout_forward`] continued over a part of the window: `membrane` holds `M` of
/// the step before `currents` (one per output) and is updated to the part's last step.
pub fn readout_membrane_from<F: Real>(currents: &[F], leak: F, membrane: &mut [F]) {
    if membrane.is_empty() {
        return;
    }
    for row in currents.chunks_exact(membrane.len()) {
        for (m, &i) in membrane.iter_mut().zip(row) {
            *m = leak * (*m + i);
        }
    }
}

/// Turns the final membranes `M(T)` of a window of `steps` steps into the readout `M(T) / (θ · T)`, in place.
pub fn readout_normalise<F: Real>(membrane: &mut [F], threshold: F, steps: usize) {
    let norm = threshold * F::lit(steps as f64);
    membrane.iter_mut().for_each(|m| *m = *m / norm);
}

/// The readout's weight gradient from its input spike counts, added into `acc` (transposed, `[in, classes]`):
/// `acc[i, k] += Σ_b δ[b, k] · counts[b, i]`, where `δ = ∂L/∂y / (θT)` is the gradient of every step's
/// current (the readout's backward is the same at every step, so the counts over the window suffice).
pub fn readout_weight_grad<F: Real>(counts: &[f64], delta: &[F], classes: usize, acc: &mut [F]) {
    let fan_in = acc.len() / classes.max(1);
    for (counts, d) in counts.chunks_exact(fan_in.max(1)).zip(delta.chunks_exact(classes.max(1))) {
        for (row, &c) in acc.chunks_exact_mut(classes).zip(counts) {
            row.iter_mut().zip(d).for_each(|(g, &d)| *g += d * F::lit(c));
        }
    }
}

/// The gradient of the readout's input spikes `[B, in]`, the same at every step: `Σ_k W[k, i] · δ[b, k]`, from
/// the transposed weight `rows` `[in, classes]` and `δ` `[B, classes]`.
pub fn readout_input_grad<F: Real>(rows: &[F], delta: &[F], classes: usize) -> Vec<F> {
    let fan_in = rows.len() / classes.max(1);
    let batch = delta.len() / classes.max(1);
    (0..batch * fan_in)
        .map(|j| {
            let (b, i) = (j / fan_in, j % fan_in);
            (0..classes).fold(F::zero(), |s, k| s + rows[i * classes + k] * delta[b * classes + k])
        })
        .collect()
}

/// Multiplies every row `[.., mask.len()]` of `values` entry by entry with the multipliers of `mask` (a
/// dropout mask held over the window: one row per frame, the mask's rows per sample). Keep flags multiply by
/// their value or by 0, so both forms of the same mask give the same products.
pub fn apply_mask<F: Real>(values: &mut [F], mask: MaskView<'_, F>) {
    if mask.is_empty() {
        return;
    }
    let row = mask.len();
    // Row after row (a row is one step of the batch), each split into chunks of neurons across the workers.
    for values in values.chunks_exact_mut(row) {
        values.par_chunks_mut(CHUNK).enumerate().for_each(|(c, part)| {
            match mask.slice(c * CHUNK..c * CHUNK + part.len()) {
                MaskView::Values(m) => dispatch!(apply_mask_avx2, apply_mask_avx512, mask_values(part, m)),
                MaskView::Keep { flags, value } => {
                    dispatch!(apply_keep_avx2, apply_keep_avx512, keep_values(part, flags, value))
                }
            }
        });
    }
}

wide_variants!(fn apply_mask_avx2, apply_mask_avx512 = mask_values<F: Real>(values: &mut [F], mask: &[F]));
wide_variants!(fn apply_keep_avx2, apply_keep_avx512 = keep_values<F: Real>(values: &mut [F], flags: &[u8], value: F));

/// [`apply_mask`] over a piece of one row with the matching multipliers, inlined into each SIMD variant.
#[inline(always)]
fn mask_values<F: Real>(values: &mut [F], mask: &[F]) {
    values.iter_mut().zip(mask).for_each(|(v, &m)| *v *= m);
}

/// [`apply_mask`] over a piece of one row with the matching keep flags, inlined into each SIMD variant.
#[inline(always)]
fn keep_values<F: Real>(values: &mut [F], flags: &[u8], value: F) {
    values.iter_mut().zip(flags).for_each(|(v, &k)| *v *= if k != 0 { value } else { F::zero() });
}

/// `dst += src`, entry by entry.
pub fn add_into<F: Real>(dst: &mut [F], src: &[F]) {
    dispatch!(add_into_avx2, add_into_avx512, add_slices(dst, src));
}

wide_variants!(fn add_into_avx2, add_into_avx512 = add_slices<F: Real>(dst: &mut [F], src: &[F]));

/// [`add_into`], inlined into each SIMD variant.
#[inline(always)]
fn add_slices<F: Real>(dst: &mut [F], src: &[F]) {
    dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
}

/// Adds the spikes of every neuron, summed over the frames of a byte spike window `[frames, neurons]`, into
/// `counts` (one per neuron).
pub fn add_spike_counts(spikes: &[u8], counts: &mut [u32]) {
    let n = counts.len().max(1);
    // Each worker takes a chunk of neurons through every frame.
    counts.par_chunks_mut(CHUNK).enumerate().for_each(|(c, counts)| {
        let first = c * CHUNK;
        for frame in spikes.chunks_exact(n) {
            counts.iter_mut().zip(&frame[first..]).for_each(|(c, &s)| *c += u32::from(s));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Masks and counts over rows wider than a worker's chunk give what the plain loops give.
    #[test]
    fn masks_and_counts_over_wide_rows_match_the_plain_loops() {
        let (row, rows) = (3 * CHUNK + 5, 3);
        let values: Vec<f32> = (0..row * rows).map(|i| (i % 13) as f32 - 6.0).collect();
        let flags: Vec<u8> = (0..row).map(|i| u8::from(i % 3 != 0)).collect();
        let multipliers: Vec<f32> = flags.iter().map(|&k| if k != 0 { 1.25 } else { 0.0 }).collect();
        let expected: Vec<f32> = values.iter().enumerate().map(|(i, &v)| v * multipliers[i % row]).collect();
        for mask in [MaskView::Values(&multipliers), MaskView::Keep { flags: &flags, value: 1.25 }] {
            let mut masked = values.clone();
            apply_mask(&mut masked, mask);
            assert_eq!(masked, expected);
        }
        let spikes: Vec<u8> = (0..row * rows).map(|i| u8::from(i % 7 == 0 || i % 5 == 1)).collect();
        let mut counts = vec![1u32; row];
        add_spike_counts(&spikes, &mut counts);
        for (n, &c) in counts.iter().enumerate() {
            let fired: u32 = (0..rows).map(|r| u32::from(spikes[r * row + n])).sum();
            assert_eq!(c, 1 + fired, "neuron {n}");
        }
    }

    #[test]
    fn forward_fires_strictly_above_threshold_and_resets() {
        // One neuron, currents chosen so the membrane hits exactly θ at t=2 (no spike) and exceeds it at t=3.
        let currents = [0.5f64, 0.5 / 0.9, 0.2, 0.3];
        let mut spikes = [0.0; 4];
        spike_forward(&currents, 1, 1.0, 0.9, &mut spikes);
        // t1: U=0.5 → V=0.45; t2: U=0.45+0.5555..=1.0055 > 1 → spike.
        assert_eq!(spikes, [0.0, 1.0, 0.0, 0.0]);
        let mut spikes = [0.0; 2];
        spike_forward(&[1.0f64, 0.0], 1, 1.0, 1.0, &mut spikes);
        assert_eq!(spikes, [0.0, 0.0], "U == θ must not fire");
    }

    #[test]
    fn leak_correction_matches_closed_form() {
        let leak = 0.99f64;
        // Fired once at the last step: LF = Tot = 1 → NG = 1 + ln λ.
        assert!((leak_correction(1.0, 1.0, leak) - (1.0 + leak.ln())).abs() < 1e-15);
        // Never fired: NG = 0.
        assert_eq!(leak_correction(0.0, 0.0, leak), 0.0);
    }

    #[test]
    fn backward_without_spikes_is_zero() {
        let spikes = [0.0f64; 6];
        let grad = [1.0f64; 6];
        let mut out = [9.0f64; 6];
        let rule = BackwardRule { scale: 1.0, leak_correction: Some(0.99) };
        spike_backward(&spikes, &grad, 2, rule, &mut out);
        assert_eq!(out, [0.0; 6]);
    }
}
