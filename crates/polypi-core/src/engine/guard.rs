//! The client's runtime range guard: refuse garbage instead of returning a wrong prediction, and
//! deliver a correct out-of-distribution result instead of refusing it.
//!
//! A fixed-point wrap-around in the ring, or a failed SecureML local truncation (see
//! [`crate::model::range`]), does not give a slightly wrong result: the affected value is off by
//! about `2^(64 - t)` ring units (`t` = truncated bits), i.e. `2^(64 - 2f)` real units for a
//! truncation by `f` of a scale-`2f` product (`f` = the plan's frac bits: 2^32 = 4.3e9 at the
//! default f = 16), and every later layer spreads the error, so the revealed logits are huge
//! (close to uniform over the decoded range `|y| < 2^(63 - f)`) with overwhelming probability.
//! The client therefore checks, locally and without sending anything:
//! 1. before the inference, its own input against the calibrated input range times a margin
//!    (an input far outside the calibration data may overflow some layer);
//! 2. after the reveal, the logits against the calibrated logit range times the margin
//!    (the bound `B`), and classifies a violation ([`ViolationKind`]):
//!    - **garbage**: `max |y|` above the garbage threshold `T` ([`garbage_threshold`]), or NaN /
//!      infinite: the result of a wrap-around or truncation failure;
//!    - **plausible**: `B < max |y| <= T`: outside the calibrated range, but far too small to be
//!      the garbage of a failure; most likely a correct result for an out-of-distribution input
//!      (a binary image with max 51.0 against `B` = 2 x 23.63 = 47.26 is computed exactly).
//!
//! In [`GuardMode::Refuse`] ([`GuardPolicy::apply`]) an input violation and a garbage logit
//! violation are refused ([`Error::RangeGuard`]); a plausible logit violation is **not**
//! refused: the result is returned with the violation (kind `plausible`) and a warning.
//!
//! **The garbage threshold** `T = clamp(sqrt(B * 2^(64 - 2f)), B, 2^(63 - 2f))` is the
//! logarithmic midpoint between the logit bound and the smallest raw error of a failed
//! truncation, so it sits a factor `R = sqrt(2^(64 - 2f) / B)` above the bound and the same
//! factor below that error (`R` = 9,500 and `T` = 4.5e5 at f = 16, `B` = 47.26). The upper clamp
//! `2^(63 - 2f)` is the largest `|y|` a final Linear/Conv layer computes without its scale-`2f`
//! product wrapping the ring (the plan check's safe bound for the logits). What lands on which
//! side:
//! - a failed truncation in the last layer errs by `2^(64 - 2f) > T`: always garbage;
//! - uniform garbage (a wrap, or a failure spread by later layers) lands below `T` with
//!   probability `T / 2^(63 - f)` per logit: `3.2e-9` (about `2^-28`) at f = 16, `B` = 47.26, and
//!   every logit of the vector would have to;
//! - a failure in an earlier layer that later layers attenuate by a factor `A` lands below `T`
//!   only for `A > R` (seen once in 214 failures at f = 24, where `R` is only 37; see
//!   docs/range-safety.md); it is then reported as plausible;
//! - a correct result is called garbage only above `R * B` (about 19,000 x the calibrated max at
//!   f = 16), for an input inside the input bound.
//!
//! **What a retry reveals** (`--guard-retries N`, off by default). Only a garbage refusal is
//! retried ([`is_logit_refusal`]); a plausible result is delivered and an input refusal happens
//! before anything is sent, so neither causes an extra inference. A retry is a fresh inference
//! the server and dealer see, so they learn exactly one event: "the previous inference of this
//! client failed". Its probability depends on the input only through the magnitudes of the
//! secret values: each truncated element `v` (scale `s`) fails with probability at most
//! `|v| 2^(s + 1 - 64)` (SecureML Thm. 1), independently of the sign, the class and everything
//! else, so `P(garbage | input) <= sum over elements |v| 2^(s + 1 - 64)`, which is at most the
//! plan bound (`polypi inspect`, `fail_prob`) whenever every layer's values stay inside the
//! calibrated range x margin. An input driving some layer beyond that range can fail more often,
//! up to certainty (a wrap-around is deterministic: each retry fails again and the server sees
//! `N + 1` inferences). A garbage vector that lands in `(B, T]` is not retried either: it leaks
//! nothing but is delivered flagged as plausible.
//!
//! Both bounds come from `polypi calibrate` ([`crate::model::range::Ranges`]); the server sends
//! the two calibrated maxima ([`GuardBounds`]) with the public plan skeleton (two numbers about
//! the model, nothing about any input). Without retries the server learns nothing from the
//! checks: a refused input is never sent, and the logit check runs after the last message.
//!
//! What the guard cannot detect: an out-of-distribution input inside the input bound whose
//! values stay inside the ring is computed correctly (it is then the model's answer, not
//! garbage); a garbage logit vector that happens to land inside the bound (probability about
//! `2 * B * 2^f / 2^64` per logit for uniform garbage, below 2^-40 for the shipped models) is
//! not detected, one that lands in `(B, T]` is reported as plausible.

use crate::error::Error;
use serde::{Deserialize, Serialize};

/// The frac bits [`check_values`] assumes (the default of every shipped model). Callers that
/// know the plan should use [`check_values_at`] / [`GuardPolicy::apply`] with `plan.frac_bits`.
pub const ASSUMED_FRAC_BITS: u32 = 16;

/// Prefix of the `check` of a garbage logit refusal ([`RangeViolation::to_error`]).
pub const LOGITS_GARBAGE: &str = "logits (garbage)";
/// Prefix of the `check` of a plausible logit refusal (only a caller that refuses every
/// violation produces it; [`GuardPolicy::apply`] delivers plausible results).
pub const LOGITS_PLAUSIBLE: &str = "logits (plausible)";

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

    /// The calibrated max of `check`'s tensor.
    pub fn calibrated(&self, check: GuardCheck) -> f64 {
        match check {
            GuardCheck::Input => self.input_max_abs,
            GuardCheck::Logits => self.logit_max_abs,
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
    /// Return [`Error::RangeGuard`] instead of the result for an input violation or a garbage
    /// logit violation; deliver a plausible one with the violation reported (default).
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

impl GuardPolicy {
    /// Runs `check` on `values` against `bounds` (None: the model has no calibrated ranges,
    /// nothing to check) at the plan's `frac_bits` and applies the policy: `Off` checks nothing;
    /// `Warn` returns any violation (logged as a warning); `Refuse` returns
    /// `Err(`[`Error::RangeGuard`]`)` for an input violation or a garbage logit violation and
    /// returns a plausible logit violation with the result (logged as a warning).
    pub fn apply(
        &self,
        bounds: Option<&GuardBounds>,
        check: GuardCheck,
        values: &[f32],
        frac_bits: u32,
    ) -> crate::Result<Option<RangeViolation>> {
        let Some(b) = bounds.filter(|_| self.mode != GuardMode::Off) else {
            return Ok(None);
        };
        self.resolve(check_values_at(check, values, b.calibrated(check), self.margin, frac_bits))
    }

    /// Applies the policy to a violation already found (see [`GuardPolicy::apply`]); a caller
    /// that ran the checks in warn mode uses it to refuse afterwards.
    pub fn resolve(&self, v: Option<RangeViolation>) -> crate::Result<Option<RangeViolation>> {
        match v {
            None => Ok(None),
            Some(_) if self.mode == GuardMode::Off => Ok(None),
            Some(v) if self.mode == GuardMode::Refuse && v.refused() => Err(v.to_error()),
            Some(v) => {
                tracing::warn!("{}", v.to_error());
                Ok(Some(v))
            }
        }
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

/// How far outside the bound a violation is (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ViolationKind {
    /// Above the bound, at most the garbage threshold: a real value (for the logits, most likely
    /// a correct out-of-distribution result). Delivered in refuse mode (logits).
    Plausible,
    /// Above the garbage threshold, NaN or infinite: the garbage of a wrap-around or truncation
    /// failure. Refused in refuse mode, and the only kind worth a retry.
    Garbage,
}

/// A failed check: the largest `|value|` found (infinite for NaN), the bound it exceeds and its
/// kind.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RangeViolation {
    /// Which check.
    pub check: GuardCheck,
    /// Largest `|value|` of the checked tensor.
    pub value: f64,
    /// The bound (margin x calibrated max).
    pub bound: f64,
    /// Garbage or plausible ([`classify`]; for an input: garbage only when not finite).
    pub kind: ViolationKind,
    /// The garbage threshold the value was classified against ([`garbage_threshold`]).
    pub garbage_threshold: f64,
}

impl RangeViolation {
    /// Whether [`GuardMode::Refuse`] refuses it: an input violation (whatever its kind: it is
    /// caught before anything is sent) or a garbage logit violation.
    pub fn refused(&self) -> bool {
        self.check == GuardCheck::Input || self.kind == ViolationKind::Garbage
    }

    /// The same violation classified at `frac_bits` (for a violation found by
    /// [`check_values`], which assumes [`ASSUMED_FRAC_BITS`]).
    pub fn reclassify(self, frac_bits: u32) -> RangeViolation {
        let garbage_threshold = garbage_threshold(self.bound, frac_bits);
        let kind = match self.check {
            GuardCheck::Input if self.value.is_finite() => ViolationKind::Plausible,
            GuardCheck::Input => ViolationKind::Garbage,
            GuardCheck::Logits => classify(self.value, self.bound, frac_bits),
        };
        RangeViolation { kind, garbage_threshold, ..self }
    }

    /// The [`Error::RangeGuard`] of this violation; its `check` starts with `input`,
    /// [`LOGITS_GARBAGE`] or [`LOGITS_PLAUSIBLE`].
    pub fn to_error(&self) -> Error {
        let check = match (self.check, self.kind) {
            (GuardCheck::Input, _) => "input max |x| (outside the calibrated input range x \
                                       margin: some layer could overflow the ring)"
                .to_string(),
            (GuardCheck::Logits, ViolationKind::Garbage) => format!(
                "{LOGITS_GARBAGE} max |y| (above the garbage threshold {:.4e}: the private \
                 result is garbage from a fixed-point wrap-around or truncation failure)",
                self.garbage_threshold
            ),
            (GuardCheck::Logits, ViolationKind::Plausible) => format!(
                "{LOGITS_PLAUSIBLE} max |y| (outside the calibrated logit range x margin but \
                 below the garbage threshold {:.4e}: most likely a correct result for an \
                 out-of-distribution input)",
                self.garbage_threshold
            ),
        };
        Error::RangeGuard { check, value: self.value, bound: self.bound }
    }
}

/// Whether `e` is the refusal of a garbage logit violation ([`ViolationKind::Garbage`]): the
/// only refusal worth a retry with fresh randomness (a truncation failure is probabilistic). A
/// plausible logit violation is a real value (a retry would compute it again, and tell the server
/// that this input gave an unusual result); an input refusal is deterministic. See the module
/// doc for what a retry reveals.
pub fn is_logit_refusal(e: &Error) -> bool {
    matches!(e, Error::RangeGuard { check, .. } if check.starts_with(LOGITS_GARBAGE))
}

/// The garbage threshold `T` of a logit bound `bound` (margin x calibrated max) at `frac_bits`
/// fractional bits: `clamp(sqrt(bound * 2^(64 - 2f)), bound, 2^(63 - 2f))`, the logarithmic
/// midpoint between the bound and the smallest raw error `2^(64 - 2f)` of a failed truncation by
/// `f`, at most the largest value a final Linear/Conv layer holds without wrapping, at least the
/// bound (a plan whose bound does not fit: every violation is garbage). See the module doc for
/// the probability that garbage lands below it (about `2^-28` per uniform garbage logit at
/// f = 16, bound 47.26).
pub fn garbage_threshold(bound: f64, frac_bits: u32) -> f64 {
    let f = frac_bits as i32;
    let err = 2f64.powi(64 - 2 * f);
    let safe = 2f64.powi(63 - 2 * f);
    (bound * err).sqrt().min(safe).max(bound)
}

/// Classifies a logit violation `value > bound` at `frac_bits`: [`ViolationKind::Garbage`] when
/// `value` is NaN, infinite or above [`garbage_threshold`], else [`ViolationKind::Plausible`].
pub fn classify(value: f64, bound: f64, frac_bits: u32) -> ViolationKind {
    if !value.is_finite() || value > garbage_threshold(bound, frac_bits) {
        ViolationKind::Garbage
    } else {
        ViolationKind::Plausible
    }
}

/// Largest `|v|` of `values` (infinity when one is NaN or infinite).
pub fn max_abs(values: &[f32]) -> f64 {
    values
        .iter()
        .map(|v| if v.is_finite() { v.abs() as f64 } else { f64::INFINITY })
        .fold(0.0, f64::max)
}

/// Checks `values` against `margin * calibrated`: `Some(violation)`, classified at `frac_bits`
/// (the plan's), when the largest `|v|` exceeds it.
pub fn check_values_at(
    check: GuardCheck,
    values: &[f32],
    calibrated: f64,
    margin: f64,
    frac_bits: u32,
) -> Option<RangeViolation> {
    let bound = calibrated * margin;
    let value = max_abs(values);
    (value > bound).then(|| {
        RangeViolation {
            check,
            value,
            bound,
            kind: ViolationKind::Garbage,
            garbage_threshold: bound,
        }
        .reclassify(frac_bits)
    })
}

/// [`check_values_at`] at [`ASSUMED_FRAC_BITS`] (for a caller that does not know the plan's frac
/// bits; one that does should use [`check_values_at`], or [`RangeViolation::reclassify`]).
pub fn check_values(
    check: GuardCheck,
    values: &[f32],
    calibrated: f64,
    margin: f64,
) -> Option<RangeViolation> {
    check_values_at(check, values, calibrated, margin, ASSUMED_FRAC_BITS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_and_errors() {
        assert!(check_values(GuardCheck::Input, &[1.0, -3.9], 2.0, 2.0).is_none());
        let v = check_values(GuardCheck::Logits, &[1.0, -4.5], 2.0, 2.0).unwrap();
        assert_eq!((v.value, v.bound, v.kind), (4.5, 4.0, ViolationKind::Plausible));
        assert!(check_values(GuardCheck::Logits, &[f32::NAN], 2.0, 2.0).is_some());
        let e = v.to_error().to_string();
        assert!(e.contains("range guard") && e.contains("logits") && e.contains("4.0000e0"), "{e}");
        assert!(GuardBounds { input_max_abs: 1.0, logit_max_abs: f64::NAN }.check().is_err());
        // A plausible violation is not worth a retry; nor is an input refusal.
        assert!(!is_logit_refusal(&v.to_error()));
        let i = check_values(GuardCheck::Input, &[9.0], 2.0, 2.0).unwrap();
        assert_eq!(i.kind, ViolationKind::Plausible);
        assert!(i.refused());
        assert!(!is_logit_refusal(&i.to_error()));
        let g = check_values(GuardCheck::Logits, &[1e12], 2.0, 2.0).unwrap();
        assert!(is_logit_refusal(&g.to_error()), "{}", g.to_error());
    }

    #[test]
    fn threshold_sits_between_plausible_and_garbage() {
        // f = 16, bound 47.26: T = sqrt(47.26 * 2^32) = 4.5e5.
        let t = garbage_threshold(47.26, 16);
        assert!((t - (47.26f64 * 2f64.powi(32)).sqrt()).abs() < 1e-6, "{t}");
        assert!(t > 4.4e5 && t < 4.6e5, "{t}");
        // Far below the raw error of a last-layer truncation failure (2^32 real units) and the
        // decoded range of uniform garbage (2^47): a uniform garbage logit lands below T with
        // probability T / 2^47 < 2^-28.
        assert!(t < 2f64.powi(32) / 9000.0);
        assert!(t / 2f64.powi(47) < 2f64.powi(-28));
        // Monotone in f: more frac bits, smaller failure errors, lower threshold; never below
        // the bound, never above the ring's safe bound for the logits 2^(63 - 2f).
        assert!(garbage_threshold(47.26, 22) < t);
        assert_eq!(garbage_threshold(47.26, 30), 47.26);
        assert_eq!(garbage_threshold(1e-9, 8), (1e-9 * 2f64.powi(48)).sqrt());
        assert_eq!(garbage_threshold(1e30, 8), 1e30);
        assert_eq!(garbage_threshold(1.5 * 2f64.powi(38), 12), 2f64.powi(39));
    }

    /// The audit's case (finding M1): a binary image whose exact logits reach 51.0 against the
    /// calibrated max 23.63 x margin 2 = 47.26 must be delivered, not refused and not retried.
    #[test]
    fn audit_case_plausible_is_delivered_not_refused() {
        let logits = [-12.5f32, 3.0, 51.0, -7.25, 0.5, 20.0, -30.0, 1.0, 8.0, -2.0];
        let b = GuardBounds { input_max_abs: 1.0, logit_max_abs: 23.63 };
        let refuse = GuardPolicy::default();
        let v = refuse.apply(Some(&b), GuardCheck::Logits, &logits, 16).unwrap().unwrap();
        assert_eq!(v.check, GuardCheck::Logits);
        assert_eq!(v.kind, ViolationKind::Plausible);
        assert_eq!(v.value, 51.0);
        assert!((v.bound - 47.26).abs() < 1e-9);
        assert!(!v.refused());
        // Even the refusal a caller might build from it is not retried.
        assert!(!is_logit_refusal(&v.to_error()));
        assert!(v.to_error().to_string().starts_with("range guard: logits (plausible)"));
        // Serialized with its kind (and the existing fields).
        let j = serde_json::to_value(v).unwrap();
        assert_eq!(j["kind"], "plausible");
        assert_eq!(j["check"], "logits");
        assert_eq!(j["value"], 51.0);
        assert!(j["bound"].as_f64().is_some() && j["garbage_threshold"].as_f64().is_some());
        // Warn mode reports it too; off checks nothing; inside the bound nothing is reported.
        let warn = GuardPolicy { mode: GuardMode::Warn, ..refuse };
        assert_eq!(warn.apply(Some(&b), GuardCheck::Logits, &logits, 16).unwrap(), Some(v));
        let off = GuardPolicy { mode: GuardMode::Off, ..refuse };
        assert_eq!(off.apply(Some(&b), GuardCheck::Logits, &logits, 16).unwrap(), None);
        assert_eq!(refuse.apply(Some(&b), GuardCheck::Logits, &[47.0], 16).unwrap(), None);
        assert_eq!(refuse.apply(None, GuardCheck::Logits, &logits, 16).unwrap(), None);
    }

    #[test]
    fn garbage_is_refused_and_retryable() {
        let b = GuardBounds { input_max_abs: 1.0, logit_max_abs: 23.63 };
        let refuse = GuardPolicy::default();
        for bad in [1e12f32, -(2f32.powi(40)), 5e5, f32::NAN, f32::INFINITY] {
            let logits = [1.0f32, bad, -3.0];
            let e = refuse.apply(Some(&b), GuardCheck::Logits, &logits, 16).unwrap_err();
            assert!(is_logit_refusal(&e), "{bad}: {e}");
            assert!(e.to_string().contains("logits (garbage)"), "{e}");
            let v = check_values_at(GuardCheck::Logits, &logits, 23.63, 2.0, 16).unwrap();
            assert_eq!(v.kind, ViolationKind::Garbage, "{bad}");
            // Warn mode returns it, classified.
            let warn = GuardPolicy { mode: GuardMode::Warn, ..refuse };
            let w = warn.apply(Some(&b), GuardCheck::Logits, &logits, 16).unwrap().unwrap();
            assert_eq!(w.kind, ViolationKind::Garbage);
            assert_eq!(serde_json::to_value(w).unwrap()["kind"], "garbage");
        }
        // Just below the threshold: plausible; just above: garbage.
        let t = garbage_threshold(47.26, 16);
        assert_eq!(classify(t, 47.26, 16), ViolationKind::Plausible);
        assert_eq!(classify(t * 1.01, 47.26, 16), ViolationKind::Garbage);
        assert_eq!(classify(f64::NAN, 47.26, 16), ViolationKind::Garbage);
        // The same value can be plausible at f = 16 and garbage at f = 24 (smaller failures).
        let v = check_values(GuardCheck::Logits, &[5000.0], 23.63, 2.0).unwrap();
        assert_eq!(v.kind, ViolationKind::Plausible);
        assert_eq!(v.reclassify(24).kind, ViolationKind::Garbage);
        assert!(GuardPolicy::default().resolve(Some(v.reclassify(24))).is_err());
        assert!(GuardPolicy::default().resolve(Some(v)).unwrap().is_some());
    }

    #[test]
    fn input_violations_are_refused_whatever_their_kind() {
        let b = GuardBounds { input_max_abs: 1.0, logit_max_abs: 23.63 };
        let refuse = GuardPolicy::default();
        for x in [2.5f32, f32::NAN] {
            let e = refuse.apply(Some(&b), GuardCheck::Input, &[0.5, x], 16).unwrap_err();
            assert!(matches!(&e, Error::RangeGuard { check, .. } if check.starts_with("input")));
            assert!(!is_logit_refusal(&e));
        }
        let v = check_values(GuardCheck::Input, &[f32::NAN], 1.0, 2.0).unwrap();
        assert_eq!(v.kind, ViolationKind::Garbage);
    }
}
