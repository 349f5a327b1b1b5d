//! Per-site latencies of the `fpga` profile (the numbers `polypi search --profile fpga` uses,
//! from [`polypi_core::cost::site_latency`] and the FPGA scheduler model), for the default
//! ZCU104-class board (assumed parameters, docs/fpga-model.md) on the none / lan / wan links.
//!
//! Run: `cargo run --release -p polypi-core --example fpga_sites`.

use polypi_core::cost::{site_latency, FpgaProfile, Profile, SiteKind};
use polypi_core::net::LinkModel;

fn main() {
    let p = Profile::Fpga(FpgaProfile::default());
    println!(
        "| n (elements) | link | ReLU ms | X2act ms | PILLAR deg 4 ms | MaxPool ms | AvgPool ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    for n in [16384usize, 65536, 802816] {
        for (name, link) in
            [("none", LinkModel::none()), ("lan", LinkModel::lan()), ("wan", LinkModel::wan())]
        {
            let t = |k| site_latency(k, n, &p, &link);
            println!(
                "| {n} | {name} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} |",
                t(SiteKind::Relu),
                t(SiteKind::Poly { degree: 2 }),
                t(SiteKind::Poly { degree: 4 }),
                t(SiteKind::MaxPool),
                t(SiteKind::AvgPool)
            );
        }
    }
}
