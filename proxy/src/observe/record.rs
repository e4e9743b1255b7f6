//! One access line: its fields in order, who closed a session first, and
//! the two formats (JSON, one object per line; logfmt, `key=value`).
//! Pure: the data path fills a [`WsSession`] or [`HttpRequest`], and the
//! access log's writer thread turns it into text here and writes it, so
//! formatting (and the key's hash) costs the data path nothing.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use super::keyhash::KeyHasher;
use crate::config::accesslog::Format;
use crate::tunnel::{CloseCause, First, PeerClose, TunnelReport};

/// What a WebSocket session's line says that is known at its handshake.
/// Built (boxed, kept by the tunnel) only while the access log is on.
#[derive(Debug, Clone)]
pub(crate) struct WsSession {
    pub start: SystemTime,
    pub listener: String,
    /// The client's address: the PROXY protocol's source when a balancer
    /// sent one.
    pub client: SocketAddr,
    /// The matched route's path prefix.
    pub route: String,
    /// Where the sticky key came from (`query:user`, `client_ip`, ...).
    pub key_source: String,
    /// The sticky key; the line shows its keyed hash, or the key itself
    /// with `log_raw_key` (`key_raw`).
    pub key: Vec<u8>,
    pub key_raw: bool,
    pub http_version: &'static str,
    pub subprotocol: Option<String>,
    pub extensions: Option<String>,
    /// From the request's arrival to the backend's 101.
    pub handshake: Duration,
    /// The backend's TCP connect.
    pub connect: Duration,
}

/// A plain HTTP request's line.
#[derive(Debug, Clone)]
pub(crate) struct HttpRequest {
    pub start: SystemTime,
    pub listener: String,
    pub client: SocketAddr,
    pub http_version: &'static str,
    pub method: String,
    /// Without the query unless `log_query`.
    pub path: String,
    pub status: u16,
    /// Response body bytes handed to the client connection.
    pub bytes: u64,
    pub duration: Duration,
}

/// `http::Version` as an access line writes it.
pub(crate) fn version_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "other",
    }
}

/// Who began the end of a session, and how: `client`/`backend` with
/// `close` (its Close frame) or `gone` (its connection ended without one),
/// or `wsgate` with its cause.
pub(crate) fn closed_by(report: &TunnelReport) -> (&'static str, &'static str) {
    match (report.first, report.cause) {
        (Some(First::Client), _) => ("client", "close"),
        (Some(First::Backend), _) => ("backend", "close"),
        (_, Some(CloseCause::ClientGone)) => ("client", "gone"),
        (_, Some(CloseCause::BackendGone)) => ("backend", "gone"),
        (_, Some(cause)) => ("wsgate", wsgate_cause(cause)),
        (_, None) => ("unknown", "none"),
    }
}

/// The label of a close wsgate decided (also the metrics' `cause`).
pub(crate) fn wsgate_cause(cause: CloseCause) -> &'static str {
    use crate::tunnel::frame::close_code::TOO_BIG;
    match cause {
        // Removals and rebalances close through the same drain job.
        CloseCause::Drain(_) => "drain",
        CloseCause::Shutdown => "shutdown",
        CloseCause::ListenerRemoved => "listener_removed",
        CloseCause::Idle => "idle",
        CloseCause::Heartbeat => "heartbeat",
        CloseCause::ClientProtocol(TOO_BIG) | CloseCause::BackendProtocol(TOO_BIG) => "limit",
        CloseCause::ClientProtocol(_) | CloseCause::BackendProtocol(_) => "error",
        CloseCause::ClientGone => "client_gone",
        CloseCause::BackendGone => "backend_gone",
    }
}

/// A Close's code as logged: 1005 (RFC 6455 "no status received") for a
/// Close without one.
pub(crate) fn close_code(c: PeerClose) -> u16 {
    c.code.unwrap_or(1005)
}

/// One field's value.
#[derive(Debug, Clone, PartialEq)]
enum Value<'a> {
    Str(&'a str),
    Owned(String),
    Int(u64),
    /// Milliseconds, written with three decimals.
    Millis(Duration),
    Bool(bool),
    Null,
}

fn opt_str(v: &Option<String>) -> Value<'_> {
    v.as_deref().map_or(Value::Null, Value::Str)
}

fn opt_int(v: Option<impl Into<u64>>) -> Value<'static> {
    v.map_or(Value::Null, |v| Value::Int(v.into()))
}

fn rfc3339(t: SystemTime) -> String {
    let nanos = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            // Milliseconds are plenty for a log, and keep lines short.
            let t = t
                .replace_nanosecond(t.millisecond() as u32 * 1_000_000)
                .ok()?;
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// The fields of a WebSocket session's line, in order.
fn ws_fields<'a>(
    s: &'a WsSession,
    pool: &'a str,
    backend: &'a str,
    r: &TunnelReport,
    hasher: &KeyHasher,
) -> Vec<(&'static str, Value<'a>)> {
    let (who, how) = closed_by(r);
    let key = if s.key_raw {
        String::from_utf8_lossy(&s.key).into_owned()
    } else {
        hasher.hash(&s.key)
    };
    vec![
        ("type", Value::Str("ws")),
        ("start", Value::Owned(rfc3339(s.start))),
        ("listener", Value::Str(&s.listener)),
        ("client", Value::Owned(s.client.to_string())),
        ("route", Value::Str(&s.route)),
        ("pool", Value::Str(pool)),
        ("backend", Value::Str(backend)),
        ("key_source", Value::Str(&s.key_source)),
        (
            if s.key_raw { "key" } else { "key_hash" },
            Value::Owned(key),
        ),
        ("http_version", Value::Str(s.http_version)),
        ("subprotocol", opt_str(&s.subprotocol)),
        ("extensions", opt_str(&s.extensions)),
        ("handshake_ms", Value::Millis(s.handshake)),
        ("connect_ms", Value::Millis(s.connect)),
        ("duration_ms", Value::Millis(r.duration)),
        ("bytes_to_backend", Value::Int(r.bytes_to_backend)),
        ("bytes_to_client", Value::Int(r.bytes_to_client)),
        ("messages_to_backend", Value::Int(r.messages_to_backend)),
        ("messages_to_client", Value::Int(r.messages_to_client)),
        ("closed_by", Value::Str(who)),
        ("close_cause", Value::Str(how)),
        ("client_close_code", opt_int(r.client_close.map(close_code))),
        (
            "client_close_reason_len",
            opt_int(r.client_close.map(|c| c.reason_len)),
        ),
        (
            "backend_close_code",
            opt_int(r.backend_close.map(close_code)),
        ),
        (
            "backend_close_reason_len",
            opt_int(r.backend_close.map(|c| c.reason_len)),
        ),
        ("wsgate_close_to_client", opt_int(r.wsgate_to_client)),
        ("wsgate_close_to_backend", opt_int(r.wsgate_to_backend)),
        ("frames_discarded", Value::Int(r.discarded_frames)),
        ("close_timed_out", Value::Bool(r.timed_out)),
    ]
}

fn http_fields(h: &HttpRequest) -> Vec<(&'static str, Value<'_>)> {
    vec![
        ("type", Value::Str("http")),
        ("start", Value::Owned(rfc3339(h.start))),
        ("listener", Value::Str(&h.listener)),
        ("client", Value::Owned(h.client.to_string())),
        ("http_version", Value::Str(h.http_version)),
        ("method", Value::Str(&h.method)),
        ("path", Value::Str(&h.path)),
        ("status", Value::Int(h.status.into())),
        ("bytes", Value::Int(h.bytes)),
        ("duration_ms", Value::Millis(h.duration)),
    ]
}

/// A WebSocket session's line, without the newline.
pub(crate) fn ws_line(
    format: Format,
    s: &WsSession,
    pool: &str,
    backend: &str,
    r: &TunnelReport,
    hasher: &KeyHasher,
) -> String {
    render(format, &ws_fields(s, pool, backend, r, hasher))
}

/// A plain HTTP request's line, without the newline.
pub(crate) fn http_line(format: Format, h: &HttpRequest) -> String {
    render(format, &http_fields(h))
}

fn render(format: Format, fields: &[(&'static str, Value<'_>)]) -> String {
    let mut out = String::with_capacity(512);
    match format {
        Format::Json => {
            out.push('{');
            for (i, (k, v)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "\"{k}\":");
                match v {
                    Value::Str(s) => json_str(&mut out, s),
                    Value::Owned(s) => json_str(&mut out, s),
                    other => plain(&mut out, other),
                }
            }
            out.push('}');
        }
        Format::Logfmt => {
            for (i, (k, v)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                let _ = write!(out, "{k}=");
                match v {
                    Value::Str(s) => logfmt_str(&mut out, s),
                    Value::Owned(s) => logfmt_str(&mut out, s),
                    // logfmt has no null: an empty value.
                    Value::Null => {}
                    other => plain(&mut out, other),
                }
            }
        }
    }
    out
}

fn plain(out: &mut String, v: &Value<'_>) {
    let _ = match v {
        Value::Int(n) => write!(out, "{n}"),
        Value::Millis(d) => write!(out, "{:.3}", d.as_secs_f64() * 1000.0),
        Value::Bool(b) => write!(out, "{b}"),
        Value::Null => write!(out, "null"),
        Value::Str(_) | Value::Owned(_) => Ok(()),
    };
}

fn json_str(out: &mut String, s: &str) {
    // serde_json's escaping: control characters, quotes, backslashes.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

/// Bare when it is made of safe characters, else quoted with `\"`, `\\`
/// and control characters escaped (a header value cannot break the line).
fn logfmt_str(out: &mut String, s: &str) {
    let bare = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\');
    if bare {
        out.push_str(s);
    } else {
        json_str(out, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> WsSession {
        WsSession {
            start: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_650_000_123),
            listener: "public".into(),
            client: "192.0.2.7:50123".parse().unwrap(),
            route: "/ws".into(),
            key_source: "query:user".into(),
            key: b"alice".to_vec(),
            key_raw: false,
            http_version: "HTTP/1.1",
            subprotocol: Some("chat.v1".into()),
            extensions: None,
            handshake: Duration::from_micros(1_500),
            connect: Duration::from_micros(250),
        }
    }

    fn report() -> TunnelReport {
        TunnelReport {
            cause: Some(CloseCause::Drain(1012)),
            first: Some(First::Wsgate),
            bytes_to_backend: 10,
            bytes_to_client: 20,
            messages_to_backend: 1,
            messages_to_client: 2,
            client_close: Some(PeerClose {
                code: Some(1012),
                reason_len: 0,
            }),
            backend_close: Some(PeerClose {
                code: None,
                reason_len: 0,
            }),
            wsgate_to_client: Some(1012),
            wsgate_to_backend: Some(1001),
            discarded_frames: 3,
            timed_out: false,
            duration: Duration::from_millis(61_000),
        }
    }

    #[test]
    fn a_json_line_has_every_field_and_parses() {
        let hasher = KeyHasher::with_key(b"fixed");
        let line = ws_line(
            Format::Json,
            &session(),
            "chat",
            "chat-2",
            &report(),
            &hasher,
        );
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["type"], "ws");
        assert_eq!(v["start"], "2025-12-02T04:33:20.123Z");
        assert_eq!(v["client"], "192.0.2.7:50123");
        assert_eq!(v["key_hash"], hasher.hash(b"alice"));
        assert!(!line.contains("alice"), "never the key itself by default");
        assert!(v.get("key").is_none());
        assert_eq!(v["subprotocol"], "chat.v1");
        assert!(v["extensions"].is_null());
        assert_eq!(v["handshake_ms"], 1.5);
        assert_eq!(v["duration_ms"], 61000.0);
        assert_eq!(v["closed_by"], "wsgate");
        assert_eq!(v["close_cause"], "drain");
        assert_eq!(v["client_close_code"], 1012);
        assert_eq!(v["backend_close_code"], 1005, "a Close without a code");
        assert_eq!(v["wsgate_close_to_backend"], 1001);
        assert_eq!(v["messages_to_client"], 2);
        assert_eq!(v["frames_discarded"], 3);
        assert_eq!(v.as_object().map(|o| o.len()), Some(29));
    }

    #[test]
    fn logfmt_quotes_what_needs_it_and_leaves_nulls_empty() {
        let mut s = session();
        s.subprotocol = Some("a b\"c".into());
        s.key_raw = true;
        let hasher = KeyHasher::with_key(b"fixed");
        let line = ws_line(Format::Logfmt, &s, "chat", "chat-2", &report(), &hasher);
        assert!(line.starts_with("type=ws start=2025-12-02T04:33:20.123Z listener=public "));
        assert!(line.contains(" key=alice "), "{line}");
        assert!(line.contains(r#" subprotocol="a b\"c" "#), "{line}");
        assert!(line.contains(" extensions= "), "{line}");
        assert!(line.contains(" handshake_ms=1.500 "), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn who_closed_first() {
        let mut r = report();
        assert_eq!(closed_by(&r), ("wsgate", "drain"));
        r.first = Some(First::Client);
        assert_eq!(closed_by(&r), ("client", "close"), "its Close came first");
        r.first = Some(First::Wsgate);
        r.cause = Some(CloseCause::BackendGone);
        assert_eq!(closed_by(&r), ("backend", "gone"));
        r.cause = Some(CloseCause::ClientProtocol(1009));
        assert_eq!(closed_by(&r), ("wsgate", "limit"));
        r.cause = Some(CloseCause::BackendProtocol(1002));
        assert_eq!(closed_by(&r), ("wsgate", "error"));
        r.first = Some(First::Backend);
        assert_eq!(closed_by(&r), ("backend", "close"));
    }

    #[test]
    fn an_http_line() {
        let h = HttpRequest {
            start: SystemTime::UNIX_EPOCH,
            listener: "public".into(),
            client: "[::1]:4000".parse().unwrap(),
            http_version: version_name(http::Version::HTTP_2),
            method: "GET".into(),
            path: "/index.html".into(),
            status: 200,
            bytes: 1234,
            duration: Duration::from_millis(2),
        };
        let v: serde_json::Value = serde_json::from_str(&http_line(Format::Json, &h)).unwrap();
        assert_eq!(v["type"], "http");
        assert_eq!(v["http_version"], "HTTP/2");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 1234);
        assert_eq!(
            http_line(Format::Logfmt, &h),
            "type=http start=1970-01-01T00:00:00Z listener=public client=[::1]:4000 \
             http_version=HTTP/2 method=GET path=/index.html \
             status=200 bytes=1234 duration_ms=2.000"
        );
    }
}
