//! Direct depthwise convolution over Z_2^64 (MobileNetV2's 3x3 depthwise layers; Sandler et
//! al., CVPR 2018, §3.1), used by the fixed-point twin, both parties' online phase and the
//! dealer's offline material through [`crate::mpc::ops::conv_ring`].
//!
//! A depthwise convolution (`groups == c_in`, one `kh x kw` filter per output channel) has one
//! input channel per group, so the per-group im2col + GEMM of [`crate::ring::im2col`] multiplies
//! a `[c_out/groups, kh*kw]` matrix by a `[kh*kw, out_h*out_w]` one: a GEMM of one or two rows,
//! which cannot fill the GEMM's register tiles, after writing `kh*kw` copies of the input. Here
//! every output plane is accumulated directly, tap by tap:
//!
//! 1. the input plane is copied once into a zero-padded scratch plane, each padded row stored as
//!    `stride` column phases (phase `r` holds columns `r, r + stride, ..`), so that the inputs
//!    of one output row under one tap are a contiguous run for every stride;
//! 2. per output row and tap `(ky, kx)`: `out_row += w[ky][kx] * run` — a contiguous
//!    multiply-add over `out_w` elements with no bounds test inside, which the compiler
//!    vectorises (AVX-512 `vpmullq` or the AVX2 32-bit-multiply emulation, picked at run time
//!    like the GEMM kernel: [`crate::ring::vector`]);
//! 3. groups (one input plane and its `c_out/groups` output planes) are split over rayon's pool.
//!
//! Every tap is applied whatever its weight (no skip of zero weights: the server's time does not
//! depend on which of its weights are zero). The sum is the exact sum over Z_2^64 (wrapping
//! `u64`), so the result is bit-identical to the im2col + GEMM path.

use rayon::prelude::*;

use crate::model::ConvGeom;
use crate::ring::vector::on_vector_unit;

/// Multiply-accumulates per rayon task (at least): small planes are grouped up to this.
const TASK_MACS: usize = 1 << 14;

/// Below this many multiply-accumulates in total the convolution runs on the calling thread.
const PAR_THRESHOLD_MACS: usize = 1 << 17;

/// Whether `geom` is a depthwise convolution this module computes: more than one group and one
/// input channel per group (`groups == c_in`), any channel multiplier `c_out / groups >= 1`.
pub fn is_depthwise(geom: &ConvGeom) -> bool {
    geom.groups > 1 && geom.c_in == geom.groups && geom.c_out.is_multiple_of(geom.groups)
}

/// Depthwise convolution `x [n, c_in, h, w] -> [n, c_out, out_h, out_w]` (NCHW, wrapping `u64`,
/// no bias, no truncation), for `geom` with [`is_depthwise`]. `weight[g]` is the filter block of
/// group (= input channel) `g`: `[c_out/groups, kh*kw]` row-major (PyTorch's
/// `[c_out, 1, kh, kw]` split by group), the layout of [`crate::mpc::encode::EncodedConv`].
///
/// Output channel `co` reads input channel `co / (c_out/groups)`; padding cells are zeros (a
/// valid share of zero, so this is linear and runs on either party's share).
///
/// Panics (callers check these first: [`crate::mpc::ops::conv_ring`] returns an error) if
/// `geom` is not depthwise, `stride == 0`, the kernel is larger than the padded input,
/// `x.len() != n*c_in*h*w`, `weight.len() != groups` or a block is not `(c_out/groups)*kh*kw`
/// long.
pub fn depthwise_conv(x: &[u64], n: usize, geom: &ConvGeom, weight: &[Vec<u64>]) -> Vec<u64> {
    let ConvGeom { c_in, h, w, c_out, kh, kw, stride, padding, groups } = *geom;
    assert!(is_depthwise(geom), "depthwise_conv: not a depthwise geometry {geom:?}");
    assert!(
        stride > 0 && h + 2 * padding >= kh && w + 2 * padding >= kw,
        "depthwise_conv: kernel larger than the padded input {geom:?}"
    );
    assert_eq!(x.len(), n * c_in * h * w, "depthwise_conv: input length");
    let cog = c_out / groups;
    assert!(
        weight.len() == groups && weight.iter().all(|b| b.len() == cog * kh * kw),
        "depthwise_conv: weight blocks"
    );
    let (oh, ow) = (geom.out_h(), geom.out_w());
    let plane = oh * ow;
    let mut out = vec![0u64; n * c_out * plane];
    if out.is_empty() {
        return out;
    }
    let layout = Padded::new(geom);
    // Task `t` = image `t / groups`, group `t % groups`: its input plane and `cog` output planes
    // (contiguous in NCHW).
    let task = |scratch: &mut Vec<u64>, (t, dst): (usize, &mut [u64])| {
        let (img, g) = (t / groups, t % groups);
        let src = &x[(img * c_in + g) * h * w..][..h * w];
        layout.fill(src, scratch);
        on_vector_unit(
            #[inline(always)]
            || {
                for (dst, wk) in dst.chunks_exact_mut(plane).zip(weight[g].chunks_exact(kh * kw)) {
                    conv_plane(&layout, scratch, wk, dst);
                }
            },
        )
    };
    let macs_per_task = cog * plane * kh * kw;
    if out.len() * kh * kw > PAR_THRESHOLD_MACS && rayon::current_num_threads() > 1 {
        let min_len = TASK_MACS.div_ceil(macs_per_task.max(1));
        out.par_chunks_mut(cog * plane)
            .enumerate()
            .with_min_len(min_len)
            .for_each_init(Vec::new, |s, item| task(s, item));
    } else {
        let mut scratch = Vec::new();
        out.chunks_mut(cog * plane).enumerate().for_each(|item| task(&mut scratch, item));
    }
    out
}

/// The scratch layout of one input plane: zero-padded, each padded row split into `stride`
/// column phases of `phase_len` entries (phase `r`, entry `j` = padded column `j*stride + r`).
struct Padded {
    geom: ConvGeom,
    /// Padded rows the output reads: `(out_h - 1)*stride + kh` (at most `h + 2*padding`).
    rows: usize,
    /// Entries per phase: `ceil((w + 2*padding) / stride)`.
    phase_len: usize,
    /// Entries per padded row: `stride * phase_len`.
    row_len: usize,
}

impl Padded {
    fn new(geom: &ConvGeom) -> Self {
        let phase_len = (geom.w + 2 * geom.padding).div_ceil(geom.stride);
        Padded {
            geom: *geom,
            rows: (geom.out_h() - 1) * geom.stride + geom.kh,
            phase_len,
            row_len: geom.stride * phase_len,
        }
    }

    /// Writes the padded, phase-split copy of `src` (`[h, w]`) into `buf`, `rows * row_len`
    /// entries whose cells outside the image are zero. A `buf` of that length is reused as it
    /// is: only [`Padded::fill`] writes it, and always the same (image) cells, so its padding
    /// cells are still zero; any other `buf` is replaced by zeros first.
    fn fill(&self, src: &[u64], buf: &mut Vec<u64>) {
        let ConvGeom { h, w, stride, padding, .. } = self.geom;
        if buf.len() != self.rows * self.row_len {
            buf.clear();
            buf.resize(self.rows * self.row_len, 0);
        }
        for (py, row) in buf.chunks_exact_mut(self.row_len).enumerate() {
            // Padded row `py` is image row `py - padding` (or padding).
            let Some(iy) = py.checked_sub(padding).filter(|&iy| iy < h) else { continue };
            let img_row = &src[iy * w..][..w];
            if stride == 1 {
                row[padding..padding + w].copy_from_slice(img_row);
                continue;
            }
            for (r, phase) in row.chunks_exact_mut(self.phase_len).enumerate() {
                // Padded columns `j*stride + r` that are image columns `>= 0`.
                let first_j = padding.saturating_sub(r).div_ceil(stride);
                let first_col = first_j * stride + r - padding;
                let vals = img_row.iter().skip(first_col).step_by(stride);
                for (d, &v) in phase[first_j..].iter_mut().zip(vals) {
                    *d = v;
                }
            }
        }
    }
}

/// One output plane `dst [out_h, out_w]` from the padded input `buf` (see [`Padded`]) and the
/// filter `wk [kh*kw]`; inlined into [`on_vector_unit`]'s kernel so that the multiply-add is
/// vectorised for the CPU's unit. Per output row (kept in L1 across the taps): for each tap,
/// `row += w * run`, where `run` is the contiguous phase run under that tap.
#[inline(always)]
fn conv_plane(p: &Padded, buf: &[u64], wk: &[u64], dst: &mut [u64]) {
    let ConvGeom { kh, kw, stride, .. } = p.geom;
    let ow = p.geom.out_w();
    for (oy, out_row) in dst.chunks_exact_mut(ow).enumerate() {
        for ky in 0..kh {
            let row = &buf[(oy * stride + ky) * p.row_len..][..p.row_len];
            for (kx, &wv) in wk[ky * kw..][..kw].iter().enumerate() {
                let run = &row[(kx % stride) * p.phase_len + kx / stride..][..ow];
                for (d, &v) in out_row.iter_mut().zip(run) {
                    *d = d.wrapping_add(wv.wrapping_mul(v));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::gemm::GemmKernel;
    use crate::ring::im2col::tests::{conv_im2col, rand_vec};
    use crate::ring::vector::on_unit;
    use proptest::prelude::*;

    fn dw(c: usize, h: usize, w: usize, mult: usize, k: usize, s: usize, p: usize) -> ConvGeom {
        ConvGeom { c_in: c, h, w, c_out: c * mult, kh: k, kw: k, stride: s, padding: p, groups: c }
    }

    /// Direct == reference on every vector unit this CPU has, on one thread and on three.
    fn check(n: usize, geom: &ConvGeom, seed: u64) {
        let x = rand_vec(n * geom.c_in * geom.h * geom.w, seed);
        let k = geom.c_out / geom.groups * geom.kh * geom.kw;
        let weight: Vec<Vec<u64>> = rand_vec(geom.c_out * geom.kh * geom.kw, seed ^ 0x5555)
            .chunks(k)
            .map(<[u64]>::to_vec)
            .collect();
        // The reference: the per-group im2col + GEMM path of `conv_ring`.
        let want = conv_im2col(&x, &weight.concat(), n, geom);
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        assert_eq!(one.install(|| depthwise_conv(&x, n, geom, &weight)), want, "{geom:?} n={n}");
        let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        assert_eq!(three.install(|| depthwise_conv(&x, n, geom, &weight)), want, "{geom:?} n={n}");
        let layout = Padded::new(geom);
        let mut buf = Vec::new();
        for kernel in GemmKernel::available() {
            for img in 0..n {
                for co in 0..geom.c_out {
                    let (g, j) = (co / (geom.c_out / geom.groups), co % (geom.c_out / geom.groups));
                    let plane = geom.h * geom.w;
                    layout.fill(&x[(img * geom.c_in + g) * plane..][..plane], &mut buf);
                    let ohw = geom.out_h() * geom.out_w();
                    let mut dst = vec![0u64; ohw];
                    let wk = &weight[g][j * geom.kh * geom.kw..][..geom.kh * geom.kw];
                    on_unit(kernel, || conv_plane(&layout, &buf, wk, &mut dst));
                    let at = (img * geom.c_out + co) * ohw;
                    assert_eq!(
                        dst,
                        want[at..at + ohw],
                        "{} {geom:?} img {img} co {co}",
                        kernel.name()
                    );
                }
            }
        }
    }

    #[test]
    fn mobilenetv2_shapes_match_im2col_gemm() {
        check(1, &dw(32, 112, 112, 1, 3, 1, 1), 1); // features.1.dw, parallel path
        check(1, &dw(96, 112, 112, 1, 3, 2, 1), 2); // features.2.dw, stride 2
        check(2, &dw(960, 7, 7, 1, 3, 1, 1), 3); // features.15-17.dw, small planes grouped
        check(1, &dw(4, 9, 9, 2, 3, 1, 1), 4); // channel multiplier 2
        check(1, &dw(3, 2, 2, 1, 3, 2, 2), 5); // output cells reading only padding
        check(1, &dw(2, 5, 6, 1, 5, 2, 0), 6); // kernel as large as the image
        check(1, &dw(2, 7, 7, 1, 3, 3, 1), 7); // stride 3
    }

    #[test]
    fn zero_sized_batch_is_empty() {
        let geom = dw(4, 5, 5, 1, 3, 1, 1);
        assert!(depthwise_conv(&[], 0, &geom, &vec![vec![1u64; 9]; 4]).is_empty());
    }

    #[test]
    fn depthwise_geometries_are_recognised() {
        assert!(is_depthwise(&dw(8, 4, 4, 1, 3, 1, 1)));
        assert!(is_depthwise(&dw(8, 4, 4, 3, 3, 1, 1)));
        assert!(!is_depthwise(&dw(1, 4, 4, 1, 3, 1, 1))); // one group: a dense conv
        let grouped = ConvGeom { c_in: 8, groups: 4, ..dw(8, 4, 4, 1, 3, 1, 1) };
        assert!(!is_depthwise(&grouped)); // two channels per group: the GEMM path
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn random_depthwise_matches_im2col_gemm(
            n in 1usize..3,
            c in 2usize..6,
            mult in 1usize..3,
            h in 1usize..12,
            w in 1usize..12,
            k in prop::sample::select(vec![1usize, 3, 5]),
            stride in 1usize..3,
            padding in 0usize..2,
            seed in any::<u64>(),
        ) {
            prop_assume!(h + 2 * padding >= k && w + 2 * padding >= k);
            check(n, &dw(c, h, w, mult, k, stride, padding), seed);
        }
    }
}
