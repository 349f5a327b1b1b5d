//! PASNet's search on its own search spaces, end to end on real CIFAR-10 images (the first 128
//! training images of `data/cifar10-subset/`, width 0.125, 32x32 inputs):
//! - the site counts of ResNet-18/50 (activation gates, plus the ImageNet stem's pooling gate)
//!   and MobileNetV2 (activation gates only) follow their descriptions;
//! - ResNet-18 with the CIFAR stem: supernet search, derived architecture, fine-tuning from the
//!   supernet's weights, export, private run equal to the fixed-point twin;
//! - fine-tuning really starts from the supernet: before any step, every convolution weight and
//!   every kept X2act coefficient of the derived network equals the supernet's, and the ReLU
//!   sites are ReLUs;
//! - ResNet-18 with the ImageNet stem: the stem's pool is a gated site (`pool1`, one softmax
//!   pair), and a derived MaxPool / AvgPool choice reaches the exported graph and runs privately.
//!
//! Private runs: server, client and dealer over in-memory channels; the error bound is the one of
//! `seed_nets.rs`, `max |secure - twin| <= 4e-3 * max(1, max |twin|)` with the same argmax.

use std::path::PathBuf;

use polypi_core::engine::session::{run_local, LocalOpts, Transport};
use polypi_core::engine::{run_fixed, EncodedPlan};
use polypi_core::model::arch::Stem;
use polypi_core::model::compile::compile;
use polypi_core::model::file::ModelFile;
use polypi_core::model::graph::Op;
use polypi_train::data::{self, DatasetKind};
use polypi_train::layers::ActKind;
use polypi_train::nets::NetKind;
use polypi_train::search::{self, Arch, SearchConfig};
use polypi_train::train::{self, TrainConfig};
use polypi_train::PoolKind;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("polypi-search-seed-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cfg(stem: Stem, lambda: f64) -> SearchConfig {
    SearchConfig {
        net: NetKind::Resnet18,
        stem: Some(stem),
        width: 0.125,
        x2act_per_site: true,
        data: DatasetKind::Cifar10,
        data_dir: root().join("data/cifar10-subset"),
        train_limit: Some(128),
        test_limit: Some(16),
        lambda,
        search_epochs: 1,
        batch_size: 32,
        max_steps_per_epoch: Some(2),
        epochs: 1,
        lr: 0.01,
        progress: false,
        ..SearchConfig::default()
    }
}

fn short(c: &mut TrainConfig) {
    c.batch_size = 32;
    c.max_steps_per_epoch = Some(2);
    c.warmup_epochs = 0;
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
}

/// Runs the model file privately on one real test image and compares with its fixed-point twin.
fn private_equals_twin(model: &std::path::Path, tcfg: &TrainConfig) -> ModelFile {
    let mf = ModelFile::load(model).unwrap();
    let plan = compile(&mf).unwrap();
    let (_, test) = train::load_data(tcfg).unwrap();
    let (m, s) = DatasetKind::Cifar10.normalization();
    use rand::SeedableRng;
    let (x, _) =
        data::make_batch(&test, &[0], &m, &s, false, &mut rand::rngs::StdRng::seed_from_u64(0));
    let (_, runs) =
        run_local(&plan, &[(x.clone(), 1)], LocalOpts { transport: Transport::Mem, check: false })
            .unwrap();
    let twin = run_fixed(&plan, &EncodedPlan::new(&plan).unwrap(), &x, 1).unwrap();
    let secure = &runs[0].logits;
    let err = secure.iter().zip(&twin).map(|(a, t)| (a - t).abs()).fold(0.0, f32::max);
    let scale = twin.iter().fold(1f32, |m, v| m.max(v.abs()));
    assert!(err <= 4e-3 * scale, "max |secure - twin| = {err} ({scale})");
    assert_eq!(argmax(secure), argmax(&twin));
    mf
}

fn floats(t: burn::tensor::Tensor<4>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn pasnet_search_spaces_finetune_export_and_private_run() {
    // Site counts of the search spaces.
    let sc = |n, s| search::site_counts(n, s).unwrap();
    assert_eq!(sc(NetKind::Resnet18, Some(Stem::Imagenet)), (17, 1));
    assert_eq!(sc(NetKind::Resnet18, Some(Stem::Cifar)), (17, 0));
    assert_eq!(sc(NetKind::Resnet50, None), (49, 1));
    let (mb_acts, mb_pools) = sc(NetKind::Mobilenetv2, None);
    assert!(mb_acts >= 30 && mb_pools == 0, "MobileNetV2 sites ({mb_acts}, {mb_pools})");
    assert!(search::site_counts(NetKind::Vgg16, Some(Stem::Cifar)).is_err());
    // The supernets of ResNet-50 (ImageNet stem: pooling gate) and MobileNetV2 (activation gates
    // only) meet every site in forward order; a huge lambda picks X2act / avg everywhere.
    for (net, stem, sites) in [
        (NetKind::Resnet50, Some(Stem::Imagenet), (49, 1)),
        (NetKind::Mobilenetv2, None, (mb_acts, 0)),
    ] {
        let c = SearchConfig {
            net,
            stem,
            x2_scale: 0.1,
            max_steps_per_epoch: Some(1),
            ..cfg(Stem::Imagenet, 1e3)
        };
        let d = search::search(&c, None).unwrap();
        assert_eq!((d.arch.acts.len(), d.arch.pools.len()), sites, "{net:?}");
        assert_eq!(d.sites.len(), sites.0 + sites.1);
        assert_eq!(d.arch, Arch::uniform(sites, ActKind::X2act, PoolKind::Avg), "{net:?}");
    }

    // ResNet-18, CIFAR stem: search, derive, fine-tune from the supernet, export, private run.
    let dir = tmpdir("r18cifar");
    let mut c = cfg(Stem::Cifar, 0.0);
    c.finetune = true;
    let (d, acc, model) = polypi_train::sweep::search_and_retrain(&c, &dir, "test").unwrap();
    assert_eq!((d.net, d.stem), (NetKind::Resnet18, Some(Stem::Cifar)));
    assert_eq!((d.arch.acts.len(), d.arch.pools.len(), d.sites.len()), (17, 0, 17));
    assert!(acc.is_finite());
    let back = search::DerivedArch::load(&dir.join("arch.json")).unwrap();
    assert_eq!((back.arch, back.stem), (d.arch.clone(), d.stem));
    let supernet = dir.join("supernet.ckpt.safetensors");
    assert!(supernet.exists());
    let rc = c.retrain_config(&d.arch, None, Some(supernet.clone()), "");
    let mf = private_equals_twin(&model, &rc);
    assert!(mf.card.as_ref().unwrap().name.contains("searched"));

    // Fine-tuning starts from the supernet: a mixed architecture built with --init-from has the
    // supernet's weights before any step.
    let mixed = Arch {
        acts: (0..17).map(|i| if i % 3 == 0 { ActKind::Relu } else { ActKind::X2act }).collect(),
        pools: vec![],
    };
    let device = burn::tensor::Device::flex();
    let ft = c.retrain_config(&mixed, None, Some(supernet.clone()), "");
    let derived = train::build_model(&ft, &device).unwrap();
    let plain = TrainConfig { arch: None, init_from: None, ..ft.clone() };
    let mut sup = train::build_model(&plain, &device).unwrap();
    train::load_checkpoint(&mut sup, &supernet).unwrap();
    let fresh =
        train::build_model(&TrainConfig { init_from: None, ..ft.clone() }, &device).unwrap();
    let (dl, sl, fl) = (&derived.arch, &sup.arch, &fresh.arch);
    let stem_w =
        |n: &polypi_train::nets::Net| floats(n.arch[0].conv.as_ref().unwrap().weight.val());
    assert_eq!(stem_w(&derived), stem_w(&sup), "stem conv comes from the supernet");
    assert_ne!(stem_w(&fresh), stem_w(&sup), "a fresh init differs from the supernet");
    assert_eq!((dl.len(), fl.len()), (sl.len(), sl.len()));
    // Activation sites in forward order: the stem's, then per block conv1's and the add's.
    let mut kinds = vec![dl[0].act.as_ref().unwrap().act_kind()];
    for l in dl.iter().filter(|l| !l.body.is_empty()) {
        kinds.push(l.body[0].act.as_ref().unwrap().act_kind());
        kinds.push(l.act.as_ref().unwrap().act_kind());
    }
    assert_eq!(kinds, mixed.acts);
    let x2w0 = |l: &polypi_train::archnet::Layer| {
        let a = l.act.as_ref().unwrap().x2.as_ref().unwrap();
        a.w0.val().into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    };
    // Site 1 (block 1's conv1) is X2act: its coefficients are the supernet's.
    assert_eq!(x2w0(&dl[1].body[0]), x2w0(&sl[1].body[0]));
    // Fine-tune one short epoch, export, run privately.
    let mut ft = c.retrain_config(&mixed, Some(dir.join("mixed.safetensors")), Some(supernet), "");
    short(&mut ft);
    train::train(&ft).unwrap();
    private_equals_twin(&dir.join("mixed.safetensors"), &ft);

    // ResNet-18, ImageNet stem (on 32x32 inputs): the stem pool is a gated site.
    let dir = tmpdir("r18imagenet");
    let c = cfg(Stem::Imagenet, 1e3);
    let d = search::search(&c, None).unwrap();
    let pool = d.sites.iter().find(|s| s.name == "pool1").expect("stem pooling site");
    // conv1 (8 channels at width 0.125, 7x7/s2 on 32x32 -> 16x16) feeds the pool.
    assert_eq!(pool.n_elements, 8 * 16 * 16);
    assert!(pool.latency[0] > pool.latency[1], "max pooling costs more than average pooling");
    assert_eq!(d.arch.pools, vec![PoolKind::Avg], "a huge lambda picks the cheap pool");
    assert!(d.arch.acts.iter().all(|a| *a == ActKind::X2act));
    // Both choices reach the export and run privately.
    for (choice, op) in [(PoolKind::Max, "MaxPool2d"), (PoolKind::Avg, "AvgPool2d")] {
        let arch = Arch { acts: d.arch.acts.clone(), pools: vec![choice] };
        let out = dir.join(format!("{op}.safetensors"));
        let mut t = c.retrain_config(&arch, Some(out.clone()), None, "");
        short(&mut t);
        train::train(&t).unwrap();
        let mf = private_equals_twin(&out, &t);
        let stem_pool = mf.graph.nodes.iter().find(|n| n.name == "pool").expect("stem pool node");
        let name = format!("{:?}", stem_pool.op);
        assert!(name.starts_with(op), "{name}");
        assert!(matches!(
            stem_pool.op,
            Op::MaxPool2d { kernel: 3, stride: 2, padding: 1 }
                | Op::AvgPool2d { kernel: 3, stride: 2, padding: 1 }
        ));
    }
}
