//! The three deployed roles as separate processes: `polypi serve` (server, holds the model),
//! `polypi dealer` (correlated randomness) and `polypi query` (client, holds the input), over
//! TLS 1.3 links (`--tls-dir`, or `--insecure-plaintext` for experiments), with session binding
//! and concurrent sessions ([`polypi_core::engine::deploy`]).
//!
//! `serve` and `dealer` print `listening on ADDR` as the first line of stdout (so `--listen
//! 127.0.0.1:0` can be used and the chosen port read back), then one line per finished or
//! refused session. Session errors are logged on stderr and the process keeps serving. Nothing
//! secret (seeds, shares, inputs, weights, session ids) is ever printed or logged.

use crate::common::{self, ClassProb};
use crate::range::{self, CheckArgs, GuardArgs, MarginArgs, RetryArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use polypi_core::engine::deploy::{
    self, ClientLinks, DealerOptions, DeployedDealer, DeployedServer, ServerOptions,
    SessionOutcome, SessionReport,
};
use polypi_core::engine::party::check_supported;
use polypi_core::engine::session::{ClientSession, SessionLimits};
use polypi_core::net::{bind, ClientAuth, TcpOptions, TlsConfig, TlsFiles};
use serde::Serialize;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// TLS options shared by `serve`, `dealer` and `query`.
#[derive(Args, Debug, Clone)]
pub struct TlsArgs {
    /// Directory with `ca.pem` and this role's `ROLE.pem` / `ROLE.key` (as written by
    /// `polypi certs --out DIR`).
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// CA certificate(s) to trust (PEM); overrides DIR/ca.pem.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This role's certificate chain (PEM); overrides DIR/ROLE.pem.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// This role's private key (PEM); overrides DIR/ROLE.key.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Run every link in plaintext: anyone on the path reads the masked weights, the seeds and
    /// the client's masked input, and can recover the weights and the image. Only for
    /// experiments on one trusted machine; a warning is logged at every session.
    #[arg(long)]
    pub insecure_plaintext: bool,
}

impl TlsArgs {
    /// The TLS configuration of `role`, or `None` with `--insecure-plaintext`.
    fn config(&self, role: &str, auth: ClientAuth) -> Result<Option<Arc<TlsConfig>>> {
        let any_file = self.tls_dir.is_some()
            || self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.tls_key.is_some();
        if self.insecure_plaintext {
            if any_file {
                bail!("--insecure-plaintext cannot be combined with TLS files; choose one");
            }
            tracing::warn!(
                "--insecure-plaintext: the {role}'s links are NOT encrypted or authenticated"
            );
            eprintln!(
                "warning: --insecure-plaintext: the {role}'s links carry secrets in the clear \
                 (use --tls-dir in any real deployment)"
            );
            return Ok(None);
        }
        if !any_file {
            bail!(
                "no TLS material for the {role}: give --tls-dir DIR (create one with `polypi \
                 certs --out DIR`), or --insecure-plaintext to run unprotected"
            );
        }
        let dir_file = |name: String| self.tls_dir.as_ref().map(|d| d.join(name));
        let pick = |explicit: &Option<PathBuf>, name: String, flag: &str| {
            explicit
                .clone()
                .or_else(|| dir_file(name))
                .with_context(|| format!("{flag} is needed when --tls-dir is not given"))
        };
        let files = TlsFiles {
            ca: pick(&self.tls_ca, "ca.pem".into(), "--tls-ca")?,
            cert: pick(&self.tls_cert, format!("{role}.pem"), "--tls-cert")?,
            key: pick(&self.tls_key, format!("{role}.key"), "--tls-key")?,
        };
        let cfg = TlsConfig::load(&files, auth)
            .with_context(|| format!("cannot set up TLS for the {role}"))?;
        Ok(Some(Arc::new(cfg)))
    }
}

/// Arguments of `polypi serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Model file (.safetensors). Default: the shipped models/netm-x2act-fmnist.safetensors.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Address to listen on for clients (`127.0.0.1:0` picks a free port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub listen: String,
    /// Address of the dealer (`polypi dealer --listen ...`); required unless
    /// `--preprocessing two-party`.
    #[arg(long)]
    pub dealer: Option<String>,
    /// Name the dealer's certificate must be valid for (default: the host of --dealer).
    #[arg(long)]
    pub dealer_name: Option<String>,
    /// With TLS: the identity (DNS subject alternative name) the dealer's certificate must carry.
    #[arg(long, default_value = polypi_core::net::tls::DEALER_IDENTITY)]
    pub dealer_identity: String,
    /// How long a session keeps retrying to reach the dealer (refused, unreachable or
    /// dropped connection attempts), seconds.
    #[arg(long, default_value_t = 10.0)]
    pub dealer_connect_retry_s: f64,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Refuse clients without a certificate from the CA (mutual TLS with clients).
    #[arg(long)]
    pub require_client_cert: bool,
    /// Longest one message may take to arrive (and idle wait between a client's inferences),
    /// seconds (0 = wait forever).
    #[arg(long, default_value_t = 60.0)]
    pub timeout_s: f64,
    /// Longest TLS handshake + hello of a new connection, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub handshake_timeout_s: f64,
    /// Longest session setup (seeds, plan, masked weights), seconds.
    #[arg(long, default_value_t = 30.0)]
    pub setup_timeout_s: f64,
    /// Longest single inference (offline + online phase), seconds.
    #[arg(long, default_value_t = 120.0)]
    pub inference_timeout_s: f64,
    /// Largest batch a client may ask for in one inference (each session reserves memory for
    /// this batch, see --memory-budget-mb).
    #[arg(long, default_value_t = 4)]
    pub max_batch: usize,
    /// Most sessions served at once (fewer if the memory budget holds fewer).
    #[arg(long, default_value_t = 32)]
    pub max_concurrent: usize,
    /// Memory the sessions may reserve together, MB (10^6 bytes); each session reserves the
    /// cost model's estimate at --max-batch.
    #[arg(long, default_value_t = 4000.0)]
    pub memory_budget_mb: f64,
    /// Most connections in their handshake at once; beyond, new connections are closed.
    #[arg(long, default_value_t = 256)]
    pub max_pending: usize,
    /// Stop after this many admitted sessions (default: serve forever).
    #[arg(long)]
    pub max_sessions: Option<u64>,
    /// Serve an HTTP health check on this address (`GET /health`: 200 with JSON while a
    /// session slot is free, 503 when full), for load balancers.
    #[arg(long, value_name = "ADDR")]
    pub health_listen: Option<String>,
    #[command(flatten)]
    pub poly: crate::common::PolyProtocolArg,
    #[command(flatten)]
    pub pre: crate::common::PreprocessingArg,
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
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Name (DNS subject alternative name) a certificate must be valid for to connect in the
    /// server role.
    #[arg(long, default_value = polypi_core::net::tls::SERVER_IDENTITY)]
    pub server_identity: String,
    /// Longest one message may take, seconds (0 = wait forever).
    #[arg(long, default_value_t = 60.0)]
    pub timeout_s: f64,
    /// Longest TLS handshake + hello of a new connection, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub handshake_timeout_s: f64,
    /// How long a server or client connection waits for its partner, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub pair_timeout_s: f64,
    /// Longest session setup, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub setup_timeout_s: f64,
    /// Longest single inference, seconds.
    #[arg(long, default_value_t = 120.0)]
    pub inference_timeout_s: f64,
    /// Largest batch of one inference (the server's limit applies too).
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// Most sessions dealt at once (keep it at least the sum of the servers' --max-concurrent;
    /// a pair beyond it is refused with the reason).
    #[arg(long, default_value_t = 256)]
    pub max_concurrent: usize,
    /// Most connections in their handshake or waiting for a partner.
    #[arg(long, default_value_t = 1024)]
    pub max_pending: usize,
    /// Correlated randomness queued per connection before the dealer waits for the peer to
    /// read (backpressure), MB.
    #[arg(long, default_value_t = 16.0)]
    pub queue_mb: f64,
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
    /// Address of the dealer (`polypi dealer --listen ...`); required unless
    /// `--preprocessing two-party` (the server must run in the same mode).
    #[arg(long)]
    pub dealer: Option<String>,
    /// Name the server's certificate must be valid for (default: the host of --connect).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Name the dealer's certificate must be valid for (default: the host of --dealer).
    #[arg(long)]
    pub dealer_name: Option<String>,
    /// With TLS: the identity (DNS subject alternative name) the server's certificate must carry.
    #[arg(long, default_value = polypi_core::net::tls::SERVER_IDENTITY)]
    pub server_identity: String,
    /// With TLS: the identity the dealer's certificate must carry.
    #[arg(long, default_value = polypi_core::net::tls::DEALER_IDENTITY)]
    pub dealer_identity: String,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Input images (PNG, PGM/PPM) of the model's input size, or `.npy` files (float32, NCHW,
    /// the model's input shape with or without the batch dimension 1, already normalised); one
    /// private inference each.
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Longest one message may take, seconds (0 = wait forever).
    #[arg(long, default_value_t = 60.0)]
    pub timeout_s: f64,
    /// How long to keep retrying while the server or dealer is not listening yet, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub connect_retry_s: f64,
    #[command(flatten)]
    pub pre: crate::common::PreprocessingArg,
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

/// Seconds from a command-line option (> 0).
fn secs(v: f64, flag: &str) -> Result<Duration> {
    if !(v.is_finite() && v > 0.0) {
        bail!("{flag} must be a positive number of seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

/// Session limits from the command line (seconds; each must be positive).
fn limits(max_batch: usize, setup_s: f64, inference_s: f64) -> Result<SessionLimits> {
    Ok(SessionLimits {
        max_batch,
        setup_timeout: Some(secs(setup_s, "--setup-timeout-s")?),
        inference_timeout: Some(secs(inference_s, "--inference-timeout-s")?),
    })
}

/// The TLS name for dialling `addr`: `explicit`, or the address's host.
/// The `--dealer` address: required in dealer mode, refused with `--preprocessing two-party`
/// (returned empty then).
fn dealer_arg(dealer: &Option<String>, two_party: bool) -> Result<String> {
    match (dealer, two_party) {
        (Some(d), false) => Ok(d.clone()),
        (None, true) => Ok(String::new()),
        (None, false) => bail!("--dealer is required (or run with --preprocessing two-party)"),
        (Some(_), true) => bail!("--preprocessing two-party runs without a dealer: drop --dealer"),
    }
}

fn tls_name(explicit: &Option<String>, addr: &str) -> Option<String> {
    explicit.clone().or_else(|| deploy::host_of(addr))
}

/// Prints one line per session on stdout (what tests and scripts read).
fn print_report(role: &str, r: &SessionReport) {
    let peers: Vec<String> = r.peers.iter().map(|p| p.to_string()).collect();
    let who = match role {
        "server" => format!("client {}", peers.join(", ")),
        _ => format!("peers {}", peers.join(", ")),
    };
    let line = match &r.outcome {
        SessionOutcome::Done { inferences, online_ms } if role == "server" => format!(
            "session {}: {who}, {inferences} inference(s), server online {online_ms:.2} ms",
            r.number
        ),
        SessionOutcome::Done { inferences, .. } => {
            format!("session {}: {who}, {inferences} inference(s)", r.number)
        }
        SessionOutcome::Refused(why) => format!("refused {who}: {why}"),
        SessionOutcome::Failed(e) if r.number > 0 => {
            tracing::warn!("session {} with {who} failed: {e}", r.number);
            format!("session {}: {who}, failed: {e}", r.number)
        }
        // Handshake failures, probes and expired connections: log only.
        SessionOutcome::Failed(e) => {
            tracing::info!("{who}: {e}");
            return;
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs `polypi serve`.
pub fn serve(a: ServeArgs) -> Result<ExitCode> {
    let auth = if a.require_client_cert { ClientAuth::Required } else { ClientAuth::Optional };
    let tls = a.tls.config("server", auth)?;
    let path = common::model_path(a.model.as_deref())?;
    let mut model = common::load_model(&path)?;
    model.plan.poly_protocol = a.poly.poly_protocol;
    check_supported(&model.plan)
        .with_context(|| format!("model {} cannot be served privately", path.display()))?;
    range::gate(&model, &a.check_args, &a.margin)?;
    let guard = range::guard_bounds(&model);
    let mut base = common::tcp_options(a.timeout_s)?;
    base.handshake_timeout = secs(a.handshake_timeout_s, "--handshake-timeout-s")?;
    base.tls = tls;
    let two_party = a.pre.preprocessing == common::Preprocessing::TwoParty;
    let dealer_addr = dealer_arg(&a.dealer, two_party)?;
    let mut dealer_tcp = base.clone();
    dealer_tcp.tls_server_name = tls_name(&a.dealer_name, &dealer_addr);
    dealer_tcp.expect_peer_identity = Some(a.dealer_identity.clone());
    dealer_tcp.connect_retry_for = secs(a.dealer_connect_retry_s, "--dealer-connect-retry-s")?;
    if !(a.memory_budget_mb.is_finite() && a.memory_budget_mb > 0.0) {
        bail!("--memory-budget-mb must be positive, got {}", a.memory_budget_mb);
    }
    let opts = ServerOptions {
        client_tcp: base,
        dealer_addr: dealer_addr.clone(),
        dealer_tcp,
        limits: limits(a.max_batch, a.setup_timeout_s, a.inference_timeout_s)?,
        max_sessions: a.max_concurrent,
        max_pending: a.max_pending,
        memory_budget_bytes: (a.memory_budget_mb * 1e6) as u64,
        two_party,
    };
    let server = DeployedServer::new(model.plan, guard, opts)
        .with_context(|| format!("cannot serve {}", path.display()))?;
    let listener = listen(&a.listen)?;
    tracing::info!(
        model = %path.display(),
        dealer = %dealer_addr,
        two_party,
        capacity = server.capacity(),
        session_mb = server.session_bytes() as f64 / 1e6,
        "serving"
    );
    let server = Arc::new(server);
    if let Some(h) = &a.health_listen {
        crate::health::spawn(h, server.clone())?;
    }
    server.run(&listener, a.max_sessions, &|r| print_report("server", &r))?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `polypi dealer`.
pub fn dealer(a: DealerArgs) -> Result<ExitCode> {
    let tls = a.tls.config("dealer", ClientAuth::Optional)?;
    let mut tcp = common::tcp_options(a.timeout_s)?;
    tcp.handshake_timeout = secs(a.handshake_timeout_s, "--handshake-timeout-s")?;
    tcp.tls = tls;
    if !(a.queue_mb.is_finite() && a.queue_mb > 0.0) {
        bail!("--queue-mb must be positive, got {}", a.queue_mb);
    }
    tcp.max_queued_bytes = Some((a.queue_mb * 1e6) as usize);
    let opts = DealerOptions {
        tcp,
        server_identity: a.server_identity.clone(),
        pair_timeout: secs(a.pair_timeout_s, "--pair-timeout-s")?,
        limits: limits(a.max_batch, a.setup_timeout_s, a.inference_timeout_s)?,
        max_sessions: a.max_concurrent,
        max_pending: a.max_pending,
    };
    let dealer = DeployedDealer::new(opts)?;
    let listener = listen(&a.listen)?;
    dealer.run(&listener, a.max_sessions, &|r| print_report("dealer", &r))?;
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

/// An input file read before connecting: a decoded image or a `.npy` array (shape, values).
enum Decoded {
    Image(image::DynamicImage),
    Npy(Vec<usize>, Vec<f32>),
}

/// Runs `polypi query`.
pub fn query(a: QueryArgs) -> Result<ExitCode> {
    let mut opts = common::tcp_options(a.timeout_s)?;
    if !(a.connect_retry_s.is_finite() && a.connect_retry_s >= 0.0) {
        bail!("--connect-retry-s must be a number >= 0, got {}", a.connect_retry_s);
    }
    opts.connect_retry_for = Duration::from_secs_f64(a.connect_retry_s);
    let policy = range::policy(&a.guard, &a.margin)?;
    // Decode every image before connecting: a missing or corrupt file costs the server nothing.
    // The size and channel checks need the plan's input shape (known after connecting).
    let mut images = Vec::with_capacity(a.input.len());
    for f in &a.input {
        if !f.exists() {
            bail!("input image {} not found: check the path", f.display());
        }
        images.push(if common::is_npy(f) {
            let (shape, data) = common::read_npy(f)?;
            Decoded::Npy(shape, data)
        } else {
            Decoded::Image(common::decode_image(f)?)
        });
    }
    let tls = a.tls.config("client", ClientAuth::Optional)?;
    opts.tls = tls;
    let server_tcp = TcpOptions {
        tls_server_name: tls_name(&a.server_name, &a.connect),
        expect_peer_identity: Some(a.server_identity.clone()),
        ..opts.clone()
    };
    let two_party = a.pre.preprocessing == common::Preprocessing::TwoParty;
    let dealer_addr = dealer_arg(&a.dealer, two_party)?;
    let dealer_tcp = TcpOptions {
        tls_server_name: tls_name(&a.dealer_name, &dealer_addr),
        expect_peer_identity: Some(a.dealer_identity.clone()),
        ..opts
    };
    let (mut server, mut dealer, max_batch) = if two_party {
        let (s, b) = deploy::client_open_two_party(&a.connect, &server_tcp)
            .with_context(|| format!("cannot open a session with the server at {}", a.connect))?;
        (s, None, b)
    } else {
        let ClientLinks { server, dealer, max_batch } =
            deploy::client_open(&a.connect, &server_tcp, &dealer_addr, &dealer_tcp).with_context(
                || {
                    format!(
                        "cannot open a session with the server at {} and the dealer at {}",
                        a.connect, dealer_addr
                    )
                },
            )?;
        (server, Some(dealer), max_batch)
    };
    tracing::info!(max_batch, two_party, "session opened");
    let mut sess = match dealer.as_mut() {
        Some(d) => ClientSession::connect(&mut server, d)
            .context("session setup with the server and dealer failed")?,
        None => ClientSession::connect_two_party(&mut server)
            .context("two-party session setup with the server failed")?,
    };
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
            if two_party { "none (two-party preprocessing)" } else { dealer_addr.as_str() },
            sess.setup.ms,
            sess.setup.bytes as f64 / 1e6
        );
    }
    let mut inputs = Vec::new();
    for (f, img) in a.input.iter().zip(&images) {
        let x = match img {
            Decoded::Image(img) => common::image_to_input(img, f, &plan),
            Decoded::Npy(shape, data) => common::npy_to_input(shape, data.clone(), f, &plan),
        };
        match x {
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
            let meaning = match v.kind {
                polypi_core::engine::guard::ViolationKind::Plausible => {
                    "outside the calibrated range but far below garbage: most likely a correct \
                     result for an unusual input"
                }
                polypi_core::engine::guard::ViolationKind::Garbage => "the result is garbage",
            };
            eprintln!(
                "warning: {}: range guard: {:?} max |x| {:.3e} > bound {:.3e} ({:?}): {meaning}",
                q.file, v.check, v.value, v.bound, v.kind
            );
        }
        if !a.json {
            println!(
                "{}: {} [{}] | online {:.2} ms ({} B sent, {} B received), offline {:.2} ms ({} B {})",
                q.file,
                q.label,
                common::fmt_top(&q.top3),
                q.online_ms,
                q.online_bytes_sent,
                q.online_bytes_received,
                q.offline_ms,
                q.offline_bytes_received,
                if two_party { "received in the two-party preprocessing" } else { "from dealer" }
            );
            std::io::stdout().flush().ok();
        }
        results.push(q);
    }
    let (setup_ms, setup_bytes) = (sess.setup.ms, sess.setup.bytes);
    sess.close().context("closing the session failed")?;
    let _ = server.close();
    if let Some(d) = dealer {
        let _ = d.close();
    }
    if a.json {
        let doc = QueryOutput {
            server: a.connect.clone(),
            dealer: dealer_addr.clone(),
            setup_ms,
            setup_bytes,
            results,
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(ExitCode::SUCCESS)
}
