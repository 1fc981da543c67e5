//! Spike windows packed one bit per neuron and step: the form a training pass keeps its spikes in between
//! the forward and the backward pass (the backward only needs to know whether a neuron fired).
//!
//! Element `i` of the window is bit `i % 64` of word `i / 64`. Kernels read and write spikes as bytes
//! (0 or 1) over a part of the window; [`SpikeBits::store`] and [`SpikeBits::load`] move such a part in and
//! out at any element offset, word by word when the offset is a multiple of 64. [`SignedSpikeBits`] keeps
//! windows of −1/0/+1 spikes (rate-coded inputs) the same way, two bits per value.

use rayon::prelude::*;

use crate::kernels::Real;

/// Words per task when a part is packed or unpacked by several workers (65,536 neuron-steps); shorter parts
/// run on the calling thread.
const PARALLEL_WORDS: usize = 1024;

/// A window of spikes, one bit each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpikeBits {
    words: Vec<u64>,
    len: usize,
}

impl SpikeBits {
    /// A window of `len` silent neurons-steps.
    pub fn zeros(len: usize) -> Self {
        Self { words: crate::buffers::filled(len.div_ceil(64), 0), len }
    }

    /// Number of neuron-steps.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window holds no neuron-step.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the packed window occupies.
    pub fn bytes(&self) -> usize {
        8 * self.words.len()
    }

    /// Number of spikes in the whole window.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Writes `spikes` (bytes, non-zero = fired) at elements `offset .. offset + spikes.len()`.
    ///
    /// # Panics
    /// When the range runs past the window.
    pub fn store(&mut self, offset: usize, spikes: &[u8]) {
        assert!(offset + spikes.len() <= self.len, "spike part runs past the window");
        let mut i = 0;
        // Elements before the first word boundary, one by one.
        while i < spikes.len() && (offset + i) % 64 != 0 {
            self.set(offset + i, spikes[i] != 0);
            i += 1;
        }
        let aligned = &spikes[i..];
        let first_word = (offset + i) / 64;
        let whole = aligned.len() / 64;
        let tail = &aligned[64 * whole..];
        let pack = |(word, chunk): (&mut u64, &[u8])| {
            *word = chunk
                .chunks_exact(8)
                .enumerate()
                .fold(0u64, |w, (j, eight)| w | u64::from(pack_eight(eight)) << (8 * j));
        };
        let words = &mut self.words[first_word..first_word + whole];
        if whole >= PARALLEL_WORDS {
            words.par_chunks_mut(PARALLEL_WORDS).zip(aligned.par_chunks(64 * PARALLEL_WORDS)).for_each(|(w, c)| {
                w.iter_mut().zip(c.chunks_exact(64)).for_each(pack);
            });
        } else {
            words.iter_mut().zip(aligned.chunks_exact(64)).for_each(pack);
        }
        let done = offset + i + (aligned.len() - tail.len());
        for (j, &b) in tail.iter().enumerate() {
            self.set(done + j, b != 0);
        }
    }

    /// Reads elements `offset .. offset + out.len()` into `out` as bytes 0 or 1.
    ///
    /// # Panics
    /// When the range runs past the window.
    pub fn load(&self, offset: usize, out: &mut [u8]) {
        assert!(offset + out.len() <= self.len, "spike part runs past the window");
        let mut i = 0;
        while i < out.len() && (offset + i) % 64 != 0 {
            out[i] = u8::from(self.get(offset + i));
            i += 1;
        }
        let first_word = (offset + i) / 64;
        let len = out.len();
        let whole = (len - i) / 64;
        let (aligned, tail) = out[i..].split_at_mut(64 * whole);
        let unpack = |(chunk, &word): (&mut [u8], &u64)| {
            if word == 0 {
                chunk.fill(0);
            } else {
                for (j, eight) in chunk.chunks_exact_mut(8).enumerate() {
                    eight.copy_from_slice(&unpack_eight((word >> (8 * j)) as u8));
                }
            }
        };
        let words = &self.words[first_word..first_word + whole];
        if whole >= PARALLEL_WORDS {
            aligned.par_chunks_mut(64 * PARALLEL_WORDS).zip(words.par_chunks(PARALLEL_WORDS)).for_each(|(c, w)| {
                c.chunks_exact_mut(64).zip(w).for_each(unpack);
            });
        } else {
            aligned.chunks_exact_mut(64).zip(words).for_each(unpack);
        }
        let tail_start = len - tail.len();
        for (j, b) in tail.iter_mut().enumerate() {
            *b = u8::from(self.get(offset + tail_start + j));
        }
    }

    /// The whole window as bytes 0 or 1.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0; self.len];
        self.load(0, &mut out);
        out
    }

    /// Whether element `i` fired.
    fn get(&self, i: usize) -> bool {
        (self.words[i / 64] >> (i % 64)) & 1 == 1
    }

    fn set(&mut self, i: usize, fired: bool) {
        let bit = 1u64 << (i % 64);
        if fired {
            self.words[i / 64] |= bit;
        } else {
            self.words[i / 64] &= !bit;
        }
    }
}

/// A window of signed spikes, −1, 0 or +1 per neuron and step, in two bits each: whether the neuron fired and
/// whether its spike is negative. Rate-coded input windows have this form (a spike carries the sign of its
/// pixel), so a training pass can keep its input as 2 bits per value instead of a float.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignedSpikeBits {
    fired: SpikeBits,
    negative: SpikeBits,
}

impl SignedSpikeBits {
    /// A silent window of `len` neuron-steps.
    pub fn zeros(len: usize) -> Self {
        Self { fired: SpikeBits::zeros(len), negative: SpikeBits::zeros(len) }
    }

    /// Number of neuron-steps.
    pub fn len(&self) -> usize {
        self.fired.len()
    }

    /// Whether the window holds no neuron-step.
    pub fn is_empty(&self) -> bool {
        self.fired.is_empty()
    }

    /// Bytes the packed window occupies.
    pub fn bytes(&self) -> usize {
        self.fired.bytes() + self.negative.bytes()
    }

    /// Writes `values` at elements `offset .. offset + values.len()` if every one of them is −1, 0 or +1, and
    /// returns whether it did (nothing is written otherwise).
    ///
    /// # Panics
    /// When the range runs past the window.
    pub fn store<F: Real>(&mut self, offset: usize, values: &[F]) -> bool {
        let (one, zero) = (F::one(), F::zero());
        let (mut fired, mut negative) = (vec![0u8; values.len()], vec![0u8; values.len()]);
        let split = |values: &[F], fired: &mut [u8], negative: &mut [u8]| {
            for ((&v, f), n) in values.iter().zip(fired).zip(negative) {
                if !(v == zero || v == one || v == -one) {
                    return false;
                }
                (*f, *n) = (u8::from(v != zero), u8::from(v < zero));
            }
            true
        };
        let signed = if values.len() >= 64 * PARALLEL_WORDS {
            let chunk = 64 * PARALLEL_WORDS;
            values
                .par_chunks(chunk)
                .zip(fired.par_chunks_mut(chunk))
                .zip(negative.par_chunks_mut(chunk))
                .all(|((v, f), n)| split(v, f, n))
        } else {
            split(values, &mut fired, &mut negative)
        };
        if !signed {
            return false;
        }
        self.fired.store(offset, &fired);
        self.negative.store(offset, &negative);
        true
    }

    /// Reads elements `offset .. offset + out.len()` into `out` as −1, 0 or +1.
    ///
    /// # Panics
    /// When the range runs past the window.
    pub fn load<F: Real>(&self, offset: usize, out: &mut [F]) {
        let (mut fired, mut negative) = (vec![0u8; out.len()], vec![0u8; out.len()]);
        self.fired.load(offset, &mut fired);
        self.negative.load(offset, &mut negative);
        let join = |out: &mut [F], fired: &[u8], negative: &[u8]| {
            for ((o, &f), &n) in out.iter_mut().zip(fired).zip(negative) {
                *o = match (f, n) {
                    (0, _) => F::zero(),
                    (_, 0) => F::one(),
                    _ => -F::one(),
                };
            }
        };
        if out.len() >= 64 * PARALLEL_WORDS {
            let chunk = 64 * PARALLEL_WORDS;
            out.par_chunks_mut(chunk)
                .zip(fired.par_chunks(chunk))
                .zip(negative.par_chunks(chunk))
                .for_each(|((o, f), n)| join(o, f, n));
        } else {
            join(out, &fired, &negative);
        }
    }
}

/// One bit per byte of `eight` (8 bytes), bit `j` set when byte `j` is non-zero: the bytes are read as one
/// little-endian word, each byte's bits are folded onto its lowest bit, and one multiplication gathers the
/// eight lowest bits into the top byte.
#[inline(always)]
fn pack_eight(eight: &[u8]) -> u8 {
    let mut x = u64::from_le_bytes([eight[0], eight[1], eight[2], eight[3], eight[4], eight[5], eight[6], eight[7]]);
    if x == 0 {
        return 0;
    }
    // Fold bits 1–7 of every byte onto its bit 0 (only shifts below 8 within a byte reach bit 0).
    x |= x >> 4;
    x |= x >> 2;
    x |= x >> 1;
    x &= 0x0101_0101_0101_0101;
    (x.wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8
}

/// The inverse of [`pack_eight`]: byte `j` is bit `j` of `bits` (0 or 1). The byte is copied into all eight
/// lanes, lane `j` keeps bit `j`, and adding 0x7F to each lane carries a set bit into the lane's top bit.
#[inline(always)]
fn unpack_eight(bits: u8) -> [u8; 8] {
    let x = u64::from(bits).wrapping_mul(0x0101_0101_0101_0101) & 0x8040_2010_0804_0201;
    (((x + 0x7F7F_7F7F_7F7F_7F7F) >> 7) & 0x0101_0101_0101_0101).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Parts stored at every kind of offset (aligned, unaligned, shorter than a word, crossing several
    /// words) read back exactly, against a plain byte window written the same way.
    #[test]
    fn parts_round_trip_at_any_offset() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        // The longest windows take parts long enough to be packed and unpacked by several workers.
        for len in [0usize, 1, 63, 64, 65, 200, 1000, 300_001] {
            let mut bits = SpikeBits::zeros(len);
            let mut reference = vec![0u8; len];
            for _ in 0..40 {
                if len == 0 {
                    break;
                }
                let start = rng.gen_range(0..len);
                let n = rng.gen_range(0..=len - start);
                let part: Vec<u8> =
                    (0..n).map(|_| if rng.gen_bool(0.3) { rng.gen_range(1..=255) } else { 0 }).collect();
                bits.store(start, &part);
                for (r, &p) in reference[start..start + n].iter_mut().zip(&part) {
                    *r = u8::from(p != 0);
                }
                let (a, m) = (rng.gen_range(0..len), rng.gen_range(0..len));
                let (a, b) = (a.min(m), a.max(m));
                let mut out = vec![7u8; b - a];
                bits.load(a, &mut out);
                assert_eq!(out, reference[a..b], "len {len}, read {a}..{b}");
            }
            assert_eq!(bits.to_bytes(), reference);
            assert_eq!(bits.count(), reference.iter().filter(|&&b| b == 1).count());
            assert_eq!(bits.bytes(), 8 * len.div_ceil(64));
        }
    }

    /// The word tricks against the definition, on every byte value and on every 8-byte pattern of zero,
    /// one and other non-zero values that a window could hold.
    #[test]
    fn eight_at_a_time_matches_the_definition() {
        for bits in 0..=255u8 {
            let bytes = unpack_eight(bits);
            for (j, &b) in bytes.iter().enumerate() {
                assert_eq!(b, (bits >> j) & 1, "unpack {bits:#010b} byte {j}");
            }
            assert_eq!(pack_eight(&bytes), bits);
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for _ in 0..10_000 {
            let bytes: Vec<u8> = (0..8).map(|_| [0, 0, 1, 2, 128, 255][rng.gen_range(0..6)]).collect();
            let expected = bytes.iter().enumerate().fold(0u8, |acc, (j, &b)| acc | (u8::from(b != 0) << j));
            assert_eq!(pack_eight(&bytes), expected, "{bytes:?}");
        }
    }

    /// Signed windows read back exactly at any offset; a part holding any other value is refused whole and
    /// leaves the window as it was.
    #[test]
    fn signed_parts_round_trip_and_other_values_are_refused() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let len = 301;
        let values: Vec<f32> = (0..len).map(|_| [-1.0, 0.0, 0.0, 1.0][rng.gen_range(0..4)]).collect();
        let mut bits = SignedSpikeBits::zeros(len);
        assert!(bits.store(0, &values[..37]));
        assert!(bits.store(37, &values[37..]));
        let mut out = vec![7.0f32; len - 5];
        bits.load(5, &mut out);
        assert_eq!(out, values[5..]);
        let before = bits.clone();
        assert!(!bits.store(10, &[1.0f32, 0.5, -1.0]));
        assert!(!bits.store(10, &[-2.0f32]));
        assert!(!bits.store(10, &[f32::NAN]));
        assert_eq!(bits, before);
        assert_eq!(bits.bytes(), 2 * 8 * len.div_ceil(64));
    }

    /// Parts long enough to be split between workers (several chunks of 65,536 values, at an unaligned
    /// offset) read back exactly, and one bad value anywhere in them, even in the last chunk, refuses the
    /// whole part.
    #[test]
    fn long_signed_parts_round_trip_and_are_refused_whole() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let len = 3 * 64 * PARALLEL_WORDS + 1000;
        let values: Vec<f64> = (0..len).map(|_| [-1.0, 0.0, 0.0, 0.0, 1.0][rng.gen_range(0..5)]).collect();
        let mut bits = SignedSpikeBits::zeros(len + 3);
        assert!(bits.store(3, &values));
        let mut out = vec![5.0f64; len];
        bits.load(3, &mut out);
        assert_eq!(out, values);
        let before = bits.clone();
        let mut bad = values.clone();
        bad[len - 10] = 0.25;
        assert!(!bits.store(3, &bad));
        assert_eq!(bits, before, "a refused part writes nothing");
    }

    #[test]
    #[should_panic(expected = "past the window")]
    fn a_part_past_the_end_is_refused() {
        SpikeBits::zeros(10).store(8, &[1, 1, 1]);
    }
}
