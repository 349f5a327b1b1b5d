//! The fixed-point rules shared by the plaintext twin and the secure parties.
//!
//! Every backend that computes on ring elements (the fixed-point twin, the server, the client, the
//! dealer) encodes a [`crate::model::Plan`] with these functions, so they quantise identically and
//! the twin is the exact reference of the secure result up to the stated truncation error.
//!
//! Scales (f = `frac_bits`):
//! - activations at scale f; weights at scale f; biases at scale 2f (added before truncation);
//! - a linear layer's product has scale 2f and is truncated by f;
//! - a polynomial `sum_k c_k x^k` ([`PolyPlan`]): for each power k >= 2 the input is first
//!   truncated to `f_k = min(f, floor(2f/k))` fractional bits, raised to the power (scale `k*f_k`
//!   <= 2f, so degree-4 terms stay inside the ring, cf. ESPN's pre-division, Diaa et al. §4),
//!   truncated back to scale f; then `c_0` (scale 2f) + `c_1 x` + `sum c_k x^k` with coefficients at
//!   scale f is truncated by f. Powers sharing the same `f_k` share one mask `r` (one opening).
//!   Powers whose coefficient is zero in every channel (PILLAR's `x^3`) are not computed.
//!   Both [`PolyProtocol`]s compute `x_g^k` exactly in the ring from the same pre-truncated
//!   shares, so they share this twin.

use crate::error::{Error, Result};
use crate::model::{ConvGeom, ConvLayer, LinearLayer, PolyLayer, PolyProtocol};
use crate::ring::fixed::encode_at;

/// A convolution's weights in the ring: `weight[g]` is the `[c_out/groups, (c_in/groups)*kh*kw]`
/// row-major matrix of group `g` at scale f; `bias` `[c_out]` at scale 2f.
#[derive(Debug, Clone)]
pub struct EncodedConv {
    /// Geometry.
    pub geom: ConvGeom,
    /// Per-group weight matrices.
    pub weight: Vec<Vec<u64>>,
    /// Bias at scale 2f.
    pub bias: Vec<u64>,
}

/// A fully connected layer in the ring: `weight_t` is `W^T`, `[in, out]` row-major at scale f;
/// `bias` `[out]` at scale 2f.
#[derive(Debug, Clone)]
pub struct EncodedLinear {
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Transposed weight `[in, out]`.
    pub weight_t: Vec<u64>,
    /// Bias at scale 2f.
    pub bias: Vec<u64>,
}

fn encode_vec(xs: &[f32], frac_bits: u32, what: &str) -> Result<Vec<u64>> {
    xs.iter()
        .map(|&x| {
            encode_at(x as f64, frac_bits).map_err(|_| Error::RangeExceeded {
                location: what.to_string(),
                value: x as f64,
                bound: ((63 - frac_bits) as f64).exp2(),
            })
        })
        .collect()
}

/// Encodes a conv layer (weights at f, bias at 2f). Errors: `RangeExceeded` for a weight too
/// large for the ring.
pub fn encode_conv(l: &ConvLayer, frac_bits: u32, name: &str) -> Result<EncodedConv> {
    let g = l.geom;
    let want = g.c_out * (g.c_in / g.groups) * g.kh * g.kw;
    if !l.weight.is_empty() && l.weight.len() != want {
        return Err(Error::ShapeMismatch {
            node: name.into(),
            expected: vec![want],
            got: vec![l.weight.len()],
        });
    }
    // An empty weight is a public skeleton (client, dealer): shapes only.
    let w = encode_vec(&l.weight, frac_bits, name)?;
    let per_group = w.len() / g.groups;
    let weight = (0..g.groups).map(|i| w[i * per_group..(i + 1) * per_group].to_vec()).collect();
    let bias = encode_vec(&l.bias, 2 * frac_bits, name)?;
    Ok(EncodedConv { geom: g, weight, bias })
}

/// Encodes a linear layer (transposed weight at f, bias at 2f). Errors: `RangeExceeded`.
pub fn encode_linear(l: &LinearLayer, frac_bits: u32, name: &str) -> Result<EncodedLinear> {
    let (i_n, o_n) = (l.in_features, l.out_features);
    if !l.weight.is_empty() && l.weight.len() != i_n * o_n {
        return Err(Error::ShapeMismatch {
            node: name.into(),
            expected: vec![o_n, i_n],
            got: vec![l.weight.len()],
        });
    }
    let w = encode_vec(&l.weight, frac_bits, name)?;
    if w.is_empty() {
        let bias = encode_vec(&l.bias, 2 * frac_bits, name)?;
        return Ok(EncodedLinear {
            in_features: i_n,
            out_features: o_n,
            weight_t: Vec::new(),
            bias,
        });
    }
    let mut weight_t = vec![0u64; i_n * o_n];
    for o in 0..o_n {
        for i in 0..i_n {
            weight_t[i * o_n + o] = w[o * i_n + i];
        }
    }
    let bias = encode_vec(&l.bias, 2 * frac_bits, name)?;
    Ok(EncodedLinear { in_features: i_n, out_features: o_n, weight_t, bias })
}

/// Powers of a polynomial that share one pre-truncation scale and so one mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerGroup {
    /// Fractional bits the input is truncated to before raising it to the powers.
    pub frac_bits: u32,
    /// The powers (each >= 2) computed from this group's mask, ascending.
    pub powers: Vec<usize>,
}

impl PowerGroup {
    /// Highest power of the group (the dealer sends `r^2 .. r^max`).
    pub fn max_power(&self) -> usize {
        *self.powers.last().unwrap_or(&1)
    }
}

/// A polynomial activation in the ring: power groups and per-channel coefficients.
#[derive(Debug, Clone)]
pub struct PolyPlan {
    /// Degree d.
    pub degree: usize,
    /// Power groups (empty for degree 1).
    pub groups: Vec<PowerGroup>,
    /// `coeffs[ch]` = `[c_0 at 2f, c_1 at f, ..., c_d at f]`; one row when shared.
    pub coeffs: Vec<Vec<u64>>,
    /// How the secure parties compute the powers (the twin ignores it).
    pub protocol: PolyProtocol,
}

impl PolyPlan {
    /// Row of ring coefficients for channel `ch`.
    pub fn coeffs_of(&self, ch: usize) -> &[u64] {
        if self.coeffs.len() == 1 {
            &self.coeffs[0]
        } else {
            &self.coeffs[ch]
        }
    }
}

/// Fractional bits of the input of power `k`: `min(f, floor(2f/k))`.
pub fn power_frac_bits(k: usize, frac_bits: u32) -> u32 {
    frac_bits.min((2 * frac_bits as usize / k.max(1)) as u32)
}

/// Builds the ring form of a polynomial layer (see the module doc for the scales), for the
/// default [`PolyProtocol`] (set [`PolyPlan::protocol`] to change it).
/// Errors: `InvalidArgument` for degree 0 or > 8, `RangeExceeded` for a huge coefficient.
pub fn encode_poly(l: &PolyLayer, frac_bits: u32, name: &str) -> Result<PolyPlan> {
    if l.degree == 0 || l.degree > 8 {
        return Err(Error::InvalidArgument(format!(
            "{name}: polynomial degree {} not in 1..=8",
            l.degree
        )));
    }
    let mut groups: Vec<PowerGroup> = Vec::new();
    for k in 2..=l.degree {
        if l.coeffs.iter().all(|row| row.get(k).is_none_or(|c| *c == 0.0)) {
            continue;
        }
        let fk = power_frac_bits(k, frac_bits);
        match groups.iter_mut().find(|g| g.frac_bits == fk) {
            Some(g) => g.powers.push(k),
            None => groups.push(PowerGroup { frac_bits: fk, powers: vec![k] }),
        }
    }
    let mut coeffs = Vec::with_capacity(l.coeffs.len());
    for row in &l.coeffs {
        let mut enc = Vec::with_capacity(l.degree + 1);
        for k in 0..=l.degree {
            let c = row.get(k).copied().unwrap_or(0.0) as f64;
            let scale = if k == 0 { 2 * frac_bits } else { frac_bits };
            enc.push(encode_at(c, scale).map_err(|_| Error::RangeExceeded {
                location: format!("{name} coefficient c_{k}"),
                value: c,
                bound: ((63 - scale) as f64).exp2(),
            })?);
        }
        coeffs.push(enc);
    }
    Ok(PolyPlan { degree: l.degree, groups, coeffs, protocol: PolyProtocol::default() })
}

/// Number of channels of a per-sample shape for per-channel ops: dim 0 of `[C,H,W]` or `[F]`.
pub fn channels_of(sample_shape: &[usize]) -> usize {
    sample_shape.first().copied().unwrap_or(1)
}

/// Elements per channel of a per-sample shape (`H*W`, or 1 for `[F]`).
pub fn inner_of(sample_shape: &[usize]) -> usize {
    sample_shape.iter().skip(1).product()
}

/// Binomial coefficient C(n, k) as a ring element (exact for n <= 8).
pub fn binom(n: usize, k: usize) -> u64 {
    let mut r: u64 = 1;
    for i in 0..k {
        r = r * (n - i) as u64 / (i + 1) as u64;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pillar_degree4_groups_stay_inside_the_ring() {
        let l = PolyLayer { degree: 4, coeffs: vec![vec![0.31, 0.5, 0.156, 0.0, -0.0029]] };
        let p = encode_poly(&l, 16, "t").unwrap();
        // k=2 at 16 bits, k=4 at 8 bits (k=3 has coefficient 0: not computed): every power at
        // scale <= 32.
        assert_eq!(p.groups.len(), 2);
        assert_eq!(p.groups[1], PowerGroup { frac_bits: 8, powers: vec![4] });
        for g in &p.groups {
            for &k in &g.powers {
                assert!(k as u32 * g.frac_bits <= 32);
            }
        }
        assert_eq!(binom(4, 2), 6);
    }

    #[test]
    fn degree_out_of_range_is_an_error() {
        let l = PolyLayer { degree: 9, coeffs: vec![vec![0.0; 10]] };
        assert!(encode_poly(&l, 16, "t").is_err());
    }
}
