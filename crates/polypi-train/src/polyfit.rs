//! PILLAR's polynomial fitter (Diaa et al., "Fast and Private Inference of Deep Neural Networks by
//! Co-designing Activation Functions", USENIX Security '24, §4.1; `LucasFenaux/PILLAR-ESPN`): the
//! degree-`d` polynomial `q(x) = sum_i (n_i / 2^p) x^i` with integer numerators, `|n_i / 2^p| <= 1/2`,
//! that best approximates ReLU in least squares on the grid `-r, -r + h, ..., r` (h = 0.01).
//!
//! Integer coefficients make `q` exact in fixed point with `p` fractional bits. The fit is an
//! integer least-squares problem (a closest-vector problem in the lattice of the Cholesky factor
//! of the Gram matrix). [`fit_relu`] solves the real problem first (QR of the Vandermonde matrix
//! in the scaled variable `x / r`, by `nalgebra`), then finds the exact integer optimum by
//! Schnorr-Euchner enumeration (sphere decoding) around it. With p = 10, r = 5, d = 4 it is at
//! least as good as the seed's cached coefficients `(322, 512, 160, 0, -3) / 1024` (test below).

use anyhow::{bail, Result};
use nalgebra::{DMatrix, DVector};
use serde::Serialize;

/// The result of a fit: coefficients lowest degree first, and their error against ReLU on the
/// grid.
#[derive(Debug, Clone, Serialize)]
pub struct PolyFit {
    /// Degree `d`.
    pub degree: usize,
    /// Precision `p`: coefficients are integers divided by `2^p`.
    pub precision_bits: u32,
    /// Half-width `r` of the fitting interval `[-r, r]`.
    pub range: f64,
    /// Grid step `h`.
    pub step: f64,
    /// Number of grid points.
    pub points: usize,
    /// Integer numerators `n_i`, lowest degree first (`coefficients[i] = n_i / 2^p`).
    pub numerators: Vec<i64>,
    /// Coefficients `n_i / 2^p`, lowest degree first.
    pub coefficients: Vec<f64>,
    /// Sum of squared errors `sum_x (q(x) - relu(x))^2` over the grid.
    pub sse: f64,
    /// Root mean squared error over the grid.
    pub rmse: f64,
    /// Largest `|q(x) - relu(x)|` on the grid.
    pub max_abs_error: f64,
    /// The unconstrained (real) least-squares coefficients, lowest degree first.
    pub real_coefficients: Vec<f64>,
    /// Sum of squared errors of the real coefficients (a lower bound of `sse`).
    pub real_sse: f64,
}

fn grid(range: f64, step: f64) -> Vec<f64> {
    let n = (2.0 * range / step).round() as i64;
    (0..=n).map(|k| -range + k as f64 * step).collect()
}

/// Sum of squared errors of `coeffs` (lowest degree first) against ReLU on `xs`, and the max
/// absolute error.
pub fn relu_error(coeffs: &[f64], xs: &[f64]) -> (f64, f64) {
    let mut sse = 0.0;
    let mut max = 0.0f64;
    for &x in xs {
        let q = coeffs.iter().rev().fold(0.0, |acc, &c| acc * x + c);
        let e = q - x.max(0.0);
        sse += e * e;
        max = max.max(e.abs());
    }
    (sse, max)
}

/// Fits PILLAR's integer-coefficient polynomial of `degree` to ReLU on `[-range, range]` with grid
/// step `step`, coefficients `n / 2^precision_bits` with `|n / 2^p| <= 1/2`.
///
/// # Errors
/// A degree outside 1..=10, precision bits outside 1..=30, a range or step that is not positive
/// and finite, a grid of more than 10^7 points or of fewer points than coefficients.
pub fn fit_relu(degree: usize, precision_bits: u32, range: f64, step: f64) -> Result<PolyFit> {
    if !(1..=10).contains(&degree) {
        bail!("--degree {degree}: must be 1..=10");
    }
    if !(1..=30).contains(&precision_bits) {
        bail!("--precision-bits {precision_bits}: must be 1..=30");
    }
    if !(range.is_finite() && range > 0.0 && step.is_finite() && step > 0.0) {
        bail!("--range {range} / --step {step}: must be positive and finite");
    }
    if 2.0 * range / step > 1e7 {
        bail!("--range {range} / --step {step}: more than 10^7 grid points");
    }
    let xs = grid(range, step);
    let m = degree + 1;
    if xs.len() < m {
        bail!("{} grid points cannot fit {m} coefficients: use a smaller --step", xs.len());
    }

    // Real least squares in t = x / r (well conditioned), then c_i = a_i / r^i.
    let a = DMatrix::from_fn(xs.len(), m, |row, col| (xs[row] / range).powi(col as i32));
    let b = DVector::from_iterator(xs.len(), xs.iter().map(|&x| x.max(0.0)));
    let qr = a.clone().qr();
    let qtb = qr.q().transpose() * &b;
    let Some(sol) = qr.r().solve_upper_triangular(&qtb) else {
        bail!("the least-squares system is singular (degree {degree}, {} points)", xs.len());
    };
    let real: Vec<f64> = (0..m).map(|i| sol[i] / range.powi(i as i32)).collect();
    let (real_sse, _) = relu_error(&real, &xs);

    // Integer least squares (a closest-vector problem): with z the real solution in units of
    // 2^-p, err(n) = ||R (n - z)||^2 + const, where R^T R = G = sum_x phi phi^T, phi_i = x^i / 2^p.
    // In the scaled variable t = x / r, phi_i = t^i * d_i with d_i = r^i / 2^p, so R = R_t D with
    // R_t the Cholesky factor of sum_t t^i t^j (well conditioned) and D = diag(d_i). The search
    // is Schnorr-Euchner enumeration (sphere decoding), exact within the box |n_i| <= 2^(p-1).
    let scale = f64::from(1u32 << precision_bits);
    let bound = (scale / 2.0).floor() as i64;
    let gt = a.transpose() * &a;
    let Some(chol) = gt.cholesky() else {
        bail!("the Gram matrix is not positive definite (degree {degree}, {} points)", xs.len());
    };
    let rt = chol.l().transpose();
    let d: Vec<f64> = (0..m).map(|i| range.powi(i as i32) / scale).collect();
    let r = DMatrix::from_fn(m, m, |i, j| rt[(i, j)] * d[j]);
    let z: Vec<f64> = real.iter().map(|c| c * scale).collect();
    let mut best = vec![0i64; m];
    let mut best_err = f64::INFINITY;
    let mut n = vec![0i64; m];
    sphere_search(&r, &z, bound, m, 0.0, &mut n, &mut best, &mut best_err);
    if !best_err.is_finite() {
        bail!("no integer coefficients within |c_i| <= 1/2 (degree {degree})");
    }
    let coefficients: Vec<f64> = best.iter().map(|&n| n as f64 / scale).collect();
    let (sse, max_abs_error) = relu_error(&coefficients, &xs);
    Ok(PolyFit {
        degree,
        precision_bits,
        range,
        step,
        points: xs.len(),
        numerators: best,
        rmse: (sse / xs.len() as f64).sqrt(),
        coefficients,
        sse,
        max_abs_error,
        real_coefficients: real,
        real_sse,
    })
}

/// Schnorr-Euchner enumeration of `min ||R (n - z)||^2` over integers `|n_i| <= bound`, `R` upper
/// triangular `m x m`; coordinates are fixed from the last (`level` counts those already fixed).
#[allow(clippy::too_many_arguments)]
fn sphere_search(
    r: &DMatrix<f64>,
    z: &[f64],
    bound: i64,
    level: usize,
    partial: f64,
    n: &mut [i64],
    best: &mut Vec<i64>,
    best_err: &mut f64,
) {
    if level == 0 {
        if partial < *best_err {
            *best_err = partial;
            best.copy_from_slice(n);
        }
        return;
    }
    let i = level - 1;
    let m = z.len();
    // Row i of R (n - z): rii (n_i - z_i) + sum_{j>i} rij (n_j - z_j) = rii (n_i - center).
    let tail: f64 = (i + 1..m).map(|j| r[(i, j)] * (n[j] as f64 - z[j])).sum();
    let rii = r[(i, i)];
    let center = z[i] - tail / rii;
    let c0 = center.round() as i64;
    // Zig-zag from the nearest integer outwards; stop a side once it exceeds the best.
    for side in [1i64, -1] {
        let mut k = if side == 1 { 0 } else { 1 };
        loop {
            let v = c0 + side * k;
            let dist = rii * (v as f64 - center);
            let p = partial + dist * dist;
            if p >= *best_err || (side == 1 && v > bound) || (side == -1 && v < -bound) {
                break;
            }
            if v.abs() <= bound {
                n[i] = v;
                sphere_search(r, z, bound, i, p, n, best, best_err);
            }
            k += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's cached degree-4 coefficients at p = 10, r = 5 (PILLAR-ESPN configs).
    const SEED_DEG4: [f64; 5] = [322.0, 512.0, 160.0, 0.0, -3.0];

    #[test]
    fn degree_4_matches_or_beats_the_seeds_cached_coefficients() {
        let fit = fit_relu(4, 10, 5.0, 0.01).unwrap();
        let xs = grid(5.0, 0.01);
        let seed: Vec<f64> = SEED_DEG4.iter().map(|n| n / 1024.0).collect();
        let (seed_sse, _) = relu_error(&seed, &xs);
        assert!(fit.sse <= seed_sse + 1e-9, "fit {} > seed {}", fit.sse, seed_sse);
        assert!(fit.sse >= fit.real_sse - 1e-9, "integer fit below the real optimum");
        assert_eq!(fit.points, 1001);
        assert!(fit.coefficients.iter().all(|c| c.abs() <= 0.5));
    }

    #[test]
    fn integer_fit_is_a_local_optimum_and_degree_helps() {
        let mut prev = f64::INFINITY;
        for d in 2..=6 {
            let fit = fit_relu(d, 10, 5.0, 0.01).unwrap();
            let xs = grid(5.0, 0.01);
            // No single-coefficient step improves the fit.
            for i in 0..=d {
                for delta in [-1i64, 1] {
                    let mut n = fit.numerators.clone();
                    n[i] += delta;
                    if n[i].abs() > 512 {
                        continue;
                    }
                    let c: Vec<f64> = n.iter().map(|&v| v as f64 / 1024.0).collect();
                    assert!(relu_error(&c, &xs).0 >= fit.sse - 1e-9, "degree {d}: {n:?} is better");
                }
            }
            assert!(fit.sse <= prev + 1e-9, "degree {d} fits worse than degree {}", d - 1);
            prev = fit.sse;
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(fit_relu(0, 10, 5.0, 0.01).is_err());
        assert!(fit_relu(4, 0, 5.0, 0.01).is_err());
        assert!(fit_relu(4, 10, -1.0, 0.01).is_err());
        assert!(fit_relu(4, 10, 5.0, 0.0).is_err());
        assert!(fit_relu(4, 10, 5.0, 1e-9).is_err());
        assert!(fit_relu(10, 10, 0.01, 0.01).is_err());
    }
}
