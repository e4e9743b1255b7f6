//! The request a backend receives: origin-form URI, HTTP/1.1, no
//! hop-by-hop headers (but the upgrade pair again for WebSockets; the
//! Sec-WebSocket-* headers pass untouched), and forwarding headers that say
//! who the client is. Pure.
//!
//! Forwarding headers are only as good as whoever wrote them. From a peer
//! in `trusted_proxies` (a load balancer in front of wsgate) they are kept
//! and appended to; from anyone else `X-Forwarded-*`, `Forwarded` and
//! `X-Real-IP` are removed and written afresh, so a client cannot pass a
//! backend a forged address, host or scheme.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that describe the client to the backend. From an untrusted peer
/// all of them are dropped before wsgate writes its own. Typed names: a
/// removal by `&str` parses the name again each time, on every request.
const FORWARDING: [HeaderName; 6] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-real-ip"),
    header::FORWARDED,
];

/// Whether `peer` is one of `trusted` (an IPv4-mapped IPv6 address counts
/// as its IPv4 form, as a dual-stack listener reports it).
pub fn is_trusted(trusted: &[ipnet::IpNet], peer: IpAddr) -> bool {
    let peer = peer.to_canonical();
    trusted.iter().any(|net| net.contains(&peer))
}

/// Who is on the other side of this hop.
pub struct Hop<'a> {
    pub client: IpAddr,
    pub tls: bool,
    /// The routed host, without port (empty when the request had none).
    pub host: &'a str,
    /// The peer is a trusted proxy: its forwarding headers are kept.
    pub trusted: bool,
}

/// Where the headers of a backend request go: a `HeaderMap` for a request
/// hyper sends, or the wire for a WebSocket upgrade wsgate writes itself.
/// One function ([`backend_headers`]) decides the headers for both, so the
/// two paths cannot disagree about what a backend is told.
pub trait HeaderSink {
    fn header(&mut self, name: &HeaderName, value: &[u8]);
}

impl HeaderSink for HeaderMap {
    fn header(&mut self, name: &HeaderName, value: &[u8]) {
        // Values are copied from a parsed request or built from an address
        // and a host name checked below, so they are valid header values.
        if let Ok(v) = HeaderValue::from_bytes(value) {
            self.append(name.clone(), v);
        }
    }
}

/// An HTTP/1.1 request head being written.
pub struct Wire(pub Vec<u8>);

impl HeaderSink for Wire {
    fn header(&mut self, name: &HeaderName, value: &[u8]) {
        self.0.extend_from_slice(name.as_str().as_bytes());
        self.0.extend_from_slice(b": ");
        self.0.extend_from_slice(value);
        self.0.extend_from_slice(b"\r\n");
    }
}

/// The request target the backend gets: the normalised path when routing
/// made one, with the query.
fn target<'a>(uri: &'a Uri, path: Option<&str>) -> std::borrow::Cow<'a, str> {
    match (path, uri.query()) {
        (Some(p), Some(q)) => format!("{p}?{q}").into(),
        (Some(p), None) => p.to_string().into(),
        (None, _) => uri.path_and_query().map_or("/", |p| p.as_str()).into(),
    }
}

/// Builds the request to the backend from the client's (for hyper to send).
/// `path` replaces the request's path when routing normalised it.
pub fn request<B>(req: Request<B>, hop: Hop<'_>, path: Option<&str>, is_ws: bool) -> Request<B> {
    let (mut parts, body) = req.into_parts();
    let target = target(&parts.uri, path).into_owned();
    parts.uri = Uri::try_from(target).unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 4);
    backend_headers(&parts.headers, &hop, is_ws, &mut headers);
    parts.headers = headers;
    Request::from_parts(parts, body)
}

/// The whole head of a WebSocket upgrade request to the backend, after
/// `prefix` (a PROXY protocol header, or nothing): what [`request`] would
/// make, written straight to bytes (`gateway::upgrade` sends it).
pub fn upgrade_request(
    parts: &http::request::Parts,
    hop: Hop<'_>,
    path: Option<&str>,
    prefix: Vec<u8>,
) -> Vec<u8> {
    let mut wire = Wire(prefix);
    wire.0.reserve(512);
    wire.0.extend_from_slice(parts.method.as_str().as_bytes());
    wire.0.push(b' ');
    wire.0
        .extend_from_slice(target(&parts.uri, path).as_bytes());
    wire.0.extend_from_slice(b" HTTP/1.1\r\n");
    backend_headers(&parts.headers, &hop, true, &mut wire);
    wire.0.extend_from_slice(b"\r\n");
    wire.0
}

/// Headers that describe one hop only (RFC 9110 7.6.1); with the ones the
/// `Connection` header names, they are not forwarded.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Emits into `sink` the headers the backend gets for a request with
/// `headers`: the end-to-end ones (Sec-WebSocket-* untouched), `Host` if
/// the client sent none, the upgrade pair again for a WebSocket, and the
/// forwarding headers (kept and appended to from a trusted peer, replaced
/// otherwise).
pub fn backend_headers(
    headers: &HeaderMap,
    hop: &Hop<'_>,
    is_ws: bool,
    sink: &mut impl HeaderSink,
) {
    if !headers.contains_key(header::HOST) && !hop.host.is_empty() {
        sink.header(&header::HOST, hop.host.as_bytes());
    }
    let named: Vec<&str> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut kept_proto = false;
    for (name, value) in headers {
        let dropped = HOP_BY_HOP.contains(name)
            || named.iter().any(|t| t.eq_ignore_ascii_case(name.as_str()))
            || (!hop.trusted && FORWARDING.contains(name))
            // Rewritten below, with what a trusted peer sent first.
            || *name == X_FORWARDED_FOR
            || *name == header::FORWARDED;
        if !dropped {
            kept_proto |= *name == X_FORWARDED_PROTO;
            sink.header(name, value.as_bytes());
        }
    }
    if is_ws {
        sink.header(&header::CONNECTION, b"Upgrade");
        sink.header(&header::UPGRADE, b"websocket");
    }
    add_forwarding(headers, hop, kept_proto, sink);
}

/// `kept_proto`: a trusted peer's X-Forwarded-Proto went through above.
fn add_forwarding(
    headers: &HeaderMap,
    hop: &Hop<'_>,
    kept_proto: bool,
    sink: &mut impl HeaderSink,
) {
    use std::fmt::Write;
    let ip = hop.client.to_canonical();
    let proto = if hop.tls { "https" } else { "http" };
    // A trusted proxy that terminated TLS knows the scheme the client used
    // (its header was kept above).
    if !kept_proto {
        sink.header(&X_FORWARDED_PROTO, proto.as_bytes());
    }
    // The address is formatted once, for both headers.
    let mut addr = String::with_capacity(48);
    match ip {
        IpAddr::V6(_) => {
            let _ = write!(addr, "\"[{ip}]\"");
        }
        // By hand: `Display` for an address goes through the formatting
        // machinery (about a thousand instructions, counted by callgrind),
        // once per handshake.
        IpAddr::V4(v4) => push_ipv4(&mut addr, v4),
    }
    let bare = addr.trim_matches(|c| c == '"' || c == '[' || c == ']');
    let mut value = String::with_capacity(96);
    if hop.trusted {
        join_into(&mut value, headers, &X_FORWARDED_FOR);
    }
    value.push_str(bare);
    sink.header(&X_FORWARDED_FOR, value.as_bytes());
    value.clear();
    if hop.trusted {
        join_into(&mut value, headers, &header::FORWARDED);
    }
    value.push_str("for=");
    value.push_str(&addr);
    value.push_str(";proto=");
    value.push_str(proto);
    let host_is_token = hop
        .host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
    if !hop.host.is_empty() && host_is_token {
        value.push_str(";host=\"");
        value.push_str(hop.host);
        value.push('"');
    }
    sink.header(&header::FORWARDED, value.as_bytes());
}

/// `a.b.c.d`, as `Ipv4Addr`'s `Display` writes it.
fn push_ipv4(out: &mut String, ip: std::net::Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
}

/// Appends every value of a list header, then `, `, so a chain split over
/// several header lines is kept whole; nothing when there is none.
fn join_into(out: &mut String, headers: &HeaderMap, name: &HeaderName) {
    for v in headers.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
        out.push_str(v);
        out.push_str(", ");
    }
}

/// Removes hop-by-hop headers (and those `Connection` names) from a
/// response relayed to the client.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_is_written_as_display_writes_it() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "9.99.100.199",
            "255.255.255.255",
        ] {
            let ip: std::net::Ipv4Addr = ip.parse().unwrap();
            let mut out = String::new();
            push_ipv4(&mut out, ip);
            assert_eq!(out, ip.to_string());
        }
    }

    fn hop(client: &str, trusted: bool) -> Hop<'static> {
        Hop {
            client: client.parse().unwrap(),
            tls: true,
            host: "localhost",
            trusted,
        }
    }

    fn forged() -> Request<()> {
        Request::builder()
            .uri("/ws")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-forwarded-for", "10.0.0.2")
            .header("forwarded", "for=10.0.0.1")
            .header("x-real-ip", "10.0.0.1")
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-proto", "http")
            .body(())
            .unwrap()
    }

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
    fn an_untrusted_peer_cannot_forge_forwarding_headers() {
        let out = request(forged(), hop("::1", false), None, false);
        let h = out.headers();
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(
            h["forwarded"],
            "for=\"[::1]\";proto=https;host=\"localhost\""
        );
        assert!(h.get("x-real-ip").is_none() && h.get("x-forwarded-host").is_none());
    }

    #[test]
    fn a_trusted_peer_is_appended_to() {
        let out = request(forged(), hop("192.0.2.7", true), None, false);
        let h = out.headers();
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 192.0.2.7");
        assert_eq!(
            h["x-forwarded-proto"], "http",
            "the proxy saw the client's scheme"
        );
        assert_eq!(
            h["forwarded"],
            "for=10.0.0.1, for=192.0.2.7;proto=https;host=\"localhost\""
        );
        assert_eq!(h["x-real-ip"], "10.0.0.1");
        assert_eq!(h["x-forwarded-host"], "evil.example");
    }

    #[test]
    fn the_written_upgrade_request_says_what_the_hyper_request_says() {
        for trusted in [false, true] {
            let mut req = forged();
            let h = req.headers_mut();
            h.insert(
                header::CONNECTION,
                HeaderValue::from_static("Upgrade, x-hop"),
            );
            h.insert("x-hop", HeaderValue::from_static("1"));
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(
                "sec-websocket-key",
                HeaderValue::from_static("dGhlIHNhbXBsZQ=="),
            );
            h.append("cookie", HeaderValue::from_static("a=1"));
            h.append("cookie", HeaderValue::from_static("b=2"));
            let (parts, ()) = req.into_parts();
            let wire = upgrade_request(
                &parts,
                hop("192.0.2.7", trusted),
                Some("/ws"),
                b"PROXY ".to_vec(),
            );
            let via_hyper = request(
                Request::from_parts(parts, ()),
                hop("192.0.2.7", trusted),
                Some("/ws"),
                true,
            );
            let text = String::from_utf8(wire).unwrap();
            let head = text.strip_prefix("PROXY GET /ws HTTP/1.1\r\n").unwrap();
            let head = head.strip_suffix("\r\n\r\n").unwrap();
            let mut written: Vec<String> = head.lines().map(str::to_string).collect();
            let mut expected: Vec<String> = via_hyper
                .headers()
                .iter()
                .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
                .collect();
            written.sort();
            expected.sort();
            assert_eq!(written, expected, "trusted: {trusted}");
            assert!(!text.contains("x-hop") && text.contains("connection: Upgrade"));
            assert!(text.contains("cookie: a=1\r\ncookie: b=2"), "{text}");
        }
    }

    #[test]
    fn trust_is_by_cidr_and_sees_through_ipv4_mapped_addresses() {
        let nets: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(is_trusted(&nets, "10.1.2.3".parse().unwrap()));
        assert!(is_trusted(&nets, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(!is_trusted(&nets, "11.0.0.1".parse().unwrap()));
        assert!(!is_trusted(&[], "10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn the_normalised_path_is_forwarded_with_the_query() {
        let req = Request::builder().uri("/%77s?user=a").body(()).unwrap();
        let out = request(req, hop("::1", false), Some("/ws"), true);
        assert_eq!(out.uri(), "/ws?user=a");
        assert_eq!(out.headers()[header::UPGRADE], "websocket");
    }
}
