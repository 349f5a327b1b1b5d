//! `polypi certs --out DIR`: a development certificate authority and one certificate per role
//! ([`polypi_core::net::tls::write_dev_certs`]), for `serve`, `dealer` and `query --tls-dir DIR`.

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `polypi certs`.
#[derive(Args, Debug)]
pub struct CertsArgs {
    /// Directory to write ca.pem, server.pem/.key, dealer.pem/.key, client.pem/.key into.
    #[arg(long)]
    pub out: PathBuf,
    /// Host names and IP addresses the server and dealer certificates are valid for (repeat
    /// for several machines).
    #[arg(long = "host", default_values_t = vec!["localhost".to_string(), "127.0.0.1".to_string()])]
    pub hosts: Vec<String>,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

/// Runs `polypi certs`.
pub fn run(a: CertsArgs) -> Result<ExitCode> {
    let written = polypi_core::net::tls::write_dev_certs(&a.out, &a.hosts, a.force)
        .with_context(|| format!("cannot write certificates into {}", a.out.display()))?;
    for p in &written {
        println!("wrote {}", p.display());
    }
    println!(
        "development CA for hosts {}: give each machine ca.pem and its own ROLE.pem/ROLE.key \
         (server, dealer, client) and start it with --tls-dir; keep the .key files private",
        a.hosts.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
