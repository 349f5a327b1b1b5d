//! A peer that goes away mid-run gives a clear error on the other side within seconds — never a
//! hang, never a panic.

use polypi_core::engine::party::check_supported;
use polypi_core::engine::session::{deal_session, serve_session, ClientSession};
use polypi_core::engine::EncodedPlan;
use polypi_core::model::compile::compile;
use polypi_core::model::zoo::{build, Act, Pool, RefNet};
use polypi_core::net::{tcp_loopback_pair, Channel, ChannelStats, TcpChannel, TcpOptions};
use polypi_core::{Error, Result};
use std::time::{Duration, Instant};

/// A TCP channel that closes its connection (as a crashed process would) after `sends_left`
/// messages.
struct CutAfter {
    inner: Option<TcpChannel>,
    sends_left: usize,
}

impl Channel for CutAfter {
    fn send(&mut self, msg: &[u8]) -> Result<()> {
        if self.sends_left == 0 {
            if let Some(c) = self.inner.take() {
                let _ = c.close();
            }
            return Err(Error::Protocol("simulated crash".into()));
        }
        self.sends_left -= 1;
        self.inner.as_mut().unwrap().send(msg)
    }
    fn recv(&mut self) -> Result<Vec<u8>> {
        match self.inner.as_mut() {
            Some(c) => c.recv(),
            None => Err(Error::Protocol("simulated crash".into())),
        }
    }
    fn flush(&mut self) -> Result<()> {
        match self.inner.as_mut() {
            Some(c) => c.flush(),
            None => Err(Error::Protocol("simulated crash".into())),
        }
    }
    fn stats(&self) -> ChannelStats {
        self.inner.as_ref().map(|c| c.stats()).unwrap_or_default()
    }
}

fn opts() -> TcpOptions {
    TcpOptions { read_timeout: Some(Duration::from_secs(20)), ..Default::default() }
}

#[test]
fn client_gets_peer_disconnected_when_the_server_dies_mid_query() {
    let plan = compile(&build(RefNet::NetM, Act::Square, Pool::Avg, 1.0, 3).unwrap()).unwrap();
    check_supported(&plan).unwrap();
    let enc = EncodedPlan::new(&plan).unwrap();
    let (sc, cs) = tcp_loopback_pair("server", "client", &opts()).unwrap();
    let (mut sd, mut ds) = tcp_loopback_pair("server", "dealer", &opts()).unwrap();
    let (cd, mut dc) = tcp_loopback_pair("client", "dealer", &opts()).unwrap();
    // Skeleton + 4 masked weight messages, then the server crashes during the online phase.
    let mut sc = CutAfter { inner: Some(sc), sends_left: 6 };
    std::thread::scope(|s| {
        let plan = &plan;
        let enc = &enc;
        s.spawn(move || serve_session(plan, enc, &mut sc, &mut sd, false));
        s.spawn(move || deal_session(&mut ds, &mut dc));
        let (mut cs, mut cd) = (cs, cd);
        let mut sess = ClientSession::connect(&mut cs, &mut cd).unwrap();
        let t0 = Instant::now();
        let err = sess.infer(&vec![0.5; 784], 1, false).unwrap_err();
        assert!(matches!(err, Error::PeerDisconnected { .. }), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(10));
        assert!(err.to_string().contains("disconnected"), "{err}");
        // The client process exits: the dealer sees it go too.
        drop(sess);
        drop(cs);
        drop(cd);
    });
}

#[test]
fn server_gets_peer_disconnected_when_the_client_leaves() {
    let plan = compile(&build(RefNet::NetM, Act::Square, Pool::Avg, 1.0, 3).unwrap()).unwrap();
    let enc = EncodedPlan::new(&plan).unwrap();
    let (mut sc, cs) = tcp_loopback_pair("server", "client", &opts()).unwrap();
    let (mut sd, mut ds) = tcp_loopback_pair("server", "dealer", &opts()).unwrap();
    let (cd, mut dc) = tcp_loopback_pair("client", "dealer", &opts()).unwrap();
    std::thread::scope(|s| {
        let dealer = s.spawn(move || deal_session(&mut ds, &mut dc));
        let t0 = Instant::now();
        // The client process dies right after connecting.
        drop(cs);
        drop(cd);
        let err = serve_session(&plan, &enc, &mut sc, &mut sd, false).unwrap_err();
        assert!(matches!(err, Error::PeerDisconnected { .. }), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(10));
        assert!(dealer.join().unwrap().is_err());
    });
}
