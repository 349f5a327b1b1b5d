//! The compiled network: what every backend of the engine walk runs (design.md §3).
//!
//! A [`Plan`] comes from a [`super::Graph`] plus its weights after the compile passes: BatchNorm
//! folded into the preceding conv, `X2Act`, `PolyKerv` and `Poly` resolved into [`PolyLayer`]s,
//! `Identity` removed, and every shape inferred and checked. Weights stay `f32` here; the
//! fixed-point backends encode them with [`crate::ring::FixedPoint`] so that all of them quantise
//! identically.

/// Geometry of a 2-D convolution on one sample (NCHW, square kernel, symmetric zero padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ConvGeom {
    /// Input channels.
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Step in both directions.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
    /// Channel groups (1 = dense conv; c_in = groups = depthwise).
    pub groups: usize,
}

impl ConvGeom {
    /// Output height `(h + 2p - kh) / stride + 1`.
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.padding - self.kh) / self.stride + 1
    }
    /// Output width `(w + 2p - kw) / stride + 1`.
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.padding - self.kw) / self.stride + 1
    }
    /// Multiply-accumulates per sample: `c_out * out_h * out_w * (c_in/groups) * kh * kw`.
    pub fn macs(&self) -> u64 {
        (self.c_out * self.out_h() * self.out_w() * (self.c_in / self.groups) * self.kh * self.kw)
            as u64
    }
}

/// A convolution with its weight `[c_out, c_in/groups, kh, kw]` and bias `[c_out]` (f32).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConvLayer {
    /// Geometry.
    pub geom: ConvGeom,
    /// Weight, row-major `[c_out, c_in/groups, kh, kw]`.
    pub weight: Vec<f32>,
    /// Bias `[c_out]` (zeros when the graph had none).
    pub bias: Vec<f32>,
}

/// A fully connected layer `y = W x + b` on `[N, in]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinearLayer {
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Weight, row-major `[out, in]` (PyTorch order).
    pub weight: Vec<f32>,
    /// Bias `[out]`.
    pub bias: Vec<f32>,
}

/// A polynomial activation `y = sum_k c[ch][k] x^k`, per channel (channel = dim 1 of NCHW or of
/// `[N, F]`), or one shared polynomial when `coeffs.len() == 1`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PolyLayer {
    /// Degree d >= 1 (highest power with a non-zero coefficient in some channel).
    pub degree: usize,
    /// Coefficients, ascending order, `coeffs[ch].len() == degree + 1`; one row per channel or a
    /// single shared row.
    pub coeffs: Vec<Vec<f32>>,
}

impl PolyLayer {
    /// Coefficients of channel `ch` (the shared row when there is only one).
    pub fn coeffs_of(&self, ch: usize) -> &[f32] {
        if self.coeffs.len() == 1 {
            &self.coeffs[0]
        } else {
            &self.coeffs[ch]
        }
    }
}

/// One compiled operation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum LayerOp {
    /// The client's input.
    Input,
    /// Convolution (BatchNorm already folded in).
    Conv2d(ConvLayer),
    /// Fully connected layer.
    Linear(LinearLayer),
    /// Average pooling, square `kernel`, step `stride`, zero `padding` on each side counted in
    /// the divisor (every window sum is divided by `kernel^2`, PyTorch's `count_include_pad`).
    AvgPool2d {
        /// Window side.
        kernel: usize,
        /// Step in H and W.
        stride: usize,
        /// Zero padding on each side of H and W (at most `kernel / 2`).
        padding: usize,
    },
    /// Mean over H, W: `[N, C, H, W] -> [N, C]`.
    GlobalAvgPool,
    /// Max pooling (square window, zero padding counted as -inf).
    MaxPool2d {
        /// Window side.
        kernel: usize,
        /// Step in H and W.
        stride: usize,
        /// Padding on each side.
        padding: usize,
    },
    /// `[N, C, H, W] -> [N, C*H*W]`.
    Flatten,
    /// Elementwise sum of the two inputs.
    Add,
    /// `max(x, 0)`.
    Relu,
    /// Polynomial activation.
    Poly(PolyLayer),
}

impl LayerOp {
    /// Short name of the op for reports ("Conv2d", "Poly", ...).
    pub fn kind(&self) -> &'static str {
        match self {
            LayerOp::Input => "Input",
            LayerOp::Conv2d(_) => "Conv2d",
            LayerOp::Linear(_) => "Linear",
            LayerOp::AvgPool2d { .. } => "AvgPool2d",
            LayerOp::GlobalAvgPool => "GlobalAvgPool",
            LayerOp::MaxPool2d { .. } => "MaxPool2d",
            LayerOp::Flatten => "Flatten",
            LayerOp::Add => "Add",
            LayerOp::Relu => "Relu",
            LayerOp::Poly(_) => "Poly",
        }
    }
}

/// One compiled layer: op, inputs (indices of earlier layers) and per-sample output shape.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Layer {
    /// Name of the graph node this layer came from.
    pub name: String,
    /// The operation.
    pub op: LayerOp,
    /// Indices into [`Plan::layers`] of the inputs (all smaller than this layer's index).
    pub inputs: Vec<usize>,
    /// Per-sample output shape: `[C, H, W]` or `[F]`.
    pub out_shape: Vec<usize>,
}

/// How the secure parties evaluate the powers `x^2..x^d` of a polynomial layer (both take ONE
/// online round per polynomial layer for any degree; see `docs/polynomials.md`).
///
/// The choice is public and travels in the plan skeleton, so server, client and dealer agree.
/// Both protocols compute the powers of the same pre-truncated input (see
/// [`crate::mpc::encode`]) exactly in the ring, so they share one fixed-point twin.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum PolyProtocol {
    /// HoneyBadger-style dealer powers: the dealer shares `r, r^2..r^m` per power group; the
    /// parties open `e = x - r` (one element each way per group) and expand
    /// `x^k = sum_i C(k,i) e^(k-i) r^i` locally. The default: same dealer bytes as
    /// [`PolyProtocol::SharePowers`] (f = 16), equal online bytes at degree 2 and fewer from
    /// degree 3 on (1 vs m-1 elements each way per group), less online time from degree 3 on
    /// (measured in `docs/polynomials.md`).
    #[default]
    DealerPowers,
    /// ESPN (Diaa et al., USENIX Security '24, CrypTen-ESPN `new_espn_poly`): each party raises
    /// its own share to the powers locally, `x^k = sum_i C(k,i) x0^i x1^(k-i)`; the cross terms
    /// (a server-private times a client-private vector) use dealer Beaver triples for private
    /// inputs, all in one exchange of m-1 elements each way per group ([`crate::mpc::espn`]).
    SharePowers,
}

impl PolyProtocol {
    /// Both protocols.
    pub const ALL: [PolyProtocol; 2] = [PolyProtocol::DealerPowers, PolyProtocol::SharePowers];

    /// Name as on the command line: "dealer-powers" or "share-powers".
    pub fn name(self) -> &'static str {
        match self {
            PolyProtocol::DealerPowers => "dealer-powers",
            PolyProtocol::SharePowers => "share-powers",
        }
    }
}

impl std::fmt::Display for PolyProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PolyProtocol {
    type Err = crate::Error;
    /// Accepts "dealer-powers" (alias "honeybadger", "hb") and "share-powers" (alias "espn").
    /// Errors: `InvalidArgument` naming the accepted values.
    fn from_str(s: &str) -> crate::Result<Self> {
        match s.to_lowercase().replace('_', "-").as_str() {
            "dealer-powers" | "honeybadger" | "hb" => Ok(PolyProtocol::DealerPowers),
            "share-powers" | "espn" => Ok(PolyProtocol::SharePowers),
            _ => Err(crate::Error::InvalidArgument(format!(
                "unknown polynomial protocol '{s}' (expected dealer-powers or share-powers)"
            ))),
        }
    }
}

/// A compiled network, ready for any backend.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    /// Layers in topological order; `layers[0]` is the `Input`, the last layer is the output.
    pub layers: Vec<Layer>,
    /// Fixed-point fractional bits.
    pub frac_bits: u32,
    /// Class labels (may be empty).
    pub labels: Vec<String>,
    /// Input normalisation, copied from the graph.
    pub normalize: Option<super::graph::Normalize>,
    /// Protocol of the polynomial layers (public; chosen by the server, e.g. `--poly-protocol`).
    #[serde(default)]
    pub poly_protocol: PolyProtocol,
}

impl Plan {
    /// Per-sample input shape `[C, H, W]`.
    pub fn input_shape(&self) -> &[usize] {
        &self.layers[0].out_shape
    }
    /// Number of output classes (elements of the last layer's output).
    pub fn num_classes(&self) -> usize {
        self.layers.last().map(|l| l.out_shape.iter().product()).unwrap_or(0)
    }
}

impl Plan {
    /// The public part of the plan, sent by the server to the client and the dealer: shapes,
    /// geometry and polynomial coefficients (public by design.md §4), with every weight and bias
    /// removed (empty vectors).
    pub fn public_skeleton(&self) -> Plan {
        let mut p = self.clone();
        for l in &mut p.layers {
            match &mut l.op {
                LayerOp::Conv2d(c) => {
                    c.weight = Vec::new();
                    c.bias = Vec::new();
                }
                LayerOp::Linear(c) => {
                    c.weight = Vec::new();
                    c.bias = Vec::new();
                }
                _ => {}
            }
        }
        p
    }

    /// Checks that a plan received from a peer is self-consistent and within the default size
    /// limits, so that no bad geometry can make this party panic or allocate without bound:
    /// inputs refer to earlier layers, first layer is the input, shapes are non-empty, every
    /// layer as [`super::limits::check_geometry`] (weights may be absent) and the plan as
    /// [`super::limits::check_plan`]. Errors: `Protocol` naming the layer.
    pub fn check_skeleton(&self) -> crate::Result<()> {
        let bad = |m: String| crate::Error::Protocol(format!("peer sent an invalid plan: {m}"));
        if self.layers.is_empty() || self.layers[0].op != LayerOp::Input {
            return Err(bad("no input layer".into()));
        }
        if self.frac_bits > 30 {
            return Err(bad(format!("frac_bits {}", self.frac_bits)));
        }
        for (i, l) in self.layers.iter().enumerate() {
            if l.inputs.iter().any(|&j| j >= i)
                || l.out_shape.is_empty()
                || l.out_shape.contains(&0)
            {
                return Err(bad(format!("layer {}", l.name)));
            }
        }
        let limits = super::limits::Limits::default();
        super::limits::check_geometry(self, &limits, false)
            .and_then(|()| super::limits::check_plan(self, &limits).map(|_| ()))
            .map_err(|e| bad(e.to_string()))
    }
}
