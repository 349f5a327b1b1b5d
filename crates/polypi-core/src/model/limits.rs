//! Size limits of a model, checked when it is loaded or compiled, before anything is allocated.
//!
//! A model file is untrusted input: its graph may declare any padding, kernel, stride or channel
//! count, and the release build has no overflow checks. [`super::file::ModelFile::validate`]
//! (every load) therefore checks every node with checked arithmetic (see
//! [`super::file::ModelFile::infer_shapes_with`] for the geometric rules) and compiles the plan,
//! and [`super::compile::compile_with`] refuses a plan that exceeds the [`Limits`]:
//!
//! - **values per tensor**: every per-sample tensor (the input, each node's output, the im2col
//!   matrix of a conv) has at most [`Limits::max_elements`] values;
//! - **work**: each layer, and the whole plan, needs at most [`Limits::max_work`] operations per
//!   sample (multiply-accumulates of conv / linear layers, window reads of the pooling layers,
//!   one per element for the other layers);
//! - **memory**: one inference at batch 1 needs at most [`Limits::max_memory_bytes`], estimated
//!   by [`plan_size`] from the activations, the weights, the largest im2col buffer and the
//!   dealer's correlated randomness ([`crate::cost::count`]).
//!
//! Exceeding a limit gives [`Error::TooLarge`] naming the node, the measured value and the limit.
//! The memory of larger batches is checked at run time against the machine's free memory
//! ([`crate::engine::bench::check_memory_budget`]).

use serde::Serialize;

use super::file::MAX_POLY_DEGREE;
use super::plan::{LayerOp, Plan};
use crate::error::{Error, Result};

/// Default [`Limits::max_elements`]: 2^28 values (2 GiB as 64-bit ring elements) per
/// per-sample tensor.
pub const MAX_ELEMENTS: usize = 1 << 28;
/// Default [`Limits::max_work`]: 2^38 (about 2.7e11) operations per sample, per layer and per
/// plan (VGG-16 on ImageNet needs 1.5e10 multiply-accumulates).
pub const MAX_WORK: u64 = 1 << 38;
/// Default [`Limits::max_memory_bytes`]: 16 GiB for one inference at batch 1.
pub const MAX_MEMORY_BYTES: u64 = 16 << 30;

/// Bytes per activation value (a 64-bit ring element).
pub const ACTIVATION_BYTES: u64 = 8;
/// Bytes per weight value: the `f32` weight, its ring encoding and the mask / masked copy the
/// parties hold (an estimate, rounded up).
pub const WEIGHT_BYTES: u64 = 24;
/// Memory the dealer's correlated randomness takes while held, as a multiple of its size (the
/// dealer's copy, the parties' received copies and their expanded forms; the same factor as
/// [`crate::engine::bench::check_memory_budget`]).
pub const DEALER_MEMORY_FACTOR: f64 = 2.5;

/// The size limits a model must respect (module docs). [`Limits::default`] gives
/// [`MAX_ELEMENTS`], [`MAX_WORK`] and [`MAX_MEMORY_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Largest number of values of one per-sample tensor (input, node output, im2col matrix).
    pub max_elements: usize,
    /// Largest number of operations per sample of one layer and of the whole plan.
    pub max_work: u64,
    /// Largest estimated memory of one inference at batch 1, bytes ([`plan_size`]).
    pub max_memory_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_elements: MAX_ELEMENTS,
            max_work: MAX_WORK,
            max_memory_bytes: MAX_MEMORY_BYTES,
        }
    }
}

impl Limits {
    /// Checks that `value` (None: it overflowed 64 bits) is at most `limit`; otherwise
    /// [`Error::TooLarge`] at `node` describing `what`.
    pub fn check(node: &str, what: &str, value: Option<u64>, limit: u64) -> Result<u64> {
        match value {
            Some(v) if v <= limit => Ok(v),
            Some(v) => {
                Err(Error::TooLarge { node: node.into(), what: what.into(), value: v, limit })
            }
            None => Err(Error::TooLarge {
                node: node.into(),
                what: what.into(),
                value: u64::MAX,
                limit,
            }),
        }
    }
}

/// Product of `dims` as `u64`, None on overflow.
pub fn checked_product(dims: &[usize]) -> Option<u64> {
    dims.iter().try_fold(1u64, |a, &d| a.checked_mul(u64::try_from(d).ok()?))
}

/// Output side `(len + 2 padding - kernel) / stride + 1` of a conv or pooling window along one
/// axis (`what`: "height" or "width"), in checked arithmetic. Errors (a reason, for the caller to
/// wrap with the node's name): the padded input overflows or is smaller than the kernel; kernel
/// or stride 0.
pub fn out_side(
    what: &str,
    len: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> std::result::Result<usize, String> {
    let padded = padding.checked_mul(2).and_then(|p| p.checked_add(len)).ok_or_else(|| {
        format!("padding {padding} overflows the padded input {what} ({len} + 2 x {padding})")
    })?;
    if kernel == 0 || stride == 0 {
        return Err(format!("kernel ({kernel}) and stride ({stride}) must be >= 1"));
    }
    if padded < kernel {
        return Err(format!(
            "kernel {kernel} is larger than the padded input {what} {padded} ({len} + 2 x \
             {padding})"
        ));
    }
    Ok((padded - kernel) / stride + 1)
}

/// Checks a plan layer by layer with the load-time rules of
/// [`super::file::ModelFile::infer_shapes_with`], re-deriving every output shape in checked
/// arithmetic from the layer's op and its inputs' shapes: inputs refer to earlier layers (one per
/// op, two for `Add`, none for the first layer, the only `Input`); conv geometry matches the
/// input, kernel / stride / groups / channels >= 1, groups divide the channels, padding <= kernel
/// size;
/// max-pool padding <= kernel / 2; kernels fit the (padded) input; polynomial degree in
/// `1..=`[`MAX_POLY_DEGREE`] with one row (or one per channel) of `degree + 1` finite
/// coefficients; every `out_shape` equals the derived one; tensors, im2col matrices and work
/// within `limits`. Weights and biases must have their full length when `weights` is true, and
/// may be empty otherwise (a public skeleton, [`Plan::public_skeleton`]).
/// Errors: [`Error::Graph`] naming the layer and the offending value, [`Error::TooLarge`].
pub fn check_geometry(plan: &Plan, limits: &Limits, weights: bool) -> Result<()> {
    let max_el = limits.max_elements as u64;
    if plan.layers.is_empty() {
        return Err(Error::graph(super::file::GRAPH_NODE, "the plan has no layers"));
    }
    for (i, l) in plan.layers.iter().enumerate() {
        let name = l.name.as_str();
        let gerr = |reason: String| Error::graph(name, reason);
        let arity = match l.op {
            LayerOp::Input => 0,
            LayerOp::Add => 2,
            _ => 1,
        };
        if (i == 0) != matches!(l.op, LayerOp::Input) {
            return Err(gerr("the first layer, and only it, must be the Input".into()));
        }
        if l.inputs.len() != arity || l.inputs.iter().any(|&j| j >= i) {
            return Err(gerr(format!(
                "op {} takes {arity} input(s) from earlier layers, got {:?}",
                l.op.kind(),
                l.inputs
            )));
        }
        let ins: Vec<&[usize]> =
            l.inputs.iter().map(|&j| plan.layers[j].out_shape.as_slice()).collect();
        let chw = |s: &[usize]| -> Result<(usize, usize, usize)> {
            match s {
                [c, h, w] => Ok((*c, *h, *w)),
                _ => Err(gerr(format!("op {} needs a [C, H, W] input, got {s:?}", l.op.kind()))),
            }
        };
        let len_ok =
            |got: usize, want: Option<u64>| (!weights && got == 0) || want == Some(got as u64);
        let derived: Vec<usize> = match &l.op {
            LayerOp::Input => {
                let s = &l.out_shape;
                if !(s.len() == 1 || s.len() == 3) || s.contains(&0) {
                    return Err(gerr(format!(
                        "input shape must be [C, H, W] or [F] with non-zero sizes, got {s:?}"
                    )));
                }
                s.clone()
            }
            LayerOp::Conv2d(c) => {
                let g = &c.geom;
                let (ci, h, w) = chw(ins[0])?;
                if (ci, h, w) != (g.c_in, g.h, g.w) {
                    return Err(gerr(format!(
                        "conv geometry {}x{}x{} differs from its input {:?}",
                        g.c_in, g.h, g.w, ins[0]
                    )));
                }
                if g.c_out == 0 || g.groups == 0 || g.kh == 0 || g.kw == 0 || g.stride == 0 {
                    return Err(gerr(format!("conv sizes must be >= 1: {g:?}")));
                }
                if g.c_in % g.groups != 0 || g.c_out % g.groups != 0 {
                    return Err(gerr(format!(
                        "groups {} must divide the channels {} -> {}",
                        g.groups, g.c_in, g.c_out
                    )));
                }
                if g.padding > g.kh.max(g.kw) {
                    return Err(gerr(format!(
                        "padding {} must be at most the kernel size {}x{}",
                        g.padding, g.kh, g.kw
                    )));
                }
                let oh = out_side("height", h, g.kh, g.stride, g.padding).map_err(&gerr)?;
                let ow = out_side("width", w, g.kw, g.stride, g.padding).map_err(&gerr)?;
                let cig = g.c_in / g.groups;
                if !len_ok(c.weight.len(), checked_product(&[g.c_out, cig, g.kh, g.kw]))
                    || !len_ok(c.bias.len(), Some(g.c_out as u64))
                {
                    return Err(gerr(format!(
                        "conv weight / bias have {} / {} values for {g:?}",
                        c.weight.len(),
                        c.bias.len()
                    )));
                }
                Limits::check(
                    name,
                    "im2col values per sample",
                    checked_product(&[g.c_in, g.kh, g.kw, oh, ow]),
                    max_el,
                )?;
                Limits::check(
                    name,
                    "multiply-accumulates per sample",
                    checked_product(&[g.c_out, oh, ow, cig, g.kh, g.kw]),
                    limits.max_work,
                )?;
                vec![g.c_out, oh, ow]
            }
            LayerOp::Linear(c) => {
                if ins[0] != [c.in_features] || c.out_features == 0 {
                    return Err(gerr(format!(
                        "linear {} -> {} on an input of shape {:?}",
                        c.in_features, c.out_features, ins[0]
                    )));
                }
                if !len_ok(c.weight.len(), checked_product(&[c.in_features, c.out_features]))
                    || !len_ok(c.bias.len(), Some(c.out_features as u64))
                {
                    return Err(gerr(format!(
                        "linear weight / bias have {} / {} values for {} -> {}",
                        c.weight.len(),
                        c.bias.len(),
                        c.in_features,
                        c.out_features
                    )));
                }
                Limits::check(
                    name,
                    "multiply-accumulates per sample",
                    checked_product(&[c.in_features, c.out_features]),
                    limits.max_work,
                )?;
                vec![c.out_features]
            }
            LayerOp::AvgPool2d { kernel, stride, padding }
            | LayerOp::MaxPool2d { kernel, stride, padding } => {
                let padding = *padding;
                let (c, h, w) = chw(ins[0])?;
                if padding > kernel / 2 {
                    return Err(gerr(format!(
                        "padding {padding} must be at most half the kernel {kernel}"
                    )));
                }
                let oh = out_side("height", h, *kernel, *stride, padding).map_err(&gerr)?;
                let ow = out_side("width", w, *kernel, *stride, padding).map_err(&gerr)?;
                Limits::check(
                    name,
                    &format!("window reads per sample (kernel {kernel})"),
                    checked_product(&[c, oh, ow, *kernel, *kernel]),
                    limits.max_work,
                )?;
                vec![c, oh, ow]
            }
            LayerOp::GlobalAvgPool => vec![chw(ins[0])?.0],
            LayerOp::Flatten => {
                let n = checked_product(ins[0]).and_then(|n| usize::try_from(n).ok());
                vec![n.ok_or_else(|| gerr(format!("{:?} overflows", ins[0])))?]
            }
            LayerOp::Add => {
                if ins[0] != ins[1] {
                    return Err(gerr(format!("adds shapes {:?} and {:?}", ins[0], ins[1])));
                }
                ins[0].to_vec()
            }
            LayerOp::Relu => ins[0].to_vec(),
            LayerOp::Poly(p) => {
                let rows_ok = p.coeffs.len() == 1 || p.coeffs.len() == ins[0][0];
                if !(1..=MAX_POLY_DEGREE).contains(&p.degree)
                    || !rows_ok
                    || p.coeffs.iter().any(|r| r.len() != p.degree + 1)
                    || p.coeffs.iter().flatten().any(|c| !c.is_finite())
                {
                    return Err(gerr(format!(
                        "polynomial of degree {} with {} rows of coefficients on {} channels \
                         (needs degree 1..={MAX_POLY_DEGREE}, 1 or one row per channel, degree \
                         + 1 finite coefficients per row)",
                        p.degree,
                        p.coeffs.len(),
                        ins[0][0]
                    )));
                }
                ins[0].to_vec()
            }
        };
        Limits::check(name, "values per sample of the output", checked_product(&derived), max_el)?;
        if derived != l.out_shape {
            return Err(gerr(format!(
                "output shape {:?} differs from the {:?} its op and inputs give",
                l.out_shape, derived
            )));
        }
    }
    Ok(())
}

/// Estimated size of one inference of a plan at batch 1 ([`plan_size`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanSize {
    /// Estimated peak memory, bytes: `8 x` all activation values + [`WEIGHT_BYTES`] `x` weights
    /// + `8 x` the largest im2col matrix + [`DEALER_MEMORY_FACTOR`] `x` the dealer's bytes.
    pub memory_bytes: u64,
    /// The dealer's correlated randomness (both parties, the larger of the two polynomial
    /// protocols), bytes.
    pub dealer_bytes: u64,
    /// Operations per sample (module docs).
    pub work: u64,
    /// The layer whose share of `memory_bytes` is the largest.
    pub largest_layer: String,
    /// Its share, bytes.
    pub largest_layer_bytes: u64,
}

/// Operations per sample of one layer: multiply-accumulates of a conv / linear layer, window
/// reads (`C x out_h x out_w x kernel^2`) of a pooling layer, output values otherwise. None on
/// overflow.
pub fn layer_work(op: &LayerOp, in_shape: &[usize], out_shape: &[usize]) -> Option<u64> {
    match op {
        LayerOp::Conv2d(c) => {
            let g = &c.geom;
            checked_product(&[g.c_out, g.out_h(), g.out_w(), g.c_in / g.groups.max(1), g.kh, g.kw])
        }
        LayerOp::Linear(l) => checked_product(&[l.in_features, l.out_features]),
        LayerOp::AvgPool2d { kernel, .. } | LayerOp::MaxPool2d { kernel, .. } => {
            checked_product(out_shape)?.checked_mul(checked_product(&[*kernel, *kernel])?)
        }
        LayerOp::GlobalAvgPool => checked_product(in_shape),
        _ => checked_product(out_shape),
    }
}

/// Estimates the memory and work of one inference of `plan` at batch 1 ([`PlanSize`]). The
/// dealer's bytes are counted by [`crate::cost::count`] on the public skeleton with every
/// non-zero polynomial coefficient set to 1 (so that no coefficient can fail to encode; this
/// keeps or adds powers, an upper bound), for both polynomial protocols.
///
/// `plan` must come from [`super::compile::compile_with`] (whose node checks bound every shape).
/// Errors: those of [`crate::cost::count`] (a malformed plan).
pub fn plan_size(plan: &Plan) -> Result<PlanSize> {
    let mut skel = plan.public_skeleton();
    for l in &mut skel.layers {
        if let LayerOp::Poly(p) = &mut l.op {
            for row in &mut p.coeffs {
                for c in row.iter_mut().filter(|c| **c != 0.0) {
                    *c = 1.0;
                }
            }
        }
    }
    let mut dealer = vec![0u64; plan.layers.len()];
    for protocol in super::plan::PolyProtocol::ALL {
        skel.poly_protocol = protocol;
        let costs = crate::cost::count(&skel, 1)?;
        for (d, c) in dealer.iter_mut().zip(&costs) {
            *d = (*d).max(c.bytes_dealer_to_client.saturating_add(c.bytes_dealer_to_server));
        }
    }
    let mut memory = 0u64;
    let mut work = 0u64;
    let mut largest_im2col = 0u64;
    let (mut largest_layer, mut largest_layer_bytes) = (String::new(), 0u64);
    for (i, l) in plan.layers.iter().enumerate() {
        let in_shape: &[usize] = match l.inputs.first() {
            Some(&j) if j < plan.layers.len() => &plan.layers[j].out_shape,
            _ => &l.out_shape,
        };
        let out = checked_product(&l.out_shape).unwrap_or(u64::MAX);
        let (weights, im2col) = match &l.op {
            LayerOp::Conv2d(c) => {
                let g = &c.geom;
                (
                    checked_product(&[g.c_out, g.c_in / g.groups.max(1), g.kh, g.kw]),
                    checked_product(&[g.c_in, g.kh, g.kw, g.out_h(), g.out_w()]),
                )
            }
            LayerOp::Linear(c) => (checked_product(&[c.in_features, c.out_features]), Some(0)),
            _ => (Some(0), Some(0)),
        };
        let im2col = im2col.unwrap_or(u64::MAX).saturating_mul(ACTIVATION_BYTES);
        largest_im2col = largest_im2col.max(im2col);
        let share = out
            .saturating_mul(ACTIVATION_BYTES)
            .saturating_add(weights.unwrap_or(u64::MAX).saturating_mul(WEIGHT_BYTES))
            .saturating_add((dealer[i] as f64 * DEALER_MEMORY_FACTOR) as u64);
        memory = memory.saturating_add(share);
        if share.saturating_add(im2col) > largest_layer_bytes || largest_layer.is_empty() {
            largest_layer = l.name.clone();
            largest_layer_bytes = share.saturating_add(im2col);
        }
        work = work.saturating_add(layer_work(&l.op, in_shape, &l.out_shape).unwrap_or(u64::MAX));
    }
    Ok(PlanSize {
        memory_bytes: memory.saturating_add(largest_im2col),
        dealer_bytes: dealer.iter().fold(0u64, |a, &d| a.saturating_add(d)),
        work,
        largest_layer,
        largest_layer_bytes,
    })
}

/// Refuses a plan whose [`plan_size`] exceeds `limits`: work above [`Limits::max_work`] or
/// memory above [`Limits::max_memory_bytes`]. Returns the size otherwise.
/// Errors: [`Error::TooLarge`] naming the plan's largest layer (memory) or the output layer
/// (work); those of [`plan_size`].
pub fn check_plan(plan: &Plan, limits: &Limits) -> Result<PlanSize> {
    let size = plan_size(plan)?;
    let last = plan.layers.last().map(|l| l.name.as_str()).unwrap_or(super::file::GRAPH_NODE);
    Limits::check(
        last,
        "operations per sample of the whole plan",
        Some(size.work),
        limits.max_work,
    )?;
    Limits::check(
        &size.largest_layer,
        &format!(
            "estimated memory of one inference at batch 1, bytes (this node alone needs {}; \
             dealer's correlated randomness {} bytes)",
            size.largest_layer_bytes, size.dealer_bytes
        ),
        Some(size.memory_bytes),
        limits.max_memory_bytes,
    )?;
    Ok(size)
}
