//! The neuron-window ops on CUDA storage (crate feature `cuda`): launches of the kernels in
//! `src/cuda/neuron.cu`, which `build.rs` compiles to PTX. They compute what [`crate::kernels`] computes on
//! the CPU, one thread per neuron over the whole window.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{kernel_name, CudaDType, WrapErr};
use candle_core::{CudaStorage, DType, Layout, WithDType};

use crate::kernels::{BackwardRule, Real};

/// The PTX of `src/cuda/neuron.cu`.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/neuron.ptx"));

/// Name under which the module is cached on each device.
const MODULE: &str = "snn_core_neuron";

/// Threads per block: one per neuron, the grid covering the layer.
const BLOCK: u32 = 256;

/// The contiguous window a layout points at.
fn window<'a, F: CudaDType + DeviceRepr>(
    storage: &'a CudaStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<CudaView<'a, F>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(storage.as_cuda_slice::<F>()?.slice(start..end)),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// The window's `(neurons per step, steps)` for a `[T, ...]` layout.
fn window_dims(layout: &Layout) -> (usize, usize) {
    let steps = layout.dims().first().copied().unwrap_or(0);
    (layout.shape().elem_count().checked_div(steps).unwrap_or(0), steps)
}

/// A grid of one thread per neuron (the kernels stride over any remainder).
fn launch_config(neurons: usize) -> LaunchConfig {
    let blocks = neurons.div_ceil(BLOCK as usize).clamp(1, 65_535) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// Runs `f32` or `f64` code on a storage's dtype.
macro_rules! on_float {
    ($dtype:expr, $op:expr, $f:ident($($arg:expr),*)) => {
        match $dtype {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F64 => $f::<f64>($($arg),*),
            other => candle_core::bail!("{}: unsupported dtype {other:?} (f32 or f64)", $op),
        }
    };
}

/// Spikes `[T, ...]` of neurons with `threshold` and `leak` driven by the currents `[T, ...]` (see
/// [`crate::kernels::spike_forward`]).
pub(crate) fn spike_forward(
    storage: &CudaStorage,
    layout: &Layout,
    threshold: f64,
    leak: f64,
) -> candle_core::Result<CudaStorage> {
    fn run<F: CudaDType + DeviceRepr + WithDType>(
        storage: &CudaStorage,
        layout: &Layout,
        threshold: f64,
        leak: f64,
    ) -> candle_core::Result<CudaStorage> {
        let dev = &storage.device;
        let currents = window::<F>(storage, layout, "spike-window")?;
        let (n, steps) = window_dims(layout);
        let func = dev.get_or_load_custom_func(&kernel_name::<F>("spike_forward"), MODULE, PTX)?;
        // SAFETY: every element is written by the kernel.
        let spikes = unsafe { dev.alloc::<F>(n * steps)? };
        let (threshold, leak) = (F::from_f64(threshold), F::from_f64(leak));
        let mut launch = func.builder();
        launch.arg(&currents).arg(&spikes).arg(&n).arg(&steps).arg(&threshold).arg(&leak);
        // SAFETY: the argument list matches the kernel's signature; buffers hold `n * steps` elements.
        unsafe { launch.launch(launch_config(n)) }.w()?;
        Ok(F::wrap_cuda_slice(spikes, dev.clone()))
    }
    on_float!(storage.dtype(), "spike-window", run(storage, layout, threshold, leak))
}

/// `∂L/∂currents` from the spikes and `∂L/∂spikes` of a window under `rule` (see
/// [`crate::kernels::spike_backward`]).
pub(crate) fn spike_backward(
    spikes: &CudaStorage,
    spikes_layout: &Layout,
    grad: &CudaStorage,
    grad_layout: &Layout,
    rule: BackwardRule<f64>,
) -> candle_core::Result<CudaStorage> {
    fn run<F: Real + CudaDType + DeviceRepr + WithDType>(
        spikes: &CudaStorage,
        spikes_layout: &Layout,
        grad: &CudaStorage,
        grad_layout: &Layout,
        rule: BackwardRule<f64>,
    ) -> candle_core::Result<CudaStorage> {
        const OP: &str = "spike-window-backward";
        let dev = &spikes.device;
        let (n, steps) = window_dims(spikes_layout);
        let (s, g) = (window::<F>(spikes, spikes_layout, OP)?, window::<F>(grad, grad_layout, OP)?);
        if g.len() != n * steps {
            candle_core::bail!("{OP}: spikes and gradient differ in size");
        }
        let func = dev.get_or_load_custom_func(&kernel_name::<F>("spike_backward"), MODULE, PTX)?;
        // SAFETY: every element is written by the kernel.
        let out = unsafe { dev.alloc::<F>(n * steps)? };
        let leak_corrected = i32::from(rule.leak_correction.is_some());
        let (scale, leak) = (F::from_f64(rule.scale), F::from_f64(rule.leak_correction.unwrap_or(1.0)));
        let mut launch = func.builder();
        launch.arg(&s).arg(&g).arg(&out).arg(&n).arg(&steps).arg(&scale).arg(&leak).arg(&leak_corrected);
        // SAFETY: the argument list matches the kernel's signature; buffers hold `n * steps` elements.
        unsafe { launch.launch(launch_config(n)) }.w()?;
        Ok(F::wrap_cuda_slice(out, dev.clone()))
    }
    on_float!(spikes.dtype(), "spike-window-backward", run(spikes, spikes_layout, grad, grad_layout, rule))
}

/// The leaky readout `[...]` of a window of currents `[T, ...]` (see [`crate::kernels::readout_forward`]).
pub(crate) fn readout_forward(
    storage: &CudaStorage,
    layout: &Layout,
    threshold: f64,
    leak: f64,
) -> candle_core::Result<CudaStorage> {
    fn run<F: CudaDType + DeviceRepr + WithDType>(
        storage: &CudaStorage,
        layout: &Layout,
        threshold: f64,
        leak: f64,
    ) -> candle_core::Result<CudaStorage> {
        let dev = &storage.device;
        let currents = window::<F>(storage, layout, "leaky-readout")?;
        let (n, steps) = window_dims(layout);
        let func = dev.get_or_load_custom_func(&kernel_name::<F>("readout_forward"), MODULE, PTX)?;
        // SAFETY: every element is written by the kernel.
        let out = unsafe { dev.alloc::<F>(n)? };
        let (threshold, leak) = (F::from_f64(threshold), F::from_f64(leak));
        let mut launch = func.builder();
        launch.arg(&currents).arg(&out).arg(&n).arg(&steps).arg(&threshold).arg(&leak);
        // SAFETY: the argument list matches the kernel's signature; `currents` holds `n * steps` elements.
        unsafe { launch.launch(launch_config(n)) }.w()?;
        Ok(F::wrap_cuda_slice(out, dev.clone()))
    }
    on_float!(storage.dtype(), "leaky-readout", run(storage, layout, threshold, leak))
}
