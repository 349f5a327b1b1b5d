//! `cargo run --release -p polypi-core --example bench_ref -- NET-R18 square 1 5 none`
//! Private inference of a random-weight reference network; prints the summary as JSON.
use polypi_core::engine::bench::bench_local;
use polypi_core::engine::session::Transport;
use polypi_core::model::compile::compile;
use polypi_core::model::zoo::{build, Pool};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    let net = a.get(1).map(String::as_str).unwrap_or("NET-R18").parse()?;
    let act = a.get(2).map(String::as_str).unwrap_or("square").parse()?;
    let batch: usize = a.get(3).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let runs: usize = a.get(4).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let link = a.get(5).map(String::as_str).unwrap_or("none").parse()?;
    let plan = compile(&build(net, act, Pool::Avg, 1.0, 1)?)?;
    let s = bench_local(&plan, batch, runs, Transport::Tcp, link, 7)?;
    eprint!("{}", s.median_report.table());
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
        "online_ms": s.online_ms, "offline_ms": s.offline_ms, "bytes_c2s": s.bytes_client_to_server,
        "bytes_s2c": s.bytes_server_to_client, "dealer_bytes": s.dealer_bytes, "rounds": s.rounds,
        "setup_ms": s.setup_ms, "setup_bytes": s.setup_bytes, "peak_rss_bytes": s.peak_rss_bytes }))
        .unwrap()
    );
    Ok(())
}
