//! `/metrics`: the control task's counters and status in the Prometheus
//! text exposition format. Pure: the admin server asks the task for a
//! [`Metrics`] value and renders it here.

use std::fmt::Write as _;

use super::api::{BackendStatus, DiscoveryStatus, Status};
use crate::observe::stats::{header, label};

/// Everything `/metrics` shows, taken from the control task in one message.
pub(crate) struct Metrics {
    pub status: Status,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Data-path reports dropped because the control task's inbox was full.
    pub reports_dropped: u64,
    /// Sessions wsgate closed itself, by cause label.
    pub closes: [(&'static str, u64); 8],
    /// Client connections now, and the limit they are admitted under.
    pub client_connections: (usize, usize),
    /// Connections and upgrades refused at a limit, by reason label.
    pub refused: [(&'static str, u64); 5],
    /// Access lines dropped because the writer's queue was full.
    pub access_log_dropped: u64,
    /// The session metrics (`observe::stats`), already rendered.
    pub sessions: String,
}

/// Writes one gauge family with a sample per backend.
fn backend_gauge(
    out: &mut String,
    status: &Status,
    name: &str,
    help: &str,
    value: impl Fn(&BackendStatus) -> u64,
) {
    header(out, name, "gauge", help);
    for p in &status.pools {
        for b in &p.backends {
            let _ = writeln!(
                out,
                "{name}{{pool=\"{}\",backend=\"{}\",state=\"{}\"}} {}",
                label(&p.name),
                label(&b.id),
                b.state.name(),
                value(b)
            );
        }
    }
}

/// A metric family drawn from one value per label set: name, type, help,
/// and how to read the sample.
type Family<T> = (&'static str, &'static str, &'static str, fn(&T) -> u64);

/// Backends per pool, and for pools with DNS discovery how it goes.
fn discovery(out: &mut String, status: &Status) {
    header(
        out,
        "wsgate_pool_backends",
        "gauge",
        "Backends in the pool (configured and discovered), removed ones still closing excluded.",
    );
    for p in &status.pools {
        let n = p
            .backends
            .iter()
            .filter(|b| b.state != super::api::BackendState::Removed)
            .count();
        let _ = writeln!(
            out,
            "wsgate_pool_backends{{pool=\"{}\"}} {n}",
            label(&p.name)
        );
    }
    let found: Vec<(&str, &DiscoveryStatus)> = status
        .pools
        .iter()
        .filter_map(|p| Some((p.name.as_str(), p.discovery.as_ref()?)))
        .collect();
    let families: [Family<DiscoveryStatus>; 4] = [
        (
            "wsgate_discovery_backends",
            "gauge",
            "Backends of the pool from its last good DNS answer.",
            |d| d.backends as u64,
        ),
        (
            "wsgate_discovery_up",
            "gauge",
            "1 if the pool's latest DNS resolution succeeded (0: it keeps its last good backends).",
            |d| u64::from(d.error.is_none() && d.last_success_unix.is_some()),
        ),
        (
            "wsgate_discovery_last_success_timestamp_seconds",
            "gauge",
            "When the pool's DNS resolution last succeeded, in Unix seconds (0: never).",
            |d| d.last_success_unix.unwrap_or(0),
        ),
        (
            "wsgate_discovery_failures_total",
            "counter",
            "Failed or empty DNS resolutions of the pool's name.",
            |d| d.failures_total,
        ),
    ];
    for (name, kind, help, value) in families {
        header(out, name, kind, help);
        for (pool, d) in &found {
            let _ = writeln!(out, "{name}{{pool=\"{}\"}} {}", label(pool), value(d));
        }
    }
}

pub(crate) fn render(m: &Metrics) -> String {
    let mut out = String::new();
    backend_gauge(
        &mut out,
        &m.status,
        "wsgate_backend_connections",
        "Live proxied WebSocket connections.",
        |b| b.connections as u64,
    );
    backend_gauge(
        &mut out,
        &m.status,
        "wsgate_backend_pending_closes",
        "Closes scheduled by a drain and not yet sent.",
        |b| b.pending_closes as u64,
    );
    backend_gauge(
        &mut out,
        &m.status,
        "wsgate_backend_up",
        "1 if the backend takes new connections.",
        |b| u64::from(b.state.takes_new_connections()),
    );
    discovery(&mut out, &m.status);
    header(
        &mut out,
        "wsgate_balance_overflow_total",
        "counter",
        "Requests (WebSocket upgrades and plain HTTP) that pools.NAME.balance_factor sent past their first-choice backend.",
    );
    for p in &m.status.pools {
        if let Some(b) = &p.balance {
            let _ = writeln!(
                out,
                "wsgate_balance_overflow_total{{pool=\"{}\"}} {}",
                label(&p.name),
                b.overflow_total
            );
        }
    }
    header(
        &mut out,
        "wsgate_closes_total",
        "counter",
        "Sessions wsgate closed itself, by cause.",
    );
    for (cause, n) in m.closes {
        let _ = writeln!(out, "wsgate_closes_total{{cause=\"{cause}\"}} {n}");
    }
    header(
        &mut out,
        "wsgate_config_reloads_total",
        "counter",
        "Config reloads by result.",
    );
    let _ = writeln!(
        out,
        "wsgate_config_reloads_total{{result=\"ok\"}} {}",
        m.reloads_ok
    );
    let _ = writeln!(
        out,
        "wsgate_config_reloads_total{{result=\"error\"}} {}",
        m.reloads_failed
    );
    header(
        &mut out,
        "wsgate_control_reports_dropped_total",
        "counter",
        "Passive-failure reports the data path dropped because the control plane's inbox was full.",
    );
    let _ = writeln!(
        out,
        "wsgate_control_reports_dropped_total {}",
        m.reports_dropped
    );
    header(
        &mut out,
        "wsgate_certificate_expiry_timestamp_seconds",
        "gauge",
        "End of validity of each certificate a TLS listener serves, in Unix seconds.",
    );
    for c in &m.status.certificates {
        let _ = writeln!(
            out,
            "wsgate_certificate_expiry_timestamp_seconds{{listener=\"{}\",name=\"{}\"}} {}",
            label(&c.listener),
            label(&c.name),
            c.not_after_unix
        );
    }
    header(
        &mut out,
        "wsgate_client_connections",
        "gauge",
        "Client connections open now (plain HTTP and WebSocket).",
    );
    let _ = writeln!(out, "wsgate_client_connections {}", m.client_connections.0);
    header(
        &mut out,
        "wsgate_client_connections_limit",
        "gauge",
        "limits.max_connections in force (derived from RLIMIT_NOFILE unless set).",
    );
    let _ = writeln!(
        out,
        "wsgate_client_connections_limit {}",
        m.client_connections.1
    );
    header(
        &mut out,
        "wsgate_connections_refused_total",
        "counter",
        "Connections closed at accept, and upgrades answered 503, because of a limit.",
    );
    for (reason, n) in m.refused {
        let _ = writeln!(
            out,
            "wsgate_connections_refused_total{{reason=\"{reason}\"}} {n}"
        );
    }
    header(
        &mut out,
        "wsgate_access_log_dropped_total",
        "counter",
        "Access lines dropped because the log writer could not keep up.",
    );
    let _ = writeln!(
        out,
        "wsgate_access_log_dropped_total {}",
        m.access_log_dropped
    );
    out.push_str(&m.sessions);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::api::{BackendState, PoolStatus};

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn one_sample_per_backend_and_cause() {
        let backend = |id: &str, state| BackendStatus {
            id: id.into(),
            address: None,
            weight: None,
            state,
            connections: 7,
            pending_closes: 2,
        };
        let m = Metrics {
            status: Status {
                pools: vec![PoolStatus {
                    name: "chat".into(),
                    rebalance: "keep".into(),
                    backends: vec![
                        backend("b1", BackendState::Active),
                        backend("b2", BackendState::Draining),
                    ],
                    discovery: Some(crate::control::api::DiscoveryStatus {
                        dns: "chat.ns.svc.cluster.local".into(),
                        kind: "a".into(),
                        backends: 1,
                        last_success_unix: Some(1_700_000_000),
                        error: Some("DNS lookup failed".into()),
                        failures_total: 4,
                        consecutive_failures: 2,
                    }),
                    balance: Some(crate::control::api::BalanceStatus {
                        factor: "1.25".into(),
                        routable_connections: 7,
                        bounds: [("b1".to_string(), 10)].into(),
                        overflow_total: 6,
                    }),
                }],
                reload: None,
                shutting_down: false,
                certificates: vec![crate::control::api::CertificateStatus {
                    listener: "public".into(),
                    name: "chat.example.com".into(),
                    serial: "01".into(),
                    not_after_unix: 1_900_000_000,
                    days_left: 90,
                    error: None,
                }],
            },
            reloads_ok: 3,
            reloads_failed: 1,
            reports_dropped: 0,
            closes: [
                ("drain", 5),
                ("idle", 0),
                ("a", 0),
                ("b", 0),
                ("c", 0),
                ("d", 0),
                ("heartbeat", 0),
                ("listener_removed", 0),
            ],
            client_connections: (3, 448),
            refused: [
                ("max_connections", 9),
                ("per_ip", 0),
                ("per_ip_rate", 0),
                ("x", 0),
                ("proxy_protocol", 0),
            ],
            access_log_dropped: 2,
            sessions:
                "wsgate_websocket_sessions{listener=\"public\",http_version=\"HTTP/1.1\"} 1\n"
                    .into(),
        };
        let text = render(&m);
        for line in [
            "wsgate_backend_connections{pool=\"chat\",backend=\"b1\",state=\"active\"} 7",
            "wsgate_backend_up{pool=\"chat\",backend=\"b1\",state=\"active\"} 1",
            "wsgate_backend_up{pool=\"chat\",backend=\"b2\",state=\"draining\"} 0",
            "wsgate_backend_pending_closes{pool=\"chat\",backend=\"b2\",state=\"draining\"} 2",
            "wsgate_closes_total{cause=\"drain\"} 5",
            "wsgate_config_reloads_total{result=\"ok\"} 3",
            "wsgate_config_reloads_total{result=\"error\"} 1",
            "wsgate_control_reports_dropped_total 0",
            "wsgate_client_connections 3",
            "wsgate_certificate_expiry_timestamp_seconds{listener=\"public\",name=\"chat.example.com\"} 1900000000",
            "wsgate_client_connections_limit 448",
            "wsgate_connections_refused_total{reason=\"max_connections\"} 9",
            "wsgate_pool_backends{pool=\"chat\"} 2",
            "wsgate_discovery_backends{pool=\"chat\"} 1",
            "wsgate_discovery_up{pool=\"chat\"} 0",
            "wsgate_discovery_last_success_timestamp_seconds{pool=\"chat\"} 1700000000",
            "wsgate_discovery_failures_total{pool=\"chat\"} 4",
            "wsgate_balance_overflow_total{pool=\"chat\"} 6",
            "wsgate_access_log_dropped_total 2",
            "wsgate_websocket_sessions{listener=\"public\",http_version=\"HTTP/1.1\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
    }
}
