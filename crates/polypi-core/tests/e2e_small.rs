//! End-to-end: a small hand-built polynomial network, three roles in one process: the secure
//! logits equal the fixed-point twin within the truncation bound, and the float reference within
//! the quantisation error.

use polypi_core::engine::session::{run_local, LocalOpts, Transport};
use polypi_core::engine::{run_f32, run_fixed, EncodedPlan};
use polypi_core::model::{ConvGeom, ConvLayer, Layer, LayerOp, LinearLayer, Plan, PolyLayer};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn uniform(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| ((rng.next_u32() as f32 / u32::MAX as f32) * 2.0 - 1.0) * scale).collect()
}

/// conv3x3(2->4, pad 1) -> poly(per-channel deg 2) -> avgpool2 -> conv1x1(4->4) -> poly(deg 4)
/// -> add(skip) -> flatten -> linear(64->3)
fn tiny_plan(seed: u64) -> Plan {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let g1 =
        ConvGeom { c_in: 2, h: 8, w: 8, c_out: 4, kh: 3, kw: 3, stride: 1, padding: 1, groups: 1 };
    let g2 =
        ConvGeom { c_in: 4, h: 4, w: 4, c_out: 4, kh: 1, kw: 1, stride: 1, padding: 0, groups: 1 };
    let layers = vec![
        Layer {
            name: "input".into(),
            op: LayerOp::Input,
            inputs: vec![],
            out_shape: vec![2, 8, 8],
        },
        Layer {
            name: "conv1".into(),
            op: LayerOp::Conv2d(ConvLayer {
                geom: g1,
                weight: uniform(&mut rng, 72, 0.4),
                bias: uniform(&mut rng, 4, 0.1),
            }),
            inputs: vec![0],
            out_shape: vec![4, 8, 8],
        },
        Layer {
            name: "act1".into(),
            op: LayerOp::Poly(PolyLayer {
                degree: 2,
                coeffs: (0..4).map(|c| vec![0.1, 1.0, 0.05 * (c + 1) as f32]).collect(),
            }),
            inputs: vec![1],
            out_shape: vec![4, 8, 8],
        },
        Layer {
            name: "pool".into(),
            op: LayerOp::AvgPool2d { kernel: 2, stride: 2, padding: 0 },
            inputs: vec![2],
            out_shape: vec![4, 4, 4],
        },
        Layer {
            name: "conv2".into(),
            op: LayerOp::Conv2d(ConvLayer {
                geom: g2,
                weight: uniform(&mut rng, 16, 0.5),
                bias: vec![0.0; 4],
            }),
            inputs: vec![3],
            out_shape: vec![4, 4, 4],
        },
        Layer {
            name: "act2".into(),
            op: LayerOp::Poly(PolyLayer {
                degree: 4,
                coeffs: vec![vec![0.31445312, 0.5, 0.15625, 0.0, -0.00292969]],
            }),
            inputs: vec![4],
            out_shape: vec![4, 4, 4],
        },
        Layer {
            name: "skip".into(),
            op: LayerOp::Add,
            inputs: vec![5, 3],
            out_shape: vec![4, 4, 4],
        },
        Layer { name: "flat".into(), op: LayerOp::Flatten, inputs: vec![6], out_shape: vec![64] },
        Layer {
            name: "fc".into(),
            op: LayerOp::Linear(LinearLayer {
                in_features: 64,
                out_features: 3,
                weight: uniform(&mut rng, 192, 0.3),
                bias: uniform(&mut rng, 3, 0.1),
            }),
            inputs: vec![7],
            out_shape: vec![3],
        },
    ];
    Plan {
        layers,
        frac_bits: 16,
        labels: vec!["a".into(), "b".into(), "c".into()],
        normalize: None,
        poly_protocol: Default::default(),
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn secure_equals_fixed_point_twin_small_net() {
    let plan = tiny_plan(1);
    let enc = EncodedPlan::new(&plan).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for batch in [1usize, 3] {
        let x: Vec<f32> = uniform(&mut rng, batch * 128, 1.0);
        let twin = run_fixed(&plan, &enc, &x, batch).unwrap();
        let float = run_f32(&plan, &x, batch).unwrap();
        let (_, runs) = run_local(
            &plan,
            &[(x.clone(), batch)],
            LocalOpts { transport: Transport::Mem, check: true },
        )
        .unwrap();
        let secure = &runs[0].logits;
        assert_eq!(secure.len(), batch * 3);
        // Local truncation is off by at most 1 LSB per truncation; through this net that stays
        // far below 1e-3.
        assert!(max_diff(secure, &twin) < 1e-3, "secure {secure:?} twin {twin:?}");
        assert!(max_diff(&twin, &float) < 2e-2, "twin {twin:?} float {float:?}");
        let rep = &runs[0].report;
        assert!(rep.max_abs_error.unwrap() < 1e-3);
        // Two convs + fc: one message each client->server; two polys: one exchange each; reveal.
        assert_eq!(rep.rounds, 3 + 2 + 1, "{}", rep.table());
        // Online bytes: client sends every linear input once, both send poly openings, server
        // sends the logits.
        let lin_in = batch * (128 + 64 + 64);
        // act2 (PILLAR, c_3 = 0): two power groups (x^2 at 16 bits, x^4 at 8 bits).
        let poly_open = 2 * batch * (256 + 2 * 64);
        assert_eq!(
            rep.online_bytes as usize,
            8 * (lin_in + poly_open + 3 * batch),
            "{}",
            rep.table()
        );
    }
}

#[test]
fn wrong_input_shape_is_an_error_not_a_panic() {
    let plan = tiny_plan(3);
    let err = run_local(&plan, &[(vec![0.0; 100], 1)], LocalOpts::default()).unwrap_err();
    assert!(err.to_string().contains("shape mismatch"), "{err}");
}
