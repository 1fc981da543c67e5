//! Seeded data augmentation on `u8` images.

use rand::Rng;

/// Random crop with zero padding followed by a random horizontal flip (the paper's CIFAR-10 training
/// augmentation with `pad = 4`).
///
/// The image (`[C, H, W]`, row-major) is padded by `pad` zero pixels on every side, an `H × W` window is
/// cut at a uniformly drawn offset, and the result is mirrored left-right with probability ½. Draws, in
/// order: row offset, column offset, flip.
pub fn random_crop_flip<R: Rng + ?Sized>(image: &[u8], shape: [usize; 3], pad: usize, rng: &mut R) -> Vec<u8> {
    let [c, h, w] = shape;
    let dy = rng.gen_range(0..=2 * pad) as isize - pad as isize;
    let dx = rng.gen_range(0..=2 * pad) as isize - pad as isize;
    let flip = rng.gen_bool(0.5);
    let mut out = vec![0u8; c * h * w];
    for ch in 0..c {
        for y in 0..h {
            let sy = y as isize + dy;
            if sy < 0 || sy >= h as isize {
                continue;
            }
            for x in 0..w {
                let sx = x as isize + dx;
                if sx < 0 || sx >= w as isize {
                    continue;
                }
                let ox = if flip { w - 1 - x } else { x };
                out[(ch * h + y) * w + ox] = image[(ch * h + sy as usize) * w + sx as usize];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn crops_are_shifts_with_zero_fill_and_flips_mirror() {
        let img: Vec<u8> = (1..=16).collect(); // 1 channel, 4x4
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mut seen_flip = false;
        let mut seen_shift = false;
        for _ in 0..200 {
            let out = random_crop_flip(&img, [1, 4, 4], 1, &mut rng);
            // Every non-zero output pixel is an input pixel; rows stay rows (values within a row differ by < 4).
            for row in out.chunks(4) {
                let vals: Vec<u8> = row.iter().copied().filter(|&v| v > 0).collect();
                if let (Some(mn), Some(mx)) = (vals.iter().min(), vals.iter().max()) {
                    assert!(mx - mn < 4 && (mn - 1) / 4 == (mx - 1) / 4, "{row:?}");
                }
                if vals.len() >= 2 && vals[0] > vals[1] {
                    seen_flip = true;
                }
            }
            seen_shift |= out.contains(&0);
            assert!(out.iter().filter(|&&v| v > 0).count() >= 9);
        }
        assert!(seen_flip && seen_shift);
        // Zero padding never moves pixels within the image when the offset is zero: pad 0 is the identity up to a flip.
        let out = random_crop_flip(&img, [1, 4, 4], 0, &mut rng);
        assert!(out == img || out.chunks(4).zip(img.chunks(4)).all(|(a, b)| a.iter().rev().eq(b.iter())));
    }
}
