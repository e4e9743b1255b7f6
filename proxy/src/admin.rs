//! The admin API, served on its own address (loopback by default) from the
//! control runtime. Every call needs `Authorization: Bearer <token>`; a
//! missing or wrong token gets 401 and changes nothing. The token comes
//! from `WSGATE_ADMIN_TOKEN` or `admin.token_file` (created with a random
//! token, mode 0600, if missing), is compared in constant time, and is never
//! logged.
//!
//! | method | path | does |
//! |---|---|---|
//! | GET | `/v1/status` | pools and backends: state, live connections, pending closes; last reload |
//! | POST | `/v1/pools/{pool}/backends/{id}/drain` | body `{"window":"30s","close_code":1012}`, both optional |
//! | POST | `/v1/pools/{pool}/backends/{id}/undrain` | cancel the closes not yet sent |
//! | PUT | `/v1/pools/{pool}/backends/{id}` | add: body `{"address":"host:port","weight":1}` |
//! | DELETE | `/v1/pools/{pool}/backends/{id}` | remove: drain, then forget |
//! | POST | `/v1/reload` | re-read the config file |
//! | GET | `/metrics` | Prometheus text format |

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use crate::config::{Admin, Config, Rebalance};
use crate::control::{Control, ControlError, ReloadOutcome};
use crate::registry::{BackendKey, Registry};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("the admin API needs a token: set WSGATE_ADMIN_TOKEN or admin.token_file")]
    NoToken,
    #[error("{path}: {message}")]
    TokenFile { path: String, message: String },
    #[error("admin API: cannot listen on {address}: {source}")]
    Bind {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub pools: Vec<PoolStatus>,
    pub reload: Option<ReloadOutcome>,
    pub shutting_down: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolStatus {
    pub name: String,
    pub rebalance: String,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendStatus {
    pub id: String,
    /// None for a removed backend that still has connections.
    pub address: Option<String>,
    pub weight: Option<u32>,
    /// active | draining | down | removed
    pub state: String,
    pub connections: usize,
    pub pending_closes: usize,
}

impl Status {
    /// `state_of` gives a backend's state name and pending closes.
    pub fn build(
        config: &Config,
        registry: &Registry,
        state_of: impl Fn(&BackendKey) -> (&'static str, usize),
        reload: Option<ReloadOutcome>,
        shutting_down: bool,
    ) -> Status {
        let counts = registry.counts();
        let pools = config
            .pools
            .iter()
            .map(|p| {
                let mut backends: Vec<BackendStatus> = p
                    .backends
                    .iter()
                    .map(|b| {
                        let key = BackendKey::new(&p.name, &b.id);
                        let (state, pending) = state_of(&key);
                        BackendStatus {
                            id: b.id.clone(),
                            address: Some(b.address.clone()),
                            weight: Some(b.weight),
                            state: state.to_string(),
                            connections: registry.count(&key),
                            pending_closes: pending,
                        }
                    })
                    .collect();
                for (key, n) in &counts {
                    let listed = backends.iter().any(|b| b.id == key.id);
                    if key.pool == p.name && *n > 0 && !listed {
                        let (state, pending) = state_of(key);
                        backends.push(BackendStatus {
                            id: key.id.clone(),
                            address: None,
                            weight: None,
                            state: state.to_string(),
                            connections: *n,
                            pending_closes: pending,
                        });
                    }
                }
                PoolStatus {
                    name: p.name.clone(),
                    rebalance: match p.rebalance {
                        Rebalance::Keep => "keep",
                        Rebalance::Migrate => "migrate",
                    }
                    .to_string(),
                    backends,
                }
            })
            .collect();
        Status {
            pools,
            reload,
            shutting_down,
        }
    }
}

/// The token from the environment or the token file, creating the file
/// with a fresh random token when it does not exist.
pub fn load_token(admin: &Admin) -> Result<String, AdminError> {
    if let Ok(t) = std::env::var("WSGATE_ADMIN_TOKEN") {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    let path = admin.token_file.as_deref().ok_or(AdminError::NoToken)?;
    let err = |message: String| AdminError::TokenFile {
        path: path.display().to_string(),
        message,
    };
    if !path.exists() {
        let token: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        write_private(path, &token).map_err(|e| err(format!("cannot create token file: {e}")))?;
        tracing::warn!(path = %path.display(), "created a new admin token file");
        return Ok(token);
    }
    let token = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(err("token file is empty".into()));
    }
    Ok(token)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{contents}")
}

/// Compares without an early exit, so response timing does not reveal how
/// much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves the admin API until the listener fails. Runs on the control runtime.
pub async fn serve(listener: tokio::net::TcpListener, control: Arc<Control>, token: String) {
    let token: Arc<str> = token.into();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                continue;
            }
        };
        let control = control.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let control = control.clone();
                let token = token.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&control, &token, req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "admin connection error");
            }
        });
    }
}

async fn handle(
    control: &Arc<Control>,
    token: &str,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
        tracing::warn!(method = %req.method(), path = req.uri().path(), "admin call without a valid token");
        return json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({"error": "missing or wrong bearer token"}),
        );
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return json(
                StatusCode::PAYLOAD_TOO_LARGE,
                &serde_json::json!({"error": "body over 64 KiB"}),
            )
        }
    };
    let result = route(control, &method, &segments, &body).await;
    match result {
        Ok((status, value)) => json(status, &value),
        Err(e) => {
            let status = match &e {
                ControlError::UnknownPool(_) | ControlError::UnknownBackend(_) => {
                    StatusCode::NOT_FOUND
                }
                ControlError::AlreadyExists(_) | ControlError::NoConfigFile => StatusCode::CONFLICT,
                ControlError::BadRequest(_) => StatusCode::BAD_REQUEST,
                ControlError::InvalidConfig(_) => StatusCode::UNPROCESSABLE_ENTITY,
            };
            json(status, &serde_json::json!({"error": e.to_string()}))
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    window: Option<String>,
    close_code: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    address: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

fn parse<'a, T: Deserialize<'a> + Default>(body: &'a [u8]) -> Result<T, ControlError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ControlError::BadRequest(format!("body: {e}")))
}

async fn route(
    control: &Arc<Control>,
    method: &Method,
    seg: &[&str],
    body: &[u8],
) -> Result<(StatusCode, serde_json::Value), ControlError> {
    let value = |v: serde_json::Value| Ok((StatusCode::OK, v));
    match (method, seg) {
        (&Method::GET, ["v1", "status"]) => {
            value(serde_json::to_value(control.status()).unwrap_or_default())
        }
        (&Method::GET, ["metrics"]) => value(serde_json::Value::String(metrics(control))),
        (&Method::POST, ["v1", "reload"]) => {
            let outcome = control.reload_and_restart_health()?;
            value(serde_json::to_value(outcome).unwrap_or_default())
        }
        (&Method::POST, ["v1", "pools", pool, "backends", id, "drain"]) => {
            let b: DrainBody = parse(body)?;
            let window = b
                .window
                .as_deref()
                .map(crate::config::units::parse_duration)
                .transpose()
                .map_err(ControlError::BadRequest)?;
            let n = control.drain(&BackendKey::new(pool, id), window, b.close_code)?;
            value(serde_json::json!({"backend": format!("{pool}/{id}"), "closing": n}))
        }
        (&Method::POST, ["v1", "pools", pool, "backends", id, "undrain"]) => {
            let n = control.undrain(&BackendKey::new(pool, id))?;
            value(serde_json::json!({"backend": format!("{pool}/{id}"), "cancelled": n}))
        }
        (&Method::PUT, ["v1", "pools", pool, "backends", id]) => {
            let b: AddBody = serde_json::from_slice(body)
                .map_err(|e| ControlError::BadRequest(format!("body: {e}")))?;
            control.add_backend(&BackendKey::new(pool, id), &b.address, b.weight)?;
            Ok((
                StatusCode::CREATED,
                serde_json::json!({"backend": format!("{pool}/{id}")}),
            ))
        }
        (&Method::DELETE, ["v1", "pools", pool, "backends", id]) => {
            let n = control.remove_backend(&BackendKey::new(pool, id))?;
            value(serde_json::json!({"backend": format!("{pool}/{id}"), "closing": n}))
        }
        _ => Ok((
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "no such endpoint; see /v1/status"}),
        )),
    }
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    // /metrics is plain text: it travels as a JSON string internally.
    let (body, content_type) = match value {
        serde_json::Value::String(text) if status == StatusCode::OK => {
            (text.clone(), "text/plain; version=0.0.4")
        }
        v => (format!("{v}\n"), "application/json"),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes one gauge family with a sample per backend.
fn backend_gauge(
    out: &mut String,
    status: &Status,
    name: &str,
    help: &str,
    value: impl Fn(&BackendStatus) -> String,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for p in &status.pools {
        for b in &p.backends {
            let _ = writeln!(
                out,
                "{name}{{pool=\"{}\",backend=\"{}\",state=\"{}\"}} {}",
                label(&p.name),
                label(&b.id),
                b.state,
                value(b)
            );
        }
    }
}

/// Prometheus text exposition.
pub fn metrics(control: &Control) -> String {
    let status = control.status();
    let mut out = String::new();
    backend_gauge(
        &mut out,
        &status,
        "wsgate_backend_connections",
        "Live proxied WebSocket connections.",
        |b| b.connections.to_string(),
    );
    backend_gauge(
        &mut out,
        &status,
        "wsgate_backend_pending_closes",
        "Closes scheduled by a drain and not yet sent.",
        |b| b.pending_closes.to_string(),
    );
    backend_gauge(
        &mut out,
        &status,
        "wsgate_backend_up",
        "1 if the backend takes new connections.",
        |b| u8::from(b.state == "active").to_string(),
    );
    let c = &control.registry.closes;
    let _ = writeln!(
        out,
        "# HELP wsgate_closes_total Sessions wsgate closed itself, by cause."
    );
    let _ = writeln!(out, "# TYPE wsgate_closes_total counter");
    for (cause, n) in [
        ("backend_gone", &c.backend_gone),
        ("client_gone", &c.client_gone),
        ("idle", &c.idle),
        ("shutdown", &c.shutdown),
        ("drain", &c.drain),
        ("protocol", &c.protocol),
    ] {
        let _ = writeln!(
            out,
            "wsgate_closes_total{{cause=\"{cause}\"}} {}",
            n.load(Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP wsgate_config_reloads_total Config reloads by result."
    );
    let _ = writeln!(out, "# TYPE wsgate_config_reloads_total counter");
    let _ = writeln!(
        out,
        "wsgate_config_reloads_total{{result=\"ok\"}} {}",
        control.reloads_ok.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "wsgate_config_reloads_total{{result=\"error\"}} {}",
        control.reloads_failed.load(Relaxed)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret1"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
