//! Architecture descriptions of the reference and seed networks, as data (design.md §7 "One
//! architecture description").
//!
//! An [`Arch`] is a serialisable tree of [`Unit`]s — conv (+ BatchNorm) (+ activation site),
//! PolyKervNets' `Kerv2d`, pooling, linear, residual blocks — with nominal channel counts (before a
//! width multiplier), the input shape and the class count. It says *what* the network is, not how
//! its weights are drawn: `polypi zoo` ([`super::zoo`]) turns one into a model file with random
//! weights, and a trainer can build modules of the same shapes from the same description
//! (`polypi zoo --describe NET` prints it as JSON). Every node name of the model file comes from
//! the description, so a trained export and a zoo file of the same network name their tensors
//! alike.
//!
//! Networks and their sources:
//! - NET-M, NET-C, NET-R18: `reference.md`.
//! - ResNet-18/34/50 (He et al., CVPR 2016; torchvision layout, stride on the bottleneck's 3x3):
//!   PASNet-A/B's networks (Peng et al., DAC 2023). [`Stem::Imagenet`]: conv7x7/s2/p3, BN, ACT
//!   and a 3x3/s2/p1 pooling site (PASNet's stem pooling gate: max or avg); [`Stem::Cifar`]:
//!   conv3x3/s1/p1, BN, ACT, no pooling (NET-R18 is ResNet-18 with this stem). Projection
//!   shortcuts are 1x1 conv and BN, named `shortcut.0` / `shortcut.1`.
//! - CIFAR ResNet-32/110 (He et al. 2016 §4.2: 16/32/64 channels, n = 5 / 18 BasicBlocks per
//!   stage), PILLAR's CIFAR networks (Diaa et al., USENIX Security '24); shortcuts are 1x1
//!   projections (option B) where the shape changes.
//! - VGG-16-BN (CIFAR layout, 13 conv3x3 + BN + ACT, five 2x2 pooling sites, fc 512 -> classes):
//!   PILLAR's VGG-16-BN; the pooling sites default to average pooling.
//! - MobileNetV2 (Sandler et al., CVPR 2018; torchvision layout; ReLU6 sites become ACT sites):
//!   PASNet-D.
//! - PKR-18, PKV-16, PKA-8 (Aremu & Nandakumar, SaTML 2023; `tolusophy/PolyKervNets`
//!   Models/PKR18.py, PKV.py, PKA8.py): `Kerv2d` sites are conv -> `(x + c_p)^2` -> BatchNorm.
//!   PKR-18's forward pass uses stages 1-3 only, then `avg_pool2d(4)` and fc 1024 -> classes
//!   (its fourth stage is built but never called, so it is not part of the description);
//!   PKV-16's `K` layers are Kerv2d + BN and its `C` layers conv + BN with no activation;
//!   PKA-8 has five Kerv2d layers without BN and two 3x3/s2 average pools.
//!   Dropout (training only) is not part of an inference graph.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How a conv or linear layer's random weights are scaled by the zoo (ignored by trainers): the
/// role the layer plays in its block. See [`super::zoo`] for the gains of each role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// Feeds an activation site (or, for a conv without one, an ordinary hidden layer).
    Act,
    /// The network's first conv.
    Stem,
    /// The last layer of a residual branch (its output is added to the shortcut).
    Branch,
    /// A projection shortcut.
    Shortcut,
    /// The classifier of a deep network (NET-R18's fc).
    Head,
    /// A classifier with unit gain and no bias offset (NET-M, NET-C).
    Logits,
}

/// A convolution with optional BatchNorm and activation site (or, inside [`Unit::Kerv`], a
/// PolyKervNets `Kerv2d`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvUnit {
    /// Node name of the conv (its tensors are `{name}.weight` and `{name}.bias`).
    pub name: String,
    /// Nominal output channels (multiplied by the width); ignored when `depthwise`.
    pub out: usize,
    /// Square kernel side.
    pub kernel: usize,
    /// Step in H and W.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
    /// Depthwise: `groups = c_in = c_out`.
    #[serde(default)]
    pub depthwise: bool,
    /// Whether the conv has a bias.
    #[serde(default)]
    pub bias: bool,
    /// Node name of the BatchNorm after the conv (after the `Kerv2d` power in [`Unit::Kerv`]).
    #[serde(default)]
    pub bn: Option<String>,
    /// Node name of the activation site after the BN (in [`Unit::Kerv`]: the power's node).
    #[serde(default)]
    pub act: Option<String>,
    /// Role for the zoo's random initialisation.
    pub init: Init,
}

/// One step of an architecture. Shapes follow from the input: channel counts are nominal and
/// scaled by the width multiplier (rounded, at least 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "unit", rename_all = "snake_case")]
pub enum Unit {
    /// conv -> `[BN]` -> `[ACT]`.
    Conv(ConvUnit),
    /// PolyKervNets `Kerv2d`: conv (no bias) -> `(x + c_p)^2` (node `act`) -> `[BN]` (node `bn`),
    /// the published order. With an activation other than `pkn` the zoo builds conv -> `[BN]` ->
    /// ACT instead.
    Kerv(ConvUnit),
    /// A pooling site: average or max pooling, chosen when the network is built.
    Pool {
        /// Node name.
        name: String,
        /// Window side.
        kernel: usize,
        /// Step.
        stride: usize,
        /// Zero padding on each side (max pooling: -inf).
        padding: usize,
    },
    /// Average pooling that is part of the architecture whatever the pooling choice.
    AvgPool {
        /// Node name.
        name: String,
        /// Window side.
        kernel: usize,
        /// Step.
        stride: usize,
        /// Zero padding on each side (counted in the divisor).
        padding: usize,
    },
    /// Mean over H and W: `[C, H, W] -> [C]`.
    GlobalAvgPool {
        /// Node name.
        name: String,
    },
    /// `[C, H, W] -> [C*H*W]`.
    Flatten {
        /// Node name.
        name: String,
    },
    /// Fully connected layer (with bias), optionally followed by an activation site.
    Linear {
        /// Node name.
        name: String,
        /// Output features; `None` = the class count (the classifier). Not width-scaled.
        out: Option<usize>,
        /// Node name of the activation site after it.
        #[serde(default)]
        act: Option<String>,
        /// Role for the zoo's random initialisation.
        init: Init,
    },
    /// `add(body(x), shortcut(x))` (an empty shortcut is the identity), then an optional
    /// activation site.
    Residual {
        /// Node name of the Add.
        add: String,
        /// The residual branch.
        body: Vec<Unit>,
        /// The shortcut (empty = identity).
        shortcut: Vec<Unit>,
        /// Node name of the activation site after the Add.
        #[serde(default)]
        act: Option<String>,
    },
}

/// How the zoo sets BatchNorm statistics and weight gains (ignored by trainers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZooInit {
    /// NET-M / NET-C / NET-R18's hand-tuned gains with near-identity BatchNorm (the files earlier
    /// versions wrote, byte for byte).
    Legacy,
    /// Gains and BatchNorm statistics from propagated first and second moments, so that every
    /// activation site sees a chosen mean and variance at any depth (the seed-scale networks).
    Moments,
}

/// The stem of an ImageNet-family ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stem {
    /// conv7x7/s2/p3 + BN + ACT + 3x3/s2/p1 pooling site; input 3x224x224, 1000 classes.
    Imagenet,
    /// conv3x3/s1/p1 + BN + ACT; input 3x32x32, 10 classes.
    Cifar,
}

impl std::str::FromStr for Stem {
    type Err = Error;
    /// Accepts "imagenet" and "cifar" (case ignored). Errors with [`Error::InvalidArgument`].
    fn from_str(s: &str) -> Result<Self> {
        match s.to_lowercase().as_str() {
            "imagenet" => Ok(Stem::Imagenet),
            "cifar" => Ok(Stem::Cifar),
            _ => Err(Error::InvalidArgument(format!(
                "unknown stem '{s}' (expected imagenet or cifar)"
            ))),
        }
    }
}

/// Input normalisation family of an architecture's dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputNorm {
    /// `x/255` (MNIST).
    None,
    /// CIFAR-10 per-channel mean / std.
    Cifar10,
    /// ImageNet per-channel mean (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225).
    Imagenet,
}

/// A network architecture: input, classes and the units in order (module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arch {
    /// Display name, e.g. "ResNet-50 (ImageNet stem)".
    pub name: String,
    /// Dataset the shape is meant for, e.g. "ImageNet", "CIFAR-10".
    pub dataset: String,
    /// Per-sample input `[C, H, W]`.
    pub input_shape: [usize; 3],
    /// Output classes.
    pub classes: usize,
    /// Input normalisation.
    pub input_norm: InputNorm,
    /// PASNet's fixed X2act weight scale `s` (1, or 0.1 for ResNet-50; Peng et al. §4).
    pub x2act_scale: f32,
    /// How the zoo initialises random weights.
    pub zoo_init: ZooInit,
    /// The units in order.
    pub units: Vec<Unit>,
}

impl Arch {
    /// Number of activation sites (ACT and `Kerv2d` power nodes), counting every unit.
    pub fn activation_sites(&self) -> usize {
        fn count(units: &[Unit]) -> usize {
            units
                .iter()
                .map(|u| match u {
                    Unit::Conv(c) | Unit::Kerv(c) => usize::from(c.act.is_some()),
                    Unit::Linear { act, .. } => usize::from(act.is_some()),
                    Unit::Residual { body, shortcut, act, .. } => {
                        count(body) + count(shortcut) + usize::from(act.is_some())
                    }
                    _ => 0,
                })
                .sum()
        }
        count(&self.units)
    }
}

fn conv(name: &str, out: usize, k: usize, s: usize, p: usize, init: Init) -> ConvUnit {
    ConvUnit {
        name: name.into(),
        out,
        kernel: k,
        stride: s,
        padding: p,
        depthwise: false,
        bias: false,
        bn: None,
        act: None,
        init,
    }
}

impl ConvUnit {
    fn bn(mut self, name: impl Into<String>) -> Self {
        self.bn = Some(name.into());
        self
    }
    fn act(mut self, name: impl Into<String>) -> Self {
        self.act = Some(name.into());
        self
    }
    fn bias(mut self) -> Self {
        self.bias = true;
        self
    }
    fn depthwise(mut self) -> Self {
        self.depthwise = true;
        self
    }
}

fn linear(name: &str, out: Option<usize>, act: Option<&str>, init: Init) -> Unit {
    Unit::Linear { name: name.into(), out, act: act.map(Into::into), init }
}

fn pool(name: &str, kernel: usize, stride: usize, padding: usize) -> Unit {
    Unit::Pool { name: name.into(), kernel, stride, padding }
}

/// A CIFAR-10 network (3x32x32, 10 classes, CIFAR normalisation, moments initialisation).
fn cifar(name: String, units: Vec<Unit>) -> Arch {
    Arch {
        name,
        dataset: "CIFAR-10".into(),
        input_shape: [3, 32, 32],
        classes: 10,
        input_norm: InputNorm::Cifar10,
        x2act_scale: 1.0,
        zoo_init: ZooInit::Moments,
        units,
    }
}

/// NET-M (reference.md): MiniONN's MNIST network, 1x28x28.
pub fn net_m() -> Arch {
    Arch {
        name: "NET-M".into(),
        dataset: "MNIST / Fashion-MNIST".into(),
        input_shape: [1, 28, 28],
        classes: 10,
        input_norm: InputNorm::None,
        x2act_scale: 1.0,
        zoo_init: ZooInit::Legacy,
        units: vec![
            Unit::Conv(conv("conv1", 16, 5, 1, 0, Init::Act).bias().act("act1")),
            pool("pool1", 2, 2, 0),
            Unit::Conv(conv("conv2", 16, 5, 1, 0, Init::Act).bias().act("act2")),
            pool("pool2", 2, 2, 0),
            Unit::Flatten { name: "flatten".into() },
            linear("fc1", Some(100), Some("act3"), Init::Act),
            linear("fc2", None, None, Init::Logits),
        ],
    }
}

/// NET-C (reference.md): the MiniONN / Delphi CIFAR-10 network, 3x32x32.
pub fn net_c() -> Arch {
    let c = |name: &str, out, k, p, n: usize| {
        Unit::Conv(conv(name, out, k, 1, p, Init::Act).bias().act(format!("act{n}")))
    };
    Arch {
        name: "NET-C".into(),
        dataset: "CIFAR-10".into(),
        input_shape: [3, 32, 32],
        classes: 10,
        input_norm: InputNorm::Cifar10,
        x2act_scale: 1.0,
        zoo_init: ZooInit::Legacy,
        units: vec![
            c("conv1", 64, 3, 1, 1),
            c("conv2", 64, 3, 1, 2),
            pool("pool1", 2, 2, 0),
            c("conv3", 64, 3, 1, 3),
            c("conv4", 64, 3, 1, 4),
            pool("pool2", 2, 2, 0),
            c("conv5", 64, 3, 1, 5),
            c("conv6", 64, 1, 0, 6),
            c("conv7", 16, 1, 0, 7),
            Unit::Flatten { name: "flatten".into() },
            linear("fc", None, None, Init::Logits),
        ],
    }
}

/// A BasicBlock (two 3x3 convs) with a projection shortcut when the shape changes.
fn basic_block(p: &str, c_in: usize, c: usize, stride: usize) -> Unit {
    let body = vec![
        Unit::Conv(
            conv(&format!("{p}.conv1"), c, 3, stride, 1, Init::Act)
                .bn(format!("{p}.bn1"))
                .act(format!("{p}.act1")),
        ),
        Unit::Conv(conv(&format!("{p}.conv2"), c, 3, 1, 1, Init::Branch).bn(format!("{p}.bn2"))),
    ];
    Unit::Residual {
        add: format!("{p}.add"),
        body,
        shortcut: projection(p, c_in, c, stride),
        act: Some(format!("{p}.act2")),
    }
}

fn projection(p: &str, c_in: usize, c: usize, stride: usize) -> Vec<Unit> {
    if stride != 1 || c_in != c {
        vec![Unit::Conv(
            conv(&format!("{p}.shortcut.0"), c, 1, stride, 0, Init::Shortcut)
                .bn(format!("{p}.shortcut.1")),
        )]
    } else {
        Vec::new()
    }
}

/// A Bottleneck (1x1, 3x3 with the stride, 1x1 to 4c), torchvision's ResNet-50 v1.5 block.
fn bottleneck(p: &str, c_in: usize, c: usize, stride: usize) -> Unit {
    let body = vec![
        Unit::Conv(
            conv(&format!("{p}.conv1"), c, 1, 1, 0, Init::Act)
                .bn(format!("{p}.bn1"))
                .act(format!("{p}.act1")),
        ),
        Unit::Conv(
            conv(&format!("{p}.conv2"), c, 3, stride, 1, Init::Act)
                .bn(format!("{p}.bn2"))
                .act(format!("{p}.act2")),
        ),
        Unit::Conv(
            conv(&format!("{p}.conv3"), 4 * c, 1, 1, 0, Init::Branch).bn(format!("{p}.bn3")),
        ),
    ];
    Unit::Residual {
        add: format!("{p}.add"),
        body,
        shortcut: projection(p, c_in, 4 * c, stride),
        act: Some(format!("{p}.act3")),
    }
}

/// ResNet-18, -34 or -50 with the given stem (module docs). Errors: [`Error::InvalidArgument`]
/// for another depth.
pub fn resnet(depth: usize, stem: Stem) -> Result<Arch> {
    let (blocks, bottle): ([usize; 4], bool) = match depth {
        18 => ([2, 2, 2, 2], false),
        34 => ([3, 4, 6, 3], false),
        50 => ([3, 4, 6, 3], true),
        _ => {
            return Err(Error::InvalidArgument(format!(
                "ResNet depth {depth} is not described (expected 18, 34 or 50)"
            )))
        }
    };
    let mut units = Vec::new();
    let (input_shape, classes, dataset, norm) = match stem {
        Stem::Imagenet => {
            units.push(Unit::Conv(conv("conv1", 64, 7, 2, 3, Init::Stem).bn("bn1").act("act1")));
            units.push(pool("pool", 3, 2, 1));
            ([3, 224, 224], 1000, "ImageNet", InputNorm::Imagenet)
        }
        Stem::Cifar => {
            units.push(Unit::Conv(conv("conv1", 64, 3, 1, 1, Init::Stem).bn("bn1").act("act1")));
            ([3, 32, 32], 10, "CIFAR-10", InputNorm::Cifar10)
        }
    };
    let mut c_in = 64;
    for (stage, (&n, &c)) in blocks.iter().zip(&[64usize, 128, 256, 512]).enumerate() {
        for blk in 0..n {
            let s = if blk == 0 && stage > 0 { 2 } else { 1 };
            let p = format!("layer{}.{blk}", stage + 1);
            if bottle {
                units.push(bottleneck(&p, c_in, c, s));
                c_in = 4 * c;
            } else {
                units.push(basic_block(&p, c_in, c, s));
                c_in = c;
            }
        }
    }
    units.push(Unit::GlobalAvgPool { name: "avgpool".into() });
    units.push(linear("fc", None, None, Init::Head));
    let stem_name = match stem {
        Stem::Imagenet => "ImageNet",
        Stem::Cifar => "CIFAR",
    };
    Ok(Arch {
        name: format!("ResNet-{depth} ({stem_name} stem)"),
        dataset: dataset.into(),
        input_shape,
        classes,
        input_norm: norm,
        x2act_scale: if depth == 50 { 0.1 } else { 1.0 },
        zoo_init: ZooInit::Moments,
        units,
    })
}

/// NET-R18 (reference.md): ResNet-18 with the CIFAR stem and the legacy zoo initialisation.
pub fn net_r18() -> Arch {
    let mut a = resnet(18, Stem::Cifar).expect("depth 18 is described");
    a.name = "NET-R18".into();
    a.zoo_init = ZooInit::Legacy;
    a.x2act_scale = 1.0;
    a
}

/// CIFAR ResNet of depth `6n + 2` (He et al. 2016 §4.2; 32 and 110 are PILLAR's): 3x3 stem with
/// 16 channels, three stages of `n` BasicBlocks (16 / 32 / 64 channels, strides 1 / 2 / 2),
/// global average pool, fc 64 -> 10. Errors: [`Error::InvalidArgument`] unless `depth = 6n + 2`
/// with `n >= 1`.
pub fn cifar_resnet(depth: usize) -> Result<Arch> {
    if depth < 8 || !(depth - 2).is_multiple_of(6) {
        return Err(Error::InvalidArgument(format!(
            "CIFAR ResNet depth {depth} is not 6n + 2 (e.g. 20, 32, 56, 110)"
        )));
    }
    let n = (depth - 2) / 6;
    let mut units = vec![Unit::Conv(conv("conv1", 16, 3, 1, 1, Init::Stem).bn("bn1").act("act1"))];
    let mut c_in = 16;
    for (stage, &c) in [16usize, 32, 64].iter().enumerate() {
        for blk in 0..n {
            let s = if blk == 0 && stage > 0 { 2 } else { 1 };
            units.push(basic_block(&format!("layer{}.{blk}", stage + 1), c_in, c, s));
            c_in = c;
        }
    }
    units.push(Unit::GlobalAvgPool { name: "avgpool".into() });
    units.push(linear("fc", None, None, Init::Head));
    Ok(cifar(format!("CIFAR ResNet-{depth}"), units))
}

/// VGG-16-BN in the CIFAR layout: 13 conv3x3/p1 + BN + ACT (64, 64, P, 128, 128, P, 256 x3, P,
/// 512 x3, P, 512 x3, P; P = a 2x2 pooling site), flatten (512), fc 512 -> 10.
pub fn vgg16_bn() -> Arch {
    let cfg: [usize; 18] =
        [64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0];
    let (mut units, mut i, mut p) = (Vec::new(), 0, 0);
    for &c in &cfg {
        if c == 0 {
            p += 1;
            units.push(pool(&format!("pool{p}"), 2, 2, 0));
        } else {
            i += 1;
            units.push(Unit::Conv(
                conv(&format!("conv{i}"), c, 3, 1, 1, Init::Act)
                    .bias()
                    .bn(format!("bn{i}"))
                    .act(format!("act{i}")),
            ));
        }
    }
    units.push(Unit::Flatten { name: "flatten".into() });
    units.push(linear("fc", None, None, Init::Head));
    cifar("VGG-16-BN".into(), units)
}

/// MobileNetV2 (torchvision layout): conv3x3/s2 32 + BN + ACT; inverted residual blocks (expand
/// 1x1 + BN + ACT unless t = 1, depthwise 3x3 + BN + ACT, project 1x1 + BN; the input is added
/// back when the stride is 1 and the channels match, with no activation after the add) with
/// (t, c, n, s) = (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2)
/// (6,320,1,1); conv1x1 1280 + BN + ACT; global average pool; fc 1280 -> 1000.
pub fn mobilenet_v2() -> Arch {
    let settings: [(usize, usize, usize, usize); 7] = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ];
    let mut units = vec![Unit::Conv(
        conv("features.0.conv", 32, 3, 2, 1, Init::Stem).bn("features.0.bn").act("features.0.act"),
    )];
    let (mut c_in, mut idx) = (32usize, 1usize);
    for &(t, c, n, s) in &settings {
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            let p = format!("features.{idx}");
            let hidden = c_in * t;
            let residual = stride == 1 && c_in == c;
            let mut body = Vec::new();
            if t != 1 {
                body.push(Unit::Conv(
                    conv(&format!("{p}.expand"), hidden, 1, 1, 0, Init::Act)
                        .bn(format!("{p}.expand_bn"))
                        .act(format!("{p}.expand_act")),
                ));
            }
            body.push(Unit::Conv(
                conv(&format!("{p}.dw"), hidden, 3, stride, 1, Init::Act)
                    .depthwise()
                    .bn(format!("{p}.dw_bn"))
                    .act(format!("{p}.dw_act")),
            ));
            let role = if residual { Init::Branch } else { Init::Act };
            body.push(Unit::Conv(
                conv(&format!("{p}.project"), c, 1, 1, 0, role).bn(format!("{p}.project_bn")),
            ));
            if residual {
                units.push(Unit::Residual {
                    add: format!("{p}.add"),
                    body,
                    shortcut: Vec::new(),
                    act: None,
                });
            } else {
                units.extend(body);
            }
            c_in = c;
            idx += 1;
        }
    }
    units.push(Unit::Conv(
        conv(&format!("features.{idx}.conv"), 1280, 1, 1, 0, Init::Act)
            .bn(format!("features.{idx}.bn"))
            .act(format!("features.{idx}.act")),
    ));
    units.push(Unit::GlobalAvgPool { name: "avgpool".into() });
    units.push(linear("classifier", None, None, Init::Head));
    Arch {
        name: "MobileNetV2".into(),
        dataset: "ImageNet".into(),
        input_shape: [3, 224, 224],
        classes: 1000,
        input_norm: InputNorm::Imagenet,
        x2act_scale: 1.0,
        zoo_init: ZooInit::Moments,
        units,
    }
}

/// A `Kerv2d` unit (conv -> power node `act` -> BN `bn`).
fn kerv(name: &str, out: usize, k: usize, s: usize, p: usize, init: Init, act: String) -> ConvUnit {
    conv(name, out, k, s, p, init).act(act)
}

/// PKR-18 (PolyKervNets Models/PKR18.py, as its forward pass runs): Kerv2d 3x3 64 + BN; stages
/// 1-3 of two blocks (Kerv2d 3x3 + BN, conv3x3 + BN, + shortcut: identity or Kerv2d 1x1 + BN;
/// nothing after the add); avg_pool2d(4); flatten (1024); fc 1024 -> 10.
pub fn pkr18() -> Arch {
    let mut units =
        vec![Unit::Kerv(kerv("conv1", 64, 3, 1, 1, Init::Stem, "kerv1".into()).bn("bn1"))];
    let mut c_in = 64;
    for (stage, &c) in [64usize, 128, 256].iter().enumerate() {
        for blk in 0..2 {
            let s = if blk == 0 && stage > 0 { 2 } else { 1 };
            let p = format!("layer{}.{blk}", stage + 1);
            let body = vec![
                Unit::Kerv(
                    kerv(&format!("{p}.conv1"), c, 3, s, 1, Init::Act, format!("{p}.kerv1"))
                        .bn(format!("{p}.bn1")),
                ),
                Unit::Conv(
                    conv(&format!("{p}.conv2"), c, 3, 1, 1, Init::Branch).bn(format!("{p}.bn2")),
                ),
            ];
            let shortcut = if s != 1 || c_in != c {
                vec![Unit::Kerv(
                    kerv(
                        &format!("{p}.shortcut.0"),
                        c,
                        1,
                        s,
                        0,
                        Init::Shortcut,
                        format!("{p}.shortcut.kerv"),
                    )
                    .bn(format!("{p}.shortcut.1")),
                )]
            } else {
                Vec::new()
            };
            units.push(Unit::Residual { add: format!("{p}.add"), body, shortcut, act: None });
            c_in = c;
        }
    }
    units.push(Unit::AvgPool { name: "avgpool".into(), kernel: 4, stride: 4, padding: 0 });
    units.push(Unit::Flatten { name: "flatten".into() });
    units.push(linear("fc", None, None, Init::Head));
    cifar("PKR-18".into(), units)
}

/// PKV-16 (PolyKervNets Models/PKV.py, `PKV16`): 13 conv3x3/p1 layers, `K` = Kerv2d + BN, `C` =
/// conv (with bias) + BN, no activation: K K A C C A C K K A C C C A K C C A (A = 2x2 average
/// pool), flatten (512), fc 512 -> 10.
pub fn pkv16() -> Arch {
    let cfg: [(usize, char); 18] = [
        (64, 'K'),
        (64, 'K'),
        (0, 'A'),
        (128, 'C'),
        (128, 'C'),
        (0, 'A'),
        (256, 'C'),
        (256, 'K'),
        (256, 'K'),
        (0, 'A'),
        (512, 'C'),
        (512, 'C'),
        (512, 'C'),
        (0, 'A'),
        (512, 'K'),
        (512, 'C'),
        (512, 'C'),
        (0, 'A'),
    ];
    let (mut units, mut i, mut p) = (Vec::new(), 0, 0);
    for &(c, kind) in &cfg {
        match kind {
            'A' => {
                p += 1;
                units.push(Unit::AvgPool {
                    name: format!("pool{p}"),
                    kernel: 2,
                    stride: 2,
                    padding: 0,
                });
            }
            'K' => {
                i += 1;
                units.push(Unit::Kerv(
                    kerv(&format!("conv{i}"), c, 3, 1, 1, Init::Act, format!("kerv{i}"))
                        .bn(format!("bn{i}")),
                ));
            }
            _ => {
                i += 1;
                units.push(Unit::Conv(
                    conv(&format!("conv{i}"), c, 3, 1, 1, Init::Act).bias().bn(format!("bn{i}")),
                ));
            }
        }
    }
    units.push(Unit::Flatten { name: "flatten".into() });
    units.push(linear("fc", None, None, Init::Head));
    cifar("PKV-16".into(), units)
}

/// PKA-8 (PolyKervNets Models/PKA8.py): Kerv2d 3x3/p0 96, Kerv2d 3x3/p1 256, avgpool 3/s2,
/// Kerv2d 384, 384, 256 (3x3/p1), avgpool 3/s2, flatten (9216 at 32x32), fc -> 10. No BN.
pub fn pka8() -> Arch {
    let k = |n: usize, c: usize, p: usize| {
        Unit::Kerv(kerv(&format!("kerv{n}"), c, 3, 1, p, Init::Act, format!("kerv{n}.pow")))
    };
    let avg = |name: &str| Unit::AvgPool { name: name.into(), kernel: 3, stride: 2, padding: 0 };
    cifar(
        "PKA-8".into(),
        vec![
            k(1, 96, 0),
            k(2, 256, 1),
            avg("pool1"),
            k(3, 384, 1),
            k(4, 384, 1),
            k(5, 256, 1),
            avg("pool2"),
            Unit::Flatten { name: "flatten".into() },
            linear("fc", None, None, Init::Head),
        ],
    )
}
