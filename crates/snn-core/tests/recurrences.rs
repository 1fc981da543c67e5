//! The neuron recurrences over windows wider than one parallel chunk, run in parts, against plain per-neuron
//! f64 loops of their definitions.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use snn_core::bits::SpikeBits;
use snn_core::kernels::{leak_correction, spike_backward_from, spike_forward_from, BackwardRule, SpikeGains};

#[test]
fn recurrences_in_parts_over_many_chunks_match_per_neuron_loops() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    // 9,000 neurons: two whole chunks of work and a partial one; 12 steps in parts of 5, 5 and 2.
    let (steps, n, threshold, leak) = (12, 9000, 1.0f64, 0.97f64);
    let currents: Vec<f64> = (0..steps * n).map(|_| rng.gen_range(-0.3..0.9)).collect();
    let grad: Vec<f64> = (0..steps * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let parts = [0..5, 5..10, 10..12];

    // Reference: each neuron on its own, U = V + I, s = [U > θ], V = λ(1 − s)U; then the window's
    // leaky count LF and count Tot, and δ(t) = s·(NG/θ)·g + (1 − s)·δ(t+1) from the last step back.
    let mut want_spikes = vec![0u8; steps * n];
    let mut want_delta = vec![0.0; steps * n];
    for i in 0..n {
        let mut v = 0.0;
        let (mut lf, mut tot) = (0.0, 0.0);
        for t in 0..steps {
            let u = v + currents[t * n + i];
            let s = u > threshold;
            want_spikes[t * n + i] = u8::from(s);
            v = if s { 0.0 } else { leak * u };
            lf = leak * lf + f64::from(u8::from(s));
            tot += f64::from(u8::from(s));
        }
        let k = leak_correction(lf, tot, leak) / threshold;
        let mut d = 0.0;
        for t in (0..steps).rev() {
            if want_spikes[t * n + i] == 1 {
                d = k * grad[t * n + i];
            }
            want_delta[t * n + i] = d;
        }
    }

    let mut spikes = vec![0u8; steps * n];
    let mut membrane = vec![0.0; n];
    for part in parts.clone() {
        let range = part.start * n..part.end * n;
        spike_forward_from(&currents[range.clone()], threshold, leak, &mut membrane, &mut spikes[range]);
    }
    assert_eq!(spikes, want_spikes);
    assert!(spikes.iter().filter(|&&s| s == 1).count() > steps * n / 20, "enough neurons fire");

    let rule = BackwardRule { scale: 1.0 / threshold, leak_correction: Some(leak) };
    let mut gains = SpikeGains::new(n, rule);
    for part in parts.clone() {
        gains.add_steps(&spikes[part.start * n..part.end * n]);
    }
    let gain = gains.finish();
    // The same factors from the window kept as bits (9,000 neurons per step: most steps start off a word
    // boundary), to the bit.
    let mut bits = SpikeBits::zeros(steps * n);
    bits.store(0, &spikes);
    assert_eq!(SpikeGains::from_bits(&bits, n, rule), gain);
    let plain = BackwardRule { scale: 0.5, leak_correction: None };
    assert_eq!(SpikeGains::from_bits(&bits, n, plain), vec![0.5; n]);
    let mut delta = vec![0.0; n];
    let mut got = vec![0.0; steps * n];
    for part in parts.into_iter().rev() {
        let range = part.start * n..part.end * n;
        spike_backward_from(&spikes[range.clone()], &grad[range.clone()], &gain, &mut delta, &mut got[range]);
    }
    let err = got.iter().zip(&want_delta).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(err < 1e-12, "{err}");
}
