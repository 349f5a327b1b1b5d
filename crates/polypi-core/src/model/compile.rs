//! Compile passes: a validated [`ModelFile`] (graph + weights) -> [`Plan`] (design.md §3, §5).
//!
//! Passes, in one walk over the nodes:
//! - `Identity` is removed; its consumers read its input.
//! - `BatchNorm2d` right after a `Conv2d` whose output feeds only that BN is folded into the conv:
//!   `w' = w * g/sqrt(var+eps)` per output channel, `b' = (b - mean) * g/sqrt(var+eps) + beta`.
//!   Any other BN becomes a per-channel degree-1 [`PolyLayer`] `[beta - mean*k, k]`,
//!   `k = g/sqrt(var+eps)`.
//! - `X2Act{s, w0, w1, b}` (PolyMPCNet / PASNet, Peng et al.: `s*w0*x^2 + w1*x + b` per channel)
//!   becomes a per-channel [`PolyLayer`] with rows `[b[c], w1[c], s*w0[c]]`.
//! - `PolyKerv{c_p, d_p, a_p}` (PolyKervNets, Aremu & Nandakumar; R-PKN: `a_p*(x + c_p)^d_p`)
//!   becomes a shared [`PolyLayer`]; its trained constants are folded into the server's private
//!   weights where the graph allows, so that they stay private and cost nothing:
//!   - `c_p` is added to the bias of the conv / linear layer that produces `x` (after BN folding)
//!     when that layer's output feeds only the PolyKerv; if `x` is the output of an `Add` read only
//!     by the PolyKerv, to the bias of an Add input that is such a conv / linear (R-PKN after a
//!     residual add);
//!   - `a_p` is multiplied into the weights (not the biases) of the next conv / linear layers
//!     when every path from the PolyKerv's output reaches one through `AvgPool2d`,
//!     `GlobalAvgPool` or `Flatten` layers (all linear, so they commute with the scale); e.g. a
//!     ResNet block's conv1 and its 1x1 projection shortcut;
//!   - what cannot be folded (e.g. `a_p` when the output feeds an identity shortcut, i.e. a
//!     residual `Add`, or is the network output) stays in the polynomial's public coefficients,
//!     the binomial expansion `c_k = a_p * C(d_p, k) * c_p^(d_p - k)`.
//! - `Poly` becomes a [`PolyLayer`] (one shared row, or one row per channel from the tensor).
//! - Every other op maps 1:1. Layers whose output reaches no output are dropped.
//!
//! [`compile_with`] with `fold_polykerv: false` keeps `c_p` and `a_p` in the coefficients (the
//! reference semantics).
//!
//! Polynomial rows are normalised: `degree` = highest power with a non-zero coefficient in any
//! row (at least 1), every row has exactly `degree + 1` coefficients (trailing zeros trimmed,
//! short rows zero-padded). Arithmetic of the folds is done in f64 and rounded to f32 once.

use std::collections::HashMap;

use super::file::{effective_degree, ModelFile};
use super::graph::Op;
use super::limits::{check_geometry, check_plan, Limits};
use super::plan::{ConvGeom, ConvLayer, Layer, LayerOp, LinearLayer, Plan, PolyLayer};
use crate::error::{Error, Result};

/// Options of [`compile_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileOptions {
    /// Fold PolyKerv's `c_p` into the preceding bias and `a_p` into the next layer's weights
    /// where possible (module docs). Default true; false keeps them as public coefficients.
    pub fold_polykerv: bool,
    /// Size limits the model must respect (checked on the graph and on the compiled plan, see
    /// [`super::limits`]). Default [`Limits::default`].
    pub limits: Limits,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions { fold_polykerv: true, limits: Limits::default() }
    }
}

/// Validates `file` and lowers it into a [`Plan`]: `layers[0]` is the input, `inputs` are indices
/// of earlier layers, `out_shape` is per sample. Errors: those of
/// [`ModelFile::infer_shapes_with`] (every node, with the default [`Limits`]), of
/// [`check_geometry`] (the compiled plan re-checked as a peer's skeleton would be) and of
/// [`check_plan`] ([`crate::Error::TooLarge`] for a plan over the size limits).
pub fn compile(file: &ModelFile) -> Result<Plan> {
    compile_with(file, CompileOptions::default())
}

/// [`compile`] with explicit [`CompileOptions`] (the limits of `opts.limits`). Errors: those of
/// [`ModelFile::infer_shapes_with`], [`check_geometry`] and [`check_plan`].
pub fn compile_with(file: &ModelFile, opts: CompileOptions) -> Result<Plan> {
    let shapes = file.infer_shapes_with(&opts.limits)?;
    let g = &file.graph;
    let n = g.nodes.len();
    let index: HashMap<&str, usize> =
        g.nodes.iter().enumerate().map(|(i, nd)| (nd.name.as_str(), i)).collect();
    let node_of = |s: &str| -> Result<usize> {
        index.get(s).copied().ok_or_else(|| Error::graph(s, "unknown node (internal)"))
    };

    // src[i]: the node whose value node i carries (itself, or for Identity the resolved input).
    let mut src = vec![0usize; n];
    for (i, nd) in g.nodes.iter().enumerate() {
        src[i] = match nd.op {
            Op::Identity => src[node_of(&nd.inputs[0])?],
            _ => i,
        };
    }
    // uses[i]: how many non-Identity nodes (plus the graph output) read node i's value.
    let mut uses = vec![0usize; n];
    for nd in &g.nodes {
        if !matches!(nd.op, Op::Identity) {
            for inp in &nd.inputs {
                uses[src[node_of(inp)?]] += 1;
            }
        }
    }
    uses[src[n - 1]] += 1;

    let mut layers: Vec<Layer> = Vec::with_capacity(n);
    let mut layer_of = vec![usize::MAX; n];
    let mut scales: Vec<PendingScale> = Vec::new();
    for (i, nd) in g.nodes.iter().enumerate() {
        let ins: Vec<usize> =
            nd.inputs.iter().map(|s| node_of(s).map(|j| layer_of[j])).collect::<Result<_>>()?;
        let in_shape: &[usize] = match nd.inputs.first() {
            Some(s) => &shapes[node_of(s)?],
            None => &[],
        };
        let op = match &nd.op {
            Op::Identity => {
                layer_of[i] = ins[0];
                continue;
            }
            Op::Input => LayerOp::Input,
            Op::Conv2d { weight, bias, stride, padding, groups } => {
                let w = &file.tensors[weight];
                let c_out = w.shape[0];
                let geom = ConvGeom {
                    c_in: in_shape[0],
                    h: in_shape[1],
                    w: in_shape[2],
                    c_out,
                    kh: w.shape[2],
                    kw: w.shape[3],
                    stride: *stride,
                    padding: *padding,
                    groups: *groups,
                };
                let bias = match bias {
                    Some(b) => file.tensors[b].data.clone(),
                    None => vec![0.0; c_out],
                };
                LayerOp::Conv2d(ConvLayer { geom, weight: w.data.clone(), bias })
            }
            Op::Linear { weight, bias } => {
                let w = &file.tensors[weight];
                let bias = match bias {
                    Some(b) => file.tensors[b].data.clone(),
                    None => vec![0.0; w.shape[0]],
                };
                LayerOp::Linear(LinearLayer {
                    in_features: w.shape[1],
                    out_features: w.shape[0],
                    weight: w.data.clone(),
                    bias,
                })
            }
            Op::BatchNorm2d { weight, bias, running_mean, running_var, eps } => {
                let t = |s: &String| &file.tensors[s].data;
                let (gam, beta, mean, var) = (t(weight), t(bias), t(running_mean), t(running_var));
                let scale: Vec<f64> = gam
                    .iter()
                    .zip(var)
                    .map(|(&g, &v)| g as f64 / (v as f64 + *eps as f64).sqrt())
                    .collect();
                let p = src[node_of(&nd.inputs[0])?];
                if matches!(g.nodes[p].op, Op::Conv2d { .. }) && uses[p] == 1 {
                    let l = layer_of[p];
                    if let LayerOp::Conv2d(conv) = &mut layers[l].op {
                        let per_out = conv.weight.len() / conv.geom.c_out;
                        for (co, k) in scale.iter().enumerate() {
                            for w in &mut conv.weight[co * per_out..(co + 1) * per_out] {
                                *w = (*w as f64 * k) as f32;
                            }
                            let b = conv.bias[co] as f64;
                            conv.bias[co] = ((b - mean[co] as f64) * k + beta[co] as f64) as f32;
                        }
                        layer_of[i] = l;
                        continue;
                    }
                }
                let rows = scale
                    .iter()
                    .enumerate()
                    .map(|(c, k)| vec![(beta[c] as f64 - mean[c] as f64 * k) as f32, *k as f32])
                    .collect();
                LayerOp::Poly(poly_layer(rows))
            }
            Op::AvgPool2d { kernel, stride, padding } => {
                LayerOp::AvgPool2d { kernel: *kernel, stride: *stride, padding: *padding }
            }
            Op::GlobalAvgPool => LayerOp::GlobalAvgPool,
            Op::MaxPool2d { kernel, stride, padding } => {
                LayerOp::MaxPool2d { kernel: *kernel, stride: *stride, padding: *padding }
            }
            Op::Flatten => LayerOp::Flatten,
            Op::Add => LayerOp::Add,
            Op::Relu => LayerOp::Relu,
            Op::Poly { coefficients, coefficients_tensor } => {
                let rows = match coefficients_tensor {
                    Some(t) => {
                        let tt = &file.tensors[t];
                        tt.data.chunks(tt.shape[1]).map(|r| r.to_vec()).collect()
                    }
                    None => vec![coefficients.clone()],
                };
                LayerOp::Poly(poly_layer(rows))
            }
            Op::X2Act { s, w0, w1, b } => {
                let t = |s: &String| &file.tensors[s].data;
                let (w0, w1, b) = (t(w0), t(w1), t(b));
                let rows = (0..w0.len())
                    .map(|c| vec![b[c], w1[c], (*s as f64 * w0[c] as f64) as f32])
                    .collect();
                LayerOp::Poly(poly_layer(rows))
            }
            Op::PolyKerv { c_p, d_p, a_p } => {
                let mut c_rest = *c_p;
                if opts.fold_polykerv && *c_p != 0.0 {
                    let p = src[node_of(&nd.inputs[0])?];
                    let target = if uses[p] != 1 {
                        None
                    } else if is_affine(&layers[layer_of[p]].op) {
                        Some(layer_of[p])
                    } else if matches!(g.nodes[p].op, Op::Add) {
                        // An Add input that is a conv / linear read only by the Add.
                        g.nodes[p]
                            .inputs
                            .iter()
                            .map(|s| node_of(s).map(|q| src[q]))
                            .collect::<Result<Vec<_>>>()?
                            .into_iter()
                            .find(|&q| uses[q] == 1 && is_affine(&layers[layer_of[q]].op))
                            .map(|q| layer_of[q])
                    } else {
                        None
                    };
                    if let Some(t) = target {
                        add_to_bias(&mut layers[t].op, *c_p);
                        c_rest = 0.0;
                    }
                }
                if opts.fold_polykerv && *a_p != 1.0 {
                    scales.push(PendingScale {
                        name: nd.name.clone(),
                        c_p: c_rest,
                        d_p: *d_p,
                        a_p: *a_p,
                    });
                }
                LayerOp::Poly(poly_layer(vec![polykerv_coeffs(c_rest, *d_p, *a_p)]))
            }
        };
        layer_of[i] = layers.len();
        layers.push(Layer { name: nd.name.clone(), op, inputs: ins, out_shape: shapes[i].clone() });
    }

    let mut layers = prune(layers, layer_of[n - 1]);
    for sc in &scales {
        fold_scale(&mut layers, sc);
    }
    let plan = Plan {
        layers,
        frac_bits: g.frac_bits,
        labels: g.labels.clone(),
        normalize: g.normalize.clone(),
        poly_protocol: Default::default(),
    };
    // The plan itself passes the checks a peer's skeleton gets (defence in depth), then the size.
    check_geometry(&plan, &opts.limits, true)?;
    check_plan(&plan, &opts.limits)?;
    Ok(plan)
}

/// A PolyKerv whose output scale `a_p` may fold into the next layer (after pruning).
struct PendingScale {
    /// Name of the PolyKerv node (= its Poly layer).
    name: String,
    /// The part of `c_p` left in the polynomial (0 when folded into a bias).
    c_p: f32,
    /// Power.
    d_p: u32,
    /// Output scale.
    a_p: f32,
}

/// True for the layers with private weights and a bias: conv and linear.
fn is_affine(op: &LayerOp) -> bool {
    matches!(op, LayerOp::Conv2d(_) | LayerOp::Linear(_))
}

/// Adds `c` to every bias entry of a conv / linear layer (f64 arithmetic, rounded once).
fn add_to_bias(op: &mut LayerOp, c: f32) {
    let bias = match op {
        LayerOp::Conv2d(l) => &mut l.bias,
        LayerOp::Linear(l) => &mut l.bias,
        _ => return,
    };
    for b in bias.iter_mut() {
        *b = (*b as f64 + c as f64) as f32;
    }
}

/// Folds `sc.a_p` into the weights of every conv / linear layer that consumes the PolyKerv's Poly
/// layer, directly or through average pools and flattens (which commute with the scale). All
/// paths must end in such a layer (an `Add`, a ReLU, a max-pool, another polynomial or the network
/// output on any path makes the fold impossible: the plan is left unchanged). On success the
/// polynomial becomes `(x + c_p)^d_p`.
fn fold_scale(layers: &mut [Layer], sc: &PendingScale) {
    let Some(start) = layers.iter().position(|l| l.name == sc.name) else { return };
    let mut consumers = vec![Vec::new(); layers.len()];
    for (i, l) in layers.iter().enumerate() {
        for &j in &l.inputs {
            consumers[j].push(i);
        }
    }
    let last = layers.len() - 1;
    let (mut targets, mut todo) = (Vec::new(), vec![start]);
    while let Some(cur) = todo.pop() {
        if cur == last || consumers[cur].is_empty() {
            return;
        }
        for &c in &consumers[cur] {
            match &layers[c].op {
                LayerOp::Conv2d(_) | LayerOp::Linear(_) => targets.push(c),
                LayerOp::AvgPool2d { .. } | LayerOp::GlobalAvgPool | LayerOp::Flatten => {
                    todo.push(c)
                }
                _ => return,
            }
        }
    }
    let a = sc.a_p as f64;
    for t in targets {
        let w = match &mut layers[t].op {
            LayerOp::Conv2d(l) => &mut l.weight,
            LayerOp::Linear(l) => &mut l.weight,
            _ => continue,
        };
        for v in w.iter_mut() {
            *v = (*v as f64 * a) as f32;
        }
    }
    layers[start].op = LayerOp::Poly(poly_layer(vec![polykerv_coeffs(sc.c_p, sc.d_p, 1.0)]));
}

/// Coefficients (ascending) of `a_p * (x + c_p)^d_p`: `a_p * C(d_p, k) * c_p^(d_p - k)`.
pub fn polykerv_coeffs(c_p: f32, d_p: u32, a_p: f32) -> Vec<f32> {
    let d = d_p as i32;
    let mut binom = 1.0f64;
    (0..=d)
        .map(|k| {
            let c = a_p as f64 * binom * (c_p as f64).powi(d - k);
            binom = binom * (d - k) as f64 / (k + 1) as f64;
            c as f32
        })
        .collect()
}

/// Normalises polynomial rows: degree = max over rows of the highest non-zero power (>= 1); every
/// row resized to `degree + 1` (trailing zeros trimmed, short rows zero-padded).
fn poly_layer(mut rows: Vec<Vec<f32>>) -> PolyLayer {
    let degree = rows.iter().map(|r| effective_degree(r)).max().unwrap_or(0).max(1);
    for r in &mut rows {
        r.resize(degree + 1, 0.0);
    }
    PolyLayer { degree, coeffs: rows }
}

/// Keeps only the layers the output (index `out`) depends on, renumbering inputs.
fn prune(layers: Vec<Layer>, out: usize) -> Vec<Layer> {
    let mut live = vec![false; layers.len()];
    live[out] = true;
    live[0] = true;
    for i in (0..layers.len()).rev() {
        if live[i] {
            for &j in &layers[i].inputs {
                live[j] = true;
            }
        }
    }
    let mut new_index = vec![usize::MAX; layers.len()];
    let mut kept = Vec::with_capacity(layers.len());
    for (i, mut l) in layers.into_iter().enumerate().take(out + 1) {
        if live[i] {
            l.inputs = l.inputs.iter().map(|&j| new_index[j]).collect();
            new_index[i] = kept.len();
            kept.push(l);
        }
    }
    kept
}

/// A naive f32 forward pass over a [`Plan`] (one sample), for the tests of the model module.
#[cfg(test)]
pub(crate) mod naive {
    use super::super::plan::{ConvLayer, LayerOp, Plan};

    /// Direct convolution of one `[C, H, W]` sample.
    pub fn conv2d(x: &[f32], l: &ConvLayer) -> Vec<f32> {
        let g = &l.geom;
        let (oh, ow) = (g.out_h(), g.out_w());
        let cig = g.c_in / g.groups;
        let cog = g.c_out / g.groups;
        let mut out = vec![0f32; g.c_out * oh * ow];
        for co in 0..g.c_out {
            let grp = co / cog;
            let o = &mut out[co * oh * ow..(co + 1) * oh * ow];
            o.iter_mut().for_each(|v| *v = l.bias[co]);
            for ci in 0..cig {
                let xin = &x[(grp * cig + ci) * g.h * g.w..(grp * cig + ci + 1) * g.h * g.w];
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let wv = l.weight[((co * cig + ci) * g.kh + ky) * g.kw + kx];
                        for y in 0..oh {
                            let iy = (y * g.stride + ky) as isize - g.padding as isize;
                            if iy < 0 || iy >= g.h as isize {
                                continue;
                            }
                            let row = &xin[iy as usize * g.w..(iy as usize + 1) * g.w];
                            let orow = &mut o[y * ow..(y + 1) * ow];
                            for (xo, ov) in orow.iter_mut().enumerate() {
                                let ix = (xo * g.stride + kx) as isize - g.padding as isize;
                                if ix >= 0 && ix < g.w as isize {
                                    *ov += wv * row[ix as usize];
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// Outputs of every layer for one sample.
    pub fn forward(plan: &Plan, input: &[f32]) -> Vec<Vec<f32>> {
        let mut outs: Vec<Vec<f32>> = Vec::with_capacity(plan.layers.len());
        for l in &plan.layers {
            let x = |k: usize| &outs[l.inputs[k]];
            let ishape = |k: usize| &plan.layers[l.inputs[k]].out_shape;
            let y = match &l.op {
                LayerOp::Input => input.to_vec(),
                LayerOp::Conv2d(c) => conv2d(x(0), c),
                LayerOp::Linear(f) => (0..f.out_features)
                    .map(|o| {
                        let w = &f.weight[o * f.in_features..(o + 1) * f.in_features];
                        f.bias[o] + w.iter().zip(x(0)).map(|(a, b)| a * b).sum::<f32>()
                    })
                    .collect(),
                LayerOp::AvgPool2d { kernel, stride, padding } => {
                    pool(x(0), ishape(0), *kernel, *stride, *padding, false)
                }
                LayerOp::MaxPool2d { kernel, stride, padding } => {
                    pool(x(0), ishape(0), *kernel, *stride, *padding, true)
                }
                LayerOp::GlobalAvgPool => {
                    let s = ishape(0);
                    let hw = s[1] * s[2];
                    x(0).chunks(hw).map(|c| c.iter().sum::<f32>() / hw as f32).collect()
                }
                LayerOp::Flatten => x(0).clone(),
                LayerOp::Add => x(0).iter().zip(x(1)).map(|(a, b)| a + b).collect(),
                LayerOp::Relu => x(0).iter().map(|v| v.max(0.0)).collect(),
                LayerOp::Poly(p) => {
                    let s = ishape(0);
                    let per: usize = s[1..].iter().product();
                    x(0).iter()
                        .enumerate()
                        .map(|(i, &v)| {
                            let c = p.coeffs_of(i / per);
                            c.iter().rev().fold(0f32, |acc, &k| acc * v + k)
                        })
                        .collect()
                }
            };
            outs.push(y);
        }
        outs
    }

    fn pool(x: &[f32], s: &[usize], k: usize, st: usize, p: usize, max: bool) -> Vec<f32> {
        let (c, h, w) = (s[0], s[1], s[2]);
        let oh = (h + 2 * p - k) / st + 1;
        let ow = (w + 2 * p - k) / st + 1;
        let mut out = Vec::with_capacity(c * oh * ow);
        for ch in 0..c {
            for y in 0..oh {
                for xo in 0..ow {
                    let mut acc = if max { f32::NEG_INFINITY } else { 0.0 };
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (y * st + ky) as isize - p as isize;
                            let ix = (xo * st + kx) as isize - p as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            let v = x[(ch * h + iy as usize) * w + ix as usize];
                            acc = if max { acc.max(v) } else { acc + v };
                        }
                    }
                    out.push(if max { acc } else { acc / (k * k) as f32 });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::file::TensorF32;
    use crate::model::graph::{Graph, Node};

    struct Lcg(u64);
    impl Lcg {
        fn f(&mut self) -> f32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn v(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.f()).collect()
        }
    }

    fn node(name: &str, inputs: &[&str], op: Op) -> Node {
        Node { name: name.into(), inputs: inputs.iter().map(|s| s.to_string()).collect(), op }
    }

    fn file(
        input_shape: Vec<usize>,
        nodes: Vec<Node>,
        t: Vec<(&str, Vec<usize>, Vec<f32>)>,
    ) -> ModelFile {
        let tensors: BTreeMap<String, TensorF32> =
            t.into_iter().map(|(n, s, d)| (n.to_string(), TensorF32::new(s, d).unwrap())).collect();
        let graph =
            Graph { input_shape, frac_bits: 16, normalize: None, nodes, labels: Vec::new() };
        ModelFile { graph, card: None, ranges: None, tensors }
    }

    fn conv_op(w: &str, b: Option<&str>, stride: usize, padding: usize) -> Op {
        Op::Conv2d { weight: w.into(), bias: b.map(Into::into), stride, padding, groups: 1 }
    }

    fn bn_op(p: &str) -> Op {
        Op::BatchNorm2d {
            weight: format!("{p}.g"),
            bias: format!("{p}.b"),
            running_mean: format!("{p}.m"),
            running_var: format!("{p}.v"),
            eps: 1e-3,
        }
    }

    fn bn_tensors(p: &str, c: usize, r: &mut Lcg) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        vec![
            (format!("{p}.g"), vec![c], r.v(c).iter().map(|v| 1.0 + 0.5 * v).collect()),
            (format!("{p}.b"), vec![c], r.v(c)),
            (format!("{p}.m"), vec![c], r.v(c)),
            (format!("{p}.v"), vec![c], r.v(c).iter().map(|v| 1.0 + 0.9 * v).collect()),
        ]
    }

    /// conv(3->4, 3x3, stride 2, pad 1) + BN on a 3x7x7 input, plus, when `second_use`, an Add
    /// that also reads the conv output (which forbids folding).
    fn conv_bn(second_use: bool) -> (ModelFile, Vec<f32>) {
        let mut r = Lcg(42);
        let mut t: Vec<(String, Vec<usize>, Vec<f32>)> =
            vec![("w".into(), vec![4, 3, 3, 3], r.v(108)), ("b".into(), vec![4], r.v(4))];
        t.extend(bn_tensors("bn", 4, &mut r));
        let mut nodes = vec![
            node("input", &[], Op::Input),
            node("conv", &["input"], conv_op("w", Some("b"), 2, 1)),
            node("bn", &["conv"], bn_op("bn")),
        ];
        if second_use {
            nodes.push(node("sum", &["bn", "conv"], Op::Add));
        }
        let t = t.iter().map(|(n, s, d)| (n.as_str(), s.clone(), d.clone())).collect();
        (file(vec![3, 7, 7], nodes, t), r.v(147))
    }

    /// Un-folded f32 reference: conv then BN.
    fn conv_then_bn(f: &ModelFile, x: &[f32]) -> Vec<f32> {
        let t = |n: &str| f.tensors[n].data.clone();
        let geom = ConvGeom {
            c_in: 3,
            h: 7,
            w: 7,
            c_out: 4,
            kh: 3,
            kw: 3,
            stride: 2,
            padding: 1,
            groups: 1,
        };
        let y = naive::conv2d(x, &ConvLayer { geom, weight: t("w"), bias: t("b") });
        let hw = geom.out_h() * geom.out_w();
        let (g, b, m, v) = (t("bn.g"), t("bn.b"), t("bn.m"), t("bn.v"));
        y.iter()
            .enumerate()
            .map(|(i, &y)| {
                let c = i / hw;
                (y - m[c]) / (v[c] + 1e-3).sqrt() * g[c] + b[c]
            })
            .collect()
    }

    #[test]
    fn batchnorm_is_folded_into_the_conv() {
        let (f, x) = conv_bn(false);
        let plan = compile(&f).unwrap();
        let kinds: Vec<&str> = plan.layers.iter().map(|l| l.op.kind()).collect();
        assert_eq!(kinds, ["Input", "Conv2d"]);
        assert_eq!(plan.layers[1].out_shape, vec![4, 4, 4]);
        let got = naive::forward(&plan, &x).pop().unwrap();
        let want = conv_then_bn(&f, &x);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn batchnorm_not_after_a_private_conv_becomes_a_degree_1_poly() {
        let (f, x) = conv_bn(true);
        let plan = compile(&f).unwrap();
        let kinds: Vec<&str> = plan.layers.iter().map(|l| l.op.kind()).collect();
        assert_eq!(kinds, ["Input", "Conv2d", "Poly", "Add"]);
        let LayerOp::Poly(p) = &plan.layers[2].op else { unreachable!() };
        assert_eq!(p.degree, 1);
        assert_eq!(p.coeffs.len(), 4);
        let outs = naive::forward(&plan, &x);
        let want = conv_then_bn(&f, &x);
        for (a, b) in outs[2].iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert_eq!(plan.layers[3].inputs, vec![2, 1]);
    }

    #[test]
    fn x2act_lowering() {
        let nodes = vec![
            node("input", &[], Op::Input),
            node(
                "x2",
                &["input"],
                Op::X2Act { s: 0.1, w0: "w0".into(), w1: "w1".into(), b: "b".into() },
            ),
        ];
        let f = file(
            vec![2, 1, 1],
            nodes,
            vec![
                ("w0", vec![2], vec![0.5, 0.25]),
                ("w1", vec![2], vec![1.0, 0.9]),
                ("b", vec![2], vec![0.01, -0.02]),
            ],
        );
        let plan = compile(&f).unwrap();
        let LayerOp::Poly(p) = &plan.layers[1].op else { panic!() };
        assert_eq!(p.degree, 2);
        assert_eq!(p.coeffs, vec![vec![0.01, 1.0, 0.05], vec![-0.02, 0.9, 0.025]]);

        // All w0 = 0: degree 1.
        let mut f0 = f.clone();
        f0.tensors.get_mut("w0").unwrap().data = vec![0.0, 0.0];
        let plan = compile(&f0).unwrap();
        let LayerOp::Poly(p) = &plan.layers[1].op else { panic!() };
        assert_eq!(p.degree, 1);
        assert_eq!(p.coeffs, vec![vec![0.01, 1.0], vec![-0.02, 0.9]]);
    }

    #[test]
    fn polykerv_lowering() {
        assert_eq!(polykerv_coeffs(1.0, 2, 1.0), vec![1.0, 2.0, 1.0]);
        assert_eq!(polykerv_coeffs(0.5, 3, 2.0), vec![0.25, 1.5, 3.0, 2.0]);
        assert_eq!(polykerv_coeffs(0.0, 2, 0.009), vec![0.0, 0.0, 0.009]);
        let nodes = vec![
            node("input", &[], Op::Input),
            node("pk", &["input"], Op::PolyKerv { c_p: 0.47, d_p: 2, a_p: 0.009 }),
        ];
        let plan = compile(&file(vec![3], nodes, vec![])).unwrap();
        let LayerOp::Poly(p) = &plan.layers[1].op else { panic!() };
        assert_eq!(p.degree, 2);
        assert_eq!(p.coeffs.len(), 1);
        let want = [0.009 * 0.47 * 0.47, 0.009 * 2.0 * 0.47, 0.009];
        for (a, b) in p.coeffs[0].iter().zip(want) {
            assert!((a - b).abs() < 1e-7);
        }
    }

    /// conv1 -> PolyKerv(c 0.47, a 0.009) -> avgpool -> conv2 -> PolyKerv(c 0.5, a 0.25) ->
    /// flatten -> fc: both c_p go into the conv biases, both a_p into the next weights, the
    /// polynomials become x^2, and the function is unchanged.
    #[test]
    fn polykerv_constants_fold_into_private_weights() {
        let mut r = Lcg(5);
        let nodes = vec![
            node("input", &[], Op::Input),
            node("conv1", &["input"], conv_op("w1", Some("b1"), 1, 1)),
            node("pk1", &["conv1"], Op::PolyKerv { c_p: 0.47, d_p: 2, a_p: 0.009 }),
            node("pool", &["pk1"], Op::AvgPool2d { kernel: 2, stride: 2, padding: 0 }),
            node("conv2", &["pool"], conv_op("w2", None, 1, 1)),
            node("pk2", &["conv2"], Op::PolyKerv { c_p: 0.5, d_p: 2, a_p: 0.25 }),
            node("flat", &["pk2"], Op::Flatten),
            node("fc", &["flat"], Op::Linear { weight: "wf".into(), bias: Some("bf".into()) }),
        ];
        let t = vec![
            ("w1", vec![3, 2, 3, 3], r.v(54)),
            ("b1", vec![3], r.v(3)),
            ("w2", vec![4, 3, 3, 3], r.v(108)),
            ("wf", vec![5, 36], r.v(180)),
            ("bf", vec![5], r.v(5)),
        ];
        let f = file(vec![2, 6, 6], nodes, t);
        let plan = compile(&f).unwrap();
        let reference =
            compile_with(&f, CompileOptions { fold_polykerv: false, ..Default::default() })
                .unwrap();
        let kinds: Vec<&str> = plan.layers.iter().map(|l| l.op.kind()).collect();
        assert_eq!(
            kinds,
            ["Input", "Conv2d", "Poly", "AvgPool2d", "Conv2d", "Poly", "Flatten", "Linear"]
        );
        for i in [2, 5] {
            let LayerOp::Poly(p) = &plan.layers[i].op else { panic!() };
            assert_eq!(p.coeffs, vec![vec![0.0, 0.0, 1.0]]);
        }
        let (LayerOp::Conv2d(c1), LayerOp::Conv2d(c2), LayerOp::Linear(fc)) =
            (&plan.layers[1].op, &plan.layers[4].op, &plan.layers[7].op)
        else {
            panic!()
        };
        for (b, b0) in c1.bias.iter().zip(&f.tensors["b1"].data) {
            assert!((b - (b0 + 0.47)).abs() < 1e-6);
        }
        assert!(c2.bias.iter().all(|b| (b - 0.5).abs() < 1e-7));
        for (w, w0) in c2.weight.iter().zip(&f.tensors["w2"].data) {
            assert!((w - w0 * 0.009).abs() < 1e-8);
        }
        for (w, w0) in fc.weight.iter().zip(&f.tensors["wf"].data) {
            assert_eq!(*w, w0 * 0.25);
        }
        let x = r.v(72);
        let got = naive::forward(&plan, &x).pop().unwrap();
        let want = naive::forward(&reference, &x).pop().unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    /// A PolyKerv whose output also feeds a residual Add keeps a_p in its public coefficients;
    /// a PolyKerv after an Add takes c_p into the bias of the Add's conv input.
    #[test]
    fn polykerv_scale_stays_public_before_a_residual_add() {
        let mut r = Lcg(8);
        let nodes = vec![
            node("input", &[], Op::Input),
            node("conv1", &["input"], conv_op("w1", None, 1, 1)),
            node("pk1", &["conv1"], Op::PolyKerv { c_p: 1.0, d_p: 2, a_p: 0.5 }),
            node("conv2", &["pk1"], conv_op("w2", None, 1, 1)),
            node("add", &["conv2", "pk1"], Op::Add),
            node("pk2", &["add"], Op::PolyKerv { c_p: 0.3, d_p: 2, a_p: 1.0 }),
        ];
        let t = vec![("w1", vec![2, 2, 3, 3], r.v(36)), ("w2", vec![2, 2, 3, 3], r.v(36))];
        let f = file(vec![2, 4, 4], nodes, t);
        let plan = compile(&f).unwrap();
        let LayerOp::Poly(p1) = &plan.layers[2].op else { panic!() };
        assert_eq!(p1.coeffs, vec![vec![0.0, 0.0, 0.5]]);
        let LayerOp::Poly(p2) = &plan.layers[5].op else { panic!() };
        assert_eq!(p2.coeffs, vec![vec![0.0, 0.0, 1.0]]);
        let LayerOp::Conv2d(c2) = &plan.layers[3].op else { panic!() };
        assert_eq!(c2.weight, f.tensors["w2"].data);
        assert!(c2.bias.iter().all(|b| (b - 0.3).abs() < 1e-7));
        let reference =
            compile_with(&f, CompileOptions { fold_polykerv: false, ..Default::default() })
                .unwrap();
        let x = r.v(32);
        let got = naive::forward(&plan, &x).pop().unwrap();
        let want = naive::forward(&reference, &x).pop().unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn poly_rows_are_trimmed_and_padded() {
        let mk = |op: Op, t: Vec<(&str, Vec<usize>, Vec<f32>)>| {
            let nodes = vec![node("input", &[], Op::Input), node("p", &["input"], op)];
            let plan = compile(&file(vec![2, 2, 2], nodes, t)).unwrap();
            let LayerOp::Poly(p) = &plan.layers[1].op else { panic!() };
            p.clone()
        };
        let shared = |c: Vec<f32>| Op::Poly { coefficients: c, coefficients_tensor: None };
        let p = mk(shared(vec![1.0, 2.0, 0.0, 0.0]), vec![]);
        assert_eq!((p.degree, p.coeffs), (1, vec![vec![1.0, 2.0]]));
        let p = mk(shared(vec![3.0]), vec![]);
        assert_eq!((p.degree, p.coeffs), (1, vec![vec![3.0, 0.0]]));
        let p = mk(shared(vec![0.0, 0.0, 1.0]), vec![]);
        assert_eq!((p.degree, p.coeffs), (2, vec![vec![0.0, 0.0, 1.0]]));
        let per = Op::Poly { coefficients: vec![], coefficients_tensor: Some("c".into()) };
        let p = mk(per, vec![("c", vec![2, 4], vec![1.0, 2.0, 0.0, 0.0, 0.5, 0.0, 3.0, 0.0])]);
        assert_eq!((p.degree, p.coeffs), (2, vec![vec![1.0, 2.0, 0.0], vec![0.5, 0.0, 3.0]]));
    }

    #[test]
    fn identity_is_removed_and_dead_layers_dropped() {
        let mut r = Lcg(1);
        let nodes = vec![
            node("input", &[], Op::Input),
            node("id0", &["input"], Op::Identity),
            node("conv", &["id0"], conv_op("w", None, 1, 0)),
            node("id1", &["conv"], Op::Identity),
            node("id2", &["id1"], Op::Identity),
            node("bn", &["id2"], bn_op("bn")),
            node("dead", &["bn"], Op::Relu),
            node("relu", &["bn"], Op::Relu),
            node("add", &["relu", "id1"], Op::Add),
            node("out", &["add"], Op::Identity),
        ];
        let mut t = vec![("w".to_string(), vec![2, 2, 1, 1], r.v(4))];
        t.extend(bn_tensors("bn", 2, &mut r));
        let t = t.iter().map(|(n, s, d)| (n.as_str(), s.clone(), d.clone())).collect();
        let f = file(vec![2, 3, 3], nodes, t);
        let plan = compile(&f).unwrap();
        let names: Vec<&str> = plan.layers.iter().map(|l| l.name.as_str()).collect();
        // conv has two readers (bn via id2, add via id1): BN stays as a Poly.
        assert_eq!(names, ["input", "conv", "bn", "relu", "add"]);
        let ins: Vec<Vec<usize>> = plan.layers.iter().map(|l| l.inputs.clone()).collect();
        assert_eq!(ins, vec![vec![], vec![0], vec![1], vec![2], vec![3, 1]]);
        assert_eq!(plan.num_classes(), 18);

        // Without the second reader, BN folds into the conv even through Identity nodes.
        let mut f2 = f.clone();
        f2.graph.nodes[8] = node("add", &["relu", "relu"], Op::Add);
        let plan = compile(&f2).unwrap();
        let names: Vec<&str> = plan.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["input", "conv", "relu", "add"]);
    }

    #[test]
    fn conv_that_is_the_output_is_not_folded_away() {
        let mut r = Lcg(3);
        let nodes = vec![
            node("input", &[], Op::Input),
            node("conv", &["input"], conv_op("w", None, 1, 0)),
            node("bn", &["conv"], bn_op("bn")),
            node("out", &["conv"], Op::Identity),
        ];
        let mut t = vec![("w".to_string(), vec![2, 2, 1, 1], r.v(4))];
        t.extend(bn_tensors("bn", 2, &mut r));
        let t = t.iter().map(|(n, s, d)| (n.as_str(), s.clone(), d.clone())).collect();
        let f = file(vec![2, 3, 3], nodes, t);
        let plan = compile(&f).unwrap();
        let names: Vec<&str> = plan.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["input", "conv"]);
        let LayerOp::Conv2d(c) = &plan.layers[1].op else { panic!() };
        assert_eq!(c.weight, f.tensors["w"].data);
    }
}
