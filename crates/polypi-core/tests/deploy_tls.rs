//! What a passive observer of a deployment sees. A real session (server, client, and the
//! deployed dealer, each link over loopback TCP) runs with a recording relay on every link:
//! client-server, client-dealer and server-dealer. With TLS, every captured byte belongs to a
//! well-formed TLS 1.3 record stream whose records after the handshake are all encrypted
//! application data, and none of the secrets (the seeds, `F = W - B`, the masked input, the
//! input itself, any protocol message) appears in it. The same run without TLS is the control:
//! there the detector finds the seeds and `F` in the capture, so the test can fail.

use polypi_core::engine::deploy::{
    await_pairing, client_open, Admission, DealerOptions, DeployedDealer, SessionId,
};
use polypi_core::engine::session::{serve_session_limited, ClientSession, SessionLimits};
use polypi_core::engine::EncodedPlan;
use polypi_core::model::compile::compile;
use polypi_core::model::zoo::{build, Act, Pool, RefNet};
use polypi_core::net::{bind, tls, Channel, ChannelStats, ClientAuth, TcpChannel, TcpOptions};
use polypi_core::net::{TlsConfig, TlsFiles};
use polypi_core::ring::FixedPoint;
use polypi_core::Result;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// A channel that records every message it sends and receives (the plaintext a party sees).
struct Rec<'a> {
    inner: &'a mut TcpChannel,
    log: Vec<Vec<u8>>,
}

impl Channel for Rec<'_> {
    fn send(&mut self, msg: &[u8]) -> Result<()> {
        self.log.push(msg.to_vec());
        self.inner.send(msg)
    }
    fn recv(&mut self) -> Result<Vec<u8>> {
        let m = self.inner.recv()?;
        self.log.push(m.clone());
        Ok(m)
    }
    fn flush(&mut self) -> Result<()> {
        self.inner.flush()
    }
    fn stats(&self) -> ChannelStats {
        self.inner.stats()
    }
}

type Capture = Arc<Mutex<Vec<u8>>>;

/// A TCP relay in front of `target`: returns its address and the bytes it carried each way
/// (towards the target, back from it).
fn relay(target: SocketAddr) -> (SocketAddr, Capture, Capture) {
    let l = bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (up, down) = (Capture::default(), Capture::default());
    let (u, d) = (up.clone(), down.clone());
    thread::spawn(move || {
        let (a, _) = l.accept().unwrap();
        let b = TcpStream::connect(target).unwrap();
        let pump = |mut from: TcpStream, mut to: TcpStream, cap: Capture| {
            thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    match from.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            cap.lock().unwrap().extend_from_slice(&buf[..n]);
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = to.shutdown(std::net::Shutdown::Write);
            })
        };
        let h1 = pump(a.try_clone().unwrap(), b.try_clone().unwrap(), u);
        let h2 = pump(b, a, d);
        let _ = h1.join();
        let _ = h2.join();
    });
    (addr, up, down)
}

/// Parses `bytes` as a sequence of TLS records: returns the content types, or why not.
fn tls_records(bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut types = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if i + 5 > bytes.len() {
            return Err(format!("truncated record header at {i}"));
        }
        let (ty, ver, len) = (
            bytes[i],
            [bytes[i + 1], bytes[i + 2]],
            u16::from_be_bytes([bytes[i + 3], bytes[i + 4]]),
        );
        if ![0x14, 0x15, 0x16, 0x17].contains(&ty)
            || ver[0] != 0x03
            || len as usize > (1 << 14) + 256
        {
            return Err(format!(
                "not a TLS record at byte {i}: type {ty:#x} version {ver:?} len {len}"
            ));
        }
        types.push(ty);
        i += 5 + len as usize;
    }
    if i != bytes.len() {
        return Err("record overruns the capture".into());
    }
    Ok(types)
}

/// Whether `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// 16-byte probes of a secret message: its start, middle and end (fewer for short messages).
fn probes(m: &[u8]) -> Vec<&[u8]> {
    if m.len() < 16 {
        return Vec::new();
    }
    let mid = (m.len() - 16) / 2;
    vec![&m[..16], &m[mid..mid + 16], &m[m.len() - 16..]]
}

struct Run {
    /// Captured bytes per link and direction.
    captures: Vec<(&'static str, Vec<u8>)>,
    /// Plaintext messages the client saw on its links to the server and to the dealer.
    client_server: Vec<Vec<u8>>,
    client_dealer: Vec<Vec<u8>>,
    /// Plaintext messages the server saw on its link to the dealer.
    server_dealer: Vec<Vec<u8>>,
    /// The client's encoded input (u64 LE) and raw f32 input bytes.
    input_encoded: Vec<u8>,
    input_f32: Vec<u8>,
}

fn certs_dir() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("polypi-deploy-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        tls::write_dev_certs(&d, &["localhost".into(), "127.0.0.1".into()], false).unwrap();
        d
    })
    .clone()
}

fn tcp(role: &str, with_tls: bool) -> TcpOptions {
    let tls = with_tls.then(|| {
        let files = TlsFiles::in_dir(&certs_dir(), role);
        Arc::new(TlsConfig::load(&files, ClientAuth::Optional).unwrap())
    });
    TcpOptions {
        read_timeout: Some(Duration::from_secs(20)),
        connect_retry_for: Duration::from_secs(5),
        tls,
        tls_server_name: Some("127.0.0.1".into()),
        ..Default::default()
    }
}

/// One session of two inferences through relays on every link.
fn run_session(with_tls: bool) -> Run {
    let plan = compile(&build(RefNet::NetM, Act::Square, Pool::Avg, 1.0, 11).unwrap()).unwrap();
    let enc = EncodedPlan::new(&plan).unwrap();
    // Dealer (the deployed one), behind two relays.
    let dealer_l = bind("127.0.0.1:0").unwrap();
    let dealer_addr = dealer_l.local_addr().unwrap();
    let dealer = DeployedDealer::new(DealerOptions {
        tcp: TcpOptions { max_queued_bytes: Some(1 << 20), ..tcp("dealer", with_tls) },
        server_identity: tls::SERVER_IDENTITY.into(),
        pair_timeout: Duration::from_secs(10),
        limits: SessionLimits::default(),
        max_sessions: 4,
        max_pending: 16,
    })
    .unwrap();
    let (sd_addr, sd_up, sd_down) = relay(dealer_addr);
    let (cd_addr, cd_up, cd_down) = relay(dealer_addr);
    let server_l = bind("127.0.0.1:0").unwrap();
    let (cs_addr, cs_up, cs_down) = relay(server_l.local_addr().unwrap());

    let input: Vec<f32> = (0..784).map(|i| ((i * 37 % 255) as f32 / 255.0) - 0.5).collect();
    let fp = FixedPoint { frac_bits: plan.frac_bits };
    let input_encoded: Vec<u8> =
        fp.encode_slice(&input).unwrap().iter().flat_map(|x| x.to_le_bytes()).collect();
    let input_f32: Vec<u8> = input.iter().flat_map(|x| x.to_le_bytes()).collect();

    let (mut client_server, mut client_dealer, mut server_dealer) = (vec![], vec![], vec![]);
    thread::scope(|s| {
        let dealer = &dealer;
        s.spawn(move || dealer.run(&dealer_l, Some(1), &|r| eprintln!("dealer: {r:?}")).unwrap());
        let (plan, enc) = (&plan, &enc);
        let server = s.spawn(move || {
            let mut client =
                TcpChannel::accept(&server_l, "server", &tcp("server", with_tls)).unwrap();
            let id = SessionId::random().unwrap();
            client.send(&Admission::Accepted { id, max_batch: 4 }.to_bytes()).unwrap();
            client.flush().unwrap();
            let mut d = TcpChannel::connect(sd_addr, "server", &tcp("server", with_tls)).unwrap();
            let mut open = id.0.to_vec();
            open.extend_from_slice(&4u64.to_le_bytes());
            d.send(&open).unwrap();
            d.flush().unwrap();
            await_pairing(&mut d, "dealer").unwrap();
            let mut rd = Rec { inner: &mut d, log: vec![] };
            let limits = SessionLimits::default();
            serve_session_limited(plan, enc, None, &limits, &mut client, &mut rd, false).unwrap();
            let log = std::mem::take(&mut rd.log);
            let _ = client.close();
            let _ = d.close();
            log
        });
        let links = client_open(
            &cs_addr.to_string(),
            &tcp("client", with_tls),
            &cd_addr.to_string(),
            &tcp("client", with_tls),
        )
        .unwrap();
        let (mut sv, mut dl) = (links.server, links.dealer);
        let mut rs = Rec { inner: &mut sv, log: vec![] };
        let mut rd = Rec { inner: &mut dl, log: vec![] };
        {
            let mut sess = ClientSession::connect(&mut rs, &mut rd).unwrap();
            for _ in 0..2 {
                let out = sess.infer(&input, 1, false).unwrap();
                assert_eq!(out.logits.len(), 10);
            }
            sess.close().unwrap();
        }
        client_server = std::mem::take(&mut rs.log);
        client_dealer = std::mem::take(&mut rd.log);
        let _ = sv.close();
        let _ = dl.close();
        server_dealer = server.join().unwrap();
    });
    // Let the relays drain.
    thread::sleep(Duration::from_millis(300));
    let get = |c: &Capture| c.lock().unwrap().clone();
    Run {
        captures: vec![
            ("client->server", get(&cs_up)),
            ("server->client", get(&cs_down)),
            ("client->dealer", get(&cd_up)),
            ("dealer->client", get(&cd_down)),
            ("server->dealer", get(&sd_up)),
            ("dealer->server", get(&sd_down)),
        ],
        client_server,
        client_dealer,
        server_dealer,
        input_encoded,
        input_f32,
    }
}

/// The secrets a relay must not see: every protocol message of 16 bytes or more (seeds, `F`,
/// masked input, corrections, output shares, the skeleton) and the input.
fn secret_probes(r: &Run) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, log) in [
        ("client-server", &r.client_server),
        ("client-dealer", &r.client_dealer),
        ("server-dealer", &r.server_dealer),
    ] {
        for (i, m) in log.iter().enumerate() {
            for p in probes(m) {
                out.push((format!("{name} message {i} ({} bytes)", m.len()), p.to_vec()));
            }
        }
    }
    for p in probes(&r.input_encoded).into_iter().chain(probes(&r.input_f32)) {
        out.push(("the input".into(), p.to_vec()));
    }
    out
}

#[test]
fn observer_of_every_link_sees_only_tls_records_and_no_secret() {
    let r = run_session(true);
    // The seeds arrived (32-byte messages on both dealer links) and F was sent.
    assert!(r.client_dealer.iter().any(|m| m.len() == 32), "client saw no seed");
    assert!(r.server_dealer.iter().any(|m| m.len() == 32), "server saw no seed");
    assert!(r.client_server.iter().any(|m| m.len() > 1000), "no F / masked input recorded");
    let probes = secret_probes(&r);
    assert!(probes.len() > 50, "too few probes: {}", probes.len());
    for (link, bytes) in &r.captures {
        assert!(bytes.len() > 100, "{link}: nothing captured");
        let types = tls_records(bytes).unwrap_or_else(|e| panic!("{link}: {e}"));
        // At most the first flight is cleartext handshake (+ a compatibility change-cipher-spec);
        // everything after it is encrypted application data.
        let clear = types.iter().filter(|t| **t != 0x17).count();
        assert!(clear <= 2, "{link}: {clear} non-application-data records: {types:?}");
        assert!(types.iter().skip(2).all(|t| *t == 0x17), "{link}: {types:?}");
        for (what, p) in &probes {
            assert!(!contains(bytes, p), "{link}: the capture contains {what}");
        }
        // The hello's magic travels encrypted too.
        assert!(!contains(bytes, b"POLYPI"), "{link}: cleartext hello");
    }
    // What TLS costs in bytes on the client-server link: records (5-byte header, 16-byte tag,
    // 1 content-type byte per record of at most 16 KiB) and the handshake (certificates).
    let payload: usize = r.client_server.iter().map(|m| m.len() + 8).sum();
    let wire: usize = r.captures[..2].iter().map(|(_, b)| b.len()).sum();
    let overhead = wire as f64 / payload as f64 - 1.0;
    eprintln!(
        "client-server link: {payload} bytes of frames, {wire} bytes on the wire (+{:.2} %)",
        overhead * 100.0
    );
    assert!(wire > payload && overhead < 0.03, "TLS overhead {:.2} %", overhead * 100.0);
}

#[test]
fn control_without_tls_the_observer_finds_the_seeds_and_f() {
    let r = run_session(false);
    let all = |link: &str| -> Vec<u8> {
        r.captures.iter().find(|(l, _)| *l == link).map(|(_, b)| b.clone()).unwrap()
    };
    let seed_c = r.client_dealer.iter().find(|m| m.len() == 32).unwrap();
    let seed_s = r.server_dealer.iter().find(|m| m.len() == 32).unwrap();
    assert!(contains(&all("dealer->client"), seed_c), "plaintext capture misses the client seed");
    assert!(contains(&all("dealer->server"), seed_s), "plaintext capture misses the server seed");
    let f = r.client_server.iter().find(|m| m.len() > 1000).unwrap();
    assert!(contains(&all("server->client"), &f[..16]), "plaintext capture misses F");
    assert!(tls_records(&all("client->server")).is_err(), "plaintext parsed as TLS");
}
