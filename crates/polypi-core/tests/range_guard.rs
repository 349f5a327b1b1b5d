//! Range safety end to end: calibrated ranges -> plan check -> the client's runtime guard.
//! Inputs that overflow the ring (an input scaled by 1e6, a model whose weights grew 1e6x after
//! calibration) give a `RangeGuard` error, never a wrong answer; in-range inputs are never
//! refused and agree with the plaintext executor.

use polypi_core::engine::calibrate::Calibrator;
use polypi_core::engine::guard::{
    is_logit_refusal, GuardBounds, GuardCheck, GuardMode, GuardPolicy, ViolationKind,
};
use polypi_core::engine::run_f32;
use polypi_core::engine::session::{run_local_guarded, LocalOpts, Transport};
use polypi_core::model::compile::compile;
use polypi_core::model::range::{check_plan, Ranges};
use polypi_core::model::zoo::{build, Act, Pool, RefNet};
use polypi_core::model::{LayerOp, Plan};
use polypi_core::net::LinkModel;
use polypi_core::Error;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
}

fn images(plan: &Plan, n: usize, seed: u64) -> Vec<Vec<f32>> {
    let per: usize = plan.input_shape().iter().product();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| (0..per).map(|_| rng.next_u32() as f32 / u32::MAX as f32).collect()).collect()
}

/// A small NET-M (X2act) and ranges calibrated on 16 images in [0, 1].
fn calibrated() -> (Plan, Ranges) {
    let plan = compile(&build(RefNet::NetM, Act::X2Act, Pool::Avg, 0.5, 7).unwrap()).unwrap();
    let mut cal = Calibrator::new(&plan).unwrap();
    let xs: Vec<f32> = images(&plan, 16, 1).concat();
    cal.add_batch(&xs, 16).unwrap();
    let ranges = cal.finish("uniform [0, 1] images").unwrap();
    (plan, ranges)
}

fn bounds(plan: &Plan, r: &Ranges) -> GuardBounds {
    let (input_max_abs, logit_max_abs) = r.io_max(plan).unwrap();
    GuardBounds { input_max_abs, logit_max_abs }
}

fn run(
    plan: &Plan,
    b: GuardBounds,
    mode: GuardMode,
    x: &[f32],
) -> polypi_core::Result<polypi_core::engine::session::LocalInference> {
    let policy = GuardPolicy { mode, margin: 2.0 };
    let opts = LocalOpts { transport: Transport::Mem, check: false };
    let (_, mut r) =
        run_local_guarded(plan, Some(b), policy, &[(x.to_vec(), 1)], opts, LinkModel::none())?;
    Ok(r.remove(0))
}

fn guard_error(e: Error, what: &str) {
    match &e {
        Error::RangeGuard { check, value, bound } => {
            assert!(check.contains(what), "{e}");
            assert!(value > bound, "{e}");
            // A logit refusal here is garbage (a wrap-around), the only kind worth a retry.
            assert_eq!(is_logit_refusal(&e), what == "logits", "{e}");
            if what == "logits" {
                assert!(check.starts_with("logits (garbage)"), "{e}");
            }
        }
        other => panic!("expected a RangeGuard error on the {what}, got {other:?}"),
    }
}

#[test]
fn calibrated_plan_check_is_safe_and_in_range_inputs_pass() {
    let (plan, ranges) = calibrated();
    assert_eq!(ranges.layers.len(), plan.layers.len());
    assert!(ranges.layers.iter().all(|l| l.max_abs > 0.0 && l.p9999_abs <= l.max_abs));
    let rep = check_plan(&plan, &ranges, 2.0).unwrap();
    assert!(rep.unchecked.is_empty());
    assert!(rep.fail_prob < 1e-3, "{}", rep.table());
    assert!(rep.min_headroom.unwrap() > 10.0, "{}", rep.table());
    let b = bounds(&plan, &ranges);
    // Fresh images from the same distribution: never refused, same prediction as plaintext.
    for x in images(&plan, 4, 99) {
        let r = run(&plan, b, GuardMode::Refuse, &x).unwrap();
        assert!(r.range_violation.is_none());
        assert_eq!(argmax(&r.logits), argmax(&run_f32(&plan, &x, 1).unwrap()));
    }
}

#[test]
fn input_scaled_by_1e6_is_refused_never_answered() {
    let (plan, ranges) = calibrated();
    let b = bounds(&plan, &ranges);
    let x: Vec<f32> = images(&plan, 1, 5).remove(0).iter().map(|v| v * 1e6).collect();
    // The client refuses its own input before sending anything.
    guard_error(run(&plan, b, GuardMode::Refuse, &x).unwrap_err(), "input");
    // Without the input check (a client that trusts the input: huge input bound), the ring wraps
    // inside the network: the revealed logits are garbage, and the logit check catches them.
    let loose = GuardBounds { input_max_abs: 1e9, ..b };
    guard_error(run(&plan, loose, GuardMode::Refuse, &x).unwrap_err(), "logits");
    // What the guard prevents: the unguarded result is garbage, far from the plaintext logits.
    let r = run(&plan, loose, GuardMode::Warn, &x).unwrap();
    let v = r.range_violation.expect("warn mode reports the violation");
    assert_eq!(v.check, GuardCheck::Logits);
    assert_eq!(v.reclassify(plan.frac_bits).kind, ViolationKind::Garbage, "{v:?}");
    let off = run(&plan, loose, GuardMode::Off, &x).unwrap();
    assert!(off.range_violation.is_none());
    assert!(off.logits.iter().any(|v| v.abs() > 1e6), "{:?}", off.logits);
}

#[test]
fn weights_grown_after_calibration_wrap_and_are_refused() {
    let (mut plan, ranges) = calibrated();
    let b = bounds(&plan, &ranges);
    // The model changed after calibration: fc1's weights grew 1e6x, so the next square wraps
    // around the ring (the stale ranges do not know it).
    for l in &mut plan.layers {
        if let (true, LayerOp::Linear(lin)) = (l.name == "fc1", &mut l.op) {
            lin.weight.iter_mut().for_each(|w| *w *= 1e6);
        }
    }
    for x in images(&plan, 3, 123) {
        guard_error(run(&plan, b, GuardMode::Refuse, &x).unwrap_err(), "logits");
    }
}

/// Audit finding M1: logits a little outside the calibrated range x margin are a real result
/// (here computed exactly), not garbage. The guard reports them as plausible and delivers them;
/// only garbage is refused (and retried).
#[test]
fn plausible_logits_outside_the_bound_are_delivered_not_refused() {
    let (plan, ranges) = calibrated();
    let b = bounds(&plan, &ranges);
    let x = images(&plan, 1, 77).remove(0);
    let plain = run_f32(&plan, &x, 1).unwrap();
    let max = plain.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    // Calibrated max so that max |y| is 8 % above margin x calibrated (the audit: 51.0 > 47.26).
    let tight = GuardBounds { logit_max_abs: max / 2.0 / 1.08, ..b };
    let r = run(&plan, tight, GuardMode::Warn, &x).unwrap();
    let v = r.range_violation.expect("outside the bound").reclassify(plan.frac_bits);
    assert_eq!((v.check, v.kind), (GuardCheck::Logits, ViolationKind::Plausible), "{v:?}");
    assert!(v.value > v.bound && v.value < v.garbage_threshold, "{v:?}");
    // The private logits are the plaintext ones: a correct result.
    let err = r.logits.iter().zip(&plain).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(err < 0.05, "{err}");
    assert_eq!(argmax(&r.logits), argmax(&plain));
    // Refuse mode delivers it with the violation (what `polypi infer` / `eval` do with it).
    let refuse = GuardPolicy { mode: GuardMode::Refuse, margin: 2.0 };
    assert_eq!(refuse.resolve(Some(v)).unwrap(), Some(v));
    let direct = refuse
        .apply(Some(&tight), GuardCheck::Logits, &r.logits, plan.frac_bits)
        .unwrap()
        .expect("reported");
    assert_eq!(direct.kind, ViolationKind::Plausible);
    assert!(!is_logit_refusal(&v.to_error()));
}
