//! The graph IR stored in a model file's `polypi.graph` metadata (design.md §5).
//!
//! A [`Graph`] is an ordered list of [`Node`]s in topological order. Each node names its op, its
//! inputs (names of earlier nodes) and refers to weight tensors by name; its output is named after
//! the node. The first node is the only `Input`. The last node is the output (logits).
//!
//! JSON form (one node): `{"name": "conv1", "op": "Conv2d", "inputs": ["input"],
//! "weight": "conv1.weight", "bias": "conv1.bias", "stride": 1, "padding": 2, "groups": 1}`.
//!
//! Tensor layouts follow PyTorch: conv weight `[c_out, c_in/groups, kh, kw]`, linear weight
//! `[out, in]`, per-channel vectors `[C]`. Activations are NCHW (batch first); per-sample shapes in
//! this module omit the batch dimension.

use serde::{Deserialize, Serialize};

/// Current version of the model file format, stored as `polypi.format_version`.
pub const FORMAT_VERSION: &str = "1";

/// A network as stored in a model file: ordered nodes plus the input shape and class labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// Per-sample input shape `[C, H, W]` (e.g. `[1, 28, 28]` for MNIST).
    pub input_shape: Vec<usize>,
    /// Fixed-point fractional bits the model is meant to run at (default 16).
    #[serde(default = "default_frac_bits")]
    pub frac_bits: u32,
    /// Input normalisation applied by the client before sharing: `x' = (x/255 - mean[c]) / std[c]`
    /// per channel. Empty means `x/255`.
    #[serde(default)]
    pub normalize: Option<Normalize>,
    /// Nodes in topological order; the first is the `Input`, the last is the output.
    pub nodes: Vec<Node>,
    /// Class names, index = logit position. May be empty (then classes are "0", "1", ...).
    #[serde(default)]
    pub labels: Vec<String>,
}

/// Per-channel input normalisation (`mean`, `std` have one entry per input channel).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalize {
    /// Per-channel mean of `x/255`.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation of `x/255`.
    pub std: Vec<f32>,
}

fn default_frac_bits() -> u32 {
    16
}
fn one() -> usize {
    1
}

/// One node: a name (also the name of its output), its inputs and its op.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Unique name; other nodes refer to this node's output by it.
    pub name: String,
    /// Names of the nodes whose outputs feed this node (empty for `Input`, two for `Add`).
    #[serde(default)]
    pub inputs: Vec<String>,
    /// The operation and its attributes.
    #[serde(flatten)]
    pub op: Op,
}

/// Graph operations (design.md §5). Weight attributes are names of tensors in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op")]
pub enum Op {
    /// The client's input, shape `[N, C, H, W]` with `[C, H, W] = Graph::input_shape`.
    Input,
    /// 2-D convolution; weight `[c_out, c_in/groups, kh, kw]`, optional bias `[c_out]`.
    Conv2d {
        /// Name of the weight tensor `[c_out, c_in/groups, kh, kw]`.
        weight: String,
        /// Name of the bias tensor `[c_out]`, if any.
        #[serde(default)]
        bias: Option<String>,
        /// Step in H and W (default 1).
        #[serde(default = "one")]
        stride: usize,
        /// Zero padding on each side of H and W (default 0).
        #[serde(default)]
        padding: usize,
        /// Channel groups (default 1).
        #[serde(default = "one")]
        groups: usize,
    },
    /// Fully connected layer on `[N, in]`; weight `[out, in]` (PyTorch order), optional bias `[out]`.
    Linear {
        /// Name of the weight tensor `[out, in]`.
        weight: String,
        /// Name of the bias tensor `[out]`, if any.
        #[serde(default)]
        bias: Option<String>,
    },
    /// Batch normalisation (inference form) with tensors `[C]`; folded into the preceding conv.
    BatchNorm2d {
        /// Name of the scale tensor gamma `[C]`.
        weight: String,
        /// Name of the shift tensor beta `[C]`.
        bias: String,
        /// Name of the running mean `[C]`.
        running_mean: String,
        /// Name of the running variance `[C]`.
        running_var: String,
        /// Added to the variance before the square root.
        eps: f32,
    },
    /// Average pooling, square window `kernel`, step `stride`, zero padding `padding` on each
    /// side that counts in the divisor (PyTorch's `count_include_pad=True`: every window sum is
    /// divided by `kernel^2`). Files written before `padding` existed omit it (0).
    AvgPool2d {
        /// Window side.
        kernel: usize,
        /// Step in H and W.
        stride: usize,
        /// Zero padding on each side of H and W (default 0, at most `kernel / 2`).
        #[serde(default)]
        padding: usize,
    },
    /// Mean over H and W: `[N, C, H, W] -> [N, C]`.
    GlobalAvgPool,
    /// Max pooling, square window, step `stride`, zero padding `padding` (padding counts as -inf).
    MaxPool2d {
        /// Window side.
        kernel: usize,
        /// Step in H and W.
        stride: usize,
        /// Padding on each side (default 0).
        #[serde(default)]
        padding: usize,
    },
    /// `[N, C, H, W] -> [N, C*H*W]` (row-major, PyTorch's flatten order).
    Flatten,
    /// Elementwise sum of two inputs of the same shape (residual connection).
    Add,
    /// `max(x, 0)`.
    Relu,
    /// Fixed polynomial `sum_k c_k x^k` (ascending order). `coefficients` is shared by all
    /// channels; or `coefficients_tensor` names a `[C, d+1]` tensor of per-channel coefficients.
    /// Source: Diaa et al. (PILLAR) uses a shared degree-4 polynomial.
    Poly {
        /// Shared coefficients `c_0..c_d` (ascending), empty when `coefficients_tensor` is set.
        #[serde(default)]
        coefficients: Vec<f32>,
        /// Name of a `[C, d+1]` tensor of per-channel coefficients.
        #[serde(default)]
        coefficients_tensor: Option<String>,
    },
    /// PolyMPCNet / PASNet trainable activation `s*w0*x^2 + w1*x + b`; `w0`, `w1`, `b` name
    /// `[C]` tensors (per channel) or `[1]` tensors (one scalar set per site, as in PASNet's
    /// `x2act`), all three alike; `s` is the fixed weight scale (1, or 0.1 for ResNet-50).
    X2Act {
        /// Fixed weight scale `s`.
        s: f32,
        /// Name of the `[C]` or `[1]` tensor of quadratic weights `w0`.
        w0: String,
        /// Name of the `[C]` or `[1]` tensor of linear weights `w1`.
        w1: String,
        /// Name of the `[C]` or `[1]` tensor of offsets `b`.
        b: String,
    },
    /// PolyKervNets polynomial kervolution applied to the preceding conv's output:
    /// `a_p * (x + c_p)^d_p` (PKN: a_p = 1; R-PKN: trained a_p, init 0.009).
    PolyKerv {
        /// Shift `c_p` added before the power.
        c_p: f32,
        /// Power `d_p` (2 in PolyKervNets).
        d_p: u32,
        /// Output scale `a_p`.
        a_p: f32,
    },
    /// Passes its input through.
    Identity,
}

impl Op {
    /// The op's name as written in the JSON `op` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input => "Input",
            Op::Conv2d { .. } => "Conv2d",
            Op::Linear { .. } => "Linear",
            Op::BatchNorm2d { .. } => "BatchNorm2d",
            Op::AvgPool2d { .. } => "AvgPool2d",
            Op::GlobalAvgPool => "GlobalAvgPool",
            Op::MaxPool2d { .. } => "MaxPool2d",
            Op::Flatten => "Flatten",
            Op::Add => "Add",
            Op::Relu => "Relu",
            Op::Poly { .. } => "Poly",
            Op::X2Act { .. } => "X2Act",
            Op::PolyKerv { .. } => "PolyKerv",
            Op::Identity => "Identity",
        }
    }
}

/// Model card summary stored as `polypi.card` (JSON) next to the graph.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Network name, e.g. "NET-M x2act".
    #[serde(default)]
    pub name: String,
    /// Dataset, e.g. "Fashion-MNIST".
    #[serde(default)]
    pub dataset: String,
    /// Train/test split, e.g. "60000/10000".
    #[serde(default)]
    pub split: String,
    /// Plaintext test accuracy in percent, if measured.
    #[serde(default)]
    pub test_accuracy: Option<f32>,
    /// Training recipe (optimizer, epochs, lr, regularisers), free text.
    #[serde(default)]
    pub recipe: String,
}
