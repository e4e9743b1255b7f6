//! Closes the server started, bucketed per second.
//!
//! The idle mode records one [`CloseEvent`] per connection the server ended:
//! with the Close frame's code, or none when the connection ended without
//! one (reset or EOF, reported as `abnormal`, as 1006 would be). Buckets
//! start at the first close so that, during a drain, second 0 is the first
//! second of the drain and every later second can be compared with the
//! target rate.

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Key used for connections that ended without a Close frame.
pub const ABNORMAL: &str = "abnormal";

/// One connection ended by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseEvent {
    /// Time since the run started.
    pub at: Duration,
    /// The Close frame's code, or `None` without a Close frame.
    pub code: Option<u16>,
}

/// Closes seen in one second, counted per code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CloseSecond {
    /// Whole seconds since the first close.
    pub t: u64,
    pub closes: u64,
    pub codes: BTreeMap<String, u64>,
}

/// The JSON key for a close code.
pub fn code_key(code: Option<u16>) -> String {
    code.map_or_else(|| ABNORMAL.to_string(), |c| c.to_string())
}

/// Totals per code over all events.
pub fn totals(events: &[CloseEvent]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for e in events {
        *out.entry(code_key(e.code)).or_insert(0) += 1;
    }
    out
}

/// Buckets events into whole seconds after the earliest one. Seconds with
/// no close in between are present with zero counts, so a stall shows up.
pub fn per_second(events: &[CloseEvent]) -> Vec<CloseSecond> {
    let Some(origin) = events.iter().map(|e| e.at).min() else {
        return Vec::new();
    };
    let mut out: Vec<CloseSecond> = Vec::new();
    for e in events {
        let t = (e.at - origin).as_secs();
        let index = usize::try_from(t).unwrap_or(usize::MAX);
        while out.len() <= index {
            out.push(CloseSecond {
                t: out.len() as u64,
                closes: 0,
                codes: BTreeMap::new(),
            });
        }
        let bucket = &mut out[index];
        bucket.closes += 1;
        *bucket.codes.entry(code_key(e.code)).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ms: u64, code: Option<u16>) -> CloseEvent {
        CloseEvent {
            at: Duration::from_millis(ms),
            code,
        }
    }

    #[test]
    fn empty() {
        assert!(per_second(&[]).is_empty());
        assert!(totals(&[]).is_empty());
    }

    #[test]
    fn buckets_from_first_close_with_gaps() {
        // Out of order on purpose: events arrive from many tasks.
        let events = [
            ev(5_900, Some(1012)),
            ev(5_000, Some(1012)),
            ev(8_100, None),
            ev(5_999, Some(1001)),
            ev(6_000, Some(1012)),
        ];
        let got = per_second(&events);
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].t, 0);
        assert_eq!(got[0].closes, 3);
        assert_eq!(got[0].codes.get("1012"), Some(&2));
        assert_eq!(got[0].codes.get("1001"), Some(&1));
        assert_eq!(got[1].closes, 1);
        assert_eq!(got[2].closes, 0, "a quiet second is kept as zero");
        assert!(got[2].codes.is_empty());
        assert_eq!(got[3].codes.get(ABNORMAL), Some(&1));
        assert_eq!(got.iter().map(|s| s.closes).sum::<u64>(), 5);
        let all = totals(&events);
        assert_eq!(all.get("1012"), Some(&3));
        assert_eq!(all.get(ABNORMAL), Some(&1));
    }

    #[test]
    fn serializes_compactly() {
        let got = per_second(&[ev(0, Some(1012))]);
        assert_eq!(
            serde_json::to_string(&got).unwrap(),
            r#"[{"t":0,"closes":1,"codes":{"1012":1}}]"#
        );
    }
}
