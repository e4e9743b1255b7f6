//! Handshake validation: a client's upgrade request (`validate`), the
//! backend's 101 (`check_backend_101`) and Host normalisation, against a
//! spec-level model of RFC 6455 4.2.1/4.2.2 as wsgate enforces them.
//!
//! Input, first byte even: a request head and, after a blank line, a
//! response head, parsed by httparse as hyper does. First byte odd: header
//! lists built directly (names from the few that matter, values arbitrary),
//! which reaches the validation rules without spending the input on syntax.
//!
//! Invariants:
//! - `validate` returns exactly the verdict of the model, rule order
//!   included, and 426 only for the version;
//! - any validated request's `Sec-WebSocket-Accept` is 28 base64 characters
//!   and a 101 that carries it (with `Upgrade: websocket`) is accepted;
//! - `check_backend_101` accepts exactly the 101s the model accepts;
//! - `normalize_host` never panics, lower-cases and never grows its input.
#![no_main]

use base64::Engine;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Version};
use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use wsgate::fuzzing::{
    accept_value, check_backend_101, is_upgrade_attempt, normalize_host, validate,
    BackendHandshakeError, HandshakeError,
};

const NAMES: &[&str] = &[
    "host",
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-accept",
    "content-length",
    "transfer-encoding",
    "origin",
    "x-user-id",
];

/// Comma-separated tokens of every line of `name`, compared without case;
/// lines that are not visible ASCII (obs-text) hold no tokens.
fn has_token(h: &HeaderMap, name: &str, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        let b = v.as_bytes();
        b.iter().all(|&c| c == b'\t' || (0x20..0x7f).contains(&c))
            && b.split(|&c| c == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

fn count(h: &HeaderMap, name: &str) -> usize {
    h.get_all(name).iter().count()
}

/// RFC 6455 4.2.1 plus wsgate's refusals of bodies and duplicated headers,
/// in the order the README's table of refusals lists them.
fn model_validate(m: &Method, v: Version, h: &HeaderMap) -> Result<(), HandshakeError> {
    use HandshakeError::*;
    if m.as_str() != "GET" {
        return Err(Method(m.as_str().to_string()));
    }
    if v != Version::HTTP_11 {
        return Err(HttpVersion);
    }
    if !has_token(h, "upgrade", "websocket") {
        return Err(NoUpgradeHeader);
    }
    if !has_token(h, "connection", "upgrade") {
        return Err(NoConnectionUpgrade);
    }
    match count(h, "host") {
        0 => return Err(MissingHost),
        1 => {}
        _ => return Err(Duplicate("Host")),
    }
    let body = h.contains_key("transfer-encoding")
        || h.get_all("content-length")
            .iter()
            .any(|v| v.as_bytes().trim_ascii() != b"0");
    if body {
        return Err(Body);
    }
    if count(h, "sec-websocket-key") > 1 {
        return Err(Duplicate("Sec-WebSocket-Key"));
    }
    if count(h, "sec-websocket-version") > 1 {
        return Err(Duplicate("Sec-WebSocket-Version"));
    }
    let key = h.get("sec-websocket-key").ok_or(MissingKey)?;
    let nonce = base64::engine::general_purpose::STANDARD
        .decode(key.as_bytes().trim_ascii())
        .map_err(|_| BadKey)?;
    if nonce.len() != 16 {
        return Err(BadKey);
    }
    match h.get("sec-websocket-version") {
        Some(v) if v.as_bytes().trim_ascii() == b"13" => Ok(()),
        _ => Err(UnsupportedVersion),
    }
}

fn model_backend(key: &[u8], h: &HeaderMap) -> Result<(), BackendHandshakeError> {
    if !has_token(h, "upgrade", "websocket") {
        return Err(BackendHandshakeError::NoUpgrade);
    }
    let want = accept_value(key);
    match h.get_all("sec-websocket-accept").iter().collect::<Vec<_>>()[..] {
        [v] if v.as_bytes().trim_ascii() == want.as_bytes() => Ok(()),
        _ => Err(BackendHandshakeError::BadAccept),
    }
}

fn check(method: &Method, version: Version, req: &HeaderMap, resp: &HeaderMap) {
    let attempt = is_upgrade_attempt(req);
    assert_eq!(
        attempt,
        has_token(req, "upgrade", "websocket")
            || req.contains_key("sec-websocket-key")
            || req.contains_key("sec-websocket-version")
    );
    let verdict = validate(method, version, req);
    assert_eq!(verdict, model_validate(method, version, req));
    if let Err(e) = &verdict {
        let status = e.status();
        assert_eq!(
            status == StatusCode::UPGRADE_REQUIRED,
            *e == HandshakeError::UnsupportedVersion
        );
        assert!(status == StatusCode::BAD_REQUEST || status == StatusCode::UPGRADE_REQUIRED);
        assert!(!e.to_string().is_empty());
    } else {
        assert!(attempt, "a valid handshake is an upgrade attempt");
    }

    let key = req
        .get("sec-websocket-key")
        .map_or(&b""[..], |k| k.as_bytes());
    let accept = accept_value(key);
    assert_eq!(accept.len(), 28);
    assert_eq!(accept, accept_value(key.trim_ascii()));
    if verdict.is_ok() {
        let mut ok = HeaderMap::new();
        ok.insert("upgrade", HeaderValue::from_static("WebSocket"));
        ok.insert("sec-websocket-accept", accept.parse().unwrap());
        assert_eq!(check_backend_101(key, &ok), Ok(()));
    }
    assert_eq!(check_backend_101(key, resp), model_backend(key, resp));

    if let Some(Ok(host)) = req.get("host").map(|h| h.to_str()) {
        let n = normalize_host(host);
        assert!(n.len() <= host.len());
        assert!(!n.bytes().any(|b| b.is_ascii_uppercase()));
    }
}

/// Headers as hyper builds them from httparse's output.
fn header_map(headers: &[httparse::Header]) -> Option<HeaderMap> {
    let mut map = HeaderMap::new();
    for h in headers {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        map.append(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    Some(map)
}

fn with_blank_line(head: &[u8]) -> Vec<u8> {
    let mut v = head.to_vec();
    v.extend_from_slice(b"\r\n\r\n");
    v
}

fn from_text(data: &[u8]) {
    let (req_part, resp_part) = match data.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (&data[..i], &data[i + 4..]),
        None => (data, &b""[..]),
    };
    let req_bytes = with_blank_line(req_part);
    let mut req_headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut req_headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(&req_bytes) else {
        return;
    };
    let Some(method) = req
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
    else {
        return;
    };
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let Some(req_map) = header_map(req.headers) else {
        return;
    };
    let resp_bytes = with_blank_line(resp_part);
    let mut resp_headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut resp_headers);
    let resp_map = match resp.parse(&resp_bytes) {
        Ok(httparse::Status::Complete(_)) => header_map(resp.headers).unwrap_or_default(),
        _ => HeaderMap::new(),
    };
    check(&method, version, &req_map, &resp_map);
}

fn headers(u: &mut Unstructured) -> ArbResult<HeaderMap> {
    let mut map = HeaderMap::new();
    for _ in 0..u.int_in_range(0..=12u8)? {
        let name = HeaderName::from_static(u.choose(NAMES)?);
        let value: &[u8] = u.arbitrary()?;
        if let Ok(value) = HeaderValue::from_bytes(value) {
            map.append(name, value);
        }
    }
    Ok(map)
}

fn from_parts(u: &mut Unstructured) -> ArbResult<()> {
    let method = match u.int_in_range(0..=3u8)? {
        0 | 1 => Method::GET,
        2 => Method::POST,
        _ => Method::from_bytes(u.arbitrary::<&[u8]>()?).unwrap_or(Method::GET),
    };
    let version = *u.choose(&[Version::HTTP_11, Version::HTTP_10, Version::HTTP_2])?;
    let req = headers(u)?;
    let resp = headers(u)?;
    check(&method, version, &req, &resp);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 1 => {
            let _ = from_parts(&mut Unstructured::new(rest));
        }
        Some((_, rest)) => from_text(rest),
        None => {}
    }
});
