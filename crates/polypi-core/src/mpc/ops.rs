//! Ring-tensor operations shared by the fixed-point twin and both secure parties.
//!
//! All of these are linear (or local) on additive shares, so the same code runs on a plaintext
//! ring tensor and on either party's share; only truncation differs ([`Trunc`]).

use super::encode::{binom, EncodedConv, EncodedLinear, PolyPlan};
use crate::error::{Error, Result};
use crate::model::ConvGeom;
use crate::ring::depthwise::{depthwise_conv, is_depthwise};
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
    let mut y = vec![0u64; cog * cols_n];
    for (g, wg) in weight.iter().enumerate() {
        // Unfolded straight into the GEMM's packed layout (no second copy for packing).
        let cols = crate::ring::im2col::im2col_packed(&x.data, n, geom, g);
        debug_assert_eq!((cols.k, cols.n), (k, cols_n));
        crate::ring::gemm::gemm_packed(wg, &cols, &mut y, cog);
        col2out(&y, &mut out.data, n, geom, g);
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

/// Shares (or twin values) of `x^k` for each `k` in `powers` from the opened `e = x - r` and this
/// party's shares of `r^1..r^m` (`r_pows[i-1]` = share of `r^i`):
/// `x^k = sum_i C(k,i) e^(k-i) r^i`, where the `i = 0` term is added by the party that adds
/// constants (HoneyBadger-style dealer powers; one round for any degree).
pub fn powers_from_opening(
    e: &[u64],
    r_pows: &[Vec<u64>],
    powers: &[usize],
    t: Trunc,
) -> Vec<Vec<u64>> {
    let n = e.len();
    let mut out = Vec::with_capacity(powers.len());
    for &k in powers {
        // Term by term over whole vectors (vectorisable): i = k..0 with epow = e^(k-i).
        let mut acc = vec![0u64; n];
        let mut epow = vec![1u64; n];
        for i in (0..=k).rev() {
            let c = binom(k, i);
            if i > 0 {
                for ((a, p), r) in acc.iter_mut().zip(&epow).zip(&r_pows[i - 1]) {
                    *a = a.wrapping_add(c.wrapping_mul(p.wrapping_mul(*r)));
                }
                for (p, ev) in epow.iter_mut().zip(e) {
                    *p = p.wrapping_mul(*ev);
                }
            } else if t.adds_constants() {
                for (a, p) in acc.iter_mut().zip(&epow) {
                    *a = a.wrapping_add(c.wrapping_mul(*p));
                }
            }
        }
        out.push(acc);
    }
    out
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
