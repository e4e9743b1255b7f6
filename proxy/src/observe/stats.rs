//! The session metrics: close codes by pool, backend and side; messages
//! and bytes by pool and direction; histograms of session duration,
//! handshake time and backend connect time; refused upgrades by status;
//! live sessions by listener and HTTP version.
//!
//! Folded in once per session, never per message: a tunnel counts in its
//! own state and hands its totals over when it ends ([`SessionStats::ended`]),
//! one short lock on a worker thread. A handshake adds its two times, and
//! a session's start and end move the live gauge, each the same one lock.
//! `/metrics` renders under that lock too (microseconds, a few times a
//! minute).
//!
//! Bounded labels: backends come from the config (and DNS answers), close
//! codes are the registered ones (1000-1015) plus `3xxx` and `4xxx` for
//! the registered and private ranges, and `other`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use super::record::close_code;
use crate::tunnel::TunnelReport;

/// Upper bounds (seconds) of the session duration histogram: a second to
/// a day.
const DURATION_BUCKETS: [f64; 10] = [
    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 43200.0, 86400.0,
];
/// Upper bounds (seconds) of the handshake and connect histograms: 1 ms
/// to 10 s (the default `backend_connect` timeout is 3 s).
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

#[derive(Debug, Clone)]
struct Histogram<const N: usize> {
    /// Per bucket (not cumulative; summed when rendered).
    counts: [u64; N],
    /// Above the last bound.
    over: u64,
    sum: f64,
}

impl<const N: usize> Histogram<N> {
    fn observe(&mut self, bounds: &[f64; N], seconds: f64) {
        match bounds.iter().position(|&b| seconds <= b) {
            Some(i) => self.counts[i] += 1,
            None => self.over += 1,
        }
        self.sum += seconds;
    }
}

// By hand: `[u64; N]` is `Default` only for concrete sizes.
impl<const N: usize> Default for Histogram<N> {
    fn default() -> Self {
        Histogram {
            counts: [0; N],
            over: 0,
            sum: 0.0,
        }
    }
}

/// Who sent a Close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Side {
    Client,
    Backend,
    Wsgate,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Backend => "backend",
            Side::Wsgate => "wsgate",
        }
    }
}

/// A close code's label value.
pub(crate) fn code_label(code: u16) -> std::borrow::Cow<'static, str> {
    match code {
        1000..=1015 => code.to_string().into(),
        3000..=3999 => "3xxx".into(),
        4000..=4999 => "4xxx".into(),
        _ => "other".into(),
    }
}

#[derive(Debug, Default)]
struct PoolStats {
    /// To the backend, to the client.
    messages: [u64; 2],
    bytes: [u64; 2],
    duration: Histogram<10>,
    handshake: Histogram<12>,
    connect: Histogram<12>,
    /// backend id → (side, code label) → count.
    codes: BTreeMap<String, BTreeMap<(Side, String), u64>>,
}

#[derive(Debug, Default)]
struct Inner {
    pools: BTreeMap<String, PoolStats>,
    /// (listener, HTTP version) → live sessions.
    live: BTreeMap<(String, &'static str), u64>,
    /// Status → upgrades answered with it instead of a 101.
    refused: BTreeMap<u16, u64>,
}

impl Inner {
    fn pool(&mut self, pool: &str) -> &mut PoolStats {
        // Looked up by &str first: a key is allocated once per pool.
        if !self.pools.contains_key(pool) {
            self.pools.insert(pool.to_string(), PoolStats::default());
        }
        self.pools.get_mut(pool).expect("inserted above")
    }
}

#[derive(Default)]
pub(crate) struct SessionStats {
    inner: Mutex<Inner>,
}

impl SessionStats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Counters only: a panic mid-update leaves them usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A backend answered an upgrade with 101 after `handshake` (from the
    /// request's arrival), its connect having taken `connect`.
    pub fn handshake(&self, pool: &str, handshake: Duration, connect: Duration) {
        let mut inner = self.lock();
        let p = inner.pool(pool);
        p.handshake
            .observe(&LATENCY_BUCKETS, handshake.as_secs_f64());
        p.connect.observe(&LATENCY_BUCKETS, connect.as_secs_f64());
    }

    /// An upgrade attempt answered with `status` (by wsgate or relayed
    /// from the backend) instead of a 101.
    pub fn upgrade_refused(&self, status: u16) {
        *self.lock().refused.entry(status).or_default() += 1;
    }

    /// A tunnel started on `listener`, for a request of `version`.
    pub fn started(&self, listener: &str, version: &'static str) {
        let mut inner = self.lock();
        match inner.live.get_mut(&(listener.to_string(), version)) {
            Some(n) => *n += 1,
            None => {
                inner.live.insert((listener.to_string(), version), 1);
            }
        }
    }

    /// A tunnel ended: its totals, folded in once.
    pub fn ended(
        &self,
        listener: &str,
        version: &'static str,
        pool: &str,
        backend: &str,
        r: &TunnelReport,
    ) {
        let mut inner = self.lock();
        if let Some(n) = inner.live.get_mut(&(listener.to_string(), version)) {
            *n = n.saturating_sub(1);
        }
        let p = inner.pool(pool);
        p.messages[0] += r.messages_to_backend;
        p.messages[1] += r.messages_to_client;
        p.bytes[0] += r.bytes_to_backend;
        p.bytes[1] += r.bytes_to_client;
        p.duration
            .observe(&DURATION_BUCKETS, r.duration.as_secs_f64());
        let closes = [
            (Side::Client, r.client_close.map(close_code)),
            (Side::Backend, r.backend_close.map(close_code)),
            // The code wsgate sent the client, else the backend's (the
            // client was gone).
            (Side::Wsgate, r.wsgate_to_client.or(r.wsgate_to_backend)),
        ];
        if closes.iter().all(|(_, c)| c.is_none()) {
            return;
        }
        if !p.codes.contains_key(backend) {
            p.codes.insert(backend.to_string(), BTreeMap::new());
        }
        let codes = p.codes.get_mut(backend).expect("inserted above");
        for (side, code) in closes {
            if let Some(code) = code {
                *codes
                    .entry((side, code_label(code).into_owned()))
                    .or_default() += 1;
            }
        }
    }

    /// Close frames since start by (side, code label), summed over pools
    /// and backends: what the status page's chart samples.
    pub fn close_totals(&self) -> BTreeMap<(String, String), u64> {
        let inner = self.lock();
        let mut totals = BTreeMap::new();
        for codes in inner.pools.values().flat_map(|p| p.codes.values()) {
            for ((side, code), n) in codes {
                *totals
                    .entry((side.name().to_string(), code.clone()))
                    .or_default() += n;
            }
        }
        totals
    }

    /// The families in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let inner = self.lock();
        header(
            out,
            "wsgate_websocket_close_codes_total",
            "counter",
            "Close frames by the side that sent them (client, backend, or wsgate toward the client) and code.",
        );
        for (pool, p) in &inner.pools {
            for (backend, codes) in &p.codes {
                for ((side, code), n) in codes {
                    let _ = writeln!(
                        out,
                        "wsgate_websocket_close_codes_total{{pool=\"{}\",backend=\"{}\",side=\"{}\",code=\"{code}\"}} {n}",
                        label(pool),
                        label(backend),
                        side.name()
                    );
                }
            }
        }
        for (name, help, pick) in [
            (
                "wsgate_websocket_messages_total",
                "Complete WebSocket data messages of ended sessions, by direction.",
                (|p: &PoolStats| p.messages) as fn(&PoolStats) -> [u64; 2],
            ),
            (
                "wsgate_websocket_bytes_total",
                "Bytes of ended WebSocket sessions after the 101, by direction.",
                |p: &PoolStats| p.bytes,
            ),
        ] {
            header(out, name, "counter", help);
            for (pool, p) in &inner.pools {
                let v = pick(p);
                for (dir, n) in [("to_backend", v[0]), ("to_client", v[1])] {
                    let _ = writeln!(
                        out,
                        "{name}{{pool=\"{}\",direction=\"{dir}\"}} {n}",
                        label(pool)
                    );
                }
            }
        }
        histogram(
            out,
            "wsgate_websocket_session_duration_seconds",
            "How long ended WebSocket sessions lasted, from the 101.",
            &DURATION_BUCKETS,
            inner.pools.iter().map(|(k, p)| (k, &p.duration)),
        );
        histogram(
            out,
            "wsgate_websocket_handshake_seconds",
            "From a WebSocket request's arrival to the backend's 101.",
            &LATENCY_BUCKETS,
            inner.pools.iter().map(|(k, p)| (k, &p.handshake)),
        );
        histogram(
            out,
            "wsgate_backend_connect_seconds",
            "The TCP connect to the backend of each upgraded WebSocket.",
            &LATENCY_BUCKETS,
            inner.pools.iter().map(|(k, p)| (k, &p.connect)),
        );
        header(
            out,
            "wsgate_websocket_upgrades_refused_total",
            "counter",
            "Upgrade requests answered with this status instead of a 101 (by wsgate or relayed from the backend).",
        );
        for (status, n) in &inner.refused {
            let _ = writeln!(
                out,
                "wsgate_websocket_upgrades_refused_total{{status=\"{status}\"}} {n}"
            );
        }
        header(
            out,
            "wsgate_websocket_sessions",
            "gauge",
            "Live WebSocket sessions by listener and the HTTP version of their request.",
        );
        for ((listener, version), n) in &inner.live {
            let _ = writeln!(
                out,
                "wsgate_websocket_sessions{{listener=\"{}\",http_version=\"{version}\"}} {n}",
                label(listener)
            );
        }
    }
}

/// A Prometheus label value, escaped (shared with `control::metrics`).
pub(crate) fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A metric family's `# HELP` and `# TYPE` lines.
pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram<'a, const N: usize>(
    out: &mut String,
    name: &str,
    help: &str,
    bounds: &[f64; N],
    pools: impl Iterator<Item = (&'a String, &'a Histogram<N>)>,
) {
    header(out, name, "histogram", help);
    for (pool, h) in pools {
        let pool = label(pool);
        let mut cumulative = 0;
        for (bound, n) in bounds.iter().zip(h.counts) {
            cumulative += n;
            let _ = writeln!(
                out,
                "{name}_bucket{{pool=\"{pool}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = cumulative + h.over;
        let _ = writeln!(out, "{name}_bucket{{pool=\"{pool}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{pool=\"{pool}\"}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{pool=\"{pool}\"}} {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::{CloseCause, First, PeerClose};

    #[test]
    fn codes_are_bucketed_outside_the_registered_range() {
        assert_eq!(code_label(1000), "1000");
        assert_eq!(code_label(1014), "1014");
        assert_eq!(code_label(3001), "3xxx");
        assert_eq!(code_label(4321), "4xxx");
        assert_eq!(code_label(2000), "other");
        assert_eq!(code_label(1016), "other");
    }

    #[test]
    fn a_session_is_folded_in_at_its_end() {
        let s = SessionStats::default();
        s.started("public", "HTTP/1.1");
        s.started("public", "HTTP/1.1");
        s.handshake("chat", Duration::from_millis(3), Duration::from_micros(300));
        s.upgrade_refused(503);
        let r = TunnelReport {
            cause: Some(CloseCause::BackendGone),
            first: Some(First::Wsgate),
            bytes_to_backend: 100,
            bytes_to_client: 200,
            messages_to_backend: 4,
            messages_to_client: 5,
            client_close: Some(PeerClose {
                code: Some(1014),
                reason_len: 0,
            }),
            wsgate_to_client: Some(1014),
            duration: Duration::from_secs(30),
            ..TunnelReport::default()
        };
        s.ended("public", "HTTP/1.1", "chat", "chat-1", &r);
        let mut text = String::new();
        s.render(&mut text);
        for line in [
            "wsgate_websocket_close_codes_total{pool=\"chat\",backend=\"chat-1\",side=\"client\",code=\"1014\"} 1",
            "wsgate_websocket_close_codes_total{pool=\"chat\",backend=\"chat-1\",side=\"wsgate\",code=\"1014\"} 1",
            "wsgate_websocket_messages_total{pool=\"chat\",direction=\"to_backend\"} 4",
            "wsgate_websocket_bytes_total{pool=\"chat\",direction=\"to_client\"} 200",
            "wsgate_websocket_session_duration_seconds_bucket{pool=\"chat\",le=\"10\"} 0",
            "wsgate_websocket_session_duration_seconds_bucket{pool=\"chat\",le=\"60\"} 1",
            "wsgate_websocket_session_duration_seconds_count{pool=\"chat\"} 1",
            "wsgate_websocket_handshake_seconds_bucket{pool=\"chat\",le=\"0.005\"} 1",
            "wsgate_backend_connect_seconds_bucket{pool=\"chat\",le=\"0.0005\"} 1",
            "wsgate_websocket_upgrades_refused_total{status=\"503\"} 1",
            "wsgate_websocket_sessions{listener=\"public\",http_version=\"HTTP/1.1\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        assert!(
            !text.contains("side=\"backend\""),
            "the backend sent no Close"
        );
        s.ended("public", "HTTP/1.1", "chat", "chat-2", &r);
        let totals = s.close_totals();
        let key = |side: &str| (side.to_string(), "1014".to_string());
        assert_eq!(totals.get(&key("client")), Some(&2), "summed over backends");
        assert_eq!(totals.get(&key("wsgate")), Some(&2));
        assert_eq!(totals.len(), 2);
    }
}
