//! `polypi-train`: command-line front end of [`polypi_train::train`].
//!
//! Example: `polypi-train --net net-m --act x2act --data fashion-mnist --data-dir data/fetched
//! --epochs 10 --out models/x.safetensors`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use polypi_train::{ActKind, DatasetKind, DeviceKind, NetKind, OptimKind, PoolKind, TrainConfig};

/// Train a polynomial-activation network with burn and export it as a polypi model file.
#[derive(Parser, Debug)]
#[command(name = "polypi-train", version)]
struct Args {
    /// Network (reference.md).
    #[arg(long, value_enum, default_value = "net-m")]
    net: NetKind,
    /// Activation at every ACT site.
    #[arg(long, value_enum, default_value = "x2act")]
    act: ActKind,
    /// Width multiplier on hidden channels.
    #[arg(long, default_value_t = 1.0)]
    width: f32,
    /// Leave out batch norm after convolutions.
    #[arg(long)]
    no_batch_norm: bool,
    /// Pooling kind (NET-M, NET-C).
    #[arg(long, value_enum, default_value = "avg")]
    pool: PoolKind,
    /// X2Act weight scale s.
    #[arg(long, default_value_t = 1.0)]
    x2_scale: f32,
    /// Dataset.
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    data: DatasetKind,
    /// Dataset folder (data/fetched for MNIST / Fashion-MNIST; the CIFAR folder for cifar10,
    /// default ../shared/data/cifar10-subset).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Use only the first N training images.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Use only the first N test images.
    #[arg(long)]
    test_limit: Option<usize>,
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
}

fn main() -> Result<()> {
    let a = Args::parse();
    let data_dir = a.data_dir.unwrap_or_else(|| match a.data {
        DatasetKind::Cifar10 => polypi_train::data::default_cifar_dir(),
        _ => PathBuf::from("data/fetched"),
    });
    let cfg = TrainConfig {
        net: a.net,
        act: a.act,
        width: a.width,
        batch_norm: !a.no_batch_norm,
        pool: a.pool,
        x2_scale: a.x2_scale,
        data: a.data,
        data_dir,
        train_limit: a.train_limit,
        test_limit: a.test_limit,
        augment: a.augment,
        epochs: a.epochs,
        batch_size: a.batch_size,
        optimizer: a.optimizer,
        lr: a.lr,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
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
        progress: !a.quiet,
        device: a.device,
        command: std::env::args().collect::<Vec<_>>().join(" "),
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
