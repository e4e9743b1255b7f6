//! RFC 6455 server handshake over hyper's HTTP/1.1 upgrade: validation, the
//! `101 Switching Protocols` response (accept key, sub-protocol echo), and
//! running a handler on the upgraded socket with our size limits.

use std::future::Future;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

use crate::server::{text, Body};

/// A server-side WebSocket over an upgraded hyper connection.
pub type WsStream = WebSocketStream<TokioIo<Upgraded>>;

/// Largest message and frame on `/echo` (tests exchange 16 MiB messages).
pub const ECHO_MAX_MESSAGE_SIZE: usize = 64 << 20;

/// Comma-separated tokens of every value of header `name`.
fn tokens(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    let values = headers.get_all(name).into_iter();
    values
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Validates the upgrade request. On success replies 101 and runs `handler`
/// on the socket in a new task, with messages and frames limited to
/// `max_message_size` bytes; otherwise returns 400 (426 for a wrong version).
pub fn accept<B, F, Fut>(mut req: Request<B>, max_message_size: usize, handler: F) -> Response<Body>
where
    F: FnOnce(WsStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let h = req.headers();
    let has = |name, token: &str| tokens(h, name).any(|t| t.eq_ignore_ascii_case(token));
    if req.version() != Version::HTTP_11
        || !has(header::CONNECTION, "upgrade")
        || !has(header::UPGRADE, "websocket")
    {
        return text(StatusCode::BAD_REQUEST, "websocket upgrade required");
    }
    if !h.get_all(header::SEC_WEBSOCKET_VERSION).iter().eq([&"13"]) {
        let mut resp = text(
            StatusCode::UPGRADE_REQUIRED,
            "websocket version 13 required",
        );
        let version = HeaderValue::from_static("13");
        resp.headers_mut()
            .insert(header::SEC_WEBSOCKET_VERSION, version);
        return resp;
    }
    // The key must be exactly one base64-encoded 16-byte nonce.
    let mut keys = h.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) if key.len() == 24 && key.as_bytes().ends_with(b"==") => key.as_bytes(),
        _ => return text(StatusCode::BAD_REQUEST, "bad sec-websocket-key"),
    };
    let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key)) else {
        return text(StatusCode::BAD_REQUEST, "bad sec-websocket-key");
    };
    // We implement no sub-protocols: echo the client's first choice.
    let protocol = tokens(h, header::SEC_WEBSOCKET_PROTOCOL)
        .next()
        .and_then(|p| HeaderValue::from_str(p).ok());

    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let config = WebSocketConfig::default()
                    .max_message_size(Some(max_message_size))
                    .max_frame_size(Some(max_message_size));
                let io = TokioIo::new(upgraded);
                handler(WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await)
                    .await;
            }
            Err(err) => debug!(%err, "websocket upgrade failed"),
        }
    });

    let mut resp = Response::new(Body::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(protocol) = protocol {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    resp
}
