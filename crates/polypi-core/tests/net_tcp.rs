//! Loopback tests of the TCP channel (framing, handshake, timeouts, counters) and of the channel
//! contract shared with the in-memory pair. Only 127.0.0.1 is used.

use polypi_core::net::{
    bind, emulated_pair, mem_pair, tcp_loopback_pair, Channel, LinkModel, TcpChannel, TcpOptions,
    PROTOCOL_VERSION,
};
use polypi_core::Error;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

/// Short timeouts so that a bug fails the test instead of hanging it.
fn opts() -> TcpOptions {
    TcpOptions {
        read_timeout: Some(Duration::from_secs(20)),
        write_timeout: Some(Duration::from_secs(20)),
        handshake_timeout: Duration::from_secs(5),
        connect_retry_for: Duration::from_secs(5),
        accept_timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    }
}

/// The hello a polypi peer sends (wire format of `net::tcp`).
fn hello(version: u32, role: &str) -> Vec<u8> {
    let mut h = b"POLYPI".to_vec();
    h.extend_from_slice(&version.to_le_bytes());
    h.push(role.len() as u8);
    h.extend_from_slice(role.as_bytes());
    h
}

/// A raw socket that has done a correct handshake with a `TcpChannel` accepting on the other end.
fn raw_peer_and_channel(
    o: TcpOptions,
) -> (TcpStream, std::thread::JoinHandle<Result<TcpChannel, Error>>) {
    let listener = bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let h = thread::spawn(move || TcpChannel::accept(&listener, "server", &o));
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(&hello(PROTOCOL_VERSION, "raw")).unwrap();
    let mut theirs = vec![0u8; hello(PROTOCOL_VERSION, "server").len()];
    raw.read_exact(&mut theirs).unwrap();
    assert_eq!(theirs, hello(PROTOCOL_VERSION, "server"));
    (raw, h)
}

fn random_sizes(seed: u64, n: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut sizes: Vec<usize> = (0..n)
        .map(|i| match i % 4 {
            0 => (rng.next_u64() % 16) as usize,
            1 => (rng.next_u64() % 4096) as usize,
            2 => (rng.next_u64() % (1 << 20)) as usize,
            _ => (rng.next_u64() % (8 << 20)) as usize,
        })
        .collect();
    sizes.push(0);
    sizes.push(8 << 20);
    sizes
}

fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Many messages of random sizes (0 B .. 8 MB) both ways with several phases; checks contents
/// and that each side's sent counters equal the other's received counters.
fn roundtrip_many<A: Channel + 'static, B: Channel + 'static>(mut a: A, mut b: B) {
    let sizes = random_sizes(7, 24);
    let n = sizes.len();
    let sizes2 = sizes.clone();
    // b echoes in batches of 3: recv 3, send 3 transformed.
    let h = thread::spawn(move || {
        for chunk in (0..n).collect::<Vec<_>>().chunks(3) {
            let mut got = Vec::new();
            for &i in chunk {
                let m = b.recv().unwrap();
                assert_eq!(m.len(), sizes2[i], "message {i}");
                assert_eq!(m, payload(i as u64, sizes2[i]), "message {i}");
                got.push(m);
            }
            for mut m in got {
                m.reverse();
                b.send(&m).unwrap();
            }
        }
        b.flush().unwrap();
        b
    });
    for chunk in (0..n).collect::<Vec<_>>().chunks(3) {
        for &i in chunk {
            a.send(&payload(i as u64, sizes[i])).unwrap();
        }
        for &i in chunk {
            let mut m = a.recv().unwrap();
            m.reverse();
            assert_eq!(m, payload(i as u64, sizes[i]), "echo {i}");
        }
    }
    let b = h.join().unwrap();
    let (sa, sb) = (a.stats(), b.stats());
    let total: u64 = sizes.iter().map(|&s| s as u64).sum();
    assert_eq!(sa.bytes_sent, total);
    assert_eq!(sa.bytes_sent, sb.bytes_received);
    assert_eq!(sb.bytes_sent, sa.bytes_received);
    assert_eq!(sa.messages_sent, n as u64);
    assert_eq!(sa.messages_sent, sb.messages_received);
    assert_eq!(sb.messages_sent, sa.messages_received);
    let batches = n.div_ceil(3) as u64;
    assert_eq!(sa.send_phases, batches);
    assert_eq!(sb.send_phases, batches);
}

#[test]
fn net_roundtrip_many_random_sizes_mem() {
    let (a, b) = mem_pair();
    roundtrip_many(a, b);
}

#[test]
fn net_roundtrip_many_random_sizes_tcp() {
    let (a, b) = tcp_loopback_pair("server", "client", &opts()).unwrap();
    roundtrip_many(a, b);
}

#[test]
fn net_roundtrip_emulated_lan_over_tcp() {
    let (a, b) = tcp_loopback_pair("server", "client", &opts()).unwrap();
    let (a, b) = emulated_pair(a, b, LinkModel::lan());
    roundtrip_many(a, b);
}

/// The same sequence of operations gives the same counters on mem and TCP.
#[test]
fn net_send_phases_same_on_mem_and_tcp() {
    fn script(
        a: &mut dyn Channel,
        b: &mut dyn Channel,
    ) -> (polypi_core::net::ChannelStats, polypi_core::net::ChannelStats) {
        // a: S S | R | S | R R  ; b: R R | S | R | S S
        // Both ends run in this one thread, so each side flushes before the other receives.
        a.send(b"1").unwrap();
        a.send(b"22").unwrap();
        a.flush().unwrap();
        b.recv().unwrap();
        b.recv().unwrap();
        b.send(b"333").unwrap();
        b.flush().unwrap();
        a.recv().unwrap();
        a.send(b"4444").unwrap();
        a.flush().unwrap();
        b.recv().unwrap();
        b.send(b"").unwrap();
        b.send(b"55555").unwrap();
        b.flush().unwrap();
        a.recv().unwrap();
        a.recv().unwrap();
        (a.stats(), b.stats())
    }
    let (mut ma, mut mb) = mem_pair();
    let mem = script(&mut ma, &mut mb);
    let (mut ta, mut tb) = tcp_loopback_pair("a", "b", &opts()).unwrap();
    let tcp = script(&mut ta, &mut tb);
    assert_eq!(mem, tcp);
    let (sa, sb) = mem;
    assert_eq!(sa.send_phases, 2);
    assert_eq!(sb.send_phases, 2);
    assert_eq!(sa.messages_sent, 3);
    assert_eq!(sb.messages_sent, 3);
    assert_eq!(sa.bytes_sent, 7);
    assert_eq!(sb.bytes_sent, 8);
    assert_eq!(sa.bytes_received, 8);
}

#[test]
fn net_handshake_not_counted() {
    let (a, b) = tcp_loopback_pair("a", "b", &opts()).unwrap();
    assert_eq!(a.stats(), Default::default());
    assert_eq!(b.stats(), Default::default());
}

#[test]
fn net_peer_disconnect_between_messages() {
    let (mut a, mut b) = tcp_loopback_pair("server", "client", &opts()).unwrap();
    b.send(&[1u8; 1000]).unwrap();
    b.flush().unwrap();
    drop(b);
    assert_eq!(a.recv().unwrap().len(), 1000);
    let t0 = Instant::now();
    match a.recv() {
        Err(Error::PeerDisconnected { peer, after_bytes, reason }) => {
            assert_eq!(after_bytes, 1000);
            assert!(peer.contains("client"), "{peer}");
            assert!(reason.contains("closed"), "{reason}");
        }
        other => panic!("expected PeerDisconnected, got {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
    // The channel stays broken, with an error rather than a hang.
    assert!(matches!(a.recv(), Err(Error::PeerDisconnected { .. })));
    assert!(matches!(a.send(b"x"), Err(Error::PeerDisconnected { .. })));
}

#[test]
fn net_peer_disconnect_mid_message() {
    let (mut raw, h) = raw_peer_and_channel(opts());
    let mut ch = h.join().unwrap().unwrap();
    raw.write_all(&1000u64.to_le_bytes()).unwrap();
    raw.write_all(&[9u8; 10]).unwrap();
    drop(raw);
    let t0 = Instant::now();
    match ch.recv() {
        Err(Error::PeerDisconnected { reason, .. }) => {
            assert!(reason.contains("10 of 1000"), "{reason}")
        }
        other => panic!("expected PeerDisconnected, got {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn net_peer_disconnect_mid_header() {
    let (mut raw, h) = raw_peer_and_channel(opts());
    let mut ch = h.join().unwrap().unwrap();
    raw.write_all(&[1, 2, 3]).unwrap();
    drop(raw);
    assert!(matches!(ch.recv(), Err(Error::PeerDisconnected { .. })));
}

#[test]
fn net_peer_close_is_seen_at_once() {
    let (mut a, b) = tcp_loopback_pair("server", "client", &opts()).unwrap();
    let h = thread::spawn(move || {
        let mut b = b;
        b.send(b"last").unwrap();
        b.close().unwrap();
    });
    assert_eq!(a.recv().unwrap(), b"last");
    assert!(matches!(a.recv(), Err(Error::PeerDisconnected { .. })));
    h.join().unwrap();
}

#[test]
fn net_wrong_version_refused_both_ways() {
    // A newer peer connects to us.
    let listener = bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let h = thread::spawn(move || TcpChannel::accept(&listener, "server", &opts()));
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.write_all(&hello(PROTOCOL_VERSION + 1, "client")).unwrap();
    match h.join().unwrap() {
        Err(Error::VersionMismatch { ours, theirs, .. }) => {
            assert_eq!(ours, PROTOCOL_VERSION.to_string());
            assert_eq!(theirs, (PROTOCOL_VERSION + 1).to_string());
        }
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
    // We connect to an older peer.
    let listener = bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let h = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(&hello(0, "server")).unwrap();
        thread::sleep(Duration::from_millis(500));
    });
    let r = TcpChannel::connect(addr, "client", &opts());
    assert!(matches!(r, Err(Error::VersionMismatch { ref theirs, .. }) if theirs == "0"), "{r:?}");
    h.join().unwrap();
}

#[test]
fn net_http_client_is_not_a_polypi_peer() {
    let listener = bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let h = thread::spawn(move || {
        let r = TcpChannel::accept(&listener, "server", &opts());
        // The listener is still usable after a failed hello.
        let ok = TcpChannel::accept(&listener, "server", &opts());
        (r, ok)
    });
    let t0 = Instant::now();
    let mut raw = TcpStream::connect(addr).unwrap();
    // Short garbage, then silence: refused at the first differing byte, not after a timeout.
    raw.write_all(b"GET").unwrap();
    let good = TcpChannel::connect(addr, "client", &opts());
    let (r, ok) = h.join().unwrap();
    match r {
        Err(Error::VersionMismatch { theirs, .. }) => assert_eq!(theirs, "not a polypi peer"),
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(4));
    ok.unwrap();
    good.unwrap();
    drop(raw);

    // And a polypi client that reaches an HTTP server.
    let listener = bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let h = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
        thread::sleep(Duration::from_millis(500));
    });
    let r = TcpChannel::connect(addr, "client", &opts());
    assert!(
        matches!(r, Err(Error::VersionMismatch { ref theirs, .. }) if theirs == "not a polypi peer"),
        "{r:?}"
    );
    h.join().unwrap();
}

#[test]
fn net_silent_peer_times_out_in_handshake() {
    let listener = bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let o = TcpOptions { handshake_timeout: Duration::from_millis(300), ..opts() };
    let h = thread::spawn(move || TcpChannel::accept(&listener, "server", &o));
    let raw = TcpStream::connect(addr).unwrap();
    let t0 = Instant::now();
    match h.join().unwrap() {
        Err(Error::PeerDisconnected { reason, .. }) => {
            assert!(reason.contains("timed out after 0.3 s"), "{reason}")
        }
        other => panic!("expected PeerDisconnected, got {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
    drop(raw);
}

#[test]
fn net_silent_peer_times_out_in_recv() {
    let o = TcpOptions { read_timeout: Some(Duration::from_millis(300)), ..opts() };
    let (mut a, _b) = tcp_loopback_pair("server", "client", &o).unwrap();
    let t0 = Instant::now();
    match a.recv() {
        Err(Error::PeerDisconnected { reason, .. }) => {
            assert!(reason.contains("timed out after 0.3 s"), "{reason}")
        }
        other => panic!("expected PeerDisconnected, got {other:?}"),
    }
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn net_set_read_timeout_after_connect() {
    let (mut a, _b) = tcp_loopback_pair("server", "client", &opts()).unwrap();
    a.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let t0 = Instant::now();
    assert!(matches!(a.recv(), Err(Error::PeerDisconnected { .. })));
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn net_oversize_frame_is_protocol_error() {
    let (mut raw, h) = raw_peer_and_channel(TcpOptions { max_frame_bytes: 1 << 20, ..opts() });
    let mut ch = h.join().unwrap().unwrap();
    raw.write_all(&((1u64 << 20) + 1).to_le_bytes()).unwrap();
    assert!(matches!(ch.recv(), Err(Error::Protocol(_))));

    // With the default maximum (4 GiB), a garbage length is refused without allocating.
    let (mut raw, h) = raw_peer_and_channel(opts());
    let mut ch = h.join().unwrap().unwrap();
    raw.write_all(&u64::MAX.to_le_bytes()).unwrap();
    match ch.recv() {
        Err(Error::Protocol(msg)) => assert!(msg.contains("maximum frame size"), "{msg}"),
        other => panic!("expected Protocol, got {other:?}"),
    }
}

#[test]
fn net_frames_from_raw_peer() {
    let (mut raw, h) = raw_peer_and_channel(opts());
    let mut ch = h.join().unwrap().unwrap();
    raw.write_all(&3u64.to_le_bytes()).unwrap();
    raw.write_all(b"abc").unwrap();
    assert_eq!(ch.recv().unwrap(), b"abc");
    ch.send(b"xy").unwrap();
    ch.flush().unwrap();
    let mut f = [0u8; 10];
    raw.read_exact(&mut f).unwrap();
    assert_eq!(&f[..8], &2u64.to_le_bytes());
    assert_eq!(&f[8..], b"xy");
}

#[test]
fn net_connect_retries_until_peer_listens() {
    // Find a free port, release it, and start listening only after the client began connecting.
    let port = bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let addr2 = addr.clone();
    let h = thread::spawn(move || TcpChannel::connect(addr2.as_str(), "client", &opts()));
    thread::sleep(Duration::from_millis(300));
    let listener = bind(addr.as_str()).unwrap();
    let mut server = TcpChannel::accept(&listener, "server", &opts()).unwrap();
    let mut client = h.join().unwrap().unwrap();
    client.send(b"hi").unwrap();
    client.flush().unwrap();
    assert_eq!(server.recv().unwrap(), b"hi");
}

#[test]
fn net_connect_gives_up() {
    let port = bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let o = TcpOptions { connect_retry_for: Duration::from_millis(300), ..opts() };
    let t0 = Instant::now();
    match TcpChannel::connect(("127.0.0.1", port), "client", &o) {
        Err(Error::Io(e)) => assert!(e.to_string().contains("could not connect"), "{e}"),
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn net_accept_timeout() {
    let listener = bind("127.0.0.1:0").unwrap();
    let o = TcpOptions { accept_timeout: Some(Duration::from_millis(200)), ..opts() };
    let r = TcpChannel::accept(&listener, "server", &o);
    assert!(
        matches!(r, Err(Error::Io(ref e)) if e.kind() == std::io::ErrorKind::TimedOut),
        "{r:?}"
    );
}

#[test]
fn net_bind_address_in_use() {
    let l = bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    match bind(addr) {
        Err(Error::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
            assert!(e.to_string().contains("already in use"), "{e}");
            assert!(e.to_string().contains(&addr.to_string()), "{e}");
        }
        other => panic!("expected AddrInUse, got {other:?}"),
    }
}

#[test]
fn net_emulated_wan_over_tcp_lower_bound() {
    let model = LinkModel::wan();
    let (a, b) = tcp_loopback_pair("server", "client", &opts()).unwrap();
    let (mut a, mut b) = emulated_pair(a, b, model);
    let n = 2_000_000usize; // 40 ms on the wire + 20 ms one way
    let t0 = Instant::now();
    a.send(&vec![5u8; n]).unwrap();
    a.flush().unwrap();
    assert_eq!(b.recv().unwrap().len(), n);
    let took = t0.elapsed();
    let bound = Duration::from_secs_f64(
        n as f64 * 8.0 / model.bandwidth_bits_per_s + model.rtt_ms / 2000.0,
    );
    assert!(took >= bound, "took {took:?}, bound {bound:?}");
}

/// Both parties send a large message at the same time, then receive (as when opening a shared
/// value): must not deadlock on full socket buffers.
#[test]
fn net_simultaneous_large_exchange() {
    let (mut a, mut b) = tcp_loopback_pair("server", "client", &opts()).unwrap();
    let n = 32 << 20;
    let h = thread::spawn(move || {
        b.send(&vec![2u8; n]).unwrap();
        let m = b.recv().unwrap();
        assert_eq!(m.len(), n);
        b
    });
    a.send(&vec![1u8; n]).unwrap();
    let m = a.recv().unwrap();
    assert_eq!(m.len(), n);
    let b = h.join().unwrap();
    assert_eq!(a.stats().bytes_sent, b.stats().bytes_received);
}

/// Writing to a peer that went away fails with `PeerDisconnected` (from a later send/flush,
/// since writes are asynchronous), not with a panic or a hang.
#[test]
fn net_send_to_departed_peer() {
    let (mut a, b) = tcp_loopback_pair("server", "client", &opts()).unwrap();
    drop(b);
    let t0 = Instant::now();
    let chunk = vec![0u8; 1 << 20];
    let mut failed = None;
    for _ in 0..200 {
        if let Err(e) = a.send(&chunk).and_then(|_| a.flush()) {
            failed = Some(e);
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    match failed {
        Some(Error::PeerDisconnected { peer, .. }) => assert!(peer.contains("client"), "{peer}"),
        other => panic!("expected PeerDisconnected, got {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(matches!(a.recv(), Err(Error::PeerDisconnected { .. })));
}

/// `exchange_ring`: one simultaneous exchange of large ring vectors, one send phase each side.
#[test]
fn net_exchange_ring_tcp_large() {
    use polypi_core::net::exchange_ring;
    let (mut a, mut b) = tcp_loopback_pair("server", "client", &opts()).unwrap();
    let n = 3 << 20; // 24 MB each way
    let xa: Vec<u64> = (0..n as u64).collect();
    let xb: Vec<u64> = (0..n as u64).map(|i| i.wrapping_mul(31)).collect();
    let (xa2, xb2) = (xa.clone(), xb.clone());
    let h = thread::spawn(move || {
        assert_eq!(exchange_ring(&mut b, &xb2).unwrap(), xa2);
        b
    });
    assert_eq!(exchange_ring(&mut a, &xa).unwrap(), xb);
    let b = h.join().unwrap();
    assert_eq!(a.stats().send_phases, 1);
    assert_eq!(b.stats().send_phases, 1);
    assert_eq!(a.stats().bytes_received, 8 * n as u64);
}

/// The peer's role is untrusted text: control characters are neutralised, not a crash.
#[test]
fn net_peer_role_with_control_characters() {
    let listener = bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let h = thread::spawn(move || TcpChannel::accept(&listener, "server", &opts()));
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.write_all(&hello(PROTOCOL_VERSION, "cli\0ent\n")).unwrap();
    let ch = h.join().unwrap().unwrap();
    assert_eq!(ch.peer_role(), "cli?ent?");
}

/// Development certificates for the TLS tests (one set per test process).
fn tls_dir() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("polypi-net-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        polypi_core::net::tls::write_dev_certs(
            &d,
            &["localhost".into(), "127.0.0.1".into()],
            false,
        )
        .unwrap();
        d
    })
    .clone()
}

fn tls_opts(role: &str, auth: polypi_core::net::ClientAuth) -> TcpOptions {
    let files = polypi_core::net::TlsFiles::in_dir(&tls_dir(), role);
    let cfg = polypi_core::net::TlsConfig::load(&files, auth).unwrap();
    TcpOptions { tls: Some(std::sync::Arc::new(cfg)), ..opts() }
}

/// TLS pair: `a` accepts with `a_opts`, `b` connects with `b_opts`.
fn tls_pair(
    a_opts: TcpOptions,
    b_opts: TcpOptions,
) -> (Result<TcpChannel, Error>, Result<TcpChannel, Error>) {
    let listener = bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let h = thread::spawn(move || TcpChannel::accept(&listener, "server", &a_opts));
    let b = TcpChannel::connect(addr, "client", &b_opts);
    (h.join().unwrap(), b)
}

#[test]
fn net_tls_roundtrip_large_exchange_and_identity() {
    use polypi_core::net::{tls, ClientAuth};
    let (a, b) = tls_pair(
        tls_opts("server", ClientAuth::Required),
        tls_opts("client", ClientAuth::Optional),
    );
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    assert!(a.is_tls() && b.is_tls());
    // Each side sees the other's verified certificate.
    assert!(tls::cert_valid_for(a.peer_certificate().unwrap(), tls::CLIENT_IDENTITY));
    assert!(tls::cert_valid_for(b.peer_certificate().unwrap(), tls::SERVER_IDENTITY));
    assert!(!tls::cert_valid_for(a.peer_certificate().unwrap(), tls::SERVER_IDENTITY));
    // Simultaneous large exchange (both send 24 MB before reading) does not deadlock, and
    // payloads arrive intact.
    let big_a = payload(1, 24 << 20);
    let big_b = payload(2, 24 << 20);
    let (ea, eb) = (big_a.clone(), big_b.clone());
    let h = thread::spawn(move || {
        let got = a.exchange(&ea).unwrap();
        (a, got)
    });
    let got_b = b.exchange(&eb).unwrap();
    let (mut a, got_a) = h.join().unwrap();
    assert!(got_a == big_b && got_b == big_a);
    // Many small messages each way.
    roundtrip_small(&mut a, &mut b);
    assert_eq!(a.stats().bytes_sent, b.stats().bytes_received);
}

fn roundtrip_small(a: &mut TcpChannel, b: &mut TcpChannel) {
    for i in 0..200u32 {
        a.send(&i.to_le_bytes()).unwrap();
        a.flush().unwrap();
        assert_eq!(b.recv().unwrap(), i.to_le_bytes());
        b.send(&[i as u8; 3]).unwrap();
        b.flush().unwrap();
        assert_eq!(a.recv().unwrap(), vec![i as u8; 3]);
    }
}

#[test]
fn net_tls_refuses_plaintext_peers_and_missing_client_cert() {
    use polypi_core::net::ClientAuth;
    // A plaintext client at a TLS server (and the reverse) fails the handshake with an error on
    // both sides, never a hang.
    let (a, b) = tls_pair(tls_opts("server", ClientAuth::Optional), opts());
    assert!(a.is_err() && b.is_err(), "{a:?} {b:?}");
    let (a, b) = tls_pair(opts(), tls_opts("client", ClientAuth::Optional));
    assert!(a.is_err() && b.is_err(), "{a:?} {b:?}");
    let b = b.unwrap_err().to_string();
    assert!(b.contains("TLS"), "{b}");
    // Certificate for another name than the one dialled.
    let mut wrong = tls_opts("client", ClientAuth::Optional);
    wrong.tls_server_name = Some("polypi-dealer".into());
    let (_a, b) = tls_pair(tls_opts("server", ClientAuth::Optional), wrong);
    let e = b.unwrap_err().to_string();
    assert!(e.contains("TLS") && e.contains("name"), "{e}");
    // A certificate of another role of the same CA (valid for the same address) does not pass
    // as the dealer's; the right identity does.
    let mut want_dealer = tls_opts("client", ClientAuth::Optional);
    want_dealer.expect_peer_identity = Some(polypi_core::net::tls::DEALER_IDENTITY.into());
    let (_a, b) = tls_pair(tls_opts("server", ClientAuth::Optional), want_dealer.clone());
    let e = b.unwrap_err().to_string();
    assert!(e.contains("polypi-dealer"), "{e}");
    let (a, b) = tls_pair(tls_opts("dealer", ClientAuth::Optional), want_dealer);
    assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
}

#[test]
fn net_tls_frame_limit_checked_before_payload() {
    use polypi_core::net::ClientAuth;
    let (a, b) = tls_pair(
        tls_opts("server", ClientAuth::Optional),
        tls_opts("client", ClientAuth::Optional),
    );
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    b.send(&[7u8; 100]).unwrap();
    b.flush().unwrap();
    let e = a.recv_max(64).unwrap_err();
    assert!(matches!(e, Error::Protocol(_)), "{e}");
    assert!(a.recv_expect(4).is_err(), "a channel is unusable after a refused frame");
}

#[test]
fn net_slowloris_bounded_by_message_deadline() {
    // One byte every 300 ms with a 1 s message deadline: the receive fails after ~1 s, though
    // no single read() waits longer than the timeout.
    let o = TcpOptions { read_timeout: Some(Duration::from_secs(1)), ..opts() };
    let (mut raw, h) = raw_peer_and_channel(o);
    let mut ch = h.join().unwrap().unwrap();
    let t = thread::spawn(move || {
        let frame = [8u64.to_le_bytes().to_vec(), vec![1u8; 8]].concat();
        for b in frame {
            if raw.write_all(&[b]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(300));
        }
    });
    let start = Instant::now();
    let r = ch.recv();
    let took = start.elapsed();
    assert!(matches!(r, Err(Error::PeerDisconnected { .. })), "{r:?}");
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    t.join().unwrap();
}

#[test]
fn net_phase_deadline_cuts_a_waiting_recv() {
    let (mut a, _b) = tcp_loopback_pair("a", "b", &opts()).unwrap();
    a.set_deadline(Some(Instant::now() + Duration::from_millis(300)));
    let start = Instant::now();
    let e = a.recv().unwrap_err().to_string();
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(e.contains("deadline"), "{e}");
}
