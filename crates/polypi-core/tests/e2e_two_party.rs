//! End-to-end without a dealer (docs/two-party.md): server and client alone produce the
//! correlated randomness (HE for linear layers, HE-based OLE for polynomial powers) and then run
//! the unchanged online phase. The secure logits equal the fixed-point twin within the
//! truncation bound, the online phase costs exactly what it costs in dealer mode, and plans with
//! layers that have no two-party generator (ReLU, max-pool, ESPN) are refused before anything
//! runs.
#![cfg(feature = "two-party")]

use polypi_core::engine::deploy::session_memory_bytes;
use polypi_core::engine::guard::GuardPolicy;
use polypi_core::engine::session::{run_local, run_local_two_party, LocalOpts, Transport};
use polypi_core::engine::{run_fixed, EncodedPlan};
use polypi_core::model::compile::compile;
use polypi_core::model::zoo::{build, Act, Pool, RefNet};
use polypi_core::model::{
    ConvGeom, ConvLayer, Layer, LayerOp, LinearLayer, Plan, PolyLayer, PolyProtocol,
};
use polypi_core::net::LinkModel;
use polypi_core::offline::two_party;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn uniform(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| ((rng.next_u32() as f32 / u32::MAX as f32) * 2.0 - 1.0) * scale).collect()
}

/// conv3x3(3->8, pad 1, 16x16) -> avgpool2 -> conv3x3(8->6, stride 2, pad 1) -> add of a 1x1
/// conv branch -> flatten -> linear(96->10). `poly`: an x^2 activation after the first conv.
fn linear_plan(seed: u64, poly: bool) -> Plan {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let g1 = ConvGeom {
        c_in: 3,
        h: 16,
        w: 16,
        c_out: 8,
        kh: 3,
        kw: 3,
        stride: 1,
        padding: 1,
        groups: 1,
    };
    let g2 =
        ConvGeom { c_in: 8, h: 8, w: 8, c_out: 6, kh: 3, kw: 3, stride: 2, padding: 1, groups: 1 };
    let g3 =
        ConvGeom { c_in: 8, h: 8, w: 8, c_out: 6, kh: 2, kw: 2, stride: 2, padding: 0, groups: 1 };
    let mut layers = vec![
        Layer {
            name: "input".into(),
            op: LayerOp::Input,
            inputs: vec![],
            out_shape: vec![3, 16, 16],
        },
        Layer {
            name: "conv1".into(),
            op: LayerOp::Conv2d(ConvLayer {
                geom: g1,
                weight: uniform(&mut rng, 8 * 27, 0.4),
                bias: uniform(&mut rng, 8, 0.1),
            }),
            inputs: vec![0],
            out_shape: vec![8, 16, 16],
        },
    ];
    if poly {
        layers.push(Layer {
            name: "act1".into(),
            op: LayerOp::Poly(PolyLayer { degree: 2, coeffs: vec![vec![0.0, 0.5, 0.25]] }),
            inputs: vec![1],
            out_shape: vec![8, 16, 16],
        });
    }
    let p = layers.len();
    layers.extend([
        Layer {
            name: "pool".into(),
            op: LayerOp::AvgPool2d { kernel: 2, stride: 2, padding: 0 },
            inputs: vec![p - 1],
            out_shape: vec![8, 8, 8],
        },
        Layer {
            name: "conv2".into(),
            op: LayerOp::Conv2d(ConvLayer {
                geom: g2,
                weight: uniform(&mut rng, 6 * 72, 0.3),
                bias: uniform(&mut rng, 6, 0.1),
            }),
            inputs: vec![p],
            out_shape: vec![6, 4, 4],
        },
        Layer {
            name: "conv3".into(),
            op: LayerOp::Conv2d(ConvLayer {
                geom: g3,
                weight: uniform(&mut rng, 6 * 32, 0.3),
                bias: vec![0.0; 6],
            }),
            inputs: vec![p],
            out_shape: vec![6, 4, 4],
        },
        Layer {
            name: "skip".into(),
            op: LayerOp::Add,
            inputs: vec![p + 1, p + 2],
            out_shape: vec![6, 4, 4],
        },
        Layer {
            name: "flat".into(),
            op: LayerOp::Flatten,
            inputs: vec![p + 3],
            out_shape: vec![96],
        },
        Layer {
            name: "fc".into(),
            op: LayerOp::Linear(LinearLayer {
                in_features: 96,
                out_features: 10,
                weight: uniform(&mut rng, 960, 0.2),
                bias: uniform(&mut rng, 10, 0.1),
            }),
            inputs: vec![p + 4],
            out_shape: vec![10],
        },
    ]);
    Plan {
        layers,
        frac_bits: 16,
        labels: (0..10).map(|i| format!("c{i}")).collect(),
        normalize: None,
        poly_protocol: Default::default(),
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn two_party(
    plan: &Plan,
    inputs: &[(Vec<f32>, usize)],
    transport: Transport,
    check: bool,
) -> Vec<polypi_core::engine::session::LocalInference> {
    run_local_two_party(
        plan,
        None,
        GuardPolicy::default(),
        inputs,
        LocalOpts { transport, check },
        LinkModel::none(),
    )
    .unwrap()
    .1
}

#[test]
fn two_party_equals_fixed_point_twin_and_dealer_online_phase() {
    for poly in [false, true] {
        same_as_twin_and_dealer(linear_plan(1, poly));
    }
}

fn same_as_twin_and_dealer(plan: Plan) {
    let enc = EncodedPlan::new(&plan).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let per: usize = plan.input_shape().iter().product();
    let inputs: Vec<(Vec<f32>, usize)> =
        [1usize, 2].iter().map(|&b| (uniform(&mut rng, b * per, 1.0), b)).collect();
    let runs = two_party(&plan, &inputs, Transport::Mem, true);
    let dealer =
        run_local(&plan, &inputs, LocalOpts { transport: Transport::Mem, check: false }).unwrap().1;
    for ((run, d), (x, b)) in runs.iter().zip(&dealer).zip(&inputs) {
        let twin = run_fixed(&plan, &enc, x, *b).unwrap();
        // One local truncation per linear layer and pool: off by at most a few LSB (2^-16).
        assert!(max_diff(&run.logits, &twin) < 1e-3, "two-party {:?} twin {twin:?}", run.logits);
        assert!(run.report.max_abs_error.unwrap() < 1e-3);
        // The online phase is the dealer mode's: same bytes and rounds, no dealer traffic.
        assert_eq!(run.report.online_bytes, d.report.online_bytes, "{}", run.report.table());
        assert_eq!(run.report.rounds, d.report.rounds);
        assert_eq!(run.report.offline_bytes, 0);
        assert!(run.report.preprocessing_bytes > 0);
        assert!(d.report.preprocessing_bytes == 0);
        // Every linear layer and the input sharing has preprocessing traffic; pools have none;
        // the batched OLE of all polynomial layers is reported on the first of them.
        let first_poly = run.report.layers.iter().position(|l| l.kind == "Poly");
        for (i, l) in run.report.layers.iter().enumerate() {
            let want =
                matches!(l.kind.as_str(), "Conv2d" | "Linear" | "Input") || Some(i) == first_poly;
            assert_eq!(l.bytes_two_party > 0, want, "{}: {}", l.name, l.bytes_two_party);
        }
        // The static count (serve's memory admission, `polypi cost`) is the measured traffic,
        // layer by layer.
        let predicted = two_party::preprocessing_bytes(&plan, *b).unwrap();
        let measured: Vec<(String, u64)> = run
            .report
            .layers
            .iter()
            .filter(|l| l.kind != "Reveal")
            .map(|l| (l.name.clone(), l.bytes_two_party))
            .collect();
        assert_eq!(predicted, measured);
        // Serve's admission reserves the HE working set on top of the dealer mode's estimate.
        let wire: u64 = predicted.iter().map(|(_, b)| b).sum();
        let (tp, dm) = (
            session_memory_bytes(&plan, *b, true).unwrap(),
            session_memory_bytes(&plan, *b, false).unwrap(),
        );
        assert_eq!(tp, dm + 2 * wire);
    }
}

#[test]
fn two_party_over_tcp() {
    let plan = linear_plan(5, false);
    let enc = EncodedPlan::new(&plan).unwrap();
    let x = uniform(&mut ChaCha8Rng::seed_from_u64(6), 768, 1.0);
    let runs = two_party(&plan, &[(x.clone(), 1)], Transport::Tcp, false);
    let twin = run_fixed(&plan, &enc, &x, 1).unwrap();
    assert!(max_diff(&runs[0].logits, &twin) < 1e-3);
}

/// NET-M x^2, X2act and PILLAR degree 4 (random weights, reference.md): two-party == fixed-point twin, the
/// argmax identical, the online phase the dealer mode's.
#[test]
fn net_m_two_party_equals_twin() {
    for act in [Act::Square, Act::X2Act, Act::Pillar] {
        let plan = compile(&build(RefNet::NetM, act, Pool::Avg, 1.0, 11).unwrap()).unwrap();
        same_as_twin_and_dealer(plan);
    }
}

/// NET-C X2act (random weights, full width, batch 1): two-party == fixed-point twin with no
/// dealer, over TCP on loopback.
#[test]
fn net_c_x2act_two_party_over_tcp_equals_twin() {
    let plan = compile(&build(RefNet::NetC, Act::X2Act, Pool::Avg, 1.0, 11).unwrap()).unwrap();
    let enc = EncodedPlan::new(&plan).unwrap();
    let per: usize = plan.input_shape().iter().product();
    let x = uniform(&mut ChaCha8Rng::seed_from_u64(8), per, 1.0);
    let runs = two_party(&plan, &[(x.clone(), 1)], Transport::Tcp, false);
    let twin = run_fixed(&plan, &enc, &x, 1).unwrap();
    assert!(max_diff(&runs[0].logits, &twin) < 1e-3, "{:?} vs {twin:?}", runs[0].logits);
    assert!(runs[0].report.preprocessing_bytes > 0 && runs[0].report.offline_bytes == 0);
}

#[test]
fn layers_without_a_two_party_generator_are_refused() {
    let mut plan = linear_plan(1, true);
    plan.poly_protocol = PolyProtocol::SharePowers;
    let err = run_local_two_party(
        &plan,
        None,
        GuardPolicy::default(),
        &[(vec![0.0; 768], 1)],
        LocalOpts::default(),
        LinkModel::none(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("act1") && err.contains("dealer"), "{err}");
    let relu = compile(&build(RefNet::NetM, Act::Relu, Pool::Max, 1.0, 1).unwrap()).unwrap();
    let err = run_local_two_party(
        &relu,
        None,
        GuardPolicy::default(),
        &[(vec![0.0; 784], 1)],
        LocalOpts::default(),
        LinkModel::none(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("ReLU") || err.contains("max-pool"), "{err}");
}
