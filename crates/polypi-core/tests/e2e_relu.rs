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

/// Measurement (release, `--ignored --nocapture`): NET-C and NET-R18 with ReLU, batch 1, over
/// in-memory channels: online ms, online MB, rounds, dealer MB and the slowest layers.
#[test]
#[ignore]
fn e2e_relu_measure() {
    for (net, pool) in
        [(RefNet::NetC, Pool::Max), (RefNet::NetC, Pool::Avg), (RefNet::NetR18, Pool::Avg)]
    {
        let plan = compile(&build(net, Act::Relu, pool, 1.0, 11).unwrap()).unwrap();
        let per: usize = plan.input_shape().iter().product();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let x: Vec<f32> =
            (0..per).map(|_| (rng.next_u32() as f32 / u32::MAX as f32) * 2.0 - 1.0).collect();
        let inputs = vec![(x.clone(), 1), (x, 1)];
        let (_, runs) = run_local(&plan, &inputs, LocalOpts::default()).unwrap();
        for r in &runs {
            let rep = &r.report;
            let relus: usize = plan
                .layers
                .iter()
                .filter(|l| matches!(l.op, LayerOp::Relu))
                .map(|l| l.out_shape.iter().product::<usize>())
                .sum();
            println!(
                "{net:?} {pool:?}: relus {relus} online {:.1} ms, {:.2} MB, {} rounds; offline {:.1} ms, dealer {:.1} MB",
                rep.online_ms,
                rep.online_bytes as f64 / 1e6,
                rep.rounds,
                rep.offline_ms,
                rep.offline_bytes as f64 / 1e6
            );
        }
        let rep = &runs[1].report;
        let mut kinds: std::collections::BTreeMap<String, (f64, f64, u64)> = Default::default();
        for l in &rep.layers {
            let e = kinds.entry(l.kind.clone()).or_default();
            e.0 += l.online_ms;
            e.1 += l.offline_ms;
            e.2 += l.bytes_server_to_client + l.bytes_client_to_server;
        }
        for (k, (on, off, b)) in kinds {
            println!(
                "   {k:10} online {on:8.1} ms  offline {off:8.1} ms  {:.2} MB",
                b as f64 / 1e6
            );
        }
    }
}
