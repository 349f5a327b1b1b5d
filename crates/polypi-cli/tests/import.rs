//! `polypi import` end to end on the committed PyTorch exports (crates/polypi-import/tests/
//! fixtures): import, then `.npy` inputs through infer, query and eval; a refused model writes
//! no file; bad `.npy` files give clear errors.

mod common;
use common::*;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../polypi-import/tests/fixtures").join(name)
}

/// A `.npy` file (format 1.0) with dtype `descr` (e.g. `<f4`), `shape` and raw little-endian
/// `data`.
fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape =
        if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    std::fs::write(path, out).unwrap();
}

/// The torch reference logits of a fixture (float32 `[1, 10]` .npy).
fn torch_logits(net: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixture(&format!("{net}.logits.npy"))).unwrap();
    npyz::NpyFile::new(&bytes[..]).unwrap().into_vec::<f32>().unwrap()
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
}

fn logits(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[test]
fn import_then_infer_query_eval_with_npy_inputs() {
    let d = tmp("import");
    let out = d.join("pasnet.safetensors");
    let labels = d.join("labels.txt");
    std::fs::write(&labels, (0..10).map(|i| format!("class{i}\n")).collect::<String>()).unwrap();
    let onnx = fixture("pasnet_resnet.dynamo18.onnx");
    let o = run(&[
        "import",
        "--onnx",
        onnx.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
        "--mean",
        "0.5,0.5,0.5",
        "--std",
        "0.25,0.25,0.25",
        "--name",
        "pasnet fixture",
        "--dataset",
        "random fixture",
        "--test-accuracy",
        "12.5",
    ]);
    assert!(o.status.success(), "import failed: {}", text(&o.stderr));
    assert!(text(&o.stdout).contains("activation"), "{}", text(&o.stdout));
    let m = out.to_str().unwrap();

    let o = run(&["inspect", "--model", m]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let shown = text(&o.stdout);
    assert!(shown.contains("pasnet fixture") && shown.contains("random fixture"), "{shown}");

    // infer with the .npy input: private and plaintext logits against torch's.
    let x = fixture("pasnet_resnet.input.npy");
    let o = run(&[
        "infer",
        "--model",
        m,
        "--input",
        x.to_str().unwrap(),
        "--json",
        "--transport",
        "mem",
    ]);
    assert!(o.status.success(), "infer failed: {}", text(&o.stderr));
    let v = json(&o);
    let torch = torch_logits("pasnet_resnet");
    let scale = torch.iter().fold(0f32, |a, v| a.max(v.abs()));
    let plain = logits(&v["inputs"][0]["plaintext"]["logits"]);
    let private = logits(&v["inputs"][0]["private"]["logits"]);
    for (p, t) in plain.iter().zip(&torch) {
        assert!((p - t).abs() <= 1e-4 * scale, "plaintext {plain:?} vs torch {torch:?}");
    }
    for (p, t) in private.iter().zip(&torch) {
        assert!((p - t).abs() <= 1e-3, "private {private:?} vs torch {torch:?}");
    }
    let class = argmax(&torch);
    assert_eq!(v["inputs"][0]["private"]["class"].as_u64(), Some(class as u64));
    assert_eq!(v["inputs"][0]["private"]["label"].as_str(), Some(format!("class{class}").as_str()));

    // query: the same .npy against a deployed server and dealer.
    let (_dealer, _server, daddr, saddr) = deploy(m);
    let o = query(&saddr, &daddr, &["--input", x.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "query failed: {}", text(&o.stderr));
    assert_eq!(json(&o)["results"][0]["class"].as_u64(), Some(class as u64));

    // eval --dataset npy: inputs.npy [2, 3, 16, 16] and labels.npy (int64).
    let xs = std::fs::read(&x).unwrap();
    let one = npyz::NpyFile::new(&xs[..]).unwrap().into_vec::<f32>().unwrap();
    let two: Vec<u8> = one.iter().chain(&one).flat_map(|v| v.to_le_bytes()).collect();
    let set = d.join("set");
    std::fs::create_dir_all(&set).unwrap();
    write_npy(&set.join("inputs.npy"), "<f4", &[2, 3, 16, 16], &two);
    let labs: Vec<u8> =
        [class as i64, (class as i64 + 1) % 10].iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(&set.join("labels.npy"), "<i8", &[2], &labs);
    let o = run(&[
        "eval",
        "--model",
        m,
        "--data",
        set.to_str().unwrap(),
        "--dataset",
        "npy",
        "--private",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "eval failed: {}", text(&o.stderr));
    let v = json(&o);
    assert_eq!(v["plaintext_accuracy"].as_f64(), Some(0.5), "{v}");

    // calibrate on the same .npy set: the model file then carries ranges.
    let o = run(&[
        "calibrate",
        "--model",
        m,
        "--data",
        set.to_str().unwrap(),
        "--dataset",
        "npy",
        "--split",
        "test",
    ]);
    assert!(o.status.success(), "calibrate failed: {}", text(&o.stderr));
    let o = run(&["infer", "--model", m, "--input", x.to_str().unwrap(), "--transport", "mem"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!text(&o.stderr).contains("no calibrated ranges"), "{}", text(&o.stderr));
}

#[test]
fn refused_model_lists_every_unsupported_node_and_writes_nothing() {
    let d = tmp("import-refuse");
    let out = d.join("refused.safetensors");
    for exporter in ["ts17", "dynamo18"] {
        let onnx = fixture(&format!("refuse_sigmoid.{exporter}.onnx"));
        let o = run(&["import", "--onnx", onnx.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        assert_fails(&o, 1, "3 node(s) cannot be imported");
        let err = text(&o.stderr);
        for op in ["(Sigmoid)", "(Tanh)", "(Softmax)", "nothing written", "docs/import.md"] {
            assert!(err.contains(op), "{op} missing in: {err}");
        }
        assert!(!out.exists(), "a refused import wrote {}", out.display());
    }
}

#[test]
fn bad_npy_inputs_give_clear_errors() {
    let d = tmp("import-npy");
    let out = d.join("pkn.safetensors");
    let onnx = fixture("pkn.ts17.onnx");
    let o = run(&["import", "--onnx", onnx.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let m = out.to_str().unwrap();
    // float64 values.
    let f64s = d.join("f64.npy");
    write_npy(&f64s, "<f8", &[1, 3, 16, 16], &vec![0u8; 8 * 768]);
    assert_fails(&run(&["infer", "--model", m, "--input", f64s.to_str().unwrap()]), 1, "float32");
    // Wrong shape.
    let wrong = d.join("wrong.npy");
    write_npy(&wrong, "<f4", &[1, 3, 8, 8], &vec![0u8; 4 * 192]);
    assert_fails(
        &run(&["infer", "--model", m, "--input", wrong.to_str().unwrap()]),
        1,
        "has shape [1, 3, 8, 8]",
    );
    // Without the batch dimension it is accepted.
    let nobatch = d.join("nobatch.npy");
    write_npy(&nobatch, "<f4", &[3, 16, 16], &vec![0u8; 4 * 768]);
    let o =
        run(&["infer", "--model", m, "--input", nobatch.to_str().unwrap(), "--transport", "mem"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // Not a .npy file at all.
    let junk = d.join("junk.npy");
    std::fs::write(&junk, b"not numpy").unwrap();
    assert_fails(
        &run(&["infer", "--model", m, "--input", junk.to_str().unwrap()]),
        1,
        "not a valid .npy file",
    );
}
