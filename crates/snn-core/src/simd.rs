//! Run-time choice of the instruction set the slice kernels run at.
//!
//! A kernel is written once, generic and `#[inline(always)]`; `wide_variants!` compiles it again with the
//! AVX2 and the AVX-512F target features, and `dispatch!` calls the variant of the current [`SimdLevel`].

/// The instruction sets the event and neuron kernels are compiled for, widest last. Every level runs the same code
/// (compiled with the level's target features, so the compiler vectorises it to that width), and every sum
/// runs in the order the code spells out. The synaptic kernels (event-driven convolutions and products, their
/// gradients) form `a·b + c` as one fused multiply-add, rounded once, at the AVX2 and AVX-512 levels, and as a
/// product and a sum, rounded twice, at the portable level (Rust never contracts `a * b + c` on its own):
/// AVX2 and AVX-512 give the same bits, the portable level differs from them by rounding. The other kernels
/// (neuron recurrences, pooling, transposes) give the same bits at every level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// The target's baseline (SSE2 on x86-64).
    Portable = 1,
    /// 256-bit vectors and fused multiply-adds (x86-64 with AVX2 and FMA).
    Avx2 = 2,
    /// 512-bit vectors and fused multiply-adds (x86-64 with AVX-512F).
    Avx512 = 3,
}

impl SimdLevel {
    /// The widest level this CPU runs.
    pub fn detected() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            // Every CPU with AVX2 or AVX-512F that shipped also has FMA; it is checked all the same.
            if !std::arch::is_x86_feature_detected!("fma") {
                return SimdLevel::Portable;
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                return SimdLevel::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return SimdLevel::Avx2;
            }
        }
        SimdLevel::Portable
    }

    /// Every level this CPU runs, narrowest first.
    pub fn available() -> Vec<Self> {
        [SimdLevel::Portable, SimdLevel::Avx2, SimdLevel::Avx512]
            .into_iter()
            .filter(|l| *l <= Self::detected())
            .collect()
    }

    /// The level the kernels run at: the one [`SimdLevel::force`] set, else the detected one.
    pub fn current() -> Self {
        match FORCED_LEVEL.load(std::sync::atomic::Ordering::Relaxed) {
            2 => SimdLevel::Avx2,
            3 => SimdLevel::Avx512,
            1 => SimdLevel::Portable,
            _ => Self::detected(),
        }
    }

    /// Runs the kernels at `level` from now on (process-wide), or at the detected level again with `None`:
    /// for tests that check every variant against the portable one, and for benchmarks that compare them.
    /// A level above the detected one is lowered to it, so a forced level never runs instructions the CPU
    /// lacks.
    pub fn force(level: Option<SimdLevel>) {
        let value = level.map_or(0, |l| l.min(Self::detected()) as u8);
        FORCED_LEVEL.store(value, std::sync::atomic::Ordering::Relaxed);
    }

    /// The level's name (`portable`, `avx2`, `avx512`).
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Portable => "portable",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }
}

/// The level [`SimdLevel::force`] set (`SimdLevel as u8`), or 0 for the detected one.
static FORCED_LEVEL: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// How a kernel forms `a·b + c`: [`Fused`] at the AVX2 and AVX-512 levels, [`Separate`] at the portable one
/// (see [`SimdLevel`]). The synaptic kernels take it as a type parameter, so each level's variant is compiled
/// with its own form.
pub(crate) trait MulAdd: Copy + Send + Sync {
    /// `a·b + c`.
    fn mul_add<F: crate::kernels::Real>(a: F, b: F, c: F) -> F;
}

/// `a·b + c` as one fused multiply-add, rounded once (a `vfmadd` instruction in the variants compiled with
/// FMA; never used elsewhere, where it would be a slow library call).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fused;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add<F: crate::kernels::Real>(a: F, b: F, c: F) -> F {
        a.mul_add(b, c)
    }
}

/// `a·b + c` as a product and a sum, each rounded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Separate;

impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add<F: crate::kernels::Real>(a: F, b: F, c: F) -> F {
        a * b + c
    }
}

/// Declares the kernel `$base` compiled for AVX2 with FMA (`$avx2`) and for AVX-512F (`$avx512`) on x86-64
/// (the body is inlined into each). The event kernels add or dot rows of 20–512 weights: 256-bit vectors take
/// half the instructions of the baseline's 128-bit ones, 512-bit vectors a quarter; the neuron recurrences
/// stream `T · n` values with selects that the baseline cannot vectorise on byte spikes. Call them through
/// `dispatch!`. In the `fused fn` form the kernel takes a [`MulAdd`] as its last argument, which the variants
/// pass as [`Fused`] (and `dispatch!`'s portable arm as [`Separate`]).
macro_rules! wide_variants {
    (fn $avx2:ident, $avx512:ident = $base:ident<$($g:ident: $bound:path),*>($($a:ident: $t:ty),* $(,)?)
        $(-> $ret:ty)?) => {
        wide_variants!(@variants $avx2, $avx512, $base, [$($g: $bound),*], [$($a: $t),*], [$($a),*], $(-> $ret)?);
    };
    (fused fn $avx2:ident, $avx512:ident = $base:ident<$($g:ident: $bound:path),*>($($a:ident: $t:ty),* $(,)?)
        $(-> $ret:ty)?) => {
        wide_variants!(
            @variants $avx2, $avx512, $base, [$($g: $bound),*], [$($a: $t),*], [$($a,)* $crate::simd::Fused],
            $(-> $ret)?
        );
    };
    (@variants $avx2:ident, $avx512:ident, $base:ident, [$($g:ident: $bound:path),*], [$($a:ident: $t:ty),*],
        [$($pass:expr),*], $(-> $ret:ty)?) => {
        /// The kernel of the same name without the suffix, compiled for AVX2 with FMA.
        ///
        /// # Safety
        /// Only call it on a CPU with AVX2 and FMA ([`SimdLevel::current`]).
        #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
        #[allow(clippy::too_many_arguments)] // as many as the kernel it wraps
        unsafe fn $avx2<$($g: $bound),*>($($a: $t),*) $(-> $ret)? {
            $base($($pass),*)
        }

        /// The kernel of the same name without the suffix, compiled for AVX-512F.
        ///
        /// # Safety
        /// Only call it on a CPU with AVX-512F and FMA ([`SimdLevel::current`]).
        #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx2,fma"))]
        #[allow(clippy::too_many_arguments)] // as many as the kernel it wraps
        unsafe fn $avx512<$($g: $bound),*>($($a: $t),*) $(-> $ret)? {
            $base($($pass),*)
        }
    };
}

/// Calls the variant of a kernel for the current [`SimdLevel`] (`fused` for kernels declared with
/// `wide_variants!(fused fn ...)`).
macro_rules! dispatch {
    ($avx2:ident, $avx512:ident, $base:ident($($arg:expr),* $(,)?)) => {
        dispatch!(@arms $avx2, $avx512, $base, [$($arg),*], [$($arg),*])
    };
    (fused $avx2:ident, $avx512:ident, $base:ident($($arg:expr),* $(,)?)) => {
        dispatch!(@arms $avx2, $avx512, $base, [$($arg),*], [$($arg,)* $crate::simd::Separate])
    };
    (@arms $avx2:ident, $avx512:ident, $base:ident, [$($arg:expr),*], [$($portable:expr),*]) => {
        match $crate::simd::SimdLevel::current() {
            // SAFETY: the CPU has AVX-512F and FMA (a forced level never exceeds the detected one).
            $crate::simd::SimdLevel::Avx512 => unsafe { $avx512($($arg),*) },
            // SAFETY: the CPU has AVX2 and FMA.
            $crate::simd::SimdLevel::Avx2 => unsafe { $avx2($($arg),*) },
            $crate::simd::SimdLevel::Portable => $base($($portable),*),
        }
    };
}
