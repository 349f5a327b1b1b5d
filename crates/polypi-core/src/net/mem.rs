//! In-memory channel pair (for tests and single-process runs). OWNER: net helper.

use super::{fmt_secs, Channel, ChannelStats, StatsCounter};
use crate::error::{Error, Result};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

/// One end of an in-memory channel (unbounded queue each way; `send` never blocks).
///
/// Counts exactly like [`super::TcpChannel`]. By default `recv` waits forever; set a timeout
/// with [`MemChannel::set_read_timeout`] so that a test with a protocol bug fails instead of
/// hanging.
pub struct MemChannel {
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
    counter: StatsCounter,
    peer: String,
    read_timeout: Option<Duration>,
}

/// Two connected in-memory endpoints: what one sends, the other receives, in order.
pub fn mem_pair() -> (MemChannel, MemChannel) {
    let (t1, r1) = channel();
    let (t2, r2) = channel();
    let mk = |tx, rx| MemChannel {
        tx,
        rx,
        counter: StatsCounter::default(),
        peer: "mem peer".into(),
        read_timeout: None,
    };
    (mk(t1, r2), mk(t2, r1))
}

impl MemChannel {
    /// Sets how long `recv` waits for a message (`None`: forever, the default). When it expires,
    /// `recv` returns `PeerDisconnected` with reason "timed out after N s".
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    fn disconnected(&self, reason: String) -> Error {
        Error::PeerDisconnected {
            peer: self.peer.clone(),
            after_bytes: self.counter.stats().total_bytes(),
            reason,
        }
    }
}

impl Channel for MemChannel {
    fn send(&mut self, msg: &[u8]) -> Result<()> {
        self.counter.on_send(msg.len());
        self.tx.send(msg.to_vec()).map_err(|_| self.disconnected("in-memory peer dropped".into()))
    }

    fn recv(&mut self) -> Result<Vec<u8>> {
        self.counter.on_recv_start();
        let m = match self.read_timeout {
            None => {
                self.rx.recv().map_err(|_| self.disconnected("in-memory peer dropped".into()))?
            }
            Some(t) => self.rx.recv_timeout(t).map_err(|e| match e {
                RecvTimeoutError::Timeout => {
                    self.disconnected(format!("timed out after {} s", fmt_secs(t)))
                }
                RecvTimeoutError::Disconnected => {
                    self.disconnected("in-memory peer dropped".into())
                }
            })?,
        };
        self.counter.on_recv(m.len());
        Ok(m)
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    fn stats(&self) -> ChannelStats {
        self.counter.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_mem_roundtrip_and_phases() {
        let (mut a, mut b) = mem_pair();
        // a: send, send | recv | send  -> 2 phases; b: recv, recv | send | recv -> 1 phase
        a.send(b"hello").unwrap();
        a.send(b"").unwrap();
        assert_eq!(b.recv().unwrap(), b"hello");
        assert_eq!(b.recv().unwrap(), b"");
        b.send(&[7u8; 100]).unwrap();
        assert_eq!(a.recv().unwrap(), vec![7u8; 100]);
        a.send(b"x").unwrap();
        assert_eq!(b.recv().unwrap(), b"x");
        let (sa, sb) = (a.stats(), b.stats());
        assert_eq!(sa.send_phases, 2);
        assert_eq!(sb.send_phases, 1);
        assert_eq!(sa.bytes_sent, 6);
        assert_eq!(sa.bytes_sent, sb.bytes_received);
        assert_eq!(sb.bytes_sent, sa.bytes_received);
        assert_eq!(sa.messages_sent, 3);
        assert_eq!(sa.messages_sent, sb.messages_received);
        assert_eq!(sb.messages_sent, sa.messages_received);
    }

    #[test]
    fn net_mem_dropped_peer_and_timeout() {
        let (mut a, b) = mem_pair();
        a.set_read_timeout(Some(Duration::from_millis(50)));
        match a.recv() {
            Err(Error::PeerDisconnected { reason, .. }) => {
                assert!(reason.contains("timed out after 0.05 s"), "{reason}")
            }
            other => panic!("expected timeout, got {other:?}"),
        }
        drop(b);
        assert!(matches!(a.recv(), Err(Error::PeerDisconnected { .. })));
        assert!(matches!(a.send(b"x"), Err(Error::PeerDisconnected { .. })));
    }
}
