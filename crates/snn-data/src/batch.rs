use rand::seq::SliceRandom;
use rand::Rng;

/// The mini-batches of one pass over a dataset: sample indices, optionally shuffled, in chunks.
///
/// The last batch may be smaller. Shuffling draws from the given generator only, so an epoch's order is
/// reproducible from the run's seed.
#[derive(Debug, Clone)]
pub struct Batches {
    order: Vec<usize>,
    batch_size: usize,
    next: usize,
}

impl Batches {
    /// All `len` indices in order (`rng = None`) or shuffled by `rng`. `batch_size` must be positive.
    pub fn new<R: Rng + ?Sized>(len: usize, batch_size: usize, rng: Option<&mut R>) -> Self {
        let mut order: Vec<usize> = (0..len).collect();
        if let Some(rng) = rng {
            order.shuffle(rng);
        }
        Self { order, batch_size: batch_size.max(1), next: 0 }
    }

    /// Number of batches in the pass.
    pub fn count(&self) -> usize {
        self.order.len().div_ceil(self.batch_size)
    }
}

impl Iterator for Batches {
    type Item = Vec<usize>;

    fn next(&mut self) -> Option<Vec<usize>> {
        if self.next >= self.order.len() {
            return None;
        }
        let end = (self.next + self.batch_size).min(self.order.len());
        let batch = self.order[self.next..end].to_vec();
        self.next = end;
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn covers_every_index_once_and_is_reproducible() {
        let mut r1 = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut r2 = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let a: Vec<Vec<usize>> = Batches::new(10, 4, Some(&mut r1)).collect();
        let b: Vec<Vec<usize>> = Batches::new(10, 4, Some(&mut r2)).collect();
        assert_eq!(a, b);
        assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4, 2]);
        let mut all: Vec<usize> = a.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_ne!(a.concat(), (0..10).collect::<Vec<_>>(), "shuffled");
    }
}
