//! The cost model's counts equal the engine's: for the reference networks (NET-M, NET-C, NET-R18;
//! x^2, X2act, PILLAR degree 4; average pooling; both polynomial protocols) at batch 1 and 2, the predicted per-layer bytes
//! (client -> server, server -> client, dealer -> client), rounds and MACs are exactly those of
//! the engine's `InferenceReport` from an in-memory run, and the setup bytes are the client's
//! `SetupReport::bytes`.

use polypi_core::cost::{count, predict, session_cost, CpuProfile, FpgaProfile, Profile};
use polypi_core::engine::session::{run_local, LocalOpts, Transport};
use polypi_core::model::compile::compile;
use polypi_core::model::zoo::{build, Act, Pool, RefNet};
use polypi_core::model::PolyProtocol;
use polypi_core::net::LinkModel;

fn inputs(per: usize, batches: &[usize]) -> Vec<(Vec<f32>, usize)> {
    batches
        .iter()
        .map(|&b| ((0..b * per).map(|i| ((i % 17) as f32 / 17.0) - 0.5).collect(), b))
        .collect()
}

fn check(net: RefNet, act: Act, pool: Pool, batches: &[usize]) {
    check_with(net, act, pool, batches, PolyProtocol::DealerPowers);
}

fn check_with(net: RefNet, act: Act, pool: Pool, batches: &[usize], protocol: PolyProtocol) {
    let mut plan = compile(&build(net, act, pool, 1.0, 7).unwrap()).unwrap();
    plan.poly_protocol = protocol;
    let act = format!("{act} ({protocol})");
    let per: usize = plan.input_shape().iter().product();
    let (setup, runs) = run_local(
        &plan,
        &inputs(per, batches),
        LocalOpts { transport: Transport::Mem, check: false },
    )
    .unwrap();
    let session = session_cost(&plan).unwrap();
    assert_eq!(session.setup_bytes_server_to_client, setup.bytes, "{net} {act}: setup bytes");
    for (run, &b) in runs.iter().zip(batches.iter()) {
        let pred = count(&plan, b).unwrap();
        let eng = &run.report.layers;
        assert_eq!(pred.len(), eng.len(), "{net} {act} batch {b}: number of rows");
        for (p, e) in pred.iter().zip(eng) {
            let what = format!("{net} {act} batch {b} layer {} ({})", e.name, e.kind);
            assert_eq!(p.name, e.name, "{what}: name");
            assert_eq!(p.kind, e.kind, "{what}: kind");
            assert_eq!(p.out_shape, e.out_shape, "{what}: shape");
            assert_eq!(p.bytes_client_to_server, e.bytes_client_to_server, "{what}: c->s");
            assert_eq!(p.bytes_server_to_client, e.bytes_server_to_client, "{what}: s->c");
            // The engine counts the dealer's bytes to both parties together.
            assert_eq!(p.dealer_bytes(), e.bytes_from_dealer, "{what}: dealer");
            assert_eq!(p.rounds, e.rounds, "{what}: rounds");
            assert_eq!(p.macs, e.macs, "{what}: MACs");
        }
        let rep =
            predict(&plan, b, &Profile::Fpga(FpgaProfile::default()), &LinkModel::wan()).unwrap();
        assert_eq!(rep.online_bytes(), run.report.online_bytes, "{net} {act} batch {b}");
        assert_eq!(
            rep.bytes_dealer_to_client + rep.bytes_dealer_to_server,
            run.report.offline_bytes
        );
        assert_eq!(rep.rounds, run.report.rounds);
    }
}

#[test]
fn cost_net_m_counts_equal_engine() {
    for act in [Act::Square, Act::X2Act, Act::Pillar] {
        check(RefNet::NetM, act, Pool::Avg, &[1, 2]);
    }
}

#[test]
fn cost_net_c_counts_equal_engine() {
    for act in [Act::Square, Act::X2Act, Act::Pillar] {
        check(RefNet::NetC, act, Pool::Avg, &[1, 2]);
    }
}

#[test]
fn cost_net_r18_counts_equal_engine() {
    for act in [Act::Square, Act::X2Act, Act::Pillar] {
        check(RefNet::NetR18, act, Pool::Avg, &[1, 2]);
    }
}

/// ESPN share powers (the second polynomial protocol): x^2, X2act and PILLAR degree 4.
#[test]
fn cost_share_powers_counts_equal_engine() {
    for act in [Act::Square, Act::X2Act, Act::Pillar] {
        check_with(RefNet::NetM, act, Pool::Avg, &[1, 2], PolyProtocol::SharePowers);
    }
    check_with(RefNet::NetC, Act::Pillar, Pool::Avg, &[1], PolyProtocol::SharePowers);
    check_with(RefNet::NetR18, Act::Pillar, Pool::Avg, &[1], PolyProtocol::SharePowers);
}

#[test]
fn cost_relu_and_maxpool_counts_equal_engine() {
    check(RefNet::NetM, Act::Relu, Pool::Avg, &[1, 2]);
    check(RefNet::NetM, Act::Relu, Pool::Max, &[1]);
    check(RefNet::NetC, Act::Relu, Pool::Max, &[1]);
}

#[test]
fn cost_pasnet_table_on_a_relu_network() {
    let plan = compile(&build(RefNet::NetM, Act::Relu, Pool::Max, 1.0, 7).unwrap()).unwrap();
    let pas = predict(&plan, 1, &Profile::Pasnet, &LinkModel::none()).unwrap();
    // NET-M: ReLU sites of 16*24*24, 16*8*8, 100 elements; max-pools of 16*24*24, 16*8*8.
    let relu = |n: f64| 13.6 * n + 0.4;
    let want = relu(9216.0) + relu(1024.0) + relu(100.0) + 0.75 * (relu(9216.0) + relu(1024.0));
    assert!((pas.online_ms - want).abs() < 1e-6 * want, "{} vs {want}", pas.online_ms);
    assert!(pas.table().contains("PASNet units"));
    // The CPU profile models the FSS protocol: 2 rounds per ReLU layer, 4 per 2x2 max-pool.
    let cpu = Profile::Cpu(CpuProfile {
        description: "toy".into(),
        threads: 1,
        gemm_gmacs: 1.0,
        gemm_gmacs_single: 1.0,
        prg_gbytes_per_s: 1.0,
        elementwise_gops: 1.0,
        per_message_us: 10.0,
        loopback_gbytes_per_s: 1.0,
        exchange_gbytes_per_s: 1.0,
        poly_power_ns: vec![1.0; 9],
        poly_combine_ns: 1.0,
        dcf_eval_ns: 1.0,
        dcf_gen_ns: 1.0,
        shared_cores: true,
    });
    let rep = predict(&plan, 1, &cpu, &LinkModel::wan()).unwrap();
    assert_eq!(rep.rounds, 4 + 3 * 2 + 2 * 4 + 1);
    // Each round costs about RTT/2 on the critical path (parties overlap their sends).
    assert!(rep.online_ms > 15.0 * rep.rounds as f64, "{}", rep.table());
}

/// The messages outside the layer rows (seeds, skeleton, `F = W - B`, batch sizes, online-start,
/// session end) make the channels' counters equal the predicted totals exactly.
#[test]
fn cost_channel_totals_equal_session_counters() {
    use polypi_core::engine::session::{deal_session, serve_session, ClientSession};
    use polypi_core::engine::EncodedPlan;
    use polypi_core::net::{mem_pair, Channel};
    let plan = compile(&build(RefNet::NetM, Act::Relu, Pool::Max, 1.0, 7).unwrap()).unwrap();
    let enc = EncodedPlan::new(&plan).unwrap();
    let per: usize = plan.input_shape().iter().product();
    let batches = [1usize, 2];
    let (mut sc, mut cs) = mem_pair();
    let (mut sd, mut ds) = mem_pair();
    let (mut cd, mut dc) = mem_pair();
    std::thread::scope(|s| {
        let srv = s.spawn(|| serve_session(&plan, &enc, &mut sc, &mut sd, false).unwrap());
        let dea = s.spawn(|| deal_session(&mut ds, &mut dc).unwrap());
        let mut sess = ClientSession::connect(&mut cs, &mut cd).unwrap();
        for (x, b) in inputs(per, &batches) {
            sess.infer(&x, b, false).unwrap();
        }
        sess.close().unwrap();
        srv.join().unwrap();
        dea.join().unwrap();
    });
    let se = session_cost(&plan).unwrap();
    let k = batches.len() as u64;
    let sum = |f: &dyn Fn(&polypi_core::cost::LayerCost) -> u64| -> u64 {
        batches.iter().map(|&b| count(&plan, b).unwrap().iter().map(f).sum::<u64>()).sum()
    };
    let c = cs.stats();
    assert_eq!(
        c.bytes_sent,
        sum(&|l| l.bytes_client_to_server) + k * se.control_bytes_client_to_server + se.close_bytes
    );
    assert_eq!(
        c.messages_sent,
        sum(&|l| l.messages_client_to_server) + k * se.control_messages_client_to_server + 1
    );
    assert_eq!(
        c.bytes_received,
        se.setup_bytes_server_to_client + sum(&|l| l.bytes_server_to_client)
    );
    assert_eq!(
        c.messages_received,
        1 + se.masked_weight_messages + sum(&|l| l.messages_server_to_client)
    );
    let d = cd.stats();
    assert_eq!(d.bytes_received, se.seed_bytes + sum(&|l| l.bytes_dealer_to_client));
    assert_eq!(d.messages_received, 1 + sum(&|l| l.messages_dealer_to_client));
    assert_eq!(d.bytes_sent, k * se.control_bytes_client_to_dealer + se.close_bytes);
    let s = sd.stats();
    assert_eq!(s.bytes_received, se.seed_bytes + sum(&|l| l.bytes_dealer_to_server));
    assert_eq!(s.messages_received, 1 + sum(&|l| l.messages_dealer_to_server));
    assert_eq!(s.bytes_sent, se.skeleton_bytes);
}

#[test]
fn cost_calibrate_gives_positive_rates_and_roundtrips_through_json() {
    let p = polypi_core::cost::calibrate();
    for (name, v) in [
        ("gemm", p.gemm_gmacs),
        ("gemm single", p.gemm_gmacs_single),
        ("prg", p.prg_gbytes_per_s),
        ("elementwise", p.elementwise_gops),
        ("per message", p.per_message_us),
        ("loopback", p.loopback_gbytes_per_s),
        ("exchange", p.exchange_gbytes_per_s),
        ("dcf eval", p.dcf_eval_ns),
        ("dcf gen", p.dcf_gen_ns),
        ("x^2", p.poly_power_ns[2]),
    ] {
        assert!(v.is_finite() && v > 0.0, "{name}: {v}");
    }
    let f = std::env::temp_dir().join(format!("polypi-cost-cal-{}.json", std::process::id()));
    p.save(&f).unwrap();
    // serde_json's default float parsing may differ in the last bit.
    let back = CpuProfile::load(&f).unwrap();
    assert_eq!(back.description, p.description);
    assert!((back.gemm_gmacs / p.gemm_gmacs - 1.0).abs() < 1e-12);
    assert!((back.exchange_gbytes_per_s / p.exchange_gbytes_per_s - 1.0).abs() < 1e-12);
    std::fs::remove_file(&f).ok();
}
