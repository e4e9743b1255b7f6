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

/// Builds the request to the backend from the client's. `path` replaces
/// the request's path when routing normalised it.
pub fn request<B>(req: Request<B>, hop: Hop<'_>, path: Option<&str>, is_ws: bool) -> Request<B> {
    let (mut parts, body) = req.into_parts();
    let path_and_query = match (path, parts.uri.query()) {
        (Some(p), Some(q)) => format!("{p}?{q}"),
        (Some(p), None) => p.to_string(),
        (None, _) => parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string(),
    };
    parts.uri = Uri::try_from(path_and_query).unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    if !parts.headers.contains_key(header::HOST) && !hop.host.is_empty() {
        if let Ok(v) = HeaderValue::from_str(hop.host) {
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
    if !hop.trusted {
        for name in &FORWARDING {
            if parts.headers.contains_key(name) {
                parts.headers.remove(name);
            }
        }
    }
    add_forwarding(&mut parts.headers, &hop);
    Request::from_parts(parts, body)
}

fn add_forwarding(headers: &mut HeaderMap, hop: &Hop<'_>) {
    let ip = hop.client.to_canonical();
    let proto = if hop.tls { "https" } else { "http" };
    let xff = match joined(headers, &X_FORWARDED_FOR) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip.to_string(),
    };
    let node = if ip.is_ipv6() {
        format!("\"[{ip}]\"")
    } else {
        ip.to_string()
    };
    let mut forwarded = format!("for={node};proto={proto}");
    if !hop.host.is_empty()
        && hop
            .host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
    {
        forwarded.push_str(&format!(";host=\"{}\"", hop.host));
    }
    if let Some(prev) = joined(headers, &header::FORWARDED) {
        forwarded = format!("{prev}, {forwarded}");
    }
    // A trusted proxy that terminated TLS knows the scheme the client used.
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    for (name, value) in [(X_FORWARDED_FOR, xff), (header::FORWARDED, forwarded)] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
}

/// All values of a list header as one, so a chain split over several
/// header lines is kept whole.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let mut out = values.next()?.to_string();
    for v in values {
        out.push_str(", ");
        out.push_str(v);
    }
    Some(out)
}

/// Removes headers that describe one hop only (RFC 9110 7.6.1), including
/// any named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
