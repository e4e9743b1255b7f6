//! TLS termination's files: loading a listener's certificates and keys, and
//! making self-signed development certificates. The rustls config that
//! serves them is built in `certs`.
//!
//! TLS 1.2 and 1.3 only, with rustls and the `ring` provider. ALPN offers
//! `http/1.1` (HTTP/2 with RFC 8441 comes later). Certificates are chosen
//! by SNI and can be replaced while the listener runs (`certs`); a bad file
//! is an error naming the file, never a panic.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::config::{self, HostMatch};

/// A certificate with the SNI names it answers for (none: the default).
pub(super) type Entry = (Vec<HostMatch>, Arc<CertifiedKey>);

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
    /// Usually a read-only directory (a container's read-only root file
    /// system): the message says which directory must be writable.
    #[error("cannot write development certificate {path}: {source}; {}", writable_hint(.path))]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate development certificate: {0}")]
    Generate(String),
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What to do about a file wsgate cannot create: its directory must be
/// writable by wsgate's user (in the container image, a volume at
/// `/var/lib/wsgate`), or the file must be provided.
pub fn writable_hint(path: &Path) -> String {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    format!(
        "make {} writable by wsgate's user (mount a writable volume there), or provide the file",
        dir.display()
    )
}

/// Loads every certificate of a TLS listener with the SNI names it answers
/// for (creating development certificates where asked to), or the first
/// error.
pub(super) fn load_entries(tls: &config::Tls) -> Result<Vec<Entry>, TlsError> {
    let provider = rustls::crypto::ring::default_provider();
    let mut entries = Vec::new();
    for c in &tls.certificates {
        if c.generate_if_missing && !(c.cert.exists() && c.key.exists()) {
            generate_dev_cert(&c.cert, &c.key)?;
            tracing::warn!(cert = %c.cert.display(), "generated a self-signed development certificate");
        }
        let key = load_certified_key(&provider, &c.cert, &c.key)?;
        entries.push((c.server_names.clone(), key));
    }
    Ok(entries)
}

pub(super) fn load_certified_key(
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::edge) fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wsgate-tls-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    /// A freshly generated development certificate `dir/tag.crt`, loaded.
    pub(in crate::edge) fn key_for(dir: &Path, tag: &str) -> Arc<CertifiedKey> {
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
