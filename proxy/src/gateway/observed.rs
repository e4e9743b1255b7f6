//! What the gateway tells `observe` about one request: a plain request's
//! access line (written when its response body ends, with the bytes that
//! went out), and refused upgrades for the metrics. Kept apart from the
//! request path in `mod.rs`: with the access log off a plain request costs
//! one snapshot load here, and a WebSocket nothing.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};

use super::{Body, ClientInfo, Upgrade};
use crate::observe::accesslog::Entry;
use crate::observe::record::{self, HttpRequest};
use crate::routing::Routing;

/// A request as it arrived, for its access line; `None` while the access
/// log is off.
pub(super) struct Arrival {
    line: HttpRequest,
    arrived: Instant,
    format: crate::config::accesslog::Format,
}

pub(super) fn arrive<B>(
    routing: &Routing,
    client: &ClientInfo,
    req: &Request<B>,
    is_ws: bool,
) -> Option<Box<Arrival>> {
    if is_ws {
        // A WebSocket's line is written when its session ends (`edge::splice`).
        return None;
    }
    let snapshot = routing.snapshot.load();
    let log = snapshot.config.access_log.as_ref()?;
    let path = match (log.log_query, req.uri().path_and_query()) {
        (true, Some(pq)) => pq.as_str().to_string(),
        _ => req.uri().path().to_string(),
    };
    Some(Box::new(Arrival {
        line: HttpRequest {
            start: SystemTime::now(),
            listener: client.listener.name.clone(),
            client: client.addr,
            http_version: record::version_name(req.version()),
            method: req.method().as_str().to_string(),
            path,
            status: 0,
            bytes: 0,
            duration: std::time::Duration::ZERO,
        },
        arrived: Instant::now(),
        format: log.format,
    }))
}

/// Counts what the request's answer means for the metrics, and gives a
/// plain request's body the wrapper that writes its line at the end.
pub(super) fn answered(
    routing: &Arc<Routing>,
    is_ws: bool,
    arrival: Option<Box<Arrival>>,
    (resp, upgrade): (Response<Body>, Option<Upgrade>),
) -> (Response<Body>, Option<Upgrade>) {
    if is_ws && upgrade.is_none() {
        routing
            .observe
            .stats
            .upgrade_refused(resp.status().as_u16());
    }
    let Some(mut arrival) = arrival else {
        return (resp, upgrade);
    };
    arrival.line.status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let body = Logged {
        inner: body,
        arrival: Some(arrival),
        routing: routing.clone(),
    };
    (Response::from_parts(parts, body.boxed()), upgrade)
}

/// A response body that counts its bytes and writes the request's line
/// when it ends or is dropped (a client that went away mid-body).
struct Logged {
    inner: Body,
    arrival: Option<Box<Arrival>>,
    routing: Arc<Routing>,
}

impl Logged {
    fn finish(&mut self) {
        if let Some(mut a) = self.arrival.take() {
            a.line.duration = a.arrived.elapsed();
            let entry = Entry::Http {
                format: a.format,
                request: a.line,
            };
            self.routing.observe.access_log.send(entry);
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.finish();
    }
}

impl hyper::body::Body for Logged {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(a)) = (frame.data_ref(), self.arrival.as_mut()) {
                    a.line.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => self.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a WebSocket's access line takes from its handshake.
pub(super) struct SessionStart<'a> {
    pub client: &'a ClientInfo,
    pub route: &'a crate::config::Route,
    pub sticky: &'a crate::routing::decide::StickyKey<'a>,
    pub version: http::Version,
    /// The backend's 101.
    pub head: &'a http::HeaderMap,
    pub handshake: std::time::Duration,
    pub connect: std::time::Duration,
}

/// The facts of a session's line known at its 101 (the access log is on).
pub(super) fn session(
    log: &crate::config::accesslog::AccessLog,
    s: SessionStart<'_>,
) -> Box<record::WsSession> {
    let header = |name: &str| {
        s.head
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    // Backdated by the handshake: the session began with its request.
    let start = SystemTime::now()
        .checked_sub(s.handshake)
        .unwrap_or_else(SystemTime::now);
    Box::new(record::WsSession {
        start,
        listener: s.client.listener.name.clone(),
        client: s.client.addr,
        route: s.route.path_prefix.clone(),
        key_source: s.sticky.from.to_string(),
        // Hashed (or not) by the writer thread, when the line is written.
        key: s.sticky.key.to_vec(),
        key_raw: log.log_raw_key,
        http_version: record::version_name(s.version),
        subprotocol: header("sec-websocket-protocol"),
        extensions: header("sec-websocket-extensions"),
        handshake: s.handshake,
        connect: s.connect,
    })
}
