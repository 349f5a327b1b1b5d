//! Predicted (cost model, CPU profile calibrated at start) vs measured (engine bench, TCP
//! loopback with link emulation) online time of NET-M, NET-C and NET-R18 with x^2 activations at
//! batch 1, on the `none` and `wan` links; writes the table to `docs/cost-model.md`.
//!
//! ```text
//! cargo run --release -p polypi-core --example cost_vs_bench -- [RUNS] [OUT.md | -]
//! ```
//! RUNS (default 5) inferences per configuration (median online ms); `-` prints only.

use polypi_core::cost::FpgaProfile;
use polypi_core::cost::{calibrate, predict, CostReport, CpuProfile, Profile};
use polypi_core::engine::bench::bench_local;
use polypi_core::engine::session::Transport;
use polypi_core::model::compile::compile;
use polypi_core::model::zoo::{build, Act, Pool, RefNet};
use polypi_core::net::LinkModel;
use std::fmt::Write as _;

/// The explanatory part of docs/cost-model.md.
const ABOUT: &str = "## The cost model (crates/polypi-core/src/cost/)

API (`polypi_core::cost`):

- `count(&plan, batch) -> Vec<LayerCost>`: the cost-counting backend of the one walk
  (`CostCounter`, `Value = Vec<usize>` shapes). Per layer: bytes client->server, server->client,
  dealer->client, dealer->server, messages, rounds, MACs, PRG bytes expanded by server / client /
  dealer, activation elements, and the online schedule (who computes what, who sends what, in
  protocol order). The last row is the output reveal. `session_cost(&plan)`: seeds, skeleton
  JSON, `F = W - B` (8 bytes per weight), per-inference batch (8 bytes) and online-start (0 bytes)
  messages, session end.
- `predict(&plan, batch, &Profile, &LinkModel) -> CostReport`: per-layer and total predicted
  online (and offline) time, bytes, rounds; `CostReport::table()` (text) and `to_json()`.
- `Profile::parse(\"cpu\" | \"cpu:FILE\" | \"fpga\" | \"fpga:FILE\" | \"pasnet\")`,
  `calibrate() -> CpuProfile` (~0.5 s: ring GEMM 128x576x1024 on all threads and on one,
  ChaCha20 expansion, elementwise passes, the binomial power kernels k = 2..8 and the coefficient
  combination, DCF eval/gen at the ReLU comparison width (35 bits), TCP loopback ping-pong of 8-byte and 4 MB messages one way
  and as simultaneous exchanges), `CpuProfile::save/load` (JSON).
- `site_latency(SiteKind::{Relu, Poly{degree}, MaxPool, AvgPool}, n_elements, &Profile, &LinkModel)
  -> f64` (ms; PASNet units for the PASNet profile), for the architecture search.

Noise: on the shared 2-core development machine (load average 9-20 from other builds), the
`none` rows move by about +-30% from run to run (GEMM throughput alone varies between 3 and 7.5
GMAC/s between calibrations), while the `wan` rows, dominated by the link, stay within a few
percent. Re-run `scripts/cost-vs-measured.sh` on a quiet machine for a clean comparison.

Exactness: `cargo test --release -p polypi-core --test cost_vs_engine` runs the engine in memory
on NET-M / NET-C / NET-R18 with x^2, X2act and PILLAR (degree 4) at batch 1 and 2, and NET-M /
NET-C with ReLU and max-pool, and asserts that the predicted per-layer bytes (each way and
dealer), rounds and MACs equal the engine's `InferenceReport.layers`, that the setup bytes equal
`SetupReport::bytes`, and that every channel's byte and message totals (including seeds,
skeleton, `F`, batch sizes, online-start and session end) equal the counters. Note: the engine's
`LayerReport::bytes_from_dealer` counts the dealer's bytes to both parties (DCF keys of ReLU /
max-pool go to both); the cost model reports both directions separately and
`LayerCost::dealer_bytes()` is their sum.

CPU timing: a two-timeline simulation (server, client) of each layer's schedule: local work
priced by the calibrated throughputs; a message is delivered at `max(send time, link free) +
bytes*8/bandwidth + RTT/2 + per-message cost + bytes/loopback rate` (one queue per direction,
the rule of `net::EmulatedChannel`). So only messages on the critical path cost latency: the
client's `X1 - A` of a linear layer, the server's half of every exchange, the output reveal; the
client's half of an exchange and a shortcut conv's message overlap the server's GEMM. Offline:
per layer server + client + dealer work (the three roles share the cores in-process).

FPGA (`Profile::Fpga`): the scheduler and performance model of `cost::fpga`
([fpga-model.md](fpga-model.md)): per network a split of the DSPs between a GEMM engine, a
polynomial engine and a comparison engine, per conv / linear layer a GEMM array shape and a tile
against the on-chip buffer with the DRAM traffic it implies, and the overlap of each layer's link
time with its compute (streaming) and of the next layer's first tile load with this layer's wait
on the link (prefetch). PolyMPCNet's and PASNet's FPGA designs (board, DSPs, clock, bandwidth,
performance-model equations) are not public: NOT FOUND in the sources of `docs/sources.md` §1-2.
Our assumed default: a ZCU104-class part (XCZU7EV: 1728 DSP48E2 at 300 MHz, 10 DSPs per
pipelined 64-bit wrapping multiplier = the limb products of the low 64 bits with 17-bit limbs;
4.75 MiB BRAM + URAM; 19.2 GB/s DDR4; elementwise ops 64/cycle; ChaCha20 64 B/cycle; 8 AES
blocks/cycle, a DCF eval on the 35-bit comparison input (29 tree levels, `mpc::fss::depth`) =
2 x 29 blocks, a key generation = 4 x 29; 10 us per message on the host).

PASNet (`Profile::Pasnet`): the per-site table hard-coded in PASNet's code
(`models/gate_tmp.py`, docs/sources.md §2), n = elements per sample of the site's input: ReLU
`13.6n + 0.4`, X2act / polynomial `0.03n + 0.2`, MaxPool `0.75 x ReLU`, AvgPool `0.01n`
(GlobalAvgPool counted as AvgPool), times the batch. Units are not stated in the source and are
reported as published (\"PASNet units\", not ms). Linear layers, bytes, rounds and the link are
not modelled by that table.
";

fn sh(cmd: &str) -> String {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Field-by-field mean of two calibrations (rates averaged arithmetically).
fn mean_profile(a: &CpuProfile, b: &CpuProfile) -> CpuProfile {
    let m = |x: f64, y: f64| (x + y) / 2.0;
    CpuProfile {
        description: a.description.clone(),
        threads: a.threads,
        gemm_gmacs: m(a.gemm_gmacs, b.gemm_gmacs),
        gemm_gmacs_single: m(a.gemm_gmacs_single, b.gemm_gmacs_single),
        prg_gbytes_per_s: m(a.prg_gbytes_per_s, b.prg_gbytes_per_s),
        elementwise_gops: m(a.elementwise_gops, b.elementwise_gops),
        poly_power_ns: a
            .poly_power_ns
            .iter()
            .zip(&b.poly_power_ns)
            .map(|(x, y)| m(*x, *y))
            .collect(),
        poly_combine_ns: m(a.poly_combine_ns, b.poly_combine_ns),
        dcf_eval_ns: m(a.dcf_eval_ns, b.dcf_eval_ns),
        dcf_gen_ns: m(a.dcf_gen_ns, b.dcf_gen_ns),
        per_message_us: m(a.per_message_us, b.per_message_us),
        loopback_gbytes_per_s: m(a.loopback_gbytes_per_s, b.loopback_gbytes_per_s),
        exchange_gbytes_per_s: m(a.exchange_gbytes_per_s, b.exchange_gbytes_per_s),
        shared_cores: a.shared_cores,
    }
}

fn main() -> polypi_core::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(5);
    let out = args.get(1).cloned().unwrap_or_else(|| "docs/cost-model.md".into());
    let load_before = sh("uptime");
    let mut cpu = calibrate();
    let mut rows = String::new();
    let mut others = String::new();
    let mut details = String::new();
    // The x^2 networks of the goal, plus NET-M with ReLU + max-pool (FSS comparisons).
    let configs = [
        (RefNet::NetM, Act::Square, Pool::Avg, "x^2"),
        (RefNet::NetC, Act::Square, Pool::Avg, "x^2"),
        (RefNet::NetR18, Act::Square, Pool::Avg, "x^2"),
        (RefNet::NetM, Act::Relu, Pool::Max, "ReLU+max"),
    ];
    for (net, act, pool, vname) in configs {
        let plan = compile(&build(net, act, pool, 1.0, 7)?)?;
        let fpga = Profile::Fpga(FpgaProfile::default());
        let f_lan = predict(&plan, 1, &fpga, &LinkModel::lan())?;
        let f_wan = predict(&plan, 1, &fpga, &LinkModel::wan())?;
        let pas = predict(&plan, 1, &Profile::Pasnet, &LinkModel::none())?;
        let _ = writeln!(
            others,
            "| {net} {vname} | {:.3} | {:.2} | {:.1} | {:.3} | {} |",
            f_lan.online_ms,
            f_wan.online_ms,
            pas.online_ms,
            f_lan.online_bytes() as f64 / 1e6,
            f_lan.rounds
        );
        for (lname, link) in [("none", LinkModel::none()), ("wan", LinkModel::wan())] {
            // Calibrate right before and right after each measurement and average the two: the
            // load of a shared machine drifts.
            let before = calibrate();
            let b = bench_local(&plan, 1, runs, Transport::Tcp, link, 42)?;
            cpu = mean_profile(&before, &calibrate());
            eprintln!("calibrated: {}", serde_json::to_string(&cpu).unwrap_or_default());
            let profile = Profile::Cpu(cpu.clone());
            let rep: CostReport = predict(&plan, 1, &profile, &link)?;
            let ratio = rep.online_ms / b.online_ms.median;
            let line = format!(
                "| {net} {vname} | {lname} | {:.2} | {:.2} | {:.2}-{:.2} | {:.2} | {:.1} | \
                 {:.1} | {} | {:.2} |",
                rep.online_ms,
                b.online_ms.median,
                b.online_ms.min,
                b.online_ms.max,
                ratio,
                rep.offline_ms,
                b.offline_ms.median,
                rep.rounds,
                cpu.gemm_gmacs
            );
            println!("{line}");
            rows += &line;
            rows += "\n";
            let _ = writeln!(
                details,
                "### {net} {vname}, link {lname}\n\nPredicted:\n\n```text\n{}```\n\nMeasured \
                 (median run, server-side per-layer online ms):\n\n```text\n{}```\n",
                rep.table(),
                b.median_report.table()
            );
        }
    }
    let load_after = sh("uptime");
    let model = sh("lscpu | grep 'Model name' | sed 's/.*: *//'");
    let cores = sh("nproc");
    let kernel = polypi_core::ring::gemm_kernel_name();
    let doc = format!(
        "# Cost model: predicted vs measured\n\n\
         Generated by `cargo run --release -p polypi-core --example cost_vs_bench -- {runs}` \
         (or `scripts/cost-vs-measured.sh`).\n\n\
         Machine: {model}, {cores} cores (`nproc`), GEMM kernel {kernel}. Load: before \
         `{load_before}`, after `{load_after}`. The machine was shared with other builds: \
         timings are noisy.\n\n\
         The CPU profile is calibrated (`polypi_core::cost::calibrate`, ~0.5 s) right before and \
         right after each row's measurement and the two are averaged (the load drifts); the last \
         one:\n\n```json\n{}\n```\n\n\
         Batch 1, {runs} inferences per row (median online ms of `engine::bench::bench_local` \
         over TCP loopback; `wan` = 400 Mbit/s, 40 ms RTT emulated). Ratio = predicted / \
         measured (goal: within 0.75-1.25).\n\n\
         | network | link | predicted online ms | measured online ms (median) | measured min-max | \
         ratio | predicted offline ms | measured offline ms | rounds | calibrated GEMM GMAC/s (mean) |\n\
         |---|---|---|---|---|---|---|---|---|---|\n{rows}\n\
         Other profiles, same networks, batch 1 (predictions only):\n\n\
         | network | FPGA (assumed ZCU104-class) LAN ms | FPGA WAN ms | PASNet table (units as \
         published) | online MB | rounds |\n|---|---|---|---|---|---|\n{others}\n{ABOUT}\n\
         ## Per-layer detail\n\n{details}",
        serde_json::to_string_pretty(&cpu).unwrap_or_default(),
    );
    if out != "-" {
        if let Some(dir) = std::path::Path::new(&out).parent() {
            std::fs::create_dir_all(dir).ok();
        }
        std::fs::write(&out, doc)?;
        eprintln!("wrote {out}");
    }
    Ok(())
}
