//! End-to-end on the seeds' networks (issue "seed scale"): every architecture of the zoo at
//! reduced width (and the ImageNet networks at 128x128 input) with the activation its seed paper
//! uses — PASNet's X2act on ResNet-18/34/50 and MobileNetV2 (ResNet-18 with both stem pools),
//! PILLAR's degree-4 polynomial on CIFAR ResNet-32 and VGG-16-BN, x^2 on ResNet-110, PolyKerv on
//! PKR-18 / PKV-16 / PKA-8 — run privately (server, client, dealer over in-memory channels,
//! batch 1) and compared with the fixed-point twin on the logits: the same argmax and
//! `max |secure - twin| <= 4e-3 * max(1, max |twin|)`. (SecureML's local truncation is off by at
//! most one unit in the last place, 2^-16, per truncation; through 20 to 110 layers those units
//! are amplified by the layers' gains to at most a few 1e-3 here, while a failed truncation or a
//! wrong protocol result is off by orders of magnitude.) Full-size runs are in
//! `scripts/seed-scale.sh`.

use polypi_core::engine::session::{run_local, LocalOpts, Transport};
use polypi_core::engine::{run_fixed, EncodedPlan};
use polypi_core::model::compile::compile;
use polypi_core::model::zoo::{build_with, Act, Pool, RefNet, ZooOpts};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
}

fn check(net: RefNet, act: Act, pool: Pool) {
    let (width, input_size) = match net {
        RefNet::ResNet18 | RefNet::ResNet34 | RefNet::ResNet50 | RefNet::MobileNetV2 => {
            (0.125, Some(128))
        }
        RefNet::ResNet32 | RefNet::ResNet110 => (0.5, None),
        _ => (0.25, None),
    };
    let opts = ZooOpts { pool, width, seed: 11, input_size, ..ZooOpts::new(act) };
    let plan = compile(&build_with(net, &opts).unwrap()).unwrap();
    let enc = EncodedPlan::new(&plan).unwrap();
    let per: usize = plan.input_shape().iter().product();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x: Vec<f32> =
        (0..per).map(|_| (rng.next_u32() as f32 / u32::MAX as f32) * 3.464 - 1.732).collect();
    let (_, runs) =
        run_local(&plan, &[(x.clone(), 1)], LocalOpts { transport: Transport::Mem, check: false })
            .unwrap();
    let twin = run_fixed(&plan, &enc, &x, 1).unwrap();
    let logits = &runs[0].logits;
    let err = logits.iter().zip(&twin).map(|(a, t)| (a - t).abs()).fold(0.0, f32::max);
    let scale = twin.iter().fold(1f32, |m, v| m.max(v.abs()));
    eprintln!(
        "{net} {act} {pool}: max |secure - twin| = {err} (max |logit| {scale}), {} rounds",
        runs[0].report.rounds
    );
    assert!(err <= 4e-3 * scale, "{net} {act} {pool}: max |secure - twin| = {err}, scale {scale}");
    assert_eq!(argmax(logits), argmax(&twin), "{net} {act} {pool}");
}

#[test]
fn resnet18_x2act_avg_and_max_stem_pool() {
    check(RefNet::ResNet18, Act::X2Act, Pool::Avg);
    check(RefNet::ResNet18, Act::X2Act, Pool::Max);
}

#[test]
fn resnet34_and_resnet50_x2act() {
    check(RefNet::ResNet34, Act::X2Act, Pool::Avg);
    check(RefNet::ResNet50, Act::X2Act, Pool::Avg);
}

#[test]
fn mobilenetv2_x2act() {
    check(RefNet::MobileNetV2, Act::X2Act, Pool::Avg);
}

#[test]
fn cifar_resnets_pillar_and_square() {
    check(RefNet::ResNet32, Act::Pillar, Pool::Avg);
    check(RefNet::ResNet110, Act::Square, Pool::Avg);
}

#[test]
fn vgg16_pillar() {
    check(RefNet::Vgg16, Act::Pillar, Pool::Avg);
}

#[test]
fn polykervnets_pkr18_pkv16_pka8() {
    check(RefNet::Pkr18, Act::Pkn, Pool::Avg);
    check(RefNet::Pkv16, Act::Pkn, Pool::Avg);
    check(RefNet::Pka8, Act::Pkn, Pool::Avg);
}
