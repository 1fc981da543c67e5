//! Reusable float buffers for passes that run a window in parts.

use std::any::Any;
use std::cell::RefCell;
use std::sync::Mutex;

use rayon::prelude::*;

use crate::kernels::Real;

/// Float buffers reused from part to part (and layer to layer) of a pass, and kept by the network from one
/// pass to the next: large windows handed back to the allocator are often returned to the system and
/// faulted in again, page by page, when the next part allocates them.
pub struct BufferPool<F> {
    /// Free buffers, each with the number of passes that ended since it was last handed back.
    free: RefCell<Vec<(Vec<F>, u8)>>,
}

impl<F> Default for BufferPool<F> {
    fn default() -> Self {
        Self { free: RefCell::new(Vec::new()) }
    }
}

impl<F: Real> BufferPool<F> {
    /// Passes a free buffer may sit unused before it is released: a training step is two passes (forward and
    /// backward), which ask for different sizes.
    const IDLE_PASSES: u8 = 2;

    /// A buffer of `len` zeros: the smallest free one that holds them, else a new one.
    pub fn zeroed(&self, len: usize) -> Vec<F> {
        let mut buffer = self.fitting(len);
        buffer.clear();
        grow_filled(&mut buffer, len, F::zero());
        buffer
    }

    /// A buffer of `len` values for a caller that writes every one of them before it reads any: it holds
    /// whatever an earlier use left (zeros where it had to grow), so no time goes into clearing it.
    pub fn overwritten(&self, len: usize) -> Vec<F> {
        let mut buffer = self.fitting(len);
        if buffer.len() >= len {
            buffer.truncate(len);
        } else {
            grow_filled(&mut buffer, len, F::zero());
        }
        buffer
    }

    /// The smallest free buffer with room for `len` values (with its old contents), else a new, empty one.
    fn fitting(&self, len: usize) -> Vec<F> {
        let mut free = self.free.borrow_mut();
        let fitting =
            free.iter().enumerate().filter(|(_, (b, _))| b.capacity() >= len).min_by_key(|(_, (b, _))| b.capacity());
        match fitting.map(|(i, _)| i) {
            Some(i) => free.swap_remove(i).0,
            None => Vec::with_capacity(len),
        }
    }

    /// Hands a buffer back for later [`BufferPool::zeroed`] and [`BufferPool::overwritten`] calls.
    pub fn recycle(&self, buffer: Vec<F>) {
        self.free.borrow_mut().push((buffer, 0));
    }

    /// Ends a pass: releases the buffers that no pass has handed back for two passes (sizes the
    /// network no longer asks for, e.g. after a change of batch size).
    pub fn end_pass(&mut self) {
        self.free.get_mut().retain_mut(|(_, idle)| {
            *idle += 1;
            *idle <= Self::IDLE_PASSES
        });
    }
}

/// Values per task when a buffer is cleared by several workers.
const PARALLEL_FILL: usize = 1 << 16;

/// A new buffer of `len` copies of `value` (e.g. zeros), written by all workers when it is long (see
/// [`grow_filled`]).
pub fn filled<T: Copy + Send + Sync>(len: usize, value: T) -> Vec<T> {
    let mut buffer = Vec::new();
    grow_filled(&mut buffer, len, value);
    buffer
}

/// Extends `buffer` with copies of `value` to `len` values (`len` at least its length). Long runs are written
/// by all workers: the first write to a fresh page faults it in (the kernel clears it), and on the calling
/// thread alone that would leave the other cores idle.
fn grow_filled<T: Copy + Send + Sync>(buffer: &mut Vec<T>, len: usize, value: T) {
    let old = buffer.len();
    if len - old < PARALLEL_FILL {
        buffer.resize(len, value);
        return;
    }
    buffer.reserve_exact(len - old);
    buffer.spare_capacity_mut()[..len - old]
        .par_chunks_mut(PARALLEL_FILL)
        .for_each(|chunk| chunk.fill(std::mem::MaybeUninit::new(value)));
    // SAFETY: the capacity holds `len` values (reserved above) and the loop above initialised every value
    // from `old` to `len`.
    unsafe { buffer.set_len(len) };
}

/// A slot for the [`BufferPool`] that an owner (a network) keeps from one pass to the next, for whichever
/// float type it last ran in.
#[derive(Debug, Default)]
pub struct Scratch(Mutex<Option<Box<dyn Any + Send>>>);

impl Scratch {
    /// The kept pool if it holds `F` buffers, else an empty one.
    pub fn take<F: Real>(&self) -> BufferPool<F> {
        let kept = self.0.lock().ok().and_then(|mut slot| slot.take());
        kept.and_then(|b| b.downcast::<BufferPool<F>>().ok()).map(|b| *b).unwrap_or_default()
    }

    /// Keeps `pool` for the next pass.
    pub fn put<F: Real>(&self, pool: BufferPool<F>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(Box::new(pool));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_zeroed_or_as_left_and_sized_as_asked() {
        let pool = BufferPool::<f32>::default();
        let mut a = pool.zeroed(8);
        assert_eq!(a, vec![0.0; 8]);
        a.iter_mut().for_each(|v| *v = 7.0);
        pool.recycle(a);
        // The same buffer again: cleared when asked for zeros, left as it was otherwise.
        let b = pool.overwritten(5);
        assert_eq!(b, vec![7.0; 5]);
        pool.recycle(b);
        assert_eq!(pool.zeroed(6), vec![0.0; 6]);
        // Longer than what it held (but within its capacity): the new part is zeros.
        let mut c = Vec::with_capacity(8);
        c.extend([1.0; 3]);
        pool.recycle(c);
        assert_eq!(pool.overwritten(6), vec![1.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
    }

    /// Buffers long enough to be cleared by several workers hold the same values as short ones.
    #[test]
    fn long_buffers_are_cleared_and_grown_like_short_ones() {
        let len = 5 * PARALLEL_FILL + 3;
        assert!(filled(len, 0.5f32).iter().all(|&v| v == 0.5));
        assert_eq!(filled::<u8>(len, 0).len(), len);
        let pool = BufferPool::<f64>::default();
        let mut a = pool.zeroed(len);
        assert!(a.len() == len && a.iter().all(|&v| v == 0.0));
        a.iter_mut().for_each(|v| *v = 3.0);
        a.truncate(PARALLEL_FILL);
        pool.recycle(a);
        // Grown past what it held: the old values stay, the rest are zeros.
        let b = pool.overwritten(len);
        assert_eq!(b.len(), len);
        assert!(b[..PARALLEL_FILL].iter().all(|&v| v == 3.0) && b[PARALLEL_FILL..].iter().all(|&v| v == 0.0));
        pool.recycle(b);
        assert!(pool.zeroed(len - 1).iter().all(|&v| v == 0.0));
    }
}
