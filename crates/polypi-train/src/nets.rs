//! The reference networks of reference.md (NET-M, NET-C, NET-R18), built from generic units so that
//! training, evaluation and export walk the same structure.
//!
//! Every tensor between units is NCHW `[N, C, H, W]`; after a flatten or a fully connected layer
//! it is `[N, F, 1, 1]`. Batch norm (when enabled) sits between a conv and its activation; it is
//! folded into the conv for private inference, so it costs nothing online.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AvgPool2dConfig, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d,
};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use polypi_core::model::arch::Stem;
use polypi_core::model::zoo::RefNet;

use crate::archnet;
use crate::layers::{ActKind, Activation, Ctx};

/// Which reference network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NetKind {
    /// MiniONN's MNIST net (input 1x28x28): conv5x5 1->16, ACT, avgpool, conv5x5 16->16, ACT,
    /// avgpool, fc 256->100, ACT, fc 100->10.
    #[default]
    NetM,
    /// MiniONN / Delphi CIFAR-10 net (input 3x32x32): 7 convs of 64 (last 1x1 to 16), 2 avgpools,
    /// fc 1024->10.
    NetC,
    /// CIFAR ResNet-18: stem conv 64, four stages of two BasicBlocks, global average pool, fc 512->10.
    NetR18,
    /// ResNet-18 (He et al. 2016; PASNet-A), stem by `--stem` (default imagenet); built from its
    /// architecture description (polypi-core `model::arch`), like every network below.
    Resnet18,
    /// ResNet-34, stem by `--stem`.
    Resnet34,
    /// ResNet-50 (bottleneck blocks; PASNet-B), stem by `--stem`.
    Resnet50,
    /// CIFAR ResNet-32 (16/32/64 channels, 5 BasicBlocks per stage; PILLAR).
    Resnet32,
    /// CIFAR ResNet-110 (18 BasicBlocks per stage; PILLAR).
    Resnet110,
    /// VGG-16-BN, CIFAR layout (PILLAR).
    Vgg16,
    /// MobileNetV2 (depthwise convolutions; PASNet-D).
    Mobilenetv2,
    /// PolyKervNets PKR-18 (stages 1-3, kervolutions as published).
    Pkr18,
    /// PolyKervNets PKV-16.
    Pkv16,
    /// PolyKervNets PKA-8 (no BatchNorm).
    Pka8,
}

impl NetKind {
    /// Display name ("NET-M").
    pub fn display_name(self) -> &'static str {
        match self {
            NetKind::NetM => "NET-M",
            NetKind::NetC => "NET-C",
            NetKind::NetR18 => "NET-R18",
            NetKind::Resnet18 => "ResNet-18",
            NetKind::Resnet34 => "ResNet-34",
            NetKind::Resnet50 => "ResNet-50",
            NetKind::Resnet32 => "ResNet-32",
            NetKind::Resnet110 => "ResNet-110",
            NetKind::Vgg16 => "VGG-16-BN",
            NetKind::Mobilenetv2 => "MobileNetV2",
            NetKind::Pkr18 => "PKR-18",
            NetKind::Pkv16 => "PKV-16",
            NetKind::Pka8 => "PKA-8",
        }
    }
    /// Short name for file names ("netm", "resnet18").
    pub fn short(self) -> &'static str {
        match self {
            NetKind::NetM => "netm",
            NetKind::NetC => "netc",
            NetKind::NetR18 => "netr18",
            k => k.ref_net().map_or("net", |r| r.name()),
        }
    }

    /// Every network, reference networks first.
    pub const ALL: [NetKind; 13] = [
        NetKind::NetM,
        NetKind::NetC,
        NetKind::NetR18,
        NetKind::Resnet18,
        NetKind::Resnet34,
        NetKind::Resnet50,
        NetKind::Resnet32,
        NetKind::Resnet110,
        NetKind::Vgg16,
        NetKind::Mobilenetv2,
        NetKind::Pkr18,
        NetKind::Pkv16,
        NetKind::Pka8,
    ];

    /// The zoo network of the same architecture (`polypi zoo --net`).
    pub fn ref_net(self) -> Option<RefNet> {
        Some(match self {
            NetKind::NetM => RefNet::NetM,
            NetKind::NetC => RefNet::NetC,
            NetKind::NetR18 => RefNet::NetR18,
            NetKind::Resnet18 => RefNet::ResNet18,
            NetKind::Resnet34 => RefNet::ResNet34,
            NetKind::Resnet50 => RefNet::ResNet50,
            NetKind::Resnet32 => RefNet::ResNet32,
            NetKind::Resnet110 => RefNet::ResNet110,
            NetKind::Vgg16 => RefNet::Vgg16,
            NetKind::Mobilenetv2 => RefNet::MobileNetV2,
            NetKind::Pkr18 => RefNet::Pkr18,
            NetKind::Pkv16 => RefNet::Pkv16,
            NetKind::Pka8 => RefNet::Pka8,
        })
    }

    /// Whether the network is built from its architecture description ([`crate::archnet`]);
    /// false for NET-M, NET-C and NET-R18, whose hand-written builder (and exported files) stay
    /// as they were.
    pub fn from_description(self) -> bool {
        !matches!(self, NetKind::NetM | NetKind::NetC | NetKind::NetR18)
    }

    /// PASNet's X2act granularity for this network: one scalar set per site for the ResNets and
    /// MobileNetV2 (`models/gate_tmp.py` `x2act`), one per channel (polypi's default) otherwise.
    pub fn x2act_per_site_default(self) -> bool {
        matches!(
            self,
            NetKind::Resnet18
                | NetKind::Resnet34
                | NetKind::Resnet50
                | NetKind::Resnet32
                | NetKind::Resnet110
                | NetKind::Mobilenetv2
        )
    }
}

/// Pooling used at the pooling sites of NET-M / NET-C.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PoolKind {
    /// 2x2 average pooling, stride 2 (local in 2PC).
    #[default]
    Avg,
    /// 2x2 max pooling, stride 2 (needs comparisons in 2PC; baseline only).
    Max,
}

/// Architecture hyper-parameters of a network.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NetSpec {
    /// Which network.
    pub net: NetKind,
    /// Activation at every ACT site.
    pub act: ActKind,
    /// Width multiplier on all hidden channel counts (1.0 = reference.md).
    pub width: f32,
    /// Batch norm after every conv (folded away for inference).
    pub batch_norm: bool,
    /// Pooling kind at NET-M / NET-C pooling sites.
    pub pool: PoolKind,
    /// X2Act weight scale `s`.
    pub x2_scale: f32,
    /// PolyKerv init `(c_p, a_p)` (None = the paper's: PKN 1 / 1, R-PKN 0.47 / 0.009).
    #[serde(default)]
    pub kerv_init: Option<(f32, f32)>,
    /// PILLAR polynomial of the `poly` activation (None = the seed's cached degree 4,
    /// [`crate::layers::PILLAR_DEG4`]).
    #[serde(default)]
    pub pillar: Option<PillarSpec>,
    /// X2act with one scalar set (w0, w1, b) per site, as PASNet's `x2act` (false: one per
    /// channel, polypi's earlier default).
    #[serde(default)]
    pub x2act_per_site: bool,
    /// NET-R18 with `pkn` / `rpkn`: where the kervolutions sit (see [`PknLayout`]).
    #[serde(default)]
    pub pkn_layout: PknLayout,
    /// Input channels.
    pub in_channels: usize,
    /// Number of classes.
    pub classes: usize,
    /// Stem of ResNet-18/34/50 (None = the description's default, ImageNet).
    #[serde(default)]
    pub stem: Option<Stem>,
    /// Input height = width in pixels (networks built from their description; 0 = the
    /// description's).
    #[serde(default)]
    pub input_size: usize,
}

/// A PILLAR polynomial fitted by [`crate::polyfit::fit_relu`]: degree, precision, range and the
/// resulting coefficients (lowest degree first, `coeffs[degree + 1..]` zero).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PillarSpec {
    /// Degree D (1..=10).
    pub degree: u8,
    /// Precision P: coefficients are integers / 2^P.
    pub precision_bits: u8,
    /// Fitting interval [-R, R].
    pub range: f32,
    /// Coefficients, lowest degree first.
    pub coeffs: [f32; 11],
}

impl PillarSpec {
    /// Fits the degree-`degree` polynomial with `precision_bits` on `[-range, range]` (grid 0.01).
    ///
    /// # Errors
    /// The fitter's argument errors (degree outside 1..=10, precision outside 1..=30, bad range).
    pub fn fit(degree: usize, precision_bits: u32, range: f64) -> anyhow::Result<Self> {
        let fit = crate::polyfit::fit_relu(degree, precision_bits, range, 0.01)?;
        let mut coeffs = [0.0f32; 11];
        for (c, v) in coeffs.iter_mut().zip(&fit.coefficients) {
            *c = *v as f32;
        }
        Ok(PillarSpec {
            degree: degree as u8,
            precision_bits: precision_bits as u8,
            range: range as f32,
            coeffs,
        })
    }

    /// The coefficients `c_0..=c_D`.
    pub fn coefficients(&self) -> &[f32] {
        &self.coeffs[..=self.degree as usize]
    }
}

impl NetSpec {
    /// The activation site of this spec after a layer with `channels` output channels.
    pub fn activation(&self, channels: usize, device: &Device) -> Activation {
        let c = if self.x2act_per_site && self.act == ActKind::X2act { 1 } else { channels };
        Activation::new(self.act, c, self.x2_scale, self.kerv_init, &self.poly_coeffs(), device)
    }

    /// Coefficients of the `poly` activation, lowest degree first.
    pub fn poly_coeffs(&self) -> Vec<f32> {
        match &self.pillar {
            Some(p) => p.coefficients().to_vec(),
            None => crate::layers::PILLAR_DEG4.to_vec(),
        }
    }
}

/// Placement of the PolyKervNets power in NET-R18 (`--act pkn|rpkn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PknLayout {
    /// polypi's earlier placement: every ReLU site replaced (after BN, and after each residual
    /// add), shortcuts linear, no dropout.
    #[default]
    Sites,
    /// As published (PolyKervNets `Models/ModelPKN.py`, PKR-18): `Kerv2d` = conv -> (+ c_p) ->
    /// ^2 -> BatchNorm -> Dropout(0.2) at the stem, each block's first conv and its 1x1
    /// projection shortcut; the block's second conv linear (conv -> BN); nothing after the add.
    Published,
}

/// Pool code stored in [`Unit::pool`].
pub const POOL_NONE: u8 = 0;
/// 2x2/2 average pooling.
pub const POOL_AVG: u8 = 1;
/// 2x2/2 max pooling.
pub const POOL_MAX: u8 = 2;

/// One layer group: `[conv | linear] -> [bn] -> [act] -> [pool] -> [global avg pool] -> [flatten]`.
#[derive(Module, Debug)]
pub struct Unit {
    /// Convolution (NCHW in, NCHW out).
    pub conv: Option<Conv2d>,
    /// Fully connected layer on `[N, F]` (input taken from `[N, F, 1, 1]`).
    pub linear: Option<Linear>,
    /// Batch norm after the conv.
    pub bn: Option<BatchNorm>,
    /// Activation site.
    pub act: Option<Activation>,
    /// Pooling after the activation: [`POOL_NONE`], [`POOL_AVG`] or [`POOL_MAX`] (2x2, stride 2).
    pub pool: u8,
    /// Global average pooling `[N, C, H, W] -> [N, C, 1, 1]` after the pool.
    pub gap: bool,
    /// Flatten `[N, C, H, W] -> [N, C*H*W, 1, 1]` (row-major C, H, W) at the end.
    pub flatten: bool,
    /// Conv padding (kept for export).
    pub padding: usize,
    /// The activation comes before the BN (PolyKervNets' `Kerv2d`: conv -> power -> BN).
    pub act_first: bool,
    /// Dropout after the BN (training only; PolyKervNets' `Kerv2d`, p = 0.2).
    pub dropout: Option<Dropout>,
}

impl Unit {
    fn empty() -> Self {
        Unit {
            conv: None,
            linear: None,
            bn: None,
            act: None,
            pool: POOL_NONE,
            gap: false,
            flatten: false,
            padding: 0,
            act_first: false,
            dropout: None,
        }
    }

    /// Runs the unit on `[N, C, H, W]`.
    pub fn forward(&self, mut x: Tensor<4>, ctx: &mut Ctx) -> Tensor<4> {
        if let Some(c) = &self.conv {
            x = c.forward(x);
        }
        if let Some(l) = &self.linear {
            let [n, f, _, _] = x.dims();
            let y = l.forward(x.reshape([n, f]));
            let o = y.dims()[1];
            x = y.reshape([n, o, 1, 1]);
        }
        if self.act_first {
            if let Some(a) = &self.act {
                x = a.forward(x, ctx);
            }
        }
        if let Some(b) = &self.bn {
            x = b.forward(x);
        }
        if let Some(d) = &self.dropout {
            x = d.forward(x);
        }
        if !self.act_first {
            if let Some(a) = &self.act {
                x = a.forward(x, ctx);
            }
        }
        let gated = self.pool != POOL_NONE && ctx.gates.is_some();
        x = match self.pool {
            _ if gated => match ctx.gates.as_mut() {
                Some(g) => g.mix_pool(
                    x,
                    |x| MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init().forward(x),
                    |x| AvgPool2dConfig::new([2, 2]).init().forward(x),
                ),
                None => x,
            },
            POOL_AVG => AvgPool2dConfig::new([2, 2]).init().forward(x),
            POOL_MAX => MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init().forward(x),
            _ => x,
        };
        if self.gap {
            x = x.mean_dim(3).mean_dim(2);
        }
        if self.flatten {
            let [n, c, h, w] = x.dims();
            x = x.reshape([n, c * h * w, 1, 1]);
        }
        x
    }
}

/// CIFAR ResNet BasicBlock: `act2(bn2(conv2(act1(bn1(conv1(x))))) + shortcut(x))`, where the
/// shortcut is a 1x1 projection conv + BN when the stride or width changes, else identity.
/// With `kerv` (PolyKervNets as published): `bn2(conv2(drop(bn1(act1(conv1(x)))))) +
/// drop(short_bn(short_act(short_conv(x))))`, no activation after the add.
#[derive(Module, Debug)]
pub struct ResBlock {
    /// First 3x3 conv (stride `stride`, padding 1, no bias).
    pub conv1: Conv2d,
    /// BN after conv1.
    pub bn1: BatchNorm,
    /// First activation.
    pub act1: Activation,
    /// Second 3x3 conv (stride 1, padding 1, no bias).
    pub conv2: Conv2d,
    /// BN after conv2.
    pub bn2: BatchNorm,
    /// 1x1 projection conv of the shortcut.
    pub short_conv: Option<Conv2d>,
    /// BN of the projection shortcut.
    pub short_bn: Option<BatchNorm>,
    /// Activation after the residual add (None in the published PolyKervNets layout).
    pub act2: Option<Activation>,
    /// Kervolution power of the projection shortcut (published PolyKervNets layout).
    pub short_act: Option<Activation>,
    /// Published PolyKervNets layout: conv -> power -> BN -> dropout on conv1 and the projection.
    pub kerv: bool,
    /// Dropout after each kervolution's BN (training only, p = 0.2).
    pub dropout: Option<Dropout>,
    /// Stride of conv1 and of the projection.
    pub stride: usize,
}

impl ResBlock {
    /// Runs the block on `[N, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>, ctx: &mut Ctx) -> Tensor<4> {
        let drop = |t: Tensor<4>| match &self.dropout {
            Some(d) => d.forward(t),
            None => t,
        };
        let y = self.conv1.forward(x.clone());
        let y = if self.kerv {
            drop(self.bn1.forward(self.act1.forward(y, ctx)))
        } else {
            self.act1.forward(self.bn1.forward(y), ctx)
        };
        let y = self.bn2.forward(self.conv2.forward(y));
        let s = match &self.short_conv {
            Some(c) => {
                let mut s = c.forward(x);
                if let Some(a) = &self.short_act {
                    s = a.forward(s, ctx);
                }
                if let Some(b) = &self.short_bn {
                    s = b.forward(s);
                }
                if self.kerv {
                    s = drop(s);
                }
                s
            }
            None => x,
        };
        let z = y.add(s);
        match &self.act2 {
            Some(a) => a.forward(z, ctx),
            None => z,
        }
    }
}

/// A network: units, then residual blocks, then units, then description layers; the output is
/// `[N, classes]` logits.
#[derive(Module, Debug)]
pub struct Net {
    /// Units before the residual blocks (the whole net for NET-M / NET-C; the stem for NET-R18).
    pub pre: Vec<Unit>,
    /// Residual blocks (NET-R18 only).
    pub blocks: Vec<ResBlock>,
    /// Units after the blocks (NET-R18: global average pool + fc).
    pub post: Vec<Unit>,
    /// Number of classes.
    pub classes: usize,
    /// The layers of a network built from its architecture description ([`crate::archnet`]; the
    /// whole network, with `pre`, `blocks` and `post` empty), one per description unit.
    pub arch: Vec<archnet::Layer>,
}

impl Net {
    /// Logits `[N, classes]` for the NCHW input `x`.
    pub fn forward(&self, x: Tensor<4>, ctx: &mut Ctx) -> Tensor<2> {
        let mut x = x;
        for u in &self.pre {
            x = u.forward(x, ctx);
        }
        for b in &self.blocks {
            x = b.forward(x, ctx);
        }
        for u in &self.post {
            x = u.forward(x, ctx);
        }
        for l in &self.arch {
            x = l.forward(x, ctx);
        }
        let [n, f, h, w] = x.dims();
        x.reshape([n, f * h * w])
    }
}

fn ch(base: usize, width: f32) -> usize {
    ((base as f32 * width).round() as usize).max(1)
}

fn conv(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    bias: bool,
    device: &Device,
) -> Conv2d {
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(bias)
        .init(device)
}

fn bn(c: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(c).init(device)
}

/// conv [+bn] + act unit.
fn conv_unit(
    spec: &NetSpec,
    cin: usize,
    cout: usize,
    k: usize,
    pad: usize,
    device: &Device,
) -> Unit {
    Unit {
        conv: Some(conv(cin, cout, k, 1, pad, !spec.batch_norm, device)),
        bn: spec.batch_norm.then(|| bn(cout, device)),
        act: Some(spec.activation(cout, device)),
        padding: pad,
        ..Unit::empty()
    }
}

fn pool_code(p: PoolKind) -> u8 {
    match p {
        PoolKind::Avg => POOL_AVG,
        PoolKind::Max => POOL_MAX,
    }
}

fn fc_unit(fin: usize, fout: usize, act: Option<(&NetSpec, usize)>, device: &Device) -> Unit {
    Unit {
        linear: Some(LinearConfig::new(fin, fout).init(device)),
        act: act.map(|(s, c)| s.activation(c, device)),
        ..Unit::empty()
    }
}

/// Builds the network described by `spec` on `device` (fresh random init): NET-M, NET-C and
/// NET-R18 by the hand-written builder below, every other network from its architecture
/// description ([`crate::archnet`]).
///
/// # Errors
/// For a network built from its description: a stem on a network without the choice, zero
/// classes, a width that is not finite and positive, or an input too small for the network.
pub fn build(spec: &NetSpec, device: &Device) -> anyhow::Result<Net> {
    if spec.net.from_description() {
        let arch = archnet::describe(spec)?;
        let size = if spec.input_size == 0 { arch.input_shape[1] } else { spec.input_size };
        let layers = archnet::build_layers(&arch, spec, size, device)?;
        return Ok(Net {
            pre: vec![],
            blocks: vec![],
            post: vec![],
            classes: spec.classes,
            arch: layers,
        });
    }
    if spec.stem.is_some() {
        anyhow::bail!(
            "{} has a fixed stem; --stem applies to resnet18, resnet34 and resnet50",
            spec.net.display_name()
        );
    }
    Ok(build_reference(spec, device))
}

/// NET-M, NET-C, NET-R18 (reference.md) as the hand-written units of this module.
fn build_reference(spec: &NetSpec, device: &Device) -> Net {
    let w = spec.width;
    let cin = spec.in_channels;
    match spec.net {
        NetKind::NetM => {
            let c1 = ch(16, w);
            let c2 = ch(16, w);
            let h = ch(100, w);
            let mut u1 = conv_unit(spec, cin, c1, 5, 0, device);
            u1.pool = pool_code(spec.pool);
            let mut u2 = conv_unit(spec, c1, c2, 5, 0, device);
            u2.pool = pool_code(spec.pool);
            u2.flatten = true;
            Net {
                pre: vec![
                    u1,
                    u2,
                    fc_unit(c2 * 16, h, Some((spec, h)), device),
                    fc_unit(h, spec.classes, None, device),
                ],
                blocks: vec![],
                post: vec![],
                classes: spec.classes,
                arch: vec![],
            }
        }
        NetKind::NetC => {
            let c = ch(64, w);
            let c7 = ch(16, w);
            let mut us =
                vec![conv_unit(spec, cin, c, 3, 1, device), conv_unit(spec, c, c, 3, 1, device)];
            us[1].pool = pool_code(spec.pool);
            us.push(conv_unit(spec, c, c, 3, 1, device));
            let mut u4 = conv_unit(spec, c, c, 3, 1, device);
            u4.pool = pool_code(spec.pool);
            us.push(u4);
            us.push(conv_unit(spec, c, c, 3, 1, device));
            us.push(conv_unit(spec, c, c, 1, 0, device));
            let mut u7 = conv_unit(spec, c, c7, 1, 0, device);
            u7.flatten = true;
            us.push(u7);
            us.push(fc_unit(c7 * 64, spec.classes, None, device));
            Net { pre: us, blocks: vec![], post: vec![], classes: spec.classes, arch: vec![] }
        }
        // NET-R18 (`build` sends every network with a description elsewhere).
        _ => {
            debug_assert_eq!(spec.net, NetKind::NetR18);
            let c0 = ch(64, w);
            let kerv = spec.pkn_layout == PknLayout::Published
                && matches!(spec.act, ActKind::Pkn | ActKind::Rpkn);
            let dropout = || kerv.then(|| DropoutConfig::new(0.2).init());
            // The ResNet always has BN (the projection shortcuts need it).
            let stem = Unit {
                conv: Some(conv(cin, c0, 3, 1, 1, false, device)),
                bn: Some(bn(c0, device)),
                act: Some(spec.activation(c0, device)),
                padding: 1,
                act_first: kerv,
                dropout: dropout(),
                ..Unit::empty()
            };
            let mut blocks = Vec::new();
            let mut cprev = c0;
            for (i, base) in [64usize, 128, 256, 512].iter().enumerate() {
                let cout = ch(*base, w);
                for j in 0..2 {
                    let stride = if i > 0 && j == 0 { 2 } else { 1 };
                    let proj = stride != 1 || cprev != cout;
                    blocks.push(ResBlock {
                        conv1: conv(cprev, cout, 3, stride, 1, false, device),
                        bn1: bn(cout, device),
                        act1: spec.activation(cout, device),
                        conv2: conv(cout, cout, 3, 1, 1, false, device),
                        bn2: bn(cout, device),
                        short_conv: proj.then(|| conv(cprev, cout, 1, stride, 0, false, device)),
                        short_bn: proj.then(|| bn(cout, device)),
                        act2: (!kerv).then(|| spec.activation(cout, device)),
                        short_act: (kerv && proj).then(|| spec.activation(cout, device)),
                        kerv,
                        dropout: dropout(),
                        stride,
                    });
                    cprev = cout;
                }
            }
            let head = Unit { gap: true, flatten: true, ..Unit::empty() };
            Net {
                pre: vec![stem],
                blocks,
                post: vec![head, fc_unit(cprev, spec.classes, None, device)],
                classes: spec.classes,
                arch: vec![],
            }
        }
    }
}
