//! Deployment of the three roles as separate processes (`polypi serve`, `polypi dealer`,
//! `polypi query`): session binding, concurrent sessions and admission control (design.md §7,
//! "sessions, not connections").
//!
//! # Opening a session (protocol version 2)
//!
//! 1. The client connects to the server (TLS; it verifies the server's certificate) and both
//!    exchange hellos. The server answers with an [`Admission`]: either a fresh random
//!    [`SessionId`] (256 bits from the OS CSPRNG) with the session's batch limit, or a refusal
//!    with its reason (too many sessions, memory budget).
//! 2. The server connects to the dealer (mutual TLS: the dealer accepts the `server` role only
//!    from a certificate valid for the configured server identity) and sends `id | max_batch`.
//! 3. The client connects to the dealer (TLS; it verifies the dealer) and sends `id`.
//! 4. The dealer pairs the two connections strictly by id and answers both with `1`; a
//!    connection that finds no partner within [`DealerOptions::pair_timeout`], or a pair beyond
//!    the dealer's session limit, is answered with a refusal and its reason (the encoding of
//!    [`Admission::Refused`]) and closed. Then the session runs as in [`super::session`]
//!    (seeds, skeleton, `F`, inferences).
//!
//! The id is a bearer secret known to the server and the client only (it travels inside TLS);
//! it is never logged. Knowing it lets a peer take the client's place at the dealer, which gives
//! nothing the client would not get anyway; the dealer cannot pair two servers or two clients.
//!
//! # Concurrency and admission
//!
//! Each connection runs on its own thread: a slow, idle or malicious peer holds only its own
//! thread, up to the handshake timeout (before admission) or the session's deadlines (after).
//! Handshakes in flight are bounded ([`ServerOptions::max_pending`]; beyond, new connections
//! are closed at once), and admitted sessions by [`ServerOptions::max_sessions`] and by a memory
//! budget: each session reserves [`session_memory_bytes`] of its plan at the server's batch
//! limit, and a client that would exceed the budget is refused with the reason.

use super::guard::GuardBounds;
use super::party::check_supported;
use super::plain::EncodedPlan;
use super::session::{deal_session_limited, serve_session_limited, SessionLimits};
use crate::error::{Error, Result};
use crate::model::Plan;
use crate::net::{tls, Channel, TcpChannel, TcpOptions};
use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Length of a [`SessionId`], bytes.
pub const SESSION_ID_BYTES: usize = 32;

/// Longest refusal reason sent to a client, bytes.
const MAX_REASON_BYTES: usize = 1024;

/// A session's id: 256 random bits from the OS CSPRNG, chosen by the server. `Debug` does not
/// print it (it is a bearer secret between server and client).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub [u8; SESSION_ID_BYTES]);

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId(..)")
    }
}

impl SessionId {
    /// A fresh id from the OS random generator. Errors: `Io` if the OS generator fails.
    pub fn random() -> Result<SessionId> {
        Ok(SessionId(crate::mpc::prg::Seed::from_os()?.0))
    }
}

/// The server's first message to a client: the session's id and batch limit, or why not.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Admitted: present `id` to the dealer; inferences of more than `max_batch` samples are
    /// refused.
    Accepted {
        /// The session's id.
        id: SessionId,
        /// Largest batch of one inference.
        max_batch: usize,
    },
    /// Refused, with the reason in words (the server's load or limits, never a secret).
    Refused(String),
}

impl Admission {
    /// Wire form: `1 | id (32) | max_batch (u64 LE)` or `0 | reason (UTF-8)`.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Admission::Accepted { id, max_batch } => {
                let mut v = vec![1u8];
                v.extend_from_slice(&id.0);
                v.extend_from_slice(&(*max_batch as u64).to_le_bytes());
                v
            }
            Admission::Refused(r) => {
                let mut v = vec![0u8];
                let mut end = r.len().min(MAX_REASON_BYTES);
                while !r.is_char_boundary(end) {
                    end -= 1;
                }
                v.extend_from_slice(&r.as_bytes()[..end]);
                v
            }
        }
    }

    /// Parses [`Admission::to_bytes`]. Errors: `Protocol` for any other message.
    pub fn from_bytes(m: &[u8]) -> Result<Admission> {
        match m.split_first() {
            Some((1, rest)) if rest.len() == SESSION_ID_BYTES + 8 => {
                let mut id = [0u8; SESSION_ID_BYTES];
                id.copy_from_slice(&rest[..SESSION_ID_BYTES]);
                let mut b = [0u8; 8];
                b.copy_from_slice(&rest[SESSION_ID_BYTES..]);
                let max_batch = usize::try_from(u64::from_le_bytes(b)).unwrap_or(usize::MAX);
                Ok(Admission::Accepted { id: SessionId(id), max_batch })
            }
            Some((0, rest)) => Ok(Admission::Refused(
                String::from_utf8_lossy(rest)
                    .chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect(),
            )),
            _ => Err(Error::Protocol("malformed admission message from the server".into())),
        }
    }
}

/// Memory one session reserves at the server, bytes: 2.5 x (the dealer's correlated randomness
/// plus the online messages of one inference of `batch` samples, exact sizes from
/// [`crate::cost::count`]) + 16 bytes per weight (the weight masks `B` and `F = W - B` of the
/// setup) + 8 MiB (threads, buffers). The factor 2.5 is the measured peak RSS over dealer bytes
/// of whole runs (see [`super::bench::check_memory_budget`]). With `two_party`, plus 2 x the
/// two-party preprocessing traffic ([`crate::offline::two_party::preprocessing_bytes`]): the
/// parsed ciphertexts and accumulators in NTT form (measured: NET-C x^2, batch 1, all roles
/// in one process, 155 MB peak RSS against 48 MB with the dealer, for 53.5 MB of traffic).
/// Errors: those of [`crate::cost::count`] (and of `preprocessing_bytes` with `two_party`);
/// `InvalidArgument` if the size overflows u64 or `two_party` is asked of a build without the
/// `two-party` feature.
pub fn session_memory_bytes(plan: &Plan, batch: usize, two_party: bool) -> Result<u64> {
    let dealer = dealer_session_memory_bytes(plan, batch)?;
    if !two_party {
        return Ok(dealer);
    }
    #[cfg(feature = "two-party")]
    {
        let wire: u64 = crate::offline::two_party::preprocessing_bytes(plan, batch)?
            .iter()
            .map(|(_, b)| *b)
            .sum();
        Ok(dealer.saturating_add(wire.saturating_mul(2)))
    }
    #[cfg(not(feature = "two-party"))]
    Err(Error::InvalidArgument(
        "this build has no two-party preprocessing (feature `two-party`)".into(),
    ))
}

fn dealer_session_memory_bytes(plan: &Plan, batch: usize) -> Result<u64> {
    let layers = crate::cost::count(plan, batch)?;
    let mut material = 0u64;
    for l in &layers {
        material = material
            .saturating_add(l.dealer_bytes())
            .saturating_add(l.bytes_client_to_server)
            .saturating_add(l.bytes_server_to_client);
    }
    let weights = crate::cost::session_cost(plan)?.masked_weight_bytes;
    let total = (material as f64 * 2.5) + (weights as f64 * 2.0) + (8u64 << 20) as f64;
    if !(total.is_finite() && total < u64::MAX as f64) {
        return Err(Error::InvalidArgument("session memory estimate overflows".into()));
    }
    Ok(total as u64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How one connection or session ended, for the process's log and stdout.
#[derive(Debug, Clone)]
pub struct SessionReport {
    /// Session number (1, 2, ... in admission order); 0 for a refused or failed connection.
    pub number: u64,
    /// The client's (at the dealer: the server's and the client's) socket address.
    pub peers: Vec<SocketAddr>,
    /// What happened.
    pub outcome: SessionOutcome,
}

/// The outcome of one connection.
#[derive(Debug, Clone)]
pub enum SessionOutcome {
    /// The session ran to its end: inferences and the server's summed online time, ms.
    Done {
        /// Inferences served.
        inferences: usize,
        /// Summed online time of this role, ms (0 at the dealer).
        online_ms: f64,
    },
    /// The session (or the connection's handshake) failed: the error, in words.
    Failed(String),
    /// The client was refused at admission: the reason it was sent.
    Refused(String),
}

/// Settings of a deployed server ([`DeployedServer`]).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Options of client connections (accepted): TLS, timeouts, frame limit.
    pub client_tcp: TcpOptions,
    /// The dealer's address (`host:port`).
    pub dealer_addr: String,
    /// Options of the connection to the dealer (dialled): TLS with our certificate and the
    /// dealer's expected name, timeouts, connect retry.
    pub dealer_tcp: TcpOptions,
    /// Per-session limits (batch, setup and inference deadlines).
    pub limits: SessionLimits,
    /// Most sessions served at once.
    pub max_sessions: usize,
    /// Most handshakes in flight (connections not yet admitted); beyond, new connections are
    /// closed at once.
    pub max_pending: usize,
    /// Memory the admitted sessions may reserve together, bytes ([`session_memory_bytes`]).
    pub memory_budget_bytes: u64,
    /// Dealer-free sessions ([`super::session::serve_session_two_party`], docs/two-party.md):
    /// no dealer is contacted (`dealer_addr` and `dealer_tcp` are unused) and plans with layers
    /// that have no two-party generator are refused at [`DeployedServer::new`].
    pub two_party: bool,
}

/// A server that runs sessions concurrently, each on its own thread (see the module docs).
pub struct DeployedServer {
    plan: Plan,
    enc: EncodedPlan,
    guard: Option<GuardBounds>,
    opts: ServerOptions,
    per_session: u64,
    /// Admitted sessions now.
    active: Mutex<usize>,
    pending: AtomicUsize,
    admitted: AtomicU64,
}

impl DeployedServer {
    /// Prepares a server for `plan` (the full model) with the client's range guard `guard`.
    /// Errors: `InvalidArgument` when the plan has layers without a 2PC protocol, or when one
    /// session at the batch limit does not fit the memory budget (the message gives both
    /// sizes); the errors of [`EncodedPlan::new`] and [`session_memory_bytes`].
    /// With `opts.two_party`, also `Graph` for a layer without a two-party generator.
    pub fn new(plan: Plan, guard: Option<GuardBounds>, opts: ServerOptions) -> Result<Self> {
        check_supported(&plan)?;
        if opts.two_party {
            #[cfg(feature = "two-party")]
            crate::offline::two_party::check_two_party_supported(&plan)?;
            #[cfg(not(feature = "two-party"))]
            return Err(Error::InvalidArgument(
                "this build has no two-party preprocessing (feature `two-party`)".into(),
            ));
        }
        if opts.limits.max_batch == 0 || opts.max_sessions == 0 || opts.max_pending == 0 {
            return Err(Error::InvalidArgument(
                "max batch, max sessions and max pending handshakes must be at least 1".into(),
            ));
        }
        let per_session = session_memory_bytes(&plan, opts.limits.max_batch, opts.two_party)?;
        if per_session > opts.memory_budget_bytes {
            return Err(Error::InvalidArgument(format!(
                "one session at batch {} needs about {:.1} MB, more than the memory budget of \
                 {:.1} MB: lower the batch limit or raise the budget",
                opts.limits.max_batch,
                per_session as f64 / 1e6,
                opts.memory_budget_bytes as f64 / 1e6
            )));
        }
        let enc = EncodedPlan::new(&plan)?;
        Ok(DeployedServer {
            plan,
            enc,
            guard,
            opts,
            per_session,
            active: Mutex::new(0),
            pending: AtomicUsize::new(0),
            admitted: AtomicU64::new(0),
        })
    }

    /// Sessions running now.
    pub fn active(&self) -> usize {
        *lock(&self.active)
    }

    /// Sessions admitted since start.
    pub fn admitted(&self) -> u64 {
        self.admitted.load(Ordering::SeqCst)
    }

    /// Memory one session reserves, bytes.
    pub fn session_bytes(&self) -> u64 {
        self.per_session
    }

    /// Most sessions that can run at once: the session limit, or fewer if the memory budget
    /// holds fewer.
    pub fn capacity(&self) -> usize {
        let by_memory = (self.opts.memory_budget_bytes / self.per_session.max(1)) as usize;
        self.opts.max_sessions.min(by_memory).max(1)
    }

    /// Reserves a session slot, or says why not.
    fn admit(&self) -> std::result::Result<(), String> {
        let mut a = lock(&self.active);
        let cap = self.capacity();
        if *a >= cap {
            let why = if cap < self.opts.max_sessions {
                format!(
                    "server busy: {a} sessions hold its memory budget ({:.0} MB, {:.1} MB per \
                     session); retry later",
                    self.opts.memory_budget_bytes as f64 / 1e6,
                    self.per_session as f64 / 1e6
                )
            } else {
                format!(
                    "server busy: {a} sessions running, the most it serves at once; retry later"
                )
            };
            return Err(why);
        }
        *a += 1;
        Ok(())
    }

    fn release(&self) {
        let mut a = lock(&self.active);
        *a = a.saturating_sub(1);
    }

    /// Serves clients arriving on `listener`, each connection on its own thread, until
    /// `stop_after` sessions were admitted (then waits for them) or forever. `report` is called
    /// once per finished session and per refused or failed connection (from the session's
    /// thread).
    /// Errors: `Io` if the listener fails (a failed connection is only reported).
    pub fn run(
        &self,
        listener: &TcpListener,
        stop_after: Option<u64>,
        report: &(dyn Fn(SessionReport) + Sync),
    ) -> Result<()> {
        let done = AtomicBool::new(false);
        let conn = |stream, peer| self.connection(stream, peer, report);
        let gate = Gate {
            done: &done,
            stop_after,
            counted: &self.admitted,
            pending: &self.pending,
            max_pending: self.opts.max_pending,
        };
        std::thread::scope(|s| gate.accept_into(s, listener, &conn))
    }

    /// One client connection: handshake, admission, dealer, session.
    fn connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        report: &(dyn Fn(SessionReport) + Sync),
    ) {
        let copts =
            TcpOptions { expect_peer_role: Some("client".into()), ..self.opts.client_tcp.clone() };
        let hs = TcpChannel::from_accepted(stream, "server", &copts);
        self.pending.fetch_sub(1, Ordering::SeqCst);
        let mut client = match hs {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("{peer}: handshake failed: {e}");
                report(SessionReport {
                    number: 0,
                    peers: vec![peer],
                    outcome: SessionOutcome::Failed(format!("handshake: {e}")),
                });
                return;
            }
        };
        if let Err(why) = self.admit() {
            let _ = client.send(&Admission::Refused(why.clone()).to_bytes());
            let _ = client.close();
            report(SessionReport {
                number: 0,
                peers: vec![peer],
                outcome: SessionOutcome::Refused(why),
            });
            return;
        }
        let number = self.admitted.fetch_add(1, Ordering::SeqCst) + 1;
        if !client.is_tls() {
            tracing::warn!(
                "session {number}: plaintext link to client {peer} (--insecure-plaintext): anyone \
                 on the path can read the client's input and the model's masked weights"
            );
        }
        let result = self.session(&mut client);
        // The slot is free as soon as the session's work is: the client may already be opening
        // its next session while our last bytes drain.
        self.release();
        let outcome = match result {
            Ok((inferences, online_ms)) => {
                let _ = client.close();
                SessionOutcome::Done { inferences, online_ms }
            }
            Err(e) => SessionOutcome::Failed(e.to_string()),
        };
        report(SessionReport { number, peers: vec![peer], outcome });
    }

    fn session(&self, client: &mut TcpChannel) -> Result<(usize, f64)> {
        let id = SessionId::random()?;
        let max_batch = self.opts.limits.max_batch;
        client.send(&Admission::Accepted { id, max_batch }.to_bytes())?;
        client.flush()?;
        #[cfg(feature = "two-party")]
        if self.opts.two_party {
            let tr = super::session::serve_session_two_party(
                &self.plan,
                &self.enc,
                self.guard,
                &self.opts.limits,
                client,
                false,
            )?;
            return Ok((tr.len(), tr.iter().map(|t| t.online_ms).sum()));
        }
        let dopts =
            TcpOptions { expect_peer_role: Some("dealer".into()), ..self.opts.dealer_tcp.clone() };
        let mut dealer = TcpChannel::connect(self.opts.dealer_addr.as_str(), "server", &dopts)
            .map_err(|e| match e {
                Error::Io(io) => Error::Io(std::io::Error::new(
                    io.kind(),
                    format!("cannot reach the dealer at {}: {io}", self.opts.dealer_addr),
                )),
                other => other,
            })?;
        let mut open = id.0.to_vec();
        open.extend_from_slice(&(max_batch as u64).to_le_bytes());
        dealer.send(&open)?;
        dealer.flush()?;
        await_pairing(&mut dealer, &self.opts.dealer_addr)?;
        let tr = serve_session_limited(
            &self.plan,
            &self.enc,
            self.guard,
            &self.opts.limits,
            client,
            &mut dealer,
            false,
        )?;
        let _ = dealer.close();
        Ok((tr.len(), tr.iter().map(|t| t.online_ms).sum()))
    }
}

/// How a listener hands out connections: each to its own scoped thread, at most `max_pending`
/// unfinished ones (the thread decrements `pending` when its connection is settled), until
/// `counted` (sessions admitted or paired) reaches `stop_after`.
struct Gate<'e> {
    done: &'e AtomicBool,
    stop_after: Option<u64>,
    counted: &'e AtomicU64,
    pending: &'e AtomicUsize,
    max_pending: usize,
}

impl<'e> Gate<'e> {
    fn reached(&self) -> bool {
        self.stop_after.is_some_and(|n| self.counted.load(Ordering::SeqCst) >= n)
    }

    /// Accepts until [`Gate::reached`] (then returns; the scope joins the threads) or forever.
    fn accept_into<'s>(
        &'s self,
        s: &'s std::thread::Scope<'s, 'e>,
        listener: &TcpListener,
        connection: &'e (dyn Fn(TcpStream, SocketAddr) + Sync),
    ) -> Result<()> {
        let r = accept_loop(listener, self.done, self.stop_after.is_some(), |stream, peer| {
            if self.reached() {
                self.done.store(true, Ordering::SeqCst);
                return;
            }
            if self.pending.fetch_add(1, Ordering::SeqCst) >= self.max_pending {
                self.pending.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!("{peer}: too many connections in their handshake; closed");
                return;
            }
            s.spawn(move || {
                connection(stream, peer);
                if self.reached() {
                    self.done.store(true, Ordering::SeqCst);
                }
            });
        });
        self.done.store(true, Ordering::SeqCst);
        r
    }
}

/// Accepts connections until `done`, handing each to `handle` (which must not block). With
/// `poll`, the listener is polled (so `done` is noticed); otherwise accept blocks.
fn accept_loop(
    listener: &TcpListener,
    done: &AtomicBool,
    poll: bool,
    mut handle: impl FnMut(TcpStream, SocketAddr),
) -> Result<()> {
    listener.set_nonblocking(poll)?;
    let mut failures = 0u32;
    while !done.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((s, peer)) => {
                failures = 0;
                if s.set_nonblocking(false).is_ok() {
                    handle(s, peer);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                // Out of file descriptors and the like: back off, give up after a long streak.
                failures += 1;
                tracing::warn!("accept failed: {e}");
                if failures > 1000 {
                    return Err(Error::Io(e));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    Ok(())
}

/// Settings of a deployed dealer ([`DeployedDealer`]).
#[derive(Debug, Clone)]
pub struct DealerOptions {
    /// Options of accepted connections: TLS (with client certificates requested), timeouts,
    /// frame limit, send-queue bound (backpressure).
    pub tcp: TcpOptions,
    /// With TLS: the name (DNS SAN) a peer's certificate must be valid for before the dealer
    /// accepts it in the `server` role (default [`tls::SERVER_IDENTITY`]).
    pub server_identity: String,
    /// How long a connection waits for its partner (same session id, other role).
    pub pair_timeout: Duration,
    /// Per-session limits; the batch limit is the smaller of this and the server's.
    pub limits: SessionLimits,
    /// Most sessions dealt at once; beyond, a new pair is closed.
    pub max_sessions: usize,
    /// Most connections in their handshake or waiting for a partner; beyond, new connections
    /// are closed at once.
    pub max_pending: usize,
}

/// One connection waiting for its partner at the dealer.
struct Waiting {
    server_side: bool,
    ch: TcpChannel,
    since: Instant,
    max_batch: usize,
}

/// A dealer that pairs server and client strictly by session id and deals sessions
/// concurrently (see the module docs).
pub struct DeployedDealer {
    opts: DealerOptions,
    waiting: Mutex<HashMap<SessionId, Waiting>>,
    active: AtomicUsize,
    pending: AtomicUsize,
    paired: AtomicU64,
}

impl DeployedDealer {
    /// A dealer with `opts`. Errors: `InvalidArgument` for zero limits.
    pub fn new(opts: DealerOptions) -> Result<Self> {
        if opts.max_sessions == 0 || opts.max_pending == 0 || opts.pair_timeout.is_zero() {
            return Err(Error::InvalidArgument(
                "max sessions, max pending connections and the pairing timeout must be positive"
                    .into(),
            ));
        }
        Ok(DeployedDealer {
            opts,
            waiting: Mutex::new(HashMap::new()),
            active: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            paired: AtomicU64::new(0),
        })
    }

    /// Connections now in their handshake or waiting for a partner.
    pub fn unpaired(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Deals sessions for connections arriving on `listener` until `stop_after` sessions were
    /// paired (then waits for them) or forever; `report` is called per finished session and per
    /// failed or expired connection.
    /// Errors: `Io` if the listener fails.
    pub fn run(
        &self,
        listener: &TcpListener,
        stop_after: Option<u64>,
        report: &(dyn Fn(SessionReport) + Sync),
    ) -> Result<()> {
        let done_flag = AtomicBool::new(false);
        let done = &done_flag;
        let conn = |stream, peer| self.connection(stream, peer, report);
        let gate = Gate {
            done,
            stop_after,
            counted: &self.paired,
            pending: &self.pending,
            max_pending: self.opts.max_pending,
        };
        std::thread::scope(|s| {
            // Reaper: closes connections whose partner did not come in time.
            s.spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(100));
                    let expired: Vec<Waiting> = {
                        let mut w = lock(&self.waiting);
                        let ids: Vec<SessionId> = w
                            .iter()
                            .filter(|(_, v)| v.since.elapsed() >= self.opts.pair_timeout)
                            .map(|(k, _)| *k)
                            .collect();
                        ids.iter().filter_map(|k| w.remove(k)).collect()
                    };
                    for mut x in expired {
                        self.pending.fetch_sub(1, Ordering::SeqCst);
                        let role = if x.server_side { "server" } else { "client" };
                        let why = format!(
                            "no partner with this session id reached the dealer within {} s",
                            self.opts.pair_timeout.as_secs_f64()
                        );
                        let _ = x.ch.send(&Admission::Refused(why.clone()).to_bytes());
                        let _ = x.ch.flush();
                        report(SessionReport {
                            number: 0,
                            peers: vec![x.ch.peer_addr()],
                            outcome: SessionOutcome::Failed(format!("{role} connection: {why}")),
                        });
                    }
                }
            });
            let r = gate.accept_into(s, listener, &conn);
            done.store(true, Ordering::SeqCst);
            r
        })
    }

    fn fail(&self, peer: SocketAddr, why: String, report: &(dyn Fn(SessionReport) + Sync)) {
        self.pending.fetch_sub(1, Ordering::SeqCst);
        tracing::warn!("{peer}: {why}");
        report(SessionReport {
            number: 0,
            peers: vec![peer],
            outcome: SessionOutcome::Failed(why),
        });
    }

    /// One connection: handshake, role and identity check, session id, pairing; the second of
    /// a pair runs the session.
    fn connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        report: &(dyn Fn(SessionReport) + Sync),
    ) {
        let mut ch = match TcpChannel::from_accepted(stream, "dealer", &self.opts.tcp) {
            Ok(c) => c,
            Err(e) => return self.fail(peer, format!("handshake failed: {e}"), report),
        };
        let server_side = match ch.peer_role() {
            "server" => true,
            "client" => false,
            other => {
                return self.fail(
                    peer,
                    format!("unknown role '{other}' (expected server or client)"),
                    report,
                )
            }
        };
        if server_side && ch.is_tls() {
            let ok = ch
                .peer_certificate()
                .is_some_and(|c| tls::cert_valid_for(c, &self.opts.server_identity));
            if !ok {
                return self.fail(
                    peer,
                    format!(
                        "refused the server role: its certificate is not valid for '{}'",
                        self.opts.server_identity
                    ),
                    report,
                );
            }
        }
        ch.set_deadline(Some(Instant::now() + self.opts.pair_timeout));
        let want = if server_side { SESSION_ID_BYTES + 8 } else { SESSION_ID_BYTES };
        let open = match ch.recv_expect(want) {
            Ok(m) => m,
            Err(e) => return self.fail(peer, format!("no session id: {e}"), report),
        };
        ch.set_deadline(None);
        let mut id = [0u8; SESSION_ID_BYTES];
        id.copy_from_slice(&open[..SESSION_ID_BYTES]);
        let id = SessionId(id);
        let max_batch = if server_side {
            let mut b = [0u8; 8];
            b.copy_from_slice(&open[SESSION_ID_BYTES..]);
            usize::try_from(u64::from_le_bytes(b)).unwrap_or(usize::MAX)
        } else {
            0
        };
        let partner = {
            let mut w = lock(&self.waiting);
            match w.remove(&id) {
                Some(p) if p.server_side != server_side => Some(p),
                Some(p) => {
                    // Same role twice for one id: keep the first, refuse this one.
                    w.insert(id, p);
                    drop(w);
                    return self.fail(
                        peer,
                        "a second connection of the same role for one session id".into(),
                        report,
                    );
                }
                None => {
                    w.insert(id, Waiting { server_side, ch, since: Instant::now(), max_batch });
                    return;
                }
            }
        };
        let Some(partner) = partner else { return };
        // Both connections leave the unpaired count.
        self.pending.fetch_sub(2, Ordering::SeqCst);
        let (mut server, mut client, server_batch) = if server_side {
            (ch, partner.ch, max_batch)
        } else {
            (partner.ch, ch, partner.max_batch)
        };
        let peers = vec![server.peer_addr(), client.peer_addr()];
        if self.active.fetch_add(1, Ordering::SeqCst) >= self.opts.max_sessions {
            self.active.fetch_sub(1, Ordering::SeqCst);
            let why = format!(
                "dealer busy: {} sessions running, the most it deals at once; retry later",
                self.opts.max_sessions
            );
            for ch in [&mut server, &mut client] {
                let _ = ch.send(&Admission::Refused(why.clone()).to_bytes());
                let _ = ch.flush();
            }
            let _ = server.close();
            let _ = client.close();
            report(SessionReport { number: 0, peers, outcome: SessionOutcome::Refused(why) });
            return;
        }
        for ch in [&mut server, &mut client] {
            if let Err(e) = ch.send(&[1u8]).and_then(|_| ch.flush()) {
                self.active.fetch_sub(1, Ordering::SeqCst);
                report(SessionReport {
                    number: 0,
                    peers,
                    outcome: SessionOutcome::Failed(format!("pairing: {e}")),
                });
                return;
            }
        }
        let number = self.paired.fetch_add(1, Ordering::SeqCst) + 1;
        if !server.is_tls() {
            tracing::warn!(
                "session {number}: plaintext links to the server and the client \
                 (--insecure-plaintext): anyone on the path can read the seeds"
            );
        }
        let limits = SessionLimits {
            max_batch: self.opts.limits.max_batch.min(server_batch),
            ..self.opts.limits
        };
        let outcome = match deal_session_limited(&mut server, &mut client, &limits) {
            Ok(tr) => {
                let _ = server.close();
                let _ = client.close();
                SessionOutcome::Done { inferences: tr.len(), online_ms: 0.0 }
            }
            Err(e) => SessionOutcome::Failed(e.to_string()),
        };
        self.active.fetch_sub(1, Ordering::SeqCst);
        report(SessionReport { number, peers, outcome });
    }
}

/// The client's two links of an admitted session.
pub struct ClientLinks {
    /// To the server.
    pub server: TcpChannel,
    /// To the dealer (already bound to the session).
    pub dealer: TcpChannel,
    /// The session's batch limit.
    pub max_batch: usize,
}

/// Opens a session as the client: connects to the server (`server_tcp`, expecting role
/// `server`), reads its [`Admission`], then connects to the dealer (`dealer_tcp`) and presents
/// the session id. Continue with [`super::session::ClientSession::connect`].
/// Errors: `Refused` with the server's reason; the connection errors of
/// [`TcpChannel::connect`] (`Io`, `Tls`, `VersionMismatch`, `PeerDisconnected`, `Protocol`).
pub fn client_open(
    server_addr: &str,
    server_tcp: &TcpOptions,
    dealer_addr: &str,
    dealer_tcp: &TcpOptions,
) -> Result<ClientLinks> {
    let (server, id, max_batch) = open_at_server(server_addr, server_tcp)?;
    let dopts = TcpOptions { expect_peer_role: Some("dealer".into()), ..dealer_tcp.clone() };
    let mut dealer = TcpChannel::connect(dealer_addr, "client", &dopts)?;
    dealer.send(&id.0)?;
    dealer.flush()?;
    await_pairing(&mut dealer, dealer_addr)?;
    Ok(ClientLinks { server, dealer, max_batch })
}

/// Opens a dealer-free session as the client (docs/two-party.md): connects to the server and
/// reads its [`Admission`]; returns the channel and the session's batch limit. Continue with
/// [`super::session::ClientSession::connect_two_party`].
/// Errors: as [`client_open`] for the server's part.
pub fn client_open_two_party(
    server_addr: &str,
    server_tcp: &TcpOptions,
) -> Result<(TcpChannel, usize)> {
    let (server, _, max_batch) = open_at_server(server_addr, server_tcp)?;
    Ok((server, max_batch))
}

/// Connects to the server and reads its admission: the channel, the session id and batch limit.
fn open_at_server(
    server_addr: &str,
    server_tcp: &TcpOptions,
) -> Result<(TcpChannel, SessionId, usize)> {
    let so = TcpOptions { expect_peer_role: Some("server".into()), ..server_tcp.clone() };
    let mut server = TcpChannel::connect(server_addr, "client", &so)?;
    match Admission::from_bytes(&server.recv_max(1 + MAX_REASON_BYTES + 64)?)? {
        Admission::Accepted { id, max_batch } => Ok((server, id, max_batch)),
        Admission::Refused(reason) => {
            Err(Error::Refused { peer: format!("server at {server_addr}"), reason })
        }
    }
}

/// Waits for the dealer's answer to a session id: `1` once the partner arrived (the session
/// starts), or a refusal with its reason (dealer busy, partner never came).
/// Errors: `Refused` with the dealer's reason; `PeerDisconnected` when the dealer closes
/// without an answer; `Protocol` for another message.
pub fn await_pairing(dealer: &mut TcpChannel, dealer_addr: &str) -> Result<()> {
    let m = dealer.recv_max(1 + MAX_REASON_BYTES)?;
    if m == [1u8] {
        return Ok(());
    }
    match Admission::from_bytes(&m) {
        Ok(Admission::Refused(reason)) => {
            Err(Error::Refused { peer: format!("dealer at {dealer_addr}"), reason })
        }
        _ => Err(Error::Protocol("malformed pairing answer from the dealer".into())),
    }
}

/// The host part of `host:port` (brackets of an IPv6 literal removed), the name a TLS peer's
/// certificate must be valid for when dialling `addr`. `None` without a port.
pub fn host_of(addr: &str) -> Option<String> {
    let (host, _port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_roundtrip_and_malformed() {
        let id = SessionId([7u8; SESSION_ID_BYTES]);
        let a = Admission::Accepted { id, max_batch: 8 };
        assert_eq!(Admission::from_bytes(&a.to_bytes()).unwrap(), a);
        let r = Admission::Refused("busy".into());
        assert_eq!(Admission::from_bytes(&r.to_bytes()).unwrap(), r);
        let long = Admission::Refused("é".repeat(2000));
        assert!(long.to_bytes().len() <= 1 + MAX_REASON_BYTES);
        assert!(Admission::from_bytes(&[1, 2, 3]).is_err());
        assert!(Admission::from_bytes(&[]).is_err());
        assert_eq!(format!("{id:?}"), "SessionId(..)");
        assert_ne!(SessionId::random().unwrap(), SessionId::random().unwrap());
    }

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("127.0.0.1:7000").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_of("localhost:1").as_deref(), Some("localhost"));
        assert_eq!(host_of("[::1]:7000").as_deref(), Some("::1"));
        assert_eq!(host_of("nohost"), None);
    }
}
