//! TLS termination: loading certificates, choosing one by SNI, and making
//! self-signed development certificates.
//!
//! TLS 1.2 and 1.3 only, with rustls and the `ring` provider. ALPN offers
//! `http/1.1` (HTTP/2 with RFC 8441 comes later). Certificates are loaded
//! once per listener at startup; a bad file is a startup error naming the
//! file, never a panic.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config;
use crate::config::HostMatch;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file is missing or unreadable; with `generate_if_missing: true`
    /// wsgate creates a development certificate instead.
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key found (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    /// Usually a key of an unsupported type, or one that does not match.
    #[error("{path}: unusable private key: {message}")]
    BadKey { path: PathBuf, message: String },
    #[error("cannot write development certificate {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate development certificate: {0}")]
    Generate(String),
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the acceptor for one TLS listener.
pub fn server_config(tls: &config::Tls) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut resolver = SniResolver::default();
    for c in &tls.certificates {
        if c.generate_if_missing && !(c.cert.exists() && c.key.exists()) {
            generate_dev_cert(&c.cert, &c.key)?;
            tracing::warn!(cert = %c.cert.display(), "generated a self-signed development certificate");
        }
        let key = load_certified_key(&provider, &c.cert, &c.key)?;
        resolver.add(c.server_names.clone(), key);
    }
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Stateless session tickets (the state travels encrypted in the ticket,
    // under keys that rotate): resumption then works for any number of
    // clients, where rustls' default in-memory cache holds 256 sessions.
    // That matters most right after a drain, when many clients reconnect
    // at once. One ticket per handshake is enough for a WebSocket client,
    // which reconnects one connection at a time.
    server.ticketer = rustls::crypto::ring::Ticketer::new()?;
    server.send_tls13_tickets = 1;
    Ok(Arc::new(server))
}

fn load_certified_key(
    provider: &CryptoProvider,
    cert: &Path,
    key: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let read = |p: &Path| {
        fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let key_pem = read(key)?;
    let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey {
            path: key.to_path_buf(),
        })?;
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::BadKey {
            path: key.to_path_buf(),
            message: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| TlsError::BadKey {
        path: key.to_path_buf(),
        message: format!("does not match {}: {e}", cert.display()),
    })?;
    Ok(Arc::new(certified))
}

/// Writes a self-signed certificate for `localhost`, `127.0.0.1` and `::1`
/// (ECDSA P-256) and its key, creating parent directories. The key file is
/// made readable by its owner only.
pub fn generate_dev_cert(cert: &Path, key: &Path) -> Result<(), TlsError> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let generated =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    write_file(cert, generated.cert.pem().as_bytes(), 0o644)?;
    write_file(key, generated.key_pair.serialize_pem().as_bytes(), 0o600)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(err)?;
    }
    fs::write(path, bytes).map_err(err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err)
}

/// Chooses a certificate by SNI: exact names first, then `*.suffix`
/// patterns in config order, then the default (the first certificate listed
/// without names, or else the first certificate).
#[derive(Default)]
struct SniResolver {
    entries: Vec<(Vec<HostMatch>, Arc<CertifiedKey>)>,
}

impl SniResolver {
    fn add(&mut self, names: Vec<HostMatch>, key: Arc<CertifiedKey>) {
        self.entries.push((names, key));
    }

    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni.map(str::to_ascii_lowercase) {
            let exact = |m: &HostMatch| matches!(m, HostMatch::Exact(_)) && m.matches(&name);
            let wildcard = |m: &HostMatch| matches!(m, HostMatch::Suffix(_)) && m.matches(&name);
            for rule in [&exact as &dyn Fn(&HostMatch) -> bool, &wildcard] {
                if let Some((_, k)) = self.entries.iter().find(|(ns, _)| ns.iter().any(rule)) {
                    return Some(k.clone());
                }
            }
        }
        self.entries
            .iter()
            .find(|(ns, _)| ns.is_empty())
            .or(self.entries.first())
            .map(|(_, k)| k.clone())
    }
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("certificates", &self.entries.len())
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wsgate-tls-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn key_for(dir: &Path, tag: &str) -> Arc<CertifiedKey> {
        let (c, k) = (
            dir.join(format!("{tag}.crt")),
            dir.join(format!("{tag}.key")),
        );
        generate_dev_cert(&c, &k).unwrap();
        load_certified_key(&rustls::crypto::ring::default_provider(), &c, &k).unwrap()
    }

    #[test]
    fn generated_cert_loads_and_key_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = temp_dir("gen");
        key_for(&d, "dev");
        let mode = fs::metadata(d.join("dev.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = fs::remove_dir_all(d);
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let d = temp_dir("sni");
        let (a, b, c) = (key_for(&d, "a"), key_for(&d, "b"), key_for(&d, "c"));
        let mut r = SniResolver::default();
        r.add(vec![HostMatch::parse("*.example.com").unwrap()], a.clone());
        r.add(vec![], b.clone());
        r.add(
            vec![HostMatch::parse("api.example.com").unwrap()],
            c.clone(),
        );
        let is = |x: Option<Arc<CertifiedKey>>, y: &Arc<CertifiedKey>| Arc::ptr_eq(&x.unwrap(), y);
        assert!(is(r.pick(Some("API.example.com")), &c));
        assert!(is(r.pick(Some("www.example.com")), &a));
        assert!(is(r.pick(Some("other.org")), &b));
        assert!(is(r.pick(None), &b));
        let _ = fs::remove_dir_all(d);
    }

    #[tokio::test]
    async fn second_connection_resumes_with_a_stateless_ticket() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let d = temp_dir("resume");
        let (cert, key) = (d.join("r.crt"), d.join("r.key"));
        generate_dev_cert(&cert, &key).unwrap();
        let server = server_config(&config::Tls {
            certificates: vec![config::Certificate {
                cert: cert.clone(),
                key,
                server_names: vec![],
                generate_if_missing: false,
            }],
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move {
                    if let Ok(mut s) = crate::edge::tlsconn::accept(tcp, server).await {
                        let _ = s.write_all(b"hi").await;
                        let mut sink = Vec::new();
                        let _ = s.read_to_end(&mut sink).await;
                    }
                });
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        let pem = fs::read(&cert).unwrap();
        for c in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(c.unwrap()).unwrap();
        }
        let client = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        );
        let connector = tokio_rustls::TlsConnector::from(client);
        let step = std::time::Duration::from_secs(10);
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let tcp = tokio::time::timeout(step, tokio::net::TcpStream::connect(addr))
                .await
                .unwrap()
                .unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut s = tokio::time::timeout(step, connector.connect(name, tcp))
                .await
                .unwrap()
                .unwrap();
            let mut hi = [0u8; 2];
            // Reading also takes in the ticket sent after the handshake.
            tokio::time::timeout(step, s.read_exact(&mut hi))
                .await
                .unwrap()
                .unwrap();
            kinds.push(s.get_ref().1.handshake_kind());
        }
        assert_eq!(
            kinds,
            [
                Some(rustls::HandshakeKind::Full),
                Some(rustls::HandshakeKind::Resumed)
            ]
        );
        let _ = fs::remove_dir_all(d);
    }

    #[test]
    fn errors_name_the_file() {
        let d = temp_dir("err");
        fs::create_dir_all(&d).unwrap();
        let p = rustls::crypto::ring::default_provider();
        let missing = load_certified_key(&p, &d.join("none.crt"), &d.join("none.key"));
        assert!(missing.unwrap_err().to_string().contains("none.crt"));
        fs::write(d.join("empty.crt"), "not pem").unwrap();
        let empty = load_certified_key(&p, &d.join("empty.crt"), &d.join("none.key"));
        assert!(matches!(empty, Err(TlsError::NoCertificate { .. })));
        key_for(&d, "x");
        key_for(&d, "y");
        let mismatch = load_certified_key(&p, &d.join("x.crt"), &d.join("y.key"));
        assert!(
            matches!(mismatch, Err(TlsError::BadKey { .. })),
            "{mismatch:?}"
        );
        let _ = fs::remove_dir_all(d);
    }
}
