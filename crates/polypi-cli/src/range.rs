//! Range-safety options shared by the commands: the plan range check before running
//! (`--range-check`, `--max-fail-prob`), the client's runtime guard (`--range-guard`) and the
//! margin on calibrated maxima (`--range-margin`). See polypi-core's `model::range` and
//! `engine::guard`.

use crate::common::Model;
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use polypi_core::engine::guard::{GuardBounds, GuardMode, GuardPolicy};
use polypi_core::model::range::{check_plan, RangeReport, DEFAULT_MARGIN};

/// What to do when a range check fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Do not check.
    Off,
    /// Print a warning and go on.
    Warn,
    /// Stop with a range error (exit code 3).
    Refuse,
}

impl From<ModeArg> for GuardMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Off => GuardMode::Off,
            ModeArg::Warn => GuardMode::Warn,
            ModeArg::Refuse => GuardMode::Refuse,
        }
    }
}

/// `--range-margin`.
#[derive(Args, Debug, Clone)]
pub struct MarginArgs {
    /// Safety factor on the calibrated value ranges (`polypi calibrate`): bound = margin x
    /// calibrated max |value|, for the plan check and the runtime guard. At least 1.
    #[arg(long, default_value_t = DEFAULT_MARGIN)]
    pub range_margin: f64,
}

/// `--range-guard` (client side).
#[derive(Args, Debug, Clone)]
pub struct GuardArgs {
    /// The client's runtime range guard (needs a calibrated model): `refuse` returns a range
    /// error (exit code 3) instead of a result when the input leaves the calibrated range x
    /// margin, or when the revealed logits are garbage (above the garbage threshold, about 10^4
    /// x the bound at 16 frac bits: a fixed-point wrap-around or truncation failure makes the
    /// logits huge); logits outside the calibrated range but below that threshold are
    /// plausible (e.g. a correct result for an unusual input): returned with a warning and the
    /// violation (kind "plausible"); `warn` prints a warning and returns the result; `off`
    /// does not check.
    #[arg(long, value_enum, default_value = "refuse")]
    pub range_guard: ModeArg,
}

/// `--guard-retries` (client side, `polypi query` and `polypi eval`).
#[derive(Args, Debug, Clone)]
pub struct RetryArgs {
    /// Rerun an inference whose revealed logits the range guard refused as garbage (a SecureML
    /// truncation failure: probabilistic, caught w.h.p.) up to N times, each with fresh
    /// correlated randomness. Off by default: the server and dealer see the extra inference, so
    /// they learn that a failure happened, an event whose probability depends on the input only
    /// through the magnitudes of the secret values (at most the plan bound, `polypi inspect`,
    /// while they stay in the calibrated range x margin; up to 1 for an input that makes a
    /// layer wrap): one bit per retry. Plausible results (delivered) and input refusals
    /// (deterministic, before sending) are never retried.
    #[arg(long, default_value_t = 0)]
    pub guard_retries: u32,
}

/// `--range-check`, `--max-fail-prob` (model side).
#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// Range check of the plan before running (needs a calibrated model): `refuse` stops with a
    /// range error (exit code 3) when the failure probability per inference exceeds
    /// --max-fail-prob or a value does not fit the ring; `warn` prints a warning; `off` skips it.
    #[arg(long, value_enum, default_value = "refuse")]
    pub range_check: ModeArg,
    /// Largest acceptable failure probability of one inference (one sample), from the calibrated
    /// ranges x margin and the SecureML truncation bound (`polypi inspect` shows it per layer).
    /// The bound is pessimistic (every element at margin x the largest value seen; measured
    /// rates are 10-1000x lower, docs/range-safety.md) and the runtime guard refuses the garbage
    /// of a failure, hence the lenient default.
    #[arg(long, default_value_t = 0.05)]
    pub max_fail_prob: f64,
}

/// The client's guard policy from the flags. Errors when the margin is not >= 1.
pub fn policy(g: &GuardArgs, m: &MarginArgs) -> Result<GuardPolicy> {
    check_margin(m)?;
    Ok(GuardPolicy { mode: g.range_guard.into(), margin: m.range_margin })
}

fn check_margin(m: &MarginArgs) -> Result<()> {
    if !(m.range_margin.is_finite() && m.range_margin >= 1.0) {
        bail!("--range-margin must be a number >= 1, got {}", m.range_margin);
    }
    Ok(())
}

/// The calibrated input/logit maxima the server sends to the client (None: no ranges).
pub fn guard_bounds(model: &Model) -> Option<GuardBounds> {
    let (input_max_abs, logit_max_abs) = model.file.ranges.as_ref()?.io_max(&model.plan)?;
    Some(GuardBounds { input_max_abs, logit_max_abs })
}

/// The plan range check of `model` (None when it has no calibrated ranges).
pub fn report(model: &Model, m: &MarginArgs) -> Result<Option<RangeReport>> {
    check_margin(m)?;
    match &model.file.ranges {
        None => Ok(None),
        Some(r) => Ok(Some(check_plan(&model.plan, r, m.range_margin)?)),
    }
}

/// Runs the plan range check before a private inference: prints a note on stderr when the model
/// has no ranges, warns or refuses (`RangeGuard` error, exit code 3) when the failure
/// probability per inference exceeds `--max-fail-prob` or some layer is not calibrated.
pub fn gate(model: &Model, c: &CheckArgs, m: &MarginArgs) -> Result<Option<RangeReport>> {
    if c.range_check == ModeArg::Off {
        return Ok(None);
    }
    if !(c.max_fail_prob.is_finite() && (0.0..=1.0).contains(&c.max_fail_prob)) {
        bail!("--max-fail-prob must be a probability in [0, 1], got {}", c.max_fail_prob);
    }
    let Some(rep) = report(model, m)? else {
        eprintln!(
            "note: the model has no calibrated ranges: no range check and no runtime range guard \
             (run `polypi calibrate --model FILE --data DIR` to add them)"
        );
        return Ok(None);
    };
    let worst = rep
        .layers
        .iter()
        .max_by(|a, b| a.fail_prob.total_cmp(&b.fail_prob))
        .map(|l| {
            format!(
                "worst layer {} ({}): {:.1} bits used, headroom {:.1} bits, P(fail) {:.2e}",
                l.name,
                l.op,
                l.bits.unwrap_or(0.0),
                l.headroom.unwrap_or(0.0),
                l.fail_prob
            )
        })
        .unwrap_or_default();
    let problem = if rep.fail_prob > c.max_fail_prob {
        Some(format!(
            "failure probability per inference {:.2e} > --max-fail-prob {:.2e} ({worst})",
            rep.fail_prob, c.max_fail_prob
        ))
    } else if !rep.unchecked.is_empty() {
        Some(format!(
            "layers without calibrated ranges: {} (stale calibration? re-run `polypi calibrate`)",
            rep.unchecked.join(", ")
        ))
    } else {
        None
    };
    match (problem, c.range_check) {
        (None, _) => Ok(Some(rep)),
        (Some(p), ModeArg::Warn) => {
            eprintln!("warning: plan range check: {p}");
            Ok(Some(rep))
        }
        (Some(p), _) => Err(anyhow::Error::new(polypi_core::Error::RangeGuard {
            check: "plan failure probability per inference (calibrated ranges x margin)".into(),
            value: rep.fail_prob.max(if rep.unchecked.is_empty() { 0.0 } else { 1.0 }),
            bound: c.max_fail_prob,
        })
        .context(format!("plan range check refused the model: {p}"))),
    }
}
