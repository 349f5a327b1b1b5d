//! Trainable networks built from polypi-core's architecture descriptions
//! ([`polypi_core::model::arch`], design.md §7 "One architecture description"): the seeds'
//! networks (ResNet-18/34/50 with either stem, CIFAR ResNet-32/110, VGG-16-BN, MobileNetV2,
//! PKR-18, PKV-16, PKA-8) are not written out here but walked from the same [`Arch`] that
//! `polypi zoo` turns into a model file, so a trained export and a zoo file of the same network,
//! width and activation have the same nodes, node names and tensor shapes.
//!
//! Every tensor between layers is NCHW `[N, C, H, W]`; after a flatten or a linear layer it is
//! `[N, F, 1, 1]`. The mapping of description units to burn modules:
//! - `Conv`: conv (groups = channels when depthwise; bias as described) -> [BatchNorm] -> [ACT];
//! - `Kerv` (PolyKervNets' `Kerv2d`): with a PolyKervNets activation (`pkn`, `rpkn`,
//!   `react-pkn`) conv -> power -> [BatchNorm -> Dropout(0.2)] (dropout: training only, and
//!   only where the description has the BN), the published order (`Models/ModelPKN.py`); with
//!   any other activation conv -> [BatchNorm] -> ACT, as the zoo builds it;
//! - `Pool`: max or average pooling (the `pool` choice), `AvgPool`: average pooling, both with the
//!   described window, step and zero padding (counted in the divisor, as ONNX / the engine);
//! - `GlobalAvgPool`, `Flatten` (C, H, W order), `Linear` (+ ACT);
//! - `Residual`: `body(x) + shortcut(x)` (an empty shortcut is the identity), then [ACT].
//!
//! Channel counts are the description's times the width, rounded, at least 1 (the zoo's rule);
//! a linear layer's own output count is not scaled.

use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AvgPool2dConfig, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d,
};
use burn::tensor::{Device, Tensor};
use polypi_core::model::arch::{Arch, ConvUnit, Unit};
use polypi_core::model::zoo;

use crate::layers::{ActKind, Activation, Ctx};
use crate::nets::{NetSpec, PoolKind};

/// [`Layer::kind`]: conv -> [BN] -> [ACT] (a description `Conv`, or a `Kerv` without a
/// PolyKervNets activation).
pub const L_CONV: u8 = 0;
/// [`Layer::kind`]: PolyKervNets `Kerv2d`, conv -> power -> [BN] -> dropout.
pub const L_KERV: u8 = 1;
/// [`Layer::kind`]: max pooling.
pub const L_MAXPOOL: u8 = 2;
/// [`Layer::kind`]: average pooling (zero padding counted in the divisor).
pub const L_AVGPOOL: u8 = 3;
/// [`Layer::kind`]: global average pooling `[N, C, H, W] -> [N, C, 1, 1]`.
pub const L_GAP: u8 = 4;
/// [`Layer::kind`]: flatten `[N, C, H, W] -> [N, C*H*W, 1, 1]` (row-major C, H, W).
pub const L_FLATTEN: u8 = 5;
/// [`Layer::kind`]: linear layer (+ ACT) on `[N, F, 1, 1]`.
pub const L_LINEAR: u8 = 6;
/// [`Layer::kind`]: residual block `body(x) + shortcut(x)` (+ ACT).
pub const L_RESIDUAL: u8 = 7;

/// One unit of an architecture description as burn modules (module docs); the fields a kind does
/// not use are `None` / empty / 0. Layers correspond one to one, in order, to the description's
/// units (and `body` / `shortcut` to a residual's), which is how the export names their nodes.
#[derive(Module, Debug)]
pub struct Layer {
    /// One of [`L_CONV`] .. [`L_RESIDUAL`].
    pub kind: u8,
    /// Convolution, weight `[c_out, c_in / groups, k, k]` (conv, kerv).
    pub conv: Option<Conv2d>,
    /// BatchNorm after the conv (after the power in a kerv).
    pub bn: Option<BatchNorm>,
    /// Activation site (conv, kerv, linear, residual).
    pub act: Option<Activation>,
    /// Dropout after a kerv's BN (training only, p = 0.2).
    pub dropout: Option<Dropout>,
    /// Fully connected layer, burn weight `[in, out]` (linear).
    pub linear: Option<Linear>,
    /// Residual branch.
    pub body: Vec<Layer>,
    /// Residual shortcut (empty = identity).
    pub shortcut: Vec<Layer>,
    /// Conv / pooling zero padding on each side (kept for export).
    pub padding: usize,
    /// Pooling window side.
    pub kernel: usize,
    /// Pooling step.
    pub stride: usize,
    /// A pooling layer built from the description's `Pool` unit (its max / avg choice; PASNet's
    /// stem pooling gate): a pooling site of the architecture search. Not stored in checkpoints.
    pub pool_site: bool,
}

impl Layer {
    fn of(kind: u8) -> Self {
        Layer {
            kind,
            conv: None,
            bn: None,
            act: None,
            dropout: None,
            linear: None,
            body: Vec::new(),
            shortcut: Vec::new(),
            padding: 0,
            kernel: 0,
            stride: 0,
            pool_site: false,
        }
    }

    /// Runs the layer on `[N, C, H, W]` (`[N, F, 1, 1]` for a linear layer).
    pub fn forward(&self, x: Tensor<4>, ctx: &mut Ctx) -> Tensor<4> {
        let act = |x: Tensor<4>, ctx: &mut Ctx| match &self.act {
            Some(a) => a.forward(x, ctx),
            None => x,
        };
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let max = |x: Tensor<4>| {
            MaxPool2dConfig::new([k, k])
                .with_strides([s, s])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .init()
                .forward(x)
        };
        let avg = |x: Tensor<4>| {
            AvgPool2dConfig::new([k, k])
                .with_strides([s, s])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .with_count_include_pad(true)
                .init()
                .forward(x)
        };
        if self.pool_site {
            // Supernet forward: PASNet's GatePool, `p_max * maxpool(x) + p_avg * avgpool(x)`.
            if let Some(g) = ctx.gates.as_mut() {
                return g.mix_pool(x, max, avg);
            }
        }
        match self.kind {
            L_CONV | L_KERV => {
                let mut y = match &self.conv {
                    Some(c) => c.forward(x),
                    None => x,
                };
                if self.kind == L_KERV {
                    y = act(y, ctx);
                }
                if let Some(b) = &self.bn {
                    y = b.forward(y);
                }
                if let Some(d) = &self.dropout {
                    y = d.forward(y);
                }
                if self.kind == L_CONV {
                    y = act(y, ctx);
                }
                y
            }
            L_MAXPOOL => max(x),
            L_AVGPOOL => avg(x),
            L_GAP => x.mean_dim(3).mean_dim(2),
            L_FLATTEN => {
                let [n, c, h, w] = x.dims();
                x.reshape([n, c * h * w, 1, 1])
            }
            L_LINEAR => {
                let y = match &self.linear {
                    Some(l) => {
                        let [n, f, h, w] = x.dims();
                        let y = l.forward(x.reshape([n, f * h * w]));
                        let o = y.dims()[1];
                        y.reshape([n, o, 1, 1])
                    }
                    None => x,
                };
                act(y, ctx)
            }
            _ => {
                let mut y = x.clone();
                for l in &self.body {
                    y = l.forward(y, ctx);
                }
                let mut sc = x;
                for l in &self.shortcut {
                    sc = l.forward(sc, ctx);
                }
                act(y.add(sc), ctx)
            }
        }
    }
}

/// The search sites of `layers`, in forward order (a residual's body, then its shortcut, then
/// the activation after its add): every activation site into `acts`, every pooling site (a
/// layer with [`Layer::pool_site`]) into `pools`.
pub fn sites_mut<'a>(
    layers: &'a mut [Layer],
    acts: &mut Vec<&'a mut Activation>,
    pools: &mut Vec<&'a mut Layer>,
) {
    for l in layers.iter_mut() {
        if l.pool_site {
            pools.push(l);
            continue;
        }
        sites_mut(&mut l.body, acts, pools);
        sites_mut(&mut l.shortcut, acts, pools);
        if let Some(a) = l.act.as_mut() {
            acts.push(a);
        }
    }
}

/// Number of (activation, pooling) search sites of a description's `units`: the units with an
/// activation (conv, kervolution, linear, residual add) and the `Pool` units (max / avg choice).
pub fn count_sites(units: &[Unit]) -> (usize, usize) {
    units.iter().fold((0, 0), |(a, p), u| {
        let (da, dp) = match u {
            Unit::Conv(c) | Unit::Kerv(c) => (usize::from(c.act.is_some()), 0),
            Unit::Linear { act, .. } => (usize::from(act.is_some()), 0),
            Unit::Pool { .. } => (0, 1),
            Unit::Residual { body, shortcut, act, .. } => {
                let (ba, bp) = count_sites(body);
                let (sa, sp) = count_sites(shortcut);
                (ba + sa + usize::from(act.is_some()), bp + sp)
            }
            _ => (0, 0),
        };
        (a + da, p + dp)
    })
}

/// Per-sample shape between layers while building.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    /// `[C, H, W]`.
    Chw(usize, usize, usize),
    /// `[F]` (after a flatten, global pool or linear layer).
    Flat(usize),
}

/// Whether `act` is a PolyKervNets activation, placed as a `Kerv2d`'s power (before the BN).
pub fn is_kerv_act(act: ActKind) -> bool {
    matches!(act, ActKind::Pkn | ActKind::Rpkn | ActKind::ReactPkn)
}

/// The architecture of `spec` (its network with `spec.stem` and `spec.classes`), as `polypi zoo`
/// describes it.
///
/// # Errors
/// A network without a description (NET-M, NET-C and NET-R18 use [`crate::nets::build`]'s own
/// builder), a stem on a network without the choice, zero classes.
pub fn describe(spec: &NetSpec) -> Result<Arch> {
    let Some(net) = spec.net.ref_net() else {
        bail!("{} has no architecture description", spec.net.display_name());
    };
    zoo::describe(net, spec.stem, Some(spec.classes))
        .with_context(|| format!("describing {}", spec.net.display_name()))
}

/// Builds the layers of `arch` for `spec` (activation, width, pooling) and per-sample inputs
/// `[spec.in_channels, size, size]` on `device`, freshly initialised (burn's defaults).
///
/// # Errors
/// A width that is not finite and positive, or an input too small for the network (a window
/// larger than its input, a branch shape different from its shortcut's), with the unit's name.
pub fn build_layers(
    arch: &Arch,
    spec: &NetSpec,
    size: usize,
    device: &Device,
) -> Result<Vec<Layer>> {
    if !(spec.width.is_finite() && spec.width > 0.0) {
        bail!("width {} must be finite and > 0", spec.width);
    }
    let b = Builder { spec, device };
    let (layers, _) = b.units(&arch.units, Shape::Chw(spec.in_channels, size, size))?;
    Ok(layers)
}

struct Builder<'a> {
    spec: &'a NetSpec,
    device: &'a Device,
}

fn side(name: &str, len: usize, k: usize, s: usize, p: usize) -> Result<usize> {
    if len + 2 * p < k || s == 0 {
        bail!("{name}: window {k} (padding {p}) does not fit an input of side {len}: use a larger input");
    }
    Ok((len + 2 * p - k) / s + 1)
}

impl Builder<'_> {
    fn ch(&self, c: usize) -> usize {
        ((c as f32 * self.spec.width).round() as usize).max(1)
    }

    fn units(&self, units: &[Unit], mut x: Shape) -> Result<(Vec<Layer>, Shape)> {
        let mut out = Vec::with_capacity(units.len());
        for u in units {
            let (l, y) = self.unit(u, x)?;
            out.push(l);
            x = y;
        }
        Ok((out, x))
    }

    fn chw(name: &str, x: Shape) -> Result<(usize, usize, usize)> {
        match x {
            Shape::Chw(c, h, w) => Ok((c, h, w)),
            Shape::Flat(f) => bail!("{name}: needs a [C, H, W] input, got a flat one of {f}"),
        }
    }

    fn unit(&self, u: &Unit, x: Shape) -> Result<(Layer, Shape)> {
        let spec = self.spec;
        match u {
            Unit::Conv(c) => self.conv(c, x, false),
            Unit::Kerv(c) => self.conv(c, x, is_kerv_act(spec.act)),
            Unit::Pool { name, kernel, stride, padding } => {
                let kind = match spec.pool {
                    PoolKind::Max => L_MAXPOOL,
                    PoolKind::Avg => L_AVGPOOL,
                };
                let (mut l, y) = self.pool(kind, name, (*kernel, *stride, *padding), x)?;
                l.pool_site = true;
                Ok((l, y))
            }
            Unit::AvgPool { name, kernel, stride, padding } => {
                self.pool(L_AVGPOOL, name, (*kernel, *stride, *padding), x)
            }
            Unit::GlobalAvgPool { name } => {
                let (c, _, _) = Self::chw(name, x)?;
                Ok((Layer::of(L_GAP), Shape::Flat(c)))
            }
            Unit::Flatten { name } => {
                let (c, h, w) = Self::chw(name, x)?;
                Ok((Layer::of(L_FLATTEN), Shape::Flat(c * h * w)))
            }
            Unit::Linear { name, out, act, .. } => {
                let Shape::Flat(f_in) = x else {
                    bail!("{name}: a linear layer needs a flattened input, got {x:?}");
                };
                let f_out = out.unwrap_or(spec.classes);
                let mut l = Layer::of(L_LINEAR);
                l.linear = Some(LinearConfig::new(f_in, f_out).init(self.device));
                l.act = act.as_ref().map(|_| spec.activation(f_out, self.device));
                Ok((l, Shape::Flat(f_out)))
            }
            Unit::Residual { add, body, shortcut, act } => {
                let (body, y) = self.units(body, x)?;
                let (shortcut, s) = self.units(shortcut, x)?;
                if y != s {
                    bail!("{add}: branch shape {y:?} differs from the shortcut's {s:?}");
                }
                let mut l = Layer::of(L_RESIDUAL);
                l.body = body;
                l.shortcut = shortcut;
                if act.is_some() {
                    let (c, _, _) = Self::chw(add, y)?;
                    l.act = Some(spec.activation(c, self.device));
                }
                Ok((l, y))
            }
        }
    }

    fn pool(
        &self,
        kind: u8,
        name: &str,
        (k, s, p): (usize, usize, usize),
        x: Shape,
    ) -> Result<(Layer, Shape)> {
        let (c, h, w) = Self::chw(name, x)?;
        let (oh, ow) = (side(name, h, k, s, p)?, side(name, w, k, s, p)?);
        let mut l = Layer::of(kind);
        (l.kernel, l.stride, l.padding) = (k, s, p);
        Ok((l, Shape::Chw(c, oh, ow)))
    }

    fn conv(&self, c: &ConvUnit, x: Shape, kerv_first: bool) -> Result<(Layer, Shape)> {
        let (c_in, h, w) = Self::chw(&c.name, x)?;
        let (c_out, groups) = if c.depthwise { (c_in, c_in) } else { (self.ch(c.out), 1) };
        let oh = side(&c.name, h, c.kernel, c.stride, c.padding)?;
        let ow = side(&c.name, w, c.kernel, c.stride, c.padding)?;
        let p = c.padding;
        let mut l = Layer::of(if kerv_first { L_KERV } else { L_CONV });
        l.conv = Some(
            Conv2dConfig::new([c_in, c_out], [c.kernel, c.kernel])
                .with_stride([c.stride, c.stride])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .with_groups(groups)
                .with_bias(c.bias)
                .init(self.device),
        );
        l.padding = p;
        l.bn = c.bn.as_ref().map(|_| BatchNormConfig::new(c_out).init(self.device));
        l.act = c.act.as_ref().map(|_| self.spec.activation(c_out, self.device));
        if kerv_first && c.bn.is_some() {
            l.dropout = Some(DropoutConfig::new(0.2).init());
        }
        Ok((l, Shape::Chw(c_out, oh, ow)))
    }
}
