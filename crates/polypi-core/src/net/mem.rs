//! In-memory channel pair (for tests and single-process runs). OWNER: net helper.

use super::{Channel, ChannelStats};
use crate::error::{Error, Result};
use std::sync::mpsc::{channel, Receiver, Sender};

/// One end of an in-memory channel.
pub struct MemChannel {
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
    stats: ChannelStats,
    last_was_send: bool,
    peer: String,
}

/// Two connected in-memory endpoints.
pub fn mem_pair() -> (MemChannel, MemChannel) {
    let (t1, r1) = channel();
    let (t2, r2) = channel();
    let a = MemChannel { tx: t1, rx: r2, stats: Default::default(), last_was_send: false, peer: "mem peer".into() };
    let b = MemChannel { tx: t2, rx: r1, stats: Default::default(), last_was_send: false, peer: "mem peer".into() };
    (a, b)
}

impl Channel for MemChannel {
    fn send(&mut self, msg: &[u8]) -> Result<()> {
        if !self.last_was_send {
            self.stats.send_phases += 1;
            self.last_was_send = true;
        }
        self.stats.bytes_sent += msg.len() as u64;
        self.stats.messages_sent += 1;
        self.tx.send(msg.to_vec()).map_err(|_| Error::PeerDisconnected {
            peer: self.peer.clone(),
            after_bytes: self.stats.bytes_sent + self.stats.bytes_received,
            reason: "in-memory peer dropped".into(),
        })
    }
    fn recv(&mut self) -> Result<Vec<u8>> {
        self.last_was_send = false;
        let m = self.rx.recv().map_err(|_| Error::PeerDisconnected {
            peer: self.peer.clone(),
            after_bytes: self.stats.bytes_sent + self.stats.bytes_received,
            reason: "in-memory peer dropped".into(),
        })?;
        self.stats.bytes_received += m.len() as u64;
        self.stats.messages_received += 1;
        Ok(m)
    }
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    fn stats(&self) -> ChannelStats {
        self.stats
    }
}
