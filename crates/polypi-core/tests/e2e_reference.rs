//! End-to-end on the reference networks of reference.md, random weights, the "x^2" variant
//! (square activations, average pooling), X2act, PILLAR degree 4 and PKN, with both polynomial
//! protocols (dealer powers; ESPN share powers): server, client and dealer over in-memory
//! channels and over TCP on loopback. Secure logits equal the fixed-point twin within 1e-3 and
//! the argmax is identical.

use polypi_core::engine::session::{run_local, LocalOpts, Transport};
use polypi_core::engine::{run_fixed, EncodedPlan};
use polypi_core::model::compile::compile;
use polypi_core::model::zoo::{build, Act, Pool, RefNet};
use polypi_core::model::PolyProtocol;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
}

fn check(net: RefNet, act: Act, batches: &[usize], transport: Transport) {
    check_with(net, act, batches, transport, PolyProtocol::DealerPowers);
}

fn check_with(
    net: RefNet,
    act: Act,
    batches: &[usize],
    transport: Transport,
    protocol: PolyProtocol,
) {
    check_file(&build(net, act, Pool::Avg, 1.0, 11).unwrap(), batches, transport, protocol);
}

fn check_file(
    file: &polypi_core::model::file::ModelFile,
    batches: &[usize],
    transport: Transport,
    protocol: PolyProtocol,
) {
    let acts: Vec<&str> = file.graph.nodes.iter().map(|n| n.op.kind()).collect();
    let mut plan = compile(file).unwrap();
    plan.poly_protocol = protocol;
    let enc = EncodedPlan::new(&plan).unwrap();
    let per: usize = plan.input_shape().iter().product();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let inputs: Vec<(Vec<f32>, usize)> = batches
        .iter()
        .map(|&b| {
            (
                (0..b * per)
                    .map(|_| (rng.next_u32() as f32 / u32::MAX as f32) * 2.0 - 1.0)
                    .collect(),
                b,
            )
        })
        .collect();
    let (_, runs) = run_local(&plan, &inputs, LocalOpts { transport, check: false }).unwrap();
    let k = plan.num_classes();
    for ((x, b), run) in inputs.iter().zip(&runs) {
        let twin = run_fixed(&plan, &enc, x, *b).unwrap();
        let err = run.logits.iter().zip(&twin).map(|(a, t)| (a - t).abs()).fold(0.0, f32::max);
        assert!(
            err < 1e-3,
            "{acts:?} {protocol} batch {b}: max |secure - twin| = {err}\n{}",
            run.report.table()
        );
        for i in 0..*b {
            assert_eq!(argmax(&run.logits[i * k..(i + 1) * k]), argmax(&twin[i * k..(i + 1) * k]));
        }
        // Linear layers: one message each; activations: one exchange each; plus the reveal.
        assert!(run.report.rounds > 0);
    }
}

#[test]
fn net_m_square_mem_and_tcp() {
    check(RefNet::NetM, Act::Square, &[1, 4], Transport::Mem);
    check(RefNet::NetM, Act::Square, &[1, 4], Transport::Tcp);
}

#[test]
fn net_m_x2act_mem() {
    check(RefNet::NetM, Act::X2Act, &[1, 4], Transport::Mem);
}

#[test]
fn net_c_square_mem_and_tcp() {
    check(RefNet::NetC, Act::Square, &[1, 4], Transport::Mem);
    check(RefNet::NetC, Act::Square, &[1, 4], Transport::Tcp);
}

#[test]
fn net_c_pillar_degree4_mem() {
    check(RefNet::NetC, Act::Pillar, &[1], Transport::Mem);
}

/// ESPN share powers (Diaa et al.): PILLAR degree 4 and x^2, in memory and over TCP.
#[test]
fn net_c_share_powers_pillar_and_square() {
    check_with(RefNet::NetC, Act::Pillar, &[1, 2], Transport::Mem, PolyProtocol::SharePowers);
    check_with(RefNet::NetC, Act::Square, &[1], Transport::Tcp, PolyProtocol::SharePowers);
}

#[test]
fn net_m_share_powers_x2act_mem() {
    check_with(RefNet::NetM, Act::X2Act, &[1, 4], Transport::Mem, PolyProtocol::SharePowers);
}

#[test]
fn net_c_pkn_mem() {
    check(RefNet::NetC, Act::Pkn, &[1], Transport::Mem);
}

#[test]
fn net_r18_square_mem_and_tcp() {
    check(RefNet::NetR18, Act::Square, &[1], Transport::Mem);
    check(RefNet::NetR18, Act::Square, &[1], Transport::Tcp);
}

#[test]
fn net_r18_x2act_mem() {
    check(RefNet::NetR18, Act::X2Act, &[1], Transport::Mem);
}

/// PASNet's X2act has one scalar set (w0, w1, b) per site: `[1]` tensors are accepted next to
/// per-channel `[C]` ones, run privately == twin, and a mix of the two is refused.
#[test]
fn net_m_x2act_one_scalar_set_per_site() {
    use polypi_core::model::file::TensorF32;
    use polypi_core::model::graph::Op;
    let mut f = build(RefNet::NetM, Act::X2Act, Pool::Avg, 1.0, 11).unwrap();
    let names: Vec<String> = f
        .graph
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::X2Act { w0, w1, b, .. } => Some([w0.clone(), w1.clone(), b.clone()]),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(names.len(), 9, "NET-M has three X2act sites");
    for (i, t) in names.iter().enumerate() {
        // Distinct per-site values so that a broadcasting mistake changes the logits.
        let v = [0.02 + 0.01 * i as f32, 0.9, 0.05][i % 3];
        f.tensors.insert(t.clone(), TensorF32 { shape: vec![1], data: vec![v] });
    }
    f.validate().unwrap();
    check_file(&f, &[1, 3], Transport::Mem, PolyProtocol::DealerPowers);
    // w0 per site but w1 per channel: refused with the node's name.
    let c = f.graph.nodes.iter().find(|n| matches!(n.op, Op::X2Act { .. })).unwrap().name.clone();
    let w1 = names[1].clone();
    f.tensors.insert(w1, TensorF32 { shape: vec![3], data: vec![1.0; 3] });
    let e = f.validate().unwrap_err().to_string();
    assert!(e.contains(&c), "{e}");
}
