//! The one-line JSON summary every run prints last on stdout, and the
//! pieces it is made of: latency percentiles, error counts, process usage.
//!
//! Field names are part of the tool's interface (scripts read them), so
//! they are spelled out here and pinned by tests.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;

/// What a run hands back: the JSON summary and how it went.
#[derive(Debug)]
pub struct Report {
    /// The summary as one line of JSON, keys in declaration order.
    pub line: String,
    pub status: Status,
}

/// How a run went, and so the process's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The mode's checks passed.
    Passed,
    /// A check failed, or the run could not measure.
    Failed,
    /// The flags make no sense together (like clap's own errors).
    BadUsage,
}

impl Status {
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Passed => 0,
            Status::Failed => 1,
            Status::BadUsage => 2,
        }
    }
}

/// The summary of a run that could not measure anything.
#[derive(Debug, Serialize)]
pub struct Failure<'a> {
    pub mode: &'a str,
    pub ok: bool,
    pub url: &'a str,
    pub elapsed_s: f64,
    pub error: String,
}

/// The envelope shared by every mode; `detail` is flattened into it.
#[derive(Debug, Serialize)]
pub struct Summary<T: Serialize> {
    pub mode: &'static str,
    pub ok: bool,
    pub url: String,
    /// Wall time of the whole run, connecting included.
    pub elapsed_s: f64,
    /// Set when Ctrl-C or SIGTERM cut the run short.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stopped_early: bool,
    /// CPU seconds this generator used (Linux): compare with elapsed_s to
    /// see whether it was itself a bottleneck.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generator_cpu_s: Option<f64>,
    #[serde(flatten)]
    pub detail: T,
    pub errors: Errors,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proc: Option<ProcReport>,
}

impl<T: Serialize> Summary<T> {
    /// Serializes into a [`Report`].
    pub fn into_report(self) -> Report {
        let status = if self.ok {
            Status::Passed
        } else {
            Status::Failed
        };
        // Serializing plain structs with string keys cannot fail; keep a
        // valid line rather than panic anyway.
        let line = serde_json::to_string(&self).unwrap_or_else(|e| {
            format!(
                r#"{{"mode":"{}","ok":false,"error":{}}}"#,
                self.mode,
                serde_json::Value::String(format!("summary: {e}"))
            )
        });
        Report { line, status }
    }
}

/// Error counts by kind (`tcp`, `tls`, `http_503`, `timeout_upgrade`, ...),
/// plus the first error's message for a human to read.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Errors {
    pub total: u64,
    pub kinds: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first: Option<String>,
}

impl Errors {
    pub fn add(&mut self, kind: &str, message: impl FnOnce() -> String) {
        self.total += 1;
        *self.kinds.entry(kind.to_string()).or_insert(0) += 1;
        if self.first.is_none() {
            self.first = Some(message());
        }
    }

    pub fn merge(&mut self, other: Errors) {
        self.total += other.total;
        for (k, v) in other.kinds {
            *self.kinds.entry(k).or_insert(0) += v;
        }
        if self.first.is_none() {
            self.first = other.first;
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Percentiles {
    /// Reads a histogram recorded in microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let q = |q| h.value_at_quantile(q);
        Self {
            count: h.len(),
            min: if h.is_empty() { 0 } else { h.min() },
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: h.max(),
            mean: round(h.mean(), 1),
        }
    }
}

/// A latency histogram in microseconds, from 1 µs to 10 minutes, with
/// `sigfig` significant digits (3 for totals, 2 for per-second series).
pub fn histogram(sigfig: u8) -> Histogram<u64> {
    // Fixed, valid bounds (low >= 1, high >= 2 * low, sigfig <= 5): this
    // cannot fail.
    Histogram::new_with_bounds(1, 600_000_000, sigfig).expect("valid histogram bounds")
}

/// CPU and memory of the processes given with `--pid`, over the measured
/// part of the run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProcReport {
    pub pids: Vec<u32>,
    /// User plus system CPU seconds (10 ms resolution).
    pub cpu_s: f64,
    pub rss_kib_start: u64,
    pub rss_kib_end: u64,
}

/// Rounds to `digits` decimals, for readable JSON.
pub fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// `part / whole`, or 0 when `whole` is 0.
pub fn ratio(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        part / whole
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Detail {
        sent: u64,
    }

    #[test]
    fn summary_is_one_flat_line() {
        let mut errors = Errors::default();
        errors.add("tcp", || "connection refused".into());
        errors.add("tcp", || "not kept".into());
        let report = Summary {
            mode: "rate",
            ok: false,
            url: "ws://127.0.0.1:1/echo".into(),
            elapsed_s: round(1.23456, 3),
            stopped_early: false,
            generator_cpu_s: Some(0.5),
            detail: Detail { sent: 7 },
            errors,
            proc: None,
        }
        .into_report();
        assert_eq!(report.status, Status::Failed);
        let line = report.line;
        assert!(!line.contains('\n'));
        assert_eq!(
            line,
            r#"{"mode":"rate","ok":false,"url":"ws://127.0.0.1:1/echo","elapsed_s":1.235,"generator_cpu_s":0.5,"sent":7,"errors":{"total":2,"kinds":{"tcp":2},"first":"connection refused"}}"#
        );
    }

    #[test]
    fn failure_summary() {
        let line = serde_json::to_string(&Failure {
            mode: "idle",
            ok: false,
            url: "ws://x/",
            elapsed_s: 0.5,
            error: "no \"luck\"".into(),
        })
        .unwrap();
        assert_eq!(
            line,
            r#"{"mode":"idle","ok":false,"url":"ws://x/","elapsed_s":0.5,"error":"no \"luck\""}"#
        );
    }

    #[test]
    fn percentiles_of_a_histogram() {
        let mut h = histogram(3);
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let p = Percentiles::of(&h);
        assert_eq!((p.count, p.min, p.max), (1000, 1, 1000));
        assert_eq!(p.p50, 500);
        assert_eq!(p.p99, 990);
        assert_eq!(p.mean, 500.5);
        let empty = Percentiles::of(&histogram(3));
        assert_eq!((empty.count, empty.min, empty.p99), (0, 0, 0));
        assert_eq!(
            serde_json::to_string(&Percentiles::of(&h)).unwrap(),
            r#"{"count":1000,"min":1,"p50":500,"p90":900,"p99":990,"p999":999,"max":1000,"mean":500.5}"#
        );
    }

    #[test]
    fn merge_errors() {
        let mut a = Errors::default();
        let mut b = Errors::default();
        b.add("tls", || "bad cert".into());
        a.merge(b);
        a.add("tls", || "later".into());
        assert_eq!(a.total, 2);
        assert_eq!(a.first.as_deref(), Some("bad cert"));
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(1.0, 0.0), 0.0);
        assert_eq!(round(ratio(1.0, 3.0), 2), 0.33);
    }
}
