//! Property tests: every secure protocol equals its plaintext fixed-point twin on random shapes
//! and values. Each case is a one- or two-layer plan run by server, client and dealer over
//! in-memory channels.
//!
//! Bounds (f = 16 fractional bits, SecureML local truncation is off by at most one unit in the
//! last place per truncation, failure probability < 2^-30 per element at these magnitudes):
//! - conv / linear: exactly one truncation -> |secure - twin| <= 1 LSB = 2^-16;
//! - average pooling with a power-of-two window: one truncation -> 1 LSB;
//! - polynomial of degree 2: truncations of x^2 and of the sum, the latter scaled by |c_2| ->
//!   <= (1 + |c_2| + 1) LSB; higher degrees also pre-truncate x to f_k bits, which costs
//!   |p'(x)| * 2^-f_k; the test bounds it by the derivative at the sampled range.
//! - add / flatten: exact.
//! - ReLU and max-pool (FSS comparison on the ring `Z_2^36`, `polypi_core::mpc::relu`): exact
//!   for inputs and max-pool differences below 2^19 in absolute value (the comparison bound at
//!   f = 16), so the case draws values up to 0.99 * 2^18.
//!
//! The polynomial case runs with both `PolyProtocol`s (dealer powers and ESPN share powers).

use polypi_core::engine::session::{run_local, LocalOpts};
use polypi_core::engine::{run_fixed, EncodedPlan};
use polypi_core::model::{
    ConvGeom, ConvLayer, Layer, LayerOp, LinearLayer, Plan, PolyLayer, PolyProtocol,
};
use proptest::prelude::*;

const LSB: f32 = 1.0 / 65536.0;

fn input_layer(shape: Vec<usize>) -> Layer {
    Layer { name: "input".into(), op: LayerOp::Input, inputs: vec![], out_shape: shape }
}

fn secure_vs_twin(plan: &Plan, x: &[f32], batch: usize) -> f32 {
    let enc = EncodedPlan::new(plan).unwrap();
    let twin = run_fixed(plan, &enc, x, batch).unwrap();
    let (_, runs) = run_local(plan, &[(x.to_vec(), batch)], LocalOpts::default()).unwrap();
    runs[0].logits.iter().zip(&twin).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

fn vals(n: usize, amp: f32) -> impl Strategy<Value = Vec<f32>> {
    proptest::collection::vec(-amp..amp, n)
}

prop_compose! {
    fn conv_case()(c_in_g in 1usize..4, groups in 1usize..3, c_out_g in 1usize..4, k in 1usize..4,
                   stride in 1usize..3, padding in 0usize..2, hw in 3usize..9, batch in 1usize..3)
                  (w in vals(c_out_g * groups * c_in_g * k * k, 1.0), b in vals(c_out_g * groups, 1.0),
                   x in vals(batch * c_in_g * groups * hw * hw, 4.0),
                   c_in_g in Just(c_in_g), groups in Just(groups), c_out_g in Just(c_out_g), k in Just(k),
                   stride in Just(stride), padding in Just(padding), hw in Just(hw), batch in Just(batch))
                  -> (Plan, Vec<f32>, usize) {
        let geom = ConvGeom { c_in: c_in_g * groups, h: hw, w: hw, c_out: c_out_g * groups, kh: k, kw: k, stride, padding, groups };
        let out = vec![geom.c_out, geom.out_h(), geom.out_w()];
        let plan = Plan {
            layers: vec![
                input_layer(vec![geom.c_in, hw, hw]),
                Layer { name: "conv".into(), op: LayerOp::Conv2d(ConvLayer { geom, weight: w, bias: b }), inputs: vec![0], out_shape: out },
            ],
            frac_bits: 16, labels: vec![], normalize: None, poly_protocol: Default::default(),
        };
        (plan, x, batch)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn conv_equals_twin((plan, x, batch) in conv_case()) {
        prop_assume!(plan.layers[1].out_shape[1] >= 1);
        let err = secure_vs_twin(&plan, &x, batch);
        prop_assert!(err <= LSB, "err {err}");
    }

    #[test]
    fn linear_equals_twin(i in 1usize..40, o in 1usize..12, batch in 1usize..4, seed in any::<u64>()) {
        let mut s = seed | 1;
        let mut next = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; (s % 2000) as f32 / 1000.0 - 1.0 };
        let w: Vec<f32> = (0..i * o).map(|_| next()).collect();
        let b: Vec<f32> = (0..o).map(|_| next()).collect();
        let x: Vec<f32> = (0..batch * i).map(|_| 8.0 * next()).collect();
        let plan = Plan {
            layers: vec![
                input_layer(vec![i]),
                Layer { name: "fc".into(), op: LayerOp::Linear(LinearLayer { in_features: i, out_features: o, weight: w, bias: b }), inputs: vec![0], out_shape: vec![o] },
            ],
            frac_bits: 16, labels: vec![], normalize: None, poly_protocol: Default::default(),
        };
        let err = secure_vs_twin(&plan, &x, batch);
        prop_assert!(err <= LSB, "err {err}");
    }

    #[test]
    fn polynomial_equals_twin(degree in 1usize..7, c in 1usize..4, hw in 1usize..5, per_channel in any::<bool>(),
                              coeffs in vals(4 * 7, 0.5), x in vals(3 * 4 * 25, 2.0), batch in 1usize..3) {
        let rows = if per_channel { c } else { 1 };
        let mut cs: Vec<Vec<f32>> = (0..rows).map(|r| coeffs[r * 7..r * 7 + degree + 1].to_vec()).collect();
        for row in &mut cs { row[degree] = if row[degree].abs() < 0.01 { 0.25 } else { row[degree] }; }
        let n = batch * c * hw * hw;
        let x = x[..n].to_vec();
        let plan = Plan {
            layers: vec![
                input_layer(vec![c, hw, hw]),
                Layer { name: "poly".into(), op: LayerOp::Poly(PolyLayer { degree, coeffs: cs.clone() }), inputs: vec![0], out_shape: vec![c, hw, hw] },
            ],
            frac_bits: 16, labels: vec![], normalize: None, poly_protocol: Default::default(),
        };
        // |p'(x)| <= sum k |c_k| 2^(k-1) for |x| < 2; the pre-truncation to f_k bits errs by one
        // unit of 2^-f_k, the power truncations and the final one by 1 LSB each, scaled by |c_k|.
        let mut bound = 2.0 * LSB;
        for row in &cs {
            let mut b = 2.0 * LSB;
            for (k, ck) in row.iter().enumerate().skip(2) {
                let fk = 16u32.min((32 / k) as u32);
                b += ck.abs() * (k as f32 * 2f32.powi(k as i32 - 1) * 2f32.powi(-(fk as i32)) + 2.0 * LSB);
            }
            bound = bound.max(b);
        }
        // Both polynomial protocols (dealer powers, ESPN share powers) compute the same exact
        // powers of the pre-truncated input, so the same bound holds for each.
        let mut plan = plan;
        for protocol in PolyProtocol::ALL {
            plan.poly_protocol = protocol;
            let err = secure_vs_twin(&plan, &x, batch);
            prop_assert!(err <= bound, "{protocol} degree {degree}: err {err} > bound {bound}");
        }
    }

    #[test]
    fn avgpool_add_flatten_equal_twin(c in 1usize..4, hw in 1usize..4, batch in 1usize..3, x in vals(3 * 64 * 2, 5.0)) {
        let h = 2 * hw;
        let n = batch * c * h * h;
        let x = x[..n].to_vec();
        let plan = Plan {
            layers: vec![
                input_layer(vec![c, h, h]),
                Layer { name: "pool".into(), op: LayerOp::AvgPool2d { kernel: 2, stride: 2, padding: 0 }, inputs: vec![0], out_shape: vec![c, hw, hw] },
                Layer { name: "gap".into(), op: LayerOp::GlobalAvgPool, inputs: vec![0], out_shape: vec![c] },
                Layer { name: "flat".into(), op: LayerOp::Flatten, inputs: vec![1], out_shape: vec![c * hw * hw] },
                Layer { name: "gap2".into(), op: LayerOp::AvgPool2d { kernel: 1, stride: 1, padding: 0 }, inputs: vec![0], out_shape: vec![c, h, h] },
                Layer { name: "add".into(), op: LayerOp::Add, inputs: vec![4, 0], out_shape: vec![c, h, h] },
                Layer { name: "gap3".into(), op: LayerOp::GlobalAvgPool, inputs: vec![5], out_shape: vec![c] },
                Layer { name: "sum".into(), op: LayerOp::Add, inputs: vec![6, 2], out_shape: vec![c] },
            ],
            frac_bits: 16, labels: vec![], normalize: None, poly_protocol: Default::default(),
        };
        let _ = &plan.layers[3];
        let err = secure_vs_twin(&plan, &x, batch);
        // gap (non-power-of-two windows multiply by round(2^f/hw) and truncate) + sum of truncations.
        prop_assert!(err <= 4.0 * LSB, "err {err}");
    }

    /// Average pooling with zero padding (the ImageNet stem's 3x3/s2/p1 and a 3x3/s1/p1): secure
    /// == twin within one truncation (window 9: multiply by round(2^f/9), truncate), and the twin
    /// equals the f32 mean over the zero-padded window (divisor k^2) within the encoding error.
    #[test]
    fn padded_avgpool_equal_twin(c in 1usize..3, h in 1usize..7, w in 1usize..7, batch in 1usize..3,
                                 cfg in 0usize..3, x in vals(2 * 2 * 6 * 6, 8.0)) {
        let (k, s, p) = [(3, 2, 1), (3, 1, 1), (2, 2, 1)][cfg];
        prop_assume!(h + 2 * p >= k && w + 2 * p >= k);
        let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let x = x[..batch * c * h * w].to_vec();
        let plan = Plan {
            layers: vec![
                input_layer(vec![c, h, w]),
                Layer { name: "pool".into(), op: LayerOp::AvgPool2d { kernel: k, stride: s, padding: p }, inputs: vec![0], out_shape: vec![c, oh, ow] },
            ],
            frac_bits: 16, labels: vec![], normalize: None, poly_protocol: Default::default(),
        };
        let err = secure_vs_twin(&plan, &x, batch);
        prop_assert!(err <= 2.0 * LSB, "secure vs twin {err}");
        let enc = EncodedPlan::new(&plan).unwrap();
        let twin = run_fixed(&plan, &enc, &x, batch).unwrap();
        for img in 0..batch * c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut sum = 0f32;
                    for ky in 0..k {
                        for kx in 0..k {
                            let (iy, ix) = ((oy * s + ky) as isize - p as isize, (ox * s + kx) as isize - p as isize);
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                sum += x[img * h * w + iy as usize * w + ix as usize];
                            }
                        }
                    }
                    let want = sum / (k * k) as f32;
                    let got = twin[img * oh * ow + oy * ow + ox];
                    prop_assert!((got - want).abs() <= 16.0 * LSB, "twin {got} vs f32 {want}");
                }
            }
        }
    }

    #[test]
    fn relu_maxpool_equal_twin(c in 1usize..3, h in 2usize..7, w in 2usize..7, batch in 1usize..3,
                               cfg in 0usize..3, x in vals(2 * 2 * 6 * 6, 0.99 * 262144.0)) {
        let (k, s, p) = [(2, 2, 0), (3, 2, 1), (3, 1, 1)][cfg];
        prop_assume!(h + 2 * p >= k && w + 2 * p >= k);
        let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let x = x[..batch * c * h * w].to_vec();
        let pool = LayerOp::MaxPool2d { kernel: k, stride: s, padding: p };
        let plan = Plan {
            layers: vec![
                input_layer(vec![c, h, w]),
                Layer { name: "relu".into(), op: LayerOp::Relu, inputs: vec![0], out_shape: vec![c, h, w] },
                Layer { name: "pool".into(), op: pool.clone(), inputs: vec![1], out_shape: vec![c, oh, ow] },
                Layer { name: "pool_raw".into(), op: pool, inputs: vec![0], out_shape: vec![c, oh, ow] },
                Layer { name: "add".into(), op: LayerOp::Add, inputs: vec![2, 3], out_shape: vec![c, oh, ow] },
            ],
            frac_bits: 16, labels: vec![], normalize: None, poly_protocol: Default::default(),
        };
        let err = secure_vs_twin(&plan, &x, batch);
        prop_assert!(err == 0.0, "err {err}");
    }
}
