//! Route matching: which route (and so which pool and sticky-key rule) a
//! request belongs to, by host and path prefix. Pure.
//!
//! Routes are tried in config order and the first match wins, as in
//! HAProxy's `use_backend` lists: the operator can read the outcome off the
//! file from top to bottom.

use crate::config::Route;

/// How a route or certificate matches the request's host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// No `host:` given: every host.
    Any,
    /// Exact host name, lower-case.
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (one or more labels),
    /// but not `example.com` itself. Stored as `.example.com`.
    Suffix(String),
}

impl HostMatch {
    pub fn parse(pattern: &str) -> Result<HostMatch, String> {
        let p = pattern.trim().to_ascii_lowercase();
        if p.is_empty() || p == "*" {
            return Ok(HostMatch::Any);
        }
        let (name, suffix) = match p.strip_prefix("*.") {
            Some(rest) => (rest.to_string(), true),
            None => (p.clone(), false),
        };
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if name.split('.').all(valid_label) {
            Ok(if suffix {
                HostMatch::Suffix(format!(".{name}"))
            } else {
                HostMatch::Exact(name)
            })
        } else {
            Err(format!(
                "`{pattern}` is not a host name or *.suffix pattern"
            ))
        }
    }

    /// `host` must already be lower-case and without a port.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(h) => h == host,
            HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

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
    use crate::config::OnMissingKey;

    fn route(host: &str, prefix: &str, pool: usize) -> Route {
        Route {
            host: HostMatch::parse(host).unwrap(),
            path_prefix: prefix.into(),
            pool,
            sticky_key: vec![],
            on_missing_key: OnMissingKey::ClientIp,
            allowed_origins: None,
        }
    }

    #[test]
    fn host_patterns() {
        assert_eq!(HostMatch::parse(""), Ok(HostMatch::Any));
        assert_eq!(
            HostMatch::parse("Chat.Example.com"),
            Ok(HostMatch::Exact("chat.example.com".into()))
        );
        let w = HostMatch::parse("*.example.com").unwrap();
        assert!(w.matches("a.example.com"));
        assert!(w.matches("a.b.example.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("badexample.com"));
        assert!(HostMatch::parse("a..b").is_err());
        assert!(HostMatch::parse("*.").is_err());
        assert!(HostMatch::parse("a/b").is_err());
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
