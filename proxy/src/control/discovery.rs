//! What a DNS answer means for a pool, as pure functions: the backends it
//! names (ids stable for hashing), when to ask again, and the pool's
//! backend list once the answer replaces the previous one. No I/O: the
//! resolver (`control::resolver`) asks, the control task applies.
//!
//! - `type: a`: one backend per A or AAAA address, id and address
//!   `IP:port` (`[IPv6]:port`), so an id is as stable as a pod's address.
//! - `type: srv`: one backend per target host, id the host name in lower
//!   case without the final dot (`chat-0.chat.ns.svc.cluster.local`), so a
//!   StatefulSet pod keeps its users when its address changes; its address
//!   is the target's lowest address (for determinism) on the record's port.
//!   SRV priority and weight are not used (README, "Backends from DNS").
//! - An answer with no usable record is an error, never an empty set: a
//!   pool keeps its last good backends while DNS is down or empty.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::config::{valid_backend_id, Backend, Discovery, RecordKind};

/// One SRV record's target, with the addresses found for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SrvTarget {
    /// As the record has it (`chat-0.chat.ns.svc.cluster.local.`).
    pub target: String,
    pub port: u16,
    pub addresses: Vec<IpAddr>,
}

/// The records of one resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Records {
    /// Every A and AAAA address.
    A(Vec<IpAddr>),
    Srv(Vec<SrvTarget>),
}

/// One resolution's records and their smallest TTL in seconds (None when
/// there were no records to take it from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub records: Records,
    pub ttl: Option<u32>,
}

/// Why a resolution gave no backend set. The pool keeps its last good one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The servers did not answer, or answered with an error (SERVFAIL,
    /// REFUSED, a timeout): check `nameservers` and that the server runs.
    #[error("DNS lookup of `{name}` failed: {reason}")]
    Lookup { name: String, reason: String },
    /// The name exists but has no usable record (or does not exist): a
    /// Service with no ready endpoints, or a typo in `dns`.
    #[error("`{name}` has no usable {kind} records")]
    Empty { name: String, kind: &'static str },
    /// The system resolver configuration could not be read: set
    /// `nameservers`, or fix `/etc/resolv.conf`.
    #[error(
        "cannot use the system resolver configuration (/etc/resolv.conf): {0}; set `nameservers`"
    )]
    SystemConfig(String),
}

/// The backends an answer names, sorted by id, each id once.
pub(crate) fn backends(
    records: &Records,
    discovery: &Discovery,
) -> Result<Vec<Backend>, DiscoveryError> {
    let backend = |id: String, address: SocketAddr| Backend {
        id,
        address: address.to_string(),
        weight: discovery.weight,
        max_connections: None,
    };
    let mut out: Vec<Backend> = match (records, discovery.kind) {
        (Records::A(ips), RecordKind::A { port }) => ips
            .iter()
            .map(|ip| {
                let address = SocketAddr::new(*ip, port);
                backend(address.to_string(), address)
            })
            .collect(),
        (Records::Srv(targets), RecordKind::Srv) => {
            // Lowest port first, so a host named twice keeps that one.
            let mut targets: Vec<(String, &SrvTarget)> = targets
                .iter()
                .map(|t| (srv_id(&t.target), t))
                .filter(|(id, t)| t.port != 0 && !id.is_empty() && valid_backend_id(id))
                .collect();
            targets.sort_by(|a, b| (&a.0, a.1.port).cmp(&(&b.0, b.1.port)));
            targets
                .into_iter()
                .filter_map(|(id, t)| {
                    let ip = t.addresses.iter().min()?;
                    Some(backend(id, SocketAddr::new(*ip, t.port)))
                })
                .collect()
        }
        // The resolver asks for the records its config names.
        _ => Vec::new(),
    };
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out.dedup_by(|a, b| a.id == b.id);
    if out.is_empty() {
        return Err(DiscoveryError::Empty {
            name: discovery.name.clone(),
            kind: match discovery.kind {
                RecordKind::A { .. } => "A/AAAA",
                RecordKind::Srv => "SRV",
            },
        });
    }
    Ok(out)
}

/// A target host name as a backend id: lower case, no final dot. `.`
/// alone ("no service here", RFC 2782) gives the empty id, never used.
pub(crate) fn srv_id(target: &str) -> String {
    target
        .strip_suffix('.')
        .unwrap_or(target)
        .to_ascii_lowercase()
}

/// How long to wait before the next resolution: the TTL clamped to
/// `[min_interval, max_interval]`, or `interval` when there is none (a
/// failure or an answer without records).
pub(crate) fn next_delay(ttl: Option<u32>, discovery: &Discovery) -> Duration {
    match ttl {
        None => discovery.interval,
        Some(ttl) => Duration::from_secs(u64::from(ttl))
            .clamp(discovery.min_interval, discovery.max_interval),
    }
}

/// A pool's backends once `found` replaces the discovered backends with
/// ids `previous`: every other backend (static, or added at runtime) stays
/// as it is, and a discovered id that one of them has is left out (the
/// configured backend wins). Returns the list and the ids that came from
/// `found`.
pub(crate) fn merge(
    current: &[Backend],
    previous: &[String],
    found: &[Backend],
) -> (Vec<Backend>, Vec<String>) {
    let previous: HashSet<&str> = previous.iter().map(String::as_str).collect();
    let mut out: Vec<Backend> = current
        .iter()
        .filter(|b| !previous.contains(b.id.as_str()))
        .cloned()
        .collect();
    let kept: HashSet<String> = out.iter().map(|b| b.id.clone()).collect();
    let mut ids = Vec::new();
    for b in found.iter().filter(|b| !kept.contains(&b.id)) {
        ids.push(b.id.clone());
        out.push(b.clone());
    }
    (out, ids)
}

/// A pool's discovery as the control task keeps it: the last good answer
/// and how resolution has gone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct PoolDiscovery {
    /// The backends of the last good answer.
    pub found: Vec<Backend>,
    /// Those of them in the pool (no configured backend has their id).
    pub ids: Vec<String>,
    pub last_success_unix: Option<u64>,
    /// Why the latest resolution failed; None once one succeeds.
    pub last_error: Option<String>,
    pub failures_total: u64,
    pub consecutive_failures: u32,
}

impl PoolDiscovery {
    pub fn succeeded(&mut self, now_unix: u64) {
        self.last_success_unix = Some(now_unix);
        self.last_error = None;
        self.consecutive_failures = 0;
    }

    /// Records a failure; true when it starts a run of failures (worth a
    /// warning; the rest are logged at debug level).
    pub fn failed(&mut self, error: &DiscoveryError) -> bool {
        self.last_error = Some(error.to_string());
        self.failures_total += 1;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.consecutive_failures == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovery(kind: RecordKind) -> Discovery {
        Discovery {
            name: "chat.ns.svc.cluster.local".into(),
            kind,
            interval: Duration::from_secs(5),
            min_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(30),
            nameservers: vec![],
            weight: 1,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ids(backends: &[Backend]) -> Vec<&str> {
        backends.iter().map(|b| b.id.as_str()).collect()
    }

    fn backend(id: &str, address: &str) -> Backend {
        Backend {
            id: id.into(),
            address: address.into(),
            weight: 1,
            max_connections: None,
        }
    }

    #[test]
    fn a_records_give_ip_port_ids_sorted_and_once_each() {
        let d = discovery(RecordKind::A { port: 9001 });
        let records = Records::A(vec![
            ip("10.0.0.2"),
            ip("fd00::1"),
            ip("10.0.0.1"),
            ip("10.0.0.2"),
        ]);
        let b = backends(&records, &d).unwrap();
        assert_eq!(
            ids(&b),
            ["10.0.0.1:9001", "10.0.0.2:9001", "[fd00::1]:9001"]
        );
        assert!(b.iter().all(|b| b.address == b.id && b.weight == 1));
        // The same set in another order is the same answer.
        let again = Records::A(vec![ip("fd00::1"), ip("10.0.0.1"), ip("10.0.0.2")]);
        assert_eq!(backends(&again, &d).unwrap(), b);
    }

    #[test]
    fn srv_targets_give_host_name_ids_with_their_port_and_address() {
        let d = Discovery {
            weight: 3,
            ..discovery(RecordKind::Srv)
        };
        let target = |name: &str, port, addresses: &[&str]| SrvTarget {
            target: name.into(),
            port,
            addresses: addresses.iter().map(|a| ip(a)).collect(),
        };
        let records = Records::Srv(vec![
            target(
                "Chat-1.chat.ns.svc.cluster.local.",
                9002,
                &["10.1.0.9", "10.1.0.3"],
            ),
            target("chat-0.chat.ns.svc.cluster.local.", 9001, &["10.1.0.7"]),
            // No address: not a backend.
            target("chat-2.chat.ns.svc.cluster.local.", 9003, &[]),
            // "No service here".
            target(".", 9004, &["10.1.0.1"]),
            // The same host twice: the lowest port wins.
            target("chat-0.chat.ns.svc.cluster.local.", 9000, &["10.1.0.7"]),
        ]);
        let b = backends(&records, &d).unwrap();
        assert_eq!(
            b,
            [
                Backend {
                    weight: 3,
                    ..backend("chat-0.chat.ns.svc.cluster.local", "10.1.0.7:9000")
                },
                Backend {
                    weight: 3,
                    ..backend("chat-1.chat.ns.svc.cluster.local", "10.1.0.3:9002")
                },
            ]
        );
    }

    #[test]
    fn no_usable_record_is_an_error_not_an_empty_pool() {
        let a = discovery(RecordKind::A { port: 1 });
        assert_eq!(
            backends(&Records::A(vec![]), &a),
            Err(DiscoveryError::Empty {
                name: a.name.clone(),
                kind: "A/AAAA"
            })
        );
        let srv = discovery(RecordKind::Srv);
        let unreachable = Records::Srv(vec![SrvTarget {
            target: "chat-0.x.".into(),
            port: 1,
            addresses: vec![],
        }]);
        assert!(matches!(
            backends(&unreachable, &srv),
            Err(DiscoveryError::Empty { kind: "SRV", .. })
        ));
    }

    #[test]
    fn the_ttl_is_clamped_and_no_ttl_means_the_interval() {
        let d = discovery(RecordKind::A { port: 1 });
        assert_eq!(next_delay(None, &d), Duration::from_secs(5));
        assert_eq!(next_delay(Some(0), &d), Duration::from_secs(1));
        assert_eq!(next_delay(Some(7), &d), Duration::from_secs(7));
        assert_eq!(next_delay(Some(86_400), &d), Duration::from_secs(30));
    }

    #[test]
    fn an_answer_replaces_only_the_discovered_backends() {
        let current = [
            backend("static", "10.9.9.9:1"),
            backend("10.0.0.1:1", "10.0.0.1:1"),
            backend("10.0.0.2:1", "10.0.0.2:1"),
            backend("runtime", "10.8.8.8:1"),
        ];
        let previous = ["10.0.0.1:1".to_string(), "10.0.0.2:1".to_string()];
        let found = [
            backend("10.0.0.2:1", "10.0.0.2:1"),
            backend("10.0.0.3:1", "10.0.0.3:1"),
            // A configured backend's id: the configured one stays.
            backend("static", "10.0.0.4:1"),
        ];
        let (list, ids) = merge(&current, &previous, &found);
        assert_eq!(
            list,
            [
                backend("static", "10.9.9.9:1"),
                backend("runtime", "10.8.8.8:1"),
                backend("10.0.0.2:1", "10.0.0.2:1"),
                backend("10.0.0.3:1", "10.0.0.3:1"),
            ]
        );
        assert_eq!(ids, ["10.0.0.2:1", "10.0.0.3:1"]);
        // The same answer again changes nothing.
        assert_eq!(merge(&list, &ids, &found), (list.clone(), ids.clone()));
    }

    #[test]
    fn failures_are_counted_and_a_success_ends_the_run() {
        let mut p = PoolDiscovery::default();
        let e = DiscoveryError::Lookup {
            name: "x".into(),
            reason: "timed out".into(),
        };
        assert!(
            p.failed(&e),
            "the first failure of a run is worth a warning"
        );
        assert!(!p.failed(&e));
        assert_eq!((p.failures_total, p.consecutive_failures), (2, 2));
        p.succeeded(1_700_000_000);
        assert_eq!(p.last_error, None);
        assert_eq!(p.last_success_unix, Some(1_700_000_000));
        assert!(p.failed(&e));
        assert_eq!(p.failures_total, 3, "the total never goes back");
    }
}
