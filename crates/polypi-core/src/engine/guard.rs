//! The client's runtime range guard: refuse garbage instead of returning a wrong prediction.
//!
//! A fixed-point wrap-around in the ring, or a failed SecureML local truncation (see
//! [`crate::model::range`]), does not give a slightly wrong result: the affected value is off by
//! about `2^(64 - t)` ring units, and every later layer spreads the error, so the revealed logits
//! are huge (close to uniform over the ring) with overwhelming probability. The client therefore
//! checks, locally and without sending anything:
//! 1. before the inference, its own input against the calibrated input range times a margin
//!    (an input far outside the calibration data may overflow some layer);
//! 2. after the reveal, the logits against the calibrated logit range times the margin.
//!
//! Both bounds come from `polypi calibrate` ([`crate::model::range::Ranges`]); the server sends
//! the two calibrated maxima ([`GuardBounds`]) with the public plan skeleton (two numbers about
//! the model, nothing about any input). The server learns nothing from the checks: a refused
//! input is never sent, and the logit check runs after the last message.
//!
//! What the guard cannot detect: an out-of-distribution input inside the input bound whose
//! values stay inside the ring is computed correctly (it is then the model's answer, not
//! garbage); a garbage logit vector that happens to land inside the bound (probability about
//! `2 * bound * 2^f / 2^64` per logit for uniform garbage, below 2^-40 for the shipped models) is
//! not detected.

use crate::error::Error;
use serde::{Deserialize, Serialize};

/// The calibrated maxima the client checks against (real values, before the margin).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardBounds {
    /// Calibrated max `|x|` of the (normalised) input.
    pub input_max_abs: f64,
    /// Calibrated max `|logit|`.
    pub logit_max_abs: f64,
}

impl GuardBounds {
    /// Checks that both maxima are finite and positive. Errors: `Protocol` (they come from the
    /// server).
    pub fn check(&self) -> crate::Result<()> {
        let ok = |x: f64| x.is_finite() && x > 0.0;
        if ok(self.input_max_abs) && ok(self.logit_max_abs) {
            Ok(())
        } else {
            Err(Error::Protocol(format!("invalid range guard bounds {self:?}")))
        }
    }
}

/// What the client does when a check fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuardMode {
    /// No checks.
    Off,
    /// Log a warning and report the violation next to the (possibly wrong) result.
    Warn,
    /// Return [`Error::RangeGuard`] instead of the result (default).
    #[default]
    Refuse,
}

/// The client's guard policy: mode and margin (bound = margin x calibrated max).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardPolicy {
    /// What to do on a violation.
    pub mode: GuardMode,
    /// Factor applied to the calibrated maxima (>= 1; default 2).
    pub margin: f64,
}

impl Default for GuardPolicy {
    /// Refuse, margin [`crate::model::range::DEFAULT_MARGIN`].
    fn default() -> Self {
        GuardPolicy { mode: GuardMode::Refuse, margin: crate::model::range::DEFAULT_MARGIN }
    }
}

/// Which check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardCheck {
    /// The client's input is outside the calibrated input range x margin.
    Input,
    /// The revealed logits are outside the calibrated logit range x margin.
    Logits,
}

/// A failed check: the largest `|value|` found (infinite for NaN) and the bound it exceeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RangeViolation {
    /// Which check.
    pub check: GuardCheck,
    /// Largest `|value|` of the checked tensor.
    pub value: f64,
    /// The bound (margin x calibrated max).
    pub bound: f64,
}

impl RangeViolation {
    /// The error the client returns in [`GuardMode::Refuse`].
    pub fn to_error(&self) -> Error {
        let check = match self.check {
            GuardCheck::Input => {
                "input max |x| (outside the calibrated input range x margin: some layer could \
                 overflow the ring)"
            }
            GuardCheck::Logits => {
                "logits max |y| (outside the calibrated logit range x margin: the private result is \
                 garbage from a fixed-point wrap-around or truncation failure)"
            }
        };
        Error::RangeGuard { check: check.into(), value: self.value, bound: self.bound }
    }
}

/// Whether `e` is [`RangeViolation::to_error`] of a [`GuardCheck::Logits`] violation: the
/// refusal of a result whose logits left the calibrated range (a probabilistic truncation
/// failure, worth a retry with fresh randomness; an input refusal is deterministic).
pub fn is_logit_refusal(e: &Error) -> bool {
    matches!(e, Error::RangeGuard { check, .. } if check.starts_with("logits"))
}

/// Largest `|v|` of `values` (infinity when one is NaN or infinite).
pub fn max_abs(values: &[f32]) -> f64 {
    values
        .iter()
        .map(|v| if v.is_finite() { v.abs() as f64 } else { f64::INFINITY })
        .fold(0.0, f64::max)
}

/// Checks `values` against `margin * calibrated`: `Some(violation)` when the largest `|v|`
/// exceeds it.
pub fn check_values(
    check: GuardCheck,
    values: &[f32],
    calibrated: f64,
    margin: f64,
) -> Option<RangeViolation> {
    let bound = calibrated * margin;
    let value = max_abs(values);
    (value > bound).then_some(RangeViolation { check, value, bound })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_and_errors() {
        assert!(check_values(GuardCheck::Input, &[1.0, -3.9], 2.0, 2.0).is_none());
        let v = check_values(GuardCheck::Logits, &[1.0, -4.5], 2.0, 2.0).unwrap();
        assert_eq!((v.value, v.bound), (4.5, 4.0));
        assert!(check_values(GuardCheck::Logits, &[f32::NAN], 2.0, 2.0).is_some());
        let e = v.to_error().to_string();
        assert!(e.contains("range guard") && e.contains("logits") && e.contains("4.0000e0"), "{e}");
        assert!(GuardBounds { input_max_abs: 1.0, logit_max_abs: f64::NAN }.check().is_err());
        assert!(is_logit_refusal(&v.to_error()));
        let i = check_values(GuardCheck::Input, &[9.0], 2.0, 2.0).unwrap();
        assert!(!is_logit_refusal(&i.to_error()));
    }
}
