//! Latency-aware differentiable architecture search (PolyMPCNet, Peng et al., arXiv 2209.09424;
//! PASNet, Peng et al., DAC 2023, code `models/gate_tmp.py` + `config.py`; docs/sources.md §1-2).
//!
//! **Supernet.** The reference network is built with X2act at every activation site (STPAI init
//! w0 = 0.005, w1 = 1, b = 0). Every activation site becomes PASNet's `GateAct`:
//! `softmax(alpha)[0] * relu(x) + softmax(alpha)[1] * x2act(x)`; every pooling site (2x2/2)
//! becomes `GatePool`: `softmax(alpha)[0] * maxpool(x) + softmax(alpha)[1] * avgpool(x)`. Alphas
//! start at (0, 0) (DARTS-style softmax relaxation, no Gumbel noise, as PASNet).
//!
//! **Loss.** `CE + lambda * sum_sites sum_i softmax(alpha)_i * lat_i(n)`, with `n` the number of
//! elements per sample at the site's input and `lat_i` the per-site latency of operator `i` from
//! a polypi-core cost profile ([`polypi_core::cost::site_latency`]): `pasnet` (PASNet's table, in
//! its own unstated unit), `cpu` (calibrated engine model, ms) or `fpga` (analytic model, ms).
//!
//! **Bilevel updates** (PASNet `SearchConfig`): the training split is cut in two halves; per
//! step, the weights take an SGD step (momentum 0.9, lr 0.025 cosine to 0.001, weight decay 3e-4,
//! grad-norm clip 5) on a batch of the first half with the CE loss, then the alphas take an Adam
//! step (lr 3e-4, weight decay 1e-3) on a batch of the second half with the full loss.
//!
//! **Derivation.** After the search, argmax per site gives an [`Arch`]; the derived network is
//! retrained by [`crate::train()`] and exported as a polypi model file, either from scratch (X2act
//! sites with the STPAI init) or, as PASNet does, fine-tuned from the supernet's weights
//! ([`SearchConfig::finetune`]: the supernet checkpoint is loaded, then the ReLU / MaxPool sites
//! are swapped in).
//!
//! **Search spaces.** NET-M and NET-C (activation and 2x2 pooling gates), NET-R18, and PASNet's
//! own: ResNet-18/34/50 (activation gates, plus the ImageNet stem's 3x3/s2/p1 pooling gate; the
//! CIFAR stem has no pooling site) and MobileNetV2 (activation gates only), built from their
//! architecture descriptions ([`crate::archnet`]); any other described network works the same
//! way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::module::{Module, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, SgdConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};
use polypi_core::cost::profile::Profile;
use polypi_core::cost::{site_latency, SiteKind};
use polypi_core::model::arch::Stem;
use polypi_core::model::zoo;
use polypi_core::net::LinkModel;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::archnet;
use crate::data::DatasetKind;
use crate::layers::{ActKind, Activation, Ctx};
use crate::nets::{self, Net, NetKind, PoolKind, POOL_AVG, POOL_MAX, POOL_NONE};
use crate::train::{self, DeviceKind, TrainConfig};

/// Per-site operator choices of a network, in forward order (activation sites: every conv /
/// hidden fc activation, in NET-R18 `act1`, `act2` of each block, in the networks built from
/// their description every activation of a conv / linear unit or after a residual add; pooling
/// sites: the 2x2/2 pools of NET-M / NET-C, the ImageNet stem's 3x3/s2/p1 pool of ResNet-18/34/50,
/// PASNet's stem pooling gate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arch {
    /// Activation per activation site: `relu` or `x2act`.
    pub acts: Vec<ActKind>,
    /// Pooling per pooling site: `max` or `avg`.
    pub pools: Vec<PoolKind>,
}

impl Arch {
    /// Every site the same: `act` at every one of `sites.0` activation sites, `pool` at every one
    /// of `sites.1` pooling sites (the counts of [`site_counts`]).
    pub fn uniform(sites: (usize, usize), act: ActKind, pool: PoolKind) -> Self {
        Arch { acts: vec![act; sites.0], pools: vec![pool; sites.1] }
    }

    /// Short text such as `relu,x2act,x2act|max,avg`.
    pub fn summary(&self) -> String {
        let a: Vec<&str> = self.acts.iter().map(|k| k.name()).collect();
        let p: Vec<&str> = self
            .pools
            .iter()
            .map(|k| match k {
                PoolKind::Max => "max",
                PoolKind::Avg => "avg",
            })
            .collect();
        format!("{}|{}", a.join(","), p.join(","))
    }
}

/// Number of (activation, pooling) sites of `net` with stem `stem` (ResNet-18/34/50 only; None:
/// the description's default, ImageNet): NET-M (3, 2), NET-C (7, 2), NET-R18 (17, 0); a network
/// built from its description counts its units ([`archnet::count_sites`]), e.g. ResNet-18 (17, 1)
/// with the ImageNet stem, (17, 0) with the CIFAR stem; MobileNetV2 (35, 0).
///
/// # Errors
/// A stem on a network without the choice.
pub fn site_counts(net: NetKind, stem: Option<Stem>) -> Result<(usize, usize)> {
    Ok(match net {
        NetKind::NetM => (3, 2),
        NetKind::NetC => (7, 2),
        NetKind::NetR18 => (17, 0),
        k => {
            let Some(r) = k.ref_net() else { bail!("{} has no description", k.display_name()) };
            let a = zoo::describe(r, stem, None)
                .with_context(|| format!("describing {}", k.display_name()))?;
            archnet::count_sites(&a.units)
        }
    })
}

/// A pooling site of a built network: NET-M / NET-C's pooling code (`POOL_MAX` / `POOL_AVG`) or
/// a description layer (`L_MAXPOOL` / `L_AVGPOOL`).
enum PoolSite<'a> {
    Unit(&'a mut u8),
    Layer(&'a mut archnet::Layer),
}

/// The activation and pooling sites of `net`, in forward order (the order of [`Arch`] and of a
/// supernet's gates).
fn sites_mut(net: &mut Net) -> (Vec<&mut Activation>, Vec<PoolSite<'_>>) {
    let mut acts: Vec<&mut Activation> = Vec::new();
    let mut pools: Vec<PoolSite<'_>> = Vec::new();
    for u in net.pre.iter_mut() {
        if let Some(a) = u.act.as_mut() {
            acts.push(a);
        }
        if u.pool != POOL_NONE {
            pools.push(PoolSite::Unit(&mut u.pool));
        }
    }
    for b in net.blocks.iter_mut() {
        acts.push(&mut b.act1);
        if let Some(a) = b.act2.as_mut() {
            acts.push(a);
        }
    }
    for u in net.post.iter_mut() {
        if let Some(a) = u.act.as_mut() {
            acts.push(a);
        }
        if u.pool != POOL_NONE {
            pools.push(PoolSite::Unit(&mut u.pool));
        }
    }
    let mut layer_pools = Vec::new();
    archnet::sites_mut(&mut net.arch, &mut acts, &mut layer_pools);
    pools.extend(layer_pools.into_iter().map(PoolSite::Layer));
    (acts, pools)
}

/// Swaps the sites of `net` (built with X2act everywhere) to the choices of `arch`: a `relu`
/// site gets a ReLU, an `x2act` site keeps its (fresh, STPAI-initialised) X2act; pooling sites get
/// max or avg.
///
/// # Errors
/// `arch` has a different number of sites than `net`, or chooses an activation other than relu
/// / x2act.
pub fn apply_arch(net: &mut Net, arch: &Arch, x2_scale: f32, device: &Device) -> Result<()> {
    let (mut ai, mut pi) = (0usize, 0usize);
    let (acts, pools) = sites_mut(net);
    if acts.len() != arch.acts.len() || pools.len() != arch.pools.len() {
        bail!(
            "architecture has {} activation / {} pooling sites, the network {} / {}",
            arch.acts.len(),
            arch.pools.len(),
            acts.len(),
            pools.len()
        );
    }
    for a in acts {
        match arch.acts[ai] {
            ActKind::Relu => *a = Activation::new(ActKind::Relu, 1, x2_scale, None, &[], device),
            ActKind::X2act => {}
            k => bail!("activation site {ai}: the search space is relu / x2act, not {}", k.name()),
        }
        ai += 1;
    }
    for p in pools {
        let max = arch.pools[pi] == PoolKind::Max;
        match p {
            PoolSite::Unit(code) => *code = if max { POOL_MAX } else { POOL_AVG },
            PoolSite::Layer(l) => {
                l.kind = if max { archnet::L_MAXPOOL } else { archnet::L_AVGPOOL }
            }
        }
        pi += 1;
    }
    Ok(())
}

/// Per-site operator latencies from a polypi-core profile and link, memoised by (operator, n).
pub struct SiteCosts {
    profile: Profile,
    link: LinkModel,
    memo: Mutex<HashMap<(u8, usize), f64>>,
}

impl SiteCosts {
    /// Costs on `profile` over `link` (the link matters for cpu / fpga only).
    pub fn new(profile: Profile, link: LinkModel) -> Self {
        SiteCosts { profile, link, memo: Mutex::new(HashMap::new()) }
    }

    /// Latency of operator `kind` at a site with `n` input elements per sample (batch 1), in ms
    /// (PASNet profile: its own unit). X2act is a degree-2 polynomial.
    pub fn latency(&self, kind: SiteKind, n: usize) -> f64 {
        let key = match kind {
            SiteKind::Relu => 0u8,
            SiteKind::Poly { .. } => 1,
            SiteKind::MaxPool => 2,
            SiteKind::AvgPool => 3,
        };
        if let Ok(m) = self.memo.lock() {
            if let Some(v) = m.get(&(key, n)) {
                return *v;
            }
        }
        let v = site_latency(kind, n, &self.profile, &self.link);
        if let Ok(mut m) = self.memo.lock() {
            m.insert((key, n), v);
        }
        v
    }

    /// The profile's time unit ("ms" or "PASNet units").
    pub fn unit(&self) -> &'static str {
        self.profile.time_unit()
    }
}

/// One site seen by a supernet forward.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SiteInfo {
    /// `act<i>` or `pool<i>` (1-based, forward order within its kind).
    pub name: String,
    /// Elements per sample at the site's input (`C*H*W`).
    pub n_elements: usize,
    /// Latency of the two candidates: `[relu, x2act]` or `[max, avg]` (profile unit).
    pub latency: [f64; 2],
}

/// Gate state of one supernet forward: the softmax weights of every site, the running expected
/// latency and the sites seen. Put into [`Ctx::gates`]; consumed by `Activation::forward` and
/// `Unit::forward`.
pub struct Gates {
    act_probs: Vec<Tensor<1>>,
    pool_probs: Vec<Tensor<1>>,
    costs: Arc<SiteCosts>,
    next_act: usize,
    next_pool: usize,
    /// `sum_sites softmax(alpha) . latency` so far (shape `[1]`), None before the first site.
    pub expected: Option<Tensor<1>>,
    /// Sites seen, in forward order.
    pub sites: Vec<SiteInfo>,
    /// A site beyond the number of alphas was met (a bug or an architecture mismatch).
    pub overflow: bool,
}

impl Gates {
    /// Gates with the softmax of `alphas` (gradients flow into the alphas).
    pub fn new(alphas: &Alphas, costs: Arc<SiteCosts>) -> Self {
        Gates {
            act_probs: alphas.act.iter().map(|a| softmax(a.val(), 0)).collect(),
            pool_probs: alphas.pool.iter().map(|a| softmax(a.val(), 0)).collect(),
            costs,
            next_act: 0,
            next_pool: 0,
            expected: None,
            sites: Vec::new(),
            overflow: false,
        }
    }

    fn mix(
        &mut self,
        probs: Option<Tensor<1>>,
        name: String,
        lat: [f64; 2],
        n: usize,
        a: Tensor<4>,
        b: Tensor<4>,
    ) -> Tensor<4> {
        let Some(p) = probs else {
            self.overflow = true;
            return b;
        };
        let dev = p.device();
        let l =
            Tensor::<1>::from_data(TensorData::new(vec![lat[0] as f32, lat[1] as f32], [2]), &dev);
        let e = p.clone().mul(l).sum();
        self.expected = Some(match self.expected.take() {
            Some(s) => s.add(e),
            None => e,
        });
        self.sites.push(SiteInfo { name, n_elements: n, latency: lat });
        let p0 = p.clone().narrow(0, 0, 1).reshape([1, 1, 1, 1]);
        let p1 = p.narrow(0, 1, 1).reshape([1, 1, 1, 1]);
        a.mul(p0).add(b.mul(p1))
    }

    /// `p_relu * relu(x) + p_x2 * x2act(x)` for the next activation site (input `[N, C, H, W]`).
    pub fn mix_act(
        &mut self,
        x: Tensor<4>,
        relu: impl Fn(Tensor<4>) -> Tensor<4>,
        x2: impl Fn(Tensor<4>) -> Tensor<4>,
    ) -> Tensor<4> {
        let [_, c, h, w] = x.dims();
        let n = c * h * w;
        let lat = [
            self.costs.latency(SiteKind::Relu, n),
            self.costs.latency(SiteKind::Poly { degree: 2 }, n),
        ];
        let p = self.act_probs.get(self.next_act).cloned();
        self.next_act += 1;
        let name = format!("act{}", self.next_act);
        let (a, b) = (relu(x.clone()), x2(x));
        self.mix(p, name, lat, n, a, b)
    }

    /// `p_max * maxpool(x) + p_avg * avgpool(x)` for the next pooling site (input `[N, C, H, W]`).
    pub fn mix_pool(
        &mut self,
        x: Tensor<4>,
        max: impl Fn(Tensor<4>) -> Tensor<4>,
        avg: impl Fn(Tensor<4>) -> Tensor<4>,
    ) -> Tensor<4> {
        let [_, c, h, w] = x.dims();
        let n = c * h * w;
        let lat =
            [self.costs.latency(SiteKind::MaxPool, n), self.costs.latency(SiteKind::AvgPool, n)];
        let p = self.pool_probs.get(self.next_pool).cloned();
        self.next_pool += 1;
        let name = format!("pool{}", self.next_pool);
        let (a, b) = (max(x.clone()), avg(x));
        self.mix(p, name, lat, n, a, b)
    }
}

/// The architecture parameters: one `[2]` logit vector per site, `[relu, x2act]` or `[max, avg]`.
#[derive(Module, Debug)]
pub struct Alphas {
    /// Activation-site logits.
    pub act: Vec<Param<Tensor<1>>>,
    /// Pooling-site logits.
    pub pool: Vec<Param<Tensor<1>>>,
}

impl Alphas {
    /// Zero logits (uniform mix, PASNet's init) for `sites.0` activation and `sites.1` pooling
    /// sites ([`site_counts`]).
    pub fn zeros(sites: (usize, usize), device: &Device) -> Self {
        let (a, p) = sites;
        let z = || Param::from_tensor(Tensor::<1>::zeros([2], device));
        Alphas { act: (0..a).map(|_| z()).collect(), pool: (0..p).map(|_| z()).collect() }
    }

    /// Softmax of every site's logits, activation sites first.
    pub fn probs(&self) -> (Vec<[f64; 2]>, Vec<[f64; 2]>) {
        let f = |v: &Vec<Param<Tensor<1>>>| {
            v.iter()
                .map(|a| {
                    let p = softmax(a.val(), 0).into_data().convert::<f32>();
                    let p = p.try_to_vec::<f32>().unwrap_or_else(|_| vec![0.5, 0.5]);
                    [p[0] as f64, p[1] as f64]
                })
                .collect()
        };
        (f(&self.act), f(&self.pool))
    }
}

/// Settings of one search + retrain. Defaults: PASNet `SearchConfig` for the search (batch 128
/// instead of 64 for CPU throughput), the polypi-train recipe for the retraining.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SearchConfig {
    /// Network.
    pub net: NetKind,
    /// Width multiplier.
    pub width: f32,
    /// X2Act weight scale `s`.
    pub x2_scale: f32,
    /// Stem of ResNet-18/34/50 (None: ImageNet, whose 3x3/s2/p1 pool is a pooling site).
    pub stem: Option<Stem>,
    /// One X2act scalar set per site (PASNet) instead of one per channel.
    pub x2act_per_site: bool,
    /// Retrain the derived network from the supernet's weights (PASNet's fine-tuning) instead of
    /// from scratch.
    pub finetune: bool,
    /// Dataset.
    pub data: DatasetKind,
    /// Dataset folder.
    pub data_dir: PathBuf,
    /// Use only the first N training images (search and retraining).
    pub train_limit: Option<usize>,
    /// Use only the first N test images.
    pub test_limit: Option<usize>,
    /// Profile name for [`Profile::parse`]: `pasnet`, `cpu`, `cpu:FILE`, `fpga`, `fpga:FILE`.
    pub profile: String,
    /// Link for cpu / fpga profiles (`none`, `lan`, `wan`, `<x>mbit:<y>ms`).
    pub link: String,
    /// Latency weight lambda (per profile time unit).
    pub lambda: f64,
    /// Search epochs (one epoch = one pass over the weight half).
    pub search_epochs: usize,
    /// Mini-batch size of the search.
    pub batch_size: usize,
    /// Weight learning rate (cosine to `w_lr_min`).
    pub w_lr: f64,
    /// Final weight learning rate.
    pub w_lr_min: f64,
    /// Weight decay of the weights.
    pub w_weight_decay: f64,
    /// Per-parameter gradient-norm clip of the weights.
    pub w_grad_clip: f32,
    /// Alpha learning rate (Adam).
    pub alpha_lr: f64,
    /// Alpha weight decay.
    pub alpha_weight_decay: f64,
    /// Retraining epochs of the derived network (0: no retraining, no model file).
    pub epochs: usize,
    /// Retraining peak learning rate (SGD momentum 0.9, cosine, 1 warm-up epoch).
    pub lr: f64,
    /// Random seed.
    pub seed: u64,
    /// Stop after this many steps per search epoch (tests).
    pub max_steps_per_epoch: Option<usize>,
    /// Progress bars.
    pub progress: bool,
    /// Compute device.
    pub device: DeviceKind,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            net: NetKind::NetM,
            width: 1.0,
            x2_scale: 1.0,
            stem: None,
            x2act_per_site: false,
            finetune: false,
            data: DatasetKind::FashionMnist,
            data_dir: PathBuf::from("data/fetched"),
            train_limit: None,
            test_limit: None,
            profile: "pasnet".into(),
            link: "none".into(),
            lambda: 1e-6,
            search_epochs: 2,
            batch_size: 128,
            w_lr: 0.025,
            w_lr_min: 0.001,
            w_weight_decay: 3e-4,
            w_grad_clip: 5.0,
            alpha_lr: 3e-4,
            alpha_weight_decay: 1e-3,
            epochs: 5,
            lr: 0.05,
            seed: 1,
            max_steps_per_epoch: None,
            progress: true,
            device: DeviceKind::Flex,
        }
    }
}

impl SearchConfig {
    /// The (activation, pooling) site counts of the searched network ([`site_counts`]).
    ///
    /// # Errors
    /// A stem on a network without the choice.
    pub fn site_counts(&self) -> Result<(usize, usize)> {
        site_counts(self.net, self.stem)
    }

    /// The training config of the derived network `arch`, writing the model to `out`: retrained
    /// from scratch, or, with `supernet` (the burn checkpoint [`search`] wrote), fine-tuned from
    /// the supernet's weights (PASNet: the derived network inherits the supernet's convolutions,
    /// BatchNorms and X2act coefficients; the ReLU sites lose their X2act).
    pub fn retrain_config(
        &self,
        arch: &Arch,
        out: Option<PathBuf>,
        supernet: Option<PathBuf>,
        command: &str,
    ) -> TrainConfig {
        TrainConfig {
            net: self.net,
            act: ActKind::X2act,
            width: self.width,
            x2_scale: self.x2_scale,
            stem: self.stem,
            x2act_per_site: self.x2act_per_site,
            init_from: supernet,
            data: self.data,
            data_dir: self.data_dir.clone(),
            train_limit: self.train_limit,
            test_limit: self.test_limit,
            epochs: self.epochs.max(1),
            lr: self.lr,
            warmup_epochs: 1,
            seed: self.seed,
            out,
            progress: self.progress,
            device: self.device,
            arch: Some(arch.clone()),
            command: command.to_string(),
            ..TrainConfig::default()
        }
    }
}

/// One searched site in the derived architecture file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SiteChoice {
    /// `act<i>` / `pool<i>`.
    pub name: String,
    /// Elements per sample at the site's input.
    pub n_elements: usize,
    /// Chosen operator: `relu`, `x2act`, `max` or `avg`.
    pub choice: String,
    /// Final softmax(alpha): `[relu, x2act]` or `[max, avg]`.
    pub probs: [f64; 2],
    /// Candidate latencies `[relu, x2act]` / `[max, avg]` (profile unit, batch 1).
    pub latency: [f64; 2],
}

/// The derived architecture of a search (written as `arch.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DerivedArch {
    /// Network.
    pub net: NetKind,
    /// Stem of ResNet-18/34/50 (None: the description's default, ImageNet).
    #[serde(default)]
    pub stem: Option<Stem>,
    /// Dataset searched on.
    pub data: DatasetKind,
    /// Latency weight lambda.
    pub lambda: f64,
    /// Profile name.
    pub profile: String,
    /// Link of the profile.
    pub link: String,
    /// Unit of the latencies ("ms" or "PASNet units").
    pub time_unit: String,
    /// The per-site choices.
    pub arch: Arch,
    /// Per-site details.
    pub sites: Vec<SiteChoice>,
    /// Predicted latency of the activation + pooling sites of the derived net (profile unit).
    pub predicted_latency: f64,
    /// Same for all-ReLU + max pooling.
    pub predicted_all_relu: f64,
    /// Same for all-X2act + avg pooling.
    pub predicted_all_x2act: f64,
    /// Training images used by the search (both halves).
    pub search_train_size: usize,
    /// Search steps taken (weights and alphas each).
    pub search_steps: usize,
    /// Wall-clock seconds of the search.
    pub search_secs: f64,
}

impl DerivedArch {
    /// Writes pretty JSON. Errors: I/O.
    pub fn save(&self, path: &Path) -> Result<()> {
        let s = serde_json::to_string_pretty(self)?;
        std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
    }

    /// Reads a file written by [`DerivedArch::save`]. Errors: I/O, malformed JSON.
    pub fn load(path: &Path) -> Result<Self> {
        let s =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&s).with_context(|| format!("parsing architecture {}", path.display()))
    }
}

/// Predicted site latency of `arch` from per-site candidate latencies `sites` (acts, then pools,
/// in the order the supernet met them).
fn arch_latency(arch: &Arch, acts: &[&SiteInfo], pools: &[&SiteInfo]) -> f64 {
    let a: f64 = arch
        .acts
        .iter()
        .zip(acts)
        .map(|(k, s)| if *k == ActKind::Relu { s.latency[0] } else { s.latency[1] })
        .sum();
    let p: f64 = arch
        .pools
        .iter()
        .zip(pools)
        .map(|(k, s)| if *k == PoolKind::Max { s.latency[0] } else { s.latency[1] })
        .sum();
    a + p
}

/// The site costs of `cfg` (calibrates the CPU profile when `cfg.profile` is `cpu`).
///
/// # Errors
/// Unknown profile or link text.
pub fn site_costs(cfg: &SearchConfig) -> Result<Arc<SiteCosts>> {
    let profile = Profile::parse(&cfg.profile).context("bad --profile")?;
    let link = LinkModel::parse(&cfg.link).context("bad --link")?;
    Ok(Arc::new(SiteCosts::new(profile, link)))
}

/// Runs the bilevel search of `cfg` and derives the architecture (argmax per site); with
/// `supernet`, also writes the trained supernet (all sites X2act, the weights the gates mixed)
/// there as a burn checkpoint, for fine-tuning the derived network
/// ([`SearchConfig::retrain_config`]).
///
/// # Errors
/// Bad config (zero epochs / batch, fewer than 2 training images, a stem on a network without
/// the choice), dataset errors, bad profile or link, a non-finite loss, I/O writing `supernet`.
pub fn search(cfg: &SearchConfig, supernet: Option<&Path>) -> Result<DerivedArch> {
    if cfg.search_epochs == 0 || cfg.batch_size == 0 {
        bail!("search epochs and batch size must be positive");
    }
    if !cfg.lambda.is_finite() || cfg.lambda < 0.0 {
        bail!("lambda must be a finite non-negative number, got {}", cfg.lambda);
    }
    if cfg.data == crate::data::DatasetKind::ImageFolder {
        bail!("the search runs on the built-in datasets (mnist, fashion-mnist, cifar10), not an image folder");
    }
    let costs = site_costs(cfg)?;
    let site_count = cfg.site_counts()?;
    // The supernet: the network of the retraining config with X2act at every site.
    let tcfg = TrainConfig {
        test_limit: cfg.test_limit.or(Some(1)),
        ..cfg.retrain_config(
            &Arch::uniform(site_count, ActKind::X2act, PoolKind::Avg),
            None,
            None,
            "",
        )
    };
    let (train_ds, _) = train::load_data(&tcfg)?;
    if train_ds.len() < 2 {
        bail!("the search needs at least 2 training images");
    }
    let base = train::device(cfg.device)?;
    base.seed(cfg.seed);
    let ad = base.clone().autodiff();
    let mut model = nets::build(&tcfg.spec(), &ad)?;
    let mut alphas = Alphas::zeros(site_count, &ad);
    let mut w_optim = SgdConfig::new()
        .with_momentum(Some(MomentumConfig::new().with_momentum(0.9).with_dampening(0.0)))
        .with_weight_decay(Some(burn::optim::decay::WeightDecayConfig::new(
            cfg.w_weight_decay as f32,
        )))
        .with_gradient_clipping(Some(burn::grad_clipping::GradientClippingConfig::Norm(
            cfg.w_grad_clip,
        )))
        .init();
    let mut a_optim = AdamConfig::new()
        .with_beta_1(0.5)
        .with_beta_2(0.999)
        .with_weight_decay(Some(burn::optim::decay::WeightDecayConfig::new(
            cfg.alpha_weight_decay as f32,
        )))
        .init();
    let ce = CrossEntropyLossConfig::new().init(&ad);
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut all: Vec<usize> = (0..train_ds.len()).collect();
    all.shuffle(&mut rng);
    let half = all.len() / 2;
    let (mut w_idx, mut a_idx) = (all[..half].to_vec(), all[half..].to_vec());
    let steps = half.div_ceil(cfg.batch_size);
    let steps = cfg.max_steps_per_epoch.map_or(steps, |m| m.min(steps)).max(1);
    let total = (steps * cfg.search_epochs) as f64;
    let augment = cfg.data == DatasetKind::Cifar10;
    let t0 = Instant::now();
    let mut seen_sites: Vec<SiteInfo> = Vec::new();
    let mut done = 0usize;
    for epoch in 0..cfg.search_epochs {
        w_idx.shuffle(&mut rng);
        a_idx.shuffle(&mut rng);
        let bar = progress_bar(
            cfg.progress,
            steps,
            format!("search {}/{}", epoch + 1, cfg.search_epochs),
        );
        let (mut ce_sum, mut lat_sum) = (0f64, 0f64);
        for s in 0..steps {
            let batch = |v: &Vec<usize>| {
                let lo = (s * cfg.batch_size) % v.len();
                v[lo..(lo + cfg.batch_size).min(v.len())].to_vec()
            };
            // Weight step (first half, CE only).
            let idx = batch(&w_idx);
            let (x, y) = train::batch_tensors(&train_ds, &idx, cfg.data, augment, &mut rng, &ad);
            let mut ctx = Ctx::train(None, None);
            ctx.gates = Some(Gates::new(&alphas, costs.clone()));
            let logits = model.forward(x, &mut ctx);
            let loss = ce.forward(logits, y);
            let lv: f32 = loss.clone().into_scalar();
            if !lv.is_finite() {
                bail!("search loss became {lv} at epoch {epoch} step {s}");
            }
            let t = done as f64 / total;
            let w_lr = cfg.w_lr_min
                + 0.5 * (cfg.w_lr - cfg.w_lr_min) * (1.0 + (std::f64::consts::PI * t).cos());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = w_optim.step(w_lr, model, grads);
            // Alpha step (second half, CE + lambda * expected latency).
            let idx = batch(&a_idx);
            let (x, y) = train::batch_tensors(&train_ds, &idx, cfg.data, augment, &mut rng, &ad);
            let mut ctx = Ctx::train(None, None);
            ctx.gates = Some(Gates::new(&alphas, costs.clone()));
            let logits = model.forward(x, &mut ctx);
            let Some(g) = ctx.gates.take() else { bail!("supernet lost its gates") };
            if g.overflow || g.sites.len() != alphas.act.len() + alphas.pool.len() {
                bail!(
                    "supernet met {} sites, expected {} (overflow {})",
                    g.sites.len(),
                    alphas.act.len() + alphas.pool.len(),
                    g.overflow
                );
            }
            let cel = ce.forward(logits, y);
            let cv: f32 = cel.clone().into_scalar();
            let mut loss = cel;
            if let Some(e) = g.expected {
                let ev: f32 = e.clone().into_scalar();
                lat_sum += ev as f64;
                loss = loss.add(e.mul_scalar(cfg.lambda));
            }
            seen_sites = g.sites;
            ce_sum += cv as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &alphas);
            alphas = a_optim.step(cfg.alpha_lr, alphas, grads);
            done += 1;
            bar.inc(1);
            if s % 10 == 0 {
                bar.set_message(format!(
                    "ce {:.4} E[lat] {:.4e}",
                    ce_sum / (s + 1) as f64,
                    lat_sum / (s + 1) as f64
                ));
            }
        }
        bar.finish_and_clear();
        if cfg.progress {
            eprintln!(
                "search epoch {}: alpha-batch ce {:.4}, expected latency {:.4e} {}",
                epoch + 1,
                ce_sum / steps as f64,
                lat_sum / steps as f64,
                costs.unit()
            );
        }
    }
    let (pa, pp) = alphas.probs();
    let arch = Arch {
        acts: pa.iter().map(|p| if p[0] > p[1] { ActKind::Relu } else { ActKind::X2act }).collect(),
        pools: pp.iter().map(|p| if p[0] > p[1] { PoolKind::Max } else { PoolKind::Avg }).collect(),
    };
    let acts: Vec<&SiteInfo> = seen_sites.iter().filter(|s| s.name.starts_with("act")).collect();
    let pools: Vec<&SiteInfo> = seen_sites.iter().filter(|s| s.name.starts_with("pool")).collect();
    let mut sites = Vec::new();
    for (i, s) in acts.iter().enumerate() {
        sites.push(SiteChoice {
            name: s.name.clone(),
            n_elements: s.n_elements,
            choice: arch.acts[i].name().into(),
            probs: pa[i],
            latency: s.latency,
        });
    }
    for (i, s) in pools.iter().enumerate() {
        sites.push(SiteChoice {
            name: s.name.clone(),
            n_elements: s.n_elements,
            choice: if arch.pools[i] == PoolKind::Max { "max" } else { "avg" }.into(),
            probs: pp[i],
            latency: s.latency,
        });
    }
    if let Some(p) = supernet {
        train::save_checkpoint(&model, p).context("writing the supernet checkpoint")?;
    }
    let relu = Arch::uniform(site_count, ActKind::Relu, PoolKind::Max);
    let x2 = Arch::uniform(site_count, ActKind::X2act, PoolKind::Avg);
    Ok(DerivedArch {
        net: cfg.net,
        stem: cfg.stem,
        data: cfg.data,
        lambda: cfg.lambda,
        profile: cfg.profile.clone(),
        link: cfg.link.clone(),
        time_unit: costs.unit().into(),
        predicted_latency: arch_latency(&arch, &acts, &pools),
        predicted_all_relu: arch_latency(&relu, &acts, &pools),
        predicted_all_x2act: arch_latency(&x2, &acts, &pools),
        arch,
        sites,
        search_train_size: train_ds.len(),
        search_steps: done,
        search_secs: t0.elapsed().as_secs_f64(),
    })
}

/// Predicted site latency of `arch` on the site costs of `cfg`, from the site sizes of a
/// previous search `like` (same net and data).
pub fn predicted_latency(arch: &Arch, like: &DerivedArch) -> f64 {
    let to_info = |c: &SiteChoice| SiteInfo {
        name: c.name.clone(),
        n_elements: c.n_elements,
        latency: c.latency,
    };
    let infos: Vec<SiteInfo> = like.sites.iter().map(to_info).collect();
    let acts: Vec<&SiteInfo> = infos.iter().filter(|s| s.name.starts_with("act")).collect();
    let pools: Vec<&SiteInfo> = infos.iter().filter(|s| s.name.starts_with("pool")).collect();
    arch_latency(arch, &acts, &pools)
}

fn progress_bar(on: bool, steps: usize, prefix: String) -> indicatif::ProgressBar {
    if !on {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(steps as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b.set_prefix(prefix);
    b
}
