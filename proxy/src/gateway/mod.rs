//! Per-request handling: route, check the WebSocket handshake, extract the
//! sticky key, pick the backend, forward, then either relay the response or
//! hand both upgrades to the edge, which splices them into a tunnel.
//!
//! Every failure becomes an HTTP answer with a one-line reason (400, 403,
//! 404, 426, 502, 503, 504); nothing a client sends can take down anything
//! but its own request. The gateway reads routing state and reports
//! backend failures (`crate::routing`); it never waits for the control
//! plane.
//!
//! | module | owns | I/O |
//! |---|---|---|
//! | this one | one request from route to response or upgrade | network |
//! | [`handshake`] | is this an upgrade attempt, and is it a valid one | none |
//! | [`upstream`] | backend connect and request with timeouts, 502/504 classification | network |

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tracing::Instrument;

pub(crate) mod handshake;
pub(crate) mod upstream;

use crate::config::{Config, OnMissingKey};
use crate::routing::registry::BackendConns;
use crate::routing::{ring, route, sticky, Report, Routing};
use crate::tunnel::TunnelConfig;
use upstream::UpstreamTimeouts;

pub type Body = BoxBody<Bytes, hyper::Error>;

/// What the gateway knows about the client connection a request came on.
#[derive(Debug)]
pub struct ClientInfo {
    pub addr: SocketAddr,
    pub tls: bool,
    /// A request has arrived on this connection (see `server` on shutdown).
    pub request_seen: AtomicBool,
}

impl ClientInfo {
    pub fn new(addr: SocketAddr, tls: bool) -> Self {
        ClientInfo {
            addr,
            tls,
            request_seen: AtomicBool::new(false),
        }
    }
}

/// A completed WebSocket handshake, for the edge to splice once both
/// upgrades finish.
pub struct Upgrade {
    pub client: OnUpgrade,
    pub backend: OnUpgrade,
    pub tunnel: TunnelStart,
    /// The request's span, for the tunnel's log lines.
    pub span: tracing::Span,
}

/// What a tunnel needs besides its two connections.
pub struct TunnelStart {
    pub routing: Arc<Routing>,
    /// The backend's registry entry, from the snapshot that routed it.
    pub conns: Arc<BackendConns>,
    pub key_hash: u64,
    pub cfg: TunnelConfig,
}

/// Shared by every connection of the process.
pub struct Gateway {
    routing: Arc<Routing>,
}

impl Gateway {
    pub(crate) fn new(routing: Arc<Routing>) -> Self {
        Gateway { routing }
    }

    /// The response for `req`, and for a WebSocket the upgrade to splice.
    pub async fn handle(
        &self,
        client: &ClientInfo,
        req: Request<Incoming>,
    ) -> (Response<Body>, Option<Upgrade>) {
        match self.route(client, req).await {
            Ok(routed) => routed,
            Err(refusal) => (refusal.into_response(), None),
        }
    }

    async fn route(
        &self,
        client: &ClientInfo,
        mut req: Request<Incoming>,
    ) -> Result<(Response<Body>, Option<Upgrade>), Refusal> {
        let snapshot = self.routing.snapshot.load();
        let config = &snapshot.config;
        let host = request_host(&req)?;
        let path = req.uri().path();
        let route_index = route::find(&config.routes, &host, path).ok_or_else(|| {
            Refusal::new(StatusCode::NOT_FOUND, "no route for this host and path")
        })?;
        let route = &config.routes[route_index];

        let is_ws = handshake::is_upgrade_attempt(req.headers());
        if is_ws {
            handshake::validate(req.method(), req.version(), req.headers()).map_err(|e| {
                Refusal {
                    status: e.status(),
                    reason: e.to_string(),
                    version_hint: e == handshake::HandshakeError::UnsupportedVersion,
                }
            })?;
            check_origin(route.allowed_origins.as_deref(), req.headers())?;
        }

        let key = match sticky::extract(&route.sticky_key, req.uri().query(), req.headers()) {
            Some(key) => key,
            None if route.on_missing_key == OnMissingKey::Reject => {
                let tried: Vec<String> = route.sticky_key.iter().map(ToString::to_string).collect();
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    format!("missing sticky key (tried {})", tried.join(", ")),
                ));
            }
            None => client.addr.ip().to_string().into_bytes(),
        };
        let key_hash = ring::key_hash(&key);
        let choice = snapshot
            .choose(route.pool, key_hash)
            .map_err(|e| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        let backend = choice.backend;
        let span = tracing::debug_span!(
            "request",
            route = route_index,
            backend = %backend.id,
            key_hash = format_args!("{key_hash:016x}"),
            ws = is_ws,
        );
        tracing::debug!(parent: &span, method = %req.method(), path, "routed");

        let client_upgrade = is_ws.then(|| hyper::upgrade::on(&mut req));
        // Validated above: an upgrade attempt has exactly one key.
        let ws_key = req.headers().get(handshake::SEC_WEBSOCKET_KEY).cloned();
        let upstream_req = forward_request(req, client, &host, is_ws);
        let timeouts = UpstreamTimeouts {
            connect: config.timeouts.backend_connect,
            response: config.timeouts.backend_response,
        };
        let answered = upstream::send(&backend.address, upstream_req, timeouts)
            .instrument(span.clone())
            .await
            .map_err(|e| Refusal::new(e.status(), e.to_string()))
            .and_then(|resp| match (&ws_key, resp.status()) {
                (Some(key), StatusCode::SWITCHING_PROTOCOLS) if is_ws => {
                    handshake::check_backend_101(key.as_bytes(), resp.headers())
                        .map(|()| resp)
                        .map_err(|e| Refusal::new(StatusCode::BAD_GATEWAY, e.to_string()))
                }
                _ => Ok(resp),
            });
        let mut resp = match answered {
            Ok(resp) => {
                choice.conns.passive_success();
                resp
            }
            Err(refusal) => {
                tracing::warn!(parent: &span, error = %refusal.reason, "backend request failed");
                let consecutive = choice.conns.passive_failure();
                self.routing.reports.send(Report::PassiveFailure {
                    backend: choice.conns.key().clone(),
                    consecutive,
                });
                return Err(refusal);
            }
        };

        match client_upgrade {
            Some(client) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let upgrade = Upgrade {
                    client,
                    backend: hyper::upgrade::on(&mut resp),
                    tunnel: TunnelStart {
                        routing: self.routing.clone(),
                        conns: choice.conns.clone(),
                        key_hash,
                        cfg: tunnel_config(config),
                    },
                    span,
                };
                let (parts, _) = resp.into_parts();
                Ok((Response::from_parts(parts, empty()), Some(upgrade)))
            }
            _ => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Ok((Response::from_parts(parts, body.boxed()), None))
            }
        }
    }
}

fn tunnel_config(config: &Config) -> TunnelConfig {
    TunnelConfig {
        idle: config.timeouts.idle,
        close_timeout: config.timeouts.close,
        max_message_bytes: config.limits.max_message_bytes,
    }
}

/// Host from the absolute URI or the Host header, without port, lower-case.
/// An absolute-form URI whose host differs from the Host header is refused:
/// wsgate would route on one name while the backend (which gets the Host
/// header) serves the other.
fn request_host<B>(req: &Request<B>) -> Result<String, Refusal> {
    let header = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(route::normalize_host);
    match (req.uri().host().map(route::normalize_host), header) {
        (Some(target), Some(header)) if target != header => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "the request target's host differs from the Host header",
        )),
        (Some(host), _) | (None, Some(host)) => Ok(host),
        (None, None) => Ok(String::new()),
    }
}

fn check_origin(allowed: Option<&[String]>, headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(allowed) = allowed else {
        return Ok(());
    };
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    match origin {
        Some(o) if allowed.iter().any(|a| a.eq_ignore_ascii_case(o)) => Ok(()),
        _ => Err(Refusal::new(StatusCode::FORBIDDEN, "origin not allowed")),
    }
}

/// Builds the request to the backend: origin-form URI, HTTP/1.1, no
/// hop-by-hop headers (but the upgrade pair again for WebSockets; the
/// Sec-WebSocket-* headers pass untouched), and the forwarding headers.
fn forward_request(
    req: Request<Incoming>,
    client: &ClientInfo,
    host: &str,
    is_ws: bool,
) -> Request<Incoming> {
    let (mut parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    parts.uri = Uri::try_from(path_and_query).unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    if !parts.headers.contains_key(header::HOST) && !host.is_empty() {
        if let Ok(v) = HeaderValue::from_str(host) {
            parts.headers.insert(header::HOST, v);
        }
    }
    strip_hop_by_hop(&mut parts.headers);
    if is_ws {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        parts
            .headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    add_forwarding(&mut parts.headers, client, host);
    Request::from_parts(parts, body)
}

fn add_forwarding(headers: &mut HeaderMap, client: &ClientInfo, host: &str) {
    let ip = client.addr.ip();
    let proto = if client.tls { "https" } else { "http" };
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip.to_string(),
    };
    let node = if ip.is_ipv6() {
        format!("\"[{ip}]\"")
    } else {
        ip.to_string()
    };
    let mut forwarded = format!("for={node};proto={proto}");
    if !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
    {
        forwarded.push_str(&format!(";host=\"{host}\""));
    }
    if let Some(prev) = headers.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
        forwarded = format!("{prev}, {forwarded}");
    }
    for (name, value) in [
        ("x-forwarded-for", xff),
        ("x-forwarded-proto", proto.to_string()),
        ("forwarded", forwarded),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
}

/// Removes headers that describe one hop only (RFC 9110 7.6.1), including
/// any named in `Connection`.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A request wsgate answers itself.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    reason: String,
    /// Add `Sec-WebSocket-Version: 13` (RFC 6455 4.4).
    version_hint: bool,
}

impl Refusal {
    fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Refusal {
            status,
            reason: reason.into(),
            version_hint: false,
        }
    }

    fn into_response(self) -> Response<Body> {
        let body = Full::new(Bytes::from(format!("{}\n", self.reason)))
            .map_err(|never| match never {})
            .boxed();
        let mut resp = Response::new(body);
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if self.version_hint {
            h.insert(
                handshake::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_connection_tokens_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("sec-websocket-key", HeaderValue::from_static("k"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none() && h.get(header::UPGRADE).is_none());
        assert!(h.get("sec-websocket-key").is_some());
    }

    #[test]
    fn forwarding_headers_append() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let c = ClientInfo::new("[::1]:5000".parse().unwrap(), true);
        add_forwarding(&mut h, &c, "localhost");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, ::1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(
            h["forwarded"],
            "for=\"[::1]\";proto=https;host=\"localhost\""
        );
    }

    #[test]
    fn origin_policy() {
        let allowed = vec!["https://localhost:8443".to_string()];
        let mut h = HeaderMap::new();
        assert!(check_origin(None, &h).is_ok());
        assert_eq!(
            check_origin(Some(&allowed), &h).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://localhost:8443"),
        );
        assert!(check_origin(Some(&allowed), &h).is_ok());
    }
}
