//! # polypi-import
//!
//! Imports a network as PyTorch exports it to ONNX (the TorchScript exporter, `dynamo=False`,
//! opsets 13-17, and the dynamo exporter, opset 18, weights possibly in an external
//! `.onnx.data` file beside the model) into a polypi model file (design.md §5,
//! docs/model-format.md). See docs/import.md for the supported ops and the errors.
//!
//! - Parsing: the ONNX protobuf types are generated at build time from the vendored
//!   `proto/onnx.proto` by rust-protobuf's pure-Rust code generator (no `protoc`).
//! - Linear ops (Conv, Gemm, MatMul, pooling, Flatten / Reshape to `[N, -1]`, residual Add)
//!   map 1:1 to polypi's graph IR; BatchNormalization folds into the preceding Conv / Gemm.
//! - **Polynomial activations are recognised whatever their spelling**: each element-wise region
//!   between two linear ops is evaluated symbolically into a polynomial in `x` (shared, or one
//!   row per channel), so `x*x`, `Pow(x, 2)`, `torch.square`, folded constants, power caching
//!   (`x2 = x*x; x4 = x2*x2`) and missing terms all give one PolyKerv (`a*(x + c)^d`,
//!   PolyKervNets), X2Act (per-channel degree <= 2, PASNet) or Poly (PILLAR's degree-4 q(x))
//!   node ([`mod@poly`]).
//! - Anything else (Sigmoid, Tanh, Softmax mid-network, data-dependent shapes, ...) is refused
//!   with one [`ImportError::Unsupported`] listing every such node. A final Softmax /
//!   LogSoftmax at the output is dropped with a note (the argmax is unchanged).
//!
//! polypi-core does not depend on this crate: the engine's dependencies stay light.
#![warn(missing_docs)]

mod convert;
mod error;
mod onnx;
pub mod poly;

#[allow(clippy::all, missing_docs, unused_qualifications)]
mod protos {
    include!(concat!(env!("OUT_DIR"), "/onnx-protos/mod.rs"));
}

use std::path::Path;

use polypi_core::model::file::ModelFile;
use polypi_core::model::{Graph, ModelCard, Node, Normalize, Op};

use convert::{Converter, Dyn, Value};
pub use error::{ImportError, UnsupportedNode};
use poly::Poly;

/// Options of [`import_onnx`].
#[derive(Debug, Clone, PartialEq)]
pub struct ImportOptions {
    /// Model card name (default: the ONNX file's stem).
    pub name: Option<String>,
    /// Input normalisation the client applies to images before sharing (`(x/255 - mean[c]) /
    /// std[c]`, one entry per input channel); `None`: `x/255`. `.npy` inputs are used as given.
    pub normalize: Option<Normalize>,
    /// Class names, one per logit (empty: "0", "1", ...).
    pub labels: Vec<String>,
    /// Fixed-point fractional bits the model is meant to run at (1..=32, default 16).
    pub frac_bits: u32,
    /// Model card: the dataset the network was trained on (default "unknown (imported model)").
    pub dataset: Option<String>,
    /// Model card: plaintext test accuracy in percent, as measured by the user.
    pub test_accuracy: Option<f32>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            name: None,
            normalize: None,
            labels: Vec::new(),
            frac_bits: 16,
            dataset: None,
            test_accuracy: None,
        }
    }
}

/// Where an imported model came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The ONNX file as given.
    pub path: String,
    /// Default-domain opset (`ai.onnx`).
    pub opset: i64,
    /// ONNX IR version of the file.
    pub ir_version: i64,
    /// `producer_name producer_version`, e.g. `pytorch 2.9.0`.
    pub producer: String,
    /// Number of ONNX nodes.
    pub onnx_nodes: usize,
}

/// An imported model (not written yet: save it with [`ModelFile::save`]).
#[derive(Debug, Clone)]
pub struct Imported {
    /// The model: graph, weights, model card. Validated with polypi's loader checks.
    pub model: ModelFile,
    /// Provenance.
    pub source: Source,
    /// One line per activation node written: `name: polynomial -> Op`.
    pub activations: Vec<String>,
    /// What the importer changed that the user should know (a dropped final softmax).
    pub notes: Vec<String>,
}

/// Imports the ONNX model at `path` (external data is read from beside it).
///
/// Errors: [`ImportError::Io`] / [`ImportError::Parse`] (unreadable or malformed file),
/// [`ImportError::Graph`] (inputs / outputs polypi cannot take), [`ImportError::Unsupported`]
/// (listing every unsupported node), [`ImportError::Model`] (the result fails polypi's model
/// validation, e.g. a label count that does not match the outputs, or the size limits).
pub fn import_onnx(path: &Path, opts: &ImportOptions) -> Result<Imported, ImportError> {
    let pname = path.display().to_string();
    let gerr = |reason: String| ImportError::Graph { path: pname.clone(), reason };
    let model = onnx::read_model(path)?;
    let graph = model.graph.as_ref().ok_or_else(|| gerr("the file has no graph".into()))?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(0, |o| o.version);
    let source = Source {
        path: pname.clone(),
        opset,
        ir_version: model.ir_version,
        producer: format!("{} {}", model.producer_name, model.producer_version).trim().to_string(),
        onnx_nodes: graph.node.len(),
    };

    let mut cv = Converter::new(onnx::TensorReader::new(path));
    for t in &graph.initializer {
        let c = cv.reader.tensor(t)?;
        cv.values.insert(t.name.clone(), Value::Const(c));
    }
    // The network input: the one graph input that is not an initializer.
    let inputs: Vec<_> = graph.input.iter().filter(|i| !cv.values.contains_key(&i.name)).collect();
    let [input] = inputs.as_slice() else {
        let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
        return Err(gerr(format!(
            "polypi models take exactly one input, this graph has {names:?}"
        )));
    };
    let input_shape =
        input_shape(input).map_err(|r| gerr(format!("input '{}': {r}", input.name)))?;
    let in_name = cv.unique("input");
    cv.push(in_name.clone(), vec![], Op::Input);
    cv.values.insert(
        input.name.clone(),
        Value::Dyn(Dyn {
            node: in_name,
            shape: input_shape.clone(),
            pshape: input_shape.clone(),
            poly: Poly::identity(),
        }),
    );
    let [output] = graph.output.as_slice() else {
        return Err(gerr(format!(
            "polypi models have exactly one output, this graph has {}",
            graph.output.len()
        )));
    };
    cv.outputs.insert(output.name.clone());
    for n in &graph.node {
        for i in &n.input {
            *cv.uses.entry(i.clone()).or_default() += 1;
        }
    }

    for (pos, n) in graph.node.iter().enumerate() {
        cv.node(pos, n);
    }
    if !cv.unsupported.is_empty() {
        return Err(ImportError::Unsupported { path: pname, nodes: cv.unsupported });
    }
    let out = match cv.values.get(&output.name) {
        Some(Value::Dyn(_)) => cv.dyn_input(&output.name).map_err(gerr)?,
        Some(Value::Const(_)) => {
            return Err(gerr("the output does not depend on the input".into()))
        }
        _ => {
            return Err(gerr(format!("the output '{}' is not computed by the graph", output.name)))
        }
    };
    if cv.nodes.last().map(|l| &l.name) != Some(&out.node) {
        let name = cv.unique("output");
        cv.push(name, vec![out.node.clone()], Op::Identity);
    }
    cv.fold_affine();
    prune(&mut cv.nodes);
    let mut tensors = std::mem::take(&mut cv.tensors);
    let used: std::collections::HashSet<String> = cv.nodes.iter().flat_map(tensor_names).collect();
    tensors.retain(|k, _| used.contains(k));

    let name = opts.name.clone().unwrap_or_else(|| {
        path.file_stem().map_or("imported".into(), |s| s.to_string_lossy().into_owned())
    });
    let mut recipe = format!(
        "imported by `polypi import` from {} (ONNX opset {}, IR version {}, exporter {}; {} \
         ONNX nodes -> {} polypi nodes)",
        path.file_name().map_or(pname.clone(), |f| f.to_string_lossy().into_owned()),
        source.opset,
        source.ir_version,
        if source.producer.is_empty() { "unknown" } else { &source.producer },
        source.onnx_nodes,
        cv.nodes.len()
    );
    for n in &cv.notes {
        recipe += &format!("; {n}");
    }
    let card = ModelCard {
        name,
        dataset: opts.dataset.clone().unwrap_or_else(|| "unknown (imported model)".into()),
        split: String::new(),
        test_accuracy: opts.test_accuracy,
        recipe,
    };
    let model = ModelFile {
        graph: Graph {
            input_shape,
            frac_bits: opts.frac_bits,
            normalize: opts.normalize.clone(),
            nodes: cv.nodes,
            labels: opts.labels.clone(),
        },
        card: Some(card),
        ranges: None,
        tensors,
    };
    model.validate()?;
    Ok(Imported { model, source, activations: cv.activations, notes: cv.notes })
}

/// Per-sample input shape from the graph input's type: float32 `[N, C, H, W]` or `[N, F]` with
/// `N` = 1 or symbolic.
fn input_shape(v: &protos::onnx::ValueInfoProto) -> Result<Vec<usize>, String> {
    use protos::onnx::tensor_shape_proto::dimension::Value as D;
    use protos::onnx::type_proto::Value as T;
    let Some(T::TensorType(t)) = v.type_.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err("not a tensor".into());
    };
    if t.elem_type != onnx::dtype::FLOAT {
        return Err(format!("element type {} is not float32 (1)", t.elem_type));
    }
    let dims: Vec<Option<i64>> = t
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(D::DimValue(v)) => Some(v),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if !(dims.len() == 4 || dims.len() == 2) {
        return Err(format!("rank {} (polypi takes [N, C, H, W] or [N, F])", dims.len()));
    }
    if let Some(b) = dims[0] {
        if b != 1 {
            return Err(format!(
                "exported with batch size {b}: export with batch 1 or a dynamic batch axis"
            ));
        }
    }
    dims[1..]
        .iter()
        .map(|d| match d {
            Some(v) if *v > 0 => Ok(*v as usize),
            _ => Err(format!("dimensions {dims:?}: every dimension but the batch must be a fixed positive size (data-dependent shapes are not supported)")),
        })
        .collect()
}

/// Names of the tensors a node refers to.
fn tensor_names(n: &Node) -> Vec<String> {
    match &n.op {
        Op::Conv2d { weight, bias, .. } | Op::Linear { weight, bias } => {
            std::iter::once(weight.clone()).chain(bias.clone()).collect()
        }
        Op::BatchNorm2d { weight, bias, running_mean, running_var, .. } => {
            vec![weight.clone(), bias.clone(), running_mean.clone(), running_var.clone()]
        }
        Op::X2Act { w0, w1, b, .. } => vec![w0.clone(), w1.clone(), b.clone()],
        Op::Poly { coefficients_tensor: Some(t), .. } => vec![t.clone()],
        _ => vec![],
    }
}

/// Removes nodes whose output reaches neither the last node (the output) nor any node that
/// does (e.g. ops of a shape computation the importer folded).
fn prune(nodes: &mut Vec<Node>) {
    let mut live = std::collections::HashSet::new();
    if let Some(l) = nodes.last() {
        live.insert(l.name.clone());
    }
    for n in nodes.iter().rev() {
        if live.contains(&n.name) {
            live.extend(n.inputs.iter().cloned());
        }
    }
    nodes.retain(|n| live.contains(&n.name) || matches!(n.op, Op::Input));
}
