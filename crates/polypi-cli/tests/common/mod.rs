//! Helpers shared by the binary's integration tests: temporary folders, bounded runs of the
//! binary, long-running daemons, development certificates and a three-process deployment.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_polypi");
pub const WAIT: Duration = Duration::from_secs(120);

/// A fresh temporary folder for one test, removed when dropped.
pub struct Tmp(pub PathBuf);

impl std::ops::Deref for Tmp {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn tmp(name: &str) -> Tmp {
    let d = std::env::temp_dir().join(format!("polypi-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Tmp(d)
}

/// Runs the binary to completion (bounded by `WAIT`; killed past it).
pub fn run(args: &[&str]) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn polypi");
    wait_output(child, WAIT)
}

/// Waits for `child` (at most `limit`) while draining its pipes on threads so a chatty child
/// cannot block; a pipe already taken by the caller reads as empty.
pub fn wait_output(mut child: Child, limit: Duration) -> Output {
    let t0 = Instant::now();
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut p) = pipe {
                std::io::Read::read_to_end(&mut p, &mut v).ok();
            }
            v
        })
    };
    let h1 = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let h2 = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("polypi did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: h1.join().unwrap(), stderr: h2.join().unwrap() }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Development TLS certificates (`polypi certs`), one set per test process.
pub fn certs() -> &'static str {
    static DIR: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("polypi-cli-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let ds = d.to_str().unwrap().to_string();
        let o = run(&["certs", "--out", &ds]);
        assert!(o.status.success(), "polypi certs: {}", text(&o.stderr));
        ds
    })
}

/// Starts `polypi dealer` and `polypi serve --model MODEL` on free loopback ports (30 s
/// timeouts, TLS with [`certs`]); returns them with the dealer's and the server's addresses.
pub fn deploy(model: &str) -> (Daemon, Daemon, String, String) {
    let dealer = Daemon::spawn(&[
        "dealer",
        "--listen",
        "127.0.0.1:0",
        "--timeout-s",
        "30",
        "--tls-dir",
        certs(),
    ]);
    let daddr = dealer.addr();
    let server = Daemon::spawn(&[
        "serve",
        "--model",
        model,
        "--listen",
        "127.0.0.1:0",
        "--dealer",
        &daddr,
        "--timeout-s",
        "30",
        "--tls-dir",
        certs(),
    ]);
    let saddr = server.addr();
    (dealer, server, daddr, saddr)
}

/// A long-running child, killed on drop; its stdout lines arrive on `lines`.
pub struct Daemon {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
}

impl Daemon {
    pub fn spawn(args: &[&str]) -> Daemon {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn polypi");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Daemon { child, lines: rx }
    }

    /// Next stdout line (bounded wait).
    pub fn line(&self, limit: Duration) -> String {
        self.lines
            .recv_timeout(limit)
            .unwrap_or_else(|e| panic!("no output line in {limit:?}: {e}"))
    }

    /// Reads the "listening on ADDR" line and returns ADDR.
    pub fn addr(&self) -> String {
        let l = self.line(Duration::from_secs(60));
        l.strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {l:?}"))
            .to_string()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn zoo(dir: &Path, net: &str, act: &str) -> PathBuf {
    let p = dir.join(format!("{net}-{act}.safetensors"));
    let o = run(&["zoo", "--net", net, "--act", act, "--out", p.to_str().unwrap()]);
    assert!(o.status.success(), "zoo failed: {}", text(&o.stderr));
    p
}

pub fn gray_png(dir: &Path, name: &str, w: u32, h: u32) -> PathBuf {
    let p = dir.join(name);
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([((x * 7 + y * 13) % 256) as u8]))
        .save(&p)
        .unwrap();
    p
}

pub fn rgb_png(dir: &Path, name: &str, w: u32, h: u32) -> PathBuf {
    let p = dir.join(name);
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 8) as u8, (y * 8) as u8, ((x + y) * 4) as u8])
    })
    .save(&p)
    .unwrap();
    p
}

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!("bad JSON ({e}): {}\nstderr: {}", text(&o.stdout), text(&o.stderr))
    })
}

pub fn assert_fails(o: &Output, code: i32, needle: &str) {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Runs `polypi query` against the server at `saddr` and the dealer at `daddr` with the test
/// certificates ([`certs`]) and the further arguments `extra`.
pub fn query(saddr: &str, daddr: &str, extra: &[&str]) -> Output {
    let mut args = vec!["query", "--tls-dir", certs(), "--connect", saddr, "--dealer", daddr];
    args.extend_from_slice(extra);
    run(&args)
}
