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
//! | [`h2ws`] | WebSockets over HTTP/2 (RFC 8441): the extended CONNECT, the backend's upgrade made from it, the client's 200 | none |
//! | [`upstream`] | backend connect and request with timeouts, 502/504 classification, what counts against a backend | network |
//! | [`forwarding`] | hop-by-hop headers, `X-Forwarded-*`/`Forwarded` by trust | none |
//! | [`response`] | the response body, watched so a client that stops reading is cut | none |
//! | [`observed`] | a plain request's access line, refused upgrades for the metrics | none |

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tracing::Instrument;

mod forwarding;
mod h2ws;
pub(crate) mod handshake;
mod observed;
mod response;
pub(crate) mod upgrade;
pub(crate) mod upstream;

pub use response::ResponseProgress;

use crate::config::Config;
use crate::routing::admission::Slot;
use crate::routing::registry::BackendConns;
use crate::routing::snapshot::PickError;
use crate::routing::{decide, route, Report, Routing};
use crate::tunnel::TunnelConfig;
use upstream::UpstreamTimeouts;

pub type Body = BoxBody<Bytes, hyper::Error>;

/// What the gateway knows about the client connection a request came on.
#[derive(Debug)]
pub struct ClientInfo {
    pub addr: SocketAddr,
    pub tls: bool,
    /// The listener as it was started, for its name and, once a reload
    /// removed it, its Origin policy (while it runs, the snapshot's).
    pub listener: Arc<crate::config::Listener>,
    /// The running listener's id, so that removing it by reload closes
    /// this connection's tunnel (`routing::registry`).
    pub listener_id: Arc<crate::routing::listenerid::ListenerId>,
    /// The address the client connected to, known when a pool sends PROXY
    /// protocol headers (it is their destination).
    pub local: Option<SocketAddr>,
    /// A request has arrived on this connection (see `server` on shutdown).
    pub request_seen: AtomicBool,
    /// A request is being answered: a graceful close now would turn its
    /// 101 into `Connection: close` (see `edge::accept`), so it waits.
    pub in_flight: AtomicBool,
    /// The response being written on this connection, for the write timeout.
    pub response: ResponseProgress,
    /// This connection's place under the connection limits and its
    /// labels, held until the connection and its tunnel have both ended.
    pub hold: Arc<ClientHold>,
}

impl ClientInfo {
    pub fn new(
        addr: SocketAddr,
        tls: bool,
        listener: (
            Arc<crate::config::Listener>,
            Arc<crate::routing::listenerid::ListenerId>,
        ),
        local: Option<SocketAddr>,
        slot: Slot,
        routing: Arc<Routing>,
    ) -> Self {
        ClientInfo {
            addr,
            tls,
            listener: listener.0.clone(),
            listener_id: listener.1,
            local,
            request_seen: AtomicBool::new(false),
            in_flight: AtomicBool::new(false),
            response: ResponseProgress::default(),
            hold: Arc::new(ClientHold {
                routing,
                listener: listener.0,
                // A WebSocket over HTTP/1 is always an HTTP/1.1 upgrade
                // (`handshake::validate` refuses any other version).
                version: http::Version::HTTP_11,
                _slot: slot,
            }),
        }
    }
}

/// What a tunnel keeps of its client's connection for its whole life: the
/// place under the connection limits, and the labels its end is counted
/// under. Not the whole `ClientInfo` (224 bytes, mostly state of the HTTP
/// exchange that an upgraded connection no longer has): one 80-byte
/// allocation per idle WebSocket.
pub struct ClientHold {
    /// The process's routing state, for the tunnel's end (counters, the
    /// access log). Here rather than in the tunnel task: 8 bytes more in
    /// the task would take it past tokio's 1,280-byte cell (see
    /// `edge::splice`'s size test), which costs 256 bytes, not 8.
    pub routing: Arc<Routing>,
    pub listener: Arc<crate::config::Listener>,
    pub version: http::Version,
    _slot: Slot,
}

impl std::fmt::Debug for ClientHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHold")
            .field("listener", &self.listener.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// A completed WebSocket handshake, for the edge to splice once both
/// upgrades finish.
pub struct Upgrade {
    pub client: OnUpgrade,
    pub backend: BackendSide,
    pub tunnel: TunnelStart,
    /// The request's span, for the tunnel's log lines.
    pub span: tracing::Span,
}

/// The backend's connection after its 101, with what it sent after the head.
pub struct BackendSide {
    pub socket: tokio::net::TcpStream,
    pub early: Bytes,
}

/// What a tunnel needs besides its two connections.
pub struct TunnelStart {
    pub routing: Arc<Routing>,
    /// The backend's registry entry, from the snapshot that routed it.
    pub conns: Arc<BackendConns>,
    pub key_hash: u64,
    /// The first choice `balance_factor` skipped, if it did.
    pub overflowed_from: Option<Arc<BackendConns>>,
    pub cfg: TunnelConfig,
    /// Keeps the client's connection slot until the tunnel ends.
    pub client: Arc<ClientInfo>,
    /// The request's HTTP version, for the live-sessions gauge.
    pub version: http::Version,
    /// The session's access-line facts, while the access log is on.
    pub session: Option<Box<crate::observe::record::WsSession>>,
    /// What the tunnel keeps for its whole life: the connection's
    /// `ClientInfo::hold`, or for a WebSocket over HTTP/2 a hold with a
    /// connection slot of its own, as the HTTP/1.1 connection it stands
    /// for would take (it holds a backend socket all the same).
    pub hold: Arc<ClientHold>,
}

/// Shared by every connection of the process.
pub struct Gateway {
    routing: Arc<Routing>,
}

impl Gateway {
    pub(crate) fn new(routing: Arc<Routing>) -> Self {
        Gateway { routing }
    }

    /// The routing state, for the edge's admission at accept.
    pub(crate) fn routing(&self) -> &Arc<Routing> {
        &self.routing
    }

    /// The response for `req`, and for a WebSocket the upgrade to splice.
    pub async fn handle(
        &self,
        client: &Arc<ClientInfo>,
        req: Request<Incoming>,
    ) -> (Response<Body>, Option<Upgrade>) {
        let is_ws = handshake::is_upgrade_attempt(req.headers());
        let arrival = observed::arrive(&self.routing, client, &req, is_ws);
        let answer = match self.route(client, req).await {
            Ok(routed) => routed,
            Err(refusal) => (refusal.into_response(), None),
        };
        observed::answered(&self.routing, is_ws, arrival, answer)
    }

    async fn route(
        &self,
        client: &Arc<ClientInfo>,
        mut req: Request<Incoming>,
    ) -> Result<(Response<Body>, Option<Upgrade>), Refusal> {
        let arrived = std::time::Instant::now();
        let version = req.version();
        let snapshot = self.routing.snapshot.load();
        let config = &snapshot.config;
        h2ws::authority_as_host(&mut req);
        let host = request_host(&req)?;
        let matched = decide::match_route(&config.routes, &host, req.uri().path())
            .map_err(Refusal::undecided)?;
        let route_index = matched.index;
        let route = config
            .routes
            .get(route_index)
            .ok_or_else(|| Refusal::undecided(decide::DecideError::NoRoute))?;
        // Forwarded as matched, so the backend serves what was routed.
        let normalized = match matched.path {
            std::borrow::Cow::Owned(p) => Some(p),
            std::borrow::Cow::Borrowed(_) => None,
        };

        // A WebSocket over HTTP/2 (RFC 8441) is validated by its own rules,
        // then takes every step an HTTP/1.1 upgrade does.
        let over_h2 = h2ws::is_connect(&req);
        let is_ws = over_h2 || handshake::is_upgrade_attempt(req.headers());
        if over_h2 {
            h2ws::validate(&req).map_err(|e| Refusal {
                status: e.status(),
                reason: e.to_string(),
                version_hint: e == h2ws::H2HandshakeError::UnsupportedVersion,
                retry_after: None,
            })?;
        } else if is_ws {
            handshake::validate(req.method(), req.version(), req.headers()).map_err(|e| {
                Refusal {
                    status: e.status(),
                    reason: e.to_string(),
                    version_hint: e == handshake::HandshakeError::UnsupportedVersion,
                    retry_after: None,
                }
            })?;
        }
        if is_ws {
            // The listener's policy as of now; one a reload just removed
            // (its connections are closing) keeps the policy it had.
            let listener = config
                .listeners
                .iter()
                .find(|l| l.name == client.listener.name)
                .unwrap_or(&client.listener);
            let policies = [
                route.allowed_origins.as_deref(),
                config
                    .pools
                    .get(route.pool)
                    .and_then(|p| p.allowed_origins.as_deref()),
                listener.allowed_origins.as_deref(),
            ];
            for allowed in policies {
                check_origin(allowed, req.headers())?;
            }
        }

        let sticky = decide::sticky_key(
            route,
            req.uri().query(),
            req.headers(),
            Some(client.addr.ip()),
        )
        .map_err(Refusal::undecided)?;
        let key_hash = sticky.hash;
        let choice = snapshot.choose(route.pool, key_hash).map_err(|e| Refusal {
            // An empty pool is waiting for DNS: worth coming back soon.
            retry_after: (e == PickError::NoBackends).then_some(RETRY_AFTER_SECONDS),
            ..Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        })?;
        let backend = choice.backend;
        if let Some(first) = choice.overflowed_from {
            first.record_overflow();
        }
        if let Some(max) = backend.max_connections.filter(|_| is_ws) {
            if choice.conns.count() >= max as usize {
                self.routing
                    .admission
                    .refused_backend
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(Refusal {
                    retry_after: Some(RETRY_AFTER_SECONDS),
                    ..Refusal::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "backend {} is at its limit of {max} connections",
                            backend.id
                        ),
                    )
                });
            }
        }
        let span = tracing::debug_span!(
            "request",
            route = route_index,
            backend = %backend.id,
            key_hash = format_args!("{key_hash:016x}"),
            ws = is_ws,
            overflowed_from = choice.overflowed_from.map(|f| tracing::field::display(&f.key().id)),
        );
        tracing::debug!(parent: &span, method = %req.method(), path = req.uri().path(), "routed");

        let trusted = forwarding::is_trusted(&config.trusted_proxies, client.addr.ip());
        let hop = forwarding::Hop {
            client: client.addr.ip(),
            tls: client.tls,
            host: &host,
            trusted,
        };
        let timeouts = UpstreamTimeouts {
            connect: config.timeouts.backend_connect,
            response: route
                .backend_response
                .unwrap_or(config.timeouts.backend_response),
            body: config.timeouts.body,
        };
        let proxy_header = config
            .pools
            .get(route.pool)
            .filter(|p| p.send_proxy_protocol)
            .map(|_| proxy_header(client));
        let stream_slot = if over_h2 {
            let now = std::time::Instant::now();
            let admitted = self
                .routing
                .admission
                .admit(client.addr.ip(), &config.limits, now);
            Some(admitted.map_err(|refusal| Refusal {
                retry_after: Some(RETRY_AFTER_SECONDS),
                ..Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("over the connection limits: {refusal:?}"),
                )
            })?)
        } else {
            None
        };
        let answered = if is_ws {
            let client_side = hyper::upgrade::on(&mut req);
            // Validated above: an upgrade attempt has exactly one key.
            let mut ws_key = req.headers().get(handshake::SEC_WEBSOCKET_KEY).cloned();
            let (mut parts, _) = req.into_parts();
            if over_h2 {
                ws_key = Some(h2ws::to_backend_upgrade(&mut parts));
            }
            let wire = forwarding::upgrade_request(
                &parts,
                hop,
                normalized.as_deref(),
                proxy_header.unwrap_or_default(),
            );
            let max_head = config
                .limits
                .max_header_bytes
                .max(upgrade::MIN_BACKEND_HEAD);
            upgrade::upgrade(&backend.address, &wire, timeouts, max_head)
                .instrument(span.clone())
                .await
                .map(|answer| Answered::Upgrade(answer, client_side, ws_key))
        } else {
            let upstream_req = forwarding::request(req, hop, normalized.as_deref(), false);
            upstream::send(&backend.address, upstream_req, timeouts, proxy_header)
                .instrument(span.clone())
                .await
                .map(Answered::Plain)
        };
        // (refusal, whether the backend is to blame)
        let answered = answered
            .map_err(|e| {
                let blame = e.counts_against_backend();
                (Refusal::new(e.status(), e.to_string()), blame)
            })
            .and_then(|answered| match &answered {
                Answered::Upgrade(upgrade::Answer::Switched { head, .. }, _, key) => {
                    let key = key.as_ref().map_or(&[][..], |k| k.as_bytes());
                    handshake::check_backend_101(key, head.headers())
                        .map(|()| answered)
                        .map_err(|e| (Refusal::new(StatusCode::BAD_GATEWAY, e.to_string()), true))
                }
                _ => Ok(answered),
            });
        let answered = match answered {
            Ok(answered) => {
                choice.conns.passive_success();
                answered
            }
            Err((refusal, false)) => {
                tracing::debug!(parent: &span, error = %refusal.reason, "request failed, not by the backend");
                return Err(refusal);
            }
            Err((refusal, true)) => {
                tracing::warn!(parent: &span, error = %refusal.reason, "backend request failed");
                let consecutive = choice.conns.passive_failure();
                self.routing.reports.send(Report::PassiveFailure {
                    backend: choice.conns.key().clone(),
                    consecutive,
                });
                return Err(refusal);
            }
        };

        match answered {
            Answered::Upgrade(
                upgrade::Answer::Switched {
                    head,
                    socket,
                    early,
                    connect,
                },
                client_side,
                _,
            ) => {
                let pool = &choice.conns.key().pool;
                let handshake = arrived.elapsed();
                self.routing
                    .observe
                    .stats
                    .handshake(pool, handshake, connect);
                let session = config.access_log.as_ref().map(|log| {
                    observed::session(
                        log,
                        observed::SessionStart {
                            client,
                            route,
                            sticky: &sticky,
                            version,
                            head: head.headers(),
                            handshake,
                            connect,
                        },
                    )
                });
                let upgrade = Upgrade {
                    client: client_side,
                    backend: BackendSide { socket, early },
                    tunnel: TunnelStart {
                        routing: self.routing.clone(),
                        conns: choice.conns.clone(),
                        key_hash,
                        overflowed_from: choice.overflowed_from.cloned(),
                        cfg: tunnel_config(config, route),
                        client: client.clone(),
                        version,
                        session,
                        hold: match stream_slot {
                            Some(slot) => Arc::new(ClientHold {
                                routing: self.routing.clone(),
                                listener: client.listener.clone(),
                                version,
                                _slot: slot,
                            }),
                            None => client.hold.clone(),
                        },
                    },
                    span,
                };
                let head = if over_h2 {
                    h2ws::client_answer(head)
                } else {
                    head
                };
                let (parts, ()) = head.into_parts();
                Ok((Response::from_parts(parts, empty()), Some(upgrade)))
            }
            Answered::Upgrade(upgrade::Answer::Other(resp), _, _) => {
                // Relayed whole (`upgrade::MAX_RELAYED_BODY`), its length
                // hyper's to write: the body was decoded, so the backend's
                // Content-Length (which may contradict a chunked body) goes.
                let (mut parts, body) = resp.into_parts();
                forwarding::strip_hop_by_hop(&mut parts.headers);
                parts.headers.remove(header::CONTENT_LENGTH);
                let body = response::WatchedBody::new(Full::new(body), client.clone())
                    .map_err(|never| match never {});
                Ok((Response::from_parts(parts, body.boxed()), None))
            }
            Answered::Plain(resp) => {
                let (mut parts, body) = resp.into_parts();
                forwarding::strip_hop_by_hop(&mut parts.headers);
                let body = response::WatchedBody::new(body, client.clone());
                Ok((Response::from_parts(parts, body.boxed()), None))
            }
        }
    }
}

/// What the backend answered, by the path the request took.
enum Answered {
    /// A WebSocket upgrade, with the client's side of it and its key.
    Upgrade(upgrade::Answer, OnUpgrade, Option<HeaderValue>),
    Plain(Response<Incoming>),
}

/// The PROXY v2 header that tells a backend who the client is. A
/// connection accepted before a reload turned the header on has no known
/// destination; the unspecified address of the client's family stands in.
fn proxy_header(client: &ClientInfo) -> Vec<u8> {
    let local = client.local.unwrap_or_else(|| {
        let ip: std::net::IpAddr = match client.addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        };
        SocketAddr::new(ip, 0)
    });
    crate::proxyproto::encode_v2(client.addr, local)
}

fn tunnel_config(config: &Config, route: &crate::config::Route) -> TunnelConfig {
    TunnelConfig::new(
        config.timeouts.idle,
        config.timeouts.close,
        config.limits.max_message_bytes,
        route.heartbeat,
    )
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

fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// `Retry-After` on a 503 for a backend at its connection limit, or a pool
/// still waiting for its first DNS answer: long enough for a reconnecting
/// crowd to spread out, short enough for a user.
pub const RETRY_AFTER_SECONDS: u32 = 5;

/// A request wsgate answers itself.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    reason: String,
    /// Add `Sec-WebSocket-Version: 13` (RFC 6455 4.4).
    version_hint: bool,
    /// Add `Retry-After` with this many seconds.
    retry_after: Option<u32>,
}

impl Refusal {
    fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Refusal {
            status,
            reason: reason.into(),
            version_hint: false,
            retry_after: None,
        }
    }

    /// The answer to a request routing could not place.
    fn undecided(e: decide::DecideError) -> Self {
        use decide::DecideError as E;
        let status = match e {
            E::Path(_) | E::MissingKey(_) | E::NeedClientIp => StatusCode::BAD_REQUEST,
            E::NoRoute => StatusCode::NOT_FOUND,
            E::NoBackend(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Refusal::new(status, e.to_string())
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
        if let Some(seconds) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
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
