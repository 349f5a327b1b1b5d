//! im2col for convolutions on ring tensors (linear, so it works on shares).
//!
//! A convolution of group `g` becomes one GEMM: `W_g [c_out/groups, (c_in/groups)*kh*kw]` times
//! the column matrix of [`im2col`], and [`col2out`] scatters the product back into NCHW.
//!
//! The unfold works row by row of the column matrix (one `(channel, ky, kx)` each): for every
//! kernel offset the range of output positions that read inside the image is computed once, so
//! the interior loop has no bounds test; with stride 1 each output row segment is one contiguous
//! copy. The padding cells are the zeros the matrix starts with. Big unfolds are split over rows
//! with rayon.

use rayon::prelude::*;

use crate::model::ConvGeom;
use crate::ring::gemm::{PackedB, NR};

/// Column matrices with more elements than this are filled by rayon threads.
const PAR_THRESHOLD_ELEMS: usize = 1 << 18;

/// Columns one task of [`im2col_packed`] fills (a multiple of `NR`).
const PACK_TASK_COLS: usize = 2048;

/// Unfolds a batch `x` of shape `[n, c_in, h, w]` (NCHW) for group `g` into a column matrix of
/// shape `[(c_in/groups)*kh*kw, n*out_h*out_w]` (row-major), zero padding outside the image.
/// Column index = `img*(out_h*out_w) + oy*out_w + ox`.
///
/// Row index = `(ci*kh + ky)*kw + kx` for input channel `g*(c_in/groups) + ci`, matching a weight
/// `[c_out, c_in/groups, kh, kw]` (PyTorch order) read as a `[c_out, (c_in/groups)*kh*kw]` matrix.
/// Panics if `g >= groups` or `x.len() < n*c_in*h*w`.
pub fn im2col(x: &[u64], n: usize, geom: &ConvGeom, g: usize) -> Vec<u64> {
    let u = Unfold::new(x, n, geom, g);
    let mut out = vec![0u64; u.rows * u.cols];
    if out.is_empty() {
        return out;
    }
    let cols = u.cols;
    if out.len() > PAR_THRESHOLD_ELEMS && rayon::current_num_threads() > 1 {
        out.par_chunks_mut(cols).enumerate().for_each(|(r, d)| u.fill(r, 0, cols, d));
    } else {
        out.chunks_mut(cols).enumerate().for_each(|(r, d)| u.fill(r, 0, cols, d));
    }
    out
}

/// [`im2col`] written directly in the packed GEMM layout: equal to
/// `PackedB::pack(&im2col(x, n, geom, g), rows, cols)` without the intermediate matrix, ready for
/// [`crate::ring::gemm::gemm_packed`] as the `B` of `W_g * cols`. Same panics as [`im2col`].
/// It saves the intermediate `rows x cols` allocation; its time is about that of `im2col` plus
/// `PackedB::pack` (0.7 ms for a 64x32x32 input, 3x3, one thread, on the dev machine).
pub fn im2col_packed(x: &[u64], n: usize, geom: &ConvGeom, g: usize) -> PackedB {
    let u = Unfold::new(x, n, geom, g);
    let (rows, cols) = (u.rows, u.cols);
    let mut data = vec![0u64; cols.div_ceil(NR) * rows * NR];
    if !data.is_empty() {
        // Task `t` fills the strips of columns `t*PACK_TASK_COLS ..`, a contiguous run of `data`.
        let task_len = PACK_TASK_COLS / NR * rows * NR;
        let fill_task = |(t, chunk): (usize, &mut [u64])| {
            let j0 = t * PACK_TASK_COLS;
            let j1 = (j0 + PACK_TASK_COLS).min(cols);
            let mut buf = vec![0u64; j1 - j0];
            for r in 0..rows {
                buf.fill(0);
                u.fill(r, j0, j1, &mut buf);
                for (si, vals) in buf.chunks(NR).enumerate() {
                    chunk[si * rows * NR + r * NR..][..vals.len()].copy_from_slice(vals);
                }
            }
        };
        if data.len() > PAR_THRESHOLD_ELEMS && rayon::current_num_threads() > 1 {
            data.par_chunks_mut(task_len).enumerate().for_each(fill_task);
        } else {
            data.chunks_mut(task_len).enumerate().for_each(fill_task);
        }
    }
    PackedB::from_packed_data(rows, cols, data)
}

/// One im2col problem: the input, its geometry and the group.
struct Unfold<'a> {
    x: &'a [u64],
    geom: ConvGeom,
    g: usize,
    /// Input channels per group.
    cg: usize,
    oh: usize,
    ow: usize,
    rows: usize,
    cols: usize,
}

impl<'a> Unfold<'a> {
    fn new(x: &'a [u64], n: usize, geom: &ConvGeom, g: usize) -> Self {
        let ConvGeom { c_in, h, w, kh, kw, groups, .. } = *geom;
        assert!(g < groups, "im2col: group {g} out of {groups}");
        assert!(
            x.len() >= n * c_in * h * w,
            "im2col: x has {} elements, need {}",
            x.len(),
            n * c_in * h * w
        );
        let cg = c_in / groups;
        let (oh, ow) = (geom.out_h(), geom.out_w());
        Unfold { x, geom: *geom, g, cg, oh, ow, rows: cg * kh * kw, cols: n * oh * ow }
    }

    /// Writes columns `j0..j1` of row `r` of the column matrix into `dst[..j1-j0]`, touching only
    /// the entries that read inside the image (`dst` must hold zeros elsewhere).
    fn fill(&self, r: usize, j0: usize, j1: usize, dst: &mut [u64]) {
        let ConvGeom { c_in, h, w, kh, kw, stride, padding, .. } = self.geom;
        let (oh, ow) = (self.oh, self.ow);
        let ohw = oh * ow;
        let (ci, ky, kx) = (r / (kh * kw), (r / kw) % kh, r % kw);
        let c = self.g * self.cg + ci;
        let (oy_lo, oy_hi) = valid_range(ky, padding, stride, h, oh);
        let (ox_lo, ox_hi) = valid_range(kx, padding, stride, w, ow);
        if ox_lo == ox_hi || oy_lo == oy_hi || j0 >= j1 {
            return;
        }
        for img in j0 / ohw..=(j1 - 1) / ohw {
            let plane = &self.x[(img * c_in + c) * h * w..][..h * w];
            let base = img * ohw;
            // Output rows of this image that meet the column window, intersected with the rows
            // that read inside the image.
            let first = (j0.max(base) - base) / ow;
            let last = (j1.min(base + ohw) - 1 - base) / ow;
            for oy in first.max(oy_lo)..(last + 1).min(oy_hi) {
                let row0 = base + oy * ow;
                let c_lo = (row0 + ox_lo).max(j0);
                let c_hi = (row0 + ox_hi).min(j1);
                if c_lo >= c_hi {
                    continue;
                }
                let iy = oy * stride + ky - padding;
                let ix0 = (c_lo - row0) * stride + kx - padding;
                let src = &plane[iy * w + ix0..(iy + 1) * w];
                let d = &mut dst[c_lo - j0..c_hi - j0];
                if stride == 1 {
                    d.copy_from_slice(&src[..d.len()]);
                } else {
                    for (dv, &v) in d.iter_mut().zip(src.iter().step_by(stride)) {
                        *dv = v;
                    }
                }
            }
        }
    }
}

/// Output positions `o in lo..hi` (`hi <= out_size`) whose input coordinate
/// `o*stride + k_off - pad` lies in `0..size`.
fn valid_range(
    k_off: usize,
    pad: usize,
    stride: usize,
    size: usize,
    out_size: usize,
) -> (usize, usize) {
    let lo = if pad > k_off { (pad - k_off).div_ceil(stride) } else { 0 };
    let hi = if size + pad > k_off { (size + pad - k_off).div_ceil(stride) } else { 0 };
    let hi = hi.min(out_size);
    (lo.min(hi), hi)
}

/// Scatters a GEMM result `[c_out_g, n*out_h*out_w]` of group `g` into the NCHW output
/// `[n, c_out, out_h, out_w]` (channels `g*c_out_g ..`).
///
/// `c_out_g = c_out/groups`; the columns of `y` are ordered as those of [`im2col`]. Only the
/// channels of group `g` are written. Panics if `y` or `out` is too short.
pub fn col2out(y: &[u64], out: &mut [u64], n: usize, geom: &ConvGeom, g: usize) {
    let cog = geom.c_out / geom.groups;
    let hw = geom.out_h() * geom.out_w();
    if hw == 0 {
        return;
    }
    for (co, yrow) in y[..cog * n * hw].chunks_exact(n * hw).enumerate() {
        for (img, src) in yrow.chunks_exact(hw).enumerate() {
            let dst = ((img * geom.c_out) + g * cog + co) * hw;
            out[dst..dst + hw].copy_from_slice(src);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ring::gemm::{gemm, gemm_packed};
    use proptest::prelude::*;

    /// The original per-element im2col: the reference for the fast one.
    fn im2col_naive(x: &[u64], n: usize, geom: &ConvGeom, g: usize) -> Vec<u64> {
        let cg = geom.c_in / geom.groups;
        let (oh, ow) = (geom.out_h(), geom.out_w());
        let rows = cg * geom.kh * geom.kw;
        let cols = n * oh * ow;
        let mut out = vec![0u64; rows * cols];
        for img in 0..n {
            for ci in 0..cg {
                let c = g * cg + ci;
                for ky in 0..geom.kh {
                    for kx in 0..geom.kw {
                        let r = (ci * geom.kh + ky) * geom.kw + kx;
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let iy = (oy * geom.stride + ky) as isize - geom.padding as isize;
                                let ix = (ox * geom.stride + kx) as isize - geom.padding as isize;
                                if iy >= 0
                                    && ix >= 0
                                    && (iy as usize) < geom.h
                                    && (ix as usize) < geom.w
                                {
                                    let src = ((img * geom.c_in + c) * geom.h + iy as usize)
                                        * geom.w
                                        + ix as usize;
                                    out[r * cols + img * oh * ow + oy * ow + ox] = x[src];
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// Direct convolution over Z_2^64: `x [n, c_in, h, w]`, `wt [c_out, c_in/groups, kh, kw]`.
    fn conv_naive(x: &[u64], wt: &[u64], n: usize, geom: &ConvGeom) -> Vec<u64> {
        let (oh, ow) = (geom.out_h(), geom.out_w());
        let (cg, cog) = (geom.c_in / geom.groups, geom.c_out / geom.groups);
        let mut out = vec![0u64; n * geom.c_out * oh * ow];
        for img in 0..n {
            for co in 0..geom.c_out {
                let g = co / cog;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0u64;
                        for ci in 0..cg {
                            for ky in 0..geom.kh {
                                for kx in 0..geom.kw {
                                    let iy =
                                        (oy * geom.stride + ky) as isize - geom.padding as isize;
                                    let ix =
                                        (ox * geom.stride + kx) as isize - geom.padding as isize;
                                    if iy < 0
                                        || ix < 0
                                        || iy as usize >= geom.h
                                        || ix as usize >= geom.w
                                    {
                                        continue;
                                    }
                                    let xv = x[((img * geom.c_in + g * cg + ci) * geom.h
                                        + iy as usize)
                                        * geom.w
                                        + ix as usize];
                                    let wv = wt[((co * cg + ci) * geom.kh + ky) * geom.kw + kx];
                                    acc = acc.wrapping_add(xv.wrapping_mul(wv));
                                }
                            }
                        }
                        out[((img * geom.c_out + co) * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
        out
    }

    /// Convolution through im2col + GEMM + col2out, as the secure linear layer computes it
    /// (`wt [c_out, (c_in/groups)*kh*kw]`); also checks both unfolds against the naive one and
    /// the packed GEMM against the plain one.
    pub(crate) fn conv_im2col(x: &[u64], wt: &[u64], n: usize, geom: &ConvGeom) -> Vec<u64> {
        let (oh, ow) = (geom.out_h(), geom.out_w());
        let cog = geom.c_out / geom.groups;
        let k = (geom.c_in / geom.groups) * geom.kh * geom.kw;
        let cols_n = n * oh * ow;
        let mut out = vec![0u64; n * geom.c_out * oh * ow];
        let mut y = vec![0u64; cog * cols_n];
        for g in 0..geom.groups {
            let cols = im2col(x, n, geom, g);
            assert_eq!(cols, im2col_naive(x, n, geom, g), "im2col {geom:?} g={g}");
            let packed = im2col_packed(x, n, geom, g);
            assert_eq!(packed, PackedB::pack(&cols, k, cols_n), "im2col_packed {geom:?} g={g}");
            let wg = &wt[g * cog * k..(g + 1) * cog * k];
            let mut y2 = vec![0u64; cog * cols_n];
            gemm_packed(wg, &packed, &mut y2, cog);
            gemm(wg, &cols, &mut y, cog, k, cols_n);
            assert_eq!(y, y2);
            col2out(&y, &mut out, n, geom, g);
        }
        out
    }

    /// xorshift, full-range values (as shares and masks are).
    pub(crate) fn rand_vec(len: usize, seed: u64) -> Vec<u64> {
        let mut s = seed | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s.wrapping_mul(0x2545_F491_4F6C_DD1D)
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn geom(
        c_in: usize,
        h: usize,
        w: usize,
        c_out: usize,
        kh: usize,
        kw: usize,
        stride: usize,
        padding: usize,
        groups: usize,
    ) -> ConvGeom {
        ConvGeom { c_in, h, w, c_out, kh, kw, stride, padding, groups }
    }

    fn check(n: usize, geom: &ConvGeom, seed: u64) {
        let x = rand_vec(n * geom.c_in * geom.h * geom.w, seed);
        let wt =
            rand_vec(geom.c_out * (geom.c_in / geom.groups) * geom.kh * geom.kw, seed ^ 0x5555);
        let want = conv_naive(&x, &wt, n, geom);
        assert_eq!(conv_im2col(&x, &wt, n, geom), want, "{geom:?} n={n}");
        // The layer op (`conv_ring`: depthwise convolutions take the direct path, without
        // im2col or per-group GEMMs), on one thread and on three.
        let k = geom.c_out / geom.groups * (geom.c_in / geom.groups) * geom.kh * geom.kw;
        let per_group: Vec<Vec<u64>> = wt.chunks(k.max(1)).map(|c| c.to_vec()).collect();
        let xt =
            crate::ring::RingTensor { shape: vec![n, geom.c_in, geom.h, geom.w], data: x.clone() };
        let got = crate::mpc::ops::conv_ring(&xt, &per_group, geom, "t").unwrap();
        assert_eq!(got.data, want, "conv_ring {geom:?} n={n}");
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let got = pool.install(|| crate::mpc::ops::conv_ring(&xt, &per_group, geom, "t").unwrap());
        assert_eq!(got.data, want, "conv_ring (3 threads) {geom:?} n={n}");
    }

    #[test]
    fn fixed_geometries_match_direct_conv() {
        check(2, &geom(3, 8, 8, 4, 3, 3, 1, 1, 1), 1);
        check(1, &geom(4, 7, 5, 6, 3, 3, 2, 1, 2), 2);
        check(3, &geom(6, 9, 10, 6, 3, 3, 1, 1, 6), 3); // depthwise
        check(1, &geom(2, 5, 5, 4, 5, 5, 1, 2, 1), 4); // kernel as large as the padded image
        check(1, &geom(3, 4, 6, 2, 1, 1, 1, 0, 1), 5); // 1x1
        check(2, &geom(2, 11, 7, 3, 2, 3, 3, 2, 1), 6); // stride 3, non-square kernel
        check(1, &geom(1, 1, 1, 1, 1, 1, 1, 0, 1), 7);
        check(1, &geom(2, 2, 2, 2, 3, 3, 2, 2, 2), 8); // output cells reading only padding
        check(1, &geom(96, 28, 28, 96, 3, 3, 2, 1, 96), 9); // MobileNetV2-sized depthwise, stride 2
        check(1, &geom(8, 9, 9, 16, 3, 3, 1, 1, 8), 10); // depthwise, channel multiplier 2
    }

    #[test]
    fn big_unfold_takes_parallel_path() {
        // 64 x 32 x 32, 3x3, pad 1: rows*cols = 576 * 1024 > PAR_THRESHOLD_ELEMS.
        let g = geom(64, 32, 32, 8, 3, 3, 1, 1, 1);
        let x = rand_vec(64 * 32 * 32, 9);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let fast = pool.install(|| im2col(&x, 1, &g, 0));
        assert!(fast.len() > PAR_THRESHOLD_ELEMS);
        assert_eq!(fast, im2col_naive(&x, 1, &g, 0));
        let packed = pool.install(|| im2col_packed(&x, 1, &g, 0));
        assert_eq!(packed, PackedB::pack(&fast, 64 * 9, 32 * 32));
        // Several images and more than one packing task per image boundary.
        let x3 = rand_vec(3 * 64 * 32 * 32, 10);
        let packed = pool.install(|| im2col_packed(&x3, 3, &g, 0));
        assert_eq!(packed, PackedB::pack(&im2col_naive(&x3, 3, &g, 0), 64 * 9, 3 * 32 * 32));
    }

    #[test]
    fn valid_range_edges() {
        // kernel offset 0, pad 2, stride 2, size 5 -> inputs o*2-2 in 0..5 -> o in 1..=3.
        assert_eq!(valid_range(0, 2, 2, 5, 4), (1, 4));
        // every position reads padding.
        assert_eq!(valid_range(4, 2, 1, 1, 1), (0, 0));
        assert_eq!(valid_range(0, 3, 1, 1, 2), (2, 2));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_geometries_match_direct_conv(
            n in 1usize..3,
            cg in 1usize..4,
            cog in 1usize..3,
            group_kind in 0usize..3,
            h in 1usize..10,
            w in 1usize..10,
            kh in 1usize..4,
            kw in 1usize..4,
            stride in 1usize..3,
            padding in 0usize..3,
            seed in any::<u64>(),
        ) {
            prop_assume!(h + 2 * padding >= kh && w + 2 * padding >= kw);
            // 0: dense, 1: two groups, 2: depthwise (one input channel per group).
            let (groups, cg) = match group_kind { 0 => (1, cg), 1 => (2, cg), _ => (cg + 1, 1) };
            let g = geom(groups * cg, h, w, groups * cog, kh, kw, stride, padding, groups);
            check(n, &g, seed);
        }
    }
}
