//! `polypi serve --health-listen ADDR`: a health check for load balancers (HAProxy
//! `option httpchk GET /health`, Kubernetes probes). Plain HTTP/1.0 on its own port, carrying
//! only the server's load (no model or session data): `200` with
//! `{"status":"ok","active":N,"capacity":M,"admitted":K}` while a session slot is free, `503`
//! with `"status":"full"` when every slot is taken, so the balancer sends new clients elsewhere.

use anyhow::{Context, Result};
use polypi_core::engine::deploy::DeployedServer;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

/// Starts the health endpoint on `addr` in a background thread; prints
/// `health on ADDR` on stderr. Errors: the address cannot be bound.
pub fn spawn(addr: &str, server: Arc<DeployedServer>) -> Result<()> {
    let listener = polypi_core::net::bind(addr)
        .with_context(|| format!("cannot listen for health checks on {addr}"))?;
    let local = listener.local_addr()?;
    eprintln!("health on {local}");
    std::thread::Builder::new().name("polypi-health".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = answer(stream, &server);
        }
    })?;
    Ok(())
}

/// Reads the request head (at most 4 KiB, 0.5 s) and answers with the server's load.
fn answer(mut s: TcpStream, server: &DeployedServer) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.set_write_timeout(Some(Duration::from_millis(500)))?;
    let mut buf = [0u8; 4096];
    let mut got = 0;
    while got < buf.len() {
        let n = s.read(&mut buf[got..])?;
        if n == 0 {
            break;
        }
        got += n;
        if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let (active, capacity) = (server.active(), server.capacity());
    let full = active >= capacity;
    let body = format!(
        "{{\"status\":\"{}\",\"active\":{active},\"capacity\":{capacity},\"admitted\":{}}}\n",
        if full { "full" } else { "ok" },
        server.admitted()
    );
    let status = if full { "503 Service Unavailable" } else { "200 OK" };
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())
}
