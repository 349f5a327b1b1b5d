//! `polypi-train`: command-line front end of [`polypi_train::train`] (flat arguments, or the
//! `train` subcommand), of the architecture search (`search`) and of sweep re-measurement
//! (`measure`).
//!
//! Examples: `polypi-train --net net-m --act x2act --data fashion-mnist --data-dir data/fetched
//! --epochs 10 --out models/x.safetensors`; `polypi-train search --net net-m --profile pasnet
//! --sweep 1e-7,1e-6,1e-5 --search-epochs 2 --epochs 5 --out runs/search-netm`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use polypi_core::net::LinkModel;
use polypi_train::search::SearchConfig;
use polypi_train::{ActKind, DatasetKind, DeviceKind, NetKind, OptimKind, PoolKind, TrainConfig};

/// Train a polynomial-activation network with burn and export it as a polypi model file, or
/// search per-site ReLU/X2act and MaxPool/AvgPool choices under a latency budget.
#[derive(Parser, Debug)]
#[command(name = "polypi-train", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    train: Args,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Train one network (same arguments as without a subcommand).
    Train(Args),
    /// Latency-aware architecture search (PASNet / PolyMPCNet): supernet, bilevel search,
    /// argmax, retraining, export; `--sweep` runs several lambdas plus the references.
    Search(SearchArgs),
    /// Measures the private latency of every model of a sweep folder with the engine and
    /// rewrites its table and Pareto plot.
    Measure(MeasureArgs),
    /// Rewrites the table (sweep.md, sweep.csv) and Pareto plot of a sweep folder from its
    /// sweep.json, measuring nothing.
    Report(ReportArgs),
    /// PILLAR's fitter: the degree-D polynomial with coefficients n / 2^P (|c| <= 1/2) closest to
    /// ReLU in least squares on [-R, R] (grid 0.01); prints the coefficients, lowest degree first.
    FitPoly(FitPolyArgs),
}

/// Arguments of `polypi-train fit-poly`.
#[derive(clap::Args, Debug)]
struct FitPolyArgs {
    /// Degree D of the polynomial.
    #[arg(long, default_value_t = 4)]
    degree: usize,
    /// Precision P: coefficients are integers divided by 2^P (PILLAR: 10).
    #[arg(long, default_value_t = 10)]
    precision_bits: u32,
    /// Half-width R of the fitting interval [-R, R] (PILLAR: 5).
    #[arg(long, default_value_t = 5.0)]
    range: f64,
    /// Grid step (PILLAR: 0.01).
    #[arg(long, default_value_t = 0.01)]
    step: f64,
    /// Print JSON (`coefficients`, lowest degree first; `numerators`; errors) instead of text.
    #[arg(long)]
    json: bool,
}

/// Arguments of `polypi-train report`.
#[derive(clap::Args, Debug)]
struct ReportArgs {
    /// Sweep folder (with sweep.json).
    #[arg(long)]
    dir: PathBuf,
}

/// Dataset arguments shared by `train` and `search`.
#[derive(clap::Args, Debug)]
struct DataArgs {
    /// Dataset.
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    data: DatasetKind,
    /// Dataset folder (default: data/fetched for MNIST / Fashion-MNIST,
    /// data/fetched/cifar10-subset for cifar10; scripts/fetch-data.sh fills both).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Use only the first N training images (for search: search and retraining).
    #[arg(long)]
    train_limit: Option<usize>,
    /// Use only the first N test images.
    #[arg(long)]
    test_limit: Option<usize>,
}

impl DataArgs {
    /// `--data-dir`, or the dataset's default folder.
    fn dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| match self.data {
            DatasetKind::Cifar10 => polypi_train::data::default_cifar_dir(),
            _ => PathBuf::from("data/fetched"),
        })
    }
}

/// Arguments of `polypi-train search`.
#[derive(clap::Args, Debug)]
struct SearchArgs {
    /// Network.
    #[arg(long, value_enum, default_value = "net-m")]
    net: NetKind,
    #[command(flatten)]
    data: DataArgs,
    /// Width multiplier.
    #[arg(long, default_value_t = 1.0)]
    width: f32,
    /// Stem of resnet18/34/50: imagenet (default; its 3x3/s2/p1 pool is PASNet's stem pooling
    /// gate, max vs avg) or cifar (no pooling site).
    #[arg(long, value_parser = parse_stem)]
    stem: Option<polypi_core::model::arch::Stem>,
    /// X2Act weight scale s (default: the network's, PASNet's 0.1 for resnet50, else 1).
    #[arg(long)]
    x2_scale: Option<f32>,
    /// X2act with one coefficient set per channel on the networks where PASNet's one set per
    /// site is the default (resnet18/34/50/32/110, mobilenetv2).
    #[arg(long)]
    x2act_per_channel: bool,
    /// Fine-tune the derived network from the supernet's weights (PASNet) instead of
    /// retraining it from scratch.
    #[arg(long)]
    finetune: bool,
    /// Latency profile: pasnet (PASNet's table), cpu (calibrated now), cpu:FILE, fpga, fpga:FILE.
    #[arg(long, default_value = "pasnet")]
    profile: String,
    /// Link of the cpu / fpga profile: none, lan, wan, <x>mbit:<y>ms.
    #[arg(long, default_value = "none")]
    link: String,
    /// Latency weight lambda (per profile time unit).
    #[arg(long, default_value_t = 1e-6)]
    lambda: f64,
    /// Comma-separated lambdas: one search + retraining each, plus all-ReLU and all-X2act
    /// references, a table and a Pareto plot.
    #[arg(long, value_delimiter = ',')]
    sweep: Option<Vec<f64>>,
    /// Skip the reference networks of a sweep.
    #[arg(long)]
    no_references: bool,
    /// With --sweep: train nothing, collect the points that separate runs wrote into --out
    /// (`search --lambda L --out <out>/lambda-<L>`; references `<out>/all-relu/model.safetensors`,
    /// `<out>/all-x2act/model.safetensors`) and write the table and plot.
    #[arg(long)]
    collect: bool,
    /// Search epochs (passes over the weight half of the training split).
    #[arg(long, default_value_t = 2)]
    search_epochs: usize,
    /// Retraining epochs of the derived network (0: search only).
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Search batch size.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Search weight learning rate (SGD, cosine to 0.001; PASNet 0.025).
    #[arg(long, default_value_t = 0.025)]
    w_lr: f64,
    /// Alpha learning rate (Adam; PASNet 3e-4).
    #[arg(long, default_value_t = 3e-4)]
    alpha_lr: f64,
    /// Retraining peak learning rate.
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Measure the private latency of every model on these links after training (e.g. none,wan).
    #[arg(long, value_delimiter = ',')]
    measure: Option<Vec<String>>,
    /// Inferences per measurement.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Device.
    #[arg(long, value_enum, default_value = "flex")]
    device: DeviceKind,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Output folder (arch.json, model.safetensors; per lambda in a sweep).
    #[arg(long)]
    out: PathBuf,
}

/// Arguments of `polypi-train measure`.
#[derive(clap::Args, Debug)]
struct MeasureArgs {
    /// Sweep folder (with sweep.json).
    #[arg(long)]
    dir: PathBuf,
    /// Links, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "none,wan")]
    links: Vec<String>,
    /// Inferences per measurement.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

/// Arguments of a training run.
#[derive(clap::Args, Debug)]
struct Args {
    /// Network: net-m, net-c, net-r18 (reference.md), or one of the seeds' networks built from
    /// the architecture description `polypi zoo` uses: resnet18, resnet34, resnet50 (--stem),
    /// resnet32, resnet110, vgg16 (VGG-16-BN), mobilenetv2, pkr18, pkv16, pka8.
    #[arg(long, value_enum, default_value = "net-m")]
    net: NetKind,
    /// Activation at every ACT site: relu, x2act, poly (PILLAR degree 4, or --pillar-degree),
    /// square (x^2), pkn, rpkn, react-pkn.
    #[arg(long, value_enum, default_value = "x2act")]
    act: ActKind,
    /// Width multiplier on hidden channels (rounded, at least 1: the rule of `polypi zoo
    /// --width`, so both build the same shapes).
    #[arg(long, default_value_t = 1.0)]
    width: f32,
    /// Stem of resnet18/34/50: imagenet (conv7x7/s2 + 3x3/s2/p1 pooling; default, as `polypi
    /// zoo`) or cifar (conv3x3/s1, no pooling).
    #[arg(long, value_parser = parse_stem)]
    stem: Option<polypi_core::model::arch::Stem>,
    /// Output classes (default: the dataset's class count).
    #[arg(long)]
    classes: Option<usize>,
    /// Leave out batch norm after convolutions (NET-M, NET-C).
    #[arg(long)]
    no_batch_norm: bool,
    /// Pooling at the pooling sites: NET-M / NET-C's 2x2 pools, the ImageNet stem's pool,
    /// VGG-16's pools (default: avg; max for the seeds' networks with --act relu).
    #[arg(long, value_enum)]
    pool: Option<PoolKind>,
    /// X2Act weight scale s (default: the network's, PASNet's 0.1 for resnet50, else 1).
    #[arg(long)]
    x2_scale: Option<f32>,
    /// X2act with one coefficient set per channel on the networks where PASNet's one set per
    /// site is the default (resnet18/34/50/32/110, mobilenetv2).
    #[arg(long, conflicts_with = "x2act_per_site")]
    x2act_per_channel: bool,
    /// PolyKerv init `C_P,A_P` for --act pkn/rpkn (default: the paper's, 1,1 / 0.47,0.009).
    #[arg(long, value_delimiter = ',')]
    kerv_init: Option<Vec<f32>>,
    /// NET-R18 with --act pkn|rpkn: `published` places the kervolutions as PolyKervNets' PKR-18
    /// (conv -> power -> BN -> dropout 0.2 at the stem, conv1 and 1x1 shortcuts; nothing after
    /// the add); `sites` (default) replaces every ReLU site.
    #[arg(long, value_enum, default_value = "sites")]
    pkn_layout: polypi_train::nets::PknLayout,
    /// With --data image-folder: images are resized and centre-cropped to SIZE x SIZE
    /// (torchvision's Resize(256) + CenterCrop(224), scaled).
    #[arg(long, default_value_t = 224)]
    image_size: usize,
    /// X2act with one scalar set (w0, w1, b) per site, as PASNet (default: one per channel, but
    /// one per site on resnet18/34/50/32/110 and mobilenetv2).
    #[arg(long)]
    x2act_per_site: bool,
    /// With --act poly: fit PILLAR's polynomial of this degree (`fit-poly`) instead of using the
    /// seed's cached degree 4.
    #[arg(long)]
    pillar_degree: Option<usize>,
    /// Precision P of the fitted polynomial (coefficients n / 2^P).
    #[arg(long, default_value_t = 10)]
    pillar_precision_bits: u32,
    /// Fitting interval [-R, R] of the fitted polynomial.
    #[arg(long, default_value_t = 5.0)]
    pillar_range: f64,
    #[command(flatten)]
    data: DataArgs,
    /// Force augmentation on/off (default: on for CIFAR-10).
    #[arg(long)]
    augment: Option<bool>,
    /// Epochs.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Optimiser.
    #[arg(long, value_enum, default_value = "sgd")]
    optimizer: OptimKind,
    /// Peak learning rate.
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Weight decay.
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    /// Exempt the activation coefficients (X2act w0/w1/b, PolyKerv c_p/a_p) from weight decay.
    #[arg(long)]
    no_decay_act: bool,
    /// Linear warm-up epochs (capped at epochs/4).
    #[arg(long, default_value_t = 5)]
    warmup_epochs: usize,
    /// Per-parameter gradient norm clip.
    #[arg(long)]
    grad_clip: Option<f32>,
    /// PILLAR train-time clip of polynomial inputs (default 5 for --act poly).
    #[arg(long)]
    poly_clip: Option<f32>,
    /// PILLAR range penalty coefficient (default 5e-5 for --act poly).
    #[arg(long)]
    penalty_coef: Option<f64>,
    /// Range penalty exponent.
    #[arg(long, default_value_t = 10.0)]
    penalty_gamma: f64,
    /// Range penalty range.
    #[arg(long, default_value_t = 4.8)]
    penalty_range: f64,
    /// Skip PILLAR's 4-epoch penalty warm-up.
    #[arg(long)]
    no_penalty_warmup: bool,
    /// Safe range for the out-of-range metric.
    #[arg(long, default_value_t = 5.0)]
    safe_range: f32,
    /// KD teacher: burn checkpoint (<stem>.ckpt.safetensors) of a ReLU run of the same net/width.
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// KD weight.
    #[arg(long, default_value_t = 0.5)]
    kd_alpha: f64,
    /// KD temperature.
    #[arg(long, default_value_t = 5.0)]
    kd_temperature: f64,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output model file (.safetensors); checkpoint, CSV and SVG are written next to it.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Resume from a burn checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Device.
    #[arg(long, value_enum, default_value = "flex")]
    device: DeviceKind,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Print the run report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Train a searched architecture: the `arch.json` written by `polypi-train search` (per-site
    /// relu / x2act and max / avg; overrides --act and --pool).
    #[arg(long)]
    arch: Option<PathBuf>,
    /// Start from this burn checkpoint of the network with X2act at every site, loaded before
    /// --arch is applied: the `supernet.ckpt.safetensors` of `polypi-train search` (PASNet's
    /// fine-tuning of the derived network from the supernet).
    #[arg(long, requires = "arch")]
    init_from: Option<PathBuf>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        None => train(cli.train),
        Some(Cmd::Train(a)) => train(a),
        Some(Cmd::Search(a)) => search(a),
        Some(Cmd::Measure(a)) => measure(a),
        Some(Cmd::Report(a)) => {
            let sw = polypi_train::sweep::load_sweep(&a.dir)?;
            polypi_train::sweep::write_reports(&sw, &a.dir)?;
            print!("{}", polypi_train::sweep::markdown(&sw));
            Ok(())
        }
        Some(Cmd::FitPoly(a)) => {
            let fit = polypi_train::polyfit::fit_relu(a.degree, a.precision_bits, a.range, a.step)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&fit)?);
            } else {
                let den = 1u64 << fit.precision_bits;
                let nums: Vec<String> = fit.numerators.iter().map(|n| n.to_string()).collect();
                println!(
                    "degree {} fit of ReLU on [-{r}, {r}] ({} points, step {}), coefficients / {den}, \
                     lowest degree first:",
                    fit.degree,
                    fit.points,
                    fit.step,
                    r = fit.range
                );
                println!("  numerators   [{}]", nums.join(", "));
                println!("  coefficients {:?}", fit.coefficients);
                println!(
                    "  squared error {:.6} (real least squares {:.6}), rms {:.6}, max |error| {:.6}",
                    fit.sse, fit.real_sse, fit.rmse, fit.max_abs_error
                );
            }
            Ok(())
        }
    }
}

fn parse_links(v: &[String]) -> Result<Vec<LinkModel>> {
    v.iter().map(|l| LinkModel::parse(l).with_context(|| format!("bad link '{l}'"))).collect()
}

fn search(a: SearchArgs) -> Result<()> {
    let cfg = SearchConfig {
        net: a.net,
        width: a.width,
        stem: a.stem,
        x2_scale: x2_scale_of(a.net, a.stem, a.x2_scale)?,
        x2act_per_site: a.net.x2act_per_site_default() && !a.x2act_per_channel,
        finetune: a.finetune,
        data: a.data.data,
        data_dir: a.data.dir(),
        train_limit: a.data.train_limit,
        test_limit: a.data.test_limit,
        profile: a.profile,
        link: a.link,
        lambda: a.lambda,
        search_epochs: a.search_epochs,
        batch_size: a.batch_size,
        w_lr: a.w_lr,
        alpha_lr: a.alpha_lr,
        epochs: a.epochs,
        lr: a.lr,
        seed: a.seed,
        progress: !a.quiet,
        device: a.device,
        ..SearchConfig::default()
    };
    let links = parse_links(a.measure.as_deref().unwrap_or(&[]))?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    match a.sweep {
        Some(ls) => {
            if ls.is_empty() {
                bail!("--sweep needs at least one lambda");
            }
            let mut sw = if a.collect {
                polypi_train::sweep::collect_sweep(&cfg, &ls, !a.no_references, &a.out)?
            } else {
                polypi_train::sweep::run_sweep(&cfg, &ls, !a.no_references, &a.out, &command)?
            };
            if !links.is_empty() {
                polypi_train::sweep::measure_points(&mut sw, &links, a.runs)?;
                polypi_train::sweep::write_reports(&sw, &a.out)?;
            }
            print!("{}", polypi_train::sweep::markdown(&sw));
            eprintln!("sweep written to {}", a.out.display());
        }
        None => {
            let (d, acc, model) = polypi_train::sweep::search_and_retrain(&cfg, &a.out, &command)?;
            eprintln!(
                "done: {} predicted {:.4e} {}, test accuracy {:.2}%{}",
                d.arch.summary(),
                d.predicted_latency,
                d.time_unit,
                acc,
                if cfg.epochs > 0 { format!(", model {}", model.display()) } else { String::new() }
            );
            println!("{}", serde_json::to_string_pretty(&d)?);
        }
    }
    Ok(())
}

fn measure(a: MeasureArgs) -> Result<()> {
    let links = parse_links(&a.links)?;
    let mut sw = polypi_train::sweep::load_sweep(&a.dir)?;
    polypi_train::sweep::measure_points(&mut sw, &links, a.runs)?;
    polypi_train::sweep::write_reports(&sw, &a.dir)?;
    print!("{}", polypi_train::sweep::markdown(&sw));
    Ok(())
}

/// `--stem`: imagenet or cifar.
fn parse_stem(s: &str) -> Result<polypi_core::model::arch::Stem, String> {
    s.parse().map_err(|e: polypi_core::Error| e.to_string())
}

/// X2act's scale `s`: `given`, else the description's (PASNet's 0.1 for ResNet-50), else 1.
fn x2_scale_of(
    net: NetKind,
    stem: Option<polypi_core::model::arch::Stem>,
    given: Option<f32>,
) -> Result<f32> {
    Ok(match (given, net.ref_net()) {
        (Some(s), _) => s,
        (None, Some(r)) if net.from_description() => {
            polypi_core::model::zoo::describe(r, stem, None)?.x2act_scale
        }
        _ => 1.0,
    })
}

fn train(a: Args) -> Result<()> {
    let described = a.net.from_description();
    let x2_scale = x2_scale_of(a.net, a.stem, a.x2_scale)?;
    let pool = a.pool.unwrap_or(if described && a.act == ActKind::Relu {
        PoolKind::Max
    } else {
        PoolKind::Avg
    });
    let cfg = TrainConfig {
        net: a.net,
        act: a.act,
        width: a.width,
        batch_norm: !a.no_batch_norm,
        pool,
        x2_scale,
        stem: a.stem,
        classes: a.classes,
        kerv_init: match a.kerv_init.as_deref() {
            None => None,
            Some(&[c_p, a_p]) => Some((c_p, a_p)),
            Some(v) => anyhow::bail!("--kerv-init takes two numbers C_P,A_P, got {v:?}"),
        },
        x2act_per_site: a.x2act_per_site
            || (a.net.x2act_per_site_default() && !a.x2act_per_channel),
        pkn_layout: a.pkn_layout,
        pillar: match a.pillar_degree {
            None => None,
            Some(_) if a.act != ActKind::Poly => {
                anyhow::bail!("--pillar-degree needs --act poly (PILLAR's polynomial activation)")
            }
            Some(d) => Some(
                polypi_train::nets::PillarSpec::fit(d, a.pillar_precision_bits, a.pillar_range)
                    .context("--pillar-degree")?,
            ),
        },
        image_size: a.image_size,
        data: a.data.data,
        data_dir: a.data.dir(),
        train_limit: a.data.train_limit,
        test_limit: a.data.test_limit,
        augment: a.augment,
        epochs: a.epochs,
        batch_size: a.batch_size,
        optimizer: a.optimizer,
        lr: a.lr,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        no_decay_act: a.no_decay_act,
        warmup_epochs: a.warmup_epochs,
        grad_clip: a.grad_clip,
        poly_clip: a.poly_clip,
        penalty_coef: a.penalty_coef,
        penalty_gamma: a.penalty_gamma,
        penalty_range: a.penalty_range,
        penalty_warmup: !a.no_penalty_warmup,
        safe_range: a.safe_range,
        teacher: a.teacher,
        kd_alpha: a.kd_alpha,
        kd_temperature: a.kd_temperature,
        seed: a.seed,
        out: a.out,
        resume: a.resume,
        init_from: a.init_from,
        progress: !a.quiet,
        device: a.device,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        arch: match &a.arch {
            Some(p) => {
                let d = polypi_train::search::DerivedArch::load(p)?;
                if d.net != a.net {
                    bail!(
                        "{} was searched for {}, not {}",
                        p.display(),
                        d.net.display_name(),
                        a.net.display_name()
                    );
                }
                if d.stem != a.stem {
                    bail!(
                        "{} was searched with stem {:?}, not {:?} (--stem)",
                        p.display(),
                        d.stem,
                        a.stem
                    );
                }
                Some(d.arch)
            }
            None => None,
        },
        ..TrainConfig::default()
    };
    let r = polypi_train::train(&cfg)?;
    eprintln!(
        "done: test accuracy {:.2}% ({} train / {} test), {:.1} s per epoch{}",
        r.test_accuracy,
        r.train_size,
        r.test_size,
        r.secs_per_epoch,
        r.model_file.as_ref().map(|p| format!(", model {}", p.display())).unwrap_or_default()
    );
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    }
    Ok(())
}
