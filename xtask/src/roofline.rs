//! `cargo xtask bench --profile`: where a training step's time goes, by layer and phase, set against the
//! machine's limits measured in the same run (a roofline).
//!
//! Two limits are measured on all the threads the kernels use: the arithmetic peak, independent chains of
//! fused multiply-adds at the widest vector width the CPU has (AVX-512F, else AVX2 with FMA, else the
//! baseline's separate multiplies and adds), and the memory bandwidth of a streaming triad
//! `a[i] = b[i] + s·c[i]` over arrays far larger than the caches. Each profiled part is then placed against
//! the limit its kind of work meets: operations per second against the peak, bytes per second against the
//! bandwidth; its utilisation is the larger of the two shares.

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;
use snn_models::Profile;

/// The machine's limits, measured.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Peaks {
    /// Floating-point operations per second (GFLOP/s) of f32 fused multiply-adds on every thread.
    pub gflops: f64,
    /// The instruction set the peak was measured with.
    pub isa: &'static str,
    /// Streaming-triad bandwidth (GB/s, three streams counted) on every thread.
    pub gbytes: f64,
    /// Threads both ran on.
    pub threads: usize,
}

/// Independent accumulator chains per thread: enough to cover the FMA latency on two ports.
const CHAINS: usize = 12;

/// `iters` rounds of `acc = acc · a + b` over `CHAINS · W` f32 lanes; returns the sum so nothing is elided.
#[inline(always)]
fn chains<const N: usize>(iters: usize, fused: bool) -> f32 {
    let mut acc = [1.0f32; N];
    let (a, b) = (std::hint::black_box(0.999_999f32), std::hint::black_box(1e-7f32));
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = if fused { v.mul_add(a, b) } else { *v * a + b };
        }
    }
    acc.iter().sum()
}

/// The chains compiled for AVX-512F: `CHAINS` 16-lane registers.
///
/// # Safety
/// Only call on a CPU with AVX-512F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn chains_avx512(iters: usize) -> f32 {
    chains::<{ CHAINS * 16 }>(iters, true)
}

/// The chains compiled for AVX2 with FMA: 8-lane registers (ten chains fit the sixteen registers).
///
/// # Safety
/// Only call on a CPU with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chains_avx2(iters: usize) -> f32 {
    chains::<{ 10 * 8 }>(iters, true)
}

/// One thread's run of the widest chains this CPU has: (the instruction set, operations per round, the sum).
fn widest_chains(iters: usize) -> (&'static str, usize, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX-512F and FMA.
            return ("avx512 fma", 2 * CHAINS * 16, unsafe { chains_avx512(iters) });
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA.
            return ("avx2 fma", 2 * 10 * 8, unsafe { chains_avx2(iters) });
        }
    }
    ("baseline mul+add", 2 * 10 * 4, chains::<{ 10 * 4 }>(iters, false))
}

/// The arithmetic peak on `threads` threads (GFLOP/s) and its instruction set: the best of three runs of
/// `iters` rounds per thread.
fn fma_peak(threads: usize, iters: usize) -> (f64, &'static str) {
    let mut best = 0.0f64;
    let mut isa = "";
    for _ in 0..3 {
        let start = Instant::now();
        let runs: Vec<_> = (0..threads).into_par_iter().map(|_| widest_chains(iters)).collect();
        let seconds = start.elapsed().as_secs_f64();
        let flops: usize = runs.iter().map(|(_, per_round, _)| per_round * iters).sum();
        std::hint::black_box(runs.iter().map(|r| r.2).sum::<f32>());
        isa = runs[0].0;
        best = best.max(flops as f64 / seconds / 1e9);
    }
    (best, isa)
}

/// Streaming-triad bandwidth (GB/s) over three arrays of 128 MiB: the best of three passes.
fn triad_bandwidth() -> f64 {
    let n = 32 << 20;
    let b = vec![1.0f32; n];
    let c = vec![2.0f32; n];
    let mut a = vec![0.0f32; n];
    let s = std::hint::black_box(0.5f32);
    let chunk = 1 << 16;
    let mut best = 0.0f64;
    for _ in 0..3 {
        let start = Instant::now();
        a.par_chunks_mut(chunk).zip(b.par_chunks(chunk)).zip(c.par_chunks(chunk)).for_each(|((a, b), c)| {
            for ((a, b), c) in a.iter_mut().zip(b).zip(c) {
                *a = b + s * c;
            }
        });
        let seconds = start.elapsed().as_secs_f64();
        std::hint::black_box(&a);
        best = best.max((3 * 4 * n) as f64 / seconds / 1e9);
    }
    best
}

/// Measures both limits on the threads the kernels use.
pub fn measure_peaks() -> Peaks {
    let threads = rayon::current_num_threads();
    // About 0.1–0.3 s per run at the widest width.
    let (gflops, isa) = fma_peak(threads, 20_000_000);
    Peaks { gflops, isa, gbytes: triad_bandwidth(), threads }
}

/// One row of the roofline table: a layer's phase per training step.
#[derive(Debug, Clone, Serialize)]
pub struct RooflineRow {
    pub layer: String,
    pub phase: &'static str,
    /// Seconds per step.
    pub seconds: f64,
    /// Share of the step's time.
    pub share: f64,
    pub gflops: f64,
    pub gbytes: f64,
    /// The larger of the shares of the peak and of the bandwidth reached.
    pub utilisation: f64,
}

/// The profile of `steps` training steps that took `step_seconds` each (mean) as rows per step, slowest
/// first, with a last row for the time no phase recorded (buffer set-up, the loss, bookkeeping).
pub fn rows(profile: &Profile, steps: usize, step_seconds: f64, peaks: &Peaks) -> Vec<RooflineRow> {
    let per_step = 1.0 / steps.max(1) as f64;
    let mut rows: Vec<RooflineRow> = profile
        .entries()
        .iter()
        .map(|e| {
            let seconds = e.seconds * per_step;
            let gflops = e.work.flops / e.seconds.max(1e-12) / 1e9;
            let gbytes = e.work.bytes / e.seconds.max(1e-12) / 1e9;
            RooflineRow {
                layer: e.layer.clone(),
                phase: e.phase.name(),
                seconds,
                share: seconds / step_seconds,
                gflops,
                gbytes,
                utilisation: (gflops / peaks.gflops).max(gbytes / peaks.gbytes),
            }
        })
        .collect();
    rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    let other = step_seconds - profile.total_seconds() * per_step;
    rows.push(RooflineRow {
        layer: "step".into(),
        phase: "untimed",
        seconds: other,
        share: other / step_seconds,
        gflops: 0.0,
        gbytes: 0.0,
        utilisation: 0.0,
    });
    rows
}

/// The part that most deserves work: of the rows that take at least 5 % of the step, the one furthest
/// from its limit (lowest utilisation).
pub fn furthest_from_limit(rows: &[RooflineRow]) -> Option<&RooflineRow> {
    rows.iter()
        .filter(|r| r.share >= 0.05 && r.phase != "untimed")
        .min_by(|a, b| a.utilisation.total_cmp(&b.utilisation))
}

/// Prints the peaks, the rows that take at least 0.5 % of the step (the rest summed), the time by phase and
/// the part furthest from its limit.
pub fn print(peaks: &Peaks, rows: &[RooflineRow], step_seconds: f64) {
    println!(
        "limits on {} threads: {:.1} GFLOP/s ({}), {:.1} GB/s (streaming triad); step {:.3} s (mean)",
        peaks.threads, peaks.gflops, peaks.isa, peaks.gbytes, step_seconds
    );
    println!(
        "{:<14} {:<20} {:>10} {:>7} {:>9} {:>8} {:>8}",
        "layer", "phase", "s / step", "share", "GFLOP/s", "GB/s", "of limit"
    );
    let (shown, rest): (Vec<_>, Vec<_>) = rows.iter().partition(|r| r.share >= 0.005 || r.phase == "untimed");
    for r in shown {
        println!(
            "{:<14} {:<20} {:>10.4} {:>6.1}% {:>9.1} {:>8.1} {:>7.1}%",
            r.layer,
            r.phase,
            r.seconds,
            100.0 * r.share,
            r.gflops,
            r.gbytes,
            100.0 * r.utilisation
        );
    }
    let rest_seconds: f64 = rest.iter().map(|r| r.seconds).sum();
    println!(
        "{:<35} {:>10.4} {:>6.1}%",
        format!("({} more, each < 0.5 %)", rest.len()),
        rest_seconds,
        100.0 * rest_seconds / step_seconds
    );
    println!("\nby phase:");
    let mut phases: Vec<(&str, f64)> = Vec::new();
    for r in rows {
        match phases.iter_mut().find(|(p, _)| *p == r.phase) {
            Some((_, s)) => *s += r.seconds,
            None => phases.push((r.phase, r.seconds)),
        }
    }
    phases.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (phase, seconds) in phases {
        println!("  {phase:<20} {seconds:>8.4} s {:>6.1}%", 100.0 * seconds / step_seconds);
    }
    if let Some(r) = furthest_from_limit(rows) {
        println!(
            "\nfurthest from its limit (of the parts taking ≥ 5 % of the step): {} {} at {:.1} % of its limit, {:.1} % of the step",
            r.layer,
            r.phase,
            100.0 * r.utilisation,
            100.0 * r.share
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snn_models::{Phase, Work};
    use std::time::Duration;

    #[test]
    fn rows_are_per_step_against_the_right_limit_with_the_untimed_rest() {
        let peaks = Peaks { gflops: 100.0, isa: "test", gbytes: 10.0, threads: 1 };
        let mut p = Profile::default();
        // Two steps: 0.4 s of convolution at 20 GFLOP/s, 0.2 s of neurons at 5 GB/s.
        p.record("conv", Phase::Forward, Duration::from_millis(400), Work::flops(8e9));
        p.record("conv", Phase::Neurons, Duration::from_millis(200), Work::bytes(1e9));
        let rows = rows(&p, 2, 0.5, &peaks);
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[0].phase, rows[0].seconds), ("forward", 0.2));
        assert!((rows[0].gflops - 20.0).abs() < 1e-9 && (rows[0].utilisation - 0.2).abs() < 1e-9);
        assert!((rows[1].gbytes - 5.0).abs() < 1e-9 && (rows[1].utilisation - 0.5).abs() < 1e-9);
        // 0.5 s per step, 0.3 s of it recorded.
        assert_eq!(rows[2].phase, "untimed");
        assert!((rows[2].seconds - 0.2).abs() < 1e-9 && (rows[2].share - 0.4).abs() < 1e-9);
        let worst = furthest_from_limit(&rows).unwrap();
        assert_eq!(worst.phase, "forward", "20 % of the peak is further from its limit than 50 % of the bandwidth");
    }

    #[test]
    fn the_arithmetic_peak_measurement_runs() {
        // Not a speed assertion: only that the measurement ran and gave a positive, finite rate.
        let (gflops, isa) = fma_peak(1, 1000);
        assert!(gflops.is_finite() && gflops > 0.0 && !isa.is_empty());
    }
}
