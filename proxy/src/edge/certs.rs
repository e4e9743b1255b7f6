//! The certificates a TLS listener serves, swappable while it runs.
//!
//! Each TLS listener's rustls config resolves certificates through one
//! [`Certificates`], which holds the current set behind an `ArcSwap`. A
//! reload (`wsgate reload`, SIGHUP, or a changed certificate or key file)
//! loads every certificate of the listener again and swaps the whole set
//! at once: handshakes that start after the swap get the new certificates,
//! live connections are untouched (their keys were agreed long ago), and
//! session tickets stay valid because the rustls config, and so its
//! ticketer, is the same. Loading is all or nothing: one unreadable,
//! broken or mismatched file keeps the old set in place and is reported.
//!
//! Reading a certificate's expiry, serial and names ([`CertInfo`]) is pure.
//! [`server_config`] builds a listener's rustls config around its set.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::tls::{load_entries, Entry, TlsError};
use crate::config::{self, HostMatch};

/// What status and metrics say about one served certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The first DNS name (or, failing that, the subject's common name).
    pub name: String,
    /// Serial number, hex, colon-separated as `openssl x509` prints it.
    pub serial: String,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
}

impl CertInfo {
    /// Reads a leaf certificate. A certificate rustls accepted but this
    /// parser cannot read is described as well as it can be.
    pub fn of(der: &CertificateDer<'_>) -> CertInfo {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) else {
            return CertInfo {
                name: "(unparseable)".into(),
                serial: String::new(),
                not_after: 0,
            };
        };
        let dns = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
            });
        let cn = || {
            cert.subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok().map(str::to_string))
        };
        CertInfo {
            name: dns.or_else(cn).unwrap_or_else(|| "(no name)".into()),
            serial: cert.raw_serial_as_string(),
            not_after: cert.validity().not_after.timestamp(),
        }
    }
}

/// One loaded set of certificates.
pub(super) struct SniSet {
    entries: Vec<Entry>,
}

impl SniSet {
    pub(super) fn new(entries: Vec<Entry>) -> Self {
        SniSet { entries }
    }

    /// Exact names first, then `*.suffix` patterns, then the first
    /// certificate without names, then the first certificate.
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

    fn infos(&self) -> Vec<CertInfo> {
        self.entries
            .iter()
            .filter_map(|(_, k)| k.cert.first().map(CertInfo::of))
            .collect()
    }
}

/// The swappable certificate set of one TLS listener; rustls asks it for a
/// certificate on every handshake.
pub struct Certificates {
    set: ArcSwap<SniSet>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("certificates", &self.set.load().entries.len())
            .finish()
    }
}

impl Certificates {
    pub(super) fn new(set: SniSet) -> Self {
        Certificates {
            set: ArcSwap::from_pointee(set),
        }
    }

    /// The certificates served now.
    pub fn infos(&self) -> Vec<CertInfo> {
        self.set.load().infos()
    }

    /// Loads `tls`'s certificates again and, if every one loads, serves
    /// them from the next handshake on. On error the current set stays.
    pub fn reload(&self, tls: &config::Tls) -> Result<Vec<CertInfo>, TlsError> {
        let set = SniSet::new(load_entries(tls)?);
        let infos = set.infos();
        self.set.store(Arc::new(set));
        Ok(infos)
    }
}

/// Builds the acceptor for one TLS listener, and the handle through which
/// its certificates are replaced.
pub fn server_config(
    tls: &config::Tls,
) -> Result<(Arc<rustls::ServerConfig>, Arc<Certificates>), TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certificates = Arc::new(Certificates::new(SniSet::new(load_entries(tls)?)));
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(certificates.clone());
    server.alpn_protocols = tls
        .alpn
        .iter()
        .map(|a| a.id().as_bytes().to_vec())
        .collect();
    // Stateless session tickets (the state travels encrypted in the ticket,
    // under keys that rotate): resumption then works for any number of
    // clients, where rustls' default in-memory cache holds 256 sessions.
    // That matters most right after a drain, when many clients reconnect
    // at once. One ticket per handshake is enough for a WebSocket client,
    // which reconnects one connection at a time.
    server.ticketer = rustls::crypto::ring::Ticketer::new()?;
    server.send_tls13_tickets = 1;
    Ok((Arc::new(server), certificates))
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.set.load().pick(hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use super::*;
    use crate::edge::tls::generate_dev_cert;
    use crate::edge::tls::tests::{key_for, temp_dir};

    fn tls_of(cert: &Path, key: &Path) -> config::Tls {
        config::Tls {
            certificates: vec![config::Certificate {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                server_names: vec![],
                generate_if_missing: false,
            }],
            alpn: crate::config::defaults::ALPN.to_vec(),
        }
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
            alpn: crate::config::defaults::ALPN.to_vec(),
        })
        .unwrap()
        .0;
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
    fn sni_picks_exact_then_wildcard_then_default() {
        let d = temp_dir("sni");
        let (a, b, c) = (key_for(&d, "a"), key_for(&d, "b"), key_for(&d, "c"));
        let r = SniSet::new(vec![
            (vec![HostMatch::parse("*.example.com").unwrap()], a.clone()),
            (vec![], b.clone()),
            (
                vec![HostMatch::parse("api.example.com").unwrap()],
                c.clone(),
            ),
        ]);
        let is = |x: Option<Arc<CertifiedKey>>, y: &Arc<CertifiedKey>| Arc::ptr_eq(&x.unwrap(), y);
        assert!(is(r.pick(Some("API.example.com")), &c));
        assert!(is(r.pick(Some("www.example.com")), &a));
        assert!(is(r.pick(Some("other.org")), &b));
        assert!(is(r.pick(None), &b));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_reload_swaps_every_certificate_or_none() {
        let d = temp_dir("reload");
        let (cert, key) = (d.join("s.crt"), d.join("s.key"));
        generate_dev_cert(&cert, &key).unwrap();
        let (_, certs) = server_config(&tls_of(&cert, &key)).unwrap();
        let first = certs.infos();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].name, "localhost");
        assert!(first[0].not_after > 1_700_000_000, "{first:?}");

        generate_dev_cert(&cert, &key).unwrap();
        let second = certs.reload(&tls_of(&cert, &key)).unwrap();
        assert_ne!(
            second[0].serial, first[0].serial,
            "a new certificate is served"
        );
        assert_eq!(certs.infos(), second);

        // A key that belongs to another certificate: refused, nothing changes.
        let (other_cert, other_key) = (d.join("o.crt"), d.join("o.key"));
        generate_dev_cert(&other_cert, &other_key).unwrap();
        let err = certs.reload(&tls_of(&cert, &other_key)).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        std::fs::write(&cert, "not a certificate").unwrap();
        assert!(certs.reload(&tls_of(&cert, &key)).is_err());
        assert_eq!(certs.infos(), second, "the old certificate stays");
        let _ = std::fs::remove_dir_all(d);
    }
}
