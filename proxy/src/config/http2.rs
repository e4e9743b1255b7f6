//! HTTP/2 toward clients: which protocols a TLS listener offers by ALPN
//! (`listeners[].tls.alpn`), and the per-connection HTTP/2 limits
//! (`limits.http2`). Plain listeners opt in to prior-knowledge HTTP/2 with
//! `listeners[].h2c` (a bool, read in `listeners`).
//!
//! The limits are what bounds one client connection that multiplexes many
//! streams: how many run at once, how much a peer may send ahead of what
//! wsgate has read (the flow-control windows, which are also the most a
//! connection can make wsgate buffer), and how many streams a peer may
//! reset or have reset (CVE-2023-44487, "rapid reset"). The header list is
//! bounded by `limits.max_header_bytes`, as an HTTP/1.1 head is, which is
//! also what bounds a CONTINUATION flood: h2 stops decoding a header block
//! past that size and answers with an error instead of buffering it.

use super::{defaults, file, units, Validator};

/// A protocol a TLS listener offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    H2,
    Http11,
}

impl Alpn {
    /// The protocol's ALPN identifier (RFC 7301), as the config names it.
    pub fn id(self) -> &'static str {
        match self {
            Alpn::H2 => "h2",
            Alpn::Http11 => "http/1.1",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Alpn::H2, Alpn::Http11].into_iter().find(|a| a.id() == s)
    }
}

/// `limits.http2`: what one HTTP/2 client connection may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Limits {
    /// SETTINGS_MAX_CONCURRENT_STREAMS: streams (requests and WebSockets)
    /// open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Bytes a client may send on one stream before wsgate reads them.
    pub stream_window: u32,
    /// Bytes a client may send on the whole connection before wsgate reads
    /// them: the most one connection can make wsgate buffer.
    pub connection_window: u32,
    /// Streams a client may open and reset before wsgate has accepted them;
    /// past this the connection is closed (GOAWAY ENHANCE_YOUR_CALM).
    pub max_pending_accept_reset_streams: usize,
    /// Streams wsgate may have to reset for the client's errors before the
    /// connection is closed.
    pub max_local_error_reset_streams: usize,
}

/// The largest flow-control window HTTP/2 allows (RFC 9113 6.9.1).
const MAX_WINDOW: u64 = (1 << 31) - 1;
/// The smallest window accepted: the protocol's initial one.
const MIN_WINDOW: u64 = 65_535;

impl Validator<'_> {
    /// `listeners[i].tls.alpn`: known protocols, each once, at least one.
    pub(super) fn alpn(&mut self, path: &str, list: Option<Vec<String>>) -> Vec<Alpn> {
        let Some(list) = list else {
            return defaults::ALPN.to_vec();
        };
        if list.is_empty() {
            self.problem(path, "offer at least one protocol (h2, http/1.1)");
        }
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            match Alpn::parse(s) {
                Some(a) if out.contains(&a) => {
                    self.problem(&format!("{path}[{i}]"), format!("`{s}` is listed twice"))
                }
                Some(a) => out.push(a),
                None => self.problem(
                    &format!("{path}[{i}]"),
                    format!("`{s}` is not a protocol wsgate serves (h2, http/1.1)"),
                ),
            }
        }
        out
    }

    /// `limits.http2`, with the defaults of `config::defaults` for what it
    /// leaves out.
    pub(super) fn http2_limits(&mut self, h: Option<file::FileHttp2>) -> Http2Limits {
        let d = Http2Limits::default();
        let Some(h) = h else {
            return d;
        };
        let path = "limits.http2";
        if h.max_concurrent_streams == Some(0) {
            self.problem(
                &format!("{path}.max_concurrent_streams"),
                "must be at least 1",
            );
        }
        let window = |v: &mut Self, key: &str, value: Option<serde_yaml_ng::Value>, def: u32| {
            let Some(value) = value else {
                return def;
            };
            match units::parse_size(&value) {
                Ok(n) if (MIN_WINDOW..=MAX_WINDOW).contains(&n) => u32::try_from(n).unwrap_or(def),
                Ok(_) => {
                    v.problem(
                        &format!("{path}.{key}"),
                        "must be between 65535 bytes and 2GiB - 1 (RFC 9113 6.9.1)",
                    );
                    def
                }
                Err(e) => {
                    v.problem(&format!("{path}.{key}"), e);
                    def
                }
            }
        };
        let stream_window = window(self, "stream_window", h.stream_window, d.stream_window);
        let connection_window = window(
            self,
            "connection_window",
            h.connection_window,
            d.connection_window,
        );
        Http2Limits {
            max_concurrent_streams: h
                .max_concurrent_streams
                .filter(|&n| n > 0)
                .unwrap_or(d.max_concurrent_streams),
            stream_window,
            connection_window,
            max_pending_accept_reset_streams: h
                .max_pending_accept_reset_streams
                .unwrap_or(d.max_pending_accept_reset_streams),
            max_local_error_reset_streams: h
                .max_local_error_reset_streams
                .unwrap_or(d.max_local_error_reset_streams),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, ConfigError};

    const BASE: &str = "listeners:\n  - name: a\n    address: \"127.0.0.1:1\"\n    tls: { certificates: [{ cert: c.crt, key: c.key }] }\n\
routes: [{ pool: p }]\npools: { p: { backends: [{ id: b, address: \"h:1\" }] } }\n";

    fn parse(src: &str) -> Result<Config, ConfigError> {
        Config::from_source(src, "test.yaml", Path::new("/etc/wsgate"))
    }

    fn problem_paths(src: &str) -> Vec<(String, String)> {
        match parse(src) {
            Err(ConfigError::Invalid(p)) => p.into_iter().map(|p| (p.path, p.location)).collect(),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn defaults_offer_h2_then_http11_and_no_h2c() {
        let c = parse(BASE).unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.tls.as_ref().unwrap().alpn, vec![Alpn::H2, Alpn::Http11]);
        assert!(!l.h2c);
        assert_eq!(c.limits.http2, Http2Limits::default());
        assert_eq!(c.limits.http2.max_concurrent_streams, 100);
    }

    #[test]
    fn alpn_h2c_and_limits_are_read() {
        let src = BASE.replace("key: c.key }] }", "key: c.key }], alpn: [http/1.1] }")
            + "limits: { http2: { max_concurrent_streams: 7, stream_window: 128KiB, connection_window: 1MiB, max_pending_accept_reset_streams: 3, max_local_error_reset_streams: 9 } }\n";
        let c = parse(&src).unwrap();
        assert_eq!(
            c.listeners[0].tls.as_ref().unwrap().alpn,
            vec![Alpn::Http11]
        );
        let h = c.limits.http2;
        assert_eq!(
            (
                h.max_concurrent_streams,
                h.stream_window,
                h.connection_window
            ),
            (7, 128 << 10, 1 << 20)
        );
        assert_eq!(
            (
                h.max_pending_accept_reset_streams,
                h.max_local_error_reset_streams
            ),
            (3, 9)
        );
        let plain = "listeners:\n  - { name: a, address: \"127.0.0.1:1\", h2c: true }\n\
routes: [{ pool: p }]\npools: { p: { backends: [{ id: b, address: \"h:1\" }] } }\n";
        assert!(parse(plain).unwrap().listeners[0].h2c);
    }

    #[test]
    fn bad_values_are_reported_with_positions() {
        let src = BASE.replace("key: c.key }] }", "key: c.key }], alpn: [h2, h3, h2] }")
            + "limits: { http2: { max_concurrent_streams: 0, stream_window: 1KiB, connection_window: 4GiB } }\n";
        let got = problem_paths(&src);
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        for want in [
            "listeners[0].tls.alpn[1]",
            "listeners[0].tls.alpn[2]",
            "limits.http2.max_concurrent_streams",
            "limits.http2.stream_window",
            "limits.http2.connection_window",
        ] {
            assert!(paths.contains(&want), "no problem at {want}: {paths:?}");
        }
        assert!(
            got.iter().all(|(_, l)| l.matches(':').count() == 2),
            "{got:?}"
        );
        let empty = BASE.replace("key: c.key }] }", "key: c.key }], alpn: [] }");
        assert_eq!(problem_paths(&empty)[0].0, "listeners[0].tls.alpn");
        let tls_h2c = BASE.replace(
            "address: \"127.0.0.1:1\"\n",
            "address: \"127.0.0.1:1\"\n    h2c: true\n",
        );
        assert_eq!(problem_paths(&tls_h2c)[0].0, "listeners[0].h2c");
    }
}
