//! Attacks on a deployment (dealer + server as processes, TLS, loopback): idle sockets at the
//! server and the dealer, fake roles at the dealer, slowloris, huge frame lengths, a client that
//! vanishes mid-session. During each, legitimate `polypi query` runs all succeed, each within
//! 2 s of its latency alone; afterwards both processes are alive and their memory is bounded.
//! Every attack is bounded in count and time.

mod common;
use common::*;
use polypi_core::engine::deploy::client_open;
use polypi_core::engine::session::ClientSession;
use polypi_core::net::{Channel, ClientAuth, TcpChannel, TcpOptions, TlsConfig, TlsFiles};
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MODEL: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/netm-x2act-fmnist.safetensors");
const IMG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/samples/0-9.png");

/// A TLS-capable attacker's options (the client certificate of the deployment's CA, so the
/// attacker gets as far as any client may).
fn attacker(role_files: &str) -> TcpOptions {
    let files = TlsFiles::in_dir(std::path::Path::new(certs()), role_files);
    TcpOptions {
        tls: Some(Arc::new(TlsConfig::load(&files, ClientAuth::Optional).unwrap())),
        tls_server_name: Some("127.0.0.1".into()),
        read_timeout: Some(Duration::from_secs(10)),
        connect_retry_for: Duration::from_secs(2),
        max_frame_bytes: u64::MAX,
        ..Default::default()
    }
}

/// One legitimate query: its wall time (panics if it fails).
fn legit(saddr: &str, daddr: &str) -> Duration {
    let t = Instant::now();
    let o = query(saddr, daddr, &["--input", IMG]);
    assert!(o.status.success(), "legitimate query failed: {}", text(&o.stderr));
    t.elapsed()
}

/// Runs three legitimate queries during an attack: all succeed, each within 2 s of `alone`.
fn during(what: &str, saddr: &str, daddr: &str, alone: Duration) {
    for i in 0..3 {
        let t = legit(saddr, daddr);
        eprintln!("{what}: legitimate query {i}: {:.0} ms", t.as_secs_f64() * 1e3);
        assert!(
            t <= alone + Duration::from_secs(2),
            "{what}: legitimate query {i} took {t:?} (alone: {alone:?})"
        );
    }
}

fn rss_mb(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

#[test]
fn deployment_survives_attacks_and_keeps_serving() {
    let (mut dealer, mut server, daddr, saddr) = deploy(MODEL);
    legit(&saddr, &daddr); // warm-up
    let alone = (0..3).map(|_| legit(&saddr, &daddr)).max().unwrap();
    let stop = Arc::new(AtomicBool::new(false));

    // 1. Idle sockets: 16 at the server, 16 at the dealer, held through the whole test.
    let mut idle = Vec::new();
    for _ in 0..16 {
        idle.push(TcpStream::connect(&saddr).unwrap());
        idle.push(TcpStream::connect(&daddr).unwrap());
    }
    during("idle sockets", &saddr, &daddr, alone);

    // 2. Fake roles at the dealer: a client certificate announcing the server role (refused:
    // not the server's identity), a "client" and a "server" with session ids nobody else has
    // (they wait, then expire), and a peer with an unknown role.
    let fake_server = TcpChannel::connect(daddr.as_str(), "server", &attacker("client"));
    let mut fake_client =
        TcpChannel::connect(daddr.as_str(), "client", &attacker("client")).unwrap();
    fake_client.send(&[0xAB; 32]).unwrap();
    fake_client.flush().unwrap();
    let mut lone_server =
        TcpChannel::connect(daddr.as_str(), "server", &attacker("server")).unwrap();
    let mut open = vec![0xCD; 32];
    open.extend_from_slice(&1u64.to_le_bytes());
    lone_server.send(&open).unwrap();
    lone_server.flush().unwrap();
    let odd = TcpChannel::connect(daddr.as_str(), "mallory", &attacker("client"));
    during("fake roles at the dealer", &saddr, &daddr, alone);
    // The dealer refuses the server role to a client certificate: at once, or by closing.
    if let Ok(mut f) = fake_server {
        let t = Instant::now();
        assert!(f.recv().is_err(), "the dealer accepted a client certificate as the server");
        assert!(t.elapsed() < Duration::from_secs(2), "the refusal took {:?}", t.elapsed());
    }
    // Unpaired connections expire with a refusal (or a close), never a seed.
    for (who, ch) in [("client", &mut fake_client), ("server", &mut lone_server)] {
        let answer = ch.recv();
        let refused = answer.as_ref().map_or(true, |m| m.first() == Some(&0) && m.len() != 32);
        assert!(refused, "an unpaired {who} got {answer:?}");
    }
    drop(odd);

    // 3. Slowloris: raw sockets trickling a byte every 300 ms at both processes, and an
    // admitted client trickling its batch request.
    let mut trickles = Vec::new();
    for addr in [saddr.clone(), daddr.clone(), saddr.clone(), daddr.clone()] {
        let stop = stop.clone();
        trickles.push(std::thread::spawn(move || {
            let Ok(mut s) = TcpStream::connect(addr) else { return };
            while !stop.load(Ordering::SeqCst) {
                if s.write_all(&[0x16]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }));
    }
    during("slowloris", &saddr, &daddr, alone);

    // 4. Huge frames: an admitted client announces a 64 MiB batch request (8 bytes expected)
    // and a client at the dealer a 16 MiB session id (32 expected); both are refused from the
    // frame header.
    let c = attacker("client");
    let mut links = client_open(&saddr, &c, &daddr, &c).unwrap();
    {
        let sess = ClientSession::connect(&mut links.server, &mut links.dealer).unwrap();
        drop(sess);
    }
    let huge = vec![7u8; 64 << 20];
    let _ = links.server.send(&huge);
    let _ = links.server.flush();
    let mut big_id = TcpChannel::connect(daddr.as_str(), "client", &c).unwrap();
    let _ = big_id.send(&huge[..16 << 20]);
    let _ = big_id.flush();
    during("huge frames", &saddr, &daddr, alone);
    assert!(links.server.recv().is_err(), "the server answered a 64 MiB batch request");
    drop(links);
    drop(big_id);

    // 5. A client that vanishes mid-session: after the setup and its first batch request.
    let mut links = client_open(&saddr, &c, &daddr, &c).unwrap();
    {
        let sess = ClientSession::connect(&mut links.server, &mut links.dealer).unwrap();
        drop(sess);
    }
    links.server.send(&1u64.to_le_bytes()).unwrap();
    links.server.flush().unwrap();
    drop(links);
    during("vanished client", &saddr, &daddr, alone);

    stop.store(true, Ordering::SeqCst);
    for t in trickles {
        t.join().unwrap();
    }
    drop(idle);
    // Both processes alive, memory bounded.
    assert!(server.child.try_wait().unwrap().is_none(), "server died");
    assert!(dealer.child.try_wait().unwrap().is_none(), "dealer died");
    let (s, d) = (rss_mb(server.child.id()), rss_mb(dealer.child.id()));
    eprintln!("RSS after the attacks: server {s:.0} MB, dealer {d:.0} MB");
    assert!(s < 400.0 && d < 400.0, "RSS after the attacks: server {s:.0} MB, dealer {d:.0} MB");
    // And they still serve.
    legit(&saddr, &daddr);
}
