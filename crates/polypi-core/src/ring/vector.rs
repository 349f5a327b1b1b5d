//! Element-wise ring kernels compiled for the CPU's vector unit, picked at run time.
//!
//! The crate is built for the baseline x86-64 target (SSE2), where the compiler cannot use a
//! 64-bit vector multiply; wrapping `u64` loops (multiply-adds of shares, depthwise taps,
//! polynomial powers) then run one element at a time. [`on_vector_unit`] runs a kernel inside
//! a function compiled with AVX-512 (`vpmullq`, 8 lanes) or AVX2 (4 lanes, the 64-bit multiply
//! emulated from 32-bit ones) enabled, so that the kernel's loops, inlined there, are
//! vectorised for that unit. The unit is the GEMM's ([`GemmKernel::detected`]: the fastest the
//! CPU has, or the one `POLYPI_GEMM_KERNEL` forces), so one variable selects the whole
//! arithmetic path. Results do not depend on the unit (wrapping integer arithmetic is exact).

use crate::ring::gemm::GemmKernel;

/// Runs `kernel` compiled for the vector unit [`GemmKernel::detected`] names: the closure is
/// inlined into a function with that unit's target features. Mark the closure
/// `#[inline(always)]` (without it the compiler calls it as a separate, baseline function, and
/// nothing is vectorised) and keep its loop nest in it or in `#[inline(always)]` functions.
#[inline(always)]
pub fn on_vector_unit<R>(kernel: impl FnOnce() -> R) -> R {
    on_unit(GemmKernel::detected(), kernel)
}

/// [`on_vector_unit`] on a given unit (tests run every unit of the CPU); a unit this CPU does
/// not have runs the portable code.
#[inline(always)]
pub(crate) fn on_unit<R>(unit: GemmKernel, kernel: impl FnOnce() -> R) -> R {
    match unit {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: checked at run time that this CPU has the unit's features.
        GemmKernel::Avx512 if unit.is_available() => unsafe { avx512(kernel) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        GemmKernel::Avx2 if unit.is_available() => unsafe { avx2(kernel) },
        _ => kernel(),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
fn avx512<R>(kernel: impl FnOnce() -> R) -> R {
    kernel()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2<R>(kernel: impl FnOnce() -> R) -> R {
    kernel()
}
