//! Channels between parties (design.md §2 net/): the [`Channel`] trait, an in-memory pair, TCP
//! with a versioned handshake, and counters of bytes, messages and rounds.
//! OWNER: net helper. The trait and the helpers below are the contract.

use crate::error::{Error, Result};

pub mod mem;
pub mod tcp;

pub use mem::mem_pair;

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

/// A reliable, ordered, message-oriented duplex link to one peer.
///
/// Errors: `PeerDisconnected` when the peer closed or the read timed out, `Protocol` on a bad
/// frame, `Io` otherwise.
pub trait Channel: Send {
    /// Sends one message (may be buffered until the next `recv` or `flush`).
    fn send(&mut self, msg: &[u8]) -> Result<()>;
    /// Receives the next message (flushes pending sends first).
    fn recv(&mut self) -> Result<Vec<u8>>;
    /// Forces pending sends out.
    fn flush(&mut self) -> Result<()>;
    /// Counters so far.
    fn stats(&self) -> ChannelStats;
}

impl<C: Channel + ?Sized> Channel for Box<C> {
    fn send(&mut self, msg: &[u8]) -> Result<()> {
        (**self).send(msg)
    }
    fn recv(&mut self) -> Result<Vec<u8>> {
        (**self).recv()
    }
    fn flush(&mut self) -> Result<()> {
        (**self).flush()
    }
    fn stats(&self) -> ChannelStats {
        (**self).stats()
    }
}

/// Sends ring elements as one message (little-endian u64s).
pub fn send_ring(ch: &mut (impl Channel + ?Sized), xs: &[u64]) -> Result<()> {
    let mut buf = Vec::with_capacity(xs.len() * 8);
    for x in xs {
        buf.extend_from_slice(&x.to_le_bytes());
    }
    ch.send(&buf)
}

/// Receives one message of exactly `n` ring elements. Errors: `Protocol` if the length differs.
pub fn recv_ring(ch: &mut (impl Channel + ?Sized), n: usize) -> Result<Vec<u64>> {
    let buf = ch.recv()?;
    if buf.len() != n * 8 {
        return Err(Error::Protocol(format!(
            "expected {} ring elements ({} bytes), got {} bytes",
            n,
            n * 8,
            buf.len()
        )));
    }
    Ok(buf.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect())
}
