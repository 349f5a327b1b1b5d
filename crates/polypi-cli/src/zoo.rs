//! `polypi zoo`: writes a reference network (NET-M, NET-C, NET-R18) with deterministic random
//! weights, for tests and benchmarks.

use anyhow::{Context, Result};
use clap::Args;
use polypi_core::model::zoo::{self, Act, Pool, RefNet};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `polypi zoo`.
#[derive(Args, Debug)]
pub struct ZooArgs {
    /// Network: NET-M (MNIST 1x28x28), NET-C (CIFAR 3x32x32), NET-R18 (CIFAR ResNet-18).
    #[arg(long)]
    pub net: RefNet,
    /// Activation: relu, x2 (X2act), square, pillar, pkn.
    #[arg(long)]
    pub act: Act,
    /// Pooling at NET-M/NET-C's 2x2 pooling sites: avg or max.
    #[arg(long, default_value = "avg")]
    pub pool: Pool,
    /// Multiplier of every hidden channel count (1.0 = the reference size).
    #[arg(long, default_value_t = 1.0)]
    pub width: f32,
    /// Seed of the random weights (same seed, same file).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output model file (.safetensors).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `polypi zoo`.
pub fn run(a: ZooArgs) -> Result<ExitCode> {
    let (net, act, pool) = (a.net, a.act, a.pool);
    let file = zoo::build(net, act, pool, a.width, a.seed)
        .with_context(|| format!("cannot build {net} with {act}"))?;
    file.save(&a.out).with_context(|| {
        format!("cannot write {} (does its folder exist and is it writable?)", a.out.display())
    })?;
    println!(
        "wrote {} ({net}, {act}, {} values, seed {})",
        a.out.display(),
        file.num_values(),
        a.seed
    );
    Ok(ExitCode::SUCCESS)
}
