//! PolyKervNets / R-PKN (`a_p*(conv(x) + c_p)^d_p`) through compile and 2PC, on the reference
//! networks NET-C and NET-R18 (random weights from `model::zoo`, PKN variant with `c_p = 1`),
//! and an R-PKN variant with `a_p = 0.8` at every site.
//!
//! - Folding (`c_p` into the preceding bias, `a_p` into the next layer's weights, see
//!   `model::compile`) keeps the function: the folded plan's fixed-point twin equals the f32
//!   executor on the unfolded plan (every PolyKerv kept as its public expanded polynomial) within
//!   the fixed-point bound `tol = 2 * e_ref + 1e-3`, where `e_ref` is the unfolded plan's own
//!   |twin - f32| (the quantisation error of weights at 2^-17 and of one truncation per layer,
//!   amplified by the network; folding moves constants between layers, so it may change which
//!   values are rounded but not the order of the error).
//! - Private inference of the folded plans equals their twin within 1e-3 (same argmax).
//! - Where `a_p` cannot be folded (NET-R18: an activation that feeds an identity shortcut, i.e.
//!   the next residual add), it stays in the polynomial's coefficients.
//! - The fold itself is exact in f32 up to rounding (folded vs unfolded f32 within 1e-4 of the
//!   logit scale).

use polypi_core::engine::session::{run_local, LocalOpts, Transport};
use polypi_core::engine::{run_f32, run_fixed, EncodedPlan};
use polypi_core::model::compile::{compile, compile_with, CompileOptions};
use polypi_core::model::file::ModelFile;
use polypi_core::model::zoo::{build, Act, Pool, RefNet};
use polypi_core::model::{LayerOp, Op, Plan};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn input(plan: &Plan, seed: u64) -> Vec<f32> {
    let n: usize = plan.input_shape().iter().product();
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| (r.next_u32() as f32 / u32::MAX as f32) * 2.0 - 1.0).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
}

/// The zoo's PKN network, with every PolyKerv's `a_p` set to `a_p` (R-PKN style).
fn pkn(net: RefNet, a_p: f32) -> ModelFile {
    let mut f = build(net, Act::Pkn, Pool::Avg, 1.0, 11).unwrap();
    for nd in &mut f.graph.nodes {
        if let Op::PolyKerv { a_p: a, .. } = &mut nd.op {
            *a = a_p;
        }
    }
    f
}

/// Public coefficient rows of the plan's polynomial layers.
fn poly_rows(plan: &Plan) -> Vec<Vec<f32>> {
    plan.layers
        .iter()
        .filter_map(|l| match &l.op {
            LayerOp::Poly(p) => Some(p.coeffs[0].clone()),
            _ => None,
        })
        .collect()
}

fn check(net: RefNet, a_p: f32) -> Plan {
    let file = pkn(net, a_p);
    let folded = compile(&file).unwrap();
    let reference =
        compile_with(&file, CompileOptions { fold_polykerv: false, ..Default::default() }).unwrap();
    assert_eq!(folded.layers.len(), reference.layers.len(), "folding adds or removes no layer");
    let x = input(&folded, 3);
    let f32_ref = run_f32(&reference, &x, 1).unwrap();
    let twin_ref = run_fixed(&reference, &EncodedPlan::new(&reference).unwrap(), &x, 1).unwrap();
    let enc = EncodedPlan::new(&folded).unwrap();
    let twin = run_fixed(&folded, &enc, &x, 1).unwrap();
    let e_ref = max_diff(&twin_ref, &f32_ref);
    let e = max_diff(&twin, &f32_ref);
    let tol = 2.0 * e_ref + 1e-3;
    eprintln!("{net} a_p {a_p}: |twin(folded) - f32(unfolded)| = {e}, unfolded twin error {e_ref}");
    // In f32 the fold only reorders roundings.
    let f32_folded = run_f32(&folded, &x, 1).unwrap();
    let scale = f32_ref.iter().fold(1f32, |m, v| m.max(v.abs()));
    let d = max_diff(&f32_folded, &f32_ref);
    assert!(d <= 1e-4 * scale, "{net} a_p {a_p}: f32 folded vs unfolded differ by {d}");
    assert!(e <= tol, "{net} a_p {a_p}: {e} > {tol}");
    assert_eq!(argmax(&twin), argmax(&f32_ref));
    let (_, runs) = run_local(
        &folded,
        &[(x.clone(), 1)],
        LocalOpts { transport: Transport::Mem, check: false },
    )
    .unwrap();
    let err = max_diff(&runs[0].logits, &twin);
    assert!(err < 1e-3, "{net} a_p {a_p}: max |secure - twin| = {err}");
    assert_eq!(argmax(&runs[0].logits), argmax(&twin));
    folded
}

#[test]
fn net_c_pkn_folds_and_runs_privately() {
    // PKN (a_p = 1): c_p = 1 goes into every conv bias; the activations are plain x^2.
    let plan = check(RefNet::NetC, 1.0);
    assert!(poly_rows(&plan).iter().all(|r| r == &[0.0, 0.0, 1.0]), "{:?}", poly_rows(&plan));
    // R-PKN (a_p = 0.8): a_p goes into the next conv / fc too (through the average pools).
    let plan = check(RefNet::NetC, 0.8);
    assert!(poly_rows(&plan).iter().all(|r| r == &[0.0, 0.0, 1.0]), "{:?}", poly_rows(&plan));
}

#[test]
fn net_r18_pkn_folds_and_runs_privately() {
    let plan = check(RefNet::NetR18, 1.0);
    assert!(poly_rows(&plan).iter().all(|r| r == &[0.0, 0.0, 1.0]), "{:?}", poly_rows(&plan));
    // a_p = 0.8: it folds into conv2 inside each block (8 sites), into the next block's conv1 and
    // 1x1 projection shortcut (3 sites) and, at the last block, through the global average pool
    // into the fc (1 site); where the activation feeds an identity shortcut (the stem and the
    // first block of each stage, 5 sites) it stays public: 0.8 x^2. c_p folds everywhere (after
    // an add: into the residual branch's conv bias).
    let plan = check(RefNet::NetR18, 0.8);
    let rows = poly_rows(&plan);
    let folded = rows.iter().filter(|r| *r == &[0.0, 0.0, 1.0]).count();
    let public = rows.iter().filter(|r| *r == &[0.0, 0.0, 0.8]).count();
    assert_eq!((folded, public, rows.len()), (12, 5, 17), "{rows:?}");
}
