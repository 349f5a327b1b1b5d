//! im2col for convolutions on ring tensors (linear, so it works on shares).
//! OWNER: ring helper. Signatures are the contract.

use crate::model::ConvGeom;

/// Unfolds a batch `x` of shape `[n, c_in, h, w]` (NCHW) for group `g` into a column matrix of
/// shape `[(c_in/groups)*kh*kw, n*out_h*out_w]` (row-major), zero padding outside the image.
/// Column index = `img*(out_h*out_w) + oy*out_w + ox`.
pub fn im2col(x: &[u64], n: usize, geom: &ConvGeom, g: usize) -> Vec<u64> {
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
                            if iy >= 0 && ix >= 0 && (iy as usize) < geom.h && (ix as usize) < geom.w {
                                let src = ((img * geom.c_in + c) * geom.h + iy as usize) * geom.w
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

/// Scatters a GEMM result `[c_out_g, n*out_h*out_w]` of group `g` into the NCHW output
/// `[n, c_out, out_h, out_w]` (channels `g*c_out_g ..`).
pub fn col2out(y: &[u64], out: &mut [u64], n: usize, geom: &ConvGeom, g: usize) {
    let cog = geom.c_out / geom.groups;
    let hw = geom.out_h() * geom.out_w();
    for co in 0..cog {
        for img in 0..n {
            let src = &y[co * n * hw + img * hw..co * n * hw + (img + 1) * hw];
            let dst = ((img * geom.c_out) + g * cog + co) * hw;
            out[dst..dst + hw].copy_from_slice(src);
        }
    }
}
