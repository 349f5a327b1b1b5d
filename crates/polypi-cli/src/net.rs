//! The three deployed roles as separate processes: `polypi serve` (server, holds the model),
//! `polypi dealer` (correlated randomness) and `polypi query` (client, holds the input).
//!
//! `serve` and `dealer` print `listening on ADDR` as the first line of stdout (so `--listen
//! 127.0.0.1:0` can be used and the chosen port read back), then one line per finished session.
//! Session errors are logged on stderr and the process keeps serving. Nothing secret (seeds,
//! shares, inputs, weights) is ever printed or logged.

use crate::common::{self, ClassProb};
use crate::range::{self, CheckArgs, GuardArgs, MarginArgs, RetryArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use polypi_core::engine::party::check_supported;
use polypi_core::engine::session::{deal_session, serve_session_guarded, ClientSession};
use polypi_core::engine::EncodedPlan;
use polypi_core::net::{bind, TcpChannel, TcpOptions};
use serde::Serialize;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `polypi serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Model file (.safetensors). Default: the shipped models/netm-x2act-fmnist.safetensors.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Address to listen on for clients (`127.0.0.1:0` picks a free port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub listen: String,
    /// Address of the dealer (`polypi dealer --listen ...`).
    #[arg(long)]
    pub dealer: String,
    /// Read/write timeout on every connection, seconds (0 = wait forever).
    #[arg(long, default_value_t = 60.0)]
    pub timeout_s: f64,
    /// Stop after this many sessions (default: serve forever).
    #[arg(long)]
    pub max_sessions: Option<u64>,
    #[command(flatten)]
    pub poly: crate::common::PolyProtocolArg,
    #[command(flatten)]
    pub check_args: CheckArgs,
    #[command(flatten)]
    pub margin: MarginArgs,
}

/// Arguments of `polypi dealer`.
#[derive(Args, Debug)]
pub struct DealerArgs {
    /// Address to listen on for servers and clients (`127.0.0.1:0` picks a free port).
    #[arg(long, default_value = "127.0.0.1:7001")]
    pub listen: String,
    /// Read/write timeout on every connection, seconds (0 = wait forever).
    #[arg(long, default_value_t = 60.0)]
    pub timeout_s: f64,
    /// Stop after this many sessions (default: deal forever).
    #[arg(long)]
    pub max_sessions: Option<u64>,
}

/// Arguments of `polypi query`.
#[derive(Args, Debug)]
pub struct QueryArgs {
    /// Address of the server (`polypi serve --listen ...`).
    #[arg(long)]
    pub connect: String,
    /// Address of the dealer (`polypi dealer --listen ...`).
    #[arg(long)]
    pub dealer: String,
    /// Input images (PNG, PGM/PPM) of the model's input size; one private inference each.
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Read/write timeout, seconds (0 = wait forever).
    #[arg(long, default_value_t = 60.0)]
    pub timeout_s: f64,
    /// How long to keep retrying while the server or dealer is not listening yet, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub connect_retry_s: f64,
    #[command(flatten)]
    pub guard: GuardArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
    #[command(flatten)]
    pub margin: MarginArgs,
}

fn listen(addr: &str) -> Result<TcpListener> {
    let l = bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let local = l.local_addr().context("cannot read the bound address")?;
    // First line of stdout: the bound address (tests and scripts read it).
    println!("listening on {local}");
    std::io::stdout().flush().ok();
    Ok(l)
}

impl QueryArgs {
    fn range_guard_on(&self) -> bool {
        self.guard.range_guard != range::ModeArg::Off
    }
}

fn with_role(opts: &TcpOptions, role: &str) -> TcpOptions {
    TcpOptions { expect_peer_role: Some(role.to_string()), ..opts.clone() }
}

/// Runs `polypi serve`.
pub fn serve(a: ServeArgs) -> Result<ExitCode> {
    let path = common::model_path(a.model.as_deref())?;
    let mut model = common::load_model(&path)?;
    model.plan.poly_protocol = a.poly.poly_protocol;
    check_supported(&model.plan)
        .with_context(|| format!("model {} cannot be served privately", path.display()))?;
    let enc = EncodedPlan::new(&model.plan).context("cannot encode the model's weights")?;
    range::gate(&model, &a.check_args, &a.margin)?;
    let guard = range::guard_bounds(&model);
    let opts = common::tcp_options(a.timeout_s)?;
    let listener = listen(&a.listen)?;
    tracing::info!(model = %path.display(), dealer = %a.dealer, "serving");
    let mut sessions = 0u64;
    while a.max_sessions.is_none_or(|m| sessions < m) {
        let mut client = match TcpChannel::accept(&listener, "server", &with_role(&opts, "client"))
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("rejected a connection: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        sessions += 1;
        let peer = client.peer_addr();
        tracing::info!(session = sessions, %peer, "client connected");
        let mut dealer = match TcpChannel::connect(&a.dealer, "server", &with_role(&opts, "dealer"))
        {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(
                    "session {sessions}: cannot reach the dealer at {}: {e} (start `polypi dealer` \
                     there); dropping client {peer}",
                    a.dealer
                );
                continue;
            }
        };
        match serve_session_guarded(&model.plan, &enc, guard, &mut client, &mut dealer, false) {
            Ok(tr) => {
                let online: f64 = tr.iter().map(|t| t.online_ms).sum();
                println!(
                    "session {sessions}: client {peer}, {} inference(s), server online {:.2} ms",
                    tr.len(),
                    online
                );
                let _ = client.close();
                let _ = dealer.close();
            }
            Err(e) => {
                tracing::warn!("session {sessions} with client {peer} failed: {e}; still serving");
                println!("session {sessions}: client {peer}, failed: {e}");
            }
        }
        std::io::stdout().flush().ok();
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `polypi dealer`.
pub fn dealer(a: DealerArgs) -> Result<ExitCode> {
    let opts = common::tcp_options(a.timeout_s)?;
    let listener = listen(&a.listen)?;
    let mut sessions = 0u64;
    let mut server: Option<TcpChannel> = None;
    let mut client: Option<TcpChannel> = None;
    while a.max_sessions.is_none_or(|m| sessions < m) {
        let ch = match TcpChannel::accept(&listener, "dealer", &opts) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("rejected a connection: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let slot = match ch.peer_role() {
            "server" => &mut server,
            "client" => &mut client,
            other => {
                tracing::warn!(
                    "{}: unknown role '{other}' (expected server or client); closed",
                    ch.peer_addr()
                );
                continue;
            }
        };
        if let Some(old) = slot.replace(ch) {
            tracing::warn!(
                "a second {} connected before the session started; dropping the older one ({})",
                old.peer_role(),
                old.peer_addr()
            );
        }
        let (mut s, mut c) = match (server.take(), client.take()) {
            (Some(s), Some(c)) => (s, c),
            (s, c) => {
                (server, client) = (s, c);
                continue;
            }
        };
        sessions += 1;
        let (sa, ca) = (s.peer_addr(), c.peer_addr());
        match deal_session(&mut s, &mut c) {
            Ok(tr) => {
                println!("session {sessions}: server {sa}, client {ca}, {} inference(s)", tr.len());
                let _ = s.close();
                let _ = c.close();
            }
            Err(e) => {
                tracing::warn!("session {sessions} failed: {e}; still dealing");
                println!("session {sessions}: server {sa}, client {ca}, failed: {e}");
            }
        }
        std::io::stdout().flush().ok();
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct QueryResult {
    file: String,
    class: usize,
    label: String,
    top3: Vec<ClassProb>,
    logits: Vec<f32>,
    online_ms: f64,
    offline_ms: f64,
    online_bytes_sent: u64,
    online_bytes_received: u64,
    offline_bytes_received: u64,
    /// A failed range-guard check (only with --range-guard warn).
    range_violation: Option<polypi_core::engine::guard::RangeViolation>,
    /// Reruns after a refused result (`--guard-retries`).
    retries: u32,
}

#[derive(Serialize)]
struct QueryOutput {
    server: String,
    dealer: String,
    setup_ms: f64,
    setup_bytes: u64,
    results: Vec<QueryResult>,
}

/// Runs `polypi query`.
pub fn query(a: QueryArgs) -> Result<ExitCode> {
    let mut opts = common::tcp_options(a.timeout_s)?;
    if !(a.connect_retry_s.is_finite() && a.connect_retry_s >= 0.0) {
        bail!("--connect-retry-s must be a number >= 0, got {}", a.connect_retry_s);
    }
    opts.connect_retry_for = Duration::from_secs_f64(a.connect_retry_s);
    let policy = range::policy(&a.guard, &a.margin)?;
    for f in &a.input {
        if !f.exists() {
            bail!("input image {} not found: check the path", f.display());
        }
    }
    let mut server = TcpChannel::connect(&a.connect, "client", &with_role(&opts, "server"))
        .with_context(|| format!("cannot connect to the server at {}", a.connect))?;
    let mut dealer = TcpChannel::connect(&a.dealer, "client", &with_role(&opts, "dealer"))
        .with_context(|| format!("cannot connect to the dealer at {}", a.dealer))?;
    let mut sess = ClientSession::connect(&mut server, &mut dealer)
        .context("session setup with the server and dealer failed")?;
    sess.set_guard_policy(policy)?;
    if sess.guard_bounds().is_none() && a.range_guard_on() {
        eprintln!(
            "note: the server's model has no calibrated ranges: the range guard cannot check \
             the results"
        );
    }
    let plan = sess.plan().clone();
    if !a.json {
        println!(
            "connected to server {} and dealer {}: setup {:.2} ms, {:.3} MB",
            a.connect,
            a.dealer,
            sess.setup.ms,
            sess.setup.bytes as f64 / 1e6
        );
    }
    let mut inputs = Vec::new();
    for f in &a.input {
        match common::load_image(f, &plan) {
            Ok(x) => inputs.push(x),
            Err(e) => {
                let _ = sess.close();
                return Err(e);
            }
        }
    }
    let mut results = Vec::new();
    for (f, x) in a.input.iter().zip(&inputs) {
        let mut retries = 0u32;
        let r = loop {
            match sess.infer(x, 1, false) {
                Err(e)
                    if polypi_core::engine::guard::is_logit_refusal(&e)
                        && retries < a.retry.guard_retries =>
                {
                    retries += 1;
                    eprintln!(
                        "note: {}: the range guard refused the result (truncation failure); \
                         retry {retries} of {} with fresh randomness",
                        f.display(),
                        a.retry.guard_retries
                    );
                }
                other => break other,
            }
        };
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                // A refused input or result leaves the session usable: end it cleanly.
                if matches!(e, polypi_core::Error::RangeGuard { .. }) {
                    let _ = sess.close();
                }
                return Err(anyhow::Error::new(e)
                    .context(format!("private inference of {} failed", f.display())));
            }
        };
        let sent: u64 = r.traces.online.iter().map(|t| t.stats.bytes_sent).sum();
        // The output reveal (server's logit shares) is received after the last layer.
        let received: u64 = r.traces.online.iter().map(|t| t.stats.bytes_received).sum::<u64>()
            + 8 * r.logits.len() as u64;
        let offline: u64 = r.traces.offline.iter().map(|t| t.stats.bytes_received).sum();
        let class = common::argmax(&r.logits);
        let q = QueryResult {
            file: f.display().to_string(),
            class,
            label: common::class_name(&plan, class),
            top3: common::top_k(&plan, &r.logits, 3),
            logits: r.logits,
            online_ms: r.traces.online_ms,
            offline_ms: r.traces.offline_ms,
            online_bytes_sent: sent,
            online_bytes_received: received,
            offline_bytes_received: offline,
            range_violation: r.range_violation,
            retries,
        };
        if let Some(v) = &q.range_violation {
            eprintln!(
                "warning: {}: range guard: {:?} max |x| {:.3e} > bound {:.3e}; the result may be \
                 garbage",
                q.file, v.check, v.value, v.bound
            );
        }
        if !a.json {
            println!(
                "{}: {} [{}] | online {:.2} ms ({} B sent, {} B received), offline {:.2} ms ({} B from dealer)",
                q.file,
                q.label,
                common::fmt_top(&q.top3),
                q.online_ms,
                q.online_bytes_sent,
                q.online_bytes_received,
                q.offline_ms,
                q.offline_bytes_received
            );
            std::io::stdout().flush().ok();
        }
        results.push(q);
    }
    let (setup_ms, setup_bytes) = (sess.setup.ms, sess.setup.bytes);
    sess.close().context("closing the session failed")?;
    let _ = server.close();
    let _ = dealer.close();
    if a.json {
        let doc = QueryOutput {
            server: a.connect.clone(),
            dealer: a.dealer.clone(),
            setup_ms,
            setup_bytes,
            results,
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(ExitCode::SUCCESS)
}
