//! The u64 wrapping GEMM: `C = A * B` over Z_2^64 (row-major), with runtime ISA dispatch.
//!
//! No existing crate multiplies `u64` matrices modulo 2^64 fast (see `docs/sources.md` §7), so
//! this module carries its own kernel:
//!
//! - `B` (`k x n`, row-major) is packed once into column strips of [`NR`] = 8 columns
//!   ([`PackedB`]); strip `s` holds, for every `p in 0..k`, the 8 values `B[p][8s .. 8s+8]`
//!   contiguously (zero padded past column `n`). The layout does not depend on the ISA, so one
//!   packed `B` serves every kernel and every thread.
//! - A register-tiled micro-kernel computes an `MR x 8` tile of `C` over the whole `k` range,
//!   reading `MR` rows of `A` in place (row-major, not packed) and one strip of `B`.
//! - Kernels, picked at run time ([`GemmKernel::detected`]):
//!   - [`GemmKernel::Avx512`] (AVX-512F + DQ): `vpmullq` (`_mm512_mullo_epi64`), tile 8 x 8,
//!     one zmm accumulator per row.
//!   - [`GemmKernel::Avx2`]: AVX2 has no 64-bit low multiply. With `a = a_h 2^32 + a_l` and
//!     `b = b_h 2^32 + b_l`, `a*b mod 2^64 = a_l b_l + ((a_l b_h + a_h b_l) mod 2^32) 2^32`.
//!     The kernel keeps two accumulators per output vector: `_mm256_mul_epu32` adds the full
//!     64-bit `a_l b_l`, and `_mm256_mullo_epi32` of `a` with the 32-bit-halves-swapped `b`
//!     yields both cross products `a_h b_l` and `a_l b_h` (low 32 bits each), accumulated with
//!     32-bit lane adds. The two 32-bit sums are folded into the upper half once per tile, so the
//!     inner loop costs 2 multiplies and 2 adds per 4 MACs. Tile 2 x 8.
//!     **Narrow path** (taken automatically when every value of `A` fits in a signed 32-bit
//!     integer — the server's GEMM, whose `A` is the fixed-point weights, `|w| 2^f < 2^31`):
//!     with `a' = a + 2^31 < 2^32`, `sum_p a_p b_p = sum_p a'_p b_p - 2^31 sum_p b_p` and
//!     `a' b = a' b_l + 2^32 (a' b_h)` (mod 2^64), so `_mm256_mul_epu32` alone does all the
//!     multiplying (one 4-lane `vpmuludq` each for `a' b_l` and `a' b_h`, no `vpmulld`, whose two
//!     uops and 10-cycle latency dominate the wide path), the broadcast of `a'` is a plain load
//!     (`A'` is prepared once per call) and the column sums `sum_p b_p` of each strip are
//!     subtracted once per strip. Tile 3 x 8. Exact over Z_2^64, like every path.
//!   - [`GemmKernel::Scalar`]: portable Rust, tile 4 x 8; the only kernel on non-x86-64 targets.
//! - Large products (`m*k*n > 2^22`) are split over groups of column strips of the one shared
//!   packed `B` with rayon (`B` is never re-packed per thread); each group is sized to stay in L2.
//!
//! Every kernel is bit-identical to the naive wrapping triple loop (tested below for every kernel
//! the running CPU supports).

use std::sync::OnceLock;

use rayon::prelude::*;

/// Width (in columns) of one packed strip of `B`, shared by all kernels.
pub const NR: usize = 8;

/// Products with more multiply-accumulates than this are split over rayon threads.
pub const PAR_THRESHOLD_MACS: usize = 1 << 22;

/// Target size in bytes of the group of `B` strips one task sweeps (about half an L2).
const STRIP_GROUP_BYTES: usize = 256 * 1024;

/// Largest tile height of any kernel (sizes the scratch tile for partial strips).
const MAX_MR: usize = 8;

/// `B` (k x n, row-major) packed into column strips for the kernel; pack once, multiply many times
/// (weights are packed once per session).
///
/// Layout: `ceil(n / NR)` strips; strip `s` is `k * NR` values, `data[s*k*NR + p*NR + j] =
/// B[p][s*NR + j]` for `s*NR + j < n`, and 0 past the last column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedB {
    /// Rows of B (the shared dimension).
    pub k: usize,
    /// Columns of B.
    pub n: usize,
    data: Vec<u64>,
}

impl PackedB {
    /// Packs a row-major `k x n` matrix (layout in the type's docs). `b.len()` must be at least
    /// `k*n` (callers validate shapes first); a shorter `b` panics (slice index out of range).
    /// Cost: one pass over `b`, `ceil(n/8)*8*k` values allocated.
    pub fn pack(b: &[u64], k: usize, n: usize) -> Self {
        let strips = n.div_ceil(NR);
        let mut data = vec![0u64; strips * k * NR];
        if k > 0 {
            for (s, strip) in data.chunks_exact_mut(k * NR).enumerate() {
                let j0 = s * NR;
                let cols = NR.min(n - j0);
                for (p, dst) in strip.chunks_exact_mut(NR).enumerate() {
                    dst[..cols].copy_from_slice(&b[p * n + j0..p * n + j0 + cols]);
                }
            }
        }
        PackedB { k, n, data }
    }

    /// Wraps data already in the packed layout (see the type's docs), e.g. written directly by
    /// [`crate::ring::im2col::im2col_packed`]. Panics if `data.len() != ceil(n/NR) * k * NR`.
    pub(crate) fn from_packed_data(k: usize, n: usize, data: Vec<u64>) -> Self {
        assert_eq!(data.len(), n.div_ceil(NR) * k * NR, "packed B of {k} x {n}: wrong length");
        PackedB { k, n, data }
    }

    /// Number of column strips (`ceil(n / NR)`).
    fn strips(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// Strip `s` (`k * NR` values).
    fn strip(&self, s: usize) -> &[u64] {
        &self.data[s * self.k * NR..(s + 1) * self.k * NR]
    }
}

/// The GEMM micro-kernels. All produce bit-identical results; they differ only in speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GemmKernel {
    /// AVX-512F + AVX-512DQ (`vpmullq`), x86-64 only.
    Avx512,
    /// AVX2 with the 64-bit multiply emulated from 32-bit multiplies, x86-64 only.
    Avx2,
    /// Portable Rust; available everywhere.
    Scalar,
}

impl GemmKernel {
    /// All kernels, fastest first.
    pub const ALL: [GemmKernel; 3] = [GemmKernel::Avx512, GemmKernel::Avx2, GemmKernel::Scalar];

    /// Short name: `"avx512"`, `"avx2"` or `"scalar"`.
    pub fn name(self) -> &'static str {
        match self {
            GemmKernel::Avx512 => "avx512",
            GemmKernel::Avx2 => "avx2",
            GemmKernel::Scalar => "scalar",
        }
    }

    /// Whether this CPU can run the kernel (run-time feature detection).
    pub fn is_available(self) -> bool {
        match self {
            GemmKernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            GemmKernel::Avx512 => {
                is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq")
            }
            #[cfg(target_arch = "x86_64")]
            GemmKernel::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The kernels this CPU can run, fastest first (always ends with `Scalar`).
    pub fn available() -> Vec<GemmKernel> {
        Self::ALL.into_iter().filter(|k| k.is_available()).collect()
    }

    /// The kernel [`gemm`] and [`gemm_packed`] use: the environment variable
    /// `POLYPI_GEMM_KERNEL` (`avx512`, `avx2` or `scalar`) when set to an available kernel,
    /// otherwise the fastest available one. Decided once per process.
    pub fn detected() -> GemmKernel {
        static CHOICE: OnceLock<GemmKernel> = OnceLock::new();
        *CHOICE.get_or_init(|| {
            let forced = std::env::var("POLYPI_GEMM_KERNEL").ok().and_then(|v| {
                Self::ALL.into_iter().find(|k| k.name().eq_ignore_ascii_case(v.trim()))
            });
            match forced {
                Some(k) if k.is_available() => k,
                _ => Self::available()[0],
            }
        })
    }
}

/// `c[m x n] = a[m x k] * b[k x n]` (row-major, wrapping u64). `c` is overwritten.
///
/// Packs `b` first; when the same `b` is used again, pack it once with [`PackedB::pack`] and call
/// [`gemm_packed`]. Panics if `a.len() < m*k`, `b.len() < k*n` or `c.len() < m*n`.
pub fn gemm(a: &[u64], b: &[u64], c: &mut [u64], m: usize, k: usize, n: usize) {
    let pb = PackedB::pack(b, k, n);
    gemm_packed(a, &pb, c, m);
}

/// `c[m x n] = a[m x k] * B` with a pre-packed `B` (`k = b.k`, `n = b.n`), all row-major,
/// wrapping u64; `c[..m*n]` is overwritten. Uses the [`GemmKernel::detected`] kernel and rayon's
/// current thread pool when `m*k*n > 2^22`. Panics if `a.len() < m*k` or `c.len() < m*n`.
pub fn gemm_packed(a: &[u64], b: &PackedB, c: &mut [u64], m: usize) {
    gemm_packed_with(a, b, c, m, GemmKernel::detected(), true);
}

/// As [`gemm_packed`], on the calling thread only (no rayon), whatever the size. For benchmarks
/// and for callers that already parallelise at a coarser level.
pub fn gemm_packed_st(a: &[u64], b: &PackedB, c: &mut [u64], m: usize) {
    gemm_packed_with(a, b, c, m, GemmKernel::detected(), false);
}

/// As [`gemm_packed`] with an explicit `kernel`; `parallel = false` stays on the calling thread,
/// `parallel = true` uses rayon's current pool when `m*k*n > 2^22`.
/// Panics if the CPU cannot run `kernel` ([`GemmKernel::is_available`]), `a.len() < m*k` or
/// `c.len() < m*n`.
pub fn gemm_packed_with(
    a: &[u64],
    b: &PackedB,
    c: &mut [u64],
    m: usize,
    kernel: GemmKernel,
    parallel: bool,
) {
    let (k, n) = (b.k, b.n);
    assert!(kernel.is_available(), "GEMM kernel {} is not supported by this CPU", kernel.name());
    assert!(a.len() >= m * k, "gemm: a has {} elements, need m*k = {}", a.len(), m * k);
    assert!(c.len() >= m * n, "gemm: c has {} elements, need m*n = {}", c.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c[..m * n].fill(0);
        return;
    }
    // AVX2 narrow path (module docs): A' = A + 2^31 when every A value fits in an i32.
    #[cfg(target_arch = "x86_64")]
    let narrow: Option<Vec<u64>> =
        (kernel == GemmKernel::Avx2).then(|| narrow_operand(&a[..m * k])).flatten();
    #[cfg(not(target_arch = "x86_64"))]
    let narrow: Option<Vec<u64>> = None;
    let (a, tiles, narrow) = match &narrow {
        #[cfg(target_arch = "x86_64")]
        Some(ap) => (&ap[..], NARROW_TILES, true),
        _ => (a, tiles_of(kernel), false),
    };
    let strips = b.strips();
    let mut group = (STRIP_GROUP_BYTES / (k * NR * 8)).clamp(1, strips);
    let threads = rayon::current_num_threads();
    let c = &mut c[..m * n];
    if parallel && threads > 1 && m * k * n > PAR_THRESHOLD_MACS && strips > 1 {
        // At least ~4 tasks per thread for balance, but never less than one strip per task.
        group = group.min(strips.div_ceil(4 * threads)).max(1);
        let cp = CPtr(c.as_mut_ptr());
        (0..strips.div_ceil(group)).into_par_iter().for_each(|g| {
            let s0 = g * group;
            let s1 = (s0 + group).min(strips);
            // SAFETY: `cp` points to the `m*n` elements of `c`, borrowed mutably for this whole
            // call; task `g` writes only columns `s0*NR .. min(s1*NR, n)` of C, and the strip
            // ranges of different tasks are disjoint, so no two tasks write the same element and
            // nobody reads C.
            unsafe { run_strips(tiles, a, b, s0, s1, cp, m) };
            if narrow {
                // SAFETY: as above: this task's strips only.
                unsafe { narrow_correction(b, s0, s1, cp, m) };
            }
        });
    } else {
        let cp = CPtr(c.as_mut_ptr());
        // SAFETY: `cp` points to the `m*n` elements of `c`, exclusively borrowed here.
        unsafe { run_strips(tiles, a, b, 0, strips, cp, m) };
        if narrow {
            // SAFETY: as above.
            unsafe { narrow_correction(b, 0, strips, cp, m) };
        }
    }
}

/// `A' = A + 2^31` (wrapping) when every value of `a` is a signed 32-bit integer (as u64 two's
/// complement), else None (the AVX2 narrow path's operand, module docs).
fn narrow_operand(a: &[u64]) -> Option<Vec<u64>> {
    const OFF: u64 = 1 << 31;
    // x in [-2^31, 2^31) as i64  <=>  x + 2^31 (wrapping) < 2^32.
    if a.iter().all(|&x| x.wrapping_add(OFF) >> 32 == 0) {
        Some(a.iter().map(|&x| x.wrapping_add(OFF)).collect())
    } else {
        None
    }
}

/// Subtracts `2^31 * sum_p B[p][j]` from every row of columns `s0*NR .. min(s1*NR, n)` of C
/// (the narrow path's correction, module docs).
///
/// # Safety
/// `c` points to `m*b.n` elements (row-major) of which no other thread accesses these columns
/// during the call; `s1 <= b.strips()`.
unsafe fn narrow_correction(b: &PackedB, s0: usize, s1: usize, c: CPtr, m: usize) {
    let n = b.n;
    for s in s0..s1 {
        let mut sum = [0u64; NR];
        for row in b.strip(s).chunks_exact(NR) {
            for (acc, v) in sum.iter_mut().zip(row) {
                *acc = acc.wrapping_add(*v);
            }
        }
        let j0 = s * NR;
        let cols = NR.min(n - j0);
        for i in 0..m {
            // SAFETY: row `i < m`, columns `j0..j0+cols <= n` lie inside C and in this call's
            // strips.
            let dst = unsafe { std::slice::from_raw_parts_mut(c.0.add(i * n + j0), cols) };
            for (d, sv) in dst.iter_mut().zip(&sum) {
                *d = d.wrapping_sub(sv << 31);
            }
        }
    }
}

/// The AVX2 narrow path's tiles (`A` replaced by `A' = A + 2^31 < 2^32`).
#[cfg(target_arch = "x86_64")]
const NARROW_TILES: Tiles = &[
    (3, x86::tile_avx2_narrow::<3>),
    (2, x86::tile_avx2_narrow::<2>),
    (1, x86::tile_avx2_narrow::<1>),
];

/// Name of the kernel the dispatcher picks on this CPU: "avx512", "avx2" or "scalar".
pub fn gemm_kernel_name() -> &'static str {
    GemmKernel::detected().name()
}

/// Pointer to C shared by the rayon tasks of one [`gemm_packed_with`] call.
#[derive(Clone, Copy)]
struct CPtr(*mut u64);
// SAFETY: the pointer is only dereferenced by `run_strips`, whose callers guarantee that
// concurrent tasks write disjoint column ranges of C while C is exclusively borrowed.
unsafe impl Send for CPtr {}
// SAFETY: as for `Send`: shared use only writes disjoint elements.
unsafe impl Sync for CPtr {}

/// A micro-kernel: `(k, a, lda, b, c, ldc)` computes `c[r*ldc + j] = sum_p a[r*lda + p] *
/// b[p*NR + j]` for `r < MR` (the kernel's tile height), `j < NR`, overwriting `c`.
///
/// Safety contract: the CPU supports the kernel's ISA; `a` is readable at `r*lda + p` for `r <
/// MR, p < k`; `b` is readable for `k*NR` values; `c` is writable at `r*ldc + j` for `r < MR,
/// j < NR`.
type TileFn = unsafe fn(usize, *const u64, usize, *const u64, *mut u64, usize);

/// Tile kernels of one ISA, tallest first, the last of height 1.
type Tiles = &'static [(usize, TileFn)];

/// The tile kernels of `kernel` (which must be available on this CPU).
fn tiles_of(kernel: GemmKernel) -> Tiles {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        GemmKernel::Avx512 => &[
            (8, x86::tile_avx512::<8>),
            (4, x86::tile_avx512::<4>),
            (2, x86::tile_avx512::<2>),
            (1, x86::tile_avx512::<1>),
        ],
        #[cfg(target_arch = "x86_64")]
        GemmKernel::Avx2 => &[(2, x86::tile_avx2::<2>), (1, x86::tile_avx2::<1>)],
        _ => &[(4, tile_scalar::<4>), (2, tile_scalar::<2>), (1, tile_scalar::<1>)],
    }
}

/// Computes the columns of strips `s0..s1` of `C = A * B` for all `m` rows.
///
/// # Safety
/// `tiles` run on this CPU; `a.len() >= m*b.k`, `b.k > 0`; `c` points to `m*b.n` writable
/// elements (row-major, `ldc = b.n`) of which no other thread accesses columns
/// `s0*NR .. min(s1*NR, n)` during the call; `s1 <= b.strips()`.
unsafe fn run_strips(
    tiles: Tiles,
    a: &[u64],
    b: &PackedB,
    s0: usize,
    s1: usize,
    c: CPtr,
    m: usize,
) {
    let (k, n) = (b.k, b.n);
    let mut scratch = [0u64; MAX_MR * NR];
    let mut i0 = 0;
    while i0 < m {
        let &(mr, tile) = tiles.iter().find(|(h, _)| *h <= m - i0).expect("height-1 tile");
        let ap = a[i0 * k..].as_ptr();
        for s in s0..s1 {
            let j0 = s * NR;
            let cols = NR.min(n - j0);
            let bp = b.strip(s).as_ptr();
            if cols == NR {
                // SAFETY: the rows `i0..i0+mr <= m` of A are in `a` (a.len() >= m*k); the strip
                // holds k*NR values; C's rows `i0..i0+mr` and columns `j0..j0+NR <= n` are inside
                // the `m*n` elements behind `c.0` and belong to this call's strips; the CPU runs
                // `tile` (contract of `tiles`).
                unsafe { tile(k, ap, k, bp, c.0.add(i0 * n + j0), n) };
            } else {
                // SAFETY: as above for `a` and `b`; the scratch tile holds MAX_MR*NR >= mr*NR.
                unsafe { tile(k, ap, k, bp, scratch.as_mut_ptr(), NR) };
                for r in 0..mr {
                    // SAFETY: row `i0+r < m`, columns `j0..j0+cols = n` lie inside C and in this
                    // call's strips; `scratch` is a distinct local array.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            scratch.as_ptr().add(r * NR),
                            c.0.add((i0 + r) * n + j0),
                            cols,
                        )
                    };
                }
            }
        }
        i0 += mr;
    }
}

/// Portable `MR x NR` tile kernel (see [`TileFn`] for the contract).
///
/// # Safety
/// As [`TileFn`].
unsafe fn tile_scalar<const MR: usize>(
    k: usize,
    a: *const u64,
    lda: usize,
    b: *const u64,
    c: *mut u64,
    ldc: usize,
) {
    // SAFETY: the contract of `TileFn`: `b` has k*NR readable values.
    let b = unsafe { std::slice::from_raw_parts(b, k * NR) };
    let mut rows: [&[u64]; MR] = [&[]; MR];
    for (r, row) in rows.iter_mut().enumerate() {
        // SAFETY: row `r < MR` of A has `k` readable values at `a + r*lda`.
        *row = unsafe { std::slice::from_raw_parts(a.add(r * lda), k) };
    }
    let mut acc = [[0u64; NR]; MR];
    for (p, bv) in b.chunks_exact(NR).enumerate() {
        for r in 0..MR {
            let av = rows[r][p];
            for j in 0..NR {
                acc[r][j] = acc[r][j].wrapping_add(av.wrapping_mul(bv[j]));
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        // SAFETY: `c` is writable at `r*ldc + j` for `r < MR`, `j < NR`.
        let dst = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), NR) };
        dst.copy_from_slice(acc_r);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The x86-64 SIMD tile kernels; callers check the CPU features first.
    use super::NR;
    use std::arch::x86_64::*;

    /// AVX2 `MR x 8` tile (two ymm of 4 u64 per row). See the module docs for the arithmetic.
    ///
    /// # Safety
    /// As [`super::TileFn`]; the CPU supports AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn tile_avx2<const MR: usize>(
        k: usize,
        a: *const u64,
        lda: usize,
        b: *const u64,
        c: *mut u64,
        ldc: usize,
    ) {
        // lo[r][v]: sum of a_l*b_l (full 64 bit); cross[r][v]: per 32-bit lane, the sums of
        // a_h*b_l (low lane) and a_l*b_h (high lane), each mod 2^32.
        let mut lo = [[_mm256_setzero_si256(); 2]; MR];
        let mut cross = [[_mm256_setzero_si256(); 2]; MR];
        for p in 0..k {
            // SAFETY: `b` holds k*NR values and `p < k`, so both 4-value loads are in bounds.
            let (b0, b1) = unsafe {
                (
                    _mm256_loadu_si256(b.add(p * NR).cast()),
                    _mm256_loadu_si256(b.add(p * NR + 4).cast()),
                )
            };
            // Swap the 32-bit halves of each u64: (b_l, b_h) -> (b_h, b_l).
            let s0 = _mm256_shuffle_epi32::<0b10_11_00_01>(b0);
            let s1 = _mm256_shuffle_epi32::<0b10_11_00_01>(b1);
            for r in 0..MR {
                // SAFETY: row `r < MR`, column `p < k` of A is readable by the contract.
                let av = _mm256_set1_epi64x(unsafe { a.add(r * lda + p).read() } as i64);
                lo[r][0] = _mm256_add_epi64(lo[r][0], _mm256_mul_epu32(av, b0));
                lo[r][1] = _mm256_add_epi64(lo[r][1], _mm256_mul_epu32(av, b1));
                cross[r][0] = _mm256_add_epi32(cross[r][0], _mm256_mullo_epi32(av, s0));
                cross[r][1] = _mm256_add_epi32(cross[r][1], _mm256_mullo_epi32(av, s1));
            }
        }
        let hi_mask = _mm256_set1_epi64x(0xFFFF_FFFF_0000_0000u64 as i64);
        for r in 0..MR {
            for v in 0..2 {
                // Upper half of (x + (x << 32)) is x_low + x_high mod 2^32; keep only it.
                let x = cross[r][v];
                let x = _mm256_and_si256(_mm256_add_epi64(x, _mm256_slli_epi64::<32>(x)), hi_mask);
                let out = _mm256_add_epi64(lo[r][v], x);
                // SAFETY: `c` is writable at `r*ldc + 4v .. r*ldc + 4v + 4` (r < MR, 4v+4 <= NR).
                unsafe { _mm256_storeu_si256(c.add(r * ldc + 4 * v).cast(), out) };
            }
        }
    }

    /// AVX2 narrow `MR x 8` tile: every `a` value is below 2^32 (`A' = A + 2^31`); computes
    /// `sum_p a_p b_p` (mod 2^64) from `vpmuludq` only: `a b = a b_l + 2^32 (a b_h)`.
    ///
    /// # Safety
    /// As [`super::TileFn`]; the CPU supports AVX2; every `a` value read is below 2^32.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn tile_avx2_narrow<const MR: usize>(
        k: usize,
        a: *const u64,
        lda: usize,
        b: *const u64,
        c: *mut u64,
        ldc: usize,
    ) {
        // lo[r][v]: sum of a*b_l; hi[r][v]: sum of a*b_h (only its low 32 bits matter).
        let mut lo = [[_mm256_setzero_si256(); 2]; MR];
        let mut hi = [[_mm256_setzero_si256(); 2]; MR];
        for p in 0..k {
            // SAFETY: `b` holds k*NR values and `p < k`, so both 4-value loads are in bounds.
            let (b0, b1) = unsafe {
                (
                    _mm256_loadu_si256(b.add(p * NR).cast()),
                    _mm256_loadu_si256(b.add(p * NR + 4).cast()),
                )
            };
            let h0 = _mm256_srli_epi64::<32>(b0);
            let h1 = _mm256_srli_epi64::<32>(b1);
            for r in 0..MR {
                // SAFETY: row `r < MR`, column `p < k` of A is readable by the contract.
                let av = _mm256_set1_epi64x(unsafe { a.add(r * lda + p).read() } as i64);
                lo[r][0] = _mm256_add_epi64(lo[r][0], _mm256_mul_epu32(av, b0));
                lo[r][1] = _mm256_add_epi64(lo[r][1], _mm256_mul_epu32(av, b1));
                hi[r][0] = _mm256_add_epi64(hi[r][0], _mm256_mul_epu32(av, h0));
                hi[r][1] = _mm256_add_epi64(hi[r][1], _mm256_mul_epu32(av, h1));
            }
        }
        for r in 0..MR {
            for v in 0..2 {
                let out = _mm256_add_epi64(lo[r][v], _mm256_slli_epi64::<32>(hi[r][v]));
                // SAFETY: `c` is writable at `r*ldc + 4v .. r*ldc + 4v + 4` (r < MR, 4v+4 <= NR).
                unsafe { _mm256_storeu_si256(c.add(r * ldc + 4 * v).cast(), out) };
            }
        }
    }

    /// AVX-512 `MR x 8` tile (one zmm of 8 u64 per row), `vpmullq`.
    ///
    /// # Safety
    /// As [`super::TileFn`]; the CPU supports AVX-512F and AVX-512DQ.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn tile_avx512<const MR: usize>(
        k: usize,
        a: *const u64,
        lda: usize,
        b: *const u64,
        c: *mut u64,
        ldc: usize,
    ) {
        let mut acc = [_mm512_setzero_si512(); MR];
        for p in 0..k {
            // SAFETY: `b` holds k*NR values and `p < k`: the 8-value load is in bounds.
            let bv = unsafe { _mm512_loadu_si512(b.add(p * NR).cast()) };
            for (r, acc_r) in acc.iter_mut().enumerate() {
                // SAFETY: row `r < MR`, column `p < k` of A is readable by the contract.
                let av = _mm512_set1_epi64(unsafe { a.add(r * lda + p).read() } as i64);
                *acc_r = _mm512_add_epi64(*acc_r, _mm512_mullo_epi64(av, bv));
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            // SAFETY: `c` is writable at `r*ldc .. r*ldc + NR` (r < MR).
            unsafe { _mm512_storeu_si512(c.add(r * ldc).cast(), *acc_r) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reference: the naive wrapping triple loop.
    fn naive(a: &[u64], b: &[u64], m: usize, k: usize, n: usize) -> Vec<u64> {
        let mut c = vec![0u64; m * n];
        for i in 0..m {
            for p in 0..k {
                let av = a[i * k + p];
                for j in 0..n {
                    c[i * n + j] = c[i * n + j].wrapping_add(av.wrapping_mul(b[p * n + j]));
                }
            }
        }
        c
    }

    /// splitmix64 stream, full-range u64 values.
    fn rand_vec(len: usize, seed: u64) -> Vec<u64> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^ (z >> 31)
            })
            .collect()
    }

    /// Checks every available kernel (single- and multi-thread) against `naive` on one shape;
    /// C starts as garbage to check that it is overwritten.
    fn check_shape(m: usize, k: usize, n: usize, seed: u64) {
        let a = rand_vec(m * k, seed);
        let b = rand_vec(k * n, seed ^ 0xABCD);
        let want = naive(&a, &b, m, k, n);
        let pb = PackedB::pack(&b, k, n);
        for kernel in GemmKernel::available() {
            for parallel in [false, true] {
                let mut c = vec![0xDEAD_BEEF_u64; m * n];
                gemm_packed_with(&a, &pb, &mut c, m, kernel, parallel);
                assert!(c == want, "{} parallel={parallel} m={m} k={k} n={n}", kernel.name());
            }
        }
        let mut c = vec![7u64; m * n];
        gemm(&a, &b, &mut c, m, k, n);
        assert_eq!(c, want, "gemm m={m} k={k} n={n}");
    }

    #[test]
    fn edge_shapes_match_naive() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (1, 1, 8),
            (8, 1, 1),
            (2, 3, 5),
            (3, 7, 9),
            (7, 13, 15),
            (9, 8, 16),
            (13, 17, 17),
            (16, 64, 24),
            (33, 5, 31),
            (1, 4099, 3),
            (5, 2048, 11),
        ] {
            check_shape(m, k, n, (m * 1000 + k * 10 + n) as u64);
        }
    }

    #[test]
    fn zero_sizes() {
        for &(m, k, n) in &[(0, 3, 4), (3, 0, 4), (3, 4, 0), (0, 0, 0), (1, 0, 1)] {
            check_shape(m, k, n, 1);
        }
    }

    #[test]
    fn extreme_values_match_naive() {
        let (m, k, n) = (5, 37, 19);
        for fill in [u64::MAX, 1 << 63, 0xFFFF_FFFF, 1 << 32] {
            let a = vec![fill; m * k];
            let b = vec![fill.wrapping_sub(1); k * n];
            let want = naive(&a, &b, m, k, n);
            let pb = PackedB::pack(&b, k, n);
            for kernel in GemmKernel::available() {
                let mut c = vec![0u64; m * n];
                gemm_packed_with(&a, &pb, &mut c, m, kernel, false);
                assert_eq!(c, want, "{} fill={fill:#x}", kernel.name());
            }
        }
    }

    #[test]
    fn parallel_path_matches_naive() {
        // m*k*n = 4.8M > 2^22: takes the rayon path; run in a 3-thread pool so it splits even
        // on a 1-core machine, with a strip count that does not divide evenly.
        let (m, k, n) = (67, 1031, 70);
        assert!(m * k * n > PAR_THRESHOLD_MACS);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        pool.install(|| check_shape(m, k, n, 42));
        // m = 1 (a linear layer on one sample) still splits over column strips.
        let (m, k, n) = (1, 4096, 1100);
        assert!(m * k * n > PAR_THRESHOLD_MACS);
        pool.install(|| check_shape(m, k, n, 43));
    }

    #[test]
    fn detection_is_consistent() {
        let d = GemmKernel::detected();
        assert!(d.is_available());
        assert_eq!(gemm_kernel_name(), d.name());
        assert!(GemmKernel::Scalar.is_available());
        assert_eq!(*GemmKernel::available().last().unwrap(), GemmKernel::Scalar);
        if std::env::var("POLYPI_GEMM_KERNEL").is_err() {
            assert_eq!(d, GemmKernel::available()[0]);
        }
    }

    #[test]
    fn pack_layout() {
        let (k, n) = (3, 10);
        let b: Vec<u64> = (0..(k * n) as u64).collect();
        let pb = PackedB::pack(&b, k, n);
        assert_eq!(pb.strips(), 2);
        for p in 0..k {
            for j in 0..16 {
                let got = pb.strip(j / NR)[p * NR + j % NR];
                let want = if j < n { b[p * n + j] } else { 0 };
                assert_eq!(got, want);
            }
        }
    }

    #[test]
    #[should_panic(expected = "need m*n")]
    fn short_output_panics() {
        let pb = PackedB::pack(&[1, 2, 3, 4], 2, 2);
        let mut c = vec![0u64; 3];
        gemm_packed(&[1, 2, 3, 4], &pb, &mut c, 2);
    }

    /// `a` of signed 32-bit values (the server's fixed-point weights): the AVX2 narrow path.
    fn narrow_vec(len: usize, seed: u64) -> Vec<u64> {
        rand_vec(len, seed).into_iter().map(|x| (x as i32) as i64 as u64).collect()
    }

    /// Every kernel, single- and multi-thread, with `A` in the narrow range (AVX2 takes its
    /// narrow path), against the naive loop; includes the range's ends -2^31 and 2^31 - 1 and
    /// full-range `B` (random shares).
    fn check_narrow(m: usize, k: usize, n: usize, seed: u64) {
        let mut a = narrow_vec(m * k, seed);
        if a.len() >= 2 {
            a[0] = (i32::MIN as i64) as u64;
            a[1] = i32::MAX as u64;
        }
        assert!(narrow_operand(&a).is_some());
        let b = rand_vec(k * n, seed ^ 0x5555);
        let want = naive(&a, &b, m, k, n);
        let pb = PackedB::pack(&b, k, n);
        for kernel in GemmKernel::available() {
            for parallel in [false, true] {
                let mut c = vec![0xDEAD_BEEF_u64; m * n];
                gemm_packed_with(&a, &pb, &mut c, m, kernel, parallel);
                assert!(
                    c == want,
                    "narrow {} parallel={parallel} m={m} k={k} n={n}",
                    kernel.name()
                );
            }
        }
    }

    #[test]
    fn narrow_path_edges_and_refusal() {
        for &(m, k, n) in &[(1, 1, 1), (2, 3, 5), (3, 7, 9), (9, 8, 16), (33, 5, 31), (5, 2048, 11)]
        {
            check_narrow(m, k, n, (m * 7 + k * 3 + n) as u64);
        }
        // One value just outside the i32 range: the wide path, still exact.
        let (m, k, n) = (4, 9, 13);
        let mut a = narrow_vec(m * k, 9);
        a[5] = 1u64 << 31;
        assert!(narrow_operand(&a).is_none());
        a[5] = (-(1i64 << 31) - 1) as u64;
        assert!(narrow_operand(&a).is_none());
        let b = rand_vec(k * n, 10);
        let pb = PackedB::pack(&b, k, n);
        for kernel in GemmKernel::available() {
            let mut c = vec![0u64; m * n];
            gemm_packed_with(&a, &pb, &mut c, m, kernel, false);
            assert_eq!(c, naive(&a, &b, m, k, n), "{}", kernel.name());
        }
        // Multi-threaded split of the narrow path.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        pool.install(|| check_narrow(67, 1031, 70, 44));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Each kernel (AVX-512, AVX2 narrow and wide, scalar) == the scalar reference, bit for
        /// bit, with small-weight `A`.
        #[test]
        fn random_narrow_shapes_match_naive(
            m in 1usize..20,
            k in 1usize..200,
            n in 1usize..40,
            seed in any::<u64>(),
        ) {
            check_narrow(m, k, n, seed);
        }

        #[test]
        fn random_shapes_match_naive(
            m in 1usize..40,
            k in 1usize..300,
            n in 1usize..40,
            seed in any::<u64>(),
        ) {
            check_shape(m, k, n, seed);
        }

        #[test]
        fn random_values_any_kernel(
            (m, k, n, a, b) in (1usize..12, 1usize..24, 1usize..20).prop_flat_map(|(m, k, n)| (
                Just(m), Just(k), Just(n),
                proptest::collection::vec(any::<u64>(), m * k),
                proptest::collection::vec(any::<u64>(), k * n),
            ))
        ) {
            let want = naive(&a, &b, m, k, n);
            let pb = PackedB::pack(&b, k, n);
            for kernel in GemmKernel::available() {
                let mut c = vec![0u64; m * n];
                gemm_packed_with(&a, &pb, &mut c, m, kernel, false);
                prop_assert_eq!(&c, &want, "{}", kernel.name());
            }
        }
    }
}
