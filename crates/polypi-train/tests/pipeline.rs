//! End-to-end tests on tiny generated fixtures: loaders, a few training steps, export, and the
//! exported file's f32 logits (polypi-core's plaintext executor) against burn's.

use std::path::{Path, PathBuf};

use polypi_core::model::compile::compile;
use polypi_core::model::file::ModelFile;
use polypi_train::data::{self, Dataset, DatasetKind};
use polypi_train::nets::NetKind;
use polypi_train::train::{self, TrainConfig};
use polypi_train::ActKind;

/// Training runs draw from the device's global RNG (seeded per run): tests that compare runs or
/// rely on a seed's result take this lock so that parallel tests do not interleave their draws.
static TRAIN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn train_lock() -> std::sync::MutexGuard<'static, ()> {
    TRAIN_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("polypi-train-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes a synthetic IDX dataset (train 200, test 100) in `<dir>/fashion-mnist/`.
fn idx_fixture(dir: &Path, gz: bool) {
    let sub = dir.join("fashion-mnist");
    std::fs::create_dir_all(&sub).unwrap();
    data::write_idx(&sub, "train", &data::synthetic(200, [1, 28, 28], 1), gz).unwrap();
    data::write_idx(&sub, "t10k", &data::synthetic(100, [1, 28, 28], 2), gz).unwrap();
}

fn cifar_fixture(dir: &Path) {
    for (name, n, seed) in [("train_subset_4660.bin", 120, 3), ("test_batch_first932.bin", 60, 4)] {
        let ds = data::synthetic(n, [3, 32, 32], seed);
        let mut raw = Vec::new();
        for i in 0..ds.len() {
            raw.push(ds.labels[i] as u8);
            raw.extend_from_slice(ds.image(i));
        }
        std::fs::write(dir.join(name), raw).unwrap();
    }
}

/// An ImageNet-layout folder: 3 classes of PNG and JPEG images of assorted sizes, train and val.
fn folder_fixture(dir: &Path) {
    for (split, per) in [("train", 6u32), ("val", 3)] {
        for (k, class) in ["ant", "bee", "cow"].iter().enumerate() {
            let sub = dir.join(split).join(class);
            std::fs::create_dir_all(&sub).unwrap();
            for i in 0..per {
                let (w, h) = (20 + 3 * i, 24 + 2 * k as u32);
                let img = image::RgbImage::from_fn(w, h, |x, y| {
                    let v = ((x * 7 + y * 3 + i * 11) % 50) as u8;
                    let mut p = [v, v, v];
                    p[k] = 150 + v;
                    image::Rgb(p)
                });
                let ext = if i % 2 == 0 { "png" } else { "jpg" };
                img.save(sub.join(format!("{i}.{ext}"))).unwrap();
            }
        }
    }
}

#[test]
fn idx_roundtrip_plain_and_gz() {
    for gz in [false, true] {
        let d = tmpdir(&format!("idx{gz}"));
        idx_fixture(&d, gz);
        let (tr, te) = data::load(DatasetKind::FashionMnist, &d).unwrap();
        let want = data::synthetic(200, [1, 28, 28], 1);
        assert_eq!(tr.images, want.images);
        assert_eq!(tr.labels, want.labels);
        assert_eq!(te.len(), 100);
        assert_eq!(tr.shape, [1, 28, 28]);
    }
}

/// The fetch folder (`data/fetched`, holding `cifar10-subset/` as `scripts/fetch-data.sh cifar10`
/// writes it) is accepted as well as the subset's own folder.
#[test]
fn cifar_loader_reads_the_fetch_folder() {
    let d = tmpdir("cifar-fetched");
    let sub = d.join("cifar10-subset");
    std::fs::create_dir_all(&sub).unwrap();
    cifar_fixture(&sub);
    let (tr, te) = data::load(DatasetKind::Cifar10, &d).unwrap();
    assert_eq!((tr.len(), te.len()), (120, 60));
    let e = data::load(DatasetKind::Cifar10, &d.join("nothing")).err().unwrap().to_string();
    assert!(e.contains("scripts/fetch-data.sh cifar10"), "{e}");
}

#[test]
fn cifar_loader_reads_records() {
    let d = tmpdir("cifar");
    cifar_fixture(&d);
    let (tr, te) = data::load(DatasetKind::Cifar10, &d).unwrap();
    assert_eq!((tr.len(), te.len()), (120, 60));
    assert_eq!(tr.image(5), data::synthetic(120, [3, 32, 32], 3).image(5));
}

#[test]
fn missing_and_bad_files_give_clear_errors() {
    let d = tmpdir("missing");
    let e = data::load(DatasetKind::Mnist, &d).unwrap_err().to_string();
    assert!(e.contains("scripts/fetch-data.sh"), "{e}");
    std::fs::write(d.join("train_subset_4660.bin"), [1u8, 2, 3]).unwrap();
    std::fs::write(d.join("test_batch_first932.bin"), [1u8, 2, 3]).unwrap();
    let e = data::load(DatasetKind::Cifar10, &d).unwrap_err().to_string();
    assert!(e.contains("multiple"), "{e}");
    let sub = d.join("mnist");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(sub.join("train-images-idx3-ubyte"), [0u8; 20]).unwrap();
    std::fs::write(sub.join("train-labels-idx1-ubyte"), [0u8; 20]).unwrap();
    let e = data::load(DatasetKind::Mnist, &d).unwrap_err().to_string();
    assert!(e.contains("IDX"), "{e}");
}

#[test]
fn augmentation_keeps_shape_and_normalises() {
    use rand::SeedableRng;
    let ds: Dataset = data::synthetic(4, [3, 32, 32], 9);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let (m, s) = DatasetKind::Cifar10.normalization();
    let (plain, lab) = data::make_batch(&ds, &[0, 1], &m, &s, false, &mut rng);
    assert_eq!(plain.len(), 2 * 3 * 32 * 32);
    assert_eq!(lab, vec![0, 1]);
    let v = (ds.image(0)[0] as f32 / 255.0 - m[0]) / s[0];
    assert!((plain[0] - v).abs() < 1e-6);
    let (aug, _) = data::make_batch(&ds, &[0, 1], &m, &s, true, &mut rng);
    assert_eq!(aug.len(), plain.len());
}

#[test]
fn schedule_and_penalty_warmup() {
    let cfg = TrainConfig { epochs: 20, warmup_epochs: 5, lr: 0.1, ..TrainConfig::default() };
    assert!(cfg.lr_at(0.0) < 0.01);
    assert!((cfg.lr_at(5.0) - 0.1).abs() < 1e-9);
    assert!(cfg.lr_at(19.99) < 1e-3);
    let poly = TrainConfig { act: ActKind::Poly, ..TrainConfig::default() };
    let (p0, ce0) = poly.penalty_at(0);
    assert_eq!(ce0, 0.0);
    assert!((p0.unwrap().gamma - 4.0).abs() < 1e-9);
    let (p9, ce9) = poly.penalty_at(9);
    assert_eq!(ce9, 1.0);
    assert!((p9.unwrap().coef - 5e-5).abs() < 1e-12);
    assert!(TrainConfig::default().penalty_at(0).0.is_none());
}

/// PILLAR's penalty is `coef * sum |x/r|^gamma` over every element of the site (PILLAR-ESPN
/// `get_penalty`), not the mean; and `kerv_init` sets PolyKerv's `(c_p, a_p)`.
#[test]
fn penalty_is_a_sum_and_kerv_init_is_applied() {
    use burn::tensor::{Device, Tensor, TensorData};
    use polypi_train::layers::{Activation, Ctx, Penalty, PILLAR_DEG4};
    let dev = Device::flex();
    // 2 * 3 * 2 * 2 = 24 elements, all equal to 2: per site 0.5 * 24 * (2/4)^2 = 3.
    let x = Tensor::<4>::from_data(TensorData::new(vec![2.0f32; 24], [2, 3, 2, 2]), &dev);
    let pen = Penalty { coef: 0.5, gamma: 2.0, range: 4.0 };
    let mut ctx = Ctx::train(Some(5.0), Some(pen));
    let act = Activation::new(ActKind::Poly, 3, 1.0, None, &PILLAR_DEG4, &dev);
    let _ = act.forward(x.clone(), &mut ctx);
    let p: f32 = ctx.penalty_mean().unwrap().into_scalar();
    assert!((p - 3.0).abs() < 1e-5, "penalty {p}");
    // (c, 1/(2c)) = (4, 0.125): 0.125 * (2 + 4)^2 = 4.5 at x = 2.
    let k = Activation::new(ActKind::Rpkn, 3, 1.0, Some((4.0, 0.125)), &[], &dev);
    let y: Vec<f32> = k.forward(x, &mut Ctx::eval(None)).into_data().try_to_vec().unwrap();
    assert!(y.iter().all(|v| (v - 4.5).abs() < 1e-5), "{:?}", &y[..3]);
}

/// Trains a few steps, exports, reloads the file, and compares polypi-core's f32 executor with burn.
fn train_export_check(
    net: NetKind,
    act: ActKind,
    kind: DatasetKind,
    width: f32,
    extra: impl Fn(&mut TrainConfig),
) -> ModelFile {
    let _g = train_lock();
    let d = tmpdir(&format!("{}-{}-{}", net.short(), act.name(), kind.display_name()));
    let data_dir = if kind == DatasetKind::Cifar10 {
        cifar_fixture(&d);
        d.clone()
    } else if kind == DatasetKind::ImageFolder {
        folder_fixture(&d);
        d.clone()
    } else {
        idx_fixture(&d, true);
        d.clone()
    };
    let out = d.join("m.safetensors");
    let mut cfg = TrainConfig {
        net,
        act,
        width,
        data: kind,
        data_dir,
        epochs: 2,
        batch_size: 16,
        lr: 0.02,
        warmup_epochs: 0,
        max_steps_per_epoch: Some(3),
        out: Some(out.clone()),
        progress: false,
        ..TrainConfig::default()
    };
    extra(&mut cfg);
    let report = train::train(&cfg).unwrap();
    assert_eq!(report.epochs.len(), 2);
    assert!(report.metrics_csv.as_ref().unwrap().exists());
    assert!(report.plot.as_ref().unwrap().exists());
    let ckpt = report.checkpoint.clone().unwrap();

    // Reload the burn model from its checkpoint, and the exported file.
    let device = burn::tensor::Device::flex();
    let mut model = train::build_model(&cfg, &device).unwrap();
    train::load_checkpoint(&mut model, &ckpt).unwrap();
    let mf = ModelFile::load(&out).unwrap();
    let card = mf.card.clone().unwrap();
    assert!(card.test_accuracy.is_some());
    let plan = compile(&mf).unwrap();

    let (_, test) = train::load_data(&cfg).unwrap();
    let n = 8.min(test.len());
    let idx: Vec<usize> = (0..n).collect();
    let (m, s) = kind.normalization();
    use rand::SeedableRng;
    let (x, _) =
        data::make_batch(&test, &idx, &m, &s, false, &mut rand::rngs::StdRng::seed_from_u64(0));
    let burn_logits = train::infer(&model, &x, n, cfg.input_shape(), &device);
    let ours = polypi_core::engine::plain::run_f32(&plan, &x, n).unwrap();
    assert_eq!(burn_logits.len(), ours.len());
    let scale = burn_logits.iter().fold(1f32, |a, v| a.max(v.abs()));
    let mut maxerr = 0f32;
    for (a, b) in burn_logits.iter().zip(&ours) {
        maxerr = maxerr.max((a - b).abs());
    }
    assert!(maxerr <= 1e-4 * scale, "max |burn - polypi| = {maxerr} (logit scale {scale})");
    let k = burn_logits.len() / n;
    for i in 0..n {
        let am = |v: &[f32]| {
            v.iter()
                .enumerate()
                .fold((0, f32::MIN), |b, (j, &x)| if x > b.1 { (j, x) } else { b })
                .0
        };
        assert_eq!(
            am(&burn_logits[i * k..(i + 1) * k]),
            am(&ours[i * k..(i + 1) * k]),
            "image {i}"
        );
    }
    mf
}

#[test]
fn netm_x2act_export_matches_burn() {
    train_export_check(NetKind::NetM, ActKind::X2act, DatasetKind::FashionMnist, 0.5, |_| {});
    // PASNet's granularity: one scalar set (w0, w1, b) per site, exported as [1] tensors.
    let mf =
        train_export_check(NetKind::NetM, ActKind::X2act, DatasetKind::FashionMnist, 0.5, |c| {
            c.x2act_per_site = true
        });
    let mut sites = 0;
    for n in &mf.graph.nodes {
        if let polypi_core::model::graph::Op::X2Act { w0, w1, b, .. } = &n.op {
            sites += 1;
            for t in [w0, w1, b] {
                assert_eq!(mf.tensors[t].shape, vec![1], "{t}");
            }
        }
    }
    assert_eq!(sites, 3);
}

#[test]
fn netm_poly_and_pkn_export_match_burn() {
    train_export_check(NetKind::NetM, ActKind::Poly, DatasetKind::FashionMnist, 0.5, |c| {
        c.penalty_warmup = false
    });
    // A polynomial of PILLAR's fitter (degree 6, P = 14) is trained and exported with its own
    // coefficients at every poly site.
    let pillar = polypi_train::nets::PillarSpec::fit(6, 14, 5.0).unwrap();
    let mf =
        train_export_check(NetKind::NetM, ActKind::Poly, DatasetKind::FashionMnist, 0.5, |c| {
            c.penalty_warmup = false;
            c.pillar = Some(pillar);
        });
    let polys: Vec<Vec<f32>> = mf
        .graph
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            polypi_core::model::graph::Op::Poly { coefficients, .. } => Some(coefficients.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(polys.len(), 3, "NET-M has three activation sites");
    for c in &polys {
        assert_eq!(c.as_slice(), pillar.coefficients());
        assert_eq!(c.len(), 7);
    }
    train_export_check(NetKind::NetM, ActKind::Rpkn, DatasetKind::FashionMnist, 0.5, |c| {
        c.optimizer = polypi_train::OptimKind::Adam
    });
    // ReactPKN: a*x^2 + b*x + c, one trainable scalar set per site, exported as X2Act [1].
    let mf =
        train_export_check(NetKind::NetM, ActKind::ReactPkn, DatasetKind::FashionMnist, 0.5, |c| {
            c.optimizer = polypi_train::OptimKind::Adam
        });
    let x2: Vec<_> = mf
        .graph
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            polypi_core::model::graph::Op::X2Act { w0, .. } => Some(mf.tensors[w0].shape.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(x2, vec![vec![1]; 3]);
    train_export_check(NetKind::NetM, ActKind::Relu, DatasetKind::FashionMnist, 0.5, |c| {
        c.pool = polypi_train::PoolKind::Max
    });
    // A searched architecture: mixed ReLU / X2act sites, max and avg pooling (`arch` overrides
    // `act`; Relu here only names the fixture folder, which this test reuses sequentially).
    train_export_check(NetKind::NetM, ActKind::Relu, DatasetKind::FashionMnist, 0.5, |c| {
        use polypi_train::PoolKind::{Avg, Max};
        c.arch = Some(polypi_train::search::Arch {
            acts: vec![ActKind::Relu, ActKind::X2act, ActKind::Relu],
            pools: vec![Avg, Max],
        })
    });
}

/// An image folder (ImageNet layout, PNG and JPEG) trains NET-R18 at 16x16: the exported model
/// takes `[3, 16, 16]`, names the class folders, uses the ImageNet normalisation, and matches burn.
#[test]
fn image_folder_trains_and_exports() {
    let mf = train_export_check(
        NetKind::NetR18,
        ActKind::X2act,
        DatasetKind::ImageFolder,
        0.0625,
        |c| {
            c.image_size = 16;
            c.max_steps_per_epoch = Some(1);
        },
    );
    assert_eq!(mf.graph.input_shape, vec![3, 16, 16]);
    assert_eq!(mf.graph.labels, vec!["ant", "bee", "cow"]);
    let norm = mf.graph.normalize.clone().unwrap();
    assert_eq!(norm.mean, polypi_train::folder::IMAGENET_MEAN.to_vec());
    // NET-C takes 32x32 only: a clear error, not a shape panic.
    let d = tmpdir("folder-netc");
    folder_fixture(&d);
    let cfg = TrainConfig {
        net: NetKind::NetC,
        data: DatasetKind::ImageFolder,
        data_dir: d,
        image_size: 16,
        ..TrainConfig::default()
    };
    let e = train::load_data(&cfg).unwrap_err().to_string();
    assert!(e.contains("--image-size 32"), "{e}");
}

#[test]
fn netc_and_r18_export_match_burn() {
    train_export_check(NetKind::NetC, ActKind::X2act, DatasetKind::Cifar10, 0.125, |_| {});
    train_export_check(NetKind::NetR18, ActKind::X2act, DatasetKind::Cifar10, 0.0625, |c| {
        c.max_steps_per_epoch = Some(1)
    });
    // PolyKervNets on the ResNet (issue #7): R-PKN sites, Adam, near-identity init.
    train_export_check(NetKind::NetR18, ActKind::Rpkn, DatasetKind::Cifar10, 0.0625, |c| {
        c.max_steps_per_epoch = Some(1);
        c.optimizer = polypi_train::OptimKind::Adam;
        c.kerv_init = Some((4.0, 0.125));
    });
    // PolyKervNets as published (PKR-18): kervolutions at the stem, each block's conv1 and the
    // three projection shortcuts (1 + 8 + 3), each followed by its BN; nothing after an add.
    let mf =
        train_export_check(NetKind::NetR18, ActKind::Rpkn, DatasetKind::Cifar10, 0.0625, |c| {
            c.max_steps_per_epoch = Some(1);
            c.optimizer = polypi_train::OptimKind::Adam;
            c.pkn_layout = polypi_train::nets::PknLayout::Published;
        });
    use polypi_core::model::graph::Op;
    let nodes = &mf.graph.nodes;
    let kerv = nodes.iter().filter(|n| matches!(n.op, Op::PolyKerv { .. })).count();
    assert_eq!(kerv, 12);
    for n in nodes {
        let consumers: Vec<&Op> =
            nodes.iter().filter(|m| m.inputs.contains(&n.name)).map(|m| &m.op).collect();
        if matches!(n.op, Op::PolyKerv { .. }) {
            assert!(matches!(consumers[..], [Op::BatchNorm2d { .. }]), "{}: {consumers:?}", n.name);
        }
        if matches!(n.op, Op::Add) {
            assert!(consumers.iter().all(|o| !matches!(o, Op::PolyKerv { .. })), "{}", n.name);
        }
    }
}

#[test]
fn kd_from_relu_teacher_runs() {
    let _g = train_lock();
    let d = tmpdir("kd");
    idx_fixture(&d, false);
    let base = TrainConfig {
        act: ActKind::Relu,
        width: 0.5,
        data_dir: d.clone(),
        epochs: 1,
        batch_size: 16,
        max_steps_per_epoch: Some(2),
        out: Some(d.join("teacher.safetensors")),
        progress: false,
        ..TrainConfig::default()
    };
    let r = train::train(&base).unwrap();
    let student = TrainConfig {
        act: ActKind::X2act,
        teacher: r.checkpoint.clone(),
        out: Some(d.join("student.safetensors")),
        ..base
    };
    let r2 = train::train(&student).unwrap();
    assert!(r2.epochs[0].train_loss.is_finite());
}

/// Largest |a - b| over the tensors of `a` whose name satisfies `pick` (same names in `b`).
fn max_diff(a: &ModelFile, b: &ModelFile, pick: impl Fn(&str) -> bool) -> f32 {
    assert_eq!(a.tensors.keys().collect::<Vec<_>>(), b.tensors.keys().collect::<Vec<_>>());
    let mut m = 0f32;
    for (name, ta) in a.tensors.iter().filter(|(n, _)| pick(n)) {
        for (x, y) in ta.data.iter().zip(&b.tensors[name].data) {
            m = m.max((x - y).abs());
        }
    }
    m
}

/// `--no-decay-act` applies weight decay itself (outside burn's optimizer). On a ReLU net, which
/// has no activation coefficients, it must give the same weights as burn's own decay: their
/// difference must be under 1 % of what decay itself changes (the run without decay), a bound
/// that tolerates f32 summation-order noise (the flex backend's parallel reductions may associate
/// differently from run to run) but not a missing or doubled decay term. On an X2act net the
/// X2act `w1` (init 1.0, so decay moves it by ~lr * wd per step) must end up measurably different.
/// Weights are compared as the exported polypi model files hold them (`ModelFile::tensors`).
#[test]
fn no_decay_act_matches_burn_decay_where_there_is_nothing_to_exempt() {
    let _g = train_lock();
    let d = tmpdir("nodecay");
    idx_fixture(&d, false);
    let run = |act: ActKind, weight_decay: f64, no_decay_act: bool, name: &str| {
        let cfg = TrainConfig {
            act,
            width: 0.5,
            data_dir: d.clone(),
            epochs: 1,
            batch_size: 16,
            max_steps_per_epoch: Some(3),
            weight_decay,
            no_decay_act,
            out: Some(d.join(format!("{name}.safetensors"))),
            progress: false,
            ..TrainConfig::default()
        };
        let r = train::train(&cfg).unwrap();
        ModelFile::load(r.model_file.unwrap()).unwrap()
    };
    let burn = run(ActKind::Relu, 0.5, false, "relu-burn");
    let own = run(ActKind::Relu, 0.5, true, "relu-own");
    let none = run(ActKind::Relu, 0.0, false, "relu-none");
    assert!(!burn.tensors.is_empty());
    let (relu, decay) = (max_diff(&burn, &own, |_| true), max_diff(&burn, &none, |_| true));
    eprintln!("max |diff| on ReLU weights: own vs burn decay {relu:e}, decay vs none {decay:e}");
    assert!(decay > 1e-4, "decay 0.5 changed the ReLU weights by only {decay}");
    assert!(relu <= 0.01 * decay, "own decay differs from burn's by {relu} (decay effect {decay})");
    let burn = run(ActKind::X2act, 0.05, false, "x2-burn");
    let own = run(ActKind::X2act, 0.05, true, "x2-own");
    let w1: Vec<_> = burn.tensors.keys().filter(|n| n.ends_with(".w1")).collect();
    assert!(w1.len() >= 2, "X2act w1 tensors in {:?}", burn.tensors.keys().collect::<Vec<_>>());
    let x2 = max_diff(&burn, &own, |n| n.ends_with(".w1"));
    assert!(x2 > 1e-3, "X2act w1 moved by only {x2} without decay");
}

/// The committed Fashion-MNIST model, compiled by polypi-core and run by its f32 executor, keeps
/// its accuracy on the first 1,000 test images (skipped when the data has not been fetched).
#[test]
fn committed_fmnist_model_runs_in_polypi_core() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = root.join("models/netm-x2act-fmnist.safetensors");
    let data_dir = root.join("data/fetched");
    let Ok((_, mut test)) = data::load(DatasetKind::FashionMnist, &data_dir) else {
        eprintln!("skipped: run scripts/fetch-data.sh for this check");
        return;
    };
    test.truncate(1000);
    let plan = compile(&ModelFile::load(&model).unwrap()).unwrap();
    let (m, s) = DatasetKind::FashionMnist.normalization();
    use rand::SeedableRng;
    let idx: Vec<usize> = (0..test.len()).collect();
    let (x, labels) =
        data::make_batch(&test, &idx, &m, &s, false, &mut rand::rngs::StdRng::seed_from_u64(0));
    let logits = polypi_core::engine::plain::run_f32(&plan, &x, test.len()).unwrap();
    let correct = logits
        .chunks(10)
        .zip(&labels)
        .filter(|(l, &y)| {
            let am = l
                .iter()
                .enumerate()
                .fold((0, f32::MIN), |b, (j, &v)| if v > b.1 { (j, v) } else { b })
                .0;
            am as i64 == y
        })
        .count();
    assert!(correct >= 880, "{correct}/1000 correct");
}
