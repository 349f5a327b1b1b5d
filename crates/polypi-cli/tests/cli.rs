//! End-to-end tests of the `polypi` binary: in-process inference, the three roles as separate
//! processes on loopback, a server killed mid-query, and bad inputs. Only 127.0.0.1; every wait
//! is bounded; children are killed when a test ends (also on failure).

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn infer_zoo_model_private_equals_plaintext() {
    let d = tmp("infer");
    let m = zoo(&d, "NET-M", "x2");
    let img = gray_png(&d, "img.png", 28, 28);
    let (m, img) = (m.to_str().unwrap(), img.to_str().unwrap());

    let o = run(&["infer", "--model", m, "--input", img]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "infer failed: {out}\n{}", text(&o.stderr));
    assert!(out.contains("private") && out.contains("agree"), "{out}");
    assert!(out.contains("total: online"), "no layer table: {out}");

    let o = run(&["infer", "--model", m, "--input", img, img, "--json", "--check"]);
    assert!(o.status.success(), "infer --json failed: {}", text(&o.stderr));
    let v = json(&o);
    assert_eq!(v["all_agree"], true);
    let inputs = v["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 2);
    for r in inputs {
        assert_eq!(r["private"]["class"], r["plaintext"]["class"]);
        assert!(r["report"]["online_bytes"].as_u64().unwrap() > 0);
        assert!(r["report"]["max_abs_error"].as_f64().unwrap() < 0.05);
    }
}

#[test]
fn infer_without_input_uses_the_samples_of_the_models_input_shape() {
    let d = tmp("samples");
    let m = zoo(&d, "NET-C", "x2");
    let o = run(&["infer", "--model", m.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "infer failed: {}", text(&o.stderr));
    let v = json(&o);
    let inputs = v["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 8);
    assert!(inputs[0]["file"].as_str().unwrap().contains("samples/cifar/0-3.png"), "{v}");
    assert!(!text(&o.stderr).contains("warning"), "{}", text(&o.stderr));
}

#[test]
fn serve_dealer_query_three_processes() {
    let d = tmp("three");
    let m = zoo(&d, "NET-M", "square");
    let img = gray_png(&d, "img.png", 28, 28);
    let (m, img) = (m.to_str().unwrap(), img.to_str().unwrap());

    let plain = json(&run(&["infer", "--model", m, "--input", img, "--json"]));
    let want = plain["inputs"][0]["plaintext"]["class"].as_u64().unwrap();

    let (_dealer, server, daddr, saddr) = deploy(m);
    for round in 0..2 {
        let o = query(&saddr, &daddr, &["--input", img, "--json"]);
        assert!(o.status.success(), "query {round} failed: {}", text(&o.stderr));
        let v = json(&o);
        assert_eq!(v["results"][0]["class"].as_u64().unwrap(), want, "query {round}");
        let line = server.line(Duration::from_secs(30));
        assert!(line.contains("1 inference(s)"), "server: {line}");
    }
    // Text output of the client, too.
    let o = query(&saddr, &daddr, &["--input", img]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("online"), "{}", text(&o.stdout));
}

/// Serves `model` with `--preprocessing two-party`, queries it once with `img` as a second
/// process without a dealer, and checks the class and the logits against the dealer mode's
/// `polypi infer`; returns the server and its address.
fn query_without_dealer(m: &str, img: &str) -> (Daemon, String) {
    let plain = json(&run(&["infer", "--model", m, "--input", img, "--json"]));
    let want = plain["inputs"][0]["plaintext"]["class"].as_u64().unwrap();
    let server = Daemon::spawn(&[
        "serve",
        "--model",
        m,
        "--listen",
        "127.0.0.1:0",
        "--preprocessing",
        "two-party",
        "--timeout-s",
        "30",
        "--tls-dir",
        certs(),
    ]);
    let saddr = server.addr();
    let o = run(&[
        "query",
        "--tls-dir",
        certs(),
        "--connect",
        &saddr,
        "--preprocessing",
        "two-party",
        "--input",
        img,
        "--json",
    ]);
    assert!(o.status.success(), "query failed: {}", text(&o.stderr));
    let v = json(&o);
    assert_eq!(v["results"][0]["class"].as_u64().unwrap(), want, "{v}");
    assert!(v["results"][0]["offline_bytes_received"].as_u64().unwrap() > 0, "{v}");
    // The dealer-free logits equal the dealer mode's private logits up to the local
    // truncations' last bits (both are the fixed-point twin within a few units of 2^-16).
    let logits = |x: &serde_json::Value| -> Vec<f64> {
        x.as_array().unwrap().iter().map(|y| y.as_f64().unwrap()).collect()
    };
    let (two, dealer) =
        (logits(&v["results"][0]["logits"]), logits(&plain["inputs"][0]["private"]["logits"]));
    assert_eq!(two.len(), 10);
    for (a, b) in two.iter().zip(&dealer) {
        assert!((a - b).abs() < 1e-3, "two-party {two:?} vs dealer {dealer:?}");
    }
    (server, saddr)
}

/// NET-C X2act served and queried as two processes over TLS with no dealer, on a CIFAR sample.
#[test]
fn serve_query_net_c_two_processes_without_a_dealer() {
    let d = tmp("twoparty-netc");
    let m = zoo(&d, "NET-C", "x2");
    let img = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/samples/cifar/0-3.png");
    let (server, _) = query_without_dealer(m.to_str().unwrap(), img);
    let line = server.line(Duration::from_secs(60));
    assert!(line.contains("1 inference(s)"), "server: {line}");
}

/// Dealer-free deployment (docs/two-party.md): `serve` and `query` with `--preprocessing
/// two-party`, two processes over TLS and no dealer; the private class equals the plaintext
/// class and the logits the dealer mode's, the client reports the preprocessing traffic, and
/// mismatched flags are refused.
#[test]
fn serve_query_two_processes_without_a_dealer() {
    let d = tmp("twoparty");
    let m = zoo(&d, "NET-M", "x2");
    let img = gray_png(&d, "img.png", 28, 28);
    let (m, img) = (m.to_str().unwrap(), img.to_str().unwrap());
    let (server, saddr) = query_without_dealer(m, img);
    let line = server.line(Duration::from_secs(30));
    assert!(line.contains("1 inference(s)"), "server: {line}");
    // A dealer-mode client against the two-party server: refused with the reason.
    let o = query(&saddr, "127.0.0.1:1", &["--input", img, "--connect-retry-s", "0.5"]);
    assert!(!o.status.success());
    // --dealer with two-party is a usage error.
    let o = run(&[
        "query",
        "--tls-dir",
        certs(),
        "--connect",
        &saddr,
        "--dealer",
        "127.0.0.1:1",
        "--preprocessing",
        "two-party",
        "--input",
        img,
    ]);
    assert_fails(&o, 1, "without a dealer");
}

#[test]
fn server_killed_mid_query_client_fails_fast() {
    let d = tmp("kill");
    let m = zoo(&d, "NET-C", "square");
    let img = rgb_png(&d, "img.png", 32, 32);
    let (m, img) = (m.to_str().unwrap(), img.to_str().unwrap());

    let (dealer, mut server, daddr, saddr) = deploy(m);
    let mut args = vec![
        "query",
        "--tls-dir",
        certs(),
        "--connect",
        &saddr,
        "--dealer",
        &daddr,
        "--timeout-s",
        "30",
        "--input",
    ];
    args.extend(std::iter::repeat_n(img, 400));
    let mut q = Command::new(BIN)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first finished inference, then kill the server.
    let mut qout = BufReader::new(q.stdout.take().unwrap());
    let mut seen = 0;
    let mut line = String::new();
    while seen < 2 {
        line.clear();
        if qout.read_line(&mut line).unwrap() == 0 {
            let _ = q.kill();
            panic!("query ended before the server was killed");
        }
        seen += 1; // "connected ..." then the first inference
    }
    server.child.kill().unwrap();
    let _ = server.child.wait();
    let t0 = Instant::now();
    // Drain the rest of stdout so the child never blocks on it.
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut qout, &mut s);
    });
    q.stdout = None;
    let o = wait_output(q, Duration::from_secs(20));
    let err = text(&o.stderr);
    assert!(!o.status.success(), "query succeeded after the server was killed");
    assert!(t0.elapsed() < Duration::from_secs(10), "client took {:?} to notice", t0.elapsed());
    assert!(err.contains("disconnected"), "unclear message: {err}");
    assert!(err.contains("peer"), "unclear message: {err}");
    assert!(!err.contains("panicked"), "{err}");
    drop(dealer);
}

#[test]
fn bad_inputs_give_clear_errors() {
    let d = tmp("bad");
    let m = zoo(&d, "NET-M", "x2");
    let ms = m.to_str().unwrap();
    let img = gray_png(&d, "img.png", 28, 28);
    let imgs = img.to_str().unwrap();

    // Missing model file.
    let missing = d.join("nope.safetensors");
    let o = run(&["infer", "--model", missing.to_str().unwrap(), "--input", imgs]);
    assert_fails(&o, 1, "not found");

    // Wrong image size.
    let big = gray_png(&d, "big.png", 32, 32);
    let o = run(&["infer", "--model", ms, "--input", big.to_str().unwrap()]);
    assert_fails(&o, 1, "expects 28x28");

    // Missing image.
    let o = run(&["infer", "--model", ms, "--input", d.join("none.png").to_str().unwrap()]);
    assert_fails(&o, 1, "cannot read image");

    // Garbage model file.
    let garbage = d.join("garbage.safetensors");
    std::fs::write(
        &garbage,
        (0..4096u32).map(|i| (i.wrapping_mul(2654435761u32) >> 24) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    let o = run(&["infer", "--model", garbage.to_str().unwrap(), "--input", imgs]);
    assert_fails(&o, 1, "cannot load model");
    assert!(text(&o.stderr).contains("hint:"), "{}", text(&o.stderr));
    let o = run(&["inspect", "--model", garbage.to_str().unwrap()]);
    assert_fails(&o, 1, "cannot load model");

    // A training checkpoint shipped next to a model is named as such, with the model to use.
    let ckpt =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/netm-relu-fmnist.ckpt.safetensors");
    let o = run(&["infer", "--model", ckpt]);
    assert_fails(&o, 1, "is a training checkpoint");
    assert!(text(&o.stderr).contains("netm-relu-fmnist.safetensors"), "{}", text(&o.stderr));

    // Port in use.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let o = run(&[
        "serve",
        "--insecure-plaintext",
        "--model",
        ms,
        "--listen",
        &addr,
        "--dealer",
        "127.0.0.1:9",
    ]);
    assert_fails(&o, 1, "already in use");
    let o = run(&["dealer", "--insecure-plaintext", "--listen", &addr]);
    assert_fails(&o, 1, "already in use");
    drop(held);

    // Nobody listening: the client gives up after its retry window.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let faddr = free.local_addr().unwrap().to_string();
    drop(free);
    let o = query(&faddr, &faddr, &["--input", imgs, "--connect-retry-s", "0.5"]);
    assert_fails(&o, 1, "could not connect to");

    // A corrupt image fails before query connects (nobody listens at the addresses, and the
    // error is about the image, not the connection).
    let corrupt = d.join("corrupt.png");
    std::fs::write(&corrupt, &std::fs::read(&img).unwrap()[..40]).unwrap();
    let o = query(
        &faddr,
        &faddr,
        &["--input", imgs, corrupt.to_str().unwrap(), "--connect-retry-s", "5"],
    );
    assert_fails(&o, 1, "cannot read image");
    assert!(!text(&o.stderr).contains("connect"), "{}", text(&o.stderr));

    // A colour image into a grayscale model is converted, with a warning.
    let rgb = rgb_png(&d, "rgb.png", 28, 28);
    let o = run(&["infer", "--model", ms, "--input", rgb.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("converted to grayscale"), "{}", text(&o.stderr));
    let o = run(&["infer", "--model", ms, "--input", imgs, "--json"]);
    assert!(!text(&o.stderr).contains("warning"), "{}", text(&o.stderr));

    // A model file with a flipped weight byte is refused at load (tensor checksum).
    let mut bytes = std::fs::read(&m).unwrap();
    let n = bytes.len();
    bytes[n - 7] ^= 0x10;
    let flipped = d.join("flipped.safetensors");
    std::fs::write(&flipped, bytes).unwrap();
    let o = run(&["infer", "--model", flipped.to_str().unwrap(), "--input", imgs]);
    assert_fails(&o, 1, "tensor checksum mismatch");

    // Usage errors exit with 2.
    let o = run(&["zoo", "--net", "NET-X", "--act", "x2", "--out", "x.safetensors"]);
    assert_fails(&o, 2, "NET-M");
    let o = run(&["infer", "--transport", "carrier-pigeon"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn crafted_geometry_is_refused_by_inspect_and_infer_alike() {
    use polypi_core::model::{file::ModelFile, Op};
    let d = tmp("crafted");
    let m = zoo(&d, "NET-M", "x2");
    let img = gray_png(&d, "img.png", 28, 28);
    // The audit's triggers: conv padding near 2^32 (infer panicked in plain.rs / party.rs), a
    // max-pool kernel of 2^31 (CPU spin), a pool kernel of 2^32 (mpc/ops.rs).
    let cases: [(&str, Op, &str); 3] = [
        (
            "conv1",
            Op::Conv2d {
                weight: "conv1.weight".into(),
                bias: Some("conv1.bias".into()),
                stride: 1,
                padding: 4294967282,
                groups: 1,
            },
            "4294967282",
        ),
        ("pool1", Op::MaxPool2d { kernel: 1 << 31, stride: 1, padding: 1 << 30 }, "2147483648"),
        ("pool1", Op::AvgPool2d { kernel: 1 << 32, stride: 2, padding: 0 }, "4294967296"),
    ];
    for (i, (node, op, value)) in cases.into_iter().enumerate() {
        let mut f = ModelFile::load(&m).unwrap();
        f.graph.nodes.iter_mut().find(|n| n.name == node).unwrap().op = op;
        let bad = d.join(format!("bad{i}.safetensors"));
        std::fs::write(&bad, f.to_bytes().unwrap()).unwrap();
        let bs = bad.to_str().unwrap();
        let t = Instant::now();
        let inspect = run(&["inspect", "--model", bs]);
        let infer = run(&["infer", "--model", bs, "--input", img.to_str().unwrap()]);
        assert!(t.elapsed() < Duration::from_secs(30), "took {:?}", t.elapsed());
        for o in [&inspect, &infer] {
            assert_fails(o, 1, "cannot load model");
            let err = text(&o.stderr);
            assert!(err.contains(&format!("'{node}'")) && err.contains(value), "{err}");
        }
    }
}

#[test]
fn inspect_and_zoo() {
    let d = tmp("inspect");
    let m = zoo(&d, "NET-M", "pillar");
    let o = run(&["inspect", "--model", m.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v = json(&o);
    assert_eq!(v["input_shape"], serde_json::json!([1, 28, 28]));
    assert!(v["macs"].as_u64().unwrap() > 0);
    // NET-M: 16x24x24 + 16x8x8 + 100 polynomial activations per sample.
    assert_eq!(v["poly_activations"].as_u64().unwrap(), 16 * 24 * 24 + 16 * 8 * 8 + 100);
    let o = run(&["inspect", "--model", m.to_str().unwrap()]);
    assert!(o.status.success());
    assert!(text(&o.stdout).contains("MACs"));
}

/// The seeds' networks: `polypi zoo --describe` prints the architecture as data; a reduced
/// ImageNet ResNet-50 (width 1/16, 64x64, 100 classes) is written, inspected and benchmarked
/// (the bench reports the GEMM bound); a stem option on a network without one is refused.
#[test]
fn zoo_seed_networks_describe_build_bench() {
    let d = tmp("zoo-seed");
    let o = run(&["zoo", "--net", "mobilenetv2", "--act", "x2", "--describe"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v = json(&o);
    assert_eq!(v["name"], "MobileNetV2");
    assert_eq!(v["input_shape"], serde_json::json!([3, 224, 224]));
    assert!(text(&o.stdout).contains("\"depthwise\": true"));
    let m = d.join("r50.safetensors");
    let args = ["--width", "0.0625", "--input-size", "64", "--classes", "100"];
    let mut zoo_args =
        vec!["zoo", "--net", "resnet50", "--act", "x2", "--out", m.to_str().unwrap()];
    zoo_args.extend(args);
    let o = run(&zoo_args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = run(&["inspect", "--model", m.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(json(&o)["input_shape"], serde_json::json!([3, 64, 64]));
    let mut bench_args = vec!["bench", "--net", "resnet50", "--act", "x2", "--runs", "1", "--json"];
    bench_args.extend(args);
    let o = run(&bench_args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let s = &json(&o)[0]["summary"];
    assert!(s["server_macs"].as_u64().unwrap() > 0);
    assert!(s["gemm_bound_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(s["rounds"].as_u64().unwrap(), 104);
    let o = run(&["zoo", "--net", "vgg16", "--act", "x2", "--stem", "cifar", "--out", "x.st"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("fixed stem"), "{}", text(&o.stderr));
}

#[test]
fn eval_on_idx_test_set_private_agrees() {
    let d = tmp("eval");
    let m = zoo(&d, "NET-M", "x2");
    let n = 12u32;
    let data = d.join("fashion-mnist");
    std::fs::create_dir_all(&data).unwrap();
    let mut img = Vec::new();
    for v in [0x803u32, n, 28, 28] {
        img.extend_from_slice(&v.to_be_bytes());
    }
    img.extend((0..n * 28 * 28).map(|i| (i.wrapping_mul(2654435761u32) >> 24) as u8));
    std::fs::write(data.join("t10k-images-idx3-ubyte"), img).unwrap();
    let mut lab = Vec::new();
    for v in [0x801u32, n] {
        lab.extend_from_slice(&v.to_be_bytes());
    }
    lab.extend((0..n).map(|i| (i % 10) as u8));
    std::fs::write(data.join("t10k-labels-idx1-ubyte"), lab).unwrap();

    let o = run(&[
        "eval",
        "--model",
        m.to_str().unwrap(),
        "--data",
        d.to_str().unwrap(),
        "--dataset",
        "fashion-mnist",
        "--private",
        "5",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v = json(&o);
    assert_eq!(v["images"], 12);
    assert_eq!(v["private"]["images"], 5);
    assert_eq!(v["private"]["agreement"].as_f64().unwrap(), 1.0);
    assert!(v["private"]["mean_online_bytes"].as_f64().unwrap() > 0.0);

    // Wrong dataset for the model: clear error.
    let o = run(&[
        "eval",
        "--model",
        m.to_str().unwrap(),
        "--data",
        d.to_str().unwrap(),
        "--dataset",
        "cifar10",
    ]);
    assert_fails(&o, 1, "CIFAR-10");

    // In-memory transport of infer.
    let png = gray_png(&d, "x.png", 28, 28);
    let o = run(&[
        "infer",
        "--model",
        m.to_str().unwrap(),
        "--input",
        png.to_str().unwrap(),
        "--transport",
        "mem",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(json(&o)["transport"], "mem");
}

#[test]
fn server_and_dealer_survive_a_client_killed_mid_query() {
    let d = tmp("clientkill");
    let m = zoo(&d, "NET-C", "square");
    let img = rgb_png(&d, "img.png", 32, 32);
    let (m, img) = (m.to_str().unwrap(), img.to_str().unwrap());

    let (_dealer, server, daddr, saddr) = deploy(m);
    let mut args =
        vec!["query", "--tls-dir", certs(), "--connect", &saddr, "--dealer", &daddr, "--input"];
    args.extend(std::iter::repeat_n(img, 400));
    let mut q = Command::new(BIN)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut qout = BufReader::new(q.stdout.take().unwrap());
    let mut line = String::new();
    for _ in 0..2 {
        line.clear();
        assert!(qout.read_line(&mut line).unwrap() > 0, "query ended early");
    }
    q.kill().unwrap();
    let _ = q.wait();
    let l = server.line(Duration::from_secs(30));
    assert!(l.contains("failed"), "server: {l}");

    // The next client is served normally.
    let o = query(&saddr, &daddr, &["--input", img, "--json"]);
    assert!(o.status.success(), "query after a killed client failed: {}", text(&o.stderr));
    assert_eq!(json(&o)["results"].as_array().unwrap().len(), 1);
}

/// `--poly-protocol` selects the polynomial protocol: the ESPN share powers send `m - 1` masked
/// powers per group (degree 3: 8 + 16 bytes each way per element), dealer powers one opening per
/// group (8 + 8); a bad name is a usage error.
#[test]
fn bench_poly_protocols_differ_in_bytes() {
    let bytes = |proto: &str| {
        let o = run(&[
            "bench",
            "--poly-degree",
            "3",
            "--elements",
            "64",
            "--runs",
            "1",
            "--json",
            "--poly-protocol",
            proto,
        ]);
        assert!(o.status.success(), "bench failed: {}", text(&o.stderr));
        let v = json(&o);
        let layers = v[0]["summary"]["median_report"]["layers"].as_array().unwrap().clone();
        let poly = layers.iter().find(|l| l["kind"] == "Poly").unwrap().clone();
        (poly["bytes_client_to_server"].as_u64().unwrap(), poly["rounds"].as_u64().unwrap())
    };
    assert_eq!(bytes("dealer-powers"), (64 * 16, 1));
    assert_eq!(bytes("share-powers"), (64 * 24, 1));
    let o = run(&["bench", "--poly-degree", "3", "--poly-protocol", "fancy"]);
    assert_fails(&o, 2, "dealer-powers or share-powers");
}

/// `polypi cost --preprocessing two-party` predicts the dealer-free preprocessing bytes
/// exactly: per inference and per session, equal to what `polypi bench` measures.
#[test]
fn cost_predicts_two_party_bytes_bench_measures() {
    let args = ["--net", "NET-M", "--act", "square", "--preprocessing", "two-party", "--json"];
    let o = run(&[&["cost", "--profile", "pasnet"], &args[..]].concat());
    assert!(o.status.success(), "cost failed: {}", text(&o.stderr));
    let c = json(&o);
    let tp = &c["two_party"];
    let layers = tp["layers"].as_array().unwrap();
    let sum: u64 = layers.iter().map(|l| l["bytes"].as_u64().unwrap()).sum();
    assert_eq!(tp["total_bytes"].as_u64().unwrap(), sum);
    let o = run(&[&["bench", "--runs", "1"], &args[..]].concat());
    assert!(o.status.success(), "bench failed: {}", text(&o.stderr));
    let b = &json(&o)[0]["summary"];
    assert_eq!(b["preprocessing_bytes"], tp["total_bytes"]);
    // The session setup: the skeleton one way, the client's public keys the other.
    let setup = tp["setup_bytes"].as_u64().unwrap();
    assert!(b["setup_bytes"].as_u64().unwrap() > setup, "{b} vs {setup}");
}

/// Writes an IDX split `{prefix}-images-idx3-ubyte` / `-labels-` of `n` 28x28 images into `dir`;
/// image 0 is the pattern of `gray_png`, the others pseudo-random bytes.
fn write_idx(dir: &Path, prefix: &str, n: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let mut img = Vec::new();
    for v in [0x803u32, n, 28, 28] {
        img.extend_from_slice(&v.to_be_bytes());
    }
    for y in 0..28u32 {
        for x in 0..28u32 {
            img.push(((x * 7 + y * 13) % 256) as u8);
        }
    }
    img.extend((0..(n - 1) * 28 * 28).map(|i| (i.wrapping_mul(2654435761u32) >> 24) as u8));
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), img).unwrap();
    let mut lab = Vec::new();
    for v in [0x801u32, n] {
        lab.extend_from_slice(&v.to_be_bytes());
    }
    lab.extend((0..n).map(|i| (i % 10) as u8));
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), lab).unwrap();
}

#[test]
fn calibrate_then_range_guard_refuses_overflow_never_answers() {
    let d = tmp("range");
    let m = zoo(&d, "NET-M", "x2");
    let data = d.join("fashion-mnist");
    write_idx(&data, "train", 12);
    write_idx(&data, "t10k", 4);
    let cal = d.join("cal.safetensors");
    let (m_s, cal_s, d_s) = (m.to_str().unwrap(), cal.to_str().unwrap(), d.to_str().unwrap());
    let o = run(&["calibrate", "--model", m_s, "--data", d_s, "--out", cal_s, "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v = json(&o);
    assert_eq!(v["ranges"]["samples"], 12);
    assert!(v["ranges"]["layers"].as_array().unwrap().len() > 5);
    assert!(v["check"]["fail_prob"].as_f64().unwrap() < 1e-2);
    let o = run(&["inspect", "--model", cal_s]);
    assert!(o.status.success() && text(&o.stdout).contains("headroom"), "{}", text(&o.stdout));
    let o = run(&["inspect", "--model", m_s]);
    assert!(text(&o.stdout).contains("no calibrated ranges"), "{}", text(&o.stdout));

    // In range: answered, private == plaintext.
    let png = gray_png(&d, "x.png", 28, 28);
    let png_s = png.to_str().unwrap();
    let o = run(&["infer", "--model", cal_s, "--input", png_s, "--transport", "mem", "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(json(&o)["all_agree"], true);

    // The plan check refuses a model whose failure probability exceeds the threshold.
    let o = run(&["infer", "--model", cal_s, "--input", png_s, "--max-fail-prob", "1e-30"]);
    assert_fails(&o, 3, "plan range check refused");

    // Weights grown 1e6x after calibration: the ring wraps inside the network; the client gets a
    // range error (exit code 3) naming the logit check, never a prediction.
    let mut f = polypi_core::model::file::ModelFile::load(&cal).unwrap();
    f.tensors.get_mut("fc1.weight").unwrap().data.iter_mut().for_each(|w| *w *= 1e6);
    let huge = d.join("huge.safetensors");
    f.save(&huge).unwrap();
    let huge_s = huge.to_str().unwrap();
    let o = run(&["infer", "--model", huge_s, "--input", png_s, "--transport", "mem"]);
    assert_fails(&o, 3, "range guard");
    assert!(text(&o.stderr).contains("logits"), "{}", text(&o.stderr));
    assert!(
        !text(&o.stdout).contains("private"),
        "no prediction may be printed: {}",
        text(&o.stdout)
    );

    // eval: the guard's counts; nothing undetected.
    let eval_private = |model: &str, n: &str, extra: &[&str]| {
        let mut args = vec!["eval", "--model", model, "--data", d_s, "--private", n, "--json"];
        args.extend_from_slice(extra);
        let o = run(&args);
        assert!(o.status.success(), "{}", text(&o.stderr));
        json(&o)["private"].clone()
    };
    let p = eval_private(cal_s, "4", &[]);
    assert_eq!(p["range_guard"], true);
    assert_eq!(p["undetected_garbage"], 0);
    assert_eq!(p["agree_fixed_twin"], 4, "{p}");
    let p = eval_private(huge_s, "2", &[]);
    assert_eq!(p["guard_refused_logits"], 2, "{p}");
    assert_eq!(p["undetected_garbage"], 0);
    // A wrap-around is deterministic: retries rerun it and refuse it again, never accept it.
    let p = eval_private(huge_s, "2", &["--guard-retries", "2"]);
    assert_eq!(p["guard_refused_logits"], 2, "{p}");
    assert_eq!(p["guard_retries"], 4, "{p}");
    assert_eq!(p["recovered_by_retry"], 0, "{p}");
    assert_eq!(p["undetected_garbage"], 0, "{p}");
    // Without the guard the same garbage is counted as undetected, not as a near-tie.
    let p = eval_private(huge_s, "2", &["--range-guard", "off", "--range-check", "off"]);
    assert_eq!(p["guard_refused_logits"], 0, "{p}");
    assert_eq!(p["undetected_garbage"], 2, "{p}");
    assert_eq!(p["near_tie_flips"], 0, "{p}");

    // Deployed roles: the client (query) refuses the garbage with exit code 3, ends the session
    // cleanly, and the server keeps serving.
    let (_dealer, server, daddr, saddr) = deploy(huge_s);
    let o = query(&saddr, &daddr, &["--input", png_s]);
    assert_fails(&o, 3, "range guard");
    let line = server.line(Duration::from_secs(30));
    assert!(line.contains("session 1") && !line.contains("failed"), "server: {line}");
    let o = query(&saddr, &daddr, &["--input", png_s]);
    assert_fails(&o, 3, "logits");
    // With retries the deterministic garbage is rerun on the same session and still refused.
    let o = query(&saddr, &daddr, &["--input", png_s, "--guard-retries", "2"]);
    assert_fails(&o, 3, "logits");
    assert_eq!(text(&o.stderr).matches("retry").count(), 2, "{}", text(&o.stderr));
}

#[test]
fn train_and_search_forward_to_polypi_train() {
    // `polypi search` runs the polypi-train binary next to polypi: either it is there (built by
    // `cargo test --workspace`) and answers `search --help`, or the error says how to build it.
    let next_to = std::path::Path::new(BIN)
        .with_file_name(format!("polypi-train{}", std::env::consts::EXE_SUFFIX));
    for (sub, needle) in [("search", "polypi-train search"), ("train", "polypi-train train")] {
        let o = run(&[sub, "--help"]);
        if next_to.is_file() {
            assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
            assert!(text(&o.stdout).contains(needle), "{}", text(&o.stdout));
        } else {
            assert_fails(&o, 1, "cargo build --release -p polypi-train");
        }
    }
}

/// Audit finding M1: a valid binary PGM (maxval 1, columns in stripes) whose private logits equal
/// the plaintext ones but leave the calibrated logit range x margin (54.9 and 1798 against
/// 2 x 23.63 = 47.26 for the shipped model) is a correct out-of-distribution result: the guard
/// delivers it with a `plausible` violation instead of refusing it, and never retries it (a retry
/// would tell the server that this input gave an unusual result).
#[test]
fn plausible_out_of_range_result_is_delivered_not_refused_nor_retried() {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/netm-x2act-fmnist.safetensors");
    let d = tmp("plausible");
    let stripes = |name: &str, width: usize| {
        let mut b = b"P5\n28 28\n1\n".to_vec();
        b.extend((0..28 * 28).map(|i| ((i % 28 / width) % 2) as u8));
        let p = d.join(name);
        std::fs::write(&p, b).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (v2, v1) = (stripes("v2.pgm", 2), stripes("v1.pgm", 1));
    for (img, at_least) in [(&v2, 50.0), (&v1, 1000.0)] {
        let o = run(&["infer", "--model", model, "--input", img, "--transport", "mem", "--json"]);
        assert!(o.status.success(), "{img}: {}", text(&o.stderr));
        let r = &json(&o)["inputs"][0];
        assert_eq!(r["agree"], true, "{r}");
        let v = &r["range_violation"];
        assert_eq!(v["check"], "logits", "{r}");
        assert_eq!(v["kind"], "plausible", "{r}");
        let (value, bound) = (v["value"].as_f64().unwrap(), v["bound"].as_f64().unwrap());
        assert!(value > at_least && (bound - 47.26).abs() < 0.01, "{v}");
        assert!(value < v["garbage_threshold"].as_f64().unwrap(), "{v}");
        // Private == plaintext to fixed-point precision: the result is correct.
        let (p, q) = (&r["private"]["logits"], &r["plaintext"]["logits"]);
        let err = (0..10)
            .map(|k| (p[k].as_f64().unwrap() - q[k].as_f64().unwrap()).abs())
            .fold(0.0, f64::max);
        assert!(err < 0.5, "{err}: {r}");
    }

    // eval-style counts are covered by the garbage test above; here the deployed roles: with
    // --guard-retries 3 the server and dealer see exactly one inference (no retry).
    let (dealer, _server, daddr, saddr) = deploy(model);
    let o = query(&saddr, &daddr, &["--input", &v2, "--guard-retries", "3", "--json"]);
    let line = dealer.line(Duration::from_secs(30));
    assert!(line.contains("session 1") && line.contains(" 1 inference(s)"), "dealer: {line}");
    assert!(!text(&o.stderr).contains("retry"), "{}", text(&o.stderr));
    assert!(o.status.success(), "a plausible result must be delivered: {}", text(&o.stderr));
    let r = &json(&o)["results"][0];
    assert_eq!(r["range_violation"]["kind"], "plausible", "{r}");
    assert_eq!(r["retries"], 0, "{r}");
}

/// The CIFAR-10 subset committed in `data/cifar10-subset/` (gzip) is read as it is, and as
/// unpacked by `scripts/fetch-data.sh cifar10` when that has run: the committed NET-C X2act model
/// keeps its accuracy on the first 100 test images (56 % on these; 49.8 % on all 932).
#[test]
fn committed_cifar_subset_is_read_from_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = root.join("models/netc-x2act-cifar.safetensors");
    let mut dirs = vec![root.join("data/cifar10-subset")];
    if root.join("data/fetched/cifar10-subset/test_batch_first932.bin").exists() {
        dirs.push(root.join("data/fetched"));
    }
    for data in dirs {
        let o = run(&[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--dataset",
            "cifar10",
            "--limit",
            "100",
            "--json",
        ]);
        assert!(o.status.success(), "{}: {}", data.display(), text(&o.stderr));
        let v = json(&o);
        assert_eq!(v["images"], 100);
        let acc = v["plaintext_accuracy"].as_f64().unwrap();
        assert!((0.50..=0.62).contains(&acc), "{}: accuracy {acc}", data.display());
    }
}
