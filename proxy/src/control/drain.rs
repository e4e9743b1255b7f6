//! Pacing closes: when each connection of a drain (or a rebalance, or a
//! shutdown) receives its Close.
//!
//! [`schedule`] is pure. It gives n connections close times spread uniformly
//! over the window with jitter inside equal slots (stratified sampling), so
//! every second of the window holds the same number of closes give or take
//! one, and the backends that take the reconnects see a steady rate rather
//! than a herd. A rate cap stretches the window instead of bunching closes.
//! [`DrainJob`] executes a schedule on the control plane's runtime and can be
//! cancelled (`undrain`) at any point; closes not yet sent are dropped.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::api::DrainProgress;
use crate::routing::{BackendKey, Registry};
use crate::tunnel::CloseCause;

/// Offsets from the start of the drain, ascending. With `max_per_second`
/// > 0 the window is stretched to at least `n / max_per_second` seconds.
pub(super) fn schedule(
    n: usize,
    window: Duration,
    max_per_second: u32,
    rng: &mut impl Rng,
) -> Vec<Duration> {
    if n == 0 {
        return Vec::new();
    }
    let window = stretched(n, window, max_per_second);
    let slot = window.as_secs_f64() / n as f64;
    (0..n)
        .map(|i| Duration::from_secs_f64((i as f64 + rng.gen::<f64>()) * slot))
        .collect()
}

/// The window a schedule of `n` closes spans: `window`, or longer when
/// `max_per_second` > 0 needs it.
fn stretched(n: usize, window: Duration, max_per_second: u32) -> Duration {
    if max_per_second == 0 {
        return window;
    }
    window.max(Duration::from_secs_f64(
        n as f64 / f64::from(max_per_second),
    ))
}

/// One connection a job will close.
#[derive(Debug, Clone)]
pub struct Target {
    pub backend: BackendKey,
    pub conn_id: u64,
}

/// A running drain, rebalance or shutdown.
pub struct DrainJob {
    pub total: usize,
    /// What the closes are for (the status page's label).
    pub cause: CloseCause,
    started: Instant,
    /// The schedule's span.
    window: Duration,
    sent: Arc<AtomicUsize>,
    abort: AbortHandle,
}

impl DrainJob {
    /// Shuffles `targets` (so which users go first is random, not by
    /// connection age) and closes each at its scheduled time with `cause`.
    /// Must be called on a tokio runtime.
    pub fn start(
        registry: Arc<Registry>,
        mut targets: Vec<Target>,
        cause: CloseCause,
        window: Duration,
        max_per_second: u32,
    ) -> DrainJob {
        let mut rng = rand::thread_rng();
        targets.shuffle(&mut rng);
        let times = schedule(targets.len(), window, max_per_second, &mut rng);
        let total = targets.len();
        let sent = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let span = stretched(total, window, max_per_second);
        let counter = sent.clone();
        let task = tokio::spawn(async move {
            for (target, at) in targets.into_iter().zip(times) {
                tokio::time::sleep_until(started + at).await;
                registry.close(&target.backend, target.conn_id, cause);
                counter.fetch_add(1, Relaxed);
            }
        });
        DrainJob {
            total,
            cause,
            started,
            window: span,
            sent,
            abort: task.abort_handle(),
        }
    }

    /// Closes scheduled but not yet sent.
    pub fn pending(&self) -> usize {
        if self.abort.is_finished() && self.sent.load(Relaxed) < self.total {
            // Cancelled: nothing more will be sent.
            return 0;
        }
        self.total - self.sent.load(Relaxed).min(self.total)
    }

    /// How far it got, for the status page.
    pub fn progress(&self, backend: Option<String>) -> DrainProgress {
        let sent = self.sent.load(Relaxed).min(self.total);
        let pending = self.pending();
        // Once all are sent, the rate is over the schedule, not over the
        // time since (which would make it sink while nothing happens).
        let elapsed = if sent == self.total {
            self.started.elapsed().min(self.window)
        } else {
            self.started.elapsed()
        };
        let secs = elapsed.as_secs_f64();
        DrainProgress {
            kind: match self.cause {
                CloseCause::Drain(_) if backend.is_some() => "drain",
                CloseCause::Drain(_) => "rebalance",
                CloseCause::Shutdown => "shutdown",
                CloseCause::ListenerRemoved => "listener_removed",
                _ => "close",
            }
            .to_string(),
            backend,
            total: self.total,
            sent,
            pending,
            elapsed_ms: millis(elapsed),
            window_ms: millis(self.window),
            closes_per_second: if secs > 0.0 { sent as f64 / secs } else { 0.0 },
        }
    }

    /// Stops the job; returns how many closes were cancelled.
    pub fn cancel(&self) -> usize {
        let pending = self.pending();
        self.abort.abort();
        pending
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Drop for DrainJob {
    fn drop(&mut self) {
        self.abort.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn spread_is_uniform_in_every_slice() {
        let n = 9000;
        let t = schedule(n, Duration::from_secs(30), 0, &mut rng());
        assert_eq!(t.len(), n);
        assert!(t.windows(2).all(|w| w[0] <= w[1]), "ascending");
        assert!(*t.last().unwrap() < Duration::from_secs(30));
        // Every second holds 300 closes, give or take one.
        let mut per_second = [0usize; 30];
        for d in &t {
            per_second[d.as_secs() as usize] += 1;
        }
        assert!(
            per_second.iter().all(|&c| (299..=301).contains(&c)),
            "{per_second:?}"
        );
        // Every 100 ms slice of a small drain stays within 3x its fair share.
        let t = schedule(100, Duration::from_secs(3), 0, &mut rng());
        let mut slices = [0usize; 30];
        for d in &t {
            slices[(d.as_millis() / 100) as usize] += 1;
        }
        let fair = 100.0 / 30.0;
        assert!(
            slices.iter().all(|&c| (c as f64) <= 3.0 * fair),
            "{slices:?}"
        );
    }

    #[test]
    fn rate_cap_stretches_the_window() {
        let t = schedule(1000, Duration::from_secs(1), 100, &mut rng());
        assert!(*t.last().unwrap() > Duration::from_secs(9));
        let mut per_second = [0usize; 10];
        for d in &t {
            per_second[d.as_secs() as usize] += 1;
        }
        assert!(per_second.iter().all(|&c| c <= 101), "{per_second:?}");
    }

    /// Every live connection of `key`.
    fn targets_of(registry: &Registry, key: &BackendKey) -> Vec<Target> {
        registry
            .conns(key)
            .into_iter()
            .map(|c| Target {
                backend: key.clone(),
                conn_id: c.conn_id,
            })
            .collect()
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_finished_job_reports_its_rate_over_the_schedule() {
        let registry = Arc::new(Registry::default());
        let key = BackendKey::new("p", "b");
        let held: Vec<_> = (0..4).map(|h| registry.register(&key, h)).collect();
        let targets = targets_of(&registry, &key);
        // A cap of 1/s stretches 1 s to 4 s.
        let job = DrainJob::start(
            registry,
            targets,
            CloseCause::Shutdown,
            Duration::from_secs(1),
            1,
        );
        tokio::time::sleep(Duration::from_secs(60)).await;
        let p = job.progress(None);
        assert_eq!((p.kind.as_str(), p.sent, p.pending), ("shutdown", 4, 0));
        assert_eq!((p.window_ms, p.elapsed_ms), (4000, 4000));
        assert!((p.closes_per_second - 1.0).abs() < 1e-9);
        drop(held);
    }

    #[test]
    fn empty_and_single() {
        assert!(schedule(0, Duration::from_secs(1), 0, &mut rng()).is_empty());
        let one = schedule(1, Duration::from_secs(2), 0, &mut rng());
        assert!(one[0] < Duration::from_secs(2));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn job_closes_every_target_and_cancel_stops_it() {
        let registry = Arc::new(Registry::default());
        let key = BackendKey::new("p", "b");
        let mut held = Vec::new();
        for h in 0..10 {
            held.push(registry.register(&key, h));
        }
        let targets = targets_of(&registry, &key);
        let job = DrainJob::start(
            registry.clone(),
            targets.clone(),
            CloseCause::Drain(1012),
            Duration::from_secs(10),
            0,
        );
        assert_eq!(job.pending(), 10);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let p = job.progress(Some(key.to_string()));
        assert_eq!(
            (p.kind.as_str(), p.total, p.window_ms),
            ("drain", 10, 10_000)
        );
        assert_eq!(p.sent + p.pending, 10);
        assert_eq!(p.elapsed_ms, 5000, "paused clock");
        assert!((p.closes_per_second - p.sent as f64 / 5.0).abs() < 1e-9);
        let cancelled = job.cancel();
        assert!(
            (3..=7).contains(&cancelled),
            "about half remain: {cancelled}"
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        let closed = held.iter().filter(|(_, rx)| rx.cause().is_some()).count();
        assert_eq!(closed, 10 - cancelled, "nothing is closed after cancel");
        assert!(held
            .iter()
            .filter_map(|(_, rx)| rx.cause())
            .all(|c| c == CloseCause::Drain(1012)));
    }
}
