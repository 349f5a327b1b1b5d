//! ONNX graph -> polypi graph IR (docs/import.md).
//!
//! One pass over the ONNX nodes in file order. Every ONNX value is one of:
//! - a constant (initializer, `Constant` node, or an op on constants, folded here);
//! - a dynamic tensor: a polypi node (its output) with a pending element-wise polynomial
//!   ([`Poly`], identity when none). Element-wise ops on it (Mul, Add, Sub, Div by constants,
//!   Pow by small integers, Neg, BatchNormalization, products and sums of the same tensor) only
//!   change the polynomial; the first non-element-wise consumer (Conv, Gemm, pooling, a residual
//!   Add of two different tensors, Relu, the output) materialises it as one polypi activation
//!   node: PolyKerv when it is one shared `a*(x + c)^d`, X2Act when it has per-channel rows of
//!   degree <= 2, Poly otherwise;
//! - poisoned: the output of an unsupported node (its consumers are not reported again).
//!
//! After the pass, a per-channel affine activation (degree <= 1, e.g. a BatchNorm) right after a
//! Conv2d / Linear whose output feeds nothing else is folded into that layer's weight and bias.

use std::collections::{BTreeMap, HashMap, HashSet};

use polypi_core::model::file::TensorF32;
use polypi_core::model::{Node, Op};

use crate::error::UnsupportedNode;
use crate::onnx::{constant_value, Attrs, Const, TensorReader};
use crate::poly::Poly;
use crate::protos::onnx::NodeProto;

/// A dynamic tensor: the output of polypi node `node` with `poly` applied element-wise.
#[derive(Debug, Clone)]
pub(crate) struct Dyn {
    /// The polypi node whose output this is built on.
    pub node: String,
    /// Per-sample ONNX shape (batch removed): `[C, H, W]` or `[F]`.
    pub shape: Vec<usize>,
    /// Per-sample shape of the polypi node (differs after GlobalAveragePool: `[C]` for ONNX's
    /// `[C, 1, 1]`).
    pub pshape: Vec<usize>,
    /// Pending element-wise polynomial.
    pub poly: Poly,
}

/// What an ONNX value is during conversion.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    Const(Const),
    Dyn(Dyn),
    Poisoned,
}

/// Conversion state.
pub(crate) struct Converter {
    pub reader: TensorReader,
    pub values: HashMap<String, Value>,
    pub nodes: Vec<Node>,
    pub tensors: BTreeMap<String, TensorF32>,
    names: HashSet<String>,
    pub unsupported: Vec<UnsupportedNode>,
    pub notes: Vec<String>,
    pub activations: Vec<String>,
    /// ONNX value name -> number of node inputs reading it.
    pub uses: HashMap<String, usize>,
    /// Names of the graph outputs.
    pub outputs: HashSet<String>,
}

type R<T> = Result<T, String>;

/// Shape-preserving element-wise ops besides [`NOT_POLYNOMIAL`]: after refusing one,
/// conversion goes on with a stand-in of its input's shape, so that every unsupported node of
/// the graph is listed in one error.
const ELEMENTWISE: &[&str] = &[
    "Softmax",
    "LogSoftmax",
    "Relu",
    "Sqrt",
    "Reciprocal",
    "Abs",
    "Mul",
    "Add",
    "Sub",
    "Div",
    "Pow",
    "Neg",
    "Cast",
    "Identity",
];

impl Converter {
    pub fn new(reader: TensorReader) -> Converter {
        Converter {
            reader,
            values: HashMap::new(),
            nodes: Vec::new(),
            tensors: BTreeMap::new(),
            names: HashSet::new(),
            unsupported: Vec::new(),
            notes: Vec::new(),
            activations: Vec::new(),
            uses: HashMap::new(),
            outputs: HashSet::new(),
        }
    }

    /// A node name not used yet, based on `hint`.
    pub fn unique(&mut self, hint: &str) -> String {
        let hint = if hint.is_empty() { "node" } else { hint };
        let mut name = hint.to_string();
        let mut k = 2;
        while self.names.contains(&name) {
            name = format!("{hint}.{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        name
    }

    /// Adds a tensor named `name` (unique among tensors).
    fn tensor(&mut self, name: String, shape: Vec<usize>, data: Vec<f32>) -> String {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        self.tensors.insert(name.clone(), TensorF32 { shape, data });
        name
    }

    /// Appends a polypi node.
    pub fn push(&mut self, name: String, inputs: Vec<String>, op: Op) {
        self.nodes.push(Node { name, inputs, op });
    }

    /// Processes one ONNX node: converts it, or records it as unsupported (its outputs then
    /// poison their consumers).
    pub fn node(&mut self, position: usize, n: &NodeProto) {
        let ins: Vec<Option<Value>> = n
            .input
            .iter()
            .map(|i| if i.is_empty() { None } else { self.values.get(i).cloned() })
            .collect();
        let missing = n.input.iter().zip(&ins).find(|(i, v)| !i.is_empty() && v.is_none());
        let result = if ins.iter().any(|v| matches!(v, Some(Value::Poisoned))) {
            // After an unsupported node: still list ops that are unsupported whatever their
            // inputs are.
            match refusal_by_type(&n.op_type) {
                Some(reason) => Err(reason),
                None => Ok(vec![Value::Poisoned; n.output.len()]),
            }
        } else if let Some((i, _)) = missing {
            Err(format!(
                "input '{i}' is produced by no earlier node (graph not in topological order?)"
            ))
        } else if let Some(k) =
            (0..min_inputs(&n.op_type)).find(|&i| !matches!(ins.get(i), Some(Some(_))))
        {
            Err(format!("input #{k} is missing ({} needs {})", n.op_type, min_inputs(&n.op_type)))
        } else if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            Err(format!("operators of domain '{}' are not supported", n.domain))
        } else {
            self.convert(n, &ins)
        };
        match result {
            Ok(outs) => {
                for (name, v) in n.output.iter().zip(outs) {
                    if !name.is_empty() {
                        self.values.insert(name.clone(), v);
                    }
                }
            }
            Err(reason) => {
                let op_type = if n.domain.is_empty() || n.domain == "ai.onnx" {
                    n.op_type.clone()
                } else {
                    format!("{}::{}", n.domain, n.op_type)
                };
                let name = if n.name.is_empty() { "(unnamed)".to_string() } else { n.name.clone() };
                self.unsupported.push(UnsupportedNode { position, name, op_type, reason });
                for o in &n.output {
                    self.values.insert(o.clone(), Value::Poisoned);
                }
                // An element-wise op keeps its input's shape: go on with a stand-in tensor so
                // that the unsupported nodes after it are found and listed too.
                if let (true, Some(Some(Value::Dyn(d))), Some(o)) =
                    (is_elementwise(&n.op_type), ins.first(), n.output.first())
                {
                    let node = self.unique(&format!("{}.unsupported", d.node));
                    let standin = Dyn { node, poly: Poly::identity(), ..d.clone() };
                    self.values.insert(o.clone(), Value::Dyn(standin));
                }
            }
        }
    }

    /// The dynamic value of ONNX value `v`, its polynomial materialised as a polypi node.
    pub fn dyn_input(&mut self, v: &str) -> R<Dyn> {
        let d = match self.values.get(v) {
            Some(Value::Dyn(d)) => d.clone(),
            Some(Value::Const(_)) => {
                return Err(format!(
                    "input '{v}' is a constant; polypi needs the network input here"
                ))
            }
            _ => return Err(format!("input '{v}' is not available")),
        };
        if d.poly.is_identity() {
            return Ok(d);
        }
        let m = self.emit_poly(&d)?;
        self.values.insert(v.to_string(), Value::Dyn(m.clone()));
        Ok(m)
    }

    /// Writes `d.poly` as one activation node on `d.node`.
    fn emit_poly(&mut self, d: &Dyn) -> R<Dyn> {
        let name = self.unique(&format!("{}.act", d.node));
        let rows = d.poly.normalised();
        let (op, kind) = if let Some((c, dp, a)) = d.poly.as_polykerv() {
            (Op::PolyKerv { c_p: c as f32, d_p: dp, a_p: a as f32 }, "PolyKerv")
        } else if rows.len() > 1 && rows[0].len() <= 3 {
            let col =
                |k: usize| rows.iter().map(|r| r.get(k).copied().unwrap_or(0.0) as f32).collect();
            let c = rows.len();
            let w0 = self.tensor(format!("{name}.w0"), vec![c], col(2));
            let w1 = self.tensor(format!("{name}.w1"), vec![c], col(1));
            let b = self.tensor(format!("{name}.b"), vec![c], col(0));
            (Op::X2Act { s: 1.0, w0, w1, b }, "X2Act")
        } else if rows.len() == 1 {
            (
                Op::Poly {
                    coefficients: rows[0].iter().map(|&v| v as f32).collect(),
                    coefficients_tensor: None,
                },
                "Poly",
            )
        } else {
            let k = rows[0].len();
            let data = rows.iter().flat_map(|r| r.iter().map(|&v| v as f32)).collect();
            let t = self.tensor(format!("{name}.coefficients"), vec![rows.len(), k], data);
            (Op::Poly { coefficients: vec![], coefficients_tensor: Some(t) }, "Poly")
        };
        self.activations.push(format!("{name}: {} -> {kind}", d.poly.describe()));
        self.push(name.clone(), vec![d.node.clone()], op);
        Ok(Dyn {
            node: name,
            shape: d.shape.clone(),
            pshape: d.pshape.clone(),
            poly: Poly::identity(),
        })
    }

    /// A constant's values as a degree-0 polynomial broadcast against `d` (one value, or one per
    /// channel: every other axis of the constant must have size 1).
    fn const_poly(c: &Const, d: &Dyn) -> R<Poly> {
        let full: Vec<usize> = std::iter::once(1).chain(d.shape.iter().copied()).collect();
        if c.dims.len() > full.len() {
            return Err(format!(
                "constant of shape {:?} has more dimensions than the tensor [N, {:?}]",
                c.dims, d.shape
            ));
        }
        let off = full.len() - c.dims.len();
        let mut per_channel = false;
        for (j, &dim) in c.dims.iter().enumerate() {
            let axis = off + j;
            if dim == 1 {
                continue;
            }
            if axis == 1 && dim == full[1] {
                per_channel = true;
            } else {
                return Err(format!(
                    "constant of shape {:?} varies along axis {axis} of [N, {:?}]: only scalars \
                     and per-channel constants form an activation polynomial",
                    c.dims, d.shape
                ));
            }
        }
        Ok(if per_channel { Poly::constant(&c.data) } else { Poly::constant(&c.data[..1]) })
    }

    fn node_name(&mut self, n: &NodeProto, weight: Option<&str>) -> String {
        let hint = match weight.and_then(|w| w.strip_suffix(".weight")) {
            Some(p) if !p.is_empty() => p.to_string(),
            _ if !n.name.is_empty() => n.name.clone(),
            _ => n.op_type.to_lowercase(),
        };
        self.unique(&hint)
    }

    fn konst<'v>(&self, ins: &'v [Option<Value>], i: usize, what: &str) -> R<&'v Const> {
        match ins.get(i) {
            Some(Some(Value::Const(c))) => Ok(c),
            Some(Some(_)) => {
                Err(format!("{what} must be a constant (initializer), not computed from the input"))
            }
            _ => Err(format!("{what} is missing")),
        }
    }

    fn opt_konst<'v>(
        &self,
        ins: &'v [Option<Value>],
        i: usize,
        what: &str,
    ) -> R<Option<&'v Const>> {
        match ins.get(i) {
            None | Some(None) => Ok(None),
            Some(Some(Value::Const(c))) => Ok(Some(c)),
            _ => {
                Err(format!("{what} must be a constant (initializer), not computed from the input"))
            }
        }
    }

    /// Converts one node of the default domain; returns the values of its outputs.
    fn convert(&mut self, n: &NodeProto, ins: &[Option<Value>]) -> R<Vec<Value>> {
        let a = Attrs::of(n);
        let one = |v: Value| Ok(vec![v]);
        let in0 = || n.input.first().cloned().unwrap_or_default();
        match n.op_type.as_str() {
            "Constant" => one(Value::Const(constant_value(n, &mut self.reader)?)),
            "Identity" => one(ins[0].clone().ok_or("no input")?),
            "Dropout" => {
                if let Some(Some(Value::Const(t))) = ins.get(2) {
                    if t.data.first().is_some_and(|v| *v != 0.0) {
                        return Err("Dropout in training mode".into());
                    }
                }
                let mut outs = vec![ins[0].clone().ok_or("no input")?];
                outs.extend(n.output.iter().skip(1).map(|_| Value::Poisoned));
                Ok(outs)
            }
            "Add" | "Sub" | "Mul" | "Div" => self.binary(n, ins),
            "Pow" => {
                let e = self.konst(ins, 1, "the exponent")?;
                match &ins[0] {
                    Some(Value::Const(b)) => one(Value::Const(broadcast(b, e, f64::powf)?)),
                    Some(Value::Dyn(d)) => {
                        let k = e.data.first().copied().filter(|_| e.data.len() == 1);
                        match k {
                            Some(k) if k.fract() == 0.0 && (0.0..=64.0).contains(&k) => {
                                let mut d = d.clone();
                                d.poly = d.poly.pow(k as u32)?;
                                one(Value::Dyn(d))
                            }
                            _ => Err(format!(
                                "exponent {:?} is not one small non-negative integer (x^k, k = 0..8)",
                                e.data
                            )),
                        }
                    }
                    _ => Err("no input".into()),
                }
            }
            "Neg" => match &ins[0] {
                Some(Value::Const(c)) => one(Value::Const(map(c, |v| -v))),
                Some(Value::Dyn(d)) => {
                    let mut d = d.clone();
                    d.poly = d.poly.neg();
                    one(Value::Dyn(d))
                }
                _ => Err("no input".into()),
            },
            "Sqrt" | "Reciprocal" | "Exp" | "Sigmoid" | "Tanh" | "Abs" | "Floor" | "Ceil"
            | "Erf" | "Log" => match &ins[0] {
                Some(Value::Const(c))
                    if matches!(n.op_type.as_str(), "Sqrt" | "Reciprocal" | "Abs") =>
                {
                    let f: fn(f64) -> f64 = match n.op_type.as_str() {
                        "Sqrt" => f64::sqrt,
                        "Reciprocal" => |v| 1.0 / v,
                        _ => f64::abs,
                    };
                    one(Value::Const(map(c, f)))
                }
                _ => Err(not_polynomial(&n.op_type)),
            },
            "Cast" => match &ins[0] {
                Some(Value::Const(c)) => {
                    let to = a.int("to", 1);
                    if matches!(to, 6 | 7) {
                        one(Value::Const(map(c, f64::trunc)))
                    } else {
                        one(Value::Const(c.clone()))
                    }
                }
                Some(Value::Dyn(d)) if a.int("to", 1) == 1 => one(Value::Dyn(d.clone())),
                _ => Err("Cast of the input to a non-float type".into()),
            },
            "Shape" => {
                let dims: Vec<f64> = match &ins[0] {
                    Some(Value::Dyn(d)) => {
                        std::iter::once(1.0).chain(d.shape.iter().map(|&s| s as f64)).collect()
                    }
                    Some(Value::Const(c)) => c.dims.iter().map(|&s| s as f64).collect(),
                    _ => return Err("no input".into()),
                };
                let r = dims.len() as i64;
                let norm = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let (s, e) = (norm(a.int("start", 0)), norm(a.int("end", r)));
                one(Value::Const(Const::vector(dims[s..e.max(s)].to_vec())))
            }
            "Gather" => {
                let data = self.konst(ins, 0, "Gather's data")?;
                let idx = self.konst(ins, 1, "Gather's indices")?;
                if data.dims.len() != 1 || a.int("axis", 0) != 0 {
                    return Err("Gather is supported on 1-D constants only".into());
                }
                let len = data.data.len() as i64;
                let out = idx
                    .ints()?
                    .iter()
                    .map(|&i| {
                        let j = if i < 0 { i + len } else { i };
                        data.data.get(j as usize).copied().ok_or(format!("index {i} out of range"))
                    })
                    .collect::<R<Vec<f64>>>()?;
                one(Value::Const(Const { dims: idx.dims.clone(), data: out }))
            }
            "Unsqueeze" | "Squeeze" => {
                let c =
                    self.konst(ins, 0, "the data (a computed tensor cannot be reshaped this way)")?;
                let axes = match a.ints("axes") {
                    Some(v) => Some(v),
                    None => self.opt_konst(ins, 1, "axes")?.map(|t| t.ints()).transpose()?,
                };
                let mut dims = c.dims.clone();
                if n.op_type == "Unsqueeze" {
                    let axes = axes.ok_or("Unsqueeze without axes")?;
                    let r = (dims.len() + axes.len()) as i64;
                    let mut ax: Vec<usize> =
                        axes.iter().map(|&x| (if x < 0 { x + r } else { x }) as usize).collect();
                    ax.sort();
                    for x in ax {
                        if x > dims.len() {
                            return Err("Unsqueeze axis out of range".into());
                        }
                        dims.insert(x, 1);
                    }
                } else {
                    let r = dims.len() as i64;
                    match axes {
                        None => dims.retain(|&d| d != 1),
                        Some(axes) => {
                            let ax: HashSet<usize> = axes
                                .iter()
                                .map(|&x| (if x < 0 { x + r } else { x }) as usize)
                                .collect();
                            dims = dims
                                .iter()
                                .enumerate()
                                .filter(|(i, _)| !ax.contains(i))
                                .map(|(_, &d)| d)
                                .collect();
                        }
                    }
                }
                one(Value::Const(Const { dims, data: c.data.clone() }))
            }
            "Concat" => {
                let mut data = Vec::new();
                for i in 0..ins.len() {
                    let c = self.konst(
                        ins,
                        i,
                        "every Concat input (a computed tensor cannot be concatenated)",
                    )?;
                    if c.dims.len() > 1 {
                        return Err("Concat is supported on 1-D constants only".into());
                    }
                    data.extend_from_slice(&c.data);
                }
                one(Value::Const(Const::vector(data)))
            }
            "Reshape" | "Flatten" => self.reshape(n, ins, &a),
            "Conv" => self.conv(n, ins, &a),
            "Gemm" => self.gemm(n, ins, &a),
            "MatMul" => {
                let d = self.dyn_input(&in0())?;
                let b = self.konst(ins, 1, "MatMul's second operand")?;
                if d.pshape.len() != 1
                    || d.shape.len() != 1
                    || b.dims.len() != 2
                    || b.dims[0] != d.shape[0]
                {
                    return Err(format!(
                        "MatMul of [N, {:?}] by a constant {:?}: only [N, F] x [F, out] is supported",
                        d.shape, b.dims
                    ));
                }
                let (fin, fout) = (b.dims[0], b.dims[1]);
                let wt = transpose(&b.f32(), fin, fout);
                self.linear(n, &n.input[1], d, wt, fout, fin, None)
            }
            "BatchNormalization" => {
                if a.int("training_mode", 0) != 0 || n.output.iter().skip(1).any(|o| !o.is_empty())
                {
                    return Err("BatchNormalization in training mode".into());
                }
                let Some(Value::Dyn(d)) = &ins[0] else {
                    return Err("BatchNormalization of a constant".into());
                };
                let eps = a.float("epsilon", 1e-5) as f64;
                let c = d.shape[0];
                let get = |i: usize, what: &str| -> R<Vec<f64>> {
                    let t = self.konst(ins, i, what)?;
                    if t.data.len() != c {
                        return Err(format!("{what} has {} values for {c} channels", t.data.len()));
                    }
                    Ok(t.data.clone())
                };
                let (g, b, m, v) =
                    (get(1, "scale")?, get(2, "bias")?, get(3, "mean")?, get(4, "var")?);
                let k: Vec<f64> = g.iter().zip(&v).map(|(g, v)| g / (v + eps).sqrt()).collect();
                let shift: Vec<f64> = (0..c).map(|i| b[i] - m[i] * k[i]).collect();
                let mut d = d.clone();
                d.poly = d.poly.mul(&Poly::constant(&k))?.add(&Poly::constant(&shift))?;
                one(Value::Dyn(d))
            }
            "Relu" => {
                let d = self.dyn_input(&in0())?;
                let name = self.unique(&format!("{}.relu", d.node));
                self.push(name.clone(), vec![d.node.clone()], Op::Relu);
                one(Value::Dyn(Dyn { node: name, ..d }))
            }
            "MaxPool" | "AveragePool" => self.pool(n, &a),
            "GlobalAveragePool" => {
                let d = self.dyn_input(&in0())?;
                self.global_pool(n, d, true)
            }
            "ReduceMean" => {
                let axes = match a.ints("axes") {
                    Some(v) => v,
                    None => self
                        .opt_konst(ins, 1, "axes")?
                        .map(|t| t.ints())
                        .transpose()?
                        .unwrap_or_default(),
                };
                let mut ax: Vec<i64> =
                    axes.iter().map(|&x| if x < 0 { x + 4 } else { x }).collect();
                ax.sort();
                let d = match &ins[0] {
                    Some(Value::Dyn(d)) if d.shape.len() == 3 && ax == [2, 3] => self.dyn_input(&in0())?,
                    _ => {
                        return Err(format!(
                            "ReduceMean over axes {axes:?}: only the mean over H and W of an [N, C, H, W] tensor (global average pooling) is supported"
                        ))
                    }
                };
                self.global_pool(n, d, a.int("keepdims", 1) != 0)
            }

            "Softmax" | "LogSoftmax" => {
                let out = n.output.first().cloned().unwrap_or_default();
                let at_output =
                    self.outputs.contains(&out) && self.uses.get(&out).copied().unwrap_or(0) == 0;
                match &ins[0] {
                    Some(Value::Dyn(d)) if at_output => {
                        self.notes.push(format!(
                            "dropped the final {} '{}': polypi returns the logits before it (the \
                             argmax and the ranking of the classes are unchanged)",
                            n.op_type, n.name
                        ));
                        one(Value::Dyn(d.clone()))
                    }
                    _ => Err(format!(
                        "{} in the middle of the network is not a polynomial (only a final {} \
                         at the output can be dropped)",
                        n.op_type, n.op_type
                    )),
                }
            }
            other => Err(refusal_by_type(other)
                .unwrap_or_else(|| format!("op {other} is not supported by the importer"))),
        }
    }

    /// Add, Sub, Mul, Div.
    fn binary(&mut self, n: &NodeProto, ins: &[Option<Value>]) -> R<Vec<Value>> {
        let op = n.op_type.as_str();
        let (Some(x), Some(y)) = (ins.first().cloned().flatten(), ins.get(1).cloned().flatten())
        else {
            return Err(format!("{op} needs two inputs"));
        };
        let f: fn(f64, f64) -> f64 = match op {
            "Add" => |a, b| a + b,
            "Sub" => |a, b| a - b,
            "Mul" => |a, b| a * b,
            _ => |a, b| a / b,
        };
        let combine = |p: &Poly, q: &Poly| -> R<Poly> {
            match op {
                "Add" => p.add(q),
                "Sub" => p.add(&q.neg()),
                "Mul" => p.mul(q),
                _ => {
                    if q.degree() > 0 {
                        return Err("division by a tensor is not a polynomial".into());
                    }
                    if q.rows.iter().any(|r| r.first().copied().unwrap_or(0.0) == 0.0) {
                        return Err("division by zero".into());
                    }
                    p.mul(&Poly { rows: q.rows.iter().map(|r| vec![1.0 / r[0]]).collect() })
                }
            }
        };
        let out = match (&x, &y) {
            (Value::Const(a), Value::Const(b)) => Value::Const(broadcast(a, b, f)?),
            (Value::Dyn(d), Value::Const(c)) => {
                let q = Self::const_poly(c, d)?;
                let only_use = self.uses.get(&n.input[0]).copied() == Some(1);
                if matches!(op, "Add" | "Sub") && only_use && d.poly.is_identity() {
                    // A bias added to a layer's output (MatMul + Add): into the layer's bias.
                    let b = if op == "Sub" { q.neg() } else { q.clone() };
                    if self.add_bias(&d.node, &b) {
                        return Ok(vec![Value::Dyn(d.clone())]);
                    }
                }
                Value::Dyn(Dyn { poly: combine(&d.poly, &q)?, ..d.clone() })
            }
            (Value::Const(c), Value::Dyn(d)) => {
                if op == "Div" {
                    return Err("a constant divided by a tensor is not a polynomial".into());
                }
                let q = Self::const_poly(c, d)?;
                Value::Dyn(Dyn { poly: combine(&q, &d.poly)?, ..d.clone() })
            }
            (Value::Dyn(p), Value::Dyn(q)) if p.node == q.node && p.shape == q.shape => {
                Value::Dyn(Dyn { poly: combine(&p.poly, &q.poly)?, ..p.clone() })
            }
            (Value::Dyn(p), Value::Dyn(q)) if op == "Add" => {
                if p.shape != q.shape {
                    return Err(format!(
                        "Add of tensors of shapes {:?} and {:?}: a residual add needs equal shapes",
                        p.shape, q.shape
                    ));
                }
                let p = self.dyn_input(&n.input[0])?;
                let q = self.dyn_input(&n.input[1])?;
                if p.pshape != q.pshape {
                    return Err("Add of a pooled and an unpooled tensor".into());
                }
                let name = self.unique(if n.name.is_empty() { "add" } else { &n.name });
                self.push(name.clone(), vec![p.node.clone(), q.node.clone()], Op::Add);
                Value::Dyn(Dyn { node: name, ..p })
            }
            _ => {
                return Err(format!(
                    "{op} of two different computed tensors is not a polynomial in one variable \
                     (only a residual Add of two tensors is supported)"
                ))
            }
        };
        Ok(vec![out])
    }

    /// Adds the constant `q` (degree 0, shared or per output channel) to the bias of the
    /// Conv2d / Linear node `node`, when it is such a node and the last one written (so nothing
    /// reads its output yet). Returns whether it did.
    fn add_bias(&mut self, node: &str, q: &Poly) -> bool {
        let Some(last) = self.nodes.last_mut() else { return false };
        if last.name != node || q.degree() > 0 {
            return false;
        }
        let (weight, bias) = match &mut last.op {
            Op::Conv2d { weight, bias, .. } | Op::Linear { weight, bias } => (weight.clone(), bias),
            _ => return false,
        };
        let co = self.tensors[&weight].shape[0];
        if q.rows.len() != 1 && q.rows.len() != co {
            return false;
        }
        let name = bias.get_or_insert_with(|| format!("{node}.bias")).clone();
        let t = self
            .tensors
            .entry(name)
            .or_insert_with(|| TensorF32 { shape: vec![co], data: vec![0.0; co] });
        for (o, b) in t.data.iter_mut().enumerate() {
            let r = &q.rows[if q.rows.len() == 1 { 0 } else { o }];
            *b = (*b as f64 + r.first().copied().unwrap_or(0.0)) as f32;
        }
        true
    }

    /// Reshape and Flatten: of constants, any; of the input, only to `[N, features]`.
    fn reshape(&mut self, n: &NodeProto, ins: &[Option<Value>], a: &Attrs) -> R<Vec<Value>> {
        let flatten = n.op_type == "Flatten";
        if let Some(Some(Value::Const(c))) = ins.first() {
            let dims = if flatten {
                let ax = a.int("axis", 1).rem_euclid(c.dims.len().max(1) as i64) as usize;
                vec![c.dims[..ax].iter().product(), c.dims[ax..].iter().product()]
            } else {
                let t = self.konst(ins, 1, "the target shape")?.ints()?;
                resolve_shape(&c.dims, &t)?
            };
            return Ok(vec![Value::Const(Const { dims, data: c.data.clone() })]);
        }
        let Some(Some(Value::Dyn(d0))) = ins.first() else {
            return Err("no input".into());
        };
        let feat: usize = d0.shape.iter().product();
        let ok = if flatten {
            a.int("axis", 1) == 1 || a.int("axis", 1) == -(d0.shape.len() as i64)
        } else {
            let t = self.konst(ins, 1, "the target shape")?.ints()?;
            t.len() == 2
                && (-1..=1).contains(&t[0])
                && (t[1] == -1 || t[1] == feat as i64)
                && !(t[0] == -1 && t[1] == -1)
        };
        if !ok {
            return Err(format!(
                "reshaping the [N, {:?}] tensor is supported only to [N, {feat}] (flatten)",
                d0.shape
            ));
        }
        if d0.shape.len() == 1 {
            return Ok(vec![Value::Dyn(d0.clone())]);
        }
        let d = self.dyn_input(&n.input[0])?;
        if d.pshape.len() == 1 {
            // After a global pooling: the polypi node is [C] already.
            return Ok(vec![Value::Dyn(Dyn { shape: vec![feat], ..d })]);
        }
        let name = self.unique(&format!("{}.flatten", d.node));
        self.push(name.clone(), vec![d.node.clone()], Op::Flatten);
        Ok(vec![Value::Dyn(Dyn {
            node: name,
            shape: vec![feat],
            pshape: vec![feat],
            poly: Poly::identity(),
        })])
    }

    /// Conv (2-D; groups, strides, symmetric pads).
    fn conv(&mut self, n: &NodeProto, ins: &[Option<Value>], a: &Attrs) -> R<Vec<Value>> {
        let w = self.konst(ins, 1, "the weight")?.clone();
        let b = self.opt_konst(ins, 2, "the bias")?.cloned();
        if w.dims.len() != 4 {
            return Err(format!("only 2-D convolutions are supported (weight {:?})", w.dims));
        }
        let auto_pad = a.string("auto_pad", "NOTSET");
        if !matches!(auto_pad.as_str(), "NOTSET" | "VALID" | "") {
            return Err(format!(
                "auto_pad {auto_pad} is not supported (export with explicit pads)"
            ));
        }
        if a.ints("dilations").is_some_and(|d| d.iter().any(|&x| x != 1)) {
            return Err(format!(
                "dilations {:?} are not supported",
                a.ints("dilations").unwrap_or_default()
            ));
        }
        let strides = a.ints("strides").unwrap_or(vec![1, 1]);
        let pads = a.ints("pads").unwrap_or(vec![0; 4]);
        if strides.len() != 2 || strides[0] != strides[1] || strides[0] < 1 {
            return Err(format!("strides {strides:?}: polypi's Conv2d has one stride for H and W"));
        }
        if pads.len() != 4 || pads.iter().any(|&p| p != pads[0]) || pads[0] < 0 {
            return Err(format!(
                "pads {pads:?} (begin H, begin W, end H, end W): polypi's Conv2d pads all four sides equally"
            ));
        }
        let groups = a.int("group", 1);
        let d = self.dyn_input(&n.input[0])?;
        if d.shape.len() != 3 || d.pshape != d.shape {
            return Err(format!("Conv needs an [N, C, H, W] input, got [N, {:?}]", d.shape));
        }
        let (c, h, wd) = (d.shape[0], d.shape[1], d.shape[2]);
        let (co, kh, kw) = (w.dims[0], w.dims[2], w.dims[3]);
        if groups < 1 || c % groups as usize != 0 || w.dims[1] * groups as usize != c {
            return Err(format!(
                "weight {:?} with group {groups} does not fit {c} input channels",
                w.dims
            ));
        }
        let (s, p) = (strides[0] as usize, pads[0] as usize);
        if p > kh.max(kw) {
            return Err(format!("pads {p} larger than the kernel {kh}x{kw}"));
        }
        let side = |x: usize, k: usize| -> R<usize> {
            (x + 2 * p)
                .checked_sub(k)
                .map(|v| v / s + 1)
                .ok_or(format!("kernel {kh}x{kw} larger than the padded input {h}x{wd}"))
        };
        let (oh, ow) = (side(h, kh)?, side(wd, kw)?);
        let name = self.node_name(n, Some(&n.input[1]));
        let wt = self.tensor(format!("{name}.weight"), w.dims.clone(), w.f32());
        let bias = match b {
            Some(b) if b.data.len() == co => {
                Some(self.tensor(format!("{name}.bias"), vec![co], b.f32()))
            }
            Some(b) => {
                return Err(format!("bias has {} values for {co} output channels", b.data.len()))
            }
            None => None,
        };
        self.push(
            name.clone(),
            vec![d.node.clone()],
            Op::Conv2d { weight: wt, bias, stride: s, padding: p, groups: groups as usize },
        );
        let shape = vec![co, oh, ow];
        Ok(vec![Value::Dyn(Dyn {
            node: name,
            shape: shape.clone(),
            pshape: shape,
            poly: Poly::identity(),
        })])
    }

    /// Gemm: `alpha * A * op(B) + beta * C` with A the input `[N, F]`, B and C constants.
    fn gemm(&mut self, n: &NodeProto, ins: &[Option<Value>], a: &Attrs) -> R<Vec<Value>> {
        if a.int("transA", 0) != 0 {
            return Err("Gemm with transA = 1 is not supported".into());
        }
        let b = self.konst(ins, 1, "Gemm's B (the weight)")?.clone();
        let c = self.opt_konst(ins, 2, "Gemm's C (the bias)")?.cloned();
        let d = self.dyn_input(&n.input[0])?;
        if d.shape.len() != 1 || b.dims.len() != 2 {
            return Err(format!(
                "Gemm needs an [N, F] input and a 2-D weight, got [N, {:?}] and {:?}",
                d.shape, b.dims
            ));
        }
        let (alpha, beta) = (a.float("alpha", 1.0), a.float("beta", 1.0));
        let trans_b = a.int("transB", 0) != 0;
        let (fout, fin) = if trans_b { (b.dims[0], b.dims[1]) } else { (b.dims[1], b.dims[0]) };
        if fin != d.shape[0] {
            return Err(format!("weight {:?} does not fit {} input features", b.dims, d.shape[0]));
        }
        let mut wt = if trans_b { b.f32() } else { transpose(&b.f32(), fin, fout) };
        if alpha != 1.0 {
            wt.iter_mut().for_each(|v| *v *= alpha);
        }
        let bias = match c {
            None => None,
            Some(c) if c.data.len() == fout || c.data.len() == 1 => Some(
                (0..fout)
                    .map(|i| c.data[if c.data.len() == 1 { 0 } else { i }] as f32 * beta)
                    .collect(),
            ),
            Some(c) => return Err(format!("C has shape {:?} for {fout} outputs", c.dims)),
        };
        self.linear(n, &n.input[1], d, wt, fout, fin, bias)
    }

    #[allow(clippy::too_many_arguments)]
    fn linear(
        &mut self,
        n: &NodeProto,
        wname: &str,
        d: Dyn,
        wt: Vec<f32>,
        fout: usize,
        fin: usize,
        bias: Option<Vec<f32>>,
    ) -> R<Vec<Value>> {
        let name = self.node_name(n, Some(wname));
        let weight = self.tensor(format!("{name}.weight"), vec![fout, fin], wt);
        let bias = bias.map(|b| self.tensor(format!("{name}.bias"), vec![fout], b));
        self.push(name.clone(), vec![d.node.clone()], Op::Linear { weight, bias });
        Ok(vec![Value::Dyn(Dyn {
            node: name,
            shape: vec![fout],
            pshape: vec![fout],
            poly: Poly::identity(),
        })])
    }

    /// MaxPool and AveragePool: square window, one stride; max-pool pads all sides equally,
    /// average pooling has none.
    fn pool(&mut self, n: &NodeProto, a: &Attrs) -> R<Vec<Value>> {
        let max = n.op_type == "MaxPool";
        if n.output.iter().skip(1).any(|o| !o.is_empty()) {
            return Err("MaxPool's indices output is not supported".into());
        }
        let k = a.ints("kernel_shape").unwrap_or_default();
        let s = a.ints("strides").unwrap_or(vec![1, 1]);
        let p = a.ints("pads").unwrap_or(vec![0; 4]);
        let auto_pad = a.string("auto_pad", "NOTSET");
        if k.len() != 2 || k[0] != k[1] || k[0] < 1 {
            return Err(format!("kernel {k:?}: polypi pools with square windows"));
        }
        if s.len() != 2 || s[0] != s[1] || s[0] < 1 {
            return Err(format!("strides {s:?}: polypi pools with one stride for H and W"));
        }
        if p.len() != 4 || p.iter().any(|&x| x != p[0]) || p[0] < 0 {
            return Err(format!("pads {p:?}: polypi pads all four sides equally"));
        }
        if !max && p[0] != 0 && a.int("count_include_pad", 0) == 0 {
            return Err(format!(
                "AveragePool with pads {p:?} and count_include_pad = 0: polypi's padded average \
                 pooling counts the zeros in the divisor (PyTorch's default count_include_pad=True)"
            ));
        }
        if a.int("ceil_mode", 0) != 0 {
            return Err("ceil_mode = 1 is not supported".into());
        }
        if a.ints("dilations").is_some_and(|d| d.iter().any(|&x| x != 1)) {
            return Err("dilated pooling is not supported".into());
        }
        if !matches!(auto_pad.as_str(), "NOTSET" | "VALID" | "") {
            return Err(format!("auto_pad {auto_pad} is not supported"));
        }
        let d = self.dyn_input(&n.input[0])?;
        if d.shape.len() != 3 || d.pshape != d.shape {
            return Err(format!(
                "{} needs an [N, C, H, W] input, got [N, {:?}]",
                n.op_type, d.shape
            ));
        }
        let (k, s, p) = (k[0] as usize, s[0] as usize, p[0] as usize);
        if p > k / 2 {
            return Err(format!("pads {p} larger than half the kernel {k}"));
        }
        let side = |x: usize| {
            (x + 2 * p)
                .checked_sub(k)
                .map(|v| v / s + 1)
                .ok_or(format!("kernel {k} larger than the input"))
        };
        let shape = vec![d.shape[0], side(d.shape[1])?, side(d.shape[2])?];
        let name = self.unique(if n.name.is_empty() { &n.op_type } else { &n.name });
        let op = if max {
            Op::MaxPool2d { kernel: k, stride: s, padding: p }
        } else {
            Op::AvgPool2d { kernel: k, stride: s, padding: p }
        };
        self.push(name.clone(), vec![d.node.clone()], op);
        Ok(vec![Value::Dyn(Dyn {
            node: name,
            shape: shape.clone(),
            pshape: shape,
            poly: Poly::identity(),
        })])
    }

    /// GlobalAveragePool / ReduceMean over H, W: a GlobalAvgPool node (`[C]`), standing for
    /// ONNX's `[C, 1, 1]` when `keepdims`.
    fn global_pool(&mut self, n: &NodeProto, d: Dyn, keepdims: bool) -> R<Vec<Value>> {
        if d.shape.len() != 3 || d.pshape != d.shape {
            return Err(format!(
                "global average pooling needs an [N, C, H, W] input, got [N, {:?}]",
                d.shape
            ));
        }
        let c = d.shape[0];
        let name = self.unique(if n.name.is_empty() { "global_avg_pool" } else { &n.name });
        self.push(name.clone(), vec![d.node.clone()], Op::GlobalAvgPool);
        let shape = if keepdims { vec![c, 1, 1] } else { vec![c] };
        Ok(vec![Value::Dyn(Dyn { node: name, shape, pshape: vec![c], poly: Poly::identity() })])
    }

    /// Folds per-channel affine activations (degree <= 1) into the Conv2d / Linear right before
    /// them when that layer's output feeds nothing else: `w'[o] = k[o] * w[o]`,
    /// `b'[o] = k[o] * b[o] + c[o]` (f64, rounded to f32 once).
    pub fn fold_affine(&mut self) {
        let mut i = 0;
        while i < self.nodes.len() {
            let Some((k, c)) = self.affine_of(i) else {
                i += 1;
                continue;
            };
            let src = self.nodes[i].inputs[0].clone();
            let users = self.nodes.iter().filter(|m| m.inputs.contains(&src)).count();
            let Some(j) = self.nodes.iter().position(|m| m.name == src) else {
                i += 1;
                continue;
            };
            let is_last = |name: &str, nodes: &[Node]| nodes.last().is_some_and(|l| l.name == name);
            if users != 1 || is_last(&src, &self.nodes) {
                i += 1;
                continue;
            }
            let (wname, bname, co) = match &self.nodes[j].op {
                Op::Conv2d { weight, bias, .. } | Op::Linear { weight, bias } => {
                    (weight.clone(), bias.clone(), self.tensors[weight].shape[0])
                }
                _ => {
                    i += 1;
                    continue;
                }
            };
            let ch = |v: &[f64], o: usize| if v.len() == 1 { v[0] } else { v[o] };
            let w = self.tensors.get_mut(&wname).expect("weight exists");
            let per = w.data.len() / co;
            for o in 0..co {
                for x in &mut w.data[o * per..(o + 1) * per] {
                    *x = (*x as f64 * ch(&k, o)) as f32;
                }
            }
            let old_b: Vec<f64> = match &bname {
                Some(b) => self.tensors[b].data.iter().map(|&v| v as f64).collect(),
                None => vec![0.0; co],
            };
            let nb: Vec<f32> = (0..co).map(|o| (old_b[o] * ch(&k, o) + ch(&c, o)) as f32).collect();
            let bname = bname.unwrap_or_else(|| format!("{src}.bias"));
            self.tensors.insert(bname.clone(), TensorF32 { shape: vec![co], data: nb });
            match &mut self.nodes[j].op {
                Op::Conv2d { bias, .. } | Op::Linear { bias, .. } => *bias = Some(bname),
                _ => {}
            }
            // Remove the activation node; its consumers read the layer. Its tensors go too.
            let act = self.nodes.remove(i);
            self.remove_tensors_of(&act);
            let was_last = i == self.nodes.len();
            for m in &mut self.nodes {
                for inp in &mut m.inputs {
                    if *inp == act.name {
                        *inp = src.clone();
                    }
                }
            }
            if was_last {
                let l = self.nodes.remove(j);
                self.nodes.push(l);
            }
            self.activations.retain(|s| !s.starts_with(&format!("{}: ", act.name)));
        }
    }

    /// `(k, c)` when node `i` is a degree <= 1 activation `k*x + c` (per channel or shared).
    fn affine_of(&self, i: usize) -> Option<(Vec<f64>, Vec<f64>)> {
        let t = |n: &str| self.tensors[n].data.iter().map(|&v| v as f64).collect::<Vec<f64>>();
        match &self.nodes[i].op {
            Op::X2Act { s, w0, w1, b } if self.tensors[w0].data.iter().all(|&v| v * s == 0.0) => {
                Some((t(w1), t(b)))
            }
            Op::Poly { coefficients, coefficients_tensor: None } if coefficients.len() <= 2 => {
                let c = |k: usize| coefficients.get(k).copied().unwrap_or(0.0) as f64;
                Some((vec![c(1)], vec![c(0)]))
            }
            Op::Poly { coefficients_tensor: Some(name), .. } => {
                let tt = &self.tensors[name];
                if tt.shape[1] > 2
                    && tt.data.chunks(tt.shape[1]).any(|r| r[2..].iter().any(|&v| v != 0.0))
                {
                    return None;
                }
                let col = |k: usize| {
                    tt.data
                        .chunks(tt.shape[1])
                        .map(|r| r.get(k).copied().unwrap_or(0.0) as f64)
                        .collect()
                };
                Some((col(1), col(0)))
            }
            _ => None,
        }
    }

    fn remove_tensors_of(&mut self, node: &Node) {
        let names: Vec<String> = match &node.op {
            Op::X2Act { w0, w1, b, .. } => vec![w0.clone(), w1.clone(), b.clone()],
            Op::Poly { coefficients_tensor: Some(t), .. } => vec![t.clone()],
            _ => vec![],
        };
        for n in names {
            self.tensors.remove(&n);
        }
    }
}

/// How many leading inputs an op needs (the importer reads them by position).
fn min_inputs(op: &str) -> usize {
    match op {
        "Constant" => 0,
        "BatchNormalization" => 5,
        "Conv" | "Gemm" | "MatMul" | "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Reshape"
        | "Gather" => 2,
        _ => 1,
    }
}

/// Largest constant the importer computes (values), against absurd broadcasts.
const MAX_CONST: usize = 1 << 28;

/// ONNX ops the importer converts (some only on constants, see docs/import.md).
const SUPPORTED: &[&str] = &[
    "Constant",
    "Identity",
    "Dropout",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Neg",
    "Sqrt",
    "Reciprocal",
    "Abs",
    "Cast",
    "Shape",
    "Gather",
    "Unsqueeze",
    "Squeeze",
    "Concat",
    "Reshape",
    "Flatten",
    "Conv",
    "Gemm",
    "MatMul",
    "BatchNormalization",
    "Relu",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "ReduceMean",
    "Softmax",
    "LogSoftmax",
];

/// Non-polynomial element-wise functions of a tensor.
const NOT_POLYNOMIAL: &[&str] = &[
    "Exp",
    "Sigmoid",
    "Tanh",
    "Floor",
    "Ceil",
    "Erf",
    "Log",
    "Relu6",
    "LeakyRelu",
    "PRelu",
    "Elu",
    "Selu",
    "Celu",
    "Gelu",
    "HardSigmoid",
    "HardSwish",
    "Softplus",
    "Softsign",
    "Mish",
    "Clip",
    "Max",
    "Min",
    "Round",
    "Sign",
    "Sin",
    "Cos",
];

fn is_elementwise(op: &str) -> bool {
    ELEMENTWISE.contains(&op) || NOT_POLYNOMIAL.contains(&op)
}

fn not_polynomial(op: &str) -> String {
    format!(
        "{op} of a tensor is not a polynomial (polypi runs only polynomials, ReLU and max-pooling \
         between linear layers)"
    )
}

/// Why an op is refused whatever its inputs (`None`: it depends on them).
fn refusal_by_type(op: &str) -> Option<String> {
    if NOT_POLYNOMIAL.contains(&op) {
        Some(not_polynomial(op))
    } else if SUPPORTED.contains(&op) {
        None
    } else {
        Some(format!("op {op} is not supported by the importer"))
    }
}

/// Element-wise `f(a, b)` with numpy broadcasting.
fn broadcast(a: &Const, b: &Const, f: impl Fn(f64, f64) -> f64) -> R<Const> {
    let r = a.dims.len().max(b.dims.len());
    let pad = |d: &[usize]| -> Vec<usize> {
        std::iter::repeat_n(1, r - d.len()).chain(d.iter().copied()).collect()
    };
    let (da, db) = (pad(&a.dims), pad(&b.dims));
    let mut dims = Vec::with_capacity(r);
    for i in 0..r {
        let (x, y) = (da[i], db[i]);
        dims.push(match (x, y) {
            _ if x == y => x,
            (1, _) => y,
            (_, 1) => x,
            _ => return Err(format!("shapes {:?} and {:?} do not broadcast", a.dims, b.dims)),
        });
    }
    let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).filter(|&n| n <= MAX_CONST);
    let n =
        n.ok_or(format!("broadcasting {:?} with {:?} gives too many values", a.dims, b.dims))?;
    let strides = |d: &[usize]| -> Vec<usize> {
        let mut s = vec![0; r];
        let mut acc = 1;
        for i in (0..r).rev() {
            s[i] = if d[i] == 1 { 0 } else { acc };
            acc *= d[i];
        }
        s
    };
    let (sa, sb) = (strides(&da), strides(&db));
    let mut data = Vec::with_capacity(n);
    let mut idx = vec![0usize; r];
    for _ in 0..n {
        let (ia, ib) = (0..r).fold((0, 0), |(p, q), i| (p + idx[i] * sa[i], q + idx[i] * sb[i]));
        data.push(f(a.data[ia], b.data[ib]));
        for i in (0..r).rev() {
            idx[i] += 1;
            if idx[i] < dims[i] {
                break;
            }
            idx[i] = 0;
        }
    }
    Ok(Const { dims, data })
}

fn map(c: &Const, f: impl Fn(f64) -> f64) -> Const {
    Const { dims: c.dims.clone(), data: c.data.iter().map(|&v| f(v)).collect() }
}

/// `[rows, cols]` -> `[cols, rows]`.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; m.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = m[i * cols + j];
        }
    }
    t
}

/// ONNX Reshape's target (0 = copy the dim, -1 = infer one) resolved against `dims`.
fn resolve_shape(dims: &[usize], t: &[i64]) -> R<Vec<usize>> {
    let total: usize = dims.iter().product();
    let mut out: Vec<usize> = Vec::with_capacity(t.len());
    let mut infer = None;
    for (i, &v) in t.iter().enumerate() {
        match v {
            0 => out.push(*dims.get(i).ok_or("Reshape: 0 beyond the input's rank")?),
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            v if v > 0 => out.push(v as usize),
            _ => return Err(format!("Reshape target {t:?} is invalid")),
        }
    }
    let known = out.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let known = known.ok_or(format!("Reshape target {t:?} overflows"))?;
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("Reshape target {t:?} does not fit {total} values"));
        }
        out[i] = total / known;
    }
    if out.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(total) {
        return Err(format!("Reshape target {t:?} does not fit {total} values"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        let a = Const { dims: vec![2, 1], data: vec![1.0, 2.0] };
        let b = Const { dims: vec![3], data: vec![10.0, 20.0, 30.0] };
        let c = broadcast(&a, &b, |x, y| x + y).unwrap();
        assert_eq!(c.dims, vec![2, 3]);
        assert_eq!(c.data, vec![11.0, 21.0, 31.0, 12.0, 22.0, 32.0]);
        assert!(broadcast(&Const::vector(vec![1.0, 2.0]), &b, |x, _| x).is_err());
    }

    #[test]
    fn reshape_targets_resolve() {
        assert_eq!(resolve_shape(&[1, 4, 2, 2], &[1, -1]).unwrap(), vec![1, 16]);
        assert_eq!(resolve_shape(&[1, 4, 2, 2], &[0, -1]).unwrap(), vec![1, 16]);
        assert!(resolve_shape(&[1, 4, 2, 2], &[3, -1]).is_err());
        assert!(resolve_shape(&[1, 4], &[-1, -1]).is_err());
    }

    fn converter() -> Converter {
        let mut cv = Converter::new(TensorReader::new(std::path::Path::new("m.onnx")));
        cv.push("input".into(), vec![], Op::Input);
        let d = Dyn {
            node: "input".into(),
            shape: vec![2, 4, 4],
            pshape: vec![2, 4, 4],
            poly: Poly::identity(),
        };
        cv.values.insert("x".into(), Value::Dyn(d));
        cv
    }

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = format!("{op}_node");
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = vec![output.into()];
        n
    }

    #[test]
    fn malformed_nodes_are_listed_not_panics() {
        let mut cv = converter();
        cv.values.insert(
            "big".into(),
            Value::Const(Const { dims: vec![1 << 20], data: vec![0.0; 1 << 20] }),
        );
        cv.values.insert(
            "big2".into(),
            Value::Const(Const { dims: vec![1 << 20, 1], data: vec![0.0; 1 << 20] }),
        );
        cv.node(0, &node("Conv", &["x"], "a"));
        cv.node(1, &node("BatchNormalization", &["x", "", "", "", ""], "b"));
        cv.node(2, &node("Identity", &[], "c"));
        cv.node(3, &node("Mul", &["big", "big2"], "d"));
        cv.node(4, &node("Gather", &["x", "big"], "e"));
        let reasons: Vec<&str> = cv.unsupported.iter().map(|u| u.reason.as_str()).collect();
        assert_eq!(cv.unsupported.len(), 5, "{reasons:?}");
        assert!(reasons[0].contains("input #1 is missing"), "{reasons:?}");
        assert!(reasons[1].contains("input #1 is missing"), "{reasons:?}");
        assert!(reasons[2].contains("input #0 is missing"), "{reasons:?}");
        assert!(reasons[3].contains("too many values"), "{reasons:?}");
        assert!(reasons[4].contains("constant"), "{reasons:?}");
    }

    #[test]
    fn per_channel_and_scalar_constants_form_the_polynomial() {
        let mut cv = converter();
        cv.values.insert(
            "w".into(),
            Value::Const(Const { dims: vec![1, 2, 1, 1], data: vec![2.0, 3.0] }),
        );
        cv.values.insert("bad".into(), Value::Const(Const { dims: vec![4], data: vec![1.0; 4] }));
        cv.values.insert("two".into(), Value::Const(Const::scalar(2.0)));
        cv.node(0, &node("Pow", &["x", "two"], "sq"));
        cv.node(1, &node("Mul", &["w", "sq"], "wsq"));
        cv.node(2, &node("Add", &["wsq", "x"], "act"));
        cv.node(3, &node("Mul", &["x", "bad"], "spatial"));
        assert_eq!(cv.unsupported.len(), 1);
        assert!(cv.unsupported[0].reason.contains("varies along axis 3"), "{:?}", cv.unsupported);
        let Some(Value::Dyn(d)) = cv.values.get("act") else { panic!("act is not dynamic") };
        assert_eq!(d.poly.normalised(), vec![vec![0.0, 1.0, 2.0], vec![0.0, 1.0, 3.0]]);
    }

    #[test]
    fn transpose_swaps_axes() {
        assert_eq!(
            transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3),
            vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
    }
}
