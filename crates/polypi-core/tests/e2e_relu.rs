//! End-to-end ReLU / MaxPool networks (issue 5): NET-M with ReLU and average pooling, NET-C with
//! ReLU and max pooling, random weights, server, client and dealer over in-memory channels (and
//! TCP once). Secure logits equal the fixed-point twin within 1e-3 (the comparison protocols are
//! exact, only local truncation differs) and the argmax is identical; each ReLU layer takes 2
//! rounds and each max-pool `2 * ceil(log2(k*k))`.

use polypi_core::engine::session::{run_local, LocalOpts, Transport};
use polypi_core::engine::{run_fixed, EncodedPlan};
use polypi_core::model::compile::compile;
use polypi_core::model::zoo::{build, Act, Pool, RefNet};
use polypi_core::model::LayerOp;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
}

fn check(net: RefNet, pool: Pool, batches: &[usize], transport: Transport) {
    let plan = compile(&build(net, Act::Relu, pool, 1.0, 11).unwrap()).unwrap();
    let enc = EncodedPlan::new(&plan).unwrap();
    let per: usize = plan.input_shape().iter().product();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let inputs: Vec<(Vec<f32>, usize)> = batches
        .iter()
        .map(|&b| {
            let x = (0..b * per).map(|_| (rng.next_u32() as f32 / u32::MAX as f32) * 2.0 - 1.0);
            (x.collect(), b)
        })
        .collect();
    let (_, runs) = run_local(&plan, &inputs, LocalOpts { transport, check: false }).unwrap();
    let k = plan.num_classes();
    for ((x, b), run) in inputs.iter().zip(&runs) {
        let twin = run_fixed(&plan, &enc, x, *b).unwrap();
        let err = run.logits.iter().zip(&twin).map(|(a, t)| (a - t).abs()).fold(0.0, f32::max);
        assert!(
            err < 1e-3,
            "{net:?} {pool:?} batch {b}: max |secure - twin| = {err}\n{}",
            run.report.table()
        );
        for i in 0..*b {
            assert_eq!(argmax(&run.logits[i * k..(i + 1) * k]), argmax(&twin[i * k..(i + 1) * k]));
        }
        for (layer, row) in plan.layers.iter().zip(&run.report.layers) {
            match layer.op {
                LayerOp::Relu => assert_eq!(row.rounds, 2, "{}", layer.name),
                LayerOp::MaxPool2d { kernel, .. } => {
                    let levels = (kernel * kernel).next_power_of_two().trailing_zeros() as u64;
                    assert_eq!(row.rounds, 2 * levels, "{}", layer.name);
                }
                _ => {}
            }
        }
    }
}

#[test]
fn e2e_relu_net_m_avg_pool() {
    check(RefNet::NetM, Pool::Avg, &[1, 2], Transport::Mem);
}

#[test]
fn e2e_relu_net_c_max_pool() {
    check(RefNet::NetC, Pool::Max, &[1, 2], Transport::Mem);
}

#[test]
fn e2e_relu_net_c_max_pool_tcp() {
    check(RefNet::NetC, Pool::Max, &[1], Transport::Tcp);
}
