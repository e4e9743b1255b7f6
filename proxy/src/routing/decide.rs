//! One routing decision as pure steps: the route for a host and path
//! ([`match_route`]), the sticky key of a request ([`sticky_key`]), and the
//! whole decision with the backend and its runner-up ([`explain`]).
//!
//! The data path (`gateway`) and `wsgate route` (`cli::route`) both call
//! these functions, and `explain` chooses through the same
//! [`Snapshot`] and rendezvous ring as every connection, so what the
//! command predicts is what the proxy does by construction: there is no
//! second implementation that could drift. Pure: no I/O.

use std::borrow::Cow;
use std::net::IpAddr;

use http::HeaderMap;

use super::snapshot::{PickError, Snapshot};
use super::{path, ring, route, sticky};
use crate::config::{Backend, KeySource, OnMissingKey, Route};

/// Why a request has no backend. The gateway turns each into its HTTP
/// status (400, 404, 503); `wsgate route` prints it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    /// The path has no single reading (400).
    #[error(transparent)]
    Path(#[from] path::PathError),
    /// No route matches the host and the normal path (404).
    #[error("no route for this host and path")]
    NoRoute,
    /// None of the route's sources is present and the route says
    /// `on_missing_key: reject` (400).
    #[error("missing sticky key (tried {0})")]
    MissingKey(String),
    /// None of the route's sources is present, the route falls back to the
    /// client's address, and the caller did not know it (only `wsgate
    /// route` can get here: a connection always has an address).
    #[error("no sticky key in the request, and the route falls back to the client's IP address, which was not given")]
    NeedClientIp,
    /// Every backend of the pool is drained or down (503).
    #[error(transparent)]
    NoBackend(#[from] PickError),
}

/// The route a request matched, and the path in the normal form it was
/// matched (and is forwarded) in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched<'p> {
    /// Index into `config.routes`.
    pub index: usize,
    pub path: Cow<'p, str>,
}

/// The first route (in config order) for `host` (already normalised by
/// `route::normalize_host`) and the normal form of `raw_path`.
pub fn match_route<'p>(
    routes: &[Route],
    host: &str,
    raw_path: &'p str,
) -> Result<Matched<'p>, DecideError> {
    let path = path::normalize(raw_path)?;
    let index = route::find(routes, host, &path).ok_or(DecideError::NoRoute)?;
    Ok(Matched { index, path })
}

/// Where a sticky key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFrom<'r> {
    /// One of the route's `sticky_key` sources.
    Source(&'r KeySource),
    /// None was present: the client's IP address (`on_missing_key: client_ip`).
    ClientIp,
}

impl std::fmt::Display for KeyFrom<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyFrom::Source(s) => s.fmt(f),
            KeyFrom::ClientIp => f.write_str("client_ip"),
        }
    }
}

/// The key a request is hashed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyKey<'r> {
    pub from: KeyFrom<'r>,
    pub key: Vec<u8>,
    /// `ring::key_hash(key)`, what the ring is asked with.
    pub hash: u64,
}

/// The sticky key of a request on `route`: the first source present, else
/// the client's address or a refusal, as the route says.
pub fn sticky_key<'r>(
    route: &'r Route,
    query: Option<&str>,
    headers: &HeaderMap,
    client_ip: Option<IpAddr>,
) -> Result<StickyKey<'r>, DecideError> {
    let (from, key) = match sticky::extract_with_source(&route.sticky_key, query, headers) {
        Some((source, key)) => (KeyFrom::Source(source), key),
        None if route.on_missing_key == OnMissingKey::Reject => {
            let tried: Vec<String> = route.sticky_key.iter().map(ToString::to_string).collect();
            return Err(DecideError::MissingKey(tried.join(", ")));
        }
        None => {
            let ip = client_ip.ok_or(DecideError::NeedClientIp)?;
            (KeyFrom::ClientIp, ip.to_string().into_bytes())
        }
    };
    Ok(StickyKey {
        from,
        hash: ring::key_hash(&key),
        key,
    })
}

/// A request, as [`explain`] reads it.
pub struct RequestView<'a> {
    /// Normalised (`route::normalize_host`): lower-case, no port.
    pub host: &'a str,
    /// The raw path, without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub client_ip: Option<IpAddr>,
}

/// Where a request goes, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'s, 'p> {
    pub matched: Matched<'p>,
    pub key: StickyKey<'s>,
    /// What the data path picks with this snapshot.
    pub backend: &'s Backend,
    /// Where the key goes were `backend` drained too; None when no other
    /// backend of the pool can take it.
    pub runner_up: Option<&'s Backend>,
}

/// The decision the data path makes for `req` with `snapshot` (without
/// the Origin, handshake and connection-limit checks, which refuse a
/// request but never move it to another backend).
pub fn explain<'s, 'p>(
    snapshot: &'s Snapshot,
    req: &RequestView<'p>,
) -> Result<Decision<'s, 'p>, DecideError> {
    let config = &snapshot.config;
    let matched = match_route(&config.routes, req.host, req.path)?;
    let route = config
        .routes
        .get(matched.index)
        .ok_or(DecideError::NoRoute)?;
    let key = sticky_key(route, req.query, req.headers, req.client_ip)?;
    let (backend, runner_up) = snapshot.top2(route.pool, key.hash)?;
    Ok(Decision {
        matched,
        key,
        backend,
        runner_up,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::routing::{BackendState, Registry};
    use std::path::Path;
    use std::sync::Arc;

    const YAML: &str = "listeners: [{name: a, address: \"127.0.0.1:0\"}]
routes:
  - { host: api.example.com, path_prefix: /ws, pool: p, sticky_key: [\"query:user\", \"cookie:sid\"], on_missing_key: reject }
  - { path_prefix: /ws, pool: p, sticky_key: [\"header:x-user\"] }
pools: {p: {backends: [{id: b1, address: \"h:1\"}, {id: b2, address: \"h:2\"}, {id: b3, address: \"h:3\", weight: 2}]}}
";

    fn snapshot(drained: &'static str) -> Snapshot {
        let config = Arc::new(Config::from_source(YAML, "t", Path::new(".")).unwrap());
        Snapshot::with_states(config, &Registry::default(), |_, id| {
            if id == drained {
                BackendState::Draining
            } else {
                BackendState::Active
            }
        })
    }

    fn view<'a>(
        host: &'a str,
        path: &'a str,
        query: Option<&'a str>,
        h: &'a HeaderMap,
    ) -> RequestView<'a> {
        RequestView {
            host,
            path,
            query,
            headers: h,
            client_ip: None,
        }
    }

    #[test]
    fn explains_route_key_backend_and_runner_up() {
        let s = snapshot("");
        let h = HeaderMap::new();
        let d = explain(
            &s,
            &view("api.example.com", "/%77s/x", Some("user=alice"), &h),
        )
        .unwrap();
        assert_eq!(d.matched.index, 0);
        assert_eq!(d.matched.path, "/ws/x", "matched in the normal form");
        assert_eq!(d.key.from.to_string(), "query:user");
        assert_eq!(
            (d.key.key.as_slice(), d.key.hash),
            (&b"alice"[..], ring::key_hash(b"alice"))
        );
        assert_eq!(d.backend.id, s.pick(0, d.key.hash).unwrap().id);
        let runner_up = d.runner_up.unwrap();
        assert_ne!(runner_up.id, d.backend.id);
        // The runner-up is exactly where a drain of the chosen backend sends the key.
        let drained = match d.backend.id.as_str() {
            "b1" => snapshot("b1"),
            "b2" => snapshot("b2"),
            _ => snapshot("b3"),
        };
        assert_eq!(drained.pick(0, d.key.hash).unwrap().id, runner_up.id);
    }

    #[test]
    fn key_sources_and_fallbacks() {
        let s = snapshot("");
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, "a=1; sid=xyz".parse().unwrap());
        let d = explain(&s, &view("api.example.com", "/ws", None, &h)).unwrap();
        assert_eq!(
            (d.key.from.to_string(), d.key.key),
            ("cookie:sid".into(), b"xyz".to_vec())
        );
        let none = HeaderMap::new();
        assert_eq!(
            explain(&s, &view("api.example.com", "/ws", None, &none)).unwrap_err(),
            DecideError::MissingKey("query:user, cookie:sid".into())
        );
        // Another host takes the second route, which falls back to the client's address.
        assert_eq!(
            explain(&s, &view("other", "/ws", None, &none)).unwrap_err(),
            DecideError::NeedClientIp
        );
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let with_ip = RequestView {
            client_ip: Some(ip),
            ..view("other", "/ws", None, &none)
        };
        let d = explain(&s, &with_ip).unwrap();
        assert_eq!((d.matched.index, d.key.from), (1, KeyFrom::ClientIp));
        assert_eq!(d.key.key, b"192.0.2.7".to_vec());
    }

    #[test]
    fn refusals() {
        let s = snapshot("");
        let h = HeaderMap::new();
        assert_eq!(
            explain(&s, &view("other", "/chat", None, &h)).unwrap_err(),
            DecideError::NoRoute
        );
        assert_eq!(
            explain(&s, &view("other", "//ws", None, &h)).unwrap_err(),
            DecideError::Path(path::PathError::EmptySegment)
        );
        let config = s.config.clone();
        let all_drained =
            Snapshot::with_states(config, &Registry::default(), |_, _| BackendState::Draining);
        assert_eq!(
            explain(
                &all_drained,
                &view("api.example.com", "/ws", Some("user=a"), &h)
            )
            .unwrap_err(),
            DecideError::NoBackend(PickError::NoEligibleBackend)
        );
    }
}
