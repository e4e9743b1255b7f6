//! Recognising a WebSocket opening handshake (RFC 6455 section 4.2.1), and
//! checking the backend's answer to it (section 4.2.2).
//!
//! Pure: looks only at the request line and headers. A request that carries
//! any WebSocket header is judged as an upgrade attempt, and a malformed one
//! gets a precise answer (400 with a reason, or 426 with the version we speak)
//! instead of being proxied as plain HTTP, where the backend would see a
//! half-handshake.

use base64::Engine;
use http::header::{AsHeaderName, CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version};
use sha1::{Digest, Sha1};

// Typed names: a lookup by `&str` parses and hashes the name again on
// every handshake.
pub use http::header::{SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION};

/// Appended to the key before hashing it into the accept value (RFC 6455 1.3).
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why a request that tried to be a WebSocket upgrade is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("WebSocket upgrade requires GET, not {0}")]
    Method(String),
    #[error("WebSocket upgrade requires HTTP/1.1")]
    HttpVersion,
    #[error("missing `Upgrade: websocket` header")]
    NoUpgradeHeader,
    #[error("`Connection` header must contain `upgrade`")]
    NoConnectionUpgrade,
    #[error("missing Host header")]
    MissingHost,
    /// Two values of a header that must have one: a client could make
    /// wsgate and the backend read different ones.
    #[error("more than one {0} header")]
    Duplicate(&'static str),
    /// A body on an upgrade request would be forwarded and read by the
    /// backend as WebSocket data that wsgate's frame tracker never saw.
    #[error("a WebSocket upgrade request must not have a body")]
    Body,
    #[error("missing Sec-WebSocket-Key header")]
    MissingKey,
    #[error("Sec-WebSocket-Key must be base64 of 16 bytes")]
    BadKey,
    /// Answered with 426 and `Sec-WebSocket-Version: 13` (RFC 6455 4.4).
    #[error("unsupported Sec-WebSocket-Version; this server speaks 13")]
    UnsupportedVersion,
}

impl HandshakeError {
    pub fn status(&self) -> StatusCode {
        match self {
            HandshakeError::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// True if the request carries any sign of wanting a WebSocket.
pub fn is_upgrade_attempt(headers: &HeaderMap) -> bool {
    header_has_token(headers, UPGRADE, "websocket")
        || headers.contains_key(SEC_WEBSOCKET_KEY)
        || headers.contains_key(SEC_WEBSOCKET_VERSION)
}

/// Checks an upgrade attempt against RFC 6455 4.2.1.
pub fn validate(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Result<(), HandshakeError> {
    if method != Method::GET {
        return Err(HandshakeError::Method(method.to_string()));
    }
    if version != Version::HTTP_11 {
        return Err(HandshakeError::HttpVersion);
    }
    if !header_has_token(headers, UPGRADE, "websocket") {
        return Err(HandshakeError::NoUpgradeHeader);
    }
    if !header_has_token(headers, CONNECTION, "upgrade") {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    match headers.get_all(HOST).iter().count() {
        0 => return Err(HandshakeError::MissingHost),
        1 => {}
        _ => return Err(HandshakeError::Duplicate("Host")),
    }
    // `Content-Length: 0` announces no body and is harmless; anything else
    // would put bytes in front of the first frame.
    let empty = |v: &HeaderValue| v.as_bytes().trim_ascii() == b"0";
    if headers.contains_key(TRANSFER_ENCODING) || !headers.get_all(CONTENT_LENGTH).iter().all(empty)
    {
        return Err(HandshakeError::Body);
    }
    for (name, shown) in [
        (SEC_WEBSOCKET_KEY, "Sec-WebSocket-Key"),
        (SEC_WEBSOCKET_VERSION, "Sec-WebSocket-Version"),
    ] {
        if headers.get_all(name).iter().count() > 1 {
            return Err(HandshakeError::Duplicate(shown));
        }
    }
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .ok_or(HandshakeError::MissingKey)?;
    // Decoded on the stack: a key that does not fit is not 16 bytes either.
    let mut decoded = [0u8; 32];
    let len = base64::engine::general_purpose::STANDARD
        .decode_slice(key.as_bytes().trim_ascii(), &mut decoded)
        .map_err(|_| HandshakeError::BadKey)?;
    if len != 16 {
        return Err(HandshakeError::BadKey);
    }
    match headers.get(SEC_WEBSOCKET_VERSION) {
        Some(v) if v.as_bytes().trim_ascii() == b"13" => Ok(()),
        _ => Err(HandshakeError::UnsupportedVersion),
    }
}

/// The `Sec-WebSocket-Accept` value that answers `key`.
pub fn accept_value(key: &[u8]) -> String {
    String::from_utf8_lossy(&accept_bytes(key)).into_owned()
}

/// [`accept_value`] on the stack: base64 of a 20-byte SHA-1 is 28 bytes.
fn accept_bytes(key: &[u8]) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key.trim_ascii());
    sha.update(ACCEPT_GUID);
    let mut out = [0u8; 28];
    // 20 bytes always encode to exactly 28: the slice cannot be too small.
    let _ = base64::engine::general_purpose::STANDARD.encode_slice(sha.finalize(), &mut out);
    out
}

/// Why a backend's 101 does not complete the client's handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendHandshakeError {
    #[error("the backend's 101 has no `Upgrade: websocket`")]
    NoUpgrade,
    #[error("the backend's 101 has a wrong or missing Sec-WebSocket-Accept")]
    BadAccept,
}

/// Checks a backend's 101 against the client's `key` (RFC 6455 4.2.2): a
/// backend that answers with anything else did not open a WebSocket, and
/// the tunnel would be speaking to something that is not one.
pub fn check_backend_101(key: &[u8], headers: &HeaderMap) -> Result<(), BackendHandshakeError> {
    if !header_has_token(headers, UPGRADE, "websocket") {
        return Err(BackendHandshakeError::NoUpgrade);
    }
    let mut accepts = headers.get_all(SEC_WEBSOCKET_ACCEPT).iter();
    match (accepts.next(), accepts.next()) {
        (Some(v), None) if v.as_bytes().trim_ascii() == accept_bytes(key) => Ok(()),
        _ => Err(BackendHandshakeError::BadAccept),
    }
}

/// Whether a comma-separated header (any of its lines) contains `token`,
/// case-insensitively.
pub fn header_has_token(headers: &HeaderMap, name: impl AsHeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| value_has_token(v.as_bytes(), token.as_bytes()))
}

/// One pass over the bytes: the same answer as `to_str`, split on commas,
/// trim and compare (a value with a byte outside visible ASCII and tab has
/// no tokens), without walking the value three times. Four of these run
/// per handshake.
fn value_has_token(value: &[u8], token: &[u8]) -> bool {
    if !value.iter().all(|&b| b == b'\t' || (32..127).contains(&b)) {
        return false;
    }
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn good() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(
            SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        h.insert(HOST, HeaderValue::from_static("server.example.com"));
        h
    }

    #[test]
    fn tokens_are_found_only_in_visible_ascii_values() {
        for (value, found) in [
            ("Upgrade", true),
            ("keep-alive,\tupgrade ", true),
            (" keep-alive , UPGRADE", true),
            ("upgrades", false),
            ("keep-alive", false),
            ("", false),
        ] {
            assert_eq!(
                value_has_token(value.as_bytes(), b"upgrade"),
                found,
                "{value:?}"
            );
        }
        // A value with obs-text has no tokens at all, as with `to_str`.
        assert!(!value_has_token(b"upgrade, \xff", b"upgrade"));
        assert!(!value_has_token(b"upgrade\x0b", b"upgrade"));
    }

    fn check(h: &HeaderMap) -> Result<(), HandshakeError> {
        validate(&Method::GET, Version::HTTP_11, h)
    }

    #[test]
    fn accepts_rfc_example() {
        assert!(is_upgrade_attempt(&good()));
        assert_eq!(check(&good()), Ok(()));
    }

    #[test]
    fn rejects_each_malformation_with_its_status() {
        let mut h = good();
        h.remove(SEC_WEBSOCKET_KEY);
        assert_eq!(check(&h), Err(HandshakeError::MissingKey));
        let mut h = good();
        h.insert(SEC_WEBSOCKET_KEY, HeaderValue::from_static("c2hvcnQ="));
        assert_eq!(check(&h), Err(HandshakeError::BadKey));
        h.insert(
            SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("!!!notbase64!!!"),
        );
        assert_eq!(check(&h), Err(HandshakeError::BadKey));
        let mut h = good();
        h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        let e = check(&h).unwrap_err();
        assert_eq!(
            (e.clone(), e.status()),
            (
                HandshakeError::UnsupportedVersion,
                StatusCode::UPGRADE_REQUIRED
            )
        );
        let mut h = good();
        h.remove(UPGRADE);
        assert!(
            is_upgrade_attempt(&h),
            "key and version alone mark an attempt"
        );
        assert_eq!(check(&h), Err(HandshakeError::NoUpgradeHeader));
        let mut h = good();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        assert_eq!(check(&h), Err(HandshakeError::NoConnectionUpgrade));
        assert_eq!(
            validate(&Method::POST, Version::HTTP_11, &good()),
            Err(HandshakeError::Method("POST".into()))
        );
        assert_eq!(
            validate(&Method::GET, Version::HTTP_10, &good()),
            Err(HandshakeError::HttpVersion)
        );
        assert_eq!(HandshakeError::MissingKey.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn bodies_duplicates_and_a_missing_host_are_refused() {
        let mut h = good();
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert_eq!(check(&h), Err(HandshakeError::Body));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert_eq!(check(&h), Ok(()), "Content-Length: 0 carries no body");
        h.append(CONTENT_LENGTH, HeaderValue::from_static("7"));
        assert_eq!(check(&h), Err(HandshakeError::Body));
        let mut h = good();
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert_eq!(check(&h), Err(HandshakeError::Body));
        let mut h = good();
        h.remove(HOST);
        assert_eq!(check(&h), Err(HandshakeError::MissingHost));
        for (name, shown) in [
            (HOST, "Host"),
            (SEC_WEBSOCKET_KEY, "Sec-WebSocket-Key"),
            (SEC_WEBSOCKET_VERSION, "Sec-WebSocket-Version"),
        ] {
            let mut h = good();
            let first = h[&name].clone();
            h.append(name, first);
            let e = check(&h).unwrap_err();
            assert_eq!(e, HandshakeError::Duplicate(shown));
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn the_backends_101_must_answer_the_key() {
        // The example of RFC 6455 1.3.
        let key = b"dGhlIHNhbXBsZSBub25jZQ==";
        assert_eq!(accept_value(key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        );
        assert_eq!(check_backend_101(key, &h), Ok(()));
        assert_eq!(
            check_backend_101(b"AQIDBAUGBwgJCgsMDQ4PEA==", &h),
            Err(BackendHandshakeError::BadAccept)
        );
        let mut twice = h.clone();
        twice.append(SEC_WEBSOCKET_ACCEPT, HeaderValue::from_static("x"));
        assert_eq!(
            check_backend_101(key, &twice),
            Err(BackendHandshakeError::BadAccept)
        );
        h.remove(UPGRADE);
        assert_eq!(
            check_backend_101(key, &h),
            Err(BackendHandshakeError::NoUpgrade)
        );
    }

    #[test]
    fn plain_requests_are_not_attempts() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!is_upgrade_attempt(&h));
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_upgrade_attempt(&h));
    }
}
