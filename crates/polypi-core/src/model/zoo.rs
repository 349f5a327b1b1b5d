//! The reference networks of `reference.md` (NET-M, NET-C, NET-R18) and the seeds' networks
//! (ImageNet ResNet-18/34/50, MobileNetV2, CIFAR ResNet-32/110, VGG-16-BN, PKR-18, PKV-16,
//! PKA-8) with deterministic pseudo-random weights, for tests, benchmarks and cost estimates.
//! The architectures themselves are data in [`super::arch`]; this module draws their weights.
//!
//! Weights come from `ChaCha8Rng::seed_from_u64(seed)` (model initialisation, not cryptography):
//! the same `(net, options, seed)` always gives the same file, byte for byte.
//!
//! Two initialisations ([`ZooInit`]):
//!
//! **Legacy** (NET-M, NET-C, NET-R18; the files earlier versions wrote). The weight scales are
//! chosen so that, for inputs in `[0, 1]` (and for normalised CIFAR inputs, roughly `[-2, 2]`),
//! every layer's values stay O(1) (max |value| below ~10, far below the 64 the fixed-point tests
//! need), also for the polynomial variants, which would otherwise blow up (or vanish) doubly
//! exponentially with depth. Weights are uniform with `Var(w) = gain2 / fan_in`:
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
//!
//! **Moments** (the seed-scale networks, 8 to 110 layers deep). The builder propagates each
//! tensor's per-element mean and variance (Gaussian approximation; exact raw moments of the
//! activation polynomials, the closed form for ReLU) and sets, for every layer:
//! - a conv / linear's weight variance to `target / (fan_in * E[x^2])`, so that its output has
//!   the target variance whatever the depth (He-style, but with the measured second moment);
//! - a BatchNorm's running mean / variance to the propagated mean / variance of its input (±5 %
//!   jitter), and gamma / beta to the target mean and standard deviation (±5 % / ±0.02);
//! - targets: an activation site's input has mean `center` (-1 for `pkn`'s `(x + 1)^2`, else 0)
//!   and variance `v_act`; a residual branch's output has variance `v_branch` and the mean that
//!   cancels the shortcut's (plus `center` when an activation follows the add); a projection
//!   shortcut has variance `v_shortcut`. `v_act` = 1 (0.15 for `square` / `pkn`), `v_branch` =
//!   0.1 (0.25 for `relu`), `v_shortcut` = 0.5 (0.1 for `square` / `pkn`): with `y = (x+b)^2`
//!   after every add, the residual stream's variance map `v' = 2 v^2 + v_branch` has an
//!   attracting fixed point (0.14) only below 0.36, hence the small variances of the squares.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::arch::{self, Arch, ConvUnit, InputNorm, Stem, Unit, ZooInit};
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
/// Per-channel mean of ImageNet training images (`x/255`, torchvision).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// Per-channel standard deviation of ImageNet training images (`x/255`, torchvision).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A network of the zoo: the reference networks of `reference.md` and the seeds' networks
/// (architectures in [`super::arch`]).
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
    /// ResNet-18 (default ImageNet stem, 3x224x224, 1000 classes): PASNet-A's network.
    ResNet18,
    /// ResNet-34 (default ImageNet stem).
    ResNet34,
    /// ResNet-50 (bottleneck blocks, default ImageNet stem, X2act `s = 0.1`): PASNet-B's network.
    ResNet50,
    /// MobileNetV2, 3x224x224 (depthwise convolutions): PASNet-D's network.
    MobileNetV2,
    /// CIFAR ResNet-32 (three stages of 5 BasicBlocks, 16/32/64 channels): PILLAR.
    ResNet32,
    /// CIFAR ResNet-110 (three stages of 18 BasicBlocks): PILLAR.
    ResNet110,
    /// VGG-16-BN, CIFAR layout, average pooling by default: PILLAR.
    Vgg16,
    /// PolyKervNets PKR-18 (CIFAR).
    Pkr18,
    /// PolyKervNets PKV-16 (CIFAR).
    Pkv16,
    /// PolyKervNets PKA-8 (CIFAR).
    Pka8,
}

impl RefNet {
    /// The reference networks of `reference.md`.
    pub const ALL: [RefNet; 3] = [RefNet::NetM, RefNet::NetC, RefNet::NetR18];

    /// The seeds' networks (issue "seed scale"), in the order of `docs/seed-scale.md`.
    pub const SEEDS: [RefNet; 10] = [
        RefNet::ResNet18,
        RefNet::ResNet34,
        RefNet::ResNet50,
        RefNet::MobileNetV2,
        RefNet::ResNet32,
        RefNet::ResNet110,
        RefNet::Vgg16,
        RefNet::Pkr18,
        RefNet::Pkv16,
        RefNet::Pka8,
    ];

    /// Name as in `reference.md` ("NET-M", "NET-C", "NET-R18") or the CLI name of a seed network
    /// ("resnet18", ..., "pka8").
    pub fn name(self) -> &'static str {
        match self {
            RefNet::NetM => "NET-M",
            RefNet::NetC => "NET-C",
            RefNet::NetR18 => "NET-R18",
            RefNet::ResNet18 => "resnet18",
            RefNet::ResNet34 => "resnet34",
            RefNet::ResNet50 => "resnet50",
            RefNet::MobileNetV2 => "mobilenetv2",
            RefNet::ResNet32 => "resnet32",
            RefNet::ResNet110 => "resnet110",
            RefNet::Vgg16 => "vgg16",
            RefNet::Pkr18 => "pkr18",
            RefNet::Pkv16 => "pkv16",
            RefNet::Pka8 => "pka8",
        }
    }

    /// Whether `--stem` applies (the ImageNet-family ResNets).
    pub fn has_stem_choice(self) -> bool {
        matches!(self, RefNet::ResNet18 | RefNet::ResNet34 | RefNet::ResNet50)
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
    /// and "resnet18", "resnet34", "resnet50", "mobilenetv2", "resnet32", "resnet110", "vgg16"
    /// ("vgg16bn"), "pkr18", "pkv16", "pka8" (case, '-' and '_' ignored). Errors with
    /// [`Error::InvalidArgument`].
    fn from_str(s: &str) -> Result<Self> {
        let k: String =
            s.chars().filter(|c| *c != '-' && *c != '_').flat_map(char::to_lowercase).collect();
        match k.as_str() {
            "netm" | "m" => Ok(RefNet::NetM),
            "netc" | "c" => Ok(RefNet::NetC),
            "netr18" | "r18" => Ok(RefNet::NetR18),
            "resnet18" => Ok(RefNet::ResNet18),
            "resnet34" => Ok(RefNet::ResNet34),
            "resnet50" => Ok(RefNet::ResNet50),
            "mobilenetv2" | "mobilenet" => Ok(RefNet::MobileNetV2),
            "resnet32" => Ok(RefNet::ResNet32),
            "resnet110" => Ok(RefNet::ResNet110),
            "vgg16" | "vgg16bn" => Ok(RefNet::Vgg16),
            "pkr18" => Ok(RefNet::Pkr18),
            "pkv16" => Ok(RefNet::Pkv16),
            "pka8" => Ok(RefNet::Pka8),
            _ => Err(Error::InvalidArgument(format!(
                "unknown network '{s}' (expected NET-M, NET-C, NET-R18, resnet18, resnet34, \
                 resnet50, mobilenetv2, resnet32, resnet110, vgg16, pkr18, pkv16 or pka8)"
            ))),
        }
    }
}

/// The activation placed at every ACT site of a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Act {
    /// `max(x, 0)` (the "relu" variant).
    Relu,
    /// PolyMPCNet / PASNet X2act (Peng et al., DAC 2023) `s*w0*x^2 + w1*x + b` per channel
    /// (`s` from the architecture: 1, or 0.1 for ResNet-50), random `w0` in 0.005..0.1, `w1` in
    /// 0.9..1.1, `b` small.
    X2Act,
    /// `x^2` (the "poly" variant of `reference.md`): `Poly` with coefficients `[0, 0, 1]`.
    Square,
    /// PILLAR's shared degree-4 polynomial [`PILLAR_COEFFS`] (Diaa et al., USENIX Security '24).
    Pillar,
    /// PolyKervNets (Aremu & Nandakumar, SaTML 2023): `PolyKerv{c_p: 1, d_p: 2, a_p: 1}`, i.e.
    /// `(x + 1)^2` of the preceding conv's (or linear's) output.
    Pkn,
    /// A shared polynomial of degree `d` (2..=8) shaped like PILLAR's ReLU fits:
    /// [`poly_coeffs`]`(d)`.
    Poly(u32),
}

/// The coefficients (ascending) of [`Act::Poly`]`(d)`: `c_0 = 0.3`, `c_1 = 0.5`, `c_2 = 0.15`,
/// `c_k = -0.003 / 2^(k-3)` for `3 <= k <= d` (the highest-degree terms of PILLAR-style fits are
/// small and negative). Errors: [`Error::InvalidArgument`] unless `2 <= d <= 8`.
pub fn poly_coeffs(d: u32) -> Result<Vec<f32>> {
    if !(2..=8).contains(&d) {
        return Err(Error::InvalidArgument(format!("polynomial degree {d} is not in 2..=8")));
    }
    let mut c = vec![0.3f32, 0.5, 0.15];
    for k in 3..=d {
        c.push(-0.003 / (1u32 << (k - 3)) as f32);
    }
    Ok(c)
}

impl Act {
    /// The fixed activation variants (not [`Act::Poly`]).
    pub const ALL: [Act; 5] = [Act::Relu, Act::X2Act, Act::Square, Act::Pillar, Act::Pkn];

    /// Short name ("relu", "x2act", "square", "pillar", "pkn", "poly<d>").
    pub fn name(self) -> String {
        match self {
            Act::Relu => "relu".into(),
            Act::X2Act => "x2act".into(),
            Act::Square => "square".into(),
            Act::Pillar => "pillar".into(),
            Act::Pkn => "pkn".into(),
            Act::Poly(d) => format!("poly{d}"),
        }
    }
}

impl fmt::Display for Act {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Act {
    type Err = Error;
    /// Accepts "relu", "x2"/"x2act", "square"/"poly"/"x^2", "pillar", "pkn"/"polykerv", and
    /// "poly<d>" / "deg<d>" for a degree-`d` polynomial (2..=8) (case ignored). Errors with
    /// [`Error::InvalidArgument`].
    fn from_str(s: &str) -> Result<Self> {
        let l = s.to_lowercase();
        match l.as_str() {
            "relu" => return Ok(Act::Relu),
            "x2" | "x2act" => return Ok(Act::X2Act),
            "square" | "poly" | "x^2" | "sq" => return Ok(Act::Square),
            "pillar" => return Ok(Act::Pillar),
            "pkn" | "polykerv" => return Ok(Act::Pkn),
            _ => {}
        }
        if let Some(d) = l.strip_prefix("poly").or_else(|| l.strip_prefix("deg")) {
            if let Ok(d) = d.parse::<u32>() {
                poly_coeffs(d)?;
                return Ok(Act::Poly(d));
            }
        }
        Err(Error::InvalidArgument(format!(
            "unknown activation '{s}' (expected relu, x2, square/poly, pillar, pkn or poly<d>)"
        )))
    }
}

/// The pooling used at the pooling sites ([`Unit::Pool`]): NET-M/NET-C's 2x2 pools, the ImageNet
/// stem's 3x3/s2/p1 pool (PASNet's pooling gate), VGG-16-BN's 2x2 pools. Fixed average pools of
/// an architecture and global average pools do not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pool {
    /// Average pooling (zero padding counted in the divisor).
    Avg,
    /// Max pooling (needs the ReLU comparison protocol).
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

/// The architecture of `net` ([`super::arch`]): `stem` overrides the ImageNet-family ResNets'
/// stem (default [`Stem::Imagenet`]; with [`Stem::Cifar`] the input is 3x32x32 and the classes
/// 10), `classes` the class count. Errors: [`Error::InvalidArgument`] for a stem on a network
/// without the choice, or zero classes.
pub fn describe(net: RefNet, stem: Option<Stem>, classes: Option<usize>) -> Result<Arch> {
    if stem.is_some() && !net.has_stem_choice() {
        return Err(Error::InvalidArgument(format!(
            "{net} has a fixed stem; --stem applies to resnet18, resnet34 and resnet50"
        )));
    }
    let stem = stem.unwrap_or(Stem::Imagenet);
    let mut a = match net {
        RefNet::NetM => arch::net_m(),
        RefNet::NetC => arch::net_c(),
        RefNet::NetR18 => arch::net_r18(),
        RefNet::ResNet18 => arch::resnet(18, stem)?,
        RefNet::ResNet34 => arch::resnet(34, stem)?,
        RefNet::ResNet50 => arch::resnet(50, stem)?,
        RefNet::MobileNetV2 => arch::mobilenet_v2(),
        RefNet::ResNet32 => arch::cifar_resnet(32)?,
        RefNet::ResNet110 => arch::cifar_resnet(110)?,
        RefNet::Vgg16 => arch::vgg16_bn(),
        RefNet::Pkr18 => arch::pkr18(),
        RefNet::Pkv16 => arch::pkv16(),
        RefNet::Pka8 => arch::pka8(),
    };
    if let Some(k) = classes {
        if k == 0 {
            return Err(Error::InvalidArgument("the class count must be at least 1".into()));
        }
        a.classes = k;
    }
    Ok(a)
}

/// Options of [`build_with`]: the activation and pooling choice, size and seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZooOpts {
    /// Activation at every ACT site.
    pub act: Act,
    /// Pooling at the pooling sites.
    pub pool: Pool,
    /// Multiplier of every hidden channel count (1.0 = the published size; rounded, at least 1).
    pub width: f32,
    /// Seed of the random weights.
    pub seed: u64,
    /// Stem of the ImageNet-family ResNets (see [`describe`]).
    pub stem: Option<Stem>,
    /// Class count (default: the architecture's).
    pub classes: Option<usize>,
    /// Input height = width in pixels (default: the architecture's), e.g. 32 or 64 for small
    /// test versions of the ImageNet networks.
    pub input_size: Option<usize>,
}

impl ZooOpts {
    /// Defaults: average pooling, width 1, seed 0, the architecture's stem, classes and input.
    pub fn new(act: Act) -> Self {
        ZooOpts { act, pool: Pool::Avg, width: 1.0, seed: 0, stem: None, classes: None, input_size: None }
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
    build_with(net, &ZooOpts { pool, width, seed, ..ZooOpts::new(act) })
}

/// Builds `net` ([`describe`]) with the options `o` (see [`build_arch`]).
pub fn build_with(net: RefNet, o: &ZooOpts) -> Result<ModelFile> {
    build_arch(&describe(net, o.stem, o.classes)?, o)
}

/// Builds a model file of the architecture `a` with deterministic pseudo-random weights (module
/// docs). `o.stem` and `o.classes` are ignored here (see [`describe`]); `o.input_size` replaces
/// the input's height and width. Labels: the CIFAR-10 names for a 10-class CIFAR-10 network,
/// "0".."k-1" for up to 10 classes otherwise, none beyond; input normalisation from
/// [`Arch::input_norm`].
/// Errors: [`Error::InvalidArgument`] for a width that is not finite and positive, a zero input
/// size, a polynomial degree outside 2..=8, or an input too small for the network (a window
/// larger than its input, a linear layer not after a flatten or global pool); the validation
/// errors of [`ModelFile::validate`].
pub fn build_arch(a: &Arch, o: &ZooOpts) -> Result<ModelFile> {
    let width = o.width;
    if !(width.is_finite() && width > 0.0) {
        return Err(Error::InvalidArgument(format!("width {width} must be finite and > 0")));
    }
    if let Act::Poly(d) = o.act {
        poly_coeffs(d)?;
    }
    let mut input_shape = a.input_shape.to_vec();
    if let Some(s) = o.input_size {
        if s == 0 {
            return Err(Error::InvalidArgument("input size must be at least 1".into()));
        }
        input_shape[1] = s;
        input_shape[2] = s;
    }
    let mut b = Builder::new(o.act, o.pool, o.seed, a, width);
    let x = b.push("input", &[], Op::Input);
    let st = match a.input_norm {
        InputNorm::None => Stat { mean: 0.5, var: 1.0 / 12.0 },
        _ => Stat { mean: 0.0, var: 1.0 },
    };
    let x = Cur { name: x, shape: input_shape.clone(), st };
    b.units(&a.units, x)?;
    let labels: Vec<String> = if a.dataset.starts_with("CIFAR-10") && a.classes == 10 {
        cifar_labels()
    } else if a.classes <= 10 {
        (0..a.classes).map(|i| i.to_string()).collect()
    } else {
        Vec::new()
    };
    let normalize = match a.input_norm {
        InputNorm::None => None,
        InputNorm::Cifar10 => Some(cifar_norm()),
        InputNorm::Imagenet => {
            Some(Normalize { mean: IMAGENET_MEAN.to_vec(), std: IMAGENET_STD.to_vec() })
        }
    };
    let graph = Graph { input_shape, frac_bits: 16, normalize, nodes: b.nodes, labels };
    let pool_name = match o.pool {
        Pool::Avg => "avgpool",
        Pool::Max => "maxpool",
    };
    let card = ModelCard {
        name: format!("{} {} {pool_name} width {width}", a.name, o.act),
        dataset: a.dataset.clone(),
        split: String::new(),
        test_accuracy: None,
        recipe: format!(
            "untrained: deterministic pseudo-random weights (polypi zoo, seed {})",
            o.seed
        ),
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

/// Legacy initialisation constants of one activation variant (see the module docs).
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
            Act::Pillar | Act::Poly(_) => Init {
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

    /// Legacy `(gain2, bias magnitude, random sign)` of a conv / linear, and the BN
    /// `(beta, random sign)` after it, by role.
    fn role(&self, r: arch::Init) -> (f32, f32, (f32, bool)) {
        match r {
            arch::Init::Act => (self.gain2, self.bias, (self.bias, true)),
            arch::Init::Stem => (self.stem_gain2, self.bias, (self.post_bias, false)),
            arch::Init::Branch => (self.branch_gain2, self.bias, (self.post_bias, false)),
            arch::Init::Shortcut => (self.shortcut_gain2, self.bias, (0.0, false)),
            arch::Init::Head => (self.fc_gain2, 0.0, (0.0, false)),
            arch::Init::Logits => (1.0, 0.0, (0.0, false)),
        }
    }
}

/// Per-element mean and variance of a tensor (the Moments initialisation's Gaussian model).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    mean: f64,
    var: f64,
}

impl Stat {
    /// `E[x^2]`.
    fn m2(self) -> f64 {
        self.var + self.mean * self.mean
    }
}

/// Standard normal CDF (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7).
fn norm_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

/// Mean and variance of `p(X)`, `X ~ N(s.mean, s.var)`, `p` ascending coefficients.
fn poly_stat(c: &[f64], s: Stat) -> Stat {
    let d = c.len() - 1;
    let mut m = vec![1.0, s.mean];
    for k in 2..=2 * d {
        m.push(s.mean * m[k - 1] + (k - 1) as f64 * s.var * m[k - 2]);
    }
    let e1: f64 = c.iter().enumerate().map(|(i, ci)| ci * m[i]).sum();
    let mut e2 = 0.0;
    for (i, ci) in c.iter().enumerate() {
        for (j, cj) in c.iter().enumerate() {
            e2 += ci * cj * m[i + j];
        }
    }
    Stat { mean: e1, var: (e2 - e1 * e1).max(1e-6) }
}

/// Moments-mode targets of one activation variant (module docs).
#[derive(Debug, Clone, Copy)]
struct Targets {
    center: f64,
    v_act: f64,
    v_branch: f64,
    v_shortcut: f64,
}

impl Targets {
    fn of(act: Act) -> Targets {
        match act {
            Act::Square => Targets { center: 0.0, v_act: 0.15, v_branch: 0.1, v_shortcut: 0.1 },
            Act::Pkn => Targets { center: -1.0, v_act: 0.15, v_branch: 0.1, v_shortcut: 0.1 },
            Act::Relu => Targets { center: 0.0, v_act: 1.0, v_branch: 0.25, v_shortcut: 0.5 },
            _ => Targets { center: 0.0, v_act: 1.0, v_branch: 0.1, v_shortcut: 0.5 },
        }
    }
}

/// The tensor being built: node name, per-sample shape (`[C, H, W]` or `[F]`), statistics.
#[derive(Debug, Clone)]
struct Cur {
    name: String,
    shape: Vec<usize>,
    st: Stat,
}

struct Builder {
    nodes: Vec<Node>,
    tensors: BTreeMap<String, TensorF32>,
    rng: ChaCha8Rng,
    act: Act,
    pool: Pool,
    init: Init,
    targets: Targets,
    moments: bool,
    width: f32,
    classes: usize,
    x2act_scale: f32,
}

impl Builder {
    fn new(act: Act, pool: Pool, seed: u64, a: &Arch, width: f32) -> Self {
        Builder {
            nodes: Vec::new(),
            tensors: BTreeMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            act,
            pool,
            init: Init::of(act),
            targets: Targets::of(act),
            moments: a.zoo_init == ZooInit::Moments,
            width,
            classes: a.classes,
            x2act_scale: a.x2act_scale,
        }
    }

    fn ch(&self, c: usize) -> usize {
        ((c as f32 * self.width).round() as usize).max(1)
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

    fn units(&mut self, units: &[Unit], mut x: Cur) -> Result<Cur> {
        for u in units {
            x = self.unit(u, x)?;
        }
        Ok(x)
    }

    /// The BN target `(mean, var)` of a conv unit in Moments mode (module docs): an ACT after it
    /// wants `(center, v_act)`; otherwise by role, a branch end gets `branch` (set by the
    /// enclosing residual), a shortcut `(0, v_shortcut)`, anything else `(0, 1)`.
    fn bn_target(&self, c: &ConvUnit, act_follows: bool, branch: Option<Stat>) -> Stat {
        let t = self.targets;
        if act_follows {
            return Stat { mean: t.center, var: t.v_act };
        }
        match c.init {
            arch::Init::Branch => branch.unwrap_or(Stat { mean: 0.0, var: t.v_branch }),
            arch::Init::Shortcut => Stat { mean: 0.0, var: t.v_shortcut },
            _ => Stat { mean: 0.0, var: 1.0 },
        }
    }

    fn unit(&mut self, u: &Unit, x: Cur) -> Result<Cur> {
        self.unit_in(u, x, None)
    }

    /// Builds one unit on `x`; `branch` is the BN target of a residual branch's last conv.
    fn unit_in(&mut self, u: &Unit, x: Cur, branch: Option<Stat>) -> Result<Cur> {
        match u {
            Unit::Conv(c) => self.conv_unit(c, x, branch, false),
            Unit::Kerv(c) => self.conv_unit(c, x, branch, self.act == Act::Pkn),
            Unit::Pool { name, kernel, stride, padding } => {
                let op = match self.pool {
                    Pool::Avg => {
                        Op::AvgPool2d { kernel: *kernel, stride: *stride, padding: *padding }
                    }
                    Pool::Max => {
                        Op::MaxPool2d { kernel: *kernel, stride: *stride, padding: *padding }
                    }
                };
                let st = match self.pool {
                    Pool::Avg => x.st,
                    // The max of k^2 correlated values: about one standard deviation up.
                    Pool::Max => Stat { mean: x.st.mean + x.st.var.sqrt(), var: 0.5 * x.st.var },
                };
                let shape = pooled(name, &x.shape, *kernel, *stride, *padding)?;
                let n = self.push(name, &[&x.name], op);
                Ok(Cur { name: n, shape, st })
            }
            Unit::AvgPool { name, kernel, stride, padding } => {
                let shape = pooled(name, &x.shape, *kernel, *stride, *padding)?;
                let op = Op::AvgPool2d { kernel: *kernel, stride: *stride, padding: *padding };
                let n = self.push(name, &[&x.name], op);
                Ok(Cur { name: n, shape, st: x.st })
            }
            Unit::GlobalAvgPool { name } => {
                let c = chw(name, &x.shape)?.0;
                let n = self.push(name, &[&x.name], Op::GlobalAvgPool);
                Ok(Cur { name: n, shape: vec![c], st: x.st })
            }
            Unit::Flatten { name } => {
                let f = x.shape.iter().product();
                let n = self.push(name, &[&x.name], Op::Flatten);
                Ok(Cur { name: n, shape: vec![f], st: x.st })
            }
            Unit::Linear { name, out, act, init } => {
                let [f_in] = x.shape[..] else {
                    return Err(Error::InvalidArgument(format!(
                        "{name}: a linear layer needs a flattened input, got shape {:?}",
                        x.shape
                    )));
                };
                let f_out = out.unwrap_or(self.classes);
                let (gain2, bias, _) = self.init.role(*init);
                let (gain2, bias) = if self.moments {
                    let target = if act.is_some() { self.targets.v_act } else { 1.0 };
                    ((target / x.st.m2()) as f32, 0.0)
                } else {
                    (gain2, bias)
                };
                let lim = (3.0 * gain2 / f_in as f32).sqrt();
                let w = self.vec_uniform(f_out * f_in, -lim, lim);
                let weight = self.tensor(format!("{name}.weight"), vec![f_out, f_in], w);
                let b = self.bias_vec(f_out, bias, true);
                let bias = Some(self.tensor(format!("{name}.bias"), vec![f_out], b));
                let n = self.push(name, &[&x.name], Op::Linear { weight, bias });
                let st = Stat { mean: 0.0, var: gain2 as f64 * x.st.m2() };
                let y = Cur { name: n, shape: vec![f_out], st };
                match act {
                    Some(a) => Ok(self.act(a, y)),
                    None => Ok(y),
                }
            }
            Unit::Residual { add, body, shortcut, act } => {
                let (y, sc) = if self.moments {
                    // Shortcut first: the branch's last BN cancels its mean.
                    let sc = self.units(shortcut, x.clone())?;
                    let center = if act.is_some() { self.targets.center } else { 0.0 };
                    let target = Stat { mean: center - sc.st.mean, var: self.targets.v_branch };
                    let mut y = x;
                    for (i, u) in body.iter().enumerate() {
                        let br = (i + 1 == body.len()).then_some(target);
                        y = self.unit_in(u, y, br)?;
                    }
                    (y, sc)
                } else {
                    let y = self.units(body, x.clone())?;
                    let sc = self.units(shortcut, x)?;
                    (y, sc)
                };
                if y.shape != sc.shape {
                    return Err(Error::InvalidArgument(format!(
                        "{add}: branch shape {:?} differs from the shortcut's {:?}",
                        y.shape, sc.shape
                    )));
                }
                let n = self.push(add, &[&y.name, &sc.name], Op::Add);
                let st = Stat { mean: y.st.mean + sc.st.mean, var: y.st.var + sc.st.var };
                let z = Cur { name: n, shape: y.shape, st };
                match act {
                    Some(a) => Ok(self.act(a, z)),
                    None => Ok(z),
                }
            }
        }
    }

    /// A conv unit: conv -> [BN] -> [ACT], or with `kerv_first` (PolyKervNets' Kerv2d with the
    /// `pkn` activation) conv -> power -> [BN].
    fn conv_unit(&mut self, c: &ConvUnit, x: Cur, branch: Option<Stat>, kerv_first: bool) -> Result<Cur> {
        let (c_in, h, w) = chw(&c.name, &x.shape)?;
        let (c_out, groups) = if c.depthwise { (c_in, c_in) } else { (self.ch(c.out), 1) };
        let oh = side(&c.name, h, c.kernel, c.stride, c.padding)?;
        let ow = side(&c.name, w, c.kernel, c.stride, c.padding)?;
        let (legacy_gain2, bias_mag, (bn_beta, bn_sign)) = self.init.role(c.init);
        let act_after_bn = c.act.is_some() && !kerv_first;
        let (gain2, bias_mag) = if self.moments {
            let target = if c.bn.is_some() {
                1.0
            } else if c.act.is_some() {
                self.targets.v_act
            } else {
                self.bn_target(c, false, branch).var
            };
            ((target / x.st.m2()) as f32, 0.0)
        } else {
            (legacy_gain2, bias_mag)
        };
        let fan_in = (c_in / groups * c.kernel * c.kernel) as f32;
        let lim = (3.0 * gain2 / fan_in).sqrt();
        let k = c.kernel;
        let wv = self.vec_uniform(c_out * (c_in / groups) * k * k, -lim, lim);
        let weight = self.tensor(format!("{}.weight", c.name), vec![c_out, c_in / groups, k, k], wv);
        let bias = if c.bias {
            let b = self.bias_vec(c_out, bias_mag, true);
            Some(self.tensor(format!("{}.bias", c.name), vec![c_out], b))
        } else {
            None
        };
        let op = Op::Conv2d { weight, bias, stride: c.stride, padding: c.padding, groups };
        let n = self.push(&c.name, &[&x.name], op);
        let mut y = Cur {
            name: n,
            shape: vec![c_out, oh, ow],
            st: Stat { mean: 0.0, var: gain2 as f64 * x.st.m2() + (bias_mag as f64).powi(2) },
        };
        if kerv_first {
            if let Some(a) = &c.act {
                y = self.act(a, y);
            }
        }
        if let Some(bn) = &c.bn {
            y = if self.moments {
                let t = self.bn_target(c, act_after_bn, branch);
                self.bn_moments(bn, y, c_out, t)
            } else {
                self.bn(bn, y, c_out, 1.0, bn_beta, bn_sign)
            };
        }
        if act_after_bn {
            y = self.act(c.act.as_deref().expect("act_after_bn implies act"), y);
        }
        Ok(y)
    }

    /// BatchNorm near identity: gamma ~ `gamma`*(0.9..1.1), running_mean ~ ±0.05, running_var ~
    /// 0.9..1.1; beta = the given bias (random sign if asked) + jitter.
    fn bn(&mut self, name: &str, x: Cur, c: usize, gamma: f32, beta: f32, random_sign: bool) -> Cur {
        let g: Vec<f32> = (0..c).map(|_| gamma * self.uniform(0.9, 1.1)).collect();
        let bt = self.bias_vec(c, beta, random_sign);
        let mean = self.vec_uniform(c, -0.05, 0.05);
        let var = self.vec_uniform(c, 0.9, 1.1);
        self.bn_node(name, x, (g, bt, mean, var), Stat { mean: beta as f64, var: 1.0 })
    }

    /// BatchNorm whose running statistics are the propagated moments of its input (±5 %) and
    /// whose output has the target mean and variance `t` (Moments initialisation).
    fn bn_moments(&mut self, name: &str, x: Cur, c: usize, t: Stat) -> Cur {
        let sd = x.st.var.sqrt() as f32;
        let tsd = t.var.sqrt() as f32;
        let g: Vec<f32> = (0..c).map(|_| tsd * self.uniform(0.95, 1.05)).collect();
        let bt: Vec<f32> = (0..c).map(|_| t.mean as f32 + self.uniform(-0.02, 0.02)).collect();
        let mean: Vec<f32> =
            (0..c).map(|_| x.st.mean as f32 + sd * self.uniform(-0.05, 0.05)).collect();
        let var: Vec<f32> = (0..c).map(|_| x.st.var as f32 * self.uniform(0.95, 1.05)).collect();
        self.bn_node(name, x, (g, bt, mean, var), t)
    }

    fn bn_node(
        &mut self,
        name: &str,
        x: Cur,
        (g, bt, mean, var): (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>),
        st: Stat,
    ) -> Cur {
        let c = g.len();
        let weight = self.tensor(format!("{name}.weight"), vec![c], g);
        let bias = self.tensor(format!("{name}.bias"), vec![c], bt);
        let running_mean = self.tensor(format!("{name}.running_mean"), vec![c], mean);
        let running_var = self.tensor(format!("{name}.running_var"), vec![c], var);
        let n = self.push(
            name,
            &[&x.name],
            Op::BatchNorm2d { weight, bias, running_mean, running_var, eps: 1e-5 },
        );
        Cur { name: n, shape: x.shape, st }
    }

    /// The activation node `name` on `x` (per-channel X2Act parameters drawn here).
    fn act(&mut self, name: &str, x: Cur) -> Cur {
        let c = x.shape[0];
        let s = x.st;
        let (op, st) = match self.act {
            Act::Relu => {
                let sd = s.var.sqrt().max(1e-12);
                let z = s.mean / sd;
                let (cdf, pdf) =
                    (norm_cdf(z), (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt());
                let e1 = s.mean * cdf + sd * pdf;
                let e2 = s.m2() * cdf + s.mean * sd * pdf;
                (Op::Relu, Stat { mean: e1, var: (e2 - e1 * e1).max(1e-6) })
            }
            Act::Square => (
                Op::Poly { coefficients: vec![0.0, 0.0, 1.0], coefficients_tensor: None },
                poly_stat(&[0.0, 0.0, 1.0], s),
            ),
            Act::Pillar => (
                Op::Poly { coefficients: PILLAR_COEFFS.to_vec(), coefficients_tensor: None },
                poly_stat(&PILLAR_COEFFS.map(f64::from), s),
            ),
            Act::Poly(d) => {
                let co = poly_coeffs(d).expect("degree checked by build_arch");
                let st = poly_stat(&co.iter().map(|&v| v as f64).collect::<Vec<_>>(), s);
                (Op::Poly { coefficients: co, coefficients_tensor: None }, st)
            }
            Act::Pkn => {
                (Op::PolyKerv { c_p: 1.0, d_p: 2, a_p: 1.0 }, poly_stat(&[1.0, 2.0, 1.0], s))
            }
            Act::X2Act => {
                let w0 = self.vec_uniform(c, 0.005, 0.1);
                let w1 = self.vec_uniform(c, 0.9, 1.1);
                let b = self.vec_uniform(c, -0.05, 0.05);
                let w0 = self.tensor(format!("{name}.w0"), vec![c], w0);
                let w1 = self.tensor(format!("{name}.w1"), vec![c], w1);
                let b = self.tensor(format!("{name}.b"), vec![c], b);
                let q = self.x2act_scale as f64 * 0.0525;
                (Op::X2Act { s: self.x2act_scale, w0, w1, b }, poly_stat(&[0.0, 1.0, q], s))
            }
        };
        let n = self.push(name, &[&x.name], op);
        Cur { name: n, shape: x.shape, st }
    }
}

/// `(C, H, W)` of a per-sample shape, or an error naming the node.
fn chw(node: &str, s: &[usize]) -> Result<(usize, usize, usize)> {
    match s {
        [c, h, w] => Ok((*c, *h, *w)),
        _ => Err(Error::InvalidArgument(format!(
            "{node}: needs a [C, H, W] input, got shape {s:?} (input too small for the network?)"
        ))),
    }
}

/// Output side of a window `k`, step `s`, padding `p` on a side of `len`.
fn side(node: &str, len: usize, k: usize, s: usize, p: usize) -> Result<usize> {
    super::limits::out_side("side", len, k, s, p).map_err(|e| {
        Error::InvalidArgument(format!("{node}: {e} (use a larger --input-size)"))
    })
}

/// Output shape of a pooling window on `[C, H, W]`.
fn pooled(node: &str, s: &[usize], k: usize, st: usize, p: usize) -> Result<Vec<usize>> {
    let (c, h, w) = chw(node, s)?;
    Ok(vec![c, side(node, h, k, st, p)?, side(node, w, k, st, p)?])
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
