//! Certificate rotation, as the control task sees it: the certificate
//! handle of each TLS listener (`edge::certs`), what each serves now, and
//! the last error of each. A reload loads every TLS listener's
//! certificates again; a listener whose files fail keeps serving its old
//! ones, and the error stays in `status` until a later reload succeeds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::api::CertificateStatus;
use crate::config::Config;
use crate::edge::certs::{CertInfo, Certificates};

/// `status` warns about a certificate that expires sooner than this.
pub const WARN_DAYS: i64 = 14;

#[derive(Default)]
struct Served {
    infos: Vec<CertInfo>,
    error: Option<String>,
}

/// The certificate handles of the TLS listeners, by listener name.
#[derive(Default)]
pub(crate) struct CertificateBook {
    handles: BTreeMap<String, Arc<Certificates>>,
    served: BTreeMap<String, Served>,
}

impl CertificateBook {
    pub fn new(handles: Vec<(String, Arc<Certificates>)>) -> Self {
        let served = handles
            .iter()
            .map(|(name, h)| {
                (
                    name.clone(),
                    Served {
                        infos: h.infos(),
                        error: None,
                    },
                )
            })
            .collect();
        CertificateBook {
            handles: handles.into_iter().collect(),
            served,
        }
    }

    /// A listener a reload started: its certificates rotate from now on.
    pub fn insert(&mut self, listener: &str, handle: Arc<Certificates>) {
        self.served.insert(
            listener.to_string(),
            Served {
                infos: handle.infos(),
                error: None,
            },
        );
        self.handles.insert(listener.to_string(), handle);
    }

    /// A listener a reload stopped: no longer served, watched or shown.
    pub fn remove(&mut self, listener: &str) {
        self.handles.remove(listener);
        self.served.remove(listener);
    }

    /// Loads again the certificates of every TLS listener of `config` that
    /// is running; returns one line per listener whose files failed.
    pub fn reload(&mut self, config: &Config) -> Vec<String> {
        let mut errors = Vec::new();
        for l in &config.listeners {
            let (Some(tls), Some(handle)) = (&l.tls, self.handles.get(&l.name)) else {
                continue;
            };
            let served = self.served.entry(l.name.clone()).or_default();
            match handle.reload(tls) {
                Ok(infos) => {
                    tracing::info!(listener = %l.name, certificates = infos.len(), "certificates loaded");
                    *served = Served { infos, error: None };
                }
                Err(e) => {
                    let line = format!(
                        "listener `{}`: {e} (still serving the previous certificates)",
                        l.name
                    );
                    tracing::error!(listener = %l.name, error = %e, "certificates rejected; the previous ones stay");
                    served.error = Some(e.to_string());
                    errors.push(line);
                }
            }
        }
        errors
    }

    /// Every served certificate, with its expiry counted from `now_unix`.
    pub fn status(&self, now_unix: i64) -> Vec<CertificateStatus> {
        let mut out = Vec::new();
        for (listener, served) in &self.served {
            for info in &served.infos {
                out.push(CertificateStatus {
                    listener: listener.clone(),
                    name: info.name.clone(),
                    serial: info.serial.clone(),
                    not_after_unix: info.not_after,
                    days_left: (info.not_after - now_unix).div_euclid(86_400),
                    error: served.error.clone(),
                });
            }
        }
        out
    }

    /// The certificate and key files of `config`'s running TLS listeners,
    /// which the file watcher polls like the config file.
    pub fn files(&self, config: &Config) -> Vec<PathBuf> {
        config
            .listeners
            .iter()
            .filter(|l| self.handles.contains_key(&l.name))
            .filter_map(|l| l.tls.as_ref())
            .flat_map(|t| t.certificates.iter())
            .flat_map(|c| [c.cert.clone(), c.key.clone()])
            .collect()
    }
}
