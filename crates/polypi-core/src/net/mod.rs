//! Channels between parties (design.md §2 net/): the [`Channel`] trait, an in-memory pair, TCP
//! with a versioned handshake, counters of bytes, messages and rounds, and link emulation
//! (bandwidth, latency) for LAN/WAN measurements.
//! OWNER: net helper. The trait and the helpers below are the contract.
//!
//! - [`mem`]: [`mem_pair`], two in-process endpoints over `std::sync::mpsc`.
//! - [`tcp`]: [`TcpChannel`] (length-prefixed frames over `std::net::TcpStream`, hello with
//!   [`PROTOCOL_VERSION`], timeouts), [`bind`], [`tcp_loopback_pair`].
//! - [`tls`]: [`TlsConfig`] (TLS 1.3 via rustls, certificates of one CA) and
//!   [`tls::write_dev_certs`] (a development CA, `polypi certs`).
//! - [`link`]: [`LinkModel`] (`lan`, `wan`, `none`, `<mbit>mbit:<rtt>ms`) and
//!   [`EmulatedChannel`] / [`emulated_pair`], which delay delivery as a real link would
//!   (in-process only).
//!
//! Every channel counts payload bytes and messages each way and *send phases* (rounds seen from
//! this endpoint): see [`ChannelStats`]. Framing and handshake bytes are never counted.

use crate::error::{Error, Result};

pub mod link;
pub mod mem;
pub mod tcp;
pub mod tls;

pub use link::{emulated_mem_pair, emulated_pair, EmulatedChannel, LinkModel};
pub use mem::{mem_pair, MemChannel};
pub use tcp::{bind, tcp_loopback_pair, TcpChannel, TcpOptions};
pub use tls::{ClientAuth, TlsConfig, TlsFiles};

/// Version of the wire protocol, exchanged in the hello of every TCP connection. Peers with a
/// different version are refused with [`Error::VersionMismatch`]. Bump it on any change of the
/// framing or of the message sequence of a protocol.
/// Version 3: the session skeleton names its preprocessing mode (dealer or two-party).
/// Version 4: two-party HE ciphertexts are bit-packed and conv responses pack output channels
/// at a tighter offset (the layout of the preprocessing messages changed).
pub const PROTOCOL_VERSION: u32 = 4;

/// Counters of one endpoint of a channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Payload bytes sent (framing excluded).
    pub bytes_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Messages sent.
    pub messages_sent: u64,
    /// Messages received.
    pub messages_received: u64,
    /// Send phases: a send that follows a receive (or is the first send) starts a new one.
    pub send_phases: u64,
}

impl ChannelStats {
    /// Payload bytes both ways (`bytes_sent + bytes_received`).
    pub fn total_bytes(&self) -> u64 {
        self.bytes_sent + self.bytes_received
    }

    /// Adds `other`'s counters field by field (e.g. two channels of one party, or a phase's
    /// counters into a layer's).
    pub fn add(&mut self, other: &ChannelStats) {
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.messages_sent += other.messages_sent;
        self.messages_received += other.messages_received;
        self.send_phases += other.send_phases;
    }

    /// The counters accumulated since `earlier` (a snapshot taken before on the same channel),
    /// field by field; saturates at 0 if `earlier` is not actually earlier. Use it for per-layer
    /// reports: `let before = ch.stats(); ...; let layer = ch.stats().since(&before);`.
    pub fn since(&self, earlier: &ChannelStats) -> ChannelStats {
        ChannelStats {
            bytes_sent: self.bytes_sent.saturating_sub(earlier.bytes_sent),
            bytes_received: self.bytes_received.saturating_sub(earlier.bytes_received),
            messages_sent: self.messages_sent.saturating_sub(earlier.messages_sent),
            messages_received: self.messages_received.saturating_sub(earlier.messages_received),
            send_phases: self.send_phases.saturating_sub(earlier.send_phases),
        }
    }
}

/// Bookkeeping of [`ChannelStats`] shared by the channel implementations, so that every channel
/// counts bytes, messages and send phases the same way.
#[derive(Debug, Clone, Default)]
pub struct StatsCounter {
    stats: ChannelStats,
    last_was_send: bool,
}

impl StatsCounter {
    /// Records one sent message of `bytes` payload bytes; starts a new send phase if the previous
    /// operation was a receive (or this is the first send).
    pub fn on_send(&mut self, bytes: usize) {
        if !self.last_was_send {
            self.stats.send_phases += 1;
            self.last_was_send = true;
        }
        self.stats.bytes_sent += bytes as u64;
        self.stats.messages_sent += 1;
    }

    /// Marks the start of a receive (the next send starts a new phase), whether or not the
    /// receive then succeeds.
    pub fn on_recv_start(&mut self) {
        self.last_was_send = false;
    }

    /// Records one received message of `bytes` payload bytes.
    pub fn on_recv(&mut self, bytes: usize) {
        self.stats.bytes_received += bytes as u64;
        self.stats.messages_received += 1;
    }

    /// The counters so far.
    pub fn stats(&self) -> ChannelStats {
        self.stats
    }
}

/// A reliable, ordered, message-oriented duplex link to one peer.
///
/// **Sends are buffered** (on TCP): a message is guaranteed to leave only at the next `recv` or
/// `flush` on the *same* channel (or when the buffer fills, or on drop). So call `flush()` before
/// blocking on anything else — a `recv` on another channel (e.g. the dealer's), a thread join, or
/// the end of a protocol whose last step is a send — otherwise the peer waits for a message that
/// sits in our buffer. [`MemChannel`] delivers at once, so a missing flush only shows on TCP.
///
/// Errors: `PeerDisconnected` when the peer closed or the read timed out, `Protocol` on a bad
/// frame, `Io` otherwise.
pub trait Channel: Send {
    /// Sends one message (may be buffered until the next `recv` or `flush`).
    fn send(&mut self, msg: &[u8]) -> Result<()>;
    /// Receives the next message (flushes pending sends first).
    fn recv(&mut self) -> Result<Vec<u8>>;
    /// Receives the next message, refusing with `Protocol` one longer than `max_bytes`. Network
    /// channels check the announced length *before* reading or allocating the payload, so a
    /// peer cannot make us buffer more than the protocol expects. The default receives, then
    /// checks.
    fn recv_max(&mut self, max_bytes: usize) -> Result<Vec<u8>> {
        let m = self.recv()?;
        if m.len() > max_bytes {
            return Err(Error::Protocol(format!(
                "received a message of {} bytes where at most {max_bytes} were expected",
                m.len()
            )));
        }
        Ok(m)
    }
    /// Receives a message of exactly `len` bytes (checked before allocation on network
    /// channels, see [`Channel::recv_max`]). Errors: `Protocol` for any other length.
    fn recv_expect(&mut self, len: usize) -> Result<Vec<u8>> {
        let m = self.recv_max(len)?;
        if m.len() != len {
            return Err(Error::Protocol(format!(
                "expected a message of {len} bytes, got {} bytes",
                m.len()
            )));
        }
        Ok(m)
    }
    /// Sets a phase deadline (e.g. the end of the session setup or of one inference): every
    /// later receive and send fails with `PeerDisconnected` once it passes, until it is
    /// cleared with `None`. Network channels honour it; the default ignores it (in-process
    /// channels have no slow peers).
    fn set_deadline(&mut self, deadline: Option<std::time::Instant>) {
        let _ = deadline;
    }
    /// Forces pending sends out.
    fn flush(&mut self) -> Result<()>;
    /// Counters so far.
    fn stats(&self) -> ChannelStats;
    /// Sends `msg` and receives the peer's message of the same step (a simultaneous exchange:
    /// one round, one send phase). The default sends then receives; it is deadlock-free for
    /// every channel of this module, whatever the message sizes: [`MemChannel`] queues whole
    /// messages and [`TcpChannel`] writes from its own writer thread while this one reads, so
    /// two peers exchanging large messages never block each other. A new transport must keep
    /// that property (or override this).
    fn exchange(&mut self, msg: &[u8]) -> Result<Vec<u8>> {
        self.send(msg)?;
        self.recv()
    }
}

impl<C: Channel + ?Sized> Channel for Box<C> {
    fn send(&mut self, msg: &[u8]) -> Result<()> {
        (**self).send(msg)
    }
    fn recv(&mut self) -> Result<Vec<u8>> {
        (**self).recv()
    }
    fn recv_max(&mut self, max_bytes: usize) -> Result<Vec<u8>> {
        (**self).recv_max(max_bytes)
    }
    fn set_deadline(&mut self, deadline: Option<std::time::Instant>) {
        (**self).set_deadline(deadline)
    }
    fn flush(&mut self) -> Result<()> {
        (**self).flush()
    }
    fn stats(&self) -> ChannelStats {
        (**self).stats()
    }
    fn exchange(&mut self, msg: &[u8]) -> Result<Vec<u8>> {
        (**self).exchange(msg)
    }
}

/// A borrowed channel is a channel, so `EmulatedChannel<&mut TcpChannel>` or a function taking
/// `impl Channel` can be used without giving up ownership.
impl<C: Channel + ?Sized> Channel for &mut C {
    fn send(&mut self, msg: &[u8]) -> Result<()> {
        (**self).send(msg)
    }
    fn recv(&mut self) -> Result<Vec<u8>> {
        (**self).recv()
    }
    fn recv_max(&mut self, max_bytes: usize) -> Result<Vec<u8>> {
        (**self).recv_max(max_bytes)
    }
    fn set_deadline(&mut self, deadline: Option<std::time::Instant>) {
        (**self).set_deadline(deadline)
    }
    fn flush(&mut self) -> Result<()> {
        (**self).flush()
    }
    fn stats(&self) -> ChannelStats {
        (**self).stats()
    }
    fn exchange(&mut self, msg: &[u8]) -> Result<Vec<u8>> {
        (**self).exchange(msg)
    }
}

/// Sends ring elements as one message (little-endian u64s).
pub fn send_ring(ch: &mut (impl Channel + ?Sized), xs: &[u64]) -> Result<()> {
    ch.send(&ring_wire(xs))
}

/// Ring elements as little-endian bytes (the wire format of every ring message).
pub fn ring_bytes(xs: &[u64]) -> Vec<u8> {
    ring_wire(xs).into_owned()
}

/// The wire form of `xs` (little-endian u64s): on a little-endian CPU the elements' own memory,
/// borrowed (no copy of a message of several MB before the channel copies it again).
fn ring_wire(xs: &[u64]) -> std::borrow::Cow<'_, [u8]> {
    #[cfg(target_endian = "little")]
    {
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(xs))
    }
    #[cfg(not(target_endian = "little"))]
    {
        std::borrow::Cow::Owned(xs.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
}

/// Ring elements from their wire form (`bytes.len()` a multiple of 8, checked by the callers):
/// one copy (a `memcpy` on a little-endian CPU).
fn ring_from_wire(bytes: &[u8]) -> Vec<u64> {
    let mut out = vec![0u64; bytes.len() / 8];
    bytemuck::cast_slice_mut::<u64, u8>(&mut out).copy_from_slice(bytes);
    for v in &mut out {
        *v = u64::from_le(*v);
    }
    out
}

/// Receives one message of exactly `n` ring elements; a longer frame is refused before it is
/// read (see [`Channel::recv_max`]). Errors: `Protocol` if the length differs.
pub fn recv_ring(ch: &mut (impl Channel + ?Sized), n: usize) -> Result<Vec<u64>> {
    let bytes = n
        .checked_mul(8)
        .ok_or_else(|| Error::InvalidArgument(format!("{n} ring elements do not fit in memory")))?;
    let buf = ch.recv_max(bytes)?;
    if buf.len() != bytes {
        return Err(Error::Protocol(format!(
            "expected {} ring elements ({} bytes), got {} bytes",
            n,
            bytes,
            buf.len()
        )));
    }
    Ok(ring_from_wire(&buf))
}

/// Exchanges ring elements with the peer in one round (see [`Channel::exchange`]): sends `xs`,
/// returns the peer's `xs.len()` elements. Errors: `Protocol` if the peer's length differs.
pub fn exchange_ring(ch: &mut (impl Channel + ?Sized), xs: &[u64]) -> Result<Vec<u64>> {
    let theirs = ch.exchange(&ring_wire(xs))?;
    if theirs.len() != xs.len() * 8 {
        return Err(Error::Protocol(format!(
            "expected {} ring elements in the exchange, got {} bytes",
            xs.len(),
            theirs.len()
        )));
    }
    Ok(ring_from_wire(&theirs))
}

/// Formats a duration in seconds the way error messages show it: `60`, `0.3`, `1.25`.
pub(crate) fn fmt_secs(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    let r = (s * 1000.0).round() / 1000.0;
    format!("{r}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_ring_roundtrip_and_length_check() {
        let (mut a, mut b) = mem_pair();
        send_ring(&mut a, &[1, u64::MAX, 42]).unwrap();
        assert_eq!(recv_ring(&mut b, 3).unwrap(), vec![1, u64::MAX, 42]);
        send_ring(&mut a, &[1, 2]).unwrap();
        assert!(matches!(recv_ring(&mut b, 3), Err(Error::Protocol(_))));
    }

    /// The wire format is little-endian u64s whatever the CPU: fixed bytes out, the same
    /// elements back from them (sent as raw bytes), and an exchange returns the peer's elements.
    #[test]
    fn net_ring_wire_format_is_little_endian() {
        let xs = [0x0102_0304_0506_0708u64, u64::MAX - 1];
        let bytes = ring_bytes(&xs);
        assert_eq!(&bytes[..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&bytes[8..], &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        let (mut a, mut b) = mem_pair();
        a.send(&bytes).unwrap();
        assert_eq!(recv_ring(&mut b, 2).unwrap(), xs);
        let t = std::thread::spawn(move || exchange_ring(&mut b, &[3, 4]).unwrap());
        assert_eq!(exchange_ring(&mut a, &xs).unwrap(), vec![3, 4]);
        assert_eq!(t.join().unwrap(), xs);
    }

    #[test]
    fn net_stats_since_and_counter() {
        let mut c = StatsCounter::default();
        c.on_send(10);
        c.on_send(5);
        let before = c.stats();
        c.on_recv_start();
        c.on_recv(7);
        c.on_send(1);
        let d = c.stats().since(&before);
        assert_eq!(
            d,
            ChannelStats {
                bytes_sent: 1,
                bytes_received: 7,
                messages_sent: 1,
                messages_received: 1,
                send_phases: 1
            }
        );
        assert_eq!(c.stats().send_phases, 2);
        assert_eq!(c.stats().total_bytes(), 23);
    }

    #[test]
    fn net_fmt_secs() {
        assert_eq!(fmt_secs(std::time::Duration::from_secs(60)), "60");
        assert_eq!(fmt_secs(std::time::Duration::from_millis(300)), "0.3");
    }
}
