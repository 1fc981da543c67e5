// CUDA kernels of the neuron-window recurrences (crate feature `cuda`), the device twins of the CPU kernels
// in `kernels.rs`. One thread owns one neuron and walks the whole window; a window of `n` neurons over
// `steps` time steps is time-major, element (t, i) at `t * n + i`, so the threads of a warp read and write
// consecutive addresses at every step.
//
// The arithmetic follows the CPU kernels operation by operation (built with --fmad=false, so no product is
// fused into an addition), so the two agree to the last bit on spikes and to rounding on gradients.

#include <stddef.h>

namespace {

__device__ __forceinline__ float natural_log(float x) { return logf(x); }
__device__ __forceinline__ double natural_log(double x) { return log(x); }

// Spike counts at or below this value count as "never fired" in the leak correction (NG_EPS in Rust).
template <typename F>
__device__ __forceinline__ F ng_eps() { return F(1e-3); }

// U(t) = V(t-1) + I(t);  s(t) = [U(t) > threshold];  V(t) = leak * (1 - s(t)) * U(t);  V(0) = 0.
template <typename F>
__device__ void spike_forward(const F* currents, F* spikes, size_t n, size_t steps, F threshold, F leak) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)blockDim.x * gridDim.x) {
        F v = F(0);
        for (size_t t = 0; t < steps; ++t) {
            const size_t at = t * n + i;
            const F u = v + currents[at];
            const bool fired = u > threshold;
            spikes[at] = fired ? F(1) : F(0);
            v = fired ? F(0) : leak * u;
        }
    }
}

// delta(t) = s(t) * gain * g(t) + (1 - s(t)) * delta(t+1),  delta(T+1) = 0, with
// gain = scale * NG when leak_corrected (NG from the neuron's own spike train), gain = scale otherwise.
template <typename F>
__device__ void spike_backward(const F* spikes, const F* grad, F* out, size_t n, size_t steps, F scale, F leak,
                               int leak_corrected) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)blockDim.x * gridDim.x) {
        F gain = scale;
        if (leak_corrected) {
            F leaky = F(0);
            F count = F(0);
            for (size_t t = 0; t < steps; ++t) {
                const F s = spikes[t * n + i] == F(1) ? F(1) : F(0);
                leaky = leak * leaky + s;
                count += s;
            }
            const F fired = leaky > ng_eps<F>() ? F(1) : F(0);
            const F guard = count < ng_eps<F>() ? F(1) : F(0);
            gain = gain * (fired + natural_log(leak) * leaky / (count + guard));
        }
        F delta = F(0);
        for (size_t t = steps; t-- > 0;) {
            const size_t at = t * n + i;
            if (spikes[at] == F(1)) {
                delta = gain * grad[at];
            }
            out[at] = delta;
        }
    }
}

// M(t) = leak * (M(t-1) + I(t)), M(0) = 0;  y = M(T) / (threshold * T).
template <typename F>
__device__ void readout_forward(const F* currents, F* out, size_t n, size_t steps, F threshold, F leak) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)blockDim.x * gridDim.x) {
        F m = F(0);
        for (size_t t = 0; t < steps; ++t) {
            m = leak * (m + currents[t * n + i]);
        }
        out[i] = m / (threshold * F(steps));
    }
}

}  // namespace

#define SNN_NEURON_KERNELS(F, SUFFIX)                                                                         \
    extern "C" __global__ void spike_forward_##SUFFIX(const F* currents, F* spikes, size_t n, size_t steps,   \
                                                      F threshold, F leak) {                                  \
        spike_forward<F>(currents, spikes, n, steps, threshold, leak);                                        \
    }                                                                                                         \
    extern "C" __global__ void spike_backward_##SUFFIX(const F* spikes, const F* grad, F* out, size_t n,      \
                                                       size_t steps, F scale, F leak, int leak_corrected) {   \
        spike_backward<F>(spikes, grad, out, n, steps, scale, leak, leak_corrected);                          \
    }                                                                                                         \
    extern "C" __global__ void readout_forward_##SUFFIX(const F* currents, F* out, size_t n, size_t steps,    \
                                                        F threshold, F leak) {                                \
        readout_forward<F>(currents, out, n, steps, threshold, leak);                                         \
    }

SNN_NEURON_KERNELS(float, f32)
SNN_NEURON_KERNELS(double, f64)
