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
