//! Fixed-point encoding of reals in Z_2^64 with `frac_bits` fractional bits.

use crate::error::{Error, Result};

/// A fixed-point scale: reals are encoded as `round(x * 2^frac_bits)` in two's complement.
///
/// With `frac_bits = f` a value must satisfy `|x| < 2^(63 - f)` to be encodable; a product of two
/// encoded values has `2f` fractional bits and must satisfy `|x*y| < 2^(63 - 2f)` before it is
/// truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedPoint {
    /// Number of fractional bits (0..=62).
    pub frac_bits: u32,
}

impl Default for FixedPoint {
    /// 16 fractional bits, CrypTen's and ESPN's default.
    fn default() -> Self {
        FixedPoint { frac_bits: 16 }
    }
}

impl FixedPoint {
    /// A scale with `frac_bits` fractional bits. Errors: `InvalidArgument` if `frac_bits > 62`.
    pub fn new(frac_bits: u32) -> Result<Self> {
        if frac_bits > 62 {
            return Err(Error::InvalidArgument(format!("frac_bits {frac_bits} > 62")));
        }
        Ok(FixedPoint { frac_bits })
    }

    /// `2^frac_bits` as f64.
    pub fn scale(&self) -> f64 {
        (self.frac_bits as f64).exp2()
    }

    /// Largest magnitude that encodes without overflow: `2^(63 - frac_bits)`.
    pub fn max_abs(&self) -> f64 {
        ((63 - self.frac_bits) as f64).exp2()
    }

    /// Encodes one real (round to nearest, ties away from zero).
    /// Errors: `RangeExceeded` if `x` is not finite or `|x| >= 2^(63 - frac_bits)`.
    pub fn encode(&self, x: f64) -> Result<u64> {
        encode_at(x, self.frac_bits)
    }

    /// Encodes one real at an explicit number of fractional bits (see [`FixedPoint::encode`]).
    pub fn encode_at(&self, x: f64, frac_bits: u32) -> Result<u64> {
        encode_at(x, frac_bits)
    }

    /// Encodes a slice; errors as [`FixedPoint::encode`], naming the first bad index.
    pub fn encode_slice(&self, xs: &[f32]) -> Result<Vec<u64>> {
        xs.iter()
            .enumerate()
            .map(|(i, &x)| {
                encode_at(x as f64, self.frac_bits).map_err(|e| match e {
                    Error::RangeExceeded { value, bound, .. } => {
                        Error::RangeExceeded { location: format!("element {i}"), value, bound }
                    }
                    other => other,
                })
            })
            .collect()
    }

    /// Decodes one ring element (two's complement) to a real.
    pub fn decode(&self, v: u64) -> f64 {
        decode_at(v, self.frac_bits)
    }

    /// Decodes a slice to f32.
    pub fn decode_slice(&self, vs: &[u64]) -> Vec<f32> {
        vs.iter().map(|&v| decode_at(v, self.frac_bits) as f32).collect()
    }
}

/// Encodes `x` with `frac_bits` fractional bits. Errors: `RangeExceeded` when `x` is NaN/inf or
/// `|x| * 2^frac_bits >= 2^63`.
pub fn encode_at(x: f64, frac_bits: u32) -> Result<u64> {
    let scaled = (x * (frac_bits as f64).exp2()).round();
    if !scaled.is_finite() || scaled.abs() >= i64::MAX as f64 {
        return Err(Error::RangeExceeded {
            location: "fixed-point encode".into(),
            value: x,
            bound: ((63 - frac_bits.min(63)) as f64).exp2(),
        });
    }
    Ok((scaled as i64) as u64)
}

/// Decodes a ring element with `frac_bits` fractional bits (two's complement).
pub fn decode_at(v: u64, frac_bits: u32) -> f64 {
    (v as i64) as f64 / (frac_bits as f64).exp2()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn encode_decode_round_trip(x in -1.0e6f64..1.0e6, f in 0u32..40) {
            let fp = FixedPoint::new(f).unwrap();
            let back = fp.decode(fp.encode(x).unwrap());
            prop_assert!((back - x).abs() <= 0.5 / fp.scale() + 1e-9 * x.abs());
        }
    }

    #[test]
    fn overflow_is_an_error() {
        let fp = FixedPoint::new(16).unwrap();
        assert!(fp.encode(1e15).is_err());
        assert!(fp.encode(f64::NAN).is_err());
        assert!(fp.encode(-140_000_000_000_000.0).is_ok());
        assert!(FixedPoint::new(63).is_err());
    }

    #[test]
    fn negative_values_are_twos_complement() {
        let fp = FixedPoint::new(16).unwrap();
        assert_eq!(fp.encode(-1.0).unwrap(), (-65536i64) as u64);
        assert_eq!(fp.decode((-98304i64) as u64), -1.5);
    }
}
