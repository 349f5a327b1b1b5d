//! Model validation against hostile geometry (security audit): the audit's crafted models that
//! `polypi inspect` accepted and `polypi infer` then panicked on, one test each, and a
//! deterministic fuzz test over crafted geometries and mutated model files. Every case must give
//! an `Err` at load / compile, or load and then run the plaintext forward pass (and, for small
//! plans, the fixed-point twin and the cost counter) without a panic, in bounded time.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use polypi_core::cost;
use polypi_core::engine::plain::{run_f32, run_fixed, EncodedPlan};
use polypi_core::model::compile::{compile, compile_with, CompileOptions};
use polypi_core::model::file::{ModelFile, TensorF32, KEY_GRAPH, KEY_VERSION};
use polypi_core::model::limits::{check_geometry, plan_size, Limits};
use polypi_core::model::zoo::{build, Act, Pool, RefNet};
use polypi_core::model::{Graph, LayerOp, Node, Op, Plan, FORMAT_VERSION};
use polypi_core::Error;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

/// NET-M (1x28x28; conv1 5x5 pad 0, act1, pool1, conv2 5x5, act2, pool2, flatten, fc1, act3,
/// fc2) at width 0.25.
fn netm(act: Act, pool: Pool) -> ModelFile {
    build(RefNet::NetM, act, pool, 0.25, 3).unwrap()
}

fn node_mut<'a>(f: &'a mut ModelFile, name: &str) -> &'a mut Node {
    f.graph.nodes.iter_mut().find(|n| n.name == name).unwrap()
}

fn set_conv(f: &mut ModelFile, name: &str, pad: Option<usize>, st: Option<usize>) {
    if let Op::Conv2d { padding, stride, .. } = &mut node_mut(f, name).op {
        if let Some(p) = pad {
            *padding = p;
        }
        if let Some(s) = st {
            *stride = s;
        }
    } else {
        panic!("{name} is not a conv");
    }
}

/// Loads `f` the way `polypi inspect` and `polypi infer` do (bytes -> `ModelFile::from_bytes`
/// -> `compile`) and returns the error, which must name `node` and mention `needle`.
fn refused(f: &ModelFile, node: &str, needle: &str) -> Error {
    let t = Instant::now();
    let bytes = f.to_bytes().unwrap();
    let e = ModelFile::from_bytes(&bytes, "crafted.safetensors").unwrap_err();
    // compile on the struct refuses it too (the same checks).
    let e2 = compile(f).unwrap_err();
    assert_eq!(e.to_string(), e2.to_string());
    let named = match &e {
        Error::Graph { node, .. }
        | Error::ShapeMismatch { node, .. }
        | Error::TooLarge { node, .. } => node.clone(),
        other => panic!("expected a node error, got {other:?}"),
    };
    assert_eq!(named, node, "{e}");
    let msg = e.to_string();
    assert!(msg.contains(needle), "'{needle}' not in: {msg}");
    assert!(t.elapsed() < Duration::from_secs(5), "refusing took {:?}", t.elapsed());
    e
}

#[test]
fn audit_conv_padding_near_2_pow_32_is_refused() {
    // plain.rs:91 "range start index out of range" (X2Act) and party.rs:355 "chunk size must be
    // non-zero": conv padding 4294967282.
    let mut f = netm(Act::X2Act, Pool::Avg);
    set_conv(&mut f, "conv1", Some(4294967282), None);
    refused(&f, "conv1", "4294967282");
    let mut f = netm(Act::Relu, Pool::Max);
    set_conv(&mut f, "conv2", Some(4294967282), None);
    refused(&f, "conv2", "4294967282");
}

#[test]
fn audit_padding_2_pow_31_with_relu_and_avgpool_kernel_2_pow_32_is_refused() {
    // mpc/ops.rs:170 "range end index 4294967296 out of range".
    let mut f = netm(Act::Relu, Pool::Avg);
    set_conv(&mut f, "conv1", Some(2147483636), None);
    node_mut(&mut f, "pool1").op = Op::AvgPool2d { kernel: 1 << 32, stride: 2, padding: 0 };
    refused(&f, "conv1", "2147483636");
    // The pooling kernel alone.
    let mut f = netm(Act::Relu, Pool::Avg);
    node_mut(&mut f, "pool1").op = Op::AvgPool2d { kernel: 1 << 32, stride: 2, padding: 0 };
    refused(&f, "pool1", "4294967296");
}

#[test]
fn audit_padding_2_pow_31_with_stride_2_is_refused() {
    // alloc "capacity overflow".
    let mut f = netm(Act::X2Act, Pool::Avg);
    set_conv(&mut f, "conv1", Some(2147483636), Some(2));
    refused(&f, "conv1", "2147483636");
}

#[test]
fn audit_padding_16384_is_refused() {
    // SIGABRT: allocation of 8.6 GB.
    let mut f = netm(Act::X2Act, Pool::Avg);
    set_conv(&mut f, "conv1", Some(16384), None);
    refused(&f, "conv1", "16384");
    // Padding up to the kernel size is fine (conv1 gives 34x34; the first error is fc1's
    // width), one more is not.
    let mut f = netm(Act::X2Act, Pool::Avg);
    set_conv(&mut f, "conv1", Some(6), None);
    refused(&f, "conv1", "padding 6");
    let mut f = netm(Act::X2Act, Pool::Avg);
    set_conv(&mut f, "conv1", Some(5), None);
    match compile(&f).unwrap_err() {
        Error::ShapeMismatch { node, .. } => assert_eq!(node, "fc1"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn audit_maxpool_kernel_2_pow_31_is_refused_fast() {
    // CPU spin > 40 s: MaxPool kernel 2^31 (padding up to kernel/2 made it fit the input).
    let mut f = netm(Act::Relu, Pool::Max);
    node_mut(&mut f, "pool1").op =
        Op::MaxPool2d { kernel: 1 << 31, stride: 1 << 31, padding: 1 << 30 };
    refused(&f, "pool1", "2147483648");
    let mut f = netm(Act::Relu, Pool::Max);
    node_mut(&mut f, "pool1").op = Op::MaxPool2d { kernel: 1 << 31, stride: 1, padding: 0 };
    refused(&f, "pool1", "2147483648");
    let mut f = netm(Act::Relu, Pool::Max);
    node_mut(&mut f, "pool1").op = Op::MaxPool2d { kernel: 2, stride: 2, padding: usize::MAX };
    refused(&f, "pool1", &usize::MAX.to_string());
}

/// A model whose single ReLU layer needs far more than 16 GiB of comparison keys at batch 1.
fn huge_relu_model() -> ModelFile {
    let mut tensors = std::collections::BTreeMap::new();
    tensors.insert("c.weight".to_string(), TensorF32::new(vec![4, 1, 1, 1], vec![1.0; 4]).unwrap());
    let nodes = vec![
        Node { name: "input".into(), inputs: vec![], op: Op::Input },
        Node {
            name: "c".into(),
            inputs: vec!["input".into()],
            op: Op::Conv2d {
                weight: "c.weight".into(),
                bias: None,
                stride: 1,
                padding: 0,
                groups: 1,
            },
        },
        Node { name: "r".into(), inputs: vec!["c".into()], op: Op::Relu },
        Node { name: "g".into(), inputs: vec!["r".into()], op: Op::GlobalAvgPool },
    ];
    let graph = Graph {
        input_shape: vec![1, 8192, 8192],
        frac_bits: 16,
        normalize: None,
        nodes,
        labels: vec![],
    };
    ModelFile { graph, card: None, ranges: None, tensors }
}

#[test]
fn plan_memory_over_the_limit_is_refused_naming_the_node() {
    let f = huge_relu_model();
    match refused(&f, "r", "memory") {
        Error::TooLarge { value, limit, .. } => {
            assert_eq!(limit, 16 << 30);
            assert!(value > limit);
        }
        other => panic!("{other:?}"),
    }
    // A tensor over max_elements.
    let mut f = huge_relu_model();
    f.graph.input_shape = vec![1, 1 << 15, 1 << 15];
    refused(&f, "input", "values");
    let mut f = huge_relu_model();
    f.tensors
        .insert("c.weight".to_string(), TensorF32::new(vec![64, 1, 1, 1], vec![1.0; 64]).unwrap());
    f.graph.input_shape = vec![1, 4096, 4096];
    let e = refused(&f, "c", "values per sample");
    assert!(matches!(e, Error::TooLarge { .. }), "{e:?}");
}

#[test]
fn limits_are_configurable() {
    let f = netm(Act::Relu, Pool::Max);
    let size = plan_size(&compile(&f).unwrap()).unwrap();
    assert!(size.memory_bytes > 0 && size.dealer_bytes > 0 && size.work > 0, "{size:?}");
    let tight = Limits { max_memory_bytes: size.memory_bytes - 1, ..Default::default() };
    let opts = CompileOptions { limits: tight, ..Default::default() };
    match compile_with(&f, opts).unwrap_err() {
        Error::TooLarge { node, value, limit, .. } => {
            assert_eq!((value, limit), (size.memory_bytes, size.memory_bytes - 1));
            assert_eq!(node, size.largest_layer);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(f.validate_with(&tight), Err(Error::TooLarge { .. })));
    let loose = Limits { max_memory_bytes: size.memory_bytes, ..Default::default() };
    f.validate_with(&loose).unwrap();
    let few_ops = Limits { max_work: 1000, ..Default::default() };
    assert!(
        matches!(f.validate_with(&few_ops), Err(Error::TooLarge { node, .. }) if node == "conv1")
    );
    let few_values = Limits { max_elements: 100, ..Default::default() };
    assert!(matches!(
        f.validate_with(&few_values),
        Err(Error::Graph { node, .. }) if node == "input"
    ));
}

#[test]
fn reference_networks_and_shipped_models_are_within_the_limits() {
    for (net, act, pool) in [
        (RefNet::NetM, Act::X2Act, Pool::Avg),
        (RefNet::NetC, Act::Relu, Pool::Max),
        (RefNet::NetR18, Act::Relu, Pool::Avg),
        (RefNet::NetR18, Act::Pkn, Pool::Avg),
    ] {
        let f = build(net, act, pool, 1.0, 1).unwrap();
        let plan = compile(&f).unwrap();
        let size = plan_size(&plan).unwrap();
        assert!(size.memory_bytes < 16 << 30, "{net:?} {act:?}: {size:?}");
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let Ok(rd) = std::fs::read_dir(&dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".safetensors") && !name.ends_with(".ckpt.safetensors") {
            let f = ModelFile::load(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
            compile(&f).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

#[test]
fn tensor_shapes_that_overflow_are_errors() {
    assert!(TensorF32::new(vec![1 << 32, 1 << 32], vec![]).is_err());
    assert!(TensorF32::new(vec![usize::MAX, 2], vec![0.0; 2]).is_err());
    let t = TensorF32 { shape: vec![1 << 40, 1 << 40], data: vec![0.0] };
    assert_eq!(t.numel(), usize::MAX);
    let mut f = netm(Act::X2Act, Pool::Avg);
    f.tensors.insert("conv1.weight".into(), t);
    assert!(f.validate().is_err());
    assert!(f.to_bytes().is_err());
}

// ------------------------------------------------------------------------------------------
// Fuzzing.

/// Plans up to this many operations per sample are run through the f32 forward pass.
const RUN_WORK: u64 = 20_000_000;
/// Plans up to this many operations also run the fixed-point twin and the cost counter.
const TWIN_WORK: u64 = 2_000_000;

#[derive(Debug, Default)]
struct Tally {
    cases: usize,
    refused: usize,
    ran: usize,
    twin: usize,
    accepted_not_run: usize,
    panics: Vec<String>,
    slowest: Duration,
}

impl Tally {
    /// Runs one case under `catch_unwind` (`f` loads the model; None: refused) and files it.
    fn case(&mut self, what: &str, f: impl FnOnce() -> Option<ModelFile>) {
        self.cases += 1;
        let t = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| -> Outcome {
            match f() {
                None => Outcome::Refused,
                Some(file) => exercise(&file),
            }
        }));
        let dt = t.elapsed();
        self.slowest = self.slowest.max(dt);
        match r {
            Ok(Outcome::Refused) => self.refused += 1,
            Ok(Outcome::Ran { twin }) => {
                self.ran += 1;
                self.twin += twin as usize;
            }
            Ok(Outcome::TooBigToRun) => self.accepted_not_run += 1,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                self.panics.push(format!("{what}: {msg}"));
            }
        }
        assert!(dt < Duration::from_secs(10), "{what} took {dt:?}");
    }
}

enum Outcome {
    Refused,
    Ran { twin: bool },
    TooBigToRun,
}

/// A loaded model: compile, then run what its size allows. Load and compile must agree.
fn exercise(file: &ModelFile) -> Outcome {
    let plan = match compile(file) {
        Ok(p) => p,
        Err(_) => {
            assert!(file.validate().is_err(), "compile refused what validate accepted");
            return Outcome::Refused;
        }
    };
    let size = plan_size(&plan).expect("plan_size of a compiled plan");
    if size.work > RUN_WORK {
        return Outcome::TooBigToRun;
    }
    let n: usize = plan.input_shape().iter().product();
    let mut r = ChaCha8Rng::seed_from_u64(n as u64);
    let x: Vec<f32> = (0..n).map(|_| (r.next_u32() % 2001) as f32 / 1000.0 - 1.0).collect();
    let y = run_f32(&plan, &x, 1).expect("f32 forward of a compiled plan");
    assert_eq!(y.len(), plan.num_classes());
    if size.work > TWIN_WORK {
        return Outcome::Ran { twin: false };
    }
    // The counter encodes the coefficients: huge ones are a clean RangeExceeded.
    match cost::count(&plan, 1) {
        Ok(_) | Err(Error::RangeExceeded { .. }) => {}
        Err(e) => panic!("cost count of a compiled plan: {e:?}"),
    }
    // Encoding may refuse huge weights or coefficients (RangeExceeded); it must not panic.
    if let Ok(enc) = EncodedPlan::new(&plan) {
        let _ = run_fixed(&plan, &enc, &x, 1);
    }
    Outcome::Ran { twin: true }
}

/// Values that broke the validation before, and small ones.
const NASTY: &[usize] = &[
    0,
    1 << 31,
    (1 << 31) - 1,
    1 << 32,
    (1 << 32) - 14,
    2147483636,
    16384,
    1 << 63,
    usize::MAX,
    usize::MAX / 2 + 1,
    1 << 20,
];

/// True with probability 1/n.
fn one_in(r: &mut ChaCha8Rng, n: u32) -> bool {
    r.next_u32().is_multiple_of(n)
}

fn pick(r: &mut ChaCha8Rng, small_max: u32) -> usize {
    match r.next_u32() % 8 {
        0 | 1 => NASTY[(r.next_u32() as usize) % NASTY.len()],
        _ => (r.next_u32() % (small_max + 1)) as usize,
    }
}

fn tensor(r: &mut ChaCha8Rng, shape: Vec<usize>) -> TensorF32 {
    match shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) {
        Some(n) if n <= 1 << 16 => {
            let data = (0..n).map(|_| (r.next_u32() % 200) as f32 / 100.0 - 1.0).collect();
            TensorF32 { shape, data }
        }
        // Too big to hold: a tensor whose data does not match its shape.
        _ => TensorF32 { shape, data: vec![0.5; 4] },
    }
}

/// A random graph: Input, then 1..6 random layers (conv / pools / activations / BN / add /
/// flatten / linear) with attributes from [`NASTY`] or small values, channels that may not match.
fn crafted(r: &mut ChaCha8Rng) -> ModelFile {
    let mut tensors = std::collections::BTreeMap::new();
    let c0 = 1 + (r.next_u32() % 4) as usize;
    let input_shape = match r.next_u32() % 10 {
        0 => vec![pick(r, 4), pick(r, 40), pick(r, 40)],
        1 => vec![1 + pick(r, 300)],
        _ => vec![c0, 1 + (r.next_u32() % 24) as usize, 1 + (r.next_u32() % 24) as usize],
    };
    let mut nodes = vec![Node { name: "input".into(), inputs: vec![], op: Op::Input }];
    // Track a plausible shape to make most channel counts match.
    let mut shape = input_shape.clone();
    let layers = 1 + r.next_u32() % 6;
    for i in 0..layers {
        let name = format!("n{i}");
        let prev = nodes.last().unwrap().name.clone();
        let c = shape.first().copied().unwrap_or(1).min(64);
        let op = match r.next_u32() % 11 {
            0 | 1 => {
                let k = if one_in(r, 4) { pick(r, 7) } else { 1 + (r.next_u32() % 5) as usize };
                let groups = if one_in(r, 5) { pick(r, 4) } else { 1 };
                let co = if one_in(r, 6) { pick(r, 8) } else { 1 + (r.next_u32() % 8) as usize };
                let ci = match r.next_u32() % 6 {
                    0 => pick(r, 8),
                    1 => c + 1,
                    _ => c / groups.max(1),
                };
                let kw = if one_in(r, 8) { pick(r, 7) } else { k };
                tensors.insert(format!("{name}.w"), tensor(r, vec![co, ci, k, kw]));
                let bias = if one_in(r, 2) {
                    let bl = if one_in(r, 8) { pick(r, 8) } else { co };
                    tensors.insert(format!("{name}.b"), tensor(r, vec![bl]));
                    Some(format!("{name}.b"))
                } else {
                    None
                };
                let padding = if one_in(r, 3) { pick(r, 3) } else { k / 2 };
                let stride = if one_in(r, 4) { pick(r, 3) } else { 1 };
                if shape.len() == 3 && k > 0 && stride > 0 && k < 64 && padding < 64 {
                    let hp = shape[1] + 2 * padding;
                    if hp >= k {
                        let o = (hp - k) / stride + 1;
                        shape = vec![co, o, o];
                    }
                }
                Op::Conv2d { weight: format!("{name}.w"), bias, stride, padding, groups }
            }
            2 => {
                let kernel = pick(r, 4);
                let stride = pick(r, 3);
                let padding = if one_in(r, 2) { 0 } else { pick(r, 2) };
                Op::MaxPool2d { kernel, stride, padding }
            }
            3 => {
                let padding = if one_in(r, 2) { 0 } else { pick(r, 2) };
                Op::AvgPool2d { kernel: pick(r, 4), stride: pick(r, 3), padding }
            }
            4 => Op::Relu,
            5 => {
                for t in ["w0", "w1", "b"] {
                    let len = if one_in(r, 8) { pick(r, 8) } else { c };
                    tensors.insert(format!("{name}.{t}"), tensor(r, vec![len]));
                }
                Op::X2Act {
                    s: 0.5,
                    w0: format!("{name}.w0"),
                    w1: format!("{name}.w1"),
                    b: format!("{name}.b"),
                }
            }
            6 => Op::Poly {
                coefficients: (0..1 + pick(r, 10).min(12)).map(|k| 0.1 * k as f32).collect(),
                coefficients_tensor: None,
            },
            7 => {
                for t in ["g", "b", "m", "v"] {
                    let len = if one_in(r, 8) { pick(r, 8) } else { c };
                    tensors.insert(format!("{name}.{t}"), tensor(r, vec![len]));
                }
                if let Some(v) = tensors.get_mut(&format!("{name}.v")) {
                    v.data.iter_mut().for_each(|x| *x = x.abs() + 0.1);
                }
                Op::BatchNorm2d {
                    weight: format!("{name}.g"),
                    bias: format!("{name}.b"),
                    running_mean: format!("{name}.m"),
                    running_var: format!("{name}.v"),
                    eps: 1e-5,
                }
            }
            8 => {
                let other = nodes[(r.next_u32() as usize) % nodes.len()].name.clone();
                nodes.push(Node { name, inputs: vec![prev, other], op: Op::Add });
                continue;
            }
            9 => {
                if one_in(r, 2) {
                    shape = vec![shape.iter().product::<usize>().min(1 << 20)];
                    Op::Flatten
                } else {
                    shape = vec![c];
                    Op::GlobalAvgPool
                }
            }
            _ => {
                let f_in = if one_in(r, 5) {
                    pick(r, 64)
                } else {
                    shape.iter().product::<usize>().min(1 << 20)
                };
                let out = if one_in(r, 6) { pick(r, 16) } else { 1 + (r.next_u32() % 16) as usize };
                tensors.insert(format!("{name}.w"), tensor(r, vec![out, f_in]));
                shape = vec![out];
                Op::Linear { weight: format!("{name}.w"), bias: None }
            }
        };
        nodes.push(Node { name, inputs: vec![prev], op });
    }
    let graph = Graph { input_shape, frac_bits: 16, normalize: None, nodes, labels: vec![] };
    ModelFile { graph, card: None, ranges: None, tensors }
}

#[test]
fn fuzz_crafted_geometries_never_panic() {
    let t = Instant::now();
    let mut r = ChaCha8Rng::seed_from_u64(0x5eed_0001);
    let mut tally = Tally::default();
    for i in 0..3000 {
        let f = crafted(&mut r);
        // The struct as built (tensors may not match their shapes)...
        tally.case(&format!("geometry #{i}"), || Some(f.clone()));
        // ... and the same model through bytes, as `polypi inspect` / `infer` load it.
        if let Ok(bytes) = f.to_bytes() {
            tally.case(&format!("geometry #{i} (bytes)"), || {
                ModelFile::from_bytes(&bytes, "fuzz").ok()
            });
        }
    }
    eprintln!("crafted geometries: {tally:?}, {:?} in all", t.elapsed());
    assert!(tally.panics.is_empty(), "{} panics: {:#?}", tally.panics.len(), tally.panics);
    assert!(tally.cases >= 1000);
    assert!(tally.ran >= 50 && tally.refused >= 500, "{tally:?}");
}

/// Rebuilds safetensors bytes from `base` with the graph JSON replaced by `graph` and tensor
/// shapes from `shapes` (same element counts).
fn reserialize(base: &[u8], graph: &str, shapes: &HashMap<String, Vec<usize>>) -> Vec<u8> {
    let st = SafeTensors::deserialize(base).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            let shape = shapes.get(&k).cloned().unwrap_or_else(|| v.shape().to_vec());
            let data = v.data();
            (k, safetensors::tensor::TensorView::new(Dtype::F32, shape, data).unwrap())
        })
        .collect();
    let mut md = HashMap::new();
    md.insert(KEY_GRAPH.to_string(), graph.to_string());
    md.insert(KEY_VERSION.to_string(), FORMAT_VERSION.to_string());
    safetensors::serialize(views, Some(md)).unwrap()
}

fn nasty_json(r: &mut ChaCha8Rng) -> Value {
    match r.next_u32() % 9 {
        0 => Value::from(-1),
        1 => Value::from(1.5),
        2 => Value::from("3"),
        3 => Value::Null,
        4 => Value::from(u64::MAX),
        5 => serde_json::from_str("18446744073709551616").unwrap_or(Value::Null),
        _ => Value::from(pick(r, 9) as u64),
    }
}

/// One JSON edit of the graph: an attribute set to a nasty value or removed, an op or input
/// changed, a node duplicated or removed, the input shape or frac bits edited.
fn edit_graph(r: &mut ChaCha8Rng, g: &mut Value, tensor_names: &[String]) {
    let n = g["nodes"].as_array().map_or(0, |a| a.len());
    let i = (r.next_u32() as usize) % n.max(1);
    const ATTRS: &[&str] =
        &["padding", "stride", "kernel", "groups", "eps", "d_p", "c_p", "a_p", "s", "coefficients"];
    const OPS: &[&str] = &[
        "Input",
        "Conv2d",
        "Linear",
        "BatchNorm2d",
        "AvgPool2d",
        "GlobalAvgPool",
        "MaxPool2d",
        "Flatten",
        "Add",
        "Relu",
        "Poly",
        "X2Act",
        "PolyKerv",
        "Identity",
        "Softmax",
    ];
    match r.next_u32() % 10 {
        0..=3 => {
            let a = ATTRS[(r.next_u32() as usize) % ATTRS.len()];
            g["nodes"][i][a] = nasty_json(r);
        }
        4 => {
            let a = ATTRS[(r.next_u32() as usize) % ATTRS.len()];
            if let Some(o) = g["nodes"][i].as_object_mut() {
                o.remove(a);
            }
        }
        5 => g["nodes"][i]["op"] = Value::from(OPS[(r.next_u32() as usize) % OPS.len()]),
        6 => {
            let j = (r.next_u32() as usize) % n.max(1);
            let other = g["nodes"][j]["name"].clone();
            g["nodes"][i]["inputs"] = if one_in(r, 2) {
                Value::Array(vec![other])
            } else {
                Value::Array(vec![other.clone(), other])
            };
        }
        7 => {
            if let Some(a) = g["nodes"].as_array_mut() {
                if one_in(r, 2) {
                    let dup = a[i].clone();
                    a.insert(i, dup);
                } else if !a.is_empty() {
                    a.remove(i);
                }
            }
        }
        8 => {
            let k = (r.next_u32() % 3) as usize;
            g["input_shape"][k] = nasty_json(r);
            if one_in(r, 3) {
                g["frac_bits"] = nasty_json(r);
            }
        }
        _ => {
            // Point a tensor attribute at another tensor.
            let t = &tensor_names[(r.next_u32() as usize) % tensor_names.len()];
            for a in ["weight", "bias", "w0", "w1", "b", "running_var"] {
                if g["nodes"][i].get(a).is_some() {
                    g["nodes"][i][a] = Value::from(t.as_str());
                    break;
                }
            }
        }
    }
}

#[test]
fn fuzz_mutated_model_files_never_panic() {
    let t = Instant::now();
    let mut r = ChaCha8Rng::seed_from_u64(0x5eed_0002);
    let mut tally = Tally::default();
    let bases: Vec<Vec<u8>> =
        [netm(Act::X2Act, Pool::Avg), netm(Act::Relu, Pool::Max), netm(Act::Pkn, Pool::Avg)]
            .iter()
            .map(|f| f.to_bytes().unwrap())
            .collect();
    for i in 0..3000 {
        let base = &bases[i % bases.len()];
        let st = SafeTensors::deserialize(base).unwrap();
        let header_len = u64::from_le_bytes(base[..8].try_into().unwrap()) as usize + 8;
        let bytes = match i % 5 {
            // Bit flips, mostly in the header (the JSON).
            0 | 1 => {
                let mut b = base.clone();
                for _ in 0..1 + r.next_u32() % 8 {
                    let end = if one_in(&mut r, 4) { b.len() } else { header_len };
                    let pos = (r.next_u32() as usize) % end;
                    b[pos] ^= 1 << (r.next_u32() % 8);
                }
                b
            }
            // Truncation (or a few bytes appended).
            2 => {
                let mut b = base.clone();
                if one_in(&mut r, 8) {
                    b.extend_from_slice(&[0, 1, 2, 3]);
                } else {
                    b.truncate((r.next_u32() as usize) % base.len());
                }
                b
            }
            // JSON edits of the graph (and reshaped tensors).
            _ => {
                let (_, meta) = SafeTensors::read_metadata(base).unwrap();
                let mut g: Value =
                    serde_json::from_str(&meta.metadata().as_ref().unwrap()[KEY_GRAPH]).unwrap();
                let names: Vec<String> = st.names().into_iter().map(String::from).collect();
                for _ in 0..1 + r.next_u32() % 3 {
                    edit_graph(&mut r, &mut g, &names);
                }
                let mut shapes = HashMap::new();
                if one_in(&mut r, 4) {
                    let t = &names[(r.next_u32() as usize) % names.len()];
                    let n: usize = st.tensor(t).unwrap().shape().iter().product();
                    let shape = match r.next_u32() % 3 {
                        0 => vec![n],
                        1 => vec![1, n],
                        _ => vec![n, 1, 1, 1],
                    };
                    shapes.insert(t.clone(), shape);
                }
                reserialize(base, &g.to_string(), &shapes)
            }
        };
        tally.case(&format!("mutation #{i}"), || ModelFile::from_bytes(&bytes, "fuzz").ok());
    }
    eprintln!("mutated files: {tally:?}, {:?} in all", t.elapsed());
    assert!(tally.panics.is_empty(), "{} panics: {:#?}", tally.panics.len(), tally.panics);
    assert!(tally.cases >= 1000);
    assert!(tally.ran >= 100 && tally.refused >= 300, "{tally:?}");
}

/// One random numeric edit of a compiled plan: a conv / pool attribute, an output shape entry,
/// an input index or a polynomial degree set to a [`NASTY`] or small value.
fn mutate_plan(r: &mut ChaCha8Rng, plan: &mut Plan) {
    let n = plan.layers.len();
    let l = &mut plan.layers[(r.next_u32() as usize) % n];
    let v = pick(r, 6);
    match r.next_u32() % 4 {
        0 => {
            if !l.out_shape.is_empty() {
                let k = (r.next_u32() as usize) % l.out_shape.len();
                l.out_shape[k] = v;
            }
        }
        1 => {
            if let Some(x) = l.inputs.first_mut() {
                *x = v;
            }
        }
        _ => match &mut l.op {
            LayerOp::Conv2d(c) => {
                let g = &mut c.geom;
                let fields = [&mut g.c_in, &mut g.h, &mut g.w, &mut g.c_out, &mut g.kh, &mut g.kw];
                match r.next_u32() % 9 {
                    k @ 0..=5 => *fields.into_iter().nth(k as usize).unwrap() = v,
                    6 => g.stride = v,
                    7 => g.padding = v,
                    _ => g.groups = v,
                }
            }
            LayerOp::MaxPool2d { kernel, stride, padding } => match r.next_u32() % 3 {
                0 => *kernel = v,
                1 => *stride = v,
                _ => *padding = v,
            },
            LayerOp::AvgPool2d { kernel, stride, padding } => match r.next_u32() % 3 {
                0 => *kernel = v,
                1 => *stride = v,
                _ => *padding = v,
            },
            LayerOp::Linear(c) => {
                if one_in(r, 2) {
                    c.in_features = v
                } else {
                    c.out_features = v
                }
            }
            LayerOp::Poly(p) => p.degree = v,
            _ => {}
        },
    }
}

#[test]
fn audit_padding_in_a_peer_skeleton_is_a_protocol_error() {
    let plan = compile(&netm(Act::X2Act, Pool::Avg)).unwrap();
    plan.public_skeleton().check_skeleton().unwrap();
    for padding in [4294967282usize, 2147483636, 16384, 1 << 63] {
        let mut skel = plan.public_skeleton();
        match &mut skel.layers[1].op {
            LayerOp::Conv2d(c) => c.geom.padding = padding,
            other => panic!("{other:?}"),
        }
        let e = skel.check_skeleton().unwrap_err();
        assert!(matches!(e, Error::Protocol(_)), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("conv1") && msg.contains(&padding.to_string()), "{msg}");
    }
}

#[test]
fn fuzz_mutated_plans_are_refused_or_run() {
    let t = Instant::now();
    let mut r = ChaCha8Rng::seed_from_u64(0x5eed_0003);
    let plans: Vec<Plan> = [
        netm(Act::X2Act, Pool::Avg),
        netm(Act::Relu, Pool::Max),
        build(RefNet::NetC, Act::X2Act, Pool::Max, 0.125, 1).unwrap(),
    ]
    .iter()
    .map(|f| compile(f).unwrap())
    .collect();
    let (mut cases, mut refused, mut ran, mut panics) = (0, 0, 0, Vec::new());
    for i in 0..2000 {
        let mut plan = plans[i % plans.len()].clone();
        for _ in 0..1 + r.next_u32() % 2 {
            mutate_plan(&mut r, &mut plan);
        }
        cases += 1;
        let res = catch_unwind(AssertUnwindSafe(|| {
            // The peer's view: a skeleton without weights.
            let skel_ok = plan.public_skeleton().check_skeleton().is_ok();
            if skel_ok {
                cost::count(&plan.public_skeleton(), 1).expect("count of a checked skeleton");
            }
            let full_ok = check_geometry(&plan, &Limits::default(), true).is_ok();
            // The full check also sees the weights (a skeleton has none), so it may refuse more.
            assert!(skel_ok || !full_ok, "a plan passes, its skeleton does not");
            if full_ok && plan_size(&plan).unwrap().work <= RUN_WORK {
                let n: usize = plan.input_shape().iter().product();
                run_f32(&plan, &vec![0.25; n], 1).expect("f32 forward of a checked plan");
                return true;
            }
            false
        }));
        match res {
            Ok(true) => ran += 1,
            Ok(false) => refused += 1,
            Err(p) => panics.push(format!(
                "plan mutation #{i}: {}",
                p.downcast_ref::<String>().cloned().unwrap_or_default()
            )),
        }
    }
    eprintln!(
        "mutated plans: {cases} cases, {refused} refused, {ran} ran, {} panics, {:?}",
        panics.len(),
        t.elapsed()
    );
    assert!(panics.is_empty(), "{panics:#?}");
    assert!(ran >= 50 && refused >= 500, "ran {ran}, refused {refused}");
}
