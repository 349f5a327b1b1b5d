//! `polypi`: the command-line tool of polypi — private inference of polynomial networks between a
//! server (the model), a client (the input) and a dealer (correlated randomness).
//!
//! Exit codes: 0 success, 1 runtime error (including private/plaintext disagreement in `infer`),
//! 2 usage error (clap), 3 range error (the range guard or the plan range check refused: a value
//! outside the calibrated fixed-point range, see `polypi calibrate`). Every error ends with a hint saying what to do.

mod bench;
mod calibrate;
mod certs;
mod common;
mod cost;
mod eval;
mod forward;
mod health;
mod import;
mod infer;
mod inspect;
mod net;
mod range;
mod zoo;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Private inference (2PC) of neural networks with polynomial activations.
#[derive(Parser, Debug)]
#[command(name = "polypi", version, about, long_about = None)]
struct Cli {
    /// More log output on stderr (-v: info, -vv: debug, -vvv: trace). `RUST_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Private inference with server, client and dealer in this process (TCP on loopback).
    Infer(infer::InferArgs),
    /// Server: holds the model, serves clients concurrently over TLS.
    Serve(net::ServeArgs),
    /// Dealer: streams correlated randomness to the server and client of each session (paired by
    /// session id, over TLS).
    Dealer(net::DealerArgs),
    /// Client: private inference of images against a running server and dealer.
    Query(net::QueryArgs),
    /// Plaintext accuracy on a test set, and private inference on its first images.
    Eval(eval::EvalArgs),
    /// Records per-layer value ranges on real data into the model file (for the range check and
    /// the runtime range guard).
    Calibrate(calibrate::CalibrateArgs),
    /// Shows a model's graph, shapes, parameters, MACs, activations and model card.
    Inspect(inspect::InspectArgs),
    /// Writes a development CA and TLS certificates for server, dealer and client.
    Certs(certs::CertsArgs),
    /// Writes a reference network with random weights (for tests and benchmarks).
    Zoo(zoo::ZooArgs),
    /// Imports an ONNX model exported from PyTorch into a polypi model file (polynomial
    /// activations recognised; see docs/import.md).
    Import(import::ImportArgs),
    /// Measures private inference: online/offline time, bytes, rounds, memory (optionally over
    /// an emulated LAN/WAN link, and ReLU vs polynomial with --compare).
    Bench(bench::BenchArgs),
    /// Predicts latency, bytes and rounds per layer from the cost model (cpu, fpga, pasnet).
    Cost(cost::CostArgs),
    /// Trains a network (forwards to the polypi-train binary next to this one).
    Train(forward::ForwardArgs),
    /// Latency-aware architecture search, PASNet-style (forwards to `polypi-train search`).
    Search(forward::ForwardArgs),
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// The error and its causes joined by ": ", leaving out a cause whose text the message before it
/// already ends with (core errors wrapping an I/O error repeat its text).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if out.ends_with(&msg) {
            continue;
        }
        if !out.is_empty() {
            out += ": ";
        }
        out += &msg;
    }
    out
}

/// Dies quietly on a closed stdout (`polypi inspect | head`) like other Unix tools, instead of
/// panicking in `println!`.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to the default at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    restore_sigpipe();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.cmd {
        Command::Infer(a) => infer::run(a),
        Command::Serve(a) => net::serve(a),
        Command::Dealer(a) => net::dealer(a),
        Command::Query(a) => net::query(a),
        Command::Eval(a) => eval::run(a),
        Command::Calibrate(a) => calibrate::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Zoo(a) => zoo::run(a),
        Command::Import(a) => import::run(a),
        Command::Certs(a) => certs::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Cost(a) => cost::run(a),
        Command::Train(a) => forward::run(Some("train"), a),
        Command::Search(a) => forward::run(Some("search"), a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            if let Some(h) = common::hint(&e) {
                eprintln!("hint: {h}");
            }
            ExitCode::from(common::exit_code(&e))
        }
    }
}
