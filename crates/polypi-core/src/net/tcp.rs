//! TCP channel with framing, a protocol-version handshake and optional TLS 1.3. OWNER: net
//! helper.
//!
//! Plain `std::net` (blocking sockets, one channel per peer, no async runtime); TLS records by
//! rustls ([`super::tls`]) when [`TcpOptions::tls`] is set, which every deployed link must do.
//!
//! # Wire format
//!
//! With TLS, the TLS 1.3 handshake runs first and everything below travels inside TLS records.
//! On every new connection both sides then send a *hello* and read the other's:
//!
//! ```text
//! "POLYPI" (6 bytes) | protocol version (u32 LE, = PROTOCOL_VERSION) | role length (u8) | role (UTF-8)
//! ```
//!
//! A peer whose first bytes are not `POLYPI` (an HTTP client, a port scanner, another program) is
//! refused with [`Error::VersionMismatch`] `{ theirs: "not a polypi peer" }` as soon as the first
//! differing byte arrives; a peer with another version with `VersionMismatch { ours, theirs }`
//! (the version numbers); a silent peer with [`Error::PeerDisconnected`] after
//! [`TcpOptions::handshake_timeout`] (which bounds the TLS handshake and the hello together); a
//! peer that fails the TLS handshake (no TLS, unknown CA, wrong name, missing client
//! certificate) with [`Error::Tls`]. Then every message is one frame:
//!
//! ```text
//! payload length in bytes (u64 LE) | payload
//! ```
//!
//! Frames longer than [`TcpOptions::max_frame_bytes`] are refused with [`Error::Protocol`] on
//! both the sending and the receiving side, and [`Channel::recv_max`] refuses a frame longer
//! than the caller expects *before* reading or allocating it. Neither hello nor frame headers
//! nor TLS overhead are counted in [`ChannelStats`].
//!
//! # Timeouts
//!
//! [`TcpOptions::read_timeout`] bounds a whole message (from the call to `recv` to its last
//! byte), not one `read()`: a peer that trickles one byte at a time is cut off when the message
//! deadline passes. [`Channel::set_deadline`] adds a phase deadline (setup, one inference) that
//! bounds every read and write until it is cleared. Writes of one batch are bounded by
//! [`TcpOptions::write_timeout`] in the same way.
//!
//! # Example
//!
//! ```no_run
//! use polypi_core::net::{bind, Channel, TcpChannel, TcpOptions};
//! # fn main() -> polypi_core::Result<()> {
//! let opts = TcpOptions::default();
//! // Server process:
//! let listener = bind("0.0.0.0:7000")?;
//! let mut to_client = TcpChannel::accept(&listener, "server", &opts)?;
//! // Client process (retries for `opts.connect_retry_for` while the server starts):
//! let mut to_server = TcpChannel::connect("10.0.0.1:7000", "client", &opts)?;
//! to_server.send(b"x1 - a")?;
//! to_server.flush()?; // or the next recv() flushes
//! let msg = to_client.recv()?;
//! # Ok(()) }
//! ```
//!
//! In one process (tests, `polypi infer`), [`tcp_loopback_pair`] gives two connected channels.
//!
//! # Writes
//!
//! `send` appends the frame to a local buffer; the buffer is handed to the channel's writer
//! thread on `flush`, on `recv`, and whenever it exceeds [`TcpOptions::write_buffer_bytes`]. The
//! writer thread puts it on the socket (encrypting it first with TLS) while this thread goes on
//! (typically into `recv`), so two parties that both send a large message and then receive —
//! opening a shared value — cannot deadlock on full socket buffers. `flush` therefore does not
//! wait for the bytes to reach the peer; dropping (or [`TcpChannel::close`]) a channel waits
//! until everything handed over is written (bounded by the write timeout), so a last message is
//! not lost when a process exits. [`TcpOptions::max_queued_bytes`] bounds what waits for the
//! writer thread (backpressure: `send`/`flush` block while more is queued), for one-way streams
//! such as the dealer's.
//!
//! After any error a `TcpChannel` is *broken*: the byte stream may be out of step, so every
//! later call returns `PeerDisconnected` with the first error's reason.

use super::tls::TlsConfig;
use super::{fmt_secs, Channel, ChannelStats, StatsCounter, PROTOCOL_VERSION};
use crate::error::{Error, Result};
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{self, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Magic bytes opening every hello.
const MAGIC: &[u8; 6] = b"POLYPI";
/// Longest role string accepted in a hello, in bytes.
const MAX_ROLE_BYTES: usize = 255;
/// Plaintext bytes encrypted per lock of the TLS connection (bounds the ciphertext buffer).
const TLS_CHUNK: usize = 1 << 20;

/// Settings of a [`TcpChannel`]. `TcpOptions::default()` suits deployment (add [`Self::tls`]);
/// tests usually shorten the timeouts:
/// `TcpOptions { read_timeout: Some(Duration::from_secs(5)), ..Default::default() }`.
#[derive(Debug, Clone)]
pub struct TcpOptions {
    /// How long one `recv` may take, from the call to the last byte of the message, before it
    /// returns `PeerDisconnected` ("timed out after N s"). `None`: wait forever. Default: 60 s.
    pub read_timeout: Option<Duration>,
    /// How long writing one batch of frames may take on a peer that does not read; then the next
    /// `send`/`flush` returns `PeerDisconnected`. Dropping a channel waits at most about this
    /// long for its pending writes. `None`: forever. Default: 60 s.
    pub write_timeout: Option<Duration>,
    /// How long the TLS handshake and the hello may take together. Default: 10 s.
    pub handshake_timeout: Duration,
    /// Timeout of one TCP connection attempt in [`TcpChannel::connect`]. Default: 5 s.
    pub connect_timeout: Duration,
    /// How long [`TcpChannel::connect`] keeps retrying while the peer is not listening yet
    /// (connection refused, unreachable, ...). `Duration::ZERO`: one attempt. Default: 30 s.
    pub connect_retry_for: Duration,
    /// How long [`TcpChannel::accept`] waits for a peer to connect. `None`: forever (default).
    pub accept_timeout: Option<Duration>,
    /// Largest message accepted or sent, in bytes. Default: 4 GiB (2^32 bytes).
    pub max_frame_bytes: u64,
    /// Size of the send buffer, in bytes: small `send`s are coalesced until the next
    /// `recv`/`flush` or until this many bytes are pending. Default: 256 KiB.
    pub write_buffer_bytes: usize,
    /// If set, the handshake fails with `Protocol` unless the peer announces exactly this role
    /// (e.g. the server expects "client"). Default: `None` (any role).
    pub expect_peer_role: Option<String>,
    /// TLS 1.3 (rustls): certificates and CA of this process. `None`: plaintext TCP, for
    /// in-process loopback runs and `--insecure-plaintext` only (anyone on the path reads and
    /// changes everything). Default: `None`.
    pub tls: Option<Arc<TlsConfig>>,
    /// When connecting with TLS: the name (DNS name or IP address) the peer's certificate must
    /// be valid for. `None`: the IP address dialled. Default: `None`.
    pub tls_server_name: Option<String>,
    /// With TLS: a name (DNS subject alternative name, e.g. [`super::tls::DEALER_IDENTITY`]) the
    /// peer's certificate must also be valid for: the role identity, so that a certificate of
    /// another role of the same CA (valid for the same host names) cannot stand in for it.
    /// `None`: no check beyond the CA and the name dialled. Default: `None`.
    pub expect_peer_identity: Option<String>,
    /// Bytes handed to the writer thread but not yet written beyond which `send`/`flush` wait
    /// (backpressure, bounded by the write timeout). `None`: unbounded (default; needed where
    /// both peers send large messages before reading, as in an exchange). Use it for one-way
    /// streams (the dealer's).
    pub max_queued_bytes: Option<usize>,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            read_timeout: Some(Duration::from_secs(60)),
            write_timeout: Some(Duration::from_secs(60)),
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            connect_retry_for: Duration::from_secs(30),
            accept_timeout: None,
            max_frame_bytes: 1 << 32,
            write_buffer_bytes: 256 << 10,
            expect_peer_role: None,
            tls: None,
            tls_server_name: None,
            expect_peer_identity: None,
            max_queued_bytes: None,
        }
    }
}

/// A [`Channel`] over one TCP connection: optional TLS 1.3, length-prefixed frames, buffered
/// writes through a writer thread, TCP_NODELAY, per-message and per-phase deadlines, and a
/// versioned hello (see the [module docs](self)).
pub struct TcpChannel {
    source: Source,
    /// Our handle of the socket (shutdown, addresses).
    sock: TcpStream,
    /// Frames not yet handed to the writer thread.
    pending: Vec<u8>,
    write_buffer_bytes: usize,
    /// Batches of frames for the writer thread; `None` once closed.
    to_writer: Option<Sender<Vec<u8>>>,
    writer: Option<JoinHandle<()>>,
    /// The writer thread's error, if a write failed: (kind, message).
    write_error: Arc<Mutex<Option<(ErrorKind, String)>>>,
    /// Bytes handed to the writer thread and not yet written (backpressure).
    queued: Arc<(Mutex<usize>, Condvar)>,
    max_queued_bytes: Option<usize>,
    counter: StatsCounter,
    /// "ROLE at ADDR", for error messages.
    peer: String,
    peer_role: String,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    /// Phase deadline ([`Channel::set_deadline`]).
    phase_deadline: Option<Instant>,
    max_frame_bytes: u64,
    /// The peer's verified TLS end-entity certificate, if it presented one.
    peer_cert: Option<CertificateDer<'static>>,
    tls: bool,
    /// Reason of the first error; set once the stream may be out of step.
    broken: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn deadline_passed() -> io::Error {
    io::Error::new(ErrorKind::TimedOut, "deadline passed")
}

/// The socket timeout that ends at `deadline` (`Err(TimedOut)` once it passed), or `idle`.
fn timeout_until(
    deadline: Option<Instant>,
    idle: Option<Duration>,
) -> io::Result<Option<Duration>> {
    match deadline {
        None => Ok(idle),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(deadline_passed())
            } else {
                Ok(Some(left))
            }
        }
    }
}

/// The reading half of the socket, with a deadline applied to every `read()`.
struct DeadlineSocket {
    sock: TcpStream,
    /// Reads fail with `TimedOut` once this passes.
    deadline: Option<Instant>,
    /// Timeout of one read without a deadline.
    idle: Option<Duration>,
    /// The timeout last set on the socket.
    applied: Option<Option<Duration>>,
}

impl Read for DeadlineSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let t = timeout_until(self.deadline, self.idle)?;
        if self.applied != Some(t) {
            self.sock.set_read_timeout(t)?;
            self.applied = Some(t);
        }
        self.sock.read(buf)
    }
}

/// Writes all of `buf`, failing with `TimedOut` once `deadline` passes.
fn write_all_until(s: &mut TcpStream, mut buf: &[u8], deadline: Option<Instant>) -> io::Result<()> {
    while !buf.is_empty() {
        if deadline.is_some() {
            s.set_write_timeout(timeout_until(deadline, None)?)?;
        }
        match s.write(buf) {
            Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "socket accepted no bytes")),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The TLS state shared by the reading thread and the writer thread. Records must reach the
/// socket in the order rustls produced them, so `write_tls` is only called while `out` is held.
struct TlsShared {
    conn: Mutex<rustls::Connection>,
    /// The writing half of the socket.
    out: Mutex<TcpStream>,
    write_timeout: Option<Duration>,
}

/// Takes every TLS record rustls has ready.
fn drain_records(c: &mut rustls::Connection) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut v)?;
    }
    Ok(v)
}

impl TlsShared {
    /// Encrypts `plain` and writes its records, in chunks of [`TLS_CHUNK`].
    fn write_plain(&self, plain: &[u8], deadline: Option<Instant>) -> io::Result<()> {
        let mut out = lock(&self.out);
        for chunk in plain.chunks(TLS_CHUNK) {
            let records = {
                let mut c = lock(&self.conn);
                c.writer().write_all(chunk)?;
                drain_records(&mut c)?
            };
            write_all_until(&mut out, &records, deadline)?;
        }
        self.write_ready(&mut out, deadline)?;
        drop(out);
        self.try_flush()
    }

    /// Writes what rustls has ready (alerts, key updates, close_notify); `out` is held.
    fn write_ready(&self, out: &mut TcpStream, deadline: Option<Instant>) -> io::Result<()> {
        loop {
            let records = drain_records(&mut lock(&self.conn))?;
            if records.is_empty() {
                return Ok(());
            }
            write_all_until(out, &records, deadline)?;
        }
    }

    /// Writes ready records unless the writer thread holds the socket (it writes them itself
    /// after releasing it, see [`Self::write_plain`]).
    fn try_flush(&self) -> io::Result<()> {
        loop {
            match self.out.try_lock() {
                Ok(mut out) => {
                    let deadline = self.write_timeout.map(|t| Instant::now() + t);
                    self.write_ready(&mut out, deadline)?;
                }
                Err(_) => return Ok(()),
            }
            if !lock(&self.conn).wants_write() {
                return Ok(());
            }
        }
    }

    /// Sends close_notify (best effort).
    fn close(&self, deadline: Option<Instant>) {
        let mut out = lock(&self.out);
        lock(&self.conn).send_close_notify();
        let _ = self.write_ready(&mut out, deadline);
    }
}

/// The reading half of a TLS connection: socket bytes in, plaintext out.
struct TlsReader {
    sock: DeadlineSocket,
    shared: Arc<TlsShared>,
    raw: Vec<u8>,
    pos: usize,
    len: usize,
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let mut c = lock(&self.shared.conn);
            let mut feed_err = None;
            while self.pos < self.len {
                match c.read_tls(&mut &self.raw[self.pos..self.len]) {
                    Ok(0) => break,
                    Ok(n) => {
                        self.pos += n;
                        if let Err(e) = c.process_new_packets() {
                            drop(c);
                            // Tell the peer why (a fatal alert), then fail.
                            let _ = self.shared.try_flush();
                            return Err(io::Error::new(ErrorKind::InvalidData, e));
                        }
                    }
                    // rustls' plaintext buffer is full: hand out plaintext first.
                    Err(e) => {
                        feed_err = Some(e);
                        break;
                    }
                }
            }
            match c.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if let Some(e) = feed_err {
                return Err(e);
            }
            let wants_write = c.wants_write();
            drop(c);
            if wants_write {
                let _ = self.shared.try_flush();
            }
            let n = self.sock.read(&mut self.raw)?;
            (self.pos, self.len) = (0, n);
            if n == 0 {
                // EOF: rustls then reports a clean close (Ok(0)) or a truncation.
                let mut c = lock(&self.shared.conn);
                c.read_tls(&mut &[][..])?;
                let _ = c.process_new_packets();
            }
        }
    }
}

/// Where frames are read from.
enum Source {
    Plain(BufReader<DeadlineSocket>),
    Tls(TlsReader),
}

impl Source {
    fn socket(&mut self) -> &mut DeadlineSocket {
        match self {
            Source::Plain(r) => r.get_mut(),
            Source::Tls(t) => &mut t.sock,
        }
    }
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Plain(r) => r.read(buf),
            Source::Tls(t) => t.read(buf),
        }
    }
}

/// Where the writer thread puts batches of frames.
enum Sink {
    Plain(TcpStream),
    Tls(Arc<TlsShared>),
}

impl Sink {
    fn write_batch(&mut self, batch: &[u8], deadline: Option<Instant>) -> io::Result<()> {
        match self {
            Sink::Plain(s) => write_all_until(s, batch, deadline),
            Sink::Tls(t) => t.write_plain(batch, deadline),
        }
    }
}
/// Outcome of reading into a whole buffer.
enum ReadFail {
    /// The peer closed the connection after `got` bytes of the buffer.
    Eof { got: usize },
    /// An I/O error (timeout included) after `got` bytes.
    Io { got: usize, err: io::Error },
}

/// Reads until `buf` is full, reporting how far it got on failure.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::result::Result<(), ReadFail> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Err(ReadFail::Eof { got }),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(ReadFail::Io { got, err }),
        }
    }
    Ok(())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof
            | ErrorKind::NotConnected
    )
}

fn check_timeout(t: Option<Duration>, what: &str) -> Result<()> {
    if t == Some(Duration::ZERO) {
        return Err(Error::InvalidArgument(format!(
            "{what} must be positive or None (wait forever), got 0"
        )));
    }
    Ok(())
}

fn hello_bytes(role: &str) -> Result<Vec<u8>> {
    if role.len() > MAX_ROLE_BYTES {
        return Err(Error::InvalidArgument(format!(
            "role name '{role}' is {} bytes long; at most {MAX_ROLE_BYTES}",
            role.len()
        )));
    }
    let mut h = Vec::with_capacity(11 + role.len());
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    h.push(role.len() as u8);
    h.extend_from_slice(role.as_bytes());
    Ok(h)
}

/// Binds a listening socket with a queue of [`LISTEN_BACKLOG`] (e.g. `"0.0.0.0:7000"`, or `"127.0.0.1:0"` for a free port; read it
/// back with `local_addr()`).
///
/// Errors: `Io` with kind `AddrInUse` and a message naming the address when another process
/// listens there; `Io` with context for an address that is not on this machine, a privileged
/// port, or an unresolvable name.
pub fn bind(addr: impl ToSocketAddrs) -> Result<TcpListener> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| {
            Error::Io(io::Error::new(e.kind(), format!("cannot resolve listen address: {e}")))
        })?
        .collect();
    let shown = addrs.first().map(|a| a.to_string()).unwrap_or_else(|| "(no address)".into());
    listen_any(&addrs).map_err(|e| {
        let msg = match e.kind() {
            ErrorKind::AddrInUse => format!(
                "address {shown} is already in use (another polypi server or another program \
                 listens there); stop it or choose another port"
            ),
            ErrorKind::AddrNotAvailable => {
                format!("address {shown} is not an address of this machine: {e}")
            }
            ErrorKind::PermissionDenied => format!(
                "permission denied listening on {shown} (ports below 1024 need privileges): {e}"
            ),
            _ => format!("cannot listen on {shown}: {e}"),
        };
        Error::Io(io::Error::new(e.kind(), msg))
    })
}

/// Length of a listener's queue of connections not yet accepted (the OS may cap it: Linux at
/// `net.core.somaxconn`, 4096 by default). `std`'s default of 128 drops connections in bursts
/// of clients.
pub const LISTEN_BACKLOG: i32 = 1024;

/// Binds the first of `addrs` that works, with [`LISTEN_BACKLOG`] (socket2).
fn listen_any(addrs: &[SocketAddr]) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut last = io::Error::new(ErrorKind::InvalidInput, "address resolved to nothing");
    for a in addrs {
        let attempt = (|| {
            let s = Socket::new(Domain::for_address(*a), Type::STREAM, Some(Protocol::TCP))?;
            #[cfg(unix)]
            s.set_reuse_address(true)?;
            s.bind(&(*a).into())?;
            s.listen(LISTEN_BACKLOG)?;
            Ok::<TcpListener, io::Error>(s.into())
        })();
        match attempt {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Two connected TCP channels over the loopback interface (127.0.0.1, a free port), for tests
/// and in-process runs: returns `(a, b)` where `a` accepted the connection announcing `role_a`
/// and `b` connected announcing `role_b`. The handshake runs as on a real network.
///
/// Errors: those of [`bind`], [`TcpChannel::connect`] and [`TcpChannel::accept`].
pub fn tcp_loopback_pair(
    role_a: &str,
    role_b: &str,
    opts: &TcpOptions,
) -> Result<(TcpChannel, TcpChannel)> {
    let listener = bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut accept_opts = opts.clone();
    if accept_opts.accept_timeout.is_none() {
        accept_opts.accept_timeout =
            Some(opts.connect_retry_for + opts.handshake_timeout + Duration::from_secs(5));
    }
    let role_a = role_a.to_string();
    let acceptor = std::thread::spawn(move || TcpChannel::accept(&listener, &role_a, &accept_opts));
    let b = TcpChannel::connect(addr, role_b, opts)?;
    let a = acceptor
        .join()
        .map_err(|_| Error::Protocol("loopback accept thread panicked".into()))??;
    Ok((a, b))
}

/// Which side of the TLS handshake a connection takes.
enum TlsSide {
    /// We dialled: verify the peer's certificate for this name.
    Connect(ServerName<'static>),
    /// We accepted.
    Accept,
}

/// The name a connecting side checks the peer's certificate against.
fn server_name_for(opts: &TcpOptions, addr: SocketAddr) -> Result<ServerName<'static>> {
    match &opts.tls_server_name {
        Some(n) => ServerName::try_from(n.clone()).map_err(|e| {
            Error::InvalidArgument(format!("TLS server name '{n}' is not a DNS name or IP: {e}"))
        }),
        None => Ok(ServerName::IpAddress(addr.ip().into())),
    }
}

impl TcpChannel {
    /// Connects to `addr` (e.g. `"10.0.0.2:7000"`), runs the TLS handshake when
    /// [`TcpOptions::tls`] is set (verifying the peer's certificate for
    /// [`TcpOptions::tls_server_name`] or the address dialled, and presenting ours), then the
    /// hello, announcing `role` (e.g. "client"). While the peer is not listening yet, retries
    /// (with back-off up to 0.5 s) for [`TcpOptions::connect_retry_for`].
    ///
    /// Errors: `Io` ("could not connect to ADDR within N s: ...") when no attempt succeeded;
    /// `Tls` when the TLS handshake fails; `VersionMismatch` when the peer is not a polypi peer
    /// or has another [`PROTOCOL_VERSION`]; `PeerDisconnected` when it closes or stays silent
    /// during the handshake; `Protocol` when it announces a role other than
    /// [`TcpOptions::expect_peer_role`]; `InvalidArgument` for a role over 255 bytes, a zero
    /// timeout or a TLS server name that is not a DNS name or IP address.
    pub fn connect(addr: impl ToSocketAddrs, role: &str, opts: &TcpOptions) -> Result<TcpChannel> {
        hello_bytes(role)?;
        check_timeout(opts.read_timeout, "read_timeout")?;
        check_timeout(opts.write_timeout, "write_timeout")?;
        let start = Instant::now();
        let deadline = start + opts.connect_retry_for;
        let mut backoff = Duration::from_millis(20);
        loop {
            let addrs: Vec<SocketAddr> = addr
                .to_socket_addrs()
                .map_err(|e| {
                    Error::Io(io::Error::new(e.kind(), format!("cannot resolve peer address: {e}")))
                })?
                .collect();
            let shown =
                addrs.first().map(|a| a.to_string()).unwrap_or_else(|| "(no address)".into());
            let mut last_err = io::Error::new(ErrorKind::NotFound, "address resolved to nothing");
            for a in &addrs {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let attempt = opts.connect_timeout.min(remaining).max(Duration::from_millis(50));
                match TcpStream::connect_timeout(a, attempt) {
                    Ok(stream) => {
                        let side = match opts.tls {
                            Some(_) => Some(TlsSide::Connect(server_name_for(opts, *a)?)),
                            None => None,
                        };
                        return Self::handshake(stream, role, opts, side);
                    }
                    Err(e) => last_err = e,
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Io(io::Error::new(
                    last_err.kind(),
                    format!(
                        "could not connect to {shown} as {role} within {} s: {last_err}",
                        fmt_secs(now - start)
                    ),
                )));
            }
            std::thread::sleep(backoff.min(deadline - now));
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Accepts one connection on `listener` and runs the TLS handshake (when
    /// [`TcpOptions::tls`] is set) and the hello, announcing `role` (e.g. "server"). Waits for a
    /// connection for [`TcpOptions::accept_timeout`] (default forever). A failed handshake (say,
    /// an HTTP client probing the port) is returned as an error; the listener stays usable.
    /// A server that must not be held up by a slow peer accepts the socket itself and hands it
    /// to [`TcpChannel::from_accepted`] on another thread.
    ///
    /// Errors: `Io` with kind `TimedOut` when no peer connected in time; otherwise as
    /// [`TcpChannel::connect`].
    pub fn accept(listener: &TcpListener, role: &str, opts: &TcpOptions) -> Result<TcpChannel> {
        hello_bytes(role)?;
        check_timeout(opts.read_timeout, "read_timeout")?;
        check_timeout(opts.write_timeout, "write_timeout")?;
        let stream = match opts.accept_timeout {
            None => listener.accept()?.0,
            Some(t) => {
                listener.set_nonblocking(true)?;
                let deadline = Instant::now() + t;
                let res = loop {
                    match listener.accept() {
                        Ok((s, _)) => break Ok(s),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            if Instant::now() >= deadline {
                                let at = listener
                                    .local_addr()
                                    .map(|a| a.to_string())
                                    .unwrap_or_else(|_| "?".into());
                                break Err(Error::Io(io::Error::new(
                                    ErrorKind::TimedOut,
                                    format!("no peer connected to {at} within {} s", fmt_secs(t)),
                                )));
                            }
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => break Err(Error::Io(e)),
                    }
                };
                listener.set_nonblocking(false)?;
                res?
            }
        };
        Self::from_accepted(stream, role, opts)
    }

    /// Runs the accepting side's TLS handshake (when [`TcpOptions::tls`] is set) and hello on a
    /// socket a listener returned, announcing `role`; bounded by
    /// [`TcpOptions::handshake_timeout`]. Errors: as [`TcpChannel::accept`].
    pub fn from_accepted(stream: TcpStream, role: &str, opts: &TcpOptions) -> Result<TcpChannel> {
        hello_bytes(role)?;
        check_timeout(opts.read_timeout, "read_timeout")?;
        check_timeout(opts.write_timeout, "write_timeout")?;
        stream.set_nonblocking(false)?;
        let side = opts.tls.as_ref().map(|_| TlsSide::Accept);
        Self::handshake(stream, role, opts, side)
    }

    /// TLS handshake (if any), our hello, the peer's hello, then the steady-state timeouts and
    /// the writer thread.
    fn handshake(
        stream: TcpStream,
        role: &str,
        opts: &TcpOptions,
        tls: Option<TlsSide>,
    ) -> Result<TcpChannel> {
        let hello = hello_bytes(role)?;
        stream.set_nodelay(true)?;
        let peer_addr = stream.peer_addr()?;
        let local_addr = stream.local_addr()?;
        let ht = opts.handshake_timeout.max(Duration::from_millis(1));
        let deadline = Instant::now() + ht;
        let at = peer_addr.to_string();
        let fail =
            |reason: String| Error::PeerDisconnected { peer: at.clone(), after_bytes: 0, reason };
        let io_fail = |e: io::Error, doing: &str| {
            if is_timeout(&e) {
                fail(format!("timed out after {} s {doing}", fmt_secs(ht)))
            } else if is_disconnect(&e) {
                fail(format!("{doing}: {e}"))
            } else if e.kind() == ErrorKind::InvalidData {
                tls_error(&at, &e)
            } else {
                Error::Io(io::Error::new(e.kind(), format!("{doing} with {at}: {e}")))
            }
        };
        let dsock = |s: TcpStream| DeadlineSocket {
            sock: s,
            deadline: Some(deadline),
            idle: opts.read_timeout,
            applied: None,
        };
        let (mut source, mut sink, peer_cert) = match (&opts.tls, tls) {
            (Some(cfg), Some(side)) => {
                let conn: rustls::Connection = match side {
                    TlsSide::Connect(name) => {
                        rustls::ClientConnection::new(cfg.client.clone(), name)
                            .map_err(|e| tls_error(&at, &e))?
                            .into()
                    }
                    TlsSide::Accept => rustls::ServerConnection::new(cfg.server.clone())
                        .map_err(|e| tls_error(&at, &e))?
                        .into(),
                };
                let mut conn = conn;
                conn.set_buffer_limit(None);
                let mut io = TlsHandshakeIo { sock: stream.try_clone()?, deadline };
                while conn.is_handshaking() {
                    conn.complete_io(&mut io)
                        .map_err(|e| io_fail(e, "during the TLS handshake"))?;
                }
                let rest = drain_records(&mut conn).map_err(|e| io_fail(e, "TLS handshake"))?;
                write_all_until(&mut io.sock, &rest, Some(deadline))
                    .map_err(|e| io_fail(e, "finishing the TLS handshake"))?;
                let cert = conn.peer_certificates().and_then(|c| c.first()).cloned();
                if let Some(name) = &opts.expect_peer_identity {
                    if !cert.as_ref().is_some_and(|c| super::tls::cert_valid_for(c, name)) {
                        return Err(Error::Tls {
                            peer: at.clone(),
                            reason: format!(
                                "its certificate is not valid for the identity '{name}' (a \
                                 certificate of another role, or of no role)"
                            ),
                        });
                    }
                }
                let shared = Arc::new(TlsShared {
                    conn: Mutex::new(conn),
                    out: Mutex::new(stream.try_clone()?),
                    write_timeout: opts.write_timeout,
                });
                let reader = TlsReader {
                    sock: dsock(stream.try_clone()?),
                    shared: shared.clone(),
                    raw: vec![0u8; 64 << 10],
                    pos: 0,
                    len: 0,
                };
                (Source::Tls(reader), Sink::Tls(shared), cert)
            }
            _ => {
                let reader = BufReader::with_capacity(256 << 10, dsock(stream.try_clone()?));
                (Source::Plain(reader), Sink::Plain(stream.try_clone()?), None)
            }
        };
        sink.write_batch(&hello, Some(deadline))
            .map_err(|e| io_fail(e, "sending the polypi hello"))?;

        let not_polypi = || Error::VersionMismatch {
            peer: at.clone(),
            ours: PROTOCOL_VERSION.to_string(),
            theirs: "not a polypi peer".into(),
        };
        // Magic, checked byte by byte as it arrives so that garbage fails at once.
        let mut magic = [0u8; 6];
        let mut got = 0;
        while got < magic.len() {
            match source.read(&mut magic[got..]) {
                Ok(0) => {
                    return Err(fail(format!(
                        "connection closed during the polypi hello (after {got} bytes)"
                    )))
                }
                Ok(n) => {
                    got += n;
                    if magic[..got] != MAGIC[..got] {
                        // 0x16 0x03: a TLS handshake record, from a peer with TLS on.
                        if opts.tls.is_none() && magic[0] == 0x16 {
                            return Err(Error::Tls {
                                peer: at.clone(),
                                reason: "the peer speaks TLS and this side runs without it \
                                         (give both sides --tls-dir)"
                                    .into(),
                            });
                        }
                        return Err(not_polypi());
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io_fail(e, "waiting for the polypi hello")),
            }
        }
        let mut rest = |buf: &mut [u8]| {
            read_full(&mut source, buf).map_err(|f| match f {
                ReadFail::Eof { .. } => {
                    fail("connection closed during the polypi hello".to_string())
                }
                ReadFail::Io { err, .. } => io_fail(err, "waiting for the polypi hello"),
            })
        };
        let mut v = [0u8; 4];
        rest(&mut v)?;
        let theirs = u32::from_le_bytes(v);
        if theirs != PROTOCOL_VERSION {
            return Err(Error::VersionMismatch {
                peer: at.clone(),
                ours: PROTOCOL_VERSION.to_string(),
                theirs: theirs.to_string(),
            });
        }
        let mut len = [0u8; 1];
        rest(&mut len)?;
        let mut role_buf = vec![0u8; len[0] as usize];
        rest(&mut role_buf)?;
        // Untrusted text: keep it printable (it goes into messages and a thread name).
        let peer_role: String = String::from_utf8_lossy(&role_buf)
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        if let Some(exp) = &opts.expect_peer_role {
            if *exp != peer_role {
                return Err(Error::Protocol(format!(
                    "expected a '{exp}' peer at {at}, but it announced itself as '{peer_role}'"
                )));
            }
        }

        source.socket().deadline = None;
        stream.set_write_timeout(opts.write_timeout)?;
        let write_error = Arc::new(Mutex::new(None));
        let queued = Arc::new((Mutex::new(0usize), Condvar::new()));
        let (to_writer, batches) = channel::<Vec<u8>>();
        let slot = write_error.clone();
        let queued_w = queued.clone();
        let write_timeout = opts.write_timeout;
        let handle = std::thread::Builder::new()
            .name(format!("polypi-net-writer ({peer_role} at {at})"))
            .spawn(move || {
                // Exits when the channel is dropped (all batches written) or on the first error.
                for batch in batches {
                    let deadline = write_timeout.map(|t| Instant::now() + t);
                    let r = sink.write_batch(&batch, deadline);
                    {
                        let (m, cv) = &*queued_w;
                        let mut q = lock(m);
                        *q = q.saturating_sub(batch.len());
                        cv.notify_all();
                    }
                    if let Err(e) = r {
                        *lock(&slot) = Some((e.kind(), e.to_string()));
                        let (_, cv) = &*queued_w;
                        cv.notify_all();
                        return;
                    }
                }
                if let Sink::Tls(t) = &sink {
                    t.close(write_timeout.map(|t| Instant::now() + t));
                }
            })?;
        Ok(TcpChannel {
            source,
            sock: stream,
            pending: Vec::new(),
            write_buffer_bytes: opts.write_buffer_bytes,
            to_writer: Some(to_writer),
            writer: Some(handle),
            write_error,
            queued,
            max_queued_bytes: opts.max_queued_bytes,
            counter: StatsCounter::default(),
            peer: format!("{peer_role} at {at}"),
            peer_role,
            peer_addr,
            local_addr,
            read_timeout: opts.read_timeout,
            write_timeout: opts.write_timeout,
            phase_deadline: None,
            max_frame_bytes: opts.max_frame_bytes,
            peer_cert,
            tls: opts.tls.is_some(),
            broken: None,
        })
    }

    /// Sets how long one `recv` may take (`None`: forever). Takes effect on the next read.
    /// Errors: `InvalidArgument` for a zero duration.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        check_timeout(timeout, "read timeout")?;
        self.source.socket().idle = timeout;
        self.read_timeout = timeout;
        Ok(())
    }

    /// Sets how long a write may block on a peer that does not read (`None`: forever).
    /// Errors: `InvalidArgument` for a zero duration; `Io` from the socket.
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        check_timeout(timeout, "write timeout")?;
        // Socket options are shared with the writer thread's handle of the same socket.
        self.sock.set_write_timeout(timeout)?;
        self.write_timeout = timeout;
        Ok(())
    }

    /// The role the peer announced in its hello (e.g. "client").
    pub fn peer_role(&self) -> &str {
        &self.peer_role
    }

    /// The peer's socket address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// Our socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether the link runs TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The peer's TLS end-entity certificate (DER), verified against our CA during the
    /// handshake; `None` without TLS or when the peer presented none (allowed only where client
    /// authentication is optional).
    pub fn peer_certificate(&self) -> Option<&CertificateDer<'static>> {
        self.peer_cert.as_ref()
    }

    /// Writes out every pending send (waiting for the writer thread, bounded by the write
    /// timeout), sends TLS close_notify and closes our sending half, so the peer's `recv` after
    /// the last message returns `PeerDisconnected` at once instead of waiting for its timeout.
    /// Errors: `PeerDisconnected`/`Io` if a write failed.
    pub fn close(mut self) -> Result<()> {
        self.flush()?;
        self.finish_writes();
        self.check_writer()?;
        let _ = self.sock.shutdown(Shutdown::Write);
        Ok(())
    }

    /// Hands the pending frames to the writer thread, then lets it finish and joins it.
    fn finish_writes(&mut self) {
        if !self.pending.is_empty() && self.broken.is_none() {
            if let Some(tx) = &self.to_writer {
                let _ = tx.send(std::mem::take(&mut self.pending));
            }
        }
        self.to_writer = None;
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }

    /// The writer thread's error, mapped like a read error, if it had one.
    fn check_writer(&mut self) -> Result<()> {
        let failed = lock(&self.write_error).clone();
        match failed {
            None => Ok(()),
            Some((kind, msg)) => {
                let e = self.map_write(io::Error::new(kind, msg));
                Err(self.poison(e))
            }
        }
    }

    /// Waits while more than `max_queued_bytes` wait for the writer thread (bounded by the
    /// write timeout and the phase deadline).
    fn wait_for_queue(&mut self) -> Result<()> {
        let Some(max) = self.max_queued_bytes else { return Ok(()) };
        let deadline =
            earliest(self.write_timeout.map(|t| Instant::now() + t), self.phase_deadline);
        let (m, cv) = &*self.queued;
        let mut q = lock(m);
        while *q > max {
            if lock(&self.write_error).is_some() {
                break;
            }
            let wait = match deadline {
                None => Duration::from_secs(1),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        drop(q);
                        let e = self.map_write(io::Error::new(ErrorKind::TimedOut, "queue full"));
                        return Err(self.poison(e));
                    }
                    left.min(Duration::from_secs(1))
                }
            };
            q = cv.wait_timeout(q, wait).unwrap_or_else(|p| p.into_inner()).0;
        }
        Ok(())
    }

    /// Hands the pending frames to the writer thread.
    fn hand_off(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.check_writer()?;
        self.wait_for_queue()?;
        self.check_writer()?;
        let batch = std::mem::take(&mut self.pending);
        let n = batch.len();
        *lock(&self.queued.0) += n;
        let sent = match &self.to_writer {
            Some(tx) => tx.send(batch).is_ok(),
            None => false,
        };
        if !sent {
            // The writer thread stopped: it recorded why, unless the channel was closed.
            self.check_writer()?;
            let e = self.disconnected("the connection's writer has stopped".into());
            return Err(self.poison(e));
        }
        Ok(())
    }

    fn check_usable(&self) -> Result<()> {
        match &self.broken {
            None => Ok(()),
            Some(r) => Err(Error::PeerDisconnected {
                peer: self.peer.clone(),
                after_bytes: self.counter.stats().total_bytes(),
                reason: format!("channel unusable after an earlier error: {r}"),
            }),
        }
    }

    /// Marks the channel broken with the reason of `e`, and returns `e`.
    fn poison(&mut self, e: Error) -> Error {
        if self.broken.is_none() {
            self.broken = Some(e.to_string());
        }
        e
    }

    fn disconnected(&self, reason: String) -> Error {
        Error::PeerDisconnected {
            peer: self.peer.clone(),
            after_bytes: self.counter.stats().total_bytes(),
            reason,
        }
    }

    fn map_io(&self, e: io::Error, timeout: Option<Duration>, doing: &str) -> Error {
        if is_timeout(&e) {
            let t = timeout.map(fmt_secs).unwrap_or_else(|| "?".into());
            if self.phase_deadline.is_some_and(|d| Instant::now() >= d) {
                self.disconnected(format!("the phase deadline passed {doing}"))
            } else {
                self.disconnected(format!("timed out after {t} s {doing}"))
            }
        } else if is_disconnect(&e) {
            self.disconnected(format!("{doing}: {e}"))
        } else if e.kind() == ErrorKind::InvalidData && self.tls {
            tls_error(&self.peer, &e)
        } else {
            Error::Io(e)
        }
    }

    fn map_write(&self, e: io::Error) -> Error {
        if is_timeout(&e) {
            self.map_io(e, self.write_timeout, "sending (the peer is not reading)")
        } else {
            self.map_io(e, self.write_timeout, "sending")
        }
    }

    /// Reads one frame of at most `max` bytes (checked from the header, before reading or
    /// allocating the payload), within the message deadline.
    fn read_frame(&mut self, max: u64) -> Result<Vec<u8>> {
        let deadline = earliest(self.read_timeout.map(|t| Instant::now() + t), self.phase_deadline);
        self.source.socket().deadline = deadline;
        let r = self.read_frame_inner(max);
        self.source.socket().deadline = None;
        r
    }

    fn read_frame_inner(&mut self, max: u64) -> Result<Vec<u8>> {
        let mut header = [0u8; 8];
        match read_full(&mut self.source, &mut header) {
            Ok(()) => {}
            Err(ReadFail::Eof { got: 0 }) => {
                return Err(self.disconnected("connection closed by peer".into()))
            }
            Err(ReadFail::Eof { got }) => {
                return Err(self.disconnected(format!(
                    "connection closed in the middle of a frame header ({got} of 8 bytes)"
                )))
            }
            Err(ReadFail::Io { err, .. }) => {
                return Err(self.map_io(err, self.read_timeout, "waiting for a message"))
            }
        }
        let len = u64::from_le_bytes(header);
        if len > self.max_frame_bytes {
            return Err(Error::Protocol(format!(
                "{} announced a message of {len} bytes, more than the maximum frame size of {} \
                 bytes",
                self.peer, self.max_frame_bytes
            )));
        }
        if len > max {
            return Err(Error::Protocol(format!(
                "{} announced a message of {len} bytes where the protocol expects at most {max}",
                self.peer
            )));
        }
        let len = usize::try_from(len).map_err(|_| {
            Error::Protocol(format!("message of {len} bytes does not fit in memory"))
        })?;
        // Grow the buffer as data arrives, so a bogus length cannot allocate gigabytes up front.
        const STEP: usize = 64 << 20;
        let mut buf = Vec::new();
        let mut filled = 0;
        while filled < len {
            let next = len.min(filled.saturating_mul(2).max(STEP));
            buf.resize(next, 0);
            match read_full(&mut self.source, &mut buf[filled..next]) {
                Ok(()) => filled = next,
                Err(ReadFail::Eof { got }) => {
                    return Err(self.disconnected(format!(
                        "connection closed in the middle of a message ({} of {len} bytes)",
                        filled + got
                    )))
                }
                Err(ReadFail::Io { err, got }) => {
                    let doing =
                        format!("in the middle of a message ({} of {len} bytes)", filled + got);
                    return Err(self.map_io(err, self.read_timeout, &doing));
                }
            }
        }
        Ok(buf)
    }
}

/// The socket of a TLS handshake, as `Read + Write` with one deadline for the whole handshake.
struct TlsHandshakeIo {
    sock: TcpStream,
    deadline: Instant,
}

impl Read for TlsHandshakeIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.set_read_timeout(timeout_until(Some(self.deadline), None)?)?;
        self.sock.read(buf)
    }
}

impl Write for TlsHandshakeIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.set_write_timeout(timeout_until(Some(self.deadline), None)?)?;
        self.sock.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

/// [`Error::Tls`] from a rustls error, with a hint for the usual causes.
fn tls_error(peer: &str, e: &dyn std::fmt::Display) -> Error {
    let reason = e.to_string();
    let hint = if reason.contains("CorruptMessage")
        || reason.contains("InvalidContentType")
        || reason.contains("corrupt message")
        || reason.contains("invalid content type")
    {
        " (the peer does not speak TLS: give both sides --tls-dir, or both --insecure-plaintext)"
    } else if reason.contains("UnknownIssuer") || reason.contains("unknown issuer") {
        " (its certificate is not from our CA: use the ca.pem of the same `polypi certs` run)"
    } else if reason.contains("NotValidForName") || reason.contains("not valid for name") {
        " (its certificate does not name the address dialled: use --tls-server-name or \
         regenerate the certificates with this host)"
    } else if reason.contains("CertificateRequired") || reason.contains("certificate required") {
        " (the peer requires a client certificate)"
    } else {
        ""
    };
    Error::Tls { peer: peer.to_string(), reason: format!("{reason}{hint}") }
}

impl Channel for TcpChannel {
    /// Buffers one frame; it goes out on the next `recv`/`flush`, or earlier once the buffer is
    /// full. Errors: `Protocol` if `msg` exceeds `max_frame_bytes`; `PeerDisconnected` if an
    /// earlier write failed because the peer closed or stopped reading for `write_timeout`.
    fn send(&mut self, msg: &[u8]) -> Result<()> {
        self.check_usable()?;
        if msg.len() as u64 > self.max_frame_bytes {
            return Err(Error::Protocol(format!(
                "message of {} bytes exceeds the maximum frame size of {} bytes",
                msg.len(),
                self.max_frame_bytes
            )));
        }
        self.counter.on_send(msg.len());
        self.pending.reserve(8 + msg.len());
        self.pending.extend_from_slice(&(msg.len() as u64).to_le_bytes());
        self.pending.extend_from_slice(msg);
        if self.pending.len() >= self.write_buffer_bytes {
            self.hand_off()?;
        }
        Ok(())
    }

    /// Flushes pending sends, then reads one frame. Errors: `PeerDisconnected` on EOF, reset or
    /// `read_timeout`; `Protocol` for a frame over `max_frame_bytes`.
    fn recv(&mut self) -> Result<Vec<u8>> {
        self.recv_max(u64::MAX as usize)
    }

    /// [`Channel::recv`] that refuses (with `Protocol`, before reading the payload) a frame
    /// longer than `max_bytes`.
    fn recv_max(&mut self, max_bytes: usize) -> Result<Vec<u8>> {
        self.check_usable()?;
        self.counter.on_recv_start();
        // Only fails on a write error if there is something to write: a message the peer sent
        // before it went away is still delivered.
        self.hand_off()?;
        match self.read_frame(max_bytes as u64) {
            Ok(m) => {
                self.counter.on_recv(m.len());
                Ok(m)
            }
            Err(e) => Err(self.poison(e)),
        }
    }

    /// Hands pending sends to the writer thread (does not wait for them to reach the peer).
    /// Errors: `PeerDisconnected`/`Io` if an earlier write failed.
    fn flush(&mut self) -> Result<()> {
        self.check_usable()?;
        self.check_writer()?;
        self.hand_off()
    }

    fn stats(&self) -> ChannelStats {
        self.counter.stats()
    }

    fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.phase_deadline = deadline;
    }
}

impl Drop for TcpChannel {
    /// Writes out what was sent (waiting for the writer thread, bounded by the write timeout).
    fn drop(&mut self) {
        self.finish_writes();
    }
}

impl std::fmt::Debug for TcpChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpChannel")
            .field("peer", &self.peer)
            .field("local_addr", &self.local_addr)
            .field("tls", &self.tls)
            .field("stats", &self.counter.stats())
            .field("broken", &self.broken)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> TcpOptions {
        TcpOptions {
            read_timeout: Some(Duration::from_secs(10)),
            handshake_timeout: Duration::from_secs(5),
            connect_retry_for: Duration::from_secs(5),
            ..Default::default()
        }
    }

    #[test]
    fn net_tcp_hello_layout() {
        let h = hello_bytes("client").unwrap();
        assert_eq!(&h[..6], b"POLYPI");
        assert_eq!(u32::from_le_bytes(h[6..10].try_into().unwrap()), PROTOCOL_VERSION);
        assert_eq!(h[10], 6);
        assert_eq!(&h[11..], b"client");
        assert!(matches!(hello_bytes(&"x".repeat(256)), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn net_tcp_pair_roles_and_small_messages() {
        let (mut a, mut b) = tcp_loopback_pair("server", "client", &quick()).unwrap();
        assert_eq!(a.peer_role(), "client");
        assert_eq!(b.peer_role(), "server");
        assert_eq!(a.peer_addr(), b.local_addr());
        a.send(b"ping").unwrap();
        a.send(b"").unwrap();
        a.flush().unwrap(); // sends are buffered until recv or flush
        assert_eq!(b.recv().unwrap(), b"ping");
        assert_eq!(b.recv().unwrap(), b"");
        b.send(b"pong").unwrap();
        b.flush().unwrap();
        assert_eq!(a.recv().unwrap(), b"pong");
        assert_eq!(a.stats().send_phases, 1);
        assert_eq!(b.stats().send_phases, 1);
        assert_eq!(a.stats().bytes_sent, 4);
        assert_eq!(b.stats().bytes_received, 4);
    }

    #[test]
    fn net_tcp_expect_peer_role() {
        let opts = TcpOptions { expect_peer_role: Some("client".into()), ..quick() };
        let r = tcp_loopback_pair("server", "dealer", &opts);
        assert!(matches!(r, Err(Error::Protocol(_))), "{r:?}");
    }

    #[test]
    fn net_tcp_zero_timeout_rejected() {
        let (mut a, _b) = tcp_loopback_pair("a", "b", &quick()).unwrap();
        assert!(matches!(a.set_read_timeout(Some(Duration::ZERO)), Err(Error::InvalidArgument(_))));
        a.set_read_timeout(None).unwrap();
    }

    #[test]
    fn net_tcp_send_oversize_rejected_locally() {
        let opts = TcpOptions { max_frame_bytes: 16, ..quick() };
        let (mut a, mut b) = tcp_loopback_pair("a", "b", &opts).unwrap();
        assert!(matches!(a.send(&[0u8; 17]), Err(Error::Protocol(_))));
        // A refused send does not break the channel.
        a.send(&[1u8; 16]).unwrap();
        a.flush().unwrap();
        assert_eq!(b.recv().unwrap(), vec![1u8; 16]);
    }
}
