//! TLS 1.3 for the deployment links (rustls with the `ring` provider), and a development
//! certificate authority (rcgen).
//!
//! Every deployed link (client-server, client-dealer, server-dealer) runs TLS 1.3 with
//! certificates from one CA:
//!
//! | link | who verifies whom |
//! |---|---|
//! | client -> server | client verifies the server's certificate for the address it dials; the server may require a client certificate ([`ClientAuth::Required`]) |
//! | server -> dealer | mutual: the server verifies the dealer for its address; the dealer requires a certificate valid for [`SERVER_IDENTITY`] (or the configured name) before it accepts the `server` role |
//! | client -> dealer | the client verifies the dealer; the dealer accepts a client only with a session id a server registered ([`crate::engine::deploy`]) |
//!
//! [`write_dev_certs`] writes a development CA and one certificate per role (`polypi certs`).
//! Production deployments bring their own CA; each role needs its certificate to carry the
//! role's identity name ([`SERVER_IDENTITY`], [`DEALER_IDENTITY`], [`CLIENT_IDENTITY`]) as a DNS
//! subject alternative name, next to the host names and addresses peers dial.
//!
//! Nothing here implements cryptography: handshakes, record protection and certificate
//! validation are rustls' and webpki's.

use crate::error::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// DNS subject alternative name that marks a certificate as the polypi server's (checked by the
/// dealer before it accepts a `server` connection).
pub const SERVER_IDENTITY: &str = "polypi-server";
/// DNS subject alternative name of the dealer's certificate.
pub const DEALER_IDENTITY: &str = "polypi-dealer";
/// DNS subject alternative name of a client certificate.
pub const CLIENT_IDENTITY: &str = "polypi-client";

/// Whether a TLS acceptor asks the connecting peer for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// The peer may present a certificate from the CA (then it is verified) or none.
    #[default]
    Optional,
    /// The handshake fails unless the peer presents a valid certificate from the CA.
    Required,
}

/// The PEM files of one role: the CA certificate(s) to trust, the role's certificate chain and
/// its private key (PKCS#8, PKCS#1 or SEC1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate(s) (PEM) that issued every peer's certificate.
    pub ca: PathBuf,
    /// This role's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// This role's private key (PEM).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files `polypi certs --out DIR` writes for `role` (`server`, `dealer`, `client`):
    /// `DIR/ca.pem`, `DIR/ROLE.pem`, `DIR/ROLE.key`.
    pub fn in_dir(dir: &Path, role: &str) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{role}.pem")),
            key: dir.join(format!("{role}.key")),
        }
    }
}

/// TLS configuration of one process: how it connects (client side of a handshake) and how it
/// accepts (server side), both restricted to TLS 1.3 and to certificates of one CA.
pub struct TlsConfig {
    pub(crate) client: Arc<rustls::ClientConfig>,
    pub(crate) server: Arc<rustls::ServerConfig>,
    description: String,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsConfig({})", self.description)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("TLS configuration: {what}: {e}"))
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    if !path.exists() {
        return Err(Error::InvalidArgument(format!(
            "{what} {} not found (create development certificates with `polypi certs --out DIR`)",
            path.display()
        )));
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_err(&format!("cannot read {what} {}", path.display()), e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| tls_err(&format!("bad PEM in {what} {}", path.display()), e))?;
    if certs.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{what} {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

impl TlsConfig {
    /// Loads `files` and builds the connecting and accepting configurations. `client_auth`
    /// applies when this process accepts connections.
    ///
    /// Errors: `InvalidArgument` naming the file for a missing or malformed PEM file, a key that
    /// does not match the certificate, or a CA rustls refuses.
    pub fn load(files: &TlsFiles, client_auth: ClientAuth) -> Result<TlsConfig> {
        let ca = read_certs(&files.ca, "CA certificate")?;
        let chain = read_certs(&files.cert, "certificate")?;
        if !files.key.exists() {
            return Err(Error::InvalidArgument(format!(
                "private key {} not found",
                files.key.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| tls_err(&format!("cannot read private key {}", files.key.display()), e))?;
        let what = format!(
            "cert {}, key {}, CA {}",
            files.cert.display(),
            files.key.display(),
            files.ca.display()
        );
        Self::build(ca, chain, key, client_auth, what)
    }

    /// [`TlsConfig::load`] from PEM text already in memory (`ca`, `cert`: certificates;
    /// `key`: a private key). Errors: `InvalidArgument` for malformed PEM or a key that does not
    /// match the certificate.
    pub fn from_pem(ca: &str, cert: &str, key: &str, client_auth: ClientAuth) -> Result<TlsConfig> {
        let parse = |pem: &str, what: &str| -> Result<Vec<CertificateDer<'static>>> {
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| tls_err(&format!("bad PEM {what}"), e))
        };
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|e| tls_err("bad PEM private key", e))?;
        Self::build(
            parse(ca, "CA")?,
            parse(cert, "certificate")?,
            key,
            client_auth,
            "in-memory certificates".into(),
        )
    }

    fn build(
        ca: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        client_auth: ClientAuth,
        what: String,
    ) -> Result<TlsConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in ca {
            roots.add(c).map_err(|e| tls_err(&format!("CA of {what}"), e))?;
        }
        let roots = Arc::new(roots);
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_err("protocol versions", e))?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|e| tls_err(&format!("certificate and key do not fit ({what})"), e))?;
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
        let verifier = match client_auth {
            ClientAuth::Optional => verifier.allow_unauthenticated(),
            ClientAuth::Required => verifier,
        }
        .build()
        .map_err(|e| tls_err("client verifier", e))?;
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_err("protocol versions", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| tls_err(&format!("certificate and key do not fit ({what})"), e))?;
        let mut server = server;
        // No session resumption: every connection is a full handshake (and no tickets travel).
        server.send_tls13_tickets = 0;
        Ok(TlsConfig { client: Arc::new(client), server: Arc::new(server), description: what })
    }
}

/// Whether `cert` (a peer's verified end-entity certificate) is valid for `name` (a DNS name
/// such as [`SERVER_IDENTITY`], or an IP address). The chain was already verified against the
/// CA during the handshake; this only checks the subject alternative names (webpki).
pub fn cert_valid_for(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(sn) = ServerName::try_from(name.to_string()) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&sn).is_ok()
}

/// The file names [`write_dev_certs`] writes, in order.
pub const DEV_CERT_FILES: [&str; 7] =
    ["ca.pem", "server.pem", "server.key", "dealer.pem", "dealer.key", "client.pem", "client.key"];

/// Writes a development CA and certificates for the three roles into `dir` (created if needed):
/// `ca.pem`, `server.pem`/`server.key`, `dealer.pem`/`dealer.key`, `client.pem`/`client.key`
/// (ECDSA P-256, PEM; keys written with mode 0600 on Unix). Server and dealer certificates are
/// valid for every name of `hosts` (DNS names or IP addresses; e.g. `localhost`, `127.0.0.1`)
/// and for their role identity ([`SERVER_IDENTITY`], [`DEALER_IDENTITY`]); the client
/// certificate for [`CLIENT_IDENTITY`]. The CA key is not kept: nobody can issue more
/// certificates from this CA later (run the command again for a new set).
///
/// Refuses to overwrite: if any of the files exists and `force` is false, nothing is written.
/// Returns the paths written.
///
/// Errors: `InvalidArgument` for an existing file without `force` or a host name that is not a
/// valid DNS name or IP address; `Io` when the directory or a file cannot be written.
pub fn write_dev_certs(dir: &Path, hosts: &[String], force: bool) -> Result<Vec<PathBuf>> {
    let paths: Vec<PathBuf> = DEV_CERT_FILES.iter().map(|f| dir.join(f)).collect();
    if !force {
        if let Some(p) = paths.iter().find(|p| p.exists()) {
            return Err(Error::InvalidArgument(format!(
                "{} exists; refusing to overwrite certificates (use --force, or another --out)",
                p.display()
            )));
        }
    }
    let c = DevCerts::generate(hosts)?;
    std::fs::create_dir_all(dir)?;
    let contents = [
        (&c.ca, false),
        (&c.server.0, false),
        (&c.server.1, true),
        (&c.dealer.0, false),
        (&c.dealer.1, true),
        (&c.client.0, false),
        (&c.client.1, true),
    ];
    for (path, (text, secret)) in paths.iter().zip(contents) {
        write_file(path, text.as_bytes(), secret)?;
    }
    Ok(paths)
}

/// A development CA and one (certificate, private key) pair per role, as PEM text (see
/// [`write_dev_certs`]).
pub struct DevCerts {
    /// The CA certificate.
    pub ca: String,
    /// Server certificate and key.
    pub server: (String, String),
    /// Dealer certificate and key.
    pub dealer: (String, String),
    /// Client certificate and key.
    pub client: (String, String),
}

impl DevCerts {
    /// Generates a fresh CA and the three role certificates (ECDSA P-256; server and dealer
    /// valid for `hosts` and their role identity). Errors: `InvalidArgument` for a host that is
    /// not a DNS name or IP address.
    pub fn generate(hosts: &[String]) -> Result<DevCerts> {
        use rcgen::{
            BasicConstraints, CertificateParams, DistinguishedName, DnType,
            ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let cert_err =
            |e: rcgen::Error| Error::InvalidArgument(format!("certificate generation: {e}"));
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "polypi development CA");
        ca_params.distinguished_name = dn;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().map_err(cert_err)?;
        let ca_cert = ca_params.self_signed(&ca_key).map_err(cert_err)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |identity: &str,
                    with_hosts: bool,
                    eku: Vec<ExtendedKeyUsagePurpose>|
         -> Result<(String, String)> {
            let mut names: Vec<String> = vec![identity.to_string()];
            if with_hosts {
                names.extend(hosts.iter().cloned());
            }
            let mut p = CertificateParams::new(names).map_err(|e| {
                Error::InvalidArgument(format!(
                    "host names {hosts:?}: each must be a DNS name or an IP address: {e}"
                ))
            })?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, identity);
            p.distinguished_name = dn;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = eku;
            let key = KeyPair::generate().map_err(cert_err)?;
            let cert = p.signed_by(&key, &issuer).map_err(cert_err)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        use ExtendedKeyUsagePurpose::{ClientAuth as Cli, ServerAuth as Srv};
        // The server accepts clients (TLS server) and dials the dealer (TLS client).
        Ok(DevCerts {
            ca: ca_cert.pem(),
            server: leaf(SERVER_IDENTITY, true, vec![Srv, Cli])?,
            dealer: leaf(DEALER_IDENTITY, true, vec![Srv])?,
            client: leaf(CLIENT_IDENTITY, false, vec![Cli])?,
        })
    }

    /// The [`TlsConfig`]s of server, dealer and client (client authentication optional), for
    /// in-process runs over loopback TLS (`polypi bench --transport tls`). Errors: as
    /// [`TlsConfig::from_pem`].
    pub fn configs(&self) -> Result<[Arc<TlsConfig>; 3]> {
        let mk = |(c, k): &(String, String)| -> Result<Arc<TlsConfig>> {
            Ok(Arc::new(TlsConfig::from_pem(&self.ca, c, k, ClientAuth::Optional)?))
        };
        Ok([mk(&self.server)?, mk(&self.dealer)?, mk(&self.client)?])
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename (a failed run leaves the old
/// file intact); `secret` files get mode 0600 on Unix.
fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp-polypi");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        if secret {
            opts.mode(0o600);
        }
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_dev_certs_load_and_identities() {
        let dir = std::env::temp_dir().join(format!("polypi-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let written = write_dev_certs(&dir, &hosts, false).unwrap();
        assert_eq!(written.len(), 7);
        // No overwrite without force; nothing changed.
        let before = std::fs::read(dir.join("server.pem")).unwrap();
        assert!(write_dev_certs(&dir, &hosts, false).is_err());
        assert_eq!(std::fs::read(dir.join("server.pem")).unwrap(), before);
        for role in ["server", "dealer", "client"] {
            TlsConfig::load(&TlsFiles::in_dir(&dir, role), ClientAuth::Required).unwrap();
        }
        let server = read_certs(&dir.join("server.pem"), "cert").unwrap();
        assert!(cert_valid_for(&server[0], SERVER_IDENTITY));
        assert!(cert_valid_for(&server[0], "127.0.0.1"));
        assert!(!cert_valid_for(&server[0], DEALER_IDENTITY));
        let client = read_certs(&dir.join("client.pem"), "cert").unwrap();
        assert!(!cert_valid_for(&client[0], SERVER_IDENTITY));
        // A key that does not belong to the certificate is refused.
        let mixed = TlsFiles { key: dir.join("dealer.key"), ..TlsFiles::in_dir(&dir, "server") };
        assert!(TlsConfig::load(&mixed, ClientAuth::Optional).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(dir.join("server.key")).unwrap().permissions().mode();
            assert_eq!(m & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
