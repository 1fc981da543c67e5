//! Reusable float buffers for passes that run a window in parts.

use std::any::Any;
use std::cell::RefCell;
use std::sync::Mutex;

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
        buffer.resize(len, F::zero());
        buffer
    }

    /// A buffer of `len` values for a caller that writes every one of them before it reads any: it holds
    /// whatever an earlier use left (zeros where it had to grow), so no time goes into clearing it.
    pub fn overwritten(&self, len: usize) -> Vec<F> {
        let mut buffer = self.fitting(len);
        buffer.resize(len, F::zero());
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
}
