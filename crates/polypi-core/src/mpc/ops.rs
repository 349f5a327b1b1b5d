//! Ring-tensor operations shared by the fixed-point twin and both secure parties.
//!
//! All of these are linear (or local) on additive shares, so the same code runs on a plaintext
//! ring tensor and on either party's share; only truncation differs ([`Trunc`]).

use super::encode::{binom, EncodedConv, EncodedLinear, PolyPlan};
use crate::error::{Error, Result};
use crate::model::ConvGeom;
use crate::ring::depthwise::{depthwise_conv, is_depthwise};
use crate::ring::vector::on_vector_unit;
use crate::ring::{col2out, gemm, trunc_local, trunc_public, RingTensor};

/// How a backend truncates: the plaintext twin shifts exactly (floor); a party applies SecureML's
/// local share truncation (see [`crate::ring::trunc`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trunc {
    /// Plaintext twin: arithmetic shift.
    Public,
    /// Share of party 0 (server) or 1 (client).
    Share(usize),
}

impl Trunc {
    /// Divides every element by `2^bits` in place.
    pub fn apply(self, x: &mut [u64], bits: u32) {
        match self {
            Trunc::Public => trunc_public(x, bits),
            Trunc::Share(p) => trunc_local(x, bits, p),
        }
    }
    /// True for the share of party 0 and for the twin: the one that adds public constants.
    pub fn adds_constants(self) -> bool {
        matches!(self, Trunc::Public | Trunc::Share(0))
    }
}

fn shape_err(node: &str, expected: Vec<usize>, got: &[usize]) -> Error {
    Error::ShapeMismatch { node: node.to_string(), expected, got: got.to_vec() }
}

/// Convolution `[N, c_in, h, w] -> [N, c_out, oh, ow]` (NCHW) with per-group weight matrices
/// (`weight[g]`: `[c_out/groups, (c_in/groups)*kh*kw]`), no bias, no truncation, wrapping u64.
/// Depthwise convolutions (`groups == c_in`) are computed directly
/// ([`crate::ring::depthwise`]); every other one as one im2col + GEMM per group.
/// Errors: `ShapeMismatch` if `x` is not `[N, c_in, h, w]`, or the weights are not `groups`
/// blocks of `[c_out/groups, (c_in/groups)*kh*kw]`; `Graph` for a geometry without output
/// (zero stride or groups, groups not dividing the channels, kernel larger than the padded
/// input).
pub fn conv_ring(
    x: &RingTensor,
    weight: &[Vec<u64>],
    geom: &ConvGeom,
    node: &str,
) -> Result<RingTensor> {
    if x.shape.len() != 4 || x.shape[1..] != [geom.c_in, geom.h, geom.w] {
        return Err(shape_err(node, vec![0, geom.c_in, geom.h, geom.w], &x.shape));
    }
    let ConvGeom { c_in, h, w, c_out, kh, kw, stride, padding, groups } = *geom;
    if stride == 0
        || groups == 0
        || c_in % groups != 0
        || c_out % groups != 0
        || h + 2 * padding < kh
        || w + 2 * padding < kw
    {
        return Err(Error::graph(node, format!("convolution geometry without output: {geom:?}")));
    }
    let cog = c_out / groups;
    let k = (c_in / groups) * kh * kw;
    if weight.len() != groups || weight.iter().any(|wg| wg.len() != cog * k) {
        let got = weight.iter().find(|wg| wg.len() != cog * k).map_or(0, Vec::len);
        return Err(shape_err(node, vec![groups, cog, k], &[weight.len(), got]));
    }
    let n = x.shape[0];
    let (oh, ow) = (geom.out_h(), geom.out_w());
    if is_depthwise(geom) {
        let data = depthwise_conv(&x.data, n, geom, weight);
        return Ok(RingTensor { shape: vec![n, c_out, oh, ow], data });
    }
    let mut out = RingTensor::zeros(&[n, c_out, oh, ow]);
    let cols_n = n * oh * ow;
    // Batch 1: a group's rows of the product are its NCHW output planes, written in place.
    let mut y = if n == 1 { Vec::new() } else { vec![0u64; cog * cols_n] };
    for (g, wg) in weight.iter().enumerate() {
        // Unfolded straight into the GEMM's packed layout (no second copy for packing).
        let cols = crate::ring::im2col::im2col_packed(&x.data, n, geom, g);
        debug_assert_eq!((cols.k, cols.n), (k, cols_n));
        if n == 1 {
            let planes = &mut out.data[g * cog * cols_n..][..cog * cols_n];
            crate::ring::gemm::gemm_packed(wg, &cols, planes, cog);
        } else {
            crate::ring::gemm::gemm_packed(wg, &cols, &mut y, cog);
            col2out(&y, &mut out.data, n, geom, g);
        }
    }
    Ok(out)
}

/// Fully connected `[N, in] -> [N, out]` with a transposed weight `[in, out]`, no bias.
/// Errors: `ShapeMismatch` if `x` is not `[N, in]`.
pub fn linear_ring(
    x: &RingTensor,
    weight_t: &[u64],
    in_f: usize,
    out_f: usize,
    node: &str,
) -> Result<RingTensor> {
    if x.shape.len() != 2 || x.shape[1] != in_f {
        return Err(shape_err(node, vec![0, in_f], &x.shape));
    }
    let n = x.shape[0];
    let mut out = RingTensor::zeros(&[n, out_f]);
    if n <= SMALL_BATCH_ROWS {
        // A few rows (batch-1 inference): one pass over the weights, row k of `W^T` scaled by
        // x[i, k] and accumulated (contiguous, vectorised), instead of packing the whole weight
        // matrix for the GEMM kernel on every call (4 MB for a 512 -> 1000 classifier).
        small_batch_linear(&x.data, weight_t, &mut out.data, n, in_f, out_f);
    } else {
        gemm(&x.data, weight_t, &mut out.data, n, in_f, out_f);
    }
    Ok(out)
}

/// Rows up to which [`linear_ring`] streams the weights instead of calling the packed GEMM.
const SMALL_BATCH_ROWS: usize = 4;

/// `out[n x o] = x[n x k] * w[k x o]` (row-major, wrapping u64) by rows of `w`, the output
/// columns split across rayon's pool in blocks of 256 when the product is large.
fn small_batch_linear(x: &[u64], w: &[u64], out: &mut [u64], n: usize, k: usize, o: usize) {
    use rayon::prelude::*;
    const BLOCK: usize = 256;
    let block = |j0: usize, acc: &mut [u64], row: &[u64]| {
        for (kk, &a) in row.iter().enumerate() {
            if a == 0 {
                continue;
            }
            let wr = &w[kk * o + j0..kk * o + j0 + acc.len()];
            for (c, &b) in acc.iter_mut().zip(wr) {
                *c = c.wrapping_add(a.wrapping_mul(b));
            }
        }
    };
    for i in 0..n {
        let row = &x[i * k..(i + 1) * k];
        let dst = &mut out[i * o..(i + 1) * o];
        if k * o > 1 << 18 {
            dst.par_chunks_mut(BLOCK).enumerate().for_each(|(b, acc)| block(b * BLOCK, acc, row));
        } else {
            block(0, dst, row);
        }
    }
}

/// Adds a per-channel bias (dim 1) to `y` in place.
pub fn add_channel_bias(y: &mut RingTensor, bias: &[u64]) {
    let n = y.shape[0];
    let c = bias.len();
    let inner = y.data.len() / (n * c).max(1);
    for img in 0..n {
        for (ch, &b) in bias.iter().enumerate() {
            let s = (img * c + ch) * inner;
            for v in &mut y.data[s..s + inner] {
                *v = v.wrapping_add(b);
            }
        }
    }
}

/// The server's last step of a linear (conv or fc) layer: `y += bias[ch] + share`, then
/// truncation by `frac_bits` — equal to [`add_channel_bias`], an element-wise add of `share`
/// (its share `c0` of `A*B`) and `t.apply`, but in one pass: each block of a channel plane
/// is truncated while it is in L1. `y`: `[N, C, ...]` or `[N, F]`; `bias`: `[C]`; `share`:
/// `[y.len()]`. Panics if `share` is shorter than `y` (the caller checks the material).
pub fn finish_linear_share(
    y: &mut RingTensor,
    bias: &[u64],
    share: &[u64],
    frac_bits: u32,
    t: Trunc,
) {
    let c = bias.len().max(1);
    let inner = y.data.len() / (y.shape[0] * c).max(1);
    if inner == 0 {
        return;
    }
    for (pi, (plane, sh)) in y.data.chunks_mut(inner).zip(share.chunks(inner)).enumerate() {
        let b = bias.get(pi % c).copied().unwrap_or(0);
        for (blk, sb) in plane.chunks_mut(POLY_BLOCK).zip(sh.chunks(POLY_BLOCK)) {
            for (v, s) in blk.iter_mut().zip(sb) {
                *v = v.wrapping_add(b).wrapping_add(*s);
            }
            t.apply(blk, frac_bits);
        }
    }
}

/// Full conv layer on one party's share (or the twin's value): conv, bias (by the party that adds
/// constants), truncation by `frac_bits`.
pub fn conv_layer(
    x: &RingTensor,
    w: &EncodedConv,
    frac_bits: u32,
    t: Trunc,
    node: &str,
) -> Result<RingTensor> {
    let mut y = conv_ring(x, &w.weight, &w.geom, node)?;
    if t.adds_constants() {
        add_channel_bias(&mut y, &w.bias);
    }
    t.apply(&mut y.data, frac_bits);
    Ok(y)
}

/// Full linear layer: GEMM, bias, truncation by `frac_bits`.
pub fn linear_layer(
    x: &RingTensor,
    w: &EncodedLinear,
    frac_bits: u32,
    t: Trunc,
    node: &str,
) -> Result<RingTensor> {
    let mut y = linear_ring(x, &w.weight_t, w.in_features, w.out_features, node)?;
    if t.adds_constants() {
        add_channel_bias(&mut y, &w.bias);
    }
    t.apply(&mut y.data, frac_bits);
    Ok(y)
}

/// Divides by a public integer `count` at scale `frac_bits`: a shift when `count` is a power of
/// two, else a multiplication by `round(2^f / count)` and a shift by f.
pub fn div_by_count(x: &mut [u64], count: usize, frac_bits: u32, t: Trunc) {
    if count.is_power_of_two() {
        t.apply(x, count.trailing_zeros());
    } else {
        let m = ((frac_bits as f64).exp2() / count as f64).round() as u64;
        for v in x.iter_mut() {
            *v = v.wrapping_mul(m);
        }
        t.apply(x, frac_bits);
    }
}

/// Average pooling `[N, C, H, W] -> [N, C, (H+2p-k)/s+1, (W+2p-k)/s+1]` with window `k`, step
/// `s` and zero padding `p` (`(k, s, p)`): window sums (padding cells are zeros, a valid share
/// of zero for both parties), then [`div_by_count`] by `k^2` (PyTorch's `count_include_pad`).
/// Linear, so it runs on shares locally.
/// Errors: `ShapeMismatch` for a non-4-D input, a zero kernel or stride, a padding above `k/2`
/// or a window larger than the padded image.
pub fn avgpool(
    x: &RingTensor,
    (k, s, p): (usize, usize, usize),
    frac_bits: u32,
    t: Trunc,
    node: &str,
) -> Result<RingTensor> {
    if x.shape.len() != 4
        || k == 0
        || s == 0
        || p > k / 2
        || x.shape[2] + 2 * p < k
        || x.shape[3] + 2 * p < k
    {
        return Err(shape_err(node, vec![0, 0, k, k], &x.shape));
    }
    let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let mut out = RingTensor::zeros(&[n, c, oh, ow]);
    for nc in 0..n * c {
        let src = &x.data[nc * h * w..(nc + 1) * h * w];
        let dst = &mut out.data[nc * oh * ow..(nc + 1) * oh * ow];
        for oy in 0..oh {
            // Rows and columns of the window inside the image (the rest is zero padding).
            let y0 = (oy * s).saturating_sub(p);
            let y1 = (oy * s + k).saturating_sub(p).min(h);
            for ox in 0..ow {
                let x0 = (ox * s).saturating_sub(p);
                let x1 = (ox * s + k).saturating_sub(p).min(w);
                let mut acc = 0u64;
                for iy in y0..y1 {
                    for v in &src[iy * w + x0..iy * w + x1] {
                        acc = acc.wrapping_add(*v);
                    }
                }
                dst[oy * ow + ox] = acc;
            }
        }
    }
    div_by_count(&mut out.data, k * k, frac_bits, t);
    Ok(out)
}

/// Global average pooling `[N, C, H, W] -> [N, C]`.
/// Errors: `ShapeMismatch` for a non-4-D input.
pub fn global_avgpool(x: &RingTensor, frac_bits: u32, t: Trunc, node: &str) -> Result<RingTensor> {
    if x.shape.len() != 4 {
        return Err(shape_err(node, vec![0, 0, 0, 0], &x.shape));
    }
    let (n, c, hw) = (x.shape[0], x.shape[1], x.shape[2] * x.shape[3]);
    let mut out = RingTensor::zeros(&[n, c]);
    for (i, o) in out.data.iter_mut().enumerate() {
        *o = x.data[i * hw..(i + 1) * hw].iter().fold(0u64, |a, v| a.wrapping_add(*v));
    }
    div_by_count(&mut out.data, hw, frac_bits, t);
    Ok(out)
}

/// `[N, ...] -> [N, prod(...)]` (no data movement).
pub fn flatten(x: RingTensor) -> RingTensor {
    let n = x.shape[0];
    let f = x.data.len() / n.max(1);
    RingTensor { shape: vec![n, f], data: x.data }
}

/// Elements per block of the blocked polynomial kernels: a few KB per buffer, so that the
/// intermediate values of one block stay in L1 instead of streaming whole-layer arrays (a
/// MobileNetV2 activation map is 1.2 M elements, 9.6 MB) through memory once per term.
const POLY_BLOCK: usize = 512;

/// One block of `x^k = sum_{i=0..=k} C(k,i) e^(k-i) r^i` into `out`, from the opened `e` (block)
/// and this party's shares of the mask powers at `r_pows[i-1][at..at + e.len()]`; the `i = 0`
/// term only when `adds_constants`. `epow` is scratch of `e.len()` elements. Wrapping u64.
#[inline(always)]
fn power_block(
    k: usize,
    e: &[u64],
    r_pows: &[Vec<u64>],
    at: usize,
    adds_constants: bool,
    epow: &mut [u64],
    out: &mut [u64],
) {
    let len = e.len();
    out.fill(0);
    epow.fill(1);
    // Term by term over the block, i = k..0 with epow = e^(k-i).
    for i in (0..=k).rev() {
        let c = binom(k, i);
        if i > 0 {
            let r = &r_pows[i - 1][at..at + len];
            for ((a, p), r) in out.iter_mut().zip(&*epow).zip(r) {
                *a = a.wrapping_add(c.wrapping_mul(p.wrapping_mul(*r)));
            }
            for (p, ev) in epow.iter_mut().zip(e) {
                *p = p.wrapping_mul(*ev);
            }
        } else if adds_constants {
            for (a, p) in out.iter_mut().zip(&*epow) {
                *a = a.wrapping_add(c.wrapping_mul(*p));
            }
        }
    }
}

/// Shares (or twin values) of `x^k` for each `k` in `powers` from the opened `e = x - r` and this
/// party's shares of `r^1..r^m` (`r_pows[i-1]` = share of `r^i`):
/// `x^k = sum_i C(k,i) e^(k-i) r^i`, where the `i = 0` term is added by the party that adds
/// constants (HoneyBadger-style dealer powers; one round for any degree). Computed in blocks
/// of [`POLY_BLOCK`] elements on the CPU's vector unit ([`on_vector_unit`]).
pub fn powers_from_opening(
    e: &[u64],
    r_pows: &[Vec<u64>],
    powers: &[usize],
    t: Trunc,
) -> Vec<Vec<u64>> {
    let mut epow = [0u64; POLY_BLOCK];
    powers
        .iter()
        .map(|&k| {
            let mut acc = vec![0u64; e.len()];
            on_vector_unit(
                #[inline(always)]
                || {
                    for (b, (eb, ob)) in
                        e.chunks(POLY_BLOCK).zip(acc.chunks_mut(POLY_BLOCK)).enumerate()
                    {
                        let ep = &mut epow[..eb.len()];
                        power_block(k, eb, r_pows, b * POLY_BLOCK, t.adds_constants(), ep, ob);
                    }
                },
            );
            acc
        })
        .collect()
}

/// This party's shares of `e_g = trunc(x, f - f_g) - r_g` for every power group `g` of `plan`,
/// concatenated (`[groups * x.len()]`, group-major): the one message of a dealer-powers
/// polynomial layer. `r1[g]` is this party's share of group `g`'s mask `r` (`[x.len()]`).
pub fn poly_opening_shares(
    x: &[u64],
    r1: &[&[u64]],
    plan: &PolyPlan,
    frac_bits: u32,
    t: Trunc,
) -> Vec<u64> {
    let mut out = Vec::with_capacity(x.len() * plan.groups.len());
    for (grp, r) in plan.groups.iter().zip(r1) {
        // Block by block, so that the truncation and the subtraction read the copy from L1.
        for (xb, rb) in x.chunks(POLY_BLOCK).zip(r.chunks(POLY_BLOCK)) {
            let start = out.len();
            out.extend_from_slice(xb);
            let blk = &mut out[start..];
            t.apply(blk, frac_bits - grp.frac_bits);
            for (v, r) in blk.iter_mut().zip(rb) {
                *v = v.wrapping_sub(*r);
            }
        }
    }
    out
}

/// The local work of a dealer-powers polynomial layer after its opening, fused: for every
/// power group `g`, `e_g = mine_g + theirs_g`, its powers from [`powers_from_opening`], each
/// truncated by `k*f_g - f`, then [`poly_combine`] — computed block by block (nothing of the
/// layer's size but the output is written) on the CPU's vector unit. Bit-identical to that
/// sequence of calls (the same wrapping sums and truncations, in another order of addition).
///
/// `x`: this party's share of the input (NCHW or `[N, F]`, scale f); `mine` / `theirs`: the
/// two parties' opening shares (`[groups * x.len()]`, group-major, see
/// [`poly_opening_shares`]); `r_pows[g][i-1]`: this party's share of `r_g^i`.
pub fn poly_from_opening(
    x: &RingTensor,
    mine: &[u64],
    theirs: &[u64],
    r_pows: &[Vec<Vec<u64>>],
    plan: &PolyPlan,
    frac_bits: u32,
    t: Trunc,
) -> RingTensor {
    let n = x.data.len();
    let mut y = RingTensor::zeros(&x.shape);
    if n == 0 {
        return y;
    }
    let c = x.shape.get(1).copied().unwrap_or(1);
    // Elements that share one coefficient row: a channel plane, or everything when shared.
    let run = if plan.coeffs.len() == 1 { n } else { n / (x.shape[0] * c).max(1) };
    let adds = t.adds_constants();
    let (mut e, mut epow, mut pk) = ([0u64; POLY_BLOCK], [0u64; POLY_BLOCK], [0u64; POLY_BLOCK]);
    on_vector_unit(
        #[inline(always)]
        || {
            for (ri, (ys, xs)) in y.data.chunks_mut(run).zip(x.data.chunks(run)).enumerate() {
                let co = plan.coeffs_of(ri % c);
                for (b, (yb, xb)) in
                    ys.chunks_mut(POLY_BLOCK).zip(xs.chunks(POLY_BLOCK)).enumerate()
                {
                    let (at, len) = (ri * run + b * POLY_BLOCK, yb.len());
                    for (yv, xv) in yb.iter_mut().zip(xb) {
                        *yv = co[1].wrapping_mul(*xv);
                    }
                    if adds {
                        for yv in yb.iter_mut() {
                            *yv = yv.wrapping_add(co[0]);
                        }
                    }
                    for (g, grp) in plan.groups.iter().enumerate() {
                        let eb = &mut e[..len];
                        let (m, th) = (&mine[g * n + at..][..len], &theirs[g * n + at..][..len]);
                        for ((ev, a), b) in eb.iter_mut().zip(m).zip(th) {
                            *ev = a.wrapping_add(*b);
                        }
                        for &k in &grp.powers {
                            let pb = &mut pk[..len];
                            power_block(k, eb, &r_pows[g], at, adds, &mut epow[..len], pb);
                            t.apply(pb, k as u32 * grp.frac_bits - frac_bits);
                            let ck = co[k];
                            for (yv, p) in yb.iter_mut().zip(&*pb) {
                                *yv = yv.wrapping_add(ck.wrapping_mul(*p));
                            }
                        }
                    }
                    t.apply(yb, frac_bits);
                }
            }
        },
    );
    y
}

/// Final step of a polynomial: `acc = c_0 + c_1 x + sum_k c_k x^k` per channel, truncated by f.
/// `x` is the input at scale f, `pows[k]` the value/share of `x^k` at scale f (index = power; 0
/// and 1 unused; an empty entry = a power whose coefficient is zero in every channel, skipped). `sample_shape` gives the channel layout (dim 1 of NCHW or `[N, F]`).
#[allow(clippy::needless_range_loop)] // j indexes x, y and every power alike
pub fn poly_combine(
    x: &RingTensor,
    pows: &[Vec<u64>],
    plan: &PolyPlan,
    frac_bits: u32,
    t: Trunc,
) -> RingTensor {
    let n = x.shape[0];
    let c = x.shape.get(1).copied().unwrap_or(1);
    let inner = x.data.len() / (n * c).max(1);
    let mut y = RingTensor::zeros(&x.shape);
    for img in 0..n {
        for ch in 0..c {
            let co = plan.coeffs_of(ch);
            let s = (img * c + ch) * inner;
            for j in s..s + inner {
                let mut acc = co[1].wrapping_mul(x.data[j]);
                if t.adds_constants() {
                    acc = acc.wrapping_add(co[0]);
                }
                for (k, ck) in co.iter().enumerate().skip(2) {
                    if let Some(p) = pows[k].get(j) {
                        acc = acc.wrapping_add(ck.wrapping_mul(*p));
                    }
                }
                y.data[j] = acc;
            }
        }
    }
    t.apply(&mut y.data, frac_bits);
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mpc::encode::encode_poly;
    use proptest::prelude::*;

    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed;
        move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            s ^ (s >> 29)
        }
    }

    /// Dealer powers are exact over the ring: with `e = x - r` opened and `r^1..r^m` shared,
    /// the two parties' [`powers_from_opening`] sum to `x^k` exactly, for every element of
    /// vectors that end inside a block, and the twin's (`Trunc::Public`) equals `x^k` itself.
    #[test]
    fn powers_from_opening_shares_sum_to_the_power() {
        let mut next = rng(3);
        for n in [1usize, POLY_BLOCK - 1, POLY_BLOCK, 2 * POLY_BLOCK + 77] {
            let x: Vec<u64> = (0..n).map(|_| next()).collect();
            let r: Vec<u64> = (0..n).map(|_| next()).collect();
            let e: Vec<u64> = x.iter().zip(&r).map(|(a, b)| a.wrapping_sub(*b)).collect();
            let (mut s0, mut s1) = (Vec::new(), Vec::new());
            for i in 1..=5u32 {
                let s: Vec<u64> = (0..n).map(|_| next()).collect();
                s0.push(
                    r.iter().zip(&s).map(|(a, b)| a.wrapping_pow(i).wrapping_sub(*b)).collect(),
                );
                s1.push(s);
            }
            let powers = [2usize, 3, 5];
            let y0 = powers_from_opening(&e, &s0, &powers, Trunc::Share(0));
            let y1 = powers_from_opening(&e, &s1, &powers, Trunc::Share(1));
            let r_pows: Vec<Vec<u64>> =
                (1..=5u32).map(|i| r.iter().map(|v| v.wrapping_pow(i)).collect()).collect();
            let twin = powers_from_opening(&e, &r_pows, &powers, Trunc::Public);
            for (pi, &k) in powers.iter().enumerate() {
                let want: Vec<u64> = x.iter().map(|v| v.wrapping_pow(k as u32)).collect();
                let sum: Vec<u64> =
                    y0[pi].iter().zip(&y1[pi]).map(|(a, b)| a.wrapping_add(*b)).collect();
                assert_eq!(sum, want, "n {n} k {k}");
                assert_eq!(twin[pi], want, "twin n {n} k {k}");
            }
        }
    }

    /// `conv_ring` refuses, with errors naming the layer, an input of the wrong shape, weight
    /// blocks of the wrong count or size and geometries without output, for the depthwise
    /// and the GEMM path alike.
    #[test]
    fn conv_ring_refuses_bad_shapes_and_geometries() {
        let dw = ConvGeom {
            c_in: 4,
            h: 5,
            w: 5,
            c_out: 4,
            kh: 3,
            kw: 3,
            stride: 1,
            padding: 1,
            groups: 4,
        };
        let dense = ConvGeom { groups: 1, ..dw };
        let x = RingTensor { shape: vec![1, 4, 5, 5], data: vec![1; 100] };
        for (geom, block) in [(dw, 9), (dense, 4 * 36)] {
            let groups = geom.groups;
            let ok = vec![vec![1u64; block]; groups];
            assert!(conv_ring(&x, &ok, &geom, "c").is_ok());
            let wrong_x = RingTensor { shape: vec![1, 4, 5, 4], data: vec![1; 80] };
            assert!(matches!(
                conv_ring(&wrong_x, &ok, &geom, "c"),
                Err(Error::ShapeMismatch { .. })
            ));
            let short = vec![vec![1u64; block - 1]; groups];
            assert!(matches!(conv_ring(&x, &short, &geom, "c"), Err(Error::ShapeMismatch { .. })));
            let few = vec![vec![1u64; block]; groups + 1];
            assert!(matches!(conv_ring(&x, &few, &geom, "c"), Err(Error::ShapeMismatch { .. })));
            for bad in [
                ConvGeom { stride: 0, ..geom },
                ConvGeom { kh: 8, ..geom },
                ConvGeom { kw: 8, padding: 1, ..geom },
            ] {
                let e = conv_ring(&x, &ok, &bad, "c").unwrap_err();
                assert!(matches!(&e, Error::Graph { node, .. } if node == "c"), "{bad:?}: {e}");
            }
        }
        let three_groups = ConvGeom { groups: 3, ..dense };
        assert!(matches!(
            conv_ring(&x, &vec![vec![1u64; 12]; 3], &three_groups, "c"),
            Err(Error::Graph { .. })
        ));
    }

    /// [`finish_linear_share`] equals bias, share and truncation applied one after the other,
    /// for conv outputs (planes across blocks) and fc outputs (`[N, F]`), both parties.
    #[test]
    fn finish_linear_share_equals_separate_steps() {
        let mut next = rng(9);
        for shape in [vec![2usize, 3, 23, 29], vec![1, 4, 1, 1], vec![3, 10], vec![1, 2, 40, 40]] {
            let n: usize = shape.iter().product();
            let y = RingTensor { shape: shape.clone(), data: (0..n).map(|_| next()).collect() };
            let bias: Vec<u64> = (0..shape[1]).map(|_| next()).collect();
            let share: Vec<u64> = (0..n).map(|_| next()).collect();
            for t in [Trunc::Share(0), Trunc::Share(1), Trunc::Public] {
                let mut want = y.clone();
                add_channel_bias(&mut want, &bias);
                for (v, s) in want.data.iter_mut().zip(&share) {
                    *v = v.wrapping_add(*s);
                }
                t.apply(&mut want.data, 16);
                let mut got = y.clone();
                finish_linear_share(&mut got, &bias, &share, 16, t);
                assert_eq!(got.data, want.data, "{shape:?} {t:?}");
            }
        }
    }

    /// The unfused sequence [`poly_from_opening`] replaces: open, powers, truncate, combine.
    fn unfused(
        x: &RingTensor,
        mine: &[u64],
        theirs: &[u64],
        r_pows: &[Vec<Vec<u64>>],
        plan: &PolyPlan,
        t: Trunc,
    ) -> RingTensor {
        let n = x.len();
        let mut pows = vec![Vec::new(); plan.degree + 1];
        for (g, grp) in plan.groups.iter().enumerate() {
            let e: Vec<u64> =
                (0..n).map(|j| mine[g * n + j].wrapping_add(theirs[g * n + j])).collect();
            for (mut v, &k) in
                powers_from_opening(&e, &r_pows[g], &grp.powers, t).into_iter().zip(&grp.powers)
            {
                t.apply(&mut v, k as u32 * grp.frac_bits - 16);
                pows[k] = v;
            }
        }
        poly_combine(x, &pows, plan, 16, t)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// The fused, blocked [`poly_from_opening`] equals the unfused sequence bit for bit, and
        /// [`poly_opening_shares`] equals truncate-then-subtract, for degrees 1-6 (one or several
        /// power groups), shared and per-channel coefficients (some zero), NCHW and `[N, F]`
        /// shapes whose planes end inside a block, for both parties and the twin.
        #[test]
        fn fused_polynomial_equals_unfused(
            degree in 1usize..7,
            c in 1usize..4,
            hw in prop::sample::select(vec![1usize, 5, 23, 40]),
            flat in any::<bool>(),
            per_channel in any::<bool>(),
            batch in 1usize..3,
            seed in any::<u64>(),
        ) {
            let mut next = rng(seed);
            let rows = if per_channel { c } else { 1 };
            let coeffs: Vec<Vec<f32>> = (0..rows)
                .map(|r| (0..=degree).map(|k| if k > 1 && (k + r) % 3 == 0 { 0.0 } else { 0.1 * k as f32 - 0.2 }).collect())
                .collect();
            let plan = encode_poly(&crate::model::PolyLayer { degree, coeffs }, 16, "p").unwrap();
            // A flat layer `[N, F]` has one coefficient row per feature: per-channel rows only
            // when every channel is one feature.
            prop_assume!(!(flat && per_channel && hw != 1));
            let shape = if flat { vec![batch, c * hw * hw] } else { vec![batch, c, hw, hw] };
            let n: usize = shape.iter().product();
            let x = RingTensor { shape: shape.clone(), data: (0..n).map(|_| next()).collect() };
            let r_pows: Vec<Vec<Vec<u64>>> = plan.groups.iter()
                .map(|g| (0..g.max_power()).map(|_| (0..n).map(|_| next()).collect()).collect())
                .collect();
            let theirs: Vec<u64> = (0..n * plan.groups.len()).map(|_| next()).collect();
            for t in [Trunc::Share(0), Trunc::Share(1), Trunc::Public] {
                let r1: Vec<&[u64]> = r_pows.iter().map(|r| r[0].as_slice()).collect();
                let mine = poly_opening_shares(&x.data, &r1, &plan, 16, t);
                let mut want_mine = Vec::new();
                for (g, grp) in plan.groups.iter().enumerate() {
                    let mut xg = x.data.clone();
                    t.apply(&mut xg, 16 - grp.frac_bits);
                    want_mine.extend(xg.iter().zip(&r_pows[g][0]).map(|(a, r)| a.wrapping_sub(*r)));
                }
                prop_assert_eq!(&mine, &want_mine);
                let got = poly_from_opening(&x, &mine, &theirs, &r_pows, &plan, 16, t);
                prop_assert_eq!(&got.shape, &shape);
                prop_assert_eq!(got.data, unfused(&x, &mine, &theirs, &r_pows, &plan, t).data, "{:?}", t);
            }
        }
    }

    /// The few-row path of `linear_ring` equals the packed GEMM exactly (wrapping u64).
    #[test]
    fn small_batch_linear_equals_gemm() {
        let mut s = 11u64;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            s
        };
        for (n, k, o) in [(1, 512, 1000), (3, 7, 5), (4, 300, 1), (2, 1, 257), (1, 1024, 10)] {
            let x: Vec<u64> = (0..n * k).map(|i| if i % 5 == 0 { 0 } else { next() }).collect();
            let w: Vec<u64> = (0..k * o).map(|_| next()).collect();
            let mut want = vec![0u64; n * o];
            gemm(&x, &w, &mut want, n, k, o);
            let got =
                linear_ring(&RingTensor { shape: vec![n, k], data: x }, &w, k, o, "t").unwrap();
            assert_eq!(got.data, want, "{n}x{k}x{o}");
        }
    }
}
