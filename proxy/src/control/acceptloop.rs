//! Accepting on the admin listener without spinning or flooding the log.
//!
//! An `accept` that fails (EMFILE or ENFILE when the descriptor table is
//! full, ENOBUFS, ENOMEM, or anything else) leaves the pending connection
//! in the kernel's backlog, so retrying at once fails again at once: the
//! control thread would spin at 100% CPU and log every attempt. Instead
//! each failure waits a [`Backoff`] step (doubling from a few milliseconds
//! to a second, reset by the next success), and a [`RepeatLimiter`] lets a
//! repeated error reach the log once per interval, with the count of the
//! repeats it held back. Both are pure and unit-tested; [`accept`] is the
//! only I/O here.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

/// First wait after a failed accept.
const BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest wait between two accept attempts while they keep failing: a
/// full descriptor table costs one attempt (and no log line) a second.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A repeated accept error is logged at most once per this interval.
pub(super) const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Exponential back-off between failed attempts.
#[derive(Debug)]
pub(super) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    /// Failures since the last success.
    failures: u64,
}

impl Backoff {
    pub(super) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            next: min,
            failures: 0,
        }
    }

    /// An attempt failed: how long to wait before the next one.
    pub(super) fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        self.failures += 1;
        wait
    }

    /// An attempt succeeded: the next failure waits the minimum again.
    /// Returns how many attempts had failed in a row before this one.
    pub(super) fn succeeded(&mut self) -> u64 {
        self.next = self.min;
        std::mem::take(&mut self.failures)
    }
}

/// What to do with one occurrence of an event that may repeat.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Log it, and say how many occurrences since the last logged one were
    /// held back.
    Log { suppressed: u64 },
    /// Count it; a later line reports it.
    Quiet,
}

/// Lets an event through to the log once per interval. A different key
/// (another error) is logged at once; the same key again within the
/// interval is only counted.
#[derive(Debug)]
pub(super) struct RepeatLimiter<K> {
    interval: Duration,
    last: Option<(K, Instant)>,
    suppressed: u64,
}

impl<K: PartialEq> RepeatLimiter<K> {
    pub(super) fn new(interval: Duration) -> RepeatLimiter<K> {
        RepeatLimiter {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    pub(super) fn check(&mut self, key: K, now: Instant) -> Verdict {
        if let Some((last, at)) = &self.last {
            if *last == key && now.saturating_duration_since(*at) < self.interval {
                self.suppressed += 1;
                return Verdict::Quiet;
            }
        }
        self.last = Some((key, now));
        Verdict::Log {
            suppressed: std::mem::take(&mut self.suppressed),
        }
    }

    /// The run of events is over: the next one is logged at once. Returns
    /// the occurrences held back since the last logged one.
    pub(super) fn end(&mut self) -> u64 {
        self.last = None;
        std::mem::take(&mut self.suppressed)
    }
}

/// The accept loop's memory between calls of [`accept`].
#[derive(Debug)]
pub(super) struct AcceptState {
    backoff: Backoff,
    log: RepeatLimiter<(std::io::ErrorKind, Option<i32>)>,
}

impl AcceptState {
    pub(super) fn new() -> AcceptState {
        AcceptState {
            backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
            log: RepeatLimiter::new(LOG_INTERVAL),
        }
    }
}

/// The next connection. Every failed attempt waits its back-off step
/// first, so no error can make this loop spin; the log sees the first
/// failure of a run, then at most one line per [`LOG_INTERVAL`], and one
/// line when accepting works again. `errors` counts every failure.
pub(super) async fn accept(
    listener: &TcpListener,
    state: &mut AcceptState,
    errors: &AtomicU64,
) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(conn) => {
                let failures = state.backoff.succeeded();
                let suppressed = state.log.end();
                if failures > 0 {
                    tracing::info!(
                        failures,
                        not_logged = suppressed,
                        "admin accept works again"
                    );
                }
                return conn;
            }
            Err(e) => {
                errors.fetch_add(1, Ordering::Relaxed);
                let wait = state.backoff.failed();
                let key = (e.kind(), e.raw_os_error());
                if let Verdict::Log { suppressed } = state.log.check(key, Instant::now()) {
                    tracing::warn!(
                        error = %e,
                        retry_in_ms = wait.as_millis() as u64,
                        not_logged = suppressed,
                        "admin accept failed; backing off (repeats are logged once per {}s)",
                        LOG_INTERVAL.as_secs()
                    );
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets_on_success() {
        let mut b = Backoff::new(5 * MS, 1000 * MS);
        let waits: Vec<u128> = (0..10).map(|_| b.failed().as_millis()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(b.succeeded(), 10);
        assert_eq!(b.failed(), 5 * MS);
        assert_eq!(b.succeeded(), 1);
        assert_eq!(b.succeeded(), 0);
    }

    #[test]
    fn backoff_never_waits_zero() {
        let mut b = Backoff::new(5 * MS, Duration::ZERO);
        assert_eq!(b.failed(), 5 * MS);
        assert_eq!(b.failed(), 5 * MS);
    }

    #[test]
    fn a_repeated_event_is_logged_once_per_interval_with_its_count() {
        let t0 = Instant::now();
        let mut l = RepeatLimiter::new(Duration::from_secs(10));
        assert_eq!(l.check("emfile", t0), Verdict::Log { suppressed: 0 });
        // A thousand attempts a second for 9.9 s: none logged.
        for i in 1..9_900u32 {
            assert_eq!(l.check("emfile", t0 + i * MS), Verdict::Quiet);
        }
        // The interval is over: one line, carrying the count.
        assert_eq!(
            l.check("emfile", t0 + Duration::from_secs(10)),
            Verdict::Log { suppressed: 9_899 }
        );
        assert_eq!(
            l.check("emfile", t0 + Duration::from_secs(11)),
            Verdict::Quiet
        );
    }

    #[test]
    fn a_different_event_is_logged_at_once() {
        let t0 = Instant::now();
        let mut l = RepeatLimiter::new(Duration::from_secs(10));
        assert_eq!(l.check("emfile", t0), Verdict::Log { suppressed: 0 });
        assert_eq!(l.check("emfile", t0 + MS), Verdict::Quiet);
        assert_eq!(
            l.check("enobufs", t0 + 2 * MS),
            Verdict::Log { suppressed: 1 }
        );
        assert_eq!(
            l.check("emfile", t0 + 3 * MS),
            Verdict::Log { suppressed: 0 }
        );
    }

    #[test]
    fn ending_a_run_reports_what_was_held_back_and_logs_the_next_at_once() {
        let t0 = Instant::now();
        let mut l = RepeatLimiter::new(Duration::from_secs(10));
        assert_eq!(l.end(), 0);
        assert_eq!(l.check(1, t0), Verdict::Log { suppressed: 0 });
        assert_eq!(l.check(1, t0 + MS), Verdict::Quiet);
        assert_eq!(l.check(1, t0 + 2 * MS), Verdict::Quiet);
        assert_eq!(l.end(), 2);
        assert_eq!(l.check(1, t0 + 3 * MS), Verdict::Log { suppressed: 0 });
    }

    #[test]
    fn a_clock_that_goes_back_does_not_panic() {
        let t0 = Instant::now() + Duration::from_secs(60);
        let mut l = RepeatLimiter::new(Duration::from_secs(10));
        assert_eq!(l.check((), t0), Verdict::Log { suppressed: 0 });
        assert_eq!(l.check((), t0 - Duration::from_secs(30)), Verdict::Quiet);
    }
}
