use rand::seq::SliceRandom;
use rand::Rng;

use crate::{Error, Result};

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
    /// All `len` indices in order (`rng = None`) or shuffled by `rng`, in batches of `batch_size`; a batch
    /// size of 0 is an error.
    pub fn new<R: Rng + ?Sized>(len: usize, batch_size: usize, rng: Option<&mut R>) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::InvalidArgument("the batch size must be at least 1".into()));
        }
        let mut order: Vec<usize> = (0..len).collect();
        if let Some(rng) = rng {
            order.shuffle(rng);
        }
        Ok(Self { order, batch_size, next: 0 })
    }

    /// Number of batches in the whole pass, including those already yielded (unlike [`Iterator::count`],
    /// which consumes the iterator and counts the batches left).
    pub fn batches_per_pass(&self) -> usize {
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
        let a: Vec<Vec<usize>> = Batches::new(10, 4, Some(&mut r1)).unwrap().collect();
        let b: Vec<Vec<usize>> = Batches::new(10, 4, Some(&mut r2)).unwrap().collect();
        assert_eq!(a, b);
        assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4, 2]);
        let mut all: Vec<usize> = a.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_ne!(a.concat(), (0..10).collect::<Vec<_>>(), "shuffled");
    }

    #[test]
    fn a_zero_batch_size_is_an_error_and_the_pass_length_does_not_change_while_iterating() {
        let err = Batches::new::<rand_chacha::ChaCha8Rng>(10, 0, None).unwrap_err().to_string();
        assert!(err.contains("batch size"), "{err}");
        let mut b = Batches::new::<rand_chacha::ChaCha8Rng>(10, 4, None).unwrap();
        assert_eq!(b.batches_per_pass(), 3);
        b.next();
        assert_eq!(b.batches_per_pass(), 3);
        assert_eq!(b.count(), 2, "Iterator::count counts the batches left");
    }
}
