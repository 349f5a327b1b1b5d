//! Activation layers: ReLU, X2Act (PASNet / PolyMPCNet), PILLAR's fixed polynomial and the
//! PolyKervNets kervolution power, plus the forward context that collects PILLAR's range penalty.
//!
//! All activations here work on NCHW tensors `[N, C, H, W]`; fully connected activations are
//! passed as `[N, F, 1, 1]`.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// PILLAR's degree-4 polynomial approximation of ReLU on [-5, 5] (Diaa et al., PILLAR-ESPN,
/// `CrypTen-ESPN/configs/espn*.yaml`, crypto precision p = 10): ascending coefficients
/// `[322, 512, 160, 0, -3] / 1024`.
pub const PILLAR_DEG4: [f32; 5] =
    [322.0 / 1024.0, 512.0 / 1024.0, 160.0 / 1024.0, 0.0, -3.0 / 1024.0];

/// Coefficients of [`ActKind::Square`], lowest degree first: `x^2`.
pub const SQUARE: [f32; 3] = [0.0, 0.0, 1.0];

/// The activation used at every ACT site of a network (reference.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ActKind {
    /// `max(x, 0)`; the baseline.
    Relu,
    /// Trainable per-channel `s*w0*x^2 + w1*x + b` (PASNet, Peng et al. DAC 2023,
    /// `models/gate_tmp.py`; the STPAI of PolyMPCNet, arXiv 2209.09424), init w0 = 0.005, w1 = 1, b = 0.
    #[default]
    X2act,
    /// PILLAR's fixed degree-4 polynomial [`PILLAR_DEG4`] (Diaa et al., `pillar/PolyRelu.py`), with
    /// train-time clipping to [-5, 5] and the range penalty. `--act pillar` is the same.
    #[value(alias = "pillar")]
    Poly,
    /// PolyKervNets kervolution `(conv(x) + c_p)^2` (Aremu & Nandakumar, SaTML 2023), c_p trainable
    /// (init 1.0), a_p = 1 fixed.
    Pkn,
    /// Regularised PolyKervNets `a_p*(conv(x) + c_p)^2` (R-PKN, arXiv 2312.15229, `Scripts/pkn.py`),
    /// both trainable, init c_p = 0.47, a_p = 0.009.
    Rpkn,
    /// ReactPKN (PolyKervNets, `Models/ModelPKN.py`, the variant the seed's HEAD trains):
    /// `a*x^2 + b*x + c` with one trainable scalar set per site, init a = 0.009, b = 0.5, c = 0.47.
    /// Runs as an X2Act node with `[1]` tensors.
    ReactPkn,
    /// `x^2` at every site (the "square" variant of reference.md, `polypi zoo --act square`): no
    /// trainable coefficients, no clipping or range penalty by default.
    /// Exported as a `Poly` node with coefficients `[0, 0, 1]`.
    Square,
}

impl ActKind {
    /// Lower-case name used in file names and the CLI ("x2act").
    pub fn name(self) -> &'static str {
        match self {
            ActKind::Relu => "relu",
            ActKind::X2act => "x2act",
            ActKind::Poly => "poly",
            ActKind::Pkn => "pkn",
            ActKind::Rpkn => "rpkn",
            ActKind::ReactPkn => "react-pkn",
            ActKind::Square => "square",
        }
    }
}

/// PILLAR range penalty settings (sources.md §3): per site `coef * sum(|x / range|^gamma)` over
/// every element of the batch at that site (PILLAR-ESPN `pillar/PolyRelu.py::get_penalty`: L1 norm
/// of the flattened powers, not their mean), averaged over sites. A mean would make the penalty
/// ~N*C*H*W times weaker and let rare outliers through, which then blow up the polynomial at
/// inference (the NaN test loss of the first CIFAR runs).
#[derive(Debug, Clone, Copy)]
pub struct Penalty {
    /// Coefficient of the penalty term.
    pub coef: f64,
    /// Exponent γ.
    pub gamma: f64,
    /// Range r the activations are pushed into.
    pub range: f64,
}

/// Per-forward state: whether this is a training pass, PILLAR clipping, the accumulated range
/// penalty and the out-of-range counters.
pub struct Ctx {
    /// Training pass (enables PILLAR clipping).
    pub train: bool,
    /// Clip inputs of `Poly` sites to `[-c, c]` in training (PILLAR uses 5).
    pub clip: Option<f32>,
    /// Range penalty to accumulate over polynomial sites, if any.
    pub penalty: Option<Penalty>,
    /// Sum of per-site penalties (divided by `sites` at the end).
    pub pen_sum: Option<Tensor<1>>,
    /// Number of sites that contributed to `pen_sum`.
    pub sites: usize,
    /// Count out-of-range activation inputs with this safe range (|x| > r), if set.
    pub oor_range: Option<f32>,
    /// Number of activation inputs with |x| > `oor_range` seen so far.
    pub oor_count: f64,
    /// Number of activation inputs seen so far.
    pub oor_total: f64,
    /// Largest |x| seen at an activation input.
    pub max_abs: f32,
    /// Architecture-search gates (supernet forward only; see [`crate::search`]).
    pub gates: Option<crate::search::Gates>,
}

impl Ctx {
    /// An evaluation context (no clipping, no penalty) that counts activation inputs outside
    /// `[-safe_range, safe_range]` when `safe_range` is given.
    pub fn eval(safe_range: Option<f32>) -> Self {
        Ctx {
            train: false,
            clip: None,
            penalty: None,
            pen_sum: None,
            sites: 0,
            oor_range: safe_range,
            oor_count: 0.0,
            oor_total: 0.0,
            max_abs: 0.0,
            gates: None,
        }
    }

    /// A training context.
    pub fn train(clip: Option<f32>, penalty: Option<Penalty>) -> Self {
        Ctx { train: true, clip, penalty, ..Ctx::eval(None) }
    }

    /// The mean penalty over sites (None if no site contributed).
    pub fn penalty_mean(&self) -> Option<Tensor<1>> {
        self.pen_sum.clone().map(|p| p.div_scalar(self.sites.max(1) as f64))
    }

    fn observe(&mut self, x: &Tensor<4>, polynomial: bool) {
        if polynomial {
            if let Some(p) = self.penalty {
                let pen = x
                    .clone()
                    .div_scalar(p.range)
                    .abs()
                    .powf_scalar(p.gamma)
                    .sum()
                    .mul_scalar(p.coef);
                self.pen_sum = Some(match self.pen_sum.take() {
                    Some(s) => s.add(pen),
                    None => pen,
                });
                self.sites += 1;
            }
        }
        if let Some(r) = self.oor_range {
            let n = x.shape().num_elements() as f64;
            let a = x.clone().abs();
            let cnt: f32 = a.clone().greater_elem(r).float().sum().into_scalar();
            let mx: f32 = a.max().into_scalar();
            self.oor_count += cnt as f64;
            self.oor_total += n;
            self.max_abs = self.max_abs.max(mx);
        }
    }
}

fn per_channel(p: &Param<Tensor<1>>) -> Tensor<4> {
    let c = p.shape().dims::<1>()[0];
    p.val().reshape([1, c, 1, 1])
}

/// X2Act: `s*w0*x^2 + w1*x + b`, per channel (PASNet `x2act`, init w0 = 0.005, w1 = 1, b = 0).
#[derive(Module, Debug)]
pub struct X2Act {
    /// Quadratic coefficient `[C]` (multiplied by the fixed scale `s`).
    pub w0: Param<Tensor<1>>,
    /// Linear coefficient `[C]`.
    pub w1: Param<Tensor<1>>,
    /// Bias `[C]`.
    pub b: Param<Tensor<1>>,
    /// Fixed weight scale `s` (1; PASNet uses 0.1 for ResNet-50).
    pub s: f32,
}

impl X2Act {
    /// New layer for `channels` channels with PASNet's init and scale `s`.
    pub fn new(channels: usize, s: f32, device: &Device) -> Self {
        Self::with_init(channels, s, (0.005, 1.0, 0.0), device)
    }

    /// New layer for `channels` channels (1: one scalar set per site) with init `(w0, w1, b)`.
    pub fn with_init(channels: usize, s: f32, init: (f32, f32, f32), device: &Device) -> Self {
        X2Act {
            w0: Param::from_tensor(Tensor::full([channels], init.0, device)),
            w1: Param::from_tensor(Tensor::full([channels], init.1, device)),
            b: Param::from_tensor(Tensor::full([channels], init.2, device)),
            s,
        }
    }

    /// Applies the activation to `[N, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let w0 = per_channel(&self.w0).mul_scalar(self.s);
        x.clone().square().mul(w0).add(x.mul(per_channel(&self.w1))).add(per_channel(&self.b))
    }
}

/// PolyKerv power: `a_p*(x + c_p)^2` applied to a conv (or linear) output (PolyKervNets; R-PKN).
#[derive(Module, Debug)]
pub struct PolyKerv {
    /// Offset c_p, shape `[1]`, trainable.
    pub c_p: Param<Tensor<1>>,
    /// Output scale a_p, shape `[1]` (trainable in R-PKN, fixed 1 in PKN).
    pub a_p: Param<Tensor<1>>,
    /// Degree d_p (2).
    pub d_p: u32,
}

impl PolyKerv {
    /// New layer with offset `c_p`, scale `a_p`; `train_a` makes a_p trainable.
    pub fn new(c_p: f32, a_p: f32, train_a: bool, device: &Device) -> Self {
        let a = Param::from_tensor(Tensor::full([1], a_p, device));
        PolyKerv {
            c_p: Param::from_tensor(Tensor::full([1], c_p, device)),
            a_p: if train_a { a } else { a.set_require_grad(false) },
            d_p: 2,
        }
    }

    /// Applies `a_p*(x + c_p)^d_p` to `[N, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let c = self.c_p.val().reshape([1, 1, 1, 1]);
        let a = self.a_p.val().reshape([1, 1, 1, 1]);
        let y = x.add(c);
        let p = (1..self.d_p).fold(y.clone(), |acc, _| acc.mul(y.clone()));
        p.mul(a)
    }
}

/// One activation site; exactly one of the options matches `kind`.
#[derive(Module, Debug)]
pub struct Activation {
    /// Which activation (stored as [`ActKind`] index: 0 relu, 1 x2act, 2 poly, 3 pkn, 4 rpkn,
    /// 5 react-pkn, 6 square).
    pub kind: u8,
    /// X2Act parameters (kind x2act).
    pub x2: Option<X2Act>,
    /// PolyKerv parameters (kinds pkn, rpkn).
    pub kerv: Option<PolyKerv>,
    /// PILLAR polynomial coefficients, lowest degree first, shape `[D + 1]`, not trainable
    /// (kind poly; None in records of older versions: [`PILLAR_DEG4`]; kind square: [`SQUARE`]).
    pub poly: Option<Param<Tensor<1>>>,
}

impl Activation {
    /// A site of `kind` for `channels` channels. `x2_scale` is X2Act's `s`; `kerv_init` = `(c_p,
    /// a_p)` overrides the PolyKerv init (default PKN 1 / 1, R-PKN 0.47 / 0.009); `poly` are the
    /// coefficients of kind poly (lowest degree first, at least 2), ignored by other kinds.
    pub fn new(
        kind: ActKind,
        channels: usize,
        x2_scale: f32,
        kerv_init: Option<(f32, f32)>,
        poly: &[f32],
        device: &Device,
    ) -> Self {
        let poly = match kind {
            ActKind::Poly => Some(poly),
            ActKind::Square => Some(&SQUARE[..]),
            _ => None,
        }
        .map(|c| Param::from_tensor(Tensor::from_floats(c, device)).set_require_grad(false));
        let (x2, kerv) = match kind {
            ActKind::X2act => (Some(X2Act::new(channels, x2_scale, device)), None),
            ActKind::ReactPkn => (Some(X2Act::with_init(1, 1.0, (0.009, 0.5, 0.47), device)), None),
            ActKind::Pkn => {
                let (c, a) = kerv_init.unwrap_or((1.0, 1.0));
                (None, Some(PolyKerv::new(c, a, false, device)))
            }
            ActKind::Rpkn => {
                let (c, a) = kerv_init.unwrap_or((0.47, 0.009));
                (None, Some(PolyKerv::new(c, a, true, device)))
            }
            _ => (None, None),
        };
        Activation { kind: kind_to_u8(kind), x2, kerv, poly }
    }

    /// Coefficients of a poly site, lowest degree first ([`PILLAR_DEG4`] when the record has none).
    pub fn poly_coefficients(&self) -> Vec<f32> {
        match &self.poly {
            Some(p) => {
                p.val().into_data().try_to_vec::<f32>().unwrap_or_else(|_| PILLAR_DEG4.to_vec())
            }
            None => PILLAR_DEG4.to_vec(),
        }
    }

    /// The site's kind.
    pub fn act_kind(&self) -> ActKind {
        u8_to_kind(self.kind)
    }

    /// Applies the activation to `[N, C, H, W]`, recording penalty / range statistics in `ctx`.
    ///
    /// In a supernet forward (`ctx.gates` set) an X2act site is the softmax mix
    /// `p_relu * relu(x) + p_x2 * x2act(x)` of its gate (PASNet `GateAct`).
    pub fn forward(&self, x: Tensor<4>, ctx: &mut Ctx) -> Tensor<4> {
        let kind = self.act_kind();
        if let (Some(g), ActKind::X2act, Some(a)) = (ctx.gates.as_mut(), kind, &self.x2) {
            return g.mix_act(x, burn::tensor::activation::relu, |x| a.forward(x));
        }
        ctx.observe(&x, kind != ActKind::Relu);
        match kind {
            ActKind::Relu => burn::tensor::activation::relu(x),
            ActKind::X2act | ActKind::ReactPkn => match &self.x2 {
                Some(a) => a.forward(x),
                None => x,
            },
            ActKind::Square => x.clone().mul(x),
            ActKind::Poly => {
                let x = match (ctx.train, ctx.clip) {
                    (true, Some(c)) => x.clamp(-c, c),
                    _ => x,
                };
                poly_horner(x, &self.poly_coefficients())
            }
            ActKind::Pkn | ActKind::Rpkn => match &self.kerv {
                Some(k) => k.forward(x),
                None => x,
            },
        }
    }
}

/// Evaluates `sum_k coeffs[k] x^k` by Horner's rule.
pub fn poly_horner(x: Tensor<4>, coeffs: &[f32]) -> Tensor<4> {
    let d = coeffs.len() - 1;
    let mut acc = x.clone().mul_scalar(coeffs[d]).add_scalar(coeffs[d - 1]);
    for k in (0..d - 1).rev() {
        acc = acc.mul(x.clone()).add_scalar(coeffs[k]);
    }
    acc
}

fn kind_to_u8(k: ActKind) -> u8 {
    match k {
        ActKind::Relu => 0,
        ActKind::X2act => 1,
        ActKind::Poly => 2,
        ActKind::Pkn => 3,
        ActKind::Rpkn => 4,
        ActKind::ReactPkn => 5,
        ActKind::Square => 6,
    }
}

fn u8_to_kind(k: u8) -> ActKind {
    match k {
        0 => ActKind::Relu,
        1 => ActKind::X2act,
        2 => ActKind::Poly,
        3 => ActKind::Pkn,
        5 => ActKind::ReactPkn,
        6 => ActKind::Square,
        _ => ActKind::Rpkn,
    }
}
