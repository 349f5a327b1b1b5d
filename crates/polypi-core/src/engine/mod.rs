//! The engine: the one graph walk ([`walk`]) and its backends — plaintext ([`plain`]), the secure
//! parties ([`party`]) — the session protocol between server, client and dealer ([`session`]),
//! deployment of the three roles as processes ([`deploy`]: session binding, concurrency,
//! admission), reports ([`report`]), calibration of value ranges ([`calibrate`]) and the client's runtime
//! range guard ([`guard`]).

pub mod bench;
pub mod calibrate;
pub mod deploy;
pub mod guard;
pub mod party;
pub mod plain;
pub mod report;
pub mod session;
pub mod walk;

pub use plain::{run_f32, run_fixed, EncodedPlan, Tensor};
pub use walk::{walk, Backend, LayerTrace};

/// TCP links on loopback for [`session::run_local`]: three listeners on 127.0.0.1 ephemeral ports.
pub(crate) fn tcp_links() -> crate::Result<session::Links> {
    use crate::net::{tcp_loopback_pair, TcpOptions};
    let o = TcpOptions::default();
    let (sc, cs) = tcp_loopback_pair("server", "client", &o)?;
    let (sd, ds) = tcp_loopback_pair("server", "dealer", &o)?;
    let (cd, dc) = tcp_loopback_pair("client", "dealer", &o)?;
    Ok(session::Links {
        server_client: Box::new(sc),
        server_dealer: Box::new(sd),
        client_server: Box::new(cs),
        client_dealer: Box::new(cd),
        dealer_server: Box::new(ds),
        dealer_client: Box::new(dc),
    })
}
