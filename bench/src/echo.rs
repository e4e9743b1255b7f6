//! Echo messages and what we learn from them.
//!
//! Each message carries its own timestamps (sequence number, scheduled send
//! time, actual send time: 24 bytes, then padding to the message size), so
//! the receiving side needs no shared table of in-flight messages, and a
//! reply can be matched to its send even if the server reorders.
//! [`EchoStats`] turns echoes into HDR histograms and a per-second series.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::Duration;

use crate::chart::{Panel, Series};
use crate::procstat::{cpu_seconds, Sample};
use crate::summary::{histogram, ratio, round, Percentiles};

/// Bytes of the stamp at the start of each message.
pub const STAMP_LEN: usize = 24;

/// What a message says about itself; times are nanoseconds since the run's
/// origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub seq: u64,
    /// When the schedule wanted it sent.
    pub intended_ns: u64,
    /// When it was actually handed to the socket.
    pub sent_ns: u64,
}

/// Builds a message of `size` bytes (at least [`STAMP_LEN`]).
pub fn encode(stamp: Stamp, size: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(size.max(STAMP_LEN));
    buf.extend_from_slice(&stamp.seq.to_le_bytes());
    buf.extend_from_slice(&stamp.intended_ns.to_le_bytes());
    buf.extend_from_slice(&stamp.sent_ns.to_le_bytes());
    buf.resize(size.max(STAMP_LEN), b'.');
    buf
}

/// Reads the stamp back; `None` for anything that is not one of ours.
pub fn decode(bytes: &[u8]) -> Option<Stamp> {
    let word = |i: usize| {
        let b: [u8; 8] = bytes.get(i * 8..i * 8 + 8)?.try_into().ok()?;
        Some(u64::from_le_bytes(b))
    };
    Some(Stamp {
        seq: word(0)?,
        intended_ns: word(1)?,
        sent_ns: word(2)?,
    })
}

/// Nanoseconds to whole microseconds, at least 1 (the histogram's floor).
fn micros(ns: u64) -> u64 {
    (ns / 1000).max(1)
}

/// One second of the run, by scheduled send time.
struct Second {
    sent: u64,
    received: u64,
    rtt: Histogram<u64>,
}

/// One second of the run, as reported and charted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecondSummary {
    /// Whole seconds since the run's origin (warm-up included).
    pub t: u64,
    pub sent: u64,
    pub received: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// Counters and histograms of one echo run.
pub struct EchoStats {
    warmup_ns: u64,
    /// Receive time minus actual send time.
    pub rtt: Histogram<u64>,
    /// Receive time minus scheduled send time: includes any lag of the
    /// generator itself (coordinated-omission corrected).
    pub from_schedule: Histogram<u64>,
    /// Actual minus scheduled send time: the generator's own lateness.
    pub send_lag: Histogram<u64>,
    pub sent: u64,
    pub received: u64,
    /// Sent at or after the warm-up.
    pub measured_sent: u64,
    pub measured_received: u64,
    /// Data messages that were not echoes of ours.
    pub unexpected: u64,
    seconds: Vec<Second>,
}

impl EchoStats {
    pub fn new(warmup: Duration) -> Self {
        Self {
            warmup_ns: u64::try_from(warmup.as_nanos()).unwrap_or(u64::MAX),
            rtt: histogram(3),
            from_schedule: histogram(3),
            send_lag: histogram(3),
            sent: 0,
            received: 0,
            measured_sent: 0,
            measured_received: 0,
            unexpected: 0,
            seconds: Vec::new(),
        }
    }

    fn second(&mut self, ns: u64) -> &mut Second {
        let index = usize::try_from(ns / 1_000_000_000).unwrap_or(usize::MAX);
        while self.seconds.len() <= index {
            self.seconds.push(Second {
                sent: 0,
                received: 0,
                rtt: histogram(2),
            });
        }
        &mut self.seconds[index]
    }

    /// A message scheduled at `intended_ns` was sent.
    pub fn on_sent(&mut self, intended_ns: u64) {
        self.sent += 1;
        if intended_ns >= self.warmup_ns {
            self.measured_sent += 1;
        }
        self.second(intended_ns).sent += 1;
    }

    /// The echo of `stamp` arrived at `now_ns`.
    pub fn on_echo(&mut self, stamp: Stamp, now_ns: u64) {
        self.received += 1;
        let rtt = micros(now_ns.saturating_sub(stamp.sent_ns));
        let second = self.second(stamp.intended_ns);
        second.received += 1;
        second.rtt.saturating_record(rtt);
        if stamp.intended_ns >= self.warmup_ns {
            self.measured_received += 1;
            self.rtt.saturating_record(rtt);
            self.from_schedule
                .saturating_record(micros(now_ns.saturating_sub(stamp.intended_ns)));
            self.send_lag
                .saturating_record(micros(stamp.sent_ns.saturating_sub(stamp.intended_ns)));
        }
    }

    pub fn per_second(&self) -> Vec<SecondSummary> {
        self.seconds
            .iter()
            .enumerate()
            .map(|(t, s)| SecondSummary {
                t: t as u64,
                sent: s.sent,
                received: s.received,
                p50_us: s.rtt.value_at_quantile(0.5),
                p99_us: s.rtt.value_at_quantile(0.99),
            })
            .collect()
    }

    /// The round-trip percentiles (measured part only).
    pub fn rtt_percentiles(&self) -> Percentiles {
        Percentiles::of(&self.rtt)
    }

    /// The proxy's CPU per echoed message after the warm-up, in µs, when
    /// `--pid` gave both samples.
    pub fn cpu_us_per_msg(&self, start: Option<Sample>, end: Option<Sample>) -> Option<f64> {
        let (a, b) = (start?, end?);
        Some(round(
            ratio(cpu_seconds(a, b) * 1e6, self.measured_received as f64),
            3,
        ))
    }
}

/// One value of every second, as chart points.
pub fn per_second_points(
    seconds: &[SecondSummary],
    f: fn(&SecondSummary) -> u64,
) -> Vec<(f64, f64)> {
    seconds.iter().map(|s| (s.t as f64, f(s) as f64)).collect()
}

/// The p50 and p99 round trip of every second.
pub fn round_trip_per_second_panel(title: &str, seconds: &[SecondSummary]) -> Panel {
    Panel::new(
        title,
        "second",
        "µs",
        vec![
            Series::line("p50", per_second_points(seconds, |s| s.p50_us)),
            Series::line("p99", per_second_points(seconds, |s| s.p99_us)),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trip() {
        let stamp = Stamp {
            seq: 7,
            intended_ns: 1_000,
            sent_ns: u64::MAX,
        };
        let bytes = encode(stamp, 64);
        assert_eq!(bytes.len(), 64);
        assert_eq!(decode(&bytes), Some(stamp));
        // Too-small sizes still carry the stamp.
        assert_eq!(encode(stamp, 3).len(), STAMP_LEN);
        assert_eq!(decode(b"{\"type\":\"hello\"}"), None);
    }

    #[test]
    fn warmup_is_counted_but_not_measured() {
        let mut s = EchoStats::new(Duration::from_secs(1));
        let early = Stamp {
            seq: 0,
            intended_ns: 500_000_000,
            sent_ns: 500_000_000,
        };
        let late = Stamp {
            seq: 1,
            intended_ns: 1_500_000_000,
            sent_ns: 1_500_200_000,
        };
        s.on_sent(early.intended_ns);
        s.on_sent(late.intended_ns);
        s.on_echo(early, 500_100_000);
        s.on_echo(late, 1_500_300_000);
        assert_eq!((s.sent, s.received), (2, 2));
        assert_eq!((s.measured_sent, s.measured_received), (1, 1));
        assert_eq!(s.rtt.len(), 1);
        assert_eq!(s.rtt.max(), 100, "100 µs from actual send");
        assert_eq!(s.from_schedule.max(), 300, "300 µs from scheduled send");
        assert_eq!(s.send_lag.max(), 200);
        let seconds = s.per_second();
        assert_eq!(seconds.len(), 2);
        assert_eq!((seconds[0].sent, seconds[0].received), (1, 1));
        assert_eq!(seconds[1].p99_us, 100);
    }
}
