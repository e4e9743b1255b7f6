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

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::api::{AddRequest, Added, Closing, DrainRequest, ErrorReply, Undrained};
use super::{metrics, ControlError, ControlHandle};
use crate::config::units::parse_duration;
use crate::config::Admin;
use crate::routing::BackendKey;

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

/// Serves the admin API until the listener fails. Runs on the control
/// runtime; every call becomes a command to the control task.
pub async fn serve(listener: tokio::net::TcpListener, control: ControlHandle, token: String) {
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
                async move {
                    let reply = handle(&control, &token, req).await;
                    Ok::<_, std::convert::Infallible>(reply.into_response())
                }
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

/// An answer of the admin API.
enum Reply {
    Json(StatusCode, String),
    /// Prometheus text.
    Metrics(String),
}

impl Reply {
    fn json(status: StatusCode, body: &impl Serialize) -> Reply {
        // Our own plain structs always serialise; the fallback is never sent.
        let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".to_string());
        Reply::Json(status, text)
    }

    fn error(status: StatusCode, message: impl Into<String>) -> Reply {
        Reply::json(
            status,
            &ErrorReply {
                error: message.into(),
            },
        )
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let (status, body, content_type) = match self {
            Reply::Json(status, text) => (status, format!("{text}\n"), "application/json"),
            Reply::Metrics(text) => (StatusCode::OK, text, "text/plain; version=0.0.4"),
        };
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        resp
    }
}

fn error_status(e: &ControlError) -> StatusCode {
    match e {
        ControlError::UnknownPool(_) | ControlError::UnknownBackend(_) => StatusCode::NOT_FOUND,
        ControlError::AlreadyExists(_) | ControlError::NoConfigFile => StatusCode::CONFLICT,
        ControlError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ControlError::InvalidConfig(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ControlError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn handle(control: &ControlHandle, token: &str, req: Request<Incoming>) -> Reply {
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
        tracing::warn!(method = %req.method(), path = req.uri().path(), "admin call without a valid token");
        return Reply::error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Reply::error(StatusCode::PAYLOAD_TOO_LARGE, "body over 64 KiB"),
    };
    match route(control, &method, &segments, &body).await {
        Ok(reply) => reply,
        Err(e) => Reply::error(error_status(&e), e.to_string()),
    }
}

/// An empty body means every field's default.
fn parse<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ControlError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_required(body)
}

fn parse_required<T: DeserializeOwned>(body: &[u8]) -> Result<T, ControlError> {
    serde_json::from_slice(body).map_err(|e| ControlError::BadRequest(format!("body: {e}")))
}

fn ok(body: &impl Serialize) -> Result<Reply, ControlError> {
    Ok(Reply::json(StatusCode::OK, body))
}

async fn route(
    control: &ControlHandle,
    method: &Method,
    seg: &[&str],
    body: &[u8],
) -> Result<Reply, ControlError> {
    match (method, seg) {
        (&Method::GET, ["v1", "status"]) => ok(&control.status().await?),
        (&Method::GET, ["metrics"]) => {
            Ok(Reply::Metrics(metrics::render(&control.metrics().await?)))
        }
        (&Method::POST, ["v1", "reload"]) => ok(&control.reload().await?),
        (&Method::POST, ["v1", "pools", pool, "backends", id, "drain"]) => {
            let b: DrainRequest = parse(body)?;
            let window = b
                .window
                .as_deref()
                .map(parse_duration)
                .transpose()
                .map_err(ControlError::BadRequest)?;
            let backend = BackendKey::new(pool, id);
            let closing = control.drain(backend.clone(), window, b.close_code).await?;
            ok(&Closing {
                backend: backend.to_string(),
                closing,
            })
        }
        (&Method::POST, ["v1", "pools", pool, "backends", id, "undrain"]) => {
            let backend = BackendKey::new(pool, id);
            let cancelled = control.undrain(backend.clone()).await?;
            ok(&Undrained {
                backend: backend.to_string(),
                cancelled,
            })
        }
        (&Method::PUT, ["v1", "pools", pool, "backends", id]) => {
            let b: AddRequest = parse_required(body)?;
            let backend = BackendKey::new(pool, id);
            control
                .add_backend(backend.clone(), b.address, b.weight)
                .await?;
            Ok(Reply::json(
                StatusCode::CREATED,
                &Added {
                    backend: backend.to_string(),
                },
            ))
        }
        (&Method::DELETE, ["v1", "pools", pool, "backends", id]) => {
            let backend = BackendKey::new(pool, id);
            let closing = control.remove_backend(backend.clone()).await?;
            ok(&Closing {
                backend: backend.to_string(),
                closing,
            })
        }
        _ => Ok(Reply::error(
            StatusCode::NOT_FOUND,
            "no such endpoint; see /v1/status",
        )),
    }
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
}
