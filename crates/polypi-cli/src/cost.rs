//! `polypi cost`: predicted latency, bytes and rounds of a private inference per layer, from the
//! cost model (no protocol is run), on a hardware profile (cpu calibrated here, fpga, pasnet)
//! and a link.

use crate::common::load_model;
use anyhow::{Context, Result};
use clap::Args;
use polypi_core::cost::predict;
use polypi_core::cost::profile::Profile;
use polypi_core::model::compile::compile;
use polypi_core::model::zoo::{self, Act, Pool, RefNet};
use polypi_core::net::LinkModel;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `polypi cost`.
#[derive(Args, Debug)]
pub struct CostArgs {
    /// A model file (default: a reference network, see --net/--act).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Reference network when no --model: NET-M, NET-C, NET-R18.
    #[arg(long, default_value = "NET-M")]
    pub net: RefNet,
    /// Activation of the reference network: relu, x2, square, pillar, pkn.
    #[arg(long, default_value = "square")]
    pub act: Act,
    /// Pooling of the reference network: avg or max.
    #[arg(long, default_value = "avg")]
    pub pool: Pool,
    /// Profile: cpu (calibrated now), cpu:FILE, fpga, fpga:FILE, pasnet.
    #[arg(long, default_value = "cpu")]
    pub profile: String,
    /// Link: none, lan, wan, <x>mbit:<y>ms.
    #[arg(long, default_value = "none")]
    pub link: LinkModel,
    /// Samples per inference.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub poly: crate::common::PolyProtocolArg,
    /// With two-party, also the dealer-free preprocessing's bytes per layer (exact, from the HE
    /// packings; docs/two-party.md).
    #[command(flatten)]
    pub pre: crate::common::PreprocessingArg,
}

/// Runs `polypi cost`.
pub fn run(a: CostArgs) -> Result<ExitCode> {
    let mut plan = match &a.model {
        Some(p) => load_model(p)?.plan,
        None => compile(&zoo::build(a.net, a.act, a.pool, 1.0, 1)?)?,
    };
    plan.poly_protocol = a.poly.poly_protocol;
    let profile = Profile::parse(&a.profile).context("bad --profile")?;
    let report = predict(&plan, a.batch, &profile, &a.link).context("cost model failed")?;
    if a.pre.preprocessing == crate::common::Preprocessing::TwoParty {
        return two_party(&plan, &a, &report);
    }
    if a.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.table());
    }
    Ok(ExitCode::SUCCESS)
}

/// `--preprocessing two-party`: the cost report, then the two-party preprocessing bytes per
/// layer and of the session setup (JSON: `{"cost": .., "two_party": {"layers": [{"name",
/// "bytes"}], "total_bytes", "setup_bytes"}}`).
fn two_party(
    plan: &polypi_core::model::Plan,
    a: &CostArgs,
    report: &polypi_core::cost::CostReport,
) -> Result<ExitCode> {
    use polypi_core::offline::two_party::{preprocessing_bytes, setup_bytes};
    let layers = preprocessing_bytes(plan, a.batch).context("two-party preprocessing")?;
    let total: u64 = layers.iter().map(|(_, b)| b).sum();
    let setup = setup_bytes(plan)?;
    if a.json {
        let layers: Vec<serde_json::Value> =
            layers.iter().map(|(n, b)| serde_json::json!({ "name": n, "bytes": b })).collect();
        let cost: serde_json::Value = serde_json::from_str(&report.to_json())?;
        let tp =
            serde_json::json!({ "layers": layers, "total_bytes": total, "setup_bytes": setup });
        println!("{}", serde_json::json!({ "cost": cost, "two_party": tp }));
    } else {
        print!("{}", report.table());
        println!("two-party preprocessing (no dealer), batch {}:", a.batch);
        println!("{:<18} {:>14}", "layer", "bytes");
        for (n, b) in layers.iter().filter(|(_, b)| *b > 0) {
            println!("{n:<18} {b:>14}");
        }
        println!(
            "total {:.3} MB per inference, plus {:.3} MB once per session (public keys)",
            total as f64 / 1e6,
            setup as f64 / 1e6
        );
    }
    Ok(ExitCode::SUCCESS)
}
