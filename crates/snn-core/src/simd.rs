//! Run-time choice of the instruction set the slice kernels run at.
//!
//! A kernel is written once, generic and `#[inline(always)]`; `wide_variants!` compiles it again with the
//! AVX2 and the AVX-512F target features, and `dispatch!` calls the variant of the current [`SimdLevel`].

/// The instruction sets the event and neuron kernels are compiled for, widest last. Every level runs the same code
/// (compiled with the level's target features, so the compiler vectorises it to that width); multiplies and
/// adds stay separate operations (Rust never contracts `a * b + c` into a fused multiply-add), and every sum
/// runs in the order the code spells out, so all levels give the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// The target's baseline (SSE2 on x86-64).
    Portable = 1,
    /// 256-bit vectors (x86-64 with AVX2).
    Avx2 = 2,
    /// 512-bit vectors (x86-64 with AVX-512F).
    Avx512 = 3,
}

impl SimdLevel {
    /// The widest level this CPU runs.
    pub fn detected() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
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

/// Declares the kernel `$base` compiled for AVX2 (`$avx2`) and for AVX-512F (`$avx512`) on x86-64 (the body is
/// inlined into each). The event kernels add or dot rows of 20–512 weights: 256-bit vectors take half the
/// instructions of the baseline's 128-bit ones, 512-bit vectors a quarter; the neuron recurrences stream
/// `T · n` values with selects that the baseline cannot vectorise on byte spikes. Call them through `dispatch!`.
macro_rules! wide_variants {
    (fn $avx2:ident, $avx512:ident = $base:ident<$($g:ident: $bound:path),*>($($a:ident: $t:ty),* $(,)?)
        $(-> $ret:ty)?) => {
        /// The kernel of the same name without the suffix, compiled for AVX2.
        ///
        /// # Safety
        /// Only call it on a CPU with AVX2 ([`SimdLevel::current`]).
        #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2"))]
        unsafe fn $avx2<$($g: $bound),*>($($a: $t),*) $(-> $ret)? {
            $base($($a),*)
        }

        /// The kernel of the same name without the suffix, compiled for AVX-512F.
        ///
        /// # Safety
        /// Only call it on a CPU with AVX-512F ([`SimdLevel::current`]).
        #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx2"))]
        unsafe fn $avx512<$($g: $bound),*>($($a: $t),*) $(-> $ret)? {
            $base($($a),*)
        }
    };
}

/// Calls the variant of a kernel for the current [`SimdLevel`].
macro_rules! dispatch {
    ($avx2:ident, $avx512:ident, $base:ident($($arg:expr),* $(,)?)) => {
        match $crate::simd::SimdLevel::current() {
            // SAFETY: the CPU has AVX-512F (a forced level never exceeds the detected one).
            $crate::simd::SimdLevel::Avx512 => unsafe { $avx512($($arg),*) },
            // SAFETY: the CPU has AVX2.
            $crate::simd::SimdLevel::Avx2 => unsafe { $avx2($($arg),*) },
            $crate::simd::SimdLevel::Portable => $base($($arg),*),
        }
    };
}
