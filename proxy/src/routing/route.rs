//! Route matching: which route (and so which pool and sticky-key rule) a
//! request belongs to, by host and path prefix. Pure.
//!
//! Routes are tried in config order and the first match wins, as in
//! HAProxy's `use_backend` lists: the operator can read the outcome off the
//! file from top to bottom.

use crate::config::Route;

/// Strips the port from a Host header value and lower-cases it.
/// `[::1]:8443` gives `[::1]`.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let without_port = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    without_port.to_ascii_lowercase()
}

/// Index of the first route matching `host` (normalised) and `path`.
pub fn find(routes: &[Route], host: &str, path: &str) -> Option<usize> {
    routes
        .iter()
        .position(|r| r.host.matches(host) && path.starts_with(&r.path_prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HostMatch, OnMissingKey};

    fn route(host: &str, prefix: &str, pool: usize) -> Route {
        Route {
            host: HostMatch::parse(host).unwrap(),
            path_prefix: prefix.into(),
            pool,
            sticky_key: vec![],
            on_missing_key: OnMissingKey::ClientIp,
            allowed_origins: None,
            backend_response: None,
            heartbeat: None,
        }
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(normalize_host("Example.COM:8443"), "example.com");
        assert_eq!(normalize_host("example.com"), "example.com");
        assert_eq!(normalize_host("[::1]:8443"), "[::1]");
        assert_eq!(normalize_host("127.0.0.1:1"), "127.0.0.1");
    }

    #[test]
    fn first_match_wins_in_order() {
        let routes = vec![
            route("api.example.com", "/ws", 0),
            route("*.example.com", "/ws", 1),
            route("", "/ws", 2),
            route("", "/", 3),
        ];
        assert_eq!(find(&routes, "api.example.com", "/ws?user=a"), Some(0));
        assert_eq!(find(&routes, "x.example.com", "/ws/room"), Some(1));
        assert_eq!(find(&routes, "localhost", "/ws"), Some(2));
        assert_eq!(find(&routes, "localhost", "/index.html"), Some(3));
        assert_eq!(find(&routes[..3], "localhost", "/index.html"), None);
    }
}
