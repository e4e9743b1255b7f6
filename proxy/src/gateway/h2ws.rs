//! WebSockets over HTTP/2 (RFC 8441): recognising and checking an extended
//! CONNECT, turning it into the HTTP/1.1 upgrade the backend gets, and
//! turning the backend's 101 into the client's 200. Also what every HTTP/2
//! request needs before it goes on as HTTP/1.1: its `:authority` as a
//! `Host` header, and its cookies (which HTTP/2 may split over several
//! fields) joined into one `Cookie` header.
//! Pure: headers in, headers out.
//!
//! The client's stream carries no Sec-WebSocket-Key and expects no
//! Sec-WebSocket-Accept (RFC 8441 section 5), so wsgate makes a key of its
//! own for the backend and checks the backend's Accept against it, exactly
//! as it checks a client's key on HTTP/1.1. Sec-WebSocket-Protocol and
//! -Extensions pass both ways unchanged.

use base64::Engine;
use http::header::{CONTENT_LENGTH, COOKIE, HOST, SEC_WEBSOCKET_ACCEPT};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::ext::Protocol;

use super::handshake::{SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION};

/// Why an extended CONNECT is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum H2HandshakeError {
    /// A CONNECT without `:protocol` asks for a TCP tunnel, which wsgate
    /// does not offer.
    #[error("CONNECT is only served for WebSockets (RFC 8441 :protocol websocket)")]
    PlainConnect,
    #[error("unsupported :protocol `{0}`; this server speaks websocket")]
    Protocol(String),
    /// h2 itself resets a stream without `:scheme` or `:path`; a request
    /// that reaches wsgate without them is refused all the same.
    #[error("an extended CONNECT needs :scheme, :authority and :path")]
    MissingPseudoHeader,
    /// RFC 8441 section 5: the key and accept belong to HTTP/1.1 only.
    #[error("Sec-WebSocket-Key is not used over HTTP/2 (RFC 8441 section 5)")]
    KeyOverH2,
    #[error("more than one Sec-WebSocket-Version header")]
    DuplicateVersion,
    /// Answered with 426 and `Sec-WebSocket-Version: 13`, as on HTTP/1.1.
    #[error("unsupported Sec-WebSocket-Version; this server speaks 13")]
    UnsupportedVersion,
}

impl H2HandshakeError {
    pub fn status(&self) -> StatusCode {
        match self {
            H2HandshakeError::PlainConnect => StatusCode::METHOD_NOT_ALLOWED,
            H2HandshakeError::Protocol(_) => StatusCode::NOT_IMPLEMENTED,
            H2HandshakeError::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// An HTTP/2 request names its host in `:authority` (the URI); backends
/// and the routing rules read `Host`. One from the authority is added
/// when the client sent none (RFC 9113 8.3.1 lets it leave Host out).
/// Cookies split over several fields are joined with `; ` (RFC 9113
/// 8.2.3): an HTTP/1.1 backend expects one Cookie header.
pub fn authority_as_host<B>(req: &mut Request<B>) {
    if req.version() != Version::HTTP_2 {
        return;
    }
    join_cookies(req.headers_mut());
    if req.headers().contains_key(HOST) {
        return;
    }
    let host = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    if let Some(host) = host {
        req.headers_mut().insert(HOST, host);
    }
}

fn join_cookies(headers: &mut HeaderMap) {
    let mut fields = headers.get_all(COOKIE).iter();
    if fields.nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for v in headers.get_all(COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    // Made of valid values and "; ", so valid itself.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(COOKIE, v);
    }
}

/// True for a CONNECT over HTTP/2, extended (`:protocol`) or not: either
/// is a WebSocket attempt or refused, never proxied as a plain request.
pub fn is_connect<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_2 && req.method() == Method::CONNECT
}

/// Checks an HTTP/2 CONNECT against RFC 8441 sections 4 and 5.
pub fn validate<B>(req: &Request<B>) -> Result<(), H2HandshakeError> {
    let protocol = req
        .extensions()
        .get::<Protocol>()
        .ok_or(H2HandshakeError::PlainConnect)?;
    if !protocol.as_str().eq_ignore_ascii_case("websocket") {
        return Err(H2HandshakeError::Protocol(protocol.as_str().to_string()));
    }
    let uri = req.uri();
    if uri.scheme().is_none() || uri.authority().is_none() || uri.path().is_empty() {
        return Err(H2HandshakeError::MissingPseudoHeader);
    }
    let headers = req.headers();
    if headers.contains_key(SEC_WEBSOCKET_KEY) {
        return Err(H2HandshakeError::KeyOverH2);
    }
    let mut versions = headers.get_all(SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (_, Some(_)) => Err(H2HandshakeError::DuplicateVersion),
        (Some(v), None) if v.as_bytes().trim_ascii() == b"13" => Ok(()),
        _ => Err(H2HandshakeError::UnsupportedVersion),
    }
}

/// Makes the client's request head the backend's HTTP/1.1 upgrade: GET, a
/// fresh Sec-WebSocket-Key (returned, to check the backend's Accept), the
/// rest as the client sent it. `forwarding::upgrade_request` then writes it
/// as it writes an HTTP/1.1 client's, with the upgrade pair and `Host`
/// (from `:authority`, see [`authority_as_host`]).
pub fn to_backend_upgrade(parts: &mut http::request::Parts) -> HeaderValue {
    parts.method = Method::GET;
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    // Base64 is a valid header value.
    let key = HeaderValue::from_str(&key).unwrap_or_else(|_| HeaderValue::from_static(""));
    parts.headers.insert(SEC_WEBSOCKET_KEY, key.clone());
    // An extended CONNECT has no body (hyper resets one that announces it).
    parts.headers.remove(CONTENT_LENGTH);
    key
}

/// The client's answer to the backend's checked 101: 200, with the
/// backend's headers but the HTTP/1.1 handshake's own (hyper drops the
/// connection-specific ones, Upgrade and Connection, from any HTTP/2
/// response; the Accept answers a key the client never sent).
pub fn client_answer(head: Response<()>) -> Response<()> {
    let (mut parts, ()) = head.into_parts();
    parts.status = StatusCode::OK;
    parts.version = Version::HTTP_2;
    parts.headers.remove(SEC_WEBSOCKET_ACCEPT);
    strip_connection_specific(&mut parts.headers);
    Response::from_parts(parts, ())
}

fn strip_connection_specific(headers: &mut HeaderMap) {
    for name in [
        http::header::CONNECTION,
        http::header::UPGRADE,
        http::header::TRANSFER_ENCODING,
        CONTENT_LENGTH,
    ] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::handshake::{accept_value, check_backend_101};

    fn connect(protocol: Option<&str>) -> Request<()> {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .version(Version::HTTP_2)
            .uri("https://chat.example:8443/ws?user=alice")
            .header(SEC_WEBSOCKET_VERSION, "13")
            .header("sec-websocket-protocol", "chat")
            .body(())
            .unwrap();
        if let Some(p) = protocol {
            req.extensions_mut().insert(Protocol::from(p));
        }
        req
    }

    #[test]
    fn a_websocket_connect_passes_and_anything_else_gets_its_status() {
        let good = connect(Some("websocket"));
        assert!(is_connect(&good));
        assert_eq!(validate(&good), Ok(()));
        let cases = [
            (connect(None), H2HandshakeError::PlainConnect, 405),
            (
                connect(Some("webtransport")),
                H2HandshakeError::Protocol("webtransport".into()),
                501,
            ),
        ];
        for (req, err, status) in cases {
            assert_eq!(validate(&req), Err(err.clone()));
            assert_eq!(err.status().as_u16(), status);
        }
        let mut keyed = connect(Some("websocket"));
        keyed.headers_mut().insert(
            SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert_eq!(validate(&keyed), Err(H2HandshakeError::KeyOverH2));
        let mut old = connect(Some("websocket"));
        old.headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(validate(&old), Err(H2HandshakeError::UnsupportedVersion));
        assert_eq!(H2HandshakeError::UnsupportedVersion.status(), 426);
        old.headers_mut().remove(SEC_WEBSOCKET_VERSION);
        assert_eq!(validate(&old), Err(H2HandshakeError::UnsupportedVersion));
        let mut twice = connect(Some("websocket"));
        twice
            .headers_mut()
            .append(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        assert_eq!(validate(&twice), Err(H2HandshakeError::DuplicateVersion));
        let mut pathless = connect(Some("websocket"));
        *pathless.uri_mut() = http::Uri::from_static("chat.example:8443");
        assert_eq!(
            validate(&pathless),
            Err(H2HandshakeError::MissingPseudoHeader)
        );
    }

    #[test]
    fn the_backend_gets_an_http11_upgrade_with_a_key_of_wsgates_own() {
        let mut req = connect(Some("websocket"));
        authority_as_host(&mut req);
        assert_eq!(req.headers()[HOST], "chat.example:8443");
        let (mut parts, ()) = req.into_parts();
        let key = to_backend_upgrade(&mut parts);
        assert_eq!(parts.method, Method::GET);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(key.as_bytes())
            .unwrap();
        assert_eq!(decoded.len(), 16);
        assert_eq!(parts.headers[SEC_WEBSOCKET_KEY], key);
        assert_eq!(parts.headers["sec-websocket-protocol"], "chat");
        let (mut again, ()) = connect(Some("websocket")).into_parts();
        assert_ne!(to_backend_upgrade(&mut again), key, "a fresh key each time");

        // The backend's 101, checked against that key, becomes a 200.
        let mut head = Response::new(());
        *head.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = head.headers_mut();
        h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        );
        let accept = accept_value(key.as_bytes());
        h.insert(
            SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&accept).unwrap(),
        );
        h.insert("sec-websocket-protocol", HeaderValue::from_static("chat"));
        h.insert(
            "sec-websocket-extensions",
            HeaderValue::from_static("permessage-deflate"),
        );
        assert_eq!(check_backend_101(key.as_bytes(), head.headers()), Ok(()));
        let answer = client_answer(head);
        assert_eq!(answer.status(), StatusCode::OK);
        let h = answer.headers();
        assert_eq!(h["sec-websocket-protocol"], "chat");
        assert_eq!(h["sec-websocket-extensions"], "permessage-deflate");
        for gone in ["upgrade", "connection", "sec-websocket-accept"] {
            assert!(!h.contains_key(gone), "{gone} is not for HTTP/2");
        }
    }

    #[test]
    fn only_http2_requests_get_a_host_from_their_authority() {
        let mut h1 = Request::builder()
            .uri("http://a.example/x")
            .body(())
            .unwrap();
        authority_as_host(&mut h1);
        assert!(!h1.headers().contains_key(HOST));
        let mut h2 = Request::builder()
            .version(Version::HTTP_2)
            .uri("https://b.example/x")
            .header(HOST, "b.example")
            .body(())
            .unwrap();
        authority_as_host(&mut h2);
        assert_eq!(h2.headers().get_all(HOST).iter().count(), 1);

        let mut split = Request::builder()
            .version(Version::HTTP_2)
            .uri("https://b.example/x")
            .header(COOKIE, "a=1")
            .header(COOKIE, "session=carol")
            .body(())
            .unwrap();
        authority_as_host(&mut split);
        let cookies: Vec<_> = split.headers().get_all(COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; session=carol"]);
    }
}
