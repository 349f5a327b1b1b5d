//! The model file: one `.safetensors` file holding the weights and the graph (design.md §5).
//!
//! Layout:
//! - weights: named `F32` tensors in PyTorch layouts (conv `[c_out, c_in/groups, kh, kw]`, linear
//!   `[out, in]`, per-channel vectors `[C]`, per-channel polynomial coefficients `[C, d+1]`);
//! - safetensors `__metadata__`: [`KEY_GRAPH`] (the [`Graph`] as JSON), [`KEY_VERSION`]
//!   (= [`FORMAT_VERSION`]), optionally [`KEY_CARD`] (the [`ModelCard`] as JSON) and
//!   [`KEY_RANGES`] (calibrated value ranges, [`Ranges`] as JSON, see [`super::range`]) and
//!   [`KEY_CHECKSUM`] (SHA-256 of the tensors, [`tensor_checksum`]; written by every save, checked
//!   by every load when present: files written before it existed still load).
//!
//! [`ModelFile::load`] / [`ModelFile::from_bytes`] parse and validate everything (version, graph,
//! tensor shapes, hyper-parameters, finite weights) and report the first problem with the node's
//! name. Bad bytes never panic: they give [`Error::ModelFile`].
//!
//! [`ModelFile::to_bytes`] writes a deterministic byte stream (metadata keys sorted, tensors sorted
//! by name), so load followed by save reproduces a file byte for byte.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use super::graph::{Graph, ModelCard, Node, Op, FORMAT_VERSION};
use super::limits::{checked_product, out_side, Limits};
use super::range::Ranges;
pub use super::range::KEY_RANGES;
use crate::error::{Error, Result};

/// Metadata key of the graph JSON.
pub const KEY_GRAPH: &str = "polypi.graph";
/// Metadata key of the format version (must equal [`FORMAT_VERSION`]).
pub const KEY_VERSION: &str = "polypi.format_version";
/// Metadata key of the optional model card JSON.
pub const KEY_CARD: &str = "polypi.card";
/// Metadata key of the tensors' checksum: lower-case hex SHA-256 of [`tensor_checksum`]'s
/// canonical stream. Optional (older files have none); when present, a load that computes a
/// different value fails with "corrupt file: tensor checksum mismatch".
pub const KEY_CHECKSUM: &str = "polypi.tensors_sha256";
/// Highest polynomial degree a model may use (`Poly` after trimming trailing zeros, `PolyKerv`'s
/// `d_p`).
pub const MAX_POLY_DEGREE: usize = 8;
/// The op names accepted in the JSON `op` field.
pub const KNOWN_OPS: &[&str] = &[
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
];

/// SHA-256 (lower-case hex) of the tensors in a canonical form independent of the file layout:
/// for each tensor in name order, the name's length (u64 LE), the name (UTF-8), the rank (u64 LE),
/// each dimension (u64 LE), then the values (f32 LE). Stored under [`KEY_CHECKSUM`] by
/// [`ModelFile::to_bytes`] and checked by [`ModelFile::from_bytes_unchecked`].
pub fn tensor_checksum(tensors: &BTreeMap<String, TensorF32>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut buf = Vec::new();
    for (name, t) in tensors {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((t.shape.len() as u64).to_le_bytes());
        for d in &t.shape {
            h.update((*d as u64).to_le_bytes());
        }
        buf.clear();
        buf.extend(t.data.iter().flat_map(|v| v.to_le_bytes()));
        h.update(&buf);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Pseudo node name used in errors about graph-wide attributes (`input_shape`, `frac_bits`, ...).
pub const GRAPH_NODE: &str = "(graph)";

/// A dense `f32` tensor, row-major (C order), as stored in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorF32 {
    /// Shape, e.g. `[c_out, c_in/groups, kh, kw]` for a conv weight.
    pub shape: Vec<usize>,
    /// Values, row-major; `data.len()` equals the product of `shape`.
    pub data: Vec<f32>,
}

impl TensorF32 {
    /// A tensor from a shape and row-major data. Errors with [`Error::InvalidArgument`] when
    /// `data.len()` differs from the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n = checked_product(&shape);
        if n != Some(data.len() as u64) {
            let n = n.map_or("more than 2^64".to_string(), |n| n.to_string());
            return Err(Error::InvalidArgument(format!(
                "tensor of shape {shape:?} needs {n} values, got {}",
                data.len()
            )));
        }
        Ok(Self { shape, data })
    }

    /// Number of elements (product of the shape; `usize::MAX` when the product overflows).
    pub fn numel(&self) -> usize {
        checked_product(&self.shape).and_then(|n| usize::try_from(n).ok()).unwrap_or(usize::MAX)
    }
}

/// A loaded (or to-be-saved) model: graph, optional card and named weight tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFile {
    /// The network.
    pub graph: Graph,
    /// Model card (dataset, accuracy, recipe), if the file has one.
    pub card: Option<ModelCard>,
    /// Calibrated value ranges (`polypi calibrate`), if the file has them.
    pub ranges: Option<Ranges>,
    /// Weight tensors by name (names are referred to by the graph's nodes).
    pub tensors: BTreeMap<String, TensorF32>,
}

impl ModelFile {
    /// Reads and validates a model file. Errors: [`Error::ModelFile`] (unreadable file, bad
    /// safetensors bytes, missing/wrong metadata, non-F32 tensor), [`Error::Graph`] /
    /// [`Error::ShapeMismatch`] (first invalid node, see [`ModelFile::validate`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let bytes = std::fs::read(path)
            .map_err(|e| Error::model_file(&name, format!("cannot read the file: {e}")))?;
        Self::from_bytes(&bytes, &name)
    }

    /// Parses and validates a model file held in memory; `name` (usually the path) is used in
    /// error messages. Same errors as [`ModelFile::load`].
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Self> {
        let file = Self::from_bytes_unchecked(bytes, name)?;
        file.validate()?;
        Ok(file)
    }

    /// Parses a model file without validating the graph against the tensors (for inspection
    /// tools). The safetensors container, metadata keys, version, graph JSON (including unknown
    /// ops) and tensor dtypes are still checked.
    pub fn from_bytes_unchecked(bytes: &[u8], name: &str) -> Result<Self> {
        let bad = |reason: String| Error::model_file(name, reason);
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
        let empty = HashMap::new();
        let kv = meta.metadata().as_ref().unwrap_or(&empty);

        let version = kv.get(KEY_VERSION).ok_or_else(|| {
            bad(format!(
                "no '{KEY_VERSION}' in the safetensors metadata (not a polypi model file?)"
            ))
        })?;
        if version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version '{version}' is not supported (this build reads version \
                 '{FORMAT_VERSION}')"
            )));
        }
        let graph_json = kv
            .get(KEY_GRAPH)
            .ok_or_else(|| bad(format!("no '{KEY_GRAPH}' in the safetensors metadata")))?;
        let graph = parse_graph(graph_json, name)?;
        let card = match kv.get(KEY_CARD) {
            None => None,
            Some(s) => Some(
                serde_json::from_str::<ModelCard>(s)
                    .map_err(|e| bad(format!("'{KEY_CARD}' is not a valid model card: {e}")))?,
            ),
        };

        let ranges = match kv.get(KEY_RANGES) {
            None => None,
            Some(s) => Some(Ranges::from_json(s, name)?),
        };

        let mut tensors = BTreeMap::new();
        let checksum = kv.get(KEY_CHECKSUM);
        for (tname, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(bad(format!(
                    "tensor '{tname}' has dtype {:?}; polypi model files hold F32 tensors only",
                    view.dtype()
                )));
            }
            let raw = view.data();
            let data: Vec<f32> =
                raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            let shape = view.shape().to_vec();
            if checked_product(&shape) != Some(data.len() as u64) {
                return Err(bad(format!("tensor '{tname}': data does not match shape {shape:?}")));
            }
            tensors.insert(tname, TensorF32 { shape, data });
        }
        if let Some(want) = checksum {
            let got = tensor_checksum(&tensors);
            if !got.eq_ignore_ascii_case(want.trim()) {
                return Err(bad(format!(
                    "corrupt file: tensor checksum mismatch (the metadata's '{KEY_CHECKSUM}' is \
                     {want}, the tensors hash to {got}): the weights were changed after the file \
                     was written; restore the file from its source"
                )));
            }
        }
        Ok(ModelFile { graph, card, ranges, tensors })
    }

    /// Serialises to safetensors bytes (deterministic: metadata keys sorted, tensors ordered by
    /// name). Does not validate. Errors with [`Error::InvalidArgument`] when a tensor's data does
    /// not match its shape or a tensor is named `__metadata__`.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let json_err = |e: serde_json::Error| Error::InvalidArgument(format!("JSON: {e}"));
        let mut meta: BTreeMap<&str, String> = BTreeMap::new();
        meta.insert(KEY_GRAPH, serde_json::to_string(&self.graph).map_err(json_err)?);
        meta.insert(KEY_VERSION, FORMAT_VERSION.to_string());
        if let Some(card) = &self.card {
            meta.insert(KEY_CARD, serde_json::to_string(card).map_err(json_err)?);
        }
        if let Some(r) = &self.ranges {
            meta.insert(KEY_RANGES, r.to_json()?);
        }
        meta.insert(KEY_CHECKSUM, tensor_checksum(&self.tensors));
        let q = |s: &str| serde_json::to_string(s).map_err(json_err);

        let mut header = String::from("{\"__metadata__\":{");
        for (i, (k, v)) in meta.iter().enumerate() {
            if i > 0 {
                header.push(',');
            }
            header.push_str(&q(k)?);
            header.push(':');
            header.push_str(&q(v)?);
        }
        header.push('}');
        let mut offset = 0usize;
        for (name, t) in &self.tensors {
            if name == "__metadata__" {
                return Err(Error::InvalidArgument(
                    "a tensor may not be named __metadata__".into(),
                ));
            }
            if t.data.len() != t.numel() {
                return Err(Error::InvalidArgument(format!(
                    "tensor '{name}' has {} values but shape {:?}",
                    t.data.len(),
                    t.shape
                )));
            }
            let end = offset.checked_add(4 * t.data.len()).ok_or_else(|| {
                Error::InvalidArgument("the tensors hold more than 2^64 bytes".into())
            })?;
            let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
            header.push_str(&format!(
                ",{}:{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
                q(name)?,
                shape.join(",")
            ));
            offset = end;
        }
        header.push('}');
        while header.len() % 8 != 0 {
            header.push(' ');
        }
        let mut out = Vec::with_capacity(8 + header.len() + offset);
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        for t in self.tensors.values() {
            for v in &t.data {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Ok(out)
    }

    /// Validates, then writes the file atomically: the bytes go to a temporary file in the same
    /// directory which is then renamed over `path`, so a failed save never destroys an earlier
    /// file. Errors: validation errors, [`Error::ModelFile`] for I/O failures.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.validate()?;
        let bytes = self.to_bytes()?;
        let path = path.as_ref();
        let name = path.display().to_string();
        let file_name = path
            .file_name()
            .ok_or_else(|| Error::model_file(&name, "the path has no file name"))?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let tmp = dir.join(format!(".{}.tmp-{}", file_name.to_string_lossy(), std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::model_file(&name, format!("cannot write the file: {e}"))
        })
    }

    /// Checks the graph against the tensors and reports the first problem (in node order) with the
    /// node's name: first node is the only `Input`, unique names, inputs name earlier nodes, arity
    /// (`Add` 2, `Input` 0, others 1), referenced tensors exist with the right shapes and finite
    /// values, sane hyper-parameters (stride/kernel >= 1, groups divide channels, eps > 0,
    /// polynomial degree <= [`MAX_POLY_DEGREE`], geometry as in [`ModelFile::infer_shapes_with`]),
    /// label count = output size; the compiled plan is within the default [`Limits`]; every layer
    /// of the calibrated ranges names a node. This is the one check every load runs
    /// ([`ModelFile::load`], [`ModelFile::from_bytes`]): `polypi inspect` and `polypi infer`
    /// refuse the same files.
    /// Errors: [`Error::Graph`], [`Error::ShapeMismatch`] or [`Error::TooLarge`].
    pub fn validate(&self) -> Result<()> {
        self.validate_with(&Limits::default())
    }

    /// [`ModelFile::validate`] with explicit size limits. Compiles the plan once
    /// ([`super::compile::compile_with`]) to check its size. Same errors.
    pub fn validate_with(&self, limits: &Limits) -> Result<()> {
        super::compile::compile_with(
            self,
            super::compile::CompileOptions { limits: *limits, ..Default::default() },
        )?;
        if let Some(r) = &self.ranges {
            for l in &r.layers {
                if !self.graph.nodes.iter().any(|n| n.name == l.name) {
                    return Err(Error::graph(
                        &l.name,
                        format!(
                            "'{KEY_RANGES}' has a range for '{}', which is not a node of the graph \
                             (stale calibration? re-run `polypi calibrate`)",
                            l.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// [`ModelFile::infer_shapes_with`] with the default [`Limits`].
    pub fn infer_shapes(&self) -> Result<Vec<Vec<usize>>> {
        self.infer_shapes_with(&Limits::default())
    }

    /// Validates every node (as [`ModelFile::validate`], without compiling) and returns the
    /// per-sample output shape of every node, in node order: `[C, H, W]` or `[F]`. Flatten gives
    /// `[C*H*W]`, GlobalAvgPool `[C]`, pooling and conv `(h + 2p - k)/s + 1`
    /// ([`super::plan::ConvGeom::out_h`]).
    ///
    /// Geometry rules, all in checked arithmetic (nothing can wrap): stride, kernel, groups and
    /// output channels >= 1; conv padding <= the kernel size (`max(kh, kw)`), max-pool padding
    /// <= kernel / 2, average pooling has none; the kernel fits the padded input (so every output
    /// side is >= 1); every output has at most `limits.max_elements` values, and each conv,
    /// linear and pooling layer does at most `limits.max_work` operations per sample
    /// ([`super::limits::layer_work`]; the conv's im2col matrix, `C_in*kh*kw*out_h*out_w`, is
    /// also bounded by `max_elements`).
    /// Errors: [`Error::Graph`] / [`Error::ShapeMismatch`] naming the node and the offending
    /// value, [`Error::TooLarge`] for a node over the limits.
    pub fn infer_shapes_with(&self, limits: &Limits) -> Result<Vec<Vec<usize>>> {
        let g = &self.graph;
        if g.nodes.is_empty() {
            return Err(Error::graph(GRAPH_NODE, "the graph has no nodes"));
        }
        if !(1..=32).contains(&g.frac_bits) {
            return Err(Error::graph(
                GRAPH_NODE,
                format!("frac_bits {} is outside 1..=32", g.frac_bits),
            ));
        }
        let all: HashMap<&str, usize> =
            g.nodes.iter().enumerate().rev().map(|(i, n)| (n.name.as_str(), i)).collect();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut shapes: Vec<Vec<usize>> = Vec::with_capacity(g.nodes.len());
        for (i, node) in g.nodes.iter().enumerate() {
            let name = node.name.as_str();
            if name.is_empty() {
                return Err(Error::graph(format!("#{i}"), "node has an empty name"));
            }
            if let Some(j) = seen.get(name) {
                return Err(Error::graph(name, format!("duplicate node name (also node #{j})")));
            }
            let is_input = matches!(node.op, Op::Input);
            if i == 0 && !is_input {
                return Err(Error::graph(
                    name,
                    format!("the first node must be the Input, got op {}", node.op.kind()),
                ));
            }
            if i > 0 && is_input {
                return Err(Error::graph(name, "only the first node may be an Input"));
            }
            let arity = match node.op {
                Op::Input => 0,
                Op::Add => 2,
                _ => 1,
            };
            if node.inputs.len() != arity {
                return Err(Error::graph(
                    name,
                    format!(
                        "op {} takes {arity} input(s), got {} ({:?})",
                        node.op.kind(),
                        node.inputs.len(),
                        node.inputs
                    ),
                ));
            }
            let mut ins: Vec<&[usize]> = Vec::with_capacity(arity);
            for inp in &node.inputs {
                match seen.get(inp.as_str()) {
                    Some(&j) => ins.push(&shapes[j]),
                    None => {
                        let reason = match all.get(inp.as_str()) {
                            Some(&j) if j == i => {
                                format!("input '{inp}' refers to the node itself")
                            }
                            Some(&j) => format!(
                                "input '{inp}' refers to a later node (#{j}); nodes must be in \
                                 topological order"
                            ),
                            None => format!("input '{inp}' does not name any node (dangling edge)"),
                        };
                        return Err(Error::graph(name, reason));
                    }
                }
            }
            let out = self.node_shape(node, &ins, limits)?;
            Limits::check(
                name,
                &format!("values per sample of the output {out:?}"),
                checked_product(&out),
                limits.max_elements as u64,
            )?;
            seen.insert(name, i);
            shapes.push(out);
        }
        let last = g.nodes.last().map(|n| n.name.as_str()).unwrap_or(GRAPH_NODE);
        let n_out = shapes.last().and_then(|s| checked_product(s)).unwrap_or(0);
        if !g.labels.is_empty() && g.labels.len() as u64 != n_out {
            return Err(Error::graph(
                last,
                format!(
                    "the graph has {} labels but the output has {n_out} values",
                    g.labels.len()
                ),
            ));
        }
        Ok(shapes)
    }

    /// Checks one node (tensors, attributes, input shapes) and returns its output shape.
    fn node_shape(&self, node: &Node, ins: &[&[usize]], limits: &Limits) -> Result<Vec<usize>> {
        let name = node.name.as_str();
        let gerr = |reason: String| Error::graph(name, reason);
        let chw = |s: &[usize]| -> Result<(usize, usize, usize)> {
            if s.len() == 3 {
                Ok((s[0], s[1], s[2]))
            } else {
                Err(gerr(format!("op {} needs a [C, H, W] input, got shape {s:?}", node.op.kind())))
            }
        };
        let pos = |what: &str, v: usize| -> Result<()> {
            if v == 0 {
                Err(gerr(format!("{what} must be >= 1")))
            } else {
                Ok(())
            }
        };
        let finite = |what: &str, v: f32| -> Result<()> {
            if v.is_finite() {
                Ok(())
            } else {
                Err(gerr(format!("{what} = {v} is not finite")))
            }
        };
        match &node.op {
            Op::Input => {
                let s = &self.graph.input_shape;
                let max = limits.max_elements;
                let total = checked_product(s);
                if !(s.len() == 3 || s.len() == 1)
                    || s.contains(&0)
                    || total.is_none_or(|t| t > max as u64)
                {
                    return Err(gerr(format!(
                        "input_shape must be [C, H, W] (or [F]) with non-zero sizes and at most \
                         {max} values, got {s:?}"
                    )));
                }
                if let Some(nm) = &self.graph.normalize {
                    let c = s[0];
                    if nm.mean.len() != c || nm.std.len() != c {
                        return Err(gerr(format!(
                            "normalize has {} means and {} stds for {c} input channels",
                            nm.mean.len(),
                            nm.std.len()
                        )));
                    }
                    if nm.mean.iter().any(|v| !v.is_finite())
                        || nm.std.iter().any(|v| !(v.is_finite() && *v > 0.0))
                    {
                        return Err(gerr(
                            "normalize needs finite means and finite positive stds".into(),
                        ));
                    }
                }
                Ok(s.clone())
            }
            Op::Conv2d { weight, bias, stride, padding, groups } => {
                let (c, h, w) = chw(ins[0])?;
                pos("stride", *stride)?;
                pos("groups", *groups)?;
                let wt = self.tensor(name, "weight", weight)?;
                if wt.shape.len() != 4 {
                    return Err(gerr(format!(
                        "weight '{weight}' must have shape [c_out, c_in/groups, kh, kw], got {:?}",
                        wt.shape
                    )));
                }
                let (co, kh, kw) = (wt.shape[0], wt.shape[2], wt.shape[3]);
                pos("kernel size", kh.min(kw))?;
                pos("output channels", co)?;
                if c % groups != 0 || co % groups != 0 {
                    return Err(gerr(format!(
                        "groups = {groups} must divide the input channels ({c}) and the output \
                         channels ({co})"
                    )));
                }
                let expected = vec![co, c / groups, kh, kw];
                if wt.shape != expected {
                    return Err(Error::ShapeMismatch {
                        node: name.into(),
                        expected,
                        got: wt.shape.clone(),
                    });
                }
                if *padding > kh.max(kw) {
                    return Err(gerr(format!(
                        "padding {padding} must be at most the kernel size {kh}x{kw}"
                    )));
                }
                // padding <= kh or kw <= the weight's size, so these cannot overflow; checked anyway.
                let (oh, ow) = (
                    out_side("height", h, kh, *stride, *padding).map_err(&gerr)?,
                    out_side("width", w, kw, *stride, *padding).map_err(&gerr)?,
                );
                if let Some(b) = bias {
                    self.vector(name, "bias", b, co)?;
                }
                Limits::check(
                    name,
                    &format!("im2col values per sample (C_in {c} x {kh}x{kw} x out {oh}x{ow})"),
                    checked_product(&[c, kh, kw, oh, ow]),
                    limits.max_elements as u64,
                )?;
                Limits::check(
                    name,
                    &format!(
                        "multiply-accumulates per sample (C_out {co} x out {oh}x{ow} x C_in/groups \
                         {} x {kh}x{kw})",
                        c / groups
                    ),
                    checked_product(&[co, oh, ow, c / groups, kh, kw]),
                    limits.max_work,
                )?;
                Ok(vec![co, oh, ow])
            }
            Op::Linear { weight, bias } => {
                let s = ins[0];
                if s.len() != 1 {
                    return Err(gerr(format!(
                        "Linear needs a flat [F] input, got shape {s:?} (missing Flatten?)"
                    )));
                }
                let wt = self.tensor(name, "weight", weight)?;
                if wt.shape.len() != 2 || wt.shape[1] != s[0] || wt.shape[0] == 0 {
                    let out = wt.shape.first().copied().unwrap_or(0).max(1);
                    return Err(Error::ShapeMismatch {
                        node: name.into(),
                        expected: vec![out, s[0]],
                        got: wt.shape.clone(),
                    });
                }
                let out = wt.shape[0];
                if let Some(b) = bias {
                    self.vector(name, "bias", b, out)?;
                }
                Limits::check(
                    name,
                    &format!("multiply-accumulates per sample ({out} x {})", s[0]),
                    checked_product(&[out, s[0]]),
                    limits.max_work,
                )?;
                Ok(vec![out])
            }
            Op::BatchNorm2d { weight, bias, running_mean, running_var, eps } => {
                let (c, _, _) = chw(ins[0])?;
                self.vector(name, "weight", weight, c)?;
                self.vector(name, "bias", bias, c)?;
                self.vector(name, "running_mean", running_mean, c)?;
                let var = self.vector(name, "running_var", running_var, c)?;
                if !(eps.is_finite() && *eps > 0.0) {
                    return Err(gerr(format!("eps = {eps} must be finite and > 0")));
                }
                if let Some((ch, v)) = var.iter().enumerate().find(|(_, v)| **v + *eps <= 0.0) {
                    return Err(gerr(format!(
                        "running_var[{ch}] = {v} is negative (running_var + eps must be > 0)"
                    )));
                }
                Ok(ins[0].to_vec())
            }
            Op::AvgPool2d { kernel, stride, padding }
            | Op::MaxPool2d { kernel, stride, padding } => {
                let (c, h, w) = chw(ins[0])?;
                pos("kernel", *kernel)?;
                pos("stride", *stride)?;
                if *padding > *kernel / 2 {
                    return Err(gerr(format!(
                        "padding {padding} must be at most half the kernel {kernel}"
                    )));
                }
                let (oh, ow) = (
                    out_side("height", h, *kernel, *stride, *padding).map_err(&gerr)?,
                    out_side("width", w, *kernel, *stride, *padding).map_err(&gerr)?,
                );
                pool_work(name, c, oh, ow, *kernel, limits)?;
                Ok(vec![c, oh, ow])
            }
            Op::GlobalAvgPool => {
                let (c, _, _) = chw(ins[0])?;
                Ok(vec![c])
            }
            Op::Flatten => {
                let n = checked_product(ins[0]).and_then(|n| usize::try_from(n).ok());
                Ok(vec![n.ok_or_else(|| gerr(format!("{:?} has more than 2^64 values", ins[0])))?])
            }
            Op::Add => {
                if ins[0] != ins[1] {
                    return Err(Error::ShapeMismatch {
                        node: name.into(),
                        expected: ins[0].to_vec(),
                        got: ins[1].to_vec(),
                    });
                }
                Ok(ins[0].to_vec())
            }
            Op::Relu | Op::Identity => Ok(ins[0].to_vec()),
            Op::Poly { coefficients, coefficients_tensor } => {
                let c = ins[0][0];
                let degree = match (coefficients.is_empty(), coefficients_tensor) {
                    (false, Some(_)) => {
                        return Err(gerr(
                            "give either 'coefficients' or 'coefficients_tensor', not both".into(),
                        ))
                    }
                    (true, None) => {
                        return Err(gerr(
                            "no coefficients (set 'coefficients' or 'coefficients_tensor')".into(),
                        ))
                    }
                    (false, None) => {
                        for (k, v) in coefficients.iter().enumerate() {
                            finite(&format!("coefficients[{k}]"), *v)?;
                        }
                        effective_degree(coefficients)
                    }
                    (true, Some(t)) => {
                        let tt = self.tensor(name, "coefficients", t)?;
                        if tt.shape.len() != 2 || tt.shape[0] != c || tt.shape[1] == 0 {
                            let k = tt.shape.get(1).copied().unwrap_or(0).max(1);
                            return Err(Error::ShapeMismatch {
                                node: name.into(),
                                expected: vec![c, k],
                                got: tt.shape.clone(),
                            });
                        }
                        tt.data.chunks(tt.shape[1]).map(effective_degree).max().unwrap_or(0)
                    }
                };
                if degree > MAX_POLY_DEGREE {
                    return Err(gerr(format!(
                        "polynomial degree {degree} exceeds the maximum {MAX_POLY_DEGREE}"
                    )));
                }
                Ok(ins[0].to_vec())
            }
            Op::X2Act { s, w0, w1, b } => {
                // One scalar set per site (PASNet) or one per channel; all three alike.
                let c = ins[0][0];
                finite("s", *s)?;
                let len = match self.tensors.get(w0).map(|t| t.shape.as_slice()) {
                    Some([1]) => 1,
                    _ => c,
                };
                self.vector(name, "w0", w0, len)?;
                self.vector(name, "w1", w1, len)?;
                self.vector(name, "b", b, len)?;
                Ok(ins[0].to_vec())
            }
            Op::PolyKerv { c_p, d_p, a_p } => {
                finite("c_p", *c_p)?;
                finite("a_p", *a_p)?;
                if !(1..=MAX_POLY_DEGREE as u32).contains(d_p) {
                    return Err(gerr(format!("d_p = {d_p} is outside 1..={MAX_POLY_DEGREE}")));
                }
                Ok(ins[0].to_vec())
            }
        }
    }

    /// A referenced tensor: exists, data matches the shape, all values finite.
    fn tensor(&self, node: &str, role: &str, tname: &str) -> Result<&TensorF32> {
        let t = self.tensors.get(tname).ok_or_else(|| {
            Error::graph(node, format!("{role} tensor '{tname}' is not in the file"))
        })?;
        if t.data.len() != t.numel() {
            return Err(Error::graph(
                node,
                format!(
                    "{role} tensor '{tname}' has {} values for shape {:?}",
                    t.data.len(),
                    t.shape
                ),
            ));
        }
        if let Some((i, v)) = t.data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::graph(
                node,
                format!("{role} tensor '{tname}' has a non-finite value {v} at index {i}"),
            ));
        }
        Ok(t)
    }

    /// A referenced per-channel vector of length `len`.
    fn vector(&self, node: &str, role: &str, tname: &str, len: usize) -> Result<&[f32]> {
        let t = self.tensor(node, role, tname)?;
        if t.shape != [len] {
            return Err(Error::ShapeMismatch {
                node: node.into(),
                expected: vec![len],
                got: t.shape.clone(),
            });
        }
        Ok(&t.data)
    }

    /// Total number of values over all tensors (weights, biases and BatchNorm running statistics).
    pub fn num_values(&self) -> usize {
        self.tensors.values().map(|t| t.data.len()).sum()
    }
}

/// Bounds the window reads `c x oh x ow x kernel^2` of a pooling node by `limits.max_work`.
fn pool_work(
    node: &str,
    c: usize,
    oh: usize,
    ow: usize,
    kernel: usize,
    limits: &Limits,
) -> Result<()> {
    Limits::check(
        node,
        &format!("window reads per sample (C {c} x out {oh}x{ow} x kernel {kernel}^2)"),
        checked_product(&[c, oh, ow, kernel, kernel]),
        limits.max_work,
    )?;
    Ok(())
}

/// Highest power with a non-zero coefficient (0 for a constant or empty polynomial).
pub(crate) fn effective_degree(coeffs: &[f32]) -> usize {
    coeffs.iter().rposition(|&c| c != 0.0).unwrap_or(0)
}

/// Parses the graph JSON. Node-level problems (not an object, missing name, missing or unknown
/// op, bad attributes) give [`Error::Graph`] naming the node and op; anything else gives
/// [`Error::ModelFile`] with `file` as the path.
pub fn parse_graph(json: &str, file: &str) -> Result<Graph> {
    let value: Value = serde_json::from_str(json)
        .map_err(|e| Error::model_file(file, format!("'{KEY_GRAPH}' is not valid JSON: {e}")))?;
    let nodes = value
        .get("nodes")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::model_file(file, format!("'{KEY_GRAPH}' has no 'nodes' array")))?;
    for (i, node) in nodes.iter().enumerate() {
        let Some(obj) = node.as_object() else {
            return Err(Error::graph(format!("#{i}"), "node is not a JSON object"));
        };
        let name = match obj.get("name").and_then(Value::as_str) {
            Some(n) => n.to_string(),
            None => return Err(Error::graph(format!("#{i}"), "node has no string 'name'")),
        };
        let op = match obj.get("op") {
            None => return Err(Error::graph(name, "node has no 'op'")),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(Error::graph(name, format!("'op' must be a string, got {other}")))
            }
        };
        if !KNOWN_OPS.contains(&op.as_str()) {
            return Err(Error::graph(
                name,
                format!("unknown op '{op}' (known ops: {})", KNOWN_OPS.join(", ")),
            ));
        }
        if let Err(e) = serde_json::from_value::<Node>(node.clone()) {
            return Err(Error::graph(name, format!("bad attributes for op {op}: {e}")));
        }
    }
    serde_json::from_value::<Graph>(value)
        .map_err(|e| Error::model_file(file, format!("'{KEY_GRAPH}' is not a valid graph: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::zoo::{build, Act, Pool, RefNet};

    fn small() -> ModelFile {
        build(RefNet::NetM, Act::X2Act, Pool::Avg, 0.25, 3).unwrap()
    }

    fn node_mut<'a>(f: &'a mut ModelFile, name: &str) -> &'a mut Node {
        f.graph.nodes.iter_mut().find(|n| n.name == name).unwrap()
    }

    fn graph_err(e: Error) -> (String, String) {
        match e {
            Error::Graph { node, reason } => (node, reason),
            other => panic!("expected a Graph error, got {other:?}"),
        }
    }

    #[test]
    fn round_trip_bytes_and_file() {
        let f = small();
        let bytes = f.to_bytes().unwrap();
        let g = ModelFile::from_bytes(&bytes, "mem").unwrap();
        assert_eq!(f, g);
        assert_eq!(bytes, g.to_bytes().unwrap(), "re-save must be byte-identical");

        let dir = std::env::temp_dir().join(format!("polypi-file-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.safetensors");
        f.save(&path).unwrap();
        let h = ModelFile::load(&path).unwrap();
        assert_eq!(f, h);
        h.save(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        // A failed save (invalid model) leaves the earlier file intact.
        let mut bad = f.clone();
        bad.graph.nodes[1].inputs = vec!["nope".into()];
        assert!(bad.save(&path).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        // Only the model file is left in the directory (no temp files).
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tensor_checksum_catches_flipped_weight_bytes_and_old_files_still_load() {
        let f = small();
        let bytes = f.to_bytes().unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let md = meta.metadata().clone().unwrap();
        assert_eq!(md[KEY_CHECKSUM], tensor_checksum(&f.tensors));
        assert_eq!(md[KEY_CHECKSUM].len(), 64);
        // One flipped bit in the last weight: refused at load, by name.
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 3] ^= 0x01;
        match ModelFile::from_bytes(&bad, "flipped") {
            Err(Error::ModelFile { path, reason }) => {
                assert_eq!(path, "flipped");
                assert!(reason.contains("corrupt file: tensor checksum mismatch"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(ModelFile::from_bytes_unchecked(&bad, "flipped").is_err());
        // A file without a checksum (older versions, other tools) still loads, and gains one when
        // saved again.
        let old = with_graph_json(&f, |_| {});
        let (_, meta) = SafeTensors::read_metadata(&old).unwrap();
        assert!(!meta.metadata().as_ref().unwrap().contains_key(KEY_CHECKSUM));
        let g = ModelFile::from_bytes(&old, "old").unwrap();
        assert_eq!(g.tensors, f.tensors);
        let resaved = g.to_bytes().unwrap();
        let (_, m2) = SafeTensors::read_metadata(&resaved).unwrap();
        assert_eq!(m2.metadata().as_ref().unwrap()[KEY_CHECKSUM], md[KEY_CHECKSUM]);
        // The checksum does not depend on the file layout (the other tool's tensor order).
        let st = SafeTensors::deserialize(&old).unwrap();
        let mut md = meta.metadata().clone().unwrap();
        md.insert(KEY_CHECKSUM.to_string(), tensor_checksum(&f.tensors).to_uppercase());
        let b = safetensors::serialize(st.tensors(), Some(md.clone())).unwrap();
        assert_eq!(ModelFile::from_bytes(&b, "m").unwrap().tensors, f.tensors);
        md.insert(KEY_CHECKSUM.to_string(), "0".repeat(64));
        let b = safetensors::serialize(st.tensors(), Some(md)).unwrap();
        assert!(matches!(ModelFile::from_bytes(&b, "m"), Err(Error::ModelFile { .. })));
    }

    #[test]
    fn the_safetensors_crate_reads_our_bytes() {
        let f = small();
        let bytes = f.to_bytes().unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), f.tensors.len());
        let w = st.tensor("conv1.weight").unwrap();
        assert_eq!(w.shape(), f.tensors["conv1.weight"].shape.as_slice());
    }

    #[test]
    fn truncated_and_garbage_bytes_are_model_file_errors() {
        let bytes = small().to_bytes().unwrap();
        let n = bytes.len();
        for cut in [0, 1, 7, 8, 9, 100, n / 3, n / 2, n - 5, n - 1] {
            match ModelFile::from_bytes(&bytes[..cut], "cut") {
                Err(Error::ModelFile { path, .. }) => assert_eq!(path, "cut"),
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        let mut r = 0x1234_5678_9abc_def0u64;
        for len in [0usize, 3, 8, 16, 64, 1000] {
            let garbage: Vec<u8> = (0..len)
                .map(|_| {
                    r ^= r << 13;
                    r ^= r >> 7;
                    r ^= r << 17;
                    r as u8
                })
                .collect();
            assert!(matches!(ModelFile::from_bytes(&garbage, "g"), Err(Error::ModelFile { .. })));
        }
        // A plausible header length pointing past the end.
        let mut b = (1u64 << 40).to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        assert!(matches!(ModelFile::from_bytes(&b, "g"), Err(Error::ModelFile { .. })));
        assert!(matches!(
            ModelFile::load("/nonexistent/x.safetensors"),
            Err(Error::ModelFile { .. })
        ));
    }

    fn with_graph_json(f: &ModelFile, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
        let bytes = f.to_bytes().unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let mut g: Value =
            serde_json::from_str(&meta.metadata().as_ref().unwrap()[KEY_GRAPH]).unwrap();
        edit(&mut g);
        let mut tensors = Vec::new();
        for (k, t) in &f.tensors {
            let raw: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            tensors.push((k.clone(), t.shape.clone(), raw));
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|(k, s, r)| {
                (k.clone(), safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), r).unwrap())
            })
            .collect();
        let mut md = HashMap::new();
        md.insert(KEY_GRAPH.to_string(), g.to_string());
        md.insert(KEY_VERSION.to_string(), FORMAT_VERSION.to_string());
        safetensors::serialize(views, Some(md)).unwrap()
    }

    #[test]
    fn unknown_op_names_node_and_op() {
        let f = small();
        let bytes = with_graph_json(&f, |g| g["nodes"][2]["op"] = Value::from("Softmax3000"));
        let (node, reason) = graph_err(ModelFile::from_bytes(&bytes, "m").unwrap_err());
        assert_eq!(node, f.graph.nodes[2].name);
        assert!(reason.contains("Softmax3000"), "{reason}");
        let e = ModelFile::from_bytes(&bytes, "m").unwrap_err().to_string();
        assert!(e.contains(&f.graph.nodes[2].name) && e.contains("Softmax3000"), "{e}");
        // Missing op and bad attributes also name the node.
        let bytes = with_graph_json(&f, |g| {
            g["nodes"][1].as_object_mut().unwrap().remove("op");
        });
        assert_eq!(graph_err(ModelFile::from_bytes(&bytes, "m").unwrap_err()).0, "conv1");
        let bytes = with_graph_json(&f, |g| g["nodes"][1]["stride"] = Value::from("two"));
        let (node, reason) = graph_err(ModelFile::from_bytes(&bytes, "m").unwrap_err());
        assert_eq!(node, "conv1");
        assert!(reason.contains("Conv2d"), "{reason}");
        // Written by another tool (safetensors' own serializer): still loads.
        let ok = ModelFile::from_bytes(&with_graph_json(&f, |_| {}), "m").unwrap();
        assert_eq!((ok.graph, ok.tensors), (f.graph, f.tensors));
    }

    #[test]
    fn version_and_metadata_checks() {
        let f = small();
        let mut md = HashMap::new();
        md.insert(KEY_GRAPH.to_string(), serde_json::to_string(&f.graph).unwrap());
        md.insert(KEY_VERSION.to_string(), "999".to_string());
        let empty: Vec<(String, safetensors::tensor::TensorView)> = Vec::new();
        let b = safetensors::serialize(empty.clone(), Some(md.clone())).unwrap();
        match ModelFile::from_bytes(&b, "v") {
            Err(Error::ModelFile { reason, .. }) => assert!(reason.contains("999"), "{reason}"),
            other => panic!("{other:?}"),
        }
        md.remove(KEY_VERSION);
        let b = safetensors::serialize(empty.clone(), Some(md)).unwrap();
        assert!(matches!(ModelFile::from_bytes(&b, "v"), Err(Error::ModelFile { .. })));
        let b = safetensors::serialize(empty, None).unwrap();
        assert!(matches!(ModelFile::from_bytes(&b, "v"), Err(Error::ModelFile { .. })));
    }

    #[test]
    fn non_f32_tensor_is_rejected() {
        let f = small();
        let mut md = HashMap::new();
        md.insert(KEY_GRAPH.to_string(), serde_json::to_string(&f.graph).unwrap());
        md.insert(KEY_VERSION.to_string(), FORMAT_VERSION.to_string());
        let raw = vec![0u8; 8];
        let v = safetensors::tensor::TensorView::new(Dtype::F64, vec![1], &raw).unwrap();
        let b = safetensors::serialize(vec![("conv1.bias".to_string(), v)], Some(md)).unwrap();
        match ModelFile::from_bytes(&b, "d") {
            Err(Error::ModelFile { reason, .. }) => {
                assert!(reason.contains("conv1.bias") && reason.contains("F64"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dangling_and_forward_edges() {
        let mut f = small();
        node_mut(&mut f, "pool1").inputs = vec!["ghost".into()];
        let (node, reason) = graph_err(f.validate().unwrap_err());
        assert_eq!(node, "pool1");
        assert!(reason.contains("ghost") && reason.contains("dangling"), "{reason}");

        let mut f = small();
        node_mut(&mut f, "pool1").inputs = vec!["conv2".into()];
        let (node, reason) = graph_err(f.validate().unwrap_err());
        assert_eq!(node, "pool1");
        assert!(reason.contains("later node"), "{reason}");

        let mut f = small();
        node_mut(&mut f, "pool1").inputs = vec!["pool1".into()];
        assert_eq!(graph_err(f.validate().unwrap_err()).0, "pool1");
    }

    #[test]
    fn structural_rules() {
        let mut f = small();
        f.graph.nodes[3].name = f.graph.nodes[1].name.clone();
        let (node, reason) = graph_err(f.validate().unwrap_err());
        assert!(reason.contains("duplicate"), "{node}: {reason}");

        let mut f = small();
        f.graph.nodes.remove(0);
        assert!(graph_err(f.validate().unwrap_err()).1.contains("first node"));

        let mut f = small();
        node_mut(&mut f, "pool1").op = Op::Add;
        let (node, reason) = graph_err(f.validate().unwrap_err());
        assert_eq!(node, "pool1");
        assert!(reason.contains("2 input"), "{reason}");

        let mut f = small();
        f.graph.nodes.clear();
        assert!(f.validate().is_err());

        let mut f = small();
        f.graph.labels.pop();
        assert_eq!(graph_err(f.validate().unwrap_err()).0, "fc2");
    }

    #[test]
    fn conv_weight_shape_mismatch_names_the_node() {
        let mut f = small();
        let w = f.tensors.get_mut("conv2.weight").unwrap();
        let (co, ci) = (w.shape[0], w.shape[1]);
        w.shape[1] = ci + 1;
        w.data = vec![0.0; w.numel()];
        match f.validate().unwrap_err() {
            Error::ShapeMismatch { node, expected, got } => {
                assert_eq!(node, "conv2");
                assert_eq!(expected, vec![co, ci, 5, 5]);
                assert_eq!(got, vec![co, ci + 1, 5, 5]);
            }
            other => panic!("{other:?}"),
        }
        // Linear input width and vectors.
        let mut f = small();
        let w = f.tensors.get_mut("fc1.weight").unwrap();
        w.shape = vec![100, 7];
        w.data = vec![0.0; 700];
        assert!(matches!(f.validate(), Err(Error::ShapeMismatch { node, .. }) if node == "fc1"));
        let mut f = small();
        f.tensors.get_mut("act1.w0").unwrap().data.push(0.0);
        f.tensors.get_mut("act1.w0").unwrap().shape[0] += 1;
        assert!(matches!(f.validate(), Err(Error::ShapeMismatch { node, .. }) if node == "act1"));
        // Missing tensor.
        let mut f = small();
        f.tensors.remove("conv1.bias");
        let (node, reason) = graph_err(f.validate().unwrap_err());
        assert_eq!(node, "conv1");
        assert!(reason.contains("conv1.bias"), "{reason}");
    }

    #[test]
    fn nan_weight_and_bad_hyper_parameters() {
        let mut f = small();
        f.tensors.get_mut("fc1.weight").unwrap().data[5] = f32::NAN;
        let (node, reason) = graph_err(f.validate().unwrap_err());
        assert_eq!(node, "fc1");
        assert!(reason.contains("non-finite"), "{reason}");
        let bytes = f.to_bytes().unwrap();
        assert!(ModelFile::from_bytes(&bytes, "nan").is_err());

        let mut f = small();
        if let Op::Conv2d { stride, .. } = &mut node_mut(&mut f, "conv1").op {
            *stride = 0;
        }
        assert_eq!(graph_err(f.validate().unwrap_err()).0, "conv1");

        let mut f = small();
        if let Op::Conv2d { groups, .. } = &mut node_mut(&mut f, "conv2").op {
            *groups = 3;
        }
        assert_eq!(graph_err(f.validate().unwrap_err()).0, "conv2");

        let mut f = small();
        node_mut(&mut f, "pool1").op = Op::AvgPool2d { kernel: 0, stride: 2, padding: 0 };
        assert_eq!(graph_err(f.validate().unwrap_err()).0, "pool1");

        let mut f = small();
        node_mut(&mut f, "act1").op = Op::PolyKerv { c_p: 1.0, d_p: 9, a_p: 1.0 };
        assert_eq!(graph_err(f.validate().unwrap_err()).0, "act1");

        let mut f = small();
        node_mut(&mut f, "act1").op = Op::Poly {
            coefficients: vec![0.0; 10].into_iter().chain([1.0]).collect(),
            coefficients_tensor: None,
        };
        assert_eq!(graph_err(f.validate().unwrap_err()).0, "act1");

        let mut f = small();
        node_mut(&mut f, "act1").op = Op::Poly { coefficients: vec![], coefficients_tensor: None };
        assert_eq!(graph_err(f.validate().unwrap_err()).0, "act1");

        // Absurd sizes give errors, not overflow panics.
        let mut f = small();
        if let Op::Conv2d { padding, .. } = &mut node_mut(&mut f, "conv1").op {
            *padding = usize::MAX;
        }
        assert_eq!(graph_err(f.validate().unwrap_err()).0, "conv1");
        let mut f = small();
        f.graph.input_shape = vec![usize::MAX, 2, 2];
        assert_eq!(graph_err(f.validate().unwrap_err()).0, "input");
        let mut f = small();
        node_mut(&mut f, "pool1").op = Op::MaxPool2d { kernel: 2, stride: 2, padding: usize::MAX };
        assert_eq!(graph_err(f.validate().unwrap_err()).0, "pool1");

        // Linear right after a conv output (no Flatten).
        let mut f = small();
        node_mut(&mut f, "fc1").inputs = vec!["pool2".into()];
        let (node, reason) = graph_err(f.validate().unwrap_err());
        assert_eq!(node, "fc1");
        assert!(reason.contains("Flatten"), "{reason}");
    }

    fn with_ranges() -> ModelFile {
        use crate::model::range::{LayerRange, Ranges, RANGES_VERSION};
        let mut f = small();
        let plan = crate::model::compile::compile(&f).unwrap();
        f.ranges = Some(Ranges {
            version: RANGES_VERSION,
            data: "unit test".into(),
            samples: 3,
            frac_bits: 16,
            layers: plan
                .layers
                .iter()
                .enumerate()
                .map(|(i, l)| LayerRange {
                    name: l.name.clone(),
                    op: l.op.kind().into(),
                    max_abs: 1.5 + i as f64,
                    p9999_abs: 1.0 + i as f64 * 0.25,
                    mean_abs: 0.1,
                })
                .collect(),
        });
        f
    }

    #[test]
    fn ranges_round_trip_through_the_file() {
        let f = with_ranges();
        let bytes = f.to_bytes().unwrap();
        let g = ModelFile::from_bytes(&bytes, "mem").unwrap();
        assert_eq!(g.ranges, f.ranges);
        assert_eq!(g.to_bytes().unwrap(), bytes);
        let dir = std::env::temp_dir().join(format!("polypi-ranges-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.safetensors");
        f.save(&path).unwrap();
        assert_eq!(ModelFile::load(&path).unwrap().ranges, f.ranges);
        std::fs::remove_dir_all(&dir).unwrap();
        // Absent key = no ranges.
        assert_eq!(ModelFile::from_bytes(&small().to_bytes().unwrap(), "m").unwrap().ranges, None);
    }

    fn with_ranges_json(f: &ModelFile, json: &str) -> Vec<u8> {
        let bytes = f.to_bytes().unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let mut md = meta.metadata().clone().unwrap();
        md.insert(KEY_RANGES.to_string(), json.to_string());
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let views: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
        safetensors::serialize(views, Some(md)).unwrap()
    }

    #[test]
    fn malformed_ranges_are_clear_load_errors() {
        let f = with_ranges();
        let good: Value =
            serde_json::from_str(&f.ranges.as_ref().unwrap().to_json().unwrap()).unwrap();
        let cases: Vec<(Value, &str)> = vec![
            (Value::from("nope"), "polypi.ranges"),
            (
                {
                    let mut v = good.clone();
                    v["version"] = 2.into();
                    v
                },
                "version 2",
            ),
            (
                {
                    let mut v = good.clone();
                    v["layers"][0]["max_abs"] = Value::Null;
                    v
                },
                "expected f64",
            ),
            (
                {
                    let mut v = good.clone();
                    v["layers"][0]["bogus"] = 1.into();
                    v
                },
                "bogus",
            ),
            (
                {
                    let mut v = good.clone();
                    v["layers"] = Value::Array(vec![]);
                    v
                },
                "no layers",
            ),
        ];
        for (v, needle) in cases {
            let e =
                ModelFile::from_bytes(&with_ranges_json(&f, &v.to_string()), "m.st").unwrap_err();
            assert!(matches!(e, Error::ModelFile { .. }), "{e:?}");
            let msg = e.to_string();
            assert!(msg.contains("m.st") && msg.contains(needle), "{needle}: {msg}");
        }
        let e = ModelFile::from_bytes(&with_ranges_json(&f, "{not json"), "m.st").unwrap_err();
        assert!(e.to_string().contains(KEY_RANGES), "{e}");
        // A range for a node the graph does not have (stale calibration).
        let mut v = good.clone();
        v["layers"][1]["name"] = "ghost".into();
        let (node, reason) = graph_err(
            ModelFile::from_bytes(&with_ranges_json(&f, &v.to_string()), "m").unwrap_err(),
        );
        assert_eq!(node, "ghost");
        assert!(reason.contains("calibrate"), "{reason}");
    }

    #[test]
    fn shapes_are_inferred() {
        let f = small();
        let s = f.infer_shapes().unwrap();
        let by: HashMap<&str, &Vec<usize>> =
            f.graph.nodes.iter().map(|n| n.name.as_str()).zip(&s).collect();
        assert_eq!(by["conv1"], &vec![4, 24, 24]);
        assert_eq!(by["pool1"], &vec![4, 12, 12]);
        assert_eq!(by["pool2"], &vec![4, 4, 4]);
        assert_eq!(by["flatten"], &vec![64]);
        assert_eq!(by["fc2"], &vec![10]);
    }
}
