//! Running slice kernels on Candle's CPU storage: the glue every custom op of the workspace shares.
//!
//! A [`CpuKernel`] is written once, generic over the float type; [`run_cpu`] borrows its operands' contiguous
//! buffers from `f32` or `f64` storage and calls it, so no op repeats the dtype dispatch.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, WithDType};

use crate::kernels::Real;

/// Borrows the contiguous slice a layout points at; `op` names the caller in the error for a strided layout.
pub fn contiguous_slice<'a, F: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &'static str,
) -> candle_core::Result<&'a [F]> {
    let data = storage.as_slice::<F>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// A kernel over contiguous operand buffers of one float type.
pub trait CpuKernel {
    /// Name used in error messages.
    const NAME: &'static str;
    /// Computes the output buffer from the operands, in the order they were given to [`run_cpu`].
    fn run<F: Real + WithDType>(&self, operands: &[&[F]]) -> Vec<F>;
}

/// Runs `kernel` on operands that are all `f32` or all `f64` and contiguous.
pub fn run_cpu<K: CpuKernel>(kernel: &K, operands: &[(&CpuStorage, &Layout)]) -> candle_core::Result<CpuStorage> {
    fn borrow<'a, F: WithDType>(
        operands: &[(&'a CpuStorage, &Layout)],
        op: &'static str,
    ) -> candle_core::Result<Vec<&'a [F]>> {
        operands.iter().map(|(s, l)| contiguous_slice::<F>(s, l, op)).collect()
    }
    match operands.first().map(|(s, _)| *s) {
        Some(CpuStorage::F32(_)) => Ok(CpuStorage::F32(kernel.run(&borrow::<f32>(operands, K::NAME)?))),
        Some(CpuStorage::F64(_)) => Ok(CpuStorage::F64(kernel.run(&borrow::<f64>(operands, K::NAME)?))),
        Some(other) => candle_core::bail!("{}: unsupported dtype {:?}", K::NAME, other.dtype()),
        None => candle_core::bail!("{}: no operands", K::NAME),
    }
}

/// Builds the global thread pool with the calling thread as one of its workers (worker 0; the pool's size is
/// `RAYON_NUM_THREADS` or the number of CPUs, the calling thread included). Call it first thing in `main`:
/// the parallel sections that thread opens (every kernel of a pass opens some) then start on it at once,
/// instead of being handed to the pool while it sleeps, and the buffers a pass allocates belong to the
/// thread that also frees them, so the allocator reuses them at once. Fails if the global pool exists already.
pub fn join_global_pool() -> Result<(), rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new().use_current_thread().build_global()
}

/// Runs `pass` (a pass of a network, or any other run of many parallel kernels) on a worker of the global
/// thread pool, the calling thread waiting for it once, when the calling thread is not a worker itself (then
/// `pass` runs in place). A pass opens thousands of parallel sections; each one opened from outside the
/// pool hands its work to the workers and puts the caller to sleep until they finish, two thread switches
/// per section, while one opened on a worker starts there at once. Programs that can should call
/// [`join_global_pool`] instead: the buffers of a pass run on another thread come back to the allocator
/// from other threads, which holds on to them for longer (about 13 MB more peak memory in a VGG9 step at
/// T = 100).
pub fn on_worker<R: Send>(pass: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return pass();
    }
    let mut result = None;
    rayon::scope(|_| result = Some(pass()));
    result.expect("the scope ran the pass")
}

#[cfg(test)]
mod tests {
    use super::on_worker;

    /// The pass runs on a worker of the global pool and hands its value back; called again from a worker, it
    /// runs in place on that worker; a panic in it reaches the caller.
    #[test]
    fn a_pass_runs_on_a_worker_and_returns_its_value() {
        assert_eq!(rayon::current_thread_index(), None, "the test starts outside the pool");
        let (outer, inner, value) = on_worker(|| {
            let outer = std::thread::current().id();
            let (inner, value) = on_worker(|| (std::thread::current().id(), rayon::current_thread_index()));
            (outer, inner, value)
        });
        assert_ne!(outer, std::thread::current().id());
        assert_eq!(outer, inner, "a nested call stays on its worker");
        assert!(value.is_some(), "the pass ran on a worker of the pool");
        let caught = std::panic::catch_unwind(|| on_worker(|| panic!("inside the pass")));
        assert!(caught.is_err());
    }

    /// A thread that joined a pool runs its passes in place, as that pool's worker 0 (a local pool here, as
    /// the global one may be built by other tests already).
    #[test]
    fn a_thread_in_the_pool_runs_its_pass_in_place() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        pool.install(|| {
            let here = std::thread::current().id();
            assert_eq!(on_worker(|| std::thread::current().id()), here);
        });
    }
}
