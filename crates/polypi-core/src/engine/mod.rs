//! The engine: the one graph walk ([`mod@walk`]) and its backends — plaintext ([`plain`]), the secure
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
pub(crate) fn tcp_links(tls: bool) -> crate::Result<session::Links> {
    use crate::net::TcpOptions;
    let (mut s, mut d, mut c) =
        (TcpOptions::default(), TcpOptions::default(), TcpOptions::default());
    if tls {
        // Fresh in-memory certificates (one CA per run): the TLS cost of a deployment, measured.
        let [ts, td, tc] = crate::net::tls::DevCerts::generate(&["127.0.0.1".into()])?.configs()?;
        for (o, t) in [(&mut s, ts), (&mut d, td), (&mut c, tc)] {
            o.tls = Some(t);
            o.tls_server_name = Some("127.0.0.1".into());
        }
    }
    // As deployed: the server accepts the client; the dealer accepts the server and the client.
    let (sc, cs) = loopback_pair("server", &s, "client", &c)?;
    let (ds, sd) = loopback_pair("dealer", &d, "server", &s)?;
    let (dc, cd) = loopback_pair("dealer", &d, "client", &c)?;
    Ok(session::Links {
        server_client: Box::new(sc),
        server_dealer: Box::new(sd),
        client_server: Box::new(cs),
        client_dealer: Box::new(cd),
        dealer_server: Box::new(ds),
        dealer_client: Box::new(dc),
    })
}

/// The server-client TCP connection on loopback for a dealer-free [`session::run_local_two_party`]
/// (the dealer ends are unconnected in-memory channels that are never used).
pub(crate) fn tcp_server_client(tls: bool) -> crate::Result<session::Links> {
    use crate::net::{mem_pair, TcpOptions};
    let (mut s, mut c) = (TcpOptions::default(), TcpOptions::default());
    if tls {
        let [ts, _, tc] = crate::net::tls::DevCerts::generate(&["127.0.0.1".into()])?.configs()?;
        for (o, t) in [(&mut s, ts), (&mut c, tc)] {
            o.tls = Some(t);
            o.tls_server_name = Some("127.0.0.1".into());
        }
    }
    let (sc, cs) = loopback_pair("server", &s, "client", &c)?;
    let (sd, ds) = mem_pair();
    let (cd, dc) = mem_pair();
    Ok(session::Links {
        server_client: Box::new(sc),
        server_dealer: Box::new(sd),
        client_server: Box::new(cs),
        client_dealer: Box::new(cd),
        dealer_server: Box::new(ds),
        dealer_client: Box::new(dc),
    })
}

/// Two connected loopback channels: `a` accepts with `a_opts`, `b` dials with `b_opts`.
fn loopback_pair(
    a_role: &str,
    a_opts: &crate::net::TcpOptions,
    b_role: &str,
    b_opts: &crate::net::TcpOptions,
) -> crate::Result<(crate::net::TcpChannel, crate::net::TcpChannel)> {
    use crate::net::{bind, TcpChannel};
    let listener = bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (role, mut opts) = (a_role.to_string(), a_opts.clone());
    opts.accept_timeout = opts.accept_timeout.or(Some(std::time::Duration::from_secs(30)));
    let acceptor = std::thread::spawn(move || TcpChannel::accept(&listener, &role, &opts));
    let b = TcpChannel::connect(addr, b_role, b_opts);
    let a = acceptor
        .join()
        .map_err(|_| crate::Error::Protocol("loopback accept thread panicked".into()))??;
    Ok((a, b?))
}
