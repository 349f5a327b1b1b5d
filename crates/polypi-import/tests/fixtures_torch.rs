//! The committed PyTorch exports (tests/fixtures, written by scripts/export_onnx.py with both of
//! torch's exporters) imported and run, without torch:
//! - polypi's plaintext f32 executor on the imported plan equals torch's logits within
//!   1e-4 x max|logit|, with the same argmax;
//! - private inference (server, client and dealer in this process) equals the fixed-point twin
//!   within 1e-3 (local truncation may move each product by one unit in the last place of the
//!   fixed-point value, 2^-16), with the same argmax;
//! - the saved model file loads back identical (graph, tensors, card) and says it was imported;
//! - the refusal fixture lists every unsupported node in one error.

use std::path::{Path, PathBuf};

use polypi_core::engine::session::{run_local, LocalOpts, Transport};
use polypi_core::engine::{run_f32, run_fixed, EncodedPlan};
use polypi_core::model::compile::compile;
use polypi_core::model::file::ModelFile;
use polypi_core::model::Op;
use polypi_import::{import_onnx, ImportError, ImportOptions};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn npy(path: &Path) -> (Vec<u64>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let arr = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = arr.shape().to_vec();
    (shape, arr.into_vec::<f32>().unwrap())
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Imports `net.<exporter>.onnx` and checks it against torch and privately; returns the ops.
fn check(net: &str, exporter: &str) -> Vec<Op> {
    check_file(net, exporter, &format!("{net}.{exporter}.onnx"))
}

/// [`check`] of the ONNX file `onnx` with the reference `net.input.npy` / `net.logits.npy`.
fn check_file(net: &str, exporter: &str, onnx: &str) -> Vec<Op> {
    let path = fixture(onnx);
    let imported = import_onnx(&path, &ImportOptions::default())
        .unwrap_or_else(|e| panic!("{net} {exporter}: {e}"));
    let file = &imported.model;
    // Save + load round trip (the file carries version, checksum and card).
    let out = std::env::temp_dir()
        .join(format!("polypi-import-{net}-{exporter}-{}.safetensors", std::process::id()));
    file.save(&out).unwrap();
    let back = ModelFile::load(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    assert_eq!(&back, file);
    let card = back.card.as_ref().unwrap();
    assert!(card.recipe.contains("imported") && card.recipe.contains(onnx), "{}", card.recipe);

    let plan = compile(file).unwrap();
    let (shape, x) = npy(&fixture(&format!("{net}.input.npy")));
    assert_eq!(shape[1..].iter().map(|&d| d as usize).collect::<Vec<_>>(), plan.input_shape());
    let (_, torch) = npy(&fixture(&format!("{net}.logits.npy")));
    let f32_out = run_f32(&plan, &x, 1).unwrap();
    let scale = torch.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = max_diff(&f32_out, &torch);
    eprintln!("{net} {exporter}: |f32 - torch| = {d:.3e}, max|logit| = {scale:.3}");
    assert!(d <= 1e-4 * scale, "{net} {exporter}: |polypi f32 - torch| = {d} > 1e-4 * {scale}");
    assert_eq!(argmax(&f32_out), argmax(&torch), "{net} {exporter}");

    let twin = run_fixed(&plan, &EncodedPlan::new(&plan).unwrap(), &x, 1).unwrap();
    let (_, runs) =
        run_local(&plan, &[(x.clone(), 1)], LocalOpts { transport: Transport::Mem, check: false })
            .unwrap();
    let private = &runs[0].logits;
    let e = max_diff(private, &twin);
    eprintln!(
        "{net} {exporter}: |private - twin| = {e:.3e}, |twin - torch| = {:.3e}",
        max_diff(&twin, &torch)
    );
    assert!(e <= 1e-3, "{net} {exporter}: |private - twin| = {e}");
    assert_eq!(argmax(private), argmax(&twin), "{net} {exporter}");
    assert_eq!(
        argmax(private),
        argmax(&torch),
        "{net} {exporter}: private argmax differs from torch"
    );
    file.graph.nodes.iter().map(|n| n.op.clone()).collect()
}

fn count(ops: &[Op], kind: &str) -> usize {
    ops.iter().filter(|o| o.kind() == kind).count()
}

#[test]
fn pasnet_resnet_x2act_sites() {
    for exporter in ["ts17", "dynamo18"] {
        let ops = check("pasnet_resnet", exporter);
        // Five X2act sites -> five activation nodes (scalar sites: Poly; per-channel: X2Act);
        // BatchNorm folded into the convs by the exporter (none left).
        let acts = count(&ops, "Poly") + count(&ops, "X2Act") + count(&ops, "PolyKerv");
        assert_eq!(acts, 5, "{exporter}: {ops:?}");
        assert_eq!(count(&ops, "Conv2d"), 6);
        assert_eq!(count(&ops, "Add"), 2);
        assert_eq!(count(&ops, "GlobalAvgPool"), 1);
        // The site with w1 = 1, b = 0 keeps its linear term.
        assert!(ops.iter().any(|o| matches!(o, Op::Poly { coefficients, .. } if coefficients.len() == 3 && coefficients[1] == 1.0 && coefficients[0] == 0.0)), "{ops:?}");
    }
}

#[test]
fn pillar_vgg_quartic_by_power_caching() {
    for exporter in ["ts17", "dynamo18"] {
        let ops = check("pillar_vgg", exporter);
        let quartics: Vec<&Vec<f32>> = ops
            .iter()
            .filter_map(|o| match o {
                Op::Poly { coefficients, .. } => Some(coefficients),
                _ => None,
            })
            .collect();
        assert_eq!(quartics.len(), 3, "{exporter}: {ops:?}");
        for q in quartics {
            assert_eq!(q.len(), 5);
            assert_eq!(q[3], 0.0, "missing x^3 term stays zero");
            assert!((q[4] + 0.01).abs() < 1e-7 && (q[2] - 0.25).abs() < 1e-7, "{q:?}");
        }
        assert_eq!(count(&ops, "AvgPool2d"), 2);
    }
}

#[test]
fn polykervnets_kervolution_then_batchnorm() {
    for exporter in ["ts17", "dynamo18"] {
        let ops = check("pkn", exporter);
        // (conv + c_p)^2 followed by BatchNorm is one per-channel quadratic per site.
        assert_eq!(count(&ops, "X2Act"), 2, "{exporter}: {ops:?}");
        assert_eq!(count(&ops, "Conv2d"), 2);
    }
}

#[test]
fn mobilenet_depthwise_and_square() {
    for exporter in ["ts13", "ts17", "dynamo18"] {
        let ops = check("mobilenet", exporter);
        assert!(
            ops.iter().any(|o| matches!(o, Op::Conv2d { groups, .. } if *groups > 1)),
            "{ops:?}"
        );
        // torch.square after a conv: x^2 (a kervolution with c = 0, a = 1).
        assert!(
            ops.iter()
                .filter(
                    |o| matches!(o, Op::PolyKerv { c_p, d_p: 2, a_p } if *c_p == 0.0 && *a_p == 1.0)
                )
                .count()
                >= 3,
            "{ops:?}"
        );
        assert_eq!(count(&ops, "Add"), 1);
        assert_eq!(count(&ops, "GlobalAvgPool"), 1);
    }
}

#[test]
fn relu_maxpool_dropout_and_final_softmax() {
    for exporter in ["ts17", "dynamo18"] {
        let ops = check("relu_mix", exporter);
        assert_eq!(count(&ops, "Relu"), 1);
        assert_eq!(count(&ops, "MaxPool2d"), 1);
        assert_eq!(count(&ops, "Flatten"), 1);
        let imp =
            import_onnx(&fixture(&format!("relu_mix.{exporter}.onnx")), &ImportOptions::default())
                .unwrap();
        assert!(imp.notes.iter().any(|n| n.contains("Softmax")), "{:?}", imp.notes);
    }
}

#[test]
fn unsupported_nodes_are_all_listed() {
    for exporter in ["ts17", "dynamo18"] {
        let path = fixture(&format!("refuse_sigmoid.{exporter}.onnx"));
        match import_onnx(&path, &ImportOptions::default()) {
            Err(ImportError::Unsupported { nodes, .. }) => {
                let ops: Vec<&str> = nodes.iter().map(|n| n.op_type.as_str()).collect();
                assert_eq!(ops, ["Sigmoid", "Tanh", "Softmax"], "{exporter}: {nodes:?}");
                assert!(nodes.windows(2).all(|w| w[0].position < w[1].position));
                let msg = ImportError::Unsupported { path: "m".into(), nodes }.to_string();
                assert!(
                    msg.contains("3 node(s)") && msg.contains("Sigmoid") && msg.contains("Tanh"),
                    "{msg}"
                );
            }
            other => panic!("{exporter}: expected the unsupported-node error, got {other:?}"),
        }
    }
}

#[test]
fn missing_external_data_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("polypi-import-ext-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("pkn.dynamo18.onnx");
    std::fs::copy(fixture("pkn.dynamo18.onnx"), &model).unwrap();
    let err = import_onnx(&model, &ImportOptions::default()).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(err, ImportError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("pkn.dynamo18.onnx.data"), "{err}");
}

#[test]
fn options_reach_the_model_file() {
    let opts = ImportOptions {
        name: Some("my net".into()),
        normalize: Some(polypi_core::model::Normalize { mean: vec![0.5; 3], std: vec![0.25; 3] }),
        labels: (0..10).map(|i| format!("class{i}")).collect(),
        frac_bits: 14,
        dataset: Some("CIFAR-10".into()),
        test_accuracy: Some(88.5),
    };
    let imp = import_onnx(&fixture("pkn.ts17.onnx"), &opts).unwrap();
    let g = &imp.model.graph;
    assert_eq!((g.frac_bits, g.labels.len()), (14, 10));
    assert_eq!(g.normalize, opts.normalize);
    let card = imp.model.card.as_ref().unwrap();
    assert_eq!(
        (card.name.as_str(), card.dataset.as_str(), card.test_accuracy),
        ("my net", "CIFAR-10", Some(88.5))
    );
    assert_eq!((imp.source.opset, imp.source.producer.starts_with("pytorch")), (17, true));
    // A label count that does not match the 10 outputs is refused.
    let bad = ImportOptions { labels: vec!["a".into()], ..Default::default() };
    assert!(matches!(import_onnx(&fixture("pkn.ts17.onnx"), &bad), Err(ImportError::Model(_))));
}

#[test]
fn not_onnx_is_a_parse_error() {
    let err = import_onnx(&fixture("pkn.logits.npy"), &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::Parse { .. } | ImportError::Graph { .. }), "{err:?}");
}

#[test]
fn hand_built_mlp_matmul_sub_div_neg_dropout() {
    // [N, 16] input, MatMul + bias Add, (x - 0.5) / 2, Neg, x*x + x: two Linear layers with the
    // affine part folded into the first, one quadratic.
    let ops = check_file("hand_mlp", "onnx.helper", "hand_mlp.onnx");
    let kinds: Vec<&str> = ops.iter().map(|o| o.kind()).collect();
    assert_eq!(kinds, ["Input", "Linear", "Poly", "Linear"], "{ops:?}");
}

#[test]
fn asymmetric_pads_fractional_power_gating_and_what_follows_are_all_listed() {
    match import_onnx(&fixture("refuse_misc.onnx"), &ImportOptions::default()) {
        Err(ImportError::Unsupported { nodes, .. }) => {
            let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
            assert_eq!(names, ["conv_asym", "sqrt_by_pow", "gate", "after_refused"], "{nodes:?}");
            assert!(nodes[0].reason.contains("pads"), "{}", nodes[0].reason);
            assert!(nodes[1].reason.contains("exponent"), "{}", nodes[1].reason);
            assert!(nodes[2].reason.contains("two different"), "{}", nodes[2].reason);
        }
        other => panic!("expected the unsupported-node error, got {other:?}"),
    }
}
