//! Polynomials in one variable `x` with one row of coefficients shared by every channel or one
//! row per channel: the symbolic values of an element-wise region (docs/import.md, "How
//! activations are recognised").
//!
//! A region between two linear ops is a tree of element-wise ops (Mul, Add, Sub, Div by a
//! constant, Pow by a small integer, Neg, BatchNorm) over one tensor `x`. Evaluating it on a
//! [`Poly`] instead of numbers gives its polynomial in `x`, whatever its spelling: `x*x`,
//! `Pow(x, 2)`, `torch.square`, folded constants, cached powers (`x2 = x*x; x4 = x2*x2`) and
//! missing terms all end in the same coefficients. Arithmetic is in f64; rows are rounded to f32
//! once, when the importer writes them.

use polypi_core::model::file::MAX_POLY_DEGREE;

/// A row of each of two polynomials, for the same channel.
type RowPair<'a> = (&'a [f64], &'a [f64]);

/// `sum_k rows[c][k] * x^k` (ascending powers) for channel `c`; `rows.len() == 1` means one row
/// shared by every channel. A constant (per channel or not) is a polynomial of degree 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Poly {
    /// One row (shared) or one row per channel, ascending powers; rows may differ in length.
    pub rows: Vec<Vec<f64>>,
}

impl Poly {
    /// The identity `x`.
    pub fn identity() -> Poly {
        Poly { rows: vec![vec![0.0, 1.0]] }
    }

    /// The constant `v` (shared) or `v[c]` per channel (`v.len() > 1`).
    pub fn constant(v: &[f64]) -> Poly {
        Poly { rows: v.iter().map(|&c| vec![c]).collect() }
    }

    /// True when this is exactly `x` in every channel.
    pub fn is_identity(&self) -> bool {
        self.rows.iter().all(|r| trimmed(r) == [0.0, 1.0])
    }

    /// Highest power with a non-zero coefficient in any row (0 for constants).
    pub fn degree(&self) -> usize {
        self.rows.iter().map(|r| trimmed(r).len().saturating_sub(1)).max().unwrap_or(0)
    }

    /// The rows with trailing zeros removed and every row padded to `degree + 1` coefficients
    /// (at least 2: `[c0, c1]`); one row when all channels are equal.
    pub fn normalised(&self) -> Vec<Vec<f64>> {
        let n = self.degree().max(1) + 1;
        let mut rows: Vec<Vec<f64>> = self
            .rows
            .iter()
            .map(|r| {
                let mut r = trimmed(r).to_vec();
                r.resize(n, 0.0);
                r
            })
            .collect();
        if rows.windows(2).all(|w| w[0] == w[1]) {
            rows.truncate(1);
        }
        rows
    }

    /// Pairs the rows of `self` and `o` (one shared row broadcasts to the other's channels).
    /// Errors when both are per channel with different channel counts.
    fn zip<'a>(&'a self, o: &'a Poly) -> Result<Vec<RowPair<'a>>, String> {
        let (a, b) = (self.rows.len(), o.rows.len());
        let n = a.max(b);
        if a != n && a != 1 || b != n && b != 1 {
            return Err(format!("per-channel coefficients for {a} and {b} channels do not match"));
        }
        Ok((0..n)
            .map(|c| {
                (
                    self.rows[if a == 1 { 0 } else { c }].as_slice(),
                    o.rows[if b == 1 { 0 } else { c }].as_slice(),
                )
            })
            .collect())
    }

    /// `self + o`.
    pub fn add(&self, o: &Poly) -> Result<Poly, String> {
        let rows = self
            .zip(o)?
            .into_iter()
            .map(|(a, b)| {
                let mut r = vec![0.0; a.len().max(b.len())];
                for (k, v) in a.iter().enumerate() {
                    r[k] += v;
                }
                for (k, v) in b.iter().enumerate() {
                    r[k] += v;
                }
                r
            })
            .collect();
        Ok(Poly { rows })
    }

    /// `self * o`. Errors when the product's degree exceeds [`MAX_POLY_DEGREE`].
    pub fn mul(&self, o: &Poly) -> Result<Poly, String> {
        let d = self.degree() + o.degree();
        if d > MAX_POLY_DEGREE {
            return Err(format!(
                "the activation's polynomial would reach degree {d}, above polypi's maximum \
                 {MAX_POLY_DEGREE}"
            ));
        }
        let rows = self
            .zip(o)?
            .into_iter()
            .map(|(a, b)| {
                let (a, b) = (trimmed(a), trimmed(b));
                let mut r = vec![0.0; (a.len() + b.len()).saturating_sub(1).max(1)];
                for (i, x) in a.iter().enumerate() {
                    for (j, y) in b.iter().enumerate() {
                        r[i + j] += x * y;
                    }
                }
                r
            })
            .collect();
        Ok(Poly { rows })
    }

    /// `self^k` by repeated multiplication. Errors as [`Poly::mul`].
    pub fn pow(&self, k: u32) -> Result<Poly, String> {
        let mut out = Poly::constant(&[1.0]);
        for _ in 0..k {
            out = out.mul(self)?;
        }
        Ok(out)
    }

    /// `-self`.
    pub fn neg(&self) -> Poly {
        Poly { rows: self.rows.iter().map(|r| r.iter().map(|v| -v).collect()).collect() }
    }

    /// When the polynomial is one shared row `a * (x + c)^d` with `d >= 2` (PolyKervNets'
    /// kervolution, R-PKN's scale `a`), returns `(c, d, a)`. The match is checked coefficient by
    /// coefficient to a relative 1e-9 of the largest one, so only what was written as such
    /// (up to f64 rounding) matches.
    pub fn as_polykerv(&self) -> Option<(f64, u32, f64)> {
        let rows = self.normalised();
        if rows.len() != 1 {
            return None;
        }
        let r = &rows[0];
        let d = r.len() - 1;
        if d < 2 {
            return None;
        }
        let a = r[d];
        let c = r[d - 1] / (d as f64 * a);
        let scale = r.iter().fold(0f64, |m, v| m.max(v.abs()));
        let mut binom = 1f64;
        for k in (0..=d).rev() {
            // binom = C(d, k) for k from d down to 0.
            let want = a * binom * c.powi((d - k) as i32);
            if (want - r[k]).abs() > 1e-9 * scale {
                return None;
            }
            binom = binom * k as f64 / (d - k + 1) as f64;
        }
        Some((c, d as u32, a))
    }

    /// Human-readable form, e.g. `0.2 + 0.5*x + 0.25*x^2 - 0.01*x^4` (first channel's row and a
    /// note when per channel).
    pub fn describe(&self) -> String {
        let rows = self.normalised();
        let mut s = String::new();
        for (k, v) in rows[0].iter().enumerate() {
            if *v == 0.0 {
                continue;
            }
            let term = match k {
                0 => format!("{v:.4}"),
                1 => format!("{v:.4}*x"),
                _ => format!("{v:.4}*x^{k}"),
            };
            if s.is_empty() {
                s = term;
            } else if let Some(t) = term.strip_prefix('-') {
                s += &format!(" - {t}");
            } else {
                s += &format!(" + {term}");
            }
        }
        if s.is_empty() {
            s = "0".into();
        }
        if rows.len() > 1 {
            s = format!("per channel ({} channels), channel 0: {s}", rows.len());
        }
        s
    }
}

/// `r` without trailing zero coefficients.
fn trimmed(r: &[f64]) -> &[f64] {
    let n = r.iter().rposition(|v| *v != 0.0).map_or(0, |i| i + 1);
    &r[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x() -> Poly {
        Poly::identity()
    }
    fn k(v: f64) -> Poly {
        Poly::constant(&[v])
    }

    #[test]
    fn spellings_of_x2act_agree() {
        // s*w0*x^2 + w1*x + b, as x*x, as pow, with constants folded in different orders.
        let (s, w0, w1, b) = (0.1, 0.5, 1.0, 0.0);
        let a = k(s).mul(&k(w0)).unwrap().mul(&x().mul(&x()).unwrap()).unwrap();
        let a = a.add(&k(w1).mul(&x()).unwrap()).unwrap().add(&k(b)).unwrap();
        let p = x().pow(2).unwrap().mul(&k(s * w0)).unwrap().add(&x()).unwrap();
        assert_eq!(a.normalised(), p.normalised());
        assert_eq!(a.normalised(), vec![vec![0.0, 1.0, 0.05]]);
    }

    #[test]
    fn power_caching_gives_the_quartic() {
        let x2 = x().mul(&x()).unwrap();
        let x4 = x2.mul(&x2).unwrap();
        let q = k(0.2)
            .add(&k(0.5).mul(&x()).unwrap())
            .unwrap()
            .add(&k(0.25).mul(&x2).unwrap())
            .unwrap()
            .add(&k(-0.01).mul(&x4).unwrap())
            .unwrap();
        assert_eq!(q.normalised(), vec![vec![0.2, 0.5, 0.25, 0.0, -0.01]]);
        assert_eq!(q.degree(), 4);
        assert_eq!(q.as_polykerv(), None);
    }

    #[test]
    fn kervolution_is_recognised() {
        let p = k(0.3).mul(&x().add(&k(0.5)).unwrap().pow(2).unwrap()).unwrap();
        let (c, d, a) = p.as_polykerv().unwrap();
        assert!((c - 0.5).abs() < 1e-12 && d == 2 && (a - 0.3).abs() < 1e-12);
        // A quadratic that is not a scaled square is not a kervolution.
        assert_eq!(p.add(&k(0.01)).unwrap().as_polykerv(), None);
    }

    #[test]
    fn per_channel_rows_broadcast_and_collapse() {
        let w = Poly::constant(&[1.0, 2.0, 3.0]);
        let p = w.mul(&x().mul(&x()).unwrap()).unwrap().add(&x()).unwrap();
        assert_eq!(p.normalised().len(), 3);
        assert_eq!(p.normalised()[2], vec![0.0, 1.0, 3.0]);
        let same = Poly::constant(&[2.0, 2.0]).mul(&x()).unwrap();
        assert_eq!(same.normalised(), vec![vec![0.0, 2.0]]);
        assert!(Poly::constant(&[1.0, 2.0]).add(&Poly::constant(&[1.0, 2.0, 3.0])).is_err());
    }

    #[test]
    fn degree_above_the_maximum_is_refused() {
        assert!(x().pow(MAX_POLY_DEGREE as u32).is_ok());
        assert!(x().pow(MAX_POLY_DEGREE as u32 + 1).is_err());
    }

    #[test]
    fn identity_detection() {
        assert!(x().is_identity());
        assert!(x().mul(&k(1.0)).unwrap().add(&k(0.0)).unwrap().is_identity());
        assert!(!x().mul(&k(2.0)).unwrap().is_identity());
    }
}
