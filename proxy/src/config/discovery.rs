//! `pools.NAME.discovery`: the typed form of "this pool's backends are the
//! answers for a DNS name", and its validation. What the answers become
//! (ids, addresses) and when to ask again is `control::discovery`; asking
//! is `control::resolver`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{defaults, file, Validator};

/// Where a pool's discovered backends come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// The name resolved, as written (a trailing dot makes it absolute;
    /// otherwise the resolver's search domains apply).
    pub name: String,
    pub kind: RecordKind,
    /// Re-resolution period when an answer carries no TTL, and the retry
    /// period after a failure.
    pub interval: Duration,
    /// Bounds on the period a record TTL sets.
    pub min_interval: Duration,
    pub max_interval: Duration,
    /// Servers to ask, in order; empty means the system's resolver
    /// configuration (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// Weight of every discovered backend.
    pub weight: u32,
}

/// Which records a name is resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A and AAAA records: one backend per address, on this port, with id
    /// `IP:port` (a Kubernetes headless Service).
    A { port: u16 },
    /// SRV records: one backend per target, with the target's port and
    /// address and the target's host name as id (StatefulSet pods).
    Srv,
}

impl RecordKind {
    /// `a` or `srv`, as the config file writes it.
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::A { .. } => "a",
            RecordKind::Srv => "srv",
        }
    }
}

/// Whether `name` can be asked for: dot-separated labels of letters,
/// digits, `-` and `_` (SRV names start with `_service._proto`), each of
/// 1 to 63 bytes, 253 bytes in all, with an optional trailing dot.
pub fn valid_dns_name(name: &str) -> bool {
    let bare = name.strip_suffix('.').unwrap_or(name);
    !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `IP:port`, `[IPv6]:port`, or a bare IP on port 53.
fn nameserver(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>().ok().or_else(|| {
        text.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, defaults::DNS_PORT))
    })
}

impl Validator<'_> {
    /// Validates `pools.NAME.discovery` at `path`; None (with problems
    /// recorded) when it cannot be used.
    pub(super) fn discovery(&mut self, path: &str, d: file::FileDiscovery) -> Option<Discovery> {
        let mut ok = true;
        if !valid_dns_name(&d.dns) {
            self.problem(
                &format!("{path}.dns"),
                format!(
                    "`{}` is not a DNS name such as chat.default.svc.cluster.local",
                    d.dns
                ),
            );
            ok = false;
        }
        let kind = match (d.kind.as_deref(), d.port) {
            (None | Some("a"), Some(port)) if port != 0 => Some(RecordKind::A { port }),
            (None | Some("a"), _) => {
                self.problem(
                    &format!("{path}.port"),
                    "`type: a` needs the backends' port (1-65535): A records carry none",
                );
                None
            }
            (Some("srv"), None) => Some(RecordKind::Srv),
            (Some("srv"), Some(_)) => {
                self.problem(
                    &format!("{path}.port"),
                    "`type: srv` takes each backend's port from its SRV record: remove `port`",
                );
                None
            }
            (Some(other), _) => {
                self.problem(
                    &format!("{path}.type"),
                    format!("`{other}` is not one of: a, srv"),
                );
                None
            }
        };
        let interval = self.duration(
            &format!("{path}.interval"),
            d.interval,
            defaults::DISCOVERY_INTERVAL,
        );
        let min_interval = self.duration(
            &format!("{path}.min_interval"),
            d.min_interval,
            defaults::DISCOVERY_MIN_INTERVAL,
        );
        let max_interval = self.duration(
            &format!("{path}.max_interval"),
            d.max_interval,
            defaults::DISCOVERY_MAX_INTERVAL,
        );
        if min_interval > max_interval {
            self.problem(
                &format!("{path}.max_interval"),
                format!(
                    "must be at least min_interval ({min_interval:?}); the defaults are {:?} and {:?}",
                    defaults::DISCOVERY_MIN_INTERVAL,
                    defaults::DISCOVERY_MAX_INTERVAL
                ),
            );
            ok = false;
        }
        let mut nameservers = Vec::new();
        let list = d.nameservers.unwrap_or_default();
        for (i, text) in list.iter().enumerate() {
            match nameserver(text) {
                Some(a) if a.port() != 0 => nameservers.push(a),
                _ => {
                    self.problem(
                        &format!("{path}.nameservers[{i}]"),
                        format!("`{text}` is not IP:port (or an IP, for port 53)"),
                    );
                    ok = false;
                }
            }
        }
        let weight = match d.weight {
            Some(0) => {
                self.problem(
                    &format!("{path}.weight"),
                    "must be at least 1: discovered backends of weight 0 would never get a user",
                );
                ok = false;
                defaults::DISCOVERY_WEIGHT
            }
            Some(w) => w,
            None => defaults::DISCOVERY_WEIGHT,
        };
        let kind = kind.filter(|_| ok)?;
        Some(Discovery {
            name: d.dns,
            kind,
            interval,
            min_interval,
            max_interval,
            nameservers,
            weight,
        })
    }
}
