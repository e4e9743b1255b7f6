//! The client side of the admin API, used by `wsgate status`, `drain`,
//! `undrain`, `backend add|remove` and `reload`.
//!
//! Where to connect and which token to present come from flags or the
//! environment, else from the config file's `admin` section. That section
//! is read leniently (as plain YAML, not validated), so that `wsgate reload`
//! still reaches a running proxy after someone saved an invalid config,
//! which is exactly when the operator needs to see the error.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::control::api::{DiscoveryStatus, ErrorReply, Status};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no admin address: pass --admin HOST:PORT, set WSGATE_ADMIN, or add `admin:` to {0}")]
    NoAddress(String),
    #[error(
        "no admin token: pass --token, set WSGATE_ADMIN_TOKEN, or set admin.token_file in {0}"
    )]
    NoToken(String),
    #[error("cannot read token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach the admin API at {address}: {message}")]
    Unreachable {
        address: SocketAddr,
        message: String,
    },
    /// The API answered with an error status; `message` is its explanation.
    #[error("{message}")]
    Api { status: StatusCode, message: String },
    #[error("unexpected answer from the admin API: {0}")]
    BadAnswer(String),
}

pub struct AdminClient {
    pub address: SocketAddr,
    token: String,
}

/// The admin section of a config file, read without validating the rest.
fn admin_section(config: &Path) -> (Option<String>, Option<PathBuf>) {
    let Ok(text) = std::fs::read_to_string(config) else {
        return (None, None);
    };
    let Ok(doc) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text) else {
        return (None, None);
    };
    let admin = &doc["admin"];
    let address = admin["address"].as_str().map(str::to_string);
    let base = config.parent().unwrap_or(Path::new("."));
    let token_file = admin["token_file"].as_str().map(|t| base.join(t));
    (address, token_file)
}

impl AdminClient {
    /// `address` and `token` override what the config says.
    pub fn resolve(
        config: &Path,
        address: Option<&str>,
        token: Option<&str>,
    ) -> Result<AdminClient, ClientError> {
        let (file_address, token_file) = admin_section(config);
        let shown = config.display().to_string();
        let address = address
            .map(str::to_string)
            .or(file_address)
            .ok_or_else(|| ClientError::NoAddress(shown.clone()))?;
        let address: SocketAddr = address
            .trim_start_matches("http://")
            .parse()
            .map_err(|_| ClientError::NoAddress(shown.clone()))?;
        let token = match token.filter(|t| !t.is_empty()) {
            Some(t) => t.to_string(),
            None => {
                let path = token_file.ok_or(ClientError::NoToken(shown))?;
                std::fs::read_to_string(&path)
                    .map_err(|source| ClientError::TokenFile { path, source })?
                    .trim()
                    .to_string()
            }
        };
        Ok(AdminClient { address, token })
    }

    /// One request with a JSON body; the answer parsed as `T`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let payload = match body {
            Some(b) => {
                serde_json::to_string(b).map_err(|e| ClientError::BadAnswer(e.to_string()))?
            }
            None => String::new(),
        };
        let text = self.request(method, path, payload).await?;
        serde_json::from_str(&text).map_err(|e| ClientError::BadAnswer(format!("{e}: {text}")))
    }

    /// One request without a body; the answer as text (`status --json`).
    pub async fn call_text(&self, method: Method, path: &str) -> Result<String, ClientError> {
        self.request(method, path, String::new()).await
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        payload: String,
    ) -> Result<String, ClientError> {
        let unreachable = |message: String| ClientError::Unreachable {
            address: self.address,
            message,
        };
        let step = Duration::from_secs(10);
        let tcp = tokio::time::timeout(step, tokio::net::TcpStream::connect(self.address))
            .await
            .map_err(|_| unreachable("connect timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.address.to_string())
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        let resp = tokio::time::timeout(step, sender.send_request(req))
            .await
            .map_err(|_| unreachable("no answer within 10 s".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status();
        let bytes = tokio::time::timeout(step, resp.into_body().collect())
            .await
            .map_err(|_| unreachable("answer stalled".into()))?
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if status.is_success() {
            Ok(text)
        } else {
            let message = serde_json::from_str::<ErrorReply>(&text)
                .map_or_else(|_| text.trim().to_string(), |e| e.error);
            Err(ClientError::Api { status, message })
        }
    }

    pub async fn status(&self) -> Result<Status, ClientError> {
        self.call(Method::GET, "/v1/status", None::<&()>).await
    }

    /// Waits until `pool/id` has no connections left, showing progress.
    /// Returns false on timeout.
    pub async fn wait_empty(
        &self,
        pool: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<bool, ClientError> {
        let deadline = Instant::now() + timeout;
        let tty = std::io::stderr().is_terminal();
        let mut first: Option<usize> = None;
        let mut last_printed = None;
        loop {
            let status = self.status().await?;
            let left = status
                .pools
                .iter()
                .filter(|p| p.name == pool)
                .flat_map(|p| &p.backends)
                .find(|b| b.id == id)
                .map_or(0, |b| b.connections);
            let total = *first.get_or_insert(left);
            if tty {
                eprint!("\r{}", progress_line(pool, id, left, total));
            } else if last_printed != Some(left) {
                eprintln!("{pool}/{id}: {left} connections left");
                last_printed = Some(left);
            }
            if left == 0 {
                if tty {
                    eprintln!();
                }
                return Ok(true);
            }
            if Instant::now() >= deadline {
                if tty {
                    eprintln!();
                }
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `chat/b2 [##########----------] 150/300 closed`
pub fn progress_line(pool: &str, id: &str, left: usize, total: usize) -> String {
    let done = total.saturating_sub(left);
    let width = 30;
    let filled = (done * width).checked_div(total).unwrap_or(width);
    format!(
        "{pool}/{id} [{}{}] {done}/{total} closed",
        "#".repeat(filled),
        "-".repeat(width - filled)
    )
}

/// Renders status as an aligned table.
pub fn status_table(status: &Status) -> String {
    let mut rows = vec![[
        "POOL".to_string(),
        "BACKEND".to_string(),
        "STATE".to_string(),
        "CONNS".to_string(),
        "PENDING".to_string(),
        "WEIGHT".to_string(),
        "ADDRESS".to_string(),
    ]];
    for p in &status.pools {
        for b in &p.backends {
            rows.push([
                p.name.clone(),
                b.id.clone(),
                b.state.to_string(),
                b.connections.to_string(),
                b.pending_closes.to_string(),
                b.weight.map_or("-".into(), |w| w.to_string()),
                b.address.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for p in &status.pools {
        if let Some(d) = &p.discovery {
            out.push_str(&discovery_line(&p.name, d, now));
            out.push('\n');
        }
    }
    if let Some(reload) = &status.reload {
        if !reload.ok {
            out.push_str(&format!(
                "last reload FAILED (still serving the previous config):\n{}\n",
                reload.error.clone().unwrap_or_default()
            ));
        }
    }
    for c in &status.certificates {
        let warn = if c.days_left < crate::control::certificates::WARN_DAYS {
            "  WARNING: expires soon"
        } else {
            ""
        };
        out.push_str(&format!(
            "certificate {} {} serial {}: {} days left{warn}\n",
            c.listener, c.name, c.serial, c.days_left
        ));
        if let Some(e) = &c.error {
            out.push_str(&format!(
                "  last reload of listener {}'s certificates FAILED (still serving this one): {e}\n",
                c.listener
            ));
        }
    }
    if status.shutting_down {
        out.push_str("shutting down\n");
    }
    out
}

/// `discovery chat (a chat.ns.svc): 3 backends, last answer 2s ago, 0 failures`,
/// or what is failing and that the pool keeps its backends.
pub fn discovery_line(pool: &str, d: &DiscoveryStatus, now_unix: u64) -> String {
    let head = format!("discovery {pool} ({} {})", d.kind, d.dns);
    let last = d.last_success_unix.map_or("never".to_string(), |t| {
        format!("{}s ago", now_unix.saturating_sub(t))
    });
    match &d.error {
        None if d.last_success_unix.is_some() => format!(
            "{head}: {} backends, last answer {last}, {} failures in all",
            d.backends, d.failures_total
        ),
        None => format!("{head}: no answer yet"),
        Some(e) => format!(
            "{head}: FAILING ({} in a row, {} in all; last answer {last}), keeping the last good {} backends: {e}",
            d.consecutive_failures, d.failures_total, d.backends
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_line_says_whether_dns_works() {
        let mut d = DiscoveryStatus {
            dns: "chat.test".into(),
            kind: "a".into(),
            backends: 3,
            last_success_unix: Some(100),
            error: None,
            failures_total: 1,
            consecutive_failures: 0,
        };
        assert_eq!(
            discovery_line("chat", &d, 102),
            "discovery chat (a chat.test): 3 backends, last answer 2s ago, 1 failures in all"
        );
        d.error = Some("DNS lookup of `chat.test` failed: request timed out".into());
        d.consecutive_failures = 2;
        d.failures_total = 3;
        assert_eq!(
            discovery_line("chat", &d, 110),
            "discovery chat (a chat.test): FAILING (2 in a row, 3 in all; last answer 10s ago), keeping the last good 3 backends: DNS lookup of `chat.test` failed: request timed out"
        );
        d.last_success_unix = None;
        d.error = None;
        assert_eq!(
            discovery_line("chat", &d, 110),
            "discovery chat (a chat.test): no answer yet"
        );
    }

    #[test]
    fn progress_bar_fills() {
        assert_eq!(
            progress_line("chat", "b2", 300, 300),
            format!("chat/b2 [{}] 0/300 closed", "-".repeat(30))
        );
        assert_eq!(
            progress_line("chat", "b2", 0, 300),
            format!("chat/b2 [{}] 300/300 closed", "#".repeat(30))
        );
        assert_eq!(
            progress_line("chat", "b2", 0, 0),
            format!("chat/b2 [{}] 0/0 closed", "#".repeat(30))
        );
    }

    #[test]
    fn admin_section_is_read_from_an_invalid_config() {
        let dir = std::env::temp_dir().join(format!("wsgate-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("w.yaml");
        std::fs::write(
            &file,
            "admin: { address: \"127.0.0.1:9900\", token_file: t.token }\nbogus_key: 1\n",
        )
        .unwrap();
        std::fs::write(dir.join("t.token"), "abc\n").unwrap();
        let c = AdminClient::resolve(&file, None, None).unwrap();
        assert_eq!(c.address, "127.0.0.1:9900".parse().unwrap());
        assert_eq!(c.token, "abc");
        let c = AdminClient::resolve(&file, Some("127.0.0.1:1"), Some("x")).unwrap();
        assert_eq!((c.address.port(), c.token.as_str()), (1, "x"));
        std::fs::write(&file, "listeners: []\n").unwrap();
        assert!(matches!(
            AdminClient::resolve(&file, None, None),
            Err(ClientError::NoAddress(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
