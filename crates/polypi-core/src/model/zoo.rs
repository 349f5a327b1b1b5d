//! The reference networks of `reference.md` (NET-M, NET-C, NET-R18) with deterministic
//! pseudo-random weights, for tests, benchmarks and cost estimates.
//!
//! Weights come from `ChaCha8Rng::seed_from_u64(seed)` (model initialisation, not cryptography):
//! the same `(net, act, pool, width, seed)` always gives the same file, byte for byte.
//!
//! The weight scales are chosen so that, for inputs in `[0, 1]` (and for normalised CIFAR
//! inputs, roughly `[-2, 2]`), every layer's values stay O(1) (max |value| below ~10, far below
//! the 64 the fixed-point tests need), also for the polynomial variants, which would otherwise
//! blow up (or vanish) doubly exponentially with depth. Weights are uniform with
//! `Var(w) = gain2 / fan_in`:
//! - `Relu` (gain2 2, He), `Pillar` and `X2Act` (gain2 1): variance preserving (NET-R18 X2Act:
//!   stem 0.5, branch 0.15, shortcut 0.6, which keeps its slowly growing quadratic term small).
//! - `Square` (`x^2`): gain2 0.15 plus a per-channel pre-activation bias of ±0.78, so that the
//!   layer-to-layer map of the second moment, `e' = b^4 + 6 b^2 a e + 3 a^2 e^2`, has an
//!   *attracting* fixed point at 1 (slope ~0.7): deviations shrink from layer to layer instead of
//!   being squared (with no bias, `e = 1` is a repelling fixed point and 7 squarings turn a 5%
//!   deviation into a factor 500).
//! - `Pkn` (`(x + 1)^2`): gain2 0.08 (its `c_p = 1` is the bias; attracting fixed point ~2).
//! - NET-R18: the activation after a residual add sees the shortcut at gain 1, so the
//!   contraction comes from a negative shift before it (`BatchNorm` beta -0.5 for `Square`,
//!   -1.5 for `Pkn`: `y -> (y - 0.5)^2` has an attracting fixed point at 0.13), with a small
//!   residual branch (gain2 0.04 / 0.02) and stem (gain2 0.03); the other variants use a branch
//!   gain2 of 0.25..0.5 so that the sum does not grow block by block.
//!
//! NET-R18's BatchNorm parameters are random near identity (gamma ~ U(0.9, 1.1), running_mean
//! ~ U(-0.05, 0.05), running_var ~ U(0.9, 1.1)); beta carries the pre-activation bias above
//! (±0.02 jitter, else 0). Its convs have no bias (as in torchvision); NET-M/NET-C convs do.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::file::{ModelFile, TensorF32};
use super::graph::{Graph, ModelCard, Node, Normalize, Op};
use crate::error::{Error, Result};

/// PILLAR's shared degree-4 ReLU approximation (Diaa et al., USENIX Security '24, `CrypTen-ESPN`
/// configs): `322/1024 + 512/1024 x + 160/1024 x^2 + 0 x^3 - 3/1024 x^4`, ascending order.
pub const PILLAR_COEFFS: [f32; 5] =
    [322.0 / 1024.0, 512.0 / 1024.0, 160.0 / 1024.0, 0.0, -3.0 / 1024.0];

/// CIFAR-10 class names, index = label.
pub const CIFAR10_LABELS: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Per-channel mean of CIFAR-10 training images (`x/255`).
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// Per-channel standard deviation of CIFAR-10 training images (`x/255`).
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

/// One of the reference networks of `reference.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefNet {
    /// MiniONN's MNIST net, input 1x28x28: conv5x5 1->16, ACT, avgpool2, conv5x5 16->16, ACT,
    /// avgpool2, flatten (256), fc 256->100, ACT, fc 100->10.
    NetM,
    /// MiniONN/Delphi CIFAR-10 net, input 3x32x32: 7 convs (3x3 p1 x5, 1x1 x2), 7 ACTs, 2
    /// avgpools, flatten (1024), fc 1024->10.
    NetC,
    /// CIFAR ResNet-18, input 3x32x32: 3x3 stem conv 64 + BN + ACT, 4 stages x 2 BasicBlocks
    /// (64/128/256/512, strides 1/2/2/2, 1x1 projection shortcuts + BN), global avgpool,
    /// fc 512->10.
    NetR18,
}

impl RefNet {
    /// All reference networks.
    pub const ALL: [RefNet; 3] = [RefNet::NetM, RefNet::NetC, RefNet::NetR18];

    /// Name as in `reference.md` ("NET-M", "NET-C", "NET-R18").
    pub fn name(self) -> &'static str {
        match self {
            RefNet::NetM => "NET-M",
            RefNet::NetC => "NET-C",
            RefNet::NetR18 => "NET-R18",
        }
    }
}

impl fmt::Display for RefNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RefNet {
    type Err = Error;
    /// Accepts "NET-M", "net-m", "netm", "m", "NET-C", "netc", "c", "NET-R18", "netr18", "r18",
    /// "resnet18" (case, '-' and '_' ignored). Errors with [`Error::InvalidArgument`].
    fn from_str(s: &str) -> Result<Self> {
        let k: String =
            s.chars().filter(|c| *c != '-' && *c != '_').flat_map(char::to_lowercase).collect();
        match k.as_str() {
            "netm" | "m" => Ok(RefNet::NetM),
            "netc" | "c" => Ok(RefNet::NetC),
            "netr18" | "r18" | "resnet18" => Ok(RefNet::NetR18),
            _ => Err(Error::InvalidArgument(format!(
                "unknown reference network '{s}' (expected NET-M, NET-C or NET-R18)"
            ))),
        }
    }
}

/// The activation placed at every ACT site of a reference network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Act {
    /// `max(x, 0)` (the "relu" variant).
    Relu,
    /// PolyMPCNet / PASNet X2act (Peng et al., DAC 2023) `s*w0*x^2 + w1*x + b` per channel, `s = 1`,
    /// random `w0` in 0.005..0.1, `w1` in 0.9..1.1, `b` small.
    X2Act,
    /// `x^2` (the "poly" variant of `reference.md`): `Poly` with coefficients `[0, 0, 1]`.
    Square,
    /// PILLAR's shared degree-4 polynomial [`PILLAR_COEFFS`] (Diaa et al., USENIX Security '24).
    Pillar,
    /// PolyKervNets (Aremu & Nandakumar, SaTML 2023): `PolyKerv{c_p: 1, d_p: 2, a_p: 1}`, i.e.
    /// `(x + 1)^2` of the preceding conv's (or linear's) output.
    Pkn,
}

impl Act {
    /// All activation variants.
    pub const ALL: [Act; 5] = [Act::Relu, Act::X2Act, Act::Square, Act::Pillar, Act::Pkn];

    /// Short name ("relu", "x2act", "square", "pillar", "pkn").
    pub fn name(self) -> &'static str {
        match self {
            Act::Relu => "relu",
            Act::X2Act => "x2act",
            Act::Square => "square",
            Act::Pillar => "pillar",
            Act::Pkn => "pkn",
        }
    }
}

impl fmt::Display for Act {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Act {
    type Err = Error;
    /// Accepts "relu", "x2"/"x2act", "square"/"poly"/"x^2", "pillar", "pkn"/"polykerv" (case
    /// ignored). Errors with [`Error::InvalidArgument`].
    fn from_str(s: &str) -> Result<Self> {
        match s.to_lowercase().as_str() {
            "relu" => Ok(Act::Relu),
            "x2" | "x2act" => Ok(Act::X2Act),
            "square" | "poly" | "x^2" | "sq" => Ok(Act::Square),
            "pillar" => Ok(Act::Pillar),
            "pkn" | "polykerv" => Ok(Act::Pkn),
            _ => Err(Error::InvalidArgument(format!(
                "unknown activation '{s}' (expected relu, x2, square/poly, pillar or pkn)"
            ))),
        }
    }
}

/// The pooling used at the 2x2 pooling sites of NET-M and NET-C (NET-R18 has only its global
/// average pool, which `Pool` does not change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pool {
    /// `AvgPool2d(2, 2)` (reference.md).
    Avg,
    /// `MaxPool2d(2, 2)` (the "ReLU + maxpool" variant).
    Max,
}

impl Pool {
    /// Short name ("avg", "max").
    pub fn name(self) -> &'static str {
        match self {
            Pool::Avg => "avg",
            Pool::Max => "max",
        }
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Pool {
    type Err = Error;
    /// Accepts "avg"/"avgpool", "max"/"maxpool" (case ignored).
    fn from_str(s: &str) -> Result<Self> {
        match s.to_lowercase().as_str() {
            "avg" | "avgpool" | "mean" => Ok(Pool::Avg),
            "max" | "maxpool" => Ok(Pool::Max),
            _ => {
                Err(Error::InvalidArgument(format!("unknown pooling '{s}' (expected avg or max)")))
            }
        }
    }
}

/// Builds a reference network with deterministic pseudo-random weights.
///
/// `width` multiplies every hidden channel count (1.0 = `reference.md`; counts are rounded and at
/// least 1); NET-M's hidden fc width (100) and the class count (10) stay. Labels: "0".."9" for
/// NET-M, [`CIFAR10_LABELS`] otherwise; input normalisation: none for NET-M,
/// [`CIFAR10_MEAN`]/[`CIFAR10_STD`] otherwise. Errors: [`Error::InvalidArgument`] for a width that
/// is not finite and positive.
pub fn build(net: RefNet, act: Act, pool: Pool, width: f32, seed: u64) -> Result<ModelFile> {
    if !(width.is_finite() && width > 0.0) {
        return Err(Error::InvalidArgument(format!("width {width} must be finite and > 0")));
    }
    let ch = |c: usize| ((c as f32 * width).round() as usize).max(1);
    let mut b = Builder::new(act, pool, seed);
    let (input_shape, labels, normalize, dataset) = match net {
        RefNet::NetM => {
            let (c1, c2) = (ch(16), ch(16));
            let x = b.push("input", &[], Op::Input);
            let x = b.conv_act("conv1", &x, 1, c1, 5, 1, 0, 1);
            let x = b.pool("pool1", &x);
            let x = b.conv_act("conv2", &x, c1, c2, 5, 1, 0, 2);
            let x = b.pool("pool2", &x);
            let x = b.push("flatten", &[&x], Op::Flatten);
            let x = b.linear_act("fc1", &x, c2 * 16, 100, 3);
            b.linear("fc2", &x, 100, 10, 1.0, 0.0);
            let labels = (0..10).map(|i| i.to_string()).collect();
            (vec![1, 28, 28], labels, None, "MNIST / Fashion-MNIST")
        }
        RefNet::NetC => {
            let c = ch(64);
            let c7 = ch(16);
            let x = b.push("input", &[], Op::Input);
            let x = b.conv_act("conv1", &x, 3, c, 3, 1, 1, 1);
            let x = b.conv_act("conv2", &x, c, c, 3, 1, 1, 2);
            let x = b.pool("pool1", &x);
            let x = b.conv_act("conv3", &x, c, c, 3, 1, 1, 3);
            let x = b.conv_act("conv4", &x, c, c, 3, 1, 1, 4);
            let x = b.pool("pool2", &x);
            let x = b.conv_act("conv5", &x, c, c, 3, 1, 1, 5);
            let x = b.conv_act("conv6", &x, c, c, 1, 1, 0, 6);
            let x = b.conv_act("conv7", &x, c, c7, 1, 1, 0, 7);
            let x = b.push("flatten", &[&x], Op::Flatten);
            b.linear("fc", &x, c7 * 64, 10, 1.0, 0.0);
            (vec![3, 32, 32], cifar_labels(), Some(cifar_norm()), "CIFAR-10")
        }
        RefNet::NetR18 => {
            let x = b.push("input", &[], Op::Input);
            let c0 = ch(64);
            let x = b.conv("conv1", &x, 3, c0, 3, 1, 1, false, b.init.stem_gain2);
            let x = b.bn("bn1", &x, c0, 1.0, b.init.post_bias, false);
            let mut x = b.act("act1", &x, c0);
            let mut c_in = c0;
            for (stage, (&c, &stride)) in
                [64usize, 128, 256, 512].iter().zip(&[1usize, 2, 2, 2]).enumerate()
            {
                let c = ch(c);
                for blk in 0..2 {
                    let s = if blk == 0 { stride } else { 1 };
                    x = b.basic_block(&format!("layer{}.{blk}", stage + 1), &x, c_in, c, s);
                    c_in = c;
                }
            }
            let x = b.push("avgpool", &[&x], Op::GlobalAvgPool);
            b.linear("fc", &x, c_in, 10, b.init.fc_gain2, 0.0);
            (vec![3, 32, 32], cifar_labels(), Some(cifar_norm()), "CIFAR-10")
        }
    };
    let graph = Graph { input_shape, frac_bits: 16, normalize, nodes: b.nodes, labels };
    let pool_name = match pool {
        Pool::Avg => "avgpool",
        Pool::Max => "maxpool",
    };
    let card = ModelCard {
        name: format!("{net} {act} {pool_name} width {width}"),
        dataset: dataset.into(),
        split: String::new(),
        test_accuracy: None,
        recipe: format!("untrained: deterministic pseudo-random weights (polypi zoo, seed {seed})"),
    };
    let file = ModelFile { graph, card: Some(card), ranges: None, tensors: b.tensors };
    file.validate()?;
    Ok(file)
}

fn cifar_labels() -> Vec<String> {
    CIFAR10_LABELS.iter().map(|s| s.to_string()).collect()
}

fn cifar_norm() -> Normalize {
    Normalize { mean: CIFAR10_MEAN.to_vec(), std: CIFAR10_STD.to_vec() }
}

/// Initialisation constants of one activation variant (see the module docs).
#[derive(Debug, Clone, Copy)]
struct Init {
    /// `Var(w) = gain2 / fan_in` for a conv/linear feeding an activation.
    gain2: f32,
    /// Magnitude of the per-channel pre-activation bias (random sign).
    bias: f32,
    /// NET-R18: gain2 of the stem conv.
    stem_gain2: f32,
    /// NET-R18: gain2 of the second conv of a block (the residual branch).
    branch_gain2: f32,
    /// NET-R18: gain2 of a 1x1 projection shortcut.
    shortcut_gain2: f32,
    /// NET-R18: pre-activation bias (fixed sign) of the activation after the residual add (and
    /// of the stem's activation).
    post_bias: f32,
    /// NET-R18: gain2 of the final fc (brings the logits to O(1)).
    fc_gain2: f32,
}

impl Init {
    fn of(act: Act) -> Init {
        match act {
            Act::Relu => Init {
                gain2: 2.0,
                bias: 0.0,
                stem_gain2: 2.0,
                branch_gain2: 0.5,
                shortcut_gain2: 1.0,
                post_bias: 0.0,
                fc_gain2: 1.0,
            },
            Act::X2Act => Init {
                gain2: 1.0,
                bias: 0.0,
                stem_gain2: 0.5,
                branch_gain2: 0.15,
                shortcut_gain2: 0.6,
                post_bias: 0.0,
                fc_gain2: 1.0,
            },
            Act::Pillar => Init {
                gain2: 1.0,
                bias: 0.0,
                stem_gain2: 1.0,
                branch_gain2: 0.25,
                shortcut_gain2: 0.5,
                post_bias: 0.0,
                fc_gain2: 1.0,
            },
            Act::Square => Init {
                gain2: 0.15,
                bias: 0.78,
                stem_gain2: 0.03,
                branch_gain2: 0.04,
                shortcut_gain2: 0.5,
                post_bias: -0.5,
                fc_gain2: 16.0,
            },
            Act::Pkn => Init {
                gain2: 0.08,
                bias: 0.0,
                stem_gain2: 0.03,
                branch_gain2: 0.02,
                shortcut_gain2: 0.5,
                post_bias: -1.5,
                fc_gain2: 16.0,
            },
        }
    }
}

struct Builder {
    nodes: Vec<Node>,
    tensors: BTreeMap<String, TensorF32>,
    rng: ChaCha8Rng,
    act: Act,
    pool: Pool,
    init: Init,
}

impl Builder {
    fn new(act: Act, pool: Pool, seed: u64) -> Self {
        Builder {
            nodes: Vec::new(),
            tensors: BTreeMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            act,
            pool,
            init: Init::of(act),
        }
    }

    /// Uniform in `[lo, hi)`.
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
        lo + (hi - lo) * u
    }

    fn sign(&mut self) -> f32 {
        if self.rng.next_u32() & 1 == 0 {
            1.0
        } else {
            -1.0
        }
    }

    fn vec_uniform(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    fn tensor(&mut self, name: String, shape: Vec<usize>, data: Vec<f32>) -> String {
        self.tensors.insert(name.clone(), TensorF32 { shape, data });
        name
    }

    fn push(&mut self, name: &str, inputs: &[&str], op: Op) -> String {
        self.nodes.push(Node {
            name: name.to_string(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            op,
        });
        name.to_string()
    }

    /// Per-channel bias of magnitude `mag` with random sign plus a small jitter.
    fn bias_vec(&mut self, n: usize, mag: f32, random_sign: bool) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let s = if random_sign { self.sign() } else { 1.0 };
                s * mag + self.uniform(-0.02, 0.02)
            })
            .collect()
    }

    /// Weight `[c_out, c_in, k, k]`, uniform with `Var = gain2 / fan_in`.
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        name: &str,
        x: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
        bias: bool,
        gain2: f32,
    ) -> String {
        let fan_in = (c_in * k * k) as f32;
        let lim = (3.0 * gain2 / fan_in).sqrt();
        let w = self.vec_uniform(c_out * c_in * k * k, -lim, lim);
        let weight = self.tensor(format!("{name}.weight"), vec![c_out, c_in, k, k], w);
        let bias = if bias {
            let b = self.bias_vec(c_out, self.init.bias, true);
            Some(self.tensor(format!("{name}.bias"), vec![c_out], b))
        } else {
            None
        };
        self.push(name, &[x], Op::Conv2d { weight, bias, stride, padding, groups: 1 })
    }

    /// Conv (with bias) followed by the activation `act{n}`.
    #[allow(clippy::too_many_arguments)]
    fn conv_act(
        &mut self,
        name: &str,
        x: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
        n: usize,
    ) -> String {
        let y = self.conv(name, x, c_in, c_out, k, stride, padding, true, self.init.gain2);
        self.act(&format!("act{n}"), &y, c_out)
    }

    /// Weight `[f_out, f_in]` uniform with `Var = gain2 / f_in`; bias of magnitude `bias`.
    fn linear(
        &mut self,
        name: &str,
        x: &str,
        f_in: usize,
        f_out: usize,
        gain2: f32,
        bias: f32,
    ) -> String {
        let lim = (3.0 * gain2 / f_in as f32).sqrt();
        let w = self.vec_uniform(f_out * f_in, -lim, lim);
        let weight = self.tensor(format!("{name}.weight"), vec![f_out, f_in], w);
        let b = self.bias_vec(f_out, bias, true);
        let bias = Some(self.tensor(format!("{name}.bias"), vec![f_out], b));
        self.push(name, &[x], Op::Linear { weight, bias })
    }

    fn linear_act(&mut self, name: &str, x: &str, f_in: usize, f_out: usize, n: usize) -> String {
        let y = self.linear(name, x, f_in, f_out, self.init.gain2, self.init.bias);
        self.act(&format!("act{n}"), &y, f_out)
    }

    /// BatchNorm near identity: gamma ~ `gamma`*(0.9..1.1), running_mean ~ ±0.05, running_var ~
    /// 0.9..1.1; beta = the given bias (random sign if asked) + jitter.
    fn bn(
        &mut self,
        name: &str,
        x: &str,
        c: usize,
        gamma: f32,
        beta: f32,
        random_sign: bool,
    ) -> String {
        let g: Vec<f32> = (0..c).map(|_| gamma * self.uniform(0.9, 1.1)).collect();
        let bt = self.bias_vec(c, beta, random_sign);
        let mean = self.vec_uniform(c, -0.05, 0.05);
        let var = self.vec_uniform(c, 0.9, 1.1);
        let weight = self.tensor(format!("{name}.weight"), vec![c], g);
        let bias = self.tensor(format!("{name}.bias"), vec![c], bt);
        let running_mean = self.tensor(format!("{name}.running_mean"), vec![c], mean);
        let running_var = self.tensor(format!("{name}.running_var"), vec![c], var);
        self.push(
            name,
            &[x],
            Op::BatchNorm2d { weight, bias, running_mean, running_var, eps: 1e-5 },
        )
    }

    fn act(&mut self, name: &str, x: &str, c: usize) -> String {
        let op = match self.act {
            Act::Relu => Op::Relu,
            Act::Square => {
                Op::Poly { coefficients: vec![0.0, 0.0, 1.0], coefficients_tensor: None }
            }
            Act::Pillar => {
                Op::Poly { coefficients: PILLAR_COEFFS.to_vec(), coefficients_tensor: None }
            }
            Act::Pkn => Op::PolyKerv { c_p: 1.0, d_p: 2, a_p: 1.0 },
            Act::X2Act => {
                let w0 = self.vec_uniform(c, 0.005, 0.1);
                let w1 = self.vec_uniform(c, 0.9, 1.1);
                let b = self.vec_uniform(c, -0.05, 0.05);
                let w0 = self.tensor(format!("{name}.w0"), vec![c], w0);
                let w1 = self.tensor(format!("{name}.w1"), vec![c], w1);
                let b = self.tensor(format!("{name}.b"), vec![c], b);
                Op::X2Act { s: 1.0, w0, w1, b }
            }
        };
        self.push(name, &[x], op)
    }

    fn pool(&mut self, name: &str, x: &str) -> String {
        let op = match self.pool {
            Pool::Avg => Op::AvgPool2d { kernel: 2, stride: 2, padding: 0 },
            Pool::Max => Op::MaxPool2d { kernel: 2, stride: 2, padding: 0 },
        };
        self.push(name, &[x], op)
    }

    /// CIFAR ResNet BasicBlock: conv3x3(s)-BN-ACT-conv3x3-BN, + shortcut (1x1 conv stride s + BN
    /// when the shape changes, else identity), Add, ACT.
    fn basic_block(&mut self, p: &str, x: &str, c_in: usize, c: usize, stride: usize) -> String {
        let it = self.init;
        let y = self.conv(&format!("{p}.conv1"), x, c_in, c, 3, stride, 1, false, it.gain2);
        let y = self.bn(&format!("{p}.bn1"), &y, c, 1.0, it.bias, true);
        let y = self.act(&format!("{p}.act1"), &y, c);
        let y = self.conv(&format!("{p}.conv2"), &y, c, c, 3, 1, 1, false, it.branch_gain2);
        let y = self.bn(&format!("{p}.bn2"), &y, c, 1.0, it.post_bias, false);
        let sc = if stride != 1 || c_in != c {
            let s = self.conv(
                &format!("{p}.shortcut.0"),
                x,
                c_in,
                c,
                1,
                stride,
                0,
                false,
                it.shortcut_gain2,
            );
            self.bn(&format!("{p}.shortcut.1"), &s, c, 1.0, 0.0, false)
        } else {
            x.to_string()
        };
        let z = self.push(&format!("{p}.add"), &[&y, &sc], Op::Add);
        self.act(&format!("{p}.act2"), &z, c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::compile::{compile, naive};
    use rand_core::RngCore;

    fn random_input(n: usize, seed: u64) -> Vec<f32> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| (r.next_u32() >> 8) as f32 / (1u32 << 24) as f32).collect()
    }

    /// Max |value| per layer, and the logits, for a random input in [0, 1].
    fn run(net: RefNet, act: Act, pool: Pool, seed: u64) -> (Vec<(String, f32)>, Vec<f32>) {
        run_seeded(net, act, pool, seed, 7)
    }

    fn run_seeded(
        net: RefNet,
        act: Act,
        pool: Pool,
        seed: u64,
        build_seed: u64,
    ) -> (Vec<(String, f32)>, Vec<f32>) {
        let f = build(net, act, pool, 1.0, build_seed).unwrap();
        let plan = compile(&f).unwrap();
        let n: usize = plan.input_shape().iter().product();
        let outs = naive::forward(&plan, &random_input(n, seed));
        let maxes = plan
            .layers
            .iter()
            .zip(&outs)
            .map(|(l, o)| (l.name.clone(), o.iter().fold(0f32, |m, v| m.max(v.abs()))))
            .collect();
        (maxes, outs.last().unwrap().clone())
    }

    /// The deep networks stay in range for another weight seed, and for inputs in [-2, 2]
    /// (normalised CIFAR images) too.
    #[test]
    fn zoo_is_stable_across_seeds_and_inputs() {
        for net in [RefNet::NetC, RefNet::NetR18] {
            for act in Act::ALL {
                // Seed 11 is the one the engine's end-to-end tests use.
                for (build_seed, scale) in [(11u64, 1.0f32), (7, 4.0)] {
                    let f = build(net, act, Pool::Avg, 1.0, build_seed).unwrap();
                    let plan = compile(&f).unwrap();
                    let n: usize = plan.input_shape().iter().product();
                    let x: Vec<f32> = random_input(n, build_seed + 100)
                        .iter()
                        .map(|v| if scale == 1.0 { *v } else { (v - 0.5) * scale })
                        .collect();
                    let outs = naive::forward(&plan, &x);
                    let worst = outs.iter().flatten().fold(0f32, |m, v| {
                        if v.is_finite() {
                            m.max(v.abs())
                        } else {
                            f32::INFINITY
                        }
                    });
                    eprintln!(
                        "{net} {act} seed {build_seed} input scale {scale}: max|act| {worst:.3}"
                    );
                    assert!(worst < 64.0, "{net} {act} seed {build_seed} scale {scale}: {worst}");
                }
            }
        }
    }

    #[test]
    fn zoo_activations_stay_in_range() {
        for net in RefNet::ALL {
            for act in Act::ALL {
                for pool in [Pool::Avg, Pool::Max] {
                    if pool == Pool::Max && net == RefNet::NetR18 {
                        continue;
                    }
                    let (maxes, logits) = run(net, act, pool, 1);
                    // A second input (skipped for the costly NET-R18): logits must depend on it.
                    let logits2 = if net == RefNet::NetR18 {
                        logits.clone()
                    } else {
                        run(net, act, pool, 2).1
                    };
                    let worst = maxes.iter().fold(0f32, |m, (_, v)| m.max(*v));
                    let diff =
                        logits.iter().zip(&logits2).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                    let spread = logits.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v))
                        - logits.iter().fold(f32::INFINITY, |m, v| m.min(*v));
                    eprintln!(
                        "{net} {act} {pool:?}: max|act| {worst:.3}; logit spread {spread:.4}; \
                         input sensitivity {diff:.4}; per layer {:?}",
                        maxes.iter().map(|(n, v)| format!("{n}={v:.2}")).collect::<Vec<_>>()
                    );
                    assert!(worst < 64.0, "{net} {act} {pool:?}: max |activation| {worst}");
                    assert!(logits.iter().all(|v| v.is_finite()));
                    assert!(spread > 0.0, "{net} {act} {pool:?}: all logits equal");
                    assert!(net == RefNet::NetR18 || diff > 0.0, "{net} {act}: input ignored");
                }
            }
        }
    }
}

#[cfg(test)]
mod shape_tests {
    use super::*;
    use crate::model::compile::compile;
    use crate::model::plan::LayerOp;

    fn learnable_params(f: &ModelFile) -> usize {
        f.tensors
            .iter()
            .filter(|(n, _)| !n.ends_with(".running_mean") && !n.ends_with(".running_var"))
            .map(|(_, t)| t.data.len())
            .sum()
    }

    fn shape_of(plan: &crate::model::Plan, name: &str) -> Vec<usize> {
        plan.layers.iter().find(|l| l.name == name).unwrap().out_shape.clone()
    }

    #[test]
    fn reference_shapes_and_parameter_counts() {
        for act in Act::ALL {
            let m = build(RefNet::NetM, act, Pool::Avg, 1.0, 1).unwrap();
            let pm = compile(&m).unwrap();
            assert_eq!(pm.input_shape(), &[1, 28, 28]);
            assert_eq!(shape_of(&pm, "flatten"), vec![256]);
            assert_eq!(shape_of(&pm, "fc1"), vec![100]);
            assert_eq!(pm.num_classes(), 10);
            assert_eq!(m.graph.labels[3], "3");
            assert!(m.graph.normalize.is_none());
            let extra = if act == Act::X2Act { 3 * (16 + 16 + 100) } else { 0 };
            assert_eq!(learnable_params(&m), 33_542 + extra, "{act}");

            let c = build(RefNet::NetC, act, Pool::Avg, 1.0, 1).unwrap();
            let pc = compile(&c).unwrap();
            assert_eq!(pc.input_shape(), &[3, 32, 32]);
            assert_eq!(shape_of(&pc, "flatten"), vec![1024]);
            assert_eq!(shape_of(&pc, "pool2"), vec![64, 8, 8]);
            assert_eq!(c.graph.labels[0], "airplane");
            assert_eq!(c.graph.normalize.as_ref().unwrap().mean.len(), 3);
            let extra = if act == Act::X2Act { 3 * (6 * 64 + 16) } else { 0 };
            assert_eq!(learnable_params(&c), 164_954 + extra, "{act}");
            let n_act = pc
                .layers
                .iter()
                .filter(|l| matches!(l.op, LayerOp::Poly(_) | LayerOp::Relu))
                .count();
            assert_eq!(n_act, 7);

            let r = build(RefNet::NetR18, act, Pool::Avg, 1.0, 1).unwrap();
            let pr = compile(&r).unwrap();
            let fc = pr.layers.last().unwrap();
            let LayerOp::Linear(l) = &fc.op else { panic!() };
            assert_eq!((l.in_features, l.out_features), (512, 10));
            assert_eq!(shape_of(&pr, "layer4.1.act2"), vec![512, 4, 4]);
            assert_eq!(shape_of(&pr, "layer2.0.act2"), vec![128, 16, 16]);
            // All 20 BatchNorms folded into their convs.
            assert!(pr.layers.iter().all(|l| !l.name.contains("bn") && !l.name.ends_with(".1")));
            let convs = pr.layers.iter().filter(|l| matches!(l.op, LayerOp::Conv2d(_))).count();
            assert_eq!(convs, 20);
            let acts = pr
                .layers
                .iter()
                .filter(|l| matches!(l.op, LayerOp::Poly(_) | LayerOp::Relu))
                .count();
            assert_eq!(acts, 17);
            // X2Act: w0, w1, b for each of the 17 activation sites (3904 channels).
            let extra = if act == Act::X2Act { 3 * 3904 } else { 0 };
            assert_eq!(learnable_params(&r), 11_173_962 + extra, "{act}");
        }
    }

    #[test]
    fn pools_width_and_determinism() {
        let c = build(RefNet::NetC, Act::Relu, Pool::Max, 1.0, 1).unwrap();
        let pc = compile(&c).unwrap();
        assert_eq!(pc.layers.iter().filter(|l| l.op.kind() == "MaxPool2d").count(), 2);
        assert_eq!(pc.layers.iter().filter(|l| l.op.kind() == "AvgPool2d").count(), 0);

        let h = build(RefNet::NetM, Act::Square, Pool::Avg, 0.5, 1).unwrap();
        let ph = compile(&h).unwrap();
        assert_eq!(shape_of(&ph, "flatten"), vec![128]);
        assert_eq!(shape_of(&ph, "fc1"), vec![100]);
        let r = build(RefNet::NetR18, Act::Relu, Pool::Avg, 0.25, 1).unwrap();
        let pr = compile(&r).unwrap();
        let LayerOp::Linear(l) = &pr.layers.last().unwrap().op else { panic!() };
        assert_eq!(l.in_features, 128);

        let a = build(RefNet::NetM, Act::Pkn, Pool::Avg, 1.0, 9).unwrap().to_bytes().unwrap();
        let b = build(RefNet::NetM, Act::Pkn, Pool::Avg, 1.0, 9).unwrap().to_bytes().unwrap();
        let c = build(RefNet::NetM, Act::Pkn, Pool::Avg, 1.0, 10).unwrap().to_bytes().unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(build(RefNet::NetM, Act::Relu, Pool::Avg, 0.0, 1).is_err());
        assert!(build(RefNet::NetM, Act::Relu, Pool::Avg, f32::NAN, 1).is_err());
    }

    #[test]
    fn activation_lowering_per_variant() {
        let poly = |act| {
            let p = compile(&build(RefNet::NetM, act, Pool::Avg, 1.0, 1).unwrap()).unwrap();
            match &p.layers.iter().find(|l| l.name == "act1").unwrap().op {
                LayerOp::Poly(p) => Some(p.clone()),
                _ => None,
            }
        };
        assert!(poly(Act::Relu).is_none());
        assert_eq!(poly(Act::Square).unwrap().coeffs, vec![vec![0.0, 0.0, 1.0]]);
        // PKN (x + 1)^2: c_p = 1 is folded into conv1's bias, the polynomial is x^2.
        assert_eq!(poly(Act::Pkn).unwrap().coeffs, vec![vec![0.0, 0.0, 1.0]]);
        let p = poly(Act::Pillar).unwrap();
        assert_eq!(p.degree, 4);
        assert_eq!(p.coeffs[0], PILLAR_COEFFS.to_vec());
        let p = poly(Act::X2Act).unwrap();
        assert_eq!((p.degree, p.coeffs.len()), (2, 16));
        for row in &p.coeffs {
            assert!((0.005..0.1).contains(&row[2]) && (0.9..1.1).contains(&row[1]));
        }
    }

    #[test]
    fn names_parse() {
        for (s, n) in [
            ("NET-M", RefNet::NetM),
            ("net-m", RefNet::NetM),
            ("netm", RefNet::NetM),
            ("NET-C", RefNet::NetC),
            ("net_c", RefNet::NetC),
            ("NET-R18", RefNet::NetR18),
            ("r18", RefNet::NetR18),
        ] {
            assert_eq!(s.parse::<RefNet>().unwrap(), n);
        }
        for n in RefNet::ALL {
            assert_eq!(n.name().parse::<RefNet>().unwrap(), n);
        }
        let e = "net-x".parse::<RefNet>().unwrap_err().to_string();
        assert!(e.contains("net-x") && e.contains("NET-M"), "{e}");
        for (s, a) in [
            ("relu", Act::Relu),
            ("x2", Act::X2Act),
            ("X2ACT", Act::X2Act),
            ("square", Act::Square),
            ("poly", Act::Square),
            ("pillar", Act::Pillar),
            ("pkn", Act::Pkn),
        ] {
            assert_eq!(s.parse::<Act>().unwrap(), a);
        }
        for a in Act::ALL {
            assert_eq!(a.name().parse::<Act>().unwrap(), a);
        }
        assert!("gelu".parse::<Act>().unwrap_err().to_string().contains("gelu"));
        assert_eq!("max".parse::<Pool>().unwrap(), Pool::Max);
        assert_eq!("avg".parse::<Pool>().unwrap(), Pool::Avg);
        assert!("min".parse::<Pool>().is_err());
    }
}
