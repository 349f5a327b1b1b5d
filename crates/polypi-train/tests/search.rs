//! Architecture search on tiny generated fixtures: the supernet trains, the alphas get
//! gradients, a huge lambda chooses the cheap operators everywhere, the derived architecture
//! round-trips through JSON, and a mixed ReLU/X2act + max/avg network retrains, exports and runs
//! privately in the engine (equal to the plaintext twin).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::Module;
use burn::optim::GradientsParams;
use polypi_core::cost::profile::Profile;
use polypi_core::model::compile::compile;
use polypi_core::model::file::ModelFile;
use polypi_core::net::LinkModel;
use polypi_train::data::{self, DatasetKind};
use polypi_train::layers::Ctx;
use polypi_train::nets::{self, NetKind, NetSpec};
use polypi_train::search::{self, Alphas, Arch, Gates, SearchConfig, SiteCosts};
use polypi_train::sweep::{self, Measured, Sweep, SweepPoint};
use polypi_train::{ActKind, PoolKind};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("polypi-search-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fixture(dir: &Path) {
    let sub = dir.join("fashion-mnist");
    std::fs::create_dir_all(&sub).unwrap();
    data::write_idx(&sub, "train", &data::synthetic(128, [1, 28, 28], 1), true).unwrap();
    data::write_idx(&sub, "t10k", &data::synthetic(32, [1, 28, 28], 2), true).unwrap();
}

fn tiny(dir: &Path, lambda: f64) -> SearchConfig {
    SearchConfig {
        net: NetKind::NetM,
        width: 0.5,
        data: DatasetKind::FashionMnist,
        data_dir: dir.to_path_buf(),
        lambda,
        search_epochs: 1,
        batch_size: 16,
        max_steps_per_epoch: Some(3),
        epochs: 0,
        progress: false,
        ..SearchConfig::default()
    }
}

#[test]
fn supernet_step_gives_alpha_gradients_and_expected_latency() {
    let device = burn::tensor::Device::flex().autodiff();
    let spec = NetSpec {
        net: NetKind::NetM,
        act: ActKind::X2act,
        width: 0.5,
        batch_norm: true,
        pool: PoolKind::Avg,
        x2_scale: 1.0,
        kerv_init: None,
        pillar: None,
        x2act_per_site: false,
        pkn_layout: Default::default(),
        in_channels: 1,
        classes: 10,
        stem: None,
        input_size: 0,
    };
    let model = nets::build(&spec, &device).unwrap();
    let alphas = Alphas::zeros((3, 2), &device);
    let costs = Arc::new(SiteCosts::new(Profile::Pasnet, LinkModel::none()));
    let ds = data::synthetic(8, [1, 28, 28], 3);
    let idx: Vec<usize> = (0..8).collect();
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let (x, y) = polypi_train::train::batch_tensors(
        &ds,
        &idx,
        DatasetKind::FashionMnist,
        false,
        &mut rng,
        &device,
    );
    let mut ctx = Ctx::train(None, None);
    ctx.gates = Some(Gates::new(&alphas, costs));
    let logits = model.forward(x, &mut ctx);
    let g = ctx.gates.take().unwrap();
    assert!(!g.overflow);
    // NET-M width 0.5: act1 8x24x24, pool1, act2 8x8x8, pool2, act3 50.
    let names: Vec<&str> = g.sites.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["act1", "pool1", "act2", "pool2", "act3"]);
    let ns: Vec<usize> = g.sites.iter().map(|s| s.n_elements).collect();
    assert_eq!(ns, [4608, 4608, 512, 512, 50]);
    // PASNet table at uniform gates: expected = sum of the candidates' means.
    let want: f64 = g.sites.iter().map(|s| 0.5 * (s.latency[0] + s.latency[1])).sum();
    let e = g.expected.unwrap();
    let ev: f32 = e.clone().into_scalar();
    assert!((ev as f64 - want).abs() <= 1e-4 * want, "{ev} vs {want}");
    assert!((g.sites[0].latency[0] - (13.6 * 4608.0 + 0.4)).abs() < 1e-6);
    let ce = burn::nn::loss::CrossEntropyLossConfig::new().init(&device);
    let loss = ce.forward(logits, y).add(e.mul_scalar(1e-6));
    let grads = GradientsParams::from_grads(loss.backward(), &alphas);
    for p in alphas.act.iter().chain(&alphas.pool) {
        let gr: burn::tensor::Tensor<1> = grads.get(p.id).expect("alpha without gradient");
        let v = gr.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        assert!(v.iter().all(|x| x.is_finite()) && v.iter().any(|x| *x != 0.0), "{v:?}");
        // Softmax over two logits: the gradient components are opposite.
        assert!((v[0] + v[1]).abs() <= 1e-5 * (v[0].abs() + 1e-3), "{v:?}");
    }
    assert!(alphas.num_params() == 10);
}

#[test]
fn huge_lambda_chooses_x2act_and_avgpool_and_json_roundtrips() {
    let d = tmpdir("huge");
    fixture(&d);
    let r = search::search(&tiny(&d, 1e3), None).unwrap();
    assert_eq!(r.arch, Arch::uniform((3, 2), ActKind::X2act, PoolKind::Avg));
    assert_eq!(r.sites.len(), 5);
    assert!((r.predicted_latency - r.predicted_all_x2act).abs() < 1e-9);
    assert!(r.predicted_all_relu > 100.0 * r.predicted_all_x2act);
    for s in &r.sites {
        assert!(s.probs[1] > s.probs[0], "{s:?}");
    }
    let p = d.join("arch.json");
    r.save(&p).unwrap();
    let back = search::DerivedArch::load(&p).unwrap();
    // serde_json's float parsing may differ in the last ulp: compare exactly except floats.
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(1.0);
    assert_eq!((back.arch.clone(), back.net, back.data), (r.arch.clone(), r.net, r.data));
    assert_eq!(
        (back.profile.clone(), back.time_unit.clone()),
        (r.profile.clone(), r.time_unit.clone())
    );
    assert!(close(back.lambda, r.lambda) && close(back.predicted_latency, r.predicted_latency));
    for (a, b) in back.sites.iter().zip(&r.sites) {
        assert_eq!((&a.name, a.n_elements, &a.choice), (&b.name, b.n_elements, &b.choice));
        assert!((0..2).all(|i| close(a.latency[i], b.latency[i]) && close(a.probs[i], b.probs[i])));
    }
    // Lambda 0: runs (the choice is up to the data; not asserted).
    let r0 = search::search(&tiny(&d, 0.0), None).unwrap();
    assert_eq!(r0.arch.acts.len(), 3);
    // Bad inputs give errors.
    assert!(search::search(&tiny(&d, -1.0), None).is_err());
    assert!(search::search(&SearchConfig { profile: "gpu".into(), ..tiny(&d, 1.0) }, None).is_err());
    std::fs::write(&p, "{").unwrap();
    assert!(search::DerivedArch::load(&p).is_err());
}

#[test]
fn mixed_arch_retrains_exports_and_runs_privately() {
    let d = tmpdir("mixed");
    fixture(&d);
    let arch = Arch {
        acts: vec![ActKind::X2act, ActKind::Relu, ActKind::Relu],
        pools: vec![PoolKind::Max, PoolKind::Avg],
    };
    let mut cfg = tiny(&d, 0.0).retrain_config(&arch, Some(d.join("m.safetensors")), None, "test");
    cfg.epochs = 1;
    cfg.batch_size = 16;
    cfg.max_steps_per_epoch = Some(2);
    let report = polypi_train::train(&cfg).unwrap();
    assert!(report.test_accuracy.is_finite());
    let mf = ModelFile::load(d.join("m.safetensors")).unwrap();
    let ops: Vec<String> = mf
        .graph
        .nodes
        .iter()
        .map(|n| format!("{:?}", n.op).split([' ', '{', '(']).next().unwrap_or("").to_string())
        .filter(|s| ["X2Act", "Relu", "MaxPool2d", "AvgPool2d"].contains(&s.as_str()))
        .collect();
    assert_eq!(ops, ["X2Act", "MaxPool2d", "Relu", "AvgPool2d", "Relu"]);
    assert!(mf.card.as_ref().unwrap().name.contains("searched"));
    let plan = compile(&mf).unwrap();
    let (_, test) = polypi_train::train::load_data(&cfg).unwrap();
    let (m, s) = DatasetKind::FashionMnist.normalization();
    use rand::SeedableRng;
    let (x, _) =
        data::make_batch(&test, &[0, 1], &m, &s, false, &mut rand::rngs::StdRng::seed_from_u64(0));
    let plain = polypi_core::engine::plain::run_f32(&plan, &x, 2).unwrap();
    let opts = polypi_core::engine::session::LocalOpts {
        transport: polypi_core::engine::session::Transport::Mem,
        check: true,
    };
    let (_, res) = polypi_core::engine::session::run_local(&plan, &[(x.clone(), 2)], opts).unwrap();
    let scale = plain.iter().fold(1f32, |a, v| a.max(v.abs()));
    for (a, b) in plain.iter().zip(&res[0].logits) {
        assert!((a - b).abs() <= 1e-2 * scale, "private {b} vs plaintext {a}");
    }
    // Wrong number of sites: a clear error.
    let bad = Arch { acts: vec![ActKind::Relu], pools: vec![] };
    let e = polypi_train::train(&tiny(&d, 0.0).retrain_config(&bad, None, None, "")).unwrap_err();
    assert!(e.to_string().contains("sites"), "{e}");
}

#[test]
fn sweep_reports_table_csv_and_plot() {
    let d = tmpdir("sweep");
    let pt = |label: &str, lambda: Option<f64>, acc: f64, ms: f64| SweepPoint {
        label: label.into(),
        lambda,
        arch: Arch::uniform((3, 2), ActKind::X2act, PoolKind::Avg),
        predicted: ms * 10.0,
        test_accuracy: acc,
        model: d.join("m.safetensors"),
        measured: vec![Measured {
            link: "none".into(),
            online_ms: ms,
            online_ms_min: ms,
            offline_ms: 1.0,
            online_bytes: 1000,
            dealer_bytes: 10,
            rounds: 5,
            runs: 5,
        }],
    };
    let sw = Sweep {
        config: SearchConfig::default(),
        time_unit: "PASNet units".into(),
        points: vec![pt("lambda=1e-6", Some(1e-6), 90.0, 3.0), pt("all-ReLU", None, 91.0, 30.0)],
    };
    sweep::write_reports(&sw, &d).unwrap();
    let md = std::fs::read_to_string(d.join("sweep.md")).unwrap();
    assert!(md.contains("| lambda=1e-6 | 1e-6 | x2act,x2act,x2act | avg,avg | 90.00 |"), "{md}");
    assert!(md.contains("online ms (none)"));
    let csv = std::fs::read_to_string(d.join("sweep.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3);
    assert!(std::fs::read_to_string(d.join("pareto.svg")).unwrap().contains("<svg"));
    assert_eq!(sweep::load_sweep(&d).unwrap(), sw);
    // Collecting points that were never written: an error naming the missing file.
    let e = sweep::collect_sweep(&SearchConfig::default(), &[1e-6], false, &d).unwrap_err();
    assert!(format!("{e:#}").contains("lambda-1e-6"), "{e:#}");
}
