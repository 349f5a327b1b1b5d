//! Training: configuration, the epoch loop (SGD-momentum or Adam, cosine schedule with linear
//! warm-up, weight decay, gradient clipping), PILLAR's clipping + range penalty with its warm-up,
//! optional knowledge distillation from a ReLU teacher, checkpoints, metrics CSV and SVG plot.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, SgdConfig};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::data::{self, Dataset, DatasetKind};
use crate::layers::{ActKind, Ctx, Penalty};
use crate::nets::{self, Net, NetKind, NetSpec, PoolKind};

/// Optimiser choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OptimKind {
    /// SGD with momentum (PILLAR: momentum 0.9).
    #[default]
    Sgd,
    /// Adam (PolyKervNets: lr 1e-3 early, 3e-5 later).
    Adam,
}

/// Compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    /// burn's pure-Rust CPU backend.
    #[default]
    Flex,
    /// CUDA GPU 0 (needs the crate feature `cuda`, whose build downloads an LLVM bundle:
    /// crates/polypi-train/README.md).
    Cuda,
    /// The best GPU wgpu finds (Vulkan, Metal or DX12; `CUBECL_WGPU_DEFAULT_DEVICE` overrides
    /// it; needs the crate feature `wgpu`).
    Wgpu,
}

/// Everything a training run needs. Defaults follow the papers (docs/sources.md): SGD momentum
/// 0.9, cosine learning rate with 5 warm-up epochs, batch 128, weight decay 5e-4 (PILLAR
/// `training_scripts`); X2Act init of PASNet; PILLAR's clip to [-5, 5] and range penalty
/// (γ = 10, range 4.8, coef 5e-5) with its 4-epoch warm-up for `act = poly`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Network.
    pub net: NetKind,
    /// Activation at every ACT site.
    pub act: ActKind,
    /// Width multiplier (1.0 = reference.md channel counts).
    pub width: f32,
    /// Batch norm after every conv (folded into the conv for inference).
    pub batch_norm: bool,
    /// Pooling kind (NET-M, NET-C).
    pub pool: PoolKind,
    /// X2Act weight scale `s` (PASNet: 1, 0.1 for ResNet-50).
    pub x2_scale: f32,
    /// PolyKerv init `(c_p, a_p)` for `pkn` / `rpkn` (None = the paper's: 1 / 1, 0.47 / 0.009).
    /// `(c, 1/(2c))` with a large `c` gives `x + c/2 + x^2/(2c)`: a near-identity start in the
    /// spirit of PolyMPCNet's STPAI.
    pub kerv_init: Option<(f32, f32)>,
    /// Image side of an image-folder dataset (`--data image-folder`): images are resized and
    /// centre-cropped to `image_size x image_size` (ignored by the other datasets).
    pub image_size: usize,
    /// PILLAR polynomial of `poly` sites from the fitter (None = the seed's degree 4).
    pub pillar: Option<crate::nets::PillarSpec>,
    /// X2act with one scalar set per site (PASNet) instead of one per channel.
    pub x2act_per_site: bool,
    /// NET-R18 with pkn / rpkn: placement of the kervolutions.
    pub pkn_layout: crate::nets::PknLayout,
    /// Dataset.
    pub data: DatasetKind,
    /// Folder holding the dataset (see [`data::load`]).
    pub data_dir: PathBuf,
    /// Use only the first N training images (None = all).
    pub train_limit: Option<usize>,
    /// Use only the first N test images (None = all).
    pub test_limit: Option<usize>,
    /// Augmentation (CIFAR: random crop pad 4 + horizontal flip; 1-channel sets: random shift of
    /// up to 2 px); None = on for CIFAR-10 only.
    pub augment: Option<bool>,
    /// Epochs.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Optimiser.
    pub optimizer: OptimKind,
    /// Peak learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 weight decay (added to the gradient).
    pub weight_decay: f64,
    /// Exempt the activation coefficients (X2act `w0`, `w1`, `b`; PolyKerv `c_p`, `a_p`) from
    /// `weight_decay` (decay then only pulls conv / linear / batch-norm parameters toward 0).
    /// The decay term is then added to the gradient before burn's optimizer runs, so with
    /// `grad_clip` set it is clipped together with the gradient (burn clips before its decay).
    pub no_decay_act: bool,
    /// Linear warm-up epochs (capped at a quarter of `epochs`); then cosine decay to 0.
    pub warmup_epochs: usize,
    /// Clip each parameter's gradient to this L2 norm (None = off).
    pub grad_clip: Option<f32>,
    /// PILLAR train-time clipping of polynomial inputs to `[-c, c]` (None = off; default 5 for poly).
    pub poly_clip: Option<f32>,
    /// PILLAR range penalty coefficient (None = off; default 5e-5 for poly).
    pub penalty_coef: Option<f64>,
    /// Range penalty exponent γ after warm-up.
    pub penalty_gamma: f64,
    /// Range penalty range r.
    pub penalty_range: f64,
    /// PILLAR's 4-epoch penalty warm-up (epoch 0 trains the penalty only).
    pub penalty_warmup: bool,
    /// Safe range for the "outside safe range" metric (|x| > r at activation inputs).
    pub safe_range: f32,
    /// Knowledge distillation: burn checkpoint of a ReLU teacher of the same net and width.
    pub teacher: Option<PathBuf>,
    /// KD weight α: loss = (1-α) CE + α T² KL.
    pub kd_alpha: f64,
    /// KD temperature T (R-PKN: 5).
    pub kd_temperature: f64,
    /// Random seed (init, shuffling, augmentation).
    pub seed: u64,
    /// Output model file (polypi `.safetensors`); the burn checkpoint, metrics CSV and plot go
    /// next to it (`<stem>.ckpt.safetensors`, `<stem>.metrics.csv`, `<stem>.svg`).
    pub out: Option<PathBuf>,
    /// Resume from this burn checkpoint (weights only).
    pub resume: Option<PathBuf>,
    /// Show progress bars.
    pub progress: bool,
    /// Compute device.
    pub device: DeviceKind,
    /// Stop after this many optimisation steps per epoch (tests).
    pub max_steps_per_epoch: Option<usize>,
    /// Command line that produced the run (recorded in the model card).
    pub command: String,
    /// Per-site architecture from a search ([`crate::search::Arch`]): overrides `act` and `pool`
    /// site by site (the net is built with X2act, STPAI init, then the chosen sites are swapped).
    pub arch: Option<crate::search::Arch>,
    /// Stem of ResNet-18/34/50 (None = ImageNet, the description's default, as `polypi zoo`).
    pub stem: Option<polypi_core::model::arch::Stem>,
    /// Burn checkpoint to start from, loaded before `arch` is applied: the all-X2act supernet of
    /// an architecture search (PASNet's fine-tuning of the derived network from the supernet's
    /// weights). Unlike `resume` it must match the network built with X2act at every site.
    pub init_from: Option<PathBuf>,
    /// Output classes (None = the dataset's class count; at least that many).
    pub classes: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            net: NetKind::NetM,
            act: ActKind::X2act,
            width: 1.0,
            batch_norm: true,
            pool: PoolKind::Avg,
            x2_scale: 1.0,
            kerv_init: None,
            pillar: None,
            image_size: 224,
            x2act_per_site: false,
            pkn_layout: crate::nets::PknLayout::Sites,
            data: DatasetKind::FashionMnist,
            data_dir: PathBuf::from("data/fetched"),
            train_limit: None,
            test_limit: None,
            augment: None,
            epochs: 10,
            batch_size: 128,
            optimizer: OptimKind::Sgd,
            lr: 0.05,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
            no_decay_act: false,
            warmup_epochs: 5,
            grad_clip: None,
            poly_clip: None,
            penalty_coef: None,
            penalty_gamma: 10.0,
            penalty_range: 4.8,
            penalty_warmup: true,
            safe_range: 5.0,
            teacher: None,
            kd_alpha: 0.5,
            kd_temperature: 5.0,
            seed: 1,
            out: None,
            resume: None,
            progress: true,
            device: DeviceKind::Flex,
            max_steps_per_epoch: None,
            command: String::new(),
            arch: None,
            stem: None,
            init_from: None,
            classes: None,
        }
    }
}

impl TrainConfig {
    /// The network spec this config trains.
    pub fn spec(&self) -> NetSpec {
        let [c, h, _] = self.input_shape();
        NetSpec {
            net: self.net,
            act: if self.arch.is_some() { ActKind::X2act } else { self.act },
            width: self.width,
            batch_norm: self.batch_norm,
            pool: self.pool,
            x2_scale: self.x2_scale,
            kerv_init: self.kerv_init,
            pillar: self.pillar,
            x2act_per_site: self.x2act_per_site,
            pkn_layout: self.pkn_layout,
            in_channels: c,
            classes: self.classes.unwrap_or(self.labels().len().max(1)),
            stem: self.stem,
            input_size: h,
        }
    }

    /// Per-sample input shape `[C, H, W]` (an image folder: `[3, image_size, image_size]`).
    pub fn input_shape(&self) -> [usize; 3] {
        match self.data {
            DatasetKind::ImageFolder => [3, self.image_size, self.image_size],
            k => k.input_shape(),
        }
    }

    /// Class names, index = label (an image folder: its class folders, sorted; empty when the
    /// folder cannot be read, which loading the data then reports).
    pub fn labels(&self) -> Vec<String> {
        match self.data {
            DatasetKind::ImageFolder => {
                crate::folder::folder_classes(&self.data_dir).unwrap_or_default()
            }
            k => k.labels(),
        }
    }

    /// PILLAR clipping in effect (defaults to 5 for `poly`).
    pub fn effective_clip(&self) -> Option<f32> {
        self.poly_clip.or((self.act == ActKind::Poly).then_some(5.0))
    }

    /// PILLAR penalty coefficient in effect (defaults to 5e-5 for `poly`).
    pub fn effective_penalty(&self) -> Option<f64> {
        self.penalty_coef.or((self.act == ActKind::Poly).then_some(5e-5))
    }

    /// Penalty for `epoch` and the cross-entropy weight (PILLAR warm-up, docs/sources.md §3):
    /// ep0 0·CE + pen(γ=4, coef/100); ep1 pen(6, coef/50); ep2 pen(8, coef/10); ep3 pen(10, coef/5);
    /// then pen(γ, coef). γ of the warm-up epochs is scaled by `penalty_gamma/10`.
    pub fn penalty_at(&self, epoch: usize) -> (Option<Penalty>, f64) {
        let Some(coef) = self.effective_penalty() else {
            return (None, 1.0);
        };
        let g = self.penalty_gamma;
        let (gamma, c, ce) = if !self.penalty_warmup {
            (g, coef, 1.0)
        } else {
            match epoch {
                0 => (g * 0.4, coef / 100.0, 0.0),
                1 => (g * 0.6, coef / 50.0, 1.0),
                2 => (g * 0.8, coef / 10.0, 1.0),
                3 => (g, coef / 5.0, 1.0),
                _ => (g, coef, 1.0),
            }
        };
        (Some(Penalty { coef: c, gamma, range: self.penalty_range }), ce)
    }

    /// Learning rate at fractional epoch `t` (linear warm-up, then cosine to 0).
    pub fn lr_at(&self, t: f64) -> f64 {
        let total = self.epochs.max(1) as f64;
        let warm = (self.warmup_epochs as f64).min(total / 4.0);
        if t < warm {
            self.lr * (t + 1.0 / 64.0).min(warm) / warm
        } else {
            let p = ((t - warm) / (total - warm).max(1e-9)).clamp(0.0, 1.0);
            self.lr * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
        }
    }

    /// A one-line recipe for the model card.
    pub fn recipe(&self) -> String {
        let act = match &self.arch {
            Some(a) => format!("searched [{}]", a.summary()),
            None => self.act.name().to_string(),
        };
        let mut r = format!(
            "{} {} width {} bn {} pool {:?}; {:?} lr {} momentum {} wd {} batch {} epochs {} (cosine, {} warm-up epochs), seed {}",
            self.net.display_name(),
            act,
            self.width,
            self.batch_norm,
            self.pool,
            self.optimizer,
            self.lr,
            self.momentum,
            self.weight_decay,
            self.batch_size,
            self.epochs,
            self.warmup_epochs,
            self.seed
        );
        if let Some(st) = self.stem {
            r += &format!(", {st:?} stem");
        }
        if let Some(k) = self.classes {
            r += &format!(", {k} classes");
        }
        if self.no_decay_act {
            r += ", no decay on activation coefficients";
        }
        if let Some(c) = self.grad_clip {
            r += &format!(", grad clip {c}");
        }
        if let (Some((c, a)), ActKind::Pkn | ActKind::Rpkn) = (self.kerv_init, self.act) {
            r += &format!(", PolyKerv init c_p {c} a_p {a}");
        }
        if self.pkn_layout == crate::nets::PknLayout::Published
            && matches!(self.act, ActKind::Pkn | ActKind::Rpkn)
            && self.net == crate::nets::NetKind::NetR18
        {
            r += ", PolyKervNets layout as published (conv -> power -> BN -> dropout 0.2 at the stem, \
                  conv1 and projection shortcuts; nothing after the add)";
        }
        if self.x2act_per_site && self.act == ActKind::X2act {
            r += ", X2act one scalar set per site (PASNet)";
        }
        if let (Some(p), ActKind::Poly) = (&self.pillar, self.act) {
            let c: Vec<String> = p
                .coefficients()
                .iter()
                .map(|c| format!("{}", c * (1u32 << p.precision_bits) as f32))
                .collect();
            r += &format!(
                ", PILLAR degree {} fit (fit-poly P {} R {}): ({}) / 2^{}",
                p.degree,
                p.precision_bits,
                p.range,
                c.join(", "),
                p.precision_bits
            );
        }
        if let Some(c) = self.effective_clip() {
            r += &format!(", PILLAR clip [-{c},{c}]");
        }
        if let Some(c) = self.effective_penalty() {
            r += &format!(
                ", range penalty coef {c} gamma {} range {} warm-up {}",
                self.penalty_gamma, self.penalty_range, self.penalty_warmup
            );
        }
        if self
            .augment
            .unwrap_or(matches!(self.data, DatasetKind::Cifar10 | DatasetKind::ImageFolder))
        {
            r += if self.input_shape()[0] == 3 {
                ", augmentation random crop (pad 4) + horizontal flip"
            } else {
                ", augmentation random shift up to 2 px"
            };
        }
        if let Some(t) = &self.teacher {
            r += &format!(
                ", KD from {} (alpha {}, T {})",
                t.display(),
                self.kd_alpha,
                self.kd_temperature
            );
        }
        r
    }
}

/// Metrics of one epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch index (0-based).
    pub epoch: usize,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Mean training loss (CE + penalty + KD as optimised).
    pub train_loss: f64,
    /// Training accuracy in percent (on augmented batches, training mode).
    pub train_acc: f64,
    /// Test cross-entropy.
    pub test_loss: f64,
    /// Test accuracy in percent.
    pub test_acc: f64,
    /// Fraction of activation inputs with |x| > `safe_range` on the test set.
    pub oor_frac: f64,
    /// Largest |x| at an activation input on the test set.
    pub max_abs: f64,
    /// Mean range penalty (0 if off).
    pub penalty: f64,
    /// Wall-clock seconds of the training part of the epoch.
    pub train_secs: f64,
    /// Wall-clock seconds of the evaluation.
    pub eval_secs: f64,
}

/// What a training run returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    /// Per-epoch metrics.
    pub epochs: Vec<EpochMetrics>,
    /// Final test accuracy in percent.
    pub test_accuracy: f64,
    /// Training images used.
    pub train_size: usize,
    /// Test images used.
    pub test_size: usize,
    /// Mean seconds per training epoch.
    pub secs_per_epoch: f64,
    /// Exported model file, if `out` was set.
    pub model_file: Option<PathBuf>,
    /// burn checkpoint, if `out` was set.
    pub checkpoint: Option<PathBuf>,
    /// Metrics CSV, if `out` was set.
    pub metrics_csv: Option<PathBuf>,
    /// SVG plot, if `out` was set.
    pub plot: Option<PathBuf>,
}

/// Resolves the compute device (with autodiff).
pub fn device(kind: DeviceKind) -> Result<Device> {
    match kind {
        DeviceKind::Flex => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => Ok(Device::cuda(0)),
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda => bail!(
            "this polypi-train was built without the `cuda` feature (cargo build --release -p \
             polypi-train --features cuda)"
        ),
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(not(feature = "wgpu"))]
        DeviceKind::Wgpu => bail!(
            "this polypi-train was built without the `wgpu` feature (cargo build --release -p \
             polypi-train --features wgpu)"
        ),
    }
}

/// Loads the datasets of `cfg` (with the limits applied).
pub fn load_data(cfg: &TrainConfig) -> Result<(Dataset, Dataset)> {
    let (mut tr, mut te) = match cfg.data {
        DatasetKind::ImageFolder => {
            let fixed = match cfg.net {
                NetKind::NetM => Some(28),
                NetKind::NetC => Some(32),
                _ => None,
            };
            if let Some(side) = fixed.filter(|&s| s != cfg.image_size) {
                bail!(
                    "{} takes {side}x{side} inputs: pass --image-size {side}, or use net-r18 \
                     (global average pooling, any size)",
                    cfg.net.display_name()
                );
            }
            let (tr, te, _) = crate::folder::load_image_folder(&cfg.data_dir, cfg.image_size)?;
            (tr, te)
        }
        k => data::load(k, &cfg.data_dir)?,
    };
    if let Some(n) = cfg.train_limit {
        tr.truncate(n);
    }
    if let Some(n) = cfg.test_limit {
        te.truncate(n);
    }
    if tr.is_empty() || te.is_empty() {
        bail!("empty dataset (train {}, test {})", tr.len(), te.len());
    }
    Ok((tr, te))
}

/// Builds a batch tensor `[N, C, H, W]` and label tensor `[N]` on `device`.
pub fn batch_tensors(
    ds: &Dataset,
    idx: &[usize],
    kind: DatasetKind,
    augment: bool,
    rng: &mut impl rand::Rng,
    device: &Device,
) -> (Tensor<4>, Tensor<1, Int>) {
    let (mean, std) = kind.normalization();
    let (px, lab) = data::make_batch(ds, idx, &mean, &std, augment, rng);
    let [c, h, w] = ds.shape;
    let n = idx.len();
    let x = Tensor::<4>::from_data(TensorData::new(px, [n, c, h, w]), device);
    let y = Tensor::<1, Int>::from_data(TensorData::new(lab, [n]), device);
    (x, y)
}

/// Evaluation: (mean CE, accuracy %, out-of-range fraction, max |x|) of `model` (any mode; it is
/// put in inference mode) on `ds`.
pub fn evaluate(
    model: &Net,
    ds: &Dataset,
    kind: DatasetKind,
    safe_range: f32,
    device: &Device,
) -> (f64, f64, f64, f64) {
    let model = model.valid();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut ctx = Ctx::eval(Some(safe_range));
    let ce = CrossEntropyLossConfig::new().init(device);
    let (mut loss, mut correct) = (0f64, 0usize);
    let bs = 500;
    let all: Vec<usize> = (0..ds.len()).collect();
    for chunk in all.chunks(bs) {
        let (x, y) = batch_tensors(ds, chunk, kind, false, &mut rng, device);
        let logits = model.forward(x, &mut ctx);
        let l: f32 = ce.forward(logits.clone(), y.clone()).into_scalar();
        loss += l as f64 * chunk.len() as f64;
        let pred = logits.argmax(1).reshape([chunk.len()]);
        let c: i64 = pred.equal(y).int().sum().into_scalar();
        correct += c as usize;
    }
    let n = ds.len() as f64;
    (
        loss / n,
        100.0 * correct as f64 / n,
        ctx.oor_count / ctx.oor_total.max(1.0),
        ctx.max_abs as f64,
    )
}

/// Plain f32 logits `[N * classes]` of `model` in inference mode for NCHW `input` (`n` images).
pub fn infer(model: &Net, input: &[f32], n: usize, shape: [usize; 3], device: &Device) -> Vec<f32> {
    let [c, h, w] = shape;
    let x = Tensor::<4>::from_data(TensorData::new(input.to_vec(), [n, c, h, w]), device);
    let mut ctx = Ctx::eval(None);
    model.valid().forward(x, &mut ctx).into_data().try_to_vec::<f32>().unwrap_or_default()
}

/// Builds `cfg`'s network, loading `resume` weights if set.
pub fn build_model(cfg: &TrainConfig, device: &Device) -> Result<Net> {
    if cfg.net.from_description() && !cfg.batch_norm {
        bail!(
            "{} has its BatchNorm layers fixed by its description; --no-batch-norm applies to \
             NET-M and NET-C",
            cfg.net.display_name()
        );
    }
    let mut model = nets::build(&cfg.spec(), device)?;
    if let Some(p) = &cfg.init_from {
        load_checkpoint(&mut model, p).context("loading the supernet (--init-from)")?;
    }
    if let Some(a) = &cfg.arch {
        crate::search::apply_arch(&mut model, a, cfg.x2_scale, device)?;
    }
    if let Some(p) = &cfg.resume {
        load_checkpoint(&mut model, p)?;
    }
    Ok(model)
}

/// Loads a burn checkpoint written by [`train`] into `model` (same architecture).
pub fn load_checkpoint(model: &mut Net, path: &Path) -> Result<()> {
    if !path.exists() {
        bail!("checkpoint {} not found", path.display());
    }
    let mut store = SafetensorsStore::from_file(path);
    model
        .load_from(&mut store)
        .map_err(|e| anyhow::anyhow!("loading checkpoint {}: {e}", path.display()))?;
    Ok(())
}

/// Saves `model` as a burn checkpoint.
pub fn save_checkpoint(model: &Net, path: &Path) -> Result<()> {
    let mut store = SafetensorsStore::from_file(path).overwrite(true);
    model
        .save_into(&mut store)
        .map_err(|e| anyhow::anyhow!("saving checkpoint {}: {e}", path.display()))?;
    Ok(())
}

fn side_path(out: &Path, suffix: &str) -> PathBuf {
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    out.with_file_name(format!("{stem}{suffix}"))
}

/// Trains the network of `cfg`, evaluates it after every epoch, and (when `cfg.out` is set)
/// writes the polypi model file, a burn checkpoint, the metrics CSV and an SVG plot.
///
/// # Errors
/// Missing or malformed dataset files (with a hint to run `scripts/fetch-data.sh`), a missing
/// teacher/resume checkpoint, a non-finite loss, or I/O errors on the outputs.
pub fn train(cfg: &TrainConfig) -> Result<TrainReport> {
    if cfg.epochs == 0 || cfg.batch_size == 0 {
        bail!("epochs and batch_size must be positive");
    }
    let labels = cfg.labels().len();
    if let Some(k) = cfg.classes.filter(|&k| k < labels) {
        bail!("--classes {k} is fewer than the dataset's {labels} classes");
    }
    let (train_ds, test_ds) = load_data(cfg)?;
    let base = device(cfg.device)?;
    base.seed(cfg.seed);
    let ad = base.clone().autodiff();
    let mut model = build_model(cfg, &ad)?;
    let teacher = match &cfg.teacher {
        Some(p) => {
            let tcfg = TrainConfig { act: ActKind::Relu, resume: None, arch: None, ..cfg.clone() };
            let mut t = nets::build(&tcfg.spec(), &base)?;
            load_checkpoint(&mut t, p)
                .context("loading the KD teacher (a ReLU net of the same --net/--width)")?;
            Some(t.valid())
        }
        None => None,
    };
    let augment =
        cfg.augment.unwrap_or(matches!(cfg.data, DatasetKind::Cifar10 | DatasetKind::ImageFolder));
    let mut optim = match cfg.optimizer {
        OptimKind::Sgd => {
            let mut c = SgdConfig::new().with_momentum(Some(
                MomentumConfig::new()
                    .with_momentum(cfg.momentum)
                    .with_nesterov(cfg.nesterov)
                    .with_dampening(0.0),
            ));
            if cfg.weight_decay > 0.0 && !cfg.no_decay_act {
                c = c.with_weight_decay(Some(burn::optim::decay::WeightDecayConfig::new(
                    cfg.weight_decay as f32,
                )));
            }
            if let Some(g) = cfg.grad_clip {
                c = c.with_gradient_clipping(Some(
                    burn::grad_clipping::GradientClippingConfig::Norm(g),
                ));
            }
            c.init()
        }
        OptimKind::Adam => {
            let mut c = AdamConfig::new();
            if cfg.weight_decay > 0.0 && !cfg.no_decay_act {
                c = c.with_weight_decay(Some(burn::optim::decay::WeightDecayConfig::new(
                    cfg.weight_decay as f32,
                )));
            }
            if let Some(g) = cfg.grad_clip {
                c = c
                    .with_grad_clipping(Some(burn::grad_clipping::GradientClippingConfig::Norm(g)));
            }
            c.init()
        }
    };
    let ce = CrossEntropyLossConfig::new().init(&ad);
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let n = train_ds.len();
    let steps = n.div_ceil(cfg.batch_size);
    let steps = cfg.max_steps_per_epoch.map_or(steps, |m| m.min(steps));
    let mut order: Vec<usize> = (0..n).collect();
    let mut report = TrainReport {
        epochs: vec![],
        test_accuracy: 0.0,
        train_size: n,
        test_size: test_ds.len(),
        secs_per_epoch: 0.0,
        model_file: None,
        checkpoint: None,
        metrics_csv: None,
        plot: None,
    };
    if let Some(out) = &cfg.out {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        report.checkpoint = Some(side_path(out, ".ckpt.safetensors"));
        report.metrics_csv = Some(side_path(out, ".metrics.csv"));
        report.plot = Some(side_path(out, ".svg"));
    }
    for epoch in 0..cfg.epochs {
        let (penalty, ce_w) = cfg.penalty_at(epoch);
        order.shuffle(&mut rng);
        let bar = if cfg.progress {
            let b = indicatif::ProgressBar::new(steps as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_prefix(format!("epoch {}/{}", epoch + 1, cfg.epochs));
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        let t0 = Instant::now();
        let (mut loss_sum, mut pen_sum, mut correct, mut seen) = (0f64, 0f64, 0usize, 0usize);
        let mut lr = cfg.lr;
        for s in 0..steps {
            let idx = &order[s * cfg.batch_size..((s + 1) * cfg.batch_size).min(n)];
            let (x, y) = batch_tensors(&train_ds, idx, cfg.data, augment, &mut rng, &ad);
            let mut ctx = Ctx::train(cfg.effective_clip(), penalty);
            let logits = model.forward(x.clone(), &mut ctx);
            let mut loss = ce.forward(logits.clone(), y.clone()).mul_scalar(ce_w);
            if let Some(t) = &teacher {
                let tl = t.forward(x.inner(), &mut Ctx::eval(None)).to_device(&ad).detach();
                let temp = cfg.kd_temperature;
                let p_t = softmax(tl.div_scalar(temp), 1);
                let logp_s = log_softmax(logits.clone().div_scalar(temp), 1);
                let kl = p_t.clone().mul(p_t.add_scalar(1e-12).log().sub(logp_s)).sum_dim(1).mean();
                loss = loss
                    .mul_scalar(1.0 - cfg.kd_alpha)
                    .add(kl.mul_scalar(cfg.kd_alpha * temp * temp));
            }
            if let Some(p) = ctx.penalty_mean() {
                let pv: f32 = p.clone().into_scalar();
                pen_sum += pv as f64;
                loss = loss.add(p);
            }
            let lv: f32 = loss.clone().into_scalar();
            if !lv.is_finite() {
                bail!(
                    "loss became {lv} at epoch {epoch} step {s}; lower --lr or enable --grad-clip"
                );
            }
            let pred = logits.argmax(1).reshape([idx.len()]);
            let c: i64 = pred.equal(y).int().sum().into_scalar();
            correct += c as usize;
            seen += idx.len();
            loss_sum += lv as f64;
            lr = cfg.lr_at(epoch as f64 + s as f64 / steps as f64);
            let mut grads = GradientsParams::from_grads(loss.backward(), &model);
            if cfg.no_decay_act && cfg.weight_decay > 0.0 {
                add_weight_decay(&model, &mut grads, cfg.weight_decay);
            }
            model = optim.step(lr, model, grads);
            bar.inc(1);
            if s % 20 == 0 {
                bar.set_message(format!(
                    "loss {:.4} acc {:.2}%",
                    loss_sum / (s + 1) as f64,
                    100.0 * correct as f64 / seen as f64
                ));
            }
        }
        bar.finish_and_clear();
        let train_secs = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let (test_loss, test_acc, oor, max_abs) =
            evaluate(&model, &test_ds, cfg.data, cfg.safe_range, &base);
        let m = EpochMetrics {
            epoch,
            lr,
            train_loss: loss_sum / steps as f64,
            train_acc: 100.0 * correct as f64 / seen.max(1) as f64,
            test_loss,
            test_acc,
            oor_frac: oor,
            max_abs,
            penalty: pen_sum / steps as f64,
            train_secs,
            eval_secs: t1.elapsed().as_secs_f64(),
        };
        if cfg.progress {
            eprintln!(
                "epoch {:>3}: lr {:.5} train loss {:.4} acc {:.2}% | test loss {:.4} acc {:.2}% | oor {:.2e} max|x| {:.2} | {:.1}s",
                epoch + 1,
                m.lr,
                m.train_loss,
                m.train_acc,
                m.test_loss,
                m.test_acc,
                m.oor_frac,
                m.max_abs,
                m.train_secs
            );
        }
        report.epochs.push(m);
        if let Some(p) = &report.checkpoint {
            save_checkpoint(&model, p)?;
        }
        if let Some(p) = &report.metrics_csv {
            crate::report::write_csv(&report.epochs, p)?;
        }
        if let Some(p) = &report.plot {
            crate::report::write_svg(
                &report.epochs,
                p,
                &format!(
                    "{} {} on {}",
                    cfg.net.display_name(),
                    if cfg.arch.is_some() { "searched" } else { cfg.act.name() },
                    cfg.data.display_name()
                ),
            )?;
        }
    }
    report.test_accuracy = report.epochs.last().map_or(0.0, |m| m.test_acc);
    report.secs_per_epoch =
        report.epochs.iter().map(|m| m.train_secs).sum::<f64>() / report.epochs.len() as f64;
    if let Some(out) = &cfg.out {
        let card = crate::export::card_for(cfg, &report);
        crate::export::export(&model, cfg, Some(card), out)?;
        report.model_file = Some(out.clone());
    }
    Ok(report)
}

/// Adds L2 weight decay `wd * p` to the gradient of every float parameter of `model` except the
/// activation coefficients (parameters of an `X2Act` or `PolyKerv` module): the same update as
/// burn's `WeightDecayConfig` (decay added to the gradient before momentum), restricted to the
/// conv / linear / batch-norm parameters. Used by [`TrainConfig::no_decay_act`].
fn add_weight_decay<M: Module>(model: &M, grads: &mut GradientsParams, wd: f64) {
    struct Decay<'a> {
        grads: &'a mut GradientsParams,
        wd: f64,
        /// Depth of nested activation modules currently entered.
        in_act: usize,
    }
    impl burn::module::ModuleVisitor for Decay<'_> {
        fn enter_module(&mut self, _name: &str, container_type: &str) {
            if is_act_module(container_type) {
                self.in_act += 1;
            }
        }
        fn exit_module(&mut self, _name: &str, container_type: &str) {
            if is_act_module(container_type) {
                self.in_act -= 1;
            }
        }
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if self.in_act > 0 {
                return;
            }
            if let Some(g) = self.grads.remove::<D>(param.id) {
                let decay = param.val().inner().mul_scalar(self.wd);
                self.grads.register(param.id, g.add(decay));
            }
        }
    }
    fn is_act_module(container_type: &str) -> bool {
        matches!(container_type, "Struct:X2Act" | "Struct:PolyKerv")
    }
    model.visit(&mut Decay { grads, wd, in_act: 0 });
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::{ModuleVisitor, Param, ParamId};

    /// Registers a zero gradient for every float parameter and records `(id, rank)`.
    struct ZeroGrads<'a>(&'a mut GradientsParams, Vec<ParamId>);
    impl ModuleVisitor for ZeroGrads<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.register(param.id, param.val().zeros_like());
            self.1.push(param.id);
        }
    }

    /// `--act pillar` (the and PILLAR's name) selects the same activation as `--act poly`.
    #[test]
    fn act_pillar_is_poly() {
        use clap::ValueEnum;
        assert_eq!(ActKind::from_str("pillar", false), Ok(ActKind::Poly));
        assert_eq!(ActKind::from_str("poly", false), Ok(ActKind::Poly));
        assert!(ActKind::from_str("pilar", false).is_err());
    }

    /// With `no_decay_act`, the decay term `wd * p` reaches every conv / linear / batch-norm
    /// parameter and no X2act coefficient.
    #[test]
    fn weight_decay_skips_exactly_the_x2act_coefficients() {
        let cfg = TrainConfig { act: ActKind::X2act, width: 0.5, ..TrainConfig::default() };
        let dev = device(DeviceKind::Flex).unwrap();
        let net = build_model(&cfg, &dev).unwrap();
        let mut grads = GradientsParams::new();
        let mut zero = ZeroGrads(&mut grads, vec![]);
        net.visit(&mut zero);
        let all = zero.1;
        add_weight_decay(&net, &mut grads, 1.0);
        let mut act_ids = vec![];
        for u in net.pre.iter().chain(&net.post) {
            if let Some(x2) = u.act.as_ref().and_then(|a| a.x2.as_ref()) {
                act_ids.extend([x2.w0.id, x2.w1.id, x2.b.id]);
            }
            if let Some(conv) = &u.conv {
                let g: Tensor<4> = grads.get(conv.weight.id).unwrap();
                let w = conv.weight.val();
                assert_eq!(g.into_data(), w.into_data(), "conv weight gets wd * w");
            }
        }
        assert!(act_ids.len() >= 6, "NET-M has X2act sites");
        for id in &act_ids {
            let g: Tensor<1> = grads.get(*id).unwrap();
            let m: f32 = g.abs().max().into_scalar();
            assert_eq!(m, 0.0, "X2act coefficient must not be decayed");
        }
        let decayed = all.iter().filter(|id| !act_ids.contains(id)).count();
        assert!(decayed > act_ids.len());
    }
}
