//! TCP channel with framing and a protocol-version handshake. OWNER: net helper.
//!
//! Plain `std::net` (blocking sockets, one channel per peer, no async runtime).
//!
//! # Wire format
//!
//! On every new connection both sides first send a *hello* and read the other's:
//!
//! ```text
//! "POLYPI" (6 bytes) | protocol version (u32 LE, = PROTOCOL_VERSION) | role length (u8) | role (UTF-8)
//! ```
//!
//! A peer whose first bytes are not `POLYPI` (an HTTP client, a port scanner, another program) is
//! refused with [`Error::VersionMismatch`] `{ theirs: "not a polypi peer" }` as soon as the first
//! differing byte arrives; a peer with another version with `VersionMismatch { ours, theirs }`
//! (the version numbers); a silent peer with [`Error::PeerDisconnected`] after
//! [`TcpOptions::handshake_timeout`]. Then every message is one frame:
//!
//! ```text
//! payload length in bytes (u64 LE) | payload
//! ```
//!
//! Frames longer than [`TcpOptions::max_frame_bytes`] are refused with [`Error::Protocol`] on
//! both the sending and the receiving side. Neither hello nor frame headers are counted in
//! [`ChannelStats`].
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
//! writer thread puts it on the socket while this thread goes on (typically into `recv`), so two
//! parties that both send a large message and then receive — opening a shared value — cannot
//! deadlock on full socket buffers. `flush` therefore does not wait for the bytes to reach the
//! peer; dropping (or [`TcpChannel::close`]) a channel waits until everything handed over is
//! written (bounded by the write timeout), so a last message is not lost when a process exits.
//!
//! After any error a `TcpChannel` is *broken*: the byte stream may be out of step, so every
//! later call returns `PeerDisconnected` with the first error's reason.

use super::{fmt_secs, Channel, ChannelStats, StatsCounter, PROTOCOL_VERSION};
use crate::error::{Error, Result};
use std::io::{self, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Magic bytes opening every hello.
const MAGIC: &[u8; 6] = b"POLYPI";
/// Longest role string accepted in a hello, in bytes.
const MAX_ROLE_BYTES: usize = 255;

/// Settings of a [`TcpChannel`]. `TcpOptions::default()` suits deployment; tests usually shorten
/// the timeouts: `TcpOptions { read_timeout: Some(Duration::from_secs(5)), ..Default::default() }`.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpOptions {
    /// How long `recv` waits without any byte arriving before it returns `PeerDisconnected`
    /// ("timed out after N s"). `None`: wait forever. Default: 60 s.
    pub read_timeout: Option<Duration>,
    /// How long a write may block on a peer that does not read; then the next `send`/`flush`
    /// returns `PeerDisconnected`. Dropping a channel waits at most about this long for its
    /// pending writes. `None`: forever. Default: 60 s.
    pub write_timeout: Option<Duration>,
    /// How long to wait for the peer's hello (and to send ours). Default: 10 s.
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
        }
    }
}

/// A [`Channel`] over one TCP connection: length-prefixed frames, buffered writes through a
/// writer thread, TCP_NODELAY, read/write timeouts, and a versioned hello (see the
/// [module docs](self)).
pub struct TcpChannel {
    reader: BufReader<TcpStream>,
    /// Frames not yet handed to the writer thread.
    pending: Vec<u8>,
    write_buffer_bytes: usize,
    /// Batches of frames for the writer thread; `None` once closed.
    to_writer: Option<Sender<Vec<u8>>>,
    writer: Option<JoinHandle<()>>,
    /// The writer thread's error, if a write failed: (kind, message).
    write_error: Arc<Mutex<Option<(ErrorKind, String)>>>,
    counter: StatsCounter,
    /// "ROLE at ADDR", for error messages.
    peer: String,
    peer_role: String,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    max_frame_bytes: u64,
    /// Reason of the first error; set once the stream may be out of step.
    broken: Option<String>,
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

/// Binds a listening socket (e.g. `"0.0.0.0:7000"`, or `"127.0.0.1:0"` for a free port; read it
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
    TcpListener::bind(&addrs[..]).map_err(|e| {
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

impl TcpChannel {
    /// Connects to `addr` (e.g. `"10.0.0.2:7000"`) and runs the hello, announcing `role` (e.g.
    /// "client"). While the peer is not listening yet, retries (with back-off up to 0.5 s) for
    /// [`TcpOptions::connect_retry_for`].
    ///
    /// Errors: `Io` ("could not connect to ADDR within N s: ...") when no attempt succeeded;
    /// `VersionMismatch` when the peer is not a polypi peer or has another
    /// [`PROTOCOL_VERSION`]; `PeerDisconnected` when it closes or stays silent during the hello;
    /// `Protocol` when it announces a role other than [`TcpOptions::expect_peer_role`];
    /// `InvalidArgument` for a role over 255 bytes or a zero timeout.
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
                    Ok(stream) => return Self::handshake(stream, role, opts),
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

    /// Accepts one connection on `listener` and runs the hello, announcing `role` (e.g.
    /// "server"). Waits for a connection for [`TcpOptions::accept_timeout`] (default forever).
    /// A failed hello (say, an HTTP client probing the port) is returned as an error; the
    /// listener stays usable, so a server may log it and call `accept` again.
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
        stream.set_nonblocking(false)?;
        Self::handshake(stream, role, opts)
    }

    /// Sends our hello, reads and checks the peer's, then switches to the steady-state timeouts.
    fn handshake(stream: TcpStream, role: &str, opts: &TcpOptions) -> Result<TcpChannel> {
        let hello = hello_bytes(role)?;
        stream.set_nodelay(true)?;
        let peer_addr = stream.peer_addr()?;
        let local_addr = stream.local_addr()?;
        let ht = opts.handshake_timeout.max(Duration::from_millis(1));
        stream.set_read_timeout(Some(ht))?;
        stream.set_write_timeout(Some(ht))?;
        let mut reader = BufReader::with_capacity(256 << 10, stream.try_clone()?);
        let mut writer = stream;
        let at = peer_addr.to_string();
        let fail =
            |reason: String| Error::PeerDisconnected { peer: at.clone(), after_bytes: 0, reason };
        let io_fail = |e: io::Error, doing: &str| {
            if is_timeout(&e) {
                fail(format!("timed out after {} s {doing}", fmt_secs(ht)))
            } else if is_disconnect(&e) {
                fail(format!("{doing}: {e}"))
            } else {
                Error::Io(io::Error::new(e.kind(), format!("{doing} with {at}: {e}")))
            }
        };
        writer.write_all(&hello).map_err(|e| io_fail(e, "sending the polypi hello"))?;

        let not_polypi = || Error::VersionMismatch {
            peer: at.clone(),
            ours: PROTOCOL_VERSION.to_string(),
            theirs: "not a polypi peer".into(),
        };
        // Magic, checked byte by byte as it arrives so that garbage fails at once.
        let mut magic = [0u8; 6];
        let mut got = 0;
        while got < magic.len() {
            match reader.read(&mut magic[got..]) {
                Ok(0) => {
                    return Err(fail(format!(
                        "connection closed during the polypi hello (after {got} bytes)"
                    )))
                }
                Ok(n) => {
                    got += n;
                    if magic[..got] != MAGIC[..got] {
                        return Err(not_polypi());
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io_fail(e, "waiting for the polypi hello")),
            }
        }
        let mut rest = |buf: &mut [u8]| {
            read_full(&mut reader, buf).map_err(|f| match f {
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

        writer.set_read_timeout(opts.read_timeout)?;
        writer.set_write_timeout(opts.write_timeout)?;
        let write_error = Arc::new(Mutex::new(None));
        let (to_writer, batches) = channel::<Vec<u8>>();
        let slot = write_error.clone();
        let handle = std::thread::Builder::new()
            .name(format!("polypi-net-writer ({peer_role} at {at})"))
            .spawn(move || {
                // Exits when the channel is dropped (all batches written) or on the first error.
                for batch in batches {
                    if let Err(e) = writer.write_all(&batch) {
                        *slot.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some((e.kind(), e.to_string()));
                        return;
                    }
                }
            })?;
        Ok(TcpChannel {
            reader,
            pending: Vec::new(),
            write_buffer_bytes: opts.write_buffer_bytes,
            to_writer: Some(to_writer),
            writer: Some(handle),
            write_error,
            counter: StatsCounter::default(),
            peer: format!("{peer_role} at {at}"),
            peer_role,
            peer_addr,
            local_addr,
            read_timeout: opts.read_timeout,
            write_timeout: opts.write_timeout,
            max_frame_bytes: opts.max_frame_bytes,
            broken: None,
        })
    }

    /// Sets how long `recv` waits without any byte arriving (`None`: forever). Takes effect on
    /// the next read. Errors: `InvalidArgument` for a zero duration; `Io` from the socket.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        check_timeout(timeout, "read timeout")?;
        self.reader.get_ref().set_read_timeout(timeout)?;
        self.read_timeout = timeout;
        Ok(())
    }

    /// Sets how long a write may block on a peer that does not read (`None`: forever).
    /// Errors: `InvalidArgument` for a zero duration; `Io` from the socket.
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        check_timeout(timeout, "write timeout")?;
        // Socket options are shared with the writer thread's handle of the same socket.
        self.reader.get_ref().set_write_timeout(timeout)?;
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

    /// Writes out every pending send (waiting for the writer thread, bounded by the write
    /// timeout) and closes our sending half, so the peer's `recv` after the last message returns
    /// `PeerDisconnected` at once instead of waiting for its timeout.
    /// Errors: `PeerDisconnected`/`Io` if a write failed.
    pub fn close(mut self) -> Result<()> {
        self.flush()?;
        self.finish_writes();
        self.check_writer()?;
        let _ = self.reader.get_ref().shutdown(Shutdown::Write);
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
        let failed = self.write_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match failed {
            None => Ok(()),
            Some((kind, msg)) => {
                let e = self.map_write(io::Error::new(kind, msg));
                Err(self.poison(e))
            }
        }
    }

    /// Hands the pending frames to the writer thread.
    fn hand_off(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.check_writer()?;
        let batch = std::mem::take(&mut self.pending);
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
            self.disconnected(format!("timed out after {t} s {doing}"))
        } else if is_disconnect(&e) {
            self.disconnected(format!("{doing}: {e}"))
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

    fn read_frame(&mut self) -> Result<Vec<u8>> {
        let mut header = [0u8; 8];
        match read_full(&mut self.reader, &mut header) {
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
            match read_full(&mut self.reader, &mut buf[filled..next]) {
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
        self.check_usable()?;
        self.counter.on_recv_start();
        // Only fails on a write error if there is something to write: a message the peer sent
        // before it went away is still delivered.
        self.hand_off()?;
        match self.read_frame() {
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
