//! Recognising a WebSocket opening handshake (RFC 6455 section 4.2.1).
//!
//! Pure: looks only at the request line and headers. A request that carries
//! any WebSocket header is judged as an upgrade attempt, and a malformed one
//! gets a precise answer (400 with a reason, or 426 with the version we speak)
//! instead of being proxied as plain HTTP, where the backend would see a
//! half-handshake.

use base64::Engine;
use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, Method, StatusCode, Version};

pub const SEC_WEBSOCKET_KEY: &str = "sec-websocket-key";
pub const SEC_WEBSOCKET_VERSION: &str = "sec-websocket-version";

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
    header_has_token(headers, UPGRADE.as_str(), "websocket")
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
    if !header_has_token(headers, UPGRADE.as_str(), "websocket") {
        return Err(HandshakeError::NoUpgradeHeader);
    }
    if !header_has_token(headers, CONNECTION.as_str(), "upgrade") {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .ok_or(HandshakeError::MissingKey)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key.as_bytes().trim_ascii())
        .map_err(|_| HandshakeError::BadKey)?;
    if decoded.len() != 16 {
        return Err(HandshakeError::BadKey);
    }
    match headers.get(SEC_WEBSOCKET_VERSION) {
        Some(v) if v.as_bytes().trim_ascii() == b"13" => Ok(()),
        _ => Err(HandshakeError::UnsupportedVersion),
    }
}

/// Whether a comma-separated header (any of its lines) contains `token`,
/// case-insensitively.
pub fn header_has_token(headers: &HeaderMap, name: &str, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
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
        h
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
    fn plain_requests_are_not_attempts() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!is_upgrade_attempt(&h));
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_upgrade_attempt(&h));
    }
}
