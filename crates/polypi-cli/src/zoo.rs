//! `polypi zoo`: writes a network of the zoo (the reference networks NET-M, NET-C, NET-R18 and
//! the seeds' networks: ImageNet ResNet-18/34/50, MobileNetV2, CIFAR ResNet-32/110, VGG-16-BN,
//! PKR-18, PKV-16, PKA-8) with deterministic random weights, for tests and benchmarks; with
//! `--describe`, prints the architecture description (JSON) a trainer builds the same shapes from.

use anyhow::{Context, Result};
use clap::Args;
use polypi_core::model::arch::Stem;
use polypi_core::model::zoo::{self, Act, Pool, RefNet, ZooOpts};
use std::path::PathBuf;
use std::process::ExitCode;

/// The network choice shared by `polypi zoo` and `polypi bench`.
#[derive(Args, Debug, Clone)]
pub struct NetArgs {
    /// Multiplier of every hidden channel count (1.0 = the published size; e.g. 0.125 for a
    /// small test version).
    #[arg(long, default_value_t = 1.0)]
    pub width: f32,
    /// Stem of resnet18/34/50: imagenet (conv7x7/s2 + 3x3/s2/p1 pool, 3x224x224, 1000 classes;
    /// default) or cifar (conv3x3, 3x32x32, 10 classes).
    #[arg(long)]
    pub stem: Option<Stem>,
    /// Class count (default: the network's: 10 for CIFAR / MNIST, 1000 for ImageNet).
    #[arg(long)]
    pub classes: Option<usize>,
    /// Input height = width in pixels (default: the network's, 224 for ImageNet), e.g. 32 or 64
    /// for a quick run of an ImageNet network.
    #[arg(long)]
    pub input_size: Option<usize>,
}

impl NetArgs {
    /// The zoo options of these arguments with activation `act`, pooling `pool` and `seed`.
    pub fn opts(&self, act: Act, pool: Pool, seed: u64) -> ZooOpts {
        ZooOpts {
            act,
            pool,
            width: self.width,
            seed,
            stem: self.stem,
            classes: self.classes,
            input_size: self.input_size,
        }
    }
}

/// Arguments of `polypi zoo`.
#[derive(Args, Debug)]
pub struct ZooArgs {
    /// Network: NET-M (MNIST 1x28x28), NET-C (CIFAR 3x32x32), NET-R18 (CIFAR ResNet-18),
    /// resnet18, resnet34, resnet50, mobilenetv2 (ImageNet), resnet32, resnet110, vgg16 (VGG-16-BN),
    /// pkr18, pkv16, pka8 (PolyKervNets; CIFAR).
    #[arg(long)]
    pub net: RefNet,
    /// Activation: relu, x2 (X2act), square, pillar, pkn, poly<d> (degree d in 2..=8).
    #[arg(long)]
    pub act: Act,
    /// Pooling at the pooling sites (NET-M/NET-C's 2x2 pools, the ImageNet stem's 3x3/s2/p1 pool,
    /// VGG-16's pools): avg or max.
    #[arg(long, default_value = "avg")]
    pub pool: Pool,
    #[command(flatten)]
    pub shape: NetArgs,
    /// Seed of the random weights (same seed, same file).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the architecture description as JSON on stdout instead of writing a model file.
    #[arg(long)]
    pub describe: bool,
    /// Output model file (.safetensors).
    #[arg(long, required_unless_present = "describe")]
    pub out: Option<PathBuf>,
}

/// Runs `polypi zoo`.
pub fn run(a: ZooArgs) -> Result<ExitCode> {
    let (net, act, pool) = (a.net, a.act, a.pool);
    if a.describe {
        let arch = zoo::describe(net, a.shape.stem, a.shape.classes)?;
        println!("{}", serde_json::to_string_pretty(&arch)?);
        return Ok(ExitCode::SUCCESS);
    }
    let out = a.out.expect("clap requires --out without --describe");
    let file = zoo::build_with(net, &a.shape.opts(act, pool, a.seed))
        .with_context(|| format!("cannot build {net} with {act}"))?;
    file.save(&out).with_context(|| {
        format!("cannot write {} (does its folder exist and is it writable?)", out.display())
    })?;
    println!(
        "wrote {} ({net}, {act}, {} values, seed {})",
        out.display(),
        file.num_values(),
        a.seed
    );
    Ok(ExitCode::SUCCESS)
}
