//! `polypi bench`: private inference of a reference network (random weights) or a model file,
//! measured in this process (server, client and dealer threads over loopback TCP), with optional
//! link emulation; `--compare` runs the ReLU and the polynomial variant of the same network.

use crate::common::load_model;
use anyhow::{Context, Result};
use clap::Args;
use polypi_core::engine::bench::{bench_local_mode, poly_plan, BenchSummary};
use polypi_core::model::compile::compile;
use polypi_core::model::zoo::{self, Act, Pool, RefNet};
use polypi_core::model::Plan;
use polypi_core::net::LinkModel;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `polypi bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Network of the zoo (random weights): NET-M, NET-C, NET-R18, resnet18, resnet34, resnet50,
    /// mobilenetv2, resnet32, resnet110, vgg16, pkr18, pkv16, pka8.
    #[arg(long, default_value = "NET-M")]
    pub net: RefNet,
    /// Activation of the network: relu, x2 (X2act), square, pillar, pkn, poly<d>.
    #[arg(long, default_value = "square")]
    pub act: Act,
    /// Pooling at the pooling sites (NET-M/NET-C, the ImageNet stem, VGG-16): avg or max (max
    /// needs the ReLU comparison protocol).
    #[arg(long, default_value = "avg")]
    pub pool: Pool,
    #[command(flatten)]
    pub shape: crate::zoo::NetArgs,
    /// Polynomial microbenchmark instead of a network: one polynomial layer of this degree (all
    /// coefficients non-zero) on `--elements` inputs uniform in [-1, 1].
    #[arg(long)]
    pub poly_degree: Option<usize>,
    /// Elements of the polynomial microbenchmark (`--poly-degree`).
    #[arg(long, default_value_t = 65536)]
    pub elements: usize,
    /// A trained model file instead of a reference network.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Samples per inference.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Link between server and client: none, lan (3 Gbit/s, 0.3 ms RTT), wan (400 Mbit/s, 40 ms
    /// RTT) or <x>mbit:<y>ms.
    #[arg(long, default_value = "none")]
    pub link: LinkModel,
    /// Channels between the three in-process roles: tcp (loopback), tls (TLS 1.3 on loopback:
    /// the cost of encrypted links) or mem.
    #[arg(long, value_enum, default_value = "tcp")]
    pub transport: crate::infer::TransportArg,
    /// Inferences measured (one session; median/min/max reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Also run the ReLU variant (and ReLU + max-pool for NET-M/NET-C) of the same network and
    /// print a comparison table.
    #[arg(long)]
    pub compare: bool,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub poly: crate::common::PolyProtocolArg,
    #[command(flatten)]
    pub pre: crate::common::PreprocessingArg,
}

fn reference(net: RefNet, act: Act, pool: Pool, shape: &crate::zoo::NetArgs) -> Result<Plan> {
    let file = zoo::build_with(net, &shape.opts(act, pool, 1))
        .with_context(|| format!("cannot build {net} {act}"))?;
    Ok(compile(&file)?)
}

fn run_one(name: &str, plan: &Plan, a: &BenchArgs) -> Result<BenchSummary> {
    eprintln!(
        "bench {name}: batch {}, link {}, transport {:?}, {} runs, polynomial protocol {}, \
         preprocessing {:?} ...",
        a.batch, a.link, a.transport, a.runs, plan.poly_protocol, a.pre.preprocessing
    );
    let two_party = a.pre.preprocessing == crate::common::Preprocessing::TwoParty;
    bench_local_mode(plan, a.batch, a.runs, a.transport.transport(), a.link, 7, two_party)
        .with_context(|| format!("benchmark of {name} failed"))
}

fn row(name: &str, s: &BenchSummary) -> String {
    format!(
        "{:<28} {:>8.3} {:>10.2} {:>10.2} {:>10.2} {:>9.2} {:>7.2} {:>10.3} {:>10.3} {:>7} {:>10.3} {:>9}",
        name,
        s.server_macs as f64 / 1e9,
        s.online_ms.median,
        s.online_ms.min,
        s.online_ms.max,
        s.gemm_bound_ms,
        s.online_ms.median / s.gemm_bound_ms.max(1e-9),
        (s.bytes_client_to_server + s.bytes_server_to_client) as f64 / 1e6,
        s.dealer_bytes as f64 / 1e6,
        s.rounds,
        s.offline_ms.median,
        s.peak_rss_bytes
            .map(|b| format!("{:.0}", b as f64 / 1048576.0))
            .unwrap_or_else(|| "-".into())
    )
}

/// Runs `polypi bench`.
pub fn run(a: BenchArgs) -> Result<ExitCode> {
    let mut cases: Vec<(String, Plan)> = Vec::new();
    if let Some(d) = a.poly_degree {
        let plan = poly_plan(a.elements, d, a.poly.poly_protocol)?;
        cases.push((format!("poly degree {d}, {} elements", a.elements), plan));
    } else if let Some(path) = &a.model {
        let m = load_model(path)?;
        cases.push((path.display().to_string(), m.plan));
    } else {
        cases.push((
            format!("{} {}{}", a.net, a.act, if a.pool == Pool::Max { "+maxpool" } else { "" }),
            reference(a.net, a.act, a.pool, &a.shape)?,
        ));
        if a.compare && a.act != Act::Relu {
            cases.push((
                format!("{} relu", a.net),
                reference(a.net, Act::Relu, Pool::Avg, &a.shape)?,
            ));
            if a.net != RefNet::NetR18 {
                cases.push((
                    format!("{} relu+maxpool", a.net),
                    reference(a.net, Act::Relu, Pool::Max, &a.shape)?,
                ));
            }
        }
    }
    for (_, plan) in &mut cases {
        plan.poly_protocol = a.poly.poly_protocol;
    }
    let mut results = Vec::new();
    for (name, plan) in &cases {
        results.push((name.clone(), run_one(name, plan, &a)?));
    }
    if a.json {
        let v: Vec<_> =
            results.iter().map(|(n, s)| serde_json::json!({ "name": n, "summary": s })).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (name, s) in &results {
        println!(
            "== {name} (batch {}, link {}, polynomial protocol {}) — per-layer breakdown of the median run ==",
            s.batch, s.link, a.poly.poly_protocol
        );
        print!("{}", s.median_report.table());
        println!(
            "setup (once per session): {:.1} ms, {:.3} MB\n",
            s.setup_ms,
            s.setup_bytes as f64 / 1e6
        );
    }
    if let Some((_, s)) = results.first() {
        println!(
            "GEMM kernel {} (POLYPI_GEMM_KERNEL=avx512|avx2|scalar forces one), measured peak \
             {:.2} GMAC/s on {} threads; bound = server MACs / peak",
            s.gemm_kernel,
            s.gemm_peak_macs_per_s / 1e9,
            s.gemm_threads
        );
    }
    println!(
        "{:<28} {:>8} {:>10} {:>10} {:>10} {:>9} {:>7} {:>10} {:>10} {:>7} {:>10} {:>9}",
        "network",
        "GMAC",
        "online ms",
        "min",
        "max",
        "bound ms",
        "/bound",
        "online MB",
        "dealer MB",
        "rounds",
        "offline ms",
        "RSS MiB"
    );
    for (name, s) in &results {
        println!("{}", row(name, s));
    }
    if results.len() > 1 {
        let base = &results[0].1;
        for (name, s) in &results[1..] {
            println!(
                "{} / {}: {:.1}x online time, {:.1}x online bytes, {:.1}x rounds",
                name,
                results[0].0,
                s.online_ms.median / base.online_ms.median.max(1e-9),
                (s.bytes_client_to_server + s.bytes_server_to_client) as f64
                    / (base.bytes_client_to_server + base.bytes_server_to_client).max(1) as f64,
                s.rounds as f64 / base.rounds.max(1) as f64
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
